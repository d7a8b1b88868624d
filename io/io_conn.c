/* io/io_conn.c — connections of the io_uring engine: the per-worker slab, multishot receive with
 * held buffers for pause/resume, ordered sends, graceful and abortive close, outbound connect and
 * the deadline wheel. Not the worker loop (engine.c) and no protocol. */
#include "io/io_internal.h"

#include <limits.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/un.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert(sizeof(struct io_conn) <= 128, "struct io_conn must fit two cache lines");

static inline uint32_t conn_idx(const struct io_worker *w, const struct io_conn *c)
{
    return (uint32_t)(c - w->conns);
}

int io_conn_setup(struct io_worker *w)
{
    size_t nsend = (size_t)w->conn_cap * w->send_queue_max;
    w->conns = calloc(w->conn_cap, sizeof(*w->conns));
    w->peers = calloc(w->conn_cap, sizeof(*w->peers));
    w->sends = calloc(nsend, sizeof(*w->sends));
    if (w->conns == NULL || w->peers == NULL || w->sends == NULL)
        return -ENOMEM;
    w->conn_free = IO_NONE32;
    for (uint32_t i = w->conn_cap; i-- > 0;) {
        struct io_conn *c = &w->conns[i];
        c->w = w;
        c->fd = -1;
        c->next = w->conn_free;
        w->conn_free = i;
    }
    w->send_free = IO_NONE32;
    for (size_t i = nsend; i-- > 0;) {
        w->sends[i].next = w->send_free;
        w->send_free = (uint32_t)i;
    }
    return 0;
}

void io_conn_teardown(struct io_worker *w)
{
    free(w->conns);
    w->conns = NULL;
    free(w->peers);
    w->peers = NULL;
    free(w->sends);
    w->sends = NULL;
}

/* ---- slab ---- */

static struct io_conn *conn_alloc(struct io_worker *w)
{
    uint32_t i = w->conn_free;
    struct io_conn *c;
    if (i == IO_NONE32)
        return NULL;
    c = &w->conns[i];
    w->conn_free = c->next;
    c->ctx = NULL;
    c->deadline_tick = 0;
    c->fd = -1;
    c->flags = 0;
    c->sq_head = c->sq_tail = IO_NONE32;
    c->t_prev = c->t_next = IO_NONE32;
    c->next = c->nb_next = IO_NONE32;
    c->reason = 0;
    c->t_slot = IO_NONE16;
    c->held_head = c->held_tail = IO_NONE16;
    c->sq_count = 0;
    w->conn_live++;
    io_stat_set(&w->st.conns, w->conn_live);
    return c;
}

/* conn_release returns the slot; one still on the nobuf list stays out of the free list until
 * io_conn_wake_nobuf unlinks it (the list link must not be reused before). */
static void conn_release(struct io_worker *w, struct io_conn *c)
{
    c->gen++;
    c->state = IO_CONN_FREE;
    c->ctx = NULL;
    c->fd = -1;
    if (c->flags & IO_CF_NOBUF_WAIT) {
        c->flags = IO_CF_NOBUF_WAIT;
        return;
    }
    c->flags = 0;
    c->next = w->conn_free;
    w->conn_free = conn_idx(w, c);
}

static struct io_conn *conn_get(struct io_worker *w, uint64_t ud)
{
    uint32_t i = io_ud_idx(ud);
    struct io_conn *c;
    if (i >= w->conn_cap)
        return NULL;
    c = &w->conns[i];
    if (c->state == IO_CONN_FREE || c->gen != io_ud_gen(ud))
        return NULL;
    return c;
}

/* conn_pend queues |c| for io_conn_run_pending (once). */
static void conn_pend(struct io_worker *w, struct io_conn *c)
{
    if ((c->flags & (IO_CF_PENDING | IO_CF_FINAL)) || c->state == IO_CONN_FREE)
        return;
    c->flags |= IO_CF_PENDING;
    c->next = w->pend_head;
    w->pend_head = conn_idx(w, c);
}

static void conn_set_reason(struct io_conn *c, int reason)
{
    if (!(c->flags & IO_CF_REASON_SET)) {
        c->reason = reason;
        c->flags |= IO_CF_REASON_SET;
    }
}

static void conn_fail(struct io_worker *w, struct io_conn *c, int reason)
{
    conn_set_reason(c, reason);
    c->flags |= IO_CF_ABORT;
    conn_pend(w, c);
}

