#!/usr/bin/env bash
# Schema-driven fuzzing of the admin API: starts target/debug/gatehouse on a scratch configuration
# and runs schemathesis (every check, a bounded number of examples) against the OpenAPI document it
# serves at GET /openapi.json. Any failed check, any schemathesis error, or a document schemathesis
# cannot use as written makes this script fail. It builds nothing: CI runs it after
# `cargo test --workspace`, which leaves the debug binary behind.
#
#   FUZZ_MAX_EXAMPLES  examples per operation and phase (default 80: about 2 minutes on 2 cores)
#   FUZZ_STATEFUL_EXAMPLES  stateful scenarios' budget (default three times FUZZ_MAX_EXAMPLES)
#   FUZZ_SEED          replay a run: the seed it printed (default random)
#   GATEHOUSE_BIN      the gateway binary (default target/debug/gatehouse)
#   SCHEMATHESIS_VENV  where schemathesis is (or gets) installed (default target/schemathesis-venv)
#   FUZZ_SCHEMA        test this document file instead of the served one (which is embedded at
#                      build time), e.g. gateway/admin/openapi.json while editing it
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${GATEHOUSE_BIN:-target/debug/gatehouse}
venv=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
version=${SCHEMATHESIS_VERSION:-4.32.5}
examples=${FUZZ_MAX_EXAMPLES:-80}
stateful_examples=${FUZZ_STATEFUL_EXAMPLES:-$((examples * 3))}

if [ ! -x "$bin" ]; then
  echo "fuzz-admin: $bin is missing; build it first (cargo build -p gatehouse, or cargo test --workspace)" >&2
  exit 1
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

# schemathesis, pinned, in its own virtual environment.
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF " $version"; then
  echo "fuzz-admin: installing schemathesis $version into $venv"
  if [ ! -x "$venv/bin/pip" ]; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      # Debian ships venv (ensurepip) separately.
      rm -rf "$venv"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    fi
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"
fi
st=$(cd "$venv/bin" && pwd)/schemathesis

tmp=$(mktemp -d)
gateway=
cleanup() {
  if [ -n "$gateway" ] && kill -0 "$gateway" 2>/dev/null; then
    kill "$gateway" 2>/dev/null || true
    wait "$gateway" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports (held together while chosen, so they differ) and a random token.
read -r listen metrics admin < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
')
token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')

# A small configuration named like config/gatehouse.yaml, whose names the document's examples use.
cat >"$tmp/gatehouse.yaml" <<EOF
instance:
  id: ins-fuzz
  type: dedicated
  vpc: vpc-main
  listen: ["127.0.0.1:$listen"]
  metrics: "127.0.0.1:$metrics"
  admin: "127.0.0.1:$admin"
  admin_token: $token
  threads: 2
vpcs:
  - id: vpc-main
    cidrs: ["127.0.0.0/8", "10.0.0.0/8"]
upstreams:
  - name: user_service
    vpc: vpc-main
    protocol: http
    nodes:
      - { host: 127.0.0.1, port: 9101, weight: 1 }
services:
  - name: shop
    apis:
      - name: get_user
        path: /users/{id}
        methods: [GET]
        backend: { upstream: user_service, path: "/v1/users/{id}" }
EOF
chmod 600 "$tmp/gatehouse.yaml"

"$bin" run -c "$tmp/gatehouse.yaml" >"$tmp/gateway.log" 2>&1 &
gateway=$!

# Wait until the admin API answers (at most 30 s).
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
ready=
deadline=$((SECONDS + 30))
while [ "$SECONDS" -lt "$deadline" ]; do
  if ! kill -0 "$gateway" 2>/dev/null; then
    break
  fi
  if python3 - "$admin" "$token" 2>/dev/null <<'EOF'
import sys, urllib.request
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/status",
                                 headers={"Authorization": f"Bearer {sys.argv[2]}"})
with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=2) as answer:
    sys.exit(0 if answer.status == 200 else 1)
