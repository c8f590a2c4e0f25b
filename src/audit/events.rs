//! The typed audit events. Each variant has a stable name and a schema version; add a new
//! variant (or bump the version) rather than changing the fields of an existing one.

use serde::{Deserialize, Serialize};

/// Something security-relevant that happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The installation was created.
    Initialized {},
    /// A user was created.
    UserAdded { user: String, role: String, org: Option<String>, expires_at: Option<i64> },
    /// A user was disabled.
    UserDisabled { user: String },
    /// A user's TOTP seed was replaced.
    MfaReset { user: String },
    /// A public key was added to a user.
    UserKeyAdded { user: String, fingerprint: String },
    /// A public key was removed.
    UserKeyRemoved { user: String, fingerprint: String },
    /// A target was created.
    TargetAdded {
        target: String,
        address: String,
        login: String,
        credential_kind: String,
        host_key_fingerprint: Option<String>,
    },
    /// A target was removed.
    TargetRemoved { target: String },
    /// An RDP target's pinned certificate thumbprint and NLA choice were set.
    TargetRdpSettings { target: String, cert_sha256: String, nla: bool },
    /// An RDP target presented a TLS certificate other than the pinned one.
    CertMismatch { target: String, expected: Option<String>, presented: String },
    /// A target's secret got a new version.
    SecretRotated { target: String, kind: String, version: i64 },
    /// A login succeeded.
    LoginSucceeded { user: String, method: String, source: String },
    /// A login failed. `user` is what the client sent.
    LoginFailed { user: String, source: String, reason: String },
    /// Too many failures: a user or address is locked for a while.
    LockedOut { scope: String, until: i64 },
    /// A grant was issued.
    GrantIssued { grant_id: i64, user: String, target: String, valid_from: i64, valid_until: i64, by: String },
    /// A grant was revoked.
    GrantRevoked { grant_id: i64, by: String },
    /// A session to a target began.
    SessionStarted { session: String, user: String, target: String, source: String, grant_id: i64 },
    /// A session ended.
    SessionEnded {
        session: String,
        reason: String,
        bytes_up: i64,
        bytes_down: i64,
        recording: Option<String>,
        recording_sha256: Option<String>,
    },
    /// A session was refused after login.
    SessionRefused { user: String, target: String, source: String, reason: String },
    /// The target presented a host key other than the pinned one.
    HostKeyMismatch { target: String, expected: Option<String>, presented: String },
    /// A kill was requested for a session.
    SessionKillRequested { session: String, by: String },
    /// A manager or auditor watched a live session (`via`: web or ssh).
    SessionWatched { session: String, user: String, via: String },
    /// A file went through scp or sftp.
    FileTransferred { session: String, direction: String, path: String, size: i64, sha256: String },
    /// A vendor asked for access.
    RequestCreated {
        request_id: i64,
        user: String,
        target: String,
        policy: String,
        reason: String,
        duration: i64,
        start_at: Option<i64>,
    },
    /// An approver approved (the grant follows once enough have).
    RequestApproved { request_id: i64, by: String, comment: Option<String>, approvals: i64, required: i64 },
    /// An approver denied.
    RequestDenied { request_id: i64, by: String, reason: Option<String> },
    /// The requester withdrew it.
    RequestCancelled { request_id: i64, by: String },
    /// Nobody decided before its time ran out.
    RequestExpired { request_id: i64 },
    /// A webhook could not be delivered after its retries.
    NotificationFailed { url: String, kind: String, error: String },
    /// The policies were (re)loaded.
    PoliciesLoaded { count: i64 },
    /// A channel request was refused by policy.
    ChannelRefused { session: String, kind: String, detail: String },
    /// A rotation sealed a new pending secret version and is about to change the target.
    RotationStarted { target: String, reason: String, version: i64 },
    /// A rotation failed; the target keeps the secret that works (`kept_version`).
    RotationFailed { target: String, reason: String, stage: String, error: String, kept_version: Option<i64> },
    /// An interrupted rotation was settled by trying every vaulted candidate: `outcome` is
    /// `promoted` (the new version works and is now active) or `kept` (the old one still works).
    RotationRecovered { target: String, version: i64, outcome: String },
    /// Retention deleted a session's recording (and its side files).
    RecordingDeleted {
        session: String,
        recording: String,
        recording_sha256: Option<String>,
        side_files: Vec<String>,
        reason: String,
    },
    /// A recording (and its side files) was uploaded to object storage, after its hash was in
    /// the chain. `previous_sha256` is set when the chain held another hash for it (a survivor
    /// hashed the parts it could reach when this node was lost; this is the whole recording).
    RecordingUploaded {
        session: String,
        object: String,
        sha256: String,
        size: i64,
        files: Vec<String>,
        previous_sha256: Option<String>,
    },
    /// A recording was put on legal hold (retention keeps it).
    RecordingHeld { session: String, reason: String, by: String },
    /// A legal hold was lifted.
    RecordingReleased { session: String, by: String },
    /// Legacy SSH algorithms towards a target were allowed or forbidden.
    TargetLegacyCrypto { target: String, allowed: bool },
    /// A gateway node started.
    NodeStarted { node: String, name: String, version: String },
    /// A node stopped heartbeating; another node ended its open sessions.
    NodeLost { node: String, name: String, last_heartbeat: i64, sessions: i64 },
    /// A session left open by a gateway that stopped without closing it (a crash or `kill -9`)
    /// was closed when that gateway started again, or by another node once that gateway's
    /// heartbeat stopped (end reason `node_lost`); the hashes are of the files as found then
    /// (absent when the recording was not reachable from the closing node).
    SessionInterrupted {
        session: String,
        node: String,
        recording: Option<String>,
        recording_size: Option<i64>,
        recording_sha256: Option<String>,
        side_files: Vec<SideFile>,
    },
    /// A request or grant state that a crash left inconsistent was repaired on start.
    StateRepaired { what: String, id: i64, detail: String },
    /// A web console login (after both factors) opened console session `session`.
    WebLogin { user: String, source: String, session: i64 },
    /// A web console session ended (`logout`, `logout-all`, `ended-by-user`).
    WebLogout { user: String, session: i64, reason: String, by: String },
    /// An API token was made (its value is never stored or recorded).
    TokenCreated { token_id: i64, user: String, expires_at: i64, by: String },
    /// An API token was revoked.
    TokenRevoked { token_id: i64, user: String, by: String },
    /// A grant's one-time credential was shown to its holder (`via`: `web` or `api`) after a
    /// fresh TOTP code.
    GrantCredentialShown { grant_id: i64, user: String, target: String, via: String, source: String },
}

