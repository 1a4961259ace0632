use super::*;
use core::net::SocketAddr;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 54325))
}

fn prefix(s: &str) -> ServicePrefix {
    s.parse().unwrap()
}

fn fwd(i: u32) -> Action {
    Action::Forward(addr(i))
}

/// A table that keeps the 16-bit direct table from the first entry on.
fn direct_table() -> ServiceTable {
    ServiceTable {
        map: PrefixMap::with_direct_min(0),
        ..ServiceTable::default()
    }
}

// ---------------------------------------------------------------------------------------
// Reference model: a Vec of entries with linear longest-prefix match.

#[derive(Default, Debug)]
struct Model {
    entries: Vec<(ServicePrefix, Vec<Target>)>,
}

impl Model {
    fn find(&self, p: &ServicePrefix) -> Option<usize> {
        self.entries.iter().position(|(q, _)| q == p)
    }

    fn insert(&mut self, p: ServicePrefix, rule: Rule) -> Result<(), TableError> {
        let t = Target::new(rule);
        match self.find(&p) {
            Some(i) => {
                let targets = &mut self.entries[i].1;
                if targets.iter().any(|x| x.action == rule.action) {
                    return Err(TableError::DuplicateTarget {
                        prefix: p,
                        action: rule.action,
                    });
                }
                let at = targets.iter().filter(|x| x.priority >= t.priority).count();
                targets.insert(at, t);
            }
            None => self.entries.push((p, vec![t])),
        }
        Ok(())
    }

    /// The indices of `p`'s entry and of its target `a`, or the error the table gives.
    fn find_target(&self, p: &ServicePrefix, a: &Action) -> Result<(usize, usize), TableError> {
        let i = self.find(p).ok_or(TableError::NoEntry(*p))?;
        let j = self.entries[i]
            .1
            .iter()
            .position(|x| x.action == *a)
            .ok_or(TableError::NoTarget {
                prefix: *p,
                action: *a,
            })?;
        Ok((i, j))
    }

    fn remove(&mut self, p: &ServicePrefix, a: &Action) -> Result<Target, TableError> {
        let (i, j) = self.find_target(p, a)?;
        let targets = &mut self.entries[i].1;
        let t = targets.remove(j);
        if targets.is_empty() {
            self.entries.remove(i);
        }
        Ok(t)
    }

    fn remove_entry(&mut self, p: &ServicePrefix) -> Option<Vec<Target>> {
        let i = self.find(p)?;
        Some(self.entries.remove(i).1)
    }

    fn modify(&mut self, p: &ServicePrefix, a: &Action, rule: Rule) -> Result<(), TableError> {
        let (i, j) = self.find_target(p, a)?;
        let targets = &mut self.entries[i].1;
        if rule.action != *a && targets.iter().any(|x| x.action == rule.action) {
            return Err(TableError::DuplicateTarget {
                prefix: *p,
                action: rule.action,
            });
        }
        let mut t = targets.remove(j);
        t.action = rule.action;
        t.weight = rule.weight.max(1);
        if t.priority == rule.priority {
            targets.insert(j, t);
        } else {
            t.priority = rule.priority;
            let at = targets.iter().filter(|x| x.priority >= t.priority).count();
            targets.insert(at, t);
        }
        Ok(())
    }

    fn lookup(&self, id: &ServiceId) -> Option<&(ServicePrefix, Vec<Target>)> {
        self.entries
            .iter()
            .filter(|(p, _)| p.contains(id))
            .max_by_key(|(p, _)| p.len())
    }
}

