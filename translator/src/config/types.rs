//! Value types of the policy file: durations, sizes, CIDR blocks, port sets and service
//! references. Each parses from the text an operator writes, refuses anything ambiguous with
//! a message that says what was expected, and prints back (for `check-config`) in a form that
//! parses to the same value.
//!
//! ServiceIDs and prefixes are parsed by `serval_stack::wire`'s `FromStr` (the one parser of
//! the project); DNS names by `serval_stack::wire::name`. This module only adds the two
//! prefixes (`name:` and `provider:`) that say a DNS name is meant.

use core::fmt;
use core::net::IpAddr;
use core::str::FromStr;
use core::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serval_stack::wire::{ServiceId, ServicePrefix, name};

/// Deserializes through `FromStr` (a string scalar; numbers are taken as their text) and
/// serializes through `Display`.
macro_rules! text_serde {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(de::Error::custom)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

// ------------------------------------------------------------------------------------------
// Durations

/// Longest duration accepted anywhere (365 days): deadlines computed from it cannot overflow
/// a monotonic clock, and nothing an operator means is longer.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A duration written with units: `250ms`, `30s`, `5m`, `1h30m`, `2d`; `0` alone means
/// zero (where a setting allows zero it means "off"). A bare number other than 0 is refused:
/// `timeout: 30` is seconds to one reader and milliseconds to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Self(Duration::from_secs(n))
    }

    /// `n` milliseconds.
    pub const fn millis(n: u64) -> Self {
        Self(Duration::from_millis(n))
    }

    /// The duration, or `None` when zero ("off").
    pub fn non_zero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }

    /// Whether it is zero.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Nothing given.
    #[error("empty duration (write e.g. 30s, 500ms, 5m, 1h; 0 for off)")]
    Empty,
    /// A number without a unit.
    #[error("duration {0:?} has no unit (write e.g. {0}s or {0}ms)")]
    NoUnit(String),
    /// Not `<number><unit>` pieces.
    #[error(
        "invalid duration {0:?} (expected pieces like 1h30m, 30s, 250ms; units ms, s, m, h, d)"
    )]
    Invalid(String),
    /// Longer than [`MAX_DURATION`].
    #[error("duration {0:?} is longer than 365 days")]
    TooLong(String),
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() {
            return Err(DurationError::Empty);
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            return if t.bytes().all(|b| b == b'0') {
                Ok(Self(Duration::ZERO))
            } else {
                Err(DurationError::NoUnit(t.to_owned()))
            };
        }
        let invalid = || DurationError::Invalid(t.to_owned());
        let mut total_ms: u128 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 12 {
                return Err(invalid());
            }
            let (num, after) = rest.split_at(digits);
            let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
            let (unit, next) = after.split_at(unit_len);
            let n: u128 = num.parse().map_err(|_| invalid())?;
            let per_ms: u128 = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(invalid()),
            };
            total_ms = total_ms.saturating_add(n.saturating_mul(per_ms));
            rest = next;
        }
        if total_ms > MAX_DURATION.as_millis() {
            return Err(DurationError::TooLong(t.to_owned()));
        }
        let ms = u64::try_from(total_ms).map_err(|_| DurationError::TooLong(t.to_owned()))?;
        Ok(Self(Duration::from_millis(ms)))
    }
}

impl fmt::Display for HumanDuration {
    /// The shortest unit form, largest units first (`1h30m`, `250ms`, `0s`). Sub-millisecond
    /// parts cannot be written in a policy and are not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

text_serde!(HumanDuration);

// ------------------------------------------------------------------------------------------
// Sizes

/// A byte count: a plain integer (bytes) or a number with a binary unit: `512B`, `64KiB`,
/// `1MiB`, `1GiB`. Decimal units (`KB`, `MB`) are refused: whether they mean 1000 or 1024
/// is exactly the ambiguity a buffer size should not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {0:?} (expected bytes, or a number with B, KiB, MiB or GiB)")]
pub struct SizeError(String);

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = || SizeError(t.to_owned());
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let (num, unit) = t.split_at(digits);
        let n: u64 = num.parse().map_err(|_| err())?;
        let mult: u64 = match unit.trim_start() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(err()),
        };
        n.checked_mul(mult).map(Self).ok_or_else(err)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("GiB", 30u32), ("MiB", 20), ("KiB", 10)] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

text_serde!(ByteSize);

// ------------------------------------------------------------------------------------------
// CIDR blocks

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`); a bare address is a
/// single host (`/32` or `/128`). Bits past the prefix length must be zero (`10.0.0.1/8` is
/// refused: it is almost always a typo for `/32` or for `10.0.0.0/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    len: u8,
}

