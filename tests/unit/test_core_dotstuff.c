/* tests/unit/test_core_dotstuff.c — the SMTP/LMTP DATA encoder against an independent decoder:
 * random binary bodies split at random points, the nasty cases, long lines; the body scan. */
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

/* ---- reference model ---- */

struct buf {
    uint8_t *p;
    size_t len, cap;
};

static void buf_put(struct buf *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* canon writes the canonical form of |in|: CRLF, bare CR and bare LF all become CRLF, and an
 * unterminated last line gets CRLF (what the downstream reader must see). Written
 * independently of the encoder: first split into lines, then join. */
static void canon(struct buf *out, const uint8_t *in, size_t n)
{
    size_t start = 0, i = 0;
    while (i < n) {
        if (in[i] == '\r' || in[i] == '\n') {
            buf_put(out, in + start, i - start);
            buf_put(out, "\r\n", 2);
            if (in[i] == '\r' && i + 1 < n && in[i + 1] == '\n')
                i++;
            i++;
            start = i;
        } else {
            i++;
        }
    }
    if (start < n) {
        buf_put(out, in + start, n - start);
        buf_put(out, "\r\n", 2);
    }
}

/* undot decodes DATA octets the way a strict RFC 5321 receiver does: lines end at CRLF only,
 * the first line that is exactly "." ends the data, a leading "." is removed. It fails the test
 * if the data ends before the last octet, contains a bare CR or LF, or has no terminator. */
static void undot(struct buf *out, const uint8_t *p, size_t n)
{
    size_t i = 0;
    bool ended = false;
    while (i < n) {
        size_t j = i;
        while (j < n && p[j] != '\r' && p[j] != '\n')
            j++;
        assert_true(j + 1 < n);       /* every line is terminated */
        assert_int_equal(p[j], '\r'); /* no bare LF */
        assert_int_equal(p[j + 1], '\n');
        if (j - i == 1 && p[i] == '.') {
            ended = true;
            assert_int_equal(j + 2, n); /* the terminator is the very end */
            break;
        }
        size_t s = i;
        if (p[i] == '.')
            s++; /* a stuffed dot */
        buf_put(out, p + s, j + 2 - s);
        i = j + 2;
    }
    assert_true(ended);
}

static uint32_t rng_next(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

/* encode_all runs the encoder over |in| with input pieces of random sizes (1..|in_step_max|) and
 * output room of random sizes (2..|out_max|), then finishes. */
static void encode_all(struct buf *out, const uint8_t *in, size_t n, uint32_t *seed,
                       size_t in_step_max, size_t out_max)
{
    struct cmtp_dotstuff d;
    uint8_t tmp[4096];
    size_t off = 0;
    cmtp_dotstuff_init(&d);
    if (out_max > sizeof(tmp))
        out_max = sizeof(tmp);
    while (off < n) {
        size_t step = 1 + rng_next(seed) % in_step_max;
        if (step > n - off)
            step = n - off;
        size_t room = 2 + rng_next(seed) % (out_max - 1);
        size_t used = 0;
        size_t w = cmtp_dotstuff_encode(&d, in + off, step, &used, tmp, room);
        assert_true(w <= room);
        assert_true(used >= 1); /* room >= 2 always makes progress */
        assert_true(w <= 2 * used);
        buf_put(out, tmp, w);
        off += used;
    }
    int r = cmtp_dotstuff_finish(&d, tmp, CMTP_DOTSTUFF_OUT_MIN);
    assert_true(r == 3 || r == 5);
    buf_put(out, tmp, (size_t)r);
    assert_int_equal(d.in_total, n);
    assert_int_equal(d.out_total, out->len);
}

/* check_body encodes |in| several ways and checks the decoded result against canon(in). */
static void check_body(const uint8_t *in, size_t n, uint32_t seed)
{
    struct buf want = {0}, first = {0};
    canon(&want, in, n);
    for (int way = 0; way < 4; way++) {
        struct buf enc = {0}, dec = {0};
        size_t in_step = way == 0 ? (n ? n : 1) : way == 1 ? 1 : way == 2 ? 7 : 300;
        size_t out_max = way == 0 ? 4096 : way == 1 ? 2 : way == 2 ? 3 : 64;
        encode_all(&enc, in, n, &seed, in_step, out_max);
        undot(&dec, enc.p, enc.len);
        assert_int_equal(dec.len, want.len);
        if (want.len > 0)
            assert_memory_equal(dec.p, want.p, want.len);
        if (way == 0) {
            buf_put(&first, enc.p, enc.len);
        } else {
            /* The split never changes the output. */
            assert_int_equal(enc.len, first.len);
            assert_memory_equal(enc.p, first.p, first.len);
        }
        buf_free(&enc);
        buf_free(&dec);
    }
    buf_free(&want);
    buf_free(&first);
}

static void encode_simple(struct buf *out, const char *in, size_t n)
{
    uint32_t seed = 1;
    encode_all(out, (const uint8_t *)in, n, &seed, n ? n : 1, 4096);
}

static void expect_encoding_n(const char *in, size_t n, const char *want, size_t want_len)
{
    struct buf out = {0};
    encode_simple(&out, in, n);
    if (out.len != want_len || memcmp(out.p, want, out.len) != 0) {
        print_message("encoding mismatch for a %zu-octet input: got %zu octets\n", n, out.len);
        fail();
    }
    buf_free(&out);
}

/* expect_encoding checks the exact encoding of |in| (|n| octets) against the literal |want|. */
#define expect_encoding(in, n, want) expect_encoding_n(in, n, want, sizeof(want) - 1)

/* ---- tests ---- */

static void test_known_encodings(void **state)
{
    (void)state;
    expect_encoding("", 0, ".\r\n");
    expect_encoding("a", 1, "a\r\n.\r\n");
    expect_encoding("a\r\n", 3, "a\r\n.\r\n");
    expect_encoding(".", 1, "..\r\n.\r\n");
    expect_encoding(".\r\n", 3, "..\r\n.\r\n");
    expect_encoding("\r\n.\r\n", 5, "\r\n..\r\n.\r\n");
    expect_encoding("a\r\n.\r\nb", 7, "a\r\n..\r\nb\r\n.\r\n");
    expect_encoding("\n.\n", 3, "\r\n..\r\n.\r\n");
    expect_encoding("\r.\r", 3, "\r\n..\r\n.\r\n");
    expect_encoding("a\rb", 3, "a\r\nb\r\n.\r\n");
    expect_encoding("a\r\r\nb", 5, "a\r\n\r\nb\r\n.\r\n");
    expect_encoding("a\n\rb", 4, "a\r\n\r\nb\r\n.\r\n");
    expect_encoding("..x\r\n", 5, "...x\r\n.\r\n");
    expect_encoding("x.\r\n.y", 6, "x.\r\n..y\r\n.\r\n");
    expect_encoding("\0.\0\r\n", 5, "\0.\0\r\n.\r\n");
    expect_encoding("\r\n\r\n", 4, "\r\n\r\n.\r\n");
    expect_encoding("MAIL FROM:<x@y>\r\n.\r\nRCPT TO:<z@w>\r\n", 35,
                    "MAIL FROM:<x@y>\r\n..\r\nRCPT TO:<z@w>\r\n.\r\n");
}

static void test_nasty_cases_roundtrip(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t n;
    } cases[] = {
        {"\r\n.\r\n", 5},
        {"\n.\n", 3},
        {".\r\n", 3},
        {"\r.\r", 3},
        {"\0\0\0", 3},
        {".", 1},
        {"..", 2},
        {"\r", 1},
        {"\n", 1},
        {"\r\r\r", 3},
        {"\n\n\n", 3},
        {".\r", 2},
        {".\n", 2},
        {"\r\n.", 3},
        {"\r\n..\r\n.\r\n", 9},
        {"a\r\n.\r\n\r\n", 8},
        {"\n.\r\n", 4},
        {"\r.\n", 3},
        {"\r\n.\r\nQUIT\r\n", 11},
        {"\xff\xfe.\r\n.\xff", 7},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_body((const uint8_t *)cases[i].s, cases[i].n, (uint32_t)(i + 1) * 7919u);
    check_body(NULL, 0, 3);
}

static void test_random_bodies(void **state)
{
    (void)state;
    static const uint8_t alpha[] = {'.', '\r', '\n', 'a', 0, 0xff, '.', '\r', '\n', ' '};
    uint32_t seed = 12345;
    uint8_t body[600];
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = rng_next(&seed) % sizeof(body);
        bool binary = iter % 3 == 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t r = rng_next(&seed);
            body[i] = binary ? (uint8_t)r : alpha[r % sizeof(alpha)];
        }
        check_body(body, n, seed);
    }
}

