//! What a filter's VMs share within the process: key-value data with compare-and-swap, message
//! queues, and the metrics filters define. Everything is bounded: a filter cannot make the
//! gateway hold more than a few MiB for it, nor register metrics without end.
//!
//! Data and queues are shared by every VM of one filter module (every plugin use of the same
//! file's bytes), as Envoy shares them between the VMs of one VM id; they outlive the VMs and
//! configuration reloads, and go with the module when no configuration uses it any more.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use dashmap::DashMap;
use once_cell::sync::Lazy;

/// Keys of one module's shared data.
pub const MAX_KEYS: usize = 1024;
/// Bytes of one shared value, and of one queued message.
pub const MAX_VALUE: usize = 64 * 1024;
/// Bytes of one module's shared data, keys and values together.
pub const MAX_DATA_BYTES: usize = 4 * 1024 * 1024;
/// Queues of one module.
pub const MAX_QUEUES: usize = 64;
/// Messages waiting in one queue.
pub const MAX_QUEUED: usize = 1024;
/// Bytes of the messages waiting in one module's queues.
pub const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;
/// VMs remembered as a queue's owners (VMs come and go; the latest are kept).
const MAX_OWNERS: usize = 64;

/// Why a shared-data or queue operation was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotFound,
    CasMismatch,
    /// Over one of the bounds above (the message says which).
    Full(&'static str),
    Empty,
}

/// One module's shared data and queues.
#[derive(Default)]
pub struct Shared {
    data: DashMap<String, (Vec<u8>, u32)>,
    /// Keys in `data` (a map's own count would lock every shard, the one held included).
    keys: AtomicUsize,
    bytes: AtomicUsize,
    queues: Mutex<Vec<std::sync::Arc<Queue>>>,
    /// Bytes of the messages waiting in `queues`.
    queued_bytes: AtomicUsize,
}

/// A queue: registered by VMs (one of which is told when messages arrive), filled by any.
pub(crate) struct Queue {
    pub(crate) name: String,
    items: Mutex<VecDeque<Vec<u8>>>,
    /// The VMs that registered it, the latest last (at most [`MAX_OWNERS`]).
    owners: Mutex<VecDeque<u64>>,
    /// Messages arrived since the owner was last told.
    pub(crate) ready: AtomicBool,
}

impl Shared {
    /// A value and its compare-and-swap token.
    pub(crate) fn get(&self, key: &str) -> Result<(Vec<u8>, u32), Refusal> {
        self.data
            .get(key)
            .map(|e| e.value().clone())
            .ok_or(Refusal::NotFound)
    }

    /// Sets a value; `cas` other than 0 must be the token of the value being replaced.
    pub(crate) fn set(&self, key: &str, value: Vec<u8>, cas: u32) -> Result<(), Refusal> {
        if value.len() > MAX_VALUE {
            return Err(Refusal::Full("a shared value over 64 KiB"));
        }
        let grown = key.len() + value.len();
        match self.data.entry(key.to_owned()) {
            dashmap::mapref::entry::Entry::Occupied(mut e) => {
                let (old, token) = e.get();
                if cas != 0 && cas != *token {
                    return Err(Refusal::CasMismatch);
                }
                let old_len = key.len() + old.len();
                if grown > old_len
                    && self.bytes.load(Ordering::Relaxed) + (grown - old_len) > MAX_DATA_BYTES
                {
                    return Err(Refusal::Full("more than 4 MiB of shared data"));
                }
                let token = token.wrapping_add(1).max(1);
                self.bytes.fetch_add(grown, Ordering::Relaxed);
                self.bytes.fetch_sub(old_len, Ordering::Relaxed);
                e.insert((value, token));
            }
            dashmap::mapref::entry::Entry::Vacant(e) => {
                if cas != 0 {
                    return Err(Refusal::CasMismatch);
                }
                if self.keys.load(Ordering::Relaxed) >= MAX_KEYS {
                    return Err(Refusal::Full("more than 1024 shared keys"));
                }
                self.keys.fetch_add(1, Ordering::Relaxed);
                if self.bytes.load(Ordering::Relaxed) + grown > MAX_DATA_BYTES {
                    return Err(Refusal::Full("more than 4 MiB of shared data"));
                }
                self.bytes.fetch_add(grown, Ordering::Relaxed);
                e.insert((value, 1));
            }
        }
        Ok(())
    }

