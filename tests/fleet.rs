//! Fleets, end to end: many `gatehouse` instances serving one shared configuration kept in a real
//! etcd (v3). Each test starts its own etcd (tests/support/etcd.rs), seeds it with
//! `gatehouse config push`, and drives the instances through their proxy listeners, admin APIs
//! and metrics endpoints. Every wait is a bounded poll; no sleep is an assertion.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::etcd::*;
use support::*;

/// How long a change made through one instance may take to be served by another.
const FOLLOW: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The key layout of the shared configuration in etcd, as documented by the fleet contract.
// Only `write_revision` and its users (and the plugin check) look at keys directly; if the
// layout changes, adjust these functions and nothing else.
//
//   <prefix>/v1/config/commit                      JSON {"schema":1,"set":"<set id>",...}; its
//                                                  mod_revision is the configuration revision,
//                                                  and instances apply a change only when it changes
//   <prefix>/v1/config/sets/<set>/upstreams/<name> one upstream (admin API JSON)
//   <prefix>/v1/config/sets/<set>/services/<name>  one service without its apis
//   <prefix>/v1/config/sets/<set>/apis/<svc>/<api> one API
//   <prefix>/v1/config/sets/<set>/vpcs/<id>, .../connections
// ---------------------------------------------------------------------------------------------

const DEFAULT_PREFIX: &str = "/gatehouse";

fn commit_key(prefix: &str) -> String {
    format!("{prefix}/v1/config/commit")
}

fn set_upstream_key(prefix: &str, set: &str, upstream: &str) -> String {
    format!("{prefix}/v1/config/sets/{set}/upstreams/{upstream}")
}

fn set_api_key(prefix: &str, set: &str, service: &str, api: &str) -> String {
    format!("{prefix}/v1/config/sets/{set}/apis/{service}/{api}")
}

/// Writes a revision as another tool would, in one transaction: the pairs `puts` returns (given
/// the prefix and the current set's id) and the commit key, rewritten as the same JSON with
/// `"by": "another-tool"` and whatever `edit` changes. Returns the new revision (the commit
/// key's mod_revision).
fn write_revision(
    etcd: &Etcd,
    prefix: &str,
    puts: impl FnOnce(&str, &str) -> Vec<(String, String)>,
    edit: impl FnOnce(&mut Value),
) -> u64 {
    let commit = etcd
        .get(&commit_key(prefix))
        .unwrap_or_else(|| panic!("no commit key {} in etcd", commit_key(prefix)));
    let mut commit: Value = serde_json::from_str(&commit)
        .unwrap_or_else(|e| panic!("the commit key is not JSON ({e}): {commit}"));
    let set = commit["set"]
        .as_str()
        .unwrap_or_else(|| panic!("no set id in the commit {commit}"))
        .to_owned();
    commit["by"] = json!("another-tool");
    edit(&mut commit);
    let mut pairs = puts(prefix, &set);
    pairs.push((commit_key(prefix), commit.to_string()));
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    etcd.txn_put(&pairs);
    etcd.mod_revision(&commit_key(prefix)).unwrap() as u64
}

/// Writes, as another tool would, a revision that fails validation: an upstream `broken` whose
/// node weighs 150 (out of 0..=100) is put into the current set, and the commit key is
/// rewritten in the same transaction (see [`write_revision`]).
fn write_invalid_revision(etcd: &Etcd, prefix: &str, node_port: u16) -> u64 {
    let broken = json!({
        "name": "broken",
        "vpc": "vpc-main",
        "protocol": "http",
        "nodes": [{ "host": "127.0.0.1", "port": node_port, "weight": 150 }],
    });
    write_revision(
        etcd,
        prefix,
        |prefix, set| vec![(set_upstream_key(prefix, set, "broken"), broken.to_string())],
        |_| {},
    )
}

// ---------------------------------------------------------------------------------------------
// Shared configurations and the CLI
// ---------------------------------------------------------------------------------------------

/// The instance section `config push` validates a shared file against (never served).
const PUSH_INSTANCE: &str = r#"instance:
  id: pusher
  type: dedicated
  vpc: vpc-main
  listen: ["127.0.0.1:1"]
"#;

fn node_lines(nodes: &[&EchoServer], weight: u32) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "      - {{ host: 127.0.0.1, port: {}, weight: {weight} }}\n",
                n.addr().port()
            )
        })
        .collect()
}

/// The shared sections: VPC `vpc-main` (127.0.0.0/8), upstream `users` on `users_nodes`
/// (`more_upstreams` appended to the list), service `shop` with `GET /users/{id}` (`more_apis`
/// appended to its APIs). Services come last, so more services may be appended.
fn shared_sections(users_nodes: &[&EchoServer], more_upstreams: &str, more_apis: &str) -> String {
    format!(
        r#"vpcs:
  - id: vpc-main
    cidrs: ["127.0.0.0/8"]
upstreams:
  - name: users
    vpc: vpc-main
    protocol: http
    nodes:
{nodes}{more_upstreams}services:
  - name: shop
    apis:
      - name: get_user
        path: /users/{{id}}
        methods: [GET]
        backend: {{ upstream: users }}
{more_apis}"#,
        nodes = node_lines(users_nodes, 1)
    )
}

/// A complete shared file (with its own instance section for validation).
fn shared_yaml(users_nodes: &[&EchoServer], more_upstreams: &str, more_apis: &str) -> String {
    format!(
        "{PUSH_INSTANCE}{}",
        shared_sections(users_nodes, more_upstreams, more_apis)
    )
}

