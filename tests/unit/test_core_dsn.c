/* tests/unit/test_core_dsn.c — RFC 3464 DSNs parsed back (headers, MIME parts, status fields),
 * the CMTP status report JSON checked with jansson against PROTOCOL.md 15.2, and the CMTP-Trace
 * field against PROTOCOL.md 13.4. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/sha.h>

#include "core/dsn.h"

static struct cmtp_addr addr(const char *s)
{
    struct cmtp_addr a;
    assert_int_equal(cmtp_addr_parse(&a, s, strlen(s), 0), CMTP_ADDR_OK);
    return a;
}

/* ---- status report JSON ---- */

static void test_report_json_example(void **state)
{
    (void)state;
    char out[512];
    struct cmtp_addr r = addr("<grace@example.com>");
    int64_t at;
    assert_int_equal(cmtp_time_parse(&at, "2026-06-01T16:20:04Z", 20), 0);
    int n = cmtp_dsn_report_json(out, sizeof(out), "qtrupxodcwe6dsxkcncnmjeili", &r,
                                 CMTP_REPORT_FAILED, "550 no-mailbox", at);
    static const char want[] = "{\"txn\":\"qtrupxodcwe6dsxkcncnmjeili\",\"rcpt\":\"grace@example."
                               "com\",\"status\":\"failed\",\"reason\":\"550 no-mailbox\",\"at\":"
                               "\"2026-06-01T16:20:04Z\"}";
    assert_int_equal(n, 135);
    assert_string_equal(out, want);
    /* the digest PROTOCOL.md gives for this body */
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)out, (size_t)n, md);
    char hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    assert_string_equal(hex, "4c04b1d3c87e2d67847e4b342539123f62db35d5d4fd2f98d37332fa0f722305");
    /* every status keyword, parsed back */
    static const struct {
        enum cmtp_report_status s;
        const char *name;
    } st[] = {{CMTP_REPORT_DELIVERED, "delivered"},
              {CMTP_REPORT_FAILED, "failed"},
              {CMTP_REPORT_EXPIRED, "expired"},
              {CMTP_REPORT_RELAY_REFUSED, "relay-refused"}};
    for (size_t i = 0; i < 4; i++) {
        n = cmtp_dsn_report_json(out, sizeof(out), "txn0123456789abcdef", &r, st[i].s, NULL, at);
        assert_true(n > 0);
        json_error_t err;
        json_t *j = json_loads(out, JSON_REJECT_DUPLICATES, &err);
        assert_non_null(j);
        assert_int_equal(json_object_size(j), 5);
        assert_string_equal(json_string_value(json_object_get(j, "status")), st[i].name);
        assert_string_equal(json_string_value(json_object_get(j, "reason")), "");
        assert_string_equal(cmtp_report_status_name(st[i].s), st[i].name);
        json_decref(j);
    }
}

