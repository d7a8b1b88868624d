/* tests/unit/helpers/poll_loop.c — poll(2) implementation of queue_loop_ops for unit tests.
 * Level-triggered watches, one-shot timers, deferred frees; not fast and not for production. */
#include "tests/unit/helpers/poll_loop.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <time.h>

struct pl_watch {
    struct pl_watch *next;
    struct poll_loop *pl;
    int fd;
    bool read;
    bool write;
    bool dead; /* freed by its owner; reaped by the loop outside dispatch */
    void (*cb)(void *arg, unsigned events);
    void *arg;
};

struct pl_timer {
    struct pl_timer *next;
    uint64_t due_ms;
    uint64_t iter; /* iteration it was added in: fires only in a later one */
    void (*cb)(void *arg);
    void *arg;
};

struct poll_loop {
    struct pl_watch *watches;
    struct pl_timer *timers;
    uint64_t iter;
    struct pollfd *pfds;
    struct pl_watch **pw;
    size_t cap;
};

uint64_t poll_loop_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void *pl_watch_new(void *loop, int fd, void (*cb)(void *arg, unsigned events), void *arg)
{
    struct poll_loop *pl = loop;
    struct pl_watch *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->pl = pl;
    w->fd = fd;
    w->cb = cb;
    w->arg = arg;
    w->next = pl->watches;
    pl->watches = w;
    return w;
}

static void pl_watch_set(void *watch, bool read, bool write)
{
    struct pl_watch *w = watch;
    w->read = read;
    w->write = write;
}

static void pl_watch_free(void *watch)
{
    struct pl_watch *w = watch;
    w->dead = true;
    w->read = w->write = false;
}

static void *pl_timer_add(void *loop, uint64_t ms, void (*cb)(void *arg), void *arg)
{
    struct poll_loop *pl = loop;
    struct pl_timer *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->due_ms = poll_loop_now_ms() + ms;
    t->iter = pl->iter;
    t->cb = cb;
    t->arg = arg;
    t->next = pl->timers;
    pl->timers = t;
    return t;
}

static void pl_timer_cancel(void *loop, void *timer)
{
    struct poll_loop *pl = loop;
    for (struct pl_timer **pp = &pl->timers; *pp; pp = &(*pp)->next) {
        if (*pp == timer) {
            struct pl_timer *t = *pp;
            *pp = t->next;
            free(t);
            return;
        }
    }
}

static uint64_t pl_now_ms(void *loop)
{
    (void)loop;
    return poll_loop_now_ms();
}

static const struct queue_loop_ops pl_ops = {
    .watch_new = pl_watch_new,
    .watch_set = pl_watch_set,
    .watch_free = pl_watch_free,
    .timer_add = pl_timer_add,
    .timer_cancel = pl_timer_cancel,
    .now_ms = pl_now_ms,
};

struct poll_loop *poll_loop_new(void)
{
    return calloc(1, sizeof(struct poll_loop));
}

void poll_loop_free(struct poll_loop *pl)
{
    if (pl == NULL)
        return;
    while (pl->watches) {
        struct pl_watch *w = pl->watches;
        pl->watches = w->next;
        free(w);
    }
    while (pl->timers) {
        struct pl_timer *t = pl->timers;
        pl->timers = t->next;
        free(t);
    }
    free(pl->pfds);
    free(pl->pw);
    free(pl);
}

void poll_loop_bind(struct poll_loop *pl, struct queue_loop *out)
{
    out->ops = &pl_ops;
    out->loop = pl;
}

static void reap_watches(struct poll_loop *pl)
{
    struct pl_watch **pp = &pl->watches;
    while (*pp) {
        struct pl_watch *w = *pp;
        if (w->dead) {
            *pp = w->next;
            free(w);
        } else {
            pp = &w->next;
        }
    }
}

/* fire_timers runs every timer due now that was added before this iteration; a callback may add
 * or cancel timers, so the list is searched again after each one. */
