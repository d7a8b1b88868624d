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
    /* commit_ms: END to the durable answer (Redis commit), per-bucket counts for the bounds of
     * CMTPD_COMMIT_BOUNDS_MS plus one above; commit_us_sum their sum in microseconds. */
    _Atomic uint64_t commit_ms[CMTPD_COMMIT_BUCKETS + 1];
    _Atomic uint64_t commit_us_sum;
};

struct cmtpd;

/* cmtpd_cfg is one loaded configuration, reference counted: each worker holds a reference to
 * the one it uses, so a reload swaps in a new one while sessions on the old go on. Immutable. */
struct cmtpd_cfg {
    _Atomic unsigned refs;
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
    bool draining;
    struct cmtpd_counters ctr;
    /* scratch receives decrypted input while a session's on_data runs (one at a time on a
     * worker), so that only sessions with input left over hold a buffer of their own. */
    uint8_t scratch[CMTPD_RBUF_SIZE];
};

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

/* cmtpd_conn_ops returns the engine callbacks that run CMTP sessions for |d|. */
const struct io_conn_ops *cmtpd_conn_ops(void);

/* cmtpd_worker_drain asks every session of |w| to finish at its next command boundary with
 * `421 shutting-down`. Runs on |w|'s thread (posted by the main thread). */
void cmtpd_worker_drain(void *w);

/* cmtpd_queue_loop fills |out| with the queue's event-loop binding on io worker |io|. */
void cmtpd_queue_loop(struct queue_loop *out, struct io_worker *io);

#endif
