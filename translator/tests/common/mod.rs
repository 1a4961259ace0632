//! Helpers shared by the end-to-end tests: policies started through the production path,
//! legacy TCP servers, native Serval servers, and hashed transfers.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // shared by several test crates; tests may unwrap

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::collections::HashMap;
use std::io;
use std::path::Path;

use serval_stack::control::{RegistrantConfig, SharedKey};
use serval_stack::driver::{Endpoint, ServalListener};
use serval_stack::sal::EndpointConfig;
use serval_stack::wire::ServicePrefix;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use translator::config;
use translator::demo::{Pattern, PortReservation};
use translator::run::Translator;

/// Hang guard of every wait: generous, never a timing assertion.
pub const WAIT: Duration = Duration::from_secs(60);

/// The registration key of the tests, as hex and as the variable policies name.
pub const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

pub fn env() -> HashMap<String, String> {
    HashMap::from([("TEST_KEY".to_owned(), KEY_HEX.to_owned())])
}

pub fn key() -> SharedKey {
    let bytes: Vec<u8> = (0..KEY_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&KEY_HEX[i..i + 2], 16).unwrap())
        .collect();
    SharedKey::new(&bytes).unwrap()
}

/// Every policy of the tests: no admin endpoint (several share the process).
pub const COMMON: &str = "admin: {listen: ~}\n";

pub fn loaded(yaml: &str) -> (config::Loaded, config::Secrets) {
    let text = format!("{yaml}{COMMON}");
    let loaded = config::parse(&text, "test.yaml", &env())
        .unwrap_or_else(|e| panic!("{}\n{text}", e.render()));
    let secrets = config::preflight(&loaded, Path::new("."), &env()).unwrap();
    (loaded, secrets)
}

/// Starts a translator on `yaml` through the production path (parse, validate, preflight,
/// start).
pub fn start(yaml: &str) -> Translator {
    let (loaded, secrets) = loaded(yaml);
    Translator::start(loaded, secrets).unwrap()
}

pub fn router() -> Translator {
    start("serval: {bind: 127.0.0.1:0}\nrouter: {keys: [{id: 1, env: TEST_KEY}]}\n")
}

/// A free loopback port for a client listener.
pub fn reserve() -> PortReservation {
    PortReservation::new(Ipv4Addr::LOCALHOST.into()).unwrap()
}

/// A native Serval server (no translator): an endpoint registered with `router` for
/// `prefix`, serving every stream with [`sink_then_source`] under its `tag`.
pub struct NativeServer {
    pub endpoint: Endpoint,
    pub listener: ServalListener,
    pub tag: &'static str,
}

impl NativeServer {
    pub async fn start(router: SocketAddr, prefix: ServicePrefix, tag: &'static str) -> Self {
        let mut config = EndpointConfig::default();
        config.local_addr = "127.0.0.1:0".parse().unwrap();
        let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
        endpoint
            .enable_registrant(RegistrantConfig::new(1, key()), &[router])
            .unwrap();
        let listener = endpoint.listen(prefix).unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tokio::time::timeout(WAIT, async {
            while !endpoint.is_registered(router, &prefix) {
                tick.tick().await;
            }
        })
        .await
        .expect("registered");
        Self {
            endpoint,
            listener,
            tag,
        }
    }

    /// Serves streams for ever with [`sink_then_source`], after the PROXY v2 preamble
    /// every client translator's flow starts with (a native service fronted by client
    /// translators must understand it; a stream without one is dropped here).
    pub fn serve(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let _endpoint = self.endpoint;
            while let Ok(mut s) = self.listener.accept().await {
                let tag = self.tag;
                tokio::spawn(async move {
                    use translator::client_address::{Start, read};
                    if let Ok(Start::Carried { .. }) = read(&mut s, WAIT).await {
                        sink_then_source(s, tag).await;
                    }
                });
            }
        })
    }
}

/// A legacy TCP server serving every connection with [`sink_then_source`].
pub async fn legacy_server(tag: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(sink_then_source(s, tag));
        }
    });
    (addr, task)
}

