/* tests/unit/test_queue_ingest.c — the ingest path against a real private redis-server: commit
 * and byte-exact read-back, chunked bodies with bounded memory, dedup, conflict, backpressure,
 * abort, key layout. Faults (Redis killed, slow, refusing) are in test_queue_faults.c. */
#include "tests/unit/helpers/queue_fixture.h"

static struct qfix fx;

static int group_setup(void **state)
{
    (void)state;
    return qfix_setup(&fx, NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    qfix_teardown(&fx);
    return 0;
}

/* read_body concatenates the body list of |qid| through the sync API. */
static uint8_t *read_body(unsigned shard, const char *qid, size_t *len, size_t *chunks)
{
    char key[QUEUE_KEY_MAX];
    const char *argv[] = {"LRANGE", qfix_key(key, sizeof(key), shard, "body", qid), "0", "-1"};
    redisReply *r = qfix_cmd(&fx, 4, argv);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    size_t total = 0;
    for (size_t i = 0; i < r->elements; i++)
        total += r->element[i]->len;
    uint8_t *b = malloc(total + 1);
    size_t off = 0;
    for (size_t i = 0; i < r->elements; i++) {
        memcpy(b + off, r->element[i]->str, r->element[i]->len);
        off += r->element[i]->len;
    }
    *len = total;
    *chunks = r->elements;
    freeReplyObject(r);
    return b;
}

static void check_stored(const struct qmsg *m, const char *qid, size_t chunk_size)
{
    unsigned shard;
    char key[QUEUE_KEY_MAX];
    size_t len, chunks;

    assert_int_equal(queue_qid_shard(qid, &shard), 0);
    assert_int_equal(shard, queue_txid_shard(m->env.txid, strlen(m->env.txid), 16));
    uint8_t *b = read_body(shard, qid, &len, &chunks);
    assert_int_equal(len, m->len);
    assert_memory_equal(b, m->body, m->len);
    assert_int_equal(chunks, (m->len + chunk_size - 1) / chunk_size);
    free(b);
    /* Accepted bodies never expire (the chunks' orphan expiry was removed by the commit). */
    const char *pttl[] = {"PTTL", qfix_key(key, sizeof(key), shard, "body", qid)};
    assert_int_equal(qfix_int(&fx, 2, pttl), -1);

    const char *get[] = {"GET", qfix_key(key, sizeof(key), shard, "env", qid)};
    redisReply *r = qfix_cmd(&fx, 2, get);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    struct queue_record *rec = malloc(sizeof(*rec));
    assert_int_equal(queue_record_decode(rec, (const uint8_t *)r->str, r->len), QUEUE_RECORD_OK);
    freeReplyObject(r);
    assert_string_equal(rec->qid, qid);
    assert_string_equal(rec->node, "test-node:w0");
    assert_string_equal(rec->env.txid, m->env.txid);
    assert_string_equal(rec->env.from.local, "sender");
    assert_true(rec->env.size == m->len);
    assert_memory_equal(rec->env.digest, m->env.digest, CMTP_DIGEST_LEN);
    assert_int_equal(rec->n_rcpts, m->n_rcpts);
    assert_string_equal(rec->rcpts[1].next_hop, "mx.other.example");
    assert_int_equal(rec->rcpts[1].role, CMTP_ROLE_RELAY);
    assert_int_equal(rec->rcpts[0].status, QUEUE_RCPT_PENDING);
    assert_string_equal(rec->meta.peer_ip, "192.0.2.7");
    assert_true(rec->created_ms > 1700000000000);
    queue_record_cleanup(rec);
    free(rec);
}

struct read_res {
    bool done;
    int err;
    uint8_t *data;
    size_t len;
};

static void read_cb(void *arg, int err, const uint8_t *data, size_t len)
{
    struct read_res *r = arg;
    r->done = true;
    r->err = err;
    if (data) {
        r->data = malloc(len + 1);
        memcpy(r->data, data, len);
        r->len = len;
    }
}

static bool read_done(void *arg)
{
    return ((struct read_res *)arg)->done;
}

static void test_commit_small(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c;
    char qid[CMTP_QID_MAX + 1], key[QUEUE_KEY_MAX];

    qfix_config(&fx, &cfg);
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 1024, NULL);
    struct queue_stats st0, st1;
    queue_get_stats(q, &st0);
    qfix_send(&fx, q, m, 1024, &c, qid, sizeof(qid));
    assert_int_equal(c.r.status, QUEUE_COMMIT_ACCEPTED);
    assert_false(c.r.dup);
    assert_string_equal(c.r.qid, qid);
    assert_int_equal(c.r.rcpts, 2);
    /* One round trip: the whole 1 KiB body went with the commit script. */
    queue_get_stats(q, &st1);
    assert_int_equal(st1.cmds_sent - st0.cmds_sent, 1);
    assert_int_equal(st1.accepted, 1);
    check_stored(m, qid, QUEUE_CHUNK_SIZE_DEFAULT);

    unsigned shard;
    queue_qid_shard(qid, &shard);
    /* Scheduled, dedup key with expiry, body persisted; nothing per destination (the consumer
     * splits the message into work items). */
    const char *zs[] = {"ZSCORE", qfix_key(key, sizeof(key), shard, "sched", NULL), qid};
    redisReply *r = qfix_cmd(&fx, 3, zs);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    freeReplyObject(r);
    const char *dq[] = {"EXISTS", qfix_key(key, sizeof(key), shard, "dq", "dest.example")};
    assert_int_equal(qfix_int(&fx, 2, dq), 0);
    const char *ttl[] = {"PTTL", qfix_key(key, sizeof(key), shard, "txn", m->env.txid)};
    long long pttl = qfix_int(&fx, 2, ttl);
    assert_true(pttl > 6LL * 24 * 3600 * 1000 && pttl <= 7LL * 24 * 3600 * 1000);
    const char *bttl[] = {"PTTL", qfix_key(key, sizeof(key), shard, "body", qid)};
    assert_int_equal(qfix_int(&fx, 2, bttl), -1);
    /* The fleet-wide counters are added in a batch, within QUEUE_STATS_FLUSH_MS: one HINCRBY
     * per counter. */
    const char *hg[] = {"HGET", qfix_key(key, sizeof(key), shard, "stats", NULL), "accepted"};
    r = qfix_cmd(&fx, 3, hg);
    assert_int_equal(r->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    poll_loop_run_for(fx.pl, QUEUE_STATS_FLUSH_MS + 300);
    queue_get_stats(q, &st0);
    assert_int_equal(st0.cmds_sent - st1.cmds_sent, 2);
    r = qfix_cmd(&fx, 3, hg);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "1");
    freeReplyObject(r);
    const char *hb[] = {"HGET", qfix_key(key, sizeof(key), shard, "stats", NULL), "bytes"};
    r = qfix_cmd(&fx, 3, hb);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "1024");
    freeReplyObject(r);

    /* The async read helpers. */
    struct read_res rr = {0};
    assert_int_equal(queue_get_envelope(q, qid, read_cb, &rr), 0);
    assert_true(poll_loop_run_until(fx.pl, read_done, &rr, 2000));
    assert_int_equal(rr.err, 0);
    struct queue_record *rec = malloc(sizeof(*rec));
    assert_int_equal(queue_record_decode(rec, rr.data, rr.len), QUEUE_RECORD_OK);
    assert_string_equal(rec->env.txid, m->env.txid);
    queue_record_cleanup(rec);
    free(rec);
    free(rr.data);
    memset(&rr, 0, sizeof(rr));
    assert_int_equal(queue_get_body_chunk(q, qid, 0, read_cb, &rr), 0);
    assert_true(poll_loop_run_until(fx.pl, read_done, &rr, 2000));
    assert_int_equal(rr.err, 0);
    assert_int_equal(rr.len, m->len);
    assert_memory_equal(rr.data, m->body, m->len);
    free(rr.data);
    memset(&rr, 0, sizeof(rr));
    assert_int_equal(queue_get_body_chunk(q, qid, 1, read_cb, &rr), 0);
    assert_true(poll_loop_run_until(fx.pl, read_done, &rr, 2000));
    assert_int_equal(rr.err, -ENOENT);
    memset(&rr, 0, sizeof(rr));
    assert_int_equal(queue_get_envelope(q, "0000000000AAAAAAAAAAAA-3", read_cb, &rr), 0);
    assert_true(poll_loop_run_until(fx.pl, read_done, &rr, 2000));
    assert_int_equal(rr.err, -ENOENT);
    assert_int_equal(queue_get_envelope(q, "no-shard-suffix-x", read_cb, &rr), -EINVAL);

    qmsg_free(m);
    queue_free(q);
}

