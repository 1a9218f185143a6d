//! The key layout of a shared configuration in etcd, version 1. Other tools may read and write
//! it; `docs/FLEETS.md` documents it, and it changes only with a new version prefix.
//!
//! ```text
//! <prefix>/v1/config/commit                     the commit record (JSON); its mod_revision is the
//!                                               configuration's revision
//! <prefix>/v1/config/sets/<set>/vpcs/<id>       a VPC (JSON, the file's schema)
//! <prefix>/v1/config/sets/<set>/connections     the connected VPC pairs (JSON list of pairs)
//! <prefix>/v1/config/sets/<set>/upstreams/<n>   an upstream
//! <prefix>/v1/config/sets/<set>/services/<n>    a service, without its APIs
//! <prefix>/v1/config/sets/<set>/apis/<s>/<a>    an API of service s
//! <prefix>/v1/files/<sha256>/meta               a file the configuration names: size and chunks
//! <prefix>/v1/files/<sha256>/<nnnn>             its content, in chunks of at most 1 MiB
//! <prefix>/v1/instances/<id>                    a serving instance and the revision it serves
//!                                               (bound to a lease: gone when it stops)
//! ```
//!
//! The configuration is the set the commit record names. A change small enough for one etcd
//! transaction edits that set's keys and rewrites the commit record in the same transaction; a
//! larger one writes a whole new set first and then, in one transaction, points the commit record
//! at it and deletes the old set. Either way a reader that takes the state at any revision sees a
//! whole configuration, and instances apply a change only when the commit record changes.

use std::collections::BTreeMap;

use gatehouse_config::raw::{RawConfig, RawInstance, RawService, RawUpstream, RawVpc};
use gatehouse_config::Problem;
use serde::{Deserialize, Serialize};

/// Version of the layout (the `v1` of the keys, `schema` of the commit record).
pub const SCHEMA: u32 = 1;

/// Most operations Gatehouse puts in one transaction: etcd's default `--max-txn-ops` is 128.
pub const MAX_TXN_OPS: usize = 120;

/// Most value bytes Gatehouse puts in one transaction: etcd's default `--max-request-bytes` is
/// 1.5 MiB, and keys and framing count too.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;

/// Size of one chunk of a stored file.
pub const FILE_CHUNK: usize = 1024 * 1024;

/// The keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// `prefix` starts with `/` and has no trailing `/` (validated with the configuration).
    pub fn new(prefix: &str) -> Self {
        Self {
            root: format!("{}/v{SCHEMA}/", prefix.trim_end_matches('/')),
        }
    }

    /// Everything instances follow: the commit record and the sets.
    pub fn config(&self) -> String {
        format!("{}config/", self.root)
    }

    pub fn commit(&self) -> String {
        format!("{}config/commit", self.root)
    }

    pub fn sets(&self) -> String {
        format!("{}config/sets/", self.root)
    }

    pub fn set(&self, id: &str) -> String {
        format!("{}config/sets/{id}/", self.root)
    }

    pub fn file(&self, sha256: &str) -> String {
        format!("{}files/{sha256}/", self.root)
    }

    pub fn file_meta(&self, sha256: &str) -> String {
        format!("{}files/{sha256}/meta", self.root)
    }

    pub fn file_chunk(&self, sha256: &str, index: usize) -> String {
        format!("{}files/{sha256}/{index:04}", self.root)
    }

    pub fn instances(&self) -> String {
        format!("{}instances/", self.root)
    }

    pub fn instance(&self, id: &str) -> String {
        format!("{}instances/{id}", self.root)
    }
}

/// The commit record: which set is the configuration, and who changed it last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub schema: u32,
    pub set: String,
    /// RFC 3339.
    #[serde(default)]
    pub at: String,
    /// The instance (or tool) that made the change.
    #[serde(default)]
    pub by: String,
    /// What the change was (`PUT /upstreams/u`, `config push`, ...).
    #[serde(default)]
    pub origin: String,
}

