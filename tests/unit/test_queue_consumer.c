/* tests/unit/test_queue_consumer.c — the delivery side against a real private redis-server: claim,
 * completion per recipient, backoff, lifetime, leases across two consumers, takeover, dead
 * letters, hold, concurrency limits, quarantine, chunked body reads, reports and admin. */
#include "queue/consumer.h"
#include "tests/unit/helpers/queue_fixture.h"

#include <time.h>

static struct qfix fx;
static struct queue *ingest;

/* events collected from every consumer of a test */
struct evlog {
    unsigned n[QUEUE_CONSUMER_EV_ORPHAN + 1];
    unsigned count[QUEUE_CONSUMER_EV_ORPHAN + 1];
    char detail[QUEUE_CONSUMER_EV_ORPHAN + 1][QUEUE_REASON_MAX];
};
static struct evlog evs;

static void on_event(void *arg, const struct queue_consumer_event *ev)
{
    struct evlog *l = arg;
    l->n[ev->kind]++;
    l->count[ev->kind] += ev->count;
    snprintf(l->detail[ev->kind], sizeof(l->detail[ev->kind]), "%s", ev->detail);
}

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

static int test_setup(void **state)
{
    struct queue_config cfg;
    const char *fl[] = {"FLUSHALL"};
    (void)state;
    redisReply *r = qfix_cmd(&fx, 1, fl);
    freeReplyObject(r);
    memset(&evs, 0, sizeof(evs));
    qfix_config(&fx, &cfg);
    ingest = qfix_open(&fx, &cfg);
    return 0;
}

static int test_teardown(void **state)
{
    (void)state;
    queue_free(ingest);
    ingest = NULL;
    return 0;
}

static void ccfg(struct queue_consumer_config *cfg, const char *node)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->address = fx.addr;
    cfg->node_id = node;
    cfg->op_timeout_ms = 3000;
    cfg->reconnect_min_ms = 20;
    cfg->reconnect_max_ms = 200;
    cfg->lease_ms = 60000;
    cfg->retry_base_ms = 1000;
    cfg->retry_max_ms = 8000;
    cfg->lifetime_ms = 86400000;
    cfg->attempts_crash_max = 3;
    cfg->event_cb = on_event;
    cfg->event_arg = &evs;
}

static bool consumer_up(void *arg)
{
    return queue_consumer_state(arg, NULL) == QUEUE_CONNECTED;
}

static struct queue_consumer *copen(const struct queue_consumer_config *cfg)
{
    char err[256];
    struct queue_consumer *c = queue_consumer_new(cfg, &fx.ql, err, sizeof(err));
    if (c == NULL)
        fail_msg("queue_consumer_new: %s", err);
    if (!poll_loop_run_until(fx.pl, consumer_up, c, 3000)) {
        const char *le;
        queue_consumer_state(c, &le);
        fail_msg("consumer did not connect: %s", le);
    }
    return c;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- synchronous wrappers (run the loop until the callback) ---- */

struct claim_res {
    bool done;
    int err;
    size_t n;
    struct queue_consumer_lease *l[256];
};

static void claim_cb(void *arg, int err, struct queue_consumer_lease **leases, size_t n)
{
    struct claim_res *r = arg;
    r->done = true;
    r->err = err;
    r->n = n;
    assert_true(n <= 256);
    for (size_t i = 0; i < n; i++)
        r->l[i] = leases[i];
}

static bool claim_done(void *arg)
{
    return ((struct claim_res *)arg)->done;
}

static size_t claim(struct queue_consumer *c, size_t max, struct claim_res *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(queue_consumer_claim(c, max, claim_cb, r), 0);
    assert_false(r->done);
    if (!poll_loop_run_until(fx.pl, claim_done, r, 5000))
        fail_msg("claim callback never fired");
    assert_int_equal(r->err, 0);
    return r->n;
}

struct done_res {
    bool done;
    struct queue_consumer_done_result r;
};

static void done_cb(void *arg, const struct queue_consumer_done_result *r)
{
    struct done_res *d = arg;
    d->done = true;
    d->r = *r;
}

static bool done_done(void *arg)
{
    return ((struct done_res *)arg)->done;
}

/* finish completes |l| with |res| (and |reason|) for each of its recipients. */
static struct queue_consumer_done_result finish(struct queue_consumer_lease *l,
                                                enum queue_consumer_result res, const char *reason)
{
    size_t n;
    const size_t *idx = queue_consumer_lease_rcpts(l, &n);
    struct queue_consumer_outcome o[8];
    struct done_res d = {0};
    assert_true(n >= 1 && n <= 8);
    for (size_t i = 0; i < n; i++)
        o[i] = (struct queue_consumer_outcome){idx[i], res, reason};
    assert_int_equal(queue_consumer_done(l, o, n, done_cb, &d), 0);
    if (!poll_loop_run_until(fx.pl, done_done, &d, 5000))
        fail_msg("done callback never fired");
    return d.r;
}

static struct queue_consumer_done_result done_with(struct queue_consumer_lease *l,
                                                   const struct queue_consumer_outcome *o, size_t n)
{
    struct done_res d = {0};
    assert_int_equal(queue_consumer_done(l, o, n, done_cb, &d), 0);
    if (!poll_loop_run_until(fx.pl, done_done, &d, 5000))
        fail_msg("done callback never fired");
    return d.r;
}

struct n_res {
    bool done;
    int err;
    unsigned n;
};

static void n_cb(void *arg, int err, unsigned n)
{
    struct n_res *r = arg;
    r->done = true;
    r->err = err;
    r->n = n;
}

static bool n_done(void *arg)
{
    return ((struct n_res *)arg)->done;
}

static struct n_res wait_n(int rc, struct n_res *r)
{
    assert_int_equal(rc, 0);
    if (!poll_loop_run_until(fx.pl, n_done, r, 5000))
        fail_msg("admin callback never fired");
    return *r;
}

struct err_res {
    bool done;
    int err;
};

static void err_cb(void *arg, int err)
{
    struct err_res *r = arg;
    r->done = true;
    r->err = err;
}

static bool err_done(void *arg)
{
    return ((struct err_res *)arg)->done;
}

static int wait_err(int rc, struct err_res *r)
{
    assert_int_equal(rc, 0);
    if (!poll_loop_run_until(fx.pl, err_done, r, 5000))
        fail_msg("callback never fired");
    return r->err;
}

/* ---- messages ---- */

/* send_msg commits |m| and returns its qid in |qid|. */
static void send_msg(struct qmsg *m, char *qid)
{
    struct qcommit cm;
    qfix_send(&fx, ingest, m, 64 * 1024, &cm, qid, CMTP_QID_MAX + 1);
    assert_int_equal(cm.r.status, QUEUE_COMMIT_ACCEPTED);
}

/* msg_to makes a message with one recipient per domain of |domains| (NULL-terminated). */
static struct qmsg *msg_to(size_t len, const char *const *domains)
{
    struct qmsg *m = qmsg_new(&fx, len, NULL);
    size_t n = 0;
    memset(m->rcpts, 0, sizeof(m->rcpts));
    for (; domains[n] != NULL; n++) {
        char local[16];
        snprintf(local, sizeof(local), "u%zu", n);
        qfix_addr(&m->rcpts[n].addr, local, domains[n]);
        m->rcpts[n].role = CMTP_ROLE_FINAL;
    }
    m->n_rcpts = n;
    return m;
}

static unsigned qid_shard(const char *qid)
{
    unsigned s;
    assert_int_equal(queue_qid_shard(qid, &s), 0);
    return s;
}

static const char *ckey(char *buf, unsigned shard, const char *kind, const char *name)
{
    return qfix_key(buf, QUEUE_KEY_MAX, shard, kind, name);
}

static const char *item_name(char *buf, const char *qid, const char *dest)
{
    snprintf(buf, QUEUE_CONSUMER_ITEM_MAX, "%s/%s", qid, dest);
    return buf;
}

/* zscore returns the score of |member| in |key|, or -1. */
static long long zscore(const char *key, const char *member)
{
    const char *argv[] = {"ZSCORE", key, member};
    redisReply *r = qfix_cmd(&fx, 3, argv);
    long long v = r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    freeReplyObject(r);
    return v;
}

static long long zcard(const char *key)
{
    const char *argv[] = {"ZCARD", key};
    return qfix_int(&fx, 2, argv);
}

static long long count_keys_with(const char *needle)
{
    long long n = 0;
    char cursor[32] = "0";
    do {
        const char *argv[] = {"SCAN", cursor, "COUNT", "1000"};
        redisReply *r = qfix_cmd(&fx, 4, argv);
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++)
            if (strstr(r->element[1]->element[i]->str, needle) != NULL)
                n++;
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return n;
}

/* check_key_tags asserts that every key in Redis is `cmtp:{s<k>}:...` with k < 16, the hash tag
 * first, and returns how many there are. */
static long long check_key_tags(void)
{
    long long n = 0;
    char cursor[32] = "0";
    do {
        const char *argv[] = {"SCAN", cursor, "COUNT", "1000"};
        redisReply *r = qfix_cmd(&fx, 4, argv);
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            const char *key = r->element[1]->element[i]->str;
            unsigned shard;
            char close;
            if (strncmp(key, "cmtp:{s", 7) != 0 || sscanf(key + 7, "%u%c", &shard, &close) != 2 ||
                close != '}' || shard >= 16 || strchr(key + 1, '{') - key != 5)
                fail_msg("key without its shard tag: %s", key);
            n++;
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return n;
}

static void sync_set(const char *key, const void *data, size_t len)
{
    const char *argv[3] = {"SET", key, data};
    size_t lens[3] = {3, strlen(key), len};
    redisReply *r = redisCommandArgv(fx.sync, 3, argv, lens);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
}

static uint8_t *sync_get(const char *key, size_t *len)
{
    const char *argv[2] = {"GET", key};
    redisReply *r = qfix_cmd(&fx, 2, argv);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    uint8_t *b = malloc(r->len);
    memcpy(b, r->str, r->len);
    *len = r->len;
    freeReplyObject(r);
    return b;
}

static void sync_cmd(int argc, const char **argv)
{
    redisReply *r = qfix_cmd(&fx, argc, argv);
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("%s: %s", argv[0], r->str);
    freeReplyObject(r);
}

static struct queue_consumer_lease *find_lease(struct claim_res *r, const char *dest)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->l[i] && strcmp(queue_consumer_lease_dest(r->l[i]), dest) == 0)
            return r->l[i];
    fail_msg("no lease for %s", dest);
    return NULL;
}

/* ---- tests ---- */

/* Claim then delivered for every recipient: the message and every key of it go. */
static void test_claim_done_delivered(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    char qid[CMTP_QID_MAX + 1], key[QUEUE_KEY_MAX], it[QUEUE_CONSUMER_ITEM_MAX];

    ccfg(&cfg, "nodeA");
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m = qmsg_new(&fx, 3000, NULL); /* alice@dest.example, bob via mx.other */
    send_msg(m, qid);
    unsigned s = qid_shard(qid);

    assert_int_equal(claim(c, 10, &cr), 2);
    struct queue_consumer_lease *a = find_lease(&cr, "dest.example");
    struct queue_consumer_lease *b = find_lease(&cr, "mx.other.example");
    assert_string_equal(queue_consumer_lease_qid(a), qid);
    const struct queue_record *rec = queue_consumer_lease_record(a);
    assert_string_equal(rec->qid, qid);
    assert_int_equal(rec->n_rcpts, 2);
    size_t n;
    const size_t *idx = queue_consumer_lease_rcpts(a, &n);
    assert_int_equal(n, 1);
    assert_int_equal(idx[0], 0);
    idx = queue_consumer_lease_rcpts(b, &n);
    assert_int_equal(n, 1);
    assert_int_equal(idx[0], 1);
    assert_int_equal(queue_consumer_lease_tries(a), 0);
    assert_true(queue_consumer_lease_expires_ms(a) > now_ms() + 50000);

    /* The lease is visible in the destination's home shard, with the concurrency counter. */
    unsigned h = queue_consumer_item_shard("dest.example", 16);
    assert_true(zscore(ckey(key, h, "leases", NULL), item_name(it, qid, "dest.example")) > 0);
    const char *hg[] = {"HGET", ckey(key, h, "conc", NULL), "dest.example"};
    redisReply *r = qfix_cmd(&fx, 3, hg);
    assert_string_equal(r->str, "1");
    freeReplyObject(r);
    /* A second claim finds nothing: both items are leased. */
    struct claim_res cr2;
    assert_int_equal(claim(c, 10, &cr2), 0);

    struct queue_consumer_done_result d = finish(a, QUEUE_CONSUMER_DELIVERED, "250 ok");
    assert_int_equal(d.status, QUEUE_CONSUMER_DONE_OK);
    assert_int_equal(d.delivered, 1);
    assert_false(d.removed);
    assert_false(d.rescheduled);
    /* Not removed yet: the other recipient is pending. */
    assert_int_equal(qfix_exists(&fx, ckey(key, s, "env", qid)), 1);
    d = finish(b, QUEUE_CONSUMER_DELIVERED, "250 ok");
    assert_int_equal(d.status, QUEUE_CONSUMER_DONE_OK);
    assert_true(d.removed);
    assert_false(d.report_queued);

    /* Everything of the message is gone: no key names it, no entry refers to it. */
    assert_int_equal(count_keys_with(qid), 0);
    for (unsigned k = 0; k < 16; k++) {
        assert_int_equal(zcard(ckey(key, k, "sched", NULL)), 0);
        assert_int_equal(zcard(ckey(key, k, "leases", NULL)), 0);
        assert_int_equal(qfix_exists(&fx, ckey(key, k, "conc", NULL)), 0);
        assert_int_equal(qfix_exists(&fx, ckey(key, k, "lease", NULL)), 0);
    }
    const char *hc[] = {"HGET", ckey(key, s, "stats", NULL), "completed"};
    r = qfix_cmd(&fx, 3, hc);
    assert_string_equal(r->str, "1");
    freeReplyObject(r);

    struct queue_consumer_stats st;
    queue_consumer_get_stats(c, &st);
    assert_int_equal(st.claimed, 2);
    /* Both items came out of the claim that split the message: no READ of their own. */
    assert_int_equal(st.prefetched, 2);
    assert_int_equal(st.adopted, 1);
    assert_int_equal(st.delivered, 2);
    assert_int_equal(st.removed, 1);
    qmsg_free(m);
    queue_consumer_free(c);
}

