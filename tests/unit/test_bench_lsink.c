/* tests/unit/test_bench_lsink.c — the protocol machine of cmtp-lmtp-sink (bench/lmtp_sink.h):
 * replies to a pipelined LMTP session, one 250 per recipient after the final dot, the end of
 * data found across any split of the input, BDAT chunks (a "." line or a command inside one is
 * data), dot-stuffed lines, bounds (long lines, recipients,
 * output room), QUIT. Not the socket loop (tests/integration/test_conn_reuse.sh runs it). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/lmtp_sink.h"

/* feed_all feeds |in| in pieces of |step| octets (consuming output between calls) and appends
 * every reply to |out| (|cap| octets, NUL-terminated). */
static void feed_all(struct lsink *s, const char *in, size_t step, char *out, size_t cap)
{
    size_t len = strlen(in), off = 0, o = strlen(out);
    while (off < len || s->out_len > 0) {
        size_t n = len - off < step ? len - off : step;
        size_t used = lsink_feed(s, (const uint8_t *)in + off, n);
        off += used;
        assert_true(o + s->out_len < cap);
        memcpy(out + o, s->out, s->out_len);
        o += s->out_len;
        out[o] = '\0';
        lsink_consume(s, s->out_len);
        if (s->quit)
            break;
    }
}

static const char session[] = "LHLO client\r\n"
                              "MAIL FROM:<a@b.test>\r\nRCPT TO:<x@b.test>\r\nRCPT TO:<y@b.test>\r\n"
                              "DATA\r\n"
                              "Subject: s\r\n\r\n..stuffed\r\n.x\r\nline.\r\n.\r\n"
                              "MAIL FROM:<a@b.test>\r\nrcpt to:<z@b.test>\r\ndata\r\n"
                              "\r\n.\r\n"
                              "RSET\r\nNOOP\r\nQUIT\r\nMAIL FROM:<ignored@b.test>\r\n";

static const char replies[] = "220 sink LMTP ready\r\n"
                              "250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-CHUNKING\r\n"
                              "250 ENHANCEDSTATUSCODES\r\n"
                              "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"
                              "250 2.0.0 delivered\r\n250 2.0.0 delivered\r\n"
                              "250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"
                              "250 2.0.0 delivered\r\n"
                              "250 2.0.0 ok\r\n250 2.0.0 ok\r\n221 2.0.0 bye\r\n";

/* The whole session, at once and split at every size: the same replies and counts. */
/* any_split feeds the session |in| at once and split at many sizes: always the replies |want|,
 * 2 messages, 3 recipients, and the session ended by QUIT. */
static void any_split(const char *in, const char *want)
{
    static const size_t steps[] = {1, 2, 3, 5, 7, 13, 64, 4096};
    for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
        struct lsink *s = malloc(sizeof(*s));
        char out[4096] = "";
        assert_non_null(s);
        lsink_init(s);
        feed_all(s, in, steps[k], out, sizeof(out));
        assert_string_equal(out, want);
        assert_int_equal(s->messages, 2);
        assert_int_equal(s->recipients, 3);
        assert_true(s->quit);
        free(s);
    }
}

static void test_session_any_split(void **state)
{
    (void)state;
    any_split(session, replies);
}

/* Out-of-order commands and unknown verbs are refused; EHLO is not LMTP. */
static void test_refusals(void **state)
{
    (void)state;
    struct lsink *s = malloc(sizeof(*s));
    char out[2048] = "";
    assert_non_null(s);
    lsink_init(s);
    feed_all(s,
             "RCPT TO:<x@b.test>\r\nDATA\r\nMAIL FROM:<>\r\nMAIL FROM:<>\r\nDATA\r\n"
             "EHLO x\r\nMAILX\r\n",
             4096, out, sizeof(out));
    assert_string_equal(out, "220 sink LMTP ready\r\n"
                             "503 5.5.1 MAIL first\r\n503 5.5.1 no valid recipients\r\n"
                             "250 2.1.0 ok\r\n503 5.5.1 nested MAIL\r\n"
                             "503 5.5.1 no valid recipients\r\n"
                             "500 5.5.2 unknown command\r\n500 5.5.2 unknown command\r\n");
    assert_int_equal(s->messages, 0);
    free(s);
}

