//! The gateway's Pingora `ProxyHttp`: routes each request to its API, answers gateway-made
//! responses, picks a node by smooth weighted round robin, retries failed nodes, sets the Host and
//! forwarding headers, and counts everything.
//!
//! Phases, in the order Pingora calls them:
//! - `request_filter`: load the runtime snapshot, route, answer 400/404/405 and fixed responses;
//! - `upstream_peer`: pick a node this request has not tried (called again for each retry);
//! - `fail_to_connect` / `error_while_proxy`: record the failed attempt and decide on a retry;
//! - `upstream_request_filter`: backend path, Host, `X-Forwarded-*`, the length of a body plugins
//!   read;
//! - `request_body_filter`: the body limit, and the plugins' version of a body they read;
//! - `upstream_response_filter`: the attempt succeeded;
//! - `response_filter` / `response_body_filter`: the response plugins, and the body held whole for
//!   the plugins that read it;
//! - `fail_to_proxy`: every attempt failed, answer 502/504 as JSON;
//! - `logging`: request metrics.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use gatehouse_plugin_host::Node;
use std::time::Instant;

use async_trait::async_trait;
use http::header::{HOST, RETRY_AFTER};
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use gatehouse_config::canonical::{self, decode_query_name, PathRules};
use gatehouse_config::{HttpOptions, Underscores};

use crate::bodies::{HeldResponse, Refused};
use crate::health::{Evidence, Source};
use crate::metrics::Outcome;
use crate::plugins::{run_response_body, ApiPlugins, Decision as PluginDecision, Stopped};
use crate::respond::{self, ErrorBody};
use crate::route::RouteMatch;
use crate::runtime::{ApiBackend, ApiRuntime, Runtime, SharedRuntime};
use crate::selection::TriedSet;
use crate::upstream::Steer;
use gatehouse_config::OnError;
use gatehouse_plugin_host::HeldInstance;

/// Error raised when an upstream has no node left to try.
const NO_NODE: ErrorType = ErrorType::Custom("NoNodeAvailable");
/// A plugin steered the request to nodes none of which can take it, and said to fail then.
const NO_STEERED_NODE: ErrorType = ErrorType::Custom("NoSteeredNode");
/// Error raised when a `fail_closed` plugin failed after the request phase.
const PLUGIN_FAILED: ErrorType = ErrorType::Custom("PluginFailed");
/// Error raised when a request body grows past its limit while it is streamed upstream.
const BODY_TOO_LARGE: ErrorType = ErrorType::Custom("BodyTooLarge");
/// Error raised when a node answers with one of its upstream's `retry_statuses` and another
/// attempt is possible: the answer is dropped and the request goes to another node.
const RETRY_STATUS: ErrorType = ErrorType::Custom("RetryStatus");

/// Distinguishes the connections of resends, so that a resend never takes a pooled connection.
static FRESH_GROUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The proxy logic; one per process, shared by all worker threads.
pub struct Gateway {
    runtime: SharedRuntime,
}

impl Gateway {
    pub fn new(runtime: SharedRuntime) -> Self {
        Self { runtime }
    }
}

/// Counts a request in flight from its first phase to its last (the context's life).
pub struct InFlight(());

impl InFlight {
    fn new() -> Self {
        crate::metrics::METRICS.in_flight.inc();
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::metrics::METRICS.in_flight.dec();
    }
}

/// Per-request state.
pub struct RequestCtx {
    _in_flight: InFlight,
    started: Instant,
    /// The snapshot this request uses from start to end.
    runtime: Option<Arc<Runtime>>,
    api: Option<usize>,
    /// Path and query to send upstream, when the API maps the path.
    upstream_uri: Option<http::Uri>,
    /// The API's backend path template filled with the request's parameters, before the
    /// client's query is added: kept so that a plugin that edits only the query keeps it.
    mapped: Option<String>,
    tried: TriedSet,
    attempts: u32,
    /// The nodes a plugin allowed this request to use.
    steer: Option<Steer>,
    /// The retry count a plugin set, when below the upstream's.
    retry_cap: Option<u32>,
    /// The node of the current attempt and its position in the upstream's schedule.
    node: Option<usize>,
    position: Option<usize>,
    /// A response header arrived from a node: nothing can be retried any more.
    response_started: bool,
    /// The next attempt resends to the same node on a fresh connection, after a pooled
    /// connection broke before any response byte (at most once per request).
    resend_fresh: bool,
    resent: bool,
    client_ip: Option<IpAddr>,
    /// The Host the client sent, before any plugin changed it (for `X-Forwarded-Host`).
    client_host: Option<http::HeaderValue>,
    /// A plugin set the Host header: the upstream's `host_header` does not override it.
    host_set_by_plugin: bool,
    /// The plugin whose failure stopped the request, and why, for the error answer.
    failed_plugin: Option<String>,
    failed_reason: Option<&'static str>,
    /// Largest body this request may stream upstream (checked as it is read).
    body_limit: Option<u64>,
    /// The client sent `Expect: 100-continue` and got its interim answer from the gateway.
    continued: bool,
    /// The node switched protocols (101): the connection is a WebSocket until it closes.
    upgraded: bool,
    /// `https` on a TLS listener, else `http`.
    scheme: &'static str,
    /// The gateway's error code, when it answered itself.
    error: Option<&'static str>,
    /// Path and query as the client sent them, kept when the access log is on.
    target: Option<String>,
    /// The whole request body, read for the API's plugins (`None`: the body streams).
    request_body: Option<bytes::Bytes>,
    /// The client's request had a body (so the upstream's gets a `Content-Length`).
    request_framed: bool,
    /// The response body being held for the API's `on-response-body` plugins.
    held_response: Option<HeldResponse>,
    /// Their instances, taken in the header phase.
    held_plugins: Vec<(HeldInstance, OnError)>,
    /// The request's contexts in Proxy-Wasm filters, ended when it ends.
    filter_streams: gatehouse_plugin_host::Streams,
    /// A body of at least [`LARGE_BODY`] was held whole for plugins.
    large_body: bool,
}

/// A body held whole that is at least this large is given back to the operating system when
/// its request ends (an allocator would keep it resident for reuse).
const LARGE_BODY: usize = 256 * 1024;