static void test_commit_5mib_bounded(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c = {0};
    const size_t chunk = 256 * 1024, piece = 16 * 1024;
    unsigned agains = 0;
    size_t max_buf = 0;

    qfix_config(&fx, &cfg);
    cfg.chunk_size = chunk;
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 5 * 1024 * 1024 + 123, NULL);
    struct queue_txn *t = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
    assert_non_null(t);
    char qid[CMTP_QID_MAX + 1];
    snprintf(qid, sizeof(qid), "%s", queue_txn_qid(t));
    assert_int_equal(qfix_append(&fx, t, m, piece, &agains, &max_buf), QUEUE_OK);
    /* Backpressure happened (the loop never ran between appends otherwise), and the transaction
     * never held more than (in-flight chunks + the one filling) plus one append. */
    print_message("5 MiB: %u AGAINs, at most %zu octets held\n", agains, max_buf);
    assert_true(agains > 0);
    assert_true(max_buf <= (QUEUE_TXN_CHUNKS_INFLIGHT + 1) * chunk + piece);
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_true(st.obuf_bytes <= (QUEUE_TXN_CHUNKS_INFLIGHT + 1) * chunk);
    assert_int_equal(queue_txn_commit(t, m->env.digest, qcommit_cb, &c), 0);
    assert_true(poll_loop_run_until(fx.pl, qcommit_done, &c, 10000));
    assert_int_equal(c.r.status, QUEUE_COMMIT_ACCEPTED);
    assert_string_equal(c.r.qid, qid);
    check_stored(m, qid, chunk);
    qmsg_free(m);
    queue_free(q);
}

