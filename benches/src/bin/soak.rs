//! Soak test: mixed legacy TCP load through a real translator chain for a long time, with a
//! policy reload every `--reload-every` and one service-router restart, checking that no
//! connection is lost and that memory and file descriptors do not grow.
//!
//! ```sh
//! cargo build --release -p translator -p serval-benches
//! target/release/soak --duration 30m                  # the hardening campaign's run
//! target/release/soak --duration 60s --out soak-ci    # the short version .ci/run runs
//! ```
//!
//! Topology, all on loopback, each translator its own process (the release
//! `serval-translator` beside this binary): legacy client (this program) → client
//! translator → service router → server translator → two legacy servers (this program).
//! The router keeps its registrations in `router.state_file` so its restart loses none.
//!
//! Load, each connection hash-checked both ways (the server answers the SHA-256 of what it
//! received, then sends a pattern whose SHA-256 the client knows):
//! - **bulk**: `--bulk` loops of 1 MiB up + 16 MiB down per connection;
//! - **short**: `--short` loops of 100 B up + 1 KiB down, one connection each;
//! - **idle**: `--idle` connections opened at the start and held to the end, each doing a
//!   16-byte exchange every few seconds (they live through every reload and the restart).
//!
//! Every `--reload-every` the client and server policies are rewritten and the translators
//! get SIGHUP: the server's backends alternate between one and two legacy servers (a
//! connection to a backend that leaves must finish on it), the client's idle timeout and a
//! second listener alternate. At `--restart-at` (default: half way) the router gets SIGTERM
//! and is started again once it has exited.
//!
//! Memory and descriptors are compared at two quiet points (only the idle connections
//! open): after a warm-up and at the end. The run fails (exit 1) on any failed or corrupted
//! connection, a refused reload, growth beyond `--max-rss-growth-kib` / `--max-fd-growth`,
//! or (runs of 10 min or more) an RSS trend above `--max-rss-slope-kib-per-min` over the
//! second half of the load. Output in `--out`: `samples.csv` (RSS, fds of each translator every
//! 10 s), `events.log` (every failure), the translators' logs and policies.

#![allow(clippy::print_stdout)] // the report is this program's output

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use serval_benches::harness::{bad, proc_status_kib, translator_binary};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};

/// The registration key of the run (hex, passed to the translators in the environment).
const KEY_HEX: &str = "5e5e5e5e00112233445566778899aabbccddeeff00112233445566778899aabb";
/// Pattern block the legacy servers send (a prime length, so blocks do not line up).
const BLOCK: usize = 65_521;
/// Every operation's hang guard.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(about = "Soak: mixed load, reloads and a router restart through a translator chain")]
struct Cli {
    /// How long the load runs (after a warm-up of a quarter of it, at most 2 min).
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    duration: Duration,
    /// Time between two policy reloads.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    reload_every: Duration,
    /// When the router restarts (from the start of the load); default half way.
    #[arg(long, value_parser = parse_duration)]
    restart_at: Option<Duration>,
    /// Bulk transfer loops.
    #[arg(long, default_value_t = 2)]
    bulk: usize,
    /// Short-connection loops.
    #[arg(long, default_value_t = 4)]
    short: usize,
    /// Idle connections held through the run.
    #[arg(long, default_value_t = 200)]
    idle: usize,
    /// Largest RSS growth of a translator between the two quiet points (KiB).
    #[arg(long, default_value_t = 32 * 1024)]
    max_rss_growth_kib: u64,
    /// Largest RSS trend of a translator over the second half of the load (KiB per minute,
    /// least squares over the 10 s samples); checked when `--duration` is 10 min or more.
    #[arg(long, default_value_t = 512.0)]
    max_rss_slope_kib_per_min: f64,
    /// Largest growth in open file descriptors of a translator between the quiet points.
    #[arg(long, default_value_t = 4)]
    max_fd_growth: i64,
    /// Where logs, policies and samples go.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    /// The serval-translator binary (default: `E2E_TRANSLATOR`, else beside this one).
    #[arg(long)]
    translator: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("unknown unit in {s} (ms, s, m, h)")),
    }
}

// ------------------------------------------------------------------------------------------
// The byte stream both ends agree on