/* A command line longer than LSINK_LINE_MAX gets one 500 at its end; the next line works. */
static void test_long_line(void **state)
{
    (void)state;
    struct lsink *s = malloc(sizeof(*s));
    size_t n = LSINK_LINE_MAX * 3;
    char *in = malloc(n + 32), out[512] = "";
    assert_non_null(s);
    assert_non_null(in);
    memset(in, 'A', n);
    strcpy(in + n, "\r\nNOOP\r\n");
    lsink_init(s);
    feed_all(s, in, 1000, out, sizeof(out));
    assert_string_equal(out, "220 sink LMTP ready\r\n500 5.5.2 line too long\r\n250 2.0.0 ok\r\n");
    free(in);
    free(s);
}

/* Recipients beyond LSINK_RCPT_MAX get 452; the dot is answered for the accepted ones only,
 * and input waits while the replies do not fit. */
static void test_rcpt_bound_and_room(void **state)
{
    (void)state;
    struct lsink *s = malloc(sizeof(*s));
    size_t cap = (LSINK_RCPT_MAX + 8) * 40 + 256, len = 0;
    char *in = malloc(cap);
    assert_non_null(s);
    assert_non_null(in);
    len += (size_t)sprintf(in + len, "MAIL FROM:<a@b.test>\r\n");
    for (unsigned i = 0; i < LSINK_RCPT_MAX + 2; i++)
        len += (size_t)sprintf(in + len, "RCPT TO:<r%u@b.test>\r\n", i);
    len += (size_t)sprintf(in + len, "DATA\r\nbody\r\n.\r\n");
    lsink_init(s);
    lsink_consume(s, s->out_len);
    size_t used = lsink_feed(s, (const uint8_t *)in, len);
    /* Everything fits only after the output is consumed at least once. */
    size_t total = used, dots = 0, r452 = 0;
    char *seen = malloc(2 * LSINK_OUT_MAX * 4);
    size_t seen_len = 0;
    assert_non_null(seen);
    for (int guard = 0; guard < 100; guard++) {
        memcpy(seen + seen_len, s->out, s->out_len);
        seen_len += s->out_len;
        lsink_consume(s, s->out_len);
        if (total == len)
            break;
        total += lsink_feed(s, (const uint8_t *)in + total, len - total);
    }
    assert_int_equal(total, len);
    seen[seen_len] = '\0';
    for (char *p = seen; (p = strstr(p, "250 2.0.0 delivered")) != NULL; p++)
        dots++;
    for (char *p = seen; (p = strstr(p, "452 4.5.3")) != NULL; p++)
        r452++;
    assert_int_equal(dots, LSINK_RCPT_MAX);
    assert_int_equal(r452, 2);
    assert_int_equal(s->messages, 1);
    free(seen);
    free(in);
    free(s);
}

/* BDAT chunks (RFC 3030): counted octets, whatever they hold; the LAST one answered per
 * recipient, at any split. A chunk without a transaction is skipped and refused; a malformed
 * BDAT is refused. */
static void test_bdat(void **state)
{
    (void)state;
    static const char in[] = "LHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@b.test>\r\n"
                             "RCPT TO:<y@b.test>\r\nBDAT 9\r\n.\r\nQUIT\r\nBDAT 4 LAST\r\n\r\n.\r"
                             "MAIL FROM:<a@b.test>\r\nRCPT TO:<z@b.test>\r\nBDAT 0 LAST\r\n"
                             "BDAT 3 LAST\r\nxyzBDAT x\r\nBDAT 6 last\r\nRSET\r\nQUIT\r\n";
    static const char want[] = "220 sink LMTP ready\r\n"
                               "250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-CHUNKING\r\n"
                               "250 ENHANCEDSTATUSCODES\r\n"
                               "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n"
                               "250 2.0.0 chunk ok\r\n"
                               "250 2.0.0 delivered\r\n250 2.0.0 delivered\r\n"
                               "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 delivered\r\n"
                               "503 5.5.1 no valid recipients\r\n"
                               "501 5.5.4 syntax: BDAT <size> [LAST]\r\n"
                               "503 5.5.1 no valid recipients\r\n"
                               "221 2.0.0 bye\r\n";
    any_split(in, want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_any_split),
        cmocka_unit_test(test_bdat),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_long_line),
        cmocka_unit_test(test_rcpt_bound_and_room),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
