//! Hostile input against a running translator pair (issue 8, items 2 and 3), in one process
//! on loopback: legacy TCP client → client translator → router → server translator →
//! legacy TCP server, attacked with `serval_tests::attack` from other loopback addresses
//! (127.0.0.2 and up).
//!
//! * An off-path attacker sprays forged RST, FIN, RSYN, PATH_CHALLENGE and data packets
//!   with random, brute-forced and leaked FlowIDs at all three nodes during a transfer:
//!   nothing is accepted, the transfer is byte-exact, and the drop counters say why.
//! * SYN floods on the server translator and on the router: legit connects keep
//!   succeeding and half-open state stays under its limit.
//! * Spoofed registrations (no key, wrong key, replayed) change nothing at the router.
//!
//! Figures are printed with `eprintln!` (run with `--nocapture`). Every spray is bounded in
//! count, rate and time; every wait polls a condition under a hang guard; no assertion
//! depends on timing.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING.md)

mod common;

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;

use common::*;
use serval_stack::driver::FlowInfo;
use serval_stack::sal::{DropCounts, EndpointConfig, EndpointStats};
use serval_stack::time::Timestamp;
use serval_stack::wire::{FlowId, ServicePrefix, name};
use serval_tests::attack::{self, FlowIds, Kind, Plan, Report, Signer};
use tokio::sync::watch;
use translator::demo::PortReservation;
use translator::run::Translator;

const SERVICE: &str = "svc.test";

/// The tests of this file are load tests: run one at a time, so that a spray or a flood
/// never measures another test's traffic (a tokio mutex works across the tests' runtimes).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server translator in front of `backend`, registering [`SERVICE`] with `router`.
async fn server_translator(router: SocketAddr, backend: SocketAddr) -> Translator {
    let t = start(&format!(
        "serval:\n  bind: 127.0.0.1:0\n  routers: [\"{router}\"]\n  key: {{id: 1, env: TEST_KEY}}\nserver:\n  services:\n    - name: svc\n      prefix: \"name:{SERVICE}\"\n      backends: [{{address: \"{backend}\"}}]\n"
    ));
    t.wait_registered(WAIT).await.unwrap();
    t
}

fn client_translator(router: SocketAddr, listen: &PortReservation) -> Translator {
    start(&format!(
        "serval: {{bind: 127.0.0.1:0, routers: [\"{router}\"]}}\nclient:\n  connect_timeout: 5s\n  listeners:\n    - name: web\n      listen: \"{}\"\n      service: \"name:{SERVICE}\"\n",
        listen.addr()
    ))
}

/// The whole path: router, legacy server, server translator, client translator.
struct Pair {
    router: Translator,
    server: Translator,
    client: Translator,
    _legacy: tokio::task::JoinHandle<()>,
    _port: PortReservation,
}

impl Pair {
    async fn start() -> Self {
        let router = router();
        let (legacy, task) = legacy_server("legacy").await;
        let server = server_translator(router.serval_addr(), legacy).await;
        let port = reserve();
        let client = client_translator(router.serval_addr(), &port);
        Self {
            router,
            server,
            client,
            _legacy: task,
            _port: port,
        }
    }

    fn listen(&self) -> SocketAddr {
        self.client.client().unwrap().listener_addr("web").unwrap()
    }
}

/// The attacker's source addresses: other loopback IPs, never the victims' 127.0.0.1.
fn attacker_ips() -> Vec<IpAddr> {
    (2..=5).map(|i| IpAddr::from([127, 0, 0, i])).collect()
}

async fn run(plan: Plan) -> Report {
    tokio::task::spawn_blocking(move || attack::spray(&plan))
        .await
        .unwrap()
        .unwrap()
}

/// The one connected flow of a translator's endpoint (the transfer's Serval leg).
fn connected_flows(t: &Translator) -> Vec<FlowInfo> {
    t.endpoint()
        .flows(None, 64)
        .into_iter()
        .filter(|f| f.state == "connected")
        .collect()
}

/// Every flow of a translator's endpoint and its state.
fn all_flows(t: &Translator) -> Vec<(FlowId, &'static str)> {
    let flows = t.endpoint().flows(None, 1024);
    flows.into_iter().map(|f| (f.id, f.state)).collect()
}

