/* tests/unit/test_core_smtpc.c — the SMTP/LMTP delivery client against scripted servers: every
 * reply class, multi-line replies, pipelining, STARTTLS, LMTP per-recipient results, malformed
 * replies, 421 and dropped connections, CHUNKING (BDAT) and BINARYMIME. No sockets. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/smtp_client.h"

/* ---- harness ---- */

struct rec {
    enum cmtp_smtpc_ev e;
    size_t idx;
    enum cmtp_smtpc_result result;
    enum cmtp_smtpc_stage stage;
    bool local;
    unsigned code;
    char enh[16];
    char text[CMTP_TEXT_MAX + 1];
    char status[32];
    size_t delivered, temp, perm;
};

struct h {
    struct cmtp_smtpc *c;
    char *sent; /* every octet the client sent */
    size_t sent_len, sent_cap, mark;
    struct rec ev[2100];
    size_t nev, evmark;
    const char *body; /* streamed on BODY_READY when set */
    size_t body_len;
    bool auto_tls; /* call cmtp_smtpc_tls_done on START_TLS */
    struct cmtp_addr from, rcpts[1000];
    struct cmtp_smtpc_msg msg;
};

static struct h *h_new(enum cmtp_smtpc_mode mode, enum cmtp_smtpc_tls tls, bool no_pipe)
{
    struct h *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    struct cmtp_smtpc_config cfg = {
        .mode = mode, .tls = tls, .no_pipelining = no_pipe, .helo = "relay.a.test"};
    h->c = cmtp_smtpc_new(&cfg);
    assert_non_null(h->c);
    h->sent_cap = 1 << 20;
    h->sent = malloc(h->sent_cap);
    assert_non_null(h->sent);
    h->sent[0] = '\0';
    assert_int_equal(cmtp_addr_parse(&h->from, "<alice@a.test>", 14, 0), CMTP_ADDR_OK);
    h->auto_tls = true;
    return h;
}

/* h_new_cfg is h_new with a whole configuration (|cfg->helo| is set here). */
static struct h *h_new_cfg(struct cmtp_smtpc_config cfg)
{
    struct h *h = h_new(cfg.mode, cfg.tls, cfg.no_pipelining);
    cmtp_smtpc_free(h->c);
    cfg.helo = "relay.a.test";
    h->c = cmtp_smtpc_new(&cfg);
    assert_non_null(h->c);
    return h;
}

static void h_free(struct h *h)
{
    cmtp_smtpc_free(h->c);
    free(h->sent);
    free(h);
}

/* h_rcpts sets the message's |n| recipients r0@b.test, r1@b.test, ... */
static void h_rcpts(struct h *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char s[64];
        int k = snprintf(s, sizeof(s), "<r%zu@b.test>", i);
        assert_int_equal(cmtp_addr_parse(&h->rcpts[i], s, (size_t)k, 0), CMTP_ADDR_OK);
    }
    memset(&h->msg, 0, sizeof(h->msg));
    h->msg.from = &h->from;
    h->msg.rcpts = h->rcpts;
    h->msg.nrcpt = n;
}

static void drain(struct h *h)
{
    const uint8_t *p;
    size_t n;
    while ((n = cmtp_smtpc_output(h->c, &p)) > 0) {
        assert_true(h->sent_len + n < h->sent_cap);
        memcpy(h->sent + h->sent_len, p, n);
        h->sent_len += n;
        h->sent[h->sent_len] = '\0';
        cmtp_smtpc_output_consume(h->c, n);
    }
}

static void stream_body(struct h *h)
{
    size_t off = 0;
    while (off < h->body_len) {
        size_t used;
        size_t step = h->body_len - off < 1000 ? h->body_len - off : 1000;
        assert_int_equal(cmtp_smtpc_body(h->c, (const uint8_t *)h->body + off, step, &used), 0);
        off += used;
        if (used < step)
            drain(h); /* the output is full: send it (as a delivery agent does) */
    }
    assert_int_equal(cmtp_smtpc_body_end(h->c), 0);
    drain(h);
}

static void record(struct h *h, enum cmtp_smtpc_ev e, const struct cmtp_smtpc_event *ev)
{
    assert_true(h->nev < sizeof(h->ev) / sizeof(h->ev[0]));
    struct rec *r = &h->ev[h->nev++];
    memset(r, 0, sizeof(*r));
    r->e = e;
    r->idx = ev->rcpt_index;
    r->result = ev->result;
    r->stage = ev->stage;
    r->local = ev->local;
    r->code = ev->code;
    assert_non_null(ev->enhanced);
    assert_non_null(ev->text);
    assert_non_null(ev->status);
    snprintf(r->enh, sizeof(r->enh), "%s", ev->enhanced);
    snprintf(r->text, sizeof(r->text), "%s", ev->text);
    snprintf(r->status, sizeof(r->status), "%s", ev->status);
    r->delivered = ev->delivered;
    r->temp = ev->temp;
    r->perm = ev->perm;
    if (e == CMTP_SMTPC_READY)
        assert_non_null(ev->ext);
}

/* handle reacts to an event as a delivery agent would. */
static void handle(struct h *h, enum cmtp_smtpc_ev e)
{
    if (e == CMTP_SMTPC_BODY_READY && h->body != NULL)
        stream_body(h);
    if (e == CMTP_SMTPC_START_TLS && h->auto_tls)
        assert_int_equal(cmtp_smtpc_tls_done(h->c), 0);
    drain(h);
}

/* srv feeds server octets |s| in pieces of |step| octets (0: all at once), collecting events
 * until the input is used up and nothing is pending. */
static void srv_step(struct h *h, const char *s, size_t step)
{
    size_t len = strlen(s), off = 0;
    drain(h);
    for (int guard = 0; guard < 100000; guard++) {
        size_t piece = len - off;
        if (step > 0 && piece > step)
            piece = step;
        struct cmtp_smtpc_event ev;
        size_t used = 0;
        enum cmtp_smtpc_ev e = cmtp_smtpc_feed(h->c, (const uint8_t *)s + off, piece, &used, &ev);
        assert_true(used <= piece);
        off += used;
        if (e == CMTP_SMTPC_NEED_INPUT) {
            assert_int_equal(used, piece);
            if (off == len) {
                drain(h);
                return;
            }
            continue;
        }
        record(h, e, &ev);
        if (e == CMTP_SMTPC_CLOSED || e == CMTP_SMTPC_PROTOCOL_ERROR)
            return;
        handle(h, e);
    }
    fail_msg("event loop did not end");
}

static void srv(struct h *h, const char *s)
{
    srv_step(h, s, 0);
}

/* pending collects events that need no input (after begin or abort). */
static void pending(struct h *h)
{
    srv(h, "");
}

/* sent_since returns the octets sent since the last call, NUL-terminated. */
static const char *sent_since(struct h *h)
{
    static char buf[1 << 16];
    size_t n = h->sent_len - h->mark;
    assert_true(n < sizeof(buf));
    memcpy(buf, h->sent + h->mark, n);
    buf[n] = '\0';
    h->mark = h->sent_len;
    return buf;
}

static const struct rec *next_ev(struct h *h)
{
    assert_true(h->evmark < h->nev);
    return &h->ev[h->evmark++];
}

static void expect_ev(struct h *h, enum cmtp_smtpc_ev e)
{
    const struct rec *r = next_ev(h);
    if (r->e != e)
        fail_msg("event %d, expected %d", (int)r->e, (int)e);
}

static void expect_result(struct h *h, size_t idx, enum cmtp_smtpc_result res,
                          enum cmtp_smtpc_stage stage, unsigned code)
{
    const struct rec *r = next_ev(h);
    if (r->e != CMTP_SMTPC_RCPT_RESULT)
        fail_msg("event %d, expected RCPT_RESULT", (int)r->e);
    assert_int_equal(r->idx, idx);
    assert_int_equal(r->result, res);
    assert_int_equal(r->stage, stage);
    assert_int_equal(r->code, code);
    assert_int_equal(r->local, code == 0);
}

static void expect_done(struct h *h, size_t d, size_t t, size_t p)
{
    const struct rec *r = next_ev(h);
    assert_int_equal(r->e, CMTP_SMTPC_DONE);
    assert_int_equal(r->delivered, d);
    assert_int_equal(r->temp, t);
    assert_int_equal(r->perm, p);
}

