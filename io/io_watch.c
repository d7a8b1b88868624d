/* io/io_watch.c — readiness watches on foreign file descriptors (one-shot IORING_OP_POLL_ADD,
 * re-armed while wanted: level-triggered) and one-shot timers (IORING_OP_TIMEOUT) of a worker.
 * Not connections (io_conn.c); the engine never reads, writes or closes a watched fd. */
#include "io/io_internal.h"

#include <poll.h>
#include <stdlib.h>

int io_watch_setup(struct io_worker *w)
{
    w->watches = calloc(w->watch_cap, sizeof(*w->watches));
    w->timers = calloc(w->timer_cap, sizeof(*w->timers));
    if (w->watches == NULL || w->timers == NULL)
        return -ENOMEM;
    w->watch_free = IO_NONE32;
    for (uint32_t i = w->watch_cap; i-- > 0;) {
        w->watches[i].w = w;
        w->watches[i].fd = -1;
        w->watches[i].next_free = w->watch_free;
        w->watch_free = i;
    }
    w->timer_free = IO_NONE32;
    w->timer_ready_head = w->timer_ready_tail = IO_NONE32;
    for (uint32_t i = w->timer_cap; i-- > 0;) {
        w->timers[i].next_free = w->timer_free;
        w->timer_free = i;
    }
    return 0;
}

void io_watch_teardown(struct io_worker *w)
{
    free(w->watches);
    w->watches = NULL;
    free(w->timers);
    w->timers = NULL;
}

/* ---- watches ---- */

static uint32_t watch_idx(const struct io_watch *wt)
{
    return (uint32_t)(wt - wt->w->watches);
}

static void watch_release(struct io_worker *w, struct io_watch *wt)
{
    wt->gen++;
    wt->flags = 0;
    wt->want = wt->armed = 0;
    wt->cb = NULL;
    wt->arg = NULL;
    wt->fd = -1;
    wt->next_free = w->watch_free;
    w->watch_free = watch_idx(wt);
}

static unsigned poll_mask(unsigned want)
{
    unsigned m = 0;
    if (want & IO_WATCH_READ)
        m |= POLLIN | POLLRDHUP;
    if (want & IO_WATCH_WRITE)
        m |= POLLOUT;
    return m;
}

/* watch_sync makes the poll in flight match the interest: arm one when none is in flight, or
 * remove the one in flight when it watches for something else (re-armed when it returns). */
static void watch_sync(struct io_worker *w, struct io_watch *wt)
{
    struct io_uring_sqe *sqe;
    if (wt->flags & (IO_WF_DEAD | IO_WF_ERROR))
        return;
    if (wt->flags & IO_WF_INFLIGHT) {
        if (wt->armed == wt->want || (wt->flags & IO_WF_REMOVING))
            return;
        sqe = io_sqe(w);
        if (sqe == NULL)
            goto resync;
        io_uring_prep_poll_remove(sqe, io_ud(IO_OP_WATCH, watch_idx(wt), wt->gen));
        io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0, 0));
        sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
        wt->flags |= IO_WF_REMOVING;
        return;
    }
    if (wt->want == 0)
        return;
    sqe = io_sqe(w);
    if (sqe == NULL)
        goto resync;
    io_uring_prep_poll_add(sqe, wt->fd, poll_mask(wt->want));
    io_uring_sqe_set_data64(sqe, io_ud(IO_OP_WATCH, watch_idx(wt), wt->gen));
    wt->flags |= IO_WF_INFLIGHT;
    wt->armed = wt->want;
    w->inflight++;
    return;
resync:
    wt->flags |= IO_WF_RESYNC;
    w->watch_resync = true;
}

void io_watch_resync(struct io_worker *w)
{
    w->watch_resync = false;
    for (uint32_t i = 0; i < w->watch_cap; i++) {
        struct io_watch *wt = &w->watches[i];
        if (wt->flags & IO_WF_RESYNC) {
            wt->flags &= ~IO_WF_RESYNC;
            watch_sync(w, wt);
        }
    }
}

struct io_watch *io_watch_new(struct io_worker *w, int fd, void (*cb)(void *arg, unsigned events),
                              void *arg)
{
    struct io_watch *wt;
    if (w == NULL || fd < 0 || cb == NULL || w->phase == IO_PHASE_QUIESCE ||
        w->watch_free == IO_NONE32)
        return NULL;
    wt = &w->watches[w->watch_free];
    w->watch_free = wt->next_free;
    wt->next_free = IO_NONE32;
    wt->cb = cb;
    wt->arg = arg;
    wt->fd = fd;
    wt->want = wt->armed = 0;
    wt->flags = IO_WF_USED;
    return wt;
}

