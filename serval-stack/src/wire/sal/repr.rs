//! [`SalRepr`]: the validated meaning of a SAL header, with parse, emit and a trace printer.

use core::fmt;
use core::net::SocketAddr;

use super::control::{ControlFlags, ControlRepr};
use super::ext::{
    BODY_OFFSET, CONTROL_EXT_LEN, ExtType, KEY_SHARE_EXT_LEN, KEY_SHARE_LEN, MAC_EXT_LEN,
    MAC_TAG_LEN, PATH_DATA_LEN, PATH_EXT_LEN, SERVICE_EXT_LEN,
};
use super::packet::{HEADER_LEN, Packet, Protocol};
use super::source::{SourceFull, SourceRepr};
use crate::wire::{Error, FlowId, Result, SERVICE_ID_LEN, ServiceId, write_hex};

/// The SERVICE extensions of a packet: the first is always the destination (the id resolved
/// by the service table); a second one, the source id, only follows a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ServiceRepr {
    /// The service the packet is for.
    pub dst: ServiceId,
    /// The sender's service (unconnected datagrams).
    pub src: Option<ServiceId>,
}

/// A parsed, validated SAL header: base fields plus at most one of each extension (two
/// SERVICE). Plain data, `Copy`, no heap: a router can rewrite and re-emit it.
///
/// [`emit`](Self::emit) writes extensions in the canonical order CONTROL, SERVICE (dst),
/// SERVICE (src), SOURCE, KEY_SHARE, PATH_CHALLENGE, PATH_RESPONSE, MAC; [`parse`](Self::parse)
/// accepts any order except that MAC must be last. PAD and ADDRESS are accepted and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SalRepr {
    /// The sender's flow id (`None` when the field is the reserved 0).
    pub src_flow: Option<FlowId>,
    /// The receiver's flow id; `None` in a SYN and in unconnected datagrams.
    pub dst_flow: Option<FlowId>,
    /// The transport protocol after the header.
    pub protocol: Protocol,
    /// CONTROL: flags and version numbers (control packets only).
    pub control: Option<ControlRepr>,
    /// SERVICE: destination and optional source ServiceID.
    pub service: Option<ServiceRepr>,
    /// SOURCE: the path of a forwarded SYN (and its SYN-ACK).
    pub source: Option<SourceRepr>,
    /// KEY_SHARE: the sender's X25519 public key (SYN, SYN-ACK).
    pub key_share: Option<[u8; KEY_SHARE_LEN]>,
    /// PATH_CHALLENGE: 8 bytes the peer must echo from the address the packet came from.
    pub path_challenge: Option<[u8; PATH_DATA_LEN]>,
    /// PATH_RESPONSE: the echo of a PATH_CHALLENGE.
    pub path_response: Option<[u8; PATH_DATA_LEN]>,
    /// MAC: the truncated HMAC tag (see [`SalRepr::with_mac_input`]).
    pub mac: Option<[u8; MAC_TAG_LEN]>,
}

