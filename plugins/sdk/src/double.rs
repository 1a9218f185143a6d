//! Off `wasm32`: in-memory stand-ins for the gateway, so plugin code runs under `cargo test`.
//!
//! They follow `wit/plugin.wit` and the gateway: header names are case-insensitive and listed in
//! lower case, a read-only request (see [`Request::freeze`]) refuses changes, and header names
//! that are not tokens, header values that are not visible ASCII on one line and paths not
//! starting with `/` are refused.

use std::cell::{Cell, RefCell};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Fallback, LogLevel, Steer};

/// A request handed to a hook (test double: build one with [`Request::new`]).
pub struct Request {
    state: RefCell<RequestState>,
}

struct RequestState {
    method: String,
    path: String,
    query: Option<String>,
    headers: Headers,
    client_addr: String,
    service: String,
    api: String,
    read_only: bool,
    body: Option<Vec<u8>>,
    steered: Option<(Steer, Fallback)>,
    retries: Option<u32>,
}

/// The response going to the client (test double: build one with [`Response::new`]).
pub struct Response {
    status: u16,
    headers: RefCell<Headers>,
}

/// Header list with the gateway's rules: names compared case-insensitively, kept in lower case.
#[derive(Default)]
struct Headers(Vec<(String, String)>);

impl Headers {
    fn first(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        check_header(name, value)?;
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
        Ok(())
    }

    fn append(&mut self, name: &str, value: &str) -> Result<(), String> {
        check_header(name, value)?;
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), String> {
        check_name(name)?;
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("invalid header name {name:?}"));
    }
    Ok(())
}

fn check_header(name: &str, value: &str) -> Result<(), String> {
    check_name(name)?;
    if !value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return Err("header values must be visible ASCII on one line".to_string());
    }
    Ok(())
}

