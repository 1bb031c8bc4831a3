-- The inputs of due dates counted apart: the policies (which date every
-- scope) under the key 'policies', and each client's trigger events and
-- matters under the client's id. A trigger event then stales only the
-- recomputes that read that client, so events of many clients recorded at
-- once (a bulk import) do not make each other's recomputes start again.
DROP TABLE retention_inputs;
CREATE TABLE retention_inputs (
    input_key  TEXT PRIMARY KEY,
    generation BIGINT NOT NULL
);
INSERT INTO retention_inputs (input_key, generation) VALUES ('policies', 0);
