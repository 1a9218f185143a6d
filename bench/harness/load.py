"""The load generators, pinned to the load core with one thread each: wrk for the maximum
throughput (closed loop), oha for latency percentiles at a fixed rate (open loop, corrected for
coordinated omission)."""

import json
import re
import subprocess


def wrk(url, seconds, core, connections=50, script=None):
    """Runs `wrk -t1 -cN -dS`; returns requests, requests/s and errors (socket errors and
    non-2xx/3xx answers)."""
    argv = ["taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    if script:
        argv += ["-s", script]
    out = subprocess.run(argv + [url], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return {"requests": requests, "rps": rps, "errors": errors}


def oha(url, seconds, rate, core, connections=50, urls_file=None):
    """Runs oha at a fixed rate with latency correction; returns the achieved rate, the success
    rate and the p50/p99/p99.9 latencies in microseconds."""
    argv = [
        "taskset", "-c", str(core), "oha", "--no-tui", "--output-format", "json",
        "--worker-threads", "1", "-c", str(connections), "-z", f"{seconds}s",
        "-q", str(rate), "--latency-correction",
    ]
    argv += ["--urls-from-file", urls_file] if urls_file else [url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    percentiles = data["latencyPercentiles"]
    statuses = data.get("statusCodeDistribution") or {}
    return {
        "rps": data["summary"]["requestsPerSec"],
        "success": data["summary"]["successRate"],
        "non_200": sum(n for code, n in statuses.items() if code != "200"),
        "p50_us": percentiles["p50"] * 1e6,
        "p99_us": percentiles["p99"] * 1e6,
        "p999_us": percentiles["p99.9"] * 1e6,
    }
