//! End-to-end benchmark: Serval streams (the tokio driver over UDP) beside kernel TCP over
//! the same path, in the same run, with the same application code on both.
//!
//! ```sh
//! cargo run --release -p serval-benches --bin e2e -- [--quick] [--path loopback|veth]
//!     [--metric single|multi|rtt|conn] [--rounds N]
//! ```
//!
//! Paths: **loopback** (server and client processes in this network namespace, 127.0.0.1)
//! and **veth** (two network namespaces made for the run, joined by a veth pair with MTU
//! 1500; needs root, skipped loudly otherwise). Metrics, each for kernel TCP (tokio
//! `TcpStream`, `TCP_NODELAY`) and Serval (`serval_stack::driver`, default config:
//! `max_udp_payload` 1452):
//!
//! - **single**: one stream moves a fixed number of bytes (Gbit/s of payload);
//! - **multi**: 8 concurrent streams share the same total;
//! - **rtt**: 1-byte ping-pong over one stream (p50 / p99 of the round trips);
//! - **conn**: connections per second (8 concurrent loops of connect, 1-byte request,
//!   1-byte reply, close).
//!
//! Each measurement runs a fresh client process (re-executing this binary with `client`,
//! inside the client namespace for veth) against long-lived servers (`serve`, one per
//! stack, inside the server namespace), and the two stacks alternate round by round so that
//! load from elsewhere on the machine hits both alike. The report gives the median of the
//! rounds and the Serval / kernel-TCP ratio.
//!
//! Verification: every bulk byte is checked with SHA-256 on both ends. The sender writes a
//! repeating pseudo-random block (1 MiB + 7 bytes, so writes never line up with it) whose
//! SHA-256 over the transfer length is computed before the clock starts; the receiver stores
//! what it reads in a pre-faulted buffer and hashes it after answering "done", so hashing
//! (≈ 1.4 GB/s here, slower than kernel TCP) does not cap the figure. Ping-pong bytes and
//! connection replies are compared byte for byte.
//!
//! Everything is bounded: byte and round-trip counts, a connection count and a time limit,
//! and a timeout on every process. Nothing asserts on time.

#![allow(clippy::print_stdout)] // the report is this program's output

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serval_stack::driver::Endpoint;
use serval_stack::sal::EndpointConfig;
use serval_stack::wire::{ServiceId, ServicePrefix};
use serval_tests::netns::{Netns, Process, require_root, veth};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The service the Serval server listens on.
const SERVICE: u32 = 0xe2e;
/// Size of the repeating block the bulk sender writes.
const BLOCK: usize = (1 << 20) + 7;
/// Bytes per write call of the bulk sender.
const WRITE_CHUNK: usize = 256 * 1024;
/// Bytes per read call of the bulk receiver.
const READ_CHUNK: usize = 1 << 20;
/// Largest bulk transfer a server accepts (it allocates that much).
const MAX_LEN: u64 = 4 << 30;
/// Concurrent streams of the `multi` metric, and concurrent loops of `conn`.
const STREAMS: usize = 8;
/// Ping-pong round trips not counted (warm-up).
const WARMUP: usize = 100;
/// The veth path's addresses (inside the namespaces this run makes) and MTU.
const VETH_SERVER: &str = "10.77.0.1";
const VETH_CLIENT: &str = "10.77.0.2";
const VETH_MTU: u32 = 1500;

