/* daemon/cmtpd.h — the daemon's glue: process state, per-worker state and CMTP sessions over the
 * io_uring engine, TLS and the Redis queue. The only module that sees every other one. */
#ifndef CMTP_DAEMON_CMTPD_H
#define CMTP_DAEMON_CMTPD_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "core/config.h"
#include "core/log.h"
#include "admin/admin.h"
#include "admin/metrics.h"
#include "core/server.h"
#include "io/engine.h"
#include "queue/queue.h"
#include "tls/tls.h"

/* CMTPD_VERSION is the daemon's version string. */
#define CMTPD_VERSION "0.1.0"

/* CMTPD_RBUF_SIZE is the size of a session's plaintext input buffer, allocated only while the
 * session has unprocessed input: two full TLS records plus room for a partial command. */
#define CMTPD_RBUF_SIZE (64 * 1024)

/* CMTPD_LOGBUF_SIZE is a worker's log batch: the lines one loop iteration logs go out in one
 * write(2) per CMTPD_LOGBUF_SIZE octets. PIPE_BUF, so that a batch written to a pipe (a journal,
 * a log collector) never interleaves with another worker's. */
#define CMTPD_LOGBUF_SIZE 4096

/* CMTPD_IP_SLOTS is the size of the per-IP connection table: addresses hash into it, so two
 * addresses may share a slot and count together (the limit can only be stricter, never looser). */
#define CMTPD_IP_SLOTS 65536

/* CMTPD_COMMIT_BUCKETS is the number of finite bounds of the commit latency histogram; the
 * bounds, in milliseconds, are CMTPD_COMMIT_BOUNDS_MS. */
#define CMTPD_COMMIT_BUCKETS 13
#define CMTPD_COMMIT_BOUNDS_MS                                                                     \
    {                                                                                              \
        0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000                                  \
    }

/* CMTPD_DRAIN_TIMEOUT_MS bounds a graceful drain; connections still open then are closed. */
#define CMTPD_DRAIN_TIMEOUT_MS 30000

/* cmtpd_counters are one worker's event counters (single writer: the worker; read with relaxed
 * atomics by the admin side). */
struct cmtpd_counters {
    _Atomic uint64_t handshakes;        /* TLS handshakes completed */
    _Atomic uint64_t handshakes_failed; /* handshakes refused or failed */
    _Atomic uint64_t resumed;           /* of the completed, resumed from a ticket */
    _Atomic uint64_t sessions;          /* CMTP sessions started (greeting sent) */
    _Atomic uint64_t accepted;          /* messages accepted (dups included) */
    _Atomic uint64_t dups;              /* accepted as duplicates of a txid */
    _Atomic uint64_t tempfails;         /* END answered 451 */
    _Atomic uint64_t refused;           /* END answered 554 */
    _Atomic uint64_t body_bytes;        /* body octets received */
    _Atomic uint64_t timeouts;          /* connections closed by a deadline */
    _Atomic uint64_t ip_refused;        /* connections refused by conn_per_ip_max */
    _Atomic uint64_t smtp_sessions;     /* SMTP ingress connections accepted */
    _Atomic uint64_t smtp_untrusted;    /* of those: refused, outside trusted_networks */
    _Atomic uint64_t smtp_accepted;     /* SMTP ingress messages stored */
    _Atomic uint64_t smtp_tempfails;    /* SMTP ingress end of data answered 451 */
    _Atomic uint64_t smtp_refused;      /* SMTP ingress end of data answered 554 */
    _Atomic uint64_t smtp_body_bytes;   /* SMTP ingress body octets received */
    /* commit_ms: END to the durable answer (Redis commit), per-bucket counts for the bounds of
     * CMTPD_COMMIT_BOUNDS_MS plus one above; commit_us_sum their sum in microseconds. */
    _Atomic uint64_t commit_ms[CMTPD_COMMIT_BUCKETS + 1];
    _Atomic uint64_t commit_us_sum;
};

/* cmtpd_delivery_counters are one worker's delivery counters (single writer: the worker; read
 * with relaxed atomics by the admin side, see cmtpd_delivery_get_stats). Recipients are counted
 * once per attempt outcome. */
