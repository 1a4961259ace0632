//! Prometheus metrics of the translator (served by the admin API's `GET /metrics`).
//!
//! Two sources, one exposition:
//!
//! - **Events** — what only exists at the moment it happens: connect, TLS-handshake and
//!   relay durations (from each access-log record, [`record_access`]), the last RTT of a
//!   flow seen ending ([`record_flow_rtt`]), reloads ([`record_reload`]) and admin requests
//!   ([`record_admin_request`]). They go through the `metrics` facade into one
//!   process-wide Prometheus recorder ([`install`], idempotent: tests run several
//!   translators in one process and share it).
//! - **Samples** — counters that already exist as atomics (client, server, DNS, router
//!   counters; the Serval endpoint's and driver's counters) are read at scrape time and
//!   written with [`metrics::Counter::absolute`] into a recorder made for that one scrape
//!   ([`render_sampled`]). There is one source of truth per number, nothing is counted
//!   twice, and two translators in one process never mix their samples.
//!
//! Conventions: prefix `serval_`, base units (`_seconds`, `_bytes`), counters end in
//! `_total`, histograms have explicit buckets, and labels are bounded: `role`, a listener
//! or service `name` from the policy, `outcome`/`reason`/`result`/`direction` from fixed
//! sets, router `service` prefixes from the service table (capped at
//! [`MAX_SERVICE_SERIES`]). Never addresses or flow ids. [`CATALOGUE`] lists every metric;
//! `docs/METRICS.md` documents them (a test keeps the two in step).

use std::sync::OnceLock;

use metrics::{Label, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serval_stack::control::plane::ControlPlaneStats;
use serval_stack::control::{DelayStats, RegistryStats};
use serval_stack::driver::DriverStats;
use serval_stack::sal::EndpointStats;

use crate::client::ClientStats;
use crate::dns::DnsStats;
use crate::relay::AccessLog;
use crate::server::ServerStats;

/// What kind of metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (resets when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in explicit buckets.
    Histogram,
}

impl Kind {
    /// The `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One metric of [`CATALOGUE`].
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    /// Full name.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// Label names.
    pub labels: &'static [&'static str],
    /// Meaning (the `# HELP` text).
    pub help: &'static str,
}

const fn m(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter as C, Gauge as G, Histogram as H};

/// Connect (upstream open) latency.
pub const CONNECT_SECONDS: &str = "serval_connect_duration_seconds";
/// TLS handshake latency.
pub const TLS_HANDSHAKE_SECONDS: &str = "serval_tls_handshake_duration_seconds";
/// Relay duration.
pub const RELAY_SECONDS: &str = "serval_relay_duration_seconds";
/// Final smoothed RTT of closed flows.
pub const FLOW_RTT_SECONDS: &str = "serval_flow_rtt_seconds";
/// Reloads by result.
pub const RELOADS: &str = "serval_config_reloads_total";
/// Admin requests by path and code.
pub const ADMIN_REQUESTS: &str = "serval_admin_requests_total";

/// Most router `service` series (table prefixes) exported; the rest are summed into
/// `service="other"`.
pub const MAX_SERVICE_SERIES: usize = 256;

