//! `key-auth`: lets a request through only when it carries one of the configured API keys, in a
//! header or a query parameter; answers 401 otherwise.

use std::hint::black_box;

use gatehouse_plugin_sdk::{
    export_plugin, log, parse_config, Action, Hooks, Needs, Plugin, Reply, Request,
};
use serde::Deserialize;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The accepted keys.
    keys: Vec<String>,
    /// The header carrying the key; `null` disables it.
    #[serde(default = "default_header")]
    header: Option<String>,
    /// The query parameter carrying the key; `null` disables it.
    #[serde(default = "default_query")]
    query: Option<String>,
    /// Remove the key (header and query parameter) before the request goes upstream.
    #[serde(default = "default_true")]
    hide_credentials: bool,
}

fn default_header() -> Option<String> {
    Some("X-API-Key".to_string())
}

fn default_query() -> Option<String> {
    Some("api_key".to_string())
}

fn default_true() -> bool {
    true
}

/// Checks API keys.
#[derive(Debug)]
pub struct KeyAuth {
    keys: Vec<Vec<u8>>,
    header: Option<String>,
    query: Option<String>,
    hide_credentials: bool,
}

impl Plugin for KeyAuth {
    const HOOKS: Hooks = Hooks::ON_REQUEST;
    const SECRET_KEYS: &'static [&'static str] = &["keys"];

    fn configure(config: &str) -> Result<Self, String> {
        let Config {
            keys,
            header,
            query,
            hide_credentials,
        } = parse_config(config)?;
        if keys.is_empty() {
            return Err("`keys` must list at least one key".to_string());
        }
        if let Some(index) = keys.iter().position(|k| k.is_empty()) {
            return Err(format!("`keys[{index}]` is empty"));
        }
        if header.is_none() && query.is_none() {
            return Err(
                "`header` and `query` are both null: the key could not be sent".to_string(),
            );
        }
        if let Some(header) = &header {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if header.is_empty() || !header.bytes().all(token) {
                return Err(format!("`header` {header:?} is not a valid header name"));
            }
        }
        if query.as_deref() == Some("") {
            return Err("`query` must not be empty (use null to disable it)".to_string());
        }
        let keys = keys.into_iter().map(String::into_bytes).collect();
        Ok(KeyAuth {
            keys,
            header,
            query,
            hide_credentials,
        })
    }

    /// The key's header: read, and removed when `hide_credentials`.
    fn needs(&self) -> Needs {
        let needs = Needs::new(Self::HOOKS);
        match &self.header {
            Some(header) => {
                let header = header.to_ascii_lowercase();
                let needs = needs.read_request_header(header.clone());
                if self.hide_credentials {
                    needs.write_request_header(header)
                } else {
                    needs
                }
            }
            None => needs,
        }
    }

    fn on_request(&self, req: &Request) -> Result<Action, String> {
        let from_header = self
            .header
            .as_deref()
            .and_then(|h| req.header(h))
            .filter(|k| !k.is_empty());
        let query = req.query();
        let from_query = match (&self.query, &query) {
            (Some(name), Some(query)) => query_param(query, name).filter(|k| !k.is_empty()),
            _ => None,
        };
        let Some(key) = from_header.or(from_query) else {
            return Ok(self.unauthorized("no API key in the request"));
        };
        if !self.is_known(key.as_bytes()) {
            log::debug("request refused: unknown API key");
            return Ok(self.unauthorized("invalid API key"));
        }
        if self.hide_credentials {
            if let Some(header) = &self.header {
                req.remove_header(header)?;
            }
            if let (Some(name), Some(query)) = (&self.query, &query) {
                let stripped = remove_query_param(query, name);
                if stripped.as_deref() != Some(query.as_str()) {
                    req.set_query(stripped.as_deref())?;
                }
            }
        }
        Ok(Action::Proceed)
    }
}

impl KeyAuth {
    /// Compares `key` with every configured key, taking the same time whichever matches.
    fn is_known(&self, key: &[u8]) -> bool {
        self.keys
            .iter()
            .fold(false, |found, known| found | constant_time_eq(key, known))
    }

    /// The 401 reply, telling the client where to put the key.
    fn unauthorized(&self, message: &str) -> Action {
        let challenge = match &self.header {
            Some(header) => format!("Key realm=\"gatehouse\", header=\"{header}\""),
            None => "Key realm=\"gatehouse\"".to_string(),
        };
        Reply::error(401, "unauthorized", message)
            .header("www-authenticate", challenge)
            .into()
    }
}

export_plugin!(KeyAuth);

/// Compares two byte strings in a time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= black_box(x ^ y);
    }
    diff == 0
}

/// The decoded value of the first parameter `name` in `query` (form encoding: `+` is a space).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