fn assert_same(table: &ServiceTable, model: &Model, probes: &[ServiceId]) {
    table.map.check_invariants();
    assert_eq!(table.len(), model.entries.len());
    assert_eq!(
        table.target_count(),
        model.entries.iter().map(|(_, t)| t.len()).sum::<usize>()
    );
    for (p, targets) in &model.entries {
        let e = table.get(p).unwrap_or_else(|| panic!("missing entry {p}"));
        assert_eq!(e.targets(), targets.as_slice(), "targets of {p}");
        // Every stored prefix's own id (and its last covered id) resolves to it or longer.
        let got = table.lookup(p.id()).expect("own id must match");
        assert!(got.prefix().len() >= p.len());
        assert_eq!(
            got.prefix(),
            &model.lookup(p.id()).unwrap().0,
            "lookup of {}",
            p.id()
        );
    }
    for id in probes {
        let want = model.lookup(id).map(|(p, _)| *p);
        let got = table.lookup(id).map(|e| *e.prefix());
        assert_eq!(got, want, "lookup of {id}");
    }
}

// ---------------------------------------------------------------------------------------
// Strategies: prefixes clustered around a few base ids so that nesting, shared paths and
// node splits are common.

const BASES: [[u8; 32]; 4] = [
    [0; 32],
    [0xff; 32],
    [
        0xa5, 0x5a, 0x0f, 0xf0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45,
        0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10, 0x0f, 0x1e,
        0x2d, 0x3c,
    ],
    [
        0x00, 0x00, 0x40, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0x1f, 0x90, 10, 0, 0, 1,
    ],
];

fn arb_id() -> impl Strategy<Value = ServiceId> {
    prop_oneof![
        3 => (0..BASES.len(), prop::collection::vec(0u16..256, 0..4)).prop_map(|(b, flips)| {
            let mut bytes = BASES[b];
            for f in flips {
                bytes[usize::from(f / 8)] ^= 0x80 >> (f % 8);
            }
            ServiceId::from_bytes(bytes)
        }),
        1 => any::<[u8; 32]>().prop_map(ServiceId::from_bytes),
    ]
}

fn arb_len() -> impl Strategy<Value = u16> {
    prop_oneof![
        2 => 0u16..=256,
        1 => (0u16..=32).prop_map(|k| k * 8),
        1 => (0u16..=32, 0u16..3).prop_map(|(k, d)| (k * 8 + d).saturating_sub(1).min(256)),
    ]
}

fn arb_prefix() -> impl Strategy<Value = ServicePrefix> {
    (arb_id(), arb_len()).prop_map(|(id, len)| ServicePrefix::new(id, len).unwrap())
}

fn action_of(i: u8) -> Action {
    match i % 7 {
        0..=3 => fwd(u32::from(i % 7)),
        4 => Action::Demux(ListenerId(1)),
        5 => Action::Delay,
        _ => Action::Drop,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(ServicePrefix, u8, u32, u32),
    /// Insert at an existing entry's prefix (index modulo the number of entries).
    InsertExisting(usize, u8, u32, u32),
    RemoveExisting(usize, u8),
    Remove(ServicePrefix, u8),
    RemoveEntryExisting(usize),
    ModifyExisting(usize, u8, u8, u32, u32),
    Lookup(ServiceId),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (arb_prefix(), any::<u8>(), 0u32..3, 0u32..4)
            .prop_map(|(p, a, pr, w)| Op::Insert(p, a, pr, w)),
        2 => (any::<usize>(), any::<u8>(), 0u32..3, 0u32..4)
            .prop_map(|(i, a, pr, w)| Op::InsertExisting(i, a, pr, w)),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, a)| Op::RemoveExisting(i, a)),
        1 => (arb_prefix(), any::<u8>()).prop_map(|(p, a)| Op::Remove(p, a)),
        1 => any::<usize>().prop_map(Op::RemoveEntryExisting),
        1 => (any::<usize>(), any::<u8>(), any::<u8>(), 0u32..3, 0u32..4)
            .prop_map(|(i, a, b, pr, w)| Op::ModifyExisting(i, a, b, pr, w)),
        3 => arb_id().prop_map(Op::Lookup),
    ]
}

