//! The bytes the MAC extension authenticates, with the crypto left to the caller.
//!
//! The tag is a truncated HMAC-SHA256 (16 bytes) under the per-flow key. Its header input
//! is the SAL header as [`SalRepr::emit`] writes it, with
//!
//! * the MAC extension present and its 16 tag bytes zero,
//! * the checksum field zero (the checksum is filled after the tag and covers it),
//! * **the SOURCE extension left out** (and `shl` counting the header without it).
//!
//! SOURCE is left out because routers, which do not hold the flow key, append to it: a
//! SYN-ACK that returns through the router that forwarded the SYN (`docs/SAL.md` §3) gets
//! the server's observed address appended and must still verify. SOURCE only steers where the
//! handshake goes next; the conn-ACK that follows is itself authenticated.
//!
//! The input is computed from the parsed [`SalRepr`], not from the received bytes, so a
//! receiver authenticates exactly the fields it acts on (what the parser ignores, such as
//! reserved bits, PAD and ADDRESS, cannot matter). For a packet emitted without SOURCE the
//! two are the same bytes. The caller's closure also receives nothing else: whether and how
//! the transport bytes are covered too is the SAL layer's choice (`docs/PROTOCOL.md` §2.9).

use super::ext::MAC_TAG_LEN;
use super::packet::{MAX_HEADER_LEN, Packet};
use super::repr::SalRepr;

impl SalRepr {
    /// Calls `f` with the MAC header input of this header (see the module doc); the value of
    /// `self.mac` does not matter.
    ///
    /// Sender: `repr.mac = Some(repr.with_mac_input(|h| tag(key, h, payload)))`, then
    /// [`emit`](Self::emit). Receiver: after [`parse`](Self::parse), compare `repr.mac` with
    /// the tag computed in `f`, in constant time.
    pub fn with_mac_input<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let unsigned = Self {
            source: None,
            mac: Some([0; MAC_TAG_LEN]),
            ..*self
        };
        let mut scratch = [0u8; MAX_HEADER_LEN];
        let len = unsigned.buffer_len();
        let mut packet = Packet::new_unchecked(&mut scratch[..len]);
        unsigned.emit(&mut packet);
        packet.set_checksum(0);
        f(packet.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::super::repr::tests::{our_syn_ack_repr, unhex};
    use core::net::SocketAddr;

    /// The MAC input of the SYN-ACK vector (`docs/PROTOCOL.md` §2.9).
    const SYN_ACK_MAC_INPUT_HEX: &str = "0000b0b1 00000002 16060000 \
        1014a000 55667788 11223345 090a0b0c 0d0e0f10 \
        50240000 40414243 44454647 48494a4b 4c4d4e4f 50515253 54555657 58595a5b 5c5d5e5f \
        60140000 00000000 00000000 00000000 00000000";

    #[test]
    fn input_leaves_out_source_and_zeroes_tag_and_checksum() {
        let repr = our_syn_ack_repr();
        let input = repr.with_mac_input(<[u8]>::to_vec);
        assert_eq!(input, unhex(SYN_ACK_MAC_INPUT_HEX));
    }

    #[test]
    fn a_router_hop_keeps_the_input() {
        let repr = our_syn_ack_repr();
        let before = repr.with_mac_input(<[u8]>::to_vec);
        let mut hopped = repr;
        let server: SocketAddr = "[2001:db8::5]:54325".parse().unwrap();
        hopped.add_forwarding_hop(server, server).unwrap();
        assert_eq!(hopped.with_mac_input(<[u8]>::to_vec), before);
    }

    #[test]
    fn every_authenticated_field_changes_the_input() {
        let repr = our_syn_ack_repr();
        let input = repr.with_mac_input(<[u8]>::to_vec);
        let mut variants = [repr; 5];
        variants[0].dst_flow = None;
        variants[1].control.as_mut().unwrap().verno ^= 1;
        variants[2].key_share = None;
        variants[3].path_challenge = Some([0; 8]);
        variants[4].mac = None; // the tag value is not input, but its presence is implied
        for (i, v) in variants.iter().enumerate().take(4) {
            assert_ne!(v.with_mac_input(<[u8]>::to_vec), input, "variant {i}");
        }
        assert_eq!(variants[4].with_mac_input(<[u8]>::to_vec), input);
    }
}
