#!/usr/bin/env python3
"""Gatehouse load benchmark: every variant on loopback, pinned to cores, interleaved, repeated.

Run through bench/run.sh, which installs the tools and builds the binaries first. Writes
bench/results/RESULTS-<date>.md (and the raw figures next to it as .json) and prints the report.
`--tls` adds the HTTPS and HTTP/2 variants; `--tls-only` runs them with their plain peers only.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import random
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import allocs, configs, load, micro, procs, profile, report

REPO = Path(__file__).resolve().parent.parent
RELEASE = REPO / "target" / "release"
RESULTS = REPO / "bench" / "results"

PROXY_CORE = 0
LOAD_CORE = 1
BODIES = (0, 1024, 16384)
# The request bodies POSTed by the request-body variants, with their names' suffixes.
REQUEST_BODIES = ((1024, "1k"), (16384, "16k"))
TOKEN = "bench-admin-token-0123456789"
# HTTP/2 load: 10 connections of 5 concurrent streams, the 50 requests in flight of `wrk -c50`
# (more would overflow nginx's 64 idle upstream connections and measure upstream connects).
H2_CONNECTIONS, H2_STREAMS = 10, 5
# The plain variants the TLS ones are compared with (--tls-only runs them too).
TLS_PEERS = ("nginx", "bare-pingora", "gatehouse")


@dataclasses.dataclass(frozen=True)
class Ports:
    proxy: int = 28180
    tls: int = 28143
    metrics: int = 28191
    admin: int = 28190
    backend_base: int = 28100

    def backend(self, body):
        return self.backend_base + BODIES.index(body)

    def all(self):
        return [self.proxy, self.tls, self.metrics, self.admin, *(self.backend(b) for b in BODIES)]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One system under test with one body size."""

    name: str
    kind: str  # direct | nginx | bare | gatehouse | haproxy | caddy | pingap
    body: int
    apis: int = 1
    nodes: int = 2
    plugins: tuple = ()
    transport: str = "http"  # http | https (HTTP/1.1 over TLS) | h2 (HTTP/2 over TLS)
    # bytes of the JSON document POSTed with each request (0: GET)
    request_body: int = 0
    # nginx only: it sets the forwarding headers Gatehouse sets
    forwarding: bool = False
    # Gatehouse only: its nodes carry `stable` and `canary` tags
    tags: bool = False
    # environment variables of the proxy process, as (name, value) pairs
    env: tuple = ()
    # Gatehouse only: lines added to `instance.http` (`read_buffer: 4KiB`)
    http: tuple = ()
    # bare Pingora only: its command-line options (`--work-stealing`), and its program
    flags: tuple = ()
    program: str = "bare-pingora"

    @property
    def key(self):
        return f"{self.name}@{self.body}"

    @property
    def tls(self):
        return self.transport != "http"

    @property
    def path(self):
        return configs.api_path(0, self.apis)


def variants(long_run, tls=False, tls_only=False):
    """The variants of a run: the peers and plain Gatehouse at every body size; Gatehouse with
    plugins, 10,000 APIs and 200 nodes at 0 B (at every size with --long). With `tls`, the peers
    and Gatehouse over HTTPS and HTTP/2 at 0 B (every size with --long); `tls_only`: those and
    the plain peers at the same sizes only."""
    out = []
    for body in BODIES:
        out += [
            Variant("direct", "direct", body),
            Variant("nginx", "nginx", body),
            Variant("bare-pingora", "bare", body),
            Variant("gatehouse", "gatehouse", body),
        ]
    for body in BODIES if long_run else (0,):
        out += [
            # nginx once more: the spread of its difference to itself is what the method resolves
            Variant("nginx-control", "nginx", body),
            # the allocator on transparent huge pages, as before the gateway turned them off
            Variant("gatehouse-thp", "gatehouse", body, env=(("MIMALLOC_ALLOW_THP", "1"),)),
            # freed memory given back to the system at once (mimalloc: a second later, lazily)
            Variant("gatehouse-purge0", "gatehouse", body, env=(("MIMALLOC_PURGE_DELAY", "0"),)),
            # the client connections' read buffer at the engine's 64 KiB, and with none
            Variant("gatehouse-rbuf-64k", "gatehouse", body, http=("read_buffer: 64KiB",)),
            Variant("gatehouse-rbuf-0", "gatehouse", body, http=("read_buffer: 0",)),
            Variant("gatehouse-1-plugin", "gatehouse", body, plugins=tuple(configs.PLUGINS_ONE)),
            Variant("gatehouse-3-plugins", "gatehouse", body, plugins=tuple(configs.PLUGINS_THREE)),
            Variant("gatehouse-noop-0.1", "gatehouse", body, plugins=tuple(configs.NOOP_0_1)),
            Variant("gatehouse-noop-0.2", "gatehouse", body, plugins=tuple(configs.NOOP_0_2)),
            Variant("gatehouse-set-header-component", "gatehouse", body,
                    plugins=tuple(configs.SET_HEADER_COMPONENT)),
            Variant("gatehouse-set-header-filter", "gatehouse", body,
                    plugins=tuple(configs.SET_HEADER_FILTER)),
            Variant("gatehouse-canary", "gatehouse", body, plugins=tuple(configs.CANARY),
                    tags=True),
            Variant("gatehouse-rate-limit", "gatehouse", body, plugins=tuple(configs.RATE_LIMIT)),
            Variant("gatehouse-10k-apis", "gatehouse", body, apis=10_000),
            Variant("gatehouse-200-nodes", "gatehouse", body, nodes=200),
            Variant("nginx-forwarding", "nginx", body, forwarding=True),
        ]
    # request bodies (0 B answers): streamed through an API without plugins, and read whole by
    # json-validator
    for size, label in REQUEST_BODIES:
        out += [
            Variant(f"bare-pingora-post-{label}", "bare", 0, request_body=size),
            Variant(f"gatehouse-post-{label}", "gatehouse", 0, request_body=size),
            Variant(f"gatehouse-json-{label}", "gatehouse", 0, request_body=size,
                    plugins=tuple(configs.JSON_VALIDATOR)),
        ]
    if tls or tls_only:
        for body in BODIES if long_run else (0,):
            out += [
                Variant("nginx-tls", "nginx", body, transport="https"),
                Variant("bare-pingora-tls", "bare", body, transport="https"),
                Variant("gatehouse-tls", "gatehouse", body, transport="https"),
                Variant("nginx-h2", "nginx", body, transport="h2"),
                Variant("bare-pingora-h2", "bare", body, transport="h2"),
                Variant("gatehouse-h2", "gatehouse", body, transport="h2"),
            ]
    if tls_only:
        sizes = {v.body for v in out if v.tls}
        out = [v for v in out if v.tls or (v.name in TLS_PEERS and v.body in sizes)]
    return out


