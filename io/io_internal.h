/* io/io_internal.h — the engine's private structures, shared by engine.c, io_conn.c and
 * io_watch.c: user_data encoding, worker and connection layout. Not a public interface. */
#ifndef CMTP_IO_INTERNAL_H
#define CMTP_IO_INTERNAL_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "io/engine.h"

/* IO_NONE32 / IO_NONE16 end an index list. */
#define IO_NONE32 UINT32_MAX
#define IO_NONE16 UINT16_MAX

/* IO_BGID is the provided-buffer group of every worker (one group per ring). */
#define IO_BGID 0

/* IO_WHEEL_SLOTS is the number of slots of the deadline wheel (a power of two); the extra list
 * IO_WHEEL_EXPIRED holds deadlines that passed, while their callbacks run. */
#define IO_WHEEL_SLOTS 512u
#define IO_WHEEL_EXPIRED IO_WHEEL_SLOTS

/* io_op is the low byte of every user_data: what the completion is about. */
enum io_op {
    IO_OP_IGNORE = 1, /* cancellations and removals: their results are not needed */
    IO_OP_ACCEPT,     /* index: listener */
    IO_OP_RECV,       /* index: connection slot, high half: generation */
    IO_OP_SEND,
    IO_OP_CONNECT,
    IO_OP_TICK,  /* the wheel's timeout */
    IO_OP_WAKE,  /* the eventfd read */
    IO_OP_WATCH, /* index: watch slot */
    IO_OP_TIMER, /* index: timer slot */
};

/* user_data layout: bits 0-7 op, 8-31 slot index, 32-63 generation of the slot. A completion
 * whose generation differs from the slot's is stale and is dropped. */
static inline uint64_t io_ud(unsigned op, uint32_t idx, uint32_t gen)
{
    return (uint64_t)(op & 0xffu) | ((uint64_t)(idx & 0xffffffu) << 8) | ((uint64_t)gen << 32);
}

static inline unsigned io_ud_op(uint64_t ud)
{
    return (unsigned)(ud & 0xffu);
}

static inline uint32_t io_ud_idx(uint64_t ud)
{
    return (uint32_t)((ud >> 8) & 0xffffffu);
}

static inline uint32_t io_ud_gen(uint64_t ud)
{
    return (uint32_t)(ud >> 32);
}

/* Connection states. */
enum { IO_CONN_FREE = 0, IO_CONN_CONNECTING, IO_CONN_OPEN };

/* Connection flags. */
#define IO_CF_RECV 0x00001u            /* a multishot receive is in flight */
#define IO_CF_RECV_CANCEL 0x00002u     /* ... and its cancellation was submitted */
#define IO_CF_SEND 0x00004u            /* a send is in flight */
#define IO_CF_CONNECT 0x00008u         /* a connect is in flight */
#define IO_CF_CANCEL_ALL 0x00010u      /* abort: everything on the fd was cancelled */
#define IO_CF_PAUSED 0x00020u          /* io_conn_pause_recv */
#define IO_CF_CLOSING 0x00040u         /* graceful close: flush sends, then close */
#define IO_CF_ABORT 0x00080u           /* close at once */
#define IO_CF_PEER_EOF 0x00100u        /* the peer closed its side */
#define IO_CF_PENDING 0x00200u         /* on the worker's pending list */
#define IO_CF_NOBUF 0x00400u           /* the last receive ended with ENOBUFS */
#define IO_CF_NOBUF_WAIT 0x00800u      /* on the nobuf list, waiting for buffers */
#define IO_CF_PEER_SET 0x01000u        /* peers[idx] is filled */
#define IO_CF_NO_CLOSE_CB 0x02000u     /* refused by on_accept: no on_close */
#define IO_CF_CONNECT_TIMEOUT 0x04000u /* the connect's deadline passed */
#define IO_CF_CONNECT_DL 0x08000u      /* the deadline is io_connect's timeout */
#define IO_CF_REASON_SET 0x10000u      /* |reason| is final */
#define IO_CF_FINAL 0x20000u           /* on_close is under way */
#define IO_CF_CONNECT_CANCEL 0x40000u  /* the connect's cancellation was submitted */
#define IO_CF_PAUSE_LAZY 0x80000u      /* io_conn_pause_recv_lazy: cancel only when data comes */

/* io_conn is one connection slot of a worker's slab (kept <= 128 octets: two cache lines). */
struct io_conn {
    struct io_worker *w;
    void *ctx;
    uint64_t deadline_tick; /* wheel tick at which the deadline passes */
    int fd;
    uint32_t gen;     /* bumped when the slot is released */
    uint32_t flags;   /* IO_CF_* */
    uint32_t sq_head; /* send queue: indices into w->sends, IO_NONE32 when empty */
    uint32_t sq_tail;
    uint32_t t_prev; /* deadline wheel links */
    uint32_t t_next;
    uint32_t next;      /* pending list or free list */
    uint32_t nb_next;   /* nobuf list */
    int32_t reason;     /* close reason given to on_close */
    uint16_t t_slot;    /* wheel list, IO_NONE16 when no deadline */
    uint16_t held_head; /* received buffers held while paused (buffer ids) */
    uint16_t held_tail;
    uint16_t sq_count;
    uint8_t state;
};

