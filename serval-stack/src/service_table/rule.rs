//! What a service-table entry holds: rules (actions with a priority and a weight), targets
//! with their counters, and the entry itself.

use core::net::SocketAddr;

use super::TableError;
use super::select::{self, Pick};
use crate::wire::ServicePrefix;

/// Priority of the rule a bound or listening socket installs (`LOCAL_SERVICE_DEFAULT_PRIORITY`
/// in the original).
pub const LOCAL_PRIORITY: u32 = 32000;
/// Weight of the rule a bound or listening socket installs (`LOCAL_SERVICE_DEFAULT_WEIGHT`).
pub const LOCAL_WEIGHT: u32 = 1024;
/// Priority of an operator-added rule when none is given (`serv service add` default).
pub const DEFAULT_PRIORITY: u32 = 1;

/// A local listener, the target of a DEMUX rule.
///
/// Opaque to the table: the SAL allocates these and maps them to its listeners (and decides
/// whether two sockets may share a ServiceID, for example one per transport protocol).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ListenerId(pub u32);

/// The rule type, as numbered in the original's control messages (`SERVAL-ORIGINAL.md` §4.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u16)]
pub enum RuleKind {
    /// Send or forward to a next hop (a service router or an instance).
    Forward = 1,
    /// Deliver to a local listener.
    Demux = 2,
    /// Park the packet and ask the controller for a verdict.
    Delay = 3,
    /// Discard.
    Drop = 4,
}

impl RuleKind {
    /// The kind numbered `value` on the wire, `None` for an unknown number.
    pub const fn from_wire(value: u16) -> Option<Self> {
        match value {
            1 => Some(Self::Forward),
            2 => Some(Self::Demux),
            3 => Some(Self::Delay),
            4 => Some(Self::Drop),
            _ => None,
        }
    }

    /// The wire number of this kind.
    pub const fn to_wire(self) -> u16 {
        self as u16
    }

    /// The three-letter name the original's table dump used (`FWD`, `DMX`, `DLY`, `DRP`).
    pub const fn short_name(self) -> &'static str {
        match self {
            Self::Forward => "FWD",
            Self::Demux => "DMX",
            Self::Delay => "DLY",
            Self::Drop => "DRP",
        }
    }
}

/// What a target does with a packet, with the data that kind needs. Two targets are the same
/// target exactly when their actions are equal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Action {
    /// Forward to this next hop (UDP-encapsulated Serval endpoint).
    Forward(SocketAddr),
    /// Deliver to this local listener.
    Demux(ListenerId),
    /// Hold the packet for a controller verdict.
    Delay,
    /// Discard the packet.
    Drop,
}

impl Action {
    /// The rule kind of this action.
    pub const fn kind(&self) -> RuleKind {
        match self {
            Self::Forward(_) => RuleKind::Forward,
            Self::Demux(_) => RuleKind::Demux,
            Self::Delay => RuleKind::Delay,
            Self::Drop => RuleKind::Drop,
        }
    }

    /// Builds an action from the loose parts a control message carries: FORWARD needs an
    /// address and no listener, DEMUX a listener and no address, DELAY and DROP neither.
    pub fn from_parts(
        kind: RuleKind,
        addr: Option<SocketAddr>,
        listener: Option<ListenerId>,
    ) -> Result<Self, TableError> {
        match (kind, addr, listener) {
            (RuleKind::Forward, Some(a), None) => Ok(Self::Forward(a)),
            (RuleKind::Forward, None, _) => Err(TableError::MissingAddress),
            (RuleKind::Forward, Some(_), Some(_)) => Err(TableError::ListenerNotAllowed(kind)),
            (RuleKind::Demux, None, Some(l)) => Ok(Self::Demux(l)),
            (RuleKind::Demux, Some(_), _) => Err(TableError::AddressNotAllowed(kind)),
            (RuleKind::Demux, None, None) => Err(TableError::MissingListener),
            (_, Some(_), _) => Err(TableError::AddressNotAllowed(kind)),
            (_, None, Some(_)) => Err(TableError::ListenerNotAllowed(kind)),
            (RuleKind::Delay, None, None) => Ok(Self::Delay),
            (RuleKind::Drop, None, None) => Ok(Self::Drop),
        }
    }

    /// The next hop of a FORWARD action.
    pub const fn forward_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Forward(a) => Some(*a),
            _ => None,
        }
    }

    /// The listener of a DEMUX action.
    pub const fn listener(&self) -> Option<ListenerId> {
        match self {
            Self::Demux(l) => Some(*l),
            _ => None,
        }
    }
}

