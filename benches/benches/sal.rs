//! SAL end-to-end benchmarks on one core: two endpoints in memory (no sockets, no syscalls),
//! the driver's work done synchronously by `serval_benches::sal_pair`.
//!
//! * `sal/stream_bulk`: payload throughput of a bulk stream transfer over one established
//!   flow at MTU 1500 (`max_udp_payload` 1452, default configuration: SACK, timestamps,
//!   CUBIC, pacing, delayed ACKs), datagrams moved in batches of 64 per direction (a
//!   `sendmmsg`/`recvmmsg` driver; the receiver ACKs once per batch it processed).
//!   `sal/stream_bulk_batch1`: every datagram handed over and the peer polled on its own
//!   (an ACK every second segment). One core does *both* ends' work (sender, receiver, the
//!   ACKs back), so the figure is a lower bound on what one core gives one side.
//! * `sal/handshake_first_byte`: connect, SYN, SYN-ACK, conn-ACK, accept, then one byte
//!   written by the client and read by the server; `sal/handshake`: the same without the
//!   byte. Both endpoints reuse their key-epoch pair, so after the first handshake every
//!   shared secret comes from the cache (the counters are printed on stderr).
//!
//! Throughput is given as `Throughput::Bits` (criterion prints decimal Gbit/s: payload
//! bits, headers and ACKs not counted) and `Throughput::Elements` (handshakes per second).
//!
//! Run with `cargo bench -p serval-benches --bench sal`. For a profiler, run the bench
//! binary with `SAL_BENCH_PROFILE=stream` (`SAL_BENCH_MIB`, default 256;
//! `SAL_BENCH_BATCH`, default 64) or `SAL_BENCH_PROFILE=handshake`
//! (`SAL_BENCH_HANDSHAKES`, default 20 000): a fixed workload and no criterion, e.g. under
//! `valgrind --tool=callgrind`.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use serval_benches::sal_pair::{self, Connected, Scratch, StreamPair};
use serval_stack::sal::Endpoint;
use serval_stack::time::Timestamp;

/// Payload moved per criterion iteration of the stream benchmark.
const CHUNK: u64 = 1 << 20;
/// Handshakes per timed batch (their flows are torn down outside the timing).
const HANDSHAKE_BATCH: u64 = 256;

/// The benchmark is its own driver: it maps the OS monotonic clock onto `Timestamp`.
#[allow(clippy::disallowed_methods)]
fn instant() -> Instant {
    Instant::now()
}

/// Microseconds since the first call: the stack's `now`.
fn now() -> Timestamp {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(instant);
    Timestamp::from_micros(epoch.elapsed().as_micros() as u64)
}

fn stream(c: &mut Criterion) {
    let mut group = c.benchmark_group("sal");
    group.throughput(Throughput::Bits(CHUNK * 8));
    for (name, batch) in [("stream_bulk", sal_pair::BATCH), ("stream_bulk_batch1", 1)] {
        let mut pair = StreamPair::new(now(), batch);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = instant();
                pair.transfer(iters * CHUNK, now);
                start.elapsed()
            })
        });
        report_stream(&pair);
    }
    group.finish();
}

fn report_stream(pair: &StreamPair) {
    let (Some(tx), Some(rx)) = (pair.sender_stats(), pair.receiver_stats()) else {
        return;
    };
    eprintln!(
        "stream: {} MiB in {} rounds ({} idle), datagrams {} data / {} back; sender: {} \
         segments, {} retransmits, cwnd {} B, srtt {:?}; receiver: {} segments sent",
        pair.received >> 20,
        pair.rounds,
        pair.idle_rounds,
        pair.datagrams.0,
        pair.datagrams.1,
        tx.segments_sent,
        tx.retransmits,
        tx.cwnd,
        tx.srtt,
        rx.segments_sent,
    );
}

/// Runs `iters` handshakes, timing only the handshakes (batches of [`HANDSHAKE_BATCH`]).
fn handshakes(
    iters: u64,
    client: &mut Endpoint,
    server: &mut Endpoint,
    scratch: &mut Scratch,
    first_byte: bool,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut flows: Vec<Connected> = Vec::with_capacity(HANDSHAKE_BATCH as usize);
    let mut left = iters;
    while left > 0 {
        let n = left.min(HANDSHAKE_BATCH);
        let t = now();
        let start = instant();
        for _ in 0..n {
            flows.push(sal_pair::handshake(t, client, server, scratch, first_byte));
        }
        total += start.elapsed();
        for flow in flows.drain(..) {
            sal_pair::teardown(t, black_box(flow), client, server);
        }
        left -= n;
    }
    total
}

fn handshake(c: &mut Criterion) {
    let (mut client, mut server) = sal_pair::endpoints(now());
    let mut scratch = Scratch::default();
    let mut group = c.benchmark_group("sal");
    group.throughput(Throughput::Elements(1));
    for (name, first_byte) in [("handshake", false), ("handshake_first_byte", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                handshakes(iters, &mut client, &mut server, &mut scratch, first_byte)
            })
        });
    }
    group.finish();
    let (cs, ss) = (client.stats(), server.stats());
    eprintln!(
        "handshakes: {} accepted; X25519 agreements client {} server {}, cache hits client {} \
         server {}",
        ss.accepted, cs.key_agreements, ss.key_agreements, cs.key_cache_hits, ss.key_cache_hits,
    );
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fixed workload without criterion, for profilers.
fn profile(mode: &str) {
    match mode {
        "stream" => {
            let mib: u64 = env_or("SAL_BENCH_MIB", 256);
            let mut pair = StreamPair::new(now(), env_or("SAL_BENCH_BATCH", sal_pair::BATCH));
            let start = instant();
            pair.transfer(mib << 20, now);
            let secs = start.elapsed().as_secs_f64();
            eprintln!("{:.2} Gbit/s", (pair.received * 8) as f64 / secs / 1e9);
            report_stream(&pair);
        }
        "handshake" => {
            let (mut client, mut server) = sal_pair::endpoints(now());
            let n = env_or("SAL_BENCH_HANDSHAKES", 20_000);
            let d = handshakes(n, &mut client, &mut server, &mut Scratch::default(), true);
            eprintln!(
                "{:.0} handshakes/s; client {:?}",
                n as f64 / d.as_secs_f64(),
                client.stats()
            );
        }
        other => panic!("SAL_BENCH_PROFILE must be `stream` or `handshake`, not {other:?}"),
    }
}

fn main() {
    if let Ok(mode) = std::env::var("SAL_BENCH_PROFILE") {
        return profile(&mode);
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    stream(&mut c);
    handshake(&mut c);
    c.final_summary();
}