fn apply(table: &mut ServiceTable, model: &mut Model, op: &Op) -> Vec<ServiceId> {
    let existing = |model: &Model, i: usize| {
        (!model.entries.is_empty()).then(|| model.entries[i % model.entries.len()].0)
    };
    match *op {
        Op::Insert(p, a, pr, w) => {
            let rule = Rule::new(action_of(a), pr, w);
            assert_eq!(table.insert(p, rule), model.insert(p, rule));
            vec![*p.id()]
        }
        Op::InsertExisting(i, a, pr, w) => {
            if let Some(p) = existing(model, i) {
                let rule = Rule::new(action_of(a), pr, w);
                assert_eq!(table.insert(p, rule), model.insert(p, rule));
            }
            vec![]
        }
        Op::RemoveExisting(i, a) => {
            if let Some(p) = existing(model, i) {
                // Prefer an action the entry has, so removals mostly succeed.
                let targets = &model.entries[model.find(&p).unwrap()].1;
                let action = targets[usize::from(a) % targets.len()].action;
                assert_eq!(table.remove(&p, &action), model.remove(&p, &action));
                return vec![*p.id()];
            }
            vec![]
        }
        Op::Remove(p, a) => {
            let action = action_of(a);
            assert_eq!(table.remove(&p, &action), model.remove(&p, &action));
            vec![*p.id()]
        }
        Op::RemoveEntryExisting(i) => {
            if let Some(p) = existing(model, i) {
                let got = table.remove_entry(&p).map(|e| e.targets().to_vec());
                assert_eq!(got.ok(), model.remove_entry(&p));
                assert_eq!(table.remove_entry(&p), Err(TableError::NoEntry(p)));
                return vec![*p.id()];
            }
            vec![]
        }
        Op::ModifyExisting(i, a, b, pr, w) => {
            if let Some(p) = existing(model, i) {
                let targets = &model.entries[model.find(&p).unwrap()].1;
                let old = targets[usize::from(a) % targets.len()].action;
                let rule = Rule::new(action_of(b), pr, w);
                assert_eq!(table.modify(&p, &old, rule), model.modify(&p, &old, rule));
            }
            vec![]
        }
        Op::Lookup(id) => vec![id],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn matches_reference_model(
        ops in prop::collection::vec(arb_op(), 1..120),
        direct in any::<bool>(),
    ) {
        let mut table = if direct { direct_table() } else { ServiceTable::new() };
        let mut model = Model::default();
        let mut probes = Vec::new();
        for op in &ops {
            probes.extend(apply(&mut table, &mut model, op));
            if probes.len() > 64 {
                probes.drain(..32);
            }
            assert_same(&table, &model, &probes);
        }
        // Emptying the table leaves only the root.
        let prefixes: Vec<_> = model.entries.iter().map(|(p, _)| *p).collect();
        for p in prefixes {
            table.remove_entry(&p).unwrap();
        }
        prop_assert!(table.is_empty());
        prop_assert_eq!(table.map.shape(), (1, 0));
    }
}

/// A larger random run: thousands of prefixes with random lengths, inserted and removed in
/// random order, checked against the model.
#[test]
fn random_bulk_against_model() {
    random_bulk(ServiceTable::new(), 7);
}

#[test]
fn random_bulk_against_model_direct() {
    random_bulk(direct_table(), 8);
}

/// The direct table appears and goes with the table's size, and lookups agree throughout.
#[test]
fn direct_table_threshold() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut t = ServiceTable {
        map: PrefixMap::with_direct_min(64),
        ..ServiceTable::default()
    };
    let mut model = Model::default();
    let mut prefixes = Vec::new();
    let probes: Vec<ServiceId> = (0..500)
        .map(|_| ServiceId::from_bytes(rng.random()))
        .collect();
    while t.len() < 100 {
        let len = rng.random_range(0..=24u16);
        let p = ServicePrefix::new(ServiceId::from_bytes(rng.random()), len).unwrap();
        let rule = Rule::drop();
        assert_eq!(t.insert(p, rule), model.insert(p, rule));
        prefixes.push(p);
        assert_eq!(t.map.has_direct(), t.len() >= 64);
        assert_same(&t, &model, &probes);
    }
    for p in &prefixes {
        if t.len() < 10 {
            break;
        }
        assert_eq!(t.remove_entry(p).is_ok(), model.remove_entry(p).is_some());
        assert_eq!(t.map.has_direct(), t.len() >= 16);
        assert_same(&t, &model, &probes);
    }
}

