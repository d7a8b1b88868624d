/* tests/unit/test_core_client.c — the CMTP/1 client state machine against scripted replies, and
 * client and server state machines connected in memory. No sockets, no TLS. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/client.h"
#include "core/proto.h"
#include "core/server.h"

#define TXID "txn0123456789abcd"
#define HEX64 "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define GREETING                                                                                   \
    "220 ready proto=cmtp/1 host=mx.example size-max=1000 rcpt-max=5 chunk-max=100 "               \
    "line-max=4096 txn-max=3\r\n"

/* ---- helpers ---- */

static void make_env(struct cmtp_envelope *env, uint64_t size, enum cmtp_relay relay, unsigned hops)
{
    memset(env, 0, sizeof(*env));
    cmtp_policy_init(&env->policy);
    assert_int_equal(cmtp_addr_parse(&env->from, "<alice@a.example>", 17, 0), CMTP_ADDR_OK);
    strcpy(env->txid, TXID);
    env->size = size;
    for (int i = 0; i < CMTP_DIGEST_LEN; i++)
        env->digest[i] = (uint8_t)((i % 16) * 0x11);
    env->policy.relay = relay;
    env->policy.hops = hops;
}

static void make_rcpt(struct cmtp_addr *a, const char *s)
{
    assert_int_equal(cmtp_addr_parse(a, s, strlen(s), 0), CMTP_ADDR_OK);
}

/* rec is a copy of one client event. */
struct rec {
    enum cmtp_cli_ev e;
    size_t idx;
    enum cmtp_cli_disp disp;
    bool dropped;
    unsigned code;
    char status[64];
    char next[CMTP_DOMAIN_MAX + 1];
    enum cmtp_cli_outcome outcome;
    bool local;
    char qid[CMTP_QID_MAX + 1];
    bool dup;
    uint32_t rcpts;
    size_t ready;
};

struct ch {
    struct cmtp_client *c;
    char out[65536];
    size_t out_len, out_mark;
    struct rec ev[64];
    size_t nev;
};

static struct ch *ch_new(const struct cmtp_client_config *cfg)
{
    struct ch *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    h->c = cmtp_client_new(cfg);
    assert_non_null(h->c);
    return h;
}

static void ch_free(struct ch *h)
{
    cmtp_client_free(h->c);
    free(h);
}

static void ch_drain(struct ch *h)
{
    for (;;) {
        const uint8_t *p;
        size_t n = cmtp_client_output(h->c, &p);
        if (n == 0)
            break;
        assert_true(h->out_len + n < sizeof(h->out));
        memcpy(h->out + h->out_len, p, n);
        h->out_len += n;
        h->out[h->out_len] = '\0';
        cmtp_client_output_consume(h->c, n);
    }
}

static void record(struct ch *h, enum cmtp_cli_ev e, const struct cmtp_cli_event *ev)
{
    assert_true(h->nev < 64);
    struct rec *r = &h->ev[h->nev++];
    memset(r, 0, sizeof(*r));
    r->e = e;
    r->idx = ev->rcpt_index;
    r->disp = ev->disp;
    r->dropped = ev->dropped;
    r->code = ev->code;
    assert_non_null(ev->status);
    assert_non_null(ev->text);
    snprintf(r->status, sizeof(r->status), "%s", ev->status);
    snprintf(r->next, sizeof(r->next), "%s", ev->next_hop);
    r->outcome = ev->outcome;
    r->local = ev->local;
    snprintf(r->qid, sizeof(r->qid), "%s", ev->qid);
    r->dup = ev->dup;
    r->rcpts = ev->rcpts;
    r->ready = ev->rcpt_ready;
}

/* ch_feed feeds |s| whole and records every event until the input is used up (or the session
 * ended). Returns the number of events recorded by this call. */
static size_t ch_feed_n(struct ch *h, const char *s, size_t len)
{
    size_t before = h->nev;
    const uint8_t *p = (const uint8_t *)s;
    for (;;) {
        struct cmtp_cli_event ev;
        size_t c;
        enum cmtp_cli_ev e = cmtp_client_feed(h->c, p, len, &c, &ev);
        assert_true(c <= len);
        p += c;
        len -= c;
        if (e == CMTP_CLI_NEED_INPUT) {
            assert_int_equal(len, 0);
            break;
        }
        record(h, e, &ev);
        if (e == CMTP_CLI_CLOSED || e == CMTP_CLI_PROTOCOL_ERROR)
            break;
    }
    ch_drain(h);
    return h->nev - before;
}

static size_t ch_feed(struct ch *h, const char *s)
{
    return ch_feed_n(h, s, strlen(s));
}

static void expect_out(struct ch *h, const char *want)
{
    ch_drain(h);
    size_t n = h->out_len - h->out_mark;
    if (n != strlen(want) || memcmp(h->out + h->out_mark, want, n) != 0)
        fail_msg("output mismatch\n--- got ---\n%.*s--- want ---\n%s", (int)n, h->out + h->out_mark,
                 want);
    h->out_mark = h->out_len;
}

static struct rec *last(struct ch *h)
{
    assert_true(h->nev > 0);
    return &h->ev[h->nev - 1];
}

static struct ch *ready_client(const struct cmtp_client_config *cfg)
{
    struct ch *h = ch_new(cfg);
    assert_int_equal(cmtp_client_state(h->c), CMTP_CLI_STATE_GREETING);
    assert_null(cmtp_client_greeting(h->c));
    assert_int_equal(ch_feed(h, GREETING), 1);
    assert_int_equal(last(h)->e, CMTP_CLI_GREETING);
    assert_int_equal(cmtp_client_state(h->c), CMTP_CLI_STATE_READY);
    return h;
}

/* ---- scripted tests ---- */

