//! The rules: turns a [`RawConfig`] into a validated [`Config`], or into every [`Problem`] found.
//!
//! Validation is pure (no DNS, no network, no file reads) and never stops at the first problem.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use crate::error::Problem;
use crate::model::*;
use crate::pattern::{PathPattern, PathTemplate};
use crate::raw::*;

/// HTTP methods an API may list.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
];

/// The methods an API without `methods` accepts: the standard ones but `TRACE`, which echoes
/// the request (credentials included) back and must be asked for by name.
pub const DEFAULT_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Validates `raw`. Relative file paths (`tls.ca_file`) are resolved against `base_dir`.
pub fn validate(raw: &RawConfig, base_dir: &Path, hash: String) -> Result<Config, Vec<Problem>> {
    let mut v = Validator::default();
    // The configuration's own folder may be named with `..` (`-c ../config/gatehouse.yaml`):
    // resolve it, so only the paths written inside the configuration are held to the no-`..`
    // rule.
    let base_dir = &resolve_base(base_dir);
    let vpcs = v.vpcs(&raw.vpcs);
    v.file_roots = v.file_roots(&raw.instance.file_roots, base_dir);
    let instance = v.instance(&raw.instance, &vpcs, base_dir);
    let connections = v.connections(&raw.connections, &vpcs);
    let upstreams = v.upstreams(
        &raw.upstreams,
        &vpcs,
        &connections,
        instance.as_ref(),
        base_dir,
    );
    let services = v.services(&raw.services, &raw.upstreams, instance.as_ref(), base_dir);
    match instance {
        Some(instance) if v.problems.is_empty() => Ok(Config {
            instance,
            vpcs: vpcs.into_values().collect(),
            connections,
            upstreams,
            services,
            hash,
        }),
        _ => Err(v.problems),
    }
}

/// Only `instance.etcd` (with `instance.file_roots`, which its files must lie in): what a fleet
/// instance needs before it can read the rest of its configuration.
pub fn etcd_source(
    raw: &RawEtcd,
    file_roots: &[String],
    base_dir: &Path,
) -> Result<EtcdSource, Vec<Problem>> {
    let mut v = Validator::default();
    let base_dir = &resolve_base(base_dir);
    v.file_roots = v.file_roots(file_roots, base_dir);
    match v.etcd(raw, base_dir) {
        Some(source) if v.problems.is_empty() => Ok(source),
        _ => Err(v.problems),
    }
}

/// The folder relative paths are read from, absolute: `-c gatehouse.yaml` names the current one.
fn resolve_base(base_dir: &Path) -> std::path::PathBuf {
    let base_dir = if base_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base_dir
    };
    std::fs::canonicalize(base_dir)
        .or_else(|_| std::path::absolute(base_dir))
        .unwrap_or_else(|_| base_dir.to_owned())
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    /// `instance.file_roots`, absolute.
    file_roots: Vec<std::path::PathBuf>,
}

impl Validator {
    fn problem(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.problems.push(Problem::new(path, message, fix));
    }

