//! Transfer and mobility scenarios on the simulated network: bulk transfers under loss,
//! reordering and duplication; a NATed client reaching replicas through a router; client,
//! server and sequential moves mid-transfer; NAT rebinding; a lost RSYN-ACK; half-close in
//! each direction; off-path injection; and the goodput snapshot matrix
//! (`tests/snapshots/goodput.txt`, regenerate with `UPDATE_SNAPSHOTS=1`).
//!
//! Two cases cannot work without a rendezvous the SAL does not have, and are asserted to
//! fail cleanly (both ends time out): both ends moving at once, break before make; and the
//! server moving while the client is behind an address-filtering NAT.
//!
//! Every transfer is checked end to end by the SHA-256 of every byte each application wrote
//! and read ([`StreamApp`] digests). Every run is bounded in virtual time and seeded, so a
//! failure replays exactly; nothing here measures wall-clock time.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING.md)

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serval_stack::sal::{CloseReason, EndpointConfig, Event, FlowHandle};
use serval_stack::service_table::Rule;
use serval_stack::time::Timestamp;
use serval_stack::transport::{CongestionAlgorithm, StreamConfig, StreamStats};
use serval_stack::wire::sal::{ControlFlags, ControlRepr, Protocol, SalRepr};
use serval_stack::wire::{FlowId, Nonce, ServiceId, ServicePrefix};
use serval_tests::node::{SalNode, StreamApp};
use serval_tests::sim::{Datagram, LinkProfile, Network, Node, NodeId, Verdict};
use serval_tests::util::{addr, drop_first, emit, flags_of};

// ------------------------------------------------------------------------------ helpers

const CLIENT: &str = "10.0.0.1:54325";
const CLIENT_NEW: &str = "10.0.1.7:54325";
const SERVER: &str = "192.0.2.10:54325";
const SERVER_NEW: &str = "192.0.2.99:54325";
const ATTACKER: &str = "203.0.113.66:1234";

/// The IP of a socket address written as text.
fn ip(s: &str) -> IpAddr {
    addr(s).ip()
}

fn service() -> ServiceId {
    ServiceId::from_u32(80)
}

fn config(seed: u8, stream: &StreamConfig) -> EndpointConfig {
    let mut c = EndpointConfig::default();
    c.rng_seed = [seed; 32];
    c.stream = stream.clone();
    c
}

/// Stream settings with both buffers at `buffer` bytes and the given congestion control.
fn stream_config(buffer: usize, cc: CongestionAlgorithm) -> StreamConfig {
    let mut s = StreamConfig::default();
    s.send_buffer(buffer).unwrap().recv_buffer(buffer).unwrap();
    s.congestion(cc);
    s
}

/// A symmetric path: `rtt` round trip, `mbit` Mbit/s bottleneck each way with a queue of
/// `queue` bytes, and `loss` on every datagram in both directions.
fn path(rtt: Duration, mbit: u64, queue: usize, loss: f64) -> LinkProfile {
    LinkProfile {
        latency: rtt / 2,
        loss,
        rate: Some(mbit * 1_000_000 / 8),
        queue_bytes: queue,
        ..LinkProfile::default()
    }
}

/// A client and a server one hop apart: the client sends `up` bytes, the server `down`,
/// each half-closing after its last byte.
struct Pair {
    net: Network<SalNode>,
    client: NodeId,
    server: NodeId,
    /// The client's flow.
    h: FlowHandle,
}

fn pair(seed: u64, link: LinkProfile, stream: &StreamConfig, up: u64, down: u64) -> Pair {
    let mut net = Network::new(seed);
    net.set_default_link(link);
    let mut server = SalNode::new(config(2, stream), addr(SERVER), Timestamp::ZERO);
    server
        .endpoint
        .listen(ServicePrefix::exact(service()), Protocol::TCP)
        .unwrap();
    server.accept_app = Some((seed ^ 0xdead, down, true));
    let mut client = SalNode::new(config(1, stream), addr(CLIENT), Timestamp::ZERO);
    let (h, flow) = client
        .endpoint
        .connect_to(Timestamp::ZERO, service(), addr(SERVER), Protocol::TCP)
        .unwrap();
    client.add_flow(h, flow);
    client.apps.insert(h, StreamApp::new(seed, up, true));
    let server = net.add_node(server, &[ip(SERVER)]);
    let client = net.add_node(client, &[ip(CLIENT)]);
    Pair {
        net,
        client,
        server,
        h,
    }
}

/// A [`pair`] with default stream settings on a 20 ms RTT, 50 Mbit/s path (256 KiB queue)
/// with `loss` both ways: the path of every test from section 3 on.
fn wan_pair(seed: u64, loss: f64, up: u64, down: u64) -> Pair {
    let link = path(Duration::from_millis(20), 50, 256 << 10, loss);
    pair(seed, link, &StreamConfig::default(), up, down)
}

