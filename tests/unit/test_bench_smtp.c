/* tests/unit/test_bench_smtp.c — cmtp-bench's SMTP reply reader: single and multi-line replies,
 * EHLO keywords, input split at every octet, malformed replies. Not the command sequencing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "bench/bench_smtp.h"

/* read_all feeds |s| in pieces of |step| octets and collects up to |max| replies. */
static size_t read_all(const char *s, size_t step, struct bench_smtp_reply *out, size_t max,
                       enum bench_smtp_rd *last)
{
    struct bench_smtp_reader r;
    size_t len = strlen(s), off = 0, n = 0;

    bench_smtp_reader_init(&r);
    *last = BENCH_SMTP_AGAIN;
    while (off < len) {
        size_t k = len - off < step ? len - off : step, used = 0, pos = 0;
        while (pos < k) {
            enum bench_smtp_rd rd =
                bench_smtp_read(&r, (const uint8_t *)s + off + pos, k - pos, &used, &out[n]);
            pos += used;
            *last = rd;
            if (rd == BENCH_SMTP_BAD)
                return n;
            if (rd == BENCH_SMTP_REPLY && n + 1 < max)
                n++;
            if (rd == BENCH_SMTP_AGAIN)
                assert_int_equal(pos, k);
        }
        off += k;
    }
    return n;
}

static void test_replies(void **state)
{
    (void)state;
    const char *in = "220 mx.example ESMTP Postfix\r\n"
                     "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n"
                     "250-8BITMIME\r\n250 SMTPUTF8\r\n"
                     "354 End data with <CR><LF>.<CR><LF>\r\n"
                     "250 2.0.0 Ok: queued as 4ABC\r\n"
                     "451\r\n";
    for (size_t step = 1; step <= strlen(in); step++) {
        struct bench_smtp_reply rep[8];
        enum bench_smtp_rd last;
        size_t n = read_all(in, step, rep, 8, &last);
        assert_int_equal(n, 5);
        assert_int_equal(rep[0].code, 220);
        assert_false(rep[0].starttls);
        assert_string_equal(rep[0].text, "mx.example ESMTP Postfix");
        assert_int_equal(rep[1].code, 250);
        assert_int_equal(rep[1].lines, 6);
        assert_true(rep[1].starttls);
        assert_true(rep[1].pipelining);
        assert_string_equal(rep[1].text, "SMTPUTF8");
        assert_int_equal(rep[2].code, 354);
        assert_int_equal(rep[3].code, 250);
        assert_false(rep[3].starttls);
        assert_int_equal(rep[4].code, 451);
        assert_string_equal(rep[4].text, "");
    }
}

static void test_keywords_exact(void **state)
{
    (void)state;
    struct bench_smtp_reply rep[2];
    enum bench_smtp_rd last;
    /* STARTTLSX is not STARTTLS; the first line is the host name, never a keyword */
    size_t n = read_all("250-STARTTLS\r\n250-STARTTLSX\r\n250 pipelining\r\n", 3, rep, 2, &last);
    assert_int_equal(n, 1);
    assert_false(rep[0].starttls);
    assert_true(rep[0].pipelining);
}

static void test_bad(void **state)
{
    (void)state;
    const char *bad[] = {
        "25\r\n",             /* short code */
        "abc hello\r\n",      /* not digits */
        "250x hello\r\n",     /* bad separator */
        "250-a\r\n251 b\r\n", /* codes differ */
        "250 bare lf\n",      /* bare LF */
        "250 bare\rcr\r\n",   /* bare CR */
        "150 not a final class\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct bench_smtp_reply rep[4];
        enum bench_smtp_rd last;
        read_all(bad[i], 64, rep, 4, &last);
        assert_int_equal(last, BENCH_SMTP_BAD);
    }
    /* an over-long line, and too many lines */
    {
        static char big[BENCH_SMTP_LINE_MAX + 16];
        struct bench_smtp_reply rep[2];
        enum bench_smtp_rd last;
        memset(big, 'a', sizeof(big) - 1);
        memcpy(big, "250 ", 4);
        read_all(big, 100, rep, 2, &last);
        assert_int_equal(last, BENCH_SMTP_BAD);
    }
    {
        static char many[(BENCH_SMTP_LINES_MAX + 2) * 8];
        struct bench_smtp_reply rep[2];
        enum bench_smtp_rd last;
        size_t p = 0;
        for (int i = 0; i < BENCH_SMTP_LINES_MAX + 1; i++) {
            memcpy(many + p, "250-x\r\n", 7);
            p += 7;
        }
        memcpy(many + p, "250 y\r\n", 7);
        read_all(many, 50, rep, 2, &last);
        assert_int_equal(last, BENCH_SMTP_BAD);
    }
    /* sticky */
    {
        struct bench_smtp_reader r;
        struct bench_smtp_reply rep;
        size_t used;
        bench_smtp_reader_init(&r);
        assert_int_equal(bench_smtp_read(&r, (const uint8_t *)"x\r\n", 3, &used, &rep),
                         BENCH_SMTP_BAD);
        assert_int_equal(bench_smtp_read(&r, (const uint8_t *)"250 ok\r\n", 8, &used, &rep),
                         BENCH_SMTP_BAD);
        assert_int_equal(used, 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replies),
        cmocka_unit_test(test_keywords_exact),
        cmocka_unit_test(test_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
