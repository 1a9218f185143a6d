//! HTTP/2 clients are bounded like HTTP/1 ones: raw sockets and the h2 client against an h2c
//! listener. A client that sends nothing, half a preface, a preface and no request, or one
//! request and then nothing, is closed; a stream whose body never comes is reset; a connection
//! cannot hold more streams waiting for a body than `h2_max_pending_bodies`. (The same bounds
//! over TLS are in `tls.rs`.)

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// A gateway with h2c on and short deadlines (`http` adds or overrides keys of
/// `instance.http`), proxying everything to `backend`.
fn h2c_gateway(backend: &EchoServer, http: &str) -> Gateway {
    // 1 s deadlines, unless `http` sets its own
    let defaults: String = ["header_timeout", "idle_timeout", "body_timeout"]
        .iter()
        .filter(|key| !http.contains(&format!("{key}:")))
        .map(|key| format!("    {key}: 1s\n"))
        .collect();
    Gateway::start_with(
        &format!(
            "  http:\n    h2c: true\n{defaults}{http}"
        ),
        &format!(
            "upstreams:\n  - {{ name: u, vpc: vpc-main, protocol: http, nodes: [{{ host: 127.0.0.1, port: {} }}] }}\nservices:\n  - {{ name: s, apis: [{{ name: any, path: \"/{{*rest}}\", methods: [GET, POST], backend: {{ upstream: u }} }}] }}\n",
            backend.addr().port()
        ),
    )
}

fn addr(gw: &Gateway) -> String {
    gw.base.trim_start_matches("http://").to_owned()
}

/// Whether the gateway closed `s` within `within` (whatever it sent before: SETTINGS, GOAWAY).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
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

/// Far longer than the 1 s deadlines, so a loaded machine cannot make these tests fail; a
/// gateway without the bound never closes the connection at all.
const CUT_WITHIN: Duration = Duration::from_secs(20);

