/* tests/unit/test_core_smtps.c — the ESMTP ingress state machine: every command and state, DATA
 * end detection split at every octet, BDAT, limits, error counting, STARTTLS, the CMTP-POLICY
 * parameter, hostile input, and the SMTP client and server connected in memory. No sockets. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/dotstuff.h"
#include "core/smtp_client.h"
#include "core/smtp_server.h"

/* ---- harness ---- */

struct sh {
    struct cmtp_smtps *s;
    char out[1 << 16]; /* every reply */
    size_t out_len, mark;
    uint8_t *body; /* BODY octets of the current transaction */
    size_t body_len, body_cap;
    int mails, rcpts, txn_rcpts, ends, resets, closes, starttls;
    size_t body_total; /* every BODY octet of the session (not cleared by RESET) */
    unsigned last_code;
    struct cmtp_smtps_txn last_txn; /* copied at END (or MAIL) */
    size_t end_rcpts;
    char end_first_rcpt[400];
    uint8_t *ended_body; /* the body at the last END */
    size_t ended_len;
    /* answers */
    enum cmtp_smtps_mail_answer mail_answer;
    enum cmtp_smtps_end_result end_result;
    bool auto_tls;
    bool closed;
};

static struct sh *sh_new(const struct cmtp_smtps_config *cfg)
{
    struct sh *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    h->s = cmtp_smtps_new(cfg);
    assert_non_null(h->s);
    cmtp_smtps_start(h->s);
    h->auto_tls = true;
    return h;
}

static struct sh *sh_default(void)
{
    struct cmtp_smtps_config cfg = {.host = "ingress.a.test", .size_max = 1000, .errors_max = 5};
    return sh_new(&cfg);
}

static void sh_free(struct sh *h)
{
    cmtp_smtps_free(h->s);
    free(h->body);
    free(h->ended_body);
    free(h);
}

static void drain(struct sh *h)
{
    const uint8_t *p;
    size_t n = cmtp_smtps_output(h->s, &p);
    assert_true(n <= CMTP_SMTPS_OUT_MAX);
    assert_true(h->out_len + n < sizeof(h->out));
    memcpy(h->out + h->out_len, p, n);
    h->out_len += n;
    h->out[h->out_len] = '\0';
    cmtp_smtps_output_consume(h->s, n);
}

static void body_put(struct sh *h, const uint8_t *p, size_t n)
{
    if (h->body_len + n > h->body_cap) {
        size_t cap = h->body_cap ? h->body_cap : 256;
        while (cap < h->body_len + n)
            cap *= 2;
        h->body = realloc(h->body, cap);
        assert_non_null(h->body);
        h->body_cap = cap;
    }
    memcpy(h->body + h->body_len, p, n);
    h->body_len += n;
}

/* rcpt_answer: local part "nobody" has no mailbox, "temp" fails temporarily, "far" is a
 * relay the caller refuses; everything else is accepted. */
static enum cmtp_smtps_rcpt_answer rcpt_answer(const struct cmtp_addr *a)
{
    if (strcmp(a->local, "nobody") == 0)
        return CMTP_SMTPS_RCPT_NO_MAILBOX;
    if (strcmp(a->local, "temp") == 0)
        return CMTP_SMTPS_RCPT_TEMPFAIL;
    if (strcmp(a->local, "far") == 0)
        return CMTP_SMTPS_RCPT_RELAY_DENIED;
    return CMTP_SMTPS_RCPT_OK;
}

static void answer(struct sh *h, enum cmtp_smtps_ev e, const struct cmtp_smtps_event *ev)
{
    switch (e) {
    case CMTP_SMTPS_MAIL:
        h->mails++;
        h->txn_rcpts = 0;
        h->last_txn = *ev->txn;
        h->body_len = 0;
        assert_int_equal(cmtp_smtps_mail_reply(h->s, h->mail_answer), 0);
        assert_int_equal(cmtp_smtps_mail_reply(h->s, h->mail_answer), -EINVAL);
        break;
    case CMTP_SMTPS_RCPT:
        h->rcpts++;
        assert_int_equal(ev->rcpt_index, (uint32_t)++h->txn_rcpts);
        assert_int_equal(cmtp_smtps_rcpt_reply(h->s, rcpt_answer(ev->rcpt)), 0);
        break;
    case CMTP_SMTPS_BODY:
        assert_int_equal(ev->offset, h->body_len);
        assert_true(ev->len > 0);
        body_put(h, ev->data, ev->len);
        h->body_total += ev->len;
        break;
    case CMTP_SMTPS_END: {
        h->ends++;
        h->last_txn = *ev->txn;
        assert_int_equal(ev->txn->body_size, h->body_len);
        h->end_rcpts = ev->rcpt_count;
        if (ev->rcpt_count > 0)
            cmtp_addr_format(&ev->rcpts[0], h->end_first_rcpt, sizeof(h->end_first_rcpt));
        free(h->ended_body);
        h->ended_body = malloc(h->body_len + 1);
        assert_non_null(h->ended_body);
        if (h->body_len > 0)
            memcpy(h->ended_body, h->body, h->body_len);
        h->ended_len = h->body_len;
        h->body_len = 0;
        struct cmtp_smtps_end_answer a = {.result = h->end_result, .qid = "Q1.x-y_z"};
        assert_int_equal(cmtp_smtps_end_reply(h->s, &a), 0);
        break;
    }
    case CMTP_SMTPS_RESET:
        h->resets++;
        h->last_code = ev->code;
        h->body_len = 0;
        break;
    case CMTP_SMTPS_STARTTLS:
        h->starttls++;
        if (h->auto_tls)
            assert_int_equal(cmtp_smtps_tls_reset(h->s), 0);
        break;
    case CMTP_SMTPS_CLOSE:
        h->closes++;
        h->last_code = ev->code;
        h->closed = true;
        break;
    default:
        break;
    }
}

/* cli feeds client octets |p| (|n|) in pieces of |step| (0: at once). */
static void cli_n(struct sh *h, const char *p, size_t n, size_t step)
{
    size_t off = 0;
    for (int guard = 0; guard < 1000000; guard++) {
        size_t piece = n - off;
        if (step > 0 && piece > step)
            piece = step;
        struct cmtp_smtps_event ev;
        size_t used = 0;
        enum cmtp_smtps_ev e = cmtp_smtps_feed(h->s, (const uint8_t *)p + off, piece, &used, &ev);
        assert_true(used <= piece);
        off += used;
        if (e == CMTP_SMTPS_BLOCKED)
            fail_msg("blocked without an answer");
        if (e == CMTP_SMTPS_FLUSH) {
            drain(h);
            continue;
        }
        if (e == CMTP_SMTPS_NEED_INPUT) {
            assert_int_equal(used, piece);
            if (off == n) {
                drain(h);
                return;
            }
            continue;
        }
        answer(h, e, &ev);
        drain(h);
        if (e == CMTP_SMTPS_CLOSE || (e == CMTP_SMTPS_STARTTLS && !h->auto_tls))
            return;
    }
    fail_msg("feed loop did not end");
}

