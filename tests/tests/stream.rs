//! Reliable streams over SAL flows on the simulated network: bytes are hash-checked end to
//! end, under loss, reordering and duplication, through a NAT and a router, across a client
//! move, with half-close in each direction.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING.md)

use std::time::Duration;

use serval_stack::sal::{Event, FlowHandle};
use serval_stack::time::Timestamp;
use serval_stack::wire::sal::Protocol;
use serval_stack::wire::{ServiceId, ServicePrefix};
use serval_tests::node::{SalNode, StreamApp};
use serval_tests::sim::{LinkProfile, Network, NodeId};
use serval_tests::util::{addr, ip, seeded_config as config};

struct Setup {
    net: Network<SalNode>,
    client: NodeId,
    server: NodeId,
    h: FlowHandle,
}

/// A client and a server one hop apart on `link`; the client sends `up` bytes and the
/// server `down` bytes, each half-closing after its last byte.
fn transfer(seed: u64, link: LinkProfile, up: u64, down: u64) -> Setup {
    let mut net = Network::new(seed);
    net.set_default_link(link);
    let service = ServiceId::from_u32(80);
    let mut server = SalNode::new(config(2), addr("192.0.2.10:54325"), Timestamp::ZERO);
    server
        .endpoint
        .listen(ServicePrefix::exact(service), Protocol::TCP)
        .unwrap();
    server.accept_app = Some((seed ^ 0xdead, down, true));
    let mut client = SalNode::new(config(1), addr("10.0.0.1:54325"), Timestamp::ZERO);
    let now = Timestamp::ZERO;
    let (h, flow) = client
        .endpoint
        .connect_to(now, service, addr("192.0.2.10:54325"), Protocol::TCP)
        .unwrap();
    client.add_flow(h, flow);
    client.apps.insert(h, StreamApp::new(seed, up, true));
    let server = net.add_node(server, &[ip("192.0.2.10")]);
    let client = net.add_node(client, &[ip("10.0.0.1")]);
    Setup {
        net,
        client,
        server,
        h,
    }
}

/// Runs until both sides saw the other's end of stream; checks both hashes.
fn finish(s: &mut Setup, secs: u64) {
    let (client, server, h) = (s.client, s.server, s.h);
    let deadline = s.net.now() + Duration::from_secs(secs);
    let done = s.net.run_until(deadline, |n| {
        let c = &n.node(client).apps[&h];
        let Some(&hs) = n.node(server).accepted.first() else {
            return false;
        };
        let srv = &n.node(server).apps[&hs];
        c.eof && srv.eof
    });
    let c = &s.net.node(client).apps[&h];
    let hs = s.net.node(server).accepted[0];
    let srv = &s.net.node(server).apps[&hs];
    assert!(
        done,
        "transfer incomplete at {:?}: client sent {} got {}, server sent {} got {}",
        s.net.now(),
        c.sent,
        c.received,
        srv.sent,
        srv.received
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
}

#[test]
fn clean_transfer_both_ways_with_half_close() {
    let mut s = transfer(1, LinkProfile::default(), 4 << 20, 1 << 20);
    finish(&mut s, 60);
    // Both ends close: the flows leave the tables.
    let (client, server) = (s.client, s.server);
    assert!(s.net.run_until(s.net.now() + Duration::from_secs(30), |n| {
        n.node(client).endpoint.flow_count() == 0 && n.node(server).endpoint.flow_count() == 0
    }));
}

#[test]
fn upload_only_then_the_server_answers_after_the_clients_fin() {
    // The client finishes first; the server keeps sending on its half for a while.
    let mut s = transfer(2, LinkProfile::default(), 64 << 10, 2 << 20);
    finish(&mut s, 60);
}

#[test]
fn transfer_under_loss_reordering_and_duplication() {
    let link = LinkProfile {
        loss: 0.02,
        duplicate: 0.01,
        jitter: Duration::from_millis(4),
        rate: Some(12_500_000),
        ..LinkProfile::default()
    };
    let mut s = transfer(3, link, 2 << 20, 256 << 10);
    finish(&mut s, 300);
}

#[test]
fn the_stream_survives_a_client_move_mid_transfer() {
    let link = LinkProfile {
        rate: Some(12_500_000),
        ..LinkProfile::default()
    };
    let mut s = transfer(4, link, 8 << 20, 0);
    let client = s.client;
    let h = s.h;
    // Let a few MB through, then move (break before make).
    assert!(s.net.run_until(
        Timestamp::from_millis(60_000),
        |n| n.node(client).apps[&h].sent > 2 << 20
    ));
    s.net.set_owner(ip("10.0.0.1"), None);
    s.net.set_owner(ip("10.0.1.7"), Some(client));
    s.net.node_mut(client).move_to(addr("10.0.1.7:54325"));
    finish(&mut s, 300);
    let server = s.server;
    let hs = s.net.node(server).accepted[0];
    assert!(s.net.node(server).saw(
        hs,
        Event::PathMigrated {
            peer: addr("10.0.1.7:54325")
        }
    ));
    eprintln!("{:?} {:?}", s.net.now(), s.net.stats());
}
