//! WebSocket through the gateway with a real client and server (tokio-tungstenite): text and
//! binary frames both ways, closes from either side, APIs that do not allow upgrades, metrics.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server: every text or binary frame comes back; `close` as text makes the
/// server close the connection.
fn ws_server(rt: &tokio::runtime::Runtime) -> SocketAddr {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let echo = match msg {
                        Message::Text(ref t) if t.as_str() == "close" => {
                            let _ = ws.close(None).await;
                            return;
                        }
                        Message::Text(_) | Message::Binary(_) => msg,
                        Message::Close(_) => return,
                        _ => continue,
                    };
                    if ws.send(echo).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn config(node: SocketAddr) -> String {
    format!(
        r#"upstreams:
  - name: ws
    vpc: vpc-main
    protocol: http
    nodes:
      - {{ host: 127.0.0.1, port: {port}, weight: 1 }}
services:
  - name: chat
    apis:
      - {{ name: live, path: /live, backend: {{ upstream: ws }}, websocket: true }}
      - {{ name: plain, path: /plain, backend: {{ upstream: ws }} }}
"#,
        port = node.port()
    )
}

#[test]
fn frames_go_both_ways_and_either_side_may_close() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = ws_server(&rt);
    let gw = Gateway::start(&config(node));
    let url = gw.url("/live").replace("http://", "ws://");
    rt.block_on(async {
        let (mut ws, resp) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        let bytes = vec![0u8, 1, 2, 255, 254];
        ws.send(Message::binary(bytes.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(bytes));
        // a frame larger than one read
        let big = "x".repeat(200_000);
        ws.send(Message::text(big.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(big));
        // the client closes
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
    });
    assert_eq!(gw.metric("gatehouse_websocket_upgrades_total"), 1.0);
    rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        assert_eq!(gw.metric("gatehouse_websocket_connections"), 1.0, "open");
        // the server closes
        ws.send(Message::text("close")).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Close(_))) | None => {}
            other => panic!("expected the server's close, got {other:?}"),
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.metric("gatehouse_websocket_connections") != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection is still counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gw.metric("gatehouse_websocket_upgrades_total"), 2.0);
}

#[test]
fn an_api_without_websocket_refuses_the_upgrade_clearly() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = ws_server(&rt);
    let gw = Gateway::start(&config(node));
    let url = gw.url("/plain").replace("http://", "ws://");
    let err = rt
        .block_on(tokio_tungstenite::connect_async(url.as_str()))
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 400);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("\"error\":\"upgrade_not_allowed\""), "{body}");
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    assert_eq!(gw.metric("gatehouse_websocket_upgrades_total"), 0.0);
}