fn random_bulk(mut table: ServiceTable, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model = Model::default();
    let random_prefix = |rng: &mut ChaCha8Rng| {
        let mut bytes: [u8; 32] = rng.random();
        if rng.random_bool(0.5) {
            // Cluster: share the first 3 bytes with base 2.
            bytes[..3].copy_from_slice(&BASES[2][..3]);
        }
        let len = rng.random_range(0..=256u16);
        ServicePrefix::new(ServiceId::from_bytes(bytes), len).unwrap()
    };
    for round in 0..4000 {
        if rng.random_bool(0.65) || model.entries.is_empty() {
            let p = random_prefix(&mut rng);
            let rule = Rule::forward(addr(rng.random_range(0..3)));
            assert_eq!(table.insert(p, rule), model.insert(p, rule));
        } else {
            let i = rng.random_range(0..model.entries.len());
            let p = model.entries[i].0;
            assert_eq!(
                table.remove_entry(&p).map(|e| e.targets().to_vec()).ok(),
                model.remove_entry(&p)
            );
        }
        if round % 500 == 0 {
            let probes: Vec<ServiceId> = (0..200)
                .map(|_| {
                    let mut b: [u8; 32] = rng.random();
                    if rng.random_bool(0.5) {
                        b[..3].copy_from_slice(&BASES[2][..3]);
                    }
                    ServiceId::from_bytes(b)
                })
                .collect();
            assert_same(&table, &model, &probes);
        }
    }
    let (nodes, _) = table.map.shape();
    assert!(
        nodes <= table.len() + 1,
        "{nodes} nodes for {} entries",
        table.len()
    );
}

// ---------------------------------------------------------------------------------------
// Unit tests.

#[test]
fn default_rule_and_longest_match() {
    let mut t = ServiceTable::new();
    assert!(t.lookup(&ServiceId::from_u32(1)).is_none());
    t.insert(ServicePrefix::DEFAULT, Rule::forward(addr(0)))
        .unwrap();
    t.insert(prefix("0x0000:16"), Rule::forward(addr(1)))
        .unwrap();
    t.insert(prefix("0x000040:23"), Rule::forward(addr(2)))
        .unwrap();
    t.insert(
        ServicePrefix::exact(ServiceId::from_u32(16385)),
        Rule::demux(ListenerId(9)),
    )
    .unwrap();
    let len_of = |t: &ServiceTable, id: ServiceId| t.lookup(&id).map(|e| e.prefix().len());
    assert_eq!(len_of(&t, ServiceId::from_bytes([0xff; 32])), Some(0));
    assert_eq!(len_of(&t, ServiceId::from_u32(0x0000_ff00)), Some(16));
    assert_eq!(len_of(&t, ServiceId::from_u32(0x0000_4100)), Some(23));
    assert_eq!(len_of(&t, ServiceId::from_u32(16385)), Some(256));
    assert_eq!(len_of(&t, ServiceId::from_u32(16386)), Some(23));
    // The all-zero id under length 256 is a rule like any other.
    t.insert(ServicePrefix::exact(ServiceId::DEFAULT), Rule::drop())
        .unwrap();
    assert_eq!(len_of(&t, ServiceId::DEFAULT), Some(256));
    assert_eq!(t.len(), 5);
    assert_eq!(t.iter().count(), 5);
    t.remove_entry(&ServicePrefix::DEFAULT).unwrap();
    assert_eq!(len_of(&t, ServiceId::from_bytes([0xff; 32])), None);
    t.map.check_invariants();
}

