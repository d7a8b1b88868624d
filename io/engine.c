/* io/engine.c — the io_uring engine's life cycle and worker loop: configuration, listening
 * sockets, threads, rings, provided buffers, the completion dispatch, posts, drain and stop.
 * Not the connection logic (io_conn.c) nor watches and timers (io_watch.c). */
#include "io/io_internal.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* IO_QUIESCE_MS bounds how long a stopping worker waits for the kernel to return its last
 * operations before it tears the ring down anyway. */
#define IO_QUIESCE_MS 2000u

uint64_t io_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void log_line(const struct io_engine *e, const char *line)
{
    if (e->cfg.log != NULL)
        e->cfg.log(e->cfg.log_arg, line);
    else
        fprintf(stderr, "%s\n", line);
}

void io_log(const struct io_worker *w, const char *fmt, ...)
{
    char line[256];
    int n = snprintf(line, sizeof(line), "io: worker %u: ", w->id);
    va_list ap;
    if (n < 0 || (size_t)n >= sizeof(line))
        return;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    log_line(w->e, line);
}

static const char *err_text(int err)
{
    const char *s = strerrordesc_np(err < 0 ? -err : err);
    return s != NULL ? s : "unknown error";
}

/* ---- configuration ---- */

void io_engine_config_default(struct io_engine_config *cfg)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    memset(cfg, 0, sizeof(*cfg));
    cfg->workers = n > 0 ? (unsigned)(n > (long)IO_WORKERS_MAX ? IO_WORKERS_MAX : n) : 1u;
    cfg->ring_entries = IO_RING_ENTRIES_DEFAULT;
    cfg->buf_count = IO_BUF_COUNT_DEFAULT;
    cfg->buf_size = IO_BUF_SIZE_DEFAULT;
    cfg->conn_max = IO_CONN_MAX_DEFAULT;
    cfg->send_queue_max = IO_SEND_QUEUE_MAX_DEFAULT;
    cfg->tick_ms = IO_TICK_MS_DEFAULT;
    cfg->timer_max = IO_TIMER_MAX_DEFAULT;
    cfg->watch_max = IO_WATCH_MAX_DEFAULT;
    cfg->backlog = IO_BACKLOG_DEFAULT;
}

static void set_err(char *err, size_t err_len, const char *msg)
{
    if (err != NULL && err_len > 0)
        snprintf(err, err_len, "%s", msg);
}

/* config_fill replaces zero fields of |c| by the defaults and checks every limit. Returns NULL or
 * the reason. */
static const char *config_fill(struct io_engine_config *c)
{
    struct io_engine_config d;
    io_engine_config_default(&d);
    if (c->workers == 0)
        c->workers = d.workers;
    if (c->ring_entries == 0)
        c->ring_entries = d.ring_entries;
    if (c->buf_count == 0)
        c->buf_count = d.buf_count;
    if (c->buf_size == 0)
        c->buf_size = d.buf_size;
    if (c->conn_max == 0)
        c->conn_max = d.conn_max;
    if (c->send_queue_max == 0)
        c->send_queue_max = d.send_queue_max;
    if (c->tick_ms == 0)
        c->tick_ms = d.tick_ms;
    if (c->timer_max == 0)
        c->timer_max = d.timer_max;
    if (c->watch_max == 0)
        c->watch_max = d.watch_max;
    if (c->backlog == 0)
        c->backlog = d.backlog;
    if (c->workers > IO_WORKERS_MAX)
        return "workers above IO_WORKERS_MAX";
    if (c->ring_entries > IO_RING_ENTRIES_MAX)
        return "ring_entries above IO_RING_ENTRIES_MAX";
    if (c->buf_count > IO_BUF_COUNT_MAX || (c->buf_count & (c->buf_count - 1)) != 0)
        return "buf_count must be a power of two up to IO_BUF_COUNT_MAX";
    if (c->buf_size < IO_BUF_SIZE_MIN || c->buf_size > IO_BUF_SIZE_MAX)
        return "buf_size out of [IO_BUF_SIZE_MIN, IO_BUF_SIZE_MAX]";
    if (c->conn_max / c->workers > IO_CONN_MAX_MAX)
        return "conn_max per worker above IO_CONN_MAX_MAX";
    if (c->send_queue_max > IO_SEND_QUEUE_MAX_MAX)
        return "send_queue_max above IO_SEND_QUEUE_MAX_MAX";
    if (c->tick_ms > IO_TICK_MS_MAX)
        return "tick_ms above IO_TICK_MS_MAX";
    if (c->timer_max > IO_TIMER_MAX_MAX)
        return "timer_max above IO_TIMER_MAX_MAX";
    if (c->watch_max > IO_WATCH_MAX_MAX)
        return "watch_max above IO_WATCH_MAX_MAX";
    if (c->backlog > IO_BACKLOG_MAX)
        return "backlog above IO_BACKLOG_MAX";
    uint64_t per_worker = (c->conn_max + c->workers - 1) / c->workers;
    if (per_worker * c->send_queue_max > (1u << 24))
        return "conn_max / workers * send_queue_max above 2^24 send slots per worker";
    return NULL;
}

