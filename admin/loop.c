/* admin/loop.c — the admin module's poll(2) loop thread: accept, bounded buffers, deadlines,
 * lingering close, a wake pipe for stopping. Not on the data path: it serves a few clients. */
#include "admin/loop.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* LINGER_MS bounds how long a closing connection waits for the peer's EOF after our reply. */
#define LINGER_MS 1000u
/* ACCEPTS_PER_ROUND bounds the accepts of one loop iteration (fairness to live clients). */
#define ACCEPTS_PER_ROUND 16
/* ACCEPT_PAUSE_MS is how long accepting pauses when the process is out of descriptors. */
#define ACCEPT_PAUSE_MS 100u
/* IO_CHUNK is how many octets one read takes at most. */
#define IO_CHUNK 4096

struct admin_loop {
    int listen_fd;
    int wake[2]; /* pipe: a byte in wake[0] means stop */
    pthread_t thread;
    bool started;
    atomic_bool stop;
    struct admin_loop_config cfg;
    struct admin_loop_ops ops;
    void *arg;
    struct admin_loop_conn **conns; /* cfg.conns_max slots, NULL when free */
    struct pollfd *pfds;            /* 2 + conns_max */
    uint64_t accept_pause_until;    /* after EMFILE/ENFILE: stop polling the listener a while */
};

uint64_t admin_loop_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void admin_loop_consume(struct admin_loop_conn *c, size_t n)
{
    if (n >= c->in_len) {
        c->in_len = 0;
        return;
    }
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
}

static void conn_free(struct admin_loop *l, unsigned i)
{
    struct admin_loop_conn *c = l->conns[i];
    if (c == NULL)
        return;
    if (l->ops.on_close != NULL)
        l->ops.on_close(l->arg, c);
    close(c->fd);
    admin_buf_cleanup(&c->out);
    free(c->in);
    free(c);
    l->conns[i] = NULL;
}

/* out_pending returns how many octets of |c|'s output are not sent yet. */
static size_t out_pending(const struct admin_loop_conn *c)
{
    return c->out.len - c->out_off;
}

