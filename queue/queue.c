/* queue/queue.c — the ingest side of the Redis queue: hiredis async on a foreign loop, chunked
 * body writes with backpressure, one atomic commit script, deadlines and reconnects. Not the
 * delivery consumer (it reads the keys documented in docs/QUEUE.md). */
#include "queue/queue.h"
#include "queue/redis_conn.h"

#include <errno.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/sds.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* The commit script. KEYS: 1 dedup, 2 envelope, 3 body, 4 schedule, 5 stats. ARGV: 1 qid,
 * 2 digest (32 raw octets), 3 originator, 4 recipient count, 5 envelope record, 6 last chunk
 * (may be empty), 7 chunks expected (with the last), 8 schedule score (ms), 9 dedup ttl (ms).
 * Every check comes before the first write, and the last check (SET NX of the envelope, the
 * queue-id clash test) is the first write: Redis refuses a legacy script's first write under
 * OOM, MISCONF or NOREPLICAS, so a refused commit leaves nothing behind; scripts are not rolled
 * back, which is why nothing after the first write can fail on input. The dedup key is a string
 * "qid LF rcpts LF originator LF digest" with its expiry set by the same SET (a HASH written by
 * an older node is still read; addresses never hold a LF). The body list is counted (LLEN) and
 * made persistent only when chunks were written before the commit; the `accepted` and `bytes`
 * counters are added in batches (on_stats_timer), not by every commit. */
static const char commit_lua[] =
    "local prev = {}\n"
    "local v = redis.pcall('GET', KEYS[1])\n"
    "if type(v) == 'table' and v.err then\n"
    "  prev = redis.call('HMGET', KEYS[1], 'qid', 'digest', 'from', 'rcpts')\n"
    "elseif v then\n"
    "  local q, n, f = string.match(v, '^([^\\n]*)\\n([^\\n]*)\\n([^\\n]*)\\n')\n"
    "  if q then prev = {q, string.sub(v, #q + #n + #f + 4), f, n} end\n"
    "end\n"
    "if prev[1] then\n"
    "  redis.pcall('UNLINK', KEYS[3])\n"
    "  if prev[2] ~= ARGV[2] or prev[3] ~= ARGV[3] then\n"
    "    redis.pcall('HINCRBY', KEYS[5], 'conflicts', 1)\n"
    "    return {'conflict', prev[1], prev[4] or '0'}\n"
    "  end\n"
    "  redis.pcall('HINCRBY', KEYS[5], 'dups', 1)\n"
    "  return {'dup', prev[1], prev[4] or '0'}\n"
    "end\n"
    "local inline = #ARGV[6] > 0\n"
    "local sent = tonumber(ARGV[7]) - (inline and 1 or 0)\n"
    "if sent > 0 then\n"
    "  local have = redis.call('LLEN', KEYS[3])\n"
    "  if have ~= sent then\n"
    "    if inline then have = have + 1 end\n"
    "    return redis.error_reply('BODYLOST body chunks missing: ' .. have .. ' of ' .. ARGV[7])\n"
    "  end\n"
    "end\n"
    "if not redis.call('SET', KEYS[2], ARGV[5], 'NX') then\n"
    "  return redis.error_reply('QIDCLASH queue id already in use')\n"
    "end\n"
    "if inline then redis.call('RPUSH', KEYS[3], ARGV[6]) end\n"
    "if sent > 0 then redis.call('PERSIST', KEYS[3]) end\n"
    "redis.call('ZADD', KEYS[4], ARGV[8], ARGV[1])\n"
    "redis.call('SET', KEYS[1], ARGV[1] .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[3] .. '\\n' .. "
    "ARGV[2], "
    "'PX', ARGV[9])\n"
    "return {'ok', ARGV[1], ARGV[4]}\n";

/* QUEUE_TXN_READY_MAX is how many full chunks a transaction may hold unsent (a caller that
 * ignores QUEUE_AGAIN hits it and the transaction fails). */
#define QUEUE_TXN_READY_MAX 8u

/* Crockford base32: ascending ASCII order, so qids sort by time. */
static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

enum op_kind {
    OP_AUTH,
    OP_SCRIPT_LOAD,
    OP_CHUNK,
    OP_EXPIRE,
    OP_COMMIT,
    OP_WAIT,
    OP_UNLINK,
    OP_GET,
    OP_STATS,
};

/* op is one command sent and not yet answered; linked in send order (= reply order). */
struct op {
    struct op *prev, *next;
    struct queue *q;
    enum op_kind kind;
    struct queue_txn *txn; /* NULL once detached (aborted transaction) or for none */
    uint64_t sent_us;
    uint64_t deadline_ms;
    unsigned attempt; /* commit attempt the op belongs to */
    size_t bytes;     /* body octets carried (OP_CHUNK) */
    unsigned shard;   /* OP_STATS: the shard whose counters it adds to */
    uint64_t n_acc;   /* OP_STATS: accepted messages it adds */
    uint64_t n_bytes; /* OP_STATS: body octets it adds */
    void (*read_cb)(void *arg, int err, const uint8_t *data, size_t len);
    void *read_arg;
};

struct chunk {
    struct chunk *next;
    size_t len;
    uint8_t data[];
};

enum txn_state {
    TXN_OPEN,       /* receiving the body */
    TXN_COMMITTING, /* commit asked, script not sent yet (chunks or room pending) */
    TXN_SENT,       /* script sent, waiting for its reply (and WAIT's) */
    TXN_DETACHED,   /* aborted after the script was sent: finish silently */
};

struct queue_txn {
    struct queue *q;
    struct queue_txn *prev, *next;   /* q->txns */
    struct queue_txn *wprev, *wnext; /* q's wait list (waiting for inflight room) */
    bool waiting;
    unsigned ops_live; /* ops in flight that point at this transaction */
    enum txn_state state;
    char qid[CMTP_QID_MAX + 1];
    unsigned shard;
    char txid[CMTP_TXID_MAX + 1];
    char from[CMTP_LOCAL_MAX + CMTP_DOMAIN_MAX + 2];
    uint8_t digest[CMTP_DIGEST_LEN];
    uint64_t size;
    unsigned n_rcpts;
    uint8_t *record;
    size_t record_len;
    /* An unsized transaction (queue_txn_begin_unsized) keeps copies of what the record is made
     * of until queue_txn_commit_unsized knows the size and digest; NULL otherwise. */
    struct cmtp_envelope *u_env;
    struct queue_rcpt *u_rcpts;
    size_t u_n;
    struct queue_txn_meta *u_meta;
    /* body */
    struct chunk *fill;
    struct chunk *ready_head, *ready_tail;
    unsigned n_ready;
    uint64_t bytes_appended;
    unsigned chunks_sent;
    unsigned chunks_outstanding;
    size_t bytes_outstanding;
    bool failed;
    char fail_reason[QUEUE_REASON_MAX];
    bool in_append;
    bool want_writable;
    void (*writable_cb)(void *arg);
    void *writable_arg;
    /* commit */
    void (*done)(void *arg, const struct queue_commit_result *r);
    void *done_arg;
    unsigned attempt;
    unsigned commit_pending;
    bool used_eval;
    bool result_set;
    bool wait_short;
    long long wait_acks;
    struct queue_commit_result result;
};