#[derive(Parser, Debug)]
#[command(about = "End-to-end Serval vs kernel TCP benchmark (see BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Small counts, one round: a smoke run of a few tens of seconds.
    #[arg(long)]
    quick: bool,
    /// Only this path.
    #[arg(long, value_enum)]
    path: Option<PathKind>,
    /// Only this metric.
    #[arg(long, value_enum)]
    metric: Option<Metric>,
    /// Only this stack (for profiling one side).
    #[arg(long, value_enum)]
    stack: Option<Stack>,
    /// Rounds per metric and stack (default 3, `--quick` 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Serval endpoints (UDP sockets, endpoint tasks) per side, streams spread over them
    /// round-robin: the sharding proxy of BENCHMARKS.md.
    #[arg(long, default_value_t = 1)]
    endpoints: usize,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve one stack at `bind` until stdin closes (started by the benchmark).
    Serve {
        #[arg(long, value_enum)]
        stack: Stack,
        #[arg(long)]
        bind: SocketAddr,
        /// Serval endpoints to bind (each on its own port).
        #[arg(long, default_value_t = 1)]
        endpoints: usize,
    },
    /// Run one measurement against `server` and print a `RESULT` line (started by the
    /// benchmark).
    Client {
        #[arg(long, value_enum)]
        stack: Stack,
        /// The server's address(es), comma-separated (one per Serval endpoint).
        #[arg(long)]
        server: String,
        /// This host's address (the Serval endpoint binds it).
        #[arg(long)]
        local: IpAddr,
        #[arg(long, value_enum)]
        metric: Metric,
        /// Bulk bytes in all (split over the streams).
        #[arg(long, default_value_t = 0)]
        len: u64,
        /// Expected SHA-256 (hex) of each stream's bytes (computed here, before the clock
        /// starts, when not given).
        #[arg(long, default_value = "")]
        expect: String,
        /// Round trips or connections.
        #[arg(long, default_value_t = 0)]
        count: usize,
        /// Time limit of an rtt or conn measurement.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Serval endpoints to bind here; stream `i` uses endpoint `i % n` towards server
        /// address `i % n`.
        #[arg(long, default_value_t = 1)]
        endpoints: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Stack {
    Tcp,
    Serval,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PathKind {
    Loopback,
    Veth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Metric {
    Single,
    Multi,
    Rtt,
    Conn,
}

/// The wall clock, read only to measure (never to synchronise).
#[allow(clippy::disallowed_methods)] // a benchmark's stopwatch, not the protocol core's clock
fn now() -> Instant {
    Instant::now()
}

fn main() -> io::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Serve {
            stack,
            bind,
            endpoints,
        }) => runtime()?.block_on(serve(stack, bind, endpoints)),
        Some(Cmd::Client {
            stack,
            server,
            local,
            metric,
            len,
            expect,
            count,
            secs,
            endpoints,
        }) => {
            let server = server
                .split(',')
                .map(|a| a.parse().map_err(|e| bad(format!("--server {a}: {e}"))))
                .collect::<io::Result<Vec<SocketAddr>>>()?;
            let job = Job {
                metric,
                len,
                expect,
                count,
                secs,
            };
            // On a worker like the server's handlers (not on the `block_on` thread, which
            // would make every hand-off to the endpoint task a cross-thread wake-up).
            runtime()?.block_on(async move {
                tokio::spawn(client(stack, server, local, endpoints, job))
                    .await
                    .map_err(io::Error::other)?
            })
        }
        None => orchestrate(&cli),
    }
}

