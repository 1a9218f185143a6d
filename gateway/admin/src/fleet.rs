//! An instance of a fleet: its link to the etcd that holds the shared configuration.
//!
//! Every etcd call runs on one small runtime of its own ([`Fleet::run`]), so the client's
//! connection lives as long as the process whatever runtime asks. [`Fleet::follow`] keeps the
//! instance on the newest revision: a whole-state read, then a watch from the revision after it;
//! each time the commit record changes, the state is applied as a whole through the
//! [`ConfigStore`]. A lost watch (etcd gone, a compaction, a leader change) is followed by a new
//! whole-state read, never by a partial one. The instance record (revision served) lives under a
//! lease, so it disappears when the instance stops.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_fleet::metrics::SOURCE_METRICS;
use gatehouse_fleet::{Cache, Error, InstanceRecord, Snapshot, Store, Watched};

use crate::store::{now, ConfigStore};

/// Seconds an instance record outlives its instance.
const RECORD_TTL: i64 = 10;

/// What `GET /status` tells of the source.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceStatus {
    pub kind: &'static str,
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// Connected and following.
    pub up: bool,
    /// Since when `up` has its value.
    pub since: String,
    /// The configuration revision served.
    pub revision: i64,
    /// The newest revision seen in etcd (may be refused, or not applied yet).
    pub latest_revision: i64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// The newest revision refused, and why.
    pub refused: Option<Refusal>,
    /// Serving the cached configuration, not yet one read from etcd.
    pub from_cache: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    pub revision: i64,
    pub at: String,
    pub problems: Vec<String>,
}

/// The link of one instance to its fleet's etcd.
pub struct Fleet {
    store: Arc<Store>,
    cache: Cache,
    instance: String,
    runtime: tokio::runtime::Runtime,
    status: Mutex<SourceStatus>,
    /// The newest whole state seen (what writes are based on).
    latest: Mutex<Arc<Snapshot>>,
    lease: AtomicI64,
    /// Signalled when the instance record should be written again.
    record_due: tokio::sync::Notify,
    /// A write's outcome was unknown: the next write reads the whole state first.
    reread: std::sync::atomic::AtomicBool,
}

impl Fleet {
    pub fn new(
        source: gatehouse_config::EtcdSource,
        instance: String,
    ) -> std::io::Result<Arc<Self>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gatehouse-etcd")
            .enable_all()
            .build()?;
        let cache = Cache::new(source.cache_dir.clone());
        let status = SourceStatus {
            kind: "etcd",
            endpoints: source.endpoints.clone(),
            prefix: source.prefix.clone(),
            up: false,
            since: now(),
            revision: 0,
            latest_revision: 0,
            last_error: None,
            last_error_at: None,
            refused: None,
            from_cache: false,
        };
        let store = Arc::new(Store::new(source));
        let latest = Mutex::new(Arc::new(Snapshot::empty(store.keys().clone())));
        Lazy::force(&SOURCE_METRICS);
        Ok(Arc::new(Self {
            store,
            cache,
            instance,
            runtime,
            status: Mutex::new(status),
            latest,
            lease: AtomicI64::new(0),
            record_due: tokio::sync::Notify::new(),
            reread: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn prefix(&self) -> &str {
        self.store.prefix()
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Runs `work` on the fleet's runtime, from any runtime (or, with `block`, from none).
    pub async fn run<T, F>(&self, work: impl FnOnce(Arc<Store>) -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        self.runtime
            .spawn(work(self.store.clone()))
            .await
            .unwrap_or_else(|e| Err(Error::Unavailable(format!("the etcd task failed: {e}"))))
    }

    /// [`Fleet::run`] for code outside any runtime (start-up, the command line).
    pub fn block<T, F>(&self, work: impl FnOnce(Arc<Store>) -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        self.runtime.block_on(work(self.store.clone()))
    }

    /// Runs a future that borrows from the caller on the fleet's runtime, from outside any
    /// runtime.
    pub fn block_local<T>(&self, work: impl Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }

    pub fn status(&self) -> SourceStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn is_up(&self) -> bool {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).up
    }

    fn update(&self, change: impl FnOnce(&mut SourceStatus)) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut status);
    }

    /// Connected (or not), with the reason when not.
    pub fn set_up(&self, up: bool, error: Option<&Error>) {
        let was = self.is_up();
        self.update(|s| {
            if s.up != up {
                s.since = now();
            }
            s.up = up;
            if let Some(e) = error {
                s.last_error = Some(e.to_string());
                s.last_error_at = Some(now());
            }
        });
        SOURCE_METRICS.up.set(i64::from(up));
        match (was, up, error) {
            (true, false, Some(e)) => log::error!(
                "lost the configuration source (etcd {}): {e}; serving revision {} until it returns",
                self.store.endpoints().join(","),
                self.status().revision
            ),
            (false, true, _) => log::info!(
                "following the configuration source (etcd {}, prefix {})",
                self.store.endpoints().join(","),
                self.store.prefix()
            ),
            _ => {}
        }
    }

    /// The configuration revision served now.
    pub fn served(&self, revision: i64, from_cache: bool) {
        self.update(|s| {
            s.revision = revision;
            s.from_cache = from_cache;
            if s.refused.as_ref().is_some_and(|r| r.revision <= revision) {
                s.refused = None;
            }
        });
        SOURCE_METRICS.revision.set(revision);
    }

    pub fn refused(&self, revision: i64, problems: Vec<String>) {
        if self.status().refused.is_none_or(|r| r.revision != revision) {
            SOURCE_METRICS.refused.inc();
        }
        log::error!(
            "configuration revision {revision} from etcd refused, revision {} keeps serving: {}",
            self.status().revision,
            problems.join("; ")
        );
        self.update(|s| {
            s.refused = Some(Refusal {
                revision,
                at: now(),
                problems,
            });
        });
    }

    /// The newest whole state seen.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps `snapshot` as the newest state unless a newer one is already known.
    pub fn set_latest(&self, snapshot: Arc<Snapshot>) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        if snapshot.at >= latest.at {
            self.update(|s| s.latest_revision = snapshot.revision());
            *latest = snapshot;
        }
    }

