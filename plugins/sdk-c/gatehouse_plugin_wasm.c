/* The C SDK in WebAssembly: the component's exports call the plugin's hooks, and the request,
 * response and host functions call the gateway, over the bindings `wit-bindgen c` generates
 * (bindings/, with borrowed handles given back when an export returns).
 *
 * Ownership, as the canonical ABI bindings have it: what the host passes to an export belongs
 * to the export (freed here), strings an import returns belong to the caller (turned into the
 * SDK's NUL-terminated strings here), and what an export returns is freed by the bindings after
 * the host has copied it (so it is allocated here). */
#include <stdlib.h>
#include <string.h>

#include "gatehouse_plugin_internal.h"
#include "plugin.h"

/* The handles are the bindings' borrowed handles; the SDK's types only name them. */
struct gh_request {
    plugin_borrow_request_t handle;
};
struct gh_response {
    plugin_borrow_response_t handle;
};

static bool configured;

/* --- strings --------------------------------------------------------------------------------- */

/* The SDK's string for one the bindings handed over, which is freed. */
static char *take(plugin_string_t *s) {
    char *text = gh_strndup((const char *)s->ptr, s->len);
    plugin_string_free(s);
    return text;
}

/* A view of `text` for an import's argument (imports do not free their arguments). */
static plugin_string_t view(const char *text) {
    plugin_string_t s;
    plugin_string_set(&s, text);
    return s;
}

/* Hands `text` (malloc'd) to the bindings, which free it after the host copied it. */
static void give(plugin_string_t *out, char *text) {
    out->ptr = (uint8_t *)text;
    out->len = strlen(text);
}

static void give_names(plugin_list_string_t *out, const gh_names *names) {
    out->len = names->len;
    out->ptr = names->len ? gh_alloc(names->len * sizeof *out->ptr) : NULL;
    for (size_t i = 0; i < names->len; i++) plugin_string_dup(&out->ptr[i], names->items[i]);
}

/* NULL when an import succeeded, else its error as the SDK's string. */
static char *result(bool ok, plugin_string_t *err) { return ok ? NULL : take(err); }

/* --- the exports ----------------------------------------------------------------------------- */

void exports_plugin_describe(plugin_info_t *ret) {
    const char *const *keys = gh_plugin_definition()->secret_keys;
    size_t count = 0;
    while (keys && keys[count]) count++;
    ret->secret_keys.len = count;
    ret->secret_keys.ptr = count ? gh_alloc(count * sizeof *ret->secret_keys.ptr) : NULL;
    for (size_t i = 0; i < count; i++) plugin_string_dup(&ret->secret_keys.ptr[i], keys[i]);
}

bool exports_plugin_configure(plugin_string_t *config, plugin_needs_t *ret, plugin_string_t *err) {
    const gh_plugin *plugin = gh_plugin_definition();
    gh_needs needs;
    gh_needs_init(&needs, plugin->hooks);
    char *failure = plugin->configure
                        ? plugin->configure((const char *)config->ptr, config->len, &needs)
                        : NULL;
    plugin_string_free(config);
    configured = failure == NULL;
    if (failure) {
        gh_needs_clear(&needs);
        give(err, failure);
        return false;
    }
    gh_needs_finish(&needs);
    *ret = (plugin_needs_t){
        .hooks = needs.hooks,
        .request_body = needs.request_body,
        .response_body = needs.response_body,
        .node_steering = needs.node_steering,
        .counters = needs.counters,
    };
    give_names(&ret->request_headers.read, &needs.request_read);
    give_names(&ret->request_headers.write, &needs.request_write);
    give_names(&ret->response_headers.read, &needs.response_read);
    give_names(&ret->response_headers.write, &needs.response_write);
    gh_needs_clear(&needs);
    return true;
}

static bool not_configured(plugin_string_t *err) {
    plugin_string_dup(err, "plugin is not configured");
    return false;
}

bool exports_plugin_on_request(plugin_borrow_request_t handle, plugin_action_t *ret,
                               plugin_string_t *err) {
    const gh_plugin *plugin = gh_plugin_definition();
    if (!configured) return not_configured(err);
    gh_request req = {handle};
    gh_action action = gh_proceed();
    char *failure = plugin->on_request ? plugin->on_request(&req, &action) : NULL;
    if (failure) {
        gh_action_free(&action);
        give(err, failure);
        return false;
    }
    if (!action.respond) {
        ret->tag = GATEHOUSE_PLUGIN_TYPES_ACTION_PROCEED;
        return true;
    }
    /* the reply's memory goes to the bindings as it is: same allocator, same layout of strings */
    plugin_tuple2_string_string_t *headers =
        action.header_count ? gh_alloc(action.header_count * sizeof *headers) : NULL;
    for (size_t i = 0; i < action.header_count; i++) {
        give(&headers[i].f0, action.headers[i].name);
        give(&headers[i].f1, action.headers[i].value);
    }
    free(action.headers);
    ret->tag = GATEHOUSE_PLUGIN_TYPES_ACTION_RESPOND;
    ret->val.respond = (gatehouse_plugin_types_reply_t){
        .status = action.status,
        .headers = {headers, action.header_count},
        .body = {action.body, action.body_len},
    };
    return true;
}

