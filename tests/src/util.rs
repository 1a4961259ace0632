//! Small helpers every simulator test uses.

use std::net::{IpAddr, SocketAddr};

use serval_stack::sal::EndpointConfig;
use serval_stack::wire::sal::{ControlFlags, Packet, SalRepr};

use crate::sim::{Datagram, Interceptor, Verdict};

/// A socket address from a literal; panics on a typo (tests only).
pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address literal")
}

/// An IP address from a literal; panics on a typo (tests only).
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP address literal")
}

/// The default endpoint configuration with its RNG seeded from `seed`.
pub fn seeded_config(seed: u8) -> EndpointConfig {
    let mut c = EndpointConfig::default();
    c.rng_seed = [seed; 32];
    c
}

/// The SAL control flags of a simulated datagram (none if it does not parse).
pub fn flags_of(d: &Datagram) -> ControlFlags {
    SalRepr::parse_datagram(&d.payload).map_or(ControlFlags::NONE, |p| p.repr.flags())
}

/// A hook for [`Network::intercept`](crate::sim::Network::intercept) that drops the first
/// datagram whose SAL control flags are exactly `flags` ("lose the SYN-ACK") and passes
/// every other one.
pub fn drop_first(flags: ControlFlags) -> Interceptor {
    let mut dropped = false;
    Box::new(move |_, d| {
        if !dropped && flags_of(d) == flags {
            dropped = true;
            return Verdict::Drop;
        }
        Verdict::Pass
    })
}

/// The bytes of `repr` followed by `body` zero bytes, for a test to fill (forged packets).
pub fn emit(repr: &SalRepr, body: usize) -> Vec<u8> {
    let mut buf = vec![0; repr.buffer_len() + body];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    buf
}
