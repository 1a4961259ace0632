//! `serval-translator demo`: the whole product on loopback, in one process, with no
//! configuration, checking its own results.
//!
//! It starts two legacy HTTP/1.1 servers (plain TCP, knowing nothing of Serval), a service
//! router, two server-side translators in front of them (each registers the same service,
//! `www.demo.example`, with the router, authenticated with a shared key), and a client-side
//! translator with an explicit listener for that service. Then it acts as an unmodified
//! HTTP client of the client translator's TCP listener:
//!
//! 1. small requests: the router resolves each new flow to one of the two registered
//!    instances (late binding, spread by flow hash), and every body is checked by SHA-256;
//! 2. a large download and upload, with their throughput;
//! 3. one server translator drains: it withdraws its registration, and new requests all go
//!    to the other replica, without the client side changing anything.
//!
//! Every translator runs the production code path ([`Translator::start`] on a policy
//! parsed and validated like a file), so the demo doubles as an end-to-end smoke test. With
//! `--keep` it stays up afterwards and prints the listener's address for `curl`.

use core::fmt::Write as _;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::collections::HashMap;
use std::io;
use std::path::Path;

use serval_stack::service_table::Action;
use serval_stack::wire::{ServicePrefix, name};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config;
use crate::run::Translator;

/// The service every replica registers.
pub const DEMO_NAME: &str = "www.demo.example";

/// The registration key of the demo (loopback only; a deployment reads its key from a
/// file or a variable, see `policies/`).
const DEMO_KEY: &str = "6465206d6f2d6b65792d6f6e6c792d666f722d6c6f6f706261636b2d2d2d2d21";

/// Bound of every wait in the demo (registration, withdrawal, one request): a hang guard,
/// not a timing assertion.
const WAIT: Duration = Duration::from_secs(20);

/// Largest HTTP head read (request or response).
const MAX_HEAD: usize = 16 << 10;

/// Largest body the demo's HTTP server generates or accepts.
const MAX_BODY: u64 = 1 << 30;

const CHUNK: usize = 64 << 10;

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Small requests in the load-balancing step.
    pub requests: usize,
    /// Size of the large download (bytes).
    pub download: u64,
    /// Size of the large upload (bytes).
    pub upload: u64,
    /// Address of the client translator's listener; `None`: a free loopback port.
    pub listen: Option<SocketAddr>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            requests: 32,
            download: 64 << 20,
            upload: 16 << 20,
            listen: None,
        }
    }
}

/// A check of the demo failed, or the topology could not start.
#[derive(Debug, thiserror::Error)]
#[error("demo failed: {0}")]
pub struct DemoError(String);

fn fail(what: impl core::fmt::Display) -> DemoError {
    DemoError(what.to_string())
}

fn check(ok: bool, what: &str) -> Result<(), DemoError> {
    if ok { Ok(()) } else { Err(fail(what)) }
}

/// A loopback TCP port held for a listener that is configured before it binds.
///
/// The socket is bound with `SO_REUSEADDR` and never listens, so the kernel hands the port
/// to nobody else, while a listener that also sets `SO_REUSEADDR` (every client listener
/// does) can still bind it. Keep it until that listener is up. Policies must name a real
/// port (`0` is refused), and this avoids the race of "bind port 0, read it, close it".
#[derive(Debug)]
pub struct PortReservation {
    _socket: socket2::Socket,
    addr: SocketAddr,
}

impl PortReservation {
    /// Reserves a free port on `ip`.
    pub fn new(ip: IpAddr) -> io::Result<Self> {
        use socket2::{Domain, Socket, Type};
        let addr = SocketAddr::new(ip, 0);
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))?;
        Ok(Self {
            _socket: socket,
            addr,
        })
    }

    /// The reserved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

// ------------------------------------------------------------------------------------------
// Known content

/// Deterministic bytes (SplitMix64 output), so both ends of a transfer agree on its hash
/// without storing it.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
    left: u64,
}

impl Pattern {
    /// `len` bytes from `seed`.
    pub fn new(seed: u64, len: u64) -> Self {
        Self {
            state: seed,
            left: len,
        }
    }

    /// Fills the front of `buf` with the next bytes; returns how many (0 at the end).
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len())
            & !7;
        let n = if n == 0 {
            usize::try_from(self.left).unwrap_or(0).min(buf.len())
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        n
    }

    /// The SHA-256 of the whole pattern.
    pub fn sha256(mut self) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = self.fill(&mut buf);
            if n == 0 {
                return h.finalize().into();
            }
            h.update(&buf[..n]);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

