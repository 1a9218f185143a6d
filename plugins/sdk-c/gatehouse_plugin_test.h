/* Testing a C plugin natively: build its sources with gatehouse_plugin_common.c and
 * gatehouse_plugin_double.c (not the bindings) and a test program using what is below. The
 * request and response are in-memory doubles that behave like the gateway's: case-insensitive
 * headers, the same checks of names, values, paths and queries, a read-only request after
 * gh_test_request_freeze (as in on_response), counters kept in the process, the log on stderr.
 * `gatehouse plugin build` compiles and runs the test programs of a project's tests folder this
 * way before it builds the component. */
#ifndef GATEHOUSE_PLUGIN_TEST_H
#define GATEHOUSE_PLUGIN_TEST_H

#include <stdio.h>

#include "gatehouse_plugin.h"

/* A request for `method` and `target` (a path, optionally `?query`) from client 127.0.0.1,
 * routed to service `test` and API `test`. */
gh_request *gh_test_request(const char *method, const char *target);
void gh_test_request_add_header(gh_request *req, const char *name, const char *value);
void gh_test_request_client_addr(gh_request *req, const char *addr);
void gh_test_request_route(gh_request *req, const char *service, const char *api);
void gh_test_request_body(gh_request *req, const uint8_t *body, size_t len);
/* Makes the request read-only, as it is in on_response. */
void gh_test_request_freeze(gh_request *req);
void gh_test_request_free(gh_request *req);
/* How a hook steered the request: the tag or node (NULL when not steered), its fallback, and
 * the retry limit (-1 when none was set). */
const char *gh_test_request_steered(const gh_request *req, gh_fallback *fallback);
long gh_test_request_retry_limit(const gh_request *req);

gh_response *gh_test_response(uint16_t status);
void gh_test_response_add_header(gh_response *resp, const char *name, const char *value);
void gh_test_response_free(gh_response *resp);

/* The plugin's hooks, called as the gateway calls them. Each returns NULL or the error. */
char *gh_test_configure(const char *config);
/* The hooks the configured plugin declared (with what gh_needs_response_body adds). */
uint8_t gh_test_hooks(void);
char *gh_test_on_request(gh_request *req, gh_action *action);
char *gh_test_on_response(gh_request *req, gh_response *resp);

/* Checks for a test program: a failed check prints where and what, and the program's exit
 * status (return gh_test_summary()) says whether every check held. */
extern int gh_test_failures;
#define GH_CHECK(cond)                                                                  \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
            gh_test_failures++;                                                         \
        }                                                                               \
    } while (0)
int gh_test_summary(void);

#endif
