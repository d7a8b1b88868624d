/* queue/redis_adapter.h — attaches a hiredis async context to a struct queue_loop by filling
 * hiredis's five event hooks (the shape of hiredis's adapters/ae.h). Not a Redis client. */
#ifndef CMTP_QUEUE_REDIS_ADAPTER_H
#define CMTP_QUEUE_REDIS_ADAPTER_H

#include <hiredis/async.h>

#include "queue/redis_loop.h"

/* queue_redis_attach makes |loop| drive |ac|: a watch on its fd whose read/write interest follows
 * hiredis's addRead/delRead/addWrite/delWrite hooks, and a cleanup hook that frees the watch when
 * hiredis frees the context (even from inside a callback of that watch). |loop| is copied.
 * Returns 0, or -ENOMEM (nothing attached; the caller frees |ac|). */
int queue_redis_attach(redisAsyncContext *ac, const struct queue_loop *loop);

#endif
