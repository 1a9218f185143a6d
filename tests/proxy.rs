//! End-to-end behaviour of the proxy: the real `gatehouse` binary between a client and real echo
//! backends on loopback.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

/// An upstream `u` over `nodes` ((addr, weight)) and one API `GET /users/{id}` on it.
fn one_api(nodes: &[(String, u32)], upstream_extra: &str, api_extra: &str) -> String {
    let nodes: String = nodes
        .iter()
        .map(|(addr, w)| {
            let (host, port) = addr.rsplit_once(':').unwrap();
            format!("      - {{ host: {host}, port: {port}, weight: {w} }}\n")
        })
        .collect();
    format!(
        r#"upstreams:
  - name: u
    vpc: vpc-main
    protocol: http
{upstream_extra}    nodes:
{nodes}services:
  - name: shop
    apis:
      - name: get_user
        path: /users/{{id}}
        methods: [GET, POST, PUT]
        backend:
          upstream: u
{api_extra}"#
    )
}

fn addr(s: &EchoServer) -> String {
    s.addr().to_string()
}

#[test]
fn requests_spread_by_weight_smoothly_interleaved() {
    let (a, b, c) = (echo("a"), echo("b"), echo("c"));
    let gw = Gateway::start(&one_api(
        &[(addr(&a), 5), (addr(&b), 1), (addr(&c), 1)],
        "",
        "",
    ));
    let order: Vec<String> = (0..70).map(|_| gw.get("/users/1").node()).collect();
    assert_eq!(
        order[..7].join(" "),
        "a a b a c a a",
        "nginx smooth interleaving"
    );
    let mut counts = HashMap::new();
    for n in &order {
        *counts.entry(n.as_str()).or_insert(0) += 1;
    }
    assert_eq!(
        (counts["a"], counts["b"], counts["c"]),
        (50, 10, 10),
        "exact proportions"
    );
}

#[test]
fn concurrent_clients_share_one_schedule() {
    let (a, b) = (echo("a"), echo("b"));
    let gw = Gateway::start(&one_api(&[(addr(&a), 3), (addr(&b), 1)], "", ""));
    let url = gw.url("/users/1");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|_| request("GET", &url, &[], None))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let replies: Vec<Reply> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(replies.iter().all(|r| r.status == 200));
    let on_a = replies.iter().filter(|r| r.node() == "a").count();
    assert_eq!(
        (on_a, 200 - on_a),
        (150, 50),
        "200 picks = 50 periods of 3:1, whatever the threads"
    );
}

#[test]
fn weight_zero_drains_a_node() {
    let (a, b) = (echo("a"), echo("b"));
    let gw = Gateway::start(&one_api(&[(addr(&a), 0), (addr(&b), 1)], "", ""));
    for _ in 0..10 {
        assert_eq!(gw.get("/users/1").node(), "b");
    }
    assert_eq!(a.stats().requests(), 0);
}

#[test]
fn host_header_and_forwarding_headers_reach_the_backend() {
    let a = echo("a");
    let gw = Gateway::start(&one_api(
        &[(addr(&a), 1)],
        "    host_header: users.internal:8080\n",
        "",
    ));
    let seen = gw.get("/users/1").json();
    assert_eq!(seen["host"], "users.internal:8080");
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["x-forwarded-host"].as_str().unwrap(),
        gw.base.trim_start_matches("http://")
    );
}

#[test]
fn without_host_header_the_clients_host_is_kept() {
    let a = echo("a");
    let gw = Gateway::start(&one_api(&[(addr(&a), 1)], "", ""));
    let seen = request(
        "GET",
        &gw.url("/users/1"),
        &[("x-forwarded-for", "10.9.9.9")],
        None,
    )
    .json();
    assert_eq!(
        seen["host"].as_str().unwrap(),
        gw.base.trim_start_matches("http://")
    );
    assert_eq!(
        seen["headers"]["x-forwarded-for"], "127.0.0.1",
        "from a peer that is not a trusted proxy: replaced, not appended"
    );
}

#[test]
fn backend_path_substitutes_parameters_and_keeps_the_query() {
    let a = echo("a");
    let gw = Gateway::start(&one_api(
        &[(addr(&a), 1)],
        "",
        "          path: /v1/users/{id}/profile\n",
    ));
    assert_eq!(
        gw.get("/users/42?fields=name&x=1").json()["uri"],
        "/v1/users/42/profile?fields=name&x=1"
    );
    assert_eq!(gw.get("/users/7").json()["uri"], "/v1/users/7/profile");
}