bool exports_plugin_on_upstream_request(plugin_borrow_request_t handle, plugin_node_t *node,
                                        plugin_string_t *err) {
    const gh_plugin *plugin = gh_plugin_definition();
    if (!configured) {
        plugin_node_free(node);
        return not_configured(err);
    }
    char *upstream = take(&node->upstream), *host = take(&node->host),
         *address = take(&node->address);
    gh_node n = {upstream, host, node->port, address};
    gh_request req = {handle};
    char *failure = plugin->on_upstream_request ? plugin->on_upstream_request(&req, &n) : NULL;
    free(upstream);
    free(host);
    free(address);
    if (failure) {
        give(err, failure);
        return false;
    }
    return true;
}

bool exports_plugin_on_response(plugin_borrow_request_t req_handle,
                                plugin_borrow_response_t resp_handle, plugin_string_t *err) {
    const gh_plugin *plugin = gh_plugin_definition();
    if (!configured) return not_configured(err);
    gh_request req = {req_handle};
    gh_response resp = {resp_handle};
    char *failure = plugin->on_response ? plugin->on_response(&req, &resp) : NULL;
    if (failure) {
        give(err, failure);
        return false;
    }
    return true;
}

bool exports_plugin_on_response_body(plugin_borrow_request_t handle, uint16_t status,
                                     plugin_list_tuple2_string_string_t *headers,
                                     plugin_list_u8_t *body, plugin_option_list_u8_t *ret,
                                     plugin_string_t *err) {
    const gh_plugin *plugin = gh_plugin_definition();
    gh_header *list = headers->len ? gh_alloc(headers->len * sizeof *list) : NULL;
    for (size_t i = 0; i < headers->len; i++) {
        list[i].name = gh_strndup((const char *)headers->ptr[i].f0.ptr, headers->ptr[i].f0.len);
        list[i].value = gh_strndup((const char *)headers->ptr[i].f1.ptr, headers->ptr[i].f1.len);
    }
    size_t count = headers->len;
    plugin_list_tuple2_string_string_free(headers);
    gh_body out = {0};
    char *failure = NULL;
    if (!configured) failure = gh_strdup("plugin is not configured");
    else if (plugin->on_response_body) {
        gh_request req = {handle};
        failure = plugin->on_response_body(&req, status, list, count, body->ptr, body->len, &out);
    }
    for (size_t i = 0; i < count; i++) {
        free(list[i].name);
        free(list[i].value);
    }
    free(list);
    plugin_list_u8_free(body);
    if (failure) {
        free(out.bytes);
        give(err, failure);
        return false;
    }
    ret->is_some = out.replace;
    if (out.replace) ret->val = (plugin_list_u8_t){out.bytes, out.len};
    else free(out.bytes);
    return true;
}

/* --- the request ----------------------------------------------------------------------------- */

static char *request_string(gh_request *req,
                            void (*get)(gatehouse_plugin_http_borrow_request_t, plugin_string_t *)) {
    plugin_string_t s;
    get(req->handle, &s);
    return take(&s);
}

char *gh_request_method(gh_request *req) {
    return request_string(req, gatehouse_plugin_http_method_request_method);
}
char *gh_request_path(gh_request *req) {
    return request_string(req, gatehouse_plugin_http_method_request_path);
}
char *gh_request_client_addr(gh_request *req) {
    return request_string(req, gatehouse_plugin_http_method_request_client_addr);
}
char *gh_request_service(gh_request *req) {
    return request_string(req, gatehouse_plugin_http_method_request_service);
}
char *gh_request_api(gh_request *req) {
    return request_string(req, gatehouse_plugin_http_method_request_api);
}

char *gh_request_query(gh_request *req) {
    plugin_string_t s;
    return gatehouse_plugin_http_method_request_query(req->handle, &s) ? take(&s) : NULL;
}

char *gh_request_header(gh_request *req, const char *name) {
    plugin_string_t n = view(name), s;
    return gatehouse_plugin_http_method_request_header(req->handle, &n, &s) ? take(&s) : NULL;
}

uint8_t *gh_request_body(gh_request *req, size_t *len, char **err) {
    plugin_list_u8_t body;
    plugin_string_t e;
    *len = 0;
    *err = NULL;
    if (!gatehouse_plugin_http_method_request_body(req->handle, &body, &e)) {
        *err = take(&e);
        return NULL;
    }
    *len = body.len;
    return body.len ? body.ptr : gh_alloc(0);
}