struct queue {
    struct queue_loop loop;
    struct queue_conn rc; /* the Redis connection (queue/redis_conn.c) */
    /* configuration */
    char prefix[QUEUE_PREFIX_MAX + 1];
    char node[QUEUE_NODE_MAX + 1];
    unsigned shards;
    unsigned wait_replicas;
    uint32_t wait_timeout_ms;
    unsigned inflight_max;
    size_t chunk_size;
    uint32_t op_timeout_ms;
    uint32_t dedup_ttl_ms;
    uint32_t body_ttl_ms;
    /* connection */
    char sha[41]; /* of the commit script, loaded at each connect */
    /* work */
    struct op *ops_head, *ops_tail;
    unsigned inflight;
    struct queue_txn *txns;
    struct queue_txn *wait_head, *wait_tail;
    uint64_t rng;
    struct queue_stats st;
    /* Accepted messages and body octets not yet added to the shards' `stats` hashes; flushed
     * by stats_timer, at most QUEUE_STATS_FLUSH_MS after the first of them. */
    uint64_t *pend_acc, *pend_bytes; /* shards entries each */
    void *stats_timer;
};

static void txn_kick(struct queue_txn *t);

/* ---- small helpers ---- */

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int64_t wall_ms(void)
{
    return queue_conn_wall_ms();
}

static uint64_t loop_now(const struct queue *q)
{
    return q->loop.ops->now_ms(q->loop.loop);
}

static void set_error(struct queue *q, const char *what, const char *detail)
{
    queue_conn_set_error(&q->rc, what, detail);
}

/* rng_next: the per-queue generator of the random part of qids (seeded from getrandom). */
static uint64_t rng_next(struct queue *q)
{
    return queue_conn_splitmix64(&q->rng);
}

int queue_key_format(char *out, size_t cap, const char *prefix, unsigned shard, const char *kind,
                     const char *name, size_t name_len)
{
    int n = snprintf(out, cap, "%s:{s%u}:%s", prefix, shard, kind);
    if (n < 0 || (size_t)n >= cap)
        return -ENOSPC;
    if (name == NULL)
        return n;
    if ((size_t)n + 1 + name_len >= cap)
        return -ENOSPC;
    out[n] = ':';
    memcpy(out + n + 1, name, name_len);
    out[n + 1 + name_len] = '\0';
    return n + 1 + (int)name_len;
}

unsigned queue_txid_shard(const char *txid, size_t len, unsigned shards)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)txid[i];
        h *= 16777619u;
    }
    return shards ? h % shards : 0;
}

int queue_qid_shard(const char *qid, unsigned *shard)
{
    const char *dash = qid ? strrchr(qid, '-') : NULL;
    unsigned long v = 0;

    if (dash == NULL || dash[1] == '\0' || strlen(qid) > CMTP_QID_MAX)
        return -EINVAL;
    for (const char *p = dash + 1; *p; p++) {
        if (*p < '0' || *p > '9' || v >= QUEUE_SHARDS_MAX)
            return -EINVAL;
        v = v * 10 + (unsigned long)(*p - '0');
    }
    if (v >= QUEUE_SHARDS_MAX)
        return -EINVAL;
    *shard = (unsigned)v;
    return 0;
}

const char *queue_commit_script(void)
{
    return commit_lua;
}

/* make_qid writes 10 base32 digits of the ms wall clock, 12 random digits, '-' and the shard. */
static void make_qid(struct queue *q, unsigned shard, char *out, size_t cap)
{
    char s[23];
    uint64_t ms = (uint64_t)wall_ms();
    uint64_t r = rng_next(q);

    for (int i = 9; i >= 0; i--) {
        s[i] = b32[ms & 31u];
        ms >>= 5;
    }
    for (int i = 10; i < 22; i++) {
        s[i] = b32[r & 31u];
        r >>= 5;
    }
    s[22] = '\0';
    snprintf(out, cap, "%s-%u", s, shard);
}

/* ---- operations and deadlines ---- */

static void on_reply(redisAsyncContext *ac, void *r, void *priv);

static struct op *op_new(struct queue *q, enum op_kind kind, struct queue_txn *t)
{
    struct op *op = calloc(1, sizeof(*op));
    if (op == NULL)
        return NULL;
    op->q = q;
    op->kind = kind;
    op->txn = t;
    return op;
}

static void op_unlink(struct queue *q, struct op *op)
{
    if (op->prev)
        op->prev->next = op->next;
    else
        q->ops_head = op->next;
    if (op->next)
        op->next->prev = op->prev;
    else
        q->ops_tail = op->prev;
    op->prev = op->next = NULL;
    q->inflight--;
}

/* q_send hands one command to hiredis (argv only, explicit lengths: peer data never meets a
 * format string). On success the op is owned by the reply path; on failure it is freed. */
static int q_send(struct queue *q, struct op *op, int argc, const char **argv, const size_t *lens,
                  uint32_t timeout_ms)
{
    if (q->rc.ac == NULL) {
        free(op);
        return -ENOTCONN;
    }
    op->sent_us = mono_us();
    op->deadline_ms = loop_now(q) + timeout_ms;
    if (redisAsyncCommandArgv(q->rc.ac, on_reply, op, argc, argv, lens) != REDIS_OK) {
        free(op);
        return -EIO;
    }
    op->prev = q->ops_tail;
    if (q->ops_tail)
        q->ops_tail->next = op;
    else
        q->ops_head = op;
    q->ops_tail = op;
    if (op->txn)
        op->txn->ops_live++;
    q->inflight++;
    q->st.cmds_sent++;
    queue_conn_arm_deadline(&q->rc, op->deadline_ms);
    return 0;
}

static bool q_room(const struct queue *q, unsigned n)
{
    return q->rc.state == QUEUE_CONNECTED && q->inflight + n <= q->inflight_max;
}

/* ---- batched counters ---- */

static void on_stats_timer(void *arg);

static void stats_arm(struct queue *q)
{
    if (q->stats_timer == NULL && !q->rc.freeing)
        q->stats_timer =
            q->loop.ops->timer_add(q->loop.loop, QUEUE_STATS_FLUSH_MS, on_stats_timer, q);
}

static void stats_add(struct queue *q, unsigned shard, uint64_t n, uint64_t bytes)
{
    q->pend_acc[shard] += n;
    q->pend_bytes[shard] += bytes;
    stats_arm(q);
}

