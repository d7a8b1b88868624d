/* io/engine.h — the io_uring engine: one worker thread and one ring per core, multishot accept and
 * receive into provided buffers, ordered sends, deadlines, fd watches and timers. Not TLS, not
 * CMTP, not Redis: bytes and events in, callbacks out (design note: docs/IO.md). */
#ifndef CMTP_IO_ENGINE_H
#define CMTP_IO_ENGINE_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Threading rule for the whole module: io_engine_* functions are called by the thread that owns
 * the engine (the daemon's main thread), except io_engine_drain, io_engine_stop,
 * io_engine_drained, io_engine_post_all, io_engine_stats and io_worker_post / io_worker_stats /
 * io_worker_conn_count, which any thread may call at any time between io_engine_start and
 * io_engine_free. Every other function taking a struct io_worker, io_conn, io_watch or io_timer
 * is called only on that worker's own thread: from inside one of the callbacks below, from a
 * function run by io_worker_post, or from the worker hooks. */

/* io_engine is the engine: configuration, listening addresses and the worker threads. */
struct io_engine;
/* io_worker is one worker thread with its own ring, connection slab, buffers and timers. */
struct io_worker;
/* io_conn is one TCP connection, accepted or outbound; owned by the engine, which recycles its
 * slot after on_close returns. */
struct io_conn;
/* io_watch is a readiness watch on a foreign file descriptor (e.g. hiredis's socket). */
struct io_watch;
/* io_timer is a one-shot timer of a worker. */
struct io_timer;

/* Defaults of struct io_engine_config; a zero field takes its default. */
#define IO_RING_ENTRIES_DEFAULT 1024u
#define IO_BUF_COUNT_DEFAULT 512u
#define IO_BUF_SIZE_DEFAULT (16u * 1024u)
#define IO_CONN_MAX_DEFAULT 4096u
#define IO_SEND_QUEUE_MAX_DEFAULT 16u
#define IO_TICK_MS_DEFAULT 100u
#define IO_TIMER_MAX_DEFAULT 256u
#define IO_WATCH_MAX_DEFAULT 64u
#define IO_BACKLOG_DEFAULT 511u

/* Hard limits of struct io_engine_config; io_engine_new refuses larger values. */
#define IO_WORKERS_MAX 256u
#define IO_RING_ENTRIES_MAX 32768u
#define IO_BUF_COUNT_MAX 32768u /* a power of two: the kernel's limit for one buffer ring */
#define IO_BUF_SIZE_MIN 256u
#define IO_BUF_SIZE_MAX (1024u * 1024u)
#define IO_CONN_MAX_MAX (1u << 24) /* per worker: the slot index has 24 bits in user_data */
#define IO_SEND_QUEUE_MAX_MAX 65535u
#define IO_TICK_MS_MAX 10000u
#define IO_TIMER_MAX_MAX 65536u
#define IO_WATCH_MAX_MAX 65536u
#define IO_BACKLOG_MAX 65535u

/* IO_LISTEN_MAX is how many addresses io_engine_listen accepts per engine. */
#define IO_LISTEN_MAX 16u

/* IO_WATCH_READ and IO_WATCH_WRITE are the bits of the |events| a watch callback receives. An error
 * or hang-up is reported as IO_WATCH_READ (and IO_WATCH_WRITE when writing is wanted), so that the
 * reader sees the error or EOF. */
#define IO_WATCH_READ 1u
#define IO_WATCH_WRITE 2u

/* Reasons passed to on_close. Any other value is the negative errno of a socket error
 * (-ECONNRESET, -EPIPE, -ETIMEDOUT...) or of a failed outbound connect. */
#define IO_CLOSE_EOF 0                 /* the peer closed its side cleanly */
#define IO_CLOSE_LOCAL (-ECANCELED)    /* io_conn_close or io_conn_abort */
#define IO_CLOSE_SHUTDOWN (-ESHUTDOWN) /* io_engine_stop */
#define IO_CLOSE_TIMEOUT (-ETIMEDOUT)  /* a deadline passed and on_timeout is NULL */

/* io_engine_config configures an engine; io_engine_new copies it. All-zero is valid (defaults). */
struct io_engine_config {
    unsigned workers;        /* worker threads; 0: one per online CPU */
    unsigned ring_entries;   /* submission queue entries per ring (the CQ gets 4x) */
    unsigned buf_count;      /* provided receive buffers per worker, a power of two */
    unsigned buf_size;       /* octets per receive buffer */
    unsigned conn_max;       /* connections in all, split evenly (rounded up) between workers */
    unsigned send_queue_max; /* queued io_conn_send calls per connection before -EAGAIN */
    unsigned tick_ms;        /* deadline granularity: the timer wheel ticks this often */
    unsigned timer_max;      /* pending io_timer_add timers per worker */
    unsigned watch_max;      /* live io_watch objects per worker */
    unsigned backlog;        /* listen(2) backlog of each worker's listening socket */
    /* log, when set, receives the engine's rare diagnostic lines (ring setup fallbacks, accept
     * failures); |msg| is a NUL-terminated line without newline, valid during the call only. It
     * may be called from any worker thread. NULL: lines go to stderr. */
    void (*log)(void *log_arg, const char *msg);
    void *log_arg;
};

/* io_conn_ops is the table of callbacks the upper layer provides; io_engine_new copies it. Every
 * callback runs on the worker thread that owns the connection. on_data and on_close are required;
 * the others may be NULL. */
struct io_conn_ops {
    /* worker_init runs on each worker thread when it starts, after its ring is set up and before
     * it accepts anything; |arg| is the one given to io_engine_new. It returns the worker's context
     * (io_worker_ctx), or NULL on failure, which makes io_engine_start fail. NULL hook: the
     * context is NULL. */
    void *(*worker_init)(struct io_worker *w, void *arg);
    /* worker_fini runs on the worker thread after every connection of the worker got on_close,
     * with the context worker_init returned. It must release its io_watch and io_timer objects;
     * no callback of the worker runs afterwards. Not called when worker_init failed. */
    void (*worker_fini)(struct io_worker *w, void *ctx);
    /* on_accept is called for a new inbound connection; |listener_tag| is the |tag| given to
     * io_engine_listen. The peer address is io_conn_peer(|c|). Returning < 0 refuses the
     * connection: it is closed at once and on_close is not called for it. NULL: accept all. */
    int (*on_accept)(struct io_conn *c, void *listener_tag);
    /* on_data delivers |len| > 0 received octets. |data| points into a receive buffer that is
     * recycled as soon as the callback returns: copy what you need. EOF and errors go to
     * on_close, never here. Not called while receiving is paused or after io_conn_close. */
    void (*on_data)(struct io_conn *c, const uint8_t *data, size_t len);
    /* on_send_done reports the end of one io_conn_send: |res| is the full length on success or a
     * negative errno (-ECANCELED when the connection closed before it was sent). The buffer is the
     * caller's again. Sends of one connection complete in the order they were queued, all of
     * them before on_close. */
    void (*on_send_done)(struct io_conn *c, void *cookie, int res);
    /* on_timeout is called once when the deadline set by io_conn_set_deadline passed (the
     * deadline is cleared first). NULL: the connection is aborted with IO_CLOSE_TIMEOUT. */
    void (*on_timeout)(struct io_conn *c);
    /* on_close is the last call for a connection: every operation on it completed, every
     * on_send_done was delivered and its fd is closed. |reason| is an IO_CLOSE_* value or a
     * negative errno. The upper layer frees its state here; |c| is invalid after the return.
     * The peer's EOF is treated like data: noticed only while receiving is not paused, after
     * every octet before it was delivered; the engine then flushes the queued sends and closes
     * (IO_CLOSE_EOF). An upper layer that still has a reply to queue pauses receiving until it
     * has. */
    void (*on_close)(struct io_conn *c, int reason);
    /* on_connect reports the end of io_connect: |res| is 0 once connected (receiving starts after
     * the return) or a negative errno (-ETIMEDOUT when its timeout passed, -ECONNREFUSED...); on
     * failure on_close(|c|, |res|) follows. NULL: nothing is reported but on_close. */
    void (*on_connect)(struct io_conn *c, int res);
    /* before_sleep runs on each worker thread once per loop iteration, after the iteration's
     * completions, posts and pending work were handled and before the worker submits and waits
     * for more, with the context worker_init returned: the place to flush what the iteration
     * batched (log lines, say). Not called before worker_init or after worker_fini. NULL: none. */
    void (*before_sleep)(struct io_worker *w, void *ctx);
};

/* io_worker_stats are a worker's counters. Each is written by its worker only and may be read by
 * any thread (io_worker_stats, io_engine_stats); values are monotonic except |conns|. */
struct io_worker_stats {
    uint64_t accepted;  /* inbound connections handed to on_accept */
    uint64_t refused;   /* inbound connections closed at once: conn_max reached or draining */
    uint64_t rejected;  /* inbound connections refused by on_accept */
    uint64_t connects;  /* outbound connections started by io_connect */
    uint64_t closed;    /* on_close calls */
    uint64_t bytes_in;  /* octets received */
    uint64_t bytes_out; /* octets sent */
    uint64_t enobufs;   /* receives that ran out of provided buffers and were re-armed */
    uint64_t conns;     /* connections open now (inbound and outbound) */
};

/* io_engine_config_default fills |cfg| with every default (what a zero field means). */
void io_engine_config_default(struct io_engine_config *cfg);

/* io_engine_new validates |cfg|, copies it and |ops|, and allocates the workers (their threads,
 * rings and buffers come with io_engine_start). |arg| is passed to ops->worker_init. On failure
 * it returns NULL and writes a reason into |err| (|err_len| octets, NUL-terminated) when |err|
 * is not NULL. */
struct io_engine *io_engine_new(const struct io_engine_config *cfg, const struct io_conn_ops *ops,
                                void *arg, char *err, size_t err_len);

/* io_engine_listen opens one SO_REUSEPORT listening socket per worker on |host| (a numeric IPv4
 * or IPv6 address, brackets allowed: "0.0.0.0", "::", "[::1]"; IPv6 sockets are IPV6_V6ONLY) and
 * |port|. With |port| 0 the kernel picks a free port, which every worker's socket then shares.
 * |tag| is passed to on_accept for connections of this address. Call it before io_engine_start.
 * Returns the bound port (> 0) or a negative errno (-EINVAL bad address, -EBUSY already started,
 * -ENOSPC more than IO_LISTEN_MAX addresses, or the socket call's error). */
int io_engine_listen(struct io_engine *e, const char *host, uint16_t port, void *tag);

/* io_engine_start spawns the workers and waits until each has set up its ring and run
 * worker_init. Returns 0, or a negative errno when a worker failed (the workers that started are
 * stopped and joined again; the engine may then only be freed). */
int io_engine_start(struct io_engine *e);

/* io_engine_drain asks every worker to stop accepting: their accepts are cancelled and their
 * listening sockets closed, so new connections are refused by the kernel; established
 * connections go on. Asynchronous: io_engine_drained says when it is done. Any thread. Returns 0
 * or -EINVAL when |e| is NULL. */
int io_engine_drain(struct io_engine *e);

/* io_engine_drained returns whether every worker has closed its listening sockets (after
 * io_engine_drain or io_engine_stop). Any thread. */
bool io_engine_drained(const struct io_engine *e);

/* io_engine_stop asks every worker to exit: listeners are closed, every connection is aborted
 * (on_close with IO_CLOSE_SHUTDOWN, exactly once each), then worker_fini runs and the thread
 * exits. Asynchronous and idempotent; any thread, a worker included. Returns 0. */
int io_engine_stop(struct io_engine *e);

/* io_engine_join waits until every worker thread has exited (after io_engine_stop). Must not be
 * called from a worker thread. No-op when the engine was not started. */
void io_engine_join(struct io_engine *e);

/* io_engine_free stops and joins a running engine, then closes the listening sockets and frees
 * everything. NULL is a no-op. */
void io_engine_free(struct io_engine *e);

/* io_engine_worker_count returns the number of workers. */
unsigned io_engine_worker_count(const struct io_engine *e);

/* io_engine_worker returns worker |i| (0 <= |i| < io_engine_worker_count), or NULL. The pointer is
 * valid until io_engine_free. */
struct io_worker *io_engine_worker(struct io_engine *e, unsigned i);

/* io_engine_post_all runs |fn|(|arg|) once on every worker thread (see io_worker_post). Returns
 * 0, or the first negative errno of io_worker_post (the workers before it got the call). */
int io_engine_post_all(struct io_engine *e, void (*fn)(void *arg), void *arg);

/* io_engine_stats writes the sum of every worker's counters into |out|. Any thread. */
void io_engine_stats(const struct io_engine *e, struct io_worker_stats *out);

/* io_worker_post makes worker |w| run |fn|(|arg|) on its own thread soon (within one loop
 * iteration), in posting order. Any thread. This is the only way for another thread to act on a
 * worker. Returns 0 when |fn| will run, -ENOMEM, or -ESHUTDOWN when the worker is past the point
 * where it runs posted functions (stopping: its connections are closed). */
int io_worker_post(struct io_worker *w, void (*fn)(void *arg), void *arg);

/* io_worker_ctx returns the context worker_init returned for |w| (NULL before it ran). */
void *io_worker_ctx(const struct io_worker *w);

/* io_worker_engine returns the engine of |w|. */
struct io_engine *io_worker_engine(const struct io_worker *w);

/* io_worker_id returns |w|'s index, 0 .. workers - 1. */
unsigned io_worker_id(const struct io_worker *w);

/* io_worker_conn_count returns how many connections |w| has open now. Any thread. */
unsigned io_worker_conn_count(const struct io_worker *w);

/* io_worker_now_ms returns |w|'s cached monotonic clock in milliseconds (CLOCK_MONOTONIC),
 * updated once per loop iteration. */
uint64_t io_worker_now_ms(const struct io_worker *w);

/* io_worker_ring_flags returns the IORING_SETUP_* flags |w|'s ring was created with (after the
 * fallbacks, see docs/IO.md); 0 before the worker started. Any thread once io_engine_start
 * returned. */
unsigned io_worker_ring_flags(const struct io_worker *w);

/* io_worker_stats copies |w|'s counters into |out|. Any thread. */
void io_worker_stats(const struct io_worker *w, struct io_worker_stats *out);

/* io_conn_send queues |len| octets at |buf| for sending on |c|, with |cookie| for on_send_done.
 * The caller must not modify or free |buf| until on_send_done(|c|, |cookie|, ...). Sends of one
 * connection go out in order; short sends are continued internally. Returns 0, -EAGAIN when
 * send_queue_max sends are already queued (backpressure: retry after an on_send_done), -EINVAL
 * when |len| is 0 or above INT_MAX, -ENOTCONN while an outbound connect is in progress, or
 * -EPIPE once the connection is closing. On error on_send_done is not called. */
int io_conn_send(struct io_conn *c, const void *buf, size_t len, void *cookie);

/* io_conn_send_queued returns how many sends of |c| are queued or in flight. */
unsigned io_conn_send_queued(const struct io_conn *c);

/* io_conn_pause_recv stops on_data for |c| until io_conn_resume_recv: the receive is cancelled,
 * and octets that arrive before the cancellation takes effect are held (in their receive buffers)
 * and delivered, in order, after the resume. The kernel's socket buffer then fills and TCP flow
 * control slows the peer. The peer's EOF waits for the resume too. Held buffers are shared with
 * the worker's other connections: do not keep many connections paused for long with data held.
 * Idempotent. */
void io_conn_pause_recv(struct io_conn *c);

/* io_conn_pause_recv_lazy stops on_data for |c| like io_conn_pause_recv, but leaves the receive
 * armed until data actually arrives: the first octets that come during the pause are held and
 * cancel it then. For a short pause during which the peer is expected to wait (a session waiting
 * for its commit): a peer that waits costs no cancellation and no new receive; one that sends
 * pins at most the one burst the kernel delivers before the cancellation (up to its retry limit
 * of buffers). Anything longer or driven by the peer (it does not read our output) must use
 * io_conn_pause_recv, which also turns a lazy pause into a full one. Resumed by
 * io_conn_resume_recv. Idempotent. */
void io_conn_pause_recv_lazy(struct io_conn *c);

/* io_hold is the receive state an upper layer wants for a connection (io_conn_hold_recv). */
enum io_hold {
    IO_HOLD_NONE = 0, /* receive */
    IO_HOLD_LAZY,     /* io_conn_pause_recv_lazy, unless already paused (a full pause stays) */
    IO_HOLD_FULL,     /* io_conn_pause_recv (a lazy pause becomes a full one) */
};

/* io_conn_hold_recv applies |h| to |c|: an upper layer calls it after each event with the state
 * it wants, and nothing happens when that is already the state. */
void io_conn_hold_recv(struct io_conn *c, enum io_hold h);

/* io_conn_resume_recv delivers what was held by io_conn_pause_recv (on a later loop iteration,
 * never from inside this call) and receives again. Idempotent. */
void io_conn_resume_recv(struct io_conn *c);

/* io_conn_set_deadline arranges for on_timeout(|c|) once |ms| milliseconds have passed, never
 * earlier, at most about one tick_ms later. It replaces any previous deadline (and, while an
 * io_connect is in progress, its timeout). Returns 0, or -EPIPE once on_close is under way. */
int io_conn_set_deadline(struct io_conn *c, uint64_t ms);

/* io_conn_clear_deadline removes |c|'s deadline, if any; on_timeout will not be called for it. */
void io_conn_clear_deadline(struct io_conn *c);

/* io_conn_close closes |c| gracefully: on_data stops, the queued sends are flushed, then the fd is
 * closed and on_close(|c|, IO_CLOSE_LOCAL) called (from a later loop iteration). A send error
 * while flushing aborts. Set a deadline to bound the flush. Idempotent. */
void io_conn_close(struct io_conn *c);

/* io_conn_abort closes |c| at once: operations in flight are cancelled, queued sends complete
 * with -ECANCELED, then on_close(|c|, IO_CLOSE_LOCAL) (or the pending close reason). Idempotent;
 * also turns a graceful io_conn_close into an abort. */
void io_conn_abort(struct io_conn *c);

/* io_conn_set_ctx stores the upper layer's pointer |ctx| in |c|. */
void io_conn_set_ctx(struct io_conn *c, void *ctx);

/* io_conn_ctx returns the pointer stored by io_conn_set_ctx (or given to io_connect). */
void *io_conn_ctx(const struct io_conn *c);

/* io_conn_worker returns the worker that owns |c|. */
struct io_worker *io_conn_worker(const struct io_conn *c);

/* io_conn_peer returns the peer's address of |c| (family AF_INET, AF_INET6 or, for io_connect to a
 * Unix socket, AF_UNIX; AF_UNSPEC when the kernel could not tell, e.g. the peer already reset). The
 * storage belongs to the engine and stays valid until on_close(|c|) returns. */
const struct sockaddr_storage *io_conn_peer(struct io_conn *c);

/* io_conn_fd returns |c|'s socket, for setsockopt/getsockopt only: reading, writing or closing it
 * breaks the engine. */
int io_conn_fd(const struct io_conn *c);

/* io_connect starts an outbound TCP connection from worker |w| to |sa| (|len| octets, AF_INET or
 * AF_INET6) on a non-blocking socket. |ctx| becomes io_conn_ctx. When it finishes, on_connect(c,
 * res) is called; a timeout of |timeout_ms| (0: none, beyond the kernel's own) makes it fail with
 * -ETIMEDOUT. After success the connection behaves like an accepted one. On success writes the new
 * connection to |*out| (may be NULL) and returns 0; otherwise a negative errno (-EMFILE when the
 * worker's share of conn_max is used up, -ESHUTDOWN when stopping, -EAFNOSUPPORT, -EINVAL, or the
 * socket call's error) and no callback follows. */
int io_connect(struct io_worker *w, struct io_conn **out, const struct sockaddr *sa, socklen_t len,
               void *ctx, uint64_t timeout_ms);

/* io_watch_new watches |fd| on worker |w| (interest initially empty: see io_watch_set). |cb| is
 * called with |arg| and IO_WATCH_* bits, level-triggered: called again on a later iteration while
 * the condition holds and the interest includes it. The engine never closes |fd|. Returns NULL when
 * watch_max watches are live or the worker is exiting. */
struct io_watch *io_watch_new(struct io_worker *w, int fd, void (*cb)(void *arg, unsigned events),
                              void *arg);

/* io_watch_set replaces the interest of |wt| with |want_read| and |want_write|. Idempotent. */
void io_watch_set(struct io_watch *wt, bool want_read, bool want_write);

/* io_watch_free stops |wt|; its callback is not called again and |wt| is invalid afterwards. Safe
 * from inside its own callback. The slot is reused only after the kernel returned every poll
 * request of it. NULL is a no-op. */
void io_watch_free(struct io_watch *wt);

/* io_timer_add arms a one-shot timer calling |cb|(|arg|) once, |ms| milliseconds from now (0:
 * after the completions of the current loop iteration, from a ready list without a kernel
 * timeout; one added by such a callback runs on the next iteration; never from inside
 * io_timer_add). Returns a handle valid until the callback starts or io_timer_cancel, or NULL
 * when timer_max timers are pending or the worker is exiting. */
struct io_timer *io_timer_add(struct io_worker *w, uint64_t ms, void (*cb)(void *arg), void *arg);

/* io_timer_cancel cancels the pending timer |t| of |w|: its callback will not run. Allowed from
 * any callback of |w|, another timer's included; calling it on a timer that fired is a
 * programmer error (the handle may name a new timer). Returns 0, or -ENOENT when |t| is not
 * pending. */
int io_timer_cancel(struct io_worker *w, struct io_timer *t);

#endif
