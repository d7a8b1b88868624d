/* core/proto.c — the CMTP/1 wire codec: incremental framer, command parsers and formatters,
 * reply formatter and parser. Pure: no I/O, no allocation; not the session state machines. */
#include "core/proto.h"

#include <errno.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * Small helpers.
 * ------------------------------------------------------------------------------------------- */

static char lower_ascii(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* ieq_mem compares |n| octets at |a| and |b|, ASCII case-folded. */
static bool ieq_mem(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (lower_ascii(a[i]) != lower_ascii(b[i]))
            return false;
    }
    return true;
}

/* ieq reports whether |len| octets at |s| equal the NUL-terminated |lit|, ASCII case-folded. */
static bool ieq(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && ieq_mem(s, lit, len);
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* is_ctl reports an ASCII control octet (C0 or DEL). */
static bool is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* utf8_char_len returns the length of the well-formed UTF-8 character at |s| (|len| octets
 * left), or 0 when it is not well formed. |*cp| gets the code point. */
static size_t utf8_char_len(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char b = s[0];
    size_t n;
    uint32_t c;
    unsigned char lo = 0x80, hi = 0xbf;
    if (b < 0x80) {
        *cp = b;
        return 1;
    } else if (b >= 0xc2 && b <= 0xdf) {
        n = 2;
        c = b & 0x1f;
    } else if (b >= 0xe0 && b <= 0xef) {
        n = 3;
        c = b & 0x0f;
        if (b == 0xe0)
            lo = 0xa0;
        else if (b == 0xed)
            hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
        n = 4;
        c = b & 0x07;
        if (b == 0xf0)
            lo = 0x90;
        else if (b == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        unsigned char x = s[i];
        if (x < lo || x > hi)
            return 0;
        lo = 0x80;
        hi = 0xbf;
        c = (c << 6) | (x & 0x3f);
    }
    *cp = c;
    return n;
}

/* printable_utf8 reports whether |len| octets at |s| are well-formed UTF-8 without C0, DEL, C1
 * controls or SP: what a reply parameter value or an address on a command line may hold. */
static bool printable_utf8(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = utf8_char_len(p + i, len - i, &cp);
        if (n == 0 || cp <= 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f))
            return false;
        i += n;
    }
    return true;
}

/* sbuf is a bounded string builder; |ovf| is set once anything did not fit. */
struct sbuf {
    char *p;
    size_t cap; /* usable octets, the NUL excluded */
    size_t len;
    bool ovf;
};

