//! `cors`: answers CORS preflight requests itself and adds the CORS headers to responses for
//! allowed origins.

use gatehouse_plugin_sdk::{
    export_plugin, parse_config, Action, Hooks, Needs, Plugin, Reply, Request, Response,
};
use serde::Deserialize;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Allowed origins (`https://app.example.com`), or `["*"]` for any.
    #[serde(default = "default_origins")]
    allow_origins: Vec<String>,
    /// Methods announced in preflight answers.
    #[serde(default = "default_methods")]
    allow_methods: Vec<String>,
    /// Request headers announced in preflight answers; absent: the requested ones are echoed.
    #[serde(default)]
    allow_headers: Option<Vec<String>>,
    /// Response headers that scripts may read.
    #[serde(default)]
    expose_headers: Vec<String>,
    /// Let requests carry cookies and credentials.
    #[serde(default)]
    allow_credentials: bool,
    /// How long browsers may cache a preflight answer, in seconds; `null` leaves it to them.
    #[serde(default = "default_max_age")]
    max_age: Option<u32>,
}

fn default_origins() -> Vec<String> {
    vec!["*".to_string()]
}

fn default_methods() -> Vec<String> {
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        .map(String::from)
        .to_vec()
}

fn default_max_age() -> Option<u32> {
    Some(600)
}

/// Which origins may read responses.
#[derive(Debug, PartialEq)]
enum Origins {
    Any,
    /// Lower-case origins without a trailing slash.
    List(Vec<String>),
}

/// CORS for one API.
#[derive(Debug)]
pub struct Cors {
    origins: Origins,
    /// `Access-Control-Allow-Methods` value.
    methods: String,
    /// `Access-Control-Allow-Headers` value; `None` echoes the request's.
    headers: Option<String>,
    /// `Access-Control-Expose-Headers` value, if any.
    expose: Option<String>,
    credentials: bool,
    max_age: Option<u32>,
}

impl Plugin for Cors {
    const HOOKS: Hooks = Hooks::ON_REQUEST.and(Hooks::ON_RESPONSE);

    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        if config.allow_origins.is_empty() {
            return Err(
                "`allow_origins` must not be empty (use [\"*\"] for any origin)".to_string(),
            );
        }
        let origins = if config.allow_origins.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            let list = config.allow_origins.iter().enumerate().map(|(i, o)| {
                normalize_origin(o).map_err(|e| format!("`allow_origins[{i}]`: {e}"))
            });
            Origins::List(list.collect::<Result<_, _>>()?)
        };
        let methods = tokens("allow_methods", &config.allow_methods)?
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(", ");
        let headers = match &config.allow_headers {
            Some(list) => Some(tokens("allow_headers", list)?.join(", ")),
            None => None,
        };
        let expose = tokens("expose_headers", &config.expose_headers)?.join(", ");
        Ok(Cors {
            origins,
            methods,
            headers,
            expose: (!expose.is_empty()).then_some(expose),
            credentials: config.allow_credentials,
            max_age: config.max_age,
        })
    }

    /// The CORS request headers, and the response headers it sets (reading `vary` to extend it).
    fn needs(&self) -> Needs {
        let needs = [
            "origin",
            "access-control-request-method",
            "access-control-request-headers",
        ]
        .into_iter()
        .fold(Needs::new(Self::HOOKS), Needs::read_request_header);
        [
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-expose-headers",
            "vary",
        ]
        .into_iter()
        .fold(
            needs.read_response_header("vary"),
            Needs::write_response_header,
        )
    }

    fn on_request(&self, req: &Request) -> Result<Action, String> {
        if !req.method().eq_ignore_ascii_case("OPTIONS") {
            return Ok(Action::Proceed);
        }
        let (Some(origin), Some(_)) = (
            req.header("origin"),
            req.header("access-control-request-method"),
        ) else {
            return Ok(Action::Proceed);
        };
        let Some(allow_origin) = self.allow_origin(&origin) else {
            return Ok(Reply::error(403, "forbidden", "CORS: this origin is not allowed").into());
        };
        let mut vary = vec!["Origin"];
        let mut reply = Reply::new(204)
            .header("access-control-allow-origin", allow_origin)
            .header("access-control-allow-methods", &self.methods);
        let allow_headers = match &self.headers {
            Some(configured) => Some(configured.clone()),
            None => {
                vary.push("Access-Control-Request-Headers");
                req.header("access-control-request-headers")
            }
        };
        if let Some(headers) = allow_headers.filter(|h| !h.is_empty()) {
            reply = reply.header("access-control-allow-headers", headers);
        }
        if self.credentials {
            reply = reply.header("access-control-allow-credentials", "true");
        }
        if let Some(max_age) = self.max_age {
            reply = reply.header("access-control-max-age", max_age.to_string());
        }
        Ok(reply.header("vary", vary.join(", ")).into())
    }

    fn on_response(&self, req: &Request, resp: &Response) -> Result<(), String> {
        // Without credentials a wildcard answer is the same for every request, so it needs no
        // `Vary`; any other answer depends on `Origin`, whether or not this request had one.
        if self.origins != Origins::Any || self.credentials {
            add_vary_origin(resp)?;
        }
        let Some(allow_origin) = req
            .header("origin")
            .and_then(|o| self.allow_origin(&o))
            .or_else(|| {
                (self.origins == Origins::Any && !self.credentials).then(|| "*".to_string())
            })
        else {
            return Ok(());
        };
        resp.set_header("access-control-allow-origin", &allow_origin)?;
        if self.credentials {
            resp.set_header("access-control-allow-credentials", "true")?;
        }
        if let Some(expose) = &self.expose {
            resp.set_header("access-control-expose-headers", expose)?;
        }
        Ok(())
    }
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed:
    /// `*` for any origin, the origin itself when listed or when credentials are allowed.
    fn allow_origin(&self, origin: &str) -> Option<String> {
        match &self.origins {
            Origins::Any if self.credentials => Some(origin.to_string()),
            Origins::Any => Some("*".to_string()),
            Origins::List(list) => {
                let origin_lc = origin.trim_end_matches('/').to_ascii_lowercase();
                list.contains(&origin_lc).then(|| origin.to_string())
            }
        }
    }
}

