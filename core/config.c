/* core/config.c — the daemon's INI configuration (libinih): defaults, typed and range-checked
 * values, lists, cross-field checks, messages naming file:line and key. Not reload or I/O policy.
 */
#include "core/config.h"

#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"

/* ---------------------------------------------------------------------------------------------
 * Small value parsers. Each returns 0, or -1 with a short reason in |why| (WHY_LEN octets).
 */

#define WHY_LEN 256

/* VALUE_ECHO_MAX bounds how much of a bad value a message repeats. */
#define VALUE_ECHO_MAX 64

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* ieq reports whether |a| (|len| octets) equals the lower-case |b|, ignoring ASCII case. */
static bool ieq(const char *a, size_t len, const char *b)
{
    if (strlen(b) != len)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (lower(a[i]) != b[i])
            return false;
    }
    return true;
}

/* echo copies at most VALUE_ECHO_MAX octets of |s| into |dst| (VALUE_ECHO_MAX + 4 octets),
 * every octet outside printable ASCII replaced by '?', "..." appended when cut. Messages never
 * carry raw control characters. */
static void echo(char *dst, const char *s, size_t len)
{
    size_t n = len > VALUE_ECHO_MAX ? VALUE_ECHO_MAX : len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[i] = (c >= 0x20 && c < 0x7F) ? (char)c : '?';
    }
    if (n < len) {
        memcpy(dst + n, "...", 4);
    } else {
        dst[n] = '\0';
    }
}

/* parse_u64 parses 1..20 decimal digits (no sign, no space). Returns 0, or -1 on a bad digit or
 * overflow. */
static int parse_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 20)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (!is_digit(s[i]))
            return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* digits_prefix returns how many decimal digits start |s|. */
static size_t digits_prefix(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len && is_digit(s[i]))
        i++;
    return i;
}

static int parse_bool(const char *v, bool *out)
{
    size_t len = strlen(v);
    if (ieq(v, len, "true") || ieq(v, len, "yes") || ieq(v, len, "on") || ieq(v, len, "1")) {
        *out = true;
        return 0;
    }
    if (ieq(v, len, "false") || ieq(v, len, "no") || ieq(v, len, "off") || ieq(v, len, "0")) {
        *out = false;
        return 0;
    }
    return -1;
}

/* parse_size parses `<digits>[k|m|g]` (KiB, MiB, GiB; either case) into octets. */
static int parse_size(const char *v, uint64_t *out)
{
    size_t len = strlen(v);
    size_t nd = digits_prefix(v, len);
    uint64_t n, mul = 1;
    if (nd == 0 || parse_u64(v, nd, &n) < 0)
        return -1;
    if (len - nd > 1)
        return -1;
    if (len - nd == 1) {
        switch (lower(v[nd])) {
        case 'k':
            mul = 1024;
            break;
        case 'm':
            mul = 1024 * 1024;
            break;
        case 'g':
            mul = 1024 * 1024 * 1024;
            break;
        default:
            return -1;
        }
    }
    if (n > UINT64_MAX / mul)
        return -1;
    *out = n * mul;
    return 0;
}

/* parse_duration parses `<digits><unit>` with unit ms, s, m, h or d into milliseconds. The unit
 * is required: a bare number is ambiguous. */
static int parse_duration(const char *v, uint64_t *out_ms)
{
    size_t len = strlen(v);
    size_t nd = digits_prefix(v, len);
    uint64_t n, mul;
    if (nd == 0 || parse_u64(v, nd, &n) < 0)
        return -1;
    const char *u = v + nd;
    size_t ul = len - nd;
    if (ieq(u, ul, "ms"))
        mul = 1;
    else if (ieq(u, ul, "s"))
        mul = 1000;
    else if (ieq(u, ul, "m"))
        mul = 60 * 1000;
    else if (ieq(u, ul, "h"))
        mul = 3600 * 1000;
    else if (ieq(u, ul, "d"))
        mul = 24ull * 3600 * 1000;
    else
        return -1;
    if (n > UINT64_MAX / mul)
        return -1;
    *out_ms = n * mul;
    return 0;
}

/* parse_mode parses 1..4 octal digits (e.g. 0600) into permission bits <= 0777. */
static int parse_mode(const char *v, unsigned *out)
{
    size_t len = strlen(v);
    unsigned m = 0;
    if (len == 0 || len > 4)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '7')
            return -1;
        m = m * 8 + (unsigned)(v[i] - '0');
    }
    if (m > 0777)
        return -1;
    *out = m;
    return 0;
}

/* parse_ipv4 parses a dotted quad with no leading zeros (so nobody reads it as octal). */
static bool parse_ipv4(const char *s, size_t len, uint8_t out[4])
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        size_t nd = digits_prefix(s + i, len - i);
        uint64_t v;
        if (nd == 0 || nd > 3 || (nd > 1 && s[i] == '0') || parse_u64(s + i, nd, &v) < 0 || v > 255)
            return false;
        out[part] = (uint8_t)v;
        i += nd;
        if (part < 3) {
            if (i >= len || s[i] != '.')
                return false;
            i++;
        }
    }
    return i == len;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* parse_ipv6 parses an IPv6 address (RFC 4291 text: "::" once, an IPv4 tail allowed; no zone). */
static bool parse_ipv6(const char *s, size_t len, uint8_t out[16])
{
    uint16_t w[8] = {0};
    int n = 0;
    int gap = -1;
    size_t i = 0;
    if (len < 2)
        return false;
    if (s[0] == ':') {
        if (s[1] != ':')
            return false;
        gap = 0;
        i = 2;
    }
    while (i < len) {
        if (n == 8)
            return false;
        /* An IPv4 tail: the rest holds a dot and no colon. */
        if (memchr(s + i, '.', len - i) != NULL && memchr(s + i, ':', len - i) == NULL) {
            uint8_t v4[4];
            if (n > 6 || !parse_ipv4(s + i, len - i, v4))
                return false;
            w[n++] = (uint16_t)(v4[0] << 8 | v4[1]);
            w[n++] = (uint16_t)(v4[2] << 8 | v4[3]);
            i = len;
            break;
        }
        unsigned v = 0;
        size_t k = 0;
        while (i + k < len && k < 5 && hexval(s[i + k]) >= 0) {
            v = v * 16 + (unsigned)hexval(s[i + k]);
            k++;
        }
        if (k == 0 || k > 4)
            return false;
        w[n++] = (uint16_t)v;
        i += k;
        if (i == len)
            break;
        if (s[i] != ':')
            return false;
        i++;
        if (i < len && s[i] == ':') {
            if (gap >= 0)
                return false;
            gap = n;
            i++;
        } else if (i == len) {
            return false; /* a single trailing colon */
        }
    }
    if (gap < 0 && n != 8)
        return false;
    if (gap >= 0 && n > 7)
        return false;
    uint16_t full[8] = {0};
    if (gap < 0) {
        memcpy(full, w, sizeof(full));
    } else {
        for (int k = 0; k < gap; k++)
            full[k] = w[k];
        for (int k = gap; k < n; k++)
            full[8 - (n - k)] = w[k];
    }
    for (int k = 0; k < 8; k++) {
        out[2 * k] = (uint8_t)(full[k] >> 8);
        out[2 * k + 1] = (uint8_t)(full[k] & 0xFF);
    }
    return true;
}

/* hostname_ok checks a host name: LDH labels of 1..63 octets not starting or ending with '-',
 * at most CMTP_DOMAIN_MAX octets, no empty label, the last label not all digits. A single label
 * ("localhost", "redis") is allowed: these names are resolved on this side. */
static bool hostname_ok(const char *s, size_t len)
{
    if (len == 0 || len > CMTP_DOMAIN_MAX)
        return false;
    size_t start = 0;
    bool numeric = true;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            size_t ll = i - start;
            if (ll == 0 || ll > CMTP_LABEL_MAX || s[start] == '-' || s[i - 1] == '-')
                return false;
            if (i == len && numeric)
                return false;
            start = i + 1;
            numeric = true;
            continue;
        }
        char c = s[i];
        if (!(is_digit(c) || (lower(c) >= 'a' && lower(c) <= 'z') || c == '-'))
            return false;
        if (!is_digit(c))
            numeric = false;
    }
    return true;
}

/* parse_endpoint parses `host:port`, `[v6]:port`, or (when |default_port| is not 0) the host
 * alone. */