static void test_report_json_escaping(void **state)
{
    (void)state;
    char out[2048];
    struct cmtp_addr r = addr("<j\xc3\xb6rg@b\xc3\xbc.test>");
    /* quotes, backslash, controls, invalid UTF-8, a 4-octet character */
    static const char reason[] = "550 \"no\" \\ such\r\n\t\x01\xff\xc3(x \xf0\x9f\x93\xa7 end";
    int n = cmtp_dsn_report_json(out, sizeof(out), "txn0123456789abcdef", &r,
                                 CMTP_REPORT_RELAY_REFUSED, reason, 0);
    assert_true(n > 0);
    assert_null(memchr(out, '\n', (size_t)n));
    assert_null(memchr(out, '\r', (size_t)n));
    json_error_t err;
    json_t *j = json_loads(out, JSON_REJECT_DUPLICATES, &err);
    if (j == NULL)
        fail_msg("jansson: %s in %s", err.text, out);
    assert_string_equal(json_string_value(json_object_get(j, "rcpt")),
                        "j\xc3\xb6rg@xn--b-eha.test");
    assert_string_equal(json_string_value(json_object_get(j, "reason")),
                        "550 \"no\" \\ such\r\n\t\x01?\?(x \xf0\x9f\x93\xa7 end");
    assert_string_equal(json_string_value(json_object_get(j, "at")), "1970-01-01T00:00:00Z");
    json_decref(j);
    /* a long reason is cut at CMTP_TEXT_MAX input octets on a character boundary */
    char lng[2000];
    for (size_t i = 0; i < 1998; i += 2)
        memcpy(lng + i, "\xc3\xa9", 2);
    lng[1998] = '\0';
    n = cmtp_dsn_report_json(out, sizeof(out), "txn0123456789abcdef", &r, CMTP_REPORT_FAILED, lng,
                             0);
    assert_true(n > 0);
    j = json_loads(out, 0, &err);
    assert_non_null(j);
    assert_int_equal(strlen(json_string_value(json_object_get(j, "reason"))), CMTP_TEXT_MAX);
    json_decref(j);
    /* invalid arguments and small buffers */
    assert_int_equal(cmtp_dsn_report_json(out, sizeof(out), "short", &r, CMTP_REPORT_FAILED, "", 0),
                     -EINVAL);
    assert_int_equal(cmtp_dsn_report_json(out, sizeof(out), NULL, &r, CMTP_REPORT_FAILED, "", 0),
                     -EINVAL);
    assert_int_equal(cmtp_dsn_report_json(out, sizeof(out), "txn0123456789abcdef", NULL,
                                          CMTP_REPORT_FAILED, "", 0),
                     -EINVAL);
    struct cmtp_addr null;
    assert_int_equal(cmtp_addr_parse(&null, "<>", 2, CMTP_ADDR_ALLOW_NULL), CMTP_ADDR_OK);
    assert_int_equal(cmtp_dsn_report_json(out, sizeof(out), "txn0123456789abcdef", &null,
                                          CMTP_REPORT_FAILED, "", 0),
                     -EINVAL);
    n = cmtp_dsn_report_json(out, sizeof(out), "txn0123456789abcdef", &r, CMTP_REPORT_FAILED, "x",
                             0);
    assert_true(n > 0);
    for (int size = 0; size <= n; size++)
        assert_int_equal(cmtp_dsn_report_json(out, (size_t)size, "txn0123456789abcdef", &r,
                                              CMTP_REPORT_FAILED, "x", 0),
                         -ENOSPC);
    assert_int_equal(cmtp_dsn_report_json(out, (size_t)n + 1, "txn0123456789abcdef", &r,
                                          CMTP_REPORT_FAILED, "x", 0),
                     n);
}

/* ---- CMTP-Trace ---- */

static void trace(struct cmtp_trace *t, unsigned hop, const char *by, const char *from,
                  const char *at, const char *tls, const char *peer, enum cmtp_role role)
{
    memset(t, 0, sizeof(*t));
    t->hop = hop;
    strcpy(t->by, by);
    strcpy(t->from, from);
    assert_int_equal(cmtp_time_parse(&t->at, at, strlen(at)), 0);
    strcpy(t->tls, tls);
    strcpy(t->peer_id, peer);
    t->role = role;
}

/* b64url_decode decodes unpadded base64url; returns the length or -1. */
static int b64url_decode(uint8_t *out, const char *s, size_t n)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint32_t acc = 0;
    int bits = 0, k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = strchr(al, s[i]);
        if (p == NULL || s[i] == '\0')
            return -1;
        acc = acc << 6 | (uint32_t)(p - al);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[k++] = (uint8_t)(acc >> bits);
        }
    }
    return k;
}

/* unfold reads a CMTP-Trace field back: unfold, drop whitespace, decode. */
static int trace_decode(uint8_t *json, const char *field)
{
    const char *p = field + strlen("CMTP-Trace: ");
    static char b64[32768];
    size_t k = 0;
    assert_int_equal(strncmp(field, "CMTP-Trace: ", 12), 0);
    for (; *p != '\0'; p++) {
        if (*p != ' ' && *p != '\r' && *p != '\n')
            b64[k++] = *p;
    }
    return b64url_decode(json, b64, k);
}