/* A message split by one claim call whose items are leased by a later call of the same
 * consumer (moments later) still needs no READ: the consumer kept what CLAIM read. */
static void test_prefetch_across_claims(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr, cr2;
    char qid[CMTP_QID_MAX + 1];

    ccfg(&cfg, "nodeA");
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m = qmsg_new(&fx, 3000, NULL); /* two destinations */
    send_msg(m, qid);
    assert_int_equal(claim(c, 1, &cr), 1);
    assert_int_equal(claim(c, 1, &cr2), 1);
    assert_string_not_equal(queue_consumer_lease_dest(cr.l[0]),
                            queue_consumer_lease_dest(cr2.l[0]));
    struct queue_consumer_stats st;
    queue_consumer_get_stats(c, &st);
    assert_int_equal(st.claimed, 2);
    assert_int_equal(st.prefetched, 2);
    /* Both complete normally from the kept record: the second sees the first's update as a
     * changed version and re-reads. */
    struct queue_consumer_done_result d = finish(cr.l[0], QUEUE_CONSUMER_DELIVERED, "250 ok");
    assert_int_equal(d.status, QUEUE_CONSUMER_DONE_OK);
    assert_false(d.removed);
    d = finish(cr2.l[0], QUEUE_CONSUMER_DELIVERED, "250 ok");
    assert_int_equal(d.status, QUEUE_CONSUMER_DONE_OK);
    assert_true(d.removed);
    queue_consumer_get_stats(c, &st);
    assert_true(st.stale >= 1);
    assert_int_equal(count_keys_with(qid), 0);
    qmsg_free(m);
    queue_consumer_free(c);
}

/* A temporary failure reschedules with exponential backoff: delays double up to retry_max,
 * each within [3/4, 1] of the nominal value. */
static void test_tempfail_backoff(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    char qid[CMTP_QID_MAX + 1], key[QUEUE_KEY_MAX], it[QUEUE_CONSUMER_ITEM_MAX];
    const char *dom[] = {"dest.example", NULL};

    ccfg(&cfg, "nodeA");
    cfg.retry_base_ms = 1000;
    cfg.retry_max_ms = 4000;
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m = msg_to(500, dom);
    send_msg(m, qid);
    unsigned h = queue_consumer_item_shard("dest.example", 16);
    const uint64_t nominal[] = {1000, 2000, 4000, 4000};
    long long prev = 0;

    for (unsigned i = 0; i < 4; i++) {
        assert_int_equal(claim(c, 4, &cr), 1);
        assert_int_equal(queue_consumer_lease_tries(cr.l[0]), i);
        assert_int_equal(queue_consumer_lease_record(cr.l[0])->attempts, i);
        int64_t t0 = now_ms();
        struct queue_consumer_done_result d =
            finish(cr.l[0], QUEUE_CONSUMER_TEMPFAIL, "451 mailbox busy");
        int64_t t1 = now_ms();
        assert_int_equal(d.status, QUEUE_CONSUMER_DONE_OK);
        assert_true(d.rescheduled);
        assert_int_equal(d.pending, 1);
        assert_false(d.removed);
        long long score = zscore(ckey(key, h, "sched", NULL), item_name(it, qid, "dest.example"));
        assert_int_equal(score, d.next_attempt_ms);
        long long delay_lo = score - t1, delay_hi = score - t0;
        if (delay_hi < (long long)(nominal[i] * 3 / 4) - 5 || delay_lo > (long long)nominal[i] + 5)
            fail_msg("attempt %u: delay %lld..%lld outside [%llu, %llu]", i, delay_lo, delay_hi,
                     (unsigned long long)(nominal[i] * 3 / 4), (unsigned long long)nominal[i]);
        if (i > 0 && i < 3)
            assert_true(score - t1 > prev); /* grows while below the cap */
        prev = score - t0;
        /* Not due yet: a claim finds nothing. Then make it due now (admin retry). */
        struct claim_res none;
        assert_int_equal(claim(c, 4, &none), 0);
        struct n_res nr = {0};
        nr = wait_n(queue_consumer_retry(c, qid, n_cb, &nr), &nr);
        assert_int_equal(nr.err, 0);
        assert_int_equal(nr.n, 1);
    }
    /* The last error is kept with the item for the admin. */
    const char *hg[] = {"HGET", ckey(key, h, "it", item_name(it, qid, "dest.example")), "err"};
    redisReply *r = qfix_cmd(&fx, 3, hg);
    assert_string_equal(r->str, "451 mailbox busy");
    freeReplyObject(r);
    assert_int_equal(claim(c, 4, &cr), 1);
    /* Only the first claim split the message: every later one read the record (READ), which
     * carries the attempts the retries wrote. */
    struct queue_consumer_stats st;
    queue_consumer_get_stats(c, &st);
    assert_int_equal(st.prefetched, 1);
    assert_true(st.claimed > 1);
    assert_true(queue_consumer_lease_record(cr.l[0])->attempts > 0);
    struct queue_consumer_done_result d = finish(cr.l[0], QUEUE_CONSUMER_DELIVERED, NULL);
    assert_true(d.removed);
    qmsg_free(m);
    queue_consumer_free(c);
}

struct take_res {
    bool done;
    int err;
    unsigned shard;
    uint8_t *data;
    size_t len;
};

static void take_cb(void *arg, int err, unsigned shard, const uint8_t *data, size_t len)
{
    struct take_res *t = arg;
    t->done = true;
    t->err = err;
    t->shard = shard;
    if (err == 0) {
        t->data = malloc(len);
        memcpy(t->data, data, len);
        t->len = len;
    }
}

static bool take_done(void *arg)
{
    return ((struct take_res *)arg)->done;
}

static int take_report(struct queue_consumer *c, struct take_res *t)
{
    memset(t, 0, sizeof(*t));
    assert_int_equal(queue_consumer_report_take(c, take_cb, t), 0);
    if (!poll_loop_run_until(fx.pl, take_done, t, 5000))
        fail_msg("report take never answered");
    return t->err;
}

/* fail_one sends |m| (through |q|), fails its one recipient permanently and returns the decoded
 * report item (|t| keeps the raw item). */
static void fail_one(struct queue_consumer *c, struct queue *q, struct qmsg *m, struct take_res *t,
                     struct queue_consumer_report *rep)
{
    struct qcommit cm;
    struct claim_res cr;
    char qid[CMTP_QID_MAX + 1];
    qfix_send(&fx, q, m, 1024, &cm, qid, sizeof(qid));
    assert_int_equal(cm.r.status, QUEUE_COMMIT_ACCEPTED);
    assert_int_equal(claim(c, 4, &cr), 1);
    size_t n;
    const size_t *idx = queue_consumer_lease_rcpts(cr.l[0], &n);
    assert_int_equal(n, 1);
    struct queue_consumer_outcome o = {idx[0], QUEUE_CONSUMER_PERMFAIL, "550 5.1.1 no"};
    struct queue_consumer_done_result d = done_with(cr.l[0], &o, 1);
    assert_true(d.removed && d.report_queued);
    assert_int_equal(take_report(c, t), 0);
    assert_int_equal(queue_consumer_report_decode(rep, t->data, t->len), 0);
    assert_string_equal(rep->qid, qid);
}

/* Mail that came in over SMTP gets a DSN: its report item carries the message's first octets
 * (at most QUEUE_CONSUMER_REPORT_HEADERS_MAX, across body chunks), attached by the queue; a
 * CMTP message's item carries none. A damaged attachment makes the item not decode. */
static void test_report_headers(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct queue_config qc;
    const char *dom[] = {"dest.example", NULL};
    struct take_res t;
    struct queue_consumer_report rep;

    qfix_config(&fx, &qc);
    qc.chunk_size = 4096; /* the header section spans chunks */
    struct queue *q = qfix_open(&fx, &qc);
    ccfg(&cfg, "nodeA");
    struct queue_consumer *c = copen(&cfg);

    struct qmsg *m = msg_to(40000, dom);
    snprintf(m->meta.listener, sizeof(m->meta.listener), "smtp");
    fail_one(c, q, m, &t, &rep);
    assert_int_equal(rep.headers_len, QUEUE_CONSUMER_REPORT_HEADERS_MAX);
    assert_memory_equal(rep.headers, m->body, QUEUE_CONSUMER_REPORT_HEADERS_MAX);
    queue_consumer_report_cleanup(&rep);
    /* the attachment is checked: its length must match, and the flag must be set */
    size_t tail = t.len - QUEUE_CONSUMER_REPORT_HEADERS_MAX - 8;
    assert_memory_equal(t.data + tail, "HDRS", 4);
    assert_int_equal(queue_consumer_report_decode(&rep, t.data, t.len - 1), -EBADMSG);
    t.data[tail + 7] ^= 1;
    assert_int_equal(queue_consumer_report_decode(&rep, t.data, t.len), -EBADMSG);
    t.data[tail + 7] ^= 1;
    t.data[7] = 0;
    assert_int_equal(queue_consumer_report_decode(&rep, t.data, t.len), -EBADMSG);
    t.data[7] = 2; /* an unknown flag */
    assert_int_equal(queue_consumer_report_decode(&rep, t.data, tail), -EBADMSG);
    t.data[7] = 1;
    /* without the attachment (the body was already gone) the item still decodes */
    assert_int_equal(queue_consumer_report_decode(&rep, t.data, tail), 0);
    assert_null(rep.headers);
    queue_consumer_report_cleanup(&rep);
    free(t.data);
    qmsg_free(m);

    /* a short SMTP message: all of it; CMTP mail: nothing attached, no flag */
    static const struct {
        size_t len;
        const char *listener;
        size_t attached;
    } more[] = {{300, "smtp-submission", 300}, {3000, "cmtp", 0}};
    for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++) {
        m = msg_to(more[i].len, dom);
        snprintf(m->meta.listener, sizeof(m->meta.listener), "%s", more[i].listener);
        fail_one(c, q, m, &t, &rep);
        assert_int_equal(rep.headers_len, more[i].attached);
        assert_int_equal(t.data[7], more[i].attached ? 1 : 0); /* flags */
        if (more[i].attached)
            assert_memory_equal(rep.headers, m->body, more[i].attached);
        else
            assert_null(rep.headers);
        queue_consumer_report_cleanup(&rep);
        free(t.data);
        qmsg_free(m);
    }
    queue_consumer_free(c);
    queue_free(q);
}

