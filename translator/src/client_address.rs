//! The legacy client's address, carried from the client translator to the server
//! translator in a PROXY protocol v2 preamble on the Serval stream.
//!
//! **Client side.** Right after its Serval flow is connected and before relaying, the client
//! translator always writes one PROXY v2 header (`PROXY` command, `STREAM`; built with
//! `ppp`): source = the legacy client's TCP address, destination = the original destination
//! (the redirect's `SO_ORIGINAL_DST`, or the listener's local address).
//!
//! **Server side.** On each accepted flow the server translator reads up to the first 16
//! bytes ([`read`]). When they begin with the 12-byte PROXY v2 signature, it reads the
//! declared length (refused above [`MAX_PREAMBLE`] bytes), parses the header with `ppp` and
//! strips it; otherwise (a native Serval client) the bytes read are handed back so the
//! caller writes them to the backend first: nothing is lost. Reading stops as soon as the
//! bytes diverge from the signature, so a native client never waits for 16 bytes it has not
//! sent. The read is bounded by a timeout: a peer silent from the start is taken for a
//! native client of a server-speaks-first protocol (SMTP, MySQL) and relayed as before (the
//! relay's idle timeout applies); a peer that stops inside a preamble is refused.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::io;

use ppp::v2::{Addresses, Builder, Command, Header, Protocol, Version};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// The PROXY v2 signature (the first 12 bytes of every v2 header).
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest address block (bytes after the 16-byte fixed part) accepted.
pub const MAX_PREAMBLE: usize = 512;

/// The 16-byte fixed part of a v2 header.
const FIXED: usize = 16;

/// The preamble the client translator writes: `source` = the legacy client, `destination`
/// = the original destination.
pub fn preamble(source: SocketAddr, destination: SocketAddr) -> io::Result<Vec<u8>> {
    let (source, destination) = crate::server::proxy_header::same_family(source, destination);
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, destination),
    )
    .build()
}

/// What the start of a flow said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A preamble, stripped. `addresses` is `None` for a `LOCAL` command or an unspecified
    /// or UNIX family (nothing to use).
    Carried {
        /// (legacy client, original destination).
        addresses: Option<(SocketAddr, SocketAddr)>,
    },
    /// No preamble: these first bytes belong to the stream and must be passed on.
    Native(Vec<u8>),
}

/// Why a preamble was refused.
#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    /// The declared length is above [`MAX_PREAMBLE`].
    #[error("PROXY preamble declares {0} bytes (at most {MAX_PREAMBLE})")]
    TooLong(usize),
    /// The header does not parse.
    #[error("garbled PROXY preamble: {0}")]
    Garbled(String),
    /// The peer stopped inside the preamble.
    #[error("PROXY preamble not complete within {0:?}")]
    TimedOut(Duration),
    /// Reading failed (or the stream ended inside the preamble).
    #[error("reading the PROXY preamble: {0}")]
    Io(#[from] io::Error),
}

impl PreambleError {
    /// A short label for counters and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLong(_) => "preamble_too_long",
            Self::Garbled(_) => "preamble_garbled",
            Self::TimedOut(_) => "preamble_timeout",
            Self::Io(_) => "preamble_io",
        }
    }
}

/// What a byte prefix of a flow says (the sans-IO half of [`read`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Every byte so far matches a preamble that is not complete: read more (at least up
    /// to `.0` bytes in all). Never more than `FIXED + MAX_PREAMBLE`.
    NeedMore(usize),
    /// The bytes diverge from the PROXY v2 signature: no preamble, the stream is native.
    Native,
    /// A whole preamble of `len` bytes (at most the input's length) was parsed.
    Parsed {
        /// Same meaning as in [`Start::Carried`].
        addresses: Option<(SocketAddr, SocketAddr)>,
        /// Header length in bytes: the bytes after it belong to the stream.
        len: usize,
    },
}

/// Examines the first bytes of a flow without doing IO: need more, native, or a parsed
/// preamble (with its length). Errors are [`PreambleError::TooLong`] or
/// [`PreambleError::Garbled`]. This is what [`read`] runs on the bytes it has; the fuzz
/// target `proxy_preamble` feeds it arbitrary prefixes.
pub fn scan(bytes: &[u8]) -> Result<Scan, PreambleError> {
    let m = bytes.len().min(SIGNATURE.len());
    if bytes[..m] != SIGNATURE[..m] {
        return Ok(Scan::Native);
    }
    if bytes.len() < FIXED {
        return Ok(Scan::NeedMore(FIXED));
    }
    let declared = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if declared > MAX_PREAMBLE {
        return Err(PreambleError::TooLong(declared));
    }
    let len = FIXED + declared;
    let Some(whole) = bytes.get(..len) else {
        return Ok(Scan::NeedMore(len));
    };
    let header = Header::try_from(whole).map_err(|e| PreambleError::Garbled(e.to_string()))?;
    if header.command != Command::Proxy {
        return Ok(Scan::Parsed {
            addresses: None,
            len,
        });
    }
    let addresses = match header.addresses {
        Addresses::IPv4(a) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        Addresses::IPv6(a) => Some((
            SocketAddr::new(IpAddr::V6(a.source_address).to_canonical(), a.source_port),
            SocketAddr::new(
                IpAddr::V6(a.destination_address).to_canonical(),
                a.destination_port,
            ),
        )),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    };
    Ok(Scan::Parsed { addresses, len })
}