/// Why a router could not forward a packet (each a distinct drop reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The packet does not parse.
    #[error("invalid SAL packet: {0}")]
    Invalid(#[from] Error),
    /// The router's address is already in the SOURCE path: the SYN is looping.
    #[error("forwarding loop: address already in the SOURCE path")]
    Loop,
    /// The SOURCE path is full.
    #[error("{0}")]
    SourceFull(#[from] SourceFull),
    /// The output buffer cannot hold the re-emitted packet.
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// A parsed datagram: the header's meaning and where the transport bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedSal<'a> {
    /// The validated header.
    pub repr: SalRepr,
    /// Bytes the header took on the wire (may exceed `repr.buffer_len()` if the sender used
    /// PAD or ADDRESS).
    pub header_len: usize,
    /// The transport bytes.
    pub payload: &'a [u8],
}

impl SalRepr {
    /// A header with no extension: what connected data packets carry.
    pub const fn new(
        src_flow: Option<FlowId>,
        dst_flow: Option<FlowId>,
        protocol: Protocol,
    ) -> Self {
        Self {
            src_flow,
            dst_flow,
            protocol,
            control: None,
            service: None,
            source: None,
            key_share: None,
            path_challenge: None,
            path_response: None,
            mac: None,
        }
    }

    /// The CONTROL flags, or none when the packet has no CONTROL extension.
    pub fn flags(&self) -> ControlFlags {
        self.control.map_or(ControlFlags::NONE, |c| c.flags)
    }

    /// The destination ServiceID, if the packet carries one.
    pub fn dst_service(&self) -> Option<ServiceId> {
        self.service.map(|s| s.dst)
    }

    /// Validates a SAL header (`SERVAL-ORIGINAL.md` §2.8 plus our extensions).
    ///
    /// Errors: lengths ([`Packet::check_len`]); framing ([`Extensions`](super::Extensions));
    /// a duplicate CONTROL, SOURCE, KEY_SHARE, MAC, PATH_CHALLENGE or PATH_RESPONSE, a third
    /// SERVICE, a SOURCE with fewer than 2 records, or any extension after MAC
    /// ([`Error::Malformed`]); then the checksum ([`Error::Checksum`]). The MAC itself is
    /// only carried here; checking it needs the flow key ([`SalRepr::with_mac_input`]).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self> {
        packet.check_len()?;
        let mut repr = Self::new(
            packet.src_flow_id(),
            packet.dst_flow_id(),
            packet.protocol(),
        );
        for ext in packet.extensions() {
            if repr.mac.is_some() {
                return Err(Error::Malformed);
            }
            let ext = ext?;
            repr.absorb(ext.kind(), ext.bytes())?;
        }
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        Ok(repr)
    }

    /// Parses a whole datagram (SAL header and transport bytes).
    pub fn parse_datagram(buf: &[u8]) -> Result<ParsedSal<'_>> {
        let packet = Packet::new_checked(buf)?;
        let repr = Self::parse(&packet)?;
        let header_len = packet.header_len();
        Ok(ParsedSal {
            repr,
            header_len,
            payload: buf.get(header_len..).unwrap_or(&[]),
        })
    }

    /// Adds one extension found by the walker, enforcing the per-packet counts.
    fn absorb(&mut self, kind: ExtType, ext: &[u8]) -> Result<()> {
        let body = ext.get(BODY_OFFSET..).unwrap_or(&[]);
        match kind {
            ExtType::Pad | ExtType::Address => Ok(()),
            ExtType::Control => {
                let bytes = ext.try_into().map_err(|_| Error::Malformed)?;
                set_once(&mut self.control, ControlRepr::parse(bytes))
            }
            ExtType::Service => {
                let id = ServiceId::from_slice(body).ok_or(Error::Malformed)?;
                self.add_service(id)
            }
            ExtType::Source => set_once(&mut self.source, SourceRepr::parse(ext)?),
            ExtType::KeyShare => set_once(&mut self.key_share, array(body)?),
            ExtType::PathChallenge => set_once(&mut self.path_challenge, array(body)?),
            ExtType::PathResponse => set_once(&mut self.path_response, array(body)?),
            ExtType::Mac => set_once(&mut self.mac, array(body)?),
        }
    }

    fn add_service(&mut self, id: ServiceId) -> Result<()> {
        match &mut self.service {
            None => self.service = Some(ServiceRepr { dst: id, src: None }),
            Some(s) if s.src.is_none() => s.src = Some(id),
            Some(_) => return Err(Error::Malformed),
        }
        Ok(())
    }

    /// Length of the header [`emit`](Self::emit) writes (a multiple of 4, at most 428).
    pub fn buffer_len(&self) -> usize {
        // `as_ref` throughout: the fields are `Copy`, and SOURCE is 388 bytes.
        let services = self
            .service
            .as_ref()
            .map_or(0, |s| 1 + usize::from(s.src.is_some()));
        HEADER_LEN
            + self.control.map_or(0, |_| CONTROL_EXT_LEN)
            + services * SERVICE_EXT_LEN
            + self.source.as_ref().map_or(0, SourceRepr::buffer_len)
            + self.key_share.map_or(0, |_| KEY_SHARE_EXT_LEN)
            + self.path_challenge.map_or(0, |_| PATH_EXT_LEN)
            + self.path_response.map_or(0, |_| PATH_EXT_LEN)
            + self.mac.map_or(0, |_| MAC_EXT_LEN)
    }

    /// Writes the header into the start of `packet` in canonical order and fills the
    /// checksum. Bytes after [`buffer_len`](Self::buffer_len) (the transport) are untouched.
    ///
    /// To authenticate the packet, set `mac` from [`with_mac_input`](Self::with_mac_input)
    /// first.
    ///
    /// # Panics
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len) (a local sizing bug).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let len = self.buffer_len();
        // len <= 428, so len / 4 fits the shl byte.
        packet.set_header_words((len / 4) as u8);
        packet.set_src_flow_id(self.src_flow);
        packet.set_dst_flow_id(self.dst_flow);
        packet.set_protocol(self.protocol);
        self.emit_extensions(&mut packet.header_mut()[HEADER_LEN..]);
        packet.fill_checksum();
    }

    fn emit_extensions(&self, buf: &mut [u8]) {
        let mut at = 0;
        if let Some(c) = &self.control {
            c.emit(&mut buf[at..at + CONTROL_EXT_LEN]);
            at += CONTROL_EXT_LEN;
        }
        if let Some(s) = &self.service {
            for id in core::iter::once(s.dst).chain(s.src) {
                at += emit_fixed(&mut buf[at..], ExtType::Service, id.as_bytes());
            }
        }
        if let Some(s) = &self.source {
            let len = s.buffer_len();
            s.emit(&mut buf[at..at + len]);
            at += len;
        }
        let tail = [
            (ExtType::KeyShare, self.key_share.as_ref().map(|k| &k[..])),
            (
                ExtType::PathChallenge,
                self.path_challenge.as_ref().map(|p| &p[..]),
            ),
            (
                ExtType::PathResponse,
                self.path_response.as_ref().map(|p| &p[..]),
            ),
            (ExtType::Mac, self.mac.as_ref().map(|m| &m[..])),
        ];
        for (kind, body) in tail {
            if let Some(body) = body {
                at += emit_fixed(&mut buf[at..], kind, body);
            }
        }
    }

    /// A router's hop on a forwarded packet (`SERVAL-ORIGINAL.md` §3.3): without SOURCE,
    /// creates `[observed_src, local]`; with one, appends `local` unless it is already on
    /// the path ([`ForwardError::Loop`]).
    ///
    /// `observed_src` is the UDP source the packet came from, `local` the router's address
    /// it arrived at.
    pub fn add_forwarding_hop(
        &mut self,
        observed_src: SocketAddr,
        local: SocketAddr,
    ) -> core::result::Result<(), ForwardError> {
        match &mut self.source {
            None => self.source = Some(SourceRepr::new(observed_src, local)),
            Some(s) if s.contains(&local) => return Err(ForwardError::Loop),
            Some(s) => s.push(local)?,
        }
        Ok(())
    }
}