static void test_trace_field_example(void **state)
{
    (void)state;
    struct cmtp_trace t[2];
    trace(&t[0], 1, "relay.example.com", "example.org", "2026-06-01T16:20:03Z",
          "TLSv1.3/TLS_AES_256_GCM_SHA384", "out.example.org", CMTP_ROLE_RELAY);
    trace(&t[1], 2, "mx2.example.com", "relay.example.com", "2026-06-01T16:20:04Z",
          "TLSv1.3/TLS_CHACHA20_POLY1305_SHA256", "relay.example.com", CMTP_ROLE_FINAL);
    char out[2048];
    int n = cmtp_dsn_trace_field(out, sizeof(out), t, 2, false);
    static const char want[] =
        "CMTP-Trace: W3siaG9wIjoxLCJieSI6InJlbGF5LmV4YW1wbGUuY29tIiwiZnJvbSI6ImV4YW1w\r\n"
        " bGUub3JnIiwiYXQiOiIyMDI2LTA2LTAxVDE2OjIwOjAzWiIsInRscyI6IlRMU3Yx\r\n"
        " LjMvVExTX0FFU18yNTZfR0NNX1NIQTM4NCIsInBlZXItaWQiOiJvdXQuZXhhbXBs\r\n"
        " ZS5vcmciLCJyb2xlIjoicmVsYXkifSx7ImhvcCI6MiwiYnkiOiJteDIuZXhhbXBs\r\n"
        " ZS5jb20iLCJmcm9tIjoicmVsYXkuZXhhbXBsZS5jb20iLCJhdCI6IjIwMjYtMDYt\r\n"
        " MDFUMTY6MjA6MDRaIiwidGxzIjoiVExTdjEuMy9UTFNfQ0hBQ0hBMjBfUE9MWTEz\r\n"
        " MDVfU0hBMjU2IiwicGVlci1pZCI6InJlbGF5LmV4YW1wbGUuY29tIiwicm9sZSI6\r\n"
        " ImZpbmFsIn1d\r\n";
    assert_int_equal(n, (int)sizeof(want) - 1);
    assert_string_equal(out, want);
    static uint8_t json[16384];
    int jn = trace_decode(json, out);
    static const char want_json[] =
        "[{\"hop\":1,\"by\":\"relay.example.com\",\"from\":\"example.org\",\"at\":\"2026-06-01T16:"
        "20:03Z\",\"tls\":\"TLSv1.3/TLS_AES_256_GCM_SHA384\",\"peer-id\":\"out.example.org\","
        "\"role\":\"relay\"},{\"hop\":2,\"by\":\"mx2.example.com\",\"from\":\"relay.example.com\","
        "\"at\":\"2026-06-01T16:20:04Z\",\"tls\":\"TLSv1.3/TLS_CHACHA20_POLY1305_SHA256\","
        "\"peer-id\":\"relay.example.com\",\"role\":\"final\"}]";
    assert_int_equal(jn, 345);
    assert_memory_equal(json, want_json, 345);
    /* LF line endings for a store that keeps LF */
    n = cmtp_dsn_trace_field(out, sizeof(out), t, 2, true);
    assert_int_equal(n, (int)sizeof(want) - 1 - 8);
    assert_null(strchr(out, '\r'));
    /* 32 records: every line within 76 octets, the JSON parses, one field */
    struct cmtp_trace many[CMTP_TRACE_MAX];
    for (unsigned i = 0; i < CMTP_TRACE_MAX; i++)
        trace(&many[i], i + 1, "r.example.com", "-", "2026-06-01T16:20:03Z",
              "TLSv1.3/TLS_AES_128_GCM_SHA256", "-", CMTP_ROLE_RELAY);
    static char big[16384];
    n = cmtp_dsn_trace_field(big, sizeof(big), many, CMTP_TRACE_MAX, false);
    assert_true(n > 0);
    size_t lines = 0;
    for (char *l = big; *l != '\0';) {
        char *e = strstr(l, "\r\n");
        assert_non_null(e);
        assert_true(e - l <= 76);
        if (l != big)
            assert_int_equal(l[0], ' ');
        lines++;
        l = e + 2;
    }
    assert_true(lines > 10);
    jn = trace_decode(json, big);
    assert_true(jn > 0 && (size_t)jn < sizeof(json));
    json_error_t err;
    json_t *j = json_loadb((const char *)json, (size_t)jn, 0, &err);
    assert_non_null(j);
    assert_int_equal(json_array_size(j), CMTP_TRACE_MAX);
    json_decref(j);
    assert_int_equal(cmtp_dsn_trace_field(out, sizeof(out), t, 0, false), -EINVAL);
    assert_int_equal(cmtp_dsn_trace_field(out, sizeof(out), many, CMTP_TRACE_MAX + 1, false),
                     -EINVAL);
    assert_int_equal(cmtp_dsn_trace_field(out, 100, t, 2, false), -ENOSPC);
}

