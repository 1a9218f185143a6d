//! The shared configuration in etcd: whole-state reads at one revision, changes as transactions
//! that compare the revision they were based on, files by content, instance records, and the
//! watch that instances follow.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, KvClient, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use gatehouse_config::EtcdPassword;
use gatehouse_config::EtcdSource;
use tokio::sync::Mutex;

use crate::layout::{self, Commit, FileMeta, Keys, Op, Shared};
use crate::refs::{self, Upload};

/// Keys read per request of a whole-state read.
const PAGE: i64 = 500;

/// Largest message accepted from etcd (a page of large upstreams, a file chunk).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How often an open stream's connection is pinged, so that a cut is noticed (within this plus
/// `instance.etcd.timeout`). Twice etcd's default `--grpc-keepalive-min-time`.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(10);

/// A set abandoned by a writer that stopped half-way is removed once it is this old.
const ABANDONED_SET_AGE: Duration = Duration::from_secs(3600);

/// Why an etcd operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// etcd could not be reached, or did not answer in time.
    Unavailable(String),
    /// The configuration changed since the revision the change was based on.
    Conflict,
    /// etcd answered, and said no (permissions, limits), or the data is unusable.
    Refused(String),
    /// A transaction was sent and no answer came: it may or may not have been committed.
    Unknown(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Unavailable(m) => write!(f, "etcd is unavailable: {m}"),
            Error::Conflict => f.write_str("the configuration changed meanwhile"),
            Error::Refused(m) => f.write_str(m),
            Error::Unknown(m) => write!(
                f,
                "etcd did not answer whether the change was committed: {m}"
            ),
        }
    }
}

impl From<etcd_client::Error> for Error {
    fn from(e: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        match &e {
            E::GRpcStatus(status) => match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
                | tonic::Code::Aborted => Error::Unavailable(status.message().to_owned()),
                _ => Error::Refused(format!("etcd refused: {}", status.message())),
            },
            E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
                Error::Unavailable(e.to_string())
            }
            _ => Error::Refused(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The error of a commit transaction that was sent: without an answer its outcome is unknown,
/// unless the member said it has no leader (it refuses such a request before proposing it).
fn outcome_unknown(e: Error) -> Error {
    match e {
        Error::Unavailable(m) if !m.contains("no leader") => Error::Unknown(m),
        other => other,
    }
}

/// One key's value and the revision that last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// Every key under `config/` at one etcd revision: a whole configuration, whatever was
/// happening.
#[derive(Debug, Clone)]
pub struct Snapshot {
    keys: Keys,
    /// The etcd revision the state is at.
    pub at: i64,
    pub entries: BTreeMap<String, Entry>,
}

impl Snapshot {
    /// The state of an empty prefix.
    pub fn empty(keys: Keys) -> Self {
        Self {
            keys,
            at: 0,
            entries: BTreeMap::new(),
        }
    }

    /// The configuration's revision: when its commit record last changed (0: never written).
    pub fn revision(&self) -> i64 {
        self.entries
            .get(&self.keys.commit())
            .map_or(0, |e| e.mod_revision)
    }

    /// The commit record, if any.
    pub fn commit(&self) -> std::result::Result<Option<Commit>, String> {
        let Some(entry) = self.entries.get(&self.keys.commit()) else {
            return Ok(None);
        };
        let commit: Commit = serde_json::from_slice(&entry.value)
            .map_err(|e| format!("{}: not a commit record: {e}", self.keys.commit()))?;
        if commit.schema != layout::SCHEMA {
            return Err(format!(
                "{}: layout schema {} (this Gatehouse reads schema {}): written by another version",
                self.keys.commit(),
                commit.schema,
                layout::SCHEMA
            ));
        }
        Ok(Some(commit))
    }

    /// The entries of set `id`, by key relative to the set.
    pub fn set_entries(&self, id: &str) -> BTreeMap<String, Vec<u8>> {
        let prefix = self.keys.set(id);
        self.entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, e)| (k[prefix.len()..].to_owned(), e.value.clone()))
            .collect()
    }

