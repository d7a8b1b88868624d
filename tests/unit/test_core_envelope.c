/* tests/unit/test_core_envelope.c — relay policy matrix, envelope keywords, transaction ids,
 * trace records (round trip and malformed) and RFC 3339 times. Not the wire codec. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/envelope.h"

static void test_policy_init(void **state)
{
    (void)state;
    struct cmtp_policy p;
    memset(&p, 0xFF, sizeof(p));
    cmtp_policy_init(&p);
    assert_int_equal(p.relay, CMTP_RELAY_NONE);
    assert_int_equal(p.fallback, CMTP_FALLBACK_NONE);
    assert_int_equal(p.hops, CMTP_HOPS_DEFAULT);
}

/* The policy matrix: relay none/domain/any x next hop inside/outside x hops 0/1. */
static void test_policy_matrix(void **state)
{
    (void)state;
    static const struct {
        enum cmtp_relay relay;
        const char *next_hop;
        unsigned hops;
        bool want;
    } m[] = {
        {CMTP_RELAY_NONE, "mx.example.com", 0, false},
        {CMTP_RELAY_NONE, "mx.example.com", 1, false},
        {CMTP_RELAY_NONE, "relay.other.net", 0, false},
        {CMTP_RELAY_NONE, "relay.other.net", 1, false},
        {CMTP_RELAY_DOMAIN, "mx.example.com", 0, false},
        {CMTP_RELAY_DOMAIN, "mx.example.com", 1, true},
        {CMTP_RELAY_DOMAIN, "relay.other.net", 0, false},
        {CMTP_RELAY_DOMAIN, "relay.other.net", 1, false},
        {CMTP_RELAY_ANY, "mx.example.com", 0, false},
        {CMTP_RELAY_ANY, "mx.example.com", 1, true},
        {CMTP_RELAY_ANY, "relay.other.net", 0, false},
        {CMTP_RELAY_ANY, "relay.other.net", 1, true},
    };
    for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++) {
        struct cmtp_policy p;
        cmtp_policy_init(&p);
        p.relay = m[i].relay;
        p.hops = m[i].hops;
        bool got = cmtp_policy_allows_relay(&p, "example.com", m[i].next_hop);
        if (got != m[i].want)
            print_error("row %zu\n", i);
        assert_int_equal(got, m[i].want);
    }
}

static void test_policy_edges(void **state)
{
    (void)state;
    struct cmtp_policy p;
    cmtp_policy_init(&p);
    p.relay = CMTP_RELAY_DOMAIN;
    /* The recipient domain itself is inside; a look-alike suffix is not. */
    assert_true(cmtp_policy_allows_relay(&p, "example.com", "example.com"));
    assert_false(cmtp_policy_allows_relay(&p, "example.com", "badexample.com"));
    assert_false(cmtp_policy_allows_relay(&p, "example.com", "example.com.evil.net"));
    assert_false(cmtp_policy_allows_relay(&p, "mx.example.com", "example.com"));
    /* Unknown next hop: only RELAY=any allows it. */
    assert_false(cmtp_policy_allows_relay(&p, "example.com", NULL));
    assert_false(cmtp_policy_allows_relay(&p, NULL, "mx.example.com"));
    assert_false(cmtp_policy_allows_relay(&p, "", "mx.example.com"));
    p.relay = CMTP_RELAY_ANY;
    assert_true(cmtp_policy_allows_relay(&p, "example.com", NULL));
    p.hops = CMTP_HOPS_MAX;
    assert_true(cmtp_policy_allows_relay(&p, "example.com", "x.net"));
    assert_false(cmtp_policy_allows_relay(NULL, "example.com", "x.net"));
    /* A corrupted value fails closed. */
    p.relay = (enum cmtp_relay)7;
    assert_false(cmtp_policy_allows_relay(&p, "example.com", "mx.example.com"));
}

