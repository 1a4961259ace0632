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
        let mut client_links = Vec::new();
        let mut gw_inner = Vec::new();
        let (g, c) = veth(&gw, "10.1.0.1/24", &client, "10.1.0.2/24", MTU).expect("link A");
        client
            .exec(&[
                "ip", "route", "add", "default", "via", "10.1.0.1", "metric", "100",
            ])
            .expect("default route A");
        client_links.push(c);
        gw_inner.push(g);
        if two_links {
            let (g, c) = veth(&gw, "10.3.0.1/24", &client, "10.3.0.2/24", MTU).expect("link B");
            client
                .exec(&[
                    "ip", "route", "add", "default", "via", "10.3.0.1", "metric", "200",
                ])
                .expect("default route B");
            client_links.push(c);
            gw_inner.push(g);
        }
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
            "7",
        ],
    );
    p.wait_for("READY", WAIT).expect("server registered");
    p
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

/// The `key=value` fields of a result line.
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `RESULT` fields of `p` (waited for).
fn result(p: &mut Process) -> BTreeMap<String, String> {
    fields(&p.wait_for("RESULT", WAIT).expect("a RESULT line"))
}

/// A numeric field.
fn num(f: &BTreeMap<String, String>, key: &str) -> u64 {
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
fn same_bytes(
    client: &BTreeMap<String, String>,
    server: &BTreeMap<String, String>,
    seed: u64,
    len: u64,
) {
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
    if !require_root("client_behind_nat_reaches_servers_through_router") {
        return;
    }
    let t = Topology::build(true, false);
    let _router = start_router(&t);
    let mut sink = start_server(&t, "sink", SINK, SINK_PREFIX, "sink");
    let source_len = 16 * MIB;
    let mut source = start_server(
        &t,
        "source",
        SOURCE,
        SOURCE_PREFIX,
        &format!("source:{source_len}"),
    );
    let up_len = 32 * MIB;
    let up_len_s = up_len.to_string();
    let mut up = start_client(
        &t,
        "client-up",
        "10.1.0.2:40001",
        SINK_ID,
        &["--send", &up_len_s, "--seed", "3"],
    );
    let mut down = start_client(&t, "client-down", "10.1.0.2:40002", SOURCE_ID, &["--recv"]);

    // The router resolved the ServiceIDs; the data then went straight to the servers.
    assert_eq!(up.wait_for("CONNECTED", WAIT).unwrap(), SINK);
    assert_eq!(down.wait_for("CONNECTED", WAIT).unwrap(), SOURCE);
    // The servers saw the NAT's outer address, not the client's.
    for s in [&mut sink, &mut source] {
        let peer = s.wait_for("ACCEPTED", WAIT).unwrap();
        assert!(peer.starts_with(&format!("{GW_OUTER}:")), "peer {peer}");
    }

    let (cu, su) = (result(&mut up), result(&mut sink));
    same_bytes(&cu, &su, 3, up_len);
    let (cd, sd) = (result(&mut down), result(&mut source));
    same_bytes(&cd, &sd, 7, source_len);
    exits_ok(&mut up);
    exits_ok(&mut down);
}

#[test]
fn client_address_moves_mid_transfer() {
    if !require_root("client_address_moves_mid_transfer") {
        return;
    }
    let t = Topology::build(false, true);
    // 100 Mbit/s up: 32 MiB take about 3 s, the move takes milliseconds.
    rate_limit(&t.gw, &t.gw_outer, "100mbit").expect("shape the uplink");
    let _router = start_router(&t);
    let mut sink = start_server(&t, "sink", SINK, SINK_PREFIX, "sink");
    let len = 32 * MIB;
    let len_s = len.to_string();
    let mut client = start_client(
        &t,
        "client",
        "10.1.0.2:40000",
        SINK_ID,
        &["--send", &len_s, "--seed", "5"],
    );
    assert_eq!(client.wait_for("CONNECTED", WAIT).unwrap(), SINK);
    assert_eq!(sink.wait_for("ACCEPTED", WAIT).unwrap(), "10.1.0.2:40000");

    wait_progress(&mut client, 4 * MIB);
    // Make before break: a socket on the new address, then the old link goes away.
    client.send("rebind 10.3.0.2:40000").unwrap();
    assert_eq!(client.wait_for("REBOUND", WAIT).unwrap(), "10.3.0.2:40000");
    t.client
        .exec(&["ip", "link", "set", "dev", &t.client_links[0], "down"])
        .expect("link A down");
    still_running(&mut client, "the move");

    let (c, s) = (result(&mut client), result(&mut sink));
    same_bytes(&c, &s, 5, len);
    // The client announced the move and the server validated the new path (the only one
    // left: link A is down).
    assert!(num(&c, "migrations") >= 1, "client {c:?}");
    assert!(num(&s, "validations") >= 1, "server {s:?}");
    exits_ok(&mut client);
}

#[test]
fn client_address_changes_under_a_wildcard_socket() {
    if !require_root("client_address_changes_under_a_wildcard_socket") {
        return;
    }
    let t = Topology::build(false, true);
    rate_limit(&t.gw, &t.gw_outer, "100mbit").expect("shape the uplink");
    let _router = start_router(&t);
    let mut sink = start_server(&t, "sink", SINK, SINK_PREFIX, "sink");
    let len = 32 * MIB;
    let len_s = len.to_string();
    // One socket on 0.0.0.0: the kernel picks the source address by route.
    let mut client = start_client(
        &t,
        "client",
        "0.0.0.0:40000",
        SINK_ID,
        &["--advertise", "10.1.0.2", "--send", &len_s, "--seed", "4"],
    );
    assert_eq!(client.wait_for("CONNECTED", WAIT).unwrap(), SINK);
    assert_eq!(sink.wait_for("ACCEPTED", WAIT).unwrap(), "10.1.0.2:40000");

    wait_progress(&mut client, 4 * MIB);
    // Link A goes away (the route via link B takes over, source 10.3.0.2), then the
    // application learns its new address and announces it.
    t.client
        .exec(&["ip", "link", "set", "dev", &t.client_links[0], "down"])
        .expect("link A down");
    client.send("migrate 10.3.0.2:40000").unwrap();
    assert_eq!(client.wait_for("MIGRATED", WAIT).unwrap(), "10.3.0.2:40000");
    still_running(&mut client, "the address change");

    let (c, s) = (result(&mut client), result(&mut sink));
    same_bytes(&c, &s, 4, len);
    assert!(num(&c, "migrations") >= 1, "client {c:?}");
    assert!(num(&s, "validations") >= 1, "server {s:?}");
    exits_ok(&mut client);
}

#[test]
fn nat_mapping_flushed_mid_transfer() {
    if !require_root("nat_mapping_flushed_mid_transfer") {
        return;
    }
    let t = Topology::build(true, false);
    rate_limit(&t.gw, &t.gw_outer, "100mbit").expect("shape the uplink");
    let _router = start_router(&t);
    let mut sink = start_server(&t, "sink", SINK, SINK_PREFIX, "sink");
    let len = 32 * MIB;
    let len_s = len.to_string();
    let mut client = start_client(
        &t,
        "client",
        "10.1.0.2:40000",
        SINK_ID,
        &["--send", &len_s, "--seed", "6"],
    );
    assert_eq!(client.wait_for("CONNECTED", WAIT).unwrap(), SINK);
    let before = sink.wait_for("ACCEPTED", WAIT).unwrap();

    wait_progress(&mut client, 4 * MIB);
    let mapped = nat_mappings(&t.gw, SINK);
    assert_eq!(
        mapped.iter().map(|m| m.0).collect::<Vec<_>>(),
        [40000],
        "one mapping of the client's socket: {mapped:?}"
    );
    assert_eq!(before, format!("{GW_OUTER}:{}", mapped[0].1));
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
    still_running(&mut client, "the NAT flush");

    let (c, s) = (result(&mut client), result(&mut sink));
    same_bytes(&c, &s, 6, len);
    // The server saw the flow come from a new address and validated it.
    assert!(num(&s, "validations") >= 1, "server {s:?}");
    let after = nat_mappings(&t.gw, SINK);
    assert!(
        after
            .iter()
            .any(|&(sport, outer)| sport == 40000 && (20000..=20100).contains(&outer)),
        "the mapping moved into the new range: {after:?}"
    );
    exits_ok(&mut client);
}

#[test]
fn five_percent_random_loss_on_a_link() {
    if !require_root("five_percent_random_loss_on_a_link") {
        return;
    }
    let t = Topology::build(true, false);
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
    let _router = start_router(&t);
    let mut sink = start_server(&t, "sink", SINK, SINK_PREFIX, "sink");
    // Goodput here is bound by the stack's fixed timers (minimum RTO, ACK delay), not the
    // sub-millisecond RTT: about 0.5-1.5 MB/s. 8 MiB each way keep the test near 15 s.
    let source_len = 8 * MIB;
    let mut source = start_server(
        &t,
        "source",
        SOURCE,
        SOURCE_PREFIX,
        &format!("source:{source_len}"),
    );
    let up_len = 8 * MIB;
    let up_len_s = up_len.to_string();
    let mut up = start_client(
        &t,
        "client-up",
        "10.1.0.2:40001",
        SINK_ID,
        &["--send", &up_len_s, "--seed", "8"],
    );
    let mut down = start_client(&t, "client-down", "10.1.0.2:40002", SOURCE_ID, &["--recv"]);

    let (cu, su) = (result(&mut up), result(&mut sink));
    same_bytes(&cu, &su, 8, up_len);
    let (cd, sd) = (result(&mut down), result(&mut source));
    same_bytes(&cd, &sd, 7, source_len);
    exits_ok(&mut up);
    exits_ok(&mut down);
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
