//! The whole path in one process, through `run::Translator` (the production code path):
//! legacy TCP client → client translator → service router → server translator → legacy TCP
//! server, on loopback with real sockets. Transfers are checked by SHA-256; every wait is
//! bounded and polls a condition.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING.md)

mod common;

use core::net::SocketAddr;

use common::*;
use serval_stack::wire::{ServicePrefix, name};
use translator::demo::{DemoOptions, PortReservation};
use translator::run::Translator;

fn prefix(n: &str) -> ServicePrefix {
    ServicePrefix::exact(name::service_id_for_name(n).unwrap())
}

/// A server translator in front of `backend`, registering `service` with `router`.
async fn server_translator(router: SocketAddr, service: &str, backend: SocketAddr) -> Translator {
    let t = start(&format!(
        "serval:\n  bind: 127.0.0.1:0\n  routers: [\"{router}\"]\n  key: {{id: 1, env: TEST_KEY}}\nserver:\n  services:\n    - name: svc\n      prefix: \"name:{service}\"\n      backends: [{{address: \"{backend}\"}}]\ndrain: {{grace_period: 1m}}\n"
    ));
    t.wait_registered(WAIT).await.unwrap();
    t
}

fn client_translator(router: SocketAddr, listen: &PortReservation, service: &str) -> String {
    format!(
        "serval: {{bind: 127.0.0.1:0, routers: [\"{router}\"]}}\nclient:\n  connect_timeout: 5s\n  listeners:\n    - name: web\n      listen: \"{}\"\n      service: \"name:{service}\"\ndrain: {{grace_period: 1m}}\n",
        listen.addr()
    )
}

