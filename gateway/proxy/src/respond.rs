//! Answers the gateway writes itself: JSON errors (404, 405, 400, 502, 504, ...) and fixed API
//! responses.
//!
//! Every error body has the same shape, so clients and operators can rely on it:
//! `{"status":502,"error":"bad_gateway","message":"...","service":"shop","api":"get_user","upstream":"user_service"}`
//! (the last three only when known).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde::Serialize;

/// The body of every error the gateway answers itself.
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub status: u16,
    pub error: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<&'a str>,
}

impl<'a> ErrorBody<'a> {
    pub fn new(status: u16, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
            service: None,
            api: None,
            upstream: None,
            attempts: None,
            plugin: None,
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut body = serde_json::to_vec(self).unwrap_or_default();
        body.push(b'\n');
        Bytes::from(body)
    }

    /// The response header for this error, with JSON content type and length.
    pub fn header(&self, body_len: usize) -> Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.status, Some(4))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body_len)?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        Ok(resp)
    }
}

/// Most of a gRPC request the gateway reads before answering an error.
const GRPC_DRAIN_LIMIT: usize = 64 * 1024;

/// Whether the request is a gRPC call (its errors are answered the gRPC way).
pub fn is_grpc(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status code for an error the gateway answers with `status`.
fn grpc_code(status: u16) -> u8 {
    match status {
        400 | 405 | 431 => 3, // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        404 | 415 => 12,      // UNIMPLEMENTED: no such method, or not for gRPC here
        408 | 504 => 4,       // DEADLINE_EXCEEDED
        413 | 429 => 8,       // RESOURCE_EXHAUSTED
        502 | 503 => 14,      // UNAVAILABLE
        _ => 13,              // INTERNAL
    }
}

impl ErrorBody<'_> {
    /// `grpc-status` and the percent-encoded `grpc-message` of this error.
    fn grpc_trailers(&self) -> http::HeaderMap {
        let message: String = format!("{}: {}", self.error, self.message)
            .bytes()
            .map(|b| match b {
                0x20..=0x7e if b != b'%' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let mut trailers = http::HeaderMap::new();
        trailers.insert(
            "grpc-status",
            http::HeaderValue::from(u16::from(grpc_code(self.status))),
        );
        if let Ok(v) = http::HeaderValue::from_str(&message) {
            trailers.insert("grpc-message", v);
        }
        trailers
    }
}

/// Answers a gRPC call with an error as gRPC clients read it: HTTP 200, `application/grpc`, no
/// message, and the status in the trailers.
pub async fn write_grpc_error(session: &mut Session, error: &ErrorBody<'_>) -> Result<()> {
    // a response that ends while the client is still sending reads as a broken stream to
    // gRPC clients: read the (small, bounded) request message first
    let mut read = 0;
    while read < GRPC_DRAIN_LIMIT {
        match session.read_request_body().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
    let mut resp = ResponseHeader::build(200, Some(2))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_trailers(error.grpc_trailers()).await
}

/// Writes an error answer; the downstream connection stays usable for the next request.
pub async fn write_error(
    session: &mut Session,
    error: &ErrorBody<'_>,
    extra: Option<(http::HeaderName, &str)>,
) -> Result<()> {
    if is_grpc(session) && session.is_http2() {
        return write_grpc_error(session, error).await;
    }
    let body = error.to_bytes();
    let mut resp = error.header(body.len())?;
    if let Some((name, value)) = extra {
        resp.insert_header(name, value)?;
    }
    write(session, resp, body).await
}

/// Writes a complete response.
pub async fn write(session: &mut Session, resp: ResponseHeader, body: Bytes) -> Result<()> {
    if crate::listener::draining() {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    if body.is_empty() || head_only {
        session.write_response_header(Box::new(resp), true).await
    } else {
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }
}