impl RequestCtx {
    fn upstream<'r>(&self, runtime: &'r Runtime) -> Option<&'r crate::upstream::UpstreamRuntime> {
        match &runtime.apis[self.api?].backend {
            ApiBackend::Upstream { upstream, .. } => Some(&runtime.upstreams[*upstream]),
            ApiBackend::Fixed(_) => None,
        }
    }

    /// Records the current attempt's outcome on its node.
    fn record(&self, outcome: Outcome) {
        if let (Some(runtime), Some(node)) = (&self.runtime, self.node) {
            if let Some(upstream) = self.upstream(runtime) {
                upstream.nodes[node].metrics.attempt(outcome);
            }
        }
    }

    /// Whether an answer with `status` is dropped and the request sent to another node: the
    /// status is one of the upstream's `retry_statuses`, the request is idempotent with its body
    /// whole in the retry buffer, and another attempt is possible within the budget.
    fn retries_status(&self, session: &Session, status: u16) -> bool {
        let Some(upstream) = self.runtime.as_ref().and_then(|r| self.upstream(r)) else {
            return false;
        };
        upstream.config.retry_statuses.contains(&status)
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && self.attempts <= self.retries(upstream)
            && upstream.has_untried(&self.tried, self.steer.as_ref())
            && upstream
                .config
                .retry_budget
                .is_none_or(|budget| self.started.elapsed() < budget)
    }

    /// How many times this request may be retried: the upstream's count, or lower if a plugin
    /// said so.
    fn retries(&self, upstream: &crate::upstream::UpstreamRuntime) -> u32 {
        self.retry_cap
            .map_or(upstream.retries, |cap| cap.min(upstream.retries))
    }

    /// Records evidence about the current attempt's node for passive health checks.
    fn report(&self, evidence: &Evidence) {
        if let (Some(runtime), Some(node)) = (&self.runtime, self.node) {
            if let Some(upstream) = self.upstream(runtime) {
                upstream.report(node, Source::Request, evidence);
            }
        }
    }

    /// Whether another attempt is allowed and possible; counts and logs the failed attempt.
    fn may_retry(&self, e: &Error, eligible: bool) -> bool {
        let Some(runtime) = &self.runtime else {
            return false;
        };
        let Some(upstream) = self.upstream(runtime) else {
            return false;
        };
        let within_budget = upstream
            .config
            .retry_budget
            .is_none_or(|budget| self.started.elapsed() < budget);
        let allowed = eligible
            && within_budget
            && self.attempts <= self.retries(upstream)
            && upstream.has_untried(&self.tried, self.steer.as_ref());
        if allowed {
            upstream.retries_total.inc();
        }
        if let (Some(api), Some(node)) = (self.api, self.node) {
            let api = &runtime.apis[api];
            log::warn!(
                "{}.{}: upstream {} node {} failed on attempt {}: {}{}",
                api.service,
                api.name,
                upstream.name,
                upstream.nodes[node].label,
                self.attempts,
                e,
                if allowed {
                    "; retrying on another node"
                } else {
                    ""
                }
            );
        }
        allowed
    }
}

impl RequestCtx {
    /// The routed API's plugin chain, when it has plugins (a reference count, no copy).
    fn plugins(&self) -> Option<Arc<ApiPlugins>> {
        let plugins = &self.runtime.as_ref()?.apis[self.api?].plugins;
        (!plugins.is_empty()).then(|| Arc::clone(plugins))
    }

    /// Records a plugin failure that stops the request and turns it into the error Pingora
    /// answers with (500, naming the plugin).
    fn stop(&mut self, stopped: Stopped<'_>) -> Box<Error> {
        self.failed_plugin = Some(stopped.plugin.to_owned());
        self.failed_reason = Some(stopped.failure.reason());
        Error::explain(
            PLUGIN_FAILED,
            format!(
                "plugin {} failed ({})",
                stopped.plugin,
                stopped.failure.reason()
            ),
        )
    }
}

/// Writes an error the gateway answers itself and remembers its code for the access log.
async fn answer_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: &ErrorBody<'_>,
    extra: Option<(http::HeaderName, &str)>,
) -> Result<()> {
    ctx.error = Some(body.error);
    respond::write_error(session, body, extra).await
}

/// An answer the gateway makes itself about an API: the error, with its service and API named.
fn api_error<'a>(
    api: &'a ApiRuntime,
    status: u16,
    error: &'static str,
    message: impl Into<String>,
) -> ErrorBody<'a> {
    ErrorBody {
        service: Some(&api.service),
        api: Some(&api.name),
        ..ErrorBody::new(status, error, message)
    }
}

/// The answer to a request a `fail_closed` plugin stopped.
fn plugin_error<'a>(api: &'a ApiRuntime, stopped: &'a Stopped<'a>) -> ErrorBody<'a> {
    ErrorBody {
        plugin: Some(stopped.plugin),
        ..api_error(
            api,
            500,
            "plugin_failed",
            format!(
                "plugin {} failed ({})",
                stopped.plugin,
                stopped.failure.reason()
            ),
        )
    }
}