static void test_exact_multiple_of_chunk(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c;
    char qid[CMTP_QID_MAX + 1];

    qfix_config(&fx, &cfg);
    cfg.chunk_size = 4096;
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 3 * 4096, NULL); /* last chunk empty: nothing inline */
    qfix_send(&fx, q, m, 1000, &c, qid, sizeof(qid));
    assert_int_equal(c.r.status, QUEUE_COMMIT_ACCEPTED);
    check_stored(m, qid, 4096);
    qmsg_free(m);
    queue_free(q);
}

static long long count_keys(const char *pattern)
{
    long long n = 0;
    char cursor[32] = "0";
    do {
        const char *argv[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"};
        redisReply *r = qfix_cmd(&fx, 6, argv);
        assert_int_equal(r->type, REDIS_REPLY_ARRAY);
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        n += (long long)r->element[1]->elements;
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return n;
}

static void test_dedup(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c1, c2;
    char qid1[CMTP_QID_MAX + 1], qid2[CMTP_QID_MAX + 1], key[QUEUE_KEY_MAX];

    qfix_config(&fx, &cfg);
    cfg.chunk_size = 4096;
    struct queue *q = qfix_open(&fx, &cfg);
    long long envs0 = count_keys("cmtp:{s*}:env:*");
    struct qmsg *m = qmsg_new(&fx, 10000, NULL);
    qfix_send(&fx, q, m, 3000, &c1, qid1, sizeof(qid1));
    assert_int_equal(c1.r.status, QUEUE_COMMIT_ACCEPTED);
    assert_false(c1.r.dup);
    /* The retransmission: a new transaction (new qid, chunks written) with the same txid. */
    qfix_send(&fx, q, m, 3000, &c2, qid2, sizeof(qid2));
    assert_string_not_equal(qid1, qid2);
    assert_int_equal(c2.r.status, QUEUE_COMMIT_ACCEPTED);
    assert_true(c2.r.dup);
    assert_string_equal(c2.r.qid, qid1);
    assert_int_equal(c2.r.rcpts, 2);
    /* Only one envelope stored; the second attempt's chunks were deleted. */
    assert_int_equal(count_keys("cmtp:{s*}:env:*"), envs0 + 1);
    unsigned shard;
    queue_qid_shard(qid2, &shard);
    assert_int_equal(qfix_exists(&fx, qfix_key(key, sizeof(key), shard, "body", qid2)), 0);
    assert_int_equal(qfix_exists(&fx, qfix_key(key, sizeof(key), shard, "env", qid2)), 0);
    check_stored(m, qid1, 4096);
    /* A second worker (another connection, as another node would be) finds it too. */
    struct queue *q2 = qfix_open(&fx, &cfg);
    struct qcommit c3;
    qfix_send(&fx, q2, m, 10000, &c3, NULL, 0);
    assert_true(c3.r.dup);
    assert_string_equal(c3.r.qid, qid1);
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_int_equal(st.accepted, 2);
    assert_int_equal(st.dups, 1);
    /* The dedup key is one string: "qid LF rcpts LF originator LF digest", with its expiry. */
    unsigned ts = queue_txid_shard(m->env.txid, strlen(m->env.txid), 16);
    const char *get[] = {"GET", qfix_key(key, sizeof(key), ts, "txn", m->env.txid)};
    redisReply *r = qfix_cmd(&fx, 2, get);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    char want[256];
    int wl =
        snprintf(want, sizeof(want), "%s\n2\n%s@%s\n", qid1, m->env.from.local, m->env.from.domain);
    assert_int_equal(r->len, (size_t)wl + CMTP_DIGEST_LEN);
    assert_memory_equal(r->str, want, (size_t)wl);
    assert_memory_equal(r->str + wl, m->env.digest, CMTP_DIGEST_LEN);
    freeReplyObject(r);

    /* A dedup HASH written by an older node is still honoured. */
    struct qmsg *old = qmsg_new(&fx, 700, NULL);
    char from[CMTP_LOCAL_MAX + CMTP_DOMAIN_MAX + 2];
    snprintf(from, sizeof(from), "%s@%s", old->env.from.local, old->env.from.domain);
    ts = queue_txid_shard(old->env.txid, strlen(old->env.txid), 16);
    qfix_key(key, sizeof(key), ts, "txn", old->env.txid);
    const char *hs[] = {"HSET",   key,
                        "qid",    "0000000000LEGACYQID00-1",
                        "digest", (const char *)old->env.digest,
                        "from",   from,
                        "rcpts",  "2"};
    size_t hl[10];
    for (int i = 0; i < 10; i++)
        hl[i] = strlen(hs[i]);
    hl[5] = CMTP_DIGEST_LEN;
    r = redisCommandArgv(fx.sync, 10, hs, hl);
    assert_non_null(r);
    freeReplyObject(r);
    struct qcommit c4;
    qfix_send(&fx, q, old, 700, &c4, NULL, 0);
    assert_int_equal(c4.r.status, QUEUE_COMMIT_ACCEPTED);
    assert_true(c4.r.dup);
    assert_string_equal(c4.r.qid, "0000000000LEGACYQID00-1");
    qmsg_free(old);
    qmsg_free(m);
    queue_free(q2);
    queue_free(q);
}

static void test_conflict(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c1, c2, c3;
    char qid1[CMTP_QID_MAX + 1], qid2[CMTP_QID_MAX + 1];

    qfix_config(&fx, &cfg);
    struct queue *q = qfix_open(&fx, &cfg);
    long long envs0 = count_keys("cmtp:{s*}:env:*");
    struct qmsg *m = qmsg_new(&fx, 500, NULL);
    qfix_send(&fx, q, m, 500, &c1, qid1, sizeof(qid1));
    assert_int_equal(c1.r.status, QUEUE_COMMIT_ACCEPTED);
    /* Same txid, another body (so another digest). */
    struct qmsg *m2 = qmsg_new(&fx, 600, m->env.txid);
    qfix_send(&fx, q, m2, 600, &c2, qid2, sizeof(qid2));
    assert_int_equal(c2.r.status, QUEUE_COMMIT_CONFLICT);
    assert_false(c2.r.dup);
    assert_string_equal(c2.r.qid, qid1);
    /* Same txid and body, another originator. */
    struct qmsg *m3 = qmsg_new(&fx, 500, m->env.txid);
    memcpy(m3->body, m->body, 500);
    memcpy(m3->env.digest, m->env.digest, CMTP_DIGEST_LEN);
    qfix_addr(&m3->env.from, "mallory", "origin.example");
    qfix_send(&fx, q, m3, 500, &c3, NULL, 0);
    assert_int_equal(c3.r.status, QUEUE_COMMIT_CONFLICT);
    assert_int_equal(count_keys("cmtp:{s*}:env:*"), envs0 + 1);
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_int_equal(st.conflicts, 2);
    qmsg_free(m);
    qmsg_free(m2);
    qmsg_free(m3);
    queue_free(q);
}

struct bp_txn {
    struct queue_txn *t;
    struct qmsg *m;
    size_t off;
    bool blocked;
    bool writable;
    struct qcommit c;
};

static void bp_writable(void *arg)
{
    struct bp_txn *b = arg;
    b->writable = true;
    b->blocked = false;
}

static void test_inflight_backpressure(void **state)
{
    (void)state;
    struct queue_config cfg;
    enum { N = 4 };
    struct bp_txn b[N];
    unsigned agains = 0, max_inflight = 0, fired = 0;

    qfix_config(&fx, &cfg);
    cfg.chunk_size = 1024;
    cfg.inflight_max = 4;
    struct queue *q = qfix_open(&fx, &cfg);
    memset(b, 0, sizeof(b));
    for (int i = 0; i < N; i++) {
        b[i].m = qmsg_new(&fx, 20000 + (size_t)i * 999, NULL);
        b[i].t = queue_txn_begin(q, &b[i].m->env, b[i].m->rcpts, b[i].m->n_rcpts, &b[i].m->meta);
        assert_non_null(b[i].t);
        queue_txn_set_writable_cb(b[i].t, bp_writable, &b[i]);
    }
    /* Round-robin appends of 1 KiB; a blocked transaction waits for its callback. The worker's
     * limit (4 commands) is far below what 4 transactions would send. */
    for (int round = 0; round < 100000; round++) {
        bool all_done = true;
        for (int i = 0; i < N; i++) {
            struct bp_txn *x = &b[i];
            if (x->off >= x->m->len)
                continue;
            all_done = false;
            if (x->blocked)
                continue;
            size_t n = x->m->len - x->off < 1024 ? x->m->len - x->off : 1024;
            enum queue_res res = queue_txn_append(x->t, x->m->body + x->off, n);
            assert_int_not_equal(res, QUEUE_TEMPFAIL);
            x->off += n;
            if (res == QUEUE_AGAIN) {
                agains++;
                x->blocked = true;
            }
            struct queue_stats st;
            queue_get_stats(q, &st);
            if (st.inflight > max_inflight)
                max_inflight = st.inflight;
        }
        if (all_done)
            break;
        poll_loop_run_once(fx.pl, 5);
    }
    for (int i = 0; i < N; i++) {
        if (b[i].blocked)
            assert_true(poll_loop_run_until(fx.pl, qflag_is_set, &b[i].writable, 3000));
        fired += b[i].writable;
        assert_int_equal(queue_txn_commit(b[i].t, b[i].m->env.digest, qcommit_cb, &b[i].c), 0);
    }
    for (int i = 0; i < N; i++) {
        assert_true(poll_loop_run_until(fx.pl, qcommit_done, &b[i].c, 5000));
        assert_int_equal(b[i].c.r.status, QUEUE_COMMIT_ACCEPTED);
        check_stored(b[i].m, b[i].c.r.qid, 1024);
        qmsg_free(b[i].m);
    }
    assert_true(agains > 0);
    assert_true(fired > 0);
    assert_true(max_inflight <= 4);
    queue_free(q);
}

static void test_abort_deletes_chunks(void **state)
{
    (void)state;
    struct queue_config cfg;
    char key[QUEUE_KEY_MAX];

    qfix_config(&fx, &cfg);
    cfg.chunk_size = 1024;
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 10000, NULL);
    struct queue_txn *t = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
    assert_non_null(t);
    unsigned shard = queue_txn_shard(t);
    char qid[CMTP_QID_MAX + 1];
    snprintf(qid, sizeof(qid), "%s", queue_txn_qid(t));
    /* 8 KiB: eight chunks written (and acknowledged) before the abort. */
    struct qmsg part = *m;
    part.len = 8192;
    assert_int_equal(qfix_append(&fx, t, &part, 512, NULL, NULL), QUEUE_OK);
    poll_loop_run_for(fx.pl, 100);
    qfix_key(key, sizeof(key), shard, "body", qid);
    const char *ll[] = {"LLEN", key};
    assert_int_equal(qfix_int(&fx, 2, ll), 8);
    /* Orphans would expire anyway. */
    const char *pt[] = {"PTTL", key};
    assert_true(qfix_int(&fx, 2, pt) > 0);
    queue_txn_abort(t);
    poll_loop_run_for(fx.pl, 100);
    assert_int_equal(qfix_exists(&fx, key), 0);

    /* Aborting with chunk writes still in flight: the UNLINK is pipelined after them. */
    t = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
    snprintf(qid, sizeof(qid), "%s", queue_txn_qid(t));
    assert_int_equal(queue_txn_append(t, m->body, 2048), QUEUE_OK);
    queue_txn_abort(t);
    poll_loop_run_for(fx.pl, 100);
    assert_int_equal(qfix_exists(&fx, qfix_key(key, sizeof(key), shard, "body", qid)), 0);
    assert_int_equal(qfix_exists(&fx, qfix_key(key, sizeof(key), shard, "env", qid)), 0);
    queue_txn_abort(NULL);
    qmsg_free(m);
    queue_free(q);
}

static unsigned shard_of(const char *qid)
{
    unsigned s;
    assert_int_equal(queue_qid_shard(qid, &s), 0);
    return s;
}

static void test_body_lost_before_commit(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c = {0};
    char key[QUEUE_KEY_MAX];

    qfix_config(&fx, &cfg);
    cfg.chunk_size = 1024;
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 3500, NULL);
    struct queue_txn *t = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
    assert_non_null(t);
    char qid[CMTP_QID_MAX + 1];
    snprintf(qid, sizeof(qid), "%s", queue_txn_qid(t));
    assert_int_equal(qfix_append(&fx, t, m, 500, NULL, NULL), QUEUE_OK);
    poll_loop_run_for(fx.pl, 100);
    /* The chunks vanish (expired, a failover to a replica that missed them, an operator). */
    const char *del[] = {"DEL", qfix_key(key, sizeof(key), queue_txn_shard(t), "body", qid)};
    assert_int_equal(qfix_int(&fx, 2, del), 1);
    assert_int_equal(queue_txn_commit(t, m->env.digest, qcommit_cb, &c), 0);
    assert_true(poll_loop_run_until(fx.pl, qcommit_done, &c, 3000));
    assert_int_equal(c.r.status, QUEUE_COMMIT_TEMPFAIL);
    assert_non_null(strstr(c.r.reason, "BODYLOST"));
    assert_int_equal(qfix_exists(&fx, qfix_key(key, sizeof(key), shard_of(qid), "env", qid)), 0);
    unsigned shard = queue_txid_shard(m->env.txid, strlen(m->env.txid), QUEUE_SHARDS_DEFAULT);
    assert_int_equal(qfix_exists(&fx, qfix_key(key, sizeof(key), shard, "txn", m->env.txid)), 0);
    /* The client's retry is accepted normally. */
    qfix_send(&fx, q, m, 700, &c, qid, sizeof(qid));
    assert_int_equal(c.r.status, QUEUE_COMMIT_ACCEPTED);
    assert_false(c.r.dup);
    check_stored(m, qid, 1024);
    qmsg_free(m);
    queue_free(q);
}