static void sb_init(struct sbuf *b, char *out, size_t out_size, size_t limit)
{
    b->p = out;
    b->cap = out_size > 0 ? out_size - 1 : 0;
    if (b->cap > limit)
        b->cap = limit;
    b->len = 0;
    b->ovf = out_size == 0;
}

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->ovf || n > b->cap - b->len) {
        b->ovf = true;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_str(struct sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_u64(struct sbuf *b, uint64_t v)
{
    char tmp[CMTP_NUM_DIGITS_MAX];
    size_t n = 0;
    do {
        tmp[sizeof(tmp) - 1 - n] = (char)('0' + v % 10);
        v /= 10;
        n++;
    } while (v != 0);
    sb_put(b, tmp + sizeof(tmp) - n, n);
}

/* sb_finish NUL-terminates and returns the length, or -ENOSPC. */
static int sb_finish(struct sbuf *b)
{
    if (b->ovf)
        return -ENOSPC;
    b->p[b->len] = '\0';
    return (int)b->len;
}

/* ---------------------------------------------------------------------------------------------
 * Reader.
 * ------------------------------------------------------------------------------------------- */

void cmtp_reader_init(struct cmtp_reader *r)
{
    r->len = 0;
    r->data_left = 0;
    r->cr = 0;
    r->u8_need = 0;
    r->u8_lo = 0x80;
    r->u8_hi = 0xbf;
    r->done = 0;
    r->err = 0;
    r->line_max = CMTP_LINE_MAX;
    r->line[0] = '\0';
}

void cmtp_reader_set_line_max(struct cmtp_reader *r, size_t n)
{
    if (n < CMTP_LINE_MIN)
        n = CMTP_LINE_MIN;
    if (n > CMTP_LINE_MAX)
        n = CMTP_LINE_MAX;
    r->line_max = (uint16_t)n;
}

static enum cmtp_rd reader_fail(struct cmtp_reader *r, enum cmtp_rd e, size_t *consumed, size_t i)
{
    r->err = (uint8_t)e;
    *consumed = i;
    return e;
}

enum cmtp_rd cmtp_reader_next(struct cmtp_reader *r, const uint8_t *in, size_t len,
                              size_t *consumed, struct cmtp_rd_item *item)
{
    *consumed = 0;
    item->line = NULL;
    item->data = NULL;
    item->len = 0;
    if (r->err)
        return (enum cmtp_rd)r->err;
    if (r->done) {
        r->done = 0;
        r->len = 0;
    }
    if (r->data_left > 0) {
        if (len == 0)
            return CMTP_RD_AGAIN;
        size_t n = (uint64_t)len < r->data_left ? len : (size_t)r->data_left;
        r->data_left -= n;
        *consumed = n;
        item->data = in;
        item->len = n;
        return CMTP_RD_DATA;
    }
    for (size_t i = 0; i < len; i++) {
        if (!r->cr && !r->u8_need) {
            /* Fast path: a run of printable ASCII goes straight into the line. */
            size_t room = (size_t)r->line_max - 2 - r->len;
            size_t lim = len - i < room ? len - i : room, j = 0;
            const uint8_t *p = in + i;
            while (j < lim && p[j] >= 0x20 && p[j] < 0x80)
                j++;
            memcpy(r->line + r->len, p, j);
            r->len += j;
            i += j;
            if (i == len)
                break;
        }
        uint8_t b = in[i];
        if (r->cr) {
            if (b != '\n')
                return reader_fail(r, CMTP_RD_BAD_LINE, consumed, i);
            r->cr = 0;
            r->line[r->len] = '\0';
            r->done = 1;
            *consumed = i + 1;
            item->line = r->line;
            item->len = r->len;
            return CMTP_RD_LINE;
        }
        if (r->u8_need) {
            if (b < r->u8_lo || b > r->u8_hi)
                return reader_fail(r, CMTP_RD_BAD_LINE, consumed, i);
            r->u8_need--;
            r->u8_lo = 0x80;
            r->u8_hi = 0xbf;
        } else if (b >= 0x80) {
            if (b >= 0xc2 && b <= 0xdf) {
                r->u8_need = 1;
            } else if (b >= 0xe0 && b <= 0xef) {
                r->u8_need = 2;
                if (b == 0xe0)
                    r->u8_lo = 0xa0;
                else if (b == 0xed)
                    r->u8_hi = 0x9f;
            } else if (b >= 0xf0 && b <= 0xf4) {
                r->u8_need = 3;
                if (b == 0xf0)
                    r->u8_lo = 0x90;
                else if (b == 0xf4)
                    r->u8_hi = 0x8f;
            } else {
                return reader_fail(r, CMTP_RD_BAD_LINE, consumed, i);
            }
        } else if (b == '\r') {
            if (r->u8_need)
                return reader_fail(r, CMTP_RD_BAD_LINE, consumed, i);
            r->cr = 1;
            continue;
        } else if (b == '\n' || b == 0) {
            return reader_fail(r, CMTP_RD_BAD_LINE, consumed, i);
        }
        /* Content may be line-max - 2 octets: the CRLF makes the line line-max. */
        if (r->len >= (size_t)r->line_max - 2)
            return reader_fail(r, CMTP_RD_TOO_LONG, consumed, i);
        r->line[r->len++] = (char)b;
    }
    *consumed = len;
    return CMTP_RD_AGAIN;
}

void cmtp_reader_expect_data(struct cmtp_reader *r, uint64_t n)
{
    r->data_left = n;
}

uint64_t cmtp_reader_data_left(const struct cmtp_reader *r)
{
    return r->data_left;
}

bool cmtp_reader_mid_line(const struct cmtp_reader *r)
{
    return r->data_left == 0 && !r->done && (r->len > 0 || r->cr || r->u8_need);
}

/* ---------------------------------------------------------------------------------------------
 * Decimal fields.
 * ------------------------------------------------------------------------------------------- */

enum cmtp_num cmtp_parse_u64(uint64_t *out, const char *s, size_t len)
{
    *out = 0;
    if (len == 0)
        return CMTP_NUM_SYNTAX;
    for (size_t i = 0; i < len; i++) {
        if (!is_digit(s[i]))
            return CMTP_NUM_SYNTAX;
    }
    if (s[0] == '0' && len > 1)
        return CMTP_NUM_SYNTAX;
    if (len > CMTP_NUM_DIGITS_MAX) {
        *out = UINT64_MAX;
        return CMTP_NUM_RANGE;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) {
            *out = UINT64_MAX;
            return CMTP_NUM_RANGE;
        }
        v = v * 10 + d;
    }
    *out = v;
    return CMTP_NUM_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Commands.
 * ------------------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t len;
    enum cmtp_verb verb;
    bool args; /* arguments required (true) or forbidden (false) */
} verbs[] = {
    {"BODY", 4, CMTP_VERB_BODY, true},  {"RCPT", 4, CMTP_VERB_RCPT, true},
    {"MAIL", 4, CMTP_VERB_MAIL, true},  {"TRACE", 5, CMTP_VERB_TRACE, true},
    {"END", 3, CMTP_VERB_END, false},   {"DROP", 4, CMTP_VERB_DROP, true},
    {"RSET", 4, CMTP_VERB_RSET, false}, {"NOOP", 4, CMTP_VERB_NOOP, false},
    {"QUIT", 4, CMTP_VERB_QUIT, false},
};

enum cmtp_perr cmtp_cmd_split(struct cmtp_cmd *cmd, const char *line, size_t len)
{
    cmd->verb = CMTP_VERB_NONE;
    cmd->args = NULL;
    cmd->args_len = 0;
    size_t vlen = 0;
    while (vlen < len && line[vlen] != ' ')
        vlen++;
    if (vlen == 0)
        return CMTP_PERR_SYNTAX; /* empty line or leading whitespace */
    size_t k;
    for (k = 0; k < sizeof(verbs) / sizeof(verbs[0]); k++) {
        if (vlen == verbs[k].len && ieq_mem(line, verbs[k].name, vlen))
            break;
    }
    if (k == sizeof(verbs) / sizeof(verbs[0]))
        return CMTP_PERR_UNKNOWN;
    cmd->verb = verbs[k].verb;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if (c > ' ' && c != 0x7f)
            continue;
        if (c != ' ')
            return CMTP_PERR_SYNTAX; /* a control character */
        if (i + 1 == len || line[i + 1] == ' ')
            return CMTP_PERR_SYNTAX; /* trailing SP or two in a row */
    }
    if (!verbs[k].args)
        return vlen == len ? CMTP_PERR_OK : CMTP_PERR_SYNTAX;
    if (vlen == len)
        return CMTP_PERR_SYNTAX;
    cmd->args = line + vlen + 1;
    cmd->args_len = len - vlen - 1;
    return CMTP_PERR_OK;
}