EOF
  then
    ready=1
    break
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "fuzz-admin: the gateway's admin API did not come up; its log:" >&2
  cat "$tmp/gateway.log" >&2
  exit 1
fi

# Which answers the checks accept besides their defaults, and why:
# - positive_data_acceptance, on creating and replacing upstreams, services and APIs: 400. A body
#   the schemas accept can still break rules that involve the rest of the configuration (its VPC
#   is not declared, its upstream does not exist, its path and method are served already, a node
#   address lies outside the VPC, a plugin file does not exist or a plugin refuses its config),
#   which JSON Schema cannot express. 412 there and on DELETE: If-Match is generated freely, and
#   a tag that is not the current ETag is refused by design.
# - negative_data_rejection: 412, the same refusal, checked before the body's content.
cat >"$tmp/schemathesis.toml" <<'EOF'
[warnings]
# validation_mismatch only repeats the positive_data_acceptance note above.
display = ["missing_auth", "missing_test_data", "base_url_mismatch", "missing_deserializer",
           "unused_openapi_auth", "unsupported_regex", "method_not_allowed", "unmatched_filter",
           "unresolvable_reference", "rate_limited"]
# A document schemathesis cannot use as written fails the run, as does a token it could not use.
fail-on = ["missing_auth", "missing_deserializer", "unsupported_regex", "unresolvable_reference",
           "method_not_allowed"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "412", "413", "415", "422", "428", "429"]

[[operations]]
include-method = ["POST", "PUT"]
include-path-regex = "^/(upstreams|services)"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "412"]

[[operations]]
include-method = "DELETE"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "412"]
EOF
# Stateful tests chain real changes: create, read, replace, delete. Their checks take a successful
# POST for a creation and a successful DELETE for a deletion, which a dry run (200, nothing
# applied) is not, so that phase runs on its own with dry_run=false; the other phases try dry runs.
cp "$tmp/schemathesis.toml" "$tmp/stateful.toml"
cat >>"$tmp/stateful.toml" <<'EOF'

[parameters]
"query.dry_run" = "false"
EOF

seed=${FUZZ_SEED:-$(python3 -c 'import secrets; print(secrets.randbits(64))')}
# max_response_time (part of `all`) defaults to 10 s. A debug build compiles each standard plugin's
# WebAssembly component on its first use, about 2 s apiece on 2 cores, and one generated API may
# list all seven: the limit is 60 s, the request timeout twice that.
args=(--checks all --max-response-time 60 --request-timeout 120 --seed "$seed"
  -H "Authorization: Bearer $token")
location="http://127.0.0.1:$admin/openapi.json"
if [ -n "${FUZZ_SCHEMA:-}" ]; then
  location=$(cd "$(dirname "$FUZZ_SCHEMA")" && pwd)/$(basename "$FUZZ_SCHEMA")
  args+=(--url "http://127.0.0.1:$admin")
fi
rc=0
for run in "schemathesis.toml examples,coverage,fuzzing $examples" "stateful.toml stateful $stateful_examples"; do
  read -r config phases count <<<"$run"
  echo "fuzz-admin: phases $phases, at most $count examples each, seed $seed"
  (cd "$tmp" && timeout 600 "$st" --config-file "$config" run "$location" --phases "$phases" \
    --max-examples "$count" "${args[@]}") || rc=$?
  if ! kill -0 "$gateway" 2>/dev/null; then
    echo "fuzz-admin: the gateway exited during the run; its log:" >&2
    tail -n 50 "$tmp/gateway.log" >&2
    exit 1
  fi
done
if [ "$rc" -ne 0 ]; then
  echo "fuzz-admin: the end of the gateway's log:" >&2
  tail -n 20 "$tmp/gateway.log" >&2
  echo "fuzz-admin: failed (exit $rc); run again with FUZZ_SEED=$seed to replay the same inputs" >&2
fi
exit "$rc"
