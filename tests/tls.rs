//! TLS termination on the edge listener, with real clients: curl for each SNI name and for
//! HTTP/2, openssl s_client for the certificate served and for refused protocol versions.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use support::*;

/// A test CA (PEM) and leaf certificates it signs.
struct Ca {
    params: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Gatehouse Edge Test CA");
    Ca {
        params: params.self_signed(&key).unwrap(),
        key,
    }
}

impl Ca {
    /// Writes `name.pem` and `name.key` for a leaf with `names` into `dir`.
    fn issue(&self, dir: &Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let leaf = params.signed_by(&key, &self.params, &self.key).unwrap();
        let (cert, keyf) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, leaf.pem()).unwrap();
        std::fs::write(&keyf, key.serialize_pem()).unwrap();
        (cert, keyf)
    }

    fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.params.pem()).unwrap();
        path
    }
}

struct Edge {
    gw: Gateway,
    tls_port: u16,
    ca: PathBuf,
    dir: PathBuf,
}

/// A gateway with a TLS listener serving `shop.example` (the default) and `*.api.example`.
fn edge(backend: &EchoServer) -> Edge {
    edge_with(backend, "")
}

/// [`edge`] with more keys of `instance` (indented by two spaces, each line ending in a newline).
fn edge_with(backend: &EchoServer, instance_extra: &str) -> Edge {
    let dir = scratch_dir();
    let ca = ca();
    ca.issue(&dir, "shop", &["shop.example"]);
    ca.issue(&dir, "api", &["*.api.example"]);
    let tls_port = free_port();
    let gw = Gateway::start_with(
        &format!(
            "  file_roots: [\"{dir}\"]\n  tls:\n    listen: [\"127.0.0.1:{tls_port}\"]\n    certificates:\n      - {{ cert_file: {dir}/shop.pem, key_file: {dir}/shop.key }}\n      - {{ cert_file: {dir}/api.pem, key_file: {dir}/api.key }}\n{instance_extra}",
            dir = dir.display()
        ),
        &format!(
            r#"upstreams:
  - name: u
    vpc: vpc-main
    protocol: http
    nodes:
      - {{ host: 127.0.0.1, port: {port}, weight: 1 }}
services:
  - name: shop
    apis:
      - {{ name: any, path: "/{{*rest}}", backend: {{ upstream: u }} }}
"#,
            port = backend.addr().port()
        ),
    );
    Edge {
        gw,
        tls_port,
        ca: ca.write(&dir),
        dir,
    }
}