fn web(t: &Translator) -> SocketAddr {
    t.client().unwrap().listener_addr("web").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_mebibyte_transfers_both_ways_with_half_close_are_byte_exact() {
    let router = router();
    let (legacy, _l) = legacy_server("legacy").await;
    let server = server_translator(router.serval_addr(), "svc.test", legacy).await;
    let port = reserve();
    let client = start(&client_translator(router.serval_addr(), &port, "svc.test"));

    // The legacy server answers only after the client's half-close reached it; four
    // connections at once.
    let listen = web(&client);
    let mut tasks = Vec::new();
    for i in 0..4u64 {
        let up = (3 << 20) + i * 1000 + 5;
        let down = (4 << 20) + i * 7;
        tasks.push(tokio::spawn(async move {
            (up, down, exchange(listen, up, down).await)
        }));
    }
    for t in tasks {
        let (up, down, x) = tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        let x = x.unwrap();
        assert_eq!(x.server_saw, x.expected, "upload of {up}");
        x.assert_exact(down);
        assert_eq!(x.tag, "legacy");
    }
    until("client relays finished", || {
        client.client().unwrap().stats().outcomes.finished == 4
    })
    .await;
    until("server flows finished", || {
        server.server_stats().active == 0
    })
    .await;
    let s = server.server_stats();
    assert_eq!(s.accepted, 4, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_in_one_process_on_one_endpoint() {
    let (legacy, _l) = legacy_server("legacy").await;
    let port = reserve();
    let t = start(&format!(
        "serval: {{bind: 127.0.0.1:0}}\nrouter: {{keys: [{{id: 1, env: TEST_KEY}}]}}\nserver:\n  services:\n    - {{name: web, prefix: \"name:web.test\", backends: [{{address: \"{legacy}\"}}]}}\nclient:\n  listeners:\n    - {{name: web, listen: \"{}\", service: \"name:web.test\"}}\n",
        port.addr()
    ));
    // The local listener is found in the endpoint's own table: no router round trip.
    until("the server role listens", || {
        t.endpoint().with_table(|tb| {
            tb.lookup(&name::service_id_for_name("web.test").unwrap())
                .is_some()
        })
    })
    .await;
    let x = tokio::time::timeout(WAIT, exchange(web(&t), 1 << 20, 1 << 20))
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(1 << 20);
    assert!(t.drain().await.clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_switches_new_flows_to_another_service_while_one_in_progress_continues() {
    let router = router();
    let r = router.serval_addr();
    let (la, _la) = legacy_server("A").await;
    let (lb, _lb) = legacy_server("B").await;
    let _sa = server_translator(r, "a.test", la).await;
    let _sb = server_translator(r, "b.test", lb).await;
    let port = reserve();
    let (l, s) = loaded(&client_translator(r, &port, "a.test"));
    let mut client = Translator::start(l, s).unwrap();
    let listen = web(&client);

    let held = Held::open(listen, 2 << 20, 2 << 20).await.unwrap();
    until("the held flow is relayed", || {
        client.client().unwrap().stats().relayed == 1
    })
    .await;
    let (l, s) = loaded(&client_translator(r, &port, "b.test"));
    client.reload(l, s).unwrap();

    let x = tokio::time::timeout(WAIT, exchange(listen, 1 << 20, 1000))
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(1000);
    assert_eq!(x.tag, "B");
    let x = tokio::time::timeout(WAIT, held.finish())
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(2 << 20);
    assert_eq!(
        x.tag, "A",
        "the flow from before the reload kept its service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_translator_finishes_its_flow_and_takes_no_new_ones() {
    let router = router();
    let r = router.serval_addr();
    let (legacy, _l) = legacy_server("legacy").await;
    let server = server_translator(r, "svc.test", legacy).await;
    let port = reserve();
    let client = start(&client_translator(r, &port, "svc.test"));
    let listen = web(&client);

    let held = Held::open(listen, 1 << 20, 2 << 20).await.unwrap();
    until("the server accepted the flow", || {
        server.server_stats().accepted == 1
    })
    .await;
    let drained = tokio::spawn(server.drain());
    let rt = router.router().unwrap().clone();
    until("the registration is withdrawn", || {
        rt.instances(&prefix("svc.test")).is_empty()
    })
    .await;
    assert!(
        refused(listen).await,
        "no instance: the new flow is refused"
    );
    assert!(
        !drained.is_finished(),
        "the drain waits for the flow in progress"
    );

    let x = tokio::time::timeout(WAIT, held.finish())
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(2 << 20);
    let report = tokio::time::timeout(WAIT, drained).await.unwrap().unwrap();
    assert!(report.clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_passes_its_own_checks() {
    let options = DemoOptions {
        requests: 32,
        download: 2 << 20,
        upload: 1 << 20,
        listen: None,
    };
    let report = tokio::time::timeout(WAIT * 2, translator::demo::run(&options))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("demo OK"), "{report}");
    assert!(report.contains("replica-A served"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_role_runs_its_dns_responder_on_the_policy() {
    let router = router();
    let (nat, dns) = (reserve(), reserve());
    let t = start(&format!(
        "serval: {{bind: 127.0.0.1:0, routers: [\"{}\"]}}\nclient:\n  listeners:\n    - {{name: nat, listen: \"{}\", mode: redirect}}\n  dns:\n    listen: \"{}\"\n    names: [{{match: \"*.svc.test\"}}]\n",
        router.serval_addr(),
        nat.addr(),
        dns.addr()
    ));
    // A query for a mapped name: one A record from the synthetic pool (198.18.0.0/15).
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["www", "svc", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut answer = [0u8; 512];
    let n = tokio::time::timeout(WAIT, async {
        // The responder may still be binding: ask again until it answers.
        loop {
            sock.send_to(&q, dns.addr()).await.unwrap();
            if let Ok(Ok((n, _))) = tokio::time::timeout(
                core::time::Duration::from_millis(200),
                sock.recv_from(&mut answer),
            )
            .await
            {
                break n;
            }
        }
    })
    .await
    .unwrap();
    let a = &answer[..n];
    assert_eq!(&a[..2], &[0x12, 0x34]);
    assert_eq!(a[3] & 0x0f, 0, "NOERROR");
    assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1, "one answer");
    let ip = core::net::Ipv4Addr::new(a[n - 4], a[n - 3], a[n - 2], a[n - 1]);
    assert_eq!(ip.octets()[..1], [198]);
    assert!(matches!(ip.octets()[1], 18 | 19), "{ip}");
    assert!(t.dns_stats() != Default::default());
    assert!(t.drain().await.clean);
}