/// Why a CIDR block did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpNetError {
    /// The address part is not an IP address.
    #[error("invalid IP network {0:?} (expected e.g. 10.0.0.0/8 or 2001:db8::/32)")]
    Invalid(String),
    /// The length is longer than the address.
    #[error("prefix length of {0:?} is longer than the address (32 for IPv4, 128 for IPv6)")]
    BadLength(String),
    /// Host bits set.
    #[error("{0:?} has bits set past its prefix length (did you mean {1}?)")]
    HostBits(String, String),
}

impl IpNet {
    /// The network `addr/len`, or `None` when `len` is too long or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let net = Self {
            addr: addr.to_canonical(),
            len,
        };
        (len <= net.max_len() && net.masked() == net.addr).then_some(net)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is `/0`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn max_len(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    fn bits(addr: IpAddr) -> (u128, u8) {
        match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    fn mask(len: u8, width: u8) -> u128 {
        if len == 0 {
            0
        } else {
            let ones = u128::MAX << (128 - u32::from(len));
            ones >> (128 - u32::from(width))
        }
    }

    fn masked(&self) -> IpAddr {
        let (bits, width) = Self::bits(self.addr);
        let m = bits & Self::mask(self.len.min(width), width);
        match self.addr {
            // `m` has at most 32 significant bits here.
            IpAddr::V4(_) => IpAddr::V4(u32::try_from(m).unwrap_or(0).into()),
            IpAddr::V6(_) => IpAddr::V6(m.into()),
        }
    }

    /// Whether `ip` is inside the network. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what
    /// a dual-stack socket reports for IPv4 peers) count as the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let (bits, width) = Self::bits(ip);
        let (net, _) = Self::bits(self.addr);
        bits & Self::mask(self.len, width) == net
    }

    /// Whether every address of `other` is inside `self`.
    pub fn covers(&self, other: &Self) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// Number of addresses, saturating at `u128::MAX`.
    pub fn size(&self) -> u128 {
        let host_bits = u32::from(self.max_len() - self.len);
        1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (ip_text, len_text) = match t.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (t, None),
        };
        let addr: IpAddr = ip_text
            .parse()
            .map_err(|_| IpNetError::Invalid(t.to_owned()))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => max,
            Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => l
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| IpNetError::BadLength(t.to_owned()))?,
            Some(_) => return Err(IpNetError::Invalid(t.to_owned())),
        };
        let net = Self { addr, len };
        let masked = net.masked();
        if masked != addr {
            return Err(IpNetError::HostBits(
                t.to_owned(),
                format!("{masked}/{len}"),
            ));
        }
        Ok(net)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

text_serde!(IpNet);

/// One CIDR block or a list of them (`destination: 10.0.0.0/8` or
/// `destination: [10.0.0.0/8, "2001:db8::/32"]`). Empty means "any address".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetList(pub Vec<IpNet>);

impl NetList {
    /// Whether `ip` is in one of the blocks; an empty list matches everything.
    pub fn matches(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n.contains(ip))
    }

    /// Whether every address `other` matches, `self` matches too.
    pub fn covers(&self, other: &Self) -> bool {
        if self.0.is_empty() {
            return true;
        }
        if other.0.is_empty() {
            return false;
        }
        other.0.iter().all(|o| self.0.iter().any(|s| s.covers(o)))
    }
}

