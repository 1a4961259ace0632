//! End to end on real sockets: `serval-node` processes (router, servers, clients) in network
//! namespaces this test makes, linked by veth pairs, a bridge and nftables.
//!
//! ```text
//!  client ns                 gw ns                          core ns (bridge br0)
//!  10.1.0.2 ── veth A ── 10.1.0.1                                 ├── router ns 10.2.0.2 (router :7000)
//! [10.3.0.2 ── veth B ── 10.3.0.1]  forwarding     10.2.0.1 ──────┤
//!                                   [masquerade,                  └── server ns 10.2.0.3 (sink :7001,
//!                                    NAT filtering]                                      source :7002)
//! ```
//!
//! The gw is a NAT (nftables masquerade of 10.1.0.0/16, inbound only for tracked
//! connections) or a plain router; the uplink is shaped with a token bucket where a test acts
//! mid-transfer, so a transfer lasts a few seconds whatever the machine's speed. Servers
//! register their prefixes with the router (authenticated), clients resolve through it.
//!
//! Needs root (skipped with a loud message otherwise), `ip`, `tc`, `nft` and `conntrack`.
//! Nothing waits on time: every step waits for a process's output line (`READY`,
//! `PROGRESS`, `RESULT`, ...) with a bound, every transfer is checked by SHA-256 at both
//! ends and against the expected pattern, and namespaces and processes are removed on every
//! path (drop guards).

use std::collections::BTreeMap;
use std::time::Duration;

use serval_tests::netns::{
    Netns, Process, bridge, pattern_sha256, rate_limit, require_root, segment_on_egress, veth,
    veth_to_bridge,
};

/// Registration key (hex) shared by the router and the servers.
const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// Bound of every wait (a hang guard, not a timing assertion).
const WAIT: Duration = Duration::from_secs(120);
const MTU: u32 = 1500;
const MIB: u64 = 1 << 20;

const ROUTER: &str = "10.2.0.2:7000";
const SINK: &str = "10.2.0.3:7001";
const SOURCE: &str = "10.2.0.3:7002";
/// The NAT's outer address.
const GW_OUTER: &str = "10.2.0.1";
/// Sink prefix and a ServiceID under it.
const SINK_PREFIX: &str = "0x06:8";
const SINK_ID: &str = "0x06000001";
const SOURCE_PREFIX: &str = "0x07:8";
const SOURCE_ID: &str = "0x07000001";
/// Seed of the servers' pattern (what the source sends).
const SERVER_SEED: u64 = 7;

/// The namespaces and links of one test (dropped last: declare processes after it).
struct Topology {
    client: Netns,
    gw: Netns,
    server: Netns,
    router: Netns,
    _core: Netns,
    /// The gw's uplink to the bridge.
    gw_outer: String,
    /// The client's links (A, then B if asked for).
    client_links: Vec<String>,
    /// The server's link to the bridge.
    server_link: String,
}

