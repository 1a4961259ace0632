//! Network namespaces for end-to-end tests: each test makes its own namespaces, links them
//! with veth pairs, and runs real processes inside; everything is removed on drop.
//!
//! All of it needs root (`CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) and `ip` / `tc` (iproute2);
//! rules use `nft` (nftables) and `conntrack`. A test calls [`require_root`] first and
//! returns early, loudly, when it cannot run.
//!
//! Also here: [`Process`], a child whose stdout lines a test waits on with bounded timeouts
//! (readiness and result lines, never sleeps), killed on drop; and [`Pattern`], the seeded
//! payload `serval-node` sends, so a test knows the SHA-256 to expect.
//!
//! Traffic stays inside the namespaces a test made: nothing here touches the host's own
//! interfaces, routes or rules.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// Namespaces and veth pairs made by this process, for unique names.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The effective user id from `/proc/self/status` (`None` if unreadable).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // "Uid:\treal\teffective\tsaved\tfs"
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Prints a loud `SKIPPED: <what> needs root` line to stderr and returns false when not
/// root.
pub fn require_root(what: &str) -> bool {
    if effective_uid() == Some(0) {
        return true;
    }
    // Straight to the stderr handle, not `eprintln!`: the test harness captures the macros'
    // output of passing tests, and a skip must be seen.
    let bar = "*".repeat(78);
    let _ = writeln!(
        io::stderr().lock(),
        "\n{bar}\nSKIPPED: {what} needs root (network namespaces, veth, nftables)\n{bar}\n"
    );
    false
}

