//! The tokio driver on real loopback UDP sockets: bulk transfer, many concurrent flows,
//! half-close, refusal, and a service router spreading connects over two servers.
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
async fn bulk_transfer_64_mib_hash_matches() {
    const LEN: usize = 64 << 20;
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
        "64 MiB over loopback in {secs:.2} s: {:.1} MB/s; client {:?}; server {:?}",
        LEN as f64 / secs / 1e6,
        client.driver_stats(),
        server.driver_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_flows_of_1_mib() {
    const FLOWS: u64 = 100;
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
        "100 x 1 MiB in {secs:.2} s: {:.1} MB/s aggregate",
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
async fn router_spreads_connects_over_two_servers() {
    const CONNECTS: usize = 40;
    let prefix = ServicePrefix::new(service(0x0600_0000), 8).unwrap();
    let router = bind(true);
    let servers = [bind(false), bind(false)];
    let client = bind(false);
    let addrs: Vec<SocketAddr> = servers.iter().map(Endpoint::local_addr).collect();
    for a in &addrs {
        router.with_table(|t| t.insert(prefix, Rule::forward(*a).with_weight(1)).unwrap());
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
    // 40 fair coin flips: each side at least 8 fails with probability < 1e-4.
    assert!(per_server.iter().all(|&n| n >= 8), "spread {per_server:?}");
    println!(
        "router spread {per_server:?}; router stats {:?}",
        router.driver_stats()
    );
}