impl Topology {
    /// Builds the namespaces; `nat` makes the gw a masquerading NAT, `two_links` gives the
    /// client a second link (10.3.0.2) to move to.
    fn build(nat: bool, two_links: bool) -> Self {
        let core = Netns::new("core").expect("core netns");
        let router = Netns::new("rtr").expect("router netns");
        let server = Netns::new("srv").expect("server netns");
        let gw = Netns::new("gw").expect("gw netns");
        let client = Netns::new("cli").expect("client netns");
        bridge(&core, "br0", None).expect("bridge");
        let gw_outer = veth_to_bridge(&gw, "10.2.0.1/24", &core, "br0", MTU).expect("gw uplink");
        veth_to_bridge(&router, "10.2.0.2/24", &core, "br0", MTU).expect("router link");
        let server_link =
            veth_to_bridge(&server, "10.2.0.3/24", &core, "br0", MTU).expect("server link");
        for ns in [&router, &server] {
            // The client's own addresses are reachable only without NAT (and then only
            // through the gw).
            ns.route("10.0.0.0/8", GW_OUTER)
                .expect("route to the client side");
        }
        // Link A (10.1.0.0/24), preferred, and link B (10.3.0.0/24).
        let links = [("A", 1, "100"), ("B", 3, "200")];
        let (gw_inner, client_links): (Vec<_>, Vec<_>) = links
            .iter()
            .take(1 + usize::from(two_links))
            .map(|&(name, subnet, metric)| client_link(&gw, &client, name, subnet, metric))
            .unzip();
        gw.enable_forwarding().expect("forwarding");
        if nat {
            let inner = gw_inner
                .iter()
                .map(|d| format!("\"{d}\""))
                .collect::<Vec<_>>()
                .join(", ");
            gw.nft(&format!(
                "table ip nat {{
                   chain post {{
                     type nat hook postrouting priority srcnat; policy accept;
                     ip saddr 10.1.0.0/16 oifname \"{gw_outer}\" masquerade
                   }}
                 }}
                 table inet filter {{
                   chain forwarding {{
                     type filter hook forward priority filter; policy drop;
                     ct state established,related accept
                     iifname {{ {inner} }} accept
                   }}
                 }}"
            ))
            .expect("NAT rules");
        }
        Self {
            client,
            gw,
            server,
            router,
            _core: core,
            gw_outer,
            client_links,
            server_link,
        }
    }

    /// The topology of `test`, or `None` (after a loud skip) when not root.
    fn for_test(test: &str, nat: bool, two_links: bool) -> Option<Self> {
        require_root(test).then(|| Self::build(nat, two_links))
    }

    /// Shapes the gw's uplink to 100 Mbit/s: a [`MID_LEN`] upload then takes about 3 s and an
    /// action on it milliseconds, so the action lands mid-transfer.
    fn shape_uplink(&self) {
        rate_limit(&self.gw, &self.gw_outer, "100mbit").expect("shape the uplink");
    }

    /// Takes the client's link A (10.1.0.2) down.
    fn link_a_down(&self) {
        self.client
            .exec(&["ip", "link", "set", "dev", &self.client_links[0], "down"])
            .expect("link A down");
    }
}

/// The client's link `name`: a veth pair from the gw (10.N.0.1, N = `subnet`) to the client
/// (10.N.0.2) and a default route over it at `metric`. Returns (gw's, client's) interfaces.
fn client_link(
    gw: &Netns,
    client: &Netns,
    name: &str,
    subnet: u8,
    metric: &str,
) -> (String, String) {
    let via = format!("10.{subnet}.0.1");
    let pair = veth(
        gw,
        &format!("{via}/24"),
        client,
        &format!("10.{subnet}.0.2/24"),
        MTU,
    )
    .unwrap_or_else(|e| panic!("link {name}: {e}"));
    client
        .exec(&[
            "ip", "route", "add", "default", "via", &via, "metric", metric,
        ])
        .unwrap_or_else(|e| panic!("default route {name}: {e}"));
    pair
}

/// Starts `serval-node` in `ns` with `args`.
fn node(ns: &Netns, name: &str, args: &[&str]) -> Process {
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_serval-node"));
    cmd.args(args);
    Process::spawn(name, cmd).expect("spawn serval-node")
}

/// The router, waited for until ready.
fn start_router(t: &Topology) -> Process {
    let mut p = node(
        &t.router,
        "router",
        &["router", "--bind", ROUTER, "--key", KEY],
    );
    p.wait_for("READY", WAIT).expect("router ready");
    p
}

/// A server registered with the router, waited for until ready.
fn start_server(t: &Topology, name: &str, bind: &str, prefix: &str, mode: &str) -> Process {
    let seed = SERVER_SEED.to_string();
    let mut p = node(
        &t.server,
        name,
        &[
            "server",
            "--bind",
            bind,
            "--service",
            prefix,
            "--router",
            ROUTER,
            "--key",
            KEY,
            "--mode",
            mode,
            "--seed",
            &seed,
        ],
    );
    p.wait_for("READY", WAIT).expect("server registered");
    p
}

/// The sink server (reads and hashes what clients send).
fn start_sink(t: &Topology) -> Process {
    start_server(t, "sink", SINK, SINK_PREFIX, "sink")
}

/// The source server, sending `len` bytes of the pattern of [`SERVER_SEED`] to each client.
fn start_source(t: &Topology, len: u64) -> Process {
    start_server(t, "source", SOURCE, SOURCE_PREFIX, &format!("source:{len}"))
}

/// A client through the router, `extra` its transfer arguments; waited for until bound.
fn start_client(t: &Topology, name: &str, bind: &str, service: &str, extra: &[&str]) -> Process {
    let mut args = vec![
        "client",
        "--bind",
        bind,
        "--service",
        service,
        "--router",
        ROUTER,
    ];
    args.extend_from_slice(extra);
    let mut p = node(&t.client, name, &args);
    p.wait_for("READY", WAIT).expect("client bound");
    p
}

