-- Field hardening: gateway nodes, the node a session runs on (crash recovery closes only its
-- own), and the per-target opt-in to legacy SSH algorithms. Keep in step with the other backend.
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    address      TEXT NOT NULL,
    version      TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

ALTER TABLE sessions ADD COLUMN node_id TEXT;
CREATE INDEX sessions_open_by_node ON sessions (node_id, ended_at);

ALTER TABLE targets ADD COLUMN legacy_crypto BIGINT NOT NULL DEFAULT 0;