/* ---- deadline wheel ---- */

static void wheel_unlink(struct io_worker *w, struct io_conn *c)
{
    if (c->t_slot == IO_NONE16)
        return;
    if (c->t_prev != IO_NONE32)
        w->conns[c->t_prev].t_next = c->t_next;
    else
        w->wheel[c->t_slot] = c->t_next;
    if (c->t_next != IO_NONE32)
        w->conns[c->t_next].t_prev = c->t_prev;
    c->t_slot = IO_NONE16;
    c->t_prev = c->t_next = IO_NONE32;
}

static void wheel_link(struct io_worker *w, struct io_conn *c, unsigned slot)
{
    uint32_t i = conn_idx(w, c);
    c->t_slot = (uint16_t)slot;
    c->t_prev = IO_NONE32;
    c->t_next = w->wheel[slot];
    if (c->t_next != IO_NONE32)
        w->conns[c->t_next].t_prev = i;
    w->wheel[slot] = i;
}

int io_conn_set_deadline(struct io_conn *c, uint64_t ms)
{
    struct io_worker *w = c->w;
    uint64_t now, due, tick;
    if (c->state == IO_CONN_FREE || (c->flags & IO_CF_FINAL))
        return -EPIPE;
    wheel_unlink(w, c);
    c->flags &= ~IO_CF_CONNECT_DL;
    /* A fresh clock, not the loop's cached one, so that the deadline is never early. */
    now = io_clock_ms();
    if (now < w->now_ms)
        now = w->now_ms;
    if (ms > (UINT64_MAX >> 2))
        ms = UINT64_MAX >> 2;
    due = now + ms;
    tick = due / w->tick_ms + (due % w->tick_ms != 0);
    if (tick <= w->wheel_tick)
        tick = w->wheel_tick + 1;
    c->deadline_tick = tick;
    wheel_link(w, c, (unsigned)(tick & (IO_WHEEL_SLOTS - 1)));
    return 0;
}

void io_conn_clear_deadline(struct io_conn *c)
{
    wheel_unlink(c->w, c);
    c->flags &= ~IO_CF_CONNECT_DL;
}

static void conn_expired(struct io_worker *w, struct io_conn *c)
{
    if (c->flags & IO_CF_NO_CLOSE_CB)
        return; /* refused by on_accept: the upper layer is done with it */
    if (c->state == IO_CONN_CONNECTING) {
        c->flags |= IO_CF_CONNECT_TIMEOUT;
        if ((c->flags & IO_CF_CONNECT) && !(c->flags & (IO_CF_CONNECT_CANCEL | IO_CF_CANCEL_ALL))) {
            struct io_uring_sqe *sqe = io_sqe(w);
            if (sqe == NULL) {
                io_conn_set_deadline(c, w->tick_ms); /* try again next tick */
                return;
            }
            io_uring_prep_cancel64(sqe, io_ud(IO_OP_CONNECT, conn_idx(w, c), c->gen), 0);
            io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0, 0));
            sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
            c->flags |= IO_CF_CONNECT_CANCEL;
        }
        return;
    }
    if (w->e->ops.on_timeout != NULL)
        w->e->ops.on_timeout(c);
    else
        conn_fail(w, c, IO_CLOSE_TIMEOUT);
}

void io_conn_wheel_advance(struct io_worker *w)
{
    uint64_t cur = w->now_ms / w->tick_ms, n, t;
    uint32_t i;
    if (cur <= w->wheel_tick)
        return;
    n = cur - w->wheel_tick;
    if (n > IO_WHEEL_SLOTS)
        n = IO_WHEEL_SLOTS;
    for (t = w->wheel_tick + 1; t <= w->wheel_tick + n; t++) {
        unsigned slot = (unsigned)(t & (IO_WHEEL_SLOTS - 1));
        i = w->wheel[slot];
        while (i != IO_NONE32) {
            struct io_conn *c = &w->conns[i];
            i = c->t_next;
            if (c->deadline_tick <= cur) {
                wheel_unlink(w, c);
                wheel_link(w, c, IO_WHEEL_EXPIRED);
            }
        }
    }
    w->wheel_tick = cur;
    /* Callbacks may clear or set any deadline, this list's included: pop one at a time. */
    while ((i = w->wheel[IO_WHEEL_EXPIRED]) != IO_NONE32) {
        struct io_conn *c = &w->conns[i];
        wheel_unlink(w, c);
        conn_expired(w, c);
    }
}

