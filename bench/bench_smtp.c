/* bench/bench_smtp.c — SMTP reply reader for the load generator (RFC 5321 4.2: `ddd-text`
 * continuation lines, `ddd text` last line). Not a server-side parser and not a command writer. */
#include "bench/bench_smtp.h"

#include <string.h>
#include <strings.h>

void bench_smtp_reader_init(struct bench_smtp_reader *r)
{
    memset(r, 0, sizeof(*r));
}

/* keyword_is reports whether the EHLO line text |t| (after "250-" / "250 ") is keyword |kw|,
 * alone or followed by parameters. */
static bool keyword_is(const char *t, size_t n, const char *kw)
{
    size_t k = strlen(kw);
    return n >= k && strncasecmp(t, kw, k) == 0 && (n == k || t[k] == ' ');
}

/* take_line handles one complete line (without CRLF); returns 1 when it ends a reply, 0 when
 * more lines follow, -1 when it is malformed. */
static int take_line(struct bench_smtp_reader *r)
{
    const char *l = r->line;
    size_t n = r->len, tn;
    unsigned code;
    bool last;

    if (n < 3 || l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '9' || l[2] < '0' || l[2] > '9')
        return -1;
    if (n > 3 && l[3] != ' ' && l[3] != '-')
        return -1;
    code = (unsigned)(l[0] - '0') * 100 + (unsigned)(l[1] - '0') * 10 + (unsigned)(l[2] - '0');
    if (r->cur.lines > 0 && code != r->cur.code)
        return -1;
    if (++r->cur.lines > BENCH_SMTP_LINES_MAX)
        return -1;
    r->cur.code = code;
    last = n == 3 || l[3] == ' ';
    tn = n > 4 ? n - 4 : 0;
    if (code == 250 && r->cur.lines > 1) {
        if (keyword_is(l + 4, tn, "STARTTLS"))
            r->cur.starttls = true;
        else if (keyword_is(l + 4, tn, "PIPELINING"))
            r->cur.pipelining = true;
    }
    if (tn > BENCH_SMTP_TEXT_MAX)
        tn = BENCH_SMTP_TEXT_MAX;
    for (size_t i = 0; i < tn; i++) {
        unsigned char ch = (unsigned char)l[4 + i];
        r->cur.text[i] = (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
    }
    r->cur.text[tn] = '\0';
    return last ? 1 : 0;
}

enum bench_smtp_rd bench_smtp_read(struct bench_smtp_reader *r, const uint8_t *in, size_t len,
                                   size_t *consumed, struct bench_smtp_reply *out)
{
    size_t i = 0;

    *consumed = 0;
    if (r->failed)
        return BENCH_SMTP_BAD;
    while (i < len) {
        uint8_t ch = in[i++];
        if (ch == '\n') {
            int t;
            if (!r->cr)
                goto bad;
            r->cr = false;
            t = take_line(r);
            r->len = 0;
            if (t < 0)
                goto bad;
            if (t == 1) {
                *out = r->cur;
                memset(&r->cur, 0, sizeof(r->cur));
                *consumed = i;
                return BENCH_SMTP_REPLY;
            }
            continue;
        }
        if (r->cr) /* a CR not followed by LF */
            goto bad;
        if (ch == '\r') {
            r->cr = true;
            continue;
        }
        if (r->len + 3 > BENCH_SMTP_LINE_MAX)
            goto bad;
        r->line[r->len++] = (char)ch;
    }
    *consumed = i;
    return BENCH_SMTP_AGAIN;
bad:
    r->failed = true;
    *consumed = i;
    return BENCH_SMTP_BAD;
}
