//! Slowloris against the client-side translator (issue 8, item 3): many slow legacy clients
//! hit the per-source limit and the first-byte and idle timeouts, never memory; a legit
//! client keeps being served, hash-equal.
//!
//! In-process on loopback, through the production path (`run::Translator`): a router, a
//! server translator in front of a legacy server, and client translators with the limits
//! under test. Clients from different source addresses are different 127.0.0.x addresses.
//! Waits poll the role's counters with a hang guard; nothing sleeps to synchronise and no
//! assertion is about time.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING.md)

mod common;

use core::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use translator::run::Translator;

const SERVICE: &str = "name:slow.test";

/// Silent connections the attacker opens from its one address.
const SLOW: usize = 24;
/// The per-source limit under test.
const PER_SOURCE: usize = 8;

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const LEGIT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A router and a server translator fronting a legacy server for [`SERVICE`].
async fn service() -> (Translator, Translator, tokio::task::JoinHandle<()>) {
    let router = router();
    let (legacy, task) = legacy_server("legacy").await;
    let server = start(&format!(
        "serval:\n  bind: 127.0.0.1:0\n  routers: [\"{}\"]\n  key: {{id: 1, env: TEST_KEY}}\nserver:\n  services:\n    - name: slow\n      prefix: \"{SERVICE}\"\n      backends: [{{address: \"{legacy}\"}}]\n",
        router.serval_addr()
    ));
    (router, server, task)
}

fn listener(t: &Translator) -> SocketAddr {
    t.client().unwrap().listener_addr("web").unwrap()
}

/// A legit client from [`LEGIT`]: a full exchange, checked by SHA-256 both ways. Retried
/// while the server translator's registration has not reached the router yet.
async fn legit(addr: SocketAddr) {
    for _ in 0..200 {
        // Before the registration, the translator resets at once (maybe before `connect`
        // returned): try again.
        let attempt = async {
            let s = connect_from(LEGIT, addr).await?;
            exchange_on(s, 200_000, 300_000).await
        };
        match tokio::time::timeout(WAIT, attempt).await {
            Ok(Ok(x)) if !x.server_saw.is_empty() => {
                x.assert_exact(300_000);
                return;
            }
            _ => {
                let mut tick = tokio::time::interval(core::time::Duration::from_millis(50));
                tick.tick().await;
                tick.tick().await;
            }
        }
    }
    panic!("the legit client was never served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_is_capped_and_others_are_served() {
    let (router, server, _legacy) = service().await;
    let port = reserve();
    let client = start(&format!(
        "serval: {{bind: 127.0.0.1:0, routers: [\"{}\"]}}\nclient:\n  max_connections_per_source: {PER_SOURCE}\n  listeners:\n    - name: web\n      listen: \"{}\"\n      service: \"{SERVICE}\"\n",
        router.serval_addr(),
        port.addr()
    ));
    let addr = listener(&client);
    let stats = || client.client().unwrap().stats();
    // The service is reachable (the server translator's registration reached the router),
    // so the admitted slow connections get their flows and stay.
    legit(addr).await;
    until("the first legit relay finished", || {
        stats().outcomes.finished >= 1
    })
    .await;
    let accepted = stats().accepted;

    // The attacker connects SLOW times and sends nothing; a reader per connection counts
    // the ones the translator ends, and how (a reset, not an end of stream).
    let ended = Arc::new(AtomicUsize::new(0));
    let resets = Arc::new(AtomicUsize::new(0));
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..SLOW {
        let (ended, resets) = (ended.clone(), resets.clone());
        let mut s = match connect_from(ATTACKER, addr).await {
            Ok(s) => s,
            // Refused so fast that the reset beat the end of `connect`.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                resets.fetch_add(1, Ordering::Relaxed);
                ended.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) => panic!("connect: {e}"),
        };
        slow.spawn(async move {
            let mut b = [0u8; 1];
            let r = s.read(&mut b).await;
            assert!(!matches!(r, Ok(1)), "nothing is sent to a slow client");
            resets.fetch_add(usize::from(r.is_err()), Ordering::Relaxed);
            ended.fetch_add(1, Ordering::Relaxed);
        });
    }
    until(
        "the excess slow connections refused, the others held",
        || {
            let s = stats();
            s.accepted == accepted + SLOW as u64
                && s.refused_source_full == (SLOW - PER_SOURCE) as u64
                && s.active == PER_SOURCE as u64
                && ended.load(Ordering::Relaxed) == SLOW - PER_SOURCE
        },
    )
    .await;
    assert_eq!(
        resets.load(Ordering::Relaxed),
        SLOW - PER_SOURCE,
        "refused with a reset"
    );
    assert_eq!(stats().refused_global_full, 0);

    // Another source is not affected.
    legit(addr).await;
    until("the second legit relay finished", || {
        stats().outcomes.finished >= 2
    })
    .await;

    // The attacker's slots come back when its connections close, and are usable again.
    slow.abort_all();
    while slow.join_next().await.is_some() {}
    until("the slow connections released", || stats().active == 0).await;
    let s = connect_from(ATTACKER, addr).await.unwrap();
    let x = tokio::time::timeout(WAIT, exchange_on(s, 1000, 1000))
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(1000);
    until("every connection closed", || stats().active == 0).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_clients_are_closed_by_the_timeouts() {
    let (router, server, _legacy) = service().await;
    let port = reserve();
    let client = start(&format!(
        "serval: {{bind: 127.0.0.1:0, routers: [\"{}\"]}}\nclient:\n  listeners:\n    - name: web\n      listen: \"{}\"\n      service: \"{SERVICE}\"\n      first_byte_timeout: 1s\n      idle_timeout: 2s\n",
        router.serval_addr(),
        port.addr()
    ));
    let addr = listener(&client);
    let stats = || client.client().unwrap().stats();

    // A legit client first (it also waits out the server's registration).
    legit(addr).await;
    until("the legit relay finished", || {
        stats().outcomes.finished >= 1
    })
    .await;
    let flows_before = server.server_stats().accepted;
    let relayed_before = stats().relayed;

    // Silent clients: each is reset by the first-byte timeout, and none opened a flow.
    let mut slow: Vec<TcpStream> = Vec::new();
    for _ in 0..SLOW {
        slow.push(connect_from(ATTACKER, addr).await.unwrap());
    }
    for s in &mut slow {
        assert!(wait_end(s).await.is_err(), "a silent client is reset");
    }
    until("every first-byte timeout counted", || {
        stats().first_byte_timeout == SLOW as u64
    })
    .await;
    assert_eq!(
        server.server_stats().accepted,
        flows_before,
        "a silent client costs no Serval flow"
    );

    // A client that sends one byte and stalls: relayed, then ended by the idle timeout.
    let mut stalled = connect_from(ATTACKER, addr).await.unwrap();
    stalled.write_all(&[0]).await.unwrap();
    assert!(
        wait_end(&mut stalled).await.is_err(),
        "a stalled client is reset"
    );
    until("the idle timeout counted", || {
        stats().outcomes.idle_timeout == 1
    })
    .await;

    // A client that connects and leaves without a byte is counted as such.
    drop(connect_from(ATTACKER, addr).await.unwrap());
    until("the empty connection counted", || {
        stats().closed_before_data == 1
    })
    .await;

    until("nothing held", || stats().active == 0).await;
    let s = stats();
    assert_eq!(
        s.relayed,
        relayed_before + 1,
        "of the slow clients, only the stalled one (it sent a byte) got a flow"
    );
    legit(addr).await;
    drop(server);
}
