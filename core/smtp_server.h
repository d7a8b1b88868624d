/* core/smtp_server.h — the ESMTP server state machine of the internal SMTP ingress (the
 * provider's own MTA hands mail to the appliance): bytes and answers in, replies and events out.
 * Pure: no sockets, no TLS, no storage, no clock; not the trusted-network check. */
#ifndef CMTP_CORE_SMTP_SERVER_H
#define CMTP_CORE_SMTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/envelope.h"
#include "core/limits.h"

/* CMTP_SMTPS_OUT_MAX is the size of the reply buffer. The server stops reading commands
 * (CMTP_SMTPS_FLUSH) before a reply could overflow it, so a pipelining client cannot make it
 * grow. */
#define CMTP_SMTPS_OUT_MAX 4096

/* CMTP_SMTPS_LINE_MAX is the longest command line accepted, CRLF included. RFC 5321 sets 512;
 * SMTPUTF8 addresses and parameter lists can be longer, so up to this many octets are accepted
 * (bounded, never grown); a longer line gets `500 5.5.2` and is skipped up to its LF. */
#define CMTP_SMTPS_LINE_MAX 4096

/* CMTP_SMTPS_HELO_MAX is the longest HELO/EHLO argument kept (longer ones are refused). */
#define CMTP_SMTPS_HELO_MAX 255

/* CMTP_SMTPS_POLICY_MAX is the longest CMTP-POLICY value. */
#define CMTP_SMTPS_POLICY_MAX CMTP_POLICY_TEXT_MAX

/* Bits of cmtp_smtps_txn.policy_set: which members CMTP-POLICY= named. */
#define CMTP_SMTPS_POLICY_RELAY CMTP_POLICY_SET_RELAY
#define CMTP_SMTPS_POLICY_FALLBACK CMTP_POLICY_SET_FALLBACK
#define CMTP_SMTPS_POLICY_HOPS CMTP_POLICY_SET_HOPS

/* cmtp_smtps_config configures a server session. A zero limit means the default of
 * core/limits.h. */
struct cmtp_smtps_config {
    const char *host;    /* this server's name for the greeting and EHLO (U- or A-labels) */
    uint64_t size_max;   /* SIZE announced and enforced (<= CMTP_SIZE_MAX_HARD) */
    uint32_t rcpt_max;   /* accepted recipients per message (<= CMTP_RCPT_MAX_HARD) */
    uint32_t txn_max;    /* MAIL commands accepted per connection */
    uint32_t errors_max; /* protocol errors per session before `421 4.7.0` and close */
    bool tls_available;  /* advertise STARTTLS (the caller has a certificate) */
    bool tls_active;     /* the connection is already encrypted */
    bool tls_required;   /* refuse MAIL with `530 5.7.0` until STARTTLS */
    bool bare_lf_reject; /* DATA with a bare LF is refused (`554 5.6.0`) instead of kept */
};

/* What the server decides where RFC 5321 leaves a choice (docs/SMTP-INGRESS.md says the same):
 * - HELO or EHLO must come before MAIL (503). EHLO, HELO and RSET abandon a transaction.
 * - The body of DATA ends only at CRLF "." CRLF. A bare LF or bare CR is body content: it never
 *   ends a line for the end-of-data or dot-unstuffing rules, and it is kept as it is (the body is
 *   stored octet for octet; SMTP/LMTP egress canonicalizes). With bare_lf_reject the message is
 *   refused instead. A dot that starts a line after CRLF is removed (RFC 5321 4.5.2).
 * - Command lines end at CRLF. A bare LF ends the line too but the command is refused
 *   (`500 5.5.2`) so that a LF-only client never has a command executed; NUL or another control
 *   character in a command gets `501 5.5.2`.
 * - Errors: `500`, `501`, `502`, `503`, `553`, `555` and over-long lines count; the caller's
 *   refusals, `452` (too many recipients), `552` (size) and `554 no valid recipients` do not, nor
 *   do the `503`s answering RCPT, DATA or BDAT pipelined behind a refused MAIL. Counts are never
 *   reset. The error that reaches errors_max is answered `421 4.7.0` and the session closes.
 * - BDAT data is always read (and discarded when refused), since its length is known; a BDAT
 *   whose length cannot be parsed gets `501` and the session closes (the stream is lost).
 * - STARTTLS followed by more octets in the same input is an injection attempt: `554 5.5.1`,
 *   close. After STARTTLS the caller does the handshake and calls cmtp_smtps_tls_reset. */

