//! The configuration as the admin API and reloads change it: one writer at a time, every change
//! validated as a whole, applied as one atomic snapshot swap, and persisted atomically.
//!
//! Order of a change: validate → build the runtime snapshot (nothing published yet) → write the
//! file (temporary file, fsync, rename, fsync of the folder) → publish the snapshot. A crash at any
//! point leaves the old or the new file, never a torn one, and a change is acknowledged only once
//! it is both on disk and serving.
//!
//! On a fleet instance (`instance.etcd`) the persist step is one etcd transaction that compares
//! the revision the change was based on, and [`ConfigStore::apply_snapshot`] applies the
//! revisions other writers commit, each as a whole, or refuses them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::SystemTime;

use gatehouse_config::diff::Diff;
use gatehouse_config::raw::RawConfig;
use gatehouse_config::{ConfigError, Problem};
use gatehouse_fleet::{refs, Cached, Shared, Snapshot};
use gatehouse_proxy::SharedRuntime;

use crate::fleet::{Fleet, SourceStatus};
use crate::metrics::ADMIN_METRICS;

/// Why a change was not applied.
#[derive(Debug)]
pub enum CommitError {
    /// The resulting configuration breaks rules; nothing changed.
    Invalid(Vec<Problem>),
    /// Someone else changed the configuration since the generation the client read.
    Stale { current: u64 },
    /// The file could not be written; nothing changed.
    Persist(String),
    /// The file could not be read or parsed (reload).
    Unreadable(String),
    /// The shared configuration's store (etcd) cannot be reached; nothing changed.
    Unavailable(String),
    /// The change was sent to etcd and no answer came: it may have been committed or not. The
    /// configuration was at revision `base` before it.
    Unknown { base: u64, reason: String },
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Invalid(p) => {
                write!(
                    f,
                    "{} problem{}",
                    p.len(),
                    if p.len() == 1 { "" } else { "s" }
                )?;
                for problem in p {
                    write!(f, "; {problem}")?;
                }
                Ok(())
            }
            CommitError::Stale { current } => write!(
                f,
                "the configuration changed meanwhile (now at {current}, its ETag)"
            ),
            CommitError::Persist(m) | CommitError::Unreadable(m) | CommitError::Unavailable(m) => {
                f.write_str(m)
            }
            CommitError::Unknown { base, reason } => write!(
                f,
                "whether the change was committed is unknown (etcd did not answer: {reason}); the configuration was at revision {base} before it"
            ),
        }
    }
}

/// What `GET /status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub generation: u64,
    pub hash: String,
    pub applied_at: String,
    pub config_file: String,
    pub last_reload_error: Option<String>,
    pub last_reload_error_at: Option<String>,
    /// The etcd revision of the shared configuration served (fleet instances only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Where the shared configuration comes from (fleet instances only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStatus>,
}

/// The outcome of an accepted change (or of a dry run of one).
pub struct Applied<T> {
    /// What the edit returned.
    pub value: T,
    /// The generation serving afterwards (unchanged by a dry run).
    pub generation: u64,
    /// What changed, or would change.
    pub diff: Diff,
}

/// The writable configuration.
pub struct ConfigStore {
    file: PathBuf,
    runtime: SharedRuntime,
    /// The configuration being served, in the file's schema. Held for the whole change, which
    /// serializes writers.
    raw: tokio::sync::Mutex<RawConfig>,
    /// A copy of it for readers, who never wait behind a change (which may compile plugins).
    view: Mutex<Arc<RawConfig>>,
    status: Mutex<Status>,
    /// The etcd of a fleet instance; `None`: the file holds the whole configuration.
    fleet: Option<Arc<Fleet>>,
}

impl ConfigStore {
    /// `raw` must be what `runtime` serves, read from `file`.
    pub fn new(file: PathBuf, raw: RawConfig, runtime: SharedRuntime) -> Self {
        let current = runtime.load();
        let status = Status {
            generation: current.generation,
            hash: current.config.hash.clone(),
            applied_at: now(),
            config_file: file.display().to_string(),
            last_reload_error: None,
            last_reload_error_at: None,
            revision: None,
            source: None,
        };
        Self {
            file,
            runtime,
            view: Mutex::new(Arc::new(raw.clone())),
            raw: tokio::sync::Mutex::new(raw),
            status: Mutex::new(status),
            fleet: None,
        }
    }

