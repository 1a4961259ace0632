//! `serval-node`: one Serval endpoint on a real UDP socket as a process, for the
//! network-namespace tests (`tests/tests/netns.rs`) and the end-to-end benchmark.
//!
//! Roles:
//!
//! * `router --bind ADDR --key HEX`: a service router (forwarding on, registrations
//!   authenticated with the shared key).
//! * `server --bind ADDR --service PREFIX --router ADDR --key HEX [--mode sink|source:N|echo]`:
//!   listens on the prefix, registers it with the router, serves every accepted stream.
//! * `client --bind ADDR --service ID (--router ADDR | --to ADDR) [--send N | --recv | --echo N]`:
//!   one stream, through the router (a default FORWARD rule) or straight to a server.
//!
//! Output on stdout, one line each (the tests wait on these, never on time):
//!
//! | line | when |
//! |---|---|
//! | `READY <addr>` | bound (router), registered with the router (server), bound (client) |
//! | `CONNECTED <peer>` | client: handshake done |
//! | `ACCEPTED <peer>` | server: a stream accepted |
//! | `PROGRESS bytes=<n>` | client: every MiB written to (or read from) the stream |
//! | `REBOUND <addr>` / `MIGRATED <addr>` | a stdin command took effect |
//! | `RESULT bytes=<n> sha256=<hex> ...` | a transfer ended (plus flow counters) |
//! | `ERROR <what>` | then exit status 1 |
//!
//! Commands on stdin, one a line: `rebind <addr>` (new socket, flows migrate), `migrate
//! <addr>` (announce a new local address on the same socket), `stats`, `quit`. A router or
//! server exits when its stdin closes (so it never outlives the test that started it);
//! every role exits after `--timeout` seconds (a hang guard, default 120).
//!
//! Data is a `serval_tests::netns::Pattern` from `--seed` (ChaCha8), so both ends and the
//! test agree on the SHA-256 of what should arrive; a sink answers the client with its byte
//! count and hash on the stream, and the client exits non-zero when they differ.

use std::io::{self, BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serval_stack::control::{DelayConfig, RegistrantConfig, RegistryConfig, SharedKey};
use serval_stack::driver::{Endpoint, ServalStream};
use serval_stack::sal::{EndpointConfig, FlowStats};
use serval_stack::service_table::Rule;
use serval_stack::wire::{ServiceId, ServicePrefix};
use serval_tests::netns::{Pattern, hex};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// One Serval endpoint as a process (see the module docs for the line protocol).
#[derive(Debug, Parser)]
#[command(name = "serval-node", version)]
struct Cli {
    /// Exit with an error after this many seconds, whatever is going on (hang guard).
    #[arg(long, default_value_t = 120, global = true)]
    timeout: u64,
    /// Key id of the registration key.
    #[arg(long, default_value_t = 1, global = true)]
    key_id: u32,
    /// The IP peers reach us at, when `--bind` is a wildcard (`0.0.0.0:PORT`).
    #[arg(long, global = true)]
    advertise: Option<IpAddr>,
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// A service router: forwards SYNs by its table, which registrations fill.
    Router {
        /// UDP address to bind.
        #[arg(long)]
        bind: SocketAddr,
        /// Shared registration key, hex (16 to 64 bytes).
        #[arg(long, value_parser = parse_key)]
        key: Key,
    },
    /// A server: listens on a prefix, registers it with a router, serves each stream.
    Server {
        /// UDP address to bind.
        #[arg(long)]
        bind: SocketAddr,
        /// ServiceID prefix to listen on (`0x06:8`, an id for an exact match, ...).
        #[arg(long)]
        service: ServicePrefix,
        /// Router to register with.
        #[arg(long)]
        router: SocketAddr,
        /// Shared registration key, hex (16 to 64 bytes).
        #[arg(long, value_parser = parse_key)]
        key: Key,
        /// `sink` (read to the end, answer with count and hash), `source:N` (send N bytes
        /// from the seed), `echo` (send back what arrives).
        #[arg(long, default_value = "sink", value_parser = parse_mode)]
        mode: Mode,
        /// Seed of the data a `source` sends.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A client: one stream to a service.
    Client {
        /// UDP address to bind.
        #[arg(long)]
        bind: SocketAddr,
        /// ServiceID to connect to.
        #[arg(long)]
        service: ServiceId,
        /// Resolve through this router (a default FORWARD rule).
        #[arg(long, conflicts_with = "to", required_unless_present = "to")]
        router: Option<SocketAddr>,
        /// Connect straight to this server.
        #[arg(long)]
        to: Option<SocketAddr>,
        /// Send this many bytes to a sink.
        #[arg(long, conflicts_with_all = ["recv", "echo"])]
        send: Option<u64>,
        /// Read a source to its end.
        #[arg(long)]
        recv: bool,
        /// Send this many bytes to an echo server and check what comes back.
        #[arg(long, conflicts_with = "recv")]
        echo: Option<u64>,
        /// Seed of the data sent.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// What a server does with each stream.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Sink,
    Source(u64),
    Echo,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "sink" => Ok(Mode::Sink),
        "echo" => Ok(Mode::Echo),
        _ => s
            .strip_prefix("source:")
            .and_then(|n| n.parse().ok())
            .map(Mode::Source)
            .ok_or_else(|| format!("`{s}`: expected sink, echo or source:<bytes>")),
    }
}

/// A registration key's bytes.
#[derive(Debug, Clone)]
struct Key(Vec<u8>);

fn parse_key(s: &str) -> Result<Key, String> {
    if s.len() % 2 != 0 {
        return Err("a hex key needs an even number of digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("`{s}` is not hex"))
        })
        .collect::<Result<_, _>>()
        .map(Key)
}

/// Prints one protocol line on stdout (flushed: a test is waiting for it).
fn emit(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Bytes between two `PROGRESS` lines.
const PROGRESS_EVERY: u64 = 1 << 20;
/// Application read buffer.
const CHUNK: usize = 64 * 1024;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit(&format!("ERROR runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let limit = Duration::from_secs(cli.timeout);
    let r = rt.block_on(async {
        match tokio::time::timeout(limit, run(cli)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("hang guard: still running after {limit:?}"),
            )),
        }
    });
    let code = match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            emit(&format!("ERROR {e}"));
            ExitCode::FAILURE
        }
    };
    // Do not wait for the stdin thread (blocked in a read) or lingering flows.
    rt.shutdown_background();
    code
}