    /// Reads the whole state now and keeps it as the newest. Whether etcd answered is what the
    /// status says from now on.
    pub async fn refresh(&self) -> Result<Arc<Snapshot>, Error> {
        let read = self.run(|s| async move { s.snapshot().await }).await;
        let snapshot = match read {
            Ok(s) => Arc::new(s),
            Err(e) => {
                self.answered(Err(&e));
                return Err(e);
            }
        };
        self.answered(Ok(()));
        self.reread.store(false, Ordering::Release);
        self.set_latest(snapshot.clone());
        Ok(self.latest())
    }

    /// Makes the next write read the whole state first (after a write of unknown outcome).
    pub fn reread_before_writing(&self) {
        self.reread.store(true, Ordering::Release);
    }

    /// Whether the next write must read the whole state first.
    pub fn must_reread(&self) -> bool {
        self.reread.load(Ordering::Acquire)
    }

    /// Records what etcd said to a call just now: an answer means it is up, whatever an earlier
    /// failure said; no answer means it is down until one comes.
    pub fn answered(&self, outcome: Result<(), &Error>) {
        match outcome {
            Ok(()) if !self.is_up() => self.set_up(true, None),
            Err(e @ Error::Unavailable(_)) => self.set_up(false, Some(e)),
            _ => {}
        }
    }

    /// Tells the fleet which revision this instance serves. Returns at once: the record keeper
    /// writes the record (as it is when written), so a slow etcd never holds the caller.
    pub fn announce(&self) {
        self.record_due.notify_one();
    }

    fn record(&self) -> InstanceRecord {
        let status = self.status();
        InstanceRecord {
            id: self.instance.clone(),
            revision: status.revision,
            refused: status.refused.map(|r| r.revision),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            applied_at: now(),
            from_cache: status.from_cache,
        }
    }

    /// The records of the fleet's live instances.
    pub async fn instances(&self) -> Result<Vec<InstanceRecord>, Error> {
        self.run(|s| async move { s.instances().await }).await
    }

    /// Starts following etcd and keeping this instance's record, in the background.
    pub fn start(self: &Arc<Self>, store: Arc<ConfigStore>) {
        let fleet = self.clone();
        self.runtime.spawn(async move { fleet.follow(store).await });
        let fleet = self.clone();
        self.runtime.spawn(async move { fleet.keep_record().await });
    }

    async fn follow(self: Arc<Self>, config: Arc<ConfigStore>) {
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            let mut state = match self.store.snapshot().await {
                Ok(s) => s,
                Err(e) => {
                    self.set_up(false, Some(&e));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if !first {
                SOURCE_METRICS.resyncs.inc();
            }
            first = false;
            self.set_latest(Arc::new(state.clone()));
            config.apply_snapshot(&self.latest()).await;
            let mut watch = match self.store.watch(state.at + 1).await {
                Ok(w) => w,
                Err(e) => {
                    self.set_up(false, Some(&e));
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            self.set_up(true, None);
            backoff = Duration::from_millis(100);
            loop {
                let message = watch.message().await;
                match gatehouse_fleet::etcd::follow(&mut state, message) {
                    Watched::Changed => {
                        self.answered(Ok(()));
                        self.set_latest(Arc::new(state.clone()));
                        config.apply_snapshot(&self.latest()).await;
                    }
                    Watched::Quiet => self.answered(Ok(())),
                    Watched::Lost(e) => {
                        self.set_up(false, Some(&e));
                        self.store.failed().await;
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
        }
    }

    /// Keeps a lease and this instance's record under it, renewing both when etcd comes back.
    async fn keep_record(self: Arc<Self>) {
        loop {
            match self.store.grant(RECORD_TTL).await {
                Ok(lease) => {
                    self.lease.store(lease, Ordering::Relaxed);
                    self.announce_here(lease).await;
                    let updates = async {
                        loop {
                            self.record_due.notified().await;
                            self.announce_here(lease).await;
                        }
                    };
                    let e = tokio::select! {
                        e = self.store.keep_alive(
                            lease,
                            Duration::from_secs(RECORD_TTL as u64 / 3),
                            || self.answered(Ok(())),
                        ) => e,
                        () = updates => unreachable!("the record updates never end"),
                    };
                    log::debug!("instance record lease lost: {e}");
                    if matches!(e, Error::Unavailable(_)) {
                        self.answered(Err(&e));
                        self.store.failed().await;
                    }
                    self.lease.store(0, Ordering::Relaxed);
                }
                Err(e) => log::debug!("no lease for the instance record: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn announce_here(&self, lease: i64) {
        if let Err(e) = self.store.register(&self.record(), lease).await {
            log::debug!("instance record not written: {e}");
        }
    }
}

use once_cell::sync::Lazy;