static void test_qid_format(void **state)
{
    (void)state;
    struct queue_config cfg;
    char prev[CMTP_QID_MAX + 1] = "";
    char seen[200][CMTP_QID_MAX + 1];

    qfix_config(&fx, &cfg);
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 10, NULL);
    for (int i = 0; i < 200; i++) {
        snprintf(m->env.txid, sizeof(m->env.txid), "qid-format-test-%04d", i);
        struct queue_txn *t = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
        assert_non_null(t);
        const char *qid = queue_txn_qid(t);
        unsigned shard;
        /* 10 time digits + 12 random digits of Crockford base32, '-', the shard. */
        assert_true(strlen(qid) >= 24 && strlen(qid) <= 26);
        for (int k = 0; k < 22; k++)
            assert_non_null(strchr("0123456789ABCDEFGHJKMNPQRSTVWXYZ", qid[k]));
        assert_int_equal(qid[22], '-');
        assert_int_equal(queue_qid_shard(qid, &shard), 0);
        assert_int_equal(shard, queue_txn_shard(t));
        assert_int_equal(shard, queue_txid_shard(m->env.txid, strlen(m->env.txid), 16));
        assert_true(strncmp(prev, qid, 10) <= 0); /* time-ordered */
        for (int j = 0; j < i; j++)
            assert_string_not_equal(seen[j], qid);
        snprintf(seen[i], sizeof(seen[i]), "%s", qid);
        snprintf(prev, sizeof(prev), "%s", qid);
        queue_txn_abort(t);
    }
    qmsg_free(m);
    queue_free(q);
}