/* cmtp_smtps_ev is what cmtp_smtps_feed asks of its caller. */
enum cmtp_smtps_ev {
    /* All input consumed, nothing pending: send the output, read more. */
    CMTP_SMTPS_NEED_INPUT = 0,
    /* A valid MAIL (ev->txn): answer with cmtp_smtps_mail_reply. */
    CMTP_SMTPS_MAIL,
    /* A valid RCPT (ev->rcpt, ev->rcpt_index, ev->txn): answer with cmtp_smtps_rcpt_reply. */
    CMTP_SMTPS_RCPT,
    /* Body octets (ev->data, ev->len at body offset ev->offset) after dot-unstuffing, pointing
     * into the caller's input (or, for one held-back CR, into static memory): store them before
     * reusing the input buffer. No answer. */
    CMTP_SMTPS_BODY,
    /* The whole body arrived (ev->txn, ev->rcpts, ev->rcpt_count): commit durably, then answer
     * with cmtp_smtps_end_reply. */
    CMTP_SMTPS_END,
    /* The transaction begun by the last accepted MAIL was abandoned (RSET, EHLO/HELO, a body
     * over the size limit, a refused bare LF): discard what was stored. ev->code is the reply. */
    CMTP_SMTPS_RESET,
    /* `220 2.0.0` to STARTTLS is queued: send it, run the TLS handshake, then call
     * cmtp_smtps_tls_reset (close on failure). Nothing is read until then. */
    CMTP_SMTPS_STARTTLS,
    /* Send the pending output, then close. A transaction in progress is abandoned (no RESET
     * precedes CLOSE). ev->code is the last reply. Returned again by every later call. */
    CMTP_SMTPS_CLOSE,
    /* An answer (MAIL, RCPT, END) or cmtp_smtps_tls_reset is awaited; nothing consumed. */
    CMTP_SMTPS_BLOCKED,
    /* The reply buffer is nearly full: send and consume output, then call again. */
    CMTP_SMTPS_FLUSH,
};

/* cmtp_smtps_body_type is MAIL's BODY= parameter. */
enum cmtp_smtps_body_type {
    CMTP_SMTPS_BODY_UNSPEC = 0, /* not given (RFC 5321: 7-bit; 8-bit octets are kept anyway) */
    CMTP_SMTPS_BODY_7BIT,
    CMTP_SMTPS_BODY_8BITMIME,
};

/* cmtp_smtps_txn is the transaction begun by MAIL. */
struct cmtp_smtps_txn {
    struct cmtp_addr from; /* the reverse path; |is_null| for `<>` */
    uint64_t size;         /* SIZE= (0 when not given) */
    enum cmtp_smtps_body_type body;
    bool smtputf8;             /* SMTPUTF8 was given */
    struct cmtp_policy policy; /* cmtp_policy_init defaults, overridden by CMTP-POLICY= */
    unsigned policy_set;       /* CMTP_SMTPS_POLICY_* bits: the members CMTP-POLICY= set */
    bool chunking;             /* the body came with BDAT */
    uint64_t body_size;        /* body octets so far (the total at END) */
    uint64_t bare_lf;          /* bare LFs kept in a DATA body */
};

/* cmtp_smtps_event carries an event's data. Pointers are owned by the server (or are the
 * caller's input, for |data|) and stay valid until the next call that changes state; |txn| stays
 * valid for the whole transaction. Fields that do not apply are zero. */
struct cmtp_smtps_event {
    const struct cmtp_smtps_txn *txn; /* MAIL, RCPT, BODY, END */
    const struct cmtp_addr *rcpt;     /* RCPT: the normalized address */
    uint32_t rcpt_index;              /* RCPT: 1-based count of RCPT commands in the txn */
    const uint8_t *data;              /* BODY */
    size_t len;                       /* BODY */
    uint64_t offset;                  /* BODY: offset of |data| in the body */
    const struct cmtp_addr *rcpts;    /* END: the accepted recipients, in order */
    size_t rcpt_count;                /* END */
    unsigned code;                    /* RESET, CLOSE: the reply code (0 if none) */
};