    /// A fleet instance's store: `raw` is the local file's instance with the shared
    /// configuration (content references kept) that `runtime` serves.
    pub fn with_fleet(
        file: PathBuf,
        raw: RawConfig,
        runtime: SharedRuntime,
        fleet: Arc<Fleet>,
    ) -> Self {
        Self {
            fleet: Some(fleet),
            ..Self::new(file, raw, runtime)
        }
    }

    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// The entity tag of the configuration now: the etcd revision on a fleet instance, the
    /// generation otherwise.
    pub fn etag(&self) -> String {
        etag(self.version())
    }

    fn version(&self) -> u64 {
        match &self.fleet {
            Some(f) => f.status().revision.max(0) as u64,
            None => self.runtime.load().generation,
        }
    }

    pub fn runtime(&self) -> &SharedRuntime {
        &self.runtime
    }

    pub fn status(&self) -> Status {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(fleet) = &self.fleet {
            let source = fleet.status();
            status.revision = Some(source.revision);
            status.source = Some(source);
        }
        status
    }

    /// The configuration being served and its generation; never waits behind a change.
    pub fn read(&self) -> (Arc<RawConfig>, u64) {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (view, self.runtime.load().generation)
    }

    /// Applies `edit` to the current configuration. `expected` is the generation the client read
    /// (`If-Match`), if it sent one. The edit returns an error of its own (e.g. not found) to
    /// abort without changing anything; that error wins over a stale `If-Match` (RFC 9110
    /// §13.2.1: a request that would fail without its precondition gets that failure, not 412). A dry run validates and builds exactly as a change
    /// would, and applies and persists nothing. `origin` names the change in the audit log.
    pub async fn change<T, E>(
        &self,
        expected: Option<&[String]>,
        dry_run: bool,
        origin: &str,
        edit: impl FnMut(&mut RawConfig) -> Result<T, E>,
    ) -> Result<Result<Applied<T>, E>, CommitError> {
        match &self.fleet {
            Some(fleet) => {
                self.change_shared(fleet, expected, dry_run, origin, edit)
                    .await
            }
            None => self.change_file(expected, dry_run, origin, edit).await,
        }
    }

    async fn change_file<T, E>(
        &self,
        expected: Option<&[String]>,
        dry_run: bool,
        origin: &str,
        mut edit: impl FnMut(&mut RawConfig) -> Result<T, E>,
    ) -> Result<Result<Applied<T>, E>, CommitError> {
        let mut raw = self.raw.lock().await;
        let current = self.runtime.load().generation;
        if expected.is_some_and(|tags| !etag_matches(tags, current)) {
            let mut probe = raw.clone();
            if let Err(e) = edit(&mut probe) {
                return Ok(Err(e));
            }
            self.check(&probe)?;
            return Err(CommitError::Stale { current });
        }
        let mut next = raw.clone();
        let value = match edit(&mut next) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        // A secret shown redacted and sent back unchanged keeps its stored value.
        let problems = gatehouse_config::secrets::restore(&mut next, &raw);
        if !problems.is_empty() {
            return Err(CommitError::Invalid(problems));
        }
        let diff = gatehouse_config::diff::diff(&raw, &next);
        let persist = (!dry_run).then(|| Persist::File(Box::new(next.clone())));
        let generation = self.commit(&next, persist, dry_run).await?;
        if !dry_run {
            audit(origin, generation, &diff);
            *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(next.clone());
            *raw = next;
        }
        Ok(Ok(Applied {
            value,
            generation,
            diff,
        }))
    }

