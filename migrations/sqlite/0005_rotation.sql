-- Secret rotation (issue #13). Keep in step with ../postgres.
-- Each secret version has a state: pending (sealed before the target was changed), verified (a
-- fresh login with it worked), active (the one sessions use), retired (replaced) or discarded
-- (known not to work). Versions stored before this migration are active.
ALTER TABLE secrets ADD COLUMN state TEXT NOT NULL DEFAULT 'active';
ALTER TABLE secrets ADD COLUMN verified_at BIGINT;

-- One rotation per target at a time, across gateway nodes: a lease renewed while it runs.
CREATE TABLE rotation_locks (
    target_id  BIGINT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Every attempt and how it ended.
CREATE TABLE rotations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    target_id   BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    outcome     TEXT NOT NULL,
    version     BIGINT,
    error       TEXT
);
CREATE INDEX rotations_target ON rotations (target_id, started_at);

-- Rotations still owed: deferred while a session is live, or retried with backoff after a failure.
CREATE TABLE rotation_due (
    target_id  BIGINT PRIMARY KEY,
    reason     TEXT NOT NULL,
    due_at     BIGINT NOT NULL,
    failures   BIGINT NOT NULL DEFAULT 0,
    last_error TEXT
);