    /// The shared configuration this state holds; an empty one when nothing was ever written.
    pub fn shared(&self) -> std::result::Result<Shared, Vec<String>> {
        match self.commit().map_err(|e| vec![e])? {
            None => Ok(Shared::default()),
            Some(commit) => {
                let entries = self.set_entries(&commit.set);
                layout::decode(entries).map_err(|problems| {
                    problems
                        .into_iter()
                        .map(|p| format!("{}{p}", self.keys.set(&commit.set)))
                        .collect()
                })
            }
        }
    }

    /// The ids of the sets present.
    fn set_ids(&self) -> BTreeSet<String> {
        let prefix = self.keys.sets();
        self.entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, _)| k[prefix.len()..].split('/').next().map(str::to_owned))
            .collect()
    }

    /// Applies one watch event; returns whether it changed the commit record.
    fn apply(&mut self, event: &etcd_client::Event) -> bool {
        let Some(kv) = event.kv() else { return false };
        let Ok(key) = kv.key_str() else { return false };
        let is_commit = key == self.keys.commit();
        match event.event_type() {
            EventType::Put => {
                self.entries.insert(
                    key.to_owned(),
                    Entry {
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                    },
                );
            }
            EventType::Delete => {
                self.entries.remove(key);
            }
        }
        is_commit
    }
}

/// A serving instance as it tells the fleet.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    /// The configuration revision it serves.
    pub revision: i64,
    /// A newer revision it refused, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<i64>,
    pub version: String,
    /// When it last applied a configuration (RFC 3339).
    pub applied_at: String,
    #[serde(default)]
    pub from_cache: bool,
}

/// The etcd cluster of one prefix.
///
/// One member at a time is talked to; when it does not answer, the next endpoint is tried
/// (the etcd client's own balancer fails whole while any endpoint is down).
pub struct Store {
    source: EtcdSource,
    keys: Keys,
    client: Mutex<Option<Client>>,
    /// The endpoint the next connection goes to.
    next: std::sync::atomic::AtomicUsize,
}

