//! End-to-end benchmark: Serval streams (the tokio driver over UDP) beside kernel TCP over
//! the same path, in the same run, with the same application code on both.
//!
//! ```sh
//! cargo run --release -p serval-benches --bin e2e -- [--quick] [--path loopback|veth|chain]
//!     [--metric single|multi|rtt|conn] [--rounds N] [--variant direct|haproxy|translator]
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
//!
//! **chain** (only with `--path chain`; root): the translator's path. Four namespaces,
//! client → hop1 → hop2 → server, joined by veth pairs with MTU 1500, and the kernel-TCP
//! client and server above (the same application code, SHA-256 checked) reaching each other
//! three ways in the same run, alternating round by round:
//!
//! - **direct**: kernel TCP routed by the two hops (IPv4 forwarding);
//! - **haproxy**: Debian's `haproxy` in TCP mode in hop1, forwarding to a second one in
//!   hop2, forwarding to the server (skipped loudly when `haproxy` is not installed);
//! - **translator**: `serval-translator run` in hop1 (client role, an explicit listener)
//!   → one `serval-translator run` in hop2 with the router and server roles (router
//!   co-located with the server translator in one process) → the server.
//!
//! The translator binary is `serval-translator` next to this one (`cargo build --release
//! -p translator` into the same target directory), or `E2E_TRANSLATOR`. `--variant` keeps
//! one variant (for profiling).

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
    /// Only this variant of the chain path (for profiling one side).
    #[arg(long, value_enum)]
    variant: Option<Variant>,
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
    /// client → hop1 → hop2 → server; only when asked for.
    Chain,
}

/// How the chain path's client reaches its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Variant {
    Direct,
    Haproxy,
    Translator,
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
    if cli.path == Some(PathKind::Chain) {
        println!("# End-to-end chain: kernel TCP direct, HAProxy chain, translators");
        if require_root("the chain path of the e2e benchmark") {
            chain::run(cli, &plan, &blk)?;
        }
        return Ok(());
    }
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
            PathKind::Chain => continue,
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

// ------------------------------------------------------------------------ the chain path

/// client → hop1 → hop2 → server: kernel TCP routed, an HAProxy chain, the translators.
mod chain {
    use super::{
        Cli, Metric, Plan, STREAMS, Variant, bad, field, hex, loadavg, median, metric_name,
        pattern_sha256,
    };
    use serval_benches::harness::translator_binary;
    use serval_tests::netns::{Netns, Process, veth};
    use std::io;
    use std::process::Command;
    use std::time::Duration;

    /// Addresses: client .1.2 | .1.1 hop1 .2.1 | .2.2 hop2 .3.1 | .3.2 server.
    const CLIENT: &str = "10.78.1.2";
    const HOP1_IN: &str = "10.78.1.1";
    const HOP1_OUT: &str = "10.78.2.1";
    const HOP2_IN: &str = "10.78.2.2";
    const HOP2_OUT: &str = "10.78.3.1";
    const SERVER: &str = "10.78.3.2";
    const MTU: u32 = 1500;
    /// The legacy server's port (in the server namespace).
    const SERVER_PORT: u16 = 7000;
    /// HAProxy's listeners: hop1's (the client's target) and hop2's.
    const HAPROXY1_PORT: u16 = 7001;
    const HAPROXY2_PORT: u16 = 7002;
    /// The client translator's explicit listener (in hop1).
    const TRANSLATOR_PORT: u16 = 7003;
    /// The translators' Serval (UDP) port.
    const SERVAL_PORT: u16 = 54325;
    /// The service the translators carry the legacy server as.
    const SERVICE: &str = "0x00000e2e";
    /// The router's registration key (the server role is in its process, so unused on
    /// the wire, but the role needs one).
    const KEY: &str = "e2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee2ee";

    const ALL: [Variant; 3] = [Variant::Direct, Variant::Haproxy, Variant::Translator];

