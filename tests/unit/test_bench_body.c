/* tests/unit/test_bench_body.c — cmtp-bench's bodies: size parsing, filler text shape (CRLF
 * lines, no leading dot), dot-stuffing, the mix distribution and the digests. Not the run. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "bench/bench_body.h"

static void test_size_parse(void **state)
{
    (void)state;
    struct bench_size_spec s;
    char name[32];

    assert_int_equal(bench_size_parse("1k", &s), 0);
    assert_false(s.mix);
    assert_int_equal(s.size, 1024);
    assert_int_equal(bench_size_parse("64K", &s), 0);
    assert_int_equal(s.size, 65536);
    assert_int_equal(bench_size_parse("1m", &s), 0);
    assert_int_equal(s.size, 1048576);
    assert_int_equal(bench_size_parse("1000", &s), 0);
    assert_int_equal(s.size, 1000);
    assert_int_equal(bench_size_parse("MIX", &s), 0);
    assert_true(s.mix);
    bench_size_name(&s, name, sizeof(name));
    assert_string_equal(name, "mix");
    s.mix = false;
    s.size = 65536;
    bench_size_name(&s, name, sizeof(name));
    assert_string_equal(name, "64k");
    s.size = 1000;
    bench_size_name(&s, name, sizeof(name));
    assert_string_equal(name, "1000");
    const char *bad[] = {
        "", "0", "0k", "k", "1g", "1kk", "-1", " 1", "1 ", "257m", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(bench_size_parse(bad[i], &s), -EINVAL);
}

/* check_text asserts the filler rules on |len| octets. */
static void check_text(const uint8_t *t, size_t len)
{
    size_t line_start = 0;
    for (size_t i = 0; i < len; i++) {
        if (t[i] == '\r') {
            assert_true(i + 1 < len);
            assert_int_equal(t[i + 1], '\n');
            assert_true(i + 2 - line_start <= BENCH_BODY_LINE);
            i++;
            line_start = i + 1;
            continue;
        }
        assert_int_not_equal(t[i], '\n');
        assert_true(t[i] >= 0x20 && t[i] < 0x7f);
        if (i == line_start)
            assert_int_not_equal(t[i], '.');
    }
    if (len >= 2) {
        assert_int_equal(t[len - 2], '\r');
        assert_int_equal(t[len - 1], '\n');
    }
}

static void test_fill(void **state)
{
    (void)state;
    struct bench_rng r;
    uint8_t buf[700];

    bench_rng_seed(&r, 7);
    for (size_t len = 1; len <= sizeof(buf); len++) {
        memset(buf, 0, sizeof(buf));
        bench_body_fill(buf, len, &r);
        check_text(buf, len);
    }
}

static void test_dot_stuff(void **state)
{
    (void)state;
    size_t n;
    uint8_t *o;
    const char *in = ".a\r\nb\r\n..c\r\n.\r\nx.y\r\n";
    const char *want = "..a\r\nb\r\n...c\r\n..\r\nx.y\r\n";

    o = bench_dot_stuff((const uint8_t *)in, strlen(in), &n);
    assert_non_null(o);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(o, want, n);
    free(o);
    o = bench_dot_stuff((const uint8_t *)"ab\r\ncd\r\n", 8, &n);
    assert_null(o);
    assert_int_equal(n, 8);
}

static void test_fixed_pool(void **state)
{
    (void)state;
    struct bench_size_spec s = {.size = 65536};
    struct bench_bodies *b = bench_bodies_new(&s, 1);
    const struct bench_body *bd;
    uint8_t d[SHA256_DIGEST_LENGTH];
    struct bench_rng r;

    assert_non_null(b);
    assert_int_equal(bench_bodies_count(b), 1);
    bd = bench_bodies_get(b, 0);
    assert_int_equal(bd->len, 65536);
    check_text(bd->data, bd->len);
    assert_memory_equal(bd->data, "Date: ", 6);
    SHA256(bd->data, bd->len, d);
    assert_memory_equal(d, bd->digest, sizeof(d));
    assert_ptr_equal(bd->smtp, bd->data); /* nothing to stuff */
    assert_int_equal(bd->smtp_len, bd->len);
    assert_string_equal(bd->smtp_tail, ".\r\n");
    bench_rng_seed(&r, 3);
    assert_ptr_equal(bench_bodies_pick(b, &r), bd);
    bench_bodies_free(b);

    /* a body too short for the header, and one of 1 octet (no CRLF: the long terminator) */
    s.size = 50;
    b = bench_bodies_new(&s, 1);
    assert_non_null(b);
    check_text(bench_bodies_get(b, 0)->data, 50);
    bench_bodies_free(b);
    s.size = 1;
    b = bench_bodies_new(&s, 1);
    assert_non_null(b);
    assert_string_equal(bench_bodies_get(b, 0)->smtp_tail, "\r\n.\r\n");
    bench_bodies_free(b);
}

static void test_mix_pool(void **state)
{
    (void)state;
    struct bench_size_spec s = {.mix = true};
    struct bench_bodies *b = bench_bodies_new(&s, 99), *b2 = bench_bodies_new(&s, 99);
    size_t small = 0, medium = 0, large = 0;
    double sum = 0;

    assert_non_null(b);
    assert_non_null(b2);
    assert_int_equal(bench_bodies_count(b), BENCH_MIX_POOL);
    for (size_t i = 0; i < BENCH_MIX_POOL; i++) {
        const struct bench_body *bd = bench_bodies_get(b, i);
        uint8_t d[SHA256_DIGEST_LENGTH];
        assert_true(bd->len >= 2048 - BENCH_BODY_LINE && bd->len <= BENCH_MIX_MAX);
        /* every pooled body is whole lines */
        assert_int_equal(bd->data[bd->len - 2], '\r');
        assert_int_equal(bd->data[bd->len - 1], '\n');
        SHA256(bd->data, bd->len, d);
        assert_memory_equal(d, bd->digest, sizeof(d));
        if (bd->len <= 8192)
            small++;
        else if (bd->len <= 128 * 1024)
            medium++;
        else
            large++;
        sum += (double)bd->len;
        /* same seed, same pool */
        assert_int_equal(bd->len, bench_bodies_get(b2, i)->len);
    }
    /* 70/25/5 within sampling noise of 256 draws */
    assert_in_range(small, 150, 210);
    assert_in_range(medium, 40, 90);
    assert_in_range(large, 2, 30);
    assert_true(bench_bodies_mean(b) > sum / BENCH_MIX_POOL - 1 &&
                bench_bodies_mean(b) < sum / BENCH_MIX_POOL + 1);
    check_text(bench_bodies_get(b, 0)->data, bench_bodies_get(b, 0)->len);
    bench_bodies_free(b);
    bench_bodies_free(b2);
    bench_bodies_free(NULL);
}

static void test_rng(void **state)
{
    (void)state;
    struct bench_rng a, b;
    bench_rng_seed(&a, 5);
    bench_rng_seed(&b, 5);
    for (int i = 0; i < 100; i++)
        assert_int_equal(bench_rng_next(&a), bench_rng_next(&b));
    for (int i = 0; i < 10000; i++) {
        uint64_t v = bench_rng_range(&a, 10, 20);
        assert_in_range(v, 10, 20);
    }
    assert_int_equal(bench_rng_range(&a, 7, 7), 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size_parse), cmocka_unit_test(test_fill),
        cmocka_unit_test(test_dot_stuff),  cmocka_unit_test(test_fixed_pool),
        cmocka_unit_test(test_mix_pool),   cmocka_unit_test(test_rng),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