/// The request/answer protocol of the tests, built on half-close: the client sends an
/// 8-byte big-endian length `n` wanted back, then any bytes, then half-closes; the server
/// reads to the end, and only then answers `<count> <sha256> <tag>\n` of what it read
/// followed by `n` bytes of `Pattern` seed 7, and closes.
pub async fn sink_then_source<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, tag: &str) {
    let Ok(n) = s.read_u64().await else { return };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut count = 0u64;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                count += k as u64;
            }
            Err(_) => return,
        }
    }
    let line = format!("{count} {} {tag}\n", hex(&h.finalize()));
    if s.write_all(line.as_bytes()).await.is_err() {
        return;
    }
    let mut p = Pattern::new(7, n);
    loop {
        let k = p.fill(&mut buf);
        if k == 0 {
            break;
        }
        if s.write_all(&buf[..k]).await.is_err() {
            return;
        }
    }
    let _ = s.shutdown().await;
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What [`exchange`] observed.
#[derive(Debug)]
pub struct Exchange {
    /// The server's account of what it received.
    pub server_saw: String,
    /// The tag of the server that answered.
    pub tag: String,
    /// What we expected it to say.
    pub expected: String,
    /// Bytes received after the account, and their hash.
    pub back: u64,
    pub back_sha: [u8; 32],
}

impl Exchange {
    /// Both directions arrived complete and unchanged.
    pub fn assert_exact(&self, wanted_back: u64) {
        assert_eq!(self.server_saw, self.expected, "upload");
        assert_eq!(self.back, wanted_back, "download length");
        assert_eq!(
            self.back_sha,
            Pattern::new(7, wanted_back).sha256(),
            "download content"
        );
    }
}

/// Connects to `addr`, uploads `up` bytes (`Pattern` seed 3) asking for `down` bytes back,
/// half-closes, and reads the answer to its end.
pub async fn exchange(addr: SocketAddr, up: u64, down: u64) -> io::Result<Exchange> {
    let s = TcpStream::connect(addr).await?;
    exchange_on(s, up, down).await
}

pub async fn exchange_on(mut s: TcpStream, up: u64, down: u64) -> io::Result<Exchange> {
    send_request(&mut s, up, down).await?;
    read_answer(s, up).await
}

/// The client's half of an exchange: asks for `down` bytes back, uploads `up` bytes
/// (`Pattern` seed 3) and half-closes.
async fn send_request(s: &mut TcpStream, up: u64, down: u64) -> io::Result<()> {
    s.write_u64(down).await?;
    upload_rest(s, &mut Pattern::new(3, up)).await
}

/// Uploads what is left of `p`, then half-closes.
async fn upload_rest(s: &mut TcpStream, p: &mut Pattern) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let k = p.fill(&mut buf);
        if k == 0 {
            break;
        }
        s.write_all(&buf[..k]).await?;
    }
    s.shutdown().await
}

impl Exchange {
    /// What a download ended with: the server's account line, the account the client
    /// expected, and the bytes it received with their running hash.
    fn new(line: &[u8], expected: String, back: u64, h: Sha256) -> Self {
        let line = String::from_utf8_lossy(line).into_owned();
        let (saw, tag) = line.rsplit_once(' ').unwrap_or((&line, ""));
        Self {
            server_saw: saw.to_owned(),
            tag: tag.to_owned(),
            expected,
            back,
            back_sha: h.finalize().into(),
        }
    }
}

/// The server's account line (`<bytes received> <sha256>`), without its newline.
async fn account_line<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let b = s.read_u8().await?;
        if b == b'\n' {
            return Ok(line);
        }
        line.push(b);
        if line.len() > 200 {
            return Err(io::Error::other("no account line"));
        }
    }
}

/// Reads the account line and the download to the end.
pub async fn read_answer(s: TcpStream, up: u64) -> io::Result<Exchange> {
    read_answer_gated(s, up, None).await
}

