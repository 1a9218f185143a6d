#!/usr/bin/env python3
"""Upstream health under load, one command (after the release builds; bench/health.sh does both).

1. Soak: four nodes, each its own `bench-backend` process, behind Gatehouse with active and
   passive checks; a fixed-rate load runs for the whole soak while one node after another is
   killed and, a few seconds later, restarted. Reports the requests that failed, and for each flap
   the time until the node was seen UNHEALTHY on the admin API (detection) and the time from its
   restart until it was seen HEALTHY again (recovery).
2. Probe cost: Gatehouse idle with one upstream of 200 nodes (127.0.0.1 ... 127.0.0.200, one
   backend on 0.0.0.0), measured with active checks every second and with checks off: the CPU the
   probes cost, per second and per probe.

Writes bench/results/HEALTH-<date>.md. Standard library only.
"""

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness.procs import Proc, http_get, port_free, wait_ok  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
TOKEN = "health-bench-token-0123456789"
BACKENDS = [28200, 28201, 28202, 28203]
PROXY, ADMIN, METRICS = 28280, 28290, 28291


def gatehouse_config(nodes, health, upstream_extra=""):
    node_lines = "".join(f"      - {{ host: {h}, port: {p}, weight: 1 }}\n" for h, p in nodes)
    return f"""instance:
  id: ins-health-bench
  type: dedicated
  vpc: vpc-bench
  listen: ["127.0.0.1:{PROXY}"]
  metrics: "127.0.0.1:{METRICS}"
  admin: "127.0.0.1:{ADMIN}"
  admin_token: {TOKEN}
  threads: 1
vpcs:
  - id: vpc-bench
    cidrs: ["127.0.0.0/8"]
upstreams:
  - name: soak
    vpc: vpc-bench
    protocol: http
    retries: 3
{upstream_extra}    health_check: {health}
    nodes:
{node_lines}services:
  - name: bench
    apis:
      - name: get
        path: /soak/{{id}}
        methods: [GET]
        backend: {{ upstream: soak, timeout: 2s }}
"""


def backend(port, workdir, bind="127.0.0.1"):
    return Proc(f"backend-{port}", [str(RELEASE / "bench-backend"), "--listen", f"{bind}:{port}"],
                1, workdir / f"backend-{port}.log", stop_signal=signal.SIGKILL)


def gateway(config, workdir, name):
    path = workdir / f"{name}.yaml"
    path.write_text(config)
    proc = Proc(name, [str(RELEASE / "gatehouse"), "run", "-c", str(path)], 0,
                workdir / f"{name}.log")
    wait_ok(METRICS, "/metrics", proc)
    return proc


def node_states():
    status, body = http_get(ADMIN, "/upstreams/soak/health",
                            headers={"authorization": f"Bearer {TOKEN}"}, timeout=1.0)
    if status != 200:
        raise RuntimeError(f"health route answered {status}: {body[:200]!r}")
    return {n["node"]: n["state"] for n in json.loads(body)["nodes"]}


