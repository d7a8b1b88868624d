/* tests/unit/test_core_server.c — the CMTP/1 server state machine without sockets: every state
 * and command, every reply, the relay policy, limits, body framing, shutdown and timeouts. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/proto.h"
#include "core/server.h"

#define TXID "txn0123456789abcd"
#define TXID2 "txn0123456789abce"
#define HEX64 "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

/* ---- harness ---- */

/* h is one server plus everything it produced. Events are answered automatically: MAIL with
 * |mail_answer|; RCPT by local part (`relayin*`: relay to mx.<rcpt domain>, `relayout*`: relay
 * to other.example, `nobody*`: no mailbox, `temp*`: temporary failure, else final); END with
 * |end|. */
struct h {
    struct cmtp_server *s;
    char *out;
    size_t out_len, out_cap, out_mark;
    uint8_t *body;
    size_t body_len, body_cap;
    uint8_t *events; /* a transcript of event kinds, one letter each */
    size_t ev_len, ev_cap;
    int n_mail, n_rcpt, n_end, n_reset, n_flush;
    bool closed;
    unsigned close_code;
    char close_status[64];
    enum cmtp_srv_mail_answer mail_answer;
    struct cmtp_srv_end_answer end;
    bool end_rcpts_from_event;
    uint32_t end_accepted;
    size_t end_rcpt_count;
    unsigned end_trace_count;
    uint64_t last_offset_end;
};

static void grow(void **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return;
    *cap = need * 2 + 256;
    *p = realloc(*p, *cap);
    assert_non_null(*p);
}

static struct h *h_new(const struct cmtp_server_config *cfg)
{
    struct h *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    struct cmtp_server_config def = {.host = "mx.example"};
    h->s = cmtp_server_new(cfg != NULL ? cfg : &def);
    assert_non_null(h->s);
    h->mail_answer = CMTP_SRV_MAIL_OK;
    h->end.result = CMTP_SRV_END_ACCEPTED;
    h->end.qid = "Q1";
    h->end_rcpts_from_event = true;
    cmtp_server_start(h->s);
    return h;
}

static void h_free(struct h *h)
{
    cmtp_server_free(h->s);
    free(h->out);
    free(h->body);
    free(h->events);
    free(h);
}

static void h_drain(struct h *h)
{
    const uint8_t *p;
    size_t n = cmtp_server_output(h->s, &p);
    grow((void **)&h->out, &h->out_cap, h->out_len + n + 1);
    memcpy(h->out + h->out_len, p, n);
    h->out_len += n;
    h->out[h->out_len] = '\0';
    cmtp_server_output_consume(h->s, n);
}

static void h_event(struct h *h, char kind)
{
    grow((void **)&h->events, &h->ev_cap, h->ev_len + 1);
    h->events[h->ev_len++] = (uint8_t)kind;
}

static void answer_rcpt(struct h *h, const struct cmtp_addr *a)
{
    char hop[300];
    int r;
    if (strncmp(a->local, "relayin", 7) == 0) {
        snprintf(hop, sizeof(hop), "mx.%s", a->domain);
        r = cmtp_server_rcpt_reply(h->s, CMTP_SRV_ANSWER_RELAY, hop);
    } else if (strncmp(a->local, "relayout", 8) == 0) {
        r = cmtp_server_rcpt_reply(h->s, CMTP_SRV_ANSWER_RELAY, "other.example");
    } else if (strncmp(a->local, "nobody", 6) == 0) {
        r = cmtp_server_rcpt_reply(h->s, CMTP_SRV_ANSWER_NO_MAILBOX, NULL);
    } else if (strncmp(a->local, "temp", 4) == 0) {
        r = cmtp_server_rcpt_reply(h->s, CMTP_SRV_ANSWER_TEMPFAIL, NULL);
    } else {
        r = cmtp_server_rcpt_reply(h->s, CMTP_SRV_ANSWER_FINAL, NULL);
    }
    assert_int_equal(r, 0);
}

/* h_handle acts on one event. Returns false when the session closed. */
static bool h_handle(struct h *h, enum cmtp_srv_ev e, const struct cmtp_srv_event *ev)
{
    switch (e) {
    case CMTP_SRV_NEED_INPUT:
        h_drain(h);
        return true;
    case CMTP_SRV_MAIL:
        h_event(h, 'M');
        h->n_mail++;
        h->body_len = 0;
        h->last_offset_end = 0;
        assert_non_null(ev->env);
        assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_WAIT);
        assert_int_equal(cmtp_server_mail_reply(h->s, h->mail_answer), 0);
        break;
    case CMTP_SRV_RCPT:
        h_event(h, 'R');
        h->n_rcpt++;
        assert_non_null(ev->rcpt);
        assert_true(ev->rcpt_index >= 1);
        assert_ptr_equal(&cmtp_server_rcpt(h->s, ev->rcpt_index)->addr, ev->rcpt);
        answer_rcpt(h, ev->rcpt);
        break;
    case CMTP_SRV_BODY:
        h_event(h, 'B');
        assert_true(ev->len > 0);
        assert_int_equal(ev->offset, h->last_offset_end); /* pieces arrive in order */
        h->last_offset_end = ev->offset + ev->len;
        grow((void **)&h->body, &h->body_cap, h->body_len + ev->len);
        memcpy(h->body + h->body_len, ev->data, ev->len);
        h->body_len += ev->len;
        break;
    case CMTP_SRV_END: {
        h_event(h, 'E');
        h->n_end++;
        assert_int_equal(h->body_len, ev->env->size);
        h->end_accepted = ev->rcpt_accepted;
        h->end_rcpt_count = ev->rcpt_count;
        h->end_trace_count = ev->env->trace_count;
        struct cmtp_srv_end_answer a = h->end;
        if (h->end_rcpts_from_event)
            a.rcpts = ev->rcpt_accepted;
        assert_int_equal(cmtp_server_end_reply(h->s, &a), 0);
        break;
    }
    case CMTP_SRV_RESET:
        h_event(h, 'X');
        h->n_reset++;
        h->body_len = 0;
        break;
    case CMTP_SRV_CLOSE:
        h_event(h, 'C');
        h->closed = true;
        h->close_code = ev->code;
        snprintf(h->close_status, sizeof(h->close_status), "%s", ev->status);
        h_drain(h);
        return false;
    case CMTP_SRV_FLUSH:
        h->n_flush++;
        break;
    case CMTP_SRV_BLOCKED:
        fail_msg("blocked with automatic answers");
        break;
    }
    h_drain(h);
    return true;
}

/* h_feed feeds |len| octets in pieces of |piece| octets (0: whole), answering every event. */
static void h_feed_split(struct h *h, const void *in, size_t len, size_t piece)
{
    const uint8_t *p = in;
    size_t left = len;
    if (h->closed)
        return;
    do {
        size_t n = piece == 0 || piece > left ? left : piece;
        const uint8_t *q = p;
        size_t qleft = n;
        for (;;) {
            struct cmtp_srv_event ev;
            size_t c;
            enum cmtp_srv_ev e = cmtp_server_feed(h->s, q, qleft, &c, &ev);
            assert_true(c <= qleft);
            q += c;
            qleft -= c;
            if (!h_handle(h, e, &ev))
                return;
            if (e == CMTP_SRV_NEED_INPUT) {
                assert_int_equal(qleft, 0);
                break;
            }
        }
        p += n;
        left -= n;
    } while (left > 0);
}