static int parse_endpoint(struct cmtp_config_endpoint *ep, const char *s, size_t len,
                          unsigned default_port, char *why)
{
    const char *host, *port = NULL;
    size_t hl, pl = 0;
    char e[VALUE_ECHO_MAX + 4];

    memset(ep, 0, sizeof(*ep));
    echo(e, s, len);
    if (len == 0) {
        snprintf(why, WHY_LEN, "empty endpoint");
        return -1;
    }
    if (s[0] == '[') {
        const char *rb = memchr(s, ']', len);
        if (rb == NULL) {
            snprintf(why, WHY_LEN, "endpoint \"%s\": missing ']'", e);
            return -1;
        }
        host = s + 1;
        hl = (size_t)(rb - host);
        size_t used = (size_t)(rb - s) + 1;
        if (used < len) {
            if (s[used] != ':') {
                snprintf(why, WHY_LEN, "endpoint \"%s\": expected ':' after ']'", e);
                return -1;
            }
            port = s + used + 1;
            pl = len - used - 1;
        }
        if (hl > CMTP_DOMAIN_MAX || !parse_ipv6(host, hl, ep->ip)) {
            snprintf(why, WHY_LEN, "endpoint \"%s\": bad IPv6 address", e);
            return -1;
        }
        ep->kind = CMTP_CONFIG_HOST_IPV6;
    } else {
        const char *colon = memchr(s, ':', len);
        if (colon != NULL && memchr(colon + 1, ':', len - (size_t)(colon - s) - 1) != NULL) {
            snprintf(why, WHY_LEN, "endpoint \"%s\": write IPv6 addresses as [addr]:port", e);
            return -1;
        }
        host = s;
        hl = colon != NULL ? (size_t)(colon - s) : len;
        if (colon != NULL) {
            port = colon + 1;
            pl = len - hl - 1;
        }
        if (parse_ipv4(host, hl, ep->ip)) {
            ep->kind = CMTP_CONFIG_HOST_IPV4;
        } else if (hostname_ok(host, hl)) {
            ep->kind = CMTP_CONFIG_HOST_NAME;
        } else {
            snprintf(why, WHY_LEN, "endpoint \"%s\": bad host (IPv4 address or host name)", e);
            return -1;
        }
    }
    for (size_t i = 0; i < hl; i++)
        ep->host[i] = lower(host[i]);
    ep->host[hl] = '\0';
    if (port == NULL) {
        if (default_port == 0) {
            snprintf(why, WHY_LEN, "endpoint \"%s\": missing :port", e);
            return -1;
        }
        ep->port = (uint16_t)default_port;
        return 0;
    }
    uint64_t p;
    if (parse_u64(port, pl, &p) < 0 || p < 1 || p > 65535) {
        snprintf(why, WHY_LEN, "endpoint \"%s\": port must be 1..65535", e);
        return -1;
    }
    ep->port = (uint16_t)p;
    return 0;
}

/* endpoint_equal reports whether two endpoints name the same host and port. */
static bool endpoint_equal(const struct cmtp_config_endpoint *a,
                           const struct cmtp_config_endpoint *b)
{
    if (a->kind != b->kind || a->port != b->port)
        return false;
    if (a->kind == CMTP_CONFIG_HOST_NAME)
        return strcmp(a->host, b->host) == 0;
    return memcmp(a->ip, b->ip, sizeof(a->ip)) == 0;
}

static bool endpoint_unspecified(const struct cmtp_config_endpoint *a)
{
    static const uint8_t zero[16] = {0};
    return a->kind != CMTP_CONFIG_HOST_NAME && memcmp(a->ip, zero, sizeof(zero)) == 0;
}

/* endpoint_conflict reports whether two listeners cannot both be bound: the same endpoint, or
 * the same port where one is the unspecified address of the other's family. */
static bool endpoint_conflict(const struct cmtp_config_endpoint *a,
                              const struct cmtp_config_endpoint *b)
{
    if (a->port != b->port)
        return false;
    if (endpoint_equal(a, b))
        return true;
    return a->kind == b->kind && (endpoint_unspecified(a) || endpoint_unspecified(b));
}

/* parse_socket parses "" (none), `unix:PATH` or `host:port`. */
static int parse_socket(struct cmtp_config_socket *so, const char *v, char *why)
{
    size_t len = strlen(v);
    memset(so, 0, sizeof(*so));
    if (len == 0)
        return 0;
    if (len >= 5 && memcmp(v, "unix:", 5) == 0) {
        size_t pl = len - 5;
        if (pl == 0 || pl > CMTP_CONFIG_UNIX_PATH_MAX) {
            snprintf(why, WHY_LEN, "unix socket path must be 1..%d octets",
                     CMTP_CONFIG_UNIX_PATH_MAX);
            return -1;
        }
        for (size_t i = 5; i < len; i++) {
            unsigned char c = (unsigned char)v[i];
            if (c < 0x20 || c == 0x7F) {
                snprintf(why, WHY_LEN, "control character in path");
                return -1;
            }
        }
        so->kind = CMTP_CONFIG_SOCKET_UNIX;
        memcpy(so->path, v + 5, pl + 1);
        return 0;
    }
    if (parse_endpoint(&so->tcp, v, len, 0, why) < 0)
        return -1;
    so->kind = CMTP_CONFIG_SOCKET_TCP;
    return 0;
}

/* parse_cidr parses `addr[/prefix]`; the prefix defaults to the full length. Host bits past
 * the prefix must be zero. */
static int parse_cidr(struct cmtp_config_cidr *n, const char *s, size_t len, char *why)
{
    char e[VALUE_ECHO_MAX + 4];
    const char *slash = memchr(s, '/', len);
    size_t al = slash != NULL ? (size_t)(slash - s) : len;
    unsigned bits;

    memset(n, 0, sizeof(*n));
    echo(e, s, len);
    if (parse_ipv4(s, al, n->addr)) {
        n->family = 4;
        bits = 32;
    } else if (parse_ipv6(s, al, n->addr)) {
        n->family = 6;
        bits = 128;
    } else {
        snprintf(why, WHY_LEN, "network \"%s\": bad address", e);
        return -1;
    }
    n->prefix = (uint8_t)bits;
    if (slash != NULL) {
        uint64_t p;
        size_t pl = len - al - 1;
        if (pl > 3 || parse_u64(slash + 1, pl, &p) < 0 || p > bits) {
            snprintf(why, WHY_LEN, "network \"%s\": prefix must be 0..%u", e, bits);
            return -1;
        }
        n->prefix = (uint8_t)p;
    }
    for (unsigned b = n->prefix; b < bits; b++) {
        if (n->addr[b / 8] & (0x80 >> (b % 8))) {
            snprintf(why, WHY_LEN, "network \"%s\": address has bits set past the prefix", e);
            return -1;
        }
    }
    return 0;
}

const struct cmtp_config_sender_policy *cmtp_config_sender_policy_for(const struct cmtp_config *c,
                                                                      const char *domain)
{
    /* The exact domain first, then each parent in turn (a.test covers x.a.test). */
    for (const char *d = domain; d != NULL && *d != '\0';) {
        for (size_t i = 0; i < c->smtp_ingress.sender_policy_count; i++) {
            if (strcmp(c->smtp_ingress.sender_policy[i].domain, d) == 0)
                return &c->smtp_ingress.sender_policy[i];
        }
        d = strchr(d, '.');
        if (d != NULL)
            d++;
    }
    return NULL;
}