/// Both processes use the machine's two cores the same way for either stack.
fn runtime() -> io::Result<tokio::runtime::Runtime> {
    if std::env::var_os("E2E_CURRENT_THREAD").is_some() {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

// ------------------------------------------------------------------ the shared workload

/// An application stream of either stack.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// The bulk sender's repeating block (the same on every run).
fn block() -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    ChaCha8Rng::seed_from_u64(0xe2e).fill_bytes(&mut b);
    b
}

/// The pattern's first `len` bytes, in the pieces the sender writes.
fn pieces(block: &[u8], len: u64) -> impl Iterator<Item = &[u8]> {
    let mut off = 0;
    let mut left = len;
    core::iter::from_fn(move || {
        if left == 0 || block.is_empty() {
            return None;
        }
        let n = (block.len() - off)
            .min(WRITE_CHUNK)
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let piece = &block[off..off + n];
        off = (off + n) % block.len();
        left -= n as u64;
        Some(piece)
    })
}

/// SHA-256 of the pattern's first `len` bytes.
fn pattern_sha256(block: &[u8], len: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in pieces(block, len) {
        h.update(p);
    }
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A zeroed buffer of `len` bytes with every page touched, so the kernel's page faults do
/// not land inside the measurement.
fn prefaulted(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    for i in (0..len).step_by(4096) {
        buf[i] = 1;
    }
    buf
}

/// The server side of every metric; the first byte names it.
async fn handle(mut s: impl Conn) -> io::Result<()> {
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode).await?;
    match mode[0] {
        b'B' => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).await?;
            let len = u64::from_le_bytes(l);
            if len > MAX_LEN {
                return Err(bad(format!("bulk of {len} bytes refused")));
            }
            let len = usize::try_from(len).map_err(|_| bad("length"))?;
            let mut buf = prefaulted(len);
            s.write_all(b"R").await?;
            s.flush().await?;
            let mut off = 0;
            while off < len {
                let end = (off + READ_CHUNK).min(len);
                let n = s.read(&mut buf[off..end]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                off += n;
            }
            s.write_all(b"D").await?;
            s.flush().await?;
            let hash = tokio::task::spawn_blocking(move || Sha256::digest(&buf))
                .await
                .map_err(io::Error::other)?;
            s.write_all(&hash).await?;
            s.shutdown().await?;
            // Wait for the client's close, so neither side resets a stream with data queued.
            let mut rest = [0u8; 1];
            while s.read(&mut rest).await? > 0 {}
        }
        b'P' => {
            let mut b = [0u8; 1];
            while s.read(&mut b).await? == 1 {
                s.write_all(&b).await?;
            }
        }
        b'C' => {
            s.write_all(b"c").await?;
            s.shutdown().await?;
        }
        m => return Err(bad(format!("unknown mode {m}"))),
    }
    Ok(())
}