impl Store {
    /// Connects lazily: nothing is sent before the first operation.
    pub fn new(source: EtcdSource) -> Self {
        Self {
            keys: Keys::new(&source.prefix),
            source,
            client: Mutex::new(None),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Drops the connection after a failure: the next request connects to the next endpoint.
    pub async fn failed(&self) {
        if self.client.lock().await.take().is_some() {
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn endpoints(&self) -> &[String] {
        &self.source.endpoints
    }

    pub fn prefix(&self) -> &str {
        &self.source.prefix
    }

    async fn client(&self) -> Result<Client> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let options = self.options()?;
        let count = self.source.endpoints.len().max(1);
        let index = self.next.load(std::sync::atomic::Ordering::Relaxed) % count;
        let endpoint = &self.source.endpoints[index];
        let connected = tokio::time::timeout(
            self.source.timeout,
            Client::connect([endpoint], Some(options)),
        )
        .await
        .map_err(|_| Error::Unavailable(format!("{endpoint}: no answer in time")))
        .and_then(|r| r.map_err(Error::from));
        match connected {
            Ok(client) => {
                *slot = Some(client.clone());
                Ok(client)
            }
            Err(e) => {
                self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn options(&self) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.source.timeout)
            // etcd closes a connection that pings more often than `--grpc-keepalive-min-time`
            // (default 5 s) or while no stream is open: ping what its defaults accept, and only
            // under a watch or a lease keep-alive (what must notice a cut)
            .with_keep_alive(KEEP_ALIVE_EVERY, self.source.timeout)
            .with_keep_alive_while_idle(false)
            // a member cut off from the leader refuses, rather than serving a stale view
            .with_require_leader(true)
            // etcd forgets auth tokens (expiry, `auth disable`/`enable`): log in again
            .with_auto_token_refresh(true);
        if let Some((user, password)) = &self.source.credentials {
            let password = match password {
                EtcdPassword::Value(v) => v.clone(),
                EtcdPassword::File(path) => std::fs::read_to_string(path)
                    .map(|t| t.trim_end_matches(['\n', '\r']).to_owned())
                    .map_err(|e| Error::Refused(format!("cannot read {}: {e}", path.display())))?,
            };
            gatehouse_config::secrets::remember(&password);
            options = options.with_user(user.clone(), password);
        }
        if self.source.ca_file.is_some() || self.source.identity.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.source.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| Error::Refused(format!("cannot read {}: {e}", ca.display())))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some(id) = &self.source.identity {
                let read = |p: &std::path::Path| {
                    std::fs::read(p)
                        .map_err(|e| Error::Refused(format!("cannot read {}: {e}", p.display())))
                };
                tls = tls.identity(Identity::from_pem(
                    read(&id.cert_file)?,
                    read(&id.key_file)?,
                ));
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }

    async fn kv(&self) -> Result<KvClient> {
        Ok(self
            .client()
            .await?
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE))
    }

    /// Runs one request under the configured timeout.
    async fn timed<T>(
        &self,
        request: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        let result = match tokio::time::timeout(self.source.timeout, request).await {
            Ok(Err(etcd_client::Error::GRpcStatus(status)))
                if status.code() == tonic::Code::Unauthenticated =>
            {
                // a token the client could not renew: the next request connects (and logs in)
                // afresh
                self.client.lock().await.take();
                Err(Error::Refused(format!(
                    "etcd refused: {}",
                    status.message()
                )))
            }
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::Unavailable(format!(
                "no answer within {}",
                humantime::format_duration(self.source.timeout)
            ))),
        };
        if matches!(result, Err(Error::Unavailable(_))) {
            self.failed().await;
        }
        result
    }

    /// Every key under `config/` at one revision, read in pages.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut kv = self.kv().await?;
        let prefix = self.keys.config();
        let end = prefix_end(prefix.as_bytes());
        let mut snapshot = Snapshot::empty(self.keys.clone());
        let mut start = prefix.into_bytes();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if snapshot.at > 0 {
                options = options.with_revision(snapshot.at);
            }
            let response = self.timed(kv.get(start.clone(), Some(options))).await?;
            if snapshot.at == 0 {
                snapshot.at = response.header().map_or(0, |h| h.revision());
            }
            for kv in response.kvs() {
                let key = kv
                    .key_str()
                    .map_err(|_| Error::Refused("a key that is not UTF-8".into()))?;
                snapshot.entries.insert(
                    key.to_owned(),
                    Entry {
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                    },
                );
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(snapshot)
    }

    /// Commits `next` as the configuration, if the configuration is still the one `base` holds.
    /// Files are stored first; the change itself is one transaction (small changes edit the
    /// current set, large ones point the commit record at a new set). Returns the new revision.
    pub async fn commit(
        &self,
        base: &Snapshot,
        next: &Shared,
        uploads: &[Upload],
        by: &str,
        origin: &str,
    ) -> Result<i64> {
        for upload in uploads {
            self.upload(upload).await?;
        }
        let entries = layout::encode(next).map_err(Error::Refused)?;
        let base_shared = base.shared().unwrap_or_default();
        let mut compares = vec![Compare::mod_revision(
            self.keys.commit(),
            CompareOp::Equal,
            base.revision(),
        )];
        // a file the change introduces must still be there when it commits
        let known = refs::referenced(&base_shared);
        for sha in refs::referenced(next).difference(&known).take(100) {
            compares.push(Compare::create_revision(
                self.keys.file_meta(sha),
                CompareOp::Greater,
                0,
            ));
        }
        let current = base.commit().ok().flatten().map(|c| c.set);
        let record = |set: &str| {
            serde_json::to_vec(&Commit {
                schema: layout::SCHEMA,
                set: set.to_owned(),
                at: now(),
                by: by.to_owned(),
                origin: origin.to_owned(),
            })
            .unwrap_or_default()
        };
        let mut client = self.client().await?;
        if let Some(set) = &current {
            let ops = layout::plan(&base.set_entries(set), &entries);
            if ops.len() < layout::MAX_TXN_OPS && layout::op_bytes(&ops) <= layout::MAX_TXN_BYTES {
                let prefix = self.keys.set(set);
                let mut txn_ops: Vec<TxnOp> = ops
                    .into_iter()
                    .map(|op| match op {
                        Op::Put(k, v) => TxnOp::put(format!("{prefix}{k}"), v, None),
                        Op::Delete(k) => TxnOp::delete(format!("{prefix}{k}"), None),
                    })
                    .collect();
                txn_ops.push(TxnOp::put(self.keys.commit(), record(set), None));
                let txn = Txn::new().when(compares).and_then(txn_ops);
                let response = self.timed(client.txn(txn)).await.map_err(outcome_unknown)?;
                return if response.succeeded() {
                    Ok(response.header().map_or(0, |h| h.revision()))
                } else {
                    Err(Error::Conflict)
                };
            }
        }
        // A new set, written in batches nobody reads until the commit record names it.
        let id = layout::new_set_id();
        let prefix = self.keys.set(&id);
        for batch in layout::batches(&entries) {
            let ops: Vec<TxnOp> = batch
                .into_iter()
                .map(|(k, v)| TxnOp::put(format!("{prefix}{k}"), v.clone(), None))
                .collect();
            if let Err(e) = self.timed(client.txn(Txn::new().and_then(ops))).await {
                let _ = self.delete_prefix(&prefix).await;
                return Err(e);
            }
        }
        let mut ops = vec![TxnOp::put(self.keys.commit(), record(&id), None)];
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        for old in base.set_ids() {
            let abandoned = layout::set_id_millis(&old)
                .is_none_or(|t| now_ms.saturating_sub(t) > ABANDONED_SET_AGE.as_millis());
            if Some(&old) == current.as_ref() || (abandoned && ops.len() < 20) {
                ops.push(TxnOp::delete(
                    self.keys.set(&old),
                    Some(DeleteOptions::new().with_prefix()),
                ));
            }
        }
        let txn = Txn::new().when(compares).and_then(ops);
        match self.timed(client.txn(txn)).await {
            Ok(r) if r.succeeded() => {
                let revision = r.header().map_or(0, |h| h.revision());
                let keep: BTreeSet<String> =
                    refs::referenced(next).union(&known).cloned().collect();
                if let Err(e) = self.forget_files(&keep).await {
                    log::warn!("stored files no configuration names were not removed: {e}");
                }
                Ok(revision)
            }
            Ok(_) => {
                let _ = self.delete_prefix(&prefix).await;
                Err(Error::Conflict)
            }
            Err(e) => {
                // whether it committed is unknown: the set stays, and is removed once abandoned
                Err(outcome_unknown(e))
            }
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let mut client = self.client().await?;
        self.timed(client.delete(prefix, Some(DeleteOptions::new().with_prefix())))
            .await
            .map(drop)
    }

    /// Stores a file by content, unless it is there already.
    async fn upload(&self, upload: &Upload) -> Result<()> {
        let mut kv = self.kv().await?;
        let meta_key = self.keys.file_meta(&upload.sha256);
        let present = self
            .timed(kv.get(meta_key.clone(), Some(GetOptions::new().with_count_only())))
            .await?;
        if present.count() > 0 {
            return Ok(());
        }
        let mut chunks = 0;
        for (i, chunk) in upload.bytes.chunks(layout::FILE_CHUNK).enumerate() {
            self.timed(kv.put(self.keys.file_chunk(&upload.sha256, i), chunk, None))
                .await?;
            chunks = i + 1;
        }
        let meta = FileMeta {
            size: upload.bytes.len() as u64,
            chunks,
        };
        let value = serde_json::to_vec(&meta).unwrap_or_default();
        self.timed(kv.put(meta_key, value, None)).await.map(drop)
    }

    /// Removes stored files whose digest is not in `keep`.
    async fn forget_files(&self, keep: &BTreeSet<String>) -> Result<()> {
        let mut kv = self.kv().await?;
        let files = self.keys.file("");
        let response = self
            .timed(kv.get(
                files.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ))
            .await?;
        let stored: BTreeSet<String> = response
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok())
            .filter_map(|k| k.strip_prefix(&files)?.strip_suffix("/meta"))
            .map(str::to_owned)
            .collect();
        for sha in stored.difference(keep) {
            self.delete_prefix(&self.keys.file(sha)).await?;
        }
        Ok(())
    }

    /// A stored file, checked against its digest; `None` when it is not stored.
    pub async fn fetch_file(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let mut kv = self.kv().await?;
        let meta = self
            .timed(kv.get(self.keys.file_meta(sha256), None))
            .await?;
        let Some(meta) = meta.kvs().first() else {
            return Ok(None);
        };
        let meta: FileMeta = serde_json::from_slice(meta.value())
            .map_err(|e| Error::Refused(format!("{}: {e}", self.keys.file_meta(sha256))))?;
        let mut bytes = Vec::with_capacity(meta.size as usize);
        for i in 0..meta.chunks {
            let chunk = self
                .timed(kv.get(self.keys.file_chunk(sha256, i), None))
                .await?;
            match chunk.kvs().first() {
                Some(c) => bytes.extend_from_slice(c.value()),
                None => return Ok(None),
            }
        }
        if refs::digest(&bytes) != sha256 {
            return Err(Error::Refused(format!(
                "{}: the stored bytes do not have the digest they are stored under",
                self.keys.file(sha256)
            )));
        }
        Ok(Some(bytes))
    }

    /// Watches `config/` from revision `from` on.
    pub async fn watch(&self, from: i64) -> Result<WatchStream> {
        let mut watch = self
            .client()
            .await?
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        self.timed(watch.watch(self.keys.config(), Some(options)))
            .await
    }

    /// A lease of `ttl` seconds for this instance's record.
    pub async fn grant(&self, ttl: i64) -> Result<i64> {
        let mut client = self.client().await?;
        Ok(self.timed(client.lease_grant(ttl, None)).await?.id())
    }

    /// Keeps `lease` alive until it is lost (returns why).
    pub async fn keep_alive(&self, lease: i64, every: Duration, answered: impl Fn()) -> Error {
        let mut client = match self.client().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let (mut keeper, mut stream) = match self.timed(client.lease_keep_alive(lease)).await {
            Ok(pair) => pair,
            Err(e) => return e,
        };
        loop {
            if let Err(e) = keeper.keep_alive().await {
                return e.into();
            }
            match tokio::time::timeout(self.source.timeout, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => answered(),
                Ok(Ok(Some(_))) => return Error::Refused("the lease expired".into()),
                Ok(Ok(None)) => return Error::Unavailable("the lease stream ended".into()),
                Ok(Err(e)) => return e.into(),
                Err(_) => return Error::Unavailable("no keep-alive answer in time".into()),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Writes this instance's record, bound to `lease`.
    pub async fn register(&self, record: &InstanceRecord, lease: i64) -> Result<()> {
        let mut kv = self.kv().await?;
        let value = serde_json::to_vec(record).unwrap_or_default();
        self.timed(kv.put(
            self.keys.instance(&record.id),
            value,
            Some(PutOptions::new().with_lease(lease)),
        ))
        .await
        .map(drop)
    }

    /// The records of every live instance.
    pub async fn instances(&self) -> Result<Vec<InstanceRecord>> {
        let mut kv = self.kv().await?;
        let response = self
            .timed(kv.get(self.keys.instances(), Some(GetOptions::new().with_prefix())))
            .await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }
}

/// What a watch brought.
pub enum Watched {
    /// The commit record changed: the state is a new configuration revision.
    Changed,
    /// Events that did not change the configuration (yet), or a progress notice.
    Quiet,
    /// The watch ended (etcd gone, compaction, leader loss): read the whole state again.
    Lost(Error),
}

/// Applies one watch message to `state`.
pub fn follow(
    state: &mut Snapshot,
    message: std::result::Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
) -> Watched {
    match message {
        Ok(Some(response)) => {
            if response.canceled() {
                let why = if response.compact_revision() > 0 {
                    format!(
                        "the watch fell behind a compaction (revision {})",
                        response.compact_revision()
                    )
                } else {
                    format!("the watch was cancelled: {}", response.cancel_reason())
                };
                return Watched::Lost(Error::Unavailable(why));
            }
            let mut changed = false;
            for event in response.events() {
                changed |= state.apply(event);
            }
            if let Some(header) = response.header() {
                state.at = state.at.max(header.revision());
            }
            if changed {
                Watched::Changed
            } else {
                Watched::Quiet
            }
        }
        Ok(None) => Watched::Lost(Error::Unavailable("the watch stream ended".into())),
        Err(e) => Watched::Lost(e.into()),
    }
}

/// The end of the key range of `prefix` (the prefix with its last byte incremented).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The current time, RFC 3339, to the second.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