static void expect_no_more(struct h *h)
{
    if (h->evmark != h->nev)
        fail_msg("%zu unexpected events, first %d", h->nev - h->evmark, (int)h->ev[h->evmark].e);
}

#define EHLO_PLAIN "250-mx.b.test hello\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"
#define EHLO_PIPE                                                                                  \
    "250-mx.b.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"                          \
    "250-ENHANCEDSTATUSCODES\r\n250 SIZE 0\r\n"

/* h_connect runs the greeting and EHLO (no pipelining advertised). */
static void h_connect(struct h *h, const char *ehlo_reply)
{
    srv(h, "220 mx.b.test ESMTP\r\n");
    assert_string_equal(sent_since(h), "EHLO relay.a.test\r\n");
    srv(h, ehlo_reply);
    expect_ev(h, CMTP_SMTPC_READY);
}

/* ---- tests ---- */

static void test_smtp_one_at_a_time(void **state)
{
    (void)state;
    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_rcpts(h, 3);
    h->msg.size = 10;
    /* begun before the session is ready: it starts after EHLO */
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_CONNECT);
    assert_int_equal(cmtp_smtpc_timeout_ms(h->c), 300000);
    h_connect(h, EHLO_PLAIN);
    const struct cmtp_smtpc_ext *x = cmtp_smtpc_ext(h->c);
    assert_non_null(x);
    assert_string_equal(x->host, "mx.b.test");
    assert_true(x->esmtp && x->size && x->eightbitmime);
    assert_false(x->pipelining || x->starttls || x->smtputf8);
    assert_int_equal(x->size_max, 1000);
    assert_string_equal(sent_since(h), "MAIL FROM:<alice@a.test> SIZE=10\r\n");
    assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_ENVELOPE);
    srv(h, "250 2.1.0 Ok\r\n");
    assert_string_equal(sent_since(h), "RCPT TO:<r0@b.test>\r\n");
    srv(h, "250 2.1.5 Ok\r\n");
    assert_string_equal(sent_since(h), "RCPT TO:<r1@b.test>\r\n");
    srv(h, "550 5.1.1 <r1@b.test>: Recipient address rejected\r\n");
    expect_result(h, 1, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
    assert_string_equal(h->ev[h->evmark - 1].enh, "5.1.1");
    assert_string_equal(h->ev[h->evmark - 1].text, "<r1@b.test>: Recipient address rejected");
    assert_string_equal(sent_since(h), "RCPT TO:<r2@b.test>\r\n");
    srv(h, "451 4.3.0 try later\r\n");
    expect_result(h, 2, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_RCPT, 451);
    assert_string_equal(sent_since(h), "DATA\r\n");
    assert_int_equal(cmtp_smtpc_timeout_ms(h->c), 120000);
    h->body = "Hi\r\n.dot\nend";
    h->body_len = strlen(h->body);
    srv(h, "354 End data with <CR><LF>.<CR><LF>\r\n");
    expect_ev(h, CMTP_SMTPC_BODY_READY);
    assert_string_equal(sent_since(h), "Hi\r\n..dot\r\nend\r\n.\r\n");
    assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_END);
    assert_int_equal(cmtp_smtpc_timeout_ms(h->c), 600000);
    srv(h, "250 2.0.0 Ok: queued as ABC\r\n");
    expect_result(h, 0, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
    assert_string_equal(h->ev[h->evmark - 1].text, "Ok: queued as ABC");
    expect_done(h, 1, 1, 1);
    expect_no_more(h);
    assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_READY);
    assert_int_equal(cmtp_smtpc_timeout_ms(h->c), 0);
    assert_int_equal(cmtp_smtpc_quit(h->c), 0);
    drain(h);
    assert_string_equal(sent_since(h), "QUIT\r\n");
    srv(h, "221 2.0.0 Bye\r\n");
    expect_ev(h, CMTP_SMTPC_CLOSED);
    assert_int_equal(h->ev[h->evmark - 1].code, 221);
    expect_no_more(h);
    h_free(h);
}

