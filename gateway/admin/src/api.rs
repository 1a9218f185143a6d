//! The admin REST API: upstreams, services and APIs as JSON resources over the [`ConfigStore`].
//!
//! Every request needs `Authorization: Bearer <token>`, but the console's files under `/ui/`
//! (see [`crate::console`]). Responses carry the configuration
//! generation as `ETag`; a write may send `If-Match: <generation>` and gets 412 when the
//! configuration changed in between. Writes answer only once the change is validated, persisted
//! and serving.

use std::sync::Arc;

use async_trait::async_trait;
use gatehouse_config::raw::{RawApi, RawConfig, RawService, RawUpstream};
use gatehouse_config::Problem;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::console;
use crate::metrics::ADMIN_METRICS;
use crate::store::{now, Applied, CommitError, ConfigStore};

/// Largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// The admin API.
pub struct AdminApp {
    store: Arc<ConfigStore>,
    token: String,
}

impl AdminApp {
    pub fn new(store: Arc<ConfigStore>, token: String) -> Self {
        // the reload counters show from the start, not from the first admin request
        once_cell::sync::Lazy::force(&ADMIN_METRICS);
        Self { store, token }
    }
}

/// An answer: status and JSON (or other) body.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    /// A JSON answer. Every secret of configuration resources in it is redacted.
    fn json(status: StatusCode, value: &Value) -> Self {
        let mut value = value.clone();
        gatehouse_config::secrets::redact_json(&mut value);
        let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
        body.push(b'\n');
        Self {
            status,
            body,
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    fn error(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Self::json(
            status,
            &json!({ "status": status.as_u16(), "error": error, "message": message.into() }),
        )
    }

    fn empty(status: StatusCode) -> Self {
        Self {
            status,
            body: Vec::new(),
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// The route of the console's files, in metrics.
const CONSOLE_ROUTE: &str = "/ui/";

/// A file of the console, public: GET (and HEAD) only; `/ui` is sent on to `/ui/`.
fn console_answer(session: &ServerSession) -> Answer {
    let req = session.req_header();
    let head = req.method == Method::HEAD;
    if req.method != Method::GET && !head {
        return Answer::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on the console's files", req.method),
        )
        .with_header("allow", "GET, HEAD".to_owned());
    }
    let path = req.uri.path();
    if path == "/ui" {
        let mut answer = Answer::empty(StatusCode::PERMANENT_REDIRECT);
        answer
            .headers
            .push(("location", console::PREFIX.to_owned()));
        return answer;
    }
    let Some(asset) = console::asset(path) else {
        return Answer::error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("the console has no file {path}"),
        );
    };
    Answer {
        status: StatusCode::OK,
        body: if head {
            Vec::new()
        } else {
            asset.body.to_vec()
        },
        content_type: asset.content_type,
        headers: vec![
            (
                "content-security-policy",
                console::CONTENT_SECURITY_POLICY.to_owned(),
            ),
            ("x-content-type-options", "nosniff".to_owned()),
            ("referrer-policy", "no-referrer".to_owned()),
            ("x-frame-options", "DENY".to_owned()),
        ],
    }
}

/// An edit that cannot be made (not found, already exists, still bound).
struct Refused(Answer);

fn not_found(what: &str, name: &str) -> Refused {
    Refused(Answer::error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{what} {name:?} does not exist"),
    ))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (route, answer) = self.handle(session).await;
        ADMIN_METRICS
            .requests
            .with_label_values(&[route, answer.status.as_str()])
            .inc();
        let mut builder = Response::builder()
            .status(answer.status)
            .header(http::header::CONTENT_TYPE, answer.content_type)
            .header(http::header::CONTENT_LENGTH, answer.body.len())
            .header(http::header::CACHE_CONTROL, "no-store");
        if route != CONSOLE_ROUTE {
            builder = builder.header(http::header::ETAG, self.store.etag());
        }
        for (name, value) in answer.headers {
            builder = builder.header(name, value);
        }
        builder.body(answer.body).unwrap_or_default()
    }
}

