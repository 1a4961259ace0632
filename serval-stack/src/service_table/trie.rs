//! Longest-prefix-match map over 256-bit keys: a path-compressed, 256-ary trie with
//! popcount-compressed child arrays (poptrie / ART family).
//!
//! # Layout
//!
//! * A **node** dispatches on one key byte (`depth`, 0..=31). It has a 256-bit child bitmap;
//!   its children are a contiguous block of `u32` slots in the [`Pool`], in byte order, so the
//!   slot for byte `b` is `child_base + popcount(bitmap below b)` (a per-word rank is cached
//!   in the node so a lookup does one popcount). A slot holds a node index, or `LEAF | value`
//!   for a single stored prefix below that byte (path compression to the leaf).
//! * Prefixes whose length falls inside a node's byte (`8·depth ≤ len < 8·depth + 8`) live
//!   in the node's **block**: a tree bitmap of the (up to 255) stored prefixes with their
//!   value indices, and the same prefixes expanded over the 256 byte values and run-length
//!   compressed (a "run" bitmap marks where the best in-node match changes). A lookup reads
//!   the best in-node match for its byte with one popcount.
//! * A node reached by skipping bytes (its depth is more than one byte below its parent's)
//!   has `skip` set and checks the key against the node's stored path (`keys`).
//! * Every node except the root holds at least two things (children plus block prefixes),
//!   so there are fewer nodes than prefixes; a removal that leaves one thing folds the node
//!   back into its parent's slot.
//!
//! Lookup walks down remembering the last match (block hit or leaf whose prefix contains the
//! key). Values (the table's entries) live in a separate arena addressed by `u32`, out of
//! the hot nodes. Updates touch one path: at most a 256-slot child shift and a 256-slot block
//! re-expansion per update, never a rebuild.

use crate::wire::{ServiceId, ServicePrefix};

/// "No value" in a `u32` slot.
const NONE: u32 = u32::MAX;
/// Tag of a child slot that holds a value (leaf) rather than a node.
const LEAF: u32 = 1 << 31;
/// The root node is always at index 0.
const ROOT: usize = 0;
/// Most values the map holds. Keeps every arena index (nodes, blocks, pool) far below
/// `u32::MAX` and `LEAF`, so index arithmetic cannot overflow.
pub(crate) const MAX_VALUES: usize = 1 << 28;

/// A value stored in the map knows its key.
pub(crate) trait Keyed {
    /// The prefix this value is stored under.
    fn key(&self) -> &ServicePrefix;
}

/// The map is full ([`MAX_VALUES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapFull;

#[derive(Clone, Debug)]
struct Node {
    /// Bit `b` set when byte value `b` has a child slot.
    children: [u64; 4],
    /// Number of children in the bitmap words before word `i` (at most 192).
    child_rank: [u8; 4],
    /// First slot of the child block in the pool (`NONE` without children).
    child_base: u32,
    /// Index of the in-node prefix block (`NONE` without one).
    block: u32,
    /// The key byte this node dispatches on.
    depth: u8,
    /// The key must be checked against `keys[node]` on bits `0..8·depth` (the node sits
    /// more than one byte below its parent).
    skip: bool,
}

impl Node {
    const fn new(depth: u8, skip: bool) -> Self {
        Self {
            children: [0; 4],
            child_rank: [0; 4],
            child_base: NONE,
            block: NONE,
            depth,
            skip,
        }
    }

    fn child_count(&self) -> usize {
        count(&self.children)
    }

    /// Slot offset of byte `b` in the child block (valid when the bit is set).
    fn child_offset(&self, b: u8) -> usize {
        let w = usize::from(b >> 6);
        let below = self.children[w] & ((1u64 << (b & 63)) - 1);
        usize::from(self.child_rank[w]) + below.count_ones() as usize
    }

    fn has_child(&self, b: u8) -> bool {
        self.children[usize::from(b >> 6)] >> (b & 63) & 1 != 0
    }

    fn update_rank(&mut self) {
        self.child_rank = ranks(&self.children);
    }
}

/// In-node prefixes of one node.
#[derive(Clone, Debug)]
struct Block {
    /// Bit `s` set where the best in-node match for byte `s` differs from byte `s - 1`
    /// (bit 0 always set).
    runs: [u64; 4],
    /// Runs started before word `i`.
    runs_rank: [u8; 4],
    /// One value (or `NONE`) per run, in the pool.
    runs_base: u32,
    /// Tree bitmap: bit `2^r - 1 + v` set for a stored prefix of `r` (0..=7) bits past the
    /// node's depth whose next `r` bits are `v`.
    present: [u64; 4],
    /// The stored prefixes' values in `present` bit order, in the pool.
    values_base: u32,
}