#[test]
fn request_path_is_forwarded_unchanged_without_backend_path() {
    let a = echo("a");
    let gw = Gateway::start(&one_api(&[(addr(&a), 1)], "", ""));
    assert_eq!(gw.get("/users/42?q=1").json()["uri"], "/users/42?q=1");
}

#[test]
fn a_dead_node_is_retried_on_a_live_one_and_every_request_succeeds() {
    let live = echo("live");
    let dead = dead_addr().to_string();
    let gw = Gateway::start(&one_api(
        &[(dead.clone(), 1), (addr(&live), 1)],
        "    retries: 3\n",
        "",
    ));
    for i in 0..20 {
        let r = gw.get("/users/1");
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.node(), "live");
    }
    assert!(gw.metric(r#"gatehouse_upstream_retries_total{upstream="u"}"#) >= 1.0);
    let failed = format!(
        r#"gatehouse_upstream_attempts_total{{node="{dead}",outcome="connect_error",upstream="u"}}"#
    );
    assert!(gw.metric(&failed) >= 1.0, "{}", gw.metrics_text());
    // the dead node is left out after failing, instead of costing every other request a retry
    assert!(
        gw.metric(&failed) < 5.0,
        "dead node was not ejected: {}",
        gw.metric(&failed)
    );
}

#[test]
fn every_node_dead_answers_502_with_a_json_error_naming_api_and_upstream() {
    let gw = Gateway::start(&one_api(
        &[(dead_addr().to_string(), 1), (dead_addr().to_string(), 1)],
        "    retries: 5\n",
        "",
    ));
    let r = gw.get("/users/1");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["error"], "bad_gateway");
    assert_eq!(j["service"], "shop");
    assert_eq!(j["api"], "get_user");
    assert_eq!(j["upstream"], "u");
    assert_eq!(
        j["attempts"], 2,
        "one attempt per node, never the same node twice"
    );
    assert!(
        j["message"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{j}"
    );
}

#[test]
fn retries_stop_at_the_configured_count() {
    let nodes: Vec<(String, u32)> = (0..4).map(|_| (dead_addr().to_string(), 1)).collect();
    let gw = Gateway::start(&one_api(&nodes, "    retries: 1\n", ""));
    let r = gw.get("/users/1");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["attempts"], 2, "1 retry = 2 attempts");
}

#[test]
fn a_non_idempotent_request_is_not_retried_once_sent() {
    // The first node reads the request and hangs up without answering.
    let hangup = echo_with("hangup", Behavior::Hangup);
    let live = echo("live");
    let gw = Gateway::start(&one_api(
        &[(addr(&hangup), 1), (addr(&live), 1)],
        "    retries: 3\n",
        "",
    ));
    let r = request(
        "POST",
        &gw.url("/users/1"),
        &[("content-type", "application/json")],
        Some("{\"a\":1}"),
    );
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(hangup.stats().requests(), 1);
    assert_eq!(
        live.stats().requests(),
        0,
        "the POST must not be sent twice"
    );
}

