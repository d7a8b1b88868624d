/* daemon/delivery_internal.h — what the files of the delivery engine (daemon/delivery*.c) share:
 * the engine, one delivery job, the transports' entry points. Not a public interface (cmtpd.h). */
#ifndef CMTP_DAEMON_DELIVERY_INTERNAL_H
#define CMTP_DAEMON_DELIVERY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/client.h"
#include "core/dotstuff.h"
#include "core/smtp_client.h"
#include "daemon/cmtpd.h"
#include "daemon/fallback.h"
#include "daemon/maildir.h"
#include "queue/consumer.h"

/* Limits of one worker's delivery engine. */
#define DL_INFLIGHT_MAX 64u     /* deliveries (leases) in flight per worker */
#define DL_CLAIM_BATCH 32u      /* leases asked for by one claim */
#define DL_TICK_MS 200u         /* claim, renew and complete period */
#define DL_REPORT_IDLE_MS 1000u /* report poll period while there is none */
#define DL_MAILDIR_BATCH 32u    /* Maildir files open at once per job (one body pass each) */
#define DL_LMTP_RCPT_MAX 1000u  /* recipients per LMTP/SMTP transaction (the rest: next attempt) */
#define DL_TXID_LEN 26u         /* derived transaction ids: 130 bits of SHA-256 in base32 */

/* LMTP/SMTP connection reuse (delivery_smtp.c): a connection whose transaction ended cleanly is
 * parked in the worker's idle pool, keyed by its endpoint, for the next job to the same one. */
#define DL_POOL_MAX 64u               /* parked connections per worker (quitting ones included) */
#define DL_POOL_PER_ENDPOINT 64u      /* idle per endpoint and worker (= DL_INFLIGHT_MAX) */
#define DL_POOL_IDLE_MS 5000u         /* an idle connection is QUITted after this */
#define DL_CONN_REUSE_MAX 100u        /* transactions per connection */
#define DL_CONN_REUSE_TIME_MS 300000u /* no new transaction on a connection older than this */

/* Client timeouts (PROTOCOL.md 10.4 minimums for CMTP; LMTP and SMTP use cmtp_smtpc_timeout_ms,
 * and DL_HANDSHAKE_TIMEOUT_MS for the STARTTLS handshake). */
#define DL_CONNECT_TIMEOUT_MS 30000u
#define DL_HANDSHAKE_TIMEOUT_MS 30000u
#define DL_GREETING_TIMEOUT_MS 60000u
#define DL_REPLY_TIMEOUT_MS 300000u
#define DL_END_TIMEOUT_MS 600000u
#define DL_CLOSE_TIMEOUT_MS 10000u

/* dl_transport is how a job delivers. */
enum dl_transport {
    DL_TR_NONE = 0, /* nothing to deliver: every recipient was decided by routing */
    DL_TR_MAILDIR,  /* final delivery into [delivery] maildir */
    DL_TR_LMTP,     /* final delivery over LMTP to [delivery] lmtp */
    DL_TR_CMTP,     /* CMTP to a next hop */
    DL_TR_SMTP,     /* SMTP to j->sa: [delivery] smtp (mode smtp), or a fallback host (PROTOCOL.md
                       14, |smtp_fallback|) */
};

/* dl_rstate is where one recipient of a job stands. */
enum dl_rstate {
    DL_R_OPEN = 0, /* undecided */
    DL_R_ACCEPTED, /* CMTP: the next hop took the RCPT; the END reply decides */
    DL_R_DONE,     /* |result| and |reason| hold the outcome */
};

/* dl_rcpt is one recipient of a lease, as a job sees it. */
struct dl_rcpt {
    size_t idx;                   /* index into the record's recipients */
    const struct cmtp_addr *addr; /* the record's; valid while the job holds its lease */
    char text[CMTP_ADDR_MAX + 1]; /* local@domain, for the log after the lease is gone */
    enum dl_rstate st;
    enum queue_consumer_result result;
    bool relay_refused; /* a permanent failure decided by the originator's relay policy */
    char reason[QUEUE_REASON_MAX];
};

struct dl_job;
struct dl_route_state;
struct cmtpd_resolver;

/* dl_pconn_state is where a slot of the idle pool stands. */
enum dl_pconn_state {
    DL_PC_FREE = 0, /* unused */
    DL_PC_IDLE,     /* parked: the next job to its endpoint may take it */
    DL_PC_QUIT,     /* being closed: QUIT sent (or dropped), on_close frees the slot */
};