impl<'de> Deserialize<'de> for NetList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NetList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CIDR block or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NetList, E> {
                v.parse().map(|n| NetList(vec![n])).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<NetList, A::Error> {
                let mut out = Vec::new();
                while let Some(n) = a.next_element::<IpNet>()? {
                    out.push(n);
                }
                Ok(NetList(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for NetList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

// ------------------------------------------------------------------------------------------
// Port sets

/// A set of TCP ports: `80`, `"80,443,8000-8100"` or `[80, 443, "8000-8100"]`; `any` (the
/// default) is every port. Port 0 is refused (no connection has it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet(Vec<(u16, u16)>);

/// Why a port set did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port or range {0:?} (expected 1-65535 or a range like 8000-8100)")]
pub struct PortError(String);

impl PortSet {
    /// Every port.
    pub const ANY: Self = Self(Vec::new());

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.0.is_empty() || self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
    }

    /// Whether every port of `other` is in `self`.
    pub fn covers(&self, other: &Self) -> bool {
        if self.0.is_empty() {
            return true;
        }
        if other.0.is_empty() {
            return false;
        }
        other
            .0
            .iter()
            .all(|&(lo, hi)| (lo..=hi).all(|p| self.contains(p)))
    }

    /// Whether this is the "every port" set.
    pub fn is_any(&self) -> bool {
        self.0.is_empty()
    }

    fn push_text(&mut self, text: &str) -> Result<(), PortError> {
        for piece in text.split(',') {
            let p = piece.trim();
            let err = || PortError(p.to_owned());
            let port = |s: &str| s.trim().parse::<u16>().ok().filter(|&n| n != 0);
            let range = match p.split_once('-') {
                Some((a, b)) => (port(a).ok_or_else(err)?, port(b).ok_or_else(err)?),
                None => {
                    let n = port(p).ok_or_else(err)?;
                    (n, n)
                }
            };
            if range.0 > range.1 {
                return Err(err());
            }
            self.0.push(range);
        }
        Ok(())
    }
}

impl FromStr for PortSet {
    type Err = PortError;

    /// `any` (what [`Display`](fmt::Display) prints for the full set) or port pieces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "any" {
            return Ok(Self::ANY);
        }
        let mut set = Self::default();
        set.push_text(s)?;
        Ok(set)
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("any");
        }
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for PortSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PortSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port, a range like \"8000-8100\", or a list of them")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSet, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSet, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSet, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<PortSet, A::Error> {
                let mut set = PortSet::default();
                while let Some(piece) = a.next_element::<PortPiece>()? {
                    set.push_text(&piece.0).map_err(de::Error::custom)?;
                }
                if set.0.is_empty() {
                    return Err(de::Error::custom(
                        "empty port list (leave `ports` out to match every port)",
                    ));
                }
                Ok(set)
            }
        }
        d.deserialize_any(V)
    }
}

/// One element of a port list: a number or a range string.
struct PortPiece(String);

