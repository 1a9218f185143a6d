//! Stopping the gateway: requests in flight finish, nothing new is accepted, and the process exits
//! as soon as the last request is done.

mod support;

use std::net::TcpStream;
use std::time::Duration;

use gatehouse_echo::Behavior;
use support::*;

#[test]
fn sigterm_lets_requests_in_flight_finish_then_exits_at_once() {
    let slow = echo_with("slow", Behavior::Delay(Duration::from_millis(2500)));
    let mut gw = Gateway::start_with(
        "  drain_timeout: 20s\n",
        &format!(
            r#"upstreams:
  - name: u
    vpc: vpc-main
    protocol: http
    nodes:
      - {{ host: 127.0.0.1, port: {port}, weight: 1 }}
services:
  - name: s
    apis:
      - {{ name: slow, path: /slow, backend: {{ upstream: u }} }}
"#,
            port = slow.addr().port()
        ),
    );
    let urls: Vec<String> = (0..3).map(|_| gw.url("/slow")).collect();
    let requests: Vec<_> = urls
        .into_iter()
        .map(|url| std::thread::spawn(move || request("GET", &url, &[], None).status))
        .collect();
    // all three are in flight at the backend
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while slow.stats().requests() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "requests never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let listen = gw.base.trim_start_matches("http://").to_owned();
    gw.signal("TERM");
    // new connections are refused while the three finish
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(&listen).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for r in requests {
        assert_eq!(r.join().unwrap(), 200, "a request in flight was cut");
    }
    // it exits once they are done, well before the 20 s drain timeout runs out
    let status = gw.wait_exit(Duration::from_secs(15));
    assert_eq!(status.map(|s| s.success()), Some(true), "{}", gw.log());
    assert!(
        gw.log().contains("requests in flight finished"),
        "{}",
        gw.log()
    );
}