/// Every metric the translator exports.
pub const CATALOGUE: &[MetricDef] = &[
    // --- events (process-wide recorder)
    m(
        CONNECT_SECONDS,
        H,
        &["role", "name"],
        "Time to open the upstream: the Serval connect (client role) or the backend TCP connect, retries included (server role).",
    ),
    m(
        TLS_HANDSHAKE_SECONDS,
        H,
        &["role", "name"],
        "Time of the TLS handshake on the Serval leg (tls: on).",
    ),
    m(
        RELAY_SECONDS,
        H,
        &["role", "name"],
        "Lifetime of relayed connections, from the upstream being open to the close.",
    ),
    m(
        FLOW_RTT_SECONDS,
        H,
        &[],
        "Smoothed RTT of the endpoint's Serval flows, as last seen before they ended.",
    ),
    m(
        RELOADS,
        C,
        &["result"],
        "Policy reloads (SIGHUP or POST /reload) by result: ok or failed.",
    ),
    m(
        ADMIN_REQUESTS,
        C,
        &["path", "code"],
        "Admin API requests by route (unknown paths are `other`) and HTTP status code.",
    ),
    // --- translator state
    m(
        "serval_up",
        G,
        &["role"],
        "1 for each role this translator runs.",
    ),
    m(
        "serval_ready",
        G,
        &[],
        "1 when /readyz answers 200 (not draining; the server role registered with every router).",
    ),
    m(
        "serval_draining",
        G,
        &[],
        "1 once a drain started (SIGTERM or POST /drain).",
    ),
    // --- connections (client and server roles)
    m(
        "serval_connections_accepted_total",
        C,
        &["role"],
        "Connections accepted: TCP connections on client listeners, Serval flows on the server role.",
    ),
    m(
        "serval_connections_active",
        G,
        &["role"],
        "Connections in progress now.",
    ),
    m(
        "serval_connections_relayed_total",
        C,
        &["role"],
        "Connections whose upstream was opened and that were relayed.",
    ),
    m(
        "serval_connections_closed_total",
        C,
        &["role", "outcome"],
        "Relayed connections closed, by outcome (finished, idle_timeout, half_close_timeout, reset_inbound, reset_outbound, error, error_inbound, error_outbound, stopped).",
    ),
    m(
        "serval_connections_refused_total",
        C,
        &["role", "reason"],
        "Connections refused before any upstream was tried, by reason (limits, draining, policy, preamble, TLS).",
    ),
    m(
        "serval_connect_failures_total",
        C,
        &["role", "reason"],
        "Upstream connects that failed, by reason (client: the Serval flow; server: backend attempts).",
    ),
    m(
        "serval_relay_bytes_total",
        C,
        &["role", "direction"],
        "Bytes relayed: direction upstream = towards the service (legacy client to Serval on the client role, Serval to backend on the server role), downstream = back.",
    ),
    m(
        "serval_accept_errors_total",
        C,
        &["role"],
        "accept() failures on client listeners (file descriptors exhausted and the like).",
    ),
    // --- server role backends
    m(
        "serval_backend_connect_attempts_total",
        C,
        &[],
        "Backend TCP connects attempted (first tries and retries).",
    ),
    m(
        "serval_backend_retries_total",
        C,
        &[],
        "Backend connect attempts after the first one of a flow.",
    ),
    m(
        "serval_backend_health_checks_total",
        C,
        &["result"],
        "Active health checks run, by result (ok, failed).",
    ),
    m(
        "serval_backend_transitions_total",
        C,
        &["to"],
        "Backends marked up or down by active health checks.",
    ),
    m(
        "serval_backend_ejections_total",
        C,
        &[],
        "Backends ejected by passive outlier detection.",
    ),
    m(
        "serval_backend_panic_selections_total",
        C,
        &[],
        "Backend choices made while no backend was healthy (all were used).",
    ),
    m(
        "serval_backend_dns_resolutions_total",
        C,
        &["result"],
        "DNS resolutions of backend names, by result (ok, failed).",
    ),
    m(
        "serval_client_preambles_total",
        C,
        &[],
        "Server role: flows that carried a client translator's PROXY v2 preamble.",
    ),
    // --- DNS responder
    m(
        "serval_dns_queries_total",
        C,
        &[],
        "DNS queries received by the client role's responder.",
    ),
    m(
        "serval_dns_answers_total",
        C,
        &["kind"],
        "DNS answers by kind: synthetic, nodata, pool_full, forwarded, forwarded_negative, forward_failed, refused, malformed, busy.",
    ),
    // --- router role
    m(
        "serval_router_syns_forwarded_total",
        C,
        &["service"],
        "SYNs the router's service table resolved to a FORWARD target, by table prefix (`other` past the series cap).",
    ),
    m(
        "serval_router_leases",
        G,
        &[],
        "Registration leases held now.",
    ),
    m(
        "serval_router_registrations_total",
        C,
        &["result"],
        "REGISTER messages: accepted, or refused (bad MAC, unknown key, replay, limits, malformed).",
    ),
    m(
        "serval_router_lease_events_total",
        C,
        &["event"],
        "Leases added, refreshed, expired (the instance stopped refreshing) and withdrawn.",
    ),
    m(
        "serval_router_delay_queue_length",
        G,
        &[],
        "SYNs parked by DELAY rules now.",
    ),
    m(
        "serval_router_delay_total",
        C,
        &["event"],
        "DELAY queue: SYNs parked, released, dropped by verdict, expired, refused.",
    ),
    m(
        "serval_router_static_rules",
        G,
        &[],
        "Static routes and DELAY rules installed from the policy.",
    ),
    // --- Serval stack (endpoint and driver)
    m(
        "serval_stack_flows",
        G,
        &[],
        "Serval flows alive on the endpoint (closing ones included).",
    ),
    m(
        "serval_stack_half_open_flows",
        G,
        &[],
        "Half-open flows (SYN answered, conn-ACK awaited): at serval.max_half_open a SYN flood is evicting handshakes.",
    ),
    m(
        "serval_stack_half_open_flows_peak",
        G,
        &[],
        "Most half-open flows at once since the endpoint started.",
    ),
    m(
        "serval_stack_datagrams_total",
        C,
        &["direction"],
        "UDP datagrams received (rx) and sent (tx) by the endpoint's socket.",
    ),
    m(
        "serval_stack_socket_calls_total",
        C,
        &["direction"],
        "recvmmsg (rx) and sendmsg (tx) calls; datagrams per call is the GRO/GSO batch.",
    ),
    m(
        "serval_stack_gro_datagrams_total",
        C,
        &[],
        "Datagrams received coalesced by UDP GRO.",
    ),
    m(
        "serval_stack_gso_segments",
        G,
        &[],
        "Most datagrams one send may carry (UDP GSO; 1 without GSO).",
    ),
    m(
        "serval_stack_gro_segments",
        G,
        &[],
        "Most datagrams the kernel may coalesce into one receive (UDP GRO; 1 without GRO).",
    ),
    m(
        "serval_stack_socket_errors_total",
        C,
        &["direction"],
        "Socket send (tx) and receive (rx) errors.",
    ),
    m(
        "serval_stack_mtu_errors_total",
        C,
        &[],
        "Datagrams the kernel refused as larger than the path MTU (serval.max_udp_payload too large).",
    ),
    m(
        "serval_stack_drops_total",
        C,
        &["reason"],
        "Datagrams dropped by the endpoint, by reason (malformed, bad_mac, unknown_flow, ..., backlog_full, loopback_budget, unconnected).",
    ),
    m(
        "serval_stack_syns_total",
        C,
        &["event"],
        "Handshake events: received, duplicate, accepted, forwarded, delayed, refused (no service), half_open_evicted.",
    ),
    m(
        "serval_stack_migrations_total",
        C,
        &[],
        "Moves of the endpoint to a new local address (rebind, migrate); every flow announces it.",
    ),
    m(
        "serval_stack_key_agreements_total",
        C,
        &["cache"],
        "X25519 key agreements: computed (miss) or served from the cache (hit).",
    ),
    m(
        "serval_stack_control_events_dropped_total",
        C,
        &[],
        "Control-plane events dropped because nobody collected them in time.",
    ),
    // --- the endpoint's Serval flows (live flows + those seen ending)
    m(
        "serval_flow_retransmits_total",
        C,
        &[],
        "Segments retransmitted on the endpoint's Serval flows.",
    ),
    m(
        "serval_flow_retransmitted_bytes_total",
        C,
        &[],
        "Payload bytes retransmitted on the endpoint's Serval flows.",
    ),
    m(
        "serval_flow_timeouts_total",
        C,
        &["kind"],
        "Retransmission timeouts (rto) and tail-loss probes (tlp) on the endpoint's Serval flows.",
    ),
    m(
        "serval_flow_keepalives_total",
        C,
        &[],
        "Keepalives sent on idle Serval flows of the endpoint.",
    ),
    m(
        "serval_flow_migrations_total",
        C,
        &[],
        "Local address changes announced (RSYN) by the endpoint's Serval flows.",
    ),
    m(
        "serval_flow_path_validations_total",
        C,
        &["result"],
        "Path validations on the endpoint's Serval flows: started, succeeded, failed.",
    ),
    m(
        "serval_flow_drops_total",
        C,
        &["reason"],
        "Datagrams dropped by the endpoint's Serval flows, by reason.",
    ),
    m(
        "serval_flow_srtt_seconds",
        G,
        &["stat"],
        "Smoothed RTT over the endpoint's live Serval flows now: mean and max (0 without flows).",
    ),
    m(
        "serval_flow_cwnd_bytes",
        G,
        &["stat"],
        "Congestion window over the endpoint's live Serval flows now: mean and max.",
    ),
];

