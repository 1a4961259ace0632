//! A userspace Serval stack.
//!
//! Serval (Nordström et al., NSDI 2012) names *services*, not hosts: a client connects to a
//! 256-bit [`ServiceId`](wire::ServiceId); a Service Access Layer (SAL) between the network and
//! the transport resolves the first packet of each flow through a service table
//! (longest-prefix match) and then demultiplexes every later packet by a host-local
//! [`FlowId`](wire::FlowId). Because the binding happens late, per flow, a service router can
//! spread flows over live replicas, and either end can change address without the flow
//! noticing.
//!
//! # Layers and the no-I/O contract
//!
//! | module | what it is | may depend on |
//! |---|---|---|
//! | [`wire`] | identifiers and every on-the-wire layout (Packet/Repr) | nothing in the crate |
//! | [`time`] | [`Timestamp`](time::Timestamp): microseconds on the caller's clock | nothing |
//! | [`service_table`] | longest-prefix match + FORWARD/DEMUX/DELAY/DROP rules | `wire` ids |
//! | [`transport`] | reliable byte stream over a SAL flow: buffers, RTT, loss, congestion | `wire`, `time` |
//! | [`sal`] | endpoint and flows: handshake, authenticated control, migration, forwarding | all of the above |
//! | [`control`] | registration leases, registrant, DELAY queue | `wire`, `service_table`, `time` |
//! | `driver` (feature `rt-tokio`, default) | tokio UDP socket, endpoint task, async streams | everything; nothing depends on it |
//!
//! The protocol core is **sans-IO**: it takes bytes and `now` and returns datagrams, deadlines
//! and events. It never reads a clock, never draws OS randomness and never touches a socket;
//! time and randomness are arguments. `clippy.toml` denies `Instant::now`, `SystemTime::now`
//! and the thread RNG so the rule is checked, not hoped for. The tokio driver (`driver`, feature
//! `rt-tokio`) is the only place that does I/O, and the crate builds without it
//! (`cargo build -p serval-stack --no-default-features`).
//!
//! # Untrusted input
//!
//! Every parser in [`wire`] returns `Ok` or a typed error for any byte string; no accessor
//! panics once a packet has been checked (smoltcp's `new_checked` contract). Fuzz targets in
//! `serval-stack/fuzz/` and property tests hold the code to that.

#![cfg_attr(not(test), warn(missing_docs))]

pub mod control;
#[cfg(feature = "rt-tokio")]
pub mod driver;
pub mod sal;
pub mod service_table;
pub mod time;
pub mod transport;
pub mod wire;
