/* bench/bench_run.c — cmtp-bench's load: each engine worker runs a share of the sessions as an
 * io_uring client (io_connect, TLS over memory, CMTP client state machine or SMTP commands) and
 * records into its own counters and histograms; the main thread paces phases, prints progress
 * and reads /proc. Not the report and not the option parser. */
#include "bench/bench_run.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_smtp.h"
#include "core/addr.h"
#include "core/client.h"
#include "core/envelope.h"
#include "io/engine.h"
#include "tls/tls.h"

/* SENDS_MAX bounds the io_conn_send calls in flight per session (the engine's queue is
 * configured a little larger). */
#define SENDS_MAX 32u
/* IOV_MAX_RUN is how many runs of pending ciphertext one flush looks at. */
#define IOV_MAX_RUN 16u
/* PT_BUF is the per-worker plaintext scratch buffer. */
#define PT_BUF (16u * 1024u)
/* RETRY_MS is the pause before a session reconnects after a failure, so that a dead server
 * does not turn the loop into a busy one. */
#define RETRY_MS 100u
/* OPEN_TICK_MS_MAX bounds the open loop's timer period. */
#define OPEN_TICK_MS_MAX 10u
/* SMTP_CMD_MAX holds the longest pipelined command group: MAIL, RCPT and DATA lines. */
#define SMTP_CMD_MAX (3u * (BENCH_NAME_MAX + 32u))
/* QUIT_GRACE_MS is how long the main thread waits past the end (plus --timeout) for sessions
 * to finish before it stops the engine. */
#define QUIT_GRACE_MS 2000u
#define NONE UINT32_MAX

static const char SMTP_STARTTLS[] = "STARTTLS\r\n";
static const char SMTP_QUIT[] = "QUIT\r\n";
static const char SMTP_RSET[] = "RSET\r\n";

const char *bench_err_name(enum bench_err e)
{
    static const char *const names[BENCH_ERR_COUNT] = {
        "connect", "tls", "temp", "perm", "protocol", "timeout", "closed",
    };
    return (unsigned)e < BENCH_ERR_COUNT ? names[e] : "?";
}

/* ---- shared state ---- */

/* shared is what every worker reads; immutable once the workers run, except the atomics. */
struct shared {
    const struct bench_opts *o;
    const struct bench_bodies *bodies;
    struct tls_ctx *tls;  /* CMTP */
    struct tls_ctx *stls; /* SMTP */
    struct cmtp_addr from, rcpt;
    char ehlo_cmd[BENCH_NAME_MAX + 16];
    size_t ehlo_len;
    char run_id[12];
    uint64_t t0_ns;      /* start of the run */
    uint64_t measure_ns; /* end of the warm-up */
    uint64_t end_ns;     /* end of the measured interval (duration mode), else UINT64_MAX */
    atomic_uint workers_done;
    atomic_uint idle_settled; /* --idle: sessions that got their greeting or failed */
    atomic_bool stopping;     /* the main thread is stopping the engine */
};

/* sstate is a session's phase. */
enum sstate {
    S_IDLE = 0,      /* no connection, nothing to do right now */
    S_WAIT_CONNECT,  /* queued behind --connect-max */
    S_CONNECTING,    /* TCP connect in progress */
    S_SMTP_BANNER,   /* SMTP: waiting for 220 */
    S_SMTP_EHLO1,    /* SMTP: first EHLO sent */
    S_SMTP_STARTTLS, /* SMTP: STARTTLS sent */
    S_HANDSHAKE,     /* TLS handshake */
    S_SMTP_EHLO2,    /* SMTP: EHLO inside TLS */
    S_GREETING,      /* CMTP: waiting for the greeting */
    S_READY,         /* session open, no transaction */
    S_TXN,           /* a message in flight */
    S_QUIT,          /* QUIT sent */
    S_CLOSING,       /* io_conn_close or abort issued, on_close awaited */
    S_DONE,          /* no more work */
};

/* smtp_step is where an SMTP transaction stands. */
enum smtp_step {
    SM_MAIL = 0, /* MAIL FROM reply awaited */
    SM_RCPT,
    SM_DATA,
    SM_DOT,  /* final reply awaited */
    SM_RSET, /* RSET after a failed transaction */
};

struct worker;

/* slot is one session: at most one connection at a time, reused for the next one. */
struct slot {
    struct worker *bw;
    uint32_t idx;
    enum sstate st;
    struct io_conn *c;
    struct tls_conn *tls;
    struct tls_conn *stls;
    struct cmtp_client *cli;
    struct bench_smtp_reader *smtp;
    struct cmtp_envelope *env; /* allocated at the first message */
    struct tls_session *sess;  /* --resume: the last ticket */
    size_t inflight_bytes;
    unsigned inflight_sends;
    bool tls_on;      /* ciphertext phase */
    bool hs_done;     /* handshake noted */
    bool pacing;      /* holds one of the worker's --connect-max tokens */
    bool err_counted; /* this connection's failure was counted */
    bool local_close; /* we closed it on purpose */
    bool smtp_pipelining;
    bool idle_counted; /* --idle: counted in idle_open */
    bool parked;       /* open loop: on the worker's idle stack */
    uint32_t txns, txn_max;
    uint64_t msgs_left; /* closed loop, --msgs: messages this session still owes */
    /* the message in flight */
    bool in_txn, warm, in_body, end_queued, end_stamped, smtp_failed;
    const struct bench_body *body;
    uint64_t t_conn_ns, t_sched_ns, t_start_ns, t_end_ns;
    uint64_t body_off;
    size_t chunk_left;
    uint64_t seq;
    enum smtp_step sm;
    unsigned smtp_fail_code;
    char fail_text[BENCH_ERROR_TEXT_MAX]; /* SMTP: the first failing reply of the transaction */
    char cmd[SMTP_CMD_MAX];
    size_t cmd_len, cmd_off;
    size_t tail_left;
    uint32_t next_wait; /* connect queue link */
    struct io_timer *retry;
};

/* stat is a single-writer counter any thread may read. */
typedef _Atomic uint64_t stat_t;

