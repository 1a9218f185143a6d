//! The configuration as the admin API and reloads change it: one writer at a time, every change
//! validated as a whole, applied as one atomic snapshot swap, and persisted atomically.
//!
//! Order of a change: validate → build the runtime snapshot (nothing published yet) → write the
//! file (temporary file, fsync, rename, fsync of the folder) → publish the snapshot. A crash at any
//! point leaves the old or the new file, never a torn one, and a change is acknowledged only once
//! it is both on disk and serving.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use std::sync::Arc;

use gatehouse_config::diff::Diff;
use gatehouse_config::raw::RawConfig;
use gatehouse_config::{ConfigError, Problem};
use gatehouse_proxy::SharedRuntime;

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
                "the configuration changed meanwhile (now generation {current})"
            ),
            CommitError::Persist(m) | CommitError::Unreadable(m) => f.write_str(m),
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
        };
        Self {
            file,
            runtime,
            view: Mutex::new(Arc::new(raw.clone())),
            raw: tokio::sync::Mutex::new(raw),
            status: Mutex::new(status),
        }
    }

    pub fn runtime(&self) -> &SharedRuntime {
        &self.runtime
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The configuration being served and its generation; never waits behind a change.
    pub fn read(&self) -> (Arc<RawConfig>, u64) {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (view, self.runtime.load().generation)
    }

    /// Applies `edit` to the current configuration. `expected` is the generation the client read
    /// (`If-Match`), if it sent one. The edit returns an error of its own (e.g. not found) to
    /// abort without changing anything. A dry run validates and builds exactly as a change
    /// would, and applies and persists nothing. `origin` names the change in the audit log.
    pub async fn change<T, E>(
        &self,
        expected: Option<&[String]>,
        dry_run: bool,
        origin: &str,
        edit: impl FnOnce(&mut RawConfig) -> Result<T, E>,
    ) -> Result<Result<Applied<T>, E>, CommitError> {
        let mut raw = self.raw.lock().await;
        let current = self.runtime.load().generation;
        if expected.is_some_and(|tags| !etag_matches(tags, current)) {
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
        let generation = self.commit(&next, !dry_run, dry_run).await?;
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
            let next = gatehouse_config::parse_raw(&text, &self.file.display().to_string())
                .map_err(|e| CommitError::Unreadable(e.to_string()))?;
            let generation = self.commit(&next, false, dry_run).await?;
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
        persist: bool,
        dry_run: bool,
    ) -> Result<u64, CommitError> {
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
        let hash = config.hash.clone();
        // Building reads files, resolves names and configures plugins: keep it off the workers.
        let runtime = self.runtime.clone();
        let prepared = tokio::task::spawn_blocking(move || runtime.prepare(config))
            .await
            .map_err(|e| CommitError::Persist(format!("building the configuration failed: {e}")))?
            .map_err(CommitError::Invalid)?;
        if dry_run {
            return Ok(self.runtime.load().generation);
        }
        if persist {
            let text = format!(
                "# Gatehouse configuration, written by the admin API (comments are not kept).\n{}",
                gatehouse_config::to_yaml(next)
            );
            let file = self.file.clone();
            tokio::task::spawn_blocking(move || write_atomically(&file, text.as_bytes()))
                .await
                .map_err(|e| CommitError::Persist(e.to_string()))?
                .map_err(|e| {
                    CommitError::Persist(format!("cannot write {}: {e}", self.file.display()))
                })?;
        }
        let generation = self.runtime.publish(prepared);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.generation = generation;
        status.hash = hash;
        status.applied_at = now();
        Ok(generation)
    }
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

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // The file holds secrets: owner-only, or stricter if it already was.
    let mode = std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o600);
    // A stale temporary file (a crash) is removed; if it is a symbolic link, the link itself.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        // Created exclusively: never through a link, never someone else's file.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

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
