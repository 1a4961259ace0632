//! `serval-translator demo`: what the stack does today, on an embedded default, no config.
//!
//! It names services three ways (text, a legacy address, a DNS name), builds the service
//! table a router would hold for them, and resolves flows through it: longest-prefix match,
//! weighted spreading over replicas, a standby set taking over, DELAY and DROP. Until the
//! translator roles run on sockets, this is the main job; it prints a report and checks its
//! own results, so it doubles as a smoke test.

use core::fmt::Write as _;
use core::net::SocketAddr;

use serval_stack::service_table::{Action, Rule, ServiceTable, TableError};
use serval_stack::wire::{LegacyAddr, ServiceId, ServicePrefix, legacy, name};

/// A claim the demo checks about its own output; failing means the stack misbehaves.
#[derive(Debug, thiserror::Error)]
#[error("demo check failed: {0}")]
pub struct DemoError(String);

impl From<TableError> for DemoError {
    fn from(e: TableError) -> Self {
        Self(e.to_string())
    }
}

fn check(ok: bool, what: &str) -> Result<(), DemoError> {
    if ok {
        Ok(())
    } else {
        Err(DemoError(what.to_owned()))
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("demo addresses are valid literals")
}

/// Runs the demo and returns its report.
pub fn run() -> Result<String, DemoError> {
    let mut out = String::new();
    let www = name::service_id_for_name("www.example.com").map_err(|e| DemoError(e.to_string()))?;
    let api = name::service_id_for_name("api.example.com").map_err(|e| DemoError(e.to_string()))?;
    let provider = name::provider_prefix("example.com").map_err(|e| DemoError(e.to_string()))?;
    let legacy_web = LegacyAddr::new(legacy::DEFAULT_LEGACY_TAG, addr("10.0.0.5:80"));
    let legacy_id = legacy_web.to_service_id();
    let numeric: ServiceId = "16385"
        .parse()
        .map_err(|e: serval_stack::wire::ParseIdError| DemoError(e.to_string()))?;

    let _ = writeln!(out, "== Naming services");
    let _ = writeln!(out, "www.example.com   {www}");
    let _ = writeln!(out, "api.example.com   {api}");
    let _ = writeln!(
        out,
        "  provider prefix {provider}  (one router rule covers every example.com name)"
    );
    let _ = writeln!(out, "legacy 10.0.0.5:80 {legacy_id}");
    let _ = writeln!(out, "decimal 16385     {numeric}");
    check(
        provider.contains(&www) && provider.contains(&api),
        "names share their provider prefix",
    )?;
    check(
        LegacyAddr::from_service_id(&legacy_id) == Some(legacy_web),
        "legacy address round-trips",
    )?;

    // The table a service router holds: two replicas for example.com (weights 3:1), a
    // standby for them, the legacy-address family to a cross-translator, DELAY for a
    // service scaled to zero, DROP for a blocked one, and a default route.
    let mut table = ServiceTable::new();
    let (s1, s2, standby) = (
        addr("192.0.2.10:54325"),
        addr("192.0.2.11:54325"),
        addr("198.51.100.7:54325"),
    );
    table.insert(provider, Rule::forward(s1).with_weight(3))?;
    table.insert(provider, Rule::forward(s2).with_weight(1))?;
    table.insert(provider, Rule::forward(standby).with_priority(0))?;
    table.insert(
        LegacyAddr::family_prefix(legacy::DEFAULT_LEGACY_TAG, false),
        Rule::forward(addr("192.0.2.20:54325")),
    )?;
    let scaled_to_zero = prefix("0x0000d9:24")?;
    table.insert(scaled_to_zero, Rule::delay())?;
    let blocked = ServicePrefix::exact(numeric);
    table.insert(blocked, Rule::drop())?;
    table.insert(
        ServicePrefix::DEFAULT,
        Rule::forward(addr("192.0.2.1:54325")).with_priority(0),
    )?;

    let _ = writeln!(out, "\n== Service table ({} prefixes)", table.len());
    for entry in table.iter() {
        for t in entry.targets() {
            let _ = writeln!(
                out,
                "{:<44} prio {:>2} weight {} {}",
                entry.prefix().to_string(),
                t.priority(),
                t.weight(),
                describe(t.action())
            );
        }
    }

    let _ = writeln!(
        out,
        "\n== Resolving 10 000 new flows for www.example.com (flow hash)"
    );
    let (mut to_s1, mut to_s2) = (0u32, 0u32);
    for flow in 0..10_000u64 {
        match table
            .resolve_by_hash(&www, splitmix(flow), 0)
            .map(|p| *p.action())
        {
            Some(Action::Forward(a)) if a == s1 => to_s1 += 1,
            Some(Action::Forward(a)) if a == s2 => to_s2 += 1,
            other => return Err(DemoError(format!("unexpected resolution {other:?}"))),
        }
    }
    let _ = writeln!(
        out,
        "replica {s1}: {to_s1}   replica {s2}: {to_s2}   (weights 3:1)"
    );
    check(
        (7_000..=8_000).contains(&to_s1),
        "weights 3:1 spread flows about 75 % / 25 %",
    )?;

    let _ = writeln!(
        out,
        "\n== Replica {s2} withdraws: its flows move, the others stay"
    );
    let before: Vec<_> = (0..1000u64)
        .map(|f| {
            table
                .resolve_by_hash(&www, splitmix(f), 0)
                .map(|p| *p.action())
        })
        .collect();
    table.remove(&provider, &Action::Forward(s2))?;
    let moved = (0..1000u64)
        .filter(|&f| before[f as usize] == Some(Action::Forward(s1)))
        .filter(|&f| {
            table
                .resolve_by_hash(&www, splitmix(f), 0)
                .map(|p| *p.action())
                != Some(Action::Forward(s1))
        })
        .count();
    let _ = writeln!(out, "flows that were on {s1} and moved: {moved}");
    check(
        moved == 0,
        "rendezvous hashing keeps flows on surviving replicas",
    )?;
    table.remove(&provider, &Action::Forward(s1))?;
    let now = table.resolve_by_hash(&www, 1, 0).map(|p| *p.action());
    let _ = writeln!(
        out,
        "both replicas gone: www.example.com -> {}",
        now.map_or("nothing".into(), |a| describe(&a))
    );
    check(
        now == Some(Action::Forward(standby)),
        "the standby set takes over",
    )?;

    let _ = writeln!(out, "\n== Other services");
    for (label, id) in [
        ("legacy 10.0.0.5:80", legacy_id),
        ("0x0000d903… (scaled to zero)", ServiceId::from_u32(55555)),
        ("16385 (blocked)", numeric),
        ("anything else", ServiceId::from_bytes([0xab; 32])),
    ] {
        let action = table
            .lookup(&id)
            .and_then(|e| e.pick_by_hash(7))
            .map(|p| *p.action());
        let _ = writeln!(
            out,
            "{label:<30} -> {}",
            action.map_or("no route".into(), |a| describe(&a))
        );
    }
    let stats = table.stats();
    let _ = writeln!(
        out,
        "\ntable counters: {} resolved, {} dropped, {} without a match",
        stats.packets_resolved, stats.packets_dropped, stats.packets_no_match
    );
    let _ = writeln!(out, "demo OK: every check passed");
    Ok(out)
}

fn prefix(text: &str) -> Result<ServicePrefix, DemoError> {
    text.parse()
        .map_err(|e: serval_stack::wire::ParseIdError| DemoError(e.to_string()))
}

fn describe(action: &Action) -> String {
    match action {
        Action::Forward(a) => format!("FORWARD {a}"),
        Action::Demux(l) => format!("DEMUX listener {}", l.0),
        Action::Delay => "DELAY (held for a controller verdict)".into(),
        Action::Drop => "DROP".into(),
    }
}

/// A fixed, well-mixed flow hash for the demo's synthetic flows.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_passes_its_own_checks() {
        let report = super::run().unwrap();
        assert!(report.contains("demo OK"), "{report}");
    }
}
