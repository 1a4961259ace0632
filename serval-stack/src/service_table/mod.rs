//! The service table: longest-prefix match over 256-bit ServiceIDs, with FORWARD, DEMUX,
//! DELAY and DROP rules grouped in priority sets (`SERVAL-ORIGINAL.md` §4).
//!
//! The table is pure: no clock, no I/O, no OS randomness (random choice takes the caller's
//! RNG). Lookups take `&self`; counters are updated through a separate `&mut` call
//! ([`ServiceTable::record`]) or by the `resolve_*` helpers that do both.
//!
//! # Data model
//!
//! * One [`Entry`] per [`ServicePrefix`] (prefix length 0..=256; length 0 is the catch-all
//!   default rule). An entry exists while it has at least one [`Target`].
//! * A target is an [`Action`] (FORWARD to a socket address, DEMUX to a [`ListenerId`],
//!   DELAY, DROP) with a priority, a weight (0 is stored as 1) and [`TargetStats`].
//! * Targets of equal priority form a set; only the highest-priority set is **active**
//!   ([`Entry::active`]); the others are standby and become active when every higher target
//!   is removed.
//! * Choosing a target in the active set: [`Entry::pick_random`] (weighted random, the
//!   original's ANYCAST) or [`Entry::pick_by_hash`] (weighted rendezvous hashing on a flow
//!   hash: deterministic, so a router keeps a client on one replica, and removing a target
//!   moves only the flows that were on it).
//!
//! ```
//! use serval_stack::service_table::{Action, Rule, ServiceTable};
//! use serval_stack::wire::{ServiceId, ServicePrefix};
//!
//! let mut table = ServiceTable::new();
//! let web: ServicePrefix = "0x0000d9:24".parse().unwrap();
//! table.insert(web, Rule::forward("10.0.0.1:54325".parse().unwrap())).unwrap();
//! table.insert(web, Rule::forward("10.0.0.2:54325".parse().unwrap()).with_weight(3)).unwrap();
//! table.insert(ServicePrefix::DEFAULT, Rule::drop()).unwrap();
//!
//! let entry = table.lookup(&ServiceId::from_u32(55555)).unwrap();
//! assert_eq!(entry.prefix(), &web);
//! let pick = entry.pick_by_hash(0x1234).unwrap();
//! assert!(matches!(pick.action(), Action::Forward(_)));
//! assert_eq!(table.lookup(&ServiceId::from_u32(7)).unwrap().prefix().len(), 0);
//! ```
//!
//! # Lookup structure
//!
//! A path-compressed 256-ary trie (poptrie family; see `trie.rs`): a node per key byte that
//! matters, with a child bitmap and a run bitmap (the prefixes ending inside that byte,
//! expanded and run-length compressed) indexing one popcount-compressed item array, held
//! inside the node when small. Large tables add a 64 Ki-entry direct table for the first
//! 16 bits. With uniformly distributed ServiceIDs a lookup reads one direct entry and one or
//! two nodes whatever the table size, where the original's one-node-per-bit trie walks up
//! to 256 nodes. Entries (the rules) live in a separate arena, one target inline. Updates
//! change one path, never rebuild. Figures (lookups/s, bytes per rule, insert and remove
//! cost, the ratio to the original's structure) are in `BENCHMARKS.md`.
//!
//! # Deliberate differences from the original (`SERVAL-ORIGINAL.md` §4)
//!
//! * **Duplicates are checked in every priority set**, not only the top one (a §4.4 quirk):
//!   an action occurs at most once per entry, so remove and modify by action are never
//!   ambiguous.
//! * **"Identical" means equal [`Action`]**: two DEMUX targets are the same only with the
//!   same [`ListenerId`]. The original treated any two sockets on one (ID, prefix) as
//!   duplicates whatever their protocol; here the SAL, which knows protocols, decides whether
//!   a second listener may bind (it may allow one per protocol, as the original meant to).
//! * **A set holding DROP or DELAY may hold other targets** (the original refused to add
//!   anything to a top set holding one). Weights then apply across them, which expresses,
//!   say, shedding 10 % of new flows; a controller wanting pure DELAY removes the others.
//! * **No address on DELAY and DROP** and no interface index anywhere: next hops are UDP
//!   socket addresses (IPv4 or IPv6, with port), so there is no outgoing interface to resolve
//!   and no "interface down" sweep; [`ServiceTable::retain`] removes, for example, every
//!   target on a dead next hop. (This also sidesteps the original's null-interface crash on
//!   DELAY/DROP adds, a §4.4 quirk.)
//! * **Prefixes are taken literally**: the all-zero ID with length 256 is an exact-match rule
//!   like any other. Forcing the all-zero ID to length 0, and "length 0 means 256" in control
//!   messages, are wire conventions that the control-message decoder applies.
//! * **No lookup filters** (LOCAL/GLOBAL/EXACT): [`ServiceTable::lookup`] is the longest
//!   match, [`ServiceTable::get`] the exact one; the SAL reads the active set's kinds.
//! * **No set flags, no ALL/DEMUX/FORWARD multicast modes**: one target per packet.
//! * **Counters are `u64`** (the original's were `u32`; its DEL_SERVICE reply also copied
//!   packets into bytes dropped, a §5.2 quirk).

