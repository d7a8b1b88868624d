/* core/envelope.c — the originator's policy decisions, envelope keywords, transaction ids, trace
 * records and RFC 3339 times. Pure data and decisions; not the wire codec (core/proto.c). */
#include "core/envelope.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

void cmtp_policy_init(struct cmtp_policy *p)
{
    p->relay = CMTP_RELAY_NONE;
    p->fallback = CMTP_FALLBACK_NONE;
    p->hops = CMTP_HOPS_DEFAULT;
}

bool cmtp_policy_allows_relay(const struct cmtp_policy *p, const char *rcpt_domain,
                              const char *next_hop)
{
    if (p == NULL || p->hops == 0)
        return false;
    switch (p->relay) {
    case CMTP_RELAY_NONE:
        return false;
    case CMTP_RELAY_ANY:
        return true;
    case CMTP_RELAY_DOMAIN:
        /* The mail must stay inside the recipient's administrative domain. */
        return next_hop != NULL && rcpt_domain != NULL && rcpt_domain[0] != '\0' &&
               cmtp_domain_within(next_hop, rcpt_domain);
    }
    return false; /* an out-of-range value fails closed */
}

/* keyword tables, indexed by enum value. */
static const char *const relay_names[] = {"none", "domain", "any"};
static const char *const fallback_names[] = {"none", "smtp-verified", "smtp-tls", "smtp"};
static const char *const role_names[] = {"final", "relay"};

#define NAMES_LEN(a) (sizeof(a) / sizeof((a)[0]))

const char *cmtp_relay_name(enum cmtp_relay r)
{
    return (unsigned)r < NAMES_LEN(relay_names) ? relay_names[r] : NULL;
}

const char *cmtp_fallback_name(enum cmtp_fallback f)
{
    return (unsigned)f < NAMES_LEN(fallback_names) ? fallback_names[f] : NULL;
}

const char *cmtp_role_name(enum cmtp_role r)
{
    return (unsigned)r < NAMES_LEN(role_names) ? role_names[r] : NULL;
}

/* keyword_eq reports whether |len| octets at |s| equal |kw| ignoring ASCII case. */
static bool keyword_eq(const char *s, size_t len, const char *kw)
{
    size_t kl = strlen(kw);
    if (len != kl || (len > 0 && s == NULL))
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != kw[i])
            return false;
    }
    return true;
}

/* keyword_find returns the index of the keyword of |names| equal to |s|, or -1. */
static int keyword_find(const char *const *names, size_t count, const char *s, size_t len)
{
    for (size_t i = 0; i < count; i++) {
        if (keyword_eq(s, len, names[i]))
            return (int)i;
    }
    return -1;
}

int cmtp_relay_parse(enum cmtp_relay *out, const char *s, size_t len)
{
    int i = keyword_find(relay_names, NAMES_LEN(relay_names), s, len);
    if (i < 0)
        return -EINVAL;
    *out = (enum cmtp_relay)i;
    return 0;
}

int cmtp_fallback_parse(enum cmtp_fallback *out, const char *s, size_t len)
{
    int i = keyword_find(fallback_names, NAMES_LEN(fallback_names), s, len);
    if (i < 0)
        return -EINVAL;
    *out = (enum cmtp_fallback)i;
    return 0;
}

int cmtp_policy_parse_text(struct cmtp_policy *p, unsigned *set, const char *s, size_t len,
                           bool spaces)
{
    struct cmtp_policy np = *p;
    unsigned bits = 0;
    size_t i = 0;
    if (len == 0 || len > CMTP_POLICY_TEXT_MAX)
        return -EINVAL;
    while (i <= len) {
        size_t j = i;
        while (j < len && s[j] != ',' && !(spaces && s[j] == ' '))
            j++;
        const char *item = s + i;
        size_t n = j - i;
        i = j + 1;
        if (n == 0 && spaces)
            continue; /* runs of separators */
        const char *colon = memchr(item, ':', n);
        if (colon == NULL)
            return -EINVAL;
        size_t kn = (size_t)(colon - item);
        const char *v = colon + 1;
        size_t vn = n - kn - 1;
        if (vn == 0)
            return -EINVAL;
        if (keyword_eq(item, kn, "relay")) {
            if ((bits & CMTP_POLICY_SET_RELAY) || cmtp_relay_parse(&np.relay, v, vn) != 0)
                return -EINVAL;
            bits |= CMTP_POLICY_SET_RELAY;
        } else if (keyword_eq(item, kn, "fallback")) {
            if ((bits & CMTP_POLICY_SET_FALLBACK) || cmtp_fallback_parse(&np.fallback, v, vn) != 0)
                return -EINVAL;
            bits |= CMTP_POLICY_SET_FALLBACK;
        } else if (keyword_eq(item, kn, "hops")) {
            unsigned h = 0;
            /* 0..32, no leading zero, no sign. */
            if (vn > 2 || (vn == 2 && v[0] == '0') || (bits & CMTP_POLICY_SET_HOPS))
                return -EINVAL;
            for (size_t k = 0; k < vn; k++) {
                if (v[k] < '0' || v[k] > '9')
                    return -EINVAL;
                h = h * 10u + (unsigned)(v[k] - '0');
            }
            if (h > CMTP_HOPS_MAX)
                return -EINVAL;
            np.hops = h;
            bits |= CMTP_POLICY_SET_HOPS;
        } else {
            return -EINVAL;
        }
    }
    if (bits == 0)
        return -EINVAL;
    *p = np;
    *set = bits;
    return 0;
}

