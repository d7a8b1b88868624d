/* tests/unit/test_queue_faults.c — the ingest path when Redis misbehaves: killed, restarted,
 * paused past the deadline, refusing writes (MISCONF, NOREPLICAS), short of WAIT replicas,
 * script cache flushed, AUTH. The rule under test: a temporary failure, never an accept without
 * a success reply, and recovery when Redis is back. */
#include "tests/unit/helpers/queue_fixture.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static struct qfix fx;
static struct redis_test replica; /* test_wait_with_replica; stopped in teardown if still up */

static int group_setup(void **state)
{
    (void)state;
    /* MISCONF is provoked by a failing BGSAVE into a folder Redis cannot write. */
    static const char *const extra[] = {"enable-protected-configs local", NULL};
    return qfix_setup(&fx, extra);
}

static int group_teardown(void **state)
{
    (void)state;
    if (replica.pid > 0 || replica.dir[0] != '\0')
        redis_test_stop(&replica);
    qfix_teardown(&fx);
    return 0;
}

enum outcome {
    OUT_ACCEPTED,
    OUT_DUP,
    OUT_CONFLICT,
    OUT_TEMPFAIL,
};

/* try_send runs a transaction through every failure path the daemon would see: begin refused,
 * append refused, commit refused, or the commit's result. */
static enum outcome try_send(struct queue *q, const struct qmsg *m, size_t piece, struct qcommit *c,
                             char *qid, size_t qid_cap)
{
    memset(c, 0, sizeof(*c));
    struct queue_txn *t = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
    if (t == NULL) {
        assert_int_equal(errno, ENOTCONN);
        snprintf(c->r.reason, sizeof(c->r.reason), "begin: not connected");
        return OUT_TEMPFAIL;
    }
    if (qid)
        snprintf(qid, qid_cap, "%s", queue_txn_qid(t));
    if (qfix_append(&fx, t, m, piece, NULL, NULL) == QUEUE_TEMPFAIL) {
        queue_txn_abort(t);
        snprintf(c->r.reason, sizeof(c->r.reason), "append failed");
        return OUT_TEMPFAIL;
    }
    int rc = queue_txn_commit(t, m->env.digest, qcommit_cb, c);
    if (rc < 0) {
        assert_true(rc == -ENOTCONN || rc == -EIO);
        queue_txn_abort(t);
        snprintf(c->r.reason, sizeof(c->r.reason), "commit: %s", strerror(-rc));
        return OUT_TEMPFAIL;
    }
    if (!poll_loop_run_until(fx.pl, qcommit_done, c, 8000))
        fail_msg("commit callback never fired");
    assert_int_equal(c->calls, 1);
    switch (c->r.status) {
    case QUEUE_COMMIT_ACCEPTED:
        return c->r.dup ? OUT_DUP : OUT_ACCEPTED;
    case QUEUE_COMMIT_CONFLICT:
        return OUT_CONFLICT;
    case QUEUE_COMMIT_TEMPFAIL:
        assert_true(strlen(c->r.reason) > 0);
        return OUT_TEMPFAIL;
    }
    return OUT_TEMPFAIL;
}

static void cmd_ok(int argc, const char **argv)
{
    redisReply *r = qfix_cmd(&fx, argc, argv);
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("%s: %s", argv[0], r->str);
    freeReplyObject(r);
}

