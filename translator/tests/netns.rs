//! The translator as real processes in network namespaces: unmodified legacy software (`curl`,
//! `python3 -m http.server`, a small PROXY-protocol backend) talks TCP; `serval-translator`
//! processes carry it over Serval.
//!
//! ```text
//!  cli ns 10.50.0.1                     rtr ns 10.50.0.2 (bridge br0)      srv ns 10.50.0.3
//!  curl ─► client translator ──UDP──►   router translator        ◄──UDP── server translator
//!          127.0.0.1:8080 (explicit)    (registrations, resolves          └─► legacy backends
//!          :15001 (REDIRECT, v4 + v6)    the first packet of a flow)          (http.server, ...)
//!          127.0.0.1:53 (DNS responder)
//! ```
//!
//! Every test builds its own namespaces and policy files (in a temporary folder), waits on
//! conditions only (a log line of the translator, a backend's readiness line, a command's own
//! `--max-time`), checks downloads by SHA-256 or content, and cleans up on every path (drop
//! guards). Needs root (skipped loudly otherwise), `ip`, `nft`, `curl` and `python3`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serval_tests::netns::{
    Netns, Pattern, Process, bridge, hex, pattern_sha256, require_root, veth_to_bridge,
};
use sha2::{Digest, Sha256};

/// The translator binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_serval-translator");
/// Registration key (hex) shared by the router and the server translator.
const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// Bound of every wait (a hang guard, not a timing assertion).
const WAIT: Duration = Duration::from_secs(120);
/// `curl --max-time` of a small request and of the large download (hang guards too).
const CURL_SMALL: &str = "60";
const CURL_LARGE: &str = "600";
const MIB: u64 = 1 << 20;

const CLI: &str = "10.50.0.1";
const RTR: &str = "10.50.0.2";
const SRV: &str = "10.50.0.3";
/// Serval's UDP port on every translator.
const SERVAL_PORT: u16 = 54325;
/// The client translator's explicit listener (service `name:web.test`) and PROXY one.
const EXPLICIT: &str = "127.0.0.1:8080";
const EXPLICIT_PP: &str = "127.0.0.1:8081";
/// The client translator's REDIRECT listeners' port (0.0.0.0 and [::]).
const REDIRECT_PORT: u16 = 15001;

