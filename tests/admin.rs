//! The admin API and live reconfiguration, end to end: the real binary, real backends.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "test-admin-token-0123456789";

/// A gateway with the admin API on, one upstream `users` on `nodes`, one API `GET /users/{id}`.
struct Admin {
    gw: Gateway,
    admin: String,
    listen: u16,
    metrics: u16,
    admin_port: u16,
}

fn config(listen: u16, metrics: u16, admin: u16, nodes: &[&EchoServer]) -> String {
    admin_yaml(listen, metrics, admin, TOKEN, nodes)
}

impl Admin {
    fn start(nodes: &[&EchoServer]) -> Admin {
        Self::start_logging(nodes, "info")
    }

    fn start_logging(nodes: &[&EchoServer], level: &str) -> Admin {
        Self::start_env(nodes, level, &[])
    }

    fn start_env(nodes: &[&EchoServer], level: &str, env: &[(&str, &str)]) -> Admin {
        let (listen, metrics, admin_port) = (free_port(), free_port(), free_port());
        let gw = Gateway::start_config_env(
            &config(listen, metrics, admin_port, nodes),
            listen,
            metrics,
            level,
            env,
        );
        wait_for(admin_port);
        Admin {
            gw,
            admin: format!("http://127.0.0.1:{admin_port}"),
            listen,
            metrics,
            admin_port,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.call_with(method, path, body, &[])
    }

    fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Reply {
        admin_request(&self.admin, TOKEN, method, path, body, extra)
    }

    fn config_file(&self) -> std::path::PathBuf {
        self.gw.dir.join("gatehouse.yaml")
    }
}

fn wait_for(port: u16) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("port {port} never opened");
}

fn upstream_json(name: &str, nodes: &[&EchoServer]) -> Value {
    json!({
        "name": name,
        "vpc": "vpc-main",
        "protocol": "http",
        "nodes": nodes.iter().map(|n| json!({ "host": "127.0.0.1", "port": n.addr().port(), "weight": 1 })).collect::<Vec<_>>(),
    })
}

#[test]
fn every_request_needs_the_token() {
    let a = echo("a");
    let admin = Admin::start(&[&a]);
    let r = request("GET", &format!("{}/upstreams", admin.admin), &[], None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    let r = request(
        "GET",
        &format!("{}/upstreams", admin.admin),
        &[("authorization", "Bearer wrong-token-0123456789")],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(admin.call("GET", "/upstreams", None).status, 200);
}

#[test]
fn the_seed_walkthrough_create_bind_call_list_refuse_delete() {
    let (a, b) = (echo("a"), echo("b"));
    let admin = Admin::start(&[&a]);
    // 1. create an upstream
    let r = admin.call("POST", "/upstreams", Some(upstream_json("orders", &[&b])));
    assert_eq!(r.status, 201, "{}", r.body);
    // 2. create an API on it
    let api = json!({ "name": "list_orders", "path": "/orders", "methods": ["GET"], "backend": { "upstream": "orders" } });
    let r = admin.call("POST", "/services/shop/apis", Some(api));
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.json()["backend"]["bound_at"].is_string(),
        "the binding time is recorded"
    );
    // 3. call the API: visible as soon as the admin call returned
    let r = admin.gw.get("/orders");
    assert_eq!((r.status, r.node().as_str()), (200, "b"));
    // 4. list the upstream's associated APIs
    let r = admin.call("GET", "/upstreams/orders/apis", None);
    assert_eq!(r.status, 200);
    let apis = r.json();
    assert_eq!(apis.as_array().unwrap().len(), 1);
    assert_eq!(apis[0]["service"], "shop");
    assert_eq!(apis[0]["api"], "list_orders");
    assert_eq!(apis[0]["path"], "/orders");
    assert_eq!(apis[0]["methods"], json!(["GET"]));
    // 5. deleting the upstream is refused while the API is bound, and nothing changes
    let r = admin.call("DELETE", "/upstreams/orders", None);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["apis"][0]["api"], "list_orders");
    assert_eq!(admin.gw.get("/orders").status, 200);
    // 6. remove the API, then the upstream
    assert_eq!(
        admin
            .call("DELETE", "/services/shop/apis/list_orders", None)
            .status,
        204
    );
    assert_eq!(admin.gw.get("/orders").status, 404);
    assert_eq!(admin.call("DELETE", "/upstreams/orders", None).status, 204);
    assert_eq!(admin.call("GET", "/upstreams/orders", None).status, 404);
}