    /// Re-reads the file and applies it (or, with `dry_run`, only checks it and tells what would
    /// change); on any error the current configuration keeps serving.
    pub async fn reload(&self, dry_run: bool, origin: &str) -> Result<Applied<()>, CommitError> {
        let mut raw = self.raw.lock().await;
        let result = async {
            let text = std::fs::read_to_string(&self.file).map_err(|e| {
                CommitError::Unreadable(format!("cannot read {}: {e}", self.file.display()))
            })?;
            let mut next = gatehouse_config::parse_raw(&text, &self.file.display().to_string())
                .map_err(|e| CommitError::Unreadable(e.to_string()))?;
            let generation = match &self.fleet {
                None => self.commit(&next, None, dry_run).await?,
                Some(fleet) => {
                    let sections = Shared::sections_in(&next);
                    if !sections.is_empty() {
                        return Err(CommitError::Unreadable(local_sections_message(
                            &self.file, &sections,
                        )));
                    }
                    // the local file changes this instance's settings; the shared part stays
                    next = Shared::of(&raw).with_instance(next.instance);
                    let build = self.localized(fleet, &next);
                    self.commit(&build, None, dry_run).await?
                }
            };
            Ok::<_, CommitError>((next, generation))
        }
        .await;
        if dry_run {
            return result.map(|(next, generation)| Applied {
                value: (),
                generation,
                diff: gatehouse_config::diff::diff(&raw, &next),
            });
        }
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok((next, generation)) => {
                let diff = gatehouse_config::diff::diff(&raw, &next);
                audit(origin, generation, &diff);
                *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(next.clone());
                *raw = next;
                status.last_reload_error = None;
                status.last_reload_error_at = None;
                ADMIN_METRICS.reloads_ok.inc();
                log::info!(
                    "configuration reloaded from {}: generation {generation}",
                    self.file.display()
                );
                Ok(Applied {
                    value: (),
                    generation,
                    diff,
                })
            }
            Err(e) => {
                status.last_reload_error = Some(e.to_string());
                status.last_reload_error_at = Some(now());
                ADMIN_METRICS.reloads_failed.inc();
                log::error!(
                    "reload of {} refused, the previous configuration keeps serving: {e}",
                    self.file.display()
                );
                Err(e)
            }
        }
    }

    /// Validates, builds, persists (when asked) and publishes `next`; a dry run stops after the
    /// build and answers the current generation.
    async fn commit(
        &self,
        next: &RawConfig,
        persist: Option<Persist<'_>>,
        dry_run: bool,
    ) -> Result<u64, CommitError> {
        let prepared = self.prepare(next).await?;
        if dry_run {
            return Ok(self.runtime.load().generation);
        }
        if let Some(persist) = persist {
            self.persist(persist).await?;
        }
        Ok(self.publish(prepared))
    }

    /// Validates `next` without building it: a change that fails on its own is refused as such
    /// even when its `If-Match` is stale (RFC 9110 §13.2.1).
    fn check(&self, next: &RawConfig) -> Result<(), CommitError> {
        let origin = self.file.display().to_string();
        let base = self.file.parent().unwrap_or_else(|| Path::new("."));
        match gatehouse_config::from_raw(next, &origin, base) {
            Ok(_) => Ok(()),
            Err(ConfigError::Invalid { problems, .. }) => Err(CommitError::Invalid(problems.0)),
            Err(other) => Err(CommitError::Unreadable(other.to_string())),
        }
    }

    /// Validates and builds `next` into a runtime snapshot, publishing nothing.
    async fn prepare(&self, next: &RawConfig) -> Result<gatehouse_proxy::Runtime, CommitError> {
        // Known before the change serves, so no log line of it can show them.
        gatehouse_config::secrets::remember_all(next);
        let origin = self.file.display().to_string();
        let base = self
            .file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .to_owned();
        let config = gatehouse_config::from_raw(next, &origin, &base).map_err(|e| match e {
            ConfigError::Invalid { problems, .. } => CommitError::Invalid(problems.0),
            other => CommitError::Unreadable(other.to_string()),
        })?;
        // Building reads files, resolves names and configures plugins: keep it off the workers.
        let runtime = self.runtime.clone();
        let prepared = tokio::task::spawn_blocking(move || runtime.prepare(config))
            .await
            .map_err(|e| CommitError::Persist(format!("building the configuration failed: {e}")))?
            .map_err(CommitError::Invalid)?;
        Ok(prepared)
    }

    /// Writes an accepted change; answers the etcd revision it became (0 for the file).
    async fn persist(&self, persist: Persist<'_>) -> Result<i64, CommitError> {
        match persist {
            Persist::File(next) => {
                let text = format!(
                    "# Gatehouse configuration, written by the admin API (comments are not kept).\n{}",
                    gatehouse_config::to_yaml(&next)
                );
                let file = self.file.clone();
                tokio::task::spawn_blocking(move || write_atomically(&file, text.as_bytes()))
                    .await
                    .map_err(|e| CommitError::Persist(e.to_string()))?
                    .map_err(|e| {
                        CommitError::Persist(format!("cannot write {}: {e}", self.file.display()))
                    })?;
                Ok(0)
            }
            Persist::Etcd {
                fleet,
                base,
                next,
                uploads,
                origin,
            } => {
                let base_revision = base.revision().max(0) as u64;
                let (base, next, by, origin) = (
                    base.clone(),
                    next.clone(),
                    fleet.instance().to_owned(),
                    origin.to_owned(),
                );
                let result =
                    fleet
                        .run(move |s| async move {
                            s.commit(&base, &next, &uploads, &by, &origin).await
                        })
                        .await;
                match result {
                    Ok(r) => {
                        fleet.answered(Ok(()));
                        Ok(r)
                    }
                    Err(gatehouse_fleet::Error::Conflict) => Err(CommitError::Stale {
                        current: fleet.latest().revision().max(0) as u64,
                    }),
                    Err(gatehouse_fleet::Error::Unavailable(m)) => {
                        fleet.answered(Err(&gatehouse_fleet::Error::Unavailable(m.clone())));
                        Err(CommitError::Unavailable(unavailable(&m)))
                    }
                    Err(gatehouse_fleet::Error::Refused(m)) => Err(CommitError::Persist(m)),
                    Err(gatehouse_fleet::Error::Unknown(m)) => {
                        fleet.answered(Err(&gatehouse_fleet::Error::Unavailable(m.clone())));
                        // the next write starts from a fresh read, never from this base
                        fleet.reread_before_writing();
                        Err(CommitError::Unknown {
                            base: base_revision,
                            reason: m,
                        })
                    }
                }
            }
        }
    }

    /// Publishes a prepared snapshot and records it in the status.
    fn publish(&self, prepared: gatehouse_proxy::Runtime) -> u64 {
        let hash = prepared.config.hash.clone();
        let generation = self.runtime.publish(prepared);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.generation = generation;
        status.hash = hash;
        status.applied_at = now();
        generation
    }
}

