/* bench/bench_report.c — the summary table, the JSON result and the histogram file of
 * cmtp-bench. Pure formatting of a finished bench_result; nothing is measured here. */
#include "bench/bench_report.h"

#include <errno.h>
#include <string.h>

/* ops returns the operations the run counts: messages, or handshakes in the handshake and
 * idle modes. */
static uint64_t ops(const struct bench_opts *o, const struct bench_result *r)
{
    return (o->mode == BENCH_MODE_HANDSHAKES || o->mode == BENCH_MODE_IDLE) ? r->handshakes
                                                                            : r->msgs;
}

static double per_s(uint64_t n, double s)
{
    return s > 0 ? (double)n / s : 0.0;
}

static json_t *hist_json(const struct bench_hist *h)
{
    struct bench_hist_summary s;

    bench_hist_summarize(h, &s);
    return json_pack("{s:I, s:I, s:f, s:I, s:I, s:I, s:I, s:I}", "count", (json_int_t)s.count,
                     "min", (json_int_t)s.min, "mean", s.mean, "p50", (json_int_t)s.p50, "p90",
                     (json_int_t)s.p90, "p99", (json_int_t)s.p99, "p999", (json_int_t)s.p999, "max",
                     (json_int_t)s.max);
}

/* set steals |v| into |obj| under |key|; returns -1 (and drops |v|) on failure. */
static int set(json_t *obj, const char *key, json_t *v)
{
    return v == NULL ? -1 : json_object_set_new(obj, key, v);
}

json_t *bench_report_json(const struct bench_opts *o, const struct bench_result *r)
{
    json_t *j = json_object(), *errs = json_object(), *lat = json_object(), *srv = json_array();
    uint64_t n = ops(o, r), srv_total = 0;
    bool srv_all = o->n_server_pids > 0;
    char size[32];
    int bad = 0;

    if (j == NULL || errs == NULL || lat == NULL || srv == NULL)
        goto err;
    bench_size_name(&o->size, size, sizeof(size));
    bad |= set(j, "proto", json_string(bench_proto_name(o->proto)));
    bad |= set(j, "mode", json_string(bench_mode_name(o->mode)));
    bad |= set(j, "server", json_string(o->server));
    bad |= set(j, "threads", json_integer(o->threads));
    bad |= set(j, "conns", json_integer(o->conns));
    bad |= set(j, "per_conn", json_boolean(o->per_conn));
    bad |= set(j, "resume", json_boolean(o->resume));
    bad |= set(j, "size", json_string(size));
    bad |= set(j, "body_mean", json_real(r->body_mean));
    bad |= set(j, "rate", json_real(o->rate));
    bad |= set(j, "warmup_s", json_real(o->warmup_s));
    bad |= set(j, "elapsed_s", json_real(r->elapsed_s));
    bad |= set(j, "msgs", json_integer((json_int_t)r->msgs));
    bad |= set(j, "msgs_per_s", json_real(per_s(r->msgs, r->elapsed_s)));
    bad |= set(j, "body_bytes", json_integer((json_int_t)r->body_bytes));
    bad |=
        set(j, "body_mib_per_s", json_real(per_s(r->body_bytes, r->elapsed_s) / (1024.0 * 1024.0)));
    bad |= set(j, "handshakes", json_integer((json_int_t)r->handshakes));
    bad |= set(j, "handshakes_per_s", json_real(per_s(r->handshakes, r->elapsed_s)));
    bad |= set(j, "resumed", json_integer((json_int_t)r->resumed));
    bad |= set(j, "dups", json_integer((json_int_t)r->dups));
    bad |= set(j, "reconnects", json_integer((json_int_t)r->reconnects));
    bad |= set(j, "unsent", json_integer((json_int_t)r->unsent));
    for (unsigned k = 0; k < BENCH_ERR_COUNT; k++)
        bad |= set(errs, bench_err_name((enum bench_err)k), json_integer((json_int_t)r->errors[k]));
    bad |= set(errs, "total", json_integer((json_int_t)r->errors_total));
    bad |= set(j, "errors", errs);
    errs = NULL;
    bad |= set(j, "first_error", json_string(r->first_error));
    bad |= set(lat, "ack", hist_json(r->ack));
    bad |= set(lat, "sched", hist_json(r->sched));
    bad |= set(lat, "handshake", hist_json(r->hs));
    bad |= set(j, "latency_us", lat);
    lat = NULL;
    bad |= set(j, "bench_cpu_us", json_integer((json_int_t)r->bench_cpu_us));
    bad |=
        set(j, "bench_cpu_us_per_op", json_real(n > 0 ? (double)r->bench_cpu_us / (double)n : 0.0));
    for (unsigned i = 0; i < r->n_servers; i++) {
        const struct bench_server *s = &r->servers[i];
        json_t *e = json_pack("{s:i, s:s, s:b, s:b, s:I, s:f}", "pid", (int)s->pid, "name", s->name,
                              "tree", s->tree, "cpu_ok", s->cpu_ok, "cpu_us", (json_int_t)s->cpu_us,
                              "cpu_us_per_op", n > 0 ? (double)s->cpu_us / (double)n : 0.0);
        if (e == NULL)
            goto err;
        if (o->mode == BENCH_MODE_IDLE) {
            double per = 0;
            if (s->rss_ok && r->idle_open > 0)
                per = ((double)s->rss_after_kib - (double)s->rss_before_kib) / (double)r->idle_open;
            bad |= set(e, "rss_ok", json_boolean(s->rss_ok));
            bad |= set(e, "rss_before_kib", json_integer((json_int_t)s->rss_before_kib));
            bad |= set(e, "rss_after_kib", json_integer((json_int_t)s->rss_after_kib));
            bad |= set(e, "rss_kib_per_conn", json_real(per));
        }
        bad |= json_array_append_new(srv, e);
        srv_total += s->cpu_us;
        srv_all = srv_all && s->cpu_ok;
    }
    bad |= set(j, "servers", srv);
    srv = NULL;
    bad |= set(j, "server_cpu_us_per_op",
               srv_all && n > 0 ? json_real((double)srv_total / (double)n) : json_null());
    if (o->mode == BENCH_MODE_IDLE)
        bad |= set(j, "idle_open", json_integer((json_int_t)r->idle_open));
    if (bad)
        goto err;
    return j;
err:
    json_decref(j);
    json_decref(errs);
    json_decref(lat);
    json_decref(srv);
    return NULL;
}

