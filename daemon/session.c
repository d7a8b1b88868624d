/* daemon/session.c — one CMTP/1 server session: io_uring connection ↔ TLS ↔ core state machine
 * ↔ Redis queue. Not the protocol (core/server.c) and not the transport (io/, tls/). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/mem.h>
#include <openssl/sha.h>

#include "daemon/cmtpd.h"

/* sess_phase is where a session stands. */
enum sess_phase {
    SESS_HANDSHAKE = 0, /* TLS handshake in progress */
    SESS_OPEN,          /* CMTP session running */
    SESS_CLOSING,       /* flushing the last output, then close */
};

/* cmtpd_sess is one connection's state. Owns its TLS connection, its server state machine, its
 * input buffer (only while input waits) and its open queue transaction. */
struct cmtpd_sess {
    enum cmtpd_conn_kind kind; /* CMTPD_CONN_CMTP_SERVER; first, see cmtpd.h */
    struct cmtpd_worker *w;
    struct io_conn *c;
    struct tls_conn *tls;
    struct cmtp_server *srv;
    struct queue_txn *txn;
    struct cmtpd_sess *next, *prev; /* the worker's session list */
    uint8_t *rbuf; /* plaintext waiting for the state machine: the worker's scratch buffer
                    * while on_data runs, a buffer of its own only for what is left over */
    size_t roff, rlen;
    bool rbuf_scratch; /* rbuf is the worker's scratch buffer */
    uint32_t ip_slot;  /* this peer's slot in d->ip_conns */
    SHA256_CTX sha;
    struct queue_txn_meta meta;
    const struct cmtp_envelope *env; /* the open transaction's envelope (owned by srv) */
    uint64_t txn_deadline_ms;        /* whole-transaction deadline, 0 when none */
    uint64_t commit_start_us;        /* when the commit was sent (latency histogram) */
    enum sess_phase phase;
    bool send_inflight;  /* one io send at a time, straight from the TLS chain */
    size_t send_len;     /* octets of that send */
    bool waiting;        /* the state machine waits for Redis (commit or backpressure) */
    bool waiting_commit; /* |waiting| is for the commit (not the queue's backpressure) */
    bool txn_failed;     /* the body stream failed: answer 451 at END */
    bool closed;         /* io_conn_close called */
};

static void sess_pump(struct cmtpd_sess *s);

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const struct cmtp_log *sess_log(const struct cmtpd_sess *s)
{
    return &s->w->log;
}

void cmtpd_worker_log_flush(struct cmtpd_worker *w)
{
    if (w->log_len == 0)
        return;
    cmtp_log_sink_fd(w->d->log.arg, CMTP_LOG_INFO, w->logbuf, w->log_len);
    w->log_len = 0;
}

/* worker_log_sink appends a line to the worker's batch (flushing it first when the line does
 * not fit). */
static void worker_log_sink(void *arg, enum cmtp_log_level level, const char *line, size_t len)
{
    struct cmtpd_worker *w = arg;
    if (len > sizeof(w->logbuf) - w->log_len)
        cmtpd_worker_log_flush(w);
    if (len > sizeof(w->logbuf)) {
        cmtp_log_sink_fd(w->d->log.arg, level, line, len);
        return;
    }
    memcpy(w->logbuf + w->log_len, line, len);
    w->log_len += len;
}

void cmtpd_worker_log_init(struct cmtpd_worker *w)
{
    const struct cmtp_log *p = &w->d->log;
    if (p->sink == cmtp_log_sink_fd)
        cmtp_log_init_child(&w->log, p, worker_log_sink, w);
    else
        cmtp_log_init_child(&w->log, p, p->sink, p->arg); /* syslog: one call per line */
    w->log_len = 0;
}

/* sess_close_now closes the connection; on_close frees the session. */
static void sess_close_now(struct cmtpd_sess *s)
{
    if (s->closed)
        return;
    s->closed = true;
    s->phase = SESS_CLOSING;
    io_conn_close(s->c);
}

/* sess_send starts the next io send from the TLS chain, if none is in flight. */
static void sess_send(struct cmtpd_sess *s)
{
    const uint8_t *p;
    size_t n;
    if (s->send_inflight || s->closed)
        return;
    n = tls_conn_out_peek(s->tls, &p);
    if (n == 0) {
        if (s->phase == SESS_CLOSING)
            sess_close_now(s);
        return;
    }
    int r = io_conn_send(s->c, p, n, s);
    if (r < 0) {
        sess_close_now(s);
        return;
    }
    s->send_inflight = true;
    s->send_len = n;
}