/* ---- DSN ---- */

/* msg is a parsed DSN: header fields and MIME parts. */
struct msg {
    char hdr[64][1024];
    size_t nhdr;
    char boundary[128];
    char *part[8]; /* each part: its header and body, CRLF line endings */
    size_t npart;
    char *copy;
};

static const char *hdr_get(const struct msg *m, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < m->nhdr; i++) {
        if (strncasecmp(m->hdr[i], name, n) == 0 && m->hdr[i][n] == ':')
            return m->hdr[i] + n + 2;
    }
    return NULL;
}

/* parse checks the generic rules (CRLF only, lines <= 998, 7-bit unless allowed) and splits the
 * message into header fields (unfolded) and MIME parts. */
static void parse(struct msg *m, const char *s, size_t n, bool eight_ok)
{
    memset(m, 0, sizeof(*m));
    assert_int_equal(strlen(s), n);
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r') {
            assert_true(i + 1 < n && s[i + 1] == '\n');
            col = 0;
            i++;
            continue;
        }
        assert_true(s[i] != '\n'); /* no bare LF */
        assert_true(s[i] != '\0');
        if (!eight_ok)
            assert_true((unsigned char)s[i] < 0x80);
        assert_true(++col <= 998);
    }
    const char *end = strstr(s, "\r\n\r\n");
    assert_non_null(end);
    for (const char *l = s; l < end + 2;) {
        const char *e = strstr(l, "\r\n");
        if (*l == ' ' || *l == '\t') {
            assert_true(m->nhdr > 0);
            strncat(m->hdr[m->nhdr - 1], l, (size_t)(e - l));
        } else {
            assert_true(m->nhdr < 64);
            memcpy(m->hdr[m->nhdr], l, (size_t)(e - l));
            m->hdr[m->nhdr++][e - l] = '\0';
        }
        l = e + 2;
    }
    const char *ct = hdr_get(m, "Content-Type");
    assert_non_null(ct);
    const char *b = strstr(ct, "boundary=\"");
    assert_non_null(b);
    b += 10;
    const char *q = strchr(b, '"');
    memcpy(m->boundary, b, (size_t)(q - b));
    /* split at delimiter lines */
    m->copy = strdup(end + 4);
    char delim[160], close[160];
    snprintf(delim, sizeof(delim), "\r\n--%s\r\n", m->boundary);
    snprintf(close, sizeof(close), "\r\n--%s--\r\n", m->boundary);
    char *last = strstr(m->copy, close);
    assert_non_null(last);
    assert_int_equal(strlen(last), strlen(close)); /* the close delimiter ends the message */
    *last = '\0';
    char *p = strstr(m->copy, delim);
    assert_non_null(p);
    while (p != NULL) {
        *p = '\0';
        p += strlen(delim);
        assert_true(m->npart < 8);
        m->part[m->npart++] = p;
        p = strstr(p, delim);
    }
}

static void msg_free(struct msg *m)
{
    free(m->copy);
}

/* part_body returns the body of part |i| and checks its Content-Type. */
static const char *part_body(const struct msg *m, size_t i, const char *ctype)
{
    const char *p = m->part[i];
    const char *e = strstr(p, "\r\n\r\n");
    assert_non_null(e);
    char want[128];
    snprintf(want, sizeof(want), "Content-Type: %s", ctype);
    const char *c = strstr(p, want);
    if (c == NULL || c > e)
        fail_msg("part %zu is not %s: %.*s", i, ctype, (int)(e - p), p);
    return e + 4;
}

/* field returns the value of |name| in the status group starting at |g| (before the next blank
 * line), copied into |out|; NULL when absent. */
static const char *field(const char *g, const char *name, char *out, size_t out_size)
{
    const char *end = strstr(g, "\r\n\r\n");
    size_t n = strlen(name);
    for (const char *l = g; l != NULL && (end == NULL || l <= end);) {
        if (strncmp(l, name, n) == 0 && l[n] == ':' && l[n + 1] == ' ') {
            const char *e = strstr(l, "\r\n");
            size_t k = e != NULL ? (size_t)(e - l) - n - 2 : strlen(l) - n - 2;
            assert_true(k < out_size);
            memcpy(out, l + n + 2, k);
            out[k] = '\0';
            return out;
        }
        l = strstr(l, "\r\n");
        if (l != NULL)
            l += 2;
    }
    return NULL;
}