/// Buckets of connect and handshake latency: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of relay duration: 10 ms to 4 h.
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14_400.0,
];
/// Buckets of RTT: 100 µs to 1 s.
pub const RTT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

fn builder() -> PrometheusBuilder {
    let b = PrometheusBuilder::new();
    // Full names only: the buckets are valid (non-empty), so these cannot fail.
    let with = |b: PrometheusBuilder, name: &str, buckets: &[f64]| {
        b.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            .unwrap_or_else(|_| PrometheusBuilder::new())
    };
    let b = with(b, CONNECT_SECONDS, LATENCY_BUCKETS);
    let b = with(b, TLS_HANDSHAKE_SECONDS, LATENCY_BUCKETS);
    let b = with(b, RELAY_SECONDS, DURATION_BUCKETS);
    with(b, FLOW_RTT_SECONDS, RTT_BUCKETS)
}

static GLOBAL: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder of event metrics once; later calls return the same
/// handle. `None` when another recorder was installed first (then only the sampled metrics
/// are served).
pub fn install() -> Option<&'static PrometheusHandle> {
    GLOBAL
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe_all();
                    Some(handle)
                }
                Err(_) => {
                    tracing::warn!(
                        "metrics: another recorder is installed; event metrics are not served"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// How often the recorder's histogram samples are folded into their buckets.
pub const UPKEEP_INTERVAL: core::time::Duration = core::time::Duration::from_secs(5);

/// Folds the histogram samples recorded since the last call into their buckets, every
/// [`UPKEEP_INTERVAL`], for ever. The recorder keeps every observation (one per connection,
/// per histogram) until upkeep or a scrape drains it; the exporter's own HTTP listener
/// would run this, but we serve `/metrics` ourselves, so without it a translator nobody
/// scrapes grows by tens of bytes per connection without bound (found by the soak).
pub async fn upkeep(handle: &'static PrometheusHandle) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Describes every catalogue metric to the current recorder (HELP lines and units).
fn describe_all() {
    for d in CATALOGUE {
        let unit = if d.name.ends_with("_seconds") {
            Some(Unit::Seconds)
        } else if d.name.ends_with("_bytes") || d.name.ends_with("_bytes_total") {
            Some(Unit::Bytes)
        } else {
            None
        };
        match (d.kind, unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(d.name, u, d.help),
            (Kind::Counter, None) => metrics::describe_counter!(d.name, d.help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(d.name, u, d.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(d.name, d.help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(d.name, u, d.help),
            (Kind::Histogram, None) => metrics::describe_histogram!(d.name, d.help),
        }
    }
}

/// Records the durations of one closed connection (called by [`AccessLog::emit`]).
pub fn record_access(log: &AccessLog<'_>) {
    let labels = [
        Label::new("role", log.role.to_owned()),
        Label::new("name", log.via.to_owned()),
    ];
    metrics::histogram!(RELAY_SECONDS, labels.iter()).record(log.report.duration.as_secs_f64());
    if let Some(d) = log.connect {
        metrics::histogram!(CONNECT_SECONDS, labels.iter()).record(d.as_secs_f64());
    }
    if let Some(d) = log.tls_handshake {
        metrics::histogram!(TLS_HANDSHAKE_SECONDS, labels.iter()).record(d.as_secs_f64());
    }
}

/// Records the smoothed RTT of a Serval flow at its end.
pub fn record_flow_rtt(srtt: core::time::Duration) {
    metrics::histogram!(FLOW_RTT_SECONDS).record(srtt.as_secs_f64());
}

/// Counts a reload (SIGHUP or POST /reload).
pub fn record_reload(ok: bool) {
    metrics::counter!(RELOADS, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

/// Counts an admin request; `route` is one of the API's fixed route names.
pub fn record_admin_request(route: &'static str, code: u16) {
    metrics::counter!(ADMIN_REQUESTS, "path" => route, "code" => code.to_string()).increment(1);
}

/// Counters of the endpoint's Serval flows (see `admin::flows`): totals of the flows that
/// ended plus the current values of the live ones, and gauges over the live ones.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct FlowTotals {
    /// Segments retransmitted.
    pub retransmits: u64,
    /// Payload bytes retransmitted.
    pub bytes_retransmitted: u64,
    /// RTO firings.
    pub rto_timeouts: u64,
    /// Tail-loss probes.
    pub tlp_probes: u64,
    /// Keepalives (SAL keepalives plus transport keepalive probes).
    pub keepalives: u64,
    /// RSYN migrations started.
    pub migrations: u64,
    /// Path validations started.
    pub path_validations_started: u64,
    /// Path validations that moved the flow.
    pub path_validations_succeeded: u64,
    /// Path validations given up.
    pub path_validations_failed: u64,
    /// Drops by reason (the flows' own counters).
    pub drops: serval_stack::sal::DropCounts,
    /// Live flows.
    pub live: u64,
    /// Mean smoothed RTT of the live flows with a sample, seconds.
    pub srtt_mean: f64,
    /// Largest smoothed RTT of the live flows, seconds.
    pub srtt_max: f64,
    /// Mean congestion window of the live flows, bytes.
    pub cwnd_mean: f64,
    /// Largest congestion window of the live flows, bytes.
    pub cwnd_max: f64,
}

/// The Serval endpoint's counters at scrape time.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct StackSample {
    /// Core endpoint counters.
    pub endpoint: EndpointStats,
    /// Driver counters.
    pub driver: DriverStats,
    /// Control plane counters.
    pub control: ControlPlaneStats,
    /// Flows alive.
    pub flows: u64,
}

/// The router role's state at scrape time.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RouterSample {
    /// Registry counters.
    pub registry: Option<RegistryStats>,
    /// DELAY queue counters.
    pub delay: Option<DelayStats>,
    /// Static rules installed.
    pub static_rules: u64,
    /// SYNs resolved to FORWARD targets, per table prefix.
    pub forwarded: Vec<(String, u64)>,
}

/// Everything sampled for one scrape of one translator.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Sample {
    /// Roles on (`client`, `server`, `router`).
    pub roles: Vec<&'static str>,
    /// Ready (what /readyz says).
    pub ready: bool,
    /// Draining.
    pub draining: bool,
    /// Client role counters.
    pub client: Option<ClientStats>,
    /// Server role counters.
    pub server: Option<ServerStats>,
    /// DNS responder counters.
    pub dns: Option<DnsStats>,
    /// Router role.
    pub router: Option<RouterSample>,
    /// The endpoint.
    pub stack: StackSample,
    /// Relayed flows.
    pub flows: FlowTotals,
}

/// Writes sampled values into the recorder of one scrape.
struct Writer;

impl Writer {
    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)], v: u64) {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, (*v).to_owned()))
            .collect();
        metrics::counter!(name, labels).absolute(v);
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)], v: f64) {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, (*v).to_owned()))
            .collect();
        metrics::gauge!(name, labels).set(v);
    }
}

