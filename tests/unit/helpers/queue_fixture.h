/* tests/unit/helpers/queue_fixture.h — shared fixture of the queue tests: a private redis-server,
 * a poll loop, a hiredis sync connection for read-back, sample messages and commit helpers.
 * Header-only (static inline) so that other modules' test programs never link queue code. */
#ifndef CMTP_TEST_QUEUE_FIXTURE_H
#define CMTP_TEST_QUEUE_FIXTURE_H

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include "queue/queue.h"
#include "tests/unit/helpers/poll_loop.h"
#include "tests/unit/helpers/redis_test.h"

/* qfix is one test program's Redis, loop and read-back connection. */
struct qfix {
    struct redis_test rt;
    struct poll_loop *pl;
    struct queue_loop ql;
    redisContext *sync;
    char addr[200];
    unsigned seq;
};

static inline int qfix_sync_connect(struct qfix *f)
{
    if (f->sync)
        redisFree(f->sync);
    struct timeval tv = {.tv_sec = 5};
    f->sync = redisConnectUnixWithTimeout(f->rt.sock, tv);
    if (f->sync == NULL || f->sync->err)
        return -1;
    redisSetTimeout(f->sync, tv);
    return 0;
}

static inline int qfix_setup(struct qfix *f, const char *const *extra)
{
    memset(f, 0, sizeof(*f));
    if (redis_test_start(&f->rt, extra) < 0)
        return -1;
    f->pl = poll_loop_new();
    if (f->pl == NULL)
        return -1;
    poll_loop_bind(f->pl, &f->ql);
    snprintf(f->addr, sizeof(f->addr), "unix:%s", f->rt.sock);
    return qfix_sync_connect(f);
}

static inline void qfix_teardown(struct qfix *f)
{
    if (f->sync)
        redisFree(f->sync);
    f->sync = NULL;
    poll_loop_free(f->pl);
    f->pl = NULL;
    redis_test_stop(&f->rt);
}

/* qfix_config fills test defaults: short timeouts and reconnects. */
static inline void qfix_config(const struct qfix *f, struct queue_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->address = f->addr;
    cfg->node_id = "test-node:w0";
    cfg->op_timeout_ms = 2000;
    cfg->reconnect_min_ms = 20;
    cfg->reconnect_max_ms = 200;
}

struct qfix_state_wait {
    struct queue *q;
    enum queue_conn_state want;
};

static inline bool qfix_state_is(void *arg)
{
    struct qfix_state_wait *w = arg;
    return queue_state(w->q, NULL) == w->want;
}

static inline bool qfix_wait_state(struct qfix *f, struct queue *q, enum queue_conn_state want,
                                   uint64_t ms)
{
    struct qfix_state_wait w = {q, want};
    return poll_loop_run_until(f->pl, qfix_state_is, &w, ms);
}

/* qfix_open creates a queue and waits (3 s) until it is connected. */
static inline struct queue *qfix_open(struct qfix *f, const struct queue_config *cfg)
{
    char err[256];
    struct queue *q = queue_new(cfg, &f->ql, err, sizeof(err));
    if (q == NULL)
        fail_msg("queue_new: %s", err);
    if (!qfix_wait_state(f, q, QUEUE_CONNECTED, 3000)) {
        const char *le;
        queue_state(q, &le);
        fail_msg("queue did not connect: %s", le);
    }
    return q;
}

/* qmsg is one sample message: envelope, two recipients, meta and a random body. */
struct qmsg {
    struct cmtp_envelope env;
    struct queue_rcpt rcpts[3];
    size_t n_rcpts;
    struct queue_txn_meta meta;
    uint8_t *body;
    size_t len;
};

static inline void qfix_addr(struct cmtp_addr *a, const char *local, const char *domain)
{
    memset(a, 0, sizeof(*a));
    snprintf(a->local, sizeof(a->local), "%s", local);
    snprintf(a->domain, sizeof(a->domain), "%s", domain);
    a->local_len = strlen(a->local);
    a->domain_len = strlen(a->domain);
}

/* qmsg_new makes a message of |len| random octets with a fresh txid (or |txid|). */
static inline struct qmsg *qmsg_new(struct qfix *f, size_t len, const char *txid)
{
    struct qmsg *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    m->body = malloc(len ? len : 1);
    assert_non_null(m->body);
    m->len = len;
    uint64_t x = 0x9e3779b97f4a7c15ull ^ ((uint64_t)getpid() << 32) ^ ++f->seq;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        m->body[i] = (uint8_t)x;
    }
    qfix_addr(&m->env.from, "sender", "origin.example");
    if (txid)
        snprintf(m->env.txid, sizeof(m->env.txid), "%s", txid);
    else
        snprintf(m->env.txid, sizeof(m->env.txid), "T%08x%08xq%05u", (unsigned)getpid(),
                 (unsigned)(x >> 32), f->seq);
    m->env.size = len;
    SHA256(m->body, len, m->env.digest);
    m->env.policy.hops = 8;
    qfix_addr(&m->rcpts[0].addr, "alice", "dest.example");
    m->rcpts[0].role = CMTP_ROLE_FINAL;
    qfix_addr(&m->rcpts[1].addr, "bob", "other.example");
    m->rcpts[1].role = CMTP_ROLE_RELAY;
    snprintf(m->rcpts[1].next_hop, sizeof(m->rcpts[1].next_hop), "mx.other.example");
    m->n_rcpts = 2;
    snprintf(m->meta.peer_ip, sizeof(m->meta.peer_ip), "192.0.2.7");
    snprintf(m->meta.tls_version, sizeof(m->meta.tls_version), "TLSv1.3");
    snprintf(m->meta.tls_cipher, sizeof(m->meta.tls_cipher), "TLS_AES_128_GCM_SHA256");
    m->meta.received_ms = 1780000000000;
    snprintf(m->meta.listener, sizeof(m->meta.listener), "public");
    return m;
}

