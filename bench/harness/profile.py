"""A flat CPU profile of one process with `perf record -e cpu-clock` (a software clock, so it
works in VMs without hardware counters): top functions, and the share of each area (kernel,
Pingora, Gatehouse, wasmtime, plugin code, ...)."""

import re
import signal
import subprocess

LINE = re.compile(r"^\s*([\d.]+)%\s+(.+?)\s+\[(.)\]\s+(.*?)\s*$")
HASH = re.compile(r"::h[0-9a-f]{16}$")

# Leading crate of a symbol -> area; the first match wins.
AREAS = [
    ("ngx_", "nginx"),
    ("gatehouse", "Gatehouse"),
    ("pingora", "Pingora"),
    ("tokio", "tokio"),
    ("wasmtime", "wasmtime runtime"),
    ("cranelift", "wasmtime runtime"),
    ("mi_", "allocator (mimalloc)"),
    ("_mi_", "allocator (mimalloc)"),
    ("prometheus", "metrics (prometheus)"),
    ("httparse", "HTTP libraries"),
    ("http", "HTTP libraries"),
    ("h2", "HTTP libraries"),
    ("bytes", "HTTP libraries"),
    ("matchit", "Gatehouse"),
    ("core", "Rust core/alloc/std"),
    ("alloc", "Rust core/alloc/std"),
    ("std", "Rust core/alloc/std"),
]


def available():
    """Whether `perf record -e cpu-clock` works here."""
    try:
        return subprocess.run(
            ["perf", "record", "-q", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"],
            capture_output=True,
        ).returncode == 0
    except OSError:
        return False


def record(pid, seconds, out_path, core):
    """Starts sampling `pid` for `seconds`; returns the perf process (wait on it)."""
    return subprocess.Popen(
        ["taskset", "-c", str(core), "perf", "record", "-q", "-e", "cpu-clock", "-F", "1999",
         "-p", str(pid), "-o", out_path, "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def samples(data_path):
    """Every (percent, dso, kernel?, symbol) line of the report."""
    out = subprocess.run(
        ["perf", "report", "-i", data_path, "--stdio", "--no-children", "-q",
         "-F", "overhead,dso,sym", "--percent-limit", "0"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            pct, dso, kind, symbol = m.groups()
            rows.append((float(pct), dso, kind == "k", HASH.sub("", symbol)))
    return rows


def area(dso, kernel, symbol):
    if kernel:
        return "kernel"
    if dso == "[vdso]":
        return "clock reads (vDSO)"
    if dso == "nginx":
        return "nginx"  # Debian's nginx is stripped: its functions show as addresses
    if dso.startswith(("[JIT]", "perf-")) or dso in ("[unknown]", "[anon]") or symbol.startswith("0x"):
        return "JIT code (plugins)"
    if "libc" in dso:
        return "libc"
    # `<T as pingora_core::apps::ServerApp>::f`: a generic type's trait method belongs to the trait's crate
    generic = re.match(r"^<[A-Z][A-Za-z0-9_]*(?:<[^>]*>)? as ([A-Za-z_][A-Za-z0-9_]*)", symbol)
    crate = generic or re.match(r"^<?(?:&|\*const |\*mut |dyn )?([A-Za-z_][A-Za-z0-9_]*)", symbol)
    name = crate.group(1) if crate else symbol
    for prefix, label in AREAS:
        if name.startswith(prefix):
            return label
    return "other"


def summarize(data_path, top=15, width=110):
    """Top user-space functions and top kernel functions as (percent, name), and the areas as
    (percent, area), all descending."""
    rows = samples(data_path)
    areas = {}
    for pct, dso, kernel, symbol in rows:
        key = area(dso, kernel, symbol)
        areas[key] = areas.get(key, 0.0) + pct

    def label(symbol, dso):
        name = symbol if len(symbol) <= width else symbol[: width - 1] + "…"
        return f"{name} [{dso}]"

    ranked = sorted(rows, reverse=True)
    user = [(pct, label(sym, dso)) for pct, dso, kernel, sym in ranked
            if not kernel and area(dso, kernel, sym) != "JIT code (plugins)"][:top]
    kernel = [(pct, sym) for pct, _, kernel, sym in ranked if kernel][:5]
    return {
        "user": user,
        "kernel": kernel,
        "areas": sorted(((p, a) for a, p in areas.items()), reverse=True),
    }


def perf_stat(events, target, out_path, run):
    """Counts `events` (a `perf stat -e` list) of `target` (`["-p", PID]` for a process and its
    threads, `["-t", TID]` for one thread) while `run()` runs; returns (run's result,
    {event: count}) with the events seen at least once."""
    stat = subprocess.Popen(
        ["perf", "stat", "-x", ",", "-e", events, *target, "-o", out_path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        result = run()
    finally:
        stat.send_signal(signal.SIGINT)
        stat.wait(timeout=60)
    counts = {}
    with open(out_path) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) > 2 and fields[0].isdigit() and int(fields[0]) > 0:
                counts[fields[2]] = int(fields[0])
    return result, counts


def count_syscalls(pid, out_path, run):
    """System calls of process `pid` (all its threads) by name while `run()` runs, counted with
    the kernel's `syscalls:sys_enter_*` tracepoints (`perf stat`: cheap, exact, no ptrace);
    returns (run's result, {name: count}) with the calls made at least once."""
    result, counts = perf_stat("syscalls:sys_enter_*", ["-p", str(pid)], out_path, run)
    return result, {event.removeprefix("syscalls:sys_enter_"): n for event, n in counts.items()}
