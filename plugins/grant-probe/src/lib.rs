//! `grant-probe`: a plugin for checking what grants let a plugin see and do. It declares exactly
//! the needs its configuration lists, and on request shows the headers and body it can read, makes
//! the changes it is told to, and can rewrite the response body. The gateway's tests use it to
//! check each capability of the contract; operators can use it to try a `grants:` block.

use gatehouse_plugin_sdk::{
    counters, export_plugin, parse_config, Action, Fallback, HeaderNeeds, Hooks, Needs, Plugin,
    Reply, Request, Response,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderList {
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

/// The needs to declare, in the words of the gateway's `grants:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Declared {
    #[serde(default)]
    request_headers: HeaderList,
    #[serde(default)]
    response_headers: HeaderList,
    #[serde(default)]
    request_body: bool,
    #[serde(default)]
    response_body: bool,
    #[serde(default)]
    node_steering: bool,
    #[serde(default)]
    counters: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The header hooks it implements (default all three); `on-response-body` comes with
    /// `needs.response_body`.
    #[serde(default)]
    hooks: Option<Vec<String>>,
    #[serde(default)]
    needs: Declared,
    /// Answer the request with what the plugin sees (`{"headers":[..],"body":..}`).
    #[serde(default)]
    show: bool,
    /// Request headers to set in `on-request`, in order.
    #[serde(default)]
    set_request: Vec<(String, String)>,
    /// Response headers to set in `on-response`, in order.
    #[serde(default)]
    set_response: Vec<(String, String)>,
    /// In `on-response`, sets `x-probe-saw` to the names of the response headers it can read.
    #[serde(default)]
    report_response_headers: bool,
    /// A body to send upstream instead of the client's.
    #[serde(default)]
    set_body: Option<String>,
    /// Text added to the end of the response body (`on-response-body`).
    #[serde(default)]
    append_to_response: Option<String>,
    /// A body this long (bytes of `x`) returned from `on-response-body` instead.
    #[serde(default)]
    response_body_of: Option<usize>,
    /// In `on-request`, lets only this node (`host:port`) serve the request.
    #[serde(default)]
    steer_to_node: Option<String>,
    /// With `steer_to_node`: answer 503 rather than use another node when it cannot.
    #[serde(default)]
    steer_fail: bool,
    /// In `on-request`, retries the request at most this many times.
    #[serde(default)]
    limit_retries: Option<u32>,
    /// In `on-request`, counts the request under this key (one-minute windows) and sends the
    /// count upstream in `x-probe-count` (it needs `counters` and the grant to write that
    /// header).
    #[serde(default)]
    count_key: Option<String>,
    /// A value the plugin declares secret: the gateway never shows or logs it.
    #[serde(default)]
    #[allow(dead_code)]
    secret: Option<String>,
}

/// Declares what its configuration says and does what it is told.
#[derive(Debug)]
pub struct GrantProbe(Config);

fn needs_of(list: &HeaderList) -> HeaderNeeds {
    HeaderNeeds {
        read: list.read.clone(),
        write: list.write.clone(),
    }
}

impl Plugin for GrantProbe {
    const HOOKS: Hooks = Hooks::ALL;
    const SECRET_KEYS: &'static [&'static str] = &["secret"];

    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        for hook in config.hooks.iter().flatten() {
            if hook_of(hook).is_none() {
                return Err(format!(
                    "`hooks`: {hook:?} is not one of on-request, on-upstream-request, on-response"
                ));
            }
        }
        Ok(GrantProbe(config))
    }

    fn needs(&self) -> Needs {
        let declared = &self.0.needs;
        let hooks = match &self.0.hooks {
            Some(names) => names
                .iter()
                .filter_map(|h| hook_of(h))
                .fold(Hooks::NONE, Hooks::and),
            None => Self::HOOKS,
        };
        let mut needs = Needs::new(hooks);
        needs.request_headers = needs_of(&declared.request_headers);
        needs.response_headers = needs_of(&declared.response_headers);
        if declared.request_body {
            needs = needs.request_body();
        }
        if declared.response_body {
            needs = needs.response_body();
        }
        if declared.node_steering {
            needs = needs.node_steering();
        }
        if declared.counters {
            needs = needs.counters();
        }
        needs
    }

    fn on_request(&self, req: &Request) -> Result<Action, String> {
        for (name, value) in &self.0.set_request {
            req.set_header(name, value)?;
        }
        if let Some(body) = &self.0.set_body {
            req.set_body(body.as_bytes())?;
        }
        if let Some(node) = &self.0.steer_to_node {
            let fallback = if self.0.steer_fail {
                Fallback::Fail
            } else {
                Fallback::AnyNode
            };
            req.steer_to_node(node, fallback)?;
        }
        if let Some(retries) = self.0.limit_retries {
            req.limit_retries(retries)?;
        }
        if let Some(key) = &self.0.count_key {
            let window = counters::increment(key, 1, 60_000)?;
            req.set_header("x-probe-count", &window.count.to_string())?;
        }
        if !self.0.show {
            return Ok(Action::Proceed);
        }
        let body = match req.body() {
            Ok(bytes) => serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) => serde_json::json!({ "error": e }),
        };
        let seen = serde_json::json!({ "headers": req.headers(), "body": body });
        Ok(Reply::json(200, seen.to_string()).into())
    }

    fn on_response(&self, _req: &Request, resp: &Response) -> Result<(), String> {
        for (name, value) in &self.0.set_response {
            resp.set_header(name, value)?;
        }
        if self.0.report_response_headers {
            let names: Vec<String> = resp.headers().into_iter().map(|(n, _)| n).collect();
            resp.set_header("x-probe-saw", &names.join(","))?;
        }
        Ok(())
    }

    fn on_response_body(
        &self,
        _req: &Request,
        _status: u16,
        _headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, String> {
        if let Some(n) = self.0.response_body_of {
            return Ok(Some(vec![b'x'; n]));
        }
        Ok(self.0.append_to_response.as_ref().map(|text| {
            let mut out = body.to_vec();
            out.extend_from_slice(text.as_bytes());
            out
        }))
    }
}

