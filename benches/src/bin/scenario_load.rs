//! Load generator of the case-study scenarios (`benches/scenarios/`): a legacy TCP client,
//! unaware of Serval, that talks to a client-side translator's listeners and samples its own
//! counters every `--sample` so the scenarios can plot rates over time.
//!
//! ```sh
//! scenario_load memcache --base-port 21000 --partitions 16 --servers 4 --duration 20s --out m.csv
//! scenario_load http --port 8080 --names a,b --concurrency 8 --duration 20s --out h.csv
//! scenario_load download --port 8080 --path /data.bin --expect-len N --expect-sha HEX --out d.csv
//! ```
//!
//! - **memcache**: the memcached ASCII protocol. Keys are hashed to `--partitions`
//!   partitions; partition `p` is reached through local port `base-port + p` (one client
//!   listener, one ServiceID per partition). A worker per partition (times `--workers`) opens
//!   a connection, asks `stats settings` which server answered (its `tcpport` minus
//!   `--server-base-port` is the server's index), then runs `--conn-ops` get-or-set
//!   operations and closes; new connections are resolved afresh by the service router, so a
//!   re-partitioning applies from the next connection on. Values are a function of the key,
//!   so every hit is checked (a wrong value is an error). Misses (a partition moved to a
//!   server that never saw the key) are counted, not errors.
//! - **http**: HTTP/1.0 `GET /who`, one connection per request, `--concurrency` loops; the
//!   replica's name is the body. Any failure (refused, reset, non-200, unknown body) counts.
//! - **download**: one HTTP/1.0 GET of a large file over one connection; the body's length
//!   and SHA-256 are checked; the longest time without a byte (after the first) is reported.
//!
//! Output: `--out` CSV with cumulative counters every `--sample` (time in ms from start),
//! `--events` one line per failure (`t_ms,what`), and a last `SUMMARY ...` line on stdout.
//! Every operation has a timeout and the run a duration: nothing waits for ever. Exit status
//! 0 unless the download check fails or the run could not start.

#![allow(clippy::print_stdout)] // the summary is this program's output

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

#[derive(Parser, Debug)]
#[command(about = "Legacy TCP load for the case-study scenarios")]
struct Cli {
    /// Sampling interval of the counters (ms).
    #[arg(long, default_value_t = 100, global = true)]
    sample_ms: u64,
    /// CSV of cumulative counters.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// One line per failure.
    #[arg(long, global = true)]
    events: Option<PathBuf>,
    /// download: one line per pause of 20 ms or more between two reads (`t_ms,gap_ms`, the
    /// time the pause began).
    #[arg(long, global = true)]
    gaps: Option<PathBuf>,
    /// Per-operation timeout (ms).
    #[arg(long, default_value_t = 3000, global = true)]
    op_timeout_ms: u64,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// memcached get/set load over partition ports.
    Memcache {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long)]
        base_port: u16,
        #[arg(long, default_value_t = 16)]
        partitions: u16,
        /// Number of servers (columns); a server is `tcpport - server_base_port`.
        #[arg(long, default_value_t = 4)]
        servers: usize,
        #[arg(long, default_value_t = 11211)]
        server_base_port: u16,
        /// Workers per partition.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Operations per connection.
        #[arg(long, default_value_t = 64)]
        conn_ops: u32,
        /// Keys per partition.
        #[arg(long, default_value_t = 500)]
        keys: u32,
        /// Run time (s).
        #[arg(long)]
        duration_s: f64,
    },
    /// HTTP GET /who, one connection per request.
    Http {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long)]
        port: u16,
        /// Replica names (the bodies), in column order.
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long)]
        duration_s: f64,
    },
    /// One long HTTP download, checked by length and SHA-256.
    Download {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "/data.bin")]
        path: String,
        #[arg(long)]
        expect_len: u64,
        #[arg(long)]
        expect_sha: String,
        /// Bound of the whole download (s).
        #[arg(long, default_value_t = 600.0)]
        max_s: f64,
    },
}

/// The run's clock: a load generator's stopwatch, not the protocol core's clock.
fn now() -> Instant {
    Instant::now()
}