/* ---- engine ---- */

struct io_engine *io_engine_new(const struct io_engine_config *cfg, const struct io_conn_ops *ops,
                                void *arg, char *err, size_t err_len)
{
    struct io_engine *e = NULL;
    const char *why;
    unsigned i;

    if (ops == NULL || ops->on_data == NULL || ops->on_close == NULL) {
        set_err(err, err_len, "on_data and on_close are required");
        return NULL;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL)
        goto nomem;
    if (cfg != NULL)
        e->cfg = *cfg;
    why = config_fill(&e->cfg);
    if (why != NULL) {
        set_err(err, err_len, why);
        free(e);
        return NULL;
    }
    e->ops = *ops;
    e->arg = arg;
    e->nworkers = e->cfg.workers;
    if (pthread_mutex_init(&e->start_mu, NULL) != 0) {
        free(e);
        goto nomem;
    }
    if (pthread_cond_init(&e->start_cv, NULL) != 0) {
        pthread_mutex_destroy(&e->start_mu);
        free(e);
        goto nomem;
    }
    e->workers = calloc(e->nworkers, sizeof(*e->workers));
    if (e->workers == NULL)
        goto fail;
    for (i = 0; i < e->nworkers; i++) {
        struct io_worker *w = &e->workers[i];
        w->e = e;
        w->id = i;
        w->efd = -1;
        w->pend_head = w->nobuf_head = w->conn_free = w->send_free = IO_NONE32;
        w->watch_free = w->timer_free = IO_NONE32;
        for (unsigned j = 0; j <= IO_WHEEL_SLOTS; j++)
            w->wheel[j] = IO_NONE32;
        for (unsigned j = 0; j < IO_LISTEN_MAX; j++)
            w->ls[j].fd = -1;
        w->conn_cap = (e->cfg.conn_max + e->nworkers - 1) / e->nworkers;
        w->send_queue_max = e->cfg.send_queue_max;
        w->tick_ms = e->cfg.tick_ms;
        w->buf_size = e->cfg.buf_size;
        w->buf_mask = io_uring_buf_ring_mask(e->cfg.buf_count);
        w->watch_cap = e->cfg.watch_max;
        w->timer_cap = e->cfg.timer_max;
        /* Blocking on purpose: a ring read of a non-blocking eventfd would fail with EAGAIN
         * instead of waiting. Writers never block (the counter cannot reach its maximum). */
        w->efd = eventfd(0, EFD_CLOEXEC);
        if (w->efd < 0) {
            set_err(err, err_len, "eventfd failed");
            goto fail_quiet;
        }
        if (pthread_mutex_init(&w->post_mu, NULL) != 0)
            goto fail;
        w->post_mu_ok = true;
    }
    return e;
fail:
    set_err(err, err_len, "out of memory");
fail_quiet:
    io_engine_free(e);
    return NULL;
nomem:
    set_err(err, err_len, "out of memory");
    return NULL;
}