/// Where an accepted change is written before it serves.
enum Persist<'a> {
    /// The configuration file.
    File(Box<RawConfig>),
    /// The fleet's etcd: `next` as one transaction based on `base`.
    Etcd {
        fleet: &'a Fleet,
        base: &'a Arc<Snapshot>,
        next: &'a Shared,
        uploads: Vec<refs::Upload>,
        origin: &'a str,
    },
}

/// Attempts of a write whose base revision another writer overtook (without `If-Match`: the edit
/// is made again on the newer configuration).
const WRITE_ATTEMPTS: usize = 5;

impl ConfigStore {
    /// A change on a fleet instance: the edit is made on the newest shared configuration known,
    /// validated and built exactly as a local change, then committed to etcd as one transaction
    /// that compares the revision it was based on. It serves here as soon as etcd accepted it;
    /// the other instances follow through their watch.
    async fn change_shared<T, E>(
        &self,
        fleet: &Fleet,
        expected: Option<&[String]>,
        dry_run: bool,
        origin: &str,
        mut edit: impl FnMut(&mut RawConfig) -> Result<T, E>,
    ) -> Result<Result<Applied<T>, E>, CommitError> {
        let mut raw = self.raw.lock().await;
        let mut base = if dry_run || (fleet.is_up() && !fleet.must_reread()) {
            fleet.latest()
        } else {
            // the last call failed: ask etcd now (it may have a new leader since) rather than
            // refuse on what an earlier failure said
            fleet.refresh().await.map_err(source_error)?
        };
        for attempt in 1..=WRITE_ATTEMPTS {
            if let Some(tags) = expected {
                if !etag_matches(tags, base.revision().max(0) as u64) {
                    // the client may have read a revision this instance has not seen yet
                    base = fleet.refresh().await.map_err(source_error)?;
                    if !etag_matches(tags, base.revision().max(0) as u64) {
                        if let Ok(current) = base.shared() {
                            let mut probe = current.with_instance(raw.instance.clone());
                            if let Err(e) = edit(&mut probe) {
                                return Ok(Err(e));
                            }
                        }
                        return Err(CommitError::Stale {
                            current: base.revision().max(0) as u64,
                        });
                    }
                }
            }
            let current = base
                .shared()
                .map_err(|problems| CommitError::Invalid(stored_problems(&base, problems)))?
                .with_instance(raw.instance.clone());
            let mut next = current.clone();
            let value = match edit(&mut next) {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            let mut problems = gatehouse_config::secrets::restore(&mut next, &current);
            problems.extend(gatehouse_config::secrets::clear_secrets(&next));
            if !problems.is_empty() {
                return Err(CommitError::Invalid(problems));
            }
            let mut shared = Shared::of(&next);
            let roots = file_roots(&self.file, &next);
            let uploads = refs::externalize(&mut shared, &config_dir(&self.file), &roots)
                .map_err(CommitError::Invalid)?;
            let shared = shared.normalized().map_err(CommitError::Invalid)?;
            let next = shared.clone().with_instance(raw.instance.clone());
            let diff = gatehouse_config::diff::diff(&current, &next);
            let build = self.localized_with(fleet, &next, &uploads).await?;
            let prepared = self.prepare(&build).await?;
            if dry_run {
                return Ok(Ok(Applied {
                    value,
                    generation: self.runtime.load().generation,
                    diff,
                }));
            }
            let persisted = self
                .persist(Persist::Etcd {
                    fleet,
                    base: &base,
                    next: &shared,
                    uploads,
                    origin,
                })
                .await;
            match persisted {
                Ok(revision) => {
                    let generation = self.publish(prepared);
                    fleet.served(revision, false);
                    audit(origin, generation, &diff);
                    self.keep(fleet, &mut raw, next, revision);
                    // the next write here starts from this revision, whatever the watch says
                    if let Err(e) = fleet.refresh().await {
                        log::debug!("no fresh read after a write: {e}");
                    }
                    fleet.announce();
                    return Ok(Ok(Applied {
                        value,
                        generation,
                        diff,
                    }));
                }
                Err(CommitError::Stale { .. })
                    if expected.is_none() && attempt < WRITE_ATTEMPTS =>
                {
                    base = fleet.refresh().await.map_err(source_error)?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(CommitError::Stale {
            current: base.revision().max(0) as u64,
        })
    }

    /// Applies a whole state read from etcd, if its revision is not the one serving. A state
    /// that is not a valid configuration (or names a file etcd does not hold) is refused: the
    /// last good configuration keeps serving and the status says why.
    pub async fn apply_snapshot(&self, snapshot: &Snapshot) {
        let Some(fleet) = &self.fleet else { return };
        let mut raw = self.raw.lock().await;
        let revision = snapshot.revision();
        let status = fleet.status();
        if revision == status.revision && !status.from_cache {
            return;
        }
        if status
            .refused
            .as_ref()
            .is_some_and(|r| r.revision == revision)
        {
            return;
        }
        let shared = match snapshot.shared() {
            Ok(s) => s,
            Err(problems) => return fleet.refused(revision, problems),
        };
        if let Err(problems) = fetch_files(fleet, &shared).await {
            return fleet.refused(revision, problems);
        }
        let next = shared.with_instance(raw.instance.clone());
        let build = self.localized(fleet, &next);
        let prepared = match self.prepare(&build).await {
            Ok(p) => p,
            Err(CommitError::Invalid(problems)) => {
                return fleet.refused(revision, problems.iter().map(|p| p.to_string()).collect())
            }
            Err(e) => return fleet.refused(revision, vec![e.to_string()]),
        };
        let diff = gatehouse_config::diff::diff(&raw, &next);
        let generation = self.publish(prepared);
        fleet.served(revision, false);
        audit(&format!("etcd revision {revision}"), generation, &diff);
        log::info!("configuration revision {revision} from etcd serving: generation {generation}");
        self.keep(fleet, &mut raw, next, revision);
        fleet.announce();
    }

    /// Records `next` (revision `revision`) as the configuration served, and caches it.
    fn keep(&self, fleet: &Fleet, raw: &mut RawConfig, next: RawConfig, revision: i64) {
        let cached = Cached {
            schema: gatehouse_fleet::layout::SCHEMA,
            prefix: fleet.prefix().to_owned(),
            revision,
            at: now(),
            shared: Shared::of(&next),
        };
        if let Err(e) = fleet.cache().store(&cached) {
            log::warn!(
                "cannot write the configuration cache {}: {e}; a restart while etcd is unreachable would not serve revision {revision}",
                fleet.cache().config_file().display()
            );
        }
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(next.clone());
        *raw = next;
    }
}

/// Brings every file `shared` names into the cache folder.
pub async fn fetch_files(fleet: &Fleet, shared: &Shared) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for sha in refs::referenced(shared) {
        if fleet.cache().has_file(&sha) {
            continue;
        }
        let wanted = sha.clone();
        match fleet.run(move |s| async move { s.fetch_file(&wanted).await }).await {
                Ok(Some(bytes)) => {
                    if let Err(e) = fleet.cache().store_file(&sha, &bytes) {
                        problems.push(format!(
                            "cannot keep file sha256:{sha} in {}: {e}",
                            fleet.cache().files().display()
                        ));
                    }
                }
                Ok(None) => problems.push(format!(
                    "the configuration names file sha256:{sha}, which etcd does not hold (…/files/{sha}/); store it again with gatehouse config push"
                )),
                Err(e) => problems.push(format!("file sha256:{sha} could not be read: {e}")),
            }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

impl ConfigStore {
    /// The configuration to validate and build: content references replaced by the cached files,
    /// which the configuration may read.
    fn localized(&self, fleet: &Fleet, next: &RawConfig) -> RawConfig {
        localize(fleet, &self.file, next)
    }

    /// [`ConfigStore::localized`] for a change that brings new files: they are cached first.
    async fn localized_with(
        &self,
        fleet: &Fleet,
        next: &RawConfig,
        uploads: &[refs::Upload],
    ) -> Result<RawConfig, CommitError> {
        for upload in uploads {
            if !fleet.cache().has_file(&upload.sha256) {
                fleet
                    .cache()
                    .store_file(&upload.sha256, &upload.bytes)
                    .map_err(|e| CommitError::Persist(format!("cannot cache a file: {e}")))?;
            }
        }
        fetch_files(fleet, &Shared::of(next)).await.map_err(|p| {
            CommitError::Invalid(
                p.into_iter()
                    .map(|m| Problem::new("files", m, "push the file again"))
                    .collect(),
            )
        })?;
        Ok(self.localized(fleet, next))
    }
}

/// `next` with its content references replaced by the cached files, and the cache's file folder
/// among the folders it may read.
pub fn localize(fleet: &Fleet, file: &Path, next: &RawConfig) -> RawConfig {
    let mut shared = Shared::of(next);
    refs::localize(&mut shared, &fleet.cache().files());
    let mut instance = next.instance.clone();
    if instance.file_roots.is_empty() {
        instance
            .file_roots
            .push(config_dir(file).display().to_string());
    }
    instance
        .file_roots
        .push(fleet.cache().files().display().to_string());
    shared.with_instance(instance)
}

/// The configuration a fleet instance starts with: the newest revision in etcd, or, when etcd
/// cannot be reached or that revision is not valid, the cached last good one.
pub struct Initial {
    /// The local instance with the shared configuration, content references kept.
    pub raw: RawConfig,
    /// The validated configuration to serve (files from the cache folder).
    pub config: gatehouse_config::Config,
    pub revision: i64,
    pub from_cache: bool,
}

/// Reads the configuration a fleet instance starts with (blocking: before the server runs).
/// `local` is the local file's content, `file` its path.
pub fn initial(fleet: &Fleet, file: &Path, local: &RawConfig) -> Result<Initial, String> {
    let origin = file.display().to_string();
    let build = |shared: Shared, revision: i64, from_cache: bool| -> Result<Initial, Vec<String>> {
        let raw = shared.with_instance(local.instance.clone());
        let localized = localize(fleet, file, &raw);
        let config = gatehouse_config::from_raw(&localized, &origin, &config_dir(file)).map_err(
            |e| match e {
                ConfigError::Invalid { problems, .. } => {
                    problems.0.iter().map(|p| p.to_string()).collect()
                }
                other => vec![other.to_string()],
            },
        )?;
        Ok(Initial {
            raw,
            config,
            revision,
            from_cache,
        })
    };
    let etcd_error = match fleet.block(|s| async move { s.snapshot().await }) {
        Ok(snapshot) => {
            let snapshot = Arc::new(snapshot);
            fleet.set_latest(snapshot.clone());
            let revision = snapshot.revision();
            if revision == 0 {
                format!(
                    "etcd holds no shared configuration under {} yet (store one with gatehouse config push)",
                    fleet.prefix()
                )
            } else {
                let result = snapshot.shared().and_then(|shared| {
                    fleet
                        .block_local(fetch_files(fleet, &shared))
                        .map(|()| shared)
                });
                match result.and_then(|shared| build(shared, revision, false)) {
                    Ok(initial) => return Ok(initial),
                    Err(problems) => {
                        fleet.refused(revision, problems.clone());
                        format!(
                            "revision {revision} in etcd is not a valid configuration: {}",
                            problems.join("; ")
                        )
                    }
                }
            }
        }
        Err(e) => e.to_string(),
    };
    let cached = fleet.cache().load(fleet.prefix())?.ok_or_else(|| {
        format!(
            "{etcd_error}; and there is no cached configuration in {} to serve meanwhile",
            fleet.cache().config_file().display()
        )
    })?;
    log::warn!(
        "{etcd_error}; serving the cached revision {} from {} until etcd answers",
        cached.revision,
        fleet.cache().config_file().display()
    );
    let missing: Vec<String> = refs::referenced(&cached.shared)
        .into_iter()
        .filter(|sha| !fleet.cache().has_file(sha))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{etcd_error}; the cached configuration names files missing from {}: {}",
            fleet.cache().files().display(),
            missing.join(", ")
        ));
    }
    build(cached.shared, cached.revision, true).map_err(|problems| {
        format!(
            "{etcd_error}; the cached configuration is not valid either: {}",
            problems.join("; ")
        )
    })
}

/// The folder relative paths of the configuration file are read from.
fn config_dir(file: &Path) -> PathBuf {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned())
}

/// The folders a configuration may read files from (absolute).
fn file_roots(file: &Path, raw: &RawConfig) -> Vec<PathBuf> {
    let base = config_dir(file);
    if raw.instance.file_roots.is_empty() {
        vec![base]
    } else {
        raw.instance
            .file_roots
            .iter()
            .map(|r| base.join(r))
            .collect()
    }
}

/// The message of a write refused because etcd cannot be reached.
fn unavailable(reason: &str) -> String {
    format!(
        "the shared configuration's etcd cannot be reached ({reason}); this instance keeps serving its last good configuration and accepts changes again once etcd answers"
    )
}

fn source_error(e: gatehouse_fleet::Error) -> CommitError {
    match e {
        gatehouse_fleet::Error::Unavailable(m) | gatehouse_fleet::Error::Unknown(m) => {
            CommitError::Unavailable(unavailable(&m))
        }
        other => CommitError::Persist(other.to_string()),
    }
}

fn stored_problems(snapshot: &Snapshot, problems: Vec<String>) -> Vec<Problem> {
    problems
        .into_iter()
        .map(|p| {
            Problem::new(
                format!("etcd revision {}", snapshot.revision()),
                format!("the stored configuration cannot be read: {p}"),
                "replace it with gatehouse config push",
            )
        })
        .collect()
}

/// Why a fleet instance's local file may not hold shared sections.
pub fn local_sections_message(file: &Path, sections: &[&str]) -> String {
    format!(
        "{}: {} belong{} to the shared configuration, which lives in etcd when instance.etcd is set; remove {} from this file (store {} with gatehouse config push)",
        file.display(),
        sections.join(", "),
        if sections.len() == 1 { "s" } else { "" },
        if sections.len() == 1 { "it" } else { "them" },
        if sections.len() == 1 { "it" } else { "them" },
    )
}

/// The `ETag` of a generation. Clients treat it as opaque.
pub fn etag(generation: u64) -> String {
    format!("\"{generation}\"")
}

/// Whether an `If-Match` list (entity tags as sent, `*` for any) matches the generation.
fn etag_matches(tags: &[String], generation: u64) -> bool {
    let current = etag(generation);
    tags.iter().any(|t| {
        let t = t.trim();
        t == "*" || t == current || t.strip_prefix("W/") == Some(current.as_str())
    })
}

/// Logs an applied change as one structured line (target `gatehouse::audit`): when, what asked
/// for it, what changed (names and setting keys, never values) and the resulting generation.
fn audit(origin: &str, generation: u64, diff: &Diff) {
    let line = serde_json::json!({
        "at": now(),
        "origin": origin,
        "generation": generation,
        "changes": diff,
    });
    log::info!(target: "gatehouse::audit", "{line}");
}

pub use gatehouse_config::files::write_atomically;

/// The current time, RFC 3339, to the second.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Re-reads the configuration file on `SIGHUP`. Runs as a Pingora background service, in the
/// serving process.
pub struct ReloadOnHangup(pub std::sync::Arc<ConfigStore>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("cannot listen for SIGHUP, reload with POST /reload instead: {e}");
                    return;
                }
            };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hangups.recv() => {
                    log::info!("SIGHUP: reloading {}", self.0.file.display());
                    let _ = self.0.reload(false, "SIGHUP").await;
                }
            }
        }
    }
}
