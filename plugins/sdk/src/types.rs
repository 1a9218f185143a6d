//! Values exchanged with the gateway, independent of the generated bindings.

use serde::Serialize;

/// What [`Plugin::on_request`](crate::Plugin::on_request) decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Go on: the next plugin runs, then the request goes upstream.
    Proceed,
    /// Answer the client now; later plugins and the upstream are skipped.
    Respond(Reply),
}

impl From<Reply> for Action {
    fn from(reply: Reply) -> Self {
        Action::Respond(reply)
    }
}

/// Where a request was steered ([`Request::steer_to_tag`](crate::Request::steer_to_tag),
/// [`Request::steer_to_node`](crate::Request::steer_to_node)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steer {
    /// The upstream's nodes with this tag.
    Tag(String),
    /// One node: `host:port` as configured, or the `ip:port` it connects to.
    Node(String),
}

/// What happens when none of the nodes a request was steered to can take it (all taken out by
/// health checks, drained, or already tried by this request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Use the upstream's other nodes, as if the request had not been steered.
    AnyNode,
    /// Answer 503 (`no_steered_node`) rather than use another node.
    Fail,
}

/// An answer a plugin gives instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// A reply with `status`, no header and an empty body.
    pub fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A JSON reply: `body` with `content-type: application/json`.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply::new(status)
            .header("content-type", "application/json")
            .body(body)
    }

    /// The gateway's error shape: `{"status":403,"error":"forbidden","message":"..."}`.
    pub fn error(status: u16, error: &str, message: &str) -> Self {
        #[derive(Serialize)]
        struct Body<'a> {
            status: u16,
            error: &'a str,
            message: &'a str,
        }
        let body = serde_json::to_vec(&Body {
            status,
            error,
            message,
        })
        .expect("serializing strings and a number cannot fail");
        Reply::json(status, body)
    }

    /// The value of the first header named `name` (case-insensitive).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The node chosen for one upstream attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Name of the upstream.
    pub upstream: String,
    /// The node as configured: an IP address or a DNS name.
    pub host: String,
    pub port: u16,
    /// The socket address actually connected to, `ip:port`.
    pub address: String,
}

/// Severity of a message written with [`log`](crate::log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_has_the_gateway_shape() {
        let reply = Reply::error(401, "unauthorized", "bad \"key\"");
        assert_eq!(reply.status, 401);
        assert_eq!(reply.header_value("Content-Type"), Some("application/json"));
        assert_eq!(
            String::from_utf8(reply.body).unwrap(),
            r#"{"status":401,"error":"unauthorized","message":"bad \"key\""}"#
        );
    }
}

/// The hooks a plugin implements ([`crate::Plugin::HOOKS`]); the gateway calls only these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks(u8);

impl Hooks {
    pub const ON_REQUEST: Hooks = Hooks(1);
    pub const ON_UPSTREAM_REQUEST: Hooks = Hooks(2);
    pub const ON_RESPONSE: Hooks = Hooks(4);
    /// Called with the whole response body; [`Needs::response_body`] declares it.
    pub const ON_RESPONSE_BODY: Hooks = Hooks(8);
    /// The three header hooks (`on-request`, `on-upstream-request`, `on-response`).
    pub const ALL: Hooks = Hooks(7);
    pub const NONE: Hooks = Hooks(0);

    /// Both sets: `Hooks::ON_REQUEST.and(Hooks::ON_RESPONSE)`.
    pub const fn and(self, other: Hooks) -> Hooks {
        Hooks(self.0 | other.0)
    }

    /// The bits, in the WIT's flag order (on-request, on-upstream-request, on-response,
    /// on-response-body).
    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn contains(self, other: Hooks) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Headers of one message a plugin reads or writes: lower-case names, prefixes ending in `*`
/// (`x-tenant-*`), or `*` for every header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderNeeds {
    pub read: Vec<String>,
    pub write: Vec<String>,
}

/// What a plugin needs ([`crate::Plugin::needs`]): the gateway refuses the configuration, listing
/// what is missing, when the operator did not grant all of it. Build with [`Needs::new`] and the
/// builder methods:
///
/// ```
/// use gatehouse_plugin_sdk::{Hooks, Needs};
/// let needs = Needs::new(Hooks::ON_REQUEST)
///     .read_request_header("authorization")
///     .write_request_header("x-user-*");
/// assert_eq!(needs.request_headers.write, ["x-user-*"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    pub hooks: Hooks,
    pub request_headers: HeaderNeeds,
    pub response_headers: HeaderNeeds,
    pub request_body: bool,
    pub response_body: bool,
    /// Choosing the nodes that may serve a request and its retries
    /// ([`Request::steer_to_tag`](crate::Request::steer_to_tag) and the like).
    pub node_steering: bool,
    /// Counters shared by the instances of the plugin use ([`crate::counters`]).
    pub counters: bool,
}

impl Needs {
    /// `hooks`, and nothing else: no header, no body.
    pub fn new(hooks: Hooks) -> Self {
        Needs {
            hooks,
            request_headers: HeaderNeeds::default(),
            response_headers: HeaderNeeds::default(),
            request_body: false,
            response_body: false,
            node_steering: false,
            counters: false,
        }
    }

    /// `hooks` and every header of both messages, read and write: what a plugin that does not
    /// say more needs (an operator must grant it `*`).
    pub fn every_header(hooks: Hooks) -> Self {
        let all = || HeaderNeeds {
            read: vec!["*".to_string()],
            write: vec!["*".to_string()],
        };
        Needs {
            request_headers: all(),
            response_headers: all(),
            ..Needs::new(hooks)
        }
    }

    /// Reads a request header (a name in lower case, a prefix ending in `*`, or `*`).
    pub fn read_request_header(mut self, name: impl Into<String>) -> Self {
        self.request_headers.read.push(name.into());
        self
    }

    /// Writes (sets, appends, removes) a request header.
    pub fn write_request_header(mut self, name: impl Into<String>) -> Self {
        self.request_headers.write.push(name.into());
        self
    }

    /// Reads a response header.
    pub fn read_response_header(mut self, name: impl Into<String>) -> Self {
        self.response_headers.read.push(name.into());
        self
    }

    /// Writes a response header.
    pub fn write_response_header(mut self, name: impl Into<String>) -> Self {
        self.response_headers.write.push(name.into());
        self
    }

    /// Reads (and may replace) the whole request body in `on_request`.
    pub fn request_body(mut self) -> Self {
        self.request_body = true;
        self
    }

    /// Reads (and may replace) the whole response body in `on_response_body`.
    pub fn response_body(mut self) -> Self {
        self.response_body = true;
        self.hooks = self.hooks.and(Hooks::ON_RESPONSE_BODY);
        self
    }

    /// Chooses the nodes that may serve a request, and its retries.
    pub fn node_steering(mut self) -> Self {
        self.node_steering = true;
        self
    }

    /// Uses counters shared by the instances of the plugin use.
    pub fn counters(mut self) -> Self {
        self.counters = true;
        self
    }
}
