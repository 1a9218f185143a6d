//! The validated configuration: what the gateway runs. Every value here has passed the rules in
//! [`crate::validate`], so the proxy can build its runtime from it without further checks.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::pattern::{PathPattern, PathTemplate};

/// Upper bounds and defaults of the product.
pub mod limits {
    use std::time::Duration;

    pub const MAX_NAME_LEN: usize = 50;
    pub const MAX_NODES: usize = 200;
    pub const MAX_WEIGHT: u32 = 100;
    /// Tags of one node.
    pub const MAX_NODE_TAGS: usize = 8;
    pub const MAX_TAG_LEN: usize = 32;
    pub const DEFAULT_WEIGHT: u32 = 10;
    pub const MIN_RETRIES: u32 = 1;
    pub const MAX_RETRIES: u32 = 100;
    pub const DEFAULT_RETRIES: u32 = 5;
    /// Long enough for a loaded backend to accept, short enough that a black-holed node is left
    /// quickly for the next one.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// nginx's `proxy_read_timeout` default: the longest a backend may stay silent.
    pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(60);
    /// Long enough to stop hammering a dead node, short enough to notice its return quickly.
    pub const DEFAULT_UNHEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// As nginx's `http2_max_concurrent_streams`.
    pub const DEFAULT_H2_STREAMS: u32 = 128;
    /// The h2 library's own default: a client resetting more streams than this before the
    /// server has seen them is closed (CVE-2023-44487, "rapid reset").
    pub const DEFAULT_H2_PENDING_RESETS: usize = 20;
    /// A quarter of the default stream limit: uploads in parallel on one connection are served,
    /// a connection holding every stream open on a body that never comes is not.
    pub const DEFAULT_H2_PENDING_BODIES: usize = 32;
    pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Long enough for a new process to load a large configuration and compile its plugins
    /// before the old one hands its sockets over, in either order.
    pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(300);
    /// Below the idle timeouts of common backends (Node.js and Apache: 5 s), so the gateway, not
    /// the backend, closes an idle connection, and a request never meets one the backend has just
    /// closed.
    pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);
    pub const MAX_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const DEFAULT_HEALTHY_STATUSES: [u16; 2] = [200, 302];
    pub const DEFAULT_UNHEALTHY_STATUSES: [u16; 4] = [500, 502, 503, 504];
    pub const DEFAULT_TCP_FAILURES: u32 = 1;
    pub const DEFAULT_TIMEOUT_FAILURES: u32 = 3;
    pub const DEFAULT_HTTP_FAILURES: u32 = 5;
    pub const MAX_FAILURE_THRESHOLD: u32 = 254;
    pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
    pub const DEFAULT_PROBE_PATH: &str = "/";
    pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);
    pub const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(100);
    pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);
    pub const DEFAULT_ETCD_PREFIX: &str = "/gatehouse";
    pub const DEFAULT_ETCD_CACHE_DIR: &str = "gatehouse-cache";
    pub const DEFAULT_ETCD_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_METRICS: &str = "127.0.0.1:9091";
    pub const DEFAULT_ADMIN: &str = "127.0.0.1:9180";
    /// Shorter tokens are too easy to guess.
    pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
    pub const MAX_THREADS: usize = 256;
    /// Room for a plugin's code, stack and a few request copies; small plugins use under 2 MiB.
    pub const DEFAULT_PLUGIN_MEMORY: u64 = 16 * 1024 * 1024;
    /// A header transform takes microseconds; 10 ms only stops runaway code.
    pub const DEFAULT_PLUGIN_TIME: Duration = Duration::from_millis(10);
    pub const MAX_PLUGIN_MEMORY: u64 = 1024 * 1024 * 1024;
    /// Counted in linear memory sizes (a small Rust plugin declares about 1.1 MiB, of which it
    /// touches far less): room for thousands of instances of small plugins.
    pub const DEFAULT_PLUGIN_TOTAL_MEMORY: u64 = 4 * 1024 * 1024 * 1024;
    /// A hook call holds its request; a second is already far past any sane transform.
    pub const MAX_PLUGIN_TIME: Duration = Duration::from_secs(1);
    /// Far more than a transform needs (CORS sets 6), far below what hurts a backend.
    pub const DEFAULT_PLUGIN_ADDED_HEADERS: usize = 64;
    /// Room for a signed token or a cookie or two; the whole request header is bounded too.
    pub const DEFAULT_PLUGIN_ADDED_HEADER_BYTES: usize = 16 * 1024;
    /// Keys of one plugin use's counters: a client address each, for a rate limit, at about a
    /// hundred bytes per key.
    pub const DEFAULT_PLUGIN_COUNTER_KEYS: usize = 65_536;
    pub const MAX_PLUGIN_COUNTER_KEYS: usize = 4 << 20;
    /// A JSON document or a signed form; larger bodies are content, which plugins should not
    /// hold in memory per request.
    pub const DEFAULT_PLUGIN_BODY: u64 = 64 * 1024;
    /// What a plugin use may ask for unless the instance allows more.
    pub const DEFAULT_PLUGIN_MAX_BODY: u64 = 1024 * 1024;
    /// Most any instance allows: every body is held whole, once per request.
    pub const MAX_PLUGIN_BODY: u64 = 16 * 1024 * 1024;
    /// nginx's `client_header_timeout` (60 s) is generous to slow links; 10 s is ample for any
    /// client that is not dripping bytes on purpose (HAProxy's `timeout http-request` advice).
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// nginx's `keepalive_timeout` is 75 s; browsers close idle connections after 60 s or less.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// nginx's `keepalive_requests` default: bounds per-connection state without hurting reuse.
    pub const DEFAULT_REQUESTS_PER_CONNECTION: u64 = 1000;
    /// Request line plus header lines; nginx accepts 4 × 8 KiB, Envoy 60 KiB.
    pub const DEFAULT_MAX_HEADER_SIZE: usize = 32 * 1024;
    /// The read buffer of a plain listener's client connection. The engine's own is 64 KiB,
    /// allocated up front for every connection; a request header fits in 4 KiB, and reads
    /// larger than the buffer (bodies) bypass it: the bench measured no CPU difference.
    pub const DEFAULT_READ_BUFFER: usize = 4 * 1024;
    pub const MAX_READ_BUFFER: usize = 1024 * 1024;
    pub const MIN_HEADER_SIZE: usize = 1024;
    /// Envoy's default header count limit.
    pub const DEFAULT_MAX_HEADERS: usize = 100;
    /// The engine's parser stops at 256 header lines whatever the setting.
    pub const MAX_HEADERS: usize = 256;
    /// Large enough for JSON APIs and form uploads; raise it per API for file uploads.
    pub const DEFAULT_MAX_BODY_SIZE: u64 = 10 * 1024 * 1024;
    /// nginx's `client_body_timeout`.
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
    /// Far below the usual 64k file descriptors, far above what 2 cores serve at once.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    /// The only environment variables a plugin's secret keys may name by default: the admin API
    /// can write plugin configurations, and must not make the gateway read its machine's
    /// environment (`${HOME}`, `${AWS_SECRET_ACCESS_KEY}`).
    pub const DEFAULT_SECRET_ENV: &str = "GATEHOUSE_SECRET_*";
    /// The standard plugins embedded in the gateway, usable by `name`.
    pub const STANDARD_PLUGINS: [&str; 10] = [
        "host-rewrite",
        "headers",
        "path-rewrite",
        "request-id",
        "key-auth",
        "ip-restriction",
        "cors",
        "json-validator",
        "canary",
        "rate-limit",
    ];
}