    /// Registers (or finds) the queue `name` for the VM `owner`; its id (1-based).
    pub(crate) fn register_queue(&self, name: &str, owner: u64) -> Result<u32, Refusal> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = queues.iter().position(|q| q.name == name) {
            let mut owners = queues[i].owners.lock().unwrap_or_else(|p| p.into_inner());
            if !owners.contains(&owner) {
                if owners.len() >= MAX_OWNERS {
                    owners.pop_front();
                }
                owners.push_back(owner);
            }
            return Ok(i as u32 + 1);
        }
        if queues.len() >= MAX_QUEUES {
            return Err(Refusal::Full("more than 64 shared queues"));
        }
        queues.push(std::sync::Arc::new(Queue {
            name: name.to_owned(),
            items: Mutex::new(VecDeque::new()),
            owners: Mutex::new(VecDeque::from([owner])),
            ready: AtomicBool::new(false),
        }));
        Ok(queues.len() as u32)
    }

    /// The id of the queue `name`.
    pub(crate) fn resolve_queue(&self, name: &str) -> Result<u32, Refusal> {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .iter()
            .position(|q| q.name == name)
            .map(|i| i as u32 + 1)
            .ok_or(Refusal::NotFound)
    }

    fn queue(&self, id: u32) -> Result<std::sync::Arc<Queue>, Refusal> {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .get((id as usize).wrapping_sub(1))
            .cloned()
            .ok_or(Refusal::NotFound)
    }

    pub(crate) fn enqueue(&self, id: u32, message: Vec<u8>) -> Result<(), Refusal> {
        if message.len() > MAX_VALUE {
            return Err(Refusal::Full("a queued message over 64 KiB"));
        }
        let queue = self.queue(id)?;
        let mut items = queue.items.lock().unwrap_or_else(|p| p.into_inner());
        if items.len() >= MAX_QUEUED {
            return Err(Refusal::Full("more than 1024 messages in a queue"));
        }
        let len = message.len();
        if self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len > MAX_QUEUED_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(Refusal::Full("more than 4 MiB of queued messages"));
        }
        items.push_back(message);
        queue.ready.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn dequeue(&self, id: u32) -> Result<Vec<u8>, Refusal> {
        let queue = self.queue(id)?;
        let mut items = queue.items.lock().unwrap_or_else(|p| p.into_inner());
        let message = items.pop_front().ok_or(Refusal::Empty)?;
        self.queued_bytes.fetch_sub(message.len(), Ordering::AcqRel);
        Ok(message)
    }

    /// Whether any queue is registered.
    pub(crate) fn has_queues(&self) -> bool {
        !self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// The queues `vm` registered that have messages no owner has been told of; `vm` is told
    /// now (the first serving VM to look, since each VM of a filter registers the same queues).
    pub(crate) fn ready_for(&self, vm: u64) -> Vec<u32> {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .iter()
            .enumerate()
            .filter(|(_, q)| {
                q.owners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&vm)
            })
            .filter(|(_, q)| q.ready.swap(false, Ordering::AcqRel))
            .map(|(i, _)| i as u32 + 1)
            .collect()
    }
}

/// A metric a filter defined, as one of its VMs holds it.
#[derive(Clone)]
pub(crate) enum Metric {
    Counter(prometheus::IntCounter),
    Gauge(prometheus::IntGauge),
    Histogram(prometheus::Histogram),
}

/// The metric families filters defined, by name: shared by every use (labelled by plugin).
enum Family {
    Counter(prometheus::IntCounterVec),
    Gauge(prometheus::IntGaugeVec),
    Histogram(prometheus::HistogramVec),
}

static FAMILIES: Lazy<DashMap<String, Family>> = Lazy::new(DashMap::new);

/// Metric families filters may define in the process.
pub const MAX_FAMILIES: usize = 256;

/// The Prometheus name of a filter's metric `name`: `gatehouse_proxy_wasm_` and the name with
/// every character outside `[A-Za-z0-9_]` as `_`.
pub fn metric_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("gatehouse_proxy_wasm_{clean}")
}

/// The series of metric `name` of type `kind` (the ABI's 0 counter, 1 gauge, 2 histogram) for
/// `plugin`, its family registered on first use.
pub(crate) fn define_metric(kind: i32, name: &str, plugin: &str) -> Result<Metric, &'static str> {
    if name.is_empty() || name.len() > 128 {
        return Err("a metric name must have 1 to 128 characters");
    }
    let full = metric_name(name);
    if !FAMILIES.contains_key(&full) && FAMILIES.len() >= MAX_FAMILIES {
        return Err("filters defined 256 metrics already");
    }
    let help = format!("Defined by a Proxy-Wasm filter as {name:?}, by plugin.");
    let family = FAMILIES.entry(full.clone()).or_try_insert_with(|| {
        let registered = match kind {
            0 => prometheus::register_int_counter_vec!(full.as_str(), help.as_str(), &["plugin"])
                .map(Family::Counter),
            1 => prometheus::register_int_gauge_vec!(full.as_str(), help.as_str(), &["plugin"])
                .map(Family::Gauge),
            2 => prometheus::register_histogram_vec!(
                full.as_str(),
                help.as_str(),
                &["plugin"],
                prometheus::exponential_buckets(1.0, 4.0, 12).unwrap_or_default()
            )
            .map(Family::Histogram),
            _ => return Err("the metric type is not counter (0), gauge (1) or histogram (2)"),
        };
        registered.map_err(|_| "the name is taken by another metric of the gateway")
    })?;
    match (&*family, kind) {
        (Family::Counter(f), 0) => Ok(Metric::Counter(f.with_label_values(&[plugin]))),
        (Family::Gauge(f), 1) => Ok(Metric::Gauge(f.with_label_values(&[plugin]))),
        (Family::Histogram(f), 2) => Ok(Metric::Histogram(f.with_label_values(&[plugin]))),
        _ => Err("a metric of that name has another type"),
    }
}