/* A permanent failure of one recipient is final for it alone; the report item names it. */
static void test_permfail_per_rcpt(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    char qid[CMTP_QID_MAX + 1];
    const char *dom[] = {"dest.example", "dest.example", NULL};

    ccfg(&cfg, "nodeA");
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m = msg_to(800, dom);
    send_msg(m, qid);
    assert_int_equal(claim(c, 4, &cr), 1);
    size_t n;
    const size_t *idx = queue_consumer_lease_rcpts(cr.l[0], &n);
    assert_int_equal(n, 2);
    struct queue_consumer_outcome o[2] = {
        {idx[0], QUEUE_CONSUMER_DELIVERED, "250 ok"},
        {idx[1], QUEUE_CONSUMER_PERMFAIL, "550 5.1.1 no such user\r\nEVIL"},
    };
    /* An index of another destination (or out of range) is refused, the lease kept. */
    struct queue_consumer_outcome bad = {7, QUEUE_CONSUMER_DELIVERED, NULL};
    assert_int_equal(queue_consumer_done(cr.l[0], &bad, 1, done_cb, NULL), -EINVAL);
    struct queue_consumer_done_result d = done_with(cr.l[0], o, 2);
    assert_int_equal(d.status, QUEUE_CONSUMER_DONE_OK);
    assert_int_equal(d.delivered, 1);
    assert_int_equal(d.failed, 1);
    assert_true(d.removed);
    assert_true(d.report_queued);
    assert_int_equal(evs.n[QUEUE_CONSUMER_EV_FAILED], 1);

    struct take_res t;
    assert_int_equal(take_report(c, &t), 0);
    assert_int_equal(t.shard, qid_shard(qid));
    struct queue_consumer_report rep;
    assert_int_equal(queue_consumer_report_decode(&rep, t.data, t.len), 0);
    assert_string_equal(rep.qid, qid);
    assert_string_equal(rep.dest, "dest.example");
    assert_true(rep.at_ms > now_ms() - 10000);
    assert_int_equal(rep.n_rcpts, 1);
    assert_int_equal(rep.rcpts[0].rcpt, 1);
    assert_int_equal(rep.rcpts[0].status, QUEUE_RCPT_FAILED);
    /* Control characters of the peer's text do not survive. */
    assert_string_equal(rep.rcpts[0].reason, "550 5.1.1 no such user??EVIL");
    assert_int_equal(rep.record->rcpts[0].status, QUEUE_RCPT_DELIVERED);
    assert_int_equal(rep.record->rcpts[1].status, QUEUE_RCPT_FAILED);
    assert_string_equal(rep.record->env.txid, m->env.txid);
    assert_int_equal(rep.record->attempts, 1);
    queue_consumer_report_cleanup(&rep);

    /* A corrupted item does not decode. */
    t.data[t.len / 2] ^= 0x20;
    assert_int_equal(queue_consumer_report_decode(&rep, t.data, t.len), -EBADMSG);
    assert_int_equal(queue_consumer_report_decode(&rep, t.data, 10), -EBADMSG);
    t.data[t.len / 2] ^= 0x20;

    /* Taken: not handed out twice while its lease lives; acknowledged once. */
    struct take_res t2;
    assert_int_equal(take_report(c, &t2), -ENOENT);
    struct err_res e = {0};
    assert_int_equal(wait_err(queue_consumer_report_ack(c, t.shard, t.data, t.len, err_cb, &e), &e),
                     0);
    struct err_res e2 = {0};
    assert_int_equal(
        wait_err(queue_consumer_report_ack(c, t.shard, t.data, t.len, err_cb, &e2), &e2), -ENOENT);
    free(t.data);
    qmsg_free(m);
    queue_consumer_free(c);
}

/* Recipients for two destinations: each destination is its own item; the message stays until
 * every recipient is final. */
static void test_mixed_rcpts(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    char qid[CMTP_QID_MAX + 1], key[QUEUE_KEY_MAX];
    const char *dom[] = {"dest.example", "dest.example", "mx.other.example", NULL};

    ccfg(&cfg, "nodeA");
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m = msg_to(800, dom);
    send_msg(m, qid);
    unsigned s = qid_shard(qid);
    assert_int_equal(claim(c, 4, &cr), 2);
    struct queue_consumer_lease *a = find_lease(&cr, "dest.example");
    struct queue_consumer_lease *b = find_lease(&cr, "mx.other.example");
    size_t n;
    const size_t *idx = queue_consumer_lease_rcpts(a, &n);
    assert_int_equal(n, 2);
    struct queue_consumer_outcome o[2] = {
        {idx[0], QUEUE_CONSUMER_DELIVERED, "250"},
        {idx[1], QUEUE_CONSUMER_TEMPFAIL, "452 over quota"},
    };
    /* Both completions are in flight at once: the second finds the record changed by the first
     * and applies its outcome to the new one (nothing lost). */
    struct done_res d1 = {0}, d2 = {0};
    idx = queue_consumer_lease_rcpts(b, &n);
    struct queue_consumer_outcome ob = {idx[0], QUEUE_CONSUMER_DELIVERED, "250"};
    assert_int_equal(queue_consumer_done(a, o, 2, done_cb, &d1), 0);
    assert_int_equal(queue_consumer_done(b, &ob, 1, done_cb, &d2), 0);
    assert_true(poll_loop_run_until(fx.pl, done_done, &d1, 5000));
    assert_true(poll_loop_run_until(fx.pl, done_done, &d2, 5000));
    assert_int_equal(d1.r.status, QUEUE_CONSUMER_DONE_OK);
    assert_true(d1.r.rescheduled);
    assert_int_equal(d1.r.pending, 1);
    assert_int_equal(d2.r.status, QUEUE_CONSUMER_DONE_OK);
    assert_false(d2.r.rescheduled);
    assert_false(d2.r.removed);
    struct queue_consumer_stats st;
    queue_consumer_get_stats(c, &st);
    assert_int_equal(st.stale, 1);

    /* The record has both outcomes; the finished destination left its work list. */
    size_t len;
    uint8_t *raw = sync_get(ckey(key, s, "env", qid), &len);
    struct queue_record *rec = malloc(sizeof(*rec));
    assert_int_equal(queue_record_decode(rec, raw, len), QUEUE_RECORD_OK);
    assert_int_equal(rec->rcpts[0].status, QUEUE_RCPT_DELIVERED);
    assert_int_equal(rec->rcpts[1].status, QUEUE_RCPT_PENDING);
    assert_int_equal(rec->rcpts[2].status, QUEUE_RCPT_DELIVERED);
    assert_int_equal(rec->attempts, 2);
    queue_record_cleanup(rec);
    free(rec);
    free(raw);

    /* The retry carries only the pending recipient. */
    struct n_res nr = {0};
    wait_n(queue_consumer_retry(c, qid, n_cb, &nr), &nr);
    assert_int_equal(claim(c, 4, &cr), 1);
    idx = queue_consumer_lease_rcpts(cr.l[0], &n);
    assert_int_equal(n, 1);
    assert_int_equal(idx[0], 1);
    struct queue_consumer_done_result d = finish(cr.l[0], QUEUE_CONSUMER_DELIVERED, NULL);
    assert_true(d.removed);
    assert_int_equal(count_keys_with(qid), 0);
    qmsg_free(m);
    queue_consumer_free(c);
}

/* Past the lifetime, pending recipients expire — at a completion whose retry would pass it, and
 * at a claim that finds an item overdue — and a report item is queued each time. */
static void test_lifetime_expiry(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    char qid[CMTP_QID_MAX + 1], qid2[CMTP_QID_MAX + 1];
    const char *dom[] = {"dest.example", NULL};

    ccfg(&cfg, "nodeA");
    cfg.retry_base_ms = 100;
    cfg.retry_max_ms = 200;
    cfg.lifetime_ms = 300;
    struct queue_consumer *c = copen(&cfg);

    /* 1: expiry at completion. */
    struct qmsg *m = msg_to(500, dom);
    send_msg(m, qid);
    assert_int_equal(claim(c, 4, &cr), 1);
    struct queue_consumer_done_result d = finish(cr.l[0], QUEUE_CONSUMER_TEMPFAIL, "451 later");
    assert_true(d.rescheduled);
    assert_int_equal(d.expired, 0);
    poll_loop_run_for(fx.pl, 160);
    assert_int_equal(claim(c, 4, &cr), 1);
    assert_int_equal(queue_consumer_lease_tries(cr.l[0]), 1);
    /* The next delay (150..200 ms) would pass the lifetime (300 ms, 160 gone): expire now. */
    d = finish(cr.l[0], QUEUE_CONSUMER_TEMPFAIL, "451 still later");
    assert_int_equal(d.status, QUEUE_CONSUMER_DONE_OK);
    assert_int_equal(d.expired, 1);
    assert_false(d.rescheduled);
    assert_true(d.removed);
    assert_true(d.report_queued);
    assert_int_equal(evs.n[QUEUE_CONSUMER_EV_EXPIRED], 1);

    struct take_res t;
    struct queue_consumer_report rep;
    assert_int_equal(take_report(c, &t), 0);
    assert_int_equal(queue_consumer_report_decode(&rep, t.data, t.len), 0);
    assert_string_equal(rep.qid, qid);
    assert_int_equal(rep.n_rcpts, 1);
    assert_int_equal(rep.rcpts[0].status, QUEUE_RCPT_EXPIRED);
    assert_string_equal(rep.rcpts[0].reason, "lifetime exceeded; last error: 451 still later");
    assert_int_equal(rep.record->rcpts[0].status, QUEUE_RCPT_EXPIRED);
    queue_consumer_report_cleanup(&rep);
    free(t.data);

    /* 2: an item found overdue by a claim expires there, never handed out. */
    struct qmsg *m2 = msg_to(500, dom);
    send_msg(m2, qid2);
    assert_int_equal(claim(c, 4, &cr), 1);
    d = finish(cr.l[0], QUEUE_CONSUMER_TEMPFAIL, "421 closing");
    assert_true(d.rescheduled);
    poll_loop_run_for(fx.pl, 320);
    assert_int_equal(claim(c, 4, &cr), 0);
    assert_int_equal(evs.n[QUEUE_CONSUMER_EV_EXPIRED], 2);
    assert_int_equal(take_report(c, &t), 0);
    assert_int_equal(queue_consumer_report_decode(&rep, t.data, t.len), 0);
    assert_string_equal(rep.qid, qid2);
    assert_int_equal(rep.rcpts[0].status, QUEUE_RCPT_EXPIRED);
    assert_string_equal(rep.rcpts[0].reason, "lifetime exceeded");
    queue_consumer_report_cleanup(&rep);
    free(t.data);
    assert_int_equal(count_keys_with(qid2), 0);
    struct queue_consumer_stats st;
    queue_consumer_get_stats(c, &st);
    assert_int_equal(st.expired, 2);
    assert_int_equal(st.reports, 2);
    qmsg_free(m);
    qmsg_free(m2);
    queue_consumer_free(c);
}

/* Two consumers (two connections, nodes A and B) claiming concurrently never hold the same work
 * item at once, and each item is claimed exactly once. */
static void test_two_consumers_exclusive(void **state)
{
    (void)state;
    struct queue_consumer_config ca, cb;
    enum { NMSG = 120 };
    static char qids[NMSG][CMTP_QID_MAX + 1];
    static char live[2 * NMSG][QUEUE_CONSUMER_ITEM_MAX];
    static unsigned claims[2 * NMSG];
    static struct queue_consumer_lease *held[2 * NMSG];
    size_t nheld = 0, nlive = 0;

    ccfg(&ca, "nodeA");
    ccfg(&cb, "nodeB");
    ca.claim_batch = 8;
    cb.claim_batch = 5;
    struct queue_consumer *A = copen(&ca), *B = copen(&cb);
    for (unsigned i = 0; i < NMSG; i++) {
        struct qmsg *m = qmsg_new(&fx, 200, NULL);
        send_msg(m, qids[i]);
        qmsg_free(m);
    }
    unsigned removed = 0, rounds = 0;
    while (removed < NMSG && rounds++ < 200) {
        struct claim_res ra, rb;
        memset(&ra, 0, sizeof(ra));
        memset(&rb, 0, sizeof(rb));
        /* Both in flight together: their scripts interleave in Redis. */
        assert_int_equal(queue_consumer_claim(A, 9, claim_cb, &ra), 0);
        assert_int_equal(queue_consumer_claim(B, 7, claim_cb, &rb), 0);
        assert_true(poll_loop_run_until(fx.pl, claim_done, &ra, 5000));
        assert_true(poll_loop_run_until(fx.pl, claim_done, &rb, 5000));
        struct claim_res *rs[2] = {&ra, &rb};
        for (int w = 0; w < 2; w++) {
            for (size_t i = 0; i < rs[w]->n; i++) {
                struct queue_consumer_lease *l = rs[w]->l[i];
                char name[QUEUE_CONSUMER_ITEM_MAX];
                item_name(name, queue_consumer_lease_qid(l), queue_consumer_lease_dest(l));
                for (size_t k = 0; k < nlive; k++)
                    if (strcmp(live[k], name) == 0)
                        fail_msg("%s leased twice at once", name);
                size_t slot = SIZE_MAX;
                for (size_t k = 0; k < NMSG && slot == SIZE_MAX; k++)
                    if (strcmp(qids[k], queue_consumer_lease_qid(l)) == 0)
                        slot = 2 * k + (strcmp(queue_consumer_lease_dest(l), "dest.example") != 0);
                assert_true(slot != SIZE_MAX);
                claims[slot]++;
                snprintf(live[nlive++], QUEUE_CONSUMER_ITEM_MAX, "%s", name);
                held[nheld++] = l;
            }
        }
        /* Complete the older half of what is held; the rest stays leased into the next round. */
        size_t keep = nheld / 2;
        for (size_t i = 0; i < nheld - keep; i++) {
            struct queue_consumer_done_result d = finish(held[i], QUEUE_CONSUMER_DELIVERED, NULL);
            assert_int_equal(d.status, QUEUE_CONSUMER_DONE_OK);
            removed += d.removed;
        }
        memmove(held, held + (nheld - keep), keep * sizeof(*held));
        memmove(live, live + (nlive - keep), keep * sizeof(*live));
        nheld = nlive = keep;
        if (ra.n == 0 && rb.n == 0) {
            for (size_t i = 0; i < nheld; i++) {
                struct queue_consumer_done_result d =
                    finish(held[i], QUEUE_CONSUMER_DELIVERED, NULL);
                removed += d.removed;
            }
            nheld = nlive = 0;
        }
    }
    assert_int_equal(removed, NMSG);
    for (unsigned i = 0; i < 2 * NMSG; i++)
        assert_int_equal(claims[i], 1);
    assert_int_equal(count_keys_with(":env:"), 0);
    struct queue_consumer_stats sa, sb;
    queue_consumer_get_stats(A, &sa);
    queue_consumer_get_stats(B, &sb);
    assert_int_equal(sa.claimed + sb.claimed, 2 * NMSG);
    assert_true(sa.claimed > 0 && sb.claimed > 0);
    queue_consumer_free(A);
    queue_consumer_free(B);
}