/* stats_send sends one HINCRBY of |field| by |v| on |shard|'s stats hash; 0 or -errno. */
static int stats_send(struct queue *q, unsigned shard, const char *field, uint64_t v,
                      uint64_t n_acc, uint64_t n_bytes)
{
    char key[QUEUE_KEY_MAX], num[24];
    int kl = queue_key_format(key, sizeof(key), q->prefix, shard, "stats", NULL, 0);
    if (kl < 0)
        return kl;
    snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
    const char *argv[4] = {"HINCRBY", key, field, num};
    size_t lens[4] = {7, (size_t)kl, strlen(field), strlen(num)};
    struct op *op = op_new(q, OP_STATS, NULL);
    if (op == NULL)
        return -ENOMEM;
    op->shard = shard;
    op->n_acc = n_acc;
    op->n_bytes = n_bytes;
    return q_send(q, op, 4, argv, lens, q->op_timeout_ms);
}

/* on_stats_timer adds the pending counters to Redis (one HINCRBY per counter and shard). Not
 * connected, or a command that fails or gets no reply: the counts stay pending for the next
 * round. */
static void on_stats_timer(void *arg)
{
    struct queue *q = arg;
    bool left = false;

    q->stats_timer = NULL;
    for (unsigned s = 0; s < q->shards; s++) {
        uint64_t a = q->pend_acc[s], b = q->pend_bytes[s];
        if (a == 0 && b == 0)
            continue;
        if (q->rc.state != QUEUE_CONNECTED) {
            left = true;
            continue;
        }
        q->pend_acc[s] = q->pend_bytes[s] = 0;
        if (stats_send(q, s, "accepted", a, a, 0) < 0)
            q->pend_acc[s] += a, left = true;
        if (stats_send(q, s, "bytes", b, 0, b) < 0)
            q->pend_bytes[s] += b, left = true;
    }
    if (left)
        stats_arm(q);
}

/* ---- connection lifecycle ---- */

/* wake_waiters lets transactions waiting for inflight room go on, in FIFO order; each waiter is
 * looked at once per call (one needing more room than there is goes back to the tail). */
static void wake_waiters(struct queue *q)
{
    unsigned n = 0;
    for (struct queue_txn *t = q->wait_head; t; t = t->wnext)
        n++;
    while (n-- > 0 && q->wait_head != NULL) {
        if (q->rc.state == QUEUE_CONNECTED && q->inflight >= q->inflight_max)
            return;
        struct queue_txn *t = q->wait_head;
        q->wait_head = t->wnext;
        if (q->wait_head)
            q->wait_head->wprev = NULL;
        else
            q->wait_tail = NULL;
        t->wnext = t->wprev = NULL;
        t->waiting = false;
        txn_kick(t);
    }
}

/* q_down (queue_conn_ops): the connection is gone; the commit script is loaded again at the
 * next connect, and transactions waiting for inflight room fail or go on. */
static void q_down(void *owner)
{
    struct queue *q = owner;
    q->sha[0] = '\0';
    wake_waiters(q);
}

/* q_deadline (queue_conn_ops): the earliest deadline of an outstanding command. */
static uint64_t q_deadline(void *owner)
{
    const struct queue *q = owner;
    uint64_t min = UINT64_MAX;
    for (const struct op *op = q->ops_head; op; op = op->next)
        if (op->deadline_ms < min)
            min = op->deadline_ms;
    return min;
}

/* q_up (queue_conn_ops): connected; AUTH when configured, then SCRIPT LOAD of the commit
 * script (its reply makes the queue ready). */
static void q_up(void *owner)
{
    struct queue *q = owner;
    const char *argv[3];
    size_t lens[3];
    struct op *op;
    int argc = queue_conn_auth_argv(&q->rc, argv, lens);

    if (argc > 0) {
        op = op_new(q, OP_AUTH, NULL);
        if (op == NULL || q_send(q, op, argc, argv, lens, q->op_timeout_ms) < 0)
            goto err;
    }
    argv[0] = "SCRIPT";
    lens[0] = 6;
    argv[1] = "LOAD";
    lens[1] = 4;
    argv[2] = commit_lua;
    lens[2] = sizeof(commit_lua) - 1;
    op = op_new(q, OP_SCRIPT_LOAD, NULL);
    if (op == NULL || q_send(q, op, 3, argv, lens, q->op_timeout_ms) < 0)
        goto err;
    return;
err:
    queue_conn_reset_soon(&q->rc, "redis handshake failed", "out of memory");
}

static const struct queue_conn_ops q_conn_ops = {
    .up = q_up, .down = q_down, .deadline = q_deadline};

/* ---- transactions ---- */

static void wait_add(struct queue *q, struct queue_txn *t)
{
    if (t->waiting)
        return;
    t->waiting = true;
    t->wnext = NULL;
    t->wprev = q->wait_tail;
    if (q->wait_tail)
        q->wait_tail->wnext = t;
    else
        q->wait_head = t;
    q->wait_tail = t;
}

static void wait_remove(struct queue *q, struct queue_txn *t)
{
    if (!t->waiting)
        return;
    if (t->wprev)
        t->wprev->wnext = t->wnext;
    else
        q->wait_head = t->wnext;
    if (t->wnext)
        t->wnext->wprev = t->wprev;
    else
        q->wait_tail = t->wprev;
    t->wprev = t->wnext = NULL;
    t->waiting = false;
}

/* chunk_free wipes a body chunk (message plaintext) before freeing it. */
static void chunk_free(struct chunk *c)
{
    if (c == NULL)
        return;
    explicit_bzero(c->data, c->len);
    free(c);
}

static void free_chunks(struct queue_txn *t)
{
    while (t->ready_head) {
        struct chunk *c = t->ready_head;
        t->ready_head = c->next;
        chunk_free(c);
    }
    t->ready_tail = NULL;
    t->n_ready = 0;
    chunk_free(t->fill);
    t->fill = NULL;
}

/* unsized_free drops the copies an unsized transaction keeps. */
static void unsized_free(struct queue_txn *t)
{
    if (t->u_env != NULL)
        explicit_bzero(t->u_env, sizeof(*t->u_env));
    free(t->u_env);
    free(t->u_rcpts);
    free(t->u_meta);
    t->u_env = NULL;
    t->u_rcpts = NULL;
    t->u_meta = NULL;
}

static void txn_destroy(struct queue_txn *t)
{
    struct queue *q = t->q;
    for (struct op *op = q->ops_head; op && t->ops_live > 0; op = op->next) {
        if (op->txn == t) {
            op->txn = NULL;
            t->ops_live--;
        }
    }
    wait_remove(q, t);
    if (t->prev)
        t->prev->next = t->next;
    else
        q->txns = t->next;
    if (t->next)
        t->next->prev = t->prev;
    free_chunks(t);
    if (t->record)
        explicit_bzero(t->record, t->record_len);
    free(t->record);
    unsized_free(t);
    free(t);
}