char *gh_request_set_body(gh_request *req, const uint8_t *body, size_t len) {
    plugin_list_u8_t b = {(uint8_t *)body, len};
    plugin_string_t e;
    return result(gatehouse_plugin_http_method_request_set_body(req->handle, &b, &e), &e);
}

char *gh_request_set_header(gh_request *req, const char *name, const char *value) {
    plugin_string_t n = view(name), v = view(value), e;
    return result(gatehouse_plugin_http_method_request_set_header(req->handle, &n, &v, &e), &e);
}

char *gh_request_append_header(gh_request *req, const char *name, const char *value) {
    plugin_string_t n = view(name), v = view(value), e;
    return result(gatehouse_plugin_http_method_request_append_header(req->handle, &n, &v, &e), &e);
}

char *gh_request_remove_header(gh_request *req, const char *name) {
    plugin_string_t n = view(name), e;
    return result(gatehouse_plugin_http_method_request_remove_header(req->handle, &n, &e), &e);
}

char *gh_request_set_path(gh_request *req, const char *path) {
    plugin_string_t p = view(path), e;
    return result(gatehouse_plugin_http_method_request_set_path(req->handle, &p, &e), &e);
}

char *gh_request_set_query(gh_request *req, const char *query) {
    plugin_string_t q, e;
    if (query) q = view(query);
    return result(
        gatehouse_plugin_http_method_request_set_query(req->handle, query ? &q : NULL, &e), &e);
}

/* --- the response ---------------------------------------------------------------------------- */

uint16_t gh_response_status(gh_response *resp) {
    return gatehouse_plugin_http_method_response_status(resp->handle);
}

char *gh_response_header(gh_response *resp, const char *name) {
    plugin_string_t n = view(name), s;
    return gatehouse_plugin_http_method_response_header(resp->handle, &n, &s) ? take(&s) : NULL;
}

char *gh_response_set_header(gh_response *resp, const char *name, const char *value) {
    plugin_string_t n = view(name), v = view(value), e;
    return result(gatehouse_plugin_http_method_response_set_header(resp->handle, &n, &v, &e), &e);
}

char *gh_response_append_header(gh_response *resp, const char *name, const char *value) {
    plugin_string_t n = view(name), v = view(value), e;
    return result(gatehouse_plugin_http_method_response_append_header(resp->handle, &n, &v, &e),
                  &e);
}

char *gh_response_remove_header(gh_response *resp, const char *name) {
    plugin_string_t n = view(name), e;
    return result(gatehouse_plugin_http_method_response_remove_header(resp->handle, &n, &e), &e);
}

/* --- steering and counters ------------------------------------------------------------------- */

static gatehouse_plugin_steering_fallback_t fallback_of(gh_fallback fallback) {
    return fallback == GH_FALLBACK_FAIL ? GATEHOUSE_PLUGIN_STEERING_FALLBACK_FAIL
                                        : GATEHOUSE_PLUGIN_STEERING_FALLBACK_ANY_NODE;
}

char *gh_steer_to_tag(gh_request *req, const char *tag, gh_fallback fallback) {
    plugin_string_t t = view(tag), e;
    return result(gatehouse_plugin_steering_to_tag(req->handle, &t, fallback_of(fallback), &e), &e);
}

char *gh_steer_to_node(gh_request *req, const char *address, gh_fallback fallback) {
    plugin_string_t a = view(address), e;
    return result(gatehouse_plugin_steering_to_node(req->handle, &a, fallback_of(fallback), &e),
                  &e);
}

char *gh_limit_retries(gh_request *req, uint32_t retries) {
    plugin_string_t e;
    return result(gatehouse_plugin_steering_limit_retries(req->handle, retries, &e), &e);
}

char *gh_counter_increment(const char *key, uint64_t delta, uint64_t window_ms, gh_window *out) {
    plugin_string_t k = view(key), e;
    gatehouse_plugin_counters_window_t w = {0};
    char *err = result(gatehouse_plugin_counters_increment(&k, delta, window_ms, &w, &e), &e);
    *out = (gh_window){w.count, w.resets_in_ms};
    return err;
}

char *gh_counter_get(const char *key, uint64_t window_ms, gh_window *out) {
    plugin_string_t k = view(key), e;
    gatehouse_plugin_counters_window_t w = {0};
    char *err = result(gatehouse_plugin_counters_get(&k, window_ms, &w, &e), &e);
    *out = (gh_window){w.count, w.resets_in_ms};
    return err;
}

/* --- the host -------------------------------------------------------------------------------- */

void gh_log(gh_log_level level, const char *message) {
    plugin_string_t m = view(message);
    gatehouse_plugin_host_log((gatehouse_plugin_host_log_level_t)level, &m);
}

uint64_t gh_now_millis(void) { return gatehouse_plugin_host_now_millis(); }

uint64_t gh_random(void) { return gatehouse_plugin_host_random(); }