// ------------------------------------------------------------------------------------------
// A legacy HTTP/1.1 server

/// A plain-TCP HTTP/1.1 server that knows nothing of Serval: one request per connection.
///
/// | request | answer |
/// |---|---|
/// | `GET /` or `GET /hello` | a line naming the replica |
/// | `GET /bytes/<n>` | `n` bytes of [`Pattern`] (seed 1) |
/// | `POST /upload` | the body's length and SHA-256 |
///
/// Every answer carries `X-Served-By: <replica>`.
#[derive(Debug)]
pub struct LegacyHttp {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for LegacyHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LegacyHttp {
    /// Starts a server named `replica` on a free loopback port.
    pub async fn start(replica: &'static str) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let _ = serve_http(stream, replica).await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// Its TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Reads an HTTP head (up to the blank line); returns it and the bytes read after it.
async fn read_head(s: &mut (impl AsyncRead + Unpin)) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            let head = String::from_utf8(buf)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "head is not UTF-8"))?;
            return Ok((head, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the end of the head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The value of header `name` in `head` (case-insensitive name).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn content_length(head: &str) -> io::Result<u64> {
    header(head, "content-length")
        .unwrap_or("0")
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))
}

async fn serve_http(mut s: TcpStream, replica: &str) -> io::Result<()> {
    let (head, rest) = read_head(&mut s).await?;
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let respond_head = |status: &str, len: u64, kind: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\nX-Served-By: {replica}\r\nConnection: close\r\n\r\n"
        )
    };
    let text = |status: &str, body: String| {
        let mut r = respond_head(status, body.len() as u64, "text/plain");
        r.push_str(&body);
        r
    };
    match (method, path) {
        ("GET", "/" | "/hello") => {
            let body = format!("hello from {replica}, a legacy HTTP server behind Serval\n");
            s.write_all(text("200 OK", body).as_bytes()).await?;
        }
        ("GET", p) if p.starts_with("/bytes/") => {
            let n = p["/bytes/".len()..]
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= MAX_BODY);
            let Some(n) = n else {
                let r = text("400 Bad Request", "size: 0 to 1073741824\n".into());
                return s.write_all(r.as_bytes()).await;
            };
            s.write_all(respond_head("200 OK", n, "application/octet-stream").as_bytes())
                .await?;
            let mut pattern = Pattern::new(1, n);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let k = pattern.fill(&mut buf);
                if k == 0 {
                    break;
                }
                s.write_all(&buf[..k]).await?;
            }
        }
        ("POST", "/upload") => {
            let len = content_length(&head)?;
            if len > MAX_BODY {
                let r = text("413 Payload Too Large", "at most 1 GiB\n".into());
                return s.write_all(r.as_bytes()).await;
            }
            let mut h = Sha256::new();
            let first = rest.len().min(usize::try_from(len).unwrap_or(usize::MAX));
            h.update(&rest[..first]);
            let mut left = len - first as u64;
            let mut buf = vec![0u8; CHUNK];
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                let n = s.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                h.update(&buf[..n]);
                left -= n as u64;
            }
            let digest: [u8; 32] = h.finalize().into();
            let body = format!("{len} {}\n", hex(&digest));
            s.write_all(text("200 OK", body).as_bytes()).await?;
        }
        _ => {
            s.write_all(
                text(
                    "404 Not Found",
                    "try /hello, /bytes/<n>, POST /upload\n".into(),
                )
                .as_bytes(),
            )
            .await?;
        }
    }
    s.shutdown().await
}

// ------------------------------------------------------------------------------------------
// A legacy HTTP client

/// One HTTP answer, as the demo checks it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `X-Served-By`.
    pub served_by: String,
    /// Body length.
    pub len: u64,
    /// Body SHA-256.
    pub sha256: [u8; 32],
    /// The body when it is short (≤ 4 KiB), for text answers.
    pub text: String,
}

/// Sends one request to `addr` (with `body` bytes of [`Pattern`] seed 2 for a POST) and
/// reads the whole answer, hashing the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: u64) -> io::Result<Answer> {
    let mut s = TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {DEMO_NAME}\r\nConnection: close\r\n");
    if method == "POST" {
        let _ = write!(req, "Content-Length: {body}\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    if method == "POST" {
        let mut pattern = Pattern::new(2, body);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = pattern.fill(&mut buf);
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await?;
        }
    }
    let (head, rest) = read_head(&mut s).await?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
    let served_by = header(&head, "x-served-by").unwrap_or("?").to_owned();
    let len = content_length(&head)?;
    let mut h = Sha256::new();
    let mut text = Vec::new();
    let mut got = rest.len() as u64;
    h.update(&rest);
    text.extend_from_slice(&rest);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        if text.len() < 4096 {
            text.extend_from_slice(&buf[..n.min(4096)]);
        }
        got += n as u64;
    }
    if got != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("body: {got} bytes of {len}"),
        ));
    }
    Ok(Answer {
        status,
        served_by,
        len,
        sha256: h.finalize().into(),
        text: if len <= 4096 {
            String::from_utf8_lossy(&text).into_owned()
        } else {
            String::new()
        },
    })
}

