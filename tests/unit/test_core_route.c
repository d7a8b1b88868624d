/* tests/unit/test_core_route.c — routing by DNS without sockets: SRV order by priority and weight
 * (scripted and seeded random), MX order, null MX and SRV ".", answer limits, bad names, address
 * merging, the TTL of DNS answers (and malformed ones), the fallback rule. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/route.h"

/* script is a scripted random source: each call returns the next value (checked < bound). */
struct script {
    const uint32_t *v;
    size_t n, i;
    uint32_t bounds[64];
    size_t n_bounds;
};

static uint32_t script_rand(void *arg, uint32_t bound)
{
    struct script *s = arg;
    assert_true(s->i < s->n);
    if (s->n_bounds < 64)
        s->bounds[s->n_bounds++] = bound;
    uint32_t r = s->v[s->i++];
    assert_true(r < bound);
    return r;
}

/* lcg is a seeded deterministic generator for the distribution tests. */
static uint32_t lcg_rand(void *arg, uint32_t bound)
{
    uint64_t *st = arg;
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)((*st >> 33) % bound);
}

static struct cmtp_route_srv srv(uint16_t prio, uint16_t weight, uint16_t port, const char *t)
{
    struct cmtp_route_srv r;
    memset(&r, 0, sizeof(r));
    r.priority = prio;
    r.weight = weight;
    r.port = port;
    snprintf(r.target, sizeof(r.target), "%s", t);
    return r;
}

static struct cmtp_route_mx mx(uint16_t pref, const char *h)
{
    struct cmtp_route_mx r;
    memset(&r, 0, sizeof(r));
    r.preference = pref;
    snprintf(r.host, sizeof(r.host), "%s", h);
    return r;
}

static void test_srv_priority_then_weight(void **state)
{
    (void)state;
    struct cmtp_route_srv v[] = {srv(10, 0, 1, "a.x.test"), srv(10, 5, 2, "b.x.test"),
                                 srv(10, 10, 3, "c.x.test"), srv(5, 0, 4, "d.x.test")};
    /* Priority 10 holds a (w0), b (w5), c (w10): draw 0 of [0,15] takes a (zero weights first),
     * then 6 of [0,15] passes b (5) and takes c (15), b is left. */
    const uint32_t seq[] = {0, 6};
    struct script s = {seq, 2, 0, {0}, 0};
    struct cmtp_route_host h[16];
    size_t n = 0;
    assert_int_equal(cmtp_route_from_srv(h, 16, &n, v, 4, script_rand, &s), CMTP_ROUTE_HOSTS);
    assert_int_equal(n, 4);
    assert_string_equal(h[0].name, "d.x.test");
    assert_int_equal(h[0].port, 4);
    assert_string_equal(h[1].name, "a.x.test");
    assert_string_equal(h[2].name, "c.x.test");
    assert_int_equal(h[2].port, 3);
    assert_string_equal(h[3].name, "b.x.test");
    /* The draws cover [0, sum] inclusive (RFC 2782): bound = sum + 1. */
    assert_int_equal(s.n_bounds, 2);
    assert_int_equal(s.bounds[0], 16);
    assert_int_equal(s.bounds[1], 16);
}

static void test_srv_weight_edges(void **state)
{
    (void)state;
    /* A draw equal to the whole sum takes the last record; 0 with no zero weight the first. */
    struct cmtp_route_srv v[] = {srv(1, 1, 1, "a.x.test"), srv(1, 2, 2, "b.x.test"),
                                 srv(1, 3, 3, "c.x.test")};
    const uint32_t seq[] = {6, 0};
    struct script s = {seq, 2, 0, {0}, 0};
    struct cmtp_route_host h[16];
    size_t n = 0;
    assert_int_equal(cmtp_route_from_srv(h, 16, &n, v, 3, script_rand, &s), CMTP_ROUTE_HOSTS);
    assert_int_equal(n, 3);
    assert_string_equal(h[0].name, "c.x.test");
    assert_string_equal(h[1].name, "a.x.test");
    assert_string_equal(h[2].name, "b.x.test");
    assert_int_equal(s.bounds[0], 7);
    assert_int_equal(s.bounds[1], 4);
}