/// Removes the series of a plugin no API uses any more from the filters' families.
pub(crate) fn forget(plugin: &str) {
    for family in FAMILIES.iter() {
        let _ = match family.value() {
            Family::Counter(f) => f.remove_label_values(&[plugin]),
            Family::Gauge(f) => f.remove_label_values(&[plugin]),
            Family::Histogram(f) => f.remove_label_values(&[plugin]),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_compares_and_swaps_within_its_bounds() {
        let s = Shared::default();
        assert_eq!(s.get("k"), Err(Refusal::NotFound));
        assert_eq!(s.set("k", b"1".to_vec(), 5), Err(Refusal::CasMismatch));
        s.set("k", b"1".to_vec(), 0).unwrap();
        let (v, cas) = s.get("k").unwrap();
        assert_eq!(v, b"1");
        assert_eq!(
            s.set("k", b"2".to_vec(), cas + 1),
            Err(Refusal::CasMismatch)
        );
        s.set("k", b"2".to_vec(), cas).unwrap();
        assert_eq!(
            s.set("k", b"3".to_vec(), cas),
            Err(Refusal::CasMismatch),
            "stale"
        );
        assert!(matches!(
            s.set("big", vec![0; MAX_VALUE + 1], 0),
            Err(Refusal::Full(_))
        ));
        for i in 1..MAX_KEYS {
            s.set(&format!("k{i}"), Vec::new(), 0).unwrap();
        }
        assert!(matches!(
            s.set("one-more", Vec::new(), 0),
            Err(Refusal::Full(_))
        ));
        // bytes are counted: 64 values of 64 KiB fill the 4 MiB
        let t = Shared::default();
        for i in 0..63 {
            t.set(&format!("v{i}"), vec![0; MAX_VALUE], 0).unwrap();
        }
        assert!(matches!(
            t.set("v63", vec![0; MAX_VALUE], 0),
            Err(Refusal::Full(_))
        ));
        // shrinking a value frees its bytes
        t.set("v0", Vec::new(), 0).unwrap();
        t.set("v63", vec![0; MAX_VALUE - 8], 0).unwrap();
    }

    #[test]
    fn queues_are_bounded_and_tell_their_owner() {
        let s = Shared::default();
        let id = s.register_queue("q", 7).unwrap();
        assert_eq!(s.resolve_queue("q"), Ok(id));
        assert_eq!(s.resolve_queue("other"), Err(Refusal::NotFound));
        assert_eq!(s.dequeue(id), Err(Refusal::Empty));
        s.enqueue(id, b"a".to_vec()).unwrap();
        assert_eq!(s.ready_for(8), Vec::<u32>::new(), "not an owner");
        assert_eq!(s.ready_for(7), vec![id]);
        assert_eq!(s.ready_for(7), Vec::<u32>::new(), "told once");
        assert_eq!(s.dequeue(id), Ok(b"a".to_vec()));
        for _ in 0..MAX_QUEUED {
            s.enqueue(id, Vec::new()).unwrap();
        }
        assert!(matches!(s.enqueue(id, Vec::new()), Err(Refusal::Full(_))));
        assert_eq!(s.enqueue(99, Vec::new()), Err(Refusal::NotFound));
        // bytes are bounded across queues
        let t = Shared::default();
        let (a, b) = (
            t.register_queue("a", 1).unwrap(),
            t.register_queue("b", 1).unwrap(),
        );
        for _ in 0..32 {
            t.enqueue(a, vec![0; MAX_VALUE]).unwrap();
            t.enqueue(b, vec![0; MAX_VALUE]).unwrap();
        }
        assert!(matches!(t.enqueue(a, vec![0; 1]), Err(Refusal::Full(_))));
        t.dequeue(b).unwrap();
        t.enqueue(a, vec![0; 1]).unwrap();
    }

    #[test]
    fn filter_metrics_are_named_and_typed() {
        assert_eq!(metric_name("a.b-c_d"), "gatehouse_proxy_wasm_a_b_c_d");
        let Ok(Metric::Counter(c)) = define_metric(0, "unit.count", "p") else {
            panic!("a counter");
        };
        c.inc();
        assert!(define_metric(1, "unit.count", "p").is_err(), "another type");
        assert!(define_metric(7, "unit.other", "p").is_err());
        assert!(define_metric(0, "", "p").is_err());
        // a name of the gateway's own is refused
        let _ = crate::metrics::PluginMetrics::new("p");
        assert!(define_metric(0, "unsupported_calls_total", "p").is_err());
    }
}