impl<'de> Deserialize<'de> for PortPiece {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortPiece;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port or a range like \"8000-8100\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortPiece, E> {
                Ok(PortPiece(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortPiece, E> {
                Ok(PortPiece(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortPiece, E> {
                Ok(PortPiece(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for PortSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

// ------------------------------------------------------------------------------------------
// Service references

/// Why a service reference did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceRefError {
    /// The id text did not parse (`serval_stack::wire::ParseIdError` says why).
    #[error("invalid ServiceID {text:?}: {source}")]
    Id {
        /// The text.
        text: String,
        /// Why.
        source: serval_stack::wire::ParseIdError,
    },
    /// The DNS name was refused.
    #[error("invalid DNS name {text:?}: {source}")]
    Name {
        /// The text.
        text: String,
        /// Why.
        source: name::NameError,
    },
    /// A prefix form where one exact ServiceID is needed.
    #[error("{0:?} is a prefix; one exact ServiceID is needed here (an id, or name:<dns-name>)")]
    NotExact(String),
}

impl ServiceRefError {
    /// `map_err` for a text the stack's id parser refused (exact id or prefix alike).
    fn id(text: &str) -> impl FnOnce(serval_stack::wire::ParseIdError) -> Self {
        move |source| Self::Id {
            text: text.to_owned(),
            source,
        }
    }

    /// `map_err` for a refused DNS name, whichever form carried it.
    fn name(text: &str) -> impl FnOnce(name::NameError) -> Self {
        move |source| Self::Name {
            text: text.to_owned(),
            source,
        }
    }
}

/// `text()`, `Display` and serde for a type that keeps the text it parsed from (`text`):
/// it prints back exactly what the operator wrote.
macro_rules! as_written {
    ($ty:ty) => {
        impl $ty {
            /// The text as written.
            pub fn text(&self) -> &str {
                &self.text
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.text)
            }
        }

        text_serde!($ty);
    };
}

/// An exact ServiceID as a policy names it: any text form `ServiceId` parses (`0x<hex>`,
/// 64 hex digits, a decimal `u32`, `default`) or `name:<dns-name>` (the id the DNS-name
/// profile derives, `serval_stack::wire::name`). A bare DNS name is refused on purpose: a
/// hex id written without `0x` would otherwise silently become the hash of a "name".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    text: String,
    id: ServiceId,
}

impl ServiceRef {
    /// The id.
    pub fn id(&self) -> ServiceId {
        self.id
    }
}

impl FromStr for ServiceRef {
    type Err = ServiceRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let id = if let Some(n) = text.strip_prefix("name:") {
            name::service_id_for_name(n).map_err(ServiceRefError::name(n))?
        } else if text.starts_with("provider:") || text.contains(':') {
            return Err(ServiceRefError::NotExact(text.to_owned()));
        } else {
            text.parse::<ServiceId>()
                .map_err(ServiceRefError::id(text))?
        };
        Ok(Self {
            text: text.to_owned(),
            id,
        })
    }
}

as_written!(ServiceRef);

/// A set of ServiceIDs (a prefix) as a policy names it: any text form `ServicePrefix`
/// parses (`0x<hex>:<bits>`, an exact id, `default` for everything), `name:<dns-name>` (that
/// name's exact id) or `provider:<domain>` (the 96-bit prefix shared by every name of the
/// domain's provider, e.g. every `*.example.com`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceMatch {
    text: String,
    prefix: ServicePrefix,
}

impl ServiceMatch {
    /// The prefix.
    pub fn prefix(&self) -> ServicePrefix {
        self.prefix
    }
}

impl FromStr for ServiceMatch {
    type Err = ServiceRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let prefix = if let Some(n) = text.strip_prefix("name:") {
            ServicePrefix::exact(name::service_id_for_name(n).map_err(ServiceRefError::name(n))?)
        } else if let Some(n) = text.strip_prefix("provider:") {
            name::provider_prefix(n).map_err(ServiceRefError::name(n))?
        } else {
            text.parse::<ServicePrefix>()
                .map_err(ServiceRefError::id(text))?
        };
        Ok(Self {
            text: text.to_owned(),
            prefix,
        })
    }
}

as_written!(ServiceMatch);

// ------------------------------------------------------------------------------------------
// DNS name patterns

/// A DNS name pattern of the DNS responder: an exact name (`www.example.com`) or a
/// wildcard for every name below a domain (`*.example.com`, which does not match
/// `example.com` itself). Stored normalised (lower case, no trailing dot).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamePattern {
    wildcard: bool,
    /// The exact name, or the domain under the `*.`.
    domain: String,
}

impl NamePattern {
    /// Whether `normalized` (already normalised by `name::normalize`) matches.
    pub fn matches(&self, normalized: &str) -> bool {
        if self.wildcard {
            normalized.len() > self.domain.len()
                && normalized.ends_with(self.domain.as_str())
                && normalized.as_bytes()[normalized.len() - self.domain.len() - 1] == b'.'
        } else {
            normalized == self.domain
        }
    }

    /// Whether every name `other` matches, `self` matches too.
    pub fn covers(&self, other: &Self) -> bool {
        match (self.wildcard, other.wildcard) {
            (false, false) => self.domain == other.domain,
            (false, true) => false,
            (true, false) => self.matches(&other.domain),
            (true, true) => self.domain == other.domain || self.matches(&other.domain),
        }
    }
}

impl FromStr for NamePattern {
    type Err = ServiceRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let (wildcard, rest) = match text.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, text),
        };
        let domain = name::normalize(rest).map_err(ServiceRefError::name(text))?;
        Ok(Self { wildcard, domain })
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.domain)
    }
}

text_serde!(NamePattern);

// ------------------------------------------------------------------------------------------
// Host and port

/// A DNS name and a port (`web.internal:8080`) for backends found by DNS.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Normalised host name.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Why a host:port did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host:port {0:?} (expected a DNS name and a port, e.g. web.internal:8080)")]
pub struct HostPortError(String);

