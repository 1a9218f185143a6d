"""Configurations of the processes under test: Gatehouse YAML, nginx.conf, and the request mixes
for many APIs (a wrk Lua script and an oha URL file)."""

# The plugin chains measured: one plugin, and three.
PLUGINS_ONE = [("host-rewrite", '{ host: users.internal }')]
PLUGINS_THREE = PLUGINS_ONE + [
    ("headers", "{ request: { set: { x-env: bench } } }"),
    ("request-id", "{}"),
]


def api_path(i, apis):
    """The request path of API `i` (one API: /bench/1; many: /svc{i}/items/1)."""
    return "/bench/1" if apis == 1 else f"/svc{i}/items/1"


def gatehouse_yaml(ports, backend_port, apis=1, nodes=2, plugins=(), description="bench"):
    """A Gatehouse configuration: one worker thread, one upstream of `nodes` loopback addresses
    (127.0.0.1 .. 127.0.0.N, all reaching the backend bound to 0.0.0.0), `apis` APIs on it, each
    with the `plugins` chain."""
    lines = [
        "instance:",
        "  id: bench",
        "  type: dedicated",
        "  vpc: vpc-bench",
        f'  listen: ["127.0.0.1:{ports.proxy}"]',
        f'  metrics: "127.0.0.1:{ports.metrics}"',
        f'  admin: "127.0.0.1:{ports.admin}"',
        "  threads: 1",
        "vpcs:",
        '  - { id: vpc-bench, cidrs: ["127.0.0.0/8"] }',
        "upstreams:",
        "  - name: backend",
        "    vpc: vpc-bench",
        f"    description: {description}",
        "    protocol: http",
        "    nodes:",
    ]
    lines += [f"      - {{ host: 127.0.0.{n}, port: {backend_port}, weight: 10 }}" for n in range(1, nodes + 1)]
    lines += ["services:", "  - name: bench", "    apis:"]
    chain = ""
    if plugins:
        chain = ", plugins: [" + ", ".join(f"{{ name: {n}, config: {c} }}" for n, c in plugins) + "]"
    for i in range(apis):
        pattern = "/bench/{id}" if apis == 1 else f"/svc{i}/items/{{id}}"
        lines.append(
            f'      - {{ name: a{i}, path: "{pattern}", methods: [GET], '
            f"backend: {{ upstream: backend }}{chain} }}"
        )
    return "\n".join(lines) + "\n"


def nginx_conf(prefix, proxy_port, backend_port):
    """nginx as a fair reverse-proxy peer: one worker, kept-alive upstream connections, no access
    log, no per-connection request cap on either side."""
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
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{proxy_port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
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