/* flush sends what it can of |c|'s output. Returns 0, or -1 when the connection broke. */
static int flush(struct admin_loop *l, struct admin_loop_conn *c, uint64_t now)
{
    while (out_pending(c) > 0) {
        ssize_t n =
            send(c->fd, c->out.data + c->out_off, out_pending(c), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        c->out_off += (size_t)n;
        if (l->cfg.idle)
            c->deadline_ms = now + l->cfg.timeout_ms;
    }
    admin_buf_reset(&c->out);
    c->out_off = 0;
    return 0;
}

/* start_linger shuts our side down after the last reply went out and waits (briefly) for the
 * peer's EOF, discarding its input, so that unread input never turns into a reset for it. */
static void start_linger(struct admin_loop_conn *c, uint64_t now)
{
    shutdown(c->fd, SHUT_WR);
    c->lingering = true;
    c->in_len = 0;
    if (c->deadline_ms > now + LINGER_MS)
        c->deadline_ms = now + LINGER_MS;
}

/* do_read reads into |c|. Returns 0, or -1 when the connection must be closed now. */
static int do_read(struct admin_loop *l, struct admin_loop_conn *c, uint64_t now)
{
    if (c->lingering) {
        char junk[IO_CHUNK];
        for (int i = 0; i < 16; i++) {
            ssize_t n = recv(c->fd, junk, sizeof(junk), MSG_DONTWAIT);
            if (n == 0)
                return -1;
            if (n < 0)
                return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
        }
        return 0;
    }
    size_t room = l->cfg.in_max - c->in_len;
    if (room == 0 || c->eof)
        return 0;
    ssize_t n = recv(c->fd, c->in + c->in_len, room > IO_CHUNK ? IO_CHUNK : room, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        return -1;
    }
    if (n == 0)
        c->eof = true;
    c->in_len += (size_t)n;
    c->want_input = true;
    if (l->cfg.idle)
        c->deadline_ms = now + l->cfg.timeout_ms;
    return 0;
}

/* serve runs the handler on |c| while it can make progress. Returns -1 to close |c| now. */
static int serve(struct admin_loop *l, struct admin_loop_conn *c, uint64_t now)
{
    for (int rounds = 0; rounds < 4 && !c->lingering; rounds++) {
        if (out_pending(c) > 0) {
            if (flush(l, c, now) < 0)
                return -1;
            if (out_pending(c) > 0)
                return 0;
            if (c->in_len > 0 || c->eof)
                c->want_input = true;
        }
        if (c->close_after) {
            start_linger(c, now);
            return 0;
        }
        if (!c->want_input)
            return 0;
        c->want_input = false;
        size_t before = c->in_len;
        l->ops.on_input(l->arg, c);
        bool progressed = c->in_len != before || out_pending(c) > 0 || c->close_after;
        if (!progressed) {
            if (c->in_len == l->cfg.in_max || c->eof)
                return -1; /* the handler cannot use a full buffer, or nothing more will come */
            return 0;
        }
        if (c->in_len > 0 || c->eof)
            c->want_input = true;
    }
    return 0;
}

static void do_accept(struct admin_loop *l, uint64_t now)
{
    for (int k = 0; k < ACCEPTS_PER_ROUND; k++) {
        int fd = accept4(l->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            /* Out of descriptors: the listener stays readable, so pause it instead of
             * spinning. Other errors (EAGAIN, a peer that left) just end this round. */
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                l->accept_pause_until = now + ACCEPT_PAUSE_MS;
            return;
        }
        unsigned slot = l->cfg.conns_max;
        for (unsigned i = 0; i < l->cfg.conns_max; i++) {
            if (l->conns[i] == NULL) {
                slot = i;
                break;
            }
        }
        struct admin_loop_conn *c = NULL;
        if (slot < l->cfg.conns_max) {
            c = calloc(1, sizeof(*c));
            if (c != NULL && (c->in = malloc(l->cfg.in_max)) == NULL) {
                free(c);
                c = NULL;
            }
        }
        if (c == NULL) {
            if (l->cfg.busy_reply != NULL)
                (void)!send(fd, l->cfg.busy_reply, strlen(l->cfg.busy_reply),
                            MSG_NOSIGNAL | MSG_DONTWAIT);
            close(fd);
            continue;
        }
        c->fd = fd;
        admin_buf_init(&c->out, l->cfg.out_max);
        c->deadline_ms = now + l->cfg.timeout_ms;
        l->conns[slot] = c;
        l->ops.on_accept(l->arg, c);
        if (serve(l, c, now) < 0)
            conn_free(l, slot);
    }
}

static void *loop_main(void *arg)
{
    struct admin_loop *l = arg;
    unsigned map[1 + 1 + 4096]; /* pollfd index -> connection slot (conns_max <= 4094) */

    while (!atomic_load(&l->stop)) {
        uint64_t now = admin_loop_now_ms();
        uint64_t next = now + 60000u;
        nfds_t n = 0;
        l->pfds[n++] = (struct pollfd){.fd = l->wake[0], .events = POLLIN};
        bool paused = now < l->accept_pause_until;
        l->pfds[n++] = (struct pollfd){.fd = paused ? -1 : l->listen_fd, .events = POLLIN};
        if (paused && l->accept_pause_until < next)
            next = l->accept_pause_until;
        for (unsigned i = 0; i < l->cfg.conns_max; i++) {
            struct admin_loop_conn *c = l->conns[i];
            if (c == NULL)
                continue;
            short ev = 0;
            if (out_pending(c) > 0)
                ev |= POLLOUT;
            else if (c->lingering || (!c->eof && c->in_len < l->cfg.in_max))
                ev |= POLLIN;
            if (c->deadline_ms < next)
                next = c->deadline_ms;
            if ((c->want_input || c->close_after) && !c->lingering && out_pending(c) == 0)
                next = now; /* work left over from the last round */
            map[n] = i;
            l->pfds[n++] = (struct pollfd){.fd = c->fd, .events = ev};
        }
        int wait = next <= now ? 0 : (int)(next - now);
        int r = poll(l->pfds, n, wait);
        if (r < 0 && errno != EINTR)
            break;
        if (atomic_load(&l->stop))
            break;
        now = admin_loop_now_ms();
        for (nfds_t k = 2; k < n; k++) {
            unsigned i = map[k];
            struct admin_loop_conn *c = l->conns[i];
            short re = r > 0 ? l->pfds[k].revents : 0;
            int bad = 0;
            if (re & (POLLIN | POLLHUP | POLLERR))
                bad = do_read(l, c, now);
            if (bad == 0 && (re & POLLOUT) && flush(l, c, now) < 0)
                bad = -1;
            if (bad == 0)
                bad = serve(l, c, now);
            if (bad == 0 && c->deadline_ms <= now) {
                if (!c->lingering && l->ops.on_timeout != NULL) {
                    l->ops.on_timeout(l->arg, c);
                    (void)flush(l, c, now);
                }
                bad = -1;
            }
            if (bad < 0)
                conn_free(l, i);
        }
        if (r > 0 && (l->pfds[1].revents & POLLIN))
            do_accept(l, now);
    }
    return NULL;
}

struct admin_loop *admin_loop_start(int listen_fd, const struct admin_loop_config *cfg,
                                    const struct admin_loop_ops *ops, void *arg, char *err,
                                    size_t errlen)
{
    struct admin_loop *l = calloc(1, sizeof(*l));
    sigset_t all, old;

    if (l == NULL) {
        snprintf(err, errlen, "out of memory");
        close(listen_fd);
        return NULL;
    }
    l->listen_fd = listen_fd;
    l->wake[0] = l->wake[1] = -1;
    l->cfg = *cfg;
    l->ops = *ops;
    l->arg = arg;
    if (l->cfg.conns_max == 0 || l->cfg.conns_max > 4094 || l->cfg.in_max == 0 ||
        l->cfg.timeout_ms == 0) {
        snprintf(err, errlen, "bad loop limits");
        goto err;
    }
    l->conns = calloc(l->cfg.conns_max, sizeof(*l->conns));
    l->pfds = calloc(2 + (size_t)l->cfg.conns_max, sizeof(*l->pfds));
    if (l->conns == NULL || l->pfds == NULL) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    int fl = fcntl(listen_fd, F_GETFL);
    if (fl < 0 || fcntl(listen_fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        pipe2(l->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        snprintf(err, errlen, "setup: %s", strerror(errno));
        goto err;
    }
    /* The thread starts with every signal blocked: signals belong to the daemon's main thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int r = pthread_create(&l->thread, NULL, loop_main, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        snprintf(err, errlen, "pthread_create: %s", strerror(r));
        goto err;
    }
    l->started = true;
    return l;
err:
    admin_loop_stop(l);
    return NULL;
}

void admin_loop_stop(struct admin_loop *l)
{
    if (l == NULL)
        return;
    if (l->started) {
        atomic_store(&l->stop, true);
        (void)!write(l->wake[1], "x", 1);
        pthread_join(l->thread, NULL);
    }
    if (l->conns != NULL)
        for (unsigned i = 0; i < l->cfg.conns_max; i++)
            conn_free(l, i);
    if (l->wake[0] >= 0)
        close(l->wake[0]);
    if (l->wake[1] >= 0)
        close(l->wake[1]);
    if (l->listen_fd >= 0)
        close(l->listen_fd);
    free(l->conns);
    free(l->pfds);
    free(l);
}
