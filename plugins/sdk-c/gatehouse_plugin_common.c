/* The parts of the C SDK that do not call the gateway: needs, answers, the configuration reader.
 * Compiled into the plugin and into its native tests alike. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gatehouse_plugin_internal.h"

/* --- memory ---------------------------------------------------------------------------------- */

void *gh_alloc(size_t size) {
    void *p = malloc(size ? size : 1);
    if (!p) abort();
    return p;
}

char *gh_strndup(const char *s, size_t len) {
    char *copy = gh_alloc(len + 1);
    memcpy(copy, s, len);
    copy[len] = '\0';
    return copy;
}

char *gh_strdup(const char *s) { return gh_strndup(s, strlen(s)); }

char *gh_format(const char *format, ...) {
    va_list args;
    va_start(args, format);
    int len = vsnprintf(NULL, 0, format, args);
    va_end(args);
    if (len < 0) return gh_strdup(format);
    char *text = gh_alloc((size_t)len + 1);
    va_start(args, format);
    vsnprintf(text, (size_t)len + 1, format, args);
    va_end(args);
    return text;
}

void gh_strings_free(char **strings, size_t count) {
    for (size_t i = 0; i < count; i++) free(strings[i]);
    free(strings);
}

/* --- needs ----------------------------------------------------------------------------------- */

static void names_push(gh_names *names, const char *name) {
    char **items = realloc(names->items, (names->len + 1) * sizeof *items);
    if (!items) abort();
    names->items = items;
    names->items[names->len++] = gh_strdup(name);
}

static void names_clear(gh_names *names) {
    gh_strings_free(names->items, names->len);
    names->items = NULL;
    names->len = 0;
}

void gh_needs_init(gh_needs *needs, uint8_t hooks) {
    memset(needs, 0, sizeof *needs);
    needs->hooks = hooks;
}

void gh_needs_finish(gh_needs *needs) {
    if (needs->declared_headers) return;
    names_push(&needs->request_read, "*");
    names_push(&needs->request_write, "*");
    names_push(&needs->response_read, "*");
    names_push(&needs->response_write, "*");
    needs->declared_headers = true;
}

void gh_needs_clear(gh_needs *needs) {
    names_clear(&needs->request_read);
    names_clear(&needs->request_write);
    names_clear(&needs->response_read);
    names_clear(&needs->response_write);
}

static void declare(gh_needs *needs, gh_names *names, const char *name) {
    needs->declared_headers = true;
    names_push(names, name);
}

void gh_needs_read_request_header(gh_needs *n, const char *name) { declare(n, &n->request_read, name); }
void gh_needs_write_request_header(gh_needs *n, const char *name) { declare(n, &n->request_write, name); }
void gh_needs_read_response_header(gh_needs *n, const char *name) { declare(n, &n->response_read, name); }
void gh_needs_write_response_header(gh_needs *n, const char *name) { declare(n, &n->response_write, name); }
void gh_needs_no_header(gh_needs *n) { n->declared_headers = true; }
void gh_needs_request_body(gh_needs *n) { n->request_body = true; }
void gh_needs_response_body(gh_needs *n) {
    n->response_body = true;
    n->hooks |= GH_ON_RESPONSE_BODY;
}
void gh_needs_node_steering(gh_needs *n) { n->node_steering = true; }
void gh_needs_counters(gh_needs *n) { n->counters = true; }

/* --- answers --------------------------------------------------------------------------------- */

gh_action gh_proceed(void) { return (gh_action){.respond = false}; }

gh_action gh_reply(uint16_t status, const char *content_type, const char *body) {
    gh_action action = {.respond = true, .status = status};
    if (content_type) gh_action_add_header(&action, "content-type", content_type);
    if (body) {
        action.body_len = strlen(body);
        action.body = (uint8_t *)gh_strndup(body, action.body_len);
    }
    return action;
}

/* Appends `text` to `out` as the inside of a JSON string. */
static size_t json_escape(char *out, const char *text) {
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '"' || *p == '\\') {
            if (out) { out[n] = '\\'; out[n + 1] = (char)*p; }
            n += 2;
        } else if (*p < 0x20) {
            if (out) {
                memcpy(out + n, "\\u00", 4);
                out[n + 4] = hex[*p >> 4];
                out[n + 5] = hex[*p & 15];
            }
            n += 6;
        } else {
            if (out) out[n] = (char)*p;
            n += 1;
        }
    }
    return n;
}