/// Commands read from stdin by a plain thread; `None` when stdin closes.
fn stdin_commands() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Carries out one stdin command; `Ok(false)` for `quit`.
fn command(endpoint: &Endpoint, line: &str) -> io::Result<bool> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or_default();
    let addr = || -> io::Result<SocketAddr> {
        line.split_whitespace()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("`{line}`")))
    };
    match verb {
        "" => {}
        "rebind" => {
            let bound = endpoint.rebind(addr()?)?;
            emit(&format!("REBOUND {bound}"));
        }
        "migrate" => {
            let to = addr()?;
            endpoint.migrate(to);
            emit(&format!("MIGRATED {to}"));
        }
        "stats" => emit(&format!(
            "STATS flows={} {:?} {:?}",
            endpoint.flow_count(),
            endpoint.stats(),
            endpoint.driver_stats()
        )),
        "quit" => return Ok(false),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown command `{line}`"),
            ));
        }
    }
    Ok(true)
}

/// Serves stdin commands until `quit` or stdin closes (router and server).
async fn serve_commands(endpoint: &Endpoint) -> io::Result<()> {
    let mut commands = stdin_commands();
    while let Some(line) = commands.recv().await {
        if !command(endpoint, &line)? {
            break;
        }
    }
    Ok(())
}

fn bind(addr: SocketAddr, advertise: Option<IpAddr>, forwarding: bool) -> io::Result<Endpoint> {
    let mut config = EndpointConfig::default();
    config.forwarding = forwarding;
    config.local_addr = match advertise {
        Some(ip) => SocketAddr::new(ip, addr.port()),
        None if addr.ip().is_unspecified() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a wildcard --bind needs --advertise",
            ));
        }
        None => addr,
    };
    Endpoint::bind(addr, config)
}

