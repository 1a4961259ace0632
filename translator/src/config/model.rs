//! The policy file's schema: one struct per section, every field typed, every default
//! written down with the reason for it. `policies/default.yaml` is the same schema as a file.
//!
//! A role runs when its section is present (`client:`, `server:`, `router:`); any mix is
//! allowed in one process. Everything else has a default, so the smallest useful policy is a
//! few lines. Unknown keys are errors (a misspelt `idle_timout:` must not silently keep the
//! default).

use core::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serval_stack::wire::legacy::DEFAULT_LEGACY_TAG;
use serval_stack::wire::sal::DEFAULT_UDP_PORT;

use super::types::{
    ByteSize, HostPort, HumanDuration, IpNet, NamePattern, NetList, PortSet, ServiceMatch,
    ServiceRef,
};

/// The only schema version this build reads.
pub const SCHEMA_VERSION: u32 = 1;

/// A whole policy file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Config {
    /// Schema version; must be 1. Lets a future schema refuse old files loudly instead of
    /// misreading them.
    pub version: u32,
    /// The embedded Serval endpoint (the UDP side).
    pub serval: ServalSettings,
    /// Limits and timeouts of every relayed connection.
    pub relay: RelaySettings,
    /// Client-side translator role: legacy TCP in, Serval out.
    pub client: Option<ClientRole>,
    /// Server-side translator role: Serval in, legacy TCP out.
    pub server: Option<ServerRole>,
    /// Service-router role: registrations in, FORWARD rules out.
    pub router: Option<RouterRole>,
    /// Optional mutual TLS on the Serval leg between translators.
    pub tls: Option<TlsSettings>,
    /// Admin HTTP endpoint (metrics, health, drain).
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
    /// Graceful shutdown.
    pub drain: DrainSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            version: SCHEMA_VERSION,
            serval: ServalSettings::default(),
            relay: RelaySettings::default(),
            client: None,
            server: None,
            router: None,
            tls: None,
            admin: AdminSettings::default(),
            log: LogSettings::default(),
            drain: DrainSettings::default(),
        }
    }
}

impl Config {
    /// The roles this policy turns on, in start order (router first: the others may resolve
    /// through it when they share the process).
    pub fn roles(&self) -> Vec<Role> {
        let mut roles = Vec::new();
        if self.router.is_some() {
            roles.push(Role::Router);
        }
        if self.server.is_some() {
            roles.push(Role::Server);
        }
        if self.client.is_some() {
            roles.push(Role::Client);
        }
        roles
    }
}

/// A role of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Legacy TCP in, Serval out.
    Client,
    /// Serval in, legacy TCP out.
    Server,
    /// Service router.
    Router,
}

impl core::fmt::Display for Role {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Router => "router",
        })
    }
}

// ------------------------------------------------------------------------------------------
// serval

/// The embedded Serval endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ServalSettings {
    /// UDP address the endpoint binds. Default `0.0.0.0:54325` (the project's Serval port).
    pub bind: SocketAddr,
    /// The address peers and routers reach this endpoint at, when it differs from `bind`
    /// (a wildcard bind, a NAT, a Kubernetes pod IP). Default: the bound address.
    pub advertise: Option<SocketAddr>,
    /// Service routers: the client role resolves new flows through them, the server role
    /// registers its services with them. Default none.
    pub routers: Vec<SocketAddr>,
    /// Shared key that authenticates registrations with the routers. Needed when the
    /// server role registers (server role and `routers` non-empty).
    pub key: Option<KeySource>,
    /// Send an authenticated keepalive on a flow after this long without sending a control
    /// packet (even while data flows), so NAT mappings stay up and the peer's
    /// `peer_timeout` hears from us in a form nobody can forge. Default 25 s (under the
    /// common 30 s UDP NAT timeout); 0 = off.
    pub keepalive: HumanDuration,
    /// Close a flow whose peer has sent nothing trustworthy (an authenticated packet such
    /// as a keepalive, or a segment the stream accepts; forged data does not count) for
    /// this long: the peer is gone. Default 5 min; 0 = off. Not the relay's idle timeout,
    /// which counts application bytes.
    pub peer_timeout: HumanDuration,
    /// Largest UDP payload sent. Default 1452 (a 1500-byte path under IPv6); lower it for
    /// tunnels and PPPoE (1500-byte MTU minus their overhead minus 48). 1200 to 65507.
    pub max_udp_payload: u32,
    /// Most flows at once (established and half-open); further SYNs are dropped and
    /// counted. Default 65 536.
    pub max_flows: u32,
    /// Follow the host's address: with a wildcard `bind` and no `advertise`, check every
    /// `address_poll` which source address the host uses towards the routers, and when it
    /// changes (an interface went down, DHCP renumbered, the VM moved) move every flow and
    /// registration to it at once (RSYN), instead of waiting for peers to notice. Default
    /// true.
    pub follow_address: bool,
    /// How often `follow_address` checks (a route lookup, no packet is sent). Default 1 s;
    /// 100 ms to 1 h.
    pub address_poll: HumanDuration,
}