static void test_keywords(void **state)
{
    (void)state;
    enum cmtp_relay r;
    enum cmtp_fallback f;
    enum cmtp_role ro;
    for (int i = CMTP_RELAY_NONE; i <= CMTP_RELAY_ANY; i++) {
        const char *n = cmtp_relay_name((enum cmtp_relay)i);
        assert_non_null(n);
        assert_int_equal(cmtp_relay_parse(&r, n, strlen(n)), 0);
        assert_int_equal(r, i);
    }
    for (int i = CMTP_FALLBACK_NONE; i <= CMTP_FALLBACK_SMTP; i++) {
        const char *n = cmtp_fallback_name((enum cmtp_fallback)i);
        assert_non_null(n);
        assert_int_equal(cmtp_fallback_parse(&f, n, strlen(n)), 0);
        assert_int_equal(f, i);
    }
    for (int i = CMTP_ROLE_FINAL; i <= CMTP_ROLE_RELAY; i++) {
        const char *n = cmtp_role_name((enum cmtp_role)i);
        assert_non_null(n);
        assert_int_equal(cmtp_role_parse(&ro, n, strlen(n)), 0);
        assert_int_equal(ro, i);
    }
    assert_string_equal(cmtp_relay_name(CMTP_RELAY_DOMAIN), "domain");
    assert_string_equal(cmtp_fallback_name(CMTP_FALLBACK_SMTP_VERIFIED), "smtp-verified");
    assert_string_equal(cmtp_fallback_name(CMTP_FALLBACK_SMTP_TLS), "smtp-tls");
    assert_string_equal(cmtp_role_name(CMTP_ROLE_RELAY), "relay");
    assert_null(cmtp_relay_name((enum cmtp_relay)3));
    assert_null(cmtp_fallback_name((enum cmtp_fallback)4));
    assert_null(cmtp_role_name((enum cmtp_role)2));
    /* Case-insensitive, exact length. */
    assert_int_equal(cmtp_relay_parse(&r, "ANY", 3), 0);
    assert_int_equal(r, CMTP_RELAY_ANY);
    assert_int_equal(cmtp_fallback_parse(&f, "SMTP-Verified", 13), 0);
    assert_int_equal(f, CMTP_FALLBACK_SMTP_VERIFIED);
    assert_int_equal(cmtp_relay_parse(&r, "an", 2), -EINVAL);
    assert_int_equal(cmtp_relay_parse(&r, "anyx", 4), -EINVAL);
    assert_int_equal(cmtp_relay_parse(&r, "any", 2), -EINVAL);
    assert_int_equal(cmtp_relay_parse(&r, "", 0), -EINVAL);
    assert_int_equal(cmtp_relay_parse(&r, NULL, 0), -EINVAL);
    assert_int_equal(cmtp_fallback_parse(&f, "smtp ", 5), -EINVAL);
    assert_int_equal(cmtp_fallback_parse(&f, "smtp\0", 5), -EINVAL);
    assert_int_equal(cmtp_role_parse(&ro, "finale", 6), -EINVAL);
}

static void test_txid(void **state)
{
    (void)state;
    char buf[80];
    memset(buf, 'a', sizeof(buf));
    assert_false(cmtp_txid_valid(buf, 15));
    assert_true(cmtp_txid_valid(buf, 16));
    assert_true(cmtp_txid_valid(buf, 64));
    assert_false(cmtp_txid_valid(buf, 65));
    assert_false(cmtp_txid_valid(buf, 0));
    assert_false(cmtp_txid_valid(NULL, 16));
    assert_true(cmtp_txid_valid("AZaz09._-AZaz09._-", 18));
    static const char bad[] = {' ', '/', '+', '=', '\0', ':', '@', '\r', '\n', '~', '\x7f'};
    for (size_t i = 0; i < sizeof(bad); i++) {
        memset(buf, 'a', 20);
        buf[7] = bad[i];
        assert_false(cmtp_txid_valid(buf, 20));
    }
    memcpy(buf,
           "aaaaaaaa\xc3\xa9"
           "aaaaaaaa",
           18);
    assert_false(cmtp_txid_valid(buf, 18));
}

static const char good_trace[] =
    "hop=1 by=mx.example.com from=client.example.org at=2024-02-29T12:34:56Z "
    "tls=TLSv1.3/TLS_AES_128_GCM_SHA256 peer-id=client.example.org role=final";