static void test_smtp_pipelining(void **state)
{
    (void)state;
    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_connect(h, EHLO_PIPE);
    h_rcpts(h, 3);
    h->msg.size = 5;
    h->msg.eight_bit = true;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    /* SIZE 0 means no limit, but SIZE= is still announced */
    assert_string_equal(sent_since(h), "MAIL FROM:<alice@a.test> SIZE=5 BODY=8BITMIME\r\n"
                                       "RCPT TO:<r0@b.test>\r\nRCPT TO:<r1@b.test>\r\n"
                                       "RCPT TO:<r2@b.test>\r\nDATA\r\n");
    h->body = "x\xc3\xa9";
    h->body_len = 3;
    srv(h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no\r\n250 2.1.5 Ok\r\n354 go\r\n");
    expect_result(h, 1, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
    expect_ev(h, CMTP_SMTPC_BODY_READY);
    assert_string_equal(sent_since(h), "x\xc3\xa9\r\n.\r\n");
    srv(h, "250 2.0.0 queued\r\n");
    expect_result(h, 0, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
    expect_result(h, 2, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
    expect_done(h, 2, 0, 1);
    expect_no_more(h);

    /* A second transaction on the same session: all recipients refused, DATA gets 554. */
    h_rcpts(h, 2);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    assert_string_equal(sent_since(h),
                        "MAIL FROM:<alice@a.test>\r\nRCPT TO:<r0@b.test>\r\nRCPT TO:<r1@b.test>\r\n"
                        "DATA\r\n");
    srv(h, "250 ok\r\n550 no\r\n450 busy\r\n554 5.5.1 no valid recipients\r\n");
    expect_result(h, 0, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
    expect_result(h, 1, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_RCPT, 450);
    expect_done(h, 0, 1, 1);
    /* The server still holds MAIL: the next transaction starts with RSET. */
    h_rcpts(h, 1);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    assert_string_equal(sent_since(h),
                        "RSET\r\nMAIL FROM:<alice@a.test>\r\nRCPT TO:<r0@b.test>\r\nDATA\r\n");
    /* This server says 354 although the only recipient was refused: a lone dot ends it. */
    srv(h, "250 reset\r\n250 ok\r\n550 no\r\n354 go\r\n");
    expect_result(h, 0, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
    assert_string_equal(sent_since(h), ".\r\n");
    srv(h, "554 no valid recipients\r\n");
    expect_done(h, 0, 0, 1);
    expect_no_more(h);
    h_free(h);
}

static void test_lmtp_per_recipient(void **state)
{
    (void)state;
    struct h *h = h_new(CMTP_SMTPC_LMTP, CMTP_SMTPC_TLS_NONE, false);
    srv(h, "220 store.b.test LMTP\r\n");
    assert_string_equal(sent_since(h), "LHLO relay.a.test\r\n");
    srv(h, "250-store.b.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n");
    expect_ev(h, CMTP_SMTPC_READY);
    h_rcpts(h, 4);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    assert_string_equal(sent_since(h),
                        "MAIL FROM:<alice@a.test>\r\nRCPT TO:<r0@b.test>\r\nRCPT TO:<r1@b.test>\r\n"
                        "RCPT TO:<r2@b.test>\r\nRCPT TO:<r3@b.test>\r\nDATA\r\n");
    h->body = "Subject: t\r\n\r\nbody\r\n";
    h->body_len = strlen(h->body);
    srv(h, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n"
           "354 go\r\n");
    expect_result(h, 1, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
    expect_ev(h, CMTP_SMTPC_BODY_READY);
    assert_string_equal(sent_since(h), "Subject: t\r\n\r\nbody\r\n.\r\n");
    /* one reply per accepted recipient, in RCPT order */
    srv(h, "250 2.0.0 <r0@b.test> saved\r\n452 4.2.2 <r2@b.test> quota\r\n");
    expect_result(h, 0, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
    assert_string_equal(h->ev[h->evmark - 1].text, "<r0@b.test> saved");
    expect_result(h, 2, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_DOT, 452);
    assert_string_equal(h->ev[h->evmark - 1].enh, "4.2.2");
    expect_no_more(h);
    assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_END);
    srv(h, "552 5.2.2 <r3@b.test> over quota\r\n");
    expect_result(h, 3, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_DOT, 552);
    expect_done(h, 1, 1, 2);
    expect_no_more(h);
    /* No LHLO fallback: a refused LHLO fails the session. */
    struct h *h2 = h_new(CMTP_SMTPC_LMTP, CMTP_SMTPC_TLS_NONE, false);
    h_rcpts(h2, 1);
    assert_int_equal(cmtp_smtpc_begin(h2->c, &h2->msg), 0);
    srv(h2, "220 x\r\n");
    sent_since(h2);
    srv(h2, "500 what\r\n");
    expect_result(h2, 0, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 500);
    expect_done(h2, 0, 1, 0);
    assert_string_equal(sent_since(h2), "QUIT\r\n");
    srv(h2, "221 bye\r\n");
    expect_ev(h2, CMTP_SMTPC_CLOSED);
    assert_int_equal(h2->ev[h2->evmark - 1].code, 500); /* the failure, not the 221 */
    h_free(h2);
    h_free(h);
}

static void test_starttls(void **state)
{
    (void)state;
    /* MAY: STARTTLS when offered, then EHLO again; what was learned before is forgotten. */
    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_MAY, false);
    srv(h, "220 mx ESMTP\r\n");
    sent_since(h);
    h->auto_tls = false;
    srv(h, "250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n");
    assert_string_equal(sent_since(h), "STARTTLS\r\n");
    assert_false(cmtp_smtpc_tls_active(h->c));
    srv(h, "220 2.0.0 Ready to start TLS\r\n");
    expect_ev(h, CMTP_SMTPC_START_TLS);
    assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_TLS);
    assert_int_equal(cmtp_smtpc_quit(h->c), -EINVAL);
    assert_int_equal(cmtp_smtpc_tls_done(h->c), 0);
    assert_int_equal(cmtp_smtpc_tls_done(h->c), -EINVAL);
    assert_true(cmtp_smtpc_tls_active(h->c));
    assert_null(cmtp_smtpc_ext(h->c));
    drain(h);
    assert_string_equal(sent_since(h), "EHLO relay.a.test\r\n");
    srv(h, "250-mx\r\n250 8BITMIME\r\n");
    expect_ev(h, CMTP_SMTPC_READY);
    assert_false(cmtp_smtpc_ext(h->c)->pipelining);
    assert_true(cmtp_smtpc_ext(h->c)->eightbitmime);
    expect_no_more(h);
    h_free(h);

    /* Plaintext after the 220 to STARTTLS is an injection. */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_MAY, false);
    srv(h, "220 mx\r\n250-mx\r\n250 STARTTLS\r\n");
    srv(h, "220 go ahead\r\n250 injected\r\n");
    expect_ev(h, CMTP_SMTPC_PROTOCOL_ERROR);
    assert_string_equal(h->ev[h->evmark - 1].status, "starttls-injection");
    h_free(h);

    /* REQUIRE without STARTTLS offered: every recipient fails temporarily, QUIT. */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_REQUIRE, false);
    h_rcpts(h, 2);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    srv(h, "220 mx\r\n250-mx\r\n250 PIPELINING\r\n");
    expect_result(h, 0, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 0);
    assert_string_equal(h->ev[h->evmark - 1].status, "starttls-unavailable");
    expect_result(h, 1, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 0);
    expect_done(h, 0, 2, 0);
    assert_string_equal(sent_since(h), "EHLO relay.a.test\r\nQUIT\r\n");
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), -EINVAL);
    srv(h, "221 bye\r\n");
    expect_ev(h, CMTP_SMTPC_CLOSED);
    assert_string_equal(h->ev[h->evmark - 1].status, "starttls-unavailable");
    expect_no_more(h);
    h_free(h);

    /* REQUIRE with STARTTLS refused: the same. */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_REQUIRE, false);
    h_rcpts(h, 1);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    srv(h, "220 mx\r\n250-mx\r\n250 STARTTLS\r\n");
    srv(h, "454 4.7.0 TLS not available\r\n");
    expect_result(h, 0, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 454);
    expect_done(h, 0, 1, 0);
    h_free(h);

    /* MAY with STARTTLS refused: carry on in plaintext. */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_MAY, false);
    srv(h, "220 mx\r\n250-mx\r\n250 STARTTLS\r\n");
    srv(h, "454 4.7.0 TLS not available\r\n");
    expect_ev(h, CMTP_SMTPC_READY);
    assert_false(cmtp_smtpc_tls_active(h->c));
    h_free(h);

    /* NONE never asks; an already encrypted connection never asks either. */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    srv(h, "220 mx\r\n250-mx\r\n250 STARTTLS\r\n");
    expect_ev(h, CMTP_SMTPC_READY);
    assert_string_equal(sent_since(h), "EHLO relay.a.test\r\n");
    h_free(h);
    struct cmtp_smtpc_config cfg = {.tls = CMTP_SMTPC_TLS_REQUIRE, .tls_active = true};
    struct cmtp_smtpc *c = cmtp_smtpc_new(&cfg);
    assert_non_null(c);
    assert_true(cmtp_smtpc_tls_active(c));
    cmtp_smtpc_free(c);
}

static void test_reply_classes(void **state)
{
    (void)state;
    /* MAIL refused permanently / temporarily: every recipient, stage MAIL. */
    for (int temp = 0; temp < 2; temp++) {
        struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
        h_connect(h, EHLO_PIPE);
        h_rcpts(h, 2);
        assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
        pending(h);
        sent_since(h);
        srv(h, temp ? "451 4.7.1 greylisted\r\n" : "553 5.7.1 sender rejected\r\n");
        enum cmtp_smtpc_result r = temp ? CMTP_SMTPC_TEMP : CMTP_SMTPC_PERM;
        expect_result(h, 0, r, CMTP_SMTPC_STAGE_MAIL, temp ? 451 : 553);
        expect_result(h, 1, r, CMTP_SMTPC_STAGE_MAIL, temp ? 451 : 553);
        expect_no_more(h); /* the pipelined RCPT and DATA replies are still due */
        srv(h, "503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n");
        expect_done(h, 0, temp ? 2 : 0, temp ? 0 : 2);
        /* MAIL was refused: no RSET before the next MAIL. */
        h_rcpts(h, 1);
        assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
        pending(h);
        assert_string_equal(sent_since(h),
                            "MAIL FROM:<alice@a.test>\r\nRCPT TO:<r0@b.test>\r\nDATA\r\n");
        h_free(h);
    }
    /* DATA refused, and the reply after the dot in each class. */
    static const struct {
        const char *data, *dot;
        enum cmtp_smtpc_result r;
        enum cmtp_smtpc_stage stage;
        unsigned code;
    } cases[] = {
        {"554 5.5.1 no\r\n", NULL, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_DATA, 554},
        {"451 4.3.0 later\r\n", NULL, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_DATA, 451},
        {"354 go\r\n", "552 5.3.4 too big\r\n", CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_DOT, 552},
        {"354 go\r\n", "451 4.3.0 local error\r\n", CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_DOT, 451},
        {"354 go\r\n", "250 ok\r\n", CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, true);
        h_connect(h, EHLO_PIPE);
        h_rcpts(h, 2);
        h->body = "b";
        h->body_len = 1;
        assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
        srv(h, "250 ok\r\n");
        srv(h, "250 ok\r\n");
        srv(h, "250 ok\r\n");
        srv(h, cases[i].data);
        if (cases[i].dot != NULL) {
            expect_ev(h, CMTP_SMTPC_BODY_READY);
            srv(h, cases[i].dot);
        }
        expect_result(h, 0, cases[i].r, cases[i].stage, cases[i].code);
        expect_result(h, 1, cases[i].r, cases[i].stage, cases[i].code);
        size_t n[3] = {0};
        n[cases[i].r] = 2;
        expect_done(h, n[0], n[1], n[2]);
        expect_no_more(h);
        /* RSET is needed unless the transaction ended after the dot */
        sent_since(h);
        h_rcpts(h, 1);
        assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
        pending(h);
        const char *s = sent_since(h);
        if ((strncmp(s, "RSET\r\n", 6) == 0) != (cases[i].dot == NULL))
            fail_msg("case %zu sent [%s]", i, s);
        h_free(h);
    }
    /* A refused greeting fails the session (temporarily), with QUIT. */
    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_rcpts(h, 1);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    srv(h, "554 5.7.1 no service for you\r\n");
    expect_result(h, 0, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 554);
    expect_done(h, 0, 1, 0);
    assert_string_equal(sent_since(h), "QUIT\r\n");
    cmtp_smtpc_abort(h->c, "eof");
    pending(h);
    expect_ev(h, CMTP_SMTPC_CLOSED);
    assert_int_equal(h->ev[h->evmark - 1].code, 554);
    h_free(h);
    /* EHLO refused: HELO fallback, no extensions. */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    srv(h, "220 old\r\n");
    sent_since(h);
    srv(h, "502 5.5.2 what\r\n");
    assert_string_equal(sent_since(h), "HELO relay.a.test\r\n");
    srv(h, "250 old.b.test\r\n");
    expect_ev(h, CMTP_SMTPC_READY);
    assert_false(cmtp_smtpc_ext(h->c)->esmtp);
    assert_string_equal(cmtp_smtpc_ext(h->c)->host, "old.b.test");
    /* ... so an 8-bit body cannot go: local PERM, nothing sent */
    h_rcpts(h, 2);
    h->msg.eight_bit = true;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    expect_result(h, 0, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_LOCAL, 0);
    assert_string_equal(h->ev[h->evmark - 1].status, "no-8bitmime");
    assert_string_equal(h->ev[h->evmark - 1].enh, "5.6.3");
    expect_result(h, 1, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_LOCAL, 0);
    expect_done(h, 0, 0, 2);
    assert_string_equal(sent_since(h), "");
    h_free(h);
    /* HELO refused too: the session fails. */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    srv(h, "220 old\r\n500 no\r\n");
    srv(h, "501 5.5.4 bad HELO\r\n");
    assert_string_equal(sent_since(h), "EHLO relay.a.test\r\nHELO relay.a.test\r\nQUIT\r\n");
    srv(h, "221 bye\r\n");
    expect_ev(h, CMTP_SMTPC_CLOSED);
    assert_int_equal(h->ev[h->evmark - 1].code, 501);
    h_free(h);
}