impl Gateway {
    /// Runs the API's `on-request` plugins; `Ok(true)` when a plugin (or its failure) answered.
    async fn run_request_plugins(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        runtime: &Runtime,
        api: usize,
    ) -> Result<bool> {
        let api = &runtime.apis[api];
        if api.plugins.is_empty() {
            return Ok(false);
        }
        match api
            .plugins
            .on_request(
                session.req_header_mut(),
                ctx.client_ip,
                ctx.request_body.as_mut(),
                &mut ctx.filter_streams,
            )
            .await
        {
            PluginDecision::Proceed {
                path_changed,
                query_changed,
                host_changed,
                body_changed,
                nodes,
                retries,
            } => {
                ctx.request_framed |= body_changed;
                if let Some(choice) = &nodes {
                    ctx.steer = ctx.upstream(runtime).map(|u| u.steer(choice));
                }
                ctx.retry_cap = retries;
                if path_changed {
                    // the plugin's path replaces the API's backend path mapping
                    ctx.upstream_uri = None;
                    ctx.mapped = None;
                } else if query_changed {
                    // the mapping stays; the plugin's query replaces the client's
                    if let Some(mapped) = &ctx.mapped {
                        let query = session.req_header().uri.query();
                        ctx.upstream_uri = compose(mapped, query, Conflict::Drop).ok();
                    }
                }
                ctx.host_set_by_plugin = host_changed;
                Ok(false)
            }
            PluginDecision::Respond(reply) => {
                let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 1))?;
                for (name, value) in reply.headers {
                    resp.append_header(name, value)?;
                }
                resp.insert_header(http::header::CONTENT_LENGTH, reply.body.len())?;
                respond::write(session, resp, reply.body.into()).await?;
                Ok(true)
            }
            PluginDecision::Stop(stopped) => {
                let body = plugin_error(api, &stopped);
                answer_error(session, ctx, &body, None).await?;
                Ok(true)
            }
        }
    }

    /// Reads the whole request body when the API's plugins read it; `Ok(true)` when the request
    /// was answered instead (413 over the limit, 411 when it cannot be held).
    async fn read_plugin_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        runtime: &Runtime,
        api: usize,
        keepalive: Option<u64>,
    ) -> Result<bool> {
        let api = &runtime.apis[api];
        if api.plugins.reads_a_body() && respond::is_grpc(session) {
            // a gRPC call streams its messages: there is no whole body to hand a plugin
            session.set_keepalive(None);
            let body = api_error(
                api,
                415,
                "unsupported_media_type",
                "this API's plugins read whole bodies, which a gRPC call does not have (its messages stream): publish gRPC methods on an API marked grpc: true, whose plugins read no body",
            );
            answer_error(session, ctx, &body, None).await?;
            return Ok(true);
        }
        let Some(plugin_limit) = api.plugins.request_body_limit() else {
            return Ok(false);
        };
        let limit = (plugin_limit as u64).min(api.max_body_size);
        let declared = declared_length(session.req_header());
        if declared.is_none_or(|l| l <= limit) && expects_continue(session.req_header()) {
            session.write_continue_response().await?;
            ctx.continued = true;
        }
        ctx.request_framed = body_expected(session.req_header());
        match crate::bodies::read_request(session, declared, limit).await? {
            Ok(body) => {
                // the body is read: the connection can serve the next request, whatever the
                // plugins answer
                if !session.is_http2() {
                    session.set_keepalive(keepalive);
                }
                ctx.request_body = Some(body);
                Ok(false)
            }
            Err(refused) => {
                session.set_keepalive(None);
                let body = match refused {
                    Refused::TooLarge { limit, length } => {
                        if let Some(stopped) = api
                            .plugins
                            .body_over_limit(false, length.unwrap_or(limit + 1) as usize)
                        {
                            ctx.failed_plugin = Some(stopped.plugin.to_owned());
                        }
                        let size = length.map_or_else(
                            || "the request body".to_owned(),
                            |l| format!("the request body of {l} bytes"),
                        );
                        api_error(
                            api,
                            413,
                            "payload_too_large",
                            format!("{size} is over the limit of {limit} bytes of this API's plugins, which read it whole"),
                        )
                    }
                    Refused::LengthRequired => api_error(
                        api,
                        411,
                        "length_required",
                        "this API's plugins read the request body whole: a body over 64 KiB needs a Content-Length",
                    ),
                };
                answer_error(session, ctx, &body, None).await?;
                Ok(true)
            }
        }
    }

    /// Runs the `on-response-body` plugins on a fixed response's body.
    async fn fixed_response_body<'p>(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        plugins: &'p ApiPlugins,
        resp: &ResponseHeader,
        body: &mut bytes::Bytes,
    ) -> std::result::Result<(), Stopped<'p>> {
        let Some(limit) = plugins.response_body_limit() else {
            return Ok(());
        };
        let status = resp.status.as_u16();
        if !crate::bodies::response_has_body(&session.req_header().method, status) {
            return Ok(());
        }
        if body.len() > limit {
            return plugins
                .body_over_limit(true, body.len())
                .map_or(Ok(()), Err);
        }
        let held = plugins.hold_response_body().await?;
        match run_response_body(
            held,
            session.req_header_mut(),
            status,
            &resp.headers,
            body.clone(),
            ctx.client_ip,
            &mut ctx.filter_streams,
        ) {
            Ok(Some(replaced)) => *body = replaced,
            Ok(None) => {}
            Err((plugin, failure)) => {
                let plugin = plugins.labels().find(|l| *l == plugin).unwrap_or("plugin");
                return Err(Stopped { plugin, failure });
            }
        }
        Ok(())
    }

    /// Runs the API's `on-upstream-request` plugins for the current attempt.
    async fn run_upstream_plugins(
        &self,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(plugins) = ctx.plugins() else {
            return Ok(());
        };
        let Some(runtime) = ctx.runtime.as_ref() else {
            return Ok(());
        };
        let (Some(upstream), Some(node)) = (ctx.upstream(runtime), ctx.node) else {
            return Ok(());
        };
        let n = &upstream.nodes[node];
        let node = Node {
            upstream: upstream.name.clone(),
            host: n.host.to_string(),
            port: n.port,
            address: n
                .peer_template()
                .as_deref()
                .map(|p| p._address.to_string())
                .unwrap_or_default(),
        };
        let result = plugins
            .on_upstream_request(upstream_request, ctx.client_ip, &node)
            .await;
        result.map_err(|stopped| ctx.stop(stopped))
    }
}