/* dl_pconn is one LMTP/SMTP connection parked between transactions: the io_conn context while
 * no job holds it (|kind| first, see cmtpd.h; told apart from a job by its place in
 * cmtpd_delivery.pool). The key is the endpoint: address, transport and TLS policy. */
struct dl_pconn {
    enum cmtpd_conn_kind kind; /* CMTPD_CONN_DELIVERY */
    enum dl_pconn_state st;
    struct cmtpd_delivery *dl;
    /* The key. */
    enum dl_transport tr;
    struct sockaddr_storage sa;
    socklen_t sa_len;
    enum cmtp_smtpc_tls tls_mode;
    bool verify;
    uint64_t tls_gen; /* cmtpd_delivery.smtp_tls_gen the TLS session was made with */
    bool no_chunking; /* its client was made with [delivery] chunking = no */
    char tls_name[CMTP_DOMAIN_MAX + 1];
    /* The connection, as the job left it. */
    struct io_conn *c;
    struct tls_conn *tls;
    struct cmtp_smtpc *sc; /* READY for the next transaction */
    uint8_t *sbuf;         /* CMTP_SMTPC_OUT_MAX octets */
    size_t sbuf_len;
    bool send_inflight;
    unsigned uses;    /* transactions done on it */
    uint64_t born_ms; /* io_worker_now_ms of its connect */
    uint64_t idle_ms; /* io_worker_now_ms of its parking */
    bool verified;    /* the TLS peer's certificate verified */
    char prot[CMTPD_FALLBACK_PROT_MAX];
};

/* dl_chunk_fn is called once the chunk asked for by cmtpd_delivery_body_fetch is in |j|'s chunk
 * buffer (|err| 0), or with the read's negative errno. */
typedef void (*dl_chunk_fn)(struct dl_job *j, int err);

/* dl_job is one lease being delivered: the recipients of one message for one destination. It is
 * the io_conn context of its connection (|kind| first, see cmtpd.h). Freed after its completion
 * was answered (or by cmtpd_delivery_stop). */
struct dl_job {
    enum cmtpd_conn_kind kind; /* CMTPD_CONN_DELIVERY */
    struct cmtpd_delivery *dl;
    struct dl_job *next, *prev;
    struct queue_consumer_lease *lease; /* NULL once handed to queue_consumer_done */
    const struct queue_record *rec;     /* the lease's record */
    char qid[CMTP_QID_MAX + 1];
    char dest[CMTP_DOMAIN_MAX + 1];
    char txid[CMTP_TXID_MAX + 1];     /* the TXN the message was accepted with */
    char out_txid[CMTP_TXID_MAX + 1]; /* CMTP: the TXN of this hop ("" otherwise) */
    char peer[CMTP_DOMAIN_MAX + 16];  /* where it goes, for the log */
    enum dl_transport tr;
    struct dl_rcpt *rc; /* every recipient of the lease */
    size_t n_rc;
    size_t *map;            /* transport recipient i is rc[map[i]] */
    struct cmtp_addr *addr; /* transport recipient i's address (a copy, contiguous) */
    size_t n_tr;
    bool relay_hop; /* CMTP: we carry the message on as a relay (trace, HOPS - 1) */
    bool store_hop; /* CMTP: we hand it, final here, to the internal store (trace, role final) */
    /* CMTP: the hosts tried and SMTP fallback (delivery_route.h); NULL for other transports. */
    struct dl_route_state *route;

    /* The body, read from Redis one chunk at a time into |chunk|. */
    struct queue_consumer_body *body;
    dl_chunk_fn chunk_fn;
    bool body_req;  /* a read is in flight */
    bool body_last; /* |chunk| holds the last chunk */
    uint8_t *chunk;
    size_t chunk_cap, chunk_len, chunk_off;

    /* The CMTP-Trace field for a legacy store (NULL: none). */
    char *trace;
    size_t trace_len;

    /* The connection (LMTP, CMTP). */
    struct io_conn *c;
    struct tls_conn *tls;
    bool conn_open;     /* io_connect succeeded and on_close has not run */
    bool closing;       /* close once the output is sent */
    bool send_inflight; /* one io send at a time */
    uint8_t *sbuf;      /* plaintext output being sent (LMTP) */
    size_t sbuf_len;
    struct sockaddr_storage sa;
    socklen_t sa_len;
    char tls_name[CMTP_DOMAIN_MAX + 1]; /* CMTP, SMTP: SNI and the reference identity ("": none,
                                           SMTP only) */

    /* CMTP transport. */
    struct cmtp_client *cli;
    struct cmtp_envelope *env; /* the envelope of this hop */
    bool in_body, end_queued, txn_done;
    size_t frame_left; /* octets of the current BODY frame still to write */
    uint64_t body_sent;

