//! Scale measurement: many concurrent idle translated connections through one translator
//! pair, and the memory each costs in each translator process (issue 8, item 4).
//!
//! ```sh
//! cargo build --release -p translator -p serval-benches
//! target/release/idle_conns [--connections 100000] [--listeners 4] [--backends 8]
//! ```
//!
//! Needs root: the run happens in a network namespace it makes (`idle-*`), so its
//! `net.ipv4.ip_local_port_range` (widened to 1024-65535) and the hundreds of thousands of
//! loopback sockets touch nothing else on the host. In it, all on loopback:
//!
//! - a **legacy server** (this tool again, as a process of its own): `--backends` TCP
//!   ports that accept, echo and hold every connection;
//! - a **router**, a **server translator** (every backend port a backend of one service)
//!   and a **client translator** (`--listeners` explicit listeners for that service), each
//!   a separate `serval-translator run` process (the binary next to this one, or
//!   `E2E_TRANSLATOR`), so `VmRSS` of `/proc/PID/status` is per process;
//! - the **clients**, in this tool: `--connections` TCP connections from source addresses
//!   127.0.1.1 .. 127.0.1.`--sources` to the listeners (round-robin), each checked end to
//!   end by a 32-byte echo (every echo compared, and the SHA-256 of all sent and all
//!   received bytes compared), then held idle.
//!
//! The file limit is raised for this process and the translators (`ulimit -n` in the `sh`
//! that starts the namespace's side; children inherit it); without CAP_SYS_RESOURCE only
//! up to the hard limit, and the tool refuses a `--connections` the limit cannot hold. Printed: a Markdown table of
//! each translator's RSS at the baseline (after a warm-up connection), with the
//! connections held, and after they closed; `(held - baseline) / N` in KiB per
//! connection; the kernel's TCP/UDP socket memory and slab, machine-wide, before and with
//! the connections (each translated connection is four kernel TCP sockets here: client,
//! client translator, server translator, backend). Then every connection is closed, the
//! tool waits until the backends saw every close, and checks that the three processes are
//! still running and that a fresh connection still works.
//!
//! Every phase is bounded: `--timeout` per phase (opening, settling, closing).

#![allow(clippy::print_stdout)] // the report is this program's output

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serval_benches::harness::{KernelMem, bad, proc_status_kib, translator_binary};
use serval_tests::netns::{Netns, Process, require_root};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// First port of the backends (legacy server) and of the client listeners.
const BACKEND_PORT: u16 = 7100;
const LISTENER_PORT: u16 = 7200;
/// The router's and the translators' Serval (UDP) addresses.
const ROUTER: &str = "127.0.0.1:54400";
const SERVER_SERVAL: &str = "127.0.0.1:54401";
const CLIENT_SERVAL: &str = "127.0.0.1:54402";
const SERVICE: &str = "0x00001d1e";
const KEY: &str = "1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e";
/// Bytes of each connection's echo round trip.
const PROBE: usize = 32;
/// The file limit asked for (`fs.nr_open` is 1 048 576 by default).
const NOFILE: u64 = 1 << 20;

#[derive(Parser, Debug, Clone)]
#[command(about = "Idle translated connections and the memory they cost (see BENCHMARKS.md)")]
struct Cli {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 100_000)]
    connections: usize,
    /// Client translator listeners (ports 7200..).
    #[arg(long, default_value_t = 4)]
    listeners: u16,
    /// Backend ports of the legacy server (7100..): the server translator's connections
    /// to them need distinct 4-tuples, at most ~64 000 per backend.
    #[arg(long, default_value_t = 8)]
    backends: u16,
    /// Client source addresses 127.0.1.1 ..: at most ~64 000 connections per address.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds the connections are held idle before the second measurement.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// Bound of each phase, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Fail when a translator's RSS per idle connection is above this (KiB): the
    /// hardening target (issue 8) is 10.
    #[arg(long, default_value_t = 10.0)]
    max_kib_per_conn: f64,
    /// Internal: run inside the namespace (started by the tool itself).
    #[arg(long, hide = true)]
    inner: bool,
    /// Internal: be the legacy server (a process of its own, for its file descriptors).
    #[arg(long, hide = true)]
    serve: bool,
}

