/* core/smtp_client.h — the SMTP/LMTP client state machine that delivers a message to N
 * recipients: reply bytes in, command and body bytes and per-recipient results out. Pure: no
 * I/O, no TLS (the caller runs the handshake when told), not the delivery scheduler. */
#ifndef CMTP_CORE_SMTP_CLIENT_H
#define CMTP_CORE_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/limits.h"

/* CMTP_SMTPC_OUT_MAX is the size of the client's output buffer: commands are generated into it
 * lazily and body octets are encoded into it, so that no transaction needs more. */
#define CMTP_SMTPC_OUT_MAX 16384

/* CMTP_SMTPC_REPLY_LINE_MAX is the longest reply line accepted, CRLF included. RFC 5321 allows
 * 512; real servers send longer texts, so up to this many are tolerated; longer is a protocol
 * error. */
#define CMTP_SMTPC_REPLY_LINE_MAX 4096

/* CMTP_SMTPC_REPLY_LINES_MAX is the most lines one (multi-line) reply may have. */
#define CMTP_SMTPC_REPLY_LINES_MAX 128

/* CMTP_SMTPC_INFLIGHT_MAX bounds the commands sent and not yet answered (the pipelining depth).
 */
#define CMTP_SMTPC_INFLIGHT_MAX 128

/* CMTP_SMTPC_HELO_MAX is the longest EHLO/LHLO/HELO argument. */
#define CMTP_SMTPC_HELO_MAX 255

/* CMTP_SMTPC_ENH_MAX is the longest enhanced status code kept ("5.123.456" and a NUL fit). */
#define CMTP_SMTPC_ENH_MAX 15

/* cmtp_smtpc_mode selects the protocol. */
enum cmtp_smtpc_mode {
    CMTP_SMTPC_SMTP = 0, /* RFC 5321: EHLO (HELO fallback), one reply after the final dot */
    CMTP_SMTPC_LMTP,     /* RFC 2033: LHLO, one reply per accepted recipient after the dot */
};

/* cmtp_smtpc_tls is the STARTTLS policy. The client only decides whether to ask; the caller
 * runs the handshake and verifies the certificate as its policy demands. */
enum cmtp_smtpc_tls {
    CMTP_SMTPC_TLS_NONE = 0, /* never send STARTTLS */
    CMTP_SMTPC_TLS_MAY,      /* STARTTLS when advertised; carry on in plaintext otherwise or
                                when the server refuses it */
    CMTP_SMTPC_TLS_REQUIRE,  /* no transaction without TLS: a server that does not advertise
                                STARTTLS, or refuses it, fails every recipient temporarily */
};

/* cmtp_smtpc_config configures a client. All-zero is valid (SMTP, no TLS, "localhost"). */
struct cmtp_smtpc_config {
    enum cmtp_smtpc_mode mode;
    enum cmtp_smtpc_tls tls;
    bool tls_active;    /* the connection is already encrypted (implicit TLS): no STARTTLS */
    bool no_pipelining; /* never pipeline, even when the server advertises PIPELINING */
    bool no_chunking;   /* never BDAT, even when the server advertises CHUNKING */
    const char *helo;   /* our name for EHLO/LHLO/HELO (copied): 1..255 printable ASCII octets
                           without SP; NULL means "localhost" */
};

/* cmtp_smtpc_ext is what the server advertised in its EHLO/LHLO reply (all false after a HELO
 * fallback). Reset by STARTTLS: the EHLO after TLS replaces it. */
struct cmtp_smtpc_ext {
    char host[CMTP_SMTPC_HELO_MAX + 1]; /* first word of the reply, sanitized */
    bool esmtp;                         /* EHLO/LHLO accepted (false: HELO) */
    bool pipelining, starttls, eightbitmime, smtputf8, chunking, binarymime, enhancedstatuscodes,
        size;
    uint64_t size_max; /* SIZE's argument; 0 when none or 0 (no limit) */
};

/* cmtp_smtpc_msg describes the one transaction of cmtp_smtpc_begin. The pointers stay owned by
 * the caller and must stay valid and unchanged until the DONE event. */
