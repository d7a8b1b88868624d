/* bench/bench_hist.h — the load generator's latency histogram: HDR-style log-linear buckets of
 * microseconds, one writer thread, readable by others at any time. Not a general statistics
 * library. */
#ifndef CMTP_BENCH_BENCH_HIST_H
#define CMTP_BENCH_BENCH_HIST_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* BENCH_HIST_SUB_BITS sets the precision: values below 2^BENCH_HIST_SUB_BITS are counted
 * exactly, larger ones in buckets whose width is at most 1/2^(BENCH_HIST_SUB_BITS - 1) of their
 * value (under 1.6 % with 7). */
#define BENCH_HIST_SUB_BITS 7u

/* BENCH_HIST_VALUE_MAX is the largest value counted, in microseconds (about 12.7 days);
 * larger values are counted as this one. */
#define BENCH_HIST_VALUE_MAX ((UINT64_C(1) << 40) - 1)

/* BENCH_HIST_BUCKETS is the number of buckets that cover 0 .. BENCH_HIST_VALUE_MAX. */
#define BENCH_HIST_BUCKETS                                                                         \
    ((1u << BENCH_HIST_SUB_BITS) + (40u - BENCH_HIST_SUB_BITS) * (1u << (BENCH_HIST_SUB_BITS - 1)))

/* bench_hist is a histogram of latencies in microseconds. It has a single writer (the worker
 * thread that records into it, with bench_hist_record); any thread may read it meanwhile
 * (relaxed atomics, so a reader sees a recent, possibly slightly torn, snapshot: fine for a
 * progress line). All-zero is an empty histogram; storage belongs to the caller. */
struct bench_hist {
    _Atomic uint64_t count;
    _Atomic uint64_t sum;
    _Atomic uint64_t min; /* meaningful only when count > 0 */
    _Atomic uint64_t max;
    _Atomic uint64_t b[BENCH_HIST_BUCKETS];
};

/* bench_hist_summary is what reports print of a histogram, all in microseconds. */
struct bench_hist_summary {
    uint64_t count;
    uint64_t min, max;
    double mean;
    uint64_t p50, p90, p99, p999;
};

/* bench_hist_index returns the bucket of value |v| (clamped to BENCH_HIST_VALUE_MAX). */
size_t bench_hist_index(uint64_t v);

/* bench_hist_bucket_high returns the largest value that falls into bucket |i|. */
uint64_t bench_hist_bucket_high(size_t i);

/* bench_hist_reset empties |h|. Only its writer (or any thread when no writer runs). */
void bench_hist_reset(struct bench_hist *h);

/* bench_hist_record counts value |v_us|. Only the single writer thread of |h|. */
void bench_hist_record(struct bench_hist *h, uint64_t v_us);

/* bench_hist_add adds every count of |src| into |dst|; |dst| must have no other writer. */
void bench_hist_add(struct bench_hist *dst, const struct bench_hist *src);

/* bench_hist_percentile returns the value below or at which |q| (0..100) percent of the counted
 * values lie: the upper edge of the bucket that holds that rank, capped at the exact maximum.
 * Returns 0 for an empty histogram. */
uint64_t bench_hist_percentile(const struct bench_hist *h, double q);

/* bench_hist_summarize fills |out| from |h| (all zero for an empty histogram). */
void bench_hist_summarize(const struct bench_hist *h, struct bench_hist_summary *out);

#endif