/// `query` without any parameter `name`; `None` when nothing is left.
fn remove_query_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| decode(pair.split_once('=').map_or(pair, |(key, _)| key)) != name)
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Percent-decodes a query component; invalid escapes are kept as they are.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(hex),
                bytes.get(i + 2).and_then(hex),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"keys": ["s3cret", "other-key"]}"#;

    fn body(action: &Action) -> serde_json::Value {
        match action {
            Action::Respond(reply) => serde_json::from_slice(&reply.body).unwrap(),
            Action::Proceed => panic!("expected a reply"),
        }
    }

    #[test]
    fn valid_header_key_proceeds_and_is_hidden() {
        let plugin = KeyAuth::configure(CONFIG).unwrap();
        let req = Request::new("GET", "/x?a=1").with_header("X-API-Key", "other-key");
        assert_eq!(plugin.on_request(&req).unwrap(), Action::Proceed);
        assert_eq!(req.header("x-api-key"), None);
        assert_eq!(req.query().as_deref(), Some("a=1"));
    }

    #[test]
    fn valid_query_key_proceeds_and_is_hidden() {
        let plugin = KeyAuth::configure(CONFIG).unwrap();
        let req = Request::new("GET", "/x?a=1&api_key=s3cret&b=2");
        assert_eq!(plugin.on_request(&req).unwrap(), Action::Proceed);
        assert_eq!(req.query().as_deref(), Some("a=1&b=2"));

        let req = Request::new("GET", "/x?api%5Fkey=s3cre%74");
        assert_eq!(plugin.on_request(&req).unwrap(), Action::Proceed);
        assert_eq!(req.query(), None);
    }

    #[test]
    fn credentials_kept_when_not_hidden() {
        let plugin = KeyAuth::configure(r#"{"keys": ["k"], "hide_credentials": false}"#).unwrap();
        let req = Request::new("GET", "/?api_key=k").with_header("x-api-key", "k");
        assert_eq!(plugin.on_request(&req).unwrap(), Action::Proceed);
        assert_eq!(req.header("x-api-key").as_deref(), Some("k"));
        assert_eq!(req.query().as_deref(), Some("api_key=k"));
    }

    #[test]
    fn missing_or_wrong_key_is_401() {
        let plugin = KeyAuth::configure(CONFIG).unwrap();
        for req in [
            Request::new("GET", "/"),
            Request::new("GET", "/").with_header("x-api-key", ""),
            Request::new("GET", "/?api_key="),
        ] {
            let action = plugin.on_request(&req).unwrap();
            assert_eq!(body(&action)["message"], "no API key in the request");
        }
        for req in [
            Request::new("GET", "/").with_header("x-api-key", "s3cre"),
            Request::new("GET", "/").with_header("x-api-key", "s3crets"),
            Request::new("GET", "/?api_key=S3CRET"),
        ] {
            let action = plugin.on_request(&req).unwrap();
            let Action::Respond(reply) = &action else {
                panic!()
            };
            assert_eq!(reply.status, 401);
            assert_eq!(reply.header_value("content-type"), Some("application/json"));
            assert_eq!(
                reply.header_value("WWW-Authenticate"),
                Some(r#"Key realm="gatehouse", header="X-API-Key""#)
            );
            assert_eq!(
                body(&action),
                serde_json::json!({"status": 401, "error": "unauthorized", "message": "invalid API key"})
            );
            assert!(
                req.header("x-api-key").is_some() || req.query().is_some(),
                "nothing removed on refusal"
            );
        }
    }

    #[test]
    fn disabled_sources_are_ignored() {
        let plugin = KeyAuth::configure(r#"{"keys": ["k"], "query": null}"#).unwrap();
        assert_ne!(
            plugin
                .on_request(&Request::new("GET", "/?api_key=k"))
                .unwrap(),
            Action::Proceed
        );
        let plugin =
            KeyAuth::configure(r#"{"keys": ["k"], "header": null, "query": "key"}"#).unwrap();
        let req = Request::new("GET", "/").with_header("x-api-key", "k");
        let Action::Respond(reply) = plugin.on_request(&req).unwrap() else {
            panic!()
        };
        assert_eq!(
            reply.header_value("www-authenticate"),
            Some(r#"Key realm="gatehouse""#)
        );
        assert_eq!(
            plugin.on_request(&Request::new("GET", "/?key=k")).unwrap(),
            Action::Proceed
        );
    }

    #[test]
    fn header_wins_over_query() {
        let plugin = KeyAuth::configure(CONFIG).unwrap();
        let req = Request::new("GET", "/?api_key=wrong").with_header("x-api-key", "s3cret");
        assert_eq!(plugin.on_request(&req).unwrap(), Action::Proceed);
        assert_eq!(req.query(), None, "the query copy is removed too");
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn query_helpers() {
        assert_eq!(query_param("a=1&b=x+y%21", "b").as_deref(), Some("x y!"));
        assert_eq!(query_param("a=1&a=2", "a").as_deref(), Some("1"));
        assert_eq!(query_param("flag&a=1", "flag").as_deref(), Some(""));
        assert_eq!(query_param("a=%zz%4", "a").as_deref(), Some("%zz%4"));
        assert_eq!(
            remove_query_param("a=1&k=2&&k&b", "k").as_deref(),
            Some("a=1&b")
        );
        assert_eq!(remove_query_param("k=1", "k"), None);
    }

    #[test]
    fn config_errors() {
        let err = |config: &str| KeyAuth::configure(config).unwrap_err();
        assert!(err("{}").contains("missing field `keys`"));
        assert!(err(r#"{"keys": []}"#).contains("at least one key"));
        assert!(err(r#"{"keys": ["a", ""]}"#).contains("`keys[1]` is empty"));
        assert!(err(r#"{"keys": ["a"], "header": null, "query": null}"#).contains("both null"));
        assert!(err(r#"{"keys": ["a"], "header": "x y"}"#).contains("not a valid header name"));
        assert!(err(r#"{"keys": ["a"], "query": ""}"#).contains("must not be empty"));
    }
}