/// The server's side of the pair's flow.
fn server_flow(p: &Pair) -> Option<FlowHandle> {
    p.net.node(p.server).accepted.first().copied()
}

impl Pair {
    /// Moves the client to [`CLIENT_NEW`] ([`move_node`]).
    fn move_client(&mut self) {
        move_node(&mut self.net, self.client, CLIENT, CLIENT_NEW);
    }

    /// Moves the server to [`SERVER_NEW`] ([`move_node`]).
    fn move_server(&mut self) {
        move_node(&mut self.net, self.server, SERVER, SERVER_NEW);
    }

    /// Puts the client behind a NAT (public 198.51.100.1) that filters by remote address;
    /// returns it for [`Network::nat_mut`].
    fn nat_the_client(&mut self) -> usize {
        let nat = self
            .net
            .add_nat(ip("198.51.100.1:0"), Duration::from_secs(30));
        self.net.place_behind_nat(ip(CLIENT), nat);
        nat
    }

    /// Whether the server's flow `hs` switched to the client's address `to` (validated).
    fn server_followed_to(&self, hs: FlowHandle, to: &str) -> bool {
        self.net
            .node(self.server)
            .saw(hs, Event::PathMigrated { peer: addr(to) })
    }

    /// Whether the client's flow switched to the server's address `to` (validated).
    fn client_followed_to(&self, to: &str) -> bool {
        self.net
            .node(self.client)
            .saw(self.h, Event::PathMigrated { peer: addr(to) })
    }
}

/// What a finished transfer measured (virtual time).
#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// When the server read the client's last byte and end of stream.
    up_done: Timestamp,
    /// When the client read the server's last byte and end of stream.
    down_done: Timestamp,
    /// Last stats of the client's stream (the uploader).
    client: StreamStats,
    /// Last stats of the server's stream.
    server: StreamStats,
}

impl Outcome {
    /// Upload goodput from t = 0 (the connect) to the server's end of stream, Mbit/s.
    fn up_mbit(&self, bytes: u64) -> f64 {
        bytes as f64 * 8.0 / self.up_done.as_micros() as f64
    }
}

/// Runs until both sides read the other's end of stream (or `secs` of virtual time pass,
/// which fails the test), then checks the SHA-256 of both directions.
fn finish(p: &mut Pair, secs: u64) -> Outcome {
    let (client, server, h) = (p.client, p.server, p.h);
    let mut stats = (StreamStats::default(), StreamStats::default());
    let done = p.net.run_for(Duration::from_secs(secs), |n| {
        // Flows leave the node once closed: keep the last stats seen.
        if let Some(s) = n.node(client).flows.get(&h).and_then(|f| f.stream_stats()) {
            stats.0 = s;
        }
        let Some(&hs) = n.node(server).accepted.first() else {
            return false;
        };
        if let Some(s) = n.node(server).flows.get(&hs).and_then(|f| f.stream_stats()) {
            stats.1 = s;
        }
        n.node(client).apps[&h].eof && n.node(server).apps[&hs].eof
    });
    let c = &p.net.node(client).apps[&h];
    let Some(hs) = server_flow(p) else {
        panic!(
            "the server never accepted the flow by {:?}: client events {:?}, server {:?}",
            p.net.now(),
            p.net.node(client).events,
            p.net.node(server).endpoint.stats()
        );
    };
    let srv = &p.net.node(server).apps[&hs];
    assert!(
        done,
        "transfer incomplete at {:?}: client sent {} got {}, server sent {} got {}; {:?}",
        p.net.now(),
        c.sent,
        c.received,
        srv.sent,
        srv.received,
        p.net.stats()
    );
    assert_eq!(
        c.sent_digest(),
        srv.received_digest(),
        "upload bytes differ"
    );
    assert_eq!(
        srv.sent_digest(),
        c.received_digest(),
        "download bytes differ"
    );
    Outcome {
        up_done: srv.eof_at.unwrap(),
        down_done: c.eof_at.unwrap(),
        client: stats.0,
        server: stats.1,
    }
}

/// Runs until the server has read `up` bytes of the upload and the client `down` bytes of
/// the download (bounded by `secs` of virtual time). Progress is measured at the reader:
/// a writer's count includes what sits in its send buffer.
fn run_until_received(p: &mut Pair, up: u64, down: u64, secs: u64) {
    let (client, server, h) = (p.client, p.server, p.h);
    let reached = p.net.run_for(Duration::from_secs(secs), |n| {
        let Some(hs) = n.node(server).accepted.first() else {
            return false;
        };
        n.node(server).apps[hs].received >= up && n.node(client).apps[&h].received >= down
    });
    assert!(reached, "never received {up} bytes up and {down} down");
}

// ---------------------------------------------------------------- 1. bulk transfers