static long long env_count(void)
{
    long long n = 0;
    char cursor[32] = "0";
    do {
        const char *argv[] = {"SCAN", cursor, "MATCH", "cmtp:{s*}:env:*", "COUNT", "1000"};
        redisReply *r = qfix_cmd(&fx, 6, argv);
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        n += (long long)r->element[1]->elements;
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return n;
}

static long long txn_key_exists(const struct qmsg *m)
{
    char key[QUEUE_KEY_MAX];
    unsigned shard = queue_txid_shard(m->env.txid, strlen(m->env.txid), QUEUE_SHARDS_DEFAULT);
    return qfix_exists(&fx, qfix_key(key, sizeof(key), shard, "txn", m->env.txid));
}

static void test_noscript_fallback(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c;
    struct queue_stats s0, s1, s2;

    qfix_config(&fx, &cfg);
    struct queue *q = qfix_open(&fx, &cfg);
    const char *flush[] = {"SCRIPT", "FLUSH"};
    cmd_ok(2, flush);
    struct qmsg *m = qmsg_new(&fx, 700, NULL);
    queue_get_stats(q, &s0);
    assert_int_equal(try_send(q, m, 700, &c, NULL, 0), OUT_ACCEPTED);
    queue_get_stats(q, &s1);
    assert_int_equal(s1.cmds_sent - s0.cmds_sent, 2); /* EVALSHA refused, then EVAL */
    qmsg_free(m);
    m = qmsg_new(&fx, 700, NULL);
    assert_int_equal(try_send(q, m, 700, &c, NULL, 0), OUT_ACCEPTED);
    queue_get_stats(q, &s2);
    assert_int_equal(s2.cmds_sent - s1.cmds_sent, 1); /* EVAL cached the script again */
    qmsg_free(m);
    queue_free(q);
}

static void test_noreplicas(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c;
    char qid[CMTP_QID_MAX + 1], key[QUEUE_KEY_MAX];

    qfix_config(&fx, &cfg);
    cfg.chunk_size = 1024;
    struct queue *q = qfix_open(&fx, &cfg);
    long long envs = env_count();
    const char *on[] = {"CONFIG", "SET", "min-replicas-to-write", "1"};
    cmd_ok(4, on);
    /* Small: the script itself is refused. */
    struct qmsg *m = qmsg_new(&fx, 800, NULL);
    assert_int_equal(try_send(q, m, 800, &c, qid, sizeof(qid)), OUT_TEMPFAIL);
    assert_non_null(strstr(c.r.reason, "NOREPLICAS"));
    assert_int_equal(txn_key_exists(m), 0);
    /* Chunked: the chunk writes are refused. */
    struct qmsg *big = qmsg_new(&fx, 5000, NULL);
    assert_int_equal(try_send(q, big, 1000, &c, qid, sizeof(qid)), OUT_TEMPFAIL);
    unsigned shard;
    queue_qid_shard(qid, &shard);
    assert_int_equal(qfix_exists(&fx, qfix_key(key, sizeof(key), shard, "body", qid)), 0);
    assert_int_equal(env_count(), envs);
    assert_int_equal(txn_key_exists(big), 0);
    /* The connection stays usable; writes come back. */
    assert_int_equal(queue_state(q, NULL), QUEUE_CONNECTED);
    const char *off[] = {"CONFIG", "SET", "min-replicas-to-write", "0"};
    cmd_ok(4, off);
    assert_int_equal(try_send(q, m, 800, &c, NULL, 0), OUT_ACCEPTED);
    assert_int_equal(try_send(q, big, 700, &c, NULL, 0), OUT_ACCEPTED);
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_true(st.errors >= 2);
    assert_true(st.tempfails >= 1);
    qmsg_free(m);
    qmsg_free(big);
    queue_free(q);
}

static void test_misconf(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c;
    char dir[sizeof(fx.rt.dir)];

    qfix_config(&fx, &cfg);
    struct queue *q = qfix_open(&fx, &cfg);
    long long envs = env_count();
    snprintf(dir, sizeof(dir), "%s", fx.rt.dir);
    /* stop-writes-on-bgsave-error applies when RDB saving is configured and a BGSAVE failed. */
    const char *save[] = {"CONFIG", "SET", "save", "3600 1"};
    cmd_ok(4, save);
    const char *bad_dir[] = {"CONFIG", "SET", "dir", "/proc"};
    cmd_ok(4, bad_dir);
    const char *bgsave[] = {"BGSAVE"};
    cmd_ok(1, bgsave);
    bool misconf = false;
    for (int i = 0; i < 200 && !misconf; i++) {
        const char *info[] = {"INFO", "persistence"};
        redisReply *r = qfix_cmd(&fx, 2, info);
        misconf = strstr(r->str, "rdb_last_bgsave_status:err") != NULL;
        freeReplyObject(r);
        if (!misconf)
            poll_loop_run_for(fx.pl, 10);
    }
    assert_true(misconf);
    struct qmsg *m = qmsg_new(&fx, 900, NULL);
    assert_int_equal(try_send(q, m, 900, &c, NULL, 0), OUT_TEMPFAIL);
    assert_non_null(strstr(c.r.reason, "MISCONF"));
    assert_int_equal(env_count(), envs);
    assert_int_equal(txn_key_exists(m), 0);
    const char *nosave[] = {"CONFIG", "SET", "save", ""};
    cmd_ok(4, nosave);
    const char *good_dir[] = {"CONFIG", "SET", "dir", dir};
    cmd_ok(4, good_dir);
    assert_int_equal(try_send(q, m, 900, &c, NULL, 0), OUT_ACCEPTED);
    qmsg_free(m);
    queue_free(q);
}

static void test_wait_shortfall(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c;
    char qid[CMTP_QID_MAX + 1];

    qfix_config(&fx, &cfg);
    cfg.wait_replicas = 1;
    cfg.wait_timeout_ms = 100;
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 1000, NULL);
    assert_int_equal(try_send(q, m, 1000, &c, qid, sizeof(qid)), OUT_TEMPFAIL);
    assert_non_null(strstr(c.r.reason, "WAIT: 0 of 1"));
    /* The message is in Redis but was not acknowledged; the client's retry (here on a worker
     * without WAIT) gets the first result: at least once, never lost, never twice stored. */
    struct queue_config cfg2;
    qfix_config(&fx, &cfg2);
    struct queue *q2 = qfix_open(&fx, &cfg2);
    assert_int_equal(try_send(q2, m, 1000, &c, NULL, 0), OUT_DUP);
    assert_string_equal(c.r.qid, qid);
    qmsg_free(m);
    queue_free(q2);
    queue_free(q);
}

