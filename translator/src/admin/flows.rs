//! The endpoint's live Serval flows, for `GET /flows` and the `serval_flow_*` metrics.
//!
//! The driver lists its flows ([`Endpoint::flows`]: FlowID, ServiceID, addresses, state,
//! SAL and transport counters), so nothing is tracked per relay here. Two things are
//! added on top:
//!
//! - [`page`]: the JSON page of `GET /flows` (bounded `limit`, `after` the last FlowID);
//! - [`FlowAccounts`]: monotonic totals for the `serval_flow_*` counters. A flow's counters
//!   vanish with the flow, so each scrape adds the last values seen of every flow that
//!   ended since the previous scrape to a running total, then adds the live flows' current
//!   values. Increments a flow made after the last scrape before it ended, and flows that
//!   lived entirely between two scrapes, are not seen: the counters are a lower bound,
//!   exact for flows that outlive a scrape interval. (Exact totals need the driver to sum
//!   the counters of the flows it removes.) The smoothed RTT of each flow seen ending is
//!   recorded in `serval_flow_rtt_seconds`.

use core::time::Duration;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use serval_stack::driver::{Endpoint, FlowInfo};
use serval_stack::sal::FlowStats;
use serval_stack::transport::StreamStats;
use serval_stack::wire::{FlowId, ServiceId};

use crate::metrics::FlowTotals;

/// Most flows one `GET /flows` answer lists.
pub const MAX_PAGE: usize = 1000;

/// One flow in a `GET /flows` answer.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct FlowView {
    /// The local FlowID (what `POST /flows/{id}/move` takes).
    pub id: u32,
    /// ServiceID.
    pub service: String,
    /// The local address the flow uses.
    pub local: String,
    /// The peer's address.
    pub peer: String,
    /// `request`, `respond`, `connected`, `linger` or `closed`.
    pub state: &'static str,
    /// A datagram flow rather than a stream.
    pub datagram: bool,
    /// Payload bytes sent (stream: acknowledged or not, retransmissions excluded).
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Smoothed RTT, ms (the stream's; before its first sample, the control exchange's).
    pub srtt_ms: Option<f64>,
    /// Smallest RTT seen, ms.
    pub min_rtt_ms: Option<f64>,
    /// Congestion window, bytes.
    pub cwnd: Option<u64>,
    /// Bytes in flight.
    pub bytes_in_flight: Option<u64>,
    /// Segments retransmitted.
    pub retransmits: Option<u64>,
    /// Local address changes this flow announced.
    pub migrations: u64,
    /// Path validations that moved the flow to a new peer address.
    pub path_validations_succeeded: u64,
}

/// One page of flows.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct FlowPage {
    /// Flows alive on the endpoint in all.
    pub total: usize,
    /// This page, by FlowID.
    pub flows: Vec<FlowView>,
    /// `after` for the next page, when there is one.
    pub next_after: Option<u32>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The view of one flow.
pub fn view(f: &FlowInfo) -> FlowView {
    let s = f.stream;
    let srtt = s.map(|s| s.srtt).filter(|d| !d.is_zero()).or(f.stats.srtt);
    FlowView {
        id: f.id.get(),
        service: f.service.to_string(),
        local: f.local.to_string(),
        peer: f.peer.to_string(),
        state: f.state,
        datagram: f.datagram,
        bytes_sent: s.map_or(f.stats.bytes_sent, |s| {
            s.bytes_sent.saturating_sub(s.bytes_retransmitted)
        }),
        bytes_received: s.map_or(f.stats.bytes_received, |s| s.bytes_received),
        srtt_ms: srtt.map(ms),
        min_rtt_ms: s.map(|s| s.min_rtt).filter(|d| !d.is_zero()).map(ms),
        cwnd: s.map(|s| s.cwnd),
        bytes_in_flight: s.map(|s| s.bytes_in_flight),
        retransmits: s.map(|s| s.retransmits),
        migrations: f.stats.migrations_started,
        path_validations_succeeded: f.stats.path_validations_succeeded,
    }
}

/// Up to `limit` (1 to [`MAX_PAGE`]) of `endpoint`'s flows with FlowIDs above `after`.
pub fn page(endpoint: &Endpoint, after: Option<FlowId>, limit: usize) -> FlowPage {
    let limit = limit.clamp(1, MAX_PAGE);
    let mut flows = endpoint.flows(after, limit + 1);
    let more = flows.len() > limit;
    flows.truncate(limit);
    let flows: Vec<FlowView> = flows.iter().map(view).collect();
    FlowPage {
        total: endpoint.flow_count(),
        next_after: if more {
            flows.last().map(|f| f.id)
        } else {
            None
        },
        flows,
    }
}

/// The counters of one flow that the totals sum.
#[derive(Clone, Copy, Debug)]
struct Seen {
    service: ServiceId,
    flow: FlowStats,
    stream: Option<StreamStats>,
}

impl Seen {
    fn of(f: &FlowInfo) -> Self {
        Self {
            service: f.service,
            flow: f.stats,
            stream: f.stream,
        }
    }

    /// Whether `now` cannot be a later state of `self` (the FlowID was reused).
    fn replaced_by(&self, now: &Self) -> bool {
        self.service != now.service
            || now.flow.data_packets_sent < self.flow.data_packets_sent
            || now.flow.control_sent < self.flow.control_sent
    }