/// What routing decided, detached from the borrowed request.
enum Decision {
    Proxy {
        api: usize,
        mapped: Option<(String, http::Uri)>,
    },
    Fixed(usize),
    NotFound,
    MethodNotAllowed(String),
    BadRequest(Cow<'static, str>),
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            _in_flight: InFlight::new(),
            started: Instant::now(),
            runtime: None,
            api: None,
            upstream_uri: None,
            mapped: None,
            tried: TriedSet::default(),
            steer: None,
            retry_cap: None,
            attempts: 0,
            node: None,
            position: None,
            response_started: false,
            resend_fresh: false,
            resent: false,
            client_ip: None,
            client_host: None,
            host_set_by_plugin: false,
            failed_plugin: None,
            failed_reason: None,
            body_limit: None,
            continued: false,
            error: None,
            target: None,
            scheme: "http",
            upgraded: false,
            request_body: None,
            request_framed: false,
            held_response: None,
            large_body: false,
            held_plugins: Vec::new(),
            filter_streams: Default::default(),
        }
    }

    /// What the engine's own log lines say of a request: its target with credentials and
    /// secrets redacted, as in the access log.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        let req = session.req_header();
        let target = String::from_utf8_lossy(req.raw_path());
        let host = req
            .headers
            .get(HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()));
        format!(
            "{} {}, Host: {}",
            req.method,
            gatehouse_config::secrets::redact_target(&target),
            gatehouse_config::secrets::scrub(host.as_deref().unwrap_or("-"))
        )
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        // The header is in: from here on the body and backend timeouts bound the request.
        crate::listener::header_received(bodyless_header_len(session));
        let runtime = self.runtime.load();
        let http = &runtime.config.instance.http;
        session.set_read_timeout(Some(http.body_timeout));
        crate::listener::set_body_timeout(http.body_timeout);
        // Several requests in one write are answered one after the other, in order.
        session.set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let runtime = self.runtime.load();
        if runtime.access.is_some() {
            ctx.target = Some(session.req_header().uri.to_string());
        }
        ctx.runtime = Some(runtime.clone());
        if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
            ctx.scheme = "https";
        }
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let h2_form = if session.req_header().version == http::Version::HTTP_2 {
            from_h2_form(session.req_header_mut())
        } else {
            Ok(())
        };
        ignore_h2c_upgrade(session.req_header_mut());
        ctx.client_host = session.req_header().headers.get(HOST).cloned();
        let http = &runtime.config.instance.http;
        // A request answered here leaves its body unread: close the connection after the
        // answer rather than read and discard a body the client may not even send.
        let keepalive = session.get_keepalive();
        // (an HTTP/2 stream ends on its own: the connection goes on whatever is left unread)
        let body = body_expected(session.req_header()) && !session.is_http2();
        if body {
            session.set_keepalive(None);
        }
        let refused = match h2_form {
            Err(message) => Some((400, message)),
            Ok(()) => check_framing(session, http),
        };
        if let Some((status, message)) = refused {
            let error = if status == 431 {
                "request_header_fields_too_large"
            } else {
                "bad_request"
            };
            session.set_keepalive(None);
            let body = ErrorBody::new(status, error, message);
            answer_error(session, ctx, &body, None).await?;
            return Ok(true);
        }
        let decision = match canonical_target(session.req_header(), http) {
            Ok(Some(uri)) => {
                session.req_header_mut().set_uri(uri);
                decide(&runtime, session.req_header())
            }
            Ok(None) => decide(&runtime, session.req_header()),
            Err(message) => Decision::BadRequest(message),
        };
        match decision {
            Decision::Proxy { api, mapped } => {
                ctx.api = Some(api);
                if session.is_upgrade_req() && !runtime.apis[api].websocket {
                    let a = &runtime.apis[api];
                    session.set_keepalive(None);
                    let body = ErrorBody {
                        service: Some(&a.service),
                        api: Some(&a.name),
                        ..ErrorBody::new(
                            400,
                            "upgrade_not_allowed",
                            "this API does not accept protocol upgrades (WebSocket); its configuration can allow them with websocket: true",
                        )
                    };
                    answer_error(session, ctx, &body, None).await?;
                    return Ok(true);
                }
                if let Some((rendered, uri)) = mapped {
                    ctx.upstream_uri = Some(uri);
                    ctx.mapped = Some(rendered);
                }
                let limit = runtime.apis[api].max_body_size;
                if let Some(length) = declared_length(session.req_header()) {
                    if length > limit {
                        let api = &runtime.apis[api];
                        let body = api_error(
                            api,
                            413,
                            "payload_too_large",
                            format!("the request body of {length} bytes is over this API's limit of {limit} bytes"),
                        );
                        answer_error(session, ctx, &body, None).await?;
                        return Ok(true);
                    }
                }
                ctx.body_limit = Some(limit);
                if self
                    .read_plugin_body(session, ctx, &runtime, api, keepalive)
                    .await?
                    || self
                        .run_request_plugins(session, ctx, &runtime, api)
                        .await?
                {
                    return Ok(true);
                }
                if body {
                    session.set_keepalive(keepalive);
                }
                if !ctx.continued && expects_continue(session.req_header()) {
                    session.write_continue_response().await?;
                    ctx.continued = true;
                }
                let method = &session.req_header().method;
                if method != Method::GET && method != Method::HEAD {
                    // a body is kept (up to the engine's buffer) so that a retry, or a resend on
                    // a fresh connection, can send it again
                    session.enable_retry_buffering();
                }
                Ok(false)
            }
            Decision::Fixed(api) => {
                ctx.api = Some(api);
                if self
                    .read_plugin_body(session, ctx, &runtime, api, keepalive)
                    .await?
                    || self
                        .run_request_plugins(session, ctx, &runtime, api)
                        .await?
                {
                    return Ok(true);
                }
                let ApiBackend::Fixed(answer) = &runtime.apis[api].backend else {
                    return Ok(false);
                };
                let mut resp =
                    ResponseHeader::build(answer.status, Some(answer.headers.len() + 1))?;
                for (name, value) in &answer.headers {
                    resp.append_header(name.clone(), value.clone())?;
                }
                resp.insert_header(http::header::CONTENT_LENGTH, answer.body.len())?;
                let plugins = &runtime.apis[api].plugins;
                let mut body = answer.body.clone();
                if !plugins.is_empty() {
                    let stopped = match plugins
                        .on_response(
                            session.req_header_mut(),
                            &mut resp,
                            ctx.client_ip,
                            &mut ctx.filter_streams,
                        )
                        .await
                    {
                        Err(stopped) => Some(stopped),
                        Ok(()) => self
                            .fixed_response_body(session, ctx, plugins, &resp, &mut body)
                            .await
                            .err(),
                    };
                    if let Some(stopped) = stopped {
                        let body = plugin_error(&runtime.apis[api], &stopped);
                        answer_error(session, ctx, &body, None).await?;
                        return Ok(true);
                    }
                    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
                }
                respond::write(session, resp, body).await?;
                Ok(true)
            }
            Decision::NotFound => {
                let path = session.req_header().uri.path();
                let body = ErrorBody::new(404, "not_found", format!("no API serves {path}"));
                answer_error(session, ctx, &body, None).await?;
                Ok(true)
            }
            Decision::MethodNotAllowed(allow) => {
                let req = session.req_header();
                let body = ErrorBody::new(
                    405,
                    "method_not_allowed",
                    format!(
                        "{} is not allowed on {}; allowed: {allow}",
                        req.method,
                        req.uri.path()
                    ),
                );
                answer_error(session, ctx, &body, Some((http::header::ALLOW, &allow))).await?;
                Ok(true)
            }
            Decision::BadRequest(message) => {
                let body = ErrorBody::new(400, "bad_request", message);
                answer_error(session, ctx, &body, None).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // (the request's own snapshot, borrowed: the context's other fields change below)
        let runtime = ctx
            .runtime
            .as_deref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "request was not routed"))?;
        let api = &runtime.apis[ctx.api.unwrap_or_default()];
        let ApiBackend::Upstream {
            upstream, timeout, ..
        } = &api.backend
        else {
            return Error::e_explain(ErrorType::InternalError, "API has no upstream");
        };
        let upstream = &runtime.upstreams[*upstream];
        let Some((position, node)) = upstream.pick(ctx.position, &ctx.tried, ctx.steer.as_ref())
        else {
            ctx.node = None;
            if let Some(steer) = ctx.steer.filter(|s| s.fail && ctx.attempts == 0) {
                return Err(Error::create(
                    NO_STEERED_NODE,
                    ErrorSource::Internal,
                    Some(upstream.describe_steer(&steer).into()),
                    None,
                ));
            }
            return Err(Error::create(
                NO_NODE,
                ErrorSource::Upstream,
                Some(format!("upstream {} has no node to try", upstream.name).into()),
                None,
            ));
        };
        let template = upstream.nodes[node].peer_template();
        let Some(template) = template.as_deref() else {
            return Error::e_explain(NO_NODE, "node lost its address");
        };
        ctx.tried.insert(node);
        ctx.node = Some(node);
        ctx.position = Some(position);
        ctx.attempts += 1;
        let mut peer = Box::new(HttpPeer::clone(template));
        // an attempt never outlives the request's retry budget
        let timeout = match upstream.config.retry_budget {
            Some(budget) => (*timeout)
                .min(budget.saturating_sub(ctx.started.elapsed()))
                .max(std::time::Duration::from_millis(1)),
            None => *timeout,
        };
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        if std::mem::take(&mut ctx.resend_fresh) {
            peer.group_key = FRESH_GROUP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(peer)
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(uri) = &ctx.upstream_uri {
            upstream_request.set_uri(uri.clone());
        }
        if ctx.continued {
            // the client has its 100 already; a second one from the backend would confuse it
            upstream_request.remove_header(&http::header::EXPECT);
        }
        if let Some(runtime) = &ctx.runtime {
            crate::listener::with_forwarding_memo(|memo| {
                crate::forwarding::apply(
                    upstream_request,
                    &runtime.config.instance.http,
                    ctx.client_ip,
                    ctx.client_host.as_ref(),
                    ctx.scheme,
                    memo,
                )
            })?;
        }
        if let Some(upstream) = ctx.runtime.as_ref().and_then(|r| ctx.upstream(r)) {
            if let Some(host) = upstream
                .host_header
                .as_ref()
                .filter(|_| !ctx.host_set_by_plugin)
            {
                upstream_request.insert_header(HOST, host.clone())?;
            }
        }
        if let Some(body) = ctx.request_body.as_ref().filter(|_| ctx.request_framed) {
            // the plugins' version of the body, read whole: its length is known
            upstream_request.remove_header(&http::header::TRANSFER_ENCODING);
            upstream_request.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        }
        self.run_upstream_plugins(upstream_request, ctx).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        crate::listener::body_progress(end_of_stream);
        if let Some(whole) = &ctx.request_body {
            // read before the plugins ran: the engine resends what it kept, the upstream gets
            // the plugins' version (again on every attempt)
            *body = (end_of_stream && !whole.is_empty()).then(|| whole.clone());
            return Ok(());
        }
        if let Some(limit) = ctx.body_limit {
            // counted by the engine, so a retry that replays the buffered body counts it once
            let read = session.body_bytes_read() as u64;
            if read > limit {
                session.set_keepalive(None);
                return Err(Error::explain(
                    BODY_TOO_LARGE,
                    format!("the request body is over this API's limit of {limit} bytes"),
                ));
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if crate::listener::draining() {
            // the process is stopping: this answer closes its connection (HTTP/1.1)
            session.set_keepalive(None);
        }
        let Some(plugins) = ctx.plugins() else {
            return Ok(());
        };
        let result = plugins
            .on_response(
                session.req_header_mut(),
                upstream_response,
                ctx.client_ip,
                &mut ctx.filter_streams,
            )
            .await;
        result.map_err(|stopped| ctx.stop(stopped))?;
        let Some(limit) = plugins.response_body_limit() else {
            return Ok(());
        };
        let status = upstream_response.status.as_u16();
        if ctx.upgraded || !crate::bodies::response_has_body(&session.req_header().method, status) {
            return Ok(());
        }
        let declared = upstream_response
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
        if let Some(length) = declared.filter(|l| *l > limit) {
            // known to be too large before anything went out: a fail_closed plugin answers
            // 500, otherwise the body streams unchanged
            return match plugins.body_over_limit(true, length) {
                Some(stopped) => Err(ctx.stop(stopped)),
                None => Ok(()),
            };
        }
        let held = plugins
            .hold_response_body()
            .await
            .map_err(|stopped| ctx.stop(stopped))?;
        if held.is_empty() {
            return Ok(());
        }
        // the plugins may change the body's length: it goes out chunked (HTTP/1.1) or framed by
        // the stream (HTTP/2)
        upstream_response.remove_header(&http::header::CONTENT_LENGTH);
        if !session.is_http2() && session.req_header().version == http::Version::HTTP_11 {
            upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        ctx.held_plugins = held;
        ctx.held_response = Some(HeldResponse {
            buffer: bytes::BytesMut::with_capacity(declared.unwrap_or(0)),
            limit,
            status,
            headers: upstream_response.headers.clone(),
        });
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        let Some(held) = ctx.held_response.as_mut() else {
            return Ok(None);
        };
        if let Some(chunk) = body.take() {
            if let Err(all) = held.push(chunk) {
                let length = all.len();
                ctx.held_response = None;
                ctx.held_plugins.clear();
                if let Some(stopped) = ctx.plugins().and_then(|p| {
                    p.body_over_limit(true, length)
                        .map(|s| (s.plugin.to_owned(), s.failure))
                }) {
                    // the header is out: the response is cut rather than sent unprocessed
                    ctx.failed_plugin = Some(stopped.0.clone());
                    ctx.failed_reason = Some(stopped.1.reason());
                    return Err(Error::explain(
                        PLUGIN_FAILED,
                        format!("plugin {} failed ({})", stopped.0, stopped.1.reason()),
                    ));
                }
                *body = Some(all);
                return Ok(None);
            }
        }
        if !end_of_stream {
            return Ok(None);
        }
        let Some(held) = ctx.held_response.take() else {
            return Ok(None);
        };
        ctx.large_body |= held.buffer.len() >= LARGE_BODY;
        let whole = held.buffer.freeze();
        let plugins = std::mem::take(&mut ctx.held_plugins);
        match run_response_body(
            plugins,
            session.req_header_mut(),
            held.status,
            &held.headers,
            whole.clone(),
            ctx.client_ip,
            &mut ctx.filter_streams,
        ) {
            Ok(replaced) => {
                *body = Some(replaced.unwrap_or(whole));
                Ok(None)
            }
            Err((plugin, failure)) => {
                // the header is out: the response is cut rather than sent unprocessed
                let e = Error::explain(
                    PLUGIN_FAILED,
                    format!("plugin {plugin} failed ({})", failure.reason()),
                );
                ctx.failed_plugin = Some(plugin);
                ctx.failed_reason = Some(failure.reason());
                Err(e)
            }
        }
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if !ctx.response_started {
            let status = upstream_response.status.as_u16();
            if status == 101 {
                crate::metrics::METRICS.websocket_upgrades.inc();
                crate::metrics::METRICS.websocket_open.inc();
                ctx.upgraded = true;
            }
            ctx.record(Outcome::Ok);
            ctx.report(&Evidence::Status(status));
            if ctx.retries_status(session, status) {
                // nothing has reached the client: drop this answer, try another node
                return Err(Error::explain(
                    RETRY_STATUS,
                    format!("answered {status}, one of the upstream's retry_statuses"),
                ));
            }
            ctx.response_started = true;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let outcome = match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => Outcome::ConnectTimeout,
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
                Outcome::TlsError
            }
            _ => Outcome::ConnectError,
        };
        ctx.record(outcome);
        ctx.report(&Evidence::ConnectFailed(match outcome {
            Outcome::ConnectTimeout => "timed out".to_owned(),
            _ => e.etype().as_str().to_owned(),
        }));
        // Nothing reached the node: any request may go to another one.
        let retry = ctx.may_retry(&e, true);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("node {peer}"));
        if e.etype() == &RETRY_STATUS {
            let retry = ctx.may_retry(&e, true);
            e.set_retry(retry);
            return e;
        }
        if *e.esource() != ErrorSource::Upstream {
            // the client went away or sent something wrong: nothing to retry
            e.set_retry(false);
            return e;
        }
        let timed_out = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        if !ctx.response_started {
            ctx.record(if timed_out {
                Outcome::ResponseTimeout
            } else {
                Outcome::Broken
            });
            if timed_out {
                ctx.report(&Evidence::TimedOut);
            } else if !reused {
                // a pooled connection the node closed while idle says nothing about the node
                ctx.report(&Evidence::ConnectFailed(format!(
                    "connection broke before a response: {}",
                    e.etype().as_str()
                )));
            }
        }
        // A pooled connection that broke before any response byte most likely met the node
        // closing it while idle: the request is sent once more, to the same node, on a fresh
        // connection, whatever its method (see config/README.md for the risk), if its body is
        // still whole in the retry buffer.
        if reused
            && !ctx.response_started
            && !timed_out
            && !ctx.resent
            && !session.as_ref().retry_buffer_truncated()
        {
            if let Some(node) = ctx.node {
                ctx.resent = true;
                ctx.resend_fresh = true;
                ctx.tried.remove(node);
                ctx.attempts -= 1;
                ctx.position = ctx.position.map(|p| p.wrapping_sub(1));
                log::debug!("a pooled connection to node {peer} broke before a response ({e}); resending on a fresh one");
                e.set_retry(true);
                return e;
            }
        }
        // Bytes went to the node. Only an idempotent request whose connection broke before any
        // response header may go elsewhere; a node that timed out may still be working on it.
        let eligible = !ctx.response_started
            && !timed_out
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let retry = ctx.may_retry(&e, eligible);
        e.set_retry(retry);
        e
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Self::CTX,
        _error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // Failed attempts are logged with their API, upstream and node by `may_retry`.
        true
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let (status, code) = match (e.etype(), e.esource()) {
            (t, _) if *t == PLUGIN_FAILED => (500, "plugin_failed"),
            (t, _) if *t == BODY_TOO_LARGE => (413, "payload_too_large"),
            (t, _) if *t == NO_STEERED_NODE => (503, "no_steered_node"),
            (t, _) if *t == RETRY_STATUS => (502, "bad_gateway"),
            (ErrorType::ReadTimedout, ErrorSource::Downstream) => (408, "request_timeout"),
            (ErrorType::HTTPStatus(code), _) => (*code, "error"),
            (
                ErrorType::ConnectTimedout
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout
                | ErrorType::TLSHandshakeTimedout,
                ErrorSource::Upstream,
            ) => (504, "gateway_timeout"),
            (_, ErrorSource::Upstream) => (502, "bad_gateway"),
            (
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => (0, "client_gone"),
            (_, ErrorSource::Downstream) => (400, "bad_request"),
            _ => (500, "internal_error"),
        };
        ctx.error = Some(code);
        if status == 0 {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let runtime = ctx.runtime.clone();
        let api = runtime.as_ref().zip(ctx.api).map(|(r, a)| &r.apis[a]);
        let upstream = runtime.as_ref().and_then(|r| ctx.upstream(r));
        let message = match (status, upstream) {
            (502 | 504, Some(u)) => format!(
                "upstream {} failed after {} attempt{}: {}",
                u.name,
                ctx.attempts,
                if ctx.attempts == 1 { "" } else { "s" },
                describe(e)
            ),
            _ => match (&ctx.failed_plugin, ctx.failed_reason) {
                (Some(plugin), Some(reason)) => format!("plugin {plugin} failed ({reason})"),
                _ => describe(e),
            },
        };
        let plugin = ctx.failed_plugin.as_deref();
        let body = ErrorBody {
            service: api.map(|a| a.service.as_str()),
            api: api.map(|a| a.name.as_str()),
            upstream: upstream
                .filter(|_| plugin.is_none())
                .map(|u| u.name.as_str()),
            attempts: upstream.filter(|_| plugin.is_none()).map(|_| ctx.attempts),
            plugin,
            ..ErrorBody::new(status, code, message)
        };
        let written = if respond::is_grpc(session) && session.is_http2() {
            respond::write_grpc_error(session, &body).await
        } else {
            let bytes = body.to_bytes();
            match body.header(bytes.len()) {
                Ok(mut resp) => {
                    if status == 502 && e.etype() == &NO_NODE {
                        let _ = resp.insert_header(RETRY_AFTER, "1");
                    }
                    session.write_error_response(resp, bytes).await
                }
                Err(err) => Err(err),
            }
        };
        if let Err(err) = written {
            log::debug!("cannot send the error response: {err}");
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        if ctx.upgraded {
            crate::metrics::METRICS.websocket_open.dec();
        }
        if ctx.large_body
            || ctx
                .request_body
                .take()
                .is_some_and(|body| body.len() >= LARGE_BODY)
        {
            // the whole body is freed now: give it back rather than keep it resident
            gatehouse_plugin_host::release_freed_memory();
        }
        if !ctx.filter_streams.is_empty() {
            // the engine keeps the response written: the filters read a copy
            let mut resp = session.response_written().cloned();
            ctx.filter_streams
                .finish(session.req_header_mut(), resp.as_mut(), ctx.client_ip);
        }
        let Some(runtime) = &ctx.runtime else { return };
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        let seconds = elapsed.as_secs_f64();
        let (metrics, share, counter) = match ctx.api {
            Some(api) => {
                let api = &runtime.apis[api];
                (&api.metrics, api.access_share, &api.access_counter)
            }
            None => (
                &runtime.unrouted,
                runtime.unrouted_access_share,
                &runtime.unrouted_access_counter,
            ),
        };
        metrics.observe(status, seconds);
        if let Some(access) = &runtime.access {
            if crate::access::sampled(counter, share) {
                access.push(crate::access::Entry {
                    time: std::time::SystemTime::now(),
                    duration: elapsed,
                    client: ctx.client_ip,
                    method: session.req_header().method.clone(),
                    target: ctx.target.take().unwrap_or_default(),
                    status,
                    bytes_in: session.body_bytes_read() as u64,
                    bytes_out: session.body_bytes_sent() as u64,
                    runtime: Arc::clone(runtime),
                    api: ctx.api,
                    node: ctx.node,
                    attempts: ctx.attempts,
                    request_id: session
                        .req_header()
                        .headers
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    error: ctx.error,
                });
            }
        }
    }
}

/// Gives an HTTP/2 request the shape of an HTTP/1.1 one: its `:authority` becomes the `Host`
/// header (unless it carries one) and its target the path and query, as routing and the
/// backends expect.
fn from_h2_form(req: &mut RequestHeader) -> std::result::Result<(), String> {
    const NOT_A_PATH: &str = "the :path must be a path (origin-form, starting with '/')";
    if req.raw_path().first() != Some(&b'/') {
        return Err(NOT_A_PATH.to_owned());
    }
    let uri = &req.uri;
    if uri.authority().is_none() && uri.scheme().is_none() {
        return Ok(());
    }
    if let Some(authority) = uri.authority().map(|a| a.as_str().to_owned()) {
        if !req.headers.contains_key(HOST) {
            req.insert_header(HOST, authority)
                .map_err(|_| "the :authority is not a valid Host".to_owned())?;
        }
    }
    let target = req
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    match http::Uri::try_from(target) {
        Ok(origin) if origin.path().starts_with('/') => {
            req.set_uri(origin);
            Ok(())
        }
        _ => Err(NOT_A_PATH.to_owned()),
    }
}

/// Drops an HTTP/1.1 request's offer to switch to HTTP/2 (`Upgrade: h2c`): RFC 9113 §3.1 lets a
/// server answer over HTTP/1.1, and clients (curl `--http2`, Java's HTTP client) offer it by
/// default. Other protocols offered in the same `Upgrade` stay.
fn ignore_h2c_upgrade(req: &mut RequestHeader) {
    let Some(offered) = req.headers.get(http::header::UPGRADE) else {
        return;
    };
    let offered = String::from_utf8_lossy(offered.as_bytes()).into_owned();
    if !offered
        .split(',')
        .any(|p| p.trim().eq_ignore_ascii_case("h2c"))
    {
        return;
    }
    let rest: Vec<&str> = offered
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case("h2c"))
        .collect();
    req.remove_header("http2-settings");
    if rest.is_empty() {
        req.remove_header(&http::header::UPGRADE);
    } else {
        let _ = req.insert_header(http::header::UPGRADE, rest.join(", "));
    }
    // the Connection tokens that named what is gone
    let keep_upgrade = !rest.is_empty();
    let tokens: Vec<String> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|t| t.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("http2-settings")
                && (keep_upgrade || !t.eq_ignore_ascii_case("upgrade"))
        })
        .collect();
    req.remove_header(&http::header::CONNECTION);
    if !tokens.is_empty() {
        let _ = req.insert_header(http::header::CONNECTION, tokens.join(", "));
    }
}