static void test_srv_weight_distribution(void **state)
{
    (void)state;
    /* Weights 1 and 3: the heavy one comes first about 3 times in 4 (seeded, so exact). */
    uint64_t seed = 42;
    unsigned heavy = 0, rounds = 4000;
    for (unsigned i = 0; i < rounds; i++) {
        struct cmtp_route_srv v[] = {srv(0, 1, 1, "light.x.test"), srv(0, 3, 2, "heavy.x.test")};
        struct cmtp_route_host h[2];
        size_t n = 0;
        assert_int_equal(cmtp_route_from_srv(h, 2, &n, v, 2, lcg_rand, &seed), CMTP_ROUTE_HOSTS);
        assert_int_equal(n, 2);
        heavy += strcmp(h[0].name, "heavy.x.test") == 0;
    }
    /* P(heavy first) = P(r in 2..4 of 0..4) = 3/5 with r drawn in [0, sum]: RFC 2782's rule
     * (zero is a valid draw and lands on the first record). */
    assert_in_range(heavy, rounds * 55 / 100, rounds * 65 / 100);
}

static void test_srv_dot_and_bad(void **state)
{
    (void)state;
    struct cmtp_route_host h[16];
    size_t n = 9;
    struct cmtp_route_srv dot[] = {srv(0, 0, 0, ".")};
    assert_int_equal(cmtp_route_from_srv(h, 16, &n, dot, 1, lcg_rand, &(uint64_t){1}),
                     CMTP_ROUTE_NO_SERVICE);
    assert_int_equal(n, 0);
    struct cmtp_route_srv root[] = {srv(0, 0, 0, "")};
    assert_int_equal(cmtp_route_from_srv(h, 16, &n, root, 1, lcg_rand, &(uint64_t){1}),
                     CMTP_ROUTE_NO_SERVICE);
    /* "." among real targets is dropped, bad names and port 0 too; a trailing dot is fine,
     * upper case is lowered. */
    struct cmtp_route_srv mixed[] = {srv(0, 0, 1, "."), srv(1, 0, 2, "bad name.test"),
                                     srv(2, 0, 0, "noport.x.test"), srv(3, 0, 3, "OK.X.Test.")};
    assert_int_equal(cmtp_route_from_srv(h, 16, &n, mixed, 4, lcg_rand, &(uint64_t){1}),
                     CMTP_ROUTE_HOSTS);
    assert_int_equal(n, 1);
    assert_string_equal(h[0].name, "ok.x.test");
    assert_int_equal(h[0].port, 3);
    struct cmtp_route_srv none[] = {srv(1, 0, 2, "a..b"), srv(1, 0, 2, "-x-.test_")};
    assert_int_equal(cmtp_route_from_srv(h, 16, &n, none, 2, lcg_rand, &(uint64_t){1}),
                     CMTP_ROUTE_NO_USABLE);
    assert_int_equal(n, 0);
}

static void test_srv_cap(void **state)
{
    (void)state;
    struct cmtp_route_srv v[40];
    char name[32];
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof(name), "h%d.x.test", i);
        v[i] = srv((uint16_t)(40 - i), 0, (uint16_t)(1000 + i), name);
    }
    struct cmtp_route_host h[CMTP_ROUTE_TARGETS_MAX];
    size_t n = 0;
    assert_int_equal(
        cmtp_route_from_srv(h, CMTP_ROUTE_TARGETS_MAX, &n, v, 40, lcg_rand, &(uint64_t){7}),
        CMTP_ROUTE_HOSTS);
    /* Capped at 16, and the 16 kept are those with the lowest priority values. */
    assert_int_equal(n, CMTP_ROUTE_TARGETS_MAX);
    assert_string_equal(h[0].name, "h39.x.test");
    assert_string_equal(h[15].name, "h24.x.test");
}

