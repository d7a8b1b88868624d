/* tests/unit/test_core_config_smtp.c — the [delivery] keys of the SMTP transport: smtp,
 * smtp_starttls, smtp_tls_verify and smtp_tls_name (defaults, values, bad values with the key
 * named, and the cross-field rules of cmtp_config_check). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/config.h"

/* apply loads |text| on top of the defaults into |c| and returns the loader's result, its
 * message in |err|. */
static int apply(struct cmtp_config *c, const char *text, char err[CMTP_CONFIG_ERR_LEN])
{
    cmtp_config_init(c);
    err[0] = '\0';
    return cmtp_config_load_string(c, text, strlen(text), "smtp.conf", err, CMTP_CONFIG_ERR_LEN);
}

/* refused expects |text| to be refused with a message holding |want|. */
static void refused(struct cmtp_config *c, const char *text, const char *want)
{
    char err[CMTP_CONFIG_ERR_LEN];
    assert_int_equal(apply(c, text, err), -22);
    if (strstr(err, want) == NULL)
        fail_msg("\"%s\": message \"%s\" lacks \"%s\"", text, err, want);
}

/* [delivery] mode = cmtp hands local mail over CMTP to [delivery] cmtp, host[:port] (4465 by
 * default); the mode needs the key; an empty value unsets it. */
static void test_cmtp_store_key(void **state)
{
    (void)state;
    struct cmtp_config *c = malloc(sizeof(*c));
    char err[CMTP_CONFIG_ERR_LEN];
    assert_non_null(c);
    cmtp_config_init(c);
    assert_false(c->delivery.cmtp_set);
    assert_int_equal(apply(c, "[delivery]\nmode = cmtp\ncmtp = store.internal.example\n", err), 0);
    assert_int_equal(c->delivery.mode, CMTP_DELIVERY_CMTP);
    assert_true(c->delivery.cmtp_set);
    assert_int_equal(c->delivery.cmtp.nexthop.kind, CMTP_CONFIG_HOST_NAME);
    assert_string_equal(c->delivery.cmtp.nexthop.host, "store.internal.example");
    assert_int_equal(c->delivery.cmtp.nexthop.port, CMTP_PORT);
    assert_int_equal(apply(c, "[delivery]\nmode = cmtp\ncmtp = 192.0.2.9:14465\n", err), 0);
    assert_int_equal(c->delivery.cmtp.nexthop.kind, CMTP_CONFIG_HOST_IPV4);
    assert_int_equal(c->delivery.cmtp.nexthop.port, 14465);
    refused(c, "[delivery]\ncmtp = 192.0.2.9:0\n", "port must be 1..65535");
    refused(c, "[delivery]\nmode = cmtp\ncmtp =\n", "mode = cmtp needs cmtp");
    assert_int_equal(apply(c, "[delivery]\nmode = maildir\ncmtp =\n", err), 0);
    assert_false(c->delivery.cmtp_set);
    refused(c, "[delivery]\nmode = cmtp\n", "mode = cmtp needs cmtp");
    cmtp_config_free(c);
    free(c);
}