struct cmtpd_delivery_counters {
    _Atomic uint64_t attempts;          /* work items (message, destination) attempted */
    _Atomic uint64_t delivered;         /* recipients accepted downstream */
    _Atomic uint64_t deferred;          /* recipient attempts that failed temporarily */
    _Atomic uint64_t bounced;           /* recipients that failed permanently */
    _Atomic uint64_t relay_refused;     /* of the bounced: refused by the originator's policy */
    _Atomic uint64_t delivered_maildir; /* of the delivered: into the Maildir */
    _Atomic uint64_t delivered_lmtp;    /* of the delivered: over LMTP */
    _Atomic uint64_t delivered_cmtp;    /* of the delivered: over CMTP to a next hop */
    _Atomic uint64_t delivered_smtp;    /* of the delivered: over SMTP (mode smtp, fallback) */
    _Atomic uint64_t connects;          /* outbound connections started */
    _Atomic uint64_t connect_failed;    /* of those: TCP connect or TLS handshake failed */
    _Atomic uint64_t reused;            /* deliveries on a reused (pooled) LMTP/SMTP connection */
    _Atomic uint64_t body_bytes;        /* body octets handed to a transport */
    _Atomic uint64_t reports;           /* status reports and DSNs queued to originators */
    _Atomic uint64_t reports_skipped;   /* report items dropped: about a report (<>) */
    _Atomic uint64_t lost;              /* completions whose lease had been taken over */
    _Atomic uint64_t completion_errors; /* completions Redis did not confirm */
    _Atomic uint64_t inflight;          /* deliveries in progress now (a gauge) */
};

/* cmtpd_delivery_stats is a plain copy of struct cmtpd_delivery_counters. */
struct cmtpd_delivery_stats {
    uint64_t attempts, delivered, deferred, bounced, relay_refused;
    uint64_t delivered_maildir, delivered_lmtp, delivered_cmtp, delivered_smtp;
    uint64_t connects, connect_failed, reused, body_bytes, reports, reports_skipped, lost;
    uint64_t completion_errors, inflight;
};

struct cmtpd;
struct cmtpd_delivery;
struct queue_consumer_cache;

/* cmtpd_cfg is one loaded configuration, reference counted: each worker holds a reference to
 * the one it uses, so a reload swaps in a new one while sessions on the old go on. Immutable. */
struct cmtpd_cfg {
    _Atomic unsigned refs;
    /* smtp_tls is the SMTP ingress's STARTTLS context (the [tls] certificate, no ALPN), or NULL
     * when there is no SMTP listener or starttls is off. A reference, dropped with the last
     * reference to the configuration. */
    struct tls_ctx *smtp_tls;
    struct cmtp_config c;
};

/* cmtpd_cfg_ref takes a reference to |g|; cmtpd_cfg_unref drops one and frees |g| with the
 * last. NULL is a no-op for unref. */
struct cmtpd_cfg *cmtpd_cfg_ref(struct cmtpd_cfg *g);
void cmtpd_cfg_unref(struct cmtpd_cfg *g);

/* cmtpd_worker is the per-worker (per-thread) context: its io worker, its Redis queue, its TLS
 * context reference and its sessions. Touched only by its own thread, except the counters. */
struct cmtpd_worker {
    struct cmtpd *d;
    struct io_worker *io;
    struct queue *q;
    struct tls_ctx *tls;               /* this worker's reference; swapped by a posted reload */
    struct cmtpd_cfg *cfg;             /* this worker's configuration; swapped by a posted reload */
    struct cmtp_server_config srv_cfg; /* limits for new sessions, from |cfg| */
    enum cmtp_log_level log_level;     /* this worker's copy, changed by a post */
    unsigned id;
    struct cmtpd_sess *sessions; /* intrusive list of live sessions */
    unsigned n_sessions;
    struct cmtpd_smtp *smtp_sessions; /* intrusive list of live SMTP ingress sessions */
    bool draining;
    struct cmtpd_counters ctr;
    /* log is the worker's logger (cmtpd_worker_log): it follows the process log's level and,
     * when that log writes to a file descriptor, batches the lines of a loop iteration in
     * |logbuf| (written by cmtpd_worker_log_flush, from the loop's before_sleep hook). */
    struct cmtp_log log;
    size_t log_len;
    char logbuf[CMTPD_LOGBUF_SIZE];
    struct cmtpd_delivery *dl;           /* the delivery engine (daemon/delivery.c), or NULL */
    struct cmtpd_delivery_counters dctr; /* its counters: live as long as the worker */
    /* scratch receives decrypted input while a session's on_data runs (one at a time on a
     * worker), so that only sessions with input left over hold a buffer of their own. */
    uint8_t scratch[CMTPD_RBUF_SIZE];
};

