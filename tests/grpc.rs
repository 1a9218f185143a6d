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
    server_with(port, &[])
}

/// The gRPC server; with `tls` (certificate and key files) over TLS.
fn server_with(port: u16, tls: &[&str]) -> Server {
    let mut child = Command::new(python())
        .args([peer().as_str(), "server", &port.to_string()])
        .args(tls)
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
    gateway_to(node_port, "http", "", "")
}

/// A gateway (h2c on its plain listener) with one gRPC API on an upstream of `protocol`.
fn gateway_to(node_port: u16, protocol: &str, tls: &str, instance_extra: &str) -> Gateway {
    Gateway::start_with(
        &format!("  http: {{ h2c: true }}\n{instance_extra}"),
        &format!(
            r#"upstreams:
  - name: grpc
    vpc: vpc-main
    protocol: {protocol}
    http2: true
{tls}
    nodes:
      - {{ host: 127.0.0.1, port: {node_port}, weight: 1 }}
services:
  - name: demo
    apis:
      - {{ name: echo, path: "/demo.Echo/{{method}}", methods: [POST], grpc: true, backend: {{ upstream: grpc }} }}
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

#[test]
fn a_node_speaking_http2_over_tls_is_reached_by_alpn() {
    // a certificate for the node, from a test CA the gateway trusts
    let dir = scratch_dir();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["grpc.internal".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (ca_file, cert, key_file) = (
        dir.join("ca.pem"),
        dir.join("node.pem"),
        dir.join("node.key"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let port = free_port();
    // the grpcio server speaks only HTTP/2, which it offers by ALPN
    let _server = server_with(port, &[cert.to_str().unwrap(), key_file.to_str().unwrap()]);
    let gw = gateway_to(
        port,
        "https",
        &format!(
            "    tls: {{ ca_file: {}, sni: grpc.internal }}\n",
            ca_file.display()
        ),
        &file_roots_for(&ca_file),
    );
    let target = gw.base.trim_start_matches("http://").to_owned();
    let result = run(&["client", &target]);
    assert_eq!(result["unary"], "echo:hello", "{result}");
    assert_eq!(
        result["stream"],
        serde_json::json!(["part0:hi", "part1:hi", "part2:hi"])
    );
}

#[test]
fn a_grpc_call_on_an_api_whose_plugins_read_bodies_is_refused_before_the_node() {
    // an API not marked grpc: true (which would refuse the plugin at load) meets a gRPC call;
    // no node listens: a call that got past the plugins would be UNAVAILABLE
    let port = free_port();
    let gw = Gateway::start_with(
        "  http: { h2c: true }\n",
        &format!(
            r#"upstreams:
  - {{ name: grpc, vpc: vpc-main, protocol: http, http2: true, nodes: [{{ host: 127.0.0.1, port: {port} }}] }}
services:
  - name: demo
    apis:
      - name: echo
        path: "/demo.Echo/{{method}}"
        methods: [POST]
        backend: {{ upstream: grpc }}
        plugins:
          - {{ name: json-validator }}
"#
        ),
    );
    let target = gw.base.trim_start_matches("http://").to_owned();
    let refused = run(&["status", &target, "/demo.Echo/Unary"]);
    assert_eq!(refused["code"], "UNIMPLEMENTED", "{refused}");
    assert!(
        refused["details"]
            .as_str()
            .unwrap()
            .contains("unsupported_media_type"),
        "{refused}"
    );
}
