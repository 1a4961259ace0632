//! Benchmarks for the Serval translator workspace; see `BENCHMARKS.md` for how to run them
//! and the figures they produced.

pub mod bit_trie;
pub mod harness;
pub mod sal_pair;
