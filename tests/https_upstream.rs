//! HTTPS upstreams: TLS to the node with SNI and certificate verification against a test CA.

mod support;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use support::*;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// A test CA and a backend certificate it signed for `names`.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    leaf_pem: String,
    key_pem: String,
}

fn pki(names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Gatehouse Test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        chain: vec![leaf.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        leaf_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// A TLS echo backend; returns its address and the SNI names it was asked for.
struct TlsBackend {
    addr: SocketAddr,
    _thread: std::thread::JoinHandle<()>,
}

fn tls_backend(pki: &Pki, name: &'static str) -> TlsBackend {
    tls_backend_with(pki, name, None)
}

/// A TLS echo backend that, given `client_ca`, requires a client certificate it signed.
fn tls_backend_with(
    pki: &Pki,
    name: &'static str,
    client_ca: Option<CertificateDer<'static>>,
) -> TlsBackend {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier =
                tokio_rustls::rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let stats = Arc::new(gatehouse_echo::Stats::default());
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, stats) = (acceptor.clone(), stats.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                        let config = EchoConfig::echo(format!("{name} sni={sni}"));
                        let _ = gatehouse_echo::serve_connection(tls, &config, &stats).await;
                    }
                });
            }
        });
    });
    TlsBackend {
        addr,
        _thread: thread,
    }
}

fn https_config(dir_ca: &str, node: SocketAddr, tls: &str) -> String {
    format!(
        r#"upstreams:
  - name: secure
    vpc: vpc-main
    protocol: https
    retries: 1
    tls: {tls}
    nodes:
      - {{ host: 127.0.0.1, port: {port}, weight: 1 }}
services:
  - name: shop
    apis:
      - {{ name: get_user, path: "/users/{{id}}", backend: {{ upstream: secure }} }}
"#,
        port = node.port(),
        tls = tls.replace("CA", dir_ca)
    )
}

/// Writes the CA next to where the gateway's config will be and returns its absolute path.
fn write_ca(pki: &Pki) -> String {
    let dir = scratch_dir();
    let path = dir.join("ca.pem");
    std::fs::write(&path, &pki.ca_pem).unwrap();
    path.display().to_string()
}

#[test]
fn https_node_is_reached_with_sni_and_a_verified_certificate() {
    let pki = pki(&["users.internal"]);
    let backend = tls_backend(&pki, "tls");
    let ca = write_ca(&pki);
    let gw = Gateway::start_with(
        &file_roots_for(&ca),
        &https_config(
            &ca,
            backend.addr,
            "{ verify: true, ca_file: CA, sni: users.internal }",
        ),
    );
    let r = gw.get("/users/1");
    assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log());
    assert_eq!(r.node(), "tls sni=users.internal");
}

#[test]
fn a_certificate_for_another_name_is_rejected() {
    let pki = pki(&["users.internal"]);
    let backend = tls_backend(&pki, "tls");
    let ca = write_ca(&pki);
    let gw = Gateway::start_with(
        &file_roots_for(&ca),
        &https_config(&ca, backend.addr, "{ ca_file: CA, sni: billing.internal }"),
    );
    let r = gw.get("/users/1");
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        r.json()["message"].as_str().unwrap().contains("TLS"),
        "{}",
        r.body
    );
    let tls_errors = format!(
        r#"gatehouse_upstream_attempts_total{{node="{}",outcome="tls_error",upstream="secure"}}"#,
        backend.addr
    );
    assert!(gw.metric(&tls_errors) >= 1.0, "{}", gw.metrics_text());
}

#[test]
fn an_untrusted_ca_is_rejected_unless_verification_is_turned_off() {
    let pki = pki(&["users.internal"]);
    let other = self::pki(&["users.internal"]);
    let backend = tls_backend(&pki, "tls");
    let wrong_ca = write_ca(&other);
    let gw = Gateway::start_with(
        &file_roots_for(&wrong_ca),
        &https_config(
            &wrong_ca,
            backend.addr,
            "{ ca_file: CA, sni: users.internal }",
        ),
    );
    assert_eq!(gw.get("/users/1").status, 502);
    drop(gw);
    let gw = Gateway::start_with(
        &file_roots_for(&wrong_ca),
        &https_config(
            &wrong_ca,
            backend.addr,
            "{ verify: false, sni: users.internal }",
        ),
    );
    assert_eq!(
        gw.get("/users/1").status,
        200,
        "verify: false skips verification when asked"
    );
}

