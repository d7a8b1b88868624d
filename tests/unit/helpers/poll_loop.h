/* tests/unit/helpers/poll_loop.h — a small poll(2) event loop implementing queue_loop_ops for
 * tests, so the queue runs against a real redis-server without io_uring. Not for production. */
#ifndef CMTP_TEST_POLL_LOOP_H
#define CMTP_TEST_POLL_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "queue/redis_loop.h"

/* poll_loop is an opaque single-threaded loop of fd watches and one-shot timers. */
struct poll_loop;

/* poll_loop_new returns a new empty loop, or NULL when out of memory. */
struct poll_loop *poll_loop_new(void);

/* poll_loop_free frees |pl| and any watches and timers still registered (their callbacks are not
 * called). NULL is a no-op. */
void poll_loop_free(struct poll_loop *pl);

/* poll_loop_bind fills |out| so that a queue runs on |pl|. */
void poll_loop_bind(struct poll_loop *pl, struct queue_loop *out);

/* poll_loop_run_once waits at most |max_wait_ms| (less when a timer is due) for fd events, then
 * dispatches ready watches and due timers once. Returns the number of callbacks run, or -errno
 * when poll(2) failed. */
int poll_loop_run_once(struct poll_loop *pl, int max_wait_ms);

/* poll_loop_run_until runs the loop until |done|(|arg|) returns true (checked before each
 * iteration) or |timeout_ms| have passed. Returns whether |done| became true. */
bool poll_loop_run_until(struct poll_loop *pl, bool (*done)(void *arg), void *arg,
                         uint64_t timeout_ms);

/* poll_loop_run_for runs the loop for |ms| milliseconds. */
void poll_loop_run_for(struct poll_loop *pl, uint64_t ms);

/* poll_loop_now_ms returns the loop's monotonic clock in milliseconds. */
uint64_t poll_loop_now_ms(void);

/* poll_loop_counts reports how many watches and timers are registered (for leak checks). */
void poll_loop_counts(const struct poll_loop *pl, unsigned *watches, unsigned *timers);

#endif