static inline void stat_add(stat_t *a, uint64_t n)
{
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t stat_get(const stat_t *a)
{
    return atomic_load_explicit(a, memory_order_relaxed);
}

/* worker is one engine worker's share of the run. */
struct worker {
    struct shared *sh;
    struct io_worker *w;
    unsigned id;
    struct slot *slots;
    uint32_t nslots;
    uint32_t active; /* slots not S_DONE */
    struct bench_rng rng;
    uint8_t pt[PT_BUF];
    /* connect pacing */
    unsigned connecting;
    bool releasing;
    uint32_t wait_head, wait_tail;
    /* open loop */
    uint64_t interval_ns;
    uint64_t open_t0_ns;   /* first arrival: the run's start plus this worker's phase */
    uint64_t arrivals_max; /* arrivals this worker schedules in all (UINT64_MAX: by time) */
    uint64_t arrived, taken;
    uint32_t *idle_stack;
    uint32_t idle_n;
    struct io_timer *open_timer;
    bool open_over;
    /* results */
    stat_t msgs, bytes, handshakes, resumed, dups, reconnects, idle_open, last_done_ns, unsent;
    stat_t errors[BENCH_ERR_COUNT];
    struct bench_hist ack, sched, hs;
    atomic_bool done;
    atomic_bool has_error_text;
    char error_text[BENCH_ERROR_TEXT_MAX];
    _Atomic uint64_t size_max;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void slot_start(struct slot *s);
static void slot_next(struct slot *s);
static void flush(struct slot *s);
static void conn_fail(struct slot *s, enum bench_err cls, const char *what);

/* ---- errors and accounting ---- */

static void note_error(struct worker *bw, enum bench_err cls, const char *what)
{
    stat_add(&bw->errors[cls], 1);
    if (!atomic_load_explicit(&bw->has_error_text, memory_order_relaxed)) {
        snprintf(bw->error_text, sizeof(bw->error_text), "%s: %s", bench_err_name(cls), what);
        atomic_store_explicit(&bw->has_error_text, true, memory_order_release);
    }
}

static bool by_msgs(const struct shared *sh)
{
    return sh->o->msgs > 0;
}

/* time_over reports whether no new operation may start. */
static bool time_over(const struct shared *sh)
{
    return sh->end_ns != UINT64_MAX && now_ns() >= sh->end_ns;
}

/* counted reports whether an operation completing now, started at |t_start|, is measured. */
static bool counted(const struct shared *sh, uint64_t t_start, uint64_t t_now)
{
    return t_start >= sh->measure_ns && t_now <= sh->end_ns;
}

static void pacing_release(struct slot *s)
{
    struct worker *bw = s->bw;

    if (!s->pacing)
        return;
    s->pacing = false;
    bw->connecting--;
    if (bw->releasing)
        return; /* the outer call keeps draining the queue */
    bw->releasing = true;
    while (bw->wait_head != NONE && bw->connecting < bw->sh->o->connect_max) {
        struct slot *n = &bw->slots[bw->wait_head];
        bw->wait_head = n->next_wait;
        if (bw->wait_head == NONE)
            bw->wait_tail = NONE;
        n->next_wait = NONE;
        if (n->st == S_WAIT_CONNECT) {
            n->st = S_IDLE;
            slot_start(n);
        }
    }
    bw->releasing = false;
}

/* ---- sending ---- */

static size_t out_iov(struct slot *s, struct iovec *iov, size_t n)
{
    if (s->tls != NULL)
        return tls_conn_out_iov(s->tls, iov, n);
    if (s->stls != NULL)
        return tls_conn_out_iov(s->stls, iov, n);
    return 0;
}

/* flush hands the ciphertext not yet in flight to the engine, straight from the TLS chain
 * (its runs stay put until consumed, which happens in on_send_done). */
static void flush(struct slot *s)
{
    struct iovec iov[IOV_MAX_RUN];
    size_t n, skip;

    if (s->c == NULL || s->st == S_CLOSING)
        return;
    n = out_iov(s, iov, IOV_MAX_RUN);
    skip = s->inflight_bytes;
    for (size_t i = 0; i < n && s->inflight_sends < SENDS_MAX; i++) {
        uint8_t *base = iov[i].iov_base;
        size_t len = iov[i].iov_len;
        int r;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        base += skip;
        len -= skip;
        skip = 0;
        r = io_conn_send(s->c, base, len, (void *)(uintptr_t)len);
        if (r == -EAGAIN)
            break;
        if (r < 0)
            return; /* closing: on_close follows */
        s->inflight_bytes += len;
        s->inflight_sends++;
    }
}

/* plain_send sends |len| octets of stable memory (before STARTTLS). */
static void plain_send(struct slot *s, const void *p, size_t len)
{
    int r = io_conn_send(s->c, p, len, NULL);
    if (r < 0)
        conn_fail(s, BENCH_ERR_CLOSED, "send failed");
}

/* xwrite encrypts into the slot's TLS; returns octets taken or -1 on TLS failure. */
static ssize_t xwrite(struct slot *s, const uint8_t *p, size_t len)
{
    size_t w = 0;
    enum tls_result r =
        s->tls != NULL ? tls_conn_write(s->tls, p, len, &w) : tls_conn_write(s->stls, p, len, &w);
    if (r == TLS_ERROR) {
        conn_fail(s, BENCH_ERR_TLS, "write failed");
        return -1;
    }
    return (ssize_t)w;
}

/* cmtp_pump moves command lines and body octets into TLS, in the order core/client.h
 * prescribes, until TLS pushes back; on_send_done calls it again. */
static void cmtp_pump(struct slot *s)
{
    const struct shared *sh = s->bw->sh;

    for (;;) {
        const uint8_t *p;
        size_t n;
        ssize_t w;
        bool blocked = false;

        while ((n = cmtp_client_output(s->cli, &p)) > 0) {
            if ((w = xwrite(s, p, n)) < 0)
                return;
            cmtp_client_output_consume(s->cli, (size_t)w);
            if ((size_t)w < n) {
                blocked = true;
                break;
            }
        }
        if (blocked)
            break;
        if (s->in_txn && s->end_queued && !s->end_stamped) {
            s->t_end_ns = now_ns(); /* END handed to TLS: the latency clock starts */
            s->end_stamped = true;
        }
        if (s->chunk_left > 0) {
            if ((w = xwrite(s, s->body->data + s->body_off, s->chunk_left)) < 0)
                return;
            s->body_off += (size_t)w;
            s->chunk_left -= (size_t)w;
            if (s->chunk_left > 0)
                break;
        }
        if (!s->in_body)
            break;
        if (s->body_off < s->body->len) {
            const struct cmtp_greeting *g = cmtp_client_greeting(s->cli);
            uint64_t k = s->body->len - s->body_off;
            size_t cmax = sh->o->chunk != 0 ? sh->o->chunk : CMTP_CHUNK_MAX_DEFAULT;
            if (g != NULL && g->chunk_max != 0 && cmax > g->chunk_max)
                cmax = g->chunk_max;
            if (k > cmax)
                k = cmax;
            if (cmtp_client_body_header(s->cli, (size_t)k) < 0) {
                conn_fail(s, BENCH_ERR_PROTOCOL, "BODY refused by the client state machine");
                return;
            }
            s->chunk_left = (size_t)k;
            continue;
        }
        if (cmtp_client_end(s->cli) < 0) {
            conn_fail(s, BENCH_ERR_PROTOCOL, "END refused by the client state machine");
            return;
        }
        s->in_body = false;
        s->end_queued = true;
    }
    flush(s);
}

/* smtp_pump moves the pending command text, body and terminator into TLS. */
static void smtp_pump(struct slot *s)
{
    for (;;) {
        ssize_t w;
        if (s->cmd_off < s->cmd_len) {
            if ((w = xwrite(s, (const uint8_t *)s->cmd + s->cmd_off, s->cmd_len - s->cmd_off)) < 0)
                return;
            s->cmd_off += (size_t)w;
            if (s->cmd_off < s->cmd_len)
                break;
            continue;
        }
        if (s->in_body && s->body_off < s->body->smtp_len) {
            if ((w = xwrite(s, s->body->smtp + s->body_off, s->body->smtp_len - s->body_off)) < 0)
                return;
            s->body_off += (size_t)w;
            if (s->body_off < s->body->smtp_len)
                break;
            continue;
        }
        if (s->in_body && s->tail_left > 0) {
            size_t tl = strlen(s->body->smtp_tail);
            const char *t = s->body->smtp_tail + (tl - s->tail_left);
            if ((w = xwrite(s, (const uint8_t *)t, s->tail_left)) < 0)
                return;
            s->tail_left -= (size_t)w;
            if (s->tail_left > 0)
                break;
            s->in_body = false;
            s->t_end_ns = now_ns(); /* the final dot handed to TLS */
            s->end_stamped = true;
        }
        break;
    }
    flush(s);
}

static void pump(struct slot *s)
{
    if (s->c == NULL || s->st == S_CLOSING)
        return;
    if (s->cli != NULL && s->tls != NULL)
        cmtp_pump(s);
    else if (s->stls != NULL && s->hs_done)
        smtp_pump(s);
    else
        flush(s);
}

/* smtp_cmd queues command text (inside TLS). */
static void smtp_cmd(struct slot *s, const char *text, size_t len)
{
    if (len > sizeof(s->cmd))
        len = sizeof(s->cmd);
    memcpy(s->cmd, text, len);
    s->cmd_len = len;
    s->cmd_off = 0;
    smtp_pump(s);
}

/* ---- closing ---- */

/* conn_close ends the connection on purpose (graceful: queued sends go out first). */
static void conn_close(struct slot *s)
{
    if (s->c == NULL || s->st == S_CLOSING)
        return;
    s->local_close = true;
    if (s->tls != NULL && tls_conn_handshake_done(s->tls) &&
        tls_conn_close_notify(s->tls) == TLS_OK)
        flush(s);
    s->st = S_CLOSING;
    io_conn_set_deadline(s->c, s->bw->sh->o->timeout_ms);
    io_conn_close(s->c);
}

/* conn_fail counts one failure of class |cls| (the message in flight, or the connection) and
 * aborts the connection. */
static void conn_fail(struct slot *s, enum bench_err cls, const char *what)
{
    if (!s->err_counted) {
        s->err_counted = true;
        note_error(s->bw, cls, what);
        if (!s->in_txn && by_msgs(s->bw->sh) && s->bw->sh->o->mode != BENCH_MODE_OPEN &&
            s->bw->sh->o->mode != BENCH_MODE_HANDSHAKES && s->msgs_left > 0 &&
            now_ns() >= s->bw->sh->measure_ns)
            s->msgs_left--; /* a failed connection costs one message: the run ends */
        s->in_txn = false;
    }
    if (s->c == NULL || s->st == S_CLOSING)
        return;
    if (s->tls != NULL)
        flush(s); /* an alert, maybe */
    s->st = S_CLOSING;
    io_conn_abort(s->c);
}

static void tls_fail(struct slot *s)
{
    char why[160];
    if (s->tls != NULL)
        tls_conn_error_string(s->tls, why, sizeof(why));
    else if (s->stls != NULL)
        tls_conn_error_string(s->stls, why, sizeof(why));
    else
        snprintf(why, sizeof(why), "no TLS");
    conn_fail(s, BENCH_ERR_TLS, why);
}

/* ---- messages ---- */

static void set_deadline(struct slot *s)
{
    if (s->c != NULL)
        io_conn_set_deadline(s->c, s->bw->sh->o->timeout_ms);
}

/* msg_done ends the message in flight: accepted (|ok|) or failed with |cls|. */
static void msg_done(struct slot *s, bool ok, bool dup, enum bench_err cls, const char *what)
{
    struct worker *bw = s->bw;
    uint64_t t = now_ns();

    if (!s->in_txn)
        return;
    s->in_txn = false;
    s->txns++;
    if (ok) {
        if (!s->warm && counted(bw->sh, s->t_sched_ns != 0 ? s->t_sched_ns : s->t_start_ns, t)) {
            stat_add(&bw->msgs, 1);
            stat_add(&bw->bytes, s->body->len);
            if (dup)
                stat_add(&bw->dups, 1);
            bench_hist_record(&bw->ack, (t - s->t_end_ns) / 1000u);
            if (s->t_sched_ns != 0)
                bench_hist_record(&bw->sched, (t - s->t_sched_ns) / 1000u);
            atomic_store_explicit(&bw->last_done_ns, t, memory_order_relaxed);
        }
    } else {
        note_error(bw, cls, what);
    }
    if (s->c != NULL)
        io_conn_clear_deadline(s->c);
}

static void make_txid(struct slot *s, char *out, size_t size)
{
    snprintf(out, size, "%s-%02x-%06x-%llx", s->bw->sh->run_id, s->bw->id, s->idx,
             (unsigned long long)s->seq++);
}

/* msg_begin starts the next message on a READY session; |sched| is its scheduled time (open
 * loop) or 0. */
static void msg_begin(struct slot *s, uint64_t sched)
{
    struct worker *bw = s->bw;
    const struct shared *sh = bw->sh;

    s->body = bench_bodies_pick(sh->bodies, &bw->rng);
    s->t_start_ns = now_ns();
    s->t_sched_ns = sched;
    s->warm = (sched != 0 ? sched : s->t_start_ns) < sh->measure_ns;
    if (!s->warm && by_msgs(sh) && sh->o->mode == BENCH_MODE_CLOSED && s->msgs_left > 0)
        s->msgs_left--;
    s->in_txn = true;
    s->in_body = s->end_queued = s->end_stamped = s->smtp_failed = false;
    s->body_off = 0;
    s->chunk_left = 0;
    s->tail_left = 0;
    s->smtp_fail_code = 0;
    s->fail_text[0] = '\0';
    s->st = S_TXN;
    set_deadline(s);
    if (sh->o->proto == BENCH_PROTO_CMTP) {
        int r;
        if (s->env == NULL) {
            s->env = calloc(1, sizeof(*s->env));
            if (s->env == NULL) {
                conn_fail(s, BENCH_ERR_TEMP, "out of memory");
                return;
            }
            s->env->from = sh->from;
            cmtp_policy_init(&s->env->policy);
        }
        s->env->size = s->body->len;
        memcpy(s->env->digest, s->body->digest, sizeof(s->env->digest));
        make_txid(s, s->env->txid, sizeof(s->env->txid));
        r = cmtp_client_begin(s->cli, s->env, &sh->rcpt, 1);
        if (r < 0) {
            conn_fail(s, BENCH_ERR_PROTOCOL, "cmtp_client_begin refused the envelope");
            return;
        }
        cmtp_pump(s);
    } else {
        const char *f = sh->o->from, *t = sh->o->to;
        int n;
        s->sm = SM_MAIL;
        if (s->smtp_pipelining)
            n = snprintf(s->cmd, sizeof(s->cmd), "MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n", f,
                         t);
        else
            n = snprintf(s->cmd, sizeof(s->cmd), "MAIL FROM:<%s>\r\n", f);
        s->cmd_len = n > 0 ? (size_t)n : 0;
        s->cmd_off = 0;
        smtp_pump(s);
    }
}

/* quit starts the polite end of a session. */
static void quit(struct slot *s)
{
    s->st = S_QUIT;
    set_deadline(s);
    if (s->bw->sh->o->proto == BENCH_PROTO_CMTP) {
        if (s->cli == NULL || cmtp_client_quit(s->cli) < 0) {
            conn_close(s);
            return;
        }
        cmtp_pump(s);
    } else {
        smtp_cmd(s, SMTP_QUIT, sizeof(SMTP_QUIT) - 1);
    }
}

/* ---- open loop ---- */

/* open_arrivals advances the arrival count to now. */
static void open_arrivals(struct worker *bw)
{
    const struct shared *sh = bw->sh;
    uint64_t t = now_ns(), due;

    if (t < bw->open_t0_ns)
        return;
    due = (t - bw->open_t0_ns) / bw->interval_ns + 1;
    if (sh->end_ns != UINT64_MAX) {
        uint64_t lim = sh->end_ns <= bw->open_t0_ns
                           ? 0
                           : (sh->end_ns - bw->open_t0_ns + bw->interval_ns - 1) / bw->interval_ns;
        if (due > lim)
            due = lim;
    }
    if (due > bw->arrivals_max)
        due = bw->arrivals_max;
    if (due > bw->arrived)
        bw->arrived = due;
}

/* open_finished reports whether the open loop is over: every arrival was scheduled and taken,
 * or the measured interval ended (arrivals still waiting then are counted as unsent: an
 * overloaded server does not stretch the run). */
static bool open_finished(struct worker *bw)
{
    const struct shared *sh = bw->sh;
    if (time_over(sh))
        return true;
    return bw->arrived >= bw->arrivals_max && bw->taken >= bw->arrived;
}

/* open_take hands the oldest waiting arrival to |s|; false when none waits. */
static bool open_take(struct slot *s)
{
    struct worker *bw = s->bw;
    uint64_t sched;

    open_arrivals(bw);
    if (bw->taken >= bw->arrived || time_over(bw->sh))
        return false;
    sched = bw->open_t0_ns + bw->taken * bw->interval_ns;
    bw->taken++;
    msg_begin(s, sched);
    return true;
}

static void open_tick(void *arg);

static void open_arm(struct worker *bw)
{
    uint64_t next, t = now_ns(), ms;

    if (bw->open_over || bw->open_timer != NULL)
        return;
    next = bw->open_t0_ns + bw->arrived * bw->interval_ns;
    ms = next > t ? (next - t + 999999u) / 1000000u : 0;
    if (ms > OPEN_TICK_MS_MAX)
        ms = OPEN_TICK_MS_MAX;
    if (ms == 0)
        ms = 1;
    bw->open_timer = io_timer_add(bw->w, ms, open_tick, bw);
}

static void open_tick(void *arg)
{
    struct worker *bw = arg;

    bw->open_timer = NULL;
    open_arrivals(bw);
    /* Persistent sessions waiting for work take the backlog. */
    while (bw->idle_n > 0 && bw->taken < bw->arrived) {
        struct slot *s = &bw->slots[bw->idle_stack[--bw->idle_n]];
        s->parked = false;
        if (s->st == S_READY && s->c != NULL)
            open_take(s);
    }
    /* Per-connection mode: idle slots connect for the backlog. */
    if (bw->sh->o->per_conn) {
        uint64_t want = bw->arrived - bw->taken;
        for (uint32_t i = 0; i < bw->nslots && want > 0; i++) {
            struct slot *s = &bw->slots[i];
            if (s->st == S_IDLE && s->c == NULL && s->retry == NULL) {
                slot_start(s);
                want--;
            } else if (s->st == S_CONNECTING || s->st == S_HANDSHAKE || s->st == S_GREETING ||
                       s->st == S_WAIT_CONNECT || s->st == S_SMTP_BANNER || s->st == S_SMTP_EHLO1 ||
                       s->st == S_SMTP_STARTTLS || s->st == S_SMTP_EHLO2) {
                want--; /* already on its way to take one */
            }
        }
    }
    if (open_finished(bw)) {
        bw->open_over = true;
        open_arrivals(bw);
        if (bw->arrived > bw->taken) /* scheduled in the interval, never started */
            stat_add(&bw->unsent, bw->arrived - bw->taken);
        /* Wake the sessions parked idle so they quit. */
        while (bw->idle_n > 0) {
            struct slot *s = &bw->slots[bw->idle_stack[--bw->idle_n]];
            s->parked = false;
            if (s->st == S_READY && s->c != NULL)
                slot_next(s);
        }
        for (uint32_t i = 0; i < bw->nslots; i++)
            if (bw->slots[i].st == S_IDLE && bw->slots[i].c == NULL && bw->slots[i].retry == NULL)
                slot_start(&bw->slots[i]);
        return;
    }
    open_arm(bw);
}

/* ---- session flow ---- */

static void worker_check_done(struct worker *bw)
{
    if (bw->active == 0 && !atomic_load(&bw->done)) {
        if (bw->open_timer != NULL) {
            io_timer_cancel(bw->w, bw->open_timer);
            bw->open_timer = NULL;
        }
        atomic_store(&bw->done, true);
        atomic_fetch_add(&bw->sh->workers_done, 1);
    }
}

static void slot_finish(struct slot *s)
{
    if (s->st == S_DONE)
        return;
    s->st = S_DONE;
    s->bw->active--;
    worker_check_done(s->bw);
}

/* has_work reports whether slot |s| (without a connection) should open one. */
static bool has_work(struct slot *s)
{
    struct worker *bw = s->bw;
    const struct shared *sh = bw->sh;

    switch (sh->o->mode) {
    case BENCH_MODE_IDLE:
        return s->seq == 0; /* one connection per session, never reopened */
    case BENCH_MODE_OPEN:
        if (!sh->o->per_conn)
            return !open_finished(bw);
        open_arrivals(bw);
        return !open_finished(bw) && bw->taken < bw->arrived;
    case BENCH_MODE_HANDSHAKES:
    case BENCH_MODE_CLOSED:
        if (time_over(sh))
            return false;
        return !by_msgs(sh) || s->msgs_left > 0 || now_ns() < sh->measure_ns;
    }
    return false;
}

static void retry_fire(void *arg)
{
    struct slot *s = arg;
    s->retry = NULL;
    slot_start(s);
}

static void do_connect(struct slot *s)
{
    struct worker *bw = s->bw;
    const struct bench_opts *o = bw->sh->o;
    int r;

    if (atomic_load(&bw->sh->stopping)) {
        slot_finish(s);
        return;
    }
    s->t_conn_ns = now_ns();
    s->seq += (o->mode == BENCH_MODE_IDLE) ? 1 : 0;
    s->err_counted = s->local_close = s->hs_done = s->tls_on = false;
    s->inflight_bytes = 0;
    s->inflight_sends = 0;
    s->txns = 0;
    s->txn_max = UINT32_MAX;
    if (o->mode == BENCH_MODE_HANDSHAKES && by_msgs(bw->sh) && s->t_conn_ns >= bw->sh->measure_ns &&
        s->msgs_left > 0)
        s->msgs_left--;
    s->pacing = true;
    bw->connecting++;
    s->st = S_CONNECTING;
    r = io_connect(bw->w, &s->c, (const struct sockaddr *)&o->addr, o->addr_len, s, o->timeout_ms);
    if (r < 0) {
        char why[96];
        s->c = NULL;
        pacing_release(s);
        snprintf(why, sizeof(why), "io_connect: %s", strerror(-r));
        s->err_counted = true;
        note_error(bw, BENCH_ERR_CONNECT, why);
        if (by_msgs(bw->sh) && o->mode == BENCH_MODE_CLOSED && s->msgs_left > 0 &&
            now_ns() >= bw->sh->measure_ns)
            s->msgs_left--;
        s->st = S_IDLE;
        if (o->mode == BENCH_MODE_IDLE) {
            atomic_fetch_add(&bw->sh->idle_settled, 1);
            slot_finish(s);
            return;
        }
        s->retry = io_timer_add(bw->w, RETRY_MS, retry_fire, s);
        if (s->retry == NULL)
            slot_finish(s);
    }
}

/* slot_start gives a slot without a connection its next step: connect (or queue for it), or
 * finish. */
static void slot_start(struct slot *s)
{
    struct worker *bw = s->bw;

    if (s->st == S_DONE || s->c != NULL || s->retry != NULL)
        return;
    if (!has_work(s)) {
        if (bw->sh->o->mode == BENCH_MODE_OPEN && bw->sh->o->per_conn && !open_finished(bw)) {
            s->st = S_IDLE; /* the open loop's timer wakes it for the next arrival */
            return;
        }
        slot_finish(s);
        return;
    }
    if (bw->connecting >= bw->sh->o->connect_max) {
        if (s->st != S_WAIT_CONNECT) {
            s->st = S_WAIT_CONNECT;
            s->next_wait = NONE;
            if (bw->wait_tail != NONE)
                bw->slots[bw->wait_tail].next_wait = s->idx;
            else
                bw->wait_head = s->idx;
            bw->wait_tail = s->idx;
        }
        return;
    }
    do_connect(s);
}

/* slot_next decides what a READY session does next. */
static void slot_next(struct slot *s)
{
    struct worker *bw = s->bw;
    const struct shared *sh = bw->sh;
    const struct bench_opts *o = sh->o;

    s->st = S_READY;
    if (s->txns >= s->txn_max) {
        if (!time_over(sh))
            stat_add(&bw->reconnects, 1);
        quit(s);
        return;
    }
    if (o->per_conn && s->txns > 0) {
        quit(s);
        return;
    }
    if (o->mode == BENCH_MODE_OPEN) {
        if (open_take(s))
            return;
        if (open_finished(bw)) {
            quit(s);
            return;
        }
        io_conn_clear_deadline(s->c);
        if (!s->parked) {
            s->parked = true;
            bw->idle_stack[bw->idle_n++] = s->idx;
        }
        open_arm(bw);
        return;
    }
    if (!has_work(s)) {
        quit(s);
        return;
    }
    msg_begin(s, 0);
}

/* session_ready runs once the session is open (CMTP greeting, SMTP second EHLO reply). */
static void session_ready(struct slot *s)
{
    struct worker *bw = s->bw;
    struct shared *sh = bw->sh;
    uint64_t t = now_ns();

    pacing_release(s);
    if (s->t_conn_ns >= sh->measure_ns && t <= sh->end_ns) {
        stat_add(&bw->handshakes, 1);
        bench_hist_record(&bw->hs, (t - s->t_conn_ns) / 1000u);
        if (s->tls != NULL && tls_conn_resumed(s->tls))
            stat_add(&bw->resumed, 1);
        atomic_store_explicit(&bw->last_done_ns, t, memory_order_relaxed);
    }
    if (sh->o->resume && s->tls != NULL) {
        struct tls_session *ns = tls_conn_get_session(s->tls);
        if (ns != NULL) {
            tls_session_free(s->sess);
            s->sess = ns;
        }
    }
    switch (sh->o->mode) {
    case BENCH_MODE_HANDSHAKES:
        conn_close(s);
        return;
    case BENCH_MODE_IDLE:
        s->st = S_READY;
        io_conn_clear_deadline(s->c);
        stat_add(&bw->idle_open, 1);
        s->idle_counted = true;
        atomic_fetch_add(&sh->idle_settled, 1);
        /* Only the TLS state stays: the client state machine is not needed any more. */
        cmtp_client_free(s->cli);
        s->cli = NULL;
        free(s->smtp);
        s->smtp = NULL;
        return;
    case BENCH_MODE_CLOSED:
    case BENCH_MODE_OPEN:
        break;
    }
    slot_next(s);
}

/* ---- CMTP replies ---- */

static enum bench_err class_of(unsigned code)
{
    if (code >= 400 && code < 500)
        return BENCH_ERR_TEMP;
    if (code >= 500 && code < 600)
        return BENCH_ERR_PERM;
    return BENCH_ERR_PROTOCOL;
}

static void cmtp_plain(struct slot *s, const uint8_t *p, size_t n)
{
    size_t off = 0;

    while (s->c != NULL && s->st != S_CLOSING && s->cli != NULL) {
        struct cmtp_cli_event ev;
        size_t used = 0;
        enum cmtp_cli_ev k = cmtp_client_feed(s->cli, p + off, n - off, &used, &ev);
        char why[BENCH_ERROR_TEXT_MAX - 16];

        off += used;
        switch (k) {
        case CMTP_CLI_NEED_INPUT:
            return;
        case CMTP_CLI_GREETING:
            s->txn_max = ev.greeting->txn_max != 0 ? ev.greeting->txn_max : UINT32_MAX;
            atomic_store_explicit(&s->bw->size_max, ev.greeting->size_max, memory_order_relaxed);
            session_ready(s);
            break;
        case CMTP_CLI_RCPT_RESULT:
        case CMTP_CLI_BODY_READY:
            if (k == CMTP_CLI_BODY_READY) {
                s->in_body = true;
                cmtp_pump(s);
            }
            break;
        case CMTP_CLI_TXN_DONE:
            snprintf(why, sizeof(why), "%u %s %s", ev.code, ev.status, ev.text);
            if (ev.outcome == CMTP_CLI_ACCEPTED)
                msg_done(s, true, ev.dup, BENCH_ERR_TEMP, "");
            else
                msg_done(s, false, false,
                         ev.outcome == CMTP_CLI_TEMPFAIL ? BENCH_ERR_TEMP : BENCH_ERR_PERM, why);
            /* A 421 (server shutting down) ends the session too: the CLOSED event that follows
             * reports it; do not begin another transaction on it. */
            if (s->c != NULL && s->st == S_TXN &&
                cmtp_client_state(s->cli) != CMTP_CLI_STATE_CLOSED)
                slot_next(s);
            break;
        case CMTP_CLI_CLOSED:
            if (s->st == S_QUIT) {
                conn_close(s);
                return;
            }
            snprintf(why, sizeof(why), "server closed: %u %s %s", ev.code, ev.status, ev.text);
            conn_fail(s, ev.code >= 600 ? BENCH_ERR_PROTOCOL : class_of(ev.code), why);
            return;
        case CMTP_CLI_PROTOCOL_ERROR:
            conn_fail(s, BENCH_ERR_PROTOCOL, "malformed or unexpected reply");
            return;
        }
    }
}

/* ---- SMTP replies ---- */

static void smtp_reply(struct slot *s, const struct bench_smtp_reply *r)
{
    const struct shared *sh = s->bw->sh;
    char why[BENCH_ERROR_TEXT_MAX - 16];

    snprintf(why, sizeof(why), "%u %s", r->code, r->text);
    switch (s->st) {
    case S_SMTP_BANNER:
        if (r->code != 220) {
            conn_fail(s, class_of(r->code), why);
            return;
        }
        s->st = S_SMTP_EHLO1;
        set_deadline(s);
        plain_send(s, sh->ehlo_cmd, sh->ehlo_len);
        return;
    case S_SMTP_EHLO1:
        if (r->code != 250) {
            conn_fail(s, class_of(r->code), why);
            return;
        }
        if (!r->starttls) {
            conn_fail(s, BENCH_ERR_PROTOCOL, "the server does not announce STARTTLS");
            return;
        }
        s->st = S_SMTP_STARTTLS;
        set_deadline(s);
        plain_send(s, SMTP_STARTTLS, sizeof(SMTP_STARTTLS) - 1);
        return;
    case S_SMTP_EHLO2:
        if (r->code != 250) {
            conn_fail(s, class_of(r->code), why);
            return;
        }
        s->smtp_pipelining = r->pipelining;
        session_ready(s);
        return;
    case S_QUIT:
        conn_close(s);
        return;
    case S_TXN:
        break;
    default:
        conn_fail(s, BENCH_ERR_PROTOCOL, "unexpected reply");
        return;
    }
    set_deadline(s);
    switch (s->sm) {
    case SM_MAIL:
    case SM_RCPT:
        if (r->code != 250 && r->code != 251 && s->smtp_fail_code == 0) {
            s->smtp_fail_code = r->code;
            snprintf(s->fail_text, sizeof(s->fail_text), "%s", why);
        }
        if (s->sm == SM_MAIL) {
            s->sm = SM_RCPT;
            if (!s->smtp_pipelining) {
                if (s->smtp_fail_code != 0)
                    goto rset;
                int n = snprintf(s->cmd, sizeof(s->cmd), "RCPT TO:<%s>\r\n", sh->o->to);
                smtp_cmd(s, s->cmd, (size_t)n);
            }
        } else {
            s->sm = SM_DATA;
            if (!s->smtp_pipelining) {
                if (s->smtp_fail_code != 0)
                    goto rset;
                smtp_cmd(s, "DATA\r\n", 6);
            }
        }
        return;
    case SM_DATA:
        if (r->code == 354) {
            s->sm = SM_DOT;
            s->in_body = true;
            s->body_off = s->smtp_fail_code != 0 ? s->body->smtp_len : 0; /* failed: just "." */
            s->tail_left = strlen(s->body->smtp_tail);
            s->cmd_len = s->cmd_off = 0;
            smtp_pump(s);
            return;
        }
        if (s->smtp_fail_code == 0) {
            s->smtp_fail_code = r->code;
            snprintf(s->fail_text, sizeof(s->fail_text), "%s", why);
        }
        goto rset;
    case SM_DOT:
        if (s->smtp_fail_code != 0)
            msg_done(s, false, false, class_of(s->smtp_fail_code), s->fail_text);
        else if (r->code == 250) {
            msg_done(s, true, false, BENCH_ERR_TEMP, "");
        } else {
            msg_done(s, false, false, class_of(r->code), why);
        }
        if (s->c != NULL && s->st == S_TXN)
            slot_next(s);
        return;
    case SM_RSET:
        msg_done(s, false, false, class_of(s->smtp_fail_code), s->fail_text);
        if (s->c != NULL && s->st == S_TXN)
            slot_next(s);
        return;
    }
    return;
rset:
    s->sm = SM_RSET;
    smtp_cmd(s, SMTP_RSET, sizeof(SMTP_RSET) - 1);
}

static void smtp_plain(struct slot *s, const uint8_t *p, size_t n)
{
    size_t off = 0;

    while (off < n && s->c != NULL && s->st != S_CLOSING && s->smtp != NULL) {
        struct bench_smtp_reply r;
        size_t used = 0;
        enum bench_smtp_rd k = bench_smtp_read(s->smtp, p + off, n - off, &used, &r);
        off += used;
        if (k == BENCH_SMTP_AGAIN)
            return;
        if (k == BENCH_SMTP_BAD) {
            conn_fail(s, BENCH_ERR_PROTOCOL, "malformed SMTP reply");
            return;
        }
        if (s->st == S_SMTP_STARTTLS) {
            if (r.code != 220) {
                char why[64];
                snprintf(why, sizeof(why), "STARTTLS refused: %u", r.code);
                conn_fail(s, class_of(r.code), why);
                return;
            }
            if (off != n) {
                conn_fail(s, BENCH_ERR_PROTOCOL, "data after the STARTTLS reply");
                return;
            }
            s->stls = tls_conn_new_client(s->bw->sh->stls, s->bw->sh->o->verify_name);
            if (s->stls == NULL) {
                conn_fail(s, BENCH_ERR_TLS, "out of memory");
                return;
            }
            s->tls_on = true;
            s->st = S_HANDSHAKE;
            set_deadline(s);
            if (tls_conn_feed(s->stls, NULL, 0) == TLS_ERROR) {
                tls_fail(s);
                return;
            }
            flush(s);
            return;
        }
        smtp_reply(s, &r);
    }
}

/* ---- engine callbacks ---- */

static void deliver(struct slot *s, const uint8_t *p, size_t n)
{
    if (s->bw->sh->o->proto == BENCH_PROTO_CMTP)
        cmtp_plain(s, p, n);
    else
        smtp_plain(s, p, n);
}

/* handshake_done runs when the TLS handshake completed. */
static void handshake_done(struct slot *s)
{
    s->hs_done = true;
    set_deadline(s);
    if (s->bw->sh->o->proto == BENCH_PROTO_CMTP) {
        s->st = S_GREETING;
    } else {
        s->st = S_SMTP_EHLO2;
        smtp_cmd(s, s->bw->sh->ehlo_cmd, s->bw->sh->ehlo_len);
    }
}

static void on_data(struct io_conn *c, const uint8_t *data, size_t len)
{
    struct slot *s = io_conn_ctx(c);
    struct worker *bw = s->bw;
    enum tls_result r;

    if (s->st == S_CLOSING || s->st == S_DONE)
        return;
    if (!s->tls_on) {
        smtp_plain(s, data, len);
        return;
    }
    r = s->tls != NULL ? tls_conn_feed(s->tls, data, len) : tls_conn_feed(s->stls, data, len);
    if (r == TLS_ERROR) {
        tls_fail(s);
        return;
    }
    if (r == TLS_CLOSED) {
        if (s->st == S_QUIT)
            conn_close(s);
        else
            conn_fail(s, BENCH_ERR_CLOSED, "close_notify from the server");
        return;
    }
    if (r == TLS_AGAIN) {
        flush(s);
        return;
    }
    if (!s->hs_done)
        handshake_done(s);
    for (;;) {
        size_t n = 0;
        if (s->c == NULL || s->st == S_CLOSING)
            return;
        r = s->tls != NULL ? tls_conn_read(s->tls, bw->pt, sizeof(bw->pt), &n)
                           : tls_conn_read(s->stls, bw->pt, sizeof(bw->pt), &n);
        if (r == TLS_OK) {
            deliver(s, bw->pt, n);
            continue;
        }
        if (r == TLS_AGAIN)
            break;
        if (r == TLS_CLOSED) {
            if (s->st == S_QUIT)
                conn_close(s);
            else
                conn_fail(s, BENCH_ERR_CLOSED, "close_notify from the server");
            return;
        }
        tls_fail(s);
        return;
    }
    pump(s);
}

static void on_send_done(struct io_conn *c, void *cookie, int res)
{
    struct slot *s = io_conn_ctx(c);
    size_t len = (size_t)(uintptr_t)cookie;

    if (cookie == NULL) /* a plaintext SMTP command from stable memory */
        return;
    s->inflight_sends--;
    if (res < 0)
        return; /* the connection is going down: on_close follows */
    s->inflight_bytes -= len;
    if (s->tls != NULL)
        tls_conn_out_consume(s->tls, len);
    else if (s->stls != NULL)
        tls_conn_out_consume(s->stls, len);
    pump(s);
}

static void on_connect(struct io_conn *c, int res)
{
    struct slot *s = io_conn_ctx(c);
    const struct shared *sh = s->bw->sh;
    char why[96];

    if (res < 0) {
        snprintf(why, sizeof(why), "connect: %s", strerror(-res));
        conn_fail(s, res == -ETIMEDOUT ? BENCH_ERR_TIMEOUT : BENCH_ERR_CONNECT, why);
        return;
    }
    {
        /* Like any pipelining mail client: the short END (or final dot) after a large body
         * must not wait for the server's delayed ACK (Nagle). */
        int one = 1;
        setsockopt(io_conn_fd(c), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    set_deadline(s);
    if (sh->o->proto == BENCH_PROTO_SMTP) {
        s->smtp = calloc(1, sizeof(*s->smtp));
        if (s->smtp == NULL) {
            conn_fail(s, BENCH_ERR_CONNECT, "out of memory");
            return;
        }
        bench_smtp_reader_init(s->smtp);
        s->st = S_SMTP_BANNER;
        return;
    }
    s->tls = tls_conn_new_client(sh->tls, sh->o->verify_name);
    s->cli = cmtp_client_new(NULL);
    if (s->tls == NULL || s->cli == NULL) {
        conn_fail(s, BENCH_ERR_TLS, "out of memory");
        return;
    }
    if (s->sess != NULL && tls_conn_set_session(s->tls, s->sess) < 0) {
        tls_session_free(s->sess);
        s->sess = NULL;
    }
    s->tls_on = true;
    s->st = S_HANDSHAKE;
    if (tls_conn_feed(s->tls, NULL, 0) == TLS_ERROR) {
        tls_fail(s);
        return;
    }
    flush(s);
}

static void on_timeout(struct io_conn *c)
{
    struct slot *s = io_conn_ctx(c);
    static const char *const what[] = {
        [S_CONNECTING] = "connect",      [S_SMTP_BANNER] = "banner",
        [S_SMTP_EHLO1] = "EHLO reply",   [S_SMTP_STARTTLS] = "STARTTLS reply",
        [S_HANDSHAKE] = "TLS handshake", [S_SMTP_EHLO2] = "EHLO reply",
        [S_GREETING] = "greeting",       [S_TXN] = "reply",
        [S_QUIT] = "QUIT reply",         [S_CLOSING] = "close",
    };
    const char *w =
        (unsigned)s->st < sizeof(what) / sizeof(what[0]) && what[s->st] ? what[s->st] : "server";
    char why[64];

    if (s->st == S_CLOSING || s->st == S_QUIT) {
        /* Ending anyway: no error, just stop waiting. */
        s->local_close = true;
        s->st = S_CLOSING;
        io_conn_abort(c);
        return;
    }
    snprintf(why, sizeof(why), "timed out waiting for the %s", w);
    conn_fail(s, BENCH_ERR_TIMEOUT, why);
}

static void on_close(struct io_conn *c, int reason)
{
    struct slot *s = io_conn_ctx(c);
    struct worker *bw = s->bw;
    const struct bench_opts *o = bw->sh->o;
    bool failed;

    (void)c;
    pacing_release(s);
    if (s->st == S_QUIT && (reason == IO_CLOSE_EOF || reason == -ECONNRESET))
        s->local_close = true; /* the server closed after QUIT, before we did: fine */
    if (reason != IO_CLOSE_SHUTDOWN && !s->local_close && !s->err_counted) {
        char why[96];
        snprintf(why, sizeof(why), "connection closed (%s)",
                 reason == IO_CLOSE_EOF ? "end of stream" : strerror(-reason));
        conn_fail(s, reason == IO_CLOSE_TIMEOUT ? BENCH_ERR_TIMEOUT : BENCH_ERR_CLOSED, why);
    }
    failed = s->err_counted;
    if (s->idle_counted) {
        s->idle_counted = false;
        stat_add(&bw->idle_open, (uint64_t)-1);
    } else if (o->mode == BENCH_MODE_IDLE && reason != IO_CLOSE_SHUTDOWN) {
        atomic_fetch_add(&bw->sh->idle_settled, 1); /* failed before its greeting */
    }
    if (s->in_txn && reason == IO_CLOSE_SHUTDOWN)
        s->in_txn = false; /* the run was stopped: not the server's fault */
    s->c = NULL;
    tls_conn_free(s->tls);
    s->tls = NULL;
    tls_conn_free(s->stls);
    s->stls = NULL;
    cmtp_client_free(s->cli);
    s->cli = NULL;
    free(s->smtp);
    s->smtp = NULL;
    s->in_txn = s->in_body = false;
    if (s->st == S_DONE)
        return;
    s->st = S_IDLE;
    if (reason == IO_CLOSE_SHUTDOWN || o->mode == BENCH_MODE_IDLE) {
        slot_finish(s);
        return;
    }
    if (failed) {
        s->retry = io_timer_add(bw->w, RETRY_MS, retry_fire, s);
        if (s->retry == NULL)
            slot_finish(s);
        return;
    }
    slot_start(s);
}

/* ---- worker lifecycle ---- */

static void *worker_init(struct io_worker *w, void *arg)
{
    struct worker *workers = arg;
    struct worker *bw = &workers[io_worker_id(w)];
    bw->w = w;
    return bw;
}

static void worker_fini(struct io_worker *w, void *ctx)
{
    struct worker *bw = ctx;
    if (bw->open_timer != NULL) {
        io_timer_cancel(w, bw->open_timer);
        bw->open_timer = NULL;
    }
    for (uint32_t i = 0; i < bw->nslots; i++) {
        struct slot *s = &bw->slots[i];
        if (s->retry != NULL) {
            io_timer_cancel(w, s->retry);
            s->retry = NULL;
        }
    }
}

/* worker_go runs on the worker thread: every slot takes its first step. */
static void worker_go(void *arg)
{
    struct worker *bw = arg;

    if (bw->sh->o->mode == BENCH_MODE_OPEN) {
        /* Workers interleave their schedules: together they make one even arrival stream. */
        bw->open_t0_ns = bw->sh->t0_ns + bw->interval_ns * bw->id / bw->sh->o->threads;
        open_arm(bw);
        if (bw->sh->o->per_conn)
            return; /* slots connect when arrivals come */
    }
    for (uint32_t i = 0; i < bw->nslots; i++)
        slot_start(&bw->slots[i]);
    worker_check_done(bw);
}

static int worker_setup(struct worker *bw, struct shared *sh, unsigned id, uint32_t n,
                        uint64_t arrivals)
{
    const struct bench_opts *o = sh->o;

    bw->sh = sh;
    bw->id = id;
    bw->nslots = n;
    bw->active = n;
    bw->wait_head = bw->wait_tail = NONE;
    bench_rng_seed(&bw->rng, o->seed * 1000003u + id);
    bw->slots = calloc(n > 0 ? n : 1, sizeof(*bw->slots));
    bw->idle_stack = calloc(n > 0 ? n : 1, sizeof(*bw->idle_stack));
    if (bw->slots == NULL || bw->idle_stack == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        struct slot *s = &bw->slots[i];
        s->bw = bw;
        s->idx = i;
        s->next_wait = NONE;
        s->txn_max = UINT32_MAX;
        /* --msgs per session in the closed loop (and per session in handshake mode). */
        s->msgs_left = o->msgs;
    }
    if (o->mode == BENCH_MODE_OPEN) {
        double rate_w = o->rate / (double)o->threads;
        bw->interval_ns = (uint64_t)(1e9 / rate_w);
        if (bw->interval_ns == 0)
            bw->interval_ns = 1;
        bw->arrivals_max = arrivals;
    }
    return 0;
}

static void worker_cleanup(struct worker *bw)
{
    if (bw->slots != NULL) {
        for (uint32_t i = 0; i < bw->nslots; i++) {
            free(bw->slots[i].env);
            tls_session_free(bw->slots[i].sess);
        }
    }
    free(bw->slots);
    free(bw->idle_stack);
}

/* ---- main thread ---- */

static void raise_nofile(unsigned want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < (rlim_t)want + 64)
        fprintf(stderr,
                "cmtp-bench: warning: the file descriptor limit (%llu) is below the %u "
                "connections asked for\n",
                (unsigned long long)rl.rlim_cur, want);
}

static void sleep_until(uint64_t t)
{
    for (;;) {
        uint64_t n = now_ns();
        struct timespec ts;
        if (n >= t)
            return;
        ts.tv_sec = (time_t)((t - n) / 1000000000u);
        ts.tv_nsec = (long)((t - n) % 1000000000u);
        nanosleep(&ts, NULL);
    }
}

/* snap is one reading of the CPU clocks. */
struct snap {
    uint64_t self_us;
    uint64_t srv_us[BENCH_SERVER_PIDS_MAX];
    bool srv_ok[BENCH_SERVER_PIDS_MAX];
};

static void take_snap(const struct bench_opts *o, struct bench_result *res, struct snap *sn)
{
    sn->self_us = bench_proc_self_cpu_us();
    for (unsigned i = 0; i < o->n_server_pids; i++)
        sn->srv_ok[i] = bench_proc_cpu_us(o->server_pids[i], o->server_tree[i], &sn->srv_us[i],
                                          res->servers[i].name, sizeof(res->servers[i].name)) == 0;
}

static uint64_t sum_stat(struct worker *ws, unsigned n, size_t off)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < n; i++)
        t += stat_get((const stat_t *)((const char *)&ws[i] + off));
    return t;
}

#define SUM(field) sum_stat(ws, nw, offsetof(struct worker, field))

static uint64_t sum_errors(struct worker *ws, unsigned nw)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < nw; i++)
        for (unsigned k = 0; k < BENCH_ERR_COUNT; k++)
            t += stat_get(&ws[i].errors[k]);
    return t;
}