bool cmtp_config_cidr_match(const struct cmtp_config_cidr *n, int family, const uint8_t *ip)
{
    if (n == NULL || ip == NULL || family != n->family)
        return false;
    unsigned full = n->prefix / 8u;
    unsigned rest = n->prefix % 8u;
    if (memcmp(n->addr, ip, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xFF << (8 - rest));
    return (n->addr[full] & mask) == (ip[full] & mask);
}

/* ---------------------------------------------------------------------------------------------
 * The key table.
 */

enum key_type {
    T_BOOL,
    T_UINT,      /* unsigned, plain decimal, min..max */
    T_SIZE,      /* uint64_t octets, k/m/g suffix, min..max */
    T_DURATION,  /* uint64_t milliseconds, unit required, min..max */
    T_MODE,      /* unsigned permission bits, octal */
    T_PATH,      /* char[cap], no control characters */
    T_NAME,      /* char[cap], user/group name, may be empty */
    T_SECRET,    /* char[cap], no control characters, may be empty */
    T_PREFIX,    /* char[cap], Redis key prefix */
    T_HOSTNAME,  /* char[cap], "" or a domain, normalized */
    T_ENDPOINT,  /* cmtp_config_endpoint + admin.metrics_enabled, "" = disabled */
    T_NEXTHOP,   /* delivery.cmtp: host[:port] (CMTP_PORT) + delivery.cmtp_set, "" = unset */
    T_SOCKET,    /* cmtp_config_socket */
    T_LISTEN,    /* list of cmtp_config_endpoint */
    T_DOMAINS,   /* list of char[CMTP_DOMAIN_MAX + 1] */
    T_RELAYS,    /* list of cmtp_config_relay_domain */
    T_NETWORKS,  /* list of cmtp_config_cidr */
    T_RESOLVERS, /* list of cmtp_config_endpoint, IP addresses only, port 53 by default */
    T_SENDERS,   /* list of cmtp_config_sender_policy */
    T_LOG_LEVEL, /* enum cmtp_log_level */
    T_LOG_FORMAT,
    T_LOG_TARGET,
    T_DELIVERY_MODE,
    T_RELAY,
    T_FALLBACK,
    T_STARTTLS, /* enum cmtp_smtpc_tls: none, may, require */
};

/* key_def describes one key: where its value lives in struct cmtp_config and how it is
 * checked. |cap| is a string buffer's size or a list's capacity; |count_off| locates a list's
 * count. */
struct key_def {
    const char *section;
    const char *key;
    enum key_type type;
    size_t off;
    size_t cap;
    size_t count_off;
    uint64_t min;
    uint64_t max;
    bool allow_empty;
};

#define OFF(m) offsetof(struct cmtp_config, m)
#define CAP(m) sizeof(((struct cmtp_config *)0)->m)
#define LISTCAP(m) (CAP(m) / sizeof(((struct cmtp_config *)0)->m[0]))

#define D_MS(x) ((uint64_t)(x))
#define D_SEC(x) ((uint64_t)(x)*1000)
#define D_MIN(x) (D_SEC(x) * 60)
#define D_HOUR(x) (D_MIN(x) * 60)
#define D_DAY(x) (D_HOUR(x) * 24)

static const struct key_def keys[] = {
    {"server", "hostname", T_HOSTNAME, OFF(server.hostname), CAP(server.hostname), 0, 0, 0, 1},
    {"server", "listen", T_LISTEN, OFF(server.listen), LISTCAP(server.listen),
     OFF(server.listen_count), 0, 0, 1},
    {"server", "workers", T_UINT, OFF(server.workers), 0, 0, 0, 1024, 0},
    {"server", "conn_max", T_UINT, OFF(server.conn_max), 0, 0, 1, 10000000, 0},
    {"server", "conn_per_ip_max", T_UINT, OFF(server.conn_per_ip_max), 0, 0, 0, 10000000, 0},
    {"server", "state_dir", T_PATH, OFF(server.state_dir), CAP(server.state_dir), 0, 0, 0, 0},
    {"server", "user", T_NAME, OFF(server.user), CAP(server.user), 0, 0, 0, 1},
    {"server", "proxy_protocol", T_BOOL, OFF(server.proxy_protocol), 0, 0, 0, 0, 0},

    {"tls", "cert", T_PATH, OFF(tls.cert), CAP(tls.cert), 0, 0, 0, 1},
    {"tls", "key", T_PATH, OFF(tls.key), CAP(tls.key), 0, 0, 0, 1},
    {"tls", "ca", T_PATH, OFF(tls.ca), CAP(tls.ca), 0, 0, 0, 1},
    {"tls", "require_client_cert", T_BOOL, OFF(tls.require_client_cert), 0, 0, 0, 0, 0},
    {"tls", "ticket_key_file", T_PATH, OFF(tls.ticket_key_file), CAP(tls.ticket_key_file), 0, 0, 0,
     1},
    {"tls", "session_tickets", T_BOOL, OFF(tls.session_tickets), 0, 0, 0, 0, 0},

    {"limits", "size_max", T_SIZE, OFF(limits.size_max), 0, 0, 1, CMTP_SIZE_MAX_HARD, 0},
    {"limits", "rcpt_max", T_UINT, OFF(limits.rcpt_max), 0, 0, 1, CMTP_RCPT_MAX_HARD, 0},
    {"limits", "chunk_max", T_SIZE, OFF(limits.chunk_max), 0, 0, 1, CMTP_CHUNK_MAX_HARD, 0},
    {"limits", "txn_max", T_UINT, OFF(limits.txn_max), 0, 0, 1, 1000000, 0},
    {"limits", "line_max", T_UINT, OFF(limits.line_max), 0, 0, 1024, CMTP_LINE_MAX, 0},

    {"timeouts", "handshake", T_DURATION, OFF(timeouts.handshake_ms), 0, 0, D_MS(10), D_HOUR(1), 0},
    {"timeouts", "idle", T_DURATION, OFF(timeouts.idle_ms), 0, 0, D_MS(10), D_DAY(1), 0},
    {"timeouts", "command", T_DURATION, OFF(timeouts.command_ms), 0, 0, D_MS(10), D_HOUR(1), 0},
    {"timeouts", "chunk", T_DURATION, OFF(timeouts.chunk_ms), 0, 0, D_MS(10), D_HOUR(1), 0},
    {"timeouts", "transaction", T_DURATION, OFF(timeouts.transaction_ms), 0, 0, D_MS(10), D_DAY(1),
     0},

    {"redis", "address", T_SOCKET, OFF(redis.address), 0, 0, 0, 0, 1},
    {"redis", "password", T_SECRET, OFF(redis.password), CAP(redis.password), 0, 0, 0, 1},
    {"redis", "key_prefix", T_PREFIX, OFF(redis.key_prefix), CAP(redis.key_prefix), 0, 0, 0, 0},
    {"redis", "wait_replicas", T_UINT, OFF(redis.wait_replicas), 0, 0, 0, 16, 0},
    {"redis", "wait_timeout", T_DURATION, OFF(redis.wait_timeout_ms), 0, 0, D_MS(1), D_SEC(60), 0},
    {"redis", "redis_server", T_PATH, OFF(redis.redis_server), CAP(redis.redis_server), 0, 0, 0, 0},
    {"redis", "inflight_max", T_UINT, OFF(redis.inflight_max), 0, 0, 1, 65536, 0},

    {"delivery", "mode", T_DELIVERY_MODE, OFF(delivery.mode), 0, 0, 0, 0, 0},
    {"delivery", "maildir", T_PATH, OFF(delivery.maildir), CAP(delivery.maildir), 0, 0, 0, 1},
    {"delivery", "lmtp", T_SOCKET, OFF(delivery.lmtp), 0, 0, 0, 0, 1},
    {"delivery", "smtp", T_SOCKET, OFF(delivery.smtp), 0, 0, 0, 0, 1},
    {"delivery", "cmtp", T_NEXTHOP, OFF(delivery.cmtp), 0, 0, 0, 0, 1},
    {"delivery", "smtp_starttls", T_STARTTLS, OFF(delivery.smtp_starttls), 0, 0, 0, 0, 0},
    {"delivery", "smtp_tls_verify", T_BOOL, OFF(delivery.smtp_tls_verify), 0, 0, 0, 0, 0},
    {"delivery", "smtp_tls_name", T_HOSTNAME, OFF(delivery.smtp_tls_name),
     CAP(delivery.smtp_tls_name), 0, 0, 0, 1},
    {"delivery", "chunking", T_BOOL, OFF(delivery.chunking), 0, 0, 0, 0, 0},
    {"delivery", "local_domains", T_DOMAINS, OFF(delivery.local_domains),
     LISTCAP(delivery.local_domains), OFF(delivery.local_domains_count), 0, 0, 1},
    {"delivery", "relay_domains", T_RELAYS, OFF(delivery.relay_domains),
     LISTCAP(delivery.relay_domains), OFF(delivery.relay_domains_count), 0, 0, 1},
    {"delivery", "concurrency_per_dest", T_UINT, OFF(delivery.concurrency_per_dest), 0, 0, 1, 10000,
     0},
    {"delivery", "retry_base", T_DURATION, OFF(delivery.retry_base_ms), 0, 0, D_SEC(1), D_DAY(1),
     0},
    {"delivery", "retry_max", T_DURATION, OFF(delivery.retry_max_ms), 0, 0, D_SEC(1), D_DAY(30), 0},
    {"delivery", "lifetime", T_DURATION, OFF(delivery.lifetime_ms), 0, 0, D_SEC(5), D_DAY(60), 0},
    {"delivery", "attempts_crash_max", T_UINT, OFF(delivery.attempts_crash_max), 0, 0, 1, 1000, 0},
    {"delivery", "enabled", T_BOOL, OFF(delivery.enabled), 0, 0, 0, 0, 0},
    {"delivery", "lease", T_DURATION, OFF(delivery.lease_ms), 0, 0, D_SEC(1), D_HOUR(1), 0},
    {"delivery", "dns_servers", T_RESOLVERS, OFF(delivery.dns_servers),
     LISTCAP(delivery.dns_servers), OFF(delivery.dns_servers_count), 0, 0, 1},
    {"delivery", "dns_timeout", T_DURATION, OFF(delivery.dns_timeout_ms), 0, 0, D_MS(100), D_MIN(1),
     0},
    {"delivery", "cmtp_port", T_UINT, OFF(delivery.cmtp_port), 0, 0, 1, 65535, 0},
    {"delivery", "smtp_port", T_UINT, OFF(delivery.smtp_port), 0, 0, 1, 65535, 0},

    {"admin", "socket", T_PATH, OFF(admin.socket), CAP(admin.socket), 0, 0, 0, 0},
    {"admin", "mode", T_MODE, OFF(admin.mode), 0, 0, 0, 0777, 0},
    {"admin", "group", T_NAME, OFF(admin.group), CAP(admin.group), 0, 0, 0, 1},
    {"admin", "metrics_listen", T_ENDPOINT, OFF(admin.metrics_listen), 0, 0, 0, 0, 1},

    {"log", "level", T_LOG_LEVEL, OFF(log.level), 0, 0, 0, 0, 0},
    {"log", "format", T_LOG_FORMAT, OFF(log.format), 0, 0, 0, 0, 0},
    {"log", "target", T_LOG_TARGET, OFF(log.target), 0, 0, 0, 0, 0},

    {"smtp_ingress", "listen", T_LISTEN, OFF(smtp_ingress.listen), LISTCAP(smtp_ingress.listen),
     OFF(smtp_ingress.listen_count), 0, 0, 1},
    {"smtp_ingress", "trusted_networks", T_NETWORKS, OFF(smtp_ingress.trusted_networks),
     LISTCAP(smtp_ingress.trusted_networks), OFF(smtp_ingress.trusted_networks_count), 0, 0, 1},
    {"smtp_ingress", "policy_relay", T_RELAY, OFF(smtp_ingress.policy_relay), 0, 0, 0, 0, 0},
    {"smtp_ingress", "policy_fallback", T_FALLBACK, OFF(smtp_ingress.policy_fallback), 0, 0, 0, 0,
     0},
    {"smtp_ingress", "policy_hops", T_UINT, OFF(smtp_ingress.policy_hops), 0, 0, 0, CMTP_HOPS_MAX,
     0},
    {"smtp_ingress", "sender_policy", T_SENDERS, OFF(smtp_ingress.sender_policy),
     LISTCAP(smtp_ingress.sender_policy), OFF(smtp_ingress.sender_policy_count), 0, 0, 1},
    {"smtp_ingress", "starttls", T_BOOL, OFF(smtp_ingress.starttls), 0, 0, 0, 0, 0},
    {"smtp_ingress", "tls_required", T_BOOL, OFF(smtp_ingress.tls_required), 0, 0, 0, 0, 0},
    {"smtp_ingress", "policy_header", T_BOOL, OFF(smtp_ingress.policy_header), 0, 0, 0, 0, 0},
    {"smtp_ingress", "bare_lf_reject", T_BOOL, OFF(smtp_ingress.bare_lf_reject), 0, 0, 0, 0, 0},
};

#define KEY_COUNT (sizeof(keys) / sizeof(keys[0]))

static const char *const sections[] = {"server",   "tls",   "limits", "timeouts",    "redis",
                                       "delivery", "admin", "log",    "smtp_ingress"};

static bool section_known(const char *s, size_t len)
{
    for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
        if (strlen(sections[i]) == len && memcmp(sections[i], s, len) == 0)
            return true;
    }
    return false;
}

