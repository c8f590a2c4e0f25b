-- Evidence for auditors: the recordings search index, legal holds, SIEM cursors. Keep in step with ../sqlite.
-- One row per indexed line of a recording (reconstructed input, output text, exec command, notes).
CREATE TABLE recording_text (
    id         BIGSERIAL PRIMARY KEY,
    text       TEXT NOT NULL,
    session_id TEXT NOT NULL,
    t          DOUBLE PRECISION NOT NULL,
    kind       TEXT NOT NULL,
    tsv        tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
);
CREATE INDEX recording_text_tsv ON recording_text USING GIN (tsv);
CREATE INDEX recording_text_session ON recording_text (session_id);

-- Which recordings are indexed (a row claims a session for one indexer).
CREATE TABLE recording_index (
    session_id TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    lines      BIGINT NOT NULL DEFAULT 0,
    at         BIGINT NOT NULL
);

-- Recordings retention must keep.
CREATE TABLE recording_holds (
    session_id TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    held_by    TEXT NOT NULL,
    at         BIGINT NOT NULL
);

-- Recordings deleted by retention (the audit chain holds a recording.deleted event for each).
CREATE TABLE recording_deletions (
    session_id TEXT PRIMARY KEY,
    at         BIGINT NOT NULL,
    files_gone BIGINT NOT NULL DEFAULT 0
);

-- Per-destination position of SIEM shipping (last audit seq delivered), its last error, and the
-- lease that lets one gateway of several ship.
CREATE TABLE siem_cursors (
    destination TEXT PRIMARY KEY,
    seq         BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    last_error  TEXT,
    error_at    BIGINT,
    holder      TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);
