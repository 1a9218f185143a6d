//! Test support: runs the real `gatehouse` binary on a config with ephemeral loopback ports,
//! real echo backends, and an HTTP client that reports statuses instead of failing on them.

#![allow(dead_code)]

pub mod etcd;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use gatehouse_echo::{Behavior, EchoConfig, EchoServer};

/// A port that was free a moment ago (the listener is closed before returning), never the same
/// one twice in a test process (the kernel may hand a just-closed port out again).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// An address where nothing listens: connections are refused.
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// An echo backend on an ephemeral loopback port.
pub fn echo(name: &str) -> EchoServer {
    EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoConfig::echo(name)).unwrap()
}

pub fn echo_with(name: &str, behavior: Behavior) -> EchoServer {
    EchoServer::start(
        "127.0.0.1:0".parse().unwrap(),
        EchoConfig::echo(name).with_behavior(behavior),
    )
    .unwrap()
}

/// A fresh folder for one test's files.
pub fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gatehouse-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

/// The standard head of a test config: a dedicated instance in `vpc-main` (127.0.0.0/8) with
/// the given listener and metrics ports.
pub fn instance_yaml(listen: u16, metrics: u16) -> String {
    format!(
        r#"instance:
  id: ins-test
  type: dedicated
  vpc: vpc-main
  listen: ["127.0.0.1:{listen}"]
  metrics: "127.0.0.1:{metrics}"
  threads: 2
vpcs:
  - id: vpc-main
    cidrs: ["127.0.0.0/8"]
"#
    )
}

/// A gateway with the admin API on `admin` (token `token`), one upstream `users` on `nodes`
/// (weight 1 each), and one API `shop.get_user`, `GET /users/{id}`.
pub fn admin_yaml(
    listen: u16,
    metrics: u16,
    admin: u16,
    token: &str,
    nodes: &[&EchoServer],
) -> String {
    let nodes: String = nodes
        .iter()
        .map(|n| {
            format!(
                "      - {{ host: 127.0.0.1, port: {}, weight: 1 }}\n",
                n.addr().port()
            )
        })
        .collect();
    let head = instance_yaml(listen, metrics).replace(
        "  threads: 2\n",
        &format!("  admin: \"127.0.0.1:{admin}\"\n  admin_token: {token}\n  threads: 2\n"),
    );
    format!(
        r#"{head}upstreams:
  - name: users
    vpc: vpc-main
    protocol: http
    nodes:
{nodes}services:
  - name: shop
    apis:
      - name: get_user
        path: /users/{{id}}
        methods: [GET]
        backend: {{ upstream: users }}
"#
    )
}

/// The `instance.file_roots` line that lets a gateway read `file` (its folder).
pub fn file_roots_for(file: impl AsRef<Path>) -> String {
    let dir = file.as_ref().parent().expect("a file in a folder");
    format!("  file_roots: [\"{}\"]\n", dir.display())
}

/// A running gateway process; killed when dropped.
pub struct Gateway {
    child: Child,
    pub base: String,
    pub metrics_url: String,
    pub dir: PathBuf,
    log: PathBuf,
    /// Environment variables set on the process (kept across [`Gateway::restart`]).
    env: Vec<(String, String)>,
}

impl Gateway {
    /// Starts `gatehouse run` on `body` (everything after the instance/VPC head, which
    /// [`instance_yaml`] provides) and waits until it answers.
    pub fn start(body: &str) -> Gateway {
        let (listen, metrics) = (free_port(), free_port());
        Self::start_config(
            &format!("{}{body}", instance_yaml(listen, metrics)),
            listen,
            metrics,
        )
    }

    /// Like [`Gateway::start`], with `instance_extra` (keys of `instance`, indented by two
    /// spaces, each line ending in a newline) added to the instance.
    pub fn start_with(instance_extra: &str, body: &str) -> Gateway {
        let (listen, metrics) = (free_port(), free_port());
        let head = instance_yaml(listen, metrics)
            .replace("  threads: 2\n", &format!("  threads: 2\n{instance_extra}"));
        Self::start_config(&format!("{head}{body}"), listen, metrics)
    }

    /// Starts `gatehouse run` on a complete config whose ports are given.
    pub fn start_config(yaml: &str, listen: u16, metrics: u16) -> Gateway {
        Self::start_config_logging(yaml, listen, metrics, "info")
    }

