/* core/client.h — the CMTP/1 client session state machine: one transaction at a time over an
 * established session, reply bytes in, command bytes and events out. Pure: no I/O, no hashing;
 * not the delivery scheduler and not TLS. */
#ifndef CMTP_CORE_CLIENT_H
#define CMTP_CORE_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/envelope.h"
#include "core/limits.h"
#include "core/proto.h"

/* CMTP_CLI_OUT_MAX is the size of a client's command buffer. MAIL, TRACE, RCPT and DROP lines
 * are generated into it lazily, as the caller drains it, so that a transaction with many
 * recipients never needs more. */
#define CMTP_CLI_OUT_MAX (2 * CMTP_LINE_MAX)

/* cmtp_client_relay_fn decides whether the originator's policy lets a relay carry |rcpt| on to
 * |next_hop| (lower-case A-labels) for the transaction |env|. It is called once per `251 relay`
 * reply; false makes the client send `DROP <i>` for that recipient. */
typedef bool (*cmtp_client_relay_fn)(void *arg, const struct cmtp_envelope *env,
                                     const struct cmtp_addr *rcpt, const char *next_hop);

/* cmtp_client_config configures a client session. All-zero is valid. */
struct cmtp_client_config {
    /* allow_relay overrides the relay decision; NULL means
     * cmtp_policy_allows_relay(&env->policy, rcpt->domain, next_hop). */
    cmtp_client_relay_fn allow_relay;
    void *arg; /* passed to |allow_relay| */
};

/* cmtp_greeting is what the server announced in its `220 ready` greeting. */
struct cmtp_greeting {
    char host[CMTP_DOMAIN_MAX + 1]; /* lower-case A-labels */
    uint64_t size_max;
    uint32_t rcpt_max;
    uint32_t chunk_max;
    uint32_t line_max;
    uint32_t txn_max;
};

/* cmtp_cli_ev is what cmtp_client_feed reports. */
enum cmtp_cli_ev {
    /* All input consumed, nothing pending: read more (after sending the output). */
    CMTP_CLI_NEED_INPUT = 0,
    /* The greeting arrived (ev->greeting): cmtp_client_begin may be called. */
    CMTP_CLI_GREETING,
    /* One recipient's reply (ev->rcpt_index, ev->disp, ev->next_hop, ev->dropped, ev->code,
     * ev->status, ev->text), in RCPT order. */
    CMTP_CLI_RCPT_RESULT,
    /* Every RCPT is answered, every relay the policy refuses was DROPped (and the server said
     * `250 dropped`), and ev->rcpt_ready > 0 recipients remain: stream the body with
     * cmtp_client_body_header and cmtp_client_end. */
    CMTP_CLI_BODY_READY,
    /* The transaction is over (ev->outcome, ev->code, ev->status, ev->text; for ACCEPTED also
     * ev->qid, ev->dup, ev->rcpts). ev->local marks a result decided by the client without a
     * server reply (code 0). cmtp_client_begin may be called again. */
    CMTP_CLI_TXN_DONE,
    /* The session is over: `221 bye` after QUIT, or the server closed with a 6xx, `421` or `452
     * too-many-txn` reply (ev->code, ev->status, ev->text). A transaction in progress was
     * reported first by a TXN_DONE with a temporary failure. Returned again by later calls. */
    CMTP_CLI_CLOSED,
    /* The server broke the protocol (malformed or unexpected reply): close the connection.
     * ev->status names the fault. A transaction in progress was reported first by a local
     * TEMPFAIL TXN_DONE (nothing is known to be accepted; retry with the same txid). Returned
     * again by later calls. */
    CMTP_CLI_PROTOCOL_ERROR,
};

/* cmtp_cli_disp is the server's disposition for one recipient. */
enum cmtp_cli_disp {
    CMTP_CLI_RCPT_FINAL = 0, /* `250 final` */
    CMTP_CLI_RCPT_RELAY,     /* `251 relay next=<domain>` */
    CMTP_CLI_RCPT_REFUSED,   /* a 4xx (temporary) or 5xx (permanent) reply */
};

/* cmtp_cli_outcome is the result of one transaction. */
enum cmtp_cli_outcome {
    CMTP_CLI_ACCEPTED = 0, /* `250 accepted`: durably stored by the server */
    CMTP_CLI_TEMPFAIL,     /* retry later with the same transaction id */
    CMTP_CLI_PERMFAIL,     /* do not retry */
};

/* cmtp_cli_event carries an event's data. Strings are owned by the client and valid until the
 * next cmtp_client_feed call; they are "" when absent. Fields that do not apply are zero. */
struct cmtp_cli_event {
    const struct cmtp_greeting *greeting; /* GREETING */
    size_t rcpt_index;                    /* RCPT_RESULT: 0-based index into the begin() array */
    enum cmtp_cli_disp disp;              /* RCPT_RESULT */
    const char *next_hop;                 /* RCPT_RESULT for RELAY: normalized next hop */
    bool dropped;                  /* RCPT_RESULT for RELAY: refused by policy, will be DROPped */
    size_t rcpt_ready;             /* BODY_READY: recipients that will receive the body */
    enum cmtp_cli_outcome outcome; /* TXN_DONE */
    bool local;                    /* TXN_DONE: decided locally, no server reply (code 0) */
    const char *qid;               /* TXN_DONE ACCEPTED: the server's queue id */
    bool dup;                      /* TXN_DONE ACCEPTED: `dup=1`, accepted before */
    uint32_t rcpts;                /* TXN_DONE ACCEPTED: recipients the server accepted */
    unsigned code;                 /* RCPT_RESULT, TXN_DONE, CLOSED: the reply code */
    const char *status;            /* the reply status keyword (or the local reason) */
    const char *text;              /* the reply text, sanitized */
};