static inline void qmsg_free(struct qmsg *m)
{
    if (m) {
        free(m->body);
        free(m);
    }
}

/* qcommit collects one commit's result. */
struct qcommit {
    bool done;
    int calls;
    struct queue_commit_result r;
};

static inline void qcommit_cb(void *arg, const struct queue_commit_result *r)
{
    struct qcommit *c = arg;
    c->done = true;
    c->calls++;
    c->r = *r;
}

static inline bool qcommit_done(void *arg)
{
    return ((struct qcommit *)arg)->done;
}

static inline void qflag_set(void *arg)
{
    *(bool *)arg = true;
}

static inline bool qflag_is_set(void *arg)
{
    return *(bool *)arg;
}

/* qfix_append streams |m|'s body in |piece|-octet appends, honouring QUEUE_AGAIN (runs the loop
 * until the writable callback). Returns QUEUE_OK or QUEUE_TEMPFAIL; counts AGAINs into |*agains|
 * and the largest queue_txn_buffered into |*max_buf| (both may be NULL). */
static inline enum queue_res qfix_append(struct qfix *f, struct queue_txn *t, const struct qmsg *m,
                                         size_t piece, unsigned *agains, size_t *max_buf)
{
    bool writable = false;
    enum queue_res res = QUEUE_OK;
    queue_txn_set_writable_cb(t, qflag_set, &writable);
    for (size_t off = 0; off < m->len;) {
        size_t n = m->len - off < piece ? m->len - off : piece;
        writable = false;
        res = queue_txn_append(t, m->body + off, n);
        off += n;
        if (max_buf && queue_txn_buffered(t) > *max_buf)
            *max_buf = queue_txn_buffered(t);
        if (res == QUEUE_TEMPFAIL)
            return res;
        if (res == QUEUE_AGAIN) {
            if (agains)
                (*agains)++;
            if (!poll_loop_run_until(f->pl, qflag_is_set, &writable, 5000))
                fail_msg("writable callback never fired");
            res = QUEUE_OK;
        }
    }
    return res;
}

/* qfix_send runs a whole transaction (begin, append, commit, wait up to 5 s) and stores the
 * result in |c|. Returns the qid queue_txn_begin chose (in |qid|). */
static inline void qfix_send(struct qfix *f, struct queue *q, const struct qmsg *m, size_t piece,
                             struct qcommit *c, char *qid, size_t qid_cap)
{
    memset(c, 0, sizeof(*c));
    struct queue_txn *t = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
    if (t == NULL)
        fail_msg("queue_txn_begin: %s", strerror(errno));
    if (qid)
        snprintf(qid, qid_cap, "%s", queue_txn_qid(t));
    enum queue_res res = qfix_append(f, t, m, piece, NULL, NULL);
    assert_int_not_equal(res, QUEUE_TEMPFAIL);
    int rc = queue_txn_commit(t, m->env.digest, qcommit_cb, c);
    if (rc < 0) {
        queue_txn_abort(t);
        fail_msg("queue_txn_commit: %s", strerror(-rc));
    }
    assert_false(c->done); /* never from inside the call */
    if (!poll_loop_run_until(f->pl, qcommit_done, c, 5000))
        fail_msg("commit callback never fired");
    assert_int_equal(c->calls, 1);
}

/* qfix_cmd runs one command on the sync connection (argv of NUL-terminated strings). */
static inline redisReply *qfix_cmd(struct qfix *f, int argc, const char **argv)
{
    redisReply *r = redisCommandArgv(f->sync, argc, argv, NULL);
    assert_non_null(r);
    return r;
}

static inline long long qfix_int(struct qfix *f, int argc, const char **argv)
{
    redisReply *r = qfix_cmd(f, argc, argv);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* qfix_key formats a key of the default prefix. */
static inline const char *qfix_key(char *buf, size_t cap, unsigned shard, const char *kind,
                                   const char *name)
{
    assert_true(queue_key_format(buf, cap, QUEUE_PREFIX_DEFAULT, shard, kind, name,
                                 name ? strlen(name) : 0) > 0);
    return buf;
}

static inline long long qfix_exists(struct qfix *f, const char *key)
{
    const char *argv[] = {"EXISTS", key};
    return qfix_int(f, 2, argv);
}

#endif