/// Whether `host` is a `Host` value RFC 9112 §3.2 allows: a registered name (RFC 3986's
/// unreserved characters, sub-delimiters and percent escapes), an IPv4 address or a bracketed IP
/// literal, then an optional `:port`; empty is allowed (a target without authority).
fn valid_host(host: &[u8]) -> bool {
    let (name, port) = if host.first() == Some(&b'[') {
        let Some(end) = host.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &host[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match &host[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&[][..], Some(port)),
            _ => return false,
        }
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(i) => (&host[..i], Some(&host[i + 1..])),
            None => (host, None),
        }
    };
    let name_ok = name.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    name_ok && port_ok
}

/// Whether the request announces a body (which the gateway has not read when it answers early).
fn body_expected(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req.headers.contains_key(http::header::EXPECT)
        || declared_length(req).is_some_and(|n| n > 0)
}

/// The body length the client declared in `Content-Length`.
fn declared_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// HTTP/1.1 framing and size rules the engine leaves to the application: the status and
/// message to refuse the request with, if it breaks one.
fn check_framing(session: &mut Session, http: &HttpOptions) -> Option<(u16, String)> {
    let req = session.req_header();
    if req.headers.len() > http.max_headers {
        return Some((
            431,
            format!(
                "the request has {} header lines; at most {} are accepted",
                req.headers.len(),
                http.max_headers
            ),
        ));
    }
    let raw = session
        .as_downstream()
        .as_http1()
        .map(|h1| h1.get_headers_raw_bytes());
    if let Some(raw) = &raw {
        if raw.len() > http.max_header_size {
            return Some((
                431,
                format!(
                    "the request header is {} bytes; at most {} are accepted",
                    raw.len(),
                    http.max_header_size
                ),
            ));
        }
    }
    if let Some(raw) = &raw {
        // The engine turns an absolute-form target into its path; the request line tells.
        let target = raw.split(|&b| b == b' ').nth(1).unwrap_or_default();
        if target.first() != Some(&b'/') {
            return Some((
                400,
                "the request target must be a path (origin-form), not an absolute URI or '*'"
                    .to_owned(),
            ));
        }
    }
    let req = session.req_header();
    if req.version == http::Version::HTTP_11 && !req.headers.contains_key(HOST) {
        return Some((
            400,
            "an HTTP/1.1 request must carry a Host header".to_owned(),
        ));
    }
    let mut hosts = req.headers.get_all(HOST).iter();
    if let (Some(host), None) = (hosts.next(), hosts.next()) {
        if !valid_host(host.as_bytes()) {
            return Some((
                400,
                "the Host header must be a host name or IP address, with an optional :port"
                    .to_owned(),
            ));
        }
    }
    if http.underscores_in_headers != Underscores::Allow {
        let underscored: Vec<http::HeaderName> = req
            .headers
            .keys()
            .filter(|name| name.as_str().contains('_'))
            .cloned()
            .collect();
        if let Some(first) = underscored.first() {
            if http.underscores_in_headers == Underscores::Reject {
                return Some((
                    400,
                    format!(
                        "header names with an underscore ({first}) are refused: backends may read them as the dashed name"
                    ),
                ));
            }
            for name in &underscored {
                session.req_header_mut().remove_header(name);
            }
        }
    }
    let req = session.req_header();
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        // The engine drops Content-Length when Transfer-Encoding is present; the raw header
        // still shows it. Both at once is how request smuggling starts: refuse.
        if raw.as_deref().is_some_and(has_content_length_line) {
            return Some((
                400,
                "the request carries both Content-Length and Transfer-Encoding".to_owned(),
            ));
        }
    }
    let lengths = req.headers.get_all(http::header::CONTENT_LENGTH);
    let mut values = lengths.iter();
    if let (Some(first), Some(_)) = (values.next(), values.next()) {
        let first = first.clone();
        if lengths
            .iter()
            .all(|v| v.as_bytes().trim_ascii() == first.as_bytes().trim_ascii())
        {
            // equal duplicates: one goes upstream
            let _ = session
                .req_header_mut()
                .insert_header(http::header::CONTENT_LENGTH, first);
        } else {
            return Some((
                400,
                "the request carries different Content-Length values".to_owned(),
            ));
        }
    }
    None
}