#[derive(Debug, Clone)]
pub struct Config {
    pub instance: Instance,
    pub vpcs: Vec<Vpc>,
    /// Pairs of VPC ids declared connected (order within a pair does not matter).
    pub connections: Vec<(String, String)>,
    pub upstreams: Vec<Upstream>,
    pub services: Vec<Service>,
    /// Short hex digest of the source text, exported as a metric label to tell configs apart.
    pub hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceKind {
    Dedicated,
    Shared,
}

impl InstanceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceKind::Dedicated => "dedicated",
            InstanceKind::Shared => "shared",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub kind: InstanceKind,
    pub vpc: String,
    pub listen: Vec<SocketAddr>,
    pub metrics: SocketAddr,
    /// Worker threads; `None` means one per available core.
    pub threads: Option<usize>,
    pub dns_refresh: Duration,
    pub plugin_limits: PluginLimits,
    /// The environment variables `${NAME}` references in plugin secrets may read: names, or
    /// prefixes ending in `*`.
    pub secret_env: Vec<String>,
    /// Address of the admin API.
    pub admin: SocketAddr,
    /// The admin API's bearer token from the file (the environment may supply one instead).
    pub admin_token: Option<String>,
    /// How client requests are read, normalised and bounded.
    pub http: HttpOptions,
    /// TLS of the admin listener: certificate chain and private key (PEM files).
    pub admin_tls: Option<CertFiles>,
    /// Client networks allowed to reach the admin API; empty allows any.
    pub admin_allow: Vec<IpNet>,
    /// Absolute folders the files named by the configuration (plugin components, CA files) are
    /// read from; by default the configuration file's own folder.
    pub file_roots: Vec<PathBuf>,
    pub access_log: AccessLog,
    /// Listeners that terminate TLS.
    pub tls: Option<ListenerTls>,
    /// Longest requests in flight may take to finish once the gateway stops (SIGTERM, upgrade).
    pub drain_timeout: Duration,
    /// The Unix socket through which a new process takes the listening sockets over.
    pub upgrade_socket: PathBuf,
    /// Longest a process started with `--upgrade` waits for the running one's sockets, and a
    /// running process sent `SIGQUIT` waits for a new one to take them.
    pub upgrade_timeout: Duration,
    /// The etcd cluster holding the shared configuration; `None`: this file holds it.
    pub etcd: Option<EtcdSource>,
}