static void test_mx_order(void **state)
{
    (void)state;
    struct cmtp_route_mx v[] = {mx(20, "c.x.test"), mx(10, "a.x.test"), mx(10, "b.x.test"),
                                mx(30, "d.x.test")};
    /* Preference 10 holds a, b (in that order after the stable sort); the shuffle draws 0 of
     * [0,2): swap a into the last place. */
    const uint32_t seq[] = {0};
    struct script s = {seq, 1, 0, {0}, 0};
    struct cmtp_route_host h[16];
    size_t n = 0;
    assert_int_equal(cmtp_route_from_mx(h, 16, &n, v, 4, 4465, script_rand, &s), CMTP_ROUTE_HOSTS);
    assert_int_equal(n, 4);
    assert_string_equal(h[0].name, "b.x.test");
    assert_string_equal(h[1].name, "a.x.test");
    assert_string_equal(h[2].name, "c.x.test");
    assert_string_equal(h[3].name, "d.x.test");
    for (size_t i = 0; i < n; i++)
        assert_int_equal(h[i].port, 4465);
    assert_int_equal(s.i, 1); /* only the equal pair was shuffled */
}

static void test_mx_null_and_bad(void **state)
{
    (void)state;
    struct cmtp_route_host h[16];
    size_t n = 5;
    struct cmtp_route_mx null_mx[] = {mx(0, ".")};
    assert_int_equal(cmtp_route_from_mx(h, 16, &n, null_mx, 1, 25, lcg_rand, &(uint64_t){1}),
                     CMTP_ROUTE_NO_SERVICE);
    assert_int_equal(n, 0);
    struct cmtp_route_mx mixed[] = {mx(0, ""), mx(5, "mx.x.test")};
    assert_int_equal(cmtp_route_from_mx(h, 16, &n, mixed, 2, 25, lcg_rand, &(uint64_t){1}),
                     CMTP_ROUTE_HOSTS);
    assert_int_equal(n, 1);
    assert_string_equal(h[0].name, "mx.x.test");
    assert_int_equal(h[0].port, 25);
    struct cmtp_route_mx bad[] = {mx(0, "x y"), mx(1, "a..b")};
    assert_int_equal(cmtp_route_from_mx(h, 16, &n, bad, 2, 25, lcg_rand, &(uint64_t){1}),
                     CMTP_ROUTE_NO_USABLE);
}

static void test_mx_cap(void **state)
{
    (void)state;
    struct cmtp_route_mx v[20];
    char name[32];
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof(name), "m%02d.x.test", i);
        v[i] = mx((uint16_t)i, name);
    }
    struct cmtp_route_host h[CMTP_ROUTE_TARGETS_MAX];
    size_t n = 0;
    assert_int_equal(
        cmtp_route_from_mx(h, CMTP_ROUTE_TARGETS_MAX, &n, v, 20, 25, lcg_rand, &(uint64_t){3}),
        CMTP_ROUTE_HOSTS);
    assert_int_equal(n, CMTP_ROUTE_TARGETS_MAX);
    assert_string_equal(h[0].name, "m00.x.test");
    assert_string_equal(h[15].name, "m15.x.test");
}

static struct cmtp_route_addr a4(uint8_t last)
{
    struct cmtp_route_addr a;
    memset(&a, 0, sizeof(a));
    a.family = 4;
    a.ip[0] = 127;
    a.ip[3] = last;
    return a;
}

static struct cmtp_route_addr a6(uint8_t last)
{
    struct cmtp_route_addr a;
    memset(&a, 0, sizeof(a));
    a.family = 6;
    a.ip[15] = last;
    return a;
}