/// Temporary folders made by this process, for unique names.
static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("svtr-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `/etc/netns/<ns>/resolv.conf` (which `ip netns exec` mounts over `/etc/resolv.conf`),
/// removed on drop.
struct NetnsResolvConf(PathBuf);

impl NetnsResolvConf {
    fn new(ns: &Netns, nameserver: &str) -> Self {
        let dir = Path::new("/etc/netns").join(ns.name());
        fs::create_dir_all(&dir).expect("/etc/netns/<ns>");
        let guard = Self(dir);
        fs::write(
            guard.0.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:2 attempts:1\n"),
        )
        .expect("resolv.conf");
        guard
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Three namespaces on one bridge (inside `rtr`): the legacy client's, the router's and the
/// legacy servers'. Declared before the processes of a test, so dropped after them.
struct Topology {
    cli: Netns,
    srv: Netns,
    rtr: Netns,
    /// The client namespace's link (for routes to intercepted destinations).
    cli_link: String,
    dir: TempDir,
}

impl Topology {
    fn build(tag: &str) -> Self {
        let rtr = Netns::new("rtr").expect("rtr netns");
        let cli = Netns::new("cli").expect("cli netns");
        let srv = Netns::new("srv").expect("srv netns");
        bridge(&rtr, "br0", Some(&format!("{RTR}/24"))).expect("bridge");
        let cli_link =
            veth_to_bridge(&cli, &format!("{CLI}/24"), &rtr, "br0", 1500).expect("cli link");
        veth_to_bridge(&srv, &format!("{SRV}/24"), &rtr, "br0", 1500).expect("srv link");
        Self {
            cli,
            srv,
            rtr,
            cli_link,
            dir: TempDir::new(tag),
        }
    }

    /// Writes `yaml` (plus: no admin endpoint) as `<name>.yaml` and runs `serval-translator
    /// run` on it inside `ns`, its log (stderr) merged into the stdout lines the harness
    /// reads; returns once a log line contains `ready`.
    fn translator(&self, ns: &Netns, name: &str, yaml: &str, ready: &str) -> Process {
        let path = self.dir.path().join(format!("{name}.yaml"));
        fs::write(&path, format!("{yaml}admin: {{listen: ~}}\n")).expect("policy file");
        let mut cmd = ns.command("sh");
        cmd.arg("-c")
            .arg(r#"exec "$0" run --config "$1" 2>&1"#)
            .arg(BIN)
            .arg(&path)
            .env("SERVAL_TEST_KEY", KEY)
            .env("NO_COLOR", "1");
        let mut p = Process::spawn(name, cmd).expect("spawn translator");
        p.wait_until(ready, WAIT, |l| l.contains(ready))
            .unwrap_or_else(|e| panic!("{e}"));
        p
    }

    /// The router translator (rtr ns).
    fn router(&self) -> Process {
        let yaml = format!(
            "serval: {{bind: \"{RTR}:{SERVAL_PORT}\"}}\nrouter: {{keys: [{{id: 1, env: SERVAL_TEST_KEY}}]}}\n"
        );
        self.translator(&self.rtr, "router", &yaml, "translator started")
    }

    /// The server translator (srv ns) with `services` (the YAML list under
    /// `server.services`), once registered with the router.
    fn server(&self, services: &str) -> Process {
        let yaml = format!(
            "serval: {{bind: \"{SRV}:{SERVAL_PORT}\", routers: [\"{RTR}:{SERVAL_PORT}\"], key: {{id: 1, env: SERVAL_TEST_KEY}}}}\nserver:\n  services:\n{services}"
        );
        self.translator(&self.srv, "server", &yaml, "registered with router")
    }

    /// The client translator (cli ns): explicit listeners for `web.test` and `pp.test`,
    /// REDIRECT listeners (IPv4 and IPv6) whose rule maps 10.99.0.1 / fd99::1 port 80 to
    /// `web.test`, and `extra` YAML under `client:` (the DNS responder).
    fn client(&self, extra: &str) -> Process {
        let yaml = format!(
            "serval: {{bind: \"{CLI}:{SERVAL_PORT}\", routers: [\"{RTR}:{SERVAL_PORT}\"]}}\n\
             client:\n  connect_timeout: 10s\n  listeners:\n\
             \x20   - {{name: web, listen: \"{EXPLICIT}\", service: \"name:web.test\"}}\n\
             \x20   - {{name: pp, listen: \"{EXPLICIT_PP}\", service: \"name:pp.test\"}}\n\
             \x20   - {{name: nat4, listen: \"0.0.0.0:{REDIRECT_PORT}\", mode: redirect}}\n\
             \x20   - {{name: nat6, listen: \"[::]:{REDIRECT_PORT}\", mode: redirect}}\n\
             \x20 rules:\n\
             \x20   - {{name: web, destination: [10.99.0.1/32, \"fd99::1/128\"], ports: 80, service: \"name:web.test\"}}\n\
             {extra}"
        );
        self.translator(&self.cli, "client", &yaml, "translator started")
    }

    /// A `python3 -m http.server` on `SRV:port` serving `root`, once it says it serves.
    fn http_server(&self, name: &str, root: &Path, port: u16) -> Process {
        let mut cmd = self.srv.command("python3");
        cmd.args(["-u", "-m", "http.server", &port.to_string(), "--bind", SRV])
            .arg("--directory")
            .arg(root);
        let mut p = Process::spawn(name, cmd).expect("spawn http.server");
        p.wait_for("Serving HTTP on", WAIT)
            .unwrap_or_else(|e| panic!("{e}"));
        p
    }

    /// A folder under the test's temporary one, with a file `who` holding `who`.
    fn web_root(&self, name: &str, who: &str) -> PathBuf {
        let root = self.dir.path().join(name);
        fs::create_dir_all(&root).expect("web root");
        fs::write(root.join("who"), format!("{who}\n")).expect("who");
        root
    }

    /// `curl` in the client namespace (`--fail`, bounded by `max_time`); its stdout, or the
    /// error with its stderr.
    fn curl(&self, max_time: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .cli
            .command("curl")
            .args(["-sS", "--fail", "--max-time", max_time])
            .args(args)
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "curl {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The client namespace intercepts TCP port 80 it sends (IPv4 and IPv6) to the REDIRECT
    /// listeners; routes make 10.99.0.0/24, fd99::/64 and the DNS pool 198.18.0.0/15 reachable
    /// (out of the client's link), so the connects are attempted.
    fn intercept(&self) {
        let link = self.cli_link.as_str();
        self.cli
            .exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                "fd50::1/64",
                "dev",
                link,
                "nodad",
            ])
            .expect("v6 address");
        for dest in ["10.99.0.0/24", "198.18.0.0/15", "fd99::/64"] {
            self.cli
                .exec(&["ip", "route", "add", dest, "dev", link])
                .expect("route");
        }
        self.cli
            .nft(&format!(
                "table inet svtr {{\n  chain out {{\n    type nat hook output priority -100; policy accept;\n    tcp dport 80 redirect to :{REDIRECT_PORT}\n  }}\n}}\n"
            ))
            .expect("nft redirect");
    }
}

/// A service of the server translator (one `server.services` entry).
fn service(name: &str, backends: &[String], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{address: \"{b}\"}}"))
        .collect();
    format!(
        "    - name: {name}\n      prefix: \"name:{name}.test\"\n      backends: [{}]\n{extra}",
        list.join(", ")
    )
}

/// The SHA-256 (hex) of a file.
fn file_sha256(path: &Path) -> String {
    let mut f = fs::File::open(path).expect("open");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

/// Writes `len` bytes of [`Pattern`] `seed` to `path`.
fn write_pattern(path: &Path, seed: u64, len: u64) {
    let mut f = io::BufWriter::new(fs::File::create(path).expect("create"));
    let mut p = Pattern::new(seed, len);
    while let Some(piece) = p.next_chunk() {
        f.write_all(piece).expect("write");
    }
    f.flush().expect("flush");
}

/// 1. A 100 MiB file of random bytes through client translator → router → server
///    translator → `python3 -m http.server`, downloaded by `curl`: byte-exact.
#[test]
fn curl_downloads_100_mib_byte_exact_through_three_translators() {
    if !require_root("translator netns: curl download") {
        return;
    }
    let topo = Topology::build("dl");
    let root = topo.web_root("www", "A");
    let len = 100 * MIB;
    write_pattern(&root.join("data.bin"), 1, len);
    let want = pattern_sha256(1, len);
    let _web = topo.http_server("http-a", &root, 8000);
    let _router = topo.router();
    let _server = topo.server(&service("web", &[format!("{SRV}:8000")], ""));
    let _client = topo.client("");

    let got = topo.dir.path().join("got.bin");
    let url = format!("http://{EXPLICIT}/data.bin");
    let got_s = got.to_str().expect("utf-8 path");
    topo.curl(CURL_LARGE, &["-o", got_s, &url])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fs::metadata(&got).expect("downloaded").len(), len);
    assert_eq!(file_sha256(&got), want, "downloaded bytes differ");
}

/// 2. REDIRECT interception, IPv4 and IPv6: curl connects to the original destination
///    (10.99.0.1:80, [fd99::1]:80), nftables redirects it to the listener, the translator
///    maps the original destination to `web.test` by its rule; curl is served, unaware.
#[test]
fn redirect_interception_serves_the_original_destination_v4_and_v6() {
    if !require_root("translator netns: REDIRECT interception") {
        return;
    }
    let topo = Topology::build("redir");
    let root = topo.web_root("www", "A");
    let len = 4 * MIB;
    write_pattern(&root.join("data.bin"), 2, len);
    let want = pattern_sha256(2, len);
    let _web = topo.http_server("http-a", &root, 8000);
    let _router = topo.router();
    let _server = topo.server(&service("web", &[format!("{SRV}:8000")], ""));
    let _client = topo.client("");
    topo.intercept();

    for (i, host) in ["10.99.0.1", "[fd99::1]"].into_iter().enumerate() {
        let body = topo
            .curl(CURL_SMALL, &[&format!("http://{host}/who")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body, "A\n", "{host}");
        let got = topo.dir.path().join(format!("got{i}.bin"));
        topo.curl(
            CURL_SMALL,
            &[
                "-o",
                got.to_str().expect("utf-8 path"),
                &format!("http://{host}/data.bin"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file_sha256(&got), want, "{host}: downloaded bytes differ");
    }
}

/// 3. Two backends share a service: both serve some of several requests; with one killed,
///    every new request is served by the other.
#[test]
fn two_backends_share_load_and_survive_one_dying() {
    if !require_root("translator netns: two backends") {
        return;
    }
    let topo = Topology::build("lb");
    let (root_a, root_b) = (topo.web_root("a", "A"), topo.web_root("b", "B"));
    let _a = topo.http_server("http-a", &root_a, 8001);
    let mut b = topo.http_server("http-b", &root_b, 8002);
    let _router = topo.router();
    let _server = topo.server(&service(
        "web",
        &[format!("{SRV}:8001"), format!("{SRV}:8002")],
        "      balance: round_robin\n      retries: 2\n",
    ));
    let _client = topo.client("");

    let url = format!("http://{EXPLICIT}/who");
    let mut seen = Vec::new();
    for _ in 0..8 {
        seen.push(
            topo.curl(CURL_SMALL, &[&url])
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    assert!(seen.iter().all(|s| s == "A\n" || s == "B\n"), "{seen:?}");
    assert!(seen.iter().any(|s| s == "A\n"), "A served none: {seen:?}");
    assert!(seen.iter().any(|s| s == "B\n"), "B served none: {seen:?}");

    b.kill();
    for i in 0..8 {
        let body = topo
            .curl(CURL_SMALL, &[&url])
            .unwrap_or_else(|e| panic!("request {i} after B died: {e}"));
        assert_eq!(body, "A\n", "request {i} after B died");
    }
}

/// The PROXY v2 backend: reads the header, prints what it carries on one line, answers one
/// HTTP request.
const PROXY_BACKEND: &str = r#"
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(16)
print("READY", flush=True)
def read(c, n):
    b = b""
    while len(b) < n:
        k = c.recv(n - len(b))
        if not k:
            raise EOFError("closed inside the header")
        b += k
    return b
while True:
    c, _ = s.accept()
    try:
        h = read(c, 16)
        sig = h[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
        ver_cmd, fam, n = h[12], h[13], struct.unpack("!H", h[14:16])[0]
        body = read(c, n)
        if fam == 0x11:
            af, alen = socket.AF_INET, 4
        elif fam == 0x21:
            af, alen = socket.AF_INET6, 16
        else:
            raise ValueError("family %#x" % fam)
        src = socket.inet_ntop(af, body[:alen])
        dst = socket.inet_ntop(af, body[alen:2 * alen])
        sp, dp = struct.unpack("!HH", body[2 * alen:2 * alen + 4])
        off, tlvs = 2 * alen + 4, {}
        while off + 3 <= n:
            t, l = body[off], struct.unpack("!H", body[off + 1:off + 3])[0]
            tlvs[t] = body[off + 3:off + 3 + l]
            off += 3 + l
        e0 = tlvs.get(0xE0, b"").hex()
        print("PROXY sig=%s ver_cmd=%#x fam=%#x src=%s:%d dst=%s:%d e0=%s end=%d"
              % (sig, ver_cmd, fam, src, sp, dst, dp, e0, off), flush=True)
        req = b""
        while b"\r\n\r\n" not in req:
            k = c.recv(4096)
            if not k:
                break
            req += k
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\npp\n")
    except Exception as e:
        print("ERROR %r" % (e,), flush=True)
    finally:
        c.close()
"#;

/// 4. PROXY protocol v2: the backend sees a well-formed v2 header before the request,
///    carrying what `server/proxy_header.rs` documents: source = the client translator's
///    Serval UDP address, destination = the backend's address, TLV 0xE0 = the ServiceID.
#[test]
fn proxy_protocol_v2_reaches_the_backend() {
    if !require_root("translator netns: PROXY protocol v2") {
        return;
    }
    let topo = Topology::build("pp");
    let script = topo.dir.path().join("pp.py");
    fs::write(&script, PROXY_BACKEND).expect("script");
    let mut backend = {
        let mut cmd = topo.srv.command("python3");
        cmd.arg("-u").arg(&script).args([SRV, "9000"]);
        Process::spawn("pp-backend", cmd).expect("spawn backend")
    };
    backend
        .wait_for("READY", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let _router = topo.router();
    let _server = topo.server(&service(
        "pp",
        &[format!("{SRV}:9000")],
        "      proxy_protocol: v2\n",
    ));
    let _client = topo.client("");

    let body = topo
        // From the namespace's own address, so the legacy client is not the loopback.
        .curl(
            CURL_SMALL,
            &["--interface", CLI, &format!("http://{EXPLICIT_PP}/")],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body, "pp\n");
    let line = backend
        .wait_until("PROXY or ERROR", WAIT, |l| {
            l.starts_with("PROXY") || l.starts_with("ERROR")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let id = serval_stack::wire::name::service_id_for_name("pp.test").expect("id");
    // The client translator carried curl's address (its preamble), and the original
    // destination; not the client translator's Serval address.
    let head = "PROXY sig=True ver_cmd=0x21 fam=0x11 src=";
    let rest = line
        .strip_prefix(head)
        .unwrap_or_else(|| panic!("got  {line}\nwant {head}..."));
    let (src, rest) = rest.split_once(' ').expect("src");
    let (ip, port) = src.rsplit_once(':').expect("src ip:port");
    let port: u16 = port.parse().expect("src port");
    assert_eq!(ip, CLI, "the legacy client's address: {line}");
    assert_ne!(
        port, SERVAL_PORT,
        "not the translator's Serval port: {line}"
    );
    let want = format!("dst={EXPLICIT_PP} e0={}", hex(id.as_bytes()));
    assert!(
        rest.starts_with(&want),
        "got  {line}\nwant ...{want} end=..."
    );
}

/// 5. DNS mode: the client translator's responder answers a policy name with a pool
///    address (the namespace's resolv.conf points at it); `curl http://www.web.test/`
///    resolves it, is redirected, and reaches the name's service.
#[test]
fn dns_mode_resolves_a_policy_name_and_curl_reaches_its_service() {
    if !require_root("translator netns: DNS mode") {
        return;
    }
    let topo = Topology::build("dns");
    let root = topo.web_root("www", "A");
    let _web = topo.http_server("http-a", &root, 8000);
    let _router = topo.router();
    let _server = topo.server(&service("web", &[format!("{SRV}:8000")], ""));
    let mut client = topo.client(
        "  dns:\n    listen: \"127.0.0.1:53\"\n    names: [{match: \"www.web.test\", service: \"name:web.test\"}]\n",
    );
    topo.intercept();
    let _resolv = NetnsResolvConf::new(&topo.cli, "127.0.0.1");

    // The responder is a task of the running translator: wait for its line.
    wait_logged(&mut client, "dns responder listening");
    let out = topo
        .cli
        .command("getent")
        .args(["ahostsv4", "www.web.test"])
        .output()
        .expect("getent");
    let answer = out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned());
    let answer = answer.unwrap_or_else(|| {
        panic!(
            "no DNS answer for www.web.test: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let addr = answer
        .split_whitespace()
        .next()
        .expect("an address")
        .to_owned();
    let ip: core::net::Ipv4Addr = addr.parse().expect("IPv4 answer");
    assert_eq!(ip.octets()[0], 198, "{answer}");
    assert!(matches!(ip.octets()[1], 18 | 19), "{answer}");

    let body = topo
        .curl(CURL_SMALL, &["-4", "http://www.web.test/who"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body, "A\n");
}

/// Waits (bounded) until a log line of `p` contains `what`, counting lines already read.
fn wait_logged(p: &mut Process, what: &str) {
    if p.lines().iter().any(|l| l.contains(what)) {
        return;
    }
    p.wait_until(what, WAIT, |l| l.contains(what))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// 6. The client translator's host changes address mid-download (its first link goes
///    down; a second link on another subnet stays): with a wildcard `serval.bind` it
///    notices (`serval.follow_address`), moves the flow, and curl's single TCP connection
///    completes byte-exact.
#[test]
fn client_translator_follows_its_host_to_a_new_address_mid_download() {
    if !require_root("translator netns: address following") {
        return;
    }
    const CLI2: &str = "10.51.0.1";
    let topo = Topology::build("follow");
    // A second subnet on the same bridge: the router's and server's side answer on it.
    topo.rtr
        .exec(&["ip", "addr", "add", "10.51.0.2/24", "dev", "br0"])
        .expect("rtr second subnet");
    let srv_link = topo
        .srv
        .exec(&["ip", "-o", "route", "get", RTR])
        .expect("srv route");
    let srv_dev = srv_link
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .expect("srv dev")
        .to_owned();
    topo.srv
        .exec(&["ip", "route", "add", "10.51.0.0/24", "dev", &srv_dev])
        .expect("srv route to the second subnet");
    let second =
        veth_to_bridge(&topo.cli, &format!("{CLI2}/24"), &topo.rtr, "br0", 1500).expect("link 2");

    let root = topo.web_root("www", "A");
    let len = 48 * MIB;
    write_pattern(&root.join("data.bin"), 5, len);
    let want = pattern_sha256(5, len);
    let _web = topo.http_server("http-a", &root, 8000);
    let _router = topo.router();
    let _server = topo.server(&service("web", &[format!("{SRV}:8000")], ""));
    let yaml = format!(
        "serval: {{bind: \"0.0.0.0:{SERVAL_PORT}\", routers: [\"{RTR}:{SERVAL_PORT}\"], address_poll: 100ms}}\n\
         client:\n  connect_timeout: 10s\n  listeners:\n\
         \x20   - {{name: web, listen: \"{EXPLICIT}\", service: \"name:web.test\"}}\n"
    );
    let mut client = topo.translator(&topo.cli, "client", &yaml, "translator started");

    // A download slow enough to be running when the address changes (16 MiB/s: 3 s).
    let got = topo.dir.path().join("got.bin");
    let mut cmd = topo.cli.command("curl");
    cmd.args([
        "-sS",
        "--fail",
        "--max-time",
        CURL_LARGE,
        "--limit-rate",
        "16M",
        "-o",
    ])
    .arg(&got)
    .arg(format!("http://{EXPLICIT}/data.bin"));
    let mut curl = Process::spawn("curl", cmd).expect("spawn curl");
    let started = wait_until_file_grows(&got, 2 * MIB);
    assert!(started, "the download did not start");

    // The first link goes down; the second subnet reaches the others on-link.
    topo.cli
        .exec(&["ip", "link", "del", &topo.cli_link])
        .expect("first link down");
    topo.cli
        .exec(&["ip", "route", "add", "10.50.0.0/24", "dev", &second])
        .expect("route over the second link");
    client
        .wait_until("the move", WAIT, |l| l.contains("host address changed"))
        .unwrap_or_else(|e| panic!("{e}"));

    let status = curl.wait_exit(WAIT).expect("curl ends");
    assert!(status.success(), "curl failed: {}", curl.stderr_text());
    assert_eq!(fs::metadata(&got).expect("downloaded").len(), len);
    assert_eq!(file_sha256(&got), want, "downloaded bytes differ");
}

/// Polls (every 20 ms, at most [`WAIT`]) until `path` holds at least `bytes`.
fn wait_until_file_grows(path: &Path, bytes: u64) -> bool {
    for _ in 0..(WAIT.as_millis() / 20) {
        if fs::metadata(path).is_ok_and(|m| m.len() >= bytes) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
