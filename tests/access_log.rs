//! The access log end to end: what one line holds, redaction, sampling and per-API overrides,
//! the text format, and reopening on SIGUSR1, against the real binary.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

/// An API `/users/{id}` on `backend` (with the request-id plugin), `/quiet` with `quiet` as its
/// access log choice, `/down` on a dead node; the instance's access log is `access`.
fn start(backend: &EchoServer, access: &str, quiet: &str) -> (Gateway, std::path::PathBuf) {
    let dir = scratch_dir();
    let file = dir.join("access.log");
    let access = access.replace("FILE", &file.display().to_string());
    let gw = Gateway::start_with(
        &format!("  access_log: {access}\n"),
        &format!(
            r#"upstreams:
  - name: u
    vpc: vpc-main
    protocol: http
    nodes:
      - {{ host: 127.0.0.1, port: {port}, weight: 1 }}
  - name: dead
    vpc: vpc-main
    protocol: http
    retries: 1
    nodes:
      - {{ host: 127.0.0.1, port: {dead}, weight: 1 }}
services:
  - name: shop
    apis:
      - name: get_user
        path: /users/{{id}}
        backend: {{ upstream: u }}
        plugins: [{{ name: request-id }}]
      - name: quiet
        path: /quiet
        backend: {{ upstream: u }}
        access_log: {quiet}
      - name: down
        path: /down
        backend: {{ upstream: dead }}
"#,
            port = backend.addr().port(),
            dead = dead_addr().port(),
        ),
    );
    (gw, file)
}

