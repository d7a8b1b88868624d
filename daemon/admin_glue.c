/* daemon/admin_glue.c — the daemon's side of the admin socket: status, stats, metrics, drain,
 * resume, reload and log level, answered by asking the worker threads. Not the socket server
 * (admin/) and not the queue commands' Redis logic (queue/). */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/cmtpd.h"
#include "queue/consumer.h"

/* ADMIN_GATHER_TIMEOUT_MS bounds how long a command waits for the workers' answers. */
#define ADMIN_GATHER_TIMEOUT_MS 2000

/* wsnap is what one worker reports about itself; taken on the worker's own thread. */
struct wsnap {
    unsigned id;
    enum queue_conn_state qstate;
    char qerr[128];
    struct queue_stats qs;
    struct queue_consumer_stats cs; /* the delivery side's (zero when delivery is off) */
    unsigned sessions;
};

/* gather_task carries one worker's part of a fan-out. */
struct gather_task {
    struct cmtpd_worker *w;
    struct admin_wait *wait;
    unsigned i;
};

static void gather_on_worker(void *arg)
{
    struct gather_task *t = arg;
    struct wsnap *snap = admin_wait_slot(t->wait, t->i);
    const char *e = NULL;
    snap->id = t->w->id;
    snap->qstate = queue_state(t->w->q, &e);
    snprintf(snap->qerr, sizeof(snap->qerr), "%s", e != NULL ? e : "");
    queue_get_stats(t->w->q, &snap->qs);
    struct queue_consumer *qc = cmtpd_delivery_consumer(t->w);
    if (qc != NULL)
        queue_consumer_get_stats(qc, &snap->cs);
    snap->sessions = t->w->n_sessions;
    admin_wait_done(t->wait, t->i);
    free(t);
}

