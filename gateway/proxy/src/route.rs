//! Request routing: method + path to an API, in time that does not grow with the number of APIs.
//!
//! Paths are matched by a radix tree (`matchit`): a static segment beats a `{param}`, which beats a
//! `{*wildcard}`, so the most specific pattern wins. APIs whose patterns differ only in parameter
//! names share one route and are told apart by method. A path that matches no route is a 404; a
//! route without the request's method is a 405 with an `Allow` header.

use std::collections::HashMap;

use gatehouse_config::{Config, PathTemplate};
use http::Method;

/// Index of an API in the runtime's flat API list.
pub type ApiId = usize;

/// The result of routing one request.
pub enum RouteMatch<'r, 'p> {
    Found {
        api: ApiId,
        params: Params<'r, 'p>,
    },
    /// The path exists, but not for this method; `allow` lists the methods that do.
    MethodNotAllowed {
        allow: &'r str,
    },
    NotFound,
}

/// Parameter values of a match, in pattern order (a wildcard matched empty is absent).
pub struct Params<'r, 'p>(matchit::Params<'r, 'p>);

impl Params<'_, '_> {
    /// The value of the `index`th parameter; empty when absent.
    pub fn get(&self, index: usize) -> &str {
        self.0.iter().nth(index).map_or("", |(_, v)| v)
    }

    /// Fills `template` with these values into `out` (see [`PathTemplate::render_into`]).
    pub fn render(&self, template: &PathTemplate, out: &mut String) {
        template.render_into(|i| self.get(i), out);
    }
}

struct Route {
    /// (method, API) pairs in declaration order.
    methods: Vec<(Method, ApiId)>,
    /// The API that accepts every method, if any.
    any: Option<ApiId>,
    allow: String,
}

impl Route {
    fn lookup(&self, method: &Method) -> Option<ApiId> {
        self.methods
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, api)| *api)
            .or_else(|| self.any.filter(|_| is_default_method(method)))
    }
}

/// Whether an API without `methods` accepts `method`.
fn is_default_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::DELETE
            | Method::PATCH
            | Method::OPTIONS
    )
}

/// The routing table of one configuration.
pub struct Router {
    tree: matchit::Router<usize>,
    routes: Vec<Route>,
}

impl Router {
    /// Builds the table from a validated configuration; API ids follow the order of
    /// `services[*].apis[*]`.
    pub fn build(config: &Config) -> Self {
        let mut tree = matchit::Router::new();
        let mut routes: Vec<Route> = Vec::new();
        let mut shapes: HashMap<String, usize> = HashMap::new();
        let apis = config
            .services
            .iter()
            .flat_map(|s| s.apis.iter())
            .enumerate();
        let mut prefixes = Vec::new();
        for (id, api) in apis {
            // Validation guarantees every API shape inserts; a failure is logged and loses the route.
            let shape = api.path.route_shape();
            if let Some(index) = route_for(&shape, &mut tree, &mut routes, &mut shapes) {
                add_api(&mut routes[index], api, id, false);
            }
            if let Some(prefix) = api.path.wildcard_prefix_shape() {
                prefixes.push((prefix, api, id));
            }
        }
        // A wildcard also matches its bare prefix (`/static/` for `/static/{*rest}`), after the
        // explicit routes, which keep precedence.
        for (prefix, api, id) in prefixes {
            if let Some(index) = route_for(&prefix, &mut tree, &mut routes, &mut shapes) {
                add_api(&mut routes[index], api, id, true);
            }
        }
        for route in &mut routes {
            let mut allow: Vec<&str> = Vec::new();
            if route.any.is_some() {
                allow.extend(gatehouse_config::validate::DEFAULT_METHODS);
            }
            for (m, _) in &route.methods {
                if !allow.contains(&m.as_str()) {
                    allow.push(m.as_str());
                }
            }
            route.allow = allow.join(", ");
        }
        Self { tree, routes }
    }

    /// Routes one request.
    pub fn lookup<'r, 'p>(&'r self, method: &Method, path: &'p str) -> RouteMatch<'r, 'p> {
        let Ok(found) = self.tree.at(path) else {
            return RouteMatch::NotFound;
        };
        let route = &self.routes[*found.value];
        match route.lookup(method) {
            Some(api) => RouteMatch::Found {
                api,
                params: Params(found.params),
            },
            None => RouteMatch::MethodNotAllowed {
                allow: &route.allow,
            },
        }
    }
}

/// The route of `shape`, created and inserted into the tree on first use.
fn route_for(
    shape: &str,
    tree: &mut matchit::Router<usize>,
    routes: &mut Vec<Route>,
    shapes: &mut HashMap<String, usize>,
) -> Option<usize> {
    if let Some(index) = shapes.get(shape) {
        return Some(*index);
    }
    let index = routes.len();
    if let Err(e) = tree.insert(shape, index) {
        log::debug!("route {shape} not inserted: {e}");
        return None;
    }
    routes.push(Route {
        methods: Vec::new(),
        any: None,
        allow: String::new(),
    });
    shapes.insert(shape.to_owned(), index);
    Some(index)
}

