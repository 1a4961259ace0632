//! Longest-prefix-match map over 256-bit keys: a path-compressed, 256-ary trie with
//! popcount-compressed arrays (poptrie / ART family).
//!
//! # Layout
//!
//! * A **node** dispatches on one key byte (`depth`, 0..=31) and is three cache lines. It
//!   has two 256-bit bitmaps: `children` (byte values with a child slot) and `runs` (byte
//!   values where the best match *ending inside this byte* changes). Both index one array of
//!   `u32` items: the child slots in byte order, then one value per run. The slot for byte
//!   `b` is item `rank(children, b)`; the in-node best match is item
//!   `nchild + rank(runs, b) - 1`. Ranks of whole words are cached in the node, so each
//!   costs one popcount. Up to [`INLINE`] items live in the node itself (the common case
//!   below the top two levels), so a lookup step there reads three adjacent cache lines,
//!   fetched in parallel, and nothing else; larger item arrays live in the [`Pool`].
//! * A child slot holds a node index, or `LEAF | value` for a single stored prefix below that
//!   byte (path compression down to the leaf).
//! * Prefixes whose length falls inside a node's byte (`8·depth ≤ len < 8·depth + 8`) are
//!   recorded in the node's tree-bitmap **block** (which of the 255 possible (length, bits)
//!   pairs are stored, with their values; read by updates only) and expanded over the 256
//!   byte values into the run values.
//! * A node reached by skipping bytes (its depth is more than one byte below its parent's)
//!   has `skip` set and checks the key against the node's stored path (`keys`).
//! * Every node except the root holds at least two things (children plus block prefixes),
//!   so there are fewer nodes than prefixes; a removal that leaves one thing folds the node
//!   back into its parent's slot.
//! * Once the map holds [`DIRECT_MIN`] values, a **direct table** indexed by the key's first
//!   16 bits gives the best match of length < 16 and the trie position to continue from
//!   (poptrie's direct pointing), so a lookup skips the two top levels. It is derived from
//!   the root and the depth-1 nodes, and an update refreshes only the entries whose inputs
//!   it changed (one entry for a new child of a depth-1 node; 256 for a change at the root
//!   under one byte; all 65 536 only for a prefix shorter than 8 bits).
//!
//! Lookup walks down remembering the last match (in-node run value, or a leaf whose prefix
//! contains the key). Values (the table's entries) live in a separate arena addressed by
//! `u32`, out of the hot nodes, and a lookup returns a reference without reading the value
//! (a `live` bitmap, not an `Option`, marks free slots). The arena grows by a quarter at a
//! time rather than doubling, which bounds its unused part to a fifth.
//! Updates touch one path: per node changed, at most a 512-slot shift and a 256-slot
//! re-expansion; never a rebuild.

use crate::wire::{ServiceId, ServicePrefix};

/// "No value" in a `u32` slot.
const NONE: u32 = u32::MAX;
/// Tag of a child slot that holds a value (leaf) rather than a node.
const LEAF: u32 = 1 << 31;
/// The root node is always at index 0.
const ROOT: usize = 0;
/// Most values the map holds. Keeps value and node indices below `LEAF`, so index
/// arithmetic cannot overflow.
pub(crate) const MAX_VALUES: usize = 1 << 26;

/// A value stored in the map knows its key.
pub(crate) trait Keyed {
    /// The prefix this value is stored under.
    fn key(&self) -> &ServicePrefix;
    /// A placeholder for a free arena slot (never handed out by the map).
    fn vacant() -> Self;
}

/// The map is full ([`MAX_VALUES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapFull;

/// Values from which the direct table is kept (512 KiB, so not for small maps).
const DIRECT_MIN: usize = 1 << 14;

/// Items a node holds inline (fills the node to three cache lines).
const INLINE: usize = 26;

#[derive(Clone, Debug)]
#[repr(C, align(64))]
struct Node {
    /// Bit `b` set when byte value `b` has a child slot.
    children: [u64; 4],
    /// Bit `b` set where the best in-node match for byte `b` differs from byte `b - 1`
    /// (bit 0 set whenever the node has in-node prefixes; all zero otherwise).
    runs: [u64; 4],
    /// Children in the bitmap words before word `i` (at most 192).
    child_rank: [u8; 4],
    /// Runs started in the bitmap words before word `i`.
    runs_rank: [u8; 4],
    /// Pool block holding the items (`nchild` child slots, then `nruns` run values), or
    /// `NONE` when they are in `inline`.
    base: u32,
    nchild: u16,
    nruns: u16,
    /// Index of the tree-bitmap block of in-node prefixes (`NONE` without one).
    block: u32,
    /// The key byte this node dispatches on.
    depth: u8,
    /// The key must be checked against `keys[node]` on bits `0..8·depth` (the node sits
    /// more than one byte below its parent).
    skip: bool,
    /// The items when there are at most [`INLINE`] of them.
    inline: [u32; INLINE],
}