static void test_smtp_keys(void **state)
{
    (void)state;
    struct cmtp_config *c = malloc(sizeof(*c));
    char err[CMTP_CONFIG_ERR_LEN];
    assert_non_null(c);

    /* defaults */
    cmtp_config_init(c);
    assert_int_equal(c->delivery.smtp.kind, CMTP_CONFIG_SOCKET_NONE);
    assert_int_equal(c->delivery.smtp_starttls, CMTP_SMTPC_TLS_MAY);
    assert_false(c->delivery.smtp_tls_verify);
    assert_string_equal(c->delivery.smtp_tls_name, "");
    assert_true(c->delivery.chunking);
    assert_int_equal(apply(c, "[delivery]\nchunking = no\n", err), 0);
    assert_false(c->delivery.chunking);
    assert_int_equal(apply(c, "[delivery]\nchunking = yes\n", err), 0);
    assert_true(c->delivery.chunking);

    /* an IP endpoint, require, verified for a name given apart */
    assert_int_equal(apply(c,
                           "[delivery]\nmode = smtp\nsmtp = 192.0.2.7:2525\n"
                           "smtp_starttls = REQUIRE\nsmtp_tls_verify = yes\n"
                           "smtp_tls_name = Mail.Internal.Example\n",
                           err),
                     0);
    assert_int_equal(c->delivery.mode, CMTP_DELIVERY_SMTP);
    assert_int_equal(c->delivery.smtp.kind, CMTP_CONFIG_SOCKET_TCP);
    assert_int_equal(c->delivery.smtp.tcp.kind, CMTP_CONFIG_HOST_IPV4);
    assert_memory_equal(c->delivery.smtp.tcp.ip, "\xc0\x00\x02\x07", 4);
    assert_int_equal(c->delivery.smtp.tcp.port, 2525);
    assert_int_equal(c->delivery.smtp_starttls, CMTP_SMTPC_TLS_REQUIRE);
    assert_true(c->delivery.smtp_tls_verify);
    assert_string_equal(c->delivery.smtp_tls_name, "mail.internal.example");

    /* a host name needs no smtp_tls_name; IPv6; a Unix socket; none */
    assert_int_equal(
        apply(c, "[delivery]\nmode = smtp\nsmtp = localhost:25\nsmtp_tls_verify = on\n", err), 0);
    assert_string_equal(c->delivery.smtp.tcp.host, "localhost");
    assert_int_equal(apply(c, "[delivery]\nsmtp = [2001:db8::25]:587\nsmtp_starttls = none\n", err),
                     0);
    assert_int_equal(c->delivery.smtp.tcp.kind, CMTP_CONFIG_HOST_IPV6);
    assert_int_equal(c->delivery.smtp_starttls, CMTP_SMTPC_TLS_NONE);
    assert_int_equal(apply(c, "[delivery]\nmode = smtp\nsmtp = unix:/run/mta/smtp.sock\n", err), 0);
    assert_int_equal(c->delivery.smtp.kind, CMTP_CONFIG_SOCKET_UNIX);
    assert_string_equal(c->delivery.smtp.path, "/run/mta/smtp.sock");

    /* bad values name the key */
    refused(c, "[delivery]\nsmtp_starttls = sometimes\n", "use none, may or require");
    refused(c, "[delivery]\nsmtp_starttls = sometimes\n", "smtp_starttls");
    refused(c, "[delivery]\nsmtp_tls_verify = perhaps\n", "smtp_tls_verify");
    refused(c, "[delivery]\nchunking = sometimes\n", "chunking");
    refused(c, "[delivery]\nsmtp = 192.0.2.7\n", "missing :port");
    refused(c, "[delivery]\nsmtp = 192.0.2.7:0\n", "port must be 1..65535");
    refused(c, "[delivery]\nsmtp_tls_name = -bad-.example\n", "smtp_tls_name");

    /* cross-field rules */
    refused(c, "[delivery]\nmode = smtp\n", "mode = smtp needs smtp");
    refused(c, "[delivery]\nsmtp = 127.0.0.1:25\nsmtp_tls_verify = yes\n",
            "smtp_tls_verify needs smtp_tls_name");
    refused(c, "[delivery]\nsmtp = unix:/run/smtp.sock\nsmtp_tls_verify = yes\n",
            "smtp_tls_verify needs smtp_tls_name");
    refused(c, "[delivery]\nsmtp = localhost:25\nsmtp_tls_verify = yes\nsmtp_starttls = none\n",
            "smtp_tls_verify needs smtp_starttls may or require");
    /* a refused load leaves the config as it was */
    assert_int_equal(apply(c, "[delivery]\nsmtp = 127.0.0.1:25\n", err), 0);
    assert_int_equal(
        cmtp_config_load_string(c, "[delivery]\nsmtp_starttls = x\n", 29, NULL, err, sizeof(err)),
        -22);
    assert_int_equal(c->delivery.smtp_starttls, CMTP_SMTPC_TLS_MAY);
    assert_int_equal(c->delivery.smtp.tcp.port, 25);
    cmtp_config_free(c);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smtp_keys),
        cmocka_unit_test(test_cmtp_store_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