/* next_token returns the length of the token at |*pos| (up to SP or the end) and advances |*pos|
 * past it and its SP. |*last| tells whether the token ended the text. */
static size_t next_token(const char *s, size_t len, size_t *pos, bool *last)
{
    size_t start = *pos, i = start;
    while (i < len && s[i] != ' ')
        i++;
    *last = i == len;
    *pos = i < len ? i + 1 : i;
    return i - start;
}

int cmtp_digest_parse(uint8_t digest[CMTP_DIGEST_LEN], const char *s, size_t len)
{
    if (len != CMTP_DIGEST_HEX_LEN)
        return -EINVAL;
    for (size_t i = 0; i < CMTP_DIGEST_LEN; i++) {
        int v = 0;
        for (size_t k = 0; k < 2; k++) {
            char c = s[2 * i + k];
            int d;
            if (c >= '0' && c <= '9')
                d = c - '0';
            else if (c >= 'a' && c <= 'f')
                d = c - 'a' + 10;
            else
                return -EINVAL;
            v = v * 16 + d;
        }
        digest[i] = (uint8_t)v;
    }
    return 0;
}

void cmtp_digest_hex(char *out, const uint8_t digest[CMTP_DIGEST_LEN])
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < CMTP_DIGEST_LEN; i++) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 0xf];
    }
    out[CMTP_DIGEST_HEX_LEN] = '\0';
}