/// `u32` blocks of power-of-two sizes 1..=256 with a free list per size.
#[derive(Clone, Debug, Default)]
struct Pool {
    data: Vec<u32>,
    free: [Vec<u32>; 9],
}

impl Pool {
    fn class(n: usize) -> usize {
        n.next_power_of_two().trailing_zeros() as usize
    }

    fn alloc(&mut self, n: usize) -> u32 {
        let class = Self::class(n);
        if let Some(base) = self.free[class].pop() {
            return base;
        }
        let base = self.data.len();
        self.data.resize(base + (1 << class), NONE);
        // Bounded by MAX_VALUES: at most ~16 slots per value plus 256 per node.
        base as u32
    }

    fn release(&mut self, base: u32, n: usize) {
        if n > 0 && base != NONE {
            self.free[Self::class(n)].push(base);
        }
    }

    /// Resizes a block holding `old` items to hold `new`, keeping the first `min(old, new)`
    /// items. Returns the (possibly moved) base, `NONE` for zero items.
    fn resize(&mut self, base: u32, old: usize, new: usize) -> u32 {
        if new == 0 {
            self.release(base, old);
            return NONE;
        }
        if old == 0 {
            return self.alloc(new);
        }
        if Self::class(old) == Self::class(new) {
            return base;
        }
        let moved = self.alloc(new);
        let keep = old.min(new);
        let from = base as usize;
        self.data.copy_within(from..from + keep, moved as usize);
        self.release(base, old);
        moved
    }

    fn get(&self, i: usize) -> u32 {
        self.data.get(i).copied().unwrap_or(NONE)
    }

    /// Inserts `v` at `rank` in a block of `n` items; returns the new base.
    fn insert_at(&mut self, base: u32, n: usize, rank: usize, v: u32) -> u32 {
        let base = self.resize(base, n, n + 1);
        let b = base as usize;
        self.data.copy_within(b + rank..b + n, b + rank + 1);
        self.data[b + rank] = v;
        base
    }

    /// Removes the item at `rank` of a block of `n` items; returns the new base.
    fn remove_at(&mut self, base: u32, n: usize, rank: usize) -> u32 {
        let b = base as usize;
        self.data.copy_within(b + rank + 1..b + n, b + rank);
        self.resize(base, n, n - 1)
    }
}

/// The longest-prefix-match map.
#[derive(Clone, Debug)]
pub(crate) struct PrefixMap<V> {
    nodes: Vec<Node>,
    /// Path of each node: the key bits above its depth (the rest zero).
    keys: Vec<[u64; 4]>,
    free_nodes: Vec<u32>,
    blocks: Vec<Block>,
    free_blocks: Vec<u32>,
    pool: Pool,
    values: Vec<Option<V>>,
    free_values: Vec<u32>,
    len: usize,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        Self {
            nodes: vec![Node::new(0, false)],
            keys: vec![[0; 4]],
            free_nodes: Vec::new(),
            blocks: Vec::new(),
            free_blocks: Vec::new(),
            pool: Pool::default(),
            values: Vec::new(),
            free_values: Vec::new(),
            len: 0,
        }
    }
}

/// Where a prefix of `len` bits goes in a node at byte `depth` when it ends inside that byte:
/// its tree-bitmap position.
fn block_pos(words: &[u64; 4], len: u16, depth: u8) -> usize {
    let r = len - u16::from(depth) * 8; // 0..=7
    let v = u32::from(byte_at(words, depth)) >> (8 - r);
    ((1usize << r) - 1) + v as usize
}

/// Byte `i` (0..=31) of a key given as big-endian words.
fn byte_at(words: &[u64; 4], i: u8) -> u8 {
    (words[usize::from(i >> 3) & 3] >> (56 - 8 * (i & 7))) as u8
}

/// Leading bits two keys share (256 when equal).
fn common_prefix(a: &[u64; 4], b: &[u64; 4]) -> u16 {
    for i in 0..4 {
        let x = a[i] ^ b[i];
        if x != 0 {
            return (64 * i) as u16 + x.leading_zeros() as u16;
        }
    }
    256
}