/* cmtpd_worker_log_init sets up |w|->log (|w|->d must be set); cmtpd_worker_log_flush writes
 * what |w|->log batched. Worker thread only. */
void cmtpd_worker_log_init(struct cmtpd_worker *w);
void cmtpd_worker_log_flush(struct cmtpd_worker *w);

/* cmtpd is the process: the immutable configuration, the log, the engine and the workers. */
struct cmtpd {
    struct cmtpd_cfg *cfg; /* the current configuration (main thread's reference) */
    const char *cfg_path;  /* the file it was loaded from, or NULL (defaults) */
    struct cmtp_log log;
    char hostname[CMTP_DOMAIN_MAX + 1];
    char redis_address[PATH_MAX + 16]; /* "unix:/path" or "host:port" */
    char node_id[64];
    pid_t redis_pid; /* the embedded Redis keeper (daemon/keeper.h), or 0 */
    struct tls_ctx *tls;
    struct io_engine *engine;
    unsigned n_workers;
    struct cmtpd_worker *workers[256];
    _Atomic unsigned workers_ready;
    /* ip_conns counts open connections per hashed peer address, shared by the workers (one
     * atomic add at accept and one at close; nothing on the data path). */
    _Atomic uint32_t *ip_conns;
    uint64_t started_ms;      /* CLOCK_REALTIME at start */
    pthread_mutex_t cfg_lock; /* serializes reloads (signal and admin) and readers of |cfg| */
    struct admin_server *admin;
    struct admin_http *metrics_http;
    _Atomic bool draining; /* drain requested (signal or admin); resume clears it */
    /* delivery_paused stops every worker's delivery engine from claiming new work and taking
     * report items ([delivery] enabled = no, `cmtpctl delivery pause`); deliveries in flight
     * finish. Cleared by `cmtpctl delivery resume`. */
    _Atomic bool delivery_paused;
    /* rcache is the record cache the workers' delivery consumers share (queue/consumer.h): an
     * item of a message one worker split starts from the record that worker read, whichever
     * worker claims it. NULL: each consumer keeps its own. Freed after the workers. */
    struct queue_consumer_cache *rcache;
};

/* cmtpd_reload loads the configuration and certificates again (see cmtpd_main.c). Takes
 * |d|->cfg_lock. Returns 0, or -EINVAL with the reason in |err| (the running ones are kept). */
int cmtpd_reload(struct cmtpd *d, char *err, size_t errlen);

/* cmtpd_admin_start opens the admin socket ([admin] socket) and, when configured, the metrics
 * HTTP listener. Returns 0 or -errno with the reason in |err|. */
int cmtpd_admin_start(struct cmtpd *d, char *err, size_t errlen);

/* cmtpd_admin_stop closes them. */
void cmtpd_admin_stop(struct cmtpd *d);

/* cmtpd_worker_resume lets |w| accept new sessions again after a drain (runs on |w|). */
void cmtpd_worker_resume(void *w);

/* cmtpd_worker_set_cfg makes |w| use |cfg| and |tls| for new sessions (references taken) and
 * drops its old ones. Runs on |w|'s thread. */
void cmtpd_worker_set_cfg(struct cmtpd_worker *w, struct cmtpd_cfg *cfg, struct tls_ctx *tls);

struct queue_consumer;

/* cmtpd_conn_kind is the first member of every io_conn context the daemon creates, so that the
 * engine's one callback table (session.c) can hand each connection to its owner. */
