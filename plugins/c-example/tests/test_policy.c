/* Native tests of the c-example plugin's logic: `plugins/build.sh --test` compiles and runs them. */
#include <stdio.h>
#include <string.h>

#include "policy.h"

static int failures;
static int passed;

#define CHECK(cond)                                                     \
    do {                                                                \
        if (cond) {                                                     \
            passed++;                                                   \
        } else {                                                        \
            failures++;                                                 \
            fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                               \
    } while (0)

static bool parse(const char *json, policy_t *p, char *err) {
    return policy_parse(json, strlen(json), p, err, 200);
}

static bool blocks(const policy_t *p, const char *path) {
    return policy_blocks(p, path, strlen(path));
}

int main(void) {
    policy_t p;
    char err[200];

    CHECK(parse("", &p, err));
    CHECK(strcmp(p.block, "/admin") == 0 && strcmp(p.powered_by, "gatehouse-c") == 0);
    CHECK(parse(" { } ", &p, err));
    CHECK(blocks(&p, "/admin"));
    CHECK(blocks(&p, "/v1/admin/users"));
    CHECK(!blocks(&p, "/users"));
    CHECK(!blocks(&p, "/adm"));

    CHECK(parse("{\"block\": \"/internal\", \"powered_by\": \"\\\"c\\\" \\/ 1\"}", &p, err));
    CHECK(strcmp(p.block, "/internal") == 0);
    CHECK(strcmp(p.powered_by, "\"c\" / 1") == 0);
    CHECK(blocks(&p, "/a/internal"));
    CHECK(!blocks(&p, "/admin"));

    CHECK(parse("{\"block\": \"/caf\\u00e9\"}", &p, err));
    CHECK(strcmp(p.block, "/caf\xc3\xa9") == 0);
    CHECK(!parse("{\"powered_by\": \"caf\\u00e9\"}", &p, err));
    CHECK(strstr(err, "visible ASCII") != NULL);

    CHECK(parse("{\"block\": null, \"powered_by\": \"\"}", &p, err));
    CHECK(!blocks(&p, "/admin"));
    CHECK(p.powered_by[0] == '\0');

    CHECK(parse("{\"block\": \"\\ud83d\\ude00\"}", &p, err));
    CHECK(strcmp(p.block, "\xf0\x9f\x98\x80") == 0);

    CHECK(!parse("{\"blok\": \"/x\"}", &p, err));
    CHECK(strstr(err, "unknown field `blok`") != NULL);
    CHECK(!parse("{\"block\": true}", &p, err));
    CHECK(strstr(err, "`block` must be a string or null") != NULL);
    CHECK(!parse("[]", &p, err));
    CHECK(!parse("{\"block\": \"/x\"", &p, err));
    CHECK(!parse("{\"block\": \"/x\"} x", &p, err));
    CHECK(!parse("{\"block\": \"\\ud83d\"}", &p, err));
    CHECK(!parse("{\"powered_by\": \"a\\nb\"}", &p, err));
    CHECK(strstr(err, "visible ASCII") != NULL);

    char long_value[400] = "{\"block\": \"";
    memset(long_value + strlen(long_value), 'a', 300);
    strcpy(long_value + 11 + 300, "\"}");
    CHECK(!parse(long_value, &p, err));
    CHECK(strstr(err, "longer than 255 bytes") != NULL);

    printf("%d passed, %d failed\n", passed, failures);
    return failures ? 1 : 0;
}