/// The password of an etcd user: given (from the environment), or read from a file when the
/// gateway connects.
#[derive(Clone, PartialEq, Eq)]
pub enum EtcdPassword {
    Value(String),
    File(PathBuf),
}

impl std::fmt::Debug for EtcdPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdPassword::Value(_) => f.write_str("Value(<redacted>)"),
            EtcdPassword::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// An etcd v3 cluster as a configuration source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSource {
    /// `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// Key prefix, starting with `/`, without a trailing `/`.
    pub prefix: String,
    /// User name and password.
    pub credentials: Option<(String, EtcdPassword)>,
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key, for a cluster that authenticates clients by certificate.
    pub identity: Option<CertFiles>,
    /// Absolute folder of the cached last good configuration and the files it names.
    pub cache_dir: PathBuf,
    /// Longest one etcd request may take.
    pub timeout: Duration,
}

/// TLS listeners and their certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub listen: Vec<SocketAddr>,
    /// Chosen by SNI among the names of each certificate; the first one is the default.
    pub certificates: Vec<CertFiles>,
    /// Offer HTTP/2 by ALPN.
    pub http2: bool,
}

/// Where and how requests are logged.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// Share of requests logged (0 when off), unless an API says otherwise.
    pub sample: f64,
    pub format: AccessLogFormat,
    /// Absolute path of the file appended to; standard output when `None`.
    pub file: Option<PathBuf>,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            sample: 0.0,
            format: AccessLogFormat::Json,
            file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// One compact line of text per request.
    Text,
}

/// A PEM certificate chain and its private key (a listener's or a client's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Client-facing HTTP options of the proxy listeners (`instance.http`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Merge consecutive slashes of the request path into one.
    pub merge_slashes: bool,
    /// Keep `%2F` in paths instead of refusing the request.
    pub allow_encoded_slashes: bool,
    /// Peers whose `X-Forwarded-*`, `X-Real-IP` and `Forwarded` headers are kept and extended.
    pub trusted_proxies: Vec<IpNet>,
    /// Longest a client may take to send a whole request header (from the first byte of the
    /// request, or from the end of the previous response on a kept-alive connection).
    pub header_timeout: Duration,
    /// Longest an idle kept-alive connection is kept open.
    pub idle_timeout: Duration,
    /// Requests served on one connection before it is closed (`0`: no limit).
    pub max_requests_per_connection: u64,
    /// Largest request header (request line and all header lines), in bytes.
    pub max_header_size: usize,
    /// Read buffer of each client connection of the plain listeners, in bytes (`0`: none).
    pub read_buffer: usize,
    /// Most header lines in one request.
    pub max_headers: usize,
    /// Largest request body, in bytes (APIs may override it).
    pub max_body_size: u64,
    /// Longest the client may stay silent while sending the request body.
    pub body_timeout: Duration,
    /// Most client connections open at once, over all proxy listeners.
    pub max_connections: usize,
    /// HTTP/2 with prior knowledge on the plain listeners.
    pub h2c: bool,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_resets: usize,
    /// Streams of one HTTP/2 connection still receiving their request body at once.
    pub h2_max_pending_bodies: usize,
    /// What becomes of request header names with an underscore.
    pub underscores_in_headers: Underscores,
}