/// Re-emits the SAL datagram `packet` into `out` with a forwarding hop added
/// ([`SalRepr::add_forwarding_hop`]), the transport bytes copied unchanged and a fresh
/// checksum; returns the new datagram's length.
///
/// The header comes out in canonical form (PAD and ADDRESS dropped). A MAC is copied and
/// still verifies: its input leaves SOURCE out ([`SalRepr::with_mac_input`]).
pub fn forward(
    packet: &[u8],
    observed_src: SocketAddr,
    local: SocketAddr,
    out: &mut [u8],
) -> core::result::Result<usize, ForwardError> {
    let parsed = SalRepr::parse_datagram(packet)?;
    let mut repr = parsed.repr;
    repr.add_forwarding_hop(observed_src, local)?;
    let header_len = repr.buffer_len();
    let total = header_len + parsed.payload.len();
    let out = out.get_mut(..total).ok_or(ForwardError::BufferTooSmall)?;
    out[header_len..].copy_from_slice(parsed.payload);
    repr.emit(&mut Packet::new_unchecked(out));
    Ok(total)
}

/// Writes an extension whose body is `body` after two reserved bytes; returns its length.
fn emit_fixed(buf: &mut [u8], kind: ExtType, body: &[u8]) -> usize {
    let len = BODY_OFFSET + body.len();
    buf[0] = kind.type_byte();
    // Bodies are at most 32 bytes.
    buf[1] = len as u8;
    buf[2] = 0;
    buf[3] = 0;
    buf[BODY_OFFSET..len].copy_from_slice(body);
    len
}

