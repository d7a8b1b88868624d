/* bench/bench_smtp.h — the SMTP side of the load generator: a reader of (multi-line) SMTP
 * replies that also notes the EHLO keywords it needs. Pure: bytes in, replies out; not an
 * SMTP client library (bench_run.c sequences the commands). */
#ifndef CMTP_BENCH_BENCH_SMTP_H
#define CMTP_BENCH_BENCH_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* BENCH_SMTP_LINE_MAX is the longest reply line accepted, CRLF included (RFC 5321 says 512;
 * servers' texts are sometimes longer). */
#define BENCH_SMTP_LINE_MAX 2048

/* BENCH_SMTP_LINES_MAX is the most lines of one multi-line reply. */
#define BENCH_SMTP_LINES_MAX 100

/* BENCH_SMTP_TEXT_MAX is how much of a reply's last line is kept for messages. */
#define BENCH_SMTP_TEXT_MAX 160

/* bench_smtp_reply is one complete reply. */
struct bench_smtp_reply {
    unsigned code;                      /* 200..599 */
    bool starttls;                      /* an EHLO reply line announced STARTTLS */
    bool pipelining;                    /* ... PIPELINING */
    unsigned lines;                     /* lines in the reply */
    char text[BENCH_SMTP_TEXT_MAX + 1]; /* last line, after the code, control octets as '?' */
};

/* bench_smtp_reader collects reply lines. All-zero (or bench_smtp_reader_init) is the start
 * state; storage belongs to the caller. */
struct bench_smtp_reader {
    char line[BENCH_SMTP_LINE_MAX];
    size_t len;
    bool cr; /* the previous octet was CR */
    bool failed;
    struct bench_smtp_reply cur; /* the reply being collected */
};

/* bench_smtp_rd is what bench_smtp_read reports. */
enum bench_smtp_rd {
    BENCH_SMTP_AGAIN = 0, /* all input consumed, no complete reply yet */
    BENCH_SMTP_REPLY,     /* one complete reply in |out| */
    BENCH_SMTP_BAD,       /* malformed reply (bad code, mixed codes, line or line count over
                           * the limits, bare CR or LF): sticky */
};

/* bench_smtp_reader_init resets |r| to the start state. */
void bench_smtp_reader_init(struct bench_smtp_reader *r);

/* bench_smtp_read consumes octets of |in| (|len|) until one complete reply and sets
 * |*consumed|; call again with the rest. |out| is written only for BENCH_SMTP_REPLY. */
enum bench_smtp_rd bench_smtp_read(struct bench_smtp_reader *r, const uint8_t *in, size_t len,
                                   size_t *consumed, struct bench_smtp_reply *out);

#endif