enum mail_key {
    MK_TXN = 1 << 0,
    MK_SIZE = 1 << 1,
    MK_DIGEST = 1 << 2,
    MK_RELAY = 1 << 3,
    MK_HOPS = 1 << 4,
    MK_FALLBACK = 1 << 5,
    MK_REPORT = 1 << 6,
};

/* envelope_reset clears |env| for a new MAIL. The trace array (most of the structure) is not
 * cleared: only |trace_count| entries are ever meaningful. */
static void envelope_reset(struct cmtp_envelope *env)
{
    memset(&env->from, 0, sizeof(env->from));
    env->txid[0] = '\0';
    env->size = 0;
    memset(env->digest, 0, sizeof(env->digest));
    cmtp_policy_init(&env->policy);
    env->report_txid[0] = '\0';
    env->trace_count = 0;
}

/* mail_param applies one `key=value` MAIL parameter to |env|; |seen| collects the keys. */
static enum cmtp_perr mail_param(struct cmtp_envelope *env, unsigned *seen, const char *tok,
                                 size_t tlen)
{
    const char *eq = memchr(tok, '=', tlen);
    if (eq == NULL || eq == tok)
        return CMTP_PERR_SYNTAX;
    size_t klen = (size_t)(eq - tok);
    const char *v = eq + 1;
    size_t vlen = tlen - klen - 1;
    if (vlen == 0)
        return CMTP_PERR_SYNTAX;
    unsigned key;
    if (ieq(tok, klen, "TXN"))
        key = MK_TXN;
    else if (ieq(tok, klen, "SIZE"))
        key = MK_SIZE;
    else if (ieq(tok, klen, "DIGEST"))
        key = MK_DIGEST;
    else if (ieq(tok, klen, "RELAY"))
        key = MK_RELAY;
    else if (ieq(tok, klen, "HOPS"))
        key = MK_HOPS;
    else if (ieq(tok, klen, "FALLBACK"))
        key = MK_FALLBACK;
    else if (ieq(tok, klen, "REPORT"))
        key = MK_REPORT;
    else
        return CMTP_PERR_SYNTAX;
    if (*seen & key)
        return CMTP_PERR_SYNTAX;
    *seen |= key;
    uint64_t n;
    switch (key) {
    case MK_TXN:
    case MK_REPORT:
        if (!cmtp_txid_valid(v, vlen))
            return CMTP_PERR_SYNTAX;
        memcpy(key == MK_TXN ? env->txid : env->report_txid, v, vlen);
        (key == MK_TXN ? env->txid : env->report_txid)[vlen] = '\0';
        return CMTP_PERR_OK;
    case MK_SIZE:
        switch (cmtp_parse_u64(&n, v, vlen)) {
        case CMTP_NUM_OK:
            if (n == 0)
                return CMTP_PERR_SYNTAX; /* a message has a body */
            env->size = n;
            return CMTP_PERR_OK;
        case CMTP_NUM_RANGE:
            env->size = UINT64_MAX; /* refused as too big by the caller */
            return CMTP_PERR_OK;
        default:
            return CMTP_PERR_SYNTAX;
        }
    case MK_DIGEST:
        return cmtp_digest_parse(env->digest, v, vlen) == 0 ? CMTP_PERR_OK : CMTP_PERR_SYNTAX;
    case MK_RELAY:
        /* values are case-sensitive on the wire: the keyword exactly as written */
        if (cmtp_relay_parse(&env->policy.relay, v, vlen) != 0 ||
            memcmp(v, cmtp_relay_name(env->policy.relay), vlen) != 0)
            return CMTP_PERR_SYNTAX;
        return CMTP_PERR_OK;
    case MK_HOPS:
        if (cmtp_parse_u64(&n, v, vlen) != CMTP_NUM_OK || n > CMTP_HOPS_MAX)
            return CMTP_PERR_SYNTAX;
        env->policy.hops = (unsigned)n;
        return CMTP_PERR_OK;
    case MK_FALLBACK:
        if (cmtp_fallback_parse(&env->policy.fallback, v, vlen) != 0 ||
            memcmp(v, cmtp_fallback_name(env->policy.fallback), vlen) != 0)
            return CMTP_PERR_SYNTAX;
        return CMTP_PERR_OK;
    default:
        return CMTP_PERR_SYNTAX;
    }
}

