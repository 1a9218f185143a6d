//! The edge: what a hostile or sloppy client can and cannot do through the real gateway. Requests
//! are written on raw sockets, byte for byte, so no client library normalises them first.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use support::*;

/// A response read from a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

fn connect(gw: &Gateway) -> TcpStream {
    let s = TcpStream::connect(gw.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Reads one response (header and a `Content-Length` body) from `s`.
fn read_response(s: &mut TcpStream) -> Option<Raw> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut raw = Raw {
        status,
        head,
        body: String::new(),
    };
    let length: usize = raw
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).ok()?;
    raw.body = String::from_utf8_lossy(&body).into_owned();
    Some(raw)
}

/// Sends `bytes` on a new connection and reads one response.
fn exchange(gw: &Gateway, bytes: &[u8]) -> Raw {
    let mut s = connect(gw);
    s.write_all(bytes).unwrap();
    read_response(&mut s)
        .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(bytes)))
}

fn get(gw: &Gateway, target: &str, extra: &str) -> Raw {
    exchange(
        gw,
        format!("GET {target} HTTP/1.1\r\nHost: edge.test\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

/// Whether the server closed `s` (a read returns end of stream or an error) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn upstream(name: &str, backend: &EchoServer) -> String {
    format!(
        "  - {{ name: {name}, vpc: vpc-main, protocol: http, nodes: [{{ host: 127.0.0.1, port: {} }}] }}\n",
        backend.addr().port()
    )
}

const KEY: &str = "k-0123456789abcdef";

/// An API protected by key-auth under `/admin/`, a catch-all API without plugins, and an API
/// that maps `/users/{id}` to `/v1/users/{id}`; each on its own backend.
fn bypass_config(admin: &EchoServer, public: &EchoServer, users: &EchoServer) -> String {
    format!(
        r#"upstreams:
{}{}{}services:
  - name: shop
    apis:
      - name: admin
        path: /admin/{{*rest}}
        backend: {{ upstream: admin }}
        plugins:
          - {{ name: key-auth, config: {{ keys: ["{KEY}"] }} }}
      - name: everything
        path: /{{*all}}
        backend: {{ upstream: public }}
      - name: user
        path: /users/{{id}}
        methods: [GET]
        backend: {{ upstream: users, path: "/v1/users/{{id}}" }}
        plugins:
          - {{ name: key-auth, config: {{ keys: ["{KEY}"] }} }}
"#,
        upstream("admin", admin),
        upstream("public", public),
        upstream("users", users)
    )
}

#[test]
fn other_spellings_of_a_protected_path_never_skip_its_plugins() {
    let (admin, public, users) = (echo("admin"), echo("public"), echo("users"));
    let gw = Gateway::start(&bypass_config(&admin, &public, &users));
    // the spellings that reached the backend without a key before paths were made canonical
    for spelling in [
        "//admin/x",
        "///admin/x",
        "/%61dmin/x",
        "/%61%64%6D%69%6E/x",
        "/admin//x",
    ] {
        let r = get(&gw, spelling, "");
        assert_eq!(r.status, 401, "{spelling}: {r:?}");
        let r = get(&gw, spelling, &format!("X-API-Key: {KEY}\r\n"));
        assert_eq!(r.status, 200, "{spelling}: {r:?}");
        assert_eq!(r.json()["node"], "admin", "{spelling}");
        assert_eq!(
            r.json()["uri"],
            "/admin/x",
            "{spelling}: the backend gets the canonical path"
        );
    }
    for (spelling, why) in [
        ("/admin/%2e%2e/x", "segment"),
        ("/x/../admin/x", "segment"),
        ("/admin%2Fx", "encoded slash"),
        ("/admin%5cx", "backslash"),
        ("/admin\\x", "backslash"),
        ("/admin/%00", "control"),
        ("/admin/%zz", "hex digits"),
        ("http://edge.test/admin/x", "origin-form"),
        // path parameters that Java servers strip before resolving dot segments
        ("/pub/..;/admin/x", "segment"),
        ("/pub/..;jsessionid=1/admin/x", "segment"),
        ("/pub/%2e%2e;/admin/x", "segment"),
        ("/pub/..%3b/admin/x", "segment"),
    ] {
        let r = get(&gw, spelling, "");
        assert_eq!(r.status, 400, "{spelling}: {r:?}");
        assert_eq!(r.json()["error"], "bad_request", "{spelling}");
        assert!(
            r.json()["message"].as_str().unwrap().contains(why),
            "{spelling}: {r:?}"
        );
    }
    assert_eq!(
        public.stats().requests(),
        0,
        "nothing reached the unprotected backend"
    );
}

/// Another spelling of `path`, chosen by `choices`: escapes in either hex case, doubled slashes,
/// dot segments, escaped dots.
fn respell(path: &str, choices: &[u8]) -> String {
    let mut out = String::new();
    for (i, c) in path.chars().enumerate() {
        match (c, choices[i % choices.len()] % 8) {
            ('/', 1) => out.push_str("//"),
            ('/', 2) => out.push_str("/./"),
            ('/', 3) => out.push_str("/zz/../"),
            ('/', 4) => out.push_str("/%2E/"),
            (c, 1) if c != '/' => out.push_str(&format!("%{:02x}", c as u32)),
            (c, 2) if c != '/' => out.push_str(&format!("%{:02X}", c as u32)),
            (c, _) => out.push(c),
        }
    }
    out
}

#[test]
fn generated_spellings_reach_their_canonical_api_or_are_refused() {
    let (admin, public, users) = (echo("admin"), echo("public"), echo("users"));
    let gw = Gateway::start(&bypass_config(&admin, &public, &users));
    let segment = "[a-zA-Z0-9_~-]{1,5}";
    let paths = prop_oneof![
        proptest::collection::vec(segment, 0..3).prop_map(|s| format!("/admin/{}", s.join("/"))),
        proptest::collection::vec(segment, 1..4).prop_map(|s| format!("/pub/{}", s.join("/"))),
        "[0-9a-z]{1,6}".prop_map(|id| format!("/users/{id}")),
    ];
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(
                paths,
                proptest::collection::vec(any::<u8>(), 1..24),
                any::<bool>(),
            ),
            |(path, choices, with_key)| {
                let spelling = respell(&path, &choices);
                let key = if with_key {
                    format!("X-API-Key: {KEY}\r\n")
                } else {
                    String::new()
                };
                let r = get(&gw, &spelling, &key);
                let (node, uri) = if path.starts_with("/admin/") {
                    ("admin", path.clone())
                } else if let Some(id) = path.strip_prefix("/users/") {
                    ("users", format!("/v1/users/{id}"))
                } else {
                    ("public", path.clone())
                };
                let protected = node != "public";
                match r.status {
                    400 => prop_assert_eq!(&r.json()["error"], "bad_request"),
                    401 => prop_assert!(protected && !with_key, "{} → 401 {:?}", spelling, r),
                    200 => {
                        prop_assert!(
                            !protected || with_key,
                            "{} skipped key-auth: {:?}",
                            spelling,
                            r
                        );
                        prop_assert_eq!(
                            &r.json()["node"],
                            node,
                            "{} went to another API",
                            spelling
                        );
                        prop_assert_eq!(
                            &r.json()["uri"],
                            &uri,
                            "{} reached the backend as",
                            spelling
                        );
                    }
                    _ => prop_assert!(false, "{} → {:?}", spelling, r),
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn parameter_values_cannot_steer_the_backend_path_or_query() {
    let a = echo("a");
    let gw = Gateway::start(&format!(
        r#"upstreams:
{}services:
  - name: shop
    apis:
      - name: user
        path: /users/{{id}}
        backend: {{ upstream: a, path: "/v1/users/{{id}}" }}
      - name: order
        path: /orders/{{id}}
        backend: {{ upstream: a, path: "/v2/orders?order={{id}}&src=edge" }}
"#,
        upstream("a", &a)
    ));
    let r = get(&gw, "/users/1%2F..%2F..%2Finternal", "");
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        get(&gw, "/users/7%3Fadmin=1", "").json()["uri"],
        "/v1/users/7%3Fadmin=1"
    );
    assert_eq!(
        get(&gw, "/users/7%23frag", "").json()["uri"],
        "/v1/users/7%23frag"
    );
    assert_eq!(
        get(&gw, "/orders/1&admin=true", "").json()["uri"],
        "/v2/orders?order=1%26admin%3Dtrue&src=edge",
        "a value in the query part cannot add parameters"
    );
    assert_eq!(
        get(&gw, "/orders/5?page=2", "").json()["uri"],
        "/v2/orders?order=5&src=edge&page=2"
    );
    for query in ["order=6", "src=other", "%6Frder=6", "page=1&order=6"] {
        let r = get(&gw, &format!("/orders/5?{query}"), "");
        assert_eq!(r.status, 400, "{query}: {r:?}");
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .contains("set by the API"),
            "{r:?}"
        );
    }
    assert_eq!(
        a.stats().requests(),
        4,
        "the refused requests never reached the backend"
    );
}

#[test]
fn plugins_that_edit_only_the_query_keep_the_backend_path() {
    let a = echo("a");
    let gw = Gateway::start(&format!(
        r#"upstreams:
{}services:
  - name: shop
    apis:
      - name: user
        path: /users/{{id}}
        backend: {{ upstream: a, path: "/v1/users/{{id}}" }}
        plugins:
          - {{ name: key-auth, config: {{ keys: ["{KEY}"], hide_credentials: true }} }}
      - name: rewritten
        path: /api/{{*rest}}
        backend: {{ upstream: a, path: "/mapped/{{rest}}" }}
        plugins:
          - {{ name: path-rewrite, config: {{ strip_prefix: /api, add_prefix: /v3 }} }}
"#,
        upstream("a", &a)
    ));
    let r = get(&gw, &format!("/users/7?api_key={KEY}&x=1"), "");
    assert_eq!(
        r.json()["uri"],
        "/v1/users/7?x=1",
        "the key is hidden, the mapping kept"
    );
    let r = get(&gw, &format!("/users/7?api_key={KEY}"), "");
    assert_eq!(r.json()["uri"], "/v1/users/7");
    let r = get(&gw, "/users/7", &format!("X-API-Key: {KEY}\r\n"));
    assert_eq!(r.json()["uri"], "/v1/users/7");
    let r = get(&gw, "/api/items?page=2", "");
    assert_eq!(
        r.json()["uri"],
        "/v3/items?page=2",
        "a plugin's path replaces the mapping"
    );
}

/// A gateway with one API on an echo backend and `http` options under `instance.http`.
fn with_limits(backend: &EchoServer, http: &str) -> Gateway {
    let (listen, metrics) = (free_port(), free_port());
    let head = instance_yaml(listen, metrics)
        .replace("  threads: 2\n", &format!("  threads: 2\n  http:\n{http}"));
    let body = format!(
        r#"upstreams:
{}services:
  - name: shop
    apis:
      - name: any
        path: /{{*all}}
        backend: {{ upstream: a }}
      - name: upload
        path: /upload
        max_body_size: 4KiB
        backend: {{ upstream: a }}
      - name: dav
        path: /dav/{{*rest}}
        extension_methods: [PROPFIND]
        backend: {{ upstream: a }}
"#,
        upstream("a", backend)
    );
    Gateway::start_config(&format!("{head}{body}"), listen, metrics)
}

/// Sends one header line every 250 ms, for up to 8 s (each read is quick, only a total bounds
/// it), and asserts the gateway cut the connection meanwhile.
fn assert_cut_while_dripping(s: &mut TcpStream) {
    let started = Instant::now();
    for i in 0..32 {
        std::thread::sleep(Duration::from_millis(250));
        if s.write_all(format!("X-Drip-{i}: y\r\n").as_bytes())
            .is_err()
            || closed_within(s, Duration::from_millis(1))
        {
            return;
        }
    }
    panic!("still open after {:?} of dripping", started.elapsed());
}

#[test]
fn a_client_dripping_its_header_is_cut_off() {
    let a = echo("a");
    let gw = with_limits(&a, "    header_timeout: 1s\n");
    let mut s = connect(&gw);
    s.write_all(b"GET /x HTTP/1.1\r\nHost: edge.test\r\n")
        .unwrap();
    assert_cut_while_dripping(&mut s);
    assert_eq!(a.stats().requests(), 0);
    assert!(
        gw.metric(r#"gatehouse_downstream_connections_refused_total{reason="header_timeout"}"#)
            >= 1.0
    );
    // a connection that says nothing at all is cut off too
    let mut silent = connect(&gw);
    assert!(closed_within(&mut silent, Duration::from_secs(10)));
    // a prompt client is served
    assert_eq!(get(&gw, "/x", "").status, 200);
}

#[test]
fn a_kept_alive_connections_header_deadline_runs_from_its_first_byte() {
    let a = echo("a");
    let gw = with_limits(&a, "    header_timeout: 1s\n    idle_timeout: 10s\n");
    let mut s = connect(&gw);
    let request = b"GET /x HTTP/1.1\r\nHost: edge.test\r\n\r\n";
    s.write_all(request).unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    // idle for longer than header_timeout (within idle_timeout), then a prompt request: served
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(request).unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    // idle again, then a header that starts and drips: cut header_timeout after its first byte
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"GET /x HTTP/1.1\r\n").unwrap();
    assert_cut_while_dripping(&mut s);
    assert_eq!(a.stats().requests(), 2);
}

#[test]
fn idle_kept_alive_connections_are_closed_and_requests_per_connection_bounded() {
    let a = echo("a");
    let gw = with_limits(
        &a,
        "    idle_timeout: 1s\n    header_timeout: 5s\n    max_requests_per_connection: 3\n",
    );
    let mut s = connect(&gw);
    for i in 1..=3 {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: edge.test\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s).unwrap();
        assert_eq!(r.status, 200);
        let close = r
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        assert_eq!(close, i == 3, "request {i}: {r:?}");
    }
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "closed after the third request"
    );
    // idle: a kept-alive connection left alone is closed by the gateway (idle 1 s, well within
    // the header timeout of 5 s, which runs only once the next request starts)
    let mut s = connect(&gw);
    s.write_all(b"GET /x HTTP/1.1\r\nHost: edge.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    assert!(
        closed_within(&mut s, Duration::from_secs(10)),
        "idle connection closed"
    );
}

#[test]
fn oversized_headers_get_431_as_json() {
    let a = echo("a");
    let gw = with_limits(&a, "    max_header_size: 2KiB\n    max_headers: 10\n");
    let big = format!("X-Big: {}\r\n", "a".repeat(3000));
    let r = get(&gw, "/x", &big);
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(r.json()["error"], "request_header_fields_too_large");
    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = get(&gw, "/x", &many);
    assert_eq!(r.status, 431, "{r:?}");
    assert!(r.json()["message"].as_str().unwrap().contains("at most 10"));
    assert_eq!(a.stats().requests(), 0);
    assert_eq!(get(&gw, "/x", "X-Small: 1\r\n").status, 200);
}

#[test]
fn bodies_over_the_limit_never_reach_the_backend_whole() {
    let a = echo("a");
    let gw = with_limits(&a, "    max_body_size: 1KiB\n    body_timeout: 1s\n");
    // declared too large: 413 before a byte of body is read
    let r = exchange(
        &gw,
        b"POST /x HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 2000\r\n\r\n",
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.json()["error"], "payload_too_large");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    // the per-API limit is higher
    let body = "b".repeat(2000);
    let r = exchange(
        &gw,
        format!("POST /upload HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 2000\r\n\r\n{body}")
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["body_bytes"], 2000);
    assert_eq!(a.stats().requests(), 1);
    // chunked, crossing the limit mid-stream: the backend has the header and the first chunks
    // when the limit is crossed; its connection is cut, so it never sees a complete request,
    // and the client gets 413 (the backend had not answered yet) and a closed connection
    let mut s = connect(&gw);
    s.write_all(b"POST /x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for _ in 0..4 {
        let _ = s.write_all(b"200\r\n");
        let _ = s.write_all(&[b'c'; 512]);
        let _ = s.write_all(b"\r\n");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let r = read_response(&mut s).expect("an answer to the oversized chunked body");
    assert_eq!(r.status, 413, "{r:?}");
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "and the connection is closed"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        a.stats().requests(),
        1,
        "the backend answered no truncated request"
    );
    // a body that stalls: 408
    let mut s = connect(&gw);
    s.write_all(b"POST /x HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let r = read_response(&mut s).expect("an answer to a stalled body");
    assert_eq!(r.status, 408, "{r:?}");
}

#[test]
fn connections_past_the_cap_get_503_and_the_rest_are_served() {
    let a = echo("a");
    let gw = with_limits(&a, "    max_connections: 3\n    header_timeout: 30s\n");
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect(&gw);
            s.write_all(b"GET /x HTTP/1.1\r\nHost: edge.test\r\n\r\n")
                .unwrap();
            assert_eq!(read_response(&mut s).unwrap().status, 200);
            s
        })
        .collect();
    let r = exchange(&gw, b"GET /x HTTP/1.1\r\nHost: edge.test\r\n\r\n");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "over_capacity");
    assert_eq!(gw.metric("gatehouse_downstream_connections"), 3.0);
    assert!(
        gw.metric(r#"gatehouse_downstream_connections_refused_total{reason="max_connections"}"#)
            >= 1.0
    );
    // the held connections still work, and a freed slot is reused
    held[0]
        .write_all(b"GET /x HTTP/1.1\r\nHost: edge.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut held[0]).unwrap().status, 200);
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(&gw, "/x", "").status, 200);
}

