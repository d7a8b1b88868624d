/* tests/unit/test_core_proto.c — the CMTP/1 codec: framing at every split point, decimal fields,
 * every command's grammar, reply formatting and parsing. Not the session state machines. */
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

/* ---- reader transcripts ---- */

/* transcript records what a reader produced: lines, merged data runs, the final error. */
struct transcript {
    uint8_t *buf;
    size_t len, cap;
    uint8_t *data; /* current data run */
    size_t data_len, data_cap;
};

static void tr_init(struct transcript *t)
{
    memset(t, 0, sizeof(*t));
}

static void tr_free(struct transcript *t)
{
    free(t->buf);
    free(t->data);
}

static void tr_raw(struct transcript *t, const void *p, size_t n)
{
    if (t->len + n > t->cap) {
        t->cap = (t->len + n) * 2 + 64;
        t->buf = realloc(t->buf, t->cap);
        assert_non_null(t->buf);
    }
    memcpy(t->buf + t->len, p, n);
    t->len += n;
}

static void tr_flush_data(struct transcript *t)
{
    if (t->data_len == 0)
        return;
    uint32_t n = (uint32_t)t->data_len;
    tr_raw(t, "D", 1);
    tr_raw(t, &n, sizeof(n));
    tr_raw(t, t->data, t->data_len);
    t->data_len = 0;
}

static void tr_item(struct transcript *t, char tag, const void *p, size_t n)
{
    uint32_t n32 = (uint32_t)n;
    tr_flush_data(t);
    tr_raw(t, &tag, 1);
    tr_raw(t, &n32, sizeof(n32));
    if (n > 0)
        tr_raw(t, p, n);
}

static void tr_data(struct transcript *t, const uint8_t *p, size_t n)
{
    if (t->data_len + n > t->data_cap) {
        t->data_cap = (t->data_len + n) * 2 + 64;
        t->data = realloc(t->data, t->data_cap);
        assert_non_null(t->data);
    }
    memcpy(t->data + t->data_len, p, n);
    t->data_len += n;
}

/* run_reader feeds |in| cut at |cuts| (ascending offsets) and records the transcript. A line
 * `BODY n` with a valid n > 0 makes the next n octets data, as the server does. */
static void run_reader(const uint8_t *in, size_t len, const size_t *cuts, size_t ncuts,
                       struct transcript *t)
{
    struct cmtp_reader *r = malloc(sizeof(*r));
    assert_non_null(r);
    cmtp_reader_init(r);
    size_t start = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        const uint8_t *p = in + start;
        size_t left = end - start;
        for (;;) {
            struct cmtp_rd_item it;
            size_t c;
            enum cmtp_rd rd = cmtp_reader_next(r, p, left, &c, &it);
            assert_true(c <= left);
            p += c;
            left -= c;
            if (rd == CMTP_RD_AGAIN) {
                assert_int_equal(left, 0);
                break;
            }
            if (rd == CMTP_RD_LINE) {
                assert_int_equal(strlen(it.line), it.len); /* no NUL inside, terminated */
                tr_item(t, 'L', it.line, it.len);
                uint64_t n;
                if (it.len > 5 && memcmp(it.line, "BODY ", 5) == 0 &&
                    cmtp_index_parse(&n, it.line + 5, it.len - 5) == CMTP_PERR_OK && n > 0 &&
                    n < (1u << 30))
                    cmtp_reader_expect_data(r, n);
                continue;
            }
            if (rd == CMTP_RD_DATA) {
                assert_ptr_equal(it.data, p - c); /* zero copy: a pointer into the input */
                tr_data(t, it.data, it.len);
                continue;
            }
            /* sticky error: record once and stop */
            char code = (char)('0' + rd);
            tr_item(t, 'E', &code, 1);
            assert_int_equal(cmtp_reader_next(r, p, left, &c, &it), rd);
            assert_int_equal(c, 0);
            goto out;
        }
        start = end;
    }
    tr_flush_data(t);
out:
    free(r);
}

static void assert_same(const struct transcript *a, const struct transcript *b)
{
    assert_int_equal(a->len, b->len);
    assert_memory_equal(a->buf, b->buf, a->len);
}

/* check_splits compares feeding |in| whole with one byte at a time, with every single split
 * point, and with random multi-splits. */
static void check_splits(const uint8_t *in, size_t len)
{
    struct transcript whole, t;
    tr_init(&whole);
    run_reader(in, len, NULL, 0, &whole);

    size_t *cuts = malloc((len + 1) * sizeof(size_t));
    assert_non_null(cuts);
    for (size_t i = 0; i < len; i++)
        cuts[i] = i + 1;
    tr_init(&t);
    run_reader(in, len, cuts, len > 0 ? len - 1 : 0, &t);
    assert_same(&whole, &t);
    tr_free(&t);

    for (size_t i = 0; i <= len; i++) {
        tr_init(&t);
        cuts[0] = i;
        run_reader(in, len, cuts, 1, &t);
        assert_same(&whole, &t);
        tr_free(&t);
    }
    uint32_t seed = 12345;
    for (int round = 0; round < 50; round++) {
        size_t n = 0, pos = 0;
        while (pos < len) {
            seed = seed * 1103515245u + 12345u;
            pos += 1 + (seed >> 16) % 17;
            if (pos < len)
                cuts[n++] = pos;
        }
        tr_init(&t);
        run_reader(in, len, cuts, n, &t);
        assert_same(&whole, &t);
        tr_free(&t);
    }
    free(cuts);
    tr_free(&whole);
}

