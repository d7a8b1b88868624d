/* queue/redis_adapter.c — hiredis's five event hooks on a struct queue_loop, shared by the
 * ingest queue and the consumer. Not a Redis client: no commands here. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "queue/redis_adapter.h"

/* qev adapts one hiredis context to the loop. */
struct qev {
    struct queue_loop loop;
    redisAsyncContext *ac;
    void *watch;
    bool reading, writing;
    bool *dead; /* set while dispatching: cleanup marks it so the dispatcher stops */
};

static void qev_update(struct qev *e)
{
    e->loop.ops->watch_set(e->watch, e->reading, e->writing);
}

static void qev_add_read(void *p)
{
    struct qev *e = p;
    if (!e->reading) {
        e->reading = true;
        qev_update(e);
    }
}

static void qev_del_read(void *p)
{
    struct qev *e = p;
    if (e->reading) {
        e->reading = false;
        qev_update(e);
    }
}

static void qev_add_write(void *p)
{
    struct qev *e = p;
    if (!e->writing) {
        e->writing = true;
        qev_update(e);
    }
}

static void qev_del_write(void *p)
{
    struct qev *e = p;
    if (e->writing) {
        e->writing = false;
        qev_update(e);
    }
}

static void qev_cleanup(void *p)
{
    struct qev *e = p;
    e->loop.ops->watch_free(e->watch);
    if (e->dead)
        *e->dead = true;
    free(e);
}

/* qev_event is the watch callback: readable first, then writable, stopping as soon as hiredis
 * freed the context (which runs qev_cleanup). */
static void qev_event(void *arg, unsigned events)
{
    struct qev *e = arg;
    redisAsyncContext *ac = e->ac;
    bool dead = false;

    e->dead = &dead;
    if (events & QUEUE_LOOP_READABLE)
        redisAsyncHandleRead(ac);
    if (dead)
        return;
    if (events & QUEUE_LOOP_WRITABLE)
        redisAsyncHandleWrite(ac);
    if (dead)
        return;
    e->dead = NULL;
}

int queue_redis_attach(redisAsyncContext *ac, const struct queue_loop *loop)
{
    struct qev *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return -ENOMEM;
    e->loop = *loop;
    e->ac = ac;
    e->watch = loop->ops->watch_new(loop->loop, ac->c.fd, qev_event, e);
    if (e->watch == NULL) {
        free(e);
        return -ENOMEM;
    }
    ac->ev.data = e;
    ac->ev.addRead = qev_add_read;
    ac->ev.delRead = qev_del_read;
    ac->ev.addWrite = qev_add_write;
    ac->ev.delWrite = qev_del_write;
    ac->ev.cleanup = qev_cleanup;
    return 0;
}