mod rule;
mod select;
mod stats;
mod trie;

#[cfg(test)]
mod tests;

use core::fmt;

pub use rule::{
    Action, DEFAULT_PRIORITY, Entry, LOCAL_PRIORITY, LOCAL_WEIGHT, ListenerId, Rule, RuleKind,
    Target, TargetSet, TargetStats,
};
pub use select::Pick;
pub use stats::{Outcome, ServiceTableStats};

use crate::wire::{ServiceId, ServicePrefix};
use trie::{Keyed, PrefixMap};

/// Why a table operation was refused. The table is unchanged after any error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The entry already has a target with this action (in any priority set).
    #[error("{prefix} already has the target {action:?}")]
    DuplicateTarget {
        /// The entry's prefix.
        prefix: ServicePrefix,
        /// The action that is already there.
        action: Action,
    },
    /// No entry has exactly this prefix.
    #[error("no entry for {0}")]
    NoEntry(ServicePrefix),
    /// The entry has no target with this action.
    #[error("{prefix} has no target {action:?}")]
    NoTarget {
        /// The entry's prefix.
        prefix: ServicePrefix,
        /// The action that was not found.
        action: Action,
    },
    /// A FORWARD rule was given without a next-hop address.
    #[error("a FORWARD rule needs a next-hop address")]
    MissingAddress,
    /// A DEMUX rule was given without a listener.
    #[error("a DEMUX rule needs a local listener")]
    MissingListener,
    /// An address was given for a rule kind that takes none.
    #[error("a {} rule takes no address", .0.short_name())]
    AddressNotAllowed(RuleKind),
    /// A listener was given for a rule kind that takes none.
    #[error("a {} rule takes no listener", .0.short_name())]
    ListenerNotAllowed(RuleKind),
    /// The table holds the most entries it can address.
    #[error("the service table is full")]
    TableFull,
    /// A [`Pick`] no longer names a target with its action (the table changed since).
    #[error("stale target handle")]
    StaleHandle,
}

impl Keyed for Entry {
    fn key(&self) -> &ServicePrefix {
        &self.prefix
    }

    fn vacant() -> Self {
        Self {
            targets: rule::Targets::Many(Vec::new()),
            prefix: ServicePrefix::DEFAULT,
            slot: u32::MAX,
        }
    }
}

/// The service table: entries keyed by ServiceID prefix, longest-prefix match.
#[derive(Clone, Default)]
pub struct ServiceTable {
    map: PrefixMap<Entry>,
    targets: usize,
    counters: ServiceTableStats,
}

