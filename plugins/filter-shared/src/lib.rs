//! A Proxy-Wasm HTTP filter that uses what VMs share, written against the `proxy-wasm` SDK crate
//! as a filter for Envoy would be (nothing in it knows Gatehouse):
//!
//! - each request increments the shared counter `requests` with compare-and-swap (VMs on other
//!   worker threads increment the same counter) and the response carries the value it got in
//!   `x-shared-count`;
//! - each request's path goes into the shared queue `paths`, which the root context that
//!   registered it drains when told (`proxy_on_queue_ready`);
//! - the root context's timer (every 20 ms) counts its ticks;
//! - metrics: the counters `filter_shared.requests` and `filter_shared.dequeued`, the gauge
//!   `filter_shared.ticks`.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType, Status};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root::default())
    });
}}

#[derive(Default, Clone, Copy)]
struct Metrics {
    requests: u32,
    dequeued: u32,
    ticks: u32,
}

#[derive(Default)]
struct Root {
    metrics: Metrics,
    queue: u32,
    ticks: u64,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        let define = |kind, name| hostcalls::define_metric(kind, name).unwrap_or(u32::MAX);
        self.metrics = Metrics {
            requests: define(MetricType::Counter, "filter_shared.requests"),
            dequeued: define(MetricType::Counter, "filter_shared.dequeued"),
            ticks: define(MetricType::Gauge, "filter_shared.ticks"),
        };
        self.queue = self.register_shared_queue("paths");
        self.set_tick_period(Duration::from_millis(20));
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let _ = hostcalls::record_metric(self.metrics.ticks, self.ticks);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(_path)) = self.dequeue_shared_queue(queue_id) {
            let _ = hostcalls::increment_metric(self.metrics.dequeued, 1);
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            metrics: self.metrics,
            count: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    metrics: Metrics,
    /// The counter's value after this request's increment.
    count: u64,
}

impl Context for Request {}

impl Request {
    /// Adds one to the shared counter, retrying when another VM changed it meanwhile.
    fn increment(&self) -> u64 {
        loop {
            let (value, cas) = self.get_shared_data("requests");
            let current = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let next = current + 1;
            match self.set_shared_data("requests", Some(next.to_string().as_bytes()), cas) {
                Ok(()) => return next,
                Err(Status::CasMismatch) => continue,
                Err(_) => return 0,
            }
        }
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.count = self.increment();
        let _ = hostcalls::increment_metric(self.metrics.requests, 1);
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if let Some(queue) = self.resolve_shared_queue("", "paths") {
            let _ = self.enqueue_shared_queue(queue, Some(path.as_bytes()));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("x-shared-count", Some(&self.count.to_string()));
        Action::Continue
    }
}