/// Size and chunk count of a stored file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileMeta {
    pub size: u64,
    pub chunks: usize,
}

/// The shared part of a configuration: what every instance of a fleet serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shared {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vpcs: Vec<RawVpc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<RawService>,
}

impl Shared {
    pub fn of(raw: &RawConfig) -> Self {
        Self {
            vpcs: raw.vpcs.clone(),
            connections: raw.connections.clone(),
            upstreams: raw.upstreams.clone(),
            services: raw.services.clone(),
        }
    }

    /// A whole configuration: this shared part served by `instance`.
    pub fn with_instance(self, instance: RawInstance) -> RawConfig {
        RawConfig {
            instance,
            vpcs: self.vpcs,
            connections: self.connections,
            upstreams: self.upstreams,
            services: self.services,
        }
    }

    /// Whether a configuration file carries shared sections, by name.
    pub fn sections_in(raw: &RawConfig) -> Vec<&'static str> {
        let mut names = Vec::new();
        if !raw.vpcs.is_empty() {
            names.push("vpcs");
        }
        if !raw.connections.is_empty() {
            names.push("connections");
        }
        if !raw.upstreams.is_empty() {
            names.push("upstreams");
        }
        if !raw.services.is_empty() {
            names.push("services");
        }
        names
    }

    /// The same configuration in the order the layout reads it back (every list by name), so that
    /// a writer and its readers hold the same value. A configuration the layout cannot hold (a
    /// name that is empty, holds `/` or appears twice) is refused with a problem per name.
    pub fn normalized(&self) -> Result<Self, Vec<Problem>> {
        let entries = encode(self).map_err(|e| {
            vec![Problem::new(
                "names",
                e,
                "give every VPC, upstream, service and API a unique name of letters, digits and _",
            )]
        })?;
        decode(entries).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| Problem::new("names", p, "give every API's service a unique name"))
                .collect()
        })
    }
}

/// A shared configuration as the entries of one set: key relative to the set → JSON value.
pub fn encode(shared: &Shared) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    for vpc in &shared.vpcs {
        insert(&mut out, format!("vpcs/{}", name(&vpc.id)?), to_json(vpc))?;
    }
    if !shared.connections.is_empty() {
        out.insert(
            "connections".to_owned(),
            serde_json::to_vec(&shared.connections).map_err(|e| e.to_string())?,
        );
    }
    for upstream in &shared.upstreams {
        insert(
            &mut out,
            format!("upstreams/{}", name(&upstream.name)?),
            to_json(upstream),
        )?;
    }
    for service in &shared.services {
        let service_name = name(&service.name)?;
        let bare = RawService {
            apis: Vec::new(),
            ..service.clone()
        };
        insert(&mut out, format!("services/{service_name}"), to_json(&bare))?;
        for api in &service.apis {
            insert(
                &mut out,
                format!("apis/{service_name}/{}", name(&api.name)?),
                to_json(api),
            )?;
        }
    }
    Ok(out)
}

/// Rebuilds a shared configuration from the entries of one set; every entry that cannot be read
/// is a problem (with its key).
pub fn decode(entries: impl IntoIterator<Item = (String, Vec<u8>)>) -> Result<Shared, Vec<String>> {
    let mut shared = Shared::default();
    let mut apis: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (key, value) in entries {
        let parts: Vec<&str> = key.split('/').collect();
        let result = match parts.as_slice() {
            ["vpcs", _] => parse(&value).map(|v| shared.vpcs.push(v)),
            ["connections"] => parse(&value).map(|v| shared.connections = v),
            ["upstreams", n] => parse::<RawUpstream>(&value).map(|mut u| {
                u.name = (*n).to_owned();
                shared.upstreams.push(u);
            }),
            ["services", _] => parse(&value).map(|v| shared.services.push(v)),
            ["apis", service, _] => {
                apis.entry((*service).to_owned())
                    .or_default()
                    .push((key.clone(), value));
                Ok(())
            }
            _ => Err("not a key of this layout".to_owned()),
        };
        if let Err(e) = result {
            problems.push(format!("{key}: {e}"));
        }
    }
    for service in &mut shared.services {
        for (key, value) in apis.remove(&service.name).unwrap_or_default() {
            match parse(&value) {
                Ok(api) => service.apis.push(api),
                Err(e) => problems.push(format!("{key}: {e}")),
            }
        }
    }
    for (service, entries) in apis {
        for (key, _) in entries {
            problems.push(format!(
                "{key}: the API's service {service:?} does not exist"
            ));
        }
    }
    if problems.is_empty() {
        Ok(shared)
    } else {
        Err(problems)
    }
}

