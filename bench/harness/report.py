"""Statistics over the repetitions and the Markdown report. Every figure is the median over the
repetitions with its min–max; every ratio is computed within each repetition (the variants of one
repetition ran minutes apart, under the same background load) and then summarized the same way."""

import statistics

from .micro import KNOWN as MICRO_BENCHES

# Pingora's default `upstream_keepalive_pool_size` (per worker thread; the bench runs one).
PINGORA_POOL = 128
BODY_LABEL = {0: "0 B", 1024: "1 KiB", 16384: "16 KiB"}
BODIES = (0, 1024, 16384)
LABELS = {
    "direct": "direct to the backend",
    "nginx": "nginx (reverse proxy)",
    "nginx-forwarding": "nginx, setting Gatehouse's forwarding headers",
    "nginx-control": "nginx again (control: its difference to nginx is the method's noise)",
    "bare-pingora": "bare Pingora",
    "gatehouse": "Gatehouse, no plugins",
    "gatehouse-1-plugin": "Gatehouse, 1 plugin (host-rewrite)",
    "gatehouse-3-plugins": "Gatehouse, 3 plugins (host-rewrite, headers, request-id)",
    "gatehouse-noop-0.1": "Gatehouse, 1 no-op plugin on contract 0.1 (headers, nothing to set)",
    "gatehouse-noop-0.2": "Gatehouse, 1 no-op plugin on contract 0.2 (grant-probe, the same two hooks)",
    "gatehouse-set-header-component": "Gatehouse, one request header set by a component (headers)",
    "gatehouse-set-header-filter": "Gatehouse, the same header set by a Proxy-Wasm filter (filter-headers)",
    "gatehouse-canary": "Gatehouse, canary (every request steered to the canary-tagged nodes)",
    "gatehouse-rate-limit": "Gatehouse, rate-limit (every request counted)",
    "bare-pingora-post-1k": "bare Pingora, POST of 1 KiB",
    "bare-pingora-post-16k": "bare Pingora, POST of 16 KiB",
    "gatehouse-post-1k": "Gatehouse, POST of 1 KiB, no plugin (streamed)",
    "gatehouse-post-16k": "Gatehouse, POST of 16 KiB, no plugin (streamed)",
    "gatehouse-json-1k": "Gatehouse, POST of 1 KiB, json-validator (read whole)",
    "gatehouse-json-16k": "Gatehouse, POST of 16 KiB, json-validator (read whole)",
    "gatehouse-10k-apis": "Gatehouse, 10,000 APIs",
    "gatehouse-200-nodes": "Gatehouse, 200-node upstream",
    "nginx-tls": "nginx, HTTPS",
    "bare-pingora-tls": "bare Pingora, HTTPS",
    "gatehouse-tls": "Gatehouse, HTTPS",
    "nginx-h2": "nginx, HTTP/2",
    "bare-pingora-h2": "bare Pingora, HTTP/2",
    "gatehouse-h2": "Gatehouse, HTTP/2",
    "bare-pingora-steal": "bare Pingora, work stealing on",
    "bare-pingora-2-threads": "bare Pingora, 2 worker threads (on the one proxy core)",
    "bare-pingora-rbuf-4k": "bare Pingora, client read buffer 4 KiB (engine default 64 KiB)",
    "bare-pingora-rbuf-0": "bare Pingora, no client read buffer",
    "bare-pingora-pool-64": "bare Pingora, upstream pool of 64 (default 128)",
    "bare-pingora-idle-timeout": "bare Pingora, upstream idle timeout 60 s (default none)",
    "bare-pingora-system-alloc": "bare Pingora on glibc malloc (default mimalloc)",
    "bare-pingora-no-purge": "bare Pingora, mimalloc never purging (MIMALLOC_PURGE_DELAY=-1)",
    "haproxy": "HAProxy",
    "caddy": "Caddy",
    "pingap": "Pingap",
}
# The peers of `--peers`, in the order of their table.
PEERS = ("nginx", "nginx-control", "haproxy", "bare-pingora", "gatehouse", "pingap", "caddy")


# -- statistics --------------------------------------------------------------------------------

