/* core/proto.h — the CMTP/1 wire codec: incremental line/chunk reader, command parser and
 * formatter, reply formatter and parser. Pure: no I/O, no allocation. Not the state machines. */
#ifndef CMTP_CORE_PROTO_H
#define CMTP_CORE_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/envelope.h"
#include "core/limits.h"

/* CMTP_REPLY_PARAMS_MAX is the largest number of `key=value` parameters in one reply line that
 * cmtp_reply_parse accepts (the greeting, the longest reply of CMTP/1, has 7). */
#define CMTP_REPLY_PARAMS_MAX 16

/* CMTP_STATUS_MAX is the longest reply status keyword cmtp_reply_parse accepts, in octets. */
#define CMTP_STATUS_MAX 63

/* CMTP_NUM_DIGITS_MAX is the most digits a decimal field may have: UINT64_MAX has 20. A longer
 * field is refused before any arithmetic. */
#define CMTP_NUM_DIGITS_MAX 20

/* ---------------------------------------------------------------------------------------------
 * Reader: splits a byte stream into command/reply lines and raw chunk data.
 * ------------------------------------------------------------------------------------------- */

/* cmtp_rd is what cmtp_reader_next found. */
enum cmtp_rd {
    CMTP_RD_AGAIN = 0, /* all input consumed; no complete item yet */
    CMTP_RD_LINE,      /* a complete line (item->line, item->len; CRLF stripped) */
    CMTP_RD_DATA,      /* raw chunk octets (item->data, item->len) pointing into the input */
    CMTP_RD_BAD_LINE,  /* bare CR, bare LF, NUL or invalid UTF-8 in a line (sticky) */
    CMTP_RD_TOO_LONG,  /* a line longer than the reader's line-max with its CRLF (sticky) */
};

/* cmtp_reader is the incremental framer's state. A partial line lives in |line| (fixed size, so a
 * peer can never make it grow); chunk data is never copied. All-zero is not valid: call
 * cmtp_reader_init. The structure is owned by its embedder (the server or client state). */
struct cmtp_reader {
    char line[CMTP_LINE_MAX]; /* the current line's content so far (no CR, no LF) */
    size_t len;               /* octets in |line| */
    uint64_t data_left;       /* raw octets still expected (set by cmtp_reader_expect_data) */
    uint8_t cr;               /* the previous octet was a CR */
    uint8_t u8_need;          /* UTF-8 continuation octets still expected */
    uint8_t u8_lo, u8_hi;     /* allowed range of the next continuation octet */
    uint8_t done;             /* the last call returned a line: clear |line| on the next */
    uint8_t err;              /* sticky error (an enum cmtp_rd value), or 0 */
    uint16_t line_max;        /* longest line with its CRLF (CMTP_LINE_MIN..CMTP_LINE_MAX) */
};

/* cmtp_rd_item is one item found by cmtp_reader_next. For CMTP_RD_LINE, |line| points into the
 * reader (valid until the next call on it) and is NUL-terminated; for CMTP_RD_DATA, |data| points
 * into the caller's input buffer. |len| is the item's length. */
struct cmtp_rd_item {
    const char *line;
    const uint8_t *data;
    size_t len;
};

/* cmtp_reader_init resets |r| to the start of a stream: no partial line, no data expected, lines
 * of up to CMTP_LINE_MAX octets. */
void cmtp_reader_init(struct cmtp_reader *r);

/* cmtp_reader_set_line_max lowers the longest line |r| accepts to |n| octets, CRLF included;
 * |n| is clamped to CMTP_LINE_MIN..CMTP_LINE_MAX. Call it before the first line. */
void cmtp_reader_set_line_max(struct cmtp_reader *r, size_t n);