static const char orig[] = "Received: from x by y\r\n"
                           "From: Alice <alice@a.test>\r\n"
                           "To: bob@b.test\r\n"
                           "Subject: hello\r\n"
                           " folded\n" /* a bare LF header line ending */
                           "\r\n"
                           "body that must not appear\r\n";

static void test_dsn_structure(void **state)
{
    (void)state;
    struct cmtp_addr to = addr("<alice@a.test>"), r0 = addr("<bob@b.test>"),
                     r1 = addr("<carol@c.test>"), r2 = addr("<dave@d.test>");
    int64_t t0 = 1780330804; /* 2026-06-01T16:20:04Z */
    struct cmtp_dsn_rcpt rc[3] = {
        {.rcpt = &r0,
         .action = CMTP_DSN_FAILED,
         .status = "5.1.1",
         .remote_mta = "mx.b.test",
         .diagnostic = "550 5.1.1 <bob@b.test>: no such user",
         .last_attempt = t0},
        {.rcpt = &r1,
         .action = CMTP_DSN_DELAYED,
         .status = "4.4.1",
         .diagnostic = "connection timed out",
         .last_attempt = t0,
         .retry_until = t0 + 86400},
        {.rcpt = &r2, .action = CMTP_DSN_DELIVERED, .status = "2.0.0"},
    };
    struct cmtp_dsn d = {.reporting_mta = "relay.a.test",
                         .to = &to,
                         .message_id = "dsn.Q123@relay.a.test",
                         .date = t0,
                         .arrival_date = t0 - 3600,
                         .rcpts = rc,
                         .nrcpt = 3,
                         .original = (const uint8_t *)orig,
                         .original_len = sizeof(orig) - 1};
    static char out[65536];
    int n = cmtp_dsn_build(out, sizeof(out), &d);
    assert_true(n > 0);
    struct msg m;
    parse(&m, out, (size_t)n, false);
    assert_string_equal(hdr_get(&m, "From"), "Mail Delivery System <MAILER-DAEMON@relay.a.test>");
    assert_string_equal(hdr_get(&m, "To"), "<alice@a.test>");
    assert_string_equal(hdr_get(&m, "Subject"), "Undelivered Mail Returned to Sender");
    assert_string_equal(hdr_get(&m, "Date"), "Mon, 01 Jun 2026 16:20:04 +0000");
    assert_string_equal(hdr_get(&m, "Message-ID"), "<dsn.Q123@relay.a.test>");
    assert_string_equal(hdr_get(&m, "Auto-Submitted"), "auto-replied");
    assert_string_equal(hdr_get(&m, "MIME-Version"), "1.0");
    assert_string_equal(hdr_get(&m, "Content-Transfer-Encoding"), "7bit");
    assert_non_null(
        strstr(hdr_get(&m, "Content-Type"), "multipart/report; report-type=delivery-status;"));
    assert_int_equal(m.npart, 3);
    /* 1: text */
    const char *text = part_body(&m, 0, "text/plain; charset=utf-8");
    assert_non_null(strstr(text, "<bob@b.test>: failed: 550 5.1.1 <bob@b.test>: no such user"));
    assert_non_null(strstr(text, "<carol@c.test>: delayed: connection timed out"));
    /* 2: delivery-status: per-message group, then one group per recipient */
    const char *st = part_body(&m, 1, "message/delivery-status");
    char v[1024];
    assert_string_equal(field(st, "Reporting-MTA", v, sizeof(v)), "dns; relay.a.test");
    assert_string_equal(field(st, "Arrival-Date", v, sizeof(v)), "Mon, 01 Jun 2026 15:20:04 +0000");
    const char *g[3];
    g[0] = strstr(st, "\r\n\r\n") + 4;
    g[1] = strstr(g[0], "\r\n\r\n") + 4;
    g[2] = strstr(g[1], "\r\n\r\n") + 4;
    assert_null(strstr(g[2], "\r\n\r\n"));
    assert_string_equal(field(g[0], "Final-Recipient", v, sizeof(v)), "rfc822; bob@b.test");
    assert_string_equal(field(g[0], "Action", v, sizeof(v)), "failed");
    assert_string_equal(field(g[0], "Status", v, sizeof(v)), "5.1.1");
    assert_string_equal(field(g[0], "Remote-MTA", v, sizeof(v)), "dns; mx.b.test");
    assert_string_equal(field(g[0], "Diagnostic-Code", v, sizeof(v)),
                        "smtp; 550 5.1.1 <bob@b.test>: no such user");
    assert_string_equal(field(g[0], "Last-Attempt-Date", v, sizeof(v)),
                        "Mon, 01 Jun 2026 16:20:04 +0000");
    assert_null(field(g[0], "Will-Retry-Until", v, sizeof(v)));
    assert_string_equal(field(g[1], "Action", v, sizeof(v)), "delayed");
    assert_string_equal(field(g[1], "Status", v, sizeof(v)), "4.4.1");
    assert_string_equal(field(g[1], "Will-Retry-Until", v, sizeof(v)),
                        "Tue, 02 Jun 2026 16:20:04 +0000");
    assert_null(field(g[1], "Remote-MTA", v, sizeof(v)));
    assert_string_equal(field(g[2], "Final-Recipient", v, sizeof(v)), "rfc822; dave@d.test");
    assert_string_equal(field(g[2], "Action", v, sizeof(v)), "delivered");
    assert_null(field(g[2], "Diagnostic-Code", v, sizeof(v)));
    /* 3: the original header section only, line endings canonicalized */
    const char *h = part_body(&m, 2, "text/rfc822-headers");
    assert_string_equal(h, "Received: from x by y\r\nFrom: Alice <alice@a.test>\r\nTo: bob@b.test"
                           "\r\nSubject: hello\r\n folded\r\n");
    assert_null(strstr(out, "must not appear"));
    msg_free(&m);

    /* only delays: another subject; no original: two parts */
    d.rcpts = &rc[1];
    d.nrcpt = 1;
    d.original = NULL;
    d.original_len = 0;
    n = cmtp_dsn_build(out, sizeof(out), &d);
    assert_true(n > 0);
    parse(&m, out, (size_t)n, false);
    assert_string_equal(hdr_get(&m, "Subject"), "Delayed Mail (still being retried)");
    assert_int_equal(m.npart, 2);
    msg_free(&m);
    d.rcpts = &rc[2];
    n = cmtp_dsn_build(out, sizeof(out), &d);
    parse(&m, out, (size_t)n, false);
    assert_string_equal(hdr_get(&m, "Subject"), "Successful Mail Delivery Report");
    msg_free(&m);

    /* every buffer size below the length fails cleanly */
    d.rcpts = rc;
    d.nrcpt = 3;
    d.original = (const uint8_t *)orig;
    d.original_len = sizeof(orig) - 1;
    n = cmtp_dsn_build(out, sizeof(out), &d);
    for (int size = 0; size <= n; size += 7)
        assert_int_equal(cmtp_dsn_build(out, (size_t)size, &d), -ENOSPC);
    assert_int_equal(cmtp_dsn_build(out, (size_t)n, &d), -ENOSPC);
    assert_int_equal(cmtp_dsn_build(out, (size_t)n + 1, &d), n);
}

