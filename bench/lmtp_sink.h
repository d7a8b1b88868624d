/* bench/lmtp_sink.h — the protocol machine of cmtp-lmtp-sink, the benchmark's LMTP store: command
 * octets in, replies out, messages counted. It offers PIPELINING, 8BITMIME and CHUNKING (as
 * Dovecot's LMTP does): the body comes after DATA or in BDAT chunks (RFC 3030). Every recipient
 * is answered 250 after the final dot or BDAT LAST; no body is kept. Pure: no I/O
 * (bench/lmtp_sink_main.c does it). Not a general LMTP server. */
#ifndef CMTP_BENCH_LMTP_SINK_H
#define CMTP_BENCH_LMTP_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* LSINK_LINE_MAX is the longest command line kept, CRLF included; a longer one is answered
 * `500 5.5.2` once it ends. Body lines have no limit (they are not kept). */
#define LSINK_LINE_MAX 2048u

/* LSINK_RCPT_MAX is the most recipients of one transaction; more get `452 4.5.3`. */
#define LSINK_RCPT_MAX 1000u

/* LSINK_REPLY_MAX is the longest reply (or reply group, the final dot's) one input octet can
 * produce: lsink_feed takes input only while this much room is left. */
#define LSINK_REPLY_MAX (LSINK_RCPT_MAX * 24u + 128u)

/* LSINK_OUT_MAX is the size of the reply buffer. */
#define LSINK_OUT_MAX (LSINK_REPLY_MAX + 8192u)

/* lsink is one connection's state. Storage belongs to the caller; lsink_init prepares it. */
struct lsink {
    char line[LSINK_LINE_MAX]; /* the command line being assembled */
    size_t line_len;
    bool line_long;  /* the current line went past LSINK_LINE_MAX: answered 500 at its end */
    bool in_data;    /* between 354 and the final dot */
    unsigned dstate; /* in_data: 0 start of a line, 1 within one, 2 ".", 3 ".\r" */
    bool in_bdat;    /* skipping a BDAT chunk's octets */
    bool bdat_last;  /* ... of the LAST one */
    bool bdat_bad;   /* ... of a refused one (no transaction): 503 at its end */
    uint64_t bdat_left;
    bool mail;      /* MAIL accepted */
    unsigned rcpts; /* RCPTs accepted */
    bool quit;      /* QUIT answered: close once the output is sent */
    char out[LSINK_OUT_MAX];
    size_t out_len;
    uint64_t messages;   /* final dots (or BDAT LAST) with at least one recipient */
    uint64_t recipients; /* recipients answered 250 after them */
};

/* lsink_init resets |s| for a new connection and queues the greeting. */
void lsink_init(struct lsink *s);

/* lsink_feed processes client octets |in| (|len|) and returns how many it took: all of them,
 * unless the reply buffer is short of LSINK_REPLY_MAX (send and consume the output first) or the
 * session ended (QUIT: the rest is ignored). */
size_t lsink_feed(struct lsink *s, const uint8_t *in, size_t len);

/* lsink_consume drops the first |n| octets of the output (sent). */
void lsink_consume(struct lsink *s, size_t n);

#endif