static void test_commit_misuse(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c = {0};
    uint8_t bad[CMTP_DIGEST_LEN] = {0};

    qfix_config(&fx, &cfg);
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 100, NULL);
    struct queue_txn *t = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
    assert_int_equal(queue_txn_append(t, m->body, 50), QUEUE_OK);
    /* Short body, wrong digest: refused, the caller keeps the transaction. */
    assert_int_equal(queue_txn_commit(t, m->env.digest, qcommit_cb, &c), -EINVAL);
    assert_int_equal(queue_txn_append(t, m->body + 50, 50), QUEUE_OK);
    assert_int_equal(queue_txn_commit(t, bad, qcommit_cb, &c), -EINVAL);
    /* More than SIZE: the transaction fails. */
    assert_int_equal(queue_txn_append(t, m->body, 1), QUEUE_TEMPFAIL);
    assert_int_equal(queue_txn_commit(t, m->env.digest, qcommit_cb, &c), -EIO);
    queue_txn_abort(t);
    /* Bad begin arguments. */
    errno = 0;
    assert_null(queue_txn_begin(q, &m->env, m->rcpts, 0, &m->meta));
    assert_int_equal(errno, EINVAL);
    m->env.txid[0] = '\0';
    assert_null(queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta));
    poll_loop_run_for(fx.pl, 20);
    assert_false(c.done);
    qmsg_free(m);
    queue_free(q);
}