static void test_greeting(void **state)
{
    (void)state;
    struct ch *h = ready_client(NULL);
    const struct cmtp_greeting *g = cmtp_client_greeting(h->c);
    assert_non_null(g);
    assert_string_equal(g->host, "mx.example");
    assert_int_equal(g->size_max, 1000);
    assert_int_equal(g->rcpt_max, 5);
    assert_int_equal(g->chunk_max, 100);
    assert_int_equal(g->line_max, 4096);
    assert_int_equal(g->txn_max, 3);
    ch_free(h);

    static const struct {
        const char *line;
        enum cmtp_cli_ev e;
        unsigned code;
    } cases[] = {
        {"220 ready host=mx.example size-max=1 rcpt-max=1 chunk-max=1 line-max=4096 "
         "txn-max=1\r\n",
         CMTP_CLI_PROTOCOL_ERROR, 0},
        {"220 ready proto=smtp host=mx.example size-max=1 rcpt-max=1 chunk-max=1 line-max=4096 "
         "txn-max=1\r\n",
         CMTP_CLI_PROTOCOL_ERROR, 0},
        {"220 ready proto=cmtp/1 host=mx size-max=1 rcpt-max=1 chunk-max=1 line-max=4096 "
         "txn-max=1\r\n",
         CMTP_CLI_PROTOCOL_ERROR, 0},
        {"220 ready proto=cmtp/1 host=mx.example size-max=0 rcpt-max=1 chunk-max=1 "
         "line-max=4096 txn-max=1\r\n",
         CMTP_CLI_PROTOCOL_ERROR, 0},
        {"220 ready proto=cmtp/1 host=mx.example size-max=1 rcpt-max=4294967296 chunk-max=1 "
         "line-max=4096 txn-max=1\r\n",
         CMTP_CLI_PROTOCOL_ERROR, 0},
        {"220 ready proto=cmtp/1 host=mx.example size-max=1 rcpt-max=1 chunk-max=1 "
         "line-max=4096\r\n",
         CMTP_CLI_PROTOCOL_ERROR, 0},
        {"220 hello proto=cmtp/1 host=mx.example size-max=1 rcpt-max=1 chunk-max=1 "
         "line-max=4096 txn-max=1\r\n",
         CMTP_CLI_PROTOCOL_ERROR, 0},
        {"250 ok\r\n", CMTP_CLI_PROTOCOL_ERROR, 0},
        {"220 ready\n", CMTP_CLI_PROTOCOL_ERROR, 0},
        {"220  ready\r\n", CMTP_CLI_PROTOCOL_ERROR, 0},
        {"SSH-2.0-OpenSSH\r\n", CMTP_CLI_PROTOCOL_ERROR, 0},
        {"421 shutting-down\r\n", CMTP_CLI_CLOSED, 421},
        {"554 go-away : not today\r\n", CMTP_CLI_CLOSED, 554},
        {"605 timeout\r\n", CMTP_CLI_CLOSED, 605},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        h = ch_new(NULL);
        ch_feed(h, cases[i].line);
        assert_true(h->nev >= 1);
        if (last(h)->e != cases[i].e)
            fail_msg("case %zu: event %d", i, (int)last(h)->e);
        assert_int_equal(last(h)->code, cases[i].code);
        assert_int_equal(cmtp_client_state(h->c), CMTP_CLI_STATE_CLOSED);
        /* sticky */
        ch_feed(h, "250 ok\r\n");
        assert_int_equal(last(h)->e, cases[i].e);
        struct cmtp_envelope env;
        struct cmtp_addr r;
        make_env(&env, 1, CMTP_RELAY_NONE, 1);
        make_rcpt(&r, "<b@b.example>");
        assert_int_equal(cmtp_client_begin(h->c, &env, &r, 1), -EINVAL);
        ch_free(h);
    }
}

