/* core/server.h — the CMTP/1 server session state machine: bytes and answers in, reply bytes and
 * events out. Pure: no I/O, no storage, no hashing, no clock; not the daemon's connection glue. */
#ifndef CMTP_CORE_SERVER_H
#define CMTP_CORE_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/envelope.h"
#include "core/limits.h"

/* CMTP_SRV_OUT_MAX is the size of a server's reply buffer. The server stops reading commands
 * (CMTP_SRV_FLUSH) before a reply could overflow it, so a pipelining peer cannot make it grow. */
#define CMTP_SRV_OUT_MAX 4096

/* cmtp_server_config holds a server's limits, announced in the greeting. A zero limit means the
 * default of core/limits.h; a limit above the hard maximum is refused by cmtp_server_new. */
struct cmtp_server_config {
    const char *host;    /* this server's domain (U- or A-labels); copied, normalized */
    uint64_t size_max;   /* largest SIZE (CMTP_SIZE_MAX_DEFAULT, <= CMTP_SIZE_MAX_HARD) */
    uint32_t rcpt_max;   /* RCPT commands per transaction (<= CMTP_RCPT_MAX_HARD) */
    uint32_t chunk_max;  /* largest BODY chunk (<= CMTP_CHUNK_MAX_HARD) */
    uint32_t txn_max;    /* transactions (accepted MAIL commands) per connection */
    uint32_t errors_max; /* failed commands in a row before `604 too-many-errors` */
    uint32_t line_max;   /* longest command line, CRLF included (0: CMTP_LINE_MAX; clamped to
                          * CMTP_LINE_MIN..CMTP_LINE_MAX); advertised as line-max= */
};

/* Where the outline leaves a choice, this server does the following (docs/PROTOCOL.md must say
 * the same):
 * - Every RCPT line of a transaction takes the next DROP index, refused ones included; RCPTs past
 *   rcpt-max get `452 too-many-rcpts` and are never stored.
 * - A MAIL past txn-max gets `452 too-many-txn` and the server then closes, like after `421`
 *   (the client must reconnect; its pipelined TRACE/RCPT lines would only fail).
 * - Each BODY chunk sent while no recipient is accepted gets `554 no-recipients` and is read and
 *   discarded; the transaction stays in its body phase until END (`554 no-recipients`) or RSET.
 * - Sequence is checked before syntax: `503`/`603` win over `501`/`601`.
 *
 * Error counting: `500`, `501` (not the caller's MAIL refusal), `503`, `452 too-many-rcpts` and
 * `554 no-recipients` (BODY) count as failed commands; any 2xx reply resets the count; other
 * refusals (policy, limits, temporary failures) neither count nor reset. The `503` answers to the
 * TRACE, RCPT, DROP and END lines pipelined behind a refused MAIL do not count: a client that
 * pipelines correctly must not be closed for it. The reply that reaches errors-max is replaced by
 * `604 too-many-errors`, and the session closes. */

/* cmtp_srv_ev is what cmtp_server_feed asks of its caller. */
enum cmtp_srv_ev {
    /* All input was consumed and nothing is pending: read more, after sending the output. */
    CMTP_SRV_NEED_INPUT = 0,
    /* A valid MAIL was parsed (ev->env). Answer with cmtp_server_mail_reply. */
    CMTP_SRV_MAIL,
    /* A valid RCPT was parsed (ev->rcpt, ev->rcpt_index, ev->env). Answer with
     * cmtp_server_rcpt_reply. */
    CMTP_SRV_RCPT,
    /* Body octets (ev->data, ev->len at body offset ev->offset), pointing into the caller's input
     * buffer: store and hash them before reusing that buffer. No answer. */
    CMTP_SRV_BODY,
    /* END with the whole declared body received (ev->env, ev->rcpts). Check the digest, commit
     * durably, then answer with cmtp_server_end_reply. */
    CMTP_SRV_END,
    /* The transaction begun by the last accepted MAIL was abandoned (RSET, or END refused with
     * `554 size-mismatch` / `554 no-recipients`) and the session goes on: discard what was
     * stored for it. ev->code / ev->status name the reply. */
    CMTP_SRV_RESET,
    /* Send the pending output, then close the connection. Any transaction in progress is
     * abandoned (no RESET precedes CLOSE). ev->code / ev->status name the last reply. Returned
     * again by every later call. */
    CMTP_SRV_CLOSE,
    /* Waiting for the answer to a MAIL, RCPT or END event; nothing was consumed. */
    CMTP_SRV_BLOCKED,
    /* The reply buffer is nearly full: send (and consume) pending output, then call again.
     * Nothing was consumed after the last complete command. */
    CMTP_SRV_FLUSH,
};

