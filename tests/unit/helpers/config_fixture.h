/* tests/unit/helpers/config_fixture.h — the fixture of the config key tests (header only): a
 * fresh default config on the heap per test (it is large), loading a text, and expecting a
 * refusal that names the key. Include after cmocka.h. */
#ifndef CMTP_TESTS_CONFIG_FIXTURE_H
#define CMTP_TESTS_CONFIG_FIXTURE_H

#include <stdlib.h>
#include <string.h>

#include "core/config.h"

/* cfx_setup puts a default config in |*state|; cfx_teardown frees it. */
static inline int cfx_setup(void **state)
{
    struct cmtp_config *c = malloc(sizeof(*c));
    if (c == NULL)
        return -1;
    cmtp_config_init(c);
    *state = c;
    return 0;
}

static inline int cfx_teardown(void **state)
{
    cmtp_config_free(*state);
    free(*state);
    return 0;
}

/* cfx_load applies |text| to |c| (named "t.conf"), the message in |err|. */
static inline int cfx_load(struct cmtp_config *c, const char *text, char *err)
{
    return cmtp_config_load_string(c, text, strlen(text), "t.conf", err, CMTP_CONFIG_ERR_LEN);
}

/* cfx_expect_bad loads |text| and expects -EINVAL with a message containing |want|. */
static inline void cfx_expect_bad(struct cmtp_config *c, const char *text, const char *want)
{
    char err[CMTP_CONFIG_ERR_LEN];
    err[0] = '\0';
    assert_int_equal(cfx_load(c, text, err), -22);
    if (strstr(err, want) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", err, want);
}

#endif