/* cmtp_reader_next consumes octets from |in| (|len| octets; |in| may be NULL when |len| is 0)
 * until it finds one item, and sets |*consumed| to the octets used (always <= |len|). Input may be
 * split at any octet boundary: the result does not depend on how a stream is cut into calls.
 *
 * While chunk data is expected (cmtp_reader_expect_data) it returns CMTP_RD_DATA with up to the
 * expected number of octets, as a pointer into |in| — possibly in several pieces. Otherwise it
 * collects a line: CRLF ends it; a CR not followed by LF, an LF not preceded by CR, a NUL or
 * invalid UTF-8 (overlong, surrogate, > U+10FFFF, truncated before the CR) gives
 * CMTP_RD_BAD_LINE; more than line-max - 2 content octets gives CMTP_RD_TOO_LONG. Errors
 * are sticky: every later call returns the same error and consumes nothing. CMTP_RD_AGAIN means
 * all of |in| was consumed. */
enum cmtp_rd cmtp_reader_next(struct cmtp_reader *r, const uint8_t *in, size_t len,
                              size_t *consumed, struct cmtp_rd_item *item);

/* cmtp_reader_expect_data tells |r| that the next |n| octets of the stream are raw chunk data
 * (after a `BODY n` line was accepted). Calling it while data is still expected is a programmer
 * error. */
void cmtp_reader_expect_data(struct cmtp_reader *r, uint64_t n);

/* cmtp_reader_data_left returns the chunk octets |r| still expects (0 outside a chunk). */
uint64_t cmtp_reader_data_left(const struct cmtp_reader *r);

/* cmtp_reader_mid_line reports whether |r| holds the start of a line that is not complete yet
 * (for the command timeout). */
bool cmtp_reader_mid_line(const struct cmtp_reader *r);

/* ---------------------------------------------------------------------------------------------
 * Decimal fields.
 * ------------------------------------------------------------------------------------------- */

/* cmtp_num is the outcome of cmtp_parse_u64. */
enum cmtp_num {
    CMTP_NUM_OK = 0, /* a valid number */
    CMTP_NUM_SYNTAX, /* empty, a sign, a non-digit, or a leading zero ("0" itself is valid) */
    CMTP_NUM_RANGE,  /* well-formed digits but more than 20 of them, or above UINT64_MAX */
};

/* cmtp_parse_u64 parses |len| octets at |s| as a CMTP decimal field: 1*DIGIT, no sign, no
 * leading zero unless the field is exactly "0". It never overflows: more than
 * CMTP_NUM_DIGITS_MAX digits are refused before any arithmetic, and values above UINT64_MAX are
 * caught. On CMTP_NUM_OK |*out| is the value; on CMTP_NUM_RANGE it is UINT64_MAX; on
 * CMTP_NUM_SYNTAX it is 0. */
enum cmtp_num cmtp_parse_u64(uint64_t *out, const char *s, size_t len);

/* ---------------------------------------------------------------------------------------------
 * Commands.
 * ------------------------------------------------------------------------------------------- */

/* cmtp_verb is a command verb (case-insensitive on input). */
enum cmtp_verb {
    CMTP_VERB_NONE = 0,
    CMTP_VERB_MAIL,
    CMTP_VERB_TRACE,
    CMTP_VERB_RCPT,
    CMTP_VERB_DROP,
    CMTP_VERB_BODY,
    CMTP_VERB_END,
    CMTP_VERB_RSET,
    CMTP_VERB_NOOP,
    CMTP_VERB_QUIT,
};

/* cmtp_perr is the outcome of a command parser; each maps to one reply of the outline. */
enum cmtp_perr {
    CMTP_PERR_OK = 0,
    CMTP_PERR_UNKNOWN, /* not a CMTP verb: `500 unknown-command` */
    CMTP_PERR_SYNTAX,  /* `501 bad-syntax` */
    CMTP_PERR_ADDRESS, /* `501 bad-address` */
};

/* cmtp_cmd is a command line split into its verb and arguments. |args| points into the line
 * given to cmtp_cmd_split (NULL when the command has none). */