/* ---- receive ---- */

static void conn_hold(struct io_worker *w, struct io_conn *c, unsigned bid, uint32_t len)
{
    w->bmeta[bid].len = len;
    w->bmeta[bid].next = IO_NONE16;
    if (c->held_tail == IO_NONE16)
        c->held_head = (uint16_t)bid;
    else
        w->bmeta[c->held_tail].next = (uint16_t)bid;
    c->held_tail = (uint16_t)bid;
    w->bufs_held++;
}

static void conn_drop_held(struct io_worker *w, struct io_conn *c)
{
    while (c->held_head != IO_NONE16) {
        unsigned bid = c->held_head;
        c->held_head = w->bmeta[bid].next;
        w->bufs_held--;
        io_buf_recycle(w, bid);
    }
    c->held_tail = IO_NONE16;
}

static void arm_recv(struct io_worker *w, struct io_conn *c)
{
    struct io_uring_sqe *sqe = io_sqe(w);
    if (sqe == NULL) {
        conn_pend(w, c);
        return;
    }
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = IO_BGID;
    io_uring_sqe_set_data64(sqe, io_ud(IO_OP_RECV, conn_idx(w, c), c->gen));
    c->flags |= IO_CF_RECV;
    w->inflight++;
}

static void cancel_recv(struct io_worker *w, struct io_conn *c)
{
    struct io_uring_sqe *sqe = io_sqe(w);
    if (sqe == NULL) {
        conn_pend(w, c);
        return;
    }
    io_uring_prep_cancel64(sqe, io_ud(IO_OP_RECV, conn_idx(w, c), c->gen), 0);
    io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0, 0));
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    c->flags |= IO_CF_RECV_CANCEL;
}

/* recv_failed is the cold path of a receive that ended with an error. */
static __attribute__((cold, noinline)) void recv_failed(struct io_worker *w, struct io_conn *c,
                                                        int res)
{
    switch (res) {
    case -ENOBUFS:
        /* The buffer ring ran dry. Re-arm at once the first time (the buffers of this batch are
         * back by then); after a second one in a row with no data between, wait until buffers
         * are recycled or the next tick, so that an empty ring cannot make the worker spin. */
        io_stat_add(&w->st.enobufs, 1);
        if (!(c->flags & IO_CF_NOBUF)) {
            c->flags |= IO_CF_NOBUF;
        } else if (!(c->flags & IO_CF_NOBUF_WAIT)) {
            c->flags |= IO_CF_NOBUF_WAIT;
            c->nb_next = w->nobuf_head;
            w->nobuf_head = conn_idx(w, c);
        }
        break;
    case -ECANCELED: /* our pause or close */
    case -EINTR:
    case -EAGAIN:
        break;
    default: /* -ECONNRESET, -ETIMEDOUT, -EHOSTUNREACH... */
        conn_fail(w, c, res);
        break;
    }
}

void io_conn_cqe_recv(struct io_worker *w, const struct io_uring_cqe *cqe)
{
    struct io_conn *c = conn_get(w, cqe->user_data);
    int res = cqe->res;
    unsigned fl = cqe->flags;
    unsigned bid = fl >> IORING_CQE_BUFFER_SHIFT;

    if (!(fl & IORING_CQE_F_MORE))
        w->inflight--;
    if (__builtin_expect(c == NULL, 0)) {
        if (fl & IORING_CQE_F_BUFFER)
            io_buf_recycle(w, bid);
        return;
    }
    if (!(fl & IORING_CQE_F_MORE)) {
        c->flags &= ~(IO_CF_RECV | IO_CF_RECV_CANCEL);
        conn_pend(w, c);
    }
    if (__builtin_expect(res > 0 && (fl & IORING_CQE_F_BUFFER), 1)) {
        io_stat_add(&w->st.bytes_in, (uint64_t)res);
        c->flags &= ~IO_CF_NOBUF;
        if (c->flags & (IO_CF_CLOSING | IO_CF_ABORT)) {
            io_buf_recycle(w, bid);
        } else if ((c->flags & IO_CF_PAUSED) || c->held_head != IO_NONE16) {
            conn_hold(w, c, bid, (uint32_t)res);
            conn_pend(w, c);
        } else {
            w->e->ops.on_data(c, io_buf_addr(w, bid), (size_t)res);
            io_buf_recycle(w, bid);
        }
        return;
    }
    if (fl & IORING_CQE_F_BUFFER)
        io_buf_recycle(w, bid);
    if (res == 0) {
        c->flags |= IO_CF_PEER_EOF;
        conn_pend(w, c);
        return;
    }
    recv_failed(w, c, res > 0 ? -EIO : res);
}

