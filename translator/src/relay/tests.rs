//! Relay tests: in-process `tokio::io::duplex` pairs and real loopback TCP. Time-dependent
//! behaviour runs on tokio's paused clock (`start_paused`): timers fire when every task
//! waits, so nothing sleeps for real and no assertion depends on the machine's speed.

use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;
use std::io;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, duplex,
};
use tokio::net::{TcpListener, TcpStream};

use super::*;

fn config(idle: Option<u64>, half: Option<u64>, buffer: usize) -> RelayConfig {
    RelayConfig {
        idle_timeout: idle.map(Duration::from_secs),
        half_close_timeout: half.map(Duration::from_secs),
        buffer_size: buffer,
    }
}

/// client <-> [inbound | relay | outbound] <-> server, all in memory.
fn pairs(cap: usize) -> (DuplexStream, DuplexStream, DuplexStream, DuplexStream) {
    let (client, inbound) = duplex(cap);
    let (outbound, server) = duplex(cap);
    (client, inbound, outbound, server)
}

fn spawn_relay<A, B>(mut a: A, mut b: B, cfg: RelayConfig) -> tokio::task::JoinHandle<RelayReport>
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move { relay(&mut a, &mut b, &cfg).await })
}

#[tokio::test]
async fn half_close_from_the_inbound_side_keeps_the_other_direction_open() {
    let (mut client, inbound, outbound, mut server) = pairs(4096);
    let relay = spawn_relay(inbound, outbound, RelayConfig::default());

    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap(); // EOF arrives: the FIN was relayed
    assert_eq!(got, b"request");

    // The server answers after the client finished sending.
    let answer = b"answer written after the request's end of stream";
    server.write_all(answer).await.unwrap();
    server.shutdown().await.unwrap();
    let mut back = Vec::new();
    client.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, answer);

    let report = relay.await.unwrap();
    assert_eq!(report.outcome, Outcome::Finished);
    assert!(report.outcome.is_clean());
    assert_eq!(report.inbound_to_outbound, 7);
    assert_eq!(report.outbound_to_inbound, answer.len() as u64);
}

#[tokio::test]
async fn half_close_from_the_outbound_side_keeps_the_other_direction_open() {
    let (mut client, inbound, outbound, mut server) = pairs(4096);
    let relay = spawn_relay(inbound, outbound, RelayConfig::default());

    server.write_all(b"banner").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"banner");

    client.write_all(b"still talking").await.unwrap();
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"still talking");

    let report = relay.await.unwrap();
    assert_eq!(report.outcome, Outcome::Finished);
    assert_eq!(
        (report.inbound_to_outbound, report.outbound_to_inbound),
        (13, 6)
    );
}

/// Deterministic pseudo-random bytes (xorshift), so a lost, duplicated or reordered chunk
/// changes the hash.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Sends `data` in uneven chunks, then half-closes.
async fn send_all<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) {
    let mut off = 0;
    let mut step = 1;
    while off < data.len() {
        let end = (off + step).min(data.len());
        w.write_all(&data[off..end]).await.unwrap();
        off = end;
        step = step * 7 % 65_521 + 1;
    }
    w.shutdown().await.unwrap();
}

/// Reads to end of stream; returns the hash and the length.
async fn hash_all<R: AsyncRead + Unpin>(r: &mut R) -> ([u8; 32], usize) {
    let mut h = Sha256::new();
    let mut buf = vec![0; 20_000];
    let mut n = 0;
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            return (h.finalize().into(), n);
        }
        h.update(&buf[..k]);
        n += k;
    }
}

/// Both directions at once, `up` bytes client→server and `down` bytes server→client, each
/// checked by hash at the receiving end.
async fn transfer_both_ways<C, S>(client: C, server: S, up: usize, down: usize)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let up_data = pattern(1, up);
    let down_data = pattern(2, down);
    let up_hash: [u8; 32] = Sha256::digest(&up_data).into();
    let down_hash: [u8; 32] = Sha256::digest(&down_data).into();
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    let (_, _, got_up, got_down) = tokio::join!(
        send_all(&mut cw, &up_data),
        send_all(&mut sw, &down_data),
        hash_all(&mut sr),
        hash_all(&mut cr),
    );
    assert_eq!(got_up, (up_hash, up), "client to server");
    assert_eq!(got_down, (down_hash, down), "server to client");
}

