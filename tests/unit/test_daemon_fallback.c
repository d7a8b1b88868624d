/* tests/unit/test_daemon_fallback.c — the SMTP fallback levels (PROTOCOL.md 14) as the SMTP
 * transport applies them, and the fallback record's text: every level, protection with and
 * without TLS, verified or not, and the bound of a queue reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/fallback.h"
#include "queue/queue.h"

static void test_policy(void **state)
{
    (void)state;
    enum cmtp_smtpc_tls tls = CMTP_SMTPC_TLS_NONE;
    bool verify = false;

    assert_true(cmtpd_fallback_policy(CMTP_FALLBACK_SMTP_VERIFIED, &tls, &verify));
    assert_int_equal(tls, CMTP_SMTPC_TLS_REQUIRE);
    assert_true(verify);
    assert_true(cmtpd_fallback_policy(CMTP_FALLBACK_SMTP_TLS, &tls, &verify));
    assert_int_equal(tls, CMTP_SMTPC_TLS_REQUIRE);
    assert_false(verify);
    verify = true;
    assert_true(cmtpd_fallback_policy(CMTP_FALLBACK_SMTP, &tls, &verify));
    assert_int_equal(tls, CMTP_SMTPC_TLS_MAY);
    assert_false(verify);
    /* none (and anything unknown) never leaves over SMTP, and sets nothing */
    tls = CMTP_SMTPC_TLS_REQUIRE;
    verify = true;
    assert_false(cmtpd_fallback_policy(CMTP_FALLBACK_NONE, &tls, &verify));
    assert_false(cmtpd_fallback_policy((enum cmtp_fallback)42, &tls, &verify));
    assert_int_equal(tls, CMTP_SMTPC_TLS_REQUIRE);
    assert_true(verify);
}

static void test_protection(void **state)
{
    (void)state;
    char p[CMTPD_FALLBACK_PROT_MAX];

    cmtpd_fallback_protection(p, sizeof(p), "TLSv1.3", "TLS_AES_128_GCM_SHA256");
    assert_string_equal(p, "TLSv1.3/TLS_AES_128_GCM_SHA256");
    cmtpd_fallback_protection(p, sizeof(p), "TLSv1.2", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
    assert_string_equal(p, "TLSv1.2/TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
    cmtpd_fallback_protection(p, sizeof(p), NULL, NULL);
    assert_string_equal(p, "none");
    cmtpd_fallback_protection(p, sizeof(p), "TLSv1.3", "");
    assert_string_equal(p, "none");
    cmtpd_fallback_protection(p, 5, "TLSv1.3", "TLS_AES_128_GCM_SHA256");
    assert_string_equal(p, "TLSv");
}

static void test_reason(void **state)
{
    (void)state;
    char r[QUEUE_REASON_MAX];

    cmtpd_fallback_reason(r, sizeof(r), CMTP_FALLBACK_SMTP_VERIFIED, "127.0.0.1:2525",
                          "TLSv1.3/TLS_AES_128_GCM_SHA256", true, "250 2.0.0 Ok");
    assert_string_equal(r, "fallback smtp-verified via 127.0.0.1:2525 "
                           "TLSv1.3/TLS_AES_128_GCM_SHA256 verified: 250 2.0.0 Ok");
    cmtpd_fallback_reason(r, sizeof(r), CMTP_FALLBACK_SMTP_TLS, "mx.b.test:25",
                          "TLSv1.2/TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", false,
                          "550 5.1.1 no such user");
    assert_string_equal(r, "fallback smtp-tls via mx.b.test:25 "
                           "TLSv1.2/TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 unverified: 550 "
                           "5.1.1 no such user");
    /* plaintext: no verified word */
    cmtpd_fallback_reason(r, sizeof(r), CMTP_FALLBACK_SMTP, "[2001:db8::1]:25", "none", true,
                          "451 4.3.0 later");
    assert_string_equal(r, "fallback smtp via [2001:db8::1]:25 none: 451 4.3.0 later");
    cmtpd_fallback_reason(r, sizeof(r), CMTP_FALLBACK_SMTP, "h:25", NULL, false, NULL);
    assert_string_equal(r, "fallback smtp via h:25 none: ");
    /* bounded: the facts stay, the reply is cut */
    char longreply[400];
    memset(longreply, 'r', sizeof(longreply) - 1);
    longreply[sizeof(longreply) - 1] = '\0';
    cmtpd_fallback_reason(r, sizeof(r), CMTP_FALLBACK_SMTP_TLS, "127.0.0.1:25",
                          "TLSv1.3/TLS_AES_256_GCM_SHA384", false, longreply);
    assert_int_equal(strlen(r), QUEUE_REASON_MAX - 1);
    const char *facts = "fallback smtp-tls via 127.0.0.1:25 TLSv1.3/TLS_AES_256_GCM_SHA384 "
                        "unverified: rrr";
    assert_memory_equal(r, facts, strlen(facts));
    /* len 0 writes nothing */
    r[0] = 'q';
    cmtpd_fallback_reason(r, 0, CMTP_FALLBACK_SMTP, "h", "none", false, "x");
    assert_int_equal(r[0], 'q');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_protection),
        cmocka_unit_test(test_reason),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