/// A client sending `len` bytes of the pattern of `seed` to the sink; `extra` arguments
/// come before the transfer's.
fn start_sender(
    t: &Topology,
    name: &str,
    bind: &str,
    seed: u64,
    len: u64,
    extra: &[&str],
) -> Process {
    let (len, seed) = (len.to_string(), seed.to_string());
    let mut args = extra.to_vec();
    args.extend(["--send", &len, "--seed", &seed]);
    start_client(t, name, bind, SINK_ID, &args)
}

/// A `RESULT` line's fields, by key.
type Fields = BTreeMap<String, String>;

/// The `key=value` fields of a result line.
fn fields(line: &str) -> Fields {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `RESULT` fields of `p` (waited for).
fn result(p: &mut Process) -> Fields {
    fields(&p.wait_for("RESULT", WAIT).expect("a RESULT line"))
}

/// A numeric field.
fn num(f: &Fields, key: &str) -> u64 {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric `{key}` in {f:?}"))
}

/// Waits for the client's exit and asserts success.
fn exits_ok(p: &mut Process) {
    let status = p.wait_exit(WAIT).expect("client exits");
    assert!(
        status.success(),
        "{} failed ({status}): {:?}\n{}",
        p.name(),
        p.lines(),
        p.stderr_text()
    );
}

/// Waits until the client has moved at least `bytes` (its `PROGRESS` lines).
fn wait_progress(p: &mut Process, bytes: u64) {
    p.wait_until(&format!("PROGRESS bytes>={bytes}"), WAIT, |l| {
        l.strip_prefix("PROGRESS bytes=")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= bytes)
    })
    .expect("transfer progress");
}

/// Asserts the client has not finished yet (an action meant for mid-transfer was one).
fn still_running(p: &mut Process, action: &str) {
    p.drain();
    assert!(
        !p.has_line("RESULT") && !p.has_line("ERROR"),
        "{}: the transfer ended before {action}; make it longer: {:?}",
        p.name(),
        p.lines()
    );
}

/// Asserts both ends saw the same bytes, and that they are the pattern expected.
fn same_bytes(client: &Fields, server: &Fields, seed: u64, len: u64) {
    assert_eq!(num(client, "bytes"), len, "client {client:?}");
    assert_eq!(num(server, "bytes"), len, "server {server:?}");
    assert_eq!(
        client["sha256"], server["sha256"],
        "SHA-256 differs between the ends"
    );
    assert_eq!(
        client["sha256"],
        pattern_sha256(seed, len),
        "not the pattern sent"
    );
}

/// Waits for both ends' `RESULT` and checks their bytes ([`same_bytes`]); returns the
/// (client, server) fields for the test's own checks.
fn check_transfer(
    client: &mut Process,
    server: &mut Process,
    seed: u64,
    len: u64,
) -> (Fields, Fields) {
    let (c, s) = (result(client), result(server));
    same_bytes(&c, &s, seed, len);
    (c, s)
}

/// Asserts the client announced a move and the server validated the new path.
fn assert_migrated(client: &Fields, server: &Fields) {
    assert!(num(client, "migrations") >= 1, "client {client:?}");
    assert!(num(server, "validations") >= 1, "server {server:?}");
}

/// An upload to the sink and a download from the source at once, by two clients behind the
/// gw, through the router. (Fields in drop order: clients first.)
struct BothWays {
    down: Process,
    up: Process,
    source: Process,
    sink: Process,
    _router: Process,
    up_seed: u64,
    up_len: u64,
    down_len: u64,
}

impl BothWays {
    /// Starts the router, both servers and both clients, each waited for until ready.
    fn start(t: &Topology, up_seed: u64, up_len: u64, down_len: u64) -> Self {
        let _router = start_router(t);
        let sink = start_sink(t);
        let source = start_source(t, down_len);
        let up = start_sender(t, "client-up", "10.1.0.2:40001", up_seed, up_len, &[]);
        let down = start_client(t, "client-down", "10.1.0.2:40002", SOURCE_ID, &["--recv"]);
        Self {
            down,
            up,
            source,
            sink,
            _router,
            up_seed,
            up_len,
            down_len,
        }
    }