impl FromStr for HostPort {
    type Err = HostPortError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = || HostPortError(t.to_owned());
        let (host, port) = t.rsplit_once(':').ok_or_else(err)?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(err)?;
        if host.parse::<IpAddr>().is_ok() {
            // An address belongs in `address:`, where it is not re-resolved.
            return Err(err());
        }
        let host = name::normalize(host).map_err(|_| err())?;
        Ok(Self { host, port })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

text_serde!(HostPort);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_table() {
        let ok = [
            ("0", 0u64),
            ("000", 0),
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            ("1m500ms", 60_500),
        ];
        for (text, ms) in ok {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.0, Duration::from_millis(ms), "{text}");
            // Display parses back to the same value.
            assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d, "{text}");
        }
        for bad in ["", "30", "1.5s", "s", "30 s", "10y", "-1s", "366d", "1h-1m"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(HumanDuration::secs(5400).to_string(), "1h30m");
        assert_eq!(HumanDuration::millis(0).to_string(), "0s");
    }

    #[test]
    fn sizes_table() {
        for (text, n) in [
            ("4096", 4096u64),
            ("512B", 512),
            ("64KiB", 65_536),
            ("1MiB", 1 << 20),
            ("2GiB", 2 << 30),
        ] {
            let s: ByteSize = text.parse().unwrap();
            assert_eq!(s.0, n, "{text}");
            assert_eq!(s.to_string().parse::<ByteSize>().unwrap(), s);
        }
        for bad in ["", "64KB", "1.5MiB", "MiB", "99999999999GiB", "-1"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cidr_table() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.9.9.9".parse().unwrap()), "v4-mapped");
        assert!(!n.contains("2001:db8::1".parse().unwrap()));
        let h: IpNet = "192.0.2.7".parse().unwrap();
        assert_eq!(h.len(), 32);
        assert_eq!(h.size(), 1);
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.covers(&n) && !n.covers(&all) && n.overlaps(&all));
        assert_eq!("198.18.0.0/15".parse::<IpNet>().unwrap().size(), 131_072);
        match "10.0.0.1/8".parse::<IpNet>() {
            Err(IpNetError::HostBits(_, fix)) => assert_eq!(fix, "10.0.0.0/8"),
            other => panic!("{other:?}"),
        }
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/",
            "10.0.0.0/a",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn port_sets() {
        let p: PortSet = "80, 443,8000-8100".parse().unwrap();
        assert!(p.contains(80) && p.contains(8050) && !p.contains(81));
        assert_eq!(p.to_string(), "80,443,8000-8100");
        assert!(PortSet::ANY.contains(1) && PortSet::ANY.covers(&p) && !p.covers(&PortSet::ANY));
        assert_eq!("any".parse::<PortSet>().unwrap(), PortSet::ANY);
        assert_eq!(PortSet::ANY.to_string(), "any");
        assert!(p.covers(&"8000-8010".parse().unwrap()));
        for bad in ["0", "70000", "90-80", "a", "", "80,"] {
            assert!(bad.parse::<PortSet>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn service_refs_reuse_the_stack_parsers() {
        let r: ServiceRef = "0x00001f90".parse().unwrap();
        assert_eq!(r.id(), ServiceId::from_u32(8080));
        let r: ServiceRef = "16385".parse().unwrap();
        assert_eq!(r.id(), ServiceId::from_u32(16385));
        let r: ServiceRef = "name:WWW.Example.com.".parse().unwrap();
        assert_eq!(
            r.id(),
            name::service_id_for_name("www.example.com").unwrap()
        );
        // A bare name is refused (it would hide a hex id missing its 0x).
        assert!(matches!(
            "www.example.com".parse::<ServiceRef>(),
            Err(ServiceRefError::Id { .. })
        ));
        assert!(matches!(
            "0x01:8".parse::<ServiceRef>(),
            Err(ServiceRefError::NotExact(_))
        ));
        assert!(matches!(
            "provider:example.com".parse::<ServiceRef>(),
            Err(ServiceRefError::NotExact(_))
        ));
        assert!(matches!(
            "name:bad..name".parse::<ServiceRef>(),
            Err(ServiceRefError::Name { .. })
        ));

        let m: ServiceMatch = "provider:example.com".parse().unwrap();
        assert_eq!(m.prefix(), name::provider_prefix("example.com").unwrap());
        assert!(
            m.prefix()
                .contains(&name::service_id_for_name("api.example.com").unwrap())
        );
        let m: ServiceMatch = "0x0000d9:24".parse().unwrap();
        assert_eq!(m.prefix().len(), 24);
        let m: ServiceMatch = "default".parse().unwrap();
        assert!(m.prefix().is_empty());
        assert!(
            "0x0000d9:8".parse::<ServiceMatch>().is_err(),
            "bits past prefix"
        );
    }

    #[test]
    fn name_patterns() {
        let w: NamePattern = "*.Example.com".parse().unwrap();
        assert!(w.matches("www.example.com") && w.matches("a.b.example.com"));
        assert!(!w.matches("example.com") && !w.matches("wwwexample.com"));
        let e: NamePattern = "www.example.com.".parse().unwrap();
        assert!(e.matches("www.example.com") && !e.matches("x.www.example.com"));
        assert!(w.covers(&e) && !e.covers(&w));
        assert!(w.covers(&"*.eu.example.com".parse().unwrap()));
        assert!("*.".parse::<NamePattern>().is_err());
    }

    #[test]
    fn host_port() {
        let h: HostPort = "Web.Internal:8080".parse().unwrap();
        assert_eq!((h.host.as_str(), h.port), ("web.internal", 8080));
        for bad in ["web", "web:0", "10.0.0.1:80", "web:http", ":80"] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad:?} accepted");
        }
    }
}
