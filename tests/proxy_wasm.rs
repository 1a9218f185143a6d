//! Proxy-Wasm filters through the real gateway: a filter built on the `proxy-wasm` SDK crate
//! (plugins/filter-headers) and hostile modules written by hand, under the same grants, limits
//! and failure policy as components.

mod support;

use support::*;

/// Runs `gatehouse validate` on `body` under an instance that may read the folder of `file`.
fn validate(file: &std::path::Path, body: &str) -> (std::process::ExitStatus, String, String) {
    let head = instance_yaml(free_port(), free_port()).replace(
        "  threads: 2\n",
        &format!("  threads: 2\n{}", file_roots_for(file)),
    );
    let config = scratch_dir().join("gatehouse.yaml");
    std::fs::write(&config, format!("{head}{body}")).unwrap();
    run_cli(&["validate", "-c", config.to_str().unwrap()])
}

/// The `filter-headers` entry with its configuration and grants.
fn filter_entry(config: &str, grants: &str) -> String {
    format!(
        "          - path: {}\n            config: {config}\n{grants}",
        shipped_plugin("filter-headers").display()
    )
}

const GRANTS: &str = "            grants:
              request_headers: { read: [x-deny, x-remove-me], write: [x-filter, x-remove-me] }
              response_headers: { write: [x-filter-echo] }
";

const CONFIG: &str =
    r#"{ add: [x-filter, "on"], remove: x-remove-me, deny: x-deny, echo: x-filter-echo }"#;

fn filter_gateway(backend: &EchoServer, config: &str, grants: &str) -> Gateway {
    Gateway::start_with(
        &file_roots_for(shipped_plugin("filter-headers")),
        &with_plugins(backend, &filter_entry(config, grants)),
    )
}

#[test]
fn an_sdk_filter_edits_headers_and_keeps_its_context_from_request_to_response() {
    let a = echo("a");
    let gw = filter_gateway(&a, CONFIG, GRANTS);
    for i in 0..20 {
        let r = request(
            "GET",
            &gw.url(&format!("/users/{i}?q=1")),
            &[("x-remove-me", "secret")],
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let seen = r.json();
        assert_eq!(seen["headers"]["x-filter"], "on", "{}", r.body);
        assert!(seen["headers"].get("x-remove-me").is_none(), "{}", r.body);
        // what the filter kept in the request's context, set on the response
        assert_eq!(
            r.header("x-filter-echo"),
            Some(format!("GET /users/{i}?q=1").as_str())
        );
    }
    // each request's context ended with proxy_on_log, which read the response's status
    let log = gw.log();
    assert!(log.contains("answered 200"), "{log}");
    assert_eq!(
        gw.metric("gatehouse_plugin_failures_total{plugin=\"filter-headers\",reason=\"denied\"}"),
        0.0
    );
}

#[test]
fn a_text_configuration_reaches_the_filter_as_it_is() {
    let a = echo("a");
    // YAML text (here JSON in a string) is the filter's plugin configuration byte for byte, and
    // vm_config its VM configuration
    let gw = filter_gateway(
        &a,
        r#"'{"add": ["x-filter", "from text"]}'
            vm_config: "vm text""#,
        "            grants: { request_headers: { write: [x-filter] }, response_headers: { write: [x-filter-vm] } }\n",
    );
    let r = request("GET", &gw.url("/users/1"), &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["headers"]["x-filter"], "from text", "{}", r.body);
    assert_eq!(r.header("x-filter-vm"), Some("vm text"));
}

#[test]
fn http2_streams_on_one_connection_each_keep_their_own_context() {
    let a = echo("a");
    let gw = Gateway::start_with(
        &format!(
            "  http: {{ h2c: true }}\n{}",
            file_roots_for(shipped_plugin("filter-headers"))
        ),
        &with_plugins(&a, &filter_entry(CONFIG, GRANTS)),
    );
    // eight streams at once on one connection: each response carries its own request's path
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut seen: Vec<String> = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let mut responses = Vec::new();
        for i in 0..8 {
            let req = http::Request::get(format!("http://h2.test/users/{i}"))
                .body(())
                .unwrap();
            let (response, _) = client.send_request(req, true).unwrap();
            responses.push(response);
            client = client.ready().await.unwrap();
        }
        let mut seen = Vec::new();
        for response in responses {
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            let echo = response.headers().get("x-filter-echo").unwrap();
            seen.push(echo.to_str().unwrap().to_owned());
        }
        seen
    });
    seen.sort_unstable();
    let expected: Vec<String> = (0..8).map(|i| format!("GET /users/{i}")).collect();
    assert_eq!(seen, expected);
}

