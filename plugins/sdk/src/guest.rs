//! The `wasm32` side: generated bindings, thin wrappers over the gateway's resources, host
//! imports and the state behind [`export_plugin!`](crate::export_plugin).

use std::cell::UnsafeCell;
use std::sync::Once;

use crate::{Action, Fallback, LogLevel, Needs, Node, Plugin};

/// Bindings for `wit/plugin.wit`, the one copy of the contract.
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "gatehouse_plugin_sdk::__private::bindings",
    });
}

use bindings::gatehouse::plugin::{counters, host, http, steering, types as wit};

fn fallback(f: Fallback) -> steering::Fallback {
    match f {
        Fallback::AnyNode => steering::Fallback::AnyNode,
        Fallback::Fail => steering::Fallback::Fail,
    }
}

/// The exported `action` variant, as the bindings spell it.
pub type ActionRecord = wit::Action;
/// The exported `needs` record, as the bindings spell it.
pub type NeedsRecord = wit::Needs;
/// The exported `info` record, as the bindings spell it.
pub type InfoRecord = wit::Info;

/// A request handed to a hook; see `wit/plugin.wit` for what each hook may change.
#[repr(transparent)]
pub struct Request(http::Request);

/// The response going to the client.
#[repr(transparent)]
pub struct Response(http::Response);

impl Request {
    fn wrap(handle: &http::Request) -> &Request {
        // SAFETY: `Request` is a `repr(transparent)` wrapper of `http::Request`.
        unsafe { &*(handle as *const http::Request as *const Request) }
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> String {
        self.0.method()
    }

    /// Lets only the upstream's nodes tagged `tag` serve this request (`on-request`, needs
    /// `node_steering`); `fallback` says what happens when none of them can.
    pub fn steer_to_tag(&self, tag: &str, fallback: Fallback) -> Result<(), String> {
        steering::to_tag(&self.0, tag, self::fallback(fallback))
    }

    /// Lets only one node serve this request: `host:port` as configured, or the `ip:port` it
    /// connects to (`on-request`, needs `node_steering`).
    pub fn steer_to_node(&self, address: &str, fallback: Fallback) -> Result<(), String> {
        steering::to_node(&self.0, address, self::fallback(fallback))
    }

    /// Retries this request at most `retries` times (0: never), if below the upstream's count
    /// (`on-request`, needs `node_steering`).
    pub fn limit_retries(&self, retries: u32) -> Result<(), String> {
        steering::limit_retries(&self.0, retries)
    }

    /// The path, without the query.
    pub fn path(&self) -> String {
        self.0.path()
    }

    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<String> {
        self.0.query()
    }

    /// The first value of a header (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.0.header(name)
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.0.header_all(name)
    }

    /// Every header the plugin may read, names in lower case.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.0.headers()
    }

    /// The whole request body, in `on_request` of a plugin that declared
    /// [`Needs::request_body`]; an error anywhere else.
    pub fn body(&self) -> Result<Vec<u8>, String> {
        self.0.body()
    }

    /// Replaces the body sent upstream (the gateway sets its length), in `on_request` of a
    /// plugin that declared [`Needs::request_body`].
    pub fn set_body(&self, body: &[u8]) -> Result<(), String> {
        self.0.set_body(body)
    }

    /// The client's IP address.
    pub fn client_addr(&self) -> String {
        self.0.client_addr()
    }

    /// The service this request was routed to.
    pub fn service(&self) -> String {
        self.0.service()
    }

    /// The API this request was routed to.
    pub fn api(&self) -> String {
        self.0.api()
    }

    /// Replaces the path sent upstream (must start with `/`).
    pub fn set_path(&self, path: &str) -> Result<(), String> {
        self.0.set_path(path)
    }

    /// Replaces the query sent upstream; `None` removes it.
    pub fn set_query(&self, query: Option<&str>) -> Result<(), String> {
        self.0.set_query(query)
    }

    /// Sets a header, replacing every value it had.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.0.set_header(name, value)
    }

    /// Adds a value to a header.
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.0.append_header(name, value)
    }

    /// Removes every value of a header.
    pub fn remove_header(&self, name: &str) -> Result<(), String> {
        self.0.remove_header(name)
    }
}

impl Response {
    fn wrap(handle: &http::Response) -> &Response {
        // SAFETY: `Response` is a `repr(transparent)` wrapper of `http::Response`.
        unsafe { &*(handle as *const http::Response as *const Response) }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.0.status()
    }

