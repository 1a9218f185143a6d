//! Hand-written components implementing the plugin world, for tests of the sandbox and of the
//! gateway's handling of faulty plugins; no guest toolchain is needed to build them. Written as
//! text and compiled to binary components with [`binary`] (the gateway loads binary components
//! only). Only built with the `testing` feature.

/// The binary component of a WAT text.
pub fn binary(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).unwrap_or_else(|e| panic!("test component does not compile: {e}"))
}

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
    component_wat_full(body, hooks, "")
}

/// A component whose `configure` runs `configure_body` first (e.g. an endless loop), then
/// declares every hook; its `on-request` proceeds.
pub fn component_wat_configuring(configure_body: &str) -> String {
    component_wat_full("", 0b111, configure_body)
}

/// A component that works until the host clock passes `after_millis` (Unix time): from then on
/// its `configure` loops forever, so no new instance can be made. Its `on-request` traps every
/// time, so every call costs its instance.
pub fn component_wat_failing_after(after_millis: u64) -> String {
    component_wat_full(
        "unreachable",
        0b001,
        &format!("(if (i64.gt_u (call $now) (i64.const {after_millis})) (then (loop $forever (br $forever))))"),
    )
    .replace(CLOCK_ANCHOR.0, CLOCK_IMPORT.0)
    .replace(CLOCK_ANCHOR.1, CLOCK_IMPORT.1)
    .replace(CLOCK_ANCHOR.2, CLOCK_IMPORT.2)
}

/// A component that is broken while the host clock (Unix milliseconds) is in `from..until`:
/// then its `configure` loops forever and its `on-request` traps. Before and after, it
/// configures and proceeds.
pub fn component_wat_failing_between(from: u64, until: u64) -> String {
    let broken = format!(
        "(i32.and (i64.ge_u (call $now) (i64.const {from})) (i64.lt_u (call $now) (i64.const {until})))"
    );
    component_wat_full(
        &format!("(if {broken} (then unreachable))"),
        0b001,
        &format!("(if {broken} (then (loop $forever (br $forever))))"),
    )
    .replace(CLOCK_ANCHOR.0, CLOCK_IMPORT.0)
    .replace(CLOCK_ANCHOR.1, CLOCK_IMPORT.1)
    .replace(CLOCK_ANCHOR.2, CLOCK_IMPORT.2)
}

/// A component whose `on-request` answers with a reply of status 200 and a body of `body_len`
/// bytes (filled, so its pages are resident), laid out in its linear memory from 64 KiB on.
pub fn component_wat_replying(body_len: u32) -> String {
    let pages = body_len.div_ceil(65536) + 1;
    // result<action, string> at 64: ok (0), action `respond` (1) at 68, then the reply record
    // at 72: status u16, headers (pointer, length) at 76, body (pointer, length) at 84.
    component_wat(&format!(
        "(call $drop_request (local.get $req))
      (if (i32.eq (memory.grow (i32.const {pages})) (i32.const -1)) (then unreachable))
      (memory.fill (i32.const 65536) (i32.const 120) (i32.const {body_len}))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store8 (i32.const 68) (i32.const 1))
      (i32.store16 (i32.const 72) (i32.const 200))
      (i32.store (i32.const 76) (i32.const 0))
      (i32.store (i32.const 80) (i32.const 0))
      (i32.store (i32.const 84) (i32.const 65536))
      (i32.store (i32.const 88) (i32.const {body_len}))
      (return (i32.const 64))"
    ))
}

/// Markers in [`component_wat_full`]'s text where the host clock import goes.
const CLOCK_ANCHOR: (&str, &str, &str) = (
    r#"  (alias export $http "response" (type $response))
"#,
    r#"    (import "host" "drop-response" (func $drop_response (param i32)))
"#,
    r#"(export "drop-response" (func $drop_response)))"#,
);

/// The host clock (`now-millis`), imported and lowered, and callable as `$now` in the module.
const CLOCK_IMPORT: (&str, &str, &str) = (
    r#"  (alias export $http "response" (type $response))
  (import "gatehouse:plugin/host@0.1.0" (instance $clock (export "now-millis" (func (result u64)))))
  (alias export $clock "now-millis" (func $now_millis))
  (core func $now_lowered (canon lower (func $now_millis)))
"#,
    r#"    (import "host" "drop-response" (func $drop_response (param i32)))
    (import "host" "now" (func $now (result i64)))
"#,
    r#"(export "drop-response" (func $drop_response)) (export "now" (func $now_lowered)))"#,
);

