//! Smooth weighted round robin, the nginx algorithm, shared by all worker threads without a lock.
//!
//! nginx's algorithm keeps a "current weight" per node: each pick adds every node's weight to its
//! current weight, takes the node with the largest, and subtracts the total from it. After
//! `sum(weights)` picks every current weight is back to zero, so the pick sequence is periodic. We
//! compute that period once when the upstream is built and walk it with one atomic counter: a pick
//! is a `fetch_add` and an array read, exact proportions and interleaving (weights 5,1,1 give
//! `a a b a c a a`) hold across threads, and weight-0 nodes never appear.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Node indexes are below this (the product allows 200 nodes per upstream).
pub const MAX_NODES: usize = 256;

/// The set of nodes already tried by one request, so a retry goes elsewhere.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TriedSet([u64; MAX_NODES / 64]);

impl TriedSet {
    pub fn insert(&mut self, node: usize) {
        self.0[node / 64] |= 1 << (node % 64);
    }

    pub fn remove(&mut self, node: usize) {
        self.0[node / 64] &= !(1 << (node % 64));
    }

    pub fn contains(&self, node: usize) -> bool {
        self.0[node / 64] & (1 << (node % 64)) != 0
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A precomputed smooth weighted round-robin schedule.
#[derive(Debug)]
pub struct SmoothWeighted {
    schedule: Box<[u8]>,
    /// How many nodes have a weight above zero.
    eligible: usize,
    next: AtomicUsize,
}

impl SmoothWeighted {
    /// Builds the schedule for `weights` (one per node, at most [`MAX_NODES`]).
    pub fn new(weights: &[u32]) -> Self {
        assert!(weights.len() <= MAX_NODES, "at most {MAX_NODES} nodes");
        // Dividing by the common divisor gives the same interleaving in a shorter period.
        let divisor = weights
            .iter()
            .copied()
            .filter(|w| *w > 0)
            .fold(0, gcd)
            .max(1);
        let weights: Vec<i64> = weights.iter().map(|w| i64::from(*w / divisor)).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += w;
                // strictly greater: ties go to the earlier node, as in nginx
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            schedule.push(best as u8);
        }
        Self {
            schedule: schedule.into_boxed_slice(),
            eligible: weights.iter().filter(|w| **w > 0).count(),
            next: AtomicUsize::new(0),
        }
    }

    /// Claims the next position in the schedule: one atomic increment. A request's first attempt
    /// starts here; its retries continue from the position of the attempt before (see
    /// [`SmoothWeighted::pick_from`]), so retries do not shift the schedule for everyone else.
    pub fn next_position(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The first node at or after schedule position `start` that `skip` does not exclude, with
    /// its position; `None` when every node with a weight is excluded.
    pub fn pick_from(&self, start: usize, skip: impl Fn(usize) -> bool) -> Option<(usize, usize)> {
        let len = self.schedule.len();
        (0..len)
            .map(|k| start.wrapping_add(k))
            .map(|pos| (pos, self.schedule[pos % len] as usize))
            .find(|(_, node)| !skip(*node))
    }

    /// Picks the next node that `skip` does not exclude (claims a position).
    pub fn pick(&self, skip: impl Fn(usize) -> bool) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        self.pick_from(self.next_position(), skip)
            .map(|(_, node)| node)
    }

    /// Nodes with a weight above zero.
    pub fn eligible(&self) -> usize {
        self.eligible
    }

    /// Length of one period of the schedule.
    pub fn period(&self) -> usize {
        self.schedule.len()
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sequence(weights: &[u32], n: usize) -> Vec<usize> {
        let s = SmoothWeighted::new(weights);
        (0..n).map(|_| s.pick(|_| false).unwrap()).collect()
    }

    #[test]
    fn interleaves_like_nginx() {
        // a=0, b=1, c=2 with weights 5,1,1: the sequence from nginx's documentation
        assert_eq!(sequence(&[5, 1, 1], 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn every_window_of_one_period_has_exact_proportions() {
        let cases: &[&[u32]] = &[
            &[5, 1, 1],
            &[10, 5],
            &[3, 2, 1],
            &[1, 1, 1, 1],
            &[100, 1],
            &[7, 0, 3],
            &[50, 30, 20, 0, 1],
        ];
        for weights in cases {
            let total: u32 = weights.iter().sum();
            let seq = sequence(weights, total as usize * 3);
            // any window, not only windows aligned to the period
            for start in 0..total as usize * 2 {
                let window = &seq[start..start + total as usize];
                for (node, w) in weights.iter().enumerate() {
                    let got = window.iter().filter(|n| **n == node).count();
                    assert_eq!(
                        got, *w as usize,
                        "weights {weights:?}, window at {start}, node {node}"
                    );
                }
            }
        }
    }

    #[test]
    fn never_bursts_a_heavy_node_beyond_its_share() {
        // with weights 10,5 the heavy node never gets more than 2 picks in a row
        let seq = sequence(&[10, 5], 60);
        let longest = seq
            .chunk_by(|a, b| a == b)
            .map(|run| run.len())
            .max()
            .unwrap();
        assert!(longest <= 2, "{seq:?}");
    }

    #[test]
    fn weight_zero_nodes_get_nothing() {
        let seq = sequence(&[0, 3, 0, 1], 400);
        assert!(!seq.contains(&0) && !seq.contains(&2));
        assert_eq!(SmoothWeighted::new(&[0, 3, 0, 1]).eligible(), 2);
    }

    #[test]
    fn skipped_nodes_are_passed_over() {
        let s = SmoothWeighted::new(&[5, 1, 1]);
        for _ in 0..20 {
            let pick = s.pick(|n| n == 0).unwrap();
            assert_ne!(pick, 0);
        }
        assert_eq!(s.pick(|_| true), None, "all excluded");
    }

    #[test]
    fn retries_continue_after_the_failed_position() {
        let s = SmoothWeighted::new(&[1, 1, 1]);
        let (pos, first) = s.pick_from(s.next_position(), |_| false).unwrap();
        let (_, retry) = s.pick_from(pos + 1, |n| n == first).unwrap();
        assert_eq!((first, retry), (0, 1));
        // the retry did not claim a position: the next request still gets node 1
        assert_eq!(s.pick(|_| false), Some(1));
    }

    #[test]
    fn period_is_shortened_by_the_common_divisor() {
        assert_eq!(SmoothWeighted::new(&[10, 5]).period(), 3);
        assert_eq!(sequence(&[10, 5], 3), sequence(&[2, 1], 3));
    }

    #[test]
    fn concurrent_picks_keep_exact_totals() {
        let s = Arc::new(SmoothWeighted::new(&[5, 3, 2]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut counts = [0usize; 3];
                    for _ in 0..2500 {
                        counts[s.pick(|_| false).unwrap()] += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut total = [0usize; 3];
        for t in threads {
            for (i, c) in t.join().unwrap().iter().enumerate() {
                total[i] += c;
            }
        }
        // 10,000 picks = 1,000 periods of 10
        assert_eq!(total, [5000, 3000, 2000]);
    }

    #[test]
    fn tried_set_tracks_nodes() {
        let mut t = TriedSet::default();
        t.insert(0);
        t.insert(199);
        assert!(t.contains(0) && t.contains(199) && !t.contains(1));
        assert_eq!(t.len(), 2);
    }
}