static void txn_fail(struct queue_txn *t, const char *reason)
{
    if (t->failed)
        return;
    t->failed = true;
    snprintf(t->fail_reason, sizeof(t->fail_reason), "%s", reason);
    if (t->state == TXN_OPEN || t->state == TXN_COMMITTING)
        free_chunks(t);
}

/* txn_finish reports |r| (a copy) to the commit callback after freeing |t|. */
static void txn_finish(struct queue_txn *t, struct queue_commit_result *r)
{
    struct queue *q = t->q;
    void (*done)(void *, const struct queue_commit_result *) = t->done;
    void *arg = t->done_arg;
    bool detached = t->state == TXN_DETACHED;

    switch (r->status) {
    case QUEUE_COMMIT_ACCEPTED:
        q->st.accepted++;
        q->st.dups += r->dup;
        break;
    case QUEUE_COMMIT_CONFLICT:
        q->st.conflicts++;
        break;
    case QUEUE_COMMIT_TEMPFAIL:
        q->st.tempfails++;
        break;
    }
    txn_destroy(t);
    if (!detached && done != NULL)
        done(arg, r);
}

static void txn_finish_tempfail(struct queue_txn *t, const char *reason)
{
    struct queue_commit_result r = {.status = QUEUE_COMMIT_TEMPFAIL};
    snprintf(r.reason, sizeof(r.reason), "%s", reason);
    snprintf(r.qid, sizeof(r.qid), "%s", t->qid);
    txn_finish(t, &r);
}

static void maybe_writable(struct queue_txn *t)
{
    if (!t->want_writable || t->in_append || t->state != TXN_OPEN)
        return;
    if (!t->failed && t->ready_head != NULL)
        return;
    t->want_writable = false;
    if (t->writable_cb)
        t->writable_cb(t->writable_arg); /* may free t: nothing after this */
}

