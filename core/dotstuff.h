/* core/dotstuff.h — the streaming body encoder for SMTP/LMTP DATA: line endings canonicalized to
 * CRLF, leading dots doubled, the final "." line appended. Pure; not the SMTP client itself. */
#ifndef CMTP_CORE_DOTSTUFF_H
#define CMTP_CORE_DOTSTUFF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What the encoder does with a body (RELIABILITY.md case 14: no body can end DATA early or
 * become two messages downstream):
 *
 * - Line endings are canonicalized: CRLF stays CRLF, a bare LF becomes CRLF, and a bare CR (a CR
 *   not followed by LF) becomes CRLF as well. SMTP cannot carry a bare CR or LF in DATA (RFC 5321
 *   section 2.3.8), and a receiver that took one as a line end could otherwise see a `.` line
 *   that we did not stuff ("SMTP smuggling"). Mapping both to CRLF, rather than dropping them,
 *   keeps every line boundary a reader of the original could see. CR CR LF is a bare CR then a
 *   CRLF: two line ends.
 * - Every line (after canonicalization) that begins with "." gets one more "." in front.
 * - cmtp_dotstuff_finish ends an unterminated last line with CRLF, then writes ".\r\n".
 *
 * Consequence: the bytes delivered are the canonicalized body, octet for octet; a body that
 * already uses CRLF only (every CMTP/RFC 5322 message should) arrives byte-identical. NUL and
 * 8-bit octets pass unchanged (the caller announces BODY=8BITMIME when the body has any octet
 * >= 0x80, see cmtp_dotstuff_scan). No line-length limit is enforced or repaired: a line longer
 * than RFC 5321's 998 octets is sent as it is (CMTP policy never splits or rewrites lines), and
 * an SMTP server may refuse the message for it; cmtp_dotstuff_scan reports the longest line so
 * that the caller can log why. */

/* CMTP_DOTSTUFF_OUT_MIN is the smallest output room with which cmtp_dotstuff_encode always makes
 * progress and cmtp_dotstuff_finish always succeeds. */
#define CMTP_DOTSTUFF_OUT_MIN 5

/* cmtp_dotstuff is the encoder's state, carried across calls so that the input may be split at
 * any octet boundary with the same output. All-zero is not valid: call cmtp_dotstuff_init. The
 * caller owns the storage. */
struct cmtp_dotstuff {
    uint64_t in_total;  /* input octets consumed */
    uint64_t out_total; /* output octets produced, the final ".\r\n" included */
    uint8_t bol;        /* the next output octet starts a line */
    uint8_t cr;         /* the last input octet was a CR (already written as CRLF) */
    uint8_t finished;   /* cmtp_dotstuff_finish succeeded */
    uint8_t no_stuff;   /* canonicalization only (cmtp_dotstuff_init_canon) */
};

/* cmtp_dotstuff_init resets |d| to the start of a body. */
void cmtp_dotstuff_init(struct cmtp_dotstuff *d);

/* cmtp_dotstuff_init_canon resets |d| to the start of a body sent in BDAT chunks (RFC 3030)
 * without BINARYMIME: line endings are canonicalized to CRLF as above, but no dot is doubled
 * (a length-counted chunk has no terminator to protect) and cmtp_dotstuff_finish must not be
 * called (an unterminated last line stays unterminated). A body already in CRLF form passes
 * octet for octet. */
void cmtp_dotstuff_init_canon(struct cmtp_dotstuff *d);

/* cmtp_dotstuff_encode encodes as much of |in| (|in_len| octets; NULL when 0) as fits into |out|
 * (|out_size| octets), sets |*consumed| to the input octets used and returns the output octets
 * written. One input octet yields at most two output octets, and an octet is consumed only when
 * its whole output fits, so with |out_size| >= 2 at least one octet is consumed per call (when
 * there is input). After cmtp_dotstuff_finish it consumes and writes nothing. */
size_t cmtp_dotstuff_encode(struct cmtp_dotstuff *d, const uint8_t *in, size_t in_len,
                            size_t *consumed, uint8_t *out, size_t out_size);

/* cmtp_dotstuff_finish writes the end of the body into |out|: CRLF if the last line is not
 * terminated (nothing for an empty body), then ".\r\n". Returns the octets written (3 or 5), or
 * -ENOBUFS (nothing written) when |out_size| is too small (CMTP_DOTSTUFF_OUT_MIN always fits),
 * or -EINVAL when already finished or in canonicalization-only mode. */
int cmtp_dotstuff_finish(struct cmtp_dotstuff *d, uint8_t *out, size_t out_size);

/* cmtp_body_scan summarizes a body for the SMTP/LMTP client before MAIL FROM is sent. All-zero
 * is the start state; the caller owns it. */
struct cmtp_body_scan {
    uint64_t size;     /* octets scanned */
    uint64_t line_max; /* longest line in octets, without its line ending */
    uint64_t line_cur; /* length of the current (unterminated) line */
    uint64_t bare_cr;  /* CRs not followed by LF */
    uint64_t bare_lf;  /* LFs not preceded by CR */
    uint64_t nul;      /* NUL octets */
    bool eight_bit;    /* some octet >= 0x80: BODY=8BITMIME is needed */
    uint8_t cr;        /* the last octet scanned was a CR */
};

/* cmtp_body_scan_binary says whether the scanned body has a NUL, a bare CR or a bare LF: it is
 * not line-oriented text, and only BODY=BINARYMIME over CHUNKING (RFC 3030) carries it unaltered
 * to an SMTP/LMTP server. */
bool cmtp_body_scan_binary(const struct cmtp_body_scan *s);

/* cmtp_dotstuff_scan updates |s| with the next |len| octets of a body (any split gives the same
 * result). Call cmtp_dotstuff_scan_end after the last octet. */
void cmtp_dotstuff_scan(struct cmtp_body_scan *s, const uint8_t *p, size_t len);

/* cmtp_dotstuff_scan_end completes |s| (a trailing CR counts as bare, the last line's length
 * counts toward |line_max|). */
void cmtp_dotstuff_scan_end(struct cmtp_body_scan *s);

#endif