static void h_feed(struct h *h, const char *s)
{
    h_feed_split(h, s, strlen(s), 0);
}

/* expect asserts that the output since the last call is exactly |want|. */
static void expect(struct h *h, const char *want)
{
    size_t n = h->out_len - h->out_mark;
    if (n != strlen(want) || memcmp(h->out + h->out_mark, want, n) != 0)
        fail_msg("output mismatch\n--- got ---\n%.*s--- want ---\n%s", (int)n, h->out + h->out_mark,
                 want);
    h->out_mark = h->out_len;
}

static void skip_greeting(struct h *h)
{
    h_drain(h);
    char *eol = strstr(h->out + h->out_mark, "\r\n");
    assert_non_null(eol);
    assert_memory_equal(h->out + h->out_mark, "220 ready ", 10);
    h->out_mark = (size_t)(eol + 2 - h->out);
}

static char *mail_line(char *buf, size_t size, const char *from, uint64_t body_size,
                       const char *extra)
{
    snprintf(buf, size, "MAIL FROM:%s TXN=" TXID " SIZE=%llu DIGEST=" HEX64 "%s%s\r\n", from,
             (unsigned long long)body_size, extra[0] ? " " : "", extra);
    return buf;
}

/* ---- tests ---- */

static void test_greeting_and_config(void **state)
{
    (void)state;
    struct cmtp_server_config cfg = {.host = "MX.B\xc3\xbc"
                                             "cher.example",
                                     .size_max = 1000,
                                     .rcpt_max = 5,
                                     .chunk_max = 100,
                                     .txn_max = 7,
                                     .errors_max = 3};
    struct h *h = h_new(&cfg);
    h_drain(h);
    expect(h, "220 ready proto=cmtp/1 host=mx.xn--bcher-kva.example size-max=1000 rcpt-max=5 "
              "chunk-max=100 line-max=4096 txn-max=7\r\n");
    h_free(h);

    h = h_new(NULL);
    h_drain(h);
    expect(h, "220 ready proto=cmtp/1 host=mx.example size-max=67108864 rcpt-max=1000 "
              "chunk-max=1048576 line-max=4096 txn-max=1000\r\n");
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_IDLE);
    assert_false(cmtp_server_in_transaction(h->s));
    h_free(h);

    struct cmtp_server_config bad[] = {
        {.host = NULL},
        {.host = "bad host"},
        {.host = "localhost"},
        {.host = "mx.example\r\n250 ok"},
        {.host = "mx.example", .size_max = CMTP_SIZE_MAX_HARD + 1},
        {.host = "mx.example", .rcpt_max = CMTP_RCPT_MAX_HARD + 1},
        {.host = "mx.example", .chunk_max = CMTP_CHUNK_MAX_HARD + 1},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_null(cmtp_server_new(&bad[i]));
    assert_null(cmtp_server_new(NULL));
    cmtp_server_free(NULL);
}

static void test_full_transaction(void **state)
{
    (void)state;
    struct h *h = h_new(NULL);
    skip_greeting(h);
    char line[512];
    h_feed(h, mail_line(line, sizeof(line), "<Alice@Example.org>", 10, "RELAY=domain HOPS=2"));
    expect(h, "250 ok txn=" TXID "\r\n");
    assert_true(cmtp_server_in_transaction(h->s));
    h_feed(h, "TRACE hop=1 by=mx.example.org from=-  at=2026-06-01T12:00:00Z tls=TLSv1.3/X "
              "peer-id=- role=relay\r\n");
    expect(h, "501 bad-syntax\r\n");
    h_feed(h, "TRACE hop=1 by=mx.example.org from=- at=2026-06-01T12:00:00Z tls=TLSv1.3/X "
              "peer-id=- role=relay\r\n");
    h_feed(h, "trace hop=2 by=relay.example from=mx.example.org at=2026-06-01T12:00:01Z "
              "tls=TLSv1.3/TLS_AES_256_GCM_SHA384 peer-id=mx.example.org role=relay\r\n");
    expect(h, "250 ok\r\n250 ok\r\n");
    h_feed(h, "RCPT TO:<bob@mx.example>\r\nRCPT TO:<relayin@b.example>\r\n"
              "RCPT TO:<nobody@mx.example>\r\nrcpt to:<temp@mx.example>\r\n"
              "RCPT TO:<relayout@b.example>\r\n");
    expect(h, "250 final\r\n251 relay next=mx.b.example\r\n550 no-mailbox\r\n450 try-later\r\n"
              "551 relay-denied\r\n");
    assert_int_equal(cmtp_server_rcpt(h->s, 1)->status, CMTP_SRV_RCPT_FINAL);
    assert_int_equal(cmtp_server_rcpt(h->s, 2)->status, CMTP_SRV_RCPT_RELAY);
    assert_string_equal(cmtp_server_rcpt(h->s, 2)->next_hop, "mx.b.example");
    assert_int_equal(cmtp_server_rcpt(h->s, 3)->status, CMTP_SRV_RCPT_REFUSED);
    assert_null(cmtp_server_rcpt(h->s, 6));
    assert_null(cmtp_server_rcpt(h->s, 0));
    h_feed(h, "BODY 4\r\nabcdBODY 6\r\nef\r\n.");
    h_feed(h, "\rEND\r\n");
    expect(h, "250 accepted txn=" TXID " id=Q1 rcpts=2\r\n");
    assert_int_equal(h->n_end, 1);
    assert_int_equal(h->end_accepted, 2);
    assert_int_equal(h->end_rcpt_count, 5);
    assert_int_equal(h->end_trace_count, 2);
    assert_int_equal(h->body_len, 10);
    assert_memory_equal(h->body, "abcdef\r\n.\r", 10);
    assert_false(cmtp_server_in_transaction(h->s));
    h_feed(h, "QUIT\r\n");
    expect(h, "221 bye\r\n");
    assert_true(h->closed);
    assert_int_equal(h->close_code, 221);
    assert_string_equal(h->close_status, "bye");
    h_free(h);
}

/* ---- state x command table ---- */

enum st { ST_NONE, ST_ENV, ST_RCPT, ST_BODY, ST_FAILED, ST_COUNT };

static const char *const st_setup[ST_COUNT] = {
    "",
    "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=10 DIGEST=" HEX64 "\r\n",
    "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=10 DIGEST=" HEX64 "\r\nRCPT TO:<r@c.example>\r\n",
    "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=10 DIGEST=" HEX64
    "\r\nRCPT TO:<r@c.example>\r\nBODY 3\r\nabc",
    "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=99999999999 DIGEST=" HEX64 "\r\n",
};