#[test]
fn h2c_clients_that_never_finish_a_first_request_are_cut_at_header_timeout() {
    let a = echo("a");
    let gw = h2c_gateway(&a, "");
    let open = |bytes: &[u8]| {
        let mut s = TcpStream::connect(addr(&gw)).unwrap();
        s.write_all(bytes).unwrap();
        s
    };
    let mut silent = open(b"");
    let mut half_preface = open(&PREFACE[..10]);
    let mut preface_only = open(&[PREFACE, SETTINGS].concat());
    // HEADERS without END_HEADERS, and no CONTINUATION
    let partial_headers = [&[0, 0, 1, 1, 0x01, 0, 0, 0, 1][..], &[0x82]].concat();
    let mut half_request = open(&[PREFACE, SETTINGS, &partial_headers].concat());
    for (name, s) in [
        ("silent", &mut silent),
        ("half a preface", &mut half_preface),
        ("a preface and no request", &mut preface_only),
        ("a request header never finished", &mut half_request),
    ] {
        assert!(closed_within(s, CUT_WITHIN), "{name}: still open");
    }
    assert!(
        gw.metric(r#"gatehouse_downstream_connections_refused_total{reason="header_timeout"}"#)
            >= 4.0
    );
    // an HTTP/1 request shorter than the preface is still served on the h2c listener
    let mut short = TcpStream::connect(addr(&gw)).unwrap();
    short
        .write_all(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
        .unwrap();
    short
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = short.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "{answer}"
    );
}

#[test]
fn silent_h2c_clients_filling_max_connections_are_cut_and_new_clients_served() {
    let a = echo("a");
    let gw = h2c_gateway(&a, "    max_connections: 4\n");
    // the gateway's own readiness check may still hold a slot for a moment
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(addr(&gw)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let over = request("GET", &gw.url("/x"), &[], None);
    assert_eq!(over.status, 503, "{}", over.body);
    // once the silent ones are cut, a new client is served
    let deadline = Instant::now() + CUT_WITHIN;
    loop {
        let r = request("GET", &gw.url("/x"), &[], None);
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still {}: {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(held);
}

/// Runs `f` on a fresh h2 client connection to the gateway; the connection's driver task is
/// handed over so a test can wait for the gateway to end it.
fn with_h2<F, Fut, T>(gw: &Gateway, f: F) -> T
where
    F: FnOnce(
        h2::client::SendRequest<bytes::Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let addr = addr(gw);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(connection);
        f(client, driver).await
    })
}

fn post(path: &str) -> http::Request<()> {
    http::Request::post(format!("http://h2.test{path}"))
        .body(())
        .unwrap()
}

fn get(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://h2.test{path}"))
        .body(())
        .unwrap()
}

#[test]
fn an_idle_h2c_connection_gets_goaway_and_is_closed() {
    let a = echo("a");
    let gw = h2c_gateway(&a, "");
    let ended = with_h2(&gw, |mut client, driver| async move {
        let request = get("/one");
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        // the client keeps its handle (it would close the connection itself otherwise) and
        // sends nothing more
        let ended = tokio::time::timeout(CUT_WITHIN, driver).await;
        drop(client);
        ended
    });
    match ended {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => assert!(e.is_go_away() || e.is_io(), "{e:?}"),
        other => panic!("the idle connection was not closed: {other:?}"),
    }
}

#[test]
fn a_stream_whose_body_never_comes_is_reset_at_body_timeout() {
    let a = echo("a");
    let gw = h2c_gateway(&a, "");
    let outcome = with_h2(&gw, |mut client, _driver| async move {
        // a POST whose HEADERS promise a body that never comes
        let (response, _body) = client.send_request(post("/upload"), false).unwrap();
        let outcome = tokio::time::timeout(CUT_WITHIN, response).await;
        // a stream on the same connection is still served
        let (ok, _) = client.send_request(get("/after"), true).unwrap();
        let ok = tokio::time::timeout(CUT_WITHIN, ok).await;
        (outcome, ok.map(|r| r.map(|r| r.status().as_u16())))
    });
    match outcome.0 {
        Ok(Err(e)) => assert_eq!(e.reason(), Some(h2::Reason::CANCEL), "{e:?}"),
        Ok(Ok(r)) => assert_eq!(r.status(), 408),
        Err(_) => panic!("the stream waiting for its body was never ended"),
    }
    assert!(matches!(outcome.1, Ok(Ok(200))), "{:?}", outcome.1);
    assert_eq!(
        gw.metric(r#"gatehouse_downstream_streams_reset_total{reason="body_timeout"}"#),
        1.0
    );
}

#[test]
fn a_connection_cannot_hold_more_streams_waiting_for_a_body_than_its_bound() {
    let a = echo("a");
    let gw = h2c_gateway(&a, "    body_timeout: 60s\n    h2_max_pending_bodies: 2\n");
    let (third, first_two) = with_h2(&gw, |mut client, _driver| async move {
        let mut open = Vec::new();
        for _ in 0..2 {
            open.push(client.send_request(post("/upload"), false).unwrap());
        }
        // let the gateway take the two before the third arrives
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (third, _) = client.send_request(post("/upload"), false).unwrap();
        let third = tokio::time::timeout(CUT_WITHIN, third).await;
        // the two in flight finish normally once their bodies come
        let mut statuses = Vec::new();
        for (response, mut body) in open {
            body.send_data(bytes::Bytes::from_static(b"payload"), true)
                .unwrap();
            let r = tokio::time::timeout(CUT_WITHIN, response).await;
            statuses.push(
                r.map(|r| r.map(|r| r.status().as_u16()).ok())
                    .ok()
                    .flatten(),
            );
        }
        (third, statuses)
    });
    match third {
        Ok(Err(e)) => assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e:?}"),
        other => panic!("the third stream was not refused: {other:?}"),
    }
    assert_eq!(first_two, vec![Some(200), Some(200)]);
    assert_eq!(
        gw.metric(r#"gatehouse_downstream_streams_reset_total{reason="pending_bodies"}"#),
        1.0
    );
}

/// HPACK for a GET with `:path` = `path` (literal, never Huffman-coded) and `:authority: a`.
fn get_with_raw_path(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x01, 1, b'a', 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    // HEADERS on stream 1 with END_STREAM | END_HEADERS
    let mut frame = vec![0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    frame
}

/// The status of the response on stream 1, from the first byte of its header block (the
/// server's HPACK encodes the common statuses as static table indices).
fn status_on_stream_1(s: &mut TcpStream) -> Option<u16> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).ok()?;
        let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).ok()?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match (head[3], stream) {
            (0x01, 1) => {
                return Some(match payload.first()? {
                    0x88 => 200,
                    0x8c => 400,
                    0x8d => 404,
                    0x8e => 500,
                    _ => 0,
                })
            }
            (0x03, 1) => return None, // RST_STREAM
            (0x07, _) => return None, // GOAWAY
            _ => continue,
        }
    }
}