/// Drop reasons that rose, and by how much.
type Deltas = Vec<(&'static str, u64)>;

/// Non-zero differences `after - before` of every drop reason.
fn drop_delta(before: &DropCounts, after: &DropCounts) -> Deltas {
    before
        .by_reason()
        .into_iter()
        .zip(after.by_reason())
        .filter(|(b, a)| a.1 != b.1)
        .map(|(b, a)| (b.0, a.1.saturating_sub(b.1)))
        .collect()
}

fn reason(delta: &[(&str, u64)], name: &str) -> u64 {
    delta.iter().find(|(n, _)| *n == name).map_or(0, |d| d.1)
}

/// What one node looked like before the spray.
struct Before {
    name: &'static str,
    stats: EndpointStats,
    flows: Vec<FlowInfo>,
    /// Every flow of the endpoint, in any state.
    all: Vec<(FlowId, &'static str)>,
}

impl Before {
    fn take(name: &'static str, t: &Translator) -> Self {
        Self {
            name,
            stats: t.endpoint().stats(),
            flows: connected_flows(t),
            all: all_flows(t),
        }
    }

    /// Checks that no flow was reset, closed, migrated or moved, and returns the drop
    /// deltas (endpoint, flows) and the stream's dropped segments since `take`.
    fn check(&self, t: &Translator) -> (Deltas, Deltas, u64) {
        let now = connected_flows(t);
        // No forged packet made a flow. (One that was closing may have gone since.)
        let all = all_flows(t);
        assert!(
            all.iter()
                .all(|(id, _)| self.all.iter().any(|(b, _)| b == id)),
            "{}: new flows: before {:?}, after {all:?}",
            self.name,
            self.all
        );
        for b in &self.flows {
            let a = now
                .iter()
                .find(|f| f.id == b.id)
                .unwrap_or_else(|| panic!("{}: flow {} is gone", self.name, b.id));
            assert_eq!(a.peer, b.peer, "{}: flow {} moved", self.name, b.id);
            let (sb, sa) = (&b.stats, &a.stats);
            assert_eq!(sa.resets_received, 0, "{}: reset", self.name);
            assert_eq!(sa.migrations_started, sb.migrations_started);
            assert_eq!(
                sa.path_validations_started, sb.path_validations_started,
                "{}: a forged packet started a path validation",
                self.name
            );
            assert_eq!(sa.path_validations_succeeded, sb.path_validations_succeeded);
        }
        self.deltas(t)
    }

    /// The drop deltas (endpoint, its flows) and the stream's dropped segments since
    /// `take`, over the flows that still exist.
    fn deltas(&self, t: &Translator) -> (Deltas, Deltas, u64) {
        let now = connected_flows(t);
        let mut flow_before = DropCounts::default();
        let mut flow_after = DropCounts::default();
        let mut segments = 0;
        for b in &self.flows {
            let Some(a) = now.iter().find(|f| f.id == b.id) else {
                continue;
            };
            add(&mut flow_before, &b.stats.drops);
            add(&mut flow_after, &a.stats.drops);
            segments += a.stream.map_or(0, |s| s.dropped_segments)
                - b.stream.map_or(0, |s| s.dropped_segments);
        }
        let stats = t.endpoint().stats();
        (
            drop_delta(&self.stats.drops, &stats.drops),
            drop_delta(&flow_before, &flow_after),
            segments,
        )
    }
}

fn add(sum: &mut DropCounts, d: &DropCounts) {
    sum.malformed += d.malformed;
    sum.bad_mac += d.bad_mac;
    sum.unknown_flow += d.unknown_flow;
    sum.unexpected_data += d.unexpected_data;
    sum.after_fin += d.after_fin;
    sum.unexpected += d.unexpected;
    sum.stale_version += d.stale_version;
    sum.unexpected_path_response += d.unexpected_path_response;
    sum.queue_full += d.queue_full;
    sum.closed += d.closed;
    sum.no_service += d.no_service;
    sum.overload += d.overload;
    sum.not_forwardable += d.not_forwardable;
}

/// Packets of each forged kind per (target, strategy) spray.
const PER_KIND: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_packets_from_off_path_change_nothing_during_a_transfer() {
    const UP: u64 = 8 << 20;
    const DOWN: u64 = 64 << 20;
    let _serial = SERIAL.lock().await;
    let p = Pair::start().await;
    let (gate, gate_rx) = watch::channel(1u64 << 20);
    let transfer = tokio::spawn(exchange_gated(p.listen(), UP, DOWN, gate_rx));
    until("the download is under way", || {
        let (c, s) = (connected_flows(&p.client), connected_flows(&p.server));
        c.len() == 1 && s.len() == 1 && s[0].stats.bytes_sent > 1 << 20
    })
    .await;
    let (c_flow, s_flow) = (
        connected_flows(&p.client)[0].id,
        connected_flows(&p.server)[0].id,
    );
    let nodes = [
        ("client", &p.client, c_flow, s_flow),
        ("server", &p.server, s_flow, c_flow),
        ("router", &p.router, c_flow, s_flow),
    ];
    let before: Vec<Before> = nodes
        .iter()
        .map(|(n, t, _, _)| Before::take(n, t))
        .collect();

    let mut total = Report::default();
    let sprays = nodes.len() as u64 * 3;
    let mut done = 0u64;
    for (name, t, dst, src) in nodes {
        let sweep_start = dst.get().saturating_sub(100).max(1);
        let strategies = [
            FlowIds::Random,
            FlowIds::Sweep {
                start: sweep_start,
                end: sweep_start.saturating_add(199),
            },
            FlowIds::Leaked {
                dst,
                src: Some(src),
            },
        ];
        for (i, ids) in strategies.into_iter().enumerate() {
            let mut plan = Plan::new(vec![t.serval_addr()]);
            plan.kinds = Kind::FORGED.to_vec();
            plan.flow_ids = ids;
            plan.count = PER_KIND * plan.kinds.len() as u64;
            plan.rate = 20_000;
            plan.duration = Duration::from_secs(30);
            plan.sources = attacker_ips();
            plan.sockets_per_source = 4;
            plan.seed = 100 + done * 10 + i as u64;
            let r = run(plan).await;
            eprintln!("spray {name:<6} {:<6}: {r}", ids.name());
            assert_eq!(r.total(), PER_KIND * 5, "the whole spray went out");
            total.add(&r);
            done += 1;
            // Let the download move on between sprays (it can never finish before the last).
            gate.send_replace(DOWN * done / (sprays + 1));
        }
    }
    eprintln!("spray total: {total}");
    // No answer to the forger: no RST for unknown flows (a FlowID oracle), no challenge.
    assert_eq!(total.replies, 0, "the victims answered forged packets");

    // Nothing was accepted: same flows, same peers, no reset, no migration or validation.
    for b in &before {
        let t = match b.name {
            "client" => &p.client,
            "server" => &p.server,
            _ => &p.router,
        };
        // The victims read their sockets in their own time: wait until every forged
        // packet was counted (the thresholds below), then check.
        until(&format!("{} counted the forged packets", b.name), || {
            // A vanished flow ends the wait at once: `check` says what happened.
            let (endpoint, flows, segments) = b.deltas(t);
            connected_flows(t).len() < b.flows.len() || counted(b.name, &endpoint, &flows, segments)
        })
        .await;
        let (endpoint, flows, segments) = b.check(t);
        eprintln!(
            "drops at {:<6}: endpoint {endpoint:?}; its flows {flows:?}; stream segments dropped {segments}",
            b.name
        );
        assert!(counted(b.name, &endpoint, &flows, segments));
    }

    gate.send_replace(u64::MAX);
    let x = tokio::time::timeout(WAIT, transfer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    x.assert_exact(DOWN);
    assert_eq!(x.tag, "legacy");
}

/// Whether a node's counters account for the spray: random and swept FlowIDs find no flow
/// (the sweep hits the real one once per kind); leaked FlowIDs reach the flow, where every
/// forged control packet fails its MAC and forged data is refused by the stream
/// (timestamps, sequence, ACK). The router has no flow: everything is unknown there.
fn counted(node: &str, endpoint: &Deltas, flows: &Deltas, segments: u64) -> bool {
    let unknown = reason(endpoint, "unknown_flow");
    if node == "router" {
        return unknown >= 3 * PER_KIND * 5;
    }
    unknown >= 2 * PER_KIND * 5 - 5
        && reason(flows, "bad_mac") >= 4 * PER_KIND
        && segments >= PER_KIND / 2
}

/// Whether an exchange arrived complete and unchanged both ways.
fn exact(x: &Exchange, down: u64) -> bool {
    x.server_saw == x.expected
        && x.back == down
        && x.back_sha == translator::demo::Pattern::new(7, down).sha256()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syn_floods_leave_legit_connects_working_and_half_open_state_bounded() {
    const SMALL: u64 = 16 << 10;
    let _serial = SERIAL.lock().await;
    let p = Pair::start().await;
    let listen = p.listen();
    let x = tokio::time::timeout(WAIT, exchange(listen, SMALL, SMALL))
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(SMALL);
    let service = name::service_id_for_name(SERVICE).unwrap();
    let limits = EndpointConfig::default();
    for (victim, addr) in [
        ("server translator", p.server.serval_addr()),
        ("router", p.router.serval_addr()),
    ] {
        let server_before = p.server.endpoint().stats();
        let router_before = p.router.endpoint().stats();
        let mut plan = Plan::new(vec![addr]);
        plan.kinds = vec![Kind::Syn];
        plan.service = service;
        plan.count = 60_000;
        plan.rate = 20_000;
        plan.duration = Duration::from_secs(3);
        plan.sources = attacker_ips();
        plan.sockets_per_source = 16;
        plan.seed = 7;
        let flood = tokio::task::spawn_blocking(move || attack::spray(&plan));
        // Legit connects: one started every 100 ms while the flood lasts (at most 30), each
        // a hashed exchange under the hang guard; they overlap, like real clients.
        let mut legit = Vec::new();
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        while !flood.is_finished() && legit.len() < 30 {
            pace.tick().await;
            legit.push(tokio::spawn(async move {
                tokio::time::timeout(WAIT, exchange(listen, SMALL, SMALL)).await
            }));
        }
        let tried = legit.len() as u32;
        let mut ok = 0u32;
        for l in legit {
            if let Ok(Ok(Ok(x))) = l.await
                && exact(&x, SMALL)
            {
                ok += 1;
            }
        }
        let r = flood.await.unwrap().unwrap();
        let s = p.server.endpoint().stats();
        let rs = p.router.endpoint().stats();
        eprintln!(
            "SYN flood on the {victim}: {r}\n  legit connects {ok}/{tried} ({:.0}%)\n  server: syns_received +{}, half_open now {} peak {} (limit {}), evicted +{}, accepted +{}, key_agreements +{}, drops {:?}\n  router: forwarded_syns +{}, refusals +{}, flows {}, drops {:?}",
            100.0 * f64::from(ok) / f64::from(tried.max(1)),
            s.syns_received - server_before.syns_received,
            s.half_open,
            s.half_open_peak,
            limits.max_half_open,
            s.half_open_evicted - server_before.half_open_evicted,
            s.accepted - server_before.accepted,
            s.key_agreements - server_before.key_agreements,
            drop_delta(&server_before.drops, &s.drops),
            rs.forwarded_syns - router_before.forwarded_syns,
            rs.refusals_sent - router_before.refusals_sent,
            p.router.endpoint().flow_count(),
            drop_delta(&router_before.drops, &rs.drops),
        );
        assert!(r.sent(Kind::Syn) > 0);
        assert!(tried >= 1);
        assert!(ok * 2 >= tried, "legit connects starved: {ok}/{tried}");
        assert!(s.half_open_peak <= limits.max_half_open as u64, "{s:?}");
        assert!(p.server.endpoint().flow_count() <= limits.max_flows);
        // The router keeps no per-SYN state.
        assert_eq!(p.router.endpoint().flow_count(), 0);
        assert_eq!(rs.half_open_peak, 0);
    }
    // After the floods, connects work as before.
    let x = tokio::time::timeout(WAIT, exchange(listen, SMALL, SMALL))
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(SMALL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_registrations_are_rejected_and_the_route_stays() {
    let _serial = SERIAL.lock().await;
    let p = Pair::start().await;
    let listen = p.listen();
    let x = tokio::time::timeout(WAIT, exchange(listen, 1000, 1000))
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(1000);
    let prefix = ServicePrefix::exact(name::service_id_for_name(SERVICE).unwrap());
    let leases = || {
        p.router.endpoint().with_control(|c| {
            c.registry()
                .unwrap()
                .leases()
                .map(|l| (l.prefix, l.instance, l.key_id))
                .collect::<Vec<_>>()
        })
    };
    let before = leases();
    assert_eq!(before, [(prefix, p.server.serval_addr(), 1)]);
    // The server translator's newest accepted sequence number (it advertises "the source
    // you see", key id 1): what a captured genuine message would carry at best.
    let newest = p.router.endpoint().with_control(|c| {
        c.registry()
            .unwrap()
            .snapshot(Timestamp::ZERO)
            .registrants
            .iter()
            .find(|r| r.key_id == 1 && r.addr.is_none())
            .unwrap()
            .newest
    });
    let stats = || p.router.router().unwrap().stats().registry.unwrap();
    let s0 = stats();

    let key = key_bytes();
    let wrong = [0x11u8; 32];
    let attacker: SocketAddr = "127.0.0.2:9".parse().unwrap();
    let future = newest + 1_000;
    // (what, unregister, advertised address, key id, sequence, signer)
    type Forged<'a> = (&'a str, bool, Option<SocketAddr>, u32, u64, Signer<'a>);
    let forged: [Forged<'_>; 8] = [
        (
            "REGISTER to the attacker, no key",
            false,
            Some(attacker),
            1,
            future,
            Signer::Forged,
        ),
        (
            "REGISTER, unknown key id",
            false,
            Some(attacker),
            77,
            future,
            Signer::Forged,
        ),
        (
            "REGISTER, wrong key",
            false,
            Some(attacker),
            1,
            future,
            Signer::Key(&wrong),
        ),
        (
            "UNREGISTER of the live lease, no key",
            true,
            None,
            1,
            future,
            Signer::Forged,
        ),
        (
            "UNREGISTER of the live lease, wrong key",
            true,
            None,
            1,
            future,
            Signer::Key(&wrong),
        ),
        (
            "UNREGISTER, unknown key id",
            true,
            None,
            77,
            future,
            Signer::Forged,
        ),
        (
            "UNREGISTER replayed (genuine, old sequence)",
            true,
            None,
            1,
            newest,
            Signer::Key(&key),
        ),
        (
            "REGISTER replayed from the attacker's source",
            false,
            None,
            1,
            newest,
            Signer::Key(&key),
        ),
    ];
    let socket = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    for (i, (what, unregister, addr, key_id, seq, signer)) in forged.into_iter().enumerate() {
        let bytes =
            attack::forge_registration(unregister, prefix, addr, key_id, seq, signer, i as u64);
        socket.send_to(&bytes, p.router.serval_addr()).unwrap();
        eprintln!("sent: {what}");
    }
    until("the router judged every forged registration", || {
        let s = stats();
        s.dropped_bad_mac - s0.dropped_bad_mac >= 4
            && s.dropped_unknown_key - s0.dropped_unknown_key >= 2
            && s.dropped_replay - s0.dropped_replay >= 2
    })
    .await;
    let s = stats();
    eprintln!(
        "registry rejections: bad_mac +{}, unknown_key +{}, replay +{}; registrations +{}, unregistrations +{}, leases {}",
        s.dropped_bad_mac - s0.dropped_bad_mac,
        s.dropped_unknown_key - s0.dropped_unknown_key,
        s.dropped_replay - s0.dropped_replay,
        s.registrations - s0.registrations,
        s.unregistrations - s0.unregistrations,
        s.leases
    );
    assert_eq!(
        (
            s.dropped_bad_mac - s0.dropped_bad_mac,
            s.dropped_unknown_key - s0.dropped_unknown_key,
            s.dropped_replay - s0.dropped_replay,
        ),
        (4, 2, 2)
    );
    assert_eq!(
        s.unregistrations, s0.unregistrations,
        "no UNREGISTER took effect"
    );
    assert_eq!(s.leases_withdrawn, s0.leases_withdrawn);
    assert_eq!(
        leases(),
        before,
        "the route still points at the real instance"
    );
    let x = tokio::time::timeout(WAIT, exchange(listen, 1000, 1000))
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(1000);
    assert_eq!(x.tag, "legacy");
}

fn key_bytes() -> Vec<u8> {
    (0..KEY_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&KEY_HEX[i..i + 2], 16).unwrap())
        .collect()
}
