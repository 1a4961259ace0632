//! Mutual TLS between translators (the policy's `tls:`): the handshake itself (certificates
//! from files, names, wrong CAs, error messages), TLS over a Serval stream, and the whole
//! path through `run::Translator` with a hashed transfer, where a translator of another CA
//! or one without TLS is refused and counted.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING.md)

mod common;

use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;
use std::io;
use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use translator::config::model::TlsSettings;
use translator::tls::{
    TlsError, client_connector, client_connector_in, server_acceptor, server_acceptor_in,
};

const LIMIT: Duration = Duration::from_secs(30);

/// A folder of PEM files made for one test, removed when dropped.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir() -> Dir {
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "serval-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// Writes `<who>.pem`, `<who>.key` and `ca.pem` under `d` for a leaf of `ca` valid
/// for `name`; returns the settings.
fn leaf(d: &Dir, ca: &Ca, who: &str, name: &str, server_name: Option<&str>) -> TlsSettings {
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (c, k, a) = (
        d.0.join(format!("{who}.pem")),
        d.0.join(format!("{who}.key")),
        d.0.join(format!("{who}-ca.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::write(&a, &ca.pem).unwrap();
    let mut s = TlsSettings::new(c, k, a);
    s.server_name = server_name.map(str::to_owned);
    s
}

/// Handshakes both ends over an in-memory pipe and moves a few bytes each way.
async fn handshake(client: &TlsSettings, server: &TlsSettings) -> io::Result<()> {
    let connector = client_connector(client).unwrap();
    let acceptor = server_acceptor(server).unwrap();
    let (a, b) = tokio::io::duplex(64 << 10);
    let srv = tokio::spawn(async move {
        let mut s = acceptor.accept(b).await?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await?;
        s.write_all(b"pong!").await?;
        s.shutdown().await?;
        io::Result::Ok(buf)
    });
    let cli = async {
        let mut c = connector.connect(a).await?;
        c.write_all(b"ping!").await?;
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await?;
        io::Result::Ok(buf)
    };
    let (got, srv) = tokio::time::timeout(LIMIT, async { (cli.await, srv.await) })
        .await
        .expect("handshake hangs");
    let got = got?;
    let seen = srv.expect("server task")?;
    assert_eq!((&got, &seen), (b"pong!", b"ping!"));
    Ok(())
}

#[tokio::test]
async fn mutual_tls_with_and_without_a_server_name() {
    let d = dir();
    let ca = ca("serval test CA");
    let server = leaf(&d, &ca, "server", "server.translators.test", None);
    let named = leaf(
        &d,
        &ca,
        "client",
        "client.translators.test",
        Some("server.translators.test"),
    );
    handshake(&named, &server).await.unwrap();
    let any = leaf(&d, &ca, "client2", "client2.translators.test", None);
    handshake(&any, &server).await.unwrap();
    let wrong = leaf(
        &d,
        &ca,
        "client3",
        "client3.translators.test",
        Some("other.translators.test"),
    );
    assert!(
        handshake(&wrong, &server).await.is_err(),
        "name mismatch refused"
    );
}

#[tokio::test]
async fn certificates_of_another_ca_are_refused_both_ways() {
    let d = dir();
    let ours = ca("ours");
    let theirs = ca("theirs");
    let server = leaf(&d, &ours, "server", "server.test", None);
    let stranger = leaf(&d, &theirs, "stranger", "stranger.test", None);
    assert!(
        handshake(&stranger, &server).await.is_err(),
        "client of another CA"
    );
    // A client trusting another CA refuses our server.
    let mut distrust = leaf(&d, &ours, "client", "client.test", None);
    distrust.ca = stranger.ca.clone();
    assert!(
        handshake(&distrust, &server).await.is_err(),
        "server of another CA"
    );
}

#[test]
fn errors_name_the_field_and_the_file() {
    let d = dir();
    let ca = ca("ca");
    let good = leaf(&d, &ca, "a", "a.test", None);
    let other = leaf(&d, &ca, "b", "b.test", None);

    let mut missing = good.clone();
    missing.cert = d.0.join("nope.pem");
    let e = server_acceptor(&missing).unwrap_err().to_string();
    assert!(
        e.starts_with("tls.cert (") && e.contains("nope.pem") && e.contains("cannot read"),
        "{e}"
    );

    let mut mismatch = good.clone();
    mismatch.key = other.key.clone();
    let e = client_connector(&mismatch).unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains("b.key") && e.to_string().contains("a.pem"),
        "{e}"
    );

    let mut not_a_cert = good.clone();
    not_a_cert.ca = good.key.clone();
    let e = server_acceptor(&not_a_cert).unwrap_err().to_string();
    assert!(
        e.starts_with("tls.ca (") && e.contains("no certificate"),
        "{e}"
    );

    let mut not_a_key = good.clone();
    not_a_key.key = good.cert.clone();
    let e = server_acceptor(&not_a_key).unwrap_err().to_string();
    assert!(
        e.starts_with("tls.key (") && e.contains("private key"),
        "{e}"
    );

    // Relative paths are taken from the base folder.
    let relative = TlsSettings::new(
        PathBuf::from("a.pem"),
        PathBuf::from("a.key"),
        PathBuf::from("a-ca.pem"),
    );
    server_acceptor_in(&relative, &d.0).unwrap();
    client_connector_in(&relative, &d.0).unwrap();
}

#[tokio::test]
async fn over_a_serval_stream() {
    use serval_stack::driver::Endpoint;
    use serval_stack::sal::EndpointConfig;
    use serval_stack::wire::{ServiceId, ServicePrefix};

    let d = dir();
    let ca = ca("ca");
    let server = leaf(&d, &ca, "s", "s.test", None);
    let client = leaf(&d, &ca, "c", "c.test", Some("s.test"));
    let acceptor = server_acceptor(&server).unwrap();
    let connector = client_connector(&client).unwrap();
    let bind =
        || Endpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::default()).unwrap();
    let (a, b) = (bind(), bind());
    let id = ServiceId::from_u32(0x0700_0001);
    let listener = b.listen(ServicePrefix::exact(id)).unwrap();
    let srv = tokio::spawn(async move {
        let s = listener.accept().await.unwrap();
        let mut t = acceptor.accept(s).await.unwrap();
        let mut all = Vec::new();
        t.read_to_end(&mut all).await.unwrap();
        t.write_all(&all).await.unwrap();
        t.shutdown().await.unwrap();
    });
    tokio::time::timeout(LIMIT, async {
        let s = a.connect_to(id, b.local_addr()).await.unwrap();
        let mut t = connector.connect(s).await.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        t.write_all(&data).await.unwrap();
        t.shutdown().await.unwrap();
        let mut back = Vec::new();
        t.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
        srv.await.unwrap();
    })
    .await
    .expect("tls over serval hangs");
}

/// The policy's `tls:` section for `s`.
fn tls_section(s: &TlsSettings) -> String {
    format!(
        "tls: {{cert: \"{}\", key: \"{}\", ca: \"{}\"}}\n",
        s.cert.display(),
        s.key.display(),
        s.ca.display()
    )
}

/// A client translator of `router` with one listener `web` → `name:svc.test`, and `tls`.
fn client_translator(router: core::net::SocketAddr, tls: &str) -> translator::run::Translator {
    let port = common::reserve();
    common::start(&format!(
        "serval: {{bind: 127.0.0.1:0, routers: [\"{router}\"]}}\nclient:\n  connect_timeout: 5s\n  listeners:\n    - name: web\n      listen: \"{}\"\n      service: \"name:svc.test\"\n{tls}",
        port.addr()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translators_relay_over_mutual_tls_and_refuse_strangers() {
    let d = dir();
    let fleet = ca("fleet");
    let stranger = ca("stranger");
    let router = common::router();
    let r = router.serval_addr();
    let (legacy, _l) = common::legacy_server("legacy").await;
    let server = common::start(&format!(
        "serval:\n  bind: 127.0.0.1:0\n  routers: [\"{r}\"]\n  key: {{id: 1, env: TEST_KEY}}\nserver:\n  services:\n    - name: svc\n      prefix: \"name:svc.test\"\n      backends: [{{address: \"{legacy}\"}}]\n{}",
        tls_section(&leaf(&d, &fleet, "server", "server.fleet.test", None))
    ));
    server.wait_registered(common::WAIT).await.unwrap();

    // A translator of the fleet: both directions byte-exact, half-close carried through TLS.
    let good = client_translator(
        r,
        &tls_section(&leaf(&d, &fleet, "client", "client.fleet.test", None)),
    );
    let web = good.client().unwrap().listener_addr("web").unwrap();
    let (up, down) = ((2 << 20) + 17, (3 << 20) + 5);
    let x = tokio::time::timeout(common::WAIT, common::exchange(web, up, down))
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(down);
    common::until("the good relay finished", || {
        good.client().unwrap().stats().outcomes.finished == 1
    })
    .await;
    assert_eq!(server.server_stats().tls_failures, 0);

    // A translator of another CA: it refuses our server, our server refuses it; nothing
    // reaches the backend, and the legacy client sees a reset, never a complete answer.
    let bad = client_translator(
        r,
        &tls_section(&leaf(&d, &stranger, "stranger", "client.other.test", None)),
    );
    let web = bad.client().unwrap().listener_addr("web").unwrap();
    let got = tokio::time::timeout(common::WAIT, common::exchange(web, 1000, 1000))
        .await
        .unwrap();
    assert!(got.is_err(), "a stranger got an answer: {got:?}");
    common::until("the stranger's handshake failure is counted", || {
        bad.client().unwrap().stats().connect_failed.tls == 1
    })
    .await;

    // A translator without TLS: its preamble is no ClientHello; refused.
    let plain = client_translator(r, "");
    let web = plain.client().unwrap().listener_addr("web").unwrap();
    let got = tokio::time::timeout(common::WAIT, common::exchange(web, 1000, 1000))
        .await
        .unwrap();
    assert!(
        got.is_err(),
        "a translator without TLS got an answer: {got:?}"
    );
    common::until("the server counted both refusals", || {
        server.server_stats().tls_failures == 2
    })
    .await;
    let s = server.server_stats();
    assert_eq!(
        s.relayed, 1,
        "only the fleet's flow reached the backend: {s:?}"
    );
}

#[test]
fn check_config_names_the_tls_field_and_file() {
    let d = dir();
    let fleet = ca("fleet");
    let a = leaf(&d, &fleet, "a", "a.test", None);
    let b = leaf(&d, &fleet, "b", "b.test", None);
    let mut mismatch = a.clone();
    mismatch.key = b.key.clone();
    let yaml = format!(
        "router: {{keys: [{{id: 1, env: TEST_KEY}}]}}\n{}{}",
        tls_section(&mismatch),
        common::COMMON
    );
    let loaded = translator::config::parse(&yaml, "tls.yaml", &common::env()).unwrap();
    let e = translator::config::preflight(&loaded, std::path::Path::new("."), &common::env())
        .unwrap_err();
    let text = e.render();
    assert!(
        text.contains("tls.key") && text.contains("b.key") && text.contains("does not match"),
        "{text}"
    );
}
