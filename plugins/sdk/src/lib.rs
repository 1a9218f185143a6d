//! Write a Gatehouse plugin as a Rust trait.
//!
//! A plugin is a WebAssembly component that implements the `gatehouse:plugin` world
//! (`wit/plugin.wit`). This crate hides the generated bindings: implement [`Plugin`] (every hook
//! but [`Plugin::configure`] has a no-op default) and export the type with [`export_plugin!`].
//!
//! ```no_run
//! use gatehouse_plugin_sdk::{export_plugin, parse_config, Action, Plugin, Request};
//!
//! #[derive(serde::Deserialize)]
//! struct Greeting {
//!     text: String,
//! }
//!
//! impl Plugin for Greeting {
//!     fn configure(config: &str) -> Result<Self, String> {
//!         parse_config(config)
//!     }
//!
//!     fn on_request(&self, req: &Request) -> Result<Action, String> {
//!         req.set_header("x-greeting", &self.text)?;
//!         Ok(Action::Proceed)
//!     }
//! }
//!
//! export_plugin!(Greeting);
//! ```
//!
//! On `wasm32` targets [`Request`] and [`Response`] call the gateway. On every other target they
//! are in-memory test doubles (with builder methods such as [`Request::new`]) and the host
//! functions ([`log`], [`now_millis`], [`random`]) are local stand-ins, so the same plugin code
//! runs under a plain `cargo test`.

#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
compile_error!("Gatehouse plugins are single-threaded: build without the `atomics` target feature");

mod config;
pub mod counters;
pub mod log;
mod types;

#[cfg(not(target_arch = "wasm32"))]
mod double;
#[cfg(target_arch = "wasm32")]
mod guest;

pub use config::{config_header_name, parse_config};
#[cfg(not(target_arch = "wasm32"))]
pub use double::{Request, Response};
#[cfg(target_arch = "wasm32")]
pub use guest::{Request, Response};
pub use types::{Action, Fallback, HeaderNeeds, Hooks, LogLevel, Needs, Node, Reply, Steer};

/// A Gatehouse plugin. One value is built per plugin instance by [`Plugin::configure`] and then
/// serves every hook call of that instance.
pub trait Plugin: Sized + 'static {
    /// The hooks this plugin implements. The gateway calls only these, so a plugin that declares
    /// just the hooks it overrides costs less per request; the default is the three header hooks
    /// ([`Needs::response_body`] adds `on-response-body`).
    const HOOKS: Hooks = Hooks::ALL;

    /// Keys of the plugin's configuration that hold secrets (dotted for nested keys:
    /// `auth.password`): the gateway never shows or logs their values.
    const SECRET_KEYS: &'static [&'static str] = &[];

    /// Builds the plugin from its `config` (JSON text, `{}` when the gateway configuration has
    /// none). An error refuses the configuration; `gatehouse validate` shows its message.
    fn configure(config: &str) -> Result<Self, String>;

    /// What this configured plugin needs: its hooks, the headers it reads and writes, the
    /// bodies. The operator grants each plugin use what it may touch, and the gateway refuses
    /// a plugin that needs more, listing what is missing; at run time, headers it was not
    /// granted to read are not there for it, and changing one it may not write fails the call.
    /// The default is [`Self::HOOKS`] and every header ([`Needs::every_header`]): declare less
    /// so that operators can grant less.
    fn needs(&self) -> Needs {
        Needs::every_header(Self::HOOKS)
    }

    /// Runs for each request routed to the API, before a node is chosen. Changes made to `req`
    /// go upstream; [`Action::Respond`] answers the client without calling the upstream.
    fn on_request(&self, req: &Request) -> Result<Action, String> {
        let _ = req;
        Ok(Action::Proceed)
    }

    /// Runs for each upstream attempt (again on a retry) with the request for that attempt.
    fn on_upstream_request(&self, req: &Request, node: &Node) -> Result<(), String> {
        let _ = (req, node);
        Ok(())
    }

    /// Runs when the response header is ready to go to the client. `req` is the client's request
    /// (with the changes made in `on_request`), read-only: its setters return an error.
    fn on_response(&self, req: &Request, resp: &Response) -> Result<(), String> {
        let _ = (req, resp);
        Ok(())
    }

    /// Runs once the whole response body has arrived, for a plugin that declared
    /// [`Needs::response_body`]. The status and `headers` (those the plugin may read) have gone
    /// to the client: only the body can change. Returns the body to send instead, or `None` to
    /// send it unchanged.
    fn on_response_body(
        &self,
        req: &Request,
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, String> {
        let _ = (req, status, headers, body);
        Ok(None)
    }
}