gh_action gh_reply_error(uint16_t status, const char *error, const char *message) {
    char head[40];
    int head_len = snprintf(head, sizeof head, "{\"status\":%u,\"error\":\"", (unsigned)status);
    size_t len = (size_t)head_len + json_escape(NULL, error) + strlen("\",\"message\":\"") +
                 json_escape(NULL, message) + strlen("\"}");
    char *body = gh_alloc(len + 1);
    size_t at = 0;
    memcpy(body, head, (size_t)head_len);
    at += (size_t)head_len;
    at += json_escape(body + at, error);
    memcpy(body + at, "\",\"message\":\"", 13);
    at += 13;
    at += json_escape(body + at, message);
    memcpy(body + at, "\"}", 3);
    gh_action action = {.respond = true, .status = status, .body = (uint8_t *)body, .body_len = len};
    gh_action_add_header(&action, "content-type", "application/json");
    return action;
}

void gh_action_add_header(gh_action *action, const char *name, const char *value) {
    gh_header *headers = realloc(action->headers, (action->header_count + 1) * sizeof *headers);
    if (!headers) abort();
    action->headers = headers;
    headers[action->header_count++] = (gh_header){gh_strdup(name), gh_strdup(value)};
}

void gh_action_free(gh_action *action) {
    for (size_t i = 0; i < action->header_count; i++) {
        free(action->headers[i].name);
        free(action->headers[i].value);
    }
    free(action->headers);
    free(action->body);
    *action = gh_proceed();
}

/* --- configuration --------------------------------------------------------------------------- */

typedef enum { J_NULL, J_BOOL, J_NUMBER, J_STRING, J_ARRAY, J_OBJECT } json_kind;

typedef struct json {
    json_kind kind;
    bool boolean;
    char *text;          /* J_STRING: the decoded string; J_NUMBER: as written */
    struct json *items;  /* J_ARRAY, J_OBJECT: the values */
    char **keys;         /* J_OBJECT: the keys */
    size_t len;
} json;

struct gh_config {
    json root;
};

/* Nesting deeper than this is refused (a configuration, not a document). */
#define MAX_DEPTH 32

typedef struct {
    const char *p, *end;
    char *err;
} parser;