/* parse_host turns a numeric |host| into |ss|. Returns 0 or -EINVAL. */
static int parse_host(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    char buf[INET6_ADDRSTRLEN + 2];
    size_t n;
    memset(ss, 0, sizeof(*ss));
    if (host == NULL)
        return -EINVAL;
    n = strlen(host);
    if (n >= sizeof(buf))
        return -EINVAL;
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = '\0';
    } else {
        memcpy(buf, host, n + 1);
    }
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (host[0] != '[' && inet_pton(AF_INET, buf, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        *len = sizeof(*in);
        return 0;
    }
    if (inet_pton(AF_INET6, buf, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        *len = sizeof(*in6);
        return 0;
    }
    return -EINVAL;
}

/* listen_one opens one SO_REUSEPORT listening socket on |ss|. Returns the fd or -errno. */
static int listen_one(const struct sockaddr_storage *ss, socklen_t len, unsigned backlog)
{
    int one = 1;
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int err;
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        goto err;
    if (ss->ss_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
        goto err;
    if (bind(fd, (const struct sockaddr *)ss, len) < 0)
        goto err;
    if (listen(fd, (int)backlog) < 0)
        goto err;
    return fd;
err:
    err = -errno;
    close(fd);
    return err;
}

int io_engine_listen(struct io_engine *e, const char *host, uint16_t port, void *tag)
{
    struct sockaddr_storage ss;
    socklen_t len;
    unsigned i;
    int rc;

    if (e == NULL)
        return -EINVAL;
    if (e->started)
        return -EBUSY;
    if (e->nlisten >= IO_LISTEN_MAX)
        return -ENOSPC;
    rc = parse_host(host, port, &ss, &len);
    if (rc < 0)
        return rc;
    for (i = 0; i < e->nworkers; i++) {
        int fd = listen_one(&ss, len, e->cfg.backlog);
        if (fd < 0) {
            rc = fd;
            goto err;
        }
        e->workers[i].ls[e->nlisten] =
            (struct io_wlistener){.fd = fd, .state = IO_LS_IDLE, .tag = tag};
        if (i == 0 && port == 0) {
            /* Every worker's socket must share the port the kernel picked for the first. */
            struct sockaddr_storage got;
            socklen_t glen = sizeof(got);
            if (getsockname(fd, (struct sockaddr *)&got, &glen) < 0) {
                rc = -errno;
                i++;
                goto err;
            }
            port = ntohs(got.ss_family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                                  : ((struct sockaddr_in6 *)&got)->sin6_port);
            if (ss.ss_family == AF_INET)
                ((struct sockaddr_in *)&ss)->sin_port = htons(port);
            else
                ((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);
        }
    }
    e->nlisten++;
    for (i = 0; i < e->nworkers; i++)
        e->workers[i].nls = e->nlisten;
    return port;
err:
    while (i-- > 0) {
        close(e->workers[i].ls[e->nlisten].fd);
        e->workers[i].ls[e->nlisten] = (struct io_wlistener){.fd = -1};
    }
    return rc;
}

/* ---- worker: ring and buffers ---- */

struct io_uring_sqe *io_sqe(struct io_worker *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    if (sqe != NULL)
        return sqe;
    io_buf_flush(w);
    int rc = io_uring_submit(&w->ring);
    if (rc < 0)
        io_log(w, "submit with a full queue failed: %s", err_text(rc));
    return io_uring_get_sqe(&w->ring);
}

void io_buf_flush(struct io_worker *w)
{
    if (w->br_pending > 0) {
        io_uring_buf_ring_advance(w->br, w->br_pending);
        w->br_pending = 0;
    }
}

/* ring_setup creates |w|'s ring, preferring SINGLE_ISSUER|DEFER_TASKRUN, then COOP_TASKRUN,
 * then plain; a refusal is logged with the kernel's reason. */
static int ring_setup(struct io_worker *w)
{
    static const struct {
        unsigned flags;
        const char *name;
    } tiers[] = {
        {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
         "SINGLE_ISSUER|DEFER_TASKRUN"},
        {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
         "SINGLE_ISSUER|COOP_TASKRUN"},
        {0, "no setup flags"},
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof(tiers) / sizeof(tiers[0]); i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = tiers[i].flags | IORING_SETUP_CQSIZE;
        p.cq_entries = w->e->cfg.ring_entries * 4;
        rc = io_uring_queue_init_params(w->e->cfg.ring_entries, &w->ring, &p);
        if (rc == 0) {
            atomic_store(&w->ring_flags, tiers[i].flags);
            if (i > 0)
                io_log(w, "ring created with %s", tiers[i].name);
            return 0;
        }
        io_log(w, "ring setup with %s refused: %s", tiers[i].name, err_text(rc));
    }
    return rc;
}

static int bufs_setup(struct io_worker *w)
{
    unsigned count = w->e->cfg.buf_count;
    long page = sysconf(_SC_PAGESIZE);
    size_t pg = page > 0 ? (size_t)page : 4096u;
    struct io_uring_buf_reg reg;
    int rc;

    w->br_bytes = (count * sizeof(struct io_uring_buf) + pg - 1) / pg * pg;
    void *p = mmap(NULL, w->br_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        w->br = NULL;
        return -ENOMEM;
    }
    w->br = p;
    w->bufs_bytes = (size_t)count * w->buf_size;
    p = mmap(NULL, w->bufs_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        w->bufs = NULL;
        return -ENOMEM;
    }
    w->bufs = p;
    w->bmeta = calloc(count, sizeof(*w->bmeta));
    if (w->bmeta == NULL)
        return -ENOMEM;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)w->br;
    reg.ring_entries = count;
    reg.bgid = IO_BGID;
    rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
    if (rc < 0) {
        io_log(w, "provided buffer ring refused: %s", err_text(rc));
        return rc;
    }
    io_uring_buf_ring_init(w->br);
    for (unsigned i = 0; i < count; i++)
        io_buf_recycle(w, i);
    io_buf_flush(w);
    return 0;
}

static void arm_wake(struct io_worker *w)
{
    struct io_uring_sqe *sqe = io_sqe(w);
    if (sqe == NULL) {
        io_log(w, "no submission entry for the wake-up read");
        return;
    }
    io_uring_prep_read(sqe, w->efd, &w->efd_buf, sizeof(w->efd_buf), 0);
    io_uring_sqe_set_data64(sqe, io_ud(IO_OP_WAKE, 0, 0));
    w->inflight++;
    w->wake_armed = true;
}

static void arm_tick(struct io_worker *w)
{
    struct io_uring_sqe *sqe = io_sqe(w);
    if (sqe == NULL) {
        io_log(w, "no submission entry for the tick");
        return;
    }
    /* Absolute and aligned on multiples of tick_ms of CLOCK_MONOTONIC, like the wheel's ticks,
     * so that a deadline fires at most one tick late. */
    uint64_t next = (io_clock_ms() / w->tick_ms + 1) * w->tick_ms;
    w->tick_ts.tv_sec = (long long)(next / 1000u);
    w->tick_ts.tv_nsec = (long long)(next % 1000u) * 1000000;
    io_uring_prep_timeout(sqe, &w->tick_ts, 0, IORING_TIMEOUT_ABS);
    io_uring_sqe_set_data64(sqe, io_ud(IO_OP_TICK, 0, 0));
    w->inflight++;
    w->tick_armed = true;
}

/* ---- worker: listeners ---- */

static void ls_arm(struct io_worker *w, unsigned i)
{
    struct io_uring_sqe *sqe = io_sqe(w);
    if (sqe == NULL) {
        w->ls[i].state = IO_LS_IDLE;
        w->accept_retry = true;
        return;
    }
    io_uring_prep_multishot_accept(sqe, w->ls[i].fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, io_ud(IO_OP_ACCEPT, i, 0));
    w->ls[i].state = IO_LS_ARMED;
    w->inflight++;
}

static void ls_check_drained(struct io_worker *w)
{
    for (unsigned i = 0; i < w->nls; i++)
        if (w->ls[i].state != IO_LS_CLOSED)
            return;
    atomic_store(&w->drained, true);
}

static void ls_close(struct io_worker *w, unsigned i)
{
    if (w->ls[i].fd >= 0)
        close(w->ls[i].fd);
    w->ls[i].fd = -1;
    w->ls[i].state = IO_LS_CLOSED;
}

/* listeners_close cancels the accepts and closes the sockets (a socket is closed only after its
 * accept returned: the kernel holds a reference while it is in flight). */
static void listeners_close(struct io_worker *w)
{
    w->listeners_closing = true;
    for (unsigned i = 0; i < w->nls; i++) {
        struct io_wlistener *l = &w->ls[i];
        if (l->state == IO_LS_ARMED) {
            struct io_uring_sqe *sqe = io_sqe(w);
            if (sqe == NULL) {
                w->accept_retry = true; /* retried at the next tick */
                continue;
            }
            io_uring_prep_cancel64(sqe, io_ud(IO_OP_ACCEPT, i, 0), 0);
            io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0, 0));
            sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
            l->state = IO_LS_CANCELING;
        } else if (l->state == IO_LS_IDLE) {
            ls_close(w, i);
        }
    }
    ls_check_drained(w);
}

