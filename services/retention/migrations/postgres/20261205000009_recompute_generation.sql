-- One counter of the inputs of due dates (policies, trigger events,
-- matters). Every change of an input raises it in its own transaction; a
-- recompute writes due dates only while the counter still has the value it
-- read before reading the inputs, so a recompute that read older inputs can
-- never write over the dates computed from newer ones.
CREATE TABLE retention_inputs (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO retention_inputs (id, generation) VALUES (1, 0);