/// Renders `s` as Prometheus text (a fresh recorder per call; see the module docs).
pub fn render_sampled(s: &Sample) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe_all();
        write_sample(&Writer, s);
    });
    handle.render()
}

/// The whole exposition: the sampled part of this translator, then the process-wide
/// event metrics.
pub fn render(s: &Sample) -> String {
    let mut out = render_sampled(s);
    if let Some(h) = install() {
        out.push_str(&h.render());
    }
    out
}

#[allow(clippy::too_many_lines)] // one flat list of metrics reads best
fn write_sample(w: &Writer, s: &Sample) {
    for role in &s.roles {
        w.gauge("serval_up", &[("role", role)], 1.0);
    }
    w.gauge("serval_ready", &[], f64::from(u8::from(s.ready)));
    w.gauge("serval_draining", &[], f64::from(u8::from(s.draining)));

    if let Some(c) = &s.client {
        let r = ("role", "client");
        w.counter("serval_connections_accepted_total", &[r], c.accepted);
        w.gauge("serval_connections_active", &[r], c.active as f64);
        w.counter("serval_connections_relayed_total", &[r], c.relayed);
        w.counter("serval_accept_errors_total", &[r], c.accept_errors);
        let o = &c.outcomes;
        for (outcome, v) in [
            ("finished", o.finished),
            ("idle_timeout", o.idle_timeout),
            ("half_close_timeout", o.half_close_timeout),
            ("reset_inbound", o.reset_inbound),
            ("reset_outbound", o.reset_outbound),
            ("error", o.error),
            ("stopped", o.stopped),
        ] {
            w.counter(
                "serval_connections_closed_total",
                &[r, ("outcome", outcome)],
                v,
            );
        }
        let p = &c.refused_policy;
        for (reason, v) in [
            ("listener_full", c.refused_listener_full),
            ("global_full", c.refused_global_full),
            ("draining", c.refused_draining),
            ("source_full", c.refused_source_full),
            ("first_byte_timeout", c.first_byte_timeout),
            ("closed_before_data", c.closed_before_data),
            ("unknown_listener", p.unknown_listener),
            ("not_redirected", p.not_redirected),
            ("unbound_synthetic_address", p.unbound_synthetic_address),
            ("name_not_mapped", p.name_not_mapped),
            ("no_rule", p.no_rule),
            ("rule_refused", p.rule_refused),
            ("scoped_destination", p.scoped_destination),
            ("policy_other", p.other),
        ] {
            w.counter(
                "serval_connections_refused_total",
                &[r, ("reason", reason)],
                v,
            );
        }
        let f = &c.connect_failed;
        for (reason, v) in [
            ("no_route", f.no_route),
            ("prohibited", f.prohibited),
            ("refused", f.refused),
            ("timeout", f.timeout),
            ("tls", f.tls),
            ("preamble", f.preamble),
            ("other", f.other),
        ] {
            w.counter("serval_connect_failures_total", &[r, ("reason", reason)], v);
        }
        w.counter(
            "serval_relay_bytes_total",
            &[r, ("direction", "upstream")],
            c.bytes_to_service,
        );
        w.counter(
            "serval_relay_bytes_total",
            &[r, ("direction", "downstream")],
            c.bytes_to_client,
        );
    }

    if let Some(v) = &s.server {
        let r = ("role", "server");
        w.counter("serval_connections_accepted_total", &[r], v.accepted);
        w.gauge("serval_connections_active", &[r], v.active as f64);
        w.counter("serval_connections_relayed_total", &[r], v.relayed);
        for (outcome, n) in [
            ("finished", v.outcome_finished),
            ("idle_timeout", v.outcome_idle_timeout),
            ("half_close_timeout", v.outcome_half_close_timeout),
            ("reset_inbound", v.outcome_reset_inbound),
            ("reset_outbound", v.outcome_reset_outbound),
            ("error_inbound", v.outcome_error_inbound),
            ("error_outbound", v.outcome_error_outbound),
            ("stopped", v.outcome_stopped),
        ] {
            w.counter(
                "serval_connections_closed_total",
                &[r, ("outcome", outcome)],
                n,
            );
        }
        for (reason, n) in [
            ("no_service", v.refused_no_service),
            ("not_legacy_address", v.refused_not_legacy_address),
            ("bad_destination", v.refused_bad_destination),
            ("not_allowed", v.refused_not_allowed),
            ("service_full", v.refused_service_full),
            ("global_full", v.refused_global_full),
            ("draining", v.refused_draining),
            ("tls", v.tls_failures),
            ("preamble_too_long", v.preamble_too_long),
            ("preamble_garbled", v.preamble_garbled),
            ("preamble_incomplete", v.preamble_incomplete),
        ] {
            w.counter(
                "serval_connections_refused_total",
                &[r, ("reason", reason)],
                n,
            );
        }
        for (reason, n) in [
            ("failed", v.connect_failures),
            ("timeout", v.connect_timeouts),
            ("no_backend", v.no_backend),
            ("proxy_header", v.proxy_header_failures),
        ] {
            w.counter("serval_connect_failures_total", &[r, ("reason", reason)], n);
        }
        w.counter(
            "serval_relay_bytes_total",
            &[r, ("direction", "upstream")],
            v.bytes_to_backends,
        );
        w.counter(
            "serval_relay_bytes_total",
            &[r, ("direction", "downstream")],
            v.bytes_from_backends,
        );
        w.counter(
            "serval_backend_connect_attempts_total",
            &[],
            v.connect_attempts,
        );
        w.counter("serval_backend_retries_total", &[], v.retries);
        w.counter(
            "serval_backend_health_checks_total",
            &[("result", "ok")],
            v.health_checks.saturating_sub(v.health_check_failures),
        );
        w.counter(
            "serval_backend_health_checks_total",
            &[("result", "failed")],
            v.health_check_failures,
        );
        w.counter(
            "serval_backend_transitions_total",
            &[("to", "down")],
            v.backends_marked_down,
        );
        w.counter(
            "serval_backend_transitions_total",
            &[("to", "up")],
            v.backends_marked_up,
        );
        w.counter("serval_backend_ejections_total", &[], v.ejections);
        w.counter(
            "serval_backend_panic_selections_total",
            &[],
            v.panic_selections,
        );
        w.counter(
            "serval_backend_dns_resolutions_total",
            &[("result", "ok")],
            v.dns_resolutions,
        );
        w.counter(
            "serval_backend_dns_resolutions_total",
            &[("result", "failed")],
            v.dns_failures,
        );
        w.counter("serval_client_preambles_total", &[], v.preambles);
    }

    if let Some(d) = &s.dns {
        w.counter("serval_dns_queries_total", &[], d.queries);
        for (kind, n) in [
            ("synthetic", d.synthetic),
            ("nodata", d.nodata),
            ("pool_full", d.pool_full),
            ("forwarded", d.forwarded),
            ("forwarded_negative", d.forwarded_negative),
            ("forward_failed", d.forward_failures),
            ("refused", d.refused),
            ("malformed", d.malformed),
            ("busy", d.busy),
        ] {
            w.counter("serval_dns_answers_total", &[("kind", kind)], n);
        }
    }

    if let Some(r) = &s.router {
        write_router(w, r);
    }

    write_stack(w, &s.stack);
    write_flows(w, &s.flows);
}