/* gather asks every worker for a snapshot; returns the rendezvous (release it) or NULL. */
static struct admin_wait *gather(struct cmtpd *d, char *err, size_t errlen)
{
    struct admin_wait *wait = admin_wait_new(d->n_workers, sizeof(struct wsnap), NULL);
    if (wait == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (unsigned i = 0; i < d->n_workers; i++) {
        struct gather_task *t = malloc(sizeof(*t));
        if (t == NULL || d->workers[i] == NULL) {
            free(t);
            admin_wait_done(wait, i);
            continue;
        }
        *t = (struct gather_task){d->workers[i], wait, i};
        if (io_worker_post(d->workers[i]->io, gather_on_worker, t) < 0) {
            free(t);
            admin_wait_done(wait, i);
        }
    }
    if (admin_wait_wait_ms(wait, ADMIN_GATHER_TIMEOUT_MS) < 0) {
        admin_wait_release(wait);
        snprintf(err, errlen, "workers did not answer within %d ms", ADMIN_GATHER_TIMEOUT_MS);
        return NULL;
    }
    return wait;
}

static uint64_t ts_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const char *qstate_name(enum queue_conn_state s)
{
    return s == QUEUE_CONNECTED ? "connected" : s == QUEUE_CONNECTING ? "connecting" : "down";
}

static uint64_t ld(_Atomic uint64_t *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

static int op_status(void *arg, const struct admin_request *req, json_t *out, char *err,
                     size_t errlen)
{
    struct cmtpd *d = arg;
    struct admin_wait *wait;
    json_t *listeners = json_array(), *redis = json_object();
    unsigned up = 0;
    (void)req;
    pthread_mutex_lock(&d->cfg_lock);
    const struct cmtp_config *c = &d->cfg->c;
    for (size_t i = 0; i < c->server.listen_count; i++) {
        char where[CMTP_DOMAIN_MAX + 16];
        const struct cmtp_config_endpoint *e = &c->server.listen[i];
        snprintf(where, sizeof(where), e->kind == CMTP_CONFIG_HOST_IPV6 ? "[%s]:%u" : "%s:%u",
                 e->host, e->port);
        json_array_append_new(listeners,
                              json_pack("{s:s,s:s}", "address", where, "proto", "cmtp/1"));
    }
    pthread_mutex_unlock(&d->cfg_lock);
    json_object_set_new(out, "workers", json_integer(d->n_workers));
    json_object_set_new(out, "listeners", listeners);
    json_object_set_new(out, "host", json_string(d->hostname));
    json_object_set_new(out, "draining", json_boolean(atomic_load(&d->draining)));
    json_object_set_new(out, "delivery",
                        json_string(atomic_load(&d->delivery_paused) ? "paused" : "running"));
    json_object_set_new(redis, "address", json_string(d->redis_address));
    json_object_set_new(redis, "embedded", json_boolean(d->redis_pid > 0));
    wait = gather(d, err, errlen);
    if (wait == NULL) {
        json_decref(redis);
        return -ETIMEDOUT;
    }
    const char *last = "";
    for (unsigned i = 0; i < d->n_workers; i++) {
        const struct wsnap *w = admin_wait_slot(wait, i);
        if (w->qstate == QUEUE_CONNECTED)
            up++;
        else if (w->qerr[0])
            last = w->qerr;
    }
    json_object_set_new(redis, "state",
                        json_string(up == d->n_workers ? "connected"
                                    : up               ? "partial"
                                                       : "down"));
    json_object_set_new(redis, "workers_connected", json_integer(up));
    json_object_set_new(redis, "last_error", json_string(last));
    admin_wait_release(wait);
    json_object_set_new(out, "redis", redis);
    return 0;
}

/* worker_json is one worker's counters and gauges. */
static json_t *worker_json(struct cmtpd *d, unsigned i, const struct wsnap *w)
{
    struct cmtpd_worker *wk = d->workers[i];
    struct io_worker_stats io;
    io_worker_stats(wk->io, &io);
    return json_pack(
        "{s:i,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:s,s:I,s:I}",
        "worker", (json_int_t)i, "connections", (json_int_t)io.conns, "accepted_connections",
        (json_int_t)io.accepted, "refused_connections", (json_int_t)(io.refused + io.rejected),
        "handshakes", (json_int_t)ld(&wk->ctr.handshakes), "handshakes_failed",
        (json_int_t)ld(&wk->ctr.handshakes_failed), "resumed", (json_int_t)ld(&wk->ctr.resumed),
        "sessions", (json_int_t)ld(&wk->ctr.sessions), "messages_accepted",
        (json_int_t)ld(&wk->ctr.accepted), "duplicates", (json_int_t)ld(&wk->ctr.dups), "tempfails",
        (json_int_t)ld(&wk->ctr.tempfails), "refused", (json_int_t)ld(&wk->ctr.refused), "timeouts",
        (json_int_t)ld(&wk->ctr.timeouts), "ip_refused", (json_int_t)ld(&wk->ctr.ip_refused),
        "body_bytes", (json_int_t)ld(&wk->ctr.body_bytes), "bytes_in", (json_int_t)io.bytes_in,
        "bytes_out", (json_int_t)io.bytes_out, "redis_inflight", (json_int_t)w->qs.inflight,
        "redis_state", qstate_name(w->qstate), "redis_commands", (json_int_t)w->qs.cmds_sent,
        "redis_errors", (json_int_t)w->qs.errors);
}

static int op_stats(void *arg, const struct admin_request *req, json_t *out, char *err,
                    size_t errlen)
{
    struct cmtpd *d = arg;
    struct admin_wait *wait = gather(d, err, errlen);
    json_t *workers = json_array(), *total = json_object();
    (void)req;
    if (wait == NULL) {
        json_decref(workers);
        json_decref(total);
        return -ETIMEDOUT;
    }
    for (unsigned i = 0; i < d->n_workers; i++) {
        if (d->workers[i] == NULL)
            continue;
        json_t *w = worker_json(d, i, admin_wait_slot(wait, i));
        const char *k;
        json_t *v;
        json_object_foreach(w, k, v)
        {
            if (!json_is_integer(v) || strcmp(k, "worker") == 0)
                continue;
            json_t *t = json_object_get(total, k);
            json_object_set_new(
                total, k, json_integer((t ? json_integer_value(t) : 0) + json_integer_value(v)));
        }
        json_array_append_new(workers, w);
    }
    admin_wait_release(wait);
    json_object_set_new(out, "workers", workers);
    json_object_set_new(out, "total", total);
    return 0;
}

static int op_drain(void *arg, const struct admin_request *req, json_t *out, char *err,
                    size_t errlen)
{
    struct cmtpd *d = arg;
    (void)req, (void)err, (void)errlen;
    atomic_store(&d->draining, true);
    for (unsigned i = 0; i < d->n_workers; i++)
        if (d->workers[i] != NULL)
            io_worker_post(d->workers[i]->io, cmtpd_worker_drain, d->workers[i]);
    CMTP_LOG(&d->log, CMTP_LOG_INFO, "draining", cmtp_log_str("by", "admin"));
    json_object_set_new(out, "draining", json_true());
    return 0;
}

static int op_resume(void *arg, const struct admin_request *req, json_t *out, char *err,
                     size_t errlen)
{
    struct cmtpd *d = arg;
    (void)req, (void)err, (void)errlen;
    atomic_store(&d->draining, false);
    for (unsigned i = 0; i < d->n_workers; i++)
        if (d->workers[i] != NULL)
            io_worker_post(d->workers[i]->io, cmtpd_worker_resume, d->workers[i]);
    CMTP_LOG(&d->log, CMTP_LOG_INFO, "resumed", cmtp_log_str("by", "admin"));
    json_object_set_new(out, "draining", json_false());
    return 0;
}

/* op_delivery_pause and op_delivery_resume set cmtpd.delivery_paused: every worker's delivery
 * engine reads it at its next tick (within DL_TICK_MS). */
static int op_delivery_pause(void *arg, const struct admin_request *req, json_t *out, char *err,
                             size_t errlen)
{
    struct cmtpd *d = arg;
    (void)req, (void)err, (void)errlen;
    if (!atomic_exchange(&d->delivery_paused, true))
        CMTP_LOG(&d->log, CMTP_LOG_INFO, "delivery-paused", cmtp_log_str("by", "admin"));
    json_object_set_new(out, "delivery", json_string("paused"));
    return 0;
}

static int op_delivery_resume(void *arg, const struct admin_request *req, json_t *out, char *err,
                              size_t errlen)
{
    struct cmtpd *d = arg;
    (void)req, (void)err, (void)errlen;
    if (atomic_exchange(&d->delivery_paused, false))
        CMTP_LOG(&d->log, CMTP_LOG_INFO, "delivery-resumed", cmtp_log_str("by", "admin"));
    json_object_set_new(out, "delivery", json_string("running"));
    return 0;
}

static int op_reload(void *arg, const struct admin_request *req, json_t *out, char *err,
                     size_t errlen)
{
    struct cmtpd *d = arg;
    (void)req;
    if (cmtpd_reload(d, err, errlen) < 0) {
        CMTP_LOG(&d->log, CMTP_LOG_ERROR, "reload-refused", cmtp_log_str("reason", err),
                 cmtp_log_str("kept", "the running configuration"));
        return -EINVAL;
    }
    CMTP_LOG(&d->log, CMTP_LOG_INFO, "reloaded", cmtp_log_str("by", "admin"));
    json_object_set_new(out, "reloaded", json_true());
    return 0;
}

static int op_log_level(void *arg, const struct admin_request *req, json_t *out, char *err,
                        size_t errlen)
{
    struct cmtpd *d = arg;
    (void)out, (void)err, (void)errlen;
    cmtp_log_set_level(&d->log, req->level);
    return 0;
}

/* sum_ctr adds up, over the workers, the counter at offset |off| of struct cmtpd_counters. */
static uint64_t sum_ctr(const struct cmtpd *d, size_t off)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < d->n_workers; i++)
        if (d->workers[i] != NULL)
            sum += ld((_Atomic uint64_t *)((char *)&d->workers[i]->ctr + off));
    return sum;
}
#define SUM_CTR(d, field) sum_ctr((d), offsetof(struct cmtpd_counters, field))