/// [`read_answer`], reading the download only as far as `gate` allows when there is one
/// (see [`exchange_gated`]).
async fn read_answer_gated(
    mut s: TcpStream,
    up: u64,
    mut gate: Option<tokio::sync::watch::Receiver<u64>>,
) -> io::Result<Exchange> {
    let expected = format!("{up} {}", hex(&Pattern::new(3, up).sha256()));
    let mut buf = vec![0u8; 64 << 10];
    // The account line, then the pattern.
    let line = account_line(&mut s).await?;
    let mut h = Sha256::new();
    let mut back = 0u64;
    loop {
        let mut room = buf.len();
        if let Some(gate) = &mut gate {
            let allowed = *gate.borrow_and_update();
            if back >= allowed {
                tokio::time::timeout(WAIT, gate.changed())
                    .await
                    .map_err(|_| io::Error::other("the gate was never raised"))?
                    .map_err(|_| io::Error::other("the gate was dropped"))?;
                continue;
            }
            room = usize::try_from(allowed - back)
                .unwrap_or(usize::MAX)
                .min(room);
        }
        let k = s.read(&mut buf[..room]).await?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        back += k as u64;
    }
    Ok(Exchange::new(&line, expected, back, h))
}

/// Waits (bounded) until `f` holds, checking every 10 ms.
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tokio::time::timeout(WAIT, async {
        while !f() {
            tick.tick().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

/// Whether a TCP connection to `addr` is refused, or reset before any answer. Nothing is
/// written: a write could consume the reset and leave the read an ordinary end of stream.
pub async fn refused(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return true;
    };
    let mut buf = [0u8; 1];
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Ok(Ok(_)) => false,
        Ok(Err(e)) => e.kind() == io::ErrorKind::ConnectionReset,
        Err(_) => panic!("no answer from {addr}"),
    }
}

/// Whether nothing listens at `addr` (the connection is refused by the kernel).
pub async fn closed(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect(addr).await, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
}

/// Waits (bounded) until nothing listens at `addr` any more.
pub async fn wait_closed(addr: SocketAddr) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tokio::time::timeout(WAIT, async {
        while !closed(addr).await {
            tick.tick().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{addr} still accepts connections"));
}

/// A connection paused in the middle of its upload (for reload and drain tests).
pub struct Held {
    stream: TcpStream,
    up: Pattern,
    up_len: u64,
    down: u64,
}

impl Held {
    /// Connects, asks for `down` bytes back and uploads the first half of `up` bytes.
    pub async fn open(addr: SocketAddr, up: u64, down: u64) -> io::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_u64(down).await?;
        let mut p = Pattern::new(3, up);
        let mut buf = vec![0u8; (up / 2) as usize & !7];
        let n = p.fill(&mut buf);
        stream.write_all(&buf[..n]).await?;
        Ok(Self {
            stream,
            up: p,
            up_len: up,
            down,
        })
    }

    /// Uploads the rest, half-closes and reads the answer.
    pub async fn finish(mut self) -> io::Result<Exchange> {
        upload_rest(&mut self.stream, &mut self.up).await?;
        read_answer(self.stream, self.up_len).await
    }

    /// The wanted download length.
    pub fn down(&self) -> u64 {
        self.down
    }

    /// Waits until the peer ends the connection; returns how (`Ok` clean, `Err` reset).
    pub async fn wait_end(mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if self.stream.read(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    }
}

/// Connects to `addr` from source address `src` (any 127.0.0.0/8 address on loopback), so
/// one test can play several clients.
pub async fn connect_from(src: Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))?;
    sock.connect(addr).await
}

/// Waits (bounded) until the peer ends `s`; `Ok` for a clean end of stream, `Err` for a
/// reset. Whatever arrives before the end is discarded.
pub async fn wait_end(s: &mut TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    tokio::time::timeout(WAIT, async {
        loop {
            if s.read(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the connection was not ended"))
}

/// [`exchange`], but the download is read only as far as `gate` allows (bytes of the
/// download, raised by the test): the transfer cannot finish before the test lets it, and
/// data keeps flowing while the test does something else (the hostile-input tests spray
/// between raises). Raise it to `u64::MAX` to let the transfer end. Waits on the gate are
/// bounded by [`WAIT`].
pub async fn exchange_gated(
    addr: SocketAddr,
    up: u64,
    down: u64,
    gate: tokio::sync::watch::Receiver<u64>,
) -> io::Result<Exchange> {
    let mut s = TcpStream::connect(addr).await?;
    send_request(&mut s, up, down).await?;
    read_answer_gated(s, up, Some(gate)).await
}