static void test_every_split_point(void **state)
{
    (void)state;
    /* One body split in two at every octet, output room 2: same octets as in one piece. */
    static const char body[] = ".a\r\n.\r\n\n.\n\r.\r..\r\n.x\r\r\n.";
    size_t n = sizeof(body) - 1;
    struct buf whole = {0};
    encode_simple(&whole, body, n);
    for (size_t cut = 0; cut <= n; cut++) {
        struct cmtp_dotstuff d;
        struct buf out = {0};
        uint8_t tmp[2];
        cmtp_dotstuff_init(&d);
        size_t pieces[2][2] = {{0, cut}, {cut, n}};
        for (int k = 0; k < 2; k++) {
            size_t off = pieces[k][0];
            while (off < pieces[k][1]) {
                size_t used;
                size_t w = cmtp_dotstuff_encode(&d, (const uint8_t *)body + off, pieces[k][1] - off,
                                                &used, tmp, sizeof(tmp));
                assert_true(used > 0);
                buf_put(&out, tmp, w);
                off += used;
            }
        }
        uint8_t fin[8];
        int r = cmtp_dotstuff_finish(&d, fin, sizeof(fin));
        assert_true(r > 0);
        buf_put(&out, fin, (size_t)r);
        assert_int_equal(out.len, whole.len);
        assert_memory_equal(out.p, whole.p, whole.len);
        buf_free(&out);
    }
    buf_free(&whole);
}

