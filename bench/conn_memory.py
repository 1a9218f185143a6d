#!/usr/bin/env python3
"""Memory per idle connection, attributed: what each kept-alive connection holds in Gatehouse and
in bare Pingora (live heap, by allocation size), beside the resident memory it adds, with nginx's
resident memory for the same connections.

Three kinds of connection, each opened N times and left idle:
- `h1`: a client connection kept alive after one HTTP/1.1 request proxied to a backend;
- `h2`: a client connection over TLS (ALPN h2) kept open after one HTTP/2 request;
- `upstream`: a connection to the backend idle in the proxy's keep-alive pool (N requests held
  at once by a slow backend, then answered; their client connections closed).

The live heap is exact: uprobes (bpftrace) on the allocator's entry points (mimalloc's aligned
entry points, which every Rust allocation goes through, and `mi_free`) keep the size of every
block allocated during the phase and drop it when freed; what is left at the end, divided by N,
is what one idle connection holds. `--sites` adds where the largest of those blocks are
allocated (perf with DWARF call graphs on one connection). Needs root, bpftrace and perf (both
in Debian).

    python3 bench/conn_memory.py [--connections 300] [--sites]
"""

import argparse
import asyncio
import collections
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from harness import configs  # noqa: E402
from idle_memory import free_port, rss_kib, wait_port  # noqa: E402

RELEASE = REPO / "target" / "release"

LIVE_HEAP = """
uprobe:BIN:mi_malloc_aligned /pid == PID/ { @size[tid] = arg0; }
uretprobe:BIN:mi_malloc_aligned /pid == PID/ { @live[retval] = @size[tid]; }
uprobe:BIN:mi_zalloc_aligned /pid == PID/ { @size[tid] = arg0; }
uretprobe:BIN:mi_zalloc_aligned /pid == PID/ { @live[retval] = @size[tid]; }
uprobe:BIN:mi_realloc_aligned /pid == PID/ { @size[tid] = arg1; delete(@live[arg0]); }
uretprobe:BIN:mi_realloc_aligned /pid == PID/ { @live[retval] = @size[tid]; }
uprobe:BIN:mi_free /pid == PID/ { delete(@live[arg0]); }
END { clear(@size); }
"""


# -- clients -----------------------------------------------------------------------------------

def h1_client(port, path):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed before answering")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"answered {data[:60]!r}")
    return s


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_client(port, path):
    """One HTTP/2 GET over TLS (HPACK literals, no Huffman), then the connection is kept."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    s = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    if s.selected_alpn_protocol() != "h2":
        raise RuntimeError("the listener did not choose h2")

    def literal(index, value):
        return bytes([0x00 | index]) + bytes([len(value)]) + value.encode()

    block = b"\x82\x87" + literal(4, path) + literal(1, "localhost")  # GET https path authority
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0)
              + h2_frame(1, 0x05, 1, block))
    data = b""
    while True:  # until a frame of stream 1 ends the stream (HEADERS or DATA with END_STREAM)
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("closed before answering")
        data += chunk
        at = 0
        done = False
        while at + 9 <= len(data):
            length = int.from_bytes(data[at:at + 3], "big")
            kind, flags, stream = data[at + 3], data[at + 4], int.from_bytes(data[at + 5:at + 9], "big")
            if at + 9 + length > len(data):
                break
            if kind == 4 and not flags & 1:
                s.sendall(h2_frame(4, 1, 0))  # SETTINGS ack
            if stream == 1 and kind in (0, 1) and flags & 1:
                done = True
            at += 9 + length
        data = data[at:]
        if done:
            return s


class SlowBackend:
    """An HTTP/1.1 backend that holds every request `delay` seconds, in a thread of this script."""

    def __init__(self, port, delay):
        self.port, self.delay = port, delay
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_port(port)

    async def _serve(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    def _run(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, backlog=1024))
        self.loop.run_until_complete(server.serve_forever())


# -- proxies -----------------------------------------------------------------------------------

class Ports:
    """The ports `configs.gatehouse_yaml` places Gatehouse's listeners on."""

    def __init__(self):
        self.proxy, self.metrics, self.admin = free_port(), free_port(), free_port()