#[test]
fn an_sdk_filters_local_response_answers_without_the_backend() {
    let a = echo("a");
    let gw = filter_gateway(&a, CONFIG, GRANTS);
    let r = request("GET", &gw.url("/users/1"), &[("x-deny", "1")], None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.header("x-denied-by"), Some("filter-headers"));
    assert_eq!(r.body, "denied by filter-headers\n");
    assert_eq!(a.stats().requests(), 0, "the node saw nothing");
}

#[test]
fn a_filter_is_held_to_its_grants_like_a_component() {
    let a = echo("a");
    // no write grant for x-filter: the edit is refused, the call fails closed, nothing changed
    let gw = filter_gateway(
        &a,
        CONFIG,
        "            grants: { request_headers: { read: [x-deny] } }\n",
    );
    let r = request("GET", &gw.url("/users/1"), &[("x-remove-me", "s")], None);
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("filter-headers"), "{}", r.body);
    assert_eq!(a.stats().requests(), 0);
    assert_eq!(
        gw.metric("gatehouse_plugin_failures_total{plugin=\"filter-headers\",reason=\"denied\"}"),
        1.0
    );
    // headers it may not read are not there for it: without a read grant for x-deny it
    // cannot see the header, so it does not deny
    let gw = filter_gateway(
        &a,
        CONFIG,
        "            grants: { request_headers: { write: [x-filter, x-remove-me] }, response_headers: { write: [x-filter-echo] } }\n",
    );
    let r = request("GET", &gw.url("/users/1"), &[("x-deny", "1")], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["headers"]["x-filter"], "on");
}

/// A gateway with `filter-body` configured with `config` and `grants` (YAML flow maps).
fn body_gateway(backend: &EchoServer, config: &str, grants: &str) -> Gateway {
    let filter = shipped_plugin("filter-body");
    let entry = format!(
        "          - path: {}\n            config: {config}\n            grants: {grants}\n",
        filter.display()
    );
    Gateway::start_with(&file_roots_for(&filter), &with_plugins(backend, &entry))
}

#[test]
fn an_sdk_filter_rewrites_request_and_response_bodies_in_one_context() {
    let a = echo("pw-node");
    let gw = body_gateway(
        &a,
        "{ request: [cat, tiger], response: [pw-node, rewritten-by-the-filter] }",
        "{ request_body: true, response_body: true }",
    );
    for _ in 0..5 {
        let r = request("POST", &gw.url("/users/1"), &[], Some("cat cat cat"));
        assert_eq!(r.status, 200, "{}", r.body);
        // the node got the filter's body ("tiger tiger tiger"), framed by the gateway
        let seen = r.json();
        assert_eq!(seen["body_bytes"], 17, "{}", r.body);
        assert_eq!(seen["node"], "rewritten-by-the-filter", "{}", r.body);
        assert!(!r.body.contains("pw-node"), "{}", r.body);
    }
    assert_eq!(
        gw.metric(
            "gatehouse_plugin_failures_total{plugin=\"filter-body\",reason=\"forbidden_header\"}"
        ),
        0.0
    );
}

