/* core/dsn.c — RFC 3464 DSNs (RFC 6533 when addresses are UTF-8), the CMTP status report JSON
 * and the CMTP-Trace header field, written into caller buffers. Pure: no I/O, no clock. */
#include "core/dsn.h"

#include <errno.h>
#include <string.h>
#include <time.h>

/* LINE_CUT is the longest header line copied from the original message (RFC 5322: 998). */
#define LINE_CUT 998

/* BOUNDARY_TRIES bounds the attempts to find a MIME boundary that no copied text contains. */
#define BOUNDARY_TRIES 16

/* ---- output ---- */

/* sink receives output octets: into a buffer, or through the base64url folder. */
struct sink {
    void (*put)(struct sink *k, const char *p, size_t n);
};

/* buf is a bounded writer: |full| once anything did not fit (the result is then -ENOSPC). */
struct buf {
    struct sink k;
    char *p;
    size_t cap, len;
    bool full;
};

static void buf_put(struct sink *k, const char *p, size_t n)
{
    struct buf *b = (struct buf *)k;
    if (b->full || n >= b->cap - b->len) {
        b->full = true;
        return;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void buf_init(struct buf *b, char *out, size_t cap)
{
    b->k.put = buf_put;
    b->p = out;
    b->cap = cap;
    b->len = 0;
    b->full = cap == 0;
}

/* buf_end NUL-terminates and returns the length or -ENOSPC. */
static int buf_end(struct buf *b)
{
    if (b->full || b->len > (size_t)INT32_MAX)
        return -ENOSPC;
    b->p[b->len] = '\0';
    return (int)b->len;
}

static void put(struct sink *k, const char *s)
{
    k->put(k, s, strlen(s));
}

static void put_u64(struct sink *k, uint64_t v)
{
    char tmp[24];
    size_t t = sizeof(tmp);
    do {
        tmp[--t] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    k->put(k, tmp + t, sizeof(tmp) - t);
}

/* utf8_len returns the length of the valid, non-control UTF-8 character at |s| (|n| > 0 octets
 * available, first octet >= 0x80), or 0 when it is malformed or a C1 control. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char b = s[0];
    size_t len = b >= 0xc2 && b <= 0xdf   ? 2
                 : b >= 0xe0 && b <= 0xef ? 3
                 : b >= 0xf0 && b <= 0xf4 ? 4
                                          : 0;
    if (len == 0 || len > n || !cmtp_utf8_valid((const char *)s, len))
        return 0;
    if (b == 0xc2 && s[1] < 0xa0)
        return 0; /* U+0080..U+009F */
    return len;
}

/* put_text writes |n| octets of free text sanitized: printable ASCII kept, TAB as SP, UTF-8 kept
 * when |utf8| (else "?" per character), anything else "?"; at most |max| octets, cut on a
 * character boundary. Never writes CR or LF. */
static void put_text(struct sink *k, const char *s, size_t n, bool utf8, size_t max)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, out = 0;
    while (i < n && out < max) {
        unsigned char b = p[i];
        if (b >= 0x20 && b < 0x7f) {
            k->put(k, (const char *)p + i, 1);
            i++;
            out++;
        } else if (b == '\t') {
            put(k, " ");
            i++;
            out++;
        } else {
            size_t len = b >= 0x80 ? utf8_len(p + i, n - i) : 0;
            if (len > 0 && utf8) {
                if (out + len > max)
                    break;
                k->put(k, (const char *)p + i, len);
                out += len;
            } else {
                put(k, "?");
                out++;
            }
            i += len > 0 ? len : 1;
        }
    }
}

/* ---- JSON ---- */

/* put_json_str writes |s| (|n| octets) as a JSON string: '"' and '\' escaped, controls as
 * \u00XX, valid UTF-8 kept, invalid octets "?", at most |max| input octets (on a character
 * boundary). */
static void put_json_str(struct sink *k, const char *s, size_t n, size_t max)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    put(k, "\"");
    while (i < n && i < max) {
        unsigned char b = p[i];
        if (b == '"' || b == '\\') {
            char e[2] = {'\\', (char)b};
            k->put(k, e, 2);
            i++;
        } else if (b < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[b >> 4], hex[b & 15]};
            k->put(k, e, 6);
            i++;
        } else if (b < 0x80) {
            k->put(k, (const char *)p + i, 1);
            i++;
        } else {
            size_t len = n - i;
            unsigned char lead = b;
            size_t want = lead >= 0xc2 && lead <= 0xdf   ? 2
                          : lead >= 0xe0 && lead <= 0xef ? 3
                          : lead >= 0xf0 && lead <= 0xf4 ? 4
                                                         : 0;
            if (want > 0 && want <= len && cmtp_utf8_valid((const char *)p + i, want)) {
                if (i + want > max)
                    break;
                k->put(k, (const char *)p + i, want);
                i += want;
            } else {
                put(k, "?");
                i++;
            }
        }
    }
    put(k, "\"");
}

