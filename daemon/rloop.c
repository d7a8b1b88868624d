/* daemon/rloop.c — the queue's event-loop interface (queue/redis_loop.h) on an io_uring worker:
 * fd watches and timers of io/engine.h. Not the queue and not the engine. */
#include "daemon/cmtpd.h"

static void *rl_watch_new(void *loop, int fd, void (*cb)(void *arg, unsigned events), void *arg)
{
    /* IO_WATCH_READ/WRITE have the values of QUEUE_LOOP_READABLE/WRITABLE (checked below). */
    return io_watch_new(loop, fd, cb, arg);
}

static void rl_watch_set(void *watch, bool read, bool write)
{
    io_watch_set(watch, read, write);
}

static void rl_watch_free(void *watch)
{
    io_watch_free(watch);
}

static void *rl_timer_add(void *loop, uint64_t ms, void (*cb)(void *arg), void *arg)
{
    return io_timer_add(loop, ms, cb, arg);
}

static void rl_timer_cancel(void *loop, void *timer)
{
    io_timer_cancel(loop, timer);
}

static uint64_t rl_now_ms(void *loop)
{
    return io_worker_now_ms(loop);
}

_Static_assert(IO_WATCH_READ == QUEUE_LOOP_READABLE && IO_WATCH_WRITE == QUEUE_LOOP_WRITABLE,
               "io watch bits and queue loop bits must agree");

static const struct queue_loop_ops rl_ops = {
    .watch_new = rl_watch_new,
    .watch_set = rl_watch_set,
    .watch_free = rl_watch_free,
    .timer_add = rl_timer_add,
    .timer_cancel = rl_timer_cancel,
    .now_ms = rl_now_ms,
};

void cmtpd_queue_loop(struct queue_loop *out, struct io_worker *io)
{
    out->ops = &rl_ops;
    out->loop = io;
}