/// Size of the bulk transfers: 64 MiB in release builds (CI runs `cargo test --release`);
/// debug builds are several times slower per packet, so they move 4 MiB through the same
/// paths.
const BULK: u64 = if cfg!(debug_assertions) {
    4 << 20
} else {
    64 << 20
};

/// [`BULK`] bytes up (and 1 MiB down) on `link`; prints the figures (`--nocapture`).
fn bulk(seed: u64, link: LinkProfile, secs: u64) -> Outcome {
    let stream = StreamConfig::default();
    let mut p = pair(seed, link, &stream, BULK, 1 << 20);
    let o = finish(&mut p, secs);
    eprintln!(
        "bulk {BULK} B: {:.1} Mbit/s in {:?}, {} retransmits, {} RTOs; {:?}",
        o.up_mbit(BULK),
        o.up_done,
        o.client.retransmits,
        o.client.rto_timeouts,
        p.net.stats()
    );
    o
}

/// 200 Mbit/s each way, 10 ms RTT, 256 KiB queue, `loss` both ways.
fn bulk_path(loss: f64) -> LinkProfile {
    path(Duration::from_millis(10), 200, 256 << 10, loss)
}

#[test]
fn bulk_transfer_lossless() {
    let o = bulk(11, bulk_path(0.0), 60);
    assert_eq!(o.client.rto_timeouts, 0);
}

#[test]
fn bulk_transfer_at_1_percent_loss() {
    bulk(12, bulk_path(0.01), 600);
}

#[test]
fn bulk_transfer_at_5_percent_loss() {
    bulk(13, bulk_path(0.05), 1800);
}

#[test]
fn bulk_transfer_at_10_percent_loss() {
    bulk(14, bulk_path(0.10), 3600);
}

#[test]
fn bulk_transfer_with_reordering_and_duplication() {
    let link = LinkProfile {
        // Datagrams leave 56 µs apart at 200 Mbit/s: 3 ms of jitter reorders heavily.
        jitter: Duration::from_millis(3),
        duplicate: 0.02,
        ..bulk_path(0.0)
    };
    let o = bulk(15, link, 600);
    assert!(o.server.duplicate_segments > 0, "duplicates arrived");
}

// ------------------------------------------------ 2. NATed client, router, two replicas

/// A client behind a NAT opens `flows` stream flows to a service through a router that
/// spreads SYNs over two replicas by weight 3:1. Every flow uploads and downloads; the
/// router must see only the SYN and the SYN-ACK of each flow.
#[test]
fn nated_client_through_a_router_to_two_replicas() {
    const FLOWS: usize = 40;
    const UP: u64 = 64 << 10;
    const DOWN: u64 = 128 << 10;
    let stream = StreamConfig::default();
    let mut net: Network<SalNode> = Network::new(21);
    net.set_default_link(path(Duration::from_millis(10), 100, 256 << 10, 0.0));
    let mut router_cfg = config(3, &stream);
    router_cfg.forwarding = true;
    let router_addr = addr("192.0.2.1:54325");
    let mut router = SalNode::new(router_cfg, router_addr, Timestamp::ZERO);
    let prefix = ServicePrefix::new(service(), 32).unwrap();
    let mut replicas = Vec::new();
    for (i, weight) in [3, 1].into_iter().enumerate() {
        let a: SocketAddr = format!("192.0.2.{}:54325", 10 + i).parse().unwrap();
        router
            .endpoint
            .table_mut()
            .insert(prefix, Rule::forward(a).with_weight(weight))
            .unwrap();
        let mut s = SalNode::new(config(10 + i as u8, &stream), a, Timestamp::ZERO);
        s.endpoint.listen(prefix, Protocol::TCP).unwrap();
        // Each replica sends its own bytes, so a download is checked against its replica.
        s.accept_app = Some((1000 + i as u64, DOWN, true));
        replicas.push(net.add_node(s, &[a.ip()]));
    }
    let mut client = SalNode::new(config(1, &stream), addr("10.0.0.1:5000"), Timestamp::ZERO);
    client
        .endpoint
        .table_mut()
        .insert(ServicePrefix::DEFAULT, Rule::forward(router_addr))
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..FLOWS {
        let (h, flow) = client
            .endpoint
            .connect(Timestamp::ZERO, service(), Protocol::TCP)
            .unwrap();
        client.add_flow(h, flow);
        client.apps.insert(h, StreamApp::new(i as u64, UP, true));
        handles.push(h);
    }
    let router = net.add_node(router, &[router_addr.ip()]);
    let client = net.add_node(client, &[ip("10.0.0.1:0")]);
    let nat = net.add_nat(ip("198.51.100.1:0"), Duration::from_secs(30));
    net.place_behind_nat(ip("10.0.0.1:0"), nat);

    let done = net.run_until(Timestamp::from_millis(120_000), |n| {
        let c = n.node(client);
        let accepted: usize = replicas.iter().map(|&r| n.node(r).accepted.len()).sum();
        accepted == FLOWS
            && handles.iter().all(|h| c.apps[h].eof)
            && replicas
                .iter()
                .all(|&r| n.node(r).apps.values().all(|a| a.eof))
    });
    assert!(done, "transfers incomplete at {:?}", net.now());

    // Each client flow's upload arrived intact at exactly one replica, and its download is
    // that replica's bytes.
    let mut per_replica = [0usize; 2];
    for h in &handles {
        let app = &net.node(client).apps[h];
        assert_eq!(app.sent, UP);
        assert_eq!(app.received, DOWN);
        let mut matches = Vec::new();
        for (i, &r) in replicas.iter().enumerate() {
            for srv in net.node(r).apps.values() {
                if srv.received_digest() == app.sent_digest() {
                    assert_eq!(srv.sent_digest(), app.received_digest(), "download differs");
                    matches.push(i);
                }
            }
        }
        assert_eq!(
            matches.len(),
            1,
            "upload of {h:?} arrived once: {matches:?}"
        );
        per_replica[matches[0]] += 1;
    }
    // Weight 3:1 over 40 flows: expect 30 / 10 (binomial sd ≈ 2.7).
    assert_eq!(per_replica[0] + per_replica[1], FLOWS);
    assert!(
        (22..=37).contains(&per_replica[0]),
        "weight-3 replica got {}, weight-1 got {}",
        per_replica[0],
        per_replica[1]
    );
    // The router saw each SYN once and the SYN-ACKs, and nothing else: data went direct.
    // (A SYN-ACK comes again when its conn-ACK was lost: the 40 initial windows leave the
    // client at once and overflow its uplink queue, which can take conn-ACKs with them.)
    let stats = net.node(router).endpoint.stats();
    eprintln!("router {stats:?}; replicas got {per_replica:?}");
    assert_eq!(stats.forwarded_syns, FLOWS as u64);
    assert!(stats.forwarded_syn_acks >= FLOWS as u64);
    assert_eq!(
        stats.datagrams_received,
        stats.forwarded_syns + stats.forwarded_syn_acks
    );
}