static void test_local_refusals(void **state)
{
    (void)state;
    /* SIZE above the announced limit. */
    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_connect(h, EHLO_PLAIN);
    h_rcpts(h, 1);
    h->msg.size = 1001;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    expect_result(h, 0, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_LOCAL, 0);
    assert_string_equal(h->ev[h->evmark - 1].status, "too-big");
    expect_done(h, 0, 0, 1);
    assert_string_equal(sent_since(h), "");
    /* a UTF-8 address without SMTPUTF8 */
    struct cmtp_addr u;
    assert_int_equal(cmtp_addr_parse(&u, "<jos\xc3\xa9@b.test>", 14, 0), CMTP_ADDR_OK);
    h->msg.size = 0;
    h->msg.rcpts = &u;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    expect_result(h, 0, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_LOCAL, 0);
    assert_string_equal(h->ev[h->evmark - 1].status, "no-smtputf8");
    expect_done(h, 0, 0, 1);
    /* UTF-8 header only, declared by the caller */
    h_rcpts(h, 1);
    h->msg.smtputf8 = true;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    expect_result(h, 0, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_LOCAL, 0);
    expect_done(h, 0, 0, 1);
    h_free(h);
    /* With SMTPUTF8 and 8BITMIME the parameters are sent; the null sender is <>. */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, true);
    h_connect(h, EHLO_PIPE);
    struct cmtp_addr null;
    assert_int_equal(cmtp_addr_parse(&null, "<>", 2, CMTP_ADDR_ALLOW_NULL), CMTP_ADDR_OK);
    h->msg.from = &null;
    h->msg.rcpts = &u;
    h->msg.nrcpt = 1;
    h->msg.eight_bit = true;
    h->msg.size = 0;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    assert_string_equal(sent_since(h), "MAIL FROM:<> BODY=8BITMIME SMTPUTF8\r\n");
    srv(h, "250 ok\r\n");
    assert_string_equal(sent_since(h), "RCPT TO:<jos\xc3\xa9@b.test>\r\n");
    h_free(h);
}

static void test_multiline_and_enhanced(void **state)
{
    (void)state;
    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, true);
    h_connect(h, EHLO_PIPE);
    h_rcpts(h, 3);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    srv(h, "250 ok\r\n");
    /* the repeated enhanced code is not repeated in the text */
    srv(h, "550-5.1.1 first line\r\n550-5.1.1 second\tline\r\n550 5.1.1 third\r\n");
    expect_result(h, 0, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
    assert_string_equal(h->ev[h->evmark - 1].enh, "5.1.1");
    assert_string_equal(h->ev[h->evmark - 1].text, "first line second line third");
    /* an enhanced code of the wrong class is text; control octets and bad UTF-8 become ? */
    srv(h, "450 5.1.1 odd \x01\xff\xc3\xa9\xc2\x85 end\r\n");
    expect_result(h, 1, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_RCPT, 450);
    assert_string_equal(h->ev[h->evmark - 1].enh, "");
    assert_string_equal(h->ev[h->evmark - 1].text, "5.1.1 odd ??\xc3\xa9? end");
    /* a bare code with no text */
    srv(h, "550\r\n");
    expect_result(h, 2, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
    assert_string_equal(h->ev[h->evmark - 1].text, "");
    expect_done(h, 0, 1, 2);
    h_free(h);

    /* A long text is cut at CMTP_TEXT_MAX on a character boundary. */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, true);
    h_connect(h, EHLO_PIPE);
    h_rcpts(h, 1);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    srv(h, "250 ok\r\n");
    char line[3000] = "550 ";
    for (size_t i = 4; i < 4 + 2 * 700; i += 2)
        memcpy(line + i, "\xc3\xa9", 2);
    strcpy(line + 4 + 1400, "\r\n");
    srv(h, line);
    expect_result(h, 0, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
    assert_int_equal(strlen(h->ev[h->evmark - 1].text), CMTP_TEXT_MAX);
    h_free(h);
}

/* malformed runs one reply script after a ready session and expects a protocol error. */
static void malformed(const char *script, const char *status)
{
    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, true);
    h_connect(h, EHLO_PIPE);
    h_rcpts(h, 2);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    srv(h, script);
    if (h->evmark < h->nev && h->ev[h->evmark].e == CMTP_SMTPC_BODY_READY)
        h->evmark++;
    /* both recipients fail temporarily, then DONE, then the error */
    expect_result(h, 0, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 0);
    expect_result(h, 1, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 0);
    expect_done(h, 0, 2, 0);
    expect_ev(h, CMTP_SMTPC_PROTOCOL_ERROR);
    if (status != NULL)
        assert_string_equal(h->ev[h->evmark - 1].status, status);
    expect_no_more(h);
    /* sticky */
    struct cmtp_smtpc_event ev;
    size_t used;
    assert_int_equal(cmtp_smtpc_feed(h->c, (const uint8_t *)"250 ok\r\n", 8, &used, &ev),
                     CMTP_SMTPC_PROTOCOL_ERROR);
    assert_int_equal(used, 0);
    assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_CLOSED);
    h_free(h);
}