impl AdminApp {
    /// Routes a request; returns the route template (for metrics) and the answer.
    async fn handle(&self, session: &mut ServerSession) -> (&'static str, Answer) {
        if !self.allowed(session) {
            let answer = Answer::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this address may not use the admin API (instance.admin_allow)",
            );
            return ("forbidden", answer);
        }
        let path = session.req_header().uri.path();
        if path == "/ui" || path.starts_with(console::PREFIX) {
            return (CONSOLE_ROUTE, console_answer(session));
        }
        if !self.authorized(session) {
            let answer = Answer::error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <admin token>",
            )
            .with_header(
                "www-authenticate",
                "Bearer realm=\"gatehouse admin\"".to_owned(),
            );
            return ("unauthorized", answer);
        }
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        let query = session.req_header().uri.query().unwrap_or("").to_owned();
        let expected = if_match(session);
        let segments: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        // `dry_run` belongs to writes: reads ignore it, and an undeclared method gets 405 whatever
        // it says.
        let is_write = method != Method::GET
            && allowed_methods(&segments)
                .is_some_and(|allow| allow.split(", ").any(|m| m == method.as_str()));
        let dry_run = match dry_run(&query) {
            Ok(d) => d,
            Err(answer) if is_write => return ("bad_request", answer),
            Err(_) => false,
        };
        let write = Write {
            expected,
            dry_run,
            origin: format!("{method} {path}"),
        };
        let expected = &write;
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(answer) => return ("bad_request", answer),
        };
        let accept_json = session
            .req_header()
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
        match (method.clone(), segments.as_slice()) {
            (Method::GET, ["openapi.json"]) => (
                "/openapi.json",
                Answer {
                    status: StatusCode::OK,
                    body: crate::OPENAPI.as_bytes().to_vec(),
                    content_type: "application/json",
                    headers: Vec::new(),
                },
            ),
            (Method::GET, ["status"]) => (
                "/status",
                Answer::json(StatusCode::OK, &json!(self.store.status())),
            ),
            (Method::GET, ["fleet"]) => ("/fleet", self.fleet().await),
            (Method::GET, ["config"]) => (
                "/config",
                self.get_config(query.contains("format=json") || accept_json)
                    .await,
            ),
            (Method::POST, ["reload"]) => ("/reload", self.reload(expected).await),
            (Method::GET, ["upstreams"]) => ("/upstreams", self.list(|c| json!(c.upstreams)).await),
            (Method::POST, ["upstreams"]) => {
                ("/upstreams", self.create_upstream(expected, &body).await)
            }
            (Method::GET, ["upstreams", name]) => {
                ("/upstreams/{name}", self.get_upstream(name).await)
            }
            (Method::PUT, ["upstreams", name]) => (
                "/upstreams/{name}",
                self.put_upstream(expected, name, &body).await,
            ),
            (Method::DELETE, ["upstreams", name]) => (
                "/upstreams/{name}",
                self.delete_upstream(expected, name).await,
            ),
            (Method::GET, ["upstreams", name, "apis"]) => {
                ("/upstreams/{name}/apis", self.upstream_apis(name).await)
            }
            (Method::GET, ["upstreams", name, "health"]) => {
                ("/upstreams/{name}/health", self.upstream_health(name))
            }
            (Method::GET, ["services"]) => ("/services", self.list(|c| json!(c.services)).await),
            (Method::POST, ["services"]) => {
                ("/services", self.create_service(expected, &body).await)
            }
            (Method::GET, ["services", name]) => ("/services/{name}", self.get_service(name).await),
            (Method::PUT, ["services", name]) => (
                "/services/{name}",
                self.put_service(expected, name, &body).await,
            ),
            (Method::DELETE, ["services", name]) => (
                "/services/{name}",
                self.delete_service(expected, name).await,
            ),
            (Method::GET, ["services", name, "apis"]) => {
                ("/services/{name}/apis", self.list_apis(name).await)
            }
            (Method::POST, ["services", name, "apis"]) => (
                "/services/{name}/apis",
                self.create_api(expected, name, &body).await,
            ),
            (Method::GET, ["services", s, "apis", a]) => {
                ("/services/{name}/apis/{api}", self.get_api(s, a).await)
            }
            (Method::PUT, ["services", s, "apis", a]) => (
                "/services/{name}/apis/{api}",
                self.put_api(expected, s, a, &body).await,
            ),
            (Method::DELETE, ["services", s, "apis", a]) => (
                "/services/{name}/apis/{api}",
                self.delete_api(expected, s, a).await,
            ),
            (_, segments) => match allowed_methods(segments) {
                Some(allow) => (
                    "method_not_allowed",
                    Answer::error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        format!("{method} is not allowed on {path}; allowed: {allow}"),
                    )
                    .with_header("allow", allow.to_owned()),
                ),
                None => (
                    "unknown",
                    Answer::error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!("no admin route {method} {path}; see GET /openapi.json"),
                    ),
                ),
            },
        }
    }

    /// Whether the client's address is in `instance.admin_allow` (empty allows any).
    fn allowed(&self, session: &ServerSession) -> bool {
        let runtime = self.store.runtime().load();
        let allow = &runtime.config.instance.admin_allow;
        if allow.is_empty() {
            return true;
        }
        session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| gatehouse_config::canonical_ip(a.ip()))
            .is_some_and(|ip| allow.iter().any(|net| net.contains(&ip)))
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(value) = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
        else {
            return false;
        };
        let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        constant_time_eq(token.trim().as_bytes(), self.token.as_bytes())
    }

    async fn list(&self, pick: impl Fn(&RawConfig) -> Value) -> Answer {
        let (config, _) = self.store.read();
        Answer::json(StatusCode::OK, &pick(&config))
    }

    async fn get_config(&self, as_json: bool) -> Answer {
        let (config, _) = self.store.read();
        if as_json {
            Answer::json(StatusCode::OK, &json!(*config))
        } else {
            let mut value = json!(*config);
            gatehouse_config::secrets::redact_json(&mut value);
            Answer {
                status: StatusCode::OK,
                body: serde_yaml::to_string(&value)
                    .unwrap_or_default()
                    .into_bytes(),
                content_type: "application/yaml",
                headers: Vec::new(),
            }
        }
    }

    /// The fleet's live instances and the revision each serves.
    async fn fleet(&self) -> Answer {
        let Some(fleet) = self.store.fleet() else {
            return Answer::error(
                StatusCode::NOT_FOUND,
                "not_a_fleet",
                "this instance serves its own configuration file; instance.etcd makes it part of a fleet",
            );
        };
        match fleet.instances().await {
            Ok(mut instances) => {
                instances.sort_by(|a, b| a.id.cmp(&b.id));
                let latest = fleet.latest().revision();
                Answer::json(
                    StatusCode::OK,
                    &json!({ "revision": latest, "instances": instances }),
                )
            }
            Err(e) => Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "config_source_unavailable",
                format!("the fleet's etcd cannot be read: {e}"),
            ),
        }
    }

    async fn reload(&self, write: &Write) -> Answer {
        match self.store.reload(write.dry_run, &write.origin).await {
            Ok(applied) if write.dry_run => dry_run_answer(&applied.diff),
            Ok(applied) => Answer::json(
                StatusCode::OK,
                &json!({ "generation": applied.generation, "changes": applied.diff }),
            ),
            Err(e) => commit_error(e),
        }
    }

    /// Runs an edit through the store and answers `ok` with the edit's value.
    async fn change<T: serde::Serialize>(
        &self,
        write: &Write,
        ok: StatusCode,
        edit: impl FnMut(&mut RawConfig) -> Result<(T, StatusCode), Refused>,
    ) -> Answer {
        match self
            .store
            .change(
                write.expected.as_deref(),
                write.dry_run,
                &write.origin,
                edit,
            )
            .await
        {
            Ok(Ok(applied)) if write.dry_run => dry_run_answer(&applied.diff),
            Ok(Ok(Applied {
                value: (value, status),
                generation,
                ..
            })) => {
                let status = if status == StatusCode::OK { ok } else { status };
                if status == StatusCode::NO_CONTENT {
                    Answer::empty(status)
                } else {
                    Answer::json(status, &json!(value))
                        .with_header("x-gatehouse-generation", generation.to_string())
                }
            }
            Ok(Err(Refused(answer))) => answer,
            Err(e) => commit_error(e),
        }
    }

    async fn get_upstream(&self, name: &str) -> Answer {
        let (config, _) = self.store.read();
        match config.upstreams.iter().find(|u| u.name == name) {
            Some(u) => Answer::json(StatusCode::OK, &json!(u)),
            None => not_found("upstream", name).0,
        }
    }

    async fn create_upstream(&self, write: &Write, body: &[u8]) -> Answer {
        let upstream: RawUpstream = match parse_body(body) {
            Ok(u) => u,
            Err(a) => return a,
        };
        self.change(write, StatusCode::CREATED, move |c| {
            if c.upstreams.iter().any(|u| u.name == upstream.name) {
                return Err(Refused(Answer::error(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "upstream {:?} already exists; change it with PUT /upstreams/{}",
                        upstream.name, upstream.name
                    ),
                )));
            }
            c.upstreams.push(upstream.clone());
            Ok((upstream.clone(), StatusCode::OK))
        })
        .await
    }

    async fn put_upstream(&self, write: &Write, name: &str, body: &[u8]) -> Answer {
        let mut upstream: RawUpstream = match parse_body(body) {
            Ok(u) => u,
            Err(a) => return a,
        };
        if upstream.name.is_empty() {
            upstream.name = name.to_owned();
        }
        if upstream.name != name {
            return name_mismatch("upstream", name, &upstream.name);
        }
        self.change(write, StatusCode::OK, move |c| {
            let status = upsert(&mut c.upstreams, upstream.clone(), |u| {
                u.name == upstream.name
            });
            Ok((upstream.clone(), status))
        })
        .await
    }

    async fn delete_upstream(&self, write: &Write, name: &str) -> Answer {
        self.change(write, StatusCode::NO_CONTENT, |c| {
            let Some(index) = c.upstreams.iter().position(|u| u.name == name) else {
                return Err(not_found("upstream", name));
            };
            let bound = bound_apis(c, name);
            if !bound.is_empty() {
                return Err(Refused(Answer::json(
                    StatusCode::CONFLICT,
                    &json!({
                        "status": 409,
                        "error": "upstream_in_use",
                        "message": format!("upstream {name:?} still serves {} API(s); delete them or move them to another upstream first", bound.len()),
                        "apis": bound,
                    }),
                )));
            }
            c.upstreams.remove(index);
            Ok(((), StatusCode::NO_CONTENT))
        })
        .await
    }

    async fn upstream_apis(&self, name: &str) -> Answer {
        let (config, _) = self.store.read();
        if !config.upstreams.iter().any(|u| u.name == name) {
            return not_found("upstream", name).0;
        }
        Answer::json(StatusCode::OK, &json!(bound_apis(&config, name)))
    }

    /// The health of an upstream's nodes as the running gateway sees them.
    fn upstream_health(&self, name: &str) -> Answer {
        let runtime = self.store.runtime().load();
        match runtime.upstreams.iter().find(|u| u.name == name) {
            Some(u) => Answer::json(StatusCode::OK, &json!(u.health_report())),
            None => not_found("upstream", name).0,
        }
    }

    async fn get_service(&self, name: &str) -> Answer {
        let (config, _) = self.store.read();
        match config.services.iter().find(|s| s.name == name) {
            Some(s) => Answer::json(StatusCode::OK, &json!(s)),
            None => not_found("service", name).0,
        }
    }

    async fn create_service(&self, write: &Write, body: &[u8]) -> Answer {
        let mut service: RawService = match parse_body(body) {
            Ok(s) => s,
            Err(a) => return a,
        };
        stamp_bindings(&mut service.apis, None);
        self.change(write, StatusCode::CREATED, move |c| {
            if c.services.iter().any(|s| s.name == service.name) {
                return Err(Refused(Answer::error(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "service {:?} already exists; change it with PUT /services/{}",
                        service.name, service.name
                    ),
                )));
            }
            c.services.push(service.clone());
            Ok((service.clone(), StatusCode::OK))
        })
        .await
    }

    async fn put_service(&self, write: &Write, name: &str, body: &[u8]) -> Answer {
        let mut service: RawService = match parse_body(body) {
            Ok(s) => s,
            Err(a) => return a,
        };
        if service.name.is_empty() {
            service.name = name.to_owned();
        }
        if service.name != name {
            return name_mismatch("service", name, &service.name);
        }
        self.change(write, StatusCode::OK, move |c| {
            let mut service = service.clone();
            let old = c
                .services
                .iter()
                .find(|s| s.name == service.name)
                .map(|s| s.apis.clone());
            stamp_bindings(&mut service.apis, old.as_deref());
            let status = upsert(&mut c.services, service.clone(), |s| s.name == service.name);
            Ok((service, status))
        })
        .await
    }

    async fn delete_service(&self, write: &Write, name: &str) -> Answer {
        self.change(write, StatusCode::NO_CONTENT, |c| {
            let Some(index) = c.services.iter().position(|s| s.name == name) else {
                return Err(not_found("service", name));
            };
            c.services.remove(index);
            Ok(((), StatusCode::NO_CONTENT))
        })
        .await
    }

    async fn list_apis(&self, service: &str) -> Answer {
        let (config, _) = self.store.read();
        match config.services.iter().find(|s| s.name == service) {
            Some(s) => Answer::json(StatusCode::OK, &json!(s.apis)),
            None => not_found("service", service).0,
        }
    }

    async fn get_api(&self, service: &str, api: &str) -> Answer {
        let (config, _) = self.store.read();
        let Some(s) = config.services.iter().find(|s| s.name == service) else {
            return not_found("service", service).0;
        };
        match s.apis.iter().find(|a| a.name == api) {
            Some(a) => Answer::json(StatusCode::OK, &json!(a)),
            None => not_found("API", &format!("{service}.{api}")).0,
        }
    }

    async fn create_api(&self, write: &Write, service: &str, body: &[u8]) -> Answer {
        let api: RawApi = match parse_body(body) {
            Ok(a) => a,
            Err(a) => return a,
        };
        self.change(write, StatusCode::CREATED, move |c| {
            let Some(s) = c.services.iter_mut().find(|s| s.name == service) else {
                return Err(not_found("service", service));
            };
            if s.apis.iter().any(|a| a.name == api.name) {
                return Err(Refused(Answer::error(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "API {:?} already exists in service {service:?}; change it with PUT",
                        api.name
                    ),
                )));
            }
            let mut apis = vec![api.clone()];
            stamp_bindings(&mut apis, None);
            s.apis.extend(apis.iter().cloned());
            Ok((apis.remove(0), StatusCode::OK))
        })
        .await
    }

    async fn put_api(&self, write: &Write, service: &str, name: &str, body: &[u8]) -> Answer {
        let mut api: RawApi = match parse_body(body) {
            Ok(a) => a,
            Err(a) => return a,
        };
        if api.name.is_empty() {
            api.name = name.to_owned();
        }
        if api.name != name {
            return name_mismatch("API", name, &api.name);
        }
        self.change(write, StatusCode::OK, move |c| {
            let Some(s) = c.services.iter_mut().find(|s| s.name == service) else {
                return Err(not_found("service", service));
            };
            let mut apis = vec![api.clone()];
            stamp_bindings(&mut apis, Some(&s.apis));
            let api = apis.remove(0);
            let status = upsert(&mut s.apis, api.clone(), |a| a.name == api.name);
            Ok((api, status))
        })
        .await
    }

    async fn delete_api(&self, write: &Write, service: &str, name: &str) -> Answer {
        self.change(write, StatusCode::NO_CONTENT, |c| {
            let Some(s) = c.services.iter_mut().find(|s| s.name == service) else {
                return Err(not_found("service", service));
            };
            let Some(index) = s.apis.iter().position(|a| a.name == name) else {
                return Err(not_found("API", &format!("{service}.{name}")));
            };
            s.apis.remove(index);
            Ok(((), StatusCode::NO_CONTENT))
        })
        .await
    }
}

