//! The Service Access Layer header: a 12-byte base header and typed extensions.
//!
//! ```text
//! 0  src_flowid (u32) | 4 dst_flowid (u32) | 8 shl (words) | 9 protocol | 10 checksum (u16)
//! 12 extensions ... up to shl * 4, then the transport bytes
//! ```
//!
//! | type | extension | size | carried by |
//! |---|---|---|---|
//! | 0 | PAD | 1 | nobody (accepted) |
//! | 1 | CONTROL | 20 | every control packet |
//! | 2 | SERVICE | 36 | SYN (dst); unconnected datagrams (dst, src) |
//! | 3 | ADDRESS | 12 | nobody (accepted, ignored) |
//! | 4 | SOURCE | 4 + 8/20 per record | forwarded SYN, its SYN-ACK |
//! | 5 | KEY_SHARE | 36 | SYN, SYN-ACK |
//! | 6 | MAC | 20 | SYN-ACK and every later control packet; always last |
//! | 7 | PATH_CHALLENGE | 12 | packets probing a new path |
//! | 8 | PATH_RESPONSE | 12 | answers to a challenge |
//!
//! Layouts of the base header, CONTROL and SERVICE are the original's byte for byte
//! (`SERVAL-ORIGINAL.md` §2); SOURCE carries socket addresses; types 5–8 are ours.
//! `docs/PROTOCOL.md` §2 has every layout, the parsing limits and test vectors.
//!
//! * [`Packet`] reads and writes the base header in place;
//! * [`Extensions`] walks the extensions with the original's limits;
//! * [`SalRepr`] is the validated whole: [`SalRepr::parse`], [`SalRepr::buffer_len`],
//!   [`SalRepr::emit`];
//! * [`SalRepr::with_mac_input`] lets the caller plug in the HMAC;
//! * [`forward`] is a router's hop (append to SOURCE, re-emit);
//! * [`PrettyPrint`] prints any datagram as one trace line.

mod control;
mod ext;
mod mac;
mod packet;
mod repr;
mod source;

pub use control::{ControlFlags, ControlRepr};
pub use ext::{
    ADDRESS_EXT_LEN, CONTROL_EXT_LEN, ExtType, Extension, Extensions, KEY_SHARE_EXT_LEN,
    KEY_SHARE_LEN, MAC_EXT_LEN, MAC_TAG_LEN, MAX_EXTENSIONS, PATH_DATA_LEN, PATH_EXT_LEN,
    SERVICE_EXT_LEN,
};
pub use packet::{CHECKSUM_OFFSET, HEADER_LEN, MAX_HEADER_LEN, Packet, Protocol};
pub use repr::{ForwardError, ParsedSal, PrettyPrint, SalRepr, ServiceRepr, forward};
pub use source::{MAX_SOURCE_RECORDS, MIN_SOURCE_RECORDS, SourceFull, SourceRepr};

/// The UDP port a Serval endpoint listens on by default (the original's server
/// encapsulation port; we run over UDP only).
pub const DEFAULT_UDP_PORT: u16 = 54325;

/// Test vectors and helpers shared with other wire modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use super::repr::tests::unhex;
}
