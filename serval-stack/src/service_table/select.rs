//! Choosing one target in an active set: weighted random (the original's ANYCAST mode) and
//! weighted rendezvous hashing by flow hash (deterministic, minimal disruption).

use super::rule::{Action, Target};

/// A chosen target: a handle for [`ServiceTable::record`](super::ServiceTable::record) and
/// the action to carry out.
///
/// The handle names the entry's slot and the target's position; `record` checks that the
/// target there still has this action, so a handle kept across table updates is refused
/// rather than counted on a neighbour.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Pick {
    pub(super) slot: u32,
    pub(super) index: u32,
    pub(super) action: Action,
}

impl Pick {
    pub(super) fn new(slot: u32, index: usize, action: Action) -> Self {
        Self {
            slot,
            // An entry holds far fewer than 2^32 targets; saturate rather than wrap so a
            // impossible overflow can only make `record` refuse the handle.
            index: u32::try_from(index).unwrap_or(u32::MAX),
            action,
        }
    }

    /// What to do with the packet.
    pub const fn action(&self) -> &Action {
        &self.action
    }
}

/// Index of a target chosen with probability weight / total, or `None` for an empty set.
pub(super) fn weighted_random(
    targets: &[Target],
    rng: &mut impl rand_core::RngCore,
) -> Option<usize> {
    match targets {
        [] => None,
        [_] => Some(0),
        _ => {
            let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
            // Multiply-shift maps a uniform u64 onto [0, total); the bias is below 2^-32
            // because total < 2^32 * targets.len().
            let r = ((u128::from(rng.next_u64()) * u128::from(total)) >> 64) as u64;
            let mut acc = 0u64;
            for (i, t) in targets.iter().enumerate() {
                acc += u64::from(t.weight);
                if r < acc {
                    return Some(i);
                }
            }
            Some(targets.len() - 1)
        }
    }
}

/// Weighted rendezvous (highest random weight) hashing: every target scores
/// `w / -ln(u)` with `u` a uniform (0, 1) value derived from the flow hash and the target's
/// identity; the highest score wins. A target wins with probability `w / Σw`, and a target's
/// score does not depend on the others, so removing one target moves only its own flows.
pub(super) fn rendezvous(targets: &[Target], flow_hash: u64) -> Option<usize> {
    match targets {
        [] => None,
        [_] => Some(0),
        _ => {
            let mut best = 0;
            let mut best_score = f64::NEG_INFINITY;
            for (i, t) in targets.iter().enumerate() {
                let u = unit(mix(flow_hash ^ action_hash(&t.action)));
                // ln(u) < 0 for u in (0, 1), so the score is positive and finite.
                let score = f64::from(t.weight) / -u.ln();
                if score > best_score {
                    best = i;
                    best_score = score;
                }
            }
            Some(best)
        }
    }
}

/// A stable 64-bit identity of an action: what rendezvous hashing keys a target on.
pub(super) fn action_hash(action: &Action) -> u64 {
    use core::net::SocketAddr;
    let (tag, a, b): (u64, u128, u64) = match action {
        Action::Forward(SocketAddr::V4(s)) => (1, u128::from(s.ip().to_bits()), s.port().into()),
        Action::Forward(SocketAddr::V6(s)) => (2, s.ip().to_bits(), s.port().into()),
        Action::Demux(l) => (3, u128::from(l.0), 0),
        Action::Delay => (4, 0, 0),
        Action::Drop => (5, 0, 0),
    };
    let mut h = mix(tag ^ 0x9e37_79b9_7f4a_7c15);
    h = mix(h ^ (a as u64));
    h = mix(h ^ ((a >> 64) as u64));
    mix(h ^ b)
}

/// The 64-bit finaliser of MurmurHash3: a bijection with full avalanche.
const fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Maps a hash to a uniform value in the open interval (0, 1).
fn unit(h: u64) -> f64 {
    // 53 random bits, offset by half a step so neither 0 nor 1 can come out.
    ((h >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}