#[test]
fn an_h2_path_that_is_not_origin_form_gets_400() {
    let a = echo("a");
    let gw = h2c_gateway(&a, "");
    for path in ["?x=1", "x/y", "*"] {
        let mut s = TcpStream::connect(addr(&gw)).unwrap();
        s.write_all(&[PREFACE, SETTINGS, &get_with_raw_path(path)].concat())
            .unwrap();
        let status = status_on_stream_1(&mut s);
        // refused: a 400, or a reset by the engine, never a 500 or a request upstream
        assert!(
            matches!(status, Some(400) | None),
            ":path {path}: {status:?}"
        );
    }
    assert_eq!(a.stats().requests(), 0);
    let mut s = TcpStream::connect(addr(&gw)).unwrap();
    s.write_all(&[PREFACE, SETTINGS, &get_with_raw_path("/fine")].concat())
        .unwrap();
    assert_eq!(status_on_stream_1(&mut s), Some(200));
}

#[test]
fn an_http11_offer_to_upgrade_to_h2c_is_ignored() {
    let a = echo("a");
    for h2c in [false, true] {
        let gw = Gateway::start_with(
            &format!("  http: {{ h2c: {h2c} }}\n"),
            &format!(
                "upstreams:\n  - {{ name: u, vpc: vpc-main, protocol: http, nodes: [{{ host: 127.0.0.1, port: {} }}] }}\nservices:\n  - {{ name: s, apis: [{{ name: any, path: \"/{{*rest}}\", backend: {{ upstream: u }} }}] }}\n",
                a.addr().port()
            ),
        );
        // curl --http2 on http:// offers `Upgrade: h2c` with `HTTP2-Settings`
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "10",
                "--http2",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .arg(gw.url("/offer"))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.ends_with("\n200 1.1"), "h2c: {h2c}: {text}");
        // the offer does not reach the backend
        let seen = text.to_ascii_lowercase();
        assert!(!seen.contains("http2-settings"), "{text}");
        assert!(!seen.contains("\"upgrade\""), "{text}");
    }
}

#[test]
fn max_requests_per_connection_counts_http2_streams() {
    let a = echo("a");
    let gw = h2c_gateway(
        &a,
        "    max_requests_per_connection: 3\n    idle_timeout: 60s\n",
    );
    let (statuses, ended) = with_h2(&gw, |mut client, driver| async move {
        let mut statuses = Vec::new();
        for i in 0..3 {
            let (response, _) = client.send_request(get(&format!("/{i}")), true).unwrap();
            statuses.push(response.await.unwrap().status().as_u16());
        }
        // the third stream was the last: the gateway said GOAWAY and closes the connection
        let ended = tokio::time::timeout(CUT_WITHIN, driver).await;
        (statuses, ended)
    });
    assert_eq!(statuses, vec![200, 200, 200]);
    match ended {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => assert!(e.is_go_away() || e.is_io(), "{e:?}"),
        other => panic!("the connection stayed open: {other:?}"),
    }
}

#[test]
fn a_stopping_gateway_finishes_an_h2_stream_in_flight_says_goaway_and_exits() {
    let slow = echo_with(
        "slow",
        gatehouse_echo::Behavior::Delay(Duration::from_millis(1500)),
    );
    let mut gw = h2c_gateway(&slow, "    idle_timeout: 60s\n");
    let pid = gw.pid();
    let (status, ended) = with_h2(&gw, |mut client, driver| async move {
        let (response, _) = client.send_request(get("/slow"), true).unwrap();
        // the stream is at the backend when the stop begins
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let response = tokio::time::timeout(CUT_WITHIN, response).await;
        let status = match response {
            Ok(Ok(r)) => r.status().as_u16(),
            other => panic!("the stream in flight was cut: {other:?}"),
        };
        // told to go away, the idle connection ends long before `idle_timeout`
        let ended = tokio::time::timeout(CUT_WITHIN, driver).await;
        drop(client);
        (status, ended)
    });
    assert_eq!(status, 200);
    match ended {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => assert!(e.is_go_away() || e.is_io(), "{e:?}"),
        other => panic!("the connection was not closed: {other:?}"),
    }
    let exit = gw.wait_exit(CUT_WITHIN);
    assert_eq!(exit.map(|s| s.success()), Some(true), "{}", gw.log());
}
