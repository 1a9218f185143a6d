//! Components built for contract 0.1.0 keep loading and working: the frozen builds in
//! `tests/fixtures/contract-0.1.0` (never rebuilt) are loaded, configured and called.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_plugin_host::{PluginEngine, PluginSlot, RequestOutcome, SlotLimits};
use pingora_http::RequestHeader;

const LIMITS: SlotLimits = SlotLimits {
    memory: 16 * 1024 * 1024,
    time: Duration::from_millis(500),
    reuse_instances: true,
    edits: gatehouse_plugin_host::EditLimits {
        headers: 64,
        bytes: 16 * 1024,
    },
    body: 64 * 1024,
    counter_keys: 1024,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/contract-0.1.0")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn slot(engine: &Arc<PluginEngine>, name: &str, config: &str) -> Arc<PluginSlot> {
    let pre = engine
        .load(&format!("fixture-0.1.0:{name}"), || Ok(fixture(name)))
        .unwrap_or_else(|e| panic!("{name} (0.1.0) does not load: {e}"));
    PluginSlot::new(
        engine.clone(),
        pre,
        name,
        "shop",
        "get_user",
        config.to_owned(),
        LIMITS,
    )
    .unwrap_or_else(|e| panic!("{name} (0.1.0) does not configure: {e}"))
}

fn on_request(
    slot: &Arc<PluginSlot>,
    req: &mut RequestHeader,
    client: Option<IpAddr>,
) -> RequestOutcome {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(slot.on_request(req, client, None))
        .unwrap_or_else(|e| panic!("on-request failed: {e}"))
}

fn request(path: &str) -> RequestHeader {
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
    req.insert_header("host", "edge.example").unwrap();
    req
}

fn header<'r>(req: &'r RequestHeader, name: &str) -> Option<&'r str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

fn status(outcome: &RequestOutcome) -> Option<u16> {
    match outcome {
        RequestOutcome::Respond(reply) => Some(reply.status),
        RequestOutcome::Proceed { .. } => None,
    }
}

#[test]
fn components_built_for_0_1_0_load_configure_and_run() {
    let engine = PluginEngine::new(64 * 1024 * 1024).unwrap();

    let mut req = request("/users/1");
    on_request(
        &slot(&engine, "host-rewrite", r#"{"host":"users.internal"}"#),
        &mut req,
        None,
    );
    assert_eq!(header(&req, "host"), Some("users.internal"));

    let mut req = request("/users/1");
    on_request(
        &slot(
            &engine,
            "headers",
            r#"{"request":{"set":{"x-from":"fixture"}}}"#,
        ),
        &mut req,
        None,
    );
    assert_eq!(header(&req, "x-from"), Some("fixture"));

    let mut req = request("/api/users/1");
    on_request(
        &slot(
            &engine,
            "path-rewrite",
            r#"{"strip_prefix":"/api","add_prefix":"/v2"}"#,
        ),
        &mut req,
        None,
    );
    assert_eq!(req.uri.path(), "/v2/users/1");

    let mut req = request("/users/1");
    on_request(&slot(&engine, "request-id", "{}"), &mut req, None);
    assert!(header(&req, "x-request-id").is_some_and(|v| !v.is_empty()));

    let key_auth = slot(&engine, "key-auth", r#"{"keys":["k-0123456789"]}"#);
    assert_eq!(
        status(&on_request(&key_auth, &mut request("/users/1"), None)),
        Some(401)
    );
    let mut req = request("/users/1");
    req.insert_header("x-api-key", "k-0123456789").unwrap();
    assert_eq!(status(&on_request(&key_auth, &mut req, None)), None);

    let ip = slot(
        &engine,
        "ip-restriction",
        r#"{"allow":["10.0.0.0/8"],"deny":["10.66.0.0/16"]}"#,
    );
    let denied = on_request(&ip, &mut request("/"), Some("10.66.1.1".parse().unwrap()));
    assert_eq!(status(&denied), Some(403));
    let allowed = on_request(&ip, &mut request("/"), Some("10.1.1.1".parse().unwrap()));
    assert_eq!(status(&allowed), None);

    let cors = slot(
        &engine,
        "cors",
        r#"{"allow_origins":["https://app.example"]}"#,
    );
    let mut preflight = RequestHeader::build("OPTIONS", b"/users/1", None).unwrap();
    preflight.insert_header("host", "edge.example").unwrap();
    preflight
        .insert_header("origin", "https://app.example")
        .unwrap();
    preflight
        .insert_header("access-control-request-method", "GET")
        .unwrap();
    assert_eq!(
        status(&on_request(&cors, &mut preflight, None)),
        Some(204),
        "a preflight is answered by the plugin"
    );

    let c = slot(&engine, "c-example", r#"{"block":"/internal/"}"#);
    assert_eq!(
        status(&on_request(&c, &mut request("/internal/x"), None)),
        Some(403)
    );
    assert_eq!(
        status(&on_request(&c, &mut request("/users/1"), None)),
        None
    );
}