/* cmtp_srv_rcpt_status is the state of one RCPT of the current transaction. */
enum cmtp_srv_rcpt_status {
    CMTP_SRV_RCPT_PENDING = 0, /* asked the caller, no answer yet */
    CMTP_SRV_RCPT_FINAL,       /* `250 final` */
    CMTP_SRV_RCPT_RELAY,       /* `251 relay next=<next_hop>` */
    CMTP_SRV_RCPT_REFUSED,     /* any 4xx/5xx reply */
    CMTP_SRV_RCPT_DROPPED,     /* accepted, then `DROP`ped by the client */
};

/* cmtp_srv_rcpt is one RCPT of the current transaction, by its 1-based index minus one.
 * |addr| is zeroed for a RCPT refused before its address was parsed. */
struct cmtp_srv_rcpt {
    struct cmtp_addr addr;
    enum cmtp_srv_rcpt_status status;
    char next_hop[CMTP_DOMAIN_MAX + 1]; /* lower-case A-labels, for CMTP_SRV_RCPT_RELAY */
};

/* cmtp_srv_event carries an event's data. Every pointer is owned by the server (or, for
 * |data|, is the caller's own input) and stays valid until the next call of any cmtp_server_*
 * function that changes state; |env| stays valid for the whole transaction. Fields that do not
 * apply to an event are zero. */
struct cmtp_srv_event {
    const struct cmtp_envelope *env;   /* MAIL, RCPT, BODY, END */
    const struct cmtp_addr *rcpt;      /* RCPT: the normalized address */
    uint32_t rcpt_index;               /* RCPT: 1-based index in the transaction */
    const uint8_t *data;               /* BODY */
    size_t len;                        /* BODY */
    uint64_t offset;                   /* BODY: offset of |data| in the message body */
    const struct cmtp_srv_rcpt *rcpts; /* END: every RCPT of the transaction, by index */
    size_t rcpt_count;                 /* END: entries in |rcpts| */
    uint32_t rcpt_accepted;            /* END: entries FINAL or RELAY (the ones to deliver) */
    unsigned code;                     /* RESET, CLOSE: the reply code (0 if none) */
    const char *status;                /* RESET, CLOSE: the reply status keyword, or "" */
};

/* cmtp_srv_state says which server timeout applies now. */
enum cmtp_srv_state {
    CMTP_SRV_STATE_IDLE = 0, /* between commands (idle timeout) */
    CMTP_SRV_STATE_COMMAND,  /* part of a command line received (command timeout) */
    CMTP_SRV_STATE_BODY,     /* inside or between BODY chunks (chunk timeout) */
    CMTP_SRV_STATE_WAIT,     /* waiting for the caller's answer: no peer timeout */
    CMTP_SRV_STATE_CLOSED,   /* closing: only the pending output remains */
};

/* cmtp_srv_mail_answer is the caller's answer to CMTP_SRV_MAIL. */
enum cmtp_srv_mail_answer {
    CMTP_SRV_MAIL_OK = 0,   /* `250 ok txn=<txid>`: the transaction begins */
    CMTP_SRV_MAIL_TEMPFAIL, /* `451 try-later` (rate limit, storage down) */
    CMTP_SRV_MAIL_TOO_BIG,  /* `552 too-big` (a per-peer size limit below size-max) */
    CMTP_SRV_MAIL_REFUSED,  /* `501 bad-address` (originator refused by policy) */
};

/* cmtp_srv_rcpt_answer is the caller's disposition for CMTP_SRV_RCPT. */
enum cmtp_srv_rcpt_answer {
    CMTP_SRV_ANSWER_FINAL = 0,  /* this server's domain holds the mailbox */
    CMTP_SRV_ANSWER_RELAY,      /* another party must carry it on, to the given next hop */
    CMTP_SRV_ANSWER_NO_MAILBOX, /* `550 no-mailbox` */
    CMTP_SRV_ANSWER_TEMPFAIL,   /* `450 try-later` */
};

/* cmtp_srv_end_result is the caller's outcome for CMTP_SRV_END. */
enum cmtp_srv_end_result {
    CMTP_SRV_END_ACCEPTED = 0,    /* `250 accepted txn= id= rcpts= [dup=1]`: durably stored */
    CMTP_SRV_END_DIGEST_MISMATCH, /* `554 digest-mismatch` */
    CMTP_SRV_END_TXN_CONFLICT,    /* `554 txn-conflict` */
    CMTP_SRV_END_TEMPFAIL,        /* `451 try-later`: nothing accepted */
};

/* cmtp_srv_end_answer is the caller's answer to CMTP_SRV_END. */
struct cmtp_srv_end_answer {
    enum cmtp_srv_end_result result;
    const char *qid; /* ACCEPTED: queue id, 1..CMTP_QID_MAX of [A-Za-z0-9._-] */
    bool dup;        /* ACCEPTED: the txid was accepted before; this is the first result */
    uint32_t rcpts;  /* ACCEPTED: recipients accepted (the first result's count for dup) */
};

struct cmtp_server;