/// Wall-clock time from the gateway, in milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return guest::now_millis();
    #[cfg(not(target_arch = "wasm32"))]
    return double::now_millis();
}

/// 64 random bits from the gateway's generator (not for cryptographic keys).
pub fn random() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return guest::random();
    #[cfg(not(target_arch = "wasm32"))]
    return double::random();
}

/// Exports a [`Plugin`] type as the component's implementation of the `gatehouse:plugin` world.
///
/// Use it once, in the plugin crate's root: `gatehouse_plugin_sdk::export_plugin!(MyPlugin);`.
/// The configured value lives in a static of the (single-threaded) component; a hook called
/// before a successful `configure` returns an error, and a panic is written to the gateway's log
/// before the instance traps. On targets other than `wasm32` the macro only checks that the type
/// implements [`Plugin`].
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static SLOT: $crate::__private::Slot<$plugin> = $crate::__private::Slot::new();

            struct GatehouseExports;

            impl $crate::__private::Guest for GatehouseExports {
                fn describe() -> $crate::__private::InfoRecord {
                    SLOT.describe()
                }

                fn configure(
                    config: $crate::__private::String,
                ) -> $crate::__private::HookResult<$crate::__private::NeedsRecord> {
                    SLOT.configure(config)
                }

                fn on_request(
                    req: &$crate::__private::RequestHandle,
                ) -> $crate::__private::HookResult<$crate::__private::ActionRecord> {
                    SLOT.on_request(req)
                }

                fn on_upstream_request(
                    req: &$crate::__private::RequestHandle,
                    node: $crate::__private::NodeRecord,
                ) -> $crate::__private::HookResult<()> {
                    SLOT.on_upstream_request(req, node)
                }

                fn on_response(
                    req: &$crate::__private::RequestHandle,
                    resp: &$crate::__private::ResponseHandle,
                ) -> $crate::__private::HookResult<()> {
                    SLOT.on_response(req, resp)
                }

                fn on_response_body(
                    req: &$crate::__private::RequestHandle,
                    status: u16,
                    headers: $crate::__private::Vec<(
                        $crate::__private::String,
                        $crate::__private::String,
                    )>,
                    body: $crate::__private::Vec<u8>,
                ) -> $crate::__private::HookResult<
                    $crate::__private::Option<$crate::__private::Vec<u8>>,
                > {
                    SLOT.on_response_body(req, status, headers, body)
                }
            }

            $crate::__private::export! {
                GatehouseExports with_types_in $crate::__private::bindings
            }
        };

        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn assert_plugin<P: $crate::Plugin>() {}
            let _ = assert_plugin::<$plugin>;
        };
    };
}

/// Support for [`export_plugin!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::guest::{
        bindings, bindings::export, bindings::Guest, bindings::Node as NodeRecord,
        bindings::Request as RequestHandle, bindings::Response as ResponseHandle, ActionRecord,
        InfoRecord, NeedsRecord, Slot,
    };
    pub use std::option::Option;
    pub use std::string::String;
    pub use std::vec::Vec;

    /// What every exported hook returns.
    pub type HookResult<T> = Result<T, String>;
}
