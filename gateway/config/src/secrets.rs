//! Secret values of a configuration: which they are, how they are kept out of answers, and how
//! they can come from the environment instead of the file.
//!
//! Secret are: `instance.admin_token`, the configuration keys the gateway knows a standard plugin
//! keeps secrets in (`key-auth`'s `keys`), and any plugin configuration key the operator lists in
//! that plugin's `secret_keys` (dotted for nested keys: `auth.password`). The admin API shows each
//! as [`REDACTED`]; sending that marker back unchanged keeps the stored value.
//!
//! A string in a secret key of a plugin's configuration, and `admin_token`, may be written
//! `${NAME}`: the value of the environment variable `NAME` at load time, for the variables the
//! instance's `plugins.secret_env` allows (the admin API writes plugin configurations, and must
//! not reach the rest of the environment). The file, and the admin API, then only ever show the
//! reference.

use serde_json::Value;

use crate::error::Problem;
use crate::raw::{RawApi, RawConfig, RawPlugin};

/// What the admin API shows in place of a secret value.
pub const REDACTED: &str = "<redacted>";

/// Configuration keys in which a standard plugin keeps secrets.
pub fn standard_secret_keys(plugin: &str) -> &'static [&'static str] {
    match plugin {
        "key-auth" => &["keys"],
        _ => &[],
    }
}

/// Secret keys plugins declared themselves (contract 0.2's `describe`), by
/// [`declared_key`]: registered by the plugin host when it loads a component.
static DECLARED: std::sync::RwLock<Option<std::collections::HashMap<String, Vec<String>>>> =
    std::sync::RwLock::new(None);

/// The registry key of a plugin entry: `name:NAME` for a standard plugin, `file:NAME` with the
/// file name of a component (the same for a path written relative in the file and the absolute
/// path it resolves to; two components of one file name share their keys, which can only hide
/// more).
pub fn declared_key(name: Option<&str>, path: Option<&str>) -> Option<String> {
    match (name, path) {
        (Some(name), _) => Some(format!("name:{name}")),
        (None, Some(path)) => std::path::Path::new(path)
            .file_name()
            .map(|f| format!("file:{}", f.to_string_lossy())),
        (None, None) => None,
    }
}

/// Records the secret keys a loaded plugin declared, so that every view of the configuration
/// redacts them from now on (keys are only ever added).
pub fn register_declared(key: String, keys: &[String]) {
    if keys.is_empty() {
        return;
    }
    let mut declared = DECLARED.write().unwrap_or_else(|p| p.into_inner());
    let known = declared
        .get_or_insert_with(Default::default)
        .entry(key)
        .or_default();
    for k in keys {
        if !known.contains(k) {
            known.push(k.clone());
        }
    }
}

/// The secret keys of one plugin entry: the standard plugin's, those the plugin declared, and
/// the operator's.
fn secret_keys<'a>(
    name: Option<&str>,
    path: Option<&str>,
    listed: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let mut keys: Vec<String> = name
        .map(standard_secret_keys)
        .unwrap_or_default()
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    if let Some(key) = declared_key(name, path) {
        let declared = DECLARED.read().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = declared.as_ref().and_then(|d| d.get(&key)) {
            keys.extend(found.iter().cloned());
        }
    }
    keys.extend(listed.map(str::to_owned));
    keys.sort();
    keys.dedup();
    keys
}