/// Mask of the bits of word `i` that lie in the first `len` bits.
fn word_mask(len: u16, i: usize) -> u64 {
    let start = 64 * i as u16;
    if len <= start {
        0
    } else if len >= start + 64 {
        !0
    } else {
        !0u64 << (64 - (len - start))
    }
}

/// Whether `a` and `b` agree on their first `len` bits.
fn agree(a: &[u64; 4], b: &[u64; 4], len: u16) -> bool {
    let mut diff = 0;
    for i in 0..4 {
        diff |= (a[i] ^ b[i]) & word_mask(len, i);
    }
    diff == 0
}

fn masked(words: &[u64; 4], len: u16) -> [u64; 4] {
    let mut out = *words;
    for (i, w) in out.iter_mut().enumerate() {
        *w &= word_mask(len, i);
    }
    out
}

fn count(bits: &[u64; 4]) -> usize {
    bits.iter().map(|w| w.count_ones() as usize).sum()
}

fn ranks(bits: &[u64; 4]) -> [u8; 4] {
    let a = bits[0].count_ones();
    let b = a + bits[1].count_ones();
    let c = b + bits[2].count_ones();
    // c <= 192.
    [0, a as u8, b as u8, c as u8]
}

/// Number of set bits strictly below bit `pos`.
fn rank_below(bits: &[u64; 4], pos: usize) -> usize {
    let w = pos >> 6;
    let mut n = 0;
    for x in bits.iter().take(w) {
        n += x.count_ones() as usize;
    }
    n + (bits[w] & ((1u64 << (pos & 63)) - 1)).count_ones() as usize
}

fn test_bit(bits: &[u64; 4], pos: usize) -> bool {
    bits[(pos >> 6) & 3] >> (pos & 63) & 1 != 0
}

/// Calls `f` with every set bit position, ascending.
fn for_each_bit(bits: &[u64; 4], mut f: impl FnMut(usize)) {
    for (w, &word) in bits.iter().enumerate() {
        let mut x = word;
        while x != 0 {
            f(w * 64 + x.trailing_zeros() as usize);
            x &= x - 1;
        }
    }
}

fn key_words(p: &ServicePrefix) -> [u64; 4] {
    p.id().to_words()
}

/// Whether the prefix `p` contains the key `words`.
fn contains(p: &ServicePrefix, words: &[u64; 4]) -> bool {
    agree(&key_words(p), words, p.len())
}

impl<V: Keyed> PrefixMap<V> {
    /// Number of values stored.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The value stored under exactly `p`.
    pub(crate) fn get(&self, p: &ServicePrefix) -> Option<&V> {
        let slot = self.find(p)?;
        self.slot(slot)
    }

    /// The value stored under exactly `p`, mutably.
    pub(crate) fn get_mut(&mut self, p: &ServicePrefix) -> Option<&mut V> {
        let slot = self.find(p)?;
        self.slot_mut(slot)
    }

    /// The value in arena slot `slot`.
    pub(crate) fn slot(&self, slot: u32) -> Option<&V> {
        self.values.get(slot as usize)?.as_ref()
    }

    /// The value in arena slot `slot`, mutably.
    pub(crate) fn slot_mut(&mut self, slot: u32) -> Option<&mut V> {
        self.values.get_mut(slot as usize)?.as_mut()
    }