static void progress(const struct bench_opts *o, struct worker *ws, unsigned nw,
                     struct bench_hist *tmp, uint64_t t0, uint64_t *last_ops, uint64_t measure_ns)
{
    uint64_t t = now_ns();
    bool hs = o->mode == BENCH_MODE_HANDSHAKES || o->mode == BENCH_MODE_IDLE;
    uint64_t ops = hs ? SUM(handshakes) : SUM(msgs);
    uint64_t errs = sum_errors(ws, nw), conns = 0;

    bench_hist_reset(tmp);
    for (unsigned i = 0; i < nw; i++) {
        bench_hist_add(tmp, hs ? &ws[i].hs : &ws[i].ack);
        if (ws[i].w != NULL)
            conns += io_worker_conn_count(ws[i].w);
    }
    if (o->mode == BENCH_MODE_IDLE)
        fprintf(stderr, "[%6.1fs] open %llu/%u  errors %llu\n", (double)(t - t0) / 1e9,
                (unsigned long long)SUM(idle_open), o->conns, (unsigned long long)errs);
    else
        fprintf(stderr, "[%6.1fs]%s %8llu %s/s  total %llu  errors %llu  p99 %.2f ms  conns %llu\n",
                (double)(t - t0) / 1e9, t < measure_ns ? " warm-up" : "",
                (unsigned long long)(ops - *last_ops), hs ? "hs" : "msg", (unsigned long long)ops,
                (unsigned long long)errs, (double)bench_hist_percentile(tmp, 99.0) / 1000.0,
                (unsigned long long)conns);
    *last_ops = ops;
}

