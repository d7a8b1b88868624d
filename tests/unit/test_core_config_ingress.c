/* tests/unit/test_core_config_ingress.c — the [smtp_ingress] keys of the SMTP ingress listener
 * (sender_policy, starttls, tls_required, policy_header, bare_lf_reject: defaults, values, bad
 * values with the key named), the sender-domain lookup, and cmtp_policy_parse_text, the policy
 * grammar shared with the CMTP-POLICY parameter and the CMTP-Policy header field. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "tests/unit/helpers/config_fixture.h"

static void test_defaults(void **state)
{
    struct cmtp_config *c = *state;
    assert_int_equal(c->smtp_ingress.sender_policy_count, 0);
    assert_true(c->smtp_ingress.starttls);
    assert_false(c->smtp_ingress.tls_required);
    assert_true(c->smtp_ingress.policy_header);
    assert_false(c->smtp_ingress.bare_lf_reject);
    assert_null(cmtp_config_sender_policy_for(c, "a.example"));
}

static void test_sender_policy(void **state)
{
    struct cmtp_config *c = *state;
    char err[CMTP_CONFIG_ERR_LEN];
    assert_int_equal(cfx_load(c,
                              "[smtp_ingress]\n"
                              "sender_policy = Example.ORG relay:domain  fallback:smtp-verified, "
                              "lists.example.org hops:4\n"
                              "  b.example RELAY:ANY hops:0\n"
                              "tls_required = yes\n"
                              "policy_header = no\n"
                              "bare_lf_reject = yes\n",
                              err),
                     0);
    assert_int_equal(c->smtp_ingress.sender_policy_count, 3);
    const struct cmtp_config_sender_policy *p = cmtp_config_sender_policy_for(c, "example.org");
    assert_non_null(p);
    assert_string_equal(p->domain, "example.org");
    assert_int_equal(p->set, CMTP_POLICY_SET_RELAY | CMTP_POLICY_SET_FALLBACK);
    assert_int_equal(p->policy.relay, CMTP_RELAY_DOMAIN);
    assert_int_equal(p->policy.fallback, CMTP_FALLBACK_SMTP_VERIFIED);
    /* The nearest parent wins; an unrelated or partial label does not match. */
    assert_ptr_equal(cmtp_config_sender_policy_for(c, "x.y.example.org"), p);
    p = cmtp_config_sender_policy_for(c, "a.lists.example.org");
    assert_non_null(p);
    assert_string_equal(p->domain, "lists.example.org");
    assert_int_equal(p->set, CMTP_POLICY_SET_HOPS);
    assert_int_equal(p->policy.hops, 4);
    assert_null(cmtp_config_sender_policy_for(c, "badexample.org"));
    assert_null(cmtp_config_sender_policy_for(c, "org"));
    p = cmtp_config_sender_policy_for(c, "b.example");
    assert_non_null(p);
    assert_int_equal(p->policy.relay, CMTP_RELAY_ANY);
    assert_int_equal(p->policy.hops, 0);
    assert_true(c->smtp_ingress.tls_required);
    assert_false(c->smtp_ingress.policy_header);
    assert_true(c->smtp_ingress.bare_lf_reject);
}

static void test_bad(void **state)
{
    struct cmtp_config *c = *state;
    cfx_expect_bad(c, "[smtp_ingress]\nsender_policy = a.example\n", "sender_policy");
    cfx_expect_bad(c, "[smtp_ingress]\nsender_policy = a.example relay:sometimes\n", "bad policy");
    cfx_expect_bad(c, "[smtp_ingress]\nsender_policy = a.example hops:33\n", "bad policy");
    cfx_expect_bad(c, "[smtp_ingress]\nsender_policy = a.example relay:any relay:none\n",
                   "bad policy");
    cfx_expect_bad(c, "[smtp_ingress]\nsender_policy = a..example relay:any\n", "domain");
    cfx_expect_bad(c, "[smtp_ingress]\nsender_policy = a.example hops:1, A.example hops:2\n",
                   "listed twice");
    cfx_expect_bad(c, "[smtp_ingress]\nstarttls = no\ntls_required = yes\n", "needs starttls");
    cfx_expect_bad(c, "[smtp_ingress]\nstarttls = maybe\n", "starttls");
    /* The config is unchanged after a refusal. */
    assert_int_equal(c->smtp_ingress.sender_policy_count, 0);
}

static void test_policy_text(void **state)
{
    (void)state;
    struct cmtp_policy p;
    unsigned set = 0;
    cmtp_policy_init(&p);
    assert_int_equal(
        cmtp_policy_parse_text(&p, &set, "relay:domain,fallback:smtp,hops:0", 33, false), 0);
    assert_int_equal(p.relay, CMTP_RELAY_DOMAIN);
    assert_int_equal(p.fallback, CMTP_FALLBACK_SMTP);
    assert_int_equal(p.hops, 0);
    assert_int_equal(set, CMTP_POLICY_SET_RELAY | CMTP_POLICY_SET_FALLBACK | CMTP_POLICY_SET_HOPS);
    /* Spaces separate only when allowed. */
    cmtp_policy_init(&p);
    assert_int_equal(cmtp_policy_parse_text(&p, &set, "relay:any hops:32", 17, false), -22);
    assert_int_equal(cmtp_policy_parse_text(&p, &set, " relay:any ,, hops:32 ", 22, true), 0);
    assert_int_equal(p.relay, CMTP_RELAY_ANY);
    assert_int_equal(p.hops, 32);
    /* Refusals leave |p| as it was. */
    static const char *const bad[] = {
        "",
        "relay",
        "relay:",
        ":none",
        "relay:none,",
        ",relay:none",
        "hops:08",
        "hops:33",
        "hops:-1",
        "hops:1x",
        "relay:none,relay:any",
        "colour:blue",
        "fallback:smtp-maybe",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct cmtp_policy q = p;
        if (cmtp_policy_parse_text(&q, &set, bad[i], strlen(bad[i]), false) != -22)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_memory_equal(&q, &p, sizeof(p));
    }
    assert_int_equal(cmtp_policy_parse_text(&p, &set, "   ", 3, true), -22);
    char longer[CMTP_POLICY_TEXT_MAX + 2];
    memset(longer, ' ', sizeof(longer) - 1);
    memcpy(longer, "hops:1", 6);
    longer[sizeof(longer) - 1] = '\0';
    assert_int_equal(cmtp_policy_parse_text(&p, &set, longer, strlen(longer), true), -22);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, cfx_setup, cfx_teardown),
        cmocka_unit_test_setup_teardown(test_sender_policy, cfx_setup, cfx_teardown),
        cmocka_unit_test_setup_teardown(test_bad, cfx_setup, cfx_teardown),
        cmocka_unit_test(test_policy_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