#[tokio::test]
async fn multi_mib_both_ways_in_memory_is_delivered_intact() {
    // Pipes smaller than the relay buffer, so the relay meets backpressure constantly.
    let (client, inbound, outbound, server) = pairs(16 << 10);
    let relay = spawn_relay(inbound, outbound, config(Some(3600), None, 32 << 10));
    transfer_both_ways(client, server, 8 << 20, 6 << 20).await;
    let report = relay.await.unwrap();
    assert_eq!(report.outcome, Outcome::Finished);
    assert_eq!(report.inbound_to_outbound, 8 << 20);
    assert_eq!(report.outbound_to_inbound, 6 << 20);
}

/// A translator on loopback: accepts `client`, connects to `server`, relays.
async fn tcp_topology(
    cfg: RelayConfig,
) -> (
    TcpStream,
    TcpStream,
    tokio::task::JoinHandle<(RelayReport, TcpStream, TcpStream)>,
) {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (front_addr, back_addr) = (front.local_addr().unwrap(), back.local_addr().unwrap());
    let translator = tokio::spawn(async move {
        let (mut inbound, _) = front.accept().await.unwrap();
        let mut outbound = TcpStream::connect(back_addr).await.unwrap();
        let report = relay(&mut inbound, &mut outbound, &cfg).await;
        (report, inbound, outbound)
    });
    let client = TcpStream::connect(front_addr).await.unwrap();
    let (server, _) = back.accept().await.unwrap();
    (client, server, translator)
}

#[tokio::test]
async fn multi_mib_both_ways_over_loopback_tcp_is_delivered_intact() {
    let (client, server, translator) = tcp_topology(RelayConfig::default()).await;
    transfer_both_ways(client, server, 6 << 20, 5 << 20).await;
    let (report, _, _) = translator.await.unwrap();
    assert_eq!(report.outcome, Outcome::Finished);
    assert_eq!(report.inbound_to_outbound, 6 << 20);
    assert_eq!(report.outbound_to_inbound, 5 << 20);
}

#[tokio::test]
async fn half_close_over_loopback_tcp() {
    let (mut client, mut server, translator) = tcp_topology(RelayConfig::default()).await;
    client.write_all(b"GET").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"GET");
    server.write_all(b"200 OK").await.unwrap();
    drop(server); // FIN
    let mut back = Vec::new();
    client.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"200 OK");
    let (report, _, _) = translator.await.unwrap();
    assert_eq!(report.outcome, Outcome::Finished);
}

#[tokio::test]
async fn a_reset_is_reported_against_its_side_and_passed_on_as_a_reset() {
    let (mut client, mut server, translator) = tcp_topology(RelayConfig::default()).await;
    client.write_all(b"partial").await.unwrap();
    let mut got = [0u8; 7];
    server.read_exact(&mut got).await.unwrap();
    abort_tcp(&client).unwrap();
    drop(client); // RST
    let (report, _inbound, outbound) = translator.await.unwrap();
    assert_eq!(report.outcome, Outcome::Reset(Side::Inbound));
    assert!(!report.outcome.is_clean());
    assert_eq!(report.inbound_to_outbound, 7);
    // What a role does on an unclean outcome: reset the side still open.
    abort_tcp(&outbound).unwrap();
    drop(outbound);
    let mut rest = Vec::new();
    let err = server.read_to_end(&mut rest).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let (_client, inbound, outbound, _server) = pairs(4096);
    let report = spawn_relay(inbound, outbound, config(Some(60), None, 4096))
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::IdleTimeout);
    assert_eq!(report.duration, Duration::from_secs(60), "virtual clock");
}

#[tokio::test(start_paused = true)]
async fn traffic_in_either_direction_restarts_the_idle_timeout() {
    let (mut client, inbound, outbound, mut server) = pairs(4096);
    let relay = spawn_relay(inbound, outbound, config(Some(60), None, 4096));
    for round in 0..6u8 {
        tokio::time::sleep(Duration::from_secs(40)).await;
        let mut b = [0u8];
        if round % 2 == 0 {
            client.write_all(&[round]).await.unwrap();
            server.read_exact(&mut b).await.unwrap();
        } else {
            server.write_all(&[round]).await.unwrap();
            client.read_exact(&mut b).await.unwrap();
        }
        assert_eq!(b[0], round);
    }
    let report = relay.await.unwrap();
    assert_eq!(report.outcome, Outcome::IdleTimeout);
    assert_eq!(
        (report.inbound_to_outbound, report.outbound_to_inbound),
        (3, 3)
    );
    // Six 40 s gaps, each shorter than the timeout, then 60 s of silence.
    assert_eq!(report.duration, Duration::from_secs(6 * 40 + 60));
}