/// Request header names with an underscore (`X_Forwarded_For`): CGI and WSGI backends read them
/// as the dashed name (`X-Forwarded-For`), so they can pass for headers the gateway controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscores {
    /// Removed before the plugins and the backend see the request (nginx's default).
    Drop,
    /// The request gets `400`.
    Reject,
    /// Passed on.
    Allow,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            allow_encoded_slashes: false,
            trusted_proxies: Vec::new(),
            header_timeout: limits::DEFAULT_HEADER_TIMEOUT,
            idle_timeout: limits::DEFAULT_IDLE_TIMEOUT,
            max_requests_per_connection: limits::DEFAULT_REQUESTS_PER_CONNECTION,
            max_header_size: limits::DEFAULT_MAX_HEADER_SIZE,
            read_buffer: limits::DEFAULT_READ_BUFFER,
            max_headers: limits::DEFAULT_MAX_HEADERS,
            max_body_size: limits::DEFAULT_MAX_BODY_SIZE,
            body_timeout: limits::DEFAULT_BODY_TIMEOUT,
            max_connections: limits::DEFAULT_MAX_CONNECTIONS,
            h2c: false,
            h2_max_concurrent_streams: limits::DEFAULT_H2_STREAMS,
            h2_max_pending_resets: limits::DEFAULT_H2_PENDING_RESETS,
            h2_max_pending_bodies: limits::DEFAULT_H2_PENDING_BODIES,
            underscores_in_headers: Underscores::Drop,
        }
    }
}