static const char *const cmds[] = {
    "MAIL FROM:<x@y.example> TXN=" TXID2 " SIZE=5 DIGEST=" HEX64 "\r\n",
    "TRACE hop=1 by=mx.example from=- at=2026-06-01T12:00:00Z tls=TLSv1.3/X peer-id=- "
    "role=final\r\n",
    "RCPT TO:<s@c.example>\r\n",
    "DROP 1\r\n",
    "BODY 3\r\nxyz",
    "END\r\n",
    "RSET\r\n",
    "NOOP\r\n",
    "QUIT\r\n",
    "FOO bar\r\n",
};

/* The reply to each command in each state ("" = no reply), and whether the session closes. */
static const struct {
    const char *reply;
    bool closes;
    bool reset;
} table[sizeof(cmds) / sizeof(cmds[0])][ST_COUNT] = {
    /* MAIL */
    {{"250 ok txn=" TXID2 "\r\n", 0, 0},
     {"503 bad-sequence\r\n", 0, 0},
     {"503 bad-sequence\r\n", 0, 0},
     {"503 bad-sequence\r\n", 0, 0},
     {"250 ok txn=" TXID2 "\r\n", 0, 0}},
    /* TRACE */
    {{"503 bad-sequence\r\n", 0, 0},
     {"250 ok\r\n", 0, 0},
     {"503 bad-sequence\r\n", 0, 0},
     {"503 bad-sequence\r\n", 0, 0},
     {"503 bad-sequence\r\n", 0, 0}},
    /* RCPT */
    {{"503 bad-sequence\r\n", 0, 0},
     {"250 final\r\n", 0, 0},
     {"250 final\r\n", 0, 0},
     {"503 bad-sequence\r\n", 0, 0},
     {"503 bad-sequence\r\n", 0, 0}},
    /* DROP 1 */
    {{"503 bad-sequence\r\n", 0, 0},
     {"503 bad-sequence\r\n", 0, 0},
     {"250 dropped\r\n", 0, 0},
     {"503 bad-sequence\r\n", 0, 0},
     {"503 bad-sequence\r\n", 0, 0}},
    /* BODY 3 */
    {{"603 bad-sequence\r\n", 1, 0},
     {"554 no-recipients\r\n", 0, 0},
     {"", 0, 0},
     {"", 0, 0},
     {"603 bad-sequence\r\n", 1, 0}},
    /* END */
    {{"503 bad-sequence\r\n", 0, 0},
     {"554 no-recipients\r\n", 0, 1},
     {"554 size-mismatch\r\n", 0, 1},
     {"554 size-mismatch\r\n", 0, 1},
     {"503 bad-sequence\r\n", 0, 0}},
    /* RSET */
    {{"250 reset\r\n", 0, 0},
     {"250 reset\r\n", 0, 1},
     {"250 reset\r\n", 0, 1},
     {"250 reset\r\n", 0, 1},
     {"250 reset\r\n", 0, 0}},
    /* NOOP */
    {{"250 ok\r\n", 0, 0},
     {"250 ok\r\n", 0, 0},
     {"250 ok\r\n", 0, 0},
     {"250 ok\r\n", 0, 0},
     {"250 ok\r\n", 0, 0}},
    /* QUIT */
    {{"221 bye\r\n", 1, 0},
     {"221 bye\r\n", 1, 0},
     {"221 bye\r\n", 1, 0},
     {"221 bye\r\n", 1, 0},
     {"221 bye\r\n", 1, 0}},
    /* FOO */
    {{"500 unknown-command\r\n", 0, 0},
     {"500 unknown-command\r\n", 0, 0},
     {"500 unknown-command\r\n", 0, 0},
     {"500 unknown-command\r\n", 0, 0},
     {"500 unknown-command\r\n", 0, 0}},
};

static void test_state_command_table(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof(cmds) / sizeof(cmds[0]); c++) {
        for (int st = 0; st < ST_COUNT; st++) {
            struct h *h = h_new(NULL);
            skip_greeting(h);
            h_feed(h, st_setup[st]);
            h->out_mark = h->out_len;
            int resets = h->n_reset;
            h_feed(h, cmds[c]);
            size_t n = h->out_len - h->out_mark;
            if (n != strlen(table[c][st].reply) ||
                memcmp(h->out + h->out_mark, table[c][st].reply, n) != 0)
                fail_msg("cmd %zu state %d: got '%.*s' want '%s'", c, st, (int)n,
                         h->out + h->out_mark, table[c][st].reply);
            h->out_mark = h->out_len;
            if (h->closed != table[c][st].closes)
                fail_msg("cmd %zu state %d: closed=%d", c, st, h->closed);
            assert_int_equal(h->n_reset - resets, table[c][st].reset ? 1 : 0);
            if (!h->closed) {
                /* the session goes on */
                h_feed(h, "NOOP\r\n");
                expect(h, "250 ok\r\n");
            }
            h_free(h);
        }
    }
}

/* ---- policy ---- */

static void test_policy_matrix(void **state)
{
    (void)state;
    static const char *const relay[] = {"none", "domain", "any"};
    static const char *const rcpt[] = {"final@b.example", "relayin@b.example",
                                       "relayout@b.example"};
    /* [rcpt][relay][hops 0/1] */
    static const char *const want[3][3][2] = {
        {{"250 final", "250 final"}, {"250 final", "250 final"}, {"250 final", "250 final"}},
        {{"551 relay-denied", "551 relay-denied"},
         {"554 hops-exceeded", "251 relay next=mx.b.example"},
         {"554 hops-exceeded", "251 relay next=mx.b.example"}},
        {{"551 relay-denied", "551 relay-denied"},
         {"551 relay-denied", "551 relay-denied"},
         {"554 hops-exceeded", "251 relay next=other.example"}},
    };
    for (int r = 0; r < 3; r++) {
        for (int p = 0; p < 3; p++) {
            for (int hops = 0; hops < 2; hops++) {
                struct h *h = h_new(NULL);
                skip_greeting(h);
                char extra[64], line[512], exp[128];
                snprintf(extra, sizeof(extra), "RELAY=%s HOPS=%d", relay[p], hops);
                h_feed(h, mail_line(line, sizeof(line), "<a@a.example>", 5, extra));
                expect(h, "250 ok txn=" TXID "\r\n");
                snprintf(line, sizeof(line), "RCPT TO:<%s>\r\n", rcpt[r]);
                h_feed(h, line);
                snprintf(exp, sizeof(exp), "%s\r\n", want[r][p][hops]);
                expect(h, exp);
                h_free(h);
            }
        }
    }
    /* RELAY=domain compares labels, not strings: a look-alike next hop is outside */
    struct h *h = h_new(NULL);
    skip_greeting(h);
    char line[512];
    h_feed(h, mail_line(line, sizeof(line), "<a@a.example>", 5, "RELAY=domain"));
    h_feed(h, "RCPT TO:<x@b.example>\r\n");
    expect(h, "250 ok txn=" TXID "\r\n250 final\r\n");
    /* answer by hand to choose the next hop */
    struct cmtp_srv_event ev;
    size_t c;
    const char *rc = "RCPT TO:<y@b.example>\r\nRCPT TO:<z@b.example>\r\nRCPT TO:<w@b.example>\r\n";
    const uint8_t *p = (const uint8_t *)rc;
    size_t left = strlen(rc);
    static const char *const hops[] = {"evilb.example", "B.Example", "deep.sub.b.example"};
    static const char *const want2[] = {"551 relay-denied\r\n", "251 relay next=b.example\r\n",
                                        "251 relay next=deep.sub.b.example\r\n"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(cmtp_server_feed(h->s, p, left, &c, &ev), CMTP_SRV_RCPT);
        p += c;
        left -= c;
        assert_int_equal(cmtp_server_feed(h->s, p, left, &c, &ev), CMTP_SRV_BLOCKED);
        assert_int_equal(c, 0);
        assert_int_equal(cmtp_server_rcpt_reply(h->s, CMTP_SRV_ANSWER_RELAY, "bad hop"), -EINVAL);
        assert_int_equal(cmtp_server_rcpt_reply(h->s, CMTP_SRV_ANSWER_RELAY, NULL), -EINVAL);
        assert_int_equal(cmtp_server_rcpt_reply(h->s, CMTP_SRV_ANSWER_RELAY, hops[i]), 0);
        assert_int_equal(cmtp_server_rcpt_reply(h->s, CMTP_SRV_ANSWER_FINAL, NULL), -EINVAL);
        h_drain(h);
        expect(h, want2[i]);
    }
    h_free(h);
}