    /// Checks both transfers end to end, then both clients' exits.
    fn check(&mut self) {
        check_transfer(&mut self.up, &mut self.sink, self.up_seed, self.up_len);
        check_transfer(&mut self.down, &mut self.source, SERVER_SEED, self.down_len);
        exits_ok(&mut self.up);
        exits_ok(&mut self.down);
    }
}

/// Bytes of an upload a test acts on mid-way.
const MID_LEN: u64 = 32 * MIB;

/// A [`MID_LEN`] upload from one client to the sink over the shaped uplink, 4 MiB in: where
/// a test acts (a move, a NAT flush). (Fields in drop order: the client first.)
struct MidTransfer {
    client: Process,
    sink: Process,
    _router: Process,
    /// The client's address as the sink saw it (its `ACCEPTED` line).
    accepted: String,
    seed: u64,
}

impl MidTransfer {
    /// Shapes the uplink, starts the router, the sink and a client at `bind` (`extra`
    /// arguments first), and waits until the transfer is under way.
    fn start(t: &Topology, bind: &str, seed: u64, extra: &[&str]) -> Self {
        t.shape_uplink();
        let _router = start_router(t);
        let mut sink = start_sink(t);
        let mut client = start_sender(t, "client", bind, seed, MID_LEN, extra);
        let connected = client
            .wait_for("CONNECTED", WAIT)
            .expect("client connected");
        assert_eq!(connected, SINK);
        let accepted = sink.wait_for("ACCEPTED", WAIT).expect("sink accepted");
        wait_progress(&mut client, 4 * MIB);
        Self {
            client,
            sink,
            _router,
            accepted,
            seed,
        }
    }

    /// After the test's `action`: asserts it came mid-transfer and every byte arrived;
    /// returns the (client, sink) `RESULT` fields.
    fn check(&mut self, action: &str) -> (Fields, Fields) {
        still_running(&mut self.client, action);
        check_transfer(&mut self.client, &mut self.sink, self.seed, MID_LEN)
    }
}

/// The UDP conntrack entries of the gw towards `server_addr`, as (original source port,
/// reply destination port = the NAT's outer port).
fn nat_mappings(gw: &Netns, server_addr: &str) -> Vec<(u16, u16)> {
    let (ip, port) = server_addr.split_once(':').expect("ip:port");
    let out = gw
        .exec(&["conntrack", "-L", "-p", "udp", "--orig-dst", ip])
        .expect("conntrack -L");
    out.lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let all = |k: &'static str| -> Vec<u16> {
                words
                    .iter()
                    .filter_map(|w| w.strip_prefix(k))
                    .filter_map(|v| v.parse().ok())
                    .collect()
            };
            // Original tuple first, reply tuple second.
            let (sports, dports) = (all("sport="), all("dport="));
            (dports.first()?.to_string() == port).then_some((*sports.first()?, *dports.get(1)?))
        })
        .collect()
}

#[test]
fn client_behind_nat_reaches_servers_through_router() {
    let Some(t) = Topology::for_test(
        "client_behind_nat_reaches_servers_through_router",
        true,
        false,
    ) else {
        return;
    };
    let mut b = BothWays::start(&t, 3, 32 * MIB, 16 * MIB);

    // The router resolved the ServiceIDs; the data then went straight to the servers.
    assert_eq!(b.up.wait_for("CONNECTED", WAIT).unwrap(), SINK);
    assert_eq!(b.down.wait_for("CONNECTED", WAIT).unwrap(), SOURCE);
    // The servers saw the NAT's outer address, not the client's.
    for s in [&mut b.sink, &mut b.source] {
        let peer = s.wait_for("ACCEPTED", WAIT).unwrap();
        assert!(peer.starts_with(&format!("{GW_OUTER}:")), "peer {peer}");
    }

    b.check();
}

#[test]
fn client_address_moves_mid_transfer() {
    let Some(t) = Topology::for_test("client_address_moves_mid_transfer", false, true) else {
        return;
    };
    let mut m = MidTransfer::start(&t, "10.1.0.2:40000", 5, &[]);
    assert_eq!(m.accepted, "10.1.0.2:40000");

    // Make before break: a socket on the new address, then the old link goes away.
    m.client.send("rebind 10.3.0.2:40000").unwrap();
    assert_eq!(
        m.client.wait_for("REBOUND", WAIT).unwrap(),
        "10.3.0.2:40000"
    );
    t.link_a_down();

    let (c, s) = m.check("the move");
    // The client announced the move and the server validated the new path (the only one
    // left: link A is down).
    assert_migrated(&c, &s);
    exits_ok(&mut m.client);
}

