#!/usr/bin/env python3
"""Fleet propagation, one command (after the release build; `bench/run.sh fleet` does both).

One etcd (a single member, data on tmpfs) and three Gatehouse instances A, B and C following it.
Each round changes one API's fixed response through A's admin API and polls B and C (over
kept-alive connections, as fast as they answer) until they serve the new body. Reports, over all
rounds, the time from sending the write to A until each of B and C serves it (p50, p99, max),
and the write's own latency on A (validate, build, etcd transaction).

Writes bench/results/FLEET-<date>.md (and .json). Standard library only. Ports 28400-28419.
"""

import argparse
import datetime
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness.procs import Proc, port_free, wait_ok  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "fleet-bench-token-0123456789"
ETCD_CLIENT, ETCD_PEER = 28400, 28401
INSTANCES = {"a": (28410, 28411, 28412), "b": (28413, 28414, 28415), "c": (28416, 28417, 28418)}
PREFIX = "/gatehouse-bench"

SHARED = """vpcs:
  - id: vpc-bench
    cidrs: ["127.0.0.0/8"]
services:
  - name: bench
    apis:
      - name: probe
        path: /probe
        backend: { response: { status: 200, body: "v0" } }
"""


def shared_config(extra_apis):
    """The shared configuration: the probed API, and `extra_apis` more in services of 100."""
    text = SHARED
    for s in range((extra_apis + 99) // 100):
        text += f"  - name: filler{s}\n    apis:\n"
        for a in range(s * 100, min(extra_apis, (s + 1) * 100)):
            text += (f"      - {{ name: a{a}, path: /filler/{a}, "
                     f"backend: {{ response: {{ status: 200, body: x }} }} }}\n")
    return text


def local_config(name, listen, metrics, admin):
    return f"""instance:
  id: gw-{name}
  type: dedicated
  vpc: vpc-bench
  listen: ["127.0.0.1:{listen}"]
  metrics: "127.0.0.1:{metrics}"
  admin: "127.0.0.1:{admin}"
  admin_token: {TOKEN}
  threads: 1
  etcd:
    endpoints: ["http://127.0.0.1:{ETCD_CLIENT}"]
    prefix: {PREFIX}
"""


def percentile(values, p):
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def start_etcd(workdir):
    data = Path(tempfile.mkdtemp(prefix="gatehouse-bench-etcd-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    argv = ["etcd", "--name", "bench", "--data-dir", str(data),
            "--listen-client-urls", f"http://127.0.0.1:{ETCD_CLIENT}",
            "--advertise-client-urls", f"http://127.0.0.1:{ETCD_CLIENT}",
            "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PEER}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PEER}",
            "--initial-cluster", f"bench=http://127.0.0.1:{ETCD_PEER}"]
    proc = Proc("etcd", argv, 1, workdir / "etcd.log")
    wait_ok(ETCD_CLIENT, "/health", proc, timeout=20)
    return proc, data


def admin_put(conn, path, body):
    data = json.dumps(body)
    conn.request("PUT", path, body=data, headers={
        "authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
    response = conn.getresponse()
    text = response.read()
    if response.status != 200:
        raise RuntimeError(f"PUT {path}: {response.status} {text[:300]!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    parser.add_argument("--timeout", type=float, default=10.0, help="longest a change may take to show, seconds")
    parser.add_argument("--apis", type=int, default=0,
                        help="more APIs in the shared configuration besides the probed one (e.g. 10000)")
    args = parser.parse_args()
    binary = Path(args.bin_dir) / "gatehouse"
    ports = [ETCD_CLIENT, ETCD_PEER] + [p for t in INSTANCES.values() for p in t]
    taken = [p for p in ports if not port_free(p)]
    if taken:
        sys.exit(f"ports in use: {taken}")
    workdir = Path(tempfile.mkdtemp(prefix="gatehouse-fleet-bench-"))
    procs = []
    data = None
    try:
        etcd, data = start_etcd(workdir)
        procs.append(etcd)
        (workdir / "shared.yaml").write_text(shared_config(args.apis))
        first = local_config("a", *INSTANCES["a"])
        (workdir / "a").mkdir()
        (workdir / "a" / "gatehouse.yaml").write_text(first)
        subprocess.run([str(binary), "config", "push", "-c", str(workdir / "shared.yaml"),
                        "--local", str(workdir / "a" / "gatehouse.yaml")],
                       check=True, stdout=subprocess.DEVNULL)
        for name, (listen, metrics, admin) in INSTANCES.items():
            folder = workdir / name
            folder.mkdir(exist_ok=True)
            (folder / "gatehouse.yaml").write_text(local_config(name, listen, metrics, admin))
            # instances share core 0; the driver, etcd and the polling run on core 1
            proc = Proc(f"gw-{name}", [str(binary), "run", "-c", str(folder / "gatehouse.yaml")], 0,
                        workdir / f"gw-{name}.log")
            procs.append(proc)
            wait_ok(listen, "/probe", proc)
        a_admin = http.client.HTTPConnection("127.0.0.1", INSTANCES["a"][2], timeout=10)
        watchers = {n: http.client.HTTPConnection("127.0.0.1", INSTANCES[n][0], timeout=5) for n in ("b", "c")}
        results = {"write_ms": [], "b_ms": [], "c_ms": []}
        for i in range(1, args.changes + 1):
            body = f"v{i}"
            started = time.monotonic()
            admin_put(a_admin, "/services/bench/apis/probe", {
                "name": "probe", "path": "/probe",
                "backend": {"response": {"status": 200, "body": body}}})
            results["write_ms"].append((time.monotonic() - started) * 1000)
            pending = set(watchers)
            while pending:
                for name in list(pending):
                    conn = watchers[name]
                    conn.request("GET", "/probe")
                    response = conn.getresponse()
                    if response.read().decode() == body:
                        results[f"{name}_ms"].append((time.monotonic() - started) * 1000)
                        pending.discard(name)
                if time.monotonic() - started > args.timeout:
                    raise RuntimeError(f"change {i} not served by {sorted(pending)} within {args.timeout}s")
            time.sleep(0.02)
        report(results, args, binary)
    finally:
        for proc in reversed(procs):
            proc.stop()
        if data:
            shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def report(results, args, binary):
    date = datetime.date.today().isoformat()
    summary = {}
    for key, values in results.items():
        summary[key] = {"p50": statistics.median(values), "p99": percentile(values, 99),
                        "max": max(values), "n": len(values)}
    both = [max(b, c) for b, c in zip(results["b_ms"], results["c_ms"])]
    summary["fleet_ms"] = {"p50": statistics.median(both), "p99": percentile(both, 99),
                           "max": max(both), "n": len(both)}
    release = "release" in str(binary)
    lines = [
        f"# Fleet propagation, {date}",
        "",
        f"Shared configuration of {args.apis + 1} API(s). "
        f"One etcd member (tmpfs), three Gatehouse instances (`threads: 1`, all on core 0; etcd, "
        f"the driver and the polling on core 1). {args.changes} changes of one API's fixed "
        f"response through A's admin API; B and C polled over kept-alive connections until they "
        f"serve it. Times from sending the write to A. Binary: `{binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary}`"
        + ("" if release else " (not the release build: figures are not comparable)") + ".",
        "",
        "| | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|",
    ]
    names = {"write_ms": "write acknowledged by A", "b_ms": "served by B", "c_ms": "served by C",
             "fleet_ms": "served by B and C"}
    for key in ("write_ms", "b_ms", "c_ms", "fleet_ms"):
        s = summary[key]
        lines.append(f"| {names[key]} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
    lines += ["", f"Target: every change served by the whole fleet in under 1 s: "
              f"{'met' if summary['fleet_ms']['max'] < 1000 else 'NOT met'} (max {summary['fleet_ms']['max']:.0f} ms)."]
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = f"FLEET-{date}" + (f"-{args.apis + 1}-apis" if args.apis else "")
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps({"summary": summary, "raw": results}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