void io_conn_wake_nobuf(struct io_worker *w)
{
    uint32_t i = w->nobuf_head;
    w->nobuf_head = IO_NONE32;
    while (i != IO_NONE32) {
        struct io_conn *c = &w->conns[i];
        uint32_t next = c->nb_next;
        c->flags &= ~IO_CF_NOBUF_WAIT;
        c->nb_next = IO_NONE32;
        if (c->state == IO_CONN_FREE) {
            c->flags = 0;
            c->next = w->conn_free;
            w->conn_free = i;
        } else {
            conn_pend(w, c);
        }
        i = next;
    }
}

/* ---- send ---- */

static void submit_send(struct io_worker *w, struct io_conn *c)
{
    struct io_send *s = &w->sends[c->sq_head];
    struct io_uring_sqe *sqe = io_sqe(w);
    if (sqe == NULL) {
        conn_pend(w, c);
        return;
    }
    io_uring_prep_send(sqe, c->fd, s->buf + s->off, s->len - s->off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, io_ud(IO_OP_SEND, conn_idx(w, c), c->gen));
    c->flags |= IO_CF_SEND;
    w->inflight++;
}

/* send_pop completes the oldest send of |c| with |res|. */
static void send_pop(struct io_worker *w, struct io_conn *c, int res)
{
    uint32_t si = c->sq_head;
    struct io_send *s = &w->sends[si];
    void *cookie = s->cookie;
    c->sq_head = s->next;
    if (c->sq_head == IO_NONE32)
        c->sq_tail = IO_NONE32;
    c->sq_count--;
    s->buf = NULL;
    s->next = w->send_free;
    w->send_free = si;
    if (w->e->ops.on_send_done != NULL)
        w->e->ops.on_send_done(c, cookie, res);
}

void io_conn_cqe_send(struct io_worker *w, const struct io_uring_cqe *cqe)
{
    struct io_conn *c = conn_get(w, cqe->user_data);
    int res = cqe->res;
    struct io_send *s;

    w->inflight--;
    if (c == NULL)
        return;
    c->flags &= ~IO_CF_SEND;
    conn_pend(w, c);
    if (c->sq_head == IO_NONE32)
        return;
    s = &w->sends[c->sq_head];
    if (__builtin_expect(res > 0, 1)) {
        io_stat_add(&w->st.bytes_out, (uint64_t)res);
        s->off += (uint32_t)res;
        if (s->off >= s->len) {
            send_pop(w, c, (int)s->len);
            return;
        }
        if (!(c->flags & IO_CF_ABORT))
            return; /* short send: the rest goes out from the pending pass */
        res = -ECANCELED;
    } else if (res == -EINTR || res == -EAGAIN) {
        if (!(c->flags & IO_CF_ABORT))
            return; /* resubmitted from the pending pass */
        res = -ECANCELED;
    } else if (res == 0) {
        res = -EPIPE;
    }
    if (!(c->flags & IO_CF_ABORT))
        conn_fail(w, c, res); /* -EPIPE, -ECONNRESET...: the connection is dead */
    send_pop(w, c, res);
}

int io_conn_send(struct io_conn *c, const void *buf, size_t len, void *cookie)
{
    struct io_worker *w = c->w;
    struct io_send *s;
    uint32_t si;

    if (buf == NULL || len == 0 || len > INT_MAX)
        return -EINVAL;
    if (c->state == IO_CONN_CONNECTING && !(c->flags & IO_CF_ABORT))
        return -ENOTCONN;
    if (c->state != IO_CONN_OPEN || (c->flags & (IO_CF_CLOSING | IO_CF_ABORT | IO_CF_FINAL)))
        return -EPIPE;
    if (c->sq_count >= w->send_queue_max)
        return -EAGAIN;
    si = w->send_free;
    if (si == IO_NONE32)
        return -EAGAIN; /* cannot happen: the pool holds send_queue_max per slot */
    s = &w->sends[si];
    w->send_free = s->next;
    s->buf = buf;
    s->cookie = cookie;
    s->len = (uint32_t)len;
    s->off = 0;
    s->next = IO_NONE32;
    if (c->sq_tail == IO_NONE32)
        c->sq_head = si;
    else
        w->sends[c->sq_tail].next = si;
    c->sq_tail = si;
    c->sq_count++;
    if (!(c->flags & IO_CF_SEND))
        conn_pend(w, c);
    return 0;
}

