/* admin/admin.h — the admin socket: a Unix stream socket served on its own thread, peer
 * credentials checked on every connection, one JSON line per request; the daemon plugs in
 * through a table of callbacks (struct admin_ops). Plus admin_wait, the fan-out/gather helper
 * for callbacks that ask worker threads. Not the daemon's logic, and no engine, TLS or Redis
 * headers: protocol and reply shapes are in docs/ADMIN.md. */
#ifndef CMTP_ADMIN_ADMIN_H
#define CMTP_ADMIN_ADMIN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "admin/buf.h"
#include "admin/request.h"
#include "core/log.h"

/* ADMIN_PROTOCOL_VERSION is the version of the admin line protocol (`version` reports it). */
#define ADMIN_PROTOCOL_VERSION 1

/* Defaults and hard limits of struct admin_config (a zero field takes the default). */
#define ADMIN_MODE_DEFAULT 0600u
#define ADMIN_CLIENTS_MAX_DEFAULT 16u
#define ADMIN_CLIENTS_MAX_MAX 256u
#define ADMIN_IDLE_TIMEOUT_MS_DEFAULT 30000u
#define ADMIN_IDLE_TIMEOUT_MS_MAX 3600000u
/* ADMIN_REPLY_MAX is the largest reply line, in octets; a larger one is replaced by an error. */
#define ADMIN_REPLY_MAX (16u * 1024u * 1024u)
/* ADMIN_METRICS_MAX is the largest Prometheus text a metrics callback may produce. */
#define ADMIN_METRICS_MAX (8u * 1024u * 1024u)
/* ADMIN_OP_ERR_MAX is the size of the error buffer handed to a callback. */
#define ADMIN_OP_ERR_MAX 256

/* ADMIN_REFUSED_REPLY is the line sent to a peer whose credentials are refused, before closing. */
#define ADMIN_REFUSED_REPLY "{\"ok\":false,\"error\":\"permission denied\"}\n"
/* ADMIN_BUSY_REPLY is the line sent to a peer when clients_max clients are connected. */
#define ADMIN_BUSY_REPLY "{\"ok\":false,\"error\":\"too many clients\"}\n"

/* admin_config configures an admin server; admin_server_new copies what it needs. */
struct admin_config {
    const char *path; /* socket path, 1-107 octets (required) */
    /* mode: permission bits of the socket file, a subset of 0666 that includes 0600; 0 means
     * 0600. When it includes group bits (0060), members of |group| may connect too. */
    unsigned mode;
    /* group: the socket's group and the group whose members are allowed when |mode| has group
     * bits; NULL or "": the daemon's effective group. */
    const char *group;
    /* owner: a user name to own the socket file (so that a daemon that drops to that user can
     * still be reached by it); NULL or "": keep the creating user. */
    const char *owner;
    const char *version;      /* reported by `version` and `status`; NULL: "unknown" */
    unsigned clients_max;     /* clients at once, 1-ADMIN_CLIENTS_MAX_MAX */
    unsigned idle_timeout_ms; /* a client idle this long is closed */
    uint64_t started_ms;      /* the daemon's start (CLOCK_REALTIME ms) for uptime; 0: now */
    /* log receives refusals, errors and an audit line per mutating command; NULL: silent. The
     * logger must stay valid until admin_server_free. */
    const struct cmtp_log *log;
};

/* admin_op_fn is the shape of every command callback. It runs on the admin thread (one call at
 * a time per server) and may block, e.g. while it asks the workers (see admin_wait); other
 * admin clients wait meanwhile. |req| is the parsed request (its arguments: id, body, filters,
 * level). On success it adds the reply's fields to the empty object |out| (the keys "ok" and
 * "error" are reserved and ignored) and returns 0; the server checks the documented shape
 * (docs/ADMIN.md) and sends {"ok":true, ...fields}. On failure it writes a one-line reason into
 * |err| (|errlen| octets; control characters are replaced on output) and returns a negative
 * errno; an empty |err| is replaced by a text for the errno (-ENOENT "not found", -ETIMEDOUT
 * "timed out", -ENOTSUP "not supported", -EBUSY "busy", ...). |out| is freed by the server. */
typedef int (*admin_op_fn)(void *arg, const struct admin_request *req, json_t *out, char *err,
                           size_t errlen);

/* admin_metrics_fn writes every metric in the Prometheus text format into |out| (capped at
 * ADMIN_METRICS_MAX; see admin/metrics.h for the writer) and returns 0, or fails like an
 * admin_op_fn. It may be called concurrently by the admin thread and the HTTP listener's
 * thread. */
typedef int (*admin_metrics_fn)(void *arg, struct admin_buf *out, char *err, size_t errlen);

/* admin_ops is the daemon's table of callbacks, one per command; admin_server_new copies it. A
 * NULL member makes its command answer {"ok":false,"error":"not supported"} (except status,
 * which then reports only what the server knows). `help` and `version` are answered by the
 * server itself. Required fields of each reply, checked by the server: docs/ADMIN.md. */