/// The wall clock, read only to measure and to bound waits (never to synchronise).
#[allow(clippy::disallowed_methods)] // a benchmark's stopwatch, not the protocol core's clock
fn now() -> Instant {
    Instant::now()
}

fn main() -> io::Result<()> {
    let cli = Cli::parse();
    if cli.serve {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        return rt.block_on(serve(cli.backends));
    }
    if cli.inner {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return rt.block_on(inner(cli));
    }
    if !require_root("idle_conns") {
        return Err(bad(
            "idle_conns needs root (a network namespace of its own)",
        ));
    }
    // `tag` must be short: it names the namespace.
    let ns = Netns::new("idle")?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    ns.sysctl("net.core.somaxconn", "65535")?;
    ns.sysctl("net.ipv4.tcp_max_syn_backlog", "65535")?;
    let exe = std::env::current_exe()?;
    let mut cmd = ns.command("sh");
    cmd.arg("-c")
        // Without CAP_SYS_RESOURCE only the hard limit is reachable; `inner` checks it.
        .arg(format!(
            "ulimit -n {NOFILE} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" \"$@\""
        ))
        .arg(&exe)
        .arg("--inner")
        .args(["--connections", &cli.connections.to_string()])
        .args(["--listeners", &cli.listeners.to_string()])
        .args(["--backends", &cli.backends.to_string()])
        .args(["--sources", &cli.sources.to_string()])
        .args(["--concurrency", &cli.concurrency.to_string()])
        .args(["--hold", &cli.hold.to_string()])
        .args(["--timeout", &cli.timeout.to_string()])
        .args(["--max-kib-per-conn", &cli.max_kib_per_conn.to_string()]);
    let status = cmd.status()?;
    drop(ns);
    if status.success() {
        Ok(())
    } else {
        Err(bad(format!("the measurement failed: {status}")))
    }
}

/// Connections the legacy server holds now, and has closed.
#[derive(Debug, Default)]
struct Backend {
    open: AtomicU64,
    closed: AtomicU64,
}

/// The legacy server process: `backends` ports; answers each stdin line with
/// `COUNT <open> <closed>`.
async fn serve(backends: u16) -> io::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let stats = Arc::new(Backend::default());
    for i in 0..backends {
        let l = TcpListener::bind(("127.0.0.1", BACKEND_PORT + i)).await?;
        tokio::spawn(backend(l, stats.clone()));
    }
    println!("READY");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while lines.next_line().await?.is_some() {
        println!(
            "COUNT {} {}",
            stats.open.load(Ordering::Relaxed),
            stats.closed.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

/// The legacy server process, seen from the tool.
struct Backends(std::sync::Mutex<Process>);

impl Backends {
    /// Connections the backends hold now.
    fn open(&self) -> io::Result<u64> {
        let mut p = self.0.lock().map_err(|_| bad("poisoned"))?;
        p.send("count")?;
        let line = p.wait_for("COUNT", Duration::from_secs(10))?;
        line.split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| bad(format!("bad COUNT line {line:?}")))
    }
}

/// The legacy server: accept, echo, hold until the peer closes.
async fn backend(listener: TcpListener, stats: Arc<Backend>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            stats.closed.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// A translator process and its pid (`sh` prints its `$$`, then execs the translator).
struct Translator {
    proc: Process,
    pid: u32,
}

impl Translator {
    fn spawn(name: &str, config: &str, dir: &std::path::Path) -> io::Result<Self> {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, config)?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo \"PID $$\"; exec \"$0\" \"$@\"")
            .arg(translator_binary()?)
            .arg("run")
            .arg("--config")
            .arg(&file)
            .env("IDLE_KEY", KEY);
        let mut proc = Process::spawn(name, cmd)?;
        let pid = proc
            .wait_for("PID", Duration::from_secs(10))?
            .parse()
            .map_err(|_| bad("bad PID line"))?;
        Ok(Self { proc, pid })
    }

    fn rss_kib(&self) -> io::Result<u64> {
        proc_status_kib(self.pid, "VmRSS")
    }

    /// Whether the process is still running (its `/proc` entry exists and is not a zombie).
    fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .is_ok_and(|s| !s.contains(") Z "))
    }
}