// ------------------------------------------------------------------------------------------
// The topology

/// Everything the demo runs.
#[derive(Debug)]
pub struct Demo {
    /// The legacy servers A and B.
    pub legacy: [LegacyHttp; 2],
    /// The service router.
    pub router: Translator,
    /// The server translators in front of A and B.
    pub servers: Vec<Translator>,
    /// The client translator.
    pub client: Translator,
    /// The client translator's listener.
    pub listen: SocketAddr,
    replicas: HashMap<String, usize>,
}

fn policy(text: &str, source: &str) -> Result<Translator, DemoError> {
    let env: HashMap<String, String> =
        HashMap::from([("DEMO_KEY".to_owned(), DEMO_KEY.to_owned())]);
    let loaded = config::parse(text, source, &env).map_err(|e| fail(e.render()))?;
    let secrets = config::preflight(&loaded, Path::new("."), &env).map_err(|e| fail(e.render()))?;
    Translator::start(loaded, secrets).map_err(|e| fail(format!("{source}: {e}")))
}

/// Settings every demo translator shares: loopback, no admin endpoint (several
/// translators share the process), a short drain.
const COMMON: &str = "admin: {listen: ~}\ndrain: {grace_period: 5s}\n";

impl Demo {
    /// Starts the topology and waits until both replicas are registered.
    pub async fn start(options: &DemoOptions) -> Result<Self, DemoError> {
        let a = LegacyHttp::start("replica-A").await.map_err(fail)?;
        let b = LegacyHttp::start("replica-B").await.map_err(fail)?;

        let router = policy(
            &format!(
                "serval: {{bind: 127.0.0.1:0}}\nrouter:\n  keys: [{{id: 1, env: DEMO_KEY}}]\n  lease: {{min: 1s, max: 1m, default: 30s}}\n{COMMON}"
            ),
            "demo/router.yaml",
        )?;
        let router_addr = router.serval_addr();

        let mut servers = Vec::new();
        for (i, legacy) in [&a, &b].into_iter().enumerate() {
            servers.push(policy(
                &format!(
                    "serval:\n  bind: 127.0.0.1:0\n  routers: [\"{router_addr}\"]\n  key: {{id: 1, env: DEMO_KEY}}\nserver:\n  services:\n    - name: web\n      prefix: \"name:{DEMO_NAME}\"\n      backends: [{{address: \"{}\"}}]\n{COMMON}",
                    legacy.addr()
                ),
                &format!("demo/server-{}.yaml", i + 1),
            )?);
        }

        let reservation;
        let listen = match options.listen {
            Some(a) => a,
            None => {
                reservation = PortReservation::new(Ipv4Addr::LOCALHOST.into()).map_err(fail)?;
                reservation.addr()
            }
        };
        let client = policy(
            &format!(
                "serval:\n  bind: 127.0.0.1:0\n  routers: [\"{router_addr}\"]\nclient:\n  listeners:\n    - name: web\n      listen: \"{listen}\"\n      service: \"name:{DEMO_NAME}\"\n{COMMON}"
            ),
            "demo/client.yaml",
        )?;
        let listen = client
            .client()
            .and_then(|c| c.listener_addr("web"))
            .ok_or_else(|| fail("the client listener is not open"))?;

        for s in &servers {
            s.wait_registered(WAIT).await.map_err(fail)?;
        }
        let replicas = HashMap::from([("replica-A".to_owned(), 0), ("replica-B".to_owned(), 1)]);
        Ok(Self {
            legacy: [a, b],
            router,
            servers,
            client,
            listen,
            replicas,
        })
    }

    /// The prefix the replicas register.
    fn prefix() -> Result<ServicePrefix, DemoError> {
        name::service_id_for_name(DEMO_NAME)
            .map(ServicePrefix::exact)
            .map_err(fail)
    }

