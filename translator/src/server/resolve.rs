//! Resolving backend names: the [`Resolve`] trait (so tests and embedders can inject their
//! own) and [`DnsResolver`], its `hickory-resolver` implementation.
//!
//! The pool calls [`Resolve::resolve`] once per name at start and again when the answer's
//! TTL runs out, clamped to the service's `dns_ttl` bounds; a failed or empty answer keeps
//! the last good set (see `pool.rs`).

use core::future::Future;
use core::net::{IpAddr, SocketAddr};
use core::pin::Pin;
use core::time::Duration;
use std::io;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

/// Most addresses taken from one answer: each becomes a backend with its own health checks.
pub const MAX_ADDRESSES_PER_NAME: usize = 64;

/// A name's addresses and how long they may be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The addresses (IPv4 and IPv6), at most [`MAX_ADDRESSES_PER_NAME`].
    pub addrs: Vec<IpAddr>,
    /// The answer's TTL (the smallest of its address records); `None` when the source has
    /// none (a hosts file), in which case the service's `dns_ttl.max` applies.
    pub ttl: Option<Duration>,
}

/// Why a resolution failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot resolve {name}: {reason}")]
pub struct ResolveError {
    /// The name.
    pub name: String,
    /// What went wrong.
    pub reason: String,
}

/// The future a [`Resolve`] returns.
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Resolved, ResolveError>> + Send + 'a>>;

/// Resolves backend host names to addresses.
pub trait Resolve: Send + Sync + core::fmt::Debug + 'static {
    /// The addresses of `host` (a normalised DNS name, no trailing dot).
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a>;
}

/// [`Resolve`] with `hickory-resolver`: the system's configuration (`/etc/resolv.conf`,
/// search domains, `ndots`, `/etc/hosts`), or explicit name servers.
///
/// Both A and AAAA are asked for and every address is a backend. Names are resolved as the
/// system resolver would (`ndots` and search domains apply), so Kubernetes short names work;
/// there, `ndots: 5` makes a name with fewer dots try every search domain first.
#[derive(Clone)]
pub struct DnsResolver {
    inner: TokioResolver,
}

impl core::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DnsResolver").finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// A resolver configured like the system's (`/etc/resolv.conf`).
    pub fn from_system() -> io::Result<Self> {
        let mut builder = TokioResolver::builder_tokio().map_err(|e| {
            io::Error::other(format!(
                "cannot read the system resolver configuration: {e}"
            ))
        })?;
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let inner = builder
            .build()
            .map_err(|e| io::Error::other(format!("cannot build the DNS resolver: {e}")))?;
        Ok(Self { inner })
    }

    /// A resolver asking `servers` (UDP, then TCP for truncated answers), nothing else: no
    /// search domains, no hosts file. For tests and explicit setups.
    pub fn with_servers(servers: &[SocketAddr]) -> io::Result<Self> {
        let mut builder = stub_builder(servers);
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let inner = builder
            .build()
            .map_err(|e| io::Error::other(format!("cannot build the DNS resolver: {e}")))?;
        Ok(Self { inner })
    }
}

/// A stub resolver builder asking exactly `servers` (UDP, then TCP for truncated answers):
/// no search domains, no hosts file, 2 s timeout, 2 attempts. The server role's backend
/// resolver and the DNS responder's forwarder both start here.
pub(crate) fn stub_builder(
    servers: &[SocketAddr],
) -> hickory_resolver::ResolverBuilder<TokioRuntimeProvider> {
    let name_servers = servers
        .iter()
        .map(|s| {
            let mut udp = ConnectionConfig::udp();
            udp.port = s.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = s.port();
            NameServerConfig::new(s.ip(), true, vec![udp, tcp])
        })
        .collect();
    let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts = builder.options_mut();
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    builder
}

impl Resolve for DnsResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            let err = |reason: String| ResolveError {
                name: host.to_owned(),
                reason,
            };
            let lookup = self
                .inner
                .lookup_ip(host)
                .await
                .map_err(|e| err(e.to_string()))?;
            let mut addrs = Vec::new();
            let mut ttl: Option<u32> = None;
            for r in lookup.as_lookup().answers() {
                let ip = match &r.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                if !addrs.contains(&ip) && addrs.len() < MAX_ADDRESSES_PER_NAME {
                    addrs.push(ip);
                }
            }
            if addrs.is_empty() {
                return Err(err("no A or AAAA records".to_owned()));
            }
            Ok(Resolved {
                addrs,
                ttl: ttl.map(|t| Duration::from_secs(u64::from(t))),
            })
        })
    }
}