impl Default for ServalSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_UDP_PORT)),
            advertise: None,
            routers: Vec::new(),
            key: None,
            keepalive: HumanDuration::secs(25),
            peer_timeout: HumanDuration::secs(300),
            max_udp_payload: 1452,
            max_flows: 65_536,
            follow_address: true,
            address_poll: HumanDuration::secs(1),
        }
    }
}

/// Where a shared key comes from: a file (a mounted secret) or an environment variable,
/// holding 32 to 128 hex digits (16 to 64 bytes; `openssl rand -hex 32`). Never the key
/// itself: a policy file is not a secret store, and `check-config` prints the policy.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KeySource {
    /// Key id sent with each registration, so routers can hold two keys during a rotation.
    /// Default 1.
    #[serde(default = "default_key_id")]
    pub id: u32,
    /// File holding the hex key. Relative paths are taken from the policy file's folder.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Environment variable holding the hex key.
    #[serde(default)]
    pub env: Option<String>,
}

fn default_key_id() -> u32 {
    1
}

// ------------------------------------------------------------------------------------------
// relay

/// Limits and timeouts of relayed connections (both translator roles).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RelaySettings {
    /// Close a connection when no byte has moved in either direction for this long.
    /// Default 1 h (Envoy's tcp_proxy default; nginx's 10 min kills long database queries);
    /// 0 = off, which lets dead connections pile up until `max_connections` refuses new ones.
    pub idle_timeout: HumanDuration,
    /// Once one side has finished sending (half-close), close the connection when nothing
    /// has moved for this long. Default 0 = only `idle_timeout` applies: request/response
    /// protocols that half-close after the request may wait long for the answer.
    pub half_close_timeout: HumanDuration,
    /// Buffer per direction per connection; the relay reads no more until it is written out
    /// (backpressure), so memory is at most 2 x this x `max_connections`. Default 32 KiB
    /// (Envoy's recommendation for TCP proxies). 4 KiB to 16 MiB. A direction holds its
    /// buffer only while bytes are passing: idle connections hold none.
    pub buffer_size: ByteSize,
    /// Most relayed connections in the process; more are refused and counted. Default
    /// 16 384. Each costs a TCP socket (a file descriptor) and two buffers.
    pub max_connections: u32,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            idle_timeout: HumanDuration::secs(3600),
            half_close_timeout: HumanDuration::default(),
            buffer_size: ByteSize(32 << 10),
            max_connections: 16_384,
        }
    }
}

// ------------------------------------------------------------------------------------------
// client