fn block() -> &'static [u8] {
    static BLOCK_BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BLOCK_BYTES.get_or_init(|| {
        let mut x: u32 = 0x9e37_79b9;
        (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()[0]
            })
            .collect()
    })
}

/// The first `len` bytes of the endless pattern, piece by piece.
fn pieces(len: u64) -> impl Iterator<Item = &'static [u8]> {
    let mut left = len;
    core::iter::from_fn(move || {
        let n = usize::try_from(left.min(BLOCK as u64)).ok()?;
        if n == 0 {
            return None;
        }
        left -= n as u64;
        Some(&block()[..n])
    })
}

fn pattern_sha(len: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    pieces(len).for_each(|p| h.update(p));
    h.finalize().into()
}

/// Digests of the sizes the load uses, computed once.
fn digest(len: u64) -> [u8; 32] {
    static CACHE: Mutex<BTreeMap<u64, [u8; 32]>> = Mutex::new(BTreeMap::new());
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *cache.entry(len).or_insert_with(|| pattern_sha(len))
}

// ------------------------------------------------------------------------------------------
// Legacy server: per request, 16 bytes (up length, down length), then `up` bytes; answers
// the SHA-256 of those bytes and `down` pattern bytes. Several requests per connection.

async fn legacy_server(listener: TcpListener, served: Arc<AtomicU64>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        served.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let mut head = [0u8; 16];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let (up, down) = split_head(&head);
                let mut h = Sha256::new();
                let mut left = up;
                while left > 0 {
                    let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                    match s.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            h.update(&buf[..n]);
                            left -= n as u64;
                        }
                    }
                }
                let sum: [u8; 32] = h.finalize().into();
                if s.write_all(&sum).await.is_err() {
                    return;
                }
                for p in pieces(down) {
                    if s.write_all(p).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

fn split_head(head: &[u8; 16]) -> (u64, u64) {
    let mut up = [0u8; 8];
    let mut down = [0u8; 8];
    up.copy_from_slice(&head[..8]);
    down.copy_from_slice(&head[8..]);
    (u64::from_be_bytes(up), u64::from_be_bytes(down))
}

/// One request on `s`: sends `up` pattern bytes, checks the server's digest of them and
/// the digest of the `down` bytes it sends back.
async fn exchange(s: &mut TcpStream, up: u64, down: u64) -> io::Result<()> {
    let mut head = [0u8; 16];
    head[..8].copy_from_slice(&up.to_be_bytes());
    head[8..].copy_from_slice(&down.to_be_bytes());
    s.write_all(&head).await?;
    for p in pieces(up) {
        s.write_all(p).await?;
    }
    let mut sum = [0u8; 32];
    s.read_exact(&mut sum).await?;
    if sum != digest(up) {
        return Err(bad("CORRUPT: the server received other bytes than sent"));
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut left = down;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = s.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(bad(format!("closed with {left} bytes to come")));
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    if <[u8; 32]>::from(h.finalize()) != digest(down) {
        return Err(bad("CORRUPT: the client received other bytes than sent"));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Load

#[derive(Default, Debug)]
struct Class {
    ok: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Default, Debug)]
struct Load {
    bulk: Class,
    short: Class,
    idle: Class,
    events: Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, class: &Class, start: Instant, what: &str, e: &io::Error) {
        class.failed.fetch_add(1, Ordering::Relaxed);
        let line = format!("{:>8.3}s {what}: {e}", start.elapsed().as_secs_f64());
        eprintln!("{line}");
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line);
    }
}

async fn one_connection(addr: SocketAddr, up: u64, down: u64) -> io::Result<()> {
    timeout(OP_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await?;
        exchange(&mut s, up, down).await?;
        s.shutdown().await?;
        // The server closes after our FIN: a clean end both ways.
        let mut rest = [0u8; 1];
        match s.read(&mut rest).await? {
            0 => Ok(()),
            _ => Err(bad("bytes after the answer")),
        }
    })
    .await
    .map_err(|_| bad("timed out"))?
}

