#!/usr/bin/env python3
"""Gatehouse load benchmark: every variant on loopback, pinned to cores, interleaved, repeated.

Run through bench/run.sh, which installs the tools and builds the binaries first. Writes
bench/results/RESULTS-<date>.md (and the raw figures next to it as .json) and prints the report.
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import configs, load, micro, procs, profile, report

REPO = Path(__file__).resolve().parent.parent
BINS = REPO / "target" / "release"
RESULTS = REPO / "bench" / "results"

PROXY_CORE = 0
LOAD_CORE = 1
BODIES = (0, 1024, 16384)
TOKEN = "bench-admin-token-0123456789"


@dataclasses.dataclass(frozen=True)
class Ports:
    proxy: int = 28180
    metrics: int = 28191
    admin: int = 28190
    backend_base: int = 28100

    def backend(self, body):
        return self.backend_base + BODIES.index(body)

    def all(self):
        return [self.proxy, self.metrics, self.admin, *(self.backend(b) for b in BODIES)]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One system under test with one body size."""

    name: str
    kind: str  # direct | nginx | bare | gatehouse
    body: int
    apis: int = 1
    nodes: int = 2
    plugins: tuple = ()

    @property
    def key(self):
        return f"{self.name}@{self.body}"

    @property
    def path(self):
        return configs.api_path(0, self.apis)


def variants(long_run):
    """The variants of a run: the peers and plain Gatehouse at every body size; Gatehouse with
    plugins, 10,000 APIs and 200 nodes at 0 B (at every size with --long)."""
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
            Variant("gatehouse-1-plugin", "gatehouse", body, plugins=tuple(configs.PLUGINS_ONE)),
            Variant("gatehouse-3-plugins", "gatehouse", body, plugins=tuple(configs.PLUGINS_THREE)),
            Variant("gatehouse-10k-apis", "gatehouse", body, apis=10_000),
            Variant("gatehouse-200-nodes", "gatehouse", body, nodes=200),
        ]
    return out


# The Gatehouse variants profiled with perf (0 B bodies).
PROFILED = (
    Variant("gatehouse", "gatehouse", 0),
    Variant("gatehouse-3-plugins", "gatehouse", 0, plugins=tuple(configs.PLUGINS_THREE)),
    Variant("gatehouse-10k-apis", "gatehouse", 0, apis=10_000),
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--long", action="store_true",
                   help="5 repetitions of 10 s wrk + 10 s oha, every body size for every variant")
    p.add_argument("--reps", type=int, help="repetitions of each variant (default 4, --long 5)")
    p.add_argument("--wrk-seconds", type=int, help="wrk run length (default 3, --long 10)")
    p.add_argument("--oha-seconds", type=int, help="oha run length (default 2, --long 10)")
    p.add_argument("--rate", type=int, default=5000, help="oha fixed rate, req/s (default 5000)")
    p.add_argument("--only", help="comma-separated variant names to run (default: all)")
    p.add_argument("--skip-micro", action="store_true", help="skip the criterion benchmarks")
    p.add_argument("--skip-profile", action="store_true", help="skip the perf profile")
    p.add_argument("--seed", type=int, default=1, help="seed of the per-repetition shuffle")
    args = p.parse_args()
    args.reps = args.reps or (5 if args.long else 4)
    args.wrk_seconds = args.wrk_seconds or (10 if args.long else 3)
    args.oha_seconds = args.oha_seconds or (10 if args.long else 2)
    return args


def log(message):
    print(message, file=sys.stderr, flush=True)


