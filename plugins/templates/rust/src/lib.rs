//! A Gatehouse plugin: lets through only the tenants its configuration lists, read from a request
//! header, answers the others 403, and tells the client which tenant it served. Change it to do
//! what yours should; `gatehouse plugin build` tests and builds it.

use gatehouse_plugin_sdk::{
    config_header_name, export_plugin, log, parse_config, Action, Hooks, Needs, Plugin, Reply,
    Request, Response,
};
use serde::Deserialize;

/// The configuration, given as `config:` where the gateway configuration uses the plugin.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Guard {
    /// Tenants let through.
    allow: Vec<String>,
    /// The request header that names the tenant.
    #[serde(default = "default_header")]
    header: String,
}

fn default_header() -> String {
    "x-tenant".to_string()
}

/// The response header that names the tenant served.
const SERVED_FOR: &str = "x-served-for";

impl Plugin for Guard {
    const HOOKS: Hooks = Hooks::ON_REQUEST.and(Hooks::ON_RESPONSE);

    fn configure(config: &str) -> Result<Self, String> {
        let mut guard: Guard = parse_config(config)?;
        guard.header = config_header_name("header", &guard.header)?;
        if guard.allow.is_empty() {
            return Err("`allow` must list at least one tenant".to_string());
        }
        Ok(guard)
    }

    /// What the operator grants this plugin use: one request header read, one response header
    /// written.
    fn needs(&self) -> Needs {
        Needs::new(Self::HOOKS)
            .read_request_header(&self.header)
            .write_response_header(SERVED_FOR)
    }

    fn on_request(&self, req: &Request) -> Result<Action, String> {
        match req.header(&self.header) {
            Some(tenant) if self.allow.contains(&tenant) => Ok(Action::Proceed),
            Some(tenant) => {
                log::debug(&format!("refused tenant {tenant:?}"));
                Ok(Reply::error(403, "forbidden", "this tenant may not use this API").into())
            }
            None => Ok(Reply::error(401, "unauthorized", "name your tenant").into()),
        }
    }

    fn on_response(&self, req: &Request, resp: &Response) -> Result<(), String> {
        if let Some(tenant) = req.header(&self.header) {
            resp.set_header(SERVED_FOR, &tenant)?;
        }
        Ok(())
    }
}

export_plugin!(Guard);

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::configure(r#"{"allow": ["acme"]}"#).unwrap()
    }

    #[test]
    fn lets_listed_tenants_through_and_names_them_in_the_response() {
        let req = Request::new("GET", "/hello").with_header("X-Tenant", "acme");
        assert_eq!(guard().on_request(&req).unwrap(), Action::Proceed);
        let resp = Response::new(200);
        req.freeze();
        guard().on_response(&req, &resp).unwrap();
        assert_eq!(resp.header(SERVED_FOR).as_deref(), Some("acme"));
    }

    #[test]
    fn refuses_other_tenants_and_requests_without_one() {
        let other = Request::new("GET", "/hello").with_header("x-tenant", "globex");
        assert!(
            matches!(guard().on_request(&other).unwrap(), Action::Respond(r) if r.status == 403)
        );
        let none = Request::new("GET", "/hello");
        assert!(
            matches!(guard().on_request(&none).unwrap(), Action::Respond(r) if r.status == 401)
        );
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let err = Guard::configure(r#"{"allow": "acme"}"#).err().unwrap();
        assert!(err.contains("`allow`"), "{err}");
        assert!(Guard::configure(r#"{"allow": []}"#).is_err());
        assert!(Guard::configure(r#"{"allow": ["acme"], "header": "bad header"}"#).is_err());
    }
}