static void test_full_transaction(void **state)
{
    (void)state;
    struct ch *h = ready_client(NULL);
    struct cmtp_envelope *env = malloc(sizeof(*env));
    assert_non_null(env);
    make_env(env, 150, CMTP_RELAY_DOMAIN, 2);
    env->trace_count = 1;
    env->trace[0].hop = 1;
    strcpy(env->trace[0].by, "in.a.example");
    strcpy(env->trace[0].from, "-");
    env->trace[0].at = 1780000000;
    strcpy(env->trace[0].tls, "TLSv1.3/TLS_AES_128_GCM_SHA256");
    strcpy(env->trace[0].peer_id, "-");
    env->trace[0].role = CMTP_ROLE_RELAY;
    struct cmtp_addr rc[3];
    make_rcpt(&rc[0], "<bob@b.example>");
    make_rcpt(&rc[1], "<carol@B.example>");
    make_rcpt(&rc[2], "<dave@b.example>");
    assert_int_equal(cmtp_client_begin(h->c, env, rc, 3), 0);
    assert_int_equal(cmtp_client_begin(h->c, env, rc, 3), -EINVAL);
    assert_int_equal(cmtp_client_state(h->c), CMTP_CLI_STATE_ENVELOPE);
    expect_out(h, "MAIL FROM:<alice@a.example> TXN=" TXID " SIZE=150 DIGEST=" HEX64
                  " RELAY=domain HOPS=2 FALLBACK=none\r\n"
                  "TRACE hop=1 by=in.a.example from=- at=2026-05-28T20:26:40Z "
                  "tls=TLSv1.3/TLS_AES_128_GCM_SHA256 peer-id=- role=relay\r\n"
                  "RCPT TO:<bob@b.example>\r\nRCPT TO:<carol@b.example>\r\n"
                  "RCPT TO:<dave@b.example>\r\n");
    assert_int_equal(cmtp_client_body_header(h->c, 10), -EINVAL);
    assert_int_equal(ch_feed(h, "250 ok txn=" TXID "\r\n250 ok\r\n250 final\r\n"), 1);
    assert_int_equal(last(h)->e, CMTP_CLI_RCPT_RESULT);
    assert_int_equal(last(h)->idx, 0);
    assert_int_equal(last(h)->disp, CMTP_CLI_RCPT_FINAL);
    assert_int_equal(ch_feed(h, "251 relay next=MX.b.example\r\n550 no-mailbox : no such user\r\n"),
                     3);
    struct rec *r = &h->ev[h->nev - 3];
    assert_int_equal(r->idx, 1);
    assert_int_equal(r->disp, CMTP_CLI_RCPT_RELAY);
    assert_string_equal(r->next, "mx.b.example");
    assert_false(r->dropped);
    r++;
    assert_int_equal(r->idx, 2);
    assert_int_equal(r->disp, CMTP_CLI_RCPT_REFUSED);
    assert_int_equal(r->code, 550);
    assert_string_equal(r->status, "no-mailbox");
    r++;
    assert_int_equal(r->e, CMTP_CLI_BODY_READY);
    assert_int_equal(r->ready, 2);
    assert_int_equal(cmtp_client_state(h->c), CMTP_CLI_STATE_BODY);
    expect_out(h, "");

    assert_int_equal(cmtp_client_body_header(h->c, 0), -EINVAL);
    assert_int_equal(cmtp_client_body_header(h->c, 101), -EINVAL); /* chunk-max */
    assert_int_equal(cmtp_client_end(h->c), -EINVAL);
    assert_int_equal(cmtp_client_quit(h->c), -EINVAL);
    assert_int_equal(cmtp_client_body_header(h->c, 100), 0);
    expect_out(h, "BODY 100\r\n");
    assert_int_equal(cmtp_client_body_header(h->c, 51), -EINVAL); /* beyond SIZE */
    assert_int_equal(cmtp_client_body_header(h->c, 50), 0);
    expect_out(h, "BODY 50\r\n");
    assert_int_equal(cmtp_client_end(h->c), 0);
    expect_out(h, "END\r\n");
    assert_int_equal(ch_feed(h, "250 accepted txn=" TXID " id=Q-1 rcpts=2\r\n"), 1);
    r = last(h);
    assert_int_equal(r->e, CMTP_CLI_TXN_DONE);
    assert_int_equal(r->outcome, CMTP_CLI_ACCEPTED);
    assert_string_equal(r->qid, "Q-1");
    assert_int_equal(r->rcpts, 2);
    assert_false(r->dup);
    assert_false(r->local);
    assert_int_equal(r->code, 250);
    assert_int_equal(cmtp_client_state(h->c), CMTP_CLI_STATE_READY);
    assert_int_equal(cmtp_client_quit(h->c), 0);
    expect_out(h, "QUIT\r\n");
    ch_feed(h, "221 bye\r\n");
    assert_int_equal(last(h)->e, CMTP_CLI_CLOSED);
    assert_int_equal(last(h)->code, 221);
    free(env);
    ch_free(h);
}

static bool refuse_other(void *arg, const struct cmtp_envelope *env, const struct cmtp_addr *rcpt,
                         const char *next_hop)
{
    int *calls = arg;
    (*calls)++;
    (void)env;
    (void)rcpt;
    return strncmp(next_hop, "other", 5) != 0;
}

static void test_relay_policy_drop(void **state)
{
    (void)state;
    /* RELAY=none: a relay disposition is DROPped (defence in depth) */
    struct ch *h = ready_client(NULL);
    struct cmtp_envelope env;
    struct cmtp_addr rc[3];
    make_env(&env, 10, CMTP_RELAY_NONE, 8);
    make_rcpt(&rc[0], "<a@b.example>");
    make_rcpt(&rc[1], "<b@b.example>");
    make_rcpt(&rc[2], "<c@b.example>");
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 3), 0);
    ch_drain(h);
    h->out_mark = h->out_len;
    ch_feed(h, "250 ok txn=" TXID "\r\n250 final\r\n251 relay next=mx.b.example\r\n"
               "251 relay next=relay.example\r\n");
    assert_int_equal(h->nev, 4);
    assert_true(h->ev[2].dropped);
    assert_true(h->ev[3].dropped);
    expect_out(h, "DROP 2\r\nDROP 3\r\n");
    assert_int_equal(cmtp_client_body_header(h->c, 10), -EINVAL); /* not before DROP replies */
    ch_feed(h, "250 dropped\r\n");
    assert_int_equal(last(h)->e, CMTP_CLI_RCPT_RESULT);
    ch_feed(h, "250 dropped\r\n");
    assert_int_equal(last(h)->e, CMTP_CLI_BODY_READY);
    assert_int_equal(last(h)->ready, 1);
    ch_free(h);

    /* HOPS=0: no relay allowed even with RELAY=any */
    h = ready_client(NULL);
    make_env(&env, 10, CMTP_RELAY_ANY, 0);
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 2), 0);
    ch_drain(h);
    h->out_mark = h->out_len;
    ch_feed(h, "250 ok txn=" TXID "\r\n251 relay next=x.example\r\n251 relay next=y.example\r\n");
    assert_true(h->ev[1].dropped && h->ev[2].dropped);
    expect_out(h, "RSET\r\n"); /* nobody left: no DROP, abandon */
    ch_feed(h, "250 reset\r\n");
    assert_int_equal(last(h)->e, CMTP_CLI_TXN_DONE);
    assert_int_equal(last(h)->outcome, CMTP_CLI_PERMFAIL);
    assert_true(last(h)->local);
    assert_string_equal(last(h)->status, "no-recipients");
    ch_free(h);

    /* a stricter policy hook; a DROP the server refuses aborts the transaction */
    int calls = 0;
    struct cmtp_client_config cfg = {.allow_relay = refuse_other, .arg = &calls};
    h = ready_client(&cfg);
    make_env(&env, 10, CMTP_RELAY_ANY, 3);
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 3), 0);
    ch_drain(h);
    h->out_mark = h->out_len;
    ch_feed(h, "250 ok txn=" TXID "\r\n251 relay next=fine.example\r\n"
               "251 relay next=other.example\r\n250 final\r\n");
    assert_int_equal(calls, 2);
    assert_false(h->ev[1].dropped);
    assert_true(h->ev[2].dropped);
    expect_out(h, "DROP 2\r\n");
    ch_feed(h, "503 bad-sequence\r\n");
    expect_out(h, "RSET\r\n");
    ch_feed(h, "250 reset\r\n");
    assert_int_equal(last(h)->e, CMTP_CLI_TXN_DONE);
    assert_int_equal(last(h)->outcome, CMTP_CLI_PERMFAIL);
    assert_int_equal(last(h)->code, 503);
    assert_false(last(h)->local);
    ch_free(h);
}