static void test_trace_roundtrip(void **state)
{
    (void)state;
    struct cmtp_trace t, u;
    char out[1024];
    assert_int_equal(cmtp_trace_parse(&t, good_trace, strlen(good_trace)), 0);
    assert_int_equal(t.hop, 1);
    assert_string_equal(t.by, "mx.example.com");
    assert_string_equal(t.from, "client.example.org");
    assert_string_equal(t.tls, "TLSv1.3/TLS_AES_128_GCM_SHA256");
    assert_string_equal(t.peer_id, "client.example.org");
    assert_int_equal(t.role, CMTP_ROLE_FINAL);
    assert_int_equal(t.at, 1709210096);
    int n = cmtp_trace_format(&t, out, sizeof(out));
    assert_int_equal(n, strlen(good_trace));
    assert_string_equal(out, good_trace);

    /* "-" for from and peer-id, a relay role, the largest hop. */
    memset(&t, 0, sizeof(t));
    t.hop = CMTP_TRACE_MAX;
    strcpy(t.by, "xn--bcher-kva.example");
    strcpy(t.from, "-");
    strcpy(t.peer_id, "-");
    strcpy(t.tls, "TLSv1.3/TLS_CHACHA20_POLY1305_SHA256");
    t.at = 0;
    t.role = CMTP_ROLE_RELAY;
    n = cmtp_trace_format(&t, out, sizeof(out));
    assert_true(n > 0);
    assert_string_equal(out, "hop=32 by=xn--bcher-kva.example from=- at=1970-01-01T00:00:00Z "
                             "tls=TLSv1.3/TLS_CHACHA20_POLY1305_SHA256 peer-id=- role=relay");
    assert_int_equal(cmtp_trace_parse(&u, out, (size_t)n), 0);
    assert_memory_equal(&t, &u, sizeof(t));
    /* Too small a buffer. */
    assert_int_equal(cmtp_trace_format(&t, out, (size_t)n), -ENOSPC);
    assert_int_equal(cmtp_trace_format(&t, out, (size_t)n + 1), n);
}

static void test_trace_normalizes(void **state)
{
    (void)state;
    struct cmtp_trace t;
    /* Keys are case-insensitive; domains are normalized to lower-case A-labels. */
    const char *s = "HOP=2 By=MX.Example.COM from=b\xc3\xbc"
                    "cher.example at=2000-01-01T00:00:00Z "
                    "tls=TLSv1.3/X peer-id=- role=relay";
    assert_int_equal(cmtp_trace_parse(&t, s, strlen(s)), 0);
    assert_string_equal(t.by, "mx.example.com");
    assert_string_equal(t.from, "xn--bcher-kva.example");
    assert_int_equal(t.hop, 2);
}

static void expect_bad_trace(const char *s, size_t len)
{
    struct cmtp_trace t;
    memset(&t, 0x5A, sizeof(t));
    int r = cmtp_trace_parse(&t, s, len);
    if (r != -EINVAL)
        print_error("accepted: %.*s\n", (int)len, s);
    assert_int_equal(r, -EINVAL);
    struct cmtp_trace zero;
    memset(&zero, 0, sizeof(zero));
    assert_memory_equal(&t, &zero, sizeof(t));
}

