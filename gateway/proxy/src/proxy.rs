//! The gateway's Pingora `ProxyHttp`: routes each request to its API, answers gateway-made
//! responses, picks a node by smooth weighted round robin, retries failed nodes, sets the Host and
//! forwarding headers, and counts everything.
//!
//! Phases, in the order Pingora calls them:
//! - `request_filter`: load the runtime snapshot, route, answer 400/404/405 and fixed responses;
//! - `upstream_peer`: pick a node this request has not tried (called again for each retry);
//! - `fail_to_connect` / `error_while_proxy`: record the failed attempt and decide on a retry;
//! - `upstream_request_filter`: backend path, Host, `X-Forwarded-*`;
//! - `upstream_response_filter`: the attempt succeeded;
//! - `fail_to_proxy`: every attempt failed, answer 502/504 as JSON;
//! - `logging`: request metrics.

use std::net::IpAddr;
use std::sync::Arc;

use gatehouse_plugin_host::Node;
use std::time::Instant;

use async_trait::async_trait;
use http::header::{HOST, RETRY_AFTER};
use http::{HeaderName, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::metrics::Outcome;
use crate::plugins::{ApiPlugins, Decision as PluginDecision, Stopped};
use crate::respond::{self, ErrorBody};
use crate::route::RouteMatch;
use crate::runtime::{ApiBackend, ApiRuntime, Runtime, SharedRuntime};
use crate::selection::TriedSet;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Error raised when an upstream has no node left to try.
const NO_NODE: ErrorType = ErrorType::Custom("NoNodeAvailable");
/// Error raised when a `fail_closed` plugin failed after the request phase.
const PLUGIN_FAILED: ErrorType = ErrorType::Custom("PluginFailed");

/// The proxy logic; one per process, shared by all worker threads.
pub struct Gateway {
    runtime: SharedRuntime,
}

impl Gateway {
    pub fn new(runtime: SharedRuntime) -> Self {
        Self { runtime }
    }
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    /// The snapshot this request uses from start to end.
    runtime: Option<Arc<Runtime>>,
    api: Option<usize>,
    /// Path and query to send upstream, when the API maps the path.
    upstream_uri: Option<http::Uri>,
    tried: TriedSet,
    attempts: u32,
    /// The node of the current attempt and its position in the upstream's schedule.
    node: Option<usize>,
    position: Option<usize>,
    /// A response header arrived from a node: nothing can be retried any more.
    response_started: bool,
    client_ip: Option<IpAddr>,
    /// The Host the client sent, before any plugin changed it (for `X-Forwarded-Host`).
    client_host: Option<http::HeaderValue>,
    /// A plugin set the Host header: the upstream's `host_header` does not override it.
    host_set_by_plugin: bool,
    /// The plugin whose failure stopped the request, for the error answer.
    failed_plugin: Option<String>,
}

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

    /// Whether another attempt is allowed and possible; counts and logs the failed attempt.
    fn may_retry(&self, e: &Error, eligible: bool) -> bool {
        let Some(runtime) = &self.runtime else {
            return false;
        };
        let Some(upstream) = self.upstream(runtime) else {
            return false;
        };
        let allowed =
            eligible && self.attempts <= upstream.retries && upstream.has_untried(&self.tried);
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

/// The answer to a request a `fail_closed` plugin stopped.
fn plugin_error<'a>(api: &'a ApiRuntime, stopped: &'a Stopped<'a>) -> ErrorBody<'a> {
    ErrorBody {
        service: Some(&api.service),
        api: Some(&api.name),
        plugin: Some(stopped.plugin),
        ..ErrorBody::new(
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
            .on_request(session.req_header_mut(), ctx.client_ip)
        {
            PluginDecision::Proceed {
                uri_changed,
                host_changed,
            } => {
                if uri_changed {
                    // the plugin's path replaces the API's backend path mapping
                    ctx.upstream_uri = None;
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
                respond::write_error(session, &body, None).await?;
                Ok(true)
            }
        }
    }

    /// Runs the API's `on-upstream-request` plugins for the current attempt.
    fn run_upstream_plugins(
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
            address: n.peer().map(|p| p._address.to_string()).unwrap_or_default(),
        };
        plugins
            .on_upstream_request(upstream_request, ctx.client_ip, &node)
            .map_err(|stopped| ctx.stop(stopped))
    }
}

/// What routing decided, detached from the borrowed request.
enum Decision {
    Proxy { api: usize, uri: Option<http::Uri> },
    Fixed(usize),
    NotFound,
    MethodNotAllowed(String),
    BadPath,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            started: Instant::now(),
            runtime: None,
            api: None,
            upstream_uri: None,
            tried: TriedSet::default(),
            attempts: 0,
            node: None,
            position: None,
            response_started: false,
            client_ip: None,
            client_host: None,
            host_set_by_plugin: false,
            failed_plugin: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let runtime = self.runtime.load();
        let decision = decide(&runtime, session.req_header());
        ctx.runtime = Some(runtime.clone());
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_host = session.req_header().headers.get(HOST).cloned();
        match decision {
            Decision::Proxy { api, uri } => {
                ctx.api = Some(api);
                ctx.upstream_uri = uri;
                if self
                    .run_request_plugins(session, ctx, &runtime, api)
                    .await?
                {
                    return Ok(true);
                }
                let method = &session.req_header().method;
                if method.is_idempotent() && method != Method::GET && method != Method::HEAD {
                    // PUT and DELETE may carry a body; keep it so a retry can send it again.
                    session.enable_retry_buffering();
                }
                Ok(false)
            }
            Decision::Fixed(api) => {
                ctx.api = Some(api);
                if self
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
                if !plugins.is_empty() {
                    if let Err(stopped) =
                        plugins.on_response(session.req_header_mut(), &mut resp, ctx.client_ip)
                    {
                        let body = plugin_error(&runtime.apis[api], &stopped);
                        respond::write_error(session, &body, None).await?;
                        return Ok(true);
                    }
                }
                respond::write(session, resp, answer.body.clone()).await?;
                Ok(true)
            }
            Decision::NotFound => {
                let path = session.req_header().uri.path();
                let body = ErrorBody::new(404, "not_found", format!("no API serves {path}"));
                respond::write_error(session, &body, None).await?;
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
                respond::write_error(session, &body, Some((http::header::ALLOW, &allow))).await?;
                Ok(true)
            }
            Decision::BadPath => {
                let body = ErrorBody::new(
                    400,
                    "bad_request",
                    "the request path must start with '/' and contain no '.' or '..' segments",
                );
                respond::write_error(session, &body, None).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let runtime = ctx
            .runtime
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "request was not routed"))?;
        let api = &runtime.apis[ctx.api.unwrap_or_default()];
        let ApiBackend::Upstream {
            upstream, timeout, ..
        } = &api.backend
        else {
            return Error::e_explain(ErrorType::InternalError, "API has no upstream");
        };
        let upstream = &runtime.upstreams[*upstream];
        let Some((position, node)) = upstream.pick(ctx.position, &ctx.tried) else {
            ctx.node = None;
            return Err(Error::create(
                NO_NODE,
                ErrorSource::Upstream,
                Some(format!("upstream {} has no node to try", upstream.name).into()),
                None,
            ));
        };
        let Some(template) = upstream.nodes[node].peer() else {
            return Error::e_explain(NO_NODE, "node lost its address");
        };
        ctx.tried.insert(node);
        ctx.node = Some(node);
        ctx.position = Some(position);
        ctx.attempts += 1;
        let mut peer = Box::new(HttpPeer::clone(&template));
        peer.options.read_timeout = Some(*timeout);
        peer.options.write_timeout = Some(*timeout);
        Ok(peer)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(uri) = &ctx.upstream_uri {
            upstream_request.set_uri(uri.clone());
        }
        if let Some(host) = &ctx.client_host {
            upstream_request.insert_header(X_FORWARDED_HOST, host.clone())?;
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
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let forwarded = match upstream_request
                .headers
                .get(X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
            {
                Some(prior) => format!("{prior}, {ip}"),
                None => ip.to_string(),
            };
            upstream_request.insert_header(X_FORWARDED_FOR, forwarded)?;
        }
        upstream_request.insert_header(X_FORWARDED_PROTO, "http")?;
        self.run_upstream_plugins(upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(plugins) = ctx.plugins() else {
            return Ok(());
        };
        plugins
            .on_response(session.req_header_mut(), upstream_response, ctx.client_ip)
            .map_err(|stopped| ctx.stop(stopped))
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if !ctx.response_started {
            ctx.response_started = true;
            ctx.record(Outcome::Ok);
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
        if let (Some(runtime), Some(node)) = (&ctx.runtime, ctx.node) {
            if let Some(upstream) = ctx.upstream(runtime) {
                upstream.eject(node);
            }
        }
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
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("node {peer}"));
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
            _ => describe(e),
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
        let bytes = body.to_bytes();
        let written = match body.header(bytes.len()) {
            Ok(mut resp) => {
                if status == 502 && e.etype() == &NO_NODE {
                    let _ = resp.insert_header(RETRY_AFTER, "1");
                }
                session.write_error_response(resp, bytes).await
            }
            Err(err) => Err(err),
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
        let Some(runtime) = &ctx.runtime else { return };
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let seconds = ctx.started.elapsed().as_secs_f64();
        match ctx.api {
            Some(api) => runtime.apis[api].metrics.observe(status, seconds),
            None => runtime.unrouted.observe(status, seconds),
        }
    }
}

/// Routes a request and renders its backend path.
fn decide(runtime: &Runtime, req: &RequestHeader) -> Decision {
    let path = req.uri.path();
    if !path.starts_with('/') || has_dot_segment(path) {
        return Decision::BadPath;
    }
    match runtime.router.lookup(&req.method, path) {
        RouteMatch::NotFound => Decision::NotFound,
        RouteMatch::MethodNotAllowed { allow } => Decision::MethodNotAllowed(allow.to_owned()),
        RouteMatch::Found { api, params } => match &runtime.apis[api].backend {
            ApiBackend::Fixed(_) => Decision::Fixed(api),
            ApiBackend::Upstream { path: None, .. } => Decision::Proxy { api, uri: None },
            ApiBackend::Upstream {
                path: Some(template),
                ..
            } => {
                let query = req.uri.query();
                let mut target = String::with_capacity(
                    template.as_str().len() + path.len() + query.map_or(0, |q| q.len() + 1),
                );
                params.render(template, &mut target);
                if let Some(q) = query {
                    target.push(if target.contains('?') { '&' } else { '?' });
                    target.push_str(q);
                }
                match http::Uri::try_from(target) {
                    Ok(uri) => Decision::Proxy {
                        api,
                        uri: Some(uri),
                    },
                    Err(_) => Decision::BadPath,
                }
            }
        },
    }
}

/// Whether a path has a `.` or `..` segment, which backends would resolve differently from the
/// gateway's router.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| {
        s == "."
            || s == ".."
            || s.eq_ignore_ascii_case("%2e")
            || s.eq_ignore_ascii_case("%2e%2e")
            || s.eq_ignore_ascii_case(".%2e")
            || s.eq_ignore_ascii_case("%2e.")
    })
}

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
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            "the connection to the node broke".to_owned()
        }
        other => other.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_detected() {
        for bad in ["/a/../b", "/a/./b", "/..", "/a/%2e%2E/b", "/a/.%2e"] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in ["/a/b", "/a/.well-known", "/a/b..c", "/"] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }
}
