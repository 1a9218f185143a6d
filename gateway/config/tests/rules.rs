//! One case per validation rule: each breaks a valid config in one place and asserts the path and
//! message the user sees.

use std::path::Path;

use gatehouse_config::{parse, Backend, ConfigError, InstanceKind, NodeHost};
use serde_yaml::Value;

const VALID: &str = r#"
instance:
  id: ins-edge-1
  type: dedicated
  vpc: vpc-main
  listen: ["0.0.0.0:8080"]
  metrics: "127.0.0.1:9091"
  threads: 2
vpcs:
  - id: vpc-main
    cidrs: ["10.0.0.0/16", "127.0.0.0/8"]
  - id: vpc-data
    cidrs: ["10.1.0.0/16"]
connections:
  - [vpc-main, vpc-data]
upstreams:
  - name: user_service
    vpc: vpc-main
    description: user API pool
    algorithm: weighted_round_robin
    protocol: http
    host_header: users.internal:8080
    retries: 5
    nodes:
      - { host: 10.0.0.11, port: 8080, weight: 10 }
      - { host: 10.0.0.12, port: 8080, weight: 5 }
  - name: data_service
    vpc: vpc-data
    protocol: https
    tls: { verify: true, sni: data.internal }
    nodes:
      - { host: 10.1.0.5, port: 8443, weight: 1 }
      - { host: data-2.internal, port: 8443, weight: 1 }
services:
  - name: shop
    apis:
      - name: get_user
        path: /users/{id}
        methods: [GET]
        backend:
          upstream: user_service
          path: /v1/users/{id}
          timeout: 15s
      - name: update_user
        path: /users/{uid}
        methods: [PUT, PATCH]
        backend: { upstream: user_service }
      - name: health
        path: /healthz
        backend: { response: { status: 200, body: ok } }
      - name: files
        path: /files/{*rest}
        methods: [GET]
        backend: { upstream: data_service, path: "/blob/{rest}" }
"#;

fn base() -> Value {
    serde_yaml::from_str(VALID).unwrap()
}

/// Sets `path` (`a.b[2].c`) in `doc` to `value` parsed as YAML (`~` removes the key).
fn set(doc: &mut Value, path: &str, value: &str) {
    let mut cur = doc;
    let keys: Vec<&str> = path.split('.').collect();
    for (i, key) in keys.iter().enumerate() {
        let (name, index) = match key.split_once('[') {
            Some((n, rest)) => (
                n,
                Some(rest.trim_end_matches(']').parse::<usize>().unwrap()),
            ),
            None => (*key, None),
        };
        let last = i == keys.len() - 1;
        if last && index.is_none() {
            let map = cur.as_mapping_mut().unwrap();
            if value == "~" {
                map.remove(name);
            } else {
                map.insert(name.into(), serde_yaml::from_str(value).unwrap());
            }
            return;
        }
        cur = cur
            .get_mut(name)
            .unwrap_or_else(|| panic!("no key {name} in {path}"));
        if let Some(idx) = index {
            if last {
                cur.as_sequence_mut().unwrap()[idx] = serde_yaml::from_str(value).unwrap();
                return;
            }
            cur = cur.get_mut(idx).unwrap();
        }
    }
}

fn problems_of(doc: &Value) -> Vec<String> {
    let text = serde_yaml::to_string(doc).unwrap();
    match parse(&text, "test.yaml", Path::new("/etc/gatehouse")) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.0.iter().map(|p| p.to_string()).collect()
        }
        Err(e) => vec![e.to_string()],
    }
}

#[test]
fn the_reference_config_is_valid() {
    let cfg = parse(VALID, "test.yaml", Path::new("/etc/gatehouse")).expect("valid");
    assert_eq!(cfg.instance.kind, InstanceKind::Dedicated);
    assert_eq!(cfg.upstreams.len(), 2);
    assert_eq!(cfg.upstreams[0].retries, 5);
    assert_eq!(
        cfg.upstreams[1].nodes[1].host,
        NodeHost::Name("data-2.internal".into())
    );
    assert!(matches!(
        cfg.services[0].apis[2].backend,
        Backend::Response(_)
    ));
    assert_eq!(cfg.hash.len(), 16);
}

