//! Cross-crate tests for the Serval translator workspace.
//!
//! This crate holds the deterministic multi-node simulator (virtual time, seeded link
//! models) and the network-namespace end-to-end tests ([`netns`] helpers, the
//! `serval-node` process they run, `tests/netns.rs`); unit tests live next to the code
//! they test. [`attack`] is the off-path attacker (the `serval-attack` binary and the
//! translator's hostile-input tests).

pub mod attack;
pub mod netns;
pub mod node;
pub mod sim;
pub mod util;