    /// The first value of a header (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.0.header(name)
    }

    /// Every header, names in lower case.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.0.headers()
    }

    /// Sets a header, replacing every value it had.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.0.set_header(name, value)
    }

    /// Adds a value to a header.
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.0.append_header(name, value)
    }

    /// Removes every value of a header.
    pub fn remove_header(&self, name: &str) -> Result<(), String> {
        self.0.remove_header(name)
    }
}

pub(crate) fn log(level: LogLevel, message: &str) {
    let level = match level {
        LogLevel::Trace => wit::LogLevel::Trace,
        LogLevel::Debug => wit::LogLevel::Debug,
        LogLevel::Info => wit::LogLevel::Info,
        LogLevel::Warn => wit::LogLevel::Warn,
        LogLevel::Error => wit::LogLevel::Error,
    };
    host::log(level, message);
}

pub(crate) fn now_millis() -> u64 {
    host::now_millis()
}

fn window(w: counters::Window) -> crate::counters::Window {
    crate::counters::Window {
        count: w.count,
        resets_in_ms: w.resets_in_ms,
    }
}

pub(crate) fn counter_increment(
    key: &str,
    delta: u64,
    window_ms: u64,
) -> Result<crate::counters::Window, String> {
    counters::increment(key, delta, window_ms).map(window)
}

pub(crate) fn counter_get(key: &str, window_ms: u64) -> Result<crate::counters::Window, String> {
    counters::get(key, window_ms).map(window)
}

pub(crate) fn random() -> u64 {
    host::random()
}

impl From<Action> for wit::Action {
    fn from(action: Action) -> Self {
        match action {
            Action::Proceed => wit::Action::Proceed,
            Action::Respond(reply) => wit::Action::Respond(wit::Reply {
                status: reply.status,
                headers: reply.headers,
                body: reply.body,
            }),
        }
    }
}

/// Sends panic messages to the gateway's log; the instance then traps.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            log(LogLevel::Error, &format!("plugin {info}"))
        }));
    });
}

/// The configured plugin of this instance.
///
/// A component instance is single-threaded and the component model forbids re-entering it, so
/// no reference handed out by a hook is alive when `configure` replaces the value.
pub struct Slot<P>(UnsafeCell<Option<P>>);

// SAFETY: wasm32 without the `atomics` feature (checked in lib.rs) has a single thread.
unsafe impl<P> Sync for Slot<P> {}

impl<P: Plugin> Slot<P> {
    pub const fn new() -> Self {
        Slot(UnsafeCell::new(None))
    }

    fn plugin(&self) -> Result<&P, String> {
        // SAFETY: see the type's documentation.
        unsafe { (*self.0.get()).as_ref() }.ok_or_else(|| "plugin is not configured".to_string())
    }

    pub fn describe(&self) -> wit::Info {
        wit::Info {
            secret_keys: P::SECRET_KEYS.iter().map(|k| k.to_string()).collect(),
        }
    }

    pub fn configure(&self, config: String) -> Result<wit::Needs, String> {
        install_panic_hook();
        // SAFETY: see the type's documentation.
        let slot = unsafe { &mut *self.0.get() };
        *slot = None;
        let plugin = P::configure(&config)?;
        let needs = plugin.needs();
        *slot = Some(plugin);
        Ok(needs_record(needs))
    }

    pub fn on_request(&self, req: &http::Request) -> Result<wit::Action, String> {
        self.plugin()?
            .on_request(Request::wrap(req))
            .map(Into::into)
    }

    pub fn on_upstream_request(&self, req: &http::Request, node: wit::Node) -> Result<(), String> {
        let node = Node {
            upstream: node.upstream,
            host: node.host,
            port: node.port,
            address: node.address,
        };
        self.plugin()?
            .on_upstream_request(Request::wrap(req), &node)
    }

    pub fn on_response(&self, req: &http::Request, resp: &http::Response) -> Result<(), String> {
        self.plugin()?
            .on_response(Request::wrap(req), Response::wrap(resp))
    }

    pub fn on_response_body(
        &self,
        req: &http::Request,
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, String> {
        self.plugin()?
            .on_response_body(Request::wrap(req), status, &headers, &body)
    }
}

fn needs_record(needs: Needs) -> wit::Needs {
    let headers = |h: crate::HeaderNeeds| wit::HeaderAccess {
        read: h.read,
        write: h.write,
    };
    // Bits in the WIT's flag order: on-request, on-upstream-request, on-response,
    // on-response-body.
    wit::Needs {
        hooks: wit::Hooks::from_bits_retain(needs.hooks.bits()),
        request_headers: headers(needs.request_headers),
        response_headers: headers(needs.response_headers),
        request_body: needs.request_body,
        response_body: needs.response_body,
        node_steering: needs.node_steering,
        counters: needs.counters,
    }
}