/// A rule to add: an action with its priority and weight.
///
/// Higher priority wins: only the targets of an entry's highest priority are used, the others
/// are standby. Within that set, targets are chosen in proportion to their weights; weight 0
/// counts as 1 (as in the original).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Rule {
    /// What to do.
    pub action: Action,
    /// Priority set this target belongs to; higher is preferred.
    pub priority: u32,
    /// Relative weight within its priority set; 0 is stored as 1.
    pub weight: u32,
}

impl Rule {
    /// A rule with every field given.
    pub const fn new(action: Action, priority: u32, weight: u32) -> Self {
        Self {
            action,
            priority,
            weight,
        }
    }

    /// FORWARD to `addr`, priority [`DEFAULT_PRIORITY`], weight 1.
    pub const fn forward(addr: SocketAddr) -> Self {
        Self::new(Action::Forward(addr), DEFAULT_PRIORITY, 1)
    }

    /// DEMUX to `listener`, priority [`LOCAL_PRIORITY`], weight [`LOCAL_WEIGHT`] (what a bound
    /// socket installs).
    pub const fn demux(listener: ListenerId) -> Self {
        Self::new(Action::Demux(listener), LOCAL_PRIORITY, LOCAL_WEIGHT)
    }

    /// DELAY, priority [`DEFAULT_PRIORITY`], weight 1.
    pub const fn delay() -> Self {
        Self::new(Action::Delay, DEFAULT_PRIORITY, 1)
    }

    /// DROP, priority [`DEFAULT_PRIORITY`], weight 1.
    pub const fn drop() -> Self {
        Self::new(Action::Drop, DEFAULT_PRIORITY, 1)
    }

    /// This rule with another priority.
    pub const fn with_priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// This rule with another weight (0 is stored as 1).
    pub const fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// Per-target counters, updated by [`ServiceTable::record`](super::ServiceTable::record).
#[non_exhaustive]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetStats {
    /// Packets this target was chosen for and that went on (FORWARD, DEMUX, DELAY).
    pub packets_resolved: u64,
    /// Bytes of those packets.
    pub bytes_resolved: u64,
    /// Packets dropped at this target (a DROP rule, or a drop the caller reported).
    pub packets_dropped: u64,
    /// Bytes of those packets.
    pub bytes_dropped: u64,
}

/// One target of an entry: an action, its priority and weight, and its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub(super) action: Action,
    pub(super) priority: u32,
    pub(super) weight: u32,
    pub(super) stats: TargetStats,
}

impl Target {
    pub(super) fn new(rule: Rule) -> Self {
        Self {
            action: rule.action,
            priority: rule.priority,
            weight: rule.weight.max(1),
            stats: TargetStats::default(),
        }
    }

    /// What this target does.
    pub const fn action(&self) -> &Action {
        &self.action
    }

    /// Its priority set.
    pub const fn priority(&self) -> u32 {
        self.priority
    }

    /// Its weight within the set, at least 1.
    pub const fn weight(&self) -> u32 {
        self.weight
    }

    /// Its counters.
    pub const fn stats(&self) -> &TargetStats {
        &self.stats
    }

    /// The rule this target was made from (with weight 0 shown as 1).
    pub const fn rule(&self) -> Rule {
        Rule::new(self.action, self.priority, self.weight)
    }
}

/// The targets of one priority, a view into an [`Entry`].
#[derive(Clone, Copy, Debug)]
pub struct TargetSet<'a> {
    priority: u32,
    targets: &'a [Target],
}

impl<'a> TargetSet<'a> {
    /// The priority shared by every target of the set.
    pub const fn priority(&self) -> u32 {
        self.priority
    }

    /// The targets, in the order they were added.
    pub const fn targets(&self) -> &'a [Target] {
        self.targets
    }

    /// Sum of the weights (the original's "normaliser").
    pub fn total_weight(&self) -> u64 {
        self.targets.iter().map(|t| u64::from(t.weight)).sum()
    }
}

/// An entry's targets: one target inline (the common case: no separate allocation and no
/// extra cache miss when picking), or a vector.
#[derive(Clone, Debug)]
pub(super) enum Targets {
    One(Target),
    Many(Vec<Target>),
}

impl Targets {
    /// Inserts at `at` (at most the length).
    pub(super) fn insert(&mut self, at: usize, target: Target) {
        match self {
            Self::Many(v) => v.insert(at.min(v.len()), target),
            Self::One(_) => {
                let Self::One(first) = core::mem::replace(self, Self::Many(Vec::new())) else {
                    return;
                };
                let mut v = Vec::with_capacity(2);
                v.push(first);
                v.insert(at.min(1), target);
                *self = Self::Many(v);
            }
        }
    }