unsigned io_conn_send_queued(const struct io_conn *c)
{
    return c->sq_count;
}

/* ---- connect ---- */

void io_conn_cqe_connect(struct io_worker *w, const struct io_uring_cqe *cqe)
{
    struct io_conn *c = conn_get(w, cqe->user_data);
    const struct io_conn_ops *ops = &w->e->ops;
    int res = cqe->res;

    w->inflight--;
    if (c == NULL)
        return;
    c->flags &= ~(IO_CF_CONNECT | IO_CF_CONNECT_CANCEL);
    if (res == 0 && !(c->flags & IO_CF_ABORT)) {
        c->state = IO_CONN_OPEN;
        c->flags &= ~IO_CF_CONNECT_TIMEOUT;
        if (c->flags & IO_CF_CONNECT_DL)
            io_conn_clear_deadline(c);
        if (ops->on_connect != NULL)
            ops->on_connect(c, 0);
        conn_pend(w, c);
        return;
    }
    if (res == 0)
        res = -ECANCELED; /* connected, but aborted meanwhile */
    else if (res == -ECANCELED && (c->flags & IO_CF_CONNECT_TIMEOUT))
        res = -ETIMEDOUT;
    conn_set_reason(c, res);
    c->flags |= IO_CF_ABORT;
    if (ops->on_connect != NULL)
        ops->on_connect(c, res);
    conn_pend(w, c);
}

int io_connect(struct io_worker *w, struct io_conn **out, const struct sockaddr *sa, socklen_t len,
               void *ctx, uint64_t timeout_ms)
{
    struct io_uring_sqe *sqe;
    struct io_conn *c;
    int fd;

    if (out != NULL)
        *out = NULL;
    if (w == NULL || sa == NULL || len > sizeof(struct sockaddr_storage))
        return -EINVAL;
    if (sa->sa_family == AF_INET) {
        if (len < sizeof(struct sockaddr_in))
            return -EINVAL;
    } else if (sa->sa_family == AF_INET6) {
        if (len < sizeof(struct sockaddr_in6))
            return -EINVAL;
    } else if (sa->sa_family == AF_UNIX) {
        /* Local stream sockets (an LMTP store on a Unix socket). */
        if (len <= offsetof(struct sockaddr_un, sun_path))
            return -EINVAL;
    } else {
        return -EAFNOSUPPORT;
    }
    if (w->phase != IO_PHASE_RUN)
        return -ESHUTDOWN;
    if (w->conn_live >= w->conn_cap || w->conn_free == IO_NONE32)
        return -EMFILE;
    fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    sqe = io_sqe(w);
    if (sqe == NULL) {
        close(fd);
        return -EBUSY;
    }
    c = conn_alloc(w);
    c->fd = fd;
    c->ctx = ctx;
    c->state = IO_CONN_CONNECTING;
    /* peers[] keeps the address alive until the connect completes. */
    struct sockaddr_storage *ss = &w->peers[conn_idx(w, c)];
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, sa, len);
    c->flags |= IO_CF_PEER_SET | IO_CF_CONNECT;
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)ss, len);
    io_uring_sqe_set_data64(sqe, io_ud(IO_OP_CONNECT, conn_idx(w, c), c->gen));
    w->inflight++;
    io_stat_add(&w->st.connects, 1);
    if (timeout_ms > 0) {
        io_conn_set_deadline(c, timeout_ms);
        c->flags |= IO_CF_CONNECT_DL;
    }
    if (out != NULL)
        *out = c;
    return 0;
}

/* ---- accept ---- */