/// Replaces every secret in a JSON view of configuration resources with [`REDACTED`]: any
/// `admin_token` and the secret keys of every plugin entry, wherever they appear (a whole
/// configuration, a service, an API, a list of them).
pub fn redact_json(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(token) = map.get_mut("admin_token") {
                if token.is_string() {
                    *token = Value::String(REDACTED.to_owned());
                }
            }
            // `instance.etcd`: its password (a `${NAME}` reference shows as itself)
            if map.contains_key("endpoints") {
                if let Some(password) = map.get_mut("password") {
                    if password
                        .as_str()
                        .is_some_and(|p| env_reference(p).is_none())
                    {
                        *password = Value::String(REDACTED.to_owned());
                    }
                }
            }
            if let Some(Value::Array(plugins)) = map.get_mut("plugins") {
                for plugin in plugins.iter_mut() {
                    redact_plugin(plugin);
                }
            }
            for (key, child) in map.iter_mut() {
                if key != "plugins" {
                    redact_json(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

fn redact_plugin(plugin: &mut Value) {
    let Value::Object(map) = plugin else { return };
    let name = map.get("name").and_then(Value::as_str).map(str::to_owned);
    let path = map.get("path").and_then(Value::as_str).map(str::to_owned);
    let listed: Vec<String> = map
        .get("secret_keys")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let Some(config) = map.get_mut("config") else {
        return;
    };
    for key in secret_keys(
        name.as_deref(),
        path.as_deref(),
        listed.iter().map(String::as_str),
    ) {
        if let Some(slot) = json_at(config, &key) {
            *slot = Value::String(REDACTED.to_owned());
        }
    }
}

fn json_at<'v>(value: &'v mut Value, dotted: &str) -> Option<&'v mut Value> {
    dotted
        .split('.')
        .try_fold(value, |v, key| v.as_object_mut()?.get_mut(key))
}

fn yaml_at<'v>(
    value: &'v mut serde_yaml::Value,
    dotted: &str,
) -> Option<&'v mut serde_yaml::Value> {
    dotted
        .split('.')
        .try_fold(value, |v, key| v.as_mapping_mut()?.get_mut(key))
}

fn yaml_get<'v>(value: &'v serde_yaml::Value, dotted: &str) -> Option<&'v serde_yaml::Value> {
    dotted
        .split('.')
        .try_fold(value, |v, key| v.as_mapping()?.get(key))
}

fn is_redacted(value: &serde_yaml::Value) -> bool {
    value.as_str() == Some(REDACTED)
}

/// Puts the stored secrets back where `next` (a configuration edited through the admin API)
/// carries [`REDACTED`]: the admin token, and the secret keys of a plugin entry of the same API
/// (same service and API name, same plugin position and source). A marker with no stored value
/// to keep is a problem.
pub fn restore(next: &mut RawConfig, current: &RawConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    if next.instance.admin_token.as_deref() == Some(REDACTED) {
        next.instance.admin_token = current.instance.admin_token.clone();
        if next.instance.admin_token.is_none() {
            problems.push(marker_problem("instance.admin_token"));
        }
    }
    // by name: a configuration may hold 10,000 APIs
    let stored: std::collections::HashMap<(&str, &str), &RawApi> = current
        .services
        .iter()
        .flat_map(|s| {
            s.apis
                .iter()
                .map(move |a| ((s.name.as_str(), a.name.as_str()), a))
        })
        .collect();
    for (si, service) in next.services.iter_mut().enumerate() {
        for (ai, api) in service.apis.iter_mut().enumerate() {
            let old_api = stored
                .get(&(service.name.as_str(), api.name.as_str()))
                .copied();
            restore_api(
                api,
                old_api,
                &format!("services[{si}].apis[{ai}]"),
                &mut problems,
            );
        }
    }
    problems
}

fn restore_api(api: &mut RawApi, old: Option<&RawApi>, path: &str, problems: &mut Vec<Problem>) {
    for (k, plugin) in api.plugins.iter_mut().enumerate() {
        let old_plugin = old
            .and_then(|a| a.plugins.get(k))
            .filter(|o| o.name == plugin.name && o.path == plugin.path);
        let keys = secret_keys(
            plugin.name.as_deref(),
            plugin.path.as_deref(),
            plugin.secret_keys.iter().map(String::as_str),
        );
        let Some(config) = plugin.config.as_mut() else {
            continue;
        };
        for key in keys {
            let Some(slot) = yaml_at(config, &key).filter(|v| is_redacted(v)) else {
                continue;
            };
            match old_plugin
                .and_then(|o: &RawPlugin| o.config.as_ref())
                .and_then(|c| yaml_get(c, &key))
            {
                Some(stored) => *slot = stored.clone(),
                None => problems.push(marker_problem(&format!("{path}.plugins[{k}].config.{key}"))),
            }
        }
    }
}

fn marker_problem(path: &str) -> Problem {
    Problem::new(
        path,
        format!("{REDACTED:?} stands for a stored secret, and there is none here to keep"),
        "send the secret's value",
    )
}

/// The environment variable a value refers to, when it is written `${NAME}`.
pub fn env_reference(value: &str) -> Option<&str> {
    let name = value.strip_prefix("${")?.strip_suffix('}')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    ((first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
    .then_some(name)
}

/// Why a `${NAME}` reference in a plugin's configuration was not resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvRefused {
    /// It is not in one of the entry's secret keys.
    NotSecret,
    /// The instance's `secret_env` does not name the variable.
    NotAllowed,
    /// The variable is not set.
    NotSet,
}

/// Whether the instance's `secret_env` (names, or prefixes ending in `*`) lets configurations
/// read the variable `name`.
pub fn env_allowed(name: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => !prefix.is_empty() && name.starts_with(prefix),
        None => a == name,
    })
}

