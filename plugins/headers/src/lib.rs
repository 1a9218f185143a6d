//! `headers`: sets, adds and removes headers of the request going upstream and of the response
//! going to the client.

use std::fmt;

use gatehouse_plugin_sdk::{
    export_plugin, parse_config, Action, Hooks, Needs, Plugin, Request, Response,
};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// The plugin's configuration: one set of changes per direction.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Changes,
    #[serde(default)]
    response: Changes,
}

/// Changes applied in this order: `remove`, then `set`, then `add`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Changes {
    /// Headers set to a value, replacing every value they had.
    #[serde(default)]
    set: Pairs,
    /// Values appended to headers, keeping the values they had.
    #[serde(default)]
    add: Pairs,
    /// Headers removed.
    #[serde(default)]
    remove: Vec<String>,
}

/// A JSON object of header names to values, in the order written. Numbers and booleans are
/// taken as their text, so YAML's `X-Version: 2` works.
#[derive(Debug, Default, PartialEq)]
struct Pairs(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;

        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Pairs;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of header names to values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, Scalar>()? {
                    pairs.push((name, value.0));
                }
                Ok(Pairs(pairs))
            }
        }

        deserializer.deserialize_map(PairsVisitor)
    }
}

/// A header value: a string, a number or a boolean.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) => Ok(Scalar(s)),
            serde_json::Value::Number(n) => Ok(Scalar(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Scalar(b.to_string())),
            other => Err(de::Error::custom(format!(
                "a header value must be a string, a number or a boolean, not {other}"
            ))),
        }
    }
}

impl Changes {
    fn check(&self, direction: &str) -> Result<(), String> {
        for name in &self.remove {
            check_name(name).map_err(|e| format!("{direction}.remove: {e}"))?;
        }
        for (key, pairs) in [("set", &self.set), ("add", &self.add)] {
            for (name, value) in &pairs.0 {
                check_name(name).map_err(|e| format!("{direction}.{key}: {e}"))?;
                check_value(value).map_err(|e| format!("{direction}.{key}.{name}: {e}"))?;
            }
        }
        Ok(())
    }

    /// The headers these changes touch, in lower case.
    fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.remove
            .iter()
            .chain(self.set.0.iter().map(|(n, _)| n))
            .chain(self.add.0.iter().map(|(n, _)| n))
            .map(|n| n.to_ascii_lowercase())
    }

    fn is_empty(&self) -> bool {
        self.set.0.is_empty() && self.add.0.is_empty() && self.remove.is_empty()
    }

    /// Applies the changes through the three header operations of a request or a response.
    fn apply(&self, headers: &impl HeaderOps) -> Result<(), String> {
        for name in &self.remove {
            headers.remove(name)?;
        }
        for (name, value) in &self.set.0 {
            headers.set(name, value)?;
        }
        for (name, value) in &self.add.0 {
            headers.append(name, value)?;
        }
        Ok(())
    }
}

/// The header operations shared by [`Request`] and [`Response`].
trait HeaderOps {
    fn set(&self, name: &str, value: &str) -> Result<(), String>;
    fn append(&self, name: &str, value: &str) -> Result<(), String>;
    fn remove(&self, name: &str) -> Result<(), String>;
}

impl HeaderOps for Request {
    fn set(&self, name: &str, value: &str) -> Result<(), String> {
        self.set_header(name, value)
    }
    fn append(&self, name: &str, value: &str) -> Result<(), String> {
        self.append_header(name, value)
    }
    fn remove(&self, name: &str) -> Result<(), String> {
        self.remove_header(name)
    }
}

impl HeaderOps for Response {
    fn set(&self, name: &str, value: &str) -> Result<(), String> {
        self.set_header(name, value)
    }
    fn append(&self, name: &str, value: &str) -> Result<(), String> {
        self.append_header(name, value)
    }
    fn remove(&self, name: &str) -> Result<(), String> {
        self.remove_header(name)
    }
}

/// A header name is an HTTP token.
fn check_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    Ok(())
}

/// A header value is visible ASCII (with spaces and tabs) on one line, as the gateway requires.
fn check_value(value: &str) -> Result<(), String> {
    if !value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return Err("the value must be visible ASCII on one line".to_string());
    }
    Ok(())
}

/// Rewrites request and response headers.
#[derive(Debug)]
pub struct Headers {
    request: Changes,
    response: Changes,
}

impl Plugin for Headers {
    const HOOKS: Hooks = Hooks::ON_REQUEST.and(Hooks::ON_RESPONSE);

    fn configure(config: &str) -> Result<Self, String> {
        let Config { request, response } = parse_config(config)?;
        request.check("request")?;
        response.check("response")?;
        Ok(Headers { request, response })
    }

    /// Writes exactly the headers it is configured to change; reads none. Declares only the
    /// hooks with changes to make: a hook with nothing to do is never called.
    fn needs(&self) -> Needs {
        let hooks = [
            (self.request.is_empty(), Hooks::ON_REQUEST),
            (self.response.is_empty(), Hooks::ON_RESPONSE),
        ]
        .into_iter()
        .filter(|(empty, _)| !empty)
        .fold(Hooks::NONE, |all, (_, hook)| all.and(hook));
        let needs = self
            .request
            .names()
            .fold(Needs::new(hooks), Needs::write_request_header);
        self.response
            .names()
            .fold(needs, Needs::write_response_header)
    }

