//! The tokio driver on real loopback UDP sockets: bulk transfer, many concurrent flows,
//! half-close, refusal, a full accept queue, a service router spreading connects by weight,
//! registration with a router (and withdrawal), a DELAY verdict, and rebinding mid-transfer.
//!
//! No sleeps synchronise anything; every wait is bounded by `tokio::time::timeout`, and
//! every payload is generated from a seed and compared by SHA-256 at both ends.

#![cfg(feature = "rt-tokio")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serval_stack::driver::{Endpoint, ServalStream};
use serval_stack::sal::EndpointConfig;
use serval_stack::service_table::Rule;
use serval_stack::wire::{ServiceId, ServicePrefix};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LOCALHOST: &str = "127.0.0.1:0";

fn service(n: u32) -> ServiceId {
    ServiceId::from_u32(n)
}

fn bind(forwarding: bool) -> Endpoint {
    let mut config = EndpointConfig::default();
    config.forwarding = forwarding;
    Endpoint::bind(LOCALHOST.parse().expect("an address"), config).expect("bind on loopback")
}

/// The wall clock, read only to report throughput (never to synchronise).
#[allow(clippy::disallowed_methods)] // a measurement in a test, not the protocol core
fn wall_clock() -> std::time::Instant {
    std::time::Instant::now()
}

/// Writes `len` bytes generated from `seed`; returns their SHA-256.
async fn send_pattern(stream: &mut ServalStream, seed: u64, len: usize) -> [u8; 32] {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut hash = Sha256::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        rng.fill_bytes(&mut chunk[..n]);
        stream.write_all(&chunk[..n]).await.expect("write");
        hash.update(&chunk[..n]);
        left -= n;
    }
    hash.finalize().into()
}