    /// Every value, in arena order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &V> {
        self.values.iter().filter_map(Option::as_ref)
    }

    /// Every value, mutably, in arena order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.values.iter_mut().filter_map(Option::as_mut)
    }

    /// The value with the longest prefix containing `id`.
    #[inline]
    pub(crate) fn lookup(&self, id: &ServiceId) -> Option<&V> {
        let bytes = id.as_bytes();
        let words = id.to_words();
        let mut best = NONE;
        let mut idx = ROOT;
        while let Some(node) = self.nodes.get(idx) {
            if node.skip
                && !self
                    .keys
                    .get(idx)
                    .is_some_and(|k| agree(k, &words, u16::from(node.depth) * 8))
            {
                break;
            }
            let b = bytes[usize::from(node.depth) & 31];
            let w = usize::from(b >> 6);
            let bit = b & 63;
            if node.block != NONE {
                if let Some(block) = self.blocks.get(node.block as usize) {
                    let upto = block.runs[w] & (!0u64 >> (63 - bit));
                    // Bit 0 of a block's runs is always set, so the count is at least 1.
                    let run = (usize::from(block.runs_rank[w]) + upto.count_ones() as usize)
                        .saturating_sub(1);
                    let v = self.pool.get(block.runs_base as usize + run);
                    if v != NONE {
                        best = v;
                    }
                }
            }
            let word = node.children[w];
            if word >> bit & 1 == 0 {
                break;
            }
            let off = usize::from(node.child_rank[w])
                + (word & ((1u64 << bit) - 1)).count_ones() as usize;
            let slot = self.pool.get(node.child_base as usize + off);
            if slot & LEAF != 0 {
                let v = slot & !LEAF;
                if self.slot(v).is_some_and(|val| contains(val.key(), &words)) {
                    best = v;
                }
                break;
            }
            idx = slot as usize;
        }
        if best == NONE { None } else { self.slot(best) }
    }

    /// Arena slot of the value stored under exactly `p`.
    fn find(&self, p: &ServicePrefix) -> Option<u32> {
        let words = key_words(p);
        let len = p.len();
        let mut idx = ROOT;
        loop {
            let node = self.nodes.get(idx)?;
            let d = u16::from(node.depth) * 8;
            if len < d + 8 {
                let block = self.blocks.get(node.block as usize)?;
                let pos = block_pos(&words, len, node.depth);
                if !test_bit(&block.present, pos) {
                    return None;
                }
                let rank = rank_below(&block.present, pos);
                return Some(self.pool.get(block.values_base as usize + rank));
            }
            let b = byte_at(&words, node.depth);
            if !node.has_child(b) {
                return None;
            }
            let slot = self
                .pool
                .get(node.child_base as usize + node.child_offset(b));
            if slot & LEAF != 0 {
                let v = slot & !LEAF;
                return self.slot(v).filter(|val| val.key() == p).map(|_| v);
            }
            let child = slot as usize;
            let cd = u16::from(self.nodes.get(child)?.depth) * 8;
            if len < cd || !agree(self.keys.get(child)?, &words, cd) {
                return None;
            }
            idx = child;
        }
    }

    /// Stores `make(slot)` under `p` and returns its arena slot. `p` must not be stored yet
    /// (checked by the caller with [`get`](Self::get)).
    pub(crate) fn insert_with(
        &mut self,
        p: ServicePrefix,
        make: impl FnOnce(u32) -> V,
    ) -> Result<u32, MapFull> {
        debug_assert!(self.find(&p).is_none());
        if self.len >= MAX_VALUES {
            return Err(MapFull);
        }
        let slot = match self.free_values.pop() {
            Some(s) => s,
            None => {
                self.values.push(None);
                (self.values.len() - 1) as u32
            }
        };
        self.values[slot as usize] = Some(make(slot));
        self.len += 1;
        self.trie_insert(&key_words(&p), p.len(), slot);
        Ok(slot)
    }

    /// Removes and returns the value stored under exactly `p`.
    pub(crate) fn remove(&mut self, p: &ServicePrefix) -> Option<V> {
        let words = key_words(p);
        let len = p.len();
        // (parent node, byte) of each node below the root on the way down.
        let mut path = [(0u32, 0u8); 33];
        let mut depth = 0;
        let mut idx = ROOT;
        let slot = loop {
            let node = &self.nodes[idx];
            let d = u16::from(node.depth) * 8;
            if len < d + 8 {
                let pos = block_pos(&words, len, node.depth);
                break self.block_remove(idx, pos)?;
            }
            let b = byte_at(&words, node.depth);
            if !node.has_child(b) {
                return None;
            }
            let s = self
                .pool
                .get(node.child_base as usize + node.child_offset(b));
            if s & LEAF != 0 {
                let v = s & !LEAF;
                if self.slot(v).is_none_or(|val| val.key() != p) {
                    return None;
                }
                self.remove_child(idx, b);
                break v;
            }
            let child = s as usize;
            let cd = u16::from(self.nodes[child].depth) * 8;
            if len < cd || !agree(&self.keys[child], &words, cd) {
                return None;
            }
            path[depth] = (idx as u32, b);
            depth += 1;
            idx = child;
        };
        self.compact(idx, &path[..depth]);
        let value = self.values.get_mut(slot as usize)?.take();
        self.free_values.push(slot);
        self.len -= 1;
        value
    }

    fn trie_insert(&mut self, words: &[u64; 4], len: u16, v: u32) {
        let mut idx = ROOT;
        loop {
            let depth = self.nodes[idx].depth;
            let d = u16::from(depth) * 8;
            if len < d + 8 {
                let pos = block_pos(words, len, depth);
                self.block_insert(idx, pos, v);
                return;
            }
            let b = byte_at(words, depth);
            if !self.nodes[idx].has_child(b) {
                self.add_child(idx, b, LEAF | v);
                return;
            }
            let node = &self.nodes[idx];
            let slot = self
                .pool
                .get(node.child_base as usize + node.child_offset(b));
            if slot & LEAF != 0 {
                // Two prefixes under one slot: a node where they part.
                let other = slot & !LEAF;
                let Some(q) = self.slot(other).map(|val| *val.key()) else {
                    return;
                };
                let qw = key_words(&q);
                let c = common_prefix(words, &qw).min(len).min(q.len());
                // c >= d + 8 (both hold byte b below this node) and c < 256 (distinct).
                let nd = (c / 8) as u8;
                let n = self.new_node(
                    nd,
                    masked(words, u16::from(nd) * 8),
                    u16::from(nd) * 8 > d + 8,
                );
                self.place(n, words, len, v);
                self.place(n, &qw, q.len(), other);
                self.set_child(idx, b, n as u32);
                return;
            }
            let child = slot as usize;
            let cd = u16::from(self.nodes[child].depth) * 8;
            let c = common_prefix(words, &self.keys[child]).min(len);
            if c >= cd {
                idx = child;
                continue;
            }
            // The new prefix leaves the compressed path above `child`: split it.
            let nd = (c / 8) as u8;
            let nbits = u16::from(nd) * 8;
            let n = self.new_node(nd, masked(words, nbits), nbits > d + 8);
            let cb = byte_at(&self.keys[child], nd);
            self.nodes[child].skip = cd > nbits + 8;
            self.add_child(n, cb, child as u32);
            self.place(n, words, len, v);
            self.set_child(idx, b, n as u32);
            return;
        }
    }

    /// Puts value `v` (key `words`/`len`) directly into node `n`: in its block when the key
    /// ends in the node's byte, else as a leaf.
    fn place(&mut self, n: usize, words: &[u64; 4], len: u16, v: u32) {
        let depth = self.nodes[n].depth;
        if len < u16::from(depth) * 8 + 8 {
            let pos = block_pos(words, len, depth);
            self.block_insert(n, pos, v);
        } else {
            self.add_child(n, byte_at(words, depth), LEAF | v);
        }
    }

    /// Removes empty nodes and folds single-item nodes into their parents, from `idx` up.
    /// `path` holds (parent, byte) for every node on the way from the root to `idx`.
    fn compact(&mut self, mut idx: usize, path: &[(u32, u8)]) {
        let mut up = path.len();
        while idx != ROOT && up > 0 {
            up -= 1;
            let (parent, b) = path[up];
            let parent = parent as usize;
            let node = &self.nodes[idx];
            let children = node.child_count();
            let prefixes = self
                .blocks
                .get(node.block as usize)
                .map_or(0, |bl| count(&bl.present));
            match children + prefixes {
                0 => {
                    self.remove_child(parent, b);
                    self.free_node(idx);
                    idx = parent;
                }
                1 => {
                    let moved = if children == 1 {
                        self.pool.get(node.child_base as usize)
                    } else {
                        let base = self.blocks[node.block as usize].values_base;
                        LEAF | self.pool.get(base as usize)
                    };
                    if moved & LEAF == 0 {
                        // It now sits more than one byte below `parent`.
                        self.nodes[moved as usize].skip = true;
                    }
                    self.set_child(parent, b, moved);
                    self.free_node(idx);
                    return;
                }
                _ => return,
            }
        }
    }

    fn new_node(&mut self, depth: u8, key: [u64; 4], skip: bool) -> usize {
        let node = Node::new(depth, skip);
        match self.free_nodes.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                self.keys[i as usize] = key;
                i as usize
            }
            None => {
                self.nodes.push(node);
                self.keys.push(key);
                self.nodes.len() - 1
            }
        }
    }

    fn free_node(&mut self, idx: usize) {
        let node = &self.nodes[idx];
        let (base, n, block) = (node.child_base, node.child_count(), node.block);
        self.pool.release(base, n);
        if block != NONE {
            self.free_block(block);
        }
        self.nodes[idx] = Node::new(0, false);
        self.free_nodes.push(idx as u32);
    }

    fn free_block(&mut self, bi: u32) {
        let block = &self.blocks[bi as usize];
        let (vb, vn) = (block.values_base, count(&block.present));
        let (rb, rn) = (block.runs_base, count(&block.runs));
        self.pool.release(vb, vn);
        self.pool.release(rb, rn);
        self.free_blocks.push(bi);
    }

    fn add_child(&mut self, idx: usize, b: u8, v: u32) {
        let node = &self.nodes[idx];
        let (n, rank) = (node.child_count(), node.child_offset(b));
        let base = self.pool.insert_at(node.child_base, n, rank, v);
        let node = &mut self.nodes[idx];
        node.child_base = base;
        node.children[usize::from(b >> 6)] |= 1 << (b & 63);
        node.update_rank();
    }

    fn remove_child(&mut self, idx: usize, b: u8) {
        let node = &self.nodes[idx];
        let (n, rank) = (node.child_count(), node.child_offset(b));
        let base = self.pool.remove_at(node.child_base, n, rank);
        let node = &mut self.nodes[idx];
        node.child_base = base;
        node.children[usize::from(b >> 6)] &= !(1 << (b & 63));
        node.update_rank();
    }

    fn set_child(&mut self, idx: usize, b: u8, v: u32) {
        let node = &self.nodes[idx];
        let at = node.child_base as usize + node.child_offset(b);
        self.pool.data[at] = v;
    }

    fn block_insert(&mut self, idx: usize, pos: usize, v: u32) {
        let bi = self.nodes[idx].block;
        let bi = if bi == NONE {
            let block = Block {
                runs: [0; 4],
                runs_rank: [0; 4],
                runs_base: NONE,
                present: [0; 4],
                values_base: NONE,
            };
            let bi = match self.free_blocks.pop() {
                Some(i) => {
                    self.blocks[i as usize] = block;
                    i
                }
                None => {
                    self.blocks.push(block);
                    (self.blocks.len() - 1) as u32
                }
            };
            self.nodes[idx].block = bi;
            bi
        } else {
            bi
        };
        let block = &self.blocks[bi as usize];
        let (n, rank) = (count(&block.present), rank_below(&block.present, pos));
        let base = self.pool.insert_at(block.values_base, n, rank, v);
        let block = &mut self.blocks[bi as usize];
        block.values_base = base;
        block.present[pos >> 6] |= 1 << (pos & 63);
        self.rebuild_runs(bi as usize);
    }

    /// Removes the block prefix at `pos` of node `idx`; returns its value.
    fn block_remove(&mut self, idx: usize, pos: usize) -> Option<u32> {
        let bi = self.nodes[idx].block;
        let block = self.blocks.get(bi as usize)?;
        if !test_bit(&block.present, pos) {
            return None;
        }
        let (n, rank) = (count(&block.present), rank_below(&block.present, pos));
        let v = self.pool.get(block.values_base as usize + rank);
        if n == 1 {
            self.free_block(bi);
            self.nodes[idx].block = NONE;
            return Some(v);
        }
        let base = self.pool.remove_at(block.values_base, n, rank);
        let block = &mut self.blocks[bi as usize];
        block.values_base = base;
        block.present[pos >> 6] &= !(1 << (pos & 63));
        self.rebuild_runs(bi as usize);
        Some(v)
    }

    /// Recomputes the expanded, run-compressed best matches of a block.
    fn rebuild_runs(&mut self, bi: usize) {
        let block = &self.blocks[bi];
        let mut expanded = [NONE; 256];
        let mut k = block.values_base as usize;
        // Ascending positions are ascending lengths: longer prefixes paint over shorter.
        for_each_bit(&block.present, |pos| {
            let r = usize::BITS - 1 - (pos + 1).leading_zeros(); // 0..=7
            let v = pos + 1 - (1 << r);
            let width = 1usize << (8 - r);
            let value = self.pool.get(k);
            k += 1;
            expanded[v * width..(v + 1) * width].fill(value);
        });
        let mut runs = [0u64; 4];
        let mut values = [NONE; 256];
        let mut n = 0;
        for s in 0..256 {
            if s == 0 || expanded[s] != expanded[s - 1] {
                runs[s >> 6] |= 1 << (s & 63);
                values[n] = expanded[s];
                n += 1;
            }
        }
        let old = count(&block.runs);
        let base = self.pool.resize(block.runs_base, old, n);
        let b = base as usize;
        self.pool.data[b..b + n].copy_from_slice(&values[..n]);
        let block = &mut self.blocks[bi];
        block.runs = runs;
        block.runs_rank = ranks(&runs);
        block.runs_base = base;
    }
}

