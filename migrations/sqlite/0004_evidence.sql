-- Evidence for auditors: the recordings search index, legal holds, SIEM cursors. Keep in step with ../postgres.
-- One row per indexed line of a recording (reconstructed input, output text, exec command, notes),
-- and its FTS5 index (external content, kept in step by triggers).
CREATE TABLE recording_text (
    id         INTEGER PRIMARY KEY,
    text       TEXT NOT NULL,
    session_id TEXT NOT NULL,
    t          REAL NOT NULL,
    kind       TEXT NOT NULL
);
CREATE INDEX recording_text_session ON recording_text (session_id);
CREATE VIRTUAL TABLE recording_fts USING fts5(text, content = 'recording_text', content_rowid = 'id', tokenize = 'unicode61');
CREATE TRIGGER recording_text_ai AFTER INSERT ON recording_text BEGIN
    INSERT INTO recording_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER recording_text_ad AFTER DELETE ON recording_text BEGIN
    INSERT INTO recording_fts (recording_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;

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