#[test]
fn health_checks_default_to_passive_and_take_every_field() {
    let cfg = parse(VALID, "test.yaml", Path::new("/etc/gatehouse")).expect("valid");
    let u = &cfg.upstreams[0];
    assert!(u.health.passive && u.health.active.is_none());
    assert_eq!(u.unhealthy_timeout, std::time::Duration::from_secs(30));
    assert_eq!(u.keepalive_timeout, std::time::Duration::from_secs(4));
    assert_eq!(
        (
            u.health.tcp_failures,
            u.health.timeouts,
            u.health.http_failures
        ),
        (1, 3, 5)
    );
    let mut doc = base();
    set(
        &mut doc,
        "upstreams[0].health_check",
        "{ active: true, passive: false, path: \"/healthz?deep=1\", timeout: 2s, interval: 1s, headers: { x-probe: gatehouse }, healthy_statuses: [200, 204], unhealthy_statuses: [503], tcp_failures: 2, timeouts: 0, http_failures: 254, healthy_threshold: 3 }",
    );
    set(&mut doc, "upstreams[0].unhealthy_timeout", "0s");
    let text = serde_yaml::to_string(&doc).unwrap();
    let cfg = parse(&text, "test.yaml", Path::new("/etc/gatehouse")).expect("valid");
    let h = &cfg.upstreams[0].health;
    let active = h.active.as_ref().unwrap();
    assert_eq!(active.path, "/healthz?deep=1");
    assert_eq!(active.interval, std::time::Duration::from_secs(1));
    assert_eq!(
        active.headers,
        vec![("x-probe".to_owned(), "gatehouse".to_owned())]
    );
    assert!(!h.passive);
    assert_eq!(h.healthy_statuses, vec![200, 204]);
    assert_eq!(h.unhealthy_statuses, vec![503]);
    assert_eq!(
        (
            h.tcp_failures,
            h.timeouts,
            h.http_failures,
            h.healthy_threshold
        ),
        (2, 0, 254, 3)
    );
    assert!(
        cfg.upstreams[0].unhealthy_timeout.is_zero(),
        "0s is allowed with active checks"
    );
}

#[test]
fn node_tags_are_kept_in_order_and_default_to_none() {
    let mut doc = base();
    set(&mut doc, "upstreams[0].nodes[1].tags", "[canary, zone-b]");
    let cfg = parse(&serde_yaml::to_string(&doc).unwrap(), "t", Path::new("/")).unwrap();
    assert!(cfg.upstreams[0].nodes[0].tags.is_empty());
    assert_eq!(cfg.upstreams[0].nodes[1].tags, ["canary", "zone-b"]);
}

#[test]
fn defaults_apply_when_keys_are_omitted() {
    let mut doc = base();
    set(&mut doc, "upstreams[0].retries", "~");
    set(&mut doc, "instance.metrics", "~");
    set(&mut doc, "instance.threads", "~");
    let cfg = parse(&serde_yaml::to_string(&doc).unwrap(), "t", Path::new("/")).unwrap();
    assert_eq!(cfg.upstreams[0].retries, 5, "retries default to 5");
    assert_eq!(
        cfg.instance.metrics.to_string(),
        "127.0.0.1:9091",
        "metrics bind to loopback"
    );
    assert_eq!(cfg.instance.threads, None);
    assert!(
        cfg.upstreams[1].tls.as_ref().unwrap().verify,
        "https verifies by default"
    );
}

/// (name, [(path, value)], expected substring of one reported problem)
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