enum cmtpd_conn_kind {
    CMTPD_CONN_CMTP_SERVER = 0, /* an inbound CMTP session (session.c) */
    CMTPD_CONN_DELIVERY,        /* an outbound delivery connection (delivery.c) */
    CMTPD_CONN_SMTP_INGRESS,    /* an inbound SMTP ingress session (smtp_ingress.c) */
};

/* The listener tag (io_engine_listen) of an [smtp_ingress] listener; [server] listeners have
 * NULL. */
#define CMTPD_LISTENER_SMTP ((void *)(uintptr_t)CMTPD_CONN_SMTP_INGRESS)

struct cmtpd_smtp;

/* cmtpd_smtp_on_accept starts an SMTP ingress session on |c| (an [smtp_ingress] listener's
 * connection): the greeting, or `554 5.7.1` and close for a peer outside trusted_networks.
 * Returns 0, or a negative errno to refuse the connection. The other callbacks are those of
 * struct io_conn_ops for connections whose context starts with CMTPD_CONN_SMTP_INGRESS. */
int cmtpd_smtp_on_accept(struct io_conn *c);
void cmtpd_smtp_on_data(struct io_conn *c, const uint8_t *data, size_t len);
void cmtpd_smtp_on_send_done(struct io_conn *c, void *cookie, int res);
void cmtpd_smtp_on_timeout(struct io_conn *c);
void cmtpd_smtp_on_close(struct io_conn *c, int reason);

/* cmtpd_smtp_drain asks every SMTP ingress session of |w| to close with `421 4.3.2` at its next
 * command boundary. Runs on |w|'s thread. */
void cmtpd_smtp_drain(struct cmtpd_worker *w);

/* The delivery engine's connection callbacks, called by session.c's table for connections whose
 * context starts with CMTPD_CONN_DELIVERY (same contracts as struct io_conn_ops). */
void cmtpd_delivery_on_connect(struct io_conn *c, int res);
void cmtpd_delivery_on_data(struct io_conn *c, const uint8_t *data, size_t len);
void cmtpd_delivery_on_send_done(struct io_conn *c, void *cookie, int res);
void cmtpd_delivery_on_timeout(struct io_conn *c);
void cmtpd_delivery_on_close(struct io_conn *c, int reason);

/* cmtpd_delivery_start creates |w|'s delivery engine (its queue consumer, the transports) and
 * starts claiming due messages. Runs on |w|'s thread from worker_init. Returns 0 or -errno with
 * the reason in |err|. */
int cmtpd_delivery_start(struct cmtpd_worker *w, char *err, size_t errlen);

/* cmtpd_delivery_stop stops claiming, abandons deliveries in flight (their leases expire and
 * another node or a restart takes them over) and frees the engine. Runs on |w|'s thread. */
void cmtpd_delivery_stop(struct cmtpd_worker *w);

/* cmtpd_delivery_get_stats copies |w|'s delivery counters into |out| (relaxed loads). Any
 * thread, for as long as |w| exists. */
void cmtpd_delivery_get_stats(const struct cmtpd_worker *w, struct cmtpd_delivery_stats *out);

/* cmtpd_delivery_consumer returns |w|'s queue consumer (for the admin queue commands, called on
 * |w|'s thread), or NULL. */
struct queue_consumer *cmtpd_delivery_consumer(struct cmtpd_worker *w);

/* cmtpd_conn_ops returns the engine callbacks that run CMTP sessions for |d|. */
const struct io_conn_ops *cmtpd_conn_ops(void);

/* cmtpd_worker_drain asks every session of |w| to finish at its next command boundary with
 * `421 shutting-down`. Runs on |w|'s thread (posted by the main thread). */
void cmtpd_worker_drain(void *w);

/* cmtpd_peer_text writes the address of |ss| (IPv4 or IPv6) as text into |out| (|len| octets;
 * "" for another family). */
void cmtpd_peer_text(const struct sockaddr_storage *ss, char *out, size_t len);

/* cmtpd_queue_loop fills |out| with the queue's event-loop binding on io worker |io|. */
void cmtpd_queue_loop(struct queue_loop *out, struct io_worker *io);

#endif
