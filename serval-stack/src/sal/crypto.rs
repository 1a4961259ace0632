//! Per-flow keys and control-packet authentication.
//!
//! The original Serval trusted an 8-byte nonce sent in clear text in every control packet,
//! so anyone who saw one packet of a flow could reset or redirect it (`SERVAL-ORIGINAL.md`
//! §10). We keep the nonce field but authenticate control packets with a key agreed in the
//! handshake:
//!
//! 1. The SYN carries the client's ephemeral X25519 public key (KEY_SHARE), the SYN-ACK the
//!    server's.
//! 2. Both ends derive two 32-byte keys with HKDF-SHA256: salt [`KDF_SALT`], input the X25519
//!    shared secret, info = the handshake transcript ([`Transcript`]: both FlowIDs, both
//!    nonces, the ServiceID, both public keys). One key per direction, so a packet cannot be
//!    reflected back to its sender.
//! 3. Every control packet from the SYN-ACK onward carries a MAC extension: HMAC-SHA256 with
//!    the sender's direction key over the packet (SAL header with the MAC and checksum fields
//!    zeroed, then the transport bytes), truncated to [`MAC_LEN`] bytes.
//!
//! What this buys: an off-path attacker, or one who only observes, cannot forge a RST, FIN,
//! RSYN or path response, even with the FlowIDs and nonces in hand. What it does not: there
//! are no certificates, so an active man-in-the-middle present during the handshake can
//! terminate it with each side (as with any unauthenticated Diffie-Hellman). Data segments
//! are not MACed (cost); they are protected by the random 32-bit FlowID and the transport's
//! sequence-window checks, and a RST only counts when it arrives as an authenticated SAL
//! control packet.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::wire::{FlowId, Nonce, ServiceId};

/// Length of a public key share in bytes.
pub const KEY_SHARE_LEN: usize = 32;
/// Length of the truncated MAC carried on the wire.
pub const MAC_LEN: usize = 16;
/// HKDF salt; versioned so a future change of derivation cannot be confused with this one.
pub const KDF_SALT: &[u8] = b"serval-sal-v1 flow keys";

type HmacSha256 = Hmac<Sha256>;

/// An ephemeral X25519 key pair for one handshake.
///
/// The secret comes from the caller's RNG (the core never draws OS randomness) and is
/// dropped (zeroised by `x25519-dalek`) once the keys are derived.
pub struct KeyPair {
    secret: StaticSecret,
    public: [u8; KEY_SHARE_LEN],
}

impl core::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A key pair from 32 random bytes.
    pub fn from_random(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    /// The public share to put in KEY_SHARE.
    pub fn public(&self) -> [u8; KEY_SHARE_LEN] {
        self.public
    }

    /// The X25519 shared secret with the peer's share. `None` when the peer's key is a
    /// low-order point (the secret would be all zeros and known to anyone): the handshake
    /// is refused.
    pub fn shared_secret(&self, peer: &[u8; KEY_SHARE_LEN]) -> Option<SharedSecret> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer));
        shared
            .was_contributory()
            .then(|| SharedSecret(shared.to_bytes()))
    }

    /// [`shared_secret`](Self::shared_secret) and [`FlowKeys::derive`] in one step.
    pub fn agree(&self, peer: &[u8; KEY_SHARE_LEN], transcript: &Transcript) -> Option<FlowKeys> {
        self.shared_secret(peer)
            .map(|s| FlowKeys::derive(&s, transcript))
    }
}

/// An X25519 shared secret; cached per peer share by the endpoint (`docs/SAL.md` §2).
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret([u8; 32]);

impl core::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

/// What both ends saw in the handshake; binds the keys to this flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transcript {
    /// The client's FlowID.
    pub client_flow: FlowId,
    /// The server's FlowID.
    pub server_flow: FlowId,
    /// The client's nonce.
    pub client_nonce: Nonce,
    /// The server's nonce.
    pub server_nonce: Nonce,
    /// The ServiceID the client asked for.
    pub service: ServiceId,
    /// The client's public share.
    pub client_share: [u8; KEY_SHARE_LEN],
    /// The server's public share.
    pub server_share: [u8; KEY_SHARE_LEN],
}

impl Transcript {
    /// Fixed-layout serialisation used as HKDF info (documented in `docs/PROTOCOL.md`).
    pub fn to_bytes(&self) -> [u8; 4 + 4 + 8 + 8 + 32 + 32 + 32] {
        let mut out = [0u8; 120];
        out[0..4].copy_from_slice(&self.client_flow.get().to_be_bytes());
        out[4..8].copy_from_slice(&self.server_flow.get().to_be_bytes());
        out[8..16].copy_from_slice(&self.client_nonce.0);
        out[16..24].copy_from_slice(&self.server_nonce.0);
        out[24..56].copy_from_slice(self.service.as_bytes());
        out[56..88].copy_from_slice(&self.client_share);
        out[88..120].copy_from_slice(&self.server_share);
        out
    }
}

/// Which end of the flow we are: selects the send and receive keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Sent the SYN.
    Client,
    /// Answered it.
    Server,
}

/// The two direction keys of a flow.
#[derive(Clone, PartialEq, Eq)]
pub struct FlowKeys {
    client_to_server: [u8; 32],
    server_to_client: [u8; 32],
}

impl core::fmt::Debug for FlowKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FlowKeys(..)")
    }
}

