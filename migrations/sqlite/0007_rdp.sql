-- RDP targets: the pinned SHA-256 thumbprint of the target's TLS certificate (upper-case hex,
-- colon-separated, as `tls_identity::thumbprint` prints it) and whether the gateway logs in with
-- NLA (CredSSP) or, for NLA-less targets, with the vaulted account in the Client Info PDU.
ALTER TABLE targets ADD COLUMN cert_sha256 TEXT;
ALTER TABLE targets ADD COLUMN rdp_nla BIGINT NOT NULL DEFAULT 1;
-- Which front end a session came through (`ssh`, `rdp`); RDP sessions are recorded as frame
-- recordings (`*.frames`), which the text search does not index.
ALTER TABLE sessions ADD COLUMN protocol TEXT NOT NULL DEFAULT 'ssh';
