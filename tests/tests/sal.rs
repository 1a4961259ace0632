//! SAL behaviour on the simulated network: handshakes direct and through a router and a
//! NAT, late binding across replicas, refusals, lost handshake packets, migration with path
//! validation (including the original's lost-RSYN-ACK bug), NAT rebinding, close, and forged
//! control packets from an off-path attacker.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING.md)

use std::net::SocketAddr;
use std::time::Duration;

use serval_stack::sal::{CloseReason, Event, FlowHandle};
use serval_stack::service_table::Rule;
use serval_stack::time::Timestamp;
use serval_stack::wire::sal::{ControlFlags, ControlRepr, Protocol, SalRepr};
use serval_stack::wire::{FlowId, Nonce, ServiceId, ServicePrefix};
use serval_tests::node::SalNode;
use serval_tests::sim::{Datagram, Network, Node, NodeId};
use serval_tests::util::{addr, drop_first, emit, ip, seeded_config as config};

const SERVICE: u32 = 16385;
const CLIENT: &str = "10.0.0.1:54325";
const SERVER: &str = "192.0.2.10:54325";
const ROUTER: &str = "192.0.2.1:54325";
const ATTACKER: &str = "203.0.113.66:1234";

fn service() -> ServiceId {
    ServiceId::from_u32(SERVICE)
}

/// A client at 10.0.0.1 and a server at 192.0.2.10 listening on the service, one hop apart.
struct Direct {
    net: Network<SalNode>,
    client: NodeId,
    server: NodeId,
}

/// The client node at `at`, its default rule forwarding every service to `first_hop`.
fn client_via(at: &str, first_hop: &str) -> SalNode {
    let mut client = SalNode::new(config(1), addr(at), Timestamp::ZERO);
    client
        .endpoint
        .table_mut()
        .insert(ServicePrefix::DEFAULT, Rule::forward(addr(first_hop)))
        .unwrap();
    client
}

/// The service router at [`ROUTER`] (forwarding on), with an empty table.
fn router_node() -> SalNode {
    let mut router_cfg = config(3);
    router_cfg.forwarding = true;
    SalNode::new(router_cfg, addr(ROUTER), Timestamp::ZERO)
}

fn direct(seed: u64) -> Direct {
    let mut net = Network::new(seed);
    let mut server = SalNode::new(config(2), addr(SERVER), Timestamp::ZERO);
    server
        .endpoint
        .listen(ServicePrefix::exact(service()), Protocol::UDP)
        .unwrap();
    let client = client_via(CLIENT, SERVER);
    let server = net.add_node(server, &[ip("192.0.2.10")]);
    let client = net.add_node(client, &[ip("10.0.0.1")]);
    Direct {
        net,
        client,
        server,
    }
}

fn connect(net: &mut Network<SalNode>, client: NodeId) -> FlowHandle {
    let now = net.now();
    let node = net.node_mut(client);
    let (h, flow) = node
        .endpoint
        .connect(now, service(), Protocol::UDP)
        .unwrap();
    node.add_flow(h, flow);
    h
}

/// [`Network::run_for`] in whole seconds, the unit of every wait here.
fn until(
    net: &mut Network<SalNode>,
    secs: u64,
    done: impl FnMut(&mut Network<SalNode>) -> bool,
) -> bool {
    net.run_for(Duration::from_secs(secs), done)
}

fn established(net: &mut Network<SalNode>, client: NodeId, h: FlowHandle) -> bool {
    until(net, 30, |n| n.node(client).saw(h, Event::Connected))
}

