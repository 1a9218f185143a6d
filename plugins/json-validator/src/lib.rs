//! `json-validator`: refuses request bodies that are not JSON, are nested too deeply, or do not
//! match a schema, with `400` and the first problem's JSON path.

pub mod rules;

use gatehouse_plugin_sdk::{export_plugin, Action, Hooks, Needs, Plugin, Reply, Request};
use serde::Serialize;

use rules::Rules;

/// Validates the request bodies of its API.
#[derive(Debug)]
pub struct JsonValidator(Rules);

/// The answer to a refused body.
#[derive(Serialize)]
struct Refusal<'a> {
    status: u16,
    error: &'a str,
    message: String,
    path: &'a str,
}

impl Plugin for JsonValidator {
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn configure(config: &str) -> Result<Self, String> {
        let config = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let value: serde_json::Value =
            serde_json::from_str(config).map_err(|e| format!("invalid configuration: {e}"))?;
        Rules::from_config(&value).map(JsonValidator)
    }

    /// The request body; no header.
    fn needs(&self) -> Needs {
        Needs::new(Self::HOOKS).request_body()
    }

    fn on_request(&self, req: &Request) -> Result<Action, String> {
        if !self.0.applies_to(&req.method()) {
            return Ok(Action::Proceed);
        }
        let body = req.body()?;
        match self.0.check(&body) {
            Ok(()) => Ok(Action::Proceed),
            Err(invalid) => {
                let (status, error) = if invalid.too_large {
                    (413, "payload_too_large")
                } else {
                    (400, "invalid_body")
                };
                let refusal = Refusal {
                    status,
                    error,
                    message: invalid.to_string(),
                    path: &invalid.path,
                };
                let body = serde_json::to_vec(&refusal)
                    .expect("serializing strings and a number cannot fail");
                Ok(Reply::json(status, body).into())
            }
        }
    }
}

export_plugin!(JsonValidator);

#[cfg(test)]
mod tests {
    use super::*;

    fn validator(config: &str) -> JsonValidator {
        JsonValidator::configure(config).unwrap()
    }

    #[test]
    fn a_refused_body_gets_400_with_the_first_error_and_its_path() {
        let v = validator(
            r#"{"schema":{"type":"object","required":["items"],
                "properties":{"items":{"type":"array","items":{"type":"object",
                "properties":{"sku":{"type":"string"}}}}}}}"#,
        );
        let req = Request::new("POST", "/orders")
            .with_body(r#"{"items":[{"sku":"a"},{"sku":"b"},{"sku":7}]}"#);
        let Action::Respond(reply) = v.on_request(&req).unwrap() else {
            panic!("an invalid body went through");
        };
        assert_eq!(reply.status, 400);
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"], "invalid_body");
        assert_eq!(body["path"], "$.items[2].sku");
        assert_eq!(
            body["message"],
            "$.items[2].sku: expected string, found number"
        );
        let ok = Request::new("POST", "/orders").with_body(r#"{"items":[]}"#);
        assert_eq!(v.on_request(&ok).unwrap(), Action::Proceed);
    }

    #[test]
    fn only_the_configured_methods_are_checked() {
        let v = validator("{}");
        // GET has no document to check (and the gateway gives no body to read)
        assert_eq!(
            v.on_request(&Request::new("GET", "/orders")).unwrap(),
            Action::Proceed
        );
        let v = validator(r#"{"methods":["get"]}"#);
        assert!(v.on_request(&Request::new("GET", "/orders")).is_err());
        assert!(JsonValidator::configure(r#"{"methods":[]}"#).is_err());
    }

    #[test]
    fn it_needs_the_request_body_and_no_header() {
        let needs = validator("{}").needs();
        assert!(needs.request_body && !needs.response_body);
        assert!(needs.request_headers.read.is_empty() && needs.request_headers.write.is_empty());
    }
}