static void test_long_lines(void **state)
{
    (void)state;
    /* No line-length limit: a 100000-octet line passes unchanged, never split. */
    size_t n = 100000;
    uint8_t *body = malloc(n + 3);
    assert_non_null(body);
    memset(body, 'x', n);
    body[0] = '.';
    memcpy(body + n, "\r\n.", 3);
    struct buf enc = {0};
    uint32_t seed = 9;
    encode_all(&enc, body, n + 3, &seed, 5000, 4096);
    assert_int_equal(enc.len, n + 1 + 2 + 2 + 2 + 3); /* "." doubled, "..\r\n" last, ".\r\n" */
    assert_int_equal(enc.p[0], '.');
    assert_int_equal(enc.p[1], '.');
    for (size_t i = 2; i < n + 1; i++)
        assert_int_equal(enc.p[i], 'x');
    check_body(body, n + 3, 77);
    buf_free(&enc);
    free(body);
}

static void test_api_limits(void **state)
{
    (void)state;
    struct cmtp_dotstuff d;
    uint8_t out[8];
    size_t used;
    cmtp_dotstuff_init(&d);
    /* Room 1: an ordinary octet fits, a dot at the start of a line does not. */
    assert_int_equal(cmtp_dotstuff_encode(&d, (const uint8_t *)".", 1, &used, out, 1), 0);
    assert_int_equal(used, 0);
    assert_int_equal(cmtp_dotstuff_encode(&d, (const uint8_t *)"a\n", 2, &used, out, 1), 1);
    assert_int_equal(used, 1);
    assert_int_equal(out[0], 'a');
    assert_int_equal(cmtp_dotstuff_encode(&d, (const uint8_t *)"\n", 1, &used, out, 1), 0);
    assert_int_equal(used, 0);
    /* Room 0 and NULL input consume nothing. */
    assert_int_equal(cmtp_dotstuff_encode(&d, (const uint8_t *)"b", 1, &used, out, 0), 0);
    assert_int_equal(used, 0);
    assert_int_equal(cmtp_dotstuff_encode(&d, NULL, 0, &used, out, sizeof(out)), 0);
    assert_int_equal(used, 0);
    /* finish needs 5 octets after an unterminated line, and fails cleanly with less. */
    assert_int_equal(cmtp_dotstuff_finish(&d, out, 4), -ENOBUFS);
    assert_int_equal(cmtp_dotstuff_finish(&d, out, 5), 5);
    assert_memory_equal(out, "\r\n.\r\n", 5);
    assert_int_equal(cmtp_dotstuff_finish(&d, out, 5), -EINVAL);
    /* Nothing is encoded after the end. */
    assert_int_equal(cmtp_dotstuff_encode(&d, (const uint8_t *)"c", 1, &used, out, 8), 0);
    assert_int_equal(used, 0);
    /* An empty body: 3 octets. */
    cmtp_dotstuff_init(&d);
    assert_int_equal(cmtp_dotstuff_finish(&d, out, 2), -ENOBUFS);
    assert_int_equal(cmtp_dotstuff_finish(&d, out, 3), 3);
    assert_memory_equal(out, ".\r\n", 3);
}

