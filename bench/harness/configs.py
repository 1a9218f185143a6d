"""Configurations of the processes under test: Gatehouse YAML, nginx.conf, the TLS certificate
they share, and the request mixes for many APIs (a wrk Lua script and an oha URL file)."""

import dataclasses
import subprocess
from pathlib import Path

# The plugin chains measured: one plugin, and three.
PLUGINS_ONE = [("host-rewrite", '{ host: users.internal }')]
PLUGINS_THREE = PLUGINS_ONE + [
    ("headers", "{ request: { set: { x-env: bench } } }"),
    ("request-id", "{}"),
]
# One plugin that does nothing, built on each contract, with `on-request` and `on-response`
# called and changing nothing: on 0.1 the frozen fixture of `headers` with no header to set,
# copied next to the configuration as NOOP_0_1_FILE; on 0.2 `grant-probe` (plugins/dist) told
# to declare those two hooks and nothing else, copied as NOOP_0_2_FILE (0.2's `headers` declares
# only the hooks it has changes for, so with nothing to set it is never called).
# One request header set, by the standard `headers` component and by the Proxy-Wasm filter
# `filter-headers` (plugins/dist, copied as FILTER_FILE): the cost of each plugin kind.
SET_HEADER_COMPONENT = [("headers", "{ request: { set: { x-env: bench } } }")]
FILTER_FILE = "filter-headers.wasm"
SET_HEADER_FILTER = [(FILTER_FILE, "{ add: [x-env, bench] }, "
                      "grants: { request_headers: { write: [x-env] } }")]
NOOP_0_1_FILE = "headers-0.1.wasm"
NOOP_0_1 = [(NOOP_0_1_FILE, "{}")]
NOOP_0_2_FILE = "grant-probe.wasm"
NOOP_0_2 = [(NOOP_0_2_FILE, "{ hooks: [on-request, on-response] }")]
# Node steering: `canary` sending every request (one client address, all in the share) to the
# nodes tagged `canary` and naming `stable` for the others, on an upstream whose nodes alternate
# the two tags (`gatehouse_yaml(tags=True)`).
CANARY = [("canary", "{ tag: canary, stable_tag: stable, percent: 100 }")]
# The rate limiter counting every request (per client address, a limit never reached), as
# configured by default (no headers on the responses it lets through).
RATE_LIMIT = [("rate-limit", "{ limit: 1000000000, window: 1h }")]
# The JSON request validator with a small schema, for the request-body variants (their bodies are
# `json_order(n)` documents, which it accepts).
JSON_VALIDATOR = [(
    "json-validator",
    "{ schema: { type: object, required: [items], properties: { items: { type: array, items: "
    "{ type: object, required: [sku], properties: { sku: { type: string, maxLength: 16 }, "
    "qty: { type: integer, minimum: 1 } } } } } } }",
)]


def json_order(size):
    """A JSON document of about `size` bytes (at least 64) that `JSON_VALIDATOR` accepts."""
    items, n = [], 0
    while True:
        item = f'{{"sku":"sku-{n:06d}","qty":{n % 9 + 1}}}'
        if len('{"items":[]}') + sum(len(i) + 1 for i in items) + len(item) > size:
            break
        items.append(item)
        n += 1
    return '{"items":[' + ",".join(items) + "]}"


def wrk_post_lua(path, body):
    """A wrk script POSTing `body` (JSON) to `path`; the request is formatted once."""
    return f"""-- POSTs one JSON document of {len(body)} bytes.
local body = [[{body}]]
local req
function init(args)
  req = wrk.format("POST", "{path}", {{ ["Content-Type"] = "application/json" }}, body)
end
function request()
  return req
end
"""


def api_path(i, apis):
    """The request path of API `i` (one API: /bench/1; many: /svc{i}/items/1)."""
    return "/bench/1" if apis == 1 else f"/svc{i}/items/1"


@dataclasses.dataclass(frozen=True)
class Tls:
    """A TLS listener: its port and the PEM files of its certificate and key."""

    port: int
    cert: Path
    key: Path


def make_certificate(folder):
    """A self-signed P-256 certificate for localhost and 127.0.0.1, made now with openssl, valid
    90 days (no expiry warning from Gatehouse); returns (certificate, key) paths in `folder`."""
    cert, key = Path(folder) / "tls-cert.pem", Path(folder) / "tls-key.pem"
    subprocess.run([
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "90", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    ], capture_output=True, check=True)
    key.chmod(0o600)
    return cert, key


