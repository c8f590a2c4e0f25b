//! Errors of the core that callers need to tell apart.

use thiserror::Error;

/// An error a person can act on. Its Display is one line and never contains a secret.
#[derive(Debug, Error)]
pub enum Error {
    /// Bad input from a user or file.
    #[error("{0}")]
    Invalid(String),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something with that name exists already.
    #[error("{0}")]
    Conflict(String),
    /// Refused by policy or authentication.
    #[error("{0}")]
    Denied(String),
    /// The store failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Result of core operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for an [`Error::Invalid`].
pub fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}
