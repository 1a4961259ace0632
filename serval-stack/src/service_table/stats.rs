//! Table-wide counters.

/// What happened to a packet a target was chosen for, as reported to
/// [`ServiceTable::record`](super::ServiceTable::record).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Outcome {
    /// The packet went on (forwarded, delivered, or queued by a DELAY rule).
    Resolved,
    /// The packet was dropped at this target (a DROP rule, or a full delay queue).
    Dropped,
}

/// Counters of a [`ServiceTable`](super::ServiceTable): gauges of its size and totals of what
/// was recorded against it. Plain numbers; metric names are given at the edge.
#[non_exhaustive]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceTableStats {
    /// Entries (distinct prefixes) in the table now.
    pub entries: u64,
    /// Targets over all entries now.
    pub targets: u64,
    /// Packets recorded as resolved, over every target (removed ones included).
    pub packets_resolved: u64,
    /// Bytes of those packets.
    pub bytes_resolved: u64,
    /// Packets recorded as dropped at a target.
    pub packets_dropped: u64,
    /// Bytes of those packets.
    pub bytes_dropped: u64,
    /// Packets for which no entry matched (dropped for lack of a rule).
    pub packets_no_match: u64,
    /// Bytes of those packets.
    pub bytes_no_match: u64,
}