def gatehouse_yaml(ports, backend_port, apis=1, nodes=2, plugins=(), description="bench", tls=None,
                   methods=("GET",), tags=False, http=()):
    """A Gatehouse configuration: one worker thread, one upstream of `nodes` loopback addresses
    (127.0.0.1 .. 127.0.0.N, all reaching the backend bound to 0.0.0.0), `apis` APIs on it, each
    with the `plugins` chain. With `tls`, a TLS listener too, offering HTTP/2 and HTTP/1.1 by
    ALPN; its certificate must lie in the configuration's folder (`instance.file_roots`). With
    `tags`, odd nodes are tagged `stable` and even ones `canary`; `http` lines go under
    `instance.http`."""
    lines = [
        "instance:",
        "  id: bench",
        "  type: dedicated",
        "  vpc: vpc-bench",
        f'  listen: ["127.0.0.1:{ports.proxy}"]',
        f'  metrics: "127.0.0.1:{ports.metrics}"',
        f'  admin: "127.0.0.1:{ports.admin}"',
        "  threads: 1",
    ]
    if http:
        lines += ["  http:", *(f"    {line}" for line in http)]
    if tls:
        lines += [
            "  tls:",
            f'    listen: ["127.0.0.1:{tls.port}"]',
            f"    certificates: [{{ cert_file: {tls.cert.name}, key_file: {tls.key.name} }}]",
            "    http2: true",
        ]
    lines += [
        "vpcs:",
        '  - { id: vpc-bench, cidrs: ["127.0.0.0/8"] }',
        "upstreams:",
        "  - name: backend",
        "    vpc: vpc-bench",
        f"    description: {description}",
        "    protocol: http",
        "    nodes:",
    ]
    def tagged(n):
        return (", tags: [canary]" if n % 2 == 0 else ", tags: [stable]") if tags else ""

    lines += [f"      - {{ host: 127.0.0.{n}, port: {backend_port}, weight: 10{tagged(n)} }}"
              for n in range(1, nodes + 1)]
    lines += ["services:", "  - name: bench", "    apis:"]
    chain = ""
    if plugins:
        # a name ending in .wasm is a component file next to the configuration
        chain = ", plugins: [" + ", ".join(
            f"{{ {'path' if n.endswith('.wasm') else 'name'}: {n}, config: {c} }}"
            for n, c in plugins
        ) + "]"
    for i in range(apis):
        pattern = "/bench/{id}" if apis == 1 else f"/svc{i}/items/{{id}}"
        lines.append(
            f'      - {{ name: a{i}, path: "{pattern}", methods: [{", ".join(methods)}], '
            f"backend: {{ upstream: backend }}{chain} }}"
        )
    return "\n".join(lines) + "\n"


# What Gatehouse sends every upstream request of an untrusted client, as nginx directives: the
# like-for-like variant of the nginx peer.
NGINX_FORWARDING = """
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header Forwarded "for=$remote_addr;host=\\"$http_host\\";proto=$scheme";"""


def nginx_conf(prefix, proxy_port, backend_port, tls=None, forwarding=False, keepalive=64):
    """nginx as a fair reverse-proxy peer: one worker, kept-alive upstream connections, no access
    log, no per-connection request cap on either side (HTTP/2 connections included). With `tls`,
    a TLS listener too, offering HTTP/2 and HTTP/1.1 by ALPN, TLS 1.2 and 1.3 like Gatehouse.
    With `forwarding`, it sets the forwarding headers Gatehouse sets; `keepalive` idle upstream
    connections are kept."""
    listen_tls = ""
    if tls:
        # nginx 1.22 syntax; from 1.25.1 `http2 on;` replaces the listen parameter
        listen_tls = f"""
        listen 127.0.0.1:{tls.port} ssl http2;
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};
        ssl_protocols TLSv1.2 TLSv1.3;"""
    return f"""worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive {keepalive};
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{proxy_port};{listen_tls}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";{NGINX_FORWARDING if forwarding else ""}
        }}
    }}
}}
"""


# The gateways a user would pick instead, each set up as a fair peer of nginx above: one worker
# on the proxy core, kept-alive upstream connections (up to 64 idle, like nginx), no access log,
# nothing else in the request path.
PINGAP_VERSION = "0.16.1"


def haproxy_cfg(proxy_port, backend_port):
    """HAProxy (Debian's 2.6): one thread, HTTP mode, upstream connections kept and shared
    between client connections (`http-reuse always`), no log."""
    return f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend bench
    bind 127.0.0.1:{proxy_port}
    default_backend backend
backend backend
    server node 127.0.0.1:{backend_port} pool-max-conn 64
"""


def caddyfile(proxy_port, backend_port):
    """Caddy (Debian's 2.6; GOMAXPROCS=1 in its environment): no admin endpoint, no automatic
    HTTPS, `reverse_proxy` keeping up to 64 idle upstream connections, no access log (Caddy
    logs requests only when `log` is set)."""
    return f"""{{
    admin off
    auto_https off
}}
http://127.0.0.1:{proxy_port} {{
    reverse_proxy 127.0.0.1:{backend_port} {{
        transport http {{
            keepalive 60s
            keepalive_idle_conns 64
            keepalive_idle_conns_per_host 64
        }}
    }}
}}
"""


def pingap_toml(prefix, proxy_port, backend_port):
    """Pingap (a Pingora-based gateway, `cargo install pingap --version PINGAP_VERSION`): one
    thread without work stealing, like bare Pingora and Gatehouse; no access log, no plugins, no
    health check; its upstream pool is Pingora's (128 idle connections per thread)."""
    return f"""[basic]
threads = 1
work_stealing = false
pid_file = "{prefix}/pingap.pid"
upgrade_sock = "{prefix}/pingap_upgrade.sock"

[upstreams.backend]
addrs = ["127.0.0.1:{backend_port}"]

[locations.bench]
upstream = "backend"

[servers.bench]
addr = "127.0.0.1:{proxy_port}"
locations = ["bench"]
"""


def spread(apis):
    """API indexes in a scattered order (a stride coprime with the count), so consecutive
    requests hit distant parts of the routing table."""
    stride = 7919 if apis % 7919 else 7907
    return [(k * stride) % apis for k in range(apis)]


def wrk_lua(apis):
    """A wrk script that cycles through every API's path; the requests are formatted once."""
    paths = ", ".join(f'"{api_path(i, apis)}"' for i in spread(apis))
    return f"""-- Cycles through {apis} API paths; requests are formatted once in init.
local paths = {{ {paths} }}
local requests = {{}}
local n = 0
function init(args)
  for i, p in ipairs(paths) do requests[i] = wrk.format("GET", p) end
end
function request()
  n = n % #requests + 1
  return requests[n]
end
"""


def oha_urls(port, apis):
    """One URL per API, for `oha --urls-from-file`."""
    return "".join(f"http://127.0.0.1:{port}{api_path(i, apis)}\n" for i in spread(apis))
