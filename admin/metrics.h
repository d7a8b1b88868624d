/* admin/metrics.h — a writer of the Prometheus text exposition format 0.0.4 (HELP and TYPE lines,
 * counters, gauges, cumulative histograms, escaped labels, validated names) into a capped
 * buffer, and an optional HTTP/1.1 listener serving it at /metrics. Not a metrics registry: the
 * daemon reads its own counters and writes them out here on each scrape. */
#ifndef CMTP_ADMIN_METRICS_H
#define CMTP_ADMIN_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "admin/admin.h"
#include "admin/buf.h"

/* ADMIN_METRICS_CONTENT_TYPE is the Content-Type of the text format. */
#define ADMIN_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
/* ADMIN_METRIC_NAME_MAX bounds metric and label names, in octets. */
#define ADMIN_METRIC_NAME_MAX 128
/* ADMIN_METRIC_LABELS_MAX is the most labels of one sample (the histogram's le excluded). */
#define ADMIN_METRIC_LABELS_MAX 8
/* ADMIN_METRIC_BUCKETS_MAX is the most finite buckets of a histogram. */
#define ADMIN_METRIC_BUCKETS_MAX 64
/* ADMIN_METRIC_FAMILIES_MAX is the most metric families of one exposition. */
#define ADMIN_METRIC_FAMILIES_MAX 512

/* admin_metric_type is the TYPE of a family. */
enum admin_metric_type {
    ADMIN_METRIC_COUNTER = 0,
    ADMIN_METRIC_GAUGE,
    ADMIN_METRIC_HISTOGRAM,
};

/* admin_label is one label of a sample: |name| is a constant of the code (validated:
 * [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__", not "le"); |value| is any NUL-terminated text
 * (escaped; octets that are not valid UTF-8 are written as U+FFFD). Borrowed for the call. */
struct admin_label {
    const char *name;
    const char *value;
};

/* admin_metrics is one exposition being written into a buffer the caller owns. Errors are
 * sticky: every call after the first failure returns it and writes nothing, so a writer may call
 * on and check admin_metrics_finish once. */
struct admin_metrics {
    struct admin_buf *out;
    int err;
    char family[ADMIN_METRIC_NAME_MAX + 1]; /* the family being written, "" before the first */
    enum admin_metric_type type;
    unsigned n_families;
    uint32_t family_hash[ADMIN_METRIC_FAMILIES_MAX]; /* to refuse a family written twice */
};

/* admin_metrics_init starts an exposition into |out| (appended to; its cap bounds the text). */
void admin_metrics_init(struct admin_metrics *m, struct admin_buf *out);

/* admin_metrics_family starts family |name| of |type| and writes its `# HELP` (|help|, escaped)
 * and `# TYPE` lines. Every sample of a family must follow its family call, before the next
 * family; a family may appear once. Returns 0; -EINVAL for a bad name (metric names:
 * [a-zA-Z_:][a-zA-Z0-9_:]*; a histogram's name must not end in _bucket, _sum or _count), -EEXIST
 * when the family was already written, -ENOSPC / -ENOMEM from the buffer. */
int admin_metrics_family(struct admin_metrics *m, const char *name, enum admin_metric_type type,
                         const char *help);

/* admin_metrics_value writes one sample of the current counter or gauge family with |n| labels
 * (at most ADMIN_METRIC_LABELS_MAX) and the value |v| (NaN and infinities are written as NaN,
 * +Inf, -Inf; a counter refuses negative values and NaN with -EINVAL). Returns 0 or the error. */
int admin_metrics_value(struct admin_metrics *m, const struct admin_label *labels, size_t n,
                        double v);

/* admin_metrics_uvalue is admin_metrics_value for an exact unsigned integer |v|. */
int admin_metrics_uvalue(struct admin_metrics *m, const struct admin_label *labels, size_t n,
                         uint64_t v);

/* admin_metrics_histogram writes one series of the current histogram family: |nb| finite upper
 * bounds |le| (strictly increasing, at most ADMIN_METRIC_BUCKETS_MAX) with |counts| holding
 * nb + 1 per-bucket (not cumulative) counts, the last one for values above every bound; |sum|
 * is the sum of the observed values. It writes the cumulative `_bucket{le="..."}` lines ending
 * with le="+Inf", then `_sum` and `_count` (equal to the +Inf bucket). Returns 0, -EINVAL for
 * bad bounds or labels, or the buffer's error. */
int admin_metrics_histogram(struct admin_metrics *m, const struct admin_label *labels, size_t n,
                            const double *le, size_t nb, const uint64_t *counts, double sum);

/* admin_metrics_finish returns the first error of |m|, or 0 when the whole exposition was
 * written. */
int admin_metrics_finish(const struct admin_metrics *m);

/* admin_metric_name_valid reports whether |name| is a valid metric name. */
bool admin_metric_name_valid(const char *name);

/* admin_label_name_valid reports whether |name| is a valid, non-reserved label name. */
bool admin_label_name_valid(const char *name);

/* --- the HTTP listener ---------------------------------------------------------------------- */

/* Defaults and limits of the HTTP listener. */
#define ADMIN_HTTP_REQUEST_MAX 8192u        /* request head, octets */
#define ADMIN_HTTP_TIMEOUT_MS_DEFAULT 5000u /* per connection, from accept */
#define ADMIN_HTTP_CLIENTS_MAX_DEFAULT 16u

/* admin_http_config configures the listener. */
struct admin_http_config {
    const char *host;       /* numeric IPv4 or IPv6 address ("127.0.0.1", "::1", "[::1]") */
    uint16_t port;          /* 0: the kernel picks one (admin_metrics_http_port tells it) */
    bool allow_nonloopback; /* false: a host that is not a loopback address is refused */
    unsigned timeout_ms;    /* 0: ADMIN_HTTP_TIMEOUT_MS_DEFAULT */
    unsigned clients_max;   /* 0: ADMIN_HTTP_CLIENTS_MAX_DEFAULT; at most ADMIN_CLIENTS_MAX_MAX */
    const struct cmtp_log *log; /* errors of the metrics callback; NULL: silent */
};

/* admin_http is a running metrics HTTP listener. */
struct admin_http;

/* admin_metrics_http_new listens on |cfg|->host:port and serves, on its own thread: `GET
 * /metrics` (a query string is ignored; HEAD too) -> 200 with ADMIN_METRICS_CONTENT_TYPE and
 * the text of |ops|->metrics; another path -> 404; another method -> 405; a malformed request
 * -> 400; a request head over ADMIN_HTTP_REQUEST_MAX -> 431; a failing callback -> 500. Every
 * response has Content-Length and `Connection: close`; the connection is closed after it, and
 * after the timeout in any case. |ops| (only its metrics member is used) is copied. Returns NULL
 * with a reason in |err| on failure. */
struct admin_http *admin_metrics_http_new(const struct admin_http_config *cfg,
                                          const struct admin_ops *ops, void *ops_arg, char *err,
                                          size_t errlen);

/* admin_metrics_http_port returns the bound port. */
uint16_t admin_metrics_http_port(const struct admin_http *h);

/* admin_metrics_http_free stops the thread, closes every connection and frees |h|. NULL is a
 * no-op. */
void admin_metrics_http_free(struct admin_http *h);

#endif
