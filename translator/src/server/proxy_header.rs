//! PROXY protocol headers (HAProxy's v1 text and v2 binary) sent to a backend before the
//! first byte of the flow, built with the `ppp` crate.
//!
//! **What the header says.** When the flow began with a client translator's preamble
//! ([`crate::client_address`]) and `server.trust_client_address` is on, the source is the
//! **legacy client's address** and the destination the **original destination** it
//! connected to. Otherwise (a native Serval client, or trust off) the source is the
//! **Serval peer's UDP address** and the destination the **backend's address**.
//!
//! v2 also carries the flow's 256-bit ServiceID in a custom TLV,
//! [`PP2_TYPE_SERVAL_SERVICE_ID`] (`0xE0`, the first of the range the specification leaves
//! to applications; receivers must skip TLVs they do not know), so a backend serving
//! several services, or cross-translated destinations, can tell which one was asked for.
//!
//! Mixed families (an IPv4 peer, an IPv6 backend) are sent as IPv6, the IPv4 side as its
//! IPv4-mapped address: both versions need one family for both addresses.

use core::net::{IpAddr, SocketAddr};
use std::io;

use ppp::v2::{Builder, Command, Protocol, Version};
use serval_stack::wire::ServiceId;

use crate::config::model::ProxyProtocol;

/// The v2 TLV type carrying the flow's ServiceID (32 bytes).
pub const PP2_TYPE_SERVAL_SERVICE_ID: u8 = 0xE0;

/// The header to send for `version`, or `None` when off.
pub(crate) fn header(
    version: ProxyProtocol,
    source: SocketAddr,
    destination: SocketAddr,
    service: &ServiceId,
) -> io::Result<Option<Vec<u8>>> {
    let (source, destination) = same_family(source, destination);
    match version {
        ProxyProtocol::Off => Ok(None),
        ProxyProtocol::V1 => {
            let addresses = ppp::v1::Addresses::from((source, destination));
            Ok(Some(addresses.to_string().into_bytes()))
        }
        ProxyProtocol::V2 => {
            let header = Builder::with_addresses(
                Version::Two | Command::Proxy,
                Protocol::Stream,
                (source, destination),
            )
            .write_tlv(PP2_TYPE_SERVAL_SERVICE_ID, service.as_bytes())?
            .build()?;
            Ok(Some(header))
        }
    }
}

/// Both addresses in one family: IPv4-mapped addresses (a dual-stack socket's view of an
/// IPv4 peer) become plain IPv4 first; then, when the families still differ, the IPv4 one
/// becomes IPv4-mapped IPv6. PROXY v2 headers need one family; the client translator's
/// preamble (`client_address`) uses this too.
pub(crate) fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canonical(a), canonical(b));
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

#[cfg(test)]
mod tests {
    use ppp::HeaderResult;

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_text() {
        let h = header(
            ProxyProtocol::V1,
            sa("192.0.2.1:54325"),
            sa("10.0.0.5:80"),
            &ServiceId::from_u32(7),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 10.0.0.5 54325 80\r\n");
        let mixed = header(
            ProxyProtocol::V1,
            sa("192.0.2.1:54325"),
            sa("[2001:db8::5]:80"),
            &ServiceId::from_u32(7),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            String::from_utf8(mixed).unwrap(),
            "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::5 54325 80\r\n"
        );
        let mapped = header(
            ProxyProtocol::V1,
            sa("[::ffff:192.0.2.1]:54325"),
            sa("10.0.0.5:80"),
            &ServiceId::from_u32(7),
        )
        .unwrap()
        .unwrap();
        assert_eq!(mapped, b"PROXY TCP4 192.0.2.1 10.0.0.5 54325 80\r\n");
    }

    #[test]
    fn v2_parses_back_with_the_service_tlv() {
        let id = ServiceId::from_u32(0xdead_beef);
        let h = header(
            ProxyProtocol::V2,
            sa("[2001:db8::1]:54325"),
            sa("[2001:db8::5]:80"),
            &id,
        )
        .unwrap()
        .unwrap();
        let HeaderResult::V2(Ok(parsed)) = HeaderResult::parse(&h) else {
            panic!("not a v2 header");
        };
        assert_eq!(parsed.len(), h.len());
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((sa("[2001:db8::1]:54325"), sa("[2001:db8::5]:80")))
        );
        let tlv = parsed.tlvs().next().unwrap().unwrap();
        assert_eq!(tlv.kind, PP2_TYPE_SERVAL_SERVICE_ID);
        assert_eq!(&tlv.value[..], id.as_bytes());
        assert_eq!(
            header(ProxyProtocol::Off, sa("1.1.1.1:1"), sa("2.2.2.2:2"), &id).unwrap(),
            None
        );
    }
}