impl FlowKeys {
    /// The direction keys of a flow: HKDF-SHA256, salt [`KDF_SALT`], input `shared`, info
    /// the transcript; 64 bytes of output, client-to-server key first.
    pub fn derive(shared: &SharedSecret, transcript: &Transcript) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(KDF_SALT), &shared.0);
        let mut okm = [0u8; 64];
        hk.expand(&transcript.to_bytes(), &mut okm)
            .expect("64 bytes is a valid HKDF-SHA256 output length");
        let mut client_to_server = [0u8; 32];
        let mut server_to_client = [0u8; 32];
        client_to_server.copy_from_slice(&okm[..32]);
        server_to_client.copy_from_slice(&okm[32..]);
        Self {
            client_to_server,
            server_to_client,
        }
    }

    fn key(&self, sender: Side) -> &[u8; 32] {
        match sender {
            Side::Client => &self.client_to_server,
            Side::Server => &self.server_to_client,
        }
    }

    /// The MAC `sender` puts on a packet made of `parts` (header with MAC and checksum
    /// zeroed, then the transport bytes).
    pub fn sign(&self, sender: Side, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let tag = self.mac(sender, parts).finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&tag[..MAC_LEN]);
        out
    }

    /// Whether `tag` is `sender`'s MAC over `parts`, compared in constant time.
    pub fn verify(&self, sender: Side, parts: &[&[u8]], tag: &[u8; MAC_LEN]) -> bool {
        self.mac(sender, parts).verify_truncated_left(tag).is_ok()
    }

    fn mac(&self, sender: Side, parts: &[&[u8]]) -> HmacSha256 {
        let mut m = <HmacSha256 as Mac>::new_from_slice(self.key(sender))
            .expect("HMAC accepts any key length");
        for p in parts {
            m.update(p);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(c: &KeyPair, s: &KeyPair) -> Transcript {
        Transcript {
            client_flow: FlowId::new(0x1111_1111).unwrap(),
            server_flow: FlowId::new(0x2222_2222).unwrap(),
            client_nonce: Nonce([1; 8]),
            server_nonce: Nonce([2; 8]),
            service: ServiceId::from_u32(16385),
            client_share: c.public(),
            server_share: s.public(),
        }
    }

    #[test]
    fn both_ends_derive_the_same_keys_and_macs_verify_one_way() {
        let c = KeyPair::from_random([7; 32]);
        let s = KeyPair::from_random([9; 32]);
        let t = transcript(&c, &s);
        let kc = c.agree(&s.public(), &t).unwrap();
        let ks = s.agree(&c.public(), &t).unwrap();
        assert_eq!(kc, ks);
        let tag = kc.sign(Side::Client, &[b"header", b"payload"]);
        assert!(ks.verify(Side::Client, &[b"header", b"payload"], &tag));
        // Reflected back as if the server had sent it: refused.
        assert!(!ks.verify(Side::Server, &[b"header", b"payload"], &tag));
        // Any change to the covered bytes: refused.
        assert!(!ks.verify(Side::Client, &[b"header", b"payloaD"], &tag));
        // The split between parts does not matter, only the bytes.
        assert!(ks.verify(Side::Client, &[b"headerpayload"], &tag));
    }

    #[test]
    fn a_different_transcript_gives_different_keys() {
        let c = KeyPair::from_random([7; 32]);
        let s = KeyPair::from_random([9; 32]);
        let t = transcript(&c, &s);
        let mut t2 = t;
        t2.service = ServiceId::from_u32(16386);
        assert_ne!(c.agree(&s.public(), &t), c.agree(&s.public(), &t2));
    }

    #[test]
    fn low_order_peer_keys_are_refused() {
        let c = KeyPair::from_random([7; 32]);
        let s = KeyPair::from_random([9; 32]);
        let t = transcript(&c, &s);
        assert!(c.agree(&[0; 32], &t).is_none());
    }

    fn hex(b: &[u8]) -> String {
        let mut s = String::new();
        crate::wire::write_hex(&mut s, b).unwrap();
        s
    }

    /// The key-derivation vector of `docs/PROTOCOL.md` §2.12, checked against an
    /// independent implementation (Python `cryptography` + `hmac`).
    #[test]
    fn key_derivation_vector() {
        let c = KeyPair::from_random([7; 32]);
        let s = KeyPair::from_random([9; 32]);
        let t = transcript(&c, &s);
        let shared = c.shared_secret(&s.public()).unwrap();
        let keys = FlowKeys::derive(&shared, &t);
        assert_eq!(
            hex(&c.public()),
            "13be4feaeaf204c7fd3358fc9c00721881d174278128227ec674f37f7fe97b6d"
        );
        assert_eq!(
            hex(&s.public()),
            "57db4b359f23ae5e146e4e2512056704722506348c150c14753d0c933d04d421"
        );
        assert_eq!(
            hex(&shared.0),
            "2ffe325b2a26611bf1911325d4a62b33749b8f350d0e88ba91e316acaae66554"
        );
        assert_eq!(
            hex(&keys.client_to_server),
            "08e1183172df9b5484944db96d9f4538d9f0f0fca40e526f5a98ae764309e79a"
        );
        assert_eq!(
            hex(&keys.server_to_client),
            "49e1f7a7069b04743fa06d6826a9cf8b33bc2c5e25d0d1a87e3c4293a81cf221"
        );
        assert_eq!(
            hex(&keys.sign(Side::Client, &[b"header", b"payload"])),
            "d12a09187ddcd2df3e1b7a077edc4fe7"
        );
    }
}