/// The APIs whose backend is upstream `name`: the upstream's "associated APIs".
fn bound_apis(config: &RawConfig, name: &str) -> Vec<Value> {
    config
        .services
        .iter()
        .flat_map(|s| s.apis.iter().map(move |a| (s, a)))
        .filter(|(_, a)| a.backend.upstream.as_deref() == Some(name))
        .map(|(s, a)| {
            json!({
                "service": s.name,
                "api": a.name,
                "methods": a.methods.clone().unwrap_or_else(|| vec!["ANY".to_owned()]),
                "path": a.path,
                "bound_at": a.backend.bound_at,
            })
        })
        .collect()
}

/// Records when each API was bound to its upstream: kept from `previous` when the API already
/// used the same upstream, now otherwise.
fn stamp_bindings(apis: &mut [RawApi], previous: Option<&[RawApi]>) {
    for api in apis {
        let Some(upstream) = api.backend.upstream.as_deref() else {
            api.backend.bound_at = None;
            continue;
        };
        if api.backend.bound_at.is_some() && previous.is_none() {
            continue;
        }
        let kept = previous
            .and_then(|p| p.iter().find(|old| old.name == api.name))
            .filter(|old| old.backend.upstream.as_deref() == Some(upstream))
            .and_then(|old| old.backend.bound_at.clone());
        api.backend.bound_at = Some(kept.unwrap_or_else(now));
    }
}

