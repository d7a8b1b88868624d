/* admin/wait.c — admin_wait, a reference-counted fan-out/gather rendezvous (mutex, condition
 * variable on CLOCK_MONOTONIC, remaining count, per-slot done flags). Not a thread pool. */
#include "admin/admin.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct admin_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned count;
    unsigned remaining; /* tasks not done yet */
    unsigned refs;      /* remaining tasks + the waiter (while not released) */
    size_t slot_size;
    void (*slot_free)(void *slot);
    unsigned char *done; /* per task */
    unsigned char *slots;
};

struct admin_wait *admin_wait_new(unsigned count, size_t slot_size, void (*slot_free)(void *slot))
{
    if (count == 0 || count > 65536 || slot_size > (64u << 20) / count)
        return NULL;
    struct admin_wait *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    pthread_condattr_t ca;
    w->done = calloc(count, 1);
    w->slots = calloc(count, slot_size ? slot_size : 1);
    if (w->done == NULL || w->slots == NULL)
        goto err;
    if (pthread_condattr_init(&ca) != 0)
        goto err;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int r = pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (r != 0)
        goto err;
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        pthread_cond_destroy(&w->cv);
        goto err;
    }
    w->count = count;
    w->remaining = count;
    w->refs = count + 1;
    w->slot_size = slot_size;
    w->slot_free = slot_free;
    return w;
err:
    free(w->done);
    free(w->slots);
    free(w);
    return NULL;
}

static void wait_destroy(struct admin_wait *w)
{
    if (w->slot_free != NULL)
        for (unsigned i = 0; i < w->count; i++)
            w->slot_free(w->slots + (size_t)i * w->slot_size);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w->done);
    free(w->slots);
    free(w);
}

void *admin_wait_slot(struct admin_wait *w, unsigned i)
{
    if (i >= w->count)
        return NULL;
    return w->slots + (size_t)i * w->slot_size;
}

void admin_wait_done(struct admin_wait *w, unsigned i)
{
    bool last;
    pthread_mutex_lock(&w->mu);
    if (i >= w->count || w->done[i]) {
        pthread_mutex_unlock(&w->mu);
        return;
    }
    w->done[i] = 1;
    w->remaining--;
    w->refs--;
    last = w->refs == 0;
    if (w->remaining == 0)
        pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (last)
        wait_destroy(w);
}

int admin_wait_wait_ms(struct admin_wait *w, unsigned timeout_ms)
{
    struct timespec dl;
    int r = 0;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mu);
    while (w->remaining > 0 && r == 0) {
        int e = pthread_cond_timedwait(&w->cv, &w->mu, &dl);
        if (e == ETIMEDOUT)
            r = -ETIMEDOUT;
    }
    if (w->remaining > 0)
        r = -ETIMEDOUT;
    pthread_mutex_unlock(&w->mu);
    return r;
}

bool admin_wait_is_done(struct admin_wait *w, unsigned i)
{
    bool d;
    pthread_mutex_lock(&w->mu);
    d = i < w->count && w->done[i];
    pthread_mutex_unlock(&w->mu);
    return d;
}

void admin_wait_release(struct admin_wait *w)
{
    bool last;
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    w->refs--;
    last = w->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (last)
        wait_destroy(w);
}