struct cmtp_smtpc_msg {
    const struct cmtp_addr *from;  /* the envelope sender; |is_null| for `<>` (bounces) */
    const struct cmtp_addr *rcpts; /* recipient i of RCPT_RESULT is |rcpts[i]| */
    size_t nrcpt;                  /* 1..CMTP_RCPT_MAX_HARD */
    uint64_t size;                 /* body octets for SIZE= (0: unknown, not announced) */
    bool eight_bit;                /* the body has octets >= 0x80: BODY=8BITMIME is needed */
    bool binary;                   /* the body has a NUL, a bare CR or a bare LF
                                      (cmtp_body_scan_binary): it goes unaltered only as
                                      BODY=BINARYMIME in BDAT chunks; false when not scanned */
    bool body_strict;              /* the body must arrive unaltered (SMTP fallback, PROTOCOL.md
                                      14): a |binary| body needs CHUNKING and BINARYMIME, and a
                                      server without them fails every recipient permanently
                                      ("no-binarymime") instead of receiving canonicalized line
                                      endings */
    bool smtputf8;                 /* the header has UTF-8: SMTPUTF8 is needed (it is also
                                      needed, and set by the client, for a non-ASCII address) */
};

/* cmtp_smtpc_ev is what cmtp_smtpc_feed reports. */
enum cmtp_smtpc_ev {
    /* Nothing pending and all input consumed: send the output, read more. */
    CMTP_SMTPC_NEED_INPUT = 0,
    /* Greeting, EHLO/LHLO (and STARTTLS) done (ev->ext): cmtp_smtpc_begin may be called, and a
     * transaction begun earlier starts now. */
    CMTP_SMTPC_READY,
    /* The server answered 220 to STARTTLS: run the TLS handshake on the connection now, then
     * call cmtp_smtpc_tls_done (or cmtp_smtpc_abort when it fails). Plaintext octets the server
     * sent after the 220 are an attack (command injection): the client reports them as a
     * PROTOCOL_ERROR instead of this event. */
    CMTP_SMTPC_START_TLS,
    /* The final outcome of one recipient (ev->rcpt_index, ev->result, ev->stage, ev->code,
     * ev->enhanced, ev->text; ev->local and ev->status when decided without a server reply).
     * Exactly one per recipient of the transaction. */
    CMTP_SMTPC_RCPT_RESULT,
    /* The body may be sent: the server answered 354 to DATA or, with CHUNKING, every RCPT was
     * answered and one was accepted, or (CHUNKING and PIPELINING, a body of at most 64 KiB and at
     * most 16 recipients) the envelope was just generated and the body follows it in the same
     * round trip. Stream the body with cmtp_smtpc_body, then cmtp_smtpc_body_end. */
    CMTP_SMTPC_BODY_READY,
    /* The transaction is over: every recipient had its RCPT_RESULT (ev->delivered, ev->temp,
     * ev->perm count them). cmtp_smtpc_begin or cmtp_smtpc_quit may be called. */
    CMTP_SMTPC_DONE,
    /* The session is over: `221` after QUIT, a `421`, a refused greeting, EHLO or required
     * STARTTLS, or cmtp_smtpc_abort (ev->code, ev->text; ev->local, ev->status). Close the
     * connection. A transaction in progress was finished first (temporary results, DONE).
     * Returned again by every later call. */
    CMTP_SMTPC_CLOSED,
    /* The server broke the protocol (malformed, unexpected or over-long reply): close the
     * connection. ev->status names the fault. A transaction in progress was finished first, every
     * recipient without a result failing temporarily. Returned again by every later call. */
    CMTP_SMTPC_PROTOCOL_ERROR,
};

/* cmtp_smtpc_result is one recipient's outcome. */
enum cmtp_smtpc_result {
    CMTP_SMTPC_DELIVERED = 0, /* 2xx after the body: the server took responsibility */
    CMTP_SMTPC_TEMP,          /* 4xx, a dropped connection, a 421: retry later */
    CMTP_SMTPC_PERM,          /* 5xx: do not retry (report to the originator) */
};

/* cmtp_smtpc_stage says which step decided a result. */
enum cmtp_smtpc_stage {
    CMTP_SMTPC_STAGE_SESSION = 0, /* greeting, EHLO, STARTTLS, RSET, connection, 421 */
    CMTP_SMTPC_STAGE_LOCAL,       /* the client itself (SIZE, 8BITMIME, SMTPUTF8, BINARYMIME
                                     missing) */
    CMTP_SMTPC_STAGE_MAIL,        /* the reply to MAIL FROM */
    CMTP_SMTPC_STAGE_RCPT,        /* the reply to RCPT TO */
    CMTP_SMTPC_STAGE_DATA,        /* the reply to DATA, or to a BDAT chunk before the last */
    CMTP_SMTPC_STAGE_DOT,         /* the reply after the body's final dot (or BDAT LAST) */
};