static void listeners_arm(struct io_worker *w)
{
    for (unsigned i = 0; i < w->nls; i++)
        if (w->ls[i].state == IO_LS_IDLE)
            ls_arm(w, i);
}

/* accept_failed is the cold path of a failed accept: transient errors re-arm at once, resource
 * shortages (EMFILE...) and anything unexpected at the next tick, so that a persistent error
 * cannot spin. */
static __attribute__((cold, noinline)) bool accept_failed(struct io_worker *w, unsigned i, int res)
{
    switch (res) {
    case -ECONNABORTED:
    case -EINTR:
    case -EAGAIN:
    case -EPERM: /* a firewall rule refused this one connection */
    case -EPROTO:
        return true;
    default:
        io_log(w, "accept on listener %u failed: %s (retrying next tick)", i, err_text(res));
        return false;
    }
}

static void cqe_accept(struct io_worker *w, const struct io_uring_cqe *cqe)
{
    unsigned i = io_ud_idx(cqe->user_data);
    struct io_wlistener *l;
    bool rearm = true;

    if (i >= w->nls)
        return;
    l = &w->ls[i];
    if (cqe->res >= 0)
        io_conn_accepted(w, cqe->res, l->tag);
    else if (cqe->res != -ECANCELED)
        rearm = accept_failed(w, i, cqe->res);
    if (cqe->flags & IORING_CQE_F_MORE)
        return;
    w->inflight--;
    if (w->listeners_closing) {
        ls_close(w, i);
        ls_check_drained(w);
    } else if (rearm) {
        ls_arm(w, i);
    } else {
        l->state = IO_LS_IDLE;
        w->accept_retry = true;
    }
}

