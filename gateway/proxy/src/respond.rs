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

/// Writes an error answer; the downstream connection stays usable for the next request.
pub async fn write_error(
    session: &mut Session,
    error: &ErrorBody<'_>,
    extra: Option<(http::HeaderName, &str)>,
) -> Result<()> {
    let body = error.to_bytes();
    let mut resp = error.header(body.len())?;
    if let Some((name, value)) = extra {
        resp.insert_header(name, value)?;
    }
    write(session, resp, body).await
}

/// Writes a complete response.
pub async fn write(session: &mut Session, resp: ResponseHeader, body: Bytes) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    if body.is_empty() || head_only {
        session.write_response_header(Box::new(resp), true).await
    } else {
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }
}
