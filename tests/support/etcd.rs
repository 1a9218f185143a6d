//! Test support for fleets: a real etcd (v3) — one member or a three-member cluster; a member
//! may serve TLS and require client certificates (`EtcdPki`, `Etcd::start_tls`) or users
//! (`Etcd::enable_auth`) — on free loopback ports with its data on tmpfs, `etcdctl` helpers, a
//! Gatehouse instance in fleet mode (`FleetGateway`), bounded polling and a client that reports
//! transport errors instead of panicking.
//!
//! Every process started here dies with its owner (`Drop`), and every wait is bounded.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{admin_request, binary, free_port, scratch_dir, Gateway, Reply};

/// How long a member (or a cluster) may take to become healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

/// Where etcd data goes: tmpfs (`/dev/shm`) when there is one, else the temporary folder.
fn data_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A fresh folder for one etcd member.
fn fresh_data_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = data_base().join(format!(
        "gatehouse-etcd-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The last `n` lines of a log file (for panic messages).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `etcdctl` (API v3) against `endpoints`, with bounded dial and command timeouts; `flags`
/// are its connection flags (`--cacert`, `--cert`, `--key`, `--user`), if any.
fn etcdctl_on(
    endpoints: &[String],
    flags: &[String],
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=5s")
        .args(flags)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        None => cmd.stdin(Stdio::null()).output().expect("etcdctl runs"),
        Some(input) => {
            cmd.stdin(Stdio::piped());
            let mut child = cmd.spawn().expect("etcdctl runs");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Decodes standard base64 (with or without padding), as `etcdctl -w json` writes keys and values.
pub fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Quotes a string for one `etcdctl txn` line (Go `%q` syntax: JSON string escaping is a subset).
fn txn_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A test PKI for an etcd that serves TLS and authenticates clients by certificate: a CA, a
/// server certificate for `127.0.0.1` and `localhost`, and a client certificate, all signed by
/// the CA, as PEM files in one folder.
pub struct EtcdPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdPki {
    /// Generates the CA and both certificates into `dir` (which must exist).
    pub fn generate(dir: &Path) -> EtcdPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Gatehouse Test etcd CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |names: &[&str], common_name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) = leaf(&["127.0.0.1", "localhost"], "etcd");
        let (client_pem, client_key_pem) = leaf(&[], "gatehouse");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        EtcdPki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server-key.pem", &server_key_pem),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client-key.pem", &client_key_pem),
        }
    }
}

/// The TLS files of a member that serves TLS and requires client certificates.
struct ServerTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// One etcd member: a process, its ports and its data folder.
pub struct Etcd {
    name: String,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Serves `https://` client URLs and requires a client certificate signed by the CA.
    tls: Option<ServerTls>,
    /// The connection flags of every `etcdctl` call on this member (certificates, user).
    ctl_flags: Vec<String>,
}

impl Etcd {
    /// A single-member etcd on two free loopback ports, healthy when this returns.
    pub fn start() -> Etcd {
        Self::start_member(None, Vec::new())
    }

    /// Like [`Etcd::start`], serving `https://` client URLs with `pki`'s server certificate and
    /// requiring client certificates signed by its CA (`--client-cert-auth`). `etcdctl` calls of
    /// the support present `pki`'s client certificate.
    pub fn start_tls(pki: &EtcdPki) -> Etcd {
        let tls = ServerTls {
            ca: pki.ca.clone(),
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
        };
        let flags = vec![
            format!("--cacert={}", pki.ca.display()),
            format!("--cert={}", pki.client_cert.display()),
            format!("--key={}", pki.client_key.display()),
        ];
        Self::start_member(Some(tls), flags)
    }

    fn start_member(tls: Option<ServerTls>, ctl_flags: Vec<String>) -> Etcd {
        let (client_port, peer_port) = (free_port(), free_port());
        let name = format!("etcd{client_port}");
        let initial_cluster = format!("{name}=http://127.0.0.1:{peer_port}");
        let mut etcd = Etcd::new(name, client_port, peer_port, initial_cluster);
        etcd.tls = tls;
        etcd.ctl_flags = ctl_flags;
        etcd.spawn();
        etcd.wait_healthy();
        etcd
    }

