//! Hand-written components implementing the plugin world, for tests of the sandbox and of the
//! gateway's handling of faulty plugins; no guest toolchain is needed to build them.

/// The WAT text of a component implementing the plugin world whose `on-request` runs the core
/// instructions `body` first (an endless loop, a memory bomb, a trap...) and, if `body` falls
/// through, proceeds. `configure` accepts any configuration and declares every hook. `wasmtime`
/// compiles WAT directly.
pub fn component_wat(body: &str) -> String {
    component_wat_declaring(body, 0b111)
}

/// Like [`component_wat`], with `configure` declaring the hooks in `hooks` (bit 0 `on-request`,
/// bit 1 `on-upstream-request`, bit 2 `on-response`).
pub fn component_wat_declaring(body: &str, hooks: u8) -> String {
    format!(
        r#"(component
  (import "gatehouse:plugin/types@0.1.0" (instance $types
    (type $r (record (field "status" u16) (field "headers" (list (tuple string string))) (field "body" (list u8))))
    (export "reply" (type $reply (eq $r)))
    (type $a (variant (case "proceed") (case "respond" $reply)))
    (export "action" (type (eq $a)))
    (type $n (record (field "upstream" string) (field "host" string) (field "port" u16) (field "address" string)))
    (export "node" (type (eq $n)))
    (type $h (flags "on-request" "on-upstream-request" "on-response"))
    (export "hooks" (type (eq $h)))))
  (alias export $types "action" (type $action))
  (alias export $types "node" (type $node))
  (alias export $types "hooks" (type $hooks))
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
    ;; `configure` answers ok with the declared hooks: a flags byte after the discriminant
    (func (export "configure") (param i32 i32) (result i32)
      (i64.store (i32.const 64) (i64.const 0))
      (i32.store8 (i32.const 68) (i32.const {hooks}))
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
  (func (export "configure") (param "config" string) (result (result $hooks (error string)))
    (canon lift (core func $i "configure") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func (export "on-request") (param "req" (borrow $request)) (result (result $action (error string)))
    (canon lift (core func $i "on-request") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func (export "on-upstream-request") (param "req" (borrow $request)) (param "node" $node) (result (result (error string)))
    (canon lift (core func $i "on-upstream-request") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func (export "on-response") (param "req" (borrow $request)) (param "resp" (borrow $response)) (result (result (error string)))
    (canon lift (core func $i "on-response") (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))"#
    )
}