#[test]
fn forwarding_headers_are_kept_only_from_trusted_proxies() {
    let a = echo("a");
    let untrusted = with_limits(&a, "    trusted_proxies: [10.0.0.0/8]\n");
    let forged = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nForwarded: for=6.6.6.6\r\n";
    let seen = get(&untrusted, "/x", forged).json();
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "edge.test");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;host=\"edge.test\";proto=http"
    );
    drop(untrusted);
    let trusted = with_limits(&a, "    trusted_proxies: [127.0.0.1]\n");
    let seen = get(&trusted, "/x", forged).json();
    let h = &seen["headers"];
    assert_eq!(
        h["x-forwarded-for"], "6.6.6.6, 7.7.7.7, 127.0.0.1",
        "two lines, one list"
    );
    assert_eq!(
        h["x-real-ip"], "7.7.7.7",
        "the right-most address that is not a trusted proxy"
    );
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "evil.test");
    assert_eq!(
        h["forwarded"],
        "for=6.6.6.6, for=127.0.0.1;host=\"edge.test\";proto=http"
    );
}

/// A backend that records the raw bytes of each request it receives and answers 200.
struct RawBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawBackend {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                    let mut all = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        all.extend_from_slice(&buf[..n]);
                        if all.windows(4).any(|w| w == b"\r\n\r\n") {
                            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                        }
                    }
                    log.lock().unwrap().push(all);
                });
            }
        });
        Self { addr, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
}