// ------------------------------------------------------------------- 3.–5. mobility

/// Moves `node` from the IP of `from` to `to`, break before make: the old address leaves
/// the network at once, and packets in flight to it are lost.
fn move_node(net: &mut Network<SalNode>, node: NodeId, from: &str, to: &str) {
    net.set_owner(ip(from), None);
    net.set_owner(ip(to), Some(node));
    net.node_mut(node).move_to(addr(to));
}

/// Moves the client once the server read 2 MiB of the upload, finishes the transfer, and
/// asserts the server followed the client.
fn client_moves(p: &mut Pair) {
    run_until_received(p, 2 << 20, 0, 120);
    p.move_client();
    let hs = server_flow(p).unwrap();
    finish(p, 600);
    assert!(p.server_followed_to(hs, CLIENT_NEW));
}

/// Moves the server once the client read 2 MiB of the download, finishes the transfer,
/// and asserts the client followed the server.
fn server_moves(seed: u64, loss: f64) {
    let mut p = wan_pair(seed, loss, 2 << 20, 8 << 20);
    // Let the download get going, then move the server.
    run_until_received(&mut p, 0, 2 << 20, 120);
    p.move_server();
    finish(&mut p, 600);
    assert!(p.client_followed_to(SERVER_NEW));
}

/// 6 MiB each way, run until the server read 2 MiB: where the tests moving both ends act.
/// Returns the pair and the server's flow.
fn both_ways_under_way(seed: u64) -> (Pair, FlowHandle) {
    let mut p = wan_pair(seed, 0.0, 6 << 20, 6 << 20);
    run_until_received(&mut p, 2 << 20, 0, 120);
    let hs = server_flow(&p).unwrap();
    (p, hs)
}

/// Asserts the server followed the client to [`CLIENT_NEW`] and the client the server to
/// [`SERVER_NEW`].
fn assert_each_followed_the_other(p: &Pair, hs: FlowHandle) {
    assert!(p.server_followed_to(hs, CLIENT_NEW));
    assert!(p.client_followed_to(SERVER_NEW));
}

/// For the moves nobody can follow: runs until both ends dropped the flow and asserts
/// each timed out (a clean failure, not a hang).
fn assert_both_time_out(p: &mut Pair, hs: FlowHandle) {
    let (client, server, h) = (p.client, p.server, p.h);
    let ended = p.net.run_for(Duration::from_secs(600), |n| {
        n.node(client).flows.is_empty() && n.node(server).flows.is_empty()
    });
    assert!(ended, "both flows end");
    assert!(
        p.net
            .node(client)
            .saw(h, Event::Closed(CloseReason::TimedOut))
    );
    assert!(
        p.net
            .node(server)
            .saw(hs, Event::Closed(CloseReason::TimedOut))
    );
}

