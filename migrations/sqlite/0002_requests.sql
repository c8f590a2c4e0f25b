-- Just-in-time access: requests, approvals, and grants issued from them. Keep in step with ../postgres.
CREATE TABLE requests (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id          BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    target_id        BIGINT NOT NULL REFERENCES targets(id) ON DELETE CASCADE,
    policy           TEXT NOT NULL,
    reason           TEXT NOT NULL,
    duration         BIGINT NOT NULL,
    start_at         BIGINT,
    created_at       BIGINT NOT NULL,
    required         BIGINT NOT NULL,
    state            TEXT NOT NULL,
    decided_at       BIGINT,
    decided_by       TEXT,
    decision_comment TEXT,
    grant_id         BIGINT
);
CREATE INDEX requests_state ON requests (state);

CREATE TABLE approvals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  BIGINT NOT NULL REFERENCES requests(id) ON DELETE CASCADE,
    approver_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    comment     TEXT,
    at          BIGINT NOT NULL,
    UNIQUE (request_id, approver_id)
);

ALTER TABLE grants ADD COLUMN request_id BIGINT;
ALTER TABLE grants ADD COLUMN policy TEXT;