static void cli(struct sh *h, const char *s)
{
    cli_n(h, s, strlen(s), 0);
}

/* replies returns the replies since the last call. */
static const char *replies(struct sh *h)
{
    const char *r = h->out + h->mark;
    h->mark = h->out_len;
    return r;
}

#define GREETING "220 ingress.a.test ESMTP CMTP ingress\r\n"
#define EHLO_REPLY                                                                                 \
    "250-ingress.a.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"    \
    "250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250 CMTP-POLICY\r\n"

/* ready brings a default session to "EHLO done". */
static struct sh *ready(void)
{
    struct sh *h = sh_default();
    drain(h);
    assert_string_equal(replies(h), GREETING);
    cli(h, "EHLO mta.a.test\r\n");
    assert_string_equal(replies(h), EHLO_REPLY);
    assert_string_equal(cmtp_smtps_helo(h->s), "mta.a.test");
    return h;
}

/* expect checks that |cmd| gets exactly |want|. */
static void expect(struct sh *h, const char *cmd, const char *want)
{
    cli(h, cmd);
    const char *got = replies(h);
    if (strcmp(got, want) != 0)
        fail_msg("for [%s]: got [%s], want [%s]", cmd, got, want);
}

/* canon: CRLF, bare CR and bare LF all become CRLF; an unterminated last line gets CRLF. */
static size_t canon(uint8_t *out, const uint8_t *in, size_t n)
{
    size_t k = 0, i = 0, start = 0;
    while (i < n) {
        if (in[i] == '\r' || in[i] == '\n') {
            memcpy(out + k, in + start, i - start);
            k += i - start;
            out[k++] = '\r';
            out[k++] = '\n';
            if (in[i] == '\r' && i + 1 < n && in[i + 1] == '\n')
                i++;
            start = ++i;
        } else {
            i++;
        }
    }
    if (start < n) {
        memcpy(out + k, in + start, n - start);
        k += n - start;
        out[k++] = '\r';
        out[k++] = '\n';
    }
    return k;
}

/* ---- tests ---- */

static void test_basic_session(void **state)
{
    (void)state;
    struct sh *h = ready();
    assert_int_equal(cmtp_smtps_state(h->s), CMTP_SMTPS_STATE_IDLE);
    expect(h, "MAIL FROM:<alice@a.test> SIZE=20 BODY=8BITMIME\r\n", "250 2.1.0 Ok\r\n");
    assert_true(cmtp_smtps_in_transaction(h->s));
    assert_int_equal(h->last_txn.size, 20);
    assert_int_equal(h->last_txn.body, CMTP_SMTPS_BODY_8BITMIME);
    assert_string_equal(h->last_txn.from.local, "alice");
    expect(h, "RCPT TO:<bob@b.test>\r\n", "250 2.1.5 Ok\r\n");
    expect(h, "RCPT TO:<nobody@b.test>\r\n", "550 5.1.1 Error: no such mailbox\r\n");
    expect(h, "RCPT TO:<temp@b.test>\r\n", "451 4.3.0 Error: try again later\r\n");
    expect(h, "RCPT TO:<far@c.test>\r\n", "554 5.7.1 Error: relay access denied\r\n");
    expect(h, "DATA\r\n", "354 End data with <CR><LF>.<CR><LF>\r\n");
    assert_int_equal(cmtp_smtps_state(h->s), CMTP_SMTPS_STATE_DATA);
    expect(h, "Subject: x\r\n\r\n..hi\r\n.\r\n", "250 2.0.0 Ok: queued as Q1.x-y_z\r\n");
    assert_int_equal(h->ends, 1);
    assert_int_equal(h->ended_len, 19);
    assert_memory_equal(h->ended_body, "Subject: x\r\n\r\n.hi\r\n", 19);
    assert_int_equal(h->end_rcpts, 1);
    assert_string_equal(h->end_first_rcpt, "bob@b.test");
    assert_false(cmtp_smtps_in_transaction(h->s));
    /* a second message on the same connection, with temporary failure at the end */
    h->end_result = CMTP_SMTPS_END_TEMPFAIL;
    expect(h, "MAIL FROM:<> \r\nRCPT TO:<Postmaster>\r\nDATA\r\nx\r\n.\r\n",
           "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
           "451 4.3.0 Error: queue write failed, try again later\r\n");
    assert_true(h->last_txn.from.is_null);
    assert_string_equal(h->end_first_rcpt, "postmaster@ingress.a.test");
    h->end_result = CMTP_SMTPS_END_REJECTED;
    expect(h, "MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n.\r\n",
           "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
           "554 5.6.0 Error: message rejected\r\n");
    assert_int_equal(h->ended_len, 0);
    expect(h, "QUIT\r\n", "221 2.0.0 Bye\r\n");
    assert_true(h->closed);
    assert_int_equal(h->last_code, 221);
    assert_int_equal(cmtp_smtps_state(h->s), CMTP_SMTPS_STATE_CLOSED);
    /* sticky */
    struct cmtp_smtps_event ev;
    size_t used;
    assert_int_equal(cmtp_smtps_feed(h->s, (const uint8_t *)"NOOP\r\n", 6, &used, &ev),
                     CMTP_SMTPS_CLOSE);
    assert_int_equal(used, 0);
    sh_free(h);
}