impl HttpOptions {
    /// Whether a peer's forwarding headers are believed.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// Sandbox limits applied to every plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Bytes of linear memory per instance.
    pub memory: u64,
    /// Longest a hook call may run.
    pub time: Duration,
    /// Keep warm instances for later calls instead of instantiating for every call.
    pub reuse_instances: bool,
    /// Bytes of linear memory all instances of the process may use together.
    pub total_memory: u64,
    /// Most headers one hook call may add or set.
    pub max_added_headers: usize,
    /// Most header bytes (names and values) one hook call may add or set.
    pub max_added_header_bytes: usize,
    /// Most memory one plugin use may ask for.
    pub max_memory: u64,
    /// Longest time limit one plugin use may ask for.
    pub max_time: Duration,
    /// Largest body a plugin use reads, unless it sets its own.
    pub body: u64,
    /// Largest body limit one plugin use may ask for.
    pub max_body: u64,
    /// Most keys of one plugin use's counters.
    pub counter_keys: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory: limits::DEFAULT_PLUGIN_MEMORY,
            time: limits::DEFAULT_PLUGIN_TIME,
            reuse_instances: true,
            total_memory: limits::DEFAULT_PLUGIN_TOTAL_MEMORY,
            max_added_headers: limits::DEFAULT_PLUGIN_ADDED_HEADERS,
            max_added_header_bytes: limits::DEFAULT_PLUGIN_ADDED_HEADER_BYTES,
            counter_keys: limits::DEFAULT_PLUGIN_COUNTER_KEYS,
            max_memory: limits::MAX_PLUGIN_MEMORY,
            max_time: limits::MAX_PLUGIN_TIME,
            body: limits::DEFAULT_PLUGIN_BODY,
            max_body: limits::DEFAULT_PLUGIN_MAX_BODY,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Vpc {
    pub id: String,
    pub cidrs: Vec<IpNet>,
}

impl Vpc {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.cidrs.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are judged as the IPv4 address they carry.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub verify: bool,
    /// Absolute path (relative paths are resolved against the config file's folder).
    pub ca_file: Option<PathBuf>,
    pub sni: Option<String>,
    /// Presented to nodes that ask for a client certificate (mutual TLS).
    pub client: Option<CertFiles>,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            verify: true,
            ca_file: None,
            sni: None,
            client: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub vpc: Vpc,
    pub description: String,
    pub protocol: Protocol,
    pub host_header: Option<String>,
    /// Extra attempts after the first failed one.
    pub retries: u32,
    pub connect_timeout: Duration,
    /// How long a node taken out by passive checks stays out before it is tried again; zero
    /// (allowed only with active checks) leaves it out until active checks find it healthy.
    pub unhealthy_timeout: Duration,
    /// How long an idle connection to a node is kept for reuse.
    pub keepalive_timeout: Duration,
    /// HTTP/2 to the nodes (ALPN over TLS, prior knowledge over plain HTTP).
    pub http2: bool,
    /// Statuses that count as a failed attempt, retried on another node (idempotent requests).
    pub retry_statuses: Vec<u16>,
    /// Total time all attempts of one request may take.
    pub retry_budget: Option<Duration>,
    pub health: HealthCheck,
    /// Present for `https` upstreams (defaults applied).
    pub tls: Option<Tls>,
    pub nodes: Vec<Node>,
}

impl Upstream {
    /// The TLS server name to send: `tls.sni`, else the Host header's host, else the node's host.
    pub fn sni_for(&self, node: &Node) -> String {
        if let Some(sni) = self.tls.as_ref().and_then(|t| t.sni.clone()) {
            return sni;
        }
        if let Some(host) = &self.host_header {
            return host_without_port(host).to_owned();
        }
        node.host.to_string()
    }
}

/// The host part of a `host[:port]` Host header value (IPv6 literals keep their brackets stripped).
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// How an upstream's nodes are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Background probes; `None` when active checks are off.
    pub active: Option<ActiveCheck>,
    /// Outcomes of real requests count.
    pub passive: bool,
    /// Statuses a probe counts as healthy.
    pub healthy_statuses: Vec<u16>,
    /// Statuses a probe or (with passive checks) a real response counts as a failure.
    pub unhealthy_statuses: Vec<u16>,
    /// Consecutive failures of each kind that take a node out; 0 = never.
    pub tcp_failures: u32,
    pub timeouts: u32,
    pub http_failures: u32,
    /// Consecutive healthy probes that bring a node back.
    pub healthy_threshold: u32,
}

impl HealthCheck {
    /// Whether any check runs (otherwise every node is `OFF` and always used).
    pub fn enabled(&self) -> bool {
        self.active.is_some() || self.passive
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            active: None,
            passive: true,
            healthy_statuses: limits::DEFAULT_HEALTHY_STATUSES.to_vec(),
            unhealthy_statuses: limits::DEFAULT_UNHEALTHY_STATUSES.to_vec(),
            tcp_failures: limits::DEFAULT_TCP_FAILURES,
            timeouts: limits::DEFAULT_TIMEOUT_FAILURES,
            http_failures: limits::DEFAULT_HTTP_FAILURES,
            healthy_threshold: limits::DEFAULT_HEALTHY_THRESHOLD,
        }
    }
}

/// The probe of active health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    /// Path and query of the probe (`GET`).
    pub path: String,
    pub timeout: Duration,
    pub interval: Duration,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeHost {
    Ip(IpAddr),
    /// A DNS name, resolved off the request path.
    Name(String),
}

impl std::fmt::Display for NodeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeHost::Ip(ip) => write!(f, "{ip}"),
            NodeHost::Name(n) => f.write_str(n),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub host: NodeHost,
    pub port: u16,
    /// 0 drains the node: it keeps its place but receives no new requests.
    pub weight: u32,
    /// Labels plugins steer requests by (`canary`), each once.
    pub tags: Vec<String>,
}