/* io_send is one queued io_conn_send. */
struct io_send {
    const uint8_t *buf;
    void *cookie;
    uint32_t len;
    uint32_t off; /* octets already sent */
    uint32_t next;
};

/* io_bmeta describes a held receive buffer. */
struct io_bmeta {
    uint32_t len;
    uint16_t next;
};

/* Listener states of a worker. */
enum { IO_LS_NONE = 0, IO_LS_IDLE, IO_LS_ARMED, IO_LS_CANCELING, IO_LS_CLOSED };

/* io_wlistener is a worker's own SO_REUSEPORT socket for one io_engine_listen address. */
struct io_wlistener {
    int fd;
    uint8_t state;
    void *tag;
};

/* Watch flags. */
#define IO_WF_USED 0x01u
#define IO_WF_INFLIGHT 0x02u
#define IO_WF_REMOVING 0x04u
#define IO_WF_DEAD 0x08u
#define IO_WF_IN_CB 0x10u
#define IO_WF_ERROR 0x20u  /* the poll failed: re-armed only by io_watch_set */
#define IO_WF_RESYNC 0x40u /* no SQE was free: arm again at the next tick */

struct io_watch {
    struct io_worker *w;
    void (*cb)(void *arg, unsigned events);
    void *arg;
    int fd;
    uint32_t gen;
    uint32_t next_free;
    uint8_t want;  /* IO_WATCH_* wanted */
    uint8_t armed; /* IO_WATCH_* of the poll in flight */
    uint8_t flags; /* IO_WF_* */
};

/* Timer states. */
/* A timer of 0 ms never reaches the kernel: it waits on the worker's ready list (IO_TS_READY, or
 * IO_TS_READY_CANCELED once cancelled) and runs after the completions of the current iteration. */
enum { IO_TS_FREE = 0, IO_TS_ARMED, IO_TS_CANCELED, IO_TS_READY, IO_TS_READY_CANCELED };

struct io_timer {
    void (*cb)(void *arg);
    void *arg;
    struct __kernel_timespec ts;
    uint32_t gen;
    uint32_t next_free;
    uint8_t state;
};

/* io_post is one io_worker_post call waiting to run. */
struct io_post {
    struct io_post *next;
    void (*fn)(void *arg);
    void *arg;
};

/* Worker phases. */
enum {
    IO_PHASE_RUN = 0,  /* serving */
    IO_PHASE_STOPPING, /* io_engine_stop: closing every connection */
    IO_PHASE_QUIESCE,  /* worker_fini ran: cancelling what is left, then exit */
};

/* Cross-thread requests (io_worker.req). */
#define IO_REQ_DRAIN 0x1u
#define IO_REQ_STOP 0x2u

/* io_wstats are a worker's counters: written by the worker only, read by anyone. */
struct io_wstats {
    _Atomic uint64_t accepted, refused, rejected, connects, closed, bytes_in, bytes_out, enobufs,
        conns;
};

struct io_worker {
    struct io_engine *e;
    unsigned id;
    pthread_t thread;
    bool thread_started;
    bool ring_ok;
    bool inited; /* worker_init succeeded: worker_fini is due */
    _Atomic unsigned ring_flags;
    struct io_uring ring;
    void *ctx;
    uint64_t now_ms;
    unsigned phase;
    unsigned inflight; /* submitted operations whose last completion has not come */
    bool wake_armed;   /* the eventfd read is in flight */
    bool tick_armed;   /* the tick timeout is in flight */

    /* Provided receive buffers. */
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    uint8_t *bufs;
    size_t bufs_bytes;
    unsigned buf_size;
    int buf_mask;
    int br_pending; /* buffers added to the ring since the last advance */
    unsigned bufs_held;
    struct io_bmeta *bmeta;

    /* Connection slab. */
    struct io_conn *conns;
    struct sockaddr_storage *peers;
    uint32_t conn_cap;
    uint32_t conn_live;
    uint32_t conn_free;
    uint32_t pend_head;
    uint32_t nobuf_head;
    struct io_send *sends;
    uint32_t send_free;
    unsigned send_queue_max;

    /* Deadline wheel. */
    uint32_t wheel[IO_WHEEL_SLOTS + 1];
    uint64_t wheel_tick;
    unsigned tick_ms;
    struct __kernel_timespec tick_ts;

    /* Listeners (index as in the engine). */
    struct io_wlistener ls[IO_LISTEN_MAX];
    unsigned nls;
    bool listeners_closing;
    bool accept_retry;
    _Atomic bool drained;

    /* Watches and timers. */
    struct io_watch *watches;
    uint32_t watch_cap;
    uint32_t watch_free;
    bool watch_resync;
    struct io_timer *timers;
    uint32_t timer_cap;
    uint32_t timer_free;
    uint32_t timer_ready_head; /* 0 ms timers due on this iteration, in order (next_free links) */
    uint32_t timer_ready_tail;

