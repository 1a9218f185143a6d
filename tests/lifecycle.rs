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