def spread(values):
    """(median, min, max) of the values that are not None; None when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


class Runs:
    """The measured runs, by variant key and repetition."""

    def __init__(self, runs):
        self.by = {}
        for run in runs:
            self.by.setdefault(run["variant"], {})[run["rep"]] = run

    def has(self, key):
        return key in self.by

    def field(self, key, name):
        return spread(r.get(name) for r in self.by.get(key, {}).values())

    def paired(self, a, b, name, combine):
        """combine(a's value, b's value) within each repetition both ran, summarized."""
        ra, rb = self.by.get(a, {}), self.by.get(b, {})
        values = []
        for rep in sorted(set(ra) & set(rb)):
            x, y = ra[rep].get(name), rb[rep].get(name)
            if x is not None and y is not None and (combine is not divide or y):
                values.append(combine(x, y))
        return spread(values)


def divide(x, y):
    return x / y


def subtract(x, y):
    return x - y


# -- formatting --------------------------------------------------------------------------------

def num(x, digits=0):
    if x is None:
        return "—"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def cell(s, digits=0, signed=False):
    """'median (min–max)' of a spread, or '—'."""
    if s is None:
        return "—"
    f = (lambda x: f"{x:+,.{digits}f}") if signed else (lambda x: num(x, digits))
    med, lo, hi = s
    if f(lo) == f(hi):
        return f(med)
    return f"{f(med)} ({f(lo)}–{f(hi)})"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def duration(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:,.2f} µs"
    return f"{ns:,.1f} ns"


def progress_line(rep, reps, run):
    cpu = "" if run["proxy_cpu_us"] is None else f", proxy {run['proxy_cpu_us']:.1f} µs CPU/req"
    p99 = "" if run["p99_us"] is None else f", p99 {run['p99_us']:,.0f} µs at {run['oha_rps']:,.0f} req/s"
    handshakes = ""
    if run.get("handshakes_per_s") is not None:
        handshakes = (f", {run['handshakes_per_s']:,.0f} new TLS conns/s at "
                      f"{run['proxy_cpu_us_per_handshake']:.0f} µs CPU each")
    return (f"[{rep + 1}/{reps}] {run['variant']}: {run['rps']:,.0f} req/s{cpu}{p99}{handshakes}, "
            f"core-0 foreign {run['core0_foreign_pct']:.1f} %")


# -- sections ----------------------------------------------------------------------------------

def ordered_keys(data, tls=None):
    """The variant keys in the run's order: all of them, the plain ones (`tls` False) or the
    HTTPS and HTTP/2 ones (`tls` True)."""
    return [v["key"] for v in data["variants"]
            if tls is None or (v.get("transport", "http") != "http") == tls]


def has_tls(data):
    return bool(ordered_keys(data, tls=True))


def variant_label(key):
    name, body = key.split("@")
    return LABELS.get(name, name), BODY_LABEL.get(int(body), f"{body} B")


def section_machine(data):
    m, s = data["machine"], data["settings"]
    load_end = m.get("load_end", (0, 0, 0))
    rows = [
        ("CPU", f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB"),
        ("OS, kernel", f"{m['os']}, {m['kernel']}"),
        ("load average (1/5/15 min) at start / end",
         f"{'/'.join(f'{x:.2f}' for x in m['load_start'])} / {'/'.join(f'{x:.2f}' for x in load_end)}"),
        ("Gatehouse commit", m["commit"]),
        ("tools", f"{m['rustc']}; {m['nginx']}; {m['wrk'].split(' [')[0]}; {m['oha']}"
                  + (f"; {m.get('h2load')}; {m.get('openssl')}" if has_tls(data) else "")
                  + "".join(f"; {m.get(peer)}" for peer in ("haproxy", "caddy", "pingap")
                            if any(v["name"] == peer for v in data["variants"]))),
        ("run", f"{'long' if s['long'] else 'default'}: {s['reps']} repetitions, wrk {s['wrk_seconds']} s, "
                f"oha {s['oha_seconds']} s at {s['rate']:,} req/s; took {data['seconds'] / 60:.1f} min"),
    ]
    if s.get("bin_dir", "target/release") != "target/release":
        rows.append(("binaries", f"`{s['bin_dir']}`, not the release build: the figures are not "
                                 "comparable with release results"))
    settings = f"""
- All on loopback. The proxy under test runs on core {s['proxy_core']} (`taskset -c {s['proxy_core']}`); the
  backend (`bench-backend`, one thread) and the load generator (one thread) share core {s['load_core']}.
  Every proxy has one worker: nginx `worker_processes 1`, bare Pingora and Gatehouse `threads: 1`
  (Pingora `work_stealing: false`, mimalloc).
- nginx: `upstream {{ keepalive 64; keepalive_requests 1000000; }}`, `proxy_http_version 1.1`,
  `proxy_set_header Connection ""`, `access_log off`, client `keepalive_requests 1000000`.
- Gatehouse: release build (fat LTO, one codegen unit), one upstream of 2 nodes (127.0.0.1 and
  127.0.0.2, the same backend), one API `/bench/{{id}}`, unless the variant says otherwise.
- Throughput and CPU: `wrk -t1 -c{s['connections']} -d{s['wrk_seconds']}s` after a 1 s warm-up. CPU per
  request = the proxy's utime+stime (/proc/PID/stat, all threads and nginx's worker) over the run,
  divided by the requests wrk completed. Latency: `oha -c{s['connections']} -q {s['rate']} --latency-correction
  -z {s['oha_seconds']}s`, right after. Peak RSS: VmHWM of the proxy after both.
- Every repetition runs every variant in a shuffled order (seed {s['seed']}), each in a fresh process.
"""
    if any(v["kind"] in ("haproxy", "caddy", "pingap") for v in data["variants"]):
        settings += """- Peers (bench/harness/configs.py): HAProxy `nbthread 1`, `http-reuse always`, no log;
  Caddy with `GOMAXPROCS=1`, `reverse_proxy` keeping 64 idle upstream connections, no access
  log, no admin endpoint; Pingap `threads = 1`, `work_stealing = false`, no access log, no
  plugin, no health check. Each on the proxy core like the others.
"""
    if has_tls(data):
        settings += f"""- HTTPS and HTTP/2: TLS terminated by the proxy with one P-256 certificate made for the run
  (nginx: OpenSSL; bare Pingora and Gatehouse: rustls), HTTP/2 and HTTP/1.1 offered by ALPN,
  TLS 1.2 and 1.3; upstream plain HTTP/1.1 kept alive as above. HTTPS load: `wrk` as above over
  `https://localhost` (no ALPN: HTTP/1.1). HTTP/2 load, after a 1 s warm-up:
  `h2load -t1 -c{s['h2_connections']} -m{s['h2_streams']} -D {s['wrk_seconds']}` ({s['h2_connections'] * s['h2_streams']} requests in flight).
  New TLS connections: `openssl s_time -new -www PATH -time {s['handshake_seconds']}`.
