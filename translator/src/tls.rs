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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

use crate::config::load::resolve;
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

impl TlsError {
    /// The policy field the error is about (`tls.cert`, `tls.key`, ...).
    pub fn field(&self) -> String {
        match self {
            Self::Read { field, .. } | Self::Invalid { field, .. } => format!("tls.{field}"),
            Self::KeyMismatch { .. } => "tls.key".to_owned(),
            Self::ServerName(_) => "tls.server_name".to_owned(),
            Self::Config(_) => "tls".to_owned(),
        }
    }
}

/// Both sides of the policy's `tls:`, built once at start (a change needs a restart).
#[derive(Clone, Debug)]
pub struct TlsPair {
    /// For the client role's flows.
    pub client: ClientConnector,
    /// For the server role's flows.
    pub server: ServerAcceptor,
}

impl TlsPair {
    /// Reads the files of `settings` (relative paths from `base`, the policy's folder).
    pub fn load(settings: &TlsSettings, base: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            client: client_connector_in(settings, base)?,
            server: server_acceptor_in(settings, base)?,
        })
    }
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

/// The Serval leg of a relayed connection: the flow itself, or TLS over it.
///
/// It borrows the flow rather than owning it, so the caller keeps the `ServalStream` and
/// can still reset it (`abort`) when the handshake fails or the relay ends uncleanly:
/// dropping a stream would close it with a FIN, which a peer may take for a complete one.
#[derive(Debug)]
pub enum Leg<'a, S> {
    /// No `tls:` in the policy.
    Plain(&'a mut S),
    /// Mutual TLS 1.3 (boxed: the TLS state is a few KiB, the plain case should not pay).
    Tls(Box<tokio_rustls::TlsStream<&'a mut S>>),
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Leg<'a, S> {
    /// The client translator's side: runs the handshake when `connector` is set.
    pub async fn client(connector: Option<&ClientConnector>, io: &'a mut S) -> io::Result<Self> {
        match connector {
            None => Ok(Self::Plain(io)),
            Some(c) => Ok(Self::Tls(Box::new(c.connect(io).await?.into()))),
        }
    }

    /// The stream under the TLS layer (to reset it, read its addresses and statistics).
    pub fn stream(&self) -> &S {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => t.get_ref().0,
        }
    }

    /// The server translator's side: runs the handshake when `acceptor` is set.
    pub async fn server(acceptor: Option<&ServerAcceptor>, io: &'a mut S) -> io::Result<Self> {
        match acceptor {
            None => Ok(Self::Plain(io)),
            Some(a) => Ok(Self::Tls(Box::new(a.accept(io).await?.into()))),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Leg<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Self::Tls(t) => Pin::new(&mut **t).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Leg<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Self::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(&mut **s).poll_flush(cx),
            Self::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
        }
    }

    /// Half-close: with TLS, a `close_notify` first (so the peer can tell the end from a
    /// truncation), then the flow's FIN. Reading continues (TLS 1.3 closes per direction).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Self::Tls(t) => Pin::new(&mut **t).poll_shutdown(cx),
        }
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
    .map_err(|e| files.ca_error(e))?;
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
    .map_err(|e| files.ca_error(e))?;
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

    /// Why the CA cannot verify peers (the same for the client and the server side).
    fn ca_error(&self, e: rustls::server::VerifierBuilderError) -> TlsError {
        TlsError::Invalid {
            field: "ca",
            path: self.ca_path.clone(),
            reason: e.to_string(),
        }
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