void io_watch_set(struct io_watch *wt, bool want_read, bool want_write)
{
    if (wt == NULL || (wt->flags & IO_WF_DEAD))
        return;
    wt->want = (uint8_t)((want_read ? IO_WATCH_READ : 0) | (want_write ? IO_WATCH_WRITE : 0));
    wt->flags &= ~IO_WF_ERROR;
    watch_sync(wt->w, wt);
}

void io_watch_free(struct io_watch *wt)
{
    struct io_worker *w;
    if (wt == NULL || (wt->flags & IO_WF_DEAD) || !(wt->flags & IO_WF_USED))
        return;
    w = wt->w;
    wt->flags |= IO_WF_DEAD;
    wt->flags &= ~IO_WF_RESYNC;
    wt->want = 0;
    if (wt->flags & IO_WF_INFLIGHT) {
        if (!(wt->flags & IO_WF_REMOVING)) {
            struct io_uring_sqe *sqe = io_sqe(w);
            if (sqe != NULL) {
                io_uring_prep_poll_remove(sqe, io_ud(IO_OP_WATCH, watch_idx(wt), wt->gen));
                io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0, 0));
                sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
                wt->flags |= IO_WF_REMOVING;
            }
            /* Without an entry the poll stays until the fd becomes ready or the worker exits;
             * the slot is released then. */
        }
        return;
    }
    if (!(wt->flags & IO_WF_IN_CB))
        watch_release(w, wt);
}