static bool is_list(enum key_type t)
{
    return t == T_LISTEN || t == T_DOMAINS || t == T_RELAYS || t == T_NETWORKS || t == T_SENDERS ||
           t == T_RESOLVERS;
}

/* fmt_size writes |v| octets with the largest exact unit (e.g. "64m"). */
static void fmt_size(char *out, size_t size, uint64_t v)
{
    if (v != 0 && v % (1024ull * 1024 * 1024) == 0)
        snprintf(out, size, "%llug", (unsigned long long)(v >> 30));
    else if (v != 0 && v % (1024ull * 1024) == 0)
        snprintf(out, size, "%llum", (unsigned long long)(v >> 20));
    else if (v != 0 && v % 1024 == 0)
        snprintf(out, size, "%lluk", (unsigned long long)(v >> 10));
    else
        snprintf(out, size, "%llu", (unsigned long long)v);
}

/* fmt_duration writes |ms| with the largest exact unit (e.g. "5d"). */
static void fmt_duration(char *out, size_t size, uint64_t ms)
{
    static const struct {
        uint64_t mul;
        const char *unit;
    } u[] = {{D_DAY(1), "d"}, {D_HOUR(1), "h"}, {D_MIN(1), "m"}, {D_SEC(1), "s"}};
    for (size_t i = 0; i < sizeof(u) / sizeof(u[0]); i++) {
        if (ms != 0 && ms % u[i].mul == 0) {
            snprintf(out, size, "%llu%s", (unsigned long long)(ms / u[i].mul), u[i].unit);
            return;
        }
    }
    snprintf(out, size, "%llums", (unsigned long long)ms);
}

/* ---------------------------------------------------------------------------------------------
 * Applying one value.
 */

/* string_ok checks a string value: length < |cap|, no control character, non-empty unless
 * allowed. */
static int string_ok(const char *v, size_t cap, bool allow_empty, char *why)
{
    size_t len = strlen(v);
    if (len == 0 && !allow_empty) {
        snprintf(why, WHY_LEN, "must not be empty");
        return -1;
    }
    if (len >= cap) {
        snprintf(why, WHY_LEN, "longer than %zu octets", cap - 1);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c == 0x7F) {
            snprintf(why, WHY_LEN, "control character at octet %zu", i + 1);
            return -1;
        }
    }
    return 0;
}