#[test]
fn sni_defaults_to_the_host_header_host() {
    let pki = pki(&["users.internal"]);
    let backend = tls_backend(&pki, "tls");
    let ca = write_ca(&pki);
    let config = https_config(&ca, backend.addr, "{ ca_file: CA }").replace(
        "    retries: 1\n",
        "    retries: 1\n    host_header: users.internal:8443\n",
    );
    let gw = Gateway::start_with(&file_roots_for(&ca), &config);
    let r = gw.get("/users/1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.node(), "tls sni=users.internal");
    assert_eq!(r.json()["host"], "users.internal:8443");
}

#[test]
fn probes_use_the_upstreams_tls_settings() {
    let pki = pki(&["users.internal"]);
    let other = self::pki(&["users.internal"]);
    let backend = tls_backend(&pki, "tls");
    let probing = |ca: &str| {
        https_config(ca, backend.addr, "{ ca_file: CA, sni: users.internal }").replace(
            "    retries: 1\n",
            "    retries: 1\n    health_check: { active: true, interval: 100ms, timeout: 1s }\n",
        )
    };
    let healthy = format!(
        r#"gatehouse_upstream_node_healthy{{node="{}",upstream="secure"}}"#,
        backend.addr
    );
    let probes = |result: &str| {
        format!(
            r#"gatehouse_upstream_probes_total{{node="{}",result="{result}",upstream="secure"}}"#,
            backend.addr
        )
    };
    let wait = |gw: &Gateway, what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while gw.metric(what) < 1.0 {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    // the right CA: probes over TLS succeed, with no request sent
    let ca = write_ca(&pki);
    let gw = Gateway::start_with(&file_roots_for(&ca), &probing(&ca));
    wait(&gw, &probes("healthy"));
    assert_eq!(gw.metric(&healthy), 1.0);
    drop(gw);
    // a CA that did not sign the node's certificate: the probe's handshake fails, as a request's
    // would, and the node is taken out before any request meets it
    let wrong = write_ca(&other);
    let gw = Gateway::start_with(&file_roots_for(&wrong), &probing(&wrong));
    wait(&gw, &probes("connect_error"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while gw.metric(&healthy) != 0.0 {
        assert!(std::time::Instant::now() < deadline, "the node stayed in");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(gw.metric(&probes("healthy")), 0.0);
}

#[test]
fn a_node_requiring_a_client_certificate_is_served_only_with_one() {
    let server = pki(&["users.internal"]);
    let client = pki(&["gatehouse-edge"]);
    let backend = tls_backend_with(&server, "mtls", Some(client.ca_der.clone()));
    let ca = write_ca(&server);
    let dir = std::path::Path::new(&ca).parent().unwrap().to_owned();
    std::fs::write(dir.join("client.pem"), &client.leaf_pem).unwrap();
    std::fs::write(dir.join("client.key"), &client.key_pem).unwrap();
    // without a client certificate the node refuses the handshake
    let gw = Gateway::start_with(
        &file_roots_for(&ca),
        &https_config(&ca, backend.addr, "{ ca_file: CA, sni: users.internal }"),
    );
    assert_eq!(gw.get("/users/1").status, 502);
    drop(gw);
    let gw = Gateway::start_with(
        &file_roots_for(&ca),
        &https_config(
            &ca,
            backend.addr,
            &format!(
                "{{ ca_file: CA, sni: users.internal, client_cert: {}, client_key: {} }}",
                dir.join("client.pem").display(),
                dir.join("client.key").display()
            ),
        ),
    );
    let r = gw.get("/users/1");
    assert_eq!(r.status, 200, "{}\n{}", r.body, gw.log());
    assert_eq!(r.node(), "mtls sni=users.internal");
    // a key that is not the certificate's is refused with its path
    let file = gw.dir.join("bad.yaml");
    std::fs::write(dir.join("other.key"), &server.key_pem).unwrap();
    let yaml = std::fs::read_to_string(gw.dir.join("gatehouse.yaml"))
        .unwrap()
        .replace("client.key", "other.key");
    std::fs::write(&file, yaml).unwrap();
    let (status, _, err) = run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("upstreams[0].tls.client_key") && err.contains("is not the key"),
        "{err}"
    );
}