static int fire_timers(struct poll_loop *pl)
{
    int n = 0;
    for (;;) {
        uint64_t now = poll_loop_now_ms();
        struct pl_timer **pp, *t = NULL;
        for (pp = &pl->timers; *pp; pp = &(*pp)->next) {
            if ((*pp)->due_ms <= now && (*pp)->iter < pl->iter) {
                t = *pp;
                *pp = t->next;
                break;
            }
        }
        if (t == NULL)
            return n;
        void (*cb)(void *) = t->cb;
        void *arg = t->arg;
        free(t);
        cb(arg);
        n++;
    }
}

int poll_loop_run_once(struct poll_loop *pl, int max_wait_ms)
{
    size_t n = 0;
    int timeout = max_wait_ms < 0 ? 0 : max_wait_ms;
    uint64_t now = poll_loop_now_ms();
    int ran = 0;

    pl->iter++;
    for (struct pl_timer *t = pl->timers; t; t = t->next) {
        uint64_t wait = t->due_ms > now ? t->due_ms - now : 0;
        if (wait < (uint64_t)timeout)
            timeout = (int)wait;
    }
    for (struct pl_watch *w = pl->watches; w; w = w->next) {
        if (w->dead || (!w->read && !w->write))
            continue;
        if (n == pl->cap) {
            size_t cap = pl->cap ? pl->cap * 2 : 16;
            struct pollfd *pf = realloc(pl->pfds, cap * sizeof(*pf));
            if (pf == NULL)
                return -ENOMEM;
            pl->pfds = pf;
            struct pl_watch **pw = realloc(pl->pw, cap * sizeof(*pw));
            if (pw == NULL)
                return -ENOMEM;
            pl->pw = pw;
            pl->cap = cap;
        }
        pl->pfds[n].fd = w->fd;
        pl->pfds[n].events = (short)((w->read ? POLLIN : 0) | (w->write ? POLLOUT : 0));
        pl->pfds[n].revents = 0;
        pl->pw[n] = w;
        n++;
    }
    int rc = poll(pl->pfds, (nfds_t)n, timeout);
    if (rc < 0 && errno != EINTR)
        return -errno;
    for (size_t i = 0; rc > 0 && i < n; i++) {
        struct pl_watch *w = pl->pw[i];
        short re = pl->pfds[i].revents;
        unsigned ev = 0;
        if (re == 0 || w->dead)
            continue;
        if (w->read && (re & (POLLIN | POLLHUP | POLLERR | POLLNVAL)))
            ev |= QUEUE_LOOP_READABLE;
        if (w->write && (re & (POLLOUT | POLLHUP | POLLERR | POLLNVAL)))
            ev |= QUEUE_LOOP_WRITABLE;
        if (ev) {
            w->cb(w->arg, ev);
            ran++;
        }
    }
    reap_watches(pl);
    ran += fire_timers(pl);
    reap_watches(pl);
    return ran;
}

bool poll_loop_run_until(struct poll_loop *pl, bool (*done)(void *arg), void *arg,
                         uint64_t timeout_ms)
{
    uint64_t end = poll_loop_now_ms() + timeout_ms;
    for (;;) {
        if (done(arg))
            return true;
        uint64_t now = poll_loop_now_ms();
        if (now >= end)
            return false;
        uint64_t left = end - now;
        poll_loop_run_once(pl, left > 50 ? 50 : (int)left);
    }
}

void poll_loop_run_for(struct poll_loop *pl, uint64_t ms)
{
    uint64_t end = poll_loop_now_ms() + ms;
    for (uint64_t now = poll_loop_now_ms(); now < end; now = poll_loop_now_ms()) {
        uint64_t left = end - now;
        poll_loop_run_once(pl, left > 50 ? 50 : (int)left);
    }
}

void poll_loop_counts(const struct poll_loop *pl, unsigned *watches, unsigned *timers)
{
    unsigned nw = 0, nt = 0;
    for (const struct pl_watch *w = pl->watches; w; w = w->next)
        nw += !w->dead;
    for (const struct pl_timer *t = pl->timers; t; t = t->next)
        nt++;
    *watches = nw;
    *timers = nt;
}