#[test]
fn a_response_body_a_filter_grows_past_its_body_limit_is_never_sent() {
    let a = echo("pw-node");
    let long = "x".repeat(4096);
    let filter = shipped_plugin("filter-body");
    let entry = format!(
        "          - path: {}\n            config: {{ response: [pw-node, {long}] }}\n            grants: {{ response_body: true }}\n            body_limit: 2KiB\n",
        filter.display()
    );
    let gw = Gateway::start_with(&file_roots_for(&filter), &with_plugins(&a, &entry));
    let r = request("GET", &gw.url("/users/1"), &[], None);
    assert!(!r.body.contains(&long), "{}", r.body.len());
    assert_eq!(
        gw.metric("gatehouse_plugin_failures_total{plugin=\"filter-body\",reason=\"body_limit\"}"),
        1.0
    );
    // the use goes on (its SDK panicked at the refusal: a new VM) and is held the same way
    let r = request("GET", &gw.url("/users/2"), &[], None);
    assert!(!r.body.contains(&long));
    assert_eq!(
        gw.metric("gatehouse_plugin_failures_total{plugin=\"filter-body\",reason=\"body_limit\"}"),
        2.0
    );
}

#[test]
fn a_filter_dropping_content_length_of_a_body_it_was_not_granted_breaks_no_framing() {
    let a = echo("a");
    // the filter removes Content-Length in its request header callback, as body filters for
    // Envoy do; without the body granted the gateway does not hold the body, so that edit
    // would break the framing: the call fails, nothing reaches the node
    let gw = body_gateway(
        &a,
        "{ request: [cat, tiger] }",
        "{ request_headers: { write: [\"*\"] }, response_body: true }",
    );
    let r = request("POST", &gw.url("/users/1"), &[], Some("cat cat cat"));
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(
        gw.metric(
            "gatehouse_plugin_failures_total{plugin=\"filter-body\",reason=\"forbidden_header\"}"
        ),
        1.0
    );
    assert_eq!(a.stats().requests(), 0);
}

#[test]
fn vms_share_data_queues_and_metrics_and_their_timers_run() {
    let a = echo("a");
    let filter = shipped_plugin("filter-shared");
    let entry = format!(
        "          - path: {}\n            grants: {{ response_headers: {{ write: [x-shared-count] }} }}\n",
        filter.display()
    );
    let gw = Gateway::start_with(&file_roots_for(&filter), &with_plugins(&a, &entry));
    // four clients at once, on the gateway's two worker threads (two VMs)
    let url = gw.url("/users/1");
    let counts: Vec<u64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..10)
                        .map(|_| {
                            let r = request("GET", &url, &[], None);
                            assert_eq!(r.status, 200, "{}", r.body);
                            r.header("x-shared-count").unwrap().parse::<u64>().unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    // compare-and-swap across VMs: every request got its own value
    let mut sorted = counts.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=40).collect::<Vec<u64>>(), "{counts:?}");
    let metric = |name: &str| {
        gw.metric(&format!(
            "gatehouse_proxy_wasm_filter_shared_{name}{{plugin=\"filter-shared\"}}"
        ))
    };
    assert_eq!(metric("requests"), 40.0);
    // the queue's owner is told of its messages, and its timer ticks, off the request path
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (metric("dequeued") < 40.0 || metric("ticks") < 3.0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(metric("dequeued"), 40.0, "{}", gw.metrics_text());
    assert!(metric("ticks") >= 3.0, "{}", gw.metrics_text());
    assert_eq!(
        gw.metric("gatehouse_plugin_failures_total{plugin=\"filter-shared\",reason=\"trap\"}"),
        0.0
    );
}

#[test]
fn a_filter_from_the_assemblyscript_sdk_runs_under_its_root_id() {
    let a = echo("a");
    let filter = shipped_plugin("filter-as");
    let entry = format!(
        "          - path: {}\n            root_id: filter-as\n            grants: {{ request_headers: {{ write: [x-as-filter] }}, response_headers: {{ write: [x-as-method] }} }}\n",
        filter.display()
    );
    // the SDK looks its root context up by the root id the use gives: without it, none
    let (status, _, err) = validate(
        &filter,
        &with_plugins(&a, &entry.replace("            root_id: filter-as\n", "")),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("proc_exit with code 255"), "{err}");
    let gw = Gateway::start_with(&file_roots_for(&filter), &with_plugins(&a, &entry));
    let r = request("GET", &gw.url("/users/1"), &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["headers"]["x-as-filter"], "on", "{}", r.body);
    // a property read through that SDK
    assert_eq!(r.header("x-as-method"), Some("GET"));
}

