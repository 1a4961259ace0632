//! Plain counters; metric names are given at the edge (the translator's admin module).

use core::time::Duration;

/// Why a datagram was dropped. Every drop has exactly one reason, so the counters add up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The bytes do not parse (length, framing, checksum).
    Malformed,
    /// A MAC is missing or does not verify.
    BadMac,
    /// No flow has this destination FlowID, or the source FlowID is not the peer's.
    UnknownFlow,
    /// Data before the handshake completed, or for a flow in the wrong state.
    UnexpectedData,
    /// Data after the peer's FIN.
    AfterFin,
    /// A control packet that is valid but not expected in this state.
    Unexpected,
    /// A control version outside the receive window.
    StaleVersion,
    /// A path response matching no challenge.
    UnexpectedPathResponse,
    /// A receive queue was full.
    QueueFull,
    /// The flow is closed.
    Closed,
    /// A SYN for a service with no rule, or a DROP rule.
    NoService,
    /// A SYN beyond the flow or half-open limits.
    Overload,
    /// A packet a router may not forward (loop, full SOURCE, not a SYN).
    NotForwardable,
}

/// Drop counters by [`DropReason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DropCounts {
    /// [`DropReason::Malformed`].
    pub malformed: u64,
    /// [`DropReason::BadMac`].
    pub bad_mac: u64,
    /// [`DropReason::UnknownFlow`].
    pub unknown_flow: u64,
    /// [`DropReason::UnexpectedData`].
    pub unexpected_data: u64,
    /// [`DropReason::AfterFin`].
    pub after_fin: u64,
    /// [`DropReason::Unexpected`].
    pub unexpected: u64,
    /// [`DropReason::StaleVersion`].
    pub stale_version: u64,
    /// [`DropReason::UnexpectedPathResponse`].
    pub unexpected_path_response: u64,
    /// [`DropReason::QueueFull`].
    pub queue_full: u64,
    /// [`DropReason::Closed`].
    pub closed: u64,
    /// [`DropReason::NoService`].
    pub no_service: u64,
    /// [`DropReason::Overload`].
    pub overload: u64,
    /// [`DropReason::NotForwardable`].
    pub not_forwardable: u64,
}

impl DropCounts {
    /// Adds one drop for `reason`.
    pub fn count(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::Malformed => &mut self.malformed,
            DropReason::BadMac => &mut self.bad_mac,
            DropReason::UnknownFlow => &mut self.unknown_flow,
            DropReason::UnexpectedData => &mut self.unexpected_data,
            DropReason::AfterFin => &mut self.after_fin,
            DropReason::Unexpected => &mut self.unexpected,
            DropReason::StaleVersion => &mut self.stale_version,
            DropReason::UnexpectedPathResponse => &mut self.unexpected_path_response,
            DropReason::QueueFull => &mut self.queue_full,
            DropReason::Closed => &mut self.closed,
            DropReason::NoService => &mut self.no_service,
            DropReason::Overload => &mut self.overload,
            DropReason::NotForwardable => &mut self.not_forwardable,
        };
        *c = c.saturating_add(1);
    }

    /// Every reason with its name (the metric label) and count, in declaration order.
    pub fn by_reason(&self) -> [(&'static str, u64); 13] {
        [
            ("malformed", self.malformed),
            ("bad_mac", self.bad_mac),
            ("unknown_flow", self.unknown_flow),
            ("unexpected_data", self.unexpected_data),
            ("after_fin", self.after_fin),
            ("unexpected", self.unexpected),
            ("stale_version", self.stale_version),
            ("unexpected_path_response", self.unexpected_path_response),
            ("queue_full", self.queue_full),
            ("closed", self.closed),
            ("no_service", self.no_service),
            ("overload", self.overload),
            ("not_forwardable", self.not_forwardable),
        ]
    }

    /// Sum over every reason.
    pub fn total(&self) -> u64 {
        self.by_reason()
            .iter()
            .fold(0u64, |sum, (_, n)| sum.saturating_add(*n))
    }
}

/// Counters of one flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlowStats {
    /// Control packets sent (first transmissions and retransmissions).
    pub control_sent: u64,
    /// Control packets retransmitted after a timeout.
    pub control_retransmits: u64,
    /// Duplicate control packets received (answered again).
    pub duplicate_control: u64,
    /// Data packets sent.
    pub data_packets_sent: u64,
    /// Data packets received and accepted.
    pub data_packets_received: u64,
    /// Payload bytes sent in data packets.
    pub bytes_sent: u64,
    /// Payload bytes received in data packets.
    pub bytes_received: u64,
    /// Keepalives sent on an idle flow.
    pub keepalives_sent: u64,
    /// Local address changes announced with an RSYN.
    pub migrations_started: u64,
    /// Path validations started (peer moved or NAT rebinding seen).
    pub path_validations_started: u64,
    /// Path validations that moved the flow to the new address.
    pub path_validations_succeeded: u64,
    /// Path validations given up (the flow stayed on the old address).
    pub path_validations_failed: u64,
    /// Authenticated resets received.
    pub resets_received: u64,
    /// Half-open flows that never saw the conn-ACK.
    pub handshake_timeouts: u64,
    /// Smoothed RTT of control exchanges, once measured.
    pub srtt: Option<Duration>,
    /// Datagrams dropped, by reason.
    pub drops: DropCounts,
}

/// Counters of an endpoint (datagrams it handled itself; per-flow counters are in
/// [`FlowStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Datagrams given to [`Endpoint::handle`](super::Endpoint::handle).
    pub datagrams_received: u64,
    /// SYNs received for local listeners.
    pub syns_received: u64,
    /// Duplicate SYNs answered from an existing half-open flow.
    pub duplicate_syns: u64,
    /// Handshakes completed on the server side (flows handed to the application).
    pub accepted: u64,
    /// SYNs forwarded by the service table (router role).
    pub forwarded_syns: u64,
    /// SYN-ACKs relayed back towards their client (router role), and RSTs of half-open
    /// flows a server evicted, relayed the same way.
    pub forwarded_syn_acks: u64,
    /// Refusals (unauthenticated RST) sent for SYNs with no service.
    pub refusals_sent: u64,
    /// Half-open flows evicted to admit a newer SYN at the limit.
    pub half_open_evicted: u64,
    /// Half-open flows now (a gauge; at most `max_half_open`).
    pub half_open: u64,
    /// Most half-open flows held at once since the endpoint started (how close a SYN
    /// flood came to `max_half_open`; never above it).
    pub half_open_peak: u64,
    /// SYNs that hit a DELAY rule and were handed back as `DatagramEvent::Delayed`
    /// (every round counts).
    pub syns_delayed: u64,
    /// Locally originated SYNs (held by DELAY, or resolved again on a retransmission) sent
    /// to a FORWARD next hop when they came back to the endpoint.
    pub held_syns_sent: u64,
    /// Unconnected datagrams delivered to a listener.
    pub unconnected_received: u64,
    /// Unconnected datagrams written by `Endpoint::send_unconnected`.
    pub unconnected_sent: u64,
    /// X25519 computations (cache misses).
    pub key_agreements: u64,
    /// Shared secrets served from the cache.
    pub key_cache_hits: u64,
    /// Datagrams dropped by the endpoint, by reason.
    pub drops: DropCounts,
}