struct admin_ops {
    admin_op_fn status;          /* workers (int), listeners (array), redis (object); the server
                                    adds version, pid and uptime_s */
    admin_op_fn stats;           /* workers (array of objects), total (object) */
    admin_op_fn queue_summary;   /* destinations (array) */
    admin_op_fn queue_list;      /* messages (array); filters in req->dest/state/limit */
    admin_op_fn queue_show;      /* message (object); req->id, req->body */
    admin_op_fn queue_delete;    /* affected (int); req->id */
    admin_op_fn queue_retry;     /* affected (int); req->id, or req->all */
    admin_op_fn queue_hold;      /* affected (int); req->id */
    admin_op_fn queue_release;   /* affected (int); req->id */
    admin_op_fn flush;           /* affected (int) */
    admin_op_fn drain;           /* no required field */
    admin_op_fn resume;          /* no required field */
    admin_op_fn reload;          /* no required field */
    admin_op_fn log_level;       /* req->level; the server adds level (string) */
    admin_op_fn delivery_pause;  /* delivery (string: "paused") */
    admin_op_fn delivery_resume; /* delivery (string: "running") */
    admin_metrics_fn metrics;    /* Prometheus text; the server wraps it as {"text": ...} */
};

/* admin_server is a running admin socket. */
struct admin_server;

/* admin_server_new creates the socket at |cfg|->path and starts serving it on a new thread.
 * The socket is created owner-only (0600) and then given its group and mode, so it is never
 * wider than configured. An existing file at the path is replaced only when it is a socket that
 * nobody answers (a stale one); otherwise this fails (-EEXIST not a socket, -EADDRINUSE a live
 * daemon). Every connection's peer credentials (SO_PEERCRED) are checked: uid 0, the daemon's
 * effective uid and, when the mode has group bits, members of the group (primary or
 * supplementary, SO_PEERGROUPS) are served; anyone else gets ADMIN_REFUSED_REPLY and is closed.
 * |ops| is copied; |ops_arg| is passed to every callback. Returns NULL with a reason in |err|
 * (|errlen| octets) on failure. */
struct admin_server *admin_server_new(const struct admin_config *cfg, const struct admin_ops *ops,
                                      void *ops_arg, char *err, size_t errlen);

/* admin_server_free stops the thread (connected clients are closed), joins it, removes the
 * socket file if it is still the one it created, and frees |s|. No callback runs after it
 * returns. NULL is a no-op. */
void admin_server_free(struct admin_server *s);

/* admin_server_handle_line runs one request line (|len| octets, no '\n') through the parser and
 * the callbacks exactly as the socket does, and writes the reply line (with its '\n') into
 * |out|. |peer_uid| is only logged. For tests, and for a daemon that runs a command from
 * elsewhere (e.g. reload on SIGHUP); it may run concurrently with the server's thread only if
 * the callbacks allow that. Returns 0, or -ENOMEM / -ENOSPC when |out| failed. */
int admin_server_handle_line(struct admin_server *s, const char *line, size_t len,
                             unsigned long peer_uid, struct admin_buf *out);

/* admin_wait is a fan-out/gather rendezvous for a callback that asks |count| worker threads
 * (e.g. with io_worker_post) and waits for their answers with a timeout. It is reference
 * counted so that a worker answering after the waiter gave up never touches freed memory: the
 * waiter holds one reference and each of the |count| tasks one. Each task owns slot i
 * (admin_wait_slot) until it calls admin_wait_done(w, i). */
struct admin_wait;

/* admin_wait_new allocates a rendezvous for |count| (1-65536) tasks with |count| zeroed slots of
 * |slot_size| octets. |slot_free|, when not NULL, is called on each slot when the rendezvous is
 * finally freed (to release what a late task left there). Returns NULL when out of memory or
 * for a bad count. */
struct admin_wait *admin_wait_new(unsigned count, size_t slot_size, void (*slot_free)(void *slot));

/* admin_wait_slot returns slot |i| (< count). The task for |i| may write it until it calls
 * admin_wait_done; the waiter may read it once admin_wait_is_done(w, i). */
void *admin_wait_slot(struct admin_wait *w, unsigned i);

/* admin_wait_done marks task |i| finished (any thread) and drops its reference: |w| may be freed
 * inside this call, so the task must not touch |w| or its slot afterwards. Calling it twice for
 * the same |i| is a programmer error (ignored). A task that cannot be started (the post failed)
 * is ended by the poster with this call. */
void admin_wait_done(struct admin_wait *w, unsigned i);

/* admin_wait_wait_ms blocks until every task is done or |timeout_ms| passed (CLOCK_MONOTONIC).
 * Returns 0 when all are done, -ETIMEDOUT otherwise (then check admin_wait_is_done per slot). */
int admin_wait_wait_ms(struct admin_wait *w, unsigned timeout_ms);

/* admin_wait_is_done reports whether task |i| called admin_wait_done. */
bool admin_wait_is_done(struct admin_wait *w, unsigned i);

/* admin_wait_release drops the waiter's reference (the last one frees |w| and its slots). Call
 * it exactly once, after the waiting and reading. NULL is a no-op. */
void admin_wait_release(struct admin_wait *w);

#endif
