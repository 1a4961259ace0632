//! Choosing a backend among the eligible ones: pure, no I/O, no clock.
//!
//! | mode | how | why |
//! |---|---|---|
//! | round robin | each eligible backend in turn | equal backends, short connections |
//! | weighted | smooth weighted round robin (nginx): every pick adds each backend's weight to its running score, takes the highest and subtracts the total | spreads a 3:1 split as a,a,b,a rather than a,a,a,b |
//! | least connections | fewest active connections per unit of weight; ties go round robin | long-lived connections (HAProxy's advice) |
//! | consistent hash | weighted rendezvous (highest random weight) hash of the flow's key and each backend's address | the same client keeps its backend while that backend stays eligible; when one goes, only its clients move |
//!
//! The consistent-hash key is the **Serval peer's UDP address** (the client translator), not
//! the flow's ServiceID: every flow of a service carries the same ServiceID, so hashing it
//! would pin a whole service to one backend. The legacy client's own address is not carried
//! over Serval yet; once it is, it becomes the better key. Rendezvous hashing needs no ring
//! or table to rebuild when DNS changes the backend set, and a retry simply takes the next
//! best score. The hash is FNV-1a with a SplitMix64 finaliser: fixed, seedless and stable
//! across builds and processes, so two server translators in front of the same backends pick
//! alike.

use crate::config::model::Balance;

/// What the balancer knows of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Relative weight (at least 1).
    pub weight: u32,
    /// Connections in progress.
    pub active: u64,
    /// Hash of the backend's address (for rendezvous hashing).
    pub hash: u64,
    /// Whether it may be chosen now (healthy, not ejected, not tried by this flow).
    pub eligible: bool,
}

/// Per-pool balancing state: the round-robin cursor and the smooth-weighted scores.
#[derive(Debug, Default, Clone)]
pub(crate) struct Balancer {
    cursor: usize,
    scores: Vec<i64>,
}

impl Balancer {
    /// Forgets the scores (the backend set changed, so indexes mean other backends).
    pub(crate) fn reset(&mut self) {
        self.scores.clear();
    }

    /// The index of the backend to use, or `None` when none is eligible.
    pub(crate) fn pick(
        &mut self,
        mode: Balance,
        backends: &[Candidate],
        key: u64,
    ) -> Option<usize> {
        let n = backends.len();
        if !backends.iter().any(|b| b.eligible) {
            return None;
        }
        match mode {
            Balance::RoundRobin => {
                let start = self.cursor % n;
                let i = (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| backends[i].eligible)?;
                self.cursor = i.wrapping_add(1);
                Some(i)
            }
            Balance::Weighted => {
                if self.scores.len() != n {
                    self.scores = vec![0; n];
                }
                let mut total: i64 = 0;
                let mut best: Option<usize> = None;
                for (i, b) in backends.iter().enumerate() {
                    if !b.eligible {
                        continue;
                    }
                    let w = i64::from(b.weight.max(1));
                    self.scores[i] = self.scores[i].saturating_add(w);
                    total = total.saturating_add(w);
                    if best.is_none_or(|j| self.scores[i] > self.scores[j]) {
                        best = Some(i);
                    }
                }
                let i = best?;
                self.scores[i] = self.scores[i].saturating_sub(total);
                Some(i)
            }
            Balance::LeastConnections => {
                // Compare active/weight by cross-multiplying (no division, no float).
                let start = self.cursor % n;
                let mut best: Option<usize> = None;
                for i in (0..n).map(|k| (start + k) % n) {
                    let b = &backends[i];
                    if !b.eligible {
                        continue;
                    }
                    let better = best.is_none_or(|j| {
                        let o = &backends[j];
                        u128::from(b.active) * u128::from(o.weight.max(1))
                            < u128::from(o.active) * u128::from(b.weight.max(1))
                    });
                    if better {
                        best = Some(i);
                    }
                }
                let i = best?;
                self.cursor = i.wrapping_add(1);
                Some(i)
            }
            Balance::ConsistentHash => backends
                .iter()
                .enumerate()
                .filter(|(_, b)| b.eligible)
                .map(|(i, b)| (i, rendezvous_score(key, b.hash, b.weight)))
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
                .map(|(i, _)| i),
        }
    }
}

/// Weighted rendezvous score: `weight / -ln(u)` with `u` uniform in (0, 1) from the pair's
/// hash (Schindelhauer and Schomaker's weighted HRW). Larger wins.
fn rendezvous_score(key: u64, backend: u64, weight: u32) -> f64 {
    let h = mix(key ^ mix(backend));
    // 53 random bits into (0, 1): never 0 (ln 0) nor 1 (division by 0).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight.max(1)) / -u.ln()
}

