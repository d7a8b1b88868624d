/* tests/unit/test_bench_opts.c — cmtp-bench's command line: defaults, modes, the checks that
 * refuse contradictory options, server resolution. Not the run. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "bench/bench_opts.h"

/* parse runs bench_opts_parse on a NULL-terminated list of arguments. */
static int parse_v(struct bench_opts *o, char *err, const char *const *args)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)"cmtp-bench";
    for (; *args != NULL; args++)
        argv[argc++] = (char *)*args;
    argv[argc] = NULL;
    return bench_opts_parse(o, argc, argv, err, 256);
}

#define PARSE(o, err, ...) parse_v(o, err, (const char *const[]){__VA_ARGS__, NULL})

static void test_defaults(void **state)
{
    (void)state;
    struct bench_opts o;
    char err[256];

    assert_int_equal(parse_v(&o, err, (const char *const[]){NULL}), 0);
    assert_int_equal(o.proto, BENCH_PROTO_CMTP);
    assert_int_equal(o.mode, BENCH_MODE_CLOSED);
    assert_string_equal(o.server, "127.0.0.1:4465");
    assert_string_equal(o.verify_name, "localhost");
    assert_int_equal(o.threads, 1);
    assert_int_equal(o.conns, 16);
    assert_true(o.duration_s == 10.0);
    assert_int_equal(o.msgs, 0);
    assert_false(o.per_conn);
    assert_int_equal(o.size.size, 1024);
    assert_int_equal(o.timeout_ms, 30000);
    assert_int_equal(bench_opts_resolve(&o, err, sizeof(err)), 0);
    assert_int_equal(o.addr.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&o.addr)->sin_port), 4465);
}

static void test_modes(void **state)
{
    (void)state;
    struct bench_opts o;
    char err[256];

    assert_int_equal(PARSE(&o, err, "--rate", "500", "-d", "2"), 0);
    assert_int_equal(o.mode, BENCH_MODE_OPEN);
    assert_int_equal(o.conns, 64);
    assert_true(o.rate == 500.0);
    assert_int_equal(PARSE(&o, err, "--handshakes", "--resume", "-c", "4", "-m", "10"), 0);
    assert_int_equal(o.mode, BENCH_MODE_HANDSHAKES);
    assert_int_equal(o.msgs, 10);
    assert_true(o.duration_s == 0);
    assert_int_equal(PARSE(&o, err, "--idle", "1000", "-p", "12", "-p", "13"), 0);
    assert_int_equal(o.mode, BENCH_MODE_IDLE);
    assert_int_equal(o.conns, 1000);
    assert_int_equal(o.n_server_pids, 2);
    assert_int_equal(o.server_pids[1], 13);
    /* --per-conn with a separate value, an attached one, or none */
    assert_int_equal(PARSE(&o, err, "--per-conn", "1", "-m", "5"), 0);
    assert_true(o.per_conn);
    assert_int_equal(o.msgs, 5);
    assert_int_equal(PARSE(&o, err, "--per-conn=0"), 0);
    assert_false(o.per_conn);
    assert_int_equal(PARSE(&o, err, "--per-conn", "-m", "5"), 0);
    assert_true(o.per_conn);
    assert_int_equal(PARSE(&o, err, "--proto", "smtp", "--size", "mix", "-t", "2", "-c", "8"), 0);
    assert_int_equal(o.proto, BENCH_PROTO_SMTP);
    assert_true(o.size.mix);
    assert_string_equal(o.server, "127.0.0.1:25");
    /* threads never exceed sessions */
    assert_int_equal(PARSE(&o, err, "-t", "8", "-c", "3"), 0);
    assert_int_equal(o.threads, 3);
    assert_int_equal(PARSE(&o, err, "--help"), 1);
}

static void test_refused(void **state)
{
    (void)state;
    struct bench_opts o;
    char err[256];
    const char *const cases[][6] = {
        {"--handshakes", "--rate", "10"},
        {"--idle", "10", "--handshakes"},
        {"--idle", "10", "-c", "5"},
        {"--idle", "10", "-m", "5"},
        {"-m", "5", "-d", "5"},
        {"--resume"},
        {"--resume", "--handshakes", "--proto", "smtp"},
        {"--handshakes", "--per-conn"},
        {"--proto", "x"},
        {"-t", "0"},
        {"-c", "0"},
        {"-m", "-1"},
        {"-d", "0"},
        {"--rate", "0"},
        {"--size", "2g"},
        {"--timeout", "0"},
        {"--from", "not-an-address"},
        {"--to", "a@b"},
        {"--bogus"},
        {"-m"},
        {"extra"},
        {"--per-conn=2"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        err[0] = '\0';
        assert_int_equal(parse_v(&o, err, cases[i]), -EINVAL);
        assert_true(strlen(err) > 0);
    }
}

static void test_resolve(void **state)
{
    (void)state;
    struct bench_opts o;
    char err[256];

    assert_int_equal(PARSE(&o, err, "-s", "[::1]:2525"), 0);
    assert_int_equal(bench_opts_resolve(&o, err, sizeof(err)), 0);
    assert_int_equal(o.addr.ss_family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&o.addr)->sin6_port), 2525);
    assert_int_equal(PARSE(&o, err, "-s", "127.0.0.1", "--proto", "smtp"), 0);
    assert_int_equal(bench_opts_resolve(&o, err, sizeof(err)), 0);
    assert_int_equal(ntohs(((struct sockaddr_in *)&o.addr)->sin_port), 25);
    const char *bad[] = {"127.0.0.1:0", "127.0.0.1:70000", "[::1", "127.0.0.1:x", ":25"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(PARSE(&o, err, "-s", bad[i]), 0);
        assert_int_equal(bench_opts_resolve(&o, err, sizeof(err)), -EINVAL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_modes),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_resolve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
