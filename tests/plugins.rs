//! Plugins end to end: the standard plugins and faulty ones, through the real gateway.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use support::*;

#[test]
fn host_rewrite_sets_the_host_the_backend_sees() {
    let a = echo("a");
    let gw = Gateway::start(&with_plugins(
        &a,
        "          - { name: host-rewrite, config: { host: users.internal } }",
    ));
    let seen = gw.get("/users/1").json();
    assert_eq!(seen["host"], "users.internal");
    // the client's Host is still reported as forwarded
    assert_eq!(
        seen["headers"]["x-forwarded-host"].as_str().unwrap(),
        gw.base.trim_start_matches("http://")
    );
}

#[test]
fn key_auth_answers_401_without_a_valid_key_and_hides_the_key_upstream() {
    let a = echo("a");
    let gw = Gateway::start(&with_plugins(
        &a,
        "          - { name: key-auth, config: { keys: [\"k-0123456789\"] } }",
    ));
    let r = gw.get("/users/1");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "unauthorized");
    let r = request("GET", &gw.url("/users/1"), &[("x-api-key", "wrong")], None);
    assert_eq!(r.status, 401);
    assert_eq!(
        a.stats().requests(),
        0,
        "rejected requests never reach the backend"
    );
    let r = request(
        "GET",
        &gw.url("/users/1"),
        &[("x-api-key", "k-0123456789")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["headers"].get("x-api-key").is_none(),
        "credentials are not forwarded"
    );
    let r = gw.get("/users/1?api_key=k-0123456789");
    assert_eq!(r.status, 200, "key in the query: {}", r.body);
    assert!(!r.json()["uri"].as_str().unwrap().contains("k-0123456789"));
}

