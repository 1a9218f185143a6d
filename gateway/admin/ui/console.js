// The Gatehouse console: a page of the admin listener that drives the admin API.
//
// The token lives in sessionStorage only (gone when the tab closes) and goes in the
// Authorization header of each call, never in a cookie, so another site cannot act with it. Every
// text from the API reaches the page through textContent, never as HTML. Field descriptions and
// limits come from the API's OpenAPI document.
"use strict";

const TOKEN_KEY = "gatehouse-admin-token";
const main = document.getElementById("main");
let openapi = null;

// --- the admin API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

async function api(method, path, body, headers) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const init = { method, headers: Object.assign({ Accept: "application/json" }, headers || {}) };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = { message: text };
  }
  if (resp.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("The gateway refused the token: log in again.");
    throw new ApiError(401, data);
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return { data, etag: resp.headers.get("ETag") };
}

async function schema(name) {
  if (!openapi) openapi = (await api("GET", "/openapi.json")).data;
  return openapi.components.schemas[name] || { properties: {} };
}

// --- building the page -------------------------------------------------------------------------

// An element with attributes (`on*` functions become listeners) and children (strings are text).
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function page(title, ...content) {
  document.title = `${title} · Gatehouse console`;
  main.replaceChildren(h("h1", {}, title), ...content);
  main.focus();
  for (const a of document.querySelectorAll("nav a")) {
    const current = location.hash.startsWith(a.getAttribute("href"));
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function notice(text, kind) {
  return h("div", { class: `notice ${kind || ""}`, role: kind === "bad" ? "alert" : "status" }, text);
}

function fail(e) {
  if (e instanceof ApiError && e.status === 401) return;
  page("Something went wrong", notice(e.message, "bad"));
}

let fieldCount = 0;

// A labelled input with its hint and the place for its error; `path` is the key a problem
// path names inside the edited resource (`nodes[0].port`).
function field(label, input, hint, path) {
  const id = input.id || `f${++fieldCount}`;
  input.id = id;
  const hintEl = hint ? h("div", { class: "hint", id: `${id}-hint` }, hint) : null;
  const errEl = h("div", { class: "error", id: `${id}-error`, dataset: { errorFor: path || "" } });
  input.setAttribute("aria-describedby", [hintEl && hintEl.id, errEl.id].filter(Boolean).join(" "));
  if (path) input.dataset.path = path;
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hintEl, errEl);
}

function describe(prop) {
  if (!prop) return "";
  const parts = [];
  if (prop.description) parts.push(prop.description.replace(/`/g, ""));
  if (prop.minimum !== undefined && prop.maximum !== undefined) parts.push(`${prop.minimum} to ${prop.maximum}.`);
  if (prop.default !== undefined && prop.default !== null) parts.push(`Default ${prop.default}.`);
  return parts.join(" ");
}

// Shows each problem of a refused change next to the field its path names, when the path is
// inside the edited resource (`prefix`); the others go to the top of the form with their path.
function showProblems(form, problems, prefix) {
  for (const el of form.querySelectorAll(".error")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const top = form.querySelector(".form-problems");
  top.replaceChildren();
  for (const p of problems) {
    const text = p.fix ? `${p.message} (fix: ${p.fix})` : p.message;
    let rest = prefix !== null && p.path.startsWith(prefix) ? p.path.slice(prefix.length).replace(/^\./, "") : null;
    let placed = false;
    while (rest !== null && rest !== "" && !placed) {
      const input = form.querySelector(`[data-path="${CSS.escape(rest)}"]`);
      if (input) {
        input.setAttribute("aria-invalid", "true");
        const err = document.getElementById(`${input.id}-error`);
        err.textContent = err.textContent ? `${err.textContent} ${text}` : text;
        placed = true;
      } else {
        const parent = rest.replace(/(\.[^.[\]]+|\[\d+\])$/, "");
        rest = parent === rest ? "" : parent;
      }
    }
    if (!placed) top.append(h("li", {}, h("code", {}, p.path), `: ${text}`));
  }
  const first = form.querySelector("[aria-invalid='true']") || (top.children.length && top);
  if (top.children.length) top.prepend(h("li", { class: "error" }, "The gateway refused the change; nothing changed."));
  if (first && first.focus) first.focus();
}

// Runs a change as a dry run first, shows what it would change, and applies it on confirmation.
async function submitChange(form, method, path, body, headers, prefix, done) {
  const status = form.querySelector(".form-status");
  status.replaceChildren();
  try {
    const dry = await api(method, `${path}?dry_run=true`, body, headers);
    showProblems(form, [], prefix);
    const apply = h("button", { type: "button", id: "apply" }, "Apply");
    const cancel = h("button", { type: "button", class: "secondary" }, "Cancel");
    cancel.addEventListener("click", () => status.replaceChildren());
    apply.addEventListener("click", async () => {
      try {
        const r = await api(method, path, body, headers);
        done(r);
      } catch (e) {
        applyError(form, e, prefix);
      }
    });
    status.append(
      h("div", { class: "notice", role: "status" },
        h("p", {}, "The change is valid. It would change:"),
        h("pre", {}, JSON.stringify(dry.data.changes, null, 2)),
        h("div", { class: "actions" }, apply, cancel)),
    );
    apply.focus();
  } catch (e) {
    applyError(form, e, prefix);
  }
}

function applyError(form, e, prefix) {
  const status = form.querySelector(".form-status");
  if (e instanceof ApiError && e.body.problems) {
    status.replaceChildren();
    showProblems(form, e.body.problems, prefix);
  } else if (e instanceof ApiError && e.status === 412) {
    status.replaceChildren(notice("Someone else changed the configuration after you opened this form: reload it to see their change, then make yours again.", "bad"));
  } else if (!(e instanceof ApiError && e.status === 401)) {
    status.replaceChildren(notice(e.message, "bad"));
  }
}

// --- login ---------------------------------------------------------------------------------------

function showLogin(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  const token = h("input", { type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "login" },
    message ? notice(message, "bad") : null,
    field("Admin token", token, "The gateway's instance.admin_token (or GATEHOUSE_ADMIN_TOKEN). It stays in this tab only."),
    h("button", { type: "submit" }, "Log in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, token.value);
    try {
      await api("GET", "/status");
      document.getElementById("nav").hidden = false;
      document.getElementById("logout").hidden = false;
      if (!location.hash || location.hash === "#/login") location.hash = "#/upstreams";
      else route();
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) showLogin(e.message);
    }
  });
  page("Log in to the Gatehouse console", form);
  token.focus();
}

// --- upstreams -------------------------------------------------------------------------------

// API counts per upstream, from the services.
function boundCounts(services) {
  const counts = {};
  for (const s of services) for (const a of s.apis || []) {
    const u = a.backend && a.backend.upstream;
    if (u) counts[u] = (counts[u] || 0) + 1;
  }
  return counts;
}

function healthSummary(report) {
  if (!report || (!report.active_checks && !report.passive_checks)) return "no health checks";
  const healthy = report.nodes.filter((n) => n.state === "HEALTHY").length;
  return `${healthy} of ${report.nodes.length} healthy${report.panic ? " (panic: all used)" : ""}`;
}

async function upstreamList() {
  const [{ data: upstreams }, { data: services }] = await Promise.all([api("GET", "/upstreams"), api("GET", "/services")]);
  const counts = boundCounts(services);
  const health = {};
  await Promise.all(upstreams.map(async (u) => {
    if (u.health_check) health[u.name] = (await api("GET", `/upstreams/${encodeURIComponent(u.name)}/health`)).data;
  }));
  const search = h("input", { type: "search", placeholder: "name, VPC, description or node" });
  const body = h("tbody");
  const render = () => {
    const q = search.value.trim().toLowerCase();
    body.replaceChildren(...upstreams
      .filter((u) => !q || [u.name, u.vpc, u.description || "", ...u.nodes.map((n) => `${n.host}:${n.port}`)].some((t) => t.toLowerCase().includes(q)))
      .map((u) => h("tr", {},
        h("td", {}, h("a", { href: `#/upstreams/${encodeURIComponent(u.name)}` }, u.name)),
        h("td", {}, u.vpc),
        h("td", {}, u.protocol),
        h("td", {}, String(u.nodes.length)),
        h("td", {}, healthSummary(health[u.name])),
        h("td", {}, h("a", { href: `#/upstreams/${encodeURIComponent(u.name)}/apis` }, String(counts[u.name] || 0))),
        h("td", {}, u.description || ""))));
  };
  search.addEventListener("input", render);
  render();
  page("VPC upstreams",
    h("div", { class: "toolbar" }, h("div", { class: "grow" }, field("Search", search)), h("a", { class: "button", href: "#/upstreams/new" }, "Create upstream")),
    h("table", {}, h("caption", { class: "hint" }, `${upstreams.length} upstream(s)`),
      h("thead", {}, h("tr", {}, ["Name", "VPC", "Protocol", "Nodes", "Node health", "Associated APIs", "Description"].map((t) => h("th", { scope: "col" }, t)))),
      body));
}