static bool replica_linked(void)
{
    const char *info[] = {"INFO", "replication"};
    redisReply *r = qfix_cmd(&fx, 2, info);
    bool ok = strstr(r->str, "connected_slaves:1") != NULL && strstr(r->str, "state=online");
    freeReplyObject(r);
    return ok;
}

static void test_wait_with_replica(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c;
    char port[16], line[64];

    /* The positive control of test_wait_shortfall: with one replica attached (over loopback TCP:
     * a replica cannot follow a Unix socket), WAIT 1 is met and the commit is accepted. */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s >= 0);
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&sa, &sl), 0);
    snprintf(port, sizeof(port), "%u", ntohs(sa.sin_port));
    close(s);
    const char *bind_lo[] = {"CONFIG", "SET", "bind", "127.0.0.1"};
    cmd_ok(4, bind_lo);
    const char *set_port[] = {"CONFIG", "SET", "port", port};
    cmd_ok(4, set_port);
    const char *no_delay[] = {"CONFIG", "SET", "repl-diskless-sync-delay", "0"};
    cmd_ok(4, no_delay);
    snprintf(line, sizeof(line), "replicaof 127.0.0.1 %s", port);
    const char *extra[] = {line, NULL};
    assert_int_equal(redis_test_start(&replica, extra), 0);
    bool linked = false;
    for (int i = 0; i < 300 && !linked; i++) {
        linked = replica_linked();
        if (!linked)
            poll_loop_run_for(fx.pl, 10);
    }
    assert_true(linked);

    qfix_config(&fx, &cfg);
    cfg.wait_replicas = 1;
    cfg.wait_timeout_ms = 2000;
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 1000, NULL);
    assert_int_equal(try_send(q, m, 1000, &c, NULL, 0), OUT_ACCEPTED);
    /* And the replica has it (WAIT returned after the replica acknowledged the offset). */
    char key[QUEUE_KEY_MAX];
    unsigned shard = queue_txid_shard(m->env.txid, strlen(m->env.txid), QUEUE_SHARDS_DEFAULT);
    const char *exists[] = {"EXISTS", qfix_key(key, sizeof(key), shard, "txn", m->env.txid)};
    redisContext *rc = redisConnectUnix(replica.sock);
    assert_non_null(rc);
    redisReply *r = redisCommandArgv(rc, 2, exists, NULL);
    assert_non_null(r);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    redisFree(rc);
    redis_test_stop(&replica);
    /* Replica gone: WAIT falls short again. */
    qmsg_free(m);
    m = qmsg_new(&fx, 1000, NULL);
    cfg.wait_timeout_ms = 100;
    queue_free(q);
    q = qfix_open(&fx, &cfg);
    assert_int_equal(try_send(q, m, 1000, &c, NULL, 0), OUT_TEMPFAIL);
    assert_non_null(strstr(c.r.reason, "WAIT"));
    const char *no_port[] = {"CONFIG", "SET", "port", "0"};
    cmd_ok(4, no_port);
    qmsg_free(m);
    queue_free(q);
}