void io_conn_accepted(struct io_worker *w, int fd, void *tag)
{
    const struct io_conn_ops *ops = &w->e->ops;
    struct io_conn *c = NULL;

    if (w->phase == IO_PHASE_RUN && w->conn_live < w->conn_cap)
        c = conn_alloc(w);
    if (c == NULL) {
        /* Over conn_max (or stopping): accept and close at once, so that the kernel's backlog
         * does not fill with connections nobody will serve. */
        close(fd);
        io_stat_add(&w->st.refused, 1);
        return;
    }
    c->fd = fd;
    c->state = IO_CONN_OPEN;
    io_stat_add(&w->st.accepted, 1);
    if (ops->on_accept != NULL) {
        int rc = ops->on_accept(c, tag);
        if (rc < 0) {
            io_stat_add(&w->st.rejected, 1);
            c->flags |= IO_CF_NO_CLOSE_CB;
            conn_fail(w, c, rc);
            return;
        }
    }
    conn_pend(w, c);
}

/* ---- close ---- */

static void cancel_all(struct io_worker *w, struct io_conn *c)
{
    struct io_uring_sqe *sqe = io_sqe(w);
    if (sqe == NULL) {
        conn_pend(w, c);
        return;
    }
    io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0, 0));
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    c->flags |= IO_CF_CANCEL_ALL;
}

static void conn_finalize(struct io_worker *w, struct io_conn *c)
{
    const struct io_conn_ops *ops = &w->e->ops;
    c->flags |= IO_CF_FINAL;
    wheel_unlink(w, c);
    conn_drop_held(w, c);
    while (c->sq_head != IO_NONE32)
        send_pop(w, c, -ECANCELED);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    w->conn_live--;
    io_stat_set(&w->st.conns, w->conn_live);
    if (!(c->flags & IO_CF_NO_CLOSE_CB)) {
        io_stat_add(&w->st.closed, 1);
        ops->on_close(c, c->reason);
    }
    conn_release(w, c);
}

/* conn_process brings |c| to the state its flags ask for: deliver held data, arm or cancel the
 * receive, start the next send, cancel everything on abort, and finish when nothing is left. */
static void conn_process(struct io_worker *w, struct io_conn *c)
{
    uint32_t f;
    while (c->held_head != IO_NONE16 &&
           !(c->flags & (IO_CF_PAUSED | IO_CF_CLOSING | IO_CF_ABORT))) {
        unsigned bid = c->held_head;
        c->held_head = w->bmeta[bid].next;
        if (c->held_head == IO_NONE16)
            c->held_tail = IO_NONE16;
        w->bufs_held--;
        w->e->ops.on_data(c, io_buf_addr(w, bid), w->bmeta[bid].len);
        io_buf_recycle(w, bid);
    }
    if (c->flags & (IO_CF_CLOSING | IO_CF_ABORT))
        conn_drop_held(w, c);
    if (c->flags & IO_CF_PENDING)
        return; /* a callback above queued it again: finish there */
    /* EOF is delivered like data: in order, and only while receiving is not paused, so that an
     * upper layer that paused because it still has work (a reply to send) keeps the connection
     * until it resumes. */
    if ((c->flags & IO_CF_PEER_EOF) && c->held_head == IO_NONE16 &&
        !(c->flags & (IO_CF_CLOSING | IO_CF_ABORT | IO_CF_PAUSED))) {
        conn_set_reason(c, IO_CLOSE_EOF);
        c->flags |= IO_CF_CLOSING;
    }
    f = c->flags;
    if (c->state == IO_CONN_OPEN) {
        bool stop = f & (IO_CF_PAUSED | IO_CF_CLOSING | IO_CF_ABORT | IO_CF_PEER_EOF);
        if (!stop && !(f & (IO_CF_RECV | IO_CF_NOBUF_WAIT)))
            arm_recv(w, c);
        else if (stop && (f & IO_CF_RECV) && !(f & (IO_CF_RECV_CANCEL | IO_CF_CANCEL_ALL)) &&
                 (!(f & IO_CF_PAUSE_LAZY) || c->held_head != IO_NONE16 ||
                  (f & (IO_CF_CLOSING | IO_CF_ABORT | IO_CF_PEER_EOF))))
            cancel_recv(w, c);
        if (!(c->flags & (IO_CF_SEND | IO_CF_ABORT)) && c->sq_head != IO_NONE32)
            submit_send(w, c);
    }
    f = c->flags;
    if ((f & IO_CF_ABORT) && (f & (IO_CF_RECV | IO_CF_SEND | IO_CF_CONNECT)) &&
        !(f & IO_CF_CANCEL_ALL))
        cancel_all(w, c);
    f = c->flags;
    if ((f & (IO_CF_CLOSING | IO_CF_ABORT)) && !(f & (IO_CF_RECV | IO_CF_SEND | IO_CF_CONNECT)) &&
        ((f & IO_CF_ABORT) || c->sq_head == IO_NONE32) && !(f & IO_CF_PENDING))
        conn_finalize(w, c);
}