export_plugin!(Cors);

/// Appends `Origin` to the response's `Vary` unless it is already there (or `Vary: *`).
fn add_vary_origin(resp: &Response) -> Result<(), String> {
    let present = resp
        .headers()
        .iter()
        .filter(|(name, _)| name == "vary")
        .flat_map(|(_, value)| value.split(','))
        .any(|token| token.trim() == "*" || token.trim().eq_ignore_ascii_case("origin"));
    if present {
        Ok(())
    } else {
        resp.append_header("vary", "Origin")
    }
}

/// Checks a configured origin (`scheme://host[:port]` or `null`) and puts it in lower case.
fn normalize_origin(origin: &str) -> Result<String, String> {
    let lower = origin.trim_end_matches('/').to_ascii_lowercase();
    if lower == "null" {
        return Ok(lower);
    }
    let valid = lower.split_once("://").is_some_and(|(scheme, host)| {
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            && !host.is_empty()
            && !host.contains(['/', '?', '#', ' ', '*'])
    });
    if valid {
        Ok(lower)
    } else {
        Err(format!("{origin:?} is not an origin like \"https://app.example.com\" (scheme, host, optional port; no path)"))
    }
}

/// Checks that every item is an HTTP token (a method or a header name).
fn tokens<'a>(key: &str, list: &'a [String]) -> Result<&'a [String], String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    match list
        .iter()
        .position(|item| item.is_empty() || !item.bytes().all(token))
    {
        Some(i) => Err(format!("`{key}[{i}]`: {:?} is not a valid name", list[i])),
        None => Ok(list),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preflight(origin: &str) -> Request {
        Request::new("OPTIONS", "/items")
            .with_header("Origin", origin)
            .with_header("Access-Control-Request-Method", "PUT")
            .with_header("Access-Control-Request-Headers", "content-type, x-token")
    }

    fn reply(action: Action) -> Reply {
        match action {
            Action::Respond(reply) => reply,
            Action::Proceed => panic!("expected a reply"),
        }
    }

    fn respond(plugin: &Cors, req: &Request, resp: Response) -> Response {
        req.freeze();
        plugin.on_response(req, &resp).unwrap();
        resp
    }

    #[test]
    fn default_preflight() {
        let plugin = Cors::configure("{}").unwrap();
        let reply = reply(plugin.on_request(&preflight("https://a.example")).unwrap());
        assert_eq!(reply.status, 204);
        assert_eq!(reply.header_value("access-control-allow-origin"), Some("*"));
        assert_eq!(
            reply.header_value("access-control-allow-methods"),
            Some("GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS")
        );
        assert_eq!(
            reply.header_value("access-control-allow-headers"),
            Some("content-type, x-token")
        );
        assert_eq!(reply.header_value("access-control-max-age"), Some("600"));
        assert_eq!(reply.header_value("access-control-allow-credentials"), None);
        assert_eq!(
            reply.header_value("vary"),
            Some("Origin, Access-Control-Request-Headers")
        );
        assert!(reply.body.is_empty());
    }

    #[test]
    fn configured_preflight() {
        let plugin = Cors::configure(
            r#"{"allow_origins": ["https://App.example/"], "allow_methods": ["get", "post"],
                "allow_headers": ["Content-Type"], "allow_credentials": true, "max_age": null}"#,
        )
        .unwrap();
        let reply = reply(
            plugin
                .on_request(&preflight("https://app.example"))
                .unwrap(),
        );
        assert_eq!(
            reply.header_value("access-control-allow-origin"),
            Some("https://app.example")
        );
        assert_eq!(
            reply.header_value("access-control-allow-methods"),
            Some("GET, POST")
        );
        assert_eq!(
            reply.header_value("access-control-allow-headers"),
            Some("Content-Type")
        );
        assert_eq!(
            reply.header_value("access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(reply.header_value("access-control-max-age"), None);
        assert_eq!(reply.header_value("vary"), Some("Origin"));

        let refused = reply_status(&plugin, &preflight("https://evil.example"));
        assert_eq!(refused, 403);
    }

    fn reply_status(plugin: &Cors, req: &Request) -> u16 {
        reply(plugin.on_request(req).unwrap()).status
    }

    #[test]
    fn non_preflight_requests_proceed() {
        let plugin = Cors::configure(r#"{"allow_origins": ["https://a.example"]}"#).unwrap();
        let plain_options = Request::new("OPTIONS", "/").with_header("origin", "https://a.example");
        assert_eq!(plugin.on_request(&plain_options).unwrap(), Action::Proceed);
        let get = Request::new("GET", "/").with_header("origin", "https://evil.example");
        assert_eq!(plugin.on_request(&get).unwrap(), Action::Proceed);
    }

    #[test]
    fn wildcard_response() {
        let plugin = Cors::configure(r#"{"expose_headers": ["X-Total", "ETag"]}"#).unwrap();
        let req = Request::new("GET", "/").with_header("origin", "https://a.example");
        let resp = respond(&plugin, &req, Response::new(200));
        assert_eq!(
            resp.header("access-control-allow-origin").as_deref(),
            Some("*")
        );
        assert_eq!(
            resp.header("access-control-expose-headers").as_deref(),
            Some("X-Total, ETag")
        );
        assert_eq!(resp.header("vary"), None);
    }

    #[test]
    fn listed_origin_response() {
        let plugin = Cors::configure(
            r#"{"allow_origins": ["https://a.example"], "allow_credentials": true}"#,
        )
        .unwrap();
        let req = Request::new("GET", "/").with_header("origin", "https://A.example");
        let resp = respond(
            &plugin,
            &req,
            Response::new(200).with_header("Vary", "Accept-Encoding"),
        );
        assert_eq!(
            resp.header("access-control-allow-origin").as_deref(),
            Some("https://A.example")
        );
        assert_eq!(
            resp.header("access-control-allow-credentials").as_deref(),
            Some("true")
        );
        assert_eq!(resp.header_all("vary"), ["Accept-Encoding", "Origin"]);

        let again = Response::new(200).with_header("vary", "accept, origin");
        let again = respond(&plugin, &req, again);
        assert_eq!(
            again.header_all("vary"),
            ["accept, origin"],
            "no duplicate Vary"
        );
    }

    #[test]
    fn other_origins_get_no_cors_headers() {
        let plugin = Cors::configure(r#"{"allow_origins": ["https://a.example"]}"#).unwrap();
        for req in [
            Request::new("GET", "/").with_header("origin", "https://b.example"),
            Request::new("GET", "/"),
        ] {
            let resp = respond(&plugin, &req, Response::new(200));
            assert_eq!(resp.header("access-control-allow-origin"), None);
            assert_eq!(resp.header("vary").as_deref(), Some("Origin"));
        }
    }

    #[test]
    fn wildcard_with_credentials_echoes_the_origin() {
        let plugin = Cors::configure(r#"{"allow_credentials": true}"#).unwrap();
        let req = Request::new("GET", "/").with_header("origin", "https://x.example");
        let resp = respond(&plugin, &req, Response::new(200));
        assert_eq!(
            resp.header("access-control-allow-origin").as_deref(),
            Some("https://x.example")
        );
        assert_eq!(resp.header("vary").as_deref(), Some("Origin"));
        let no_origin = respond(&plugin, &Request::new("GET", "/"), Response::new(200));
        assert_eq!(no_origin.header("access-control-allow-origin"), None);
    }

    #[test]
    fn config_errors() {
        let err = |config: &str| Cors::configure(config).unwrap_err();
        assert!(err(r#"{"allow_origins": []}"#).contains("must not be empty"));
        assert!(err(r#"{"allow_origins": ["a.example"]}"#).starts_with("`allow_origins[0]`"));
        assert!(err(r#"{"allow_origins": ["https://a.example/path"]}"#).contains("no path"));
        assert!(
            err(r#"{"allow_methods": ["GET", "BAD METHOD"]}"#).starts_with("`allow_methods[1]`")
        );
        assert!(err(r#"{"allow_headers": [""]}"#).starts_with("`allow_headers[0]`"));
        assert!(err(r#"{"max_age": -1}"#).contains("invalid value"));
        assert!(Cors::configure(r#"{"allow_origins": ["null", "http://localhost:3000"]}"#).is_ok());
    }
}