/* ---- MAIL ---- */

static void test_mail_replies(void **state)
{
    (void)state;
    struct cmtp_server_config cfg = {.host = "mx.example", .size_max = 1000};
    struct h *h = h_new(&cfg);
    skip_greeting(h);
    char line[512];
    /* over the size limit: refused at MAIL, before any body octet, without asking the caller */
    h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 1001, ""));
    h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 18446744073709551615ull, ""));
    h_feed(h,
           "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=18446744073709551616 DIGEST=" HEX64 "\r\n");
    h_feed(h, "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=99999999999999999999999 DIGEST=" HEX64
              "\r\n");
    expect(h, "552 too-big\r\n552 too-big\r\n552 too-big\r\n552 too-big\r\n");
    assert_int_equal(h->n_mail, 0);
    h_feed(h, "BODY 5\r\nhello");
    expect(h, "603 bad-sequence\r\n"); /* its length cannot be trusted */
    assert_true(h->closed);
    assert_int_equal(h->body_len, 0);
    h_free(h);

    h = h_new(&cfg);
    skip_greeting(h);
    h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 1000, ""));
    expect(h, "250 ok txn=" TXID "\r\n");
    h_feed(h, "RSET\r\n");
    h_feed(h, "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=0 DIGEST=" HEX64 "\r\n");
    h_feed(h, "MAIL FROM:<a@b.example> TXN=" TXID " DIGEST=" HEX64 "\r\n");
    h_feed(h, "MAIL FROM:<a b@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 "\r\n");
    h_feed(h, "MAIL FROM:<a\xc3\x28@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 "\r\n");
    expect(h, "250 reset\r\n501 bad-syntax\r\n501 bad-syntax\r\n501 bad-address\r\n"
              "600 bad-line\r\n");
    assert_true(h->closed); /* invalid UTF-8 in the line */
    h_free(h);

    h = h_new(&cfg);
    skip_greeting(h);
    h_feed(h, "MAIL FROM:<> TXN=" TXID " SIZE=5 DIGEST=" HEX64 "\r\n");
    h_feed(h, "MAIL FROM:<a@b> TXN=" TXID " SIZE=5 DIGEST=" HEX64 "\r\n");
    h_feed(h, "MAIL FROM:<a\\b@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 "\r\n");
    h_feed(h, "MAIL FROM:<> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " REPORT=" TXID2 "\r\n");
    expect(h, "501 bad-address\r\n501 bad-address\r\n501 bad-address\r\n250 ok txn=" TXID "\r\n");
    h_free(h);

    /* the caller's answers */
    static const struct {
        enum cmtp_srv_mail_answer a;
        const char *reply;
    } answers[] = {
        {CMTP_SRV_MAIL_TEMPFAIL, "451 try-later\r\n"},
        {CMTP_SRV_MAIL_TOO_BIG, "552 too-big\r\n"},
        {CMTP_SRV_MAIL_REFUSED, "501 bad-address\r\n"},
    };
    for (size_t i = 0; i < 3; i++) {
        h = h_new(NULL);
        skip_greeting(h);
        h->mail_answer = answers[i].a;
        /* a refused MAIL's pipelined TRACE/RCPT get 503 and are not counted as errors */
        char buf[4096];
        size_t n = strlen(mail_line(buf, sizeof(buf), "<a@b.example>", 5, ""));
        for (int k = 0; k < 15; k++)
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "RCPT TO:<r%d@c.example>\r\n", k);
        h_feed(h, buf);
        char want[2048];
        size_t w = (size_t)snprintf(want, sizeof(want), "%s", answers[i].reply);
        for (int k = 0; k < 15; k++)
            w += (size_t)snprintf(want + w, sizeof(want) - w, "503 bad-sequence\r\n");
        expect(h, want);
        assert_false(h->closed);
        assert_int_equal(h->n_rcpt, 0);
        /* and the next MAIL works */
        h->mail_answer = CMTP_SRV_MAIL_OK;
        h_feed(h, mail_line(buf, sizeof(buf), "<a@b.example>", 5, ""));
        expect(h, "250 ok txn=" TXID "\r\n");
        h_free(h);
    }
}

/* ---- RCPT limits and DROP ---- */

static void test_rcpt_limits(void **state)
{
    (void)state;
    struct cmtp_server_config cfg = {.host = "mx.example", .rcpt_max = 3};
    struct h *h = h_new(&cfg);
    skip_greeting(h);
    char line[512];
    h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 3, ""));
    h_feed(h, "RCPT TO:<a@c.example>\r\nRCPT TO:<b@c.example>\r\nRCPT TO:<c@c.example>\r\n"
              "RCPT TO:<d@c.example>\r\nDROP 4\r\nBODY 3\r\nxyzEND\r\n");
    expect(h,
           "250 ok txn=" TXID "\r\n250 final\r\n250 final\r\n250 final\r\n"
           "452 too-many-rcpts\r\n503 bad-sequence\r\n250 accepted txn=" TXID " id=Q1 rcpts=3\r\n");
    assert_int_equal(h->n_rcpt, 3);
    /* zero recipients */
    h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 3, ""));
    h_feed(h, "END\r\n");
    expect(h, "250 ok txn=" TXID "\r\n554 no-recipients\r\n");
    assert_int_equal(h->n_reset, 1);
    h_free(h);

    /* the default limit, 1000, pipelined in one buffer: the reply buffer never overflows */
    h = h_new(NULL);
    skip_greeting(h);
    size_t cap = 64 + 1002 * 40 + 600 * 6, n;
    char *buf = malloc(cap);
    assert_non_null(buf);
    n = strlen(mail_line(buf, cap, "<a@b.example>", 3, ""));
    for (int k = 1; k <= 1001; k++)
        n += (size_t)snprintf(buf + n, cap - n, "RCPT TO:<r%d@c.example>\r\n", k);
    for (int k = 0; k < 600; k++)
        n += (size_t)snprintf(buf + n, cap - n, "NOOP\r\n"); /* replies without events */
    n += (size_t)snprintf(buf + n, cap - n, "DROP 1000\r\nDROP 1001\r\nBODY 3\r\nxyzEND\r\n");
    h_feed_split(h, buf, n, 0);
    assert_true(h->n_flush > 0);
    assert_int_equal(h->n_rcpt, 1000);
    const char *tail = "250 ok\r\n250 dropped\r\n503 bad-sequence\r\n"
                       "250 accepted txn=" TXID " id=Q1 rcpts=999\r\n";
    assert_true(h->out_len > strlen(tail));
    assert_non_null(strstr(h->out, "250 final\r\n452 too-many-rcpts\r\n250 ok\r\n"));
    assert_string_equal(h->out + h->out_len - strlen(tail), tail);
    free(buf);
    h_free(h);
}