fn write_router(w: &Writer, r: &RouterSample) {
    w.gauge("serval_router_static_rules", &[], r.static_rules as f64);
    let mut other = 0u64;
    for (i, (service, n)) in r.forwarded.iter().enumerate() {
        if i < MAX_SERVICE_SERIES {
            w.counter(
                "serval_router_syns_forwarded_total",
                &[("service", service)],
                *n,
            );
        } else {
            other = other.saturating_add(*n);
        }
    }
    if r.forwarded.len() > MAX_SERVICE_SERIES {
        w.counter(
            "serval_router_syns_forwarded_total",
            &[("service", "other")],
            other,
        );
    }
    let g = r.registry.unwrap_or_default();
    w.gauge("serval_router_leases", &[], g.leases as f64);
    let refused = [
        g.dropped_malformed,
        g.dropped_not_request,
        g.dropped_unknown_key,
        g.dropped_bad_mac,
        g.dropped_replay,
        g.dropped_bad_address,
        g.refused_registrant_limit,
        g.refused_lease_limit,
        g.refused_source_limit,
        g.refused_table,
    ];
    for (result, n) in [
        ("accepted", g.registrations),
        ("unregistered", g.unregistrations),
        ("refused_malformed", refused[0].saturating_add(refused[1])),
        ("refused_unknown_key", refused[2]),
        ("refused_bad_mac", refused[3]),
        ("refused_replay", refused[4]),
        ("refused_bad_address", refused[5]),
        ("refused_limit", refused[6] + refused[7] + refused[8]),
        ("refused_table", refused[9]),
    ] {
        w.counter(
            "serval_router_registrations_total",
            &[("result", result)],
            n,
        );
    }
    for (event, n) in [
        ("added", g.leases_added),
        ("refreshed", g.leases_refreshed),
        ("expired", g.leases_expired),
        ("withdrawn", g.leases_withdrawn),
    ] {
        w.counter("serval_router_lease_events_total", &[("event", event)], n);
    }
    let d = r.delay.unwrap_or_default();
    w.gauge("serval_router_delay_queue_length", &[], d.waiting as f64);
    for (event, n) in [
        ("parked", d.parked),
        ("released", d.released),
        ("dropped", d.dropped_by_verdict),
        ("expired", d.expired),
        (
            "refused",
            d.refused_full
                + d.refused_service_full
                + d.refused_bytes
                + d.refused_loop
                + d.refused_too_old,
        ),
    ] {
        w.counter("serval_router_delay_total", &[("event", event)], n);
    }
}

