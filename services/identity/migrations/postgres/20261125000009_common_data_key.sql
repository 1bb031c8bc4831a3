-- The data key moves to the table every service shares (service_data_keys).
INSERT INTO service_data_keys (id, key_id, wrapped, created_at)
    SELECT id, key_id, wrapped, created_at FROM identity_data_keys;
DROP TABLE identity_data_keys;