#[test]
fn invalid_changes_are_refused_with_every_problem_and_nothing_changes() {
    let a = echo("a");
    let admin = Admin::start(&[&a]);
    let before = admin.call("GET", "/config?format=json", None).json();
    let bad = json!({ "name": "bad-name", "vpc": "nowhere", "protocol": "ftp", "retries": 0, "nodes": [] });
    let r = admin.call("POST", "/upstreams", Some(bad));
    assert_eq!(r.status, 400, "{}", r.body);
    let problems = r.json()["problems"].as_array().unwrap().clone();
    let paths: Vec<&str> = problems
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    for expected in [
        "upstreams[1].name",
        "upstreams[1].vpc",
        "upstreams[1].protocol",
        "upstreams[1].retries",
        "upstreams[1].nodes",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    assert!(problems
        .iter()
        .all(|p| p["fix"].as_str().is_some_and(|f| !f.is_empty())));
    assert_eq!(
        admin.call("GET", "/config?format=json", None).json(),
        before
    );
    let r = admin.call("POST", "/upstreams", Some(json!({ "nme": "x" })));
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_json"))
    );
}

#[test]
fn missing_resources_are_404_and_duplicates_409() {
    let a = echo("a");
    let admin = Admin::start(&[&a]);
    for path in [
        "/upstreams/nope",
        "/services/nope",
        "/services/shop/apis/nope",
        "/upstreams/nope/apis",
        "/nothing/here",
    ] {
        let r = admin.call("GET", path, None);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], "not_found");
    }
    let r = admin.call("POST", "/upstreams", Some(upstream_json("users", &[&a])));
    assert_eq!(r.status, 409);
    let r = admin.call(
        "PUT",
        "/upstreams/users",
        Some(upstream_json("other", &[&a])),
    );
    assert_eq!(r.status, 400, "renaming through PUT is refused");
}