#[test]
fn client_moves_mid_transfer_under_loss() {
    client_moves(&mut wan_pair(31, 0.01, 8 << 20, 2 << 20));
}

#[test]
fn server_moves_mid_transfer() {
    server_moves(41, 0.0);
}

#[test]
fn server_moves_mid_transfer_under_loss() {
    server_moves(42, 0.01);
}

/// The client moves; while the server is still validating the client's new address (its
/// RSYN-ACK with the challenge is in flight) the server moves too. Both RSYN exchanges
/// finish, each side validates the other, and the transfer completes.
#[test]
fn sequential_moves_client_then_server_during_validation() {
    let (mut p, hs) = both_ways_under_way(51);
    let server = p.server;
    p.move_client();
    // The server got the RSYN and sent its challenge; the response has not come back.
    assert!(p.net.run_for(Duration::from_secs(5), |n| {
        n.node(server)
            .flows
            .get(&hs)
            .is_some_and(|f| f.stats().path_validations_started > 0)
    }));
    let stats = p.net.node_mut(server).flow(hs).stats();
    assert_eq!(stats.path_validations_succeeded, 0, "still validating");
    p.move_server();
    finish(&mut p, 600);
    assert_each_followed_the_other(&p, hs);
}

/// Both ends move at the same instant but keep their old addresses for a moment (make
/// before break, as a phone handing over from Wi-Fi to cellular): each RSYN reaches the
/// other's old address, each side validates the other's new one, the transfer completes.
#[test]
fn simultaneous_moves_make_before_break() {
    let (mut p, hs) = both_ways_under_way(52);
    let (client, server) = (p.client, p.server);
    p.net.set_owner(ip(CLIENT_NEW), Some(client));
    p.net.set_owner(ip(SERVER_NEW), Some(server));
    p.net.node_mut(client).move_to(addr(CLIENT_NEW));
    p.net.node_mut(server).move_to(addr(SERVER_NEW));
    // The old addresses stay up for one second, then go.
    p.net.run_for(Duration::from_secs(1), |_| false);
    p.net.set_owner(ip(CLIENT), None);
    p.net.set_owner(ip(SERVER), None);
    finish(&mut p, 600);
    assert_each_followed_the_other(&p, hs);
}

/// Not supported, and asserted as such: both ends move at the same instant and both old
/// addresses vanish. Each RSYN goes to the other's dead address and nobody knows where the
/// other went; without a rendezvous (re-resolving the ServiceID through a router, which the
/// SAL does not do) the flow cannot survive. It must fail cleanly — both sides time out —
/// rather than hang or deliver wrong bytes.
#[test]
fn simultaneous_break_before_make_moves_time_out_cleanly() {
    let (mut p, hs) = both_ways_under_way(53);
    p.move_client();
    p.move_server();
    assert_both_time_out(&mut p, hs);
    // What was delivered before the move is a prefix of what was sent (checked by length
    // here; the digests cover only complete transfers).
    let c = &p.net.node(p.client).apps[&p.h];
    let s = &p.net.node(p.server).apps[&hs];
    assert!(s.received <= c.sent && c.received <= s.sent);
    assert!(!c.eof && !s.eof);
}

/// Not supported, and asserted as such: the server moves while the client sits behind a
/// NAT that filters by remote address (most do; the simulator's NAT does). The server's
/// RSYN, and everything else it sends, now comes from an IP the client never sent to, so
/// the client's NAT drops it; the client keeps sending to the old, dead address. Only a
/// rendezvous the NAT lets through (the old address, or the router) could tell the client
/// where to send. The flow must fail cleanly.
#[test]
fn server_move_behind_the_clients_filtering_nat_times_out_cleanly() {
    let mut p = wan_pair(54, 0.0, 4 << 20, 4 << 20);
    p.nat_the_client();
    run_until_received(&mut p, 1 << 20, 1 << 20, 120);
    let hs = server_flow(&p).unwrap();
    p.move_server();
    assert_both_time_out(&mut p, hs);
    assert!(!p.net.node(p.client).apps[&p.h].eof);
}

// ------------------------------------------------------------------ 6. NAT rebinding

#[test]
fn nat_rebinding_mid_transfer() {
    let mut p = wan_pair(61, 0.0, 4 << 20, 4 << 20);
    let nat = p.nat_the_client();
    run_until_received(&mut p, 1 << 20, 1 << 20, 120);
    let (server, hs) = (p.server, server_flow(&p).unwrap());
    let before = p.net.node_mut(server).flow(hs).peer_addr();
    assert_eq!(before, addr("198.51.100.1:40000"));
    // The NAT reboots while data flows both ways: the client's next datagram gets a new
    // public port, and the server's datagrams to the old one are dropped.
    p.net.nat_mut(nat).flush();
    finish(&mut p, 600);
    assert!(p.server_followed_to(hs, "198.51.100.1:40001"));
    assert!(p.net.stats().unroutable > 0, "the old mapping was gone");
}

