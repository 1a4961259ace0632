//! The admin API and the metrics, in process, on real loopback sockets: a router, a server
//! translator and a client translator, each with its admin API on `127.0.0.1:0`, real
//! hashed transfers through them, and every answer read over HTTP. Waits poll a condition
//! (bounded); nothing sleeps to synchronise.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING.md)

mod common;

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use common::*;
use hyper::Method;
use serval_stack::wire::{ServicePrefix, name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use translator::admin::client::{Answer, request};
use translator::config;
use translator::metrics::{CATALOGUE, Kind};
use translator::run::Translator;

/// Admin API on a free loopback port.
const ADMIN: &str = "admin: {listen: \"127.0.0.1:0\"}\n";

/// Starts a translator on `yaml` with its admin API on (the tests' `common::start` turns it
/// off).
fn start_admin(yaml: &str) -> Translator {
    let text = format!("{yaml}{ADMIN}");
    let loaded = config::parse(&text, "test.yaml", &env())
        .unwrap_or_else(|e| panic!("{}\n{text}", e.render()));
    let secrets = config::preflight(&loaded, Path::new("."), &env()).unwrap();
    Translator::start(loaded, secrets).unwrap()
}

fn admin(t: &Translator) -> SocketAddr {
    t.admin_addr().expect("admin API on")
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, Method::GET, path, None, b"", WAIT)
        .await
        .unwrap()
}

async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Answer {
    request(addr, Method::POST, path, None, body, WAIT)
        .await
        .unwrap()
}

/// One sample line of the exposition: name, labels, value.
#[derive(Debug)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (what this exporter writes: no escapes in our label
/// values, no timestamps): the samples and the `# TYPE` of each family.
fn parse(text: &str) -> (Vec<Series>, HashMap<String, String>) {
    let mut series = Vec::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').unwrap();
            assert!(
                types.insert(n.to_owned(), t.to_owned()).is_none(),
                "family {n} declared twice"
            );
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').unwrap();
                let labels = l
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").unwrap();
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (n.to_owned(), labels)
            }
            None => (head.to_owned(), BTreeMap::new()),
        };
        series.push(Series {
            name,
            labels,
            value,
        });
    }
    (series, types)
}

/// The value of `name` with exactly the labels `labels` (others absent), if exported.
fn value(series: &[Series], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(t: &Translator) -> (Vec<Series>, HashMap<String, String>, String) {
    let a = get(admin(t), "/metrics").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.content_type.as_deref().unwrap().starts_with("text/plain"),
        "{:?}",
        a.content_type
    );
    let (s, t) = parse(&a.body);
    (s, t, a.body)
}

fn prefix(n: &str) -> ServicePrefix {
    ServicePrefix::exact(name::service_id_for_name(n).unwrap())
}

/// A router, a server translator in front of a legacy server, a client translator: all
/// with their admin API on. `listener` names the client's listener (the tests share the
/// process-wide histograms; a name per test keeps their series apart).
struct Topology {
    router: Translator,
    server: Translator,
    client: Translator,
    _legacy: tokio::task::JoinHandle<()>,
    _port: translator::demo::PortReservation,
}

impl Topology {
    async fn start(service: &str, listener: &str) -> Self {
        let router = start_admin(
            "serval: {bind: 127.0.0.1:0}\nrouter:\n  keys: [{id: 1, env: TEST_KEY}]\n  delay: [{prefix: \"0xfe:8\"}]\n",
        );
        let r = router.serval_addr();
        let (legacy, legacy_task) = legacy_server("legacy").await;
        let server = start_admin(&format!(
            "serval:\n  bind: 127.0.0.1:0\n  routers: [\"{r}\"]\n  key: {{id: 1, env: TEST_KEY}}\nserver:\n  services:\n    - name: {listener}-svc\n      prefix: \"name:{service}\"\n      backends: [{{address: \"{legacy}\"}}]\n"
        ));
        server.wait_registered(WAIT).await.unwrap();
        let port = reserve();
        let client = start_admin(&format!(
            "serval: {{bind: 127.0.0.1:0, routers: [\"{r}\"]}}\nclient:\n  connect_timeout: 5s\n  listeners:\n    - name: {listener}\n      listen: \"{}\"\n      service: \"name:{service}\"\n",
            port.addr()
        ));
        Self {
            router,
            server,
            client,
            _legacy: legacy_task,
            _port: port,
        }
    }

