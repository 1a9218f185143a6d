//! Counters one plugin use keeps in the gateway (the `counters` interface of contract 0.2),
//! shared by all of its instances in this process.
//!
//! A counter counts in fixed windows aligned to the clock (a 60 s window starts on each full
//! minute): the first increment of a window starts it again from zero. A counter is one atomic
//! word — its window's number in the top [`WINDOW_BITS`] bits, its count in the rest — so an
//! increment is a compare-and-swap under a read lock of one shard of the map, whatever the
//! number of threads. The number of keys is bounded: when the table is full, counters whose
//! window has ended are dropped (at most every [`SWEEP_EVERY_MS`]); if every counter is still in
//! its window, a new key is refused until windows end, so the memory stays bounded whatever the
//! clients send.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use once_cell::sync::OnceCell;

/// Bits of a counter word that hold its window's number (modulo their range).
const WINDOW_BITS: u32 = 24;
const COUNT_BITS: u32 = 64 - WINDOW_BITS;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const WINDOW_MASK: u64 = (1 << WINDOW_BITS) - 1;

/// Shortest and longest window. With windows of at least a second, the window number held in
/// a counter wraps after 2^24 s (194 days): a counter idle that long is dropped well before.
pub const MIN_WINDOW_MS: u64 = 1_000;
pub const MAX_WINDOW_MS: u64 = 86_400_000;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Sweeps of ended windows are at least this far apart, so a full table costs one pass per
/// interval, not one per refused key.
const SWEEP_EVERY_MS: u64 = 100;

/// A counter's value in its current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The count in the current window.
    pub count: u64,
    /// Milliseconds until the window ends and the count starts again from zero.
    pub resets_in_ms: u64,
}

/// The counters of one plugin use.
pub struct Counters {
    /// Made on the first increment: most plugin uses never count.
    map: OnceCell<DashMap<Box<str>, Counter>>,
    /// Keys in `map`.
    len: AtomicUsize,
    max_keys: usize,
    /// Clock milliseconds of the last sweep.
    swept_at: AtomicU64,
}

struct Counter {
    window_ms: u64,
    /// The window's number (low [`WINDOW_BITS`] bits) and the count.
    word: AtomicU64,
}

fn pack(window: u64, count: u64) -> u64 {
    (window & WINDOW_MASK) << COUNT_BITS | count.min(COUNT_MAX)
}

impl Counter {
    /// Adds `delta` in window number `window`; returns the count after.
    fn add(&self, window: u64, delta: u64) -> u64 {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            let count = if word >> COUNT_BITS == window & WINDOW_MASK {
                (word & COUNT_MAX).saturating_add(delta).min(COUNT_MAX)
            } else {
                delta.min(COUNT_MAX)
            };
            match self.word.compare_exchange_weak(
                word,
                pack(window, count),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return count,
                Err(now) => word = now,
            }
        }
    }

    /// The count in window number `window`.
    fn count(&self, window: u64) -> u64 {
        let word = self.word.load(Ordering::Acquire);
        if word >> COUNT_BITS == window & WINDOW_MASK {
            word & COUNT_MAX
        } else {
            0
        }
    }

    fn is_live(&self, now_ms: u64) -> bool {
        self.word.load(Ordering::Relaxed) >> COUNT_BITS == (now_ms / self.window_ms) & WINDOW_MASK
    }
}

impl Counters {
    /// A table of at most `max_keys` counters.
    pub fn new(max_keys: usize) -> Self {
        Self {
            map: OnceCell::new(),
            len: AtomicUsize::new(0),
            max_keys,
            swept_at: AtomicU64::new(0),
        }
    }

    /// Counters held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `delta` to counter `key` in windows of `window_ms` at clock time `now_ms`
    /// (milliseconds since the Unix epoch); returns its window after the increment.
    pub fn increment(
        &self,
        key: &str,
        delta: u64,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Window, String> {
        check(key, window_ms)?;
        let (window, resets_in_ms) = window_of(now_ms, window_ms);
        let map = self.map.get_or_init(DashMap::new);
        if let Some(counter) = map.get(key) {
            same_window(key, &counter, window_ms)?;
            let count = counter.add(window, delta);
            return Ok(Window {
                count,
                resets_in_ms,
            });
        }
        if self.len() >= self.max_keys {
            self.sweep(now_ms);
            if self.len() >= self.max_keys {
                return Err(format!(
                    "every one of the {} counters of this plugin use is in its window: new keys are refused until windows end",
                    self.max_keys
                ));
            }
        }
        let counter = map.entry(key.into()).or_insert_with(|| {
            self.len.fetch_add(1, Ordering::Relaxed);
            Counter {
                window_ms,
                word: AtomicU64::new(pack(window, 0)),
            }
        });
        same_window(key, &counter, window_ms)?;
        Ok(Window {
            count: counter.add(window, delta),
            resets_in_ms,
        })
    }

    /// Counter `key`'s window at `now_ms`, without changing it (a key never incremented counts 0).
    pub fn get(&self, key: &str, window_ms: u64, now_ms: u64) -> Result<Window, String> {
        check(key, window_ms)?;
        let (window, resets_in_ms) = window_of(now_ms, window_ms);
        let count = match self.map.get().and_then(|map| map.get(key)) {
            Some(counter) => {
                same_window(key, &counter, window_ms)?;
                counter.count(window)
            }
            None => 0,
        };
        Ok(Window {
            count,
            resets_in_ms,
        })
    }

    /// Drops the counters whose window has ended, unless a sweep ran in the last
    /// [`SWEEP_EVERY_MS`].
    fn sweep(&self, now_ms: u64) {
        let last = self.swept_at.load(Ordering::Relaxed);
        if now_ms < last.saturating_add(SWEEP_EVERY_MS)
            || self
                .swept_at
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Some(map) = self.map.get() else { return };
        map.retain(|_, counter| {
            let live = counter.is_live(now_ms);
            if !live {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
            live
        });
    }
}

/// The number of the window of `window_ms` that holds `now_ms`, and the milliseconds left in it.
fn window_of(now_ms: u64, window_ms: u64) -> (u64, u64) {
    let window = now_ms / window_ms;
    (window, (window + 1) * window_ms - now_ms)
}

fn check(key: &str, window_ms: u64) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!(
            "a counter key has 1 to {MAX_KEY_LEN} bytes, not {}",
            key.len()
        ));
    }
    if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms) {
        return Err(format!(
            "a window of {window_ms} ms: windows are 1 s to 1 day ({MIN_WINDOW_MS} to {MAX_WINDOW_MS} ms)"
        ));
    }
    Ok(())
}

