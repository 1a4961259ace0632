//! Endpoint and flow configuration. Every default is documented with its consequence.

use core::net::SocketAddr;
use core::time::Duration;

use crate::transport::StreamConfig;

/// Configuration of one [`Endpoint`](super::Endpoint).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// Seed of the endpoint's RNG (FlowIDs, nonces, sequence numbers, key shares, path
    /// challenges). The driver seeds it from the OS; tests pass a constant so runs replay.
    pub rng_seed: [u8; 32],
    /// The endpoint's own UDP address as peers reach it; a router writes it into SOURCE and
    /// a client sends SYNs for local DEMUX rules to it. Default `0.0.0.0:54325`.
    pub local_addr: SocketAddr,
    /// Forward SYNs that match a FORWARD rule (service-router role). Default off: a plain
    /// host only terminates flows, as the original with `sal_forward = 0`.
    pub forwarding: bool,
    /// Most flows (established and half-open) at once; new SYNs beyond it are dropped and
    /// counted. Bounds memory against floods. Default 65 536.
    pub max_flows: usize,
    /// Most half-open (SYN received, conn-ACK not yet) flows; the oldest is evicted when a
    /// new SYN arrives at the limit. The original capped at 500. Default 1024.
    pub max_half_open: usize,
    /// How long a half-open flow waits for the conn-ACK while repeating its SYN-ACK (at
    /// 1, 3, 7 s). Default 10 s; the original used 3 s but never repeated the SYN-ACK.
    /// Memory under a SYN flood is bounded by `max_half_open`, not by this.
    pub half_open_timeout: Duration,
    /// Largest UDP payload sent. Default 1452: fits a 1500-byte MTU under IPv6 and IPv4
    /// outer headers without fragmentation.
    pub max_udp_payload: usize,
    /// Key-share epoch: one X25519 key pair is reused for this long and shared secrets are
    /// cached per peer share, trading per-flow forward secrecy for handshake rate
    /// (`docs/SAL.md` §2). Default 60 s.
    pub key_epoch: Duration,
    /// Bound of the shared-secret cache (entries). Default 4096.
    pub secret_cache: usize,
    /// Per-flow settings for flows this endpoint creates.
    pub flow: FlowConfig,
    /// Reliable-stream settings (protocol 6 flows). Its MSS is lowered to what fits
    /// `max_udp_payload` after the SAL and TCP headers.
    pub stream: StreamConfig,
}

impl EndpointConfig {
    /// The stream settings with the MSS fitted to `max_udp_payload`.
    pub(super) fn stream_config(&self) -> StreamConfig {
        let mut s = self.stream.clone();
        // TCP header (20) + options fit inside the MSS budget the stream uses; the SAL
        // base header (12) comes on top.
        let room = self
            .max_udp_payload
            .saturating_sub(crate::wire::sal::HEADER_LEN + 20);
        let mss = u16::try_from(room)
            .unwrap_or(u16::MAX)
            .clamp(crate::transport::MIN_MSS, crate::transport::MAX_MSS);
        if mss < s.mss {
            let _ = s.mss(mss);
        }
        s
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            rng_seed: [0; 32],
            local_addr: SocketAddr::from(([0, 0, 0, 0], crate::wire::sal::DEFAULT_UDP_PORT)),
            forwarding: false,
            max_flows: 65_536,
            max_half_open: 1024,
            half_open_timeout: Duration::from_secs(10),
            max_udp_payload: 1452,
            key_epoch: Duration::from_secs(60),
            secret_cache: 4096,
            flow: FlowConfig::default(),
            stream: StreamConfig::default(),
        }
    }
}

/// Per-flow SAL settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FlowConfig {
    /// First retransmission timeout of a control packet (SYN, FIN, RSYN, path challenge)
    /// before an RTT sample exists. Default 1 s (RFC 6298; the original used 3 s).
    pub initial_rto: Duration,
    /// Lower bound of the control RTO. Default 200 ms (the original's `SAL_RTO_MIN`).
    pub min_rto: Duration,
    /// Upper bound of the control RTO after backoff. Default 60 s.
    pub max_rto: Duration,
    /// Retransmissions of one control packet before the flow fails. Default 6 (about a
    /// minute with backoff from 1 s).
    pub max_retransmits: u32,
    /// Send an authenticated keepalive after this long without sending anything, so NAT
    /// mappings along the path stay alive. `None` = never. Default 25 s (WireGuard's
    /// persistent-keepalive figure, under common 30 s UDP NAT timeouts).
    pub keepalive: Option<Duration>,
    /// Close the flow after this long without receiving anything. `None` = never.
    /// Default 5 min.
    pub idle_timeout: Option<Duration>,
    /// Challenges sent for one path validation before giving up on the new address.
    /// Default 5.
    pub path_challenges: u32,
    /// Received datagrams buffered in datagram mode before new ones are dropped (counted).
    /// Default 256.
    pub datagram_queue: usize,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(60),
            max_retransmits: 6,
            keepalive: Some(Duration::from_secs(25)),
            idle_timeout: Some(Duration::from_secs(300)),
            path_challenges: 5,
            datagram_queue: 256,
        }
    }
}
