//! Identifiers and wire formats.
//!
//! Byte layouts follow smoltcp's Packet/Repr split:
//!
//! * a `Packet<T: AsRef<[u8]>>` wraps a buffer and reads fields in place; `new_checked`
//!   validates lengths once, after which **no accessor panics** on any buffer;
//! * a `Repr` is the validated, owned meaning of a packet: `parse` (never panics, returns
//!   [`Error`] for any malformed input), `buffer_len`, `emit`.
//!
//! Every multi-byte field is big-endian. Exact layouts and test vectors: `docs/PROTOCOL.md`.
//! This module depends on nothing else in the crate.

pub mod checksum;
pub mod control_msg;
mod flow_id;
pub mod legacy;
pub mod name;
pub mod sal;
mod service_id;
mod sockaddr;
pub mod tcp;

pub use control_msg::ControlMsg;
pub use flow_id::{FlowId, NONCE_LEN, Nonce};
pub use legacy::LegacyAddr;
pub use sal::{Packet as SalPacket, SalRepr};
pub(crate) use service_id::write_hex;
pub use service_id::{
    ParseIdError, PrefixLenError, SERVICE_ID_BITS, SERVICE_ID_LEN, ServiceId, ServicePrefix,
};

/// Why bytes from the network were refused. One variant per cause so receivers can count
/// drops by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The buffer is shorter than a field or a declared length says.
    #[error("truncated")]
    Truncated,
    /// A length, count or field value is outside what the format allows.
    #[error("malformed")]
    Malformed,
    /// The checksum does not verify.
    #[error("bad checksum")]
    Checksum,
    /// A well-formed construct this implementation does not handle (unknown type, version).
    #[error("unsupported")]
    Unsupported,
}

/// Result of parsing untrusted bytes.
pub type Result<T> = core::result::Result<T, Error>;