    fn listen(&self, listener: &str) -> SocketAddr {
        self.client
            .client()
            .unwrap()
            .listener_addr(listener)
            .unwrap()
    }

    /// Runs `n` hashed exchanges of `up` bytes up and `down` bytes down, each checked,
    /// and waits until both translators have counted them.
    async fn traffic(&self, listener: &str, n: u64, up: u64, down: u64) {
        let addr = self.listen(listener);
        let mut tasks = Vec::new();
        for _ in 0..n {
            tasks.push(tokio::spawn(exchange(addr, up, down)));
        }
        for t in tasks {
            let x = tokio::time::timeout(WAIT, t)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            x.assert_exact(down);
        }
        until("client relays counted", || {
            let s = self.client.client().unwrap().stats();
            s.outcomes.finished >= n && s.active == 0
        })
        .await;
        until("server flows counted", || {
            let s = self.server.server_stats();
            s.outcome_finished >= n && s.active == 0
        })
        .await;
    }
}

fn within_1_percent(got: f64, want: f64) -> bool {
    (got - want).abs() <= want * 0.01
}

/// Checks `role`'s relayed bytes against the payloads: within 1 %, as the protocol's
/// framing adds a few bytes each way.
fn assert_relay_bytes(series: &[Series], role: &str, up: u64, down: u64) {
    for (direction, want) in [("upstream", up), ("downstream", down)] {
        let got = value(
            series,
            "serval_relay_bytes_total",
            &[("role", role), ("direction", direction)],
        )
        .unwrap();
        assert!(
            within_1_percent(got, want as f64),
            "{role} {direction} {got}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_connections_exactly_and_bytes_within_one_percent() {
    const N: u64 = 5;
    const UP: u64 = 1 << 20;
    const DOWN: u64 = 3 << 19;
    let topo = Topology::start("metrics.test", "metrics-web").await;
    topo.traffic("metrics-web", N, UP, DOWN).await;

    let (client, client_types, client_text) = scrape(&topo.client).await;
    let c = |name, labels: &[(&str, &str)]| value(&client, name, labels);
    let role = ("role", "client");
    assert_eq!(c("serval_up", &[role]), Some(1.0), "{client_text}");
    assert_eq!(c("serval_ready", &[]), Some(1.0));
    assert_eq!(c("serval_draining", &[]), Some(0.0));
    assert_eq!(
        c("serval_connections_accepted_total", &[role]),
        Some(N as f64)
    );
    assert_eq!(
        c("serval_connections_relayed_total", &[role]),
        Some(N as f64)
    );
    assert_eq!(
        c(
            "serval_connections_closed_total",
            &[role, ("outcome", "finished")]
        ),
        Some(N as f64)
    );
    assert_eq!(c("serval_connections_active", &[role]), Some(0.0));
    // Upstream: the 8-byte length and the upload; downstream: the account line and the
    // download (the protocol of `common::exchange`).
    assert_relay_bytes(&client, "client", N * UP, N * DOWN);
    // Histograms: one observation per connection of this listener.
    let l = [role, ("name", "metrics-web")];
    assert_eq!(
        c("serval_relay_duration_seconds_count", &l),
        Some(N as f64),
        "{client_text}"
    );
    assert_eq!(
        c("serval_connect_duration_seconds_count", &l),
        Some(N as f64)
    );
    assert_eq!(
        c(
            "serval_connect_duration_seconds_bucket",
            &[role, ("name", "metrics-web"), ("le", "+Inf")]
        ),
        Some(N as f64)
    );
    // The client opened N flows to the router: its stack counted datagrams both ways.
    assert!(c("serval_stack_datagrams_total", &[("direction", "tx")]).unwrap() > 0.0);
    assert!(c("serval_stack_datagrams_total", &[("direction", "rx")]).unwrap() > 0.0);
    for (family, kind) in [
        ("serval_connections_accepted_total", "counter"),
        ("serval_connections_active", "gauge"),
        ("serval_relay_bytes_total", "counter"),
        ("serval_connect_duration_seconds", "histogram"),
        ("serval_relay_duration_seconds", "histogram"),
        ("serval_stack_drops_total", "counter"),
        ("serval_stack_flows", "gauge"),
        ("serval_flow_srtt_seconds", "gauge"),
    ] {
        assert_eq!(
            client_types.get(family).map(String::as_str),
            Some(kind),
            "# TYPE of {family}"
        );
    }

    let (server, _, server_text) = scrape(&topo.server).await;
    let s = |name, labels: &[(&str, &str)]| value(&server, name, labels);
    let role = ("role", "server");
    assert_eq!(
        s("serval_connections_accepted_total", &[role]),
        Some(N as f64),
        "{server_text}"
    );
    assert_eq!(
        s(
            "serval_connections_closed_total",
            &[role, ("outcome", "finished")]
        ),
        Some(N as f64)
    );
    assert_eq!(s("serval_client_preambles_total", &[]), Some(N as f64));
    assert_eq!(
        s("serval_backend_connect_attempts_total", &[]),
        Some(N as f64)
    );
    assert_relay_bytes(&server, "server", N * UP, N * DOWN);
    assert_eq!(
        s(
            "serval_relay_duration_seconds_count",
            &[role, ("name", "metrics-web-svc")]
        ),
        Some(N as f64)
    );
    // The server role is on and registered, the client and router roles are not here.
    assert_eq!(s("serval_up", &[role]), Some(1.0));
    assert_eq!(s("serval_up", &[("role", "client")]), None);

    let (router, _, router_text) = scrape(&topo.router).await;
    let r = |name, labels: &[(&str, &str)]| value(&router, name, labels);
    assert_eq!(r("serval_up", &[("role", "router")]), Some(1.0));
    assert_eq!(r("serval_router_leases", &[]), Some(1.0), "{router_text}");
    assert!(
        r(
            "serval_router_registrations_total",
            &[("result", "accepted")]
        )
        .unwrap()
            >= 1.0
    );
    // Every client connection's SYN went through the router, to the server's prefix.
    // (A SYN the network made the client repeat would count again: at least N.)
    let forwarded = r(
        "serval_router_syns_forwarded_total",
        &[("service", &prefix("metrics.test").to_string())],
    );
    assert!(forwarded.is_some_and(|n| n >= N as f64), "{router_text}");
    assert_eq!(r("serval_router_delay_queue_length", &[]), Some(0.0));
    assert_eq!(r("serval_router_static_rules", &[]), Some(1.0));
    // No metric names an address.
    for text in [&client_text, &server_text, &router_text] {
        assert!(
            !text.contains("127.0.0.1"),
            "an address in a label:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_a_metric_the_translators_export() {
    let topo = Topology::start("dashboard.test", "dash-web").await;
    topo.traffic("dash-web", 1, 1000, 1000).await;
    // Families exported by any of the three (each runs other roles).
    let mut exported: HashSet<String> = HashSet::new();
    for t in [&topo.router, &topo.server, &topo.client] {
        let (_, types, _) = scrape(t).await;
        exported.extend(types.into_keys());
    }
    let catalogue: HashMap<&str, Kind> = CATALOGUE.iter().map(|d| (d.name, d.kind)).collect();
    for name in &exported {
        assert!(
            catalogue.contains_key(name.as_str()),
            "{name} is exported but not in the catalogue (docs/METRICS.md)"
        );
    }

    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../helm/serval-translator/dashboards/serval-translator.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "only {} queries", exprs.len());
    let mut used = HashSet::new();
    // Histograms this topology has no event for: no TLS here, no flow wrapped by the roles
    // in this build. They must be in the catalogue; everything else must be scraped.
    let not_observed_here = [
        "serval_tls_handshake_duration_seconds",
        "serval_flow_rtt_seconds",
        "serval_config_reloads_total",
        "serval_dns_answers_total",
        "serval_dns_queries_total",
    ];
    for expr in &exprs {
        for name in metric_names(expr) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|b| catalogue.get(b) == Some(&Kind::Histogram))
                })
                .unwrap_or(&name)
                .to_owned();
            assert!(
                catalogue.contains_key(base.as_str()),
                "panel query uses {name}, which the translator does not define: {expr}"
            );
            assert!(
                exported.contains(&base) || not_observed_here.contains(&base.as_str()),
                "panel query uses {name}, not in any scrape: {expr}"
            );
            used.insert(base);
        }
    }
    // The panels the dashboard promises.
    for needed in [
        "serval_relay_bytes_total",
        "serval_connections_accepted_total",
        "serval_connections_active",
        "serval_connections_closed_total",
        "serval_connect_duration_seconds",
        "serval_tls_handshake_duration_seconds",
        "serval_relay_duration_seconds",
        "serval_flow_srtt_seconds",
        "serval_stack_drops_total",
        "serval_stack_migrations_total",
        "serval_flow_path_validations_total",
        "serval_router_syns_forwarded_total",
        "serval_router_registrations_total",
        "serval_router_delay_queue_length",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
    // Template variables and the datasource variable.
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for v in ["datasource", "job", "instance", "role"] {
        assert!(vars.contains(&v), "no ${v} variable");
    }
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "expr" {
                    out.push(x.as_str().unwrap().to_owned());
                } else {
                    collect_exprs(x, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// The metric names in a PromQL expression: identifiers outside label matchers, quoted
/// strings, ranges and `by (...)` lists that are not functions or keywords.
fn metric_names(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut names = Vec::new();
    let (mut i, mut depth_brace, mut in_str) = (0, 0, false);
    let mut after_grouping = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' => depth_brace += 1,
            b'}' => depth_brace -= 1,
            b'[' => {
                while i < b.len() && b[i] != b']' {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let rest = expr[i..].trim_start();
                let grouping = matches!(
                    word,
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
                if grouping {
                    after_grouping = true;
                } else if depth_brace == 0
                    && !after_grouping
                    // A function call, or an aggregation with its grouping first
                    // (`sum by (x) (...)`).
                    && !rest.starts_with('(')
                    && !rest.starts_with("by")
                    && !rest.starts_with("without")
                {
                    names.push(word.to_owned());
                }
                continue;
            }
            b')' => after_grouping = false,
            _ => {}
        }
        i += 1;
    }
    names
}

#[test]
fn promql_names_are_extracted_without_functions_or_labels() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le, role) (rate(serval_x_bucket{job=~\"$job\",a=\"b(c)\"}[$__rate_interval])))"
        ),
        vec!["serval_x_bucket"]
    );
    assert_eq!(
        metric_names(
            "sum without (a) (rate(a_total[5m])) / clamp_min(sum(rate(b_total{x=\"y\"}[5m])), 1)"
        ),
        vec!["a_total", "b_total"]
    );
}

/// A policy file in a fresh temporary folder (removed when dropped).
struct PolicyFile {
    dir: PathBuf,
    path: PathBuf,
}

impl PolicyFile {
    fn new(tag: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("serval-admin-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.yaml");
        std::fs::write(&path, text).unwrap();
        Self { dir, path }
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_policy(router: SocketAddr, port: SocketAddr, buffer: &str) -> String {
    format!(
        "serval:\n  bind: 127.0.0.1:0\n  routers: [\"{router}\"]\n  key: {{id: 1, env: TEST_KEY}}\nrelay:\n  buffer_size: {buffer}\nclient:\n  listeners:\n    - {{name: api-web, listen: \"{port}\", service: \"name:api.test\"}}\nadmin:\n  listen: \"127.0.0.1:0\"\n  token: {{file: token}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_config_reload_and_hostile_requests() {
    let router =
        start_admin("serval: {bind: 127.0.0.1:0}\nrouter: {keys: [{id: 1, env: TEST_KEY}]}\n");
    let port = reserve();
    const TOKEN: &str = "s3cret-admin-token-0123456789";
    let file = PolicyFile::new(
        "reload",
        &client_policy(router.serval_addr(), port.addr(), "64KiB"),
    );
    std::fs::write(file.dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let env = env();
    let (loaded, secrets) = config::load_file(&file.path, &env).unwrap();
    let mut t = Translator::start(loaded, secrets).unwrap();
    let a = admin(&t);

    // Alive and ready (a client role has nothing to register).
    let h = get(a, "/healthz").await;
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    let r = get(a, "/readyz").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The effective policy names key and token sources, never their contents.
    let c = get(a, "/config").await;
    assert_eq!(c.status, 200);
    assert!(
        c.body.contains("TEST_KEY") && c.body.contains("buffer_size"),
        "{}",
        c.body
    );
    assert!(
        !c.body.contains(KEY_HEX) && !c.body.contains(TOKEN),
        "{}",
        c.body
    );
    let j = get(a, "/config?format=json").await;
    let v: serde_json::Value = serde_json::from_str(&j.body).unwrap();
    assert_eq!(v["client"]["listeners"][0]["name"], "api-web");
    assert!(!j.body.contains(KEY_HEX) && !j.body.contains(TOKEN));

    // /services and /flows answer JSON.
    let s: serde_json::Value = serde_json::from_str(&get(a, "/services").await.body).unwrap();
    assert_eq!(s["client"]["listeners"][0]["name"], "api-web");
    assert_eq!(s["client"]["counters"]["accepted"], 0);
    let f: serde_json::Value = serde_json::from_str(&get(a, "/flows?limit=10").await.body).unwrap();
    assert_eq!(
        (f["total"].as_u64(), f["active"].as_u64()),
        (Some(0), Some(0))
    );
    for bad in ["/flows?limit=0", "/flows?limit=1001", "/flows?after=x"] {
        assert_eq!(get(a, bad).await.status, 400, "{bad}");
    }

    // A reload with an invalid policy: 400 naming the field and its line; the old policy
    // stays. Reloads are served by the translator's owner (`serve`, as `run` does).
    let answer = reload(
        &mut t,
        &file.path,
        &env,
        client_policy(router.serval_addr(), port.addr(), "1KiB"),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    let v: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    let p = &v["problems"][0];
    assert_eq!(p["field"], "relay.buffer_size", "{v}");
    assert_eq!(p["line"], 6, "{v}");
    assert!(p["file"].as_str().unwrap().ends_with("policy.yaml"), "{v}");
    assert!(get(a, "/config").await.body.contains("buffer_size: 64KiB"));

    // A valid one is applied: 200 with what changed.
    let answer = reload(
        &mut t,
        &file.path,
        &env,
        client_policy(router.serval_addr(), port.addr(), "128KiB"),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(get(a, "/config").await.body.contains("buffer_size: 128KiB"));

    // Hostile and wrong requests.
    assert_eq!(get(a, "/nope").await.status, 404);
    assert_eq!(get(a, "/delay/").await.status, 404);
    let wrong = get(a, "/drain").await;
    assert_eq!(wrong.status, 405);
    let wrong = post(a, "/metrics", b"").await;
    assert_eq!(wrong.status, 405);
    let big = vec![b'x'; translator::admin::MAX_BODY + 1];
    assert_eq!(post(a, "/reload", &big).await.status, 413);
    assert_eq!(
        post(a, "/flows/1/move", b"{\"local\":\"127.0.0.2\"}")
            .await
            .status,
        404
    );
    assert_eq!(post(a, "/flows/x/move", b"{}").await.status, 400);
    assert_eq!(
        post(a, "/delay/0x01:8?verdict=release", b"").await.status,
        404,
        "no router role here"
    );
    for garbage in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
        b"POST /reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        raw(a, garbage).await;
    }
    let mut huge_head = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
    huge_head.extend(std::iter::repeat_n(b'a', 64 << 10));
    huge_head.extend(b"\r\n\r\n");
    raw(a, &huge_head).await;
    assert_eq!(get(a, "/healthz").await.status, 200, "still serving");

    // Drain: /readyz turns 503 at once, the request reaches the owner, drains are idempotent.
    let d = post(a, "/drain", b"").await;
    assert_eq!(d.status, 202, "{}", d.body);
    let r = get(a, "/readyz").await;
    assert_eq!(r.status, 503);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["reason"], "draining");
    assert_eq!(post(a, "/drain", b"").await.status, 202);
    tokio::time::timeout(WAIT, t.serve(&file.path, &env))
        .await
        .expect("the drain request reached the owner")
        .unwrap();
    let (series, _, _) = scrape(&t).await;
    assert_eq!(value(&series, "serval_draining", &[]), Some(1.0));
    assert_eq!(value(&series, "serval_ready", &[]), Some(0.0));
    assert!(t.drain().await.clean);
    // Stopped with the translator.
    wait_closed(a).await;
}

/// Writes `text` to `t`'s policy file at `path` and posts `/reload`, serving `t` meanwhile:
/// its owner applies reloads (as `run` does), so nothing would answer otherwise.
async fn reload(
    t: &mut Translator,
    path: &Path,
    env: &HashMap<String, String>,
    text: String,
) -> Answer {
    std::fs::write(path, text).unwrap();
    let a = admin(t);
    tokio::select! {
        r = t.serve(path, env) => panic!("serve ended: {r:?}"),
        answer = post(a, "/reload", b"") => answer,
    }
}

/// Writes `bytes` on a fresh connection and reads whatever comes back until the server
/// closes (bounded): the server must answer or close, never hang or crash.
async fn raw(addr: SocketAddr, bytes: &[u8]) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let r = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    assert!(
        r.is_ok(),
        "no answer and no close for {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
    );
    let head = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || head.starts_with("HTTP/1.1 4"), "{head}");
}

/// An address of this host that is not loopback, if any (the source address of a route
/// to a documentation address; nothing is sent).
fn own_non_loopback_ip() -> Option<core::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_from_other_hosts_need_the_token() {
    let Some(ip) = own_non_loopback_ip() else {
        eprintln!("no non-loopback address on this host: covered by admin::auth's unit tests");
        return;
    };
    const TOKEN: &str = "another-admin-token-42-abcdefgh";
    let file = PolicyFile::new(
        "token",
        &format!(
            "serval: {{bind: 127.0.0.1:0}}\nrouter: {{keys: [{{id: 1, env: TEST_KEY}}], delay: [{{prefix: \"0xfe:8\"}}]}}\nadmin:\n  listen: \"{}\"\n  token: {{env: ADMIN_TEST_TOKEN}}\n",
            SocketAddr::new(ip, 0)
        ),
    );
    let mut env = env();
    env.insert("ADMIN_TEST_TOKEN".to_owned(), TOKEN.to_owned());
    let (loaded, secrets) = config::load_file(&file.path, &env).unwrap();
    let t = Translator::start(loaded, secrets).unwrap();
    let a = admin(&t);
    // Reads are open; changes need the token.
    assert_eq!(get(a, "/healthz").await.status, 200);
    let path = "/delay/0xfe:8?verdict=drop";
    let no = post(a, path, b"").await;
    assert_eq!(no.status, 401, "{}", no.body);
    let wrong = request(
        a,
        Method::POST,
        path,
        Some("not-the-token-at-all-xx"),
        b"",
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 401);
    let ok = request(a, Method::POST, path, Some(TOKEN), b"", WAIT)
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    let v: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(
        (v["verdict"].as_str(), v["syns"].as_u64()),
        (Some("drop"), Some(0))
    );
    assert_eq!(
        request(a, Method::POST, "/delay/zzz", Some(TOKEN), b"", WAIT)
            .await
            .unwrap()
            .status,
        400
    );
    drop(t);

    // Without a token configured, other hosts may not change anything at all.
    let file = PolicyFile::new(
        "notoken",
        &format!(
            "serval: {{bind: 127.0.0.1:0}}\nrouter: {{keys: [{{id: 1, env: TEST_KEY}}]}}\nadmin: {{listen: \"{}\"}}\n",
            SocketAddr::new(ip, 0)
        ),
    );
    let (loaded, secrets) = config::load_file(&file.path, &common::env()).unwrap();
    let t = Translator::start(loaded, secrets).unwrap();
    let refused = request(admin(&t), Method::POST, "/drain", Some(TOKEN), b"", WAIT)
        .await
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(get(admin(&t), "/readyz").await.status, 200, "not draining");
}

#[test]
fn the_drain_command_drains_a_running_translator_and_waits_for_it() {
    use std::process::{Command, Stdio};
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let file = PolicyFile::new(
        "cli",
        &format!(
            "serval: {{bind: 127.0.0.1:0}}\nrouter: {{routes: [{{prefix: default, forward: \"127.0.0.1:9\"}}]}}\nadmin: {{listen: \"{admin_port}\"}}\ndrain: {{grace_period: 10s}}\n"
        ),
    );
    let bin = env!("CARGO_BIN_EXE_serval-translator");
    let clean = |c: &mut Command| {
        for (k, _) in std::env::vars() {
            if k.starts_with("SERVAL_") {
                c.env_remove(k);
            }
        }
    };
    let mut run = Command::new(bin);
    clean(&mut run);
    let mut child = run
        .args(["run", "--config"])
        .arg(&file.path)
        .env("SERVAL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Up when /healthz answers (bounded poll).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tokio::time::timeout(WAIT, async {
            loop {
                tick.tick().await;
                if let Ok(a) = request(admin_port, Method::GET, "/healthz", None, b"", WAIT).await
                    && a.status == 200
                {
                    break;
                }
            }
        })
        .await
        .expect("the translator came up");
    });
    let mut drain = Command::new(bin);
    clean(&mut drain);
    let out = drain
        .args(["drain", "--admin"])
        .arg(admin_port.to_string())
        .args(["--wait", "--timeout", "60s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("drained"));
    // The translator exits 0 by itself (bounded wait).
    let status = rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tokio::time::timeout(WAIT, async {
            loop {
                tick.tick().await;
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
            }
        })
        .await
        .expect("still running after the drain")
    });
    assert!(status.success(), "{status:?}");
}