/// Client-side translator: accepts legacy TCP and opens Serval flows.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientRole {
    /// TCP listeners.
    pub listeners: Vec<Listener>,
    /// How intercepted connections (REDIRECT, TPROXY) map to services: the first rule that
    /// matches the listener, destination address and port decides. Destinations inside the
    /// DNS responder's synthetic pool are mapped by name first.
    #[serde(default)]
    pub rules: Vec<MapRule>,
    /// Built-in DNS responder handing out synthetic addresses for names.
    #[serde(default)]
    pub dns: Option<DnsResponder>,
    /// How long opening the Serval flow may take before the legacy connection is closed.
    /// Default 10 s (the SYN is repeated at 1, 3 and 7 s).
    #[serde(default = "default_client_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Most connections at once from one client address, across every listener of the
    /// role (an IPv6 client counts per /64, the block one host usually holds); more are
    /// reset at once and counted (`serval_connections_refused_total{reason="source_full"}`).
    /// HAProxy's `src_conn_cur` limit: one client (a slowloris, a runaway connection pool)
    /// cannot take all of `relay.max_connections`. Default: no limit, because clients
    /// behind a NAT or a load balancer share one address; size it for them.
    #[serde(default)]
    pub max_connections_per_source: Option<u32>,
}

fn default_client_connect_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}

/// How a listener learns where a connection was going.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ListenMode {
    /// Clients connect to the listener itself; it maps to one fixed service.
    #[default]
    Explicit,
    /// iptables/nftables REDIRECT sent the connection here; the original destination comes
    /// from `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`.
    Redirect,
    /// TPROXY delivered the connection with its original destination as the local address
    /// (needs `IP_TRANSPARENT`, i.e. CAP_NET_ADMIN).
    Tproxy,
}

/// One TCP listener of the client role.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Listener {
    /// Name used in rules, logs and metrics: letters, digits, `-`, `_`.
    pub name: String,
    /// TCP address to listen on. IPv6 addresses must be quoted (`"[::]:8080"`).
    pub listen: SocketAddr,
    /// Explicit (default), redirect or tproxy.
    #[serde(default)]
    pub mode: ListenMode,
    /// The service every connection goes to (explicit listeners only; interception
    /// listeners use `rules`).
    #[serde(default)]
    pub service: Option<ServiceRef>,
    /// Most connections through this listener at once (the global `relay.max_connections`
    /// applies too). Default: only the global limit.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// This listener's idle timeout, overriding `relay.idle_timeout` (0 = off).
    #[serde(default)]
    pub idle_timeout: Option<HumanDuration>,
    /// Reset a connection whose client sent nothing for this long after connecting
    /// (counted as `first_byte_timeout`). With it set, the Serval flow is opened only once
    /// the first byte arrived, so a client that connects and stays silent (slowloris) costs
    /// a socket for this long and no flow. Only for protocols where the client speaks
    /// first (HTTP, TLS, most RPC): server-first protocols (SMTP, MySQL, SSH) would never
    /// start. Default 0 = off.
    #[serde(default)]
    pub first_byte_timeout: HumanDuration,
}

/// A mapping rule for intercepted connections: match, then one action.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MapRule {
    /// Optional name for logs and errors.
    #[serde(default)]
    pub name: Option<String>,
    /// Listeners the rule applies to; default every redirect/tproxy listener.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Original destination addresses (CIDR, one or a list); default any.
    #[serde(default)]
    pub destination: NetList,
    /// Original destination ports; default any.
    #[serde(default)]
    pub ports: PortSet,
    /// Action: connect to this fixed service.
    #[serde(default)]
    pub service: Option<ServiceRef>,
    /// Action: connect to the legacy-address ServiceID of the original destination under
    /// this tag (the original's cross-translation; the far translator needs
    /// `server.cross_translate` with the same tag). 8080 is the original's tag.
    #[serde(default)]
    pub legacy_tag: Option<u32>,
    /// Action: refuse the connection, logging this reason.
    #[serde(default)]
    pub refuse: Option<String>,
}

/// The client role's DNS responder: answers A/AAAA queries for names the policy maps with
/// addresses from a synthetic pool, and maps connections to those addresses back to the
/// name's service.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DnsResponder {
    /// UDP (and TCP) address to answer on.
    pub listen: SocketAddr,
    /// Names answered with synthetic addresses, first match wins.
    pub names: Vec<NameRule>,
    /// IPv4 pool for synthetic addresses. Default `198.18.0.0/15` (reserved for
    /// benchmarking, RFC 2544: never a real destination). Redirect this range to a
    /// redirect/tproxy listener.
    #[serde(default = "default_pool_v4")]
    pub pool_v4: Option<IpNet>,
    /// IPv6 pool; default none (AAAA queries for mapped names get an empty answer).
    #[serde(default)]
    pub pool_v6: Option<IpNet>,
    /// TTL of answers, and how long an address stays bound to its name after the last
    /// answer or connection. Default 30 s: short, so a pool address is reused soon.
    #[serde(default = "default_dns_ttl")]
    pub ttl: HumanDuration,
    /// Resolvers for every other name; default none (other names are refused, REFUSED).
    #[serde(default)]
    pub upstream: Vec<SocketAddr>,
}