enum cmtp_perr cmtp_mail_parse(struct cmtp_envelope *env, const char *args, size_t len)
{
    enum cmtp_perr e;
    envelope_reset(env);
    if (len < 5 || !ieq(args, 5, "FROM:")) {
        e = CMTP_PERR_SYNTAX;
        goto err;
    }
    size_t pos = 5;
    bool last;
    const char *addr = args + pos;
    size_t alen = next_token(args, len, &pos, &last);
    if (alen == 0) {
        e = last ? CMTP_PERR_ADDRESS : CMTP_PERR_SYNTAX;
        goto err;
    }
    if (cmtp_addr_parse(&env->from, addr, alen, CMTP_ADDR_ALLOW_NULL) != CMTP_ADDR_OK) {
        e = CMTP_PERR_ADDRESS;
        goto err;
    }
    unsigned seen = 0;
    while (!last) {
        const char *tok = args + pos;
        size_t tlen = next_token(args, len, &pos, &last);
        if (tlen == 0) {
            e = CMTP_PERR_SYNTAX;
            goto err;
        }
        e = mail_param(env, &seen, tok, tlen);
        if (e != CMTP_PERR_OK)
            goto err;
    }
    if ((seen & (MK_TXN | MK_SIZE | MK_DIGEST)) != (MK_TXN | MK_SIZE | MK_DIGEST)) {
        e = CMTP_PERR_SYNTAX;
        goto err;
    }
    if (env->from.is_null && !(seen & MK_REPORT)) {
        e = CMTP_PERR_ADDRESS; /* `<>` only with REPORT= */
        goto err;
    }
    return CMTP_PERR_OK;
err:
    envelope_reset(env);
    return e;
}

enum cmtp_perr cmtp_rcpt_parse(struct cmtp_addr *rcpt, const char *args, size_t len)
{
    memset(rcpt, 0, sizeof(*rcpt));
    if (len < 3 || !ieq(args, 3, "TO:"))
        return CMTP_PERR_SYNTAX;
    if (memchr(args + 3, ' ', len - 3) != NULL)
        return CMTP_PERR_SYNTAX;
    if (cmtp_addr_parse(rcpt, args + 3, len - 3, 0) != CMTP_ADDR_OK) {
        memset(rcpt, 0, sizeof(*rcpt));
        return CMTP_PERR_ADDRESS;
    }
    return CMTP_PERR_OK;
}

enum cmtp_perr cmtp_index_parse(uint64_t *out, const char *args, size_t len)
{
    switch (cmtp_parse_u64(out, args, len)) {
    case CMTP_NUM_OK:
    case CMTP_NUM_RANGE:
        return CMTP_PERR_OK;
    default:
        return CMTP_PERR_SYNTAX;
    }
}

/* sb_addr appends `<local@domain>` (or `<>`) after checking that the address holds nothing a
 * command line may not carry (defence in depth: it should come from cmtp_addr_parse). */
static int sb_addr(struct sbuf *b, const struct cmtp_addr *a)
{
    char tmp[CMTP_ADDR_MAX + 2];
    int n = 0;
    if (!a->is_null) {
        n = cmtp_addr_format(a, tmp, sizeof(tmp));
        if (n <= 0 || !printable_utf8(tmp, (size_t)n) || tmp[0] == '<')
            return -EINVAL;
        if (memchr(tmp, '>', (size_t)n) != NULL)
            return -EINVAL;
    }
    sb_put(b, "<", 1);
    sb_put(b, tmp, (size_t)n);
    sb_put(b, ">", 1);
    return 0;
}

