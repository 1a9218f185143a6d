/* The C SDK off WebAssembly: the request, the response and the host functions as in-memory
 * doubles, for a plugin's native tests (see gatehouse_plugin_test.h). */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "gatehouse_plugin_internal.h"
#include "gatehouse_plugin_test.h"

typedef struct headers {
    gh_header *items;
    size_t len;
} headers;

struct gh_request {
    char *method, *path, *query, *client_addr, *service, *api;
    headers headers;
    uint8_t *body;
    size_t body_len;
    bool has_body, frozen;
    char *steer_target;
    gh_fallback fallback;
    long retry_limit;
};

struct gh_response {
    uint16_t status;
    headers headers;
};

int gh_test_failures;

int gh_test_summary(void) {
    if (gh_test_failures) fprintf(stderr, "%d check(s) failed\n", gh_test_failures);
    else fprintf(stderr, "every check held\n");
    return gh_test_failures ? 1 : 0;
}

/* --- headers --------------------------------------------------------------------------------- */

static char *check_name(const char *name) {
    if (!*name) return gh_strdup("invalid header name \"\"");
    for (const char *p = name; *p; p++) {
        unsigned char c = (unsigned char)*p;
        bool token = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     strchr("!#$%&'*+-.^_`|~", c);
        if (!token) return gh_format("invalid header name \"%s\"", name);
    }
    return NULL;
}

static char *check_header(const char *name, const char *value) {
    char *err = check_name(name);
    if (err) return err;
    for (const unsigned char *p = (const unsigned char *)value; *p; p++)
        if (*p != '\t' && (*p < 0x20 || *p >= 0x7f))
            return gh_strdup("header values must be visible ASCII on one line");
    return NULL;
}

static char *lower(const char *name) {
    char *copy = gh_strdup(name);
    for (char *p = copy; *p; p++)
        if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
    return copy;
}

static char *headers_get(const headers *h, const char *name) {
    for (size_t i = 0; i < h->len; i++)
        if (strcasecmp(h->items[i].name, name) == 0) return gh_strdup(h->items[i].value);
    return NULL;
}

static void headers_push(headers *h, const char *name, const char *value) {
    gh_header *items = realloc(h->items, (h->len + 1) * sizeof *items);
    if (!items) abort();
    h->items = items;
    h->items[h->len++] = (gh_header){lower(name), gh_strdup(value)};
}

static char *headers_remove(headers *h, const char *name) {
    char *err = check_name(name);
    if (err) return err;
    size_t kept = 0;
    for (size_t i = 0; i < h->len; i++) {
        if (strcasecmp(h->items[i].name, name) == 0) {
            free(h->items[i].name);
            free(h->items[i].value);
        } else {
            h->items[kept++] = h->items[i];
        }
    }
    h->len = kept;
    return NULL;
}

static char *headers_append(headers *h, const char *name, const char *value) {
    char *err = check_header(name, value);
    if (err) return err;
    headers_push(h, name, value);
    return NULL;
}

static char *headers_set(headers *h, const char *name, const char *value) {
    char *err = check_header(name, value);
    if (err) return err;
    free(headers_remove(h, name));
    headers_push(h, name, value);
    return NULL;
}

static void headers_free(headers *h) {
    for (size_t i = 0; i < h->len; i++) {
        free(h->items[i].name);
        free(h->items[i].value);
    }
    free(h->items);
}

/* --- the request ----------------------------------------------------------------------------- */

gh_request *gh_test_request(const char *method, const char *target) {
    gh_request *req = gh_alloc(sizeof *req);
    memset(req, 0, sizeof *req);
    req->method = gh_strdup(method);
    const char *q = strchr(target, '?');
    req->path = q ? gh_strndup(target, (size_t)(q - target)) : gh_strdup(target);
    req->query = q ? gh_strdup(q + 1) : NULL;
    req->client_addr = gh_strdup("127.0.0.1");
    req->service = gh_strdup("test");
    req->api = gh_strdup("test");
    req->retry_limit = -1;
    return req;
}

void gh_test_request_add_header(gh_request *req, const char *name, const char *value) {
    headers_push(&req->headers, name, value);
}

static void replace(char **field, const char *value) {
    free(*field);
    *field = value ? gh_strdup(value) : NULL;
}

void gh_test_request_client_addr(gh_request *req, const char *addr) { replace(&req->client_addr, addr); }

void gh_test_request_route(gh_request *req, const char *service, const char *api) {
    replace(&req->service, service);
    replace(&req->api, api);
}