/* sess_flush moves the state machine's replies into TLS and starts sending. Returns false when
 * TLS pushes back (the chain is full: wait for a send to complete). */
static bool sess_flush(struct cmtpd_sess *s)
{
    const uint8_t *p;
    size_t n;
    bool all = true;
    while (s->srv != NULL && (n = cmtp_server_output(s->srv, &p)) > 0) {
        size_t w = 0;
        enum tls_result r = tls_conn_write(s->tls, p, n, &w);
        if (w > 0)
            cmtp_server_output_consume(s->srv, w);
        if (r == TLS_ERROR) {
            s->phase = SESS_CLOSING;
            break;
        }
        if (r == TLS_AGAIN) {
            all = false;
            break;
        }
    }
    sess_send(s);
    return all;
}

/* sess_start_close sends what is pending, then closes. */
static void sess_start_close(struct cmtpd_sess *s)
{
    if (s->phase == SESS_CLOSING)
        return;
    s->phase = SESS_CLOSING;
    if (s->txn != NULL) {
        queue_txn_abort(s->txn);
        s->txn = NULL;
    }
    sess_flush(s);
    sess_send(s);
}

/* sess_set_deadline arms the timeout that applies in the current state. */
static void sess_set_deadline(struct cmtpd_sess *s)
{
    const struct cmtp_config *cfg = &s->w->cfg->c;
    uint64_t ms = 0;
    if (s->phase == SESS_HANDSHAKE) {
        ms = cfg->timeouts.handshake_ms;
    } else if (s->phase == SESS_OPEN) {
        switch (cmtp_server_state(s->srv)) {
        case CMTP_SRV_STATE_IDLE:
            ms = cfg->timeouts.idle_ms;
            break;
        case CMTP_SRV_STATE_COMMAND:
            ms = cfg->timeouts.command_ms;
            break;
        case CMTP_SRV_STATE_BODY:
            ms = cfg->timeouts.chunk_ms;
            break;
        case CMTP_SRV_STATE_WAIT:
        case CMTP_SRV_STATE_CLOSED:
            ms = 0;
            break;
        }
        if (cmtp_server_in_transaction(s->srv)) {
            uint64_t now = io_worker_now_ms(s->w->io);
            if (s->txn_deadline_ms == 0)
                s->txn_deadline_ms = now + cfg->timeouts.transaction_ms;
            uint64_t left = s->txn_deadline_ms > now ? s->txn_deadline_ms - now : 1;
            if (ms == 0 || left < ms)
                ms = left;
        } else {
            s->txn_deadline_ms = 0;
        }
    } else {
        ms = cfg->timeouts.command_ms; /* bound the final flush */
    }
    if (ms == 0)
        io_conn_clear_deadline(s->c);
    else
        io_conn_set_deadline(s->c, ms);
}

/* sess_rcpt_answer decides final / relay / no mailbox for one recipient from the config. */
static void sess_rcpt_answer(struct cmtpd_sess *s, const struct cmtp_addr *rcpt)
{
    const struct cmtp_config *cfg = &s->w->cfg->c;
    const struct cmtp_config_relay_domain *rd = cmtp_config_relay_for(cfg, rcpt->domain);
    if (rd != NULL) {
        /* next= names the certificate this server will verify when it carries the message on
         * (PROTOCOL.md 7.2): the next hop's host name, or the recipient's domain when the route
         * is an IP address (or a name that is not a domain, such as localhost). */
        if (rd->nexthop.kind != CMTP_CONFIG_HOST_NAME ||
            cmtp_server_rcpt_reply(s->srv, CMTP_SRV_ANSWER_RELAY, rd->nexthop.host) < 0)
            cmtp_server_rcpt_reply(s->srv, CMTP_SRV_ANSWER_RELAY, rcpt->domain);
    } else if (cmtp_config_domain_is_local(cfg, rcpt->domain))
        cmtp_server_rcpt_reply(s->srv, CMTP_SRV_ANSWER_FINAL, NULL);
    else
        cmtp_server_rcpt_reply(s->srv, CMTP_SRV_ANSWER_NO_MAILBOX, NULL);
}

static void sess_writable(void *arg)
{
    struct cmtpd_sess *s = arg;
    s->waiting = false;
    s->waiting_commit = false;
    sess_pump(s);
}

/* sess_txn_begin opens the queue transaction at the first body octet, when the recipients are
 * final. Returns false when storage is unavailable (the body is then discarded, END gets 451). */
