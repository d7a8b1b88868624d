/* core/dotstuff.c — the streaming SMTP/LMTP DATA encoder (CRLF canonicalization, dot-stuffing,
 * the final dot) and the body scan that precedes MAIL FROM. Pure; not the DATA decoder. */
#include "core/dotstuff.h"

#include <errno.h>
#include <string.h>

void cmtp_dotstuff_init(struct cmtp_dotstuff *d)
{
    memset(d, 0, sizeof(*d));
    d->bol = 1;
}

void cmtp_dotstuff_init_canon(struct cmtp_dotstuff *d)
{
    cmtp_dotstuff_init(d);
    d->no_stuff = 1;
}

size_t cmtp_dotstuff_encode(struct cmtp_dotstuff *d, const uint8_t *in, size_t in_len,
                            size_t *consumed, uint8_t *out, size_t out_size)
{
    size_t i = 0, o = 0;
    if (d->finished || in == NULL)
        in_len = 0;
    while (i < in_len) {
        uint8_t b = in[i];
        if (d->cr && b == '\n') {
            /* The LF of a CRLF whose CR was already written as CRLF. */
            d->cr = 0;
            i++;
            continue;
        }
        if (!d->bol && b != '\r' && b != '\n') {
            /* Fast path: a run of ordinary octets inside a line. */
            size_t lim = in_len - i;
            if (lim > out_size - o)
                lim = out_size - o;
            if (lim == 0)
                break;
            size_t n = 0;
            while (n < lim && in[i + n] != '\r' && in[i + n] != '\n')
                n++;
            memcpy(out + o, in + i, n);
            o += n;
            i += n;
            d->cr = 0;
            continue;
        }
        if (b == '\r' || b == '\n') {
            if (out_size - o < 2)
                break;
            out[o++] = '\r';
            out[o++] = '\n';
            d->bol = 1;
            d->cr = b == '\r';
        } else if (b == '.' && !d->no_stuff) { /* at the beginning of a line */
            if (out_size - o < 2)
                break;
            out[o++] = '.';
            out[o++] = '.';
            d->bol = 0;
            d->cr = 0;
        } else {
            if (out_size - o < 1)
                break;
            out[o++] = b;
            d->bol = 0;
            d->cr = 0;
        }
        i++;
    }
    *consumed = i;
    d->in_total += i;
    d->out_total += o;
    return o;
}

int cmtp_dotstuff_finish(struct cmtp_dotstuff *d, uint8_t *out, size_t out_size)
{
    size_t n = 0;
    if (d->finished || d->no_stuff)
        return -EINVAL;
    if (out_size < (d->bol ? 3u : 5u))
        return -ENOBUFS;
    if (!d->bol) {
        out[n++] = '\r';
        out[n++] = '\n';
    }
    out[n++] = '.';
    out[n++] = '\r';
    out[n++] = '\n';
    d->finished = 1;
    d->bol = 1;
    d->cr = 0;
    d->out_total += n;
    return (int)n;
}

void cmtp_dotstuff_scan(struct cmtp_body_scan *s, const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        uint8_t b = p[i];
        if (s->cr) {
            s->cr = 0;
            if (b == '\n')
                continue; /* the LF of a CRLF: the line ended at its CR */
            s->bare_cr++;
        }
        if (b == '\r' || b == '\n') {
            /* A line ends at a CR (with or without its LF) and at a bare LF, as downstream. */
            if (b == '\n')
                s->bare_lf++;
            if (s->line_cur > s->line_max)
                s->line_max = s->line_cur;
            s->line_cur = 0;
            s->cr = b == '\r';
            continue;
        }
        s->line_cur++;
        if (b == 0)
            s->nul++;
        else if (b >= 0x80)
            s->eight_bit = true;
    }
    s->size += len;
}

void cmtp_dotstuff_scan_end(struct cmtp_body_scan *s)
{
    if (s->cr)
        s->bare_cr++;
    s->cr = 0;
    if (s->line_cur > s->line_max)
        s->line_max = s->line_cur;
    s->line_cur = 0;
}

bool cmtp_body_scan_binary(const struct cmtp_body_scan *s)
{
    return s->nul > 0 || s->bare_cr > 0 || s->bare_lf > 0;
}