/// Sends `count` datagrams each way and checks they all arrive intact and in order (no
/// loss is configured, so this datagram flow is reliable here).
fn exchange(
    net: &mut Network<SalNode>,
    a: NodeId,
    ha: FlowHandle,
    b: NodeId,
    hb: FlowHandle,
    count: u32,
) {
    for i in 0..count {
        assert!(net.node_mut(a).flow(ha).send_datagram(&i.to_be_bytes()));
        assert!(net.node_mut(b).flow(hb).send_datagram(&(!i).to_be_bytes()));
        until(net, 5, |_| false);
    }
    for i in 0..count {
        assert_eq!(
            net.node_mut(b).flow(hb).recv_datagram().unwrap(),
            i.to_be_bytes()
        );
        assert_eq!(
            net.node_mut(a).flow(ha).recv_datagram().unwrap(),
            (!i).to_be_bytes()
        );
    }
}

#[test]
fn direct_handshake_exchange_and_close() {
    let Direct {
        mut net,
        client,
        server,
    } = direct(1);
    let (h, _, hs) = open_flow(&mut net, client, &[server]);
    assert_eq!(net.node_mut(server).flow(hs).peer_addr(), addr(CLIENT));
    exchange(&mut net, client, h, server, hs, 20);

    let now = net.now();
    net.node_mut(client).flow(h).close(now);
    assert!(until(&mut net, 5, |n| n
        .node(server)
        .saw(hs, Event::PeerFinished)));
    let now = net.now();
    net.node_mut(server).flow(hs).close(now);
    assert!(until(&mut net, 30, |n| n
        .node(client)
        .saw(h, Event::Closed(CloseReason::Finished))
        && n.node(server).saw(hs, Event::Closed(CloseReason::Finished))));
    assert_eq!(
        net.node(client).endpoint.flow_count(),
        0,
        "client flow table empty"
    );
    assert_eq!(
        net.node(server).endpoint.flow_count(),
        0,
        "server flow table empty"
    );
}

/// A client behind a NAT reaches one of two replicas through a router; the SYN-ACK comes
/// back through the router, data goes direct.
struct Routed {
    net: Network<SalNode>,
    client: NodeId,
    router: NodeId,
    servers: [NodeId; 2],
    nat: usize,
}

fn routed(seed: u64, weights: [u32; 2]) -> Routed {
    let mut net = Network::new(seed);
    let mut router = router_node();
    let prefix = ServicePrefix::new(service(), 32).unwrap();
    let mut servers = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        let a: SocketAddr = format!("192.0.2.{}:54325", 10 + i).parse().unwrap();
        router
            .endpoint
            .table_mut()
            .insert(prefix, Rule::forward(a).with_weight(*w))
            .unwrap();
        let mut s = SalNode::new(config(10 + i as u8), a, Timestamp::ZERO);
        s.endpoint.listen(prefix, Protocol::UDP).unwrap();
        servers.push(net.add_node(s, &[a.ip()]));
    }
    let client = client_via("10.0.0.1:5000", ROUTER);
    let router = net.add_node(router, &[ip("192.0.2.1")]);
    let client = net.add_node(client, &[ip("10.0.0.1")]);
    let nat = net.add_nat(ip("198.51.100.1"), Duration::from_secs(30));
    net.place_behind_nat(ip("10.0.0.1"), nat);
    Routed {
        net,
        client,
        router,
        servers: [servers[0], servers[1]],
        nat,
    }
}

/// The server (of `servers`) that accepted the first flow, and that flow.
fn accepted_by_any(net: &mut Network<SalNode>, servers: &[NodeId]) -> (NodeId, FlowHandle) {
    assert!(until(net, 5, |n| servers
        .iter()
        .any(|&s| !n.node(s).accepted.is_empty())));
    let server = *servers
        .iter()
        .find(|&&s| !net.node(s).accepted.is_empty())
        .unwrap();
    (server, net.node(server).accepted[0])
}

/// Opens a flow from `client` and waits until it is established and one of `servers`
/// accepted it: (the client's flow, that server, the server's flow).
fn open_flow(
    net: &mut Network<SalNode>,
    client: NodeId,
    servers: &[NodeId],
) -> (FlowHandle, NodeId, FlowHandle) {
    let h = connect(net, client);
    assert!(established(net, client, h));
    let (server, hs) = accepted_by_any(net, servers);
    (h, server, hs)
}