// ------------------------------------------------------------------ 7. lost RSYN-ACK

#[test]
fn lost_rsyn_ack_during_a_stream_transfer() {
    let mut p = wan_pair(71, 0.0, 6 << 20, 2 << 20);
    p.net
        .intercept(Some(drop_first(ControlFlags::RSYN | ControlFlags::ACK)));
    client_moves(&mut p);
    assert_eq!(p.net.stats().intercepted, 1, "one RSYN-ACK was lost");
}

/// Found by a seed sweep at 5 % loss (about one handshake in 200 there): the conn-ACK is
/// lost, and so is the server's next SYN-ACK. The half-open flow used to expire (3 s) before
/// its second SYN-ACK retransmission, stranding the client (established since the first
/// SYN-ACK) until its stream's user timeout. Now data reaching a half-open flow makes it
/// repeat its SYN-ACK at once, and the half-open lifetime (10 s) covers its retries.
/// Expected: the handshake recovers and the transfer completes.
#[test]
fn a_lost_conn_ack_and_a_lost_syn_ack_retransmission_do_not_strand_the_client() {
    let mut p = wan_pair(72, 0.0, 64 << 10, 64 << 10);
    let (mut conn_acks, mut syn_acks) = (0, 0);
    p.net.intercept(Some(Box::new(move |_, d| {
        let flags = flags_of(d);
        let drop = if flags == ControlFlags::ACK && d.src == addr(CLIENT) {
            conn_acks += 1;
            conn_acks == 1
        } else if flags == ControlFlags::SYN | ControlFlags::ACK {
            syn_acks += 1;
            syn_acks == 2
        } else {
            false
        };
        if drop { Verdict::Drop } else { Verdict::Pass }
    })));
    finish(&mut p, 60);
    assert_eq!(p.net.stats().intercepted, 2);
}

// --------------------------------------------------------------------- 8. half-close

/// One side sends `short` bytes and half-closes at once; the other sends `long`. The short
/// side's end of stream arrives while the long direction is still flowing, which then
/// completes; both ends see both ends of stream.
fn half_close(seed: u64, short_is_client: bool) {
    let (short, long) = (64 << 10, 8 << 20);
    let (up, down) = if short_is_client {
        (short, long)
    } else {
        (long, short)
    };
    let mut p = wan_pair(seed, 0.0, up, down);
    let (client, server, h) = (p.client, p.server, p.h);
    // Wait for the short direction's end of stream.
    assert!(p.net.run_until(Timestamp::from_millis(60_000), |n| {
        let Some(hs) = n.node(server).accepted.first() else {
            return false;
        };
        if short_is_client {
            n.node(server).apps[hs].eof
        } else {
            n.node(client).apps[&h].eof
        }
    }));
    let hs = server_flow(&p).unwrap();
    let long_so_far = if short_is_client {
        p.net.node(client).apps[&h].received
    } else {
        p.net.node(server).apps[&hs].received
    };
    assert!(
        long_so_far < long / 2,
        "the short side finished early ({long_so_far} of {long} bytes the other way)"
    );
    let o = finish(&mut p, 600);
    let (first, second) = if short_is_client {
        (o.up_done, o.down_done)
    } else {
        (o.down_done, o.up_done)
    };
    assert!(first < second);
    assert!(p.net.node(client).saw(h, Event::PeerFinished));
    assert!(p.net.node(server).saw(hs, Event::PeerFinished));
}

#[test]
fn half_close_client_finishes_first() {
    half_close(81, true);
}

#[test]
fn half_close_server_finishes_first() {
    half_close(82, false);
}

// ------------------------------------------------------------- 9. off-path injection

