#!/usr/bin/env python3
"""Memory of request bodies that plugins read whole (after the release build of gatehouse).

Gatehouse runs one API whose `json-validator` reads request bodies whole (body_limit 1 MiB), in
front of a node that holds every request for a while before answering, so the bodies read are
all held at once. N clients POST a 1 MiB JSON document each, concurrently; the gateway's
resident memory is sampled before, at the peak while the N requests are in flight, and some
seconds after they all finished. Reports the growth per body at the peak (about 1 MiB expected:
the body is held once) and how much of it went back to the operating system afterwards.

Writes bench/results/BODIES-<date>.md. Standard library only.
"""

import argparse
import datetime
import http.client
import http.server
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness.procs import Proc, port_free, wait_ok  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
NODE, PROXY, METRICS = 28500, 28580, 28591
MIB = 1024 * 1024


def gatehouse_config():
    return f"""instance:
  id: ins-bodies-bench
  type: dedicated
  vpc: vpc-bench
  listen: ["127.0.0.1:{PROXY}"]
  metrics: "127.0.0.1:{METRICS}"
  threads: 2
  plugins: {{ max_body_limit: 1MiB }}
  http: {{ max_body_size: 2MiB }}
vpcs:
  - {{ id: vpc-bench, cidrs: ["127.0.0.0/8"] }}
upstreams:
  - {{ name: slow, vpc: vpc-bench, protocol: http, nodes: [{{ host: 127.0.0.1, port: {NODE} }}] }}
services:
  - name: bench
    apis:
      - name: upload
        path: /upload
        methods: [GET, POST]
        backend: {{ upstream: slow, timeout: 60s }}
        plugins:
          - {{ name: json-validator, body_limit: 1MiB, time_limit: 500ms }}
"""


def slow_node(hold_seconds):
    """A node that reads each request's body, waits, then answers 200 (one thread each)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.answer()

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            time.sleep(hold_seconds)
            self.answer()

        def answer(self):
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", NODE), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def document(size):
    """A JSON document of `size` bytes (a string member padded to length)."""
    head, tail = '{"pad":"', '"}'
    return (head + "x" * (size - len(head) - len(tail)) + tail).encode()


def rss_kib(pid):
    """Resident memory of `pid` now, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def post(body, results, i):
    try:
        c = http.client.HTTPConnection("127.0.0.1", PROXY, timeout=120)
        c.request("POST", "/upload", body=body, headers={"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        results[i] = r.status
    except OSError as e:
        results[i] = str(e)


def measure(proc, clients, body):
    """(before, peak, after) RSS in KiB of one round of `clients` concurrent uploads."""
    before = rss_kib(proc.pid)
    results = [None] * clients
    threads = [threading.Thread(target=post, args=(body, results, i)) for i in range(clients)]
    for t in threads:
        t.start()
    peak = before
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_kib(proc.pid))
        time.sleep(0.01)
    time.sleep(3)
    after = rss_kib(proc.pid)
    failed = [r for r in results if r != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} uploads failed: {failed[:5]}\n{LOG.read_text()[-3000:]}")
    return before, peak, after


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=64, help="concurrent 1 MiB uploads (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, one after another (default 3)")
    p.add_argument("--hold", type=float, default=3.0, help="seconds the node holds each request")
    p.add_argument("--bin-dir", type=Path, default=RELEASE)
    args = p.parse_args()
    for port in (NODE, PROXY, METRICS):
        if not port_free(port):
            sys.exit(f"port {port} is taken")
    node = slow_node(args.hold)
    body = document(MIB - 1024)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gatehouse-bodies-") as work:
        global LOG
        LOG = Path(work) / "gatehouse.log"
        config = Path(work) / "gatehouse.yaml"
        config.write_text(gatehouse_config())
        proc = Proc("gatehouse", [str(args.bin_dir / "gatehouse"), "run", "-c", str(config)],
                    "0,1", Path(work) / "gatehouse.log")
        try:
            wait_ok(PROXY, "/upload", proc)
            for r in range(args.rounds):
                before, peak, after = measure(proc, args.clients, body)
                rows.append({"round": r + 1, "before_kib": before, "peak_kib": peak,
                             "after_kib": after})
                print(f"round {r + 1}: before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
                      f"after {after / 1024:.1f} MiB", flush=True)
        finally:
            proc.stop()
            node.shutdown()
    n = args.clients
    lines = [
        f"# Memory of request bodies read by plugins, {datetime.date.today()}",
        "",
        f"Produced by `bench/bodies.py`: {n} concurrent POSTs of a {len(body) / MIB:.3f} MiB JSON "
        f"document to an API whose `json-validator` reads bodies whole, the node holding each "
        f"request {args.hold:g} s; Gatehouse's resident memory (VmRSS) before, at the peak, and 3 s "
        "after the round.",
        "",
        "| round | before MiB | peak MiB | growth per body MiB | after MiB | given back |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        growth = row["peak_kib"] - row["before_kib"]
        back = (row["peak_kib"] - row["after_kib"]) / growth if growth > 0 else 0.0
        lines.append(
            f"| {row['round']} | {row['before_kib'] / 1024:.1f} | {row['peak_kib'] / 1024:.1f} | "
            f"{growth / 1024 / n:.2f} | {row['after_kib'] / 1024:.1f} | {back:.0%} |"
        )
    out = ROOT / "bench" / "results" / f"BODIES-{datetime.date.today()}.md"
    out.write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps(
        {"clients": n, "body_bytes": len(body), "hold_s": args.hold, "rounds": rows}, indent=1))
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