static void test_drop_rules(void **state)
{
    (void)state;
    struct h *h = h_new(NULL);
    skip_greeting(h);
    char line[512];
    h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 3, "RELAY=any"));
    h_feed(h, "RCPT TO:<a@c.example>\r\nRCPT TO:<nobody@c.example>\r\n"
              "RCPT TO:<relayout@c.example>\r\nRCPT TO:<bad@c>\r\n");
    expect(h, "250 ok txn=" TXID "\r\n250 final\r\n550 no-mailbox\r\n"
              "251 relay next=other.example\r\n501 bad-address\r\n");
    h_feed(h, "DROP 3\r\nDROP 3\r\nDROP 2\r\nDROP 4\r\nDROP 0\r\nDROP 5\r\nDROP 01\r\n"
              "DROP x\r\nDROP 99999999999999999999999\r\nDROP\r\n");
    expect(h, "250 dropped\r\n503 bad-sequence\r\n503 bad-sequence\r\n503 bad-sequence\r\n"
              "503 bad-sequence\r\n503 bad-sequence\r\n501 bad-syntax\r\n501 bad-syntax\r\n"
              "503 bad-sequence\r\n501 bad-syntax\r\n");
    h_feed(h, "NOOP\r\nDROP -1\r\nDROP 1 2\r\n");
    expect(h, "250 ok\r\n501 bad-syntax\r\n501 bad-syntax\r\n");
    assert_int_equal(cmtp_server_rcpt(h->s, 3)->status, CMTP_SRV_RCPT_DROPPED);
    /* NOOP resets the error count before the run above could close the session */
    h_feed(h, "NOOP\r\nBODY 1\r\nxDROP 1\r\n");
    expect(h, "250 ok\r\n503 bad-sequence\r\n"); /* body started */
    h_feed(h, "BODY 2\r\nyzEND\r\n");
    expect(h, "250 accepted txn=" TXID " id=Q1 rcpts=1\r\n");
    assert_int_equal(h->end_accepted, 1);

    /* dropping every recipient: the body is consumed and discarded */
    h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 6, ""));
    h_feed(h, "RCPT TO:<a@c.example>\r\nDROP 1\r\nBODY 3\r\nabcBODY 3\r\nabcEND\r\nEND\r\n");
    expect(h, "250 ok txn=" TXID "\r\n250 final\r\n250 dropped\r\n554 no-recipients\r\n"
              "554 no-recipients\r\n554 no-recipients\r\n503 bad-sequence\r\n");
    assert_int_equal(h->body_len, 0);
    assert_int_equal(h->n_reset, 1);
    assert_false(h->closed);
    h_free(h);
}

/* ---- body ---- */

static void test_body_bytes_identical(void **state)
{
    (void)state;
    /* RELIABILITY case 14: nothing inside a chunk is interpreted */
    static const char payload[] =
        "line\r\n.\r\n\n.\n\rbare CR\0NUL\r\nEND\r\nMAIL FROM:<x@y.example>"
        " TXN=" TXID2 " SIZE=1 DIGEST=" HEX64 "\r\nQUIT\r\nBODY 0\r\n"
        "\xff\xfe\xc0\x80";
    const size_t plen = sizeof(payload) - 1;
    char *session = malloc(4096);
    assert_non_null(session);
    size_t n = (size_t)snprintf(session, 4096,
                                "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=%zu DIGEST=" HEX64
                                "\r\nRCPT TO:<r@c.example>\r\nBODY 7\r\n",
                                plen);
    memcpy(session + n, payload, 7);
    n += 7;
    n += (size_t)snprintf(session + n, 4096 - n, "BODY %zu\r\n", plen - 7);
    memcpy(session + n, payload + 7, plen - 7);
    n += plen - 7;
    n += (size_t)snprintf(session + n, 4096 - n, "END\r\nQUIT\r\n");

    struct h *whole = h_new(NULL);
    h_feed_split(whole, session, n, 0);
    assert_int_equal(whole->body_len, plen);
    assert_memory_equal(whole->body, payload, plen);
    assert_true(whole->closed);
    const char *want_tail = "250 final\r\n250 accepted txn=" TXID " id=Q1 rcpts=1\r\n221 bye\r\n";
    assert_string_equal(whole->out + whole->out_len - strlen(want_tail), want_tail);

    /* every piece size gives the same replies and the same body */
    for (size_t piece = 1; piece <= n; piece++) {
        struct h *h = h_new(NULL);
        h_feed_split(h, session, n, piece);
        assert_int_equal(h->out_len, whole->out_len);
        assert_memory_equal(h->out, whole->out, h->out_len);
        assert_int_equal(h->body_len, plen);
        assert_memory_equal(h->body, payload, plen);
        h_free(h);
    }
    h_free(whole);
    free(session);
}

static void test_body_errors(void **state)
{
    (void)state;
    struct cmtp_server_config cfg = {.host = "mx.example", .chunk_max = 100};
    static const struct {
        const char *body;
        const char *reply;
    } cases[] = {
        {"BODY 0\r\n", "601 bad-chunk\r\n"},
        {"BODY 101\r\n", "601 bad-chunk\r\n"},
        {"BODY 01\r\n", "601 bad-chunk\r\n"},
        {"BODY -1\r\n", "601 bad-chunk\r\n"},
        {"BODY +1\r\n", "601 bad-chunk\r\n"},
        {"BODY 1 \r\n", "601 bad-chunk\r\n"},
        {"BODY  1\r\n", "601 bad-chunk\r\n"},
        {"BODY x\r\n", "601 bad-chunk\r\n"},
        {"BODY\r\n", "601 bad-chunk\r\n"},
        {"BODY 2147483648\r\n", "601 bad-chunk\r\n"},
        {"BODY 4294967295\r\n", "601 bad-chunk\r\n"},
        {"BODY 4294967296\r\n", "601 bad-chunk\r\n"},
        {"BODY 9223372036854775808\r\n", "601 bad-chunk\r\n"},
        {"BODY 18446744073709551615\r\n", "601 bad-chunk\r\n"},
        {"BODY 18446744073709551616\r\n", "601 bad-chunk\r\n"},
        {"BODY 99999999999999999999999\r\n", "601 bad-chunk\r\n"},
        {"BODY 6\r\n", "602 size-exceeded\r\n"},
        {"BODY 3\r\nabcBODY 3\r\n", "602 size-exceeded\r\n"},
        {"BODY 5\r\nabcdeBODY 1\r\n", "602 size-exceeded\r\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct h *h = h_new(&cfg);
        skip_greeting(h);
        char line[512];
        h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 5, ""));
        h_feed(h, "RCPT TO:<r@c.example>\r\n");
        expect(h, "250 ok txn=" TXID "\r\n250 final\r\n");
        h_feed(h, cases[i].body);
        expect(h, cases[i].reply);
        assert_true(h->closed);
        assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_CLOSED);
        h_free(h);
    }
    /* chunk-max exactly, and END short of SIZE */
    struct h *h = h_new(&cfg);
    skip_greeting(h);
    char line[512], chunk[256];
    h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 150, ""));
    h_feed(h, "RCPT TO:<r@c.example>\r\n");
    memcpy(chunk, "BODY 100\r\n", 10);
    memset(chunk + 10, 'z', 100);
    h_feed_split(h, chunk, 110, 0);
    h_feed(h, "END\r\n");
    expect(h, "250 ok txn=" TXID "\r\n250 final\r\n554 size-mismatch\r\n");
    assert_int_equal(h->n_reset, 1);
    assert_false(cmtp_server_in_transaction(h->s));
    h_free(h);
}