impl Request {
    /// A request for `method` and `target` (a path, optionally followed by `?query`) from
    /// client `127.0.0.1`, routed to service `test` and API `test`.
    pub fn new(method: &str, target: &str) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query.to_string())),
            None => (target, None),
        };
        Request {
            state: RefCell::new(RequestState {
                method: method.to_string(),
                path: path.to_string(),
                query,
                headers: Headers::default(),
                client_addr: "127.0.0.1".to_string(),
                service: "test".to_string(),
                api: "test".to_string(),
                read_only: false,
                body: None,
                steered: None,
                retries: None,
            }),
        }
    }

    /// Adds a header (builder).
    pub fn with_header(self, name: &str, value: &str) -> Self {
        self.state
            .borrow_mut()
            .headers
            .append(name, value)
            .expect("valid test header");
        self
    }

    /// Sets the client's IP address (builder).
    pub fn with_client_addr(self, addr: &str) -> Self {
        self.state.borrow_mut().client_addr = addr.to_string();
        self
    }

    /// Sets the service and API names (builder).
    pub fn with_route(self, service: &str, api: &str) -> Self {
        let mut state = self.state.borrow_mut();
        state.service = service.to_string();
        state.api = api.to_string();
        drop(state);
        self
    }

    /// Gives the request a body, as the gateway does for a plugin that needs it (builder).
    pub fn with_body(self, body: impl Into<Vec<u8>>) -> Self {
        self.state.borrow_mut().body = Some(body.into());
        self
    }

    /// Makes the request read-only, as the gateway does before `on_response`.
    pub fn freeze(&self) {
        self.state.borrow_mut().read_only = true;
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> String {
        self.state.borrow().method.clone()
    }

    /// Lets only the upstream's nodes tagged `tag` serve this request.
    pub fn steer_to_tag(&self, tag: &str, fallback: Fallback) -> Result<(), String> {
        self.steer(Steer::Tag(tag.to_string()), fallback)
    }

    /// Lets only one node serve this request.
    pub fn steer_to_node(&self, address: &str, fallback: Fallback) -> Result<(), String> {
        self.steer(Steer::Node(address.to_string()), fallback)
    }

    fn steer(&self, to: Steer, fallback: Fallback) -> Result<(), String> {
        self.change(|state| {
            state.steered = Some((to, fallback));
            Ok(())
        })
        .map_err(|_| "requests can be steered only in on-request".to_string())
    }

    /// Retries this request at most `retries` times (the lowest count set holds).
    pub fn limit_retries(&self, retries: u32) -> Result<(), String> {
        self.change(|state| {
            state.retries = Some(state.retries.map_or(retries, |r| r.min(retries)));
            Ok(())
        })
        .map_err(|_| "requests can be steered only in on-request".to_string())
    }

    /// Where the plugin steered the request, if it did (test double only).
    pub fn steered(&self) -> Option<(Steer, Fallback)> {
        self.state.borrow().steered.clone()
    }

    /// The retry count the plugin set, if it did (test double only).
    pub fn retry_limit(&self) -> Option<u32> {
        self.state.borrow().retries
    }

    /// The path, without the query.
    pub fn path(&self) -> String {
        self.state.borrow().path.clone()
    }

    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<String> {
        self.state.borrow().query.clone()
    }

    /// The first value of a header (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.state.borrow().headers.first(name)
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.state.borrow().headers.all(name)
    }

    /// Every header, names in lower case.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.state.borrow().headers.0.clone()
    }

    /// The client's IP address.
    pub fn client_addr(&self) -> String {
        self.state.borrow().client_addr.clone()
    }

    /// The service this request was routed to.
    pub fn service(&self) -> String {
        self.state.borrow().service.clone()
    }

    /// The API this request was routed to.
    pub fn api(&self) -> String {
        self.state.borrow().api.clone()
    }

    fn change(
        &self,
        f: impl FnOnce(&mut RequestState) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut state = self.state.borrow_mut();
        if state.read_only {
            return Err("the request is read-only in on-response".to_string());
        }
        f(&mut state)
    }

    /// Replaces the path sent upstream (must start with `/`).
    pub fn set_path(&self, path: &str) -> Result<(), String> {
        self.change(|state| {
            if !path.starts_with('/')
                || path
                    .bytes()
                    .any(|b| b <= b' ' || b == b'?' || b == b'#' || b == 0x7f)
            {
                return Err(format!("invalid path {path:?}"));
            }
            state.path = path.to_string();
            Ok(())
        })
    }

    /// Replaces the query sent upstream; `None` removes it.
    pub fn set_query(&self, query: Option<&str>) -> Result<(), String> {
        self.change(|state| {
            if let Some(query) = query {
                if query.bytes().any(|b| b <= b' ' || b == b'#' || b == 0x7f) {
                    return Err(format!("invalid query {query:?}"));
                }
            }
            state.query = query.map(str::to_string);
            Ok(())
        })
    }

    /// Sets a header, replacing every value it had.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.change(|state| state.headers.set(name, value))
    }

    /// Adds a value to a header.
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.change(|state| state.headers.append(name, value))
    }

    /// Removes every value of a header.
    pub fn remove_header(&self, name: &str) -> Result<(), String> {
        self.change(|state| state.headers.remove(name))
    }

    /// The whole request body (set with [`Request::with_body`]; an error without one, as the
    /// gateway answers a plugin that did not declare it).
    pub fn body(&self) -> Result<Vec<u8>, String> {
        let state = self.state.borrow();
        match &state.body {
            Some(body) if !state.read_only => Ok(body.clone()),
            _ => Err(
                "the body can be read only in on-request, by a plugin granted request_body"
                    .to_string(),
            ),
        }
    }

    /// Replaces the request body.
    pub fn set_body(&self, body: &[u8]) -> Result<(), String> {
        self.change(|state| match &mut state.body {
            Some(old) => {
                *old = body.to_vec();
                Ok(())
            }
            None => Err(
                "the body can be set only in on-request, by a plugin granted request_body"
                    .to_string(),
            ),
        })
    }
}