fn shared_key(key: &Key) -> io::Result<SharedKey> {
    SharedKey::new(&key.0).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

async fn run(cli: Cli) -> io::Result<()> {
    match cli.role {
        Role::Router { bind: at, key } => {
            let endpoint = bind(at, cli.advertise, true)?;
            let registry = RegistryConfig::new()
                .with_key(cli.key_id, shared_key(&key)?)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            endpoint.enable_router(registry, DelayConfig::new())?;
            emit(&format!("READY {}", endpoint.local_addr()));
            serve_commands(&endpoint).await
        }
        Role::Server {
            bind: at,
            service,
            router,
            key,
            mode,
            seed,
        } => {
            let endpoint = bind(at, cli.advertise, false)?;
            let config = RegistrantConfig::new(cli.key_id, shared_key(&key)?);
            endpoint.enable_registrant(config, &[router])?;
            let listener = endpoint.listen(service)?;
            // The registrant retries on its own; this only watches for the acknowledgement.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !endpoint.is_registered(router, &service) {
                tick.tick().await;
            }
            emit(&format!("REGISTERED {router}"));
            emit(&format!("READY {}", endpoint.local_addr()));
            let acceptor = async {
                loop {
                    let stream = listener.accept().await?;
                    emit(&format!("ACCEPTED {}", stream.peer_addr()));
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, mode, seed).await {
                            // One failed stream does not end the server.
                            emit(&format!("STREAM-ERROR {e}"));
                        }
                    });
                }
            };
            let control = tokio::spawn({
                let endpoint = endpoint.clone();
                async move { serve_commands(&endpoint).await }
            });
            tokio::select! {
                r = acceptor => r,
                r = control => r.map_err(io::Error::other).and_then(|r| r),
            }
        }
        Role::Client {
            bind: at,
            service,
            router,
            to,
            send,
            recv,
            echo,
            seed,
        } => {
            let endpoint = bind(at, cli.advertise, false)?;
            if let Some(r) = router {
                endpoint
                    .with_table(|t| t.insert(ServicePrefix::DEFAULT, Rule::forward(r)))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            }
            emit(&format!("READY {}", endpoint.local_addr()));
            // Commands run in a task of their own: a transfer that never has to wait (a
            // slow debug build filling a fast link) would otherwise starve them.
            let control = tokio::spawn({
                let endpoint = endpoint.clone();
                async move {
                    let mut commands = stdin_commands();
                    while let Some(line) = commands.recv().await {
                        if !command(&endpoint, &line)? {
                            return Err(io::Error::new(io::ErrorKind::Interrupted, "quit"));
                        }
                    }
                    // Stdin closed: keep transferring.
                    core::future::pending().await
                }
            });
            let transfer = async {
                let started = Started::now();
                let stream = match to {
                    Some(a) => endpoint.connect_to(service, a).await?,
                    None => endpoint.connect(service).await?,
                };
                emit(&format!("CONNECTED {}", stream.peer_addr()));
                let r = match (send, recv, echo) {
                    (Some(n), _, _) => client_send(stream, seed, n, started).await,
                    (_, true, _) => client_recv(stream, started).await,
                    (_, _, Some(n)) => client_echo(stream, seed, n, started).await,
                    _ => client_send(stream, seed, 0, started).await,
                };
                linger(&endpoint).await;
                r
            };
            tokio::select! {
                r = transfer => r,
                r = control => r.map_err(io::Error::other).and_then(|r| r),
            }
        }
    }
}

/// Longest wait for closing flows before the process exits.
const LINGER: Duration = Duration::from_secs(5);

/// Keeps the endpoint running until its flows have closed (our FIN and our last ACKs
/// delivered, retransmitted if lost), at most [`LINGER`]: exiting at once would leave the
/// peer retransmitting into a closed socket.
async fn linger(endpoint: &Endpoint) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let _ = tokio::time::timeout(LINGER, async {
        while endpoint.flow_count() > 0 {
            tick.tick().await;
        }
    })
    .await;
}

/// When a client started (for the `elapsed_ms` of its result: a measurement, nothing waits
/// on it).
#[derive(Debug, Clone, Copy)]
struct Started(std::time::Instant);

impl Started {
    #[allow(clippy::disallowed_methods)] // a measurement at the edge, not the protocol core
    fn now() -> Self {
        Self(std::time::Instant::now())
    }

    fn elapsed_ms(self) -> u128 {
        self.0.elapsed().as_millis()
    }
}

/// The flow counters a `RESULT` line carries (and the client's elapsed time).
fn counters(stats: Option<FlowStats>, started: Option<Started>) -> String {
    let s = stats.unwrap_or_default();
    let elapsed = started.map_or(String::new(), |t| format!(" elapsed_ms={}", t.elapsed_ms()));
    format!(
        "migrations={} validations={} validations_failed={} data_sent={} data_received={} srtt_us={}",
        s.migrations_started,
        s.path_validations_succeeded,
        s.path_validations_failed,
        s.data_packets_sent,
        s.data_packets_received,
        s.srtt.map_or(0, |d| d.as_micros())
    ) + &elapsed
}

/// Writes the [`Pattern`] of `len` bytes from `seed`, printing progress when `progress`;
/// returns their SHA-256.
async fn write_pattern(
    stream: &mut (impl AsyncWriteExt + Unpin),
    seed: u64,
    len: u64,
    progress: bool,
) -> io::Result<[u8; 32]> {
    let mut pattern = Pattern::new(seed, len);
    let mut hash = Sha256::new();
    let mut done = 0u64;
    while let Some(piece) = pattern.next_chunk() {
        stream.write_all(piece).await?;
        hash.update(piece);
        let before = done;
        done += piece.len() as u64;
        if progress && done / PROGRESS_EVERY != before / PROGRESS_EVERY {
            emit(&format!("PROGRESS bytes={done}"));
        }
    }
    Ok(hash.finalize().into())
}