/* apply_item adds one list item (|len| octets at |s|, trimmed, non-empty) to the list of |k|. */
static int apply_item(struct cmtp_config *c, const struct key_def *k, const char *s, size_t len,
                      char *why)
{
    char *base = (char *)c + k->off;
    size_t *count = (size_t *)((char *)c + k->count_off);
    char e[VALUE_ECHO_MAX + 4];
    echo(e, s, len);
    if (*count >= k->cap) {
        snprintf(why, WHY_LEN, "more than %zu entries", k->cap);
        return -1;
    }
    switch (k->type) {
    case T_LISTEN: {
        struct cmtp_config_endpoint *list = (struct cmtp_config_endpoint *)(void *)base;
        struct cmtp_config_endpoint ep;
        if (parse_endpoint(&ep, s, len, 0, why) < 0)
            return -1;
        for (size_t i = 0; i < *count; i++) {
            if (endpoint_conflict(&list[i], &ep)) {
                snprintf(why, WHY_LEN, "\"%s\" overlaps an earlier listener", e);
                return -1;
            }
        }
        list[(*count)++] = ep;
        return 0;
    }
    case T_DOMAINS: {
        char(*list)[CMTP_DOMAIN_MAX + 1] = (char(*)[CMTP_DOMAIN_MAX + 1])(void *)base;
        char d[CMTP_DOMAIN_MAX + 1];
        enum cmtp_addr_err ae = cmtp_addr_domain_normalize(d, sizeof(d), s, len);
        if (ae != CMTP_ADDR_OK) {
            snprintf(why, WHY_LEN, "domain \"%s\": %s", e, cmtp_addr_strerror(ae));
            return -1;
        }
        for (size_t i = 0; i < *count; i++) {
            if (strcmp(list[i], d) == 0) {
                snprintf(why, WHY_LEN, "domain \"%s\" listed twice", e);
                return -1;
            }
        }
        memcpy(list[(*count)++], d, sizeof(d));
        return 0;
    }
    case T_RELAYS: {
        struct cmtp_config_relay_domain *list = (struct cmtp_config_relay_domain *)(void *)base;
        struct cmtp_config_relay_domain r;
        const char *eq = memchr(s, '=', len);
        if (eq == NULL) {
            snprintf(why, WHY_LEN, "entry \"%s\": expected domain=nexthop[:port]", e);
            return -1;
        }
        size_t dl = (size_t)(eq - s);
        enum cmtp_addr_err ae = cmtp_addr_domain_normalize(r.domain, sizeof(r.domain), s, dl);
        if (ae != CMTP_ADDR_OK) {
            snprintf(why, WHY_LEN, "entry \"%s\": domain %s", e, cmtp_addr_strerror(ae));
            return -1;
        }
        if (parse_endpoint(&r.nexthop, eq + 1, len - dl - 1, CMTP_PORT, why) < 0)
            return -1;
        for (size_t i = 0; i < *count; i++) {
            if (strcmp(list[i].domain, r.domain) == 0) {
                snprintf(why, WHY_LEN, "domain of \"%s\" listed twice", e);
                return -1;
            }
        }
        list[(*count)++] = r;
        return 0;
    }
    case T_RESOLVERS: {
        struct cmtp_config_endpoint *list = (struct cmtp_config_endpoint *)(void *)base;
        struct cmtp_config_endpoint ep;
        if (parse_endpoint(&ep, s, len, CMTP_CONFIG_DNS_PORT, why) < 0)
            return -1;
        if (ep.kind == CMTP_CONFIG_HOST_NAME) {
            /* A name would need a resolver to find the resolver. */
            snprintf(why, WHY_LEN, "\"%s\": a DNS server must be an IP address", e);
            return -1;
        }
        for (size_t i = 0; i < *count; i++) {
            if (endpoint_equal(&list[i], &ep)) {
                snprintf(why, WHY_LEN, "DNS server \"%s\" listed twice", e);
                return -1;
            }
        }
        list[(*count)++] = ep;
        return 0;
    }
    case T_NETWORKS: {
        struct cmtp_config_cidr *list = (struct cmtp_config_cidr *)(void *)base;
        struct cmtp_config_cidr n;
        if (parse_cidr(&n, s, len, why) < 0)
            return -1;
        for (size_t i = 0; i < *count; i++) {
            if (memcmp(&list[i], &n, sizeof(n)) == 0) {
                snprintf(why, WHY_LEN, "network \"%s\" listed twice", e);
                return -1;
            }
        }
        list[(*count)++] = n;
        return 0;
    }
    case T_SENDERS: {
        struct cmtp_config_sender_policy *list = (struct cmtp_config_sender_policy *)(void *)base;
        struct cmtp_config_sender_policy sp;
        const char *sp_end = memchr(s, ' ', len);
        if (sp_end == NULL) {
            snprintf(why, WHY_LEN, "entry \"%s\": expected domain relay:... fallback:... hops:...",
                     e);
            return -1;
        }
        size_t dl = (size_t)(sp_end - s);
        enum cmtp_addr_err ae = cmtp_addr_domain_normalize(sp.domain, sizeof(sp.domain), s, dl);
        if (ae != CMTP_ADDR_OK) {
            snprintf(why, WHY_LEN, "entry \"%s\": domain %s", e, cmtp_addr_strerror(ae));
            return -1;
        }
        cmtp_policy_init(&sp.policy);
        if (cmtp_policy_parse_text(&sp.policy, &sp.set, sp_end + 1, len - dl - 1, true) < 0) {
            snprintf(why, WHY_LEN,
                     "entry \"%s\": bad policy (members relay:none|domain|any, "
                     "fallback:none|smtp-verified|smtp-tls|smtp, hops:0..32)",
                     e);
            return -1;
        }
        for (size_t i = 0; i < *count; i++) {
            if (strcmp(list[i].domain, sp.domain) == 0) {
                snprintf(why, WHY_LEN, "domain of \"%s\" listed twice", e);
                return -1;
            }
        }
        list[(*count)++] = sp;
        return 0;
    }
    default:
        snprintf(why, WHY_LEN, "internal: not a list");
        return -1;
    }
}

/* apply_list splits |v| at commas and adds each item; empty items are skipped. */
static int apply_list(struct cmtp_config *c, const struct key_def *k, const char *v, char *why)
{
    const char *p = v;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma != NULL ? comma : p + strlen(p);
        const char *a = p;
        const char *b = end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (b > a && apply_item(c, k, a, (size_t)(b - a), why) < 0)
            return -1;
        if (comma == NULL)
            return 0;
        p = comma + 1;
    }
}

/* apply sets the value of key |k| in |c| from the text |v|. |first| is true for the key's first
 * appearance in this load (a list is then emptied before |v| is added). */
static int apply(struct cmtp_config *c, const struct key_def *k, const char *v, bool first,
                 char *why)
{
    void *field = (char *)c + k->off;
    size_t len = strlen(v);
    char e[VALUE_ECHO_MAX + 4];
    char lo[32], hi[32];
    uint64_t u;
    echo(e, v, len);

    switch (k->type) {
    case T_BOOL:
        if (parse_bool(v, (bool *)field) < 0) {
            snprintf(why, WHY_LEN, "\"%s\" is not a boolean (true/false, yes/no, on/off, 1/0)", e);
            return -1;
        }
        return 0;
    case T_UINT:
        if (parse_u64(v, len, &u) < 0) {
            snprintf(why, WHY_LEN, "\"%s\" is not a non-negative integer", e);
            return -1;
        }
        if (u < k->min || u > k->max) {
            snprintf(why, WHY_LEN, "%s is out of range %llu..%llu", e, (unsigned long long)k->min,
                     (unsigned long long)k->max);
            return -1;
        }
        *(unsigned *)field = (unsigned)u;
        return 0;
    case T_SIZE:
        if (parse_size(v, &u) < 0) {
            snprintf(why, WHY_LEN, "\"%s\" is not a size (a number with an optional k, m or g)", e);
            return -1;
        }
        if (u < k->min || u > k->max) {
            fmt_size(lo, sizeof(lo), k->min);
            fmt_size(hi, sizeof(hi), k->max);
            snprintf(why, WHY_LEN, "%s is out of range %s..%s", e, lo, hi);
            return -1;
        }
        *(uint64_t *)field = u;
        return 0;
    case T_DURATION:
        if (parse_duration(v, &u) < 0) {
            snprintf(why, WHY_LEN, "\"%s\" is not a duration (a number with ms, s, m, h or d)", e);
            return -1;
        }
        if (u < k->min || u > k->max) {
            fmt_duration(lo, sizeof(lo), k->min);
            fmt_duration(hi, sizeof(hi), k->max);
            snprintf(why, WHY_LEN, "%s is out of range %s..%s", e, lo, hi);
            return -1;
        }
        *(uint64_t *)field = u;
        return 0;
    case T_MODE:
        if (parse_mode(v, (unsigned *)field) < 0) {
            snprintf(why, WHY_LEN, "\"%s\" is not an octal mode 0..0777", e);
            return -1;
        }
        return 0;
    case T_PATH:
    case T_SECRET:
        if (string_ok(v, k->cap, k->allow_empty, why) < 0)
            return -1;
        memcpy(field, v, len + 1);
        return 0;
    case T_NAME:
        if (string_ok(v, k->cap, true, why) < 0)
            return -1;
        for (size_t i = 0; i < len; i++) {
            char ch = v[i];
            if (!(is_digit(ch) || (lower(ch) >= 'a' && lower(ch) <= 'z') || ch == '_' ||
                  ch == '.' || (ch == '-' && i > 0))) {
                snprintf(why, WHY_LEN, "\"%s\" is not a user or group name", e);
                return -1;
            }
        }
        memcpy(field, v, len + 1);
        return 0;
    case T_PREFIX:
        if (string_ok(v, k->cap, false, why) < 0)
            return -1;
        for (size_t i = 0; i < len; i++) {
            char ch = v[i];
            /* No braces: the queue adds its own hash tags. */
            if (!(is_digit(ch) || (lower(ch) >= 'a' && lower(ch) <= 'z') || ch == '_' ||
                  ch == '.' || ch == '-' || ch == ':')) {
                snprintf(why, WHY_LEN, "\"%s\": use only A-Z a-z 0-9 _ . - :", e);
                return -1;
            }
        }
        memcpy(field, v, len + 1);
        return 0;
    case T_HOSTNAME: {
        if (len == 0) {
            ((char *)field)[0] = '\0';
            return 0;
        }
        enum cmtp_addr_err ae = cmtp_addr_domain_normalize(field, k->cap, v, len);
        if (ae != CMTP_ADDR_OK) {
            snprintf(why, WHY_LEN, "\"%s\" is not a domain name (%s)", e, cmtp_addr_strerror(ae));
            return -1;
        }
        return 0;
    }
    case T_ENDPOINT:
        /* Only admin.metrics_listen has this type. */
        if (len == 0) {
            memset(field, 0, sizeof(struct cmtp_config_endpoint));
            c->admin.metrics_enabled = false;
            return 0;
        }
        if (parse_endpoint(field, v, len, 0, why) < 0)
            return -1;
        c->admin.metrics_enabled = true;
        return 0;
    case T_NEXTHOP:
        /* Only delivery.cmtp has this type. */
        memset(field, 0, sizeof(struct cmtp_config_relay_domain));
        c->delivery.cmtp_set = false;
        if (len == 0)
            return 0;
        if (parse_endpoint(&((struct cmtp_config_relay_domain *)field)->nexthop, v, len, CMTP_PORT,
                           why) < 0)
            return -1;
        c->delivery.cmtp_set = true;
        return 0;
    case T_SOCKET:
        return parse_socket(field, v, why);
    case T_LISTEN:
    case T_DOMAINS:
    case T_RELAYS:
    case T_NETWORKS:
    case T_SENDERS:
    case T_RESOLVERS:
        if (first)
            *(size_t *)((char *)c + k->count_off) = 0;
        return apply_list(c, k, v, why);
    case T_LOG_LEVEL:
        if (cmtp_log_level_parse(field, v, len) < 0) {
            snprintf(why, WHY_LEN, "\"%s\": use error, warn, info or debug", e);
            return -1;
        }
        return 0;
    case T_LOG_FORMAT:
        if (cmtp_log_format_parse(field, v, len) < 0) {
            snprintf(why, WHY_LEN, "\"%s\": use kv or json", e);
            return -1;
        }
        return 0;
    case T_LOG_TARGET:
        if (ieq(v, len, "stderr")) {
            *(enum cmtp_log_target *)field = CMTP_LOG_TARGET_STDERR;
        } else if (ieq(v, len, "syslog")) {
            *(enum cmtp_log_target *)field = CMTP_LOG_TARGET_SYSLOG;
        } else {
            snprintf(why, WHY_LEN, "\"%s\": use stderr or syslog", e);
            return -1;
        }
        return 0;
    case T_DELIVERY_MODE:
        for (int m = CMTP_DELIVERY_MAILDIR; m <= CMTP_DELIVERY_CMTP; m++) {
            if (ieq(v, len, cmtp_delivery_mode_name((enum cmtp_delivery_mode)m))) {
                *(enum cmtp_delivery_mode *)field = (enum cmtp_delivery_mode)m;
                return 0;
            }
        }
        snprintf(why, WHY_LEN, "\"%s\": use maildir, lmtp, smtp or cmtp", e);
        return -1;
    case T_RELAY:
        if (cmtp_relay_parse(field, v, len) < 0) {
            snprintf(why, WHY_LEN, "\"%s\": use none, domain or any", e);
            return -1;
        }
        return 0;
    case T_FALLBACK:
        if (cmtp_fallback_parse(field, v, len) < 0) {
            snprintf(why, WHY_LEN, "\"%s\": use none, smtp-verified, smtp-tls or smtp", e);
            return -1;
        }
        return 0;
    case T_STARTTLS:
        if (ieq(v, len, "none")) {
            *(enum cmtp_smtpc_tls *)field = CMTP_SMTPC_TLS_NONE;
        } else if (ieq(v, len, "may")) {
            *(enum cmtp_smtpc_tls *)field = CMTP_SMTPC_TLS_MAY;
        } else if (ieq(v, len, "require")) {
            *(enum cmtp_smtpc_tls *)field = CMTP_SMTPC_TLS_REQUIRE;
        } else {
            snprintf(why, WHY_LEN, "\"%s\": use none, may or require", e);
            return -1;
        }
        return 0;
    }
    snprintf(why, WHY_LEN, "internal: unknown key type");
    return -1;
}