static void test_slow_redis_timeout(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c;
    char qid[CMTP_QID_MAX + 1];

    qfix_config(&fx, &cfg);
    cfg.op_timeout_ms = 1000;
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 1000, NULL);
    /* Redis answers nothing for 2 s (a stand-in for DEBUG SLEEP 2 that does not block us). */
    const char *pause[] = {"CLIENT", "PAUSE", "2000", "ALL"};
    cmd_ok(4, pause);
    uint64_t t0 = poll_loop_now_ms();
    assert_int_equal(try_send(q, m, 1000, &c, qid, sizeof(qid)), OUT_TEMPFAIL);
    uint64_t took = poll_loop_now_ms() - t0;
    assert_true(took >= 900 && took < 1900);
    assert_non_null(strstr(c.r.reason, "timed out"));
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_true(st.timeouts >= 1);
    assert_int_equal(st.inflight, 0);
    /* Reconnected once Redis answers again; the retry is accepted exactly once. */
    assert_true(qfix_wait_state(&fx, q, QUEUE_CONNECTED, 5000));
    enum outcome o = try_send(q, m, 1000, &c, NULL, 0);
    assert_true(o == OUT_ACCEPTED || (o == OUT_DUP && strcmp(c.r.qid, qid) == 0));
    struct qmsg *m2 = qmsg_new(&fx, 10, NULL);
    assert_int_equal(try_send(q, m2, 10, &c, qid, sizeof(qid)), OUT_ACCEPTED);
    assert_string_equal(c.r.qid, qid); /* its own reply, not a late one */
    qmsg_free(m);
    qmsg_free(m2);
    queue_free(q);
}

static void test_auth(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c;
    char err[256];

    const char *set[] = {"CONFIG", "SET", "requirepass", "s3cret pass"};
    cmd_ok(4, set);
    qfix_config(&fx, &cfg);
    cfg.password = "s3cret pass";
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 100, NULL);
    assert_int_equal(try_send(q, m, 100, &c, NULL, 0), OUT_ACCEPTED);
    queue_free(q);

    cfg.password = "wrong";
    q = queue_new(&cfg, &fx.ql, err, sizeof(err));
    assert_non_null(q);
    poll_loop_run_for(fx.pl, 300);
    const char *le;
    assert_int_not_equal(queue_state(q, &le), QUEUE_CONNECTED);
    assert_non_null(strstr(le, "AUTH"));
    queue_free(q);

    cfg.password = NULL;
    q = queue_new(&cfg, &fx.ql, err, sizeof(err));
    poll_loop_run_for(fx.pl, 300);
    assert_int_not_equal(queue_state(q, &le), QUEUE_CONNECTED);
    assert_non_null(strstr(le, "NOAUTH"));
    queue_free(q);

    const char *unset[] = {"CONFIG", "SET", "requirepass", ""};
    cmd_ok(4, unset);
    qmsg_free(m);
}

static void never_called(void *arg, const struct queue_commit_result *r)
{
    (void)arg;
    (void)r;
    fail_msg("callback after queue_free");
}

