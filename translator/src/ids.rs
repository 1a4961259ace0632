//! `serval-translator service-id`: show every form of a ServiceID.
//!
//! Operators use this to find the id a policy file should name: from text forms, from a
//! legacy address (`--legacy 10.0.0.5:80`) or from a DNS name (`--name www.example.com`).

use core::fmt::Write as _;
use core::net::SocketAddr;

use serval_stack::wire::{LegacyAddr, ServiceId, ServicePrefix, legacy, name};

/// What to describe.
#[derive(Debug, Clone)]
pub enum IdInput {
    /// An id or prefix in any text form (`0x..[:bits]`, decimal, 64 hex digits, `default`).
    Text(String),
    /// A legacy socket address under a tag.
    Legacy {
        /// Namespace tag (bytes 0–3).
        tag: u32,
        /// The address to embed.
        addr: SocketAddr,
    },
    /// A DNS name.
    Name(String),
}

/// Error from [`describe`].
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// The text did not parse as an id or prefix.
    #[error("cannot parse {input:?} as a ServiceID or prefix: {source}")]
    Id {
        /// The text given.
        input: String,
        /// Why.
        source: serval_stack::wire::ParseIdError,
    },
    /// The DNS name was refused.
    #[error("cannot map DNS name {input:?}: {source}")]
    Name {
        /// The text given.
        input: String,
        /// Why.
        source: name::NameError,
    },
}

/// A multi-line, human-readable description of the id `input` denotes.
pub fn describe(input: &IdInput) -> Result<String, DescribeError> {
    let mut out = String::new();
    match input {
        IdInput::Text(text) => {
            let prefix: ServicePrefix = text.parse().map_err(|source| DescribeError::Id {
                input: text.clone(),
                source,
            })?;
            describe_id(&mut out, prefix.id());
            let _ = writeln!(out, "prefix     {prefix} ({} bits)", prefix.len());
        }
        IdInput::Legacy { tag, addr } => {
            let id = LegacyAddr::new(*tag, *addr).to_service_id();
            describe_id(&mut out, &id);
            let family = LegacyAddr::family_prefix(*tag, addr.is_ipv6());
            let _ = writeln!(
                out,
                "family     {family} (every {} address of tag {tag})",
                if addr.is_ipv6() { "IPv6" } else { "IPv4" }
            );
            let _ = writeln!(
                out,
                "tag        {}",
                ServicePrefix::new(id, legacy::TAG_PREFIX_BITS).expect("32 <= 256")
            );
        }
        IdInput::Name(text) => {
            let err = |source| DescribeError::Name {
                input: text.clone(),
                source,
            };
            let id = name::service_id_for_name(text).map_err(err)?;
            describe_id(&mut out, &id);
            let _ = writeln!(out, "name       {}", name::normalize(text).map_err(err)?);
            let _ = writeln!(out, "provider   {}", name::provider(text).map_err(err)?);
            let _ = writeln!(
                out,
                "prov.pfx   {}",
                name::provider_prefix(text).map_err(err)?
            );
        }
    }
    Ok(out)
}

fn describe_id(out: &mut String, id: &ServiceId) {
    let _ = writeln!(out, "serviceid  {id}");
    if let Some(l) = LegacyAddr::from_service_id(id) {
        let _ = writeln!(out, "legacy     tag {} -> {}", l.tag, l.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_description_names_the_address() {
        let d = describe(&IdInput::Legacy {
            tag: 8080,
            addr: "10.0.0.5:80".parse().unwrap(),
        })
        .unwrap();
        assert!(d.contains("legacy     tag 8080 -> 10.0.0.5:80"), "{d}");
        assert!(
            d.contains(&format!("family     0x00001f90{}:128", "00".repeat(12))),
            "{d}"
        );
    }

    #[test]
    fn bad_text_is_an_error_naming_the_input() {
        let e = describe(&IdInput::Text("0x5".into())).unwrap_err();
        assert!(e.to_string().contains("\"0x5\""), "{e}");
    }
}