static void test_all_refused(void **state)
{
    (void)state;
    struct ch *h = ready_client(NULL);
    struct cmtp_envelope env;
    struct cmtp_addr rc[2];
    make_env(&env, 10, CMTP_RELAY_NONE, 8);
    make_rcpt(&rc[0], "<a@b.example>");
    make_rcpt(&rc[1], "<b@b.example>");
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 2), 0);
    ch_drain(h);
    h->out_mark = h->out_len;
    ch_feed(h, "250 ok txn=" TXID "\r\n550 no-mailbox\r\n450 try-later\r\n");
    expect_out(h, "RSET\r\n");
    assert_int_equal(cmtp_client_state(h->c), CMTP_CLI_STATE_END);
    ch_feed(h, "250 reset\r\n");
    assert_int_equal(last(h)->e, CMTP_CLI_TXN_DONE);
    assert_int_equal(last(h)->outcome, CMTP_CLI_TEMPFAIL); /* one was temporary: retry */
    assert_true(last(h)->local);
    assert_int_equal(cmtp_client_state(h->c), CMTP_CLI_STATE_READY);

    /* all permanent, and the next transaction on the same connection works */
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 2), 0);
    ch_drain(h);
    ch_feed(h, "250 ok txn=" TXID "\r\n550 no-mailbox\r\n551 relay-denied\r\n");
    ch_feed(h, "250 reset\r\n");
    assert_int_equal(last(h)->outcome, CMTP_CLI_PERMFAIL);
    ch_free(h);
}

static void test_mail_and_trace_refused(void **state)
{
    (void)state;
    struct ch *h = ready_client(NULL);
    struct cmtp_envelope env;
    struct cmtp_addr rc[2];
    make_env(&env, 10, CMTP_RELAY_NONE, 8);
    make_rcpt(&rc[0], "<a@b.example>");
    make_rcpt(&rc[1], "<b@b.example>");
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 2), 0);
    ch_drain(h);
    h->out_mark = h->out_len;
    /* MAIL refused: the pipelined RCPT replies are absorbed, no RSET, no RCPT_RESULT */
    assert_int_equal(ch_feed(h, "451 try-later\r\n503 bad-sequence\r\n"), 0);
    assert_int_equal(ch_feed(h, "503 bad-sequence\r\n"), 1);
    assert_int_equal(last(h)->e, CMTP_CLI_TXN_DONE);
    assert_int_equal(last(h)->outcome, CMTP_CLI_TEMPFAIL);
    assert_int_equal(last(h)->code, 451);
    assert_string_equal(last(h)->status, "try-later");
    expect_out(h, "");
    ch_free(h);

    /* the same with the output still pending: replies are matched to generated lines */
    h = ready_client(NULL);
    const uint8_t *p;
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 2), 0);
    assert_true(cmtp_client_output(h->c, &p) > 0);
    assert_int_equal(ch_feed(h, "552 too-big\r\n503 bad-sequence\r\n503 bad-sequence\r\n"), 1);
    assert_int_equal(last(h)->outcome, CMTP_CLI_PERMFAIL);
    ch_free(h);

    /* TRACE refused: the server holds a transaction, so RSET before TXN_DONE */
    h = ready_client(NULL);
    env.trace_count = 1;
    env.trace[0].hop = 1;
    strcpy(env.trace[0].by, "in.a.example");
    strcpy(env.trace[0].from, "-");
    env.trace[0].at = 1780000000;
    strcpy(env.trace[0].tls, "TLSv1.3/X");
    strcpy(env.trace[0].peer_id, "-");
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 2), 0);
    ch_drain(h);
    h->out_mark = h->out_len;
    assert_int_equal(ch_feed(h, "250 ok txn=" TXID "\r\n552 too-many-hops\r\n250 final\r\n"
                                "250 final\r\n"),
                     0);
    expect_out(h, "RSET\r\n");
    ch_feed(h, "250 reset\r\n");
    assert_int_equal(last(h)->e, CMTP_CLI_TXN_DONE);
    assert_int_equal(last(h)->outcome, CMTP_CLI_PERMFAIL);
    assert_int_equal(last(h)->code, 552);
    ch_free(h);
}