async fn looped(
    load: Arc<Load>,
    addr: SocketAddr,
    bulk: bool,
    running: Arc<AtomicBool>,
    start: Instant,
) {
    let (up, down) = if bulk {
        (1 << 20, 16 << 20)
    } else {
        (100, 1024)
    };
    while running.load(Ordering::Relaxed) {
        let class = if bulk { &load.bulk } else { &load.short };
        match one_connection(addr, up, down).await {
            Ok(()) => {
                class.ok.fetch_add(1, Ordering::Relaxed);
                class.bytes.fetch_add(up + down, Ordering::Relaxed);
            }
            Err(e) => load.fail(class, start, if bulk { "bulk" } else { "short" }, &e),
        }
    }
}

/// An idle connection: opened, then a small exchange every few seconds until `running`
/// goes false, then one last exchange and a clean close.
async fn idle(
    load: Arc<Load>,
    addr: SocketAddr,
    n: usize,
    running: Arc<AtomicBool>,
    start: Instant,
) {
    let result = async {
        let mut s = timeout(OP_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| bad("connect timed out"))??;
        timeout(OP_TIMEOUT, exchange(&mut s, 16, 16))
            .await
            .map_err(|_| bad("first exchange timed out"))??;
        load.idle.ok.fetch_add(1, Ordering::Relaxed);
        // Spread the pings over the period.
        let period = Duration::from_millis(5000 + (n as u64 * 37) % 1000);
        while running.load(Ordering::Relaxed) {
            sleep(period).await;
            timeout(OP_TIMEOUT, exchange(&mut s, 16, 16))
                .await
                .map_err(|_| bad("ping timed out"))??;
            load.idle.bytes.fetch_add(32, Ordering::Relaxed);
        }
        s.shutdown().await?;
        Ok::<_, io::Error>(())
    }
    .await;
    if let Err(e) = result {
        load.fail(&load.idle, start, &format!("idle #{n}"), &e);
    }
}

// ------------------------------------------------------------------------------------------
// Processes

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

fn free_port() -> io::Result<u16> {
    // Both protocols free at once: the router takes UDP, listeners TCP.
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(bad("no free port"))
}

fn spawn(bin: &Path, out: &Path, name: &'static str, gen_: u32) -> io::Result<Proc> {
    let policy = out.join(format!("{name}.yaml"));
    let log = out.join(format!("{name}-{gen_}.log"));
    let child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&policy)
        .env("SERVAL_SOAK_KEY", KEY_HEX)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(
            out.join(format!("{name}-{gen_}.err")),
        )?)
        .spawn()?;
    Ok(Proc { name, child, log })
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default());
        text
    }

    /// Waits until the log holds `what` `times` times (bounded).
    async fn wait_log(&mut self, what: &str, times: usize) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.log_text().matches(what).count() >= times {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(bad(format!(
                    "{} exited ({status}) waiting for {what:?}",
                    self.name
                )));
            }
            sleep(Duration::from_millis(50)).await;
        }
        Err(bad(format!(
            "{}: no {what:?} in its log after 30 s",
            self.name
        )))
    }

    fn signal(&self, sig: &str) -> io::Result<()> {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()?
            .success();
        if ok {
            Ok(())
        } else {
            Err(bad(format!("kill {sig} {}", self.name)))
        }
    }

    /// SIGTERM, then waits for the drain to finish (bounded).
    async fn stop(&mut self) -> io::Result<()> {
        self.signal("-TERM")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            sleep(Duration::from_millis(20)).await;
        }
        self.child.kill()?;
        Err(bad(format!(
            "{} did not stop within 60 s of SIGTERM",
            self.name
        )))
    }
}

/// Appends a `samples.csv` line (time, name, RSS, descriptors) per process.
/// RSS samples of the translators during the main phase: (seconds, KiB) per process.
#[derive(Default)]
struct Series {
    client: Vec<(f64, f64)>,
    server: Vec<(f64, f64)>,
}

fn sample(samples: &mut String, series: &mut Series, start: Instant, procs: [&Proc; 3]) {
    let t = start.elapsed().as_secs_f64();
    for p in procs {
        let (rss, fds) = usage(p.pid());
        let _ = writeln!(samples, "{t:.1},{},{rss},{fds}", p.name);
        match p.name {
            "client" => series.client.push((t, rss as f64)),
            "server" => series.server.push((t, rss as f64)),
            _ => {}
        }
    }
}

