/* The Gatehouse plugin SDK for C: write a plugin (a WebAssembly component implementing
 * `gatehouse:plugin@0.2.0`) as a table of hooks, without touching the generated bindings.
 *
 * The same shape as the Rust SDK: a plugin is configured from JSON and declares what it needs;
 * its hooks get the request (and the response) and return NULL, or an error message that the
 * gateway handles as the plugin use's `on_error` says. Compiled for WebAssembly, the request and
 * response functions call the gateway; compiled natively with gatehouse_plugin_double.c, they
 * work on in-memory doubles, so the same hooks run in a native test program.
 *
 *     static char *on_request(gh_request *req, gh_action *action) {
 *         char *tenant = gh_request_header(req, "x-tenant");
 *         if (!tenant) *action = gh_reply_error(401, "unauthorized", "name your tenant");
 *         free(tenant);
 *         return NULL;
 *     }
 *     static const gh_plugin PLUGIN = { .hooks = GH_ON_REQUEST, .configure = configure,
 *                                       .on_request = on_request };
 *     GH_EXPORT_PLUGIN(PLUGIN)
 *
 * Memory: every `char *` the SDK returns is NUL-terminated and allocated with malloc: the caller
 * frees it (free(NULL) is fine). A NULL result of a change (set a header, steer...) means it was
 * done; otherwise it is the gateway's reason, to return as the hook's error or free. Handles are
 * valid only during the hook call that received them. */
#ifndef GATEHOUSE_PLUGIN_H
#define GATEHOUSE_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* --- the plugin ------------------------------------------------------------------------------ */

typedef struct gh_request gh_request;
typedef struct gh_response gh_response;
typedef struct gh_needs gh_needs;

/* The hooks a plugin implements; the gateway calls only these. */
enum {
    GH_ON_REQUEST = 1 << 0,
    GH_ON_UPSTREAM_REQUEST = 1 << 1,
    GH_ON_RESPONSE = 1 << 2,
    GH_ON_RESPONSE_BODY = 1 << 3,
};

/* A header (name in lower case) and its value. */
typedef struct gh_header {
    char *name;
    char *value;
} gh_header;

/* What `on_request` decided: go on (`respond` false), or answer the client now. */
typedef struct gh_action {
    bool respond;
    uint16_t status;
    gh_header *headers;
    size_t header_count;
    uint8_t *body;
    size_t body_len;
} gh_action;

/* The node chosen for one upstream attempt. */
typedef struct gh_node {
    const char *upstream;
    const char *host; /* as configured: an IP address or a DNS name */
    uint16_t port;
    const char *address; /* the socket address connected to, `ip:port` */
} gh_node;

/* A body `on_response_body` sends instead of the one it was given. */
typedef struct gh_body {
    bool replace;
    uint8_t *bytes; /* malloc'd; the SDK frees it */
    size_t len;
} gh_body;

typedef struct gh_plugin {
    /* GH_ON_REQUEST | GH_ON_RESPONSE ...: declare the hooks you implement (a hook left NULL
     * does nothing). GH_ON_RESPONSE_BODY also needs gh_needs_response_body. */
    uint8_t hooks;
    /* Keys of the configuration that hold secrets (dotted for nested keys), NULL-terminated; or
     * NULL. The gateway never shows or logs their values. */
    const char *const *secret_keys;
    /* Reads the configuration (`len` bytes of JSON, `{}` when none is given; gh_config_parse
     * reads it) and declares what the plugin needs. NULL, or why the configuration is refused
     * (`gatehouse validate` shows it). Called again when the configuration changes. */
    char *(*configure)(const char *config, size_t len, gh_needs *needs);
    /* Before a node is chosen: changes to `req` go upstream; set `*action` with gh_reply_... to
     * answer the client instead (it starts as gh_proceed()). */
    char *(*on_request)(gh_request *req, gh_action *action);
    /* Before each upstream attempt (again on a retry). */
    char *(*on_upstream_request)(gh_request *req, const gh_node *node);
    /* When the response header is ready; `req` is read-only here. */
    char *(*on_response)(gh_request *req, gh_response *resp);
    /* Once the whole response body has arrived (declare gh_needs_response_body): set `out` to
     * send another body; the status and headers have gone to the client. */
    char *(*on_response_body)(gh_request *req, uint16_t status, const gh_header *headers,
                              size_t header_count, const uint8_t *body, size_t len, gh_body *out);
} gh_plugin;

/* Makes `plugin` (a gh_plugin variable) the component's implementation; use it once. */
#define GH_EXPORT_PLUGIN(plugin) \
    const gh_plugin *gh_plugin_definition(void) { return &(plugin); }

const gh_plugin *gh_plugin_definition(void);

/* --- what a plugin needs (declared in `configure`) ------------------------------------------- */

/* A header name, or a prefix ending in `*` (`x-tenant-*`). Headers not granted to be read are
 * not there for the plugin; changing one not granted fails. With no header declared at all, the
 * plugin needs every header (as the Rust SDK's default). */
void gh_needs_read_request_header(gh_needs *needs, const char *name);
void gh_needs_write_request_header(gh_needs *needs, const char *name);
void gh_needs_read_response_header(gh_needs *needs, const char *name);
void gh_needs_write_response_header(gh_needs *needs, const char *name);
/* Declares that the plugin touches no header (instead of every one). */
void gh_needs_no_header(gh_needs *needs);
void gh_needs_request_body(gh_needs *needs);
void gh_needs_response_body(gh_needs *needs);
void gh_needs_node_steering(gh_needs *needs);
void gh_needs_counters(gh_needs *needs);