/* ---------------------------------------------------------------------------------------------
 * Loading: libinih drives the parse; our reader feeds it one line at a time from memory so that
 * we know the line number, refuse NUL octets and over-long lines (which libinih would otherwise
 * split silently), and check section names (libinih reports a section only with its keys).
 */

struct load_ctx {
    struct cmtp_config *c;
    const char *name;
    const char *text;
    size_t len;
    size_t pos;
    unsigned lineno;
    bool failed;
    unsigned err_line;
    char *err;
    size_t errlen;
    bool seen[KEY_COUNT];
};

/* load_fail records the first error: `NAME:LINE: MESSAGE`. */
static void load_fail(struct load_ctx *x, unsigned line, const char *msg)
{
    if (x->failed)
        return;
    x->failed = true;
    x->err_line = line;
    if (x->err != NULL && x->errlen > 0)
        snprintf(x->err, x->errlen, "%s:%u: %s", x->name, line, msg);
}

static char *load_reader(char *str, int num, void *stream)
{
    struct load_ctx *x = stream;
    char msg[WHY_LEN];
    if (x->failed || x->pos >= x->len || num < 2)
        return NULL;
    const char *p = x->text + x->pos;
    size_t rest = x->len - x->pos;
    const char *nl = memchr(p, '\n', rest);
    size_t ll = nl != NULL ? (size_t)(nl - p) : rest;
    x->pos += ll + (nl != NULL ? 1 : 0);
    x->lineno++;
    if (memchr(p, '\0', ll) != NULL) {
        load_fail(x, x->lineno, "NUL octet in line");
        return NULL;
    }
    if (ll > (size_t)num - 1) {
        snprintf(msg, sizeof(msg),
                 "line longer than %d octets (split a long list over indented continuation "
                 "lines)",
                 num - 1);
        load_fail(x, x->lineno, msg);
        return NULL;
    }
    memcpy(str, p, ll);
    str[ll] = '\0';
    /* A section header names a known section, even when no key follows it. */
    const char *q = str;
    while (*q == ' ' || *q == '\t')
        q++;
    if (*q == '[') {
        const char *rb = strchr(q, ']');
        if (rb != NULL && !section_known(q + 1, (size_t)(rb - q - 1))) {
            char e[VALUE_ECHO_MAX + 4];
            echo(e, q + 1, (size_t)(rb - q - 1));
            snprintf(msg, sizeof(msg), "unknown section [%s]", e);
            load_fail(x, x->lineno, msg);
            return NULL;
        }
    }
    return str;
}

static int load_handler(void *user, const char *section, const char *name, const char *value)
{
    struct load_ctx *x = user;
    char why[WHY_LEN];
    char msg[WHY_LEN + 2 * VALUE_ECHO_MAX + 64];
    char es[VALUE_ECHO_MAX + 4], en[VALUE_ECHO_MAX + 4];
    const struct key_def *k = NULL;

    if (x->failed)
        return 1; /* the first error is the one reported */
    echo(es, section, strlen(section));
    echo(en, name, strlen(name));
    if (section[0] == '\0') {
        snprintf(msg, sizeof(msg), "key '%s' outside any [section]", en);
        load_fail(x, x->lineno, msg);
        return 0;
    }
    for (size_t i = 0; i < KEY_COUNT; i++) {
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].key, name) == 0) {
            k = &keys[i];
            break;
        }
    }
    if (k == NULL) {
        if (section_known(section, strlen(section)))
            snprintf(msg, sizeof(msg), "unknown key '%s' in [%s]", en, es);
        else
            snprintf(msg, sizeof(msg), "unknown section [%s] (key '%s')", es, en);
        load_fail(x, x->lineno, msg);
        return 0;
    }
    size_t idx = (size_t)(k - keys);
    bool first = !x->seen[idx];
    x->seen[idx] = true;
    if (!first && !is_list(k->type)) {
        snprintf(msg, sizeof(msg),
                 "[%s] %s: given twice (or continued by an indented line; only list keys "
                 "take continuation lines, and key lines must not be indented)",
                 es, en);
        load_fail(x, x->lineno, msg);
        return 0;
    }
    why[0] = '\0';
    if (apply(x->c, k, value, first, why) < 0) {
        snprintf(msg, sizeof(msg), "[%s] %s: %s", es, en, why);
        load_fail(x, x->lineno, msg);
        return 0;
    }
    return 1;
}

static void set_err(char *err, size_t errlen, const char *name, const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s: %s", name, msg);
}