void gh_test_request_body(gh_request *req, const uint8_t *body, size_t len) {
    free(req->body);
    req->body = gh_alloc(len);
    memcpy(req->body, body, len);
    req->body_len = len;
    req->has_body = true;
}

void gh_test_request_freeze(gh_request *req) { req->frozen = true; }

void gh_test_request_free(gh_request *req) {
    if (!req) return;
    free(req->method);
    free(req->path);
    free(req->query);
    free(req->client_addr);
    free(req->service);
    free(req->api);
    headers_free(&req->headers);
    free(req->body);
    free(req->steer_target);
    free(req);
}

const char *gh_test_request_steered(const gh_request *req, gh_fallback *fallback) {
    if (fallback) *fallback = req->fallback;
    return req->steer_target;
}

long gh_test_request_retry_limit(const gh_request *req) { return req->retry_limit; }

char *gh_request_method(gh_request *req) { return gh_strdup(req->method); }
char *gh_request_path(gh_request *req) { return gh_strdup(req->path); }
char *gh_request_query(gh_request *req) { return req->query ? gh_strdup(req->query) : NULL; }
char *gh_request_header(gh_request *req, const char *name) { return headers_get(&req->headers, name); }
char *gh_request_client_addr(gh_request *req) { return gh_strdup(req->client_addr); }
char *gh_request_service(gh_request *req) { return gh_strdup(req->service); }
char *gh_request_api(gh_request *req) { return gh_strdup(req->api); }

static const char READ_ONLY[] = "the request is read-only in on-response";

uint8_t *gh_request_body(gh_request *req, size_t *len, char **err) {
    *len = 0;
    *err = NULL;
    if (!req->has_body || req->frozen) {
        *err = gh_strdup("the body can be read only in on-request, by a plugin granted request_body");
        return NULL;
    }
    uint8_t *copy = gh_alloc(req->body_len);
    memcpy(copy, req->body, req->body_len);
    *len = req->body_len;
    return copy;
}

char *gh_request_set_body(gh_request *req, const uint8_t *body, size_t len) {
    if (req->frozen) return gh_strdup(READ_ONLY);
    if (!req->has_body)
        return gh_strdup("the body can be set only in on-request, by a plugin granted request_body");
    gh_test_request_body(req, body, len);
    return NULL;
}

char *gh_request_set_header(gh_request *req, const char *name, const char *value) {
    return req->frozen ? gh_strdup(READ_ONLY) : headers_set(&req->headers, name, value);
}

char *gh_request_append_header(gh_request *req, const char *name, const char *value) {
    return req->frozen ? gh_strdup(READ_ONLY) : headers_append(&req->headers, name, value);
}

char *gh_request_remove_header(gh_request *req, const char *name) {
    return req->frozen ? gh_strdup(READ_ONLY) : headers_remove(&req->headers, name);
}

char *gh_request_set_path(gh_request *req, const char *path) {
    if (req->frozen) return gh_strdup(READ_ONLY);
    bool ok = path[0] == '/';
    for (const unsigned char *p = (const unsigned char *)path; ok && *p; p++)
        ok = *p > ' ' && *p != '?' && *p != '#' && *p != 0x7f;
    if (!ok) return gh_format("invalid path \"%s\"", path);
    replace(&req->path, path);
    return NULL;
}

char *gh_request_set_query(gh_request *req, const char *query) {
    if (req->frozen) return gh_strdup(READ_ONLY);
    for (const unsigned char *p = (const unsigned char *)query; query && *p; p++)
        if (*p <= ' ' || *p == '#' || *p == 0x7f) return gh_format("invalid query \"%s\"", query);
    replace(&req->query, query);
    return NULL;
}

/* --- steering -------------------------------------------------------------------------------- */

static char *steer(gh_request *req, const char *target, gh_fallback fallback) {
    if (req->frozen) return gh_strdup("steering is possible only in on-request");
    if (!*target) return gh_strdup("steering needs a tag or a node address");
    replace(&req->steer_target, target);
    req->fallback = fallback;
    return NULL;
}

char *gh_steer_to_tag(gh_request *req, const char *tag, gh_fallback fallback) {
    return steer(req, tag, fallback);
}

char *gh_steer_to_node(gh_request *req, const char *address, gh_fallback fallback) {
    return steer(req, address, fallback);
}

char *gh_limit_retries(gh_request *req, uint32_t retries) {
    if (req->frozen) return gh_strdup("steering is possible only in on-request");
    if (req->retry_limit < 0 || (long)retries < req->retry_limit) req->retry_limit = (long)retries;
    return NULL;
}

/* --- the response ---------------------------------------------------------------------------- */

