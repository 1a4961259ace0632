//! The server role end to end, in one process on loopback: a Serval client endpoint opens
//! flows to a server endpoint running [`serve_with`], whose backends are real TCP listeners.
//! Every wait is bounded; nothing sleeps to synchronise.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serval_stack::driver::{Endpoint, ServalStream};
use serval_stack::sal::EndpointConfig;
use serval_stack::wire::{LegacyAddr, ServiceId};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::pool::Pool;
use super::*;
use crate::config::parse;

/// Bound of every wait in these tests: generous, it only fires when something hangs.
const LIMIT: Duration = Duration::from_secs(30);

fn config(yaml: &str) -> Arc<Config> {
    match parse(yaml, "test.yaml", &HashMap::<String, String>::new()) {
        Ok(l) => Arc::new(l.config),
        Err(e) => panic!("{}", e.render()),
    }
}

fn endpoint() -> Endpoint {
    Endpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::default()).unwrap()
}

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// A running server role.
struct Harness {
    server: Endpoint,
    client: Endpoint,
    config: watch::Sender<Arc<Config>>,
    drain: watch::Sender<bool>,
    counters: Arc<ServerCounters>,
    task: JoinHandle<io::Result<()>>,
}

impl Harness {
    async fn start(yaml: &str, resolver: Option<Arc<dyn Resolve>>) -> Self {
        let server = endpoint();
        let (config_tx, config_rx) = watch::channel(config(yaml));
        let (drain_tx, drain_rx) = watch::channel(false);
        let counters = Arc::new(ServerCounters::default());
        let mut options = ServeOptions::new().counters(counters.clone());
        if let Some(r) = resolver {
            options = options.resolver(r);
        }
        let task = tokio::spawn(serve_with(server.clone(), config_rx, drain_rx, options));
        Self {
            server,
            client: endpoint(),
            config: config_tx,
            drain: drain_tx,
            counters,
            task,
        }
    }

    async fn open(&self, client: &Endpoint, id: ServiceId) -> ServalStream {
        within("connect", client.connect_to(id, self.server.local_addr()))
            .await
            .expect("serval connect")
    }

    /// One flow from `client`: sends `data`, half-closes, reads the answer to its end.
    async fn exchange(&self, client: &Endpoint, id: ServiceId, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut s = self.open(client, id).await;
        within("exchange", async {
            s.write_all(data).await?;
            s.shutdown().await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            Ok(out)
        })
        .await
    }

    /// Drains and waits for `serve` to return; the counters then include every flow.
    async fn stop(self) -> ServerStats {
        self.drain.send_replace(true);
        within("serve returns", self.task).await.unwrap().unwrap();
        self.counters.snapshot()
    }
}

/// What a test backend does with each connection.
#[derive(Clone)]
enum Mode {
    /// Read to the end, answer with the backend's tag byte.
    Tag(u8),
    /// Send everything back; half-close after the end.
    Echo,
    /// Read a PROXY header, report it, then echo.
    Proxy(mpsc::UnboundedSender<Vec<u8>>),
}

/// A TCP backend on `addr` (port 0 for any); returns its address.
async fn backend_at(addr: SocketAddr, mode: Mode) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind(addr).await.unwrap();
    let local = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(handle(s, mode.clone()));
        }
    });
    (local, task)
}

async fn backend(mode: Mode) -> (SocketAddr, JoinHandle<()>) {
    backend_at("127.0.0.1:0".parse().unwrap(), mode).await
}

/// A [`Mode::Proxy`] backend and the receiver of the headers it reads.
async fn proxy_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (addr, task) = backend(Mode::Proxy(tx)).await;
    (addr, rx, task)
}