    fn name(v: Variant) -> &'static str {
        match v {
            Variant::Direct => "direct",
            Variant::Haproxy => "haproxy",
            Variant::Translator => "translator",
        }
    }

    /// The address the client connects to for `v`.
    fn target(v: Variant) -> String {
        match v {
            Variant::Direct => format!("{SERVER}:{SERVER_PORT}"),
            Variant::Haproxy => format!("{HOP1_IN}:{HAPROXY1_PORT}"),
            Variant::Translator => format!("{HOP1_IN}:{TRANSLATOR_PORT}"),
        }
    }

    fn haproxy_config(listen: &str, forward: &str) -> String {
        // TCP mode, defaults otherwise (one thread per CPU, as the translator's runtime),
        // no logging (the translators' access log is off too).
        format!(
            "global\n    maxconn 8000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n\nfrontend bench\n    bind {listen}\n    default_backend bench\n\nbackend bench\n    server s1 {forward}\n"
        )
    }

    fn client_translator_config() -> String {
        format!(
            "serval:\n  bind: \"{HOP1_OUT}:{SERVAL_PORT}\"\n  routers: [\"{HOP2_IN}:{SERVAL_PORT}\"]\nclient:\n  listeners:\n    - name: bench\n      listen: \"{HOP1_IN}:{TRANSLATOR_PORT}\"\n      service: \"{SERVICE}\"\nadmin: {{listen: ~}}\nlog: {{level: warn, access_log: false}}\n"
        )
    }

    fn server_translator_config() -> String {
        format!(
            "serval:\n  bind: \"{HOP2_IN}:{SERVAL_PORT}\"\nrouter:\n  keys: [{{id: 1, env: E2E_CHAIN_KEY}}]\nserver:\n  services:\n    - name: bench\n      prefix: \"{SERVICE}\"\n      backends: [{{address: \"{SERVER}:{SERVER_PORT}\"}}]\nadmin: {{listen: ~}}\nlog: {{level: warn, access_log: false}}\n"
        )
    }

    fn haproxy_installed() -> bool {
        Command::new("haproxy")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The four namespaces, routed.
    #[derive(Debug)]
    struct Topology {
        client: Netns,
        hop1: Netns,
        hop2: Netns,
        server: Netns,
    }

    impl Topology {
        fn new() -> io::Result<Self> {
            let t = Self {
                client: Netns::new("ch-cli")?,
                hop1: Netns::new("ch-hop1")?,
                hop2: Netns::new("ch-hop2")?,
                server: Netns::new("ch-srv")?,
            };
            veth(
                &t.client,
                &format!("{CLIENT}/24"),
                &t.hop1,
                &format!("{HOP1_IN}/24"),
                MTU,
            )?;
            veth(
                &t.hop1,
                &format!("{HOP1_OUT}/24"),
                &t.hop2,
                &format!("{HOP2_IN}/24"),
                MTU,
            )?;
            veth(
                &t.hop2,
                &format!("{HOP2_OUT}/24"),
                &t.server,
                &format!("{SERVER}/24"),
                MTU,
            )?;
            t.hop1.enable_forwarding()?;
            t.hop2.enable_forwarding()?;
            t.client.route("default", HOP1_IN)?;
            t.server.route("default", HOP2_OUT)?;
            t.hop1.route("10.78.3.0/24", HOP2_IN)?;
            t.hop2.route("10.78.1.0/24", HOP1_OUT)?;
            Ok(t)
        }
    }

    /// One client process of `metric` towards `v`; returns its `RESULT` line.
    fn measure(
        topo: &Topology,
        plan: &Plan,
        v: Variant,
        (metric, len, count, expect): (Metric, u64, usize, &str),
        timeout: Duration,
    ) -> io::Result<String> {
        let mut cmd = topo.client.command(std::env::current_exe()?);
        cmd.args(["client", "--stack", "tcp", "--metric", metric_name(metric)])
            .args(["--server", &target(v), "--local", CLIENT])
            .args(["--secs", &plan.secs.to_string()])
            .args(["--len", &len.to_string(), "--count", &count.to_string()]);
        if !expect.is_empty() {
            cmd.args(["--expect", expect]);
        }
        let label = format!("{}-{}", name(v), metric_name(metric));
        let mut p = Process::spawn(&label, cmd)?;
        let result = p.wait_for("RESULT", timeout)?;
        p.wait_exit(Duration::from_secs(20))?;
        Ok(result)
    }

    /// Waits until `v` carries connections end to end (a few short probes), so startup
    /// (binding, the server's registration) never lands in a measurement.
    fn wait_ready(topo: &Topology, plan: &Plan, v: Variant) -> io::Result<()> {
        let mut last = None;
        for _ in 0..20 {
            match measure(
                topo,
                plan,
                v,
                (Metric::Conn, 0, 16, ""),
                Duration::from_secs(10),
            ) {
                Ok(r) if field(&r, "conns")? > 0.0 => return Ok(()),
                Ok(r) => last = Some(bad(r)),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(last.unwrap_or_else(|| bad("not ready")))
    }

    /// Runs the chain path: every metric, the variants alternating round by round.
    pub(super) fn run(cli: &Cli, plan: &Plan, blk: &[u8]) -> io::Result<()> {
        // Smaller bulk than the direct paths: a proxy chain is slower, and the run should
        // stay within a few minutes.
        let plan = Plan {
            single: if cli.quick { 256 << 20 } else { 1 << 30 },
            multi: if cli.quick { 256 << 20 } else { 1 << 30 },
            rounds: cli.rounds.unwrap_or(if cli.quick { 1 } else { 5 }),
            ..*plan
        };
        let expect_single = hex(&pattern_sha256(blk, plan.single));
        let expect_multi = hex(&pattern_sha256(blk, plan.multi / STREAMS as u64));
        let mut variants: Vec<Variant> = ALL
            .into_iter()
            .filter(|v| cli.variant.is_none_or(|c| c == *v))
            .collect();
        if variants.contains(&Variant::Haproxy) && !haproxy_installed() {
            let bar = "*".repeat(78);
            eprintln!(
                "\n{bar}\nSKIPPED: the HAProxy column: `haproxy` is not installed \
                 (apt-get install haproxy)\n{bar}\n"
            );
            println!("\n**HAProxy not installed: its column is skipped.**");
            variants.retain(|v| *v != Variant::Haproxy);
        }
        let topo = Topology::new()?;
        let dir = std::env::temp_dir().join(format!("e2e-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut procs: Vec<Process> = Vec::new();

        // The legacy server, the same for every variant.
        let mut cmd = topo.server.command(std::env::current_exe()?);
        cmd.args([
            "serve",
            "--stack",
            "tcp",
            "--bind",
            &format!("{SERVER}:{SERVER_PORT}"),
        ]);
        let mut server = Process::spawn("legacy-server", cmd)?;
        server.wait_for("READY", Duration::from_secs(20))?;
        procs.push(server);

        if variants.contains(&Variant::Haproxy) {
            for (ns, tag, listen, forward) in [
                (
                    &topo.hop2,
                    "haproxy-hop2",
                    format!("{HOP2_IN}:{HAPROXY2_PORT}"),
                    format!("{SERVER}:{SERVER_PORT}"),
                ),
                (
                    &topo.hop1,
                    "haproxy-hop1",
                    format!("{HOP1_IN}:{HAPROXY1_PORT}"),
                    format!("{HOP2_IN}:{HAPROXY2_PORT}"),
                ),
            ] {
                let file = dir.join(format!("{tag}.cfg"));
                std::fs::write(&file, haproxy_config(&listen, &forward))?;
                let mut cmd = ns.command("haproxy");
                cmd.arg("-db").arg("-f").arg(&file);
                procs.push(Process::spawn(tag, cmd)?);
            }
        }
        if variants.contains(&Variant::Translator) {
            let bin = translator_binary()?;
            for (ns, tag, config) in [
                (&topo.hop2, "translator-hop2", server_translator_config()),
                (&topo.hop1, "translator-hop1", client_translator_config()),
            ] {
                let file = dir.join(format!("{tag}.yaml"));
                std::fs::write(&file, config)?;
                let mut cmd = ns.command(&bin);
                cmd.arg("run").arg("--config").arg(&file);
                cmd.env("E2E_CHAIN_KEY", KEY);
                procs.push(Process::spawn(tag, cmd)?);
            }
        }
        for v in &variants {
            wait_ready(&topo, &plan, *v)?;
        }
        // The proxies' process ids, for a profiler started from outside.
        for p in [&topo.hop1, &topo.hop2] {
            eprintln!("pids in {}: {:?}", p.name(), p.pids()?);
        }

        println!(
            "\n## Chain: client → hop1 → hop2 → server, MTU 1500, {} round(s), single {} MiB, \
             multi {STREAMS} x {} MiB, {} round trips, {} connections (or {} s); \
             load average before: {}\n",
            plan.rounds,
            plan.single >> 20,
            (plan.multi / STREAMS as u64) >> 20,
            plan.rtts,
            plan.conns,
            plan.secs,
            loadavg()
        );
        println!(
            "| metric | direct | HAProxy chain | translator | translator / HAProxy | \
             translator / direct | rounds (direct; HAProxy; translator) |"
        );
        println!("|---|---|---|---|---|---|---|");
        for metric in [Metric::Single, Metric::Multi, Metric::Rtt, Metric::Conn] {
            if cli.metric.is_some_and(|m| m != metric) {
                continue;
            }
            // [variant][round]: the value, and the p99 for rtt.
            let mut vals: [Vec<f64>; 3] = Default::default();
            let mut p99: [Vec<f64>; 3] = Default::default();
            for round in 0..plan.rounds {
                // Rotate the order, so a disturbance is shared fairly.
                let mut order = variants.clone();
                let k = round % order.len().max(1);
                order.rotate_left(k);
                for v in order {
                    let (len, count, expect) = match metric {
                        Metric::Single => (plan.single, 0, expect_single.as_str()),
                        Metric::Multi => (plan.multi, 0, expect_multi.as_str()),
                        Metric::Rtt => (0, plan.rtts, ""),
                        Metric::Conn => (0, plan.conns, ""),
                    };
                    let result =
                        measure(&topo, &plan, v, (metric, len, count, expect), plan.timeout)?;
                    let (value, tail) = match metric {
                        Metric::Single | Metric::Multi => (
                            field(&result, "bytes")? * 8.0 / field(&result, "secs")? / 1e9,
                            0.0,
                        ),
                        Metric::Rtt => (field(&result, "p50_us")?, field(&result, "p99_us")?),
                        Metric::Conn => (field(&result, "conns")? / field(&result, "secs")?, 0.0),
                    };
                    eprintln!(
                        "chain {}-{} round {round}: {result} (load {})",
                        name(v),
                        metric_name(metric),
                        loadavg()
                    );
                    let i = v as usize;
                    vals[i].push(value);
                    p99[i].push(tail);
                }
            }
            match metric {
                Metric::Single => row("1 stream throughput", &vals, "Gbit/s"),
                Metric::Multi => row("8 streams throughput", &vals, "Gbit/s"),
                Metric::Rtt => {
                    row("1-byte RTT p50", &vals, "µs");
                    row("1-byte RTT p99", &p99, "µs");
                }
                Metric::Conn => row("connections/s", &vals, "/s"),
            }
        }
        println!("\nload average after: {}", loadavg());
        for p in &mut procs {
            p.close_stdin();
            p.kill();
        }
        drop(procs);
        drop(topo);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// One table row: the medians, translator / HAProxy and translator / direct, the rounds.
    fn row(metric: &str, v: &[Vec<f64>; 3], unit: &str) {
        let med = |i: usize| median(&v[i]);
        let fmt = |i: usize| med(i).map_or("–".into(), |m| format!("{m:.2} {unit}"));
        let ratio = |a: usize, b: usize| match (med(a), med(b)) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}x", x / y),
            _ => "–".into(),
        };
        let list = |i: usize| {
            v[i].iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (d, h, t) = (
            Variant::Direct as usize,
            Variant::Haproxy as usize,
            Variant::Translator as usize,
        );
        println!(
            "| {metric} | {} | {} | {} | **{}** | {} | {}; {}; {} |",
            fmt(d),
            fmt(h),
            fmt(t),
            ratio(t, h),
            ratio(t, d),
            list(d),
            list(h),
            list(t)
        );
    }
}
