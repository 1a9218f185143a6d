/* A Gatehouse plugin in C: lets through only the tenants its configuration lists, read from a
 * request header, answers the others 403, and tells the client which tenant it served. Change it
 * to do what yours should; `gatehouse plugin build` tests and builds it. */
#include <stdlib.h>
#include <string.h>

#include "gatehouse_plugin.h"

/* The response header that names the tenant served. */
#define SERVED_FOR "x-served-for"

/* The configuration (`config:` where the gateway configuration uses the plugin). An instance
 * runs one call at a time: a static is its state. */
static struct {
    char **allow; /* tenants let through */
    size_t allow_count;
    char *header; /* the request header that names the tenant (default x-tenant) */
} guard;

static void forget(void) {
    gh_strings_free(guard.allow, guard.allow_count);
    free(guard.header);
    memset(&guard, 0, sizeof guard);
}

static char *configure(const char *text, size_t len, gh_needs *needs) {
    static const char *const keys[] = {"allow", "header", NULL};
    gh_config *config;
    char *header = NULL, *err;
    forget();
    if ((err = gh_config_parse(text, len, &config))) return err;
    if (!(err = gh_config_known_keys(config, keys)) &&
        !(err = gh_config_strings(config, "allow", &guard.allow, &guard.allow_count)) &&
        !(err = gh_config_string(config, "header", "x-tenant", &header)) &&
        !(err = gh_config_header_name("header", header, &guard.header)) && guard.allow_count == 0)
        err = gh_format("`allow` must list at least one tenant");
    free(header);
    gh_config_free(config);
    if (err) {
        forget();
        return err;
    }
    /* what the operator grants this plugin use: one request header read, one response header
     * written */
    gh_needs_read_request_header(needs, guard.header);
    gh_needs_write_response_header(needs, SERVED_FOR);
    return NULL;
}

static bool allowed(const char *tenant) {
    for (size_t i = 0; i < guard.allow_count; i++)
        if (strcmp(guard.allow[i], tenant) == 0) return true;
    return false;
}

static char *on_request(gh_request *req, gh_action *action) {
    char *tenant = gh_request_header(req, guard.header);
    if (!tenant) {
        *action = gh_reply_error(401, "unauthorized", "name your tenant");
    } else if (!allowed(tenant)) {
        char *line = gh_format("refused tenant \"%s\"", tenant);
        gh_log(GH_LOG_DEBUG, line);
        free(line);
        *action = gh_reply_error(403, "forbidden", "this tenant may not use this API");
    }
    free(tenant);
    return NULL;
}

static char *on_response(gh_request *req, gh_response *resp) {
    char *tenant = gh_request_header(req, guard.header);
    char *err = tenant ? gh_response_set_header(resp, SERVED_FOR, tenant) : NULL;
    free(tenant);
    return err;
}

static const gh_plugin PLUGIN = {
    .hooks = GH_ON_REQUEST | GH_ON_RESPONSE,
    .configure = configure,
    .on_request = on_request,
    .on_response = on_response,
};

GH_EXPORT_PLUGIN(PLUGIN)