#[test]
fn if_match_guards_against_concurrent_writers() {
    let (a, b) = (echo("a"), echo("b"));
    let admin = Admin::start(&[&a]);
    let read = admin.call("GET", "/upstreams/users", None);
    let etag = read.header("etag").unwrap().to_owned();
    // someone else changes the configuration
    assert_eq!(
        admin
            .call(
                "PUT",
                "/upstreams/users",
                Some(upstream_json("users", &[&a, &b]))
            )
            .status,
        200
    );
    // our write based on the old generation is refused
    let r = admin.call_with(
        "PUT",
        "/upstreams/users",
        Some(upstream_json("users", &[&b])),
        &[("if-match", &etag)],
    );
    assert_eq!(r.status, 412, "{}", r.body);
    assert_eq!(r.json()["error"], "stale_generation");
    // with the current generation it goes through
    let etag = admin
        .call("GET", "/status", None)
        .header("etag")
        .unwrap()
        .to_owned();
    let r = admin.call_with(
        "PUT",
        "/upstreams/users",
        Some(upstream_json("users", &[&b])),
        &[("if-match", &etag)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(admin.gw.get("/users/1").node(), "b");
}

#[test]
fn status_config_and_openapi_are_served() {
    let a = echo("a");
    let admin = Admin::start(&[&a]);
    let status = admin.call("GET", "/status", None).json();
    assert_eq!(status["generation"], 1);
    assert!(status["last_reload_error"].is_null());
    let yaml = admin.call("GET", "/config", None);
    assert_eq!(yaml.header("content-type"), Some("application/yaml"));
    assert!(yaml.body.contains("name: users"));
    let openapi = admin.call("GET", "/openapi.json", None).json();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    assert!(openapi["paths"]["/upstreams/{name}/apis"]["get"].is_object());
}

#[test]
fn changes_under_load_lose_no_request_and_show_at_once() {
    let backends: Vec<EchoServer> = (0..3).map(|i| echo(&format!("n{i}"))).collect();
    let admin = Admin::start(&[&backends[0]]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let url = admin.gw.url("/users/1");
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = request("GET", &url, &[], None);
                    if r.status == 200 { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..100 {
        let change = i % 4;
        let r = match change {
            // add a node / change a weight / swap the nodes
            0 => admin.call("PUT", "/upstreams/users", Some(upstream_json("users", &[&backends[0], &backends[1]]))),
            1 => {
                let mut u = upstream_json("users", &[&backends[0], &backends[1]]);
                u["nodes"][1]["weight"] = json!(i % 7 + 1);
                admin.call("PUT", "/upstreams/users", Some(u))
            }
            2 => admin.call("POST", "/services/shop/apis", Some(json!({
                "name": format!("extra_{i}"), "path": format!("/extra/{i}"), "methods": ["GET"], "backend": { "upstream": "users" }
            }))),
            _ => admin.call("PUT", "/upstreams/users", Some(upstream_json("users", &[&backends[2]]))),
        };
        assert!(
            r.status == 200 || r.status == 201,
            "change {i}: {} {}",
            r.status,
            r.body
        );
        // each change is visible right after the admin call returned
        match change {
            2 => assert_eq!(
                admin.gw.get(&format!("/extra/{i}")).status,
                200,
                "API added by change {i}"
            ),
            3 => assert_eq!(
                admin.gw.get("/users/1").node(),
                "n2",
                "nodes swapped by change {i}"
            ),
            _ => {}
        }
        if change == 2 {
            assert_eq!(
                admin
                    .call("DELETE", &format!("/services/shop/apis/extra_{i}"), None)
                    .status,
                204
            );
            assert_eq!(
                admin.gw.get(&format!("/extra/{i}")).status,
                404,
                "API removed after change {i}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "clients made progress: {ok}");
    assert_eq!(
        failed, 0,
        "{failed} client requests failed during the changes"
    );
}

#[test]
fn acknowledged_changes_survive_a_kill_and_the_file_stays_valid() {
    let (a, b) = (echo("a"), echo("b"));
    let admin = Admin::start(&[&a]);
    let r = admin.call(
        "PUT",
        "/upstreams/users",
        Some(upstream_json("users", &[&b])),
    );
    assert_eq!(r.status, 200);
    let file = admin.config_file();
    let text = std::fs::read_to_string(&file).unwrap();
    // the written file is what `gatehouse validate` accepts
    let (status, _, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    // SIGKILL while writes are in flight, then restart on the file
    let (listen, metrics, admin_port) = (admin.listen, admin.metrics, admin.admin_port);
    let writer = {
        let base = admin.admin.clone();
        let up = upstream_json("users", &[&b]);
        std::thread::spawn(move || {
            for _ in 0..50 {
                let body = up.to_string();
                let auth = format!("Bearer {TOKEN}");
                // the process may die under us: errors are expected, not failures
                let _ = std::panic::catch_unwind(|| {
                    request(
                        "PUT",
                        &format!("{base}/upstreams/users"),
                        &[("authorization", &auth)],
                        Some(&body),
                    )
                });
            }
        })
    };
    std::thread::sleep(Duration::from_millis(30));
    let mut gw = admin.gw;
    gw.kill();
    let _ = writer.join();
    let after = std::fs::read_to_string(&file).unwrap();
    assert!(after.contains("name: users"), "the file is whole:\n{after}");
    let (status, _, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(text.contains(&b.addr().port().to_string()));
    let restarted = gw.restart(listen, metrics);
    wait_for(admin_port);
    assert_eq!(
        restarted.get("/users/1").node(),
        "b",
        "the acknowledged change is served after restart"
    );
}

#[test]
fn reload_applies_the_file_and_refuses_a_broken_one() {
    let (a, b) = (echo("a"), echo("b"));
    let admin = Admin::start(&[&a]);
    let file = admin.config_file();
    let good = std::fs::read_to_string(&file)
        .unwrap()
        .replace(&a.addr().port().to_string(), &b.addr().port().to_string());
    std::fs::write(&file, &good).unwrap();
    let r = admin.call("POST", "/reload", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(admin.gw.get("/users/1").node(), "b");
    // a broken file is refused; the previous configuration keeps serving
    std::fs::write(&file, good.replace("protocol: http", "protocol: gopher")).unwrap();
    let r = admin.call("POST", "/reload", None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(admin.gw.get("/users/1").status, 200);
    let status = admin.call("GET", "/status", None).json();
    assert!(
        status["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("gopher"),
        "{status}"
    );
    assert_eq!(
        admin
            .gw
            .metric(r#"gatehouse_config_reloads_total{result="error"}"#),
        1.0
    );
    // SIGHUP re-reads the file too
    std::fs::write(
        &file,
        good.replace(&b.addr().port().to_string(), &a.addr().port().to_string()),
    )
    .unwrap();
    admin.gw.signal("HUP");
    let mut served = String::new();
    for _ in 0..200 {
        served = admin.gw.get("/users/1").node();
        if served == "a" {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(served, "a", "SIGHUP reloaded the file");
}

#[test]
fn unchanged_upstreams_keep_their_place_in_the_schedule_across_changes() {
    let (a, b) = (echo("a"), echo("b"));
    let admin = Admin::start(&[&a, &b]);
    assert_eq!(admin.gw.get("/users/1").node(), "a");
    // an unrelated change: a new API on the same upstream
    let api = json!({ "name": "other", "path": "/other", "backend": { "upstream": "users" } });
    assert_eq!(
        admin.call("POST", "/services/shop/apis", Some(api)).status,
        201
    );
    assert_eq!(
        admin.gw.get("/users/1").node(),
        "b",
        "the weighted schedule continued, it did not restart"
    );
    assert_eq!(admin.gw.get("/users/1").node(), "a");
    assert!(
        a.stats().connections() <= 2,
        "pooled connections survived: {}",
        a.stats().connections()
    );
}

#[test]
fn plugins_keep_working_across_changes() {
    let a = echo("a");
    let admin = Admin::start(&[&a]);
    let api = json!({ "name": "get_user", "path": "/users/{id}", "methods": ["GET"],
        "backend": { "upstream": "users" },
        "plugins": [{ "name": "host-rewrite", "config": { "host": "rewritten.internal" } }] });
    assert_eq!(
        admin
            .call("PUT", "/services/shop/apis/get_user", Some(api))
            .status,
        200
    );
    assert_eq!(
        admin.gw.get("/users/1").json()["host"],
        "rewritten.internal"
    );
    let other = json!({ "name": "other", "path": "/other", "backend": { "upstream": "users" } });
    assert_eq!(
        admin
            .call("POST", "/services/shop/apis", Some(other))
            .status,
        201
    );
    assert_eq!(
        admin.gw.get("/users/1").json()["host"],
        "rewritten.internal"
    );
    let bad = json!({ "name": "get_user", "path": "/users/{id}", "backend": { "upstream": "users" },
        "plugins": [{ "name": "host-rewrite", "config": { "hots": "x" } }] });
    let r = admin.call("PUT", "/services/shop/apis/get_user", Some(bad));
    assert_eq!(
        r.status, 400,
        "a plugin refusing its configuration refuses the change: {}",
        r.body
    );
    assert_eq!(
        r.json()["problems"][0]["path"],
        "services[0].apis[0].plugins[0].config"
    );
    assert_eq!(
        admin.gw.get("/users/1").json()["host"],
        "rewritten.internal"
    );
}

#[test]
fn the_admin_api_cannot_read_files_outside_the_file_roots() {
    let a = echo("a");
    let admin = Admin::start(&[&a]);
    let dir = &admin.gw.dir;
    // inside the root: links out of it, a FIFO, a huge file, a text file with a secret in it
    std::os::unix::fs::symlink("/proc/self/environ", dir.join("env.wasm")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd.wasm")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.wasm")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("pipe.wasm").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::File::create(dir.join("big.wasm"))
        .unwrap()
        .set_len(100 * 1024 * 1024)
        .unwrap();
    std::fs::write(dir.join("secret.wat"), "(component) ;; SECRET-CANARY-7731").unwrap();
    let rss_before = admin.gw.rss_kib();
    let cases = [
        ("/proc/self/environ", "outside the folders"),
        ("/etc/passwd", "outside the folders"),
        ("/dev/zero", "outside the folders"),
        ("../../etc/passwd", "'..'"),
        ("env.wasm", "outside the folders"),
        ("passwd.wasm", "outside the folders"),
        ("zero.wasm", "outside the folders"),
        ("pipe.wasm", "FIFO"),
        ("big.wasm", "over the limit"),
        ("secret.wat", "not a WebAssembly component"),
    ];
    for (path, expected) in cases {
        let api = json!({
            "name": "get_user", "path": "/users/{id}", "methods": ["GET"],
            "backend": { "upstream": "users" },
            "plugins": [{ "path": path }],
        });
        let r = admin.call("PUT", "/services/shop/apis/get_user", Some(api));
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(r.body.contains(expected), "{path}: {}", r.body);
        for leak in ["root:", "PATH=", "HOME=", "SECRET-CANARY", "\\u0000"] {
            assert!(!r.body.contains(leak), "{path} leaked {leak}: {}", r.body);
        }
    }
    let grown = admin.gw.rss_kib().saturating_sub(rss_before);
    assert!(grown < 50 * 1024, "RSS grew by {grown} KiB");
    assert!(!admin.gw.log().contains("SECRET-CANARY"));
    assert_eq!(
        admin.gw.get("/users/1").status,
        200,
        "still serving the old configuration"
    );
}

/// Sample lines of `/metrics`, without the admin API's own per-route counters (bounded by the
/// routes, not by the configuration).
fn series(gw: &Gateway) -> Vec<String> {
    gw.metrics_text()
        .lines()
        .filter(|l| l.starts_with("gatehouse_") && !l.starts_with("gatehouse_admin_requests"))
        .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_owned())
        .collect()
}

#[test]
fn metric_series_of_removed_apis_upstreams_nodes_and_plugins_disappear() {
    let (a, b) = (echo("a"), echo("b"));
    let admin = Admin::start(&[&a]);
    assert_eq!(admin.gw.get("/users/1").status, 200);
    let before = series(&admin.gw);
    for i in 0..100 {
        let upstream = format!("tmp_{i}");
        let r = admin.call(
            "POST",
            "/upstreams",
            Some(upstream_json(&upstream, &[&a, &b])),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let api = json!({
            "name": format!("tmp_api_{i}"), "path": format!("/tmp{i}/{{id}}"), "methods": ["GET"],
            "backend": { "upstream": upstream },
            "plugins": [{ "name": "request-id" }],
        });
        let r = admin.call("POST", "/services/shop/apis", Some(api));
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(admin.gw.get(&format!("/tmp{i}/7")).status, 200);
        if i == 0 {
            let during = admin.gw.metrics_text();
            assert!(during.contains(&format!("api=\"tmp_api_{i}\"")), "{during}");
            assert!(during.contains("plugin=\"request-id\""));
        }
        let r = admin.call("DELETE", &format!("/services/shop/apis/tmp_api_{i}"), None);
        assert_eq!(r.status, 204, "{}", r.body);
        let r = admin.call("DELETE", &format!("/upstreams/{upstream}"), None);
        assert_eq!(r.status, 204, "{}", r.body);
    }
    let after = series(&admin.gw);
    let added: Vec<_> = after.iter().filter(|s| !before.contains(s)).collect();
    assert!(added.is_empty(), "series left behind: {added:#?}");
    assert_eq!(after.len(), before.len());
}

#[test]
fn secrets_never_show_in_answers_or_logs_and_survive_a_round_trip() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let a = echo("a");
    // every level, but the compiler of plugin components (which logs its own internals only)
    let admin = Admin::start_logging(&[&a], "trace,cranelift=info,wasmtime=info,regalloc2=info");
    let key = "k-SECRET-canary-4411";
    let api = json!({
        "name": "get_user", "path": "/users/{id}", "methods": ["GET"],
        "backend": { "upstream": "users" },
        "plugins": [
            { "name": "key-auth", "config": { "keys": [key] } },
            { "name": "headers", "secret_keys": ["request.set"],
              "config": { "request": { "set": { "x-internal-token": "CANARY-HDR-2290" } } } },
        ],
    });
    let r = admin.call("PUT", "/services/shop/apis/get_user", Some(api));
    assert_eq!(r.status, 200, "{}", r.body);
    let mode = std::fs::metadata(admin.config_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the configuration file is owner-only after a write"
    );
    let secrets = [TOKEN, key, "CANARY-HDR-2290"];
    let mut shown = Vec::new();
    for path in [
        "/config",
        "/config?format=json",
        "/services",
        "/services/shop",
        "/services/shop/apis",
        "/services/shop/apis/get_user",
        "/status",
    ] {
        let r = admin.call("GET", path, None);
        assert_eq!(r.status, 200, "{path}");
        for secret in secrets {
            assert!(
                !r.body.contains(secret),
                "{path} shows {secret}: {}",
                r.body
            );
        }
        shown.push(r.body);
    }
    assert!(shown[0].contains("<redacted>"), "{}", shown[0]);
    // the redacted API sent back unchanged keeps the stored secrets
    let api = admin
        .call("GET", "/services/shop/apis/get_user", None)
        .json();
    let r = admin.call("PUT", "/services/shop/apis/get_user", Some(api));
    assert_eq!(r.status, 200, "{}", r.body);
    let with_key = request(
        "GET",
        &admin.gw.url("/users/1"),
        &[("x-api-key", key)],
        None,
    );
    assert_eq!(with_key.status, 200, "{}", with_key.body);
    assert_eq!(
        with_key.json()["headers"]["x-internal-token"],
        "CANARY-HDR-2290"
    );
    assert_eq!(admin.gw.get("/users/1").status, 401);
    // malformed requests carrying credentials, to both listeners
    let malformed = [
        format!("GET /users/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nBad Header\r\n\r\n"),
        format!("GET /users/1?api_key={key} HTTP/1.1\r\nHost: a\r\nX-API-Key: {key}\r\nCookie: s={key}\r\n\x01\r\n\r\n"),
        format!("GET /users/1 HTTP/1.1\r\nHost: a\r\nX-API-Key: {key}\r\n\r\n"),
        format!("BROKEN\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
    ];
    let admin_addr = admin.admin.trim_start_matches("http://").to_owned();
    let proxy_addr = admin.gw.base.trim_start_matches("http://").to_owned();
    for addr in [&admin_addr, &proxy_addr] {
        for bytes in &malformed {
            let mut s = std::net::TcpStream::connect(addr.as_str()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(bytes.as_bytes()).unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = admin.gw.log();
    for secret in secrets {
        let line = log.lines().find(|l| l.contains(secret));
        assert!(line.is_none(), "the log shows {secret}: {line:?}");
    }
    assert!(
        log.contains("[redacted]"),
        "credentials were logged, scrubbed"
    );
}

#[test]
fn a_dry_run_validates_and_shows_the_changes_without_applying_them() {
    let (a, b) = (echo("a"), echo("b"));
    let admin = Admin::start(&[&a]);
    let file_before = std::fs::read(admin.config_file()).unwrap();
    let etag = admin
        .call("GET", "/status", None)
        .header("etag")
        .unwrap()
        .to_owned();
    // a new upstream, dry
    let r = admin.call(
        "POST",
        "/upstreams?dry_run=true",
        Some(upstream_json("orders", &[&a, &b])),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["dry_run"], true);
    assert_eq!(r.json()["valid"], true);
    assert_eq!(r.json()["changes"]["upstreams"]["added"], json!(["orders"]));
    assert_eq!(
        admin.call("GET", "/upstreams/orders", None).status,
        404,
        "nothing applied"
    );
    // a modified upstream, dry: the node changes are listed
    let r = admin.call(
        "PUT",
        "/upstreams/users?dry_run=1",
        Some(upstream_json("users", &[&b])),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let modified = &r.json()["changes"]["upstreams"]["modified"][0];
    assert_eq!(modified["name"], "users");
    assert_eq!(modified["nodes"]["added"], json!([b.addr().to_string()]));
    assert_eq!(modified["nodes"]["removed"], json!([a.addr().to_string()]));
    // an invalid change, dry: the same 400 as a real one
    let r = admin.call("DELETE", "/upstreams/users?dry_run=true", None);
    assert_eq!(r.status, 409, "{}", r.body);
    let mut bad = upstream_json("broken", &[&a]);
    bad["retries"] = json!(500);
    let r = admin.call("POST", "/upstreams?dry_run=true", Some(bad));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("retries"), "{}", r.body);
    // a removed API, dry
    let r = admin.call("DELETE", "/services/shop/apis/get_user?dry_run=true", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["changes"]["apis"]["removed"],
        json!(["shop.get_user"])
    );
    // nothing happened
    assert_eq!(std::fs::read(admin.config_file()).unwrap(), file_before);
    let after = admin
        .call("GET", "/status", None)
        .header("etag")
        .unwrap()
        .to_owned();
    assert_eq!(after, etag);
    assert_eq!(admin.gw.get("/users/1").node(), "a");
    assert!(
        !admin.gw.log().contains("gatehouse::audit"),
        "dry runs are not audited"
    );
    // a real change is audited: one structured line
    let r = admin.call("POST", "/upstreams", Some(upstream_json("orders", &[&a])));
    assert_eq!(r.status, 201, "{}", r.body);
    std::thread::sleep(Duration::from_millis(100));
    let log = admin.gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("gatehouse::audit"))
        .expect("an audit line");
    let record: Value = serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap();
    assert_eq!(record["origin"], "POST /upstreams");
    assert_eq!(record["changes"]["upstreams"]["added"], json!(["orders"]));
    assert!(record["generation"].as_u64().unwrap() >= 2);
    assert!(record["at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn validate_shows_the_diff_between_two_files() {
    let dir = scratch_dir();
    let (a, b) = (echo("a"), echo("b"));
    let old = config(1, 2, 3, &[&a]);
    let new = config(1, 2, 3, &[&a, &b]).replace("path: /users/{id}", "path: /people/{id}");
    std::fs::write(dir.join("old.yaml"), &old).unwrap();
    std::fs::write(dir.join("new.yaml"), &new).unwrap();
    let (status, out, err) = run_cli(&[
        "validate",
        "-c",
        dir.join("new.yaml").to_str().unwrap(),
        "--diff-from",
        dir.join("old.yaml").to_str().unwrap(),
    ]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains(&format!("~ upstream users: +node {}", b.addr())),
        "{out}"
    );
    assert!(out.contains("~ api shop.get_user: path"), "{out}");
    assert!(!out.contains(TOKEN), "{out}");
}

/// Sends one request over TLS, trusting only `cert_der`, and returns the raw response.
fn tls_request(port: u16, cert_der: Vec<u8>, request: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{pki_types::CertificateDer, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(cert_der)).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let request = request.to_owned();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let name = "localhost".try_into().unwrap();
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(request.as_bytes()).await?;
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
}

#[test]
fn the_admin_api_serves_tls_and_honours_its_allow_list() {
    let a = echo("a");
    let certs = scratch_dir();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(certs.join("admin.pem"), generated.cert.pem()).unwrap();
    std::fs::write(certs.join("admin.key"), generated.key_pair.serialize_pem()).unwrap();
    let (listen, metrics, admin_port) = (free_port(), free_port(), free_port());
    let yaml = config(listen, metrics, admin_port, &[&a]).replace(
        &format!("  admin_token: {TOKEN}\n"),
        &format!(
            "  admin_token: {TOKEN}\n  admin_tls: {{ cert_file: {0}/admin.pem, key_file: {0}/admin.key }}\n  file_roots: [{0}]\n",
            certs.display()
        ),
    );
    let gw = Gateway::start_config(&yaml, listen, metrics);
    wait_for(admin_port);
    let der = generated.cert.der().to_vec();
    let ask = format!(
        "GET /status HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let answer = tls_request(admin_port, der, &ask).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"generation\""), "{answer}");
    // plain HTTP on the TLS port gets no answer
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(ask.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(!out.starts_with(b"HTTP/1.1 200"), "plain HTTP answered");
    }
    drop(gw);

    // an allow-list without this address: 403, token or not
    let (listen, metrics, admin_port) = (free_port(), free_port(), free_port());
    let yaml = config(listen, metrics, admin_port, &[&a]).replace(
        &format!("  admin_token: {TOKEN}\n"),
        &format!("  admin_token: {TOKEN}\n  admin_allow: [10.0.0.0/8]\n"),
    );
    let _gw = Gateway::start_config(&yaml, listen, metrics);
    wait_for(admin_port);
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        "GET",
        &format!("http://127.0.0.1:{admin_port}/status"),
        &[("authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "forbidden");
}

#[test]
fn undeclared_methods_get_405_with_allow_and_etags_are_opaque() {
    let a = echo("a");
    let admin = Admin::start(&[&a]);
    for (method, path, allow) in [
        ("PATCH", "/upstreams/users", "GET, PUT, DELETE"),
        ("DELETE", "/upstreams", "GET, POST"),
        ("PUT", "/status", "GET"),
        ("GET", "/reload", "POST"),
        ("POST", "/services/shop/apis/get_user", "GET, PUT, DELETE"),
    ] {
        let r = admin.call(method, path, None);
        assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        assert_eq!(r.json()["error"], "method_not_allowed");
    }
    assert_eq!(admin.call("GET", "/nowhere", None).status, 404);
    // any tag but the current one is stale, whatever it looks like; `*` matches any
    for tag in ["", "garbage", "\"999\"", "W/\"0\""] {
        let r = admin.call_with(
            "PUT",
            "/upstreams/users",
            Some(upstream_json("users", &[&a])),
            &[("if-match", tag)],
        );
        assert_eq!(r.status, 412, "If-Match {tag:?}: {}", r.body);
    }
    let r = admin.call_with(
        "PUT",
        "/upstreams/users",
        Some(upstream_json("users", &[&a])),
        &[("if-match", "*")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn the_admin_api_cannot_make_the_gateway_read_its_environment() {
    const CANARY: &str = "canary-value-5d81f0a2c7";
    const ALLOWED: &str = "allowed-secret-93be07d1";
    let a = echo("a");
    let admin = Admin::start_env(
        &[&a],
        "debug",
        &[
            ("GH_CANARY", CANARY),
            ("GATEHOUSE_SECRET_TEST_KEY", ALLOWED),
        ],
    );
    let api = |plugin: Value| {
        json!({ "name": "get_user", "path": "/users/{id}", "methods": ["GET"],
            "backend": { "upstream": "users" }, "plugins": [plugin] })
    };
    let refused = [
        // a key that is not secret would show the value (a response header to every client)
        (
            api(
                json!({ "name": "headers", "config": { "response": { "set": { "x-leak": "${GH_CANARY}" } } } }),
            ),
            "services[0].apis[0].plugins[0].config.response.set.x-leak",
            "only in a secret key",
        ),
        // an operator's secret key, but a variable the instance does not let configurations read
        (
            api(json!({ "name": "headers", "secret_keys": ["response.set"],
                "config": { "response": { "set": { "x-leak": "${GH_CANARY}" } } } })),
            "services[0].apis[0].plugins[0].config.response.set.x-leak",
            "GH_CANARY is not one this instance lets",
        ),
        // a standard secret key, the same variable
        (
            api(json!({ "name": "key-auth", "config": { "keys": ["${GH_CANARY}"] } })),
            "services[0].apis[0].plugins[0].config.keys[0]",
            "GH_CANARY is not one this instance lets",
        ),
    ];
    for (body, path, says) in refused {
        for target in [
            "/services/shop/apis/get_user?dry_run=true",
            "/services/shop/apis/get_user",
        ] {
            let r = admin.call("PUT", target, Some(body.clone()));
            assert_eq!(r.status, 400, "{target}: {}", r.body);
            assert!(!r.body.contains(CANARY), "{target}: {}", r.body);
            let problems = r.json()["problems"].clone();
            assert!(
                problems
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["path"] == path && p["message"].as_str().unwrap().contains(says)),
                "{target}: {problems:#}"
            );
        }
    }
    // nothing reached a client either
    assert!(admin.gw.get("/users/1").header("x-leak").is_none());
    // an allowed variable in a secret key serves, and never shows
    let ok =
        api(json!({ "name": "key-auth", "config": { "keys": ["${GATEHOUSE_SECRET_TEST_KEY}"] } }));
    let r = admin.call("PUT", "/services/shop/apis/get_user", Some(ok));
    assert_eq!(r.status, 200, "{}", r.body);
    let keyed = request(
        "GET",
        &admin.gw.url("/users/1"),
        &[("x-api-key", ALLOWED)],
        None,
    );
    assert_eq!(keyed.status, 200, "{}", keyed.body);
    let shown = admin.call("GET", "/config", None).body;
    assert!(!shown.contains(ALLOWED), "{shown}");
    let log = admin.gw.log();
    for value in [CANARY, ALLOWED] {
        assert!(!log.contains(value), "the log shows {value}:\n{log}");
    }
}

#[test]
fn a_write_that_would_fail_anyway_gets_its_failure_not_412() {
    let a = echo("a");
    let admin = Admin::start(&[&a]);
    let upstream = |name: &str| upstream_json(name, &[&a]);
    let api = json!({ "name": "x", "path": "/x", "backend": { "upstream": "users" } });
    let cases: Vec<(&str, &str, Option<Value>)> = vec![
        ("PUT", "/upstreams/bad!name", Some(upstream("bad!name"))),
        ("DELETE", "/upstreams/bad!name", None),
        ("DELETE", "/upstreams/no_such", None),
        ("GET", "/upstreams/no_such/apis", None),
        ("PUT", "/services/no_such/apis/x", Some(api.clone())),
        ("POST", "/services/no_such/apis", Some(api.clone())),
        ("DELETE", "/services/shop/apis/bad!name", None),
        ("DELETE", "/services/bad!name", None),
        ("PUT", "/upstreams/users", Some(json!({ "name": "users" }))),
    ];
    for (method, path, body) in cases {
        // dry runs: nothing changes whatever the answer
        let target = format!("{path}?dry_run=true");
        let plain = admin.call(method, &target, body.clone());
        let stale = admin.call_with(method, &target, body, &[("if-match", "\"999999\"")]);
        assert!(
            (400..500).contains(&plain.status) && plain.status != 412,
            "{method} {path} fails on its own: {} {}",
            plain.status,
            plain.body
        );
        assert_eq!(
            stale.status, plain.status,
            "{method} {path} with a stale If-Match: {}",
            stale.body
        );
    }
}
