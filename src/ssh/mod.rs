//! The SSH front end: translates SSH into calls on the core (auth, access, vault, recording,
//! audit). `server` accepts vendors, `handler` runs one connection's authentication and channel
//! requests, `upstream` logs in to targets, `relay` moves a channel's bytes between the two.

pub mod algorithms;
pub mod channel;
pub mod commands;
pub mod handler;
pub mod inbox;
pub mod login;
pub mod login_limits;
pub mod relay;
pub mod server;
pub mod upstream;