static void test_end_results(void **state)
{
    (void)state;
    static const struct {
        const char *reply;
        enum cmtp_cli_ev e;
        enum cmtp_cli_outcome o;
        bool dup;
        bool local;
    } cases[] = {
        {"250 accepted txn=" TXID " id=Q7 rcpts=1 dup=1\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_ACCEPTED,
         true, false},
        {"250 accepted txn=" TXID " id=Q7 rcpts=1\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_ACCEPTED, false,
         false},
        {"554 digest-mismatch\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_PERMFAIL, false, false},
        {"554 txn-conflict\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_PERMFAIL, false, false},
        {"554 size-mismatch\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_PERMFAIL, false, false},
        {"451 try-later : storage\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_TEMPFAIL, false, false},
        {"602 size-exceeded\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_TEMPFAIL, false, false},
        {"421 shutting-down\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_TEMPFAIL, false, false},
        /* malformed acceptances: nothing is known, retry with the same txid */
        {"250 accepted txn=txn0123456789XXXX id=Q7 rcpts=1\r\n", CMTP_CLI_TXN_DONE,
         CMTP_CLI_TEMPFAIL, false, true},
        {"250 accepted txn=" TXID " rcpts=1\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_TEMPFAIL, false,
         true},
        {"250 accepted txn=" TXID " id=Q7 rcpts=x\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_TEMPFAIL, false,
         true},
        {"250 accepted txn=" TXID " id=Q7 rcpts=1 dup=2\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_TEMPFAIL,
         false, true},
        {"250 accepted txn=" TXID " id=Q\xc3\xa9 rcpts=1\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_TEMPFAIL,
         false, true},
        {"250 ok\r\n", CMTP_CLI_TXN_DONE, CMTP_CLI_TEMPFAIL, false, true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ch *h = ready_client(NULL);
        struct cmtp_envelope env;
        struct cmtp_addr rc;
        make_env(&env, 3, CMTP_RELAY_NONE, 8);
        make_rcpt(&rc, "<a@b.example>");
        assert_int_equal(cmtp_client_begin(h->c, &env, &rc, 1), 0);
        ch_drain(h);
        ch_feed(h, "250 ok txn=" TXID "\r\n250 final\r\n");
        assert_int_equal(last(h)->e, CMTP_CLI_BODY_READY);
        assert_int_equal(cmtp_client_body_header(h->c, 3), 0);
        assert_int_equal(cmtp_client_end(h->c), 0);
        ch_drain(h);
        size_t before = h->nev;
        ch_feed(h, cases[i].reply);
        assert_true(h->nev > before);
        struct rec *r = &h->ev[before];
        if (r->e != cases[i].e || r->outcome != cases[i].o)
            fail_msg("case %zu: event %d outcome %d", i, (int)r->e, (int)r->outcome);
        assert_int_equal(r->dup, cases[i].dup);
        assert_int_equal(r->local, cases[i].local);
        if (cases[i].local)
            assert_int_equal(last(h)->e, CMTP_CLI_PROTOCOL_ERROR);
        ch_free(h);
    }
}

static void test_malformed_replies(void **state)
{
    (void)state;
    struct cmtp_envelope env;
    struct cmtp_addr rc;
    make_env(&env, 3, CMTP_RELAY_ANY, 8);
    make_rcpt(&rc, "<a@b.example>");
    static const char *const bad_envelope[] = {
        "250 ok\r\n",
        "250 ok txn=other0123456789ab\r\n",
        "251 ok txn=" TXID "\r\n",
        "250 ok txn=" TXID "\r\n250 relay\r\n",
        "250 ok txn=" TXID "\r\n251 relay\r\n",
        "250 ok txn=" TXID "\r\n251 relay next=bad\r\n",
        "250 ok txn=" TXID "\r\n251 relay next=a.example\xc0\r\n",
        "250 ok txn=" TXID "\r\n252 final\r\n",
        "250 ok txn=" TXID "\r\n250 final\r\n250 ok\r\n",
        "250 ok txn=" TXID "\r\n250 final junk\r\n",
        "250 ok txn=" TXID "\r\n250 final\r",
        "250 ok txn=" TXID "\n",
        "ok\r\n",
    };
    for (size_t i = 0; i < sizeof(bad_envelope) / sizeof(bad_envelope[0]); i++) {
        struct ch *h = ready_client(NULL);
        assert_int_equal(cmtp_client_begin(h->c, &env, &rc, 1), 0);
        ch_drain(h);
        const char *s = bad_envelope[i];
        /* the unterminated line needs one more octet to be judged */
        char buf[256];
        snprintf(buf, sizeof(buf), "%s%s", s, s[strlen(s) - 1] == '\r' ? "x" : "");
        ch_feed(h, buf);
        if (last(h)->e != CMTP_CLI_PROTOCOL_ERROR)
            fail_msg("case %zu: event %d", i, (int)last(h)->e);
        /* a transaction in progress was reported as a temporary failure first */
        bool done = false;
        for (size_t k = 0; k < h->nev; k++)
            done |= h->ev[k].e == CMTP_CLI_TXN_DONE && h->ev[k].outcome == CMTP_CLI_TEMPFAIL;
        assert_true(done);
        ch_free(h);
    }

    /* unsolicited replies */
    struct ch *h = ready_client(NULL);
    ch_feed(h, "250 ok\r\n");
    assert_int_equal(last(h)->e, CMTP_CLI_PROTOCOL_ERROR);
    ch_free(h);
    h = ready_client(NULL);
    assert_int_equal(cmtp_client_begin(h->c, &env, &rc, 1), 0);
    ch_drain(h);
    ch_feed(h, "250 ok txn=" TXID "\r\n250 final\r\n250 ok\r\n");
    assert_int_equal(h->ev[h->nev - 3].e, CMTP_CLI_BODY_READY);
    assert_int_equal(h->ev[h->nev - 2].e, CMTP_CLI_TXN_DONE);
    assert_int_equal(last(h)->e, CMTP_CLI_PROTOCOL_ERROR);
    ch_free(h);

    /* a reply for a command never sent */
    h = ready_client(NULL);
    assert_int_equal(cmtp_client_begin(h->c, &env, &rc, 1), 0);
    ch_feed(h, "250 ok txn=" TXID "\r\n");
    assert_int_equal(last(h)->e, CMTP_CLI_PROTOCOL_ERROR);
    ch_free(h);

    /* a line too long */
    h = ready_client(NULL);
    char *big = malloc(CMTP_LINE_MAX + 16);
    assert_non_null(big);
    memcpy(big, "250 ok : ", 9);
    memset(big + 9, 'x', CMTP_LINE_MAX);
    ch_feed_n(h, big, CMTP_LINE_MAX);
    assert_int_equal(last(h)->e, CMTP_CLI_PROTOCOL_ERROR);
    free(big);
    ch_free(h);

    /* the server closes mid-transaction */
    h = ready_client(NULL);
    assert_int_equal(cmtp_client_begin(h->c, &env, &rc, 1), 0);
    ch_drain(h);
    ch_feed(h, "250 ok txn=" TXID "\r\n604 too-many-errors : bye\r\n");
    assert_int_equal(h->ev[h->nev - 2].e, CMTP_CLI_TXN_DONE);
    assert_int_equal(h->ev[h->nev - 2].outcome, CMTP_CLI_TEMPFAIL);
    assert_int_equal(h->ev[h->nev - 2].code, 604);
    assert_int_equal(last(h)->e, CMTP_CLI_CLOSED);
    assert_int_equal(last(h)->code, 604);
    ch_free(h);

    /* 452 too-many-txn: the server closes after it */
    h = ready_client(NULL);
    assert_int_equal(cmtp_client_begin(h->c, &env, &rc, 1), 0);
    ch_drain(h);
    ch_feed(h, "452 too-many-txn\r\n");
    assert_int_equal(h->ev[h->nev - 2].e, CMTP_CLI_TXN_DONE);
    assert_int_equal(h->ev[h->nev - 2].outcome, CMTP_CLI_TEMPFAIL);
    assert_int_equal(last(h)->e, CMTP_CLI_CLOSED);
    ch_free(h);
}

static void test_greeting_limits(void **state)
{
    (void)state;
    struct ch *h = ready_client(NULL);
    struct cmtp_envelope env;
    struct cmtp_addr rc[6];
    for (int i = 0; i < 6; i++)
        make_rcpt(&rc[i], "<a@b.example>");
    make_env(&env, 1001, CMTP_RELAY_NONE, 8); /* size-max=1000 */
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 1), 0);
    expect_out(h, "");
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 1), -EINVAL); /* event pending */
    ch_feed(h, "");
    assert_int_equal(last(h)->e, CMTP_CLI_TXN_DONE);
    assert_int_equal(last(h)->outcome, CMTP_CLI_PERMFAIL);
    assert_true(last(h)->local);
    assert_int_equal(last(h)->code, 0);
    assert_string_equal(last(h)->status, "too-big");
    make_env(&env, 1000, CMTP_RELAY_NONE, 8);
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 6), 0); /* rcpt-max=5 */
    ch_feed(h, "");
    assert_string_equal(last(h)->status, "too-many-rcpts");
    expect_out(h, "");
    /* txn-max=3: three transactions, then a local temporary failure */
    for (int t = 0; t < 3; t++) {
        assert_int_equal(cmtp_client_begin(h->c, &env, rc, 5), 0);
        ch_drain(h);
        ch_feed(h, "451 try-later\r\n503 bad-sequence\r\n503 bad-sequence\r\n503 bad-sequence\r\n"
                   "503 bad-sequence\r\n503 bad-sequence\r\n");
        assert_int_equal(last(h)->e, CMTP_CLI_TXN_DONE);
        assert_false(last(h)->local);
    }
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 1), 0);
    ch_feed(h, "");
    assert_int_equal(last(h)->outcome, CMTP_CLI_TEMPFAIL);
    assert_string_equal(last(h)->status, "too-many-txn");
    ch_free(h);
}