"""
    return "## Machine and settings\n\n" + table(("", ""), rows) + "\n" + settings


def section_ratios(data, runs):
    g = "gatehouse@{}"

    def per_body(label, a, b, name, combine=divide, digits=2, signed=False):
        cells = [cell(runs.paired(a.format(body), b.format(body), name, combine), digits, signed)
                 for body in BODIES]
        return (label, *cells)

    rows = [
        per_body("CPU per request: Gatehouse / nginx", g, "nginx@{}", "proxy_cpu_us"),
        per_body("CPU per request: Gatehouse / bare Pingora", g, "bare-pingora@{}", "proxy_cpu_us"),
        per_body("CPU per request: bare Pingora / nginx", "bare-pingora@{}", "nginx@{}", "proxy_cpu_us"),
        per_body("CPU per request: Gatehouse / nginx with forwarding headers", g,
                 "nginx-forwarding@{}", "proxy_cpu_us"),
        per_body("added CPU per request vs nginx, µs", g, "nginx@{}", "proxy_cpu_us", subtract, 1, True),
        per_body("added CPU per request vs bare Pingora, µs", g, "bare-pingora@{}", "proxy_cpu_us",
                 subtract, 1, True),
        per_body("throughput: Gatehouse / nginx", g, "nginx@{}", "rps"),
        per_body("throughput: Gatehouse / direct", g, "direct@{}", "rps"),
        per_body("throughput: Gatehouse / bare Pingora", g, "bare-pingora@{}", "rps"),
        per_body("throughput: nginx / direct", "nginx@{}", "direct@{}", "rps"),
        per_body("throughput: 1 plugin / no plugins", "gatehouse-1-plugin@{}", g, "rps"),
        per_body("throughput: 3 plugins / no plugins", "gatehouse-3-plugins@{}", g, "rps"),
        per_body("CPU per request: 1 plugin / no plugins", "gatehouse-1-plugin@{}", g, "proxy_cpu_us"),
        per_body("CPU per request: 3 plugins / no plugins", "gatehouse-3-plugins@{}", g, "proxy_cpu_us"),
        per_body("added CPU per request: 1 plugin − no plugins, µs", "gatehouse-1-plugin@{}", g,
                 "proxy_cpu_us", subtract, 1, True),
        per_body("throughput: 10,000 APIs / 1 API", "gatehouse-10k-apis@{}", g, "rps"),
        per_body("CPU per request: 10,000 APIs / 1 API", "gatehouse-10k-apis@{}", g, "proxy_cpu_us"),
        per_body("throughput: 200 nodes / 2 nodes", "gatehouse-200-nodes@{}", g, "rps"),
        per_body("CPU per request: 200 nodes / 2 nodes", "gatehouse-200-nodes@{}", g, "proxy_cpu_us"),
        per_body("added p50 vs nginx, µs (Gatehouse − nginx)", g, "nginx@{}", "p50_us", subtract, 0, True),
        per_body("added p99 vs nginx, µs (Gatehouse − nginx)", g, "nginx@{}", "p99_us", subtract, 0, True),
        per_body("added p99 vs bare Pingora, µs (Gatehouse − bare Pingora)", g, "bare-pingora@{}",
                 "p99_us", subtract, 0, True),
        per_body("control: p99 of nginx − nginx, µs (what the method resolves)", "nginx-control@{}",
                 "nginx@{}", "p99_us", subtract, 0, True),
        per_body("added p99 vs direct, µs (Gatehouse − direct)", g, "direct@{}", "p99_us", subtract, 0, True),
    ]
    rows = [r for r in rows if any(c != "—" for c in r[1:])]
    return ("## Key ratios\n\nMedian over the repetitions of the ratio within each repetition "
            "(min–max). Below 1 for throughput and above 1 for CPU means Gatehouse does worse.\n\n"
            + table(("ratio", *(BODY_LABEL[b] for b in BODIES)), rows))


def section_peers(data, runs):
    """The gateways a user would pick instead, each against nginx within each repetition."""
    keys = [f"{name}@0" for name in PEERS if runs.has(f"{name}@0")]
    if not any(k.split("@")[0] in ("haproxy", "caddy", "pingap") for k in keys):
        return ""
    rate = data["settings"]["rate"]
    rows = []
    for key in keys:
        rows.append((
            LABELS[key.split("@")[0]],
            cell(runs.field(key, "proxy_cpu_us"), 1),
            cell(runs.paired(key, "nginx@0", "proxy_cpu_us", divide), 2),
            cell(runs.field(key, "rps")),
            cell(runs.paired(key, "nginx@0", "rps", divide), 2),
            cell(runs.field(key, "peak_rss_mib"), 1),
            cell(runs.field(key, "p50_us")),
            cell(runs.field(key, "p99_us")),
            cell(runs.paired(key, "nginx@0", "p99_us", subtract), 0, True),
        ))
    return (f"## Peers\n\nThe same backend (0 B answers) behind each proxy, one worker on the proxy "
            "core, kept-alive upstream connections, no access log. CPU per request and throughput "
            "under `wrk -t1 -c50`; peak RSS after the run; latency at a fixed rate of "
            f"{rate:,} req/s (below every proxy's saturation). Each cell: the median over the "
            "repetitions (min–max); the ratios and differences are taken within each repetition "
            "against nginx, then summarized.\n\n"
            + table(("proxy", "CPU µs/req", "CPU / nginx", "req/s", "req/s / nginx",
                     "peak RSS MiB", "p50 µs", "p99 µs", "p99 − nginx µs"), rows))


ENGINE_PROXIES = ("nginx", "bare-pingora", "gatehouse")


def section_engine(data, runs):
    """The engine map: each outside setting of bare Pingora against nginx and against bare
    Pingora's defaults; system calls per request; CPU per request by area, nginx beside Pingora."""
    keys = [v["key"] for v in data["variants"] if v["key"].startswith("bare-pingora-")]
    out = []
    rows = []
    for key in ["nginx-control@0", "bare-pingora@0", *keys, "gatehouse@0"]:
        if not runs.has(key):
            continue
        rows.append((
            LABELS.get(key.split("@")[0], key),
            cell(runs.field(key, "proxy_cpu_us"), 1),
            cell(runs.paired(key, "nginx@0", "proxy_cpu_us", divide), 2),
            cell(runs.paired(key, "bare-pingora@0", "proxy_cpu_us", subtract), 1, True),
            cell(runs.field(key, "rps")),
        ))
    if keys:
        out.append(
            "## The engine map\n\nBare Pingora with each setting that can change from outside "
            "the engine, one at a time, in the same interleaved repetitions as nginx (0 B "
            "answers, `wrk -t1 -c50`, one worker on the proxy core). The ratio to nginx and the "
            "difference to bare Pingora's defaults are taken within each repetition, then "
            "summarized: median (min–max). The nginx control row is nginx measured twice: what "
            "this machine's noise alone moves.\n\n"
            + table(("setting", "CPU µs/req", "CPU / nginx", "− bare Pingora, µs", "req/s"), rows))
    calls = data.get("syscalls") or {}
    names = [n for n in ENGINE_PROXIES if n in calls]
    if names:
        every = sorted({c for n in names for c, v in calls[n]["per_request"].items() if v >= 0.01},
                       key=lambda c: -max(calls[n]["per_request"].get(c, 0) for n in names))
        body = [(f"`{c}`", *(f"{calls[n]['per_request'].get(c, 0):.2f}" for n in names))
                for c in every]
        body.append(("**all**", *(f"{sum(calls[n]['per_request'].values()):.2f}" for n in names)))
        out.append("### System calls per request\n\nCounted with the kernel's "
                   "`syscalls:sys_enter_*` tracepoints (`perf stat`, every thread of the proxy, "
                   "nginx's worker) over a 3 s `wrk -t1 -c50` run, divided by the requests "
                   "answered.\n\n"
                   + table(("system call", *(LABELS[n] for n in names)), body))
    profiles = data.get("profiles") or {}
    names = [n for n in ENGINE_PROXIES
             if n in profiles and runs.field(f"{n}@0", "proxy_cpu_us") is not None]
    if len(names) > 1:
        cpu = {n: runs.field(f"{n}@0", "proxy_cpu_us")[0] for n in names}
        per_area = {}
        for n in names:
            for pct, a in profiles[n]["areas"]:
                per_area.setdefault(a, {})[n] = pct / 100 * cpu[n]
        order = sorted(per_area, key=lambda a: -max(per_area[a].values()))
        body = [(a, *(f"{per_area[a].get(n, 0):.2f}" for n in names)) for a in order]
        user = {n: cpu[n] - per_area.get("kernel", {}).get(n, 0) for n in names}
        body.append(("**user space**", *(f"{user[n]:.2f}" for n in names)))
        body.append(("**all**", *(f"{cpu[n]:.2f}" for n in names)))
        out.append("### CPU per request by area, µs\n\nEach profile's shares (`perf record -e "
                   "cpu-clock`, below) times the median CPU per request of its proxy above.\n\n"
                   + table(("area", *(LABELS[n] for n in names)), body))
    return "\n\n".join(out)