/// Least-squares slope of RSS over the second half of `points`, in KiB per minute: a leak
/// shows as a steady rise there, while the ramp of the first minutes and single spikes
/// (a reload, the router restart) weigh little. `None` below 10 points.
fn rss_slope_per_min(points: &[(f64, f64)]) -> Option<f64> {
    let half = &points[points.len() / 2..];
    if half.len() < 10 {
        return None;
    }
    let n = half.len() as f64;
    let (mt, mr) = half
        .iter()
        .fold((0.0, 0.0), |(t, r), p| (t + p.0 / n, r + p.1 / n));
    let (cov, var) = half.iter().fold((0.0, 0.0), |(c, v), p| {
        (c + (p.0 - mt) * (p.1 - mr), v + (p.0 - mt) * (p.0 - mt))
    });
    (var > 0.0).then(|| cov / var * 60.0)
}

/// RSS (KiB) and open descriptors of a process.
fn usage(pid: u32) -> (u64, i64) {
    let rss = proc_status_kib(pid, "VmRSS").unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(-1, |d| d.count() as i64);
    (rss, fds)
}

struct Policies {
    router_port: u16,
    client_admin: u16,
    server_admin: u16,
    client_port: u16,
    extra_port: u16,
    backends: [SocketAddr; 2],
    state: PathBuf,
}

impl Policies {
    fn router(&self) -> String {
        format!(
            "serval: {{bind: 127.0.0.1:{}}}\nadmin: {{listen: ~}}\nrouter:\n  keys: [{{id: 1, env: SERVAL_SOAK_KEY}}]\n  state_file: {}\n",
            self.router_port,
            self.state.display()
        )
    }

    /// The server policy of reload `n`: one backend on even reloads, both on odd ones.
    fn server(&self, n: u32) -> String {
        let backends: Vec<String> = self.backends[..1 + (n % 2) as usize]
            .iter()
            .map(|a| format!("{{address: \"{a}\"}}"))
            .collect();
        format!(
            "serval: {{bind: 127.0.0.1:0, routers: [\"127.0.0.1:{}\"], key: {{id: 1, env: SERVAL_SOAK_KEY}}}}\nadmin: {{listen: \"127.0.0.1:{}\"}}\nrelay: {{max_connections: 65536}}\nserver:\n  services:\n    - {{name: soak, prefix: \"name:soak.test\", backends: [{}]}}\n",
            self.router_port,
            self.server_admin,
            backends.join(", ")
        )
    }

    /// The client policy of reload `n`: the idle timeout and a second listener alternate.
    fn client(&self, n: u32) -> String {
        let mut text = format!(
            "serval: {{bind: 127.0.0.1:0, routers: [\"127.0.0.1:{}\"]}}\nadmin: {{listen: \"127.0.0.1:{}\"}}\nrelay: {{max_connections: 65536, idle_timeout: {}s}}\nclient:\n  listeners:\n    - {{name: soak, listen: \"127.0.0.1:{}\", service: \"name:soak.test\"}}\n",
            self.router_port,
            self.client_admin,
            600 + n % 2,
            self.client_port
        );
        if n % 2 == 1 {
            let _ = writeln!(
                text,
                "    - {{name: extra, listen: \"127.0.0.1:{}\", service: \"name:soak.test\"}}",
                self.extra_port
            );
        }
        text
    }
}

fn write(path: &Path, text: &str) -> io::Result<()> {
    std::fs::write(path, text)
}

// ------------------------------------------------------------------------------------------

fn main() -> io::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let code = rt.block_on(run(&cli))?;
    std::process::exit(code);
}

#[derive(Clone, Debug, Default)]
struct Quiet {
    client: (u64, i64),
    server: (u64, i64),
    /// Serval flows alive (`serval_stack_flows`) and their states (`GET /flows`).
    client_flows: (u64, String),
    server_flows: (u64, String),
}

/// GET `path` from the admin API on `port` (HTTP/1.0, the whole answer's body).
async fn admin_get(port: u16, path: &str) -> io::Result<String> {
    timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: soak\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default())
    })
    .await
    .map_err(|_| bad("admin API timed out"))?
}