static void put_json_cstr(struct sink *k, const char *s)
{
    put_json_str(k, s, strlen(s), SIZE_MAX);
}

static void put_addr_json(struct sink *k, const struct cmtp_addr *a)
{
    char buf[CMTP_LOCAL_MAX + CMTP_DOMAIN_MAX + 2];
    int n = cmtp_addr_format(a, buf, sizeof(buf));
    put_json_str(k, buf, n > 0 ? (size_t)n : 0, SIZE_MAX);
}

const char *cmtp_report_status_name(enum cmtp_report_status s)
{
    switch (s) {
    case CMTP_REPORT_DELIVERED:
        return "delivered";
    case CMTP_REPORT_FAILED:
        return "failed";
    case CMTP_REPORT_EXPIRED:
        return "expired";
    default:
        return "relay-refused";
    }
}

int cmtp_dsn_report_json(char *out, size_t out_size, const char *txn, const struct cmtp_addr *rcpt,
                         enum cmtp_report_status status, const char *reason, int64_t at)
{
    struct buf b;
    char ts[32];
    if (txn == NULL || !cmtp_txid_valid(txn, strlen(txn)) || rcpt == NULL || rcpt->is_null ||
        rcpt->local_len == 0 || (unsigned)status > CMTP_REPORT_RELAY_REFUSED ||
        cmtp_time_format(at, ts, sizeof(ts)) < 0)
        return -EINVAL;
    buf_init(&b, out, out_size);
    put(&b.k, "{\"txn\":");
    put_json_cstr(&b.k, txn);
    put(&b.k, ",\"rcpt\":");
    put_addr_json(&b.k, rcpt);
    put(&b.k, ",\"status\":\"");
    put(&b.k, cmtp_report_status_name(status));
    put(&b.k, "\",\"reason\":");
    put_json_str(&b.k, reason != NULL ? reason : "", reason != NULL ? strlen(reason) : 0,
                 CMTP_TEXT_MAX);
    put(&b.k, ",\"at\":\"");
    put(&b.k, ts);
    put(&b.k, "\"}");
    return buf_end(&b);
}

/* ---- CMTP-Trace ---- */

/* b64 is a sink that base64url-encodes into |out|, 64 characters per line segment. */
struct b64 {
    struct sink k;
    struct sink *out;
    const char *eol;
    unsigned char pend[3];
    size_t np, col;
};

static void b64_char(struct b64 *e, char c)
{
    if (e->col == 64) {
        put(e->out, e->eol);
        put(e->out, " ");
        e->col = 0;
    }
    e->out->put(e->out, &c, 1);
    e->col++;
}

static void b64_flush(struct b64 *e)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if (e->np == 0)
        return;
    uint32_t v = (uint32_t)e->pend[0] << 16 | (uint32_t)(e->np > 1 ? e->pend[1] : 0) << 8 |
                 (uint32_t)(e->np > 2 ? e->pend[2] : 0);
    size_t chars = e->np + 1; /* 1 -> 2, 2 -> 3, 3 -> 4: no padding */
    for (size_t i = 0; i < chars; i++)
        b64_char(e, al[(v >> (18 - 6 * i)) & 63]);
    e->np = 0;
}

