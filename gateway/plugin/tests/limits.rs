//! The sandbox limits, with tiny hand-written components (no guest toolchain needed): a plugin
//! that loops forever, one that allocates without end, one that traps. Each fails only its call;
//! the next call on the same slot works again.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_plugin_host::{Failure, PluginEngine, PluginSlot, RequestOutcome, SlotLimits};
use pingora_http::RequestHeader;

/// A component implementing the plugin world whose `on-request` runs `body` and, if `body`
/// falls through, sets nothing and proceeds. `configure` accepts any config.
fn component(body: &str) -> String {
    format!(
        r#"(component
  (import "gatehouse:plugin/types@0.1.0" (instance $types
    (type $r (record (field "status" u16) (field "headers" (list (tuple string string))) (field "body" (list u8))))
    (export "reply" (type $reply (eq $r)))
    (type $a (variant (case "proceed") (case "respond" $reply)))
    (export "action" (type (eq $a)))
    (type $n (record (field "upstream" string) (field "host" string) (field "port" u16) (field "address" string)))
    (export "node" (type (eq $n)))))
  (alias export $types "action" (type $action))
  (alias export $types "node" (type $node))
  (import "gatehouse:plugin/http@0.1.0" (instance $http
    (export "request" (type (sub resource)))
    (export "response" (type (sub resource)))))
  (alias export $http "request" (type $request))
  (alias export $http "response" (type $response))
  (core func $drop_request (canon resource.drop $request))
  (core func $drop_response (canon resource.drop $response))
  (core module $m
    (import "host" "drop-request" (func $drop_request (param i32)))
    (import "host" "drop-response" (func $drop_response (param i32)))
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (global.get $heap))
      (global.set $heap (i32.add (global.get $heap) (i32.add (local.get 3) (i32.const 8))))
      (local.get $at))
    ;; every result is written at address 64: zeroes mean `ok` (and `proceed`)
    (func (export "configure") (param i32 i32) (result i32)
      (i64.store (i32.const 64) (i64.const 0))
      (i32.const 64))
    (func (export "on-request") (param $req i32) (result i32)
      {body}
      (call $drop_request (local.get $req))
      (i64.store (i32.const 64) (i64.const 0))
      (i32.const 64))
    (func (export "on-upstream-request") (param $req i32) (param i32 i32 i32 i32 i32 i32 i32) (result i32)
      (call $drop_request (local.get $req))
      (i64.store (i32.const 64) (i64.const 0))
      (i32.const 64))
    (func (export "on-response") (param $req i32) (param $resp i32) (result i32)
      (call $drop_request (local.get $req))
      (call $drop_response (local.get $resp))
      (i64.store (i32.const 64) (i64.const 0))
      (i32.const 64)))
  (core instance $host (export "drop-request" (func $drop_request)) (export "drop-response" (func $drop_response)))
  (core instance $i (instantiate $m (with "host" (instance $host))))
  (func (export "configure") (param "config" string) (result (result (error string)))
    (canon lift (core func $i "configure") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func (export "on-request") (param "req" (borrow $request)) (result (result $action (error string)))
    (canon lift (core func $i "on-request") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func (export "on-upstream-request") (param "req" (borrow $request)) (param "node" $node) (result (result (error string)))
    (canon lift (core func $i "on-upstream-request") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func (export "on-response") (param "req" (borrow $request)) (param "resp" (borrow $response)) (result (result (error string)))
    (canon lift (core func $i "on-response") (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))"#
    )
}

const LIMITS: SlotLimits = SlotLimits {
    memory: 4 * 1024 * 1024,
    time: Duration::from_millis(20),
    reuse_instances: true,
};

/// A slot for `body`, with an epoch ticker running for the test.
fn slot(body: &str) -> PluginSlot {
    let engine = PluginEngine::new(64 * 1024 * 1024).unwrap();
    start_ticker(engine.clone());
    let wat = component(body);
    let key = format!("test:{}", body.len());
    let pre = engine.load(&key, || Ok(wat.into_bytes())).unwrap();
    PluginSlot::new(
        engine,
        pre,
        "test-plugin",
        "shop",
        "get_user",
        "{}".into(),
        LIMITS,
    )
    .unwrap()
}

fn start_ticker(engine: Arc<PluginEngine>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(gatehouse_plugin_host::EPOCH_TICK);
        engine.tick();
    });
}

fn request() -> RequestHeader {
    RequestHeader::build("GET", b"/users/1", None).unwrap()
}

fn run(slot: &PluginSlot) -> Result<RequestOutcome, Failure> {
    slot.on_request(&mut request(), None)
}

/// Loops while a flag in memory is zero (it always is), so only the deadline stops it.
const INFINITE_LOOP: &str =
    "(block $out (loop $again (br_if $out (i32.load (i32.const 8))) (br $again)))";
/// Grows memory a page at a time until growth is refused, then traps.
const MEMORY_BOMB: &str =
    "(loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable";
const TRAP: &str = "unreachable";
/// Does nothing: proceeds.
const WELL_BEHAVED: &str = "";

#[test]
fn a_well_behaved_component_proceeds() {
    let slot = slot(WELL_BEHAVED);
    assert!(matches!(
        run(&slot),
        Ok(RequestOutcome::Proceed {
            uri_changed: false,
            host_changed: false
        })
    ));
}

#[test]
fn an_infinite_loop_is_stopped_at_the_time_limit() {
    let slot = slot(INFINITE_LOOP);
    let started = std::time::Instant::now();
    assert_eq!(run(&slot).err(), Some(Failure::Timeout));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped by the deadline, not by luck"
    );
    // the poisoned instance was dropped; the next call gets a fresh one (and times out again)
    assert_eq!(run(&slot).err(), Some(Failure::Timeout));
}

#[test]
fn a_memory_bomb_is_refused_at_the_memory_limit() {
    let slot = slot(MEMORY_BOMB);
    assert_eq!(run(&slot).err(), Some(Failure::Memory));
    assert_eq!(run(&slot).err(), Some(Failure::Memory));
}

#[test]
fn a_trap_fails_only_that_call() {
    let slot = slot(TRAP);
    match run(&slot) {
        Err(Failure::Trap(message)) => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("expected a trap, got {:?}", other.err()),
    }
    let good = self::slot(WELL_BEHAVED);
    assert!(run(&good).is_ok(), "other slots are unaffected");
    assert!(
        matches!(run(&slot), Err(Failure::Trap(_))),
        "a fresh instance traps again, no crash"
    );
}

#[test]
fn failures_leave_the_request_in_place() {
    let slot = slot(TRAP);
    let mut req = request();
    req.insert_header("x-kept", "yes").unwrap();
    assert!(slot.on_request(&mut req, None).is_err());
    assert_eq!(req.uri.path(), "/users/1");
    assert_eq!(req.headers.get("x-kept").unwrap(), "yes");
}