/// A recording's side file as hashed when its session was closed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SideFile {
    /// File name (next to the cast).
    pub name: String,
    /// Size in bytes.
    pub size: i64,
    /// SHA-256.
    pub sha256: String,
}

impl Event {
    /// The stored type name and schema version.
    pub fn kind(&self) -> (&'static str, i64) {
        let name = match self {
            Event::Initialized {} => "initialized",
            Event::UserAdded { .. } => "user.added",
            Event::UserDisabled { .. } => "user.disabled",
            Event::MfaReset { .. } => "user.mfa_reset",
            Event::UserKeyAdded { .. } => "user.key_added",
            Event::UserKeyRemoved { .. } => "user.key_removed",
            Event::TargetAdded { .. } => "target.added",
            Event::TargetRemoved { .. } => "target.removed",
            Event::TargetRdpSettings { .. } => "target.rdp_settings",
            Event::CertMismatch { .. } => "target.cert_mismatch",
            Event::SecretRotated { .. } => "target.secret_rotated",
            Event::LoginSucceeded { .. } => "login.succeeded",
            Event::LoginFailed { .. } => "login.failed",
            Event::LockedOut { .. } => "login.locked_out",
            Event::GrantIssued { .. } => "grant.issued",
            Event::GrantRevoked { .. } => "grant.revoked",
            Event::SessionStarted { .. } => "session.started",
            Event::SessionEnded { .. } => "session.ended",
            Event::SessionRefused { .. } => "session.refused",
            Event::HostKeyMismatch { .. } => "target.host_key_mismatch",
            Event::SessionKillRequested { .. } => "session.kill_requested",
            Event::SessionWatched { .. } => "session.watched",
            Event::FileTransferred { .. } => "session.file_transferred",
            Event::ChannelRefused { .. } => "session.channel_refused",
            Event::RequestCreated { .. } => "request.created",
            Event::RequestApproved { .. } => "request.approved",
            Event::RequestDenied { .. } => "request.denied",
            Event::RequestCancelled { .. } => "request.cancelled",
            Event::RequestExpired { .. } => "request.expired",
            Event::NotificationFailed { .. } => "notification.failed",
            Event::PoliciesLoaded { .. } => "policy.loaded",
            Event::RotationStarted { .. } => "target.rotation_started",
            Event::RotationFailed { .. } => "target.rotation_failed",
            Event::RotationRecovered { .. } => "target.rotation_recovered",
            Event::RecordingDeleted { .. } => "recording.deleted",
            Event::RecordingUploaded { .. } => "recording.uploaded",
            Event::RecordingHeld { .. } => "recording.held",
            Event::RecordingReleased { .. } => "recording.released",
            Event::TargetLegacyCrypto { .. } => "target.legacy_crypto",
            Event::NodeStarted { .. } => "node.started",
            Event::NodeLost { .. } => "node.lost",
            Event::SessionInterrupted { .. } => "session.interrupted",
            Event::StateRepaired { .. } => "state.repaired",
            Event::WebLogin { .. } => "web.login",
            Event::WebLogout { .. } => "web.logout",
            Event::TokenCreated { .. } => "token.created",
            Event::TokenRevoked { .. } => "token.revoked",
            Event::GrantCredentialShown { .. } => "grant.credential_shown",
        };
        (name, 1)
    }
}