static void test_api_misuse(void **state)
{
    (void)state;
    struct ch *h = ch_new(NULL);
    struct cmtp_envelope env;
    struct cmtp_addr rc[2];
    make_env(&env, 10, CMTP_RELAY_NONE, 8);
    make_rcpt(&rc[0], "<a@b.example>");
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 1), -EINVAL); /* no greeting */
    assert_int_equal(cmtp_client_quit(h->c), -EINVAL);
    ch_feed(h, GREETING);
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 0), -EINVAL);
    assert_int_equal(cmtp_client_begin(h->c, NULL, rc, 1), -EINVAL);
    assert_int_equal(cmtp_addr_parse(&rc[1], "<>", 2, CMTP_ADDR_ALLOW_NULL), CMTP_ADDR_OK);
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 2), -EINVAL);
    strcpy(env.txid, "short");
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 1), -EINVAL);
    make_env(&env, 10, CMTP_RELAY_NONE, 8);
    env.trace_count = 1; /* an empty trace record is refused */
    assert_int_equal(cmtp_client_begin(h->c, &env, rc, 1), -EINVAL);
    assert_int_equal(cmtp_client_body_header(h->c, 1), -EINVAL);
    assert_int_equal(cmtp_client_end(h->c), -EINVAL);
    expect_out(h, "");
    cmtp_client_free(NULL);
    ch_free(h);
}

/* ---- client and server connected in memory ---- */