#[test]
fn a_filter_refusing_its_configuration_is_a_problem_at_its_path() {
    let a = echo("a");
    let (status, _, err) = validate(
        &shipped_plugin("filter-headers"),
        &with_plugins(&a, &filter_entry("{ nonsense: 1 }", "")),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("services[0].apis[0].plugins[0].config")
            && err.contains("proxy_on_configure returned false"),
        "{err}"
    );
}

#[test]
fn validate_names_a_filter_its_abi_and_its_grants() {
    let a = echo("a");
    let (status, out, err) = validate(
        &shipped_plugin("filter-headers"),
        &with_plugins(&a, &filter_entry(CONFIG, GRANTS)),
    );
    assert_eq!(status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("filter-headers (proxy-wasm 0.2.1)")
            && out.contains("a Proxy-Wasm filter (declares nothing); held to its grants:"),
        "{out}"
    );
}

#[test]
fn root_id_and_vm_config_belong_to_filters_only() {
    let a = echo("a");
    let probe = shipped_plugin("grant-probe");
    let (status, _, err) = validate(
        &probe,
        &with_plugins(
            &a,
            &format!(
                "          - path: {}\n            root_id: r\n",
                probe.display()
            ),
        ),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "plugin grant-probe is a component: root_id and vm_config are a Proxy-Wasm filter's"
        ),
        "{err}"
    );
}

/// A hand-written Proxy-Wasm module: `request` is the body of `proxy_on_request_headers`
/// (which then continues); `imports` adds import lines.
fn hostile_module(imports: &str, request: &str) -> String {
    format!(
        r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  {imports}
  (memory (export "memory") 1)
  (data (i32.const 64) "x-hostile")
  (data (i32.const 80) "content-length")
  (data (i32.const 96) "v")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    {request}
    (i32.const 0))
)"#
    )
}

fn hostile_gateway(backend: &EchoServer, name: &str, wat: &str, lines: &str) -> (Gateway, String) {
    let dir = scratch_dir();
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, gatehouse_plugin_host::testing::binary(wat)).unwrap();
    let entry = format!(
        "          - path: {}\n            grants: {{ request_headers: {{ write: [\"*\"] }} }}\n{lines}",
        path.display()
    );
    (
        Gateway::start_with(&file_roots_for(&path), &with_plugins(backend, &entry)),
        name.to_owned(),
    )
}

fn failures(gw: &Gateway, plugin: &str, reason: &str) -> f64 {
    gw.metric(&format!(
        "gatehouse_plugin_failures_total{{plugin=\"{plugin}\",reason=\"{reason}\"}}"
    ))
}

#[test]
fn hostile_filters_fail_only_their_calls_and_the_gateway_lives_on() {
    let a = echo("a");
    let cases = [
        // spins forever: stopped at the time limit
        ("spin", "(loop $l (br $l))", "timeout"),
        // grows memory until the limit
        (
            "bomb",
            "(loop $l
               (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
               (br $l))",
            "memory",
        ),
        ("trap", "unreachable", "trap"),
        // adds headers until the call's edit budget is spent
        (
            "flood",
            "(loop $l
               (drop (call $add (i32.const 0) (i32.const 64) (i32.const 9) (i32.const 96) (i32.const 1)))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $i) (i32.const 10000))))",
            "header_limit",
        ),
        // sets a framing header
        (
            "framing",
            "(drop (call $replace (i32.const 0) (i32.const 80) (i32.const 14) (i32.const 96) (i32.const 1)))",
            "forbidden_header",
        ),
    ];
    for (name, body, reason) in cases {
        let (gw, label) = hostile_gateway(
            &a,
            name,
            &hostile_module("", body),
            "            memory_limit: 4MiB\n            time_limit: 20ms\n",
        );
        let r = request("GET", &gw.url("/users/1"), &[], None);
        assert_eq!(r.status, 500, "{name}: {}", r.body);
        assert!(r.body.contains(&label), "{name}: {}", r.body);
        assert_eq!(
            failures(&gw, &label, reason),
            1.0,
            "{name}: {}",
            gw.metrics_text()
        );
        // the gateway lives on and serves again (a new VM for the next request)
        let r = request("GET", &gw.url("/users/2"), &[], None);
        assert_eq!(r.status, 500, "{name}: {}", r.body);
        assert_eq!(failures(&gw, &label, reason), 2.0, "{name}");
    }
    assert_eq!(a.stats().requests(), 0, "no request reached the node");
}