static void json_free(json *v) {
    free(v->text);
    for (size_t i = 0; i < v->len; i++) {
        json_free(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
}

static bool fail_at(parser *ps, const char *what) {
    if (!ps->err) ps->err = gh_format("invalid configuration: %s", what);
    return false;
}

static void skip_space(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool read_hex4(parser *ps, unsigned long *out) {
    if (ps->end - ps->p < 4) return false;
    unsigned long v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_value(ps->p[i]);
        if (d < 0) return false;
        v = v * 16 + (unsigned long)d;
    }
    ps->p += 4;
    *out = v;
    return true;
}

static size_t put_utf8(char *out, unsigned long cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xc0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A string after its opening quote. The decoded text is never longer than the escaped one. */
static bool parse_string(parser *ps, char **out) {
    const char *start = ps->p;
    char *text = gh_alloc((size_t)(ps->end - start) + 1);
    size_t n = 0;
    while (ps->p < ps->end && *ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p++;
        if (c < 0x20) { free(text); return fail_at(ps, "control character in a string"); }
        if (c != '\\') { text[n++] = (char)c; continue; }
        if (ps->p >= ps->end) break;
        char e = *ps->p++;
        switch (e) {
        case '"': case '\\': case '/': text[n++] = e; break;
        case 'b': text[n++] = '\b'; break;
        case 'f': text[n++] = '\f'; break;
        case 'n': text[n++] = '\n'; break;
        case 'r': text[n++] = '\r'; break;
        case 't': text[n++] = '\t'; break;
        case 'u': {
            unsigned long cp, low;
            if (!read_hex4(ps, &cp)) { free(text); return fail_at(ps, "bad \\u escape"); }
            if (cp >= 0xd800 && cp < 0xdc00) {
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u') {
                    free(text);
                    return fail_at(ps, "lone surrogate in a \\u escape");
                }
                ps->p += 2;
                if (!read_hex4(ps, &low) || low < 0xdc00 || low >= 0xe000) {
                    free(text);
                    return fail_at(ps, "lone surrogate in a \\u escape");
                }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                free(text);
                return fail_at(ps, "lone surrogate in a \\u escape");
            }
            if (cp == 0) { free(text); return fail_at(ps, "\\u0000 in a string"); }
            n += put_utf8(text + n, cp);
            break;
        }
        default: free(text); return fail_at(ps, "bad escape in a string");
        }
    }
    if (ps->p >= ps->end) { free(text); return fail_at(ps, "unterminated string"); }
    ps->p++;
    text[n] = '\0';
    *out = text;
    return true;
}

static bool parse_value(parser *ps, json *v, int depth);

static bool parse_items(parser *ps, json *v, int depth, bool object) {
    char close = object ? '}' : ']';
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == close) { ps->p++; return true; }
    for (;;) {
        json *items = realloc(v->items, (v->len + 1) * sizeof *items);
        if (!items) abort();
        v->items = items;
        if (object) {
            char **keys = realloc(v->keys, (v->len + 1) * sizeof *keys);
            if (!keys) abort();
            v->keys = keys;
            skip_space(ps);
            if (ps->p >= ps->end || *ps->p != '"') return fail_at(ps, "expected a key in quotes");
            ps->p++;
            if (!parse_string(ps, &v->keys[v->len])) return false;
            for (size_t i = 0; i < v->len; i++) {
                if (strcmp(v->keys[i], v->keys[v->len]) == 0) {
                    char *what = gh_format("duplicate field `%s`", v->keys[i]);
                    free(v->keys[v->len]);
                    fail_at(ps, what);
                    free(what);
                    return false;
                }
            }
            skip_space(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(v->keys[v->len]);
                return fail_at(ps, "expected `:` after a key");
            }
            ps->p++;
        }
        memset(&v->items[v->len], 0, sizeof v->items[v->len]);
        bool ok = parse_value(ps, &v->items[v->len], depth + 1);
        v->len++; /* freed by json_free even when incomplete */
        if (!ok) return false;
        skip_space(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == close) { ps->p++; return true; }
        return fail_at(ps, object ? "expected `,` or `}`" : "expected `,` or `]`");
    }
}

static bool parse_value(parser *ps, json *v, int depth) {
    if (depth > MAX_DEPTH) return fail_at(ps, "nested too deeply");
    skip_space(ps);
    if (ps->p >= ps->end) return fail_at(ps, "unexpected end");
    char c = *ps->p;
    if (c == '{' || c == '[') {
        ps->p++;
        v->kind = c == '{' ? J_OBJECT : J_ARRAY;
        return parse_items(ps, v, depth, c == '{');
    }
    if (c == '"') {
        ps->p++;
        v->kind = J_STRING;
        return parse_string(ps, &v->text);
    }
    static const struct { const char *word; json_kind kind; bool value; } words[] = {
        {"null", J_NULL, false}, {"true", J_BOOL, true}, {"false", J_BOOL, false}};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        size_t len = strlen(words[i].word);
        if ((size_t)(ps->end - ps->p) >= len && memcmp(ps->p, words[i].word, len) == 0) {
            ps->p += len;
            v->kind = words[i].kind;
            v->boolean = words[i].value;
            return true;
        }
    }
    const char *start = ps->p;
    if (ps->p < ps->end && *ps->p == '-') ps->p++;
    const char *digits = ps->p;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    if (ps->p == digits) return fail_at(ps, "expected a value");
    if (*digits == '0' && ps->p - digits > 1) return fail_at(ps, "leading zero in a number");
    if (ps->p < ps->end && *ps->p == '.') {
        ps->p++;
        const char *frac = ps->p;
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
        if (ps->p == frac) return fail_at(ps, "expected digits after `.`");
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        const char *exp = ps->p;
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
        if (ps->p == exp) return fail_at(ps, "expected digits in an exponent");
    }
    v->kind = J_NUMBER;
    v->text = gh_strndup(start, (size_t)(ps->p - start));
    return true;
}

char *gh_config_parse(const char *text, size_t len, gh_config **out) {
    *out = NULL;
    gh_config *config = gh_alloc(sizeof *config);
    memset(config, 0, sizeof *config);
    parser ps = {text, text + len, NULL};
    skip_space(&ps);
    if (ps.p == ps.end) {
        config->root.kind = J_OBJECT;
        *out = config;
        return NULL;
    }
    if (parse_value(&ps, &config->root, 0)) {
        skip_space(&ps);
        if (ps.p != ps.end) fail_at(&ps, "trailing characters after the object");
        else if (config->root.kind != J_OBJECT) fail_at(&ps, "expected an object");
    }
    if (ps.err) {
        gh_config_free(config);
        return ps.err;
    }
    *out = config;
    return NULL;
}

void gh_config_free(gh_config *config) {
    if (!config) return;
    json_free(&config->root);
    free(config);
}

static const json *lookup(const gh_config *config, const char *key) {
    for (size_t i = 0; i < config->root.len; i++)
        if (strcmp(config->root.keys[i], key) == 0) return &config->root.items[i];
    return NULL;
}

/* serde's words for what was found. */
static char *found(const json *v) {
    switch (v->kind) {
    case J_NULL: return gh_strdup("null");
    case J_BOOL: return gh_format("boolean `%s`", v->boolean ? "true" : "false");
    case J_NUMBER: return gh_format("number %s", v->text);
    case J_STRING: return gh_format("string \"%s\"", v->text);
    case J_ARRAY: return gh_strdup("sequence");
    case J_OBJECT: return gh_strdup("map");
    }
    return gh_strdup("value");
}