static void test_scan(void **state)
{
    (void)state;
    static const char body[] = "ab\r\ncd\nxyz\rq\r\r\n\0\xc3\xa9\r\nlast";
    size_t n = sizeof(body) - 1;
    struct cmtp_body_scan whole;
    memset(&whole, 0, sizeof(whole));
    cmtp_dotstuff_scan(&whole, (const uint8_t *)body, n);
    cmtp_dotstuff_scan_end(&whole);
    assert_int_equal(whole.size, n);
    assert_int_equal(whole.bare_lf, 1);
    assert_int_equal(whole.bare_cr, 2);
    assert_int_equal(whole.nul, 1);
    assert_true(whole.eight_bit);
    assert_int_equal(whole.line_max, 4); /* "last" */
    /* Every split gives the same summary. */
    for (size_t cut = 0; cut <= n; cut++) {
        struct cmtp_body_scan s;
        memset(&s, 0, sizeof(s));
        cmtp_dotstuff_scan(&s, (const uint8_t *)body, cut);
        cmtp_dotstuff_scan(&s, (const uint8_t *)body + cut, n - cut);
        cmtp_dotstuff_scan_end(&s);
        assert_int_equal(s.size, whole.size);
        assert_int_equal(s.line_max, whole.line_max);
        assert_int_equal(s.bare_cr, whole.bare_cr);
        assert_int_equal(s.bare_lf, whole.bare_lf);
        assert_int_equal(s.nul, whole.nul);
        assert_int_equal(s.eight_bit, whole.eight_bit);
    }
    struct cmtp_body_scan s7;
    memset(&s7, 0, sizeof(s7));
    cmtp_dotstuff_scan(&s7, (const uint8_t *)"plain\r\n7bit\r", 12);
    cmtp_dotstuff_scan_end(&s7);
    assert_false(s7.eight_bit);
    assert_int_equal(s7.bare_cr, 1);
    assert_int_equal(s7.line_max, 5);
}

/* Canonicalization only (BDAT without BINARYMIME): the output is canon() without the CRLF it adds
 * to an unterminated last line, no dot doubled, whatever the splits; finish is refused. */
static void test_canon_mode(void **state)
{
    (void)state;
    static const uint8_t alpha[] = {'.', '\r', '\n', 'a', 0, 0xff, '.', '\r', '\n', ' '};
    uint32_t seed = 777;
    uint8_t body[400], tmp[64];
    for (int iter = 0; iter < 2000; iter++) {
        size_t n = rng_next(&seed) % sizeof(body);
        for (size_t i = 0; i < n; i++)
            body[i] = alpha[rng_next(&seed) % sizeof(alpha)];
        struct buf want = {0}, got = {0};
        canon(&want, body, n);
        /* canon() ended an unterminated last line; the chunked body keeps it unterminated. */
        if (n > 0 && body[n - 1] != '\r' && body[n - 1] != '\n')
            want.len -= 2;
        struct cmtp_dotstuff d;
        cmtp_dotstuff_init_canon(&d);
        size_t off = 0;
        while (off < n) {
            size_t step = 1 + rng_next(&seed) % 50, used = 0;
            if (step > n - off)
                step = n - off;
            size_t room = 2 + rng_next(&seed) % (sizeof(tmp) - 1);
            size_t w = cmtp_dotstuff_encode(&d, body + off, step, &used, tmp, room);
            assert_true(used >= 1 && w <= room);
            buf_put(&got, tmp, w);
            off += used;
        }
        assert_int_equal(got.len, want.len);
        if (want.len > 0)
            assert_memory_equal(got.p, want.p, want.len);
        assert_int_equal(cmtp_dotstuff_finish(&d, tmp, sizeof(tmp)), -EINVAL);
        buf_free(&want);
        buf_free(&got);
    }
    /* A body already in CRLF form passes unchanged, dot lines included. */
    static const char crlf[] = "a\r\n.\r\n..\r\n.b";
    struct cmtp_dotstuff d;
    size_t used;
    cmtp_dotstuff_init_canon(&d);
    assert_int_equal(cmtp_dotstuff_encode(&d, (const uint8_t *)crlf, 13, &used, tmp, sizeof(tmp)),
                     13);
    assert_int_equal(used, 13);
    assert_memory_equal(tmp, crlf, 13);
    /* cmtp_body_scan_binary: NUL, bare CR, bare LF. */
    static const char *bins[] = {"a\0b", "a\rb", "a\nb", "a\r"};
    static const size_t blen[] = {3, 3, 3, 2};
    for (size_t i = 0; i < 4; i++) {
        struct cmtp_body_scan sc;
        memset(&sc, 0, sizeof(sc));
        cmtp_dotstuff_scan(&sc, (const uint8_t *)bins[i], blen[i]);
        cmtp_dotstuff_scan_end(&sc);
        assert_true(cmtp_body_scan_binary(&sc));
    }
    struct cmtp_body_scan text;
    memset(&text, 0, sizeof(text));
    cmtp_dotstuff_scan(&text, (const uint8_t *)"x\xc3\xa9\r\n.\r\n", 8);
    cmtp_dotstuff_scan_end(&text);
    assert_false(cmtp_body_scan_binary(&text));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_encodings),
        cmocka_unit_test(test_nasty_cases_roundtrip),
        cmocka_unit_test(test_random_bodies),
        cmocka_unit_test(test_every_split_point),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_api_limits),
        cmocka_unit_test(test_scan),
        cmocka_unit_test(test_canon_mode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
