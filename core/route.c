/* core/route.c — ordering of SRV and MX answers, address merging, DNS answer TTLs and the
 * fallback rule of routing by DNS. Pure: no resolver, no sockets, no clock. */
#include <errno.h>
#include <string.h>

#include "core/addr.h"
#include "core/route.h"

/* ---- names ---------------------------------------------------------------------------------- */

/* is_root reports whether |name| is the DNS root ("" or "."), the "no service" target. */
static bool is_root(const char *name)
{
    return name[0] == '\0' || (name[0] == '.' && name[1] == '\0');
}

/* host_check normalizes the host name |in| (a trailing dot allowed) into |out|. Returns false
 * when it is not a valid host name. */
static bool host_check(char out[CMTP_DOMAIN_MAX + 1], const char *in)
{
    size_t len = strnlen(in, CMTP_DOMAIN_MAX + 2);
    if (len > 0 && in[len - 1] == '.')
        len--;
    if (len == 0 || len > CMTP_DOMAIN_MAX)
        return false;
    return cmtp_addr_domain_normalize(out, CMTP_DOMAIN_MAX + 1, in, len) == CMTP_ADDR_OK;
}

/* ---- SRV ------------------------------------------------------------------------------------ */

/* srv_sort sorts |v| by ascending priority, stable (insertion sort: at most a few dozen). */
static void srv_sort(struct cmtp_route_srv *v, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        struct cmtp_route_srv x = v[i];
        size_t k = i;
        while (k > 0 && v[k - 1].priority > x.priority) {
            v[k] = v[k - 1];
            k--;
        }
        v[k] = x;
    }
}

/* srv_weigh puts the |n| records of one priority at |v| into RFC 2782's weighted order: zero
 * weights first, then repeatedly draw r in [0, sum] and take the first record whose running
 * sum reaches r. */
static void srv_weigh(struct cmtp_route_srv *v, size_t n, cmtp_route_rand_fn rnd, void *arg)
{
    /* Zero weights to the front, keeping the order otherwise. */
    size_t z = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i].weight == 0) {
            struct cmtp_route_srv x = v[i];
            memmove(&v[z + 1], &v[z], (i - z) * sizeof(*v));
            v[z++] = x;
        }
    }
    for (size_t done = 0; done + 1 < n; done++) {
        uint32_t sum = 0, run = 0, r;
        size_t pick = done;
        for (size_t i = done; i < n; i++)
            sum += v[i].weight;
        r = rnd(arg, sum + 1);
        for (size_t i = done; i < n; i++) {
            run += v[i].weight;
            if (run >= r) {
                pick = i;
                break;
            }
        }
        if (pick != done) {
            struct cmtp_route_srv x = v[pick];
            memmove(&v[done + 1], &v[done], (pick - done) * sizeof(*v));
            v[done] = x;
        }
    }
}

enum cmtp_route_verdict cmtp_route_from_srv(struct cmtp_route_host *out, size_t cap, size_t *n_out,
                                            struct cmtp_route_srv *srv, size_t n,
                                            cmtp_route_rand_fn rnd, void *arg)
{
    size_t kept = 0, k = 0;
    *n_out = 0;
    if (n == 1 && is_root(srv[0].target))
        return CMTP_ROUTE_NO_SERVICE;
    /* Keep the records with a usable target (normalized in place). */
    for (size_t i = 0; i < n; i++) {
        char name[CMTP_DOMAIN_MAX + 1];
        if (is_root(srv[i].target) || srv[i].port == 0 || !host_check(name, srv[i].target))
            continue;
        srv[kept] = srv[i];
        memcpy(srv[kept].target, name, sizeof(name));
        kept++;
    }
    if (kept == 0)
        return CMTP_ROUTE_NO_USABLE;
    srv_sort(srv, kept);
    for (size_t i = 0; i < kept; i = k) {
        for (k = i + 1; k < kept && srv[k].priority == srv[i].priority;)
            k++;
        srv_weigh(&srv[i], k - i, rnd, arg);
    }
    for (size_t i = 0; i < kept && *n_out < cap; i++) {
        memcpy(out[*n_out].name, srv[i].target, sizeof(out[*n_out].name));
        out[*n_out].port = srv[i].port;
        (*n_out)++;
    }
    return CMTP_ROUTE_HOSTS;
}

/* ---- MX ------------------------------------------------------------------------------------- */

