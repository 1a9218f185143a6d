//! Plugins that steer and count, end to end: node tags, the standard `canary` plugin, steering
//! to one node, per-request retry limits and the grant they need, and the standard `rate-limit`
//! plugin on the gateway's counters, against the real binary and real backends. Every test counts
//! where requests went.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use support::*;

/// A node line of an upstream: `addr` with weight 1 and `tags`.
fn node(addr: SocketAddr, tags: &str) -> String {
    format!(
        "      - {{ host: 127.0.0.1, port: {}, weight: 1, tags: [{tags}] }}\n",
        addr.port()
    )
}

/// An upstream `name` on `nodes` ([`node`] lines).
fn upstream(name: &str, nodes: &[String]) -> String {
    format!(
        "  - name: {name}\n    vpc: vpc-main\n    protocol: http\n    nodes:\n{}",
        nodes.concat()
    )
}

/// An API `name` at `/name` on `upstream` with `plugins` (entries indented by 10 spaces).
fn api(name: &str, upstream: &str, plugins: &str) -> String {
    format!(
        "      - name: {name}\n        path: /{name}\n        backend: {{ upstream: {upstream} }}\n        plugins:\n{plugins}"
    )
}

fn config(upstreams: &[String], apis: &[String]) -> String {
    format!(
        "upstreams:\n{}services:\n  - name: s\n    apis:\n{}",
        upstreams.concat(),
        apis.concat()
    )
}

/// Where `n` requests to `path` with `headers` went: (status, node) → count.
fn spread(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> BTreeMap<(u16, String), usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = request("GET", &gw.url(path), headers, None);
        let node = r.header("x-echo-node").unwrap_or("-").to_owned();
        *counts.entry((r.status, node)).or_insert(0) += 1;
    }
    counts
}