static void test_malformed_replies(void **state)
{
    (void)state;
    malformed("250 ok\n", "bad-line");
    malformed("250 o\rk\r\n", "bad-line");
    malformed("2500 x\r\n", "bad-reply");
    malformed("25\r\n", "bad-reply");
    malformed("abc\r\n", "bad-reply");
    malformed("199 x\r\n", "bad-reply");
    malformed("610 x\r\n", "bad-reply");
    malformed("260 x\r\n", "bad-reply");
    malformed("250x\r\n", "bad-reply");
    malformed("250-a\r\n251 b\r\n", "bad-reply");
    malformed("250 ok\r\n354 go\r\n", "unexpected-reply");                     /* 3xx to RCPT */
    malformed("250 ok\r\n250 ok\r\n250 ok\r\n250 go\r\n", "unexpected-reply"); /* 2xx to DATA */
    malformed("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 extra\r\n", "unexpected-reply");

    /* NUL octets within the input. */
    {
        struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, true);
        struct cmtp_smtpc_event ev;
        size_t used;
        assert_int_equal(cmtp_smtpc_feed(h->c, (const uint8_t *)"220 a\0b\r\n", 9, &used, &ev),
                         CMTP_SMTPC_PROTOCOL_ERROR);
        assert_string_equal(ev.status, "bad-line");
        h_free(h);
    }
    /* Reply lines: 4094 octets are tolerated, 4095 are not. */
    for (int extra = 0; extra < 2; extra++) {
        struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, true);
        size_t n = CMTP_SMTPC_REPLY_LINE_MAX - 2 + (size_t)extra;
        char *s = malloc(n + 3);
        assert_non_null(s);
        memcpy(s, "220 ", 4);
        memset(s + 4, 'x', n - 4);
        memcpy(s + n, "\r\n", 3);
        srv(h, s);
        free(s);
        if (extra) {
            expect_ev(h, CMTP_SMTPC_PROTOCOL_ERROR);
            assert_string_equal(h->ev[h->evmark - 1].status, "reply-too-long");
        } else {
            assert_string_equal(sent_since(h), "EHLO relay.a.test\r\n");
            expect_no_more(h);
        }
        h_free(h);
    }
    /* Too many lines in one reply. */
    {
        struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, true);
        srv(h, "220 x\r\n");
        for (int i = 0; i < CMTP_SMTPC_REPLY_LINES_MAX - 1; i++)
            srv(h, "250-X-SOMETHING\r\n");
        expect_no_more(h); /* 127 lines so far; the 128th may end it, a 129th may not */
        srv(h, "250-X-SOMETHING\r\n250 X\r\n");
        expect_ev(h, CMTP_SMTPC_PROTOCOL_ERROR);
        assert_string_equal(h->ev[h->evmark - 1].status, "reply-too-long");
        h_free(h);
    }
    /* A reply nobody asked for. */
    {
        struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, true);
        h_connect(h, EHLO_PIPE);
        srv(h, "250 surprise\r\n");
        expect_ev(h, CMTP_SMTPC_PROTOCOL_ERROR);
        assert_string_equal(h->ev[h->evmark - 1].status, "unexpected-reply");
        h_free(h);
    }
    /* A greeting of the wrong 2xx. */
    {
        struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, true);
        srv(h, "250 hello\r\n");
        expect_ev(h, CMTP_SMTPC_PROTOCOL_ERROR);
        assert_string_equal(h->ev[h->evmark - 1].status, "bad-greeting");
        h_free(h);
    }
}