impl Node {
    const fn new(depth: u8, skip: bool) -> Self {
        Self {
            children: [0; 4],
            runs: [0; 4],
            child_rank: [0; 4],
            runs_rank: [0; 4],
            base: NONE,
            nchild: 0,
            nruns: 0,
            block: NONE,
            depth,
            skip,
            inline: [NONE; INLINE],
        }
    }

    /// Number of items.
    fn item_count(&self) -> usize {
        usize::from(self.nchild) + usize::from(self.nruns)
    }

    /// Item index of byte `b`'s child slot (valid when its child bit is set).
    fn child_offset(&self, b: u8) -> usize {
        let w = usize::from(b >> 6);
        let below = self.children[w] & ((1u64 << (b & 63)) - 1);
        usize::from(self.child_rank[w]) + below.count_ones() as usize
    }

    fn has_child(&self, b: u8) -> bool {
        self.children[usize::from(b >> 6)] >> (b & 63) & 1 != 0
    }
}

/// Tree bitmap of one node's in-node prefixes (read by updates, not by lookups).
#[derive(Clone, Debug)]
struct Block {
    /// Bit `2^r - 1 + v` set for a stored prefix of `r` (0..=7) bits past the node's depth
    /// whose next `r` bits are `v`.
    present: [u64; 4],
    /// The stored prefixes' values in `present` bit order, in the pool.
    values_base: u32,
}

/// `u32` blocks of power-of-two sizes 1..=512 with a free list per size.
#[derive(Clone, Debug, Default)]
struct Pool {
    data: Vec<u32>,
    free: [Vec<u32>; 10],
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
        // Below 2^31 + 512: `insert_with` refuses to grow the pool past 2^31 slots.
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
    /// Value arena. Free slots hold `V::vacant()`; `live` tells them apart, so a lookup
    /// can hand out `&V` without reading the value's memory.
    values: Vec<V>,
    live: Vec<u64>,
    free_values: Vec<u32>,
    len: usize,
    /// Direct table over the first 16 key bits: (best match of length < 16, where to
    /// continue: node index, `LEAF | value` or `NONE`). Empty when not kept.
    direct: Vec<[u32; 2]>,
    /// Stale direct entries: (first byte, second bytes `lo..=hi`).
    dirty: Vec<(u8, u8, u8)>,
    /// Every direct entry is stale.
    dirty_all: bool,
    /// Keep the direct table from this many values (dropped below a quarter of it).
    direct_min: usize,
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
            live: Vec::new(),
            free_values: Vec::new(),
            len: 0,
            direct: Vec::new(),
            dirty: Vec::new(),
            dirty_all: false,
            direct_min: DIRECT_MIN,
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

/// (length past the node's depth, bits) of a tree-bitmap position.
fn block_prefix(pos: usize) -> (u32, usize) {
    let r = usize::BITS - 1 - (pos + 1).leading_zeros(); // 0..=7
    (r, pos + 1 - (1 << r))
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
    let w = (pos >> 6) & 3;
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

/// Bit `i` of a bitmap stored as words (false past its end).
fn bit_of(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 != 0)
}

fn key_words(p: &ServicePrefix) -> [u64; 4] {
    p.id().to_words()
}

/// Whether the prefix `p` contains the key `words`.
fn contains(p: &ServicePrefix, words: &[u64; 4]) -> bool {
    agree(&key_words(p), words, p.len())
}

impl<V: Keyed> PrefixMap<V> {
    fn is_live(&self, slot: usize) -> bool {
        bit_of(&self.live, slot)
    }

    /// A node's items (the slice may run past them into the rest of the pool).
    #[inline]
    fn items<'a>(&'a self, node: &'a Node) -> &'a [u32] {
        if node.base == NONE {
            &node.inline
        } else {
            self.pool.data.get(node.base as usize..).unwrap_or_default()
        }
    }

