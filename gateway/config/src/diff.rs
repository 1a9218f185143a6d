//! What changes between two configurations: upstreams, nodes, services and APIs added, removed
//! or modified, and which of their settings changed. Only names and setting keys are reported,
//! never values, so a diff never shows a secret.
//!
//! The admin API answers a dry run with it and logs it for every change it applies;
//! `gatehouse validate --diff-from OLD -c NEW` prints it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::raw::{RawApi, RawConfig, RawNode, RawService};

/// Changes between two configurations; empty lists are left out when serialized.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// Top-level `instance` keys that changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instance: Vec<String>,
    /// VPCs and their connections changed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub vpcs: bool,
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub upstreams: Changes<UpstreamChange>,
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub services: Changes<Modified>,
    /// APIs as `service.api`.
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub apis: Changes<Modified>,
}

/// Added, removed and modified items of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changes<M> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub modified: Vec<M>,
}

impl<M> Default for Changes<M> {
    fn default() -> Self {
        Self {
            added: Vec::new(),
            removed: Vec::new(),
            modified: Vec::new(),
        }
    }
}

impl<M> Changes<M> {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }
}

/// An item present on both sides whose settings differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Modified {
    pub name: String,
    /// The setting keys that differ.
    pub fields: Vec<String>,
}

/// A modified upstream: its settings and its nodes (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamChange {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub nodes: Changes<Modified>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.instance.is_empty()
            && !self.vpcs
            && self.upstreams.is_empty()
            && self.services.is_empty()
            && self.apis.is_empty()
    }
}

/// The keys of two JSON objects whose values differ.
fn changed_keys(old: &Value, new: &Value, skip: &[&str]) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| !skip.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Compares named items: `key` names each, `modified` describes a pair present on both sides.
/// Linear in the number of items (a configuration may hold 10,000 APIs); the first of two items
/// with the same name stands for both.
fn compare<'a, T: 'a, M>(
    old: impl IntoIterator<Item = &'a T>,
    new: impl IntoIterator<Item = &'a T>,
    key: impl Fn(&T) -> String,
    modified: impl Fn(&T, &T, String) -> Option<M>,
) -> Changes<M> {
    let mut changes = Changes::default();
    let mut by_name: HashMap<String, &T> = HashMap::new();
    let mut old_names = Vec::new();
    for o in old {
        let name = key(o);
        if !by_name.contains_key(&name) {
            by_name.insert(name.clone(), o);
            old_names.push(name);
        }
    }
    let mut seen: HashSet<String> = HashSet::new();
    for n in new {
        let name = key(n);
        if !seen.insert(name.clone()) {
            continue;
        }
        match by_name.get(&name) {
            None => changes.added.push(name),
            Some(o) => changes.modified.extend(modified(o, n, name)),
        }
    }
    changes.removed = old_names
        .into_iter()
        .filter(|name| !seen.contains(name))
        .collect();
    changes
}

/// Every API of `c`, named `service.api`.
fn all_apis(c: &RawConfig) -> Vec<(String, &RawApi)> {
    c.services
        .iter()
        .flat_map(|s| {
            s.apis
                .iter()
                .map(move |a| (format!("{}.{}", s.name, a.name), a))
        })
        .collect()
}

/// Whether two services have the same settings, their APIs aside (compared one by one).
fn same_service_fields(a: &RawService, b: &RawService) -> bool {
    // every field named: a new one cannot be forgotten here
    let RawService {
        name,
        description,
        apis: _,
    } = a;
    *name == b.name && *description == b.description
}

fn node_key(n: &RawNode) -> String {
    format!("{}:{}", n.host, n.port)
}

/// What changes from `old` to `new`.
pub fn diff(old: &RawConfig, new: &RawConfig) -> Diff {
    let instance = changed_keys(&json(&old.instance), &json(&new.instance), &[]);
    let vpcs = old.vpcs != new.vpcs || old.connections != new.connections;
    let upstreams = compare(
        &old.upstreams,
        &new.upstreams,
        |u| u.name.clone(),
        |o, n, name| {
            if o == n {
                return None;
            }
            let fields = changed_keys(&json(o), &json(n), &["nodes"]);
            let nodes = compare(&o.nodes, &n.nodes, node_key, |a, b, name| {
                let fields = changed_keys(&json(a), &json(b), &[]);
                (!fields.is_empty()).then_some(Modified { name, fields })
            });
            (!fields.is_empty() || !nodes.is_empty()).then_some(UpstreamChange {
                name,
                fields,
                nodes,
            })
        },
    );
    let services = compare(
        &old.services,
        &new.services,
        |s| s.name.clone(),
        |o, n, name| {
            if same_service_fields(o, n) {
                return None;
            }
            let fields = changed_keys(&json(o), &json(n), &["apis"]);
            (!fields.is_empty()).then_some(Modified { name, fields })
        },
    );
    let (old_apis, new_apis) = (all_apis(old), all_apis(new));
    let apis = compare(
        &old_apis,
        &new_apis,
        |(name, _)| name.clone(),
        |(_, o), (_, n), name| {
            if o == n {
                return None;
            }
            let fields = changed_keys(&json(o), &json(n), &[]);
            (!fields.is_empty()).then_some(Modified { name, fields })
        },
    );
    Diff {
        instance,
        vpcs,
        upstreams,
        services,
        apis,
    }
}