/// The endpoint's live flows and how many are in each state (first 1000 flows).
/// The Serval flows alive in a translator (its `serval_stack_flows` gauge).
async fn live_flows(port: u16) -> u64 {
    let metrics = admin_get(port, "/metrics").await.unwrap_or_default();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("serval_stack_flows "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Live flows and their count by state (over every page of `GET /flows`).
async fn flows(port: u16) -> (u64, String) {
    let live = live_flows(port).await;
    // Every page of the listing (1 000 flows each), so the states add up to all flows.
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut after = String::new();
    for _ in 0..100 {
        let list = admin_get(port, &format!("/flows?limit=1000{after}"))
            .await
            .unwrap_or_default();
        for part in list.split("\"state\":").skip(1) {
            if let Some(state) = part.trim_start().trim_start_matches('"').split('"').next() {
                *states.entry(state.to_owned()).or_default() += 1;
            }
        }
        let next = list
            .split("\"next_after\":")
            .nth(1)
            .map(|v| {
                v.trim_start()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .filter(|v| !v.is_empty());
        match next {
            Some(n) => after = format!("&after={n}"),
            None => break,
        }
    }
    let states: Vec<String> = states.iter().map(|(k, v)| format!("{k}={v}")).collect();
    (live, states.join(" "))
}

async fn run(cli: &Cli) -> io::Result<i32> {
    let bin = match &cli.translator {
        Some(b) => b.clone(),
        None => translator_binary()?,
    };
    let out = std::fs::canonicalize({
        std::fs::create_dir_all(&cli.out)?;
        &cli.out
    })?;
    let start = Instant::now();

    // Legacy servers.
    let served = Arc::new(AtomicU64::new(0));
    let mut backends = Vec::new();
    for _ in 0..2 {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        backends.push(l.local_addr()?);
        tokio::spawn(legacy_server(l, served.clone()));
    }
    let state = out.join("router-state.json");
    let _ = std::fs::remove_file(&state);
    let policies = Policies {
        router_port: free_port()?,
        client_admin: free_port()?,
        server_admin: free_port()?,
        client_port: free_port()?,
        extra_port: free_port()?,
        backends: [backends[0], backends[1]],
        state,
    };
    write(&out.join("router.yaml"), &policies.router())?;
    write(&out.join("server.yaml"), &policies.server(0))?;
    write(&out.join("client.yaml"), &policies.client(0))?;

    let mut router = spawn(&bin, &out, "router", 0)?;
    router.wait_log("translator started", 1).await?;
    let mut server = spawn(&bin, &out, "server", 0)?;
    server.wait_log("registered with router", 1).await?;
    let mut client = spawn(&bin, &out, "client", 0)?;
    client.wait_log("translator started", 1).await?;
    let addr: SocketAddr = ([127, 0, 0, 1], policies.client_port).into();
    println!(
        "soak: router {} server {} client {} (pids {} {} {}), load {:?}, reload every {:?}",
        policies.router_port,
        backends[0],
        addr,
        router.pid(),
        server.pid(),
        client.pid(),
        cli.duration,
        cli.reload_every
    );

    let load = Arc::new(Load::default());
    let idle_running = Arc::new(AtomicBool::new(true));
    let mut idle_tasks = Vec::new();
    for n in 0..cli.idle {
        idle_tasks.push(tokio::spawn(idle(
            load.clone(),
            addr,
            n,
            idle_running.clone(),
            start,
        )));
    }

    // Warm-up (a quarter of the run, at most 2 min: long enough for buffers and the
    // allocator to reach their working size), then the first quiet point.
    let warm = (cli.duration / 4).min(Duration::from_secs(120));
    let quiet_a = phase(cli, &policies, &load, warm, start, &client, &server).await;
    let mut samples = String::from("t_s,proc,rss_kib,fds\n");
    let mut series = Series::default();

    // The soak proper: load, reloads, one router restart.
    let running = Arc::new(AtomicBool::new(true));
    let mut loops = Vec::new();
    for i in 0..cli.bulk + cli.short {
        loops.push(tokio::spawn(looped(
            load.clone(),
            addr,
            i < cli.bulk,
            running.clone(),
            start,
        )));
    }
    let soak_start = Instant::now();
    let restart_at = cli.restart_at.unwrap_or(cli.duration / 2);
    let mut restarted = None;
    let mut reloads = 0u32;
    let mut next_reload = soak_start + cli.reload_every;
    let mut next_sample = soak_start;
    let mut failure = None;
    while soak_start.elapsed() < cli.duration {
        let now = Instant::now();
        if now >= next_sample {
            sample(
                &mut samples,
                &mut series,
                start,
                [&router, &server, &client],
            );
            next_sample = now + Duration::from_secs(10);
        }
        if restarted.is_none() && soak_start.elapsed() >= restart_at {
            let t = Instant::now();
            router.stop().await?;
            router = spawn(&bin, &out, "router", 1)?;
            router.wait_log("translator started", 1).await?;
            let gap = t.elapsed();
            let restored = router.log_text().contains("router state restored");
            println!(
                "router restarted at {:.1}s: down {:.0} ms, state restored: {restored}",
                start.elapsed().as_secs_f64(),
                gap.as_secs_f64() * 1e3
            );
            restarted = Some((gap, restored));
        }
        if now >= next_reload {
            reloads += 1;
            write(&out.join("server.yaml"), &policies.server(reloads))?;
            write(&out.join("client.yaml"), &policies.client(reloads))?;
            server.signal("-HUP")?;
            client.signal("-HUP")?;
            for p in [&mut server, &mut client] {
                if let Err(e) = p.wait_log("policy reloaded", reloads as usize).await {
                    failure = Some(format!("reload {reloads}: {e}"));
                }
            }
            if failure.is_some() {
                break;
            }
            next_reload += cli.reload_every;
        }
        sleep(Duration::from_millis(100)).await;
    }
    running.store(false, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }

    // Second quiet point: only the idle connections are open again.
    let quiet_b = phase(
        cli,
        &policies,
        &load,
        Duration::ZERO,
        start,
        &client,
        &server,
    )
    .await;
    idle_running.store(false, Ordering::Relaxed);
    for t in idle_tasks {
        let _ = t.await;
    }
    sample(
        &mut samples,
        &mut series,
        start,
        [&router, &server, &client],
    );
    write(&out.join("samples.csv"), &samples)?;
    let events = load
        .events
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .join("\n");
    write(&out.join("events.log"), &events)?;
    for p in [&mut client, &mut server, &mut router] {
        p.stop().await?;
    }

    // Report.
    let mut failed = false;
    println!("\nclass   connections_ok  failed  bytes");
    for (name, c) in [
        ("bulk", &load.bulk),
        ("short", &load.short),
        ("idle", &load.idle),
    ] {
        let f = c.failed.load(Ordering::Relaxed);
        failed |= f > 0;
        println!(
            "{name:<7} {:>14}  {f:>6}  {}",
            c.ok.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed)
        );
    }
    println!("reloads: {reloads}");
    match restarted {
        Some((gap, restored)) => {
            println!(
                "router restart: down {:.0} ms, state restored: {restored}",
                gap.as_secs_f64() * 1e3
            );
            failed |= !restored;
        }
        None => println!("router restart: not reached"),
    }
    println!("\nquiet point   client rss KiB / fds   server rss KiB / fds");
    for (name, q) in [("after warm-up", &quiet_a), ("at the end", &quiet_b)] {
        println!(
            "{name:<13} {:>10} / {:<6}        {:>10} / {:<6}",
            q.client.0, q.client.1, q.server.0, q.server.1
        );
    }
    println!("\nquiet point   Serval flows alive (states): client | server");
    for (name, q) in [("after warm-up", &quiet_a), ("at the end", &quiet_b)] {
        println!(
            "{name:<13} {} ({}) | {} ({})",
            q.client_flows.0, q.client_flows.1, q.server_flows.0, q.server_flows.1
        );
    }
    for (name, a, b) in [
        ("client", quiet_a.client, quiet_b.client),
        ("server", quiet_a.server, quiet_b.server),
    ] {
        let rss_growth = b.0.saturating_sub(a.0);
        let fd_growth = b.1 - a.1;
        println!("{name}: rss growth {rss_growth} KiB, fd growth {fd_growth}");
        if rss_growth > cli.max_rss_growth_kib || fd_growth > cli.max_fd_growth {
            println!("{name}: GROWTH beyond the bounds");
            failed = true;
        }
    }
    // A slow leak over a long run: the quiet points alone would let ~1 MiB/min pass in
    // 30 minutes. Judged only when the main phase is long enough for a trend.
    for (name, points) in [("client", &series.client), ("server", &series.server)] {
        let Some(slope) = rss_slope_per_min(points) else {
            continue;
        };
        println!("{name}: rss trend over the second half {slope:+.0} KiB/min");
        if cli.duration >= Duration::from_secs(600) && slope > cli.max_rss_slope_kib_per_min {
            println!(
                "{name}: RSS keeps GROWING (bound {} KiB/min)",
                cli.max_rss_slope_kib_per_min
            );
            failed = true;
        }
    }
    if let Some(f) = &failure {
        println!("FAILED: {f}");
        failed = true;
    }
    println!("{}", if failed { "SOAK FAILED" } else { "SOAK PASSED" });
    Ok(i32::from(failed))
}

/// Runs bulk and short load for `len` (if any), then waits until only the idle
/// connections are open on both translators (bounded), and samples both processes.
async fn phase(
    cli: &Cli,
    policies: &Policies,
    load: &Arc<Load>,
    len: Duration,
    start: Instant,
    client: &Proc,
    server: &Proc,
) -> Quiet {
    let addr: SocketAddr = ([127, 0, 0, 1], policies.client_port).into();
    if !len.is_zero() {
        let running = Arc::new(AtomicBool::new(true));
        let tasks: Vec<_> = (0..cli.bulk + cli.short)
            .map(|i| {
                tokio::spawn(looped(
                    load.clone(),
                    addr,
                    i < cli.bulk,
                    running.clone(),
                    start,
                ))
            })
            .collect();
        sleep(len).await;
        running.store(false, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
    }
    // Descriptors settle once closed connections are gone on both sides, Serval flows once
    // the short connections' 5 s TIME-WAIT is over (the SAL lists such a flow as connected
    // until its stream's TIME-WAIT ends): wait until two samples a second apart agree
    // (bounded to 30 s).
    let settled = || async {
        (
            usage(client.pid()).1,
            usage(server.pid()).1,
            live_flows(policies.client_admin).await,
            live_flows(policies.server_admin).await,
        )
    };
    let mut last = settled().await;
    for _ in 0..30 {
        sleep(Duration::from_secs(1)).await;
        let now = settled().await;
        if now == last {
            break;
        }
        last = now;
    }
    Quiet {
        client: usage(client.pid()),
        server: usage(server.pid()),
        client_flows: flows(policies.client_admin).await,
        server_flows: flows(policies.server_admin).await,
    }
}

#[cfg(test)]
mod tests {
    use super::rss_slope_per_min;

    /// Samples every 10 s for `minutes`, RSS from `f(seconds)`.
    fn series(minutes: u32, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..minutes * 6)
            .map(|i| f64::from(i) * 10.0)
            .map(|t| (t, f(t)))
            .collect()
    }

    #[test]
    fn a_steady_leak_shows_its_rate_and_a_late_spike_or_an_early_ramp_does_not() {
        // The metrics leak of the first soaks: ~1.3 MiB per minute.
        let leak = series(30, |t| 50_000.0 + 1331.0 * t / 60.0);
        let slope = rss_slope_per_min(&leak).unwrap();
        assert!((slope - 1331.0).abs() < 1.0, "{slope}");
        // A ramp in the first minutes, then flat with one dip (the router restart).
        let flat = series(30, |t| {
            let base = 60_000.0 + 8_000.0 * (t / 300.0).min(1.0);
            if (1_000.0..1_060.0).contains(&t) {
                base - 9_000.0
            } else {
                base
            }
        });
        let slope = rss_slope_per_min(&flat).unwrap();
        assert!(slope.abs() < 512.0, "{slope}");
        assert_eq!(rss_slope_per_min(&series(3, |_| 1.0)), None);
    }
}