/* ---- errors, limits, shutdown, timeouts ---- */

static void test_errors_in_a_row(void **state)
{
    (void)state;
    struct h *h = h_new(NULL);
    skip_greeting(h);
    for (int i = 0; i < 9; i++)
        h_feed(h, "HELO x\r\n");
    h_feed(h, "NOOP\r\n");
    for (int i = 0; i < 5; i++)
        h_feed(h, "EHLO\r\n");
    h_feed(h, "NOOP x\r\nRCPT TO:<a@b.example>\r\nEND\r\n DATA\r\n");
    assert_false(h->closed);
    h_feed(h, "DROP 1\r\n");
    assert_true(h->closed);
    assert_int_equal(h->close_code, 604);
    char want[1024];
    size_t w = 0;
    for (int i = 0; i < 9; i++)
        w += (size_t)snprintf(want + w, sizeof(want) - w, "500 unknown-command\r\n");
    w += (size_t)snprintf(want + w, sizeof(want) - w, "250 ok\r\n");
    for (int i = 0; i < 5; i++)
        w += (size_t)snprintf(want + w, sizeof(want) - w, "500 unknown-command\r\n");
    snprintf(want + w, sizeof(want) - w,
             "501 bad-syntax\r\n503 bad-sequence\r\n503 bad-sequence\r\n501 bad-syntax\r\n"
             "604 too-many-errors\r\n");
    expect(h, want);
    h_free(h);

    struct cmtp_server_config cfg = {.host = "mx.example", .errors_max = 2};
    h = h_new(&cfg);
    skip_greeting(h);
    h_feed(h, "X\r\nNOOP\r\nX\r\nX\r\nNOOP\r\n");
    expect(h, "500 unknown-command\r\n250 ok\r\n500 unknown-command\r\n604 too-many-errors\r\n");
    h_free(h);
}

static void test_txn_max(void **state)
{
    (void)state;
    struct cmtp_server_config cfg = {.host = "mx.example", .txn_max = 2};
    struct h *h = h_new(&cfg);
    skip_greeting(h);
    char line[512];
    for (int i = 0; i < 2; i++) {
        h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 1, ""));
        h_feed(h, "RCPT TO:<r@c.example>\r\nBODY 1\r\nxEND\r\n");
        expect(h,
               "250 ok txn=" TXID "\r\n250 final\r\n250 accepted txn=" TXID " id=Q1 rcpts=1\r\n");
    }
    h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 1, ""));
    expect(h, "452 too-many-txn\r\n");
    assert_true(h->closed);
    assert_int_equal(h->n_mail, 2);
    h_free(h);
}

static void test_end_results(void **state)
{
    (void)state;
    static const struct {
        enum cmtp_srv_end_result r;
        bool dup;
        const char *reply;
    } cases[] = {
        {CMTP_SRV_END_ACCEPTED, true, "250 accepted txn=" TXID " id=Q1 rcpts=7 dup=1\r\n"},
        {CMTP_SRV_END_ACCEPTED, false, "250 accepted txn=" TXID " id=Q1 rcpts=7\r\n"},
        {CMTP_SRV_END_DIGEST_MISMATCH, false, "554 digest-mismatch\r\n"},
        {CMTP_SRV_END_TXN_CONFLICT, false, "554 txn-conflict\r\n"},
        {CMTP_SRV_END_TEMPFAIL, false, "451 try-later\r\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct h *h = h_new(NULL);
        skip_greeting(h);
        h->end.result = cases[i].r;
        h->end.dup = cases[i].dup;
        h->end.rcpts = 7;
        h->end_rcpts_from_event = false;
        char line[512];
        h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 1, ""));
        h_feed(h, "RCPT TO:<r@c.example>\r\nBODY 1\r\nxEND\r\n");
        char want[256];
        snprintf(want, sizeof(want), "250 ok txn=" TXID "\r\n250 final\r\n%s", cases[i].reply);
        expect(h, want);
        assert_int_equal(h->n_reset, 0); /* the caller knows: no RESET after END */
        assert_false(cmtp_server_in_transaction(h->s));
        /* the session goes on */
        h->end.result = CMTP_SRV_END_ACCEPTED;
        h->end.dup = false;
        h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 1, ""));
        expect(h, "250 ok txn=" TXID "\r\n");
        h_free(h);
    }
}