static void test_free_with_work_in_flight(void **state)
{
    (void)state;
    struct queue_config cfg;
    qfix_config(&fx, &cfg);
    cfg.chunk_size = 1024;
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 4000, NULL);
    struct queue_txn *t1 = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
    struct queue_txn *t2 = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
    assert_int_not_equal(queue_txn_append(t1, m->body, 4000), QUEUE_TEMPFAIL);
    assert_int_not_equal(queue_txn_append(t2, m->body, 3000), QUEUE_TEMPFAIL);
    poll_loop_run_once(fx.pl, 0);
    /* One committing, one open with chunks in flight, one blocked: queue_free frees them all
     * (ASan checks) and calls nothing. */
    assert_int_equal(queue_txn_commit(t1, m->env.digest, never_called, NULL), 0);
    struct queue_txn *t3 = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
    assert_int_equal(queue_txn_append(t3, m->body, 4000), QUEUE_AGAIN);
    queue_free(q);
    unsigned w, t;
    poll_loop_counts(fx.pl, &w, &t);
    assert_int_equal(w, 0);
    assert_int_equal(t, 0);
    poll_loop_run_for(fx.pl, 50);
    qmsg_free(m);
}

static void test_abort_after_commit(void **state)
{
    (void)state;
    struct queue_config cfg;
    qfix_config(&fx, &cfg);
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 300, NULL);
    struct queue_txn *t = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
    assert_int_equal(queue_txn_append(t, m->body, 300), QUEUE_OK);
    assert_int_equal(queue_txn_commit(t, m->env.digest, never_called, NULL), 0);
    /* The client went away: the commit completes without its callback. */
    queue_txn_abort(t);
    poll_loop_run_for(fx.pl, 200);
    assert_int_equal(txn_key_exists(m), 1);
    struct qcommit c;
    assert_int_equal(try_send(q, m, 300, &c, NULL, 0), OUT_DUP);
    qmsg_free(m);
    queue_free(q);
}

static void test_kill_and_restart(void **state)
{
    (void)state;
    struct queue_config cfg;
    struct qcommit c;
    char qid_a[CMTP_QID_MAX + 1], qid_b[CMTP_QID_MAX + 1], key[QUEUE_KEY_MAX];

    qfix_config(&fx, &cfg);
    cfg.chunk_size = 1024;
    struct queue *q = qfix_open(&fx, &cfg);
    /* A: accepted before the crash. */
    struct qmsg *a = qmsg_new(&fx, 3000, NULL);
    assert_int_equal(try_send(q, a, 1000, &c, qid_a, sizeof(qid_a)), OUT_ACCEPTED);
    /* B: its commit reaches Redis while Redis is paused, then Redis is killed. */
    struct qmsg *b = qmsg_new(&fx, 500, NULL);
    struct queue_txn *t = queue_txn_begin(q, &b->env, b->rcpts, b->n_rcpts, &b->meta);
    snprintf(qid_b, sizeof(qid_b), "%s", queue_txn_qid(t));
    assert_int_equal(queue_txn_append(t, b->body, 500), QUEUE_OK);
    const char *pause[] = {"CLIENT", "PAUSE", "10000", "ALL"};
    cmd_ok(4, pause);
    memset(&c, 0, sizeof(c));
    assert_int_equal(queue_txn_commit(t, b->env.digest, qcommit_cb, &c), 0);
    poll_loop_run_for(fx.pl, 100);
    assert_false(c.done);
    redis_test_kill(&fx.rt);
    assert_true(poll_loop_run_until(fx.pl, qcommit_done, &c, 3000));
    assert_int_equal(c.r.status, QUEUE_COMMIT_TEMPFAIL);
    assert_true(strlen(c.r.reason) > 0);
    /* Down: everything fails fast. */
    assert_int_not_equal(queue_state(q, NULL), QUEUE_CONNECTED);
    struct qmsg *d = qmsg_new(&fx, 100, NULL);
    assert_int_equal(try_send(q, d, 100, &c, NULL, 0), OUT_TEMPFAIL);
    poll_loop_run_for(fx.pl, 300); /* a few failed reconnects */
    assert_int_equal(try_send(q, d, 100, &c, NULL, 0), OUT_TEMPFAIL);

    /* Restart on the same AOF: A survived the SIGKILL, B was never stored. */
    assert_int_equal(redis_test_restart(&fx.rt), 0);
    assert_int_equal(qfix_sync_connect(&fx), 0);
    assert_true(qfix_wait_state(&fx, q, QUEUE_CONNECTED, 3000));
    unsigned shard;
    queue_qid_shard(qid_a, &shard);
    assert_int_equal(qfix_exists(&fx, qfix_key(key, sizeof(key), shard, "env", qid_a)), 1);
    const char *ll[] = {"LLEN", qfix_key(key, sizeof(key), shard, "body", qid_a)};
    assert_int_equal(qfix_int(&fx, 2, ll), 3);
    queue_qid_shard(qid_b, &shard);
    assert_int_equal(qfix_exists(&fx, qfix_key(key, sizeof(key), shard, "env", qid_b)), 0);
    assert_int_equal(txn_key_exists(b), 0);
    /* Accepted again; B's retry is new, A's retry is a dup. */
    assert_int_equal(try_send(q, d, 100, &c, NULL, 0), OUT_ACCEPTED);
    assert_int_equal(try_send(q, b, 200, &c, NULL, 0), OUT_ACCEPTED);
    assert_int_equal(try_send(q, a, 1000, &c, NULL, 0), OUT_DUP);
    assert_string_equal(c.r.qid, qid_a);
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_true(st.disconnects >= 1);
    assert_true(st.connects >= 2);
    assert_true(st.dropped >= 1);
    qmsg_free(a);
    qmsg_free(b);
    qmsg_free(d);
    queue_free(q);
}