async fn serve(stack: Stack, bind: SocketAddr, endpoints: usize) -> io::Result<()> {
    // The server lives as long as the benchmark's pipe to it.
    tokio::spawn(async {
        let mut stdin = tokio::io::stdin();
        let mut b = [0u8; 64];
        while matches!(stdin.read(&mut b).await, Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    match stack {
        Stack::Tcp => {
            let l = TcpListener::bind(bind).await?;
            println!("READY {}", l.local_addr()?);
            loop {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                tokio::spawn(async move {
                    if let Err(e) = handle(s).await {
                        eprintln!("tcp handler: {e}");
                    }
                });
            }
        }
        Stack::Serval => {
            let mut addrs = Vec::new();
            let mut listeners = Vec::new();
            for _ in 0..endpoints.max(1) {
                let ep = Endpoint::bind(bind, serval_config()?)?;
                listeners.push(ep.listen(ServicePrefix::exact(ServiceId::from_u32(SERVICE)))?);
                addrs.push(ep.local_addr().to_string());
                tokio::spawn(async move {
                    // The server's counters now and then, for the profile notes.
                    loop {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        eprintln!("serval server {:?}", ep.driver_stats());
                    }
                });
            }
            println!("READY {}", addrs.join(","));
            let mut loops = tokio::task::JoinSet::new();
            for l in listeners {
                loops.spawn(async move {
                    loop {
                        let s = l.accept().await?;
                        tokio::spawn(async move {
                            if let Err(e) = handle(s).await {
                                eprintln!("serval handler: {e}");
                            }
                        });
                    }
                });
            }
            match loops.join_next().await {
                Some(r) => r.map_err(io::Error::other)?,
                None => Ok(()),
            }
        }
    }
}

/// The Serval endpoint configuration: the defaults, except the stream buffers when
/// `E2E_STREAM_BUFFER` (bytes) is set, for experiments on buffer size.
fn serval_config() -> io::Result<EndpointConfig> {
    let mut c = EndpointConfig::default();
    if let Some(v) = std::env::var_os("E2E_STREAM_BUFFER") {
        let bytes: usize = v
            .to_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("E2E_STREAM_BUFFER: a byte count"))?;
        c.stream
            .send_buffer(bytes)
            .and_then(|s| s.recv_buffer(bytes))
            .map_err(|e| bad(format!("E2E_STREAM_BUFFER: {e}")))?;
    }
    Ok(c)
}

/// Opens streams of one stack to the server.
#[derive(Clone, Debug)]
enum Connector {
    Tcp(SocketAddr),
    /// (own endpoint, server address) pairs, used round-robin.
    Serval(Arc<Vec<(Endpoint, SocketAddr)>>, Arc<AtomicUsize>),
}

impl Connector {
    async fn connect(&self) -> io::Result<Box<dyn Conn>> {
        Ok(match self {
            Self::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Self::Serval(pairs, next) => {
                let i = next.fetch_add(1, Ordering::Relaxed) % pairs.len().max(1);
                let (ep, a) = pairs.get(i).ok_or_else(|| bad("no endpoint"))?;
                Box::new(ep.connect_to(ServiceId::from_u32(SERVICE), *a).await?)
            }
        })
    }
}

/// One client measurement.
#[derive(Debug)]
struct Job {
    metric: Metric,
    len: u64,
    expect: String,
    count: usize,
    secs: f64,
}

async fn client(
    stack: Stack,
    server: Vec<SocketAddr>,
    local: IpAddr,
    endpoints: usize,
    job: Job,
) -> io::Result<()> {
    let first = *server.first().ok_or_else(|| bad("no server address"))?;
    let connector = match stack {
        Stack::Tcp => Connector::Tcp(first),
        Stack::Serval => {
            let mut pairs = Vec::new();
            for i in 0..endpoints.max(1) {
                let ep = Endpoint::bind(SocketAddr::new(local, 0), serval_config()?)?;
                pairs.push((ep, *server.get(i % server.len()).unwrap_or(&first)));
            }
            Connector::Serval(Arc::new(pairs), Arc::new(AtomicUsize::new(0)))
        }
    };
    let result = match job.metric {
        Metric::Single => bulk(&connector, job.len, 1, &job.expect).await?,
        Metric::Multi => bulk(&connector, job.len, STREAMS, &job.expect).await?,
        Metric::Rtt => ping_pong(&connector, job.count, job.secs).await?,
        Metric::Conn => connections(&connector, job.count, job.secs).await?,
    };
    println!("RESULT {result}");
    if let Connector::Serval(pairs, _) = &connector {
        for (ep, _) in pairs.iter() {
            eprintln!("serval client {:?}", ep.driver_stats());
        }
    }
    Ok(())
}

/// `streams` streams each move `total / streams` bytes at once; the time runs from the
/// moment every server is ready to the last "done".
async fn bulk(c: &Connector, total: u64, streams: usize, expect: &str) -> io::Result<String> {
    let per = total / streams as u64;
    let block = Arc::new(block());
    let computed;
    let expect = if expect.is_empty() {
        computed = hex(&pattern_sha256(&block, per));
        computed.as_str()
    } else {
        expect
    };
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut s = c.connect().await?;
        s.write_all(b"B").await?;
        s.write_all(&per.to_le_bytes()).await?;
        s.flush().await?;
        conns.push(s);
    }
    for s in &mut conns {
        let mut r = [0u8; 1];
        s.read_exact(&mut r).await?;
        if r != *b"R" {
            return Err(bad("server not ready"));
        }
    }
    // For a profiler started from outside: the measured part begins here.
    eprintln!("CLOCK START");
    let start = now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            let block = block.clone();
            tokio::spawn(async move {
                for piece in pieces(&block, per) {
                    s.write_all(piece).await?;
                }
                s.flush().await?;
                let mut d = [0u8; 1];
                s.read_exact(&mut d).await?;
                let end = now();
                let mut hash = [0u8; 32];
                s.read_exact(&mut hash).await?;
                s.shutdown().await?;
                let mut rest = [0u8; 1];
                while s.read(&mut rest).await? > 0 {}
                io::Result::Ok((end, hash))
            })
        })
        .collect();
    let mut last = start;
    for t in tasks {
        let (end, hash) = t.await.map_err(io::Error::other)??;
        if hex(&hash) != expect {
            return Err(bad(format!(
                "SHA-256 mismatch: server {} expected {expect}",
                hex(&hash)
            )));
        }
        last = last.max(end);
    }
    let secs = last.duration_since(start).as_secs_f64();
    Ok(format!("bytes={} secs={secs:.6}", per * streams as u64))
}

