//! Upstream health end to end: passive and active checks, fair redistribution, panic mode and
//! the operator's views of node health, against the real binary and real backends killed,
//! hung and restarted under load. Every test asserts counts, never timings.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_echo::{Behavior, EchoConfig, EchoServer};
use support::*;

const TOKEN: &str = "test-admin-token-0123456789";

/// One upstream `u` with `upstream_extra` (keys indented by four spaces) on `nodes` (weight 1
/// each), one API `/r` with `timeout`.
fn config(nodes: &[SocketAddr], upstream_extra: &str, timeout: &str) -> String {
    let nodes: String = nodes
        .iter()
        .map(|a| {
            format!(
                "      - {{ host: 127.0.0.1, port: {}, weight: 1 }}\n",
                a.port()
            )
        })
        .collect();
    format!(
        r#"upstreams:
  - name: u
    vpc: vpc-main
    protocol: http
{upstream_extra}    nodes:
{nodes}services:
  - name: s
    apis:
      - name: r
        path: /r
        backend: {{ upstream: u, timeout: {timeout} }}
"#
    )
}

fn start(nodes: &[SocketAddr], upstream_extra: &str, timeout: &str) -> (Gateway, u16) {
    let admin = free_port();
    let gw = Gateway::start_with(
        &format!("  admin: \"127.0.0.1:{admin}\"\n  admin_token: {TOKEN}\n"),
        &config(nodes, upstream_extra, timeout),
    );
    (gw, admin)
}

fn health(admin: u16) -> serde_json::Value {
    let r = request(
        "GET",
        &format!("http://127.0.0.1:{admin}/upstreams/u/health"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn node_label(addr: SocketAddr) -> String {
    format!("127.0.0.1:{}", addr.port())
}

/// The state the admin API shows for the node at `addr`.
fn state_of(admin: u16, addr: SocketAddr) -> (String, String) {
    let h = health(admin);
    let node = h["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node_label(addr))
        .cloned()
        .unwrap();
    (
        node["state"].as_str().unwrap().to_owned(),
        node["reason"].as_str().unwrap().to_owned(),
    )
}

/// Waits (bounded) until `done` holds; panics with `what` otherwise.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` sequential GETs of `/r`, counted by (status, answering node).
fn spread(gw: &Gateway, n: usize) -> BTreeMap<(u16, String), usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = gw.get("/r");
        let node = r.header("x-echo-node").unwrap_or("-").to_owned();
        *counts.entry((r.status, node)).or_insert(0) += 1;
    }
    counts
}

fn count(counts: &BTreeMap<(u16, String), usize>, status: u16, node: &str) -> usize {
    counts.get(&(status, node.to_owned())).copied().unwrap_or(0)
}

#[test]
fn a_node_that_is_out_gives_its_share_evenly_to_the_others() {
    let (a, b) = (echo("a"), echo("b"));
    // the dead node sits between the two live ones in the schedule
    let dead = dead_addr();
    let (gw, admin) = start(&[a.addr(), dead, b.addr()], "", "5s");
    // the first requests find the dead node and take it out
    let warm = spread(&gw, 3);
    assert_eq!(
        count(&warm, 200, "a") + count(&warm, 200, "b"),
        3,
        "{warm:?}"
    );
    let counts = spread(&gw, 300);
    // before, the dead node's whole share went to the node after it: 100 vs 200
    assert_eq!(count(&counts, 200, "a"), 150, "{counts:?}");
    assert_eq!(count(&counts, 200, "b"), 150, "{counts:?}");
    let (state, reason) = state_of(admin, dead);
    assert_eq!(state, "UNHEALTHY");
    assert!(reason.contains("connection failed"), "{reason}");
    assert_eq!(state_of(admin, a.addr()).0, "HEALTHY");
    let dead_label = node_label(dead);
    assert_eq!(
        gw.metric(&format!(
            r#"gatehouse_upstream_node_healthy{{node="{dead_label}",upstream="u"}}"#
        )),
        0.0
    );
    assert_eq!(
        gw.metric(&format!(
            r#"gatehouse_upstream_node_health_transitions_total{{node="{dead_label}",state="UNHEALTHY",upstream="u"}}"#
        )),
        1.0
    );
    assert_eq!(gw.log().matches("is UNHEALTHY").count(), 1, "logged once");
}

/// Sends GETs of `/r` from `threads` threads until `stop`; returns the statuses seen.
fn load(
    gw: &Gateway,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<BTreeMap<u16, u64>>> {
    (0..threads)
        .map(|_| {
            let (url, stop) = (gw.url("/r"), stop.clone());
            std::thread::spawn(move || {
                let mut seen = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    *seen
                        .entry(request("GET", &url, &[], None).status)
                        .or_insert(0) += 1;
                }
                seen
            })
        })
        .collect()
}

fn join(handles: Vec<std::thread::JoinHandle<BTreeMap<u16, u64>>>) -> BTreeMap<u16, u64> {
    let mut all = BTreeMap::new();
    for h in handles {
        for (status, n) in h.join().unwrap() {
            *all.entry(status).or_insert(0) += n;
        }
    }
    all
}

#[test]
fn a_node_killed_under_load_fails_no_request() {
    let (a, b) = (echo("a"), echo("b"));
    let c = echo("c");
    let (gw, admin) = start(&[a.addr(), b.addr(), c.addr()], "", "5s");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&gw, 4, stop.clone());
    wait_until("traffic on c", || c.stats().requests() >= 50);
    let c_addr = c.addr();
    drop(c);
    let served_b = b.stats().requests();
    wait_until("traffic after the kill", || {
        b.stats().requests() >= served_b + 200
    });
    stop.store(true, Ordering::Relaxed);
    let statuses = join(clients);
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "{statuses:?}"
    );
    assert_eq!(state_of(admin, c_addr).0, "UNHEALTHY");
}