# The peers (`--peers`, `bench/run.sh peers`): the gateways a user would pick instead, each proxying
# the same backend with one worker on the proxy core, beside nginx, bare Pingora and Gatehouse.
PEERS = (
    Variant("nginx", "nginx", 0),
    Variant("nginx-control", "nginx", 0),
    Variant("bare-pingora", "bare", 0),
    Variant("gatehouse", "gatehouse", 0),
    Variant("haproxy", "haproxy", 0),
    Variant("caddy", "caddy", 0),
    Variant("pingap", "pingap", 0),
)


def peer_binary(kind):
    """The installed program of a peer, or None (`bench/run.sh peers` installs them)."""
    names = {"haproxy": ("haproxy", "/usr/sbin/haproxy"), "caddy": ("caddy", "/usr/bin/caddy"),
             "pingap": ("pingap", str(Path.home() / ".cargo/bin/pingap"))}
    name, fallback = names[kind]
    found = shutil.which(name) or (fallback if Path(fallback).exists() else None)
    if found and kind == "pingap":
        version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
        if configs.PINGAP_VERSION not in version.split():
            raise RuntimeError(f"pingap {configs.PINGAP_VERSION} wanted, found {version.strip()!r}: "
                               f"cargo install pingap --version {configs.PINGAP_VERSION} --locked")
    if not found:
        raise RuntimeError(f"{name} is not installed (bench/run.sh peers installs it)")
    return found


# The engine map (`--engine`, `bench/run.sh engine`): nginx, bare Pingora with each setting that
# can change from outside the engine, and Gatehouse; then system calls per request and profiles
# of nginx, bare Pingora and Gatehouse.
ENGINE = (
    Variant("nginx", "nginx", 0),
    Variant("nginx-control", "nginx", 0),
    Variant("bare-pingora", "bare", 0),
    Variant("bare-pingora-steal", "bare", 0, flags=("--work-stealing",)),
    Variant("bare-pingora-2-threads", "bare", 0, flags=("--threads", "2")),
    Variant("bare-pingora-rbuf-4k", "bare", 0, flags=("--read-buffer", "4096")),
    Variant("bare-pingora-rbuf-0", "bare", 0, flags=("--read-buffer", "0")),
    Variant("bare-pingora-pool-64", "bare", 0, flags=("--pool-size", "64")),
    Variant("bare-pingora-idle-timeout", "bare", 0, flags=("--upstream-idle-timeout", "60")),
    Variant("bare-pingora-system-alloc", "bare", 0, program="bare-pingora-system-alloc"),
    Variant("bare-pingora-no-purge", "bare", 0, env=(("MIMALLOC_PURGE_DELAY", "-1"),)),
    Variant("gatehouse", "gatehouse", 0),
)

# The variants whose system calls per request the engine map counts.
SYSCALLS = (
    Variant("nginx", "nginx", 0),
    Variant("bare-pingora", "bare", 0),
    Variant("gatehouse", "gatehouse", 0),
)