/* cmtp_cli_state is a client's coarse state. */
enum cmtp_cli_state {
    CMTP_CLI_STATE_GREETING = 0, /* waiting for the greeting */
    CMTP_CLI_STATE_READY,        /* no transaction: begin or quit */
    CMTP_CLI_STATE_ENVELOPE,     /* MAIL/TRACE/RCPT/DROP sent, replies awaited */
    CMTP_CLI_STATE_BODY,         /* the caller streams the body */
    CMTP_CLI_STATE_END,          /* END or RSET sent, the result awaited */
    CMTP_CLI_STATE_QUIT,         /* QUIT sent */
    CMTP_CLI_STATE_CLOSED,       /* CLOSED or PROTOCOL_ERROR reported */
};

struct cmtp_client;

/* cmtp_client_new allocates a client session for one established connection (after TLS),
 * configured by |cfg| (copied; NULL means all-zero). Returns NULL on allocation failure. */
struct cmtp_client *cmtp_client_new(const struct cmtp_client_config *cfg);

/* cmtp_client_free releases |c| and everything it owns (not the caller's envelope or
 * recipients). NULL is a no-op. */
void cmtp_client_free(struct cmtp_client *c);

/* cmtp_client_feed processes server bytes |in| (|len| octets; NULL when |len| is 0) until one
 * event and sets |*consumed| to the octets used; call it again with the rest. Pending events
 * (e.g. a local failure from cmtp_client_begin) are returned first, consuming nothing. |ev| is
 * always overwritten. */
enum cmtp_cli_ev cmtp_client_feed(struct cmtp_client *c, const uint8_t *in, size_t len,
                                  size_t *consumed, struct cmtp_cli_event *ev);

/* cmtp_client_output generates the next command lines that fit, sets |*p| to the pending bytes
 * and returns their number (0: nothing to send). The bytes stay valid until the next call on
 * |c| other than this one. */
size_t cmtp_client_output(struct cmtp_client *c, const uint8_t **p);

/* cmtp_client_output_consume releases the first |n| pending bytes (sent). */
void cmtp_client_output_consume(struct cmtp_client *c, size_t n);

/* cmtp_client_begin starts a transaction for |env| to the |n| recipients at |rcpts| and queues
 * MAIL, the envelope's TRACE records and one RCPT per recipient, pipelined. |env| and |rcpts|
 * stay owned by the caller and must stay valid and unchanged until the TXN_DONE, CLOSED or
 * PROTOCOL_ERROR event. Recipient i of RCPT_RESULT is |rcpts[i]|.
 *
 * A transaction the server announced it cannot take (SIZE above size-max, more than rcpt-max
 * recipients, a line longer than line-max) returns 0 with a local PERMFAIL TXN_DONE pending, and
 * one past txn-max a local TEMPFAIL (reconnect): collect it with cmtp_client_feed(c, NULL, 0).
 * Returns -EINVAL when not READY or for an invalid envelope or recipient (no recipient, a null
 * recipient, an envelope that cmtp_mail_format refuses), -ENOMEM on allocation failure. */
int cmtp_client_begin(struct cmtp_client *c, const struct cmtp_envelope *env,
                      const struct cmtp_addr *rcpts, size_t n);

/* cmtp_client_body_header queues `BODY n` after BODY_READY. Ordering contract: after it returns
 * 0 the caller transmits, in this order, every byte cmtp_client_output returns (the queued
 * `BODY n` line is the last of them), then exactly |n| body octets, then whatever the client
 * queues next (the next `BODY` or `END`). The client queues nothing else in between, so draining
 * the output completely before writing the octets is enough. Returns -EINVAL when not in the
 * body phase, when |n| is 0, above the server's chunk-max, or beyond the envelope's SIZE, and
 * -ENOBUFS when the caller has left too much output unsent. */
int cmtp_client_body_header(struct cmtp_client *c, size_t n);

/* cmtp_client_end queues `END` once exactly SIZE octets were announced by body headers; the
 * result arrives as TXN_DONE. Returns -EINVAL otherwise, -ENOBUFS as above. */
int cmtp_client_end(struct cmtp_client *c);

/* cmtp_client_quit queues `QUIT` (READY only); CLOSED follows `221 bye`. Returns -EINVAL when a
 * transaction is open or the session is not READY. */
int cmtp_client_quit(struct cmtp_client *c);

/* cmtp_client_greeting returns the server's greeting, or NULL before it arrived. */
const struct cmtp_greeting *cmtp_client_greeting(const struct cmtp_client *c);

/* cmtp_client_state returns |c|'s coarse state. */
enum cmtp_cli_state cmtp_client_state(const struct cmtp_client *c);

#endif
