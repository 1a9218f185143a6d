//! gRPC through the gateway, end to end with grpcio (Python) on both sides: a unary call and a
//! server stream over HTTP/2 without TLS (h2c) from the client to the gateway and from the
//! gateway to the node, and the gateway's own errors as gRPC statuses. The Python with grpcio is
//! `target/test-venv` (`.ci/run` installs it) or `GATEHOUSE_TEST_PYTHON`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use support::*;

fn python() -> String {
    std::env::var("GATEHOUSE_TEST_PYTHON").unwrap_or_else(|_| {
        let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/test-venv/bin/python");
        assert!(
            venv.exists(),
            "these tests need Python with grpcio: python3 -m venv target/test-venv && target/test-venv/bin/pip install grpcio (or set GATEHOUSE_TEST_PYTHON)"
        );
        venv.display().to_string()
    })
}

fn peer() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/grpc/peer.py")
        .display()
        .to_string()
}

/// The gRPC server, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(port: u16) -> Server {
    let mut child = Command::new(python())
        .args([peer().as_str(), "server", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    Server(child)
}

fn run(args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(peer())
        .args(args)
        .output()
        .expect("python runs");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("{text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn gateway(node_port: u16) -> Gateway {
    Gateway::start_with(
        "  http: { h2c: true }\n",
        &format!(
            r#"upstreams:
  - name: grpc
    vpc: vpc-main
    protocol: http
    http2: true
    nodes:
      - {{ host: 127.0.0.1, port: {node_port}, weight: 1 }}
services:
  - name: demo
    apis:
      - {{ name: echo, path: "/demo.Echo/{{method}}", methods: [POST], backend: {{ upstream: grpc }} }}
"#
        ),
    )
}

#[test]
fn unary_and_server_streaming_calls_pass_through() {
    let port = free_port();
    let _server = server(port);
    let gw = gateway(port);
    let target = gw.base.trim_start_matches("http://").to_owned();
    let result = run(&["client", &target]);
    assert_eq!(result["unary"], "echo:hello");
    assert_eq!(
        result["stream"],
        serde_json::json!(["part0:hi", "part1:hi", "part2:hi"])
    );
    assert_eq!(
        gw.metric(r#"gatehouse_requests_total{api="echo",service="demo",status_class="2xx",upstream="grpc"}"#),
        2.0
    );
}

#[test]
fn the_gateways_own_errors_are_grpc_statuses() {
    let port = free_port();
    let gw = gateway(port);
    let target = gw.base.trim_start_matches("http://").to_owned();
    // no API serves this method
    let unknown = run(&["status", &target, "/other.Service/Call"]);
    assert_eq!(unknown["code"], "UNIMPLEMENTED", "{unknown}");
    assert!(
        unknown["details"].as_str().unwrap().contains("not_found"),
        "{unknown}"
    );
    // the node is down
    let down = run(&["status", &target, "/demo.Echo/Unary"]);
    assert_eq!(down["code"], "UNAVAILABLE", "{down}");
    assert!(
        down["details"].as_str().unwrap().contains("bad_gateway"),
        "{down}"
    );
}
