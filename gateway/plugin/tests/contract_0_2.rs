//! Contract 0.2.0: declared needs checked against grants at load, grants enforced at run time,
//! bodies, secret keys. Uses the built components of `plugins/dist` (the standard plugins and
//! `grant-probe`, which declares what its configuration lists and shows what it can see).

use std::sync::Arc;
use std::time::Duration;

use gatehouse_config::{HeaderGrant, PluginGrants};
use gatehouse_plugin_host::{
    Failure, Grants, Hook, PluginEngine, PluginSlot, Reply, RequestOutcome, SlotLimits,
};
use pingora_http::{RequestHeader, ResponseHeader};

const LIMITS: SlotLimits = SlotLimits {
    memory: 16 * 1024 * 1024,
    time: Duration::from_millis(500),
    reuse_instances: true,
    edits: gatehouse_plugin_host::EditLimits {
        headers: 64,
        bytes: 16 * 1024,
    },
    body: 1024,
    counter_keys: 1024,
};

fn engine() -> Arc<PluginEngine> {
    PluginEngine::new(1 << 30).unwrap()
}

fn probe_bytes() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins/dist/grant-probe.wasm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A grant-probe use configured with `config`, granted `grants` (`None`: no `grants:` key).
fn probe(
    engine: &Arc<PluginEngine>,
    config: &str,
    grants: Option<PluginGrants>,
) -> Result<Arc<PluginSlot>, Failure> {
    let pre = engine
        .load("test:grant-probe", || Ok(probe_bytes()))
        .unwrap();
    let grants = grants.map(|g| Grants::configured(&g).unwrap());
    PluginSlot::with_grants(
        engine.clone(),
        pre,
        "grant-probe",
        "shop",
        "orders",
        config.to_owned(),
        LIMITS,
        grants,
        false,
    )
}

