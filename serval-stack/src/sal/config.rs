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
    /// Most half-open (SYN received, conn-ACK not yet) flows; when a new SYN arrives at the
    /// limit, the oldest half-open flow of a client IP holding more than an eighth of the
    /// limit is evicted (a flood from few addresses pays for itself), else the oldest of
    /// all. The original capped at 500. Default 1024.
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

/// Smallest `max_udp_payload` accepted: room for the largest handshake packet (SAL header,
/// SERVICE, KEY_SHARE, MAC and a few SOURCE records) and a useful stream segment. A path
/// that cannot carry this much UDP payload cannot carry Serval.
pub const MIN_UDP_PAYLOAD: usize = 512;
/// Largest `max_udp_payload` accepted: the largest UDP payload over IPv4.
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Outer IPv6 + UDP headers: what the largest UDP payload for a path MTU leaves out.
const OUTER_HEADERS: usize = 40 + 8;

/// A configuration value out of its range, named by its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value} is out of range: {why}")]
pub struct ConfigError {
    /// The field, as spelled in [`EndpointConfig`].
    pub field: &'static str,
    /// The value given.
    pub value: u64,
    /// What the range is and why.
    pub why: &'static str,
}

impl EndpointConfig {
    /// Sets `max_udp_payload` for a path MTU (IP packet size, e.g. 1500 on Ethernet),
    /// assuming the larger IPv6 outer headers (48 bytes with UDP).
    pub fn set_path_mtu(&mut self, mtu: usize) {
        self.max_udp_payload = mtu.saturating_sub(OUTER_HEADERS);
    }

    /// Checks the values whose mistakes would only show later as lost packets: the UDP
    /// payload size against the path ([`MIN_UDP_PAYLOAD`]..=[`MAX_UDP_PAYLOAD`]) and
    /// non-zero flow limits. The driver's `bind` calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, value: usize, why| ConfigError {
            field,
            value: value as u64,
            why,
        };
        if self.max_udp_payload < MIN_UDP_PAYLOAD {
            return Err(bad(
                "max_udp_payload",
                self.max_udp_payload,
                "the path MTU is too small for Serval: at least 512 bytes of UDP payload \
                 (a 560-byte IPv6 path MTU) are needed for the handshake",
            ));
        }
        if self.max_udp_payload > MAX_UDP_PAYLOAD {
            return Err(bad(
                "max_udp_payload",
                self.max_udp_payload,
                "a UDP datagram carries at most 65507 bytes",
            ));
        }
        if self.max_flows == 0 {
            return Err(bad("max_flows", 0, "at least one flow"));
        }
        if self.max_half_open == 0 {
            return Err(bad("max_half_open", 0, "at least one half-open flow"));
        }
        Ok(())
    }

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
    /// Send an authenticated keepalive after this long without sending a control packet
    /// (even while data flows), so NAT mappings along the path stay alive and the peer's
    /// idle timer hears from us in a form nobody can forge. `None` = never. Default 25 s
    /// (WireGuard's persistent-keepalive figure, under common 30 s UDP NAT timeouts).
    pub keepalive: Option<Duration>,
    /// Close the flow after this long without hearing from the peer: an authenticated
    /// control packet or a segment the stream accepts (forged or refused data does not
    /// count). Keep it well above the peer's `keepalive`. `None` = never. Default 5 min.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid_and_fits_a_1500_byte_path() {
        let mut c = EndpointConfig::default();
        assert_eq!(c.validate(), Ok(()));
        let default = c.max_udp_payload;
        c.set_path_mtu(1500);
        assert_eq!(c.max_udp_payload, default);
    }

    #[test]
    fn a_path_too_small_is_refused_naming_the_field() {
        let mut c = EndpointConfig::default();
        c.set_path_mtu(500);
        let e = c.validate().unwrap_err();
        assert_eq!((e.field, e.value), ("max_udp_payload", 452));
        assert!(e.to_string().contains("path MTU is too small"), "{e}");
        c.set_path_mtu(560);
        assert_eq!(c.validate(), Ok(()));
        c.max_udp_payload = 70_000;
        assert_eq!(c.validate().unwrap_err().field, "max_udp_payload");
    }
}