#[test]
fn client_address_changes_under_a_wildcard_socket() {
    let Some(t) = Topology::for_test(
        "client_address_changes_under_a_wildcard_socket",
        false,
        true,
    ) else {
        return;
    };
    // One socket on 0.0.0.0: the kernel picks the source address by route.
    let mut m = MidTransfer::start(&t, "0.0.0.0:40000", 4, &["--advertise", "10.1.0.2"]);
    assert_eq!(m.accepted, "10.1.0.2:40000");

    // Link A goes away (the route via link B takes over, source 10.3.0.2), then the
    // application learns its new address and announces it.
    t.link_a_down();
    m.client.send("migrate 10.3.0.2:40000").unwrap();
    assert_eq!(
        m.client.wait_for("MIGRATED", WAIT).unwrap(),
        "10.3.0.2:40000"
    );

    let (c, s) = m.check("the address change");
    assert_migrated(&c, &s);
    exits_ok(&mut m.client);
}

#[test]
fn nat_mapping_flushed_mid_transfer() {
    let Some(t) = Topology::for_test("nat_mapping_flushed_mid_transfer", true, false) else {
        return;
    };
    let mut m = MidTransfer::start(&t, "10.1.0.2:40000", 6, &[]);

    let mapped = nat_mappings(&t.gw, SINK);
    assert_eq!(
        mapped.iter().map(|m| m.0).collect::<Vec<_>>(),
        [40000],
        "one mapping of the client's socket: {mapped:?}"
    );
    assert_eq!(m.accepted, format!("{GW_OUTER}:{}", mapped[0].1));
    assert!(!(20000..=20100).contains(&mapped[0].1));
    // New mappings from another port range, then forget every existing one: the next
    // packet of the flow leaves from a new outer port.
    t.gw.nft(&format!(
        "flush chain ip nat post
         add rule ip nat post ip saddr 10.1.0.0/16 oifname \"{}\" meta l4proto udp masquerade to :20000-20100",
        t.gw_outer
    ))
    .expect("new masquerade range");
    t.gw.exec(&["conntrack", "-F"]).expect("conntrack flush");

    let (_, s) = m.check("the NAT flush");
    // The server saw the flow come from a new address and validated it.
    assert!(num(&s, "validations") >= 1, "server {s:?}");
    let after = nat_mappings(&t.gw, SINK);
    assert!(
        after
            .iter()
            .any(|&(sport, outer)| sport == 40000 && (20000..=20100).contains(&outer)),
        "the mapping moved into the new range: {after:?}"
    );
    exits_ok(&mut m.client);
}

#[test]
fn five_percent_random_loss_on_a_link() {
    let Some(t) = Topology::for_test("five_percent_random_loss_on_a_link", true, false) else {
        return;
    };
    // Datagrams cross the lossy hop one by one, not in the senders' GSO batches.
    segment_on_egress(&t.client, &t.client_links[0]).expect("client: no GSO batches");
    segment_on_egress(&t.server, &t.server_link).expect("server: no GSO batches");
    // Everything the gw forwards, both directions, before the NAT's own filter: one
    // counter of all, one of the dropped.
    t.gw.nft(
        "table inet loss {
           chain forwarding {
             type filter hook forward priority filter - 10; policy accept;
             counter
             numgen random mod 100 < 5 counter drop
           }
         }",
    )
    .expect("loss rule");
    // Goodput here is bound by the stack's fixed timers (minimum RTO, ACK delay), not the
    // sub-millisecond RTT: about 0.5-1.5 MB/s. 8 MiB each way keep the test near 15 s.
    let mut b = BothWays::start(&t, 8, 8 * MIB, 8 * MIB);

    b.check();
    let rules =
        t.gw.exec(&["nft", "list", "chain", "inet", "loss", "forwarding"])
            .unwrap();
    let counters: Vec<u64> = rules
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "packets")
        .filter_map(|w| w[1].parse().ok())
        .collect();
    let [forwarded, dropped] = counters[..] else {
        panic!("two counters expected:\n{rules}")
    };
    assert!(dropped > 0, "no packet was dropped:\n{rules}");
    println!(
        "random loss: {dropped} of {forwarded} forwarded datagrams dropped ({:.2} %)",
        100.0 * dropped as f64 / forwarded as f64
    );
}
