"""The criterion micro-benchmarks of bench/benches: run them, then read criterion's estimates."""

import glob
import json
import os
import subprocess

# The benchmarks the report shows, by criterion id, with a short description.
KNOWN = {
    "route_lookup/10": "route lookup, 10 APIs",
    "route_lookup/10000": "route lookup, 10,000 APIs",
    "select_pick/2": "node pick, 2 nodes",
    "select_pick/200": "node pick, 200 nodes",
    "forwarding_headers/first_request": "forwarding headers, a connection's first request",
    "forwarding_headers/kept_alive": "forwarding headers, a kept-alive request",
    "plugin_call/host-rewrite/warm": "host-rewrite on-request, warm instance",
    "plugin_call/host-rewrite/fresh": "host-rewrite on-request, fresh instance per call",
    "plugin_call/headers/warm": "headers on-request, warm instance",
    "plugin_call/request-id/warm": "request-id on-request, warm instance",
    "plugin_hook/on-request/host-rewrite": "host-rewrite on-request, 20 request headers, warm",
    "plugin_hook/on-request/headers": "headers on-request, 20 request headers, warm",
    "plugin_hook/on-response/headers": "headers on-response, 20 + 10 headers, warm",
    "plugin_hook/on-upstream-request/no-op": "grant-probe on-upstream-request changing nothing, 20 request headers, warm",
    "plugin_hook/on-response-body/append-1k": "grant-probe on-response-body appending to a 1 KiB body, warm (instance held first)",
}


def target_dir(repo):
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out)["target_directory"]


def run(repo, core, warm_up_s, measure_s, log_path):
    """Runs every bench of gatehouse-bench pinned to `core`; returns {id: estimates in ns}."""
    argv = [
        "taskset", "-c", str(core), "cargo", "bench", "-p", "gatehouse-bench", "--benches", "--",
        "--warm-up-time", str(warm_up_s), "--measurement-time", str(measure_s),
    ]
    with open(log_path, "wb") as log:
        subprocess.run(argv, cwd=repo, stdout=log, stderr=subprocess.STDOUT, check=True)
    return read(target_dir(repo))


def read(target):
    """Median and its 95 % interval, in ns, of every known benchmark criterion has results for."""
    results = {}
    pattern = os.path.join(target, "criterion", "**", "new", "benchmark.json")
    for meta_path in glob.glob(pattern, recursive=True):
        with open(meta_path) as f:
            full_id = json.load(f)["full_id"]
        if full_id not in KNOWN:
            continue
        with open(os.path.join(os.path.dirname(meta_path), "estimates.json")) as f:
            median = json.load(f)["median"]
        results[full_id] = {
            "ns": median["point_estimate"],
            "lo": median["confidence_interval"]["lower_bound"],
            "hi": median["confidence_interval"]["upper_bound"],
        }
    return results