/// This process's soft `Max open files` (inherited by the processes it starts).
fn open_files_limit() -> io::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| bad("no `Max open files` in /proc/self/limits"))
}

fn policies(cli: &Cli) -> (String, String, String) {
    let limit = cli.connections + 1024;
    let common = format!(
        "relay:\n  max_connections: {limit}\nadmin: {{listen: ~}}\nlog: {{level: warn, access_log: false}}\n"
    );
    let router = format!(
        "serval:\n  bind: \"{ROUTER}\"\n  max_flows: {limit}\nrouter:\n  keys: [{{id: 1, env: IDLE_KEY}}]\n{common}"
    );
    let backends: String = (0..cli.backends)
        .map(|i| {
            format!(
                "        - {{address: \"127.0.0.1:{}\"}}\n",
                BACKEND_PORT + i
            )
        })
        .collect();
    let server = format!(
        "serval:\n  bind: \"{SERVER_SERVAL}\"\n  routers: [\"{ROUTER}\"]\n  key: {{id: 1, env: IDLE_KEY}}\n  max_flows: {limit}\nserver:\n  services:\n    - name: idle\n      prefix: \"{SERVICE}\"\n      backends:\n{backends}{common}"
    );
    let listeners: String = (0..cli.listeners)
        .map(|i| {
            format!(
                "    - {{name: idle{i}, listen: \"127.0.0.1:{}\", service: \"{SERVICE}\"}}\n",
                LISTENER_PORT + i
            )
        })
        .collect();
    let client = format!(
        "serval:\n  bind: \"{CLIENT_SERVAL}\"\n  routers: [\"{ROUTER}\"]\n  max_flows: {limit}\nclient:\n  listeners:\n{listeners}{common}"
    );
    (router, server, client)
}

/// The bytes connection `i` sends (and must get back).
fn probe(i: usize) -> [u8; PROBE] {
    let mut p = [0u8; PROBE];
    let seed = Sha256::digest((i as u64).to_le_bytes());
    p.copy_from_slice(&seed[..PROBE]);
    p
}

/// Opens connection `i` and checks its echo; returns the stream and what came back.
async fn open(cli: &Cli, i: usize) -> io::Result<(TcpStream, [u8; PROBE])> {
    let src = Ipv4Addr::new(127, 0, 1, 1 + (i % usize::from(cli.sources.max(1))) as u8);
    let port = LISTENER_PORT + (i % usize::from(cli.listeners.max(1))) as u16;
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let mut s = sock
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await?;
    s.set_nodelay(true)?;
    s.write_all(&probe(i)).await?;
    let mut back = [0u8; PROBE];
    s.read_exact(&mut back).await?;
    Ok((s, back))
}