fn set_once<V>(slot: &mut Option<V>, value: V) -> Result<()> {
    if slot.is_some() {
        return Err(Error::Malformed);
    }
    *slot = Some(value);
    Ok(())
}

fn array<const N: usize>(body: &[u8]) -> Result<[u8; N]> {
    body.try_into().map_err(|_| Error::Malformed)
}

const _: () = assert!(SERVICE_EXT_LEN == BODY_OFFSET + SERVICE_ID_LEN);

impl fmt::Display for SalRepr {
    /// One line, tcpdump-like:
    /// `sal 2 > 0 tcp [SYN] ver 0x11223344 nonce 0102030405060708 svc 00004001… key-share …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = |id: Option<FlowId>| FlowId::to_wire(id);
        write!(
            f,
            "sal {} > {} {}",
            flow(self.src_flow),
            flow(self.dst_flow),
            self.protocol
        )?;
        if let Some(c) = &self.control {
            write!(f, " {c}")?;
        }
        if let Some(s) = &self.service {
            write!(f, " svc {}", s.dst)?;
            if let Some(src) = &s.src {
                write!(f, " from-svc {src}")?;
            }
        }
        if let Some(s) = &self.source {
            write!(f, " path {s}")?;
        }
        let hex_fields = [
            ("key-share", self.key_share.as_ref().map(|k| &k[..4])),
            (
                "path-challenge",
                self.path_challenge.as_ref().map(|p| &p[..]),
            ),
            ("path-response", self.path_response.as_ref().map(|p| &p[..])),
            ("mac", self.mac.as_ref().map(|m| &m[..4])),
        ];
        for (name, bytes) in hex_fields {
            if let Some(bytes) = bytes {
                write!(f, " {name} ")?;
                write_hex(f, bytes)?;
                if bytes.len() == 4 {
                    f.write_str("…")?;
                }
            }
        }
        Ok(())
    }
}

/// Prints any datagram as one trace line: the parsed header and the transport length, or
/// why it does not parse. Never panics.
#[derive(Debug, Clone, Copy)]
pub struct PrettyPrint<'a>(pub &'a [u8]);

