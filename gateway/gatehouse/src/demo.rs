//! `gatehouse demo`: echo backends on the configuration's loopback nodes, and a short guided
//! tour printed once the gateway answers.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use gatehouse_config::{Config, NodeHost};
use gatehouse_echo::{EchoConfig, EchoServer};
use gatehouse_proxy::SharedRuntime;

/// The running echo backends and what the tour needs to know.
pub struct Tour {
    _backends: Vec<EchoServer>,
    listen: SocketAddr,
    metrics: SocketAddr,
    /// (service, API, example path) of the first GET API of each upstream.
    examples: Vec<(String, String, String)>,
    /// The admin listener, when the admin API (and with it the console) is on.
    console: Option<SocketAddr>,
}

/// Starts an echo backend on every loopback node except `down`.
pub fn start_backends(config: &Config, down: &[String]) -> Result<Tour, String> {
    let mut backends = Vec::new();
    let mut started = std::collections::BTreeSet::new();
    for upstream in &config.upstreams {
        for node in &upstream.nodes {
            let NodeHost::Ip(ip) = node.host else {
                continue;
            };
            if !ip.is_loopback() || down.contains(&node.label()) {
                continue;
            }
            let addr = SocketAddr::new(ip, node.port);
            // two upstreams may share a node: one backend serves both
            if !started.insert(addr) {
                continue;
            }
            let server = EchoServer::start(addr, EchoConfig::echo(node.label()))
                .map_err(|e| format!("cannot start an echo backend on {addr}: {e}"))?;
            backends.push(server);
        }
    }
    let mut examples = Vec::new();
    for (index, upstream) in config.upstreams.iter().enumerate() {
        let api = config
            .apis_of_upstream(index)
            .find(|(_, api)| api.allows_any_method() || api.methods.iter().any(|m| m == "GET"));
        if let Some((service, api)) = api {
            let path: String = api
                .path
                .as_str()
                .split('/')
                .map(|s| if s.starts_with('{') { "42" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            examples.push((
                service.name.clone(),
                format!("{} (upstream {})", api.name, upstream.name),
                path,
            ));
        }
    }
    let listen = config.instance.listen[0];
    let listen = if listen.ip().is_unspecified() {
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), listen.port())
    } else {
        listen
    };
    Ok(Tour {
        _backends: backends,
        listen,
        metrics: config.instance.metrics,
        examples,
        console: None,
    })
}

impl Tour {
    /// Shows the console on the admin listener `admin` in the tour.
    pub fn with_console(mut self, admin: SocketAddr) -> Self {
        self.console = Some(admin);
        self
    }

    /// Prints the tour from a thread of its own once the gateway accepts connections; the echo
    /// backends live as long as the process.
    pub fn show_when_ready(self, runtime: SharedRuntime) {
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while TcpStream::connect(self.listen).is_err() {
                if Instant::now() > deadline {
                    eprintln!(
                        "gatehouse demo: the gateway did not start listening on {}",
                        self.listen
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            self.show(&runtime);
            // keep the backends alive with the process
            loop {
                std::thread::park();
            }
        });
    }

    fn show(&self, runtime: &SharedRuntime) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let base = format!("http://{}", self.listen);
        println!(
            "\nGatehouse demo: the gateway listens on {base}, metrics on http://{}/metrics\n",
            self.metrics
        );
        for (service, api, path) in &self.examples {
            println!("{service}.{api}: 14 x GET {path}");
            let mut nodes = Vec::new();
            let mut statuses = BTreeMap::new();
            let mut host = None;
            let mut request_id = None;
            for _ in 0..14 {
                match agent.get(format!("{base}{path}")).call() {
                    Ok(mut resp) => {
                        *statuses.entry(resp.status().as_u16()).or_insert(0) += 1;
                        let body = resp.body_mut().read_to_string().unwrap_or_default();
                        let json: serde_json::Value =
                            serde_json::from_str(&body).unwrap_or_default();
                        nodes.push(json["node"].as_str().unwrap_or("-").to_owned());
                        host = json["host"].as_str().map(str::to_owned).or(host);
                        request_id = json["headers"]["x-request-id"]
                            .as_str()
                            .map(str::to_owned)
                            .or(request_id);
                    }
                    Err(e) => {
                        println!("  request failed: {e}");
                        break;
                    }
                }
            }
            println!("  statuses: {statuses:?}");
            println!("  nodes in order: {}", nodes.join(" "));
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for n in &nodes {
                *counts.entry(n).or_default() += 1;
            }
            println!("  per node: {counts:?}");
            if let Some(h) = host {
                println!("  Host header seen by the backend: {h}");
            }
            if let Some(id) = request_id {
                println!("  X-Request-Id added by the request-id plugin: {id}");
            }
            println!();
        }
        if let Ok(mut resp) = agent.get(format!("http://{}/metrics", self.metrics)).call() {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            let retries: Vec<&str> = text
                .lines()
                .filter(|l| {
                    (l.starts_with("gatehouse_upstream_retries_total")
                        || l.starts_with("gatehouse_upstream_node_ejections_total"))
                        && !l.ends_with(" 0")
                })
                .collect();
            if !retries.is_empty() {
                println!("A down node is retried on another one, then taken out of rotation by");
                println!(
                    "passive health checks instead of costing every request a retry (from /metrics):"
                );
                for line in retries {
                    println!("  {line}");
                }
                println!();
            }
        }
        println!("Node health, as GET /upstreams/{{name}}/health on the admin API shows it:");
        for upstream in runtime.load().upstreams.iter() {
            let report = upstream.health_report();
            for node in &report.nodes {
                println!(
                    "  {} {:<16} {:<9} {}",
                    report.upstream, node.node, node.health.state, node.health.reason
                );
            }
        }
        println!();
        println!("Try it yourself:");
        for (_, _, path) in &self.examples {
            println!("  curl -s {base}{path}");
        }
        println!("  curl -s {base}/healthz");
        println!("  curl -s -i {base}/nope              # 404, JSON error");
        println!("  curl -s -i -X DELETE {base}/users/42 # 405, JSON error");
        println!(
            "  curl -s http://{}/metrics | grep ^gatehouse_",
            self.metrics
        );
        match self.console {
            Some(admin) => println!(
                "\nThe console: http://{admin}/ui/ in a browser, logged in with the admin token."
            ),
            None => println!(
                "\nThe console (http://ADMIN/ui/) is off with the admin API: set \
                 GATEHOUSE_ADMIN_TOKEN (16 characters or more) to turn both on."
            ),
        }
        println!("\nPress Ctrl-C to stop.\n");
    }
}