fn default_pool_v4() -> Option<IpNet> {
    IpNet::new(Ipv4Addr::new(198, 18, 0, 0).into(), 15)
}

fn default_dns_ttl() -> HumanDuration {
    HumanDuration::secs(30)
}

/// Names the DNS responder answers.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NameRule {
    /// `www.example.com` or `*.example.com`.
    #[serde(rename = "match")]
    pub pattern: NamePattern,
    /// The service connections to the name go to. Default: the name's own ServiceID
    /// (`name:<queried name>`), so each name is its own service.
    #[serde(default)]
    pub service: Option<ServiceRef>,
}

// ------------------------------------------------------------------------------------------
// server

/// Server-side translator: accepts Serval flows and opens legacy TCP connections.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerRole {
    /// Services fronted, matched by longest prefix of the flow's ServiceID.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Accept legacy-address ServiceIDs and connect to the address inside them.
    #[serde(default)]
    pub cross_translate: Option<CrossTranslate>,
    /// Use the legacy client's address a client translator carries in its PROXY v2
    /// preamble (for the PROXY header to backends and the access log). Default true: the
    /// preamble is what lets backends see the real client, and only translators send it.
    /// Set false when untrusted Serval clients can reach the role and backends act on the
    /// address (allow-lists, rate limits): the preamble is then still stripped, and the
    /// Serval peer's address is used, as for native clients.
    #[serde(default = "default_true")]
    pub trust_client_address: bool,
}

fn default_true() -> bool {
    true
}

/// How a backend is chosen.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each backend in turn; weights must be 1.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin.
    Weighted,
    /// The backend with the fewest active connections per unit of weight (long-lived
    /// connections; HAProxy's advice).
    LeastConnections,
    /// Weighted rendezvous hash of the peer's Serval address: the same client translator
    /// keeps landing on the same backend while it is healthy.
    ConsistentHash,
}

/// PROXY protocol header sent to backends, so they see the original client.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    /// None (default).
    #[default]
    Off,
    /// Text header (HAProxy PROXY v1).
    V1,
    /// Binary header (PROXY v2).
    V2,
}

/// One service of the server role.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Service {
    /// Name used in logs and metrics.
    pub name: String,
    /// ServiceIDs this service answers (a prefix; also what is registered with routers).
    pub prefix: ServiceMatch,
    /// Where connections go.
    pub backends: Vec<Backend>,
    /// Backend choice; default round robin.
    #[serde(default)]
    pub balance: Balance,
    /// Bounds on the TTL of DNS backends' answers: re-resolve at least every `max` (a name
    /// resolved once at start is a classic outage), and at most every `min`.
    #[serde(default)]
    pub dns_ttl: TtlBounds,
    /// Active health checks; default off (passive ejection still applies).
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Passive ejection of backends that fail connections.
    #[serde(default)]
    pub outlier: Outlier,
    /// TCP connect timeout per attempt. Default 3 s.
    #[serde(default = "default_backend_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Further attempts on other backends after a failed connect. Default 2.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// PROXY protocol towards the backends; default off.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Most connections to this service at once; default only the global limit.
    #[serde(default)]
    pub max_connections: Option<u32>,
}

fn default_backend_connect_timeout() -> HumanDuration {
    HumanDuration::secs(3)
}

fn default_retries() -> u32 {
    2
}