    fn on_request(&self, req: &Request) -> Result<Action, String> {
        self.request.apply(req)?;
        Ok(Action::Proceed)
    }

    fn on_response(&self, _req: &Request, resp: &Response) -> Result<(), String> {
        if self.response.is_empty() {
            return Ok(());
        }
        self.response.apply(resp)
    }
}

export_plugin!(Headers);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(config: &str) -> Headers {
        Headers::configure(config).unwrap()
    }

    #[test]
    fn empty_config_changes_nothing() {
        let plugin = plugin("{}");
        let req = Request::new("GET", "/").with_header("a", "1");
        assert_eq!(plugin.on_request(&req).unwrap(), Action::Proceed);
        assert_eq!(req.headers(), [("a".to_string(), "1".to_string())]);
    }

    #[test]
    fn request_remove_then_set_then_add() {
        let plugin = plugin(
            r#"{"request": {
                "remove": ["X-Secret", "Cookie"],
                "set": {"X-Env": "prod", "X-Version": 2},
                "add": {"X-Env": "edge", "Via": "gatehouse"}
            }}"#,
        );
        let req = Request::new("GET", "/")
            .with_header("X-Secret", "s")
            .with_header("cookie", "c")
            .with_header("x-env", "dev")
            .with_header("x-env", "test");
        plugin.on_request(&req).unwrap();
        assert_eq!(req.header("x-secret"), None);
        assert_eq!(req.header("cookie"), None);
        assert_eq!(req.header_all("x-env"), ["prod", "edge"]);
        assert_eq!(req.header("x-version").as_deref(), Some("2"));
        assert_eq!(req.header("via").as_deref(), Some("gatehouse"));
    }

    #[test]
    fn set_keeps_the_written_order() {
        let plugin = plugin(r#"{"request": {"add": {"b": "1", "a": "2", "c": "3"}}}"#);
        let req = Request::new("GET", "/");
        plugin.on_request(&req).unwrap();
        let names: Vec<_> = req.headers().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "a", "c"]);
    }

    #[test]
    fn response_changes() {
        let plugin = plugin(
            r#"{"response": {"remove": ["server"], "set": {"Cache-Control": "no-store"}, "add": {"X-Frame-Options": "DENY"}}}"#,
        );
        let req = Request::new("GET", "/");
        req.freeze();
        let resp = Response::new(200)
            .with_header("Server", "nginx")
            .with_header("cache-control", "max-age=60");
        plugin.on_response(&req, &resp).unwrap();
        assert_eq!(resp.header("server"), None);
        assert_eq!(resp.header_all("cache-control"), ["no-store"]);
        assert_eq!(resp.header("x-frame-options").as_deref(), Some("DENY"));
    }

    #[test]
    fn only_hooks_with_changes_to_make_are_declared() {
        let hooks = |config: &str| plugin(config).needs().hooks;
        assert_eq!(
            hooks(r#"{"request": {"set": {"a": "1"}}}"#),
            Hooks::ON_REQUEST
        );
        assert_eq!(
            hooks(r#"{"response": {"remove": ["server"]}}"#),
            Hooks::ON_RESPONSE
        );
        assert_eq!(
            hooks(r#"{"request": {"add": {"a": "1"}}, "response": {"set": {"b": "2"}}}"#),
            Hooks::ON_REQUEST.and(Hooks::ON_RESPONSE)
        );
        assert_eq!(hooks("{}"), Hooks::NONE);
    }

    #[test]
    fn request_changes_leave_the_response_alone() {
        let plugin = plugin(r#"{"request": {"set": {"a": "1"}}}"#);
        let req = Request::new("GET", "/");
        req.freeze();
        let resp = Response::new(200).with_header("a", "0");
        plugin.on_response(&req, &resp).unwrap();
        assert_eq!(resp.header("a").as_deref(), Some("0"));
    }

    #[test]
    fn config_errors_name_the_place() {
        let err = Headers::configure(r#"{"request": {"set": {"bad name": "x"}}}"#).unwrap_err();
        assert!(
            err.starts_with("request.set: \"bad name\" is not a valid header name"),
            "{err}"
        );
        let err = Headers::configure(r#"{"response": {"add": {"x": "a\nb"}}}"#).unwrap_err();
        assert!(
            err.starts_with("response.add.x: the value must be visible ASCII"),
            "{err}"
        );
        let err = Headers::configure(r#"{"response": {"add": {"x": "caf\u00e9"}}}"#).unwrap_err();
        assert!(
            err.starts_with("response.add.x: the value must be visible ASCII"),
            "{err}"
        );
        let err = Headers::configure(r#"{"response": {"remove": [""]}}"#).unwrap_err();
        assert!(err.starts_with("response.remove:"), "{err}");
        let err = Headers::configure(r#"{"request": {"set": {"x": null}}}"#).unwrap_err();
        assert!(
            err.contains("must be a string, a number or a boolean"),
            "{err}"
        );
        let err = Headers::configure(r#"{"request": {"replace": {}}}"#).unwrap_err();
        assert!(err.contains("unknown field `replace`"), "{err}");
    }
}