/* ---- worker: wake-ups, posts, stop ---- */

static void wake(struct io_worker *w)
{
    uint64_t one = 1;
    /* Cannot fail short of a bad fd; a lost wake-up would only delay (the tick still runs). */
    if (write(w->efd, &one, sizeof(one)) != (ssize_t)sizeof(one))
        return;
}

int io_worker_post(struct io_worker *w, void (*fn)(void *arg), void *arg)
{
    struct io_post *p;
    bool was_empty;
    if (w == NULL || fn == NULL)
        return -EINVAL;
    p = malloc(sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    p->next = NULL;
    p->fn = fn;
    p->arg = arg;
    pthread_mutex_lock(&w->post_mu);
    if (w->post_closed) {
        pthread_mutex_unlock(&w->post_mu);
        free(p);
        return -ESHUTDOWN;
    }
    was_empty = w->post_head == NULL;
    if (was_empty)
        w->post_head = p;
    else
        w->post_tail->next = p;
    w->post_tail = p;
    pthread_mutex_unlock(&w->post_mu);
    /* The worker takes the list only after its eventfd read completed, so a non-empty list
     * always has a wake-up on its way. */
    if (was_empty)
        wake(w);
    return 0;
}

/* run_posts runs the queued posts; |close| also refuses later ones. */
static void run_posts(struct io_worker *w, bool close)
{
    struct io_post *p;
    pthread_mutex_lock(&w->post_mu);
    p = w->post_head;
    w->post_head = w->post_tail = NULL;
    if (close)
        w->post_closed = true;
    pthread_mutex_unlock(&w->post_mu);
    while (p != NULL) {
        struct io_post *next = p->next;
        p->fn(p->arg);
        free(p);
        p = next;
    }
}

static void begin_stop(struct io_worker *w)
{
    if (w->phase != IO_PHASE_RUN)
        return;
    w->phase = IO_PHASE_STOPPING;
    listeners_close(w);
    io_conn_stop_all(w);
}

/* begin_quiesce runs once every connection is gone: the last posts, worker_fini, then every
 * remaining operation is cancelled. */
static void begin_quiesce(struct io_worker *w)
{
    struct io_uring_sqe *sqe;
    w->phase = IO_PHASE_QUIESCE;
    run_posts(w, true);
    if (w->inited && w->e->ops.worker_fini != NULL)
        w->e->ops.worker_fini(w, w->ctx);
    w->inited = false;
    io_watch_quiesce(w);
    sqe = io_sqe(w);
    if (sqe != NULL) {
        io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0, 0));
        sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    }
}

static void cqe_wake(struct io_worker *w, const struct io_uring_cqe *cqe)
{
    unsigned req;
    w->inflight--;
    w->wake_armed = false;
    if (cqe->res < 0 && cqe->res != -ECANCELED)
        io_log(w, "wake-up read failed: %s", err_text(cqe->res));
    req = atomic_exchange(&w->req, 0u);
    if (req & IO_REQ_STOP)
        begin_stop(w);
    else if ((req & IO_REQ_DRAIN) && !w->listeners_closing)
        listeners_close(w);
    if (w->phase == IO_PHASE_QUIESCE)
        return;
    run_posts(w, false);
    if (w->phase != IO_PHASE_QUIESCE)
        arm_wake(w);
}