async function upstreamDetails(name, tab) {
  const [{ data: u }, { data: apis }] = await Promise.all([
    api("GET", `/upstreams/${encodeURIComponent(name)}`),
    api("GET", `/upstreams/${encodeURIComponent(name)}/apis`),
  ]);
  const health = u.health_check ? (await api("GET", `/upstreams/${encodeURIComponent(name)}/health`)).data : null;
  const states = {};
  for (const n of (health && health.nodes) || []) states[n.node] = n;
  const base = `#/upstreams/${encodeURIComponent(name)}`;
  const tabs = h("div", { class: "tabs", role: "navigation", "aria-label": "Upstream" },
    h("a", { href: base, "aria-current": tab === "nodes" ? "page" : null }, "Nodes"),
    h("a", { href: `${base}/apis`, "aria-current": tab === "apis" ? "page" : null }, `Associated APIs (${apis.length})`));
  const result = h("div", { id: "delete-result" });
  const del = h("button", { type: "button", class: "danger", id: "delete-upstream" }, "Delete");
  del.addEventListener("click", async () => {
    if (!confirm(`Delete the upstream ${name}?`)) return;
    try {
      await api("DELETE", `/upstreams/${encodeURIComponent(name)}`);
      location.hash = "#/upstreams";
    } catch (e) {
      if (e instanceof ApiError && e.body.error === "upstream_in_use") {
        result.replaceChildren(h("div", { class: "notice bad", role: "alert" },
          h("p", {}, e.message),
          h("ul", {}, e.body.apis.map((a) => h("li", {}, h("a", { href: apiHref(a.service, a.api) }, `${a.service}.${a.api}`), ` ${a.path}`)))));
      } else if (!(e instanceof ApiError && e.status === 401)) {
        result.replaceChildren(notice(e.message, "bad"));
      }
    }
  });
  const overview = h("dl", {},
    h("dt", {}, "VPC"), h("dd", {}, u.vpc),
    h("dt", {}, "Protocol"), h("dd", {}, u.protocol),
    h("dt", {}, "Host header"), h("dd", {}, u.host_header || "(the client's)"),
    h("dt", {}, "Retries"), h("dd", {}, String(u.retries || 5)),
    h("dt", {}, "Description"), h("dd", {}, u.description || ""),
    h("dt", {}, "Node health"), h("dd", {}, healthSummary(health)));
  const content = tab === "apis"
    ? (apis.length
      ? h("table", {}, h("thead", {}, h("tr", {}, ["API", "Methods", "Path", "Bound at"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, apis.map((a) => h("tr", {},
          h("td", {}, h("a", { href: apiHref(a.service, a.api) }, `${a.service}.${a.api}`)),
          h("td", {}, a.methods.join(" ")), h("td", {}, a.path), h("td", {}, a.bound_at || "")))))
      : h("p", {}, "No API uses this upstream."))
    : h("table", {}, h("thead", {}, h("tr", {}, ["Node", "Weight", "Tags", "State"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, u.nodes.map((n) => {
        const s = Object.values(states).find((x) => x.node.endsWith(`:${n.port}`) && x.node.startsWith(n.host)) || null;
        return h("tr", {}, h("td", {}, `${n.host}:${n.port}`), h("td", {}, String(n.weight ?? 10)), h("td", {}, (n.tags || []).join(", ")),
          h("td", { class: s ? `state-${s.state}` : "" }, s ? `${s.state}${s.reason ? ` (${s.reason})` : ""}` : "no health checks"));
      })));
  page(`Upstream ${name}`,
    h("div", { class: "actions" }, h("a", { class: "button", href: `${base}/edit` }, "Edit"), del),
    result, overview, tabs, content);
}

function nodeRow(list, n, i) {
  const host = h("input", { value: n.host || "", required: true });
  const port = h("input", { type: "number", min: 1, max: 65535, value: n.port ?? "", required: true });
  const weight = h("input", { type: "number", min: 0, max: 100, value: n.weight ?? 10 });
  const tags = h("input", { value: (n.tags || []).join(", ") });
  const remove = h("button", { type: "button", class: "secondary", "aria-label": `Remove node ${i + 1}` }, "Remove");
  const row = h("div", { class: "node", dataset: { node: "" } },
    field(`Node ${i + 1} host`, host, null, `nodes[${i}].host`),
    field("Port", port, null, `nodes[${i}].port`),
    field("Weight", weight, null, `nodes[${i}].weight`),
    field("Tags", tags, null, `nodes[${i}].tags`),
    remove);
  remove.addEventListener("click", () => {
    row.remove();
    renumber(list);
  });
  row.read = () => {
    const node = { host: host.value.trim(), port: Number(port.value), weight: weight.value === "" ? undefined : Number(weight.value) };
    const t = tags.value.split(",").map((x) => x.trim()).filter(Boolean);
    if (t.length) node.tags = t;
    return node;
  };
  return row;
}

// Rebuilds the node rows so that labels and problem paths follow their positions.
function renumber(list) {
  const nodes = [...list.querySelectorAll("[data-node]")].map((r) => r.read());
  list.replaceChildren(...nodes.map((n, i) => nodeRow(list, n, i)));
}

async function upstreamForm(name) {
  const [s, node, { data: all }, existing] = await Promise.all([
    schema("Upstream"), schema("Node"), api("GET", "/upstreams"),
    name ? api("GET", `/upstreams/${encodeURIComponent(name)}`) : Promise.resolve(null),
  ]);
  const u = existing ? existing.data : { protocol: "http", retries: 5, nodes: [{ weight: 10 }] };
  const p = s.properties;
  const inputs = {
    name: h("input", { value: u.name || "", required: true, pattern: "[A-Za-z0-9_]{1,50}", readonly: name ? true : null }),
    vpc: h("input", { value: u.vpc || "", required: true }),
    description: h("input", { value: u.description || "" }),
    protocol: h("select", {}, ["http", "https"].map((v) => h("option", { value: v, selected: (u.protocol || "http").toLowerCase() === v }, v.toUpperCase()))),
    host_header: h("input", { value: u.host_header || "" }),
    retries: h("input", { type: "number", min: p.retries.minimum, max: p.retries.maximum, value: u.retries ?? p.retries.default }),
  };
  const list = h("div", {});
  (u.nodes || []).forEach((n, i) => list.append(nodeRow(list, n, i)));
  const add = h("button", { type: "button", class: "secondary" }, "Add node");
  add.addEventListener("click", () => {
    const i = list.querySelectorAll("[data-node]").length;
    const row = nodeRow(list, { weight: 10 }, i);
    list.append(row);
    row.querySelector("input").focus();
  });
  const form = h("form", { novalidate: true },
    h("ul", { class: "form-problems", "aria-live": "polite" }),
    field("Name", inputs.name, name ? "The name cannot change." : describe(p.name), "name"),
    h("div", { class: "row" },
      field("VPC", inputs.vpc, describe(p.vpc), "vpc"),
      field("Backend protocol", inputs.protocol, describe(p.protocol), "protocol")),
    field("Description", inputs.description, null, "description"),
    h("div", { class: "row" },
      field("Host header", inputs.host_header, describe(p.host_header), "host_header"),
      field("Retries", inputs.retries, describe(p.retries), "retries")),
    h("fieldset", { dataset: { path: "nodes" }, id: "nodes" }, h("legend", {}, "Nodes"),
      h("div", { class: "hint" }, `${describe(node.properties.host)} Weight: ${describe(node.properties.weight)}`),
      h("div", { class: "error", id: "nodes-error" }),
      list, add),
    h("div", { class: "actions" }, h("button", { type: "submit" }, name ? "Save" : "Create"), h("a", { class: "button secondary", href: name ? `#/upstreams/${encodeURIComponent(name)}` : "#/upstreams" }, "Cancel")),
    h("div", { class: "form-status", "aria-live": "polite" }));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = Object.assign({}, existing ? existing.data : {}, {
      name: inputs.name.value.trim(),
      vpc: inputs.vpc.value.trim(),
      protocol: inputs.protocol.value,
      retries: inputs.retries.value === "" ? undefined : Number(inputs.retries.value),
      nodes: [...list.querySelectorAll("[data-node]")].map((r) => r.read()),
    });
    for (const key of ["description", "host_header"]) {
      const v = inputs[key].value.trim();
      if (v) body[key] = v;
      else delete body[key];
    }
    const index = name ? all.findIndex((x) => x.name === name) : all.length;
    const prefix = `upstreams[${index}]`;
    const headers = existing ? { "If-Match": existing.etag } : {};
    submitChange(form, name ? "PUT" : "POST", name ? `/upstreams/${encodeURIComponent(name)}` : "/upstreams", body, headers, prefix,
      () => { location.hash = `#/upstreams/${encodeURIComponent(body.name)}`; });
  });
  page(name ? `Edit upstream ${name}` : "Create a VPC upstream", form);
}

// --- services and APIs -----------------------------------------------------------------------

function apiHref(service, api) {
  return `#/services/${encodeURIComponent(service)}/apis/${encodeURIComponent(api)}`;
}

async function serviceList() {
  const { data: services } = await api("GET", "/services");
  page("Services and APIs",
    h("div", { class: "toolbar" }, h("a", { class: "button", href: "#/services/new" }, "Create service")),
    ...services.map((s) => h("section", { "aria-label": `Service ${s.name}` },
      h("h2", {}, `Service ${s.name}`, s.description ? h("span", { class: "hint" }, ` · ${s.description}`) : null),
      h("div", { class: "toolbar" },
        h("a", { class: "button secondary", href: `#/services/${encodeURIComponent(s.name)}/apis/new` }, "Create API"),
        serviceDelete(s)),
      (s.apis || []).length
        ? h("table", {}, h("thead", {}, h("tr", {}, ["API", "Methods", "Path", "Backend", "Plugins"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, s.apis.map((a) => h("tr", {},
            h("td", {}, h("a", { href: apiHref(s.name, a.name) }, a.name)),
            h("td", {}, (a.methods || ["ANY"]).join(" ")),
            h("td", {}, a.path),
            h("td", {}, a.backend.upstream
              ? h("a", { href: `#/upstreams/${encodeURIComponent(a.backend.upstream)}` }, `${a.backend.upstream}${a.backend.path ? ` ${a.backend.path}` : ""}`)
              : `fixed ${a.backend.response ? a.backend.response.status || 200 : ""}`),
            h("td", {}, (a.plugins || []).map((pl) => pl.name || pl.path).join(", "))))))
        : h("p", {}, "No API yet."))));
}

function serviceDelete(s) {
  const b = h("button", { type: "button", class: "secondary" }, `Delete service ${s.name}`);
  b.addEventListener("click", async () => {
    if (!confirm(`Delete the service ${s.name} and its ${(s.apis || []).length} API(s)?`)) return;
    try {
      await api("DELETE", `/services/${encodeURIComponent(s.name)}`);
      route();
    } catch (e) {
      fail(e);
    }
  });
  return b;
}

async function serviceForm() {
  const s = await schema("Service");
  const { data: all } = await api("GET", "/services");
  const name = h("input", { required: true });
  const description = h("input", {});
  const form = h("form", { novalidate: true },
    h("ul", { class: "form-problems", "aria-live": "polite" }),
    field("Name", name, describe(s.properties.name), "name"),
    field("Description", description, null, "description"),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create"), h("a", { class: "button secondary", href: "#/services" }, "Cancel")),
    h("div", { class: "form-status", "aria-live": "polite" }));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = { name: name.value.trim(), apis: [] };
    if (description.value.trim()) body.description = description.value.trim();
    submitChange(form, "POST", "/services", body, {}, `services[${all.length}]`, () => { location.hash = "#/services"; });
  });
  page("Create a service", form);
}

const METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

async function apiForm(service, apiName) {
  const [s, b, { data: services }, { data: upstreams }, existing] = await Promise.all([
    schema("Api"), schema("UpstreamBackend"), api("GET", "/services"), api("GET", "/upstreams"),
    apiName ? api("GET", `/services/${encodeURIComponent(service)}/apis/${encodeURIComponent(apiName)}`) : Promise.resolve(null),
  ]);
  const a = existing ? existing.data : { backend: {} };
  const si = services.findIndex((x) => x.name === service);
  if (si < 0) throw new Error(`service ${service} does not exist`);
  const ai = apiName ? services[si].apis.findIndex((x) => x.name === apiName) : services[si].apis.length;
  const p = s.properties;
  const name = h("input", { value: a.name || "", required: true, readonly: apiName ? true : null });
  const path = h("input", { value: a.path || "", required: true });
  const methods = METHODS.map((m) => h("input", { type: "checkbox", value: m, checked: (a.methods || []).includes(m) }));
  const upstream = h("select", {}, h("option", { value: "" }, "(choose an upstream)"),
    upstreams.map((u) => h("option", { value: u.name, selected: a.backend.upstream === u.name }, `${u.name} (${u.vpc})`)));
  const backendPath = h("input", { value: a.backend.path || "" });
  const timeout = h("input", { value: a.backend.timeout || "" });
  const plugins = h("textarea", { spellcheck: "false" }, a.plugins && a.plugins.length ? JSON.stringify(a.plugins, null, 2) : "");
  const form = h("form", { novalidate: true },
    h("ul", { class: "form-problems", "aria-live": "polite" }),
    field("Name", name, apiName ? "The name cannot change." : describe(p.name), "name"),
    field("Path", path, describe(p.path), "path"),
    h("fieldset", { dataset: { path: "methods" }, id: "methods" }, h("legend", {}, "Methods"),
      h("div", { class: "hint" }, "None checked: every standard method but TRACE."),
      h("div", { class: "error", id: "methods-error" }),
      methods.map((m) => h("label", {}, m, ` ${m.value} `))),
    h("div", { class: "row" },
      field("Backend upstream", upstream, describe(b.properties.upstream), "backend.upstream"),
      field("Backend path", backendPath, describe(b.properties.path), "backend.path")),
    field("Timeout", timeout, describe(b.properties.timeout), "backend.timeout"),
    field("Plugins (JSON list)", plugins, "For example [{\"name\": \"request-id\"}]; each plugin checks its own config.", "plugins"),
    h("div", { class: "actions" }, h("button", { type: "submit" }, apiName ? "Save" : "Create"), h("a", { class: "button secondary", href: "#/services" }, "Cancel"),
      apiName ? apiDelete(service, apiName) : null),
    h("div", { class: "form-status", "aria-live": "polite" }));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = Object.assign({}, a, { name: name.value.trim(), path: path.value.trim() });
    const checked = methods.filter((m) => m.checked).map((m) => m.value);
    if (checked.length) body.methods = checked;
    else delete body.methods;
    body.backend = { upstream: upstream.value };
    if (backendPath.value.trim()) body.backend.path = backendPath.value.trim();
    if (timeout.value.trim()) body.backend.timeout = timeout.value.trim();
    const prefix = `services[${si}].apis[${ai}]`;
    if (plugins.value.trim()) {
      try {
        body.plugins = JSON.parse(plugins.value);
      } catch (e) {
        showProblems(form, [{ path: `${prefix}.plugins`, message: `not JSON: ${e.message}` }], prefix);
        return;
      }
    } else {
      delete body.plugins;
    }
    const target = apiName
      ? `/services/${encodeURIComponent(service)}/apis/${encodeURIComponent(apiName)}`
      : `/services/${encodeURIComponent(service)}/apis`;
    const headers = existing ? { "If-Match": existing.etag } : {};
    submitChange(form, apiName ? "PUT" : "POST", target, body, headers, prefix, () => { location.hash = "#/services"; });
  });
  page(apiName ? `Edit API ${service}.${apiName}` : `Create an API in ${service}`, form);
}

