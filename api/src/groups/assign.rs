//! Sticky, balanced partition assignment for consumer groups.
//!
//! Guarantees (checked by property tests): every partition is owned by exactly one
//! member; owned counts differ by at most one; a partition keeps its owner whenever
//! that owner is still a member and does not hold more than its fair share, so a
//! membership change moves as few partitions as possible.

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
pub type TopicPartition = (String, u32);

/// Computes the next assignment from the current one.
///
/// `members` must be non-empty for any partition to be assigned; with no members the
/// result is empty.
pub fn assign(
    partitions: &BTreeSet<TopicPartition>,
    members: &BTreeSet<String>,
    current: &BTreeMap<TopicPartition, String>,
) -> BTreeMap<TopicPartition, String> {
    let mut out = BTreeMap::new();
    if members.is_empty() || partitions.is_empty() {
        return out;
    }
    let n = partitions.len();
    let m = members.len();
    let floor = n / m;
    let ceil = if n.is_multiple_of(m) { floor } else { floor + 1 };
    let extras = n % m;

    // What each member keeps: its current partitions that still exist, capped at ceil.
    let mut kept: BTreeMap<&String, Vec<&TopicPartition>> = members.iter().map(|id| (id, Vec::new())).collect();
    for (tp, owner) in current {
        if let Some(list) = kept.get_mut(owner)
            && partitions.contains(tp)
            && list.len() < ceil
        {
            list.push(tp);
        }
    }
    // Only `extras` members may hold `ceil`; trim the others down to `floor`.
    let mut at_ceil = 0;
    for list in kept.values_mut() {
        if ceil > floor && list.len() == ceil {
            if at_ceil < extras {
                at_ceil += 1;
            } else {
                list.truncate(floor);
            }
        }
    }
    let taken: BTreeSet<&TopicPartition> = kept.values().flatten().copied().collect();
    let mut counts: BTreeMap<&String, usize> = kept.iter().map(|(id, l)| (*id, l.len())).collect();
    for (id, list) in &kept {
        for tp in list {
            out.insert((*tp).clone(), (*id).clone());
        }
    }
    // Hand out the rest, each to the least-loaded member (ties: smallest id).
    for tp in partitions.iter().filter(|tp| !taken.contains(tp)) {
        let (id, count) = counts.iter_mut().min_by_key(|(id, c)| (**c, **id)).expect("members is not empty");
        *count += 1;
        out.insert(tp.clone(), (*id).clone());
    }
    debug_assert_eq!(out.len(), n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parts(n: u32) -> BTreeSet<TopicPartition> {
        (0..n).map(|p| (if p % 2 == 0 { "a" } else { "b" }.to_string(), p)).collect()
    }

    fn members(ids: &[u8]) -> BTreeSet<String> {
        ids.iter().map(|i| format!("m{i}")).collect()
    }

    fn check_balanced(a: &BTreeMap<TopicPartition, String>, ps: &BTreeSet<TopicPartition>, ms: &BTreeSet<String>) {
        assert_eq!(a.keys().collect::<BTreeSet<_>>(), ps.iter().collect::<BTreeSet<_>>(), "each partition once");
        let mut counts: BTreeMap<&String, usize> = ms.iter().map(|m| (m, 0)).collect();
        for owner in a.values() {
            *counts.get_mut(owner).expect("owner is a member") += 1;
        }
        let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
        assert!(max - min <= 1, "balanced within one: {counts:?}");
    }

    proptest! {
        #[test]
        fn every_partition_once_balanced_and_sticky(
            n in 0u32..40,
            before in prop::collection::btree_set(0u8..8, 1..6),
            after in prop::collection::btree_set(0u8..8, 1..6),
            grow in 0u32..5,
        ) {
            let ps = parts(n);
            let m1 = members(&before.iter().copied().collect::<Vec<_>>());
            let first = assign(&ps, &m1, &BTreeMap::new());
            if n > 0 { check_balanced(&first, &ps, &m1); }
            let ps2 = parts(n + grow);
            let m2 = members(&after.iter().copied().collect::<Vec<_>>());
            let second = assign(&ps2, &m2, &first);
            if n + grow > 0 { check_balanced(&second, &ps2, &m2); }
            // Stickiness: a surviving member keeps at least min(what it had, its new floor).
            let floor = (n + grow) as usize / m2.len();
            for m in m1.intersection(&m2) {
                let had: BTreeSet<_> = first.iter().filter(|(_, o)| *o == m).map(|(tp, _)| tp).collect();
                let kept = second.iter().filter(|(tp, o)| *o == m && had.contains(tp)).count();
                prop_assert!(kept >= had.len().min(floor), "{m} kept {kept} of {} (floor {floor})", had.len());
            }
            // Nothing moves when membership and partitions are unchanged.
            prop_assert_eq!(assign(&ps2, &m2, &second), second);
        }
    }

    #[test]
    fn a_joining_member_takes_only_its_share() {
        let ps = parts(6);
        let one = assign(&ps, &members(&[1]), &BTreeMap::new());
        let two = assign(&ps, &members(&[1, 2]), &one);
        let moved = ps.iter().filter(|tp| one[*tp] != two[*tp]).count();
        assert_eq!(moved, 3);
        check_balanced(&two, &ps, &members(&[1, 2]));
    }
}