/// Waits until `cond` holds, polling every 250 ms, at most `limit`.
async fn until(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> io::Result<bool>,
) -> io::Result<()> {
    let end = now() + limit;
    while !cond()? {
        if now() > end {
            return Err(bad(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Waits until `rss` stops growing (two reads 1 s apart within 0.5 %), at most `limit`.
async fn settled(procs: &[&Translator], limit: Duration) -> io::Result<Vec<u64>> {
    let end = now() + limit;
    let mut last: Vec<u64> = procs
        .iter()
        .map(|p| p.rss_kib())
        .collect::<Result<_, _>>()?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss: Vec<u64> = procs
            .iter()
            .map(|p| p.rss_kib())
            .collect::<Result<_, _>>()?;
        let stable = rss
            .iter()
            .zip(&last)
            .all(|(a, b)| a.abs_diff(*b) * 200 <= (*b).max(1));
        if stable || now() > end {
            return Ok(rss);
        }
        last = rss;
    }
}

async fn inner(cli: Cli) -> io::Result<()> {
    let limit = Duration::from_secs(cli.timeout);
    let n = cli.connections;
    // Each translator holds a descriptor per connection, and so does this process.
    let nofile = open_files_limit()?;
    if n as u64 + 1000 > nofile {
        return Err(bad(format!(
            "the file limit is {nofile} (hard limit; raising it needs CAP_SYS_RESOURCE): at \
             most about {} connections per process; ask for fewer with --connections",
            nofile.saturating_sub(1000)
        )));
    }
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["--serve", "--backends", &cli.backends.to_string()]);
    let mut server_proc = Process::spawn("legacy-server", cmd)?;
    server_proc.wait_for("READY", Duration::from_secs(10))?;
    let stats = Backends(std::sync::Mutex::new(server_proc));
    let dir = std::env::temp_dir().join(format!("idle-conns-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (router_cfg, server_cfg, client_cfg) = policies(&cli);
    let mut router = Translator::spawn("router", &router_cfg, &dir)?;
    let mut server = Translator::spawn("server-translator", &server_cfg, &dir)?;
    let mut client = Translator::spawn("client-translator", &client_cfg, &dir)?;
    eprintln!("file limit per process: {nofile}");
    let result = measure(&cli, n, limit, &stats, [&router, &server, &client]).await;
    for t in [&mut client, &mut server, &mut router] {
        t.proc.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(
    cli: &Cli,
    n: usize,
    limit: Duration,
    stats: &Backends,
    [router, server, client]: [&Translator; 3],
) -> io::Result<()> {
    // Ready: a connection goes through end to end (the server translator registered).
    let ready_end = now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), open(cli, 0)).await {
            Ok(Ok((_, back))) if back == probe(0) => break,
            _ if now() > ready_end => return Err(bad("the translators never got ready")),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    until("the warm-up connection's close", limit, || {
        Ok(stats.open()? == 0)
    })
    .await?;
    let procs = [router, server, client];
    let base = settled(&procs, Duration::from_secs(20)).await?;
    let kbase = KernelMem::read()?;
    eprintln!("baseline RSS KiB (router, server, client): {base:?}; kernel {kbase:?}");

    // Open every connection, `concurrency` at a time.
    let t0 = now();
    let gate = Arc::new(Semaphore::new(cli.concurrency.max(1)));
    let shared = Arc::new(cli.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| bad("semaphore closed"))?;
        let cli = shared.clone();
        tasks.spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(60), open(&cli, i)).await;
            drop(permit);
            (i, r)
        });
        if i % 10_000 == 9_999 {
            eprintln!(
                "opening: {} started, {:.1} s",
                i + 1,
                t0.elapsed().as_secs_f64()
            );
        }
        if t0.elapsed() > limit {
            return Err(bad(format!(
                "opening took longer than {limit:?} ({i} started)"
            )));
        }
    }
    let mut held: Vec<Option<(TcpStream, [u8; PROBE])>> = (0..n).map(|_| None).collect();
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        let (i, r) = r.map_err(|e| bad(format!("task: {e}")))?;
        match r {
            Ok(Ok(v)) => held[i] = Some(v),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("connection {i}: {e}"));
            }
            Err(_) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("connection {i}: timed out"));
            }
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    if failed > 0 {
        return Err(bad(format!(
            "{failed} of {n} connections failed; first: {}",
            first_error.unwrap_or_default()
        )));
    }
    // Every echo, then all of them at once: the SHA-256 of everything sent and received.
    let (mut sent, mut got) = (Sha256::new(), Sha256::new());
    let mut mismatched = 0usize;
    for (i, h) in held.iter().enumerate() {
        let Some((_, back)) = h else {
            return Err(bad(format!("connection {i} missing")));
        };
        let p = probe(i);
        mismatched += usize::from(*back != p);
        sent.update(p);
        got.update(back);
    }
    let (sent, got) = (sent.finalize(), got.finalize());
    if mismatched > 0 || sent != got {
        return Err(bad(format!(
            "{mismatched} echoes differ (SHA-256 {sent:x} vs {got:x})"
        )));
    }
    eprintln!(
        "{n} connections open and echoed in {open_secs:.1} s; SHA-256 of the echoes {got:x}; holding {} s",
        cli.hold
    );
    let at_backends = stats.open()?;
    if at_backends != n as u64 {
        return Err(bad(format!(
            "the backends hold {at_backends} connections, expected {n}"
        )));
    }
    tokio::time::sleep(Duration::from_secs(cli.hold)).await;
    let full = settled(&procs, Duration::from_secs(60)).await?;
    let kfull = KernelMem::read()?;
    for t in procs {
        if !t.alive() {
            return Err(bad(format!("{} died while holding", t.proc.name())));
        }
    }

    // Close everything; the backends must see every close.
    let t1 = now();
    drop(held);
    until("every backend connection to close", limit, || {
        Ok(stats.open()? == 0)
    })
    .await?;
    let close_secs = t1.elapsed().as_secs_f64();
    let (_, back) = tokio::time::timeout(Duration::from_secs(10), open(cli, 1))
        .await
        .map_err(|_| bad("no connection after the close"))??;
    if back != probe(1) {
        return Err(bad("the connection after the close echoed wrong bytes"));
    }
    let after = settled(&procs, Duration::from_secs(20)).await?;
    for t in procs {
        if !t.alive() {
            return Err(bad(format!("{} died", t.proc.name())));
        }
    }

    let per = |b: u64, f: u64| (f.saturating_sub(b)) as f64 / n as f64;
    println!(
        "\n## Idle connections: {n} held through one translator pair (loopback, {} listeners, {} backends, {} sources)\n",
        cli.listeners, cli.backends, cli.sources
    );
    println!(
        "opened and echo-checked in {open_secs:.1} s; all closed in {close_secs:.1} s; processes healthy after\n"
    );
    println!(
        "| process | RSS baseline | RSS with {n} held | RSS after close | per idle connection |"
    );
    println!("|---|---|---|---|---|");
    for (k, name) in ["router", "server translator", "client translator"]
        .iter()
        .enumerate()
    {
        println!(
            "| {name} | {:.1} MiB | {:.1} MiB | {:.1} MiB | **{:.2} KiB** |",
            base[k] as f64 / 1024.0,
            full[k] as f64 / 1024.0,
            after[k] as f64 / 1024.0,
            per(base[k], full[k])
        );
    }
    let page_kib = 4.0;
    println!(
        "\nKernel (machine-wide; each connection is 4 TCP sockets here): TCP sockets in use {} → {}; \
         TCP socket memory {:.1} → {:.1} MiB ({:.2} KiB per connection); UDP socket memory {:.1} → {:.1} MiB; \
         slab {:.1} → {:.1} MiB ({:.2} KiB per connection)",
        kbase.tcp_inuse,
        kfull.tcp_inuse,
        kbase.tcp_mem_pages as f64 * page_kib / 1024.0,
        kfull.tcp_mem_pages as f64 * page_kib / 1024.0,
        (kfull.tcp_mem_pages.saturating_sub(kbase.tcp_mem_pages)) as f64 * page_kib / n as f64,
        kbase.udp_mem_pages as f64 * page_kib / 1024.0,
        kfull.udp_mem_pages as f64 * page_kib / 1024.0,
        kbase.slab_kib as f64 / 1024.0,
        kfull.slab_kib as f64 / 1024.0,
        per(kbase.slab_kib, kfull.slab_kib),
    );
    println!(
        "RESULT connections={n} open_secs={open_secs:.1} client_kib_per_conn={:.2} server_kib_per_conn={:.2} router_kib_per_conn={:.2}",
        per(base[2], full[2]),
        per(base[1], full[1]),
        per(base[0], full[0]),
    );
    for (name, k) in [("client", 2), ("server", 1)] {
        let kib = per(base[k], full[k]);
        if kib > cli.max_kib_per_conn {
            return Err(bad(format!(
                "{name} translator: {kib:.2} KiB per idle connection, above {}",
                cli.max_kib_per_conn
            )));
        }
    }
    Ok(())
}