/// Runs `cmd` (with `stdin` written to it when given); returns its stdout, or an error
/// naming the command and carrying its stderr when it fails.
fn run(mut cmd: Command, stdin: Option<&str>) -> io::Result<String> {
    let shown = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{shown}: {e}")))?;
    if let Some(input) = stdin {
        // Take the pipe so it closes (EOF) once written.
        let mut pipe = child.stdin.take().expect("stdin was piped above");
        pipe.write_all(input.as_bytes())
            .map_err(|e| io::Error::new(e.kind(), format!("{shown}: writing stdin: {e}")))?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command from an argument list (`args[0]` the program).
fn command_of(args: &[&str]) -> io::Result<Command> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(rest);
    Ok(cmd)
}

/// A network namespace made for one test; unique name (`sv<pid>-<tag>-<n>`), loopback up;
/// processes still inside are killed and the namespace deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes the namespace and brings its loopback up.
    pub fn new(tag: &str) -> io::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("sv{}-{tag}-{n}", std::process::id());
        run(command_of(&["ip", "netns", "add", &name])?, None)?;
        // From here on, drop removes it whatever fails next.
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "dev", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <name> <program>` as a Command to add args to and spawn.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a command inside (e.g. `["ip", "addr", "add", ..]`) and returns its stdout; an
    /// error naming the command and its stderr when it exits non-zero.
    pub fn exec(&self, args: &[&str]) -> io::Result<String> {
        self.exec_with_stdin(args, None)
    }

    /// As [`exec`](Self::exec), writing `stdin` to the command (e.g. `["nft", "-f", "-"]`
    /// with a ruleset).
    pub fn exec_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> io::Result<String> {
        let mut cmd = self.command(
            args.first()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?,
        );
        cmd.args(&args[1..]);
        run(cmd, stdin)
    }

    /// Loads an nftables ruleset (the text `nft -f` reads) into the namespace.
    pub fn nft(&self, ruleset: &str) -> io::Result<()> {
        self.exec_with_stdin(&["nft", "-f", "-"], Some(ruleset))
            .map(drop)
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Turns IPv4 forwarding on (a router or NAT namespace).
    pub fn enable_forwarding(&self) -> io::Result<()> {
        self.sysctl("net.ipv4.ip_forward", "1")
    }

    /// Adds a route inside: `dest` (`"10.2.0.0/24"` or `"default"`) via `gateway`.
    pub fn route(&self, dest: &str, gateway: &str) -> io::Result<()> {
        self.exec(&["ip", "route", "add", dest, "via", gateway])
            .map(drop)
    }

    /// Process ids inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        let out = run(command_of(&["ip", "netns", "pids", &self.name])?, None)?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A namespace lives on while a process is inside; kill what is left (the tests'
        // own guards normally did already). Only processes inside this namespace, which
        // this test made, are touched.
        if let Ok(pids) = self.pids() {
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Err(e) = command_of(&["ip", "netns", "del", &self.name]).and_then(|c| run(c, None)) {
            eprintln!("netns {}: cleanup failed: {e}", self.name);
        }
    }
}

/// Sets `dev` up inside `ns` with `addr` (CIDR) and `mtu`.
fn configure(ns: &Netns, dev: &str, addr: &str, mtu: u32) -> io::Result<()> {
    ns.exec(&["ip", "addr", "add", addr, "dev", dev])?;
    ns.exec(&[
        "ip",
        "link",
        "set",
        "dev",
        dev,
        "mtu",
        &mtu.to_string(),
        "up",
    ])?;
    Ok(())
}

/// A veth pair between `a` and `b` with the given addresses (`"10.1.0.1/24"`) and MTU, both
/// ends up; returns the interface names (a's, b's).
///
/// The pair is made inside `a` with its peer created directly in `b`, so the host never
/// sees it; deleting either namespace deletes the pair.
pub fn veth(
    a: &Netns,
    a_addr: &str,
    b: &Netns,
    b_addr: &str,
    mtu: u32,
) -> io::Result<(String, String)> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Interface names are at most 15 bytes; unique per namespace is enough.
    let (an, bn) = (format!("ve{n}a"), format!("ve{n}b"));
    a.exec(&[
        "ip",
        "link",
        "add",
        "name",
        &an,
        "type",
        "veth",
        "peer",
        "name",
        &bn,
        "netns",
        b.name(),
    ])?;
    configure(a, &an, a_addr, mtu)?;
    configure(b, &bn, b_addr, mtu)?;
    Ok((an, bn))
}

/// A bridge `name` inside `ns` with `addr` (CIDR, or `None` for a plain switch), up.
pub fn bridge(ns: &Netns, name: &str, addr: Option<&str>) -> io::Result<()> {
    ns.exec(&["ip", "link", "add", "name", name, "type", "bridge"])?;
    if let Some(a) = addr {
        ns.exec(&["ip", "addr", "add", a, "dev", name])?;
    }
    ns.exec(&["ip", "link", "set", "dev", name, "up"])?;
    Ok(())
}

/// Enslaves `dev` (inside `ns`) to the bridge `bridge`.
pub fn attach(ns: &Netns, dev: &str, bridge: &str) -> io::Result<()> {
    ns.exec(&["ip", "link", "set", "dev", dev, "master", bridge])
        .map(drop)
}

/// Shapes `dev` (inside `ns`) to `rate` (tc's units: `"200mbit"`) with a token bucket, so a
/// transfer over it lasts long enough to act on mid-way, whatever the machine's speed.
pub fn rate_limit(ns: &Netns, dev: &str, rate: &str) -> io::Result<()> {
    ns.exec(&[
        "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kb", "latency",
        "50ms",
    ])
    .map(drop)
}

/// A deadline `limit` from now: a hang guard for waits, never a synchronisation.
#[allow(clippy::disallowed_methods)] // a test's wait bound, not the protocol core's clock
fn deadline(limit: Duration) -> Instant {
    Instant::now() + limit
}

/// The time left until `deadline` (zero once past).
#[allow(clippy::disallowed_methods)] // a test's wait bound, not the protocol core's clock
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A process a test started (usually inside a [`Netns`]): stdin piped for commands, stdout
/// read line by line (waited on with bounded timeouts), stderr echoed with the process's
/// name. Killed on drop if still running.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    eof: bool,
}

impl Process {
    /// Spawns `cmd`; `name` prefixes its stderr lines and names it in errors.
    pub fn spawn(name: &str, mut cmd: Command) -> io::Result<Self> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawning {name} ({cmd:?}): {e}")))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout was piped above");
        let stderr = child.stderr.take().expect("stderr was piped above");
        let (tx, lines) = mpsc::channel();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{tag}] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let kept = Arc::new(Mutex::new(Vec::new()));
        let (tag, sink) = (name.to_owned(), kept.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{tag} stderr] {line}");
                if let Ok(mut v) = sink.lock() {
                    v.push(line);
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr: kept,
            eof: false,
        })
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every stdout line read so far.
    pub fn lines(&self) -> &[String] {
        &self.seen
    }

    /// Whether a stdout line read so far starts with `prefix`.
    pub fn has_line(&self, prefix: &str) -> bool {
        self.seen.iter().any(|l| l.starts_with(prefix))
    }

    /// The stderr lines so far, joined (for error messages).
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|v| v.join("\n")).unwrap_or_default()
    }

    /// Takes every stdout line already printed, without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Waits up to `limit` for the next stdout line satisfying `pred` and returns it; an error
    /// (with the process's stderr) on timeout or if the process ends first.
    pub fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> io::Result<String> {
        let end = deadline(limit);
        loop {
            let line = if self.eof {
                Err(RecvTimeoutError::Disconnected)
            } else {
                self.lines.recv_timeout(left(end))
            };
            match line {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(e) => {
                    self.eof |= e == RecvTimeoutError::Disconnected;
                    let why = if self.eof {
                        "the process ended first"
                    } else {
                        "timed out"
                    };
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{}: waiting for {what} (limit {limit:?}): {why}; stdout {:?}; stderr:\n{}",
                            self.name,
                            self.seen,
                            self.stderr_text()
                        ),
                    ));
                }
            }
        }
    }

    /// Waits up to `limit` for the next stdout line starting with `prefix`; returns the rest
    /// of the line after the prefix, trimmed.
    pub fn wait_for(&mut self, prefix: &str, limit: Duration) -> io::Result<String> {
        let line = self.wait_until(prefix, limit, |l| l.starts_with(prefix))?;
        Ok(line[prefix.len()..].trim().to_owned())
    }

    /// Writes one command line to the process's stdin.
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stdin closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// Closes stdin (a `serval-node` router or server exits on it).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to `limit` for the process to exit (its stdout closing), reading the rest of
    /// its output; kills it on timeout and returns an error.
    pub fn wait_exit(&mut self, limit: Duration) -> io::Result<ExitStatus> {
        let end = deadline(limit);
        while !self.eof {
            match self.lines.recv_timeout(left(end)) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => self.eof = true,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{}: did not exit within {limit:?}; killed; stdout {:?}; stderr:\n{}",
                            self.name,
                            self.seen,
                            self.stderr_text()
                        ),
                    ));
                }
            }
        }
        // Stdout closed: the process is exiting (nothing else holds its stdout).
        self.child.wait()
    }

    /// Kills the process (if still running) and reaps it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill();
    }
}

/// A veth pair from `ns` (address `addr`, CIDR) to a port of `bridge` inside `hub`; both
/// ends up. Returns `ns`'s interface name.
pub fn veth_to_bridge(
    ns: &Netns,
    addr: &str,
    hub: &Netns,
    bridge: &str,
    mtu: u32,
) -> io::Result<String> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (an, bn) = (format!("ve{n}a"), format!("ve{n}b"));
    ns.exec(&[
        "ip",
        "link",
        "add",
        "name",
        &an,
        "type",
        "veth",
        "peer",
        "name",
        &bn,
        "netns",
        hub.name(),
    ])?;
    configure(ns, &an, addr, mtu)?;
    attach(hub, &bn, bridge)?;
    hub.exec(&[
        "ip",
        "link",
        "set",
        "dev",
        &bn,
        "mtu",
        &mtu.to_string(),
        "up",
    ])?;
    Ok(an)
}

/// The payload `serval-node` sends: `len` bytes of ChaCha8 from a seed, produced in
/// [`Pattern::CHUNK`]-byte pieces (the piece size is part of the pattern: the generator
/// discards the unused bytes of a partly used word).
#[derive(Debug)]
pub struct Pattern {
    rng: ChaCha8Rng,
    left: u64,
    buf: Vec<u8>,
}

impl Pattern {
    /// Bytes produced per [`next_chunk`](Self::next_chunk).
    pub const CHUNK: usize = 64 * 1024;

    /// `len` bytes from `seed`.
    pub fn new(seed: u64, len: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            left: len,
            buf: vec![0; Self::CHUNK],
        }
    }

    /// The next piece (at most [`CHUNK`](Self::CHUNK) bytes); `None` at the end.
    pub fn next_chunk(&mut self) -> Option<&[u8]> {
        if self.left == 0 {
            return None;
        }
        let n = usize::try_from(self.left).map_or(Self::CHUNK, |l| l.min(Self::CHUNK));
        self.rng.fill_bytes(&mut self.buf[..n]);
        self.left -= n as u64;
        Some(&self.buf[..n])
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 (hex) of the [`Pattern`] of `len` bytes from `seed`.
pub fn pattern_sha256(seed: u64, len: u64) -> String {
    let mut p = Pattern::new(seed, len);
    let mut hash = Sha256::new();
    while let Some(piece) = p.next_chunk() {
        hash.update(piece);
    }
    hex(&hash.finalize())
}

/// Makes `dev` (inside `ns`) cut GSO batches into single datagrams as they leave it, as a
/// physical NIC would; the next hop then sees (and its nftables rules drop) datagrams one
/// at a time rather than a whole batch, which a veth would otherwise pass on intact.
pub fn segment_on_egress(ns: &Netns, dev: &str) -> io::Result<()> {
    ns.exec(&["ip", "link", "set", "dev", dev, "gso_max_segs", "1"])
        .map(drop)
}
