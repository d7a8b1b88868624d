/* tests/fuzz/fuzz_addr.c — libFuzzer target for the address parser (every flag combination), the
 * trace-record parser and the RFC 3339 time parser, with invariants checked on success. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"
#include "core/envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* check aborts with a message when |ok| is false (libFuzzer then records the input). */
#define check(ok)                                                                                  \
    do {                                                                                           \
        if (!(ok)) {                                                                               \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #ok, __FILE__, __LINE__);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* all_zero reports whether |n| octets at |p| are zero. */
static int all_zero(const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) {
        if (c[i] != 0)
            return 0;
    }
    return 1;
}

static void fuzz_addr(const char *in, size_t len, unsigned flags)
{
    struct cmtp_addr a, b;
    enum cmtp_addr_err e = cmtp_addr_parse(&a, in, len, flags);
    check(cmtp_addr_strerror(e) != NULL);
    if (e != CMTP_ADDR_OK) {
        check(all_zero(&a, sizeof(a)));
        return;
    }
    if (a.is_null) {
        check(flags & CMTP_ADDR_ALLOW_NULL);
        check(a.local_len == 0 && a.domain_len == 0 && a.local[0] == '\0' && a.domain[0] == '\0');
        char out[4];
        check(cmtp_addr_format(&a, out, sizeof(out)) == 0);
        check(cmtp_addr_parse(&b, out, 0, CMTP_ADDR_BARE | CMTP_ADDR_ALLOW_NULL) == CMTP_ADDR_OK);
        check(cmtp_addr_equal(&a, &b));
        return;
    }
    check(a.local_len == strlen(a.local));
    check(a.domain_len == strlen(a.domain));
    check(a.local_len >= 1 && a.local_len <= CMTP_LOCAL_MAX);
    check(a.domain_len >= 1 && a.domain_len <= CMTP_DOMAIN_MAX);
    check(a.local_len + 1 + a.domain_len <= CMTP_ADDR_MAX);
    check(cmtp_utf8_valid(a.local, a.local_len));
    for (size_t i = 0; i < a.domain_len; i++) {
        char c = a.domain[i];
        check((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.');
    }
    check(cmtp_domain_within(a.domain, a.domain));

    char out[CMTP_ADDR_MAX + 1];
    int n = cmtp_addr_format(&a, out, sizeof(out));
    check(n > 0 && (size_t)n == a.local_len + 1 + a.domain_len);
    check(cmtp_utf8_valid(out, (size_t)n));
    /* The normalized form is NFC and valid: it parses back, strictly, to an equal address. */
    e = cmtp_addr_parse(&b, out, (size_t)n, CMTP_ADDR_BARE | CMTP_ADDR_STRICT_NFC);
    if (e != CMTP_ADDR_OK)
        fprintf(stderr, "re-parse of \"%s\": %s\n", out, cmtp_addr_strerror(e));
    check(e == CMTP_ADDR_OK);
    check(cmtp_addr_equal(&a, &b));
    check(memcmp(&a, &b, sizeof(a)) == 0);
    /* Too small a buffer is refused, never overrun. */
    check(cmtp_addr_format(&a, out, (size_t)n) == -ENOSPC);
    /* The domain alone normalizes to itself. */
    char dom[CMTP_DOMAIN_MAX + 1];
    check(cmtp_addr_domain_normalize(dom, sizeof(dom), a.domain, a.domain_len) == CMTP_ADDR_OK);
    check(strcmp(dom, a.domain) == 0);
}

static void fuzz_trace(const char *in, size_t len)
{
    struct cmtp_trace t, u;
    char out[CMTP_LINE_MAX];
    if (cmtp_trace_parse(&t, in, len) != 0) {
        check(all_zero(&t, sizeof(t)));
        return;
    }
    check(t.hop >= 1 && t.hop <= CMTP_TRACE_MAX);
    int n = cmtp_trace_format(&t, out, sizeof(out));
    check(n > 0);
    check(cmtp_trace_parse(&u, out, (size_t)n) == 0);
    check(memcmp(&t, &u, sizeof(t)) == 0);
}

static void fuzz_time(const char *in, size_t len)
{
    int64_t t;
    char out[32];
    if (cmtp_time_parse(&t, in, len) != 0)
        return;
    /* Only the one canonical form parses, so formatting gives the input back. */
    check(cmtp_time_format(t, out, sizeof(out)) == 20);
    check(len == 20 && memcmp(out, in, 20) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Copy into an exact-size heap buffer so ASan sees any read past |size|. */
    char *in = malloc(size > 0 ? size : 1);
    if (in == NULL)
        return 0;
    if (size > 0)
        memcpy(in, data, size);
    for (unsigned flags = 0; flags < 8; flags++)
        fuzz_addr(in, size, flags);
    fuzz_trace(in, size);
    fuzz_time(in, size);
    free(in);
    return 0;
}