    /// Runs every step and returns the report.
    pub async fn check(&mut self, options: &DemoOptions) -> Result<String, DemoError> {
        let mut out = String::new();
        let service = name::service_id_for_name(DEMO_NAME).map_err(fail)?;
        let prefix = Self::prefix()?;
        let _ = writeln!(
            out,
            "Serval translator demo: every part on loopback, in this process\n"
        );
        let _ = writeln!(out, "  service          {DEMO_NAME} = {service}");
        for (i, (l, s)) in self.legacy.iter().zip(&self.servers).enumerate() {
            let r = ["A", "B"][i];
            let _ = writeln!(
                out,
                "  replica-{r}        legacy HTTP server on {} (plain TCP)\n  server xlator {}  Serval {} -> {}, registered with the router",
                l.addr(),
                i + 1,
                s.serval_addr(),
                l.addr()
            );
        }
        let _ = writeln!(
            out,
            "  service router   Serval {} (UDP), registrations signed with a shared key",
            self.router.serval_addr()
        );
        let _ = writeln!(
            out,
            "  client xlator    TCP {} -> name:{DEMO_NAME}, resolved through the router",
            self.listen
        );

        let _ = writeln!(
            out,
            "\n== The router's service table, filled by registrations"
        );
        let rows = self.router.endpoint().with_table(|t| {
            t.iter()
                .flat_map(|e| {
                    e.targets()
                        .iter()
                        .map(|t| (e.prefix().to_string(), t.priority(), *t.action()))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        });
        let exact = prefix.to_string();
        for (p, prio, action) in &rows {
            if let Action::Forward(to) = action {
                let p = if *p == exact {
                    format!("{DEMO_NAME} (exact id)")
                } else {
                    p.clone()
                };
                let who = self
                    .servers
                    .iter()
                    .position(|s| s.serval_addr() == *to)
                    .map_or(String::new(), |i| format!("  (server xlator {})", i + 1));
                let _ = writeln!(out, "  {p}  prio {prio}  FORWARD {to}{who}");
            }
        }
        let instances = self.router.router().map(|r| r.instances(&prefix));
        check(
            instances.is_some_and(|i| i.len() == 2),
            "both replicas are registered with the router",
        )?;

        // 1. Small requests, spread over the replicas.
        let _ = writeln!(
            out,
            "\n== {} HTTP requests through the client translator (new flow each)",
            options.requests
        );
        let mut served = [0usize; 2];
        for _ in 0..options.requests {
            let a = self.get("/hello").await?;
            check(a.status == 200, "GET /hello answers 200")?;
            check(
                a.text.contains(&a.served_by) && a.text.starts_with("hello from"),
                "the body names the replica that sent it",
            )?;
            let i = self.replica(&a)?;
            served[i] += 1;
        }
        let _ = writeln!(
            out,
            "  replica-A served {}, replica-B served {}; every body checked",
            served[0], served[1]
        );
        if options.requests >= 32 {
            // Each flow goes to either replica with probability 1/2: all 32 on one side
            // happens once in 2^31 runs.
            check(
                served.iter().all(|n| *n > 0),
                "the router spreads new flows over both replicas",
            )?;
        }

        // 2. Large transfers.
        let _ = writeln!(out, "\n== Large transfers (bodies checked by SHA-256)");
        if options.download > 0 {
            let want = Pattern::new(1, options.download).sha256();
            let t = Instant::now();
            let a = self.get(&format!("/bytes/{}", options.download)).await?;
            let secs = t.elapsed().as_secs_f64();
            check(a.status == 200, "GET /bytes answers 200")?;
            check(
                a.len == options.download && a.sha256 == want,
                "the download arrives complete and unchanged",
            )?;
            let _ = writeln!(
                out,
                "  download {} in {:.2} s = {}  from {}  sha256 {}…",
                size(a.len),
                secs,
                rate(a.len, secs),
                a.served_by,
                &hex(&a.sha256)[..16]
            );
        }
        if options.upload > 0 {
            let want = hex(&Pattern::new(2, options.upload).sha256());
            let t = Instant::now();
            let a = tokio::time::timeout(
                WAIT.max(Duration::from_secs(120)),
                http(self.listen, "POST", "/upload", options.upload),
            )
            .await
            .map_err(|_| fail("POST /upload hung"))?
            .map_err(|e| fail(format!("POST /upload: {e}")))?;
            let secs = t.elapsed().as_secs_f64();
            check(a.status == 200, "POST /upload answers 200")?;
            check(
                a.text.trim() == format!("{} {want}", options.upload),
                "the server received the upload complete and unchanged",
            )?;
            let _ = writeln!(
                out,
                "  upload   {} in {:.2} s = {}  to {}  sha256 {}…",
                size(options.upload),
                secs,
                rate(options.upload, secs),
                a.served_by,
                &want[..16]
            );
        }

        // 3. One replica drains: late binding moves new flows to the other.
        let _ = writeln!(
            out,
            "\n== Server translator 1 drains (SIGTERM): it withdraws its registration"
        );
        let first = self.servers.remove(0);
        let gone = first.serval_addr();
        tokio::spawn(first.drain());
        let router = self
            .router
            .router()
            .cloned()
            .ok_or_else(|| fail("no router role"))?;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tokio::time::timeout(WAIT, async {
            while router.instances(&prefix).contains(&gone) {
                tick.tick().await;
            }
        })
        .await
        .map_err(|_| fail("the draining replica's registration was not withdrawn"))?;
        let _ = writeln!(
            out,
            "  the router now forwards {DEMO_NAME} to {:?} only",
            router.instances(&prefix)
        );
        let n = options.requests.clamp(1, 8);
        let mut after = [0usize; 2];
        for _ in 0..n {
            let a = self.get("/hello").await?;
            after[self.replica(&a)?] += 1;
        }
        let _ = writeln!(
            out,
            "  {n} new requests: replica-A {}, replica-B {}",
            after[0], after[1]
        );
        check(
            after[0] == 0 && after[1] == n,
            "new flows avoid the withdrawn replica",
        )?;

        if let Some(client) = self.client.client() {
            // The last answer is read before its relay has seen both ends; wait for it so
            // the counters add up.
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let _ = tokio::time::timeout(WAIT, async {
                while client.stats().active > 0 {
                    tick.tick().await;
                }
            })
            .await;
            let stats = client.stats();
            let _ = writeln!(
                out,
                "\n== Client translator counters\n  accepted {}, relayed {}, finished cleanly {}, refused {}, bytes to service {}, to client {}",
                stats.accepted,
                stats.relayed,
                stats.outcomes.finished,
                stats.accepted.saturating_sub(stats.relayed),
                stats.bytes_to_service,
                stats.bytes_to_client
            );
        }
        let _ = writeln!(out, "\ndemo OK: every check passed");
        Ok(out)
    }

    async fn get(&self, path: &str) -> Result<Answer, DemoError> {
        tokio::time::timeout(
            WAIT.max(Duration::from_secs(120)),
            http(self.listen, "GET", path, 0),
        )
        .await
        .map_err(|_| fail(format!("GET {path} hung")))?
        .map_err(|e| fail(format!("GET {path}: {e}")))
    }

    fn replica(&self, a: &Answer) -> Result<usize, DemoError> {
        self.replicas
            .get(&a.served_by)
            .copied()
            .ok_or_else(|| fail(format!("unknown replica {:?}", a.served_by)))
    }

    /// Drains every translator, all at once.
    pub async fn stop(self) {
        let mut all = vec![tokio::spawn(self.client.drain())];
        all.extend(self.servers.into_iter().map(|s| tokio::spawn(s.drain())));
        all.push(tokio::spawn(self.router.drain()));
        for t in all {
            let _ = t.await;
        }
    }
}

fn size(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} B")
    }
}