# The variants profiled with perf (0 B bodies): bare Pingora beside Gatehouse, then Gatehouse's
# heavier shapes.
PROFILED = (
    Variant("bare-pingora", "bare", 0),
    Variant("gatehouse", "gatehouse", 0),
    Variant("gatehouse-3-plugins", "gatehouse", 0, plugins=tuple(configs.PLUGINS_THREE)),
    Variant("gatehouse-10k-apis", "gatehouse", 0, apis=10_000),
)

# The variants whose heap allocations per request are counted (0 B bodies).
COUNTED = (
    Variant("bare-pingora", "bare", 0),
    Variant("gatehouse", "gatehouse", 0),
    Variant("gatehouse-1-plugin", "gatehouse", 0, plugins=tuple(configs.PLUGINS_ONE)),
    Variant("gatehouse-3-plugins", "gatehouse", 0, plugins=tuple(configs.PLUGINS_THREE)),
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--long", action="store_true",
                   help="5 repetitions of 10 s wrk + 10 s oha, every body size for every variant")
    p.add_argument("--reps", type=int, help="repetitions of each variant (default 5)")
    p.add_argument("--wrk-seconds", type=int, help="wrk run length (default 3, --long 10)")
    p.add_argument("--oha-seconds", type=int, help="oha run length (default 2, --long 10)")
    p.add_argument("--rate", type=int, default=5000, help="oha fixed rate, req/s (default 5000)")
    p.add_argument("--handshake-seconds", type=int,
                   help="new-TLS-connection test length, HTTPS variants (default 2, --long 5)")
    p.add_argument("--tls", action="store_true", help="add the HTTPS and HTTP/2 variants")
    p.add_argument("--tls-only", action="store_true",
                   help="only the HTTPS and HTTP/2 variants and the plain nginx, bare Pingora and "
                        "Gatehouse at the same body sizes; implies --skip-micro, --skip-profile, "
                        "--skip-startup")
    p.add_argument("--quick", action="store_true",
                   help="regression guard before a commit: bare Pingora and Gatehouse, 0 B and "
                        "1 KiB, and Gatehouse with one plugin at 0 B, 5 interleaved repetitions of "
                        "2 s; prints Gatehouse / bare Pingora and one plugin / none (about 2 "
                        "minutes); implies --skip-micro, --skip-profile, --skip-startup")
    p.add_argument("--peers", action="store_true",
                   help="the gateways a user would pick instead: nginx, bare Pingora, Gatehouse, "
                        "HAProxy, Caddy and Pingap at 0 B (what `run.sh peers` runs); implies "
                        "--skip-micro, --skip-profile, --skip-startup, --skip-allocations")
    p.add_argument("--engine", action="store_true",
                   help="the engine map: nginx, bare Pingora with each setting that can change "
                        "from outside the engine, Gatehouse; system calls per request and profiles "
                        "of nginx, bare Pingora and Gatehouse (what `run.sh engine` runs); implies "
                        "--skip-micro, --skip-startup, --skip-allocations")
    p.add_argument("--only", help="comma-separated variant names (or name@body) to run, from all "
                                  "variants, the TLS ones included (default: all)")
    p.add_argument("--skip-micro", action="store_true", help="skip the criterion benchmarks")
    p.add_argument("--skip-profile", action="store_true", help="skip the perf profile")
    p.add_argument("--skip-allocations", action="store_true",
                   help="skip the count of heap allocations per request (uprobes)")
    p.add_argument("--allocations-only", action="store_true",
                   help="only count heap allocations per request of bare Pingora and Gatehouse "
                        "(about 1 minute); writes RESULTS-<date>-allocations.md")
    p.add_argument("--skip-startup", action="store_true", help="skip the startup and reload times")
    p.add_argument("--seed", type=int, default=1, help="seed of the per-repetition shuffle")
    p.add_argument("--bin-dir", type=Path, default=RELEASE,
                   help="folder of gatehouse, bench-backend and bare-pingora (default: the "
                        "workspace's target/release; another build's figures are not comparable)")
    args = p.parse_args()
    if args.quick:
        args.reps = args.reps or 5
        args.wrk_seconds = args.wrk_seconds or 2
        args.skip_micro = args.skip_profile = args.skip_startup = args.skip_allocations = True
    if args.allocations_only:
        args.skip_micro = args.skip_profile = args.skip_startup = True
    args.reps = args.reps or 5
    args.wrk_seconds = args.wrk_seconds or (10 if args.long else 3)
    # a p99 over a 2 s window (10,000 answers) moves by hundreds of microseconds from one window
    # to the next on this kind of machine: the peers' latency comparison takes 10 s windows
    args.oha_seconds = args.oha_seconds or (10 if args.long or args.peers else 2)
    args.handshake_seconds = args.handshake_seconds or (5 if args.long else 2)
    args.bin_dir = args.bin_dir.resolve()
    if args.tls_only or args.peers:
        args.skip_micro = args.skip_profile = args.skip_startup = args.skip_allocations = True
    if args.engine:
        args.skip_micro = args.skip_startup = args.skip_allocations = True
    return args