static void test_answer_misuse(void **state)
{
    (void)state;
    struct h *h = h_new(NULL);
    struct cmtp_srv_end_answer a = {.result = CMTP_SRV_END_ACCEPTED, .qid = "Q1"};
    assert_int_equal(cmtp_server_mail_reply(h->s, CMTP_SRV_MAIL_OK), -EINVAL);
    assert_int_equal(cmtp_server_rcpt_reply(h->s, CMTP_SRV_ANSWER_FINAL, NULL), -EINVAL);
    assert_int_equal(cmtp_server_end_reply(h->s, &a), -EINVAL);
    struct cmtp_srv_event ev;
    size_t c;
    const char *in = "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=1 DIGEST=" HEX64
                     "\r\nRCPT TO:<r@c.example>\r\nBODY 1\r\nxEND\r\n";
    const uint8_t *p = (const uint8_t *)in;
    size_t left = strlen(in);
    assert_int_equal(cmtp_server_feed(h->s, p, left, &c, &ev), CMTP_SRV_MAIL);
    p += c;
    left -= c;
    assert_int_equal(cmtp_server_feed(h->s, p, left, &c, &ev), CMTP_SRV_BLOCKED);
    assert_int_equal(c, 0);
    assert_int_equal(cmtp_server_mail_reply(h->s, (enum cmtp_srv_mail_answer)99), -EINVAL);
    assert_int_equal(cmtp_server_mail_reply(h->s, CMTP_SRV_MAIL_OK), 0);
    assert_int_equal(cmtp_server_feed(h->s, p, left, &c, &ev), CMTP_SRV_RCPT);
    p += c;
    left -= c;
    assert_int_equal(cmtp_server_rcpt_reply(h->s, (enum cmtp_srv_rcpt_answer)99, NULL), -EINVAL);
    assert_int_equal(cmtp_server_rcpt_reply(h->s, CMTP_SRV_ANSWER_FINAL, NULL), 0);
    assert_int_equal(cmtp_server_feed(h->s, p, left, &c, &ev), CMTP_SRV_BODY);
    p += c;
    left -= c;
    assert_int_equal(cmtp_server_feed(h->s, p, left, &c, &ev), CMTP_SRV_END);
    p += c;
    left -= c;
    assert_int_equal(left, 0);
    static const char *const bad_qid[] = {"", "a b", "q\r\n", "x=1",
                                          "0123456789012345678901234567890123456789012345678901234"
                                          "5678901234"};
    for (size_t i = 0; i < sizeof(bad_qid) / sizeof(bad_qid[0]); i++) {
        a.qid = bad_qid[i];
        assert_int_equal(cmtp_server_end_reply(h->s, &a), -EINVAL);
    }
    a.qid = NULL;
    assert_int_equal(cmtp_server_end_reply(h->s, &a), -EINVAL);
    a.qid = "0123456789012345678901234567890123456789012345678901234567890123";
    assert_int_equal(cmtp_server_end_reply(h->s, &a), 0);
    assert_int_equal(cmtp_server_end_reply(h->s, &a), -EINVAL);
    h_drain(h);
    assert_non_null(strstr(h->out,
                           "id=0123456789012345678901234567890123456789012345678901234567890123 "
                           "rcpts=0\r\n"));
    h_free(h);
}

static void test_shutdown(void **state)
{
    (void)state;
    struct cmtp_srv_event ev;
    size_t c;
    /* idle: at once */
    struct h *h = h_new(NULL);
    skip_greeting(h);
    assert_int_equal(cmtp_server_shutdown(h->s), CMTP_SRV_CLOSE);
    assert_int_equal(cmtp_server_shutdown(h->s), CMTP_SRV_CLOSE);
    h_drain(h);
    expect(h, "421 shutting-down\r\n");
    assert_int_equal(cmtp_server_feed(h->s, (const uint8_t *)"NOOP\r\n", 6, &c, &ev),
                     CMTP_SRV_CLOSE);
    assert_int_equal(c, 0);
    assert_int_equal(ev.code, 421);
    h_free(h);

    /* inside a command line: the command is answered with 421 instead */
    h = h_new(NULL);
    skip_greeting(h);
    h_feed(h, "NOO");
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_COMMAND);
    assert_int_equal(cmtp_server_shutdown(h->s), CMTP_SRV_NEED_INPUT);
    h_feed(h, "P\r\nNOOP\r\n");
    expect(h, "421 shutting-down\r\n");
    assert_true(h->closed);
    h_free(h);

    /* waiting for storage: the answer goes out first */
    h = h_new(NULL);
    skip_greeting(h);
    const char *in = "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=1 DIGEST=" HEX64
                     "\r\nRCPT TO:<r@c.example>\r\nBODY 1\r\nx";
    h_feed(h, in);
    h_drain(h);
    h->out_mark = h->out_len;
    assert_int_equal(cmtp_server_feed(h->s, (const uint8_t *)"END\r\nNOOP\r\n", 11, &c, &ev),
                     CMTP_SRV_END);
    assert_int_equal(c, 5);
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_WAIT);
    assert_int_equal(cmtp_server_shutdown(h->s), CMTP_SRV_NEED_INPUT);
    struct cmtp_srv_end_answer a = {.result = CMTP_SRV_END_ACCEPTED, .qid = "Q9", .rcpts = 1};
    assert_int_equal(cmtp_server_end_reply(h->s, &a), 0);
    assert_int_equal(cmtp_server_feed(h->s, (const uint8_t *)"NOOP\r\n", 6, &c, &ev),
                     CMTP_SRV_CLOSE);
    h_drain(h);
    expect(h, "250 accepted txn=" TXID " id=Q9 rcpts=1\r\n421 shutting-down\r\n");
    h_free(h);

    /* inside a chunk: the chunk completes, then 421 */
    h = h_new(NULL);
    skip_greeting(h);
    h_feed(h, "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=10 DIGEST=" HEX64
              "\r\nRCPT TO:<r@c.example>\r\nBODY 4\r\nab");
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_BODY);
    assert_int_equal(cmtp_server_shutdown(h->s), CMTP_SRV_NEED_INPUT);
    h_feed(h, "cdBODY 6\r\nefghij");
    assert_int_equal(h->body_len, 4);
    expect(h, "250 ok txn=" TXID "\r\n250 final\r\n421 shutting-down\r\n");
    assert_true(h->closed);
    h_free(h);
}

static void test_timeout_and_states(void **state)
{
    (void)state;
    struct cmtp_srv_event ev;
    size_t c;
    struct h *h = h_new(NULL);
    skip_greeting(h);
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_IDLE);
    h_feed(h, "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=10 DIGEST=" HEX64 "\r\n");
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_IDLE);
    assert_true(cmtp_server_in_transaction(h->s));
    h_feed(h, "RCPT TO:<r@c.exam");
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_COMMAND);
    assert_int_equal(cmtp_server_feed(h->s, (const uint8_t *)"ple>\r\n", 6, &c, &ev),
                     CMTP_SRV_RCPT);
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_WAIT);
    assert_int_equal(cmtp_server_rcpt_reply(h->s, CMTP_SRV_ANSWER_FINAL, NULL), 0);
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_IDLE);
    h_feed(h, "BODY 4\r\nab");
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_BODY);
    h_feed(h, "cd");
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_BODY); /* between chunks */
    h_feed(h, "BO");
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_COMMAND);
    assert_int_equal(cmtp_server_timeout(h->s), CMTP_SRV_CLOSE);
    assert_int_equal(cmtp_server_timeout(h->s), CMTP_SRV_CLOSE);
    assert_int_equal(cmtp_server_state(h->s), CMTP_SRV_STATE_CLOSED);
    assert_false(cmtp_server_in_transaction(h->s));
    h_drain(h);
    expect(h, "250 ok txn=" TXID "\r\n250 final\r\n605 timeout\r\n");
    assert_int_equal(cmtp_server_feed(h->s, NULL, 0, &c, &ev), CMTP_SRV_CLOSE);
    assert_int_equal(ev.code, 605);
    assert_string_equal(ev.status, "timeout");
    h_free(h);
}