static void test_trace_malformed(void **state)
{
    (void)state;
#define T_BY " by=mx.example.com"
#define T_FROM " from=c.example.org"
#define T_AT " at=2024-01-01T00:00:00Z"
#define T_TLS " tls=TLSv1.3/TLS_AES_128_GCM_SHA256"
#define T_PEER " peer-id=-"
    static const char *const bad[] = {
        "",
        " ",
        "hop=1",
        /* a missing field */
        "hop=1" T_BY T_FROM T_AT T_TLS T_PEER,
        "hop=1" T_BY T_FROM T_AT T_TLS " role=final",
        "hop=1" T_FROM T_AT T_TLS T_PEER " role=final",
        T_BY T_FROM T_AT T_TLS T_PEER " role=final",
        /* wrong order */
        "hop=1" T_FROM T_BY T_AT T_TLS T_PEER " role=final",
        "hop=1" T_BY T_FROM T_AT T_PEER T_TLS " role=final",
        /* spacing */
        " hop=1" T_BY T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=1" T_BY T_FROM T_AT T_TLS T_PEER " role=final ",
        "hop=1 " T_BY T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=1\t"
        "by=mx.example.com" T_FROM T_AT T_TLS T_PEER " role=final",
        /* extra field or garbage */
        "hop=1" T_BY T_FROM T_AT T_TLS T_PEER " role=final x=1",
        "hop=1" T_BY T_FROM T_AT T_TLS T_PEER " role=final\r\n",
        /* bad values */
        "hop=0" T_BY T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=33" T_BY T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=01" T_BY T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=-1" T_BY T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=1x" T_BY T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=99999999999999999999" T_BY T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=" T_BY T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=1 by=-" T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=1 by=localhost" T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=1 by=[192.0.2.1]" T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=1 by=a..b" T_FROM T_AT T_TLS T_PEER " role=final",
        "hop=1" T_BY " from=" T_AT T_TLS T_PEER " role=final",
        "hop=1" T_BY " from=--" T_AT T_TLS T_PEER " role=final",
        "hop=1" T_BY T_FROM " at=2024-01-01 00:00:00Z" T_TLS T_PEER " role=final",
        "hop=1" T_BY T_FROM " at=2024-13-01T00:00:00Z" T_TLS T_PEER " role=final",
        "hop=1" T_BY T_FROM " at=2024-01-01T00:00:00+00:00" T_TLS T_PEER " role=final",
        "hop=1" T_BY T_FROM " at=1704067200" T_TLS T_PEER " role=final",
        "hop=1" T_BY T_FROM T_AT " tls=" T_PEER " role=final",
        "hop=1" T_BY T_FROM T_AT " tls=TLS;1.3" T_PEER " role=final",
        "hop=1" T_BY T_FROM T_AT " tls=TLS\"1" T_PEER " role=final",
        "hop=1" T_BY T_FROM T_AT
        " tls=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" T_PEER
        " role=final",
        "hop=1" T_BY T_FROM T_AT T_TLS " peer-id=a b.example role=final",
        "hop=1" T_BY T_FROM T_AT T_TLS T_PEER " role=FINAL",
        "hop=1" T_BY T_FROM T_AT T_TLS T_PEER " role=other",
        "hop=1" T_BY T_FROM T_AT T_TLS T_PEER " role=",
        "hop=1" T_BY T_FROM T_AT T_TLS T_PEER " roles=final",
        "hop=1" T_BY T_FROM T_AT T_TLS T_PEER " role",
        "hop=1" T_BY T_FROM T_AT T_TLS T_PEER " rol=final",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_bad_trace(bad[i], strlen(bad[i]));
    /* The tls value of 63 characters is the longest accepted. */
    const char *ok63 =
        "hop=1" T_BY T_FROM T_AT
        " tls=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" T_PEER " role=final";
    struct cmtp_trace t;
    assert_int_equal(cmtp_trace_parse(&t, ok63, strlen(ok63)), 0);
    assert_int_equal(strlen(t.tls), 63);
    /* NUL inside. */
    char buf[sizeof(good_trace)];
    memcpy(buf, good_trace, sizeof(good_trace));
    buf[10] = '\0';
    expect_bad_trace(buf, sizeof(good_trace) - 1);
    /* Longer than a line. */
    static char huge[CMTP_LINE_MAX + 10];
    memset(huge, 'a', sizeof(huge));
    expect_bad_trace(huge, sizeof(huge));
    /* |len| is honoured: a good prefix of a longer buffer. */
    char longer[sizeof(good_trace) + 8];
    memcpy(longer, good_trace, sizeof(good_trace) - 1);
    memcpy(longer + sizeof(good_trace) - 1, " junk=1", 8);
    assert_int_equal(cmtp_trace_parse(&t, longer, sizeof(good_trace) - 1), 0);
    expect_bad_trace(longer, strlen(longer));
}

static void test_trace_format_refuses_bad_record(void **state)
{
    (void)state;
    struct cmtp_trace t;
    char out[1024];
    assert_int_equal(cmtp_trace_parse(&t, good_trace, strlen(good_trace)), 0);
    struct cmtp_trace b = t;
    b.hop = 0;
    assert_int_equal(cmtp_trace_format(&b, out, sizeof(out)), -EINVAL);
    b = t;
    strcpy(b.by, "mx.example.com role=relay");
    assert_int_equal(cmtp_trace_format(&b, out, sizeof(out)), -EINVAL);
    b = t;
    strcpy(b.from, "A.Example");
    assert_int_equal(cmtp_trace_format(&b, out, sizeof(out)), -EINVAL);
    b = t;
    strcpy(b.tls, "TLS 1.3");
    assert_int_equal(cmtp_trace_format(&b, out, sizeof(out)), -EINVAL);
    b = t;
    memset(b.peer_id, 'a', sizeof(b.peer_id)); /* not terminated */
    assert_int_equal(cmtp_trace_format(&b, out, sizeof(out)), -EINVAL);
    b = t;
    b.role = (enum cmtp_role)5;
    assert_int_equal(cmtp_trace_format(&b, out, sizeof(out)), -EINVAL);
    b = t;
    b.at = 253402300800LL; /* year 10000 */
    assert_int_equal(cmtp_trace_format(&b, out, sizeof(out)), -EINVAL);
}

static void expect_time(const char *s, int64_t want)
{
    int64_t t = 12345;
    char out[32];
    assert_int_equal(cmtp_time_parse(&t, s, strlen(s)), 0);
    assert_int_equal(t, want);
    assert_int_equal(cmtp_time_format(t, out, sizeof(out)), 20);
    assert_string_equal(out, s);
}

static void expect_bad_time(const char *s)
{
    int64_t t = 777;
    if (cmtp_time_parse(&t, s, strlen(s)) != -EINVAL)
        print_error("accepted time %s\n", s);
    assert_int_equal(cmtp_time_parse(&t, s, strlen(s)), -EINVAL);
    assert_int_equal(t, 777);
}

static void test_time(void **state)
{
    (void)state;
    expect_time("1970-01-01T00:00:00Z", 0);
    expect_time("1969-12-31T23:59:59Z", -1);
    expect_time("2000-02-29T00:00:00Z", 951782400);
    expect_time("2024-02-29T23:59:59Z", 1709251199);
    expect_time("2038-01-19T03:14:08Z", 2147483648LL);
    expect_time("2100-03-01T00:00:00Z", 4107542400LL);
    expect_time("9999-12-31T23:59:59Z", 253402300799LL);
    expect_time("0000-01-01T00:00:00Z", -62167219200LL);
    expect_time("1600-02-29T12:00:00Z", -11670955200LL);

    expect_bad_time("2023-02-29T00:00:00Z"); /* not a leap year */
    expect_bad_time("1900-02-29T00:00:00Z"); /* century, not a leap year */
    expect_bad_time("2024-02-30T00:00:00Z");
    expect_bad_time("2024-04-31T00:00:00Z");
    expect_bad_time("2024-13-01T00:00:00Z");
    expect_bad_time("2024-00-01T00:00:00Z");
    expect_bad_time("2024-01-00T00:00:00Z");
    expect_bad_time("2024-01-32T00:00:00Z");
    expect_bad_time("2024-01-01T24:00:00Z");
    expect_bad_time("2024-01-01T23:60:00Z");
    expect_bad_time("2024-01-01T23:59:60Z"); /* leap second */
    expect_bad_time("2024-01-01t00:00:00Z");
    expect_bad_time("2024-01-01T00:00:00z");
    expect_bad_time("2024-01-01T00:00:00");
    expect_bad_time("2024-01-01T00:00:00.5Z");
    expect_bad_time("2024-01-01T00:00:00+00:00");
    expect_bad_time("2024-01-01 00:00:00Z");
    expect_bad_time("2024-1-01T00:00:00Z ");
    expect_bad_time("+024-01-01T00:00:00Z");
    expect_bad_time("2024-01-01T0a:00:00Z");
    expect_bad_time(" 2024-01-01T00:00:0Z");
    expect_bad_time("");
    int64_t t;
    assert_int_equal(cmtp_time_parse(&t, NULL, 20), -EINVAL);

    char out[32];
    assert_int_equal(cmtp_time_format(0, out, 20), -ENOSPC);
    assert_int_equal(cmtp_time_format(0, out, 21), 20);
    assert_int_equal(cmtp_time_format(253402300800LL, out, sizeof(out)), -EINVAL);
    assert_int_equal(cmtp_time_format(-62167219201LL, out, sizeof(out)), -EINVAL);
    assert_int_equal(cmtp_time_format(INT64_MIN, out, sizeof(out)), -EINVAL);

    /* Every day over four centuries round-trips. */
    for (int64_t d = -146097; d <= 146097; d += 1) {
        int64_t s = d * 86400 + (d % 86400 + 86400) % 86400, back;
        assert_int_equal(cmtp_time_format(s, out, sizeof(out)), 20);
        assert_int_equal(cmtp_time_parse(&back, out, 20), 0);
        assert_int_equal(back, s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_init),
        cmocka_unit_test(test_policy_matrix),
        cmocka_unit_test(test_policy_edges),
        cmocka_unit_test(test_keywords),
        cmocka_unit_test(test_txid),
        cmocka_unit_test(test_trace_roundtrip),
        cmocka_unit_test(test_trace_normalizes),
        cmocka_unit_test(test_trace_malformed),
        cmocka_unit_test(test_trace_format_refuses_bad_record),
        cmocka_unit_test(test_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