/// 1-byte ping-pong: `count` round trips after a warm-up, or until `secs` pass.
async fn ping_pong(c: &Connector, count: usize, secs: f64) -> io::Result<String> {
    let mut s = c.connect().await?;
    s.write_all(b"P").await?;
    let limit = Duration::from_secs_f64(secs);
    let start = now();
    let mut rtts = Vec::with_capacity(count);
    for i in 0..count + WARMUP {
        let b = [i as u8];
        let t = now();
        s.write_all(&b).await?;
        let mut r = [0u8; 1];
        s.read_exact(&mut r).await?;
        let rtt = t.elapsed();
        if r != b {
            return Err(bad("ping-pong byte differs"));
        }
        if i >= WARMUP {
            rtts.push(rtt);
        }
        if start.elapsed() > limit {
            break;
        }
    }
    s.shutdown().await?;
    rtts.sort_unstable();
    let pct = |p: f64| {
        let i = ((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1));
        rtts.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Ok(format!(
        "n={} p50_us={:.1} p99_us={:.1}",
        rtts.len(),
        pct(0.50),
        pct(0.99)
    ))
}

/// Connections per second: [`STREAMS`] loops of connect, request, reply, close, until
/// `count` are done or `secs` pass.
async fn connections(c: &Connector, count: usize, secs: f64) -> io::Result<String> {
    let limit = Duration::from_secs_f64(secs);
    let start = now();
    let per = count.div_ceil(STREAMS);
    let tasks: Vec<_> = (0..STREAMS)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut done = 0usize;
                while done < per && start.elapsed() < limit {
                    let mut s = c.connect().await?;
                    s.write_all(b"C").await?;
                    let mut r = [0u8; 1];
                    s.read_exact(&mut r).await?;
                    if r != *b"c" {
                        return Err(bad("connection reply differs"));
                    }
                    done += 1;
                }
                io::Result::Ok(done)
            })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        done += t.await.map_err(io::Error::other)??;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(format!("conns={done} secs={secs:.6}"))
}

// ------------------------------------------------------------------------ orchestration

/// Counts and limits of one run.
#[derive(Clone, Copy, Debug)]
struct Plan {
    single: u64,
    multi: u64,
    rtts: usize,
    conns: usize,
    secs: f64,
    rounds: usize,
    /// Limit on one client process.
    timeout: Duration,
}

/// Where the processes run.
struct Path {
    kind: PathKind,
    server_ip: IpAddr,
    client_ip: IpAddr,
    /// (server namespace, client namespace) for veth.
    ns: Option<(Netns, Netns)>,
}

impl Path {
    fn command(&self, server_side: bool) -> io::Result<Command> {
        let exe = std::env::current_exe()?;
        Ok(match &self.ns {
            Some((s, c)) => {
                if server_side {
                    s.command(exe)
                } else {
                    c.command(exe)
                }
            }
            None => Command::new(exe),
        })
    }
}