static void test_addrs_merge(void **state)
{
    (void)state;
    struct cmtp_route_addr v6[] = {a6(1), a6(2), a6(1)};
    struct cmtp_route_addr v4[] = {a4(1), a4(2), a4(3), a4(2)};
    struct cmtp_route_addr out[CMTP_ROUTE_ADDRS_MAX];
    size_t n = cmtp_route_addrs_merge(out, CMTP_ROUTE_ADDRS_MAX, v6, 3, v4, 4);
    assert_int_equal(n, 5);
    assert_int_equal(out[0].family, 6);
    assert_int_equal(out[0].ip[15], 1);
    assert_int_equal(out[1].family, 4);
    assert_int_equal(out[1].ip[3], 1);
    assert_int_equal(out[2].family, 6);
    assert_int_equal(out[2].ip[15], 2);
    assert_int_equal(out[3].ip[3], 2);
    assert_int_equal(out[4].ip[3], 3);
    /* Only IPv4, capped. */
    struct cmtp_route_addr many[12];
    for (int i = 0; i < 12; i++)
        many[i] = a4((uint8_t)(i + 1));
    n = cmtp_route_addrs_merge(out, CMTP_ROUTE_ADDRS_MAX, NULL, 0, many, 12);
    assert_int_equal(n, CMTP_ROUTE_ADDRS_MAX);
    assert_int_equal(out[7].ip[3], 8);
    assert_int_equal(cmtp_route_addrs_merge(out, 8, NULL, 0, NULL, 0), 0);
}

/* A DNS response: header, one question (b.test SRV IN), then |an| answers. */
static size_t dns_msg(uint8_t *m, unsigned an, unsigned ns, const uint32_t *ttls)
{
    size_t o = 0;
    const uint8_t hdr[12] = {0x12, 0x34, 0x81, 0x80, 0, 1, 0, (uint8_t)an, 0, (uint8_t)ns, 0, 0};
    memcpy(m, hdr, 12);
    o = 12;
    const uint8_t q[] = {5,   '_', 'c', 'm', 't', 'p', 4, '_', 't', 'c', 'p', 1,
                         'b', 4,   't', 'e', 's', 't', 0, 0,   33,  0,   1};
    memcpy(m + o, q, sizeof(q));
    o += sizeof(q);
    for (unsigned i = 0; i < an; i++) {
        /* A pointer to the question name, SRV IN, TTL, rdlength 12: 0 0 port target ".". */
        const uint8_t rr[] = {0xC0,
                              12,
                              0,
                              33,
                              0,
                              1,
                              (uint8_t)(ttls[i] >> 24),
                              (uint8_t)(ttls[i] >> 16),
                              (uint8_t)(ttls[i] >> 8),
                              (uint8_t)ttls[i],
                              0,
                              7,
                              0,
                              1,
                              0,
                              0,
                              0x11,
                              0x71,
                              0};
        memcpy(m + o, rr, sizeof(rr));
        o += sizeof(rr);
    }
    for (unsigned i = 0; i < ns; i++) {
        /* SOA for test: mname "a.test" (a label then a pointer), rname ".", serial, refresh,
         * retry, expire, minimum 30; TTL from ttls[an + i]. */
        uint32_t t = ttls[an + i];
        const uint8_t rr[] = {4,
                              't',
                              'e',
                              's',
                              't',
                              0,
                              0,
                              6,
                              0,
                              1,
                              (uint8_t)(t >> 24),
                              (uint8_t)(t >> 16),
                              (uint8_t)(t >> 8),
                              (uint8_t)t,
                              0,
                              25,
                              1,
                              'a',
                              0xC0,
                              25,
                              0,
                              0,
                              0,
                              0,
                              1,
                              0,
                              0,
                              0,
                              2,
                              0,
                              0,
                              0,
                              3,
                              0,
                              0,
                              0,
                              4,
                              0,
                              0,
                              0,
                              30};
        memcpy(m + o, rr, sizeof(rr));
        o += sizeof(rr);
    }
    return o;
}

