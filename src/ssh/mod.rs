//! The SSH front end: translates SSH into calls on the core (auth, access, vault, recording,
//! audit). `server` speaks to vendors, `upstream` to targets, `relay` moves bytes between them.

pub mod server;
pub mod upstream;
