//! The sandbox limits, with tiny hand-written components (no guest toolchain needed): a plugin
//! that loops forever, one that allocates without end, one that traps. Each fails only its call;
//! the next call on the same slot works again.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_plugin_host::{Failure, Hook, PluginEngine, PluginSlot, RequestOutcome, SlotLimits};
use pingora_http::RequestHeader;

const LIMITS: SlotLimits = SlotLimits {
    memory: 4 * 1024 * 1024,
    time: Duration::from_millis(20),
    reuse_instances: true,
    edits: gatehouse_plugin_host::EditLimits {
        headers: 64,
        bytes: 16 * 1024,
    },
    body: 64 * 1024,
    counter_keys: 1024,
};

/// A slot for `body` (the engine runs its own epoch clock).
fn slot(body: &str) -> Arc<PluginSlot> {
    let engine = PluginEngine::new(64 * 1024 * 1024).unwrap();
    let wat = gatehouse_plugin_host::testing::component_wat(body);
    let key = format!("test:{}", body.len());
    let pre = engine
        .load(&key, || Ok(gatehouse_plugin_host::testing::binary(&wat)))
        .unwrap();
    PluginSlot::new(
        engine,
        pre,
        "test-plugin",
        "shop",
        "get_user",
        "{}".to_owned(),
        LIMITS,
    )
    .unwrap()
}

fn request() -> RequestHeader {
    RequestHeader::build("GET", b"/users/1", None).unwrap()
}

/// Runs a hook future to completion (the hooks wait, asynchronously, for an instance).
fn block<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(future)
}

fn run(slot: &Arc<PluginSlot>) -> Result<RequestOutcome, Failure> {
    block(slot.on_request(&mut request(), None, None))
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
            path_changed: false,
            query_changed: false,
            host_changed: false,
            body_changed: false,
            nodes: None,
            retries: None,
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
    assert!(block(slot.on_request(&mut req, None, None)).is_err());
    assert_eq!(req.uri.path(), "/users/1");
    assert_eq!(req.headers.get("x-kept").unwrap(), "yes");
}

#[test]
fn a_reply_with_an_impossible_status_is_invalid_output() {
    // writes `ok(respond({ status: 1000, headers: [], body: [] }))` at the result address
    let body = "(i32.store8 (i32.const 64) (i32.const 0)) (i32.store8 (i32.const 68) (i32.const 1)) \
                (i32.store16 (i32.const 72) (i32.const 1000)) (i64.store (i32.const 76) (i64.const 0)) \
                (i64.store (i32.const 84) (i64.const 0)) (call $drop_request (local.get $req)) (return (i32.const 64))";
    let slot = slot(body);
    match run(&slot) {
        Err(Failure::InvalidOutput(message)) => assert!(message.contains("1000"), "{message}"),
        other => panic!("expected invalid output, got {:?}", other.err()),
    }
    assert!(
        matches!(run(&slot), Err(Failure::InvalidOutput(_))),
        "the instance stays usable"
    );
}

#[test]
fn only_the_declared_hooks_are_called() {
    let engine = PluginEngine::new(64 * 1024 * 1024).unwrap();
    let wat = gatehouse_plugin_host::testing::component_wat_declaring(WELL_BEHAVED, 0b001);
    let pre = engine
        .load("test:declaring", || {
            Ok(gatehouse_plugin_host::testing::binary(&wat))
        })
        .unwrap();
    let slot = PluginSlot::new(
        engine,
        pre,
        "test-plugin",
        "shop",
        "get_user",
        "{}".to_owned(),
        LIMITS,
    )
    .unwrap();
    assert!(slot.implements(Hook::Request));
    assert!(!slot.implements(Hook::UpstreamRequest));
    assert!(!slot.implements(Hook::Response));
}

/// A slot for a component whose hooks edit headers (see `testing::component_wat_editing`).
fn editing_slot(on_request: &str, on_response: &str) -> Arc<PluginSlot> {
    let engine = PluginEngine::new(64 * 1024 * 1024).unwrap();
    let wat = gatehouse_plugin_host::testing::component_wat_editing(on_request, on_response);
    let pre = engine
        .load(&format!("edit:{}", wat.len()), || {
            Ok(gatehouse_plugin_host::testing::binary(&wat))
        })
        .unwrap();
    let limits = SlotLimits {
        memory: 32 * 1024 * 1024,
        time: Duration::from_secs(5),
        ..LIMITS
    };
    PluginSlot::new(
        engine,
        pre,
        "editor",
        "shop",
        "get_user",
        "{}".to_owned(),
        limits,
    )
    .unwrap()
}

use gatehouse_plugin_host::testing::strings;

