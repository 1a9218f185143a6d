#!/usr/bin/env bash
# Gatehouse benchmark, one command: installs the load tools it lacks, builds Gatehouse and the
# bench binaries in release mode, then runs every variant (bench/run.py) and writes
# bench/results/RESULTS-<date>.md. Usage: bench/run.sh [--long] [--tls] [run.py options, see --help]
# `bench/run.sh tls [run.py options]` runs only the HTTPS and HTTP/2 variants and their plain peers
# (run.py --tls-only, about 5 minutes), writing bench/results/RESULTS-<date>-tls.md.
# `bench/run.sh quick` is the regression guard to run before a commit: Gatehouse / bare Pingora in
# CPU per request, 0 B and 1 KiB, and one plugin against none, 5 interleaved repetitions (about 2 minutes after the builds).
# `bench/run.sh fleet [fleet.py options]` measures how fast a change through one instance's admin
# API serves on two others following the same etcd (bench/fleet.py), writing FLEET-<date>.md.
# `bench/run.sh allocations` counts heap allocations per request (uprobes, about 1 minute), writing
# bench/results/RESULTS-<date>-allocations.md.
# `bench/run.sh peers [run.py options]` measures the gateways a user would pick instead, side by side
# with nginx, bare Pingora and Gatehouse: HAProxy and Caddy (Debian) and Pingap (a Pingora-based
# gateway, `cargo install`ed at a pinned version), writing bench/results/RESULTS-<date>-peers.md.
# `bench/run.sh engine [run.py options]` maps where Pingora spends more than nginx: bare Pingora
# with each setting that can change from outside the engine, system calls per request and
# profiles of nginx, bare Pingora and Gatehouse, writing bench/results/RESULTS-<date>-engine.md.
# `bench/run.sh health [health.py options]` runs the upstream-health soak and the cost of active
# checks instead (bench/health.py, about 2 minutes), writing bench/results/HEALTH-<date>.md.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages: wrk, nginx, h2load and openssl are required (the last two for the HTTPS and
# HTTP/2 variants); perf is optional (the profile is skipped without it).
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v openssl >/dev/null || missing+=(openssl)
command -v taskset >/dev/null || missing+=(util-linux)
command -v etcd >/dev/null || missing+=(etcd-server)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update
    as_root apt-get install -y "${missing[@]}"
fi
if [ "${1:-}" = peers ]; then
    peers=()
    command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || peers+=(haproxy)
    command -v caddy >/dev/null || peers+=(caddy)
    if [ ${#peers[@]} -gt 0 ]; then
        log "installing ${peers[*]}"
        as_root apt-get update
        as_root apt-get install -y "${peers[@]}"
    fi
fi
if ! command -v perf >/dev/null; then
    log "installing linux-perf (optional)"
    as_root apt-get install -y linux-perf || echo "linux-perf not installed: no profile" >&2
fi
export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"

if [ "${1:-}" != quick ] && [ "${1:-}" != fleet ] && [ "${1:-}" != allocations ] && ! command -v oha >/dev/null; then
    log "installing oha (cargo install, several minutes the first time)"
    cargo install oha --locked
fi

# Pingap, pinned where its configuration is written (bench/harness/configs.py). It declares
# Rust 1.96 but builds with 1.95 (about 11 minutes on 2 cores, once).
PINGAP_VERSION=$(cd bench && python3 -c 'from harness.configs import PINGAP_VERSION; print(PINGAP_VERSION)')
if [ "${1:-}" = peers ] && ! pingap --version 2>/dev/null | grep -qw "$PINGAP_VERSION"; then
    log "installing pingap $PINGAP_VERSION (cargo install, about 11 minutes the first time)"
    cargo install pingap --version "$PINGAP_VERSION" --locked --ignore-rust-version
fi

# One build at a time; each is incremental after the first.
log "building gatehouse (release)"
cargo build --release -p gatehouse
log "building bench-backend and bare-pingora (release)"
cargo build --release -p gatehouse-bench --bins
if [ "${1:-}" = health ]; then
    shift
    log "running the upstream-health soak (about 2 minutes)"
    exec python3 bench/health.py "$@"
fi
if [ "${1:-}" = quick ]; then
    shift
    log "running the regression guard: Gatehouse / bare Pingora, one plugin / none (about 2 minutes)"
    exec taskset -c 1 python3 bench/run.py --quick "$@"
fi
if [ "${1:-}" = fleet ]; then
    shift
    log "running the fleet propagation benchmark (about 1 minute)"
    exec python3 bench/fleet.py "$@"
fi
if [ "${1:-}" = allocations ]; then
    shift
    log "counting heap allocations per request with uprobes (about 1 minute)"
    exec taskset -c 1 python3 bench/run.py --allocations-only "$@"
fi
if [ "${1:-}" = peers ]; then
    shift
    log "running the peers: nginx, HAProxy, bare Pingora, Gatehouse, Pingap, Caddy (about 8 minutes)"
    exec taskset -c 1 python3 bench/run.py --peers "$@"
fi
if [ "${1:-}" = engine ]; then
    shift
    log "running the engine map (about 9 minutes)"
    exec taskset -c 1 python3 bench/run.py --engine "$@"
fi
if [ "${1:-}" = tls ]; then
    shift
    log "running the HTTPS and HTTP/2 variants (about 5 minutes; --long about 55)"
    exec taskset -c 1 python3 bench/run.py --tls-only "$@"
fi
log "building the criterion benchmarks"
cargo bench -p gatehouse-bench --benches --no-run

log "running (the load tests take about 12 minutes, --tls 4.5 more; --long about 45)"
# The driver itself stays off the proxy core: core 0 is for the proxy under test.
exec taskset -c 1 python3 bench/run.py "$@"