fn same_window(key: &str, counter: &Counter, window_ms: u64) -> Result<(), String> {
    if counter.window_ms == window_ms {
        Ok(())
    } else {
        Err(format!(
            "counter {key:?} counts in windows of {} ms, not {window_ms} ms",
            counter.window_ms
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    #[test]
    fn a_counter_counts_within_its_window_and_starts_again_in_the_next() {
        let c = Counters::new(10);
        let t = 100 * MINUTE + 40_000; // 40 s into a minute
        assert_eq!(c.get("k", MINUTE, t).unwrap().count, 0);
        assert_eq!(
            c.increment("k", 1, MINUTE, t).unwrap(),
            Window {
                count: 1,
                resets_in_ms: 20_000
            }
        );
        assert_eq!(c.increment("k", 2, MINUTE, t + 19_999).unwrap().count, 3);
        assert_eq!(c.get("k", MINUTE, t + 19_999).unwrap().count, 3);
        // the next minute
        assert_eq!(c.get("k", MINUTE, t + 20_000).unwrap().count, 0);
        assert_eq!(
            c.increment("k", 1, MINUTE, t + 20_000).unwrap(),
            Window {
                count: 1,
                resets_in_ms: MINUTE
            }
        );
        assert_eq!(c.increment("other", 5, MINUTE, t).unwrap().count, 5);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn bad_keys_and_windows_are_refused_with_the_rule() {
        let c = Counters::new(10);
        let err = c.increment("", 1, MINUTE, 0).unwrap_err();
        assert!(err.contains("1 to 256 bytes"), "{err}");
        let long = "x".repeat(257);
        assert!(c.increment(&long, 1, MINUTE, 0).is_err());
        for window in [0, 999, MAX_WINDOW_MS + 1] {
            let err = c.increment("k", 1, window, 0).unwrap_err();
            assert!(err.contains("windows are 1 s to 1 day"), "{err}");
        }
        c.increment("k", 1, MINUTE, 0).unwrap();
        let err = c.increment("k", 1, 1_000, 0).unwrap_err();
        assert!(err.contains("counts in windows of 60000 ms"), "{err}");
        assert!(c.get("k", 1_000, 0).is_err());
    }

    #[test]
    fn a_full_table_drops_ended_windows_and_refuses_new_keys_while_all_are_live() {
        let c = Counters::new(3);
        for k in ["a", "b", "c"] {
            c.increment(k, 1, 1_000, 10_000).unwrap();
        }
        let err = c.increment("d", 1, 1_000, 10_500).unwrap_err();
        assert!(err.contains("3 counters"), "{err}");
        // a known key still counts
        assert_eq!(c.increment("a", 1, 1_000, 10_600).unwrap().count, 2);
        // once their window ended, the next sweep makes room
        assert_eq!(c.increment("d", 1, 1_000, 11_000).unwrap().count, 1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get("a", 1_000, 11_000).unwrap().count, 0);
    }

    #[test]
    fn sweeps_are_spaced_out() {
        let c = Counters::new(1);
        c.increment("a", 1, 1_000, 1_000).unwrap();
        assert!(c.increment("b", 1, 1_000, 1_950).is_err());
        // "a" ended at 2,000, but the last sweep was at 1,950
        assert!(c.increment("b", 1, 1_000, 2_010).is_err());
        assert!(c.increment("b", 1, 1_000, 2_050).is_ok());
    }

    #[test]
    fn threads_counting_at_once_lose_no_increment() {
        let c = Counters::new(100);
        let now = 5 * MINUTE;
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for i in 0..10_000 {
                        let key = if i % 2 == 0 { "even" } else { "odd" };
                        c.increment(key, 1, MINUTE, now).unwrap();
                    }
                });
            }
        });
        assert_eq!(c.get("even", MINUTE, now).unwrap().count, 40_000);
        assert_eq!(c.get("odd", MINUTE, now).unwrap().count, 40_000);
    }

    #[test]
    fn counts_saturate() {
        let c = Counters::new(1);
        c.increment("k", u64::MAX, MINUTE, 0).unwrap();
        assert_eq!(c.increment("k", 5, MINUTE, 0).unwrap().count, COUNT_MAX);
    }
}