/// The secret keys of a plugin entry as the configuration alone knows them: the standard
/// plugin's, those its component declared when it was loaded before, and the operator's
/// `secret_keys`.
pub fn entry_secret_keys(plugin: &RawPlugin) -> Vec<String> {
    secret_keys(
        plugin.name.as_deref(),
        plugin.path.as_deref(),
        plugin.secret_keys.iter().map(String::as_str),
    )
}

/// Replaces every `${NAME}` string in `value` (a plugin's configuration, at the dotted key path
/// `at`) with the environment variable's value, where that is allowed: in one of `secret_keys`
/// (or below it), and for a variable `allowed` names. Each refused reference is returned with its
/// dotted key path, its name and why; no value is ever returned. Resolved values are remembered
/// as secrets, so no log line shows them.
pub fn resolve_env(
    value: &mut serde_yaml::Value,
    at: &str,
    secret_keys: &[String],
    allowed: &[String],
    refused: &mut Vec<(String, String, EnvRefused)>,
) {
    match value {
        serde_yaml::Value::String(s) => {
            if let Some(name) = env_reference(s).map(str::to_owned) {
                let name = name.as_str();
                let secret = secret_keys.iter().any(|k| {
                    at == k
                        || at
                            .strip_prefix(k.as_str())
                            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
                });
                let why = if !secret {
                    Some(EnvRefused::NotSecret)
                } else if !env_allowed(name, allowed) {
                    Some(EnvRefused::NotAllowed)
                } else {
                    match std::env::var(name) {
                        Ok(v) => {
                            remember(&v);
                            *s = v;
                            None
                        }
                        Err(_) => Some(EnvRefused::NotSet),
                    }
                };
                if let Some(why) = why {
                    refused.push((at.to_owned(), name.to_owned(), why));
                }
            }
        }
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                let path = if at.is_empty() {
                    key.to_owned()
                } else {
                    format!("{at}.{key}")
                };
                resolve_env(v, &path, secret_keys, allowed, refused);
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                resolve_env(v, &format!("{at}[{i}]"), secret_keys, allowed, refused);
            }
        }
        _ => {}
    }
}

/// Secret values seen in configurations, scrubbed from every log line ([`scrub`]).
static KNOWN: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Shortest value remembered: shorter ones would match ordinary text.
const MIN_REMEMBERED: usize = 8;

/// Remembers a secret value so that [`scrub`] removes it from log lines.
pub fn remember(value: &str) {
    if value.len() < MIN_REMEMBERED {
        return;
    }
    let mut known = KNOWN.write().unwrap_or_else(|p| p.into_inner());
    if !known.iter().any(|k| k == value) {
        known.push(value.to_owned());
    }
}

/// Remembers every secret value of `raw`: the admin token and the values under each plugin's
/// secret keys, whole lists and maps included.
pub fn remember_all(raw: &RawConfig) {
    if let Some(token) = &raw.instance.admin_token {
        remember(token);
    }
    each_secret(raw, |_, value| remember_leaves(value));
}

/// Where a plugin secret stands: the path of its key in the configuration, and its API.
struct SecretAt<'a> {
    path: String,
    service: &'a str,
    api: &'a str,
}

/// Calls `f` with every plugin secret of `raw` (the value under each secret key of each plugin
/// entry) and where it stands.
fn each_secret<'a>(raw: &'a RawConfig, mut f: impl FnMut(SecretAt<'a>, &'a serde_yaml::Value)) {
    for (si, service) in raw.services.iter().enumerate() {
        for (ai, api) in service.apis.iter().enumerate() {
            for (k, plugin) in api.plugins.iter().enumerate() {
                let Some(config) = plugin.config.as_ref() else {
                    continue;
                };
                let keys = secret_keys(
                    plugin.name.as_deref(),
                    plugin.path.as_deref(),
                    plugin.secret_keys.iter().map(String::as_str),
                );
                for key in keys {
                    if let Some(value) = yaml_get(config, &key) {
                        let at = SecretAt {
                            path: format!("services[{si}].apis[{ai}].plugins[{k}].config.{key}"),
                            service: &service.name,
                            api: &api.name,
                        };
                        f(at, value);
                    }
                }
            }
        }
    }
}