def throughput_rows(data, runs, tls):
    rows = []
    for key in ordered_keys(data, tls):
        if not runs.has(key):
            continue
        label, body = variant_label(key)
        errors = sum(r["wrk_errors"] for r in runs.by[key].values())
        row = [label, body, cell(runs.field(key, "rps")), cell(runs.field(key, "proxy_cpu_us"), 1),
               cell(runs.field(key, "backend_cpu_us"), 1), cell(runs.field(key, "backend_conns_per_1k"), 1),
               cell(runs.field(key, "peak_rss_mib"), 1), errors]
        if tls:
            sessions = sorted({r["tls"] for r in runs.by[key].values() if r.get("tls")})
            row.insert(2, "; ".join(sessions) or "—")
        rows.append(row)
    return rows


def section_throughput(data, runs):
    rows = throughput_rows(data, runs, tls=False)
    if not rows:
        return ""
    return ("## Throughput, CPU per request, memory\n\n"
            "`wrk -t1 -c50`, the proxy alone on its core. For `direct` there is no proxy: the backend's "
            "CPU per request is the cost of the backend itself (in every row). Backend connections "
            "per 1,000 requests: TCP connections the backend accepted during the run (near 0 when "
            "the proxy reuses its upstream connections; 1,000 is a new connection per request).\n\n"
            + table(("variant", "body", "req/s", "proxy CPU µs/req", "backend CPU µs/req",
                     "backend conns / 1k req", "proxy peak RSS MiB", "wrk errors"), rows))


def latency_rows(data, runs, tls):
    rows = []
    rate = data["settings"]["rate"]
    for key in ordered_keys(data, tls):
        if not runs.has(key) or runs.field(key, "p50_us") is None:
            continue
        label, body = variant_label(key)
        achieved = runs.field(key, "oha_rps")
        flag = " ⚠ below the target rate" if achieved and achieved[1] < 0.95 * rate else ""
        non_200 = sum(r["oha_non_200"] for r in runs.by[key].values())
        rows.append((label, body, cell(achieved) + flag, cell(runs.field(key, "p50_us")),
                     cell(runs.field(key, "p99_us")), cell(runs.field(key, "p999_us")), non_200))
    return rows


LATENCY_HEADER = ("variant", "body", "achieved req/s", "p50 µs", "p99 µs", "p99.9 µs", "non-200")


def section_latency(data, runs):
    rate = data["settings"]["rate"]
    title = f"## Latency at a fixed rate of {rate:,} req/s\n\n"
    if not data["settings"].get("oha", True):
        return title + "Not measured: oha is not installed (`cargo install oha --locked`)."
    rows = latency_rows(data, runs, tls=False)
    if not rows:
        return ""
    return (title + "`oha -q RATE --latency-correction` (open loop: a slow answer delays no later "
            "request's start, so percentiles include queueing). Microseconds.\n\n"
            + table(LATENCY_HEADER, rows))