def wait_state(node, state, timeout=30.0):
    """Seconds until the admin API shows `node` in `state` (polled every 10 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if node_states().get(node) == state:
            return time.monotonic() - started
        time.sleep(0.01)
    raise RuntimeError(f"{node} never became {state}")


def metric(name):
    _, body = http_get(METRICS, "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def soak(args, workdir):
    nodes = [("127.0.0.1", p) for p in BACKENDS]
    backends = {p: backend(p, workdir) for p in BACKENDS}
    for p in BACKENDS:
        wait_ok(p, "/", backends[p])
    interval = f"{args.interval_ms}ms"
    gw = gateway(gatehouse_config(
        nodes,
        f"{{ active: true, interval: {interval}, timeout: 500ms, healthy_threshold: 2 }}",
        "    unhealthy_timeout: 0s\n"), workdir, "gatehouse-soak")
    for h, p in nodes:
        wait_state(f"{h}:{p}", "HEALTHY")
    result = {}

    def load():
        argv = ["taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json",
                "--worker-threads", "1", "-c", "20", "-z", f"{args.seconds}s",
                "-q", str(args.rate), f"http://127.0.0.1:{PROXY}/soak/1"]
        result["oha"] = json.loads(subprocess.run(argv, capture_output=True, text=True,
                                                  check=True).stdout)

    loader = threading.Thread(target=load)
    cpu_before = gw.cpu_seconds()
    started = time.monotonic()
    loader.start()
    flaps = []
    i = 0
    time.sleep(2)
    while time.monotonic() - started < args.seconds - args.down_s - 8:
        port = BACKENDS[i % len(BACKENDS)]
        label = f"127.0.0.1:{port}"
        backends[port].stop()
        detect = wait_state(label, "UNHEALTHY")
        time.sleep(max(0.0, args.down_s - detect))
        backends[port] = backend(port, workdir)
        wait_ok(port, "/", backends[port])
        recover = wait_state(label, "HEALTHY")
        flaps.append({"node": label, "detect_s": detect, "recover_s": recover})
        i += 1
        time.sleep(1)
    loader.join()
    cpu = gw.cpu_seconds() - cpu_before
    data = result["oha"]
    statuses = data.get("statusCodeDistribution") or {}
    errors = data.get("errorDistribution") or {}
    total = sum(statuses.values()) + sum(errors.values())
    out = {
        "seconds": args.seconds, "rate": args.rate, "interval_ms": args.interval_ms,
        "requests": total,
        "non_200": sum(n for code, n in statuses.items() if code != "200"),
        # requests still in flight when the load generator's time ran out are not failures
        "errors": sum(n for e, n in errors.items() if "deadline" not in e),
        "cut_at_end": sum(n for e, n in errors.items() if "deadline" in e),
        "statuses": statuses,
        "error_kinds": errors,
        "flaps": flaps,
        "retries": metric("gatehouse_upstream_retries_total"),
        "panic_requests": metric("gatehouse_upstream_panic_requests_total"),
        "gatehouse_cpu_s": cpu,
    }
    gw.stop()
    for b in backends.values():
        b.stop()
    return out


def probe_cost(args, workdir):
    back = backend(BACKENDS[0], workdir, bind="0.0.0.0")
    wait_ok(BACKENDS[0], "/", back)
    nodes = [(f"127.0.0.{i}", BACKENDS[0]) for i in range(1, 201)]
    out = {}
    for name, health in [("checks_off", "{ passive: false }"),
                         ("active_1s", "{ active: true, interval: 1s, timeout: 500ms }")]:
        gw = gateway(gatehouse_config(nodes, health), workdir, f"gatehouse-{name}")
        time.sleep(3)  # first probes spread over one interval
        probes0 = metric("gatehouse_upstream_probes_total")
        cpu0, t0 = gw.cpu_seconds(), time.monotonic()
        time.sleep(args.probe_seconds)
        cpu, elapsed = gw.cpu_seconds() - cpu0, time.monotonic() - t0
        probes = metric("gatehouse_upstream_probes_total") - probes0
        out[name] = {"cpu_s": cpu, "seconds": elapsed, "probes": probes,
                     "core_share_pct": 100 * cpu / elapsed}
        gw.stop()
    back.stop()
    extra = out["active_1s"]["cpu_s"] - out["checks_off"]["cpu_s"]
    probes = out["active_1s"]["probes"]
    out["probe_cpu_us"] = 1e6 * extra / probes if probes else None
    out["probe_core_share_pct"] = 100 * extra / out["active_1s"]["seconds"]
    return out


def report(s, p):
    lines = [f"# Upstream health — {datetime.date.today()}", ""]
    if s:
        detect = [f["detect_s"] * 1000 for f in s["flaps"]]
        recover = [f["recover_s"] * 1000 for f in s["flaps"]]
        lines += [
            "## Soak: nodes killed and restarted under load", "",
            f"4 nodes (`bench-backend` each), active checks every {s['interval_ms']} ms "
            f"(healthy_threshold 2, passive defaults), `oha -q {s['rate']}` for {s['seconds']} s, "
            f"{len(s['flaps'])} flaps (a node killed, restarted after a few seconds).", "",
            "| figure | value |", "|---|---|",
            f"| requests | {s['requests']:,} |",
            f"| failed (non-200 or transport error) | {s['non_200'] + s['errors']} |",
            f"| in flight when the load stopped (not counted) | {s['cut_at_end']} |",
            f"| retried on another node | {s['retries']:.0f} |",
            f"| sent in panic mode | {s['panic_requests']:.0f} |",
            f"| detection, kill → UNHEALTHY, ms (median / max) | "
            f"{statistics.median(detect):.0f} / {max(detect):.0f} |" if detect else "| detection | — |",
            f"| recovery, restart → HEALTHY, ms (median / max) | "
            f"{statistics.median(recover):.0f} / {max(recover):.0f} |" if recover else "| recovery | — |",
            f"| Gatehouse CPU during the soak | {s['gatehouse_cpu_s']:.1f} s |", "",
        ]
    if p:
        lines += [
            "## Cost of active checks: 200 nodes probed every second, no traffic", "",
            "| run | CPU s | seconds | probes | share of one core |", "|---|---|---|---|---|",
        ]
        for name in ("checks_off", "active_1s"):
            r = p[name]
            lines.append(f"| {name} | {r['cpu_s']:.2f} | {r['seconds']:.1f} | {r['probes']:.0f} | "
                         f"{r['core_share_pct']:.2f} % |")
        per = f"{p['probe_cpu_us']:.0f} µs" if p["probe_cpu_us"] else "—"
        lines += ["", f"Probing costs {p['probe_core_share_pct']:.2f} % of one core, {per} of CPU "
                  "per probe (a fresh connection, one request, one response).", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=60, help="soak length (default 60)")
    ap.add_argument("--rate", type=int, default=2000, help="soak load, req/s (default 2000)")
    ap.add_argument("--interval-ms", type=int, default=500, help="probe interval of the soak")
    ap.add_argument("--down-s", type=float, default=3.0, help="how long a killed node stays down")
    ap.add_argument("--probe-seconds", type=int, default=20, help="length of each probe-cost run")
    ap.add_argument("--skip-soak", action="store_true")
    ap.add_argument("--skip-probe-cost", action="store_true")
    args = ap.parse_args()
    for port in [*BACKENDS, PROXY, ADMIN, METRICS]:
        if not port_free(port):
            sys.exit(f"port {port} is taken")
    with tempfile.TemporaryDirectory(prefix="gatehouse-health-") as tmp:
        workdir = Path(tmp)
        s = None if args.skip_soak else soak(args, workdir)
        p = None if args.skip_probe_cost else probe_cost(args, workdir)
    text = report(s, p)
    print(text)
    results = ROOT / "bench" / "results"
    name = f"HEALTH-{datetime.date.today()}"
    (results / f"{name}.md").write_text(text)
    (results / f"{name}.json").write_text(json.dumps({"soak": s, "probe_cost": p}, indent=2))
    print(f"wrote {results / name}.md", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("RUST_LOG", "warn")
    main()