static void test_dsn_global(void **state)
{
    (void)state;
    struct cmtp_addr to = addr("<j\xc3\xb6rg@a.test>"), r0 = addr("<b+tag=x@b.test>"),
                     r1 = addr("<m\xc3\xbcller+x@b\xc3\xbc.test>");
    struct cmtp_dsn_rcpt rc[2] = {
        {.rcpt = &r0,
         .action = CMTP_DSN_FAILED,
         .status = "5.1.1",
         .diagnostic = "550 unbekannter Empf\xc3\xa4nger"},
        {.rcpt = &r1, .action = CMTP_DSN_FAILED, .status = "5.2.2", .diagnostic = "552 voll"},
    };
    struct cmtp_dsn d = {.reporting_mta = "relay.a.test",
                         .to = &to,
                         .message_id = "x@y.test",
                         .date = 1,
                         .rcpts = rc,
                         .nrcpt = 2};
    static char out[65536];
    int n = cmtp_dsn_build(out, sizeof(out), &d);
    assert_true(n > 0);
    struct msg m;
    parse(&m, out, (size_t)n, true);
    assert_string_equal(hdr_get(&m, "To"), "<j\xc3\xb6rg@a.test>");
    assert_string_equal(hdr_get(&m, "Content-Transfer-Encoding"), "8bit");
    const char *st = part_body(&m, 1, "message/global-delivery-status");
    char v[1024];
    const char *g0 = strstr(st, "\r\n\r\n") + 4;
    const char *g1 = strstr(g0, "\r\n\r\n") + 4;
    assert_string_equal(field(g0, "Final-Recipient", v, sizeof(v)), "rfc822; b+tag=x@b.test");
    assert_string_equal(field(g0, "Diagnostic-Code", v, sizeof(v)),
                        "smtp; 550 unbekannter Empf\xc3\xa4nger");
    assert_string_equal(field(g1, "Final-Recipient", v, sizeof(v)),
                        "utf-8; m\xc3\xbcller\\x{2B}x@xn--b-eha.test");
    msg_free(&m);

    /* ASCII addresses: a UTF-8 diagnostic becomes "?" and the DSN stays 7-bit */
    struct cmtp_addr ta = addr("<alice@a.test>");
    d.to = &ta;
    d.nrcpt = 1;
    n = cmtp_dsn_build(out, sizeof(out), &d);
    assert_true(n > 0);
    parse(&m, out, (size_t)n, false);
    st = part_body(&m, 1, "message/delivery-status");
    g0 = strstr(st, "\r\n\r\n") + 4;
    assert_string_equal(field(g0, "Diagnostic-Code", v, sizeof(v)),
                        "smtp; 550 unbekannter Empf?nger");
    msg_free(&m);

    /* UTF-8 in the original headers only: message/global-headers */
    static const char u8h[] = "Subject: gr\xc3\xbc\xc3\x9f"
                              "e\r\n\r\nbody";
    d.original = (const uint8_t *)u8h;
    d.original_len = sizeof(u8h) - 1;
    n = cmtp_dsn_build(out, sizeof(out), &d);
    parse(&m, out, (size_t)n, true);
    assert_string_equal(hdr_get(&m, "Content-Transfer-Encoding"), "8bit");
    assert_string_equal(part_body(&m, 2, "message/global-headers"), "Subject: gr\xc3\xbc\xc3\x9f"
                                                                    "e\r\n");
    part_body(&m, 1, "message/delivery-status");
    msg_free(&m);
}