int cmtp_mail_format(char *out, size_t out_size, const struct cmtp_envelope *env)
{
    struct sbuf b;
    char hex[CMTP_DIGEST_HEX_LEN + 1];
    size_t tlen = strnlen(env->txid, sizeof(env->txid));
    size_t rlen = strnlen(env->report_txid, sizeof(env->report_txid));
    if (!cmtp_txid_valid(env->txid, tlen) || env->size == 0 || env->policy.hops > CMTP_HOPS_MAX)
        return -EINVAL;
    if (rlen > 0 && !cmtp_txid_valid(env->report_txid, rlen))
        return -EINVAL;
    if (env->from.is_null && rlen == 0)
        return -EINVAL;
    const char *relay = cmtp_relay_name(env->policy.relay);
    const char *fallback = cmtp_fallback_name(env->policy.fallback);
    if (relay == NULL || fallback == NULL)
        return -EINVAL;
    sb_init(&b, out, out_size, CMTP_LINE_MAX);
    sb_str(&b, "MAIL FROM:");
    if (sb_addr(&b, &env->from) < 0)
        return -EINVAL;
    sb_str(&b, " TXN=");
    sb_put(&b, env->txid, tlen);
    sb_str(&b, " SIZE=");
    sb_u64(&b, env->size);
    cmtp_digest_hex(hex, env->digest);
    sb_str(&b, " DIGEST=");
    sb_str(&b, hex);
    sb_str(&b, " RELAY=");
    sb_str(&b, relay);
    sb_str(&b, " HOPS=");
    sb_u64(&b, env->policy.hops);
    sb_str(&b, " FALLBACK=");
    sb_str(&b, fallback);
    if (rlen > 0) {
        sb_str(&b, " REPORT=");
        sb_put(&b, env->report_txid, rlen);
    }
    sb_str(&b, "\r\n");
    return sb_finish(&b);
}

int cmtp_trace_cmd_format(char *out, size_t out_size, const struct cmtp_trace *t)
{
    char rec[CMTP_LINE_MAX];
    int n = cmtp_trace_format(t, rec, sizeof(rec));
    if (n < 0)
        return n;
    /* The record becomes part of a command line: it may hold single SPs, nothing else odd. */
    for (int i = 0; i < n; i++) {
        if (is_ctl((unsigned char)rec[i]) || (rec[i] == ' ' && (i == 0 || rec[i - 1] == ' ')))
            return -EINVAL;
    }
    if (n == 0 || rec[n - 1] == ' ')
        return -EINVAL;
    struct sbuf b;
    sb_init(&b, out, out_size, CMTP_LINE_MAX);
    sb_str(&b, "TRACE ");
    sb_put(&b, rec, (size_t)n);
    sb_str(&b, "\r\n");
    return sb_finish(&b);
}

int cmtp_rcpt_format(char *out, size_t out_size, const struct cmtp_addr *a)
{
    struct sbuf b;
    if (a->is_null)
        return -EINVAL;
    sb_init(&b, out, out_size, CMTP_LINE_MAX);
    sb_str(&b, "RCPT TO:");
    if (sb_addr(&b, a) < 0)
        return -EINVAL;
    sb_str(&b, "\r\n");
    return sb_finish(&b);
}

/* ---------------------------------------------------------------------------------------------
 * Replies.
 * ------------------------------------------------------------------------------------------- */

static bool status_ok(const char *s, size_t len)
{
    if (len == 0 || len > CMTP_STATUS_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || is_digit(c) || c == '-'))
            return false;
    }
    return true;
}

static bool key_ok(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!(is_alpha(s[i]) || is_digit(s[i]) || s[i] == '-'))
            return false;
    }
    return true;
}

static bool code_ok(unsigned code)
{
    unsigned cls = code / 100;
    return code >= 200 && code <= 699 && cls != 3;
}

/* sb_text appends |text| sanitized: well-formed characters other than controls are kept,
 * every other octet becomes '?', at most CMTP_TEXT_MAX octets, cut on a character boundary. */
static void sb_text(struct sbuf *b, const char *text)
{
    const unsigned char *p = (const unsigned char *)text;
    size_t len = strlen(text), i = 0, out = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = utf8_char_len(p + i, len - i, &cp);
        bool ok = n > 0 && !(cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f));
        size_t w = ok ? n : 1;
        if (out + w > CMTP_TEXT_MAX)
            break;
        if (ok)
            sb_put(b, text + i, n);
        else
            sb_put(b, "?", 1);
        out += w;
        i += ok ? n : 1;
    }
}