static void test_kill_mid_body(void **state)
{
    (void)state;
    struct queue_config cfg;
    qfix_config(&fx, &cfg);
    cfg.chunk_size = 1024;
    struct queue *q = qfix_open(&fx, &cfg);
    struct qmsg *m = qmsg_new(&fx, 20000, NULL);
    struct queue_txn *t = queue_txn_begin(q, &m->env, m->rcpts, m->n_rcpts, &m->meta);
    bool writable = false;
    queue_txn_set_writable_cb(t, qflag_set, &writable);
    assert_int_equal(queue_txn_append(t, m->body, 1024), QUEUE_OK);
    poll_loop_run_for(fx.pl, 50); /* chunk 1 acknowledged */
    redis_test_kill(&fx.rt);
    /* Blocked on backpressure when Redis dies: the callback wakes the reader, appends fail. */
    enum queue_res res = queue_txn_append(t, m->body + 1024, 8192);
    if (res == QUEUE_AGAIN)
        assert_true(poll_loop_run_until(fx.pl, qflag_is_set, &writable, 3000));
    poll_loop_run_for(fx.pl, 50);
    assert_int_equal(queue_txn_append(t, m->body + 9216, 1000), QUEUE_TEMPFAIL);
    struct qcommit c = {0};
    assert_int_equal(queue_txn_commit(t, m->env.digest, qcommit_cb, &c), -EIO);
    queue_txn_abort(t);
    assert_int_equal(redis_test_restart(&fx.rt), 0);
    assert_int_equal(qfix_sync_connect(&fx), 0);
    assert_true(qfix_wait_state(&fx, q, QUEUE_CONNECTED, 3000));
    assert_int_equal(try_send(q, m, 4096, &c, NULL, 0), OUT_ACCEPTED);
    qmsg_free(m);
    queue_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_noscript_fallback),
        cmocka_unit_test(test_noreplicas),
        cmocka_unit_test(test_misconf),
        cmocka_unit_test(test_wait_shortfall),
        cmocka_unit_test(test_wait_with_replica),
        cmocka_unit_test(test_slow_redis_timeout),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_free_with_work_in_flight),
        cmocka_unit_test(test_abort_after_commit),
        cmocka_unit_test(test_kill_and_restart),
        cmocka_unit_test(test_kill_mid_body),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