def start_proxy(kind, work, backend_port, cert, key):
    """(process, binary, plain port, TLS port) of Gatehouse or bare Pingora, one worker thread."""
    ports, tls_port = Ports(), free_port()
    port = ports.proxy
    if kind == "gatehouse":
        binary = RELEASE / "gatehouse"
        # the bench's configuration: one worker thread, one node, TLS with HTTP/2 by ALPN (the
        # certificate lies beside the configuration, in its file roots)
        config = cert.parent / "gatehouse.yaml"
        config.write_text(configs.gatehouse_yaml(ports, backend_port, nodes=1,
                                                 tls=configs.Tls(tls_port, cert, key)))
        argv = [str(binary), "run", "-c", str(config)]
    else:
        binary = RELEASE / "bare-pingora"
        argv = [str(binary), "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{backend_port}",
                "--threads", "1", "--tls-listen", f"127.0.0.1:{tls_port}", "--cert", str(cert),
                "--key", str(key)]
    # the allocator on small pages for both (Gatehouse turns huge pages off itself)
    env = {**os.environ, "MIMALLOC_ALLOW_THP": "0"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    wait_port(tls_port)
    return proc, binary, port, tls_port


# -- measurement -------------------------------------------------------------------------------

class LiveHeap:
    """Blocks allocated and not freed by one process while it runs (bpftrace)."""

    def __init__(self, pid, binary, work):
        script = work / "live-heap.bt"
        script.write_text(LIVE_HEAP.replace("BIN", str(binary)).replace("PID", str(pid)))
        self.out = work / "live-heap.out"
        env = {**os.environ, "BPFTRACE_MAP_KEYS_MAX": "1000000", "BPFTRACE_MAX_MAP_KEYS": "1000000"}
        self.proc = subprocess.Popen(["bpftrace", str(script)], stdout=open(self.out, "w"),
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while "Attaching" not in self.out.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"bpftrace did not attach: {self.out.read_text()[-500:]}")
            time.sleep(0.2)
        time.sleep(1)

    def stop(self):
        """{block size: live blocks}."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=120)
        sizes = collections.Counter()
        for line in self.out.read_text().splitlines():
            m = re.match(r"@live\[\d+\]: (\d+)", line)
            if m:
                sizes[int(m.group(1))] += 1
        return sizes


def open_idle(kind, n, port, tls_port, backend):
    """Opens `n` idle connections of a kind; returns what must stay referenced (and closed after)."""
    if kind == "h1":
        return [h1_client(port, "/bench/1") for _ in range(n)]
    if kind == "h2":
        return [h2_client(tls_port, "/bench/1") for _ in range(n)]
    # upstream: n requests in flight at once (the backend holds each), answered together, then
    # their clients close: the n upstream connections stay in the proxy's pool
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /bench/1 HTTP/1.1\r\nHost: bench\r\n\r\n")
        socks.append(s)
    for s in socks:
        s.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        s.close()
    return []


def start_backend(conn_kind):
    """(port, process or None): the slow backend (a thread here) for `upstream`, else
    bench-backend answering at once."""
    port = free_port()
    if conn_kind == "upstream":
        SlowBackend(port, delay=1.0)
        return port, None
    backend = subprocess.Popen([str(RELEASE / "bench-backend"), "--listen", f"127.0.0.1:{port}",
                                "--body", "0", "--threads", "1"], stdout=subprocess.DEVNULL)
    wait_port(port)
    return port, backend


def measure(proxy_kind, conn_kind, n, work, cert, key, sites):
    backend_port, backend = start_backend(conn_kind)
    proc, binary, port, tls_port = start_proxy(proxy_kind, work, backend_port, cert, key)
    held = []
    try:
        # one of each first: the process's one-time allocations are not counted
        held += open_idle(conn_kind, 1, port, tls_port, backend_port)
        time.sleep(2)
        heap = LiveHeap(proc.pid, binary, work)
        before = rss_kib(proc.pid)
        held += open_idle(conn_kind, n, port, tls_port, backend_port)
        time.sleep(3)
        after = rss_kib(proc.pid)
        sizes = heap.stop()
        total = sum(size * count for size, count in sizes.items())
        row = {"proxy": proxy_kind, "kind": conn_kind, "rss_kb": (after - before) / n,
               "heap_kib": total / n / 1024,
               "blocks": sorted(((s, c / n) for s, c in sizes.items() if c / n >= 0.5),
                                key=lambda sc: -sc[0] * sc[1])}
        if sites:
            row["sites"] = allocation_sites(proc.pid, binary, [s for s, _ in row["blocks"][:8]],
                                            lambda: open_idle(conn_kind, 2, port, tls_port, backend_port),
                                            work)
        return row
    finally:
        stop(held, proc, signal.SIGINT, backend)


def stop(held, proc, stop_signal, backend):
    """Closes the idle connections, then stops the proxy and the backend."""
    for s in held:
        s.close()
    proc.send_signal(stop_signal)
    proc.wait(timeout=30)
    if backend:
        backend.kill()


def allocation_sites(pid, binary, sizes, open_some, work):
    """Where blocks of the given sizes are allocated: the first frames of their call stacks."""
    subprocess.run(["perf", "probe", "-q", "-d", "connmem:*"], capture_output=True)
    for event, function in (("m", "mi_malloc_aligned"), ("z", "mi_zalloc_aligned")):
        subprocess.run(["perf", "probe", "-q", "-f", "-x", str(binary), "-a",
                        f"connmem:{event}={function} size=%di:u64"], check=True, capture_output=True)
    data = work / "sites.data"
    rec = subprocess.Popen(["perf", "record", "-q", "-e", "connmem:m", "-e", "connmem:z",
                            "--call-graph", "dwarf,8192", "-p", str(pid), "-o", str(data)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        held = open_some()
        time.sleep(1)
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=60)
        subprocess.run(["perf", "probe", "-q", "-d", "connmem:*"], capture_output=True)
    for s in held:
        s.close()
    script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, text=True).stdout
    found = {}
    for block in script.split("\n\n"):
        lines = block.strip().splitlines()
        m = re.search(r"size=(\d+)", lines[0]) if lines else None
        if not m or int(m.group(1)) not in sizes:
            continue
        frames = []
        for line in lines[1:]:
            name = re.sub(r"^\s*[0-9a-f]+\s+", "", line).split(" (")[0]
            name = re.sub(r"::h[0-9a-f]{16}", "", name)
            if name.startswith(("mi_", "_mi_", "alloc::", "__rust", "<mimalloc")) or name == "[unknown]":
                continue
            frames.append(re.sub(r"\+0x[0-9a-f]+$", "", name))
            if len(frames) == 2:
                break
        site = " ← ".join(frames) or "?"
        seen = found.setdefault(int(m.group(1)), [])
        if site not in seen and len(seen) < 3:
            seen.append(site)
    return {size: "; ".join(sites) for size, sites in found.items()}


def nginx_rss(conn_kind, n, work, cert, key):
    """nginx's resident memory per idle connection of a kind (one worker)."""
    backend_port, backend = start_backend(conn_kind)
    prefix = work / f"nginx-{conn_kind}"
    prefix.mkdir()
    port, tls_port = free_port(), free_port()
    (prefix / "nginx.conf").write_text(configs.nginx_conf(
        prefix, port, backend_port, configs.Tls(tls_port, cert, key), keepalive=1024))
    proc = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(prefix), "-c",
                             str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held = []
    try:
        wait_port(port)
        held += open_idle(conn_kind, 1, port, tls_port, backend_port)
        time.sleep(1)
        before = rss_kib(proc.pid)
        held += open_idle(conn_kind, n, port, tls_port, backend_port)
        time.sleep(2)
        return {"proxy": "nginx", "kind": conn_kind, "rss_kb": (rss_kib(proc.pid) - before) / n}
    finally:
        stop(held, proc, signal.SIGQUIT, backend)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--kinds", default="h1,h2,upstream")
    ap.add_argument("--sites", action="store_true", help="where the largest blocks are allocated")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("bpftrace"):
        sys.exit("needs root and bpftrace (apt-get install bpftrace)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gatehouse-conn-memory-") as tmp:
        work = Path(tmp)
        cert, key = configs.make_certificate(work)
        for kind in args.kinds.split(","):
            for proxy in ("gatehouse", "bare-pingora"):
                sub = work / f"{proxy}-{kind}"
                sub.mkdir()
                rows.append(measure(proxy, kind, args.connections, sub, cert, key, args.sites))
                print(f"{proxy} {kind}: {rows[-1]['heap_kib']:.1f} KiB live heap, "
                      f"{rows[-1]['rss_kb']:.1f} KB RSS per connection", file=sys.stderr)
            rows.append(nginx_rss(kind, args.connections, work, cert, key))
    names = {"h1": "HTTP/1.1 client, kept alive", "h2": "HTTP/2 client over TLS",
             "upstream": "upstream, idle in the pool (RSS: of the requests in flight that opened them)"}
    print("| connection | proxy | live heap KiB / conn | RSS KB / conn |")
    print("|---|---|---|---|")
    for r in rows:
        heap = f"{r['heap_kib']:.1f}" if "heap_kib" in r else "—"
        print(f"| {names[r['kind']]} | {r['proxy']} | {heap} | {r['rss_kb']:.1f} |")
    for r in rows:
        if "blocks" not in r:
            continue
        print(f"\n{r['proxy']}, {names[r['kind']]}: live blocks per connection")
        for size, per in r["blocks"]:
            site = r.get("sites", {}).get(size, "")
            print(f"- {size:,} B × {per:.2f}" + (f": {site}" if site else ""))


if __name__ == "__main__":
    main()