static uint32_t rnd(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

/* wire is one direction of the in-memory connection. */
struct wire {
    uint8_t *buf;
    size_t len, cap, off;
};

static void wire_put(struct wire *w, const void *p, size_t n)
{
    if (w->len + n > w->cap) {
        w->cap = (w->len + n) * 2 + 1024;
        w->buf = realloc(w->buf, w->cap);
        assert_non_null(w->buf);
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

struct loop {
    uint32_t seed;
    struct cmtp_client *c;
    struct cmtp_server *s;
    struct wire c2s, s2c;
    /* the current transaction */
    struct cmtp_envelope env;
    struct cmtp_addr rcpts[8];
    size_t nrcpt;
    uint8_t body[6000];
    uint8_t got[6000];
    size_t got_len;
    uint32_t chunk_max;
    int txns_left;
    /* expectations and results */
    size_t expect_accepted;
    uint32_t server_accepted;
    int done, accepted, failed, closed, ends, dropped;
};

static const char *const kinds[] = {"final", "relayin", "relayout", "nobody", "temp"};

/* loop_server_answer answers server events like a real daemon would, by local part. */
static void loop_server_event(struct loop *L, enum cmtp_srv_ev e, const struct cmtp_srv_event *ev)
{
    switch (e) {
    case CMTP_SRV_MAIL:
        L->got_len = 0;
        assert_int_equal(cmtp_server_mail_reply(L->s, CMTP_SRV_MAIL_OK), 0);
        break;
    case CMTP_SRV_RCPT: {
        const char *l = ev->rcpt->local;
        char hop[300];
        if (strncmp(l, "relayin", 7) == 0) {
            snprintf(hop, sizeof(hop), "mx.%s", ev->rcpt->domain);
            assert_int_equal(cmtp_server_rcpt_reply(L->s, CMTP_SRV_ANSWER_RELAY, hop), 0);
        } else if (strncmp(l, "relayout", 8) == 0) {
            assert_int_equal(cmtp_server_rcpt_reply(L->s, CMTP_SRV_ANSWER_RELAY, "other.example"),
                             0);
        } else if (strncmp(l, "nobody", 6) == 0) {
            assert_int_equal(cmtp_server_rcpt_reply(L->s, CMTP_SRV_ANSWER_NO_MAILBOX, NULL), 0);
        } else if (strncmp(l, "temp", 4) == 0) {
            assert_int_equal(cmtp_server_rcpt_reply(L->s, CMTP_SRV_ANSWER_TEMPFAIL, NULL), 0);
        } else {
            assert_int_equal(cmtp_server_rcpt_reply(L->s, CMTP_SRV_ANSWER_FINAL, NULL), 0);
        }
        break;
    }
    case CMTP_SRV_BODY:
        assert_true(L->got_len + ev->len <= sizeof(L->got));
        assert_int_equal(ev->offset, L->got_len);
        memcpy(L->got + L->got_len, ev->data, ev->len);
        L->got_len += ev->len;
        break;
    case CMTP_SRV_END: {
        /* the body bytes the server surfaced are exactly what the client sent */
        assert_int_equal(L->got_len, L->env.size);
        assert_memory_equal(L->got, L->body, L->got_len);
        L->server_accepted = ev->rcpt_accepted;
        L->ends++;
        struct cmtp_srv_end_answer a = {
            .result = CMTP_SRV_END_ACCEPTED, .qid = "Q42", .rcpts = ev->rcpt_accepted};
        assert_int_equal(cmtp_server_end_reply(L->s, &a), 0);
        break;
    }
    default:
        break;
    }
}

/* loop_begin starts a random transaction and computes what must happen to it. */
static void loop_begin(struct loop *L)
{
    static const enum cmtp_relay relays[] = {CMTP_RELAY_NONE, CMTP_RELAY_DOMAIN, CMTP_RELAY_ANY};
    memset(&L->env, 0, sizeof(L->env));
    cmtp_policy_init(&L->env.policy);
    assert_int_equal(cmtp_addr_parse(&L->env.from, "<alice@a.example>", 17, 0), CMTP_ADDR_OK);
    snprintf(L->env.txid, sizeof(L->env.txid), "loop-txn-%08x", rnd(&L->seed));
    L->env.size = 1 + rnd(&L->seed) % sizeof(L->body);
    for (size_t i = 0; i < L->env.size; i++) {
        uint32_t r = rnd(&L->seed) % 8;
        L->body[i] = r == 0   ? '\r'
                     : r == 1 ? '\n'
                     : r == 2 ? '.'
                     : r == 3 ? 0
                              : (uint8_t)rnd(&L->seed);
    }
    L->env.policy.relay = relays[rnd(&L->seed) % 3];
    L->env.policy.hops = rnd(&L->seed) % 3;
    L->nrcpt = 1 + rnd(&L->seed) % 6;
    L->expect_accepted = 0;
    for (size_t i = 0; i < L->nrcpt; i++) {
        int k = (int)(rnd(&L->seed) % 5);
        char a[128];
        snprintf(a, sizeof(a), "<%s%zu@d%u.example>", kinds[k], i, rnd(&L->seed) % 3);
        assert_int_equal(cmtp_addr_parse(&L->rcpts[i], a, strlen(a), 0), CMTP_ADDR_OK);
        /* the server's policy, then the client's stricter hook (no next hop "other") */
        bool relay_ok = L->env.policy.hops > 0 && L->env.policy.relay != CMTP_RELAY_NONE;
        if (k == 0)
            L->expect_accepted++;
        else if (k == 1 && relay_ok)
            L->expect_accepted++;
        /* k == 2 (other.example): the server allows it under RELAY=any, the client drops it */
    }
    assert_int_equal(cmtp_client_begin(L->c, &L->env, L->rcpts, L->nrcpt), 0);
}

static void loop_client_event(struct loop *L, enum cmtp_cli_ev e, const struct cmtp_cli_event *ev)
{
    switch (e) {
    case CMTP_CLI_GREETING:
        L->chunk_max = ev->greeting->chunk_max;
        loop_begin(L);
        break;
    case CMTP_CLI_BODY_READY: {
        assert_int_equal(ev->rcpt_ready, L->expect_accepted);
        size_t sent = 0;
        while (sent < L->env.size) {
            size_t n = 1 + rnd(&L->seed) % L->chunk_max;
            if (n > L->env.size - sent)
                n = L->env.size - sent;
            assert_int_equal(cmtp_client_body_header(L->c, n), 0);
            /* the ordering contract: all pending output, then the n octets */
            const uint8_t *p;
            size_t k;
            while ((k = cmtp_client_output(L->c, &p)) > 0) {
                wire_put(&L->c2s, p, k);
                cmtp_client_output_consume(L->c, k);
            }
            wire_put(&L->c2s, L->body + sent, n);
            sent += n;
        }
        assert_int_equal(cmtp_client_end(L->c), 0);
        break;
    }
    case CMTP_CLI_TXN_DONE:
        L->done++;
        if (L->expect_accepted > 0) {
            assert_int_equal(ev->outcome, CMTP_CLI_ACCEPTED);
            assert_int_equal(ev->rcpts, L->expect_accepted);
            assert_int_equal(L->server_accepted, L->expect_accepted);
            assert_string_equal(ev->qid, "Q42");
            L->accepted++;
        } else {
            assert_int_not_equal(ev->outcome, CMTP_CLI_ACCEPTED);
            assert_string_equal(ev->status, "no-recipients");
            L->failed++;
        }
        if (--L->txns_left > 0)
            loop_begin(L);
        else
            assert_int_equal(cmtp_client_quit(L->c), 0);
        break;
    case CMTP_CLI_RCPT_RESULT:
        L->dropped += ev->dropped;
        break;
    case CMTP_CLI_CLOSED:
        L->closed++;
        break;
    case CMTP_CLI_PROTOCOL_ERROR:
        fail_msg("protocol error: %s", ev->status);
        break;
    default:
        break;
    }
}

static bool refuse_other_hop(void *arg, const struct cmtp_envelope *env,
                             const struct cmtp_addr *rcpt, const char *next_hop)
{
    (void)arg;
    return strcmp(next_hop, "other.example") != 0 &&
           cmtp_policy_allows_relay(&env->policy, rcpt->domain, next_hop);
}

/* loop_stats sums what the random connections did, to show the test covers each path. */
struct loop_stats {
    int accepted, failed, dropped;
};

/* loop_run runs one connection of |txns| transactions with random split points. */
static void loop_run(uint32_t seed, int txns, struct loop_stats *st)
{
    struct loop *L = calloc(1, sizeof(*L));
    assert_non_null(L);
    L->seed = seed;
    L->txns_left = txns;
    struct cmtp_client_config ccfg = {.allow_relay = refuse_other_hop};
    L->c = cmtp_client_new(&ccfg);
    struct cmtp_server_config scfg = {
        .host = "mx.example", .chunk_max = 1 + rnd(&L->seed) % 3000, .rcpt_max = 8};
    L->s = cmtp_server_new(&scfg);
    assert_non_null(L->c);
    assert_non_null(L->s);
    cmtp_server_start(L->s);
    bool server_closed = false;
    for (int round = 0; round < 100000; round++) {
        bool progress = false;
        const uint8_t *p;
        size_t n;
        /* server output -> wire */
        while ((n = cmtp_server_output(L->s, &p)) > 0) {
            size_t k = 1 + rnd(&L->seed) % n;
            wire_put(&L->s2c, p, k);
            cmtp_server_output_consume(L->s, k);
            progress = true;
        }
        /* client output -> wire */
        if ((n = cmtp_client_output(L->c, &p)) > 0) {
            size_t k = 1 + rnd(&L->seed) % n;
            wire_put(&L->c2s, p, k);
            cmtp_client_output_consume(L->c, k);
            progress = true;
        }
        /* wire -> server, a random piece */
        if (!server_closed) {
            size_t avail = L->c2s.len - L->c2s.off;
            size_t k = avail ? 1 + rnd(&L->seed) % avail : 0;
            for (;;) {
                struct cmtp_srv_event ev;
                size_t c;
                enum cmtp_srv_ev e = cmtp_server_feed(L->s, L->c2s.buf + L->c2s.off, k, &c, &ev);
                L->c2s.off += c;
                k -= c;
                if (c > 0)
                    progress = true;
                if (e == CMTP_SRV_NEED_INPUT || e == CMTP_SRV_FLUSH)
                    break;
                if (e == CMTP_SRV_CLOSE) {
                    server_closed = true;
                    break;
                }
                loop_server_event(L, e, &ev);
                progress = true;
            }
        }
        /* wire -> client, a random piece */
        size_t avail = L->s2c.len - L->s2c.off;
        size_t k = avail ? 1 + rnd(&L->seed) % avail : 0;
        for (;;) {
            struct cmtp_cli_event ev;
            size_t c;
            enum cmtp_cli_ev e = cmtp_client_feed(L->c, L->s2c.buf + L->s2c.off, k, &c, &ev);
            L->s2c.off += c;
            k -= c;
            if (c > 0)
                progress = true;
            if (e == CMTP_CLI_NEED_INPUT || (e == CMTP_CLI_CLOSED && L->closed))
                break;
            loop_client_event(L, e, &ev);
            progress = true;
        }
        if (L->closed && server_closed && L->s2c.off == L->s2c.len)
            break;
        if (!progress && L->c2s.off == L->c2s.len && L->s2c.off == L->s2c.len)
            fail_msg("seed %u: stalled: client %d server %d done %d out %.*s", seed,
                     (int)cmtp_client_state(L->c), (int)cmtp_server_state(L->s), L->done,
                     (int)L->s2c.len, (const char *)L->s2c.buf);
    }
    assert_int_equal(L->closed, 1);
    assert_true(server_closed);
    assert_int_equal(L->done, txns);
    assert_int_equal(L->c2s.off, L->c2s.len); /* the server consumed every byte */
    assert_int_equal(L->ends, L->accepted);
    st->accepted += L->accepted;
    st->failed += L->failed;
    st->dropped += L->dropped;
    cmtp_client_free(L->c);
    cmtp_server_free(L->s);
    free(L->c2s.buf);
    free(L->s2c.buf);
    free(L);
}

static void test_client_server_in_memory(void **state)
{
    (void)state;
    struct loop_stats st = {0};
    for (uint32_t seed = 1; seed <= 300; seed++)
        loop_run(seed * 2654435761u, 3, &st);
    print_message("in-memory sessions: %d accepted, %d failed, %d recipients dropped\n",
                  st.accepted, st.failed, st.dropped);
    assert_true(st.accepted > 100);
    assert_true(st.failed > 100);
    assert_true(st.dropped > 50);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greeting),
        cmocka_unit_test(test_full_transaction),
        cmocka_unit_test(test_relay_policy_drop),
        cmocka_unit_test(test_all_refused),
        cmocka_unit_test(test_mail_and_trace_refused),
        cmocka_unit_test(test_end_results),
        cmocka_unit_test(test_malformed_replies),
        cmocka_unit_test(test_greeting_limits),
        cmocka_unit_test(test_api_misuse),
        cmocka_unit_test(test_client_server_in_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