/* cmtp_smtpc_event carries an event's data. Strings are owned by the client, valid until the
 * next cmtp_smtpc_* call, and "" when absent; texts are sanitized (valid UTF-8 without control
 * characters, at most CMTP_TEXT_MAX octets), fit for logs and DSNs. */
struct cmtp_smtpc_event {
    const struct cmtp_smtpc_ext *ext; /* READY */
    size_t rcpt_index;                /* RCPT_RESULT: 0-based index into msg->rcpts */
    enum cmtp_smtpc_result result;    /* RCPT_RESULT */
    enum cmtp_smtpc_stage stage;      /* RCPT_RESULT */
    bool local;                       /* decided without a server reply (code 0) */
    unsigned code;                    /* the reply code, 0 when local */
    const char *enhanced;             /* the reply's enhanced status code, e.g. "5.1.1" */
    const char *text;                 /* the reply text (every line, joined by one SP) */
    const char *status;               /* a local decision's reason keyword (e.g. "too-big") */
    size_t delivered, temp, perm;     /* DONE */
};

/* cmtp_smtpc_state is a client's coarse state. */
enum cmtp_smtpc_state {
    CMTP_SMTPC_STATE_CONNECT = 0, /* greeting, EHLO, STARTTLS in progress */
    CMTP_SMTPC_STATE_TLS,         /* the caller runs the TLS handshake */
    CMTP_SMTPC_STATE_READY,       /* no transaction */
    CMTP_SMTPC_STATE_ENVELOPE,    /* MAIL, RCPT, DATA in progress */
    CMTP_SMTPC_STATE_BODY,        /* the caller streams the body */
    CMTP_SMTPC_STATE_END,         /* the final dot sent, replies awaited */
    CMTP_SMTPC_STATE_QUIT,        /* QUIT sent */
    CMTP_SMTPC_STATE_CLOSED,      /* CLOSED or PROTOCOL_ERROR */
};

struct cmtp_smtpc;

/* cmtp_smtpc_new allocates a client for one new connection configured by |cfg| (copied; NULL
 * means all-zero). It waits for the greeting. Returns NULL for an invalid |cfg->helo| or on
 * allocation failure. */
struct cmtp_smtpc *cmtp_smtpc_new(const struct cmtp_smtpc_config *cfg);

/* cmtp_smtpc_free releases |c| (not the caller's message). NULL is a no-op. */
void cmtp_smtpc_free(struct cmtp_smtpc *c);

/* cmtp_smtpc_feed processes server octets |in| (|len|; NULL when 0) until one event and sets
 * |*consumed| to the octets used; call it again with the rest. Pending events (results decided
 * by an earlier call, by cmtp_smtpc_begin or cmtp_smtpc_abort) are returned first, consuming
 * nothing. Input may be split at any octet boundary with the same events. |ev| is always
 * overwritten. */
enum cmtp_smtpc_ev cmtp_smtpc_feed(struct cmtp_smtpc *c, const uint8_t *in, size_t len,
                                   size_t *consumed, struct cmtp_smtpc_event *ev);

/* cmtp_smtpc_output generates the next commands that fit, sets |*p| to the pending octets and
 * returns their number (0: nothing to send). They stay valid until the next call on |c| other
 * than this one. Without PIPELINING one command is outstanding at a time; with it, MAIL, every
 * RCPT and DATA go out together (at most CMTP_SMTPC_INFLIGHT_MAX unanswered). */
size_t cmtp_smtpc_output(struct cmtp_smtpc *c, const uint8_t **p);

/* cmtp_smtpc_output_consume releases the first |n| pending octets (sent). */
void cmtp_smtpc_output_consume(struct cmtp_smtpc *c, size_t n);

/* cmtp_smtpc_begin starts the delivery of |msg| (copied; what it points to stays the caller's,
 * see cmtp_smtpc_msg). It may be called before READY (the transaction starts when the session is
 * ready) or after READY/DONE. MAIL FROM gets SIZE= when the server announced SIZE and
 * |msg->size| > 0, BODY=BINARYMIME when |msg->binary| and the server announced CHUNKING and
 * BINARYMIME, else BODY=8BITMIME when |msg->eight_bit|, SMTPUTF8 when needed.
 *
 * The body goes in BDAT chunks (RFC 3030) when the server announced CHUNKING (unless
 * |no_chunking|): octet for octet with BINARYMIME, else with line endings canonicalized and no
 * dot-stuffing (cmtp_dotstuff_init_canon); without CHUNKING, after DATA, dot-stuffed and
 * canonicalized (core/dotstuff.h). A binary body that cannot go as BINARYMIME is thus
 * canonicalized, or refused under |msg->body_strict|.
 *
 * A message the server announced it cannot take (SIZE above its limit; 8-bit body without
 * 8BITMIME; UTF-8 without SMTPUTF8; under |body_strict|, a binary body without CHUNKING and
 * BINARYMIME) is not sent: every recipient gets a local PERM result ("too-big", "no-8bitmime",
 * "no-smtputf8", "no-binarymime"; the body is never altered to fit). Returns 0, -EINVAL when a
 * transaction is already open, the session is closing, or |msg| is invalid (no recipient, a null
 * recipient, NULL pointers), -ENOMEM on allocation failure. */