/// The plugin secrets of `raw` written in clear rather than as `${NAME}` references, one problem
/// each. A shared configuration (stored in etcd, readable by every instance and whoever reads
/// etcd) must hold none.
pub fn clear_secrets(raw: &RawConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    each_secret(raw, |at, value| {
        if has_clear_leaf(value) {
            problems.push(Problem::new(
                at.path,
                "a secret in clear text in the shared configuration (etcd)",
                format!(
                    "write each value as ${{NAME}} and set NAME in every instance's environment (API {}.{})",
                    at.service, at.api
                ),
            ));
        }
    });
    problems
}

fn has_clear_leaf(value: &serde_yaml::Value) -> bool {
    match value {
        serde_yaml::Value::String(s) => env_reference(s).is_none() && s != REDACTED,
        serde_yaml::Value::Sequence(items) => items.iter().any(has_clear_leaf),
        serde_yaml::Value::Mapping(map) => map.values().any(has_clear_leaf),
        serde_yaml::Value::Null => false,
        _ => true,
    }
}

/// Records the secret keys a loaded plugin declared for the entry `key` ([`declared_key`]) and
/// remembers their values in `config` (the entry's resolved configuration, as JSON), so that
/// views of the configuration redact them and log lines never show them.
pub fn declare(key: String, keys: &[String], config: &str) {
    register_declared(key, keys);
    let Ok(mut config) = serde_json::from_str::<Value>(config) else {
        return;
    };
    for k in keys {
        if let Some(value) = json_at(&mut config, k) {
            remember_json(value);
        }
    }
}

fn remember_json(value: &Value) {
    match value {
        Value::String(s) => remember(s),
        Value::Array(items) => items.iter().for_each(remember_json),
        Value::Object(map) => map.values().for_each(remember_json),
        _ => {}
    }
}

fn remember_leaves(value: &serde_yaml::Value) {
    match value {
        serde_yaml::Value::String(s) => match env_reference(s) {
            Some(name) => {
                if let Ok(v) = std::env::var(name) {
                    remember(&v);
                }
            }
            None => remember(s),
        },
        serde_yaml::Value::Sequence(items) => items.iter().for_each(remember_leaves),
        serde_yaml::Value::Mapping(map) => map.values().for_each(remember_leaves),
        _ => {}
    }
}

/// Names whose values are credentials, in lower case: headers and query parameters alike.
pub const CREDENTIAL_NAMES: [&str; 13] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "api_key",
    "apikey",
    "x-auth-token",
    "access_token",
    "auth_token",
    "token",
    "password",
    "secret",
];

/// `path_and_query` with the values of credential query parameters ([`CREDENTIAL_NAMES`], any
/// case) and of parameters holding a remembered secret replaced by `[redacted]`. Names and values
/// are percent-decoded first, the way the standard plugins read them (`api%5Fkey` is `api_key`,
/// `k%2D1` is `k-1`), so no spelling of a credential gets past.
pub fn redact_query(path_and_query: &str) -> std::borrow::Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return std::borrow::Cow::Borrowed(path_and_query);
    };
    let credential = |name: &str| {
        let name = crate::canonical::decode_query_name(name);
        CREDENTIAL_NAMES
            .iter()
            .any(|c| name.eq_ignore_ascii_case(c))
    };
    // what each pair becomes, when it must change
    let redacted = |pair: &str| -> Option<String> {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if holds_secret(&crate::canonical::decode_query_name(name)) {
            return Some("[redacted]".to_owned());
        }
        (credential(name) || holds_secret(&crate::canonical::decode_query_name(value)))
            .then(|| format!("{name}=[redacted]"))
    };
    if !query.split('&').any(|pair| redacted(pair).is_some()) {
        return std::borrow::Cow::Borrowed(path_and_query);
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| redacted(pair).unwrap_or_else(|| pair.to_owned()))
        .collect();
    std::borrow::Cow::Owned(format!("{path}?{}", pairs.join("&")))
}

/// Whether `text` contains a remembered secret value.
pub fn holds_secret(text: &str) -> bool {
    if text.len() < MIN_REMEMBERED {
        return false;
    }
    let known = KNOWN.read().unwrap_or_else(|p| p.into_inner());
    known.iter().any(|secret| text.contains(secret.as_str()))
}

