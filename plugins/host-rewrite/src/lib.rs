//! `host-rewrite`: sets the `Host` header of the request going upstream.

use gatehouse_plugin_sdk::{export_plugin, parse_config, Action, Hooks, Needs, Plugin, Request};
use serde::Deserialize;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The `Host` value sent upstream, e.g. `api.internal:8443`.
    host: String,
}

/// Sets `Host` to a fixed value.
#[derive(Debug)]
pub struct HostRewrite {
    host: String,
}

impl Plugin for HostRewrite {
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn configure(config: &str) -> Result<Self, String> {
        let Config { host } = parse_config(config)?;
        check_host(&host)?;
        Ok(HostRewrite { host })
    }

    fn needs(&self) -> Needs {
        Needs::new(Self::HOOKS).write_request_header("host")
    }

    fn on_request(&self, req: &Request) -> Result<Action, String> {
        req.set_header("host", &self.host)?;
        Ok(Action::Proceed)
    }
}

export_plugin!(HostRewrite);

/// Accepts `name`, `name:port`, `ip`, `ip:port` and `[ipv6]:port`: no spaces, no scheme or path.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("`host` must not be empty".to_string());
    }
    if host.contains("://") {
        return Err(format!(
            "`host` is a host name, not a URL: {host:?} (drop the scheme)"
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._:[]".contains(c);
    if let Some(bad) = host.chars().find(|&c| !allowed(c)) {
        return Err(format!(
            "`host` {host:?} contains {bad:?}; expected a name or address with an optional port"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_host_upstream() {
        let plugin = HostRewrite::configure(r#"{"host": "api.internal:8443"}"#).unwrap();
        let req = Request::new("GET", "/").with_header("Host", "public.example");
        assert_eq!(plugin.on_request(&req).unwrap(), Action::Proceed);
        assert_eq!(req.header_all("host"), ["api.internal:8443"]);
    }

    #[test]
    fn host_is_required() {
        let err = HostRewrite::configure("{}").unwrap_err();
        assert!(err.contains("missing field `host`"), "{err}");
        let err = HostRewrite::configure(r#"{"host": ""}"#).unwrap_err();
        assert!(err.contains("must not be empty"), "{err}");
    }

    #[test]
    fn rejects_urls_and_odd_characters() {
        assert!(HostRewrite::configure(r#"{"host": "https://a.example"}"#)
            .unwrap_err()
            .contains("not a URL"));
        assert!(HostRewrite::configure(r#"{"host": "a b"}"#).is_err());
        assert!(HostRewrite::configure(r#"{"host": "a/b"}"#).is_err());
        assert!(HostRewrite::configure(r#"{"host": "[::1]:8080"}"#).is_ok());
    }

    #[test]
    fn rejects_unknown_keys() {
        let err = HostRewrite::configure(r#"{"host": "a", "hots": "b"}"#).unwrap_err();
        assert!(err.contains("unknown field `hots`"), "{err}");
    }
}