/// Failure log shared by the workers.
#[derive(Debug, Default)]
struct Events {
    lines: Mutex<Vec<String>>,
}

impl Events {
    fn push(&self, start: Instant, what: &str) {
        let t = start.elapsed().as_millis();
        if let Ok(mut v) = self.lines.lock() {
            v.push(format!("{t},{}", what.replace([',', '\n', '\r'], " ")));
        }
    }
    fn write(&self, path: Option<&PathBuf>) -> std::io::Result<()> {
        let Some(path) = path else { return Ok(()) };
        let lines = self.lines.lock().map(|v| v.clone()).unwrap_or_default();
        let mut f = std::fs::File::create(path)?;
        writeln!(f, "t_ms,what")?;
        for l in lines {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Samples `columns()` every `every` until `stop`, into CSV lines (header first).
async fn sampler(
    start: Instant,
    every: Duration,
    header: String,
    stop: Arc<AtomicBool>,
    columns: impl Fn() -> Vec<u64>,
) -> Vec<String> {
    let mut lines = vec![header];
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let mut line = start.elapsed().as_millis().to_string();
        for c in columns() {
            let _ = write!(line, ",{c}");
        }
        lines.push(line);
        if stop.load(Ordering::Relaxed) {
            return lines;
        }
    }
}

fn write_csv(path: Option<&PathBuf>, lines: &[String]) -> std::io::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for l in lines {
        writeln!(f, "{l}")?;
    }
    f.flush()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scenario_load: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<i32, String> {
    let every = Duration::from_millis(cli.sample_ms.max(10));
    let op = Duration::from_millis(cli.op_timeout_ms.max(1));
    match cli.what {
        What::Memcache {
            host,
            base_port,
            partitions,
            servers,
            server_base_port,
            workers,
            conn_ops,
            keys,
            duration_s,
        } => {
            let m = Arc::new(Memcache {
                host,
                base_port,
                servers,
                server_base_port,
                conn_ops: conn_ops.max(1),
                keys: keys.max(1),
                op,
                per_server: (0..servers).map(|_| AtomicU64::new(0)).collect(),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                events: Events::default(),
            });
            let start = now();
            let end = start + Duration::from_secs_f64(duration_s);
            let stop = Arc::new(AtomicBool::new(false));
            let mut header = "t_ms".to_owned();
            for s in 0..servers {
                let _ = write!(header, ",s{s}");
            }
            header.push_str(",hits,misses,errors");
            let mc = m.clone();
            let sampling = tokio::spawn(sampler(start, every, header, stop.clone(), move || {
                let mut v: Vec<u64> = mc
                    .per_server
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .collect();
                v.push(mc.hits.load(Ordering::Relaxed));
                v.push(mc.misses.load(Ordering::Relaxed));
                v.push(mc.errors.load(Ordering::Relaxed));
                v
            }));
            let mut tasks = Vec::new();
            for p in 0..partitions {
                for w in 0..workers.max(1) {
                    let m = m.clone();
                    let seed = u64::from(p) * 1000 + w as u64;
                    tasks.push(tokio::spawn(async move {
                        m.worker(p, seed, start, end).await;
                    }));
                }
            }
            for t in tasks {
                let _ = t.await;
            }
            stop.store(true, Ordering::Relaxed);
            let lines = sampling.await.map_err(|e| e.to_string())?;
            write_csv(cli.out.as_ref(), &lines).map_err(|e| e.to_string())?;
            m.events
                .write(cli.events.as_ref())
                .map_err(|e| e.to_string())?;
            let per: Vec<String> = m
                .per_server
                .iter()
                .enumerate()
                .map(|(i, c)| format!("s{i}={}", c.load(Ordering::Relaxed)))
                .collect();
            println!(
                "SUMMARY requests={} {} hits={} misses={} errors={} seconds={:.1}",
                m.per_server
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum::<u64>(),
                per.join(" "),
                m.hits.load(Ordering::Relaxed),
                m.misses.load(Ordering::Relaxed),
                m.errors.load(Ordering::Relaxed),
                start.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        What::Http {
            host,
            port,
            names,
            concurrency,
            duration_s,
        } => {
            let h = Arc::new(Http {
                addr: format!("{host}:{port}"),
                per_name: names.iter().map(|_| AtomicU64::new(0)).collect(),
                names,
                failures: AtomicU64::new(0),
                op,
                events: Events::default(),
            });
            let start = now();
            let end = start + Duration::from_secs_f64(duration_s);
            let stop = Arc::new(AtomicBool::new(false));
            let mut header = "t_ms".to_owned();
            for n in &h.names {
                let _ = write!(header, ",{n}");
            }
            header.push_str(",failures");
            let hc = h.clone();
            let sampling = tokio::spawn(sampler(start, every, header, stop.clone(), move || {
                let mut v: Vec<u64> = hc
                    .per_name
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .collect();
                v.push(hc.failures.load(Ordering::Relaxed));
                v
            }));
            let mut tasks = Vec::new();
            for _ in 0..concurrency.max(1) {
                let h = h.clone();
                tasks.push(tokio::spawn(async move { h.worker(start, end).await }));
            }
            for t in tasks {
                let _ = t.await;
            }
            stop.store(true, Ordering::Relaxed);
            let lines = sampling.await.map_err(|e| e.to_string())?;
            write_csv(cli.out.as_ref(), &lines).map_err(|e| e.to_string())?;
            h.events
                .write(cli.events.as_ref())
                .map_err(|e| e.to_string())?;
            let per: Vec<String> = h
                .names
                .iter()
                .zip(&h.per_name)
                .map(|(n, c)| format!("{n}={}", c.load(Ordering::Relaxed)))
                .collect();
            println!(
                "SUMMARY requests={} {} failures={} seconds={:.1}",
                h.per_name
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum::<u64>(),
                per.join(" "),
                h.failures.load(Ordering::Relaxed),
                start.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        What::Download {
            host,
            port,
            path,
            expect_len,
            expect_sha,
            max_s,
        } => {
            let bytes = Arc::new(AtomicU64::new(0));
            let start = now();
            let stop = Arc::new(AtomicBool::new(false));
            let b = bytes.clone();
            let sampling = tokio::spawn(sampler(
                start,
                every,
                "t_ms,bytes".to_owned(),
                stop.clone(),
                move || vec![b.load(Ordering::Relaxed)],
            ));
            let events = Events::default();
            let got = timeout(
                Duration::from_secs_f64(max_s),
                download(&format!("{host}:{port}"), &path, &bytes, op),
            )
            .await
            .unwrap_or_else(|_| Err("the download did not finish in time".to_owned()));
            stop.store(true, Ordering::Relaxed);
            let lines = sampling.await.map_err(|e| e.to_string())?;
            write_csv(cli.out.as_ref(), &lines).map_err(|e| e.to_string())?;
            let code = match got {
                Ok(d) => {
                    if let Some(path) = cli.gaps.as_ref() {
                        let mut lines = vec!["t_ms,gap_ms".to_owned()];
                        lines.extend(d.gaps.iter().map(|(t, g)| format!("{t},{g}")));
                        write_csv(Some(path), &lines).map_err(|e| e.to_string())?;
                    }
                    let ok = d.len == expect_len && d.sha == expect_sha.to_ascii_lowercase();
                    if !ok {
                        events.push(start, "content differs");
                    }
                    println!(
                        "SUMMARY ok={ok} bytes={} sha256={} max_gap_ms={} gap_at_ms={} seconds={:.2}",
                        d.len,
                        d.sha,
                        d.max_gap.as_millis(),
                        d.gap_at.as_millis(),
                        start.elapsed().as_secs_f64()
                    );
                    i32::from(!ok)
                }
                Err(e) => {
                    events.push(start, &e);
                    println!(
                        "SUMMARY ok=false bytes={} error={e:?}",
                        bytes.load(Ordering::Relaxed)
                    );
                    1
                }
            };
            events
                .write(cli.events.as_ref())
                .map_err(|e| e.to_string())?;
            Ok(code)
        }
    }
}

/// The memcache load's shared state.
#[derive(Debug)]
struct Memcache {
    host: String,
    base_port: u16,
    servers: usize,
    server_base_port: u16,
    conn_ops: u32,
    keys: u32,
    op: Duration,
    per_server: Vec<AtomicU64>,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    events: Events,
}

/// The value stored under `key` (checked on every hit).
fn value_of(key: &str) -> String {
    format!("value-of-{key}-{}", key.len() * 7919)
}

impl Memcache {
    async fn worker(&self, partition: u16, seed: u64, start: Instant, end: Instant) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        while now() < end {
            match self.connection(partition, &mut rng, end).await {
                Ok(()) => {}
                Err(e) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    self.events.push(start, &format!("p{partition}: {e}"));
                    // Back off a little before the next attempt (bounded by the run's end).
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// One connection: identify the server, then `conn_ops` operations.
    async fn connection(
        &self,
        partition: u16,
        rng: &mut ChaCha8Rng,
        end: Instant,
    ) -> Result<(), String> {
        let addr = format!("{}:{}", self.host, self.base_port + partition);
        let stream = timeout(self.op, TcpStream::connect(&addr))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut s = BufReader::new(stream);
        let server = self.identify(&mut s).await?;
        let counter = &self.per_server[server];
        for _ in 0..self.conn_ops {
            if now() >= end {
                break;
            }
            let key = format!("p{partition}:k{}", rng.random_range(0..self.keys));
            let want = value_of(&key);
            let got = timeout(self.op, get(&mut s, &key))
                .await
                .map_err(|_| format!("get {key}: timed out"))??;
            counter.fetch_add(1, Ordering::Relaxed);
            match got {
                Some(v) if v == want => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                }
                Some(v) => return Err(format!("get {key}: wrong value {v:?}")),
                None => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    timeout(self.op, set(&mut s, &key, &want))
                        .await
                        .map_err(|_| format!("set {key}: timed out"))??;
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let _ = s.get_mut().write_all(b"quit\r\n").await;
        Ok(())
    }

    /// `stats settings` → the server's index from its `tcpport`.
    async fn identify(&self, s: &mut BufReader<TcpStream>) -> Result<usize, String> {
        let op = async {
            s.get_mut()
                .write_all(b"stats settings\r\n")
                .await
                .map_err(|e| format!("stats: {e}"))?;
            let mut port = None;
            for _ in 0..512 {
                let line = read_line(s).await?;
                if line == "END" {
                    break;
                }
                if let Some(p) = line.strip_prefix("STAT tcpport ") {
                    port = p.trim().parse::<u16>().ok();
                }
            }
            port.ok_or_else(|| "stats: no tcpport".to_owned())
        };
        let port = timeout(self.op, op)
            .await
            .map_err(|_| "stats: timed out".to_owned())??;
        let i = usize::from(port.wrapping_sub(self.server_base_port));
        if i < self.servers {
            Ok(i)
        } else {
            Err(format!("stats: unexpected tcpport {port}"))
        }
    }
}

/// One line without its CRLF; an error at EOF (the connection was closed or reset).
async fn read_line(s: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = String::new();
    let n = s
        .read_line(&mut line)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed".to_owned());
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn get(s: &mut BufReader<TcpStream>, key: &str) -> Result<Option<String>, String> {
    s.get_mut()
        .write_all(format!("get {key}\r\n").as_bytes())
        .await
        .map_err(|e| format!("get: {e}"))?;
    let line = read_line(s).await?;
    if line == "END" {
        return Ok(None);
    }
    let Some(rest) = line.strip_prefix("VALUE ") else {
        return Err(format!("get {key}: unexpected {line:?}"));
    };
    let len: usize = rest
        .split_whitespace()
        .nth(2)
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| format!("get {key}: bad header {line:?}"))?;
    let mut data = vec![0u8; len + 2];
    s.read_exact(&mut data)
        .await
        .map_err(|e| format!("get {key}: {e}"))?;
    data.truncate(len);
    let end = read_line(s).await?;
    if end != "END" {
        return Err(format!("get {key}: unexpected {end:?}"));
    }
    Ok(Some(String::from_utf8_lossy(&data).into_owned()))
}

async fn set(s: &mut BufReader<TcpStream>, key: &str, value: &str) -> Result<(), String> {
    s.get_mut()
        .write_all(format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()).as_bytes())
        .await
        .map_err(|e| format!("set: {e}"))?;
    let line = read_line(s).await?;
    if line == "STORED" {
        Ok(())
    } else {
        Err(format!("set {key}: unexpected {line:?}"))
    }
}

/// The http load's shared state.
#[derive(Debug)]
struct Http {
    addr: String,
    names: Vec<String>,
    per_name: Vec<AtomicU64>,
    failures: AtomicU64,
    op: Duration,
    events: Events,
}

impl Http {
    async fn worker(&self, start: Instant, end: Instant) {
        while now() < end {
            match timeout(self.op, self.request()).await {
                Ok(Ok(i)) => {
                    self.per_name[i].fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => self.fail(start, &e),
                Err(_) => self.fail(start, "request timed out"),
            }
        }
    }

    fn fail(&self, start: Instant, what: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.events.push(start, what);
    }

    async fn request(&self) -> Result<usize, String> {
        let mut s = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET /who HTTP/1.0\r\nHost: replicas\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::with_capacity(512);
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP response ({} bytes)", buf.len()))?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "status {:?}",
                head.lines().next().unwrap_or_default()
            ));
        }
        let who = body.trim();
        self.names
            .iter()
            .position(|n| n == who)
            .ok_or_else(|| format!("unknown replica {who:?}"))
    }
}

/// What a download got.
#[derive(Debug)]
struct Downloaded {
    len: u64,
    sha: String,
    max_gap: Duration,
    gap_at: Duration,
    /// Pauses of at least [`GAP`]: (start ms, length ms).
    gaps: Vec<(u128, u128)>,
}

/// The shortest pause between reads that a download records.
const GAP: Duration = Duration::from_millis(20);

async fn download(
    addr: &str,
    path: &str,
    bytes: &AtomicU64,
    op: Duration,
) -> Result<Downloaded, String> {
    let start = now();
    let mut s = timeout(op, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: download\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut hash = Sha256::new();
    let mut len = 0u64;
    let mut in_body = false;
    let mut last: Option<Instant> = None;
    let (mut max_gap, mut gap_at) = (Duration::ZERO, Duration::ZERO);
    let mut gaps = Vec::new();
    loop {
        // A stall longer than this is a broken flow, not a migration.
        let n = timeout(Duration::from_secs(60), s.read(&mut buf))
            .await
            .map_err(|_| format!("no byte for 60 s after {len} bytes"))?
            .map_err(|e| format!("read after {len} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        let t = now();
        if let Some(l) = last {
            let gap = t - l;
            if gap >= GAP {
                gaps.push(((l - start).as_millis(), gap.as_millis()));
            }
            if gap > max_gap {
                max_gap = gap;
                gap_at = l - start;
            }
        }
        last = Some(t);
        let mut piece = &buf[..n];
        if !in_body {
            head.extend_from_slice(piece);
            let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                if head.len() > 64 * 1024 {
                    return Err("no end of HTTP header".to_owned());
                }
                continue;
            };
            let status = String::from_utf8_lossy(&head[..i]).into_owned();
            if !status.starts_with("HTTP/1.0 200") && !status.starts_with("HTTP/1.1 200") {
                return Err(format!(
                    "status {:?}",
                    status.lines().next().unwrap_or_default()
                ));
            }
            let body = head[i + 4..].to_vec();
            in_body = true;
            hash.update(&body);
            len += body.len() as u64;
            bytes.store(len, Ordering::Relaxed);
            piece = &[];
        }
        if !piece.is_empty() {
            hash.update(piece);
            len += piece.len() as u64;
            bytes.store(len, Ordering::Relaxed);
        }
    }
    Ok(Downloaded {
        len,
        sha: hex(&hash.finalize()),
        max_gap,
        gap_at,
        gaps,
    })
}