/// A backend: a fixed address or a DNS name.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Backend {
    /// A fixed address (`10.0.0.5:80`).
    #[serde(default)]
    pub address: Option<SocketAddr>,
    /// A DNS name and port, every A/AAAA answer a backend (`web.internal:80`).
    #[serde(default)]
    pub dns: Option<HostPort>,
    /// Relative weight (weighted, least_connections, consistent_hash). Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// TTL floor and ceiling for DNS-discovered backends.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct TtlBounds {
    /// Default 5 s: a TTL of 0 must not become a resolve per connection.
    pub min: HumanDuration,
    /// Default 5 min.
    pub max: HumanDuration,
}

impl Default for TtlBounds {
    fn default() -> Self {
        Self {
            min: HumanDuration::secs(5),
            max: HumanDuration::secs(300),
        }
    }
}

/// Active health checks: a TCP connect to each backend.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct HealthCheck {
    /// Time between checks of one backend. Default 5 s.
    pub interval: HumanDuration,
    /// A check slower than this failed. Default 2 s; less than `interval`.
    pub timeout: HumanDuration,
    /// Consecutive successes that bring a backend back. Default 2.
    pub healthy_threshold: u32,
    /// Consecutive failures that take it out. Default 3.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval: HumanDuration::secs(5),
            timeout: HumanDuration::secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// Passive ejection: backends whose connects fail are taken out for a while.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Outlier {
    /// Consecutive connect failures that eject a backend. Default 5; 0 = off.
    pub consecutive_failures: u32,
    /// How long an ejected backend stays out. Default 30 s.
    pub ejection_time: HumanDuration,
    /// Never eject more than this share of a service's backends (percent), so a network
    /// blip cannot empty the pool. Default 50.
    pub max_ejected_percent: u8,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection_time: HumanDuration::secs(30),
            max_ejected_percent: 50,
        }
    }
}

/// Cross-translation: a ServiceID of the legacy-address profile names its own destination.
/// Without an allow-list this would be an open proxy into the server's network, so `allow`
/// is required.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CrossTranslate {
    /// Legacy-address tag accepted (bytes 0-3 of the id). Default 8080, the original's.
    #[serde(default = "default_legacy_tag")]
    pub tag: u32,
    /// Destinations that may be reached; anything else is refused.
    pub allow: Vec<AllowRule>,
    /// TCP connect timeout. Default 3 s.
    #[serde(default = "default_backend_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// PROXY protocol towards the destinations; default off.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
}

fn default_legacy_tag() -> u32 {
    DEFAULT_LEGACY_TAG
}

/// Destinations cross-translation may reach.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AllowRule {
    /// Addresses (CIDR, one or a list).
    pub destination: NetList,
    /// Ports; default any.
    #[serde(default)]
    pub ports: PortSet,
}

// ------------------------------------------------------------------------------------------
// router

/// Service router: turns authenticated registrations into FORWARD rules, holds static
/// routes and DELAY rules.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouterRole {
    /// Keys registrations may be signed with (two during a rotation; at most 16).
    #[serde(default)]
    pub keys: Vec<KeySource>,
    /// Bounds on registration leases.
    #[serde(default)]
    pub lease: LeaseBounds,
    /// Most leases in total. Default 4096.
    #[serde(default = "default_max_leases")]
    pub max_leases: u32,
    /// Most leases from one source address. Default 256: one host (or a leaked key) cannot
    /// fill the table.
    #[serde(default = "default_max_leases_per_source")]
    pub max_leases_per_source: u32,
    /// Static FORWARD rules, beside the registered ones.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Prefixes whose new flows wait for a controller's verdict (scale from zero).
    #[serde(default)]
    pub delay: Vec<DelayRule>,
    /// Bounds of the queue of waiting SYNs.
    #[serde(default)]
    pub delay_queue: DelayQueue,
    /// Where the router keeps its registrations across restarts (JSON, rewritten
    /// atomically about once a second while they change, and at exit). Without it a
    /// restarted router knows no instance until each registrant's next refresh (up to
    /// 20 s), and new flows are refused meanwhile. Relative paths are taken from the
    /// policy's folder; the folder must exist. Default: none.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
}

fn default_max_leases() -> u32 {
    4096
}

fn default_max_leases_per_source() -> u32 {
    256
}