/* A node that stops renewing loses its lease: another node takes the item over (a crashed
 * attempt counted); the late completion of the first is recorded but reported LOST. */
static void test_lease_takeover(void **state)
{
    (void)state;
    struct queue_consumer_config ca, cb;
    struct claim_res ra, rb;
    char qid[CMTP_QID_MAX + 1];
    const char *dom[] = {"dest.example", NULL};

    ccfg(&ca, "nodeA");
    ccfg(&cb, "nodeB");
    ca.lease_ms = cb.lease_ms = 300;
    struct queue_consumer *A = copen(&ca), *B = copen(&cb);
    struct qmsg *m = msg_to(400, dom);
    send_msg(m, qid);
    assert_int_equal(claim(A, 4, &ra), 1);
    /* A renews once: the lease moves on. */
    int64_t e0 = queue_consumer_lease_expires_ms(ra.l[0]);
    poll_loop_run_for(fx.pl, 100);
    struct err_res er = {0};
    assert_int_equal(wait_err(queue_consumer_renew(ra.l[0], err_cb, &er), &er), 0);
    assert_true(queue_consumer_lease_expires_ms(ra.l[0]) >= e0 + 90);
    assert_int_equal(claim(B, 4, &rb), 0);
    /* A stops renewing; after the lease B gets it. */
    poll_loop_run_for(fx.pl, 350);
    assert_int_equal(claim(B, 4, &rb), 1);
    assert_int_equal(queue_consumer_lease_crashes(rb.l[0]), 1);
    assert_string_equal(queue_consumer_lease_qid(rb.l[0]), qid);
    /* A's renewal now fails; B's works. */
    struct err_res ea = {0}, eb = {0};
    assert_int_equal(wait_err(queue_consumer_renew(ra.l[0], err_cb, &ea), &ea), -ESTALE);
    assert_int_equal(wait_err(queue_consumer_renew(rb.l[0], err_cb, &eb), &eb), 0);
    /* A finishes late: its delivery is recorded (the message is done), its lease was lost. */
    struct queue_consumer_done_result d = finish(ra.l[0], QUEUE_CONSUMER_DELIVERED, NULL);
    assert_int_equal(d.status, QUEUE_CONSUMER_DONE_LOST);
    assert_true(d.removed);
    assert_int_equal(evs.n[QUEUE_CONSUMER_EV_LEASE_LOST], 1);
    /* B's completion finds the message gone and cleans its item. */
    d = finish(rb.l[0], QUEUE_CONSUMER_DELIVERED, NULL);
    assert_int_equal(d.status, QUEUE_CONSUMER_DONE_GONE);
    assert_int_equal(count_keys_with(qid), 0);
    char key[QUEUE_KEY_MAX];
    unsigned h = queue_consumer_item_shard("dest.example", 16);
    assert_int_equal(zcard(ckey(key, h, "leases", NULL)), 0);
    assert_int_equal(qfix_exists(&fx, ckey(key, h, "conc", NULL)), 0);
    qmsg_free(m);
    queue_consumer_free(A);
    queue_consumer_free(B);
}

/* Attempts that crash (the lease expires without a completion) are counted; after
 * attempts_crash_max the item is dead-lettered, kept and visible, and retry revives it. */
static void test_crash_dead_letter(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    char qid[CMTP_QID_MAX + 1];
    const char *dom[] = {"dest.example", NULL};

    ccfg(&cfg, "nodeA");
    cfg.lease_ms = 150;
    cfg.attempts_crash_max = 2;
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m = msg_to(400, dom);
    send_msg(m, qid);
    assert_int_equal(claim(c, 4, &cr), 1);
    queue_consumer_lease_abandon(cr.l[0]); /* the worker "crashes" */
    poll_loop_run_for(fx.pl, 200);
    assert_int_equal(claim(c, 4, &cr), 1);
    assert_int_equal(queue_consumer_lease_crashes(cr.l[0]), 1);
    queue_consumer_lease_abandon(cr.l[0]);
    poll_loop_run_for(fx.pl, 200);
    assert_int_equal(claim(c, 4, &cr), 0);
    assert_int_equal(evs.n[QUEUE_CONSUMER_EV_DEAD], 1);
    assert_int_equal(evs.count[QUEUE_CONSUMER_EV_DEAD], 2);
    struct queue_consumer_stats st;
    queue_consumer_get_stats(c, &st);
    assert_int_equal(st.dead, 1);

    /* Kept (record and body); test_dead_listed checks the listing. */
    char key[QUEUE_KEY_MAX];
    assert_int_equal(qfix_exists(&fx, ckey(key, qid_shard(qid), "env", qid)), 1);
    assert_int_equal(qfix_exists(&fx, ckey(key, qid_shard(qid), "body", qid)), 1);
    /* Revive: due again with the crash count reset. */
    struct n_res nr = {0};
    wait_n(queue_consumer_retry(c, qid, n_cb, &nr), &nr);
    assert_int_equal(nr.n, 1);
    assert_int_equal(claim(c, 4, &cr), 1);
    assert_int_equal(queue_consumer_lease_crashes(cr.l[0]), 0);
    struct queue_consumer_done_result d = finish(cr.l[0], QUEUE_CONSUMER_DELIVERED, NULL);
    assert_true(d.removed);
    qmsg_free(m);
    queue_consumer_free(c);
}

struct list_res {
    bool done;
    int err;
    size_t n;
    bool trunc;
    struct queue_consumer_entry e[16];
};

static void list_cb(void *arg, int err, const struct queue_consumer_entry *e, size_t n,
                    bool truncated)
{
    struct list_res *r = arg;
    r->done = true;
    r->err = err;
    r->n = n;
    r->trunc = truncated;
    assert_true(n <= 16);
    memcpy(r->e, e, n * sizeof(*e));
}

static bool list_done(void *arg)
{
    return ((struct list_res *)arg)->done;
}

static size_t list(struct queue_consumer *c, const char *dest, enum queue_consumer_state_kind st,
                   size_t limit, struct list_res *r)
{
    struct queue_consumer_filter f = {.dest = dest, .state = st, .limit = limit};
    memset(r, 0, sizeof(*r));
    assert_int_equal(queue_consumer_list(c, &f, list_cb, r), 0);
    if (!poll_loop_run_until(fx.pl, list_done, r, 5000))
        fail_msg("list never answered");
    assert_int_equal(r->err, 0);
    return r->n;
}

/* Dead-lettered items are listed with their reason. */
static void test_dead_listed(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    struct list_res lr;
    char qid[CMTP_QID_MAX + 1];
    const char *dom[] = {"dest.example", NULL};

    ccfg(&cfg, "nodeA");
    cfg.lease_ms = 100;
    cfg.attempts_crash_max = 1;
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m = msg_to(400, dom);
    send_msg(m, qid);
    assert_int_equal(claim(c, 4, &cr), 1);
    queue_consumer_lease_abandon(cr.l[0]);
    poll_loop_run_for(fx.pl, 150);
    assert_int_equal(claim(c, 4, &cr), 0);
    assert_int_equal(list(c, NULL, QUEUE_CONSUMER_DEAD, 10, &lr), 1);
    assert_string_equal(lr.e[0].qid, qid);
    assert_string_equal(lr.e[0].dest, "dest.example");
    assert_int_equal(lr.e[0].state, QUEUE_CONSUMER_DEAD);
    assert_string_equal(lr.e[0].info, "lease expired 1 times without completion");
    assert_true(lr.e[0].at_ms > now_ms() - 5000);
    assert_int_equal(list(c, NULL, QUEUE_CONSUMER_SCHEDULED, 10, &lr), 0);
    /* retry of everything revives it. */
    struct n_res nr = {0};
    wait_n(queue_consumer_retry(c, NULL, n_cb, &nr), &nr);
    assert_int_equal(nr.err, 0);
    assert_int_equal(nr.n, 1);
    assert_int_equal(list(c, NULL, QUEUE_CONSUMER_DEAD, 10, &lr), 0);
    assert_int_equal(claim(c, 4, &cr), 1);
    finish(cr.l[0], QUEUE_CONSUMER_DELIVERED, NULL);
    qmsg_free(m);
    queue_consumer_free(c);
}

/* Held messages are not claimed — whether held before their split or after — and a release makes
 * them due. */
static void test_hold_release(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    struct list_res lr;
    char q1[CMTP_QID_MAX + 1], q2[CMTP_QID_MAX + 1];

    ccfg(&cfg, "nodeA");
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m1 = qmsg_new(&fx, 300, NULL), *m2 = qmsg_new(&fx, 300, NULL);
    send_msg(m1, q1);
    /* m1 is split and leased, then handed back and held. */
    assert_int_equal(claim(c, 4, &cr), 2);
    for (size_t i = 0; i < 2; i++) {
        struct err_res e = {0};
        assert_int_equal(wait_err(queue_consumer_lease_return(cr.l[i], err_cb, &e), &e), 0);
    }
    struct n_res nr = {0};
    wait_n(queue_consumer_hold(c, q1, n_cb, &nr), &nr);
    assert_int_equal(nr.err, 0);
    assert_int_equal(nr.n, 2);
    /* m2 is held before it was ever claimed (not split yet). */
    send_msg(m2, q2);
    struct n_res nr2 = {0};
    wait_n(queue_consumer_hold(c, q2, n_cb, &nr2), &nr2);
    assert_int_equal(nr2.n, 1);
    assert_int_equal(claim(c, 10, &cr), 0);
    assert_int_equal(list(c, NULL, QUEUE_CONSUMER_HELD, 10, &lr), 3);
    assert_int_equal(list(c, "", QUEUE_CONSUMER_HELD, 10, &lr), 1);
    assert_string_equal(lr.e[0].qid, q2);
    assert_string_equal(lr.e[0].dest, "");
    /* A hold of an unknown message says so. */
    struct n_res nr3 = {0};
    wait_n(queue_consumer_hold(c, "0000000000ZZZZZZZZZZZZ-3", n_cb, &nr3), &nr3);
    assert_int_equal(nr3.err, -ENOENT);

    struct n_res r1 = {0}, r2 = {0};
    wait_n(queue_consumer_release(c, q1, n_cb, &r1), &r1);
    assert_int_equal(r1.n, 2);
    wait_n(queue_consumer_release(c, q2, n_cb, &r2), &r2);
    assert_int_equal(r2.n, 1);
    assert_int_equal(claim(c, 10, &cr), 4);
    unsigned removed = 0;
    for (size_t i = 0; i < cr.n; i++)
        removed += finish(cr.l[i], QUEUE_CONSUMER_DELIVERED, NULL).removed;
    assert_int_equal(removed, 2);
    qmsg_free(m1);
    qmsg_free(m2);
    queue_consumer_free(c);
}

/* The per-destination limit counts live leases of every node: at the limit, further items of
 * that destination stay scheduled while other destinations flow. */
static void test_concurrency_limit(void **state)
{
    (void)state;
    struct queue_consumer_config ca, cb;
    struct claim_res ra, rb;
    char qid[CMTP_QID_MAX + 1], key[QUEUE_KEY_MAX];
    const char *busy[] = {"busy.example", NULL};
    const char *free_[] = {"free.example", NULL};

    ccfg(&ca, "nodeA");
    ccfg(&cb, "nodeB");
    ca.concurrency_per_dest = cb.concurrency_per_dest = 2;
    struct queue_consumer *A = copen(&ca), *B = copen(&cb);
    for (int i = 0; i < 6; i++) {
        struct qmsg *m = msg_to(100, busy);
        send_msg(m, qid);
        qmsg_free(m);
    }
    for (int i = 0; i < 2; i++) {
        struct qmsg *m = msg_to(100, free_);
        send_msg(m, qid);
        qmsg_free(m);
    }
    struct queue_consumer_stats st0, st1;
    queue_consumer_get_stats(A, &st0);
    assert_int_equal(claim(A, 20, &ra), 4); /* 2 busy + 2 free */
    queue_consumer_get_stats(A, &st1);
    /* The split leases at once only below half the limit: one item of each destination; the
     * second of each comes from a CLAIM of the scheduled ones. */
    assert_int_equal(st1.adopt_leased - st0.adopt_leased, 2);
    unsigned nbusy = 0;
    for (size_t i = 0; i < ra.n; i++)
        nbusy += strcmp(queue_consumer_lease_dest(ra.l[i]), "busy.example") == 0;
    assert_int_equal(nbusy, 2);
    assert_int_equal(claim(B, 20, &rb), 0); /* the limit holds for node B too */
    unsigned h = queue_consumer_item_shard("busy.example", 16);
    const char *hg[] = {"HGET", ckey(key, h, "conc", NULL), "busy.example"};
    redisReply *r = qfix_cmd(&fx, 3, hg);
    assert_string_equal(r->str, "2");
    freeReplyObject(r);
    assert_int_equal(zcard(ckey(key, h, "sched", NULL)), 4); /* still scheduled */

    /* One busy delivery ends: exactly one more may start, on either node. */
    for (size_t i = 0; i < ra.n; i++) {
        if (strcmp(queue_consumer_lease_dest(ra.l[i]), "busy.example") == 0) {
            finish(ra.l[i], QUEUE_CONSUMER_DELIVERED, NULL);
            ra.l[i] = NULL;
            break;
        }
    }
    assert_int_equal(claim(B, 20, &rb), 1);
    assert_string_equal(queue_consumer_lease_dest(rb.l[0]), "busy.example");
    struct claim_res rc2;
    assert_int_equal(claim(A, 20, &rc2), 0);
    /* Drain everything. */
    unsigned done = 1;
    finish(rb.l[0], QUEUE_CONSUMER_DELIVERED, NULL);
    done++;
    for (size_t i = 0; i < ra.n; i++) {
        if (ra.l[i] != NULL) {
            finish(ra.l[i], QUEUE_CONSUMER_DELIVERED, NULL);
            done++;
        }
    }
    for (int round = 0; round < 10 && done < 8; round++) {
        struct claim_res x;
        claim(round % 2 ? A : B, 20, &x);
        assert_true(x.n <= 2);
        for (size_t i = 0; i < x.n; i++) {
            finish(x.l[i], QUEUE_CONSUMER_DELIVERED, NULL);
            done++;
        }
    }
    assert_int_equal(done, 8);
    assert_int_equal(qfix_exists(&fx, ckey(key, h, "conc", NULL)), 0);
    queue_consumer_free(A);
    queue_consumer_free(B);
}

