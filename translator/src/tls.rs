//! Mutual TLS on the Serval leg between translators (the policy's `tls:` section), with
//! `tokio-rustls` on the `ring` provider.
//!
//! Both ends present `tls.cert` (with `tls.key`) and accept only a peer whose certificate
//! chains to `tls.ca`: the client translator wraps the `ServalStream` it opened with
//! [`ClientConnector::connect`], the server translator wraps the one it accepted with
//! [`ServerAcceptor::accept`]. TLS 1.3 only: both ends are this software, so there is no old
//! peer to fall back for.
//!
//! **Names.** With `tls.server_name` the client checks that the server's certificate is
//! valid for that name (and sends it as SNI). Without it any certificate issued under `ca`
//! is accepted: the CA is then the whole trust decision (a private CA issuing only
//! translator certificates), which is what a fleet of translators behind a service router
//! needs, since a client cannot know in advance which instance will answer.
//!
//! **Errors** name the policy field and the file: `tls.cert (/etc/serval/a.pem): no
//! certificate in the file`, `tls.key (...) does not match tls.cert (...)`.

use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::config::model::TlsSettings;

/// Largest PEM file read (a certificate chain or a key is a few KiB).
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// The SNI sent when `tls.server_name` is not set (no real name is known; `.invalid` can
/// never be one).
pub const ANY_NAME: &str = "serval-translator.invalid";

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file cannot be read.
    #[error("tls.{field} ({}): cannot read: {source}", path.display())]
    Read {
        /// `cert`, `key` or `ca`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file does not hold what it should.
    #[error("tls.{field} ({}): {reason}", path.display())]
    Invalid {
        /// `cert`, `key` or `ca`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The private key is not the key of the certificate.
    #[error("tls.key ({}) does not match tls.cert ({})", key.display(), cert.display())]
    KeyMismatch {
        /// `tls.cert`.
        cert: PathBuf,
        /// `tls.key`.
        key: PathBuf,
    },
    /// `tls.server_name` is not a DNS name.
    #[error("tls.server_name {0:?} is not a valid DNS name")]
    ServerName(String),
    /// rustls refused the configuration for another reason.
    #[error("tls: {0}")]
    Config(String),
}

/// Opens TLS on the client side of a stream.
#[derive(Clone)]
pub struct ClientConnector {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl core::fmt::Debug for ClientConnector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientConnector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ClientConnector {
    /// Runs the handshake on `io` (bound it with a timeout: a silent peer waits forever).
    pub async fn connect<IO>(&self, io: IO) -> io::Result<client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.connector.connect(self.name.clone(), io).await
    }
}

/// Accepts TLS on the server side of a stream.
#[derive(Clone)]
pub struct ServerAcceptor {
    acceptor: TlsAcceptor,
}

impl core::fmt::Debug for ServerAcceptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerAcceptor").finish_non_exhaustive()
    }
}

impl ServerAcceptor {
    /// Runs the handshake on `io` (bound it with a timeout).
    pub async fn accept<IO>(&self, io: IO) -> io::Result<server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.acceptor.accept(io).await
    }
}

/// The client side for `settings`, relative paths taken from the working directory.
pub fn client_connector(settings: &TlsSettings) -> Result<ClientConnector, TlsError> {
    client_connector_in(settings, Path::new(""))
}

/// The server side for `settings`, relative paths taken from the working directory.
pub fn server_acceptor(settings: &TlsSettings) -> Result<ServerAcceptor, TlsError> {
    server_acceptor_in(settings, Path::new(""))
}

