/* bench/lmtp_sink.c — the protocol machine of cmtp-lmtp-sink (see lmtp_sink.h). */
#include "bench/lmtp_sink.h"

#include <string.h>
#include <strings.h>

static void ls_put(struct lsink *s, const char *r)
{
    size_t n = strlen(r);
    if (n > LSINK_OUT_MAX - s->out_len)
        n = LSINK_OUT_MAX - s->out_len; /* cannot happen: input waits for LSINK_REPLY_MAX */
    memcpy(s->out + s->out_len, r, n);
    s->out_len += n;
}

void lsink_init(struct lsink *s)
{
    s->line_len = 0;
    s->line_long = s->in_data = s->mail = s->quit = false;
    s->in_bdat = s->bdat_last = s->bdat_bad = false;
    s->bdat_left = 0;
    s->dstate = 0;
    s->rcpts = 0;
    s->out_len = 0;
    s->messages = s->recipients = 0;
    ls_put(s, "220 sink LMTP ready\r\n");
}

/* ls_verb says whether |line| (|n| octets, CRLF removed) is the command |v| (4 letters, any
 * case) alone or followed by a space. */
static bool ls_verb(const char *line, size_t n, const char *v)
{
    return n >= 4 && strncasecmp(line, v, 4) == 0 && (n == 4 || line[4] == ' ');
}

static void ls_dot(struct lsink *s);

/* ls_bdat starts skipping the chunk of `BDAT <n> [LAST]` (|a|, |n| octets: the arguments with
 * their leading space). A command it cannot parse is answered 501 (and its octets, of unknown
 * length, are taken as commands: the client broke the protocol). */
static void ls_bdat(struct lsink *s, const char *a, size_t n)
{
    uint64_t v = 0;
    size_t i = 1, d = 0;
    bool last = false;
    while (i < n && a[i] >= '0' && a[i] <= '9' && d < 19) {
        v = v * 10 + (uint64_t)(a[i++] - '0');
        d++;
    }
    if (i < n && n - i == 5 && strncasecmp(a + i, " LAST", 5) == 0) {
        last = true;
        i = n;
    }
    if (n == 0 || a[0] != ' ' || d == 0 || i != n) {
        ls_put(s, "501 5.5.4 syntax: BDAT <size> [LAST]\r\n");
        return;
    }
    s->in_bdat = true;
    s->bdat_left = v;
    s->bdat_last = last;
    s->bdat_bad = !s->mail || s->rcpts == 0;
}

/* ls_bdat_end answers a chunk whose octets were all skipped. */
static void ls_bdat_end(struct lsink *s)
{
    s->in_bdat = false;
    if (s->bdat_bad)
        ls_put(s, "503 5.5.1 no valid recipients\r\n");
    else if (s->bdat_last)
        ls_dot(s);
    else
        ls_put(s, "250 2.0.0 chunk ok\r\n");
}

static void ls_command(struct lsink *s, const char *line, size_t n)
{
    if (ls_verb(line, n, "LHLO")) {
        s->mail = false;
        s->rcpts = 0;
        ls_put(s, "250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-CHUNKING\r\n"
                  "250 ENHANCEDSTATUSCODES\r\n");
    } else if (ls_verb(line, n, "MAIL")) {
        if (s->mail) {
            ls_put(s, "503 5.5.1 nested MAIL\r\n");
            return;
        }
        s->mail = true;
        s->rcpts = 0;
        ls_put(s, "250 2.1.0 ok\r\n");
    } else if (ls_verb(line, n, "RCPT")) {
        if (!s->mail) {
            ls_put(s, "503 5.5.1 MAIL first\r\n");
        } else if (s->rcpts >= LSINK_RCPT_MAX) {
            ls_put(s, "452 4.5.3 too many recipients\r\n");
        } else {
            s->rcpts++;
            ls_put(s, "250 2.1.5 ok\r\n");
        }
    } else if (ls_verb(line, n, "DATA")) {
        if (!s->mail || s->rcpts == 0) {
            ls_put(s, "503 5.5.1 no valid recipients\r\n");
            return;
        }
        s->in_data = true;
        s->dstate = 0;
        ls_put(s, "354 go ahead\r\n");
    } else if (ls_verb(line, n, "BDAT")) {
        ls_bdat(s, line + 4, n - 4);
    } else if (ls_verb(line, n, "RSET")) {
        s->mail = false;
        s->rcpts = 0;
        ls_put(s, "250 2.0.0 ok\r\n");
    } else if (ls_verb(line, n, "NOOP")) {
        ls_put(s, "250 2.0.0 ok\r\n");
    } else if (ls_verb(line, n, "QUIT")) {
        s->quit = true;
        ls_put(s, "221 2.0.0 bye\r\n");
    } else {
        ls_put(s, "500 5.5.2 unknown command\r\n");
    }
}

/* ls_dot answers the final dot: one 250 per recipient (RFC 2033 4.2). */
static void ls_dot(struct lsink *s)
{
    s->in_data = false;
    s->messages++;
    for (unsigned i = 0; i < s->rcpts; i++)
        ls_put(s, "250 2.0.0 delivered\r\n");
    s->recipients += s->rcpts;
    s->mail = false;
    s->rcpts = 0;
}

size_t lsink_feed(struct lsink *s, const uint8_t *in, size_t len)
{
    size_t i = 0;
    while (!s->quit && LSINK_OUT_MAX - s->out_len >= LSINK_REPLY_MAX) {
        if (s->in_bdat) {
            size_t k = len - i;
            if (k > s->bdat_left)
                k = (size_t)s->bdat_left;
            s->bdat_left -= k;
            i += k;
            if (s->bdat_left > 0)
                break;
            ls_bdat_end(s);
            continue;
        }
        if (i == len)
            break;
        if (s->in_data) {
            /* The end of data is CRLF "." CRLF: a line that is only a dot. */
            for (; i < len && s->in_data; i++) {
                uint8_t c = in[i];
                switch (s->dstate) {
                case 0:
                    s->dstate = c == '.' ? 2 : c == '\n' ? 0 : 1;
                    break;
                case 1:
                    s->dstate = c == '\n' ? 0 : 1;
                    break;
                case 2:
                    s->dstate = c == '\r' ? 3 : c == '\n' ? 0 : 1;
                    break;
                default:
                    if (c == '\n')
                        ls_dot(s);
                    else
                        s->dstate = 1;
                    break;
                }
            }
            continue;
        }
        const uint8_t *lf = memchr(in + i, '\n', len - i);
        size_t n = lf != NULL ? (size_t)(lf - (in + i)) + 1 : len - i;
        if (!s->line_long) {
            if (n > LSINK_LINE_MAX - s->line_len) {
                s->line_long = true;
            } else {
                memcpy(s->line + s->line_len, in + i, n);
                s->line_len += n;
            }
        }
        i += n;
        if (lf == NULL)
            continue;
        if (s->line_long) {
            ls_put(s, "500 5.5.2 line too long\r\n");
        } else {
            size_t l = s->line_len - 1; /* without LF, then CR */
            if (l > 0 && s->line[l - 1] == '\r')
                l--;
            ls_command(s, s->line, l);
        }
        s->line_len = 0;
        s->line_long = false;
    }
    return s->quit ? len : i;
}

void lsink_consume(struct lsink *s, size_t n)
{
    if (n > s->out_len)
        n = s->out_len;
    memmove(s->out, s->out + n, s->out_len - n);
    s->out_len -= n;
}