/// Reads to the end of the stream; returns the byte count and SHA-256.
async fn recv_all(stream: &mut ServalStream) -> (usize, [u8; 32]) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf).await.expect("read");
        if n == 0 {
            return (total, hash.finalize().into());
        }
        hash.update(&buf[..n]);
        total += n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_1_gib_hash_matches() {
    const LEN: usize = 1 << 30;
    let server = bind(false);
    let client = bind(false);
    let listener = server.listen(ServicePrefix::exact(service(1))).unwrap();
    let server_addr = server.local_addr();
    let receiver = tokio::spawn(async move {
        let mut s = listener.accept().await.expect("accept");
        assert_eq!(s.peer_service(), service(1));
        recv_all(&mut s).await
    });
    let start = wall_clock();
    let sent = timeout(Duration::from_secs(120), async {
        let mut c = client
            .connect_to(service(1), server_addr)
            .await
            .expect("connect");
        assert_eq!(c.peer_addr(), server_addr);
        let h = send_pattern(&mut c, 7, LEN).await;
        c.shutdown().await.expect("shutdown");
        h
    })
    .await
    .expect("sent in time");
    let (n, got) = timeout(Duration::from_secs(120), receiver)
        .await
        .expect("received in time")
        .expect("receiver task");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(n, LEN);
    assert_eq!(got, sent, "SHA-256 differs");
    println!(
        "1 GiB over loopback in {secs:.2} s: {:.1} MB/s; client {:?}; server {:?}",
        LEN as f64 / secs / 1e6,
        client.driver_stats(),
        server.driver_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_flows_of_1_mib() {
    const FLOWS: u64 = 1000;
    const LEN: usize = 1 << 20;
    let server = bind(false);
    let client = bind(false);
    let listener = server.listen(ServicePrefix::exact(service(2))).unwrap();
    let server_addr = server.local_addr();
    // The server reads each flow to its end and answers with the SHA-256 it computed.
    let acceptor = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..FLOWS {
            let mut s = listener.accept().await.expect("accept");
            tasks.push(tokio::spawn(async move {
                let (n, h) = recv_all(&mut s).await;
                assert_eq!(n, LEN);
                s.write_all(&h).await.expect("write hash");
                s.shutdown().await.expect("shutdown");
            }));
        }
        for t in tasks {
            t.await.expect("server flow");
        }
    });
    let start = wall_clock();
    let mut clients = Vec::new();
    for i in 0..FLOWS {
        let client = client.clone();
        clients.push(tokio::spawn(async move {
            let mut c = client
                .connect_to(service(2), server_addr)
                .await
                .expect("connect");
            let sent = send_pattern(&mut c, i, LEN).await;
            c.shutdown().await.expect("shutdown");
            let mut echoed = Vec::new();
            c.read_to_end(&mut echoed).await.expect("read hash");
            assert_eq!(echoed, sent, "flow {i}: SHA-256 differs");
        }));
    }
    timeout(Duration::from_secs(120), async {
        for c in clients {
            c.await.expect("client flow");
        }
        acceptor.await.expect("acceptor");
    })
    .await
    .expect("all flows done in time");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "1000 x 1 MiB in {secs:.2} s: {:.1} MB/s aggregate",
        (FLOWS as usize * LEN) as f64 / secs / 1e6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_in_both_directions() {
    let server = bind(false);
    let client = bind(false);
    let listener = server.listen(ServicePrefix::exact(service(3))).unwrap();
    let server_addr = server.local_addr();
    timeout(Duration::from_secs(30), async {
        // Client finishes first: the server still answers after seeing the end.
        let mut c = client.connect_to(service(3), server_addr).await.unwrap();
        let mut s = listener.accept().await.unwrap();
        c.write_all(b"request").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        s.write_all(b"response after the client's FIN")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response after the client's FIN");
        // A write after shutdown fails.
        assert!(c.write_all(b"late").await.is_err());

        // Server finishes first: the client keeps sending after seeing the end.
        let mut c = client.connect_to(service(3), server_addr).await.unwrap();
        let mut s = listener.accept().await.unwrap();
        s.write_all(b"greeting").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"greeting");
        let sent = send_pattern(&mut c, 99, 256 * 1024).await;
        c.shutdown().await.unwrap();
        let (n, h) = recv_all(&mut s).await;
        assert_eq!((n, h), (256 * 1024, sent));
    })
    .await
    .expect("half-close exchanges done in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_service_is_refused_quickly() {
    let server = bind(false);
    let client = bind(false);
    let _other = server.listen(ServicePrefix::exact(service(4))).unwrap();
    // A refusal is one round trip; giving up on an unanswered SYN takes about a minute of
    // retransmissions. 10 s separates the two with room for a loaded CI machine.
    let r = timeout(
        Duration::from_secs(10),
        client.connect_to(service(5), server.local_addr()),
    )
    .await
    .expect("refused, not left to the handshake timeout");
    assert_eq!(
        r.expect_err("nothing listens").kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    // Nothing in the client's table at all: no route, at once.
    let r = client.connect(service(5)).await;
    assert_eq!(r.expect_err("no rule").kind(), std::io::ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_spreads_connects_over_two_servers_by_weight() {
    const CONNECTS: usize = 80;
    let prefix = ServicePrefix::new(service(0x0600_0000), 8).unwrap();
    let router = bind(true);
    let servers = [bind(false), bind(false)];
    let client = bind(false);
    let addrs: Vec<SocketAddr> = servers.iter().map(Endpoint::local_addr).collect();
    for (a, weight) in addrs.iter().zip([3, 1]) {
        router.with_table(|t| {
            t.insert(prefix, Rule::forward(*a).with_weight(weight))
                .unwrap()
        });
    }
    let router_addr = router.local_addr();
    client.with_table(|t| {
        t.insert(ServicePrefix::DEFAULT, Rule::forward(router_addr))
            .unwrap()
    });
    let listeners: Vec<_> = servers.iter().map(|s| s.listen(prefix).unwrap()).collect();
    let accepted: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut acceptors = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let accepted = accepted.clone();
        acceptors.push(tokio::spawn(async move {
            while let Ok(mut s) = l.accept().await {
                accepted[i].fetch_add(1, Ordering::Relaxed);
                // One byte tells the client which server it reached.
                s.write_all(&[i as u8]).await.unwrap();
                s.shutdown().await.unwrap();
            }
        }));
    }
    let mut per_server = [0usize; 2];
    timeout(Duration::from_secs(30), async {
        for k in 0..CONNECTS {
            let id = service(0x0600_0000 + k as u32);
            let mut c = client
                .connect(id)
                .await
                .expect("connect through the router");
            let mut which = Vec::new();
            c.read_to_end(&mut which).await.unwrap();
            let i = usize::from(which[0]);
            assert_eq!(c.peer_addr(), addrs[i], "the server answered directly");
            per_server[i] += 1;
        }
    })
    .await
    .expect("connects done in time");
    for a in acceptors {
        a.abort();
    }
    let counts = [0, 1].map(|i| accepted[i].load(Ordering::Relaxed));
    assert_eq!(counts, per_server);
    // Weights 3:1 over 80 connects: 60 expected on the first, standard deviation 3.9; the
    // bounds below are more than 3.9 deviations out (false failure < 1e-4), and far from
    // the 40 an even split would give.
    assert!(
        (46..=74).contains(&per_server[0]) && per_server[1] >= 6,
        "spread {per_server:?}"
    );
    println!(
        "router spread {per_server:?}; router stats {:?}",
        router.driver_stats()
    );
}

/// Waits until `cond` holds, checking every few milliseconds, for at most `secs` seconds:
/// the state it watches (a registration acknowledged, a SYN parked) changes inside the
/// endpoint task, which offers no future to await for it.
async fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    timeout(Duration::from_secs(secs), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_accept_queue_refuses_until_the_application_accepts() {
    let server = bind(false);
    let client = bind(false);
    let listener = server
        .listen_with_backlog(ServicePrefix::exact(service(7)), 2)
        .unwrap();
    let to = server.local_addr();
    timeout(Duration::from_secs(30), async {
        // Two handshakes complete into the queue without the application accepting.
        let mut queued = Vec::new();
        for _ in 0..2 {
            queued.push(client.connect_to(service(7), to).await.expect("queued"));
        }
        // The third is reset once its handshake completes into the full queue: the
        // client's connect may already have returned (it completes on the SYN-ACK), so the
        // refusal shows on connect or on the first read.
        let kind = match client.connect_to(service(7), to).await {
            Err(e) => e.kind(),
            Ok(mut refused) => {
                let mut buf = [0u8; 1];
                match refused.read(&mut buf).await {
                    Err(e) => e.kind(),
                    Ok(n) => panic!("read {n} bytes from a refused flow"),
                }
            }
        };
        assert!(
            matches!(
                kind,
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
            ),
            "{kind:?}"
        );
        // Accepting one makes room for one more, and the queued flows carry data.
        let mut first = listener.accept().await.unwrap();
        let mut late = client.connect_to(service(7), to).await.expect("room again");
        queued[0].write_all(b"first").await.unwrap();
        queued[0].shutdown().await.unwrap();
        let mut got = Vec::new();
        first.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"first");
        late.write_all(b"late").await.unwrap();
        late.shutdown().await.unwrap();
        let mut second = listener.accept().await.unwrap();
        let mut third = listener.accept().await.unwrap();
        let mut got = Vec::new();
        third.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"late");
        drop(second.shutdown().await);
    })
    .await
    .expect("done in time");
    assert_eq!(server.driver_stats().refused_backlog, 1);
}

const KEY_ID: u32 = 1;

fn key() -> serval_stack::control::SharedKey {
    serval_stack::control::SharedKey::new(&[0x5e; 32]).expect("a valid key")
}

/// A router accepting registrations signed with [`key`].
fn router_endpoint() -> Endpoint {
    use serval_stack::control::{DelayConfig, RegistryConfig};
    let router = bind(true);
    let registry = RegistryConfig::new()
        .with_key(KEY_ID, key())
        .expect("a valid key id");
    router
        .enable_router(registry, DelayConfig::default())
        .expect("router role");
    router
}

/// A server registering its listeners with `router` under `key`.
fn registered_server(router: SocketAddr, key: serval_stack::control::SharedKey) -> Endpoint {
    use serval_stack::control::RegistrantConfig;
    let server = bind(false);
    server
        .enable_registrant(RegistrantConfig::new(KEY_ID, key), &[router])
        .expect("registrant role");
    server
}

/// Serves each accepted stream one byte (`tag`) and closes it.
fn serve_tag(
    listener: serval_stack::driver::ServalListener,
    tag: u8,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(mut s) = listener.accept().await {
            tokio::spawn(async move {
                drop(s.write_all(&[tag]).await);
                drop(s.shutdown().await);
            });
        }
    })
}