/// One fixed-response API line for `more_apis`.
fn fixed_api_line(name: &str, path: &str, body: &str) -> String {
    format!(
        "      - {{ name: {name}, path: {path}, methods: [GET], backend: {{ response: {{ status: 200, body: {body} }} }} }}\n"
    )
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn gatehouse(args: &[&str], within: Duration) -> (bool, i32, String) {
    let (status, out, err) = run_cli_within(args, within);
    (
        status.success(),
        status.code().unwrap_or(-1),
        format!("{out}{err}"),
    )
}

/// Like [`gatehouse`], with environment variables set (`Some`) or removed (`None`).
fn gatehouse_env(args: &[&str], env: &[(&str, Option<&str>)]) -> (bool, i32, String) {
    let (status, out, err) = run_cli_env(args, env, Duration::from_secs(60));
    (
        status.success(),
        status.code().unwrap_or(-1),
        format!("{out}{err}"),
    )
}

/// `gatehouse config push -c file --etcd e1,e2 [extra...]`; asserts success; its output.
fn push(file: &Path, endpoints: &[String], extra: &[&str]) -> String {
    let joined = endpoints.join(",");
    let mut args = vec![
        "config",
        "push",
        "-c",
        file.to_str().unwrap(),
        "--etcd",
        &joined,
    ];
    args.extend_from_slice(extra);
    let (ok, code, output) = gatehouse(&args, Duration::from_secs(120));
    assert!(ok, "config push exited {code}:\n{output}");
    output
}

/// `gatehouse config pull [args...]` to stdout; asserts success.
fn pull(args: &[&str]) -> String {
    let mut all = vec!["config", "pull"];
    all.extend_from_slice(args);
    let (status, out, err) = run_cli_within(&all, Duration::from_secs(60));
    assert!(status.success(), "config pull exited {status}:\n{out}{err}");
    out
}

/// A pulled shared file as JSON (parsed with the gateway's own schema; an instance section is
/// added when the file has none).
fn parse_pulled(yaml: &str) -> Value {
    let has_instance = yaml.lines().any(|l| l.starts_with("instance:"));
    let text = if has_instance {
        yaml.to_owned()
    } else {
        format!("{PUSH_INSTANCE}{yaml}")
    };
    let raw = gatehouse_config::parse_raw(&text, "pulled")
        .unwrap_or_else(|e| panic!("the pulled configuration does not parse ({e}):\n{yaml}"));
    let mut value = serde_json::to_value(&raw).unwrap();
    value.as_object_mut().unwrap().remove("instance");
    value
}

/// The `name`s of a list, sorted (the shared configuration does not keep list order).
fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn api_names(config: &Value, service: &str) -> Vec<String> {
    config["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == service))
        .map(|s| names(&s["apis"]))
        .unwrap_or_default()
}

fn upstream_json(name: &str, nodes: &[&EchoServer]) -> Value {
    json!({
        "name": name,
        "vpc": "vpc-main",
        "protocol": "http",
        "nodes": nodes.iter().map(|n| json!({ "host": "127.0.0.1", "port": n.addr().port(), "weight": 1 })).collect::<Vec<_>>(),
    })
}

fn fixed_api(name: &str, path: &str, body: &str) -> Value {
    json!({ "name": name, "path": path, "methods": ["GET"],
        "backend": { "response": { "status": 200, "body": body } } })
}

/// Waits until `gw` answers `GET path` with `status` (and `body`, when given).
fn wait_served(gw: &FleetGateway, path: &str, status: u16, body: Option<&str>) {
    eventually(
        &format!("{} answers GET {path} with {status} {body:?}", gw.id),
        FOLLOW,
        || {
            let r = gw.get(path);
            (r.status == status && body.is_none_or(|b| r.body == b)).then_some(())
        },
    );
}

/// Waits until `GET path` through `gw` reaches echo node `node`.
fn wait_node(gw: &FleetGateway, path: &str, node: &str) {
    eventually(
        &format!("{} sends GET {path} to node {node}", gw.id),
        FOLLOW,
        || {
            let r = gw.get(path);
            (r.status == 200 && r.node() == node).then_some(())
        },
    );
}

/// An admin write retried (bounded) while the instance answers 5xx (reconnecting to etcd, a
/// cluster electing a leader). Accepts one of `ok`; a 409 after a 5xx counts as done (the
/// earlier attempt may have been committed before its answer was lost).
fn write_until_accepted(
    gw: &FleetGateway,
    method: &str,
    path: &str,
    body: &Value,
    ok: &[u16],
    within: Duration,
) -> Reply {
    let deadline = Instant::now() + within;
    let mut seen_5xx = Vec::new();
    loop {
        let r = gw.call(method, path, Some(body.clone()));
        if ok.contains(&r.status) || (r.status == 409 && !seen_5xx.is_empty()) {
            return r;
        }
        assert!(
            r.status >= 500,
            "{} {method} {path}: unexpected {}: {}",
            gw.id,
            r.status,
            r.body
        );
        seen_5xx.push(format!("{} {}", r.status, r.body));
        assert!(
            Instant::now() < deadline,
            "{} {method} {path} not accepted within {within:?}: {} answers 5xx, the last: {:?}\nlog:\n{}",
            gw.id,
            seen_5xx.len(),
            &seen_5xx[seen_5xx.len().saturating_sub(2)..],
            tail_lines(&gw.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One etcd with the standard shared configuration pushed (users on `nodes`).
fn etcd_with_shared(nodes: &[&EchoServer], more_apis: &str) -> Etcd {
    let etcd = Etcd::start();
    let dir = TempDir::new();
    let file = write_file(&dir, "shared.yaml", &shared_yaml(nodes, "", more_apis));
    push(&file, &[etcd.endpoint()], &[]);
    etcd
}

/// Raises its flag when dropped, so load threads stop even when the test panics.
struct RaiseOnDrop(Arc<AtomicBool>);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The `status.source.refused` problems of `status`, joined by new lines.
fn refused_problems(status: &Value) -> String {
    status["source"]["refused"]["problems"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|p| p.as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Waits until `gw` refuses revision `bad`; its `/status` then.
fn wait_refused(gw: &FleetGateway, bad: u64) -> Value {
    eventually(&format!("{} refuses revision {bad}", gw.id), FOLLOW, || {
        let s = gw.status();
        (s["source"]["refused"]["revision"].as_u64() == Some(bad)).then_some(s)
    })
}

/// Pushes `shared` (shared sections only) through `local`'s `instance.etcd`; asserts success.
fn push_local(shared: &Path, local: &Path, env: &[(&str, Option<&str>)]) -> String {
    let (ok, code, out) = gatehouse_env(
        &[
            "config",
            "push",
            "-c",
            shared.to_str().unwrap(),
            "--local",
            local.to_str().unwrap(),
        ],
        env,
    );
    assert!(ok, "config push --local exited {code}:\n{out}");
    out
}

/// etcd's `root` password in the tests with authentication.
const ETCD_ROOT_PASSWORD: &str = "root-pw-0d5e8a61c3";
/// The password of etcd user `gatehouse`, whose role covers `/gatehouse/`.
const ETCD_PASSWORD: &str = "gh-etcd-pw-7c41e9a2d3";
/// `instance.etcd` lines that log in as `gatehouse`, the password from `GH_ETCD_PASSWORD`.
const ETCD_LOGIN_BY_ENV: &str = "    username: gatehouse\n    password: ${GH_ETCD_PASSWORD}\n";

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// The support itself: one member (put/get/txn/compaction/stop/restart) and a cluster.
#[test]
fn etcd_support() {
    let mut etcd = Etcd::start();
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
    etcd.put("/t/a", "{\"x\": \"y z\"}");
    assert_eq!(etcd.get("/t/a").as_deref(), Some("{\"x\": \"y z\"}"));
    assert_eq!(etcd.get("/t/missing"), None);
    let before = etcd.revision();
    etcd.txn_put(&[
        ("/t/b", "{\"q\":\"it's \\\"quoted\\\"\"}"),
        ("/t/c", "two words"),
    ]);
    assert_eq!(etcd.revision(), before + 1, "one transaction, one revision");
    assert_eq!(
        etcd.get("/t/b").as_deref(),
        Some("{\"q\":\"it's \\\"quoted\\\"\"}")
    );
    assert_eq!(etcd.mod_revision("/t/c"), Some(before + 1));
    assert_eq!(etcd.get_prefix("/t/").len(), 3);
    etcd.compact_to_latest();
    etcd.stop();
    assert!(!etcd.etcdctl(&["get", "/t/a"]).status.success(), "stopped");
    etcd.restart();
    assert_eq!(etcd.get("/t/c").as_deref(), Some("two words"), "data kept");
    drop(etcd);

    let mut cluster = EtcdCluster::start(3);
    assert_eq!(cluster.endpoints().len(), 3);
    cluster.put("/k", "v1");
    let leader = eventually("the cluster has a leader", Duration::from_secs(10), || {
        cluster.leader()
    });
    cluster.kill(leader);
    cluster.wait_quorum();
    eventually(
        "a write after losing the leader",
        Duration::from_secs(20),
        || {
            cluster
                .etcdctl(&["put", "/k", "v2"])
                .status
                .success()
                .then_some(())
        },
    );
    assert_eq!(cluster.get("/k").as_deref(), Some("v2"));
    let new_leader = eventually("a new leader", Duration::from_secs(10), || cluster.leader());
    assert_ne!(new_leader, leader);
}

/// Test 1: three instances serve one pushed configuration; a change through any one is served
/// by all; they report the same revision, and `/fleet` lists the three.
#[test]
fn three_instances_serve_one_shared_configuration_and_follow_changes() {
    let (a, b) = (echo("a"), echo("b"));
    let etcd = etcd_with_shared(&[&a], "");
    let eps = [etcd.endpoint()];
    let gws = [
        FleetGateway::start("gw-a", &eps),
        FleetGateway::start("gw-b", &eps),
        FleetGateway::start("gw-c", &eps),
    ];
    for gw in &gws {
        let r = gw.get("/users/1");
        assert_eq!(
            (r.status, r.node().as_str()),
            (200, "a"),
            "{}: {}",
            gw.id,
            r.body
        );
        let status = gw.status();
        assert_eq!(status["source"]["kind"], "etcd", "{}: {status}", gw.id);
        assert_eq!(status["source"]["up"], true, "{}: {status}", gw.id);
        assert_eq!(
            gw.metric("gatehouse_config_source_up"),
            Some(1.0),
            "{}",
            gw.id
        );
    }

    // a new API through A is served by all three
    let r = gws[0].call(
        "POST",
        "/services/shop/apis",
        Some(fixed_api("hello", "/hello", "hello from the fleet")),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    for gw in &gws {
        wait_served(gw, "/hello", 200, Some("hello from the fleet"));
    }

    // a node change through B is served by A and C
    let r = gws[1].call(
        "PUT",
        "/upstreams/users",
        Some(upstream_json("users", &[&b])),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let last = etag_revision(&r);
    for gw in &gws {
        wait_node(gw, "/users/1", "b");
    }

    // the three serve the same revision, at least the one of the last write
    let rev = eventually("the three instances serve one revision", FOLLOW, || {
        let revs: Vec<u64> = gws.iter().map(FleetGateway::revision).collect();
        (revs.iter().all(|&r| r == revs[0] && r >= last)).then_some(revs[0])
    });
    for gw in &gws {
        let r = gw.call("GET", "/status", None);
        assert_eq!(
            etag_revision(&r),
            rev,
            "{}: the ETag is the revision",
            gw.id
        );
        assert_eq!(
            gw.metric("gatehouse_config_source_revision"),
            Some(rev as f64),
            "{}",
            gw.id
        );
    }

    // /fleet lists every live instance with the revision it serves
    eventually(
        "/fleet lists gw-a, gw-b and gw-c at the revision",
        FOLLOW,
        || {
            let r = gws[0].call("GET", "/fleet", None);
            assert_eq!(r.status, 200, "{}", r.body);
            let fleet = r.json();
            let mut listed: Vec<(String, u64)> = fleet["instances"]
                .as_array()
                .unwrap_or_else(|| panic!("no instances list: {fleet}"))
                .iter()
                .map(|i| {
                    (
                        i["id"].as_str().unwrap_or_default().to_owned(),
                        i["revision"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            listed.sort();
            let want: Vec<(String, u64)> = ["gw-a", "gw-b", "gw-c"]
                .iter()
                .map(|id| (id.to_string(), rev))
                .collect();
            (listed == want).then_some(())
        },
    );

    // after a compaction of etcd's history, the instances still follow
    etcd.compact_to_latest();
    let r = gws[2].call("DELETE", "/services/shop/apis/hello", None);
    assert_eq!(r.status, 204, "{}", r.body);
    for gw in &gws {
        wait_served(gw, "/hello", 404, None);
    }
}

/// Test 2: writes racing through two instances: with the same If-Match exactly one wins (the
/// other gets 412 `stale_generation`); two creations of one name: one 201, one 409.
#[test]
fn concurrent_conflicting_writes_through_two_instances_have_one_winner() {
    let (a, b) = (echo("a"), echo("b"));
    let etcd = etcd_with_shared(&[&a], "");
    let eps = [etcd.endpoint()];
    let gws = [
        FleetGateway::start("gw-a", &eps),
        FleetGateway::start("gw-b", &eps),
    ];
    let nodes = [&a, &b];

    for round in 0..3 {
        // writer i moves `users` to node a or b with a weight no earlier round used, so each
        // body is a real change whoever won before
        let body = |i: usize| {
            let mut u = upstream_json("users", &[nodes[i]]);
            u["nodes"][0]["weight"] = json!(10 + round * 2 + i);
            u
        };
        // both instances serve the revision the writers read
        let (rev, tag) = eventually("both instances serve the revision read", FOLLOW, || {
            let read = gws[0].call("GET", "/upstreams/users", None);
            assert_eq!(read.status, 200, "{}", read.body);
            let rev = etag_revision(&read);
            let tag = read.header("etag").unwrap().to_owned();
            gws.iter()
                .all(|g| g.revision() == rev)
                .then_some((rev, tag))
        });
        let barrier = Barrier::new(2);
        let answers: Vec<Reply> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|i| {
                    let (gw, body, tag, barrier) = (&gws[i], body(i), &tag, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        gw.call_with("PUT", "/upstreams/users", Some(body), &[("if-match", tag)])
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 412],
            "round {round} (If-Match {rev}): {answers:?}"
        );
        let loser = answers.iter().position(|r| r.status == 412).unwrap();
        assert_eq!(
            answers[loser].json()["error"],
            "stale_generation",
            "{:?}",
            answers[loser]
        );
        // the winner's upstream is what both instances serve
        let winner = 1 - loser;
        let weight = json!(10 + round * 2 + winner);
        for gw in &gws {
            eventually(
                &format!("{} serves the winner's upstream", gw.id),
                FOLLOW,
                || {
                    let u = gw.call("GET", "/upstreams/users", None).json();
                    (u["nodes"][0]["weight"] == weight
                        && u["nodes"][0]["port"] == nodes[winner].addr().port())
                    .then_some(())
                },
            );
            wait_node(gw, "/users/1", if winner == 0 { "a" } else { "b" });
        }
    }

    for round in 0..3 {
        let name = format!("racer_{round}");
        let barrier = Barrier::new(2);
        let answers: Vec<Reply> = std::thread::scope(|s| {
            let handles: Vec<_> = gws
                .iter()
                .map(|gw| {
                    let (barrier, body) = (&barrier, upstream_json(&name, &[&a]));
                    s.spawn(move || {
                        barrier.wait();
                        gw.call("POST", "/upstreams", Some(body))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
        statuses.sort();
        assert_eq!(statuses, [201, 409], "round {round}: {answers:?}");
        for gw in &gws {
            eventually(&format!("{} knows {name}", gw.id), FOLLOW, || {
                (gw.call("GET", &format!("/upstreams/{name}"), None).status == 200).then_some(())
            });
        }
    }
}

/// Test 3: an upstream bound a moment ago through A cannot be deleted through B.
#[test]
fn a_bound_upstream_cannot_be_deleted_through_another_instance() {
    let a = echo("a");
    let etcd = etcd_with_shared(&[&a], "");
    let eps = [etcd.endpoint()];
    let (ga, gb) = (
        FleetGateway::start("gw-a", &eps),
        FleetGateway::start("gw-b", &eps),
    );
    for round in 0..3 {
        let upstream = format!("victim_{round}");
        let r = ga.call("POST", "/upstreams", Some(upstream_json(&upstream, &[&a])));
        assert_eq!(r.status, 201, "{}", r.body);
        eventually(&format!("gw-b knows {upstream}"), FOLLOW, || {
            (gb.call("GET", &format!("/upstreams/{upstream}"), None)
                .status
                == 200)
                .then_some(())
        });
        let api = json!({ "name": format!("uses_{upstream}"), "path": format!("/victim{round}"),
            "methods": ["GET"], "backend": { "upstream": upstream } });
        let r = ga.call("POST", "/services/shop/apis", Some(api));
        assert_eq!(r.status, 201, "{}", r.body);
        // at once, through the other instance
        let r = gb.call("DELETE", &format!("/upstreams/{upstream}"), None);
        assert_eq!(r.status, 409, "round {round}: {}", r.body);
        assert_eq!(r.json()["error"], "upstream_in_use", "{}", r.body);
        // nothing was deleted: the API serves through both instances
        wait_node(&gb, &format!("/victim{round}"), "a");
        assert_eq!(ga.get(&format!("/victim{round}")).status, 200);
        assert_eq!(
            ga.call("GET", &format!("/upstreams/{upstream}"), None)
                .status,
            200
        );
    }
    // an upstream nothing binds is deleted through either
    let r = ga.call("POST", "/upstreams", Some(upstream_json("unbound", &[&a])));
    assert_eq!(r.status, 201, "{}", r.body);
    eventually("gw-b knows unbound", FOLLOW, || {
        (gb.call("GET", "/upstreams/unbound", None).status == 200).then_some(())
    });
    let r = gb.call("DELETE", "/upstreams/unbound", None);
    assert_eq!(r.status, 204, "{}", r.body);
    eventually("gw-a forgets unbound", FOLLOW, || {
        (ga.call("GET", "/upstreams/unbound", None).status == 404).then_some(())
    });
    // a name no key can hold is a 400 with its problem, and the instance serves on
    for bad in ["a/b", ""] {
        let r = ga.call("POST", "/upstreams", Some(upstream_json(bad, &[&a])));
        assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
        assert_eq!(r.json()["error"], "invalid_config", "{}", r.body);
    }
    assert_eq!(ga.get("/victim0").status, 200);
}

/// Test 4: etcd stops while clients load A and B: no proxied request fails, writes get 503
/// `config_source_unavailable`, `source.up` is false and the metric 0; when etcd is back a
/// write through B succeeds and A catches up.
#[test]
fn etcd_down_under_load_keeps_serving_refuses_writes_and_catches_up() {
    let (a, b) = (echo("a"), echo("b"));
    let mut etcd = etcd_with_shared(&[&a, &b], "");
    let eps = [etcd.endpoint()];
    let (ga, gb) = (
        FleetGateway::start("gw-a", &eps),
        FleetGateway::start("gw-b", &eps),
    );
    assert_eq!(ga.metric("gatehouse_config_source_up"), Some(1.0));

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = RaiseOnDrop(stop.clone());
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let load: Vec<_> = (0..4)
        .map(|i| {
            let url = if i % 2 == 0 {
                ga.gw.url("/users/1")
            } else {
                gb.gw.url("/users/1")
            };
            let (stop, ok, failed, failures) =
                (stop.clone(), ok.clone(), failed.clone(), failures.clone());
            std::thread::spawn(move || {
                // bounded even if the test body panics before raising `stop`
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(90) {
                    match try_get(&url) {
                        Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        Ok((status, body)) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{url}: {status} {body}"));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            failures.lock().unwrap().push(format!("{url}: {e}"));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    eventually("the load is running", Duration::from_secs(10), || {
        (ok.load(Ordering::Relaxed) >= 50).then_some(())
    });

    etcd.stop();
    let served_during_outage_from = ok.load(Ordering::Relaxed);
    for gw in [&ga, &gb] {
        eventually(
            &format!("{} reports etcd down", gw.id),
            Duration::from_secs(20),
            || (gw.status()["source"]["up"] == false).then_some(()),
        );
    }
    let status = ga.status();
    assert!(
        status["source"]["last_error"].is_string(),
        "the last error is shown: {status}"
    );
    assert_eq!(ga.metric("gatehouse_config_source_up"), Some(0.0));
    assert_eq!(gb.metric("gatehouse_config_source_up"), Some(0.0));
    let r = ga.call(
        "POST",
        "/upstreams",
        Some(upstream_json("during_outage", &[&a])),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "config_source_unavailable", "{}", r.body);
    let r = gb.call(
        "POST",
        "/services/shop/apis",
        Some(fixed_api("during", "/during", "x")),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "config_source_unavailable", "{}", r.body);
    // still serving, while etcd is down
    eventually(
        "requests keep being served while etcd is down",
        Duration::from_secs(10),
        || (ok.load(Ordering::Relaxed) >= served_during_outage_from + 50).then_some(()),
    );
    assert_eq!(
        ga.get("/during").status,
        404,
        "the refused write was not applied"
    );

    etcd.restart();
    let r = write_until_accepted(
        &gb,
        "POST",
        "/services/shop/apis",
        &fixed_api("after_outage", "/after", "back again"),
        &[201],
        Duration::from_secs(30),
    );
    assert!(r.status == 201 || r.status == 409, "{}", r.body);
    wait_served(&ga, "/after", 200, Some("back again"));
    for gw in [&ga, &gb] {
        eventually(
            &format!("{} reports etcd up again", gw.id),
            Duration::from_secs(20),
            || {
                (gw.status()["source"]["up"] == true
                    && gw.metric("gatehouse_config_source_up") == Some(1.0))
                .then_some(())
            },
        );
    }

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "proxied requests failed: {:?}",
        failures.lock().unwrap().iter().take(10).collect::<Vec<_>>()
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
}

/// Test 5: an instance restarted while etcd is down serves its cached last good configuration,
/// kept owner-only.
#[test]
fn an_instance_restarted_while_etcd_is_down_serves_from_its_cache() {
    use std::os::unix::fs::PermissionsExt;
    let a = echo("a");
    let mut etcd = etcd_with_shared(&[&a], "");
    let ga = FleetGateway::start("gw-a", &[etcd.endpoint()]);
    assert_eq!(ga.get("/users/1").status, 200);
    // a change made after the start must be in the cache too
    let r = ga.call(
        "POST",
        "/services/shop/apis",
        Some(fixed_api("cached_api", "/cached", "from the cache")),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    wait_served(&ga, "/cached", 200, Some("from the cache"));
    let cache = ga.cache_file();
    eventually("the cache holds the latest change", FOLLOW, || {
        std::fs::read_to_string(&cache)
            .ok()
            .filter(|c| c.contains("cached_api"))
            .map(|_| ())
    });
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "cache mode {mode:o}");

    etcd.stop();
    let ga = ga.restart();
    let status = ga.status();
    assert_eq!(status["source"]["from_cache"], true, "{status}");
    assert_eq!(status["source"]["up"], false, "{status}");
    let r = ga.get("/users/1");
    assert_eq!((r.status, r.node().as_str()), (200, "a"), "{}", r.body);
    let r = ga.get("/cached");
    assert_eq!((r.status, r.body.as_str()), (200, "from the cache"));
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "cache mode {mode:o} after the restart");

    // etcd back: the instance reconnects
    etcd.restart();
    eventually(
        "the instance reconnects to etcd",
        Duration::from_secs(20),
        || (ga.status()["source"]["up"] == true).then_some(()),
    );
    assert_eq!(ga.get("/cached").status, 200);
}

/// Test 6: two instances on a three-member cluster keep accepting and following writes after
/// the leader is killed.
#[test]
fn a_three_member_cluster_survives_losing_its_leader() {
    let (a, b) = (echo("a"), echo("b"));
    let mut cluster = EtcdCluster::start(3);
    let leader = eventually("the cluster has a leader", Duration::from_secs(10), || {
        cluster.leader()
    });
    // the leader's endpoint first: the instances most likely talk to the member that dies
    let all = cluster.endpoints();
    let mut eps = vec![all[leader].clone()];
    eps.extend(all.iter().filter(|e| **e != all[leader]).cloned());
    let dir = TempDir::new();
    let file = write_file(&dir, "shared.yaml", &shared_yaml(&[&a], "", ""));
    push(&file, &eps, &[]);
    let (ga, gb) = (
        FleetGateway::start("gw-a", &eps),
        FleetGateway::start("gw-b", &eps),
    );
    assert_eq!(ga.get("/users/1").status, 200);
    assert_eq!(gb.get("/users/1").status, 200);

    let leader = cluster.leader().unwrap_or(leader);
    cluster.kill(leader);
    // the cluster itself recovers (so a failure below is the instances')
    cluster.wait_quorum();
    eventually(
        "the two remaining members accept a write",
        Duration::from_secs(20),
        || {
            cluster
                .etcdctl(&["put", "/probe/after-kill", "ok"])
                .status
                .success()
                .then_some(())
        },
    );
    let r = write_until_accepted(
        &ga,
        "POST",
        "/services/shop/apis",
        &fixed_api("after_failover", "/failover", "still here"),
        &[201],
        Duration::from_secs(30),
    );
    assert!(r.status == 201 || r.status == 409, "{}", r.body);
    wait_served(&gb, "/failover", 200, Some("still here"));
    wait_served(&ga, "/failover", 200, Some("still here"));
    // and the other way round
    write_until_accepted(
        &gb,
        "PUT",
        "/upstreams/users",
        &upstream_json("users", &[&b]),
        &[200],
        Duration::from_secs(30),
    );
    wait_node(&ga, "/users/1", "b");
    for gw in [&ga, &gb] {
        assert_eq!(gw.status()["source"]["up"], true, "{}", gw.id);
    }
}

/// Test 7: a revision that fails validation, written by another tool, is refused by every
/// instance (they keep serving, `/status` names it, the counter grows); a valid change through
/// the admin API repairs it.
#[test]
fn an_invalid_revision_from_another_tool_is_refused_then_repaired() {
    let a = echo("a");
    let etcd = etcd_with_shared(&[&a], "");
    let eps = [etcd.endpoint()];
    let gws = [
        FleetGateway::start("gw-a", &eps),
        FleetGateway::start("gw-b", &eps),
    ];
    let good = gws[0].revision();
    eventually("both serve the same revision", FOLLOW, || {
        gws.iter().all(|g| g.revision() == good).then_some(())
    });
    for gw in &gws {
        assert!(gw.status()["source"]["refused"].is_null(), "{}", gw.id);
    }
    let refused_before: Vec<f64> = gws
        .iter()
        .map(|g| {
            g.metric("gatehouse_config_revisions_refused_total")
                .unwrap_or(0.0)
        })
        .collect();

    let bad = write_invalid_revision(&etcd, DEFAULT_PREFIX, a.addr().port());
    assert!(bad > good);
    for (gw, before) in gws.iter().zip(&refused_before) {
        let status = eventually(&format!("{} refuses revision {bad}", gw.id), FOLLOW, || {
            let s = gw.status();
            (s["source"]["refused"]["revision"].as_u64() == Some(bad)).then_some(s)
        });
        let problems = &status["source"]["refused"]["problems"];
        assert!(
            problems.as_array().is_some_and(|p| !p.is_empty()),
            "{}: the problems are listed: {status}",
            gw.id
        );
        assert_eq!(
            status["revision"].as_u64(),
            Some(good),
            "{}: {status}",
            gw.id
        );
        assert_eq!(gw.get("/users/1").status, 200, "{} keeps serving", gw.id);
        assert_eq!(
            gw.call("GET", "/upstreams/broken", None).status,
            404,
            "{}: nothing of the refused revision is served",
            gw.id
        );
        let after = gw.metric("gatehouse_config_revisions_refused_total");
        assert!(
            after.is_some_and(|v| v >= before + 1.0),
            "{}: refused counter {before} -> {after:?}",
            gw.id
        );
    }

    // a valid change through the admin API repairs it (whichever base the write starts from,
    // a valid `broken` is the result)
    let r = gws[0].call(
        "PUT",
        "/upstreams/broken",
        Some(upstream_json("broken", &[&a])),
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    for gw in &gws {
        eventually(
            &format!("{} serves the repaired configuration", gw.id),
            FOLLOW,
            || {
                let s = gw.status();
                let upstream = gw.call("GET", "/upstreams/broken", None);
                (s["source"]["refused"].is_null()
                    && s["revision"].as_u64().is_some_and(|r| r > bad)
                    && upstream.status == 200
                    && upstream.json()["nodes"][0]["weight"] == 1)
                    .then_some(())
            },
        );
        assert_eq!(gw.get("/users/1").status, 200);
    }
}

/// Test 8: `config push` (dry run, validation, `--local`) and `config pull` round trip.
#[test]
fn push_and_pull_round_trip_with_dry_run_and_validation() {
    let (a, b) = (echo("a"), echo("b"));
    let etcd = Etcd::start();
    let eps = [etcd.endpoint()];
    let prefix = "/pp";
    let dir = TempDir::new();
    let first = write_file(
        &dir,
        "first.yaml",
        &shared_yaml(&[&a], "", &fixed_api_line("goodbye", "/goodbye", "bye")),
    );

    // a dry run on an empty store prints what would be added and writes nothing
    let out = push(&first, &eps, &["--prefix", prefix, "--dry-run"]);
    for name in ["users", "get_user", "goodbye"] {
        assert!(out.contains(name), "the dry run names {name}:\n{out}");
    }
    assert!(etcd.get_prefix("/").is_empty(), "a dry run wrote nothing");

    push(&first, &eps, &["--prefix", prefix]);
    assert!(
        etcd.get(&commit_key(prefix)).is_some(),
        "a commit under {prefix}"
    );
    assert!(
        etcd.get_prefix(DEFAULT_PREFIX).is_empty(),
        "nothing under the default prefix"
    );

    let gw = FleetGateway::start_with("gw-a", &eps, &format!("    prefix: {prefix}\n"));
    assert_eq!(gw.get("/users/1").node(), "a");
    assert_eq!(gw.get("/goodbye").body, "bye");

    // pull, by --etcd/--prefix and by --local, to stdout and to a file
    let pulled = pull(&["--etcd", &eps[0], "--prefix", prefix]);
    let pulled_json = parse_pulled(&pulled);
    assert_eq!(names(&pulled_json["upstreams"]), ["users"], "{pulled}");
    assert_eq!(names(&pulled_json["services"]), ["shop"], "{pulled}");
    assert_eq!(
        api_names(&pulled_json, "shop"),
        ["get_user", "goodbye"],
        "{pulled}"
    );
    let out_file = dir.join("pulled.yaml");
    pull(&[
        "--local",
        gw.local_file().to_str().unwrap(),
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(
        parse_pulled(&std::fs::read_to_string(&out_file).unwrap()),
        pulled_json
    );

    // a second version: shared sections only, validated against the instance's local file
    let orders = format!(
        "  - name: orders\n    vpc: vpc-main\n    protocol: http\n    nodes:\n{}",
        node_lines(&[&b], 1)
    );
    let list_orders = "      - { name: list_orders, path: /orders, methods: [GET], backend: { upstream: orders } }\n";
    let second = write_file(
        &dir,
        "second.yaml",
        &shared_sections(&[&a, &b], &orders, list_orders),
    );
    let local = gw.local_file();
    let local = local.to_str().unwrap();
    let revision_before = etcd.mod_revision(&commit_key(prefix));
    let (ok, code, out) = gatehouse(
        &[
            "config",
            "push",
            "-c",
            second.to_str().unwrap(),
            "--local",
            local,
            "--dry-run",
        ],
        Duration::from_secs(60),
    );
    assert!(ok, "dry run exited {code}:\n{out}");
    for name in ["orders", "list_orders", "goodbye", "users"] {
        assert!(out.contains(name), "the dry run names {name}:\n{out}");
    }
    assert_eq!(etcd.mod_revision(&commit_key(prefix)), revision_before);
    assert_eq!(
        parse_pulled(&pull(&["--local", local])),
        pulled_json,
        "nothing written"
    );
    assert_eq!(gw.get("/orders").status, 404);

    // an invalid file: exit 1, every problem printed, nothing written
    let broken = shared_sections(
        &[&a],
        &orders.replace("weight: 1", "weight: 150"),
        list_orders,
    ) + "      - { name: lost, path: /lost, backend: { upstream: nowhere } }\n";
    let broken = write_file(&dir, "broken.yaml", &broken);
    let (ok, code, out) = gatehouse(
        &[
            "config",
            "push",
            "-c",
            broken.to_str().unwrap(),
            "--local",
            local,
        ],
        Duration::from_secs(60),
    );
    assert!(
        !ok && code == 1,
        "an invalid push exits 1, got {code}:\n{out}"
    );
    assert!(out.contains("150"), "the weight problem is printed:\n{out}");
    assert!(
        out.contains("nowhere"),
        "the unknown upstream is printed:\n{out}"
    );
    assert_eq!(etcd.mod_revision(&commit_key(prefix)), revision_before);

    // the second version for real, through --local
    let (ok, code, out) = gatehouse(
        &[
            "config",
            "push",
            "-c",
            second.to_str().unwrap(),
            "--local",
            local,
        ],
        Duration::from_secs(60),
    );
    assert!(ok, "push exited {code}:\n{out}");
    wait_node(&gw, "/orders", "b");
    wait_served(&gw, "/goodbye", 404, None);

    // round trip: pushing the pulled file changes nothing
    let pulled = pull(&["--etcd", &eps[0], "--prefix", prefix]);
    let pulled_json = parse_pulled(&pulled);
    assert_eq!(
        names(&pulled_json["upstreams"]),
        ["orders", "users"],
        "{pulled}"
    );
    assert_eq!(
        api_names(&pulled_json, "shop"),
        ["get_user", "list_orders"],
        "{pulled}"
    );
    let again = write_file(&dir, "again.yaml", &pulled);
    let rev = etcd.mod_revision(&commit_key(prefix)).unwrap() as u64;
    gw.wait_revision(rev);
    let served_before = gw.call("GET", "/config?format=json", None).json();
    let (ok, code, out) = gatehouse(
        &[
            "config",
            "push",
            "-c",
            again.to_str().unwrap(),
            "--local",
            local,
            "--dry-run",
        ],
        Duration::from_secs(60),
    );
    assert!(ok, "dry run of the pulled file exited {code}:\n{out}");
    let (ok, code, out) = gatehouse(
        &[
            "config",
            "push",
            "-c",
            again.to_str().unwrap(),
            "--local",
            local,
        ],
        Duration::from_secs(60),
    );
    assert!(ok, "push of the pulled file exited {code}:\n{out}");
    assert_eq!(parse_pulled(&pull(&["--local", local])), pulled_json);
    let rev_after = etcd.mod_revision(&commit_key(prefix)).unwrap() as u64;
    gw.wait_revision(rev_after);
    assert_eq!(
        gw.call("GET", "/config?format=json", None).json(),
        served_before,
        "the served configuration is unchanged"
    );
    assert_eq!(gw.get("/orders").node(), "b");
}

/// Test 9: 10,000 APIs — far more than one etcd transaction holds — are pushed and applied at
/// once: an instance only ever serves the old or the new configuration, never a part of it.
#[test]
fn ten_thousand_apis_are_pushed_and_applied_atomically() {
    let started = Instant::now();
    let a = echo("a");
    let etcd = etcd_with_shared(&[&a], "");
    let gw = FleetGateway::start("gw-a", &[etcd.endpoint()]);
    let count_apis = |gw: &FleetGateway| -> usize {
        let r = gw.call("GET", "/services", None);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["apis"].as_array().map_or(0, Vec::len))
            .sum()
    };
    let old = count_apis(&gw);
    assert_eq!(old, 1);

    let mut yaml = shared_yaml(&[&a], "", "");
    for s in 0..100 {
        yaml.push_str(&format!("  - name: s{s:02}\n    apis:\n"));
        for i in 0..100 {
            yaml.push_str(&fixed_api_line(
                &format!("a{i:02}"),
                &format!("/s{s:02}/a{i:02}"),
                &format!("s{s:02}a{i:02}"),
            ));
        }
    }
    let new = old + 10_000;
    let dir = TempDir::new();
    let file = write_file(&dir, "large.yaml", &yaml);

    let stop = Arc::new(AtomicBool::new(false));
    let (seen, pushed_in) = std::thread::scope(|s| {
        // a panic below stops the poller before the scope waits for it
        let _stop_on_panic = RaiseOnDrop(stop.clone());
        let poller = s.spawn(|| {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(150);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                seen.push(count_apis(&gw));
            }
            seen
        });
        let t = Instant::now();
        push(&file, &[etcd.endpoint()], &[]);
        let pushed_in = t.elapsed();
        eventually(
            "the instance serves the 10,001 APIs",
            Duration::from_secs(60),
            || (count_apis(&gw) == new).then_some(()),
        );
        stop.store(true, Ordering::Relaxed);
        (poller.join().unwrap(), pushed_in)
    });
    drop(dir);
    let odd: Vec<&usize> = seen.iter().filter(|&&c| c != old && c != new).collect();
    assert!(
        odd.is_empty(),
        "a half-applied configuration was served: counts {odd:?} (old {old}, new {new})"
    );
    assert!(!seen.is_empty());
    for (s, i) in [(0, 0), (57, 42), (99, 99), (13, 7)] {
        let r = gw.get(&format!("/s{s:02}/a{i:02}"));
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, format!("s{s:02}a{i:02}").as_str())
        );
    }
    assert_eq!(gw.get("/users/1").status, 200);
    eprintln!(
        "10,000 APIs: push took {pushed_in:?}, {} polls, test {:?}",
        seen.len(),
        started.elapsed()
    );
}

/// Test 10: a plugin component named by `path` in the pushed file is stored in etcd by hash and
/// served by an instance whose folder has no such file.
#[test]
fn a_plugin_component_pushed_by_path_is_served_by_an_instance_without_the_file() {
    let a = echo("a");
    let etcd = Etcd::start();
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist/c-example.wasm");
    let push_dir = TempDir::new();
    let component = push_dir.join("c-example.wasm");
    std::fs::copy(&dist, &component).unwrap();
    let api = r#"      - name: powered
        path: /powered/{*rest}
        methods: [GET]
        backend: { upstream: users }
        plugins:
          - path: c-example.wasm
            config: { powered_by: fleet-plugin }
"#;
    let file = write_file(&push_dir, "shared.yaml", &shared_yaml(&[&a], "", api));
    push(&file, &[etcd.endpoint()], &[]);
    // the component is gone from the pushing side too: only etcd has it now
    std::fs::remove_file(&component).unwrap();

    let hash = std::process::Command::new("sha256sum")
        .arg(&dist)
        .output()
        .unwrap();
    let hash = String::from_utf8_lossy(&hash.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(hash.len(), 64);
    let reference = format!("sha256:{hash}");
    // where the component's bytes are kept is the implementation's business; the reference
    // by hash is documented
    let stored = etcd.get_prefix(DEFAULT_PREFIX);
    assert!(
        stored
            .iter()
            .any(|kv| kv.key.contains(&reference) || kv.value_str().contains(&reference)),
        "etcd references {reference}: keys {:?}",
        stored.iter().map(|kv| &kv.key).collect::<Vec<_>>()
    );

    let gw = FleetGateway::start("gw-a", &[etcd.endpoint()]);
    let local_wasm: Vec<_> = std::fs::read_dir(&gw.gw.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        .collect();
    assert!(
        local_wasm.is_empty(),
        "the instance's folder has no component"
    );
    let r = gw.get("/powered/x");
    assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log());
    assert_eq!(r.node(), "a");
    assert_eq!(r.header("x-powered-by"), Some("fleet-plugin"));
    assert_eq!(
        gw.get("/powered/admin").status,
        403,
        "the plugin blocks /admin"
    );
    assert_eq!(gw.get("/users/1").header("x-powered-by"), None);
}

/// The local file of a fleet instance holds only `instance`: each shared section is refused by
/// name and the instance does not start.
#[test]
fn a_fleet_local_file_must_not_hold_shared_sections() {
    let a = echo("a");
    let etcd = etcd_with_shared(&[&a], "");
    // the same local file without the section starts and serves
    let ok = FleetGateway::start("gw-ok", &[etcd.endpoint()]);
    assert_eq!(ok.get("/users/1").status, 200);
    drop(ok);
    let sections = [
        ("vpcs", "vpcs:\n  - id: vpc-main\n    cidrs: [\"127.0.0.0/8\"]\n".to_owned()),
        (
            "connections",
            "connections:\n  - [vpc-main, vpc-data]\n".to_owned(),
        ),
        (
            "upstreams",
            format!(
                "upstreams:\n  - name: local\n    vpc: vpc-main\n    protocol: http\n    nodes:\n{}",
                node_lines(&[&a], 1)
            ),
        ),
        (
            "services",
            format!(
                "services:\n  - name: local\n    apis:\n{}",
                fixed_api_line("x", "/x", "x")
            ),
        ),
    ];
    for (section, yaml) in sections {
        let (listen, metrics, admin) = (free_port(), free_port(), free_port());
        let local = format!(
            "{}{yaml}",
            fleet_local_yaml("gw-a", listen, metrics, admin, &[etcd.endpoint()], "")
        );
        let (status, log) = run_expecting_exit(&local, Duration::from_secs(30));
        let status =
            status.unwrap_or_else(|| panic!("started with `{section}` in the local file:\n{log}"));
        assert!(!status.success(), "{section}: exited {status}\n{log}");
        assert!(
            log.contains(section),
            "the refusal names `{section}`:\n{log}"
        );
    }
}

/// Neither etcd nor a cache: the instance exits non-zero with an error.
#[test]
fn without_etcd_and_without_a_cache_an_instance_exits_non_zero() {
    // the same shape of local file serves when etcd is there
    let a = echo("a");
    let etcd = etcd_with_shared(&[&a], "");
    let ok = FleetGateway::start("gw-ok", &[etcd.endpoint()]);
    assert_eq!(ok.get("/users/1").status, 200);
    drop(ok);
    drop(etcd);
    // a fresh folder (no cache) and an etcd nobody listens on
    let (listen, metrics, admin) = (free_port(), free_port(), free_port());
    let nowhere = format!("http://{}", dead_addr());
    let local = fleet_local_yaml("gw-a", listen, metrics, admin, &[nowhere], "")
        .replace("timeout: 2s", "timeout: 1s");
    let (status, log) = run_expecting_exit(&local, Duration::from_secs(60));
    let status = status.unwrap_or_else(|| panic!("still running without etcd or cache:\n{log}"));
    assert!(!status.success(), "exited {status}\n{log}");
    assert!(!log.trim().is_empty(), "an error is logged");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", listen)).is_err(),
        "nothing serves"
    );
}

/// etcd over TLS that authenticates clients by certificate: an instance with the CA and a client
/// certificate serves the configuration pushed through the same settings and follows a change
/// made through its admin API; the same instance without the client certificate gets nothing,
/// and with no cache it does not start.
#[test]
fn etcd_over_tls_with_a_client_certificate() {
    let (a, b) = (echo("a"), echo("b"));
    let pki_dir = TempDir::new();
    let pki = EtcdPki::generate(&pki_dir);
    let etcd = Etcd::start_tls(&pki);
    let eps = [etcd.endpoint()];
    assert!(eps[0].starts_with("https://127.0.0.1:"), "{eps:?}");
    // the member really requires a client certificate
    let out = etcd.etcdctl_anonymous(&["get", "/probe"]);
    assert!(
        !out.status.success(),
        "etcd answered a client without a certificate: {out:?}"
    );

    let roots = format!("  file_roots: [\"{}\"]\n", pki_dir.display());
    let with_cert = format!(
        "    tls: {{ ca_file: \"{}\", cert_file: \"{}\", key_file: \"{}\" }}\n",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let ca_only = format!("    tls: {{ ca_file: \"{}\" }}\n", pki.ca.display());
    let local_yaml = |id: &str, tls: &str| {
        let (listen, metrics, admin) = (free_port(), free_port(), free_port());
        let yaml = fleet_local_yaml(id, listen, metrics, admin, &eps, tls);
        (with_instance_extra(&yaml, &roots), listen)
    };

    // pushed with the TLS settings of a local file
    let push_dir = TempDir::new();
    let shared = write_file(&push_dir, "shared.yaml", &shared_sections(&[&a], "", ""));
    let local = write_file(&pki_dir, "local.yaml", &local_yaml("pusher", &with_cert).0);
    push_local(&shared, &local, &[]);
    let pushed = etcd
        .mod_revision(&commit_key(DEFAULT_PREFIX))
        .expect("the push wrote a commit") as u64;

    let gw = FleetGateway::start_opts(
        "gw-tls",
        &eps,
        FleetOptions {
            etcd_extra: &with_cert,
            instance_extra: &roots,
            ..FleetOptions::default()
        },
    );
    let r = gw.get("/users/1");
    assert_eq!((r.status, r.node().as_str()), (200, "a"), "{}", r.body);
    let status = gw.status();
    assert_eq!(status["source"]["up"], true, "{status}");
    assert_eq!(status["revision"].as_u64(), Some(pushed), "{status}");

    // a change through the admin API goes to etcd over TLS and is followed
    let r = gw.call(
        "PUT",
        "/upstreams/users",
        Some(upstream_json("users", &[&b])),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let rev = etag_revision(&r);
    assert!(rev > pushed);
    assert_eq!(
        etcd.mod_revision(&commit_key(DEFAULT_PREFIX)),
        Some(rev as i64),
        "the write is in etcd"
    );
    wait_node(&gw, "/users/1", "b");
    let r = gw.call(
        "POST",
        "/services/shop/apis",
        Some(fixed_api("over_tls", "/over-tls", "secured")),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    wait_served(&gw, "/over-tls", 200, Some("secured"));
    // and a change made elsewhere (a push) reaches it through its watch
    let pulled = pull(&["--local", local.to_str().unwrap()]);
    assert!(pulled.contains("over_tls"), "pulled over TLS:\n{pulled}");
    let second = write_file(
        &push_dir,
        "second.yaml",
        &shared_sections(&[&b], "", &fixed_api_line("pushed", "/pushed", "by push")),
    );
    push_local(&second, &local, &[]);
    wait_served(&gw, "/pushed", 200, Some("by push"));
    wait_served(&gw, "/over-tls", 404, None);

    // the same instance without the client certificate: no configuration, no start
    let (yaml, listen) = local_yaml("gw-no-cert", &ca_only);
    let (status, log) = run_expecting_exit(&yaml, Duration::from_secs(60));
    let status = status.unwrap_or_else(|| panic!("still running without a certificate:\n{log}"));
    assert!(!status.success(), "exited {status}\n{log}");
    assert!(!log.trim().is_empty(), "an error is logged");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", listen)).is_err(),
        "nothing serves"
    );
    // and the instance with it still serves
    assert_eq!(gw.get("/pushed").status, 200);
}

/// etcd with authentication: instances that log in as a user whose role covers the prefix (the
/// password from the environment, or from a file) serve the configuration pushed with the same
/// credentials, follow each other's changes and keep their instance records; the password shows
/// in no admin API answer and in no log line.
#[test]
fn etcd_with_a_user_and_password() {
    const PASSWORD: &str = ETCD_PASSWORD;
    let (a, b) = (echo("a"), echo("b"));
    let mut etcd = Etcd::start();
    etcd.enable_auth(ETCD_ROOT_PASSWORD, "gatehouse", PASSWORD, "/gatehouse/");
    let eps = [etcd.endpoint()];
    let out = etcd.etcdctl_anonymous(&["get", "/gatehouse/probe"]);
    assert!(
        !out.status.success(),
        "etcd answered a client without credentials: {out:?}"
    );

    let secrets = TempDir::new();
    let password_file = write_file(&secrets, "etcd-password", &format!("{PASSWORD}\n"));
    let by_env = ETCD_LOGIN_BY_ENV;
    let by_file = format!(
        "    username: gatehouse\n    password_file: \"{}\"\n",
        password_file.display()
    );

    // the push logs in with the local file's credentials
    let push_dir = TempDir::new();
    let shared = write_file(&push_dir, "shared.yaml", &shared_sections(&[&a], "", ""));
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let local = write_file(
        &push_dir,
        "local.yaml",
        &fleet_local_yaml("pusher", p1, p2, p3, &eps, by_env),
    );
    let push_args = [
        "config",
        "push",
        "-c",
        shared.to_str().unwrap(),
        "--local",
        local.to_str().unwrap(),
    ];
    let (ok, code, out) = gatehouse_env(&push_args, &[("GH_ETCD_PASSWORD", None)]);
    assert!(!ok, "a push without the password exited {code}:\n{out}");
    assert!(
        out.contains("GH_ETCD_PASSWORD"),
        "the variable is named:\n{out}"
    );
    let (ok, code, out) = gatehouse_env(
        &push_args,
        &[("GH_ETCD_PASSWORD", Some("not-the-password"))],
    );
    assert!(!ok, "a push with a wrong password exited {code}:\n{out}");
    assert!(
        !out.contains("not-the-password"),
        "the push prints the password:\n{out}"
    );
    assert!(etcd.get(&commit_key(DEFAULT_PREFIX)).is_none());
    let out = push_local(&shared, &local, &[("GH_ETCD_PASSWORD", Some(PASSWORD))]);
    assert!(
        !out.contains(PASSWORD),
        "the push prints the password:\n{out}"
    );
    assert!(etcd.get(&commit_key(DEFAULT_PREFIX)).is_some());

    let env = [("GH_ETCD_PASSWORD", PASSWORD)];
    let roots = file_roots_for(&password_file);
    let gws = [
        FleetGateway::start_opts(
            "gw-env",
            &eps,
            FleetOptions {
                etcd_extra: by_env,
                env: &env,
                ..FleetOptions::default()
            },
        ),
        FleetGateway::start_opts(
            "gw-file",
            &eps,
            FleetOptions {
                etcd_extra: &by_file,
                instance_extra: &roots,
                ..FleetOptions::default()
            },
        ),
    ];
    for gw in &gws {
        let r = gw.get("/users/1");
        assert_eq!(
            (r.status, r.node().as_str()),
            (200, "a"),
            "{}: {}",
            gw.id,
            r.body
        );
        assert_eq!(gw.status()["source"]["up"], true, "{}", gw.id);
    }

    // each follows a change made through the other
    let r = gws[0].call(
        "POST",
        "/services/shop/apis",
        Some(fixed_api("hello", "/hello", "hello with a password")),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    wait_served(&gws[1], "/hello", 200, Some("hello with a password"));
    let r = gws[1].call(
        "PUT",
        "/upstreams/users",
        Some(upstream_json("users", &[&b])),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_node(&gws[0], "/users/1", "b");

    // both instance records are written under the user's role
    eventually("/fleet lists gw-env and gw-file", FOLLOW, || {
        let r = gws[1].call("GET", "/fleet", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let mut ids: Vec<String> = r.json()["instances"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        (ids == ["gw-env", "gw-file"]).then_some(())
    });

    // the password shows nowhere
    for gw in &gws {
        for path in ["/config", "/config?format=json", "/status", "/fleet"] {
            let r = gw.call("GET", path, None);
            assert_eq!(r.status, 200, "{} GET {path}: {}", gw.id, r.body);
            assert!(
                !r.body.contains(PASSWORD),
                "{} GET {path} shows the password:\n{}",
                gw.id,
                r.body
            );
        }
        let log = gw.log();
        assert!(
            !log.contains(PASSWORD),
            "{} logs the password:\n{log}",
            gw.id
        );
    }
    for path in ["/config", "/config?format=json"] {
        let body = gws[0].call("GET", path, None).body;
        assert!(
            body.contains("${GH_ETCD_PASSWORD}"),
            "GET {path} shows the reference:\n{body}"
        );
    }
}

/// A shared configuration must not hold plugin secrets in clear: `config push` refuses them
/// (naming the key and the `${NAME}` way), accepts `${NAME}` references (even when the variable
/// is not set where the push runs), and the instance enforces the key from its own environment.
/// The admin API refuses a clear key too.
#[test]
fn clear_text_secrets_are_refused_in_a_shared_configuration() {
    const KEY: &str = "gh-key-3b9f27c1d8e4";
    let a = echo("a");
    let etcd = etcd_with_shared(&[&a], "");
    let eps = [etcd.endpoint()];
    let gw = FleetGateway::start_opts(
        "gw-a",
        &eps,
        FleetOptions {
            env: &[("GATEHOUSE_SECRET_GH_KEY", KEY)],
            ..FleetOptions::default()
        },
    );
    let keyed = |keys: &str| {
        format!(
            "      - name: keyed\n        path: /keyed\n        methods: [GET]\n        backend: {{ upstream: users }}\n        plugins:\n          - name: key-auth\n            config: {{ keys: {keys} }}\n"
        )
    };
    let dir = TempDir::new();
    let push_file = |name: &str, keys: &str| {
        let file = write_file(&dir, name, &shared_yaml(&[&a], "", &keyed(keys)));
        gatehouse_env(
            &[
                "config",
                "push",
                "-c",
                file.to_str().unwrap(),
                "--etcd",
                &eps[0],
            ],
            &[("GATEHOUSE_SECRET_GH_KEY", None)],
        )
    };
    let before = etcd.mod_revision(&commit_key(DEFAULT_PREFIX));

    // clear keys: refused, naming the key's path and the way to write it
    let (ok, code, out) = push_file("clear.yaml", "[k-clear-5e1a90, k-clear-77d2c4]");
    assert!(
        !ok && code == 1,
        "a push of clear keys exited {code}:\n{out}"
    );
    assert!(
        out.contains("services[0].apis[1].plugins[0].config.keys"),
        "the key's path is named:\n{out}"
    );
    assert!(out.contains("${NAME}"), "the fix names ${{NAME}}:\n{out}");
    assert_eq!(
        etcd.mod_revision(&commit_key(DEFAULT_PREFIX)),
        before,
        "nothing was written"
    );
    assert_eq!(gw.get("/keyed").status, 404);

    // a reference: accepted, with a note naming the variable the pushing side lacks
    let (ok, code, out) = push_file("ref.yaml", "[\"${GATEHOUSE_SECRET_GH_KEY}\"]");
    assert!(
        ok,
        "a push of a ${{GATEHOUSE_SECRET_GH_KEY}} reference exited {code}:\n{out}"
    );
    assert!(
        out.contains("note") && out.contains("GATEHOUSE_SECRET_GH_KEY"),
        "a note names GATEHOUSE_SECRET_GH_KEY:\n{out}"
    );
    // (bounded more loosely than FOLLOW: the instance compiles the key-auth component first)
    eventually(
        "gw-a answers GET /keyed without a key with 401",
        Duration::from_secs(30),
        || (gw.get("/keyed").status == 401).then_some(()),
    );
    let keyed_get = |key: &str| request("GET", &gw.gw.url("/keyed"), &[("x-api-key", key)], None);
    let r = keyed_get(KEY);
    assert_eq!((r.status, r.node().as_str()), (200, "a"), "{}", r.body);
    assert_eq!(keyed_get("k-wrong-0000").status, 401);
    assert_eq!(
        keyed_get("${GATEHOUSE_SECRET_GH_KEY}").status,
        401,
        "the reference itself is no key"
    );
    let stored = etcd.get_prefix(DEFAULT_PREFIX);
    assert!(
        stored
            .iter()
            .any(|kv| kv.value_str().contains("${GATEHOUSE_SECRET_GH_KEY}")),
        "etcd holds the reference"
    );
    assert!(
        !stored.iter().any(|kv| kv.value_str().contains(KEY)),
        "etcd holds no key value"
    );

    // through the admin API: a clear key is refused with the problem, nothing changes
    let rev = gw.revision();
    let api = json!({ "name": "keyed", "path": "/keyed", "methods": ["GET"],
        "backend": { "upstream": "users" },
        "plugins": [{ "name": "key-auth", "config": { "keys": ["k-clear-admin-0042"] } }] });
    let r = gw.call("PUT", "/services/shop/apis/keyed", Some(api));
    assert_eq!(r.status, 400, "{}", r.body);
    let body = r.json();
    assert_eq!(body["error"], "invalid_config", "{body}");
    let problems = body["problems"].as_array().cloned().unwrap_or_default();
    assert!(
        problems.iter().any(|p| p["path"]
            .as_str()
            .is_some_and(|path| path.ends_with("plugins[0].config.keys"))
            && p["fix"].as_str().is_some_and(|f| f.contains("${NAME}"))),
        "the clear key is the problem: {body}"
    );
    assert_eq!(
        etcd.mod_revision(&commit_key(DEFAULT_PREFIX)),
        Some(rev as i64)
    );
    assert_eq!(gw.revision(), rev);
    assert_eq!(keyed_get(KEY).status, 200);
    assert_eq!(keyed_get("k-clear-admin-0042").status, 401);
}

/// A revision that names a file (a plugin component by `sha256:`) etcd does not hold is refused
/// by the instance, naming the digest; the previous revision keeps serving until a valid one
/// comes.
#[test]
fn a_revision_naming_a_file_etcd_does_not_hold_is_refused() {
    let a = echo("a");
    let etcd = etcd_with_shared(&[&a], "");
    let gw = FleetGateway::start("gw-a", &[etcd.endpoint()]);
    let good = gw.revision();
    let missing = "5ca1ab1e".repeat(8);
    assert_eq!(missing.len(), 64);
    let ghost = json!({ "name": "ghost", "path": "/ghost", "methods": ["GET"],
        "backend": { "upstream": "users" },
        "plugins": [{ "path": format!("sha256:{missing}") }] });
    let bad = write_revision(
        &etcd,
        DEFAULT_PREFIX,
        |prefix, set| vec![(set_api_key(prefix, set, "shop", "ghost"), ghost.to_string())],
        |_| {},
    );
    assert!(bad > good);
    let status = wait_refused(&gw, bad);
    let problems = refused_problems(&status);
    assert!(
        problems.contains(&missing) && problems.contains("does not hold"),
        "the problems name the digest and say etcd does not hold it: {status}"
    );
    assert_eq!(status["revision"].as_u64(), Some(good), "{status}");
    assert_eq!(
        gw.get("/users/1").status,
        200,
        "the previous revision serves"
    );
    assert_eq!(gw.get("/ghost").status, 404);
    assert_eq!(
        gw.call("GET", "/services/shop/apis/ghost", None).status,
        404,
        "nothing of the refused revision is served"
    );

    // the next valid revision (a push without the API) is served
    repair_with_push(&gw, &etcd, &a, bad, &[]);
}

/// A commit record of another layout schema (written by another version) is refused; the
/// previous configuration keeps serving until a valid revision comes.
#[test]
fn a_commit_record_of_another_schema_is_refused() {
    let a = echo("a");
    let etcd = etcd_with_shared(&[&a], "");
    let gw = FleetGateway::start("gw-a", &[etcd.endpoint()]);
    let good = gw.revision();
    let refused_before = gw
        .metric("gatehouse_config_revisions_refused_total")
        .unwrap_or(0.0);
    let bad = write_revision(
        &etcd,
        DEFAULT_PREFIX,
        |_, _| Vec::new(),
        |commit| commit["schema"] = json!(2),
    );
    assert!(bad > good);
    let status = wait_refused(&gw, bad);
    let problems = refused_problems(&status);
    assert!(
        problems.contains("written by another version"),
        "the problem says another version wrote it: {status}"
    );
    assert_eq!(status["revision"].as_u64(), Some(good), "{status}");
    let r = gw.get("/users/1");
    assert_eq!((r.status, r.node().as_str()), (200, "a"), "{}", r.body);
    let after = gw.metric("gatehouse_config_revisions_refused_total");
    assert!(
        after.is_some_and(|v| v >= refused_before + 1.0),
        "refused counter {refused_before} -> {after:?}"
    );

    // a push does not replace what this version cannot read, unless forced; then it repairs it
    let dir = TempDir::new();
    let file = write_file(&dir, "shared.yaml", &shared_yaml(&[&a], "", ""));
    let joined = etcd.endpoint();
    let args = [
        "config",
        "push",
        "-c",
        file.to_str().unwrap(),
        "--etcd",
        &joined,
    ];
    let (ok, code, output) = gatehouse(&args, Duration::from_secs(120));
    assert!(
        !ok,
        "a push over schema 2 is refused, exit {code}:\n{output}"
    );
    assert!(output.contains("--force"), "{output}");
    assert_eq!(
        etcd.mod_revision(&commit_key(DEFAULT_PREFIX)),
        Some(bad as i64)
    );
    repair_with_push(&gw, &etcd, &a, bad, &["--force"]);
}

/// Pushes a valid configuration (with an API `/repaired`) and checks that it serves past the
/// refused revision `bad` and clears the refusal.
fn repair_with_push(gw: &FleetGateway, etcd: &Etcd, node: &EchoServer, bad: u64, extra: &[&str]) {
    let dir = TempDir::new();
    let file = write_file(
        &dir,
        "shared.yaml",
        &shared_yaml(&[node], "", &fixed_api_line("repaired", "/repaired", "ok")),
    );
    push(&file, &[etcd.endpoint()], extra);
    wait_served(gw, "/repaired", 200, Some("ok"));
    let status = gw.status();
    assert!(status["source"]["refused"].is_null(), "{status}");
    assert!(status["revision"].as_u64().is_some_and(|r| r > bad));
}

/// SIGHUP on a fleet instance re-reads its local file (its own settings) and keeps the shared
/// configuration: a new generation at the same revision, which keeps following etcd. A local
/// file that gains a shared section is refused on SIGHUP and the instance keeps serving.
#[test]
fn sighup_rereads_the_local_file_and_keeps_the_shared_configuration() {
    let a = echo("a");
    let etcd = etcd_with_shared(&[&a], "");
    let gw = FleetGateway::start("gw-a", &[etcd.endpoint()]);
    let names: Vec<String> = (0..12).map(|i| format!("x-extra-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let crowded = || request("GET", &gw.gw.url("/users/1"), &headers, None).status;
    assert_eq!(crowded(), 200, "12 more header lines pass by default");
    let before = gw.status();
    let generation = |s: &Value| s["generation"].as_u64().expect("a generation");
    let (gen0, rev0) = (generation(&before), gw.revision());

    // a local change: at most 8 header lines
    let local = gw.local_file();
    let original = std::fs::read_to_string(&local).unwrap();
    let limited = with_instance_extra(&original, "  http: { max_headers: 8 }\n");
    std::fs::write(&local, &limited).unwrap();
    gw.gw.signal("HUP");
    let status = eventually("SIGHUP applies a new generation", FOLLOW, || {
        let s = gw.status();
        (generation(&s) > gen0).then_some(s)
    });
    assert_eq!(status["revision"].as_u64(), Some(rev0), "{status}");
    assert!(status["last_reload_error"].is_null(), "{status}");
    assert!(status["source"]["refused"].is_null(), "{status}");
    assert_eq!(crowded(), 431, "the local limit applies");
    let r = gw.get("/users/1");
    assert_eq!((r.status, r.node().as_str()), (200, "a"), "{}", r.body);
    let config = gw.call("GET", "/config?format=json", None).json();
    assert_eq!(config["instance"]["http"]["max_headers"], 8, "{config}");
    assert_eq!(api_names(&config, "shop"), ["get_user"], "{config}");

    // it still follows etcd, and a new revision keeps the local setting
    let r = gw.call(
        "POST",
        "/services/shop/apis",
        Some(fixed_api("after_hup", "/after-hup", "still following")),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let after_write = etag_revision(&r);
    wait_served(&gw, "/after-hup", 200, Some("still following"));
    assert_eq!(crowded(), 431, "the new revision keeps the local limit");

    // a local file with a shared section: refused on SIGHUP, nothing changes
    let gen1 = generation(&gw.status());
    let with_section = format!(
        "{limited}upstreams:\n  - name: local\n    vpc: vpc-main\n    protocol: http\n    nodes:\n{}",
        node_lines(&[&a], 1)
    );
    std::fs::write(&local, with_section).unwrap();
    gw.gw.signal("HUP");
    let status = eventually("SIGHUP with a shared section is refused", FOLLOW, || {
        let s = gw.status();
        s["last_reload_error"].is_string().then_some(s)
    });
    let error = status["last_reload_error"].as_str().unwrap();
    assert!(
        error.contains("upstreams"),
        "the refusal names the section: {error}"
    );
    assert_eq!(generation(&status), gen1, "{status}");
    assert_eq!(status["revision"].as_u64(), Some(after_write), "{status}");
    assert_eq!(gw.get("/users/1").status, 200);
    assert_eq!(gw.get("/after-hup").status, 200);
    assert_eq!(gw.call("GET", "/upstreams/local", None).status, 404);
    assert_eq!(crowded(), 431, "the local settings stay");
}

/// etcd forgets an instance's auth token (a simple token expires after `--auth-token-ttl`, 300 s
/// by default, without use; all are dropped when authentication is turned off and on): the
/// instance logs in again, and its admin writes and `/fleet` keep working.
#[test]
fn an_instance_logs_in_again_when_etcd_forgets_its_token() {
    let a = echo("a");
    let mut etcd = Etcd::start();
    etcd.enable_auth(
        ETCD_ROOT_PASSWORD,
        "gatehouse",
        ETCD_PASSWORD,
        "/gatehouse/",
    );
    let eps = [etcd.endpoint()];
    let dir = TempDir::new();
    let shared = write_file(&dir, "shared.yaml", &shared_sections(&[&a], "", ""));
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let local = write_file(
        &dir,
        "local.yaml",
        &fleet_local_yaml("pusher", p1, p2, p3, &eps, ETCD_LOGIN_BY_ENV),
    );
    let password = [("GH_ETCD_PASSWORD", Some(ETCD_PASSWORD))];
    push_local(&shared, &local, &password);
    let gw = FleetGateway::start_opts(
        "gw-a",
        &eps,
        FleetOptions {
            etcd_extra: ETCD_LOGIN_BY_ENV,
            env: &[("GH_ETCD_PASSWORD", ETCD_PASSWORD)],
            ..FleetOptions::default()
        },
    );
    let r = gw.call(
        "POST",
        "/services/shop/apis",
        Some(fixed_api("before", "/before", "written before")),
    );
    assert_eq!(r.status, 201, "{}", r.body);

    etcd.invalidate_auth_tokens();
    // a change elsewhere is still followed (the watch was authorized when it was made)
    let second = write_file(
        &dir,
        "second.yaml",
        &shared_sections(&[&a], "", &fixed_api_line("pushed", "/pushed", "by push")),
    );
    push_local(&second, &local, &password);
    wait_served(&gw, "/pushed", 200, Some("by push"));
    // and writes through the instance work again once it has logged in again
    let r = write_until_accepted(
        &gw,
        "POST",
        "/services/shop/apis",
        &fixed_api("after", "/after", "written after"),
        &[201],
        FOLLOW,
    );
    assert!(r.status == 201 || r.status == 409, "{}", r.body);
    wait_served(&gw, "/after", 200, Some("written after"));
    eventually("/fleet answers again", FOLLOW, || {
        (gw.call("GET", "/fleet", None).status == 200).then_some(())
    });
}

/// The endpoints of `cluster` with member `first` first, then the others.
fn endpoints_from(cluster: &EtcdCluster, first: usize) -> Vec<String> {
    let all = cluster.endpoints();
    let mut eps = vec![all[first].clone()];
    eps.extend(all.iter().filter(|e| **e != all[first]).cloned());
    eps
}

/// Waits until the cluster (without its dead members) has a leader and accepts a write.
fn wait_new_leader(cluster: &EtcdCluster) -> Instant {
    cluster.wait_quorum();
    eventually(
        "the remaining members accept a write",
        Duration::from_secs(30),
        || {
            cluster
                .etcdctl(&["put", "/probe/leader", "ok"])
                .status
                .success()
                .then_some(())
        },
    );
    Instant::now()
}

/// An instance whose endpoint is a follower that survives the leader: a write during the
/// election fails, and writes are accepted again as soon as the cluster has a new leader (not
/// refused for good on a flag that only a new watch would clear).
#[test]
fn an_instance_on_a_surviving_follower_accepts_writes_again_after_an_election() {
    let a = echo("a");
    let mut cluster = EtcdCluster::start(3);
    let leader = eventually("the cluster has a leader", Duration::from_secs(10), || {
        cluster.leader()
    });
    let follower = (leader + 1) % 3;
    let eps = endpoints_from(&cluster, follower);
    let dir = TempDir::new();
    let file = write_file(&dir, "shared.yaml", &shared_yaml(&[&a], "", ""));
    push(&file, &eps, &[]);
    let gw = FleetGateway::start("gw-f", &eps);
    assert_eq!(gw.get("/users/1").status, 200);

    let leader = cluster.leader().unwrap_or(leader);
    assert_ne!(
        leader, follower,
        "the leader moved before the test killed it"
    );
    cluster.kill(leader);
    // a write at once: the election is under way
    let during = gw.call(
        "POST",
        "/services/shop/apis",
        Some(fixed_api("during", "/during", "x")),
    );
    assert!(
        [201, 503, 504].contains(&during.status),
        "{} {}",
        during.status,
        during.body
    );
    let elected = wait_new_leader(&cluster);
    // accepted within a few seconds of the new leader, by the same instance
    let r = write_until_accepted(
        &gw,
        "POST",
        "/services/shop/apis",
        &fixed_api("after", "/after", "after the election"),
        &[201],
        Duration::from_secs(20),
    );
    assert!(r.status == 201 || r.status == 409, "{}", r.body);
    let refused_for = elected.elapsed();
    wait_served(&gw, "/after", 200, Some("after the election"));
    assert_eq!(gw.status()["source"]["up"], true, "{}", gw.status());
    assert_eq!(gw.metric("gatehouse_config_source_up"), Some(1.0));
    eprintln!("writes refused for {refused_for:?} after the new leader accepted a write");
}

/// The instance connected to the member that dies reconnects once and then stays: its gRPC
/// keep-alive is one etcd's defaults accept (etcd closes connections that ping more often than
/// every 5 s, or while no stream is open).
#[test]
fn an_instance_that_lost_its_member_reconnects_once_and_stays_connected() {
    let a = echo("a");
    let mut cluster = EtcdCluster::start(3);
    let leader = eventually("the cluster has a leader", Duration::from_secs(10), || {
        cluster.leader()
    });
    let eps = endpoints_from(&cluster, leader);
    let dir = TempDir::new();
    let file = write_file(&dir, "shared.yaml", &shared_yaml(&[&a], "", ""));
    push(&file, &eps, &[]);
    let gw = FleetGateway::start("gw-l", &eps);
    assert_eq!(gw.get("/users/1").status, 200);
    let resyncs = || {
        gw.metric("gatehouse_config_source_resyncs_total")
            .unwrap_or(0.0)
    };
    let before = resyncs();

    cluster.kill(leader);
    wait_new_leader(&cluster);
    eventually(
        "the instance follows the remaining members",
        Duration::from_secs(30),
        || (gw.status()["source"]["up"] == true && resyncs() > before).then_some(()),
    );
    // a change made meanwhile reaches it through its new watch
    write_until_accepted(
        &gw,
        "POST",
        "/services/shop/apis",
        &fixed_api("after", "/after", "after the election"),
        &[201],
        Duration::from_secs(20),
    );
    // it stays connected: no more re-reads while nothing goes wrong (the loop this guards
    // against re-read every 8 s or so)
    std::thread::sleep(Duration::from_secs(60));
    let rereads = resyncs() - before;
    assert_eq!(
        rereads,
        1.0,
        "{rereads} whole-state re-reads after one lost member\n{}",
        tail_lines(&gw.log(), 30)
    );
    assert_eq!(gw.status()["source"]["up"], true);
}

/// A write whose transaction etcd received but did not answer (the member froze) is answered
/// `504 outcome_unknown` with the revision it was based on, never "nothing changed"; a retry
/// with that revision as `If-Match` is applied only if the first was not, so the API exists
/// once whatever happened.
#[test]
fn a_write_without_an_answer_from_etcd_says_its_outcome_is_unknown_and_never_applies_twice() {
    let a = echo("a");
    let etcd = etcd_with_shared(&[&a], "");
    let gw = FleetGateway::start("gw-u", &[etcd.endpoint()]);
    assert_eq!(gw.get("/users/1").status, 200);
    let base = gw.status()["source"]["revision"].as_u64().unwrap();
    let if_match = format!("\"{base}\"");
    let api = fixed_api("maybe", "/maybe", "committed once");

    etcd.pause();
    let r = gw.call_with(
        "POST",
        "/services/shop/apis",
        Some(api.clone()),
        &[("if-match", &if_match)],
    );
    etcd.resume();
    assert_eq!(r.status, 504, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["error"], "outcome_unknown", "{}", r.body);
    assert_eq!(answer["revision"], base, "{}", r.body);
    assert!(!r.body.contains("nothing changed"), "{}", r.body);

    // the same write again, conditional on the same revision
    let deadline = Instant::now() + Duration::from_secs(30);
    let retry = loop {
        let r = gw.call_with(
            "POST",
            "/services/shop/apis",
            Some(api.clone()),
            &[("if-match", &if_match)],
        );
        if r.status < 500 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // 201: the first was not committed. If it was, the retry is not applied again: 412 (the
    // revision moved), or 409 (the API exists; RFC 9110 §13.2.1: a request that would fail
    // without its precondition gets that failure)
    assert!(
        [201, 409, 412].contains(&retry.status),
        "{} {}",
        retry.status,
        retry.body
    );
    wait_served(&gw, "/maybe", 200, Some("committed once"));
    let shop = gw.call("GET", "/services/shop/apis", None);
    assert_eq!(shop.status, 200, "{}", shop.body);
    let count = shop.body.matches("\"maybe\"").count();
    assert_eq!(count, 1, "{}", shop.body);
    eprintln!(
        "retry answered {} (the first write was {}committed)",
        retry.status,
        if retry.status == 201 { "not " } else { "" }
    );
}

/// What the clients of a fleet saw through an etcd fault.
#[derive(Default)]
struct FaultReport {
    gets: u64,
    failed_gets: Vec<String>,
    /// Every admin write: (instance, API name, status, when answered).
    writes: Vec<(usize, String, u16, Instant)>,
}

/// Three instances (each listing the members in another order) under GET traffic and an admin
/// write every 100 ms through the instances in turn; `fault` is done to the cluster after 3 s
/// and answers when the cluster is whole enough to commit again, `recover` 4 s later. Checks
/// that no GET failed, that every write answered 201 is in the final configuration of every
/// instance and no write answered 503 ("nothing changed") is, that every instance accepted
/// writes again after the cluster was back, and that all serve one revision at the end.
fn three_instances_through(
    what: &str,
    fault: impl FnOnce(&mut EtcdCluster) -> Instant,
    recover: impl FnOnce(&mut EtcdCluster),
) {
    let a = echo("a");
    let mut cluster = EtcdCluster::start(3);
    eventually("the cluster has a leader", Duration::from_secs(10), || {
        cluster.leader()
    });
    let all = cluster.endpoints();
    let orders = [[0, 1, 2], [1, 2, 0], [2, 0, 1]];
    let dir = TempDir::new();
    let file = write_file(&dir, "shared.yaml", &shared_yaml(&[&a], "", ""));
    push(&file, &all, &[]);
    let gws: Vec<FleetGateway> = orders
        .iter()
        .enumerate()
        .map(|(i, order)| {
            let eps: Vec<String> = order.iter().map(|&m| all[m].clone()).collect();
            FleetGateway::start(&format!("gw-{i}"), &eps)
        })
        .collect();
    let stop = AtomicBool::new(false);
    let mut back = Instant::now();
    let report = std::thread::scope(|s| {
        let loads: Vec<_> = gws
            .iter()
            .map(|gw| {
                let (url, stop) = (gw.gw.url("/users/1"), &stop);
                s.spawn(move || {
                    let (mut ok, mut failed) = (0u64, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match try_get(&url) {
                            Ok((200, _)) => ok += 1,
                            Ok((status, body)) => failed.push(format!("{url}: {status} {body}")),
                            Err(e) => failed.push(format!("{url}: {e}")),
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    (ok, failed)
                })
            })
            .collect();
        let writer = s.spawn(|| {
            let mut writes = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let i = n % gws.len();
                let name = format!("w{n}");
                let r = gws[i].call(
                    "POST",
                    "/services/shop/apis",
                    Some(fixed_api(&name, &format!("/w/{n}"), "written")),
                );
                writes.push((i, name, r.status, Instant::now()));
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            writes
        });
        std::thread::sleep(Duration::from_secs(3));
        back = fault(&mut cluster);
        std::thread::sleep(Duration::from_secs(4));
        recover(&mut cluster);
        std::thread::sleep(Duration::from_secs(6));
        stop.store(true, Ordering::Relaxed);
        let mut report = FaultReport {
            writes: writer.join().unwrap(),
            ..FaultReport::default()
        };
        for l in loads {
            let (ok, failed) = l.join().unwrap();
            report.gets += ok;
            report.failed_gets.extend(failed);
        }
        report
    });
    assert!(
        report.failed_gets.is_empty(),
        "{what}: {} of {} GETs failed: {:?}",
        report.failed_gets.len(),
        report.gets,
        &report.failed_gets[..report.failed_gets.len().min(10)]
    );
    let unexpected: Vec<_> = report
        .writes
        .iter()
        .filter(|w| ![201, 503, 504].contains(&w.2))
        .collect();
    assert!(unexpected.is_empty(), "{what}: {unexpected:?}");
    // one revision everywhere at the end
    let revision = eventually(
        &format!("{what}: the instances serve one revision"),
        Duration::from_secs(30),
        || {
            let revisions: Vec<u64> = gws.iter().map(FleetGateway::revision).collect();
            revisions
                .iter()
                .all(|r| *r == revisions[0])
                .then_some(revisions[0])
        },
    );
    for gw in &gws {
        let r = gw.call("GET", "/services/shop/apis", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let names: std::collections::BTreeSet<String> = r
            .json()
            .as_array()
            .map(|apis| {
                apis.iter()
                    .filter_map(|a| a["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for (i, name, status, _) in &report.writes {
            match status {
                201 => assert!(
                    names.contains(name),
                    "{what}: {name} was answered 201 by gw-{i} and is lost on {}",
                    gw.id
                ),
                503 => assert!(
                    !names.contains(name),
                    "{what}: {name} was answered 503 (nothing changed) by gw-{i} but is on {}",
                    gw.id
                ),
                _ => {}
            }
        }
    }
    let mut windows = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        let first = report
            .writes
            .iter()
            .find(|w| w.0 == i && w.2 == 201 && w.3 > back);
        let Some(first) = first else {
            panic!(
                "{what}: gw-{i} accepted no write after the cluster was back: {:?}\n{}",
                report
                    .writes
                    .iter()
                    .filter(|w| w.0 == i && w.3 > back)
                    .map(|w| w.2)
                    .collect::<Vec<_>>(),
                tail_lines(&gw.gw.log(), 20)
            );
        };
        windows.push(first.3 - back);
    }
    let count = |s: u16| report.writes.iter().filter(|w| w.2 == s).count();
    eprintln!(
        "{what}: {} GETs, 0 failed; writes: {} accepted, {} refused (503), {} unknown (504); \
         first accepted write per instance after the cluster was back: {windows:?}; final revision {revision}",
        report.gets,
        count(201),
        count(503),
        count(504)
    );
}

#[test]
fn a_fleet_rides_out_its_etcd_leader_killed_and_restarted() {
    let killed = std::cell::Cell::new(0);
    three_instances_through(
        "leader killed",
        |cluster| {
            killed.set(cluster.leader().expect("a leader"));
            cluster.kill(killed.get());
            wait_new_leader(cluster)
        },
        |cluster| cluster.restart(killed.get()),
    );
}

#[test]
fn a_fleet_rides_out_its_etcd_leader_frozen_then_resumed() {
    let frozen = std::cell::Cell::new(0);
    three_instances_through(
        "leader frozen",
        |cluster| {
            frozen.set(cluster.leader().expect("a leader"));
            cluster.members[frozen.get()].pause();
            wait_new_leader(cluster)
        },
        |cluster| cluster.members[frozen.get()].resume(),
    );
}

#[test]
fn a_fleet_rides_out_a_whole_cluster_restart() {
    three_instances_through(
        "whole cluster restarted",
        |cluster| {
            cluster.restart_all();
            wait_new_leader(cluster)
        },
        |_| {},
    );
}