int cmtp_config_load_string(struct cmtp_config *c, const char *text, size_t len, const char *name,
                            char *err, size_t errlen)
{
    struct cmtp_config *tmp = NULL;
    struct load_ctx *x = NULL;
    char msg[CMTP_CONFIG_ERR_LEN];
    int ret = -EINVAL;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (name == NULL)
        name = "<string>";
    if (len > CMTP_CONFIG_FILE_MAX) {
        set_err(err, errlen, name, "larger than 1 MiB");
        return -EFBIG;
    }
    if (len > 0 && text == NULL) {
        set_err(err, errlen, name, "no text");
        return -EINVAL;
    }
    /* Work on a copy: |c| changes only when the whole text is valid. */
    tmp = malloc(sizeof(*tmp));
    x = calloc(1, sizeof(*x));
    if (tmp == NULL || x == NULL) {
        set_err(err, errlen, name, "out of memory");
        ret = -ENOMEM;
        goto err;
    }
    *tmp = *c;
    x->c = tmp;
    x->name = name;
    x->text = text;
    x->len = len;
    x->err = err;
    x->errlen = errlen;
    int r = ini_parse_stream(load_reader, x, load_handler, x);
    if (r > 0 && (!x->failed || (unsigned)r < x->err_line)) {
        /* libinih's own syntax error came first; our message (if any) is for a later line. */
        x->failed = false;
        load_fail(x, (unsigned)r, "syntax error: expected 'key = value', '[section]' or a comment");
    } else if (r < 0 && !x->failed) {
        set_err(err, errlen, name, "out of memory while parsing");
        ret = -ENOMEM;
        goto err;
    }
    if (x->failed)
        goto err;
    if (cmtp_config_check(tmp, msg, sizeof(msg)) < 0) {
        set_err(err, errlen, name, msg);
        goto err;
    }
    *c = *tmp;
    ret = 0;
err:
    if (tmp != NULL) {
        explicit_bzero(tmp, sizeof(*tmp)); /* it holds the Redis password */
        free(tmp);
    }
    free(x);
    return ret;
}

int cmtp_config_load_file(struct cmtp_config *c, const char *path, char *err, size_t errlen)
{
    char *buf = NULL;
    char eb[128];
    char msg[CMTP_CONFIG_ERR_LEN];
    FILE *f = NULL;
    int ret;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (path == NULL)
        return -EINVAL;
    f = fopen(path, "rb");
    if (f == NULL) {
        ret = -errno;
        snprintf(msg, sizeof(msg), "cannot open: %s", strerror_r(-ret, eb, sizeof(eb)));
        set_err(err, errlen, path, msg);
        return ret;
    }
    buf = malloc(CMTP_CONFIG_FILE_MAX + 1);
    if (buf == NULL) {
        set_err(err, errlen, path, "out of memory");
        ret = -ENOMEM;
        goto err;
    }
    size_t n = fread(buf, 1, CMTP_CONFIG_FILE_MAX + 1, f);
    if (ferror(f)) {
        ret = errno != 0 ? -errno : -EIO;
        snprintf(msg, sizeof(msg), "cannot read: %s", strerror_r(-ret, eb, sizeof(eb)));
        set_err(err, errlen, path, msg);
        goto err;
    }
    if (n > CMTP_CONFIG_FILE_MAX) {
        set_err(err, errlen, path, "larger than 1 MiB");
        ret = -EFBIG;
        goto err;
    }
    ret = cmtp_config_load_string(c, buf, n, path, err, errlen);
err:
    free(buf);
    if (f != NULL)
        fclose(f);
    return ret;
}

/* ---------------------------------------------------------------------------------------------
 * Defaults and cross-field checks.
 */

void cmtp_config_init(struct cmtp_config *c)
{
    memset(c, 0, sizeof(*c));

    /* [server] listen = 0.0.0.0:4465 */
    memcpy(c->server.listen[0].host, "0.0.0.0", 8);
    c->server.listen[0].kind = CMTP_CONFIG_HOST_IPV4;
    c->server.listen[0].port = CMTP_PORT;
    c->server.listen_count = 1;
    c->server.workers = 0;
    c->server.conn_max = CMTP_CONFIG_CONN_MAX_DEFAULT;
    c->server.conn_per_ip_max = CMTP_CONFIG_CONN_PER_IP_MAX_DEFAULT;
    snprintf(c->server.state_dir, sizeof(c->server.state_dir), "%s", CMTP_CONFIG_STATE_DIR_DEFAULT);
    c->server.proxy_protocol = false;

    c->tls.require_client_cert = false;
    c->tls.session_tickets = true;

    c->limits.size_max = CMTP_SIZE_MAX_DEFAULT;
    c->limits.rcpt_max = CMTP_RCPT_MAX_DEFAULT;
    c->limits.chunk_max = CMTP_CHUNK_MAX_DEFAULT;
    c->limits.txn_max = CMTP_TXN_MAX_DEFAULT;
    c->limits.line_max = CMTP_LINE_MAX;

    c->timeouts.handshake_ms = CMTP_HANDSHAKE_TIMEOUT_MS;
    c->timeouts.idle_ms = CMTP_IDLE_TIMEOUT_MS;
    c->timeouts.command_ms = CMTP_COMMAND_TIMEOUT_MS;
    c->timeouts.chunk_ms = CMTP_CHUNK_TIMEOUT_MS;
    c->timeouts.transaction_ms = CMTP_TXN_TIMEOUT_MS;

    c->redis.address.kind = CMTP_CONFIG_SOCKET_NONE;
    snprintf(c->redis.key_prefix, sizeof(c->redis.key_prefix), "%s",
             CMTP_CONFIG_REDIS_PREFIX_DEFAULT);
    c->redis.wait_replicas = 0;
    c->redis.wait_timeout_ms = CMTP_CONFIG_REDIS_WAIT_TIMEOUT_MS_DEFAULT;
    snprintf(c->redis.redis_server, sizeof(c->redis.redis_server), "%s",
             CMTP_CONFIG_REDIS_SERVER_DEFAULT);
    c->redis.inflight_max = CMTP_CONFIG_REDIS_INFLIGHT_MAX_DEFAULT;

    c->delivery.mode = CMTP_DELIVERY_MAILDIR;
    snprintf(c->delivery.maildir, sizeof(c->delivery.maildir), "%s", CMTP_CONFIG_MAILDIR_DEFAULT);
    c->delivery.lmtp.kind = CMTP_CONFIG_SOCKET_NONE;
    c->delivery.smtp.kind = CMTP_CONFIG_SOCKET_NONE;
    c->delivery.smtp_starttls = CMTP_SMTPC_TLS_MAY;
    c->delivery.smtp_tls_verify = false;
    c->delivery.chunking = true;
    c->delivery.concurrency_per_dest = CMTP_CONFIG_CONCURRENCY_PER_DEST_DEFAULT;
    c->delivery.retry_base_ms = CMTP_CONFIG_RETRY_BASE_MS_DEFAULT;
    c->delivery.retry_max_ms = CMTP_CONFIG_RETRY_MAX_MS_DEFAULT;
    c->delivery.lifetime_ms = CMTP_CONFIG_LIFETIME_MS_DEFAULT;
    c->delivery.attempts_crash_max = CMTP_CONFIG_ATTEMPTS_CRASH_MAX_DEFAULT;
    c->delivery.enabled = true;
    c->delivery.lease_ms = CMTP_CONFIG_LEASE_MS_DEFAULT;
    c->delivery.dns_timeout_ms = CMTP_CONFIG_DNS_TIMEOUT_MS_DEFAULT;
    c->delivery.cmtp_port = CMTP_PORT;
    c->delivery.smtp_port = CMTP_CONFIG_SMTP_PORT_DEFAULT;

    snprintf(c->admin.socket, sizeof(c->admin.socket), "%s", CMTP_CONFIG_ADMIN_SOCKET_DEFAULT);
    c->admin.mode = CMTP_CONFIG_ADMIN_MODE_DEFAULT;
    c->admin.metrics_enabled = false;

    c->log.level = CMTP_LOG_INFO;
    c->log.format = CMTP_LOG_FORMAT_KV;
    c->log.target = CMTP_LOG_TARGET_STDERR;

    /* [smtp_ingress] trusted_networks = 127.0.0.0/8,::1/128 */
    c->smtp_ingress.trusted_networks[0].family = 4;
    c->smtp_ingress.trusted_networks[0].prefix = 8;
    c->smtp_ingress.trusted_networks[0].addr[0] = 127;
    c->smtp_ingress.trusted_networks[1].family = 6;
    c->smtp_ingress.trusted_networks[1].prefix = 128;
    c->smtp_ingress.trusted_networks[1].addr[15] = 1;
    c->smtp_ingress.trusted_networks_count = 2;
    c->smtp_ingress.policy_relay = CMTP_RELAY_NONE;
    c->smtp_ingress.policy_fallback = CMTP_FALLBACK_NONE;
    c->smtp_ingress.policy_hops = CMTP_HOPS_DEFAULT;
    c->smtp_ingress.starttls = true;
    c->smtp_ingress.policy_header = true;
}

/* check_fail writes |msg| into |err| and returns -EINVAL. */
static int check_fail(char *err, size_t errlen, const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
    return -EINVAL;
}