static bool all_done(struct shared *sh, unsigned nw)
{
    return atomic_load(&sh->workers_done) >= nw;
}

int bench_run(const struct bench_opts *o, const struct bench_bodies *bodies,
              struct bench_result *res, char *err, size_t errlen)
{
    struct shared *sh = calloc(1, sizeof(*sh));
    struct worker *ws = NULL;
    struct io_engine *eng = NULL;
    struct io_engine_config cfg;
    struct io_conn_ops ops = {
        .worker_init = worker_init,
        .worker_fini = worker_fini,
        .on_data = on_data,
        .on_send_done = on_send_done,
        .on_timeout = on_timeout,
        .on_close = on_close,
        .on_connect = on_connect,
    };
    struct bench_hist *tmp = NULL;
    struct snap s0 = {0}, s1 = {0};
    unsigned nw = o->threads;
    uint64_t t_end_measure = 0, last_ops = 0, next_progress;
    int rc = -EINVAL, post_rc = 0;

    memset(res, 0, sizeof(*res));
    res->ack = calloc(1, sizeof(*res->ack));
    res->sched = calloc(1, sizeof(*res->sched));
    res->hs = calloc(1, sizeof(*res->hs));
    tmp = calloc(1, sizeof(*tmp));
    ws = calloc(nw, sizeof(*ws));
    if (sh == NULL || ws == NULL || tmp == NULL || res->ack == NULL || res->sched == NULL ||
        res->hs == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    sh->o = o;
    sh->bodies = bodies;
    res->body_mean = bench_bodies_mean(bodies);
    res->n_servers = o->n_server_pids;
    for (unsigned i = 0; i < o->n_server_pids; i++) {
        res->servers[i].pid = o->server_pids[i];
        res->servers[i].tree = o->server_tree[i];
    }
    if (cmtp_addr_parse(&sh->from, o->from, strlen(o->from), CMTP_ADDR_BARE) != CMTP_ADDR_OK ||
        cmtp_addr_parse(&sh->rcpt, o->to, strlen(o->to), CMTP_ADDR_BARE) != CMTP_ADDR_OK) {
        snprintf(err, errlen, "bad --from or --to");
        goto out;
    }
    sh->ehlo_len = (size_t)snprintf(sh->ehlo_cmd, sizeof(sh->ehlo_cmd), "EHLO %s\r\n", o->ehlo);
    {
        static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";
        uint8_t rnd[10];
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
            uint64_t t = now_ns();
            memcpy(rnd, &t, sizeof(t));
            rnd[8] = rnd[9] = 0;
        }
        for (size_t i = 0; i < sizeof(rnd); i++)
            sh->run_id[i] = b32[rnd[i] & 31];
        sh->run_id[sizeof(rnd)] = '\0';
    }
    if (o->proto == BENCH_PROTO_CMTP) {
        struct tls_client_config tc = {.ca_file = o->ca_file};
        sh->tls = tls_client_ctx_new(&tc, err, errlen);
        if (sh->tls == NULL)
            goto out;
    } else {
        sh->stls = tls_client_ctx_new(
            &(struct tls_client_config){.ca_file = o->ca_file, .no_alpn = true}, err, errlen);
        if (sh->stls == NULL)
            goto out;
    }
    raise_nofile(o->conns);

