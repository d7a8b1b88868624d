/* queue/redis_loop.h — the event-loop interface the queue runs on: fd readiness watches, one-shot
 * timers and a clock. The daemon implements it on io_uring, tests on poll(2); not an event loop. */
#ifndef CMTP_QUEUE_REDIS_LOOP_H
#define CMTP_QUEUE_REDIS_LOOP_H

#include <stdbool.h>
#include <stdint.h>

/* QUEUE_LOOP_READABLE and QUEUE_LOOP_WRITABLE are the bits of the |events| a watch callback
 * receives. An error or hang-up on the fd must be reported as QUEUE_LOOP_READABLE (the reader then
 * sees the error or EOF). */
#define QUEUE_LOOP_READABLE 1u
#define QUEUE_LOOP_WRITABLE 2u

/* queue_loop_ops is the table a loop implementation fills. Every function is called on the loop's
 * own thread only. Contract:
 *
 * |watch_new| starts watching |fd| (interest initially empty) and returns a handle, or NULL on
 * failure. |cb| is called with |arg| and the ready bits while the interest set by |watch_set|
 * includes them (level-triggered: it is called again on the next iteration while the condition
 * holds). The loop never closes |fd|.
 *
 * |watch_set| replaces the interest of |watch|: |read|, |write|. Idempotent.
 *
 * |watch_free| stops and frees |watch|. It may be called from inside that watch's own callback;
 * the loop must then not touch the watch after the callback returns (defer the free) and must not
 * call the callback again.
 *
 * |timer_add| arms a one-shot timer that calls |cb|(|arg|) once, |ms| milliseconds from now (0:
 * on the next iteration, never from inside timer_add). It returns a handle valid until the timer
 * has fired or was cancelled, or NULL on failure.
 *
 * |timer_cancel| cancels a pending |timer| of |loop|; the callback will not run. Calling it from
 * another timer's callback is allowed; calling it on a fired timer is not.
 *
 * |now_ms| returns a monotonic clock in milliseconds (the one timers are measured on). */
struct queue_loop_ops {
    void *(*watch_new)(void *loop, int fd, void (*cb)(void *arg, unsigned events), void *arg);
    void (*watch_set)(void *watch, bool read, bool write);
    void (*watch_free)(void *watch);
    void *(*timer_add)(void *loop, uint64_t ms, void (*cb)(void *arg), void *arg);
    void (*timer_cancel)(void *loop, void *timer);
    uint64_t (*now_ms)(void *loop);
};

/* queue_loop binds an implementation |ops| to one loop instance |loop| (opaque to the queue).
 * The queue copies this structure; |ops| and |loop| must outlive every queue that uses them. */
struct queue_loop {
    const struct queue_loop_ops *ops;
    void *loop;
};

#endif