/* --- the request and the response ------------------------------------------------------------ */

char *gh_request_method(gh_request *req);
char *gh_request_path(gh_request *req);         /* without the query */
char *gh_request_query(gh_request *req);        /* without `?`; NULL when there is none */
char *gh_request_header(gh_request *req, const char *name); /* first value; NULL if absent */
char *gh_request_client_addr(gh_request *req);  /* the client's IP address */
char *gh_request_service(gh_request *req);
char *gh_request_api(gh_request *req);
/* The whole request body (declare gh_needs_request_body): NULL and `*err` on failure. */
uint8_t *gh_request_body(gh_request *req, size_t *len, char **err);

char *gh_request_set_header(gh_request *req, const char *name, const char *value);
char *gh_request_append_header(gh_request *req, const char *name, const char *value);
char *gh_request_remove_header(gh_request *req, const char *name);
char *gh_request_set_path(gh_request *req, const char *path);
char *gh_request_set_query(gh_request *req, const char *query); /* NULL removes it */
char *gh_request_set_body(gh_request *req, const uint8_t *body, size_t len);

uint16_t gh_response_status(gh_response *resp);
char *gh_response_header(gh_response *resp, const char *name);
char *gh_response_set_header(gh_response *resp, const char *name, const char *value);
char *gh_response_append_header(gh_response *resp, const char *name, const char *value);
char *gh_response_remove_header(gh_response *resp, const char *name);

/* --- steering (declare gh_needs_node_steering; in on_request) -------------------------------- */

typedef enum gh_fallback {
    GH_FALLBACK_ANY_NODE, /* when none of the allowed nodes can take it, use the others */
    GH_FALLBACK_FAIL,     /* ... answer 503 no_steered_node */
} gh_fallback;

char *gh_steer_to_tag(gh_request *req, const char *tag, gh_fallback fallback);
char *gh_steer_to_node(gh_request *req, const char *address, gh_fallback fallback);
char *gh_limit_retries(gh_request *req, uint32_t retries);

/* --- counters (declare gh_needs_counters): fixed windows the gateway keeps ------------------- */

typedef struct gh_window {
    uint64_t count;
    uint64_t resets_in_ms;
} gh_window;

char *gh_counter_increment(const char *key, uint64_t delta, uint64_t window_ms, gh_window *out);
char *gh_counter_get(const char *key, uint64_t window_ms, gh_window *out);

/* --- answers --------------------------------------------------------------------------------- */

gh_action gh_proceed(void);
/* An answer with `body` (NUL-terminated; NULL for none) and, when not NULL, a content-type. */
gh_action gh_reply(uint16_t status, const char *content_type, const char *body);
/* The gateway's JSON error shape: {"status":403,"error":"forbidden","message":"..."}. */
gh_action gh_reply_error(uint16_t status, const char *error, const char *message);
/* Adds a header to an answer. */
void gh_action_add_header(gh_action *action, const char *name, const char *value);
void gh_action_free(gh_action *action);

/* --- the host -------------------------------------------------------------------------------- */

typedef enum gh_log_level {
    GH_LOG_TRACE,
    GH_LOG_DEBUG,
    GH_LOG_INFO,
    GH_LOG_WARN,
    GH_LOG_ERROR,
} gh_log_level;

/* Writes to the gateway's log, attributed to the plugin and the API (at most 50 lines a second). */
void gh_log(gh_log_level level, const char *message);
uint64_t gh_now_millis(void); /* wall-clock time, ms since the Unix epoch */
uint64_t gh_random(void);     /* 64 random bits (not for cryptographic keys) */

/* --- configuration (JSON) -------------------------------------------------------------------- */

/* A parsed configuration object. Every getter names the key at fault in its error, in the words
 * of the Rust SDK: "invalid configuration: `allow`: invalid type: string \"acme\", expected a
 * list of strings". */
typedef struct gh_config gh_config;

/* Parses `len` bytes of JSON (empty means `{}`), which must be an object. */
char *gh_config_parse(const char *json, size_t len, gh_config **out);
void gh_config_free(gh_config *config);
/* Fails on a key not in `known` (NULL-terminated), naming it and the keys expected. */
char *gh_config_known_keys(const gh_config *config, const char *const *known);
/* A string under `key`; `fallback` (copied; may be NULL) when the key is absent or null. */
char *gh_config_string(const gh_config *config, const char *key, const char *fallback, char **out);
/* A list of strings under `key` (required); free with gh_strings_free. */
char *gh_config_strings(const gh_config *config, const char *key, char ***out, size_t *count);
char *gh_config_uint(const gh_config *config, const char *key, uint64_t fallback, uint64_t max,
                     uint64_t *out);
char *gh_config_bool(const gh_config *config, const char *key, bool fallback, bool *out);
/* A header name from the configuration under `key`, trimmed and in lower case, or an error when
 * it is not an HTTP token. */
char *gh_config_header_name(const char *key, const char *name, char **out);
void gh_strings_free(char **strings, size_t count);

/* A malloc'd copy of a printf-style message, for errors: return gh_format("bad %s", key). */
char *gh_format(const char *format, ...) __attribute__((format(printf, 1, 2)));

#ifdef __cplusplus
}
#endif
#endif