/* An unsized transaction (the SMTP ingress): size and digest come at the commit, with a policy
 * learnt meanwhile; the record read back carries them; misuse is refused. */
static void test_unsized(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c = {0};
    char qid[CMTP_QID_MAX + 1];
    qfix_config(&fx, &cfg);
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 300 * 1024, NULL); /* several chunks */
    struct cmtp_envelope env = m->env;
    uint8_t digest[CMTP_DIGEST_LEN];
    memcpy(digest, m->env.digest, sizeof(digest));
    env.size = 0;
    memset(env.digest, 0, sizeof(env.digest));
    /* The size limit bounds what may be appended. */
    struct queue_txn *t = queue_txn_begin_unsized(q, &env, m->rcpts, m->n_rcpts, &m->meta, 10);
    assert_non_null(t);
    assert_int_equal(queue_txn_append(t, m->body, 11), QUEUE_TEMPFAIL);
    queue_txn_abort(t);
    assert_null(queue_txn_begin_unsized(q, &env, m->rcpts, m->n_rcpts, &m->meta, 0));
    /* The whole body, then the commit with its size and digest. */
    t = queue_txn_begin_unsized(q, &env, m->rcpts, m->n_rcpts, &m->meta, 1024 * 1024);
    assert_non_null(t);
    snprintf(qid, sizeof(qid), "%s", queue_txn_qid(t));
    assert_int_not_equal(qfix_append(&fx, t, m, 4096, NULL, NULL), QUEUE_TEMPFAIL);
    /* queue_txn_commit is not for unsized transactions; a wrong size is refused. */
    assert_int_equal(queue_txn_commit(t, digest, qcommit_cb, &c), -EINVAL);
    assert_int_equal(queue_txn_commit_unsized(t, m->len - 1, digest, NULL, qcommit_cb, &c),
                     -EINVAL);
    struct cmtp_policy pol;
    cmtp_policy_init(&pol);
    pol.relay = CMTP_RELAY_DOMAIN;
    pol.fallback = CMTP_FALLBACK_SMTP_VERIFIED;
    pol.hops = 5;
    assert_int_equal(queue_txn_commit_unsized(t, m->len, digest, &pol, qcommit_cb, &c), 0);
    assert_true(poll_loop_run_until(fx.pl, qcommit_done, &c, 5000));
    assert_int_equal(c.r.status, QUEUE_COMMIT_ACCEPTED);
    assert_string_equal(c.r.qid, qid);
    check_stored(m, qid, QUEUE_CHUNK_SIZE_DEFAULT);
    /* The policy given at the commit is the record's. */
    unsigned shard;
    char key[QUEUE_KEY_MAX];
    queue_qid_shard(qid, &shard);
    const char *get[] = {"GET", qfix_key(key, sizeof(key), shard, "env", qid)};
    redisReply *r = qfix_cmd(&fx, 2, get);
    struct queue_record *rec = malloc(sizeof(*rec));
    assert_int_equal(queue_record_decode(rec, (const uint8_t *)r->str, r->len), QUEUE_RECORD_OK);
    freeReplyObject(r);
    assert_int_equal(rec->env.policy.relay, CMTP_RELAY_DOMAIN);
    assert_int_equal(rec->env.policy.fallback, CMTP_FALLBACK_SMTP_VERIFIED);
    assert_int_equal(rec->env.policy.hops, 5);
    queue_record_cleanup(rec);
    free(rec);
    qmsg_free(m);
    queue_free(q);
}