/// One batch of forged packets from an off-path address, aimed at the server's flow: the
/// attacker knows both FlowIDs (the strongest off-path case) but not the flow key, so every
/// MAC is random. Returns how many of each kind were sent.
fn forge_batch(
    rng: &mut ChaCha8Rng,
    client_flow: FlowId,
    server_flow: FlowId,
) -> (Vec<Vec<u8>>, Injected) {
    let mut out = Vec::new();
    let mut n = Injected::default();
    // Control packets: RST, FIN, RSYN, RSYN-ACK with a path challenge, RST+ACK.
    for flags in [
        ControlFlags::RST,
        ControlFlags::FIN | ControlFlags::ACK,
        ControlFlags::RSYN,
        ControlFlags::RSYN | ControlFlags::ACK,
        ControlFlags::RST | ControlFlags::ACK,
    ] {
        for _ in 0..10 {
            let mut repr = SalRepr::new(Some(client_flow), Some(server_flow), Protocol::TCP);
            repr.control = Some(ControlRepr {
                flags,
                verno: rng.random(),
                ackno: rng.random(),
                nonce: Nonce(rng.random()),
            });
            if flags.contains(ControlFlags::RSYN | ControlFlags::ACK) {
                repr.path_challenge = Some(rng.random());
            }
            repr.mac = Some(rng.random());
            out.push(emit(&repr, 0));
            n.control += 1;
        }
    }
    // A transport RST in a data packet with the right FlowIDs: data is not MACed, so the
    // SAL refuses any reset outside an authenticated SAL RST.
    for _ in 0..10 {
        let repr = SalRepr::new(Some(client_flow), Some(server_flow), Protocol::TCP);
        let mut buf = emit(&repr, 20);
        let tcp = &mut buf[repr.buffer_len()..];
        rng.fill(&mut tcp[..]);
        tcp[12] = 5 << 4; // data offset: 20 bytes
        tcp[13] = 0x04 | 0x10; // RST + ACK
        out.push(buf);
        n.tcp_rst += 1;
    }
    // Data with the server's FlowID but a guessed source FlowID.
    for _ in 0..10 {
        let guess = guess_flow(rng);
        if guess == client_flow {
            continue;
        }
        out.push(forged_data(rng, guess, server_flow));
        n.wrong_source += 1;
    }
    // Data with guessed destination FlowIDs: no such flow.
    for _ in 0..50 {
        let guess = guess_flow(rng);
        if guess == server_flow {
            continue;
        }
        out.push(forged_data(rng, guess, guess));
        n.unknown += 1;
    }
    (out, n)
}

/// A random (odd, so non-zero) FlowID: an off-path guess.
fn guess_flow(rng: &mut ChaCha8Rng) -> FlowId {
    FlowId::new(rng.random::<u32>() | 1).unwrap()
}

/// A data packet from `src` to `dst` with 40 random bytes of transport.
fn forged_data(rng: &mut ChaCha8Rng, src: FlowId, dst: FlowId) -> Vec<u8> {
    let repr = SalRepr::new(Some(src), Some(dst), Protocol::TCP);
    let mut buf = emit(&repr, 40);
    rng.fill(&mut buf[repr.buffer_len()..]);
    buf
}

/// Counts of forged packets by kind.
#[derive(Debug, Default, Clone, Copy)]
struct Injected {
    control: u64,
    tcp_rst: u64,
    wrong_source: u64,
    unknown: u64,
}

impl std::ops::AddAssign for Injected {
    fn add_assign(&mut self, n: Self) {
        self.control += n.control;
        self.tcp_rst += n.tcp_rst;
        self.wrong_source += n.wrong_source;
        self.unknown += n.unknown;
    }
}

#[test]
fn off_path_injection_during_a_transfer() {
    let mut p = wan_pair(91, 0.0, 8 << 20, 2 << 20);
    let (client, server, h) = (p.client, p.server, p.h);
    run_until_received(&mut p, 1 << 20, 0, 60);
    let hs = server_flow(&p).unwrap();
    let server_flow_id = p.net.node_mut(server).flow(hs).local_flow();
    let client_flow_id = p.net.node_mut(client).flow(h).local_flow();
    let endpoint_unknown_before = p.net.node(server).endpoint.stats().drops.unknown_flow;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut total = Injected::default();
    // Five batches, one each time the client has written another megabyte.
    for mb in 2..=6u64 {
        run_until_received(&mut p, mb << 20, 0, 60);
        let (batch, n) = forge_batch(&mut rng, client_flow_id, server_flow_id);
        for payload in batch {
            let now = p.net.now();
            Node::handle(
                p.net.node_mut(server),
                now,
                Datagram {
                    src: addr(ATTACKER),
                    dst: addr(SERVER),
                    payload,
                },
            );
        }
        total += n;
    }
    let flow = p.net.node_mut(server).flow(hs);
    assert!(flow.is_established());
    assert_eq!(flow.peer_addr(), addr(CLIENT));
    let stats = flow.stats();
    assert_eq!(stats.drops.bad_mac, total.control + total.tcp_rst);
    assert_eq!(stats.drops.unexpected_data, total.wrong_source);
    assert_eq!(stats.resets_received, 0);
    assert_eq!(stats.path_validations_succeeded, 0);
    let endpoint_unknown = p.net.node(server).endpoint.stats().drops.unknown_flow;
    assert_eq!(endpoint_unknown - endpoint_unknown_before, total.unknown);
    eprintln!("injected {total:?}; server flow drops {:?}", stats.drops);
    finish(&mut p, 600);
    assert!(!p.net.node(server).events.iter().any(|(f, e)| *f == hs
        && matches!(
            e,
            Event::PathMigrated { .. } | Event::Closed(CloseReason::Reset)
        )));
}

// ------------------------------------------------------------- 10. goodput snapshot

