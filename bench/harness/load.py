"""The load generators, pinned to the load core with one thread each: wrk for the maximum
throughput over HTTP/1.1 and HTTPS, h2load for the same over HTTP/2 (closed loop), oha for
latency percentiles at a fixed rate (open loop, corrected for coordinated omission), and
`openssl s_time` for the cost of a new TLS connection."""

import json
import re
import shutil
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


# TLS 1.3 suites in OpenSSL's default order, which wrk and `openssl s_time` use: h2load's own
# default prefers AES-128, and the HTTPS and HTTP/2 variants should encrypt alike.
TLS13_CIPHERS = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"


def h2load(url, seconds, core, connections, streams):
    """Runs `h2load -t1 -cN -mM -D S` over HTTP/2 (refusing any other protocol); returns
    requests, requests/s, errors (failed requests, HTTP-level failures included, and non-2xx
    answers) and the TLS session it negotiated."""
    argv = ["taskset", "-c", str(core), "h2load", "-t1", f"-c{connections}", f"-m{streams}",
            f"-D{seconds}", "--npn-list=h2", f"--tls13-ciphers={TLS13_CIPHERS}", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    protocol = re.search(r"Application protocol: (\S+)", out)
    if not protocol or protocol.group(1) != "h2":
        raise RuntimeError(f"h2load did not speak HTTP/2: {protocol.group(1) if protocol else 'no TLS'}")
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    done, succeeded, failed = (int(g) for g in counts.groups())
    ok = int(re.search(r"status codes: (\d+) 2xx", out).group(1))
    session = [re.search(rf"{k}: (.+)", out) for k in ("TLS Protocol", "Cipher", "Server Temp Key")]
    return {
        "requests": done,
        "rps": float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1)),
        "errors": failed + max(0, succeeded - ok),
        "tls": ", ".join(m.group(1).strip() for m in session if m),
    }


def oha_available():
    return shutil.which("oha") is not None


def oha(url, seconds, rate, core, connections=50, urls_file=None, insecure=False, http2_streams=0):
    """Runs oha at a fixed rate with latency correction; returns the achieved rate, the success
    rate and the p50/p99/p99.9 latencies in microseconds. `http2_streams` > 0: HTTP/2 with that
    many streams on each of the connections."""
    argv = [
        "taskset", "-c", str(core), "oha", "--no-tui", "--output-format", "json",
        "--worker-threads", "1", "-c", str(connections), "-z", f"{seconds}s",
        "-q", str(rate), "--latency-correction",
    ]
    if insecure:
        argv += ["--insecure"]
    if http2_streams:
        argv += ["--http2", "-p", str(http2_streams)]
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


def s_time(host, port, path, seconds, core):
    """Runs `openssl s_time -new -www PATH`: one connection after another, each a full TLS
    handshake (no resumption), one HTTP/1.0 request and a close; returns the connections
    completed. Raises when the answers carried nothing (no request got through)."""
    argv = ["taskset", "-c", str(core), "openssl", "s_time", "-connect", f"{host}:{port}",
            "-new", "-www", path, "-time", str(seconds)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    connections = int(re.search(r"(\d+) connections in [\d.]+s;", out).group(1))
    read = int(re.search(r"(\d+) bytes read per connection", out).group(1))
    if not connections or not read:
        raise RuntimeError(f"openssl s_time: {connections} connections, {read} bytes read each")
    return connections