#[test]
fn a_filter_whose_timer_spins_is_stopped_each_time_and_counted() {
    let a = echo("a");
    let timer = r#"(import "env" "proxy_set_tick_period_milliseconds" (func $period (param i32) (result i32)))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $period (i32.const 10)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32) (loop $l (br $l)))"#;
    let (gw, label) = hostile_gateway(
        &a,
        "ticking",
        &hostile_module(timer, ""),
        "            time_limit: 20ms\n            on_error: fail_open\n",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while failures(&gw, &label, "timeout") < 2.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        failures(&gw, &label, "timeout") >= 2.0,
        "{}",
        gw.metrics_text()
    );
    // requests go on: the plugin-free API, and this one (fail_open, whatever its breaker says)
    assert_eq!(request("GET", &gw.url("/plain"), &[], None).status, 200);
    assert_eq!(request("GET", &gw.url("/users/1"), &[], None).status, 200);
}

#[test]
fn a_filter_reaches_no_file_socket_or_outbound_call_and_each_refusal_is_counted() {
    let a = echo("a");
    // stdout goes to the plugin log; opening a file, and an outbound call, get error codes
    let body = r#"
    (i32.store (i32.const 200) (i32.const 64))
    (i32.store (i32.const 204) (i32.const 9))
    (drop (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 208)))
    (if (i32.eqz (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 9)
          (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 212)))
      (then unreachable))
    (if (i32.ne (call $http_call (i32.const 64) (i32.const 9) (i32.const 0) (i32.const 0)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 216))
          (i32.const 12))
      (then unreachable))
    (drop (call $http_call (i32.const 64) (i32.const 9) (i32.const 0) (i32.const 0)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 216)))"#;
    let (gw, label) = hostile_gateway(&a, "reach", &hostile_module("", body), "");
    let r = request("GET", &gw.url("/users/1"), &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        gw.metric(&format!(
            "gatehouse_proxy_wasm_unsupported_calls_total{{function=\"proxy_http_call\",plugin=\"{label}\"}}"
        )),
        2.0
    );
    let log = gw.log();
    assert!(
        log.contains("x-hostile"),
        "stdout reaches the plugin log: {log}"
    );
    assert_eq!(
        log.matches("called proxy_http_call").count(),
        1,
        "logged once per use: {log}"
    );
}

#[test]
fn a_module_importing_outside_the_abi_is_refused_at_load_by_name() {
    let a = echo("a");
    let dir = scratch_dir();
    let cases = [
        (
            "other",
            hostile_module(
                r#"(import "env" "proxy_get_secret_key" (func (param i32) (result i32)))"#,
                "",
            ),
            "env.proxy_get_secret_key",
        ),
        (
            "sockets",
            hostile_module(
                r#"(import "wasi:sockets/tcp" "connect" (func (param i32) (result i32)))"#,
                "",
            ),
            "wasi:sockets/tcp.connect",
        ),
        (
            "plain",
            "(module (memory (export \"memory\") 1))".to_owned(),
            "neither a component nor a Proxy-Wasm filter",
        ),
        (
            "old-abi",
            "(module (memory (export \"memory\") 1) (func (export \"proxy_abi_version_0_1_0\")))"
                .to_owned(),
            "ABI 0.1.0",
        ),
    ];
    for (name, wat, expected) in cases {
        let path = dir.join(format!("{name}.wasm"));
        std::fs::write(&path, gatehouse_plugin_host::testing::binary(&wat)).unwrap();
        let (status, _, err) = validate(
            &path,
            &with_plugins(&a, &format!("          - path: {}", path.display())),
        );
        assert_eq!(status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("services[0].apis[0].plugins[0].path") && err.contains(expected),
            "{name}: {err}"
        );
    }
}