#[test]
fn an_idempotent_request_is_retried_when_the_connection_breaks_before_the_response() {
    let hangup = echo_with("hangup", Behavior::Hangup);
    let live = echo("live");
    let gw = Gateway::start(&one_api(
        &[(addr(&hangup), 1), (addr(&live), 1)],
        "    retries: 3\n",
        "",
    ));
    let r = request("PUT", &gw.url("/users/1"), &[], Some("{\"name\":\"x\"}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.node(), "live");
    assert_eq!(
        r.json()["body_bytes"],
        12,
        "the body is sent again on retry"
    );
    assert_eq!(hangup.stats().requests(), 1);
}

#[test]
fn a_silent_backend_answers_504_after_the_backend_timeout() {
    let slow = echo_with("slow", Behavior::Delay(Duration::from_secs(5)));
    let gw = Gateway::start(&one_api(
        &[(addr(&slow), 1)],
        "",
        "          timeout: 300ms\n",
    ));
    let started = std::time::Instant::now();
    let r = gw.get("/users/1");
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "did not wait for the backend"
    );
}

#[test]
fn unknown_path_is_404_and_wrong_method_is_405_both_json() {
    let a = echo("a");
    let gw = Gateway::start(&one_api(&[(addr(&a), 1)], "", ""));
    let r = gw.get("/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
    let r = request("DELETE", &gw.url("/users/1"), &[], None);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST, PUT"));
    assert_eq!(r.json()["error"], "method_not_allowed");
    assert_eq!(a.stats().requests(), 0);
}

#[test]
fn dot_segments_are_refused_with_400() {
    let a = echo("a");
    let gw = Gateway::start(&one_api(&[(addr(&a), 1)], "", ""));
    // ureq would normalise the path, so speak HTTP directly
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gw.base.trim_start_matches("http://")).unwrap();
    s.write_all(b"GET /users/../admin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(a.stats().requests(), 0);
}

#[test]
fn fixed_response_backend_answers_without_an_upstream() {
    let gw = Gateway::start(
        r#"services:
  - name: ops
    apis:
      - name: health
        path: /healthz
        backend: { response: { status: 200, headers: { content-type: application/json }, body: '{"ok":true}' } }
"#,
    );
    let r = gw.get("/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"ok":true}"#));
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn metrics_count_requests_attempts_and_config() {
    let a = echo("a");
    let gw = Gateway::start(&one_api(&[(addr(&a), 1)], "", ""));
    for _ in 0..3 {
        gw.get("/users/1");
    }
    gw.get("/nope");
    let node = addr(&a);
    let ok = r#"gatehouse_requests_total{api="get_user",service="shop",status_class="2xx",upstream="u"}"#;
    assert_eq!(gw.metric(ok), 3.0, "{}", gw.metrics_text());
    assert_eq!(
        gw.metric(r#"gatehouse_requests_total{api="",service="",status_class="4xx",upstream=""}"#),
        1.0
    );
    assert_eq!(
        gw.metric(r#"gatehouse_request_duration_seconds_count{api="get_user",service="shop"}"#),
        3.0
    );
    let attempts =
        format!(r#"gatehouse_upstream_attempts_total{{node="{node}",outcome="ok",upstream="u"}}"#);
    assert_eq!(gw.metric(&attempts), 3.0);
    assert_eq!(gw.metric("gatehouse_config_generation"), 1.0);
    assert!(gw.metrics_text().contains("gatehouse_config_info{hash=\""));
}

#[test]
fn named_nodes_resolve_off_the_request_path() {
    let a = echo("a");
    let gw = Gateway::start(&one_api(
        &[(format!("localhost:{}", a.addr().port()), 1)],
        "",
        "",
    ));
    let r = gw.get("/users/1");
    assert_eq!((r.status, r.node().as_str()), (200, "a"));
}

#[test]
fn a_name_resolving_outside_the_vpc_is_never_connected() {
    let a = echo("a");
    let port = a.addr().port();
    // vpc-main here is only 10.0.0.0/16, so localhost (127.0.0.1) is outside it
    let (listen, metrics) = (free_port(), free_port());
    let yaml = format!(
        r#"instance: {{ id: t, type: dedicated, vpc: vpc-main, listen: ["127.0.0.1:{listen}"], metrics: "127.0.0.1:{metrics}" }}
vpcs: [{{ id: vpc-main, cidrs: ["10.0.0.0/16"] }}]
upstreams:
  - {{ name: u, vpc: vpc-main, protocol: http, nodes: [{{ host: localhost, port: {port} }}] }}
services:
  - {{ name: shop, apis: [{{ name: get_user, path: "/users/{{id}}", backend: {{ upstream: u }} }}] }}
"#
    );
    let gw = Gateway::start_config(&yaml, listen, metrics);
    let r = gw.get("/users/1");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(a.stats().connections(), 0, "no connection outside the VPC");
    let denied =
        format!(r#"gatehouse_egress_denied_total{{node="localhost:{port}",upstream="u"}}"#);
    assert!(gw.metric(&denied) >= 1.0, "{}", gw.metrics_text());
    assert!(gw.log().contains("outside VPC vpc-main"), "{}", gw.log());
}

#[test]
fn upstream_connections_are_kept_alive_and_reused() {
    let a = echo("a");
    let gw = Gateway::start(&one_api(&[(addr(&a), 1)], "", ""));
    for _ in 0..30 {
        assert_eq!(gw.get("/users/1").status, 200);
        // the answer can reach the client before its connection is back in the pool: a pause,
        // so that the next request finds it there
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(a.stats().requests(), 30);
    assert!(
        a.stats().connections() <= 3,
        "{} connections for 30 sequential requests",
        a.stats().connections()
    );
}
