//! Gives the memory of closed client connections back to the system once a worker thread goes
//! quiet.
//!
//! The allocator keeps freed memory for a second and gives it back only when the thread that
//! freed it allocates again: a busy thread does so all the time, but a thread left idle after a
//! burst of connections would hold their memory for good (measured: 500 kept-alive connections
//! took the shipped configuration from 29 to 51 MB, and it stayed at 51 MB after they closed).
//! Giving memory back on every free costs each request about 1.5 µs (bench/README.md,
//! `gatehouse-purge0`), so instead each worker thread has a watcher that wakes every
//! [`QUIET_AFTER`] and, the first time a whole period passed without a connection opening or
//! closing on its thread after some did, has the allocator release what it holds freed. A busy
//! thread is never interrupted; an idle one pays one collection per burst.

use std::cell::Cell;
use std::time::Duration;

/// How long a worker thread must see no connection open or close before its freed memory is
/// given back.
pub const QUIET_AFTER: Duration = Duration::from_secs(2);

thread_local! {
    /// Connections opened and closed on this thread, and whether its watcher runs.
    static THREAD: ThreadActivity = const {
        ThreadActivity { events: Cell::new(0), watched: Cell::new(false) }
    };
}

struct ThreadActivity {
    events: Cell<u64>,
    watched: Cell<bool>,
}

/// Notes a connection opening or closing on the current worker thread, and starts the thread's
/// watcher the first time (the engine's worker runtimes run a task on the thread that spawned
/// it).
pub(super) fn connection_event() {
    THREAD.with(|t| {
        t.events.set(t.events.get().wrapping_add(1));
        if !t.watched.get() && tokio::runtime::Handle::try_current().is_ok() {
            t.watched.set(true);
            tokio::spawn(watch());
        }
    });
}

async fn watch() {
    let mut quiet = Quiet::default();
    loop {
        tokio::time::sleep(QUIET_AFTER).await;
        if quiet.tick(THREAD.with(|t| t.events.get())) {
            gatehouse_plugin_host::release_freed_memory();
        }
    }
}

/// When to give memory back, from the thread's event count read once a period.
#[derive(Debug, Default)]
struct Quiet {
    seen: u64,
    /// Connections came and went since the last release.
    pending: bool,
}

impl Quiet {
    /// Whether to release now: the count did not move over the last period, and it had moved
    /// since the last release.
    fn tick(&mut self, events: u64) -> bool {
        if events != self.seen {
            self.seen = events;
            self.pending = true;
            return false;
        }
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_once_per_burst_after_a_quiet_period() {
        let mut q = Quiet::default();
        // nothing happened yet: nothing to give back
        assert!(!q.tick(0));
        assert!(!q.tick(0));
        // a burst, still going at the next tick
        assert!(!q.tick(40));
        assert!(!q.tick(90));
        // a whole quiet period: released once
        assert!(q.tick(90));
        assert!(!q.tick(90));
        assert!(!q.tick(90));
        // the next burst
        assert!(!q.tick(91));
        assert!(q.tick(91));
    }

    #[test]
    fn a_busy_thread_is_never_interrupted() {
        let mut q = Quiet::default();
        for events in (1..1000).map(|i| i * 7) {
            assert!(!q.tick(events));
        }
    }
}
