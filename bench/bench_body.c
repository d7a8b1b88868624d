/* bench/bench_body.c — message bodies for the load generator: filler text, the size mix, the
 * digest and SMTP form of each distinct body computed once. Not per-message work: the pool is
 * built before the run starts. */
#include "bench/bench_body.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/sha.h>

/* BENCH_BODY_HEADER is the header block at the front of every body large enough for it. */
#define BENCH_BODY_HEADER                                                                          \
    "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"                                                    \
    "From: <bench@bench.example>\r\n"                                                              \
    "To: <sink@bench.example>\r\n"                                                                 \
    "Message-ID: <cmtp-bench@bench.example>\r\n"                                                   \
    "Subject: cmtp-bench load\r\n"                                                                 \
    "\r\n"
#define HEADER_LEN (sizeof(BENCH_BODY_HEADER) - 1)

struct bench_bodies {
    uint8_t *text; /* the shared text every body is a prefix of */
    size_t text_len;
    size_t count;
    double mean;
    struct bench_body *bodies;
    uint8_t **stuffed; /* per body: its own dot-stuffed copy, or NULL */
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

void bench_rng_seed(struct bench_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t bench_rng_next(struct bench_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t bench_rng_range(struct bench_rng *r, uint64_t lo, uint64_t hi)
{
    uint64_t span = hi - lo + 1;

    if (span == 0) /* the whole 64-bit range */
        return bench_rng_next(r);
    return lo + bench_rng_next(r) % span; /* the modulo bias is irrelevant here */
}

int bench_size_parse(const char *s, struct bench_size_spec *out)
{
    uint64_t v = 0, mul = 1;
    const char *p = s;

    memset(out, 0, sizeof(*out));
    if (strcasecmp(s, "mix") == 0) {
        out->mix = true;
        return 0;
    }
    if (*p < '0' || *p > '9')
        return -EINVAL;
    while (*p >= '0' && *p <= '9') {
        if (v > BENCH_BODY_SIZE_MAX)
            return -EINVAL;
        v = v * 10 + (uint64_t)(*p - '0');
        p++;
    }
    if (*p == 'k' || *p == 'K')
        mul = 1024, p++;
    else if (*p == 'm' || *p == 'M')
        mul = 1024 * 1024, p++;
    if (*p != '\0' || v == 0 || v > BENCH_BODY_SIZE_MAX / mul)
        return -EINVAL;
    out->size = v * mul;
    return 0;
}

void bench_size_name(const struct bench_size_spec *spec, char *out, size_t out_size)
{
    if (spec->mix)
        snprintf(out, out_size, "mix");
    else if (spec->size % (1024 * 1024) == 0)
        snprintf(out, out_size, "%llum", (unsigned long long)(spec->size / (1024 * 1024)));
    else if (spec->size % 1024 == 0)
        snprintf(out, out_size, "%lluk", (unsigned long long)(spec->size / 1024));
    else
        snprintf(out, out_size, "%llu", (unsigned long long)spec->size);
}

/* fill_line writes one line of |n| >= 2 octets: n - 2 filler characters and CRLF. */
static void fill_line(uint8_t *out, size_t n, struct bench_rng *r)
{
    static const char alpha[] = "abcdefghijklmnopqrstuvwxyz"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,;-";
    uint64_t bits = 0;
    unsigned left = 0;

    for (size_t i = 0; i + 2 < n; i++) {
        if (left == 0) {
            bits = bench_rng_next(r);
            left = 10; /* 10 six-bit draws per 64 bits */
        }
        out[i] = (uint8_t)alpha[(bits & 63u) % (sizeof(alpha) - 1)];
        bits >>= 6;
        left--;
    }
    if (n >= 2 && out[0] == ' ')
        out[0] = 'x'; /* no folded-header look-alike at a line start */
    out[n - 2] = '\r';
    out[n - 1] = '\n';
}

void bench_body_fill(uint8_t *out, size_t len, struct bench_rng *r)
{
    size_t pos = 0;

    if (len == 1) {
        out[0] = 'x';
        return;
    }
    while (pos < len) {
        size_t rem = len - pos, n;
        if (rem <= BENCH_BODY_LINE)
            n = rem;
        else if (rem <= 2 * BENCH_BODY_LINE)
            n = rem / 2; /* two lines, each >= 32 octets: never a 1-octet tail */
        else
            n = BENCH_BODY_LINE;
        fill_line(out + pos, n, r);
        pos += n;
    }
}

uint8_t *bench_dot_stuff(const uint8_t *in, size_t len, size_t *out_len)
{
    size_t dots = 0, j = 0;
    uint8_t *out;

    for (size_t i = 0; i < len; i++)
        if (in[i] == '.' && (i == 0 || in[i - 1] == '\n'))
            dots++;
    *out_len = len;
    if (dots == 0)
        return NULL;
    out = malloc(len + dots);
    if (out == NULL) {
        *out_len = 0;
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '.' && (i == 0 || in[i - 1] == '\n'))
            out[j++] = '.';
        out[j++] = in[i];
    }
    *out_len = j;
    return out;
}

/* make_text builds the shared text of |len| octets: the header block (when it fits) then
 * filler lines. */
static uint8_t *make_text(size_t len, struct bench_rng *r)
{
    uint8_t *t = malloc(len);

    if (t == NULL)
        return NULL;
    if (len >= HEADER_LEN + 2) {
        memcpy(t, BENCH_BODY_HEADER, HEADER_LEN);
        bench_body_fill(t + HEADER_LEN, len - HEADER_LEN, r);
    } else {
        bench_body_fill(t, len, r);
    }
    return t;
}

/* mix_size draws one size of the mix distribution (see bench_body.h). */
static size_t mix_size(struct bench_rng *r)
{
    uint64_t pct = bench_rng_range(r, 0, 99), lo, hi, v;

    if (pct < 70)
        lo = 2 * 1024, hi = 8 * 1024;
    else if (pct < 95)
        lo = 16 * 1024, hi = 128 * 1024;
    else
        lo = 256 * 1024, hi = BENCH_MIX_MAX;
    v = bench_rng_range(r, lo, hi);
    /* Whole filler lines after the header, so that each prefix of the text ends in CRLF. */
    v = HEADER_LEN + (v - HEADER_LEN) / BENCH_BODY_LINE * BENCH_BODY_LINE;
    return (size_t)v;
}

/* body_finish computes the digest and the SMTP form of body |i|. */
static int body_finish(struct bench_bodies *b, size_t i)
{
    struct bench_body *bd = &b->bodies[i];
    size_t slen;
    uint8_t *st;

    SHA256(bd->data, bd->len, bd->digest);
    st = bench_dot_stuff(bd->data, bd->len, &slen);
    if (st == NULL && slen == 0)
        return -ENOMEM;
    b->stuffed[i] = st;
    bd->smtp = st != NULL ? st : bd->data;
    bd->smtp_len = slen;
    bd->smtp_tail = (bd->len >= 2 && bd->data[bd->len - 2] == '\r' && bd->data[bd->len - 1] == '\n')
                        ? ".\r\n"
                        : "\r\n.\r\n";
    return 0;
}

struct bench_bodies *bench_bodies_new(const struct bench_size_spec *spec, uint64_t seed)
{
    struct bench_bodies *b = calloc(1, sizeof(*b));
    struct bench_rng r;
    double sum = 0;

    if (b == NULL)
        return NULL;
    bench_rng_seed(&r, seed);
    if (spec->mix) {
        b->count = BENCH_MIX_POOL;
        b->text_len = BENCH_MIX_MAX + HEADER_LEN + 4 * BENCH_BODY_LINE;
    } else {
        if (spec->size == 0 || spec->size > BENCH_BODY_SIZE_MAX)
            goto err;
        b->count = 1;
        b->text_len = (size_t)spec->size;
    }
    b->bodies = calloc(b->count, sizeof(*b->bodies));
    b->stuffed = calloc(b->count, sizeof(*b->stuffed));
    if (b->bodies == NULL || b->stuffed == NULL)
        goto err;
    b->text = make_text(b->text_len, &r);
    if (b->text == NULL)
        goto err;
    for (size_t i = 0; i < b->count; i++) {
        b->bodies[i].data = b->text;
        b->bodies[i].len = spec->mix ? mix_size(&r) : b->text_len;
        if (body_finish(b, i) < 0)
            goto err;
        sum += (double)b->bodies[i].len;
    }
    b->mean = sum / (double)b->count;
    return b;
err:
    bench_bodies_free(b);
    return NULL;
}

void bench_bodies_free(struct bench_bodies *b)
{
    if (b == NULL)
        return;
    if (b->stuffed != NULL)
        for (size_t i = 0; i < b->count; i++)
            free(b->stuffed[i]);
    free(b->stuffed);
    free(b->bodies);
    free(b->text);
    free(b);
}

size_t bench_bodies_count(const struct bench_bodies *b)
{
    return b->count;
}

const struct bench_body *bench_bodies_get(const struct bench_bodies *b, size_t i)
{
    return &b->bodies[i];
}

const struct bench_body *bench_bodies_pick(const struct bench_bodies *b, struct bench_rng *r)
{
    if (b->count == 1)
        return &b->bodies[0];
    return &b->bodies[bench_rng_next(r) % b->count];
}

double bench_bodies_mean(const struct bench_bodies *b)
{
    return b->mean;
}