    /* Wake-ups from other threads: requests, posts, eventfd. */
    int efd;
    uint64_t efd_buf;
    _Atomic unsigned req;
    pthread_mutex_t post_mu;
    bool post_mu_ok;
    struct io_post *post_head;
    struct io_post *post_tail;
    bool post_closed;

    struct io_wstats st;
};

struct io_engine {
    struct io_engine_config cfg;
    struct io_conn_ops ops;
    void *arg;
    unsigned nworkers;
    struct io_worker *workers;
    unsigned nlisten;
    bool started;
    pthread_mutex_t start_mu;
    pthread_cond_t start_cv;
    unsigned start_reported;
    int start_err;
};

/* io_stat_add adds |v| to a counter of the calling worker (single writer: no locked add). */
static inline void io_stat_add(_Atomic uint64_t *s, uint64_t v)
{
    atomic_store_explicit(s, atomic_load_explicit(s, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

static inline void io_stat_set(_Atomic uint64_t *s, uint64_t v)
{
    atomic_store_explicit(s, v, memory_order_relaxed);
}

static inline uint8_t *io_buf_addr(const struct io_worker *w, unsigned bid)
{
    return w->bufs + (size_t)bid * w->buf_size;
}

/* io_buf_recycle gives receive buffer |bid| back to the kernel (made visible by io_buf_flush). */
static inline void io_buf_recycle(struct io_worker *w, unsigned bid)
{
    io_uring_buf_ring_add(w->br, io_buf_addr(w, bid), w->buf_size, (unsigned short)bid, w->buf_mask,
                          w->br_pending);
    w->br_pending++;
}

/* engine.c */

/* io_sqe returns a free submission entry of |w|'s ring, submitting what is queued when the
 * queue is full; NULL only when even that failed. */
struct io_uring_sqe *io_sqe(struct io_worker *w);

/* io_buf_flush publishes the recycled buffers to the kernel. */
void io_buf_flush(struct io_worker *w);

/* io_log formats a diagnostic line (|fmt| is always a constant of the engine) and hands it to the
 * configured log function. */
void io_log(const struct io_worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* io_clock_ms reads CLOCK_MONOTONIC in milliseconds. */
uint64_t io_clock_ms(void);

/* io_conn.c */

/* io_conn_setup allocates |w|'s connection slab and send pool. Returns 0 or -ENOMEM. */
int io_conn_setup(struct io_worker *w);

/* io_conn_teardown frees what io_conn_setup allocated. */
void io_conn_teardown(struct io_worker *w);

/* io_conn_accepted takes a new inbound socket |fd| of the listener tagged |tag|. */
void io_conn_accepted(struct io_worker *w, int fd, void *tag);

/* Completion handlers of the connection operations. */
void io_conn_cqe_recv(struct io_worker *w, const struct io_uring_cqe *cqe);
void io_conn_cqe_send(struct io_worker *w, const struct io_uring_cqe *cqe);
void io_conn_cqe_connect(struct io_worker *w, const struct io_uring_cqe *cqe);

/* io_conn_run_pending processes the connections whose state changed: held data, re-arming,
 * cancellations, sends, and the final close. */
void io_conn_run_pending(struct io_worker *w);

/* io_conn_wake_nobuf moves the connections waiting for receive buffers to the pending list. */
void io_conn_wake_nobuf(struct io_worker *w);

/* io_conn_wheel_advance fires the deadlines that passed by w->now_ms. */
void io_conn_wheel_advance(struct io_worker *w);

/* io_conn_stop_all aborts every connection of |w| with IO_CLOSE_SHUTDOWN. */
void io_conn_stop_all(struct io_worker *w);

/* io_watch.c */

/* io_watch_setup allocates |w|'s watch and timer tables. Returns 0 or -ENOMEM. */
int io_watch_setup(struct io_worker *w);

/* io_watch_teardown frees them. */
void io_watch_teardown(struct io_worker *w);

/* Completion handlers of watches and timers. */
void io_watch_cqe(struct io_worker *w, const struct io_uring_cqe *cqe);
void io_timer_cqe(struct io_worker *w, const struct io_uring_cqe *cqe);

/* io_timer_run_ready runs the 0 ms timers that were ready when it started (those their callbacks
 * add wait for the next iteration). Returns how many callbacks ran. */
unsigned io_timer_run_ready(struct io_worker *w);

/* io_timer_ready reports whether 0 ms timers wait: the loop must not block then. */
static inline bool io_timer_ready(const struct io_worker *w)
{
    return w->timer_ready_head != IO_NONE32;
}

/* io_watch_quiesce stops every watch and timer of |w| without callbacks (worker exit). */
void io_watch_quiesce(struct io_worker *w);

/* io_watch_resync arms the watches that could not get a submission entry earlier. */
void io_watch_resync(struct io_worker *w);

#endif