def log(message):
    print(message, file=sys.stderr, flush=True)


class Bench:
    """Holds the backends, the working folder, the configuration files and the TLS certificate
    of one run."""

    def __init__(self, args, workdir):
        self.args = args
        self.bins = args.bin_dir
        self.work = Path(workdir)
        # the no-op plugins of each contract (NOOP_0_1, NOOP_0_2), beside the configurations
        shutil.copy(REPO / "gateway/plugin/tests/fixtures/contract-0.1.0/headers.wasm",
                    self.work / configs.NOOP_0_1_FILE)
        shutil.copy(REPO / "plugins/dist/grant-probe.wasm", self.work / configs.NOOP_0_2_FILE)
        shutil.copy(REPO / "plugins/dist/filter-headers.wasm", self.work / configs.FILTER_FILE)
        self.ports = Ports()
        self.backends = {}
        self.configs = {}
        self.tls = None
        self.certificate_der = None
        self.oha = load.oha_available()

    # -- processes ---------------------------------------------------------------------------

    def start_backends(self):
        for body in BODIES:
            port = self.ports.backend(body)
            proc = procs.Proc(
                f"backend-{body}",
                [str(self.bins / "bench-backend"), "--listen", f"0.0.0.0:{port}", "--body", str(body),
                 "--threads", "1"],
                LOAD_CORE, self.work / f"backend-{body}.log",
            )
            procs.wait_ok(port, "/", proc, timeout=10)
            self.backends[body] = proc

    def make_certificate(self):
        """The certificate every TLS listener serves, made for this run in the working folder,
        where Gatehouse's configurations are (their `file_roots`)."""
        cert, key = configs.make_certificate(self.work)
        self.tls = configs.Tls(self.ports.tls, cert, key)
        self.certificate_der = ssl.PEM_cert_to_DER_cert(cert.read_text())

    def config_file(self, variant):
        """Writes (once per shape) the Gatehouse configuration of a variant."""
        post = variant.request_body > 0
        key = (variant.body, variant.apis, variant.nodes, variant.plugins, variant.tls, post,
               variant.tags, variant.http)
        if key not in self.configs:
            path = self.work / f"gatehouse-{len(self.configs)}.yaml"
            path.write_text(configs.gatehouse_yaml(
                self.ports, self.ports.backend(variant.body), variant.apis, variant.nodes,
                variant.plugins, tls=self.tls if variant.tls else None,
                methods=("GET", "POST") if post else ("GET",), tags=variant.tags,
                http=variant.http,
            ))
            self.configs[key] = path
        return self.configs[key]

    def start_proxy(self, variant):
        """Starts the proxy of a variant on the proxy core; None for `direct`."""
        backend = self.ports.backend(variant.body)
        logfile = self.work / f"{variant.name}.log"
        tls = self.tls if variant.tls else None
        if variant.kind == "direct":
            return None
        if variant.kind == "nginx":
            prefix = self.work / "nginx"
            prefix.mkdir(exist_ok=True)
            conf = prefix / "nginx.conf"
            conf.write_text(configs.nginx_conf(prefix, self.ports.proxy, backend, tls,
                                               variant.forwarding))
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            return procs.Proc("nginx", [nginx, "-p", str(prefix), "-c", str(conf),
                                        "-e", str(prefix / "error.log")],
                              PROXY_CORE, logfile, stop_signal=signal.SIGTERM)
        if variant.kind in ("haproxy", "caddy", "pingap"):
            return self.start_peer(variant, backend, logfile)
        if variant.kind == "bare":
            argv = [
                str(self.bins / variant.program), "--listen", f"127.0.0.1:{self.ports.proxy}",
                "--upstream", f"127.0.0.1:{backend}", *variant.flags,
            ]
            if "--threads" not in variant.flags:
                argv += ["--threads", "1"]
            if tls:
                argv += ["--tls-listen", f"127.0.0.1:{tls.port}", "--cert", str(tls.cert),
                         "--key", str(tls.key)]
            return procs.Proc("bare-pingora", argv, PROXY_CORE, logfile, env=dict(variant.env))
        return procs.Proc("gatehouse", [
            str(self.bins / "gatehouse"), "run", "-c", str(self.config_file(variant)),
        ], PROXY_CORE, logfile, env=dict(variant.env))

    def start_peer(self, variant, backend, logfile):
        """HAProxy, Caddy or Pingap on the proxy core, one worker each (harness/configs.py)."""
        binary = peer_binary(variant.kind)
        prefix = self.work / variant.kind
        prefix.mkdir(exist_ok=True)
        port = self.ports.proxy
        if variant.kind == "haproxy":
            conf = prefix / "haproxy.cfg"
            conf.write_text(configs.haproxy_cfg(port, backend))
            return procs.Proc("haproxy", [binary, "-db", "-f", str(conf)], PROXY_CORE, logfile,
                              stop_signal=signal.SIGTERM)
        if variant.kind == "caddy":
            conf = prefix / "Caddyfile"
            conf.write_text(configs.caddyfile(port, backend))
            # its own folders for what it saves, one scheduler thread running Go code
            env = {"GOMAXPROCS": "1", "HOME": str(prefix), "XDG_CONFIG_HOME": str(prefix),
                   "XDG_DATA_HOME": str(prefix)}
            return procs.Proc("caddy", [binary, "run", "--config", str(conf), "--adapter",
                                        "caddyfile"], PROXY_CORE, logfile, env=env)
        conf = prefix / "pingap.toml"
        conf.write_text(configs.pingap_toml(prefix, port, backend))
        return procs.Proc("pingap", [binary, "-c", str(conf)], PROXY_CORE, logfile)

    def backend_stats(self, body):
        """(connections accepted, requests answered) by the backend of a body size."""
        _, raw = procs.http_get(self.ports.backend(body), "/__bench/stats")
        stats = json.loads(raw)
        return stats["connections"], stats["requests"]

    def port_of(self, variant):
        if variant.kind == "direct":
            return self.ports.backend(variant.body)
        return self.ports.tls if variant.tls else self.ports.proxy

    def url(self, variant):
        """What the load generators ask for. Over TLS the host is `localhost`, the
        certificate's name, which clients send as SNI (an IP address is not a valid one)."""
        if variant.tls:
            return f"https://localhost:{self.ports.tls}{variant.path}"
        return f"http://127.0.0.1:{self.port_of(variant)}{variant.path}"

    def ready(self, variant, proxy):
        """Waits for a 200 through the variant and checks the body size. Over TLS, checks too
        that the listener serves the run's certificate and picks the variant's protocol by ALPN
        (h2 for HTTP/2, http/1.1 for HTTPS); returns the TLS session negotiated (version and
        cipher, as an OpenSSL client with default settings such as wrk gets them), else None."""
        port = self.port_of(variant)
        if variant.tls:
            _, body = procs.wait_ok(port, variant.path, proxy, timeout=60, host="localhost",
                                    tls=procs.tls_client())
        else:
            _, body = procs.wait_ok(port, variant.path, proxy, timeout=60)
        if len(body) != variant.body:
            raise RuntimeError(f"{variant.key}: got a {len(body)} B body, expected {variant.body} B")
        if not variant.tls:
            return None
        alpn = "h2" if variant.transport == "h2" else "http/1.1"
        session = procs.tls_session(port, [alpn])
        if session["certificate"] != self.certificate_der:
            raise RuntimeError(f"{variant.key}: the TLS listener serves another certificate")
        if session["alpn"] != alpn:
            raise RuntimeError(f"{variant.key}: ALPN chose {session['alpn']}, not {alpn}")
        return f"{session['protocol']}, {session['cipher']}"

    def load_inputs(self, variant):
        """(wrk script, oha URL file) for a variant spreading requests over many APIs, or
        POSTing a body (no oha file: the open loop is not run for those)."""
        if variant.request_body:
            lua = self.work / f"post-{variant.request_body}.lua"
            if not lua.exists():
                body = configs.json_order(variant.request_body)
                lua.write_text(configs.wrk_post_lua(variant.path, body))
            return str(lua), None
        if variant.apis == 1:
            return None, None
        lua = self.work / f"apis-{variant.apis}.lua"
        urls = self.work / f"apis-{variant.apis}.txt"
        if not lua.exists():
            lua.write_text(configs.wrk_lua(variant.apis))
            urls.write_text(configs.oha_urls(self.ports.proxy, variant.apis))
        return str(lua), str(urls)

    # -- measurements ------------------------------------------------------------------------

    def closed_loop(self, variant, url, seconds, script=None):
        """The most the variant answers: wrk -c50 (HTTP/1.1, plain or TLS), or h2load with 10
        connections of 5 streams (HTTP/2)."""
        if variant.transport == "h2":
            return load.h2load(url, seconds, LOAD_CORE, H2_CONNECTIONS, H2_STREAMS)
        return load.wrk(url, seconds, LOAD_CORE, script=script)

    def open_loop(self, variant, url, urls):
        """Latency at the fixed rate with oha; None without oha, and for POST variants."""
        if not self.oha or variant.request_body:
            return None
        if variant.transport == "h2":
            return load.oha(url, self.args.oha_seconds, self.args.rate, LOAD_CORE,
                            connections=H2_CONNECTIONS, insecure=True, http2_streams=H2_STREAMS)
        return load.oha(url, self.args.oha_seconds, self.args.rate, LOAD_CORE, urls_file=urls,
                        insecure=variant.tls)

    def new_connections(self, variant, proxy):
        """The proxy's CPU per new TLS connection: `openssl s_time -new`, one connection at a
        time, each a full handshake (TLS 1.3, X25519, the P-256 certificate), one request and a
        close."""
        cpu_before = proxy.cpu_seconds()
        started = time.monotonic()
        count = load.s_time("127.0.0.1", self.ports.tls, variant.path, self.args.handshake_seconds,
                            LOAD_CORE)
        wall = time.monotonic() - started
        return {
            "handshakes_per_s": count / wall,
            "proxy_cpu_us_per_handshake": (proxy.cpu_seconds() - cpu_before) / count * 1e6,
        }

    def measure(self, variant, rep):
        """One repetition of one variant: throughput, CPU per request, latency, peak memory;
        over HTTPS also the CPU of a new TLS connection."""
        args = self.args
        proxy = self.start_proxy(variant)
        try:
            session = self.ready(variant, proxy)
            url = self.url(variant)
            script, urls = self.load_inputs(variant)
            self.closed_loop(variant, url, 1, script)  # warm-up: connections, pools, caches
            backend = self.backends[variant.body]
            core0_before, steal_before = procs.core_times(PROXY_CORE)
            core1_before, _ = procs.core_times(LOAD_CORE)
            driver_before = own_cpu_seconds()
            proxy_before = proxy.cpu_seconds() if proxy else 0.0
            backend_before = backend.cpu_seconds()
            conns_before, _ = self.backend_stats(variant.body)
            started = time.monotonic()
            w = self.closed_loop(variant, url, args.wrk_seconds, script)
            wall = time.monotonic() - started
            proxy_cpu = (proxy.cpu_seconds() - proxy_before) if proxy else 0.0
            backend_cpu = backend.cpu_seconds() - backend_before
            conns_after, _ = self.backend_stats(variant.body)
            core0_after, steal_after = procs.core_times(PROXY_CORE)
            core1_after, _ = procs.core_times(LOAD_CORE)
            driver_cpu = own_cpu_seconds() - driver_before
            o = self.open_loop(variant, url, urls) or {}
            core0_busy = (core0_after - core0_before) / procs.CLK_TCK
            core1_busy = (core1_after - core1_before) / procs.CLK_TCK
            run = {
                "variant": variant.key, "rep": rep,
                "rps": w["rps"], "requests": w["requests"], "wrk_errors": w["errors"],
                "proxy_cpu_us": proxy_cpu / w["requests"] * 1e6 if proxy else None,
                "backend_cpu_us": backend_cpu / w["requests"] * 1e6,
                # one is the stats request itself
                "backend_conns_per_1k": (conns_after - conns_before - 1) / w["requests"] * 1000,
                "peak_rss_mib": proxy.peak_rss_mib() if proxy else None,
                "oha_rps": o.get("rps"), "oha_success": o.get("success"),
                "oha_non_200": o.get("non_200", 0),
                "p50_us": o.get("p50_us"), "p99_us": o.get("p99_us"), "p999_us": o.get("p999_us"),
                "core0_foreign_pct": max(0.0, core0_busy - proxy_cpu) / wall * 100,
                "core1_foreign_pct": max(0.0, core1_busy - backend_cpu - driver_cpu) / wall * 100,
                "steal_pct": (steal_after - steal_before) / procs.CLK_TCK / wall * 100,
            }
            if variant.tls:
                run["tls"] = w.get("tls") or session
            if variant.transport == "https":
                run |= self.new_connections(variant, proxy)
            return run
        finally:
            if proxy:
                proxy.stop()

    def startup(self, apis, reps):
        """Seconds from `gatehouse run` to the first proxied 200, and peak RSS after it."""
        variant = Variant("startup", "gatehouse", 0, apis=apis)
        config = self.config_file(variant)
        out = []
        for _ in range(reps):
            started = time.monotonic()
            proc = procs.Proc("gatehouse", [str(self.bins / "gatehouse"), "run", "-c", str(config)],
                              PROXY_CORE, self.work / f"startup-{apis}.log")
            try:
                procs.wait_ok(self.ports.proxy, variant.path, proc, timeout=120, interval=0.001)
                out.append({"seconds": time.monotonic() - started, "rss_mib": proc.peak_rss_mib()})
            finally:
                proc.stop()
        return out

    def reload(self, apis, reps):
        """Latency of `POST /reload` (admin API) swapping in a changed file of `apis` APIs."""
        variant = Variant("reload", "gatehouse", 0, apis=apis)
        config = self.work / "reload.yaml"
        config.write_text(configs.gatehouse_yaml(self.ports, self.ports.backend(0), apis))
        proc = procs.Proc("gatehouse", [str(self.bins / "gatehouse"), "run", "-c", str(config)],
                          PROXY_CORE, self.work / "reload.log", env={"GATEHOUSE_ADMIN_TOKEN": TOKEN})
        out = []
        try:
            procs.wait_ok(self.ports.proxy, variant.path, proc, timeout=120)
            for rep in range(reps):
                config.write_text(configs.gatehouse_yaml(
                    self.ports, self.ports.backend(0), apis, description=f"reload-{rep}"))
                started = time.monotonic()
                status, body = procs.http_get(
                    self.ports.admin, "/reload", method="POST",
                    headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
                seconds = time.monotonic() - started
                if status != 200:
                    raise RuntimeError(f"POST /reload answered {status}: {body[:300]!r}")
                procs.wait_ok(self.ports.proxy, variant.path, proc, timeout=10)
                out.append({"seconds": seconds, "generation": json.loads(body).get("generation")})
            return {"reloads": out, "rss_mib": proc.peak_rss_mib()}
        finally:
            proc.stop()

    def allocations(self, variant, seconds):
        """Heap allocations per request of the proxy under `wrk -t1 -c1` (one request at a time:
        with many in flight, how they batch moves the count by several per request), counted with
        uprobes (harness/allocs.py) over a `seconds` run after a warm-up."""
        binary = self.bins / ("bare-pingora" if variant.kind == "bare" else "gatehouse")
        proxy = self.start_proxy(variant)
        group = None
        try:
            self.ready(variant, proxy)
            url = self.url(variant)
            script, _ = self.load_inputs(variant)
            load.wrk(url, 1, LOAD_CORE, script=script)
            group = allocs.attach(binary)
            worker = allocs.worker_thread(
                proxy.pid, "Pingora HTTP" if variant.kind == "bare" else "gatehouse proxy")
            run, hits = allocs.count(
                worker, group, str(self.work / f"allocs-{variant.name}.csv"),
                lambda: load.wrk(url, seconds, LOAD_CORE, connections=1, script=script))
            n = max(run["requests"], 1)
            return {"requests": run["requests"],
                    "allocations": (hits["alloc"] + hits["zalloc"]) / n,
                    "reallocations": hits["realloc"] / n}
        finally:
            proxy.stop()
            if group:
                allocs.detach(group)

    def profile(self, variant, seconds):
        """perf profile of the proxy (nginx: its worker) under wrk load."""
        proxy = self.start_proxy(variant)
        try:
            self.ready(variant, proxy)
            url = self.url(variant)
            script, _ = self.load_inputs(variant)
            load.wrk(url, 1, LOAD_CORE, script=script)
            data = self.work / f"perf-{variant.name}.data"
            recorder = profile.record(proxy.tree()[-1], seconds, str(data), LOAD_CORE)
            load.wrk(url, seconds + 1, LOAD_CORE, script=script)
            recorder.wait()
            return profile.summarize(str(data))
        finally:
            proxy.stop()

    def syscalls(self, variant, seconds):
        """System calls per request of the proxy (nginx: its worker) under `wrk -c50`, by name."""
        proxy = self.start_proxy(variant)
        try:
            self.ready(variant, proxy)
            url = self.url(variant)
            load.wrk(url, 1, LOAD_CORE)
            run, counts = profile.count_syscalls(
                proxy.tree()[-1], str(self.work / f"syscalls-{variant.name}.csv"),
                lambda: load.wrk(url, seconds, LOAD_CORE))
            n = max(run["requests"], 1)
            return {"requests": run["requests"],
                    "per_request": {name: count / n for name, count in counts.items()}}
        finally:
            proxy.stop()


def own_cpu_seconds():
    """CPU time of this driver and of its finished children (wrk, oha: the load generators)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def machine():
    """What the numbers were measured on."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / 1024 / 1024

    def version(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    def git(*argv):
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "os": version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "load_start": os.getloadavg(),
        "rustc": version(["rustc", "--version"]),
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "oha": version(["oha", "--version"]),
        "h2load": version(["h2load", "--version"]),
        "openssl": version(["openssl", "version"]),
        "haproxy": version(["haproxy", "-v"]),
        "caddy": version(["caddy", "version"]),
        "pingap": version(["pingap", "--version"]),
        "commit": git("rev-parse", "--short", "HEAD") + (" (with local changes)" if git("status", "--porcelain") else ""),
    }


def each_variant(data, stage, variants, measure):
    """Runs `measure` on each variant into `data[stage][name]`; a failure is recorded and the
    stage goes on."""
    for variant in variants:
        try:
            data[stage][variant.name] = measure(variant)
        except Exception as e:  # keep the rest of the run
            data["failures"].append(f"{stage} {variant.name}: {e}")


def main():
    args = parse_args()
    if args.quick and not args.only:
        args.only = ("bare-pingora@0,gatehouse@0,bare-pingora@1024,gatehouse@1024,"
                     "gatehouse-1-plugin@0")
    if args.allocations_only:
        todo = []
    elif args.only:
        names = set(args.only.split(","))
        known = {v.key: v for v in variants(args.long, tls=True) + list(PEERS) + list(ENGINE)}
        todo = [v for v in known.values() if v.name in names or v.key in names]
    elif args.peers:
        todo = list(PEERS)
    elif args.engine:
        todo = list(ENGINE)
    else:
        todo = variants(args.long, tls=args.tls, tls_only=args.tls_only)
    if not todo and not args.allocations_only:
        sys.exit("no variant to run; see the variants in bench/README.md")
    started = time.monotonic()
    today = datetime.date.today().isoformat()
    work = tempfile.mkdtemp(prefix="gatehouse-bench-")
    bench = Bench(args, work)
    busy = [p for p in bench.ports.all() if not procs.port_free(p)]
    if busy:
        sys.exit(f"ports in use: {busy}; stop what holds them and run again")
    if not bench.oha:
        log("oha is not installed: no latency figures")

    if args.quick:
        bench.oha = None  # throughput and CPU only

    def seconds(v):
        return (2.5 + args.wrk_seconds + (args.oha_seconds if bench.oha else 0)
                + (args.handshake_seconds + 0.5 if v.transport == "https" else 0))

    log(f"{len(todo)} variants x {args.reps} repetitions, ~{sum(map(seconds, todo)) * args.reps / 60:.1f} "
        f"min of load tests; working folder {work}")
    data = {"date": today, "machine": machine(), "settings": {
        "reps": args.reps, "wrk_seconds": args.wrk_seconds, "oha_seconds": args.oha_seconds,
        "rate": args.rate, "connections": 50, "long": args.long, "seed": args.seed,
        "proxy_core": PROXY_CORE, "load_core": LOAD_CORE, "oha": bench.oha,
        "h2_connections": H2_CONNECTIONS, "h2_streams": H2_STREAMS,
        "handshake_seconds": args.handshake_seconds, "bin_dir": os.path.relpath(args.bin_dir, REPO),
    }, "variants": [dataclasses.asdict(v) | {"key": v.key} for v in todo], "runs": [],
        "failures": [], "micro": {}, "startup": {}, "reload": None, "profiles": {},
        "allocations": {}, "syscalls": {}}
    try:
        bench.start_backends()
        if any(v.tls for v in todo):
            bench.make_certificate()
        if not args.skip_micro:
            log("criterion micro-benchmarks ...")
            try:
                warm, measure = (2, 5) if args.long else (1, 2)
                data["micro"] = micro.run(REPO, PROXY_CORE, warm, measure, Path(work) / "criterion.log")
            except subprocess.CalledProcessError as e:
                data["failures"].append(f"criterion: exit {e.returncode} (log {work}/criterion.log)")
        if not args.skip_startup:
            log("startup and reload ...")
            for apis in (1, 10_000):
                try:
                    data["startup"][str(apis)] = bench.startup(apis, 3)
                except Exception as e:  # keep the rest of the run
                    data["failures"].append(f"startup with {apis} APIs: {e}")
            try:
                data["reload"] = bench.reload(10_000, 3)
            except Exception as e:
                data["failures"].append(f"reload: {e}")
        for rep in range(args.reps):
            order = list(todo)
            random.Random(args.seed * 1000 + rep).shuffle(order)
            for variant in order:
                try:
                    run = bench.measure(variant, rep)
                except Exception as e:
                    data["failures"].append(f"{variant.key} repetition {rep + 1}: {e}")
                    log(f"[{rep + 1}/{args.reps}] {variant.key}: FAILED {e}")
                    continue
                data["runs"].append(run)
                log(report.progress_line(rep, args.reps, run))
        if args.engine:
            if profile.available():
                log("system calls per request ...")
                each_variant(data, "syscalls", SYSCALLS, lambda v: bench.syscalls(v, 3))
            else:
                data["failures"].append("system calls: `perf` does not work here")
        if not args.skip_profile:
            if profile.available():
                log("perf profile ...")
                each_variant(data, "profiles", SYSCALLS if args.engine else PROFILED,
                             lambda v: bench.profile(v, 5))
            else:
                data["failures"].append("perf profile: `perf record -e cpu-clock` does not work here")
        if not args.skip_allocations:
            if allocs.available():
                log("heap allocations per request (uprobes) ...")
                each_variant(data, "allocations", COUNTED, lambda v: bench.allocations(v, 5))
            else:
                data["failures"].append("allocations: uprobes (`perf probe`, tracefs) do not work here")
    finally:
        for proc in bench.backends.values():
            proc.stop()
    data["machine"]["load_end"] = os.getloadavg()
    data["seconds"] = time.monotonic() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = report.render(data)
    # A run of some variants only does not replace the day's full results.
    suffix = ("-quick" if args.quick else "-allocations" if args.allocations_only
              else "-partial" if args.only else "-tls" if args.tls_only
              else "-peers" if args.peers else "-engine" if args.engine else "")
    name = f"RESULTS-{today}{suffix}"
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    print(text)
    log(f"wrote {RESULTS / f'{name}.md'} in {data['seconds'] / 60:.1f} min")
    if data["failures"]:
        log(f"logs of the processes kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
