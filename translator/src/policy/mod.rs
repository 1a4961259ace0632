//! Mapping decisions over a valid policy, as pure functions with table tests.
//!
//! - [`client`]: a legacy TCP connection (listener, addresses, the DNS responder's
//!   bindings) → the ServiceID to open, or a refusal with its reason;
//! - [`server`]: an incoming flow's ServiceID → a backend pool or a cross-translated legacy
//!   address, or a refusal.
//!
//! Nothing here does I/O, reads a clock or keeps state between calls: the network roles
//! call these with what they observed, and tests call them with tables.

pub mod client;
pub mod server;

pub use client::{
    ClientDecision, ClientPolicy, ListenerIdx, NoNames, Refusal, SyntheticNames, Via,
};
pub use server::{ServerDecision, ServerPolicy, ServerRefusal};

use crate::config::Config;

/// The decisions of every role a policy turns on.
#[derive(Debug)]
pub struct Policy {
    /// Client role decisions, when the role is on.
    pub client: Option<ClientPolicy>,
    /// Server role decisions, when the role is on.
    pub server: Option<ServerPolicy>,
}

impl Policy {
    /// Compiles a validated configuration.
    pub fn new(config: &Config) -> Self {
        Self {
            client: config.client.as_ref().map(ClientPolicy::new),
            server: config.server.as_ref().map(ServerPolicy::new),
        }
    }
}