gh_response *gh_test_response(uint16_t status) {
    gh_response *resp = gh_alloc(sizeof *resp);
    memset(resp, 0, sizeof *resp);
    resp->status = status;
    return resp;
}

void gh_test_response_add_header(gh_response *resp, const char *name, const char *value) {
    headers_push(&resp->headers, name, value);
}

void gh_test_response_free(gh_response *resp) {
    if (!resp) return;
    headers_free(&resp->headers);
    free(resp);
}

uint16_t gh_response_status(gh_response *resp) { return resp->status; }
char *gh_response_header(gh_response *resp, const char *name) { return headers_get(&resp->headers, name); }
char *gh_response_set_header(gh_response *resp, const char *name, const char *value) {
    return headers_set(&resp->headers, name, value);
}
char *gh_response_append_header(gh_response *resp, const char *name, const char *value) {
    return headers_append(&resp->headers, name, value);
}
char *gh_response_remove_header(gh_response *resp, const char *name) {
    return headers_remove(&resp->headers, name);
}

/* --- the host -------------------------------------------------------------------------------- */

void gh_log(gh_log_level level, const char *message) {
    static const char *const names[] = {"trace", "debug", "info", "warn", "error"};
    fprintf(stderr, "plugin %s: %s\n", names[level <= GH_LOG_ERROR ? level : GH_LOG_ERROR], message);
}

uint64_t gh_now_millis(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
}

uint64_t gh_random(void) {
    /* a repeatable sequence (splitmix64), so that tests are */
    static uint64_t state = 0x9e3779b97f4a7c15u;
    uint64_t z = (state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* --- counters -------------------------------------------------------------------------------- */

typedef struct counter {
    char *key;
    uint64_t window_ms, window, count;
} counter;

static counter *counters;
static size_t counter_count;

static char *count(const char *key, uint64_t delta, bool add, uint64_t window_ms, gh_window *out) {
    size_t key_len = strlen(key);
    if (key_len == 0 || key_len > 256)
        return gh_format("a counter key has 1 to 256 bytes, not %zu", key_len);
    if (window_ms < 1000 || window_ms > 86400000)
        return gh_format("a window of %llu ms: windows are 1 s to 1 day (1000 to 86400000 ms)",
                         (unsigned long long)window_ms);
    uint64_t now = gh_now_millis(), window = now / window_ms;
    out->resets_in_ms = (window + 1) * window_ms - now;
    out->count = 0;
    counter *c = NULL;
    for (size_t i = 0; i < counter_count && !c; i++)
        if (strcmp(counters[i].key, key) == 0) c = &counters[i];
    if (!c) {
        if (!add) return NULL;
        counter *grown = realloc(counters, (counter_count + 1) * sizeof *grown);
        if (!grown) abort();
        counters = grown;
        c = &counters[counter_count++];
        *c = (counter){gh_strdup(key), window_ms, window, 0};
    }
    if (c->window_ms != window_ms)
        return gh_format("counter \"%s\" counts in windows of %llu ms, not %llu ms", key,
                         (unsigned long long)c->window_ms, (unsigned long long)window_ms);
    if (c->window != window) {
        c->window = window;
        c->count = 0;
    }
    c->count = c->count > UINT64_MAX - delta ? UINT64_MAX : c->count + delta;
    out->count = c->count;
    return NULL;
}

char *gh_counter_increment(const char *key, uint64_t delta, uint64_t window_ms, gh_window *out) {
    return count(key, delta, true, window_ms, out);
}

char *gh_counter_get(const char *key, uint64_t window_ms, gh_window *out) {
    return count(key, 0, false, window_ms, out);
}

/* --- the hooks ------------------------------------------------------------------------------- */

static uint8_t configured_hooks;

char *gh_test_configure(const char *config) {
    const gh_plugin *plugin = gh_plugin_definition();
    gh_needs needs;
    gh_needs_init(&needs, plugin->hooks);
    char *err = plugin->configure ? plugin->configure(config, strlen(config), &needs) : NULL;
    configured_hooks = needs.hooks;
    gh_needs_clear(&needs);
    return err;
}

uint8_t gh_test_hooks(void) { return configured_hooks; }

char *gh_test_on_request(gh_request *req, gh_action *action) {
    *action = gh_proceed();
    const gh_plugin *plugin = gh_plugin_definition();
    return plugin->on_request ? plugin->on_request(req, action) : NULL;
}

char *gh_test_on_response(gh_request *req, gh_response *resp) {
    const gh_plugin *plugin = gh_plugin_definition();
    req->frozen = true;
    return plugin->on_response ? plugin->on_response(req, resp) : NULL;
}