    fn new(name: String, client_port: u16, peer_port: u16, initial_cluster: String) -> Etcd {
        let dir = fresh_data_dir();
        let log = dir.join("etcd.log");
        Etcd {
            name,
            client_port,
            peer_port,
            initial_cluster,
            dir,
            log,
            child: None,
            tls: None,
            ctl_flags: Vec::new(),
        }
    }

    /// Turns authentication on: creates `root` with `root_password`, and `user` with `password`
    /// and a role granting read and write on every key that starts with `prefix`. Every later
    /// `etcdctl` call of the support authenticates as `root`.
    pub fn enable_auth(&mut self, root_password: &str, user: &str, password: &str, prefix: &str) {
        let role = format!("{user}-role");
        let (root, account) = (
            format!("root:{root_password}"),
            format!("{user}:{password}"),
        );
        let steps: [&[&str]; 6] = [
            &["user", "add", &root],
            &["role", "add", &role],
            &[
                "role",
                "grant-permission",
                "--prefix=true",
                &role,
                "readwrite",
                prefix,
            ],
            &["user", "add", &account],
            &["user", "grant-role", user, &role],
            &["auth", "enable"],
        ];
        for step in &steps {
            let out = self.etcdctl(step);
            assert!(
                out.status.success(),
                "etcdctl {}: {}",
                step.join(" "),
                text(&out)
            );
        }
        self.ctl_flags.push(format!("--user=root:{root_password}"));
    }

    /// Makes etcd forget every auth token it handed out, as when they expire
    /// (`--auth-token-ttl`): authentication is turned off and on again (as `root`).
    pub fn invalidate_auth_tokens(&self) {
        for step in [&["auth", "disable"], &["auth", "enable"]] {
            let out = self.etcdctl(step);
            assert!(
                out.status.success(),
                "etcdctl {}: {}",
                step.join(" "),
                text(&out)
            );
        }
    }

    /// Runs `etcdctl` on this member without any credentials (no user, no client certificate),
    /// giving up after a second (a refused TLS handshake is retried until then).
    pub fn etcdctl_anonymous(&self, args: &[&str]) -> Output {
        let mut flags: Vec<String> = self
            .ctl_flags
            .iter()
            .filter(|f| f.starts_with("--cacert="))
            .cloned()
            .collect();
        flags.extend(["--dial-timeout=1s".into(), "--command-timeout=1s".into()]);
        etcdctl_on(&[self.endpoint()], &flags, args, None)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd {} already runs", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "gatehouse-test"])
            // relaxed timings: a loaded 2-core machine must not trigger elections by itself
            .args(["--heartbeat-interval", "100"])
            .args(["--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill etcd if the
        // test thread that started it goes away without dropping it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(
            cmd.spawn()
                .expect("the etcd binary (package etcd-server) runs"),
        );
    }

    /// Waits (bounded) until `etcdctl endpoint health` succeeds on this member.
    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "etcd {} exited with {status} before being healthy:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            let out = etcdctl_on(
                &[self.endpoint()],
                &self.ctl_flags,
                &["endpoint", "health"],
                None,
            );
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd {} not healthy within {HEALTHY_WITHIN:?}: {}\nlog:\n{}",
                self.name,
                text(&out),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT` (`https://` for a member started with TLS), the client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The last lines of this member's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }

    /// Whether the process runs (it was started and not stopped or killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the member (SIGTERM, SIGKILL after 5 s) and waits for it; keeps the data folder.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Freezes the member (SIGSTOP): its connections stay open and nothing is answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen member go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: sending a signal to our own child.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// Kills the member at once (SIGKILL) and waits for it; keeps the data folder.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member again on the same ports and data folder and waits until it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_healthy();
    }

    /// Runs `etcdctl` (API v3) with `--endpoints` of this member.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_on(&[self.endpoint()], &self.ctl_flags, args, None)
    }

    /// Puts `key` = `value`; panics on failure.
    pub fn put(&self, key: &str, value: &str) {
        put_on(&[self.endpoint()], &self.ctl_flags, key, value);
    }

    /// The value of `key`, `None` when absent.
    pub fn get(&self, key: &str) -> Option<String> {
        get_on(&[self.endpoint()], &self.ctl_flags, key)
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    }

    /// The `mod_revision` of `key`, `None` when absent.
    pub fn mod_revision(&self, key: &str) -> Option<i64> {
        get_on(&[self.endpoint()], &self.ctl_flags, key).map(|kv| kv.mod_revision)
    }

    /// Every key under `prefix` with its value, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Vec<Kv> {
        get_prefix_on(&[self.endpoint()], &self.ctl_flags, prefix)
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        revision_on(&[self.endpoint()], &self.ctl_flags)
    }

    /// Compacts the history up to the current revision.
    pub fn compact_to_latest(&self) {
        let rev = self.revision().to_string();
        let out = self.etcdctl(&["compaction", &rev]);
        assert!(out.status.success(), "compaction {rev}: {}", text(&out));
    }

    /// Puts every pair in one transaction (no comparison); panics unless it succeeded.
    pub fn txn_put(&self, puts: &[(&str, &str)]) {
        txn_put_on(&[self.endpoint()], &self.ctl_flags, puts);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One key of `etcdctl get -w json`.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

impl Kv {
    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

fn kvs(json: &Value) -> Vec<Kv> {
    json["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| Kv {
                    key: String::from_utf8_lossy(&base64_decode(kv["key"].as_str().unwrap_or("")))
                        .into_owned(),
                    value: base64_decode(kv["value"].as_str().unwrap_or("")),
                    mod_revision: kv["mod_revision"].as_i64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn json_of(out: &Output, what: &str) -> Value {
    assert!(out.status.success(), "etcdctl {what}: {}", text(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("etcdctl {what}: not JSON ({e}): {}", text(out)))
}

fn put_on(endpoints: &[String], flags: &[String], key: &str, value: &str) {
    let out = etcdctl_on(endpoints, flags, &["put", "--", key, value], None);
    assert!(out.status.success(), "etcdctl put {key}: {}", text(&out));
}

fn get_on(endpoints: &[String], flags: &[String], key: &str) -> Option<Kv> {
    let out = etcdctl_on(endpoints, flags, &["get", "-w", "json", "--", key], None);
    kvs(&json_of(&out, &format!("get {key}")))
        .into_iter()
        .next()
}

fn get_prefix_on(endpoints: &[String], flags: &[String], prefix: &str) -> Vec<Kv> {
    let out = etcdctl_on(
        endpoints,
        flags,
        &["get", "--prefix", "-w", "json", "--", prefix],
        None,
    );
    kvs(&json_of(&out, &format!("get --prefix {prefix}")))
}

fn revision_on(endpoints: &[String], flags: &[String]) -> i64 {
    let out = etcdctl_on(
        endpoints,
        flags,
        &["get", "-w", "json", "--", "/gatehouse-tests/revision-probe"],
        None,
    );
    json_of(&out, "get (revision)")["header"]["revision"]
        .as_i64()
        .expect("a revision in the header")
}

fn txn_put_on(endpoints: &[String], flags: &[String], puts: &[(&str, &str)]) {
    // etcdctl txn reads: compares, blank line, success requests, blank line, failure requests
    let mut input = String::from("\n");
    for (k, v) in puts {
        input.push_str(&format!("put {} {}\n", txn_quote(k), txn_quote(v)));
    }
    input.push_str("\n\n");
    let out = etcdctl_on(endpoints, flags, &["txn"], Some(&input));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("SUCCESS"),
        "etcdctl txn: {}",
        text(&out)
    );
}

/// A cluster of etcd members on loopback, one `--initial-cluster` for all.
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts `n` members and waits (bounded) until every one is healthy.
    pub fn start(n: usize) -> EtcdCluster {
        assert!(n >= 1);
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let names: Vec<String> = ports.iter().map(|(c, _)| format!("etcd{c}")).collect();
        let initial_cluster = names
            .iter()
            .zip(&ports)
            .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = names
            .into_iter()
            .zip(&ports)
            .map(|(name, &(client, peer))| Etcd::new(name, client, peer, initial_cluster.clone()))
            .collect();
        // all at once: each member waits for the others to form the first quorum
        for m in &mut members {
            m.spawn();
        }
        for m in &mut members {
            m.wait_healthy();
        }
        EtcdCluster { members }
    }

    /// The client URLs of every member, dead or alive.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.running())
            .map(Etcd::endpoint)
            .collect()
    }

    /// Kills member `i` at once (SIGKILL), keeping its data.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.members[i].restart();
    }

    /// Stops every member (their data kept), then starts them all again and waits until each
    /// is healthy: a whole-cluster restart.
    pub fn restart_all(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
        for m in &mut self.members {
            m.spawn();
        }
        for m in &mut self.members {
            m.wait_healthy();
        }
    }

    /// The index of the member that is the leader now, if the live members agree on one.
    pub fn leader(&self) -> Option<usize> {
        let out = etcdctl_on(
            &self.live_endpoints(),
            &[],
            &["endpoint", "status", "-w", "json"],
            None,
        );
        let json: Value = serde_json::from_slice(&out.stdout).ok()?;
        json.as_array()?.iter().find_map(|s| {
            let status = &s["Status"];
            let leader = status["leader"].as_u64()?;
            if leader != status["header"]["member_id"].as_u64()? {
                return None;
            }
            let endpoint = s["Endpoint"].as_str()?;
            self.members.iter().position(|m| m.endpoint() == endpoint)
        })
    }

    /// Waits (bounded) until at least a quorum of members reports healthy.
    pub fn wait_quorum(&self) {
        let quorum = self.members.len() / 2 + 1;
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            let out = etcdctl_on(&self.endpoints(), &[], &["endpoint", "health"], None);
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let healthy = all.lines().filter(|l| l.contains(" is healthy")).count();
            if healthy >= quorum {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd cluster without quorum within {HEALTHY_WITHIN:?}: {all}\nlogs:\n{}",
                self.members
                    .iter()
                    .map(|m| format!("--- {}:\n{}", m.name, m.log_tail()))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `etcdctl` against the live members.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_on(&self.live_endpoints(), &[], args, None)
    }

    pub fn put(&self, key: &str, value: &str) {
        put_on(&self.live_endpoints(), &[], key, value);
    }

    pub fn get(&self, key: &str) -> Option<String> {
        get_on(&self.live_endpoints(), &[], key).map(|kv| kv.value_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Gatehouse in fleet mode
// ---------------------------------------------------------------------------------------------

/// The admin token of every fleet instance in the tests (at least 16 characters).
pub const FLEET_TOKEN: &str = "fleet-admin-token-0123456789";

/// The local configuration of an instance in fleet mode: only `instance`, with `instance.etcd`.
/// `etcd_extra` holds more keys of `instance.etcd` (indented by four spaces, each line ending in
/// a newline), e.g. `"    prefix: /other\n"`.
pub fn fleet_local_yaml(
    id: &str,
    listen: u16,
    metrics: u16,
    admin: u16,
    endpoints: &[String],
    etcd_extra: &str,
) -> String {
    let endpoints = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"instance:
  id: {id}
  type: dedicated
  vpc: vpc-main
  listen: ["127.0.0.1:{listen}"]
  metrics: "127.0.0.1:{metrics}"
  admin: "127.0.0.1:{admin}"
  admin_token: {FLEET_TOKEN}
  threads: 2
  etcd:
    endpoints: [{endpoints}]
    cache_dir: cache
    timeout: 2s
{etcd_extra}"#
    )
}

/// `yaml` (a local file from [`fleet_local_yaml`]) with `instance_extra` (keys of `instance`,
/// indented by two spaces, each line ending in a newline) added to its `instance` section.
pub fn with_instance_extra(yaml: &str, instance_extra: &str) -> String {
    assert!(
        yaml.contains("  threads: 2\n"),
        "not a fleet local file: {yaml}"
    );
    yaml.replacen(
        "  threads: 2\n",
        &format!("  threads: 2\n{instance_extra}"),
        1,
    )
}

/// More of a fleet instance's setup than its id and endpoints.
#[derive(Debug, Default, Clone, Copy)]
pub struct FleetOptions<'a> {
    /// More keys of `instance.etcd` (see [`fleet_local_yaml`]).
    pub etcd_extra: &'a str,
    /// More keys of `instance` (see [`with_instance_extra`]), e.g. `file_roots`.
    pub instance_extra: &'a str,
    /// Environment variables of the gateway process.
    pub env: &'a [(&'a str, &'a str)],
}

/// A Gatehouse instance in fleet mode (`gatehouse run -c <local file>`), killed when dropped.
pub struct FleetGateway {
    pub gw: Gateway,
    pub id: String,
    pub admin: String,
    pub listen: u16,
    pub metrics: u16,
    pub admin_port: u16,
}

impl FleetGateway {
    /// Starts instance `id` on `endpoints` and waits until it serves and its admin API answers.
    pub fn start(id: &str, endpoints: &[String]) -> FleetGateway {
        Self::start_with(id, endpoints, "")
    }

    /// Like [`FleetGateway::start`], with more keys of `instance.etcd` (see [`fleet_local_yaml`]).
    pub fn start_with(id: &str, endpoints: &[String], etcd_extra: &str) -> FleetGateway {
        Self::start_opts(
            id,
            endpoints,
            FleetOptions {
                etcd_extra,
                ..FleetOptions::default()
            },
        )
    }

    /// Like [`FleetGateway::start`], with more keys of `instance` and `instance.etcd` and
    /// environment variables (see [`FleetOptions`]).
    pub fn start_opts(id: &str, endpoints: &[String], opts: FleetOptions<'_>) -> FleetGateway {
        let (listen, metrics, admin_port) = (free_port(), free_port(), free_port());
        let yaml = with_instance_extra(
            &fleet_local_yaml(id, listen, metrics, admin_port, endpoints, opts.etcd_extra),
            opts.instance_extra,
        );
        let gw = Gateway::start_config_env(&yaml, listen, metrics, "info", opts.env);
        let fleet = FleetGateway {
            gw,
            id: id.to_owned(),
            admin: format!("http://127.0.0.1:{admin_port}"),
            listen,
            metrics,
            admin_port,
        };
        fleet.wait_admin();
        fleet
    }

    fn wait_admin(&self) {
        eventually(
            &format!("the admin API of {} answers /status", self.id),
            Duration::from_secs(20),
            || {
                if std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).is_err() {
                    return None;
                }
                (self.call("GET", "/status", None).status == 200).then_some(())
            },
        );
    }

    /// Kills the process and starts it again on the same folder (and cache) and ports.
    pub fn restart(self) -> FleetGateway {
        let FleetGateway {
            gw,
            id,
            admin,
            listen,
            metrics,
            admin_port,
        } = self;
        let gw = gw.restart(listen, metrics);
        let fleet = FleetGateway {
            gw,
            id,
            admin,
            listen,
            metrics,
            admin_port,
        };
        fleet.wait_admin();
        fleet
    }

    /// The instance's local configuration file.
    pub fn local_file(&self) -> PathBuf {
        self.gw.dir.join("gatehouse.yaml")
    }

    /// `<cache_dir>/config.json` (the tests use `cache_dir: cache`).
    pub fn cache_file(&self) -> PathBuf {
        self.gw.dir.join("cache").join("config.json")
    }

    /// An admin API call with the token; `body` is sent as JSON.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.call_with(method, path, body, &[])
    }

    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Reply {
        admin_request(&self.admin, FLEET_TOKEN, method, path, body, extra)
    }

    /// `GET /status` as JSON (asserting 200).
    pub fn status(&self) -> Value {
        let r = self.call("GET", "/status", None);
        assert_eq!(r.status, 200, "{} GET /status: {}", self.id, r.body);
        r.json()
    }

    /// The etcd revision of the configuration served (`/status` `revision`).
    pub fn revision(&self) -> u64 {
        let s = self.status();
        s["revision"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no numeric revision in /status: {s}", self.id))
    }

    /// Waits (bounded) until the instance serves revision `rev` or a later one.
    pub fn wait_revision(&self, rev: u64) {
        eventually(
            &format!("{} serves revision {rev}", self.id),
            Duration::from_secs(10),
            || (self.revision() >= rev).then_some(()),
        );
    }

    /// A proxied `GET` through the instance's listener.
    pub fn get(&self, path: &str) -> Reply {
        self.gw.get(path)
    }

    /// The metrics endpoint's text.
    pub fn metrics_text(&self) -> String {
        self.gw.metrics_text()
    }

    /// The sum of every sample of metric `name` (with or without labels); `None` when absent.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_sum(&self.metrics_text(), name)
    }

    pub fn log(&self) -> String {
        self.gw.log()
    }
}

/// The sum of every sample of the metric family member `name` in Prometheus text (`name 1`,
/// `name{a="b"} 2`); `None` when no sample has that exact name.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labels) = rest.strip_prefix('{') {
            match labels.find('}') {
                Some(end) => &labels[end + 1..],
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest
        } else {
            continue; // another metric whose name starts the same
        };
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *found.get_or_insert(0.0) += v;
    }
    found
}