#[test]
fn every_length_in_one_byte() {
    // All prefixes of lengths 0..=16 along one path, then removed shortest first.
    let id = ServiceId::from_bytes([0b1011_0110; 32]);
    let mut t = ServiceTable::new();
    for len in 0..=16 {
        t.insert(ServicePrefix::new(id, len).unwrap(), Rule::drop())
            .unwrap();
    }
    t.map.check_invariants();
    for len in 0..=16u16 {
        // Flip bit `len`: the match is the prefix of length `len`.
        let mut b = *id.as_bytes();
        if len < 16 {
            b[usize::from(len / 8)] ^= 0x80 >> (len % 8);
        }
        let got = t.lookup(&ServiceId::from_bytes(b)).unwrap().prefix().len();
        assert_eq!(got, len);
    }
    for len in 0..=16 {
        t.remove_entry(&ServicePrefix::new(id, len).unwrap())
            .unwrap();
        t.map.check_invariants();
    }
    assert!(t.is_empty());
}

#[test]
fn standby_set_takes_over() {
    let mut t = ServiceTable::new();
    let p = prefix("0x0102:16");
    t.insert(p, Rule::forward(addr(1)).with_priority(5))
        .unwrap();
    t.insert(p, Rule::forward(addr(2)).with_priority(10))
        .unwrap();
    t.insert(p, Rule::forward(addr(3)).with_priority(10))
        .unwrap();
    t.insert(p, Rule::forward(addr(4)).with_priority(1))
        .unwrap();
    let e = t.get(&p).unwrap();
    assert_eq!(e.active().priority(), 10);
    let active: Vec<_> = e.active().targets().iter().map(|t| *t.action()).collect();
    assert_eq!(active, [fwd(2), fwd(3)]);
    let prios: Vec<_> = e.sets().map(|s| s.priority()).collect();
    assert_eq!(prios, [10, 5, 1]);
    for h in 0..100 {
        let pick = e.pick_by_hash(h).unwrap();
        assert!(matches!(pick.action(), a if *a == fwd(2) || *a == fwd(3)));
    }
    t.remove(&p, &fwd(2)).unwrap();
    t.remove(&p, &fwd(3)).unwrap();
    let e = t.get(&p).unwrap();
    assert_eq!(e.active().priority(), 5);
    assert_eq!(*e.pick_by_hash(1).unwrap().action(), fwd(1));
    t.remove(&p, &fwd(1)).unwrap();
    assert_eq!(
        *t.get(&p).unwrap().pick_by_hash(1).unwrap().action(),
        fwd(4)
    );
    t.remove(&p, &fwd(4)).unwrap();
    assert!(t.get(&p).is_none());
    assert_eq!(t.target_count(), 0);
}

#[test]
fn duplicates_and_errors() {
    let mut t = ServiceTable::new();
    let p = prefix("0x0102:16");
    t.insert(p, Rule::forward(addr(1)).with_priority(5))
        .unwrap();
    // Same target in another set: still a duplicate (the original only checked the top set).
    assert_eq!(
        t.insert(p, Rule::forward(addr(1)).with_priority(9)),
        Err(TableError::DuplicateTarget {
            prefix: p,
            action: fwd(1)
        })
    );
    // Two different listeners may share an entry; the same one may not.
    t.insert(p, Rule::demux(ListenerId(1))).unwrap();
    t.insert(p, Rule::demux(ListenerId(2))).unwrap();
    assert!(t.insert(p, Rule::demux(ListenerId(2))).is_err());
    assert_eq!(
        t.remove(&p, &fwd(7)),
        Err(TableError::NoTarget {
            prefix: p,
            action: fwd(7)
        })
    );
    let q = prefix("0x0103:16");
    assert_eq!(t.remove(&q, &fwd(1)), Err(TableError::NoEntry(q)));
    assert_eq!(
        t.modify(&q, &fwd(1), Rule::forward(addr(2))),
        Err(TableError::NoEntry(q))
    );
    assert_eq!(
        t.modify(&p, &fwd(1), Rule::demux(ListenerId(1))),
        Err(TableError::DuplicateTarget {
            prefix: p,
            action: Action::Demux(ListenerId(1))
        })
    );
    assert_eq!(t.target_count(), 3);
    let msg = TableError::AddressNotAllowed(RuleKind::Drop).to_string();
    assert_eq!(msg, "a DRP rule takes no address");
}