/// `curl` for `https://name:port/path` resolved to 127.0.0.1, trusting the test CA; returns
/// (exit success, stdout).
fn curl(e: &Edge, name: &str, path: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(&e.ca)
        .arg("--resolve")
        .arg(format!("{name}:{}:127.0.0.1", e.tls_port))
        .args(extra)
        .arg(format!("https://{name}:{}{path}", e.tls_port))
        .output()
        .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The subject of the certificate `openssl s_client` gets for `servername` (none: no SNI), and
/// whether the handshake succeeded.
fn served(e: &Edge, servername: Option<&str>, extra: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", e.tls_port))
        .args(extra);
    match servername {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let subject = text
        .lines()
        .find_map(|l| l.strip_prefix("subject="))
        .unwrap_or_default()
        .to_owned();
    (
        text.contains("Cipher is ") && !text.contains("Cipher is (NONE)"),
        subject,
    )
}

#[test]
fn each_name_gets_its_certificate_and_the_scheme_reaches_the_backend() {
    let a = echo("a");
    let e = edge(&a);
    let (ok, body) = curl(&e, "shop.example", "/users/1", &[]);
    assert!(ok, "curl failed: {body}\n{}", e.gw.log());
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["headers"]["x-forwarded-proto"], "https", "{body}");
    assert!(json["headers"]["forwarded"]
        .as_str()
        .unwrap()
        .ends_with(";proto=https"));
    // the wildcard certificate verifies for a name under it
    let (ok, body) = curl(&e, "v1.api.example", "/x", &[]);
    assert!(ok, "{body}");
    // what each client is served
    assert!(served(&e, Some("shop.example"), &[])
        .1
        .contains("CN = shop.example"));
    assert!(served(&e, Some("V1.API.example"), &[])
        .1
        .contains("CN = *.api.example"));
    assert!(
        served(&e, Some("unknown.example"), &[])
            .1
            .contains("CN = shop.example"),
        "default"
    );
    assert!(
        served(&e, None, &[]).1.contains("CN = shop.example"),
        "no SNI: default"
    );
    // plain HTTP listeners still say http
    assert_eq!(
        e.gw.get("/y").json()["headers"]["x-forwarded-proto"],
        "http"
    );
    let expiry = e.gw.metrics_text();
    assert!(
        expiry.contains("gatehouse_tls_certificate_expiry_seconds{certificate="),
        "{expiry}"
    );
}

#[test]
fn only_tls_1_2_and_1_3_are_offered() {
    let a = echo("a");
    let e = edge(&a);
    let weak = ["-cipher", "DEFAULT@SECLEVEL=0"];
    // the same client succeeds with 1.2 and 1.3, so its failure with 1.1 is the gateway's refusal
    assert!(served(&e, Some("shop.example"), &["-tls1_2", weak[0], weak[1]]).0);
    assert!(served(&e, Some("shop.example"), &["-tls1_3"]).0);
    assert!(!served(&e, Some("shop.example"), &["-tls1_1", weak[0], weak[1]]).0);
    assert!(!served(&e, Some("shop.example"), &["-tls1", weak[0], weak[1]]).0);
}

#[test]
fn http2_is_negotiated_by_alpn() {
    let a = echo("a");
    let e = edge(&a);
    let (ok, version) = curl(
        &e,
        "shop.example",
        "/h2",
        &["--http2", "-o", "/dev/null", "-w", "%{http_version}"],
    );
    assert!(ok, "{version}");
    assert_eq!(version, "2");
    let (ok, version) = curl(
        &e,
        "shop.example",
        "/h1",
        &["--http1.1", "-o", "/dev/null", "-w", "%{http_version}"],
    );
    assert!(ok);
    assert_eq!(version, "1.1");
    // both counted like any request (the count lands as the request ends: wait for it)
    let sample =
        r#"gatehouse_requests_total{api="any",service="shop",status_class="2xx",upstream="u"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while e.gw.metric(sample) < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            e.gw.metric(sample)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(e.gw.metric(sample), 2.0);
    // routing, plugins and the backend see the same request over HTTP/2
    let (ok, body) = curl(&e, "shop.example", "/users/5?q=1", &["--http2"]);
    assert!(ok);
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["uri"], "/users/5?q=1", "{body}");
    assert_eq!(
        seen["host"],
        format!("shop.example:{}", e.tls_port),
        "{body}"
    );
}

/// The PEM of the leaf certificate served for `servername`.
fn served_pem(e: &Edge, servername: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", e.tls_port))
        .args(["-servername", servername])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text.find("-----END CERTIFICATE-----").expect("its end");
    text[start..end].to_owned()
}