/// Replaces the item `matches` finds, or appends it; 200 when replaced, 201 when created.
fn upsert<T>(items: &mut Vec<T>, item: T, matches: impl Fn(&T) -> bool) -> StatusCode {
    match items.iter().position(matches) {
        Some(i) => {
            items[i] = item;
            StatusCode::OK
        }
        None => {
            items.push(item);
            StatusCode::CREATED
        }
    }
}

fn name_mismatch(what: &str, url: &str, body: &str) -> Answer {
    Answer::error(
        StatusCode::BAD_REQUEST,
        "name_mismatch",
        format!("the {what} in the URL is {url:?} but the body names {body:?}; renaming is not supported, create the new one and delete the old"),
    )
}

fn commit_error(e: CommitError) -> Answer {
    match e {
        CommitError::Invalid(problems) => Answer::json(
            StatusCode::BAD_REQUEST,
            &json!({
                "status": 400,
                "error": "invalid_config",
                "message": format!("the change was refused, nothing changed: {} problem(s)", problems.len()),
                "problems": problems.iter().map(problem_json).collect::<Vec<_>>(),
            }),
        ),
        CommitError::Stale { current } => Answer::json(
            StatusCode::PRECONDITION_FAILED,
            &json!({
                "status": 412,
                "error": "stale_generation",
                "message": format!("the configuration changed since you read it; it is now at {current} (its ETag: a generation, or the etcd revision on a fleet instance): read it again and retry"),
                "generation": current,
            }),
        ),
        CommitError::Persist(m) => Answer::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "persist_failed",
            format!("{m}; nothing changed"),
        ),
        CommitError::Unreadable(m) => Answer::error(
            StatusCode::BAD_REQUEST,
            "unreadable_config",
            format!("{m}; the previous configuration keeps serving"),
        ),
        CommitError::Unavailable(m) => Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "config_source_unavailable",
            m,
        )
        .with_header("retry-after", "5".to_owned()),
        CommitError::Unknown { base, reason } => Answer::json(
            StatusCode::GATEWAY_TIMEOUT,
            &json!({
                "status": 504,
                "error": "outcome_unknown",
                "message": format!("the change was sent to etcd, which did not answer ({reason}): it may or may not have been committed. Read the configuration again (GET it: revision {base} or later) to see; a retry with If-Match: \"{base}\" is applied only if nothing was committed meanwhile"),
                "revision": base,
            }),
        ),
    }
}