    fn file_roots(&mut self, raw: &[String], base_dir: &Path) -> Vec<std::path::PathBuf> {
        if raw.is_empty() {
            return vec![base_dir.to_owned()];
        }
        let mut roots = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let root = base_dir.join(r);
            if r.is_empty() || crate::files::has_parent_dir(&root) {
                self.problem(
                    format!("instance.file_roots[{i}]"),
                    format!("{r:?} is not a folder path without '..'"),
                    "name the folder plainly, e.g. /etc/gatehouse/plugins or ./plugins",
                );
            } else if root == Path::new("/") {
                self.problem(
                    format!("instance.file_roots[{i}]"),
                    "the whole file system cannot be a root",
                    "name the folders that hold plugins and certificates, e.g. /etc/gatehouse",
                );
            } else {
                roots.push(root);
            }
        }
        roots
    }

    /// A file the configuration names: resolved against `base_dir` and checked to lie inside
    /// `instance.file_roots`.
    fn file(&mut self, path: &str, raw: &str, base_dir: &Path) -> Option<std::path::PathBuf> {
        let file = base_dir.join(raw);
        if crate::files::has_parent_dir(&file) {
            self.problem(
                path,
                format!("{raw:?} contains '..'"),
                "name the file by a path without '..' inside instance.file_roots",
            );
            return None;
        }
        if !crate::files::lexically_inside(&file, &self.file_roots) {
            let roots: Vec<String> = self
                .file_roots
                .iter()
                .map(|r| r.display().to_string())
                .collect();
            self.problem(
                path,
                format!(
                    "{} is outside the folders the configuration may read from ({})",
                    file.display(),
                    roots.join(", ")
                ),
                "move the file into one of them, or add its folder to instance.file_roots",
            );
            return None;
        }
        Some(file)
    }

    fn vpcs(&mut self, raw: &[RawVpc]) -> HashMap<String, Vpc> {
        let mut vpcs: HashMap<String, Vpc> = HashMap::new();
        for (i, vpc) in raw.iter().enumerate() {
            let path = format!("vpcs[{i}]");
            if vpc.id.trim().is_empty() {
                self.problem(
                    format!("{path}.id"),
                    "must not be empty",
                    "give the VPC an id such as vpc-main",
                );
                continue;
            }
            if vpcs.contains_key(&vpc.id) {
                self.problem(
                    format!("{path}.id"),
                    format!("VPC {:?} is declared twice", vpc.id),
                    "merge the two entries or rename one",
                );
                continue;
            }
            if vpc.cidrs.is_empty() {
                self.problem(
                    format!("{path}.cidrs"),
                    "a VPC needs at least one CIDR block",
                    "list the VPC's address ranges, e.g. cidrs: [\"10.0.0.0/16\"]",
                );
            }
            let mut cidrs = Vec::new();
            for (j, c) in vpc.cidrs.iter().enumerate() {
                match c.parse::<IpNet>() {
                    Ok(net) => cidrs.push(net.trunc()),
                    Err(_) => self.problem(
                        format!("{path}.cidrs[{j}]"),
                        format!("{c:?} is not a CIDR block"),
                        "write an address range like 10.0.0.0/16 or fd00::/64",
                    ),
                }
            }
            vpcs.insert(
                vpc.id.clone(),
                Vpc {
                    id: vpc.id.clone(),
                    cidrs,
                },
            );
        }
        vpcs
    }

    fn instance(
        &mut self,
        raw: &RawInstance,
        vpcs: &HashMap<String, Vpc>,
        base_dir: &Path,
    ) -> Option<Instance> {
        let mut ok = true;
        if raw.id.trim().is_empty() {
            ok = false;
            self.problem(
                "instance.id",
                "must not be empty",
                "name the instance, e.g. id: ins-edge-1",
            );
        }
        let kind = match raw.kind.as_str() {
            "dedicated" => Some(InstanceKind::Dedicated),
            "shared" => Some(InstanceKind::Shared),
            other => {
                self.problem(
                    "instance.type",
                    format!("{other:?} is not an instance type"),
                    "use dedicated or shared",
                );
                None
            }
        };
        if !vpcs.contains_key(&raw.vpc) {
            ok = false;
            self.unknown_vpc("instance.vpc", &raw.vpc, vpcs);
        }
        if raw.listen.is_empty() {
            ok = false;
            self.problem(
                "instance.listen",
                "no listener given",
                "add at least one address, e.g. listen: [\"0.0.0.0:8080\"]",
            );
        }
        let mut listen = Vec::new();
        for (i, l) in raw.listen.iter().enumerate() {
            match self.socket_addr(&format!("instance.listen[{i}]"), l) {
                Some(addr) if listen.contains(&addr) => {
                    ok = false;
                    self.problem(
                        format!("instance.listen[{i}]"),
                        format!("{addr} is listed twice"),
                        "remove the duplicate",
                    );
                }
                Some(addr) => listen.push(addr),
                None => ok = false,
            }
        }
        let metrics_text = raw.metrics.as_deref().unwrap_or(limits::DEFAULT_METRICS);
        let metrics = self.socket_addr("instance.metrics", metrics_text);
        if let Some(m) = metrics {
            if listen.contains(&m) {
                self.problem(
                    "instance.metrics",
                    format!("{m} is also a proxy listener"),
                    "give the metrics endpoint its own port, e.g. 127.0.0.1:9091",
                );
            }
        }
        let threads = match raw.threads {
            None => None,
            Some(t) if (1..=limits::MAX_THREADS as i64).contains(&t) => Some(t as usize),
            Some(t) => {
                self.problem(
                    "instance.threads",
                    format!("{t} is out of range 1..={}", limits::MAX_THREADS),
                    "set the number of worker threads, usually the number of cores, or omit it",
                );
                None
            }
        };
        let dns_refresh = self
            .duration(
                "instance.dns_refresh",
                raw.dns_refresh.as_deref(),
                Duration::from_secs(1),
            )
            .unwrap_or(limits::DEFAULT_DNS_REFRESH);
        let plugin_limits = raw
            .plugins
            .as_ref()
            .map(|p| self.plugin_limits(p))
            .unwrap_or_default();
        let secret_env =
            self.secret_env(raw.plugins.as_ref().and_then(|p| p.secret_env.as_deref()));
        let admin_text = raw.admin.as_deref().unwrap_or(limits::DEFAULT_ADMIN);
        let admin = self.socket_addr("instance.admin", admin_text);
        if let Some(a) = admin {
            if listen.contains(&a) || metrics == Some(a) {
                self.problem(
                    "instance.admin",
                    format!("{a} is also a proxy or metrics listener"),
                    "give the admin API its own port, e.g. 127.0.0.1:9180",
                );
            }
        }
        let admin_token = match raw
            .admin_token
            .as_deref()
            .map(|t| (t, crate::secrets::env_reference(t)))
        {
            Some((_, Some(name))) => {
                match std::env::var(name) {
                    Ok(value) => Some(value),
                    Err(_) => {
                        self.problem(
                        "instance.admin_token",
                        format!("the environment variable {name} is not set"),
                        format!("set {name} in the gateway's environment, or use GATEHOUSE_ADMIN_TOKEN"),
                    );
                        None
                    }
                }
            }
            Some((token, None)) => Some(token.to_owned()),
            None => None,
        };
        if let Some(token) = &admin_token {
            if token.len() < limits::MIN_ADMIN_TOKEN_LEN
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                self.problem(
                    "instance.admin_token",
                    format!("the token must be at least {} characters without spaces", limits::MIN_ADMIN_TOKEN_LEN),
                    "use a long random token, e.g. the output of `openssl rand -hex 24`, or set GATEHOUSE_ADMIN_TOKEN instead",
                );
            }
        }
        let http = raw.http.as_ref().map(|h| self.http(h)).unwrap_or_default();
        let admin_tls = raw.admin_tls.as_ref().and_then(|t| {
            let cert = self.file("instance.admin_tls.cert_file", &t.cert_file, base_dir);
            let key = self.file("instance.admin_tls.key_file", &t.key_file, base_dir);
            Some(CertFiles {
                cert_file: cert?,
                key_file: key?,
            })
        });
        let mut admin_allow = Vec::new();
        for (i, c) in raw.admin_allow.iter().enumerate() {
            match c
                .parse::<IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => admin_allow.push(net.trunc()),
                Err(_) => self.problem(
                    format!("instance.admin_allow[{i}]"),
                    format!("{c:?} is not an address or CIDR block"),
                    "write the operators' addresses like 10.1.0.0/24 or 192.0.2.7",
                ),
            }
        }
        let tls = raw.tls.as_ref().map(|t| {
            let mut tls_listen = Vec::new();
            if t.listen.is_empty() {
                self.problem(
                    "instance.tls.listen",
                    "no TLS listener given",
                    "add an address, e.g. listen: [\"0.0.0.0:8443\"], or drop instance.tls",
                );
            }
            for (i, l) in t.listen.iter().enumerate() {
                let path = format!("instance.tls.listen[{i}]");
                if let Some(addr) = self.socket_addr(&path, l) {
                    if listen.contains(&addr) || tls_listen.contains(&addr) || metrics == Some(addr) || admin == Some(addr) {
                        self.problem(
                            path,
                            format!("{addr} is already a listener"),
                            "give each listener its own address",
                        );
                    } else {
                        tls_listen.push(addr);
                    }
                }
            }
            if t.certificates.is_empty() {
                self.problem(
                    "instance.tls.certificates",
                    "no certificate given",
                    "list at least one { cert_file, key_file } pair (PEM); the first is the default",
                );
            }
            let certificates = t
                .certificates
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let cert = self.file(&format!("instance.tls.certificates[{i}].cert_file"), &c.cert_file, base_dir);
                    let key = self.file(&format!("instance.tls.certificates[{i}].key_file"), &c.key_file, base_dir);
                    Some(CertFiles { cert_file: cert?, key_file: key? })
                })
                .collect();
            ListenerTls {
                listen: tls_listen,
                certificates,
                http2: t.http2.unwrap_or(true),
            }
        });
        let access_log = match &raw.access_log {
            Some(a) => self.access_log(a, base_dir),
            None => AccessLog::default(),
        };
        let drain_timeout = self
            .duration(
                "instance.drain_timeout",
                raw.drain_timeout.as_deref(),
                Duration::from_secs(1),
            )
            .unwrap_or(limits::DEFAULT_DRAIN_TIMEOUT);
        if drain_timeout > limits::MAX_DRAIN_TIMEOUT {
            self.problem(
                "instance.drain_timeout",
                "is longer than an hour",
                "give requests in flight at most 1h to finish when the gateway stops",
            );
        }
        let upgrade_timeout = self
            .duration(
                "instance.upgrade_timeout",
                raw.upgrade_timeout.as_deref(),
                Duration::from_secs(1),
            )
            .unwrap_or(limits::DEFAULT_UPGRADE_TIMEOUT);
        if upgrade_timeout > Duration::from_secs(3600) {
            self.problem(
                "instance.upgrade_timeout",
                "is longer than an hour",
                "give the processes of an upgrade at most 1h to meet, e.g. 5m",
            );
        }
        let upgrade_socket = match raw.upgrade_socket.as_deref() {
            Some(p) => base_dir.join(p),
            None => std::env::temp_dir().join(format!("gatehouse-{}-upgrade.sock", raw.id)),
        };
        let etcd = raw.etcd.as_ref().and_then(|e| self.etcd(e, base_dir));
        Some(Instance {
            etcd,
            upgrade_socket,
            upgrade_timeout,
            drain_timeout,
            tls,
            access_log,
            http,
            admin_tls,
            admin_allow,
            file_roots: self.file_roots.clone(),
            admin: admin?,
            admin_token,
            id: raw.id.clone(),
            kind: kind?,
            vpc: raw.vpc.clone(),
            listen,
            metrics: metrics?,
            threads,
            dns_refresh,
            plugin_limits,
            secret_env,
        })
        .filter(|_| ok)
    }

    /// `instance.etcd`: where a fleet's shared configuration lives.
    fn etcd(&mut self, raw: &RawEtcd, base_dir: &Path) -> Option<EtcdSource> {
        let before = self.problems.len();
        if raw.endpoints.is_empty() {
            self.problem(
                "instance.etcd.endpoints",
                "no endpoint given",
                "list the etcd cluster's client URLs, e.g. [\"http://10.0.0.5:2379\"]",
            );
        }
        for (i, e) in raw.endpoints.iter().enumerate() {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            let ok = rest.is_some_and(|r| {
                !r.is_empty() && !r.contains('/') && !r.contains(char::is_whitespace)
            });
            if !ok {
                self.problem(
                    format!("instance.etcd.endpoints[{i}]"),
                    format!("{e:?} is not an etcd client URL"),
                    "write it as http://host:port or https://host:port",
                );
            }
        }
        let prefix = raw.prefix.as_deref().unwrap_or(limits::DEFAULT_ETCD_PREFIX);
        let prefix_ok = prefix.starts_with('/')
            && !prefix.ends_with('/')
            && prefix.len() <= 200
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
        if !prefix_ok {
            self.problem(
                "instance.etcd.prefix",
                format!("{prefix:?} is not a key prefix"),
                "start it with '/', end it without one, and use letters, digits, '/', '-', '_' or '.', e.g. /gatehouse/prod",
            );
        }
        let password = match (&raw.password, &raw.password_file) {
            (Some(_), Some(_)) => {
                self.problem(
                    "instance.etcd.password",
                    "both password and password_file are given",
                    "keep one of them",
                );
                None
            }
            (Some(p), None) => match crate::secrets::env_reference(p) {
                Some(name) => match std::env::var(name) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        self.problem(
                            "instance.etcd.password",
                            format!("the environment variable {name} is not set"),
                            format!("set {name} in the gateway's environment"),
                        );
                        None
                    }
                },
                None => Some(p.clone()),
            }
            .map(EtcdPassword::Value),
            (None, Some(f)) => self
                .file("instance.etcd.password_file", f, base_dir)
                .map(EtcdPassword::File),
            (None, None) => None,
        };
        let credentials = match (&raw.username, password) {
            (Some(u), Some(p)) => Some((u.clone(), p)),
            (None, None) => None,
            (Some(_), None) if raw.password.is_none() && raw.password_file.is_none() => {
                self.problem(
                    "instance.etcd.username",
                    "a user name without a password",
                    "add password: ${ETCD_PASSWORD} (an environment variable) or password_file",
                );
                None
            }
            (None, Some(_)) => {
                self.problem(
                    "instance.etcd.password",
                    "a password without a user name",
                    "add username",
                );
                None
            }
            _ => None,
        };
        let (ca_file, identity) = match &raw.tls {
            None => (None, None),
            Some(t) => {
                let ca = t
                    .ca_file
                    .as_deref()
                    .and_then(|f| self.file("instance.etcd.tls.ca_file", f, base_dir));
                let identity = match (&t.cert_file, &t.key_file) {
                    (Some(c), Some(k)) => {
                        let cert = self.file("instance.etcd.tls.cert_file", c, base_dir);
                        let key = self.file("instance.etcd.tls.key_file", k, base_dir);
                        cert.zip(key).map(|(cert_file, key_file)| CertFiles {
                            cert_file,
                            key_file,
                        })
                    }
                    (None, None) => None,
                    _ => {
                        self.problem(
                            "instance.etcd.tls",
                            "a client certificate needs both cert_file and key_file",
                            "give both, or neither",
                        );
                        None
                    }
                };
                if !raw.endpoints.iter().all(|e| e.starts_with("https://")) {
                    self.problem(
                        "instance.etcd.endpoints",
                        "instance.etcd.tls is set but not every endpoint is https://",
                        "write the endpoints as https://host:port",
                    );
                }
                (ca, identity)
            }
        };
        let cache_dir = base_dir.join(
            raw.cache_dir
                .as_deref()
                .unwrap_or(limits::DEFAULT_ETCD_CACHE_DIR),
        );
        if crate::files::has_parent_dir(&cache_dir) {
            self.problem(
                "instance.etcd.cache_dir",
                "contains '..'",
                "name the folder plainly, e.g. /var/cache/gatehouse",
            );
        }
        let timeout = self
            .duration(
                "instance.etcd.timeout",
                raw.timeout.as_deref(),
                Duration::from_millis(100),
            )
            .unwrap_or(limits::DEFAULT_ETCD_TIMEOUT);
        (self.problems.len() == before).then(|| EtcdSource {
            endpoints: raw.endpoints.clone(),
            prefix: prefix.to_owned(),
            credentials,
            ca_file,
            identity,
            cache_dir,
            timeout,
        })
    }

    fn access_log(&mut self, raw: &RawAccessLog, base_dir: &Path) -> AccessLog {
        let format = match raw.format.as_deref() {
            None | Some("json") => AccessLogFormat::Json,
            Some("text") => AccessLogFormat::Text,
            Some(other) => {
                self.problem(
                    "instance.access_log.format",
                    format!("{other:?} is not an access log format"),
                    "use json (the default) or text",
                );
                AccessLogFormat::Json
            }
        };
        let sample = match raw.sample {
            None => 1.0,
            Some(s) => self.share("instance.access_log.sample", s).unwrap_or(1.0),
        };
        let file = raw.file.as_deref().map(|f| base_dir.join(f));
        if let Some(dir) = file.as_deref().and_then(Path::parent) {
            if !dir.is_dir() {
                self.problem(
                    "instance.access_log.file",
                    format!("folder {} does not exist", dir.display()),
                    "create the folder, or write the log to standard output (omit file)",
                );
            }
        }
        AccessLog {
            sample: if raw.enabled.unwrap_or(true) {
                sample
            } else {
                0.0
            },
            format,
            file,
        }
    }

    /// A share from 0 to 1.
    fn share(&mut self, path: &str, value: f64) -> Option<f64> {
        if (0.0..=1.0).contains(&value) {
            Some(value)
        } else {
            self.problem(
                path,
                format!("{value} is not a share of requests"),
                "give a number from 0 (none) to 1 (every request), e.g. 0.1",
            );
            None
        }
    }

    fn http(&mut self, raw: &RawHttp) -> HttpOptions {
        let mut out = HttpOptions::default();
        if let Some(v) = raw.merge_slashes {
            out.merge_slashes = v;
        }
        if let Some(v) = raw.allow_encoded_slashes {
            out.allow_encoded_slashes = v;
        }
        for (i, c) in raw.trusted_proxies.iter().enumerate() {
            match c
                .parse::<IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => out.trusted_proxies.push(net.trunc()),
                Err(_) => self.problem(
                    format!("instance.http.trusted_proxies[{i}]"),
                    format!("{c:?} is not an address or CIDR block"),
                    "write the proxies' addresses like 10.0.0.5 or 10.0.0.0/24",
                ),
            }
        }
        let second = Duration::from_secs(1);
        let durations = [
            (
                "header_timeout",
                &raw.header_timeout,
                &mut out.header_timeout,
            ),
            ("idle_timeout", &raw.idle_timeout, &mut out.idle_timeout),
            ("body_timeout", &raw.body_timeout, &mut out.body_timeout),
        ];
        for (key, text, slot) in durations {
            if let Some(d) = self.duration(&format!("instance.http.{key}"), text.as_deref(), second)
            {
                *slot = d;
            }
        }
        if let Some(n) = raw.max_requests_per_connection {
            match u64::try_from(n) {
                Ok(n) => out.max_requests_per_connection = n,
                Err(_) => self.problem(
                    "instance.http.max_requests_per_connection",
                    format!("{n} is negative"),
                    "give a count such as 1000, or 0 for no limit",
                ),
            }
        }
        if let Some(text) = &raw.max_header_size {
            match parse_size(text) {
                Some(b) if (limits::MIN_HEADER_SIZE as u64..=1024 * 1024).contains(&b) => {
                    out.max_header_size = b as usize
                }
                _ => self.problem(
                    "instance.http.max_header_size",
                    format!("{text:?} is not a size in 1KiB..=1MiB"),
                    "write a size like 32KiB",
                ),
            }
        }
        if let Some(text) = &raw.read_buffer {
            match parse_size(text) {
                Some(b) if b <= limits::MAX_READ_BUFFER as u64 => out.read_buffer = b as usize,
                _ => self.problem(
                    "instance.http.read_buffer",
                    format!("{text:?} is not a size in 0..=1MiB"),
                    "write a size like 4KiB, or 0 for no buffer",
                ),
            }
        }
        if let Some(n) = raw.max_headers {
            match usize::try_from(n) {
                Ok(n) if (1..=limits::MAX_HEADERS).contains(&n) => out.max_headers = n,
                _ => self.problem(
                    "instance.http.max_headers",
                    format!("{n} is out of range 1..={}", limits::MAX_HEADERS),
                    format!("give a count such as {}", limits::DEFAULT_MAX_HEADERS),
                ),
            }
        }
        if let Some(text) = &raw.max_body_size {
            if let Some(b) = self.body_size("instance.http.max_body_size", text) {
                out.max_body_size = b;
            }
        }
        if let Some(v) = raw.h2c {
            out.h2c = v;
        }
        if let Some(n) = raw.h2_max_concurrent_streams {
            match u32::try_from(n) {
                Ok(n) if (1..=10_000).contains(&n) => out.h2_max_concurrent_streams = n,
                _ => self.problem(
                    "instance.http.h2_max_concurrent_streams",
                    format!("{n} is out of range 1..=10000"),
                    format!("give a count such as {}", limits::DEFAULT_H2_STREAMS),
                ),
            }
        }
        if let Some(n) = raw.h2_max_pending_resets {
            match usize::try_from(n) {
                Ok(n) if (1..=10_000).contains(&n) => out.h2_max_pending_resets = n,
                _ => self.problem(
                    "instance.http.h2_max_pending_resets",
                    format!("{n} is out of range 1..=10000"),
                    format!("give a count such as {}", limits::DEFAULT_H2_PENDING_RESETS),
                ),
            }
        }
        match raw.underscores_in_headers.as_deref() {
            None => {}
            Some("drop") => out.underscores_in_headers = crate::model::Underscores::Drop,
            Some("reject") => out.underscores_in_headers = crate::model::Underscores::Reject,
            Some("allow") => out.underscores_in_headers = crate::model::Underscores::Allow,
            Some(other) => self.problem(
                "instance.http.underscores_in_headers",
                format!("{other:?} is not a choice"),
                "use drop (the default: such headers are removed), reject (400) or allow",
            ),
        }
        if let Some(n) = raw.h2_max_pending_bodies {
            match usize::try_from(n) {
                Ok(n) if (1..=10_000).contains(&n) => out.h2_max_pending_bodies = n,
                _ => self.problem(
                    "instance.http.h2_max_pending_bodies",
                    format!("{n} is out of range 1..=10000"),
                    format!("give a count such as {}", limits::DEFAULT_H2_PENDING_BODIES),
                ),
            }
        }
        if let Some(n) = raw.max_connections {
            match usize::try_from(n) {
                Ok(n) if n >= 1 => out.max_connections = n,
                _ => self.problem(
                    "instance.http.max_connections",
                    format!("{n} is not a positive count"),
                    format!("give a count such as {}", limits::DEFAULT_MAX_CONNECTIONS),
                ),
            }
        }
        out
    }

    fn body_size(&mut self, path: &str, text: &str) -> Option<u64> {
        let size = parse_size(text);
        if size.is_none() {
            self.problem(
                path,
                format!("{text:?} is not a size"),
                "write a size like 10MiB, 512KiB or 0 (no body allowed)",
            );
        }
        size
    }

    /// `instance.plugins.secret_env`: variable names, or prefixes ending in `*`.
    fn secret_env(&mut self, raw: Option<&[String]>) -> Vec<String> {
        let Some(raw) = raw else {
            return vec![limits::DEFAULT_SECRET_ENV.to_owned()];
        };
        for (i, entry) in raw.iter().enumerate() {
            let name = entry.strip_suffix('*').unwrap_or(entry);
            let valid = crate::secrets::env_reference(&format!("${{{name}}}")).is_some();
            if !valid || entry == "*" {
                self.problem(
                    format!("instance.plugins.secret_env[{i}]"),
                    format!("{entry:?} is not a variable name or a prefix of one"),
                    "write a name such as GATEHOUSE_SECRET_API_KEY, or a prefix such as GATEHOUSE_SECRET_* (never * alone: the whole environment)",
                );
            }
        }
        raw.to_vec()
    }

    fn plugin_limits(&mut self, raw: &RawPluginLimits) -> PluginLimits {
        let mut out = PluginLimits::default();
        if let Some(text) = &raw.memory_limit {
            match parse_size(text) {
                Some(bytes) if (1024 * 1024..=limits::MAX_PLUGIN_MEMORY).contains(&bytes) => {
                    out.memory = bytes
                }
                Some(_) => self.problem(
                    "instance.plugins.memory_limit",
                    format!("{text:?} is out of range 1MiB..=1GiB"),
                    "set a limit such as 16MiB",
                ),
                None => self.problem(
                    "instance.plugins.memory_limit",
                    format!("{text:?} is not a size"),
                    "write a size like 16MiB, 512KiB or 1GiB",
                ),
            }
        }
        if let Some(t) = self.duration(
            "instance.plugins.time_limit",
            raw.time_limit.as_deref(),
            Duration::from_millis(1),
        ) {
            if t > limits::MAX_PLUGIN_TIME {
                self.problem(
                    "instance.plugins.time_limit",
                    format!("{} is over the limit of 1s", humantime::format_duration(t)),
                    "a hook call is on the request path: keep it to milliseconds, e.g. 10ms",
                );
            } else {
                out.time = t;
            }
        }
        if let Some(reuse) = raw.reuse_instances {
            out.reuse_instances = reuse;
        }
        if let Some(text) = &raw.max_memory_limit {
            match parse_size(text) {
                Some(b) if (out.memory..=limits::MAX_PLUGIN_MEMORY).contains(&b) => {
                    out.max_memory = b
                }
                _ => self.problem(
                    "instance.plugins.max_memory_limit",
                    format!("{text:?} is not a size from memory_limit to 1GiB"),
                    "write a size like 64MiB, at least instance.plugins.memory_limit",
                ),
            }
        }
        if let Some(t) = self.duration(
            "instance.plugins.max_time_limit",
            raw.max_time_limit.as_deref(),
            Duration::from_millis(1),
        ) {
            if t > limits::MAX_PLUGIN_TIME || t < out.time {
                self.problem(
                    "instance.plugins.max_time_limit",
                    format!(
                        "{} is not from time_limit to 1s",
                        humantime::format_duration(t)
                    ),
                    "write a duration like 100ms, at least instance.plugins.time_limit",
                );
            } else {
                out.max_time = t;
            }
        }
        if let Some(text) = &raw.max_body_limit {
            match parse_size(text) {
                Some(b) if (1024..=limits::MAX_PLUGIN_BODY).contains(&b) => out.max_body = b,
                _ => self.problem(
                    "instance.plugins.max_body_limit",
                    format!("{text:?} is not a size in 1KiB..=16MiB"),
                    "write a size like 1MiB",
                ),
            }
        }
        if let Some(text) = &raw.body_limit {
            match parse_size(text) {
                Some(b) if (1..=out.max_body).contains(&b) => out.body = b,
                _ => self.problem(
                    "instance.plugins.body_limit",
                    format!(
                        "{text:?} is not a size in 1B..={} (max_body_limit)",
                        format_size(out.max_body)
                    ),
                    "write a size like 64KiB, or raise instance.plugins.max_body_limit",
                ),
            }
        } else {
            out.body = out.body.min(out.max_body);
        }
        if let Some(text) = &raw.total_memory {
            match parse_size(text) {
                Some(b) if b >= out.memory => out.total_memory = b,
                _ => self.problem(
                    "instance.plugins.total_memory",
                    format!("{text:?} is not a size of at least memory_limit"),
                    "write a size like 1GiB, at least one instance's memory_limit",
                ),
            }
        }
        if let Some(n) = raw.max_added_headers {
            match usize::try_from(n) {
                Ok(n) if (1..=1000).contains(&n) => out.max_added_headers = n,
                _ => self.problem(
                    "instance.plugins.max_added_headers",
                    format!("{n} is out of range 1..=1000"),
                    format!(
                        "give a count such as {}",
                        limits::DEFAULT_PLUGIN_ADDED_HEADERS
                    ),
                ),
            }
        }
        if let Some(text) = &raw.max_added_header_bytes {
            match parse_size(text) {
                Some(b) if (256..=1024 * 1024).contains(&b) => {
                    out.max_added_header_bytes = b as usize
                }
                _ => self.problem(
                    "instance.plugins.max_added_header_bytes",
                    format!("{text:?} is not a size in 256B..=1MiB"),
                    "write a size like 16KiB",
                ),
            }
        }
        if let Some(n) = raw.counter_keys {
            match usize::try_from(n) {
                Ok(n) if (1..=limits::MAX_PLUGIN_COUNTER_KEYS).contains(&n) => out.counter_keys = n,
                _ => self.problem(
                    "instance.plugins.counter_keys",
                    format!(
                        "{n} is out of range 1..={}",
                        limits::MAX_PLUGIN_COUNTER_KEYS
                    ),
                    format!(
                        "give a count such as {}",
                        limits::DEFAULT_PLUGIN_COUNTER_KEYS
                    ),
                ),
            }
        }
        out
    }

    fn plugins(
        &mut self,
        apath: &str,
        raw: &[RawPlugin],
        instance: &PluginLimits,
        secret_env: &[String],
        base_dir: &Path,
    ) -> Vec<PluginRef> {
        let mut out = Vec::new();
        for (k, p) in raw.iter().enumerate() {
            let ppath = format!("{apath}.plugins[{k}]");
            let source = match (&p.name, &p.path) {
                (Some(name), None) if limits::STANDARD_PLUGINS.contains(&name.as_str()) => {
                    Some(PluginSource::Standard(name.clone()))
                }
                (Some(name), None) => {
                    self.problem(
                        format!("{ppath}.name"),
                        format!("{name:?} is not a standard plugin"),
                        format!(
                            "use one of {}, or give the component's file as path:",
                            limits::STANDARD_PLUGINS.join(", ")
                        ),
                    );
                    None
                }
                (None, Some(path)) if !path.is_empty() => self
                    .file(&format!("{ppath}.path"), path, base_dir)
                    .map(PluginSource::File),
                _ => {
                    self.problem(
                        ppath.clone(),
                        "a plugin is either a standard plugin (name) or a component file (path)",
                        "set exactly one of name: and path:",
                    );
                    None
                }
            };
            let on_error = match p.on_error.as_deref() {
                None | Some("fail_closed") => Some(OnError::FailClosed),
                Some("fail_open") => Some(OnError::FailOpen),
                Some(other) => {
                    self.problem(
                        format!("{ppath}.on_error"),
                        format!("{other:?} is not a failure policy"),
                        "use fail_closed (answer 500) or fail_open (skip the plugin)",
                    );
                    None
                }
            };
            for (j, key) in p.secret_keys.iter().enumerate() {
                if key.is_empty() || key.split('.').any(str::is_empty) {
                    self.problem(
                        format!("{ppath}.secret_keys[{j}]"),
                        format!("{key:?} is not a key of the plugin's config"),
                        "name a config key, dotted for nested ones: token, auth.password",
                    );
                }
            }
            let mut resolved = p.config.clone();
            if let Some(v) = resolved.as_mut() {
                let secret_keys = crate::secrets::entry_secret_keys(p);
                let mut refused = Vec::new();
                crate::secrets::resolve_env(v, "", &secret_keys, secret_env, &mut refused);
                for (at, name, why) in refused {
                    let at = format!("{ppath}.config.{at}");
                    match why {
                        crate::secrets::EnvRefused::NotSecret => self.problem(
                            at,
                            format!("${{{name}}} is read from the environment only in a secret key, and this key is not one"),
                            "write the value here, or list the key in this plugin's secret_keys (its value is then never shown)",
                        ),
                        crate::secrets::EnvRefused::NotAllowed => self.problem(
                            at,
                            format!("the environment variable {name} is not one this instance lets plugin configurations read"),
                            format!("name it with the prefix {}, or list it in instance.plugins.secret_env", limits::DEFAULT_SECRET_ENV.trim_end_matches('*')),
                        ),
                        crate::secrets::EnvRefused::NotSet => self.problem(
                            at,
                            format!("the environment variable {name} is not set"),
                            format!("set {name} in the gateway's environment, or write the value here"),
                        ),
                    }
                }
            }
            let config = match &resolved {
                None | Some(serde_yaml::Value::Null) => Some("{}".to_owned()),
                Some(v @ serde_yaml::Value::Mapping(_)) => match serde_json::to_string(v) {
                    Ok(json) => Some(json),
                    Err(e) => {
                        self.problem(
                            format!("{ppath}.config"),
                            format!("cannot be expressed as JSON: {e}"),
                            "use string keys and plain values",
                        );
                        None
                    }
                },
                // a file's plugin may take text (Proxy-Wasm filters often do): a JSON string
                Some(serde_yaml::Value::String(text)) if p.path.is_some() => {
                    serde_json::to_string(text).ok()
                }
                Some(_) => {
                    self.problem(
                        format!("{ppath}.config"),
                        if p.path.is_some() {
                            "must be a map, or text"
                        } else {
                            "must be a map"
                        },
                        "write the plugin's settings as key: value pairs",
                    );
                    None
                }
            };
            let memory = match &p.memory_limit {
                None => Some(instance.memory),
                Some(text) => match parse_size(text) {
                    Some(b) if (1024 * 1024..=instance.max_memory).contains(&b) => Some(b),
                    Some(_) => {
                        self.problem(
                            format!("{ppath}.memory_limit"),
                            format!(
                                "{text:?} is out of range 1MiB..={}",
                                format_size(instance.max_memory)
                            ),
                            "ask for less, or raise instance.plugins.max_memory_limit",
                        );
                        None
                    }
                    None => {
                        self.problem(
                            format!("{ppath}.memory_limit"),
                            format!("{text:?} is not a size"),
                            "write a size like 4MiB or 64MiB",
                        );
                        None
                    }
                },
            };
            let time = match &p.time_limit {
                None => Some(instance.time),
                Some(_) => self
                    .duration(
                        &format!("{ppath}.time_limit"),
                        p.time_limit.as_deref(),
                        Duration::from_millis(1),
                    )
                    .and_then(|t| {
                        if t > instance.max_time {
                            self.problem(
                                format!("{ppath}.time_limit"),
                                format!(
                                    "{} is over instance.plugins.max_time_limit ({})",
                                    humantime::format_duration(t),
                                    humantime::format_duration(instance.max_time)
                                ),
                                "ask for less, or raise instance.plugins.max_time_limit (at most 1s)",
                            );
                            None
                        } else {
                            Some(t)
                        }
                    }),
            };
            let body = match &p.body_limit {
                None => Some(instance.body),
                Some(text) => match parse_size(text) {
                    Some(b) if (1..=instance.max_body).contains(&b) => Some(b),
                    _ => {
                        self.problem(
                            format!("{ppath}.body_limit"),
                            format!(
                                "{text:?} is not a size in 1B..={} (instance.plugins.max_body_limit)",
                                format_size(instance.max_body)
                            ),
                            "ask for less, or raise instance.plugins.max_body_limit",
                        );
                        None
                    }
                },
            };
            let grants = p
                .grants
                .as_ref()
                .map(|g| self.grants(&format!("{ppath}.grants"), g));
            let (root_id, vm_config) = self.filter_settings(&ppath, p);
            if let (
                Some(source),
                Some(on_error),
                Some(config),
                Some(memory),
                Some(time),
                Some(body),
            ) = (source, on_error, config, memory, time, body)
            {
                out.push(PluginRef {
                    source,
                    config,
                    on_error,
                    memory,
                    time,
                    body,
                    grants,
                    root_id,
                    vm_config,
                });
            }
        }
        out
    }

    /// A Proxy-Wasm filter's root id and VM configuration (empty when not given); on a standard
    /// plugin they are problems.
    fn filter_settings(&mut self, ppath: &str, p: &RawPlugin) -> (String, String) {
        if p.path.is_none() {
            for (key, given) in [
                ("root_id", p.root_id.is_some()),
                ("vm_config", p.vm_config.is_some()),
            ] {
                if given {
                    self.problem(
                        format!("{ppath}.{key}"),
                        "only a Proxy-Wasm filter, given by path, has one",
                        format!("remove {key}"),
                    );
                }
            }
        }
        let root_id = p.root_id.clone().unwrap_or_default();
        if root_id.len() > 256 {
            self.problem(
                format!("{ppath}.root_id"),
                "is longer than 256 characters",
                "give the root id the filter registers",
            );
        }
        let vm_config = match &p.vm_config {
            None | Some(serde_yaml::Value::Null) => String::new(),
            Some(serde_yaml::Value::String(text)) => text.clone(),
            Some(v @ serde_yaml::Value::Mapping(_)) => serde_json::to_string(v).unwrap_or_default(),
            Some(_) => {
                self.problem(
                    format!("{ppath}.vm_config"),
                    "must be text or a map",
                    "write the filter's VM configuration as text, or as key: value pairs",
                );
                String::new()
            }
        };
        (root_id, vm_config)
    }

    /// The grants of a plugin use; bad entries are problems (and left out).
    fn grants(&mut self, path: &str, raw: &RawGrants) -> PluginGrants {
        let hooks = raw.hooks.as_ref().map(|hooks| {
            let mut out = Vec::new();
            for (i, hook) in hooks.iter().enumerate() {
                if PLUGIN_HOOKS.contains(&hook.as_str()) {
                    out.push(hook.clone());
                } else {
                    self.problem(
                        format!("{path}.hooks[{i}]"),
                        format!("{hook:?} is not a hook"),
                        format!("use some of {}", PLUGIN_HOOKS.join(", ")),
                    );
                }
            }
            if out.iter().any(|h| h == "on-response-body") && raw.response_body != Some(true) {
                self.problem(
                    format!("{path}.hooks"),
                    "on-response-body is granted without the response body",
                    "add response_body: true, or leave on-response-body out",
                );
            }
            out
        });
        let mut headers = |what: &str, raw: &Option<RawHeaderGrant>| {
            let mut out = HeaderGrant::default();
            let Some(raw) = raw else { return out };
            for (access, list, into) in [
                ("read", &raw.read, &mut out.read),
                ("write", &raw.write, &mut out.write),
            ] {
                for (i, entry) in list.iter().enumerate() {
                    match header_pattern_problem(entry) {
                        None => into.push(entry.clone()),
                        Some(problem) => self.problem(
                            format!("{path}.{what}.{access}[{i}]"),
                            format!("{entry:?} {problem}"),
                            "write a lower-case header name (authorization), a prefix ending in * (x-tenant-*), or * for every header",
                        ),
                    }
                }
            }
            out
        };
        let request_headers = headers("request_headers", &raw.request_headers);
        let response_headers = headers("response_headers", &raw.response_headers);
        PluginGrants {
            hooks,
            request_headers,
            response_headers,
            request_body: raw.request_body.unwrap_or(false),
            response_body: raw.response_body.unwrap_or(false),
            node_steering: raw.node_steering.unwrap_or(false),
            counters: raw.counters.unwrap_or(false),
        }
    }

    fn connections(
        &mut self,
        raw: &[Vec<String>],
        vpcs: &HashMap<String, Vpc>,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, pair) in raw.iter().enumerate() {
            let path = format!("connections[{i}]");
            if pair.len() != 2 {
                self.problem(
                    path,
                    format!("a connection joins exactly two VPCs, found {}", pair.len()),
                    "write each connected pair as [vpc-a, vpc-b]",
                );
                continue;
            }
            let mut ok = true;
            for (j, id) in pair.iter().enumerate() {
                if !vpcs.contains_key(id) {
                    ok = false;
                    self.unknown_vpc(&format!("{path}[{j}]"), id, vpcs);
                }
            }
            if pair[0] == pair[1] {
                ok = false;
                self.problem(
                    path,
                    format!("connects {:?} to itself", pair[0]),
                    "a VPC always reaches itself; remove this entry",
                );
            }
            if ok {
                out.push((pair[0].clone(), pair[1].clone()));
            }
        }
        out
    }

    fn upstreams(
        &mut self,
        raw: &[RawUpstream],
        vpcs: &HashMap<String, Vpc>,
        connections: &[(String, String)],
        instance: Option<&Instance>,
        base_dir: &Path,
    ) -> Vec<Upstream> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, u) in raw.iter().enumerate() {
            let path = format!("upstreams[{i}]");
            if self.name(&format!("{path}.name"), &u.name, "upstream") && !names.insert(&u.name) {
                self.problem(
                    format!("{path}.name"),
                    format!("upstream {:?} is declared twice", u.name),
                    "upstream names must be unique; rename one",
                );
            }
            let vpc = vpcs.get(&u.vpc);
            if vpc.is_none() {
                self.unknown_vpc(&format!("{path}.vpc"), &u.vpc, vpcs);
            }
            if let (Some(vpc), Some(instance)) = (vpc, instance) {
                let connected = connections.iter().any(|(a, b)| {
                    (a == &vpc.id && b == &instance.vpc) || (b == &vpc.id && a == &instance.vpc)
                });
                if vpc.id != instance.vpc && !connected {
                    self.problem(
                        format!("{path}.vpc"),
                        format!(
                            "upstream VPC {:?} is not the instance's VPC {:?} and the two are not connected",
                            vpc.id, instance.vpc
                        ),
                        format!(
                            "connect them by adding `- [{}, {}]` under connections:, or move the upstream into {:?}",
                            instance.vpc, vpc.id, instance.vpc
                        ),
                    );
                }
            }
            if let Some(alg) = &u.algorithm {
                if alg != "weighted_round_robin" {
                    self.problem(
                        format!("{path}.algorithm"),
                        format!("{alg:?} is not supported"),
                        "use weighted_round_robin (the only algorithm) or omit the key",
                    );
                }
            }
            let protocol = match u.protocol.to_ascii_lowercase().as_str() {
                "http" => Some(Protocol::Http),
                "https" => Some(Protocol::Https),
                other => {
                    self.problem(
                        format!("{path}.protocol"),
                        format!("{other:?} is not a backend protocol"),
                        "use http or https",
                    );
                    None
                }
            };
            if let Some(h) = &u.host_header {
                if !is_valid_host_header(h) {
                    self.problem(
                        format!("{path}.host_header"),
                        format!("{h:?} is not a valid Host header"),
                        "write a host name with an optional port, e.g. users.internal:8080",
                    );
                }
            }
            let retries = match u.retries {
                None => limits::DEFAULT_RETRIES,
                Some(r)
                    if (limits::MIN_RETRIES as i64..=limits::MAX_RETRIES as i64).contains(&r) =>
                {
                    r as u32
                }
                Some(r) => {
                    self.problem(
                        format!("{path}.retries"),
                        format!(
                            "{r} is out of range {}..={}",
                            limits::MIN_RETRIES,
                            limits::MAX_RETRIES
                        ),
                        format!(
                            "set retries between {} and {}, or omit it for the default {}",
                            limits::MIN_RETRIES,
                            limits::MAX_RETRIES,
                            limits::DEFAULT_RETRIES
                        ),
                    );
                    limits::DEFAULT_RETRIES
                }
            };
            let connect_timeout = self
                .duration(
                    &format!("{path}.connect_timeout"),
                    u.connect_timeout.as_deref(),
                    Duration::from_millis(1),
                )
                .unwrap_or(limits::DEFAULT_CONNECT_TIMEOUT);
            let unhealthy_timeout = self
                .duration(
                    &format!("{path}.unhealthy_timeout"),
                    u.unhealthy_timeout.as_deref(),
                    Duration::ZERO,
                )
                .unwrap_or(limits::DEFAULT_UNHEALTHY_TIMEOUT);
            let keepalive_timeout = self
                .duration(
                    &format!("{path}.keepalive_timeout"),
                    u.keepalive_timeout.as_deref(),
                    Duration::from_millis(100),
                )
                .unwrap_or(limits::DEFAULT_KEEPALIVE_TIMEOUT);
            if keepalive_timeout > limits::MAX_KEEPALIVE_TIMEOUT {
                self.problem(
                    format!("{path}.keepalive_timeout"),
                    "is longer than an hour",
                    "keep idle connections at most 1h (and below the backend's own idle timeout)",
                );
            }
            let retry_statuses = self
                .statuses(
                    &format!("{path}.retry_statuses"),
                    u.retry_statuses.as_deref(),
                )
                .unwrap_or_default();
            if let Some(s) = retry_statuses.iter().find(|s| **s < 400) {
                self.problem(
                    format!("{path}.retry_statuses"),
                    format!("{s} is not an error status"),
                    "list error statuses (400–599), e.g. [502, 503, 504]",
                );
            }
            let retry_budget = self.duration(
                &format!("{path}.retry_budget"),
                u.retry_budget.as_deref(),
                Duration::from_millis(1),
            );
            let health = self.health_check(&path, u.health_check.as_ref());
            if unhealthy_timeout.is_zero() && health.passive && health.active.is_none() {
                self.problem(
                    format!("{path}.unhealthy_timeout"),
                    "0s would leave a node that passive checks take out out for good: no active check brings it back (before passive checks had thresholds, 0s meant \"never take a node out\")",
                    "give a recovery time such as 30s, turn active checks on (health_check.active: true), or, to never take a node out, write health_check: { passive: false } and drop unhealthy_timeout",
                );
            }
            let tls = self.tls(&path, u, protocol, base_dir);
            let nodes = self.nodes(&path, &u.nodes, vpc);
            if let (Some(vpc), Some(protocol)) = (vpc, protocol) {
                out.push(Upstream {
                    name: u.name.clone(),
                    vpc: vpc.clone(),
                    description: u.description.clone().unwrap_or_default(),
                    protocol,
                    host_header: u.host_header.clone(),
                    retries,
                    connect_timeout,
                    unhealthy_timeout,
                    keepalive_timeout,
                    http2: u.http2.unwrap_or(false),
                    retry_statuses,
                    retry_budget,
                    health,
                    tls,
                    nodes,
                });
            }
        }
        out
    }

    fn health_check(&mut self, path: &str, raw: Option<&RawHealthCheck>) -> HealthCheck {
        let defaults = HealthCheck::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let path = format!("{path}.health_check");
        let threshold = |v: &mut Self, key: &str, value: Option<i64>, min: i64, default: u32| {
            match value {
                None => default,
                Some(n) if (min..=i64::from(limits::MAX_FAILURE_THRESHOLD)).contains(&n) => {
                    n as u32
                }
                Some(n) => {
                    v.problem(
                        format!("{path}.{key}"),
                        format!("{n} is out of range {min}..={}", limits::MAX_FAILURE_THRESHOLD),
                        if min == 0 {
                            format!("give a count up to {} (0 turns this check off), or omit it for the default {default}", limits::MAX_FAILURE_THRESHOLD)
                        } else {
                            format!("give a count from {min} to {}, or omit it for the default {default}", limits::MAX_FAILURE_THRESHOLD)
                        },
                    );
                    default
                }
            }
        };
        let tcp_failures = threshold(
            self,
            "tcp_failures",
            raw.tcp_failures,
            0,
            defaults.tcp_failures,
        );
        let timeouts = threshold(self, "timeouts", raw.timeouts, 0, defaults.timeouts);
        let http_failures = threshold(
            self,
            "http_failures",
            raw.http_failures,
            0,
            defaults.http_failures,
        );
        let healthy_threshold = threshold(
            self,
            "healthy_threshold",
            raw.healthy_threshold,
            1,
            defaults.healthy_threshold,
        );
        let healthy_statuses = self
            .statuses(
                &format!("{path}.healthy_statuses"),
                raw.healthy_statuses.as_deref(),
            )
            .unwrap_or(defaults.healthy_statuses);
        let unhealthy_statuses = self
            .statuses(
                &format!("{path}.unhealthy_statuses"),
                raw.unhealthy_statuses.as_deref(),
            )
            .unwrap_or(defaults.unhealthy_statuses);
        if let Some(both) = healthy_statuses
            .iter()
            .find(|s| unhealthy_statuses.contains(s))
        {
            self.problem(
                format!("{path}.unhealthy_statuses"),
                format!("{both} is listed as both healthy and unhealthy"),
                "list each status in healthy_statuses or in unhealthy_statuses, not both",
            );
        }
        let probe_path = raw
            .path
            .clone()
            .unwrap_or_else(|| limits::DEFAULT_PROBE_PATH.to_owned());
        if !probe_path.starts_with('/') || probe_path.parse::<http::Uri>().is_err() {
            self.problem(
                format!("{path}.path"),
                format!("{probe_path:?} is not a request path"),
                "write an absolute path such as /healthz (a query may follow)",
            );
        }
        let timeout = self
            .duration(
                &format!("{path}.timeout"),
                raw.timeout.as_deref(),
                Duration::from_millis(1),
            )
            .unwrap_or(limits::DEFAULT_PROBE_TIMEOUT);
        let interval = self
            .duration(
                &format!("{path}.interval"),
                raw.interval.as_deref(),
                limits::MIN_PROBE_INTERVAL,
            )
            .unwrap_or(limits::DEFAULT_PROBE_INTERVAL);
        let mut headers = Vec::new();
        for (name, value) in &raw.headers {
            let ok = http::HeaderName::try_from(name.as_str()).is_ok()
                && http::HeaderValue::try_from(value.as_str()).is_ok();
            if ok {
                headers.push((name.clone(), value.clone()));
            } else {
                self.problem(
                    format!("{path}.headers.{name}"),
                    "is not a valid header name and value",
                    "use a token name (letters, digits, -) and a value without control characters",
                );
            }
        }
        let active_keys = raw.path.is_some()
            || raw.timeout.is_some()
            || raw.interval.is_some()
            || !raw.headers.is_empty()
            || raw.healthy_statuses.is_some()
            || raw.healthy_threshold.is_some();
        let active = raw.active.unwrap_or(false);
        if active_keys && !active {
            self.problem(
                format!("{path}.active"),
                "probe settings are given (path, timeout, interval, headers, healthy_statuses or healthy_threshold) but active checks are off",
                "write active: true to probe the nodes, or drop the probe settings",
            );
        }
        HealthCheck {
            active: active.then_some(ActiveCheck {
                path: probe_path,
                timeout,
                interval,
                headers,
            }),
            passive: raw.passive.unwrap_or(defaults.passive),
            healthy_statuses,
            unhealthy_statuses,
            tcp_failures,
            timeouts,
            http_failures,
            healthy_threshold,
        }
    }

    /// A list of HTTP statuses (100–599, no duplicates).
    fn statuses(&mut self, path: &str, raw: Option<&[i64]>) -> Option<Vec<u16>> {
        let raw = raw?;
        let mut out = Vec::with_capacity(raw.len());
        for (i, &status) in raw.iter().enumerate() {
            if !(100..=599).contains(&status) {
                self.problem(
                    format!("{path}[{i}]"),
                    format!("{status} is not an HTTP status"),
                    "list statuses from 100 to 599",
                );
            } else if out.contains(&(status as u16)) {
                self.problem(
                    format!("{path}[{i}]"),
                    format!("{status} is listed twice"),
                    "list each status once",
                );
            } else {
                out.push(status as u16);
            }
        }
        Some(out)
    }

    fn tls(
        &mut self,
        path: &str,
        u: &RawUpstream,
        protocol: Option<Protocol>,
        base_dir: &Path,
    ) -> Option<Tls> {
        match (&u.tls, protocol) {
            (Some(_), Some(Protocol::Http)) => {
                self.problem(
                    format!("{path}.tls"),
                    "tls settings are given but the protocol is http",
                    "set protocol: https, or remove the tls block",
                );
                None
            }
            (None, Some(Protocol::Https)) => Some(Tls::default()),
            (Some(t), Some(Protocol::Https)) => {
                if let Some(sni) = &t.sni {
                    if !is_dns_name(sni) {
                        self.problem(
                            format!("{path}.tls.sni"),
                            format!("{sni:?} is not a DNS name"),
                            "set the server name the backend's certificate carries, e.g. users.internal",
                        );
                    }
                }
                let ca_file = match t.ca_file.as_deref() {
                    Some("") => {
                        self.problem(
                            format!("{path}.tls.ca_file"),
                            "must not be empty",
                            "give the path of a PEM file of CA certificates, or omit the key to use the system's",
                        );
                        None
                    }
                    Some(f) => self.file(&format!("{path}.tls.ca_file"), f, base_dir),
                    None => None,
                };
                let client = match (&t.client_cert, &t.client_key) {
                    (None, None) => None,
                    (Some(cert), Some(key)) => {
                        let cert = self.file(&format!("{path}.tls.client_cert"), cert, base_dir);
                        let key = self.file(&format!("{path}.tls.client_key"), key, base_dir);
                        Some(CertFiles {
                            cert_file: cert?,
                            key_file: key?,
                        })
                    }
                    (Some(_), None) | (None, Some(_)) => {
                        self.problem(
                            format!("{path}.tls"),
                            "client_cert and client_key go together",
                            "give both (PEM files), or neither",
                        );
                        None
                    }
                };
                Some(Tls {
                    verify: t.verify.unwrap_or(true),
                    ca_file,
                    sni: t.sni.clone(),
                    client,
                })
            }
            _ => None,
        }
    }

    fn nodes(&mut self, path: &str, raw: &[RawNode], vpc: Option<&Vpc>) -> Vec<Node> {
        if raw.is_empty() || raw.len() > limits::MAX_NODES {
            self.problem(
                format!("{path}.nodes"),
                format!(
                    "has {} nodes; an upstream has 1 to {}",
                    raw.len(),
                    limits::MAX_NODES
                ),
                if raw.is_empty() {
                    "add at least one node: { host: 10.0.0.11, port: 8080, weight: 10 }".to_owned()
                } else {
                    format!(
                        "split the nodes over several upstreams of at most {}",
                        limits::MAX_NODES
                    )
                },
            );
        }
        let mut seen: HashMap<(String, i64), usize> = HashMap::new();
        let mut nodes = Vec::new();
        for (j, n) in raw.iter().enumerate() {
            let npath = format!("{path}.nodes[{j}]");
            let host = if let Ok(ip) = n.host.parse::<IpAddr>() {
                if let Some(vpc) = vpc {
                    if !vpc.contains(ip) {
                        self.problem(
                            format!("{npath}.host"),
                            format!("{ip} is outside VPC {:?} ({})", vpc.id, join(&vpc.cidrs)),
                            format!(
                                "use an address inside {:?}, or add its range to that VPC's cidrs",
                                vpc.id
                            ),
                        );
                    }
                }
                Some(NodeHost::Ip(ip))
            } else if is_dns_name(&n.host) {
                Some(NodeHost::Name(n.host.to_ascii_lowercase()))
            } else {
                self.problem(
                    format!("{npath}.host"),
                    format!("{:?} is neither an IP address nor a DNS name", n.host),
                    "write an address like 10.0.0.11 or a name like users-1.internal",
                );
                None
            };
            let port = if (1..=65535).contains(&n.port) {
                Some(n.port as u16)
            } else {
                self.problem(
                    format!("{npath}.port"),
                    format!("{} is out of range 1..=65535", n.port),
                    "set the port the backend listens on",
                );
                None
            };
            let weight = match n.weight {
                None => limits::DEFAULT_WEIGHT,
                Some(w) if (0..=limits::MAX_WEIGHT as i64).contains(&w) => w as u32,
                Some(w) => {
                    self.problem(
                        format!("{npath}.weight"),
                        format!("{w} is out of range 0..={}", limits::MAX_WEIGHT),
                        format!(
                            "set a weight from 0 (drains the node) to {}",
                            limits::MAX_WEIGHT
                        ),
                    );
                    0
                }
            };
            let key = (n.host.to_ascii_lowercase(), n.port);
            if let Some(first) = seen.get(&key) {
                self.problem(
                    npath.clone(),
                    format!("{}:{} is already nodes[{first}]", n.host, n.port),
                    "list each host:port once; raise its weight instead of repeating it",
                );
            } else {
                seen.insert(key, j);
            }
            let tags = self.node_tags(&npath, &n.tags);
            if let (Some(host), Some(port)) = (host, port) {
                nodes.push(Node {
                    host,
                    port,
                    weight,
                    tags,
                });
            }
        }
        if !raw.is_empty() && raw.iter().all(|n| n.weight == Some(0)) {
            self.problem(
                format!("{path}.nodes"),
                "every node has weight 0, so no request could be served",
                "give at least one node a weight above 0",
            );
        }
        nodes
    }

    /// A node's tags: at most [`limits::MAX_NODE_TAGS`], each a short lower-case word, once.
    fn node_tags(&mut self, npath: &str, raw: &[String]) -> Vec<String> {
        if raw.len() > limits::MAX_NODE_TAGS {
            self.problem(
                format!("{npath}.tags"),
                format!(
                    "has {} tags; a node has at most {}",
                    raw.len(),
                    limits::MAX_NODE_TAGS
                ),
                "keep the tags plugins steer by (canary, zone-a, ...)",
            );
        }
        let mut tags: Vec<String> = Vec::with_capacity(raw.len());
        for (k, tag) in raw.iter().enumerate() {
            let good = (1..=limits::MAX_TAG_LEN).contains(&tag.len())
                && tag.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && tag
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !good {
                self.problem(
                    format!("{npath}.tags[{k}]"),
                    format!("{tag:?} is not a tag"),
                    format!(
                        "use 1 to {} lower-case letters, digits, '-' or '_', starting with a letter or digit",
                        limits::MAX_TAG_LEN
                    ),
                );
            } else if let Some(first) = tags.iter().position(|t| t == tag) {
                self.problem(
                    format!("{npath}.tags[{k}]"),
                    format!("{tag:?} is already tags[{first}]"),
                    "list each tag once",
                );
            } else {
                tags.push(tag.clone());
                continue;
            }
            tags.push(String::new());
        }
        tags.retain(|t| !t.is_empty());
        tags
    }

    fn services(
        &mut self,
        raw: &[RawService],
        upstreams: &[RawUpstream],
        instance: Option<&Instance>,
        base_dir: &Path,
    ) -> Vec<Service> {
        let mut service_names = HashSet::new();
        // route shape -> (methods claimed, owner path) for conflict detection across all services
        let mut claims: HashMap<String, Vec<(Vec<String>, String)>> = HashMap::new();
        let mut router = matchit::Router::new();
        let mut out = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let spath = format!("services[{i}]");
            if self.name(&format!("{spath}.name"), &s.name, "service")
                && !service_names.insert(&s.name)
            {
                self.problem(
                    format!("{spath}.name"),
                    format!("service {:?} is declared twice", s.name),
                    "service names must be unique; merge the services or rename one",
                );
            }
            let mut api_names = HashSet::new();
            let mut apis = Vec::new();
            for (j, a) in s.apis.iter().enumerate() {
                let apath = format!("{spath}.apis[{j}]");
                if self.name(&format!("{apath}.name"), &a.name, "API") && !api_names.insert(&a.name)
                {
                    self.problem(
                        format!("{apath}.name"),
                        format!("API {:?} is declared twice in service {:?}", a.name, s.name),
                        "API names must be unique within a service; rename one",
                    );
                }
                let methods = self.methods(&apath, a.methods.as_deref());
                let extension_methods = self.extension_methods(&apath, &a.extension_methods);
                let max_body_size = a
                    .max_body_size
                    .as_deref()
                    .and_then(|t| self.body_size(&format!("{apath}.max_body_size"), t));
                let pattern = match PathPattern::parse(&a.path) {
                    Ok(p) => Some(p),
                    Err(msg) => {
                        self.problem(
                            format!("{apath}.path"),
                            msg,
                            "write a pattern like /users/{id} or /static/{*rest}",
                        );
                        None
                    }
                };
                if let (Some(p), Some(methods)) = (&pattern, &methods) {
                    self.claim_route(&apath, p, methods, &mut claims, &mut router);
                }
                let backend =
                    self.backend(&apath, &a.backend, pattern.as_ref(), upstreams, instance);
                let plugin_limits = instance.map(|i| i.plugin_limits).unwrap_or_default();
                let default_env = [limits::DEFAULT_SECRET_ENV.to_owned()];
                let secret_env = instance.map_or(&default_env[..], |i| &i.secret_env[..]);
                let plugins =
                    self.plugins(&apath, &a.plugins, &plugin_limits, secret_env, base_dir);
                let grpc = a.grpc.unwrap_or(false);
                if grpc {
                    self.grpc_api(&apath, a, methods.as_deref(), upstreams);
                }
                if let (Some(path), Some(methods), Some(backend)) = (pattern, methods, backend) {
                    apis.push(Api {
                        name: a.name.clone(),
                        path,
                        methods,
                        extension_methods,
                        max_body_size,
                        backend,
                        plugins,
                        websocket: a.websocket.unwrap_or(false),
                        grpc,
                        access_log: match a.access_log {
                            None => None,
                            Some(RawLogChoice::Switch(on)) => Some(if on { 1.0 } else { 0.0 }),
                            Some(RawLogChoice::Share(s)) => {
                                self.share(&format!("{apath}.access_log"), s)
                            }
                        },
                    });
                }
            }
            out.push(Service {
                name: s.name.clone(),
                description: s.description.clone().unwrap_or_default(),
                apis,
            });
        }
        out
    }

    fn methods(&mut self, apath: &str, raw: Option<&[String]>) -> Option<Vec<String>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        if raw.is_empty() {
            self.problem(
                format!("{apath}.methods"),
                "the method list is empty, so the API could never match",
                "list methods like [GET, POST], or omit the key to accept every method",
            );
            return None;
        }
        let mut ok = true;
        let mut out: Vec<String> = Vec::new();
        for (k, m) in raw.iter().enumerate() {
            let upper = m.to_ascii_uppercase();
            if upper == "ANY" {
                return Some(Vec::new());
            }
            if !METHODS.contains(&upper.as_str()) {
                ok = false;
                self.problem(
                    format!("{apath}.methods[{k}]"),
                    format!("{m:?} is not an HTTP method"),
                    format!("use one of {}, or ANY", METHODS.join(", ")),
                );
            } else if out.contains(&upper) {
                ok = false;
                self.problem(
                    format!("{apath}.methods[{k}]"),
                    format!("{upper} is listed twice"),
                    "remove the duplicate",
                );
            } else {
                out.push(upper);
            }
        }
        ok.then_some(out)
    }

    /// Extension methods: tokens outside the standard set, upper case.
    fn extension_methods(&mut self, apath: &str, raw: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (k, m) in raw.iter().enumerate() {
            let path = format!("{apath}.extension_methods[{k}]");
            if m.is_empty()
                || !m
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
            {
                self.problem(
                    path,
                    format!("{m:?} is not an upper-case method token"),
                    "write extension methods in upper case, e.g. PROPFIND",
                );
            } else if METHODS.contains(&m.as_str()) || m == "CONNECT" {
                self.problem(
                    path,
                    format!("{m} is not an extension method"),
                    if m == "CONNECT" {
                        "CONNECT tunnels are not proxied; remove it"
                    } else {
                        "list standard methods under methods:"
                    },
                );
            } else if out.contains(m) {
                self.problem(path, format!("{m} is listed twice"), "remove the duplicate");
            } else {
                out.push(m.clone());
            }
        }
        out
    }

    fn claim_route(
        &mut self,
        apath: &str,
        pattern: &PathPattern,
        methods: &[String],
        claims: &mut HashMap<String, Vec<(Vec<String>, String)>>,
        router: &mut matchit::Router<()>,
    ) {
        let shape = pattern.route_shape();
        let existing = claims.entry(shape.clone()).or_default();
        if existing.is_empty() {
            if let Err(e) = router.insert(shape.as_str(), ()) {
                self.problem(
                    format!("{apath}.path"),
                    format!("{:?} cannot be routed next to another API's path: {e}", pattern.as_str()),
                    "a segment cannot be both a {param} and a {*wildcard} at the same position; change one of the paths",
                );
                return;
            }
        }
        for (other_methods, owner) in existing.iter() {
            let overlap: Vec<&str> = if methods.is_empty() || other_methods.is_empty() {
                vec!["every method"]
            } else {
                methods
                    .iter()
                    .filter(|m| other_methods.contains(m))
                    .map(String::as_str)
                    .collect()
            };
            if !overlap.is_empty() {
                self.problem(
                    format!("{apath}.path"),
                    format!(
                        "{} {:?} is already claimed by {owner}",
                        overlap.join(", "),
                        pattern.as_str()
                    ),
                    "two APIs may not serve the same method and path; change the path or the methods",
                );
                return;
            }
        }
        existing.push((methods.to_vec(), apath.to_owned()));
    }

    /// What an API marked `grpc: true` needs: POST among its methods, an upstream that speaks
    /// HTTP/2, and no WebSocket upgrades (its plugins are checked when they are loaded).
    fn grpc_api(
        &mut self,
        apath: &str,
        a: &RawApi,
        methods: Option<&[String]>,
        upstreams: &[RawUpstream],
    ) {
        let gpath = format!("{apath}.grpc");
        if a.websocket == Some(true) {
            self.problem(
                gpath.clone(),
                "an API carries gRPC calls or WebSocket upgrades, not both",
                "publish them as two APIs, or remove websocket: true",
            );
        }
        if methods.is_some_and(|m| !m.is_empty() && !m.iter().any(|m| m == "POST")) {
            self.problem(
                format!("{apath}.methods"),
                "gRPC calls are POST requests, and this API does not accept POST",
                "add POST to methods, or omit methods",
            );
        }
        match (&a.backend.upstream, &a.backend.response) {
            (Some(name), None) => {
                if let Some(u) = upstreams.iter().find(|u| &u.name == name) {
                    if u.http2 != Some(true) {
                        self.problem(
                            gpath,
                            format!("gRPC calls need HTTP/2 to the nodes, and upstream {name:?} speaks HTTP/1.1"),
                            format!("set http2: true on upstream {name:?}"),
                        );
                    }
                }
            }
            (None, Some(_)) => self.problem(
                gpath,
                "a fixed response is not a gRPC answer",
                "give a gRPC API an upstream backend",
            ),
            _ => {}
        }
    }

    fn backend(
        &mut self,
        apath: &str,
        raw: &RawBackend,
        pattern: Option<&PathPattern>,
        upstreams: &[RawUpstream],
        instance: Option<&Instance>,
    ) -> Option<Backend> {
        let bpath = format!("{apath}.backend");
        match (&raw.upstream, &raw.response) {
            (Some(_), Some(_)) | (None, None) => {
                self.problem(
                    bpath,
                    "a backend is either an upstream or a fixed response",
                    "set exactly one of backend.upstream and backend.response",
                );
                None
            }
            (None, Some(r)) => {
                if raw.path.is_some() || raw.timeout.is_some() {
                    self.problem(
                        bpath.clone(),
                        "path and timeout apply to upstream backends only",
                        "remove backend.path and backend.timeout from a fixed response",
                    );
                }
                let status = r.status.unwrap_or(200);
                if !(100..=599).contains(&status) {
                    self.problem(
                        format!("{bpath}.response.status"),
                        format!("{status} is out of range 100..=599"),
                        "use an HTTP status code such as 200",
                    );
                }
                for name in r.headers.keys() {
                    if name.is_empty() || !name.bytes().all(is_token_byte) {
                        self.problem(
                            format!("{bpath}.response.headers.{name}"),
                            format!("{name:?} is not a valid header name"),
                            "use letters, digits and '-' in header names",
                        );
                    }
                }
                for (name, value) in &r.headers {
                    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                        self.problem(
                            format!("{bpath}.response.headers.{name}"),
                            "the value contains a line break or NUL",
                            "keep header values on one line",
                        );
                    }
                }
                Some(Backend::Response(FixedResponse {
                    status: status.clamp(100, 599) as u16,
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    body: r.body.clone(),
                }))
            }
            (Some(name), None) => {
                let upstream = upstreams.iter().position(|u| &u.name == name);
                if upstream.is_none() {
                    let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                    self.problem(
                        format!("{bpath}.upstream"),
                        format!("upstream {name:?} is not declared"),
                        if known.is_empty() {
                            "declare it under upstreams:".to_owned()
                        } else {
                            format!("use one of: {}", known.join(", "))
                        },
                    );
                }
                if instance.is_some_and(|i| i.kind == InstanceKind::Shared) {
                    self.problem(
                        format!("{bpath}.upstream"),
                        "VPC upstreams serve APIs on dedicated instances only, and this instance is shared",
                        "set instance.type: dedicated, or give this API a fixed response backend",
                    );
                }
                let path = match (&raw.path, pattern) {
                    (Some(t), Some(p)) => match PathTemplate::parse(t, p) {
                        Ok(t) => Some(t),
                        Err(msg) => {
                            self.problem(
                                format!("{bpath}.path"),
                                msg,
                                "use only parameters of the API path, e.g. /v1/users/{id}",
                            );
                            None
                        }
                    },
                    _ => None,
                };
                let timeout = self
                    .duration(
                        &format!("{bpath}.timeout"),
                        raw.timeout.as_deref(),
                        Duration::from_millis(1),
                    )
                    .unwrap_or(limits::DEFAULT_BACKEND_TIMEOUT);
                if let Some(at) = &raw.bound_at {
                    if humantime::parse_rfc3339_weak(at).is_err() {
                        self.problem(
                            format!("{bpath}.bound_at"),
                            format!("{at:?} is not an RFC 3339 time"),
                            "write a time like 2026-11-27T13:00:00Z, or remove the key",
                        );
                    }
                }
                Some(Backend::Upstream(UpstreamBackend {
                    upstream: upstream?,
                    path,
                    timeout,
                    bound_at: raw.bound_at.clone(),
                }))
            }
        }
    }

    /// Checks a resource name; returns whether it is valid.
    fn name(&mut self, path: &str, name: &str, what: &str) -> bool {
        let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if name.is_empty() || name.len() > limits::MAX_NAME_LEN || !valid_chars {
            self.problem(
                path,
                format!(
                    "{what} name {name:?} must be 1 to {} characters of a-z, A-Z, 0-9 and _",
                    limits::MAX_NAME_LEN
                ),
                format!("rename it, e.g. {:?}", suggest_name(name)),
            );
            return false;
        }
        true
    }

    fn unknown_vpc(&mut self, path: &str, id: &str, vpcs: &HashMap<String, Vpc>) {
        let mut known: Vec<&str> = vpcs.keys().map(String::as_str).collect();
        known.sort_unstable();
        self.problem(
            path,
            format!("VPC {id:?} is not declared"),
            if known.is_empty() {
                format!("declare it under vpcs: with its cidrs, e.g. - {{ id: {id}, cidrs: [\"10.0.0.0/16\"] }}")
            } else {
                format!("use one of: {}, or declare {id:?} under vpcs:", known.join(", "))
            },
        );
    }

    fn socket_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    path,
                    format!("{text:?} is not an IP:port address"),
                    "write an address like 0.0.0.0:8080 or [::]:8080 (host names are not resolved)",
                );
                None
            }
        }
    }

    fn duration(&mut self, path: &str, text: Option<&str>, min: Duration) -> Option<Duration> {
        let text = text?;
        match humantime::parse_duration(text) {
            Ok(d) if d >= min => Some(d),
            Ok(_) => {
                self.problem(
                    path,
                    format!("{text:?} is too short"),
                    format!("use at least {}", humantime::format_duration(min)),
                );
                None
            }
            Err(_) => {
                self.problem(
                    path,
                    format!("{text:?} is not a duration"),
                    "write a duration like 500ms, 15s or 1m",
                );
                None
            }
        }
    }
}

fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn suggest_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(limits::MAX_NAME_LEN)
        .collect();
    if s.is_empty() {
        "my_name".to_owned()
    } else {
        s
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and '-', not starting or ending
/// with '-', at most 253 characters.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.parse::<IpAddr>().is_err()
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn is_valid_host_header(h: &str) -> bool {
    let host = host_without_port(h);
    let port_ok = match h
        .strip_prefix(host)
        .or_else(|| h.strip_prefix(&format!("[{host}]")))
    {
        Some("") => true,
        Some(p) => p
            .strip_prefix(':')
            .and_then(|p| p.parse::<u16>().ok())
            .is_some_and(|p| p > 0),
        None => false,
    };
    port_ok && (is_dns_name(host) || host.parse::<IpAddr>().is_ok())
}

/// Parses `16MiB`, `512KiB`, `1GiB`, `64MB` or a plain number of bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1024,
        "MiB" | "MB" | "M" => 1024 * 1024,
        "GiB" | "GB" | "G" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// `bytes` the way sizes are written in the configuration (`16MiB`).
fn format_size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    match bytes {
        b if b % (1024 * MIB) == 0 => format!("{}GiB", b / (1024 * MIB)),
        b if b % MIB == 0 => format!("{}MiB", b / MIB),
        b if b % 1024 == 0 => format!("{}KiB", b / 1024),
        b => format!("{b}B"),
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The hooks of the plugin contract, as grants name them.
pub const PLUGIN_HOOKS: [&str; 4] = [
    "on-request",
    "on-upstream-request",
    "on-response",
    "on-response-body",
];

/// What is wrong with a header entry of grants or of a plugin's declared needs, if anything: a
/// lower-case header name, a prefix ending in `*`, or `*` alone.
pub fn header_pattern_problem(entry: &str) -> Option<&'static str> {
    if entry == "*" {
        return None;
    }
    let name = entry.strip_suffix('*').unwrap_or(entry);
    if name.is_empty() {
        return Some("is empty");
    }
    if name.contains('*') {
        return Some("has a * that is not at its end");
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some("is not lower case");
    }
    // the token characters of RFC 9110
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'+-.^_`|~".contains(&b);
    if !name.bytes().all(token) {
        return Some("is not a header name");
    }
    None
}