def section_tls(data, runs):
    """The HTTPS and HTTP/2 variants: their ratios, throughput and CPU, new connections, latency."""
    if not has_tls(data):
        return ""
    s = data["settings"]

    def per_body(label, a, b, name, combine=divide, digits=2, signed=False):
        cells = [cell(runs.paired(f"{a}@{body}", f"{b}@{body}", name, combine), digits, signed)
                 for body in BODIES]
        return (label, *cells)

    cpu, hs = "proxy_cpu_us", "proxy_cpu_us_per_handshake"
    rows = [
        per_body("CPU per request, HTTPS: Gatehouse / nginx", "gatehouse-tls", "nginx-tls", cpu),
        per_body("CPU per request, HTTP/2: Gatehouse / nginx", "gatehouse-h2", "nginx-h2", cpu),
        per_body("CPU per request, HTTPS: Gatehouse / bare Pingora", "gatehouse-tls", "bare-pingora-tls", cpu),
        per_body("CPU per request, HTTP/2: Gatehouse / bare Pingora", "gatehouse-h2", "bare-pingora-h2", cpu),
        per_body("added CPU per request vs nginx, HTTPS, µs", "gatehouse-tls", "nginx-tls", cpu,
                 subtract, 1, True),
        per_body("added CPU per request vs nginx, HTTP/2, µs", "gatehouse-h2", "nginx-h2", cpu,
                 subtract, 1, True),
        per_body("TLS termination: Gatehouse HTTPS / Gatehouse plain (CPU)", "gatehouse-tls", "gatehouse", cpu),
        per_body("TLS termination: nginx HTTPS / nginx plain (CPU)", "nginx-tls", "nginx", cpu),
        per_body("TLS termination: bare Pingora HTTPS / plain (CPU)", "bare-pingora-tls", "bare-pingora", cpu),
        per_body("CPU added by TLS, Gatehouse, µs per request", "gatehouse-tls", "gatehouse", cpu,
                 subtract, 1, True),
        per_body("CPU added by TLS, nginx, µs per request", "nginx-tls", "nginx", cpu, subtract, 1, True),
        per_body("HTTP/2 / HTTPS, Gatehouse (CPU)", "gatehouse-h2", "gatehouse-tls", cpu),
        per_body("HTTP/2 / HTTPS, nginx (CPU)", "nginx-h2", "nginx-tls", cpu),
        per_body("throughput, HTTPS: Gatehouse / nginx", "gatehouse-tls", "nginx-tls", "rps"),
        per_body("throughput, HTTP/2: Gatehouse / nginx", "gatehouse-h2", "nginx-h2", "rps"),
        per_body("throughput: Gatehouse HTTPS / Gatehouse plain", "gatehouse-tls", "gatehouse", "rps"),
        per_body("CPU per new TLS connection: Gatehouse / nginx", "gatehouse-tls", "nginx-tls", hs),
        per_body("CPU per new TLS connection: Gatehouse / bare Pingora", "gatehouse-tls", "bare-pingora-tls", hs),
        per_body("added p99 vs nginx, HTTPS, µs", "gatehouse-tls", "nginx-tls", "p99_us", subtract, 0, True),
        per_body("added p99 vs nginx, HTTP/2, µs", "gatehouse-h2", "nginx-h2", "p99_us", subtract, 0, True),
    ]
    rows = [r for r in rows if any(c != "—" for c in r[1:])]
    out = ["## HTTPS and HTTP/2\n\n"
           "The proxy terminates TLS (one P-256 certificate for every proxy; nginx with OpenSSL, bare "
           "Pingora and Gatehouse with rustls) and forwards plain HTTP/1.1 over kept-alive upstream "
           "connections, as in the plain variants. Clients keep their connections: these figures are "
           "the cost of a request over an established TLS connection. HTTPS: `wrk -t1 -c50`; HTTP/2: "
           f"`h2load -t1 -c{s['h2_connections']} -m{s['h2_streams']}` (the same "
           f"{s['h2_connections'] * s['h2_streams']} requests in flight). Ratios as above: within each "
           "repetition, median (min–max); \"plain\" is the variant of the same proxy over plain HTTP/1.1 "
           "in the same repetition.\n\n"
           + table(("ratio", *(BODY_LABEL[b] for b in BODIES)), rows)]
    out.append("### Throughput, CPU per request, memory\n\nTLS: the version and cipher negotiated "
               "(over HTTPS by an OpenSSL client with default settings, as wrk; over HTTP/2 as h2load "
               "reports it, key exchange included).\n\n"
               + table(("variant", "body", "TLS", "req/s", "proxy CPU µs/req", "backend CPU µs/req",
                        "backend conns / 1k req", "proxy peak RSS MiB", "load errors"),
                       throughput_rows(data, runs, tls=True)))
    fresh = []
    for key in ordered_keys(data, tls=True):
        if runs.has(key) and runs.field(key, hs):
            label, body = variant_label(key)
            fresh.append((label, body, cell(runs.field(key, "handshakes_per_s")), cell(runs.field(key, hs))))
    if fresh:
        out.append("### New TLS connections\n\n`openssl s_time -new -www PATH` for "
                   f"{s['handshake_seconds']} s on the load core: one connection after another, each a "
                   "full handshake (TLS 1.3, X25519, ECDSA P-256; no resumption), one HTTP/1.0 request "
                   "and a close. The proxy's CPU per connection includes the TCP accept and close and the "
                   "request; subtract the CPU per request above for the handshake alone. Connections per "
                   "second are those of one sequential client (round trips included), not a capacity.\n\n"
                   + table(("variant", "body", "new connections / s", "proxy CPU µs per connection"), fresh))
    latency = latency_rows(data, runs, tls=True)
    if latency:
        out.append(f"### Latency at a fixed rate of {s['rate']:,} req/s\n\n`oha --insecure`; over "
                   f"HTTP/2 `--http2 -c{s['h2_connections']} -p{s['h2_streams']}`.\n\n"
                   + table(LATENCY_HEADER, latency))
    return "\n\n".join(out)


