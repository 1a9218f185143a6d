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
    pub const ALL: Hooks = Hooks(7);

    /// Both sets: `Hooks::ON_REQUEST.and(Hooks::ON_RESPONSE)`.
    pub const fn and(self, other: Hooks) -> Hooks {
        Hooks(self.0 | other.0)
    }

    /// The bits, in the WIT's flag order (on-request, on-upstream-request, on-response).
    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn contains(self, other: Hooks) -> bool {
        self.0 & other.0 == other.0
    }
}