/// Connects to `id` through the client's table and returns the byte the server sent.
async fn which_server(client: &Endpoint, id: ServiceId) -> u8 {
    let mut c = client
        .connect(id)
        .await
        .expect("connect through the router");
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.expect("read");
    got[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_register_with_the_router_and_withdraw_on_close() {
    let prefix = ServicePrefix::new(service(0x0700_0000), 8).unwrap();
    let router = router_endpoint();
    let router_addr = router.local_addr();
    let a = registered_server(router_addr, key());
    let b = registered_server(router_addr, key());
    let listener_a = a.listen(prefix).unwrap();
    let listener_b = b.listen(prefix).unwrap();
    // A server with the wrong key is never registered.
    let wrong = serval_stack::control::SharedKey::new(&[0x11; 32]).unwrap();
    let intruder = registered_server(router_addr, wrong);
    let _intruder_listener = intruder.listen(prefix).unwrap();
    wait_until(10, "both servers are registered", || {
        a.is_registered(router_addr, &prefix) && b.is_registered(router_addr, &prefix)
    })
    .await;
    let client = bind(false);
    client.with_table(|t| {
        t.insert(ServicePrefix::DEFAULT, Rule::forward(router_addr))
            .unwrap()
    });
    let serve_a = serve_tag(listener_a, b'a');
    let _serve_b = serve_tag(listener_b, b'b');
    let mut seen = Vec::new();
    timeout(Duration::from_secs(30), async {
        for k in 0..40 {
            seen.push(which_server(&client, service(0x0700_0000 + k)).await);
        }
    })
    .await
    .expect("connects done in time");
    assert!(seen.contains(&b'a') && seen.contains(&b'b'), "{seen:?}");

    // The intruder's REGISTER arrives in its own time: wait until the router has seen
    // (and refused) it, then check it never got a lease.
    wait_until(10, "the router refused the intruder", || {
        router.with_control(|c| c.registry().map(|r| r.stats().dropped_bad_mac)) >= Some(1)
    })
    .await;
    assert!(!intruder.is_registered(router_addr, &prefix));
    let leases = router.with_control(|c| c.registry().map(|r| r.stats().leases));
    assert_eq!(leases, Some(2), "the intruder holds no lease");

    // A's listener goes: its registration is withdrawn at once, not left to expire.
    serve_a.abort();
    wait_until(10, "the router dropped A's lease", || {
        router.with_control(|c| c.registry().map(|r| r.stats().leases)) == Some(1)
    })
    .await;
    timeout(Duration::from_secs(30), async {
        for k in 0..10 {
            assert_eq!(which_server(&client, service(0x0700_1000 + k)).await, b'b');
        }
    })
    .await
    .expect("connects done in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_syn_waits_for_the_verdict() {
    let prefix = ServicePrefix::new(service(0x0800_0000), 8).unwrap();
    let router = router_endpoint();
    let router_addr = router.local_addr();
    let server = bind(false);
    let listener = server.listen(prefix).unwrap();
    let _serve = serve_tag(listener, b's');
    // Nothing serves the prefix yet: SYNs wait at the router.
    router.with_table(|t| t.insert(prefix, Rule::delay().with_priority(0)).unwrap());
    let client = bind(false);
    client.with_table(|t| {
        t.insert(ServicePrefix::DEFAULT, Rule::forward(router_addr))
            .unwrap()
    });
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { which_server(&client, service(0x0800_0001)).await }
    });
    wait_until(10, "the SYN is parked", || {
        router.with_control(|c| c.delay().map(|q| q.len())) == Some(1)
    })
    .await;
    // A replica appears at a higher priority; the verdict sends the SYN on to it.
    let server_addr = server.local_addr();
    router.with_table(|t| {
        t.insert(prefix, Rule::forward(server_addr).with_priority(1))
            .unwrap()
    });
    assert_eq!(router.delay_verdict(&prefix, true), 1);
    let tag = timeout(Duration::from_secs(10), waiting)
        .await
        .expect("connected once released")
        .expect("client task");
    assert_eq!(tag, b's');
    assert_eq!(router.stats().syns_delayed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinding_mid_transfer_keeps_the_flow() {
    const LEN: usize = 64 << 20;
    let server = bind(false);
    let client = bind(false);
    let listener = server.listen(ServicePrefix::exact(service(9))).unwrap();
    let server_addr = server.local_addr();
    let receiver = tokio::spawn(async move {
        let mut s = listener.accept().await.expect("accept");
        let got = recv_all(&mut s).await;
        (got, s.stats().expect("flow stats"), s.peer_addr())
    });
    let sent = timeout(Duration::from_secs(120), async {
        let mut c = client
            .connect_to(service(9), server_addr)
            .await
            .expect("connect");
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut hash = Sha256::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut written = 0;
        while written < LEN {
            if written == LEN / 4 {
                // The host moves to another address: a new socket, the flow follows.
                let new = client
                    .rebind("127.0.0.2:0".parse().unwrap())
                    .expect("rebind");
                assert_eq!(new.ip(), "127.0.0.2".parse::<std::net::IpAddr>().unwrap());
            }
            rng.fill_bytes(&mut chunk);
            c.write_all(&chunk).await.expect("write");
            hash.update(&chunk);
            written += chunk.len();
        }
        c.shutdown().await.expect("shutdown");
        <[u8; 32]>::from(hash.finalize())
    })
    .await
    .expect("sent in time");
    let ((n, got), stats, peer) = timeout(Duration::from_secs(120), receiver)
        .await
        .expect("received in time")
        .expect("receiver task");
    assert_eq!(n, LEN);
    assert_eq!(got, sent, "SHA-256 differs");
    assert_eq!(client.driver_stats().migrations, 1);
    assert_eq!(peer.ip(), "127.0.0.2".parse::<std::net::IpAddr>().unwrap());
    assert!(stats.path_validations_succeeded >= 1, "{stats:?}");
}

/// A bulk transfer leaves in GSO batches and arrives GRO-coalesced when the kernel offers
/// both (Linux ≥ 5.0 on loopback), and one-datagram-per-call otherwise; either way every
/// byte arrives. Counters only: no timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_is_batched_by_gso_and_gro_when_offered() {
    const LEN: usize = 16 << 20;
    let server = bind(false);
    let client = bind(false);
    let listener = server
        .listen(ServicePrefix::exact(service(12)))
        .expect("listen");
    let server_addr = server.local_addr();
    let receiver = tokio::spawn(async move {
        let mut s = listener.accept().await.expect("accept");
        recv_all(&mut s).await
    });
    let sent = timeout(Duration::from_secs(60), async {
        let mut c = client
            .connect_to(service(12), server_addr)
            .await
            .expect("connect");
        let h = send_pattern(&mut c, 12, LEN).await;
        c.shutdown().await.expect("shutdown");
        h
    })
    .await
    .expect("sent in time");
    let (n, got) = timeout(Duration::from_secs(60), receiver)
        .await
        .expect("received in time")
        .expect("receiver task");
    assert_eq!(n, LEN);
    assert_eq!(got, sent, "SHA-256 differs");
    let (tx, rx) = (client.driver_stats(), server.driver_stats());
    println!("client {tx:?}\nserver {rx:?}");
    assert!(tx.datagrams_sent >= (LEN / 1500) as u64, "{tx:?}");
    assert_eq!(tx.mtu_errors + tx.send_errors, 0, "{tx:?}");
    if tx.gso_segments > 1 {
        // Full-sized segments of one flow to one peer: several per `sendmsg`.
        assert!(tx.send_calls * 4 < tx.datagrams_sent, "{tx:?}");
    } else {
        assert_eq!(tx.send_calls, tx.datagrams_sent, "{tx:?}");
    }
    if rx.gro_segments > 1 {
        assert!(rx.gro_datagrams > 0, "{rx:?}");
        assert!(rx.recv_calls < rx.datagrams_received, "{rx:?}");
    } else {
        assert_eq!(rx.gro_datagrams, 0, "{rx:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_datagrams_are_echoed_whole() {
    let server = bind(false);
    let client = bind(false);
    let socket = server
        .listen_datagram(ServicePrefix::exact(service(11)))
        .unwrap();
    let echo = tokio::spawn(async move {
        let flow = socket.accept().await.expect("accept");
        let mut buf = vec![0u8; 2048];
        loop {
            let n = flow.recv(&mut buf).await.expect("recv");
            if n == 0 {
                return;
            }
            flow.send(&buf[..n]).await.expect("echo");
        }
    });
    timeout(Duration::from_secs(30), async {
        let flow = client
            .connect_datagram(service(11), Some(server.local_addr()))
            .await
            .expect("connect");
        let max = flow.max_datagram();
        assert!(max >= 1400, "{max}");
        let too_big = vec![0u8; max + 1];
        assert_eq!(
            flow.send(&too_big).await.unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
        // One at a time, so nothing can overflow a queue on loopback: every size from 1 byte
        // to the largest comes back intact.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut back = vec![0u8; 2048];
        for len in [1, 2, 100, 536, 1000, max - 1, max] {
            let mut d = vec![0u8; len];
            rng.fill_bytes(&mut d);
            flow.send(&d).await.expect("send");
            let n = flow.recv(&mut back).await.expect("recv");
            assert_eq!(&back[..n], &d[..], "a {len}-byte datagram");
        }
    })
    .await
    .expect("echoed in time");
    drop(echo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconnected_datagrams_carry_both_service_ids() {
    let (a, b) = (bind(false), bind(false));
    let sa = a
        .listen_datagram(ServicePrefix::exact(service(21)))
        .unwrap();
    let sb = b
        .listen_datagram(ServicePrefix::exact(service(22)))
        .unwrap();
    timeout(Duration::from_secs(10), async {
        sa.send_to(b"ping", service(22), b.local_addr()).unwrap();
        let mut buf = [0u8; 64];
        let (n, from_service, from) = sb.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!((from_service, from), (Some(service(21)), a.local_addr()));
        // The answer goes back to the sender's ServiceID.
        sb.send_to(b"pong", from_service.unwrap(), from).unwrap();
        let (n, from_service, _) = sa.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from_service), (&b"pong"[..], Some(service(22))));
    })
    .await
    .expect("exchanged in time");
    assert_eq!(
        sa.send_to(&[], service(22), b.local_addr())
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::InvalidInput
    );
}