#[test]
fn action_from_parts() {
    let a = Some(addr(1));
    let l = Some(ListenerId(3));
    assert_eq!(Action::from_parts(RuleKind::Forward, a, None), Ok(fwd(1)));
    assert_eq!(
        Action::from_parts(RuleKind::Forward, None, None),
        Err(TableError::MissingAddress)
    );
    assert_eq!(
        Action::from_parts(RuleKind::Demux, None, l),
        Ok(Action::Demux(ListenerId(3)))
    );
    assert_eq!(
        Action::from_parts(RuleKind::Demux, a, l),
        Err(TableError::AddressNotAllowed(RuleKind::Demux))
    );
    assert_eq!(
        Action::from_parts(RuleKind::Demux, None, None),
        Err(TableError::MissingListener)
    );
    assert_eq!(
        Action::from_parts(RuleKind::Delay, a, None),
        Err(TableError::AddressNotAllowed(RuleKind::Delay))
    );
    assert_eq!(
        Action::from_parts(RuleKind::Drop, None, l),
        Err(TableError::ListenerNotAllowed(RuleKind::Drop))
    );
    assert_eq!(
        Action::from_parts(RuleKind::Forward, a, l),
        Err(TableError::ListenerNotAllowed(RuleKind::Forward))
    );
    assert_eq!(
        Action::from_parts(RuleKind::Drop, None, None),
        Ok(Action::Drop)
    );
    for k in 0..10 {
        if let Some(kind) = RuleKind::from_wire(k) {
            assert_eq!(kind.to_wire(), k);
        }
    }
    assert_eq!(RuleKind::from_wire(5), None);
}

#[test]
fn weight_zero_is_one_and_modify_keeps_counters() {
    let mut t = ServiceTable::new();
    let p = prefix("0x0102:16");
    t.insert(p, Rule::forward(addr(1)).with_weight(0)).unwrap();
    t.insert(p, Rule::forward(addr(2)).with_weight(0)).unwrap();
    let e = t.get(&p).unwrap();
    assert_eq!(e.active().total_weight(), 2);
    assert_eq!(e.target(&fwd(1)).unwrap().weight(), 1);
    let pick = e.pick_by_hash(3).unwrap();
    t.record(&pick, Outcome::Resolved, 100).unwrap();
    let picked = *pick.action();
    // Change address, weight and priority: counters stay with the target.
    t.modify(
        &p,
        &picked,
        Rule::forward(addr(9)).with_weight(0).with_priority(7),
    )
    .unwrap();
    let e = t.get(&p).unwrap();
    let moved = e.target(&fwd(9)).unwrap().clone();
    assert_eq!(moved.weight(), 1);
    assert_eq!(moved.priority(), 7);
    assert_eq!(moved.stats().packets_resolved, 1);
    assert_eq!(moved.stats().bytes_resolved, 100);
    assert_eq!(e.active().targets().len(), 1);
    // The handle now names a changed target.
    assert_eq!(
        t.record(&pick, Outcome::Resolved, 1),
        Err(TableError::StaleHandle)
    );
    assert_eq!(moved.rule(), Rule::new(fwd(9), 7, 1));
}

#[test]
fn resolve_counts_and_stats() {
    let mut t = ServiceTable::new();
    let p = prefix("0x01:8");
    t.insert(p, Rule::forward(addr(1))).unwrap();
    t.insert(prefix("0x02:8"), Rule::drop()).unwrap();
    let id = ServiceId::from_bytes([1; 32]);
    let pick = t.resolve_by_hash(&id, 5, 1000).unwrap();
    assert_eq!(*pick.action(), fwd(1));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    t.resolve_random(&id, &mut rng, 500).unwrap();
    assert_eq!(
        *t.resolve_by_hash(&ServiceId::from_bytes([2; 32]), 0, 40)
            .unwrap()
            .action(),
        Action::Drop
    );
    assert!(
        t.resolve_by_hash(&ServiceId::from_bytes([3; 32]), 0, 7)
            .is_none()
    );
    let s = t.stats();
    assert_eq!((s.entries, s.targets), (2, 2));
    assert_eq!((s.packets_resolved, s.bytes_resolved), (2, 1500));
    assert_eq!((s.packets_dropped, s.bytes_dropped), (1, 40));
    assert_eq!((s.packets_no_match, s.bytes_no_match), (1, 7));
    let removed = t.remove_entry(&p).unwrap();
    assert_eq!(removed.targets()[0].stats().packets_resolved, 2);
    // Totals survive the target.
    assert_eq!(t.stats().packets_resolved, 2);
    assert_eq!(t.stats().entries, 1);
}