fn standard(engine: &Arc<PluginEngine>, name: &str, config: &str) -> Arc<PluginSlot> {
    let pre = engine
        .load(&format!("standard:{name}"), || {
            Ok(gatehouse_plugin_host::standard::component(name)
                .unwrap()
                .to_vec())
        })
        .unwrap();
    PluginSlot::new(
        engine.clone(),
        pre,
        name,
        "shop",
        "orders",
        config.to_owned(),
        LIMITS,
    )
    .unwrap_or_else(|e| panic!("{name} does not configure: {e}"))
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

fn request() -> RequestHeader {
    let mut req = RequestHeader::build("POST", b"/orders", None).unwrap();
    req.insert_header("host", "edge.example").unwrap();
    req.insert_header("x-tenant-id", "acme").unwrap();
    req.insert_header("authorization", "Bearer s3cret").unwrap();
    req
}

fn headers(read: &[&str], write: &[&str]) -> HeaderGrant {
    HeaderGrant {
        read: read.iter().map(|s| s.to_string()).collect(),
        write: write.iter().map(|s| s.to_string()).collect(),
    }
}

/// What grant-probe's `show` answered: the headers and body it could read.
fn shown(outcome: RequestOutcome) -> serde_json::Value {
    match outcome {
        RequestOutcome::Respond(Reply {
            status: 200, body, ..
        }) => serde_json::from_slice(&body).unwrap(),
        _ => panic!("grant-probe did not show what it sees"),
    }
}

fn shown_names(seen: &serde_json::Value) -> Vec<String> {
    seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair[0].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_standard_plugins_are_0_2_components_and_key_auth_declares_its_secret() {
    let engine = engine();
    let key_auth = standard(&engine, "key-auth", r#"{"keys":["k1"]}"#);
    assert_eq!(key_auth.contract(), "0.2.0");
    assert_eq!(key_auth.secret_keys(), ["keys"]);
    for (name, config) in [
        ("host-rewrite", r#"{"host":"api.internal"}"#),
        ("headers", r#"{"request":{"set":{"X-Env":"prod"}}}"#),
        (
            "path-rewrite",
            r#"{"strip_prefix":"/api","add_prefix":"/v2"}"#,
        ),
        ("request-id", "{}"),
        ("ip-restriction", r#"{"allow":["10.0.0.0/8"]}"#),
        ("cors", r#"{"allow_origins":["https://shop.example"]}"#),
        ("canary", r#"{"tag":"canary","percent":5}"#),
        ("rate-limit", r#"{"limit":10,"window":"1m"}"#),
    ] {
        assert_eq!(
            standard(&engine, name, config).contract(),
            "0.2.0",
            "{name}"
        );
    }
}

#[test]
fn needs_beyond_the_grants_are_refused_at_load_listing_every_missing_grant() {
    let engine = engine();
    let config = r#"{"needs":{
        "request_headers":{"read":["authorization","x-tenant-*"],"write":["x-user"]},
        "response_headers":{"write":["x-served-by"]},
        "request_body":true,"response_body":true,"node_steering":true,"counters":true}}"#;
    let grants = PluginGrants {
        request_headers: headers(&["x-tenant-*"], &[]),
        ..PluginGrants::default()
    };
    match probe(&engine, config, Some(grants)) {
        Err(Failure::Denied(message)) => {
            for missing in [
                "hooks: on-response-body",
                "request_headers.read: authorization",
                "request_headers.write: x-user",
                "response_headers.write: x-served-by",
                "request_body",
                "response_body",
                "node_steering",
                "counters",
            ] {
                assert!(message.contains(missing), "{missing} not in: {message}");
            }
            assert!(!message.contains("x-tenant-*"), "granted: {message}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a plugin needing more than its grants was loaded"),
    }
    // a 0.2 component file without grants gets the baseline: no header
    let refused = probe(
        &engine,
        r#"{"needs":{"request_headers":{"read":["x-tenant-id"]}}}"#,
        None,
    );
    assert!(
        matches!(refused, Err(Failure::Denied(m)) if m.contains("request_headers.read: x-tenant-id"))
    );
    // granted everything it declares: loads
    let grants = PluginGrants {
        hooks: Some(
            [
                "on-request",
                "on-upstream-request",
                "on-response",
                "on-response-body",
            ]
            .map(String::from)
            .to_vec(),
        ),
        request_headers: headers(&["*"], &["x-*"]),
        response_headers: headers(&[], &["x-served-by"]),
        request_body: true,
        response_body: true,
        node_steering: true,
        counters: true,
    };
    assert!(probe(&engine, config, Some(grants.clone())).is_ok());
    // each grant is checked on its own
    for (need, missing) in [("node_steering", "node_steering"), ("counters", "counters")] {
        let mut partial = grants.clone();
        match need {
            "node_steering" => partial.node_steering = false,
            _ => partial.counters = false,
        }
        match probe(&engine, config, Some(partial)) {
            Err(Failure::Denied(message)) => {
                assert!(message.ends_with(missing), "{need}: {message}")
            }
            _ => panic!("{need} was not refused without its grant"),
        }
    }
}

#[test]
fn a_header_the_plugin_may_not_read_is_not_there_for_it() {
    let engine = engine();
    let config = r#"{"needs":{"request_headers":{"read":["x-tenant-*"]}},"show":true}"#;
    let grants = PluginGrants {
        request_headers: headers(&["x-tenant-*"], &[]),
        ..PluginGrants::default()
    };
    let slot = probe(&engine, config, Some(grants)).unwrap();
    let mut req = request();
    let seen = shown(block(slot.on_request(&mut req, None, None)).unwrap());
    assert_eq!(shown_names(&seen), ["x-tenant-id"]);
    // the request itself keeps them
    assert!(req.headers.contains_key("authorization"));
}

#[test]
fn writing_an_ungranted_header_fails_the_call_and_leaves_the_request_untouched() {
    let engine = engine();
    let config = r#"{"needs":{"request_headers":{"write":["x-user"]}},
        "set_request":[["x-user","alice"],["x-admin","yes"]]}"#;
    // declared x-user only, but writes x-admin too: refused at run time
    let grants = PluginGrants {
        request_headers: headers(&[], &["x-user"]),
        ..PluginGrants::default()
    };
    let slot = probe(&engine, config, Some(grants)).unwrap();
    let mut req = request();
    let before = format!("{:?}", req.headers);
    match block(slot.on_request(&mut req, None, None)) {
        Err(Failure::Denied(m)) => assert!(m.contains("x-admin"), "{m}"),
        Err(other) => panic!("failed for another reason: {other}"),
        Ok(_) => panic!("an ungranted header was written"),
    }
    assert_eq!(
        format!("{:?}", req.headers),
        before,
        "x-user rolled back too"
    );
    // the same plugin granted both
    let grants = PluginGrants {
        request_headers: headers(&[], &["x-user", "x-admin"]),
        ..PluginGrants::default()
    };
    let slot = probe(&engine, config, Some(grants)).unwrap();
    let mut req = request();
    assert!(block(slot.on_request(&mut req, None, None)).is_ok());
    assert_eq!(req.headers.get("x-admin").unwrap(), "yes");
}

#[test]
fn response_headers_are_granted_apart_from_request_headers() {
    let engine = engine();
    let config = r#"{"set_response":[["x-served-by","edge-1"]]}"#;
    let grants = |write: &[&str]| PluginGrants {
        response_headers: headers(&[], write),
        ..PluginGrants::default()
    };
    let denied = probe(&engine, config, Some(grants(&[]))).unwrap();
    let mut resp = ResponseHeader::build(200, None).unwrap();
    let result = block(denied.on_response(&mut request(), &mut resp, None));
    assert!(matches!(result, Err(Failure::Denied(_))), "{result:?}");
    assert!(resp.headers.get("x-served-by").is_none());
    let allowed = probe(&engine, config, Some(grants(&["x-served-by"]))).unwrap();
    block(allowed.on_response(&mut request(), &mut resp, None)).unwrap();
    assert_eq!(resp.headers.get("x-served-by").unwrap(), "edge-1");
}

#[test]
fn hooks_not_granted_are_never_called() {
    let engine = engine();
    let grants = PluginGrants {
        hooks: Some(vec!["on-response".to_owned()]),
        ..PluginGrants::default()
    };
    // grant-probe implements every header hook: declared needs beyond the hooks granted
    assert!(matches!(
        probe(&engine, "{}", Some(grants)),
        Err(Failure::Denied(m)) if m.contains("hooks: on-request")
    ));
}

#[test]
fn the_request_body_is_read_and_replaced_only_with_its_grant() {
    let engine = engine();
    let body = bytes::Bytes::from_static(b"{\"qty\":1}");
    // granted: it reads the body and replaces it
    let config = r#"{"needs":{"request_body":true},"set_body":"{\"qty\":2}","show":true}"#;
    let grants = PluginGrants {
        request_body: true,
        ..PluginGrants::default()
    };
    let slot = probe(&engine, config, Some(grants)).unwrap();
    assert!(slot.reads_request_body());
    let mut current = body.clone();
    let seen = shown(block(slot.on_request(&mut request(), None, Some(&mut current))).unwrap());
    assert_eq!(seen["body"], "{\"qty\":2}", "it reads what it set");
    assert_eq!(&current[..], b"{\"qty\":2}");
    // not declared: no body for it, and setting one is an error
    let slot = probe(&engine, r#"{"show":true}"#, None).unwrap();
    assert!(!slot.reads_request_body());
    let mut current = body.clone();
    let seen = shown(block(slot.on_request(&mut request(), None, Some(&mut current))).unwrap());
    assert!(seen["body"]["error"]
        .as_str()
        .unwrap()
        .contains("request_body"));
    let slot = probe(&engine, r#"{"set_body":"x"}"#, None).unwrap();
    assert!(matches!(
        block(slot.on_request(&mut request(), None, Some(&mut current))),
        Err(Failure::Error(_))
    ));
    assert_eq!(current, body, "untouched");
    // a body over the plugin use's body limit fails the call
    let big = format!(
        r#"{{"needs":{{"request_body":true}},"set_body":"{}"}}"#,
        "y".repeat(LIMITS.body + 1)
    );
    let grants = PluginGrants {
        request_body: true,
        ..PluginGrants::default()
    };
    let slot = probe(&engine, &big, Some(grants)).unwrap();
    let mut current = body.clone();
    assert!(matches!(
        block(slot.on_request(&mut request(), None, Some(&mut current))),
        Err(Failure::BodyLimit(_))
    ));
    assert_eq!(current, body);
}

#[test]
fn the_response_body_hook_replaces_the_body_within_the_limit() {
    let engine = engine();
    let grants = || PluginGrants {
        response_body: true,
        ..PluginGrants::default()
    };
    let config = r#"{"needs":{"response_body":true},"append_to_response":"!"}"#;
    let slot = probe(&engine, config, Some(grants())).unwrap();
    assert!(slot.reads_response_body() && slot.implements(Hook::ResponseBody));
    let held = block(slot.hold()).unwrap();
    let out = held
        .on_response_body(&mut request(), 200, &http::HeaderMap::new(), b"hello", None)
        .unwrap();
    assert_eq!(out.as_deref(), Some(&b"hello!"[..]));
    // a body over the limit from the plugin is a failure
    let config = format!(
        r#"{{"needs":{{"response_body":true}},"response_body_of":{}}}"#,
        LIMITS.body + 1
    );
    let slot = probe(&engine, &config, Some(grants())).unwrap();
    let held = block(slot.hold()).unwrap();
    let result = held.on_response_body(&mut request(), 200, &http::HeaderMap::new(), b"", None);
    assert!(matches!(result, Err(Failure::BodyLimit(_))));
    // an instance held and not used goes back to the pool: the next call works
    let slot = probe(
        &engine,
        r#"{"needs":{"response_body":true}}"#,
        Some(grants()),
    )
    .unwrap();
    drop(block(slot.hold()).unwrap());
    let held = block(slot.hold()).unwrap();
    assert_eq!(
        held.on_response_body(&mut request(), 200, &http::HeaderMap::new(), b"a", None)
            .unwrap(),
        None
    );
}

#[test]
fn a_plugin_declaring_a_secret_key_names_it() {
    let slot = probe(&engine(), r#"{"secret":"hunter22hunter22"}"#, None).unwrap();
    assert_eq!(slot.secret_keys(), ["secret"]);
}

#[test]
fn a_0_1_component_is_held_to_the_operators_grants_at_run_time() {
    use gatehouse_plugin_host::testing::{binary, component_wat_editing, strings};
    let _ = strings::ALL;
    let engine = engine();
    // sets x-plugin: edited on the request
    let wat = component_wat_editing(
        "(call $set (local.get $req) (i32.const 1096) (i32.const 8) (i32.const 1112) (i32.const 6))",
        "",
    );
    let pre = engine
        .load("test:editing-0.1", || Ok(binary(&wat)))
        .unwrap();
    let slot = |grants: Option<PluginGrants>| {
        PluginSlot::with_grants(
            engine.clone(),
            pre.clone(),
            "editing",
            "shop",
            "orders",
            "{}".to_owned(),
            LIMITS,
            grants.map(|g| Grants::configured(&g).unwrap()),
            false,
        )
        .unwrap()
    };
    // no grants: what 0.1 gave
    let free = slot(None);
    assert_eq!(free.contract(), "0.1.0");
    let mut req = request();
    block(free.on_request(&mut req, None, None)).unwrap();
    assert_eq!(req.headers.get("x-plugin").unwrap(), "edited");
    // granted no header: the write fails the call, the request is untouched
    let held = slot(Some(PluginGrants::default()));
    let mut req = request();
    assert!(matches!(
        block(held.on_request(&mut req, None, None)),
        Err(Failure::Denied(_))
    ));
    assert!(req.headers.get("x-plugin").is_none());
}

#[test]
fn response_headers_the_plugin_may_not_read_are_not_there_for_it() {
    let engine = engine();
    let config = r#"{"needs":{"response_headers":{"read":["x-cache-*"],"write":["x-probe-saw"]}},
        "report_response_headers":true}"#;
    let grants = PluginGrants {
        response_headers: headers(&["x-cache-*"], &["x-probe-saw"]),
        ..PluginGrants::default()
    };
    let slot = probe(&engine, config, Some(grants)).unwrap();
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("x-cache-status", "HIT").unwrap();
    resp.insert_header("set-cookie", "session=s3cret").unwrap();
    block(slot.on_response(&mut request(), &mut resp, None)).unwrap();
    assert_eq!(resp.headers.get("x-probe-saw").unwrap(), "x-cache-status");
    assert!(
        resp.headers.contains_key("set-cookie"),
        "still sent to the client"
    );
}

#[test]
fn a_component_built_for_neither_contract_is_refused_with_its_name_and_what_it_lacks() {
    let engine = engine();
    // a plugin built for a contract this gateway does not know: it imports a host interface of
    // a later version and exports nothing the gateway calls
    let later = gatehouse_plugin_host::testing::binary(
        r#"(component
            (import "gatehouse:plugin/host@0.9.0" (instance
                (export "now-millis" (func (result u64)))))
        )"#,
    );
    let error = match engine.load("test:later", || Ok(later)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a component of an unknown contract was loaded"),
    };
    assert!(error.starts_with("test:later"), "{error}");
    assert!(error.contains("gatehouse:plugin/host@0.9.0"), "{error}");
    assert!(error.contains("it loads 0.1.0 and 0.2.0"), "{error}");
    // one that imports nothing and exports nothing: told the export it lacks
    let empty = gatehouse_plugin_host::testing::binary("(component)");
    let error = match engine.load("test:empty", || Ok(empty)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an empty component was loaded"),
    };
    assert!(error.starts_with("test:empty"), "{error}");
    assert!(error.contains("no export `configure`"), "{error}");
}

#[test]
fn instances_grown_by_large_bodies_are_not_all_kept_warm() {
    let engine = engine();
    let grants = PluginGrants {
        response_body: true,
        ..PluginGrants::default()
    };
    // each call copies a 3 MiB body into the instance and appends to it
    let limits = SlotLimits {
        memory: 64 << 20,
        body: 4 << 20,
        ..LIMITS
    };
    let pre = engine
        .load("test:grant-probe", || Ok(probe_bytes()))
        .unwrap();
    let slot = PluginSlot::with_grants(
        engine.clone(),
        pre,
        "grant-probe",
        "shop",
        "orders",
        r#"{"needs":{"response_body":true},"append_to_response":"!"}"#.to_owned(),
        limits,
        Some(Grants::configured(&grants).unwrap()),
        false,
    )
    .unwrap();
    let used = || engine.memory_budget().used();
    let body = vec![b'x'; 3 << 20];
    let respond = |h: gatehouse_plugin_host::HeldInstance| {
        let out = h
            .on_response_body(&mut request(), 200, &http::HeaderMap::new(), &body, None)
            .unwrap();
        assert_eq!(out.map(|b| b.len()), Some(body.len() + 1));
    };
    // what one instance grows by with such a body (it stays warm: the first grown one)
    let idle = used();
    respond(block(slot.hold()).unwrap());
    let one = used() - idle;
    // twelve responses at once, each holding its own instance
    let held: Vec<_> = (0..12).map(|_| block(slot.hold()).unwrap()).collect();
    for h in held {
        respond(h);
    }
    let after = used();
    eprintln!("linear memory: idle {idle}, one instance grew by {one}, after 12 at once {after}");
    // four grown instances stay warm (and a few fresh spares); keeping all twelve would hold
    // twelve times `one`
    assert!(
        after - idle <= 6 * one,
        "instances kept {} bytes of linear memory; one grows by {one}",
        after - idle
    );
    // and the slot keeps serving
    let h = block(slot.hold()).unwrap();
    assert!(h
        .on_response_body(&mut request(), 200, &http::HeaderMap::new(), b"ok", None)
        .is_ok());
}

#[test]
fn a_core_module_is_refused_with_how_to_make_it_a_component() {
    let engine = engine();
    let module = gatehouse_plugin_host::testing::binary("(module (func (export \"on_request\")))");
    let Err(err) = engine.load("test:core-module", || Ok(module)) else {
        panic!("a core module loaded");
    };
    let err = err.to_string();
    assert!(
        err.starts_with("test:core-module is not a usable WebAssembly component: it is a core WebAssembly module, neither a component nor a Proxy-Wasm filter"),
        "{err}"
    );
    assert!(err.contains("wasm-tools component new"), "{err}");
}