#[cfg(test)]
impl<V: Keyed> PrefixMap<V> {
    /// Checks every structural invariant; panics with a description on the first failure.
    pub(crate) fn check_invariants(&self) {
        let mut seen = vec![false; self.values.len()];
        self.check_node(ROOT, None, &mut seen);
        let reachable = seen.iter().filter(|&&s| s).count();
        assert_eq!(reachable, self.len, "reachable values vs len");
        let stored = self.values.iter().filter(|v| v.is_some()).count();
        assert_eq!(stored, self.len, "stored values vs len");
    }

    fn check_node(&self, idx: usize, parent_depth: Option<u8>, seen: &mut [bool]) {
        let node = &self.nodes[idx];
        let key = &self.keys[idx];
        let bits = u16::from(node.depth) * 8;
        assert_eq!(masked(key, bits), *key, "node key has bits past its depth");
        assert_eq!(node.child_rank, ranks(&node.children));
        if let Some(pd) = parent_depth {
            assert!(node.depth > pd, "child node not deeper than parent");
            if node.depth > pd + 1 {
                assert!(node.skip, "node {idx} skips bytes but does not check them");
            }
            let items = node.child_count()
                + self
                    .blocks
                    .get(node.block as usize)
                    .map_or(0, |b| count(&b.present));
            assert!(items >= 2, "non-root node {idx} holds {items} items");
        }
        if node.block != NONE {
            let block = &self.blocks[node.block as usize];
            assert!(count(&block.present) > 0, "empty block kept");
            let mut k = 0;
            for_each_bit(&block.present, |pos| {
                let v = self.pool.get(block.values_base as usize + k);
                k += 1;
                let val = self.slot(v).expect("block value missing");
                let p = val.key();
                assert!(p.len() >= bits && p.len() < bits + 8, "block prefix length");
                let pw = key_words(p);
                assert!(agree(&pw, key, bits), "block prefix off the node's path");
                assert_eq!(block_pos(&pw, p.len(), node.depth), pos);
                assert!(!seen[v as usize], "value reachable twice");
                seen[v as usize] = true;
            });
            // Runs agree with a brute-force expansion.
            for s in 0..=255u8 {
                let upto = block.runs[usize::from(s >> 6)] & (!0u64 >> (63 - (s & 63)));
                let run = usize::from(block.runs_rank[usize::from(s >> 6)])
                    + upto.count_ones() as usize
                    - 1;
                let got = self.pool.get(block.runs_base as usize + run);
                let mut want = NONE;
                for_each_bit(&block.present, |pos| {
                    let r = usize::BITS - 1 - (pos + 1).leading_zeros();
                    let v = pos + 1 - (1 << r);
                    if usize::from(s) >> (8 - r) == v {
                        want = self
                            .pool
                            .get(block.values_base as usize + rank_below(&block.present, pos));
                    }
                });
                assert_eq!(got, want, "run value for byte {s}");
            }
        }
        for b in 0..=255u8 {
            if !node.has_child(b) {
                continue;
            }
            let slot = self
                .pool
                .get(node.child_base as usize + node.child_offset(b));
            if slot & LEAF != 0 {
                let v = slot & !LEAF;
                let val = self.slot(v).expect("leaf value missing");
                let p = val.key();
                let pw = key_words(p);
                assert!(p.len() >= bits + 8, "leaf too short for its slot");
                assert!(agree(&pw, key, bits), "leaf off the node's path");
                assert_eq!(byte_at(&pw, node.depth), b, "leaf under the wrong byte");
                assert!(!seen[v as usize], "value reachable twice");
                seen[v as usize] = true;
            } else {
                let child = slot as usize;
                let ck = &self.keys[child];
                assert!(agree(ck, key, bits), "child node off the path");
                assert_eq!(
                    byte_at(ck, node.depth),
                    b,
                    "child node under the wrong byte"
                );
                self.check_node(child, Some(node.depth), seen);
            }
        }
    }

    /// (nodes in use, blocks in use) for shape assertions.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (
            self.nodes.len() - self.free_nodes.len(),
            self.blocks.len() - self.free_blocks.len(),
        )
    }
}