impl Node {
    /// `host:port`, with IPv6 literals bracketed: the node's name in logs and metrics.
    pub fn label(&self) -> String {
        match self.host {
            NodeHost::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub description: String,
    pub apis: Vec<Api>,
}

#[derive(Debug, Clone)]
pub struct Api {
    pub name: String,
    pub path: PathPattern,
    /// Upper-case method names; empty means every standard method ([`crate::validate::METHODS`]
    /// but `TRACE`).
    pub methods: Vec<String>,
    /// Methods outside the standard set that the API also accepts.
    pub extension_methods: Vec<String>,
    /// Largest request body, when the API overrides `instance.http.max_body_size`.
    pub max_body_size: Option<u64>,
    pub backend: Backend,
    /// Run in this order for each request.
    pub plugins: Vec<PluginRef>,
    /// Share of this API's requests logged, when it overrides the instance's.
    pub access_log: Option<f64>,
    /// WebSocket upgrades pass through to the node.
    pub websocket: bool,
    /// The API carries gRPC calls (its upstream speaks HTTP/2, its plugins read no body).
    pub grpc: bool,
}

/// Where a plugin's component comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PluginSource {
    /// One of [`limits::STANDARD_PLUGINS`], embedded in the gateway.
    Standard(String),
    /// A component file (absolute path).
    File(PathBuf),
}

impl PluginSource {
    /// The plugin's name in logs and metrics: the standard name or the file's stem.
    pub fn label(&self) -> String {
        match self {
            PluginSource::Standard(n) => n.clone(),
            PluginSource::File(p) => p.file_stem().map_or_else(
                || p.display().to_string(),
                |s| s.to_string_lossy().into_owned(),
            ),
        }
    }
}

/// What happens to a request when its plugin fails (traps, times out, runs out of memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Answer 500 naming the plugin.
    FailClosed,
    /// Go on without the plugin.
    FailOpen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    pub source: PluginSource,
    /// The plugin's configuration as JSON text (`{}` when absent).
    pub config: String,
    pub on_error: OnError,
    /// Linear memory of one instance of this use.
    pub memory: u64,
    /// Longest one hook call of this use may run.
    pub time: Duration,
    /// Largest request or response body this use reads.
    pub body: u64,
    /// What the operator granted this use; `None`: the default (see [`PluginGrants`]).
    pub grants: Option<PluginGrants>,
    /// A Proxy-Wasm filter's root id (empty: the default root).
    pub root_id: String,
    /// A Proxy-Wasm filter's VM configuration (empty when none).
    pub vm_config: String,
}

/// What a plugin use may touch. Without grants, a standard plugin may do what it declares, a 0.2
/// component file only its header hooks on the request line, and a 0.1 component file what 0.1
/// gave (every header, no body).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PluginGrants {
    /// Hook names; `None`: every hook but `on-response-body`, which comes with `response_body`.
    pub hooks: Option<Vec<String>>,
    pub request_headers: HeaderGrant,
    pub response_headers: HeaderGrant,
    pub request_body: bool,
    pub response_body: bool,
    pub node_steering: bool,
    pub counters: bool,
}

/// Headers of one message a plugin use may read and write: lower-case names, prefixes ending in
/// `*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderGrant {
    pub read: Vec<String>,
    pub write: Vec<String>,
}

impl Api {
    pub fn allows_any_method(&self) -> bool {
        self.methods.is_empty()
    }
}

#[derive(Debug, Clone)]
pub enum Backend {
    Upstream(UpstreamBackend),
    /// A fixed answer from the gateway itself (health endpoints, mocks).
    Response(FixedResponse),
}

#[derive(Debug, Clone)]
pub struct UpstreamBackend {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub path: Option<PathTemplate>,
    pub timeout: Duration,
    /// When the API was bound to the upstream (RFC 3339), if recorded.
    pub bound_at: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FixedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Config {
    /// The APIs whose backend is `upstream` (index), as (service, api) pairs.
    pub fn apis_of_upstream(&self, upstream: usize) -> impl Iterator<Item = (&Service, &Api)> {
        self.services.iter().flat_map(move |s| {
            s.apis.iter().filter_map(move |a| match &a.backend {
                Backend::Upstream(b) if b.upstream == upstream => Some((s, a)),
                _ => None,
            })
        })
    }
}