struct cmtp_cmd {
    enum cmtp_verb verb;
    const char *args;
    size_t args_len;
};

/* cmtp_cmd_split splits a command line (|len| octets at |line|, CRLF stripped) into |cmd|.
 * The verb is the text up to the first SP, compared case-insensitively. Returns
 * CMTP_PERR_UNKNOWN for an unknown verb (|cmd->verb| is CMTP_VERB_NONE), CMTP_PERR_SYNTAX when the
 * line is empty or starts with SP, when a known verb has a control character (C0 or DEL)
 * anywhere in the line, two SPs in a row, a trailing SP, arguments where none are allowed or
 * none where they are required; CMTP_PERR_OK otherwise (|cmd->verb| is set in every case but
 * CMTP_PERR_UNKNOWN and an empty verb). */
enum cmtp_perr cmtp_cmd_split(struct cmtp_cmd *cmd, const char *line, size_t len);

/* cmtp_mail_parse parses the arguments of MAIL (`FROM:<addr> TXN=.. SIZE=.. DIGEST=.. [RELAY=..]
 * [HOPS=..] [FALLBACK=..] [REPORT=..]`; keys case-insensitive, values case-sensitive (`RELAY=any`,
 * not `RELAY=ANY`), any order after FROM:, each at most once) into |env|, which it resets first
 * (no trace records). SIZE above UINT64_MAX or with
 * more than 20 digits is stored as UINT64_MAX so that the caller refuses it as too big; SIZE=0
 * is a syntax error. Returns CMTP_PERR_ADDRESS for a refused address or for `<>` without
 * REPORT=, CMTP_PERR_SYNTAX for anything else malformed, CMTP_PERR_OK otherwise. On failure
 * |env| is left reset. */
enum cmtp_perr cmtp_mail_parse(struct cmtp_envelope *env, const char *args, size_t len);

/* cmtp_rcpt_parse parses the arguments of RCPT (`TO:<addr>`) into |rcpt| (normalized by
 * cmtp_addr_parse; `<>` is refused). Returns CMTP_PERR_SYNTAX when the text is not `TO:` and one
 * token, CMTP_PERR_ADDRESS when the address is refused, CMTP_PERR_OK otherwise. */
enum cmtp_perr cmtp_rcpt_parse(struct cmtp_addr *rcpt, const char *args, size_t len);

/* cmtp_index_parse parses the argument of DROP or BODY as a CMTP decimal field. Returns
 * CMTP_PERR_SYNTAX for a malformed field (|*out| = 0), CMTP_PERR_OK otherwise, with |*out| the
 * value or UINT64_MAX when it does not fit (so that any bound check refuses it). "0" is
 * CMTP_PERR_OK with |*out| = 0: the caller's bound check refuses it. */
enum cmtp_perr cmtp_index_parse(uint64_t *out, const char *args, size_t len);

/* cmtp_mail_format writes the MAIL command line for |env| (with CRLF, NUL-terminated) into |out|
 * of |out_size| octets. RELAY, HOPS and FALLBACK are always written; REPORT only when
 * |env->report_txid| is set. Returns the length without the NUL, or -EINVAL when |env| does not
 * hold a valid envelope (bad txid, SIZE 0, a null originator without REPORT), or -ENOSPC. */
int cmtp_mail_format(char *out, size_t out_size, const struct cmtp_envelope *env);

/* cmtp_trace_cmd_format writes `TRACE <record>` CRLF for |t| into |out|. Returns the length or
 * -ENOSPC / -EINVAL. */
int cmtp_trace_cmd_format(char *out, size_t out_size, const struct cmtp_trace *t);

/* cmtp_rcpt_format writes `RCPT TO:<addr>` CRLF for |a| into |out|. Returns the length, or
 * -EINVAL for a null address, or -ENOSPC. */
int cmtp_rcpt_format(char *out, size_t out_size, const struct cmtp_addr *a);

