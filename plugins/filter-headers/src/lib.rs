//! A Proxy-Wasm HTTP filter written against the `proxy-wasm` SDK crate, as a filter for Envoy
//! would be: nothing in it knows Gatehouse.
//!
//! Configuration (JSON):
//!
//! - `add`: `[name, value]`, a request header to set;
//! - `remove`: a request header to remove;
//! - `deny`: a request header whose presence is answered `403` by the filter itself;
//! - `echo`: a response header that gets the request's `:path` and method (state kept in the
//!   request's context from the request to the response); such a request's end is logged with
//!   the response's status.
//!
//! Its VM configuration, when there is one, goes on every response as `x-filter-vm`.
//!
//! A configuration that is not such JSON is refused (`proxy_on_configure` returns false).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use std::rc::Rc;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    add: Option<(String, String)>,
    remove: Option<String>,
    deny: Option<String>,
    echo: Option<String>,
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: Rc::new(Config::default()), vm: Rc::default() })
    });
}}

struct Root {
    config: Rc<Config>,
    /// The VM configuration, as text.
    vm: Rc<String>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let bytes = self.get_vm_configuration().unwrap_or_default();
        self.vm = Rc::new(String::from_utf8_lossy(&bytes).into_owned());
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                self.config = Rc::new(config);
                true
            }
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Warn, &format!("configuration refused: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            context_id,
            config: self.config.clone(),
            vm: self.vm.clone(),
            seen: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    context_id: u32,
    config: Rc<Config>,
    vm: Rc<String>,
    /// `:path` and method, from the request headers.
    seen: Option<(String, String)>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(deny) = &self.config.deny {
            if self.get_http_request_header(deny).is_some() {
                self.send_http_response(
                    403,
                    vec![("x-denied-by", "filter-headers")],
                    Some(b"denied by filter-headers\n"),
                );
                return Action::Pause;
            }
        }
        if let Some((name, value)) = &self.config.add {
            self.set_http_request_header(name, Some(value));
        }
        if let Some(name) = &self.config.remove {
            self.set_http_request_header(name, None);
        }
        if self.config.echo.is_some() {
            let path = self.get_http_request_header(":path").unwrap_or_default();
            let method = self
                .get_property(vec!["request", "method"])
                .map(|m| String::from_utf8_lossy(&m).into_owned())
                .unwrap_or_default();
            self.seen = Some((path, method));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if !self.vm.is_empty() {
            self.set_http_response_header("x-filter-vm", Some(&self.vm));
        }
        if let (Some(name), Some((path, method))) = (&self.config.echo, &self.seen) {
            self.set_http_response_header(name, Some(&format!("{method} {path}")));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.seen.is_none() {
            return;
        }
        let status = self.get_http_response_header(":status").unwrap_or_default();
        let line = format!("context {} answered {status}", self.context_id);
        let _ = hostcalls::log(LogLevel::Info, &line);
    }
}