/* A destination at its limit whose backlog is longer than a claim looks at (700 items, older
 * than everything else in its home shard) no longer hides what lies behind it: a claim returns the
 * end of the blocked run it saw, the next one starts behind it, and the items of another
 * destination of the same home shard are leased within a few claims (before, never while the
 * backlog was longer than the scan). A slot freed for the blocked destination is served from the
 * head of the run: its oldest item. */
static void test_blocked_run(void **state)
{
    (void)state;
    enum { BACKLOG = 700 };
    struct queue_consumer_config ca, cb;
    struct claim_res cr;
    char qid[CMTP_QID_MAX + 1], key[QUEUE_KEY_MAX], sched[QUEUE_KEY_MAX], blocked[64];
    char oldest[QUEUE_CONSUMER_ITEM_MAX], second[QUEUE_CONSUMER_ITEM_MAX];
    const char *open_[] = {"open.example", NULL};
    unsigned h = queue_consumer_item_shard("open.example", 16);

    for (int i = 0;; i++) {
        snprintf(blocked, sizeof(blocked), "blocked%d.example", i);
        if (queue_consumer_item_shard(blocked, 16) == h)
            break;
    }
    ckey(sched, h, "sched", NULL);
    int64_t t0 = now_ms() - 600000;
    for (int i = 0; i < BACKLOG; i++) {
        char item[QUEUE_CONSUMER_ITEM_MAX], score[24];
        snprintf(item, sizeof(item), "01JBLKD%011d-%u/%s", i, h, blocked);
        snprintf(score, sizeof(score), "%lld", (long long)(t0 + i));
        if (i == 0)
            snprintf(oldest, sizeof(oldest), "%s", item);
        if (i == 1)
            snprintf(second, sizeof(second), "%s", item);
        const char *za[] = {"ZADD", sched, score, item};
        qfix_int(&fx, 4, za);
    }
    const char *hc[] = {"HSET", ckey(key, h, "conc", NULL), blocked, "4"};
    qfix_int(&fx, 4, hc);
    ccfg(&ca, "nodeA");
    ccfg(&cb, "nodeB");
    ca.concurrency_per_dest = cb.concurrency_per_dest = 4;
    struct queue_consumer *A = copen(&ca), *B = copen(&cb);
    /* Three messages to open.example, split by B, whose items are put back: due now, behind the
     * backlog. */
    for (int i = 0; i < 3; i++) {
        struct qmsg *m = msg_to(300, open_);
        send_msg(m, qid);
        qmsg_free(m);
    }
    assert_int_equal(claim(B, 1, &cr), 1);
    struct err_res e = {0};
    assert_int_equal(wait_err(queue_consumer_lease_return(cr.l[0], err_cb, &e), &e), 0);
    assert_int_equal(zcard(sched), BACKLOG + 3);

    size_t got = 0;
    struct queue_consumer_lease *l[3];
    for (int k = 0; k < 4 && got < 3; k++) {
        claim(A, 8, &cr);
        for (size_t i = 0; i < cr.n; i++) {
            assert_string_equal(queue_consumer_lease_dest(cr.l[i]), "open.example");
            assert_true(got < 3);
            l[got++] = cr.l[i];
        }
    }
    assert_int_equal(got, 3);
    assert_int_equal(zcard(sched), BACKLOG);
    /* A slot frees for the blocked destination: its oldest item is leased (and dropped: this
     * test gave the backlog no records). */
    const char *hf[] = {"HSET", ckey(key, h, "conc", NULL), blocked, "3"};
    qfix_int(&fx, 4, hf);
    assert_int_equal(claim(A, 8, &cr), 0);
    assert_int_equal(evs.n[QUEUE_CONSUMER_EV_ORPHAN], 1);
    assert_true(zscore(sched, oldest) < 0);
    assert_true(zscore(sched, second) > 0);
    assert_int_equal(zcard(sched), BACKLOG - 1);
    for (size_t i = 0; i < got; i++)
        finish(l[i], QUEUE_CONSUMER_DELIVERED, NULL);
    queue_consumer_free(A);
    queue_consumer_free(B);
}

/* Corrupt records are quarantined with the reason, never delivered, never a crash; the others
 * still flow. Both when a new message is split and when a split item is claimed. */
static void test_quarantine(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    char good[CMTP_QID_MAX + 1], other[CMTP_QID_MAX + 1], key[QUEUE_KEY_MAX];
    const char *dom[] = {"dest.example", NULL};

    ccfg(&cfg, "nodeA");
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m = msg_to(600, dom), *m2 = msg_to(600, dom);
    send_msg(m, good);
    send_msg(m2, other);
    unsigned s = qid_shard(good);
    size_t len;
    uint8_t *rec = sync_get(ckey(key, s, "env", good), &len);
    uint8_t *buf = malloc(len);

    struct {
        const char *qid;
        const char *reason;
    } bad[] = {
        {"0000000001GARBAGE00000-3", "bad-magic"},    {"0000000002TRUNCATED000-3", "truncated"},
        {"0000000003BADCRC000000-5", "bad-checksum"}, {"0000000004BADVERSION00-7", "bad-version"},
        {"0000000005OTHERQID0000-7", "qid-mismatch"},
    };
    for (size_t i = 0; i < 5; i++) {
        unsigned bs = qid_shard(bad[i].qid);
        size_t bl = len;
        memcpy(buf, rec, len);
        if (i == 0)
            memset(buf, 'x', 40), bl = 40;
        else if (i == 1)
            bl = len - 10;
        else if (i == 2)
            buf[len / 2] ^= 0x01;
        else if (i == 3)
            buf[5] = 2;
        sync_set(ckey(key, bs, "env", bad[i].qid), buf, bl);
        const char *za[] = {"ZADD", ckey(key, bs, "sched", NULL), "1", bad[i].qid};
        sync_cmd(4, za);
    }
    assert_int_equal(claim(c, 10, &cr), 2); /* the two good messages */
    for (size_t i = 0; i < 5; i++) {
        unsigned bs = qid_shard(bad[i].qid);
        const char *hg[] = {"HGET", ckey(key, bs, "qreason", NULL), bad[i].qid};
        redisReply *r = qfix_cmd(&fx, 3, hg);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        assert_string_equal(r->str, bad[i].reason);
        freeReplyObject(r);
        assert_true(zscore(ckey(key, bs, "quarantine", NULL), bad[i].qid) > 0);
        assert_int_equal(qfix_exists(&fx, ckey(key, bs, "env", bad[i].qid)), 0);
        assert_int_equal(qfix_exists(&fx, ckey(key, bs, "qenv", bad[i].qid)), 1);
        assert_true(zscore(ckey(key, bs, "sched", NULL), bad[i].qid) < 0);
        assert_true(zscore(ckey(key, bs, "leases", NULL), bad[i].qid) < 0);
    }
    assert_int_equal(evs.n[QUEUE_CONSUMER_EV_QUARANTINED], 5);

    /* A record that goes bad after its split is quarantined at the item's claim. */
    struct queue_consumer_lease *lg = NULL, *lo = NULL;
    for (size_t i = 0; i < 2; i++) {
        if (strcmp(queue_consumer_lease_qid(cr.l[i]), good) == 0)
            lg = cr.l[i];
        else
            lo = cr.l[i];
    }
    assert_non_null(lg);
    assert_non_null(lo);
    struct err_res e = {0};
    assert_int_equal(wait_err(queue_consumer_lease_return(lo, err_cb, &e), &e), 0);
    unsigned so = qid_shard(other);
    size_t olen;
    uint8_t *orec = sync_get(ckey(key, so, "env", other), &olen);
    orec[olen - 1] ^= 0x80; /* the CRC */
    sync_set(ckey(key, so, "env", other), orec, olen);
    assert_int_equal(claim(c, 10, &cr), 0);
    const char *hg[] = {"HGET", ckey(key, so, "qreason", NULL), other};
    redisReply *r = qfix_cmd(&fx, 3, hg);
    assert_string_equal(r->str, "bad-checksum");
    freeReplyObject(r);
    assert_int_equal(evs.n[QUEUE_CONSUMER_EV_QUARANTINED], 6);
    assert_true(check_key_tags() >= 15); /* quarantine, qreason, qenv, leases, lease, conc... */
    unsigned h = queue_consumer_item_shard("dest.example", 16);
    assert_int_equal(qfix_exists(&fx, ckey(key, h, "conc", NULL)), 1); /* lg still holds one */

    /* The good one is delivered; the quarantined ones are listed and can be deleted. */
    assert_true(finish(lg, QUEUE_CONSUMER_DELIVERED, NULL).removed);
    struct list_res lr;
    assert_int_equal(list(c, NULL, QUEUE_CONSUMER_QUARANTINED, 16, &lr), 6);
    struct n_res nr = {0};
    wait_n(queue_consumer_delete(c, bad[2].qid, n_cb, &nr), &nr);
    assert_int_equal(nr.err, 0);
    assert_true(nr.n >= 2);
    assert_int_equal(count_keys_with(bad[2].qid), 0);
    assert_int_equal(list(c, NULL, QUEUE_CONSUMER_QUARANTINED, 16, &lr), 5);
    free(rec);
    free(buf);
    free(orec);
    qmsg_free(m);
    qmsg_free(m2);
    queue_consumer_free(c);
}

struct body_rd {
    bool done;
    int err;
    bool last;
    size_t len;
    uint8_t *dst;
    size_t off, cap, chunks, max_chunk;
};

static void body_cb(void *arg, int err, const uint8_t *data, size_t len, bool last)
{
    struct body_rd *b = arg;
    b->done = true;
    b->err = err;
    b->last = last;
    b->len = len;
    if (err == 0) {
        assert_true(b->off + len <= b->cap);
        memcpy(b->dst + b->off, data, len);
        b->off += len;
        b->chunks++;
        if (len > b->max_chunk)
            b->max_chunk = len;
    }
}

static bool body_done(void *arg)
{
    return ((struct body_rd *)arg)->done;
}

/* A 5 MiB body is read back chunk by chunk, one at a time, byte-exact. */
static void test_body_iterator(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    char qid[CMTP_QID_MAX + 1], key[QUEUE_KEY_MAX];
    const char *dom[] = {"dest.example", NULL};

    ccfg(&cfg, "nodeA");
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m = msg_to(5u * 1024 * 1024 + 123, dom);
    send_msg(m, qid);
    assert_int_equal(claim(c, 4, &cr), 1);
    struct queue_consumer_body *b = queue_consumer_body_open(cr.l[0]);
    assert_non_null(b);
    struct body_rd rd = {.dst = malloc(m->len), .cap = m->len};
    while (!rd.last) {
        rd.done = false;
        assert_int_equal(queue_consumer_body_next(b, body_cb, &rd), 0);
        /* One read at a time: the next waits for the caller. */
        assert_int_equal(queue_consumer_body_next(b, body_cb, &rd), -EBUSY);
        assert_true(poll_loop_run_until(fx.pl, body_done, &rd, 5000));
        assert_int_equal(rd.err, 0);
    }
    assert_int_equal(rd.off, m->len);
    assert_memory_equal(rd.dst, m->body, m->len);
    assert_int_equal(rd.chunks, (m->len + QUEUE_CHUNK_SIZE_DEFAULT - 1) / QUEUE_CHUNK_SIZE_DEFAULT);
    assert_true(rd.max_chunk <= QUEUE_CHUNK_SIZE_DEFAULT);
    assert_int_equal(queue_consumer_body_next(b, body_cb, &rd), -ENODATA);
    queue_consumer_body_close(b);

    /* A body that went missing (or short) is an error, not an early end. */
    const char *lt[] = {"LTRIM", ckey(key, qid_shard(qid), "body", qid), "0", "2"};
    sync_cmd(4, lt);
    b = queue_consumer_body_open(cr.l[0]);
    struct body_rd rd2 = {.dst = malloc(m->len), .cap = m->len};
    for (int i = 0; i < 4; i++) {
        rd2.done = false;
        assert_int_equal(queue_consumer_body_next(b, body_cb, &rd2), 0);
        assert_true(poll_loop_run_until(fx.pl, body_done, &rd2, 5000));
        if (i < 3)
            assert_int_equal(rd2.err, 0);
        else
            assert_int_equal(rd2.err, -ENOENT);
    }
    /* Closing with a read in flight drops it. */
    rd2.done = false;
    rd2.off = 0;
    queue_consumer_body_close(b);
    b = queue_consumer_body_open(cr.l[0]);
    assert_int_equal(queue_consumer_body_next(b, body_cb, &rd2), 0);
    queue_consumer_body_close(b);
    poll_loop_run_for(fx.pl, 50);
    assert_false(rd2.done);
    finish(cr.l[0], QUEUE_CONSUMER_DELIVERED, NULL);
    free(rd.dst);
    free(rd2.dst);
    qmsg_free(m);
    queue_consumer_free(c);
}