static void cqe_tick(struct io_worker *w, const struct io_uring_cqe *cqe)
{
    w->inflight--;
    w->tick_armed = false;
    if (w->phase == IO_PHASE_QUIESCE)
        return;
    if (cqe->res != -ETIME && cqe->res != -ECANCELED)
        io_log(w, "tick timeout failed: %s", err_text(cqe->res));
    if (w->accept_retry) {
        w->accept_retry = false;
        if (w->listeners_closing)
            listeners_close(w);
        else
            listeners_arm(w);
    }
    if (w->watch_resync)
        io_watch_resync(w);
    io_conn_wake_nobuf(w);
    arm_tick(w);
}

static void dispatch(struct io_worker *w, const struct io_uring_cqe *cqe)
{
    switch (io_ud_op(cqe->user_data)) {
    case IO_OP_RECV:
        io_conn_cqe_recv(w, cqe);
        break;
    case IO_OP_SEND:
        io_conn_cqe_send(w, cqe);
        break;
    case IO_OP_ACCEPT:
        cqe_accept(w, cqe);
        break;
    case IO_OP_CONNECT:
        io_conn_cqe_connect(w, cqe);
        break;
    case IO_OP_WATCH:
        io_watch_cqe(w, cqe);
        break;
    case IO_OP_TIMER:
        io_timer_cqe(w, cqe);
        break;
    case IO_OP_TICK:
        cqe_tick(w, cqe);
        break;
    case IO_OP_WAKE:
        cqe_wake(w, cqe);
        break;
    default: /* IO_OP_IGNORE: a cancellation that found nothing, harmless */
        break;
    }
}

/* ---- worker thread ---- */

static int worker_setup(struct io_worker *w)
{
    int rc = ring_setup(w);
    if (rc < 0)
        return rc;
    w->ring_ok = true;
    rc = bufs_setup(w);
    if (rc < 0)
        return rc;
    rc = io_conn_setup(w);
    if (rc < 0)
        return rc;
    rc = io_watch_setup(w);
    if (rc < 0)
        return rc;
    w->now_ms = io_clock_ms();
    w->wheel_tick = w->now_ms / w->tick_ms;
    arm_wake(w);
    arm_tick(w);
    return 0;
}

static void worker_teardown(struct io_worker *w)
{
    if (w->ring_ok)
        io_uring_queue_exit(&w->ring);
    w->ring_ok = false;
    if (w->bufs != NULL)
        munmap(w->bufs, w->bufs_bytes);
    w->bufs = NULL;
    if (w->br != NULL)
        munmap(w->br, w->br_bytes);
    w->br = NULL;
    free(w->bmeta);
    w->bmeta = NULL;
    io_conn_teardown(w);
    io_watch_teardown(w);
}

static void report_start(struct io_worker *w, int rc)
{
    struct io_engine *e = w->e;
    pthread_mutex_lock(&e->start_mu);
    if (rc < 0 && e->start_err == 0)
        e->start_err = rc;
    e->start_reported++;
    pthread_cond_broadcast(&e->start_cv);
    pthread_mutex_unlock(&e->start_mu);
}