fn raw_backend_gateway(backend: &RawBackend, plugins: &str) -> Gateway {
    Gateway::start(&format!(
        r#"upstreams:
  - {{ name: raw, vpc: vpc-main, protocol: http, nodes: [{{ host: 127.0.0.1, port: {} }}] }}
services:
  - name: shop
    apis:
      - name: any
        path: /{{*all}}
        backend: {{ upstream: raw }}
{plugins}"#,
        backend.addr.port()
    ))
}

#[test]
fn http11_framing_rules_hold() {
    let backend = RawBackend::start();
    let gw = raw_backend_gateway(&backend, "");
    // no Host
    let r = exchange(&gw, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["message"].as_str().unwrap().contains("Host"));
    // both Content-Length and Transfer-Encoding
    let r = exchange(
        &gw,
        b"POST /x HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 400, "{r:?}");
    // different Content-Length values
    let r = exchange(
        &gw,
        b"POST /x HTTP/1.1\r\nHost: e\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    );
    assert_eq!(r.status, 400, "{r:?}");
    std::thread::sleep(Duration::from_millis(700));
    assert!(backend.requests().is_empty(), "{:?}", backend.requests());
    // equal duplicates are folded into one
    let r = exchange(
        &gw,
        b"POST /x HTTP/1.1\r\nHost: e\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(r.status, 200, "{r:?}");
    std::thread::sleep(Duration::from_millis(700));
    let seen = backend.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0]
            .to_ascii_lowercase()
            .matches("content-length")
            .count(),
        1,
        "{}",
        seen[0]
    );
}

#[test]
fn pipelined_requests_each_get_their_response_in_order() {
    let a = echo("a");
    let gw = with_limits(&a, "    merge_slashes: true\n");
    let mut s = connect(&gw);
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: e\r\n\r\nGET /two HTTP/1.1\r\nHost: e\r\n\r\nGET /three HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    for path in ["/one", "/two", "/three"] {
        let r = read_response(&mut s).unwrap_or_else(|| panic!("no response for {path}"));
        assert_eq!(r.json()["uri"], path);
    }
}

/// Between requests a kept-alive connection waits in the listener, not in the engine, when
/// nothing of the next request can be in the engine's hands; whichever side waits, every request
/// that follows an idle pause is answered, in order: pipelined ones, ones after a body, ones
/// that arrive a byte at a time.
#[test]
fn kept_alive_connections_answer_whatever_follows_an_idle_pause() {
    let a = echo("a");
    let gw = with_limits(
        &a,
        "    idle_timeout: 30s
    header_timeout: 10s
",
    );
    let mut s = connect(&gw);
    let pause = || std::thread::sleep(Duration::from_millis(300));
    let served = |s: &mut TcpStream, path: &str| {
        let r = read_response(s).unwrap_or_else(|| panic!("no response for {path}"));
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.json()["uri"], path, "{r:?}");
        r
    };
    s.write_all(b"GET /first HTTP/1.1\r\nHost: e\r\n\r\n")
        .unwrap();
    served(&mut s, "/first");
    // after a pause, two requests in one write
    pause();
    s.write_all(b"GET /two-a HTTP/1.1\r\nHost: e\r\n\r\nGET /two-b HTTP/1.1\r\nHost: e\r\n\r\n")
        .unwrap();
    served(&mut s, "/two-a");
    served(&mut s, "/two-b");
    // a request with a body, then after a pause one without
    pause();
    s.write_all(b"POST /body HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let r = served(&mut s, "/body");
    assert_eq!(r.json()["body_bytes"], 5, "{r:?}");
    pause();
    s.write_all(b"GET /after-body HTTP/1.1\r\nHost: e\r\n\r\n")
        .unwrap();
    served(&mut s, "/after-body");
    // after a pause, a request that arrives a byte at a time
    pause();
    for byte in b"GET /dripped HTTP/1.1\r\nHost: e\r\n\r\n" {
        s.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    served(&mut s, "/dripped");
    // a request whose header says it has no body, followed at once by the next
    pause();
    s.write_all(b"GET /cl0 HTTP/1.1\r\nHost: e\r\nContent-Length: 0\r\n\r\nGET /next HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
        .unwrap();
    served(&mut s, "/cl0");
    served(&mut s, "/next");
    assert_eq!(a.stats().requests(), 8);
}

#[test]
fn expect_continue_is_answered_before_the_body() {
    let a = echo("a");
    let gw = with_limits(&a, "    max_body_size: 1KiB\n");
    let mut s = connect(&gw);
    s.write_all(
        b"POST /x HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let interim = read_response(&mut s).unwrap();
    assert_eq!(interim.status, 100, "{interim:?}");
    s.write_all(b"hello").unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["body_bytes"], 5);
    assert!(
        r.json()["headers"].get("expect").is_none(),
        "no second 100 from the backend"
    );
    // not going to be proxied: the final answer comes at once, no 100
    let r = exchange(
        &gw,
        b"POST /x HTTP/1.1\r\nHost: e\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(r.status, 413, "{r:?}");
}

#[test]
fn methods_outside_the_standard_set_must_be_asked_for() {
    let a = echo("a");
    let gw = with_limits(&a, "    merge_slashes: true\n");
    for method in ["PROPFIND", "TRACE", "FOO"] {
        let r = exchange(
            &gw,
            format!("{method} /x HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 405, "{method}: {r:?}");
        assert!(!r.header("allow").unwrap().contains(method));
    }
    let r = exchange(
        &gw,
        b"PROPFIND /dav/x HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["method"], "PROPFIND");
}

fn plugin_file(dir: &std::path::Path, name: &str, on_request: &str, on_response: &str) -> String {
    let path = dir.join(format!("{name}.wasm"));
    let wat = gatehouse_plugin_host::testing::component_wat_editing(on_request, on_response);
    std::fs::write(&path, gatehouse_plugin_host::testing::binary(&wat)).unwrap();
    path.display().to_string()
}

#[test]
fn plugins_cannot_break_framing() {
    use gatehouse_plugin_host::testing::strings;
    let backend = RawBackend::start();
    let dir = scratch_dir();
    let smuggler = plugin_file(&dir, "smuggler", strings::SMUGGLE_REQUEST, "");
    let flood = plugin_file(&dir, "flood", strings::FLOOD_REQUEST, "");
    let huge = plugin_file(&dir, "huge", strings::HUGE_VALUE_REQUEST, "");
    let closer = plugin_file(&dir, "closer", "", strings::SMUGGLE_RESPONSE);
    let api = |name: &str, file: &str, on_error: &str| {
        format!(
            "      - name: {name}\n        path: /{name}\n        backend: {{ upstream: raw }}\n        plugins:\n          - {{ path: {file}, on_error: {on_error} }}\n"
        )
    };
    let apis = [
        api("smuggle", &smuggler, "fail_closed"),
        api("smuggle_open", &smuggler, "fail_open"),
        api("flood", &flood, "fail_closed"),
        api("huge", &huge, "fail_closed"),
        api("closer", &closer, "fail_closed"),
    ]
    .concat();
    let (listen, metrics) = (free_port(), free_port());
    let head = instance_yaml(listen, metrics).replace(
        "  threads: 2\n",
        &format!(
            "  threads: 2\n  plugins: {{ time_limit: 1s, memory_limit: 64MiB }}\n  file_roots: [{}]\n",
            dir.display()
        ),
    );
    let gw = Gateway::start_config(
        &format!(
            "{head}upstreams:\n  - {{ name: raw, vpc: vpc-main, protocol: http, nodes: [{{ host: 127.0.0.1, port: {} }}] }}\nservices:\n  - name: shop\n    apis:\n{apis}",
            backend.addr.port()
        ),
        listen,
        metrics,
    );
    let hidden = "GET /internal HTTP/1.1\r\nHost: e\r\n\r\n";
    let post = |path: &str| {
        exchange(
            &gw,
            format!("POST {path} HTTP/1.1\r\nHost: e\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{hidden}", hidden.len()).as_bytes(),
        )
    };
    let r = post("/smuggle");
    assert_eq!(r.status, 500, "{r:?}");
    assert_eq!(r.json()["error"], "plugin_failed");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("forbidden_header"),
        "{r:?}"
    );
    // fail_open: the request goes on exactly as it was before the plugin
    let r = post("/smuggle_open");
    assert_eq!(r.status, 200, "{r:?}");
    for path in ["/flood", "/huge", "/closer"] {
        let r = post(path);
        assert_eq!(r.status, 500, "{path}: {r:?}");
    }
    std::thread::sleep(Duration::from_millis(700));
    let seen = backend.requests();
    assert_eq!(
        seen.len(),
        2,
        "the fail_open request and the closer's: {seen:?}"
    );
    let open = seen
        .iter()
        .find(|r| r.starts_with("POST /smuggle_open"))
        .expect("fail_open request");
    let lower = open.to_ascii_lowercase();
    assert!(
        !lower.contains("transfer-encoding") && !lower.contains("x-plugin"),
        "{open}"
    );
    assert!(
        lower.contains(&format!("content-length: {}", hidden.len())),
        "{open}"
    );
    let failures = |reason: &str, plugin: &str| {
        gw.metric(&format!(
            "gatehouse_plugin_failures_total{{plugin=\"{plugin}\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(failures("forbidden_header", "smuggler"), 2.0);
    assert_eq!(failures("header_limit", "flood"), 1.0);
    assert_eq!(failures("header_limit", "huge"), 1.0);
    assert_eq!(failures("forbidden_header", "closer"), 1.0);
    assert_eq!(post("/smuggle_open").status, 200, "the gateway lives on");
}

#[test]
fn host_values_that_are_not_a_host_and_port_get_400() {
    let a = echo("a");
    let gw = with_limits(&a, "    max_headers: 100\n");
    for host in [
        "a b",
        "h/admin/x",
        "h\"><x",
        "h:80:80",
        "h:port",
        "[::1",
        "[zz]:80",
        "h@evil",
    ] {
        let r = exchange(
            &gw,
            format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 400, "Host: {host}: {r:?}");
        // the engine refuses some spellings itself, with an empty 400
        if !r.body.is_empty() {
            assert_eq!(r.json()["error"], "bad_request", "{host}");
        }
    }
    assert_eq!(a.stats().requests(), 0, "no bad Host reached the backend");
    for host in [
        "shop.example",
        "shop.example:8080",
        "127.0.0.1:80",
        "[::1]:8080",
        "[::1]",
        "xn--bcher-kva.example",
        "",
    ] {
        let r = exchange(
            &gw,
            format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "Host: {host}: {r:?}");
    }
}

#[test]
fn header_names_with_underscores_are_dropped_or_refused() {
    let a = echo("a");
    let gw = with_limits(&a, "    max_headers: 100\n");
    let r = get(
        &gw,
        "/x",
        "X_Forwarded_For: 10.9.9.9\r\nX_Api_Key: k\r\nX-Kept: yes\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.json()["headers"].to_string().to_ascii_lowercase();
    assert!(!seen.contains("x_forwarded_for"), "{seen}");
    assert!(!seen.contains("x_api_key"), "{seen}");
    assert!(!seen.contains("10.9.9.9"), "{seen}");
    assert!(seen.contains("x-kept"), "{seen}");
    let strict = with_limits(&a, "    underscores_in_headers: reject\n");
    let r = get(&strict, "/x", "X_Forwarded_For: 10.9.9.9\r\n");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("x_forwarded_for"),
        "{r:?}"
    );
    let open = with_limits(&a, "    underscores_in_headers: allow\n");
    let r = get(&open, "/x", "X_Custom: 1\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.json()["headers"]
            .to_string()
            .to_ascii_lowercase()
            .contains("x_custom"),
        "{r:?}"
    );
}

/// With every read buffer size (none, smaller than a request, the engine's), the listener serves
/// pipelined requests in order, a header larger than the buffer, and a body of many buffers.
#[test]
fn the_client_read_buffer_never_changes_what_is_served() {
    let backend = echo("b");
    for size in ["0", "1KiB", "4KiB", "64KiB"] {
        let gw = Gateway::start_with(
            &format!("  http:\n    read_buffer: {size}\n"),
            &format!(
                "upstreams:\n{}services:\n  - name: s\n    apis:\n      - {{ name: a, path: \"/{{*rest}}\", methods: [GET, POST], backend: {{ upstream: u }} }}\n",
                upstream("u", &backend)
            ),
        );
        // two requests in one write: each answered, in order
        let mut s = connect(&gw);
        s.write_all(
            b"GET /one HTTP/1.1\r\nHost: edge.test\r\n\r\nGET /two HTTP/1.1\r\nHost: edge.test\r\n\r\n",
        )
        .unwrap();
        for path in ["/one", "/two"] {
            let r = read_response(&mut s).unwrap_or_else(|| panic!("{size}: no answer for {path}"));
            assert_eq!(r.status, 200, "{size}");
            assert!(
                r.body.contains(&format!("\"uri\":\"{path}\"")),
                "{size}: {}",
                r.body
            );
        }
        // a header of 8 KiB and a body of 200 KiB
        let long = "v".repeat(8 * 1024);
        let body = "b".repeat(200 * 1024);
        let r = exchange(
            &gw,
            format!(
                "POST /big HTTP/1.1\r\nHost: edge.test\r\nX-Long: {long}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        assert_eq!(r.status, 200, "{size}: {}", r.body);
        assert!(
            r.body.contains(&format!("\"body_bytes\":{}", body.len())),
            "{size}: {}",
            r.body
        );
    }
}

/// A burst of kept-alive connections holds memory only while it is open: once the connections
/// close and the worker threads have been quiet a couple of seconds, the gateway gives that
/// memory back to the system (the allocator alone keeps it for as long as the gateway idles).
#[test]
fn the_memory_of_closed_connections_goes_back_to_the_system() {
    let gw = Gateway::start(
        "services:\n  - name: s\n    apis:\n      - { name: ok, path: /ok, methods: [GET], backend: { response: { status: 200, body: ok } } }\n",
    );
    assert_eq!(gw.get("/ok").status, 200);
    let idle = gw.rss_kib();
    let mut held = Vec::new();
    for _ in 0..400 {
        let mut s = connect(&gw);
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: edge.test\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s).expect("answered").status, 200);
        held.push(s);
    }
    let open = gw.rss_kib();
    let grown = open.saturating_sub(idle);
    assert!(
        grown > 4 * 1024,
        "400 open connections should cost memory: {idle} KiB idle, {open} KiB with them"
    );
    drop(held);
    let back = idle + grown / 4;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = open;
    while now > back && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        now = gw.rss_kib();
    }
    eprintln!("RSS idle {idle} KiB, with 400 connections {open} KiB, after they closed {now} KiB");
    assert!(
        now <= back,
        "the memory of the closed connections stayed: {idle} KiB idle, {open} KiB with them, \
         {now} KiB 30 s after they closed"
    );
}