static void test_dsn_hostile(void **state)
{
    (void)state;
    struct cmtp_addr to = addr("<alice@a.test>"), r0 = addr("<bob@b.test>");
    struct cmtp_dsn_rcpt rc = {.rcpt = &r0,
                               .action = CMTP_DSN_FAILED,
                               .status = "5.0.0",
                               .diagnostic = "550 x\r\nBcc: victim@c.test\r\n\r\n--=_cmtp\0x"};
    /* headers with NUL, bare CR, invalid UTF-8, a 2000-octet line */
    static char hostile[40000];
    size_t k = 0;
    k += (size_t)sprintf(hostile + k, "X-A: a\rb\xff\xc3(c\r\n");
    memcpy(hostile + k, "X-Nul: a", 8);
    k += 8;
    hostile[k++] = '\0';
    k += (size_t)sprintf(hostile + k, "b\r\nX-Long: ");
    memset(hostile + k, 'L', 2000);
    k += 2000;
    k += (size_t)sprintf(hostile + k, "\r\n");
    while (k < 30000)
        k += (size_t)sprintf(hostile + k, "X-Filler: 0123456789012345678901234567890123456789\r\n");
    k += (size_t)sprintf(hostile + k, "\r\nbody\r\n");
    struct cmtp_dsn d = {.reporting_mta = "relay.a.test",
                         .to = &to,
                         .message_id = "x@y.test",
                         .date = 1000,
                         .rcpts = &rc,
                         .nrcpt = 1,
                         .original = (const uint8_t *)hostile,
                         .original_len = k};
    static char out[65536];
    int n = cmtp_dsn_build(out, sizeof(out), &d);
    assert_true(n > 0);
    struct msg m;
    parse(&m, out, (size_t)n, false);
    assert_null(hdr_get(&m, "Bcc"));
    assert_int_equal(m.npart, 3);
    const char *st = part_body(&m, 1, "message/delivery-status");
    char v[1024];
    const char *g0 = strstr(st, "\r\n\r\n") + 4;
    assert_string_equal(field(g0, "Diagnostic-Code", v, sizeof(v)),
                        "smtp; 550 x?\?Bcc: victim@c.test?\?\?\?--=_cmtp");
    const char *h = part_body(&m, 2, "text/rfc822-headers");
    assert_int_equal(strncmp(h, "X-A: a?b?\?(c\r\nX-Nul: a?b\r\nX-Long: ", 34), 0);
    const char *ll = strstr(h, "X-Long: ");
    assert_int_equal(strstr(ll, "\r\n") - ll, 998);
    assert_true(strlen(h) <= CMTP_DSN_HEADERS_MAX);
    assert_true(strlen(h) > CMTP_DSN_HEADERS_MAX - 100);
    assert_null(strstr(h, "body"));
    msg_free(&m);

    /* the boundary is never one that the copied text contains */
    char first[128];
    parse(&m, out, (size_t)n, false);
    snprintf(first, sizeof(first), "%s", m.boundary);
    msg_free(&m);
    char clash[256];
    int cn = snprintf(clash, sizeof(clash), "X-Evil: --%s\r\n\r\n", first);
    d.original = (const uint8_t *)clash;
    d.original_len = (size_t)cn;
    n = cmtp_dsn_build(out, sizeof(out), &d);
    assert_true(n > 0);
    parse(&m, out, (size_t)n, false);
    assert_string_not_equal(m.boundary, first);
    assert_int_equal(m.npart, 3);
    msg_free(&m);
}