#[test]
fn retain_removes_dead_next_hop() {
    let mut t = ServiceTable::new();
    for i in 0..50u32 {
        let p = ServicePrefix::exact(ServiceId::from_u32(i));
        t.insert(p, Rule::forward(addr(i % 3))).unwrap();
        t.insert(p, Rule::forward(addr(100 + i))).unwrap();
    }
    let removed = t.retain(|_, target| target.action().forward_addr() != Some(addr(0)));
    assert_eq!(removed, 17);
    assert_eq!(t.len(), 50);
    let removed = t.retain(|_, target| target.action().forward_addr() < Some(addr(100)));
    assert_eq!(removed, 50);
    assert_eq!(t.len(), 33);
    assert_eq!(t.target_count(), 33);
    t.map.check_invariants();
}

fn weighted_table(weights: &[u32]) -> (ServiceTable, ServicePrefix) {
    let mut t = ServiceTable::new();
    let p = prefix("0x0a0b:16");
    for (i, &w) in weights.iter().enumerate() {
        t.insert(p, Rule::forward(addr(i as u32)).with_weight(w))
            .unwrap();
    }
    (t, p)
}

/// Which of `e`'s targets `pick` chose: the index the frequency tests count under.
fn target_index(e: &Entry, pick: &Pick) -> usize {
    e.targets()
        .iter()
        .position(|t| t.action() == pick.action())
        .unwrap()
}

/// Each target's share of the picks in `counts` is its share of the weights (which sum
/// to 10), within `tolerance`; `what` names the run in the failure message.
fn assert_shares(counts: &[u64], weights: &[u32], tolerance: f64, what: &str) {
    let n: u64 = counts.iter().sum();
    for (i, &c) in counts.iter().enumerate() {
        let share = c as f64 / n as f64;
        let want = f64::from(weights[i]) / 10.0;
        assert!(
            (share - want).abs() < tolerance,
            "{what} {i}: {share} vs {want}"
        );
    }
}

#[test]
fn weighted_random_frequencies() {
    let weights = [1, 2, 3, 4];
    let (t, p) = weighted_table(&weights);
    let e = t.get(&p).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut counts = [0u64; 4];
    for _ in 0..200_000 {
        let pick = e.pick_random(&mut rng).unwrap();
        counts[target_index(e, &pick)] += 1;
    }
    assert_shares(&counts, &weights, 0.01, "target");
}

#[test]
fn rendezvous_frequencies_and_determinism() {
    let weights = [1, 2, 3, 4];
    let (t, p) = weighted_table(&weights);
    let e = t.get(&p).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    let mut counts = [0u64; 4];
    for _ in 0..200_000 {
        let h: u64 = rng.random();
        let pick = e.pick_by_hash(h).unwrap();
        assert_eq!(e.pick_by_hash(h).unwrap(), pick);
        counts[target_index(e, &pick)] += 1;
    }
    assert_shares(&counts, &weights, 0.01, "target");
    // Sequential flow hashes spread too.
    let mut counts = [0u64; 4];
    for h in 0..100_000u64 {
        let pick = e.pick_by_hash(h).unwrap();
        counts[target_index(e, &pick)] += 1;
    }
    assert_shares(&counts, &weights, 0.015, "sequential");
}