#[test]
fn a_node_that_never_answers_is_taken_out_after_its_timeouts() {
    let a = echo("a");
    let hung = echo_with("hung", Behavior::Delay(Duration::from_secs(3600)));
    let (gw, admin) = start(
        &[a.addr(), hung.addr()],
        "    unhealthy_timeout: 10m\n    health_check: { timeouts: 3 }\n",
        "300ms",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&gw, 4, stop.clone());
    wait_until("the hung node taken out", || {
        state_of(admin, hung.addr()).0 == "UNHEALTHY"
    });
    let reached = hung.stats().requests();
    let served = a.stats().requests();
    wait_until("more traffic", || a.stats().requests() >= served + 300);
    stop.store(true, Ordering::Relaxed);
    let statuses = join(clients);
    assert_eq!(
        hung.stats().requests(),
        reached,
        "no request reached the hung node once it was out"
    );
    // at most the threshold plus the requests already on their way to it timed out
    let timeouts = statuses.get(&504).copied().unwrap_or(0);
    assert!(timeouts <= 3 + 4, "{statuses:?}");
    assert_eq!(
        statuses.len(),
        if timeouts > 0 { 2 } else { 1 },
        "{statuses:?}"
    );
    assert!(state_of(admin, hung.addr())
        .1
        .contains("timed out (3 times in a row)"));
}

#[test]
fn a_node_answering_errors_is_taken_out_after_its_http_failures() {
    let a = echo("a");
    let failing = echo_with("failing", Behavior::Status(503));
    let (gw, admin) = start(
        &[a.addr(), failing.addr()],
        "    health_check: { http_failures: 3 }\n",
        "5s",
    );
    let counts = spread(&gw, 100);
    assert_eq!(count(&counts, 503, "failing"), 3, "{counts:?}");
    assert_eq!(count(&counts, 200, "a"), 97, "{counts:?}");
    let (state, reason) = state_of(admin, failing.addr());
    assert_eq!(state, "UNHEALTHY");
    assert!(
        reason.contains("answered 503 (3 times in a row)"),
        "{reason}"
    );
}

/// Restarts an echo server on the address a dropped one had.
fn restart(name: &str, addr: SocketAddr) -> EchoServer {
    EchoServer::start(addr, EchoConfig::echo(name)).unwrap()
}

