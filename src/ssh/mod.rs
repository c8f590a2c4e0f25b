//! The SSH front end: translates SSH into calls on the core (auth, access, vault, recording,
//! audit). `server` accepts vendors, `handler` runs one connection's authentication and channel
//! requests, `upstream` logs in to targets, `relay` moves a channel's bytes between the two.

pub mod channel;
pub mod commands;
pub mod handler;
pub mod inbox;
pub mod login;
pub mod relay;
pub mod server;
pub mod upstream;

use std::borrow::Cow;

use russh::{cipher, Preferred};

/// Algorithm preferences for both legs: AES-GCM first (hardware-accelerated through aws-lc-rs),
/// then ChaCha20-Poly1305.
pub fn preferred_algorithms() -> Preferred {
    Preferred {
        cipher: Cow::Borrowed(&[
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
            cipher::AES_128_CTR,
        ]),
        ..Preferred::default()
    }
}