fn served_by(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> String {
    let r = request("GET", &gw.url(path), headers, None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.header("x-echo-node").unwrap().to_owned()
}

#[test]
fn the_canary_plugin_sends_marked_requests_and_a_stable_share_of_users_to_the_canary() {
    let (s1, s2, c) = (echo("s1"), echo("s2"), echo("c"));
    let plugin = "          - name: canary\n            config: { tag: canary, stable_tag: stable, percent: 25, by: \"header:x-user\", header: x-canary, values: [\"1\"] }\n";
    let gw = Gateway::start(&config(
        &[upstream(
            "u",
            &[
                node(s1.addr(), "stable"),
                node(s2.addr(), "stable"),
                node(c.addr(), "canary"),
            ],
        )],
        &[api("orders", "u", plugin)],
    ));
    // marked requests: all to the canary
    let marked = spread(&gw, "/orders", &[("x-canary", "1")], 40);
    assert_eq!(marked, BTreeMap::from([((200, "c".to_owned()), 40)]));
    // other requests without a user: all to the stable nodes, shared by weight
    let plain = spread(&gw, "/orders", &[("x-canary", "0")], 100);
    assert_eq!(
        plain,
        BTreeMap::from([((200, "s1".to_owned()), 50), ((200, "s2".to_owned()), 50)])
    );
    // users: each stays on its side, and about a quarter are on the canary
    let mut on_canary = 0;
    for u in 0..400 {
        let user = format!("user-{u}");
        let first = served_by(&gw, "/orders", &[("x-user", &user)]);
        let second = served_by(&gw, "/orders", &[("x-user", &user)]);
        assert_eq!(first == "c", second == "c", "{user} changed sides");
        on_canary += usize::from(first == "c");
    }
    // binomial(400, 0.25): mean 100, standard deviation 8.7
    assert!((60..=140).contains(&on_canary), "{on_canary} of 400 users");
    let total = s1.stats().requests() + s2.stats().requests() + c.stats().requests();
    assert_eq!(
        total,
        40 + 100 + 800,
        "every request reached exactly one node"
    );
}

#[test]
fn when_the_steered_nodes_cannot_serve_the_plugins_fallback_decides() {
    let s = echo("s");
    let dead = dead_addr();
    let canary = |fallback: &str| {
        format!("          - name: canary\n            config: {{ tag: canary, percent: 100, fallback: {fallback} }}\n")
    };
    let gw = Gateway::start(&config(
        &[
            upstream("f", &[node(s.addr(), "stable"), node(dead, "canary")]),
            upstream("a", &[node(s.addr(), "stable"), node(dead, "canary")]),
        ],
        &[
            api("fail", "f", &canary("fail")),
            api("any", "a", &canary("any-node")),
        ],
    ));
    // `fail`: the one canary node refuses; no other node is tried
    let first = gw.get("/fail");
    assert_eq!(first.status, 502, "{}", first.body);
    assert_eq!(first.json()["attempts"], 1, "{}", first.body);
    // now it is out: refused before any attempt, with the reason
    for _ in 0..5 {
        let r = gw.get("/fail");
        assert_eq!(r.status, 503, "{}", r.body);
        let body = r.json();
        assert_eq!(body["error"], "no_steered_node", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("tagged \"canary\""), "{message}");
    }
    // `any-node`: the request goes on to the stable node
    let counts = spread(&gw, "/any", &[], 20);
    assert_eq!(counts, BTreeMap::from([((200, "s".to_owned()), 20)]));
    assert_eq!(s.stats().requests(), 20, "no request of /fail reached it");
    let steered = |upstream: &str, outcome: &str| {
        gw.metric(&format!(
            "gatehouse_upstream_steered_requests_total{{outcome=\"{outcome}\",upstream=\"{upstream}\"}}"
        ))
    };
    assert_eq!(steered("f", "steered"), 1.0, "the first, to the dead node");
    assert_eq!(steered("f", "refused"), 5.0);
    assert_eq!(steered("f", "fallback"), 0.0);
    // the first /any request went to the dead node and was retried on the stable one
    assert_eq!(steered("a", "steered") + steered("a", "fallback"), 20.0);
    assert!(steered("a", "fallback") >= 19.0);
}

/// A `grant-probe` entry declaring `node_steering` and granted it (or neither), with `config`
/// keys added.
fn probe(config: &str, granted: bool) -> String {
    format!(
        "          - path: {}\n            grants: {{ node_steering: {granted} }}\n            config: {{ needs: {{ node_steering: {granted} }}, hooks: [on-request], {config} }}\n",
        shipped_plugin("grant-probe").display()
    )
}

/// A `grant-probe` entry counting requests, declaring and granted `counters` (or neither).
fn counting(granted: bool) -> String {
    format!(
        "          - path: {}\n            grants: {{ counters: {granted}, request_headers: {{ write: [x-probe-count] }} }}\n            config: {{ needs: {{ counters: {granted}, request_headers: {{ write: [x-probe-count] }} }}, hooks: [on-request], count_key: k }}\n",
        shipped_plugin("grant-probe").display()
    )
}

#[test]
fn a_plugin_steers_to_one_node_and_limits_retries_only_when_granted() {
    let (a, b) = (echo("a"), echo("b"));
    let dead = dead_addr();
    let body = config(
        &[
            upstream("ab", &[node(a.addr(), ""), node(b.addr(), "")]),
            upstream("once", &[node(dead, ""), node(a.addr(), "")]),
            upstream("twice", &[node(dead, ""), node(a.addr(), "")]),
        ],
        &[
            api(
                "to_b",
                "ab",
                &probe(
                    &format!("steer_to_node: \"127.0.0.1:{}\"", b.addr().port()),
                    true,
                ),
            ),
            api("once", "once", &probe("limit_retries: 0", true)),
            api("twice", "twice", &probe("limit_retries: 1", true)),
            api("ungranted", "ab", &probe("limit_retries: 0", false)),
            api("counted", "ab", &counting(true)),
            api("uncounted", "ab", &counting(false)),
        ],
    );
    let gw = Gateway::start_with(&file_roots_for(shipped_plugin("grant-probe")), &body);
    let counts = spread(&gw, "/to_b", &[], 30);
    assert_eq!(counts, BTreeMap::from([((200, "b".to_owned()), 30)]));
    // the dead node is first in both schedules: no retry, then one retry
    let once = gw.get("/once");
    assert_eq!(once.status, 502, "{}", once.body);
    assert_eq!(once.json()["attempts"], 1);
    let twice = gw.get("/twice");
    assert_eq!(twice.status, 200, "{}", twice.body);
    assert_eq!(twice.header("x-echo-node"), Some("a"));
    // counting without the grant fails the call too; with it, the count goes upstream
    let counted = gw.get("/counted");
    assert_eq!(counted.status, 200, "{}", counted.body);
    assert_eq!(counted.json()["headers"]["x-probe-count"], "1");
    let uncounted = gw.get("/uncounted");
    assert_eq!(uncounted.status, 500, "{}", uncounted.body);
    // steering without the grant fails the call
    let denied = gw.get("/ungranted");
    assert_eq!(denied.status, 500, "{}", denied.body);
    assert_eq!(denied.json()["error"], "plugin_failed");
    assert_eq!(
        gw.metric("gatehouse_plugin_failures_total{plugin=\"grant-probe\",reason=\"denied\"}"),
        2.0
    );
}

/// Waits, if needed, until the current hour-long window has at least a minute left, so that a
/// burst counted in it cannot straddle two windows. `reset` is a `RateLimit-Reset` in seconds.
fn away_from_the_window_end(reset: &str) {
    let left: u64 = reset.parse().unwrap();
    if left < 60 {
        std::thread::sleep(std::time::Duration::from_secs(left + 1));
    }
}

#[test]
fn the_rate_limit_lets_exactly_its_limit_through_under_concurrent_clients() {
    let backend = echo("a");
    let limited = |by: &str, limit: u32| {
        format!("          - name: rate-limit\n            config: {{ limit: {limit}, window: 1h, by: \"{by}\", response_headers: true }}\n")
    };
    let gw = Gateway::start(&config(
        &[upstream("u", &[node(backend.addr(), "")])],
        &[
            api("by_key", "u", &limited("header:x-key", 100)),
            api("by_ip", "u", &limited("client-addr", 5)),
        ],
    ));
    let probe = request("GET", &gw.url("/by_key"), &[("x-key", "probe")], None);
    assert_eq!(probe.status, 200);
    assert_eq!(probe.header("ratelimit-limit"), Some("100"));
    assert_eq!(probe.header("ratelimit-remaining"), Some("99"));
    away_from_the_window_end(probe.header("ratelimit-reset").unwrap());
    // 8 clients at once send 50 requests each with the same key
    let url = gw.url("/by_key");
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..50)
                        .map(|_| {
                            let r = request("GET", &url, &[("x-key", "burst")], None);
                            (r.status, r.header("retry-after").map(str::to_owned))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let passed = statuses.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(passed, 100, "exactly the limit passed");
    assert_eq!(refused.len(), 300, "and every other request was refused");
    for (_, retry) in &refused {
        let retry: u64 = retry.as_deref().unwrap().parse().unwrap();
        assert!((1..=3600).contains(&retry), "{retry}");
    }
    assert_eq!(
        backend.stats().requests(),
        1 + 100,
        "refused requests never reached it"
    );
    // the refusal's body and headers
    let r = request("GET", &url, &[("x-key", "burst")], None);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    let body = r.json();
    assert_eq!(body["error"], "too_many_requests", "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("100 requests per 3600 s"));
    // another key has its own count
    let other = request("GET", &url, &[("x-key", "other")], None);
    assert_eq!(other.status, 200);
    assert_eq!(other.header("ratelimit-remaining"), Some("99"));
    // by client address: one client, five requests
    let counts = spread(&gw, "/by_ip", &[], 8);
    assert_eq!(
        counts,
        BTreeMap::from([((200, "a".to_owned()), 5), ((429, "-".to_owned()), 3)])
    );
}