/// Reads the start of a flow (see the module docs), within `timeout`.
///
/// Reads only as far as [`scan`] asks: the 16-byte fixed part (stopping as soon as the
/// bytes diverge from the signature), then exactly the declared address block, so no byte
/// after the preamble is consumed.
pub async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> Result<Start, PreambleError> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; FIXED];
    let mut n = 0;
    while n < FIXED {
        let got = match tokio::time::timeout_at(deadline, r.read(&mut buf[n..])).await {
            Ok(r) => r?,
            Err(_) if n == 0 => return Ok(Start::Native(Vec::new())),
            Err(_) => {
                if scan(&buf[..n])? == Scan::Native {
                    return Ok(Start::Native(buf[..n].to_vec()));
                }
                return Err(PreambleError::TimedOut(timeout));
            }
        };
        if got == 0 {
            // The stream ended: whatever came is data.
            return Ok(Start::Native(buf[..n].to_vec()));
        }
        n += got;
        if scan(&buf[..n])? == Scan::Native {
            return Ok(Start::Native(buf[..n].to_vec()));
        }
    }
    let mut whole = buf.to_vec();
    loop {
        match scan(&whole)? {
            Scan::Native => return Ok(Start::Native(whole)),
            Scan::Parsed { addresses, .. } => return Ok(Start::Carried { addresses }),
            Scan::NeedMore(want) => {
                let have = whole.len();
                // `want` is bounded by FIXED + MAX_PREAMBLE (scan refuses longer).
                whole.resize(want.max(have), 0);
                match tokio::time::timeout_at(deadline, r.read_exact(&mut whole[have..])).await {
                    Ok(r) => {
                        r?;
                    }
                    Err(_) => return Err(PreambleError::TimedOut(timeout)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn preamble_parsed_and_stripped() {
        let mut input = preamble(sa("10.50.0.1:40000"), sa("127.0.0.1:8081")).unwrap();
        input.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
        let mut r = &input[..];
        let start = read(&mut r, T).await.unwrap();
        assert_eq!(
            start,
            Start::Carried {
                addresses: Some((sa("10.50.0.1:40000"), sa("127.0.0.1:8081")))
            }
        );
        assert_eq!(r, b"GET / HTTP/1.0\r\n\r\n");
        // IPv6 and mixed families come back canonical.
        let v6 = preamble(sa("[2001:db8::1]:1"), sa("192.0.2.1:2")).unwrap();
        let Start::Carried { addresses } = read(&mut &v6[..], T).await.unwrap() else {
            panic!()
        };
        assert_eq!(addresses, Some((sa("[2001:db8::1]:1"), sa("192.0.2.1:2"))));
    }

    /// `data` is native: the bytes `read` hands back, then the rest of the stream, are all
    /// of it.
    async fn assert_handed_back(data: &[u8]) {
        let mut r = data;
        let Start::Native(first) = read(&mut r, T).await.unwrap() else {
            panic!()
        };
        let mut all = first;
        all.extend_from_slice(r);
        assert_eq!(all, data);
    }

    #[tokio::test]
    async fn native_bytes_handed_back() {
        // Diverges on the first byte.
        assert_handed_back(b"hello, world: more than sixteen bytes").await;
        // Diverges after a signature prefix.
        assert_handed_back(b"\r\n\r\nnot a proxy header at all").await;
        // Short and ended.
        assert_eq!(
            read(&mut &b"\r\n"[..], T).await.unwrap(),
            Start::Native(b"\r\n".to_vec())
        );
    }

    #[tokio::test]
    async fn silent_peer_is_native_but_stalled_preamble_refused() {
        let (mut a, _b) = tokio::io::duplex(64);
        let t = Duration::from_millis(50);
        assert_eq!(read(&mut a, t).await.unwrap(), Start::Native(Vec::new()));
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut b, &SIGNATURE[..8])
            .await
            .unwrap();
        assert!(matches!(
            read(&mut a, t).await,
            Err(PreambleError::TimedOut(_))
        ));
    }

    #[tokio::test]
    async fn oversize_and_garbled_refused() {
        let mut big = SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11]);
        big.extend_from_slice(&600u16.to_be_bytes());
        big.resize(16 + 600, 0);
        let e = read(&mut &big[..], T).await.unwrap_err();
        assert!(matches!(e, PreambleError::TooLong(600)), "{e}");
        let mut bad = SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x99, 0x11, 0, 12]);
        bad.resize(16 + 12, 0);
        let e = read(&mut &bad[..], T).await.unwrap_err();
        assert!(matches!(e, PreambleError::Garbled(_)), "{e}");
        // Ends inside the address block.
        let mut cut = preamble(sa("10.0.0.1:1"), sa("10.0.0.2:2")).unwrap();
        cut.truncate(20);
        assert!(matches!(
            read(&mut &cut[..], T).await,
            Err(PreambleError::Io(_))
        ));
    }

    /// The sans-IO half: prefixes ask for more, a whole header parses with its length
    /// (trailing stream bytes untouched), divergence is native.
    #[test]
    fn scan_prefixes_and_lengths() {
        let p = preamble(sa("10.50.0.1:40000"), sa("127.0.0.1:8081")).unwrap();
        for n in 0..p.len() {
            let want = if n < FIXED { FIXED } else { p.len() };
            assert_eq!(scan(&p[..n]).unwrap(), Scan::NeedMore(want), "{n}");
        }
        let mut more = p.clone();
        more.extend_from_slice(b"data");
        assert_eq!(
            scan(&more).unwrap(),
            Scan::Parsed {
                addresses: Some((sa("10.50.0.1:40000"), sa("127.0.0.1:8081"))),
                len: p.len()
            }
        );
        assert_eq!(scan(b"GET /").unwrap(), Scan::Native);
        assert_eq!(scan(b"\r\n\r\nx").unwrap(), Scan::Native);
        let mut big = SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(scan(&big), Err(PreambleError::TooLong(65_535))));
    }
}