static void test_bad_lines(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t len;
        const char *reply;
    } cases[] = {
        {"NOOP\n", 5, "600 bad-line\r\n"},
        {"NOOP\r\r\n", 7, "600 bad-line\r\n"},
        {"NO\0OP\r\n", 7, "600 bad-line\r\n"},
        {"NOOP \xe9\r\n", 8, "600 bad-line\r\n"},
        {"NOOP \xed\xa0\x80\r\n", 10, "600 bad-line\r\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct h *h = h_new(NULL);
        skip_greeting(h);
        h_feed(h, "NOOP\r\n");
        h_feed_split(h, cases[i].in, cases[i].len, 0);
        h_feed(h, "NOOP\r\n");
        char want[64];
        snprintf(want, sizeof(want), "250 ok\r\n%s", cases[i].reply);
        expect(h, want);
        assert_true(h->closed);
        assert_int_equal(h->close_code, 600);
        h_free(h);
    }
    /* line-max exactly is a line; one more octet is too long */
    char *buf = malloc(CMTP_LINE_MAX + 2);
    assert_non_null(buf);
    memcpy(buf, "NOOP ", 5);
    memset(buf + 5, 'x', CMTP_LINE_MAX - 7);
    memcpy(buf + CMTP_LINE_MAX - 2, "\r\n", 2);
    struct h *h = h_new(NULL);
    skip_greeting(h);
    h_feed_split(h, buf, CMTP_LINE_MAX, 0);
    expect(h, "501 bad-syntax\r\n");
    memcpy(buf + CMTP_LINE_MAX - 2, "x\r\n", 3);
    h_feed_split(h, buf, CMTP_LINE_MAX + 1, 0);
    expect(h, "600 line-too-long\r\n");
    assert_true(h->closed);
    h_free(h);
    /* a configured line-max ([limits] line_max) is advertised and enforced the same way; values
     * outside CMTP_LINE_MIN..CMTP_LINE_MAX are clamped */
    static const struct {
        uint32_t set, eff;
    } lm[] = {{2048, 2048}, {CMTP_LINE_MIN, CMTP_LINE_MIN}, {100, CMTP_LINE_MIN}, {9000, 4096}};
    for (size_t i = 0; i < sizeof(lm) / sizeof(lm[0]); i++) {
        struct cmtp_server_config cfg = {.host = "mx.example", .line_max = lm[i].set};
        size_t n = lm[i].eff;
        char want[160];
        h = h_new(&cfg);
        h_drain(h);
        snprintf(want, sizeof(want),
                 "220 ready proto=cmtp/1 host=mx.example size-max=67108864 rcpt-max=1000 "
                 "chunk-max=1048576 line-max=%zu txn-max=1000\r\n",
                 n);
        expect(h, want);
        memcpy(buf, "NOOP ", 5);
        memset(buf + 5, 'x', n - 7);
        memcpy(buf + n - 2, "\r\n", 2);
        h_feed_split(h, buf, n, i);
        expect(h, "501 bad-syntax\r\n");
        memcpy(buf + n - 2, "x\r\n", 3);
        h_feed_split(h, buf, n + 1, i);
        expect(h, "600 line-too-long\r\n");
        assert_true(h->closed);
        h_free(h);
    }
    free(buf);
}

static void test_pipelined_session(void **state)
{
    (void)state;
    struct h *h = h_new(NULL);
    skip_greeting(h);
    h_feed(h,
           "MAIL FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " RELAY=any\r\n"
           "TRACE hop=1 by=mx.b.example from=- at=2026-06-01T12:00:00Z tls=TLSv1.3/X "
           "peer-id=- role=final\r\n"
           "RCPT TO:<r@c.example>\r\nRCPT TO:<relayout@c.example>\r\nRCPT TO:<temp@c.example>\r\n"
           "BODY 2\r\nhiBODY 3\r\n!!!END\r\n"
           "MAIL FROM:<a@b.example> TXN=" TXID2 " SIZE=1 DIGEST=" HEX64 "\r\n"
           "RCPT TO:<r@c.example>\r\nBODY 1\r\nxEND\r\nRSET\r\nNOOP\r\nQUIT\r\nNOOP\r\n");
    expect(h, "250 ok txn=" TXID "\r\n250 ok\r\n250 final\r\n251 relay next=other.example\r\n"
              "450 try-later\r\n250 accepted txn=" TXID " id=Q1 rcpts=2\r\n"
              "250 ok txn=" TXID2 "\r\n250 final\r\n250 accepted txn=" TXID2
              " id=Q1 rcpts=1\r\n250 reset\r\n250 ok\r\n221 bye\r\n");
    assert_int_equal(h->n_mail, 2);
    assert_int_equal(h->n_end, 2);
    assert_int_equal(h->n_reset, 0);
    h_free(h);
}

static void test_trace_limits(void **state)
{
    (void)state;
    struct h *h = h_new(NULL);
    skip_greeting(h);
    char line[512];
    h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 1, ""));
    expect(h, "250 ok txn=" TXID "\r\n");
    for (int i = 1; i <= CMTP_TRACE_MAX + 1; i++) {
        snprintf(line, sizeof(line),
                 "TRACE hop=%d by=mx.example from=- at=2026-06-01T12:00:00Z tls=TLSv1.3/X "
                 "peer-id=- role=relay\r\n",
                 i > CMTP_TRACE_MAX ? CMTP_TRACE_MAX : i);
        h_feed(h, line);
        expect(h, i <= CMTP_TRACE_MAX ? "250 ok\r\n" : "552 too-many-hops\r\n");
    }
    h_feed(h, "TRACE hop=1 by=mx.example\r\nTRACE\r\nTRACE hop=0 by=mx.example from=- "
              "at=2026-06-01T12:00:00Z tls=TLSv1.3/X peer-id=- role=relay\r\n");
    expect(h, "552 too-many-hops\r\n501 bad-syntax\r\n552 too-many-hops\r\n");
    h_feed(h, "RSET\r\n");
    h_feed(h, mail_line(line, sizeof(line), "<a@b.example>", 1, ""));
    h_feed(h, "TRACE hop=1 by=mx.example\r\nTRACE hop=1 by=mx.example from=- "
              "at=2026-13-01T12:00:00Z tls=TLSv1.3/X peer-id=- role=relay\r\n"
              "RCPT TO:<r@c.example>\r\nTRACE hop=1 by=mx.example from=- "
              "at=2026-06-01T12:00:00Z tls=TLSv1.3/X peer-id=- role=relay\r\n");
    expect(h, "250 reset\r\n250 ok txn=" TXID "\r\n501 bad-syntax\r\n501 bad-syntax\r\n"
              "250 final\r\n503 bad-sequence\r\n");
    h_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greeting_and_config),
        cmocka_unit_test(test_full_transaction),
        cmocka_unit_test(test_state_command_table),
        cmocka_unit_test(test_policy_matrix),
        cmocka_unit_test(test_mail_replies),
        cmocka_unit_test(test_rcpt_limits),
        cmocka_unit_test(test_drop_rules),
        cmocka_unit_test(test_body_bytes_identical),
        cmocka_unit_test(test_body_errors),
        cmocka_unit_test(test_errors_in_a_row),
        cmocka_unit_test(test_txn_max),
        cmocka_unit_test(test_end_results),
        cmocka_unit_test(test_answer_misuse),
        cmocka_unit_test(test_shutdown),
        cmocka_unit_test(test_timeout_and_states),
        cmocka_unit_test(test_bad_lines),
        cmocka_unit_test(test_pipelined_session),
        cmocka_unit_test(test_trace_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