/// One key's change between two sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// The operations that turn the entries `old` into `new`, in key order.
pub fn plan(old: &BTreeMap<String, Vec<u8>>, new: &BTreeMap<String, Vec<u8>>) -> Vec<Op> {
    let mut ops = Vec::new();
    for (key, value) in new {
        if old.get(key) != Some(value) {
            ops.push(Op::Put(key.clone(), value.clone()));
        }
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            ops.push(Op::Delete(key.clone()));
        }
    }
    ops
}

/// Bytes a list of operations sends.
pub fn op_bytes(ops: &[Op]) -> usize {
    ops.iter()
        .map(|op| match op {
            Op::Put(k, v) => k.len() + v.len(),
            Op::Delete(k) => k.len(),
        })
        .sum()
}

/// Splits `entries` into batches that each fit one transaction.
pub fn batches(entries: &BTreeMap<String, Vec<u8>>) -> Vec<Vec<(&String, &Vec<u8>)>> {
    let mut out: Vec<Vec<(&String, &Vec<u8>)>> = Vec::new();
    let mut bytes = 0;
    for (key, value) in entries {
        let size = key.len() + value.len() + 64;
        match out.last_mut() {
            Some(batch) if batch.len() < MAX_TXN_OPS && bytes + size <= MAX_TXN_BYTES => {
                batch.push((key, value));
                bytes += size;
            }
            _ => {
                out.push(vec![(key, value)]);
                bytes = size;
            }
        }
    }
    out
}

/// A new set id: time-ordered and unique (milliseconds since the epoch and random bits).
pub fn new_set_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut random = [0u8; 4];
    let _ = getrandom(&mut random);
    format!("{:013}-{:08x}", now.as_millis(), u32::from_le_bytes(random))
}

