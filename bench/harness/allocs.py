"""Heap allocations per request, counted exactly with uprobes on the allocator's entry points.

Gatehouse and bare Pingora both use mimalloc, and every Rust allocation of theirs goes through
one of its aligned entry points (the `mimalloc` crate's `GlobalAlloc`), which stay real
functions under LTO (they are C). `perf probe` puts a uprobe on each and `perf stat` counts
the hits of the process during a `wrk` run: no special build, and the counts are exact, but
every hit costs the process a trap (a few microseconds), so such a run is slow and only its
counts are kept. Needs root and tracefs (mounted here when missing)."""

import os
import re
import subprocess

from .profile import perf_stat

# (uprobe event name, function): new blocks, zeroed new blocks, resized blocks.
PROBES = (
    ("alloc", "mi_malloc_aligned"),
    ("zalloc", "mi_zalloc_aligned"),
    ("realloc", "mi_realloc_aligned"),
)
TRACEFS = "/sys/kernel/tracing"


def _run(argv):
    return subprocess.run(argv, capture_output=True, text=True)


def available():
    """Whether uprobes can be placed here (tracefs mounted, or mountable, and `perf probe`)."""
    if not os.path.exists(f"{TRACEFS}/uprobe_events"):
        _run(["mount", "-t", "tracefs", "nodev", TRACEFS])
    if not os.path.exists(f"{TRACEFS}/uprobe_events"):
        return False
    try:
        return _run(["perf", "probe", "--list"]).returncode == 0
    except OSError:
        return False


def group_of(binary):
    """The probe group of a binary: `gh_bench_` and its name as an identifier."""
    return "gh_bench_" + re.sub(r"[^A-Za-z0-9_]", "_", os.path.basename(binary))


def attach(binary):
    """Places the probes on `binary` (every process running it is counted); returns the group,
    or raises with perf's message."""
    group = group_of(binary)
    detach(group)
    for event, function in PROBES:
        done = _run(["perf", "probe", "-q", "-x", str(binary), "-a", f"{group}:{event}={function}"])
        if done.returncode != 0:
            detach(group)
            raise RuntimeError(f"perf probe {function} in {binary}: {done.stderr.strip()}")
    return group


def detach(group):
    _run(["perf", "probe", "-q", "-d", f"{group}:*"])


def worker_thread(pid, prefix):
    """The thread of process `pid` whose name starts with `prefix` (the proxy's worker: it serves
    every request, upstream side included, with `threads: 1`)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/comm") as f:
            if f.read().startswith(prefix):
                return int(task)
    raise RuntimeError(f"no thread named {prefix}... in process {pid}")


def count(tid, group, out_path, run):
    """Counts the probe hits of thread `tid` while `run()` runs (the process's other threads,
    which work on timers of their own, are left out); returns (run's result, {event: hits})."""
    result, counts = perf_stat(f"{group}:*", ["-t", str(tid)], out_path, run)
    hits = {event: 0 for event, _ in PROBES}
    for event, n in counts.items():
        name = event.split(":")[-1]
        if name in hits:
            hits[name] = n
    return result, hits
