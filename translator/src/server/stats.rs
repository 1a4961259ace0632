//! Counters of the server role: plain atomics while running, a [`ServerStats`] snapshot for
//! whoever reads them (the admin endpoint names them as metrics; tests assert on them).
//!
//! Every counter only grows, except `active` (flows in progress). Labels such as the
//! service or the backend address are deliberately absent: per-backend series are the
//! cardinality trap PEERS.md warns about, and the access log carries the detail.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::relay::{Outcome, Side};

macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $name:ident,)*) => {
        /// The live counters (atomics); read them with [`ServerCounters::snapshot`].
        #[derive(Debug, Default)]
        pub struct ServerCounters {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A snapshot of the server role's counters.
        #[non_exhaustive]
        #[derive(Default, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
        pub struct ServerStats {
            $($(#[doc = $doc])+ pub $name: u64,)*
        }

        impl ServerCounters {
            /// The current values.
            pub fn snapshot(&self) -> ServerStats {
                ServerStats {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Flows accepted from the Serval listeners.
    accepted,
    /// Flows in progress now (gauge).
    active,
    /// Refused: no service or cross-translation family covers the ServiceID.
    refused_no_service,
    /// Refused: under a cross-translation family but not a legacy-address id.
    refused_not_legacy_address,
    /// Refused: the embedded destination is not a unicast address and port.
    refused_bad_destination,
    /// Refused: the cross-translation allow-list does not admit the destination.
    refused_not_allowed,
    /// Refused: the service's `max_connections` is reached.
    refused_service_full,
    /// Refused: `relay.max_connections` is reached.
    refused_global_full,
    /// Refused: draining.
    refused_draining,
    /// Backend connections attempted (first tries and retries).
    connect_attempts,
    /// Attempts that failed (refused, unreachable, ...), timeouts excluded.
    connect_failures,
    /// Attempts that timed out (`connect_timeout`).
    connect_timeouts,
    /// Attempts after the first one of a flow (on another backend).
    retries,
    /// Flows given up because no backend could be connected (all tried, or none known).
    no_backend,
    /// Flows whose PROXY protocol header could not be written.
    proxy_header_failures,
    /// Flows refused because the TLS handshake failed (no TLS, certificate not under the
    /// CA, timeout).
    tls_failures,
    /// Flows that started with a client translator's PROXY v2 preamble (stripped).
    preambles,
    /// Flows refused for their preamble: declared too long (above 512 bytes).
    preamble_too_long,
    /// Flows refused for their preamble: does not parse.
    preamble_garbled,
    /// Flows refused for their preamble: incomplete within the connect timeout, or the
    /// stream failed or ended inside it.
    preamble_incomplete,
    /// Flows relayed (a backend connection was made).
    relayed,
    /// Relays that ended cleanly (both directions finished).
    outcome_finished,
    /// Relays closed by the idle timeout.
    outcome_idle_timeout,
    /// Relays closed by the half-close timeout.
    outcome_half_close_timeout,
    /// Relays the Serval side reset or lost.
    outcome_reset_inbound,
    /// Relays the backend reset or lost.
    outcome_reset_outbound,
    /// Relays ended by another I/O error on the Serval side.
    outcome_error_inbound,
    /// Relays ended by another I/O error on the backend side.
    outcome_error_outbound,
    /// Relays stopped at the end of a drain's grace period.
    outcome_stopped,
    /// Bytes from Serval peers to backends.
    bytes_to_backends,
    /// Bytes from backends to Serval peers.
    bytes_from_backends,
    /// Active health checks run.
    health_checks,
    /// Active health checks that failed.
    health_check_failures,
    /// Backends taken out by active health checks (up → down transitions).
    backends_marked_down,
    /// Backends brought back by active health checks (down → up transitions).
    backends_marked_up,
    /// Passive ejections (outlier detection on connect failures).
    ejections,
    /// Backend choices made in panic mode: no backend was healthy, so all were used.
    panic_selections,
    /// DNS resolutions of backend names that returned addresses.
    dns_resolutions,
    /// DNS resolutions that failed or returned nothing (the last good answer is kept).
    dns_failures,
}

impl ServerCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn outcome(&self, outcome: &Outcome) {
        let c = match outcome {
            Outcome::Finished => &self.outcome_finished,
            Outcome::IdleTimeout => &self.outcome_idle_timeout,
            Outcome::HalfCloseTimeout => &self.outcome_half_close_timeout,
            Outcome::Reset(Side::Inbound) => &self.outcome_reset_inbound,
            Outcome::Reset(Side::Outbound) => &self.outcome_reset_outbound,
            Outcome::Error(Side::Inbound, _) => &self.outcome_error_inbound,
            Outcome::Error(Side::Outbound, _) => &self.outcome_error_outbound,
            Outcome::Stopped => &self.outcome_stopped,
        };
        Self::bump(c);
    }
}

/// Counts a flow in progress while alive.
#[derive(Debug)]
pub(crate) struct ActiveGuard<'a>(&'a ServerCounters);

impl<'a> ActiveGuard<'a> {
    pub(crate) fn new(counters: &'a ServerCounters) -> Self {
        ServerCounters::bump(&counters.active);
        Self(counters)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_gauge() {
        let c = ServerCounters::default();
        ServerCounters::bump(&c.accepted);
        ServerCounters::add(&c.bytes_to_backends, 10);
        c.outcome(&Outcome::Reset(Side::Outbound));
        {
            let _g = ActiveGuard::new(&c);
            assert_eq!(c.snapshot().active, 1);
        }
        let s = c.snapshot();
        assert_eq!(
            (
                s.accepted,
                s.bytes_to_backends,
                s.outcome_reset_outbound,
                s.active
            ),
            (1, 10, 1, 0)
        );
    }
}
