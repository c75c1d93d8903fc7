//! Consistent-hash ring with virtual nodes: which node owns a key (a stream id), and who
//! takes over, in order, when owners fail. Pure: no I/O, no clock. Membership builds one
//! ring per change of the healthy set; relays, origins and edges only read it.
//!
//! The hash is XXH3-64 (seed 0) over UTF-8 bytes, from `xxhash-rust`. XXH3 is a published,
//! frozen algorithm with reference test vectors, independent of the process, the platform,
//! the endianness and the crate version (unlike `std`'s `DefaultHasher`, which may change
//! between Rust releases and must never place streams). Every node of a federation has to
//! compute the same owner, so changing the hash or the vnode label is a wire-format change:
//! the golden tests below break on purpose when that happens.

use std::collections::BTreeSet;

use xxhash_rust::xxh3::xxh3_64;

/// The ring's hash of any byte string (keys and vnode labels alike).
fn hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// A node's `i`th point on the ring is the hash of `"{node}#{i}"`. Part of the wire format,
/// like the hash itself.
fn vnode_label(node: &str, i: u32) -> String {
    format!("{node}#{i}")
}

/// An immutable ring. Built from a set of node ids: duplicates collapse and the input order
/// does not matter, so every process that sees the same healthy set builds the same ring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    /// Distinct node ids, sorted.
    nodes: Vec<String>,
    /// `(point, index into nodes)`, sorted by point then by node id, so that the rare
    /// collision of two points still resolves the same way everywhere.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// `vnodes` points per node; 0 is taken as 1 so that a node is never silently absent.
    pub fn new(nodes: impl IntoIterator<Item = String>, vnodes: u32) -> Ring {
        let nodes: Vec<String> = nodes.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        let vnodes = vnodes.max(1);
        let mut points = Vec::with_capacity(nodes.len() * vnodes as usize);
        for (index, node) in nodes.iter().enumerate() {
            let index = u32::try_from(index).expect("fewer than 2^32 nodes");
            points.extend((0..vnodes).map(|i| (hash(vnode_label(node, i).as_bytes()), index)));
        }
        // Node indices follow the sorted ids, so sorting the pairs orders ties by node id.
        points.sort_unstable();
        Ring { nodes, points }
    }

    /// Number of distinct nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The distinct node ids, sorted.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(String::as_str)
    }

    /// Every point clockwise from 0, with its node (for drawing the ring).
    pub fn points(&self) -> impl Iterator<Item = (u64, &str)> {
        self.points.iter().map(|&(point, index)| (point, self.nodes[index as usize].as_str()))
    }

    /// Where a key lands on the ring (its owner is the first point at or after it).
    pub fn position(key: &str) -> u64 {
        hash(key.as_bytes())
    }

    pub fn contains(&self, node: &str) -> bool {
        self.nodes.binary_search_by(|n| n.as_str().cmp(node)).is_ok()
    }

    /// The first node clockwise from the key's hash; `None` on an empty ring.
    pub fn owner(&self, key: &str) -> Option<&str> {
        let start = self.start(key)?;
        Some(self.nodes[self.points[start].1 as usize].as_str())
    }

    /// Every node once, clockwise from the key: the owner, then the node that takes over if
    /// the owner fails, and so on. Removing the owner from the ring makes the second entry
    /// the new owner, which is what lets a relay fail over without a new ring.
    pub fn order(&self, key: &str) -> Vec<&str> {
        let Some(start) = self.start(key) else { return Vec::new() };
        let mut seen = vec![false; self.nodes.len()];
        let mut order = Vec::with_capacity(self.nodes.len());
        let (wrapped, from_start) = self.points.split_at(start);
        for &(_, index) in from_start.iter().chain(wrapped) {
            if !std::mem::replace(&mut seen[index as usize], true) {
                order.push(self.nodes[index as usize].as_str());
                if order.len() == self.nodes.len() {
                    break;
                }
            }
        }
        order
    }

    /// Index of the first point at or after the key's hash, wrapping past the top.
    fn start(&self, key: &str) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash(key.as_bytes());
        let i = self.points.partition_point(|&(point, _)| point < h);
        Some(if i == self.points.len() { 0 } else { i })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn ring(names: &[&str], vnodes: u32) -> Ring {
        Ring::new(names.iter().map(|s| s.to_string()), vnodes)
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("stream-{i}")).collect()
    }

    fn owners<'a>(ring: &'a Ring, keys: &[String]) -> Vec<&'a str> {
        keys.iter().map(|k| ring.owner(k).expect("ring is not empty")).collect()
    }

    const FIVE: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

    #[test]
    fn hash_is_xxh3_64_reference_vectors() {
        // XXH3_64bits with seed 0: the empty input's value is the xxHash reference's; "a" and
        // a vnode label pin the rest. If this fails, the placement of every stream changed.
        assert_eq!(hash(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(hash(b"a"), 0xE6C6_32B6_1E96_4E1F);
        assert_eq!(hash(vnode_label("n1", 7).as_bytes()), hash(b"n1#7"));
    }

    #[test]
    fn owners_are_golden() {
        let ring = ring(&FIVE, 160);
        let keys = ["cam1", "news", "stream-0", "stream-1", "concert/main", "a"];
        let got: Vec<(&str, &str)> = keys.iter().map(|k| (*k, ring.owner(k).unwrap())).collect();
        // A failure here means nodes of different versions would disagree on every owner.
        assert_eq!(got, GOLDEN_OWNERS, "ring placement changed");
        assert_eq!(ring.order("cam1"), GOLDEN_ORDER_CAM1);
    }

    const GOLDEN_OWNERS: [(&str, &str); 6] = [
        ("cam1", "n4"),
        ("news", "n3"),
        ("stream-0", "n4"),
        ("stream-1", "n5"),
        ("concert/main", "n2"),
        ("a", "n2"),
    ];
    const GOLDEN_ORDER_CAM1: [&str; 5] = ["n4", "n1", "n5", "n2", "n3"];

    #[test]
    fn input_order_and_duplicates_do_not_matter() {
        let a = ring(&FIVE, 40);
        let b = ring(&["n5", "n3", "n1", "n3", "n4", "n2"], 40);
        assert_eq!(a, b);
        assert_eq!(b.len(), 5);
    }

    #[test]
    fn empty_ring_has_no_owner() {
        let ring = Ring::new(Vec::<String>::new(), 160);
        assert!(ring.is_empty());
        assert_eq!(ring.owner("cam1"), None);
        assert!(ring.order("cam1").is_empty());
    }

    #[test]
    fn zero_vnodes_still_places_every_node() {
        let ring = ring(&FIVE, 0);
        assert_eq!(ring.order("cam1").len(), 5);
    }

    #[test]
    fn removing_a_node_moves_exactly_its_keys_about_one_in_n() {
        let keys = keys(10_000);
        let full = ring(&FIVE, 160);
        let before = owners(&full, &keys);
        for gone in FIVE {
            let rest: Vec<&str> = FIVE.iter().copied().filter(|n| *n != gone).collect();
            let smaller = ring(&rest, 160);
            let after = owners(&smaller, &keys);
            let mut moved = 0;
            for (i, key) in keys.iter().enumerate() {
                if before[i] == gone {
                    moved += 1;
                    // Its keys go to their old second choice, nowhere else.
                    assert_eq!(after[i], full.order(key)[1], "{key}");
                } else {
                    assert_eq!(after[i], before[i], "{key} moved although {gone} did not own it");
                }
            }
            // 1/5 of 10,000 is 2,000; 160 vnodes keep each share within ±25% of that.
            assert!((1_500..=2_500).contains(&moved), "removing {gone} moved {moved} keys");
        }
    }

    #[test]
    fn adding_a_node_moves_about_one_in_n_plus_one_only_to_it() {
        let keys = keys(10_000);
        let (five, six) = (ring(&FIVE, 160), ring(&["n1", "n2", "n3", "n4", "n5", "n6"], 160));
        let (before, after) = (owners(&five, &keys), owners(&six, &keys));
        let mut moved = 0;
        for i in 0..keys.len() {
            if before[i] != after[i] {
                assert_eq!(after[i], "n6", "{} moved between old nodes", keys[i]);
                moved += 1;
            }
        }
        // 1/6 of 10,000 is about 1,667.
        assert!((1_250..=2_100).contains(&moved), "adding n6 moved {moved} keys");
    }

    #[test]
    fn with_160_vnodes_five_nodes_share_keys_evenly() {
        let keys = keys(10_000);
        let ring = ring(&FIVE, 160);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for owner in owners(&ring, &keys) {
            *counts.entry(owner).or_default() += 1;
        }
        // 20% ± 4 points. The spread of a node's arc with v vnodes is about 1/sqrt(v) of its
        // share (8% here, so 1.6 points), plus sampling noise of 0.4 points on 10,000 keys.
        for node in FIVE {
            let share = counts.get(node).copied().unwrap_or(0) as f64 / keys.len() as f64;
            assert!((0.16..=0.24).contains(&share), "{node} owns {:.1}%", share * 100.0);
        }
    }

    #[test]
    fn order_lists_every_node_once_starting_with_the_owner() {
        let ring = ring(&FIVE, 160);
        for key in keys(500) {
            let order = ring.order(&key);
            assert_eq!(order.first().copied(), ring.owner(&key));
            let distinct: BTreeSet<&str> = order.iter().copied().collect();
            assert_eq!(order.len(), 5);
            assert_eq!(distinct.len(), 5);
        }
    }

    proptest! {
        #[test]
        fn failover_goes_to_the_next_node_clockwise(
            nodes in proptest::collection::btree_set("[a-z0-9]{1,8}", 2..8),
            vnodes in 1u32..64,
            key in ".{0,24}",
        ) {
            let full = Ring::new(nodes.iter().cloned(), vnodes);
            let order = full.order(&key);
            prop_assert_eq!(order.len(), nodes.len());
            let owner = order[0];
            let rest = Ring::new(nodes.iter().filter(|n| *n != owner).cloned(), vnodes);
            // The whole fallback order survives, shifted by one.
            prop_assert_eq!(rest.order(&key), order[1..].to_vec());
        }
    }
}