/// Bytes uploaded per cell of the matrix.
const MATRIX_BYTES: u64 = 16 << 20;
/// Seeds per cell; the table shows the mean.
const MATRIX_SEEDS: [u64; 3] = [1, 2, 3];
/// Bottleneck of the matrix's path, both ways, and the queue in front of it.
const MATRIX_MBIT: u64 = 100;
const MATRIX_QUEUE: usize = 256 << 10;

/// One cell: mean goodput (Mbit/s) and the sender's mean stream counters over the seeds.
fn matrix_cell(cc: CongestionAlgorithm, loss: f64, rtt_ms: u64, buffer: usize) -> String {
    let stream = stream_config(buffer, cc);
    let link = path(
        Duration::from_millis(rtt_ms),
        MATRIX_MBIT,
        MATRIX_QUEUE,
        loss,
    );
    let (mut goodput, mut retransmits, mut rtos, mut spurious) = (0.0, 0, 0, 0);
    for &seed in &MATRIX_SEEDS {
        // The seed drives the network's randomness and the app's bytes; the cell's
        // parameters are folded in so cells do not share loss patterns.
        let seed = seed * 1_000_003 + rtt_ms * 101 + (loss * 1000.0) as u64 + buffer as u64;
        let mut p = pair(seed, link.clone(), &stream, MATRIX_BYTES, 0);
        let o = finish(&mut p, 3600);
        goodput += o.up_mbit(MATRIX_BYTES);
        retransmits += o.client.retransmits;
        rtos += o.client.rto_timeouts;
        spurious += o.client.spurious_retransmits;
    }
    let n = MATRIX_SEEDS.len() as u64;
    let cc = match cc {
        CongestionAlgorithm::NewReno => "newreno",
        _ => "cubic",
    };
    format!(
        "{cc:<8} {:>4.0}% {rtt_ms:>6} {:>6} {:>13.2} {:>11} {:>5} {:>8}\n",
        loss * 100.0,
        if buffer >= 1 << 20 {
            format!("{}M", buffer >> 20)
        } else {
            format!("{}K", buffer >> 10)
        },
        goodput / n as f64,
        retransmits / n,
        rtos / n,
        spurious / n,
    )
}

/// The goodput matrix: CUBIC (with RACK-TLP) at 0 / 1 / 5 % loss and NewReno at 1 / 5 %,
/// each at 10 and 50 ms RTT with 256 KiB and 4 MiB buffers. Virtual time only, so the table
/// is exact and reviewed as a snapshot; a change in the stack's behaviour shows as a diff.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "moves 960 MiB: run with --release (CI does)"
)]
fn goodput_matrix_snapshot() {
    let mut table = String::new();
    writeln!(
        table,
        "# Goodput of a {} MiB upload, mean of {} seeds; {MATRIX_MBIT} Mbit/s bottleneck each way \
         with a {} KiB queue; loss on every datagram both ways.",
        MATRIX_BYTES >> 20,
        MATRIX_SEEDS.len(),
        MATRIX_QUEUE >> 10
    )
    .unwrap();
    table.push_str(
        "# goodput: bytes x 8 / virtual time from connect() to the receiver's end of stream.\n\
         # retx, rto, dsack: the sender's StreamStats retransmits, rto_timeouts, \
         spurious_retransmits (means).\n\
         # Regenerate: UPDATE_SNAPSHOTS=1 cargo test --release -p serval-tests --test scenarios goodput\n",
    );
    table.push_str("cc        loss rtt_ms buffer goodput_mbit        retx   rto    dsack\n");
    let mut cells = Vec::new();
    for cc in [CongestionAlgorithm::Cubic, CongestionAlgorithm::NewReno] {
        for loss in [0.0, 0.01, 0.05] {
            if cc == CongestionAlgorithm::NewReno && loss == 0.0 {
                continue;
            }
            for rtt in [10, 50] {
                for buffer in [256 << 10, 4 << 20] {
                    cells.push((cc, loss, rtt, buffer));
                }
            }
        }
    }
    // Cells are independent: run them on every core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut rows = vec![String::new(); cells.len()];
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(cc, loss, rtt, buffer)) = cells.get(i) else {
                            return done;
                        };
                        done.push((i, matrix_cell(cc, loss, rtt, buffer)));
                    }
                })
            })
            .collect();
        for w in workers {
            for (i, row) in w.join().unwrap() {
                rows[i] = row;
            }
        }
    });
    for row in rows {
        table.push_str(&row);
    }
    check_snapshot("goodput.txt", &table);
}

/// Compares `actual` with the checked-in `tests/snapshots/<name>`; `UPDATE_SNAPSHOTS=1`
/// rewrites the file instead.
fn check_snapshot(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        eprintln!("wrote {}:\n{actual}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "snapshot {} differs; review the new table and rerun with UPDATE_SNAPSHOTS=1 to \
         accept it:\n{actual}",
        path.display()
    );
}