static void test_421_and_drops(void **state)
{
    (void)state;
    /* 421 in the middle of the envelope: every recipient without a result fails temporarily. */
    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_connect(h, EHLO_PIPE);
    h_rcpts(h, 3);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    srv(h, "250 ok\r\n250 ok\r\n550 5.1.1 no\r\n421 4.3.2 shutting down\r\n");
    expect_result(h, 1, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
    expect_result(h, 0, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 421);
    expect_result(h, 2, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 421);
    assert_string_equal(h->ev[h->evmark - 1].enh, "4.3.2");
    expect_done(h, 0, 2, 1);
    expect_ev(h, CMTP_SMTPC_CLOSED);
    assert_int_equal(h->ev[h->evmark - 1].code, 421);
    expect_no_more(h);
    h_free(h);

    /* 421 while the body streams (unsolicited). */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_connect(h, EHLO_PIPE);
    h_rcpts(h, 2);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    srv(h, "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    expect_ev(h, CMTP_SMTPC_BODY_READY);
    assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_BODY);
    assert_int_equal(cmtp_smtpc_timeout_ms(h->c), 180000);
    srv(h, "421 4.4.2 timeout\r\n");
    expect_result(h, 0, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 421);
    expect_result(h, 1, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 421);
    expect_done(h, 0, 2, 0);
    expect_ev(h, CMTP_SMTPC_CLOSED);
    size_t used;
    assert_int_equal(cmtp_smtpc_body(h->c, (const uint8_t *)"x", 1, &used), -EINVAL);
    h_free(h);

    /* The connection drops after the dot: TEMP (may duplicate, never lose). */
    h = h_new(CMTP_SMTPC_LMTP, CMTP_SMTPC_TLS_NONE, false);
    srv(h, "220 x\r\n250-x\r\n250 PIPELINING\r\n");
    expect_ev(h, CMTP_SMTPC_READY);
    h_rcpts(h, 3);
    h->body = "b\r\n";
    h->body_len = 3;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    srv(h, "250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    expect_ev(h, CMTP_SMTPC_BODY_READY);
    srv(h, "250 2.0.0 saved\r\n");
    expect_result(h, 0, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
    cmtp_smtpc_abort(h->c, "eof");
    cmtp_smtpc_abort(h->c, "again"); /* no-op */
    pending(h);
    expect_result(h, 1, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 0);
    assert_string_equal(h->ev[h->evmark - 1].status, "eof");
    expect_result(h, 2, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 0);
    expect_done(h, 1, 2, 0);
    expect_ev(h, CMTP_SMTPC_CLOSED);
    assert_string_equal(h->ev[h->evmark - 1].status, "eof");
    expect_no_more(h);
    h_free(h);

    /* A drop before anything happened: the begun transaction fails temporarily. */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_rcpts(h, 1);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    cmtp_smtpc_abort(h->c, NULL);
    pending(h);
    expect_result(h, 0, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_SESSION, 0);
    assert_string_equal(h->ev[h->evmark - 1].status, "connection");
    expect_done(h, 0, 1, 0);
    expect_ev(h, CMTP_SMTPC_CLOSED);
    h_free(h);
}

/* script_run runs a pipelined LMTP delivery with the server's replies split every |step|
 * octets, and returns the events as text. */
static void script_run(size_t step, char *out, size_t out_size)
{
    struct h *h = h_new(CMTP_SMTPC_LMTP, CMTP_SMTPC_TLS_MAY, false);
    h_rcpts(h, 4);
    h->body = ".a\r\n.\r\nb";
    h->body_len = strlen(h->body);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    srv_step(h, "220 x\r\n250-x\r\n250-STARTTLS\r\n250 PIPELINING\r\n220 tls\r\n", step);
    srv_step(h, "250-x\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n", step);
    srv_step(h,
             "250 ok\r\n250 ok\r\n550-5.1.1 a\r\n550 5.1.1 b\r\n250 ok\r\n451 4.2.0 c\r\n354 g\r\n",
             step);
    srv_step(h, "250 2.0.0 d\r\n452-4.2.2 e\r\n452 4.2.2 f\r\n", step);
    size_t k = 0;
    for (size_t i = 0; i < h->nev; i++) {
        const struct rec *r = &h->ev[i];
        k += (size_t)snprintf(out + k, out_size - k, "%d/%zu/%d/%u/%s/%s;", (int)r->e, r->idx,
                              (int)r->result, r->code, r->enh, r->text);
    }
    k += (size_t)snprintf(out + k, out_size - k, "|%zu", h->sent_len);
    assert_true(k < out_size);
    assert_non_null(strstr(h->sent, "\r\n..a\r\n..\r\nb\r\n.\r\n"));
    h_free(h);
}

static void test_split_every_octet(void **state)
{
    (void)state;
    char whole[4096], piece[4096];
    script_run(0, whole, sizeof(whole));
    /* READY, START_TLS, READY, 2 refused, BODY_READY, 2 results, DONE */
    assert_non_null(strstr(whole, "/1/2/550/5.1.1/a b;"));
    assert_non_null(strstr(whole, "/3/1/451/4.2.0/c;"));
    assert_non_null(strstr(whole, "/2/1/452/4.2.2/e f;"));
    for (size_t step = 1; step <= 9; step++) {
        script_run(step, piece, sizeof(piece));
        assert_string_equal(piece, whole);
    }
}

static void test_many_recipients(void **state)
{
    (void)state;
    /* 1000 recipients, pipelined: never more than CMTP_SMTPC_INFLIGHT_MAX unanswered. */
    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_connect(h, EHLO_PIPE);
    h_rcpts(h, 1000);
    h->body = "m";
    h->body_len = 1;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    size_t cmds = 0;
    for (const char *p = sent_since(h); (p = strstr(p, "\r\n")) != NULL; p += 2)
        cmds++;
    assert_int_equal(cmds, CMTP_SMTPC_INFLIGHT_MAX);
    srv(h, "250 ok\r\n"); /* MAIL */
    size_t sent_cmds = cmds, replied = 1;
    while (replied < 1 + 1000 + 1) {
        /* reply to everything sent so far: odd recipients refused */
        while (replied < sent_cmds) {
            size_t rcpt = replied - 1;
            if (rcpt < 1000)
                srv(h, rcpt % 2 ? "550 no\r\n" : "250 ok\r\n");
            else
                srv(h, "354 go\r\n");
            replied++;
        }
        for (const char *p = sent_since(h); (p = strstr(p, "\r\n")) != NULL; p += 2)
            sent_cmds++;
        if (replied == 1 + 1000 + 1)
            break;
        assert_true(sent_cmds > replied);
        assert_true(sent_cmds - replied <= CMTP_SMTPC_INFLIGHT_MAX);
    }
    srv(h, "250 queued\r\n");
    bool seen[1000] = {0};
    size_t results = 0;
    for (size_t i = 0; i < h->nev; i++) {
        if (h->ev[i].e != CMTP_SMTPC_RCPT_RESULT)
            continue;
        assert_false(seen[h->ev[i].idx]);
        seen[h->ev[i].idx] = true;
        assert_int_equal(h->ev[i].result,
                         h->ev[i].idx % 2 ? CMTP_SMTPC_PERM : CMTP_SMTPC_DELIVERED);
        results++;
    }
    assert_int_equal(results, 1000);
    assert_int_equal(h->ev[h->nev - 1].e, CMTP_SMTPC_DONE);
    assert_int_equal(h->ev[h->nev - 1].delivered, 500);
    assert_int_equal(h->ev[h->nev - 1].perm, 500);
    h_free(h);
}

static void test_api_misuse(void **state)
{
    (void)state;
    struct cmtp_smtpc_config bad = {.helo = "has space"};
    assert_null(cmtp_smtpc_new(&bad));
    bad.helo = "";
    assert_null(cmtp_smtpc_new(&bad));
    bad.helo = "ctl\r\n";
    assert_null(cmtp_smtpc_new(&bad));
    struct cmtp_smtpc *c = cmtp_smtpc_new(NULL);
    assert_non_null(c);
    cmtp_smtpc_free(c);
    cmtp_smtpc_free(NULL);

    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_rcpts(h, 2);
    struct cmtp_smtpc_msg m = h->msg;
    m.nrcpt = 0;
    assert_int_equal(cmtp_smtpc_begin(h->c, &m), -EINVAL);
    m = h->msg;
    m.from = NULL;
    assert_int_equal(cmtp_smtpc_begin(h->c, &m), -EINVAL);
    struct cmtp_addr two[2];
    two[0] = h->rcpts[0];
    assert_int_equal(cmtp_addr_parse(&two[1], "<>", 2, CMTP_ADDR_ALLOW_NULL), CMTP_ADDR_OK);
    m = h->msg;
    m.rcpts = two;
    assert_int_equal(cmtp_smtpc_begin(h->c, &m), -EINVAL);
    assert_int_equal(cmtp_smtpc_quit(h->c), -EINVAL); /* not ready */
    size_t used;
    assert_int_equal(cmtp_smtpc_body(h->c, (const uint8_t *)"x", 1, &used), -EINVAL);
    assert_int_equal(cmtp_smtpc_body_end(h->c), -EINVAL);
    assert_null(cmtp_smtpc_ext(h->c));
    h_connect(h, EHLO_PIPE);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), -EINVAL); /* one at a time */
    assert_int_equal(cmtp_smtpc_quit(h->c), -EINVAL);
    h_free(h);
}

/* ---- CHUNKING ---- */

/* h_quit ends a session that has no transaction open: QUIT, 221, CLOSED; then frees |h|. */
static void h_quit(struct h *h)
{
    expect_no_more(h);
    assert_int_equal(cmtp_smtpc_quit(h->c), 0);
    drain(h);
    assert_string_equal(sent_since(h), "QUIT\r\n");
    srv(h, "221 2.0.0 bye\r\n");
    expect_ev(h, CMTP_SMTPC_CLOSED);
    expect_no_more(h);
    h_free(h);
}

#define EHLO_CHUNK                                                                                 \
    "250-mx.b.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-CHUNKING\r\n250 SIZE 0\r\n"
#define EHLO_BINARY                                                                                \
    "250-mx.b.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-CHUNKING\r\n250-BINARYMIME\r\n"        \
    "250 SIZE 0\r\n"

/* bdat_parse reads BDAT chunks from the |n| octets sent at |s|: their data goes to |out| (room
 * |cap|, length in |*out_len|), the number of chunks is returned and |*last| tells whether the
 * final one said LAST. Anything that is not a well-formed chunk fails the test. */
static size_t bdat_parse(const char *s, size_t n, char *out, size_t cap, size_t *out_len,
                         bool *last)
{
    size_t off = 0, chunks = 0;
    *out_len = 0;
    *last = false;
    while (off < n) {
        assert_false(*last);
        assert_true(n - off > 7 && memcmp(s + off, "BDAT ", 5) == 0);
        off += 5;
        size_t len = 0, digits = 0;
        while (off < n && s[off] >= '0' && s[off] <= '9') {
            len = len * 10 + (size_t)(s[off++] - '0');
            digits++;
        }
        assert_true(digits > 0 && digits <= 5);
        if (n - off >= 5 && memcmp(s + off, " LAST", 5) == 0) {
            *last = true;
            off += 5;
        }
        assert_true(n - off >= 2 && s[off] == '\r' && s[off + 1] == '\n');
        off += 2;
        assert_true(n - off >= len && *out_len + len <= cap);
        assert_true(len > 0 || *last);
        memcpy(out + *out_len, s + off, len);
        *out_len += len;
        off += len;
        chunks++;
    }
    return chunks;
}

/* one_rcpt delivers h->msg (set up, one recipient) with |body|: the envelope goes out as |env|,
 * the server answers |replies| (the envelope's, and 354 after DATA), the body goes out as |out|
 * (|out_len| octets) and is taken with 250. */
static void one_rcpt(struct h *h, const char *env, const char *replies, const char *body,
                     const char *out, size_t out_len)
{
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    assert_string_equal(sent_since(h), env);
    h->body = body;
    h->body_len = strlen(body);
    srv(h, replies);
    expect_ev(h, CMTP_SMTPC_BODY_READY);
    assert_memory_equal(sent_since(h), out, out_len);
    srv(h, "250 ok\r\n");
    expect_result(h, 0, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
    expect_done(h, 1, 0, 0);
}

static void test_bdat_smtp(void **state)
{
    (void)state;
    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_connect(h, EHLO_CHUNK);
    assert_true(cmtp_smtpc_ext(h->c)->chunking);
    assert_false(cmtp_smtpc_ext(h->c)->binarymime);
    h_rcpts(h, 2);
    h->msg.size = 70000; /* over BDAT_EAGER_MAX: the body waits for the RCPT replies */
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    /* No DATA: the body follows the envelope's replies. */
    assert_string_equal(sent_since(h), "MAIL FROM:<alice@a.test> SIZE=70000\r\n"
                                       "RCPT TO:<r0@b.test>\r\nRCPT TO:<r1@b.test>\r\n");
    /* A dot line is not stuffed and the unterminated last line stays so: a length-counted
     * chunk has no terminator. */
    h->body = "a\r\n.\r\n..\r\nb";
    h->body_len = strlen(h->body);
    srv(h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
    assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_ENVELOPE);
    srv(h, "550 5.1.1 no\r\n");
    expect_result(h, 1, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
    expect_ev(h, CMTP_SMTPC_BODY_READY);
    assert_string_equal(sent_since(h), "BDAT 11 LAST\r\na\r\n.\r\n..\r\nb");
    assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_END);
    assert_int_equal(cmtp_smtpc_timeout_ms(h->c), 600000);
    srv(h, "250 2.0.0 Ok: queued\r\n");
    expect_result(h, 0, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
    expect_done(h, 1, 0, 1);

    /* Bare CR and LF of a body not known to be binary are canonicalized, as after DATA. */
    h_rcpts(h, 1);
    h->msg.eight_bit = true;
    one_rcpt(h, "MAIL FROM:<alice@a.test> BODY=8BITMIME\r\nRCPT TO:<r0@b.test>\r\n",
             "250 ok\r\n250 ok\r\n", "x\ny\rz\xc3\xa9", "BDAT 9 LAST\r\nx\r\ny\r\nz\xc3\xa9", 22);

    /* Every recipient refused: no body, and the next transaction starts with RSET. */
    h_rcpts(h, 1);
    h->msg.eight_bit = false;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    assert_string_equal(sent_since(h), "MAIL FROM:<alice@a.test>\r\nRCPT TO:<r0@b.test>\r\n");
    srv(h, "250 ok\r\n450 4.2.1 later\r\n");
    expect_result(h, 0, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_RCPT, 450);
    expect_done(h, 0, 1, 0);
    assert_string_equal(sent_since(h), "");
    h_rcpts(h, 1);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    assert_string_equal(sent_since(h),
                        "RSET\r\nMAIL FROM:<alice@a.test>\r\nRCPT TO:<r0@b.test>\r\n");
    h->body = "";
    h->body_len = 0;
    srv(h, "250 reset\r\n250 ok\r\n250 ok\r\n");
    expect_ev(h, CMTP_SMTPC_BODY_READY);
    assert_string_equal(sent_since(h), "BDAT 0 LAST\r\n");
    srv(h, "250 ok\r\n");
    expect_result(h, 0, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
    expect_done(h, 1, 0, 0);
    h_quit(h);

    /* The operator's no_chunking keeps DATA. */
    h = h_new_cfg((struct cmtp_smtpc_config){.mode = CMTP_SMTPC_SMTP, .no_chunking = true});
    h_connect(h, EHLO_CHUNK);
    h_rcpts(h, 1);
    one_rcpt(h, "MAIL FROM:<alice@a.test>\r\nRCPT TO:<r0@b.test>\r\nDATA\r\n",
             "250 ok\r\n250 ok\r\n354 go\r\n", ".x", "..x\r\n.\r\n", 8);
    h_quit(h);
}

static void test_bdat_binarymime(void **state)
{
    (void)state;
    static const char bin[] = "Subject: b\r\n\r\n\x00\r.\r\n.\n\r\n.\r\nz\r";
    const size_t bin_len = sizeof(bin) - 1;
    char got[64];
    size_t got_len;
    bool last;

    /* With BINARYMIME a binary body goes octet for octet. */
    struct h *h = h_new(CMTP_SMTPC_LMTP, CMTP_SMTPC_TLS_NONE, false);
    srv(h, "220 store ready\r\n");
    assert_string_equal(sent_since(h), "LHLO relay.a.test\r\n");
    srv(h, EHLO_BINARY);
    expect_ev(h, CMTP_SMTPC_READY);
    assert_true(cmtp_smtpc_ext(h->c)->binarymime);
    h_rcpts(h, 3);
    h->msg.binary = true;
    h->msg.size = bin_len;
    h->body = bin;
    h->body_len = bin_len;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h); /* a small body goes right behind the envelope (pipelined) */
    expect_ev(h, CMTP_SMTPC_BODY_READY);
    static const char env[] = "MAIL FROM:<alice@a.test> SIZE=28 BODY=BINARYMIME\r\n"
                              "RCPT TO:<r0@b.test>\r\nRCPT TO:<r1@b.test>\r\n"
                              "RCPT TO:<r2@b.test>\r\n";
    size_t at = h->mark + sizeof(env) - 1;
    assert_memory_equal(h->sent + h->mark, env, sizeof(env) - 1);
    assert_int_equal(bdat_parse(h->sent + at, h->sent_len - at, got, sizeof(got), &got_len, &last),
                     1);
    srv(h, "250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n");
    expect_result(h, 1, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
    assert_true(last);
    assert_int_equal(got_len, bin_len);
    assert_memory_equal(got, bin, bin_len);
    h->mark = h->sent_len;
    /* LMTP: one reply per accepted recipient after BDAT LAST. */
    srv(h, "250 2.0.0 <r0@b.test> saved\r\n452 4.2.2 <r2@b.test> over quota\r\n");
    expect_result(h, 0, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
    expect_result(h, 2, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_DOT, 452);
    expect_done(h, 1, 1, 1);
    h_quit(h);

    /* Without BINARYMIME a binary body is canonicalized and dot-stuffed after DATA... */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_connect(h, EHLO_CHUNK);
    h_rcpts(h, 1);
    h->msg.binary = true;
    one_rcpt(h, "MAIL FROM:<alice@a.test>\r\nRCPT TO:<r0@b.test>\r\nDATA\r\n",
             "250 ok\r\n250 ok\r\n354 go\r\n", "a\nb", "a\r\nb\r\n.\r\n", 9);
    h_quit(h);

    /* ... and refused where the body must not be altered (SMTP fallback). */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_connect(h, EHLO_CHUNK);
    h_rcpts(h, 2);
    h->msg.binary = h->msg.body_strict = true;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    expect_result(h, 0, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_LOCAL, 0);
    assert_string_equal(h->ev[h->evmark - 1].status, "no-binarymime");
    assert_string_equal(h->ev[h->evmark - 1].enh, "5.6.3");
    expect_result(h, 1, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_LOCAL, 0);
    expect_done(h, 0, 0, 2);
    assert_string_equal(sent_since(h), "");
    /* A text body goes, in BDAT. */
    h_rcpts(h, 1);
    h->msg.body_strict = true;
    one_rcpt(h, "MAIL FROM:<alice@a.test>\r\nRCPT TO:<r0@b.test>\r\n", "250 ok\r\n250 ok\r\n",
             "t\r\n", "BDAT 3 LAST\r\nt\r\n", 16);
    h_quit(h);

    /* Strict, with BINARYMIME: accepted and raw; an 8-bit body needs no 8BITMIME then. */
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_connect(h, "250-mx.b.test\r\n250-CHUNKING\r\n250 BINARYMIME\r\n");
    h_rcpts(h, 1);
    h->msg.binary = h->msg.eight_bit = h->msg.body_strict = true;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    assert_string_equal(sent_since(h), "MAIL FROM:<alice@a.test> BODY=BINARYMIME\r\n");
    srv(h, "250 ok\r\n");
    assert_string_equal(sent_since(h), "RCPT TO:<r0@b.test>\r\n");
    h->body = "\xff\n";
    h->body_len = 2;
    srv(h, "250 ok\r\n");
    expect_ev(h, CMTP_SMTPC_BODY_READY);
    assert_memory_equal(sent_since(h), "BDAT 2 LAST\r\n\xff\n", 15);
    srv(h, "250 ok\r\n");
    expect_result(h, 0, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
    expect_done(h, 1, 0, 0);
    h_quit(h);
}

/* A large body goes in several chunks: pipelined, or one at a time without PIPELINING. */
static void test_bdat_large(void **state)
{
    (void)state;
    enum { BIG = 100000 };
    char *body = malloc(BIG), *got = malloc(BIG + 1);
    assert_non_null(body);
    assert_non_null(got);
    uint32_t x = 12345;
    for (size_t i = 0; i < BIG; i++) {
        x = x * 1103515245u + 12345u;
        body[i] = (char)(x >> 24);
    }
    for (int pipe = 0; pipe < 2; pipe++) {
        struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, !pipe);
        h_connect(h, EHLO_BINARY);
        h_rcpts(h, 1);
        h->msg.binary = h->msg.eight_bit = true;
        assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
        pending(h);
        if (pipe) {
            srv(h, "250 ok\r\n250 ok\r\n");
        } else {
            srv(h, "250 ok\r\n");
            srv(h, "250 ok\r\n");
        }
        expect_ev(h, CMTP_SMTPC_BODY_READY);
        (void)sent_since(h);
        size_t at = h->sent_len, off = 0, replies = 0;
        bool ended = false;
        for (int guard = 0; guard < 10000 && !ended; guard++) {
            size_t used = 0;
            assert_int_equal(cmtp_smtpc_body(h->c, (const uint8_t *)body + off, BIG - off, &used),
                             0);
            off += used;
            if (off == BIG) {
                int r = cmtp_smtpc_body_end(h->c);
                assert_true(r == 0 || (!pipe && r == -EAGAIN));
                ended = r == 0;
            }
            drain(h);
            if (!pipe && !ended) {
                /* One chunk outstanding at a time: nothing more goes before its reply. */
                assert_int_equal(
                    cmtp_smtpc_body(h->c, (const uint8_t *)body + off, BIG - off, &used), 0);
                assert_int_equal(used, 0);
                assert_int_equal(cmtp_smtpc_body_end(h->c), -EAGAIN);
                srv(h, "250 2.0.0 chunk ok\r\n");
                replies++;
            }
        }
        assert_true(ended);
        size_t got_len;
        bool last;
        size_t chunks = bdat_parse(h->sent + at, h->sent_len - at, got, BIG, &got_len, &last);
        assert_true(last);
        assert_int_equal(got_len, BIG);
        assert_memory_equal(got, body, BIG);
        assert_true(chunks >= BIG / CMTP_SMTPC_OUT_MAX);
        if (!pipe)
            assert_int_equal(replies, chunks - 1);
        h->mark = h->sent_len;
        /* Pipelined: the replies to every chunk, then the LAST one's. */
        for (size_t i = 0; pipe && i + 1 < chunks; i++)
            srv(h, "250 ok\r\n");
        assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_END);
        srv(h, "250 2.0.0 queued\r\n");
        expect_result(h, 0, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
        expect_done(h, 1, 0, 0);
        h_quit(h);
    }
    free(body);
    free(got);
}

/* A chunk refused mid-body fails the accepted recipients with its reply and ends the session. */
static void test_bdat_refused_chunk(void **state)
{
    (void)state;
    enum { BIG = 40000 };
    char *body = malloc(BIG);
    assert_non_null(body);
    memset(body, 'a', BIG);
    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_connect(h, EHLO_CHUNK);
    h_rcpts(h, 2);
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    srv(h, "250 ok\r\n250 ok\r\n250 ok\r\n");
    expect_ev(h, CMTP_SMTPC_BODY_READY);
    size_t used;
    assert_int_equal(cmtp_smtpc_body(h->c, (const uint8_t *)body, BIG, &used), 0);
    assert_true(used > 0 && used < BIG);
    drain(h);
    srv(h, "552 5.3.4 message too big for this system\r\n");
    expect_result(h, 0, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_DATA, 552);
    assert_string_equal(h->ev[h->evmark - 1].enh, "5.3.4");
    expect_result(h, 1, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_DATA, 552);
    expect_done(h, 0, 0, 2);
    expect_ev(h, CMTP_SMTPC_CLOSED);
    assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_CLOSED);
    assert_int_equal(cmtp_smtpc_body(h->c, (const uint8_t *)body, BIG, &used), -EINVAL);
    assert_int_equal(cmtp_smtpc_body_end(h->c), -EINVAL);
    h_free(h);
    free(body);
}

/* A small body goes right behind the envelope when the server pipelines: one round trip. */
static void test_bdat_eager(void **state)
{
    (void)state;
    enum { MID = 20000 };
    char *mid = malloc(MID), *got = malloc(MID);
    assert_non_null(mid);
    assert_non_null(got);
    memset(mid, 'm', MID);
    for (int lmtp = 0; lmtp < 2; lmtp++) {
        struct h *h = h_new(lmtp ? CMTP_SMTPC_LMTP : CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
        srv(h, "220 mx.b.test ESMTP\r\n");
        (void)sent_since(h);
        srv(h, EHLO_CHUNK);
        expect_ev(h, CMTP_SMTPC_READY);
        h_rcpts(h, 3);
        h->msg.size = 5;
        h->body = "hi\r\n.";
        h->body_len = 5;
        assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
        pending(h);
        expect_ev(h, CMTP_SMTPC_BODY_READY);
        assert_string_equal(sent_since(h), "MAIL FROM:<alice@a.test> SIZE=5\r\n"
                                           "RCPT TO:<r0@b.test>\r\nRCPT TO:<r1@b.test>\r\n"
                                           "RCPT TO:<r2@b.test>\r\nBDAT 5 LAST\r\nhi\r\n.");
        assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_END);
        /* Every reply in one read: the RCPT results, then the body's (LMTP: one per accepted
         * recipient, counted once the RCPT replies are in). */
        srv(h, lmtp ? "250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n250 2.0.0 a\r\n451 4.2.0 b\r\n"
                    : "250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n250 2.0.0 queued\r\n");
        expect_result(h, 1, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
        expect_result(h, 0, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
        if (lmtp) {
            expect_result(h, 2, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_DOT, 451);
            expect_done(h, 1, 1, 1);
        } else {
            expect_result(h, 2, CMTP_SMTPC_DELIVERED, CMTP_SMTPC_STAGE_DOT, 250);
            expect_done(h, 2, 0, 1);
        }

        /* Every recipient refused: the chunks are refused too (one reply each, LMTP's LAST
         * included) and decide nothing; the session goes on. */
        h_rcpts(h, 2);
        h->msg.size = MID;
        h->body = mid;
        h->body_len = MID;
        assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
        pending(h);
        expect_ev(h, CMTP_SMTPC_BODY_READY);
        const char *o = sent_since(h);
        static const char env2[] = "MAIL FROM:<alice@a.test> SIZE=20000\r\nRCPT TO:<r0@b.test>\r\n"
                                   "RCPT TO:<r1@b.test>\r\n";
        assert_memory_equal(o, env2, sizeof(env2) - 1);
        size_t got_len;
        bool last;
        size_t chunks = bdat_parse(o + sizeof(env2) - 1, strlen(o) - (sizeof(env2) - 1), got, MID,
                                   &got_len, &last);
        assert_true(last && chunks >= 2 && got_len == MID);
        srv(h, "250 ok\r\n550 5.1.1 no\r\n450 4.2.1 busy\r\n");
        expect_result(h, 0, CMTP_SMTPC_PERM, CMTP_SMTPC_STAGE_RCPT, 550);
        expect_result(h, 1, CMTP_SMTPC_TEMP, CMTP_SMTPC_STAGE_RCPT, 450);
        for (size_t i = 0; i < chunks; i++)
            srv(h, "554 5.5.1 no valid recipients\r\n");
        expect_done(h, 0, 1, 1);
        assert_int_equal(cmtp_smtpc_state(h->c), CMTP_SMTPC_STATE_READY);
        h_quit(h);
    }
    free(mid);
    free(got);

    /* Not eager: without PIPELINING, or with more than BDAT_EAGER_RCPTS recipients. */
    struct h *h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, true);
    h_connect(h, EHLO_CHUNK);
    h_rcpts(h, 1);
    h->msg.size = 3;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    assert_string_equal(sent_since(h), "MAIL FROM:<alice@a.test> SIZE=3\r\n");
    expect_no_more(h);
    h_free(h);
    h = h_new(CMTP_SMTPC_SMTP, CMTP_SMTPC_TLS_NONE, false);
    h_connect(h, EHLO_CHUNK);
    h_rcpts(h, 17);
    h->msg.size = 3;
    assert_int_equal(cmtp_smtpc_begin(h->c, &h->msg), 0);
    pending(h);
    assert_null(strstr(sent_since(h), "BDAT"));
    expect_no_more(h);
    h_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smtp_one_at_a_time),
        cmocka_unit_test(test_smtp_pipelining),
        cmocka_unit_test(test_lmtp_per_recipient),
        cmocka_unit_test(test_starttls),
        cmocka_unit_test(test_reply_classes),
        cmocka_unit_test(test_local_refusals),
        cmocka_unit_test(test_multiline_and_enhanced),
        cmocka_unit_test(test_malformed_replies),
        cmocka_unit_test(test_421_and_drops),
        cmocka_unit_test(test_split_every_octet),
        cmocka_unit_test(test_many_recipients),
        cmocka_unit_test(test_api_misuse),
        cmocka_unit_test(test_bdat_smtp),
        cmocka_unit_test(test_bdat_binarymime),
        cmocka_unit_test(test_bdat_large),
        cmocka_unit_test(test_bdat_refused_chunk),
        cmocka_unit_test(test_bdat_eager),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