fn hook_of(name: &str) -> Option<Hooks> {
    match name {
        "on-request" => Some(Hooks::ON_REQUEST),
        "on-upstream-request" => Some(Hooks::ON_UPSTREAM_REQUEST),
        "on-response" => Some(Hooks::ON_RESPONSE),
        _ => None,
    }
}

export_plugin!(GrantProbe);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_what_its_configuration_lists() {
        let probe = GrantProbe::configure(
            r#"{"needs":{"request_headers":{"read":["x-a"]},"response_body":true}}"#,
        )
        .unwrap();
        let needs = probe.needs();
        assert_eq!(needs.request_headers.read, ["x-a"]);
        assert!(needs.response_body && needs.hooks.contains(Hooks::ON_RESPONSE_BODY));
        assert!(!needs.request_body);
        let probe = GrantProbe::configure(r#"{"hooks":["on-request"]}"#).unwrap();
        assert_eq!(probe.needs().hooks, Hooks::ON_REQUEST);
        assert!(GrantProbe::configure(r#"{"hooks":["on-body"]}"#).is_err());
    }

    #[test]
    fn shows_what_it_sees_and_rewrites_bodies() {
        let probe = GrantProbe::configure(r#"{"show":true,"set_body":"new"}"#).unwrap();
        let req = Request::new("POST", "/")
            .with_header("x-a", "1")
            .with_body("old");
        let Action::Respond(reply) = probe.on_request(&req).unwrap() else {
            panic!("expected a reply");
        };
        let seen: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(seen["body"], "new");
        assert_eq!(seen["headers"][0][0], "x-a");
        let probe = GrantProbe::configure(r#"{"append_to_response":"!"}"#).unwrap();
        let out = probe
            .on_response_body(&Request::new("GET", "/"), 200, &[], b"hi")
            .unwrap();
        assert_eq!(out.as_deref(), Some(&b"hi!"[..]));
    }
}