    /// Removes and returns the target at `at`, if there is one.
    pub(super) fn remove(&mut self, at: usize) -> Option<Target> {
        let removed = match self {
            Self::Many(v) if at < v.len() => v.remove(at),
            Self::One(_) if at == 0 => {
                let Self::One(t) = core::mem::replace(self, Self::Many(Vec::new())) else {
                    return None;
                };
                return Some(t);
            }
            _ => return None,
        };
        self.shrink();
        Some(removed)
    }

    /// Keeps the targets for which `keep` is true.
    pub(super) fn retain(&mut self, keep: impl FnMut(&Target) -> bool) {
        let mut v = match core::mem::replace(self, Self::Many(Vec::new())) {
            Self::One(t) => vec![t],
            Self::Many(v) => v,
        };
        v.retain(keep);
        *self = Self::Many(v);
        self.shrink();
    }

    /// Back to the inline form when one target is left.
    fn shrink(&mut self) {
        if let Self::Many(v) = self {
            if v.len() == 1 {
                if let Some(t) = v.pop() {
                    *self = Self::One(t);
                }
            }
        }
    }
}

impl core::ops::Deref for Targets {
    type Target = [Target];

    fn deref(&self) -> &[Target] {
        match self {
            Self::One(t) => core::slice::from_ref(t),
            Self::Many(v) => v,
        }
    }
}

impl core::ops::DerefMut for Targets {
    fn deref_mut(&mut self) -> &mut [Target] {
        match self {
            Self::One(t) => core::slice::from_mut(t),
            Self::Many(v) => v,
        }
    }
}

impl PartialEq for Targets {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Targets {}

/// The rules of one ServiceID prefix: targets grouped by priority, highest first.
///
/// An entry always has at least one target; it leaves the table with its last target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Sorted by priority, highest first; equal priorities keep the order they were added in.
    pub(super) targets: Targets,
    pub(super) prefix: ServicePrefix,
    /// Index of this entry in the table's arena, for [`Pick`] handles.
    pub(super) slot: u32,
}

impl Entry {
    pub(super) fn new(prefix: ServicePrefix, slot: u32, target: Target) -> Self {
        Self {
            targets: Targets::One(target),
            prefix,
            slot,
        }
    }

    /// The prefix this entry is keyed on.
    pub const fn prefix(&self) -> &ServicePrefix {
        &self.prefix
    }

    /// Every target, highest priority first.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The active set: the targets of the highest priority. Only these are ever chosen; the
    /// others are standby and take over when every higher target has been removed.
    pub fn active(&self) -> TargetSet<'_> {
        let priority = self.targets.first().map_or(0, |t| t.priority);
        let n = self
            .targets
            .iter()
            .take_while(|t| t.priority == priority)
            .count();
        TargetSet {
            priority,
            targets: self.targets.get(..n).unwrap_or_default(),
        }
    }

    /// The priority sets, highest priority first (an admin dump).
    pub fn sets(&self) -> impl Iterator<Item = TargetSet<'_>> {
        self.targets
            .chunk_by(|a, b| a.priority == b.priority)
            .map(|targets| TargetSet {
                priority: targets.first().map_or(0, |t| t.priority),
                targets,
            })
    }

    /// The target with this action, if the entry has one.
    pub fn target(&self, action: &Action) -> Option<&Target> {
        self.targets.iter().find(|t| t.action == *action)
    }

    /// Weighted random choice in the active set (the original's ANYCAST mode): each target is
    /// chosen with probability weight / total weight. `None` only for an empty entry.
    pub fn pick_random(&self, rng: &mut impl rand_core::RngCore) -> Option<Pick> {
        let active = self.active();
        let i = select::weighted_random(active.targets, rng)?;
        self.pick_at(i)
    }

    /// Deterministic weighted choice by a flow hash (weighted rendezvous hashing): the same
    /// hash picks the same target while the active set does not change, each target gets a
    /// share of hashes proportional to its weight, and removing a target moves only the flows
    /// that were on it.
    pub fn pick_by_hash(&self, flow_hash: u64) -> Option<Pick> {
        let active = self.active();
        let i = select::rendezvous(active.targets, flow_hash)?;
        self.pick_at(i)
    }

    fn pick_at(&self, index: usize) -> Option<Pick> {
        let target = self.targets.get(index)?;
        Some(Pick::new(self.slot, index, target.action))
    }

    /// Adds a target after the last one of equal or higher priority.
    pub(super) fn insert_target(&mut self, target: Target) {
        let at = self
            .targets
            .iter()
            .take_while(|t| t.priority >= target.priority)
            .count();
        self.targets.insert(at, target);
    }

    pub(super) fn position(&self, action: &Action) -> Option<usize> {
        self.targets.iter().position(|t| t.action == *action)
    }
}