/* cmtp_smtps_state says which timeout applies now. */
enum cmtp_smtps_state {
    CMTP_SMTPS_STATE_IDLE = 0, /* between commands (RFC 5321: 5 minutes) */
    CMTP_SMTPS_STATE_COMMAND,  /* part of a command line received */
    CMTP_SMTPS_STATE_DATA,     /* inside DATA or a BDAT chunk, or between chunks (3 minutes) */
    CMTP_SMTPS_STATE_WAIT,     /* the caller's answer or TLS handshake: no peer timeout */
    CMTP_SMTPS_STATE_CLOSED,   /* closing: only the pending output remains */
};

/* cmtp_smtps_mail_answer is the caller's answer to CMTP_SMTPS_MAIL. */
enum cmtp_smtps_mail_answer {
    CMTP_SMTPS_MAIL_OK = 0,   /* `250 2.1.0 Ok` */
    CMTP_SMTPS_MAIL_TEMPFAIL, /* `451 4.3.0` (storage down, rate limit) */
    CMTP_SMTPS_MAIL_TOO_BIG,  /* `552 5.3.4` (a per-sender limit below size_max) */
    CMTP_SMTPS_MAIL_REFUSED,  /* `550 5.7.1` (sender not allowed here) */
};

/* cmtp_smtps_rcpt_answer is the caller's answer to CMTP_SMTPS_RCPT. */
enum cmtp_smtps_rcpt_answer {
    CMTP_SMTPS_RCPT_OK = 0,       /* `250 2.1.5 Ok`: the recipient is in the message */
    CMTP_SMTPS_RCPT_NO_MAILBOX,   /* `550 5.1.1` */
    CMTP_SMTPS_RCPT_RELAY_DENIED, /* `554 5.7.1` */
    CMTP_SMTPS_RCPT_TEMPFAIL,     /* `451 4.3.0` */
};

/* cmtp_smtps_end_result is the caller's outcome for CMTP_SMTPS_END. */
enum cmtp_smtps_end_result {
    CMTP_SMTPS_END_ACCEPTED = 0, /* `250 2.0.0 Ok: queued as <qid>`: durably stored */
    CMTP_SMTPS_END_TEMPFAIL,     /* `451 4.3.0`: nothing stored */
    CMTP_SMTPS_END_REJECTED,     /* `554 5.6.0`: refused by content policy */
};

/* cmtp_smtps_end_answer is the caller's answer to CMTP_SMTPS_END. */
struct cmtp_smtps_end_answer {
    enum cmtp_smtps_end_result result;
    const char *qid; /* ACCEPTED: 1..CMTP_QID_MAX of [A-Za-z0-9._-] */
};

struct cmtp_smtps;

/* cmtp_smtps_new allocates a server session for one connection (|cfg| is copied; |cfg->host|
 * normalized). Nothing is queued until cmtp_smtps_start. Returns NULL for an invalid |cfg| (no
 * or bad host, a limit above its hard maximum) or on allocation failure. Memory: the structure
 * (line and reply buffers) plus the accepted recipients, grown geometrically up to rcpt_max. */
struct cmtp_smtps *cmtp_smtps_new(const struct cmtp_smtps_config *cfg);

/* cmtp_smtps_free releases |s|. NULL is a no-op. */
void cmtp_smtps_free(struct cmtp_smtps *s);

/* cmtp_smtps_start queues the greeting `220 <host> ESMTP`. Call it once. */
void cmtp_smtps_start(struct cmtp_smtps *s);

/* cmtp_smtps_refuse queues `554 5.7.1 <host> Access denied` instead of the greeting (a peer
 * outside the trusted networks) and returns CMTP_SMTPS_CLOSE: send it and close. */
enum cmtp_smtps_ev cmtp_smtps_refuse(struct cmtp_smtps *s);

/* cmtp_smtps_feed processes client octets |in| (|len|; NULL when 0) until one event and sets
 * |*consumed| to the octets used; call it again with the rest. MAIL, RCPT and END must be
 * answered, and STARTTLS followed by cmtp_smtps_tls_reset, before feeding on (BLOCKED until
 * then). Input may be split at any octet boundary with the same replies and the same body
 * octets. |ev| is always overwritten. */