impl fmt::Display for Diff {
    /// One line per change: `+` added, `-` removed, `~` modified with the settings that differ.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "  no changes");
        }
        if !self.instance.is_empty() {
            writeln!(f, "  ~ instance: {}", self.instance.join(", "))?;
        }
        if self.vpcs {
            writeln!(f, "  ~ vpcs or connections")?;
        }
        for name in &self.upstreams.added {
            writeln!(f, "  + upstream {name}")?;
        }
        for name in &self.upstreams.removed {
            writeln!(f, "  - upstream {name}")?;
        }
        for u in &self.upstreams.modified {
            let mut parts: Vec<String> = u.fields.clone();
            parts.extend(u.nodes.added.iter().map(|n| format!("+node {n}")));
            parts.extend(u.nodes.removed.iter().map(|n| format!("-node {n}")));
            parts.extend(
                u.nodes
                    .modified
                    .iter()
                    .map(|n| format!("~node {} ({})", n.name, n.fields.join(", "))),
            );
            writeln!(f, "  ~ upstream {}: {}", u.name, parts.join(", "))?;
        }
        for (kind, changes) in [("service", &self.services), ("api", &self.apis)] {
            for name in &changes.added {
                writeln!(f, "  + {kind} {name}")?;
            }
            for name in &changes.removed {
                writeln!(f, "  - {kind} {name}")?;
            }
            for m in &changes.modified {
                writeln!(f, "  ~ {kind} {}: {}", m.name, m.fields.join(", "))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_node: &str, api_path: &str, token: &str) -> RawConfig {
        serde_yaml::from_str(&format!(
            r#"
instance: {{ id: i, type: dedicated, vpc: v, listen: ["127.0.0.1:1"], admin_token: {token} }}
vpcs: [{{ id: v, cidrs: ["10.0.0.0/8"] }}]
upstreams:
  - {{ name: u, vpc: v, protocol: http, nodes: [{{ host: 10.0.0.1, port: 80 }}{extra_node}] }}
services:
  - name: s
    apis:
      - {{ name: a, path: "{api_path}", backend: {{ upstream: u }} }}
"#
        ))
        .unwrap()
    }

    #[test]
    fn a_diff_names_what_changed_and_never_a_value() {
        let old = config("", "/a", "token-aaaaaaaaaaaaaaaa");
        let mut new = config(
            ", { host: 10.0.0.2, port: 80 }",
            "/b",
            "token-bbbbbbbbbbbbbbbb",
        );
        new.upstreams[0].nodes[0].weight = Some(3);
        new.upstreams[0].retries = Some(2);
        let copy = new.services[0].apis[0].clone();
        new.services[0].apis.push(copy);
        new.services[0].apis[1].name = "c".into();
        let d = diff(&old, &new);
        assert_eq!(d.instance, ["admin_token"]);
        assert_eq!(d.upstreams.modified[0].fields, ["retries"]);
        assert_eq!(d.upstreams.modified[0].nodes.added, ["10.0.0.2:80"]);
        assert_eq!(d.upstreams.modified[0].nodes.modified[0].fields, ["weight"]);
        assert_eq!(d.apis.added, ["s.c"]);
        assert_eq!(d.apis.modified[0].fields, ["path"]);
        let text = format!("{d}{}", serde_json::to_string(&d).unwrap());
        assert!(!text.contains("token-"), "{text}");
        assert!(
            text.contains("~ upstream u: retries, +node 10.0.0.2:80, ~node 10.0.0.1:80 (weight)"),
            "{text}"
        );
        assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn large_configurations_are_compared_item_by_item() {
        let mut old = config("", "/a", "token-aaaaaaaaaaaaaaaa");
        let template = old.services[0].apis[0].clone();
        old.services[0].apis = (0..10_000)
            .map(|i| RawApi {
                name: format!("a{i}"),
                path: format!("/a/{i}"),
                ..template.clone()
            })
            .collect();
        let mut new = old.clone();
        new.services[0].apis[5000].path = "/moved".into();
        new.services[0].apis.remove(7);
        new.services[0].apis.push(RawApi {
            name: "fresh".into(),
            ..template.clone()
        });
        // a name listed twice counts once
        let twin = new.services[0].apis[0].clone();
        new.services[0].apis.push(twin);
        let d = diff(&old, &new);
        assert_eq!(d.apis.added, ["s.fresh"]);
        assert_eq!(d.apis.removed, ["s.a7"]);
        assert_eq!(d.apis.modified.len(), 1);
        assert_eq!(d.apis.modified[0].name, "s.a5000");
        assert_eq!(d.apis.modified[0].fields, ["path"]);
        assert!(d.upstreams.is_empty() && d.services.is_empty());
    }
}