    /* LMTP and SMTP transports (delivery_smtp.c). */
    struct cmtp_smtpc *sc;
    struct cmtp_smtpc_msg msg;
    struct cmtp_body_scan scan;
    bool begun, prescan, body_ended;
    size_t trace_off;
    /* Connection reuse (the idle pool, delivery_smtp.c). */
    bool conn_reused;      /* the connection came from the pool */
    bool conn_no_reuse;    /* take none from the pool: the retry after a stale one */
    bool sm_replied;       /* a reply arrived on the connection during this job */
    bool sm_park;          /* the transaction ended: park the connection after the input */
    bool sm_tainted;       /* a session-level failure: never park */
    bool sm_no_chunking;   /* the connection's client was made with [delivery] chunking = no */
    unsigned conn_uses;    /* transactions on the connection, this one included */
    uint64_t conn_born_ms; /* io_worker_now_ms of the connection's connect */

    /* SMTP transport: set by the router before cmtpd_delivery_smtp_start (with sa, sa_len, peer
     * and tls_name). */
    bool smtp_fallback;            /* PROTOCOL.md 14 fallback (no CMTP-Trace, fallback record) */
    enum cmtp_fallback smtp_level; /* fallback: the level permitted; unused otherwise */
    /* Set by the transport. */
    enum cmtp_smtpc_tls smtp_tls_mode; /* the STARTTLS policy applied */
    bool smtp_verify;                  /* TLS must come with a certificate verified for tls_name */
    bool smtp_tls_wait;                /* STARTTLS got 220: the handshake starts after the send */
    bool smtp_connect_failed;          /* the attempt ended at TCP connect level */
    bool smtp_verified;                /* the certificate verified (after the handshake) */
    bool smtp_recorded;                /* the fallback record was written */
    char smtp_prot[CMTPD_FALLBACK_PROT_MAX]; /* "TLSv1.3/<cipher>" once encrypted, else "" */

    /* Maildir transport. */
    struct maildir_msg *md;
    size_t *md_tr; /* md[k] delivers transport recipient md_tr[k] */
    bool *md_open;
    size_t md_n, md_next;

    /* Life cycle. */
    bool finishing;  /* every recipient decided (or the transport failed) */
    bool completed;  /* handed to queue_consumer_done (or waiting to be, |done_retry|) */
    bool done_retry; /* queue_consumer_done refused: the tick tries again */
    bool renewing;   /* a lease renewal is in flight */
    uint64_t started_ms;
};

struct dl_report;

/* cmtpd_delivery is one worker's delivery engine. */
struct cmtpd_delivery {
    struct cmtpd_worker *w;
    struct queue_consumer *qc;
    uint32_t lease_ms;
    struct io_timer *timer; /* the next periodic tick */
    uint64_t timer_due;     /* monotonic ms of |timer| */
    struct io_timer *kick;  /* a tick asked for now (0 ms: never a kernel timer) */
    bool claiming;          /* a claim is in flight */
    size_t claim_asked;     /* leases the claim in flight asked for */
    bool timer_failed;      /* io_timer_add failed: logged once */
    bool more;              /* the last claim was full: claim again at once */
    bool claim_again;       /* a job ended while a claim was in flight: claim again at once */
    bool enabled_seen;      /* [delivery] enabled as last read: a reload that changes it pauses
                               or resumes delivery (cmtpd.delivery_paused) */
    bool stopping;
    struct dl_job *jobs; /* every live job */
    unsigned n_jobs;
    /* The worker's DNS resolver for routing (daemon/resolve.h); NULL when c-ares could not be
     * set up (DNS routes then fail temporarily). */
    struct cmtpd_resolver *res;
    /* The CMTP client TLS context, made for |tls_cfg| (rebuilt when the worker's config
     * changes); NULL when it could not be built (|tls_err| says why). */
    struct tls_ctx *tls;
    struct cmtpd_cfg *tls_cfg; /* a reference */
    char tls_err[256];
    /* The SMTP client TLS context (STARTTLS: no ALPN, TLS 1.2 allowed, verification reported,
     * not enforced), built at the first SMTP delivery for |smtp_tls_cfg|; NULL before, or when it
     * could not be built (|smtp_tls_err|). */
    struct tls_ctx *smtp_tls;
    struct cmtpd_cfg *smtp_tls_cfg; /* a reference */
    char smtp_tls_err[256];
    uint64_t smtp_tls_gen; /* bumped whenever |smtp_tls| is rebuilt (the pool's key) */
    /* The idle pool of LMTP/SMTP connections (delivery_smtp.c); |pool_n| slots are not FREE. */
    struct dl_pconn pool[DL_POOL_MAX];
    unsigned pool_n;
    struct maildir_ctx md;
    bool md_ok;
    char md_root[CMTP_CONFIG_PATH_MAX + 1]; /* the root |md| was opened on */
    /* Reports: one report item at a time. */
    bool report_busy;         /* a take is in flight, or |report| is being handled */
    struct dl_report *report; /* the item being handled */
    uint64_t report_next_ms;
};