    fn child_slot(&self, node: &Node, b: u8) -> u32 {
        let off = node.child_offset(b);
        self.items(node).get(off).copied().unwrap_or(NONE)
    }

    /// Copies node `idx`'s items out.
    fn load_items(&self, idx: usize) -> ([u32; 512], usize) {
        let node = &self.nodes[idx];
        let n = node.item_count();
        let mut out = [NONE; 512];
        out[..n].copy_from_slice(&self.items(node)[..n]);
        (out, n)
    }

    /// Stores node `idx`'s items: inline when they fit, else in a pool block.
    fn store_items(&mut self, idx: usize, items: &[u32]) {
        let node = &self.nodes[idx];
        let (old_base, old_n) = (node.base, node.item_count());
        let n = items.len();
        if n <= INLINE {
            self.pool.release(old_base, old_n);
            let node = &mut self.nodes[idx];
            node.base = NONE;
            node.inline[..n].copy_from_slice(items);
            node.inline[n..].fill(NONE);
        } else {
            let base = if old_base != NONE && Pool::class(old_n) == Pool::class(n) {
                old_base
            } else {
                self.pool.release(old_base, old_n);
                self.pool.alloc(n)
            };
            self.pool.data[base as usize..base as usize + n].copy_from_slice(items);
            let node = &mut self.nodes[idx];
            node.base = base;
            node.inline.fill(NONE);
        }
    }

    /// An empty map that keeps the direct table from `direct_min` values on.
    #[cfg(test)]
    pub(crate) fn with_direct_min(direct_min: usize) -> Self {
        let mut map = Self {
            direct_min,
            ..Self::default()
        };
        map.update_direct();
        map
    }

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
        if !self.is_live(slot as usize) {
            return None;
        }
        self.values.get(slot as usize)
    }

    /// The value in arena slot `slot`, mutably.
    pub(crate) fn slot_mut(&mut self, slot: u32) -> Option<&mut V> {
        if !self.is_live(slot as usize) {
            return None;
        }
        self.values.get_mut(slot as usize)
    }