/* cmtp_digest_hex writes |digest| (CMTP_DIGEST_LEN octets) as 64 lower-case hex digits and a
 * NUL into |out| (at least CMTP_DIGEST_HEX_LEN + 1 octets). */
void cmtp_digest_hex(char *out, const uint8_t digest[CMTP_DIGEST_LEN]);

/* cmtp_digest_parse parses exactly 64 lower-case hex digits at |s| (|len| octets) into |digest|.
 * Returns 0 or -EINVAL (wrong length, upper case, non-hex). */
int cmtp_digest_parse(uint8_t digest[CMTP_DIGEST_LEN], const char *s, size_t len);

/* ---------------------------------------------------------------------------------------------
 * Replies.
 * ------------------------------------------------------------------------------------------- */

/* CMTP_REPLY_CLASS returns the class digit (2, 4, 5 or 6) of reply |code|. */
#define CMTP_REPLY_CLASS(code) ((code) / 100)

/* cmtp_param is one `key=value` reply parameter for cmtp_reply_format (NUL-terminated). */
struct cmtp_param {
    const char *key;
    const char *value;
};

/* cmtp_reply_format writes one reply line `code SP status *(SP key=value) [SP ":" SP text] CRLF`
 * into |out| of |out_size| octets and NUL-terminates it. |code| must be 200..699 of class 2, 4,
 * 5 or 6; |status| 1*(a-z / 0-9 / "-"); each key 1*(ALPHA / DIGIT / "-"); each value non-empty,
 * valid UTF-8 with no control character, no SP, not starting with ":". Values that break these
 * rules are refused, never escaped or echoed. |text| (may be NULL or empty: no text part) is
 * sanitized instead: every C0/C1-free valid UTF-8 character is kept, every other octet becomes
 * "?", and it is cut at CMTP_TEXT_MAX octets on a character boundary. No output can contain a
 * CR, LF or NUL from any argument. Returns the length (CRLF included, NUL excluded), -EINVAL for
 * a refused argument, or -ENOSPC when |out| is too small or the line would exceed
 * CMTP_LINE_MAX. */
int cmtp_reply_format(char *out, size_t out_size, unsigned code, const char *status,
                      const struct cmtp_param *params, size_t nparams, const char *text);

/* cmtp_reply_param_view is one parsed reply parameter; pointers into the parsed line. */
struct cmtp_reply_param_view {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
};

/* cmtp_reply is a parsed reply line. Every pointer points into the line given to
 * cmtp_reply_parse, which must outlive it. */
struct cmtp_reply {
    unsigned code;      /* 200..699 */
    unsigned cls;       /* 2, 4, 5 or 6 */
    const char *status; /* not NUL-terminated */
    size_t status_len;
    struct cmtp_reply_param_view params[CMTP_REPLY_PARAMS_MAX];
    size_t nparams;
    const char *text; /* after ": ", or NULL */
    size_t text_len;
};

/* cmtp_reply_parse parses one reply line (|len| octets at |line|, CRLF stripped, as returned by
 * cmtp_reader_next) into |r|. Strict: three digits of class 2/4/5/6, single SPs, a lower-case
 * status of at most CMTP_STATUS_MAX octets, parameters `key=value` (key 1*(ALPHA/DIGIT/"-"),
 * value non-empty without control characters and not starting with ":", no key twice, at most
 * CMTP_REPLY_PARAMS_MAX), then optionally SP ":" SP text. Returns 0 or -EINVAL (|r| zeroed). */
int cmtp_reply_parse(struct cmtp_reply *r, const char *line, size_t len);

/* cmtp_reply_param returns the parameter of |r| whose key equals |key| (case-insensitive), or
 * NULL. */
const struct cmtp_reply_param_view *cmtp_reply_param(const struct cmtp_reply *r, const char *key);

/* cmtp_reply_status_is reports whether the status of |r| is exactly |status|. */
bool cmtp_reply_status_is(const struct cmtp_reply *r, const char *status);

#endif
