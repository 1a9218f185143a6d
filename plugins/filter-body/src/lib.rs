//! A Proxy-Wasm HTTP filter that rewrites request and response bodies, written against the
//! `proxy-wasm` SDK crate the way the body filters for Envoy are: it drops `Content-Length` in
//! the header callbacks (the body's length changes), pauses until the body's last byte, then
//! replaces the whole body. Nothing in it knows Gatehouse.
//!
//! Configuration (JSON): `request` and `response`, each `[from, to]`: every `from` in that body
//! becomes `to`. A configuration that is not such JSON is refused.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use serde::Deserialize;
use std::rc::Rc;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    request: Option<(String, String)>,
    response: Option<(String, String)>,
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: Rc::new(Config::default()) })
    });
}}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                self.config = Rc::new(config);
                true
            }
            Err(_) => false,
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Body {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Body {
    config: Rc<Config>,
}

impl Context for Body {}

/// `body` with every `from` replaced by `to`.
fn rewrite(body: &[u8], (from, to): &(String, String)) -> Vec<u8> {
    String::from_utf8_lossy(body)
        .replace(from.as_str(), to)
        .into_bytes()
}

impl HttpContext for Body {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.config.request.is_some() {
            self.set_http_request_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let Some(rule) = &self.config.request else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, size) {
            self.set_http_request_body(0, size, &rewrite(&body, rule));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.config.response.is_some() {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let Some(rule) = &self.config.response else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_response_body(0, size) {
            self.set_http_response_body(0, size, &rewrite(&body, rule));
        }
        Action::Continue
    }
}