/* first_result feeds |s| whole and returns the first non-AGAIN result (or AGAIN). */
static enum cmtp_rd first_result(const void *s, size_t len, size_t *line_len)
{
    struct cmtp_reader r;
    struct cmtp_rd_item it;
    size_t c;
    cmtp_reader_init(&r);
    enum cmtp_rd rd = cmtp_reader_next(&r, s, len, &c, &it);
    if (line_len != NULL)
        *line_len = it.len;
    return rd;
}

#define S(lit) (const uint8_t *)(lit), sizeof(lit) - 1

static void test_reader_splits(void **state)
{
    (void)state;
    static const char *const streams[] = {
        "NOOP\r\nQUIT\r\n",
        "MAIL FROM:<a@b.example> TXN=abcdefghijklmnop SIZE=5 DIGEST=00\r\nRCPT "
        "TO:<x@y.example>\r\n",
        "BODY 11\r\n\r\n.\r\nEND\r\n\0\rEND\r\nNOOP\r\n",
        "BODY 3\r\nab",
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e\r\nNOOP\r\n",
        "NOOP\rX\r\n",
        "NOOP\nQUIT\r\n",
        "NO\0OP\r\n",
        "bad \xc0\x80\r\n",
        "bad \xe2\x82\r\n",
        "\r\n\r\n",
        "BODY 1\r\n\r",
        "BODY 0\r\nNOOP\r\n",
    };
    for (size_t i = 0; i < sizeof(streams) / sizeof(streams[0]); i++) {
        size_t len = strlen(streams[i]);
        if (i == 2)
            len = 40; /* contains a NUL inside the chunk data */
        if (i == 7)
            len = 8;
        check_splits((const uint8_t *)streams[i], len);
    }
    /* a long line near the limit, and a chunk of binary data */
    size_t n = 9000;
    uint8_t *big = malloc(n);
    assert_non_null(big);
    memcpy(big, "BODY 4000\r\n", 11);
    for (size_t i = 11; i < 4011; i++)
        big[i] = (uint8_t)(i * 7);
    memcpy(big + 4011, "NOOP\r\n", 6);
    for (size_t i = 4017; i < n - 2; i++)
        big[i] = 'a';
    big[n - 2] = '\r';
    big[n - 1] = '\n';
    check_splits(big, 4017 + 4094 + 2);
    check_splits(big, 4017 + 4095 + 2);
    free(big);
}

static void test_reader_line_max(void **state)
{
    (void)state;
    char *buf = malloc(CMTP_LINE_MAX + 8);
    assert_non_null(buf);
    size_t ll;
    /* exactly line-max with CRLF: accepted */
    memset(buf, 'x', CMTP_LINE_MAX - 2);
    memcpy(buf + CMTP_LINE_MAX - 2, "\r\n", 2);
    assert_int_equal(first_result(buf, CMTP_LINE_MAX, &ll), CMTP_RD_LINE);
    assert_int_equal(ll, CMTP_LINE_MAX - 2);
    /* line-max + 1: too long, detected before the CRLF arrives */
    memset(buf, 'x', CMTP_LINE_MAX - 1);
    memcpy(buf + CMTP_LINE_MAX - 1, "\r\n", 2);
    assert_int_equal(first_result(buf, CMTP_LINE_MAX + 1, NULL), CMTP_RD_TOO_LONG);
    assert_int_equal(first_result(buf, CMTP_LINE_MAX - 1, NULL), CMTP_RD_TOO_LONG);
    assert_int_equal(first_result(buf, CMTP_LINE_MAX - 2, NULL), CMTP_RD_AGAIN);
    /* multi-byte characters count in octets */
    for (size_t i = 0; i + 2 <= CMTP_LINE_MAX - 2; i += 2)
        memcpy(buf + i, "\xc3\xa9", 2);
    memcpy(buf + CMTP_LINE_MAX - 2, "\r\n", 2);
    assert_int_equal(first_result(buf, CMTP_LINE_MAX, &ll), CMTP_RD_LINE);
    /* a lowered line-max: exactly it is a line, one more octet is too long */
    struct cmtp_reader *r = malloc(sizeof(*r));
    assert_non_null(r);
    struct cmtp_rd_item it;
    size_t used;
    memset(buf, 'y', 2046);
    memcpy(buf + 2046, "\r\n", 2);
    cmtp_reader_init(r);
    cmtp_reader_set_line_max(r, 2048);
    assert_int_equal(cmtp_reader_next(r, (const uint8_t *)buf, 2048, &used, &it), CMTP_RD_LINE);
    assert_int_equal(it.len, 2046);
    memset(buf, 'y', 2047);
    memcpy(buf + 2047, "\r\n", 2);
    cmtp_reader_init(r);
    cmtp_reader_set_line_max(r, 2048);
    assert_int_equal(cmtp_reader_next(r, (const uint8_t *)buf, 2049, &used, &it), CMTP_RD_TOO_LONG);
    assert_int_equal(used, 2046);
    /* clamped to CMTP_LINE_MIN..CMTP_LINE_MAX */
    cmtp_reader_set_line_max(r, 10);
    assert_int_equal(r->line_max, CMTP_LINE_MIN);
    cmtp_reader_set_line_max(r, 1u << 20);
    assert_int_equal(r->line_max, CMTP_LINE_MAX);
    free(r);
    free(buf);
}