fn problem_json(p: &Problem) -> Value {
    json!({ "path": p.path, "message": p.message, "fix": p.fix })
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(|e| {
        Answer::error(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body is not the expected JSON: {e}"),
        )
    })
}

/// The generation in `If-Match` (`"7"`, `7` or `W/"7"`), if sent.
/// What a write request asks for besides its body.
struct Write {
    /// The entity tags the client read (`If-Match`).
    expected: Option<Vec<String>>,
    /// Validate and tell what would change, apply nothing (`?dry_run=true`).
    dry_run: bool,
    /// `METHOD /path`, for the audit log.
    origin: String,
}

/// The `dry_run` query parameter: `true`/`1` or `false`/`0`; absent means false.
fn dry_run(query: &str) -> Result<bool, Answer> {
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, "true"));
        if name == "dry_run" {
            return match value {
                "true" | "1" | "" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(Answer::error(
                    StatusCode::BAD_REQUEST,
                    "bad_dry_run",
                    "dry_run takes true or false",
                )),
            };
        }
    }
    Ok(false)
}

/// The answer to a dry run that passed: valid, and what would change.
fn dry_run_answer(diff: &gatehouse_config::diff::Diff) -> Answer {
    Answer::json(
        StatusCode::OK,
        &json!({ "dry_run": true, "valid": true, "changes": diff }),
    )
}

