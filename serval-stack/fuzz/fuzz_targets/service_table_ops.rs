//! Service-table operation sequences against a reference model (a `Vec` of entries with a
//! linear longest-prefix match): every operation's result, the targets of every touched
//! entry, every lookup and pick, and the table's size and contents must agree; nothing may
//! panic.
//!
//! Prefixes are either arbitrary or derived from one already inserted (its id with one bit
//! flipped, another length), so nesting, shared paths, node splits and merges are common.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serval_stack::service_table::{Action, ListenerId, Rule, ServiceTable, TableError};
use serval_stack::wire::{ServiceId, ServicePrefix};

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        prefix: ServicePrefix,
        target: u8,
        priority: u8,
        weight: u8,
    },
    /// Insert under the id of an existing entry with bit `flip` toggled and length `len`.
    InsertNear {
        base: u16,
        flip: u8,
        len: u16,
        target: u8,
        priority: u8,
        weight: u8,
    },
    Remove {
        base: u16,
        target: u8,
    },
    RemoveEntry {
        base: u16,
    },
    Modify {
        base: u16,
        target: u8,
        new_target: u8,
        priority: u8,
        weight: u8,
    },
    Lookup {
        id: ServiceId,
        flow_hash: u64,
    },
    /// Look up an existing entry's id with bit `flip` toggled.
    LookupNear {
        base: u16,
        flip: u8,
        flow_hash: u64,
    },
}

/// A small set of actions so that duplicates and shared targets are frequent.
fn action(t: u8) -> Action {
    match t % 8 {
        0..=2 => Action::Forward(SocketAddr::from(([10, 0, 0, t % 8], 54325))),
        3 => Action::Forward(SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 54325))),
        4 | 5 => Action::Demux(ListenerId(u32::from(t % 8))),
        6 => Action::Delay,
        _ => Action::Drop,
    }
}

/// (action, priority, weight as stored)
type ModelTarget = (Action, u32, u32);

#[derive(Default)]
struct Model {
    entries: Vec<(ServicePrefix, Vec<ModelTarget>)>,
}

impl Model {
    fn find(&self, p: &ServicePrefix) -> Option<usize> {
        self.entries.iter().position(|(q, _)| q == p)
    }

    fn base(&self, i: u16) -> Option<ServicePrefix> {
        let n = self.entries.len();
        (n > 0).then(|| self.entries[usize::from(i) % n].0)
    }

    fn insert(&mut self, p: ServicePrefix, rule: Rule) -> Result<(), TableError> {
        let t = (rule.action, rule.priority, rule.weight.max(1));
        match self.find(&p) {
            Some(i) => {
                let targets = &mut self.entries[i].1;
                if targets.iter().any(|x| x.0 == rule.action) {
                    return Err(TableError::DuplicateTarget {
                        prefix: p,
                        action: rule.action,
                    });
                }
                let at = targets.iter().filter(|x| x.1 >= t.1).count();
                targets.insert(at, t);
            }
            None => self.entries.push((p, vec![t])),
        }
        Ok(())
    }

    fn remove(&mut self, p: &ServicePrefix, a: &Action) -> Result<ModelTarget, TableError> {
        let i = self.find(p).ok_or(TableError::NoEntry(*p))?;
        let targets = &mut self.entries[i].1;
        let j = targets
            .iter()
            .position(|x| x.0 == *a)
            .ok_or(TableError::NoTarget {
                prefix: *p,
                action: *a,
            })?;
        let t = targets.remove(j);
        if targets.is_empty() {
            self.entries.remove(i);
        }
        Ok(t)
    }

    fn modify(&mut self, p: &ServicePrefix, a: &Action, rule: Rule) -> Result<(), TableError> {
        let i = self.find(p).ok_or(TableError::NoEntry(*p))?;
        let targets = &mut self.entries[i].1;
        let j = targets
            .iter()
            .position(|x| x.0 == *a)
            .ok_or(TableError::NoTarget {
                prefix: *p,
                action: *a,
            })?;
        if rule.action != *a && targets.iter().any(|x| x.0 == rule.action) {
            return Err(TableError::DuplicateTarget {
                prefix: *p,
                action: rule.action,
            });
        }
        let old_priority = targets[j].1;
        targets[j].0 = rule.action;
        targets[j].2 = rule.weight.max(1);
        if old_priority != rule.priority {
            let mut t = targets.remove(j);
            t.1 = rule.priority;
            let at = targets.iter().filter(|x| x.1 >= t.1).count();
            targets.insert(at, t);
        }
        Ok(())
    }

    fn lookup(&self, id: &ServiceId) -> Option<&(ServicePrefix, Vec<ModelTarget>)> {
        self.entries
            .iter()
            .filter(|(p, _)| p.contains(id))
            .max_by_key(|(p, _)| p.len())
    }
}