/// `target` (a request's path and query) as it may be written to a log: credentials in the
/// query redacted ([`redact_query`]), and a path that holds a remembered secret, in any
/// percent-encoded spelling, written decoded with the secret replaced.
pub fn redact_target(target: &str) -> std::borrow::Cow<'_, str> {
    let redacted = redact_query(target);
    let (path, query) = match redacted.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (redacted.as_ref(), None),
    };
    let decoded_path = percent_decode_path(path);
    if !holds_secret(&decoded_path) && !holds_secret(&redacted) {
        return redacted;
    }
    let path = scrub(&decoded_path).into_owned();
    let out = match query {
        Some(q) => format!("{path}?{}", scrub(q)),
        None => path,
    };
    std::borrow::Cow::Owned(out)
}

/// Percent-decodes a path (no `+` rule in paths).
fn percent_decode_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return std::borrow::Cow::Borrowed(path);
    }
    // `+` is literal in a path: protect it from the form decoding
    let protected = path.replace('+', "%2B");
    std::borrow::Cow::Owned(crate::canonical::decode_query_name(&protected).into_owned())
}

/// `text` with every remembered secret value replaced by `[redacted]`.
pub fn scrub(text: &str) -> std::borrow::Cow<'_, str> {
    let known = KNOWN.read().unwrap_or_else(|p| p.into_inner());
    let mut out = std::borrow::Cow::Borrowed(text);
    for secret in known.iter() {
        if out.contains(secret.as_str()) {
            out = std::borrow::Cow::Owned(out.replace(secret.as_str(), "[redacted]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_query_parameters_are_redacted() {
        assert_eq!(redact_query("/a?x=1"), "/a?x=1");
        assert_eq!(
            redact_query("/a?API_KEY=s3cr3t&x=1&token=t"),
            "/a?API_KEY=[redacted]&x=1&token=[redacted]"
        );
        assert_eq!(redact_query("/no-query"), "/no-query");
    }

    fn config(yaml: &str) -> RawConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    const YAML: &str = r#"
instance: { id: i, type: dedicated, vpc: v, listen: ["127.0.0.1:1"], admin_token: tok-0123456789abcdef }
services:
  - name: s
    apis:
      - name: a
        path: /a
        backend: { upstream: u }
        plugins:
          - { name: key-auth, config: { keys: [k-1, k-2], header: X-Key } }
          - { path: ./p.wasm, secret_keys: [auth.password], config: { auth: { user: u, password: pw } } }
"#;

    #[test]
    fn secrets_are_redacted_wherever_they_appear() {
        let mut json = serde_json::to_value(config(YAML)).unwrap();
        redact_json(&mut json);
        let text = json.to_string();
        for secret in ["tok-0123456789abcdef", "k-1", "k-2", "\"pw\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("X-Key") && text.contains("\"u\""), "{text}");
        // an API on its own
        let mut api = json["services"][0]["apis"][0].clone();
        api["plugins"][0]["config"]["keys"] = serde_json::json!(["k-9"]);
        redact_json(&mut api);
        assert!(!api.to_string().contains("k-9"));
    }

    #[test]
    fn a_redacted_value_sent_back_keeps_the_stored_secret() {
        let current = config(YAML);
        let mut json = serde_json::to_value(&current).unwrap();
        redact_json(&mut json);
        let mut next: RawConfig = serde_json::from_value(json).unwrap();
        assert!(restore(&mut next, &current).is_empty());
        assert_eq!(next, current);
        // a marker where nothing is stored is refused
        let mut next = current.clone();
        next.services[0].apis[0].plugins[0].name = Some("key-auth".into());
        next.services[0].apis[0].name = "b".into();
        *yaml_at(
            next.services[0].apis[0].plugins[0].config.as_mut().unwrap(),
            "keys",
        )
        .unwrap() = serde_yaml::Value::String(REDACTED.into());
        let problems = restore(&mut next, &current);
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].path,
            "services[0].apis[0].plugins[0].config.keys"
        );
    }

    #[test]
    fn env_references_are_recognised() {
        assert_eq!(env_reference("${API_KEY}"), Some("API_KEY"));
        assert_eq!(env_reference("${_X1}"), Some("_X1"));
        for no in ["$API_KEY", "${}", "${1A}", "${A-B}", "x${A}", "${A}x"] {
            assert_eq!(env_reference(no), None, "{no}");
        }
    }
}