/// The entity tags of `If-Match`, as sent (several headers and comma-separated lists are one
/// list); `None` when the header is absent. Tags are opaque: one that is not the current `ETag`
/// gets 412, whatever it looks like.
fn if_match(session: &ServerSession) -> Option<Vec<String>> {
    let values = session.req_header().headers.get_all(http::header::IF_MATCH);
    let mut tags = Vec::new();
    let mut present = false;
    for value in values {
        present = true;
        let text = String::from_utf8_lossy(value.as_bytes());
        tags.extend(text.split(',').map(|t| t.trim().to_owned()));
    }
    present.then_some(tags)
}

/// The methods a known admin path accepts (for 405 and `Allow`); `None` for an unknown path.
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["openapi.json"] | ["status"] | ["config"] | ["fleet"] => "GET",
        ["reload"] => "POST",
        ["upstreams"] | ["services"] | ["services", _, "apis"] => "GET, POST",
        ["upstreams", _] | ["services", _] | ["services", _, "apis", _] => "GET, PUT, DELETE",
        ["upstreams", _, "apis"] | ["upstreams", _, "health"] => "GET",
        _ => return None,
    })
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Answer> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(Answer::error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "request bodies are limited to 1 MiB",
                    ));
                }
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(Answer::error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("cannot read the body: {e}"),
                ))
            }
        }
    }
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
