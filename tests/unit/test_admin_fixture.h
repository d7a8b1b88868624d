/* tests/unit/test_admin_fixture.h — shared by the admin tests: a private temporary folder, a
 * real admin server on a Unix socket in it, and a table of callbacks implemented here that
 * answer with the documented reply shapes and record what they were asked. Not a mock of the
 * server: the server under test is the real one; these are the daemon's side of the table. */
#ifndef CMTP_TEST_ADMIN_FIXTURE_H
#define CMTP_TEST_ADMIN_FIXTURE_H

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin/admin.h"
#include "admin/metrics.h"

/* fx is one fixture: the folder, the server and what the callbacks saw. */
struct fx {
    char dir[64];
    char path[100];
    struct admin_server *srv;
    pthread_mutex_t mu;
    struct admin_request last; /* the last request a callback got */
    unsigned calls;
    bool fail_reload; /* reload fails with a hostile message */
    bool bad_shape;   /* stats omits "total" */
    unsigned slow_ms; /* every callback sleeps this long first */
};

static inline void fx_record(struct fx *f, const struct admin_request *req)
{
    pthread_mutex_lock(&f->mu);
    f->last = *req;
    f->calls++;
    unsigned slow = f->slow_ms;
    pthread_mutex_unlock(&f->mu);
    if (slow)
        usleep(slow * 1000u);
}

static inline struct admin_request fx_last(struct fx *f, unsigned *calls)
{
    pthread_mutex_lock(&f->mu);
    struct admin_request r = f->last;
    if (calls)
        *calls = f->calls;
    pthread_mutex_unlock(&f->mu);
    return r;
}

static int fx_status(void *arg, const struct admin_request *req, json_t *out, char *err,
                     size_t errlen)
{
    (void)err;
    (void)errlen;
    fx_record(arg, req);
    json_object_set_new(out, "workers", json_integer(2));
    json_object_set_new(out, "listeners",
                        json_pack("[{s:s,s:s},{s:s,s:s}]", "address", "0.0.0.0:4465", "proto",
                                  "cmtp/1", "address", "[::]:4465", "proto", "cmtp/1"));
    json_object_set_new(out, "redis",
                        json_pack("{s:s,s:s,s:i}", "state", "connected", "address",
                                  "unix:/run/redis.sock", "connected_workers", 2));
    json_object_set_new(out, "draining", json_false());
    return 0;
}

static json_t *fx_counters(int id, json_int_t base)
{
    return json_pack("{s:i,s:I,s:I,s:I,s:I,s:{s:I,s:I}}", "id", id, "connections", base + 1,
                     "handshakes", base * 10, "accepted", base * 7, "body_bytes", base * 4096,
                     "redis", "inflight", base, "latency_us_max", base * 100);
}

static int fx_stats(void *arg, const struct admin_request *req, json_t *out, char *err,
                    size_t errlen)
{
    struct fx *f = arg;
    (void)err;
    (void)errlen;
    fx_record(f, req);
    json_object_set_new(out, "workers", json_pack("[o,o]", fx_counters(0, 3), fx_counters(1, 5)));
    pthread_mutex_lock(&f->mu);
    bool bad = f->bad_shape;
    pthread_mutex_unlock(&f->mu);
    if (!bad) {
        json_t *t = fx_counters(0, 8);
        json_object_del(t, "id");
        json_object_set_new(out, "total", t);
    }
    return 0;
}

static int fx_summary(void *arg, const struct admin_request *req, json_t *out, char *err,
                      size_t errlen)
{
    (void)err;
    (void)errlen;
    fx_record(arg, req);
    json_object_set_new(out, "destinations",
                        json_pack("[{s:s,s:i,s:i,s:i},{s:s,s:i,s:i,s:i}]", "dest", "example.org",
                                  "count", 3, "oldest_s", 3723, "next_attempt_s", 12, "dest",
                                  "b\xc3\xbc\x63her.test", "count", 12000, "oldest_s", 5,
                                  "next_attempt_s", 0));
    return 0;
}

static int fx_list(void *arg, const struct admin_request *req, json_t *out, char *err,
                   size_t errlen)
{
    (void)err;
    (void)errlen;
    fx_record(arg, req);
    json_object_set_new(out, "messages",
                        json_pack("[{s:s,s:s,s:s,s:i,s:i,s:i}]", "id", "01HF3ZK8Q2ABCDEFGHJKMN-3",
                                  "dest", req->dest[0] ? req->dest : "example.org", "state",
                                  "deferred", "size", 1234, "attempts", 2, "age_s", 90));
    json_object_set_new(out, "truncated", json_boolean(req->limit == 1));
    return 0;
}