const CASES: &[Case] = &[
    ("name too long", &[("upstreams[0].name", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")], "upstreams[0].name: upstream name"),
    ("name with bad characters", &[("upstreams[0].name", "user-service")], "upstreams[0].name: upstream name \"user-service\" must be 1 to 50 characters"),
    ("empty name", &[("upstreams[0].name", "''")], "upstreams[0].name: upstream name \"\""),
    ("duplicate upstream", &[("upstreams[1].name", "user_service"), ("services[0].apis[3].backend.upstream", "user_service")], "upstreams[1].name: upstream \"user_service\" is declared twice"),
    ("duplicate API in a service", &[("services[0].apis[1].name", "get_user")], "services[0].apis[1].name: API \"get_user\" is declared twice in service \"shop\""),
    ("unknown VPC", &[("upstreams[0].vpc", "vpc-nope")], "upstreams[0].vpc: VPC \"vpc-nope\" is not declared (fix: use one of: vpc-data, vpc-main"),
    ("instance VPC unknown", &[("instance.vpc", "vpc-x")], "instance.vpc: VPC \"vpc-x\" is not declared"),
    ("bad protocol", &[("upstreams[0].protocol", "grpc")], "upstreams[0].protocol: \"grpc\" is not a backend protocol (fix: use http or https)"),
    ("bad algorithm", &[("upstreams[0].algorithm", "least_conn")], "upstreams[0].algorithm: \"least_conn\" is not supported"),
    ("no nodes", &[("upstreams[0].nodes", "[]")], "upstreams[0].nodes: has 0 nodes; an upstream has 1 to 200"),
    ("port zero", &[("upstreams[0].nodes[1].port", "0")], "upstreams[0].nodes[1].port: 0 is out of range 1..=65535"),
    ("port too high", &[("upstreams[0].nodes[1].port", "70000")], "upstreams[0].nodes[1].port: 70000 is out of range 1..=65535"),
    ("weight too high", &[("upstreams[0].nodes[1].weight", "150")], "upstreams[0].nodes[1].weight: 150 is out of range 0..=100"),
    ("negative weight", &[("upstreams[0].nodes[0].weight", "-1")], "upstreams[0].nodes[0].weight: -1 is out of range 0..=100"),
    ("all weights zero", &[("upstreams[0].nodes[0].weight", "0"), ("upstreams[0].nodes[1].weight", "0")], "upstreams[0].nodes: every node has weight 0"),
    ("bad node tag", &[("upstreams[0].nodes[1].tags", "[canary, Blue]")], "upstreams[0].nodes[1].tags[1]: \"Blue\" is not a tag (fix: use 1 to 32 lower-case letters"),
    ("repeated node tag", &[("upstreams[0].nodes[0].tags", "[canary, zone-a, canary]")], "upstreams[0].nodes[0].tags[2]: \"canary\" is already tags[0] (fix: list each tag once)"),
    ("too many node tags", &[("upstreams[0].nodes[0].tags", "[a, b, c, d, e, f, g, h, i]")], "upstreams[0].nodes[0].tags: has 9 tags; a node has at most 8"),
    ("duplicate node", &[("upstreams[0].nodes[1].host", "10.0.0.11")], "upstreams[0].nodes[1]: 10.0.0.11:8080 is already nodes[0]"),
    ("node outside its VPC", &[("upstreams[0].nodes[1].host", "192.168.1.9")], "upstreams[0].nodes[1].host: 192.168.1.9 is outside VPC \"vpc-main\""),
    ("node host not a name", &[("upstreams[0].nodes[1].host", "bad host!")], "upstreams[0].nodes[1].host: \"bad host!\" is neither an IP address nor a DNS name"),
    ("retries zero", &[("upstreams[0].retries", "0")], "upstreams[0].retries: 0 is out of range 1..=100"),
    ("retries too many", &[("upstreams[0].retries", "101")], "upstreams[0].retries: 101 is out of range 1..=100"),
    ("tls on http", &[("upstreams[0].tls", "{ verify: true }")], "upstreams[0].tls: tls settings are given but the protocol is http"),
    ("bad host header", &[("upstreams[0].host_header", "'users internal'")], "upstreams[0].host_header: \"users internal\" is not a valid Host header"),
    ("upstream API on a shared instance", &[("instance.type", "shared")], "services[0].apis[0].backend.upstream: VPC upstreams serve APIs on dedicated instances only"),
    ("bad instance type", &[("instance.type", "huge")], "instance.type: \"huge\" is not an instance type"),
    ("unconnected VPCs", &[("connections", "[]")], "upstreams[1].vpc: upstream VPC \"vpc-data\" is not the instance's VPC \"vpc-main\" and the two are not connected (fix: connect them by adding `- [vpc-main, vpc-data]` under connections:"),
    ("connection to unknown VPC", &[("connections[0]", "[vpc-main, vpc-zzz]")], "connections[0][1]: VPC \"vpc-zzz\" is not declared"),
    ("invalid path pattern", &[("services[0].apis[0].path", "users/{id}")], "services[0].apis[0].path: path pattern \"users/{id}\" must start with '/'"),
    ("same method and path twice", &[("services[0].apis[1].methods", "[GET]")], "services[0].apis[1].path: GET \"/users/{uid}\" is already claimed by services[0].apis[0]"),
    ("any method overlaps", &[("services[0].apis[1].methods", "~")], "services[0].apis[1].path: every method \"/users/{uid}\" is already claimed by services[0].apis[0]"),
    ("param and wildcard at one position", &[("services[0].apis[2].path", "/users/{*all}")], "services[0].apis[2].path: \"/users/{*all}\" cannot be routed next to another API's path"),
    ("unknown upstream", &[("services[0].apis[0].backend.upstream", "nobody")], "services[0].apis[0].backend.upstream: upstream \"nobody\" is not declared (fix: use one of: user_service, data_service)"),
    ("backend path uses an unknown parameter", &[("services[0].apis[0].backend.path", "/v1/{user}")], "services[0].apis[0].backend.path: backend path \"/v1/{user}\" uses {user}"),
    ("bad timeout", &[("services[0].apis[0].backend.timeout", "soon")], "services[0].apis[0].backend.timeout: \"soon\" is not a duration"),
    ("bad method", &[("services[0].apis[0].methods", "[FETCH]")], "services[0].apis[0].methods[0]: \"FETCH\" is not an HTTP method"),
    ("both backends", &[("services[0].apis[0].backend.response", "{ body: x }")], "services[0].apis[0].backend: a backend is either an upstream or a fixed response"),
    ("bad listen address", &[("instance.listen", "[\"localhost:80\"]")], "instance.listen[0]: \"localhost:80\" is not an IP:port address"),
    ("threads out of range", &[("instance.threads", "0")], "instance.threads: 0 is out of range 1..=256"),
    ("h2 pending bodies out of range", &[("instance.http", "{ h2_max_pending_bodies: 0 }")], "instance.http.h2_max_pending_bodies: 0 is out of range 1..=10000"),
    ("read buffer too large", &[("instance.http", "{ read_buffer: 2MiB }")], "instance.http.read_buffer: \"2MiB\" is not a size in 0..=1MiB (fix: write a size like 4KiB, or 0 for no buffer)"),
    ("read buffer not a size", &[("instance.http", "{ read_buffer: lots }")], "instance.http.read_buffer: \"lots\" is not a size in 0..=1MiB"),
    ("bad CIDR", &[("vpcs[1].cidrs", "[\"10.1.0.0/33\"]")], "vpcs[1].cidrs[0]: \"10.1.0.0/33\" is not a CIDR block"),
    ("duplicate VPC", &[("vpcs[1].id", "vpc-main")], "vpcs[1].id: VPC \"vpc-main\" is declared twice"),
    ("unknown standard plugin", &[("services[0].apis[0].plugins", "[{ name: nope }]")], "services[0].apis[0].plugins[0].name: \"nope\" is not a standard plugin"),
    ("plugin with name and path", &[("services[0].apis[0].plugins", "[{ name: cors, path: x.wasm }]")], "services[0].apis[0].plugins[0]: a plugin is either a standard plugin (name) or a component file (path)"),
    ("bad failure policy", &[("services[0].apis[0].plugins", "[{ name: cors, on_error: ignore }]")], "services[0].apis[0].plugins[0].on_error: \"ignore\" is not a failure policy"),
    ("plugin config not a map", &[("services[0].apis[0].plugins", "[{ name: cors, config: [1, 2] }]")], "services[0].apis[0].plugins[0].config: must be a map"),
    ("plugin config text for a standard plugin", &[("services[0].apis[0].plugins", "[{ name: cors, config: text }]")], "services[0].apis[0].plugins[0].config: must be a map"),
    ("root id on a standard plugin", &[("services[0].apis[0].plugins", "[{ name: cors, root_id: r }]")], "services[0].apis[0].plugins[0].root_id: only a Proxy-Wasm filter"),
    ("vm config on a standard plugin", &[("services[0].apis[0].plugins", "[{ name: cors, vm_config: v }]")], "services[0].apis[0].plugins[0].vm_config: only a Proxy-Wasm filter"),
    ("plugin memory limit too big", &[("instance.plugins", "{ memory_limit: 2GiB }")], "instance.plugins.memory_limit: \"2GiB\" is out of range 1MiB..=1GiB"),
    ("plugin time limit not a duration", &[("instance.plugins", "{ time_limit: fast }")], "instance.plugins.time_limit: \"fast\" is not a duration"),
    ("plugin body limit over the instance maximum", &[("services[0].apis[0].plugins", "[{ name: json-validator, body_limit: 2MiB }]")], "services[0].apis[0].plugins[0].body_limit: \"2MiB\" is not a size in 1B..=1MiB (instance.plugins.max_body_limit)"),
    ("instance body limit over its maximum", &[("instance.plugins", "{ body_limit: 2MiB, max_body_limit: 1MiB }")], "instance.plugins.body_limit: \"2MiB\" is not a size in 1B..=1MiB"),
    ("max body limit over the ceiling", &[("instance.plugins", "{ max_body_limit: 64MiB }")], "instance.plugins.max_body_limit: \"64MiB\" is not a size in 1KiB..=16MiB"),
    ("grant of an unknown hook", &[("services[0].apis[0].plugins", "[{ name: cors, grants: { hooks: [on-body] } }]")], "services[0].apis[0].plugins[0].grants.hooks[0]: \"on-body\" is not a hook"),
    ("grant of a header in upper case", &[("services[0].apis[0].plugins", "[{ name: cors, grants: { request_headers: { read: [Authorization] } } }]")], "services[0].apis[0].plugins[0].grants.request_headers.read[0]: \"Authorization\" is not lower case"),
    ("grant with a star inside", &[("services[0].apis[0].plugins", "[{ name: cors, grants: { response_headers: { write: [\"x-*-id\"] } } }]")], "services[0].apis[0].plugins[0].grants.response_headers.write[0]: \"x-*-id\" has a * that is not at its end"),
    ("body hook granted without the body", &[("services[0].apis[0].plugins", "[{ name: cors, grants: { hooks: [on-response-body] } }]")], "services[0].apis[0].plugins[0].grants.hooks: on-response-body is granted without the response body"),
    ("admin token too short", &[("instance.admin_token", "short")], "instance.admin_token: the token must be at least 16 characters"),
    ("admin on the proxy port", &[("instance.admin", "\"0.0.0.0:8080\"")], "instance.admin: 0.0.0.0:8080 is also a proxy or metrics listener"),
    ("bad bound_at", &[("services[0].apis[0].backend.bound_at", "yesterday")], "services[0].apis[0].backend.bound_at: \"yesterday\" is not an RFC 3339 time"),
    ("0s recovery with passive checks only", &[("upstreams[0].unhealthy_timeout", "0s")], "upstreams[0].unhealthy_timeout: 0s would leave a node that passive checks take out out for good"),
    ("threshold out of range", &[("upstreams[0].health_check", "{ timeouts: 255 }")], "upstreams[0].health_check.timeouts: 255 is out of range 0..=254"),
    ("healthy threshold zero", &[("upstreams[0].health_check", "{ active: true, healthy_threshold: 0 }")], "upstreams[0].health_check.healthy_threshold: 0 is out of range 1..=254"),
    ("bad status", &[("upstreams[0].health_check", "{ unhealthy_statuses: [503, 600] }")], "upstreams[0].health_check.unhealthy_statuses[1]: 600 is not an HTTP status"),
    ("status in both lists", &[("upstreams[0].health_check", "{ active: true, healthy_statuses: [200, 503] }")], "upstreams[0].health_check.unhealthy_statuses: 503 is listed as both healthy and unhealthy"),
    ("probe settings without active checks", &[("upstreams[0].health_check", "{ path: /healthz }")], "upstreams[0].health_check.active: probe settings are given"),
    ("probe path not a path", &[("upstreams[0].health_check", "{ active: true, path: healthz }")], "upstreams[0].health_check.path: \"healthz\" is not a request path"),
    ("probe interval too short", &[("upstreams[0].health_check", "{ active: true, interval: 10ms }")], "upstreams[0].health_check.interval: \"10ms\" is too short"),
    ("bad probe header", &[("upstreams[0].health_check", "{ active: true, headers: { \"bad name\": x } }")], "upstreams[0].health_check.headers.bad name: is not a valid header name and value"),
    ("keepalive too long", &[("upstreams[0].keepalive_timeout", "2h")], "upstreams[0].keepalive_timeout: is longer than an hour"),
];

#[test]
fn each_rule_reports_its_path_and_fix() {
    let mut failures = Vec::new();
    for (name, edits, expected) in CASES {
        let mut doc = base();
        for (path, value) in *edits {
            set(&mut doc, path, value);
        }
        let problems = problems_of(&doc);
        if !problems.iter().any(|p| p.contains(expected)) {
            failures.push(format!(
                "{name}: expected {expected:?}\n   got {problems:#?}"
            ));
        }
        if problems.iter().any(|p| !p.contains("(fix: ")) {
            failures.push(format!("{name}: a problem without a fix: {problems:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut doc = base();
    set(&mut doc, "upstreams[0].nodes[1].weight", "150");
    set(&mut doc, "upstreams[0].retries", "0");
    set(&mut doc, "upstreams[1].nodes[0].port", "0");
    set(&mut doc, "services[0].apis[0].path", "nope");
    let problems = problems_of(&doc);
    assert_eq!(problems.len(), 4, "{problems:#?}");
}

#[test]
fn unknown_keys_are_refused_with_their_path() {
    let mut doc = base();
    set(&mut doc, "upstreams[0].nodes[0].wieght", "3");
    let problems = problems_of(&doc);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].contains("upstreams[0].nodes[0]: unknown field `wieght`"),
        "{problems:?}"
    );
}

#[test]
fn relative_ca_file_is_resolved_against_the_config_folder() {
    let mut doc = base();
    set(&mut doc, "upstreams[1].tls", "{ ca_file: certs/ca.pem }");
    let cfg = parse(
        &serde_yaml::to_string(&doc).unwrap(),
        "t",
        Path::new("/etc/gatehouse"),
    )
    .unwrap();
    let tls = cfg.upstreams[1].tls.as_ref().unwrap();
    assert_eq!(
        tls.ca_file.as_deref(),
        Some(Path::new("/etc/gatehouse/certs/ca.pem"))
    );
}

#[test]
fn sni_falls_back_to_host_header_then_node_host() {
    let mut doc = base();
    set(&mut doc, "upstreams[1].tls", "{ verify: true }");
    let cfg = parse(&serde_yaml::to_string(&doc).unwrap(), "t", Path::new("/")).unwrap();
    let data = &cfg.upstreams[1];
    assert_eq!(data.sni_for(&data.nodes[1]), "data-2.internal");
    set(&mut doc, "upstreams[1].host_header", "data.example:8443");
    let cfg = parse(&serde_yaml::to_string(&doc).unwrap(), "t", Path::new("/")).unwrap();
    assert_eq!(
        cfg.upstreams[1].sni_for(&cfg.upstreams[1].nodes[0]),
        "data.example"
    );
}

#[test]
fn plugin_settings_are_validated_and_resolved() {
    let mut doc = base();
    set(&mut doc, "services[0].apis[0].plugins", "[{ name: host-rewrite, config: { host: a.internal } }, { path: plugins/geo.wasm, on_error: fail_open }]");
    set(
        &mut doc,
        "instance.plugins",
        "{ memory_limit: 32MiB, time_limit: 5ms, reuse_instances: false }",
    );
    let cfg = parse(
        &serde_yaml::to_string(&doc).unwrap(),
        "t",
        Path::new("/etc/gatehouse"),
    )
    .unwrap();
    let plugins = &cfg.services[0].apis[0].plugins;
    assert_eq!(
        plugins[0].source,
        gatehouse_config::PluginSource::Standard("host-rewrite".into())
    );
    assert_eq!(plugins[0].config, r#"{"host":"a.internal"}"#);
    assert_eq!(
        plugins[1].source,
        gatehouse_config::PluginSource::File("/etc/gatehouse/plugins/geo.wasm".into())
    );
    assert_eq!(plugins[1].config, "{}");
    assert_eq!(plugins[1].on_error, gatehouse_config::OnError::FailOpen);
    let limits = cfg.instance.plugin_limits;
    assert_eq!(
        (
            limits.memory,
            limits.time.as_millis(),
            limits.reuse_instances
        ),
        (32 << 20, 5, false)
    );
    // bodies: 64 KiB per use unless it says otherwise, within 1 MiB; no grants unless given
    assert_eq!((limits.body, limits.max_body), (64 << 10, 1 << 20));
    assert_eq!(plugins[0].body, 64 << 10);
    assert_eq!(plugins[0].grants, None);
}

#[test]
fn grants_and_body_limits_are_read_per_plugin_use() {
    let mut doc = base();
    set(
        &mut doc,
        "services[0].apis[0].plugins",
        r#"[{ path: plugins/tenant.wasm, body_limit: 256KiB,
              grants: { hooks: [on-request, on-response-body], response_body: true,
                        request_headers: { read: [authorization, "x-tenant-*"], write: ["*"] } } }]"#,
    );
    set(&mut doc, "instance.plugins", "{ body_limit: 8KiB }");
    let cfg = parse(
        &serde_yaml::to_string(&doc).unwrap(),
        "t",
        Path::new("/etc/gatehouse"),
    )
    .unwrap();
    let plugin = &cfg.services[0].apis[0].plugins[0];
    assert_eq!(plugin.body, 256 << 10);
    let grants = plugin.grants.as_ref().unwrap();
    assert_eq!(
        grants.hooks.as_deref(),
        Some(&["on-request".to_owned(), "on-response-body".to_owned()][..])
    );
    assert_eq!(grants.request_headers.read, ["authorization", "x-tenant-*"]);
    assert_eq!(grants.request_headers.write, ["*"]);
    assert!(grants.response_headers.read.is_empty());
    assert!(grants.response_body && !grants.request_body);
    assert_eq!(cfg.instance.plugin_limits.body, 8 << 10);
}

#[test]
fn a_written_back_config_reads_the_same() {
    let raw = gatehouse_config::parse_raw(VALID, "t").unwrap();
    let again = gatehouse_config::parse_raw(&gatehouse_config::to_yaml(&raw), "t").unwrap();
    assert_eq!(raw, again);
}

#[test]
fn a_grpc_api_needs_http2_to_its_nodes_post_and_no_websocket() {
    // the valid form: an HTTP/2 upstream, POST accepted
    let mut doc = base();
    set(&mut doc, "upstreams[0].http2", "true");
    set(&mut doc, "services[0].apis[1].grpc", "true");
    set(&mut doc, "services[0].apis[1].methods", "[POST]");
    assert_eq!(problems_of(&doc), Vec::<String>::new());
    let cfg = parse(&serde_yaml::to_string(&doc).unwrap(), "t", Path::new("/")).unwrap();
    assert!(cfg.services[0].apis[1].grpc && !cfg.services[0].apis[0].grpc);

    // every mistake at once, each at its path
    let mut doc = base();
    set(&mut doc, "services[0].apis[1].grpc", "true");
    set(&mut doc, "services[0].apis[1].websocket", "true");
    set(&mut doc, "services[0].apis[2].grpc", "true");
    let problems = problems_of(&doc);
    let has = |path: &str, words: &str| {
        problems
            .iter()
            .any(|p| p.contains(&format!("{path}: ")) && p.contains(words))
    };
    assert!(
        has(
            "services[0].apis[1].grpc",
            "upstream \"user_service\" speaks HTTP/1.1"
        ) && problems
            .iter()
            .any(|p| p.contains("set http2: true on upstream \"user_service\"")),
        "{problems:#?}"
    );
    assert!(
        has("services[0].apis[1].methods", "does not accept POST"),
        "{problems:#?}"
    );
    assert!(
        has(
            "services[0].apis[1].grpc",
            "gRPC calls or WebSocket upgrades, not both"
        ),
        "{problems:#?}"
    );
    assert!(
        has(
            "services[0].apis[2].grpc",
            "a fixed response is not a gRPC answer"
        ),
        "{problems:#?}"
    );
    assert_eq!(problems.len(), 4, "{problems:#?}");
}