static void lat_row(FILE *f, const char *name, const struct bench_hist *h)
{
    struct bench_hist_summary s;

    bench_hist_summarize(h, &s);
    if (s.count == 0)
        return;
    fprintf(f, "  %-10s %9llu %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f\n", name,
            (unsigned long long)s.count, s.mean / 1000.0, (double)s.p50 / 1000.0,
            (double)s.p90 / 1000.0, (double)s.p99 / 1000.0, (double)s.p999 / 1000.0,
            (double)s.max / 1000.0);
}

void bench_report_table(FILE *f, const struct bench_opts *o, const struct bench_result *r)
{
    uint64_t n = ops(o, r);
    const char *unit =
        (o->mode == BENCH_MODE_HANDSHAKES || o->mode == BENCH_MODE_IDLE) ? "handshake" : "message";
    char size[32];

    bench_size_name(&o->size, size, sizeof(size));
    fprintf(f, "cmtp-bench: %s, %s%s, %u thread%s, %u session%s, body %s (mean %.0f octets)",
            bench_proto_name(o->proto),
            o->mode == BENCH_MODE_CLOSED ? "closed loop"
            : o->mode == BENCH_MODE_OPEN ? "open loop"
            : o->mode == BENCH_MODE_IDLE ? "idle sessions"
                                         : "handshakes only",
            o->per_conn ? ", one connection per message" : "", o->threads,
            o->threads == 1 ? "" : "s", o->conns, o->conns == 1 ? "" : "s", size, r->body_mean);
    if (o->mode == BENCH_MODE_OPEN)
        fprintf(f, ", rate %.0f/s", o->rate);
    fprintf(f, "\n");
    fprintf(f, "  measured        %.3f s (after %.1f s warm-up)\n", r->elapsed_s, o->warmup_s);
    if (o->mode == BENCH_MODE_CLOSED || o->mode == BENCH_MODE_OPEN) {
        fprintf(f, "  messages        %llu accepted, %.1f msg/s, %.2f MiB/s of body\n",
                (unsigned long long)r->msgs, per_s(r->msgs, r->elapsed_s),
                per_s(r->body_bytes, r->elapsed_s) / (1024.0 * 1024.0));
        if (o->mode == BENCH_MODE_OPEN)
            fprintf(f, "  open loop       %.0f/s offered, %llu arrivals never started (overload)\n",
                    o->rate, (unsigned long long)r->unsent);
        if (r->dups > 0 || r->reconnects > 0)
            fprintf(f, "  notes           %llu dup=1 acks, %llu reconnects at txn-max\n",
                    (unsigned long long)r->dups, (unsigned long long)r->reconnects);
    }
    fprintf(f, "  handshakes      %llu, %.1f/s", (unsigned long long)r->handshakes,
            per_s(r->handshakes, r->elapsed_s));
    if (o->resume)
        fprintf(f, ", %llu resumed", (unsigned long long)r->resumed);
    fprintf(f, "\n");
    if (o->mode == BENCH_MODE_IDLE)
        fprintf(f, "  idle sessions   %llu open\n", (unsigned long long)r->idle_open);
    fprintf(f, "  latency (ms)    %9s %9s %9s %9s %9s %9s %9s\n", "count", "mean", "p50", "p90",
            "p99", "p99.9", "max");
    lat_row(f, "ack", r->ack);
    lat_row(f, "sched", r->sched);
    lat_row(f, "handshake", r->hs);
    fprintf(f, "  errors          %llu", (unsigned long long)r->errors_total);
    for (unsigned k = 0; k < BENCH_ERR_COUNT; k++)
        if (r->errors[k] > 0)
            fprintf(f, "  %s=%llu", bench_err_name((enum bench_err)k),
                    (unsigned long long)r->errors[k]);
    fprintf(f, "\n");
    if (r->first_error[0] != '\0')
        fprintf(f, "  first error     %s\n", r->first_error);
    fprintf(f, "  CPU µs/%-9s cmtp-bench %.1f", unit,
            n > 0 ? (double)r->bench_cpu_us / (double)n : 0.0);
    {
        uint64_t tot = 0;
        bool all = r->n_servers > 0;
        for (unsigned i = 0; i < r->n_servers; i++) {
            const struct bench_server *s = &r->servers[i];
            if (s->cpu_ok)
                fprintf(f, "  %s[%d]%s %.1f", s->name, (int)s->pid, s->tree ? "+children" : "",
                        n > 0 ? (double)s->cpu_us / (double)n : 0.0);
            else
                fprintf(f, "  pid %d unreadable", (int)s->pid);
            tot += s->cpu_us;
            all = all && s->cpu_ok;
        }
        if (all && r->n_servers > 1)
            fprintf(f, "  servers total %.1f", n > 0 ? (double)tot / (double)n : 0.0);
    }
    fprintf(f, "\n");
    if (o->mode == BENCH_MODE_IDLE) {
        for (unsigned i = 0; i < r->n_servers; i++) {
            const struct bench_server *s = &r->servers[i];
            if (!s->rss_ok) {
                fprintf(f, "  RSS             pid %d unreadable\n", (int)s->pid);
                continue;
            }
            fprintf(f, "  RSS %-11s %llu -> %llu KiB, %.2f KiB per idle connection\n", s->name,
                    (unsigned long long)s->rss_before_kib, (unsigned long long)s->rss_after_kib,
                    r->idle_open > 0 ? ((double)s->rss_after_kib - (double)s->rss_before_kib) /
                                           (double)r->idle_open
                                     : 0.0);
        }
    }
}

int bench_report_hist(const char *path, const struct bench_hist *h)
{
    FILE *f = fopen(path, "w");
    uint64_t total = 0, seen = 0;

    if (f == NULL)
        return -errno;
    for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++)
        total += atomic_load_explicit(&h->b[i], memory_order_relaxed);
    fprintf(f, "# cmtp-bench latency histogram: value_us count cumulative_fraction\n");
    for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++) {
        uint64_t c = atomic_load_explicit(&h->b[i], memory_order_relaxed);
        if (c == 0)
            continue;
        seen += c;
        fprintf(f, "%llu %llu %.6f\n", (unsigned long long)bench_hist_bucket_high(i),
                (unsigned long long)c, (double)seen / (double)total);
    }
    if (fclose(f) != 0)
        return -errno;
    return 0;
}