/// Reads to the end of the stream (printing progress when `progress`); returns the byte
/// count and SHA-256.
async fn read_all(
    stream: &mut (impl AsyncReadExt + Unpin),
    progress: bool,
) -> io::Result<(u64, [u8; 32])> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hash.finalize().into()));
        }
        hash.update(&buf[..n]);
        let before = total;
        total += n as u64;
        if progress && total / PROGRESS_EVERY != before / PROGRESS_EVERY {
            emit(&format!("PROGRESS bytes={total}"));
        }
    }
}

/// One accepted stream, served by `mode`.
async fn serve(mut stream: ServalStream, mode: Mode, seed: u64) -> io::Result<()> {
    match mode {
        Mode::Sink => {
            let (n, h) = read_all(&mut stream, false).await?;
            let stats = stream.stats();
            let line = format!("bytes={n} sha256={}", hex(&h));
            // The client waits for this answer before it exits, so every byte was received.
            stream.write_all(format!("{line}\n").as_bytes()).await?;
            stream.shutdown().await?;
            emit(&format!("RESULT {line} {}", counters(stats, None)));
        }
        Mode::Source(len) => {
            let h = write_pattern(&mut stream, seed, len, false).await?;
            stream.shutdown().await?;
            // The client's end of stream: it has everything by then.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await?;
            emit(&format!(
                "RESULT bytes={len} sha256={} {}",
                hex(&h),
                counters(stream.stats(), None)
            ));
        }
        Mode::Echo => {
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                stream.write_all(&buf[..n]).await?;
                total += n as u64;
            }
            stream.shutdown().await?;
            let h: [u8; 32] = hash.finalize().into();
            emit(&format!(
                "RESULT bytes={total} sha256={} {}",
                hex(&h),
                counters(stream.stats(), None)
            ));
        }
    }
    Ok(())
}

/// Sends `len` bytes to a sink and checks its answer.
async fn client_send(
    mut stream: ServalStream,
    seed: u64,
    len: u64,
    started: Started,
) -> io::Result<()> {
    let sent = write_pattern(&mut stream, seed, len, true).await?;
    stream.shutdown().await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let line = format!("bytes={len} sha256={}", hex(&sent));
    let stats = stream.stats();
    // Our FIN-ACK exchange is done once the answer's end arrived; close the flow cleanly.
    drop(stream);
    emit(&format!("RESULT {line} {}", counters(stats, Some(started))));
    if answer.trim() != line {
        return Err(io::Error::other(format!(
            "the sink received `{}`, we sent `{line}`",
            answer.trim()
        )));
    }
    Ok(())
}

/// Reads a source to its end.
async fn client_recv(mut stream: ServalStream, started: Started) -> io::Result<()> {
    let (n, h) = read_all(&mut stream, true).await?;
    stream.shutdown().await?;
    emit(&format!(
        "RESULT bytes={n} sha256={} {}",
        hex(&h),
        counters(stream.stats(), Some(started))
    ));
    Ok(())
}

/// Sends `len` bytes to an echo server while reading them back; checks they match.
async fn client_echo(
    stream: ServalStream,
    seed: u64,
    len: u64,
    started: Started,
) -> io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = async {
        let h = write_pattern(&mut wr, seed, len, true).await?;
        wr.shutdown().await?;
        Ok::<_, io::Error>(h)
    };
    let (sent, (n, got)) = tokio::try_join!(writer, read_all(&mut rd, false))?;
    let stats = rd.unsplit(wr).stats();
    emit(&format!(
        "RESULT bytes={len} sha256={} {}",
        hex(&sent),
        counters(stats, Some(started))
    ));
    if (n, got) != (len, sent) {
        return Err(io::Error::other(format!(
            "echo differs: got back {n} bytes sha256={}",
            hex(&got)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "serval-node",
            "server",
            "--bind",
            "10.0.0.1:1",
            "--service",
            "0x06:8",
            "--router",
            "10.0.0.2:2",
            "--key",
            "00112233445566778899aabbccddeeff",
            "--mode",
            "source:5",
        ])
        .unwrap();
        let Role::Server { key, mode, .. } = cli.role else {
            panic!("a server")
        };
        assert_eq!(key.0.len(), 16);
        assert!(matches!(mode, Mode::Source(5)));
        assert!(Cli::try_parse_from(["serval-node", "client", "--bind", "10.0.0.1:1"]).is_err());
    }
}
