//! The Service Access Layer: the flow table, handshake with late binding, authenticated
//! control, close, migration with path validation, and the router's stateless SYN
//! forwarding. Design and deviations from the original: `docs/SAL.md`.
//!
//! * [`Endpoint`] classifies datagrams ([`DatagramEvent`]) and owns listeners, the service
//!   table, half-open flows and key epochs;
//! * [`Flow`] is one flow, driven by its owner;
//! * [`crypto`] holds the key agreement and MACs.

mod config;
pub mod crypto;
mod endpoint;
mod flow;
mod stats;
#[cfg(test)]
mod tests;

pub use config::{ConfigError, EndpointConfig, FlowConfig, MAX_UDP_PAYLOAD, MIN_UDP_PAYLOAD};
pub use endpoint::{
    ConnectError, ControlServices, DatagramEvent, Endpoint, FlowHandle, HOST_CONTROL_SERVICE,
    Incoming, ListenError, ROUTER_CONTROL_SERVICE, SendError,
};
pub use flow::{CloseReason, EndpointEvent, Event, Flow, FlowInput, Transmit};
pub use stats::{DropCounts, DropReason, EndpointStats, FlowStats};