#[test]
fn active_checks_bring_a_recovered_node_back_after_the_healthy_threshold() {
    let (a, b) = (echo("a"), echo("b"));
    let c_addr = dead_addr();
    let (gw, admin) = start(
        &[a.addr(), b.addr(), c_addr],
        "    unhealthy_timeout: 0s\n    health_check: { active: true, interval: 200ms, timeout: 1s, healthy_threshold: 2 }\n",
        "5s",
    );
    // probes find the dead node without any request
    wait_until("probes take the dead node out", || {
        state_of(admin, c_addr).0 == "UNHEALTHY"
    });
    assert!(state_of(admin, c_addr)
        .1
        .starts_with("probe connection failed"));
    wait_until("probes find the live nodes healthy", || {
        state_of(admin, a.addr()).0 == "HEALTHY" && state_of(admin, b.addr()).0 == "HEALTHY"
    });
    let counts = spread(&gw, 100);
    assert_eq!(count(&counts, 200, "a") + count(&counts, 200, "b"), 100);
    let c = restart("c", c_addr);
    let label = node_label(c_addr);
    let healthy_probes = format!(
        r#"gatehouse_upstream_probes_total{{node="{label}",result="healthy",upstream="u"}}"#
    );
    wait_until("the node is back", || {
        state_of(admin, c_addr).0 == "HEALTHY"
    });
    // exactly the threshold of healthy probes brought it back
    let probes = gw.metric(&healthy_probes);
    assert!((2.0..=3.0).contains(&probes), "{probes}");
    assert!(state_of(admin, c_addr).1.contains("2 times in a row"));
    let counts = spread(&gw, 300);
    for node in ["a", "b", "c"] {
        assert_eq!(count(&counts, 200, node), 100, "{counts:?}");
    }
    drop(c);
}