/// A component whose `on-request` logs `lines` lines of `line_len` bytes each at level `warn`
/// (a plugin logging in a loop), then proceeds.
pub fn component_wat_logging(line_len: u32, lines: u32) -> String {
    let pages = line_len.div_ceil(65536) + 1;
    format!(
        r#"(component
{TYPES}  (import "gatehouse:plugin/http@0.1.0" (instance $http
    (export "request" (type (sub resource)))
    (export "response" (type (sub resource)))))
  (alias export $http "request" (type $request))
  (alias export $http "response" (type $response))
  (import "gatehouse:plugin/host@0.1.0" (instance $hosti
    (type $l (enum "trace" "debug" "info" "warn" "error"))
    (export "log-level" (type $level (eq $l)))
    (export "log" (func (param "level" $level) (param "message" string)))))
  (alias export $hosti "log" (func $log))
  (core module $mem
    (memory (export "memory") {pages})
    (global $heap (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (global.get $heap))
      (global.set $heap (i32.add (global.get $heap) (i32.add (local.get 3) (i32.const 8))))
      (local.get $at)))
  (core instance $mi (instantiate $mem))
  (core func $drop_request (canon resource.drop $request))
  (core func $drop_response (canon resource.drop $response))
  (core func $log_lowered (canon lower (func $log) (memory (core memory $mi "memory"))))
  (core module $m
    (import "mem" "memory" (memory 1))
    (import "host" "drop-request" (func $drop_request (param i32)))
    (import "host" "drop-response" (func $drop_response (param i32)))
    (import "host" "log" (func $log (param i32 i32 i32)))
    (func (export "configure") (param i32 i32) (result i32)
      (memory.fill (i32.const 65536) (i32.const 120) (i32.const {line_len}))
      (i64.store (i32.const 64) (i64.const 0))
      (i32.store8 (i32.const 68) (i32.const 1))
      (i32.const 64))
    (func (export "on-request") (param $req i32) (result i32)
      (local $i i32)
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (i32.const {lines})))
        (call $log (i32.const 3) (i32.const 65536) (i32.const {line_len}))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
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
  (core instance $host
    (export "drop-request" (func $drop_request))
    (export "drop-response" (func $drop_response))
    (export "log" (func $log_lowered)))
  (core instance $i (instantiate $m (with "host" (instance $host)) (with "mem" (instance $mi))))
{LIFTS_FROM_MEM})"#
    )
}

/// The import of the contract's `types` interface, which every test component starts with.
const TYPES: &str = r#"  (import "gatehouse:plugin/types@0.1.0" (instance $types
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
"#;