int cmtp_role_parse(enum cmtp_role *out, const char *s, size_t len)
{
    int i = keyword_find(role_names, NAMES_LEN(role_names), s, len);
    if (i < 0)
        return -EINVAL;
    *out = (enum cmtp_role)i;
    return 0;
}

bool cmtp_txid_valid(const char *s, size_t len)
{
    if (s == NULL || len < CMTP_TXID_MIN || len > CMTP_TXID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* ---- RFC 3339 times ---- */

/* TIME_LEN is the length of `YYYY-MM-DDTHH:MM:SSZ`. */
#define TIME_LEN 20

/* days_from_civil returns the number of days from 1970-01-01 to |y|-|m|-|d| in the proleptic
 * Gregorian calendar (H. Hinnant's algorithm; exact for every year we accept). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* civil_from_days is the inverse of days_from_civil. */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool leap_year(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
    static const unsigned char dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && leap_year(y))
        return 29;
    return dim[m - 1];
}

/* Seconds of 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range a four-digit year can
 * express. */
#define TIME_MIN (-62167219200LL)
#define TIME_MAX (253402300799LL)

int cmtp_time_format(int64_t t, char *out, size_t out_size)
{
    if (t < TIME_MIN || t > TIME_MAX)
        return -EINVAL;
    if (out == NULL || out_size < TIME_LEN + 1)
        return -ENOSPC;
    int64_t days = t / 86400;
    int64_t secs = t % 86400;
    if (secs < 0) {
        secs += 86400;
        days--;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    unsigned hh = (unsigned)(secs / 3600);
    unsigned mm = (unsigned)(secs / 60 % 60);
    unsigned ss = (unsigned)(secs % 60);
    int n =
        snprintf(out, out_size, "%04u-%02u-%02uT%02u:%02u:%02uZ", (unsigned)y, m, d, hh, mm, ss);
    if (n != TIME_LEN)
        return -EINVAL;
    return n;
}

/* digits parses exactly |n| ASCII digits at |s|. Returns the value, or -1. */
static int digits(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

int cmtp_time_parse(int64_t *t, const char *s, size_t len)
{
    if (s == NULL || len != TIME_LEN)
        return -EINVAL;
    if (s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[19] != 'Z')
        return -EINVAL;
    int y = digits(s, 4);
    int mo = digits(s + 5, 2);
    int d = digits(s + 8, 2);
    int h = digits(s + 11, 2);
    int mi = digits(s + 14, 2);
    int se = digits(s + 17, 2);
    if (y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 || se < 0 ||
        se > 59)
        return -EINVAL; /* leap seconds (:60) have no POSIX time and are refused */
    if ((unsigned)d > days_in_month(y, (unsigned)mo))
        return -EINVAL;
    *t = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + se;
    return 0;
}

/* ---- trace records ---- */

/* tls_char: a tls= value is 1..63 of [A-Za-z0-9._/+-] (e.g. TLSv1.3/TLS_AES_128_GCM_SHA256). */
static bool tls_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-' || c == '/' || c == '+';
}

static bool tls_valid(const char *s, size_t len)
{
    if (len == 0 || len >= sizeof(((struct cmtp_trace *)0)->tls))
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!tls_char(s[i]))
            return false;
    }
    return true;
}

/* trace_domain parses a domain field (|len| octets at |s|) into |out| (CMTP_DOMAIN_MAX + 1
 * octets): a domain, normalized to lower-case A-labels, or "-" when |dash_ok|. */
static int trace_domain(char *out, const char *s, size_t len, bool dash_ok)
{
    if (dash_ok && len == 1 && s[0] == '-') {
        out[0] = '-';
        out[1] = '\0';
        return 0;
    }
    if (cmtp_addr_domain_normalize(out, CMTP_DOMAIN_MAX + 1, s, len) != CMTP_ADDR_OK)
        return -EINVAL;
    return 0;
}

/* trace_domain_ok reports whether the NUL-terminated |s| is a normalized domain (or "-"). */
static bool trace_domain_ok(const char *s, size_t cap, bool dash_ok)
{
    char tmp[CMTP_DOMAIN_MAX + 1];
    size_t len = strnlen(s, cap);
    if (len == cap)
        return false;
    if (dash_ok && len == 1 && s[0] == '-')
        return true;
    if (cmtp_addr_domain_normalize(tmp, sizeof(tmp), s, len) != CMTP_ADDR_OK)
        return false;
    return strcmp(tmp, s) == 0;
}