void io_conn_run_pending(struct io_worker *w)
{
    /* Callbacks may queue connections again; a few rounds per iteration, the rest next time. */
    for (unsigned round = 0; round < 8 && w->pend_head != IO_NONE32; round++) {
        uint32_t i = w->pend_head;
        w->pend_head = IO_NONE32;
        while (i != IO_NONE32) {
            struct io_conn *c = &w->conns[i];
            i = c->next;
            c->flags &= ~IO_CF_PENDING;
            if (c->state != IO_CONN_FREE)
                conn_process(w, c);
        }
    }
}

void io_conn_stop_all(struct io_worker *w)
{
    if (w->conns == NULL)
        return;
    for (uint32_t i = 0; i < w->conn_cap; i++) {
        struct io_conn *c = &w->conns[i];
        if (c->state != IO_CONN_FREE && !(c->flags & IO_CF_FINAL)) {
            conn_set_reason(c, IO_CLOSE_SHUTDOWN);
            c->flags |= IO_CF_ABORT;
            conn_pend(w, c);
        }
    }
}

void io_conn_close(struct io_conn *c)
{
    if (c->state == IO_CONN_FREE || (c->flags & (IO_CF_CLOSING | IO_CF_ABORT | IO_CF_FINAL)))
        return;
    if (c->state == IO_CONN_CONNECTING) {
        io_conn_abort(c);
        return;
    }
    conn_set_reason(c, IO_CLOSE_LOCAL);
    c->flags |= IO_CF_CLOSING;
    conn_pend(c->w, c);
}

void io_conn_abort(struct io_conn *c)
{
    if (c->state == IO_CONN_FREE || (c->flags & (IO_CF_ABORT | IO_CF_FINAL)))
        return;
    conn_fail(c->w, c, IO_CLOSE_LOCAL);
}

void io_conn_pause_recv(struct io_conn *c)
{
    if ((c->flags & (IO_CF_PAUSED | IO_CF_PAUSE_LAZY)) != IO_CF_PAUSED) {
        /* Paused, or a lazy pause made eager: the receive is cancelled now. */
        c->flags = (c->flags | IO_CF_PAUSED) & ~IO_CF_PAUSE_LAZY;
        conn_pend(c->w, c);
    }
}

void io_conn_pause_recv_lazy(struct io_conn *c)
{
    if (!(c->flags & IO_CF_PAUSED)) {
        c->flags |= IO_CF_PAUSED | IO_CF_PAUSE_LAZY;
        conn_pend(c->w, c);
    }
}

void io_conn_hold_recv(struct io_conn *c, enum io_hold h)
{
    switch (h) {
    case IO_HOLD_FULL:
        io_conn_pause_recv(c);
        break;
    case IO_HOLD_LAZY:
        io_conn_pause_recv_lazy(c);
        break;
    case IO_HOLD_NONE:
        io_conn_resume_recv(c);
        break;
    }
}

void io_conn_resume_recv(struct io_conn *c)
{
    if (c->flags & IO_CF_PAUSED) {
        c->flags &= ~(IO_CF_PAUSED | IO_CF_PAUSE_LAZY);
        conn_pend(c->w, c);
    }
}

/* ---- accessors ---- */

void io_conn_set_ctx(struct io_conn *c, void *ctx)
{
    c->ctx = ctx;
}

void *io_conn_ctx(const struct io_conn *c)
{
    return c->ctx;
}

struct io_worker *io_conn_worker(const struct io_conn *c)
{
    return c->w;
}

int io_conn_fd(const struct io_conn *c)
{
    return c->fd;
}

const struct sockaddr_storage *io_conn_peer(struct io_conn *c)
{
    struct io_worker *w = c->w;
    struct sockaddr_storage *ss = &w->peers[conn_idx(w, c)];
    if (!(c->flags & IO_CF_PEER_SET)) {
        socklen_t len = sizeof(*ss);
        memset(ss, 0, sizeof(*ss));
        if (c->fd < 0 || getpeername(c->fd, (struct sockaddr *)ss, &len) < 0)
            ss->ss_family = AF_UNSPEC;
        c->flags |= IO_CF_PEER_SET;
    }
    return ss;
}