impl Response {
    /// A response with `status` and no header.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: RefCell::default(),
        }
    }

    /// Adds a header (builder).
    pub fn with_header(self, name: &str, value: &str) -> Self {
        self.headers
            .borrow_mut()
            .append(name, value)
            .expect("valid test header");
        self
    }

    /// Every value of a header, in order (test double only: the WIT has no such getter).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers.borrow().all(name)
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of a header (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.borrow().first(name)
    }

    /// Every header, names in lower case.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.headers.borrow().0.clone()
    }

    /// Sets a header, replacing every value it had.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.headers.borrow_mut().set(name, value)
    }

    /// Adds a value to a header.
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), String> {
        self.headers.borrow_mut().append(name, value)
    }

    /// Removes every value of a header.
    pub fn remove_header(&self, name: &str) -> Result<(), String> {
        self.headers.borrow_mut().remove(name)
    }
}

pub(crate) fn log(level: LogLevel, message: &str) {
    eprintln!("[plugin {level:?}] {message}");
}

thread_local! {
    /// The test thread's counters: key -> (window length, window number, count).
    static COUNTERS: RefCell<std::collections::HashMap<String, (u64, u64, u64)>> =
        RefCell::new(std::collections::HashMap::new());
}

fn counter(
    key: &str,
    delta: Option<u64>,
    window_ms: u64,
) -> Result<crate::counters::Window, String> {
    if key.is_empty() || key.len() > 256 {
        return Err(format!(
            "a counter key has 1 to 256 bytes, not {}",
            key.len()
        ));
    }
    if !(1_000..=86_400_000).contains(&window_ms) {
        return Err(format!(
            "a window of {window_ms} ms: windows are 1 s to 1 day (1000 to 86400000 ms)"
        ));
    }
    let now = now_millis();
    let window = now / window_ms;
    let resets_in_ms = (window + 1) * window_ms - now;
    COUNTERS.with(|all| {
        let mut all = all.borrow_mut();
        let entry = match delta {
            Some(_) => all.entry(key.to_string()).or_insert((window_ms, window, 0)),
            None => match all.get_mut(key) {
                Some(entry) => entry,
                None => {
                    return Ok(crate::counters::Window {
                        count: 0,
                        resets_in_ms,
                    })
                }
            },
        };
        if entry.0 != window_ms {
            return Err(format!(
                "counter {key:?} counts in windows of {} ms, not {window_ms} ms",
                entry.0
            ));
        }
        if entry.1 != window {
            *entry = (window_ms, window, 0);
        }
        entry.2 = entry.2.saturating_add(delta.unwrap_or(0));
        Ok(crate::counters::Window {
            count: entry.2,
            resets_in_ms,
        })
    })
}

pub(crate) fn counter_increment(
    key: &str,
    delta: u64,
    window_ms: u64,
) -> Result<crate::counters::Window, String> {
    counter(key, Some(delta), window_ms)
}

pub(crate) fn counter_get(key: &str, window_ms: u64) -> Result<crate::counters::Window, String> {
    counter(key, None, window_ms)
}

pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A splitmix64 sequence per thread, with a fixed seed so tests are repeatable.
pub(crate) fn random() -> u64 {
    thread_local!(static STATE: Cell<u64> = const { Cell::new(0x2545_f491_4f6c_dd1d) });
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_case_insensitive_and_lower_case() {
        let req = Request::new("GET", "/a?b=1").with_header("X-One", "1");
        assert_eq!(req.path(), "/a");
        assert_eq!(req.query().as_deref(), Some("b=1"));
        req.append_header("x-ONE", "2").unwrap();
        assert_eq!(req.header_all("X-one"), ["1", "2"]);
        req.set_header("X-One", "3").unwrap();
        assert_eq!(req.headers(), [("x-one".to_string(), "3".to_string())]);
        req.remove_header("x-one").unwrap();
        assert_eq!(req.header("x-one"), None);
    }

    #[test]
    fn frozen_request_refuses_changes() {
        let req = Request::new("GET", "/");
        req.freeze();
        assert!(req.set_header("a", "b").is_err());
        assert!(req.set_path("/x").is_err());
    }

    #[test]
    fn invalid_values_are_refused() {
        let req = Request::new("GET", "/");
        assert!(req.set_header("bad name", "x").is_err());
        assert!(req.set_header("x", "a\r\nb").is_err());
        assert!(req.set_path("relative").is_err());
    }

    #[test]
    fn random_changes() {
        assert_ne!(random(), random());
    }
}