impl fmt::Display for PrettyPrint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match SalRepr::parse_datagram(self.0) {
            Ok(p) => write!(f, "{} len {}", p.repr, p.payload.len()),
            Err(e) => write!(f, "sal invalid ({e}) {} bytes", self.0.len()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::source::tests::any_source;
    use super::*;
    use crate::wire::Nonce;
    use proptest::prelude::*;

    /// The original's SYN (`SERVAL-ORIGINAL.md` §2.10), also in `docs/PROTOCOL.md`.
    pub(crate) const ORIGINAL_SYN: [u8; 68] = hex68(
        "00000002 00000000 1106aa43 10148000 11223344 00000000 01020304 05060708 \
         20240000 00004001 00000000 00000000 00000000 00000000 00000000 00000000 00000000",
    );

    const fn hex68(s: &str) -> [u8; 68] {
        let s = s.as_bytes();
        let mut out = [0u8; 68];
        let (mut i, mut n, mut hi) = (0, 0, None);
        while i < s.len() {
            let v = match s[i] {
                b'0'..=b'9' => Some(s[i] - b'0'),
                b'a'..=b'f' => Some(s[i] - b'a' + 10),
                _ => None,
            };
            if let Some(v) = v {
                match hi {
                    None => hi = Some(v),
                    Some(h) => {
                        out[n] = h << 4 | v;
                        n += 1;
                        hi = None;
                    }
                }
            }
            i += 1;
        }
        assert!(n == 68);
        out
    }

    /// Decodes spaced hex (test vectors).
    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(core::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn emit_vec(repr: &SalRepr) -> Vec<u8> {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        buf
    }

    pub(crate) fn syn_repr() -> SalRepr {
        SalRepr {
            control: Some(ControlRepr {
                flags: ControlFlags::SYN,
                verno: 0x1122_3344,
                ackno: 0,
                nonce: Nonce([1, 2, 3, 4, 5, 6, 7, 8]),
            }),
            service: Some(ServiceRepr {
                dst: ServiceId::from_u32(16385),
                src: None,
            }),
            ..SalRepr::new(FlowId::new(2), None, Protocol::TCP)
        }
    }

    #[test]
    fn original_syn_vector_decodes_and_reencodes() {
        let repr = SalRepr::parse(&Packet::new_checked(&ORIGINAL_SYN[..]).unwrap()).unwrap();
        assert_eq!(repr, syn_repr());
        assert_eq!(repr.buffer_len(), 68);
        assert_eq!(emit_vec(&repr), ORIGINAL_SYN);
    }

    /// Our SYN: the original's plus KEY_SHARE (key = 32 bytes 0x20..0x3f).
    pub(crate) const OUR_SYN_HEX: &str = "00000002 00000000 1a065e1c \
        10148000 11223344 00000000 01020304 05060708 \
        20240000 00004001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 \
        50240000 20212223 24252627 28292a2b 2c2d2e2f 30313233 34353637 38393a3b 3c3d3e3f";

    /// Our SYN-ACK through one router, with SOURCE, KEY_SHARE and a MAC placeholder tag
    /// (0xa0..0xaf).
    pub(crate) const OUR_SYN_ACK_HEX: &str = "0000b0b1 00000002 1d06345b \
        1014a000 55667788 11223345 090a0b0c 0d0e0f10 \
        401c0000 04000d05 c0000201 0400d435 c6336402 0400d435 cb007103 \
        50240000 40414243 44454647 48494a4b 4c4d4e4f 50515253 54555657 58595a5b 5c5d5e5f \
        60140000 a0a1a2a3 a4a5a6a7 a8a9aaab acadaeaf";

    pub(crate) fn our_syn_ack_repr() -> SalRepr {
        let key: [u8; 32] = core::array::from_fn(|i| 0x40 + i as u8);
        let mac: [u8; 16] = core::array::from_fn(|i| 0xa0 + i as u8);
        SalRepr {
            control: Some(ControlRepr {
                flags: ControlFlags::SYN | ControlFlags::ACK,
                verno: 0x5566_7788,
                ackno: 0x1122_3345,
                nonce: Nonce([9, 10, 11, 12, 13, 14, 15, 16]),
            }),
            source: SourceRepr::from_slice(&[
                "192.0.2.1:3333".parse().unwrap(),
                "198.51.100.2:54325".parse().unwrap(),
                "203.0.113.3:54325".parse().unwrap(),
            ]),
            key_share: Some(key),
            mac: Some(mac),
            ..SalRepr::new(FlowId::new(0xb0b1), FlowId::new(2), Protocol::TCP)
        }
    }

    #[test]
    fn our_vectors() {
        let mut syn = syn_repr();
        syn.key_share = Some(core::array::from_fn(|i| 0x20 + i as u8));
        assert_eq!(emit_vec(&syn), unhex(OUR_SYN_HEX));
        let syn_ack = our_syn_ack_repr();
        let bytes = emit_vec(&syn_ack);
        assert_eq!(bytes, unhex(OUR_SYN_ACK_HEX));
        let parsed = SalRepr::parse_datagram(&bytes).unwrap();
        assert_eq!(parsed.repr, syn_ack);
        assert_eq!(parsed.header_len, 116);
    }

    #[test]
    fn data_header() {
        let repr = SalRepr::new(FlowId::new(0x0a0b_0c0d), FlowId::new(2), Protocol::TCP);
        let mut buf = emit_vec(&repr);
        assert_eq!(buf, unhex(DATA_HEX));
        buf.extend_from_slice(b"segment");
        let parsed = SalRepr::parse_datagram(&buf).unwrap();
        assert_eq!((parsed.repr, parsed.payload), (repr, &b"segment"[..]));
        assert_eq!(PrettyPrint(&buf).to_string(), "sal 168496141 > 2 tcp len 7");
    }
    /// A connected data header, flow 0x0a0b0c0d → 2, TCP.
    pub(crate) const DATA_HEX: &str = "0a0b0c0d 00000002 0306e6df";

    #[test]
    fn display() {
        assert_eq!(
            syn_repr().to_string(),
            format!(
                "sal 2 > 0 tcp [SYN] ver 0x11223344 nonce 0102030405060708 svc 00004001{}",
                "0".repeat(56)
            )
        );
        let line = our_syn_ack_repr().to_string();
        assert!(
            line.contains("[SYN|ACK] ver 0x55667788 ack 0x11223345"),
            "{line}"
        );
        assert!(line.contains("path [192.0.2.1:3333 > 198.51.100.2:54325 > 203.0.113.3:54325]"));
        assert!(
            line.ends_with("key-share 40414243… mac a0a1a2a3…"),
            "{line}"
        );
        assert_eq!(
            PrettyPrint(&[0; 11]).to_string(),
            "sal invalid (truncated) 11 bytes"
        );
    }

    /// Rebuilds `exts` behind a base header with a correct checksum.
    fn packet_with(exts: &[u8]) -> Vec<u8> {
        let mut buf = vec![0, 0, 0, 2, 0, 0, 0, 0, 0, 6, 0, 0];
        buf.extend_from_slice(exts);
        buf[8] = (buf.len() / 4) as u8;
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum();
        buf
    }

    fn parse(buf: &[u8]) -> Result<SalRepr> {
        SalRepr::parse_datagram(buf).map(|p| p.repr)
    }

    fn ext(kind: ExtType) -> Vec<u8> {
        let len = kind.fixed_len().unwrap();
        let mut e = vec![0u8; len];
        e[0] = kind.type_byte();
        if len > 1 {
            e[1] = len as u8;
        }
        e
    }

    #[test]
    fn duplicates_and_counts() {
        for kind in [
            ExtType::Control,
            ExtType::KeyShare,
            ExtType::PathChallenge,
            ExtType::PathResponse,
        ] {
            let once = ext(kind);
            assert!(parse(&packet_with(&once)).is_ok(), "{kind}");
            let twice = [once.clone(), once].concat();
            assert_eq!(parse(&packet_with(&twice)), Err(Error::Malformed), "{kind}");
        }
        let svc = ext(ExtType::Service);
        let two = parse(&packet_with(&svc.repeat(2))).unwrap();
        assert_eq!(two.service.unwrap().src, Some(ServiceId::DEFAULT));
        assert_eq!(parse(&packet_with(&svc.repeat(3))), Err(Error::Malformed));
        let src = unhex("40140000 04000001 0a000001 04000002 0a000002");
        assert!(parse(&packet_with(&src)).unwrap().source.is_some());
        assert_eq!(parse(&packet_with(&src.repeat(2))), Err(Error::Malformed));
    }

    #[test]
    fn mac_must_be_last() {
        let mac = ext(ExtType::Mac);
        let ctl = ext(ExtType::Control);
        assert!(parse(&packet_with(&[ctl.clone(), mac.clone()].concat())).is_ok());
        assert_eq!(
            parse(&packet_with(&[mac.clone(), ctl].concat())),
            Err(Error::Malformed)
        );
        assert_eq!(
            parse(&packet_with(&[mac.clone(), mac].concat())),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn pad_and_address_are_ignored() {
        let mut exts = vec![0u8; 4];
        exts.extend(ext(ExtType::Address));
        exts.extend(ext(ExtType::Control));
        let repr = parse(&packet_with(&exts)).unwrap();
        assert!(repr.control.is_some());
        assert_eq!(repr.buffer_len(), 32);
        let bad_address = unhex("30100000 00000000 00000000 00000000");
        assert_eq!(parse(&packet_with(&bad_address)), Err(Error::Malformed));
    }

    #[test]
    fn checksum_is_checked_last() {
        let mut buf = ORIGINAL_SYN;
        buf[11] ^= 1;
        assert_eq!(parse(&buf), Err(Error::Checksum));
        buf[12] = 0x90;
        assert_eq!(parse(&buf), Err(Error::Unsupported));
    }

    #[test]
    fn forwarding_appends_the_path() {
        let client: SocketAddr = "192.0.2.1:3333".parse().unwrap();
        let r1: SocketAddr = "198.51.100.2:54325".parse().unwrap();
        let r2: SocketAddr = "[2001:db8::2]:54325".parse().unwrap();
        let mut syn = ORIGINAL_SYN.to_vec();
        syn.extend_from_slice(b"tcp-syn");
        let mut hop1 = [0u8; 200];
        let n1 = forward(&syn, client, r1, &mut hop1).unwrap();
        let p1 = SalRepr::parse_datagram(&hop1[..n1]).unwrap();
        assert_eq!(p1.payload, b"tcp-syn");
        assert_eq!(p1.repr.source.unwrap().as_slice(), &[client, r1]);
        let mut hop2 = [0u8; 200];
        let n2 = forward(&hop1[..n1], r1, r2, &mut hop2).unwrap();
        let p2 = SalRepr::parse_datagram(&hop2[..n2]).unwrap();
        assert_eq!(p2.repr.source.unwrap().as_slice(), &[client, r1, r2]);
        assert_eq!(
            forward(&hop2[..n2], r1, r2, &mut [0u8; 200]),
            Err(ForwardError::Loop)
        );
        assert_eq!(
            forward(&hop1[..n1], r1, r2, &mut [0u8; 100]),
            Err(ForwardError::BufferTooSmall)
        );
        assert_eq!(
            forward(&[0u8; 4], r1, r2, &mut [0u8; 100]),
            Err(ForwardError::Invalid(Error::Truncated))
        );
    }

    fn any_flow() -> impl Strategy<Value = Option<FlowId>> {
        any::<u32>().prop_map(FlowId::new)
    }

    fn any_control() -> impl Strategy<Value = ControlRepr> {
        (any::<u8>(), any::<u32>(), any::<u32>(), any::<[u8; 8]>()).prop_map(|(f, v, a, n)| {
            ControlRepr {
                flags: ControlFlags::from_bits_truncate(f),
                verno: v,
                ackno: a,
                nonce: Nonce(n),
            }
        })
    }

    fn any_service() -> impl Strategy<Value = ServiceRepr> {
        (any::<[u8; 32]>(), proptest::option::of(any::<[u8; 32]>())).prop_map(|(d, s)| {
            ServiceRepr {
                dst: ServiceId::from_bytes(d),
                src: s.map(ServiceId::from_bytes),
            }
        })
    }

    pub(crate) fn any_sal() -> impl Strategy<Value = SalRepr> {
        (
            (any_flow(), any_flow(), any::<u8>()),
            proptest::option::of(any_control()),
            proptest::option::of(any_service()),
            proptest::option::of(any_source()),
            proptest::option::of(any::<[u8; 32]>()),
            proptest::option::of(any::<[u8; 8]>()),
            proptest::option::of(any::<[u8; 8]>()),
            proptest::option::of(any::<[u8; 16]>()),
        )
            .prop_map(
                |((src, dst, proto), control, service, source, key, pc, pr, mac)| SalRepr {
                    control,
                    service,
                    source,
                    key_share: key,
                    path_challenge: pc,
                    path_response: pr,
                    mac,
                    ..SalRepr::new(src, dst, Protocol(proto))
                },
            )
    }

    proptest! {
        #[test]
        fn roundtrip(repr in any_sal(), payload in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut buf = emit_vec(&repr);
            prop_assert_eq!(buf.len() % 4, 0);
            buf.extend_from_slice(&payload);
            let parsed = SalRepr::parse_datagram(&buf).unwrap();
            prop_assert_eq!(parsed.repr, repr);
            prop_assert_eq!(parsed.payload, &payload[..]);
            let _ = PrettyPrint(&buf).to_string();
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = SalRepr::parse_datagram(&b);
            let _ = PrettyPrint(&b).to_string();
        }

        /// Random extension soup behind a valid base header and checksum, so the walker and
        /// the per-packet rules (not just the checksum) are exercised.
        #[test]
        fn arbitrary_extensions_never_panic(words in proptest::collection::vec(any::<[u8; 4]>(), 0..40)) {
            let buf = packet_with(&words.concat());
            if let Ok(repr) = parse(&buf) {
                let again = emit_vec(&repr);
                prop_assert_eq!(parse(&again).unwrap(), repr);
            }
        }
    }
}