static void test_reader_bad_bytes(void **state)
{
    (void)state;
    assert_int_equal(first_result(S("NOOP\n"), NULL), CMTP_RD_BAD_LINE);
    assert_int_equal(first_result(S("NO\rOP\r\n"), NULL), CMTP_RD_BAD_LINE);
    assert_int_equal(first_result(S("NOOP\r\r\n"), NULL), CMTP_RD_BAD_LINE);
    assert_int_equal(first_result("NO\0OP\r\n", 7, NULL), CMTP_RD_BAD_LINE);
    assert_int_equal(first_result(S("\n"), NULL), CMTP_RD_BAD_LINE);
    /* invalid UTF-8: overlong, surrogate, above U+10FFFF, stray continuation, truncated */
    static const char *const bad[] = {
        "a\xc0\x80\r\n",         "a\xc1\xbf\r\n",         "a\xe0\x80\x80\r\n", "a\xed\xa0\x80\r\n",
        "a\xf4\x90\x80\x80\r\n", "a\xf5\x80\x80\x80\r\n", "a\x80\r\n",         "a\xbf\r\n",
        "a\xe2\x82\r\n",         "a\xf0\x9d\x84\r\n",     "a\xff\r\n",         "a\xc3\r\n",
        "a\xf0\x80\x80\x80\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(first_result(bad[i], strlen(bad[i]), NULL), CMTP_RD_BAD_LINE);
    static const char *const good[] = {
        "a\xc2\x80\r\n",     "a\xdf\xbf\r\n",         "a\xe0\xa0\x80\r\n",     "a\xed\x9f\xbf\r\n",
        "a\xee\x80\x80\r\n", "a\xf0\x90\x80\x80\r\n", "a\xf4\x8f\xbf\xbf\r\n", "\t\x01\x7f\r\n",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_int_equal(first_result(good[i], strlen(good[i]), NULL), CMTP_RD_LINE);
    /* errors are sticky; data mode passes anything */
    struct cmtp_reader r;
    struct cmtp_rd_item it;
    size_t c;
    cmtp_reader_init(&r);
    assert_int_equal(cmtp_reader_next(&r, S("x\ny"), &c, &it), CMTP_RD_BAD_LINE);
    assert_int_equal(c, 1);
    assert_int_equal(cmtp_reader_next(&r, S("NOOP\r\n"), &c, &it), CMTP_RD_BAD_LINE);
    assert_int_equal(c, 0);
    cmtp_reader_init(&r);
    cmtp_reader_expect_data(&r, 4);
    assert_int_equal(cmtp_reader_next(&r, (const uint8_t *)"\0\n\r\xff\x01", 5, &c, &it),
                     CMTP_RD_DATA);
    assert_int_equal(c, 4);
    assert_int_equal(it.len, 4);
    assert_int_equal(cmtp_reader_data_left(&r), 0);
    assert_int_equal(cmtp_reader_next(&r, NULL, 0, &c, &it), CMTP_RD_AGAIN);
    assert_false(cmtp_reader_mid_line(&r));
    assert_int_equal(cmtp_reader_next(&r, S("NO"), &c, &it), CMTP_RD_AGAIN);
    assert_true(cmtp_reader_mid_line(&r));
}

/* ---- decimal fields ---- */

static void test_parse_u64(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        enum cmtp_num res;
        uint64_t v;
    } cases[] = {
        {"0", CMTP_NUM_OK, 0},
        {"1", CMTP_NUM_OK, 1},
        {"1048576", CMTP_NUM_OK, 1048576},
        {"1048577", CMTP_NUM_OK, 1048577},
        {"2147483648", CMTP_NUM_OK, 2147483648ull},
        {"4294967295", CMTP_NUM_OK, 4294967295ull},
        {"4294967296", CMTP_NUM_OK, 4294967296ull},
        {"9223372036854775808", CMTP_NUM_OK, 9223372036854775808ull},
        {"18446744073709551615", CMTP_NUM_OK, UINT64_MAX},
        {"18446744073709551616", CMTP_NUM_RANGE, UINT64_MAX},
        {"99999999999999999999", CMTP_NUM_RANGE, UINT64_MAX},
        {"99999999999999999999999", CMTP_NUM_RANGE, UINT64_MAX},
        {"100000000000000000000000000000000000000000", CMTP_NUM_RANGE, UINT64_MAX},
        {"", CMTP_NUM_SYNTAX, 0},
        {"00", CMTP_NUM_SYNTAX, 0},
        {"01", CMTP_NUM_SYNTAX, 0},
        {"000000000000000000000000001", CMTP_NUM_SYNTAX, 0},
        {"+1", CMTP_NUM_SYNTAX, 0},
        {"-1", CMTP_NUM_SYNTAX, 0},
        {" 1", CMTP_NUM_SYNTAX, 0},
        {"1 ", CMTP_NUM_SYNTAX, 0},
        {"1a", CMTP_NUM_SYNTAX, 0},
        {"0x10", CMTP_NUM_SYNTAX, 0},
        {"1e3", CMTP_NUM_SYNTAX, 0},
        {"１", CMTP_NUM_SYNTAX, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 42;
        enum cmtp_num r = cmtp_parse_u64(&v, cases[i].s, strlen(cases[i].s));
        if (r != cases[i].res || v != cases[i].v)
            fail_msg("case %zu (%s): got %d %llu", i, cases[i].s, (int)r, (unsigned long long)v);
    }
}

/* ---- commands ---- */

static void test_cmd_split(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        enum cmtp_perr res;
        enum cmtp_verb verb;
        const char *args;
    } cases[] = {
        {"NOOP", CMTP_PERR_OK, CMTP_VERB_NOOP, NULL},
        {"noop", CMTP_PERR_OK, CMTP_VERB_NOOP, NULL},
        {"NoOp", CMTP_PERR_OK, CMTP_VERB_NOOP, NULL},
        {"QUIT", CMTP_PERR_OK, CMTP_VERB_QUIT, NULL},
        {"RSET", CMTP_PERR_OK, CMTP_VERB_RSET, NULL},
        {"END", CMTP_PERR_OK, CMTP_VERB_END, NULL},
        {"end", CMTP_PERR_OK, CMTP_VERB_END, NULL},
        {"MAIL FROM:<a@b.c>", CMTP_PERR_OK, CMTP_VERB_MAIL, "FROM:<a@b.c>"},
        {"mail FROM:<a@b.c> X=1", CMTP_PERR_OK, CMTP_VERB_MAIL, "FROM:<a@b.c> X=1"},
        {"TRACE hop=1", CMTP_PERR_OK, CMTP_VERB_TRACE, "hop=1"},
        {"RCPT TO:<a@b.c>", CMTP_PERR_OK, CMTP_VERB_RCPT, "TO:<a@b.c>"},
        {"DROP 1", CMTP_PERR_OK, CMTP_VERB_DROP, "1"},
        {"BODY 10", CMTP_PERR_OK, CMTP_VERB_BODY, "10"},
        {"Body 10", CMTP_PERR_OK, CMTP_VERB_BODY, "10"},
        {"HELO x", CMTP_PERR_UNKNOWN, CMTP_VERB_NONE, NULL},
        {"EHLO", CMTP_PERR_UNKNOWN, CMTP_VERB_NONE, NULL},
        {"DATA", CMTP_PERR_UNKNOWN, CMTP_VERB_NONE, NULL},
        {"NOOPX", CMTP_PERR_UNKNOWN, CMTP_VERB_NONE, NULL},
        {"NOO", CMTP_PERR_UNKNOWN, CMTP_VERB_NONE, NULL},
        {"\xc3\xa9", CMTP_PERR_UNKNOWN, CMTP_VERB_NONE, NULL},
        {"", CMTP_PERR_SYNTAX, CMTP_VERB_NONE, NULL},
        {" NOOP", CMTP_PERR_SYNTAX, CMTP_VERB_NONE, NULL},
        {"NOOP ", CMTP_PERR_SYNTAX, CMTP_VERB_NOOP, NULL},
        {"NOOP x", CMTP_PERR_SYNTAX, CMTP_VERB_NOOP, NULL},
        {"QUIT now", CMTP_PERR_SYNTAX, CMTP_VERB_QUIT, NULL},
        {"MAIL", CMTP_PERR_SYNTAX, CMTP_VERB_MAIL, NULL},
        {"MAIL ", CMTP_PERR_SYNTAX, CMTP_VERB_MAIL, NULL},
        {"MAIL  FROM:<a@b.c>", CMTP_PERR_SYNTAX, CMTP_VERB_MAIL, NULL},
        {"MAIL FROM:<a@b.c> ", CMTP_PERR_SYNTAX, CMTP_VERB_MAIL, NULL},
        {"MAIL FROM:<a@b.c>  X=1", CMTP_PERR_SYNTAX, CMTP_VERB_MAIL, NULL},
        {"RCPT TO:<a@b.c>\t", CMTP_PERR_SYNTAX, CMTP_VERB_RCPT, NULL},
        {"RCPT\tTO:<a@b.c>", CMTP_PERR_UNKNOWN, CMTP_VERB_NONE, NULL},
        {"DROP 1\x7f", CMTP_PERR_SYNTAX, CMTP_VERB_DROP, NULL},
        {"BODY", CMTP_PERR_SYNTAX, CMTP_VERB_BODY, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct cmtp_cmd cmd;
        enum cmtp_perr r = cmtp_cmd_split(&cmd, cases[i].line, strlen(cases[i].line));
        if (r != cases[i].res)
            fail_msg("case %zu (%s): got %d", i, cases[i].line, (int)r);
        if (r != CMTP_PERR_UNKNOWN && cases[i].verb != CMTP_VERB_NONE)
            assert_int_equal(cmd.verb, cases[i].verb);
        if (cases[i].args != NULL) {
            assert_int_equal(cmd.args_len, strlen(cases[i].args));
            assert_memory_equal(cmd.args, cases[i].args, cmd.args_len);
        }
    }
}

#define TXID "0123456789abcdefGHIJ"
#define HEX64 "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static enum cmtp_perr mail(struct cmtp_envelope *env, const char *args)
{
    return cmtp_mail_parse(env, args, strlen(args));
}

static void test_mail_parse(void **state)
{
    (void)state;
    struct cmtp_envelope *env = malloc(sizeof(*env));
    assert_non_null(env);

    assert_int_equal(mail(env, "FROM:<Alice@Example.COM> TXN=" TXID " SIZE=5 DIGEST=" HEX64),
                     CMTP_PERR_OK);
    assert_string_equal(env->from.local, "Alice");
    assert_string_equal(env->from.domain, "example.com");
    assert_string_equal(env->txid, TXID);
    assert_int_equal(env->size, 5);
    assert_int_equal(env->digest[0], 0x00);
    assert_int_equal(env->digest[1], 0x11);
    assert_int_equal(env->digest[31], 0xff);
    assert_int_equal(env->policy.relay, CMTP_RELAY_NONE);
    assert_int_equal(env->policy.hops, CMTP_HOPS_DEFAULT);
    assert_int_equal(env->policy.fallback, CMTP_FALLBACK_NONE);
    assert_string_equal(env->report_txid, "");
    assert_int_equal(env->trace_count, 0);

    /* all parameters, any order, keys case-insensitive */
    assert_int_equal(mail(env, "from:<a@b.example> hops=0 relay=domain SIZE=67108864 "
                               "fallback=smtp-tls DIGEST=" HEX64 " report=" TXID "x txn=" TXID),
                     CMTP_PERR_OK);
    assert_int_equal(env->policy.relay, CMTP_RELAY_DOMAIN);
    assert_int_equal(env->policy.hops, 0);
    assert_int_equal(env->policy.fallback, CMTP_FALLBACK_SMTP_TLS);
    assert_string_equal(env->report_txid, TXID "x");
    assert_int_equal(env->size, 67108864);

    /* SIZE too large to represent: parsed, stored as UINT64_MAX (refused as too big) */
    static const char *const huge[] = {"18446744073709551616", "99999999999999999999999",
                                       "18446744073709551615"};
    for (size_t i = 0; i < 3; i++) {
        char line[256];
        snprintf(line, sizeof(line), "FROM:<a@b.example> TXN=%s SIZE=%s DIGEST=%s", TXID, huge[i],
                 HEX64);
        assert_int_equal(mail(env, line), CMTP_PERR_OK);
        assert_int_equal(env->size, UINT64_MAX);
    }
    assert_int_equal(mail(env, "FROM:<a@b.example> TXN=" TXID " SIZE=4294967296 DIGEST=" HEX64),
                     CMTP_PERR_OK);
    assert_int_equal(env->size, 4294967296ull);

    /* null originator only with REPORT= */
    assert_int_equal(mail(env, "FROM:<> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " REPORT=" TXID),
                     CMTP_PERR_OK);
    assert_true(env->from.is_null);
    assert_int_equal(mail(env, "FROM:<> TXN=" TXID " SIZE=5 DIGEST=" HEX64), CMTP_PERR_ADDRESS);

    static const struct {
        const char *args;
        enum cmtp_perr res;
    } bad[] = {
        {"TO:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM <a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:", CMTP_PERR_ADDRESS},
        {"FROM: <a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:a@b.example TXN=" TXID " SIZE=5 DIGEST=" HEX64, CMTP_PERR_ADDRESS},
        {"FROM:<a@localhost> TXN=" TXID " SIZE=5 DIGEST=" HEX64, CMTP_PERR_ADDRESS},
        {"FROM:<a;b@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64, CMTP_PERR_ADDRESS},
        {"FROM:<$(id)@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64, CMTP_PERR_ADDRESS},
        {"FROM:<a@b.example>", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> SIZE=5 DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=short SIZE=5 DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID "! SIZE=5 DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=0 DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=05 DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=+5 DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=-5 DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE= DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5k DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 "0", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=00112233", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 "
         "DIGEST=00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff",
         CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 "
         "DIGEST=g0112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
         CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " RELAY=some", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " HOPS=33", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " HOPS=08", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " HOPS=-1", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " FALLBACK=yes", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " RELAY=ANY", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " FALLBACK=SMTP", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " REPORT=x", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " BODY=8BITMIME", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " SIZE=5", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " TXN=" TXID " SIZE=5 DIGEST=" HEX64, CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " =x", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " RELAY", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID " SIZE=5 DIGEST=" HEX64 " ", CMTP_PERR_SYNTAX},
        {"FROM:<a@b.example> TXN=" TXID "  SIZE=5 DIGEST=" HEX64, CMTP_PERR_SYNTAX},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        enum cmtp_perr r = mail(env, bad[i].args);
        if (r != bad[i].res)
            fail_msg("bad case %zu (%s): got %d", i, bad[i].args, (int)r);
        assert_int_equal(env->size, 0); /* reset on failure */
        assert_string_equal(env->txid, "");
    }
    free(env);
}

static void test_rcpt_index_parse(void **state)
{
    (void)state;
    struct cmtp_addr a;
    assert_int_equal(cmtp_rcpt_parse(&a, "TO:<Bob@Example.org>", 20), CMTP_PERR_OK);
    assert_string_equal(a.local, "Bob");
    assert_string_equal(a.domain, "example.org");
    const char *idn = "to:<j\xc3\xb6rg@b\xc3\xbc"
                      "cher.example>";
    assert_int_equal(cmtp_rcpt_parse(&a, idn, strlen(idn)), CMTP_PERR_OK);
    assert_string_equal(a.domain, "xn--bcher-kva.example");
    static const struct {
        const char *args;
        enum cmtp_perr res;
    } cases[] = {
        {"TO:<>", CMTP_PERR_ADDRESS},
        {"TO:<a@b>", CMTP_PERR_ADDRESS},
        {"TO:<a\x01@b.example>", CMTP_PERR_ADDRESS},
        {"TO:<a@b.example", CMTP_PERR_ADDRESS},
        {"TO:", CMTP_PERR_ADDRESS},
        {"FROM:<a@b.example>", CMTP_PERR_SYNTAX},
        {"TO <a@b.example>", CMTP_PERR_SYNTAX},
        {"T", CMTP_PERR_SYNTAX},
        {"TO:<a@b.example> X=1", CMTP_PERR_SYNTAX},
        {"TO:<a b@b.example>", CMTP_PERR_SYNTAX},
        {"TO:<${run{x}}@b.example>", CMTP_PERR_OK},
        {"TO:<`id`@b.example>", CMTP_PERR_OK},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        enum cmtp_perr r = cmtp_rcpt_parse(&a, cases[i].args, strlen(cases[i].args));
        if (r != cases[i].res)
            fail_msg("case %zu (%s): got %d", i, cases[i].args, (int)r);
    }
    uint64_t v;
    assert_int_equal(cmtp_index_parse(&v, "1", 1), CMTP_PERR_OK);
    assert_int_equal(v, 1);
    assert_int_equal(cmtp_index_parse(&v, "0", 1), CMTP_PERR_OK);
    assert_int_equal(v, 0);
    assert_int_equal(cmtp_index_parse(&v, "99999999999999999999999", 23), CMTP_PERR_OK);
    assert_int_equal(v, UINT64_MAX);
    assert_int_equal(cmtp_index_parse(&v, "01", 2), CMTP_PERR_SYNTAX);
    assert_int_equal(cmtp_index_parse(&v, "-1", 2), CMTP_PERR_SYNTAX);
    assert_int_equal(cmtp_index_parse(&v, "", 0), CMTP_PERR_SYNTAX);
}

static void test_command_format_roundtrip(void **state)
{
    (void)state;
    struct cmtp_envelope *env = calloc(2, sizeof(*env));
    assert_non_null(env);
    char line[CMTP_LINE_MAX + 1];
    cmtp_policy_init(&env[0].policy);
    const char *from = "<s\xc3\xa9nder@B\xc3\xbc"
                       "cher.example>";
    assert_int_equal(cmtp_addr_parse(&env[0].from, from, strlen(from), 0), CMTP_ADDR_OK);
    strcpy(env[0].txid, TXID);
    env[0].size = 123456789;
    for (int i = 0; i < CMTP_DIGEST_LEN; i++)
        env[0].digest[i] = (uint8_t)(i * 9);
    env[0].policy.relay = CMTP_RELAY_ANY;
    env[0].policy.hops = 3;
    env[0].policy.fallback = CMTP_FALLBACK_SMTP_VERIFIED;
    int n = cmtp_mail_format(line, sizeof(line), &env[0]);
    assert_true(n > 0);
    assert_int_equal((size_t)n, strlen(line));
    assert_memory_equal(line + n - 2, "\r\n", 2);
    struct cmtp_cmd cmd;
    assert_int_equal(cmtp_cmd_split(&cmd, line, (size_t)n - 2), CMTP_PERR_OK);
    assert_int_equal(cmd.verb, CMTP_VERB_MAIL);
    assert_int_equal(cmtp_mail_parse(&env[1], cmd.args, cmd.args_len), CMTP_PERR_OK);
    assert_true(cmtp_addr_equal(&env[0].from, &env[1].from));
    assert_string_equal(env[1].txid, TXID);
    assert_int_equal(env[1].size, 123456789);
    assert_memory_equal(env[1].digest, env[0].digest, CMTP_DIGEST_LEN);
    assert_int_equal(env[1].policy.relay, CMTP_RELAY_ANY);
    assert_int_equal(env[1].policy.hops, 3);
    assert_int_equal(env[1].policy.fallback, CMTP_FALLBACK_SMTP_VERIFIED);

    /* invalid envelopes are refused, never written */
    env[0].size = 0;
    assert_int_equal(cmtp_mail_format(line, sizeof(line), &env[0]), -EINVAL);
    env[0].size = 1;
    strcpy(env[0].txid, "bad txid with spaces");
    assert_int_equal(cmtp_mail_format(line, sizeof(line), &env[0]), -EINVAL);
    strcpy(env[0].txid, TXID);
    strcpy(env[0].from.local, "a\r\nRCPT");
    env[0].from.local_len = 7;
    assert_int_equal(cmtp_mail_format(line, sizeof(line), &env[0]), -EINVAL);
    assert_int_equal(cmtp_addr_parse(&env[0].from, "<>", 2, CMTP_ADDR_ALLOW_NULL), CMTP_ADDR_OK);
    assert_int_equal(cmtp_mail_format(line, sizeof(line), &env[0]), -EINVAL);
    strcpy(env[0].report_txid, TXID);
    assert_true(cmtp_mail_format(line, sizeof(line), &env[0]) > 0);
    assert_int_equal(cmtp_mail_format(line, 20, &env[0]), -ENOSPC);

    /* RCPT */
    struct cmtp_addr a, b;
    assert_int_equal(cmtp_addr_parse(&a, "<r@x.example>", 13, 0), CMTP_ADDR_OK);
    n = cmtp_rcpt_format(line, sizeof(line), &a);
    assert_string_equal(line, "RCPT TO:<r@x.example>\r\n");
    assert_int_equal(cmtp_cmd_split(&cmd, line, (size_t)n - 2), CMTP_PERR_OK);
    assert_int_equal(cmtp_rcpt_parse(&b, cmd.args, cmd.args_len), CMTP_PERR_OK);
    assert_true(cmtp_addr_equal(&a, &b));
    assert_int_equal(cmtp_addr_parse(&a, "<>", 2, CMTP_ADDR_ALLOW_NULL), CMTP_ADDR_OK);
    assert_int_equal(cmtp_rcpt_format(line, sizeof(line), &a), -EINVAL);

    /* TRACE */
    struct cmtp_trace t, t2;
    memset(&t, 0, sizeof(t));
    t.hop = 2;
    strcpy(t.by, "mx.example");
    strcpy(t.from, "-");
    t.at = 1780000000;
    strcpy(t.tls, "TLSv1.3/TLS_AES_128_GCM_SHA256");
    strcpy(t.peer_id, "client.example");
    t.role = CMTP_ROLE_RELAY;
    n = cmtp_trace_cmd_format(line, sizeof(line), &t);
    assert_true(n > 0);
    assert_memory_equal(line, "TRACE hop=2 by=mx.example", 25);
    assert_int_equal(cmtp_cmd_split(&cmd, line, (size_t)n - 2), CMTP_PERR_OK);
    assert_int_equal(cmd.verb, CMTP_VERB_TRACE);
    assert_int_equal(cmtp_trace_parse(&t2, cmd.args, cmd.args_len), 0);
    assert_int_equal(t2.hop, 2);
    assert_int_equal(t2.at, t.at);
    assert_int_equal(t2.role, CMTP_ROLE_RELAY);

    /* digest hex */
    char hex[CMTP_DIGEST_HEX_LEN + 1];
    uint8_t d[CMTP_DIGEST_LEN];
    cmtp_digest_hex(hex, env[1].digest);
    assert_int_equal(strlen(hex), 64);
    assert_int_equal(cmtp_digest_parse(d, hex, 64), 0);
    assert_memory_equal(d, env[1].digest, CMTP_DIGEST_LEN);
    assert_int_equal(cmtp_digest_parse(d, hex, 63), -EINVAL);
    free(env);
}

/* ---- replies ---- */

static void test_reply_format(void **state)
{
    (void)state;
    char buf[CMTP_LINE_MAX + 16];
    assert_int_equal(cmtp_reply_format(buf, sizeof(buf), 250, "ok", NULL, 0, NULL), 8);
    assert_string_equal(buf, "250 ok\r\n");
    const struct cmtp_param p[] = {{"txn", TXID}, {"next", "relay.example"}};
    cmtp_reply_format(buf, sizeof(buf), 251, "relay", p + 1, 1, "");
    assert_string_equal(buf, "251 relay next=relay.example\r\n");
    cmtp_reply_format(buf, sizeof(buf), 250, "ok", p, 2, "hello w\xc3\xb6rld");
    assert_string_equal(buf, "250 ok txn=" TXID " next=relay.example : hello w\xc3\xb6rld\r\n");

    /* peer data in text is sanitized: no CR, LF, NUL, control or invalid UTF-8 survives */
    int n = cmtp_reply_format(buf, sizeof(buf), 550, "no-mailbox", NULL, 0,
                              "a\r\nRCPT TO:<x@y>\x1b[31m\xc0\x80\xff\xe2\x82 \xc2\x85 end");
    assert_true(n > 0);
    for (int i = 0; i < n - 2; i++) {
        assert_true(buf[i] != '\r' && buf[i] != '\n' && buf[i] != '\0');
        assert_true((unsigned char)buf[i] >= 0x20 && buf[i] != 0x7f);
    }
    assert_string_equal(buf, "550 no-mailbox : a??RCPT TO:<x@y>?[31m????? ?? end\r\n");
    struct cmtp_reply r;
    assert_int_equal(cmtp_reply_parse(&r, buf, (size_t)n - 2), 0);

    /* text is cut at CMTP_TEXT_MAX octets on a character boundary */
    char *longtext = malloc(3 * CMTP_TEXT_MAX + 1);
    assert_non_null(longtext);
    for (int i = 0; i < CMTP_TEXT_MAX; i++)
        memcpy(longtext + 3 * i, "\xe2\x82\xac", 3);
    longtext[3 * CMTP_TEXT_MAX] = '\0';
    n = cmtp_reply_format(buf, sizeof(buf), 250, "ok", NULL, 0, longtext);
    assert_int_equal(n, 6 + 3 + (CMTP_TEXT_MAX / 3) * 3 + 2);
    free(longtext);

    /* refused arguments: never escaped, never echoed */
    static const struct cmtp_param badp[] = {
        {"next", "a b"},      {"next", ":x"},    {"next", "a\r\nb"},
        {"next", ""},         {"ne xt", "a"},    {"", "a"},
        {"k=", "a"},          {"next", "a\x7f"}, {"next", "\xc0\x80"},
        {"next", "\xc2\x85"},
    };
    for (size_t i = 0; i < sizeof(badp) / sizeof(badp[0]); i++)
        assert_int_equal(cmtp_reply_format(buf, sizeof(buf), 251, "relay", &badp[i], 1, NULL),
                         -EINVAL);
    assert_int_equal(cmtp_reply_format(buf, sizeof(buf), 350, "ok", NULL, 0, NULL), -EINVAL);
    assert_int_equal(cmtp_reply_format(buf, sizeof(buf), 199, "ok", NULL, 0, NULL), -EINVAL);
    assert_int_equal(cmtp_reply_format(buf, sizeof(buf), 700, "ok", NULL, 0, NULL), -EINVAL);
    assert_int_equal(cmtp_reply_format(buf, sizeof(buf), 250, "OK", NULL, 0, NULL), -EINVAL);
    assert_int_equal(cmtp_reply_format(buf, sizeof(buf), 250, "", NULL, 0, NULL), -EINVAL);
    assert_int_equal(cmtp_reply_format(buf, sizeof(buf), 250, "o k", NULL, 0, NULL), -EINVAL);
    assert_int_equal(cmtp_reply_format(buf, sizeof(buf), 250, "ok\r\n", NULL, 0, NULL), -EINVAL);
    assert_int_equal(cmtp_reply_format(buf, 8, 250, "ok", NULL, 0, NULL), -ENOSPC);
    assert_int_equal(cmtp_reply_format(buf, 9, 250, "ok", NULL, 0, NULL), 8);
    assert_int_equal(cmtp_reply_format(buf, 0, 250, "ok", NULL, 0, NULL), -ENOSPC);
}

static int parse(struct cmtp_reply *r, const char *s)
{
    return cmtp_reply_parse(r, s, strlen(s));
}

static void test_reply_parse(void **state)
{
    (void)state;
    struct cmtp_reply r;
    assert_int_equal(parse(&r, "220 ready proto=cmtp/1 host=mx.example size-max=67108864 "
                               "rcpt-max=1000 chunk-max=1048576 line-max=4096 txn-max=1000"),
                     0);
    assert_int_equal(r.code, 220);
    assert_int_equal(r.cls, 2);
    assert_true(cmtp_reply_status_is(&r, "ready"));
    assert_int_equal(r.nparams, 7);
    const struct cmtp_reply_param_view *p = cmtp_reply_param(&r, "HOST");
    assert_non_null(p);
    assert_int_equal(p->value_len, 10);
    assert_memory_equal(p->value, "mx.example", 10);
    assert_null(cmtp_reply_param(&r, "nope"));
    assert_null(r.text);

    assert_int_equal(parse(&r, "554 size-mismatch : got 3 octets: not 5"), 0);
    assert_int_equal(r.cls, 5);
    assert_int_equal(r.nparams, 0);
    assert_int_equal(r.text_len, strlen("got 3 octets: not 5"));
    assert_int_equal(parse(&r, "250 ok : "), 0);
    assert_non_null(r.text);
    assert_int_equal(r.text_len, 0);
    assert_int_equal(parse(&r, "601 bad-chunk"), 0);
    assert_int_equal(r.cls, 6);
    assert_int_equal(parse(&r, "251 relay next=a.example : x = y"), 0);
    assert_int_equal(r.nparams, 1);
    assert_int_equal(parse(&r, "250 ok k=a=b"), 0);
    assert_int_equal(r.params[0].value_len, 3);

    static const char *const bad[] = {
        "",
        "250",
        "250 ",
        "25 ok",
        "2500 ok",
        "250ok",
        "250  ok",
        "250 ok ",
        "250 OK",
        "250 o_k",
        "350 ok",
        "150 ok",
        "750 ok",
        "a50 ok",
        " 250 ok",
        "250 ok :",
        "250 ok :x",
        "250 ok x",
        "250 ok =v",
        "250 ok k=",
        "250 ok k=:v",
        "250 ok k=v k=w",
        "250 ok k=v K=w",
        "250 ok k_=v",
        "250 ok k=v  : t",
        "250 ok k=\x01",
        "250 ok : a\rb",
        "250 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "250 ok a=1 b=1 c=1 d=1 e=1 f=1 g=1 h=1 i=1 j=1 k=1 l=1 m=1 n=1 o=1 p=1 q=1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (parse(&r, bad[i]) != -EINVAL)
            fail_msg("bad reply %zu accepted: %s", i, bad[i]);
        assert_int_equal(r.code, 0);
    }
    assert_int_equal(parse(&r, "250 ok a=1 b=1 c=1 d=1 e=1 f=1 g=1 h=1 i=1 j=1 k=1 l=1 m=1 n=1 "
                               "o=1 p=1"),
                     0);
    assert_int_equal(r.nparams, CMTP_REPLY_PARAMS_MAX);
}

static void test_reply_roundtrip(void **state)
{
    (void)state;
    static const struct {
        unsigned code;
        const char *status;
        struct cmtp_param params[3];
        size_t n;
        const char *text;
    } cases[] = {
        {250, "accepted", {{"txn", TXID}, {"id", "q-1.2_3"}, {"rcpts", "3"}}, 3, NULL},
        {251, "relay", {{"next", "xn--bcher-kva.example"}}, 1, NULL},
        {451, "try-later", {{0}}, 0, "storage: unavailable"},
        {605, "timeout", {{0}}, 0, ""},
        {250, "ok", {{"k", "v\xc3\xa9"}}, 1, "t\xe2\x82\xac"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[CMTP_LINE_MAX + 1];
        struct cmtp_reply r;
        int n = cmtp_reply_format(buf, sizeof(buf), cases[i].code, cases[i].status, cases[i].params,
                                  cases[i].n, cases[i].text);
        assert_true(n > 2);
        /* through the framer, as a client sees it */
        struct cmtp_reader rd;
        struct cmtp_rd_item it;
        size_t c;
        cmtp_reader_init(&rd);
        assert_int_equal(cmtp_reader_next(&rd, (const uint8_t *)buf, (size_t)n, &c, &it),
                         CMTP_RD_LINE);
        assert_int_equal(c, (size_t)n);
        assert_int_equal(cmtp_reply_parse(&r, it.line, it.len), 0);
        assert_int_equal(r.code, cases[i].code);
        assert_true(cmtp_reply_status_is(&r, cases[i].status));
        assert_int_equal(r.nparams, cases[i].n);
        for (size_t k = 0; k < cases[i].n; k++) {
            const struct cmtp_reply_param_view *p = cmtp_reply_param(&r, cases[i].params[k].key);
            assert_non_null(p);
            assert_int_equal(p->value_len, strlen(cases[i].params[k].value));
            assert_memory_equal(p->value, cases[i].params[k].value, p->value_len);
        }
        if (cases[i].text != NULL && cases[i].text[0] != '\0') {
            assert_int_equal(r.text_len, strlen(cases[i].text));
            assert_memory_equal(r.text, cases[i].text, r.text_len);
        } else {
            assert_null(r.text);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reader_splits),    cmocka_unit_test(test_reader_line_max),
        cmocka_unit_test(test_reader_bad_bytes), cmocka_unit_test(test_parse_u64),
        cmocka_unit_test(test_cmd_split),        cmocka_unit_test(test_mail_parse),
        cmocka_unit_test(test_rcpt_index_parse), cmocka_unit_test(test_command_format_roundtrip),
        cmocka_unit_test(test_reply_format),     cmocka_unit_test(test_reply_parse),
        cmocka_unit_test(test_reply_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