fn write_stack(w: &Writer, s: &StackSample) {
    let (e, d) = (&s.endpoint, &s.driver);
    w.gauge("serval_stack_flows", &[], s.flows as f64);
    w.gauge("serval_stack_half_open_flows", &[], e.half_open as f64);
    w.gauge(
        "serval_stack_half_open_flows_peak",
        &[],
        e.half_open_peak as f64,
    );
    w.counter(
        "serval_stack_datagrams_total",
        &[("direction", "rx")],
        d.datagrams_received,
    );
    w.counter(
        "serval_stack_datagrams_total",
        &[("direction", "tx")],
        d.datagrams_sent,
    );
    w.counter(
        "serval_stack_socket_calls_total",
        &[("direction", "rx")],
        d.recv_calls,
    );
    w.counter(
        "serval_stack_socket_calls_total",
        &[("direction", "tx")],
        d.send_calls,
    );
    w.counter("serval_stack_gro_datagrams_total", &[], d.gro_datagrams);
    w.gauge("serval_stack_gso_segments", &[], d.gso_segments as f64);
    w.gauge("serval_stack_gro_segments", &[], d.gro_segments as f64);
    w.counter(
        "serval_stack_socket_errors_total",
        &[("direction", "rx")],
        d.recv_errors,
    );
    w.counter(
        "serval_stack_socket_errors_total",
        &[("direction", "tx")],
        d.send_errors,
    );
    w.counter("serval_stack_mtu_errors_total", &[], d.mtu_errors);
    for (reason, n) in e.drops.by_reason() {
        w.counter("serval_stack_drops_total", &[("reason", reason)], n);
    }
    for (reason, n) in [
        ("backlog_full", d.refused_backlog),
        ("loopback_budget", d.loopback_dropped),
        ("unconnected", d.unconnected_dropped),
    ] {
        w.counter("serval_stack_drops_total", &[("reason", reason)], n);
    }
    for (event, n) in [
        ("received", e.syns_received),
        ("duplicate", e.duplicate_syns),
        ("accepted", e.accepted),
        ("forwarded", e.forwarded_syns),
        ("delayed", e.syns_delayed),
        ("refused", e.refusals_sent),
        ("half_open_evicted", e.half_open_evicted),
    ] {
        w.counter("serval_stack_syns_total", &[("event", event)], n);
    }
    w.counter("serval_stack_migrations_total", &[], d.migrations);
    w.counter(
        "serval_stack_key_agreements_total",
        &[("cache", "miss")],
        e.key_agreements,
    );
    w.counter(
        "serval_stack_key_agreements_total",
        &[("cache", "hit")],
        e.key_cache_hits,
    );
    w.counter(
        "serval_stack_control_events_dropped_total",
        &[],
        s.control.events_dropped,
    );
}