impl fmt::Debug for ServiceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceTable")
            .field("entries", &self.len())
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl ServiceTable {
    /// An empty table (no default rule: unknown services match nothing until one is added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries (distinct prefixes).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table has no entry.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Number of targets (rules) over all entries.
    pub fn target_count(&self) -> usize {
        self.targets
    }

    /// Adds a target to the entry of `prefix`, creating the entry if needed. The target joins
    /// the set of its priority, after the targets already there.
    pub fn insert(&mut self, prefix: ServicePrefix, rule: Rule) -> Result<(), TableError> {
        let target = Target::new(rule);
        if let Some(entry) = self.map.get_mut(&prefix) {
            if entry.position(&rule.action).is_some() {
                return Err(TableError::DuplicateTarget {
                    prefix,
                    action: rule.action,
                });
            }
            entry.insert_target(target);
        } else {
            self.map
                .insert_with(prefix, |slot| Entry::new(prefix, slot, target))
                .map_err(|_| TableError::TableFull)?;
        }
        self.targets += 1;
        Ok(())
    }

    /// Changes the target of `prefix` whose action is `target` to `rule`: its action (the
    /// original's address change), priority and weight. Its counters are kept. A target whose
    /// priority changes moves to the end of its new set; otherwise it keeps its place.
    pub fn modify(
        &mut self,
        prefix: &ServicePrefix,
        target: &Action,
        rule: Rule,
    ) -> Result<(), TableError> {
        let (entry, i) = self.find_target(prefix, target)?;
        if rule.action != *target && entry.position(&rule.action).is_some() {
            return Err(TableError::DuplicateTarget {
                prefix: *prefix,
                action: rule.action,
            });
        }
        let Some(t) = entry.targets.get_mut(i) else {
            return Err(TableError::NoTarget {
                prefix: *prefix,
                action: *target,
            });
        };
        t.action = rule.action;
        t.weight = rule.weight.max(1);
        if t.priority != rule.priority {
            if let Some(mut moved) = entry.targets.remove(i) {
                moved.priority = rule.priority;
                entry.insert_target(moved);
            }
        }
        Ok(())
    }

    /// Removes the target of `prefix` with action `target` and returns it (with its
    /// counters). The entry goes with its last target.
    pub fn remove(
        &mut self,
        prefix: &ServicePrefix,
        target: &Action,
    ) -> Result<Target, TableError> {
        let (entry, i) = self.find_target(prefix, target)?;
        let removed = entry.targets.remove(i).ok_or(TableError::NoTarget {
            prefix: *prefix,
            action: *target,
        })?;
        if entry.targets.is_empty() {
            self.map.remove(prefix);
        }
        self.targets -= 1;
        Ok(removed)
    }

    /// The entry of `prefix` and the index of its target with action `target`, or the
    /// error naming which is missing: where [`modify`](Self::modify) and
    /// [`remove`](Self::remove) both start.
    fn find_target(
        &mut self,
        prefix: &ServicePrefix,
        target: &Action,
    ) -> Result<(&mut Entry, usize), TableError> {
        let entry = self
            .map
            .get_mut(prefix)
            .ok_or(TableError::NoEntry(*prefix))?;
        let i = entry.position(target).ok_or(TableError::NoTarget {
            prefix: *prefix,
            action: *target,
        })?;
        Ok((entry, i))
    }

    /// Removes the whole entry of `prefix` and returns it (with its targets' counters).
    pub fn remove_entry(&mut self, prefix: &ServicePrefix) -> Result<Entry, TableError> {
        let entry = self
            .map
            .remove(prefix)
            .ok_or(TableError::NoEntry(*prefix))?;
        self.targets -= entry.targets.len();
        Ok(entry)
    }

    /// Keeps only the targets for which `keep(prefix, target)` is true (for example, drops
    /// every target on a next hop that went away); entries left empty are removed. Returns
    /// the number of targets removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&ServicePrefix, &Target) -> bool) -> usize {
        let mut removed = 0;
        let mut emptied = Vec::new();
        for entry in self.map.iter_mut() {
            let before = entry.targets.len();
            let prefix = entry.prefix;
            entry.targets.retain(|t| keep(&prefix, t));
            removed += before - entry.targets.len();
            if entry.targets.is_empty() {
                emptied.push(prefix);
            }
        }
        for prefix in &emptied {
            self.map.remove(prefix);
        }
        self.targets -= removed;
        removed
    }

    /// The entry keyed on exactly `prefix`.
    pub fn get(&self, prefix: &ServicePrefix) -> Option<&Entry> {
        self.map.get(prefix)
    }

    /// The entry with the longest prefix that contains `id` (the default rule, if present,
    /// contains every id).
    #[inline]
    pub fn lookup(&self, id: &ServiceId) -> Option<&Entry> {
        self.map.lookup(id)
    }

    /// Every entry, in an unspecified but deterministic order (sort by
    /// [`Entry::prefix`] for a stable dump).
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.map.iter()
    }

    /// Counts a packet of `bytes` bytes against the target `pick` names, and in the table
    /// totals. Refuses a handle whose target has changed since it was picked.
    pub fn record(&mut self, pick: &Pick, outcome: Outcome, bytes: u64) -> Result<(), TableError> {
        let target = self
            .map
            .slot_mut(pick.slot)
            .and_then(|e| e.targets.get_mut(pick.index as usize))
            .filter(|t| t.action == pick.action)
            .ok_or(TableError::StaleHandle)?;
        let (t, c) = (&mut target.stats, &mut self.counters);
        match outcome {
            Outcome::Resolved => {
                t.packets_resolved = t.packets_resolved.saturating_add(1);
                t.bytes_resolved = t.bytes_resolved.saturating_add(bytes);
                c.packets_resolved = c.packets_resolved.saturating_add(1);
                c.bytes_resolved = c.bytes_resolved.saturating_add(bytes);
            }
            Outcome::Dropped => {
                t.packets_dropped = t.packets_dropped.saturating_add(1);
                t.bytes_dropped = t.bytes_dropped.saturating_add(bytes);
                c.packets_dropped = c.packets_dropped.saturating_add(1);
                c.bytes_dropped = c.bytes_dropped.saturating_add(bytes);
            }
        }
        Ok(())
    }

    /// Counts a packet for which no entry matched.
    pub fn record_no_match(&mut self, bytes: u64) {
        let c = &mut self.counters;
        c.packets_no_match = c.packets_no_match.saturating_add(1);
        c.bytes_no_match = c.bytes_no_match.saturating_add(bytes);
    }

    /// Looks `id` up, picks a target by `flow_hash` ([`Entry::pick_by_hash`]) and counts the
    /// packet: resolved, or dropped for a DROP target; `None` (counted as no match) when no
    /// entry matches.
    pub fn resolve_by_hash(&mut self, id: &ServiceId, flow_hash: u64, bytes: u64) -> Option<Pick> {
        let pick = self.lookup(id).and_then(|e| e.pick_by_hash(flow_hash));
        self.count(pick, bytes)
    }

    /// Like [`resolve_by_hash`](Self::resolve_by_hash) with a weighted random choice
    /// ([`Entry::pick_random`]).
    pub fn resolve_random(
        &mut self,
        id: &ServiceId,
        rng: &mut impl rand_core::RngCore,
        bytes: u64,
    ) -> Option<Pick> {
        let pick = self.lookup(id).and_then(|e| e.pick_random(rng));
        self.count(pick, bytes)
    }

    fn count(&mut self, pick: Option<Pick>, bytes: u64) -> Option<Pick> {
        match pick {
            Some(p) => {
                let outcome = match p.action {
                    Action::Drop => Outcome::Dropped,
                    _ => Outcome::Resolved,
                };
                // Cannot be stale: picked just now from the same table.
                let _ = self.record(&p, outcome, bytes);
                Some(p)
            }
            None => {
                self.record_no_match(bytes);
                None
            }
        }
    }

    /// The table's counters, with the current number of entries and targets.
    pub fn stats(&self) -> ServiceTableStats {
        ServiceTableStats {
            entries: self.len() as u64,
            targets: self.targets as u64,
            ..self.counters
        }
    }
}