class Bench:
    """Holds the backends, the working folder and the configuration files of one run."""

    def __init__(self, args, workdir):
        self.args = args
        self.work = Path(workdir)
        self.ports = Ports()
        self.backends = {}
        self.configs = {}

    # -- processes ---------------------------------------------------------------------------

    def start_backends(self):
        for body in BODIES:
            port = self.ports.backend(body)
            proc = procs.Proc(
                f"backend-{body}",
                [str(BINS / "bench-backend"), "--listen", f"0.0.0.0:{port}", "--body", str(body),
                 "--threads", "1"],
                LOAD_CORE, self.work / f"backend-{body}.log",
            )
            procs.wait_ok(port, "/", proc, timeout=10)
            self.backends[body] = proc

    def config_file(self, variant):
        """Writes (once per shape) the Gatehouse configuration of a variant."""
        key = (variant.body, variant.apis, variant.nodes, variant.plugins)
        if key not in self.configs:
            path = self.work / f"gatehouse-{len(self.configs)}.yaml"
            path.write_text(configs.gatehouse_yaml(
                self.ports, self.ports.backend(variant.body), variant.apis, variant.nodes,
                variant.plugins,
            ))
            self.configs[key] = path
        return self.configs[key]

    def start_proxy(self, variant):
        """Starts the proxy of a variant on the proxy core; None for `direct`."""
        backend = self.ports.backend(variant.body)
        logfile = self.work / f"{variant.name}.log"
        if variant.kind == "direct":
            return None
        if variant.kind == "nginx":
            prefix = self.work / "nginx"
            prefix.mkdir(exist_ok=True)
            conf = prefix / "nginx.conf"
            conf.write_text(configs.nginx_conf(prefix, self.ports.proxy, backend))
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            return procs.Proc("nginx", [nginx, "-p", str(prefix), "-c", str(conf),
                                        "-e", str(prefix / "error.log")],
                              PROXY_CORE, logfile, stop_signal=signal.SIGTERM)
        if variant.kind == "bare":
            return procs.Proc("bare-pingora", [
                str(BINS / "bare-pingora"), "--listen", f"127.0.0.1:{self.ports.proxy}",
                "--upstream", f"127.0.0.1:{backend}", "--threads", "1",
            ], PROXY_CORE, logfile)
        return procs.Proc("gatehouse", [
            str(BINS / "gatehouse"), "run", "-c", str(self.config_file(variant)),
        ], PROXY_CORE, logfile)

    def backend_stats(self, body):
        """(connections accepted, requests answered) by the backend of a body size."""
        _, raw = procs.http_get(self.ports.backend(body), "/__bench/stats")
        stats = json.loads(raw)
        return stats["connections"], stats["requests"]

    def port_of(self, variant):
        return self.ports.backend(variant.body) if variant.kind == "direct" else self.ports.proxy

    def ready(self, variant, proxy):
        """Waits for a 200 through the variant and checks the body size."""
        _, body = procs.wait_ok(self.port_of(variant), variant.path, proxy, timeout=60)
        if len(body) != variant.body:
            raise RuntimeError(f"{variant.key}: got a {len(body)} B body, expected {variant.body} B")

    def load_inputs(self, variant):
        """(wrk script, oha URL file) for a variant spreading requests over many APIs."""
        if variant.apis == 1:
            return None, None
        lua = self.work / f"apis-{variant.apis}.lua"
        urls = self.work / f"apis-{variant.apis}.txt"
        if not lua.exists():
            lua.write_text(configs.wrk_lua(variant.apis))
            urls.write_text(configs.oha_urls(self.ports.proxy, variant.apis))
        return str(lua), str(urls)

    # -- measurements ------------------------------------------------------------------------

    def measure(self, variant, rep):
        """One repetition of one variant: throughput, CPU per request, latency, peak memory."""
        args = self.args
        proxy = self.start_proxy(variant)
        try:
            self.ready(variant, proxy)
            url = f"http://127.0.0.1:{self.port_of(variant)}{variant.path}"
            script, urls = self.load_inputs(variant)
            load.wrk(url, 1, LOAD_CORE, script=script)  # warm-up: connections, pools, caches
            backend = self.backends[variant.body]
            core0_before, steal_before = procs.core_times(PROXY_CORE)
            core1_before, _ = procs.core_times(LOAD_CORE)
            driver_before = own_cpu_seconds()
            proxy_before = proxy.cpu_seconds() if proxy else 0.0
            backend_before = backend.cpu_seconds()
            conns_before, _ = self.backend_stats(variant.body)
            started = time.monotonic()
            w = load.wrk(url, args.wrk_seconds, LOAD_CORE, script=script)
            wall = time.monotonic() - started
            proxy_cpu = (proxy.cpu_seconds() - proxy_before) if proxy else 0.0
            backend_cpu = backend.cpu_seconds() - backend_before
            conns_after, _ = self.backend_stats(variant.body)
            core0_after, steal_after = procs.core_times(PROXY_CORE)
            core1_after, _ = procs.core_times(LOAD_CORE)
            driver_cpu = own_cpu_seconds() - driver_before
            o = load.oha(url, args.oha_seconds, args.rate, LOAD_CORE, urls_file=urls)
            core0_busy = (core0_after - core0_before) / procs.CLK_TCK
            core1_busy = (core1_after - core1_before) / procs.CLK_TCK
            return {
                "variant": variant.key, "rep": rep,
                "rps": w["rps"], "requests": w["requests"], "wrk_errors": w["errors"],
                "proxy_cpu_us": proxy_cpu / w["requests"] * 1e6 if proxy else None,
                "backend_cpu_us": backend_cpu / w["requests"] * 1e6,
                # one is the stats request itself
                "backend_conns_per_1k": (conns_after - conns_before - 1) / w["requests"] * 1000,
                "peak_rss_mib": proxy.peak_rss_mib() if proxy else None,
                "oha_rps": o["rps"], "oha_success": o["success"], "oha_non_200": o["non_200"],
                "p50_us": o["p50_us"], "p99_us": o["p99_us"], "p999_us": o["p999_us"],
                "core0_foreign_pct": max(0.0, core0_busy - proxy_cpu) / wall * 100,
                "core1_foreign_pct": max(0.0, core1_busy - backend_cpu - driver_cpu) / wall * 100,
                "steal_pct": (steal_after - steal_before) / procs.CLK_TCK / wall * 100,
            }
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
            proc = procs.Proc("gatehouse", [str(BINS / "gatehouse"), "run", "-c", str(config)],
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
        proc = procs.Proc("gatehouse", [str(BINS / "gatehouse"), "run", "-c", str(config)],
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

    def profile(self, variant, seconds):
        """perf profile of the proxy under wrk load."""
        proxy = self.start_proxy(variant)
        try:
            self.ready(variant, proxy)
            url = f"http://127.0.0.1:{self.port_of(variant)}{variant.path}"
            script, _ = self.load_inputs(variant)
            load.wrk(url, 1, LOAD_CORE, script=script)
            data = self.work / f"perf-{variant.name}.data"
            recorder = profile.record(proxy.pid, seconds, str(data), LOAD_CORE)
            load.wrk(url, seconds + 1, LOAD_CORE, script=script)
            recorder.wait()
            return profile.summarize(str(data))
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
        "commit": git("rev-parse", "--short", "HEAD") + (" (with local changes)" if git("status", "--porcelain") else ""),
    }


def main():
    args = parse_args()
    started = time.monotonic()
    today = datetime.date.today().isoformat()
    work = tempfile.mkdtemp(prefix="gatehouse-bench-")
    bench = Bench(args, work)
    busy = [p for p in bench.ports.all() if not procs.port_free(p)]
    if busy:
        sys.exit(f"ports in use: {busy}; stop what holds them and run again")
    todo = variants(args.long)
    if args.only:
        names = set(args.only.split(","))
        todo = [v for v in todo if v.name in names]
    per_run = 1 + args.wrk_seconds + args.oha_seconds + 1.5
    log(f"{len(todo)} variants x {args.reps} repetitions, ~{len(todo) * args.reps * per_run / 60:.1f} min "
        f"of load tests; working folder {work}")
    data = {"date": today, "machine": machine(), "settings": {
        "reps": args.reps, "wrk_seconds": args.wrk_seconds, "oha_seconds": args.oha_seconds,
        "rate": args.rate, "connections": 50, "long": args.long, "seed": args.seed,
        "proxy_core": PROXY_CORE, "load_core": LOAD_CORE,
    }, "variants": [dataclasses.asdict(v) | {"key": v.key} for v in todo], "runs": [],
        "failures": [], "micro": {}, "startup": {}, "reload": None, "profiles": {}}
    try:
        bench.start_backends()
        if not args.skip_micro:
            log("criterion micro-benchmarks ...")
            try:
                warm, measure = (2, 5) if args.long else (1, 2)
                data["micro"] = micro.run(REPO, PROXY_CORE, warm, measure, Path(work) / "criterion.log")
            except subprocess.CalledProcessError as e:
                data["failures"].append(f"criterion: exit {e.returncode} (log {work}/criterion.log)")
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
        if not args.skip_profile:
            if profile.available():
                log("perf profile ...")
                for variant in PROFILED:
                    try:
                        data["profiles"][variant.name] = bench.profile(variant, 5)
                    except Exception as e:
                        data["failures"].append(f"profile {variant.name}: {e}")
            else:
                data["failures"].append("perf profile: `perf record -e cpu-clock` does not work here")
    finally:
        for proc in bench.backends.values():
            proc.stop()
    data["machine"]["load_end"] = os.getloadavg()
    data["seconds"] = time.monotonic() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = report.render(data)
    # A run of some variants only does not replace the day's full results.
    name = f"RESULTS-{today}{'-partial' if args.only else ''}"
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
