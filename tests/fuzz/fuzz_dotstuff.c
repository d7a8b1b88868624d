/* tests/fuzz/fuzz_dotstuff.c — libFuzzer target for the SMTP/LMTP DATA encoder: any body, split
 * and output room chosen by the fuzzer, decoded by an independent strict decoder and by the
 * ingress server's DATA decoder; both must give the canonical body, and nothing ends DATA early. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/dotstuff.h"
#include "core/smtp_server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            abort();                                                                               \
    } while (0)

/* canon writes the canonical body: CRLF, bare CR and bare LF become CRLF, an unterminated last
 * line gets CRLF. */
static size_t canon(uint8_t *out, const uint8_t *in, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == '\r' || in[i] == '\n') {
            out[k++] = '\r';
            out[k++] = '\n';
            if (in[i] == '\r' && i + 1 < n && in[i + 1] == '\n')
                i++;
        } else {
            out[k++] = in[i];
        }
    }
    if (n > 0 && in[n - 1] != '\r' && in[n - 1] != '\n') {
        out[k++] = '\r';
        out[k++] = '\n';
    }
    return k;
}

/* undot is a strict RFC 5321 receiver: CRLF lines only, the first "." line ends the data (and
 * must be the last line), a leading dot is removed. Returns the body length. */
static size_t undot(uint8_t *out, const uint8_t *p, size_t n)
{
    size_t i = 0, k = 0;
    for (;;) {
        size_t j = i;
        while (j < n && p[j] != '\r' && p[j] != '\n')
            j++;
        CHECK(j + 1 < n && p[j] == '\r' && p[j + 1] == '\n'); /* CRLF, never bare */
        if (j - i == 1 && p[i] == '.') {
            CHECK(j + 2 == n); /* the terminator is the very end */
            return k;
        }
        size_t s = p[i] == '.' ? i + 1 : i;
        memcpy(out + k, p + s, j + 2 - s);
        k += j + 2 - s;
        i = j + 2;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    /* byte 0: input step; byte 1: output room */
    size_t in_step = 1 + data[0] % 97;
    size_t room = 2 + data[1] % 63;
    data += 2;
    size -= 2;
    if (size > 65536)
        return 0;
    uint8_t *enc = malloc(2 * size + 8);
    uint8_t *want = malloc(2 * size + 8);
    uint8_t *got = malloc(2 * size + 8);
    CHECK(enc != NULL && want != NULL && got != NULL);

    struct cmtp_dotstuff d;
    size_t off = 0, n = 0;
    cmtp_dotstuff_init(&d);
    while (off < size) {
        size_t step = size - off < in_step ? size - off : in_step;
        size_t used;
        size_t w = cmtp_dotstuff_encode(&d, data + off, step, &used, enc + n, room);
        CHECK(w <= room && w <= 2 * used && used >= 1);
        n += w;
        off += used;
    }
    int r = cmtp_dotstuff_finish(&d, enc + n, CMTP_DOTSTUFF_OUT_MIN);
    CHECK(r == 3 || r == 5);
    n += (size_t)r;
    CHECK(d.in_total == size && d.out_total == n);

    size_t wn = canon(want, data, size);
    size_t gn = undot(got, enc, n);
    CHECK(gn == wn && memcmp(got, want, wn) == 0);

    /* The ingress server decodes the same DATA to the same body, as one message. */
    struct cmtp_smtps_config cfg = {.host = "ingress.example", .size_max = 1u << 20};
    struct cmtp_smtps *s = cmtp_smtps_new(&cfg);
    CHECK(s != NULL);
    cmtp_smtps_start(s);
    static const char head[] = "EHLO x\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\n"
                               "DATA\r\n";
    size_t total = sizeof(head) - 1 + n + 6;
    uint8_t *sess = malloc(total);
    CHECK(sess != NULL);
    memcpy(sess, head, sizeof(head) - 1);
    memcpy(sess + sizeof(head) - 1, enc, n);
    memcpy(sess + sizeof(head) - 1 + n, "QUIT\r\n", 6);
    size_t pos = 0, bn = 0;
    int ends = 0, closed = 0;
    while (!closed) {
        struct cmtp_smtps_event ev;
        size_t c;
        const uint8_t *p;
        size_t piece = total - pos < in_step * 3 ? total - pos : in_step * 3;
        enum cmtp_smtps_ev e = cmtp_smtps_feed(s, sess + pos, piece, &c, &ev);
        pos += c;
        cmtp_smtps_output_consume(s, cmtp_smtps_output(s, &p));
        switch (e) {
        case CMTP_SMTPS_MAIL:
            CHECK(cmtp_smtps_mail_reply(s, CMTP_SMTPS_MAIL_OK) == 0);
            break;
        case CMTP_SMTPS_RCPT:
            CHECK(cmtp_smtps_rcpt_reply(s, CMTP_SMTPS_RCPT_OK) == 0);
            break;
        case CMTP_SMTPS_BODY:
            CHECK(bn + ev.len <= wn);
            memcpy(got + bn, ev.data, ev.len);
            bn += ev.len;
            break;
        case CMTP_SMTPS_END: {
            struct cmtp_smtps_end_answer a = {.result = CMTP_SMTPS_END_ACCEPTED, .qid = "q"};
            CHECK(cmtp_smtps_end_reply(s, &a) == 0);
            ends++;
            break;
        }
        case CMTP_SMTPS_CLOSE:
            closed = 1;
            break;
        case CMTP_SMTPS_NEED_INPUT:
            CHECK(pos < total); /* QUIT closes before the input ends */
            break;
        default:
            CHECK(e == CMTP_SMTPS_FLUSH);
            break;
        }
    }
    CHECK(ends == 1 && pos == total);
    CHECK(bn == wn && memcmp(got, want, wn) == 0);
    cmtp_smtps_free(s);
    free(sess);
    free(enc);
    free(want);
    free(got);
    return 0;
}
