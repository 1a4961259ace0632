//! Baseline for the service-table benchmark: the original Serval's lookup structure
//! (`bst.c`, `SERVAL-ORIGINAL.md` §4.3), an uncompressed binary trie with one node per bit.
//!
//! Lookup walks from the root following the key's bits, remembering the last node that
//! carries a value, until a child is missing or 256 bits are consumed: up to 256 dependent
//! node visits. The node is made compact (two `u32` child indices and a `u32` value, 12
//! bytes, in one arena) rather than the original's heap-allocated node with list heads, which
//! favours the baseline: fewer cache lines and no pointer chasing across `malloc` blocks.

use serval_stack::wire::{ServiceId, ServicePrefix};

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct BitNode {
    /// Child for bit 0 and bit 1; 0 means none (the root is never anyone's child).
    child: [u32; 2],
    value: u32,
}

/// A one-node-per-bit trie mapping prefixes to `u32` values.
#[derive(Clone, Debug)]
pub struct BitTrie {
    nodes: Vec<BitNode>,
    len: usize,
}

impl Default for BitTrie {
    fn default() -> Self {
        Self::new()
    }
}

fn bit(bytes: &[u8; 32], i: usize) -> usize {
    usize::from(bytes[(i >> 3) & 31] >> (7 - (i & 7)) & 1)
}

impl BitTrie {
    /// An empty trie (just the root, which stands for prefix length 0).
    pub fn new() -> Self {
        Self {
            nodes: vec![BitNode {
                child: [0; 2],
                value: NONE,
            }],
            len: 0,
        }
    }

    /// Number of stored prefixes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no prefix is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of nodes, root included.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Stores `value` under `prefix` (replacing any previous value), creating the missing
    /// chain of nodes.
    ///
    /// # Panics
    ///
    /// When the trie would exceed `u32::MAX` nodes (a benchmark tool, not a library).
    pub fn insert(&mut self, prefix: &ServicePrefix, value: u32) {
        let bytes = prefix.id().as_bytes();
        let mut n = 0usize;
        for i in 0..usize::from(prefix.len()) {
            let b = bit(bytes, i);
            let next = self.nodes[n].child[b];
            n = if next == 0 {
                let new = u32::try_from(self.nodes.len()).expect("baseline trie too large");
                self.nodes.push(BitNode {
                    child: [0; 2],
                    value: NONE,
                });
                self.nodes[n].child[b] = new;
                new as usize
            } else {
                next as usize
            };
        }
        if self.nodes[n].value == NONE {
            self.len += 1;
        }
        self.nodes[n].value = value;
    }

    /// Removes the value under exactly `prefix` (nodes are left in place: the benchmark
    /// measures lookups).
    pub fn remove(&mut self, prefix: &ServicePrefix) -> Option<u32> {
        let bytes = prefix.id().as_bytes();
        let mut n = 0usize;
        for i in 0..usize::from(prefix.len()) {
            let next = self.nodes[n].child[bit(bytes, i)];
            if next == 0 {
                return None;
            }
            n = next as usize;
        }
        let v = core::mem::replace(&mut self.nodes[n].value, NONE);
        if v == NONE {
            None
        } else {
            self.len -= 1;
            Some(v)
        }
    }

    /// The value of the longest stored prefix containing `id`.
    pub fn lookup(&self, id: &ServiceId) -> Option<u32> {
        let bytes = id.as_bytes();
        let mut best = NONE;
        let mut n = 0usize;
        let mut i = 0usize;
        while let Some(node) = self.nodes.get(n) {
            if node.value != NONE {
                best = node.value;
            }
            if i == 256 {
                break;
            }
            let next = node.child[bit(bytes, i)];
            if next == 0 {
                break;
            }
            n = next as usize;
            i += 1;
        }
        (best != NONE).then_some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_match() {
        let mut t = BitTrie::new();
        let id = ServiceId::from_u32(0x1234_5678);
        t.insert(&ServicePrefix::DEFAULT, 0);
        t.insert(&ServicePrefix::new(id, 16).unwrap(), 16);
        t.insert(&ServicePrefix::exact(id), 256);
        assert_eq!(t.lookup(&id), Some(256));
        assert_eq!(t.lookup(&ServiceId::from_u32(0x1234_0000)), Some(16));
        assert_eq!(t.lookup(&ServiceId::from_u32(0x1334_0000)), Some(0));
        assert_eq!(t.remove(&ServicePrefix::DEFAULT), Some(0));
        assert_eq!(t.lookup(&ServiceId::from_u32(0x1334_0000)), None);
        assert_eq!(t.len(), 2);
    }
}