static bool sess_txn_begin(struct cmtpd_sess *s, const struct cmtp_envelope *env)
{
    struct queue_rcpt *rcpts = NULL;
    size_t n = 0, cap = 0;
    const struct cmtp_srv_rcpt *r;
    for (uint32_t i = 1; (r = cmtp_server_rcpt(s->srv, i)) != NULL; i++) {
        if (r->status != CMTP_SRV_RCPT_FINAL && r->status != CMTP_SRV_RCPT_RELAY)
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            struct queue_rcpt *nr = realloc(rcpts, ncap * sizeof(*nr));
            if (nr == NULL) {
                free(rcpts);
                return false;
            }
            rcpts = nr;
            cap = ncap;
        }
        memset(&rcpts[n], 0, sizeof(rcpts[n]));
        rcpts[n].addr = r->addr;
        rcpts[n].role = r->status == CMTP_SRV_RCPT_RELAY ? CMTP_ROLE_RELAY : CMTP_ROLE_FINAL;
        rcpts[n].status = QUEUE_RCPT_PENDING;
        memcpy(rcpts[n].next_hop, r->next_hop, sizeof(rcpts[n].next_hop));
        n++;
    }
    if (n > 0)
        s->txn = queue_txn_begin(s->w->q, env, rcpts, n, &s->meta);
    free(rcpts);
    if (s->txn == NULL)
        return false;
    queue_txn_set_writable_cb(s->txn, sess_writable, s);
    return true;
}

