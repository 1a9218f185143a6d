/* What the SDK's parts share: the needs a plugin declared, and string helpers. Not for plugins. */
#ifndef GATEHOUSE_PLUGIN_INTERNAL_H
#define GATEHOUSE_PLUGIN_INTERNAL_H

#include "gatehouse_plugin.h"

typedef struct gh_names {
    char **items;
    size_t len;
} gh_names;

struct gh_needs {
    uint8_t hooks;
    bool declared_headers; /* false: every header, read and write */
    gh_names request_read, request_write, response_read, response_write;
    bool request_body, response_body, node_steering, counters;
};

/* Needs with the plugin's hooks and nothing declared yet. */
void gh_needs_init(gh_needs *needs, uint8_t hooks);
/* The header lists as the gateway reads them: `*` for every header when none was declared. */
void gh_needs_finish(gh_needs *needs);
void gh_needs_clear(gh_needs *needs);

/* malloc'd copies; abort when memory runs out (the gateway then fails the call cleanly). */
char *gh_strdup(const char *s);
char *gh_strndup(const char *s, size_t len);
void *gh_alloc(size_t size);

#endif