def two_against_none(runs, a, b, names):
    """The rows comparing variants `a` and `b` (named `names`) with no plugin and with each
    other, paired within each repetition: CPU differences in µs, and ratios of b to a."""
    g0 = "gatehouse@0"
    (na, nb) = names
    return [
        (f"{na} − no plugin", cell(runs.paired(a, g0, "proxy_cpu_us", subtract), 2, True)),
        (f"{nb} − no plugin", cell(runs.paired(b, g0, "proxy_cpu_us", subtract), 2, True)),
        (f"{nb} − {na}", cell(runs.paired(b, a, "proxy_cpu_us", subtract), 2, True)),
        (f"{nb} / {na} (CPU)", cell(runs.paired(b, a, "proxy_cpu_us", divide), 3)),
        (f"{nb} / {na} (throughput)", cell(runs.paired(b, a, "rps", divide), 3)),
    ]


def section_contract(runs):
    n1, n2 = "gatehouse-noop-0.1@0", "gatehouse-noop-0.2@0"
    if not (runs.has(n1) and runs.has(n2)):
        return ""
    rows = two_against_none(runs, n1, n2, ("0.1 no-op", "0.2 no-op"))
    return ("## Cost of the plugin contract\n\nA plugin doing nothing, its `on-request` and "
            "`on-response` called and changing nothing, on contract 0.1 (`headers` with nothing "
            "to set, the frozen 0.1 build) and on 0.2 (`grant-probe` declaring those two hooks), "
            "against no plugin; CPU per request in µs, within each "
            "repetition (0 B bodies). 0.2 checks the plugin's grants at load; on the request path "
            "it adds only the grant filter of the headers the plugin reads.\n\n"
            + table(("comparison", "CPU µs per request, or ratio"), rows))


def section_plugin_kinds(runs):
    c, f = "gatehouse-set-header-component@0", "gatehouse-set-header-filter@0"
    if not (runs.has(c) and runs.has(f)):
        return ""
    rows = two_against_none(runs, c, f, ("component", "filter"))
    return ("## A component and a Proxy-Wasm filter doing the same\n\nOne request header set, "
            "by the standard `headers` component and by the Proxy-Wasm filter `filter-headers` "
            "(the Rust proxy-wasm SDK) with the same grant, against no plugin; CPU per request "
            "in µs, within each repetition (0 B bodies). The filter is called three times per "
            "request in its worker's VM (context creation and request headers; response "
            "headers, which every SDK-built filter exports; the context's end), the component "
            "once (its `on-request`).\n\n"
            + table(("comparison", "CPU µs per request, or ratio"), rows))


def section_steering(runs):
    g0 = "gatehouse@0"
    rows = []
    for key, what in (("gatehouse-canary@0", "canary (node steering)"),
                      ("gatehouse-rate-limit@0", "rate-limit (counters)")):
        if not runs.has(key):
            continue
        rows += [
            (f"{what} − no plugin (CPU µs per request)",
             cell(runs.paired(key, g0, "proxy_cpu_us", subtract), 2, True)),
            (f"{what} / no plugin (CPU)", cell(runs.paired(key, g0, "proxy_cpu_us", divide), 3)),
            (f"{what} / no plugin (throughput)", cell(runs.paired(key, g0, "rps", divide), 3)),
        ]
    if not rows:
        return ""
    return ("## Plugins that steer and count\n\nThe same API without plugins, with `canary` "
            "steering every request to the nodes tagged `canary` (one `on-request` call and the "
            "tag's own schedule), and with `rate-limit` counting every request in the gateway's "
            "counters (one `on-request` call; its default, no headers on the responses it lets "
            "through); 0 B bodies, within each repetition.\n\n"
            + table(("comparison", "median (min–max)"), rows))


def section_request_bodies(runs):
    rows = []
    for label, size in (("1k", "1 KiB"), ("16k", "16 KiB")):
        bare, post, json_ = (f"bare-pingora-post-{label}@0", f"gatehouse-post-{label}@0",
                             f"gatehouse-json-{label}@0")
        if not (runs.has(post) and runs.has(json_)):
            continue
        rows += [
            (f"{size}: Gatehouse / bare Pingora, no plugin (CPU)",
             cell(runs.paired(post, bare, "proxy_cpu_us", divide), 2)),
            (f"{size}: json-validator − no plugin (CPU µs per request)",
             cell(runs.paired(json_, post, "proxy_cpu_us", subtract), 2, True)),
            (f"{size}: json-validator / no plugin (throughput)",
             cell(runs.paired(json_, post, "rps", divide), 3)),
        ]
    if not rows:
        return ""
    rows.append(("GET, 0 B: Gatehouse / bare Pingora (CPU), for comparison",
                 cell(runs.paired("gatehouse@0", "bare-pingora@0", "proxy_cpu_us", divide), 2)))
    return ("## Request bodies\n\nPOSTs of a JSON document (`wrk -c50`, 0 B answers): through "
            "an API without plugins, whose body streams to the node, and through one whose "
            "`json-validator` reads it whole and checks it against a small schema. An API "
            "without body plugins should cost against bare Pingora what a GET does.\n\n"
            + table(("comparison", "median (min–max)"), rows))