fn component_wat_full(body: &str, hooks: u8, configure_body: &str) -> String {
    format!(
        r#"(component
{TYPES}  (import "gatehouse:plugin/http@0.1.0" (instance $http
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
      {configure_body}
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

/// The WAT text of a component whose hooks edit headers: `on_request` is the body of
/// `on-request` (local `$req`), `on_response` the body of `on-response` (locals `$req`, `$resp`).
/// Both can call `$set` (request) and `$rset` (response) with a handle and the address and length
/// of a name and a value in memory, which ignore the setter's error like a hostile plugin would.
/// Strings laid out in memory: see [`strings`]. `$hex` writes the low nibble of a number as a hex
/// digit at an address.
pub fn component_wat_editing(on_request: &str, on_response: &str) -> String {
    let data: String = strings::ALL
        .iter()
        .map(|(at, text)| format!("    (data (i32.const {at}) {text:?})\n"))
        .collect();
    format!(
        r#"(component
{TYPES}  (import "gatehouse:plugin/http@0.1.0" (instance $http
    (export "request" (type $rq (sub resource)))
    (export "response" (type $rs (sub resource)))
    (export "[method]request.set-header" (func (param "self" (borrow $rq)) (param "name" string) (param "value" string) (result (result (error string)))))
    (export "[method]response.set-header" (func (param "self" (borrow $rs)) (param "name" string) (param "value" string) (result (result (error string)))))))
  (alias export $http "request" (type $request))
  (alias export $http "response" (type $response))
  (alias export $http "[method]request.set-header" (func $req_set))
  (alias export $http "[method]response.set-header" (func $resp_set))
  (core module $mem
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (if (i32.gt_u (global.get $heap) (i32.const 49152)) (then (global.set $heap (i32.const 4096))))
      (local.set $at (global.get $heap))
      (global.set $heap (i32.add (global.get $heap) (i32.add (local.get 3) (i32.const 8))))
      (local.get $at)))
  (core instance $mi (instantiate $mem))
  (core func $drop_request (canon resource.drop $request))
  (core func $drop_response (canon resource.drop $response))
  (core func $req_set_lowered (canon lower (func $req_set) (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
  (core func $resp_set_lowered (canon lower (func $resp_set) (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
  (core module $m
    (import "mem" "memory" (memory 1))
    (import "host" "drop-request" (func $drop_request (param i32)))
    (import "host" "drop-response" (func $drop_response (param i32)))
    (import "host" "request-set-header" (func $req_set (param i32 i32 i32 i32 i32 i32)))
    (import "host" "response-set-header" (func $resp_set (param i32 i32 i32 i32 i32 i32)))
{data}    (func $set (param i32 i32 i32 i32 i32)
      (call $req_set (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4) (i32.const 3000)))
    (func $rset (param i32 i32 i32 i32 i32)
      (call $resp_set (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4) (i32.const 3000)))
    (func $hex (param $at i32) (param $v i32)
      (local.set $v (i32.and (local.get $v) (i32.const 15)))
      (i32.store8 (local.get $at)
        (i32.add (local.get $v) (select (i32.const 48) (i32.const 87) (i32.lt_u (local.get $v) (i32.const 10))))))
    (func (export "configure") (param i32 i32) (result i32)
      (i64.store (i32.const 64) (i64.const 0))
      (i32.store8 (i32.const 68) (i32.const 5))
      (i32.const 64))
    (func (export "on-request") (param $req i32) (result i32)
      {on_request}
      (call $drop_request (local.get $req))
      (i64.store (i32.const 64) (i64.const 0))
      (i32.const 64))
    (func (export "on-upstream-request") (param $req i32) (param i32 i32 i32 i32 i32 i32 i32) (result i32)
      (call $drop_request (local.get $req))
      (i64.store (i32.const 64) (i64.const 0))
      (i32.const 64))
    (func (export "on-response") (param $req i32) (param $resp i32) (result i32)
      {on_response}
      (call $drop_request (local.get $req))
      (call $drop_response (local.get $resp))
      (i64.store (i32.const 64) (i64.const 0))
      (i32.const 64)))
  (core instance $host
    (export "drop-request" (func $drop_request))
    (export "drop-response" (func $drop_response))
    (export "request-set-header" (func $req_set_lowered))
    (export "response-set-header" (func $resp_set_lowered)))
  (core instance $i (instantiate $m (with "host" (instance $host)) (with "mem" (instance $mi))))
{LIFTS_FROM_MEM})"#
    )
}

/// Strings in the memory of [`component_wat_editing`]'s components, and hook bodies built from
/// them.
pub mod strings {
    /// (address, text)
    pub const ALL: [(u32, &str); 8] = [
        (1024, "transfer-encoding"),
        (1056, "chunked"),
        (1072, "content-length"),
        (1088, "5"),
        (1096, "x-plugin"),
        (1112, "edited"),
        (1120, "connection"),
        (1136, "close"),
    ];

    /// On the request (`$req`): a harmless header, then `Transfer-Encoding: chunked` and
    /// `Content-Length: 5`, ignoring the setters' errors.
    pub const SMUGGLE_REQUEST: &str =
        "(call $set (local.get $req) (i32.const 1096) (i32.const 8) (i32.const 1112) (i32.const 6))
      (call $set (local.get $req) (i32.const 1024) (i32.const 17) (i32.const 1056) (i32.const 7))
      (call $set (local.get $req) (i32.const 1072) (i32.const 14) (i32.const 1088) (i32.const 1))";

    /// On the response (`$resp`): a harmless header, then `Connection: close`.
    pub const SMUGGLE_RESPONSE: &str = "(call $rset (local.get $resp) (i32.const 1096) (i32.const 8) (i32.const 1112) (i32.const 6))
      (call $rset (local.get $resp) (i32.const 1120) (i32.const 10) (i32.const 1136) (i32.const 5))";

    /// On the request: 25,000 distinct headers `x-0000`.. `x-61a7`, ignoring errors.
    pub const FLOOD_REQUEST: &str = "(local $i i32)
      (i32.store16 (i32.const 2048) (i32.const 0x2d78))
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (i32.const 25000)))
        (call $hex (i32.const 2050) (i32.shr_u (local.get $i) (i32.const 12)))
        (call $hex (i32.const 2051) (i32.shr_u (local.get $i) (i32.const 8)))
        (call $hex (i32.const 2052) (i32.shr_u (local.get $i) (i32.const 4)))
        (call $hex (i32.const 2053) (local.get $i))
        (call $set (local.get $req) (i32.const 2048) (i32.const 6) (i32.const 1112) (i32.const 6))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))";

    /// On the request: one 8 MiB header value.
    pub const HUGE_VALUE_REQUEST: &str = "(drop (memory.grow (i32.const 129)))
      (memory.fill (i32.const 65536) (i32.const 97) (i32.const 8388608))
      (call $set (local.get $req) (i32.const 1096) (i32.const 8) (i32.const 65536) (i32.const 8388608))";
}

/// The exports of a component whose core module `$i` uses the memory and `realloc` of a
/// separate module instance `$mi` (so host functions can be lowered with that memory).
const LIFTS_FROM_MEM: &str = r#"  (func (export "configure") (param "config" string) (result (result $hooks (error string)))
    (canon lift (core func $i "configure") (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
  (func (export "on-request") (param "req" (borrow $request)) (result (result $action (error string)))
    (canon lift (core func $i "on-request") (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
  (func (export "on-upstream-request") (param "req" (borrow $request)) (param "node" $node) (result (result (error string)))
    (canon lift (core func $i "on-upstream-request") (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
  (func (export "on-response") (param "req" (borrow $request)) (param "resp" (borrow $response)) (result (result (error string)))
    (canon lift (core func $i "on-response") (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))"#;
