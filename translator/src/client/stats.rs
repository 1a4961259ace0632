//! Counters of the client role: plain numbers, one per reason, so every refused or failed
//! connection is accounted for. Metric names are given at the edge (the admin module).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::policy::Refusal;
use crate::relay::{LimitRefusal, Outcome, RelayReport};

/// Connections refused by the mapping policy, by [`Refusal::label`].
#[non_exhaustive]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PolicyRefusals {
    /// The listener is no longer in the policy (a reload removed it mid-accept).
    pub unknown_listener: u64,
    /// A redirect/tproxy listener got a connection that was not intercepted.
    pub not_redirected: u64,
    /// A synthetic address with no name bound to it.
    pub unbound_synthetic_address: u64,
    /// A name the policy no longer maps.
    pub name_not_mapped: u64,
    /// No rule matched the destination.
    pub no_rule: u64,
    /// A rule refused the destination.
    pub rule_refused: u64,
    /// A scoped IPv6 destination.
    pub scoped_destination: u64,
    /// A reason this build does not know by name.
    pub other: u64,
}

/// Opening the Serval flow failed, by cause.
#[non_exhaustive]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConnectFailures {
    /// No rule resolves the ServiceID (no router configured, no default route).
    pub no_route: u64,
    /// A DROP rule matched.
    pub prohibited: u64,
    /// Refused: no instance registered at the router, or nothing listens there.
    pub refused: u64,
    /// No answer within `client.connect_timeout` (connect, TLS handshake and preamble).
    pub timeout: u64,
    /// The TLS handshake on the flow failed (wrong CA, bad certificate, peer without TLS).
    pub tls: u64,
    /// The PROXY preamble could not be written on the flow.
    pub preamble: u64,
    /// Anything else (flow table full, endpoint stopped).
    pub other: u64,
}

/// How relayed connections ended, by [`Outcome`].
#[non_exhaustive]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Outcomes {
    /// Both directions finished cleanly.
    pub finished: u64,
    /// Idle timeout.
    pub idle_timeout: u64,
    /// Half-close timeout.
    pub half_close_timeout: u64,
    /// The legacy client reset (or vanished).
    pub reset_inbound: u64,
    /// The Serval flow was reset (or vanished).
    pub reset_outbound: u64,
    /// Another I/O error on either side.
    pub error: u64,
    /// Stopped at the end of a drain's grace period.
    pub stopped: u64,
}