/// SplitMix64's finaliser: a bijective 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of `bytes` (FNV-1a, then mixed).
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// A stable hash of a socket address (family, IP, port).
pub(crate) fn hash_addr(addr: core::net::SocketAddr) -> u64 {
    let mut bytes = Vec::with_capacity(19);
    match addr.ip() {
        core::net::IpAddr::V4(ip) => {
            bytes.push(4);
            bytes.extend_from_slice(&ip.octets());
        }
        core::net::IpAddr::V6(ip) => {
            bytes.push(6);
            bytes.extend_from_slice(&ip.octets());
        }
    }
    bytes.extend_from_slice(&addr.port().to_be_bytes());
    hash64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Candidate {
                weight,
                active: 0,
                hash: hash64(&[i as u8]),
                eligible: true,
            })
            .collect()
    }

    fn counts(mode: Balance, b: &[Candidate], picks: usize) -> Vec<usize> {
        let mut bal = Balancer::default();
        let mut c = vec![0; b.len()];
        for k in 0..picks {
            c[bal.pick(mode, b, k as u64).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_alternates_and_skips_ineligible() {
        let mut b = cands(&[1, 1, 1]);
        let mut bal = Balancer::default();
        let seq: Vec<_> = (0..6)
            .map(|_| bal.pick(Balance::RoundRobin, &b, 0).unwrap())
            .collect();
        assert_eq!(seq, [0, 1, 2, 0, 1, 2]);
        b[1].eligible = false;
        let seq: Vec<_> = (0..4)
            .map(|_| bal.pick(Balance::RoundRobin, &b, 0).unwrap())
            .collect();
        assert_eq!(seq, [0, 2, 0, 2]);
        for c in &mut b {
            c.eligible = false;
        }
        assert_eq!(bal.pick(Balance::RoundRobin, &b, 0), None);
    }

    #[test]
    fn smooth_weighted_is_exact_and_interleaved() {
        let b = cands(&[5, 1, 1]);
        let mut bal = Balancer::default();
        let seq: Vec<_> = (0..7)
            .map(|_| bal.pick(Balance::Weighted, &b, 0).unwrap())
            .collect();
        // nginx's documented sequence for {a:5, b:1, c:1}.
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(Balance::Weighted, &b, 700), [500, 100, 100]);
    }

    #[test]
    fn least_connections_by_weight_with_round_robin_ties() {
        let mut b = cands(&[1, 2]);
        b[0].active = 3;
        b[1].active = 5; // 5/2 < 3/1
        let mut bal = Balancer::default();
        assert_eq!(bal.pick(Balance::LeastConnections, &b, 0), Some(1));
        b[1].active = 7; // 7/2 > 3/1
        assert_eq!(bal.pick(Balance::LeastConnections, &b, 0), Some(0));
        let t = cands(&[1, 1, 1]);
        let seq: Vec<_> = (0..3)
            .map(|_| bal.pick(Balance::LeastConnections, &t, 0).unwrap())
            .collect();
        let mut sorted = seq.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2], "ties rotate: {seq:?}");
    }

    #[test]
    fn consistent_hash_is_sticky_spread_and_moves_only_lost_keys() {
        let b = cands(&[1, 1, 1, 1]);
        let mut bal = Balancer::default();
        let before: Vec<_> = (0..4000u64)
            .map(|k| {
                bal.pick(Balance::ConsistentHash, &b, hash64(&k.to_be_bytes()))
                    .unwrap()
            })
            .collect();
        // Sticky: the same key, the same backend.
        for (k, &i) in before.iter().enumerate().take(100) {
            let again = bal.pick(
                Balance::ConsistentHash,
                &b,
                hash64(&(k as u64).to_be_bytes()),
            );
            assert_eq!(again, Some(i));
        }
        // Spread: each of 4 backends gets 1000 ± a wide margin.
        for i in 0..4 {
            let n = before.iter().filter(|&&x| x == i).count();
            assert!((700..=1300).contains(&n), "backend {i}: {n}");
        }
        // Backend 2 goes: only its keys move.
        let mut less = b.clone();
        less[2].eligible = false;
        for (k, &i) in before.iter().enumerate() {
            let now = bal
                .pick(
                    Balance::ConsistentHash,
                    &less,
                    hash64(&(k as u64).to_be_bytes()),
                )
                .unwrap();
            if i != 2 {
                assert_eq!(now, i, "key {k} moved although its backend stayed");
            } else {
                assert_ne!(now, 2);
            }
        }
    }

    #[test]
    fn consistent_hash_honours_weights() {
        let b = cands(&[3, 1]);
        let mut bal = Balancer::default();
        let mut c = [0usize; 2];
        for k in 0..4000u64 {
            c[bal
                .pick(Balance::ConsistentHash, &b, hash64(&k.to_be_bytes()))
                .unwrap()] += 1;
        }
        assert!((2700..=3300).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn hashes_are_stable() {
        // Fixed values: a change here changes every consistent-hash assignment in the field.
        assert_eq!(hash64(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(
            hash_addr("10.0.0.1:80".parse().unwrap()),
            hash_addr("10.0.0.1:80".parse().unwrap())
        );
        assert_ne!(
            hash_addr("10.0.0.1:80".parse().unwrap()),
            hash_addr("10.0.0.1:81".parse().unwrap())
        );
    }
}
