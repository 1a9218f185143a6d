/* The C SDK's own checks, run natively: the configuration reader, answers, needs. */
#include <stdlib.h>
#include <string.h>

#include "gatehouse_plugin_internal.h"
#include "gatehouse_plugin_test.h"

/* No plugin here: the test double asks for one. */
static const gh_plugin NOTHING = {0};
GH_EXPORT_PLUGIN(NOTHING)

static bool same(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

static gh_config *parse(const char *json) {
    gh_config *config = NULL;
    char *err = gh_config_parse(json, strlen(json), &config);
    if (err) fprintf(stderr, "%s: %s\n", json, err);
    GH_CHECK(err == NULL);
    free(err);
    return config;
}

static void expect_error(const char *json, const char *part) {
    gh_config *config = NULL;
    char *err = gh_config_parse(json, strlen(json), &config);
    if (!err || !strstr(err, part)) fprintf(stderr, "%s: %s (expected %s)\n", json, err, part);
    GH_CHECK(err && strstr(err, part));
    GH_CHECK(config == NULL);
    free(err);
}

static void reads_each_kind_of_value_and_names_the_key_at_fault(void) {
    gh_config *c = parse(" {\"name\": \"caf\\u00e9 \\ud83d\\ude00\\n\", \"list\": [\"a\", \"b\"],"
                         " \"n\": 42, \"on\": true, \"none\": null, \"deep\": {\"x\": [1, {}]}} ");
    char *s = NULL, **list = NULL;
    size_t count = 0;
    uint64_t n = 0;
    bool on = false;
    GH_CHECK(gh_config_string(c, "name", NULL, &s) == NULL && same(s, "caf\xc3\xa9 \xf0\x9f\x98\x80\n"));
    free(s);
    GH_CHECK(gh_config_string(c, "absent", "dflt", &s) == NULL && same(s, "dflt"));
    free(s);
    GH_CHECK(gh_config_string(c, "none", NULL, &s) == NULL && s == NULL);
    GH_CHECK(gh_config_strings(c, "list", &list, &count) == NULL && count == 2 && same(list[1], "b"));
    gh_strings_free(list, count);
    GH_CHECK(gh_config_uint(c, "n", 0, 100, &n) == NULL && n == 42);
    GH_CHECK(gh_config_bool(c, "on", false, &on) == NULL && on);

    char *err = gh_config_uint(c, "n", 0, 10, &n);
    GH_CHECK(same(err, "invalid configuration: `n`: 42 is more than 10"));
    free(err);
    err = gh_config_string(c, "n", NULL, &s);
    GH_CHECK(same(err, "invalid configuration: `n`: invalid type: number 42, expected a string"));
    free(err);
    err = gh_config_strings(c, "name", &list, &count);
    GH_CHECK(err && strstr(err, "`name`: invalid type: string") && strstr(err, "expected a list of strings"));
    free(err);
    err = gh_config_strings(c, "missing", &list, &count);
    GH_CHECK(same(err, "invalid configuration: missing field `missing`"));
    free(err);
    err = gh_config_bool(c, "list", false, &on);
    GH_CHECK(same(err, "invalid configuration: `list`: invalid type: sequence, expected a boolean"));
    free(err);
    static const char *const known[] = {"name", "list", "n", "on", "none", NULL};
    err = gh_config_known_keys(c, known);
    GH_CHECK(same(err, "invalid configuration: unknown field `deep`, expected one of `name`, "
                       "`list`, `n`, `on`, `none`"));
    free(err);
    gh_config_free(c);

    c = parse("{\"l\": [\"a\", 3]}");
    err = gh_config_strings(c, "l", &list, &count);
    GH_CHECK(same(err, "invalid configuration: `l[1]`: invalid type: number 3, expected a string"));
    free(err);
    gh_config_free(c);
    c = parse("{\"n\": -1, \"f\": 1.5, \"big\": 99999999999999999999999}");
    GH_CHECK((err = gh_config_uint(c, "n", 0, 10, &n)) != NULL);
    free(err);
    GH_CHECK((err = gh_config_uint(c, "f", 0, 10, &n)) != NULL);
    free(err);
    GH_CHECK((err = gh_config_uint(c, "big", 0, UINT64_MAX - 1, &n)) != NULL);
    free(err);
    gh_config_free(c);
    c = parse("");
    GH_CHECK(gh_config_string(c, "x", "empty is {}", &s) == NULL && same(s, "empty is {}"));
    free(s);
    gh_config_free(c);
}

static void refuses_what_is_not_one_json_object(void) {
    expect_error("[]", "expected an object");
    expect_error("\"text\"", "expected an object");
    expect_error("{\"a\": 1} x", "trailing characters");
    expect_error("{\"a\": 1, \"a\": 2}", "duplicate field `a`");
    expect_error("{\"a\": \"\\ud800\"}", "lone surrogate");
    expect_error("{\"a\": \"\\u0000\"}", "\\u0000");
    expect_error("{\"a\": 01}", "leading zero");
    expect_error("{\"a\": \"x", "unterminated string");
    expect_error("{\"a\" 1}", "expected `:`");
    expect_error("{\"a\": tru}", "expected a value");
    char deep[200] = "{\"a\":";
    for (int i = 0; i < 40; i++) strcat(deep, "[");
    expect_error(deep, "nested too deeply");
}

/* Random bytes, and random mutations of a valid configuration, never crash the reader (run
 * under AddressSanitizer by the SDK's test script) and leave nothing allocated. */
static void survives_any_input(void) {
    static const char valid[] = "{\"allow\": [\"acme\", \"b\\u00e9\"], \"n\": 12, \"x\": {\"y\": [true, null]}}";
    static const char alphabet[] = "{}[]\":,\\u0123456789abcdefnulltrue -.eE\x01\xff";
    uint64_t seed = 0x1234;
    for (int round = 0; round < 20000; round++) {
        char text[96];
        size_t len;
        seed = seed * 6364136223846793005u + 1442695040888963407u;
        if (round % 2) {
            len = sizeof valid - 1;
            memcpy(text, valid, len);
            for (int k = 0; k < 3; k++) {
                seed = seed * 6364136223846793005u + 1442695040888963407u;
                text[(seed >> 33) % len] = alphabet[(seed >> 17) % (sizeof alphabet - 1)];
            }
        } else {
            len = (seed >> 40) % sizeof text;
            for (size_t i = 0; i < len; i++) {
                seed = seed * 6364136223846793005u + 1442695040888963407u;
                text[i] = alphabet[(seed >> 33) % (sizeof alphabet - 1)];
            }
        }
        gh_config *c = NULL;
        char *err = gh_config_parse(text, len, &c);
        GH_CHECK((err == NULL) == (c != NULL));
        if (c) {
            char **list;
            size_t count;
            free(gh_config_strings(c, "allow", &list, &count));
            if (list) gh_strings_free(list, count);
        }
        free(err);
        gh_config_free(c);
    }
}

static void answers_in_the_gateway_error_shape(void) {
    gh_action a = gh_reply_error(403, "forbidden", "say \"no\"\n\\");
    GH_CHECK(a.respond && a.status == 403 && a.header_count == 1);
    GH_CHECK(same(a.headers[0].name, "content-type") && same(a.headers[0].value, "application/json"));
    const char want[] = "{\"status\":403,\"error\":\"forbidden\",\"message\":\"say \\\"no\\\"\\u000a\\\\\"}";
    GH_CHECK(a.body_len == strlen(want) && memcmp(a.body, want, a.body_len) == 0);
    gh_action_free(&a);
    GH_CHECK(!a.respond && a.body == NULL);
    a = gh_reply(204, NULL, NULL);
    gh_action_add_header(&a, "x-a", "1");
    GH_CHECK(a.respond && a.status == 204 && a.header_count == 1 && a.body_len == 0);
    gh_action_free(&a);
}

static void needs_default_to_every_header_until_one_is_declared(void) {
    gh_needs needs;
    gh_needs_init(&needs, GH_ON_REQUEST);
    gh_needs_finish(&needs);
    GH_CHECK(needs.request_read.len == 1 && same(needs.request_read.items[0], "*"));
    GH_CHECK(needs.response_write.len == 1);
    gh_needs_clear(&needs);
    gh_needs_init(&needs, GH_ON_REQUEST);
    gh_needs_read_request_header(&needs, "x-tenant");
    gh_needs_response_body(&needs);
    gh_needs_finish(&needs);
    GH_CHECK(needs.request_read.len == 1 && same(needs.request_read.items[0], "x-tenant"));
    GH_CHECK(needs.request_write.len == 0 && needs.response_read.len == 0);
    GH_CHECK(needs.response_body && (needs.hooks & GH_ON_RESPONSE_BODY));
    gh_needs_clear(&needs);
    gh_needs_init(&needs, GH_ON_REQUEST);
    gh_needs_no_header(&needs);
    gh_needs_finish(&needs);
    GH_CHECK(needs.request_read.len == 0);
    gh_needs_clear(&needs);
}

static void header_names_from_a_configuration_are_checked_and_lowered(void) {
    char *name = NULL, *err;
    GH_CHECK(gh_config_header_name("header", "  X-Tenant ", &name) == NULL && same(name, "x-tenant"));
    free(name);
    err = gh_config_header_name("header", "bad header", &name);
    GH_CHECK(same(err, "`header`: \"bad header\" is not a header name") && name == NULL);
    free(err);
    err = gh_config_header_name("header", "", &name);
    GH_CHECK(err != NULL);
    free(err);
}

static void the_doubles_check_like_the_gateway(void) {
    gh_request *req = gh_test_request("GET", "/a?b=1");
    char *s = gh_request_query(req), *err;
    GH_CHECK(same(s, "b=1"));
    free(s);
    GH_CHECK((err = gh_request_set_header(req, "bad name", "v")) != NULL);
    free(err);
    GH_CHECK((err = gh_request_set_header(req, "x-a", "line\r\nbreak")) != NULL);
    free(err);
    GH_CHECK((err = gh_request_set_path(req, "no-slash")) != NULL);
    free(err);
    GH_CHECK(gh_request_append_header(req, "X-A", "1") == NULL);
    GH_CHECK(gh_request_append_header(req, "x-a", "2") == NULL);
    s = gh_request_header(req, "x-A");
    GH_CHECK(same(s, "1"));
    free(s);
    GH_CHECK(gh_steer_to_tag(req, "canary", GH_FALLBACK_FAIL) == NULL);
    GH_CHECK(gh_limit_retries(req, 2) == NULL && gh_limit_retries(req, 5) == NULL);
    gh_fallback fallback;
    GH_CHECK(same(gh_test_request_steered(req, &fallback), "canary") && fallback == GH_FALLBACK_FAIL);
    GH_CHECK(gh_test_request_retry_limit(req) == 2);
    gh_test_request_freeze(req);
    err = gh_request_set_header(req, "x-a", "3");
    GH_CHECK(same(err, "the request is read-only in on-response"));
    free(err);
    gh_test_request_free(req);

    gh_window w;
    GH_CHECK(gh_counter_increment("k", 2, 60000, &w) == NULL && w.count == 2);
    GH_CHECK(gh_counter_increment("k", 3, 60000, &w) == NULL && w.count == 5);
    GH_CHECK(gh_counter_get("other", 60000, &w) == NULL && w.count == 0);
    GH_CHECK((err = gh_counter_get("k", 1000, &w)) != NULL);
    free(err);
    GH_CHECK((err = gh_counter_increment("k", 1, 10, &w)) != NULL);
    free(err);
}

int main(void) {
    reads_each_kind_of_value_and_names_the_key_at_fault();
    refuses_what_is_not_one_json_object();
    survives_any_input();
    answers_in_the_gateway_error_shape();
    needs_default_to_every_header_until_one_is_declared();
    header_names_from_a_configuration_are_checked_and_lowered();
    the_doubles_check_like_the_gateway();
    return gh_test_summary();
}