    /* Split the sessions (and open-loop arrivals) between the workers. */
    {
        uint64_t total_arrivals = UINT64_MAX;
        if (o->mode == BENCH_MODE_OPEN && o->msgs > 0) {
            /* warm-up arrivals come on top of --msgs measured ones */
            total_arrivals = o->msgs + (uint64_t)(o->warmup_s * o->rate + 0.999999);
        }
        for (unsigned i = 0; i < nw; i++) {
            uint32_t n = o->conns / nw + (i < o->conns % nw ? 1 : 0);
            uint64_t arr = UINT64_MAX;
            if (total_arrivals != UINT64_MAX)
                arr = total_arrivals / nw + (i < total_arrivals % nw ? 1 : 0);
            rc = worker_setup(&ws[i], sh, i, n, arr);
            if (rc < 0) {
                snprintf(err, errlen, "out of memory");
                goto out;
            }
        }
    }

    io_engine_config_default(&cfg);
    cfg.workers = nw;
    cfg.conn_max = o->conns + 8u * nw + 16u;
    cfg.send_queue_max = SENDS_MAX + 8u;
    cfg.timer_max = o->conns / nw + 64u;
    eng = io_engine_new(&cfg, &ops, ws, err, errlen);
    if (eng == NULL) {
        rc = -EINVAL;
        goto out;
    }
    if (o->mode == BENCH_MODE_IDLE)
        for (unsigned i = 0; i < o->n_server_pids; i++)
            res->servers[i].rss_ok =
                bench_proc_rss_kib(o->server_pids[i], &res->servers[i].rss_before_kib) == 0;
    rc = io_engine_start(eng);
    if (rc < 0) {
        snprintf(err, errlen, "io_engine_start: %s", strerror(-rc));
        goto out;
    }
    sh->t0_ns = now_ns();
    sh->measure_ns = sh->t0_ns + (uint64_t)(o->warmup_s * 1e9);
    sh->end_ns = o->duration_s > 0 ? sh->measure_ns + (uint64_t)(o->duration_s * 1e9) : UINT64_MAX;
    for (unsigned i = 0; i < nw; i++) {
        post_rc = io_worker_post(io_engine_worker(eng, i), worker_go, &ws[i]);
        if (post_rc < 0) {
            snprintf(err, errlen, "io_worker_post: %s", strerror(-post_rc));
            goto stop;
        }
    }
    next_progress = sh->t0_ns + 1000000000u;

