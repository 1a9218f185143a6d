//! A hook call's time limit, counted in the time its thread ran, not in wall-clock time.
//!
//! Calls are interrupted by wasmtime's epoch mechanism: the engine's clock thread advances the
//! epoch at least every [`COARSE_TICK`] (or the shortest time limit, if shorter), and a store
//! whose deadline passes runs [`on_deadline`]. A call starts with a deadline one tick away, so a
//! short call (nearly all of them) costs no clock read at all. At the first tick the thread's CPU
//! clock is read as a baseline (the wall time before it is counted as run time, up to two
//! [`EPOCH_TICK`]s), and the clock is told a call runs long: it then ticks every [`EPOCH_TICK`],
//! and each tick compares the CPU time the thread used with the limit. A call that spins is
//! thus stopped once it has run its limit, plus what it ran before its first tick beyond two
//! fine ticks: at most twice its limit (the coarse period is never longer than the limit). A thread that the machine descheduled (a loaded
//! host, a noisy neighbour) is not charged for the time it did not run, so a well-behaved plugin
//! does not "time out" on a busy machine; a plugin that spins is stopped once it has run its
//! limit. A wall-clock backstop ([`backstop`]) still ends any call, whatever its CPU time.

use std::time::{Duration, Instant};

use wasmtime::{StoreContextMut, Trap, UpdateDeadline};

use crate::bindings::HostState;
#[cfg(doc)]
use crate::engine::COARSE_TICK;
use crate::engine::EPOCH_TICK;

/// The time budget of the call running in a store.
#[derive(Debug, Clone, Copy)]
pub struct CallBudget {
    /// The CPU time the call may use.
    limit: Duration,
    started: Instant,
    /// The thread's CPU clock at the first tick, and the wall time already charged then.
    baseline: Option<(Duration, Duration)>,
}

impl CallBudget {
    /// A budget of `limit` starting now.
    pub fn start(limit: Duration) -> Self {
        Self {
            limit,
            started: Instant::now(),
            baseline: None,
        }
    }

    /// When the call started (one clock read serves the budget and the call's duration).
    pub fn started(&self) -> Instant {
        self.started
    }
}

impl Default for CallBudget {
    fn default() -> Self {
        Self::start(Duration::ZERO)
    }
}

/// The longest a call may take in wall-clock time, whatever its CPU time: four times its limit
/// and a quarter of a second (a thread that gets a fifth of a core still finishes).
pub fn backstop(limit: Duration) -> Duration {
    limit * 4 + Duration::from_millis(250)
}

/// The CPU time the calling thread has used since it started.
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call writes nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// The epoch deadline callback of every plugin store: go on one more tick while the call is
/// under its CPU limit and its wall-clock backstop; interrupt it otherwise.
pub fn on_deadline(mut store: StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline> {
    let budget = &mut store.data_mut().budget;
    let wall = budget.started.elapsed();
    if wall >= backstop(budget.limit) {
        return Err(Trap::Interrupt.into());
    }
    let Some(now) = thread_cpu_time() else {
        // no CPU clock: wall-clock time, as before
        return if wall >= budget.limit {
            Err(Trap::Interrupt.into())
        } else {
            Ok(UpdateDeadline::Continue(1))
        };
    };
    // Before the first tick the thread's CPU time is unknown (reading the clock costs about
    // half a microsecond, too much for every call): charge that span as run time, up to two
    // fine ticks. Longer may be the thread waiting for a core before it saw the tick, which is
    // not the plugin's time (or the clock thread running late, which the backstop bounds).
    let (cpu_then, charged) = *budget
        .baseline
        .get_or_insert((now, wall.min(EPOCH_TICK * 2)));
    let used = charged + now.saturating_sub(cpu_then);
    if used >= budget.limit {
        return Err(Trap::Interrupt.into());
    }
    // check again at the next (fine) tick
    crate::engine::long_call_running();
    Ok(UpdateDeadline::Continue(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_clock_counts_running_not_sleeping() {
        let before = thread_cpu_time().expect("Linux has a thread CPU clock");
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu_time().unwrap() - before;
        assert!(slept < Duration::from_millis(30), "{slept:?}");
        let start = Instant::now();
        let from = thread_cpu_time().unwrap();
        while start.elapsed() < Duration::from_millis(20) {
            std::hint::black_box(0u64);
        }
        assert!(thread_cpu_time().unwrap() > from);
    }
}