enum cmtp_smtps_ev cmtp_smtps_feed(struct cmtp_smtps *s, const uint8_t *in, size_t len,
                                   size_t *consumed, struct cmtp_smtps_event *ev);

/* cmtp_smtps_output sets |*p| to the pending reply octets and returns their number. They stay
 * valid until the next cmtp_smtps_* call other than this one. */
size_t cmtp_smtps_output(const struct cmtp_smtps *s, const uint8_t **p);

/* cmtp_smtps_output_consume releases the first |n| pending octets (sent). */
void cmtp_smtps_output_consume(struct cmtp_smtps *s, size_t n);

/* cmtp_smtps_mail_reply answers CMTP_SMTPS_MAIL. Returns 0, or -EINVAL when none is awaited. */
int cmtp_smtps_mail_reply(struct cmtp_smtps *s, enum cmtp_smtps_mail_answer a);

/* cmtp_smtps_rcpt_reply answers CMTP_SMTPS_RCPT. Returns 0, -EINVAL when none is awaited, or
 * -ENOMEM when the recipient could not be stored (it is then refused with `451 4.3.0`). */
int cmtp_smtps_rcpt_reply(struct cmtp_smtps *s, enum cmtp_smtps_rcpt_answer a);

/* cmtp_smtps_end_reply answers CMTP_SMTPS_END; the transaction is over in every case. Returns
 * 0, or -EINVAL when none is awaited or |a->qid| is invalid for ACCEPTED. */
int cmtp_smtps_end_reply(struct cmtp_smtps *s, const struct cmtp_smtps_end_answer *a);

/* cmtp_smtps_tls_reset tells |s| that the TLS handshake after CMTP_SMTPS_STARTTLS succeeded: the
 * session starts over as RFC 3207 requires (no HELO, no transaction, nothing buffered) and the
 * connection counts as encrypted; STARTTLS is no longer advertised. Returns 0, or -EINVAL when no
 * handshake was pending. */
int cmtp_smtps_tls_reset(struct cmtp_smtps *s);

/* cmtp_smtps_shutdown asks |s| to close with `421 4.3.2` at the next command boundary: at once
 * (returning CMTP_SMTPS_CLOSE) when it sits between commands, otherwise after the command or
 * body in progress (CMTP_SMTPS_NEED_INPUT). Idempotent. */
enum cmtp_smtps_ev cmtp_smtps_shutdown(struct cmtp_smtps *s);

/* cmtp_smtps_timeout queues `421 4.4.2` (unless already closing) and returns CMTP_SMTPS_CLOSE. */
enum cmtp_smtps_ev cmtp_smtps_timeout(struct cmtp_smtps *s);

/* cmtp_smtps_state returns the state that selects the caller's timeout. */
enum cmtp_smtps_state cmtp_smtps_state(const struct cmtp_smtps *s);

/* cmtp_smtps_in_transaction reports whether a MAIL was accepted and not yet ended. */
bool cmtp_smtps_in_transaction(const struct cmtp_smtps *s);

/* cmtp_smtps_helo returns the client's HELO/EHLO argument (printable ASCII; "" before any). */
const char *cmtp_smtps_helo(const struct cmtp_smtps *s);

/* cmtp_smtps_tls_active reports whether the connection is encrypted. */
bool cmtp_smtps_tls_active(const struct cmtp_smtps *s);

/* cmtp_smtps_policy_parse parses a CMTP-POLICY value (|len| octets at |s|; the grammar of
 * docs/SMTP-INGRESS.md: `relay:none,fallback:smtp-verified,hops:8`, members in any order, each
 * at most once, keys and keywords case-insensitive) over |*p| (left as it is for members not
 * named) and sets |*set| to the CMTP_SMTPS_POLICY_* bits named. The daemon may use it for a
 * `CMTP-Policy:` header field, which this module never reads. Returns 0, or -EINVAL (nothing
 * changed) for anything malformed. */
int cmtp_smtps_policy_parse(struct cmtp_policy *p, unsigned *set, const char *s, size_t len);

#endif