/* cmtp_server_new allocates a server session for one connection with the limits of |cfg| (the
 * caller keeps |cfg|; |cfg->host| is copied). Nothing is queued until cmtp_server_start. Returns
 * NULL when |cfg| is invalid (no or bad host, a limit above its hard maximum) or on allocation
 * failure. Memory: the structure (line buffer, reply buffer, envelope) plus a recipient array
 * grown geometrically as RCPTs arrive, bounded by rcpt-max. */
struct cmtp_server *cmtp_server_new(const struct cmtp_server_config *cfg);

/* cmtp_server_free releases |s| and everything it owns. NULL is a no-op. */
void cmtp_server_free(struct cmtp_server *s);

/* cmtp_server_start queues the greeting (`220 ready proto=cmtp/1 host= size-max= rcpt-max=
 * chunk-max= line-max= txn-max=`). Call it once, after the TLS handshake. */
void cmtp_server_start(struct cmtp_server *s);

/* cmtp_server_feed processes peer bytes |in| (|len| octets; NULL when |len| is 0) until one
 * event, and sets |*consumed| to the octets used; call it again with the rest. Replies are
 * appended to the output (cmtp_server_output). The caller must answer MAIL, RCPT and END events
 * before feeding on (BLOCKED until then). BODY events point into |in|. After CLOSE, send the
 * output and close; every later call returns CLOSE. Input may be split at any octet boundary
 * with the same outcome. |ev| is always overwritten. */
enum cmtp_srv_ev cmtp_server_feed(struct cmtp_server *s, const uint8_t *in, size_t len,
                                  size_t *consumed, struct cmtp_srv_event *ev);

/* cmtp_server_output sets |*p| to the pending reply bytes and returns their number (0: none).
 * The bytes stay valid until the next cmtp_server_* call other than cmtp_server_output. */
size_t cmtp_server_output(const struct cmtp_server *s, const uint8_t **p);

/* cmtp_server_output_consume releases the first |n| pending reply bytes (sent). |n| larger
 * than what is pending is a programmer error. */
void cmtp_server_output_consume(struct cmtp_server *s, size_t n);

/* cmtp_server_mail_reply answers a CMTP_SRV_MAIL event with |a|. Returns 0, or -EINVAL when no
 * MAIL answer is awaited. */
int cmtp_server_mail_reply(struct cmtp_server *s, enum cmtp_srv_mail_answer a);

/* cmtp_server_rcpt_reply answers a CMTP_SRV_RCPT event with disposition |a|; |next_hop| is the
 * relay's next hop domain (U- or A-labels) for CMTP_SRV_ANSWER_RELAY, else ignored. The server
 * applies the originator's policy itself: a relay when RELAY=none, or RELAY=domain with the next
 * hop outside the recipient's domain, gets `551 relay-denied`; a permitted relay with HOPS=0
 * gets `554 hops-exceeded`; otherwise `251 relay next=<domain>`. Returns 0, or -EINVAL when no
 * RCPT answer is awaited or |next_hop| is not a valid domain for a relay. */
int cmtp_server_rcpt_reply(struct cmtp_server *s, enum cmtp_srv_rcpt_answer a,
                           const char *next_hop);

/* cmtp_server_end_reply answers a CMTP_SRV_END event with |a|. In every case the transaction
 * is over afterwards (no RESET follows): on a failure the caller discards what it stored.
 * Returns 0, or -EINVAL when no END answer is awaited or |a->qid| is invalid for ACCEPTED. */
int cmtp_server_end_reply(struct cmtp_server *s, const struct cmtp_srv_end_answer *a);

/* cmtp_server_shutdown asks |s| to close at the next command boundary with `421
 * shutting-down`. When the session sits between commands (not inside a line, a chunk or an
 * unanswered event) the reply is queued at once and CMTP_SRV_CLOSE is returned; otherwise
 * CMTP_SRV_NEED_INPUT, and the next complete command line is answered with the 421 instead of
 * being executed (the pending event is answered normally first). Idempotent. */
enum cmtp_srv_ev cmtp_server_shutdown(struct cmtp_server *s);

/* cmtp_server_timeout queues `605 timeout` (unless already closing) and returns
 * CMTP_SRV_CLOSE: send the output and close. Any transaction in progress is abandoned. */
enum cmtp_srv_ev cmtp_server_timeout(struct cmtp_server *s);

/* cmtp_server_state returns the state that selects the daemon's timeout. */
enum cmtp_srv_state cmtp_server_state(const struct cmtp_server *s);

/* cmtp_server_in_transaction reports whether a transaction is open (MAIL accepted, not ended):
 * the whole-transaction timeout applies. */
bool cmtp_server_in_transaction(const struct cmtp_server *s);

/* cmtp_server_rcpt returns RCPT |index| (1-based) of the current transaction, or NULL. */
const struct cmtp_srv_rcpt *cmtp_server_rcpt(const struct cmtp_server *s, uint32_t index);

#endif