    fn add_to(&self, t: &mut FlowTotals) {
        if let Some(s) = &self.stream {
            t.retransmits += s.retransmits;
            t.bytes_retransmitted += s.bytes_retransmitted;
            t.rto_timeouts += s.rto_timeouts;
            t.tlp_probes += s.tlp_probes;
            t.keepalives += s.keepalive_probes;
        }
        let f = &self.flow;
        t.keepalives += f.keepalives_sent;
        t.migrations += f.migrations_started;
        t.path_validations_started += f.path_validations_started;
        t.path_validations_succeeded += f.path_validations_succeeded;
        t.path_validations_failed += f.path_validations_failed;
        let (d, s) = (&mut t.drops, &f.drops);
        d.malformed += s.malformed;
        d.bad_mac += s.bad_mac;
        d.unknown_flow += s.unknown_flow;
        d.unexpected_data += s.unexpected_data;
        d.after_fin += s.after_fin;
        d.unexpected += s.unexpected;
        d.stale_version += s.stale_version;
        d.unexpected_path_response += s.unexpected_path_response;
        d.queue_full += s.queue_full;
        d.closed += s.closed;
        d.no_service += s.no_service;
        d.overload += s.overload;
        d.not_forwardable += s.not_forwardable;
    }

    fn srtt(&self) -> Option<Duration> {
        self.stream.map(|s| s.srtt).filter(|d| !d.is_zero())
    }
}

#[derive(Debug, Default)]
struct Carry {
    last: HashMap<u32, Seen>,
    closed: FlowTotals,
}

/// Running totals of the `serval_flow_*` counters across flows that come and go (see the
/// module docs). One per translator.
#[derive(Debug, Default)]
pub struct FlowAccounts {
    carry: Mutex<Carry>,
}

impl FlowAccounts {
    /// An empty account.
    pub fn new() -> Self {
        Self::default()
    }

    /// The totals given the live flows now (every flow of the endpoint), and the gauges
    /// over them.
    pub fn totals(&self, live: &[FlowInfo]) -> FlowTotals {
        let mut carry = self.carry.lock().unwrap_or_else(PoisonError::into_inner);
        let Carry { last, closed } = &mut *carry;
        let mut next = HashMap::with_capacity(live.len());
        for f in live {
            let now = Seen::of(f);
            if let Some(old) = last.remove(&f.id.get())
                && old.replaced_by(&now)
            {
                ended(closed, &old);
            }
            next.insert(f.id.get(), now);
        }
        for (_, old) in last.drain() {
            ended(closed, &old);
        }
        *last = next;

        let mut t = *closed;
        let (mut rtt_n, mut rtt_sum) = (0u64, 0.0f64);
        let (mut cwnd_n, mut cwnd_sum) = (0u64, 0.0f64);
        for s in last.values() {
            s.add_to(&mut t);
            if let Some(rtt) = s.srtt() {
                rtt_n += 1;
                rtt_sum += rtt.as_secs_f64();
                t.srtt_max = t.srtt_max.max(rtt.as_secs_f64());
            }
            if let Some(st) = &s.stream {
                cwnd_n += 1;
                cwnd_sum += st.cwnd as f64;
                t.cwnd_max = t.cwnd_max.max(st.cwnd as f64);
            }
        }
        t.live = live.len() as u64;
        if rtt_n > 0 {
            t.srtt_mean = rtt_sum / rtt_n as f64;
        }
        if cwnd_n > 0 {
            t.cwnd_mean = cwnd_sum / cwnd_n as f64;
        }
        t
    }
}

/// A flow seen for the last time: its counters join the closed totals.
fn ended(closed: &mut FlowTotals, s: &Seen) {
    s.add_to(closed);
    if let Some(rtt) = s.srtt() {
        crate::metrics::record_flow_rtt(rtt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (
        Endpoint,
        serval_stack::driver::ServalStream,
        serval_stack::driver::ServalStream,
    ) {
        let mut config = serval_stack::sal::EndpointConfig::default();
        config.local_addr = "127.0.0.1:0".parse().unwrap();
        let e = Endpoint::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let prefix = serval_stack::wire::ServicePrefix::exact(ServiceId::from_u32(77));
        let l = e.listen(prefix).unwrap();
        let (a, b) = tokio::join!(e.connect(ServiceId::from_u32(77)), l.accept());
        (e, a.unwrap(), b.unwrap())
    }

    #[tokio::test]
    async fn pages_and_totals_follow_the_endpoints_flows() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (e, mut a, mut b) = pair().await;
        a.write_all(&[7u8; 5000]).await.unwrap();
        let mut buf = vec![0u8; 5000];
        b.read_exact(&mut buf).await.unwrap();
        let all = page(&e, None, 1000);
        assert_eq!(all.total, e.flow_count());
        assert_eq!(all.flows.len(), 2, "{all:?}");
        assert!(all.flows.iter().all(|f| f.state == "connected"));
        assert!(
            all.flows.iter().any(|f| f.bytes_received == 5000),
            "{all:?}"
        );
        let first = page(&e, None, 1);
        assert_eq!(first.flows.len(), 1);
        let next = first.next_after.unwrap();
        let second = page(&e, FlowId::new(next), 1);
        assert_eq!(second.flows.len(), 1);
        assert!(second.flows[0].id > next);
        assert_eq!(second.next_after, None);

        let accounts = FlowAccounts::new();
        let live = e.flows(None, usize::MAX);
        let t = accounts.totals(&live);
        assert_eq!(t.live, 2);
        assert!(t.cwnd_max > 0.0);
        // A flow that disappears keeps its counters in the totals (here: a made-up
        // retransmission count on the last view of a flow).
        let mut gone = live[0].clone();
        if let Some(s) = gone.stream.as_mut() {
            s.retransmits = 9;
        }
        let before = accounts.totals(&[gone]).retransmits;
        assert!(before >= 9);
        assert_eq!(accounts.totals(&[]).retransmits, before, "monotonic");
    }
}