static void sess_log_result(struct cmtpd_sess *s, const char *event,
                            const struct cmtp_envelope *env, const char *qid, const char *reason,
                            unsigned rcpts, bool dup)
{
    char from[CMTP_ADDR_MAX + 1];
    cmtp_addr_format(&env->from, from, sizeof(from));
    CMTP_LOG(sess_log(s), CMTP_LOG_INFO, event, cmtp_log_str("qid", qid ? qid : "-"),
             cmtp_log_str("txn", env->txid), cmtp_log_str("from", from),
             cmtp_log_uint("size", env->size), cmtp_log_uint("rcpts", rcpts),
             cmtp_log_uint("dup", dup), cmtp_log_str("peer", s->meta.peer_ip),
             cmtp_log_str("peer_id", s->meta.peer_id[0] ? s->meta.peer_id : "-"),
             cmtp_log_str("relay", cmtp_relay_name(env->policy.relay)),
             cmtp_log_str("fallback", cmtp_fallback_name(env->policy.fallback)),
             cmtp_log_uint("hops", env->policy.hops),
             cmtp_log_str("reason", reason ? reason : "-"));
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* commit_observe adds one END-to-durable-answer latency to the worker's histogram. */
static void commit_observe(struct cmtpd_worker *w, uint64_t us)
{
    static const double bounds[CMTPD_COMMIT_BUCKETS] = CMTPD_COMMIT_BOUNDS_MS;
    size_t i = 0;
    while (i < CMTPD_COMMIT_BUCKETS && (double)us > bounds[i] * 1000.0)
        i++;
    atomic_fetch_add_explicit(&w->ctr.commit_ms[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->ctr.commit_us_sum, us, memory_order_relaxed);
}

static void sess_commit_done(void *arg, const struct queue_commit_result *r)
{
    struct cmtpd_sess *s = arg;
    commit_observe(s->w, mono_us() - s->commit_start_us);
    const struct cmtp_envelope *env = NULL;
    struct cmtp_srv_end_answer a = {.result = CMTP_SRV_END_TEMPFAIL};
    s->txn = NULL; /* freed by the queue after this callback */
    s->waiting = false;
    s->waiting_commit = false;
    switch (r->status) {
    case QUEUE_COMMIT_ACCEPTED:
        a.result = CMTP_SRV_END_ACCEPTED;
        a.qid = r->qid;
        a.dup = r->dup;
        a.rcpts = r->rcpts;
        atomic_fetch_add_explicit(&s->w->ctr.accepted, 1, memory_order_relaxed);
        if (r->dup)
            atomic_fetch_add_explicit(&s->w->ctr.dups, 1, memory_order_relaxed);
        break;
    case QUEUE_COMMIT_CONFLICT:
        a.result = CMTP_SRV_END_TXN_CONFLICT;
        atomic_fetch_add_explicit(&s->w->ctr.refused, 1, memory_order_relaxed);
        break;
    case QUEUE_COMMIT_TEMPFAIL:
        atomic_fetch_add_explicit(&s->w->ctr.tempfails, 1, memory_order_relaxed);
        break;
    }
    /* The envelope stays valid until the answer: log before answering. */
    env = s->env;
    if (env != NULL)
        sess_log_result(s,
                        r->status == QUEUE_COMMIT_ACCEPTED   ? "accepted"
                        : r->status == QUEUE_COMMIT_CONFLICT ? "refused"
                                                             : "deferred",
                        env, r->qid[0] ? r->qid : NULL, r->reason[0] ? r->reason : NULL, r->rcpts,
                        r->dup);
    cmtp_server_end_reply(s->srv, &a);
    sess_pump(s);
}

/* sess_end handles CMTP_SRV_END: check the digest, then commit durably. */
static void sess_end(struct cmtpd_sess *s, const struct cmtp_srv_event *ev)
{
    uint8_t digest[CMTP_DIGEST_LEN];
    struct cmtp_srv_end_answer a = {.result = CMTP_SRV_END_TEMPFAIL};
    const char *why = "storage-unavailable";
    SHA256_Final(digest, &s->sha);
    if (CRYPTO_memcmp(digest, ev->env->digest, sizeof(digest)) != 0) {
        a.result = CMTP_SRV_END_DIGEST_MISMATCH;
        why = "digest-mismatch";
    } else if (!s->txn_failed && s->txn != NULL) {
        s->commit_start_us = mono_us();
        if (queue_txn_commit(s->txn, digest, sess_commit_done, s) == 0) {
            s->waiting = true;
            s->waiting_commit = true;
            return;
        }
    }
    if (a.result == CMTP_SRV_END_DIGEST_MISMATCH)
        atomic_fetch_add_explicit(&s->w->ctr.refused, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&s->w->ctr.tempfails, 1, memory_order_relaxed);
    sess_log_result(s, a.result == CMTP_SRV_END_DIGEST_MISMATCH ? "refused" : "deferred", ev->env,
                    NULL, why, 0, false);
    queue_txn_abort(s->txn);
    s->txn = NULL;
    cmtp_server_end_reply(s->srv, &a);
}

/* sess_run feeds buffered plaintext to the state machine until it needs input or waits. */
static void sess_run(struct cmtpd_sess *s)
{
    while (s->phase == SESS_OPEN && !s->waiting) {
        struct cmtp_srv_event ev;
        size_t used = 0;
        const uint8_t *in = s->rbuf != NULL ? s->rbuf + s->roff : NULL;
        size_t len = s->rlen - s->roff;
        enum cmtp_srv_ev k = cmtp_server_feed(s->srv, in, len, &used, &ev);
        s->roff += used;
        switch (k) {
        case CMTP_SRV_NEED_INPUT:
            return;
        case CMTP_SRV_MAIL:
            s->env = ev.env;
            s->meta.received_ms = (int64_t)wall_ms();
            s->txn_failed = false;
            SHA256_Init(&s->sha);
            if (queue_state(s->w->q, NULL) != QUEUE_CONNECTED)
                cmtp_server_mail_reply(s->srv, CMTP_SRV_MAIL_TEMPFAIL);
            else
                cmtp_server_mail_reply(s->srv, CMTP_SRV_MAIL_OK);
            break;
        case CMTP_SRV_RCPT:
            sess_rcpt_answer(s, ev.rcpt);
            break;
        case CMTP_SRV_BODY:
            atomic_fetch_add_explicit(&s->w->ctr.body_bytes, ev.len, memory_order_relaxed);
            SHA256_Update(&s->sha, ev.data, ev.len);
            if (s->txn == NULL && !s->txn_failed && !sess_txn_begin(s, ev.env))
                s->txn_failed = true;
            if (s->txn_failed)
                break;
            switch (queue_txn_append(s->txn, ev.data, ev.len)) {
            case QUEUE_OK:
                break;
            case QUEUE_AGAIN:
                s->waiting = true; /* sess_writable resumes */
                break;
            case QUEUE_TEMPFAIL:
                s->txn_failed = true;
                break;
            }
            break;
        case CMTP_SRV_END:
            sess_end(s, &ev);
            break;
        case CMTP_SRV_RESET:
            queue_txn_abort(s->txn);
            s->txn = NULL;
            s->txn_failed = false;
            s->env = NULL;
            break;
        case CMTP_SRV_CLOSE:
            sess_start_close(s);
            return;
        case CMTP_SRV_BLOCKED:
            return;
        case CMTP_SRV_FLUSH:
            if (!sess_flush(s))
                return; /* resumed by the send completion */
            break;
        }
    }
}

/* sess_unscratch gives the worker's scratch buffer back: what the state machine has not
 * consumed yet moves to a buffer of the session's own. */
static void sess_unscratch(struct cmtpd_sess *s)
{
    if (!s->rbuf_scratch)
        return;
    s->rbuf_scratch = false;
    if (s->roff == s->rlen) {
        s->rbuf = NULL;
        s->roff = s->rlen = 0;
        return;
    }
    uint8_t *own = malloc(CMTPD_RBUF_SIZE);
    if (own == NULL) {
        s->rbuf = NULL;
        s->roff = s->rlen = 0;
        sess_close_now(s);
        return;
    }
    memcpy(own, s->rbuf + s->roff, s->rlen - s->roff);
    s->rlen -= s->roff;
    s->roff = 0;
    s->rbuf = own;
}

/* sess_read decrypts everything fed so far into the input buffer and runs the session. */
static void sess_read(struct cmtpd_sess *s)
{
    for (;;) {
        size_t n = 0;
        enum tls_result r;
        if (s->rbuf == NULL) {
            /* No leftover: decrypt into the worker's scratch buffer (no allocation). */
            s->rbuf = s->w->scratch;
            s->rbuf_scratch = true;
            s->roff = s->rlen = 0;
        }
        if (s->roff > 0 && s->roff == s->rlen) {
            s->roff = s->rlen = 0;
        } else if (s->roff > 0 && s->rlen == CMTPD_RBUF_SIZE) {
            memmove(s->rbuf, s->rbuf + s->roff, s->rlen - s->roff);
            s->rlen -= s->roff;
            s->roff = 0;
        }
        if (s->rlen == CMTPD_RBUF_SIZE) {
            /* The state machine is waiting and the peer keeps pipelining past two records:
             * receive is paused, so this only happens to a peer that ignores the protocol. */
            CMTP_LOG(sess_log(s), CMTP_LOG_WARN, "input-overflow",
                     cmtp_log_str("peer", s->meta.peer_ip));
            sess_close_now(s);
            return;
        }
        r = tls_conn_read(s->tls, s->rbuf + s->rlen, CMTPD_RBUF_SIZE - s->rlen, &n);
        if (r == TLS_OK) {
            s->rlen += n;
            sess_run(s);
            continue;
        }
        if (r == TLS_AGAIN)
            break;
        if (r == TLS_ERROR) {
            char why[128];
            tls_conn_error_string(s->tls, why, sizeof(why));
            CMTP_LOG(sess_log(s), CMTP_LOG_DEBUG, "tls-error",
                     cmtp_log_str("peer", s->meta.peer_ip), cmtp_log_str("reason", why));
        }
        /* TLS_CLOSED or TLS_ERROR: nothing more will come. */
        sess_start_close(s);
        break;
    }
    sess_run(s);
    sess_unscratch(s);
}

/* sess_pump runs what can run after an event: pending input, output, deadlines, receive
 * backpressure. */
static void sess_pump(struct cmtpd_sess *s)
{
    if (s->closed)
        return;
    if (s->phase == SESS_OPEN)
        sess_run(s);
    sess_flush(s);
    if (s->closed)
        return;
    bool pending_in = s->rbuf != NULL && s->roff < s->rlen;
    bool hold_full = (pending_in && s->phase == SESS_OPEN) || (s->waiting && !s->waiting_commit) ||
                     tls_conn_out_pending(s->tls) > TLS_OUT_PENDING_MAX;
    /* Waiting for a commit alone is short and the client waits too: a lazy pause (no receive
     * cancelled and re-armed per message). Input piling up, the queue's backpressure or a peer
     * that does not read our output: a full one. */
    io_conn_hold_recv(s->c, hold_full ? IO_HOLD_FULL : s->waiting ? IO_HOLD_LAZY : IO_HOLD_NONE);
    if (!pending_in && s->rbuf != NULL && !s->rbuf_scratch) {
        OPENSSL_cleanse(s->rbuf, s->rlen);
        free(s->rbuf);
        s->rbuf = NULL;
        s->roff = s->rlen = 0;
    }
    sess_set_deadline(s);
}

void cmtpd_peer_text(const struct sockaddr_storage *ss, char *out, size_t len)
{
    out[0] = '\0';
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, out, (socklen_t)len);
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, out, (socklen_t)len);
}