static void b64_put(struct sink *k, const char *p, size_t n)
{
    struct b64 *e = (struct b64 *)k;
    for (size_t i = 0; i < n; i++) {
        e->pend[e->np++] = (unsigned char)p[i];
        if (e->np == 3)
            b64_flush(e);
    }
}

int cmtp_dsn_trace_field(char *out, size_t out_size, const struct cmtp_trace *t, size_t n, bool lf)
{
    struct buf b;
    struct b64 e;
    if (t == NULL || n == 0 || n > CMTP_TRACE_MAX)
        return -EINVAL;
    buf_init(&b, out, out_size);
    memset(&e, 0, sizeof(e));
    e.k.put = b64_put;
    e.out = &b.k;
    e.eol = lf ? "\n" : "\r\n";
    put(&b.k, "CMTP-Trace: ");
    put(&e.k, "[");
    for (size_t i = 0; i < n; i++) {
        char ts[32];
        if (cmtp_time_format(t[i].at, ts, sizeof(ts)) < 0)
            return -EINVAL;
        put(&e.k, i == 0 ? "{\"hop\":" : ",{\"hop\":");
        put_u64(&e.k, t[i].hop);
        put(&e.k, ",\"by\":");
        put_json_str(&e.k, t[i].by, strnlen(t[i].by, sizeof(t[i].by)), SIZE_MAX);
        put(&e.k, ",\"from\":");
        put_json_str(&e.k, t[i].from, strnlen(t[i].from, sizeof(t[i].from)), SIZE_MAX);
        put(&e.k, ",\"at\":\"");
        put(&e.k, ts);
        put(&e.k, "\",\"tls\":");
        put_json_str(&e.k, t[i].tls, strnlen(t[i].tls, sizeof(t[i].tls)), SIZE_MAX);
        put(&e.k, ",\"peer-id\":");
        put_json_str(&e.k, t[i].peer_id, strnlen(t[i].peer_id, sizeof(t[i].peer_id)), SIZE_MAX);
        put(&e.k, ",\"role\":\"");
        put(&e.k, cmtp_role_name(t[i].role));
        put(&e.k, "\"}");
    }
    put(&e.k, "]");
    b64_flush(&e);
    put(&b.k, e.eol);
    return buf_end(&b);
}

/* ---- DSN ---- */

static bool ascii_token(const char *s, size_t max)
{
    size_t n = s != NULL ? strlen(s) : 0;
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        if (b <= 0x20 || b >= 0x7f || b == '<' || b == '>' || b == '"' || b == ';' || b == '(' ||
            b == ')' || b == '\\')
            return false;
    }
    return true;
}

static bool msgid_valid(const char *s)
{
    if (!ascii_token(s, 250))
        return false;
    const char *at = strchr(s, '@');
    return at != NULL && at != s && at[1] != '\0' && strchr(at + 1, '@') == NULL;
}

/* status_valid checks `class.subject.detail` with |cls| as the class. */
static bool status_valid(const char *s, char cls)
{
    size_t i = 0, n = s != NULL ? strlen(s) : 0;
    if (n < 5 || s[0] != cls || s[1] != '.')
        return false;
    i = 2;
    for (int part = 0; part < 2; part++) {
        size_t d = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
            d++;
        }
        if (d == 0 || d > 3)
            return false;
        if (part == 0 && (i >= n || s[i++] != '.'))
            return false;
    }
    return i == n;
}

static const char *action_name(enum cmtp_dsn_action a)
{
    switch (a) {
    case CMTP_DSN_FAILED:
        return "failed";
    case CMTP_DSN_DELAYED:
        return "delayed";
    case CMTP_DSN_DELIVERED:
        return "delivered";
    case CMTP_DSN_RELAYED:
        return "relayed";
    default:
        return "expanded";
    }
}

static char action_class(enum cmtp_dsn_action a)
{
    return a == CMTP_DSN_FAILED ? '5' : a == CMTP_DSN_DELAYED ? '4' : '2';
}