#[test]
fn framing_headers_fail_the_call_and_roll_back_every_edit() {
    let slot = editing_slot(strings::SMUGGLE_REQUEST, strings::SMUGGLE_RESPONSE);
    let mut req = request();
    req.insert_header("content-length", "11").unwrap();
    let before: Vec<_> = req
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    match block(slot.on_request(&mut req, None, None)) {
        Err(Failure::ForbiddenHeader(m)) => assert!(m.contains("transfer-encoding"), "{m}"),
        other => panic!("expected a forbidden_header failure, got {:?}", other.err()),
    }
    let after: Vec<_> = req
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    assert_eq!(
        before, after,
        "the harmless edit before the forbidden one is rolled back too"
    );

    let mut resp = pingora_http::ResponseHeader::build(200, None).unwrap();
    match block(slot.on_response(&mut request(), &mut resp, None)) {
        Err(Failure::ForbiddenHeader(m)) => assert!(m.contains("connection"), "{m}"),
        other => panic!("expected a forbidden_header failure, got {:?}", other.err()),
    }
    assert!(
        resp.headers.is_empty(),
        "response edits rolled back: {:?}",
        resp.headers
    );
}

#[test]
fn a_header_flood_fails_the_call_without_touching_the_request() {
    let slot = editing_slot(strings::FLOOD_REQUEST, "");
    let mut req = request();
    match block(slot.on_request(&mut req, None, None)) {
        Err(Failure::HeaderLimit(m)) => assert!(m.contains("64 header edits"), "{m}"),
        other => panic!("expected a header_limit failure, got {:?}", other.err()),
    }
    assert!(req.headers.is_empty(), "{} headers left", req.headers.len());
    // the instance is still usable
    assert!(block(slot.on_request(&mut request(), None, None)).is_err());
}

#[test]
fn a_huge_header_value_fails_the_call() {
    let slot = editing_slot(strings::HUGE_VALUE_REQUEST, "");
    let mut req = request();
    match block(slot.on_request(&mut req, None, None)) {
        Err(Failure::HeaderLimit(m)) => assert!(m.contains("bytes of headers"), "{m}"),
        other => panic!("expected a header_limit failure, got {:?}", other.err()),
    }
    assert!(req.headers.get("x-plugin").is_none());
}

/// Counts its calls in its own memory and sets `x-plugin` to the count (a hex digit).
const COUNTING: &str =
    "(i32.store (i32.const 2040) (i32.add (i32.load (i32.const 2040)) (i32.const 1)))
      (call $hex (i32.const 2060) (i32.load (i32.const 2040)))
      (call $set (local.get $req) (i32.const 1096) (i32.const 8) (i32.const 2060) (i32.const 1))";

#[test]
fn a_thread_calling_again_gets_the_instance_it_used_last() {
    let slot = editing_slot(COUNTING, "");
    let call = || {
        let mut req = request();
        assert!(matches!(
            block(slot.on_request(&mut req, None, None)),
            Ok(RequestOutcome::Proceed { .. })
        ));
        let count = req
            .headers
            .get("x-plugin")
            .expect("the plugin set x-plugin");
        count.to_str().unwrap().to_owned()
    };
    assert_eq!(call(), "1");
    // the first call emptied the pool, which the background thread fills with spares: a pool
    // handing out its least recently used instance would now answer with fresh ones
    std::thread::sleep(Duration::from_millis(300));
    let counts: Vec<String> = (0..5).map(|_| call()).collect();
    assert_eq!(counts, ["2", "3", "4", "5", "6"]);
}

#[test]
fn threads_calling_at_once_share_a_bounded_set_of_instances() {
    let engine = PluginEngine::new(64 * 1024 * 1024).unwrap();
    let wat = gatehouse_plugin_host::testing::component_wat(WELL_BEHAVED);
    let pre = engine
        .load("shared:well-behaved", || {
            Ok(gatehouse_plugin_host::testing::binary(&wat))
        })
        .unwrap();
    let slot = PluginSlot::new(
        engine.clone(),
        pre,
        "shared",
        "shop",
        "get",
        "{}".to_owned(),
        LIMITS,
    )
    .unwrap();
    let one = engine.memory_budget().used();
    // eight threads, more than the cells of a small machine, each calling 300 times: instances
    // move between their cells and the pool, none is lost or made per call
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                for _ in 0..300 {
                    let outcome = rt.block_on(slot.on_request(&mut request(), None, None));
                    assert!(
                        matches!(outcome, Ok(RequestOutcome::Proceed { .. })),
                        "{:?}",
                        outcome.err()
                    );
                }
            });
        }
    });
    let held = engine.memory_budget().used();
    eprintln!("{} instances after 2,400 calls", held / one);
    // at most one in use per thread, the spares and what the cells keep: far from 2,400
    assert!(
        held <= 32 * one,
        "{} instances' worth of memory held after 2,400 calls",
        held / one
    );
}

