//! Node health: each node's state (`HEALTHY`, `UNHEALTHY`, `NO_DATA`, `OFF`) and the evidence
//! that moves it, from real traffic (passive checks) and from background probes (active checks).
//!
//! Every counter and the state are atomics: recording the outcome of a request is a load when
//! nothing changes and never takes a lock. A state change is decided by one atomic swap, so it is
//! logged and counted exactly once, however many requests saw the failure that caused it. Which
//! nodes a request may use follows from these states in [`crate::upstream`].

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gatehouse_config::HealthCheck;

/// A node's health, as the admin API and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Checks are on and nothing is known yet; the node is used.
    NoData = 0,
    Healthy = 1,
    /// Taken out: no request goes to it (but in panic mode).
    Unhealthy = 2,
    /// No check runs on the node (checks are off, or its weight is 0); it is used as configured.
    Off = 3,
}

impl State {
    pub const ALL: [State; 4] = [State::NoData, State::Healthy, State::Unhealthy, State::Off];

    pub fn as_str(self) -> &'static str {
        match self {
            State::NoData => "NO_DATA",
            State::Healthy => "HEALTHY",
            State::Unhealthy => "UNHEALTHY",
            State::Off => "OFF",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Healthy,
            2 => State::Unhealthy,
            3 => State::Off,
            _ => State::NoData,
        }
    }
}

/// One piece of evidence about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// A connection (or TLS handshake) to the node failed, or broke before a response.
    ConnectFailed(String),
    /// The node did not answer within the time allowed.
    TimedOut,
    /// The node answered with this status.
    Status(u16),
}

/// Where a piece of evidence comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Request,
    Probe,
}

/// What recording a piece of evidence changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// The node was taken out.
    Out,
    /// A node on probation failed its trial request and is out again, for longer.
    OutAgain,
    /// The node's recovery time has passed: its next request is a trial.
    Probation,
    /// The node is back.
    Back,
}

/// How long a probation trial may go without an outcome before another request is let through
/// (a client that left before the node answered): longer than the default backend timeout (60 s)
/// and connect timeout together, so a hanging node is tried by one request at a time.
pub const TRIAL_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest a node is kept out between two trials, however often it failed (Envoy's
/// `max_ejection_time`).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// The health of one node.
pub struct NodeHealth {
    state: AtomicU8,
    /// Milliseconds on the upstream clock until which the node is out; 0 when it is in,
    /// `u64::MAX` until a probe brings it back.
    out_until: AtomicU64,
    tcp_failures: AtomicU32,
    timeouts: AtomicU32,
    http_failures: AtomicU32,
    /// Consecutive healthy probes.
    successes: AtomicU32,
    /// Times the node was taken out since it last served well: each doubles the next recovery
    /// time, up to [`MAX_EJECTION`].
    ejections: AtomicU32,
    /// Upstream-clock milliseconds at which a request was let through as a probation trial
    /// (0: none yet).
    trial_at: AtomicU64,
    /// The recovery time has passed and the node waits for its trial.
    probation: std::sync::atomic::AtomicBool,
    /// Unix milliseconds of the last state change.
    since: AtomicU64,
    /// Why the node is in its state.
    reason: ArcSwap<String>,
    /// Upstream-clock milliseconds of the next probe (active checks).
    pub(crate) next_probe: AtomicU64,
    /// A probe is in flight.
    pub(crate) probing: std::sync::atomic::AtomicBool,
}

/// A node's health as shown to operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub state: &'static str,
    pub reason: String,
    /// RFC 3339 time of the last state change.
    pub since: String,
}