static void counter(struct admin_metrics *m, const char *name, const char *help, uint64_t v)
{
    admin_metrics_family(m, name, ADMIN_METRIC_COUNTER, help);
    admin_metrics_uvalue(m, NULL, 0, v);
}

static void gauge(struct admin_metrics *m, const char *name, const char *help, double v)
{
    admin_metrics_family(m, name, ADMIN_METRIC_GAUGE, help);
    admin_metrics_value(m, NULL, 0, v);
}

/* ---- queue commands: run on worker 0, against its queue consumer ---------------------------- */

/* QUEUE_SHOW_BODY_MAX caps the body `queue show --body` returns. */
#define QUEUE_SHOW_BODY_MAX (64 * 1024)

enum qop_kind {
    QOP_SUMMARY,
    QOP_LIST,
    QOP_SHOW,
    QOP_DELETE,
    QOP_RETRY,
    QOP_HOLD,
    QOP_RELEASE,
    QOP_FLUSH
};

/* qslot is what the worker hands back: a JSON object (owned by the slot until taken) or an
 * error. */
struct qslot {
    json_t *result;
    int err;
    char msg[128];
};

static void qslot_free(void *p)
{
    struct qslot *q = p;
    json_decref(q->result);
    q->result = NULL;
}

/* qop is one queue command travelling to the worker and back. */
struct qop {
    struct cmtpd_worker *w;
    struct admin_wait *wait;
    enum qop_kind kind;
    struct admin_request req;
    json_t *msg;   /* show: the message object being built */
    uint8_t *body; /* show --body: the octets read so far */
    size_t body_len;
    uint32_t chunk;
};

static void qop_finish(struct qop *op, json_t *result, int err, const char *msg)
{
    struct qslot *slot = admin_wait_slot(op->wait, 0);
    slot->result = result;
    slot->err = err;
    snprintf(slot->msg, sizeof(slot->msg), "%s", msg ? msg : "");
    admin_wait_done(op->wait, 0);
    json_decref(op->msg);
    free(op->body);
    free(op);
}

static const char *state_name(enum queue_consumer_state_kind k)
{
    static const char *const n[] = {"scheduled", "active", "held", "dead", "quarantined"};
    return (unsigned)k < sizeof(n) / sizeof(n[0]) ? n[k] : "unknown";
}

static void q_summary_cb(void *arg, int err, const struct queue_consumer_summary *sm)
{
    struct qop *op = arg;
    if (err < 0) {
        qop_finish(op, NULL, err, "redis error");
        return;
    }
    json_t *dests = json_array();
    for (size_t i = 0; i < sm->n_dests; i++) {
        const struct queue_consumer_dest_summary *e = &sm->dests[i];
        json_array_append_new(
            dests,
            json_pack("{s:s,s:i,s:i,s:i,s:i,s:i,s:I,s:I}", "dest", e->dest[0] ? e->dest : "(new)",
                      "count", (json_int_t)(e->scheduled + e->leased + e->held + e->dead),
                      "scheduled", (json_int_t)e->scheduled, "active", (json_int_t)e->leased,
                      "held", (json_int_t)e->held, "dead", (json_int_t)e->dead, "oldest_ms",
                      (json_int_t)e->oldest_ms, "next_attempt_ms", (json_int_t)e->next_attempt_ms));
    }
    qop_finish(op,
               json_pack("{s:o,s:I,s:b}", "destinations", dests, "quarantined",
                         (json_int_t)sm->quarantined, "truncated", sm->truncated),
               0, NULL);
}

static void q_list_cb(void *arg, int err, const struct queue_consumer_entry *e, size_t n,
                      bool truncated)
{
    struct qop *op = arg;
    if (err < 0) {
        qop_finish(op, NULL, err, "redis error");
        return;
    }
    json_t *msgs = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(msgs, json_pack("{s:s,s:s,s:s,s:I,s:s}", "id", e[i].qid, "dest",
                                              e[i].dest, "state", state_name(e[i].state), "at_ms",
                                              (json_int_t)e[i].at_ms, "info", e[i].info));
    qop_finish(op, json_pack("{s:o,s:b}", "messages", msgs, "truncated", truncated), 0, NULL);
}

