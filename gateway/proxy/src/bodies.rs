//! Whole bodies for the plugins that read them: the request body read before the first
//! `on-request` plugin runs, and the response body held until it is complete. APIs whose plugins
//! read no body never come here: their bodies stream.
//!
//! The request body is read in the request phase, before any upstream connection. The engine
//! then sends the upstream what it kept for retries (its retry buffer) and the request body
//! filter replaces that with the whole body, the plugins' version of it. The engine keeps the
//! last 64 KiB it read, so reading switches that buffer on while the rest of a body of known
//! length fits in it; a body of unknown length (chunked, or HTTP/2 without `content-length`)
//! over 64 KiB cannot be resent and is refused with 411.

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use pingora::Result;

/// What the engine keeps of a request body to resend it (its retry buffer).
const ENGINE_RESEND_BUFFER: u64 = 64 * 1024;

/// Why a request body was not read.
pub enum Refused {
    /// Over the plugins' body limit (or the API's): 413.
    TooLarge { limit: u64, length: Option<u64> },
    /// Of unknown length and over what the engine can resend: 411.
    LengthRequired,
}

/// Reads the whole request body, at most `limit` bytes. `declared` is its `Content-Length`.
pub async fn read_request(
    session: &mut Session,
    declared: Option<u64>,
    limit: u64,
) -> Result<std::result::Result<Bytes, Refused>> {
    if let Some(length) = declared.filter(|l| *l > limit) {
        return Ok(Err(Refused::TooLarge {
            limit,
            length: Some(length),
        }));
    }
    // keep what the engine resends from where the rest fits in its buffer
    let resend_from = declared.map_or(0, |l| l.saturating_sub(ENGINE_RESEND_BUFFER));
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    loop {
        if body.len() as u64 >= resend_from {
            session.enable_retry_buffering();
        }
        // a failure here is the client's (a stalled body times out at `body_timeout`: 408)
        let read = session.read_request_body().await.map_err(|mut e| {
            e.as_down();
            e
        });
        let Some(chunk) = read? else {
            crate::listener::body_progress(true);
            break;
        };
        crate::listener::body_progress(false);
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(Err(Refused::TooLarge {
                limit,
                length: None,
            }));
        }
        body.extend_from_slice(&chunk);
    }
    if !body.is_empty() && session.get_retry_buffer().is_none() {
        return Ok(Err(Refused::LengthRequired));
    }
    Ok(Ok(body.freeze()))
}

/// A response body being held whole for `on-response-body` plugins.
pub struct HeldResponse {
    pub buffer: BytesMut,
    pub limit: usize,
    pub status: u16,
    /// The response's headers as they went to the client.
    pub headers: http::HeaderMap,
}

impl HeldResponse {
    /// Adds a chunk; `Err` with everything held so far and the chunk when that goes over the
    /// limit (the body then streams on unchanged).
    pub fn push(&mut self, chunk: Bytes) -> std::result::Result<(), Bytes> {
        if self.buffer.len() + chunk.len() > self.limit {
            let mut all = std::mem::take(&mut self.buffer);
            all.extend_from_slice(&chunk);
            return Err(all.freeze());
        }
        self.buffer.extend_from_slice(&chunk);
        Ok(())
    }
}

/// Whether a response to `method` with `status` has a body at all.
pub fn response_has_body(method: &http::Method, status: u16) -> bool {
    method != http::Method::HEAD && !matches!(status, 100..=199 | 204 | 304)
}