/// The addresses of the next header a [`proxy_backend`] read, which must be PROXY v2.
async fn v2_addresses(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> ppp::v2::Addresses {
    let header = within("header", rx.recv()).await.unwrap();
    let ppp::HeaderResult::V2(Ok(v2)) = ppp::HeaderResult::parse(&header) else {
        panic!("not a v2 header");
    };
    v2.addresses
}

async fn handle(mut s: TcpStream, mode: Mode) {
    match mode {
        Mode::Tag(tag) => {
            let mut sink = Vec::new();
            if s.read_to_end(&mut sink).await.is_ok() {
                let _ = s.write_all(&[tag]).await;
                let _ = s.shutdown().await;
            }
        }
        Mode::Echo => echo(s, Vec::new()).await,
        Mode::Proxy(tx) => {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 512];
            loop {
                let used = match ppp::HeaderResult::parse(&buf) {
                    ppp::HeaderResult::V1(Ok(h)) => Some(h.header.len()),
                    ppp::HeaderResult::V2(Ok(h)) => Some(h.len()),
                    r if ppp::PartialResult::is_incomplete(&r) => None,
                    _ => return,
                };
                if let Some(n) = used {
                    let _ = tx.send(buf[..n].to_vec());
                    let rest = buf[n..].to_vec();
                    echo(s, rest).await;
                    return;
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    }
}

async fn echo(s: TcpStream, first: Vec<u8>) {
    let (mut r, mut w) = s.into_split();
    if w.write_all(&first).await.is_err() {
        return;
    }
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// An address nothing listens on (connects are refused).
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn id() -> ServiceId {
    ServiceId::from_u32(0x0a00_0001)
}

/// A policy with one `web` service on `0x0a:8` (so [`id`] reaches it) over the backends
/// `addrs`; `keys` are further lines of the service, unindented.
fn web_policy(addrs: &[SocketAddr], keys: &str) -> String {
    let backends: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    let mut yaml = format!(
        "server:\n  services:\n    - name: web\n      prefix: \"0x0a:8\"\n      backends: [{}]\n",
        backends.join(", ")
    );
    for line in keys.lines() {
        yaml.push_str("      ");
        yaml.push_str(line);
        yaml.push('\n');
    }
    yaml
}

/// `len` reproducible bytes that do not compress or repeat (xorshift64 from `seed`, each
/// state little-endian), so a relay that drops or reorders anything changes their hash.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut x = seed;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data
}

fn two_backend_policy(a: SocketAddr, b: SocketAddr, balance: &str, weights: (u32, u32)) -> String {
    format!(
        r#"
server:
  services:
    - name: web
      prefix: "0x0a:8"
      balance: {balance}
      backends:
        - {{address: "{a}", weight: {}}}
        - {{address: "{b}", weight: {}}}
"#,
        weights.0, weights.1
    )
}

#[tokio::test]
async fn round_robin_weighted_and_least_connections_spread_flows() {
    let (a, _ta) = backend(Mode::Tag(b'a')).await;
    let (b, _tb) = backend(Mode::Tag(b'b')).await;
    for (mode, weights, check) in [
        ("round_robin", (1, 1), (20usize, 20usize)),
        ("weighted", (3, 1), (30, 10)),
        ("least_connections", (1, 1), (0, 0)),
    ] {
        let h = Harness::start(&two_backend_policy(a, b, mode, weights), None).await;
        let mut counts = [0usize; 2];
        for _ in 0..40 {
            let out = h.exchange(&h.client, id(), b"hello").await.unwrap();
            match out.as_slice() {
                b"a" => counts[0] += 1,
                b"b" => counts[1] += 1,
                other => panic!("{mode}: unexpected answer {other:?}"),
            }
        }
        if check == (0, 0) {
            // Flows run one after the other, so counts are even up to races between a
            // flow's end and the next pick: safe bounds only.
            assert!(counts[0] >= 10 && counts[1] >= 10, "{mode}: {counts:?}");
        } else {
            // Sequential flows, no failures: both rotations are exact.
            assert_eq!((counts[0], counts[1]), check, "{mode}");
        }
        let s = h.counters.snapshot();
        assert_eq!(
            (s.accepted, s.relayed, s.outcome_finished),
            (40, 40, 40),
            "{mode}"
        );
        assert_eq!(s.bytes_to_backends, 40 * 5);
        h.stop().await;
    }
}

#[tokio::test]
async fn consistent_hash_keeps_each_client_translator_on_one_backend() {
    let (a, _ta) = backend(Mode::Tag(b'a')).await;
    let (b, _tb) = backend(Mode::Tag(b'b')).await;
    let h = Harness::start(&two_backend_policy(a, b, "consistent_hash", (1, 1)), None).await;
    // 24 client translators (distinct Serval addresses), two flows each.
    let mut per_backend = [0usize; 2];
    for _ in 0..24 {
        let client = endpoint();
        let first = h.exchange(&client, id(), b"x").await.unwrap();
        let second = h.exchange(&client, id(), b"y").await.unwrap();
        assert_eq!(
            first, second,
            "the same client translator, the same backend"
        );
        per_backend[usize::from(first == b"b")] += 1;
    }
    // All 24 on one backend would have probability 2^-23.
    assert!(per_backend[0] > 0 && per_backend[1] > 0, "{per_backend:?}");
    h.stop().await;
}

#[tokio::test]
async fn a_refusing_backend_is_retried_elsewhere_then_ejected() {
    let dead = dead_addr().await;
    let (live, _t) = backend(Mode::Tag(b'l')).await;
    let yaml = web_policy(
        &[dead, live],
        "retries: 2\noutlier: {consecutive_failures: 2, ejection_time: 5m}",
    );
    let h = Harness::start(&yaml, None).await;
    for _ in 0..6 {
        assert_eq!(h.exchange(&h.client, id(), b"q").await.unwrap(), b"l");
    }
    let s = h.counters.snapshot();
    // Round robin starts on the dead backend: flows 1 and 2 fail there and retry on the
    // live one; the second failure ejects it and later flows never try it.
    assert_eq!(s.connect_failures, 2);
    assert_eq!(s.retries, 2);
    assert_eq!(s.ejections, 1);
    assert_eq!(s.no_backend, 0);
    assert_eq!(s.outcome_finished, 6);
    h.stop().await;
}

#[tokio::test]
async fn no_backend_resets_the_flow() {
    let dead = dead_addr().await;
    let h = Harness::start(&web_policy(&[dead], "retries: 3"), None).await;
    let r = h.exchange(&h.client, id(), b"q").await;
    assert!(
        r.is_err(),
        "the client sees a reset, not a clean end: {r:?}"
    );
    let s = h.counters.snapshot();
    assert_eq!(
        (s.no_backend, s.connect_attempts, s.retries),
        (1, 1, 0),
        "one backend: nothing else to retry"
    );
    h.stop().await;
}

#[tokio::test]
async fn health_checks_take_a_dead_backend_out_and_bring_it_back() {
    let (addr, task) = backend(Mode::Tag(b'h')).await;
    let svc = config(&web_policy(
        &[addr],
        "health_check: {interval: 50ms, timeout: 40ms, healthy_threshold: 2, unhealthy_threshold: 2}",
    ))
    .server
    .clone()
    .unwrap()
    .services
    .remove(0);
    let counters = Arc::new(ServerCounters::default());
    let pool = Pool::new(&svc, None, counters.clone());
    let p = pool.inner().clone();
    let changes = p.watch();
    let wait_for = |want_up: bool| {
        let p = p.clone();
        let mut changes = changes.clone();
        async move {
            within("health state", async {
                while p.view(tokio::time::Instant::now())[0].up != want_up {
                    changes.changed().await.unwrap();
                }
            })
            .await;
        }
    };
    // Up at first (and the checks keep it up while it answers).
    wait_for(true).await;
    // The backend goes away: two failed checks take it down.
    task.abort();
    let _ = task.await;
    wait_for(false).await;
    assert!(counters.snapshot().backends_marked_down >= 1);
    // Back on the same address: two passing checks bring it up.
    let (_again, _t) = backend_at(addr, Mode::Tag(b'h')).await;
    wait_for(true).await;
    let s = counters.snapshot();
    assert_eq!((s.backends_marked_down, s.backends_marked_up), (1, 1));
    assert!(s.health_check_failures >= 2);
    drop(pool);
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_headers_reach_the_backend() {
    for version in ["v1", "v2"] {
        let (addr, mut rx, _t) = proxy_backend().await;
        let yaml = web_policy(&[addr], &format!("proxy_protocol: {version}"));
        let h = Harness::start(&yaml, None).await;
        let out = h
            .exchange(&h.client, id(), b"payload after the header")
            .await
            .unwrap();
        assert_eq!(
            out, b"payload after the header",
            "{version}: the header is not echoed"
        );
        let header = within("header", rx.recv()).await.unwrap();
        let peer = h.client.local_addr();
        match ppp::HeaderResult::parse(&header) {
            ppp::HeaderResult::V1(Ok(v1)) => {
                assert_eq!(version, "v1");
                assert_eq!(v1.addresses, ppp::v1::Addresses::from((peer, addr)));
            }
            ppp::HeaderResult::V2(Ok(v2)) => {
                assert_eq!(version, "v2");
                assert_eq!(v2.addresses, ppp::v2::Addresses::from((peer, addr)));
                let tlv = v2.tlvs().next().unwrap().unwrap();
                assert_eq!(tlv.kind, PP2_TYPE_SERVAL_SERVICE_ID);
                assert_eq!(&tlv.value[..], id().as_bytes());
            }
            other => panic!("{version}: {other:?}"),
        }
        h.stop().await;
    }
}

#[tokio::test]
async fn cross_translation_allowed_and_refused() {
    let (addr, _t) = backend(Mode::Echo).await;
    let other = dead_addr().await;
    let yaml = format!(
        r#"
server:
  cross_translate:
    tag: 8080
    allow:
      - destination: 127.0.0.1/32
        ports: "{}"
"#,
        addr.port()
    );
    let h = Harness::start(&yaml, None).await;
    let allowed = LegacyAddr::new(8080, addr).to_service_id();
    assert_eq!(
        h.exchange(&h.client, allowed, b"through").await.unwrap(),
        b"through"
    );
    let refused = LegacyAddr::new(8080, other).to_service_id();
    let r = h.exchange(&h.client, refused, b"nope").await;
    assert!(r.is_err(), "a refused flow is reset: {r:?}");
    let s = h.counters.snapshot();
    assert_eq!(
        (s.relayed, s.refused_not_allowed, s.connect_attempts),
        (1, 1, 1)
    );
    h.stop().await;
}

/// A resolver whose answer the test changes; every call is reported.
#[derive(Debug)]
struct FakeResolver {
    answer: Mutex<Vec<IpAddr>>,
    calls: watch::Sender<usize>,
}

impl Resolve for FakeResolver {
    fn resolve<'a>(&'a self, _host: &'a str) -> ResolveFuture<'a> {
        let addrs = self.answer.lock().unwrap().clone();
        Box::pin(async move {
            self.calls.send_modify(|c| *c += 1);
            Ok(Resolved {
                addrs,
                ttl: Some(Duration::ZERO),
            })
        })
    }
}

#[tokio::test]
async fn dns_backends_follow_the_answer() {
    // Two backends on one port, on two loopback addresses.
    let (a, _ta) = backend(Mode::Tag(b'1')).await;
    let (b, _tb) = backend_at(
        SocketAddr::new("127.0.0.2".parse().unwrap(), a.port()),
        Mode::Tag(b'2'),
    )
    .await;
    let fake = Arc::new(FakeResolver {
        answer: Mutex::new(vec![a.ip()]),
        calls: watch::Sender::new(0),
    });
    let yaml = format!(
        r#"
server:
  services:
    - name: web
      prefix: "0x0a:8"
      backends: [{{dns: "web.test:{}"}}]
      dns_ttl: {{min: 50ms, max: 1s}}
"#,
        a.port()
    );
    let h = Harness::start(&yaml, Some(fake.clone())).await;
    // The first flow waits for the first answer rather than failing.
    assert_eq!(h.exchange(&h.client, id(), b"q").await.unwrap(), b"1");
    *fake.answer.lock().unwrap() = vec![b.ip()];
    // Three more resolutions: one may have read the old answer before it changed, the next
    // returns the new one, and the third starts only after that one was applied.
    let mut calls = fake.calls.subscribe();
    let seen = *calls.borrow_and_update();
    within("re-resolution", calls.wait_for(|c| *c >= seen + 3))
        .await
        .unwrap();
    assert_eq!(h.exchange(&h.client, id(), b"q").await.unwrap(), b"2");
    assert!(h.counters.snapshot().dns_resolutions >= 3);
    h.stop().await;
}

#[tokio::test]
async fn hickory_resolver_reads_a_dns_server() {
    let upstream = crate::dns::tests::FakeUpstream::start().await;
    upstream.set_a("web.test", &["192.0.2.10", "192.0.2.11"], 42);
    let r = DnsResolver::with_servers(&[upstream.addr]).unwrap();
    let got = within("resolve", r.resolve("web.test")).await.unwrap();
    let mut addrs = got.addrs.clone();
    addrs.sort();
    assert_eq!(
        addrs,
        [
            "192.0.2.10".parse::<IpAddr>().unwrap(),
            "192.0.2.11".parse().unwrap()
        ]
    );
    assert_eq!(got.ttl, Some(Duration::from_secs(42)));
    let missing = within("resolve", r.resolve("missing.test")).await;
    assert!(missing.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_is_byte_exact_over_multiple_mib() {
    let (addr, _t) = backend(Mode::Echo).await;
    let h = Harness::start(&web_policy(&[addr], ""), None).await;
    // 4 MiB of pseudo-random bytes, written while the echo is read back.
    let data = pseudo_random(0x9e37_79b9_7f4a_7c15, 4 << 20);
    let sent = Sha256::digest(&data);
    let s = h.open(&h.client, id()).await;
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    within("echo", r.read_to_end(&mut got)).await.unwrap();
    within("writer", writer).await.unwrap();
    assert_eq!(got.len(), 4 << 20);
    assert_eq!(Sha256::digest(&got), sent);
    let st = h.stop().await;
    assert_eq!(st.bytes_to_backends, 4 << 20);
    assert_eq!(st.bytes_from_backends, 4 << 20);
    assert_eq!(st.outcome_finished, 1);
}

#[tokio::test]
async fn drain_withdraws_listeners_and_stops_lingering_flows() {
    let (addr, _t) = backend(Mode::Echo).await;
    let yaml = format!(
        "drain: {{grace_period: 200ms}}\n{}",
        web_policy(&[addr], "")
    );
    let h = Harness::start(&yaml, None).await;
    // A flow that stays open: one round trip proves it is relayed, then it idles.
    let mut s = h.open(&h.client, id()).await;
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    within("echo", s.read_exact(&mut buf)).await.unwrap();
    let (server, client) = (h.server.clone(), h.client.clone());
    let st = h.stop().await;
    // The lingering flow was stopped at the end of the grace period and reset.
    let mut rest = Vec::new();
    let r = within("reset", s.read_to_end(&mut rest)).await;
    assert!(r.is_err(), "stopped flows are reset: {r:?}");
    assert_eq!(st.outcome_stopped, 1);
    // Nothing listens any more.
    let again = within("connect", client.connect_to(id(), server.local_addr())).await;
    assert!(again.is_err());
}

#[tokio::test]
async fn reload_moves_new_flows_and_keeps_flows_in_progress() {
    let (a, _ta) = backend(Mode::Echo).await;
    let (b, _tb) = backend(Mode::Tag(b'b')).await;
    // `barrier` is in every policy: a flow to it is accepted after the serve task took the
    // policy sent before it (the loop applies a new policy before it accepts).
    let policy = |web: SocketAddr, prefix: &str| {
        format!(
            r#"
server:
  services:
    - name: web
      prefix: "{prefix}"
      backends: [{{address: "{web}"}}]
    - name: barrier
      prefix: "0x0c:8"
      backends: [{{address: "{b}"}}]
"#
        )
    };
    let barrier = ServiceId::from_u32(0x0c00_0001);
    let h = Harness::start(&policy(a, "0x0a:8"), None).await;
    let mut old = h.open(&h.client, id()).await;
    old.write_all(b"1").await.unwrap();
    let mut one = [0u8; 1];
    within("echo", old.read_exact(&mut one)).await.unwrap();

    // New backend: the flow in progress keeps echoing, new flows go to `b`.
    h.config.send_replace(config(&policy(b, "0x0a:8")));
    assert_eq!(h.exchange(&h.client, barrier, b"").await.unwrap(), b"b");
    assert_eq!(h.exchange(&h.client, id(), b"x").await.unwrap(), b"b");
    old.write_all(b"2").await.unwrap();
    within("echo", old.read_exact(&mut one)).await.unwrap();
    assert_eq!(&one, b"2", "the flow in progress kept its backend");
    old.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("end", old.read_to_end(&mut rest)).await.unwrap();

    // A new prefix: its listener opens, the old one closes (connects are refused).
    h.config.send_replace(config(&policy(b, "0x0b:8")));
    assert_eq!(h.exchange(&h.client, barrier, b"").await.unwrap(), b"b");
    let moved = ServiceId::from_u32(0x0b00_0001);
    assert_eq!(h.exchange(&h.client, moved, b"x").await.unwrap(), b"b");
    let gone = within("connect", h.client.connect_to(id(), h.server.local_addr())).await;
    assert!(gone.is_err(), "the withdrawn prefix is not served");
    h.stop().await;
}

/// PROXY v2 to the backend at `addr`; `trust` is `server.trust_client_address` (a key of
/// `server:`, after the service list).
fn proxy_policy(addr: SocketAddr, trust: bool) -> String {
    web_policy(&[addr], "proxy_protocol: v2") + &format!("  trust_client_address: {trust}\n")
}

#[tokio::test]
async fn a_client_translators_preamble_is_stripped_and_its_address_used() {
    let legacy: SocketAddr = "10.50.0.1:40000".parse().unwrap();
    let original: SocketAddr = "127.0.0.1:8081".parse().unwrap();
    for trust in [true, false] {
        let (addr, mut rx, _t) = proxy_backend().await;
        let h = Harness::start(&proxy_policy(addr, trust), None).await;
        let mut data = crate::client_address::preamble(legacy, original).unwrap();
        data.extend_from_slice(b"payload after the preamble");
        let out = h.exchange(&h.client, id(), &data).await.unwrap();
        assert_eq!(
            out, b"payload after the preamble",
            "the preamble is stripped"
        );
        let want = if trust {
            (legacy, original)
        } else {
            (h.client.local_addr(), addr)
        };
        assert_eq!(
            v2_addresses(&mut rx).await,
            ppp::v2::Addresses::from(want),
            "trust={trust}"
        );
        let st = h.stop().await;
        assert_eq!(st.preambles, 1);
        assert_eq!(st.outcome_finished, 1);
    }
}

#[tokio::test]
async fn a_native_clients_first_bytes_reach_the_backend_intact() {
    let (addr, mut rx, _t) = proxy_backend().await;
    let h = Harness::start(&proxy_policy(addr, true), None).await;
    // Starts like the signature, then diverges; then 64 KiB of pseudo-random bytes.
    let mut data = b"\r\n\r\n\0\r\nQUI!".to_vec();
    data.extend(pseudo_random(0x2545_f491_4f6c_dd1d, 64 << 10));
    let out = h.exchange(&h.client, id(), &data).await.unwrap();
    assert_eq!(Sha256::digest(&out), Sha256::digest(&data));
    assert_eq!(
        v2_addresses(&mut rx).await,
        ppp::v2::Addresses::from((h.client.local_addr(), addr))
    );
    let st = h.stop().await;
    assert_eq!(st.preambles, 0);
    assert_eq!(st.bytes_to_backends, data.len() as u64);
}

#[tokio::test]
async fn an_oversize_or_garbled_preamble_is_refused() {
    let (addr, _t) = backend(Mode::Echo).await;
    let h = Harness::start(&proxy_policy(addr, true), None).await;
    let mut big = crate::client_address::SIGNATURE.to_vec();
    big.extend_from_slice(&[0x21, 0x11]);
    big.extend_from_slice(&600u16.to_be_bytes());
    big.resize(16 + 600, 0);
    let mut bad = crate::client_address::SIGNATURE.to_vec();
    bad.extend_from_slice(&[0x99, 0x11, 0, 12]);
    bad.resize(16 + 12, 0);
    for data in [big, bad] {
        let r = h.exchange(&h.client, id(), &data).await;
        assert!(
            r.is_err() || r.as_ref().is_ok_and(Vec::is_empty),
            "refused: {r:?}"
        );
    }
    let st = h.stop().await;
    assert_eq!(st.preamble_too_long, 1);
    assert_eq!(st.preamble_garbled, 1);
    assert_eq!(st.relayed, 0);
}
