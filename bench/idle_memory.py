#!/usr/bin/env python3
"""Memory of an idle gateway and of idle kept-alive client connections, Gatehouse beside nginx.

Gatehouse serves the shipped configuration (config/gatehouse.yaml, on free ports; its `/healthz`
API answers by itself, so no backend is needed); nginx serves a fixed answer with the same number
of worker processes as Gatehouse has threads. For each: resident memory (RSS, the process and
its children) idle, with N connections each kept alive after one request, and after they
closed. Gatehouse runs as it ships, with MIMALLOC_ALLOW_THP=1 (huge pages), with
MIMALLOC_PURGE_DELAY=0 (freed memory given back at once), and with its client
connections' read buffer (`instance.http.read_buffer`) at 64 KiB, 4 KiB and none.

    python3 bench/idle_memory.py [--connections 500] [--binary target/release/gatehouse]
"""

import argparse
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from harness import procs  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    """RSS of `pid` and its children, in KiB."""
    total = 0
    for p in [pid, *procs.children(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                total += int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        except OSError:
            pass
    return total


def wait_port(port, deadline=30):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def settle():
    time.sleep(3)


# A worker thread gives the memory of closed connections back after 2 s without connections
# opening or closing, checked every 2 s: the "after" figure is read past the worst case.
AFTER_CLOSE = 6


def measure(name, popen, port, path, connections):
    wait_port(port)
    settle()
    idle = rss_kib(popen.pid)
    socks = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        if not data.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"{name}: {data[:80]!r}")
        socks.append(s)
    settle()
    held = rss_kib(popen.pid)
    for s in socks:
        s.close()
    time.sleep(AFTER_CLOSE)
    after = rss_kib(popen.pid)
    return {
        "name": name,
        "idle_mb": idle / 1024,
        "held_mb": held / 1024,
        "after_mb": after / 1024,
        "per_conn_kb": (held - idle) / connections,
    }


def gatehouse(binary, env, connections, work, read_buffer=None):
    listen, metrics = free_port(), free_port()
    text = (REPO / "config/gatehouse.yaml").read_text()
    if read_buffer is not None:
        text = text.replace("  threads: 2\n", f"  threads: 2\n  http:\n    read_buffer: {read_buffer}\n")
    text = text.replace('listen: ["127.0.0.1:8080"]', f'listen: ["127.0.0.1:{listen}"]')
    text = text.replace('metrics: "127.0.0.1:9091"', f'metrics: "127.0.0.1:{metrics}"')
    config = work / "gatehouse.yaml"
    config.write_text(text)
    popen = subprocess.Popen([str(binary), "run", "-c", str(config)], env={**os.environ, **env},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        settings = [f"{k}={v}" for k, v in env.items()]
        if read_buffer is not None:
            settings.append(f"read_buffer: {read_buffer}")
        name = "gatehouse" + (f" ({', '.join(settings)})" if settings else "")
        return measure(name, popen, listen, "/healthz", connections)
    finally:
        popen.send_signal(signal.SIGTERM)
        popen.wait(timeout=30)


def nginx(connections, work):
    port = free_port()
    prefix = work / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections {connections + 64}; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location /healthz {{ return 200 "ok\\n"; }}
  }}
}}
""")
    popen = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(prefix), "-c", str(conf)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return measure("nginx (2 workers)", popen, port, "/healthz", connections)
    finally:
        popen.send_signal(signal.SIGQUIT)
        popen.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=500)
    ap.add_argument("--binary", default=str(REPO / "target/release/gatehouse"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        rows.append(gatehouse(args.binary, {}, args.connections, work))
        rows.append(gatehouse(args.binary, {"MIMALLOC_ALLOW_THP": "1"}, args.connections, work))
        rows.append(gatehouse(args.binary, {"MIMALLOC_PURGE_DELAY": "0"}, args.connections, work))
        for size in ("64KiB", "4KiB", "0"):
            rows.append(gatehouse(args.binary, {}, args.connections, work, size))
        rows.append(nginx(args.connections, work))
    print(f"| process | idle RSS | with {args.connections} idle connections | after they closed | per connection |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['idle_mb']:.1f} MB | {r['held_mb']:.1f} MB | {r['after_mb']:.1f} MB | "
              f"{r['per_conn_kb']:.1f} KB |")


if __name__ == "__main__":
    main()