def section_plugins(data, runs):
    g1, g3, g0 = "gatehouse-1-plugin@0", "gatehouse-3-plugins@0", "gatehouse@0"
    if not (runs.has(g1) or runs.has(g3)):
        return ""
    micro = data.get("micro") or {}

    def crit(name):
        m = micro.get(f"plugin_call/{name}/warm")
        return duration(m["ns"]) if m else "—"

    both = runs.paired(g3, g1, "proxy_cpu_us", subtract)
    half = tuple(x / 2 for x in both) if both else None
    rows = [
        ("host-rewrite", cell(runs.paired(g1, g0, "proxy_cpu_us", subtract), 2), crit("host-rewrite")),
        ("headers + request-id (two plugins)", cell(both, 2),
         f"{crit('headers')} + {crit('request-id')}"),
        ("  average of those two, per plugin", cell(half, 2), ""),
        ("all three", cell(runs.paired(g3, g0, "proxy_cpu_us", subtract), 2), ""),
    ]
    return ("## Per-plugin cost\n\nCPU per request with the plugins minus without, within each "
            "repetition, in µs (0 B bodies). It includes everything a plugin costs the gateway: "
            "taking a warm instance, moving the headers in and out, the guest code, and the "
            "`on-response` hook where the plugin has one (headers, request-id). It carries the "
            "run's noise (the spread of CPU per request between repetitions of one variant, a few "
            "µs here); the criterion column, one `on-request` call alone, is precise.\n\n"
            + table(("plugin", "CPU µs per request (load test)", "criterion: one on-request call"), rows))


def section_startup(data):
    rows = []
    for apis, label in (("1", "startup to first proxied 200, 1 API"),
                        ("10000", "startup to first proxied 200, 10,000 APIs")):
        runs = data["startup"].get(apis)
        if runs:
            rows.append((label, cell(spread(r["seconds"] * 1000 for r in runs)) + " ms",
                         cell(spread(r["rss_mib"] for r in runs), 1)))
    reload = data.get("reload")
    if reload:
        rows.append(("`POST /reload` of a changed file, 10,000 APIs",
                     cell(spread(r["seconds"] * 1000 for r in reload["reloads"])) + " ms",
                     f"{reload['rss_mib']:.1f} (after {len(reload['reloads'])} reloads)"))
    if not rows:
        return "## Startup and reload\n\nNot run."
    return ("## Startup and reload\n\nStartup: from spawning `gatehouse run` to the first 200 "
            "through it (polled every 1 ms), 3 times each. Reload: the admin API's `POST /reload` "
            "after the file changed (an upstream's description), until it answers: validated, built "
            "and swapped in.\n\n" + table(("what", "median (min–max)", "peak RSS MiB"), rows))


def section_micro(data):
    micro = data.get("micro") or {}
    if not micro:
        return "## Micro-benchmarks (criterion)\n\nNot run."
    rows = [(f"`{i}`", desc, duration(micro[i]["ns"]),
             f"{duration(micro[i]['lo'])} – {duration(micro[i]['hi'])}")
            for i, desc in MICRO_BENCHES.items() if i in micro]

    def ratio(a, b, label):
        if a in micro and b in micro:
            return f"- {label}: {micro[a]['ns'] / micro[b]['ns']:.2f}×"
        return None

    ratios = [r for r in (
        ratio("route_lookup/10000", "route_lookup/10", "route lookup, 10,000 APIs / 10 APIs"),
        ratio("select_pick/200", "select_pick/2", "node pick, 200 nodes / 2 nodes"),
        ratio("plugin_call/host-rewrite/fresh", "plugin_call/host-rewrite/warm",
              "plugin call, fresh instance / warm instance"),
    ) if r]
    return ("## Micro-benchmarks (criterion)\n\nMedian time of one operation and its 95 % "
            "confidence interval, pinned to the proxy core.\n\n"
            + table(("benchmark", "what", "median", "95 % CI"), rows) + "\n\n" + "\n".join(ratios))


def side_by_side(profiles, runs):
    """CPU per request by area, bare Pingora next to Gatehouse: each profile's shares times the
    median CPU per request of its variant at 0 B (the profile's own run is not timed)."""
    pair = [("bare-pingora", profiles.get("bare-pingora")), ("gatehouse", profiles.get("gatehouse"))]
    cpu = {name: runs.field(f"{name}@0", "proxy_cpu_us") for name, _ in pair}
    if any(p is None or cpu[name] is None for name, p in pair):
        return ""
    per_area = {}
    for name, p in pair:
        for pct, a in p["areas"]:
            per_area.setdefault(a, {})[name] = pct / 100 * cpu[name][0]
    rows = sorted(per_area.items(), key=lambda kv: -kv[1].get("gatehouse", 0))
    total = {name: cpu[name][0] for name, _ in pair}
    body = [(a, f"{v.get('bare-pingora', 0):.2f}", f"{v.get('gatehouse', 0):.2f}",
             f"{v.get('gatehouse', 0) - v.get('bare-pingora', 0):+.2f}") for a, v in rows]
    body.append(("**all**", f"{total['bare-pingora']:.2f}", f"{total['gatehouse']:.2f}",
                 f"{total['gatehouse'] - total['bare-pingora']:+.2f}"))
    return ("### Side by side: CPU per request by area, µs\n\nEach profile's shares times the "
            "median CPU per request of its variant at 0 B in the runs above: where Gatehouse's "
            "extra microseconds over bare Pingora go. The kernel's share grows when the proxy is "
            "slower too (the peers it wakes are more often asleep).\n\n"
            + table(("area", "bare Pingora", "Gatehouse", "difference"), body))