fn targets_of(table: &ServiceTable, p: &ServicePrefix) -> Option<Vec<ModelTarget>> {
    let e = table.get(p)?;
    assert_eq!(e.prefix(), p);
    Some(
        e.targets()
            .iter()
            .map(|t| (*t.action(), t.priority(), t.weight()))
            .collect(),
    )
}

fn check_entry(table: &ServiceTable, model: &Model, p: &ServicePrefix) {
    let want = model.find(p).map(|i| model.entries[i].1.clone());
    assert_eq!(targets_of(table, p), want, "entry {p}");
}

fn check_lookup(table: &ServiceTable, model: &Model, id: &ServiceId, flow_hash: u64) {
    let got = table.lookup(id);
    let want = model.lookup(id);
    assert_eq!(got.map(|e| *e.prefix()), want.map(|(p, _)| *p), "lookup {id}");
    let (Some(entry), Some((_, targets))) = (got, want) else {
        return;
    };
    // The pick comes from the active (highest-priority) set.
    let top = targets[0].1;
    let pick = entry.pick_by_hash(flow_hash).expect("entries are never empty");
    assert!(
        targets
            .iter()
            .any(|t| t.1 == top && t.0 == *pick.action())
    );
    assert_eq!(entry.pick_by_hash(flow_hash), Some(pick), "rendezvous is deterministic");
}

fuzz_target!(|ops: Vec<Op>| {
    let mut table = ServiceTable::new();
    let mut model = Model::default();
    for op in ops.iter().take(2000) {
        match *op {
            Op::Insert {
                prefix,
                target,
                priority,
                weight,
            } => {
                let rule = Rule::new(action(target), priority.into(), weight.into());
                assert_eq!(table.insert(prefix, rule), model.insert(prefix, rule));
                check_entry(&table, &model, &prefix);
            }
            Op::InsertNear {
                base,
                flip,
                len,
                target,
                priority,
                weight,
            } => {
                let mut bytes = *model.base(base).unwrap_or(ServicePrefix::DEFAULT).id().as_bytes();
                bytes[usize::from(flip / 8)] ^= 0x80 >> (flip % 8);
                let Ok(prefix) = ServicePrefix::new(ServiceId::from_bytes(bytes), len % 257) else {
                    continue;
                };
                let rule = Rule::new(action(target), priority.into(), weight.into());
                assert_eq!(table.insert(prefix, rule), model.insert(prefix, rule));
                check_entry(&table, &model, &prefix);
            }
            Op::Remove { base, target } => {
                let Some(p) = model.base(base) else { continue };
                let a = action(target);
                let got = table
                    .remove(&p, &a)
                    .map(|t| (*t.action(), t.priority(), t.weight()));
                assert_eq!(got, model.remove(&p, &a));
                check_entry(&table, &model, &p);
            }
            Op::RemoveEntry { base } => {
                let Some(p) = model.base(base) else { continue };
                assert!(table.remove_entry(&p).is_ok());
                model.entries.retain(|(q, _)| *q != p);
                assert_eq!(table.remove_entry(&p).err(), Some(TableError::NoEntry(p)));
                check_entry(&table, &model, &p);
            }
            Op::Modify {
                base,
                target,
                new_target,
                priority,
                weight,
            } => {
                let Some(p) = model.base(base) else { continue };
                let rule = Rule::new(action(new_target), priority.into(), weight.into());
                let old = action(target);
                assert_eq!(table.modify(&p, &old, rule), model.modify(&p, &old, rule));
                check_entry(&table, &model, &p);
            }
            Op::Lookup { id, flow_hash } => check_lookup(&table, &model, &id, flow_hash),
            Op::LookupNear {
                base,
                flip,
                flow_hash,
            } => {
                let mut bytes = *model.base(base).unwrap_or(ServicePrefix::DEFAULT).id().as_bytes();
                bytes[usize::from(flip / 8)] ^= 0x80 >> (flip % 8);
                check_lookup(&table, &model, &ServiceId::from_bytes(bytes), flow_hash);
                // And the unflipped id, which must match that entry or a longer one.
                if let Some(p) = model.base(base) {
                    check_lookup(&table, &model, p.id(), flow_hash);
                }
            }
        }
        assert_eq!(table.len(), model.entries.len());
        let targets: usize = model.entries.iter().map(|(_, t)| t.len()).sum();
        assert_eq!(table.target_count(), targets);
    }
    // Iteration yields exactly the model's entries.
    let mut got: Vec<ServicePrefix> = table.iter().map(|e| *e.prefix()).collect();
    let mut want: Vec<ServicePrefix> = model.entries.iter().map(|(p, _)| *p).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for p in &want {
        check_entry(&table, &model, p);
    }
});