static bool addr_ascii(const struct cmtp_addr *a)
{
    for (size_t i = 0; i < a->local_len; i++) {
        if ((unsigned char)a->local[i] >= 0x80)
            return false;
    }
    return true;
}

static bool addr_ok(const struct cmtp_addr *a)
{
    return a != NULL && !a->is_null && a->local_len > 0 && a->domain_len > 0 &&
           a->local_len <= CMTP_LOCAL_MAX && a->domain_len <= CMTP_DOMAIN_MAX;
}

/* put_date writes an RFC 5322 date-time in UTC. */
static bool put_date(struct sink *k, int64_t t)
{
    static const char *const wd[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const mo[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    time_t tt = (time_t)t;
    if (t < 0 || gmtime_r(&tt, &tm) == NULL || tm.tm_year + 1900 > 9999)
        return false;
    int year = tm.tm_year + 1900;
    put(k, wd[tm.tm_wday]);
    put(k, ", ");
    char d[3] = {(char)('0' + tm.tm_mday / 10), (char)('0' + tm.tm_mday % 10), 0};
    put(k, d);
    put(k, " ");
    put(k, mo[tm.tm_mon]);
    put(k, " ");
    put_u64(k, (uint64_t)year);
    char hms[10] = {(char)('0' + tm.tm_hour / 10), (char)('0' + tm.tm_hour % 10), ':',
                    (char)('0' + tm.tm_min / 10),  (char)('0' + tm.tm_min % 10),  ':',
                    (char)('0' + tm.tm_sec / 10),  (char)('0' + tm.tm_sec % 10),  0};
    put(k, " ");
    put(k, hms);
    put(k, " +0000");
    return true;
}

/* put_addr writes local@domain; with |xtext| the RFC 6533 utf-8-addr-unitext form, where "+",
 * "=" and "\" are written \x{HH}. */
static void put_addr(struct sink *k, const struct cmtp_addr *a, bool xtext)
{
    for (size_t i = 0; i < a->local_len; i++) {
        char c = a->local[i];
        if (xtext && (c == '+' || c == '=' || c == '\\')) {
            static const char hex[] = "0123456789ABCDEF";
            char e[7] = {'\\', 'x', '{', hex[(unsigned char)c >> 4], hex[c & 15], '}', 0};
            put(k, e);
        } else {
            k->put(k, &c, 1);
        }
    }
    put(k, "@");
    k->put(k, a->domain, a->domain_len);
}

/* hdr_section returns the length of the header section of |m| (up to, not including, the empty
 * line that ends it; the whole message when there is none). */
static size_t hdr_section(const uint8_t *m, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t e = i;
        while (e < n && m[e] != '\n')
            e++;
        size_t content = e - i;
        if (content > 0 && m[i + content - 1] == '\r')
            content--;
        if (content == 0)
            return i;
        i = e < n ? e + 1 : n;
    }
    return n;
}

/* put_headers copies the header section |m| (|n| octets) line by line with CRLF, each line cut
 * at LINE_CUT octets, sanitized (UTF-8 kept when |utf8|), at most CMTP_DSN_HEADERS_MAX octets
 * written (whole lines only). |k| NULL only measures: returns whether valid non-ASCII UTF-8
 * occurs. */
static bool put_headers(struct sink *k, const uint8_t *m, size_t n, bool utf8)
{
    size_t i = 0, total = 0;
    bool non_ascii = false;
    while (i < n) {
        size_t e = i;
        while (e < n && m[e] != '\n')
            e++;
        size_t content = e - i;
        if (content > 0 && m[i + content - 1] == '\r')
            content--;
        if (content > LINE_CUT)
            content = LINE_CUT;
        if (total + content + 2 > CMTP_DSN_HEADERS_MAX)
            break;
        for (size_t j = i; j < i + content; j++) {
            if (m[j] >= 0x80 && utf8_len(m + j, i + content - j) > 0)
                non_ascii = true;
        }
        if (k != NULL) {
            put_text(k, (const char *)m + i, content, utf8, LINE_CUT);
            put(k, "\r\n");
        }
        total += content + 2;
        i = e < n ? e + 1 : n;
    }
    return non_ascii;
}

static bool contains(const void *hay, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    return n >= k && memmem(hay, n, needle, k) != NULL;
}

/* make_boundary picks a boundary that none of the copied texts contains. */
static bool make_boundary(char *out, const struct cmtp_dsn *d, const uint8_t *hdr, size_t hn)
{
    static const char hex[] = "0123456789abcdef";
    for (unsigned salt = 0; salt < BOUNDARY_TRIES; salt++) {
        uint64_t h = 1469598103934665603ull;
        const char *id = d->message_id;
        for (size_t i = 0; id[i] != '\0'; i++)
            h = (h ^ (unsigned char)id[i]) * 1099511628211ull;
        h = (h ^ (uint64_t)d->date) * 1099511628211ull;
        h = (h ^ salt) * 1099511628211ull;
        memcpy(out, "=_cmtp-dsn-", 11);
        for (int i = 0; i < 16; i++)
            out[11 + i] = hex[(h >> (60 - 4 * i)) & 15];
        out[27] = '\0';
        bool clash = contains(hdr, hn, out);
        for (size_t r = 0; r < d->nrcpt && !clash; r++) {
            const struct cmtp_dsn_rcpt *x = &d->rcpts[r];
            clash =
                (x->diagnostic != NULL && contains(x->diagnostic, strlen(x->diagnostic), out)) ||
                (x->remote_mta != NULL && contains(x->remote_mta, strlen(x->remote_mta), out)) ||
                contains(x->rcpt->local, x->rcpt->local_len, out);
        }
        if (!clash)
            return true;
    }
    return false;
}

int cmtp_dsn_build(char *out, size_t out_size, const struct cmtp_dsn *d)
{
    struct buf b;
    char boundary[32];
    bool failed = false, delayed = false, global = false;
    if (d == NULL || !ascii_token(d->reporting_mta, CMTP_DOMAIN_MAX) || !addr_ok(d->to) ||
        !msgid_valid(d->message_id) || d->rcpts == NULL || d->nrcpt == 0 || d->date < 0 ||
        d->arrival_date < 0 || (d->original == NULL && d->original_len > 0))
        return -EINVAL;
    if (!addr_ascii(d->to))
        global = true;
    for (size_t i = 0; i < d->nrcpt; i++) {
        const struct cmtp_dsn_rcpt *r = &d->rcpts[i];
        if (!addr_ok(r->rcpt) || (unsigned)r->action > CMTP_DSN_EXPANDED ||
            !status_valid(r->status, action_class(r->action)) ||
            (r->remote_mta != NULL && !ascii_token(r->remote_mta, CMTP_DOMAIN_MAX)) ||
            r->last_attempt < 0 || r->retry_until < 0)
            return -EINVAL;
        failed |= r->action == CMTP_DSN_FAILED;
        delayed |= r->action == CMTP_DSN_DELAYED;
        if (!addr_ascii(r->rcpt))
            global = true;
    }
    size_t hn = d->original != NULL ? hdr_section(d->original, d->original_len) : 0;
    bool hdr_utf8 = hn > 0 && put_headers(NULL, d->original, hn, true);
    bool eight = global || hdr_utf8;
    if (!make_boundary(boundary, d, d->original, hn))
        return -EINVAL;
    buf_init(&b, out, out_size);
    struct sink *k = &b.k;

    /* the message header */
    put(k, "From: Mail Delivery System <MAILER-DAEMON@");
    put(k, d->reporting_mta);
    put(k, ">\r\nTo: <");
    put_addr(k, d->to, false);
    put(k, ">\r\nSubject: ");
    put(k, failed    ? "Undelivered Mail Returned to Sender"
           : delayed ? "Delayed Mail (still being retried)"
                     : "Successful Mail Delivery Report");
    put(k, "\r\nDate: ");
    if (!put_date(k, d->date))
        return -EINVAL;
    put(k, "\r\nMessage-ID: <");
    put(k, d->message_id);
    put(k, ">\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"");
    put(k, boundary);
    put(k, "\"\r\nContent-Transfer-Encoding: ");
    put(k, eight ? "8bit" : "7bit");
    put(k, "\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n--");

    /* 1. human-readable */
    put(k, boundary);
    put(k, "\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n"
           "Content-Transfer-Encoding: ");
    put(k, global ? "8bit" : "7bit");
    put(k, "\r\n\r\nThis is the mail system at host ");
    put(k, d->reporting_mta);
    put(k, ".\r\n\r\n");
    if (failed)
        put(k, "Your message could not be delivered to one or more recipients.\r\n");
    if (delayed)
        put(k, "Delivery to one or more recipients is delayed; the mail system will keep "
               "trying.\r\n");
    if (!failed && !delayed)
        put(k, "Your message was delivered or passed on.\r\n");
    put(k, "\r\n");
    for (size_t i = 0; i < d->nrcpt; i++) {
        const struct cmtp_dsn_rcpt *r = &d->rcpts[i];
        put(k, "<");
        put_addr(k, r->rcpt, false);
        put(k, ">: ");
        put(k, action_name(r->action));
        if (r->diagnostic != NULL) {
            put(k, ": ");
            put_text(k, r->diagnostic, strlen(r->diagnostic), global, CMTP_DSN_TEXT_MAX);
        }
        put(k, "\r\n");
    }

    /* 2. machine-readable */
    put(k, "\r\n--");
    put(k, boundary);
    put(k, "\r\nContent-Description: Delivery report\r\nContent-Type: ");
    put(k, global ? "message/global-delivery-status" : "message/delivery-status");
    put(k, "\r\n");
    if (global)
        put(k, "Content-Transfer-Encoding: 8bit\r\n");
    put(k, "\r\nReporting-MTA: dns; ");
    put(k, d->reporting_mta);
    put(k, "\r\n");
    if (d->arrival_date > 0) {
        put(k, "Arrival-Date: ");
        if (!put_date(k, d->arrival_date))
            return -EINVAL;
        put(k, "\r\n");
    }
    for (size_t i = 0; i < d->nrcpt; i++) {
        const struct cmtp_dsn_rcpt *r = &d->rcpts[i];
        bool u = !addr_ascii(r->rcpt);
        put(k, "\r\nFinal-Recipient: ");
        put(k, u ? "utf-8; " : "rfc822; ");
        put_addr(k, r->rcpt, u);
        put(k, "\r\nAction: ");
        put(k, action_name(r->action));
        put(k, "\r\nStatus: ");
        put(k, r->status);
        put(k, "\r\n");
        if (r->remote_mta != NULL) {
            put(k, "Remote-MTA: dns; ");
            put(k, r->remote_mta);
            put(k, "\r\n");
        }
        if (r->diagnostic != NULL) {
            put(k, "Diagnostic-Code: smtp; ");
            put_text(k, r->diagnostic, strlen(r->diagnostic), global, CMTP_DSN_TEXT_MAX);
            put(k, "\r\n");
        }
        if (r->last_attempt > 0) {
            put(k, "Last-Attempt-Date: ");
            if (!put_date(k, r->last_attempt))
                return -EINVAL;
            put(k, "\r\n");
        }
        if (r->retry_until > 0 && r->action == CMTP_DSN_DELAYED) {
            put(k, "Will-Retry-Until: ");
            if (!put_date(k, r->retry_until))
                return -EINVAL;
            put(k, "\r\n");
        }
    }

    /* 3. the original header section */
    if (hn > 0) {
        put(k, "\r\n--");
        put(k, boundary);
        put(k, "\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: ");
        put(k, hdr_utf8 ? "message/global-headers" : "text/rfc822-headers");
        put(k, "\r\n");
        if (hdr_utf8)
            put(k, "Content-Transfer-Encoding: 8bit\r\n");
        put(k, "\r\n");
        put_headers(k, d->original, hn, hdr_utf8);
    }
    put(k, "\r\n--");
    put(k, boundary);
    put(k, "--\r\n");
    return buf_end(&b);
}