#[test]
fn rendezvous_moves_only_the_removed_targets_flows() {
    let (mut t, p) = weighted_table(&[1, 1, 2, 1, 3]);
    let flows: Vec<u64> = {
        let mut rng = ChaCha8Rng::seed_from_u64(44);
        (0..20_000).map(|_| rng.random()).collect()
    };
    let before: Vec<Action> = flows
        .iter()
        .map(|&h| *t.get(&p).unwrap().pick_by_hash(h).unwrap().action())
        .collect();
    let gone = fwd(2);
    t.remove(&p, &gone).unwrap();
    let e = t.get(&p).unwrap();
    let mut moved = 0;
    for (&h, old) in flows.iter().zip(&before) {
        let now = *e.pick_by_hash(h).unwrap().action();
        if *old == gone {
            assert_ne!(now, gone);
            moved += 1;
        } else {
            assert_eq!(now, *old, "a flow not on the removed target moved");
        }
    }
    // Target 2 had weight 2 of 8.
    let share = moved as f64 / flows.len() as f64;
    assert!((share - 0.25).abs() < 0.02, "{share}");
    // Adding a target takes flows only onto itself.
    let after_remove: Vec<Action> = flows
        .iter()
        .map(|&h| *e.pick_by_hash(h).unwrap().action())
        .collect();
    t.insert(p, Rule::forward(addr(77))).unwrap();
    let e = t.get(&p).unwrap();
    for (&h, old) in flows.iter().zip(&after_remove) {
        let now = *e.pick_by_hash(h).unwrap().action();
        assert!(now == *old || now == fwd(77));
    }
}

#[test]
fn stale_handles_are_refused() {
    let mut t = ServiceTable::new();
    let p = prefix("0x0102:16");
    t.insert(p, Rule::forward(addr(1))).unwrap();
    let pick = t
        .lookup(&ServiceId::from_bytes([1; 32]))
        .map(|e| e.pick_by_hash(0));
    assert!(pick.is_none());
    let pick = t
        .lookup(&ServiceId::from_u32(0x0102_0000))
        .unwrap()
        .pick_by_hash(0)
        .unwrap();
    t.record(&pick, Outcome::Dropped, 9).unwrap();
    t.remove_entry(&p).unwrap();
    assert_eq!(
        t.record(&pick, Outcome::Dropped, 9),
        Err(TableError::StaleHandle)
    );
    assert_eq!(t.stats().packets_dropped, 1);
}

#[test]
fn full_byte_fanout_and_compaction() {
    // 256 siblings of length 16 under one byte, plus deep leaves, then removed.
    let mut t = ServiceTable::new();
    let mut all = Vec::new();
    for b in 0..=255u8 {
        let mut bytes = [0u8; 32];
        bytes[0] = 0x42;
        bytes[1] = b;
        all.push(ServicePrefix::new(ServiceId::from_bytes(bytes), 16).unwrap());
        bytes[31] = 1;
        all.push(ServicePrefix::exact(ServiceId::from_bytes(bytes)));
    }
    for (i, p) in all.iter().enumerate() {
        t.insert(*p, Rule::forward(addr(i as u32))).unwrap();
    }
    t.map.check_invariants();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..1000 {
        let mut bytes: [u8; 32] = rng.random();
        bytes[0] = 0x42;
        let got = t.lookup(&ServiceId::from_bytes(bytes)).unwrap();
        assert_eq!(got.prefix().len(), 16);
    }
    for (i, p) in all.iter().enumerate().rev() {
        t.remove(p, &fwd(i as u32)).unwrap();
        if i % 37 == 0 {
            t.map.check_invariants();
        }
    }
    assert!(t.is_empty());
    assert_eq!(t.map.shape(), (1, 0));
}

/// The memory budget (BENCHMARKS.md) rests on these sizes: one target inline in the entry.
#[test]
#[cfg(target_pointer_width = "64")]
fn entry_sizes() {
    assert_eq!(size_of::<Target>(), 72);
    assert_eq!(size_of::<rule::Targets>(), 72);
    assert_eq!(size_of::<Entry>(), 112);
}