static void q_count_cb(void *arg, int err, unsigned n)
{
    struct qop *op = arg;
    if (err < 0) {
        qop_finish(op, NULL, err, err == -ENOENT ? "no such message" : "redis error");
        return;
    }
    qop_finish(op, json_pack("{s:i}", "affected", (json_int_t)n), 0, NULL);
}

static void q_body_cb(void *arg, int err, const uint8_t *data, size_t len);

/* q_show_done attaches the body read so far (base64) and answers. */
static void q_show_done(struct qop *op, bool truncated)
{
    if (op->body != NULL) {
        static const char b64[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        size_t n = op->body_len, o = 0;
        char *out = malloc(4 * ((n + 2) / 3) + 1);
        if (out != NULL) {
            for (size_t i = 0; i < n; i += 3) {
                uint32_t v = (uint32_t)op->body[i] << 16;
                if (i + 1 < n)
                    v |= (uint32_t)op->body[i + 1] << 8;
                if (i + 2 < n)
                    v |= op->body[i + 2];
                out[o++] = b64[(v >> 18) & 63];
                out[o++] = b64[(v >> 12) & 63];
                out[o++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
                out[o++] = i + 2 < n ? b64[v & 63] : '=';
            }
            out[o] = '\0';
            json_object_set_new(op->msg, "body_base64", json_string(out));
            json_object_set_new(op->msg, "body_truncated", json_boolean(truncated));
            free(out);
        }
    }
    json_t *result = json_pack("{s:O}", "message", op->msg);
    qop_finish(op, result, 0, NULL);
}

static void q_body_cb(void *arg, int err, const uint8_t *data, size_t len)
{
    struct qop *op = arg;
    if (err < 0) { /* -ENOENT past the last chunk: the body is complete */
        q_show_done(op, false);
        return;
    }
    size_t take = len;
    bool truncated = false;
    if (op->body_len + take > QUEUE_SHOW_BODY_MAX) {
        take = QUEUE_SHOW_BODY_MAX - op->body_len;
        truncated = true;
    }
    memcpy(op->body + op->body_len, data, take);
    op->body_len += take;
    if (truncated || queue_get_body_chunk(op->w->q, op->req.id, ++op->chunk, q_body_cb, op) < 0)
        q_show_done(op, truncated);
}

static void q_show_cb(void *arg, int err, const struct queue_consumer_show_result *r)
{
    struct qop *op = arg;
    if (err < 0) {
        qop_finish(op, NULL, err, err == -ENOENT ? "no such message" : "redis error");
        return;
    }
    json_t *m = json_object(), *items = json_array();
    json_object_set_new(m, "id", json_string(r->qid));
    json_object_set_new(m, "quarantined", json_boolean(r->quarantined));
    if (r->quarantined)
        json_object_set_new(m, "quarantine_reason", json_string(r->quarantine_reason));
    if (r->record != NULL) {
        const struct queue_record *rec = r->record;
        char from[CMTP_ADDR_MAX + 1], at[32];
        cmtp_addr_format(&rec->env.from, from, sizeof(from));
        json_t *rcpts = json_array(), *trace = json_array();
        for (size_t i = 0; i < rec->n_rcpts; i++) {
            char a[CMTP_ADDR_MAX + 1];
            static const char *const st[] = {"pending", "delivered", "failed", "expired"};
            cmtp_addr_format(&rec->rcpts[i].addr, a, sizeof(a));
            json_array_append_new(rcpts,
                                  json_pack("{s:s,s:s,s:s,s:s}", "addr", a, "role",
                                            cmtp_role_name(rec->rcpts[i].role), "status",
                                            (unsigned)rec->rcpts[i].status <= QUEUE_RCPT_STATUS_LAST
                                                ? st[rec->rcpts[i].status]
                                                : "unknown",
                                            "next_hop", rec->rcpts[i].next_hop));
        }
        for (unsigned i = 0; i < rec->env.trace_count; i++) {
            char line[1024];
            if (cmtp_trace_format(&rec->env.trace[i], line, sizeof(line)) > 0)
                json_array_append_new(trace, json_string(line));
        }
        cmtp_time_format(rec->created_ms / 1000, at, sizeof(at));
        json_object_set_new(m, "from", json_string(from));
        json_object_set_new(m, "txn", json_string(rec->env.txid));
        json_object_set_new(m, "size", json_integer((json_int_t)rec->env.size));
        json_object_set_new(m, "accepted_at", json_string(at));
        json_object_set_new(m, "node", json_string(rec->node));
        json_object_set_new(m, "attempts", json_integer(rec->attempts));
        json_object_set_new(m, "peer", json_string(rec->meta.peer_ip));
        json_object_set_new(m, "policy",
                            json_pack("{s:s,s:s,s:i}", "relay",
                                      cmtp_relay_name(rec->env.policy.relay), "fallback",
                                      cmtp_fallback_name(rec->env.policy.fallback), "hops",
                                      (json_int_t)rec->env.policy.hops));
        json_object_set_new(m, "rcpts", rcpts);
        json_object_set_new(m, "trace", trace);
    }
    for (size_t i = 0; i < r->n_items; i++) {
        const struct queue_consumer_item_state *it = &r->items[i];
        json_array_append_new(items,
                              json_pack("{s:s,s:s,s:I,s:s,s:i,s:i,s:s}", "dest", it->dest, "state",
                                        state_name(it->state), "at_ms", (json_int_t)it->at_ms,
                                        "node", it->node, "tries", (json_int_t)it->tries, "crashes",
                                        (json_int_t)it->crashes, "last_error", it->last_error));
    }
    json_object_set_new(m, "state",
                        json_string(r->n_items       ? state_name(r->items[0].state)
                                    : r->quarantined ? "quarantined"
                                                     : "done"));
    json_object_set_new(m, "items", items);
    op->msg = m;
    if (!op->req.body) {
        q_show_done(op, false);
        return;
    }
    op->body = malloc(QUEUE_SHOW_BODY_MAX);
    if (op->body == NULL || queue_get_body_chunk(op->w->q, op->req.id, 0, q_body_cb, op) < 0)
        q_show_done(op, false);
}

static void qop_on_worker(void *arg)
{
    struct qop *op = arg;
    struct queue_consumer *c = cmtpd_delivery_consumer(op->w);
    const char *id = op->req.id;
    int r;
    if (c == NULL) {
        qop_finish(op, NULL, -ENOTCONN, "no queue consumer");
        return;
    }
    switch (op->kind) {
    case QOP_SUMMARY:
        r = queue_consumer_summary(c, q_summary_cb, op);
        break;
    case QOP_LIST: {
        static const enum queue_consumer_state_kind map[] = {
            [ADMIN_QSTATE_QUEUED] = QUEUE_CONSUMER_SCHEDULED,
            [ADMIN_QSTATE_ACTIVE] = QUEUE_CONSUMER_LEASED,
            [ADMIN_QSTATE_DEFERRED] = QUEUE_CONSUMER_SCHEDULED,
            [ADMIN_QSTATE_HELD] = QUEUE_CONSUMER_HELD,
            [ADMIN_QSTATE_DEAD] = QUEUE_CONSUMER_DEAD,
        };
        struct queue_consumer_filter f = {
            .dest = op->req.dest[0] ? op->req.dest : NULL,
            .state = op->req.state != ADMIN_QSTATE_ANY && op->req.state < ADMIN_QSTATE_COUNT
                         ? map[op->req.state]
                         : QUEUE_CONSUMER_SCHEDULED,
            .limit = op->req.limit,
        };
        r = queue_consumer_list(c, &f, q_list_cb, op);
        break;
    }
    case QOP_SHOW:
        r = queue_consumer_show(c, id, q_show_cb, op);
        break;
    case QOP_DELETE:
        r = queue_consumer_delete(c, id, q_count_cb, op);
        break;
    case QOP_RETRY:
        r = queue_consumer_retry(c, op->req.all ? NULL : id, q_count_cb, op);
        break;
    case QOP_HOLD:
        r = queue_consumer_hold(c, id, q_count_cb, op);
        break;
    case QOP_RELEASE:
        r = queue_consumer_release(c, id, q_count_cb, op);
        break;
    case QOP_FLUSH:
    default:
        r = queue_consumer_flush(c, q_count_cb, op);
        break;
    }
    if (r < 0)
        qop_finish(op, NULL, r,
                   r == -EINVAL     ? "bad queue id"
                   : r == -ENOTCONN ? "redis not connected"
                                    : "busy");
}

/* run_qop sends a queue command to worker 0 and waits for its answer. */
static int run_qop(struct cmtpd *d, enum qop_kind kind, const struct admin_request *req,
                   json_t *out, char *err, size_t errlen)
{
    struct admin_wait *wait;
    struct qop *op;
    if (d->workers[0] == NULL) {
        snprintf(err, errlen, "no worker");
        return -ENOTCONN;
    }
    wait = admin_wait_new(1, sizeof(struct qslot), qslot_free);
    op = calloc(1, sizeof(*op));
    if (wait == NULL || op == NULL) {
        free(op);
        admin_wait_release(wait);
        return -ENOMEM;
    }
    *op = (struct qop){.w = d->workers[0], .wait = wait, .kind = kind, .req = *req};
    if (io_worker_post(d->workers[0]->io, qop_on_worker, op) < 0) {
        free(op);
        admin_wait_done(wait, 0);
        admin_wait_release(wait);
        snprintf(err, errlen, "worker unavailable");
        return -ESHUTDOWN;
    }
    if (admin_wait_wait_ms(wait, ADMIN_GATHER_TIMEOUT_MS * 2) < 0) {
        admin_wait_release(wait);
        snprintf(err, errlen, "the queue did not answer in time");
        return -ETIMEDOUT;
    }
    struct qslot *slot = admin_wait_slot(wait, 0);
    int r = slot->err;
    if (r < 0) {
        snprintf(err, errlen, "%s", slot->msg);
    } else if (slot->result != NULL) {
        json_object_update(out, slot->result);
    }
    admin_wait_release(wait);
    return r;
}

#define QUEUE_OP(name, kind)                                                                       \
    static int name(void *arg, const struct admin_request *req, json_t *out, char *err,            \
                    size_t errlen)                                                                 \
    {                                                                                              \
        return run_qop(arg, kind, req, out, err, errlen);                                          \
    }
QUEUE_OP(op_queue_summary, QOP_SUMMARY)
QUEUE_OP(op_queue_list, QOP_LIST)
QUEUE_OP(op_queue_show, QOP_SHOW)
QUEUE_OP(op_queue_delete, QOP_DELETE)
QUEUE_OP(op_queue_retry, QOP_RETRY)
QUEUE_OP(op_queue_hold, QOP_HOLD)
QUEUE_OP(op_queue_release, QOP_RELEASE)
QUEUE_OP(op_flush, QOP_FLUSH)

static int op_metrics(void *arg, struct admin_buf *buf, char *err, size_t errlen)
{
    struct cmtpd *d = arg;
    struct admin_metrics m;
    struct io_worker_stats io = {0};
    struct admin_wait *wait = gather(d, err, errlen);
    if (wait == NULL)
        return -ETIMEDOUT;
    for (unsigned i = 0; i < d->n_workers; i++) {
        struct io_worker_stats w;
        if (d->workers[i] == NULL)
            continue;
        io_worker_stats(d->workers[i]->io, &w);
        io.accepted += w.accepted;
        io.refused += w.refused + w.rejected;
        io.conns += w.conns;
        io.bytes_in += w.bytes_in;
        io.bytes_out += w.bytes_out;
    }
    admin_metrics_init(&m, buf);
    gauge(&m, "cmtp_up", "1 while cmtpd runs.", 1);
    gauge(&m, "cmtp_workers", "Worker threads.", d->n_workers);
    gauge(&m, "cmtp_connections", "Open connections.", (double)io.conns);
    counter(&m, "cmtp_connections_accepted_total", "Connections accepted.", io.accepted);
    admin_metrics_family(&m, "cmtp_connections_refused_total", ADMIN_METRIC_COUNTER,
                         "Connections refused before TLS, by reason.");
    admin_metrics_uvalue(&m, (struct admin_label[]){{"reason", "conn_max"}}, 1, io.refused);
    admin_metrics_uvalue(&m, (struct admin_label[]){{"reason", "per_ip"}}, 1,
                         SUM_CTR(d, ip_refused));
    counter(&m, "cmtp_handshakes_total", "TLS handshakes completed.", SUM_CTR(d, handshakes));
    counter(&m, "cmtp_handshakes_resumed_total", "Of the handshakes, resumed from a ticket.",
            SUM_CTR(d, resumed));
    admin_metrics_family(&m, "cmtp_handshake_failures_total", ADMIN_METRIC_COUNTER,
                         "TLS handshakes that failed, by reason.");
    admin_metrics_uvalue(&m, (struct admin_label[]){{"reason", "refused"}}, 1,
                         SUM_CTR(d, handshakes_failed));
    counter(&m, "cmtp_timeouts_total", "Connections closed by a deadline.", SUM_CTR(d, timeouts));
    admin_metrics_family(&m, "cmtp_messages_total", ADMIN_METRIC_COUNTER,
                         "Messages by outcome at END.");
    admin_metrics_uvalue(&m, (struct admin_label[]){{"outcome", "accepted"}}, 1,
                         SUM_CTR(d, accepted));
    admin_metrics_uvalue(&m, (struct admin_label[]){{"outcome", "duplicate"}}, 1, SUM_CTR(d, dups));
    admin_metrics_uvalue(&m, (struct admin_label[]){{"outcome", "deferred"}}, 1,
                         SUM_CTR(d, tempfails));
    admin_metrics_uvalue(&m, (struct admin_label[]){{"outcome", "refused"}}, 1,
                         SUM_CTR(d, refused));
    counter(&m, "cmtp_body_bytes_total", "Message body octets received.", SUM_CTR(d, body_bytes));
    counter(&m, "cmtp_smtp_sessions_total", "SMTP ingress connections accepted.",
            SUM_CTR(d, smtp_sessions));
    counter(&m, "cmtp_smtp_untrusted_total",
            "SMTP ingress connections refused: outside trusted_networks.",
            SUM_CTR(d, smtp_untrusted));
    admin_metrics_family(&m, "cmtp_smtp_messages_total", ADMIN_METRIC_COUNTER,
                         "SMTP ingress messages by outcome at the end of data.");
    admin_metrics_uvalue(&m, (struct admin_label[]){{"outcome", "accepted"}}, 1,
                         SUM_CTR(d, smtp_accepted));
    admin_metrics_uvalue(&m, (struct admin_label[]){{"outcome", "deferred"}}, 1,
                         SUM_CTR(d, smtp_tempfails));
    admin_metrics_uvalue(&m, (struct admin_label[]){{"outcome", "refused"}}, 1,
                         SUM_CTR(d, smtp_refused));
    counter(&m, "cmtp_smtp_body_bytes_total", "SMTP ingress body octets received.",
            SUM_CTR(d, smtp_body_bytes));
    counter(&m, "cmtp_network_received_bytes_total", "Octets received (TLS records).", io.bytes_in);
    counter(&m, "cmtp_network_sent_bytes_total", "Octets sent (TLS records).", io.bytes_out);
    /* Redis, from the workers' own snapshots. */
    uint64_t cmds = 0, errs = 0, lat_sum = 0, lat_max = 0, up = 0, inflight = 0;
    struct queue_consumer_stats cs = {0};
    for (unsigned i = 0; i < d->n_workers; i++) {
        const struct wsnap *w = admin_wait_slot(wait, i);
        cs.cmds_sent += w->cs.cmds_sent;
        cs.claimed += w->cs.claimed;
        cs.prefetched += w->cs.prefetched;
        cs.adopted += w->cs.adopted;
        cs.adopt_leased += w->cs.adopt_leased;
        cs.finish_items += w->cs.finish_items;
        cs.finish_scripts += w->cs.finish_scripts;
        cs.stale += w->cs.stale;
        cs.lost += w->cs.lost;
        cmds += w->qs.cmds_sent;
        errs += w->qs.errors;
        lat_sum += w->qs.latency_us_sum;
        lat_max = w->qs.latency_us_max > lat_max ? w->qs.latency_us_max : lat_max;
        up += w->qstate == QUEUE_CONNECTED;
        inflight += w->qs.inflight;
    }
    admin_wait_release(wait);
    struct cmtpd_delivery_stats ds = {0};
    for (unsigned i = 0; i < d->n_workers; i++) {
        struct cmtpd_delivery_stats w;
        if (d->workers[i] == NULL)
            continue;
        cmtpd_delivery_get_stats(d->workers[i], &w);
        ds.attempts += w.attempts;
        ds.delivered += w.delivered;
        ds.deferred += w.deferred;
        ds.bounced += w.bounced;
        ds.relay_refused += w.relay_refused;
        ds.delivered_maildir += w.delivered_maildir;
        ds.delivered_lmtp += w.delivered_lmtp;
        ds.delivered_cmtp += w.delivered_cmtp;
        ds.delivered_smtp += w.delivered_smtp;
        ds.reports += w.reports;
        ds.inflight += w.inflight;
        ds.connects += w.connects;
        ds.reused += w.reused;
    }
    admin_metrics_family(&m, "cmtp_deliveries_total", ADMIN_METRIC_COUNTER,
                         "Recipient deliveries by outcome.");
    admin_metrics_uvalue(&m, (struct admin_label[]){{"outcome", "delivered"}}, 1, ds.delivered);
    admin_metrics_uvalue(&m, (struct admin_label[]){{"outcome", "deferred"}}, 1, ds.deferred);
    admin_metrics_uvalue(&m, (struct admin_label[]){{"outcome", "bounced"}}, 1, ds.bounced);
    admin_metrics_uvalue(&m, (struct admin_label[]){{"outcome", "relay_refused"}}, 1,
                         ds.relay_refused);
    admin_metrics_family(&m, "cmtp_delivered_total", ADMIN_METRIC_COUNTER,
                         "Recipients delivered, by transport.");
    admin_metrics_uvalue(&m, (struct admin_label[]){{"transport", "maildir"}}, 1,
                         ds.delivered_maildir);
    admin_metrics_uvalue(&m, (struct admin_label[]){{"transport", "lmtp"}}, 1, ds.delivered_lmtp);
    admin_metrics_uvalue(&m, (struct admin_label[]){{"transport", "cmtp"}}, 1, ds.delivered_cmtp);
    admin_metrics_uvalue(&m, (struct admin_label[]){{"transport", "smtp"}}, 1, ds.delivered_smtp);
    counter(&m, "cmtp_reports_total", "Status reports sent to originators.", ds.reports);
    counter(&m, "cmtp_delivery_connections_total", "Outbound delivery connections started.",
            ds.connects);
    counter(&m, "cmtp_delivery_connections_reused_total",
            "Deliveries on a reused LMTP/SMTP connection.", ds.reused);
    gauge(&m, "cmtp_deliveries_inflight", "Deliveries in progress.", (double)ds.inflight);
    /* The delivery side's Redis work (queue/consumer.c): what a delivery costs the store. */
    counter(&m, "cmtp_delivery_redis_commands_total",
            "Redis commands sent by the delivery side (claims, splits, reads, completions).",
            cs.cmds_sent);
    counter(&m, "cmtp_delivery_split_total", "New messages split into work items.", cs.adopted);
    admin_metrics_family(&m, "cmtp_delivery_leases_total", ADMIN_METRIC_COUNTER,
                         "Work items leased, by how their record came: with the split that "
                         "leased them, with the split of an earlier claim, or read again.");
    admin_metrics_uvalue(&m, (struct admin_label[]){{"record", "split"}}, 1, cs.adopt_leased);
    admin_metrics_uvalue(&m, (struct admin_label[]){{"record", "prefetched"}}, 1,
                         cs.prefetched >= cs.adopt_leased ? cs.prefetched - cs.adopt_leased : 0);
    admin_metrics_uvalue(&m, (struct admin_label[]){{"record", "read"}}, 1,
                         cs.claimed >= cs.prefetched ? cs.claimed - cs.prefetched : 0);
    counter(&m, "cmtp_delivery_finished_items_total",
            "Work items finished or rescheduled after their completion.", cs.finish_items);
    counter(&m, "cmtp_delivery_finish_scripts_total",
            "Scripts that finished them (one per home shard per loop iteration).",
            cs.finish_scripts);
    counter(&m, "cmtp_delivery_stale_total",
            "Completions that re-read a record another completion had changed.", cs.stale);
    counter(&m, "cmtp_delivery_leases_lost_total",
            "Completions whose lease had been taken over (a duplicate is possible).", cs.lost);
    /* Queue depth and age, from the queue itself (worker 0's consumer). */
    json_t *qs = json_object();
    char qerr[128] = "";
    if (run_qop(d, QOP_SUMMARY, &(struct admin_request){0}, qs, qerr, sizeof(qerr)) == 0) {
        json_t *dests = json_object_get(qs, "destinations"), *e;
        size_t i;
        double now = (double)ts_ms() / 1000.0;
        admin_metrics_family(&m, "cmtp_queue_depth", ADMIN_METRIC_GAUGE,
                             "Queued work items by state (all nodes).");
        uint64_t st[4] = {0};
        double oldest = 0;
        json_array_foreach(dests, i, e)
        {
            st[0] += (uint64_t)json_integer_value(json_object_get(e, "scheduled"));
            st[1] += (uint64_t)json_integer_value(json_object_get(e, "active"));
            st[2] += (uint64_t)json_integer_value(json_object_get(e, "held"));
            st[3] += (uint64_t)json_integer_value(json_object_get(e, "dead"));
            double o = (double)json_integer_value(json_object_get(e, "oldest_ms")) / 1000.0;
            if (o > 0 && (oldest == 0 || o < oldest))
                oldest = o;
        }
        static const char *const names[4] = {"scheduled", "active", "held", "dead"};
        for (size_t k = 0; k < 4; k++)
            admin_metrics_uvalue(&m, (struct admin_label[]){{"state", names[k]}}, 1, st[k]);
        gauge(&m, "cmtp_queue_oldest_seconds", "Age of the oldest queued message (0: none).",
              oldest > 0 && now > oldest ? now - oldest : 0);
        counter(&m, "cmtp_queue_quarantined_total", "Records quarantined as corrupt.",
                (uint64_t)json_integer_value(json_object_get(qs, "quarantined")));
    }
    json_decref(qs);
    gauge(&m, "cmtp_redis_connected_workers", "Workers connected to Redis.", (double)up);
    counter(&m, "cmtp_redis_commands_total", "Redis commands sent.", cmds);
    counter(&m, "cmtp_redis_errors_total", "Redis error replies.", errs);
    gauge(&m, "cmtp_redis_inflight", "Redis commands outstanding.", (double)inflight);
    admin_metrics_family(&m, "cmtp_redis_latency_seconds_sum", ADMIN_METRIC_COUNTER,
                         "Sum of Redis command latencies.");
    admin_metrics_value(&m, NULL, 0, (double)lat_sum / 1e6);
    gauge(&m, "cmtp_redis_latency_max_seconds", "Largest Redis command latency seen.",
          (double)lat_max / 1e6);
    /* END to durable answer. */
    static const double bounds_ms[CMTPD_COMMIT_BUCKETS] = CMTPD_COMMIT_BOUNDS_MS;
    double le[CMTPD_COMMIT_BUCKETS];
    uint64_t counts[CMTPD_COMMIT_BUCKETS + 1] = {0};
    double sum = 0;
    for (size_t b = 0; b < CMTPD_COMMIT_BUCKETS; b++)
        le[b] = bounds_ms[b] / 1000.0;
    for (unsigned i = 0; i < d->n_workers; i++) {
        if (d->workers[i] == NULL)
            continue;
        for (size_t b = 0; b <= CMTPD_COMMIT_BUCKETS; b++)
            counts[b] += ld(&d->workers[i]->ctr.commit_ms[b]);
        sum += (double)ld(&d->workers[i]->ctr.commit_us_sum) / 1e6;
    }
    admin_metrics_family(&m, "cmtp_commit_duration_seconds", ADMIN_METRIC_HISTOGRAM,
                         "From END to the durable answer (Redis commit, WAIT).");
    admin_metrics_histogram(&m, NULL, 0, le, CMTPD_COMMIT_BUCKETS, counts, sum);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    gauge(&m, "cmtp_uptime_seconds", "Seconds since cmtpd started.",
          (double)((uint64_t)ts.tv_sec * 1000u - d->started_ms) / 1000.0);
    int r = admin_metrics_finish(&m);
    if (r < 0)
        snprintf(err, errlen, "metrics: %s", strerror(-r));
    return r;
}

int cmtpd_admin_start(struct cmtpd *d, char *err, size_t errlen)
{
    static const struct admin_ops ops = {
        .status = op_status,
        .stats = op_stats,
        .queue_summary = op_queue_summary,
        .queue_list = op_queue_list,
        .queue_show = op_queue_show,
        .queue_delete = op_queue_delete,
        .queue_retry = op_queue_retry,
        .queue_hold = op_queue_hold,
        .queue_release = op_queue_release,
        .flush = op_flush,
        .drain = op_drain,
        .resume = op_resume,
        .reload = op_reload,
        .log_level = op_log_level,
        .metrics = op_metrics,
        .delivery_pause = op_delivery_pause,
        .delivery_resume = op_delivery_resume,
    };
    const struct cmtp_config *c = &d->cfg->c;
    struct admin_config ac = {
        .path = c->admin.socket,
        .mode = c->admin.mode,
        .group = c->admin.group[0] ? c->admin.group : NULL,
        .owner = c->server.user[0] ? c->server.user : NULL,
        .version = CMTPD_VERSION,
        .started_ms = d->started_ms,
        .log = &d->log,
    };
    if (c->admin.socket[0] == '\0')
        return 0;
    d->admin = admin_server_new(&ac, &ops, d, err, errlen);
    if (d->admin == NULL)
        return -EINVAL;
    if (c->admin.metrics_enabled) {
        struct admin_http_config hc = {
            .host = c->admin.metrics_listen.host,
            .port = c->admin.metrics_listen.port,
            .log = &d->log,
        };
        d->metrics_http = admin_metrics_http_new(&hc, &ops, d, err, errlen);
        if (d->metrics_http == NULL) {
            admin_server_free(d->admin);
            d->admin = NULL;
            return -EINVAL;
        }
    }
    return 0;
}

void cmtpd_admin_stop(struct cmtpd *d)
{
    admin_metrics_http_free(d->metrics_http);
    d->metrics_http = NULL;
    admin_server_free(d->admin);
    d->admin = NULL;
}