int cmtp_smtpc_begin(struct cmtp_smtpc *c, const struct cmtp_smtpc_msg *msg);

/* cmtp_smtpc_tls_done tells |c| that the TLS handshake after START_TLS succeeded: everything
 * learned before is forgotten and EHLO/LHLO is sent again. Returns 0, or -EINVAL when no
 * handshake was asked for. */
int cmtp_smtpc_tls_done(struct cmtp_smtpc *c);

/* cmtp_smtpc_body encodes body octets |in| (|len|) into the output after BODY_READY (as
 * cmtp_smtpc_begin says: dot-stuffed after DATA, framed as BDAT chunks with CHUNKING) and sets
 * |*consumed| to the octets taken: as many as fit, so send the output and call again with the
 * rest. With CHUNKING, octets wait in an open chunk that cmtp_smtpc_output or
 * cmtp_smtpc_body_end closes; none are taken while the output is nearly full or, without
 * PIPELINING, while the previous chunk's reply is awaited (feed the reply, then call again).
 * Returns 0, or -EINVAL outside the body phase. */
int cmtp_smtpc_body(struct cmtp_smtpc *c, const uint8_t *in, size_t len, size_t *consumed);

/* cmtp_smtpc_body_end ends the body: after DATA a missing final CRLF is added, then ".\r\n";
 * with CHUNKING the open chunk becomes `BDAT n LAST` (or `BDAT 0 LAST` is sent). The results
 * follow as RCPT_RESULT events, then DONE. Returns 0, -ENOBUFS when the output is too full (send
 * it first), -EAGAIN without PIPELINING while a chunk's reply is awaited (feed it first), or
 * -EINVAL outside the body phase. */
int cmtp_smtpc_body_end(struct cmtp_smtpc *c);

/* cmtp_smtpc_quit queues QUIT (READY only); CLOSED follows the server's reply. Returns 0,
 * -EINVAL when a transaction is open or the session is not ready, or -ENOBUFS when the output is
 * full (send it first). */
int cmtp_smtpc_quit(struct cmtp_smtpc *c);

/* cmtp_smtpc_abort tells |c| that the connection is gone or must be dropped (I/O error, EOF,
 * timeout, failed TLS handshake); |why| is a short keyword (copied; NULL means "connection").
 * Every recipient without a result gets a local TEMP result, then DONE, then CLOSED, collected
 * with cmtp_smtpc_feed(c, NULL, 0, ...). No-op once the session is closed. Note that a drop after
 * the final dot was sent and before its reply may mean the server did take the message: the
 * TEMP result then leads to a duplicate, never to a loss (RFC 1047). */
void cmtp_smtpc_abort(struct cmtp_smtpc *c, const char *why);

/* cmtp_smtpc_state returns |c|'s coarse state. */
enum cmtp_smtpc_state cmtp_smtpc_state(const struct cmtp_smtpc *c);

/* cmtp_smtpc_timeout_ms returns the RFC 5321 section 4.5.3.2 timeout for what |c| awaits now:
 * 300000 for the greeting, EHLO, MAIL, RCPT, RSET, QUIT; 120000 for the reply to DATA; 180000
 * while the caller streams the body (per write); 600000 for the reply after the final dot; 0
 * when nothing is awaited from the server. */
uint32_t cmtp_smtpc_timeout_ms(const struct cmtp_smtpc *c);

/* cmtp_smtpc_ext returns what the server advertised, or NULL before the EHLO/LHLO/HELO reply. */
const struct cmtp_smtpc_ext *cmtp_smtpc_ext(const struct cmtp_smtpc *c);

/* cmtp_smtpc_tls_active reports whether the connection is encrypted (configured as such, or
 * cmtp_smtpc_tls_done was called). */
bool cmtp_smtpc_tls_active(const struct cmtp_smtpc *c);

#endif
