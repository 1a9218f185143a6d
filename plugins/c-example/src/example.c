/* c-example: a Gatehouse plugin written in C against the bindings that `wit-bindgen c` generates
 * from wit/plugin.wit. It refuses requests whose path contains a configured text ("/admin") with
 * a JSON 403 and adds `x-powered-by: gatehouse-c` to responses.
 *
 * Ownership follows the canonical ABI bindings: strings and records passed to an export belong
 * to it (free them), strings returned by an import belong to the caller (free them), and what
 * an export returns is freed by the bindings after the host has copied it (so allocate it).
 * The request and response handles are borrowed for the call; the bindings, generated with
 * `--autodrop-borrows yes`, give them back when the export returns. */
#include <stdlib.h>
#include <string.h>

#include "plugin.h"
#include "policy.h"

static policy_t policy;
static bool configured;

static const char FORBIDDEN_BODY[] =
    "{\"status\":403,\"error\":\"forbidden\",\"message\":\"this path is not available\"}";

static void log_message(gatehouse_plugin_host_log_level_t level, const char *text) {
    plugin_string_t message;
    plugin_string_set(&message, text);
    gatehouse_plugin_host_log(level, &message);
}

/* Sets `err` to a copy of `text` and returns false, for `return fail(err, "...")`. */
static bool fail(plugin_string_t *err, const char *text) {
    plugin_string_dup(err, text);
    return false;
}

bool exports_plugin_configure(plugin_string_t *config, plugin_hooks_t *ret, plugin_string_t *err) {
    char message[320];
    configured = policy_parse((const char *)config->ptr, config->len, &policy, message, sizeof message);
    plugin_string_free(config);
    /* on-upstream-request does nothing here: the gateway need not call it */
    *ret = GATEHOUSE_PLUGIN_TYPES_HOOKS_ON_REQUEST | GATEHOUSE_PLUGIN_TYPES_HOOKS_ON_RESPONSE;
    return configured || fail(err, message);
}

bool exports_plugin_on_request(plugin_borrow_request_t req, plugin_action_t *ret, plugin_string_t *err) {
    if (!configured) return fail(err, "plugin is not configured");

    plugin_string_t path;
    gatehouse_plugin_http_method_request_path(req, &path);
    bool blocked = policy_blocks(&policy, (const char *)path.ptr, path.len);
    plugin_string_free(&path);
    if (!blocked) {
        ret->tag = GATEHOUSE_PLUGIN_TYPES_ACTION_PROCEED;
        return true;
    }

    log_message(GATEHOUSE_PLUGIN_TYPES_LOG_LEVEL_DEBUG, "c-example: refused a request to a blocked path");
    plugin_tuple2_string_string_t *headers = malloc(sizeof *headers);
    if (!headers) abort();
    plugin_string_dup(&headers[0].f0, "content-type");
    plugin_string_dup(&headers[0].f1, "application/json");

    size_t body_len = sizeof FORBIDDEN_BODY - 1;
    uint8_t *body = malloc(body_len);
    if (!body) abort();
    memcpy(body, FORBIDDEN_BODY, body_len);

    ret->tag = GATEHOUSE_PLUGIN_TYPES_ACTION_RESPOND;
    ret->val.respond = (gatehouse_plugin_types_reply_t){
        .status = 403,
        .headers = {headers, 1},
        .body = {body, body_len},
    };
    return true;
}

bool exports_plugin_on_upstream_request(plugin_borrow_request_t req, plugin_node_t *node, plugin_string_t *err) {
    (void)req;
    (void)err;
    plugin_node_free(node);
    return true;
}

bool exports_plugin_on_response(plugin_borrow_request_t req, plugin_borrow_response_t resp, plugin_string_t *err) {
    (void)req;
    if (!configured) return fail(err, "plugin is not configured");
    if (policy.powered_by[0] == '\0') return true;

    plugin_string_t name, value;
    plugin_string_set(&name, "x-powered-by");
    plugin_string_set(&value, policy.powered_by);
    /* On failure the bindings hand us the host's message, which becomes ours. */
    return gatehouse_plugin_http_method_response_set_header(resp, &name, &value, err);
}