    if (o->mode == BENCH_MODE_IDLE) {
        uint64_t deadline = now_ns() + (uint64_t)o->timeout_ms * 1000000u +
                            (uint64_t)o->conns * 2000000u; /* 2 ms per connection on top */
        take_snap(o, res, &s0);
        while (atomic_load(&sh->idle_settled) < o->conns && now_ns() < deadline &&
               !all_done(sh, nw)) {
            sleep_until(now_ns() + 10000000u);
            if (!o->quiet && now_ns() >= next_progress) {
                progress(o, ws, nw, tmp, sh->t0_ns, &last_ops, sh->measure_ns);
                next_progress += 1000000000u;
            }
        }
        take_snap(o, res, &s1);
        t_end_measure = now_ns();
        sleep_until(now_ns() + (uint64_t)(o->idle_hold_s * 1e9));
        res->idle_open = SUM(idle_open);
        for (unsigned i = 0; i < o->n_server_pids; i++)
            res->servers[i].rss_ok =
                res->servers[i].rss_ok &&
                bench_proc_rss_kib(o->server_pids[i], &res->servers[i].rss_after_kib) == 0;
        if (!o->quiet)
            progress(o, ws, nw, tmp, sh->t0_ns, &last_ops, sh->measure_ns);
        res->elapsed_s = (double)(t_end_measure - sh->t0_ns) / 1e9;
        goto stop;
    }

