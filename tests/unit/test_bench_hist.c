/* tests/unit/test_bench_hist.c — cmtp-bench's latency histogram: bucket boundaries, precision,
 * percentiles against exact sorted values, merging. Not the report formatting. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "bench/bench_body.h"
#include "bench/bench_hist.h"

/* Every value maps into a bucket whose upper edge is >= the value and within 1/64 of it, and
 * bucket edges increase strictly. */
static void test_buckets(void **state)
{
    (void)state;
    uint64_t prev_high = 0;
    for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++) {
        uint64_t hi = bench_hist_bucket_high(i);
        if (i > 0)
            assert_true(hi > prev_high);
        assert_int_equal(bench_hist_index(hi), i);
        assert_int_equal(bench_hist_index(prev_high + (i > 0 ? 1 : 0)), i);
        prev_high = hi;
    }
    assert_int_equal(prev_high, BENCH_HIST_VALUE_MAX);
    for (uint64_t v = 0; v < 200000; v += 7) {
        size_t i = bench_hist_index(v);
        uint64_t hi = bench_hist_bucket_high(i);
        assert_true(hi >= v);
        assert_true((double)(hi - v) <= (double)v / 64.0 + 1e-9);
    }
    /* exact below 128 */
    for (uint64_t v = 0; v < 128; v++)
        assert_int_equal(bench_hist_bucket_high(bench_hist_index(v)), v);
    /* clamped */
    assert_int_equal(bench_hist_index(UINT64_MAX), BENCH_HIST_BUCKETS - 1);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Percentiles agree with the exact order statistics within the bucket precision. */
static void test_percentiles(void **state)
{
    (void)state;
    struct bench_hist *h = calloc(1, sizeof(*h));
    enum { N = 100000 };
    uint64_t *v = malloc(N * sizeof(*v));
    struct bench_rng r;
    struct bench_hist_summary s;
    const double qs[] = {50, 90, 99, 99.9, 100};

    assert_non_null(h);
    assert_non_null(v);
    bench_rng_seed(&r, 42);
    for (int i = 0; i < N; i++) {
        /* a long-tailed distribution: mostly ~1 ms, some up to 1 s */
        v[i] = bench_rng_range(&r, 500, 1500);
        if (bench_rng_range(&r, 0, 99) == 0)
            v[i] = bench_rng_range(&r, 10000, 1000000);
        bench_hist_record(h, v[i]);
    }
    qsort(v, N, sizeof(*v), cmp_u64);
    for (size_t k = 0; k < sizeof(qs) / sizeof(qs[0]); k++) {
        size_t rank = (size_t)(qs[k] / 100.0 * N + 0.5);
        uint64_t exact = v[rank > 0 ? rank - 1 : 0];
        uint64_t got = bench_hist_percentile(h, qs[k]);
        assert_true(got >= exact);
        assert_true((double)got <= (double)exact * (1.0 + 1.0 / 64.0) + 1);
    }
    bench_hist_summarize(h, &s);
    assert_int_equal(s.count, N);
    assert_int_equal(s.min, v[0]);
    assert_int_equal(s.max, v[N - 1]);
    assert_true(s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.p999 && s.p999 <= s.max);
    free(v);
    free(h);
}

static void test_empty_and_add(void **state)
{
    (void)state;
    struct bench_hist *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    struct bench_hist_summary s;

    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(bench_hist_percentile(a, 99), 0);
    bench_hist_summarize(a, &s);
    assert_int_equal(s.count, 0);
    assert_int_equal(s.max, 0);
    bench_hist_record(a, 10);
    bench_hist_record(a, 20);
    bench_hist_record(b, 5);
    bench_hist_record(b, 5000);
    bench_hist_add(a, b);
    bench_hist_summarize(a, &s);
    assert_int_equal(s.count, 4);
    assert_int_equal(s.min, 5);
    assert_int_equal(s.max, 5000);
    assert_true(s.mean > 1258.0 && s.mean < 1259.0); /* 5035 / 4 */
    assert_int_equal(bench_hist_percentile(a, 25), 5);
    assert_int_equal(bench_hist_percentile(a, 100), 5000);
    bench_hist_reset(a);
    bench_hist_summarize(a, &s);
    assert_int_equal(s.count, 0);
    /* adding an empty histogram changes nothing */
    bench_hist_add(b, a);
    bench_hist_summarize(b, &s);
    assert_int_equal(s.count, 2);
    assert_int_equal(s.min, 5);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets),
        cmocka_unit_test(test_percentiles),
        cmocka_unit_test(test_empty_and_add),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