#[test]
fn a_renewed_certificate_is_served_after_a_reload() {
    let a = echo("a");
    let e = edge(&a);
    let pem = |name: &str| {
        let text = std::fs::read_to_string(e.dir.join(format!("{name}.pem"))).unwrap();
        let end = text.find("-----END CERTIFICATE-----").unwrap();
        text[..end].to_owned()
    };
    let old = pem("shop");
    assert_eq!(served_pem(&e, "shop.example"), old);
    // renew: a new key and certificate, same file names
    ca().issue(&e.dir, "shop", &["shop.example"]);
    let new = pem("shop");
    assert_ne!(new, old);
    e.gw.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while served_pem(&e, "shop.example") != new {
        assert!(
            std::time::Instant::now() < deadline,
            "the old certificate is still served"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // the other certificate is untouched
    assert_eq!(served_pem(&e, "x.api.example"), pem("api"));
}

#[test]
fn validate_names_the_certificate_problems() {
    let dir = scratch_dir();
    let ca = ca();
    ca.issue(&dir, "one", &["one.example"]);
    ca.issue(&dir, "two", &["two.example"]);
    std::fs::write(dir.join("garbage.pem"), "not a certificate").unwrap();
    let file = dir.join("gatehouse.yaml");
    let tls = format!(
        "  threads: 2\n  tls:\n    listen: [\"127.0.0.1:{}\"]\n    certificates:\n      - {{ cert_file: one.pem, key_file: two.key }}\n      - {{ cert_file: garbage.pem, key_file: one.key }}\n      - {{ cert_file: missing.pem, key_file: one.key }}\n",
        free_port()
    );
    std::fs::write(
        &file,
        instance_yaml(free_port(), free_port()).replace("  threads: 2\n", &tls),
    )
    .unwrap();
    let (status, _, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("instance.tls.certificates[0].key_file")
            && err.contains("is not the key of the certificate"),
        "{err}"
    );
    assert!(
        err.contains("instance.tls.certificates[1].cert_file")
            && err.contains("holds no certificate"),
        "{err}"
    );
    assert!(
        err.contains("instance.tls.certificates[2].cert_file"),
        "{err}"
    );
}

#[test]
fn h2load_multiplexes_many_streams_over_few_connections() {
    let a = echo("a");
    let e = edge(&a);
    // 2,000 requests on 4 connections, 16 streams at a time on each
    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "4", "-m", "16"])
        .arg(format!("https://127.0.0.1:{}/users/1", e.tls_port))
        .output()
        .expect("h2load runs (Debian nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(
        text.contains("2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    let sample =
        r#"gatehouse_requests_total{api="any",service="shop",status_class="2xx",upstream="u"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while e.gw.metric(sample) < 2000.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            e.gw.metric(sample)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_client_flooding_stream_resets_is_cut_off() {
    let a = echo("a");
    let gw = Gateway::start_with(
        // no request limit: the stream resets alone must end the flood (otherwise the connection
        // may end gracefully once its max_requests_per_connection streams are accepted)
        "  http: { h2c: true, h2_max_pending_resets: 20, max_requests_per_connection: 0 }\n",
        &format!(
            "upstreams:\n  - {{ name: u, vpc: vpc-main, protocol: http, nodes: [{{ host: 127.0.0.1, port: {} }}] }}\nservices:\n  - {{ name: s, apis: [{{ name: any, path: \"/{{*rest}}\", backend: {{ upstream: u }} }}] }}\n",
            a.addr().port()
        ),
    );
    let addr = gw.base.trim_start_matches("http://").to_owned();
    // well-formed requests (with an authority), so that no other limit (on malformed requests)
    // ends the connection first
    let uri = format!("{}/flood", gw.base);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(connection);
        // open and reset streams as fast as the connection takes them ("rapid reset")
        // (waiting for the client to be ready: a request queued beyond the server's stream limit
        // would be refused by the client itself, which is not the gateway cutting it off)
        let mut opened = 0;
        let mut refused = None;
        for _ in 0..10_000 {
            client = match client.clone().ready().await {
                Ok(ready) => ready,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            };
            let request = http::Request::get(uri.as_str()).body(()).unwrap();
            match client.send_request(request, false) {
                Ok((_, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    opened += 1;
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
            if opened % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(client);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), driver).await;
        (opened, refused, ended)
    });
    let (opened, refused, ended) = outcome;
    // the gateway ended the connection (GOAWAY with ENHANCE_YOUR_CALM, then closing it) rather
    // than serve the flood: the client saw it when it opened its next stream or when its
    // connection ended, as the GOAWAY or as the closed connection (a write that raced the close)
    let cut_off = |e: &h2::Error| e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || e.is_io();
    let ended_with = match &ended {
        Ok(Ok(Err(e))) => Some(e),
        _ => None,
    };
    assert!(
        opened < 10_000 && refused.iter().chain(ended_with).any(cut_off),
        "the connection was not cut off after {opened} resets: refused {refused:?}, ended {ended:?}"
    );
    // and the gateway serves on
    assert_eq!(gw.get("/ok").status, 200);
}

/// An `openssl s_client` that negotiates h2 with `e`, writes `bytes` and then stays silent with
/// its input open; whether the gateway ended the connection within `within`.
fn h2_tls_client_cut_within(e: &Edge, bytes: &[u8], within: std::time::Duration) -> bool {
    use std::io::Write;
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-alpn",
            "h2",
            "-servername",
            "shop.example",
            "-connect",
        ])
        .arg(format!("127.0.0.1:{}", e.tls_port))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl runs");
    let mut input = client.stdin.take().unwrap();
    input.write_all(bytes).unwrap();
    input.flush().unwrap();
    let deadline = std::time::Instant::now() + within;
    let ended = loop {
        if client.try_wait().unwrap().is_some() {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = client.kill();
    let _ = client.wait();
    drop(input);
    ended
}

#[test]
fn h2_clients_over_tls_are_bounded_like_http1_ones() {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    // GET https://shop.example/once: HEADERS on stream 1, END_STREAM | END_HEADERS, literal
    // HPACK fields (:method GET, :scheme https, :authority, :path)
    let mut block = vec![0x82, 0x87, 0x01, 12];
    block.extend_from_slice(b"shop.example");
    block.extend_from_slice(&[0x04, 5]);
    block.extend_from_slice(b"/once");
    let mut request = vec![0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1];
    request.extend_from_slice(&block);

    let a = echo("a");
    let e = edge_with(&a, "  http: { header_timeout: 1s, idle_timeout: 1s }\n");
    // far past the 1 s deadlines, so a loaded machine cannot fail this; without the bounds the
    // connections stay open for good
    let within = std::time::Duration::from_secs(20);
    assert!(
        h2_tls_client_cut_within(&e, b"", within),
        "TLS done, no preface"
    );
    assert!(
        h2_tls_client_cut_within(&e, &PREFACE[..8], within),
        "half a preface"
    );
    assert!(
        h2_tls_client_cut_within(&e, &[PREFACE, SETTINGS].concat(), within),
        "a preface and no request"
    );
    assert!(
        h2_tls_client_cut_within(&e, &[PREFACE, SETTINGS, &request].concat(), within),
        "one request, then idle"
    );
    assert_eq!(a.stats().requests(), 1);
}

#[test]
fn clients_that_connect_and_leave_are_not_errors() {
    use std::io::Write;
    let a = echo("a");
    let e = edge(&a);
    let plain = e.gw.base.trim_start_matches("http://").to_owned();
    let tls = format!("127.0.0.1:{}", e.tls_port);
    // a TCP health check, a client that leaves mid-header, a port probe on the TLS listener,
    // a TLS client that gives up on the certificate
    drop(std::net::TcpStream::connect(&plain).unwrap());
    let mut partial = std::net::TcpStream::connect(&plain).unwrap();
    partial.write_all(b"GET /x HTTP/1.1\r\nHo").unwrap();
    drop(partial);
    drop(std::net::TcpStream::connect(&tls).unwrap());
    let mut probe = std::net::TcpStream::connect(&tls).unwrap();
    probe.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    drop(probe);
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-verify_return_error",
            "-servername",
            "shop.example",
            "-connect",
        ])
        .arg(&tls)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    assert!(
        !out.status.success(),
        "the test CA is not trusted by openssl"
    );
    // the gateway still serves, and logged none of it as an error
    assert_eq!(e.gw.get("/after").status, 200);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = e.gw.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