#[test]
fn a_new_process_takes_the_sockets_over_under_load_without_failing_a_request() {
    let backend = echo_with("b", Behavior::Delay(Duration::from_millis(100)));
    let (listen, metrics) = (free_port(), free_port());
    let socket = scratch_dir().join("upgrade.sock");
    let yaml = format!(
        "{}upstreams:\n  - name: u\n    vpc: vpc-main\n    protocol: http\n    nodes:\n      - {{ host: 127.0.0.1, port: {}, weight: 1 }}\nservices:\n  - name: s\n    apis:\n      - {{ name: r, path: /r, backend: {{ upstream: u }} }}\n",
        instance_yaml(listen, metrics).replace(
            "  threads: 2\n",
            &format!("  threads: 2\n  drain_timeout: 20s\n  upgrade_socket: {}\n", socket.display())
        ),
        backend.addr().port()
    );
    let mut old = Gateway::start_config(&yaml, listen, metrics);
    let url = old.url("/r");
    // keep-alive clients: curl fetching 25 URLs per run over one connection; like browsers, it
    // resends an idempotent request that meets a connection the server closed while idle
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut codes = std::collections::BTreeMap::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let out = std::process::Command::new("curl")
                        .args(["-s", "-w", "%{http_code}\\n", "--max-time", "30"])
                        .args((0..25).flat_map(|_| ["-o", "/dev/null", url.as_str()]))
                        .output()
                        .unwrap();
                    for code in String::from_utf8_lossy(&out.stdout).lines() {
                        *codes.entry(code.to_owned()).or_insert(0) += 1;
                    }
                }
                codes
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let log = old.dir.join("new.log");
    let mut new = std::process::Command::new(binary())
        .args(["run", "--upgrade", "-c"])
        .arg(old.dir.join("gatehouse.yaml"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    old.signal("QUIT");
    let status = old.wait_exit(Duration::from_secs(30));
    assert_eq!(status.map(|s| s.success()), Some(true), "{}", old.log());
    // the new process serves alone for a while
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut codes = std::collections::BTreeMap::new();
    for c in clients {
        for (code, n) in c.join().unwrap() {
            *codes.entry(code).or_insert(0) += n;
        }
    }
    let still = request("GET", &url, &[], None);
    let _ = new.kill();
    let _ = new.wait();
    let new_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(still.status, 200, "the new process serves: {new_log}");
    assert_eq!(
        codes.keys().cloned().collect::<Vec<_>>(),
        ["200"],
        "{codes:?}\n{new_log}"
    );
    assert!(codes["200"] > 100, "{codes:?}");
    assert!(old.log().contains("listener sockets sent"), "{}", old.log());
}

#[test]
fn a_service_manager_is_told_the_process_is_ready_and_is_the_main_one() {
    let dir = scratch_dir();
    let socket_path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (listen, metrics) = (free_port(), free_port());
    let file = dir.join("gatehouse.yaml");
    std::fs::write(&file, instance_yaml(listen, metrics)).unwrap();
    let mut child = std::process::Command::new(binary())
        .args(["run", "-c"])
        .arg(&file)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(message, format!("READY=1\nMAINPID={}\n", child.id()));
}

/// A gateway on `backend` whose upgrade socket is in its own folder, with `instance_extra`.
fn upgradable(backend: &EchoServer, instance_extra: &str) -> Gateway {
    let (listen, metrics) = (free_port(), free_port());
    let socket = scratch_dir().join("upgrade.sock");
    let yaml = format!(
        "{}upstreams:\n  - name: u\n    vpc: vpc-main\n    protocol: http\n    nodes:\n      - {{ host: 127.0.0.1, port: {}, weight: 1 }}\nservices:\n  - name: s\n    apis:\n      - {{ name: r, path: /r, backend: {{ upstream: u }} }}\n",
        instance_yaml(listen, metrics).replace(
            "  threads: 2\n",
            &format!(
                "  threads: 2\n  upgrade_socket: {}\n{instance_extra}",
                socket.display()
            )
        ),
        backend.addr().port()
    );
    Gateway::start_config(&yaml, listen, metrics)
}

/// Starts `gatehouse run --upgrade` on `old`'s configuration, logging to `new.log` in its folder.
fn start_new(old: &Gateway) -> std::process::Child {
    std::process::Command::new(binary())
        .args(["run", "--upgrade", "-c"])
        .arg(old.dir.join("gatehouse.yaml"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(old.dir.join("new.log")).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn a_new_process_waits_for_the_old_one_longer_than_a_few_seconds() {
    let backend = echo("b");
    let mut old = upgradable(&backend, "");
    let mut new = start_new(&old);
    // longer than the engine's own 5 retries of 1 s
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new process gave up waiting: {}",
        std::fs::read_to_string(old.dir.join("new.log")).unwrap_or_default()
    );
    old.signal("QUIT");
    let status = old.wait_exit(Duration::from_secs(30));
    assert_eq!(status.map(|s| s.success()), Some(true), "{}", old.log());
    let served = request("GET", &old.url("/r"), &[], None);
    let _ = new.kill();
    let _ = new.wait();
    assert_eq!(
        served.status,
        200,
        "the new process serves: {}",
        std::fs::read_to_string(old.dir.join("new.log")).unwrap_or_default()
    );
    assert!(old.log().contains("listener sockets sent"), "{}", old.log());
}

#[test]
fn sigquit_with_no_new_process_keeps_the_old_one_serving() {
    let backend = echo("b");
    let mut old = upgradable(&backend, "  upgrade_timeout: 2s\n");
    old.signal("QUIT");
    // past the upgrade timeout, it still serves, and says why
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        old.wait_exit(Duration::from_millis(100)).is_none(),
        "{}",
        old.log()
    );
    assert_eq!(request("GET", &old.url("/r"), &[], None).status, 200);
    assert!(
        old.log().contains("this process keeps serving"),
        "{}",
        old.log()
    );
    // and a later upgrade, new process first, still works
    let mut new = start_new(&old);
    std::thread::sleep(Duration::from_millis(500));
    old.signal("QUIT");
    let status = old.wait_exit(Duration::from_secs(30));
    assert_eq!(status.map(|s| s.success()), Some(true), "{}", old.log());
    let served = request("GET", &old.url("/r"), &[], None);
    let _ = new.kill();
    let _ = new.wait();
    assert_eq!(served.status, 200);
}

#[test]
fn upgrade_now_listens_at_once_as_an_earlier_running_process_expects() {
    let backend = echo("b");
    let mut old = upgradable(&backend, "");
    let mut new = std::process::Command::new(binary())
        .args(["run", "--upgrade", "--now", "-c"])
        .arg(old.dir.join("gatehouse.yaml"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(old.dir.join("new.log")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    old.signal("QUIT");
    let status = old.wait_exit(Duration::from_secs(30));
    assert_eq!(status.map(|s| s.success()), Some(true), "{}", old.log());
    let served = request("GET", &old.url("/r"), &[], None);
    let _ = new.kill();
    let _ = new.wait();
    assert_eq!(served.status, 200);
    // --now needs --upgrade
    let (status, _, err) = run_cli(&["run", "--now", "-c", "gatehouse.yaml"]);
    assert!(!status.success(), "{err}");
}

/// What keep-alive clients that never resend a request saw.
#[derive(Debug, Default)]
struct LoadReport {
    answered: u64,
    /// Answers that said `Connection: close` (the client then opened a new connection).
    closes: u64,
    /// Requests sent that got no complete answer, or an answer other than 200.
    failed: Vec<String>,
    /// Connections refused (nobody listening any more).
    refused: u64,
}

/// Clients on raw sockets, each sending GETs and POSTs one after another over one kept-alive
/// connection. Unlike browsers and curl they never send a request again: a connection the
/// gateway closes under a request shows as a failure. A client opens a new connection only
/// after an answer that said `Connection: close`; with `stop_when_refused`, a refused connection
/// ends it (the gateway stopped listening), otherwise it is a failure too.
fn keep_alive_load(
    addr: std::net::SocketAddr,
    clients: usize,
    stop_when_refused: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<LoadReport>> {
    (0..clients)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader, Read, Write};
                let mut report = LoadReport::default();
                let mut conn: Option<BufReader<TcpStream>> = None;
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let reader = match conn.as_mut() {
                        Some(r) => r,
                        None => match TcpStream::connect(addr) {
                            Ok(s) => {
                                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                                conn.insert(BufReader::new(s))
                            }
                            Err(e) => {
                                report.refused += 1;
                                if stop_when_refused {
                                    break;
                                }
                                report.failed.push(format!("connect: {e}"));
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        },
                    };
                    n += 1;
                    let request = if n.is_multiple_of(2) {
                        let body = format!("client {c} request {n}");
                        format!(
                            "POST /r HTTP/1.1\r\nhost: gw\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "GET /r HTTP/1.1\r\nhost: gw\r\n\r\n".to_owned()
                    };
                    let answer = (|| -> std::io::Result<(u16, bool)> {
                        reader.get_mut().write_all(request.as_bytes())?;
                        let mut line = String::new();
                        reader.read_line(&mut line)?;
                        let status: u16 = line
                            .split(' ')
                            .nth(1)
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| std::io::Error::other(format!("status line {line:?}")))?;
                        let (mut length, mut close) = (0usize, false);
                        loop {
                            line.clear();
                            reader.read_line(&mut line)?;
                            let header = line.trim_end().to_ascii_lowercase();
                            if header.is_empty() {
                                break;
                            }
                            if let Some(v) = header.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            if header.starts_with("connection:") && header.contains("close") {
                                close = true;
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body)?;
                        Ok((status, close))
                    })();
                    match answer {
                        Ok((200, close)) => {
                            report.answered += 1;
                            if close {
                                report.closes += 1;
                                conn = None;
                            }
                        }
                        Ok((status, _)) => {
                            report.failed.push(format!("request {n}: status {status}"));
                            conn = None;
                        }
                        Err(e) => {
                            report.failed.push(format!("request {n}: {e}"));
                            conn = None;
                        }
                    }
                }
                report
            })
        })
        .collect()
}

/// Sums what the clients of [`keep_alive_load`] saw.
fn load_report(clients: Vec<std::thread::JoinHandle<LoadReport>>) -> LoadReport {
    let mut all = LoadReport::default();
    for c in clients {
        let r = c.join().unwrap();
        all.answered += r.answered;
        all.closes += r.closes;
        all.refused += r.refused;
        all.failed.extend(r.failed);
    }
    all
}

#[test]
fn keep_alive_clients_that_never_resend_lose_nothing_across_an_upgrade() {
    let backend = echo_with("b", Behavior::Delay(Duration::from_millis(5)));
    let mut old = upgradable(&backend, "  drain_timeout: 20s\n");
    let addr = old
        .base
        .trim_start_matches("http://")
        .parse::<std::net::SocketAddr>()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = keep_alive_load(addr, 16, false, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let mut new = start_new(&old);
    old.signal("QUIT");
    let status = old.wait_exit(Duration::from_secs(30));
    // the new process serves alone for a while
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = load_report(clients);
    let _ = new.kill();
    let _ = new.wait();
    let new_log = std::fs::read_to_string(old.dir.join("new.log")).unwrap_or_default();
    assert_eq!(status.map(|s| s.success()), Some(true), "{}", old.log());
    assert!(
        report.failed.is_empty(),
        "{} of {} requests failed: {:?}\nold: {}\nnew: {new_log}",
        report.failed.len(),
        report.answered + report.failed.len() as u64,
        &report.failed[..report.failed.len().min(20)],
        old.log()
    );
    // the old process told each of its kept-alive clients to reconnect
    assert!(report.closes >= 16, "{report:?}");
    assert!(report.answered > 200, "{report:?}");
}

#[test]
fn keep_alive_clients_that_never_resend_lose_nothing_across_a_sigterm_drain() {
    let backend = echo_with("b", Behavior::Delay(Duration::from_millis(5)));
    let mut gw = upgradable(&backend, "  drain_timeout: 20s\n");
    let addr = gw
        .base
        .trim_start_matches("http://")
        .parse::<std::net::SocketAddr>()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = keep_alive_load(addr, 16, true, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = load_report(clients);
    assert_eq!(status.map(|s| s.success()), Some(true), "{}", gw.log());
    assert!(
        report.failed.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        report.failed.len(),
        report.answered + report.failed.len() as u64,
        &report.failed[..report.failed.len().min(20)],
        gw.log()
    );
    // every client was told to close, then found nobody listening
    assert!(report.closes >= 16, "{report:?}");
    assert_eq!(report.refused, 16, "{report:?}");
}