/// Delivers a datagram straight to `node`, as if from `from` (an attacker's packet).
fn inject(net: &mut Network<SalNode>, node: NodeId, from: SocketAddr, payload: Vec<u8>) {
    let now = net.now();
    let dst = net.node(node).addr();
    Node::handle(
        net.node_mut(node),
        now,
        Datagram {
            src: from,
            dst,
            payload,
        },
    );
}

#[test]
fn through_a_router_and_a_nat_the_syn_ack_retraces_the_hop_and_data_goes_direct() {
    let Routed {
        mut net,
        client,
        router,
        servers,
        ..
    } = routed(2, [1, 1]);
    let (h, server, hs) = open_flow(&mut net, client, &servers);
    // The server sees the client at its NAT's public address.
    assert_eq!(
        net.node_mut(server).flow(hs).peer_addr().ip(),
        ip("198.51.100.1")
    );
    let seen_by_router = net.node(router).endpoint.stats().datagrams_received;
    exchange(&mut net, client, h, server, hs, 10);
    let stats = net.node(router).endpoint.stats();
    assert_eq!(stats.forwarded_syns, 1);
    assert_eq!(stats.forwarded_syn_acks, 1);
    assert_eq!(
        stats.datagrams_received, seen_by_router,
        "no data through the router"
    );
}

#[test]
fn the_router_spreads_new_flows_by_weight() {
    let Routed {
        mut net,
        client,
        servers,
        ..
    } = routed(3, [3, 1]);
    let handles: Vec<FlowHandle> = (0..200).map(|_| connect(&mut net, client)).collect();
    assert!(until(&mut net, 30, |n| handles
        .iter()
        .all(|&h| n.node(client).saw(h, Event::Connected))
        && n.node(servers[0]).accepted.len()
            + n.node(servers[1]).accepted.len()
            == 200));
    let a = net.node(servers[0]).accepted.len() as f64;
    let b = net.node(servers[1]).accepted.len() as f64;
    assert_eq!(a + b, 200.0);
    // Expected 150 / 50; allow a wide binomial margin (sd ~ 6).
    assert!(
        (120.0..=175.0).contains(&a),
        "weight-3 replica got {a}, weight-1 got {b}"
    );
}

#[test]
fn a_service_nobody_offers_is_refused_quickly() {
    let mut net = Network::new(4);
    net.add_node(router_node(), &[ip("192.0.2.1")]);
    let client = net.add_node(client_via("10.0.0.1:5000", ROUTER), &[ip("10.0.0.1")]);
    let h = connect(&mut net, client);
    // One round trip, not a SYN timeout.
    assert!(until(&mut net, 1, |n| n
        .node(client)
        .saw(h, Event::Closed(CloseReason::Refused))));
}

#[test]
fn a_lost_syn_ack_is_recovered_by_the_retransmitted_syn() {
    let Direct {
        mut net, client, ..
    } = direct(5);
    net.intercept(Some(drop_first(ControlFlags::SYN | ControlFlags::ACK)));
    let h = connect(&mut net, client);
    assert!(established(&mut net, client, h));
    assert_eq!(net.stats().intercepted, 1);
}

#[test]
fn a_lost_conn_ack_is_recovered_by_the_retransmitted_syn_ack() {
    let Direct {
        mut net,
        client,
        server,
    } = direct(6);
    net.intercept(Some(drop_first(ControlFlags::ACK)));
    let h = connect(&mut net, client);
    assert!(established(&mut net, client, h));
    assert!(until(&mut net, 10, |n| !n.node(server).accepted.is_empty()));
    assert_eq!(net.stats().intercepted, 1);
}