    /// Every value, in arena order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &V> {
        self.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| self.is_live(i).then_some(v))
    }

    /// Every value, mutably, in arena order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut V> {
        let live = &self.live;
        self.values
            .iter_mut()
            .enumerate()
            .filter_map(move |(i, v)| bit_of(live, i).then_some(v))
    }

    /// The value with the longest prefix containing `id`.
    #[inline]
    pub(crate) fn lookup(&self, id: &ServiceId) -> Option<&V> {
        let bytes = id.as_bytes();
        let words = id.to_words();
        let mut best = NONE;
        let mut idx = ROOT;
        if !self.direct.is_empty() {
            let i = usize::from(bytes[0]) << 8 | usize::from(bytes[1]);
            let [b, next] = self.direct.get(i).copied().unwrap_or([NONE; 2]);
            best = b;
            idx = if next & LEAF != 0 {
                let v = next & !LEAF;
                if next != NONE && self.slot(v).is_some_and(|val| contains(val.key(), &words)) {
                    best = v;
                }
                usize::MAX
            } else {
                next as usize
            };
        }
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
            let items = self.items(node);
            // Runs started at or before `b`: the last one holds the in-node best match.
            let runs = usize::from(node.runs_rank[w])
                + (node.runs[w] & (!0u64 >> (63 - bit))).count_ones() as usize;
            // Branch-free on purpose: whether a node has in-node prefixes is data-dependent,
            // and a mispredicted branch here stops the CPU from overlapping the next
            // lookup's cache misses with this one's.
            let at = (usize::from(node.nchild) + runs).wrapping_sub(1);
            let v = items.get(at).copied().unwrap_or(NONE);
            let v = if runs == 0 { NONE } else { v };
            best = if v == NONE { best } else { v };
            let word = node.children[w];
            if word >> bit & 1 == 0 {
                break;
            }
            let off = usize::from(node.child_rank[w])
                + (word & ((1u64 << bit) - 1)).count_ones() as usize;
            let slot = items.get(off).copied().unwrap_or(NONE);
            if slot & LEAF != 0 {
                let v = slot & !LEAF;
                if self.slot(v).is_some_and(|val| contains(val.key(), &words)) {
                    best = v;
                }
                break;
            }
            idx = slot as usize;
        }
        // Every value the trie references is live: no need to read the value to return it.
        if best == NONE {
            None
        } else {
            self.values.get(best as usize)
        }
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
            let slot = self.child_slot(node, b);
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
        // One insert allocates at most a few pool blocks of at most 512 slots, so below
        // 2^31 slots the pool cannot outgrow `u32` indices whatever the update history.
        if self.len >= MAX_VALUES || self.pool.data.len() >= 1 << 31 {
            return Err(MapFull);
        }
        let slot = match self.free_values.pop() {
            Some(s) => s,
            None => {
                if self.values.len() == self.values.capacity() {
                    // Grow by a quarter, not the default doubling: at most 20 % of the arena
                    // is ever unused, for amortised four copies per value.
                    self.values.reserve_exact((self.values.len() / 4).max(16));
                }
                self.values.push(V::vacant());
                if self.live.len() * 64 < self.values.len() {
                    self.live.push(0);
                }
                (self.values.len() - 1) as u32
            }
        };
        self.values[slot as usize] = make(slot);
        self.live[slot as usize / 64] |= 1 << (slot % 64);
        self.len += 1;
        self.trie_insert(&key_words(&p), p.len(), slot);
        self.update_direct();
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
            let s = self.child_slot(node, b);
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
        let value = core::mem::replace(self.values.get_mut(slot as usize)?, V::vacant());
        self.live[slot as usize / 64] &= !(1 << (slot % 64));
        self.free_values.push(slot);
        self.len -= 1;
        self.update_direct();
        Some(value)
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
            let slot = self.child_slot(node, b);
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
                let nbits = u16::from(nd) * 8;
                let n = self.new_node(nd, masked(words, nbits), nbits > d + 8);
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
            let children = usize::from(node.nchild);
            let block = self
                .blocks
                .get(node.block as usize)
                .filter(|_| node.block != NONE);
            let prefixes = block.map_or(0, |bl| count(&bl.present));
            match children + prefixes {
                0 => {
                    self.remove_child(parent, b);
                    self.free_node(idx);
                    idx = parent;
                }
                1 => {
                    let moved = match block {
                        Some(bl) if children == 0 => LEAF | self.pool.get(bl.values_base as usize),
                        _ => self.items(node).first().copied().unwrap_or(NONE),
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

    /// Records that node `idx` changed at byte `b` (or anywhere): the direct entries that
    /// depend on it are stale.
    fn touch(&mut self, idx: usize, b: Option<u8>) {
        if self.direct.is_empty() {
            return;
        }
        match (self.nodes[idx].depth, b) {
            (0, Some(a)) => self.dirty.push((a, 0, 255)),
            (0, None) => self.dirty_all = true,
            (1, c) => {
                let a = byte_at(&self.keys[idx], 0);
                let (lo, hi) = c.map_or((0, 255), |c| (c, c));
                self.dirty.push((a, lo, hi));
            }
            _ => {}
        }
    }

    /// Creates, refreshes or drops the direct table after an update.
    fn update_direct(&mut self) {
        if self.direct.is_empty() {
            if self.len < self.direct_min {
                return;
            }
            self.direct = vec![[NONE; 2]; 1 << 16];
            self.dirty_all = true;
        } else if self.len < self.direct_min / 4 {
            self.direct = Vec::new();
        }
        let mut dirty = core::mem::take(&mut self.dirty);
        if self.direct.is_empty() {
            // Nothing to refresh.
        } else if self.dirty_all {
            for a in 0..=255 {
                self.refresh_direct(a, 0, 255);
            }
        } else {
            for &(a, lo, hi) in &dirty {
                self.refresh_direct(a, lo, hi);
            }
        }
        self.dirty_all = false;
        dirty.clear();
        // Keep the buffer: no allocation on the next update.
        self.dirty = dirty;
    }

    /// Recomputes the direct entries of first byte `a`, second bytes `lo..=hi`.
    fn refresh_direct(&mut self, a: u8, lo: u8, hi: u8) {
        for c in lo..=hi {
            let entry = self.direct_entry(a, c);
            if let Some(dst) = self.direct.get_mut(usize::from(a) << 8 | usize::from(c)) {
                *dst = entry;
            }
        }
    }

    /// The direct entry for first bytes `a`, `c`, computed from the root and the depth-1
    /// nodes: (best match shorter than 16 bits, where to continue).
    fn direct_entry(&self, a: u8, c: u8) -> [u32; 2] {
        let root = &self.nodes[ROOT];
        let best0 = self.run_value(root, a);
        let slot0 = if root.has_child(a) {
            self.child_slot(root, a)
        } else {
            NONE
        };
        if slot0 & LEAF == 0 {
            if let Some(node) = self.nodes.get(slot0 as usize).filter(|n| n.depth == 1) {
                let best1 = self.run_value(node, c);
                let next = if node.has_child(c) {
                    self.child_slot(node, c)
                } else {
                    NONE
                };
                return [if best1 == NONE { best0 } else { best1 }, next];
            }
        }
        [best0, slot0]
    }

    /// Best match in node `node` for byte `b` from its runs, or `NONE`.
    fn run_value(&self, node: &Node, b: u8) -> u32 {
        let w = usize::from(b >> 6);
        let runs = usize::from(node.runs_rank[w])
            + (node.runs[w] & (!0u64 >> (63 - (b & 63)))).count_ones() as usize;
        if runs == 0 {
            return NONE;
        }
        let at = usize::from(node.nchild) + runs - 1;
        self.items(node).get(at).copied().unwrap_or(NONE)
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
        let (base, n, block) = (node.base, node.item_count(), node.block);
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
        self.pool.release(vb, vn);
        self.free_blocks.push(bi);
    }

    fn add_child(&mut self, idx: usize, b: u8, v: u32) {
        self.touch(idx, Some(b));
        let (mut items, n) = self.load_items(idx);
        let rank = self.nodes[idx].child_offset(b);
        items.copy_within(rank..n, rank + 1);
        items[rank] = v;
        self.store_items(idx, &items[..n + 1]);
        let node = &mut self.nodes[idx];
        node.nchild += 1;
        node.children[usize::from(b >> 6)] |= 1 << (b & 63);
        node.child_rank = ranks(&node.children);
    }

    fn remove_child(&mut self, idx: usize, b: u8) {
        self.touch(idx, Some(b));
        let (mut items, n) = self.load_items(idx);
        let rank = self.nodes[idx].child_offset(b);
        items.copy_within(rank + 1..n, rank);
        self.store_items(idx, &items[..n - 1]);
        let node = &mut self.nodes[idx];
        node.nchild -= 1;
        node.children[usize::from(b >> 6)] &= !(1 << (b & 63));
        node.child_rank = ranks(&node.children);
    }

    fn set_child(&mut self, idx: usize, b: u8, v: u32) {
        self.touch(idx, Some(b));
        let node = &mut self.nodes[idx];
        let at = node.child_offset(b);
        if node.base == NONE {
            node.inline[at] = v;
        } else {
            self.pool.data[node.base as usize + at] = v;
        }
    }

    fn block_insert(&mut self, idx: usize, pos: usize, v: u32) {
        let mut bi = self.nodes[idx].block;
        if bi == NONE {
            let block = Block {
                present: [0; 4],
                values_base: NONE,
            };
            bi = match self.free_blocks.pop() {
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
        }
        let block = &self.blocks[bi as usize];
        let (n, rank) = (count(&block.present), rank_below(&block.present, pos));
        let base = self.pool.insert_at(block.values_base, n, rank, v);
        let block = &mut self.blocks[bi as usize];
        block.values_base = base;
        block.present[pos >> 6] |= 1 << (pos & 63);
        self.rebuild_runs(idx);
    }

    /// Removes the block prefix at `pos` of node `idx`; returns its value.
    fn block_remove(&mut self, idx: usize, pos: usize) -> Option<u32> {
        let bi = self.nodes[idx].block;
        let block = self.blocks.get(bi as usize).filter(|_| bi != NONE)?;
        if !test_bit(&block.present, pos) {
            return None;
        }
        let (n, rank) = (count(&block.present), rank_below(&block.present, pos));
        let v = self.pool.get(block.values_base as usize + rank);
        if n == 1 {
            self.free_block(bi);
            self.nodes[idx].block = NONE;
        } else {
            let base = self.pool.remove_at(block.values_base, n, rank);
            let block = &mut self.blocks[bi as usize];
            block.values_base = base;
            block.present[pos >> 6] &= !(1 << (pos & 63));
        }
        self.rebuild_runs(idx);
        Some(v)
    }

    /// Recomputes node `idx`'s run values from its block: the in-node prefixes expanded over
    /// the 256 byte values, run-length compressed.
    fn rebuild_runs(&mut self, idx: usize) {
        self.touch(idx, None);
        let node = &self.nodes[idx];
        let mut runs = [0u64; 4];
        let mut values = [NONE; 256];
        let mut n = 0;
        let block = self
            .blocks
            .get(node.block as usize)
            .filter(|_| node.block != NONE);
        if let Some(block) = block {
            let mut expanded = [NONE; 256];
            let mut k = block.values_base as usize;
            // Ascending positions are ascending lengths: longer prefixes paint over shorter.
            for_each_bit(&block.present, |pos| {
                let (r, bits) = block_prefix(pos);
                let width = 1usize << (8 - r);
                let value = self.pool.get(k);
                k += 1;
                expanded[bits * width..(bits + 1) * width].fill(value);
            });
            for s in 0..256 {
                if s == 0 || expanded[s] != expanded[s - 1] {
                    runs[s >> 6] |= 1 << (s & 63);
                    values[n] = expanded[s];
                    n += 1;
                }
            }
        }
        let nchild = usize::from(node.nchild);
        let (mut items, _) = self.load_items(idx);
        items[nchild..nchild + n].copy_from_slice(&values[..n]);
        self.store_items(idx, &items[..nchild + n]);
        let node = &mut self.nodes[idx];
        node.runs = runs;
        node.runs_rank = ranks(&runs);
        // n <= 256.
        node.nruns = n as u16;
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
        let stored = (0..self.values.len()).filter(|&i| self.is_live(i)).count();
        assert_eq!(stored, self.len, "stored values vs len");
        assert!(
            self.dirty.is_empty() && !self.dirty_all,
            "stale direct entries left"
        );
        if !self.direct.is_empty() {
            // Every entry under the first bytes the tests cluster on, and a spread of others
            // (lookups against the reference model check the rest).
            for a in (0..=255u8).step_by(15).chain([0x00, 0x5a, 0xa5, 0xff]) {
                for c in 0..=255u8 {
                    let i = usize::from(a) << 8 | usize::from(c);
                    assert_eq!(
                        self.direct[i],
                        self.direct_entry(a, c),
                        "direct entry {i:#06x}"
                    );
                }
            }
        }
    }

    fn check_node(&self, idx: usize, parent_depth: Option<u8>, seen: &mut [bool]) {
        let node = &self.nodes[idx];
        let key = &self.keys[idx];
        let bits = u16::from(node.depth) * 8;
        assert_eq!(masked(key, bits), *key, "node key has bits past its depth");
        assert_eq!(node.child_rank, ranks(&node.children));
        assert_eq!(node.runs_rank, ranks(&node.runs));
        assert_eq!(usize::from(node.nchild), count(&node.children));
        assert_eq!(usize::from(node.nruns), count(&node.runs));
        assert_eq!(node.base == NONE, node.item_count() <= INLINE);
        if let Some(pd) = parent_depth {
            assert!(node.depth > pd, "child node not deeper than parent");
            if node.depth > pd + 1 {
                assert!(node.skip, "node {idx} skips bytes but does not check them");
            }
            let items = usize::from(node.nchild)
                + self
                    .blocks
                    .get(node.block as usize)
                    .map_or(0, |b| count(&b.present));
            assert!(items >= 2, "non-root node {idx} holds {items} items");
        }
        let mut want_runs = [NONE; 256];
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
                let (r, pbits) = block_prefix(pos);
                for (s, slot) in want_runs.iter_mut().enumerate() {
                    if s >> (8 - r) == pbits {
                        *slot = v;
                    }
                }
            });
        } else {
            assert_eq!(node.runs, [0; 4], "runs without a block");
        }
        if node.nruns > 0 {
            for s in 0..=255u8 {
                let w = usize::from(s >> 6);
                let upto = node.runs[w] & (!0u64 >> (63 - (s & 63)));
                let run = usize::from(node.runs_rank[w]) + upto.count_ones() as usize;
                assert!(run >= 1, "byte {s} before the first run");
                let got = self.items(node)[usize::from(node.nchild) + run - 1];
                assert_eq!(got, want_runs[usize::from(s)], "run value for byte {s}");
            }
        }
        for b in 0..=255u8 {
            if !node.has_child(b) {
                continue;
            }
            let slot = self.child_slot(node, b);
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

    /// Whether the direct table is kept now.
    pub(crate) fn has_direct(&self) -> bool {
        !self.direct.is_empty()
    }

    /// (nodes in use, blocks in use) for shape assertions.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (
            self.nodes.len() - self.free_nodes.len(),
            self.blocks.len() - self.free_blocks.len(),
        )
    }
}