    /// Like [`Gateway::start_config`], logging at `level` (`RUST_LOG`).
    pub fn start_config_logging(yaml: &str, listen: u16, metrics: u16, level: &str) -> Gateway {
        Self::start_config_env(yaml, listen, metrics, level, &[])
    }

    /// Like [`Gateway::start_config_logging`], with environment variables `env` set on the
    /// process.
    pub fn start_config_env(
        yaml: &str,
        listen: u16,
        metrics: u16,
        level: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let dir = scratch_dir();
        let config = dir.join("gatehouse.yaml");
        std::fs::write(&config, yaml).unwrap();
        let log = dir.join("gatehouse.log");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = Command::new(binary())
            .args(["run", "-c"])
            .arg(&config)
            .env("RUST_LOG", level)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut gw = Gateway {
            child,
            base: format!("http://127.0.0.1:{listen}"),
            metrics_url: format!("http://127.0.0.1:{metrics}/metrics"),
            dir,
            log,
            env,
        };
        gw.wait_ready(listen, metrics);
        gw
    }

    fn wait_ready(&mut self, listen: u16, metrics: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "gatehouse exited with {status} before serving:\n{}",
                    self.log()
                );
            }
            let up = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up(listen) && up(metrics) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gatehouse did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL), keeping its folder.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded by `within`) for the process to exit; its status, `None` if it did not.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts the gateway again on the same folder and configuration file.
    pub fn restart(mut self, listen: u16, metrics: u16) -> Gateway {
        self.kill();
        let dir = std::mem::replace(&mut self.dir, PathBuf::new());
        let config = dir.join("gatehouse.yaml");
        let child = Command::new(binary())
            .args(["run", "-c"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap();
        let mut gw = Gateway {
            child,
            base: self.base.clone(),
            metrics_url: self.metrics_url.clone(),
            dir,
            log: self.log.clone(),
            env: std::mem::take(&mut self.env),
        };
        gw.wait_ready(listen, metrics);
        gw
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the gateway process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> Reply {
        request("GET", &self.url(path), &[], None)
    }

    /// The value of one sample of the metrics endpoint, e.g.
    /// `gatehouse_upstream_retries_total{upstream="u"}`; 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = request("GET", &self.metrics_url, &[], None).body;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    pub fn metrics_text(&self) -> String {
        request("GET", &self.metrics_url, &[], None).body
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A response as a client sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The node an echo backend reported.
    pub fn node(&self) -> String {
        self.json()["node"].as_str().unwrap_or_default().to_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// Sends one request; statuses are returned, not turned into errors.
/// An admin API call to `admin` (its base URL) with bearer `token`; `body` is sent as JSON.
pub fn admin_request(
    admin: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    extra: &[(&str, &str)],
) -> Reply {
    let auth = format!("Bearer {token}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    let body = body.map(|b| b.to_string());
    request(method, &format!("{admin}{path}"), &headers, body.as_deref())
}

pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    thread_local! {
        static AGENT: ureq::Agent = agent();
    }
    AGENT.with(|agent| {
        let mut builder = http::Request::builder().method(method).uri(url);
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        let result = match body {
            Some(b) => agent.run(builder.body(b.to_owned()).unwrap()),
            None => agent.run(builder.body(()).unwrap()),
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let mut body = String::new();
        let _ = resp.body_mut().as_reader().read_to_string(&mut body);
        Reply {
            status: resp.status().as_u16(),
            headers,
            body,
        }
    })
}

/// Runs `gatehouse` with `args` and returns its exit status and output.
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A finished process's standard output followed by its standard error, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Path of the repository's shipped config folder.
pub fn shipped_config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

/// One upstream on `backend` and one API `/users/{id}` (any method) with `plugins` (YAML list
/// items, already indented for the `plugins:` key), plus a plugin-free API `/plain`.
pub fn with_plugins(backend: &EchoServer, plugins: &str) -> String {
    format!(
        r#"upstreams:
  - name: u
    vpc: vpc-main
    protocol: http
    nodes:
      - {{ host: 127.0.0.1, port: {port}, weight: 1 }}
services:
  - name: shop
    apis:
      - name: get_user
        path: /users/{{id}}
        backend: {{ upstream: u }}
        plugins:
{plugins}
      - name: plain
        path: /plain
        backend: {{ upstream: u }}
"#,
        port = backend.addr().port()
    )
}

/// A plugin built into `plugins/dist/` (a component, or a Proxy-Wasm filter).
pub fn shipped_plugin(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../plugins/dist/{name}.wasm"))
        .canonicalize()
        .unwrap()
}