/// The client moves to a new address; the server validates it before switching.
fn migrate(seed: u64, drop_first_rsyn_ack: bool) {
    let Direct {
        mut net,
        client,
        server,
    } = direct(seed);
    let (h, _, hs) = open_flow(&mut net, client, &[server]);
    exchange(&mut net, client, h, server, hs, 5);

    if drop_first_rsyn_ack {
        net.intercept(Some(drop_first(ControlFlags::RSYN | ControlFlags::ACK)));
    }
    // Break before make: the old address is gone at once.
    net.set_owner(ip("10.0.0.1"), None);
    net.set_owner(ip("10.0.1.7"), Some(client));
    net.node_mut(client).move_to(addr("10.0.1.7:54325"));
    let new = addr("10.0.1.7:54325");
    assert!(until(&mut net, 30, |n| n
        .node(server)
        .saw(hs, Event::PathMigrated { peer: new })));
    assert_eq!(net.node_mut(server).flow(hs).peer_addr(), new);
    exchange(&mut net, client, h, server, hs, 5);
    if drop_first_rsyn_ack {
        assert_eq!(net.stats().intercepted, 1);
    }
}

#[test]
fn client_migration_is_validated_then_used() {
    migrate(7, false);
}

#[test]
fn a_lost_rsyn_ack_does_not_kill_the_flow() {
    migrate(8, true);
}

#[test]
fn nat_rebinding_is_detected_and_validated() {
    let Routed {
        mut net,
        client,
        servers,
        nat,
        ..
    } = routed(9, [1, 0]);
    let (h, server, hs) = open_flow(&mut net, client, &servers);
    let before = net.node_mut(server).flow(hs).peer_addr();
    net.nat_mut(nat).flush();
    // The client speaks first after the flush (its NAT maps a new port); the server sees
    // the new source, validates it, and moves there.
    assert!(net.node_mut(client).flow(h).send_datagram(b"ping"));
    assert!(until(&mut net, 10, |n| n.node(server).events.iter().any(
        |(f, e)| *f == hs && matches!(e, Event::PathMigrated { .. })
    )));
    let after = net.node_mut(server).flow(hs).peer_addr();
    assert_ne!(before, after, "new NAT port");
    assert_eq!(after.ip(), before.ip());
    assert_eq!(
        net.node_mut(server).flow(hs).recv_datagram().unwrap(),
        b"ping"
    );
    exchange(&mut net, client, h, server, hs, 5);
}

#[test]
fn forged_control_packets_from_an_off_path_attacker_do_nothing() {
    let Direct {
        mut net,
        client,
        server,
    } = direct(10);
    let (h, _, hs) = open_flow(&mut net, client, &[server]);
    // The attacker even knows both FlowIDs and the server's nonce-free layout: without the
    // flow key nothing verifies.
    let server_flow = net.node_mut(server).flow(hs).local_flow();
    let client_flow = net.node_mut(client).flow(h).local_flow();
    for (i, flags) in [
        ControlFlags::RST,
        ControlFlags::FIN | ControlFlags::ACK,
        ControlFlags::RSYN,
        ControlFlags::RST | ControlFlags::ACK,
    ]
    .into_iter()
    .enumerate()
    {
        for verno in 0..50u32 {
            let mut repr = SalRepr::new(Some(client_flow), Some(server_flow), Protocol::UDP);
            repr.control = Some(ControlRepr {
                flags,
                verno: verno.wrapping_mul(0x9e37_79b9),
                ackno: verno,
                nonce: Nonce([i as u8; 8]),
            });
            repr.mac = Some([verno as u8; 16]);
            inject(&mut net, server, addr(ATTACKER), emit(&repr, 0));
        }
    }
    // Data with guessed FlowIDs is dropped as unknown.
    for guess in 1..200u32 {
        let repr = SalRepr::new(FlowId::new(guess), FlowId::new(guess), Protocol::UDP);
        inject(&mut net, server, addr(ATTACKER), emit(&repr, 4));
    }
    let stats = net.node_mut(server).flow(hs).stats();
    assert_eq!(stats.drops.bad_mac, 200);
    assert!(net.node_mut(server).flow(hs).is_established());
    assert_eq!(net.node_mut(server).flow(hs).peer_addr(), addr(CLIENT));
    exchange(&mut net, client, h, server, hs, 3);
}
