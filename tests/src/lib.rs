//! Cross-crate tests for the Serval translator workspace.
//!
//! This crate holds the deterministic multi-node simulator (virtual time, seeded link
//! models) and the network-namespace end-to-end tests ([`netns`] helpers, the
//! `serval-node` process they run, `tests/netns.rs`); unit tests live next to the code
//! they test.

pub mod netns;
pub mod node;
pub mod sim;
pub mod util;