fn write_flows(w: &Writer, f: &FlowTotals) {
    w.counter("serval_flow_retransmits_total", &[], f.retransmits);
    w.counter(
        "serval_flow_retransmitted_bytes_total",
        &[],
        f.bytes_retransmitted,
    );
    w.counter(
        "serval_flow_timeouts_total",
        &[("kind", "rto")],
        f.rto_timeouts,
    );
    w.counter(
        "serval_flow_timeouts_total",
        &[("kind", "tlp")],
        f.tlp_probes,
    );
    w.counter("serval_flow_keepalives_total", &[], f.keepalives);
    w.counter("serval_flow_migrations_total", &[], f.migrations);
    for (result, n) in [
        ("started", f.path_validations_started),
        ("succeeded", f.path_validations_succeeded),
        ("failed", f.path_validations_failed),
    ] {
        w.counter(
            "serval_flow_path_validations_total",
            &[("result", result)],
            n,
        );
    }
    for (reason, n) in f.drops.by_reason() {
        w.counter("serval_flow_drops_total", &[("reason", reason)], n);
    }
    w.gauge("serval_flow_srtt_seconds", &[("stat", "mean")], f.srtt_mean);
    w.gauge("serval_flow_srtt_seconds", &[("stat", "max")], f.srtt_max);
    w.gauge("serval_flow_cwnd_bytes", &[("stat", "mean")], f.cwnd_mean);
    w.gauge("serval_flow_cwnd_bytes", &[("stat", "max")], f.cwnd_max);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_names_follow_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for d in CATALOGUE {
            assert!(seen.insert(d.name), "{} twice", d.name);
            assert!(d.name.starts_with("serval_"), "{}", d.name);
            assert_eq!(
                d.kind == Kind::Counter,
                d.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                d.name
            );
            for l in d.labels {
                assert!(
                    !["addr", "address", "peer", "flow", "id", "ip"].contains(l),
                    "{}: unbounded label {l}",
                    d.name
                );
            }
        }
    }

    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../../docs/METRICS.md");
        for d in CATALOGUE {
            assert!(
                doc.contains(&format!("`{}`", d.name)),
                "docs/METRICS.md does not list {}",
                d.name
            );
        }
    }

    #[test]
    fn a_sample_renders_every_sampled_family_with_its_type() {
        let s = Sample {
            roles: vec!["client", "server", "router"],
            client: Some(ClientStats::default()),
            server: Some(ServerStats::default()),
            dns: Some(DnsStats::default()),
            router: Some(RouterSample {
                forwarded: (0..300).map(|i| (format!("0x{i:02x}:8"), 1)).collect(),
                ..RouterSample::default()
            }),
            ..Sample::default()
        };
        let text = render_sampled(&s);
        for d in CATALOGUE.iter().filter(|d| d.kind != Kind::Histogram) {
            if [RELOADS, ADMIN_REQUESTS].contains(&d.name) {
                continue;
            }
            assert!(
                text.contains(&format!("# TYPE {} {}\n", d.name, d.kind.as_str())),
                "{} missing:\n{text}",
                d.name
            );
        }
        // The router's service series are capped; the rest are summed into `other`.
        let series = text
            .lines()
            .filter(|l| l.starts_with("serval_router_syns_forwarded_total{"))
            .count();
        assert_eq!(series, MAX_SERVICE_SERIES + 1);
        assert!(text.contains("serval_router_syns_forwarded_total{service=\"other\"} 44"));
    }
}