fn rate(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    #[allow(clippy::cast_precision_loss)] // a display figure
    let bits = bytes as f64 * 8.0 / secs;
    if bits >= 1e9 {
        format!("{:.2} Gbit/s", bits / 1e9)
    } else {
        format!("{:.0} Mbit/s", bits / 1e6)
    }
}

/// Runs the demo: starts the topology, runs the checks, stops it; returns the report.
pub async fn run(options: &DemoOptions) -> Result<String, DemoError> {
    let mut demo = Demo::start(options).await?;
    let r = demo.check(options).await;
    demo.stop().await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_exact() {
        let mut p = Pattern::new(1, 13);
        let mut buf = [0u8; 64];
        assert_eq!(p.fill(&mut buf), 8);
        assert_eq!(p.fill(&mut buf), 5);
        assert_eq!(p.fill(&mut buf), 0);
        assert_eq!(Pattern::new(1, 13).sha256(), Pattern::new(1, 13).sha256());
        assert_ne!(Pattern::new(1, 13).sha256(), Pattern::new(2, 13).sha256());
    }

    #[test]
    fn headers_are_found_case_insensitively() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Served-By: replica-A\r\n\r\n";
        assert_eq!(header(head, "content-length"), Some("5"));
        assert_eq!(header(head, "X-SERVED-BY"), Some("replica-A"));
        assert_eq!(header(head, "missing"), None);
    }
}
