-- Penstock foundation schema (SQLite). Times are Unix seconds. Keep in step with ../postgres.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
INSERT INTO meta (key, value) VALUES ('write_lock', X'00');

CREATE TABLE users (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT NOT NULL UNIQUE,
    role           TEXT NOT NULL,
    org            TEXT,
    expires_at     BIGINT,
    disabled       BIGINT NOT NULL DEFAULT 0,
    password_hash  TEXT,
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL
);

CREATE TABLE user_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    openssh     TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (user_id, fingerprint)
);

CREATE TABLE targets (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL UNIQUE,
    protocol        TEXT NOT NULL,
    host            TEXT NOT NULL,
    port            BIGINT NOT NULL,
    login           TEXT NOT NULL,
    credential_kind TEXT NOT NULL,
    host_key        TEXT,
    site            TEXT,
    zone            TEXT,
    criticality     TEXT,
    created_at      BIGINT NOT NULL
);

CREATE TABLE secrets (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_kind TEXT NOT NULL,
    owner_id   BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (owner_kind, owner_id, kind, version)
);

CREATE TABLE auth_failures (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    at    BIGINT NOT NULL
);
CREATE INDEX auth_failures_scope_at ON auth_failures (scope, at);

CREATE TABLE audit_events (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    version   BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);

CREATE TABLE grants (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    target_id   BIGINT NOT NULL REFERENCES targets(id) ON DELETE CASCADE,
    valid_from  BIGINT NOT NULL,
    valid_until BIGINT NOT NULL,
    revoked_at  BIGINT,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX grants_user_target ON grants (user_id, target_id);

CREATE TABLE sessions (
    id               TEXT PRIMARY KEY,
    user_id          BIGINT NOT NULL,
    target_id        BIGINT NOT NULL,
    grant_id         BIGINT,
    client_addr      TEXT NOT NULL,
    started_at       BIGINT NOT NULL,
    ended_at         BIGINT,
    bytes_up         BIGINT NOT NULL DEFAULT 0,
    bytes_down       BIGINT NOT NULL DEFAULT 0,
    end_reason       TEXT,
    recording_path   TEXT,
    recording_sha256 TEXT,
    kill_requested   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE session_transfers (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    direction  TEXT NOT NULL,
    path       TEXT NOT NULL,
    size       BIGINT NOT NULL,
    sha256     TEXT NOT NULL,
    at         BIGINT NOT NULL
);