static void test_every_command(void **state)
{
    (void)state;
    struct sh *h = sh_default();
    drain(h);
    replies(h);
    expect(h, "MAIL FROM:<a@a.test>\r\n", "503 5.5.1 Error: send HELO/EHLO first\r\n");
    expect(h, "HELO\r\n", "501 5.5.4 Syntax: HELO hostname\r\n");
    expect(h, "helo old.a.test\r\n", "250 ingress.a.test\r\n");
    expect(h, "NOOP\r\n", "250 2.0.0 Ok\r\n");
    expect(h, "NOOP anything\r\n", "250 2.0.0 Ok\r\n");
    expect(h, "VRFY bob\r\n",
           "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n");
    expect(h, "HELP\r\n",
           "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY "
           "HELP STARTTLS\r\n");
    expect(h, "RSET\r\n", "250 2.0.0 Ok\r\n");
    expect(h, "RCPT TO:<b@b.test>\r\n", "503 5.5.1 Error: need MAIL command\r\n");
    expect(h, "DATA\r\n", "503 5.5.1 Error: need MAIL command\r\n");
    sh_free(h);

    h = ready();
    expect(h, "EXPN list\r\n", "502 5.5.1 Error: command not implemented\r\n");
    expect(h, "FOO\r\n", "500 5.5.2 Error: command not recognized\r\n");
    expect(h, "VRFY\r\n", "501 5.5.4 Syntax: VRFY address\r\n");
    expect(h, "STARTTLS\r\n", "502 5.5.1 Error: command not implemented\r\n");
    sh_free(h); /* 4 errors of 5 */

    h = ready();
    expect(h, "mail from: <a@a.test>\r\n", "250 2.1.0 Ok\r\n"); /* SP after the colon */
    expect(h, "MAIL FROM:<a@a.test>\r\n", "503 5.5.1 Error: nested MAIL command\r\n");
    expect(h, "DATA\r\n", "503 5.5.1 Error: need RCPT command\r\n");
    expect(h, "RCPT TO:<b@b.test> NOTIFY=NEVER\r\n", "555 5.5.4 Error: unsupported parameter\r\n");
    expect(h, "RCPT TO:<>\r\n", "501 5.1.3 Bad recipient address syntax\r\n");
    expect(h, "RCPT TO:<@relay.test,@r2.test:b@b.test>\r\n", "250 2.1.5 Ok\r\n"); /* route */
    assert_int_equal(h->rcpts, 1);
    /* RSET in a transaction abandons it */
    expect(h, "RSET\r\n", "250 2.0.0 Ok\r\n");
    assert_int_equal(h->resets, 1);
    assert_int_equal(h->last_code, 250);
    sh_free(h);

    h = ready();
    expect(h, "MAIL FROM:<a@a.test> FOO=1\r\n", "555 5.5.4 Error: unsupported parameter\r\n");
    expect(h, "MAIL FROM:<a@a.test> BODY=BINARYMIME\r\n",
           "555 5.5.4 Error: BINARYMIME is not supported\r\n");
    expect(h, "MAIL FROM:<a@a.test> BODY=9BIT\r\n", "501 5.5.4 Error: bad BODY\r\n");
    expect(h, "MAIL FROM:<a@a.test> SIZE=1x\r\n", "501 5.5.4 Error: bad SIZE\r\n");
    sh_free(h);

    h = ready();
    expect(h, "MAIL FROM:<a@a.test> SIZE=1 SIZE=2\r\n", "501 5.5.4 Error: bad parameters\r\n");
    expect(h, "MAIL FROM:<a@a.test> SMTPUTF8=yes\r\n",
           "501 5.5.4 Error: SMTPUTF8 takes no value\r\n");
    expect(h, "MAIL TO:<a@a.test>\r\n", "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
    expect(h, "MAIL FROM:a@a.test\r\n", "501 5.1.7 Bad sender address syntax\r\n");
    sh_free(h);

    h = ready();
    /* refusals that are not protocol errors */
    expect(h, "MAIL FROM:<a@a.test> SIZE=1001\r\n",
           "552 5.3.4 Error: message size exceeds fixed limit\r\n");
    expect(h, "MAIL FROM:<a@a.test> SIZE=00000000000000000000\r\n", "250 2.1.0 Ok\r\n");
    expect(h, "RSET\r\n", "250 2.0.0 Ok\r\n");
    expect(h, "MAIL FROM:<a@a.test> SIZE=99999999999999999999\r\n",
           "552 5.3.4 Error: message size exceeds fixed limit\r\n");
    h->mail_answer = CMTP_SMTPS_MAIL_TEMPFAIL;
    expect(h, "MAIL FROM:<a@a.test>\r\n", "451 4.3.0 Error: try again later\r\n");
    h->mail_answer = CMTP_SMTPS_MAIL_TOO_BIG;
    expect(h, "MAIL FROM:<a@a.test>\r\n", "552 5.3.4 Error: message size exceeds limit\r\n");
    h->mail_answer = CMTP_SMTPS_MAIL_REFUSED;
    expect(h, "MAIL FROM:<a@a.test>\r\n", "550 5.7.1 Error: sender rejected\r\n");
    h->mail_answer = CMTP_SMTPS_MAIL_OK;
    expect(h, "MAIL FROM:<a@a.test>\r\nRCPT TO:<nobody@b.test>\r\nDATA\r\n",
           "250 2.1.0 Ok\r\n550 5.1.1 Error: no such mailbox\r\n"
           "554 5.5.1 Error: no valid recipients\r\n");
    /* EHLO in a transaction abandons it */
    cli(h, "EHLO again.a.test\r\n");
    assert_string_equal(replies(h), EHLO_REPLY);
    assert_int_equal(h->resets, 2);
    expect(h, "QUIT now\r\n", "501 5.5.4 Syntax: QUIT\r\n");
    expect(h, "DATA x\r\n", "501 5.5.4 Syntax: DATA\r\n");
    expect(h, "RSET x\r\n", "501 5.5.4 Syntax: RSET\r\n");
    sh_free(h);
}

/* session_bytes builds a whole session with |body_wire| as the DATA section. */
static size_t session_bytes(char *out, const char *wire, size_t wire_len)
{
    static const char head[] =
        "EHLO x.a.test\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n";
    static const char tail[] = "NOOP\r\nQUIT\r\n";
    size_t k = 0;
    memcpy(out, head, sizeof(head) - 1);
    k = sizeof(head) - 1;
    memcpy(out + k, wire, wire_len);
    k += wire_len;
    memcpy(out + k, tail, sizeof(tail) - 1);
    return k + sizeof(tail) - 1;
}

/* run_split feeds |sess| cut at |cut| (then whole pieces) or with |step|, and returns the
 * server's replies and body in |h|. */
static struct sh *run_split(const char *sess, size_t n, size_t cut, size_t step)
{
    struct cmtp_smtps_config cfg = {.host = "ingress.a.test", .size_max = 100000};
    struct sh *h = sh_new(&cfg);
    if (step > 0) {
        cli_n(h, sess, n, step);
    } else {
        cli_n(h, sess, cut, 0);
        if (!h->closed)
            cli_n(h, sess + cut, n - cut, 0);
    }
    return h;
}

static void check_data_splits(const char *wire, size_t wire_len, const char *want, size_t want_len,
                              uint64_t bare_lf)
{
    static char sess[8192];
    size_t n = session_bytes(sess, wire, wire_len);
    struct sh *whole = run_split(sess, n, n, 0);
    assert_int_equal(whole->ends, 1);
    assert_int_equal(whole->ended_len, want_len);
    assert_memory_equal(whole->ended_body, want, want_len);
    assert_int_equal(whole->last_txn.bare_lf, bare_lf);
    assert_true(whole->closed);
    for (size_t cut = 0; cut <= n; cut++) {
        struct sh *h = run_split(sess, n, cut, 0);
        assert_int_equal(h->ends, 1);
        assert_int_equal(h->ended_len, want_len);
        assert_memory_equal(h->ended_body, want, want_len);
        assert_string_equal(h->out, whole->out);
        sh_free(h);
    }
    for (size_t step = 1; step <= 3; step++) {
        struct sh *h = run_split(sess, n, 0, step);
        assert_int_equal(h->ended_len, want_len);
        assert_memory_equal(h->ended_body, want, want_len);
        assert_string_equal(h->out, whole->out);
        sh_free(h);
    }
    sh_free(whole);
}

#define CHECK_DATA(wire, want, lf)                                                                 \
    check_data_splits(wire, sizeof(wire) - 1, want, sizeof(want) - 1, lf)

static void test_data_every_split(void **state)
{
    (void)state;
    CHECK_DATA(".\r\n", "", 0);
    CHECK_DATA("a\r\n.\r\n", "a\r\n", 0);
    CHECK_DATA("..\r\n.\r\n", ".\r\n", 0);
    CHECK_DATA("...x\r\n.\r\n", "..x\r\n", 0);
    /* Bare LF and CR never end a line for the dot rules and are kept. */
    CHECK_DATA("a\n.\nb\r.\rc\r\n..d\r\n.\r\n", "a\n.\nb\r.\rc\r\n.d\r\n", 2);
    CHECK_DATA("\n.\r\n.\r\n", "\n.\r\n", 1);
    /* A leading dot then CR then not LF: the dot goes, the CR stays. */
    CHECK_DATA(".\rX\r\n.\r\n", "\rX\r\n", 0);
    CHECK_DATA(".\r\r\n.\r\n", "\r\r\n", 0);
    CHECK_DATA(".x\r\n.\n\r\n.\r\n", "x\r\n\n\r\n", 1);
    CHECK_DATA("\0.\0\r\n.\r\n", "\0.\0\r\n", 0);
    CHECK_DATA("x\r\n\r\n.\r\n", "x\r\n\r\n", 0);
}

static void test_smuggling(void **state)
{
    (void)state;
    /* Every "almost end" is body: one message, the fake commands inside it. */
    static const char wire[] = "a\n.\nMAIL FROM:<evil@x.test>\r\n"
                               "b\r\n.\nRCPT TO:<v@b.test>\r\n"
                               "c\n.\r\nDATA\r\n"
                               "d\r.\r\nQUIT\r\n"
                               ".\r\n";
    static char sess[1024];
    size_t n = session_bytes(sess, wire, sizeof(wire) - 1);
    struct sh *h = run_split(sess, n, n, 0);
    assert_int_equal(h->mails, 1);
    assert_int_equal(h->rcpts, 1);
    assert_int_equal(h->ends, 1);
    /* the dot that starts a line after CRLF is unstuffed, even before a bare LF */
    static const char want[] = "a\n.\nMAIL FROM:<evil@x.test>\r\n"
                               "b\r\n\nRCPT TO:<v@b.test>\r\n"
                               "c\n.\r\nDATA\r\n"
                               "d\r.\r\nQUIT\r\n";
    assert_int_equal(h->ended_len, sizeof(want) - 1);
    assert_memory_equal(h->ended_body, want, sizeof(want) - 1);
    assert_true(h->closed);
    sh_free(h);
}

static void test_encoder_roundtrip(void **state)
{
    (void)state;
    /* Any body through core/dotstuff arrives as its canonical form. */
    uint32_t seed = 4242;
    static const uint8_t alpha[] = {'.', '\r', '\n', 'a', 0, 0xff, 'M'};
    for (int iter = 0; iter < 300; iter++) {
        uint8_t body[300], wire[700], want[700];
        char sess[2000];
        size_t n = 0;
        seed = seed * 1103515245u + 12345u;
        size_t len = (seed >> 8) % sizeof(body);
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            body[i] = alpha[(seed >> 16) % sizeof(alpha)];
        }
        struct cmtp_dotstuff d;
        size_t used;
        cmtp_dotstuff_init(&d);
        n = cmtp_dotstuff_encode(&d, body, len, &used, wire, sizeof(wire));
        assert_int_equal(used, len);
        n += (size_t)cmtp_dotstuff_finish(&d, wire + n, sizeof(wire) - n);
        size_t wn = canon(want, body, len);
        size_t sn = session_bytes(sess, (const char *)wire, n);
        struct sh *h = run_split(sess, sn, (seed >> 4) % sn, 0);
        assert_int_equal(h->ends, 1);
        assert_int_equal(h->ended_len, wn);
        if (wn > 0)
            assert_memory_equal(h->ended_body, want, wn);
        assert_int_equal(h->last_txn.bare_lf, 0);
        sh_free(h);
    }
}

