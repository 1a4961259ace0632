//! Cross-crate tests for the Serval translator workspace.
//!
//! This crate will hold the deterministic multi-node simulator (virtual time, seeded
//! link models) and the network-namespace end-to-end tests; unit tests live next to
//! the code they test.

pub mod node;
pub mod sim;
pub mod util;