/// Whether a raw request header has a `Content-Length` line.
fn has_content_length_line(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// Checks the request target and brings its path to the canonical form
/// ([`gatehouse_config::canonical`]): `Ok(Some(uri))` when it must be replaced, `Ok(None)` when
/// it is canonical already (the common case: no allocation), the client's error otherwise.
fn canonical_target(
    req: &RequestHeader,
    http: &HttpOptions,
) -> Result<Option<http::Uri>, Cow<'static, str>> {
    let uri = &req.uri;
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(Cow::Borrowed(
            "the request target must be a path (origin-form), not an absolute URI",
        ));
    }
    let path = match canonical::canonicalize(uri.path(), &PathRules::from(http)) {
        Ok(Cow::Borrowed(_)) => return Ok(None),
        Ok(Cow::Owned(path)) => path,
        Err(e) => return Err(Cow::Owned(e.to_string())),
    };
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    http::Uri::try_from(target)
        .map(Some)
        .map_err(|_| Cow::Borrowed("the request target is not a valid path and query"))
}

/// Routes a request whose path is canonical and renders its backend path.
fn decide(runtime: &Runtime, req: &RequestHeader) -> Decision {
    let path = req.uri.path();
    match runtime.router.lookup(&req.method, path) {
        RouteMatch::NotFound => Decision::NotFound,
        RouteMatch::MethodNotAllowed { allow } => Decision::MethodNotAllowed(allow.to_owned()),
        RouteMatch::Found { api, params } => match &runtime.apis[api].backend {
            ApiBackend::Fixed(_) => Decision::Fixed(api),
            ApiBackend::Upstream { path: None, .. } => Decision::Proxy { api, mapped: None },
            ApiBackend::Upstream {
                path: Some(template),
                ..
            } => {
                let mut rendered = String::with_capacity(template.as_str().len() + path.len());
                params.render(template, &mut rendered);
                match compose(&rendered, req.uri.query(), Conflict::Refuse) {
                    Ok(uri) => Decision::Proxy {
                        api,
                        mapped: Some((rendered, uri)),
                    },
                    Err(message) => Decision::BadRequest(message),
                }
            }
        },
    }
}