    /* Warm-up, then the measured interval. */
    while (now_ns() < sh->measure_ns && !all_done(sh, nw)) {
        uint64_t t = sh->measure_ns < next_progress ? sh->measure_ns : next_progress;
        sleep_until(t);
        if (!o->quiet && now_ns() >= next_progress) {
            progress(o, ws, nw, tmp, sh->t0_ns, &last_ops, sh->measure_ns);
            next_progress += 1000000000u;
        }
    }
    take_snap(o, res, &s0);
    for (;;) {
        uint64_t t = now_ns(), wake = t + 10000000u;
        if (all_done(sh, nw))
            break;
        if (sh->end_ns != UINT64_MAX && t >= sh->end_ns && t_end_measure == 0) {
            take_snap(o, res, &s1);
            t_end_measure = sh->end_ns;
        }
        if (t_end_measure != 0 &&
            t >= sh->end_ns + (uint64_t)(o->timeout_ms + QUIT_GRACE_MS) * 1000000u)
            break; /* sessions still busy past the grace period: stop them */
        if (!o->quiet && t >= next_progress) {
            progress(o, ws, nw, tmp, sh->t0_ns, &last_ops, sh->measure_ns);
            next_progress += 1000000000u;
        }
        if (sh->end_ns != UINT64_MAX && t < sh->end_ns && wake > sh->end_ns)
            wake = sh->end_ns;
        sleep_until(wake);
    }
    if (t_end_measure == 0) {
        /* --msgs: the interval ends with the last counted completion. */
        uint64_t last = 0;
        take_snap(o, res, &s1);
        for (unsigned i = 0; i < nw; i++) {
            uint64_t l = stat_get(&ws[i].last_done_ns);
            if (l > last)
                last = l;
        }
        t_end_measure = last > sh->measure_ns ? last : now_ns();
    }
    res->elapsed_s = (double)(t_end_measure - sh->measure_ns) / 1e9;

stop:
    atomic_store(&sh->stopping, true);
    io_engine_stop(eng);
    io_engine_join(eng);
    rc = post_rc;
    res->bench_cpu_us = s1.self_us - s0.self_us;
    for (unsigned i = 0; i < o->n_server_pids; i++) {
        res->servers[i].cpu_ok = s0.srv_ok[i] && s1.srv_ok[i];
        if (res->servers[i].cpu_ok)
            res->servers[i].cpu_us = s1.srv_us[i] - s0.srv_us[i];
    }
    res->msgs = SUM(msgs);
    res->body_bytes = SUM(bytes);
    res->handshakes = SUM(handshakes);
    res->resumed = SUM(resumed);
    res->dups = SUM(dups);
    res->reconnects = SUM(reconnects);
    res->unsent = SUM(unsent);
    for (unsigned i = 0; i < nw; i++) {
        for (unsigned k = 0; k < BENCH_ERR_COUNT; k++)
            res->errors[k] += stat_get(&ws[i].errors[k]);
        bench_hist_add(res->ack, &ws[i].ack);
        bench_hist_add(res->sched, &ws[i].sched);
        bench_hist_add(res->hs, &ws[i].hs);
        if (res->first_error[0] == '\0' && atomic_load(&ws[i].has_error_text))
            snprintf(res->first_error, sizeof(res->first_error), "%s", ws[i].error_text);
        if (res->greeting_size_max == 0)
            res->greeting_size_max = atomic_load(&ws[i].size_max);
    }
    for (unsigned k = 0; k < BENCH_ERR_COUNT; k++)
        res->errors_total += res->errors[k];
out:
    io_engine_free(eng);
    if (ws != NULL)
        for (unsigned i = 0; i < nw; i++)
            worker_cleanup(&ws[i]);
    free(ws);
    free(tmp);
    if (sh != NULL) {
        tls_ctx_unref(sh->tls);
        tls_ctx_unref(sh->stls);
    }
    free(sh);
    if (rc < 0) {
        bench_result_cleanup(res);
    }
    return rc;
}

void bench_result_cleanup(struct bench_result *res)
{
    free(res->ack);
    free(res->sched);
    free(res->hs);
    memset(res, 0, sizeof(*res));
}
