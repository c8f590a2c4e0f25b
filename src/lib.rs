//! Penstock: a just-in-time privileged-access gateway for OT maintenance.
//!
//! The crate is split into a protocol-free core (`auth`, `vault`, `audit`, `store`, `access`,
//! `recording`) and front ends (`ssh`) that translate a protocol into calls on that core.
//! See `docs/ARCHITECTURE.md` for the flow.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod access;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console_sessions;
pub mod error;
pub mod evidence;
pub mod jobs;
pub mod keys;
pub mod live;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod policy;
pub mod proxy_protocol;
pub mod rdp;
pub mod recording;
pub mod recovery;
pub mod replay;
pub mod retention;
pub mod rotation;
pub mod search;
pub mod secret;
pub mod sessions;
pub mod siem;
pub mod signals;
pub mod ssh;
pub mod storage;
pub mod store;
pub mod targets;
pub mod tls_identity;
pub mod tokens;
pub mod users;
pub mod vault;
pub mod web;
