//! `json-redact`: the example of a response-body plugin in the plugin authors' guide. In JSON
//! responses it replaces the value of every member with one of the configured names, at any
//! depth, with `"[redacted]"`; other responses go out unchanged.

use gatehouse_plugin_sdk::{export_plugin, parse_config, Hooks, Needs, Plugin, Request};
use serde::Deserialize;
use serde_json::Value;

/// What replaces a hidden value.
pub const REDACTED: &str = "[redacted]";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Member names whose values are hidden, wherever they are in the document.
    fields: Vec<String>,
}

/// Hides the configured fields of JSON responses.
#[derive(Debug)]
pub struct JsonRedact {
    fields: Vec<String>,
}

impl Plugin for JsonRedact {
    // No header hook: `Needs::response_body` adds `on-response-body`.
    const HOOKS: Hooks = Hooks::NONE;

    fn configure(config: &str) -> Result<Self, String> {
        let Config { fields } = parse_config(config)?;
        if fields.is_empty() || fields.iter().any(String::is_empty) {
            return Err("fields: list at least one member name (and no empty one)".to_string());
        }
        Ok(JsonRedact { fields })
    }

    /// The response body, and its `content-type` to tell JSON from the rest.
    fn needs(&self) -> Needs {
        Needs::new(Self::HOOKS)
            .read_response_header("content-type")
            .response_body()
    }

    fn on_response_body(
        &self,
        _req: &Request,
        _status: u16,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, String> {
        let json = headers.iter().any(|(name, value)| {
            name == "content-type" && {
                let media = value.split(';').next().unwrap_or("").trim();
                media.eq_ignore_ascii_case("application/json") || media.ends_with("+json")
            }
        });
        if !json {
            return Ok(None);
        }
        // Not JSON after all: send it as it is (hiding nothing is not an error of the request).
        let Ok(mut document) = serde_json::from_slice::<Value>(body) else {
            return Ok(None);
        };
        if redact(&mut document, &self.fields) == 0 {
            return Ok(None);
        }
        serde_json::to_vec(&document)
            .map(Some)
            .map_err(|e| format!("cannot write the redacted body: {e}"))
    }
}

/// Replaces the values of members named in `fields`, at any depth; returns how many.
fn redact(value: &mut Value, fields: &[String]) -> usize {
    match value {
        Value::Object(members) => members
            .iter_mut()
            .map(|(name, v)| {
                if fields.iter().any(|f| f == name) {
                    *v = Value::String(REDACTED.to_string());
                    1
                } else {
                    redact(v, fields)
                }
            })
            .sum(),
        Value::Array(items) => items.iter_mut().map(|v| redact(v, fields)).sum(),
        _ => 0,
    }
}

export_plugin!(JsonRedact);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin() -> JsonRedact {
        JsonRedact::configure(r#"{"fields":["password","ssn"]}"#).unwrap()
    }

    fn json_headers() -> Vec<(String, String)> {
        vec![(
            "content-type".to_string(),
            "application/json; charset=utf-8".to_string(),
        )]
    }

    #[test]
    fn named_fields_are_hidden_at_any_depth() {
        let body = br#"{"user":{"name":"ada","password":"p"},"rows":[{"ssn":"1"},{"ssn":2}]}"#;
        let out = plugin()
            .on_response_body(&Request::new("GET", "/u"), 200, &json_headers(), body)
            .unwrap()
            .expect("a changed body");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["user"]["name"], "ada");
        assert_eq!(v["user"]["password"], REDACTED);
        assert_eq!(v["rows"][0]["ssn"], REDACTED);
        assert_eq!(v["rows"][1]["ssn"], REDACTED);
    }

    #[test]
    fn other_bodies_go_out_unchanged() {
        let p = plugin();
        let req = Request::new("GET", "/u");
        // nothing to hide
        assert_eq!(
            p.on_response_body(&req, 200, &json_headers(), br#"{"a":1}"#)
                .unwrap(),
            None
        );
        // not JSON by its type, or not JSON at all
        let text = vec![("content-type".to_string(), "text/plain".to_string())];
        assert_eq!(
            p.on_response_body(&req, 200, &text, br#"{"password":1}"#)
                .unwrap(),
            None
        );
        assert_eq!(
            p.on_response_body(&req, 200, &json_headers(), b"{oops")
                .unwrap(),
            None
        );
    }

    #[test]
    fn it_needs_the_response_body_and_one_header() {
        let needs = plugin().needs();
        assert!(needs.response_body && !needs.request_body);
        assert!(needs.hooks.contains(Hooks::ON_RESPONSE_BODY));
        assert_eq!(needs.response_headers.read, ["content-type"]);
        assert!(JsonRedact::configure(r#"{"fields":[]}"#).is_err());
    }
}