static void test_dsn_invalid(void **state)
{
    (void)state;
    struct cmtp_addr to = addr("<alice@a.test>"), r0 = addr("<bob@b.test>"), null;
    assert_int_equal(cmtp_addr_parse(&null, "<>", 2, CMTP_ADDR_ALLOW_NULL), CMTP_ADDR_OK);
    struct cmtp_dsn_rcpt rc = {.rcpt = &r0, .action = CMTP_DSN_FAILED, .status = "5.1.1"};
    struct cmtp_dsn ok = {.reporting_mta = "relay.a.test",
                          .to = &to,
                          .message_id = "x@y.test",
                          .date = 1,
                          .rcpts = &rc,
                          .nrcpt = 1};
    char out[8192];
    assert_true(cmtp_dsn_build(out, sizeof(out), &ok) > 0);
    struct cmtp_dsn d;
    struct cmtp_dsn_rcpt r;
#define BAD(mutation)                                                                              \
    do {                                                                                           \
        d = ok;                                                                                    \
        r = rc;                                                                                    \
        d.rcpts = &r;                                                                              \
        mutation;                                                                                  \
        assert_int_equal(cmtp_dsn_build(out, sizeof(out), &d), -EINVAL);                           \
    } while (0)
    BAD(r.status = "4.1.1"); /* class does not match failed */
    BAD(r.status = "5.1");
    BAD(r.status = "5.1.1 ");
    BAD(r.status = "5.1111.1");
    BAD(r.status = NULL);
    BAD(r.action = CMTP_DSN_DELIVERED);
    BAD(r.rcpt = &null);
    BAD(r.remote_mta = "mx b");
    BAD(r.remote_mta = "mx\r\nX: y");
    BAD(d.to = &null);
    BAD(d.to = NULL);
    BAD(d.nrcpt = 0);
    BAD(d.rcpts = NULL);
    BAD(d.message_id = "no-at");
    BAD(d.message_id = "a@b@c");
    BAD(d.message_id = "<a@b>");
    BAD(d.message_id = "a@b\r\nX: y");
    BAD(d.reporting_mta = "bad host");
    BAD(d.reporting_mta = NULL);
    BAD(d.date = -1);
    BAD(d.original_len = 5);
    assert_int_equal(cmtp_dsn_build(out, sizeof(out), NULL), -EINVAL);
#undef BAD
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_report_json_example), cmocka_unit_test(test_report_json_escaping),
        cmocka_unit_test(test_trace_field_example), cmocka_unit_test(test_dsn_structure),
        cmocka_unit_test(test_dsn_global),          cmocka_unit_test(test_dsn_hostile),
        cmocka_unit_test(test_dsn_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