static int send_chunk(struct queue_txn *t, struct chunk *c)
{
    struct queue *q = t->q;
    char key[QUEUE_KEY_MAX];
    char ttl[24];
    const char *argv[3];
    size_t lens[3];
    struct op *op;
    int kl, rc;

    kl = queue_key_format(key, sizeof(key), q->prefix, t->shard, "body", t->qid, strlen(t->qid));
    if (kl < 0)
        return kl;
    op = op_new(q, OP_CHUNK, t);
    if (op == NULL)
        return -ENOMEM;
    op->bytes = c->len;
    argv[0] = "RPUSH";
    lens[0] = 5;
    argv[1] = key;
    lens[1] = (size_t)kl;
    argv[2] = (const char *)c->data;
    lens[2] = c->len;
    rc = q_send(q, op, 3, argv, lens, q->op_timeout_ms);
    if (rc < 0)
        return rc;
    t->chunks_sent++;
    t->chunks_outstanding++;
    t->bytes_outstanding += c->len;
    if (t->chunks_sent == 1) {
        /* Chunks of a transaction that never commits expire; the commit script PERSISTs. */
        snprintf(ttl, sizeof(ttl), "%u", q->body_ttl_ms);
        argv[0] = "PEXPIRE";
        lens[0] = 7;
        argv[2] = ttl;
        lens[2] = strlen(ttl);
        op = op_new(q, OP_EXPIRE, t);
        if (op == NULL)
            return -ENOMEM;
        rc = q_send(q, op, 3, argv, lens, q->op_timeout_ms);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int send_commit(struct queue_txn *t, bool use_eval)
{
    struct queue *q = t->q;
    enum { NKEYS = 5, NARGS = 9, ARGC = 3 + NKEYS + NARGS };
    const char *argv[ARGC];
    size_t lens[ARGC];
    char keys[NKEYS][QUEUE_KEY_MAX];
    char nk[16], rc_s[16], chunks_s[16], score_s[24], ttl_s[16], wn[16], wt[16];
    static const char *const kinds[NKEYS] = {"txn", "env", "body", "sched", "stats"};
    const char *names[NKEYS] = {t->txid, t->qid, t->qid, NULL, NULL};
    size_t fill_len = t->fill ? t->fill->len : 0;
    size_t a = 0;
    int rc;

    argv[a] = use_eval ? "EVAL" : "EVALSHA";
    lens[a] = strlen(argv[a]);
    a++;
    argv[a] = use_eval ? commit_lua : q->sha;
    lens[a] = use_eval ? sizeof(commit_lua) - 1 : strlen(q->sha);
    a++;
    snprintf(nk, sizeof(nk), "%d", NKEYS);
    argv[a] = nk;
    lens[a++] = strlen(nk);
    for (size_t i = 0; i < NKEYS; i++) {
        int kl = queue_key_format(keys[i], QUEUE_KEY_MAX, q->prefix, t->shard, kinds[i], names[i],
                                  names[i] ? strlen(names[i]) : 0);
        if (kl < 0)
            return kl;
        argv[a] = keys[i];
        lens[a++] = (size_t)kl;
    }
    snprintf(rc_s, sizeof(rc_s), "%u", t->n_rcpts);
    snprintf(chunks_s, sizeof(chunks_s), "%u", t->chunks_sent + (fill_len > 0 ? 1u : 0u));
    snprintf(score_s, sizeof(score_s), "%lld", (long long)wall_ms());
    snprintf(ttl_s, sizeof(ttl_s), "%u", q->dedup_ttl_ms);
    argv[a] = t->qid;
    lens[a++] = strlen(t->qid);
    argv[a] = (const char *)t->digest;
    lens[a++] = CMTP_DIGEST_LEN;
    argv[a] = t->from;
    lens[a++] = strlen(t->from);
    argv[a] = rc_s;
    lens[a++] = strlen(rc_s);
    argv[a] = (const char *)t->record;
    lens[a++] = t->record_len;
    argv[a] = fill_len ? (const char *)t->fill->data : "";
    lens[a++] = fill_len;
    argv[a] = chunks_s;
    lens[a++] = strlen(chunks_s);
    argv[a] = score_s;
    lens[a++] = strlen(score_s);
    argv[a] = ttl_s;
    lens[a++] = strlen(ttl_s);

    struct op *op = op_new(q, OP_COMMIT, t);
    if (op == NULL)
        return -ENOMEM;
    t->attempt++;
    t->used_eval = use_eval;
    t->result_set = false;
    t->wait_short = false;
    op->attempt = t->attempt;
    rc = q_send(q, op, ARGC, argv, lens, q->op_timeout_ms);
    if (rc < 0)
        return rc;
    t->commit_pending++;
    if (q->wait_replicas > 0) {
        snprintf(wn, sizeof(wn), "%u", q->wait_replicas);
        snprintf(wt, sizeof(wt), "%u", q->wait_timeout_ms);
        const char *wargv[3] = {"WAIT", wn, wt};
        size_t wlens[3] = {4, strlen(wn), strlen(wt)};
        op = op_new(q, OP_WAIT, t);
        if (op == NULL ||
            q_send(q, op, 3, wargv, wlens, q->op_timeout_ms + q->wait_timeout_ms) < 0) {
            /* The script is on its way; without WAIT the accept cannot be reported. */
            t->wait_short = true;
        } else {
            op->attempt = t->attempt;
            t->commit_pending++;
        }
    }
    return 0;
}

/* txn_pump sends what |t| may send now: ready chunks within the per-transaction and worker
 * limits, then (when committing and no chunk is left unsent) the commit. Returns 0 or -errno
 * (|t| is then failed). Calls no user callback. */
static int txn_pump(struct queue_txn *t)
{
    struct queue *q = t->q;
    int rc;

    if (t->failed)
        return -EIO;
    while (t->ready_head != NULL && t->chunks_outstanding < QUEUE_TXN_CHUNKS_INFLIGHT) {
        if (q->rc.state != QUEUE_CONNECTED) {
            txn_fail(t, q->rc.last_error[0] ? q->rc.last_error : "redis not connected");
            return -ENOTCONN;
        }
        if (!q_room(q, t->chunks_sent == 0 ? 2 : 1)) {
            wait_add(q, t);
            return 0;
        }
        struct chunk *c = t->ready_head;
        rc = send_chunk(t, c);
        if (rc < 0) {
            txn_fail(t, "redis write failed");
            return rc;
        }
        t->ready_head = c->next;
        if (t->ready_head == NULL)
            t->ready_tail = NULL;
        t->n_ready--;
        chunk_free(c);
    }
    if (t->state == TXN_COMMITTING && t->ready_head == NULL) {
        if (q->rc.state != QUEUE_CONNECTED) {
            txn_fail(t, q->rc.last_error[0] ? q->rc.last_error : "redis not connected");
            return -ENOTCONN;
        }
        if (!q_room(q, q->wait_replicas > 0 ? 2 : 1)) {
            wait_add(q, t);
            return 0;
        }
        rc = send_commit(t, false);
        if (rc < 0) {
            txn_fail(t, "redis write failed");
            return rc;
        }
        t->state = TXN_SENT;
    }
    return 0;
}

/* txn_kick pumps |t| from loop context and reports what changed (may free |t|). */
static void txn_kick(struct queue_txn *t)
{
    txn_pump(t);
    if (t->state == TXN_COMMITTING && t->failed) {
        txn_finish_tempfail(t, t->fail_reason);
        return;
    }
    maybe_writable(t);
}

/* check_dests checks that every recipient of |rcpts| has a destination (its next hop or its
 * domain) of 1..CMTP_DOMAIN_MAX octets. */
static int check_dests(const struct queue_rcpt *rcpts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *d = rcpts[i].next_hop[0] ? rcpts[i].next_hop : rcpts[i].addr.domain;
        if (d[0] == '\0' || strnlen(d, CMTP_DOMAIN_MAX + 1) > CMTP_DOMAIN_MAX)
            return -EINVAL;
    }
    return 0;
}

/* txn_begin is queue_txn_begin; with |unsized_max| > 0 the body's size and digest are not known
 * yet: up to |unsized_max| octets are taken and the record is encoded at the commit. */
static struct queue_txn *txn_begin(struct queue *q, const struct cmtp_envelope *env,
                                   const struct queue_rcpt *rcpts, size_t n_rcpts,
                                   const struct queue_txn_meta *meta, uint64_t unsized_max)
{
    struct queue_txn *t = NULL;
    size_t txid_len;
    int rc;

    if (q == NULL || env == NULL || rcpts == NULL || meta == NULL || n_rcpts == 0 ||
        n_rcpts > CMTP_RCPT_MAX_HARD) {
        errno = EINVAL;
        return NULL;
    }
    if (q->rc.state != QUEUE_CONNECTED) {
        queue_conn_kick(&q->rc);
        errno = ENOTCONN;
        return NULL;
    }
    txid_len = strnlen(env->txid, CMTP_TXID_MAX + 1);
    if (txid_len == 0 || txid_len > CMTP_TXID_MAX || unsized_max > CMTP_SIZE_MAX_HARD ||
        (unsized_max == 0 && (env->size == 0 || env->size > CMTP_SIZE_MAX_HARD))) {
        errno = EINVAL;
        return NULL;
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    t->q = q;
    t->state = TXN_OPEN;
    t->shard = queue_txid_shard(env->txid, txid_len, q->shards);
    make_qid(q, t->shard, t->qid, sizeof(t->qid));
    memcpy(t->txid, env->txid, txid_len + 1);
    memcpy(t->digest, env->digest, CMTP_DIGEST_LEN);
    t->size = env->size;
    t->n_rcpts = (unsigned)n_rcpts;
    if (!env->from.is_null)
        snprintf(t->from, sizeof(t->from), "%.*s@%.*s", CMTP_LOCAL_MAX, env->from.local,
                 CMTP_DOMAIN_MAX, env->from.domain);
    rc = check_dests(rcpts, n_rcpts);
    if (rc < 0)
        goto err;
    if (unsized_max > 0) {
        t->size = unsized_max;
        t->u_env = malloc(sizeof(*t->u_env));
        t->u_rcpts = malloc(n_rcpts * sizeof(*t->u_rcpts));
        t->u_meta = malloc(sizeof(*t->u_meta));
        if (t->u_env == NULL || t->u_rcpts == NULL || t->u_meta == NULL) {
            rc = -ENOMEM;
            goto err;
        }
        *t->u_env = *env;
        memcpy(t->u_rcpts, rcpts, n_rcpts * sizeof(*t->u_rcpts));
        t->u_n = n_rcpts;
        *t->u_meta = *meta;
        goto linked;
    }
    struct queue_record_in in = {
        .qid = t->qid,
        .node = q->node,
        .created_ms = 0, /* set at commit */
        .attempts = 0,
        .env = env,
        .meta = meta,
        .rcpts = rcpts,
        .n_rcpts = n_rcpts,
    };
    rc = queue_record_encode(&in, &t->record, &t->record_len);
    if (rc < 0)
        goto err;
linked:
    t->next = q->txns;
    if (q->txns)
        q->txns->prev = t;
    q->txns = t;
    return t;
err:
    unsized_free(t);
    free(t);
    errno = -rc;
    return NULL;
}

struct queue_txn *queue_txn_begin(struct queue *q, const struct cmtp_envelope *env,
                                  const struct queue_rcpt *rcpts, size_t n_rcpts,
                                  const struct queue_txn_meta *meta)
{
    return txn_begin(q, env, rcpts, n_rcpts, meta, 0);
}

struct queue_txn *queue_txn_begin_unsized(struct queue *q, const struct cmtp_envelope *env,
                                          const struct queue_rcpt *rcpts, size_t n_rcpts,
                                          const struct queue_txn_meta *meta, uint64_t size_max)
{
    if (size_max == 0) {
        errno = EINVAL;
        return NULL;
    }
    return txn_begin(q, env, rcpts, n_rcpts, meta, size_max);
}

const char *queue_txn_qid(const struct queue_txn *t)
{
    return t->qid;
}

unsigned queue_txn_shard(const struct queue_txn *t)
{
    return t->shard;
}

void queue_txn_set_writable_cb(struct queue_txn *t, void (*cb)(void *arg), void *arg)
{
    t->writable_cb = cb;
    t->writable_arg = arg;
}

size_t queue_txn_buffered(const struct queue_txn *t)
{
    size_t n = t->bytes_outstanding + (t->fill ? t->q->chunk_size : 0);
    n += (size_t)t->n_ready * t->q->chunk_size;
    return n;
}

enum queue_res queue_txn_append(struct queue_txn *t, const uint8_t *data, size_t len)
{
    struct queue *q = t->q;

    if (t->state != TXN_OPEN || t->failed)
        return QUEUE_TEMPFAIL;
    if (len > t->size - t->bytes_appended) {
        txn_fail(t, "body longer than its declared size");
        return QUEUE_TEMPFAIL;
    }
    t->in_append = true;
    while (len > 0) {
        if (t->fill == NULL) {
            if (t->n_ready >= QUEUE_TXN_READY_MAX) {
                txn_fail(t, "backpressure ignored");
                break;
            }
            t->fill = malloc(sizeof(struct chunk) + q->chunk_size);
            if (t->fill == NULL) {
                txn_fail(t, "out of memory");
                break;
            }
            t->fill->next = NULL;
            t->fill->len = 0;
        }
        size_t n = q->chunk_size - t->fill->len;
        if (n > len)
            n = len;
        memcpy(t->fill->data + t->fill->len, data, n);
        t->fill->len += n;
        t->bytes_appended += n;
        data += n;
        len -= n;
        if (t->fill->len == q->chunk_size) {
            if (t->ready_tail)
                t->ready_tail->next = t->fill;
            else
                t->ready_head = t->fill;
            t->ready_tail = t->fill;
            t->n_ready++;
            t->fill = NULL;
        }
    }
    if (!t->failed)
        txn_pump(t);
    t->in_append = false;
    if (t->failed)
        return QUEUE_TEMPFAIL;
    if (t->ready_head != NULL) {
        t->want_writable = true;
        return QUEUE_AGAIN;
    }
    return QUEUE_OK;
}

int queue_txn_commit(struct queue_txn *t, const uint8_t digest[CMTP_DIGEST_LEN],
                     void (*done)(void *arg, const struct queue_commit_result *r), void *arg)
{
    struct queue *q = t->q;
    int rc;

    if (t->state != TXN_OPEN || done == NULL || t->u_env != NULL)
        return -EINVAL;
    if (t->failed)
        return -EIO;
    if (memcmp(digest, t->digest, CMTP_DIGEST_LEN) != 0 || t->bytes_appended != t->size)
        return -EINVAL;
    if (q->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    /* The record is encoded at begin; its created time is the commit time. */
    queue_record_set_created(t->record, t->record_len, wall_ms());
    t->want_writable = false;
    t->done = done;
    t->done_arg = arg;
    t->state = TXN_COMMITTING;
    rc = txn_pump(t);
    if (rc < 0) {
        t->state = TXN_OPEN;
        t->done = NULL;
        return -EIO;
    }
    return 0;
}

int queue_txn_commit_unsized(struct queue_txn *t, uint64_t size,
                             const uint8_t digest[CMTP_DIGEST_LEN],
                             const struct cmtp_policy *policy,
                             void (*done)(void *arg, const struct queue_commit_result *r),
                             void *arg)
{
    if (t->u_env == NULL || t->state != TXN_OPEN || done == NULL)
        return -EINVAL;
    if (t->failed)
        return -EIO;
    if (size == 0 || size != t->bytes_appended)
        return -EINVAL;
    t->u_env->size = size;
    memcpy(t->u_env->digest, digest, CMTP_DIGEST_LEN);
    if (policy != NULL)
        t->u_env->policy = *policy;
    struct queue_record_in in = {
        .qid = t->qid,
        .node = t->q->node,
        .created_ms = 0, /* set by queue_txn_commit */
        .attempts = 0,
        .env = t->u_env,
        .meta = t->u_meta,
        .rcpts = t->u_rcpts,
        .n_rcpts = t->u_n,
    };
    int rc = queue_record_encode(&in, &t->record, &t->record_len);
    if (rc < 0)
        return rc;
    unsized_free(t);
    t->size = size;
    memcpy(t->digest, digest, CMTP_DIGEST_LEN);
    return queue_txn_commit(t, digest, done, arg);
}

void queue_txn_abort(struct queue_txn *t)
{
    struct queue *q;
    char key[QUEUE_KEY_MAX];

    if (t == NULL)
        return;
    q = t->q;
    if (t->state == TXN_SENT || t->state == TXN_DETACHED) {
        t->state = TXN_DETACHED;
        t->done = NULL;
        t->writable_cb = NULL;
        return;
    }
    if (t->chunks_sent > 0 && q->rc.state == QUEUE_CONNECTED) {
        /* Pipelined after the chunk writes, so it runs after them. Best effort: the chunks
         * expire anyway (body_ttl_ms). */
        int kl =
            queue_key_format(key, sizeof(key), q->prefix, t->shard, "body", t->qid, strlen(t->qid));
        struct op *op = kl > 0 ? op_new(q, OP_UNLINK, NULL) : NULL;
        if (op != NULL) {
            const char *argv[2] = {"UNLINK", key};
            size_t lens[2] = {6, (size_t)kl};
            q_send(q, op, 2, argv, lens, q->op_timeout_ms);
        }
    }
    txn_destroy(t);
}

/* ---- replies ---- */

static void reply_text(const redisReply *r, char *out, size_t cap)
{
    size_t n = r->len < cap - 1 ? r->len : cap - 1;
    memcpy(out, r->str, n);
    out[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)out[i] < 0x20 || (unsigned char)out[i] == 0x7f)
            out[i] = '?';
}

static bool reply_is_str(const redisReply *r)
{
    return r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS;
}

static void commit_maybe_finish(struct queue_txn *t)
{
    if (t->commit_pending > 0 || !t->result_set)
        return;
    if (t->result.status == QUEUE_COMMIT_ACCEPTED && t->wait_short) {
        struct queue_commit_result r = {.status = QUEUE_COMMIT_TEMPFAIL};
        snprintf(r.qid, sizeof(r.qid), "%s", t->result.qid);
        snprintf(r.reason, sizeof(r.reason), "redis WAIT: %lld of %u replicas acknowledged",
                 t->wait_acks, t->q->wait_replicas);
        txn_finish(t, &r);
        return;
    }
    struct queue_commit_result r = t->result;
    txn_finish(t, &r);
}

static void on_commit_reply(struct queue_txn *t, const struct op *op, const redisReply *reply,
                            const char *lost)
{
    struct queue_commit_result *r = &t->result;

    t->commit_pending--;
    if (op->attempt != t->attempt) {
        commit_maybe_finish(t);
        return;
    }
    memset(r, 0, sizeof(*r));
    snprintf(r->qid, sizeof(r->qid), "%s", t->qid);
    r->status = QUEUE_COMMIT_TEMPFAIL;
    t->result_set = true;
    if (reply == NULL) {
        snprintf(r->reason, sizeof(r->reason), "%s", lost);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        if (!t->used_eval && strncmp(reply->str, "NOSCRIPT", 8) == 0 && t->state == TXN_SENT &&
            !t->failed && t->q->rc.state == QUEUE_CONNECTED) {
            /* Script cache flushed (restart, failover): send the source once; EVAL caches it. */
            t->result_set = false;
            if (send_commit(t, true) == 0)
                return;
            t->result_set = true;
            snprintf(r->reason, sizeof(r->reason), "redis write failed");
        } else {
            reply_text(reply, r->reason, sizeof(r->reason));
        }
    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
               reply_is_str(reply->element[0]) && reply_is_str(reply->element[1]) &&
               reply->element[1]->len > 0 && reply->element[1]->len <= CMTP_QID_MAX) {
        const redisReply *st = reply->element[0], *id = reply->element[1], *n = reply->element[2];
        unsigned long long rc = 0;
        if (reply_is_str(n))
            rc = strtoull(n->str, NULL, 10);
        else if (n->type == REDIS_REPLY_INTEGER && n->integer >= 0)
            rc = (unsigned long long)n->integer;
        memcpy(r->qid, id->str, id->len);
        r->qid[id->len] = '\0';
        r->rcpts = rc > CMTP_RCPT_MAX_HARD ? CMTP_RCPT_MAX_HARD : (unsigned)rc;
        if (st->len == 2 && memcmp(st->str, "ok", 2) == 0) {
            r->status = QUEUE_COMMIT_ACCEPTED;
            stats_add(t->q, t->shard, 1, t->size);
        } else if (st->len == 3 && memcmp(st->str, "dup", 3) == 0) {
            r->status = QUEUE_COMMIT_ACCEPTED;
            r->dup = true;
        } else if (st->len == 8 && memcmp(st->str, "conflict", 8) == 0) {
            r->status = QUEUE_COMMIT_CONFLICT;
        } else {
            snprintf(r->qid, sizeof(r->qid), "%s", t->qid);
            r->rcpts = 0;
            snprintf(r->reason, sizeof(r->reason), "unexpected commit reply");
        }
    } else {
        snprintf(r->reason, sizeof(r->reason), "unexpected commit reply");
    }
    commit_maybe_finish(t);
}

static void on_wait_reply(struct queue_txn *t, const struct op *op, const redisReply *reply)
{
    t->commit_pending--;
    if (op->attempt == t->attempt) {
        if (reply != NULL && reply->type == REDIS_REPLY_INTEGER) {
            t->wait_acks = reply->integer;
            if (reply->integer < (long long)t->q->wait_replicas)
                t->wait_short = true;
        } else {
            t->wait_acks = 0;
            t->wait_short = true;
        }
    }
    commit_maybe_finish(t);
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct op *op = priv;
    struct queue *q = op->q;
    redisReply *reply = r;
    struct queue_txn *t = op->txn;
    char lost[QUEUE_REASON_MAX] = "";
    char text[QUEUE_REASON_MAX] = "";

    op_unlink(q, op);
    if (t != NULL)
        t->ops_live--;
    if (q->rc.freeing) {
        free(op);
        return;
    }
    if (reply == NULL) {
        q->st.dropped++;
        if (ac->err)
            set_error(q, "redis connection lost", ac->errstr);
        snprintf(lost, sizeof(lost), "%s",
                 q->rc.last_error[0] ? q->rc.last_error : "redis connection lost");
        if (q->rc.ac == ac)
            q->rc.state = QUEUE_DOWN; /* the context is going away: fail fast from now on */
    } else {
        uint64_t us = mono_us() - op->sent_us;
        q->st.replies++;
        q->st.latency_us_sum += us;
        if (us > q->st.latency_us_max)
            q->st.latency_us_max = us;
        if (reply->type == REDIS_REPLY_ERROR) {
            q->st.errors++;
            reply_text(reply, text, sizeof(text));
        }
    }

    switch (op->kind) {
    case OP_AUTH:
        if (reply != NULL && reply->type == REDIS_REPLY_ERROR)
            queue_conn_reset_soon(&q->rc, "redis AUTH refused", text);
        break;
    case OP_SCRIPT_LOAD:
        if (reply == NULL || q->rc.ac != ac || q->rc.state != QUEUE_CONNECTING)
            break; /* connection gone or a reset already pending */
        if (reply->type == REDIS_REPLY_STRING && reply->len == 40) {
            memcpy(q->sha, reply->str, 40);
            q->sha[40] = '\0';
            queue_conn_ready(&q->rc);
        } else {
            queue_conn_reset_soon(&q->rc, "redis SCRIPT LOAD failed",
                                  reply->type == REDIS_REPLY_ERROR ? text : "unexpected reply");
        }
        break;
    case OP_CHUNK:
    case OP_EXPIRE:
        if (t == NULL)
            break;
        if (op->kind == OP_CHUNK) {
            t->chunks_outstanding--;
            t->bytes_outstanding -= op->bytes;
        }
        if (reply == NULL)
            txn_fail(t, lost);
        else if (reply->type == REDIS_REPLY_ERROR)
            txn_fail(t, text);
        if (t->state == TXN_SENT || t->state == TXN_DETACHED)
            break; /* the commit reply decides */
        txn_kick(t);
        break;
    case OP_COMMIT:
        if (t != NULL)
            on_commit_reply(t, op, reply, lost);
        break;
    case OP_WAIT:
        if (t != NULL)
            on_wait_reply(t, op, reply);
        break;
    case OP_UNLINK:
        break;
    case OP_STATS:
        if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
            stats_add(q, op->shard, op->n_acc, op->n_bytes); /* counted again later */
        break;
    case OP_GET:
        if (reply == NULL)
            op->read_cb(op->read_arg, -EIO, NULL, 0);
        else if (reply->type == REDIS_REPLY_STRING)
            op->read_cb(op->read_arg, 0, (const uint8_t *)reply->str, reply->len);
        else if (reply->type == REDIS_REPLY_NIL)
            op->read_cb(op->read_arg, -ENOENT, NULL, 0);
        else
            op->read_cb(op->read_arg, -EIO, NULL, 0);
        break;
    }
    free(op);
    if (q->rc.state == QUEUE_CONNECTED)
        wake_waiters(q);
}

/* ---- reads ---- */

static int q_read(struct queue *q, const char *qid, const char *kind, bool lindex, uint32_t index,
                  void (*cb)(void *arg, int err, const uint8_t *data, size_t len), void *arg)
{
    char key[QUEUE_KEY_MAX];
    char idx[16];
    unsigned shard;
    const char *argv[3];
    size_t lens[3];
    struct op *op;
    int kl;

    if (q == NULL || cb == NULL || queue_qid_shard(qid, &shard) < 0 || shard >= q->shards)
        return -EINVAL;
    if (q->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    if (!q_room(q, 1))
        return -EAGAIN;
    kl = queue_key_format(key, sizeof(key), q->prefix, shard, kind, qid, strlen(qid));
    if (kl < 0)
        return kl;
    op = op_new(q, OP_GET, NULL);
    if (op == NULL)
        return -ENOMEM;
    op->read_cb = cb;
    op->read_arg = arg;
    argv[0] = lindex ? "LINDEX" : "GET";
    lens[0] = strlen(argv[0]);
    argv[1] = key;
    lens[1] = (size_t)kl;
    snprintf(idx, sizeof(idx), "%u", index);
    argv[2] = idx;
    lens[2] = strlen(idx);
    return q_send(q, op, lindex ? 3 : 2, argv, lens, q->op_timeout_ms);
}

int queue_get_envelope(struct queue *q, const char *qid,
                       void (*cb)(void *arg, int err, const uint8_t *data, size_t len), void *arg)
{
    return q_read(q, qid, "env", false, 0, cb, arg);
}

int queue_get_body_chunk(struct queue *q, const char *qid, uint32_t index,
                         void (*cb)(void *arg, int err, const uint8_t *data, size_t len), void *arg)
{
    return q_read(q, qid, "body", true, index, cb, arg);
}

/* ---- lifecycle ---- */

struct queue *queue_new(const struct queue_config *cfg, const struct queue_loop *loop, char *err,
                        size_t errlen)
{
    struct queue *q = NULL;
    char dummy[1];

    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    if (cfg == NULL || loop == NULL || loop->ops == NULL) {
        snprintf(err, errlen, "missing configuration or loop");
        return NULL;
    }
    q = calloc(1, sizeof(*q));
    if (q == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    q->loop = *loop;
    const char *prefix = cfg->key_prefix ? cfg->key_prefix : QUEUE_PREFIX_DEFAULT;
    if (!queue_conn_name_ok(prefix, QUEUE_PREFIX_MAX)) {
        snprintf(err, errlen, "bad key prefix (1..%d of [A-Za-z0-9._:-])", QUEUE_PREFIX_MAX);
        goto err;
    }
    snprintf(q->prefix, sizeof(q->prefix), "%s", prefix);
    const char *node = cfg->node_id ? cfg->node_id : "node";
    if (!queue_conn_name_ok(node, QUEUE_NODE_MAX)) {
        snprintf(err, errlen, "bad node id (1..%d of [A-Za-z0-9._:-])", QUEUE_NODE_MAX);
        goto err;
    }
    snprintf(q->node, sizeof(q->node), "%s", node);
    q->shards = cfg->shards ? cfg->shards : QUEUE_SHARDS_DEFAULT;
    q->inflight_max = cfg->inflight_max ? cfg->inflight_max : QUEUE_INFLIGHT_DEFAULT;
    q->chunk_size = cfg->chunk_size ? cfg->chunk_size : QUEUE_CHUNK_SIZE_DEFAULT;
    q->wait_replicas = cfg->wait_replicas;
    q->wait_timeout_ms =
        cfg->wait_timeout_ms ? cfg->wait_timeout_ms : QUEUE_WAIT_TIMEOUT_MS_DEFAULT;
    q->op_timeout_ms = cfg->op_timeout_ms ? cfg->op_timeout_ms : QUEUE_OP_TIMEOUT_MS_DEFAULT;
    uint32_t rmin = cfg->reconnect_min_ms ? cfg->reconnect_min_ms : QUEUE_RECONNECT_MIN_MS_DEFAULT;
    uint32_t rmax = cfg->reconnect_max_ms ? cfg->reconnect_max_ms : QUEUE_RECONNECT_MAX_MS_DEFAULT;
    q->dedup_ttl_ms = cfg->dedup_ttl_ms ? cfg->dedup_ttl_ms : QUEUE_DEDUP_TTL_MS_DEFAULT;
    q->body_ttl_ms = cfg->body_ttl_ms ? cfg->body_ttl_ms : QUEUE_BODY_TTL_MS_DEFAULT;
    if (q->shards > QUEUE_SHARDS_MAX || q->inflight_max > QUEUE_INFLIGHT_MAX ||
        q->inflight_max < 4 || q->chunk_size < QUEUE_CHUNK_SIZE_MIN ||
        q->chunk_size > QUEUE_CHUNK_SIZE_MAX || rmin > rmax || q->wait_replicas > 64) {
        snprintf(err, errlen, "queue limits out of range");
        goto err;
    }
    q->pend_acc = calloc(q->shards, sizeof(*q->pend_acc));
    q->pend_bytes = calloc(q->shards, sizeof(*q->pend_bytes));
    if (q->pend_acc == NULL || q->pend_bytes == NULL)
        goto nomem;
    if (getrandom(&q->rng, sizeof(q->rng), 0) != (ssize_t)sizeof(q->rng))
        q->rng = (uint64_t)wall_ms() ^ (uint64_t)(uintptr_t)q ^ mono_us() << 20;
    if (queue_conn_init(&q->rc, &q->loop, &q_conn_ops, q, cfg->address, cfg->username,
                        cfg->password, q->op_timeout_ms, rmin, rmax, rng_next(q), err, errlen) < 0)
        goto err;
    queue_conn_start(&q->rc);
    return q;
nomem:
    snprintf(err, errlen, "out of memory");
err:
    free(q->pend_acc);
    free(q->pend_bytes);
    free(q);
    return NULL;
}

void queue_free(struct queue *q)
{
    if (q == NULL)
        return;
    if (q->stats_timer)
        q->loop.ops->timer_cancel(q->loop.loop, q->stats_timer);
    q->stats_timer = NULL;
    queue_conn_free(&q->rc); /* outstanding ops end in on_reply while freeing */
    while (q->txns)
        txn_destroy(q->txns);
    free(q->pend_acc);
    free(q->pend_bytes);
    free(q);
}

enum queue_conn_state queue_state(const struct queue *q, const char **last_error)
{
    if (last_error)
        *last_error = q->rc.last_error;
    return q->rc.state;
}

void queue_get_stats(const struct queue *q, struct queue_stats *out)
{
    *out = q->st;
    out->connects = q->rc.connects;
    out->disconnects = q->rc.disconnects;
    out->timeouts = q->rc.timeouts;
    out->inflight = q->inflight;
    out->obuf_bytes = q->rc.ac ? sdslen(q->rc.ac->c.obuf) : 0;
}