/// The time (milliseconds since the epoch) a set id was made, if it is one of ours.
pub fn set_id_millis(id: &str) -> Option<u128> {
    id.split_once('-')?.0.parse().ok()
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

fn name(n: &str) -> Result<&str, String> {
    if n.is_empty() || n.contains('/') {
        Err(format!("{n:?} cannot be a key name"))
    } else {
        Ok(n)
    }
}

fn insert(
    out: &mut BTreeMap<String, Vec<u8>>,
    key: String,
    value: Result<Vec<u8>, String>,
) -> Result<(), String> {
    if out.contains_key(&key) {
        return Err(format!("{key} appears twice"));
    }
    out.insert(key, value?);
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    serde_json::from_slice(value).map_err(|e| e.to_string())
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(apis: usize) -> Shared {
        let yaml = format!(
            r#"
vpcs: [{{ id: vpc-b, cidrs: ["10.0.0.0/8"] }}, {{ id: vpc-a, cidrs: ["127.0.0.0/8"] }}]
connections: [[vpc-a, vpc-b]]
upstreams:
  - {{ name: zeta, vpc: vpc-a, protocol: http, nodes: [{{ host: 127.0.0.1, port: 80 }}] }}
  - {{ name: alpha, vpc: vpc-b, protocol: https, nodes: [] }}
services:
  - name: shop
    apis: [{}]
  - {{ name: empty }}
"#,
            (0..apis)
                .map(|i| format!(
                    "{{ name: a{i}, path: /a{i}, backend: {{ response: {{ body: x }} }} }}"
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    #[test]
    fn a_configuration_survives_the_layout_in_name_order() {
        let shared = sample(3);
        let entries = encode(&shared).unwrap();
        assert!(entries.contains_key("upstreams/alpha"));
        assert!(entries.contains_key("apis/shop/a1"));
        assert!(entries.contains_key("connections"));
        let back = decode(entries).unwrap();
        assert_eq!(back.upstreams[0].name, "alpha");
        assert_eq!(back.vpcs[0].id, "vpc-a");
        assert_eq!(back.services.len(), 2);
        let shop = back.services.iter().find(|s| s.name == "shop").unwrap();
        assert_eq!(shop.apis.len(), 3);
        assert_eq!(back, back.normalized().unwrap());
        let mut sorted = shared.clone();
        sorted.upstreams.sort_by(|a, b| a.name.cmp(&b.name));
        sorted.vpcs.sort_by(|a, b| a.id.cmp(&b.id));
        sorted.services.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back, sorted);
    }

    #[test]
    fn names_the_layout_cannot_hold_are_problems_not_panics() {
        for bad in ["", "a/b"] {
            let mut shared = sample(1);
            shared.upstreams[0].name = bad.to_owned();
            let problems = shared.normalized().unwrap_err();
            assert!(
                problems[0].message.contains("cannot be a key name"),
                "{problems:?}"
            );
        }
        let mut twice = sample(1);
        twice.upstreams[1].name = twice.upstreams[0].name.clone();
        let problems = twice.normalized().unwrap_err();
        assert!(
            problems[0].message.contains("appears twice"),
            "{problems:?}"
        );
    }

    #[test]
    fn unreadable_entries_are_each_a_problem_with_their_key() {
        let mut entries = encode(&sample(1)).unwrap();
        entries.insert("upstreams/bad".into(), b"{not json".to_vec());
        entries.insert("apis/ghost/x".into(), b"{}".to_vec());
        entries.insert("what/is/this".into(), b"{}".to_vec());
        let problems = decode(entries).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("upstreams/bad:")));
        assert!(problems
            .iter()
            .any(|p| p.contains("\"ghost\" does not exist")));
        assert!(problems.iter().any(|p| p.starts_with("what/is/this:")));
    }

    #[test]
    fn a_plan_puts_what_changed_and_deletes_what_went() {
        let old = encode(&sample(3)).unwrap();
        let mut next = sample(3);
        next.services[0].apis.remove(1);
        next.upstreams[0].retries = Some(3);
        let new = encode(&next).unwrap();
        let ops = plan(&old, &new);
        assert_eq!(
            ops.iter()
                .map(|o| match o {
                    Op::Put(k, _) => format!("put {k}"),
                    Op::Delete(k) => format!("delete {k}"),
                })
                .collect::<Vec<_>>(),
            ["put upstreams/zeta", "delete apis/shop/a1"]
        );
        assert!(plan(&new, &new).is_empty());
    }

    #[test]
    fn ten_thousand_apis_split_into_transactions_within_etcds_limits() {
        let entries = encode(&sample(10_000)).unwrap();
        let batches = batches(&entries);
        assert!(batches.len() > 1);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), entries.len());
        for batch in &batches {
            assert!(batch.len() <= MAX_TXN_OPS);
            let bytes: usize = batch.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert!(bytes <= MAX_TXN_BYTES);
        }
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let keys = Keys::new("/gatehouse");
        assert_eq!(keys.commit(), "/gatehouse/v1/config/commit");
        assert_eq!(keys.set("s1"), "/gatehouse/v1/config/sets/s1/");
        assert_eq!(keys.file_chunk("ab", 3), "/gatehouse/v1/files/ab/0003");
        assert_eq!(keys.instance("gw-a"), "/gatehouse/v1/instances/gw-a");
        assert!(set_id_millis(&new_set_id()).is_some());
    }
}