int cmtp_reply_format(char *out, size_t out_size, unsigned code, const char *status,
                      const struct cmtp_param *params, size_t nparams, const char *text)
{
    struct sbuf b;
    if (!code_ok(code) || status == NULL || !status_ok(status, strlen(status)))
        return -EINVAL;
    for (size_t i = 0; i < nparams; i++) {
        const char *k = params[i].key, *v = params[i].value;
        if (k == NULL || v == NULL || !key_ok(k, strlen(k)))
            return -EINVAL;
        size_t vlen = strlen(v);
        if (vlen == 0 || v[0] == ':' || !printable_utf8(v, vlen))
            return -EINVAL;
    }
    sb_init(&b, out, out_size, CMTP_LINE_MAX);
    char c3[3] = {(char)('0' + code / 100), (char)('0' + code / 10 % 10), (char)('0' + code % 10)};
    sb_put(&b, c3, 3);
    sb_put(&b, " ", 1);
    sb_str(&b, status);
    for (size_t i = 0; i < nparams; i++) {
        sb_put(&b, " ", 1);
        sb_str(&b, params[i].key);
        sb_put(&b, "=", 1);
        sb_str(&b, params[i].value);
    }
    if (text != NULL && text[0] != '\0') {
        sb_str(&b, " : ");
        sb_text(&b, text);
    }
    sb_put(&b, "\r\n", 2);
    return sb_finish(&b);
}

int cmtp_reply_parse(struct cmtp_reply *r, const char *line, size_t len)
{
    memset(r, 0, sizeof(*r));
    if (len < 5 || !is_digit(line[0]) || !is_digit(line[1]) || !is_digit(line[2]) || line[3] != ' ')
        goto err;
    unsigned code = (unsigned)(line[0] - '0') * 100 + (unsigned)(line[1] - '0') * 10 +
                    (unsigned)(line[2] - '0');
    if (!code_ok(code))
        goto err;
    size_t pos = 4;
    bool last;
    const char *st = line + pos;
    size_t stlen = next_token(line, len, &pos, &last);
    if (!status_ok(st, stlen))
        goto err;
    r->code = code;
    r->cls = code / 100;
    r->status = st;
    r->status_len = stlen;
    while (!last) {
        const char *tok = line + pos;
        size_t tlen = next_token(line, len, &pos, &last);
        if (tlen == 0)
            goto err;
        if (tlen == 1 && tok[0] == ':') {
            if (last)
                goto err; /* ":" must be followed by SP */
            r->text = line + pos;
            r->text_len = len - pos;
            for (size_t i = 0; i < r->text_len; i++) {
                if (r->text[i] == '\0' || r->text[i] == '\r' || r->text[i] == '\n')
                    goto err;
            }
            return 0;
        }
        const char *eq = memchr(tok, '=', tlen);
        if (eq == NULL)
            goto err;
        size_t klen = (size_t)(eq - tok), vlen = tlen - klen - 1;
        if (!key_ok(tok, klen) || vlen == 0 || eq[1] == ':')
            goto err;
        for (size_t i = 0; i < vlen; i++) {
            if (is_ctl((unsigned char)eq[1 + i]))
                goto err;
        }
        if (r->nparams == CMTP_REPLY_PARAMS_MAX)
            goto err;
        for (size_t i = 0; i < r->nparams; i++) {
            if (r->params[i].key_len == klen && ieq_mem(r->params[i].key, tok, klen))
                goto err; /* a key twice */
        }
        r->params[r->nparams].key = tok;
        r->params[r->nparams].key_len = klen;
        r->params[r->nparams].value = eq + 1;
        r->params[r->nparams].value_len = vlen;
        r->nparams++;
    }
    return 0;
err:
    memset(r, 0, sizeof(*r));
    return -EINVAL;
}

const struct cmtp_reply_param_view *cmtp_reply_param(const struct cmtp_reply *r, const char *key)
{
    for (size_t i = 0; i < r->nparams; i++) {
        if (ieq(r->params[i].key, r->params[i].key_len, key))
            return &r->params[i];
    }
    return NULL;
}

bool cmtp_reply_status_is(const struct cmtp_reply *r, const char *status)
{
    size_t n = strlen(status);
    return r->status != NULL && r->status_len == n && memcmp(r->status, status, n) == 0;
}
