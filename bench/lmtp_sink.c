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

static void ls_command(struct lsink *s, const char *line, size_t n)
{
    if (ls_verb(line, n, "LHLO")) {
        s->mail = false;
        s->rcpts = 0;
        ls_put(s, "250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n");
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
    while (i < len && !s->quit && LSINK_OUT_MAX - s->out_len >= LSINK_REPLY_MAX) {
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