/// [`client_connector`] with relative paths taken from `base` (the policy file's folder).
pub fn client_connector_in(
    settings: &TlsSettings,
    base: &Path,
) -> Result<ClientConnector, TlsError> {
    let files = Files::load(settings, base)?;
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(files.roots.clone()),
        provider,
    )
    .build()
    .map_err(|e| TlsError::Invalid {
        field: "ca",
        path: files.ca_path.clone(),
        reason: e.to_string(),
    })?;
    let (builder, name) = match &settings.server_name {
        Some(n) => {
            let name =
                ServerName::try_from(n.clone()).map_err(|_| TlsError::ServerName(n.clone()))?;
            (builder.with_webpki_verifier(webpki), name)
        }
        None => {
            let name = ServerName::try_from(ANY_NAME)
                .map_err(|_| TlsError::ServerName(ANY_NAME.to_owned()))?;
            let verifier = Arc::new(AnyNameUnderCa { inner: webpki });
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier),
                name,
            )
        }
    };
    let config = builder
        .with_client_auth_cert(files.chain.clone(), files.key.clone_key())
        .map_err(|e| files.key_error(e))?;
    Ok(ClientConnector {
        connector: TlsConnector::from(Arc::new(config)),
        name,
    })
}

/// [`server_acceptor`] with relative paths taken from `base` (the policy file's folder).
pub fn server_acceptor_in(settings: &TlsSettings, base: &Path) -> Result<ServerAcceptor, TlsError> {
    let files = Files::load(settings, base)?;
    let provider = provider();
    let clients = WebPkiClientVerifier::builder_with_provider(
        Arc::new(files.roots.clone()),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Invalid {
        field: "ca",
        path: files.ca_path.clone(),
        reason: e.to_string(),
    })?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(clients)
        .with_single_cert(files.chain.clone(), files.key.clone_key())
        .map_err(|e| files.key_error(e))?;
    Ok(ServerAcceptor {
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The three files, read and parsed.
struct Files {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
    cert_path: PathBuf,
    key_path: PathBuf,
    ca_path: PathBuf,
}

impl Files {
    fn load(settings: &TlsSettings, base: &Path) -> Result<Self, TlsError> {
        let cert_path = resolve(base, &settings.cert);
        let key_path = resolve(base, &settings.key);
        let ca_path = resolve(base, &settings.ca);
        let chain = certificates("cert", &cert_path)?;
        let key_pem = read("key", &key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Invalid {
            field: "key",
            path: key_path.clone(),
            reason: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        })?;
        let mut roots = RootCertStore::empty();
        for c in certificates("ca", &ca_path)? {
            roots.add(c).map_err(|e| TlsError::Invalid {
                field: "ca",
                path: ca_path.clone(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
        Ok(Self {
            chain,
            key,
            roots,
            cert_path,
            key_path,
            ca_path,
        })
    }

    fn key_error(&self, e: rustls::Error) -> TlsError {
        match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: self.cert_path.clone(),
                key: self.key_path.clone(),
            },
            other => TlsError::Invalid {
                field: "key",
                path: self.key_path.clone(),
                reason: other.to_string(),
            },
        }
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |source| TlsError::Read {
        field,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(TlsError::Invalid {
            field,
            path: path.to_owned(),
            reason: format!(
                "larger than {} KiB; is this a PEM file?",
                MAX_PEM_FILE >> 10
            ),
        });
    }
    Ok(bytes)
}

fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(field, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid {
            field,
            path: path.to_owned(),
            reason: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            field,
            path: path.to_owned(),
            reason: "no certificate in the file (expected -----BEGIN CERTIFICATE-----)".to_owned(),
        });
    }
    Ok(certs)
}

/// Server verification without a name: the chain must be valid under the CA (webpki does
/// that first); only the name check is waived.
#[derive(Debug)]
struct AnyNameUnderCa {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyNameUnderCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use core::sync::atomic::{AtomicU32, Ordering};
    use core::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

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
        TlsSettings {
            cert: c,
            key: k,
            ca: a,
            server_name: server_name.map(str::to_owned),
        }
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
        let relative = TlsSettings {
            cert: PathBuf::from("a.pem"),
            key: PathBuf::from("a.key"),
            ca: PathBuf::from("a-ca.pem"),
            server_name: None,
        };
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
}