/* A small body comes with its record: reading it (twice, as a transport that rewinds does) sends
 * no command. A claim of messages spread over every shard costs a few round trips, not one per
 * shard. */
static void test_claim_batched(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct queue_consumer_stats st0, st1;
    struct claim_res cr;
    char qid[CMTP_QID_MAX + 1];
    const char *dom[] = {"dest.example", "mx.other.example", NULL};

    ccfg(&cfg, "nodeA");
    cfg.concurrency_per_dest = 100;
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m[40];
    for (int i = 0; i < 40; i++) {
        m[i] = msg_to(1000 + (size_t)i, dom);
        send_msg(m[i], qid);
    }
    queue_consumer_get_stats(c, &st0);
    assert_int_equal(claim(c, 80, &cr), 80); /* 40 messages split, 2 items each, one call */
    queue_consumer_get_stats(c, &st1);
    /* One round: one CLAIM per shard, one ADOPT per home shard (which leases the 80 items at
     * once: 40 per destination is below half its limit of 100), one FINISHN per message shard;
     * no second round, no READ (the records came with the split). */
    assert_true(st1.cmds_sent - st0.cmds_sent <= 16 + 2 + 16);
    assert_int_equal(st1.adopt_leased - st0.adopt_leased, 80);
    assert_int_equal(st1.prefetched - st0.prefetched, 80);
    for (size_t i = 0; i < cr.n; i++) {
        const struct queue_record *rec = queue_consumer_lease_record(cr.l[i]);
        size_t len = (size_t)rec->env.size;
        for (int pass = 0; pass < 2; pass++) {
            struct queue_consumer_body *b = queue_consumer_body_open(cr.l[i]);
            struct body_rd rd = {.dst = malloc(len), .cap = len};
            queue_consumer_get_stats(c, &st0);
            assert_int_equal(queue_consumer_body_next(b, body_cb, &rd), 0);
            assert_false(rd.done); /* from the loop, never from inside the call */
            assert_int_equal(queue_consumer_body_next(b, body_cb, &rd), -EBUSY);
            assert_true(poll_loop_run_until(fx.pl, body_done, &rd, 5000));
            queue_consumer_get_stats(c, &st1);
            assert_int_equal(rd.err, 0);
            assert_true(rd.last);
            assert_int_equal(rd.off, len);
            assert_int_equal(st1.cmds_sent, st0.cmds_sent); /* no LINDEX */
            bool found = false;
            for (int k = 0; k < 40 && !found; k++)
                found = m[k]->len == len && memcmp(rd.dst, m[k]->body, len) == 0;
            assert_true(found);
            assert_int_equal(queue_consumer_body_next(b, body_cb, &rd), -ENODATA);
            queue_consumer_body_close(b);
            free(rd.dst);
        }
    }
    /* A body closed while its prefetched chunk waits for the loop: dropped, no callback. */
    struct queue_consumer_body *b = queue_consumer_body_open(cr.l[0]);
    struct body_rd rd = {.dst = malloc(4096), .cap = 4096};
    assert_int_equal(queue_consumer_body_next(b, body_cb, &rd), 0);
    queue_consumer_body_close(b);
    poll_loop_run_for(fx.pl, 50);
    assert_false(rd.done);
    free(rd.dst);
    for (size_t i = 0; i < cr.n; i++)
        finish(cr.l[i], QUEUE_CONSUMER_DELIVERED, NULL);
    assert_int_equal(count_keys_with(":env:"), 0);
    for (int i = 0; i < 40; i++)
        qmsg_free(m[i]);
    queue_consumer_free(c);
}

/* Completions made together finish their items together: 80 items of 40 messages (two
 * destinations, two home shards) completed at once are finished by a few FINISHN scripts, one per
 * home shard and batch of replies, not one FINISH each; each completion still gets its own
 * result: 10 temporary failures are rescheduled (one more try, the reason kept), one whose lease
 * was taken over meanwhile is DONE_LOST and leaves that lease alone, the rest are finished. */
static void test_done_batched(void **state)
{
    (void)state;
    enum { N = 40, L = 2 * N };
    struct queue_consumer_config cfg;
    struct queue_consumer_stats st0, st1;
    struct claim_res cr;
    struct done_res d[L];
    char qid[CMTP_QID_MAX + 1], key[QUEUE_KEY_MAX], item[QUEUE_CONSUMER_ITEM_MAX];
    const char *dom[] = {"dest.example", "mx.other.example", NULL};
    unsigned h0 = queue_consumer_item_shard(dom[0], 16), h1 = queue_consumer_item_shard(dom[1], 16);

    assert_int_not_equal(h0, h1);
    ccfg(&cfg, "nodeA");
    cfg.concurrency_per_dest = 100;
    struct queue_consumer *c = copen(&cfg);
    for (int i = 0; i < N; i++) {
        struct qmsg *m = msg_to(500 + (size_t)i, dom);
        send_msg(m, qid);
        qmsg_free(m);
    }
    assert_int_equal(claim(c, L, &cr), L);
    /* Another node took the lease of the last item over. */
    struct queue_consumer_lease *taken = cr.l[L - 1];
    char tdest[CMTP_DOMAIN_MAX + 1];
    snprintf(tdest, sizeof(tdest), "%s", queue_consumer_lease_dest(taken));
    unsigned th = queue_consumer_item_shard(tdest, 16);
    item_name(item, queue_consumer_lease_qid(taken), tdest);
    const char *steal[] = {"HSET", ckey(key, th, "lease", NULL), item, "nodeB#00#1"};
    qfix_int(&fx, 4, steal);
    int64_t t0 = now_ms();
    queue_consumer_get_stats(c, &st0);
    for (size_t i = 0; i < L; i++) {
        size_t n;
        const size_t *idx = queue_consumer_lease_rcpts(cr.l[i], &n);
        struct queue_consumer_outcome o = {
            idx[0], i < 10 ? QUEUE_CONSUMER_TEMPFAIL : QUEUE_CONSUMER_DELIVERED, "451 busy"};
        assert_int_equal(n, 1);
        d[i].done = false;
        assert_int_equal(queue_consumer_done(cr.l[i], &o, 1, done_cb, &d[i]), 0);
    }
    for (size_t i = 0; i < L; i++)
        if (!poll_loop_run_until(fx.pl, done_done, &d[i], 5000))
            fail_msg("done callback never fired");
    queue_consumer_get_stats(c, &st1);
    assert_int_equal(st1.finish_items - st0.finish_items, L);
    assert_true(st1.finish_scripts - st0.finish_scripts >= 2);
    assert_true(st1.finish_scripts - st0.finish_scripts <= L / 8);
    for (size_t i = 0; i < L; i++) {
        if (i == L - 1) {
            assert_int_equal(d[i].r.status, QUEUE_CONSUMER_DONE_LOST);
        } else {
            assert_int_equal(d[i].r.status, QUEUE_CONSUMER_DONE_OK);
            assert_int_equal(d[i].r.rescheduled, i < 10);
            if (i < 10)
                assert_true(d[i].r.next_attempt_ms > t0);
        }
    }
    assert_int_equal(evs.n[QUEUE_CONSUMER_EV_LEASE_LOST], 1);
    /* Left: the 10 rescheduled items (tries 1, the reason kept) and the taken-over lease. */
    assert_int_equal(zcard(ckey(key, h0, "sched", NULL)) + zcard(ckey(key, h1, "sched", NULL)), 10);
    assert_int_equal(zcard(ckey(key, h0, "leases", NULL)) + zcard(ckey(key, h1, "leases", NULL)),
                     1);
    assert_int_equal(count_keys_with(":it:"), 10);
    const char *conc[] = {"HGET", ckey(key, th, "conc", NULL), tdest};
    redisReply *r = qfix_cmd(&fx, 3, conc);
    assert_string_equal(r->str, "1");
    freeReplyObject(r);
    assert_int_equal(qfix_exists(&fx, ckey(key, th == h0 ? h1 : h0, "conc", NULL)), 0);
    queue_consumer_free(c);
}

struct bulk_res {
    bool done;
    int err;
    size_t n;
    struct queue_consumer_lease **l;
};

static void bulk_cb(void *arg, int err, struct queue_consumer_lease **leases, size_t n)
{
    struct bulk_res *r = arg;
    r->done = true;
    r->err = err;
    r->n = n;
    r->l = malloc((n + 1) * sizeof(*r->l));
    assert_non_null(r->l);
    memcpy(r->l, leases, n * sizeof(*leases));
}

static bool bulk_done(void *arg)
{
    return ((struct bulk_res *)arg)->done;
}

/* bulk_claim runs one claim of up to |max| leases (any number: the array is the callback's). */
static void bulk_claim(struct queue_consumer *c, size_t max, struct bulk_res *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(queue_consumer_claim(c, max, bulk_cb, r), 0);
    assert_true(poll_loop_run_until(fx.pl, bulk_done, r, 10000));
    assert_int_equal(r->err, 0);
}

/* bulk_check checks that |n| leases of "bulk.example" are live in its home shard and that the
 * lease set, the token hash and the concurrency counter agree, each item leased once. */
static void bulk_check(const struct bulk_res *r, size_t n)
{
    char key[QUEUE_KEY_MAX], item[QUEUE_CONSUMER_ITEM_MAX];
    unsigned h = queue_consumer_item_shard("bulk.example", 16);
    assert_int_equal(zcard(ckey(key, h, "leases", NULL)), n);
    const char *hlen[] = {"HLEN", ckey(key, h, "lease", NULL)};
    assert_int_equal(qfix_int(&fx, 2, hlen), n);
    const char *conc[] = {"HGET", ckey(key, h, "conc", NULL), "bulk.example"};
    redisReply *cr = qfix_cmd(&fx, 3, conc);
    assert_int_equal(cr->type, REDIS_REPLY_STRING);
    assert_int_equal(atoi(cr->str), n);
    freeReplyObject(cr);
    for (size_t i = 0; i < r->n; i++) {
        item_name(item, queue_consumer_lease_qid(r->l[i]), "bulk.example");
        assert_true(zscore(ckey(key, h, "leases", NULL), item) > 0);
        for (size_t k = 0; k < i; k++)
            assert_string_not_equal(queue_consumer_lease_qid(r->l[k]),
                                    queue_consumer_lease_qid(r->l[i]));
    }
}

/* Scripts leasing more entries than one batched write takes (512): 600 messages to one
 * destination are split by a claim of one (ADOPT leases one item at once and schedules the other
 * 599), then a second claim leases the 599 in one CLAIM script; 600 more are split and leased by
 * their ADOPT directly (the destination is below half its concurrency limit). Every item is
 * leased once, the lease set, token hash and concurrency counter agree, and completing them all
 * leaves nothing behind. */