static void test_key_layout(void **state)
{
    (void)state;
    char k[QUEUE_KEY_MAX];
    unsigned s;

    assert_int_equal(queue_key_format(k, sizeof(k), "cmtp", 7, "env", "Q-7", 3), 17);
    assert_string_equal(k, "cmtp:{s7}:env:Q-7");
    assert_int_equal(queue_key_format(k, sizeof(k), "cmtp", 12, "sched", NULL, 0), 16);
    assert_string_equal(k, "cmtp:{s12}:sched");
    assert_int_equal(queue_key_format(k, 10, "cmtp", 12, "sched", NULL, 0), -ENOSPC);
    assert_int_equal(queue_key_format(k, 17, "cmtp", 7, "env", "Q-7", 3), -ENOSPC);
    assert_int_equal(queue_key_format(k, 18, "cmtp", 7, "env", "Q-7", 3), 17);
    assert_int_equal(queue_qid_shard("01ABCDEFGH0123456789AB-15", &s), 0);
    assert_int_equal(s, 15);
    assert_int_equal(queue_qid_shard("nodash", &s), -EINVAL);
    assert_int_equal(queue_qid_shard("x-", &s), -EINVAL);
    assert_int_equal(queue_qid_shard("x-1a", &s), -EINVAL);
    assert_int_equal(queue_qid_shard("x-99999999999999999999", &s), -EINVAL);
    /* FNV-1a 32 of "a" is 0xe40c292c: the shard function is fixed across versions and nodes. */
    assert_int_equal(queue_txid_shard("a", 1, 1u << 31), 0xe40c292cu % (1u << 31));
    assert_int_equal(queue_txid_shard("a", 1, 16), 0xe40c292cu % 16);

    /* Every key any earlier test wrote carries the one hash tag of its shard, first. */
    char cursor[32] = "0";
    long long seen = 0;
    do {
        const char *argv[] = {"SCAN", cursor, "COUNT", "1000"};
        redisReply *r = qfix_cmd(&fx, 4, argv);
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            const char *key = r->element[1]->element[i]->str;
            unsigned shard;
            char rest[8];
            assert_int_equal(strncmp(key, "cmtp:{s", 7), 0);
            assert_int_equal(sscanf(key + 7, "%u%7s", &shard, rest), 2);
            assert_true(shard < 16);
            assert_int_equal(rest[0], '}');
            assert_int_equal(strchr(key, '{') - key, 5);
            seen++;
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    assert_true(seen >= 10);
}

static void test_not_connected(void **state)
{
    (void)state;
    struct queue_config cfg;
    char err[256];

    qfix_config(&fx, &cfg);
    cfg.address = "unix:/nonexistent/cmtp-test/redis.sock";
    struct queue *q = queue_new(&cfg, &fx.ql, err, sizeof(err));
    assert_non_null(q);
    poll_loop_run_for(fx.pl, 100);
    const char *le;
    assert_int_not_equal(queue_state(q, &le), QUEUE_CONNECTED);
    assert_true(strlen(le) > 0);
    struct qmsg *m = qmsg_new(&fx, 10, NULL);
    errno = 0;
    assert_null(queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta));
    assert_int_equal(errno, ENOTCONN);
    assert_int_equal(queue_get_envelope(q, "A-1", read_cb, NULL), -ENOTCONN);
    qmsg_free(m);
    queue_free(q);
    unsigned w, t;
    poll_loop_counts(fx.pl, &w, &t);
    assert_int_equal(w, 0);
    assert_int_equal(t, 0);

    /* Bad configurations are refused up front. */
    cfg.address = "localhost";
    assert_null(queue_new(&cfg, &fx.ql, err, sizeof(err)));
    assert_true(strlen(err) > 0);
    cfg.address = "::1:6379";
    assert_null(queue_new(&cfg, &fx.ql, err, sizeof(err)));
    cfg.address = "redis.example:6379"; /* names would block the worker in getaddrinfo */
    assert_null(queue_new(&cfg, &fx.ql, err, sizeof(err)));
    cfg.address = "127.0.0.1:0";
    assert_null(queue_new(&cfg, &fx.ql, err, sizeof(err)));
    cfg.address = fx.addr;
    cfg.key_prefix = "bad{prefix}";
    assert_null(queue_new(&cfg, &fx.ql, err, sizeof(err)));
    cfg.key_prefix = NULL;
    cfg.chunk_size = 10;
    assert_null(queue_new(&cfg, &fx.ql, err, sizeof(err)));
    cfg.chunk_size = 0;
    cfg.shards = QUEUE_SHARDS_MAX + 1;
    assert_null(queue_new(&cfg, &fx.ql, err, sizeof(err)));
}