#[test]
fn all_instances_share_one_memory_budget() {
    let engine = PluginEngine::new(64 * 1024 * 1024).unwrap();
    let make = |body: &str, name: &str| {
        let wat = gatehouse_plugin_host::testing::component_wat(body);
        let pre = engine
            .load(&format!("budget:{name}"), || {
                Ok(gatehouse_plugin_host::testing::binary(&wat))
            })
            .unwrap();
        PluginSlot::new(
            engine.clone(),
            pre,
            name,
            "shop",
            name,
            "{}".to_owned(),
            LIMITS,
        )
        .unwrap()
    };
    let quiet = make(WELL_BEHAVED, "quiet");
    let baseline = engine.memory_budget().used();
    assert!(baseline > 0, "warm instances hold memory of the budget");
    // a budget just above what is held: the bomb is stopped by it, not by its own 4 MiB limit
    engine.memory_budget().set_limit(baseline + 2 * 1024 * 1024);
    let bomb = make(MEMORY_BOMB, "bomb");
    let held = engine.memory_budget().used();
    assert!(matches!(run(&bomb), Err(Failure::Memory)));
    assert!(engine.memory_budget().used() <= baseline + 2 * 1024 * 1024);
    // the failed instance gave its memory back; the others still work
    std::thread::sleep(Duration::from_millis(200));
    // (fresh spares of one page each may have been made since)
    let now = engine.memory_budget().used();
    assert!(
        now < baseline + 1024 * 1024,
        "{now} held after the bomb's instance was dropped"
    );
    assert!(held < baseline + 1024 * 1024);
    assert!(run(&quiet).is_ok());
}

/// Counts `n` down in linear memory: about a nanosecond of CPU time per step.
fn count_down(n: u32) -> String {
    format!(
        "(i32.store (i32.const 16) (i32.const {n}))
         (block $out (loop $again
           (i32.store (i32.const 16) (i32.sub (i32.load (i32.const 16)) (i32.const 1)))
           (br_if $out (i32.eqz (i32.load (i32.const 16))))
           (br $again)))"
    )
}

/// A slot for `body` with a time limit of `time`.
fn timed_slot(body: &str, time: Duration) -> Arc<PluginSlot> {
    let engine = PluginEngine::new(64 * 1024 * 1024).unwrap();
    let wat = gatehouse_plugin_host::testing::component_wat(body);
    let pre = engine
        .load(&format!("timed:{}", body.len()), || {
            Ok(gatehouse_plugin_host::testing::binary(&wat))
        })
        .unwrap();
    PluginSlot::new(
        engine,
        pre,
        "test-plugin",
        "shop",
        "get_user",
        "{}".to_owned(),
        SlotLimits { time, ..LIMITS },
    )
    .unwrap()
}

/// Pins the calling thread to `cpu`; false where the machine does not allow it.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[test]
fn a_plugin_is_charged_the_time_it_ran_not_the_time_it_waited() {
    // how many steps make about 4 ms of CPU time here (the fastest of a few calibration runs)
    let calibrate = timed_slot(&count_down(1_000_000), Duration::from_secs(1));
    let per_million = (0..5)
        .map(|_| {
            let started = std::time::Instant::now();
            run(&calibrate).unwrap();
            started.elapsed()
        })
        .min()
        .unwrap();
    let steps = (4_000_000.0 / per_million.as_micros().max(1) as f64 * 1000.0) as u32;
    let limit = Duration::from_millis(10);
    let slot = timed_slot(&count_down(steps.max(1)), limit);
    // three spinning threads share one CPU with the calling thread: each call, 4 ms of work
    // under a 10 ms limit, takes about 16 ms of wall-clock time
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin_to(0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let outcome = std::thread::spawn(move || {
        pin_to(0);
        (0..20).map(|_| run(&slot).err()).collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    assert!(
        outcome.iter().all(Option::is_none),
        "{steps} steps under {limit:?}: {outcome:?}"
    );
    // and a plugin that does run past its limit is still stopped
    let spinning = timed_slot(INFINITE_LOOP, limit);
    assert_eq!(run(&spinning).err(), Some(Failure::Timeout));
}

#[test]
fn a_component_importing_what_the_host_lacks_is_refused_naming_the_import_and_version() {
    let engine = PluginEngine::new(64 << 20).unwrap();
    // the clock-reading component, asking for a host function no contract has
    let wat = gatehouse_plugin_host::testing::component_wat_failing_after(u64::MAX)
        .replace("now-millis", "now-nanos");
    let Err(err) = engine.load("test:lacking", || {
        Ok(gatehouse_plugin_host::testing::binary(&wat))
    }) else {
        panic!("a component with a missing import loaded");
    };
    let err = format!("{err}");
    assert!(
        err.starts_with(
            "test:lacking does not implement the gatehouse:plugin world of its version (0.1.0)"
        ),
        "{err}"
    );
    assert!(err.contains("gatehouse:plugin/host@0.1.0"), "{err}");
    assert!(err.contains("now-nanos"), "{err}");
}