static char *invalid_type(const char *key, const json *v, const char *expected) {
    char *what = found(v);
    char *err = gh_format("invalid configuration: `%s`: invalid type: %s, expected %s", key, what, expected);
    free(what);
    return err;
}

char *gh_config_known_keys(const gh_config *config, const char *const *known) {
    for (size_t i = 0; i < config->root.len; i++) {
        bool ok = false;
        for (const char *const *k = known; *k; k++) ok = ok || strcmp(*k, config->root.keys[i]) == 0;
        if (ok) continue;
        size_t len = 0;
        for (const char *const *k = known; *k; k++) len += strlen(*k) + 4;
        char *list = gh_alloc(len + 1);
        list[0] = '\0';
        for (const char *const *k = known; *k; k++) {
            if (k != known) strcat(list, ", ");
            strcat(list, "`");
            strcat(list, *k);
            strcat(list, "`");
        }
        char *err = gh_format("invalid configuration: unknown field `%s`, expected one of %s",
                              config->root.keys[i], list);
        free(list);
        return err;
    }
    return NULL;
}

char *gh_config_string(const gh_config *config, const char *key, const char *fallback, char **out) {
    const json *v = lookup(config, key);
    if (!v || v->kind == J_NULL) {
        *out = fallback ? gh_strdup(fallback) : NULL;
        return NULL;
    }
    if (v->kind != J_STRING) return invalid_type(key, v, "a string");
    *out = gh_strdup(v->text);
    return NULL;
}

char *gh_config_strings(const gh_config *config, const char *key, char ***out, size_t *count) {
    *out = NULL;
    *count = 0;
    const json *v = lookup(config, key);
    if (!v) return gh_format("invalid configuration: missing field `%s`", key);
    if (v->kind != J_ARRAY) return invalid_type(key, v, "a list of strings");
    char **items = gh_alloc(v->len * sizeof *items);
    for (size_t i = 0; i < v->len; i++) {
        if (v->items[i].kind != J_STRING) {
            char *what = found(&v->items[i]);
            char *err = gh_format("invalid configuration: `%s[%zu]`: invalid type: %s, expected a string",
                                  key, i, what);
            free(what);
            gh_strings_free(items, i);
            return err;
        }
        items[i] = gh_strdup(v->items[i].text);
    }
    *out = items;
    *count = v->len;
    return NULL;
}

char *gh_config_uint(const gh_config *config, const char *key, uint64_t fallback, uint64_t max,
                     uint64_t *out) {
    const json *v = lookup(config, key);
    if (!v || v->kind == J_NULL) {
        *out = fallback;
        return NULL;
    }
    if (v->kind != J_NUMBER || v->text[0] == '-' || strpbrk(v->text, ".eE"))
        return invalid_type(key, v, "a whole number, 0 or more");
    uint64_t n = 0;
    for (const char *p = v->text; *p; p++) {
        uint64_t digit = (uint64_t)(*p - '0');
        if (n > (UINT64_MAX - digit) / 10) n = UINT64_MAX;
        else n = n * 10 + digit;
    }
    if (n > max)
        return gh_format("invalid configuration: `%s`: %s is more than %llu", key, v->text,
                         (unsigned long long)max);
    *out = n;
    return NULL;
}

char *gh_config_bool(const gh_config *config, const char *key, bool fallback, bool *out) {
    const json *v = lookup(config, key);
    if (!v || v->kind == J_NULL) {
        *out = fallback;
        return NULL;
    }
    if (v->kind != J_BOOL) return invalid_type(key, v, "a boolean");
    *out = v->boolean;
    return NULL;
}

char *gh_config_header_name(const char *key, const char *name, char **out) {
    *out = NULL;
    const char *start = name, *end = name + strlen(name);
    while (start < end && (*start == ' ' || *start == '\t')) start++;
    while (end > start && (end[-1] == ' ' || end[-1] == '\t')) end--;
    if (start == end) return gh_format("`%s`: \"%s\" is not a header name", key, name);
    char *lower = gh_strndup(start, (size_t)(end - start));
    for (char *p = lower; *p; p++) {
        unsigned char c = (unsigned char)*p;
        bool token = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
                     (c && strchr("!#$%&'*+-.^_`|~", c));
        if (!token) {
            free(lower);
            return gh_format("`%s`: \"%s\" is not a header name", key, name);
        }
        if (c >= 'A' && c <= 'Z') *p = (char)(c - 'A' + 'a');
    }
    *out = lower;
    return NULL;
}