static void test_bdat(void **state)
{
    (void)state;
    struct sh *h = ready();
    expect(h, "BDAT 3\r\nabc", "503 5.5.1 Error: need MAIL command\r\n"); /* data still read */
    expect(h, "MAIL FROM:<a@a.test>\r\nBDAT 2\r\nxy",
           "250 2.1.0 Ok\r\n503 5.5.1 Error: need RCPT command\r\n");
    expect(h, "RCPT TO:<nobody@b.test>\r\nBDAT 2\r\nxy",
           "550 5.1.1 Error: no such mailbox\r\n554 5.5.1 Error: no valid recipients\r\n");
    expect(h, "RCPT TO:<b@b.test>\r\nBDAT 5\r\n.\r\n\r\n",
           "250 2.1.5 Ok\r\n250 2.0.0 Ok: 5 octets received\r\n");
    assert_int_equal(cmtp_smtps_state(h->s), CMTP_SMTPS_STATE_DATA);
    expect(h, "RCPT TO:<c@b.test>\r\n", "503 5.5.1 Error: RCPT after BDAT\r\n");
    expect(h, "DATA\r\n", "503 5.5.1 Error: DATA after BDAT\r\n");
    expect(h, "BDAT 0\r\n", "250 2.0.0 Ok: 0 octets received\r\n");
    expect(h, "BDAT 4 last\r\nQUIT", "250 2.0.0 Ok: queued as Q1.x-y_z\r\n");
    assert_int_equal(h->ends, 1);
    assert_true(h->last_txn.chunking);
    assert_int_equal(h->ended_len, 9);
    assert_memory_equal(h->ended_body, ".\r\n\r\nQUIT", 9);
    /* BDAT 0 LAST ends a message too, and BDAT over the limit is refused at LAST */
    expect(h, "MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nBDAT 0 LAST\r\n",
           "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as Q1.x-y_z\r\n");
    assert_int_equal(h->ends, 2);
    assert_int_equal(h->ended_len, 0);
    char big[1200];
    int k =
        snprintf(big, sizeof(big), "MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nBDAT 600\r\n");
    memset(big + k, 'x', 600);
    k += 600;
    k += snprintf(big + k, sizeof(big) - (size_t)k, "BDAT 401\r\n");
    memset(big + k, 'y', 401);
    k += 401;
    k += snprintf(big + k, sizeof(big) - (size_t)k, "BDAT 1 LAST\r\nz");
    cli_n(h, big, (size_t)k, 0);
    assert_string_equal(replies(h),
                        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: 600 octets "
                        "received\r\n552 5.3.4 Error: message size exceeds fixed "
                        "limit\r\n552 5.3.4 Error: message size exceeds fixed limit\r\n");
    assert_int_equal(h->ends, 2);
    assert_int_equal(h->resets, 1);
    assert_int_equal(h->last_code, 552);
    assert_false(cmtp_smtps_in_transaction(h->s));
    /* a BDAT whose size cannot be read loses the stream: 501 and close */
    expect(h, "BDAT x\r\n", "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
    assert_true(h->closed);
    sh_free(h);

    /* BDAT split at every octet gives the same replies and body. */
    static const char sess[] = "EHLO x\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\n"
                               "BDAT 7\r\n\r\n.\r\nab\r\nBDAT 3 LAST\r\n\n.\nQUIT\r\n";
    size_t n = sizeof(sess) - 1;
    struct sh *w = run_split(sess, n, n, 0);
    assert_int_equal(w->ends, 1);
    assert_int_equal(w->ended_len, 10);
    assert_memory_equal(w->ended_body, "\r\n.\r\nab\n.\n", 10);
    for (size_t cut = 0; cut <= n; cut++) {
        struct sh *x = run_split(sess, n, cut, 0);
        assert_string_equal(x->out, w->out);
        assert_int_equal(x->ended_len, 10);
        assert_memory_equal(x->ended_body, w->ended_body, 10);
        sh_free(x);
    }
    sh_free(w);
}

static void test_size_limit(void **state)
{
    (void)state;
    /* exactly size_max octets pass; one more is refused at the end, with RESET */
    for (int over = 0; over < 2; over++) {
        struct sh *h = ready();
        expect(h, "MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n",
               "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
        char data[1200];
        size_t n = 998 + (size_t)over;
        memset(data, 'x', n);
        memcpy(data + n, "\r\n.\r\n", 5);
        /* feed in small pieces: the limit is enforced while streaming */
        cli_n(h, data, n + 5, 97);
        if (over) {
            assert_string_equal(replies(h),
                                "552 5.3.4 Error: message size exceeds fixed limit\r\n");
            assert_int_equal(h->ends, 0);
            assert_int_equal(h->resets, 1);
            assert_int_equal(h->last_code, 552);
            assert_true(h->body_len == 0);
        } else {
            assert_string_equal(replies(h), "250 2.0.0 Ok: queued as Q1.x-y_z\r\n");
            assert_int_equal(h->ended_len, 1000);
        }
        /* the session goes on */
        expect(h, "NOOP\r\n", "250 2.0.0 Ok\r\n");
        sh_free(h);
    }
    /* over the limit, the octets passed on do not depend on how the input was split: exactly
     * up to the limit, then nothing (found by fuzz_smtps) */
    static const char sess[] = "EHLO x\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n"
                               "abc\r\n..defgh\r\n.\r\nQUIT\r\n";
    struct cmtp_smtps_config small = {.host = "ingress.a.test", .size_max = 7};
    for (size_t cut = 0; cut < sizeof(sess) - 1; cut++) {
        struct sh *x = sh_new(&small);
        cli_n(x, sess, cut, 0);
        size_t seen = x->body_len;
        uint8_t first[16];
        if (seen > 0)
            memcpy(first, x->body, seen < 16 ? seen : 16);
        cli_n(x, sess + cut, sizeof(sess) - 1 - cut, 0);
        assert_int_equal(x->resets, 1);
        assert_int_equal(x->ends, 0);
        assert_non_null(strstr(x->out, "552 5.3.4"));
        /* body_len was cleared by RESET; what was seen before the cut is a prefix of the limit */
        assert_true(seen <= 7);
        assert_memory_equal(first, "abc\r\n.d", seen);
        assert_int_equal(x->body_total, 7);
        sh_free(x);
    }
    /* bare LF refused when configured */
    struct cmtp_smtps_config cfg = {.host = "ingress.a.test", .bare_lf_reject = true};
    struct sh *h = sh_new(&cfg);
    cli(h, "EHLO x\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\na\nb\r\n.\r\n");
    assert_non_null(strstr(h->out, "554 5.6.0 Error: bare <LF> received in message body\r\n"));
    assert_int_equal(h->ends, 0);
    assert_int_equal(h->resets, 1);
    sh_free(h);
    /* under bare_lf_reject the octets passed on before the body is discarded are the octets
     * before the first bare LF, wherever the input was cut (found by fuzz_smtps) */
    static const char lsess[] = "EHLO x\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n"
                                "Subject: hi\r\n\r\n..dot\r\nx\n.\nbare\r.\r\n.\r\nQUIT\r\n";
    static const char lwant[] = "Subject: hi\r\n\r\n.dot\r\nx";
    for (size_t cut = 0; cut < sizeof(lsess) - 1; cut++) {
        struct sh *x = sh_new(&cfg);
        cli_n(x, lsess, cut, 0);
        cli_n(x, lsess + cut, sizeof(lsess) - 1 - cut, 0);
        assert_int_equal(x->resets, 1);
        assert_int_equal(x->ends, 0);
        assert_non_null(strstr(x->out, "554 5.6.0"));
        assert_int_equal(x->body_total, sizeof(lwant) - 1);
        sh_free(x);
    }
}

static void test_error_counting(void **state)
{
    (void)state;
    /* errors_max 5: the fifth error is answered 421 and closes */
    struct sh *h = ready();
    expect(h, "X1\r\n", "500 5.5.2 Error: command not recognized\r\n");
    expect(h, "X2\r\n", "500 5.5.2 Error: command not recognized\r\n");
    expect(h, "MAIL FROM:<bad\r\n", "501 5.1.7 Bad sender address syntax\r\n");
    expect(h, "NOOP\r\n", "250 2.0.0 Ok\r\n"); /* a success does not reset the count */
    expect(h, "X4\n", "500 5.5.2 Error: bare <LF> received\r\n");
    expect(h, "X5\r\n", "421 4.7.0 ingress.a.test Error: too many errors\r\n");
    assert_true(h->closed);
    assert_int_equal(h->last_code, 421);
    sh_free(h);

    /* RCPTs and DATA pipelined behind a refused MAIL do not count */
    h = ready();
    h->mail_answer = CMTP_SMTPS_MAIL_REFUSED;
    for (int i = 0; i < 3; i++) {
        cli(h, "MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nRCPT TO:<c@b.test>\r\n"
               "RCPT TO:<d@b.test>\r\nDATA\r\nBDAT 1\r\nx");
    }
    assert_false(h->closed);
    h->mail_answer = CMTP_SMTPS_MAIL_OK;
    /* caller refusals, 452 and 554 do not count either */
    struct cmtp_smtps_config cfg = {.host = "ingress.a.test", .rcpt_max = 2, .errors_max = 2};
    struct sh *g = sh_new(&cfg);
    cli(g, "EHLO x\r\nMAIL FROM:<a@a.test>\r\n");
    for (int i = 0; i < 5; i++)
        cli(g, "RCPT TO:<nobody@b.test>\r\n");
    cli(g, "RCPT TO:<b@b.test>\r\nRCPT TO:<c@b.test>\r\nRCPT TO:<d@b.test>\r\n");
    assert_non_null(strstr(g->out, "452 4.5.3 Error: too many recipients\r\n"));
    assert_false(g->closed);
    cli(g, "DATA\r\nx\r\n.\r\n");
    assert_int_equal(g->end_rcpts, 2);
    sh_free(g);
    sh_free(h);

    /* an over-long line is refused, skipped, and the next command works */
    h = ready();
    size_t n = 5000;
    char *longl = malloc(n + 20);
    assert_non_null(longl);
    memcpy(longl, "NOOP ", 5);
    memset(longl + 5, 'a', n - 5);
    memcpy(longl + n, "\r\nNOOP\r\n", 9);
    cli(h, longl);
    assert_string_equal(replies(h), "500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n");
    /* the longest accepted line: 4094 octets and CRLF */
    memset(longl + 5, 'a', CMTP_SMTPS_LINE_MAX - 2 - 5);
    memcpy(longl + CMTP_SMTPS_LINE_MAX - 2, "\r\n", 3);
    expect(h, longl, "250 2.0.0 Ok\r\n");
    free(longl);
    sh_free(h);
}

static void test_starttls(void **state)
{
    (void)state;
    struct cmtp_smtps_config cfg = {
        .host = "ingress.a.test", .tls_available = true, .tls_required = true};
    struct sh *h = sh_new(&cfg);
    h->auto_tls = false;
    cli(h, "EHLO x\r\n");
    assert_non_null(strstr(h->out, "250-STARTTLS\r\n"));
    replies(h);
    expect(h, "MAIL FROM:<a@a.test>\r\n", "530 5.7.0 Must issue a STARTTLS command first\r\n");
    expect(h, "STARTTLS now\r\n", "501 5.5.4 Syntax: STARTTLS\r\n");
    expect(h, "STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n");
    assert_int_equal(h->starttls, 1);
    assert_int_equal(cmtp_smtps_state(h->s), CMTP_SMTPS_STATE_WAIT);
    struct cmtp_smtps_event ev;
    size_t used;
    assert_int_equal(cmtp_smtps_feed(h->s, (const uint8_t *)"EHLO", 4, &used, &ev),
                     CMTP_SMTPS_BLOCKED);
    assert_int_equal(used, 0);
    assert_int_equal(cmtp_smtps_tls_reset(h->s), 0);
    assert_int_equal(cmtp_smtps_tls_reset(h->s), -EINVAL);
    assert_true(cmtp_smtps_tls_active(h->s));
    assert_string_equal(cmtp_smtps_helo(h->s), "");
    /* everything learned before is forgotten */
    expect(h, "MAIL FROM:<a@a.test>\r\n", "503 5.5.1 Error: send HELO/EHLO first\r\n");
    cli(h, "EHLO x\r\n");
    assert_null(strstr(replies(h), "STARTTLS"));
    expect(h, "STARTTLS\r\n", "503 5.5.1 Error: TLS already active\r\n");
    expect(h, "MAIL FROM:<a@a.test>\r\n", "250 2.1.0 Ok\r\n");
    sh_free(h);

    /* plaintext pipelined behind STARTTLS: injection, refused and closed */
    cfg.tls_required = false;
    h = sh_new(&cfg);
    cli(h, "EHLO x\r\n");
    replies(h);
    expect(h, "STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n",
           "554 5.5.1 Error: data after STARTTLS\r\n");
    assert_int_equal(h->starttls, 0);
    assert_true(h->closed);
    sh_free(h);

    /* STARTTLS inside a transaction */
    h = sh_new(&cfg);
    cli(h, "EHLO x\r\nMAIL FROM:<a@a.test>\r\n");
    replies(h);
    expect(h, "STARTTLS\r\n", "503 5.5.1 Error: STARTTLS inside a transaction\r\n");
    sh_free(h);
}

static void test_policy_param(void **state)
{
    (void)state;
    struct sh *h = ready();
    expect(h, "MAIL FROM:<a@a.test> CMTP-POLICY=relay:domain,fallback:smtp-tls,hops:3\r\n",
           "250 2.1.0 Ok\r\n");
    assert_int_equal(h->last_txn.policy.relay, CMTP_RELAY_DOMAIN);
    assert_int_equal(h->last_txn.policy.fallback, CMTP_FALLBACK_SMTP_TLS);
    assert_int_equal(h->last_txn.policy.hops, 3);
    assert_int_equal(h->last_txn.policy_set,
                     CMTP_SMTPS_POLICY_RELAY | CMTP_SMTPS_POLICY_FALLBACK | CMTP_SMTPS_POLICY_HOPS);
    expect(h, "RSET\r\n", "250 2.0.0 Ok\r\n");
    expect(h, "MAIL FROM:<a@a.test> cmtp-policy=HOPS:0\r\n", "250 2.1.0 Ok\r\n");
    assert_int_equal(h->last_txn.policy_set, CMTP_SMTPS_POLICY_HOPS);
    assert_int_equal(h->last_txn.policy.hops, 0);
    assert_int_equal(h->last_txn.policy.relay, CMTP_RELAY_NONE); /* default */
    assert_int_equal(h->last_txn.policy.fallback, CMTP_FALLBACK_NONE);
    expect(h, "RSET\r\n", "250 2.0.0 Ok\r\n");
    expect(h, "MAIL FROM:<a@a.test>\r\n", "250 2.1.0 Ok\r\n");
    assert_int_equal(h->last_txn.policy_set, 0);
    assert_int_equal(h->last_txn.policy.hops, CMTP_HOPS_DEFAULT);
    sh_free(h);

    static const char *const bad[] = {
        "",
        "relay",
        "relay:",
        "relay:bogus",
        "hops:33",
        "hops:-1",
        "hops:01",
        "relay:any,",
        ",relay:any",
        "relay:any,relay:none",
        "color:blue",
        "relay=any",
        "relay:any;hops:1",
        "fallback:smtps",
        "hops:99999999999999999999999",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct cmtp_policy p;
        unsigned set = 77;
        cmtp_policy_init(&p);
        p.hops = 5;
        if (cmtp_smtps_policy_parse(&p, &set, bad[i], strlen(bad[i])) != -EINVAL)
            fail_msg("accepted [%s]", bad[i]);
        assert_int_equal(set, 77);
        assert_int_equal(p.hops, 5); /* unchanged */
    }
    struct cmtp_policy p;
    unsigned set;
    cmtp_policy_init(&p);
    assert_int_equal(cmtp_smtps_policy_parse(&p, &set, "fallback:smtp-verified,relay:any", 32), 0);
    assert_int_equal(set, CMTP_SMTPS_POLICY_RELAY | CMTP_SMTPS_POLICY_FALLBACK);
    assert_int_equal(p.relay, CMTP_RELAY_ANY);
    assert_int_equal(p.fallback, CMTP_FALLBACK_SMTP_VERIFIED);
    char longv[CMTP_SMTPS_POLICY_MAX + 2];
    memset(longv, 'a', sizeof(longv));
    assert_int_equal(cmtp_smtps_policy_parse(&p, &set, longv, sizeof(longv)), -EINVAL);

    h = ready();
    expect(h, "MAIL FROM:<a@a.test> CMTP-POLICY=relay:sometimes\r\n",
           "501 5.5.4 Error: bad CMTP-POLICY\r\n");
    expect(h, "MAIL FROM:<a@a.test> CMTP-POLICY\r\n", "501 5.5.4 Error: bad CMTP-POLICY\r\n");
    sh_free(h);
}

static void test_hostile_input(void **state)
{
    (void)state;
    struct sh *h = ready();
    /* CR, NUL and other controls inside a command line */
    expect(h, "MAIL FROM:<a\r@a.test>\r\n", "501 5.5.2 Error: invalid characters in command\r\n");
    cli_n(h, "MAIL FROM:<a\0@a.test>\r\n", 23, 0);
    assert_string_equal(replies(h), "501 5.5.2 Error: invalid characters in command\r\n");
    expect(h, "RSET\r\n", "250 2.0.0 Ok\r\n");
    sh_free(h);

    h = ready();
    /* a LF-terminated command is never executed */
    expect(h, "MAIL FROM:<a@a.test>\n", "500 5.5.2 Error: bare <LF> received\r\n");
    assert_int_equal(h->mails, 0);
    /* specials refused by the address parser; shell-looking atext stored inert */
    expect(h, "MAIL FROM:<$(reboot)@a.test>\r\n", "501 5.1.7 Bad sender address syntax\r\n");
    expect(h, "MAIL FROM:<a;b@a.test>\r\n", "501 5.1.7 Bad sender address syntax\r\n");
    expect(h, "MAIL FROM:<${run{x}}@a.test>\r\n", "250 2.1.0 Ok\r\n");
    assert_string_equal(h->last_txn.from.local, "${run{x}}");
    sh_free(h);

    h = ready();
    /* UTF-8 needs SMTPUTF8; invalid UTF-8 is refused even then */
    expect(h, "MAIL FROM:<jos\xc3\xa9@a.test>\r\n",
           "553 5.6.7 Error: SMTPUTF8 is required for this address\r\n");
    expect(h, "MAIL FROM:<jos\xc3@a.test> SMTPUTF8\r\n", "501 5.1.7 Bad sender address syntax\r\n");
    expect(h, "MAIL FROM:<jos\xc3\xa9@a.test> SMTPUTF8\r\n", "250 2.1.0 Ok\r\n");
    assert_true(h->last_txn.smtputf8);
    expect(h, "RCPT TO:<m\xc3\xbcller@b\xc3\xbc.test>\r\n", "250 2.1.5 Ok\r\n");
    expect(h, "DATA\r\n.\r\n",
           "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as Q1.x-y_z\r\n");
    assert_string_equal(h->end_first_rcpt, "m\xc3\xbcller@xn--b-eha.test");
    sh_free(h);

    h = ready();
    /* an over-long address inside an acceptable line */
    char line[1200] = "MAIL FROM:<";
    memset(line + 11, 'a', 1000);
    strcpy(line + 1011, "@a.test>\r\n");
    expect(h, line, "501 5.1.7 Bad sender address syntax\r\n");
    sh_free(h);
}

static void test_limits_and_close(void **state)
{
    (void)state;
    /* txn_max: the MAIL past it closes */
    struct cmtp_smtps_config cfg = {.host = "ingress.a.test", .txn_max = 1};
    struct sh *h = sh_new(&cfg);
    cli(h, "EHLO x\r\nMAIL FROM:<a@a.test>\r\nRSET\r\n");
    replies(h);
    expect(h, "MAIL FROM:<a@a.test>\r\n", "421 4.7.0 ingress.a.test Error: too many messages\r\n");
    assert_true(h->closed);
    sh_free(h);

    /* refused connection */
    h = sh_default();
    struct cmtp_smtps *s = cmtp_smtps_new(&(struct cmtp_smtps_config){.host = "x.a.test"});
    assert_int_equal(cmtp_smtps_refuse(s), CMTP_SMTPS_CLOSE);
    const uint8_t *p;
    size_t n = cmtp_smtps_output(s, &p);
    assert_int_equal(n, strlen("554 5.7.1 x.a.test Access denied\r\n"));
    assert_memory_equal(p, "554 5.7.1 x.a.test Access denied\r\n", n);
    cmtp_smtps_free(s);

    /* shutdown between commands closes at once; inside DATA after the body */
    drain(h);
    replies(h);
    cli(h, "EHLO x\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\nab");
    replies(h);
    assert_int_equal(cmtp_smtps_shutdown(h->s), CMTP_SMTPS_NEED_INPUT);
    cli(h, "c\r\n.\r\nNOOP\r\n");
    assert_string_equal(replies(h), "250 2.0.0 Ok: queued as Q1.x-y_z\r\n"
                                    "421 4.3.2 ingress.a.test Service shutting down\r\n");
    assert_true(h->closed);
    assert_int_equal(cmtp_smtps_shutdown(h->s), CMTP_SMTPS_CLOSE);
    sh_free(h);
    h = ready();
    assert_int_equal(cmtp_smtps_shutdown(h->s), CMTP_SMTPS_CLOSE);
    drain(h);
    assert_string_equal(replies(h), "421 4.3.2 ingress.a.test Service shutting down\r\n");
    sh_free(h);
    /* timeout */
    h = ready();
    cli(h, "NO");
    assert_int_equal(cmtp_smtps_state(h->s), CMTP_SMTPS_STATE_COMMAND);
    assert_int_equal(cmtp_smtps_timeout(h->s), CMTP_SMTPS_CLOSE);
    drain(h);
    assert_string_equal(replies(h), "421 4.4.2 ingress.a.test Error: timeout exceeded\r\n");
    sh_free(h);

    /* bad configurations */
    assert_null(cmtp_smtps_new(NULL));
    assert_null(cmtp_smtps_new(&(struct cmtp_smtps_config){.host = "bad host"}));
    assert_null(cmtp_smtps_new(
        &(struct cmtp_smtps_config){.host = "x.test", .size_max = CMTP_SIZE_MAX_HARD + 1}));
    assert_null(cmtp_smtps_new(
        &(struct cmtp_smtps_config){.host = "x.test", .rcpt_max = CMTP_RCPT_MAX_HARD + 1}));
    cmtp_smtps_free(NULL);
    /* answers nobody asked for */
    h = ready();
    assert_int_equal(cmtp_smtps_mail_reply(h->s, CMTP_SMTPS_MAIL_OK), -EINVAL);
    assert_int_equal(cmtp_smtps_rcpt_reply(h->s, CMTP_SMTPS_RCPT_OK), -EINVAL);
    struct cmtp_smtps_end_answer a = {.result = CMTP_SMTPS_END_ACCEPTED, .qid = "q"};
    assert_int_equal(cmtp_smtps_end_reply(h->s, &a), -EINVAL);
    sh_free(h);
}

static void test_pipelined_flush(void **state)
{
    (void)state;
    /* 2000 pipelined NOOPs in one input: the reply buffer never overflows */
    struct sh *h = ready();
    size_t n = 2000 * 6;
    char *in = malloc(n + 1);
    assert_non_null(in);
    for (size_t i = 0; i < 2000; i++)
        memcpy(in + i * 6, "NOOP\r\n", 6);
    in[n] = '\0';
    cli(h, in);
    assert_int_equal(strlen(replies(h)), 2000 * strlen("250 2.0.0 Ok\r\n"));
    free(in);
    sh_free(h);
}

/* ---- the SMTP client and server in memory ---- */

static uint32_t rng(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

struct pipe {
    uint8_t buf[1 << 17];
    size_t len;
};

static void test_client_server_in_memory(void **state)
{
    (void)state;
    uint32_t seed = 99;
    int delivered = 0, refused = 0;
    static const uint8_t alpha[] = {'.', '\r', '\n', 'x', 0, 0xe9, ' '};
    static struct pipe c2s, s2c;
    for (int iter = 0; iter < 150; iter++) {
        struct cmtp_smtps_config scfg = {.host = "ingress.a.test", .size_max = 100000};
        struct sh *h = sh_new(&scfg);
        struct cmtp_smtpc_config ccfg = {
            .no_pipelining = rng(&seed) % 2, .no_chunking = rng(&seed) % 2, .helo = "c.a.test"};
        struct cmtp_smtpc *c = cmtp_smtpc_new(&ccfg);
        assert_non_null(c);
        uint8_t body[2000];
        size_t blen = rng(&seed) % sizeof(body);
        for (size_t i = 0; i < blen; i++)
            body[i] = alpha[rng(&seed) % sizeof(alpha)];
        struct cmtp_addr from, rcpts[5];
        static const char *const names[] = {"<a@b.test>", "<nobody@b.test>", "<c@b.test>",
                                            "<temp@b.test>", "<far@b.test>"};
        size_t nr = 1 + rng(&seed) % 5;
        assert_int_equal(cmtp_addr_parse(&from, "<s@a.test>", 10, 0), CMTP_ADDR_OK);
        for (size_t i = 0; i < nr; i++)
            assert_int_equal(cmtp_addr_parse(&rcpts[i], names[i], strlen(names[i]), 0),
                             CMTP_ADDR_OK);
        struct cmtp_smtpc_msg msg = {
            .from = &from, .rcpts = rcpts, .nrcpt = nr, .size = blen, .eight_bit = true};
        assert_int_equal(cmtp_smtpc_begin(c, &msg), 0);
        size_t body_off = 0;
        bool in_body = false, done = false, closed = false;
        int results = 0;
        c2s.len = s2c.len = 0;
        for (int round = 0; round < 10000 && !closed; round++) {
            /* server output -> client */
            drain(h);
            const char *rep = h->out + h->mark;
            size_t rn = h->out_len - h->mark;
            h->mark = h->out_len;
            memcpy(s2c.buf + s2c.len, rep, rn);
            s2c.len += rn;
            /* client consumes replies in random pieces */
            size_t off = 0;
            for (;;) {
                size_t piece = off < s2c.len ? 1 + rng(&seed) % (s2c.len - off) : 0;
                struct cmtp_smtpc_event ev;
                size_t used;
                enum cmtp_smtpc_ev e = cmtp_smtpc_feed(c, s2c.buf + off, piece, &used, &ev);
                off += used;
                if (e == CMTP_SMTPC_NEED_INPUT && off == s2c.len)
                    break;
                if (e == CMTP_SMTPC_RCPT_RESULT) {
                    results++;
                    if (ev.result == CMTP_SMTPC_DELIVERED)
                        delivered++;
                    else
                        refused++;
                    /* the server's rcpt answer decides */
                    bool ok = strncmp(rcpts[ev.rcpt_index].local, "nobody", 6) != 0 &&
                              strncmp(rcpts[ev.rcpt_index].local, "temp", 4) != 0 &&
                              strncmp(rcpts[ev.rcpt_index].local, "far", 3) != 0;
                    assert_int_equal(ev.result == CMTP_SMTPC_DELIVERED, ok);
                } else if (e == CMTP_SMTPC_BODY_READY) {
                    in_body = true;
                } else if (e == CMTP_SMTPC_DONE) {
                    done = true;
                    assert_int_equal(cmtp_smtpc_quit(c), 0);
                } else if (e == CMTP_SMTPC_CLOSED) {
                    closed = true;
                    break;
                } else if (e == CMTP_SMTPC_PROTOCOL_ERROR) {
                    fail_msg("protocol error %s", ev.status);
                }
            }
            memmove(s2c.buf, s2c.buf + off, s2c.len - off);
            s2c.len -= off;
            if (in_body) {
                size_t used;
                size_t step = 1 + rng(&seed) % 700;
                if (step > blen - body_off)
                    step = blen - body_off;
                assert_int_equal(cmtp_smtpc_body(c, body + body_off, step, &used), 0);
                body_off += used;
                if (body_off == blen && cmtp_smtpc_body_end(c) == 0)
                    in_body = false;
            }
            /* client output -> server */
            const uint8_t *p;
            size_t n = cmtp_smtpc_output(c, &p);
            size_t take = n == 0 ? 0 : 1 + rng(&seed) % n;
            memcpy(c2s.buf + c2s.len, p, take);
            c2s.len += take;
            cmtp_smtpc_output_consume(c, take);
            if (c2s.len > 0 && !h->closed) {
                cli_n(h, (const char *)c2s.buf, c2s.len, 1 + rng(&seed) % 50);
                c2s.len = 0;
            }
        }
        if (!(closed && done))
            fail_msg("iter %d: closed %d done %d state %d results %d server out [%s] in_body %d "
                     "body %zu/%zu",
                     iter, closed, done, (int)cmtp_smtpc_state(c), results, h->out, in_body,
                     body_off, blen);
        assert_int_equal(results, (int)nr);
        if (h->ends == 1) {
            uint8_t want[4100];
            size_t wn = canon(want, body, blen);
            /* BDAT (the server offers CHUNKING) leaves an unterminated last line so; DATA must
             * end it with CRLF. */
            if (!ccfg.no_chunking && blen > 0 && body[blen - 1] != '\r' && body[blen - 1] != '\n')
                wn -= 2;
            assert_int_equal(h->ended_len, wn);
            if (wn > 0)
                assert_memory_equal(h->ended_body, want, wn);
        }
        cmtp_smtpc_free(c);
        sh_free(h);
    }
    print_message("in-memory SMTP sessions: %d recipients delivered, %d refused\n", delivered,
                  refused);
    assert_true(delivered > 100);
    assert_true(refused > 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic_session),     cmocka_unit_test(test_every_command),
        cmocka_unit_test(test_data_every_split),  cmocka_unit_test(test_smuggling),
        cmocka_unit_test(test_encoder_roundtrip), cmocka_unit_test(test_bdat),
        cmocka_unit_test(test_size_limit),        cmocka_unit_test(test_error_counting),
        cmocka_unit_test(test_starttls),          cmocka_unit_test(test_policy_param),
        cmocka_unit_test(test_hostile_input),     cmocka_unit_test(test_limits_and_close),
        cmocka_unit_test(test_pipelined_flush),   cmocka_unit_test(test_client_server_in_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
