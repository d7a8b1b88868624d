/* tests/fuzz/fuzz_route.c — libFuzzer target for core/route: the DNS answer TTL reader on any
 * message (never reads out of bounds; a found TTL is the smallest of its candidates), and the SRV
 * and MX orderings on any records and any random draws (output ordered, within the cap, made
 * only of the input's usable hosts). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            abort();                                                                               \
    } while (0)

/* draws is the random source: octets of the input, then zeros. */
struct draws {
    const uint8_t *p;
    size_t n, i;
};

static uint32_t draw(void *arg, uint32_t bound)
{
    struct draws *d = arg;
    uint32_t v = 0;
    for (int k = 0; k < 4; k++)
        v = v << 8 | (d->i < d->n ? d->p[d->i++] : 0);
    return v % bound;
}

static const char *const names[] = {"a.x.test",  "b.x.test", ".",      "",  "bad name",
                                    "C.X.TEST.", "a..b",     "x.test", "-", "mx.y.test"};

static bool in_input_srv(const struct cmtp_route_host *h, const uint8_t *recs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const uint8_t *r = recs + i * 7;
        uint16_t port = (uint16_t)(r[4] << 8 | r[5]);
        if (port == h->port)
            return true;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0] % 3;
    data++;
    size--;
    if (mode == 0) {
        uint8_t *copy = malloc(size ? size : 1);
        uint32_t ttl = 0xDEADBEEF;
        if (copy == NULL)
            return 0;
        memcpy(copy, data, size);
        int r = cmtp_route_dns_ttl(copy, size, &ttl);
        CHECK(r == 0 || r == -22 || r == -2);
        if (r != 0)
            CHECK(ttl == 0xDEADBEEF);
        else
            CHECK(ttl <= 0x7FFFFFFFu);
        free(copy);
        return 0;
    }
    /* Records: 7 octets each (priority, weight, port, name index), at most 40; the rest are the
     * random draws. */
    size_t n = size / 7 > 40 ? 40 : size / 7;
    const uint8_t *recs = data;
    struct draws d = {data + n * 7, size - n * 7, 0};
    struct cmtp_route_host out[CMTP_ROUTE_TARGETS_MAX];
    size_t n_out = 99;
    uint8_t cap = (uint8_t)(d.n > 0 ? d.p[0] % (CMTP_ROUTE_TARGETS_MAX + 1) : 16);
    if (mode == 1) {
        struct cmtp_route_srv v[40];
        for (size_t i = 0; i < n; i++) {
            const uint8_t *r = recs + i * 7;
            memset(&v[i], 0, sizeof(v[i]));
            v[i].priority = (uint16_t)(r[0] << 8 | r[1]);
            v[i].weight = (uint16_t)(r[2] << 8 | r[3]);
            v[i].port = (uint16_t)(r[4] << 8 | r[5]);
            strcpy(v[i].target, names[r[6] % (sizeof(names) / sizeof(names[0]))]);
        }
        enum cmtp_route_verdict vd = cmtp_route_from_srv(out, cap, &n_out, v, n, draw, &d);
        CHECK(n_out <= cap);
        CHECK(vd == CMTP_ROUTE_HOSTS || n_out == 0);
        for (size_t i = 0; i < n_out; i++) {
            CHECK(out[i].name[0] != '\0' && out[i].port != 0);
            CHECK(in_input_srv(&out[i], recs, n));
        }
        for (size_t i = 1; i < n_out; i++)
            CHECK(v[i - 1].priority <= v[i].priority);
    } else {
        struct cmtp_route_mx v[40];
        for (size_t i = 0; i < n; i++) {
            const uint8_t *r = recs + i * 7;
            memset(&v[i], 0, sizeof(v[i]));
            v[i].preference = (uint16_t)(r[0] << 8 | r[1]);
            strcpy(v[i].host, names[r[6] % (sizeof(names) / sizeof(names[0]))]);
        }
        enum cmtp_route_verdict vd = cmtp_route_from_mx(out, cap, &n_out, v, n, 25, draw, &d);
        CHECK(n_out <= cap);
        CHECK(vd == CMTP_ROUTE_HOSTS || n_out == 0);
        for (size_t i = 0; i < n_out; i++)
            CHECK(out[i].name[0] != '\0' && out[i].port == 25);
        /* Preferences never decrease along the output (v is reordered in place, kept first). */
        for (size_t i = 1; i < n_out; i++)
            CHECK(v[i - 1].preference <= v[i].preference);
    }
    return 0;
}