/* cmtpd_delivery_now_ms returns the wall clock in ms since the epoch. */
int64_t cmtpd_delivery_now_ms(void);

/* cmtpd_delivery_derive_txid writes a transaction id of DL_TXID_LEN base32 characters (and a
 * NUL) into |out|: SHA-256 of the |n| parts (each |len[i]| octets, separated) — the same parts
 * give the same id on every node, so a retry after a lost reply reuses it (PROTOCOL.md 10.4). */
void cmtpd_delivery_derive_txid(char out[CMTP_TXID_MAX + 1], const void *const *parts,
                                const size_t *len, size_t n);

/* cmtpd_delivery_why writes a reason (or any short text) into |out| of |len| octets, cut to
 * fit: reasons are bounded (QUEUE_REASON_MAX) and peer text is only ever an argument. */
void cmtpd_delivery_why(char *out, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* cmtpd_delivery_log returns the daemon's logger. */
const struct cmtp_log *cmtpd_delivery_log(const struct cmtpd_delivery *dl);

/* cmtpd_delivery_rcpt_set decides transport recipient |i| of |j| (an index into j->map) unless
 * it is already decided; |reason| is copied (truncated). */
void cmtpd_delivery_rcpt_set(struct dl_job *j, size_t i, enum queue_consumer_result result,
                             const char *reason);

/* cmtpd_delivery_fail_open decides every transport recipient still open (or ACCEPTED) with
 * |result| and |reason|. */
void cmtpd_delivery_fail_open(struct dl_job *j, enum queue_consumer_result result,
                              const char *reason);

/* cmtpd_delivery_job_finish ends |j|'s transport: the connection, if any, is closed once its
 * output is sent, and the completion follows (from the loop). Idempotent. */
void cmtpd_delivery_job_finish(struct dl_job *j);

/* cmtpd_delivery_send starts the next io send of |j|: ciphertext from its TLS chain, or its
 * plaintext |sbuf|. With nothing to send and |closing| set, it closes the connection. */
void cmtpd_delivery_send(struct dl_job *j);

/* cmtpd_delivery_conn_close closes |j|'s connection once its output is sent (bounded by
 * DL_CLOSE_TIMEOUT_MS). */
void cmtpd_delivery_conn_close(struct dl_job *j);

/* cmtpd_delivery_endpoint_sa writes the socket address of |e| into |ss| and returns its
 * length. A host name endpoint must be "localhost" (127.0.0.1): nothing else is resolved. */
socklen_t cmtpd_delivery_endpoint_sa(const struct cmtp_config_endpoint *e,
                                     struct sockaddr_storage *ss);

/* cmtpd_delivery_body_fetch asks for the next body chunk of |j| (opening the body at the
 * first call); |fn| runs when it is there. Returns 0, or a negative errno (nothing will run). */
int cmtpd_delivery_body_fetch(struct dl_job *j, dl_chunk_fn fn);

/* cmtpd_delivery_body_rewind closes |j|'s body reader: the next fetch starts from the first
 * octet again. */
void cmtpd_delivery_body_rewind(struct dl_job *j);

/* cmtpd_delivery_own_trace fills |t| with this server's trace record for |j|'s message (the hop
 * it arrived on, PROTOCOL.md 13.1) with |role|. Returns false when the message did not arrive
 * over CMTP (it was made here, or came in over SMTP: no CMTP hop to record) or when the envelope
 * is full. */
bool cmtpd_delivery_own_trace(const struct dl_job *j, enum cmtp_role role, struct cmtp_trace *t);

/* cmtpd_delivery_trace_field builds j->trace, the one CMTP-Trace field of a final delivery into
 * a legacy store (the records received plus this server's, role final); none when there are no
 * records. Returns 0 or -ENOMEM. */
int cmtpd_delivery_trace_field(struct dl_job *j);

/* The transports. *_start begins the delivery of j->addr[0..n_tr) (the recipients are decided
 * through cmtpd_delivery_rcpt_set and the transport ends with cmtpd_delivery_job_finish);
 * *_cleanup frees what the transport holds (no I/O may follow). The connection callbacks are
 * those of struct io_conn_ops for a job's connection. */
void cmtpd_delivery_maildir_start(struct dl_job *j);
void cmtpd_delivery_maildir_cleanup(struct dl_job *j);

/* LMTP (j->tr DL_TR_LMTP: to [delivery] lmtp, one CMTP-Trace field) and SMTP (DL_TR_SMTP: to
 * j->sa, which the router set) share one implementation on core/smtp_client. SMTP applies
 * STARTTLS: for a fallback job (|smtp_fallback|) as |smtp_level| demands (cmtpd_fallback_policy;
 * no CMTP-Trace field, and every transport recipient's reason becomes a fallback record,
 * cmtpd_fallback_reason), otherwise as [delivery] smtp_starttls and smtp_tls_verify say (one
 * CMTP-Trace field: the internal host is a legacy store hop). A certificate that must verify and
 * does not fails the recipients temporarily. cmtpd_delivery_smtp_cleanup of a completed fallback
 * job (j->completed: dl_complete, when every outcome is decided) writes the one `fallback` log
 * record of the attempt and rewrites the reasons; it is idempotent. */
void cmtpd_delivery_smtp_start(struct dl_job *j);
void cmtpd_delivery_smtp_on_connect(struct dl_job *j, int res);
void cmtpd_delivery_smtp_on_data(struct dl_job *j, const uint8_t *data, size_t len);
void cmtpd_delivery_smtp_pump(struct dl_job *j);
void cmtpd_delivery_smtp_cleanup(struct dl_job *j);

/* cmtpd_delivery_smtp_connect_failed reports whether |j|'s SMTP attempt ended at the TCP
 * connect level (refused, unreachable, timed out: no SMTP reply was seen), so that the router
 * may try the next host of the route. */
bool cmtpd_delivery_smtp_connect_failed(const struct dl_job *j);

/* cmtpd_delivery_smtp_stop releases the SMTP client TLS context of |dl| and what the idle pool
 * still holds (cmtpd_delivery_stop: every connection got on_close before). */
void cmtpd_delivery_smtp_stop(struct cmtpd_delivery *dl);

/* cmtpd_delivery_smtp_stale_retry is called when |j|'s connection closed before its transport
 * finished. When that connection came from the idle pool and the server closed it before its
 * first reply (it was stale: the server had closed it meanwhile), and no recipient is decided,
 * the transport starts again once on a fresh connection and it returns true; otherwise false
 * (the recipients fail as for any lost connection). */
bool cmtpd_delivery_smtp_stale_retry(struct dl_job *j);

/* cmtpd_delivery_pool_of returns the idle-pool slot that is |c|'s context, or NULL (a job's
 * connection, or none of the delivery engine). */
struct dl_pconn *cmtpd_delivery_pool_of(struct io_conn *c);

/* The connection callbacks of a parked connection (struct io_conn_ops contracts): a server that
 * speaks or closes while it is idle takes it out of the pool; the idle timeout QUITs it. */
void cmtpd_delivery_pool_on_data(struct dl_pconn *p, const uint8_t *data, size_t len);
void cmtpd_delivery_pool_on_send_done(struct dl_pconn *p, int res);
void cmtpd_delivery_pool_on_timeout(struct dl_pconn *p);
void cmtpd_delivery_pool_on_close(struct dl_pconn *p);

/* cmtpd_delivery_pool_drain QUITs every idle connection of |dl| (the worker drains). */
void cmtpd_delivery_pool_drain(struct cmtpd_delivery *dl);

void cmtpd_delivery_cmtp_start(struct dl_job *j);
void cmtpd_delivery_cmtp_on_connect(struct dl_job *j, int res);
void cmtpd_delivery_cmtp_on_data(struct dl_job *j, const uint8_t *data, size_t len);
void cmtpd_delivery_cmtp_pump(struct dl_job *j);
void cmtpd_delivery_cmtp_cleanup(struct dl_job *j);

/* cmtpd_delivery_report_poll takes the next report item when none is being handled and turns
 * it into status reports (CMTP) or a DSN (mail that came in over SMTP), queued as new messages
 * on the worker's ingest queue. */
void cmtpd_delivery_report_poll(struct cmtpd_delivery *dl);

/* cmtpd_delivery_report_stop drops the report item being handled (it is handed out again
 * after its lease). */
void cmtpd_delivery_report_stop(struct cmtpd_delivery *dl);

#endif