/// The lines of `file` once it holds at least `n` (bounded wait: the writer flushes when idle).
fn wait_lines(file: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} lines: {text}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_json_line_per_request_with_what_happened_and_no_secrets() {
    let a = echo("a");
    let (gw, file) = start(&a, "{ file: FILE }", "true");
    let ok = request(
        "POST",
        &gw.url("/users/7?api_key=s3cr3t-value&x=1"),
        &[],
        Some("hello"),
    );
    assert_eq!(ok.status, 200);
    assert_eq!(gw.get("/nope").status, 404);
    assert_eq!(gw.get("/down").status, 502);
    let lines = wait_lines(&file, 3);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("s3cr3t-value"), "{text}");
    let json: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ok_line = &json[0];
    assert_eq!(ok_line["method"], "POST");
    assert_eq!(ok_line["path"], "/users/7?api_key=[redacted]&x=1");
    assert_eq!(ok_line["status"], 200);
    assert_eq!(ok_line["client"], "127.0.0.1");
    assert_eq!(ok_line["bytes_in"], 5);
    assert!(ok_line["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(ok_line["service"], "shop");
    assert_eq!(ok_line["api"], "get_user");
    assert_eq!(ok_line["upstream"], "u");
    assert_eq!(ok_line["node"], a.addr().to_string());
    assert_eq!(ok_line["attempts"], 1);
    assert_eq!(
        ok_line["request_id"].as_str().unwrap(),
        ok.header("x-request-id").unwrap(),
        "the id the request-id plugin set"
    );
    assert!(ok_line["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(ok_line["time"].as_str().unwrap().ends_with('Z'));
    assert!(ok_line.get("error").is_none());
    assert_eq!(json[1]["status"], 404);
    assert_eq!(json[1]["error"], "not_found");
    assert!(json[1].get("api").is_none());
    assert_eq!(json[2]["status"], 502);
    assert_eq!(json[2]["error"], "bad_gateway");
    assert_eq!(json[2]["upstream"], "dead");
    assert_eq!(json[2]["attempts"], 1, "one node, nothing else to try");
    assert_eq!(gw.metric("gatehouse_access_log_lines_total"), 3.0);
    assert_eq!(gw.metric("gatehouse_access_log_dropped_total"), 0.0);
}

#[test]
fn apis_override_the_instance_share_exactly() {
    let a = echo("a");
    // the instance logs nothing; one API logs half of its requests
    let (gw, file) = start(&a, "{ enabled: false, file: FILE }", "0.5");
    for _ in 0..100 {
        assert_eq!(gw.get("/quiet").status, 200);
        assert_eq!(gw.get("/users/1").status, 200);
    }
    assert_eq!(gw.get("/nope").status, 404);
    let lines = wait_lines(&file, 50);
    std::thread::sleep(Duration::from_millis(300));
    let lines_now = std::fs::read_to_string(&file).unwrap().lines().count();
    assert_eq!(lines_now, 50, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains("\"api\":\"quiet\"")));
    // and the other way round: the instance logs every request, one API none
    let (gw, file) = start(&a, "{ file: FILE, sample: 1 }", "false");
    for _ in 0..10 {
        gw.get("/quiet");
        gw.get("/users/1");
    }
    let lines = wait_lines(&file, 10);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 10);
    assert!(lines.iter().all(|l| l.contains("\"api\":\"get_user\"")));
}

#[test]
fn the_text_format_is_one_compact_line() {
    let a = echo("a");
    let (gw, file) = start(&a, "{ file: FILE, format: text }", "true");
    assert_eq!(gw.get("/users/9?token=abc").status, 200);
    let line = wait_lines(&file, 1).remove(0);
    assert!(
        line.starts_with("127.0.0.1 ") && line.contains("\"GET /users/9?token=[redacted]\" 200 "),
        "{line}"
    );
    assert!(
        line.contains(" shop.get_user u ") && line.contains(" attempts=1 "),
        "{line}"
    );
    assert!(line.ends_with(" error=-"), "{line}");
}

#[test]
fn sigusr1_reopens_the_file_after_rotation() {
    let a = echo("a");
    let (gw, file) = start(&a, "{ file: FILE }", "true");
    gw.get("/users/1");
    wait_lines(&file, 1);
    let rotated = file.with_extension("log.1");
    std::fs::rename(&file, &rotated).unwrap();
    gw.signal("USR1");
    // the signal is handled asynchronously: retry until a line lands in the new file
    let deadline = Instant::now() + Duration::from_secs(20);
    while !file.exists() {
        assert!(Instant::now() < deadline, "the log was never reopened");
        gw.get("/users/2");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_lines(&file, 1);
    assert_eq!(
        std::fs::read_to_string(&rotated)
            .unwrap()
            .lines()
            .next()
            .map(|l| l.contains("/users/1")),
        Some(true)
    );
    assert_eq!(gw.get("/users/3").status, 200, "the gateway lives on");
}

/// `text` with each byte, as `choices` say, kept or percent-encoded (upper- or lower-case hex).
fn encode_some(text: &str, choices: &[u8]) -> String {
    text.bytes()
        .enumerate()
        .map(
            |(i, b)| match choices.get(i % choices.len().max(1)).copied().unwrap_or(0) % 3 {
                0 => (b as char).to_string(),
                1 => format!("%{b:02X}"),
                _ => format!("%{b:02x}"),
            },
        )
        .collect()
}

/// A gateway whose `/k` and `/down` (a dead node) check a key-auth key, logging text lines to a
/// file; its own log at debug, so every line the engine writes about a request is seen.
fn key_auth_gateway(backend: &EchoServer, key: &str) -> (Gateway, std::path::PathBuf) {
    let dir = scratch_dir();
    let file = dir.join("access.log");
    let (listen, metrics) = (free_port(), free_port());
    let head = instance_yaml(listen, metrics).replace(
        "  threads: 2\n",
        &format!(
            "  threads: 2\n  access_log: {{ file: {}, format: text }}\n",
            file.display()
        ),
    );
    let body = format!(
        r#"upstreams:
  - {{ name: u, vpc: vpc-main, protocol: http, nodes: [{{ host: 127.0.0.1, port: {port} }}] }}
  - {{ name: dead, vpc: vpc-main, protocol: http, retries: 1, nodes: [{{ host: 127.0.0.1, port: {dead} }}] }}
services:
  - name: shop
    apis:
      - {{ name: k, path: /k, backend: {{ upstream: u }}, plugins: [{{ name: key-auth, config: {{ keys: ["{key}"] }} }}] }}
      - {{ name: down, path: /down, backend: {{ upstream: dead }}, plugins: [{{ name: key-auth, config: {{ keys: ["{key}"] }} }}] }}
"#,
        port = backend.addr().port(),
        dead = dead_addr().port(),
    );
    let gw = Gateway::start_config_logging(&format!("{head}{body}"), listen, metrics, "debug");
    (gw, file)
}

#[test]
fn no_spelling_of_a_key_in_the_query_reaches_a_log_line() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, TestRunner};
    const KEY: &str = "k-7fa3c9e2b5";
    let a = echo("a");
    let (gw, file) = key_auth_gateway(&a, KEY);
    let sent = std::cell::RefCell::new(Vec::new());
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(
                proptest::collection::vec(any::<u8>(), 1..12),
                proptest::collection::vec(any::<u8>(), 1..16),
                any::<bool>(),
                "[a-z]{1,4}",
            ),
            |(name_choices, value_choices, dead, extra)| {
                let name = encode_some("api_key", &name_choices);
                let value = encode_some(KEY, &value_choices);
                let path = if dead { "/down" } else { "/k" };
                let url = gw.url(&format!("{path}?{extra}=1&{name}={value}"));
                let r = request("GET", &url, &[], None);
                // the plugin decoded the key: accepted (and, on the dead node, failed upstream)
                let expected = if dead { 502 } else { 200 };
                prop_assert_eq!(r.status, expected, "{} {}", url, r.body);
                sent.borrow_mut().push(value);
                Ok(())
            },
        )
        .unwrap();
    let sent = sent.into_inner();
    let lines = wait_lines(&file, sent.len());
    let logs = [lines.join("\n"), gw.log()];
    for text in &logs {
        for value in &sent {
            assert!(!text.contains(value.as_str()), "{value} in:\n{text}");
        }
        assert!(!text.contains(KEY), "{text}");
    }
    // the lines still show which parameter was redacted
    assert!(
        lines.iter().all(|l| l.contains("=[redacted]")),
        "{lines:#?}"
    );
}

