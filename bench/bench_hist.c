/* bench/bench_hist.c — HDR-style log-linear latency histogram (exact below 128 µs, < 1.6 %
 * relative bucket width above). Not thread-safe for several writers: one per histogram. */
#include "bench/bench_hist.h"

#include <string.h>

#define SUB_COUNT (1u << BENCH_HIST_SUB_BITS)
#define HALF_COUNT (SUB_COUNT / 2u)

size_t bench_hist_index(uint64_t v)
{
    unsigned msb, shift;

    if (v > BENCH_HIST_VALUE_MAX)
        v = BENCH_HIST_VALUE_MAX;
    if (v < SUB_COUNT)
        return (size_t)v;
    msb = 63u - (unsigned)__builtin_clzll(v); /* >= BENCH_HIST_SUB_BITS */
    shift = msb - (BENCH_HIST_SUB_BITS - 1u); /* >= 1: keeps the top SUB_BITS bits */
    /* v >> shift lies in [HALF_COUNT, SUB_COUNT). */
    return SUB_COUNT + (size_t)(shift - 1u) * HALF_COUNT + (size_t)((v >> shift) - HALF_COUNT);
}

uint64_t bench_hist_bucket_high(size_t i)
{
    size_t k;
    unsigned shift;

    if (i < SUB_COUNT)
        return (uint64_t)i;
    k = i - SUB_COUNT;
    shift = (unsigned)(k / HALF_COUNT) + 1u;
    return ((((uint64_t)(k % HALF_COUNT) + HALF_COUNT) + 1u) << shift) - 1u;
}

void bench_hist_reset(struct bench_hist *h)
{
    atomic_store_explicit(&h->count, 0, memory_order_relaxed);
    atomic_store_explicit(&h->sum, 0, memory_order_relaxed);
    atomic_store_explicit(&h->min, 0, memory_order_relaxed);
    atomic_store_explicit(&h->max, 0, memory_order_relaxed);
    for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++)
        atomic_store_explicit(&h->b[i], 0, memory_order_relaxed);
}

/* bump adds |n| to a single-writer counter: a plain load and store, no locked instruction. */
static inline void bump(_Atomic uint64_t *a, uint64_t n)
{
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

void bench_hist_record(struct bench_hist *h, uint64_t v_us)
{
    uint64_t n = atomic_load_explicit(&h->count, memory_order_relaxed);

    if (v_us > BENCH_HIST_VALUE_MAX)
        v_us = BENCH_HIST_VALUE_MAX;
    if (n == 0 || v_us < atomic_load_explicit(&h->min, memory_order_relaxed))
        atomic_store_explicit(&h->min, v_us, memory_order_relaxed);
    if (v_us > atomic_load_explicit(&h->max, memory_order_relaxed))
        atomic_store_explicit(&h->max, v_us, memory_order_relaxed);
    bump(&h->b[bench_hist_index(v_us)], 1);
    bump(&h->sum, v_us);
    /* count last: a reader that sees it sees a consistent-enough histogram. */
    atomic_store_explicit(&h->count, n + 1, memory_order_relaxed);
}

void bench_hist_add(struct bench_hist *dst, const struct bench_hist *src)
{
    uint64_t sn = atomic_load_explicit(&src->count, memory_order_relaxed);
    uint64_t dn = atomic_load_explicit(&dst->count, memory_order_relaxed);
    uint64_t smin = atomic_load_explicit(&src->min, memory_order_relaxed);
    uint64_t smax = atomic_load_explicit(&src->max, memory_order_relaxed);

    if (sn == 0)
        return;
    if (dn == 0 || smin < atomic_load_explicit(&dst->min, memory_order_relaxed))
        atomic_store_explicit(&dst->min, smin, memory_order_relaxed);
    if (smax > atomic_load_explicit(&dst->max, memory_order_relaxed))
        atomic_store_explicit(&dst->max, smax, memory_order_relaxed);
    for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++)
        bump(&dst->b[i], atomic_load_explicit(&src->b[i], memory_order_relaxed));
    bump(&dst->sum, atomic_load_explicit(&src->sum, memory_order_relaxed));
    atomic_store_explicit(&dst->count, dn + sn, memory_order_relaxed);
}

uint64_t bench_hist_percentile(const struct bench_hist *h, double q)
{
    uint64_t total = 0, rank, seen = 0;
    uint64_t max = atomic_load_explicit(&h->max, memory_order_relaxed);

    /* Sum the buckets rather than trusting |count|: a concurrent reader may see them differ. */
    for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++)
        total += atomic_load_explicit(&h->b[i], memory_order_relaxed);
    if (total == 0)
        return 0;
    if (q < 0)
        q = 0;
    if (q > 100)
        q = 100;
    rank = (uint64_t)(q / 100.0 * (double)total + 0.5);
    if (rank < 1)
        rank = 1;
    if (rank > total)
        rank = total;
    for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++) {
        seen += atomic_load_explicit(&h->b[i], memory_order_relaxed);
        if (seen >= rank) {
            uint64_t v = bench_hist_bucket_high(i);
            return v < max ? v : max;
        }
    }
    return max;
}

void bench_hist_summarize(const struct bench_hist *h, struct bench_hist_summary *out)
{
    memset(out, 0, sizeof(*out));
    out->count = atomic_load_explicit(&h->count, memory_order_relaxed);
    if (out->count == 0)
        return;
    out->min = atomic_load_explicit(&h->min, memory_order_relaxed);
    out->max = atomic_load_explicit(&h->max, memory_order_relaxed);
    out->mean = (double)atomic_load_explicit(&h->sum, memory_order_relaxed) / (double)out->count;
    out->p50 = bench_hist_percentile(h, 50.0);
    out->p90 = bench_hist_percentile(h, 90.0);
    out->p99 = bench_hist_percentile(h, 99.0);
    out->p999 = bench_hist_percentile(h, 99.9);
}
