//! The Service Access Layer: flows, handshake, authentication, migration (being built).

pub mod crypto;