static void test_claim_bulk(void **state)
{
    (void)state;
    enum { N = 600 };
    struct queue_consumer_config cfg;
    struct queue_consumer_stats st0, st1;
    struct bulk_res r1, r2, r3;
    char qid[CMTP_QID_MAX + 1];
    const char *dom[] = {"bulk.example", NULL};

    ccfg(&cfg, "nodeA");
    cfg.concurrency_per_dest = 2000;
    cfg.claim_batch = QUEUE_CONSUMER_BATCH_MAX;
    struct queue_consumer *c = copen(&cfg);
    for (int i = 0; i < N; i++) {
        struct qmsg *m = msg_to(100 + (size_t)i % 50, dom);
        send_msg(m, qid);
        qmsg_free(m);
    }
    queue_consumer_get_stats(c, &st0);
    bulk_claim(c, 1, &r1);
    assert_int_equal(r1.n, 1);
    bulk_claim(c, N, &r2);
    assert_int_equal(r2.n, N - 1);
    queue_consumer_get_stats(c, &st1);
    assert_int_equal(st1.adopt_leased - st0.adopt_leased, 1);
    assert_int_equal(st1.adopted - st0.adopted, N);
    bulk_check(&r2, N);
    for (size_t i = 0; i < r1.n; i++)
        finish(r1.l[i], QUEUE_CONSUMER_DELIVERED, NULL);
    for (size_t i = 0; i < r2.n; i++)
        finish(r2.l[i], QUEUE_CONSUMER_DELIVERED, NULL);
    free(r1.l);
    free(r2.l);
    assert_int_equal(count_keys_with(":env:"), 0);
    assert_int_equal(count_keys_with(":conc"), 0);

    for (int i = 0; i < N; i++) {
        struct qmsg *m = msg_to(100 + (size_t)i % 50, dom);
        send_msg(m, qid);
        qmsg_free(m);
    }
    queue_consumer_get_stats(c, &st0);
    bulk_claim(c, N, &r3);
    assert_int_equal(r3.n, N);
    queue_consumer_get_stats(c, &st1);
    assert_int_equal(st1.adopt_leased - st0.adopt_leased, N);
    assert_int_equal(st1.prefetched - st0.prefetched, N); /* no READ */
    bulk_check(&r3, N);
    /* All 600 completed at once: their items are finished in batches of at most 256 (a full
     * batch goes at once, the rest at the end of the loop iteration), each with its result. */
    struct done_res *dr = calloc(N, sizeof(*dr));
    assert_non_null(dr);
    queue_consumer_get_stats(c, &st0);
    for (size_t i = 0; i < r3.n; i++) {
        size_t nr;
        const size_t *idx = queue_consumer_lease_rcpts(r3.l[i], &nr);
        struct queue_consumer_outcome o = {idx[0], QUEUE_CONSUMER_DELIVERED, NULL};
        assert_int_equal(nr, 1);
        assert_int_equal(queue_consumer_done(r3.l[i], &o, 1, done_cb, &dr[i]), 0);
    }
    for (size_t i = 0; i < N; i++) {
        assert_true(poll_loop_run_until(fx.pl, done_done, &dr[i], 10000));
        assert_int_equal(dr[i].r.status, QUEUE_CONSUMER_DONE_OK);
        assert_true(dr[i].r.removed);
    }
    queue_consumer_get_stats(c, &st1);
    assert_int_equal(st1.finish_items - st0.finish_items, N);
    assert_true(st1.finish_scripts - st0.finish_scripts >= (N + 255) / 256);
    free(dr);
    free(r3.l);
    assert_int_equal(count_keys_with(":env:"), 0);
    assert_int_equal(count_keys_with(":conc"), 0);
    assert_int_equal(count_keys_with(":lease"), 0);
    queue_consumer_free(c);
}

/* Consumers that share a record cache (the workers of one node) claim each other's split
 * items without a READ: A splits 20 messages of one destination and leases only one item, B
 * claims the 19 others from the records A read. With caches of their own, B reads all of them
 * (the control). Completing from the shared copies removes every message. */
static void test_shared_cache(void **state)
{
    (void)state;
    enum { N = 20 };
    struct queue_consumer_config ca, cb;
    struct queue_consumer_stats sb0, sb1;
    struct bulk_res ra, rb;
    char qid[CMTP_QID_MAX + 1];
    const char *dom[] = {"shared.example", NULL};

    for (int shared = 0; shared < 2; shared++) {
        struct queue_consumer_cache *k = shared ? queue_consumer_cache_new(0) : NULL;
        if (shared)
            assert_non_null(k);
        ccfg(&ca, "nodeA");
        ccfg(&cb, "nodeB");
        ca.cache = cb.cache = k;
        ca.concurrency_per_dest = cb.concurrency_per_dest = 2; /* ADOPT leases below half: 1 */
        struct queue_consumer *A = copen(&ca), *B = copen(&cb);
        for (int i = 0; i < N; i++) {
            struct qmsg *m = msg_to(200 + (size_t)i, dom);
            send_msg(m, qid);
            qmsg_free(m);
        }
        bulk_claim(A, 1, &ra);
        assert_int_equal(ra.n, 1);
        size_t done = 0;
        for (size_t i = 0; i < ra.n; i++, done++)
            finish(ra.l[i], QUEUE_CONSUMER_DELIVERED, NULL);
        free(ra.l);
        queue_consumer_get_stats(B, &sb0);
        for (int round = 0; round < 40 && done < N; round++) {
            bulk_claim(B, 8, &rb);
            for (size_t i = 0; i < rb.n; i++, done++)
                finish(rb.l[i], QUEUE_CONSUMER_DELIVERED, NULL);
            free(rb.l);
        }
        assert_int_equal(done, N);
        queue_consumer_get_stats(B, &sb1);
        assert_int_equal(sb1.claimed - sb0.claimed, N - 1);
        assert_int_equal(sb1.prefetched - sb0.prefetched, shared ? N - 1 : 0);
        assert_int_equal(count_keys_with(":env:"), 0);
        queue_consumer_free(A);
        queue_consumer_free(B);
        queue_consumer_cache_free(k);
    }
}

/* FINISHN over more entries than one batched command takes (512), run directly: 600 leased
 * entries of one shard, a third of them work items of d.test (the rest new messages), of which 5
 * carry a stale token (not ours: untouched), 5 are released (due again now), 6 retried (due again
 * later, one more try, the reason kept) and the rest finished. Each gets its own answer, and the
 * destination's concurrency counter drops by the items that were ours. */
static void test_finishn_bulk(void **state)
{
    (void)state;
    enum { N = 600 };
    char lkey[QUEUE_KEY_MAX], hkey[QUEUE_KEY_MAX], sched[QUEUE_KEY_MAX], conc[QUEUE_KEY_MAX];
    char x[N][40], tok[N][32], itk[QUEUE_KEY_MAX];
    const char *src = NULL;
    for (unsigned i = 0; queue_consumer_script(i) != NULL; i++)
        if (strstr(queue_consumer_script(i), "redis.call('HMGET', P .. 'lease'") != NULL)
            src = queue_consumer_script(i);
    assert_non_null(src);
    ckey(lkey, 5, "leases", NULL);
    ckey(hkey, 5, "lease", NULL);
    ckey(sched, 5, "sched", NULL);
    ckey(conc, 5, "conc", NULL);
    const char **argv = calloc(4 + 5 * N, sizeof(*argv));
    assert_non_null(argv);
    argv[0] = "EVAL";
    argv[1] = src;
    argv[2] = "1";
    argv[3] = sched;
    int items = 0, items_ours = 0;
    for (int i = 0; i < N; i++) {
        bool stale = i % 100 == 7, item = i % 3 == 0;
        snprintf(x[i], sizeof(x[i]), "01JBULK%011d-5%s", i, item ? "/d.test" : "");
        snprintf(tok[i], sizeof(tok[i]), "nodeA#00#%d", i);
        const char *za[] = {"ZADD", lkey, "99999999999999", x[i]};
        qfix_int(&fx, 4, za);
        const char *hs[] = {"HSET", hkey, x[i], tok[i]};
        qfix_int(&fx, 4, hs);
        const char *it[] = {"HSET", ckey(itk, 5, "it", x[i]), "crashes", "1"};
        qfix_int(&fx, 4, it);
        items += item;
        items_ours += item && !stale;
        argv[4 + 5 * i] = x[i];
        argv[5 + 5 * i] = stale ? "stale-token" : tok[i];
        argv[6 + 5 * i] = i % 100 == 9 ? "release" : i % 100 == 11 ? "retry" : "fin";
        argv[7 + 5 * i] = "60000";
        argv[8 + 5 * i] = "451 try later";
    }
    char nitems[16];
    snprintf(nitems, sizeof(nitems), "%d", items);
    const char *hc[] = {"HSET", conc, "d.test", nitems};
    qfix_int(&fx, 4, hc);
    const char *tm[] = {"TIME"};
    redisReply *t = qfix_cmd(&fx, 1, tm);
    long long now = atoll(t->element[0]->str) * 1000;
    freeReplyObject(t);
    redisReply *r = qfix_cmd(&fx, 4 + 5 * N, argv);
    free(argv);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, N);
    for (int i = 0; i < N; i++) {
        const redisReply *e = r->element[i];
        assert_int_equal(e->type, REDIS_REPLY_STRING);
        if (i % 100 == 7)
            assert_string_equal(e->str, "lost");
        else if (i % 100 == 9)
            assert_true(atoll(e->str) >= now);
        else if (i % 100 == 11)
            assert_true(atoll(e->str) >= now + 59000);
        else
            assert_string_equal(e->str, "0");
    }
    freeReplyObject(r);
    /* The 6 stale ones stay leased; the 6 released and 6 retried are due again; the rest are
     * gone. */
    assert_int_equal(zcard(lkey), 6);
    const char *hl[] = {"HLEN", hkey};
    assert_int_equal(qfix_int(&fx, 2, hl), 6);
    assert_int_equal(zcard(sched), 12);
    assert_int_equal(count_keys_with(":it:"), 18);
    for (int i = 0; i < N; i++) {
        bool stale = i % 100 == 7, rel = i % 100 == 9, retry = i % 100 == 11;
        assert_true((zscore(lkey, x[i]) >= 0) == stale);
        assert_true((zscore(sched, x[i]) >= 0) == (rel || retry));
        if (retry) {
            const char *hg[] = {"HGET", ckey(itk, 5, "it", x[i]), "tries"};
            redisReply *v = qfix_cmd(&fx, 3, hg);
            assert_string_equal(v->str, "1");
            freeReplyObject(v);
            const char *he[] = {"HGET", itk, "err"};
            v = qfix_cmd(&fx, 3, he);
            assert_string_equal(v->str, "451 try later");
            freeReplyObject(v);
        }
    }
    const char *cg[] = {"HGET", conc, "d.test"};
    redisReply *v = qfix_cmd(&fx, 3, cg);
    assert_int_equal(atoi(v->str), items - items_ours);
    freeReplyObject(v);
}

struct sum_res {
    bool done;
    int err;
    size_t n;
    uint64_t quar;
    bool trunc;
    struct queue_consumer_dest_summary d[8];
};

static void sum_cb(void *arg, int err, const struct queue_consumer_summary *s)
{
    struct sum_res *r = arg;
    r->done = true;
    r->err = err;
    if (s) {
        r->n = s->n_dests;
        r->quar = s->quarantined;
        r->trunc = s->truncated;
        assert_true(s->n_dests <= 8);
        memcpy(r->d, s->dests, s->n_dests * sizeof(*s->dests));
    }
}

static bool sum_done(void *arg)
{
    return ((struct sum_res *)arg)->done;
}

static const struct queue_consumer_dest_summary *summary(struct queue_consumer *c,
                                                         struct sum_res *r, const char *dest)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(queue_consumer_summary(c, sum_cb, r), 0);
    assert_true(poll_loop_run_until(fx.pl, sum_done, r, 5000));
    assert_int_equal(r->err, 0);
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->d[i].dest, dest) == 0)
            return &r->d[i];
    return NULL;
}

struct show_res {
    bool done;
    int err;
    bool have_rec;
    struct queue_record *rec;
    size_t n_items;
    struct queue_consumer_item_state items[4];
    bool quarantined;
};

static void show_cb(void *arg, int err, const struct queue_consumer_show_result *s)
{
    struct show_res *r = arg;
    r->done = true;
    r->err = err;
    if (s == NULL)
        return;
    r->have_rec = s->record != NULL;
    if (s->record) {
        r->rec = malloc(sizeof(*r->rec));
        memcpy(r->rec, s->record, sizeof(*r->rec));
        r->rec->rcpts = NULL; /* the statuses are copied below */
        r->rec->n_rcpts = s->record->n_rcpts;
    }
    r->n_items = s->n_items;
    r->quarantined = s->quarantined;
    assert_true(s->n_items <= 4);
    memcpy(r->items, s->items, s->n_items * sizeof(*s->items));
}

static bool show_done(void *arg)
{
    return ((struct show_res *)arg)->done;
}

static void show(struct queue_consumer *c, const char *qid, struct show_res *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(queue_consumer_show(c, qid, show_cb, r), 0);
    assert_true(poll_loop_run_until(fx.pl, show_done, r, 5000));
}