void io_watch_cqe(struct io_worker *w, const struct io_uring_cqe *cqe)
{
    uint32_t i = io_ud_idx(cqe->user_data);
    struct io_watch *wt;
    int res = cqe->res;
    unsigned ev = 0;

    w->inflight--;
    if (i >= w->watch_cap)
        return;
    wt = &w->watches[i];
    if (wt->gen != io_ud_gen(cqe->user_data) || !(wt->flags & IO_WF_INFLIGHT))
        return;
    wt->flags &= ~(IO_WF_INFLIGHT | IO_WF_REMOVING);
    if (wt->flags & IO_WF_DEAD) {
        watch_release(w, wt);
        return;
    }
    if (res >= 0) {
        unsigned m = (unsigned)res;
        if ((wt->want & IO_WATCH_READ) && (m & (POLLIN | POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
            ev |= IO_WATCH_READ;
        if ((wt->want & IO_WATCH_WRITE) && (m & (POLLOUT | POLLHUP | POLLERR | POLLNVAL)))
            ev |= IO_WATCH_WRITE;
    } else if (res != -ECANCELED) {
        /* The poll itself failed (-EBADF...): report it as readiness so that the owner's read or
         * write finds the error, and do not re-arm until io_watch_set says so. */
        ev = wt->want;
        wt->flags |= IO_WF_ERROR;
    }
    if (ev != 0 && w->phase != IO_PHASE_QUIESCE) {
        wt->flags |= IO_WF_IN_CB;
        wt->cb(wt->arg, ev);
        wt->flags &= ~IO_WF_IN_CB;
    }
    if (wt->flags & IO_WF_DEAD) {
        if (!(wt->flags & IO_WF_INFLIGHT))
            watch_release(w, wt);
        return;
    }
    watch_sync(w, wt);
}

/* ---- timers ---- */

static uint32_t timer_idx(const struct io_worker *w, const struct io_timer *t)
{
    return (uint32_t)(t - w->timers);
}

static void timer_release(struct io_worker *w, struct io_timer *t)
{
    t->gen++;
    t->state = IO_TS_FREE;
    t->cb = NULL;
    t->arg = NULL;
    t->next_free = w->timer_free;
    w->timer_free = timer_idx(w, t);
}

struct io_timer *io_timer_add(struct io_worker *w, uint64_t ms, void (*cb)(void *arg), void *arg)
{
    struct io_uring_sqe *sqe = NULL;
    struct io_timer *t;
    if (w == NULL || cb == NULL || w->phase == IO_PHASE_QUIESCE || w->timer_free == IO_NONE32)
        return NULL;
    if (ms > 0) {
        sqe = io_sqe(w);
        if (sqe == NULL)
            return NULL;
    }
    t = &w->timers[w->timer_free];
    w->timer_free = t->next_free;
    t->next_free = IO_NONE32;
    t->cb = cb;
    t->arg = arg;
    if (ms == 0) {
        /* Due now: the ready list, run after this iteration's completions. Arming a kernel
         * timeout costs a timer interrupt reprogramming (a VM exit on a virtual machine) for
         * what is only "after the current callback". */
        t->state = IO_TS_READY;
        if (w->timer_ready_tail == IO_NONE32)
            w->timer_ready_head = timer_idx(w, t);
        else
            w->timers[w->timer_ready_tail].next_free = timer_idx(w, t);
        w->timer_ready_tail = timer_idx(w, t);
        return t;
    }
    if (ms > (uint64_t)INT32_MAX * 1000u)
        ms = (uint64_t)INT32_MAX * 1000u;
    t->ts.tv_sec = (long long)(ms / 1000u);
    t->ts.tv_nsec = (long long)(ms % 1000u) * 1000000;
    t->state = IO_TS_ARMED;
    /* The kernel copies |ts| when the entry is submitted; it lives in the slot anyway. */
    io_uring_prep_timeout(sqe, &t->ts, 0, 0);
    io_uring_sqe_set_data64(sqe, io_ud(IO_OP_TIMER, timer_idx(w, t), t->gen));
    w->inflight++;
    return t;
}

int io_timer_cancel(struct io_worker *w, struct io_timer *t)
{
    struct io_uring_sqe *sqe;
    if (w == NULL || t == NULL)
        return -ENOENT;
    if (t->state == IO_TS_READY) {
        t->state = IO_TS_READY_CANCELED; /* io_timer_run_ready releases it */
        return 0;
    }
    if (t->state != IO_TS_ARMED)
        return -ENOENT;
    t->state = IO_TS_CANCELED;
    sqe = io_sqe(w);
    if (sqe != NULL) {
        io_uring_prep_timeout_remove(sqe, io_ud(IO_OP_TIMER, timer_idx(w, t), t->gen), 0);
        io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0, 0));
        sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    }
    /* Without an entry the timeout still expires; being cancelled, it runs no callback. */
    return 0;
}

unsigned io_timer_run_ready(struct io_worker *w)
{
    uint32_t i = w->timer_ready_head;
    unsigned ran = 0;

    /* Detach the list first: callbacks may add 0 ms timers, which wait for the next iteration
     * (a timer that re-adds itself cannot starve the loop). */
    w->timer_ready_head = w->timer_ready_tail = IO_NONE32;
    while (i != IO_NONE32) {
        struct io_timer *t = &w->timers[i];
        uint32_t next = t->next_free;
        bool run = t->state == IO_TS_READY && w->phase != IO_PHASE_QUIESCE;
        void (*cb)(void *) = t->cb;
        void *arg = t->arg;
        /* Released first, as for a kernel timer: the callback may add timers, this slot
         * included (it is then linked anew, after |next| was read). */
        timer_release(w, t);
        if (run) {
            cb(arg);
            ran++;
        }
        i = next;
    }
    return ran;
}

void io_timer_cqe(struct io_worker *w, const struct io_uring_cqe *cqe)
{
    uint32_t i = io_ud_idx(cqe->user_data);
    struct io_timer *t;

    w->inflight--;
    if (i >= w->timer_cap)
        return;
    t = &w->timers[i];
    if (t->gen != io_ud_gen(cqe->user_data) || t->state == IO_TS_FREE)
        return;
    if (t->state == IO_TS_ARMED && w->phase != IO_PHASE_QUIESCE) {
        void (*cb)(void *) = t->cb;
        void *arg = t->arg;
        /* Released first: the callback may add timers, this slot included. */
        timer_release(w, t);
        cb(arg);
        return;
    }
    timer_release(w, t);
}

void io_watch_quiesce(struct io_worker *w)
{
    if (w->watches != NULL) {
        for (uint32_t i = 0; i < w->watch_cap; i++) {
            struct io_watch *wt = &w->watches[i];
            if ((wt->flags & IO_WF_USED) && !(wt->flags & IO_WF_DEAD)) {
                wt->flags |= IO_WF_DEAD;
                wt->want = 0;
                if (!(wt->flags & IO_WF_INFLIGHT))
                    watch_release(w, wt);
            }
        }
    }
    if (w->timers != NULL)
        for (uint32_t i = 0; i < w->timer_cap; i++) {
            if (w->timers[i].state == IO_TS_ARMED)
                w->timers[i].state = IO_TS_CANCELED;
            else if (w->timers[i].state == IO_TS_READY)
                w->timers[i].state = IO_TS_READY_CANCELED;
        }
    /* Ready timers are released without their callbacks by the next io_timer_run_ready. */
    /* The caller cancels every operation still in flight; their completions release the slots. */
}