impl NodeHealth {
    pub fn new(state: State, reason: &str) -> Self {
        Self {
            state: AtomicU8::new(state as u8),
            out_until: AtomicU64::new(0),
            tcp_failures: AtomicU32::new(0),
            timeouts: AtomicU32::new(0),
            http_failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            trial_at: AtomicU64::new(0),
            probation: std::sync::atomic::AtomicBool::new(false),
            since: AtomicU64::new(unix_ms()),
            reason: ArcSwap::from_pointee(reason.to_owned()),
            next_probe: AtomicU64::new(0),
            probing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether the node is out at `now` (upstream-clock milliseconds).
    #[inline]
    pub fn is_out(&self, now: u64) -> bool {
        self.out_until.load(Ordering::Relaxed) > now
    }

    /// Whether a request at `now` may use the node: it is in, or it is on probation and this
    /// request takes the one trial (a trial that never reported is given again after
    /// `retrial_after`).
    #[inline]
    pub fn admit(&self, now: u64, retrial_after: Duration) -> bool {
        let until = self.out_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if until > now {
            return false;
        }
        let trial = self.trial_at.load(Ordering::Acquire);
        if trial != 0 && now < trial.saturating_add(retrial_after.as_millis() as u64) {
            return false;
        }
        self.trial_at
            .compare_exchange(trial, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Whether the node is out for a while that has passed at `now`: it is due back.
    pub fn is_due_back(&self, now: u64) -> bool {
        let until = self.out_until.load(Ordering::Relaxed);
        until != 0 && until <= now
    }

    /// When the node is due back, if it is out for a while (upstream-clock milliseconds).
    pub fn back_at(&self) -> Option<u64> {
        match self.out_until.load(Ordering::Relaxed) {
            0 | u64::MAX => None,
            t => Some(t),
        }
    }

    pub fn report(&self) -> Report {
        Report {
            state: self.state().as_str(),
            reason: self.reason.load().as_ref().clone(),
            since: rfc3339(self.since.load(Ordering::Relaxed)),
        }
    }

    /// Moves the node to `to`; returns whether this call made the change.
    fn set(&self, to: State, reason: String) -> bool {
        let from = self.state.swap(to as u8, Ordering::AcqRel);
        if from == to as u8 {
            return false;
        }
        self.reason.store(Arc::new(reason));
        self.since.store(unix_ms(), Ordering::Relaxed);
        true
    }

    /// Takes the node out at `now` for `recovery` (zero: until a probe brings it back), doubled
    /// for each time it was taken out since it last served well, up to [`MAX_EJECTION`].
    ///
    /// `seen` is the end of the last time out as the caller read it when it decided: of requests
    /// failing at once past the threshold, only the one that moves it on takes the node out, so
    /// one outage is one ejection (said once, its recovery time doubled once).
    fn take_out(&self, seen: u64, now: u64, recovery: Duration, reason: String) -> Change {
        let until = if recovery.is_zero() {
            u64::MAX
        } else {
            now.saturating_add(self.out_for(recovery).as_millis() as u64)
                .max(1)
        };
        if self
            .out_until
            .compare_exchange(seen, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Change::None;
        }
        self.ejections.fetch_add(1, Ordering::AcqRel);
        self.trial_at.store(0, Ordering::Release);
        self.probation.store(false, Ordering::Release);
        self.successes.store(0, Ordering::Relaxed);
        self.reset_failures();
        if self.set(State::Unhealthy, reason.clone()) {
            Change::Out
        } else {
            // out again without a change of state: still said, and counted
            self.reason.store(Arc::new(reason));
            self.since.store(unix_ms(), Ordering::Relaxed);
            Change::OutAgain
        }
    }

    /// How long the node is out this time: `recovery` doubled for each earlier ejection since it
    /// last served well, at most [`MAX_EJECTION`] (or `recovery`, if that is longer).
    pub fn out_for(&self, recovery: Duration) -> Duration {
        let earlier = self.ejections.load(Ordering::Acquire).min(16);
        recovery
            .saturating_mul(1 << earlier)
            .min(MAX_EJECTION.max(recovery))
    }

    /// Brings the node back.
    fn bring_back(&self, reason: String) -> Change {
        self.out_until.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Release);
        self.trial_at.store(0, Ordering::Release);
        self.probation.store(false, Ordering::Release);
        self.reset_failures();
        if self.set(State::Healthy, reason) {
            Change::Back
        } else {
            Change::None
        }
    }

    /// Puts a node whose recovery time has passed at `now` on probation (the caller checked
    /// [`NodeHealth::is_due_back`]): its next request is a trial, and only that one; the
    /// trial's outcome brings it back or takes it out again for twice as long. Only one caller
    /// wins.
    pub fn expire(&self, now: u64) -> Change {
        let until = self.out_until.load(Ordering::Relaxed);
        if until == 0 || until > now {
            return Change::None;
        }
        if self.probation.swap(true, Ordering::AcqRel) {
            return Change::None;
        }
        self.reason.store(Arc::new(
            "on probation after its recovery time: its next request decides".to_owned(),
        ));
        Change::Probation
    }

    fn reset_failures(&self) {
        for c in [&self.tcp_failures, &self.timeouts, &self.http_failures] {
            // a load first: a healthy node's counters stay untouched, so no cache line moves
            if c.load(Ordering::Relaxed) != 0 {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Records one piece of evidence under `check` at `now`; returns what it changed.
    pub fn record(
        &self,
        check: &HealthCheck,
        recovery: Duration,
        source: Source,
        evidence: &Evidence,
        now: u64,
    ) -> Change {
        if source == Source::Request && !check.passive {
            return Change::None;
        }
        let failure = match evidence {
            Evidence::ConnectFailed(e) => Some((
                &self.tcp_failures,
                check.tcp_failures,
                format!("connection failed: {e}"),
            )),
            Evidence::TimedOut => Some((&self.timeouts, check.timeouts, "timed out".to_owned())),
            Evidence::Status(s) if check.unhealthy_statuses.contains(s) => Some((
                &self.http_failures,
                check.http_failures,
                format!("answered {s}"),
            )),
            Evidence::Status(_) => None,
        };
        let what = match source {
            Source::Request => "",
            Source::Probe => "probe ",
        };
        let seen = self.out_until.load(Ordering::Acquire);
        if source == Source::Request && seen != 0 && seen <= now {
            // the trial request of a node on probation decides alone
            return match (failure, evidence) {
                (Some((_, threshold, why)), _) if threshold > 0 => self.take_out(
                    seen,
                    now,
                    recovery,
                    format!("its trial request failed: {why}"),
                ),
                (None, Evidence::Status(status)) => {
                    self.bring_back(format!("its trial request was answered {status}"))
                }
                _ => Change::None,
            };
        }
        match failure {
            Some((counter, threshold, why)) => {
                if self.successes.load(Ordering::Relaxed) != 0 {
                    self.successes.store(0, Ordering::Relaxed);
                }
                let n = counter.fetch_add(1, Ordering::AcqRel) + 1;
                if threshold == 0 || n < threshold || seen > now {
                    return Change::None;
                }
                self.take_out(
                    seen,
                    now,
                    recovery,
                    // the threshold, not `n`: requests failing at once may count past it
                    format!(
                        "{what}{why} ({threshold} time{} in a row)",
                        if threshold == 1 { "" } else { "s" }
                    ),
                )
            }
            None => {
                let Evidence::Status(status) = evidence else {
                    return Change::None;
                };
                match source {
                    Source::Request => {
                        self.reset_failures();
                        if self.state() == State::NoData {
                            self.set(State::Healthy, format!("answered {status}"));
                        }
                        Change::None
                    }
                    Source::Probe if check.healthy_statuses.contains(status) => {
                        self.reset_failures();
                        let n = self.successes.fetch_add(1, Ordering::AcqRel) + 1;
                        match self.state() {
                            State::Unhealthy if n >= check.healthy_threshold => {
                                self.bring_back(format!(
                                    "probe answered {status} ({n} time{} in a row)",
                                    if n == 1 { "" } else { "s" }
                                ))
                            }
                            State::NoData => {
                                self.set(State::Healthy, format!("probe answered {status}"));
                                Change::None
                            }
                            _ => Change::None,
                        }
                    }
                    Source::Probe => {
                        // neither healthy nor unhealthy: say so where the operator looks
                        if self.state() == State::NoData {
                            self.reason.store(Arc::new(format!(
                                "probe answered {status}, which is in neither healthy_statuses nor unhealthy_statuses"
                            )));
                        }
                        Change::None
                    }
                }
            }
        }
    }

    /// A node out until probes bring it back, when no probe runs any more (active checks were
    /// turned off): it is due back at `now`, so its next request is a trial.
    pub fn without_probes(&self, now: u64) {
        let _ = self.out_until.compare_exchange(
            u64::MAX,
            now.max(1),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Carries the state of `old` (the same node in the previous configuration) over.
    pub fn inherit(&self, old: &NodeHealth) {
        self.state
            .store(old.state.load(Ordering::Acquire), Ordering::Release);
        self.out_until
            .store(old.out_until.load(Ordering::Relaxed), Ordering::Relaxed);
        self.since
            .store(old.since.load(Ordering::Relaxed), Ordering::Relaxed);
        self.reason.store(old.reason.load_full());
        self.probation
            .store(old.probation.load(Ordering::Acquire), Ordering::Release);
        for (new, old) in [
            (&self.ejections, &old.ejections),
            (&self.tcp_failures, &old.tcp_failures),
            (&self.timeouts, &old.timeouts),
            (&self.http_failures, &old.http_failures),
            (&self.successes, &old.successes),
        ] {
            new.store(old.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.trial_at
            .store(old.trial_at.load(Ordering::Acquire), Ordering::Release);
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` (Unix milliseconds) as an RFC 3339 UTC time.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HealthCheck {
        HealthCheck::default()
    }

    #[test]
    fn thresholds_take_a_node_out_once_and_successes_reset_them() {
        let h = NodeHealth::new(State::NoData, "");
        let c = HealthCheck {
            timeouts: 3,
            ..check()
        };
        let r = Duration::from_secs(30);
        let t = Evidence::TimedOut;
        assert_eq!(h.record(&c, r, Source::Request, &t, 0), Change::None);
        assert_eq!(h.record(&c, r, Source::Request, &t, 0), Change::None);
        // a good answer in between resets the count
        h.record(&c, r, Source::Request, &Evidence::Status(200), 0);
        assert_eq!(h.state(), State::Healthy);
        for _ in 0..2 {
            assert_eq!(h.record(&c, r, Source::Request, &t, 0), Change::None);
        }
        assert_eq!(h.record(&c, r, Source::Request, &t, 0), Change::Out);
        assert_eq!(
            h.record(&c, r, Source::Request, &t, 0),
            Change::None,
            "once"
        );
        assert!(h.is_out(29_999) && !h.is_out(30_000));
        assert_eq!(h.report().state, "UNHEALTHY");
        assert!(h.report().reason.contains("timed out (3 times in a row)"));
        assert_eq!(h.expire(30_000), Change::Probation);
        assert_eq!(h.expire(30_000), Change::None, "once");
        // one trial request, whose answer brings it back
        assert!(h.admit(30_000, TRIAL_TIMEOUT));
        assert!(!h.admit(30_001, TRIAL_TIMEOUT), "one trial at a time");
        assert_eq!(
            h.record(&c, r, Source::Request, &Evidence::Status(200), 30_010),
            Change::Back
        );
        assert_eq!(h.state(), State::Healthy);
        assert!(h.admit(30_011, TRIAL_TIMEOUT));
    }

    #[test]
    fn requests_failing_at_once_past_the_threshold_take_the_node_out_once() {
        let c = HealthCheck {
            timeouts: 2,
            ..check()
        };
        let r = Duration::from_secs(30);
        let threads = 4;
        for round in 0..2_000 {
            let h = NodeHealth::new(State::Healthy, "");
            h.record(&c, r, Source::Request, &Evidence::TimedOut, 0);
            let start = std::sync::Barrier::new(threads);
            let changes: Vec<Change> = std::thread::scope(|s| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            h.record(&c, r, Source::Request, &Evidence::TimedOut, 0)
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            let outs = changes.iter().filter(|c| **c != Change::None).count();
            assert_eq!(outs, 1, "round {round}: {changes:?}");
            assert_eq!(h.back_at(), Some(30_000), "round {round}: doubled once");
            let reason = h.report().reason;
            assert!(reason.contains("timed out (2 times in a row)"), "{reason}");
        }
    }

    #[test]
    fn a_node_failing_its_trials_stays_out_twice_as_long_each_time() {
        let h = NodeHealth::new(State::NoData, "");
        let c = HealthCheck {
            timeouts: 1,
            ..check()
        };
        let r = Duration::from_secs(10);
        let t = Evidence::TimedOut;
        assert_eq!(h.record(&c, r, Source::Request, &t, 0), Change::Out);
        for out_for in [20_000, 40_000, 80_000, 160_000, 300_000, 300_000] {
            let back = h.back_at().unwrap();
            assert!(!h.admit(back - 1, TRIAL_TIMEOUT));
            let now = back;
            assert_eq!(h.expire(now), Change::Probation);
            assert!(h.admit(now, TRIAL_TIMEOUT), "the trial");
            assert!(!h.admit(now, TRIAL_TIMEOUT), "and only it");
            assert_eq!(h.record(&c, r, Source::Request, &t, now), Change::OutAgain);
            assert_eq!(h.back_at(), Some(now + out_for), "capped at five minutes");
            assert!(h.report().reason.contains("trial request failed"));
        }
        // a trial that never reports is given again after TRIAL_TIMEOUT
        let now = h.back_at().unwrap();
        h.expire(now);
        assert!(h.admit(now, TRIAL_TIMEOUT));
        let later = now + TRIAL_TIMEOUT.as_millis() as u64;
        assert!(!h.admit(later - 1, TRIAL_TIMEOUT));
        assert!(h.admit(later, TRIAL_TIMEOUT));
        // a good answer brings it back and forgets the doubling
        assert_eq!(
            h.record(&c, r, Source::Request, &Evidence::Status(204), later),
            Change::Back
        );
        assert_eq!(h.record(&c, r, Source::Request, &t, later), Change::Out);
        assert_eq!(h.back_at(), Some(later + 10_000));
    }

    #[test]
    fn statuses_count_only_when_listed_and_zero_thresholds_never_take_out() {
        let h = NodeHealth::new(State::NoData, "");
        let c = HealthCheck {
            http_failures: 2,
            tcp_failures: 0,
            ..check()
        };
        let r = Duration::from_secs(1);
        for _ in 0..10 {
            h.record(&c, r, Source::Request, &Evidence::Status(404), 0);
            h.record(
                &c,
                r,
                Source::Request,
                &Evidence::ConnectFailed("refused".into()),
                0,
            );
        }
        assert!(!h.is_out(0));
        h.record(&c, r, Source::Request, &Evidence::Status(503), 0);
        assert_eq!(
            h.record(&c, r, Source::Request, &Evidence::Status(503), 0),
            Change::Out
        );
        // passive off: requests tell nothing
        let off = HealthCheck {
            passive: false,
            ..c.clone()
        };
        let h = NodeHealth::new(State::NoData, "");
        for _ in 0..10 {
            assert_eq!(
                h.record(&off, r, Source::Request, &Evidence::Status(503), 0),
                Change::None
            );
        }
        assert!(!h.is_out(0));
    }

    #[test]
    fn probes_bring_a_node_back_after_the_healthy_threshold() {
        let h = NodeHealth::new(State::NoData, "");
        let c = HealthCheck {
            healthy_threshold: 2,
            ..check()
        };
        let forever = Duration::ZERO;
        let refused = Evidence::ConnectFailed("refused".into());
        assert_eq!(
            h.record(&c, forever, Source::Probe, &refused, 0),
            Change::Out
        );
        assert!(h.is_out(u64::MAX - 1), "out until a probe brings it back");
        assert!(h.report().reason.starts_with("probe connection failed"));
        let ok = Evidence::Status(200);
        assert_eq!(h.record(&c, forever, Source::Probe, &ok, 5), Change::None);
        assert_eq!(h.record(&c, forever, Source::Probe, &ok, 6), Change::Back);
        assert!(!h.is_out(7));
        assert!(h.report().reason.contains("2 times in a row"));
        // a status in neither list is shown, not counted
        let h = NodeHealth::new(State::NoData, "");
        h.record(&c, forever, Source::Probe, &Evidence::Status(404), 0);
        assert_eq!(h.state(), State::NoData);
        assert!(h.report().reason.contains("neither"));
    }
}