static void test_dns_ttl(void **state)
{
    (void)state;
    uint8_t m[512];
    uint32_t ttl = 0;
    const uint32_t t1[] = {300, 60, 900};
    size_t n = dns_msg(m, 3, 0, t1);
    assert_int_equal(cmtp_route_dns_ttl(m, n, &ttl), 0);
    assert_int_equal(ttl, 60);
    /* A TTL with the top bit set counts as 0. */
    const uint32_t t2[] = {300, 0x80000001u};
    n = dns_msg(m, 2, 0, t2);
    assert_int_equal(cmtp_route_dns_ttl(m, n, &ttl), 0);
    assert_int_equal(ttl, 0);
    /* No answers: the SOA's MINIMUM (30) when below its TTL, else the TTL. */
    const uint32_t t3[] = {3600};
    n = dns_msg(m, 0, 1, t3);
    assert_int_equal(cmtp_route_dns_ttl(m, n, &ttl), 0);
    assert_int_equal(ttl, 30);
    const uint32_t t4[] = {10};
    n = dns_msg(m, 0, 1, t4);
    assert_int_equal(cmtp_route_dns_ttl(m, n, &ttl), 0);
    assert_int_equal(ttl, 10);
    /* Nothing to go by. */
    n = dns_msg(m, 0, 0, NULL);
    assert_int_equal(cmtp_route_dns_ttl(m, n, &ttl), -ENOENT);
}

static void test_dns_ttl_malformed(void **state)
{
    (void)state;
    uint8_t m[512];
    uint32_t ttl = 77;
    const uint32_t t1[] = {300, 60};
    size_t n = dns_msg(m, 2, 0, t1);
    /* Every truncation of a valid message is refused, never read past. */
    for (size_t cut = 0; cut < n; cut++)
        assert_int_equal(cmtp_route_dns_ttl(m, cut, &ttl), -EINVAL);
    assert_int_equal(ttl, 77);
    /* More answers announced than present. */
    m[7] = 5;
    assert_int_equal(cmtp_route_dns_ttl(m, n, &ttl), -EINVAL);
    m[7] = 2;
    /* A reserved label type (0x40) in the question name. */
    m[12] = 0x46;
    assert_int_equal(cmtp_route_dns_ttl(m, n, &ttl), -EINVAL);
    m[12] = 6;
    /* An rdlength past the end. */
    m[n - 8] = 0xFF;
    assert_int_equal(cmtp_route_dns_ttl(m, n, &ttl), -EINVAL);
    assert_int_equal(cmtp_route_dns_ttl(NULL, 0, &ttl), -EINVAL);
    /* A name longer than 255 octets of labels. */
    uint8_t big[600];
    memset(big, 0, sizeof(big));
    big[5] = 1; /* one question */
    size_t o = 12;
    for (int i = 0; i < 5; i++) {
        big[o++] = 63;
        memset(big + o, 'a', 63);
        o += 63;
    }
    big[o++] = 0;
    o += 4;
    assert_int_equal(cmtp_route_dns_ttl(big, o, &ttl), -EINVAL);
}

static void test_fallback_rule(void **state)
{
    (void)state;
    /* FALLBACK=none never; otherwise only with no CMTP route or every host unreachable. */
    assert_false(cmtp_route_fallback_ok(CMTP_FALLBACK_NONE, true, true));
    assert_false(cmtp_route_fallback_ok(CMTP_FALLBACK_NONE, true, false));
    assert_false(cmtp_route_fallback_ok(CMTP_FALLBACK_SMTP, false, false));
    assert_true(cmtp_route_fallback_ok(CMTP_FALLBACK_SMTP, true, false));
    assert_true(cmtp_route_fallback_ok(CMTP_FALLBACK_SMTP_TLS, false, true));
    assert_true(cmtp_route_fallback_ok(CMTP_FALLBACK_SMTP_VERIFIED, false, true));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_srv_priority_then_weight),
        cmocka_unit_test(test_srv_weight_edges),
        cmocka_unit_test(test_srv_weight_distribution),
        cmocka_unit_test(test_srv_dot_and_bad),
        cmocka_unit_test(test_srv_cap),
        cmocka_unit_test(test_mx_order),
        cmocka_unit_test(test_mx_null_and_bad),
        cmocka_unit_test(test_mx_cap),
        cmocka_unit_test(test_addrs_merge),
        cmocka_unit_test(test_dns_ttl),
        cmocka_unit_test(test_dns_ttl_malformed),
        cmocka_unit_test(test_fallback_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