/// One measured value per stack and round.
#[derive(Debug, Default)]
struct Samples {
    tcp: Vec<f64>,
    serval: Vec<f64>,
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn field(result: &str, key: &str) -> io::Result<f64> {
    result
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad(format!("no {key} in {result:?}")))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn orchestrate(cli: &Cli) -> io::Result<()> {
    let plan = if cli.quick {
        Plan {
            single: 256 << 20,
            multi: 256 << 20,
            rtts: 2_000,
            conns: 1_000,
            secs: 2.0,
            rounds: cli.rounds.unwrap_or(1),
            timeout: Duration::from_secs(60),
        }
    } else {
        Plan {
            single: 2 << 30,
            multi: 2 << 30,
            rtts: 20_000,
            conns: 10_000,
            secs: 4.0,
            rounds: cli.rounds.unwrap_or(3),
            timeout: Duration::from_secs(120),
        }
    };
    let blk = block();
    let expect_single = hex(&pattern_sha256(&blk, plan.single));
    let expect_multi = hex(&pattern_sha256(&blk, plan.multi / STREAMS as u64));
    println!("# End-to-end: Serval vs kernel TCP\n");
    println!(
        "plan: single {} MiB, multi {STREAMS} x {} MiB, {} round trips, {} connections \
         (or {} s), {} round(s); machine {} cores",
        plan.single >> 20,
        (plan.multi / STREAMS as u64) >> 20,
        plan.rtts,
        plan.conns,
        plan.secs,
        plan.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    for kind in [PathKind::Loopback, PathKind::Veth] {
        if cli.path.is_some_and(|p| p != kind) {
            continue;
        }
        let path = match kind {
            PathKind::Loopback => Path {
                kind,
                server_ip: IpAddr::from([127, 0, 0, 1]),
                client_ip: IpAddr::from([127, 0, 0, 1]),
                ns: None,
            },
            PathKind::Veth => {
                if !require_root("the veth path of the e2e benchmark") {
                    continue;
                }
                let s = Netns::new("e2e-srv")?;
                let c = Netns::new("e2e-cli")?;
                veth(
                    &s,
                    &format!("{VETH_SERVER}/24"),
                    &c,
                    &format!("{VETH_CLIENT}/24"),
                    VETH_MTU,
                )?;
                Path {
                    kind,
                    server_ip: VETH_SERVER.parse().map_err(io::Error::other)?,
                    client_ip: VETH_CLIENT.parse().map_err(io::Error::other)?,
                    ns: Some((s, c)),
                }
            }
        };
        run_path(cli, &plan, &path, &expect_single, &expect_multi)?;
    }
    Ok(())
}

fn run_path(
    cli: &Cli,
    plan: &Plan,
    path: &Path,
    expect_single: &str,
    expect_multi: &str,
) -> io::Result<()> {
    let start_servers = |stack: Stack| -> io::Result<(Process, String)> {
        let mut cmd = path.command(true)?;
        cmd.args(["serve", "--stack", stack_name(stack), "--bind"])
            .arg(SocketAddr::new(path.server_ip, 0).to_string())
            .arg("--endpoints")
            .arg(cli.endpoints.to_string());
        let mut p = Process::spawn(&format!("{}-server", stack_name(stack)), cmd)?;
        let addr = p.wait_for("READY", Duration::from_secs(20))?;
        Ok((p, addr))
    };
    let (mut tcp_server, tcp_addr) = start_servers(Stack::Tcp)?;
    let (mut serval_server, serval_addr) = start_servers(Stack::Serval)?;
    let load_before = loadavg();
    println!(
        "\n## {:?}, {} Serval endpoint(s) per side (load average before: {load_before})\n",
        path.kind, cli.endpoints
    );
    println!("| metric | kernel TCP | Serval | Serval / TCP | rounds (TCP; Serval) |");
    println!("|---|---|---|---|---|");
    for metric in [Metric::Single, Metric::Multi, Metric::Rtt, Metric::Conn] {
        if cli.metric.is_some_and(|m| m != metric) {
            continue;
        }
        let mut samples = Samples::default();
        let mut p99 = Samples::default();
        for round in 0..plan.rounds {
            // Alternate which stack goes first, so a disturbance is shared fairly.
            let order = if round % 2 == 0 {
                [Stack::Tcp, Stack::Serval]
            } else {
                [Stack::Serval, Stack::Tcp]
            };
            for stack in order {
                if cli.stack.is_some_and(|s| s != stack) {
                    continue;
                }
                let server = match stack {
                    Stack::Tcp => &tcp_addr,
                    Stack::Serval => &serval_addr,
                };
                let mut cmd = path.command(false)?;
                cmd.args(["client", "--stack", stack_name(stack), "--metric"])
                    .arg(metric_name(metric))
                    .arg("--server")
                    .arg(server)
                    .arg("--endpoints")
                    .arg(cli.endpoints.to_string())
                    .arg("--local")
                    .arg(path.client_ip.to_string())
                    .arg("--secs")
                    .arg(plan.secs.to_string());
                match metric {
                    Metric::Single => cmd
                        .args(["--len", &plan.single.to_string(), "--expect"])
                        .arg(expect_single),
                    Metric::Multi => cmd
                        .args(["--len", &plan.multi.to_string(), "--expect"])
                        .arg(expect_multi),
                    Metric::Rtt => cmd.args(["--count", &plan.rtts.to_string()]),
                    Metric::Conn => cmd.args(["--count", &plan.conns.to_string()]),
                };
                let name = format!("{}-{}", stack_name(stack), metric_name(metric));
                let mut p = Process::spawn(&name, cmd)?;
                let result = p.wait_for("RESULT", plan.timeout)?;
                p.wait_exit(Duration::from_secs(20))?;
                let (value, tail) = match metric {
                    Metric::Single | Metric::Multi => {
                        let gbps = field(&result, "bytes")? * 8.0 / field(&result, "secs")? / 1e9;
                        (gbps, 0.0)
                    }
                    Metric::Rtt => (field(&result, "p50_us")?, field(&result, "p99_us")?),
                    Metric::Conn => (field(&result, "conns")? / field(&result, "secs")?, 0.0),
                };
                eprintln!(
                    "{:?} {name} round {round}: {result} (load {})",
                    path.kind,
                    loadavg()
                );
                match stack {
                    Stack::Tcp => {
                        samples.tcp.push(value);
                        p99.tcp.push(tail);
                    }
                    Stack::Serval => {
                        samples.serval.push(value);
                        p99.serval.push(tail);
                    }
                }
            }
        }
        report(metric, &samples, &p99);
    }
    println!("\nload average after: {}", loadavg());
    tcp_server.close_stdin();
    serval_server.close_stdin();
    let _ = tcp_server.wait_exit(Duration::from_secs(10));
    let _ = serval_server.wait_exit(Duration::from_secs(10));
    Ok(())
}

/// One table row (two for rtt: p50 and p99).
fn report(metric: Metric, s: &Samples, p99: &Samples) {
    let fmt = |v: &[f64], unit: &str| -> String {
        median(v).map_or("–".into(), |m| format!("{m:.2} {unit}"))
    };
    let list = |v: &[f64]| -> String {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ratio = |a: &[f64], b: &[f64]| -> String {
        match (median(a), median(b)) {
            (Some(t), Some(s)) if t > 0.0 => format!("{:.2}x", s / t),
            _ => "–".into(),
        }
    };
    let row = |name: &str, s: &Samples, unit: &str| {
        println!(
            "| {name} | {} | {} | {} | {}; {} |",
            fmt(&s.tcp, unit),
            fmt(&s.serval, unit),
            ratio(&s.tcp, &s.serval),
            list(&s.tcp),
            list(&s.serval)
        );
    };
    match metric {
        Metric::Single => row("1 stream throughput", s, "Gbit/s"),
        Metric::Multi => row("8 streams throughput", s, "Gbit/s"),
        Metric::Rtt => {
            row("1-byte RTT p50", s, "µs");
            row("1-byte RTT p99", p99, "µs");
        }
        Metric::Conn => row("connections/s", s, "/s"),
    }
}

fn stack_name(s: Stack) -> &'static str {
    match s {
        Stack::Tcp => "tcp",
        Stack::Serval => "serval",
    }
}

fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::Single => "single",
        Metric::Multi => "multi",
        Metric::Rtt => "rtt",
        Metric::Conn => "conn",
    }
}