/// The revision in a reply's `ETag` (`"57"`, `W/"57"`).
pub fn etag_revision(r: &Reply) -> u64 {
    let tag = r
        .header("etag")
        .unwrap_or_else(|| panic!("no ETag on the answer: {r:?}"));
    tag.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .unwrap_or_else(|_| panic!("ETag {tag:?} is not a revision"))
}

/// Calls `probe` until it returns `Some`, at most for `within`; panics naming `what` otherwise.
pub fn eventually<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `GET` whose transport errors are returned, not panicked on: `(status, body)`.
pub fn try_get(url: &str) -> Result<(u16, String), String> {
    thread_local! {
        static AGENT: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
    }
    AGENT.with(|agent| match agent.get(url).call() {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .body_mut()
                .read_to_string()
                .map_err(|e| format!("reading the body: {e}"))?;
            Ok((status, body))
        }
        Err(e) => Err(e.to_string()),
    })
}

/// A fresh scratch folder (see `scratch_dir`) removed when dropped, even when the test fails.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        TempDir(scratch_dir())
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `gatehouse` with `args`, killed after `within`: exit status, stdout, stderr.
pub fn run_cli_within(args: &[&str], within: Duration) -> (ExitStatus, String, String) {
    run_cli_env(args, &[], within)
}

/// Like [`run_cli_within`], with environment variables set (`Some`) or removed (`None`).
pub fn run_cli_env(
    args: &[&str],
    env: &[(&str, Option<&str>)],
    within: Duration,
) -> (ExitStatus, String, String) {
    let dir = scratch_dir();
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut cmd = Command::new(binary());
    for (name, value) in env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, within);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, stderr) = (read(&out), read(&err));
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Some(s) => (s, stdout, stderr),
        None => panic!(
            "gatehouse {} did not finish within {within:?}\nstdout: {stdout}\nstderr: {stderr}",
            args.join(" ")
        ),
    }
}

/// Starts `gatehouse run -c <file with yaml>` and waits (bounded) for it to exit: its status
/// (`None` if it was still running, then it is killed) and its log.
pub fn run_expecting_exit(yaml: &str, within: Duration) -> (Option<ExitStatus>, String) {
    let dir = scratch_dir();
    let config = dir.join("gatehouse.yaml");
    std::fs::write(&config, yaml).unwrap();
    let log = dir.join("gatehouse.log");
    let mut child = Command::new(binary())
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, within);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (status, text)
}

/// Waits at most `within` for `child`; kills it (and returns `None`) when it runs longer.
fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
