//! What rides on a SAL flow: the reliable byte stream.
//!
//! A [`Stream`] is a modern TCP whose segments follow the SAL header (ports always 0,
//! `DESIGN.md` §2): window scaling, SACK and timestamps negotiated in a handshake that
//! rides inside the SAL's SYN / SYN-ACK / ACK, RFC 6298 RTO, RACK-TLP loss detection
//! (RFC 8985), PRR during recovery (RFC 6937), CUBIC (RFC 9438, default) or NewReno
//! congestion control with HyStart++ (RFC 9406), pacing, delayed ACKs, half-close,
//! zero-window probes, keepalives, RFC 5961 RST/SYN/ACK hardening. It keeps sending across
//! a SAL migration without cutting the window for losses on the old path.
//!
//! Sans-IO like the rest of the core: segments and `now` in, segments, deadlines and
//! events out (see the calling contract on [`Stream`]). Every buffer is bounded by
//! [`StreamConfig`]; reassembly holds at most 256 out-of-order ranges.
//!
//! | file | what |
//! |---|---|
//! | `stream.rs` | the state machine (RFC 9293 states, input, output, timers) |
//! | `send_buf.rs`, `recv_buf.rs` | bounded byte rings; reassembly and SACK ranges |
//! | `recovery.rs` | SACK scoreboard, RACK, TLP episode, PRR |
//! | `rtt.rs` | RFC 6298 estimator |
//! | `cc/` | the [`cc::Controller`] trait, CUBIC, NewReno, HyStart++ |
//! | `pacing.rs` | token-bucket pacer |
//! | `timer.rs` | the single timer table |
//! | `config.rs`, `stats.rs` | tunables with bounds; counters |
//! | `tests.rs` | scripted per-state tests and the two-stream lossy-link harness |
//!
//! Not implemented (each a deliberate gap, not a stub): ECN (ECE/CWR are parsed and
//! ignored); undoing a window reduction found spurious (D-SACKs are counted and widen
//! RACK's reordering window, but cwnd is not restored; no F-RTO); HyStart++'s
//! conservative-slow-start phase (it exits straight to congestion avoidance); receive
//! buffer auto-tuning; changing the MSS after the handshake (path MTU discovery);
//! urgent data; data in SYNs (TCP Fast Open); simultaneous open.

pub mod cc;
mod config;
mod pacing;
mod recovery;
mod recv_buf;
mod rtt;
mod send_buf;
mod stats;
mod stream;
mod timer;

#[cfg(test)]
mod tests;

pub use config::{
    ConfigError, CongestionAlgorithm, KeepaliveConfig, MAX_BUFFER, MAX_MSS, MIN_BUFFER, MIN_MSS,
    StreamConfig,
};
pub use rtt::RttEstimator;
pub use stats::StreamStats;
pub use stream::{HandshakeError, ReadError, State, Stream, StreamEvent, Transmit, WriteError};