/// A snapshot of the client role's counters.
#[non_exhaustive]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    /// Connections accepted from the listeners.
    pub accepted: u64,
    /// Connections in progress now (admitted, refused ones not yet closed).
    pub active: u64,
    /// `accept()` failures (file-descriptor exhaustion and the like).
    pub accept_errors: u64,
    /// Refused: a listener's `max_connections`.
    pub refused_listener_full: u64,
    /// Refused: `relay.max_connections`.
    pub refused_global_full: u64,
    /// Refused: draining.
    pub refused_draining: u64,
    /// Refused: `client.max_connections_per_source` (the client's address holds that many).
    pub refused_source_full: u64,
    /// Reset: the client sent nothing within the listener's `first_byte_timeout`.
    pub first_byte_timeout: u64,
    /// Closed: the client left before sending anything (listeners with
    /// `first_byte_timeout`, which wait for the first byte before opening a flow).
    pub closed_before_data: u64,
    /// Refused by the mapping policy.
    pub refused_policy: PolicyRefusals,
    /// Serval flows that could not be opened.
    pub connect_failed: ConnectFailures,
    /// Connections relayed (a Serval flow was opened).
    pub relayed: u64,
    /// How relayed connections ended.
    pub outcomes: Outcomes,
    /// Bytes from legacy clients to services.
    pub bytes_to_service: u64,
    /// Bytes from services to legacy clients.
    pub bytes_to_client: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    accepted: AtomicU64,
    accept_errors: AtomicU64,
    limit: [AtomicU64; 3],
    source_full: AtomicU64,
    first_byte_timeout: AtomicU64,
    closed_before_data: AtomicU64,
    policy: [AtomicU64; 8],
    connect: [AtomicU64; 7],
    relayed: AtomicU64,
    outcomes: [AtomicU64; 7],
    bytes_to_service: AtomicU64,
    bytes_to_client: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Counters {
    pub(super) fn accepted(&self) {
        bump(&self.accepted);
    }

    pub(super) fn accept_error(&self) {
        bump(&self.accept_errors);
    }

    pub(super) fn limit(&self, why: LimitRefusal) {
        let i = match why {
            LimitRefusal::ListenerFull => 0,
            LimitRefusal::GlobalFull => 1,
            _ => 2,
        };
        bump(&self.limit[i]);
    }

    pub(super) fn source_full(&self) {
        bump(&self.source_full);
    }

    pub(super) fn first_byte_timeout(&self) {
        bump(&self.first_byte_timeout);
    }

    pub(super) fn closed_before_data(&self) {
        bump(&self.closed_before_data);
    }

    pub(super) fn policy(&self, why: &Refusal) {
        let i = match why.label() {
            "unknown_listener" => 0,
            "not_redirected" => 1,
            "unbound_synthetic_address" => 2,
            "name_not_mapped" => 3,
            "no_rule" => 4,
            "rule_refused" => 5,
            "scoped_destination" => 6,
            _ => 7,
        };
        bump(&self.policy[i]);
    }

    /// Counts a flow opened but not set up (TLS handshake, preamble; `label` as in
    /// `client::connection`).
    pub(super) fn setup_failed(&self, label: &str) {
        let i = match label {
            "tls_failed" => 5,
            "preamble_failed" => 6,
            "setup_timeout" => 3,
            _ => 4,
        };
        bump(&self.connect[i]);
    }

    /// Counts a failed connect; returns its label for the log.
    pub(super) fn connect_failed(&self, kind: io::ErrorKind) -> &'static str {
        let (i, label) = connect_label(kind);
        bump(&self.connect[i]);
        label
    }

    pub(super) fn relayed(&self) {
        bump(&self.relayed);
    }

    pub(super) fn finished(&self, r: &RelayReport) {
        let i = match r.outcome {
            Outcome::Finished => 0,
            Outcome::IdleTimeout => 1,
            Outcome::HalfCloseTimeout => 2,
            Outcome::Reset(crate::relay::Side::Inbound) => 3,
            Outcome::Reset(crate::relay::Side::Outbound) => 4,
            Outcome::Error(..) => 5,
            Outcome::Stopped => 6,
        };
        bump(&self.outcomes[i]);
        self.bytes_to_service
            .fetch_add(r.inbound_to_outbound, Ordering::Relaxed);
        self.bytes_to_client
            .fetch_add(r.outbound_to_inbound, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self, active: u64) -> ClientStats {
        let p = &self.policy;
        let c = &self.connect;
        let o = &self.outcomes;
        ClientStats {
            accepted: get(&self.accepted),
            active,
            accept_errors: get(&self.accept_errors),
            refused_listener_full: get(&self.limit[0]),
            refused_global_full: get(&self.limit[1]),
            refused_draining: get(&self.limit[2]),
            refused_source_full: get(&self.source_full),
            first_byte_timeout: get(&self.first_byte_timeout),
            closed_before_data: get(&self.closed_before_data),
            refused_policy: PolicyRefusals {
                unknown_listener: get(&p[0]),
                not_redirected: get(&p[1]),
                unbound_synthetic_address: get(&p[2]),
                name_not_mapped: get(&p[3]),
                no_rule: get(&p[4]),
                rule_refused: get(&p[5]),
                scoped_destination: get(&p[6]),
                other: get(&p[7]),
            },
            connect_failed: ConnectFailures {
                no_route: get(&c[0]),
                prohibited: get(&c[1]),
                refused: get(&c[2]),
                timeout: get(&c[3]),
                other: get(&c[4]),
                tls: get(&c[5]),
                preamble: get(&c[6]),
            },
            relayed: get(&self.relayed),
            outcomes: Outcomes {
                finished: get(&o[0]),
                idle_timeout: get(&o[1]),
                half_close_timeout: get(&o[2]),
                reset_inbound: get(&o[3]),
                reset_outbound: get(&o[4]),
                error: get(&o[5]),
                stopped: get(&o[6]),
            },
            bytes_to_service: get(&self.bytes_to_service),
            bytes_to_client: get(&self.bytes_to_client),
        }
    }
}

/// Reads the client role's counters from elsewhere (the admin API's scrapes) without
/// keeping the role alive: once the role is gone, [`snapshot`](Self::snapshot) is `None`.
#[derive(Clone, Debug)]
pub struct StatsHandle(std::sync::Weak<super::Shared>);

impl StatsHandle {
    /// The counters now, while the role exists.
    pub fn snapshot(&self) -> Option<ClientStats> {
        self.0
            .upgrade()
            .map(|s| s.counters.snapshot(*s.active.borrow()))
    }
}

impl super::ClientRole {
    /// A [`StatsHandle`] on this role's counters.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(std::sync::Arc::downgrade(&self.shared))
    }
}

/// The counter index and log label of a failed `Endpoint::connect` (see its error kinds).
fn connect_label(kind: io::ErrorKind) -> (usize, &'static str) {
    match kind {
        io::ErrorKind::NotFound => (0, "no_route"),
        io::ErrorKind::PermissionDenied => (1, "prohibited"),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => (2, "refused"),
        io::ErrorKind::TimedOut => (3, "timeout"),
        _ => (4, "error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_counter() {
        let c = Counters::default();
        c.policy(&Refusal::NotRedirected);
        c.policy(&Refusal::NoRule("10.0.0.1:80".parse().unwrap()));
        c.limit(LimitRefusal::GlobalFull);
        assert_eq!(c.connect_failed(io::ErrorKind::TimedOut), "timeout");
        assert_eq!(c.connect_failed(io::ErrorKind::NotFound), "no_route");
        let s = c.snapshot(3);
        assert_eq!(s.refused_policy.not_redirected, 1);
        assert_eq!(s.refused_policy.no_rule, 1);
        assert_eq!(s.refused_global_full, 1);
        assert_eq!(s.connect_failed.timeout, 1);
        assert_eq!(s.connect_failed.no_route, 1);
        assert_eq!(s.active, 3);
    }
}