/// Lease bounds.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LeaseBounds {
    /// Shortest lease granted. Default 100 ms.
    pub min: HumanDuration,
    /// Longest lease granted; a dead instance stays routable at most this long. Default 5 min.
    pub max: HumanDuration,
    /// Lease when a registration asks for none. Default 50 s.
    pub default: HumanDuration,
}

impl Default for LeaseBounds {
    fn default() -> Self {
        Self {
            min: HumanDuration::millis(100),
            max: HumanDuration::secs(300),
            default: HumanDuration::secs(50),
        }
    }
}

/// A static FORWARD rule.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Route {
    /// ServiceIDs routed.
    pub prefix: ServiceMatch,
    /// Next hop (a Serval endpoint's UDP address).
    pub forward: SocketAddr,
    /// Priority set (higher wins while any of its targets exists). Default 1, the same as
    /// registered instances.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Weight within the priority set. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_priority() -> u32 {
    1
}

/// A DELAY rule.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DelayRule {
    /// ServiceIDs whose SYNs wait. The rule sits at priority 0, below registered instances,
    /// so it only holds SYNs while no instance is registered.
    pub prefix: ServiceMatch,
}

/// Bounds of the DELAY queue.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct DelayQueue {
    /// Most SYNs held. Default 1024.
    pub max_packets: u32,
    /// Most SYNs held for one ServiceID. Default 256.
    pub max_per_service: u32,
    /// A SYN held longer is dropped (the client retries). Default 5 s.
    pub max_age: HumanDuration,
}

impl Default for DelayQueue {
    fn default() -> Self {
        Self {
            max_packets: 1024,
            max_per_service: 256,
            max_age: HumanDuration::secs(5),
        }
    }
}

// ------------------------------------------------------------------------------------------
// tls, admin, log, drain

/// Mutual TLS on the Serval leg between translators: each side presents `cert` and
/// accepts only peers whose certificate chains to `ca`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsSettings {
    /// PEM certificate chain of this translator.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle peers must chain to.
    pub ca: PathBuf,
    /// Name expected in the peer's certificate (SAN); default: any name under `ca`.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl TlsSettings {
    /// `cert` and `key` of this translator, peers under `ca`, any name.
    pub fn new(cert: PathBuf, key: PathBuf, ca: PathBuf) -> Self {
        Self {
            cert,
            key,
            ca,
            server_name: None,
        }
    }
}

/// Admin HTTP endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct AdminSettings {
    /// Address of /metrics, /healthz, /readyz and the drain endpoint. Default
    /// `127.0.0.1:9901` (loopback: it can drain the process); `~` turns it off.
    pub listen: Option<SocketAddr>,
    /// Bearer token that authorizes POSTs (reload, drain, DELAY verdicts, flow moves) from
    /// peers other than loopback: `{env: VAR}` or `{file: path}`, never the token itself.
    /// Without it (and without `SERVAL_ADMIN_TOKEN` in the environment) only loopback
    /// peers may POST. At least 16 characters.
    pub token: Option<TokenSource>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9901))),
            token: None,
        }
    }
}

/// Where the admin token comes from: a file (a mounted secret) or an environment variable.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TokenSource {
    /// File holding the token (surrounding whitespace ignored). Relative paths are taken
    /// from the policy file's folder.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Environment variable holding the token.
    #[serde(default)]
    pub env: Option<String>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LogSettings {
    /// Filter in `tracing` syntax: `info`, `debug`, `info,translator::relay=debug`.
    /// Default `info`.
    pub level: String,
    /// `text` or `json`. Default text.
    pub format: LogFormat,
    /// One line per closed connection (target `access`). Default on.
    pub access_log: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
            access_log: true,
        }
    }
}

/// Graceful shutdown.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct DrainSettings {
    /// On SIGTERM or an admin drain: stop accepting, report not-ready, let connections
    /// finish for this long, then close the rest. Default 30 s; keep it below Kubernetes'
    /// `terminationGracePeriodSeconds`.
    pub grace_period: HumanDuration,
}

impl Default for DrainSettings {
    fn default() -> Self {
        Self {
            grace_period: HumanDuration::secs(30),
        }
    }
}