enum cmtp_route_verdict cmtp_route_from_mx(struct cmtp_route_host *out, size_t cap, size_t *n_out,
                                           struct cmtp_route_mx *mx, size_t n, uint16_t port,
                                           cmtp_route_rand_fn rnd, void *arg)
{
    size_t kept = 0;
    *n_out = 0;
    if (n == 1 && is_root(mx[0].host))
        return CMTP_ROUTE_NO_SERVICE;
    for (size_t i = 0; i < n; i++) {
        char name[CMTP_DOMAIN_MAX + 1];
        if (is_root(mx[i].host) || !host_check(name, mx[i].host))
            continue;
        mx[kept] = mx[i];
        memcpy(mx[kept].host, name, sizeof(name));
        kept++;
    }
    if (kept == 0)
        return CMTP_ROUTE_NO_USABLE;
    /* Stable sort by preference, then shuffle each run of equal preference (Fisher-Yates). */
    for (size_t i = 1; i < kept; i++) {
        struct cmtp_route_mx x = mx[i];
        size_t k = i;
        while (k > 0 && mx[k - 1].preference > x.preference) {
            mx[k] = mx[k - 1];
            k--;
        }
        mx[k] = x;
    }
    for (size_t i = 0, k; i < kept; i = k) {
        for (k = i + 1; k < kept && mx[k].preference == mx[i].preference;)
            k++;
        for (size_t m = k - i; m > 1; m--) {
            size_t j = rnd(arg, (uint32_t)m);
            if (j != m - 1) {
                struct cmtp_route_mx x = mx[i + j];
                mx[i + j] = mx[i + m - 1];
                mx[i + m - 1] = x;
            }
        }
    }
    for (size_t i = 0; i < kept && *n_out < cap; i++) {
        memcpy(out[*n_out].name, mx[i].host, sizeof(out[*n_out].name));
        out[*n_out].port = port;
        (*n_out)++;
    }
    return CMTP_ROUTE_HOSTS;
}

/* ---- addresses ------------------------------------------------------------------------------ */

static bool addr_seen(const struct cmtp_route_addr *v, size_t n, const struct cmtp_route_addr *a)
{
    size_t len = a->family == 6 ? 16 : 4;
    for (size_t i = 0; i < n; i++) {
        if (v[i].family == a->family && memcmp(v[i].ip, a->ip, len) == 0)
            return true;
    }
    return false;
}

size_t cmtp_route_addrs_merge(struct cmtp_route_addr *out, size_t cap,
                              const struct cmtp_route_addr *v6, size_t n6,
                              const struct cmtp_route_addr *v4, size_t n4)
{
    size_t n = 0, i6 = 0, i4 = 0;
    bool six = true;
    while (n < cap && (i6 < n6 || i4 < n4)) {
        const struct cmtp_route_addr *a;
        if ((six && i6 < n6) || i4 >= n4)
            a = &v6[i6++];
        else
            a = &v4[i4++];
        six = !six;
        if ((a->family != 4 && a->family != 6) || addr_seen(out, n, a))
            continue;
        out[n] = *a;
        if (a->family == 4)
            memset(out[n].ip + 4, 0, 12);
        n++;
    }
    return n;
}

/* ---- DNS answer TTL ------------------------------------------------------------------------- */

#define DNS_HDR_LEN 12
#define DNS_TYPE_SOA 6

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* skip_name advances |*off| past the (possibly compressed) name at |*off| of |msg|. Only the
 * name's own octets are walked (a pointer ends it), so it cannot loop. Returns false when the
 * name does not fit or uses a reserved label type. */
static bool skip_name(const uint8_t *msg, size_t len, size_t *off)
{
    size_t o = *off, total = 0;
    for (;;) {
        if (o >= len)
            return false;
        uint8_t l = msg[o];
        if ((l & 0xC0) == 0xC0) {
            if (o + 2 > len)
                return false;
            *off = o + 2;
            return true;
        }
        if ((l & 0xC0) != 0)
            return false;
        o++;
        if (l == 0) {
            *off = o;
            return true;
        }
        total += (size_t)l + 1;
        if (total > 255 || o + l > len)
            return false;
        o += l;
    }
}

int cmtp_route_dns_ttl(const uint8_t *msg, size_t len, uint32_t *ttl)
{
    size_t off = DNS_HDR_LEN;
    unsigned qd, an, ns;
    bool have = false;
    uint32_t best = 0;
    if (msg == NULL || len < DNS_HDR_LEN)
        return -EINVAL;
    qd = get16(msg + 4);
    an = get16(msg + 6);
    ns = get16(msg + 8);
    for (unsigned i = 0; i < qd; i++) {
        if (!skip_name(msg, len, &off) || off + 4 > len)
            return -EINVAL;
        off += 4;
    }
    for (unsigned i = 0; i < an + (an == 0 ? ns : 0); i++) {
        uint16_t type, rdlen;
        uint32_t t;
        if (!skip_name(msg, len, &off) || off + 10 > len)
            return -EINVAL;
        type = get16(msg + off);
        t = get32(msg + off + 4);
        rdlen = get16(msg + off + 8);
        off += 10;
        if (off + rdlen > len)
            return -EINVAL;
        if (t > 0x7FFFFFFFu) /* RFC 2181 8: a TTL with the top bit set is zero */
            t = 0;
        if (i >= an) {
            /* Authority (only read without answers): the SOA's TTL and MINIMUM. */
            size_t r = off;
            if (type == DNS_TYPE_SOA && skip_name(msg, off + rdlen, &r) &&
                skip_name(msg, off + rdlen, &r) && r + 20 <= off + rdlen) {
                uint32_t min = get32(msg + r + 16);
                if (min < t)
                    t = min;
                if (!have || t < best)
                    best = t;
                have = true;
            }
        } else if (!have || t < best) {
            best = t;
            have = true;
        }
        off += rdlen;
    }
    if (!have)
        return -ENOENT;
    *ttl = best;
    return 0;
}

/* ---- fallback ------------------------------------------------------------------------------- */

bool cmtp_route_fallback_ok(enum cmtp_fallback fallback, bool no_cmtp_route, bool all_unreachable)
{
    if (fallback == CMTP_FALLBACK_NONE)
        return false;
    return no_cmtp_route || all_unreachable;
}
