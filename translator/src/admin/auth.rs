//! Who may change the translator through the admin API.
//!
//! Reads (`GET`) are open to whoever reaches `admin.listen` (keep it on loopback or a
//! private interface: /metrics and /config are not secrets, but they describe the
//! deployment). Changes (`POST`: reload, drain, DELAY verdicts, flow moves) are allowed
//!
//! - from a loopback peer (the pod's own preStop hook, an operator on the host), or
//! - with `Authorization: Bearer <token>` matching the configured token
//!   (`admin.token` or `SERVAL_ADMIN_TOKEN`), compared in constant time.
//!
//! Without a token, a non-loopback peer can never POST (403): listening on 0.0.0.0 for
//! scrapes must not open the drain to the network.

use core::fmt;
use core::net::IpAddr;

use subtle::ConstantTimeEq;

/// Shortest token accepted: 16 characters (a guessable token is no protection).
pub const MIN_TOKEN_LEN: usize = 16;

/// Longest token accepted (and longest `Authorization` header compared).
pub const MAX_TOKEN_LEN: usize = 1024;

/// The admin API's bearer token. Its `Debug` never shows it.
#[derive(Clone)]
pub struct AdminToken(Box<[u8]>);

impl AdminToken {
    /// A token from its text: [`MIN_TOKEN_LEN`] to [`MAX_TOKEN_LEN`] visible ASCII
    /// characters (what fits an HTTP header unchanged).
    pub fn new(text: &str) -> Result<Self, String> {
        if text.len() < MIN_TOKEN_LEN || text.len() > MAX_TOKEN_LEN {
            return Err(format!(
                "the admin token must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters (it has {})",
                text.len()
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the admin token must be visible ASCII characters only".to_owned());
        }
        Ok(Self(text.as_bytes().into()))
    }

    /// Whether `given` is the token, in time independent of where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        // Lengths are not secret (the minimum is documented); contents are.
        self.0.len() == given.len() && bool::from(self.0.ct_eq(given))
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Why a change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token is configured and the peer is not loopback: 403.
    NoTokenConfigured,
    /// A token is configured and the request has none: 401.
    MissingToken,
    /// The token given is wrong (or the header is not `Bearer <token>`): 401.
    WrongToken,
}

impl Refusal {
    /// The HTTP status for it.
    pub fn status(self) -> u16 {
        match self {
            Self::NoTokenConfigured => 403,
            Self::MissingToken | Self::WrongToken => 401,
        }
    }

    /// What the answer says.
    pub fn message(self) -> &'static str {
        match self {
            Self::NoTokenConfigured => {
                "changes are allowed from loopback only: no admin token is configured"
            }
            Self::MissingToken => "an Authorization: Bearer <token> header is required",
            Self::WrongToken => "wrong admin token",
        }
    }
}

/// Whether `peer` is a loopback address (IPv4-mapped IPv6 included).
pub fn is_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// May a request from `peer` with `authorization` (the header's raw value) change the
/// translator, given the configured `token`? Pure: the whole policy of the module docs.
pub fn authorize(
    peer: IpAddr,
    authorization: Option<&[u8]>,
    token: Option<&AdminToken>,
) -> Result<(), Refusal> {
    if is_loopback(peer) {
        return Ok(());
    }
    let Some(token) = token else {
        return Err(Refusal::NoTokenConfigured);
    };
    let Some(header) = authorization else {
        return Err(Refusal::MissingToken);
    };
    if header.len() > MAX_TOKEN_LEN + 16 {
        return Err(Refusal::WrongToken);
    }
    // `Bearer` is case-insensitive (RFC 9110 §11.1), one or more spaces after it.
    let Some((scheme, rest)) = header.split_at_checked(6) else {
        return Err(Refusal::WrongToken);
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return Err(Refusal::WrongToken);
    }
    let given = rest.trim_ascii();
    if token.matches(given) {
        Ok(())
    } else {
        Err(Refusal::WrongToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef-token";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_may_always_change() {
        let token = AdminToken::new(T).unwrap();
        for peer in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(authorize(ip(peer), None, None), Ok(()), "{peer}");
            assert_eq!(authorize(ip(peer), None, Some(&token)), Ok(()), "{peer}");
        }
    }

    #[test]
    fn others_need_the_token_and_without_one_configured_never_may() {
        let token = AdminToken::new(T).unwrap();
        let peer = ip("10.1.2.3");
        let bearer = format!("Bearer {T}");
        assert_eq!(
            authorize(peer, Some(bearer.as_bytes()), None),
            Err(Refusal::NoTokenConfigured)
        );
        assert_eq!(Refusal::NoTokenConfigured.status(), 403);
        assert_eq!(
            authorize(peer, None, Some(&token)),
            Err(Refusal::MissingToken)
        );
        assert_eq!(
            authorize(peer, Some(bearer.as_bytes()), Some(&token)),
            Ok(())
        );
        assert_eq!(
            authorize(
                ip("::ffff:10.0.0.1"),
                Some(b"bearer   0123456789abcdef-token "),
                Some(&token)
            ),
            Ok(())
        );
        for wrong in [
            "Bearer 0123456789abcdef-tokeN",
            "Bearer 0123456789abcdef-token-and-more",
            "Bearer",
            "Basic 0123456789abcdef-token",
            "Bearer0123456789abcdef-token",
            "",
            "\u{0}\u{0}",
        ] {
            assert_eq!(
                authorize(peer, Some(wrong.as_bytes()), Some(&token)),
                Err(Refusal::WrongToken),
                "{wrong:?}"
            );
        }
        let huge = vec![b'a'; 1 << 20];
        assert_eq!(
            authorize(peer, Some(&huge), Some(&token)),
            Err(Refusal::WrongToken)
        );
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space in it, long enough").is_err());
        let t = AdminToken::new(T).unwrap();
        assert!(!format!("{t:?}").contains(T));
    }
}