#[test]
fn cors_preflight_is_answered_without_the_backend() {
    let a = echo("a");
    let gw = Gateway::start(&with_plugins(
        &a,
        "          - { name: cors, config: { allow_origins: [\"https://shop.example\"], max_age: 600 } }",
    ));
    let r = request(
        "OPTIONS",
        &gw.url("/users/1"),
        &[
            ("origin", "https://shop.example"),
            ("access-control-request-method", "PUT"),
        ],
        None,
    );
    assert!(
        r.status == 204 || r.status == 200,
        "{} {}",
        r.status,
        r.body
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("PUT"));
    assert_eq!(
        a.stats().requests(),
        0,
        "the preflight never reached the backend"
    );
    let r = request(
        "GET",
        &gw.url("/users/1"),
        &[("origin", "https://shop.example")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let r = request(
        "GET",
        &gw.url("/users/1"),
        &[("origin", "https://evil.example")],
        None,
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "other origins get no CORS grant"
    );
}

#[test]
fn headers_plugin_edits_request_and_response_headers() {
    let a = echo("a");
    let gw = Gateway::start(&with_plugins(
        &a,
        r#"          - name: headers
            config:
              request: { set: { x-tenant: blue }, remove: [x-debug] }
              response: { set: { x-frame-options: DENY } }"#,
    ));
    let r = request("GET", &gw.url("/users/1"), &[("x-debug", "1")], None);
    let seen = r.json();
    assert_eq!(seen["headers"]["x-tenant"], "blue");
    assert!(seen["headers"].get("x-debug").is_none());
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
}

#[test]
fn path_rewrite_changes_the_path_sent_upstream() {
    let a = echo("a");
    let gw = Gateway::start(&with_plugins(
        &a,
        "          - { name: path-rewrite, config: { strip_prefix: /users, add_prefix: /v2/people } }",
    ));
    assert_eq!(gw.get("/users/42?x=1").json()["uri"], "/v2/people/42?x=1");
}

#[test]
fn request_id_is_generated_or_kept_and_echoed_back() {
    let a = echo("a");
    let gw = Gateway::start(&with_plugins(&a, "          - { name: request-id }"));
    let r = gw.get("/users/1");
    let sent = r.json()["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(sent.len() >= 16, "{sent}");
    assert_eq!(r.header("x-request-id"), Some(sent.as_str()));
    let r = request(
        "GET",
        &gw.url("/users/1"),
        &[("x-request-id", "client-id-1")],
        None,
    );
    assert_eq!(r.json()["headers"]["x-request-id"], "client-id-1");
    assert_eq!(r.header("x-request-id"), Some("client-id-1"));
}

#[test]
fn ip_restriction_answers_403_to_denied_clients() {
    let a = echo("a");
    let gw = Gateway::start(&with_plugins(
        &a,
        "          - { name: ip-restriction, config: { deny: [\"127.0.0.0/8\"] } }",
    ));
    let r = gw.get("/users/1");
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(a.stats().requests(), 0);
    assert_eq!(
        gw.get("/plain").status,
        200,
        "other APIs are not restricted"
    );
}

#[test]
fn the_c_plugin_works_like_any_other() {
    let a = echo("a");
    let component = shipped_plugin("c-example");
    let gw = Gateway::start_with(
        &file_roots_for(&component),
        &with_plugins(
            &a,
            &format!("          - {{ path: {} }}", component.display()),
        ),
    );
    let r = gw.get("/users/1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-powered-by"), Some("gatehouse-c"));
    assert_eq!(gw.get("/users/admin").status, 403);
}

#[test]
fn plugins_run_in_the_listed_order() {
    let a = echo("a");
    // key-auth first: a request without a key is refused before headers would add anything
    let gw = Gateway::start(&with_plugins(
        &a,
        r#"          - { name: key-auth, config: { keys: ["k-0123456789"] } }
          - { name: headers, config: { response: { set: { x-seen: "yes" } } } }"#,
    ));
    let r = gw.get("/users/1");
    assert_eq!(r.status, 401);
    let r = request(
        "GET",
        &gw.url("/users/1"),
        &[("x-api-key", "k-0123456789")],
        None,
    );
    assert_eq!(r.header("x-seen"), Some("yes"));
}

/// A plugin that loops forever in `on-request`, written to disk.
fn looping_plugin(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("looping.wasm");
    let endless = "(loop $forever (br $forever))";
    std::fs::write(
        &path,
        gatehouse_plugin_host::testing::binary(&gatehouse_plugin_host::testing::component_wat(
            endless,
        )),
    )
    .unwrap();
    path
}

#[test]
fn a_faulty_plugin_fails_only_its_requests_under_load() {
    let a = echo("a");
    let dir = scratch_dir();
    let looping = looping_plugin(&dir);
    let gw = Gateway::start_with(
        &file_roots_for(&looping),
        &with_plugins(
            &a,
            &format!("          - {{ path: {} }}", looping.display()),
        ),
    );
    let (faulty_500, plain_200, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (f, p, o) = (faulty_500.clone(), plain_200.clone(), other.clone());
            let (faulty_url, plain_url) = (gw.url("/users/1"), gw.url("/plain"));
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let url = if i % 2 == 0 { &faulty_url } else { &plain_url };
                    let r = request("GET", url, &[], None);
                    match (i % 2, r.status) {
                        (0, 500) => {
                            assert_eq!(r.json()["error"], "plugin_failed");
                            assert_eq!(r.json()["plugin"], "looping");
                            f.fetch_add(1, Ordering::Relaxed)
                        }
                        (1, 200) => p.fetch_add(1, Ordering::Relaxed),
                        _ => o.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(other.load(Ordering::Relaxed), 0);
    assert_eq!(
        faulty_500.load(Ordering::Relaxed),
        60,
        "every request through the faulty plugin failed cleanly"
    );
    assert_eq!(
        plain_200.load(Ordering::Relaxed),
        60,
        "every other request succeeded"
    );
    // the first failures run into the time limit; then the breaker fails the rest at once
    let timeouts =
        gw.metric(r#"gatehouse_plugin_failures_total{plugin="looping",reason="timeout"}"#);
    let fast =
        gw.metric(r#"gatehouse_plugin_failures_total{plugin="looping",reason="breaker_open"}"#);
    assert!(timeouts >= 5.0, "{timeouts}");
    assert_eq!(timeouts + fast, 60.0, "every failure counted once");
    assert_eq!(gw.get("/plain").status, 200, "the gateway lives on");
}

#[test]
fn fail_open_skips_a_failing_plugin() {
    let a = echo("a");
    let dir = scratch_dir();
    let looping = looping_plugin(&dir);
    let gw = Gateway::start_with(&file_roots_for(&looping), &with_plugins(
        &a,
        &format!("          - {{ path: {}, on_error: fail_open }}\n          - {{ name: host-rewrite, config: {{ host: after.internal }} }}", looping.display()),
    ));
    let r = gw.get("/users/1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["host"],
        "after.internal",
        "later plugins still run"
    );
}

#[test]
fn validate_shows_a_plugins_complaint_under_its_path() {
    let dir = scratch_dir();
    let file = dir.join("bad-plugin.yaml");
    let a = echo("a");
    std::fs::write(
        &file,
        format!(
            "{}{}",
            instance_yaml(1, 2),
            with_plugins(
                &a,
                "          - { name: host-rewrite, config: { hots: x } }\n          - { name: rate-limit, config: { limit: ten, window: 1m } }"
            )
        ),
    )
    .unwrap();
    let (status, _, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "services[0].apis[0].plugins[0].config: plugin host-rewrite refused its configuration"
        ),
        "{err}"
    );
    // the key at fault, and where the plugin's keys are documented
    assert!(
        err.contains(
            "services[0].apis[0].plugins[1].config: plugin rate-limit refused its configuration: invalid configuration: `limit`: invalid type: string \"ten\", expected u64"
        ),
        "{err}"
    );
    assert!(err.contains("plugins/rate-limit/README.md"), "{err}");
}

#[test]
fn validate_shows_what_each_plugin_use_needs_and_warns_of_ungranted_0_1_plugins() {
    let dir = scratch_dir();
    let probe = dir.join("probe.wasm");
    std::fs::copy(shipped_plugin("grant-probe"), &probe).unwrap();
    let legacy = dir.join("legacy.wasm");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../gateway/plugin/tests/fixtures/contract-0.1.0/headers.wasm"),
        &legacy,
    )
    .unwrap();
    let file = dir.join("uses.yaml");
    let a = echo("a");
    let plugins = format!(
        "          - {{ name: key-auth, config: {{ keys: [k-0123456789] }} }}\n\
         \x20         - path: {probe}\n\
         \x20           config: {{ needs: {{ request_headers: {{ read: [x-tenant-*] }}, counters: true }} }}\n\
         \x20           grants: {{ request_headers: {{ read: [x-tenant-*] }}, counters: true }}\n\
         \x20         - {{ path: {legacy} }}",
        probe = probe.display(),
        legacy = legacy.display()
    );
    std::fs::write(
        &file,
        format!(
            "{}{}",
            instance_yaml(1, 2).replace(
                "  threads: 2\n",
                &format!("  threads: 2\n{}", file_roots_for(&probe))
            ),
            with_plugins(&a, &plugins)
        ),
    )
    .unwrap();
    let (status, out, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
    let line = |path: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(path))
            .unwrap_or_else(|| panic!("no line for {path}: {out}"))
            .to_owned()
    };
    let key_auth = line("services[0].apis[0].plugins[0]");
    assert!(key_auth.contains("key-auth (0.2"), "{key_auth}");
    assert!(key_auth.contains("hooks on-request"), "{key_auth}");
    assert!(key_auth.contains("granted as declared"), "{key_auth}");
    let probe = line("services[0].apis[0].plugins[1]");
    assert!(
        probe.contains("request_headers.read x-tenant-*; counters; granted by its grants:"),
        "{probe}"
    );
    let legacy = line("services[0].apis[0].plugins[2]");
    assert!(legacy.contains("legacy (0.1"), "{legacy}");
    assert!(legacy.contains("declares nothing"), "{legacy}");
    // only the ungranted 0.1 plugin is warned of, on stderr
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("services[0].apis[0].plugins[2]")
            && warnings[0].contains("runs ungranted"),
        "{err}"
    );
}

#[test]
fn a_body_plugin_on_a_websocket_api_is_refused_at_load() {
    let dir = scratch_dir();
    let file = dir.join("ws-body.yaml");
    let a = echo("a");
    std::fs::write(
        &file,
        format!(
            "{}upstreams:\n  - {{ name: u, vpc: vpc-main, protocol: http, nodes: [{{ host: 127.0.0.1, port: {} }}] }}\nservices:\n  - name: s\n    apis:\n      - name: live\n        path: /live\n        websocket: true\n        backend: {{ upstream: u }}\n        plugins:\n          - {{ name: json-validator, config: {{ methods: [GET] }} }}\n",
            instance_yaml(1, 2),
            a.addr().port()
        ),
    )
    .unwrap();
    let (status, _, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("services[0].apis[0].plugins[0]: plugin json-validator reads whole bodies")
            && err.contains("WebSocket"),
        "{err}"
    );
}

#[test]
fn a_body_plugin_on_a_grpc_api_is_refused_at_load() {
    let dir = scratch_dir();
    let file = dir.join("grpc-body.yaml");
    let yaml = |plugin: &str| {
        format!(
            "{}upstreams:\n  - {{ name: u, vpc: vpc-main, protocol: http, http2: true, nodes: [{{ host: 127.0.0.1, port: 50051 }}] }}\nservices:\n  - name: s\n    apis:\n      - name: echo\n        path: \"/demo.Echo/{{method}}\"\n        methods: [POST]\n        grpc: true\n        backend: {{ upstream: u }}\n        plugins:\n          - {plugin}\n",
            instance_yaml(1, 2),
        )
    };
    std::fs::write(&file, yaml("{ name: json-validator }")).unwrap();
    let (status, _, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("services[0].apis[0].plugins[0]: plugin json-validator reads whole bodies")
            && err.contains("gRPC API (grpc: true)"),
        "{err}"
    );
    // a plugin that reads headers only is welcome there
    std::fs::write(&file, yaml("{ name: request-id }")).unwrap();
    let (status, out, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
}

/// A body plugin works for HTTP/2 clients as for HTTP/1.1 ones: the body is read whole from
/// the stream's DATA frames, checked, and the valid one goes upstream.
#[test]
fn a_body_plugin_serves_http2_clients() {
    let a = echo("a");
    let gw = Gateway::start_with(
        "  http: { h2c: true }\n",
        &with_plugins(
            &a,
            r#"          - { name: json-validator, config: { schema: { type: object, required: [id] } } }"#,
        ),
    );
    let url = gw.url("/users/7");
    let curl = |body: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
            ])
            .args([
                "--data-binary",
                body,
                "-w",
                "\n%{http_code} %{http_version}",
                &url,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bad = curl(r#"{"name":"x"}"#);
    assert!(bad.ends_with("400 2"), "{bad}");
    assert!(bad.contains("invalid_body"), "{bad}");
    let good = curl(r#"{"id":7}"#);
    assert!(good.ends_with("200 2"), "{good}");
    // the node got the whole body it was sent
    assert!(good.contains(r#""body_bytes":8"#), "{good}");
    assert_eq!(a.stats().requests(), 1);
}

/// The guide's response-body example, end to end: a granted component file hides a field of
/// the node's JSON answer; refused without the grant.
#[test]
fn the_json_redact_example_hides_a_field_of_json_responses() {
    let a = echo("a");
    let redact = shipped_plugin("json-redact");
    let plugin = |grants: &str| {
        format!(
            "          - path: {}\n            config: {{ fields: [x-secret] }}\n{grants}",
            redact.display()
        )
    };
    let gw = Gateway::start_with(
        &format!("{}  http: {{ h2c: true }}\n", file_roots_for(&redact)),
        &with_plugins(
            &a,
            &plugin(
                "            grants: { response_body: true, response_headers: { read: [content-type] } }\n",
            ),
        ),
    );
    // the echo node answers with the request's headers as JSON
    let r = request("GET", &gw.url("/users/1"), &[("x-secret", "hunter2")], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("hunter2"), "{}", r.body);
    assert_eq!(r.json()["headers"]["x-secret"], "[redacted]", "{}", r.body);
    // the new body is framed for its own length
    if let Some(length) = r.header("content-length") {
        assert_eq!(length.parse::<usize>().unwrap(), r.body.len());
    }
    // the same for an HTTP/2 client
    let out = std::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-H", "x-secret: hunter2"])
        .args(["-w", "\n%{http_code} %{http_version}", &gw.url("/users/1")])
        .output()
        .unwrap();
    let h2 = String::from_utf8_lossy(&out.stdout);
    assert!(h2.ends_with("200 2"), "{h2}");
    assert!(
        h2.contains(r#""x-secret":"[redacted]""#) && !h2.contains("hunter2"),
        "{h2}"
    );
    // without the grant it is refused at load, naming what is missing
    let dir = scratch_dir();
    let file = dir.join("ungranted.yaml");
    std::fs::write(
        &file,
        format!(
            "{}{}",
            instance_yaml(1, 2).replace(
                "  threads: 2\n",
                &format!("  threads: 2\n{}", file_roots_for(&redact))
            ),
            with_plugins(&a, &plugin(""))
        ),
    )
    .unwrap();
    let (status, _, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("response_body") && err.contains("response_headers.read: content-type"),
        "{err}"
    );
}

/// A body a plugin reads that stalls is bounded by `body_timeout` like any other: 408, and the
/// node never sees the request.
#[test]
fn a_stalled_body_a_plugin_reads_is_answered_408_at_body_timeout() {
    let a = echo("a");
    let component = shipped_plugin("grant-probe");
    let gw = Gateway::start_with(
        &format!(
            "{}  http: {{ body_timeout: 1s }}\n",
            file_roots_for(&component)
        ),
        &with_plugins(
            &a,
            &probe_entry(
                "            grants: { request_body: true }\n            config: { needs: { request_body: true } }\n",
            ),
        ),
    );
    let addr = gw.base.trim_start_matches("http://").to_owned();
    // 3 bytes of a declared 100, then nothing (the client keeps its side open)
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"POST /users/1 HTTP/1.1\r\nHost: edge\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(a.stats().requests(), 0, "the node saw nothing");
}

/// Writes the binary of a test component to `dir/name.wasm`.
fn component_file(dir: &std::path::Path, name: &str, wat: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, gatehouse_plugin_host::testing::binary(wat)).unwrap();
    path
}

#[test]
fn a_plugin_whose_configure_loops_is_stopped_at_validate_and_at_start() {
    let dir = scratch_dir();
    let looping = component_file(
        &dir,
        "stuck",
        &gatehouse_plugin_host::testing::component_wat_configuring("(loop $forever (br $forever))"),
    );
    let a = echo("a");
    let file = dir.join("gatehouse.yaml");
    std::fs::write(
        &file,
        format!(
            "{}{}",
            instance_yaml(free_port(), free_port()),
            with_plugins(&a, "          - { path: stuck.wasm }")
        ),
    )
    .unwrap();
    // both finish (the plugin is stopped at the configure time limit) and name the plugin
    let (status, _, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("services[0].apis[0].plugins[0]") && err.contains("time limit"),
        "{err}"
    );
    let (status, _, err) = run_cli(&["run", "-c", file.to_str().unwrap()]);
    assert!(!status.success(), "{err}");
    assert!(err.contains("time limit"), "{err}");
    assert!(looping.exists());
}

#[test]
fn five_hundred_plugin_uses_load_and_serve_under_load_without_instantiate_failures() {
    let a = echo("a");
    let apis: String = (0..500)
        .map(|i| {
            format!(
                "      - {{ name: api{i}, path: \"/p{i}/{{id}}\", backend: {{ upstream: u }}, plugins: [{{ name: request-id }}] }}\n"
            )
        })
        .collect();
    let body = format!(
        "upstreams:\n  - {{ name: u, vpc: vpc-main, protocol: http, nodes: [{{ host: 127.0.0.1, port: {} }}] }}\nservices:\n  - name: many\n    apis:\n{apis}",
        a.addr().port()
    );
    let dir = scratch_dir();
    let file = dir.join("many.yaml");
    // generous call time: this is about instance capacity, on a machine busy with other tests
    let extra = "  plugins: { time_limit: 1s }\n";
    let head = instance_yaml(1, 2).replace("  threads: 2\n", &format!("  threads: 2\n{extra}"));
    std::fs::write(&file, format!("{head}{body}")).unwrap();
    let (status, out, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert!(
        status.success(),
        "validate accepts what run accepts: {out}{err}"
    );
    let gw = Gateway::start_with(extra, &body);
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..64)
        .map(|t| {
            let (base, failures) = (gw.base.clone(), failures.clone());
            std::thread::spawn(move || {
                for i in 0..10 {
                    let api = (t * 10 + i) % 100;
                    let r = request("GET", &format!("{base}/p{api}/1"), &[], None);
                    if r.status != 200 {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", r.status, r.body));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    let text = gw.metrics_text();
    let instantiate: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("gatehouse_plugin_failures_total") && l.contains("reason=\"instantiate\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(instantiate, 0.0);
}

#[test]
fn a_replaced_component_file_runs_its_new_code_after_a_reload() {
    use gatehouse_plugin_host::testing::{component_wat, component_wat_editing};
    let a = echo("a");
    let dir = scratch_dir();
    let plugin = component_file(&dir, "swap", &component_wat(""));
    let gw = Gateway::start_with(
        &file_roots_for(&plugin),
        &with_plugins(&a, &format!("          - {{ path: {} }}", plugin.display())),
    );
    let seen = gw.get("/users/1").json();
    assert!(seen["headers"].get("x-plugin").is_none());
    // the same path, new code: `x-plugin: edited` on every request
    let editing = component_wat_editing(
        "(call $set (local.get $req) (i32.const 1096) (i32.const 8) (i32.const 1112) (i32.const 6))",
        "",
    );
    std::fs::write(&plugin, gatehouse_plugin_host::testing::binary(&editing)).unwrap();
    gw.signal("HUP");
    let mut edited = false;
    for _ in 0..100 {
        if gw.get("/users/1").json()["headers"]["x-plugin"] == "edited" {
            edited = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        edited,
        "the reload did not pick up the new component:\n{}",
        gw.log()
    );
}

#[test]
fn a_plugin_that_breaks_after_start_costs_only_its_own_requests() {
    let a = echo("a");
    let dir = scratch_dir();
    let now_ms = unix_ms();
    // configures at start; two seconds later its configure loops and every call traps
    let breaking = component_file(
        &dir,
        "breaking",
        &gatehouse_plugin_host::testing::component_wat_failing_after(now_ms + 2000),
    );
    let gw = Gateway::start_with(
        &file_roots_for(&breaking),
        &with_plugins(
            &a,
            &format!("          - {{ path: {} }}", breaking.display()),
        ),
    );
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(2200) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (clean_ok, clean_slow, clean_other, faulty_500) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (ok, slow, other, faulty) = (
                clean_ok.clone(),
                clean_slow.clone(),
                clean_other.clone(),
                faulty_500.clone(),
            );
            let (faulty_url, clean_url) = (gw.url("/users/1"), gw.url("/plain"));
            std::thread::spawn(move || {
                for _ in 0..40 {
                    if i % 2 == 0 {
                        let r = request("GET", &faulty_url, &[], None);
                        if r.status == 500 {
                            faulty.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        let t = std::time::Instant::now();
                        let r = request("GET", &clean_url, &[], None);
                        match r.status {
                            200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => other.fetch_add(1, Ordering::Relaxed),
                        };
                        // a clean request that waited behind the broken plugin's configure
                        if t.elapsed() > std::time::Duration::from_millis(500) {
                            slow.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        clean_ok.load(Ordering::Relaxed),
        160,
        "every clean request answered 200"
    );
    assert_eq!(clean_other.load(Ordering::Relaxed), 0);
    assert_eq!(
        clean_slow.load(Ordering::Relaxed),
        0,
        "no clean request waited"
    );
    assert_eq!(
        faulty_500.load(Ordering::Relaxed),
        160,
        "every faulty request failed cleanly"
    );
    let opened = gw.metric(r#"gatehouse_plugin_breaker_opened_total{plugin="breaking"}"#);
    assert!(opened >= 1.0, "the breaker opened");
    let fast =
        gw.metric(r#"gatehouse_plugin_failures_total{plugin="breaking",reason="breaker_open"}"#);
    assert!(fast >= 100.0, "most faulty requests failed fast: {fast}");
    assert_eq!(
        gw.log().matches("breaker open").count(),
        1,
        "one log line per transition"
    );
}

/// Runs `requests` GETs of `path` on `threads` threads and returns the statuses seen, counted.
fn load_statuses(
    gw: &Gateway,
    path: &str,
    threads: usize,
    requests: usize,
) -> std::collections::BTreeMap<u16, usize> {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let url = gw.url(path);
            std::thread::spawn(move || {
                (0..requests)
                    .map(|_| request("GET", &url, &[], None).status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for h in handles {
        for status in h.join().unwrap() {
            *counts.entry(status).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn a_plugin_replying_with_huge_bodies_fails_cleanly_and_gives_its_memory_back() {
    const BODY: u32 = 100 * 1000 * 1000;
    let a = echo("a");
    let dir = scratch_dir();
    let bomb = component_file(
        &dir,
        "bomb",
        &gatehouse_plugin_host::testing::component_wat_replying(BODY),
    );
    let gw = Gateway::start_with(
        &format!(
            "  plugins: {{ memory_limit: 128MiB, time_limit: 1s }}\n{}",
            file_roots_for(&bomb)
        ),
        &with_plugins(&a, &format!("          - {{ path: {} }}", bomb.display())),
    );
    assert_eq!(gw.get("/plain").status, 200);
    let before = gw.rss_kib();
    let statuses = load_statuses(&gw, "/users/1", 2, 10);
    assert_eq!(
        statuses,
        [(500, 20)].into(),
        "every request failed cleanly: {statuses:?}"
    );
    let r = gw.get("/users/1");
    assert_eq!(r.json()["error"], "plugin_failed", "{}", r.body);
    assert_eq!(r.json()["plugin"], "bomb");
    assert_eq!(
        gw.metric(r#"gatehouse_plugin_failures_total{plugin="bomb",reason="invalid_output"}"#),
        21.0
    );
    assert!(
        gw.log()
            .contains("a reply body of 100000000 bytes (at most 1048576)"),
        "the log says why"
    );
    let after = gw.rss_kib();
    // another round: memory does not pile up
    let statuses = load_statuses(&gw, "/users/1", 2, 10);
    assert_eq!(statuses, [(500, 20)].into());
    let again = gw.rss_kib();
    eprintln!(
        "RSS before {before} KiB, after 21 replies of 100 MB: {after} KiB, after 20 more: {again} KiB"
    );
    // the instances that built the bodies are dropped with their memory (four warm instances of
    // 100 MB each before) and the lifted bodies are given back: less than half a body of growth
    for rss in [after, again] {
        assert!(
            rss < before + u64::from(BODY) / 1024 / 2,
            "RSS grew from {before} KiB to {rss} KiB"
        );
    }
    assert_eq!(gw.get("/plain").status, 200, "the gateway lives on");
}

#[test]
fn a_plugin_logging_in_a_loop_is_held_to_its_log_budget() {
    const LINE: u32 = 64 * 1024;
    const LINES: u32 = 200;
    const REQUESTS: usize = 50;
    let a = echo("a");
    let dir = scratch_dir();
    let flood = component_file(
        &dir,
        "flood",
        &gatehouse_plugin_host::testing::component_wat_logging(LINE, LINES),
    );
    let gw = Gateway::start_with(
        &format!(
            "  plugins: {{ time_limit: 1s }}\n{}",
            file_roots_for(&flood)
        ),
        &with_plugins(&a, &format!("          - {{ path: {} }}", flood.display())),
    );
    let log_before = gw.log().len();
    let started = std::time::Instant::now();
    let statuses = load_statuses(&gw, "/users/1", 5, REQUESTS / 5);
    let seconds = started.elapsed().as_secs() + 1;
    assert_eq!(statuses, [(200, REQUESTS)].into(), "{statuses:?}");
    let log = gw.log();
    let written: Vec<&str> = log[log_before..]
        .lines()
        .filter(|l| l.contains("plugin flood (shop.get_user): xxxx"))
        .collect();
    let dropped = gw.metric(r#"gatehouse_plugin_log_lines_dropped_total{plugin="flood"}"#);
    let attempted = REQUESTS as u64 * u64::from(LINES);
    eprintln!(
        "{attempted} lines of 64 KiB attempted in {seconds} s: {} written ({} bytes of log in all), {dropped} dropped",
        written.len(),
        log.len() - log_before
    );
    assert_eq!(
        written.len() as u64 + dropped as u64,
        attempted,
        "every line is written or counted as dropped"
    );
    // at most 50 lines in each second the test ran (plus the second it started in), each cut
    assert!(
        written.len() as u64 <= 50 * (seconds + 1),
        "{} lines in {seconds} s",
        written.len()
    );
    assert!(
        written.iter().all(|l| l.len() < 4096 + 200),
        "lines are cut"
    );
}

#[test]
fn a_broken_plugin_is_probed_in_the_background_and_its_breaker_closes_when_it_works_again() {
    let a = echo("a");
    let dir = scratch_dir();
    let now_ms = unix_ms();
    // works at start, is broken (configure loops, on-request traps) for 3 s, then works again
    let (from, until) = (now_ms + 3000, now_ms + 6000);
    let flaky = component_file(
        &dir,
        "flaky",
        &gatehouse_plugin_host::testing::component_wat_failing_between(from, until),
    );
    let gw = Gateway::start_with(
        &file_roots_for(&flaky),
        &with_plugins(&a, &format!("          - {{ path: {} }}", flaky.display())),
    );
    assert_eq!(gw.get("/users/1").status, 200, "works before");
    while unix_ms() < from + 100 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // broken: requests fail (soon at once, the breaker open) until it works again
    let mut during = std::collections::BTreeMap::new();
    while unix_ms() < until {
        *during.entry(gw.get("/users/1").status).or_insert(0) += 1;
        assert_eq!(gw.get("/plain").status, 200, "the clean API is untouched");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(during.keys().copied().collect::<Vec<_>>(), [500]);
    assert_eq!(
        gw.metric(r#"gatehouse_plugin_breaker_opened_total{plugin="flaky"}"#),
        1.0
    );
    // working again: a background probe makes an instance, one trial call closes the breaker
    // (the cooldown has grown to at most 8 s over the broken 3 s)
    let mut after = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while gw.metric(r#"gatehouse_plugin_breaker_open{plugin="flaky"}"#) != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the breaker never closed"
        );
        *after.entry(gw.get("/users/1").status).or_insert(0) += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let statuses = load_statuses(&gw, "/users/1", 4, 10);
    assert_eq!(statuses, [(200, 40)].into(), "closed: every call works");
    let log = gw.log();
    assert_eq!(log.matches("breaker open").count(), 1, "{log}");
    assert_eq!(log.matches("works again, breaker closed").count(), 1);
    // requests after the plugin recovered failed only fast, never on a broken call: the probe
    // found the broken configure off the request path
    let timeouts_or_traps = gw
        .metric(r#"gatehouse_plugin_failures_total{plugin="flaky",reason="trap"}"#)
        + gw.metric(r#"gatehouse_plugin_failures_total{plugin="flaky",reason="timeout"}"#);
    assert!(
        timeouts_or_traps <= 10.0,
        "broken calls: {timeouts_or_traps}"
    );
    eprintln!("while broken: {during:?}; after, until closed: {after:?}");
}

/// The host clock as plugins see it (Unix milliseconds).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn each_plugin_use_has_its_own_memory_and_time_limits() {
    use gatehouse_plugin_host::testing::component_wat;
    let a = echo("a");
    let dir = scratch_dir();
    // grows its memory to about 4 MiB once, and traps when the limit refuses the growth
    let hungry = component_file(
        &dir,
        "hungry",
        &component_wat(
            "(if (i32.lt_u (memory.size) (i32.const 64)) (then \
               (if (i32.eq (memory.grow (i32.const 64)) (i32.const -1)) (then unreachable))))",
        ),
    );
    // counts 30 million steps down in memory: tens of milliseconds, far from both limits below
    let slow = component_file(
        &dir,
        "slow",
        &component_wat(
            "(i32.store (i32.const 1024) (i32.const 30000000)) \
             (loop $spin \
               (i32.store (i32.const 1024) (i32.sub (i32.load (i32.const 1024)) (i32.const 1))) \
               (br_if $spin (i32.load (i32.const 1024))))",
        ),
    );
    let api = |name: &str, plugin: String| {
        format!(
            "      - name: {name}\n        path: /{name}\n        backend: {{ upstream: u }}\n        plugins: [{plugin}]\n"
        )
    };
    let (h, s) = (hungry.display(), slow.display());
    let body = format!(
        "upstreams:\n  - name: u\n    vpc: vpc-main\n    protocol: http\n    nodes: [{{ host: 127.0.0.1, port: {} }}]\nservices:\n  - name: shop\n    apis:\n{}{}{}{}",
        a.addr().port(),
        api("hungry_small", format!("{{ path: {h}, memory_limit: 2MiB }}")),
        api("hungry_default", format!("{{ path: {h} }}")),
        api("slow_default", format!("{{ path: {s} }}")),
        api("slow_patient", format!("{{ path: {s}, time_limit: 1s }}")),
    );
    let extra = format!(
        "{}  plugins: {{ memory_limit: 16MiB, time_limit: 5ms, max_time_limit: 1s }}\n",
        file_roots_for(&hungry)
    );
    let gw = Gateway::start_with(&extra, &body);
    let small = gw.get("/hungry_small");
    assert_eq!(small.status, 500, "2 MiB cannot hold 4 MiB: {}", small.body);
    assert_eq!(small.json()["error"], "plugin_failed");
    assert_eq!(gw.get("/hungry_default").status, 200, "16 MiB can");
    let quick = gw.get("/slow_default");
    assert_eq!(quick.status, 500, "5 ms is too short: {}", quick.body);
    assert_eq!(gw.get("/slow_patient").status, 200, "1 s is long enough");
    assert!(gw.metric(r#"gatehouse_plugin_failures_total{plugin="slow",reason="timeout"}"#) >= 1.0);
}

#[test]
fn a_plugin_use_cannot_ask_for_more_than_the_instance_allows() {
    let dir = scratch_dir();
    let file = dir.join("gatehouse.yaml");
    std::fs::write(
        &file,
        format!(
            "{}services:\n  - name: s\n    apis:\n      - name: a\n        path: /a\n        backend: {{ response: {{ body: x }} }}\n        plugins:\n          - {{ name: request-id, memory_limit: 64MiB, time_limit: 100ms }}\n          - {{ name: request-id, memory_limit: lots }}\n",
            instance_yaml(free_port(), free_port()).replace(
                "  threads: 2\n",
                "  threads: 2\n  plugins: { max_memory_limit: 32MiB, max_time_limit: 50ms }\n"
            )
        ),
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["validate", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    for expected in [
        "services[0].apis[0].plugins[0].memory_limit",
        "max_memory_limit",
        "services[0].apis[0].plugins[0].time_limit",
        "services[0].apis[0].plugins[1].memory_limit",
        "is not a size",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
}

/// A `grant-probe` plugin entry (see plugins/grant-probe) with `lines` of YAML under it (keys of
/// the entry, indented by 12 spaces), for [`with_plugins`].
fn probe_entry(lines: &str) -> String {
    format!(
        "          - path: {}\n{lines}",
        shipped_plugin("grant-probe").display()
    )
}

/// A gateway whose API `/users/{id}` on `backend` has one `grant-probe` entry with `lines`
/// ([`probe_entry`]).
fn probe_gateway(backend: &EchoServer, lines: &str) -> Gateway {
    Gateway::start_with(
        &file_roots_for(shipped_plugin("grant-probe")),
        &with_plugins(backend, &probe_entry(lines)),
    )
}

/// Sends raw request bytes and reads the whole answer until the gateway closes.
fn raw_exchange(addr: &str, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A chunked request for `path` carrying `body` in chunks of at most 16 KiB, with
/// `Connection: close`.
fn chunked_request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(16 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Sends a chunked PUT of `total` bytes in 16 KiB chunks a little apart, ignoring write errors
/// (the gateway may answer and close before the end), then reads the answer.
fn chunked_in_steps(addr: &str, path: &str, total: usize) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\n");
    let _ = s.write_all(head.as_bytes());
    let mut sent = 0;
    while sent < total {
        let n = (total - sent).min(16 * 1024);
        let mut chunk = format!("{n:x}\r\n").into_bytes();
        chunk.extend(std::iter::repeat_n(b'e', n));
        chunk.extend_from_slice(b"\r\n");
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += n;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of a raw HTTP/1.1 answer whose body is one JSON document (chunked or not).
fn raw_json(answer: &str) -> serde_json::Value {
    let start = answer
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {answer:?}"));
    let end = answer.rfind('}').unwrap();
    serde_json::from_str(&answer[start..=end]).unwrap()
}

#[test]
fn a_body_plugin_reads_the_whole_request_body_and_its_version_goes_upstream() {
    let a = echo("a");
    let gw = probe_gateway(
        &a,
        "            grants: { request_body: true }
            config: { needs: { request_body: true }, set_body: replaced body }
",
    );
    let r = request("POST", &gw.url("/users/1"), &[], Some("hello world, long"));
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.json();
    assert_eq!(seen["body_bytes"], 13, "{seen}");
    assert_eq!(seen["headers"]["content-length"], "13");
    // a chunked body is read whole too; the upstream gets the plugin's version with its length
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let answer = raw_exchange(&addr, &chunked_request("POST", "/users/1", b"hello"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = raw_json(&answer);
    assert_eq!(seen["body_bytes"], 13, "{seen}");
    assert_eq!(seen["headers"]["content-length"], "13");
    assert!(seen["headers"].get("transfer-encoding").is_none(), "{seen}");
    // an API whose plugins read no body streams it as it came
    let answer = raw_exchange(&addr, &chunked_request("POST", "/plain", b"hello"));
    let seen = raw_json(&answer);
    assert_eq!(seen["body_bytes"], 5, "{seen}");
    assert_eq!(seen["headers"]["transfer-encoding"], "chunked");
    // a body of any length up to the limit, over what the engine keeps to resend
    // over the default body_limit (64 KiB), declared: 413 before a byte of it is read
    let answer = raw_exchange(
        &addr,
        b"POST /users/1 HTTP/1.1\r\nHost: edge\r\nContent-Length: 204800\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(
        a.stats().requests(),
        3,
        "refused bodies never reach the backend"
    );
}

#[test]
fn request_bodies_over_the_plugins_limit_are_refused_before_the_upstream() {
    let a = echo("a");
    let component = shipped_plugin("grant-probe");
    let gw = Gateway::start_with(
        &format!(
            "{}  plugins: {{ max_body_limit: 1MiB }}\n",
            file_roots_for(&component)
        ),
        &with_plugins(
            &a,
            &probe_entry(
                "            grants: { request_body: true }
            body_limit: 256KiB
            config: { needs: { request_body: true } }
",
            ),
        ),
    );
    let addr = gw.base.trim_start_matches("http://").to_owned();
    // with a Content-Length: held whole up to the limit, even past the engine's 64 KiB
    for size in [0, 1, 64 * 1024, 64 * 1024 + 1, 200 * 1024, 256 * 1024] {
        let body = "c".repeat(size);
        let r = request("PUT", &gw.url("/users/1"), &[], Some(&body));
        assert_eq!(r.status, 200, "{size} bytes: {}", r.body);
        assert_eq!(r.json()["body_bytes"], size, "{size} bytes arrive whole");
    }
    let before = a.stats().requests();
    // declared over the limit: 413 before a byte of the body is read
    let answer = raw_exchange(
        &addr,
        format!(
            "PUT /users/1 HTTP/1.1\r\nHost: edge\r\nContent-Length: {}\r\n\r\n",
            256 * 1024 + 1
        )
        .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(raw_json(&answer)["error"], "payload_too_large");
    // chunked: up to 64 KiB it can be resent; over the limit it is 413, between the two 411
    let answer = raw_exchange(
        &addr,
        &chunked_request("PUT", "/users/1", &[b'd'; 60 * 1024]),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(raw_json(&answer)["body_bytes"], 60 * 1024);
    let answer = raw_exchange(
        &addr,
        &chunked_request("PUT", "/users/1", &[b'd'; 100 * 1024]),
    );
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
    assert_eq!(raw_json(&answer)["error"], "length_required");
    // crossing the limit mid-body: the gateway stops reading and answers (the client's last
    // bytes are refused, so the body is sent in steps as a client would)
    let answer = chunked_in_steps(&addr, "/users/1", 256 * 1024 + 16);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(
        a.stats().requests(),
        before + 1,
        "only the 60 KiB one got through"
    );
    assert!(
        gw.metric("gatehouse_plugin_failures_total{plugin=\"grant-probe\",reason=\"body_limit\"}")
            >= 2.0
    );
}

#[test]
fn a_retry_resends_the_body_the_plugins_read() {
    let a = echo("a");
    let component = shipped_plugin("grant-probe");
    let dead = dead_addr();
    let gw = Gateway::start_with(
        &file_roots_for(&component),
        &format!(
            r#"upstreams:
  - name: u
    vpc: vpc-main
    protocol: http
    retries: 3
    nodes:
      - {{ host: 127.0.0.1, port: {dead}, weight: 100 }}
      - {{ host: 127.0.0.1, port: {live}, weight: 1 }}
services:
  - name: shop
    apis:
      - name: put
        path: /items/{{id}}
        backend: {{ upstream: u }}
        plugins:
{probe}"#,
            dead = dead.port(),
            live = a.addr().port(),
            probe = probe_entry(
                "            grants: { request_body: true }
            config: { needs: { request_body: true }, set_body: the plugins version }
"
            ),
        ),
    );
    for _ in 0..3 {
        let r = request("PUT", &gw.url("/items/1"), &[], Some("client body"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["body_bytes"], "the plugins version".len());
    }
}

#[test]
fn a_response_body_plugin_rewrites_the_body_and_its_failures_follow_the_policy() {
    let a = echo("a");
    let component = shipped_plugin("grant-probe");
    let entry = |extra: &str| {
        probe_entry(&format!(
            "            grants: {{ response_body: true }}
            config: {{ needs: {{ response_body: true }}, append_to_response: \"<!-- edge -->\" }}
{extra}"
        ))
    };
    let gw = Gateway::start_with(
        &file_roots_for(&component),
        &format!(
            "{}      - name: small_closed
        path: /closed/{{id}}
        backend: {{ upstream: u }}
        plugins:
{}      - name: small_open
        path: /open/{{id}}
        backend: {{ upstream: u }}
        plugins:
{}      - name: broken
        path: /broken/{{id}}
        backend: {{ upstream: u }}
        plugins:
{}      - name: fixed
        path: /fixed
        backend: {{ response: {{ status: 200, body: static page }} }}
        plugins:
{}",
            with_plugins(&a, &entry("")),
            entry("            body_limit: 64B\n"),
            entry("            body_limit: 64B\n            on_error: fail_open\n"),
            probe_entry(
                "            grants: { response_body: true }
            body_limit: 4KiB
            config: { needs: { response_body: true }, response_body_of: 5000 }
"
            ),
            entry(""),
        ),
    );
    let r = gw.get("/users/1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.ends_with("<!-- edge -->"), "{}", r.body);
    assert!(r.header("content-length").is_none());
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let original = r.body.trim_end_matches("<!-- edge -->");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(original).unwrap()["node"],
        "a"
    );
    // HEAD: no body to hold
    let head = request("HEAD", &gw.url("/users/1"), &[], None);
    assert_eq!(head.status, 200);
    // the echo's answer is over 64 bytes, and says so in its Content-Length
    let closed = gw.get("/closed/1");
    assert_eq!(closed.status, 500, "{}", closed.body);
    assert_eq!(closed.json()["error"], "plugin_failed");
    assert!(closed.body.contains("body_limit"), "{}", closed.body);
    let open = gw.get("/open/1");
    assert_eq!(open.status, 200);
    assert!(!open.body.contains("edge"), "unchanged: {}", open.body);
    assert_eq!(open.json()["node"], "a");
    // a plugin failing once the header is out: the response is cut, never ended as if whole
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let answer = raw_exchange(
        &addr,
        b"GET /broken/1 HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n",
    );
    if answer.starts_with("HTTP/1.1 500") {
        // nothing had gone out yet: a clean answer
        assert!(
            answer.contains("plugin grant-probe failed (body_limit)"),
            "{answer}"
        );
    } else {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            !answer.ends_with("0\r\n\r\n"),
            "the chunked body was ended: {answer}"
        );
    }
    // a fixed response's body goes through the plugins too
    let fixed = gw.get("/fixed");
    assert_eq!(fixed.body, "static page<!-- edge -->");
    assert_eq!(
        fixed.header("content-length"),
        Some("static page<!-- edge -->".len().to_string().as_str())
    );
}

#[test]
fn a_plugin_needing_more_than_its_grants_is_refused_with_every_missing_grant() {
    let dir = scratch_dir();
    let file = dir.join("grants.yaml");
    let a = echo("a");
    let component = shipped_plugin("grant-probe");
    let head = instance_yaml(1, 2).replace(
        "  threads: 2\n",
        &format!("  threads: 2\n{}", file_roots_for(&component)),
    );
    let body = with_plugins(
        &a,
        &probe_entry(
            "            grants: { request_headers: { read: [\"x-tenant-*\"] } }
            config:
              needs:
                request_headers: { read: [authorization, x-tenant-id] }
                request_body: true
",
        ),
    );
    std::fs::write(&file, format!("{head}{body}")).unwrap();
    let (status, _, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("services[0].apis[0].plugins[0].grants: plugin grant-probe is refused"),
        "{err}"
    );
    assert!(err.contains("request_headers.read: authorization"), "{err}");
    assert!(err.contains("request_body"), "{err}");
    assert!(
        !err.contains("read: x-tenant-id"),
        "granted by the prefix: {err}"
    );
}

#[test]
fn headers_a_plugin_may_not_read_are_not_there_for_it() {
    let a = echo("a");
    let gw = probe_gateway(
        &a,
        "            grants: { request_headers: { read: [\"x-tenant-*\"] } }
            config: { needs: { request_headers: { read: [\"x-tenant-*\"] } }, show: true }
",
    );
    let r = request(
        "GET",
        &gw.url("/users/1"),
        &[("x-tenant-id", "acme"), ("authorization", "Bearer s3cret")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let names: Vec<String> = r.json()["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["x-tenant-id"], "{}", r.body);
}

#[test]
fn a_secret_key_a_plugin_declares_is_never_shown_by_the_admin_api() {
    let a = echo("a");
    let component = shipped_plugin("grant-probe");
    let (listen, metrics, admin) = (free_port(), free_port(), free_port());
    let token = "t-0123456789abcdef-token";
    let secret = "CANARY-probe-secret-7731";
    let yaml = format!(
        "{}{}",
        instance_yaml(listen, metrics).replace(
            "  threads: 2\n",
            &format!(
                "  threads: 2\n  admin: \"127.0.0.1:{admin}\"\n  admin_token: {token}\n{}",
                file_roots_for(&component)
            ),
        ),
        with_plugins(
            &a,
            &probe_entry(&format!("            config: {{ secret: {secret} }}\n")),
        )
    );
    let gw = Gateway::start_config(&yaml, listen, metrics);
    let base = format!("http://127.0.0.1:{admin}");
    let mut up = false;
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(up, "the admin API did not start");
    for path in [
        "/config",
        "/config?format=json",
        "/services/shop/apis/get_user",
    ] {
        let r = admin_request(&base, token, "GET", path, None, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(
            !r.body.contains(secret),
            "{path} shows the secret: {}",
            r.body
        );
        assert!(r.body.contains("<redacted>"), "{path}: {}", r.body);
    }
    assert!(!gw.log().contains(secret));
}

/// A node that answers every request with a chunked body sent in two parts, `pause` apart, so
/// the header is out before the body is complete.
fn slow_chunked_node(first: &'static [u8], second: &'static [u8]) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let chunk = |b: &[u8]| {
                    let mut out = format!("{:x}\r\n", b.len()).into_bytes();
                    out.extend_from_slice(b);
                    out.extend_from_slice(b"\r\n");
                    out
                };
                let mut head =
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
                head.extend(chunk(first));
                let _ = s.write_all(&head);
                std::thread::sleep(std::time::Duration::from_millis(300));
                let mut tail = chunk(second);
                tail.extend_from_slice(b"0\r\n\r\n");
                let _ = s.write_all(&tail);
            });
        }
    });
    addr
}

#[test]
fn a_response_body_growing_past_the_limit_is_cut_or_streamed_by_the_policy() {
    const FIRST: &[u8] = &[b'a'; 40];
    const SECOND: &[u8] = &[b'b'; 40];
    let node = slow_chunked_node(FIRST, SECOND);
    let component = shipped_plugin("grant-probe");
    let entry = |policy: &str| {
        probe_entry(&format!(
            "            grants: {{ response_body: true }}
            body_limit: 64B
            on_error: {policy}
            config: {{ needs: {{ response_body: true }}, append_to_response: \"!\" }}
"
        ))
    };
    let gw = Gateway::start_with(
        &file_roots_for(&component),
        &format!(
            r#"upstreams:
  - name: slow
    vpc: vpc-main
    protocol: http
    nodes:
      - {{ host: 127.0.0.1, port: {port}, weight: 1 }}
services:
  - name: shop
    apis:
      - name: closed
        path: /closed
        backend: {{ upstream: slow }}
        plugins:
{closed}      - name: open
        path: /open
        backend: {{ upstream: slow }}
        plugins:
{open}"#,
            port = node.port(),
            closed = entry("fail_closed"),
            open = entry("fail_open"),
        ),
    );
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let get = |path: &str| {
        raw_exchange(
            &addr,
            format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    // the header went out with 40 bytes held; 80 are over the limit: cut, never ended as whole
    let closed = get("/closed");
    assert!(closed.starts_with("HTTP/1.1 200"), "{closed}");
    assert!(
        !closed.ends_with("0\r\n\r\n"),
        "ended as if whole: {closed}"
    );
    assert!(!closed.contains('!'), "{closed}");
    // fail_open: the body streams on unchanged, whole
    let open = get("/open");
    assert!(open.starts_with("HTTP/1.1 200"), "{open}");
    assert!(open.ends_with("0\r\n\r\n"), "{open}");
    let body = &open[open.find("\r\n\r\n").unwrap()..];
    let text: String = body.chars().filter(|c| *c == 'a' || *c == 'b').collect();
    assert_eq!(text.len(), 80, "{open}");
    assert!(!open.contains('!'), "{open}");
    assert!(
        gw.metric("gatehouse_plugin_failures_total{plugin=\"grant-probe\",reason=\"body_limit\"}")
            >= 2.0
    );
}

#[test]
fn json_validator_answers_400_with_the_first_error_and_its_path() {
    let a = echo("a");
    let gw = Gateway::start(&with_plugins(
        &a,
        "          - name: json-validator
            config:
              max_depth: 4
              max_bytes: 61000
              schema:
                type: object
                required: [items]
                properties:
                  items: { type: array, items: { type: object, required: [sku], properties: { sku: { type: string, maxLength: 8 }, qty: { type: integer, minimum: 1, maximum: 100 } } } }
",
    ));
    let post = |body: &str| {
        request(
            "POST",
            &gw.url("/users/1"),
            &[("content-type", "application/json")],
            Some(body),
        )
    };
    let ok = post(r#"{"items":[{"sku":"a-1"}]}"#);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["body_bytes"], 25);
    for (body, path, message) in [
        (
            r#"{"items":[{"sku":"a"},{"sku":7}]}"#,
            "$.items[1].sku",
            "expected string, found number",
        ),
        (
            r#"{"items":[{}]}"#,
            "$.items[0]",
            "missing required field \"sku\"",
        ),
        (
            r#"{"items":[[[[[]]]]]}"#,
            "$.items[0][0][0]",
            "nested deeper than 4 levels",
        ),
        (
            r#"{"items":[{"sku":"a-123456789"}]}"#,
            "$.items[0].sku",
            "expected at most 8 characters, found 11",
        ),
        (
            r#"{"items":[{"sku":"a","qty":0}]}"#,
            "$.items[0].qty",
            "expected at least 1, found 0",
        ),
        ("{\"items\": [", "$", "not valid JSON"),
        ("", "$", "the body is empty"),
    ] {
        let r = post(body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let answer = r.json();
        assert_eq!(answer["error"], "invalid_body", "{body}");
        assert_eq!(answer["path"], path, "{body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(message),
            "{body}: {answer}"
        );
    }
    // a body over max_bytes is 413, unread
    let large = format!(r#"{{"items":[],"pad":"{}"}}"#, "x".repeat(62_000));
    let r = post(&large);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["error"], "payload_too_large");
    // GET is not checked; a hostile, deep document is refused without the backend
    assert_eq!(gw.get("/users/1").status, 200);
    let deep = "[".repeat(60_000);
    assert_eq!(post(&deep).status, 400);
    assert_eq!(
        a.stats().requests(),
        2,
        "only the valid POST and the GET went upstream"
    );
}