function apiDelete(service, apiName) {
  const b = h("button", { type: "button", class: "danger", id: "delete-api" }, "Delete");
  b.addEventListener("click", async () => {
    if (!confirm(`Delete the API ${service}.${apiName}?`)) return;
    try {
      await api("DELETE", `/services/${encodeURIComponent(service)}/apis/${encodeURIComponent(apiName)}`);
      location.hash = "#/services";
    } catch (e) {
      fail(e);
    }
  });
  return b;
}

// --- status ------------------------------------------------------------------------------------

async function status() {
  const [{ data: s }, { data: config }] = await Promise.all([api("GET", "/status"), api("GET", "/config")]);
  const metrics = config.instance && config.instance.metrics;
  page("Status",
    h("dl", {},
      h("dt", {}, "Configuration generation"), h("dd", { id: "generation" }, String(s.generation)),
      h("dt", {}, "Applied at"), h("dd", {}, s.applied_at),
      h("dt", {}, "Configuration file"), h("dd", {}, s.config_file),
      h("dt", {}, "Last reload error"), h("dd", {}, s.last_reload_error ? `${s.last_reload_error} (${s.last_reload_error_at})` : "none"),
      s.revision !== undefined ? [h("dt", {}, "Fleet revision"), h("dd", {}, String(s.revision))] : null),
    h("p", {}, metrics
      ? ["Prometheus metrics: ", h("a", { href: `http://${metrics}/metrics`, id: "metrics" }, `http://${metrics}/metrics`), ". "]
      : "No metrics listener is configured (instance.metrics). ",
      h("a", { href: "/openapi.json" }, "The admin API's OpenAPI document"), "."));
}

// --- routing -----------------------------------------------------------------------------------

async function route() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin();
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (parts[0] === "upstreams" && parts[1] === "new") await upstreamForm(null);
    else if (parts[0] === "upstreams" && parts[1] && parts[2] === "edit") await upstreamForm(parts[1]);
    else if (parts[0] === "upstreams" && parts[1]) await upstreamDetails(parts[1], parts[2] === "apis" ? "apis" : "nodes");
    else if (parts[0] === "services" && parts[1] === "new") await serviceForm();
    else if (parts[0] === "services" && parts[1] && parts[2] === "apis" && parts[3] === "new") await apiForm(parts[1], null);
    else if (parts[0] === "services" && parts[1] && parts[2] === "apis" && parts[3]) await apiForm(parts[1], parts[3]);
    else if (parts[0] === "services") await serviceList();
    else if (parts[0] === "status") await status();
    else await upstreamList();
  } catch (e) {
    fail(e);
  }
}

document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "#/login";
  showLogin();
});
window.addEventListener("hashchange", route);
route();