/// Adds an API's methods to a route; a fallback (wildcard prefix) never displaces an explicit API.
fn add_api(route: &mut Route, api: &gatehouse_config::Api, id: ApiId, fallback: bool) {
    if fallback && route.any.is_some() {
        return;
    }
    if api.methods.is_empty() && route.any.is_none() {
        route.any = Some(id);
    }
    for m in api.methods.iter().chain(&api.extension_methods) {
        let Ok(method) = Method::from_bytes(m.as_bytes()) else {
            continue;
        };
        if !route
            .methods
            .iter()
            .any(|(existing, _)| *existing == method)
        {
            route.methods.push((method, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(apis: &str) -> Config {
        let text = format!(
            r#"
instance: {{ id: t, type: dedicated, vpc: v, listen: ["127.0.0.1:1"] }}
vpcs: [{{ id: v, cidrs: ["127.0.0.0/8"] }}]
upstreams:
  - {{ name: u, vpc: v, protocol: http, nodes: [{{ host: 127.0.0.1, port: 9 }}] }}
services:
  - name: s
    apis:
{apis}"#
        );
        gatehouse_config::parse(&text, "test", Path::new("/")).unwrap()
    }

    fn api_of(router: &Router, method: Method, path: &str) -> Option<ApiId> {
        match router.lookup(&method, path) {
            RouteMatch::Found { api, .. } => Some(api),
            _ => None,
        }
    }

    const APIS: &str = r#"
      - { name: by_id, path: "/users/{id}", methods: [GET], backend: { upstream: u } }
      - { name: me, path: "/users/me", methods: [GET], backend: { upstream: u } }
      - { name: update, path: "/users/{uid}", methods: [PUT], backend: { upstream: u } }
      - { name: files, path: "/files/{*rest}", backend: { upstream: u } }
      - { name: root, path: "/", methods: [GET], backend: { upstream: u } }
"#;

    #[test]
    fn most_specific_pattern_wins() {
        let r = Router::build(&config(APIS));
        assert_eq!(
            api_of(&r, Method::GET, "/users/me"),
            Some(1),
            "static beats param"
        );
        assert_eq!(api_of(&r, Method::GET, "/users/42"), Some(0));
        assert_eq!(api_of(&r, Method::GET, "/"), Some(4));
    }

    #[test]
    fn same_shape_is_split_by_method() {
        let r = Router::build(&config(APIS));
        assert_eq!(api_of(&r, Method::PUT, "/users/42"), Some(2));
        match r.lookup(&Method::DELETE, "/users/42") {
            RouteMatch::MethodNotAllowed { allow } => assert_eq!(allow, "GET, PUT"),
            _ => panic!("expected 405"),
        }
    }

    #[test]
    fn unknown_paths_are_not_found() {
        let r = Router::build(&config(APIS));
        assert!(matches!(
            r.lookup(&Method::GET, "/nope"),
            RouteMatch::NotFound
        ));
        assert!(matches!(
            r.lookup(&Method::GET, "/users/42/extra"),
            RouteMatch::NotFound
        ));
    }

    #[test]
    fn wildcard_matches_rest_and_bare_prefix() {
        let r = Router::build(&config(APIS));
        match r.lookup(&Method::POST, "/files/a/b.txt") {
            RouteMatch::Found { api, params } => {
                assert_eq!(api, 3);
                assert_eq!(params.get(0), "a/b.txt");
            }
            _ => panic!("wildcard should match"),
        }
        match r.lookup(&Method::GET, "/files/") {
            RouteMatch::Found { api, params } => {
                assert_eq!(api, 3);
                assert_eq!(params.get(0), "");
            }
            _ => panic!("bare prefix should match"),
        }
    }

    #[test]
    fn params_render_into_backend_path() {
        let cfg = config(
            r#"
      - { name: a, path: "/users/{id}/orders/{order}", backend: { upstream: u, path: "/v2/orders/{order}?user={id}" } }
"#,
        );
        let r = Router::build(&cfg);
        let gatehouse_config::Backend::Upstream(b) = &cfg.services[0].apis[0].backend else {
            panic!()
        };
        let RouteMatch::Found { params, .. } = r.lookup(&Method::GET, "/users/7/orders/99") else {
            panic!()
        };
        let mut out = String::new();
        params.render(b.path.as_ref().unwrap(), &mut out);
        assert_eq!(out, "/v2/orders/99?user=7");
    }

    #[test]
    fn lookup_scales_to_ten_thousand_apis() {
        let apis: String = (0..10_000)
            .map(|i| format!("      - {{ name: a{i}, path: \"/svc{i}/items/{{id}}\", methods: [GET], backend: {{ upstream: u }} }}\n"))
            .collect();
        let r = Router::build(&config(&apis));
        assert_eq!(api_of(&r, Method::GET, "/svc9999/items/1"), Some(9999));
        assert_eq!(api_of(&r, Method::GET, "/svc0/items/1"), Some(0));
    }
}