static void worker_loop(struct io_worker *w)
{
    uint64_t quiesce_deadline = 0, quiesce_retry = 0;

    for (;;) {
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        int rc;

        if (w->br_pending > 0)
            io_conn_wake_nobuf(w);
        io_conn_run_pending(w);
        if (w->phase != IO_PHASE_QUIESCE) {
            /* Only when a submission entry was missing earlier (never in practice). */
            if (__builtin_expect(!w->wake_armed, 0))
                arm_wake(w);
            if (__builtin_expect(!w->tick_armed, 0))
                arm_tick(w);
        }
        if (w->phase == IO_PHASE_STOPPING && w->conn_live == 0) {
            begin_quiesce(w);
            quiesce_deadline = io_clock_ms() + IO_QUIESCE_MS;
            quiesce_retry = io_clock_ms() + 100;
            continue; /* worker_fini may have left work on the pending list */
        }
        if (w->phase == IO_PHASE_QUIESCE) {
            if (w->inflight == 0 && w->pend_head == IO_NONE32)
                break;
            if (w->now_ms >= quiesce_deadline) {
                io_log(w, "%u operations still in flight at exit", w->inflight);
                break;
            }
        }
        if (w->e->ops.before_sleep != NULL && w->inited && w->phase != IO_PHASE_QUIESCE)
            w->e->ops.before_sleep(w, w->ctx);
        io_buf_flush(w);
        if (w->pend_head != IO_NONE32 || io_timer_ready(w)) {
            rc = io_uring_submit_and_get_events(&w->ring);
        } else if (w->phase == IO_PHASE_QUIESCE) {
            struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 50 * 1000 * 1000};
            rc = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
            if (rc == -ETIME)
                rc = 0;
        } else {
            rc = io_uring_submit_and_wait(&w->ring, 1);
        }
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
            io_log(w, "submit failed: %s", err_text(rc));
        w->now_ms = io_clock_ms();
        io_uring_for_each_cqe(&w->ring, head, cqe)
        {
            dispatch(w, cqe);
            n++;
        }
        io_uring_cq_advance(&w->ring, n);
        io_conn_wheel_advance(w);
        if (io_timer_ready(w))
            io_timer_run_ready(w);
        if (w->phase == IO_PHASE_QUIESCE && w->inflight > 0 && w->now_ms >= quiesce_retry) {
            /* Something submitted after the first cancellation (a callback of the last
             * completions): cancel again. */
            struct io_uring_sqe *sqe = io_sqe(w);
            quiesce_retry = w->now_ms + 100;
            if (sqe != NULL) {
                io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
                io_uring_sqe_set_data64(sqe, io_ud(IO_OP_IGNORE, 0, 0));
                sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
            }
        }
    }
}