/// What happens to a query parameter whose name the backend path template already sets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Conflict {
    /// The client's request is refused (400): it tried to override the API's mapping.
    Refuse,
    /// The parameter is left out (a plugin's query edit never overrides the mapping either).
    Drop,
}

/// The URI sent upstream: the rendered backend path (which may carry a query of its own)
/// followed by the request's query.
fn compose(
    rendered: &str,
    query: Option<&str>,
    conflict: Conflict,
) -> Result<http::Uri, Cow<'static, str>> {
    let query = query.filter(|q| !q.is_empty());
    let fixed = rendered.split_once('?').map(|(_, q)| q);
    let mut target = String::with_capacity(rendered.len() + query.map_or(0, |q| q.len() + 1));
    target.push_str(rendered);
    if let Some(query) = query {
        let mut separator = if fixed.is_some() { '&' } else { '?' };
        let mut push = |target: &mut String, param: &str| {
            target.push(separator);
            target.push_str(param);
            separator = '&';
        };
        match fixed {
            None => push(&mut target, query),
            Some(fixed) => {
                let taken = |name: &str| {
                    fixed
                        .split('&')
                        .any(|p| decode_query_name(p.split('=').next().unwrap_or("")) == name)
                };
                for param in query.split('&').filter(|p| !p.is_empty()) {
                    let name = decode_query_name(param.split('=').next().unwrap_or(""));
                    if !taken(&name) {
                        push(&mut target, param);
                    } else if conflict == Conflict::Refuse {
                        return Err(Cow::Owned(format!(
                            "query parameter {name:?} is set by the API's backend path and \
                             cannot be given by the client"
                        )));
                    }
                }
            }
        }
    }
    http::Uri::try_from(target)
        .map_err(|_| Cow::Borrowed("the request target is not a valid path and query"))
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host`, `X-Real-IP` and `Forwarded`. From a peer in
/// `trusted_proxies` the incoming values are kept and extended; from any other peer they are
/// replaced by what the gateway saw, so a client cannot forge its address or scheme.
/// A short description of a proxy error for the client.
fn describe(e: &Error) -> String {
    match e.etype() {
        ErrorType::ConnectRefused => "connection refused".to_owned(),
        ErrorType::ConnectTimedout => "connect timed out".to_owned(),
        ErrorType::ReadTimedout => "the node did not answer within the backend timeout".to_owned(),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
            "TLS handshake failed".to_owned()
        }
        t if *t == NO_NODE => "no node available".to_owned(),
        t if *t == NO_STEERED_NODE => e
            .context
            .as_ref()
            .map_or_else(|| "no steered node available".to_owned(), |c| c.to_string()),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            "the connection to the node broke".to_owned()
        }
        other => other.as_str().to_owned(),
    }
}

/// The length on the wire of an HTTP/1 request's header when the request has no body (neither a
/// `Transfer-Encoding` nor a non-zero `Content-Length`): all the engine reads for it when the
/// client sends nothing more. `None` for other requests.
fn bodyless_header_len(session: &Session) -> Option<usize> {
    let headers = &session.req_header().headers;
    let bodyless = !headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers
            .get(http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
    if !bodyless {
        return None;
    }
    let h1 = session.as_downstream().as_http1()?;
    Some(h1.get_headers_raw_bytes().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_query_cannot_override_the_mapping() {
        let uri = compose("/v2/orders/9?user=7", Some("x=1&us%65r=8"), Conflict::Drop).unwrap();
        assert_eq!(uri, "/v2/orders/9?user=7&x=1");
        assert!(compose("/v2/orders/9?user=7", Some("user=8"), Conflict::Refuse).is_err());
        let uri = compose("/v1/users/7", Some("a=1&b"), Conflict::Refuse).unwrap();
        assert_eq!(uri, "/v1/users/7?a=1&b");
        assert_eq!(compose("/v1", Some(""), Conflict::Refuse).unwrap(), "/v1");
    }
}