def section_profiles(data, runs):
    profiles = data.get("profiles") or {}
    if not profiles:
        return ""
    out = ["## Where Gatehouse spends its CPU\n\n`perf record -e cpu-clock -F 1999` (a software clock: "
           "this VM has no hardware counters) on the gateway process during a 5 s `wrk -t1 -c50` run, "
           "0 B bodies; shares of the process's samples. Plugin guest code, compiled by wasmtime at "
           "load time, has no symbols: it is the area `JIT code (plugins)`, left out of the function "
           "list. In a VM, kernel time spent with "
           "interrupts off is charged to the function that turns them back on "
           "(`_raw_spin_unlock_irqrestore`): read it as the kernel's network and wake-up path."]
    for name, p in profiles.items():
        areas = table(("area", "share"), [(a, f"{pct:.1f} %") for pct, a in p["areas"] if pct >= 0.1])
        user = table(("share", "function [object]"),
                     [(f"{pct:.1f} %", f"`{fn}`") for pct, fn in p["user"]])
        kernel = ", ".join(f"`{fn}` {pct:.1f} %" for pct, fn in p["kernel"])
        out.append(f"### {LABELS.get(name, name)}\n\n{areas}\n\nTop kernel functions: {kernel}.\n\n"
                   f"Top user-space functions:\n\n{user}")
    sided = side_by_side(profiles, runs)
    if sided:
        out.insert(1, sided)
    return "\n\n".join(out)


def section_allocations(data):
    counted = data.get("allocations") or {}
    if not counted:
        return ""
    bare = counted.get("bare-pingora")
    rows = []
    for name, c in counted.items():
        more = (f"{c['allocations'] - bare['allocations']:+.1f} / "
                f"{c['reallocations'] - bare['reallocations']:+.1f}"
                if bare and name != "bare-pingora" else "")
        rows.append((LABELS.get(name, name), f"{c['allocations']:.1f}",
                     f"{c['reallocations']:.1f}", more, f"{c['requests']:,}"))
    return ("## Heap allocations per request\n\nEvery call of the allocator's entry points "
            "(mimalloc's `mi_malloc_aligned` and `mi_zalloc_aligned`: allocations; "
            "`mi_realloc_aligned`: reallocations), counted with uprobes on the proxy's worker thread during a 5 s "
            "`wrk -t1 -c1` run (one request at a time) and divided by the requests answered, 0 B bodies. Each hit traps, so these "
            "runs are slow: the counts are exact, their speed means nothing.\n\n"
            + table(("variant", "allocations", "reallocations",
                     "more than bare Pingora (alloc. / realloc.)", "requests counted"), rows))


def section_noise(data):
    runs = data["runs"]
    if not runs:
        return ""
    core0 = spread(r["core0_foreign_pct"] for r in runs)
    core1 = spread(r["core1_foreign_pct"] for r in runs)
    steal = spread(r["steal_pct"] for r in runs)
    noisy = [f"{r['variant']} #{r['rep'] + 1} (core 0: {r['core0_foreign_pct']:.0f} %, "
             f"core 1: {r['core1_foreign_pct']:.0f} %)"
             for r in runs if max(r["core0_foreign_pct"], r["core1_foreign_pct"]) > 5]
    text = ("## Noise\n\nCPU used during the wrk runs by anything but the processes of the test "
            "(other work on the machine, interrupts), as a share of one core: on the proxy core "
            f"median {core0[0]:.1f} %, max {core0[2]:.1f} %; on the load core (beyond the backend, "
            f"the load generator and the driver) median {core1[0]:.1f} %, max {core1[2]:.1f} %. "
            f"Hypervisor steal on the proxy core: median {steal[0]:.1f} %, max {steal[2]:.1f} %. "
            "Load on the load core slows the load generator, so the proxy gets fewer requests per "
            "wake-up and spends more CPU on each: it shows in CPU per request too.")
    if noisy:
        text += "\n\nRuns above 5 %: " + ", ".join(noisy) + "."
    return text


def section_flags(data, runs):
    """Automatic remarks on figures that look wrong for a proxy."""
    flags = []
    nodes = {v["key"]: v["nodes"] for v in data["variants"]}
    for key in ordered_keys(data):
        conns = runs.field(key, "backend_conns_per_1k")
        if conns and conns[0] > 10:
            label, body = variant_label(key)
            text = (f"- {label} ({body}): the backend accepted {conns[0]:,.0f} connections per "
                    "1,000 requests: upstream connections are not reused, and every request pays a "
                    "TCP connect, accept and close on both sides.")
            if nodes.get(key, 0) > PINGORA_POOL:
                text += (f" With {nodes[key]} nodes this matches Pingora's upstream keepalive pool: "
                         "one LRU of `upstream_keepalive_pool_size` × threads idle connections "
                         f"({PINGORA_POOL} × 1 here), which round robin over more nodes than that "
                         "empties before each node comes round again.")
            flags.append(text)
    micro = data.get("micro") or {}
    warm, fresh = micro.get("plugin_call/host-rewrite/warm"), micro.get("plugin_call/host-rewrite/fresh")
    if warm and fresh:
        flags.append(f"- A plugin call on a fresh instance costs {fresh['ns'] / warm['ns']:.0f}× a call "
                     f"on a warm one ({duration(fresh['ns'])} vs {duration(warm['ns'])}): "
                     "`reuse_instances: true` is the right default.")
    return "## Flags\n\n" + "\n".join(flags) if flags else ""


def section_failures(data):
    if not data["failures"]:
        return ""
    return "## What did not work\n\n" + "\n".join(f"- {f}" for f in data["failures"])


def render(data):
    runs = Runs(data["runs"])
    sections = [
        f"# Gatehouse benchmark results, {data['date']}\n\nProduced by `bench/run.sh` "
        "(how to read every figure: [bench/README.md](../README.md)).",
        section_peers(data, runs),
        section_engine(data, runs),
        section_ratios(data, runs),
        section_machine(data),
        section_flags(data, runs),
        section_throughput(data, runs),
        section_latency(data, runs),
        section_tls(data, runs),
        section_plugins(data, runs),
        section_contract(runs),
        section_plugin_kinds(runs),
        section_steering(runs),
        section_request_bodies(runs),
        section_startup(data),
        section_micro(data),
        section_profiles(data, runs),
        section_allocations(data),
        section_noise(data),
        section_failures(data),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"