static void *worker_main(void *arg)
{
    struct io_worker *w = arg;
    struct io_engine *e = w->e;
    sigset_t set;
    int rc;

    /* Asynchronous signals belong to the daemon's signal thread, never to a worker. */
    sigfillset(&set);
    sigdelset(&set, SIGSEGV);
    sigdelset(&set, SIGBUS);
    sigdelset(&set, SIGFPE);
    sigdelset(&set, SIGILL);
    sigdelset(&set, SIGABRT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    rc = worker_setup(w);
    if (rc == 0 && e->ops.worker_init != NULL) {
        w->ctx = e->ops.worker_init(w, e->arg);
        if (w->ctx == NULL)
            rc = -ECANCELED;
        else
            w->inited = true;
    }
    if (rc == 0) {
        listeners_arm(w);
    }
    report_start(w, rc);
    if (rc < 0 && !w->ring_ok) {
        run_posts(w, true);
        worker_teardown(w);
        return NULL;
    }
    if (rc < 0)
        begin_stop(w);
    worker_loop(w);
    run_posts(w, true);
    for (unsigned i = 0; i < w->nls; i++)
        if (w->ls[i].state != IO_LS_CLOSED)
            ls_close(w, i);
    atomic_store(&w->drained, true);
    worker_teardown(w);
    return NULL;
}

int io_engine_start(struct io_engine *e)
{
    unsigned created = 0;
    int rc = 0;

    if (e == NULL)
        return -EINVAL;
    if (e->started)
        return -EBUSY;
    e->started = true;
    for (unsigned i = 0; i < e->nworkers; i++) {
        struct io_worker *w = &e->workers[i];
        int prc = pthread_create(&w->thread, NULL, worker_main, w);
        if (prc != 0) {
            rc = -prc;
            break;
        }
        w->thread_started = true;
        created++;
    }
    pthread_mutex_lock(&e->start_mu);
    while (e->start_reported < created)
        pthread_cond_wait(&e->start_cv, &e->start_mu);
    if (rc == 0)
        rc = e->start_err;
    pthread_mutex_unlock(&e->start_mu);
    if (rc < 0) {
        io_engine_stop(e);
        io_engine_join(e);
    }
    return rc;
}

int io_engine_drain(struct io_engine *e)
{
    if (e == NULL)
        return -EINVAL;
    for (unsigned i = 0; i < e->nworkers; i++) {
        atomic_fetch_or(&e->workers[i].req, IO_REQ_DRAIN);
        wake(&e->workers[i]);
    }
    return 0;
}

bool io_engine_drained(const struct io_engine *e)
{
    if (e == NULL)
        return false;
    for (unsigned i = 0; i < e->nworkers; i++)
        if (!atomic_load(&e->workers[i].drained))
            return false;
    return true;
}

int io_engine_stop(struct io_engine *e)
{
    if (e == NULL)
        return -EINVAL;
    for (unsigned i = 0; i < e->nworkers; i++) {
        atomic_fetch_or(&e->workers[i].req, IO_REQ_STOP);
        wake(&e->workers[i]);
    }
    return 0;
}

void io_engine_join(struct io_engine *e)
{
    if (e == NULL)
        return;
    for (unsigned i = 0; i < e->nworkers; i++) {
        struct io_worker *w = &e->workers[i];
        if (w->thread_started) {
            pthread_join(w->thread, NULL);
            w->thread_started = false;
        }
    }
}

void io_engine_free(struct io_engine *e)
{
    if (e == NULL)
        return;
    if (e->workers != NULL) {
        bool running = false;
        for (unsigned i = 0; i < e->nworkers; i++)
            running |= e->workers[i].thread_started;
        if (running) {
            io_engine_stop(e);
            io_engine_join(e);
        }
        for (unsigned i = 0; i < e->nworkers; i++) {
            struct io_worker *w = &e->workers[i];
            for (unsigned j = 0; j < IO_LISTEN_MAX; j++)
                if (w->ls[j].fd >= 0)
                    close(w->ls[j].fd);
            if (w->efd >= 0)
                close(w->efd);
            /* Posts to a worker that never ran: dropped without running. */
            while (w->post_head != NULL) {
                struct io_post *p = w->post_head;
                w->post_head = p->next;
                free(p);
            }
            if (w->post_mu_ok)
                pthread_mutex_destroy(&w->post_mu);
        }
        free(e->workers);
    }
    pthread_cond_destroy(&e->start_cv);
    pthread_mutex_destroy(&e->start_mu);
    free(e);
}

unsigned io_engine_worker_count(const struct io_engine *e)
{
    return e != NULL ? e->nworkers : 0;
}

struct io_worker *io_engine_worker(struct io_engine *e, unsigned i)
{
    if (e == NULL || i >= e->nworkers)
        return NULL;
    return &e->workers[i];
}

int io_engine_post_all(struct io_engine *e, void (*fn)(void *arg), void *arg)
{
    if (e == NULL)
        return -EINVAL;
    for (unsigned i = 0; i < e->nworkers; i++) {
        int rc = io_worker_post(&e->workers[i], fn, arg);
        if (rc < 0)
            return rc;
    }
    return 0;
}

void io_worker_stats(const struct io_worker *w, struct io_worker_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (w == NULL)
        return;
    out->accepted = atomic_load_explicit(&w->st.accepted, memory_order_relaxed);
    out->refused = atomic_load_explicit(&w->st.refused, memory_order_relaxed);
    out->rejected = atomic_load_explicit(&w->st.rejected, memory_order_relaxed);
    out->connects = atomic_load_explicit(&w->st.connects, memory_order_relaxed);
    out->closed = atomic_load_explicit(&w->st.closed, memory_order_relaxed);
    out->bytes_in = atomic_load_explicit(&w->st.bytes_in, memory_order_relaxed);
    out->bytes_out = atomic_load_explicit(&w->st.bytes_out, memory_order_relaxed);
    out->enobufs = atomic_load_explicit(&w->st.enobufs, memory_order_relaxed);
    out->conns = atomic_load_explicit(&w->st.conns, memory_order_relaxed);
}

void io_engine_stats(const struct io_engine *e, struct io_worker_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (e == NULL)
        return;
    for (unsigned i = 0; i < e->nworkers; i++) {
        struct io_worker_stats s;
        io_worker_stats(&e->workers[i], &s);
        out->accepted += s.accepted;
        out->refused += s.refused;
        out->rejected += s.rejected;
        out->connects += s.connects;
        out->closed += s.closed;
        out->bytes_in += s.bytes_in;
        out->bytes_out += s.bytes_out;
        out->enobufs += s.enobufs;
        out->conns += s.conns;
    }
}

void *io_worker_ctx(const struct io_worker *w)
{
    return w->ctx;
}

struct io_engine *io_worker_engine(const struct io_worker *w)
{
    return w->e;
}

unsigned io_worker_id(const struct io_worker *w)
{
    return w->id;
}

unsigned io_worker_conn_count(const struct io_worker *w)
{
    return (unsigned)atomic_load_explicit(&w->st.conns, memory_order_relaxed);
}

uint64_t io_worker_now_ms(const struct io_worker *w)
{
    return w->now_ms;
}

unsigned io_worker_ring_flags(const struct io_worker *w)
{
    return atomic_load(&w->ring_flags);
}
