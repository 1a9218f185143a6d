/* Configuration parsing and the path check of the c-example plugin. No libc beyond memory and
 * string functions, so the module stays small and has no WASI import. */
#include "policy.h"

#include <string.h>

/* Appends the NUL-terminated `text` to the message in `buf`, truncating at `size`. */
static void append(char *buf, size_t size, const char *text) {
    size_t used = strlen(buf);
    while (*text && used + 1 < size) {
        buf[used++] = *text++;
    }
    buf[used] = '\0';
}

static bool fail(char *err, size_t err_size, const char *a, const char *b, const char *c) {
    if (err_size == 0) {
        return false;
    }
    err[0] = '\0';
    append(err, err_size, a);
    append(err, err_size, b);
    append(err, err_size, c);
    return false;
}

/* A cursor over the JSON text. */
typedef struct {
    const char *p;
    const char *end;
} cursor_t;

static void skip_space(cursor_t *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) {
        c->p++;
    }
}

static int hex_digit(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Reads four hex digits after `\u`. */
static long read_hex4(cursor_t *c) {
    if (c->end - c->p < 4) return -1;
    long value = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(c->p[i]);
        if (d < 0) return -1;
        value = value * 16 + d;
    }
    c->p += 4;
    return value;
}

/* Appends the UTF-8 encoding of `cp`; false when `out` is full. */
static bool put_utf8(char *out, size_t size, size_t *used, long cp) {
    char bytes[4];
    size_t n;
    if (cp < 0x80) {
        bytes[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        bytes[0] = (char)(0xc0 | (cp >> 6));
        bytes[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        bytes[0] = (char)(0xe0 | (cp >> 12));
        bytes[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        bytes[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        bytes[0] = (char)(0xf0 | (cp >> 18));
        bytes[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        bytes[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        bytes[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    if (*used + n >= size) return false;
    memcpy(out + *used, bytes, n);
    *used += n;
    return true;
}

/* Reads a JSON string (the cursor is on the opening quote) into `out`, NUL-terminated.
 * Returns NULL on success or a description of the problem. */
static const char *read_string(cursor_t *c, char *out, size_t size) {
    size_t used = 0;
    c->p++;
    while (c->p < c->end) {
        char ch = *c->p++;
        if (ch == '"') {
            out[used] = '\0';
            return NULL;
        }
        if ((unsigned char)ch < 0x20) return "a control character inside a string";
        if (ch == '\\') {
            if (c->p >= c->end) break;
            char esc = *c->p++;
            long cp;
            switch (esc) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                cp = read_hex4(c);
                if (cp < 0) return "a bad \\u escape";
                if (cp >= 0xd800 && cp < 0xdc00) {
                    if (c->end - c->p < 2 || c->p[0] != '\\' || c->p[1] != 'u') return "a lone surrogate";
                    c->p += 2;
                    long low = read_hex4(c);
                    if (low < 0xdc00 || low >= 0xe000) return "a lone surrogate";
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                } else if (cp >= 0xdc00 && cp < 0xe000) {
                    return "a lone surrogate";
                }
                break;
            default:
                return "a bad escape";
            }
            if (!put_utf8(out, size, &used, cp)) return "a value longer than 255 bytes";
        } else {
            if (used + 1 >= size) return "a value longer than 255 bytes";
            out[used++] = ch;
        }
    }
    return "an unterminated string";
}

static bool literal(cursor_t *c, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) >= n && memcmp(c->p, word, n) == 0) {
        c->p += n;
        return true;
    }
    return false;
}

bool policy_parse(const char *json, size_t len, policy_t *out, char *err, size_t err_size) {
    strcpy(out->block, "/admin");
    strcpy(out->powered_by, "gatehouse-c");

    cursor_t c = {json, json + len};
    skip_space(&c);
    if (c.p == c.end) return true;
    if (*c.p != '{') return fail(err, err_size, "invalid configuration: ", "expected a JSON object", "");
    c.p++;
    skip_space(&c);
    if (c.p < c.end && *c.p == '}') {
        c.p++;
    } else {
        for (;;) {
            char key[POLICY_VALUE_MAX + 1];
            skip_space(&c);
            if (c.p >= c.end || *c.p != '"') {
                return fail(err, err_size, "invalid configuration: ", "expected a key", "");
            }
            const char *problem = read_string(&c, key, sizeof key);
            if (problem) return fail(err, err_size, "invalid configuration: ", problem, "");

            char *target;
            if (strcmp(key, "block") == 0) {
                target = out->block;
            } else if (strcmp(key, "powered_by") == 0) {
                target = out->powered_by;
            } else {
                return fail(err, err_size, "invalid configuration: unknown field `", key,
                            "`, expected `block` or `powered_by`");
            }

            skip_space(&c);
            if (c.p >= c.end || *c.p != ':') {
                return fail(err, err_size, "invalid configuration: ", "expected ':'", "");
            }
            c.p++;
            skip_space(&c);
            if (c.p < c.end && *c.p == '"') {
                problem = read_string(&c, target, POLICY_VALUE_MAX + 1);
                if (problem) return fail(err, err_size, "invalid configuration: ", problem, "");
            } else if (literal(&c, "null")) {
                target[0] = '\0';
            } else {
                return fail(err, err_size, "invalid configuration: `", key, "` must be a string or null");
            }

            skip_space(&c);
            if (c.p < c.end && *c.p == ',') {
                c.p++;
                continue;
            }
            if (c.p < c.end && *c.p == '}') {
                c.p++;
                break;
            }
            return fail(err, err_size, "invalid configuration: ", "expected ',' or '}'", "");
        }
    }
    skip_space(&c);
    if (c.p != c.end) return fail(err, err_size, "invalid configuration: ", "text after the object", "");

    /* The gateway accepts header values of visible ASCII, spaces and tabs. */
    for (const unsigned char *ch = (const unsigned char *)out->powered_by; *ch; ch++) {
        if (*ch != '\t' && (*ch < 0x20 || *ch >= 0x7f)) {
            return fail(err, err_size, "`powered_by` ", "must be visible ASCII on one line", "");
        }
    }
    return true;
}

bool policy_blocks(const policy_t *policy, const char *path, size_t len) {
    size_t n = strlen(policy->block);
    if (n == 0 || n > len) return false;
    for (size_t i = 0; i + n <= len; i++) {
        if (memcmp(path + i, policy->block, n) == 0) return true;
    }
    return false;
}
