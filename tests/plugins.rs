//! Plugins end to end: the standard plugins and faulty ones, through the real gateway.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use support::*;

/// One upstream on `backend` and one API `/users/{id}` (any method) with `plugins` (YAML list
/// items, already indented for the `plugins:` key), plus a plugin-free API `/plain`.
fn with_plugins(backend: &EchoServer, plugins: &str) -> String {
    format!(
        r#"upstreams:
  - name: u
    vpc: vpc-main
    protocol: http
    nodes:
      - {{ host: 127.0.0.1, port: {port}, weight: 1 }}
services:
  - name: shop
    apis:
      - name: get_user
        path: /users/{{id}}
        backend: {{ upstream: u }}
        plugins:
{plugins}
      - name: plain
        path: /plain
        backend: {{ upstream: u }}
"#,
        port = backend.addr().port()
    )
}

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
                "          - { name: host-rewrite, config: { hots: x } }"
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
}

fn shipped_plugin(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../plugins/dist/{name}.wasm"))
        .canonicalize()
        .unwrap()
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
