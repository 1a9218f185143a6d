//! The command line: `validate`, `run` on bad input, `--version`.

mod support;

use support::*;

#[test]
fn every_shipped_config_validates() {
    let dir = shipped_config_dir();
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(!files.is_empty());
    for file in files {
        let (status, out, err) = run_cli(&["validate", "-c", &file]);
        assert!(status.success(), "{file}: {err}");
        assert!(out.contains("valid"), "{out}");
    }
}

const BROKEN: &str = r#"
instance: { id: t, type: dedicated, vpc: vpc-main, listen: ["127.0.0.1:1"] }
vpcs: [{ id: vpc-main, cidrs: ["10.0.0.0/16"] }]
upstreams:
  - name: users
    vpc: vpc-main
    protocol: http
    retries: 0
    nodes:
      - { host: 10.0.0.1, port: 8080, weight: 1 }
      - { host: 10.0.0.2, port: 8080, weight: 150 }
      - { host: 10.0.0.3, port: 70000, weight: 1 }
services:
  - name: shop
    apis:
      - { name: a, path: /x, backend: { upstream: nobody } }
"#;

#[test]
fn validate_reports_every_problem_with_its_path_and_fails() {
    let dir = scratch_dir();
    let file = dir.join("broken.yaml");
    std::fs::write(&file, BROKEN).unwrap();
    let (status, out, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    for expected in [
        "upstreams[0].retries: 0 is out of range 1..=100",
        "upstreams[0].nodes[1].weight: 150 is out of range 0..=100",
        "upstreams[0].nodes[2].port: 70000 is out of range 1..=65535",
        "services[0].apis[0].backend.upstream: upstream \"nobody\" is not declared (fix: use one of: users)",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.contains("4 problems"), "{err}");
}

#[test]
fn validate_checks_referenced_files() {
    let dir = scratch_dir();
    let file = dir.join("tls.yaml");
    std::fs::write(
        &file,
        r#"
instance: { id: t, type: dedicated, vpc: v, listen: ["127.0.0.1:1"] }
vpcs: [{ id: v, cidrs: ["10.0.0.0/16"] }]
upstreams:
  - { name: s, vpc: v, protocol: https, tls: { ca_file: missing-ca.pem }, nodes: [{ host: 10.0.0.1, port: 443 }] }
"#,
    )
    .unwrap();
    let (status, _, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("upstreams[0].tls.ca_file:") && err.contains("missing-ca.pem cannot be read"),
        "{err}"
    );
    assert!(err.contains("missing-ca.pem"), "{err}");
}

#[test]
fn run_refuses_an_invalid_config_and_lists_the_problems() {
    let dir = scratch_dir();
    let file = dir.join("broken.yaml");
    std::fs::write(&file, BROKEN).unwrap();
    let (status, _, err) = run_cli(&["run", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("upstreams[0].nodes[1].weight"), "{err}");
}

#[test]
fn run_reports_a_missing_file() {
    let (status, _, err) = run_cli(&["run", "-c", "/nonexistent/gatehouse.yaml"]);
    assert_eq!(status.code(), Some(2));
    assert!(
        err.contains("cannot read config file /nonexistent/gatehouse.yaml"),
        "{err}"
    );
}

#[test]
fn run_reports_a_busy_port_clearly() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = scratch_dir();
    let file = dir.join("busy.yaml");
    std::fs::write(
        &file,
        format!("{}services: []\n", instance_yaml(port, free_port())),
    )
    .unwrap();
    let (status, _, err) = run_cli(&["run", "-c", file.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn version_and_help_are_available() {
    let (status, out, _) = run_cli(&["--version"]);
    assert!(status.success());
    assert!(out.starts_with("gatehouse "), "{out}");
    let (status, out, _) = run_cli(&["--help"]);
    assert!(status.success());
    for cmd in ["run", "validate", "demo"] {
        assert!(out.contains(cmd), "{out}");
    }
}

/// The `THP_enabled` line of a process's status.
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .expect("the kernel reports THP_enabled")
        .trim()
        .to_owned()
}

#[test]
fn a_serving_gateway_keeps_to_small_pages_unless_the_allocator_is_told_otherwise() {
    let node = echo("n1");
    let body = format!(
        "upstreams:\n  - {{ name: u, vpc: vpc-main, protocol: http, nodes: [{{ host: 127.0.0.1, port: {} }}] }}\n",
        node.addr().port()
    );
    let small = Gateway::start(&body);
    assert_eq!(thp_enabled(small.pid()), "0");
    let (listen, metrics) = (free_port(), free_port());
    let huge = Gateway::start_config_env(
        &format!("{}{body}", instance_yaml(listen, metrics)),
        listen,
        metrics,
        "info",
        &[("MIMALLOC_ALLOW_THP", "1")],
    );
    assert_eq!(thp_enabled(huge.pid()), "1");
}