/* summary, list, show, delete, retry and flush. */
static void test_admin(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    struct sum_res sr;
    struct list_res lr;
    struct show_res sh;
    char q[3][CMTP_QID_MAX + 1];
    const struct queue_consumer_dest_summary *ds;
    int64_t t0 = now_ms();

    ccfg(&cfg, "nodeA");
    cfg.retry_base_ms = 60000;
    cfg.retry_max_ms = 60000;
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m[3];
    for (int i = 0; i < 3; i++) {
        m[i] = qmsg_new(&fx, 700, NULL);
        send_msg(m[i], q[i]);
    }
    /* Before any claim: three new messages, not split yet. */
    ds = summary(c, &sr, "");
    assert_non_null(ds);
    assert_int_equal(ds->scheduled, 3);
    assert_true(ds->oldest_ms >= t0 - 1000 && ds->oldest_ms <= now_ms());
    assert_int_equal(list(c, "", QUEUE_CONSUMER_SCHEDULED, 10, &lr), 3);
    for (size_t i = 0; i < 3; i++) {
        /* Earliest first (messages committed in one millisecond tie), each message once. */
        if (i > 0)
            assert_true(lr.e[i - 1].at_ms <= lr.e[i].at_ms);
        unsigned seen = 0;
        for (size_t k = 0; k < 3; k++)
            seen += strcmp(lr.e[k].qid, q[i]) == 0;
        assert_int_equal(seen, 1);
    }

    /* Split, leased, then all fail temporarily: scheduled a minute out. */
    assert_int_equal(claim(c, 10, &cr), 6);
    ds = summary(c, &sr, "dest.example");
    assert_non_null(ds);
    assert_int_equal(ds->leased, 3);
    for (size_t i = 0; i < cr.n; i++)
        finish(cr.l[i], QUEUE_CONSUMER_TEMPFAIL, "451 greylisted");
    ds = summary(c, &sr, "dest.example");
    assert_non_null(ds);
    assert_int_equal(ds->scheduled, 3);
    assert_int_equal(ds->leased, 0);
    assert_true(ds->next_attempt_ms > now_ms() + 40000);
    assert_true(ds->oldest_ms >= t0 - 1000);
    assert_null(summary(c, &sr, "")); /* nothing unsplit any more */
    assert_non_null(summary(c, &sr, "mx.other.example"));
    assert_int_equal(sr.n, 2);

    assert_int_equal(list(c, "dest.example", QUEUE_CONSUMER_SCHEDULED, 10, &lr), 3);
    assert_string_equal(lr.e[0].info, "451 greylisted");
    assert_string_equal(lr.e[0].dest, "dest.example");
    assert_int_equal(list(c, "dest.example", QUEUE_CONSUMER_SCHEDULED, 2, &lr), 2);
    assert_true(lr.trunc);
    assert_int_equal(list(c, NULL, QUEUE_CONSUMER_SCHEDULED, 10, &lr), 6);
    assert_true(check_key_tags() >= 10); /* it:<item>, m:<qid>, sched, ... */

    show(c, q[0], &sh);
    assert_int_equal(sh.err, 0);
    assert_true(sh.have_rec);
    assert_string_equal(sh.rec->qid, q[0]);
    assert_int_equal(sh.rec->attempts, 2);
    free(sh.rec);
    assert_int_equal(sh.n_items, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(sh.items[i].state, QUEUE_CONSUMER_SCHEDULED);
        assert_int_equal(sh.items[i].tries, 1);
        assert_string_equal(sh.items[i].last_error, "451 greylisted");
    }

    /* delete */
    struct n_res nr = {0};
    wait_n(queue_consumer_delete(c, q[1], n_cb, &nr), &nr);
    assert_int_equal(nr.err, 0);
    assert_true(nr.n >= 4); /* two items, record, body, work-list entries */
    assert_int_equal(count_keys_with(q[1]), 0);
    show(c, q[1], &sh);
    assert_int_equal(sh.err, -ENOENT);
    ds = summary(c, &sr, "dest.example");
    assert_int_equal(ds->scheduled, 2);

    /* retry one: only its items become due */
    struct n_res rr = {0};
    wait_n(queue_consumer_retry(c, q[0], n_cb, &rr), &rr);
    assert_int_equal(rr.n, 2);
    assert_int_equal(claim(c, 10, &cr), 2);
    for (size_t i = 0; i < cr.n; i++) {
        assert_string_equal(queue_consumer_lease_qid(cr.l[i]), q[0]);
        struct err_res e = {0};
        wait_err(queue_consumer_lease_return(cr.l[i], err_cb, &e), &e);
    }
    /* a leased item shows its leaseholder */
    assert_int_equal(claim(c, 1, &cr), 1);
    show(c, queue_consumer_lease_qid(cr.l[0]), &sh);
    free(sh.rec);
    size_t leased = 0;
    for (size_t i = 0; i < sh.n_items; i++) {
        if (sh.items[i].state == QUEUE_CONSUMER_LEASED) {
            leased++;
            assert_string_equal(sh.items[i].node, "nodeA");
        }
    }
    assert_int_equal(leased, 1);
    assert_int_equal(list(c, NULL, QUEUE_CONSUMER_LEASED, 10, &lr), 1);
    assert_string_equal(lr.e[0].info, "nodeA");
    finish(cr.l[0], QUEUE_CONSUMER_DELIVERED, NULL);

    /* flush: everything scheduled is due now */
    struct n_res fr = {0};
    wait_n(queue_consumer_flush(c, n_cb, &fr), &fr);
    assert_int_equal(fr.err, 0);
    assert_int_equal(fr.n, 2); /* q[2]'s items; q[0]'s remaining one was due already */
    assert_int_equal(claim(c, 10, &cr), 3);
    unsigned removed = 0;
    for (size_t i = 0; i < cr.n; i++)
        removed += finish(cr.l[i], QUEUE_CONSUMER_DELIVERED, NULL).removed;
    assert_int_equal(removed, 2);
    assert_int_equal(summary(c, &sr, "dest.example") == NULL, true);
    assert_int_equal(sr.n, 0);
    assert_int_equal(count_keys_with(":env:"), 0);
    for (int i = 0; i < 3; i++)
        qmsg_free(m[i]);
    queue_consumer_free(c);
}

/* The script cache flushed under a live consumer: EVALSHA's NOSCRIPT is answered with EVAL. */
static void test_noscript(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    char qid[CMTP_QID_MAX + 1];

    ccfg(&cfg, "nodeA");
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m = qmsg_new(&fx, 300, NULL);
    send_msg(m, qid);
    const char *fl[] = {"SCRIPT", "FLUSH"};
    sync_cmd(2, fl);
    assert_int_equal(claim(c, 10, &cr), 2);
    sync_cmd(2, fl);
    assert_true(finish(cr.l[0], QUEUE_CONSUMER_DELIVERED, NULL).status == QUEUE_CONSUMER_DONE_OK);
    assert_true(finish(cr.l[1], QUEUE_CONSUMER_DELIVERED, NULL).removed);
    qmsg_free(m);
    queue_consumer_free(c);
}

/* Bad configurations are refused; calls that need a connection fail fast without one; a
 * consumer freed with operations in flight leaks nothing (ASan) and calls nothing. */
static void test_config_and_misuse(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    char err[128];

    ccfg(&cfg, "nodeA");
    cfg.retry_base_ms = 10000;
    cfg.retry_max_ms = 1000;
    assert_null(queue_consumer_new(&cfg, &fx.ql, err, sizeof(err)));
    assert_string_equal(err, "consumer limits out of range");
    ccfg(&cfg, "node A");
    assert_null(queue_consumer_new(&cfg, &fx.ql, err, sizeof(err)));
    ccfg(&cfg, "nodeA");
    cfg.lease_ms = 10;
    assert_null(queue_consumer_new(&cfg, &fx.ql, err, sizeof(err)));
    ccfg(&cfg, "nodeA");
    cfg.address = "redis.example:6379";
    assert_null(queue_consumer_new(&cfg, &fx.ql, err, sizeof(err)));

    /* Not connected yet: fail fast. */
    ccfg(&cfg, "nodeA");
    struct queue_consumer *c = queue_consumer_new(&cfg, &fx.ql, err, sizeof(err));
    assert_non_null(c);
    struct claim_res cr;
    assert_int_equal(queue_consumer_claim(c, 1, claim_cb, &cr), -ENOTCONN);
    queue_consumer_free(c);

    c = copen(&cfg);
    assert_int_equal(queue_consumer_claim(c, 0, claim_cb, &cr), -EINVAL);
    assert_int_equal(queue_consumer_claim(c, QUEUE_CONSUMER_CLAIM_MAX + 1, claim_cb, &cr), -EINVAL);
    struct n_res nr = {0};
    assert_int_equal(queue_consumer_show(c, "no-shard-x", NULL, &nr), -EINVAL);
    assert_int_equal(queue_consumer_delete(c, "x-99", n_cb, &nr), -EINVAL);
    struct queue_consumer_filter f = {.dest = "a/b", .state = QUEUE_CONSUMER_SCHEDULED};
    assert_int_equal(queue_consumer_list(c, &f, list_cb, NULL), -EINVAL);

    /* Freed with a claim and a summary in flight: no callback, no leak. */
    struct qmsg *m = qmsg_new(&fx, 300, NULL);
    char qid[CMTP_QID_MAX + 1];
    send_msg(m, qid);
    memset(&cr, 0, sizeof(cr));
    struct sum_res sr = {0};
    assert_int_equal(queue_consumer_claim(c, 4, claim_cb, &cr), 0);
    assert_int_equal(queue_consumer_summary(c, sum_cb, &sr), 0);
    queue_consumer_free(c);
    poll_loop_run_for(fx.pl, 50);
    assert_false(cr.done);
    assert_false(sr.done);
    qmsg_free(m);
}

static bool consumer_down(void *arg)
{
    return queue_consumer_state(arg, NULL) != QUEUE_CONNECTED;
}

/* Redis stops answering: commands past their deadline fail (the connection is reset) and the
 * consumer reconnects. Redis killed and restarted: a claim in flight fails once, a completion
 * fails fast while it is down, and after the restart (AOF) the lease and the message are intact. */
static void test_redis_faults(void **state)
{
    (void)state;
    struct queue_consumer_config cfg;
    struct claim_res cr;
    char qid[CMTP_QID_MAX + 1];
    const char *dom[] = {"dest.example", NULL};

    ccfg(&cfg, "nodeA");
    cfg.op_timeout_ms = 300;
    struct queue_consumer *c = copen(&cfg);
    struct qmsg *m = msg_to(400, dom);
    send_msg(m, qid);

    const char *pause[] = {"CLIENT", "PAUSE", "900", "ALL"};
    sync_cmd(4, pause);
    memset(&cr, 0, sizeof(cr));
    uint64_t t0 = poll_loop_now_ms();
    assert_int_equal(queue_consumer_claim(c, 4, claim_cb, &cr), 0);
    assert_true(poll_loop_run_until(fx.pl, claim_done, &cr, 3000));
    uint64_t took = poll_loop_now_ms() - t0;
    assert_true(cr.err < 0);
    assert_int_equal(cr.n, 0);
    assert_true(took >= 250 && took < 850);
    struct queue_consumer_stats st;
    queue_consumer_get_stats(c, &st);
    assert_true(st.timeouts >= 1);
    assert_int_equal(st.inflight, 0);
    assert_true(poll_loop_run_until(fx.pl, consumer_up, c, 5000));
    /* The paused claim may have run in Redis after all: its lease then expires. Whatever it
     * did, the message is claimable once the lease of the lost reply (if any) is gone. */
    size_t got = claim(c, 4, &cr);
    if (got == 0) {
        /* The lost claim took it: make its lease expire at once and retry. */
        char key[QUEUE_KEY_MAX], it[QUEUE_CONSUMER_ITEM_MAX];
        unsigned h = queue_consumer_item_shard("dest.example", 16);
        const char *za[] = {"ZADD", ckey(key, h, "leases", NULL), "1",
                            item_name(it, qid, "dest.example")};
        sync_cmd(4, za);
        got = claim(c, 4, &cr);
    }
    assert_int_equal(got, 1);

    /* kill -9 with a claim in flight */
    struct claim_res cr2;
    memset(&cr2, 0, sizeof(cr2));
    assert_int_equal(queue_consumer_claim(c, 4, claim_cb, &cr2), 0);
    redis_test_kill(&fx.rt);
    assert_true(poll_loop_run_until(fx.pl, claim_done, &cr2, 3000));
    assert_true(cr2.err < 0);
    assert_true(poll_loop_run_until(fx.pl, consumer_down, c, 3000));
    struct queue_consumer_outcome o = {queue_consumer_lease_rcpts(cr.l[0], &(size_t){0})[0],
                                       QUEUE_CONSUMER_DELIVERED, NULL};
    assert_int_equal(queue_consumer_done(cr.l[0], &o, 1, done_cb, NULL), -ENOTCONN);
    assert_int_equal(queue_consumer_claim(c, 4, claim_cb, &cr2), -ENOTCONN);

    assert_int_equal(redis_test_restart(&fx.rt), 0);
    assert_int_equal(qfix_sync_connect(&fx), 0);
    assert_true(poll_loop_run_until(fx.pl, consumer_up, c, 5000));
    struct queue_consumer_done_result d = done_with(cr.l[0], &o, 1);
    assert_int_equal(d.status, QUEUE_CONSUMER_DONE_OK);
    assert_true(d.removed);
    assert_int_equal(count_keys_with(qid), 0);
    qmsg_free(m);
    queue_consumer_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_claim_done_delivered, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_prefetch_across_claims, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_tempfail_backoff, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_permfail_per_rcpt, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_report_headers, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_mixed_rcpts, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_lifetime_expiry, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_two_consumers_exclusive, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_lease_takeover, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_crash_dead_letter, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_dead_listed, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_hold_release, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_concurrency_limit, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_quarantine, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_body_iterator, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_claim_batched, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_claim_bulk, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_finishn_bulk, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_done_batched, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_blocked_run, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_shared_cache, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_admin, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_noscript, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_config_and_misuse, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_redis_faults, test_setup, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