/* listeners_conflict reports whether any listener of |a| (|na|) conflicts with one of |b|. */
static bool listeners_conflict(const struct cmtp_config_endpoint *a, size_t na,
                               const struct cmtp_config_endpoint *b, size_t nb)
{
    for (size_t i = 0; i < na; i++) {
        for (size_t j = 0; j < nb; j++) {
            if (endpoint_conflict(&a[i], &b[j]))
                return true;
        }
    }
    return false;
}

int cmtp_config_check(const struct cmtp_config *c, char *err, size_t errlen)
{
    char msg[CMTP_CONFIG_ERR_LEN];

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    /* Bounds a hand-made config could break (the loader enforces them per key). */
    if (c->server.listen_count > CMTP_CONFIG_LISTEN_MAX ||
        c->smtp_ingress.listen_count > CMTP_CONFIG_LISTEN_MAX ||
        c->delivery.local_domains_count > CMTP_CONFIG_LOCAL_DOMAINS_MAX ||
        c->delivery.relay_domains_count > CMTP_CONFIG_RELAY_DOMAINS_MAX ||
        c->delivery.dns_servers_count > CMTP_CONFIG_DNS_SERVERS_MAX ||
        c->smtp_ingress.trusted_networks_count > CMTP_CONFIG_NETWORKS_MAX)
        return check_fail(err, errlen, "a list holds more entries than its maximum");
    if (c->limits.size_max < 1 || c->limits.size_max > CMTP_SIZE_MAX_HARD ||
        c->limits.chunk_max < 1 || c->limits.chunk_max > CMTP_CHUNK_MAX_HARD ||
        c->limits.rcpt_max < 1 || c->limits.rcpt_max > CMTP_RCPT_MAX_HARD ||
        c->limits.line_max < 1024 || c->limits.line_max > CMTP_LINE_MAX || c->limits.txn_max < 1 ||
        c->smtp_ingress.policy_hops > CMTP_HOPS_MAX)
        return check_fail(err, errlen, "[limits] a value is outside its hard range");

    if (c->server.listen_count == 0)
        return check_fail(err, errlen, "[server] listen: at least one listener is needed");
    if ((c->tls.cert[0] == '\0') != (c->tls.key[0] == '\0'))
        return check_fail(err, errlen, "[tls] cert and key must be set together");
    if (c->tls.require_client_cert && c->tls.ca[0] == '\0')
        return check_fail(err, errlen, "[tls] require_client_cert needs ca (the client CA file)");
    if (c->limits.chunk_max > c->limits.size_max)
        return check_fail(err, errlen, "[limits] chunk_max must not exceed size_max");
    if (c->server.conn_per_ip_max > c->server.conn_max)
        return check_fail(err, errlen, "[server] conn_per_ip_max must not exceed conn_max");
    if (c->delivery.retry_base_ms > c->delivery.retry_max_ms)
        return check_fail(err, errlen, "[delivery] retry_base must not exceed retry_max");
    if (c->smtp_ingress.tls_required && !c->smtp_ingress.starttls)
        return check_fail(err, errlen, "[smtp_ingress] tls_required needs starttls");
    if (c->delivery.retry_max_ms > c->delivery.lifetime_ms)
        return check_fail(err, errlen, "[delivery] retry_max must not exceed lifetime");
    if (c->delivery.mode == CMTP_DELIVERY_MAILDIR && c->delivery.maildir[0] == '\0')
        return check_fail(err, errlen, "[delivery] mode = maildir needs maildir");
    if (c->delivery.mode == CMTP_DELIVERY_LMTP && c->delivery.lmtp.kind == CMTP_CONFIG_SOCKET_NONE)
        return check_fail(err, errlen, "[delivery] mode = lmtp needs lmtp");
    if (c->delivery.mode == CMTP_DELIVERY_SMTP && c->delivery.smtp.kind == CMTP_CONFIG_SOCKET_NONE)
        return check_fail(err, errlen, "[delivery] mode = smtp needs smtp");
    if (c->delivery.mode == CMTP_DELIVERY_CMTP && !c->delivery.cmtp_set)
        return check_fail(err, errlen, "[delivery] mode = cmtp needs cmtp");
    /* The reference identity must be a host name: smtp_tls_name, or smtp's host when a name. */
    if (c->delivery.smtp_tls_verify && c->delivery.smtp_tls_name[0] == '\0' &&
        c->delivery.smtp.kind != CMTP_CONFIG_SOCKET_NONE &&
        (c->delivery.smtp.kind != CMTP_CONFIG_SOCKET_TCP ||
         c->delivery.smtp.tcp.kind != CMTP_CONFIG_HOST_NAME))
        return check_fail(err, errlen,
                          "[delivery] smtp_tls_verify needs smtp_tls_name when smtp is not a "
                          "host name");
    if (c->delivery.smtp_tls_verify && c->delivery.smtp_starttls == CMTP_SMTPC_TLS_NONE)
        return check_fail(err, errlen,
                          "[delivery] smtp_tls_verify needs smtp_starttls may or require");
    for (size_t i = 0; i < c->delivery.relay_domains_count; i++) {
        for (size_t j = 0; j < c->delivery.local_domains_count; j++) {
            if (strcmp(c->delivery.relay_domains[i].domain, c->delivery.local_domains[j]) == 0) {
                snprintf(msg, sizeof(msg),
                         "[delivery] %s is in both local_domains and relay_domains",
                         c->delivery.local_domains[j]);
                return check_fail(err, errlen, msg);
            }
        }
    }
    if (c->redis.wait_replicas > 0 && c->redis.address.kind == CMTP_CONFIG_SOCKET_NONE)
        return check_fail(err, errlen,
                          "[redis] wait_replicas needs an external redis (address); the "
                          "embedded one has no replicas");
    if ((c->admin.mode & 0007) != 0)
        return check_fail(err, errlen, "[admin] mode must not give others access (e.g. 0600)");
    if ((c->admin.mode & 0600) != 0600)
        return check_fail(err, errlen, "[admin] mode must let the owner read and write (0600)");
    if (c->admin.socket[0] == '\0')
        return check_fail(err, errlen, "[admin] socket must not be empty");
    if (listeners_conflict(c->server.listen, c->server.listen_count, c->smtp_ingress.listen,
                           c->smtp_ingress.listen_count))
        return check_fail(err, errlen, "[smtp_ingress] listen overlaps a [server] listen endpoint");
    if (c->admin.metrics_enabled &&
        (listeners_conflict(c->server.listen, c->server.listen_count, &c->admin.metrics_listen,
                            1) ||
         listeners_conflict(c->smtp_ingress.listen, c->smtp_ingress.listen_count,
                            &c->admin.metrics_listen, 1)))
        return check_fail(err, errlen, "[admin] metrics_listen overlaps another listener");
    return 0;
}

void cmtp_config_free(struct cmtp_config *c)
{
    if (c != NULL)
        explicit_bzero(c, sizeof(*c));
}

const char *cmtp_delivery_mode_name(enum cmtp_delivery_mode m)
{
    switch (m) {
    case CMTP_DELIVERY_MAILDIR:
        return "maildir";
    case CMTP_DELIVERY_LMTP:
        return "lmtp";
    case CMTP_DELIVERY_SMTP:
        return "smtp";
    case CMTP_DELIVERY_CMTP:
        return "cmtp";
    }
    return NULL;
}

const char *cmtp_log_target_name(enum cmtp_log_target t)
{
    switch (t) {
    case CMTP_LOG_TARGET_STDERR:
        return "stderr";
    case CMTP_LOG_TARGET_SYSLOG:
        return "syslog";
    }
    return NULL;
}

bool cmtp_config_domain_is_local(const struct cmtp_config *c, const char *domain)
{
    if (c == NULL || domain == NULL)
        return false;
    if (cmtp_config_relay_for(c, domain) != NULL)
        return false;
    if (c->delivery.local_domains_count == 0)
        return true;
    for (size_t i = 0; i < c->delivery.local_domains_count; i++) {
        if (strcmp(c->delivery.local_domains[i], domain) == 0)
            return true;
    }
    return false;
}

const struct cmtp_config_relay_domain *cmtp_config_relay_for(const struct cmtp_config *c,
                                                             const char *domain)
{
    if (c == NULL || domain == NULL)
        return NULL;
    for (size_t i = 0; i < c->delivery.relay_domains_count; i++) {
        if (strcmp(c->delivery.relay_domains[i].domain, domain) == 0)
            return &c->delivery.relay_domains[i];
    }
    return NULL;
}
