/* tests/unit/test_core_config_dns.c — the [delivery] keys of routing by DNS: dns_servers,
 * dns_timeout, cmtp_port and smtp_port (defaults, values, bad values with the key named). */
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
    assert_int_equal(c->delivery.dns_servers_count, 0);
    assert_int_equal(c->delivery.dns_timeout_ms, 5000);
    assert_int_equal(c->delivery.cmtp_port, 4465);
    assert_int_equal(c->delivery.smtp_port, 25);
}

static void test_values(void **state)
{
    struct cmtp_config *c = *state;
    char err[CMTP_CONFIG_ERR_LEN];
    assert_int_equal(cfx_load(c,
                              "[delivery]\n"
                              "dns_servers = 127.0.0.1:5353, 192.0.2.1, [::1]:53\n"
                              "dns_servers = [2001:db8::1]\n"
                              "dns_timeout = 1500ms\n"
                              "cmtp_port = 14465\n"
                              "smtp_port = 2525\n",
                              err),
                     0);
    assert_int_equal(c->delivery.dns_servers_count, 4);
    assert_int_equal(c->delivery.dns_servers[0].kind, CMTP_CONFIG_HOST_IPV4);
    assert_string_equal(c->delivery.dns_servers[0].host, "127.0.0.1");
    assert_int_equal(c->delivery.dns_servers[0].port, 5353);
    assert_int_equal(c->delivery.dns_servers[1].port, 53);
    assert_int_equal(c->delivery.dns_servers[1].ip[0], 192);
    assert_int_equal(c->delivery.dns_servers[2].kind, CMTP_CONFIG_HOST_IPV6);
    assert_int_equal(c->delivery.dns_servers[2].ip[15], 1);
    assert_int_equal(c->delivery.dns_servers[3].port, 53);
    assert_int_equal(c->delivery.dns_timeout_ms, 1500);
    assert_int_equal(c->delivery.cmtp_port, 14465);
    assert_int_equal(c->delivery.smtp_port, 2525);
    /* A later load replaces the list; an empty value empties it (resolv.conf again). */
    assert_int_equal(cfx_load(c, "[delivery]\ndns_servers = 10.0.0.1\n", err), 0);
    assert_int_equal(c->delivery.dns_servers_count, 1);
    assert_int_equal(cfx_load(c, "[delivery]\ndns_servers =\n", err), 0);
    assert_int_equal(c->delivery.dns_servers_count, 0);
}

static void test_bad(void **state)
{
    struct cmtp_config *c = *state;
    cfx_expect_bad(c, "[delivery]\ndns_servers = ns.example.net\n", "IP address");
    cfx_expect_bad(c, "[delivery]\ndns_servers = 127.0.0.1:0\n", "dns_servers");
    cfx_expect_bad(c, "[delivery]\ndns_servers = 127.0.0.1, 127.0.0.1:53\n", "listed twice");
    cfx_expect_bad(c, "[delivery]\ndns_servers = ::1\n", "[addr]");
    cfx_expect_bad(c,
                   "[delivery]\ndns_servers = 10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4, 10.0.0.5, "
                   "10.0.0.6, 10.0.0.7, 10.0.0.8, 10.0.0.9\n",
                   "more than 8");
    cfx_expect_bad(c, "[delivery]\ndns_timeout = 50ms\n", "dns_timeout");
    cfx_expect_bad(c, "[delivery]\ndns_timeout = 2m\n", "out of range");
    cfx_expect_bad(c, "[delivery]\ndns_timeout = 5\n", "duration");
    cfx_expect_bad(c, "[delivery]\ncmtp_port = 0\n", "cmtp_port");
    cfx_expect_bad(c, "[delivery]\nsmtp_port = 65536\n", "smtp_port");
    /* Nothing of a refused load sticks. */
    assert_int_equal(c->delivery.dns_servers_count, 0);
    assert_int_equal(c->delivery.dns_timeout_ms, 5000);
    assert_int_equal(c->delivery.smtp_port, 25);
}

static void test_example_file(void **state)
{
    /* The shipped example keeps the defaults (its DNS lines are comments). */
    struct cmtp_config *c = *state;
    char err[CMTP_CONFIG_ERR_LEN];
    if (cmtp_config_load_file(c, "etc/cmtpd.conf", err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_int_equal(c->delivery.dns_servers_count, 0);
    assert_int_equal(c->delivery.dns_timeout_ms, 5000);
    assert_int_equal(c->delivery.cmtp_port, 4465);
    assert_int_equal(c->delivery.smtp_port, 25);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, cfx_setup, cfx_teardown),
        cmocka_unit_test_setup_teardown(test_values, cfx_setup, cfx_teardown),
        cmocka_unit_test_setup_teardown(test_bad, cfx_setup, cfx_teardown),
        cmocka_unit_test_setup_teardown(test_example_file, cfx_setup, cfx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