#[tokio::test(start_paused = true)]
async fn the_half_close_timeout_applies_once_one_direction_finished() {
    let (mut client, inbound, outbound, mut server) = pairs(4096);
    let relay = spawn_relay(inbound, outbound, config(Some(3600), Some(30), 4096));
    tokio::time::sleep(Duration::from_secs(100)).await; // idle but under the idle timeout
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    let report = relay.await.unwrap();
    assert_eq!(report.outcome, Outcome::HalfCloseTimeout);
    assert_eq!(report.duration, Duration::from_secs(130));
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_off_never_fires_and_stop_ends_the_relay() {
    let (_client, mut inbound, mut outbound, _server) = pairs(4096);
    let stop = tokio::time::sleep(Duration::from_secs(400 * 86_400));
    let report = relay_until(&mut inbound, &mut outbound, &config(None, None, 4096), stop).await;
    assert_eq!(report.outcome, Outcome::Stopped);
    assert_eq!(report.duration, Duration::from_secs(400 * 86_400));
}

#[tokio::test(start_paused = true)]
async fn buffers_are_bounded_a_stalled_reader_stops_the_writer() {
    const PIPE: usize = 8 << 10;
    const BUF: usize = 16 << 10;
    let (mut client, inbound, outbound, mut server) = pairs(PIPE);
    let relay = spawn_relay(inbound, outbound, config(Some(3600), None, BUF));
    // The server does not read: the client can fill its pipe, the relay's buffer and the
    // server's pipe, then its writes stay pending.
    let chunk = vec![7u8; 4096];
    let mut written = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            written += client.write(&chunk).await.unwrap();
        }
    })
    .await;
    assert!(written >= BUF, "the relay moved data: {written}");
    assert!(
        written <= PIPE + BUF + PIPE,
        "nothing buffered beyond the bounds: {written}"
    );
    // Once the server reads, everything arrives.
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), written);
    drop(server);
    drop(client);
    let report = relay.await.unwrap();
    assert_eq!(report.inbound_to_outbound, written as u64);
}

/// A stream whose reads fail with `kind` (and whose writes succeed).
struct Failing(io::ErrorKind);

impl AsyncRead for Failing {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(self.0.into()))
    }
}

impl AsyncWrite for Failing {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn errors_name_the_side_and_the_kind() {
    let (_client, mut inbound, _, _server) = pairs(64);
    let r = relay(
        &mut inbound,
        &mut Failing(io::ErrorKind::InvalidData),
        &RelayConfig::default(),
    )
    .await;
    assert_eq!(
        r.outcome,
        Outcome::Error(Side::Outbound, io::ErrorKind::InvalidData)
    );
    assert_eq!(r.outcome.label(), "error_outbound");
    let r = relay(
        &mut Failing(io::ErrorKind::ConnectionAborted),
        &mut inbound,
        &RelayConfig::default(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Reset(Side::Inbound));
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_access_log_is_one_structured_json_line() {
    let sink = Captured::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .finish();
    let report = RelayReport {
        inbound_to_outbound: 10,
        outbound_to_inbound: 2048,
        duration: Duration::from_millis(1500),
        outcome: Outcome::Error(Side::Outbound, io::ErrorKind::TimedOut),
    };
    tracing::subscriber::with_default(subscriber, || {
        AccessLog {
            role: "client",
            via: "web",
            peer: Some("192.0.2.9:40000".parse().unwrap()),
            client: None,
            service: Some(ServiceId::from_u32(16385)),
            upstream: None,
            connect: Some(Duration::from_millis(3)),
            tls_handshake: None,
            report: &report,
        }
        .emit();
    });
    let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert_eq!(out.lines().count(), 1, "{out}");
    for field in [
        "\"target\":\"access\"",
        "\"via\":\"web\"",
        "\"peer\":\"192.0.2.9:40000\"",
        "\"service\":\"00004001",
        "\"bytes_in\":10",
        "\"bytes_out\":2048",
        "\"duration_ms\":1500",
        "\"connect_ms\":3",
        "\"outcome\":\"error_outbound\"",
        "\"error\":\"timed out\"",
    ] {
        assert!(out.contains(field), "{field} missing in {out}");
    }
}