#[test]
fn when_every_node_is_down_requests_still_go_out_and_the_first_node_back_serves() {
    let (x, y) = (dead_addr(), dead_addr());
    let (gw, admin) = start(
        &[x, y],
        "    unhealthy_timeout: 0s\n    health_check: { active: true, interval: 200ms, timeout: 1s, healthy_threshold: 1 }\n",
        "5s",
    );
    wait_until("both nodes out", || {
        state_of(admin, x).0 == "UNHEALTHY" && state_of(admin, y).0 == "UNHEALTHY"
    });
    assert_eq!(health(admin)["panic"], true);
    assert_eq!(gw.metric(r#"gatehouse_upstream_panic{upstream="u"}"#), 1.0);
    // panic mode: requests are tried on the unhealthy nodes rather than refused outright
    let r = gw.get("/r");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["attempts"], 2, "{}", r.body);
    assert!(gw.metric(r#"gatehouse_upstream_panic_requests_total{upstream="u"}"#) >= 1.0);
    let back = restart("y", y);
    wait_until("one node back", || state_of(admin, y).0 == "HEALTHY");
    assert_eq!(health(admin)["panic"], false);
    let counts = spread(&gw, 50);
    assert_eq!(count(&counts, 200, "y"), 50, "{counts:?}");
    let log = gw.log();
    assert_eq!(log.matches("panic mode)").count(), 1, "{log}");
    assert_eq!(log.matches("panic mode over").count(), 1, "{log}");
    drop(back);
}

#[test]
fn health_checks_off_leave_every_node_in_rotation() {
    let a = echo("a");
    let dead = dead_addr();
    let (gw, admin) = start(
        &[a.addr(), dead],
        "    health_check: { passive: false }\n",
        "5s",
    );
    let counts = spread(&gw, 20);
    assert_eq!(count(&counts, 200, "a"), 20, "retried: {counts:?}");
    assert_eq!(state_of(admin, dead).0, "OFF");
    // every request to the dead node was retried on the other: it was never taken out
    let retries = gw.metric(r#"gatehouse_upstream_retries_total{upstream="u"}"#);
    assert_eq!(retries, 10.0);
}

#[test]
fn a_configuration_change_keeps_the_health_of_the_nodes_that_stay() {
    let (a, b) = (echo("a"), echo("b"));
    let dead = dead_addr();
    let admin = free_port();
    let (listen, metrics) = (free_port(), free_port());
    let head = instance_yaml(listen, metrics).replace(
        "  threads: 2\n",
        &format!("  threads: 2\n  admin: \"127.0.0.1:{admin}\"\n  admin_token: {TOKEN}\n"),
    );
    let gw = Gateway::start_config(
        &format!("{head}{}", config(&[a.addr(), dead], "", "5s")),
        listen,
        metrics,
    );
    spread(&gw, 4);
    assert_eq!(state_of(admin, dead).0, "UNHEALTHY");
    // add a node: the upstream is rebuilt, the dead node stays out
    let file = gw.dir.join("gatehouse.yaml");
    std::fs::write(
        &file,
        format!("{head}{}", config(&[a.addr(), dead, b.addr()], "", "5s")),
    )
    .unwrap();
    gw.signal("HUP");
    wait_until("the new node", || {
        health(admin)["nodes"].as_array().unwrap().len() == 3
    });
    assert_eq!(state_of(admin, dead).0, "UNHEALTHY");
    let before = gw.metric(r#"gatehouse_upstream_retries_total{upstream="u"}"#);
    let counts = spread(&gw, 20);
    assert_eq!(count(&counts, 200, "a") + count(&counts, 200, "b"), 20);
    assert_eq!(
        gw.metric(r#"gatehouse_upstream_retries_total{upstream="u"}"#),
        before,
        "no request went to the dead node"
    );
}

#[test]
fn answers_with_a_retry_status_are_retried_on_another_node_for_idempotent_requests() {
    let a = echo("a");
    let failing = echo_with("failing", Behavior::Status(503));
    let (gw, _) = start(
        &[a.addr(), failing.addr()],
        "    retry_statuses: [502, 503]\n    health_check: { http_failures: 0 }\n",
        "5s",
    );
    let counts = spread(&gw, 50);
    assert_eq!(count(&counts, 200, "a"), 50, "{counts:?}");
    assert_eq!(
        gw.metric(r#"gatehouse_upstream_retries_total{upstream="u"}"#),
        25.0
    );
    // a POST is never sent twice: the node's answer goes to the client as it is
    let mut posts = BTreeMap::new();
    for _ in 0..10 {
        let r = request("POST", &gw.url("/r"), &[], Some("order"));
        *posts.entry(r.status).or_insert(0) += 1;
    }
    assert_eq!(posts, [(200, 5), (503, 5)].into(), "{posts:?}");
}

#[test]
fn a_retry_budget_bounds_all_attempts_of_a_request() {
    let slow = echo_with("slow", Behavior::Delay(Duration::from_secs(3600)));
    let slow2 = echo_with("slow2", Behavior::Delay(Duration::from_secs(3600)));
    let (gw, _) = start(
        &[slow.addr(), slow2.addr()],
        "    retry_budget: 300ms\n    health_check: { passive: false }\n",
        "60s",
    );
    // the attempt is cut at the budget, not at the API's 60 s timeout
    let r = gw.get("/r");
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["attempts"], 1);
}

#[test]
fn a_pooled_connection_the_node_closed_is_resent_once_on_a_fresh_one() {
    let node = echo_with("n", Behavior::HangupOnReuse);
    let (gw, admin) = start(&[node.addr()], "    keepalive_timeout: 1m\n", "5s");
    // a request that finds the connection of the one before pooled meets the node dropping it
    // (a pause lets the connection go back to the pool first)
    for i in 0..10 {
        let r = request("POST", &gw.url("/r"), &[], Some("order"));
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        std::thread::sleep(Duration::from_millis(50));
    }
    // each such attempt broke, was read and dropped by the node, and was resent once on a fresh
    // connection; a request that found no pooled connection opened one: every request opened
    // exactly one connection
    let broken = attempts(&gw, node.addr(), "broken");
    assert!(broken >= 1.0, "no pooled connection was met");
    assert_eq!(attempts(&gw, node.addr(), "ok"), 10.0);
    assert_eq!(node.stats().connections(), 10);
    assert_eq!(
        node.stats().requests(),
        10 + broken as u64,
        "10 answered, {broken} read and dropped"
    );
    assert_eq!(
        state_of(admin, node.addr()).0,
        "HEALTHY",
        "not held against the node"
    );
}

#[test]
fn probes_stop_for_a_node_a_configuration_change_removed() {
    let (a, b) = (echo("a"), echo("b"));
    let admin = free_port();
    let (listen, metrics) = (free_port(), free_port());
    let head = instance_yaml(listen, metrics).replace(
        "  threads: 2\n",
        &format!("  threads: 2\n  admin: \"127.0.0.1:{admin}\"\n  admin_token: {TOKEN}\n"),
    );
    let probing = "    health_check: { active: true, interval: 100ms, timeout: 1s }\n";
    let gw = Gateway::start_config(
        &format!("{head}{}", config(&[a.addr(), b.addr()], probing, "5s")),
        listen,
        metrics,
    );
    // probes reach both nodes without any request
    wait_until("probes on b", || b.stats().requests() >= 3);
    std::fs::write(
        gw.dir.join("gatehouse.yaml"),
        format!("{head}{}", config(&[a.addr()], probing, "5s")),
    )
    .unwrap();
    gw.signal("HUP");
    wait_until("b removed", || {
        health(admin)["nodes"].as_array().unwrap().len() == 1
    });
    // a probe already in flight may still land; after that, none
    std::thread::sleep(Duration::from_millis(300));
    let (on_a, on_b) = (a.stats().requests(), b.stats().requests());
    wait_until("more probes on a", || a.stats().requests() >= on_a + 5);
    assert_eq!(
        b.stats().requests(),
        on_b,
        "no probe reached the removed node"
    );
}

/// The attempts of client requests on the node at `addr` that ended `outcome`.
fn attempts(gw: &Gateway, addr: SocketAddr, outcome: &str) -> f64 {
    gw.metric(&format!(
        r#"gatehouse_upstream_attempts_total{{node="{}",outcome="{outcome}",upstream="u"}}"#,
        node_label(addr)
    ))
}

#[test]
fn with_active_checks_a_hanging_node_stays_out_until_probes_pass() {
    let a = echo("a");
    let hung = echo_with("hung", Behavior::Delay(Duration::from_secs(3600)));
    let (gw, admin) = start(
        &[a.addr(), hung.addr()],
        "    unhealthy_timeout: 1s\n    health_check: { timeouts: 1, active: true, interval: 200ms, timeout: 300ms, healthy_threshold: 2 }\n",
        "300ms",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&gw, 4, stop.clone());
    wait_until("the hung node taken out", || {
        state_of(admin, hung.addr()).0 == "UNHEALTHY"
    });
    // requests already on their way to it end within the API's 300 ms timeout
    std::thread::sleep(Duration::from_secs(1));
    let after_detection = attempts(&gw, hung.addr(), "response_timeout");
    // five recovery times: a node brought back by the clock would be tried several times
    let observed = Instant::now();
    wait_until("five recovery times of traffic", || {
        observed.elapsed() >= Duration::from_secs(5)
    });
    stop.store(true, Ordering::Relaxed);
    join(clients);
    assert_eq!(
        attempts(&gw, hung.addr(), "response_timeout"),
        after_detection,
        "a client request waited on the hanging node after it was taken out"
    );
    assert_eq!(state_of(admin, hung.addr()).0, "UNHEALTHY");
}

#[test]
fn without_active_checks_a_hanging_node_gets_one_trial_request_per_return_and_longer_each_time() {
    let a = echo("a");
    let hung = echo_with("hung", Behavior::Delay(Duration::from_secs(3600)));
    let (gw, admin) = start(
        &[a.addr(), hung.addr()],
        "    unhealthy_timeout: 1s\n    health_check: { timeouts: 1 }\n",
        "300ms",
    );
    let probations = |gw: &Gateway| {
        gw.metric(&format!(
            r#"gatehouse_upstream_node_probations_total{{node="{}",upstream="u"}}"#,
            node_label(hung.addr())
        ))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&gw, 4, stop.clone());
    wait_until("the hung node taken out", || {
        state_of(admin, hung.addr()).0 == "UNHEALTHY"
    });
    let at_detection = attempts(&gw, hung.addr(), "response_timeout");
    let observed = Instant::now();
    wait_until("seven seconds of traffic", || {
        observed.elapsed() >= Duration::from_secs(7)
    });
    stop.store(true, Ordering::Relaxed);
    join(clients);
    let trials = probations(&gw);
    let waited = attempts(&gw, hung.addr(), "response_timeout") - at_detection;
    // out 1 s, then 2 s, then 4 s: two or three returns in seven seconds, one request each (and
    // the up to four requests already on their way when it was taken out)
    assert!(
        waited <= 4.0 + trials,
        "{waited} requests waited on the hanging node after its detection, {trials} probations"
    );
    assert!((1.0..=3.0).contains(&trials), "{trials} probations");
    let log = gw.log();
    assert!(log.contains("is on probation"), "{log}");
    assert!(log.contains("its trial request failed"), "{log}");
}