#[test]
fn a_client_cannot_forge_fields_of_a_text_line() {
    let a = echo("a");
    let (gw, file) = start(&a, "{ file: FILE, format: text }", "true");
    let forged = r#"r1 error=forged "GET /admin/x" 200"#;
    let r = request(
        "GET",
        &gw.url("/users/1"),
        &[("x-request-id", forged)],
        None,
    );
    assert_eq!(r.status, 200);
    let r = request("GET", &gw.url("/users/2%22%20200%20x"), &[], None);
    assert_eq!(r.status, 200);
    let lines = wait_lines(&file, 2);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    // the request id is one quoted field, its quotes escaped
    assert!(
        lines[0].ends_with(r#" rid="r1 error=forged \"GET /admin/x\" 200" error=-"#),
        "{}",
        lines[0]
    );
    // every line splits into the same 13 fields, the last one the gateway's error code
    for line in &lines {
        let fields = text_fields(line);
        assert_eq!(fields.len(), 13, "{line}: {fields:#?}");
        assert_eq!(fields[12], "error=-", "{line}");
        assert!(fields[11].starts_with("rid="), "{line}");
    }
}

/// The fields of a text line: split at spaces outside double quotes (a backslash escapes the
/// next character inside them).
fn text_fields(line: &str) -> Vec<String> {
    let (mut fields, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut escaped) = (false, false);
    for c in line.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                fields.push(std::mem::take(&mut field));
                continue;
            }
            _ => {}
        }
        field.push(c);
    }
    fields.push(field);
    fields
}
