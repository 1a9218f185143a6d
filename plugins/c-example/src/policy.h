/* The c-example plugin's logic, free of the WebAssembly bindings so it can be tested natively. */
#ifndef GATEHOUSE_C_EXAMPLE_POLICY_H
#define GATEHOUSE_C_EXAMPLE_POLICY_H

#include <stdbool.h>
#include <stddef.h>

/* Longest accepted configuration value, in bytes. */
#define POLICY_VALUE_MAX 255

/* The configuration. An empty string disables the feature. */
typedef struct policy {
    /* Requests whose path contains this text are refused with 403 (default "/admin"). */
    char block[POLICY_VALUE_MAX + 1];
    /* Value of the `x-powered-by` response header (default "gatehouse-c"). */
    char powered_by[POLICY_VALUE_MAX + 1];
} policy_t;

/* Fills `out` from the JSON object `json` (`len` bytes; empty means `{}`). Keys: "block" and
 * "powered_by", each a string or null. On error returns false with a message in `err`. */
bool policy_parse(const char *json, size_t len, policy_t *out, char *err, size_t err_size);

/* Whether a request for `path` (`len` bytes, without the query) is refused. */
bool policy_blocks(const policy_t *policy, const char *path, size_t len);

#endif