static int fx_show(void *arg, const struct admin_request *req, json_t *out, char *err,
                   size_t errlen)
{
    (void)err;
    (void)errlen;
    fx_record(arg, req);
    if (strcmp(req->id, "0000000000-0") == 0)
        return -ENOENT;
    json_t *m = json_pack("{s:s,s:s,s:[s,s],s:{s:s,s:i},s:[{s:s,s:s}],s:i}", "id", req->id, "from",
                          "alice@example.org", "rcpts", "bob@example.net", "carol@example.net",
                          "policy", "relay", "none", "hops", 8, "trace", "by", "mx.example.org",
                          "at", "2024-01-01T00:00:00Z", "attempts", 1);
    if (req->body)
        /* "Hello\r\nWorld\x1b[2J\n" */
        json_object_set_new(m, "body_base64", json_string("SGVsbG8NCldvcmxkG1sySgo="));
    json_object_set_new(out, "message", m);
    return 0;
}

static int fx_affect(void *arg, const struct admin_request *req, json_t *out, char *err,
                     size_t errlen)
{
    (void)err;
    (void)errlen;
    fx_record(arg, req);
    json_object_set_new(out, "affected", json_integer(req->all ? 7 : 1));
    return 0;
}

static int fx_plain(void *arg, const struct admin_request *req, json_t *out, char *err,
                    size_t errlen)
{
    (void)out;
    (void)err;
    (void)errlen;
    fx_record(arg, req);
    return 0;
}

static int fx_reload(void *arg, const struct admin_request *req, json_t *out, char *err,
                     size_t errlen)
{
    struct fx *f = arg;
    fx_record(f, req);
    pthread_mutex_lock(&f->mu);
    bool fail = f->fail_reload;
    pthread_mutex_unlock(&f->mu);
    if (fail) {
        snprintf(err, errlen, "%s", "bad certificate \"x.pem\":\nline 2\x1b[31m");
        return -EINVAL;
    }
    json_object_set_new(out, "config", json_string("/etc/cmtpd.conf"));
    return 0;
}

static int fx_metrics(void *arg, struct admin_buf *out, char *err, size_t errlen)
{
    (void)arg;
    (void)err;
    (void)errlen;
    struct admin_metrics m;
    static const double le[] = {0.001, 0.01, 0.1, 1};
    const uint64_t counts[] = {5, 3, 0, 1, 2};
    struct admin_label w0[] = {{"worker", "0"}};
    struct admin_label w1[] = {{"worker", "1"}};
    struct admin_label r1[] = {{"reason", "bad \"alpn\"\\\n"}};
    admin_metrics_init(&m, out);
    admin_metrics_family(&m, "cmtp_connections_total", ADMIN_METRIC_COUNTER,
                         "Connections accepted.");
    admin_metrics_uvalue(&m, w0, 1, 10);
    admin_metrics_uvalue(&m, w1, 1, 12);
    admin_metrics_family(&m, "cmtp_handshake_failures_total", ADMIN_METRIC_COUNTER,
                         "Failed handshakes by reason.");
    admin_metrics_uvalue(&m, r1, 1, 2);
    admin_metrics_family(&m, "cmtp_queue_depth", ADMIN_METRIC_GAUGE, "Messages queued.");
    admin_metrics_value(&m, NULL, 0, 42);
    admin_metrics_family(&m, "cmtp_accept_seconds", ADMIN_METRIC_HISTOGRAM,
                         "Time from END to the 250 reply.");
    admin_metrics_histogram(&m, w0, 1, le, 4, counts, 2.5);
    return admin_metrics_finish(&m);
}

static inline struct admin_ops fx_ops(void)
{
    struct admin_ops ops = {
        .status = fx_status,
        .stats = fx_stats,
        .queue_summary = fx_summary,
        .queue_list = fx_list,
        .queue_show = fx_show,
        .queue_delete = fx_affect,
        .queue_retry = fx_affect,
        .queue_hold = fx_affect,
        .queue_release = fx_affect,
        .flush = fx_affect,
        .drain = fx_plain,
        .resume = fx_plain,
        .reload = fx_reload,
        .log_level = fx_plain,
        .metrics = fx_metrics,
    };
    return ops;
}

/* fx_dir makes the private folder, reachable (not readable) by other users. */
static inline int fx_dir(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->mu, NULL);
    snprintf(f->dir, sizeof(f->dir), "/tmp/cmtp-admin-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    chmod(f->dir, 0711);
    snprintf(f->path, sizeof(f->path), "%s/admin.sock", f->dir);
    return 0;
}

/* fx_start starts the server with |cfg| (its path replaced by the fixture's; NULL: defaults). */
static inline struct admin_server *fx_start(struct fx *f, const struct admin_config *cfg)
{
    struct admin_config c = {0};
    struct admin_ops ops = fx_ops();
    char err[256];
    if (cfg != NULL)
        c = *cfg;
    c.path = f->path;
    c.version = "9.8.7-test";
    f->srv = admin_server_new(&c, &ops, f, err, sizeof(err));
    if (f->srv == NULL)
        fprintf(stderr, "admin_server_new: %s\n", err);
    return f->srv;
}

static inline int fx_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static inline void fx_done(struct fx *f)
{
    admin_server_free(f->srv);
    f->srv = NULL;
    nftw(f->dir, fx_rm_one, 16, FTW_DEPTH | FTW_PHYS);
    pthread_mutex_destroy(&f->mu);
}

#endif