static void test_tcp_address(void **state)
{
    (void)state;
    /* A TCP address is parsed and connected to (nothing listens on this port: it stays down). */
    struct queue_config cfg;
    char err[256];
    qfix_config(&fx, &cfg);
    cfg.address = "127.0.0.1:1";
    struct queue *q = queue_new(&cfg, &fx.ql, err, sizeof(err));
    assert_non_null(q);
    poll_loop_run_for(fx.pl, 100);
    const char *le;
    assert_int_not_equal(queue_state(q, &le), QUEUE_CONNECTED);
    assert_non_null(strstr(le, "connect"));
    queue_free(q);
    cfg.address = "[::1]:1";
    q = queue_new(&cfg, &fx.ql, err, sizeof(err));
    assert_non_null(q);
    queue_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit_small),
        cmocka_unit_test(test_commit_5mib_bounded),
        cmocka_unit_test(test_exact_multiple_of_chunk),
        cmocka_unit_test(test_dedup),
        cmocka_unit_test(test_conflict),
        cmocka_unit_test(test_inflight_backpressure),
        cmocka_unit_test(test_abort_deletes_chunks),
        cmocka_unit_test(test_body_lost_before_commit),
        cmocka_unit_test(test_qid_format),
        cmocka_unit_test(test_commit_misuse),
        cmocka_unit_test(test_unsized),
        cmocka_unit_test(test_key_layout),
        cmocka_unit_test(test_not_connected),
        cmocka_unit_test(test_tcp_address),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