/* ip_slot hashes the peer's address (FNV-1a) into the per-IP table. */
static uint32_t ip_slot(const struct sockaddr_storage *ss)
{
    const uint8_t *p = NULL;
    size_t n = 0;
    uint32_t h = 2166136261u;
    if (ss->ss_family == AF_INET) {
        p = (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr;
        n = 4;
    } else if (ss->ss_family == AF_INET6) {
        p = (const uint8_t *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
        n = 16;
    }
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h % CMTPD_IP_SLOTS;
}

static int on_accept(struct io_conn *c, void *tag)
{
    struct cmtpd_worker *w = io_worker_ctx(io_conn_worker(c));
    struct cmtpd *d = w->d;
    struct cmtpd_sess *s;
    uint32_t slot = ip_slot(io_conn_peer(c));
    if (tag == CMTPD_LISTENER_SMTP)
        return cmtpd_smtp_on_accept(c);
    if (w->draining)
        return -ESHUTDOWN;
    unsigned per_ip = w->cfg->c.server.conn_per_ip_max;
    if (atomic_fetch_add_explicit(&d->ip_conns[slot], 1, memory_order_relaxed) >= per_ip &&
        per_ip != 0) {
        atomic_fetch_sub_explicit(&d->ip_conns[slot], 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&w->ctr.ip_refused, 1, memory_order_relaxed);
        if (cmtp_log_enabled(&d->log, CMTP_LOG_DEBUG)) {
            char ip[QUEUE_IP_MAX + 1];
            cmtpd_peer_text(io_conn_peer(c), ip, sizeof(ip));
            CMTP_LOG(&d->log, CMTP_LOG_DEBUG, "conn-per-ip-limit", cmtp_log_str("peer", ip),
                     cmtp_log_uint("limit", per_ip));
        }
        return -EMFILE; /* closed at once, before any TLS byte */
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        atomic_fetch_sub_explicit(&d->ip_conns[slot], 1, memory_order_relaxed);
        return -ENOMEM;
    }
    s->ip_slot = slot;
    /* Replies are written whole; do not let Nagle hold one back behind a delayed ACK. */
    int one = 1;
    setsockopt(io_conn_fd(c), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    s->w = w;
    s->c = c;
    s->tls = tls_conn_new_server(w->tls);
    if (s->tls == NULL) {
        atomic_fetch_sub_explicit(&d->ip_conns[slot], 1, memory_order_relaxed);
        free(s);
        return -ENOMEM;
    }
    cmtpd_peer_text(io_conn_peer(c), s->meta.peer_ip, sizeof(s->meta.peer_ip));
    snprintf(s->meta.listener, sizeof(s->meta.listener), "cmtp");
    s->next = w->sessions;
    if (w->sessions != NULL)
        w->sessions->prev = s;
    w->sessions = s;
    w->n_sessions++;
    io_conn_set_ctx(c, s);
    sess_set_deadline(s);
    return 0;
}

/* sess_handshake_done starts the CMTP session once TLS is up. */
static void sess_handshake_done(struct cmtpd_sess *s)
{
    const char *id = tls_conn_peer_identity(s->tls);
    s->srv = cmtp_server_new(&s->w->srv_cfg);
    if (s->srv == NULL) {
        sess_close_now(s);
        return;
    }
    s->phase = SESS_OPEN;
    snprintf(s->meta.tls_version, sizeof(s->meta.tls_version), "%s", tls_conn_version(s->tls));
    snprintf(s->meta.tls_cipher, sizeof(s->meta.tls_cipher), "%s", tls_conn_cipher(s->tls));
    snprintf(s->meta.peer_id, sizeof(s->meta.peer_id), "%s", id ? id : "");
    atomic_fetch_add_explicit(&s->w->ctr.handshakes, 1, memory_order_relaxed);
    if (tls_conn_resumed(s->tls))
        atomic_fetch_add_explicit(&s->w->ctr.resumed, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->w->ctr.sessions, 1, memory_order_relaxed);
    if (s->w->draining) {
        cmtp_server_shutdown(s->srv);
        sess_start_close(s);
        return;
    }
    cmtp_server_start(s->srv);
}

/* conn_kind returns the owner of |c| (context kind first); a connection without a context yet
 * is a CMTP session's. */
static enum cmtpd_conn_kind conn_kind(struct io_conn *c)
{
    const enum cmtpd_conn_kind *k = io_conn_ctx(c);
    return k != NULL ? *k : CMTPD_CONN_CMTP_SERVER;
}

static void on_data(struct io_conn *c, const uint8_t *data, size_t len)
{
    switch (conn_kind(c)) {
    case CMTPD_CONN_DELIVERY:
        cmtpd_delivery_on_data(c, data, len);
        return;
    case CMTPD_CONN_SMTP_INGRESS:
        cmtpd_smtp_on_data(c, data, len);
        return;
    case CMTPD_CONN_CMTP_SERVER:
        break;
    }
    struct cmtpd_sess *s = io_conn_ctx(c);
    enum tls_result r;
    if (s->closed || s->phase == SESS_CLOSING)
        return; /* discard: the session is finishing */
    r = tls_conn_feed(s->tls, data, len);
    if (s->phase == SESS_HANDSHAKE) {
        if (r == TLS_ERROR) {
            char why[128];
            tls_conn_error_string(s->tls, why, sizeof(why));
            atomic_fetch_add_explicit(&s->w->ctr.handshakes_failed, 1, memory_order_relaxed);
            CMTP_LOG(sess_log(s), CMTP_LOG_DEBUG, "handshake-failed",
                     cmtp_log_str("peer", s->meta.peer_ip), cmtp_log_str("reason", why));
            s->phase = SESS_CLOSING; /* send the alert, then close */
            sess_send(s);
            return;
        }
        if (r == TLS_AGAIN) {
            sess_send(s);
            return;
        }
        sess_handshake_done(s);
        if (s->closed)
            return;
    }
    if (s->phase == SESS_OPEN)
        sess_read(s);
    else
        sess_read(s); /* drain what was fed, as the feed contract requires */
    sess_pump(s);
}

static void on_send_done(struct io_conn *c, void *cookie, int res)
{
    switch (conn_kind(c)) {
    case CMTPD_CONN_DELIVERY:
        cmtpd_delivery_on_send_done(c, cookie, res);
        return;
    case CMTPD_CONN_SMTP_INGRESS:
        cmtpd_smtp_on_send_done(c, cookie, res);
        return;
    case CMTPD_CONN_CMTP_SERVER:
        break;
    }
    struct cmtpd_sess *s = io_conn_ctx(c);
    (void)cookie;
    s->send_inflight = false;
    if (res < 0) {
        sess_close_now(s);
        return;
    }
    tls_conn_out_consume(s->tls, (size_t)res);
    if (s->phase == SESS_CLOSING) {
        sess_send(s);
        return;
    }
    sess_pump(s);
}

static void on_timeout(struct io_conn *c)
{
    switch (conn_kind(c)) {
    case CMTPD_CONN_DELIVERY:
        cmtpd_delivery_on_timeout(c);
        return;
    case CMTPD_CONN_SMTP_INGRESS:
        cmtpd_smtp_on_timeout(c);
        return;
    case CMTPD_CONN_CMTP_SERVER:
        break;
    }
    struct cmtpd_sess *s = io_conn_ctx(c);
    atomic_fetch_add_explicit(&s->w->ctr.timeouts, 1, memory_order_relaxed);
    CMTP_LOG(sess_log(s), CMTP_LOG_DEBUG, "timeout", cmtp_log_str("peer", s->meta.peer_ip),
             cmtp_log_str("phase", s->phase == SESS_HANDSHAKE ? "handshake" : "session"));
    if (s->phase == SESS_OPEN) {
        cmtp_server_timeout(s->srv);
        sess_start_close(s);
        return;
    }
    sess_close_now(s);
}

static void on_close(struct io_conn *c, int reason)
{
    switch (conn_kind(c)) {
    case CMTPD_CONN_DELIVERY:
        cmtpd_delivery_on_close(c, reason);
        return;
    case CMTPD_CONN_SMTP_INGRESS:
        cmtpd_smtp_on_close(c, reason);
        return;
    case CMTPD_CONN_CMTP_SERVER:
        break;
    }
    struct cmtpd_sess *s = io_conn_ctx(c);
    (void)reason;
    if (s == NULL)
        return;
    struct cmtpd_worker *w = s->w;
    atomic_fetch_sub_explicit(&w->d->ip_conns[s->ip_slot], 1, memory_order_relaxed);
    queue_txn_abort(s->txn);
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        w->sessions = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    w->n_sessions--;
    cmtp_server_free(s->srv);
    tls_conn_free(s->tls);
    if (s->rbuf != NULL && !s->rbuf_scratch) {
        OPENSSL_cleanse(s->rbuf, s->rlen);
        free(s->rbuf);
    }
    OPENSSL_cleanse(&s->sha, sizeof(s->sha));
    free(s);
    io_conn_set_ctx(c, NULL);
}

void cmtpd_worker_resume(void *arg)
{
    struct cmtpd_worker *w = arg;
    w->draining = false;
}

void cmtpd_worker_drain(void *arg)
{
    struct cmtpd_worker *w = arg;
    struct cmtpd_sess *s, *next;
    w->draining = true;
    cmtpd_smtp_drain(w);
    for (s = w->sessions; s != NULL; s = next) {
        next = s->next;
        if (s->phase == SESS_OPEN) {
            if (cmtp_server_shutdown(s->srv) == CMTP_SRV_CLOSE)
                sess_start_close(s);
            else
                sess_pump(s);
        } else if (s->phase == SESS_HANDSHAKE) {
            sess_close_now(s);
        }
    }
}

struct cmtpd_cfg *cmtpd_cfg_ref(struct cmtpd_cfg *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    return g;
}

void cmtpd_cfg_unref(struct cmtpd_cfg *g)
{
    if (g == NULL || atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1)
        return;
    tls_ctx_unref(g->smtp_tls);
    cmtp_config_free(&g->c);
    free(g);
}

void cmtpd_worker_set_cfg(struct cmtpd_worker *w, struct cmtpd_cfg *cfg, struct tls_ctx *tls)
{
    struct cmtpd_cfg *old_cfg = w->cfg;
    struct tls_ctx *old_tls = w->tls;
    w->cfg = cfg != NULL ? cmtpd_cfg_ref(cfg) : NULL;
    w->tls = tls != NULL ? tls_ctx_ref(tls) : NULL;
    if (cfg != NULL) {
        const struct cmtp_config *c = &cfg->c;
        w->srv_cfg = (struct cmtp_server_config){
            .host = w->d->hostname,
            .size_max = c->limits.size_max,
            .rcpt_max = c->limits.rcpt_max,
            .chunk_max = (uint32_t)c->limits.chunk_max,
            .txn_max = c->limits.txn_max,
            .errors_max = CMTP_ERRORS_MAX,
            .line_max = c->limits.line_max,
        };
    }
    cmtpd_cfg_unref(old_cfg);
    tls_ctx_unref(old_tls);
}

/* worker_init runs on each worker thread: its Redis queue and its TLS context reference. */
static void *worker_init(struct io_worker *io, void *engine_arg)
{
    struct cmtpd *d = engine_arg;
    struct cmtpd_worker *w = calloc(1, sizeof(*w));
    const struct cmtp_config *cfg = &d->cfg->c;
    struct queue_loop loop;
    char err[256];
    if (w == NULL)
        return NULL;
    w->d = d;
    w->io = io;
    w->id = io_worker_id(io);
    cmtpd_worker_log_init(w);
    cmtpd_worker_set_cfg(w, d->cfg, d->tls);
    char node[72];
    snprintf(node, sizeof(node), "%.56s:w%u", d->node_id, w->id);
    struct queue_config qc = {
        .address = d->redis_address,
        .password = cfg->redis.password[0] ? cfg->redis.password : NULL,
        .key_prefix = cfg->redis.key_prefix,
        .node_id = node,
        .wait_replicas = cfg->redis.wait_replicas,
        .wait_timeout_ms = (uint32_t)cfg->redis.wait_timeout_ms,
        .inflight_max = cfg->redis.inflight_max,
    };
    cmtpd_queue_loop(&loop, io);
    w->q = queue_new(&qc, &loop, err, sizeof(err));
    if (w->q == NULL) {
        CMTP_LOG(&d->log, CMTP_LOG_ERROR, "queue-setup-failed", cmtp_log_uint("worker", w->id),
                 cmtp_log_str("reason", err));
        cmtpd_worker_set_cfg(w, NULL, NULL);
        free(w);
        return NULL;
    }
    if (cmtpd_delivery_start(w, err, sizeof(err)) < 0) {
        CMTP_LOG(&d->log, CMTP_LOG_ERROR, "delivery-setup-failed", cmtp_log_uint("worker", w->id),
                 cmtp_log_str("reason", err));
        queue_free(w->q);
        cmtpd_worker_set_cfg(w, NULL, NULL);
        free(w);
        return NULL;
    }
    if (w->id < sizeof(d->workers) / sizeof(d->workers[0]))
        d->workers[w->id] = w;
    atomic_fetch_add(&d->workers_ready, 1);
    return w;
}

static void worker_fini(struct io_worker *io, void *ctx)
{
    struct cmtpd_worker *w = ctx;
    (void)io;
    if (w == NULL)
        return;
    cmtpd_delivery_stop(w);
    queue_free(w->q);
    cmtpd_worker_set_cfg(w, NULL, NULL);
    cmtpd_worker_log_flush(w);
    free(w);
}

static void worker_before_sleep(struct io_worker *io, void *ctx)
{
    (void)io;
    cmtpd_worker_log_flush(ctx);
}

static const struct io_conn_ops conn_ops = {
    .worker_init = worker_init,
    .worker_fini = worker_fini,
    .before_sleep = worker_before_sleep,
    .on_accept = on_accept,
    .on_data = on_data,
    .on_send_done = on_send_done,
    .on_timeout = on_timeout,
    .on_close = on_close,
    .on_connect = cmtpd_delivery_on_connect, /* only the delivery engine connects out */
};

const struct io_conn_ops *cmtpd_conn_ops(void)
{
    return &conn_ops;
}
