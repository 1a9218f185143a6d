/* The plugin's hooks, run natively on the SDK's in-memory request and response. */
#include <stdlib.h>
#include <string.h>

#include "gatehouse_plugin_test.h"

static void lets_listed_tenants_through_and_names_them_in_the_response(void) {
    GH_CHECK(gh_test_configure("{\"allow\": [\"acme\"]}") == NULL);
    gh_request *req = gh_test_request("GET", "/hello");
    gh_test_request_add_header(req, "X-Tenant", "acme");
    gh_action action;
    GH_CHECK(gh_test_on_request(req, &action) == NULL);
    GH_CHECK(!action.respond);
    gh_response *resp = gh_test_response(200);
    GH_CHECK(gh_test_on_response(req, resp) == NULL);
    char *served = gh_response_header(resp, "x-served-for");
    GH_CHECK(served && strcmp(served, "acme") == 0);
    free(served);
    gh_test_response_free(resp);
    gh_test_request_free(req);
}

static void refuses_other_tenants_and_requests_without_one(void) {
    GH_CHECK(gh_test_configure("{\"allow\": [\"acme\"]}") == NULL);
    gh_request *other = gh_test_request("GET", "/hello");
    gh_test_request_add_header(other, "x-tenant", "globex");
    gh_action action;
    GH_CHECK(gh_test_on_request(other, &action) == NULL);
    GH_CHECK(action.respond && action.status == 403);
    GH_CHECK(strstr((const char *)action.body, "\"error\":\"forbidden\"") != NULL);
    gh_action_free(&action);
    gh_request *none = gh_test_request("GET", "/hello");
    GH_CHECK(gh_test_on_request(none, &action) == NULL);
    GH_CHECK(action.respond && action.status == 401);
    gh_action_free(&action);
    gh_test_request_free(other);
    gh_test_request_free(none);
}

static void configuration_errors_name_the_key(void) {
    char *err = gh_test_configure("{\"allow\": \"acme\"}");
    GH_CHECK(err && strstr(err, "`allow`") != NULL);
    free(err);
    err = gh_test_configure("{\"allow\": []}");
    GH_CHECK(err != NULL);
    free(err);
    err = gh_test_configure("{\"allow\": [\"acme\"], \"header\": \"bad header\"}");
    GH_CHECK(err && strstr(err, "`header`") != NULL);
    free(err);
}

int main(void) {
    lets_listed_tenants_through_and_names_them_in_the_response();
    refuses_other_tenants_and_requests_without_one();
    configuration_errors_name_the_key();
    return gh_test_summary();
}