int cmtp_trace_format(const struct cmtp_trace *t, char *out, size_t out_size)
{
    char at[TIME_LEN + 1];
    const char *role = cmtp_role_name(t->role);
    size_t tls_len = strnlen(t->tls, sizeof(t->tls));

    if (out == NULL || out_size == 0)
        return -ENOSPC;
    out[0] = '\0';
    /* Only a record that parses back is written: its fields came from peers. */
    if (t->hop < 1 || t->hop > CMTP_TRACE_MAX || role == NULL ||
        !trace_domain_ok(t->by, sizeof(t->by), false) ||
        !trace_domain_ok(t->from, sizeof(t->from), true) ||
        !trace_domain_ok(t->peer_id, sizeof(t->peer_id), true) || !tls_valid(t->tls, tls_len))
        return -EINVAL;
    if (cmtp_time_format(t->at, at, sizeof(at)) < 0)
        return -EINVAL;
    int n = snprintf(out, out_size, "hop=%u by=%s from=%s at=%s tls=%s peer-id=%s role=%s", t->hop,
                     t->by, t->from, at, t->tls, t->peer_id, role);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n >= out_size) {
        out[0] = '\0';
        return -ENOSPC;
    }
    return n;
}

/* TRACE_LINE_MAX bounds the arguments of a TRACE line: they came in one command line. */
#define TRACE_LINE_MAX CMTP_LINE_MAX

/* trace_field takes the next field `key=value` from |*s| (|*len| octets left). The key must
 * be |key| (ASCII case-insensitive); the value runs to the next SP or the end and is not empty.
 * |last| says whether this is the final field (no SP after it) or not (exactly one SP). */
static int trace_field(const char **s, size_t *len, const char *key, bool last, const char **val,
                       size_t *val_len)
{
    size_t kl = strlen(key);
    if (*len < kl + 1 || !keyword_eq(*s, kl, key) || (*s)[kl] != '=')
        return -EINVAL;
    const char *v = *s + kl + 1;
    size_t rest = *len - kl - 1;
    size_t vl = 0;
    while (vl < rest && v[vl] != ' ')
        vl++;
    if (vl == 0)
        return -EINVAL;
    if (last) {
        if (vl != rest)
            return -EINVAL;
        *s = v + vl;
        *len = 0;
    } else {
        if (vl == rest)
            return -EINVAL; /* a field is missing */
        /* exactly one SP: the next field must not start with another SP (checked by its key) */
        *s = v + vl + 1;
        *len = rest - vl - 1;
    }
    *val = v;
    *val_len = vl;
    return 0;
}

int cmtp_trace_parse(struct cmtp_trace *t, const char *s, size_t len)
{
    struct cmtp_trace r;
    const char *v;
    size_t vl;

    memset(t, 0, sizeof(*t));
    if (s == NULL || len == 0 || len > TRACE_LINE_MAX)
        return -EINVAL;
    memset(&r, 0, sizeof(r));

    /* hop: 1..CMTP_TRACE_MAX, decimal, no leading zero. */
    if (trace_field(&s, &len, "hop", false, &v, &vl) < 0 || vl > 2 || v[0] == '0')
        return -EINVAL;
    int hop = digits(v, vl);
    if (hop < 1 || hop > CMTP_TRACE_MAX)
        return -EINVAL;
    r.hop = (unsigned)hop;

    if (trace_field(&s, &len, "by", false, &v, &vl) < 0 || trace_domain(r.by, v, vl, false) < 0)
        return -EINVAL;
    if (trace_field(&s, &len, "from", false, &v, &vl) < 0 || trace_domain(r.from, v, vl, true) < 0)
        return -EINVAL;
    if (trace_field(&s, &len, "at", false, &v, &vl) < 0 || cmtp_time_parse(&r.at, v, vl) < 0)
        return -EINVAL;
    if (trace_field(&s, &len, "tls", false, &v, &vl) < 0 || !tls_valid(v, vl))
        return -EINVAL;
    memcpy(r.tls, v, vl);
    r.tls[vl] = '\0';
    if (trace_field(&s, &len, "peer-id", false, &v, &vl) < 0 ||
        trace_domain(r.peer_id, v, vl, true) < 0)
        return -EINVAL;
    /* role: exact lower-case keyword (values are case-sensitive on the wire). */
    if (trace_field(&s, &len, "role", true, &v, &vl) < 0)
        return -EINVAL;
    if (vl == 5 && memcmp(v, "final", 5) == 0)
        r.role = CMTP_ROLE_FINAL;
    else if (vl == 5 && memcmp(v, "relay", 5) == 0)
        r.role = CMTP_ROLE_RELAY;
    else
        return -EINVAL;
    memcpy(t, &r, sizeof(r)); /* padding included: records compare with memcmp */
    return 0;
}
