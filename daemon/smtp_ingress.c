/* daemon/smtp_ingress.c — the internal SMTP ingress: one ESMTP session of the provider's own MTA
 * (Postfix, say) over the io_uring engine, with optional STARTTLS, to the Redis queue. Not the
 * protocol (core/smtp_server.c) and not the transports (io/, tls/). docs/SMTP-INGRESS.md. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "core/smtp_server.h"
#include "daemon/cmtpd.h"
#include "daemon/delivery_internal.h"

/* How it works:
 *
 * - A connection on an [smtp_ingress] listener from outside trusted_networks gets
 *   `554 5.7.1 Access denied` and is closed: nothing else is read.
 * - Input is plaintext until STARTTLS, then TLS (the [tls] certificate on a context without
 *   ALPN). Either way the octets land in |in| (one receive's worth at most: receiving pauses
 *   whenever the state machine leaves input unconsumed) and core/smtp_server consumes them.
 * - MAIL answers 451 while Redis is down; every syntactically valid RCPT is accepted (routing
 *   decides at delivery, where failures become DSNs). The queue transaction opens at the first
 *   body octet without a size (queue_txn_begin_unsized) and takes the body as it streams, with
 *   the queue's backpressure pausing the peer; the end of data commits it with the SHA-256
 *   computed on the way, and `250 2.0.0 Ok: queued as <qid>` is sent only after the durable
 *   commit.
 * - The message's CMTP policy, member by member: the CMTP-POLICY= parameter of MAIL, then a
 *   CMTP-Policy: header field (when [smtp_ingress] policy_header; found in the first
 *   SI_HEADER_MAX octets of the header section), then [smtp_ingress] sender_policy for the
 *   sender's domain (or a parent), then policy_relay / policy_fallback / policy_hops.
 * - The stored envelope gets a fresh random TXN (SMTP has none: a client's retry after a lost
 *   reply makes a second copy, as with any SMTP server), meta.listener "smtp" (so that failures
 *   are reported with an RFC 3464 DSN) and the client's address and TLS parameters. */

/* SI_IN_MAX bounds the plaintext input held: one receive buffer or TLS read's worth. */
#define SI_IN_MAX (64 * 1024)

/* SI_HEADER_MAX is how much of the header section is searched for a CMTP-Policy: field. */
#define SI_HEADER_MAX (16 * 1024)

/* si_phase is where a session stands. */
enum si_phase {
    SI_PLAIN = 0, /* plaintext SMTP */
    SI_HANDSHAKE, /* STARTTLS answered; the TLS handshake runs once the 220 is sent */
    SI_TLS,       /* SMTP inside TLS */
    SI_CLOSING,   /* flushing the last output, then close */
};

/* cmtpd_smtp is one SMTP ingress connection. Owns its state machine, its TLS connection, its
 * buffers and its open queue transaction. */
struct cmtpd_smtp {
    enum cmtpd_conn_kind kind; /* CMTPD_CONN_SMTP_INGRESS; first, see cmtpd.h */
    struct cmtpd_worker *w;
    struct io_conn *c;
    struct cmtp_smtps *sm;
    struct tls_conn *tls;           /* after STARTTLS */
    struct cmtpd_cfg *cfg;          /* the configuration this session started with (a ref) */
    struct cmtpd_smtp *next, *prev; /* the worker's SMTP session list */
    enum si_phase phase;
    bool handshake_started;

    uint8_t *in; /* plaintext input not consumed yet (SI_IN_MAX), NULL when none */
    size_t in_off, in_len;
    uint8_t out[CMTP_SMTPS_OUT_MAX]; /* plaintext output being sent (before TLS) */
    size_t out_len;
    bool send_inflight;
    bool send_tls;       /* the send in flight is ciphertext from |tls| (else |out|) */
    bool waiting_commit; /* |waiting| is for the commit (not the queue's backpressure) */
    bool waiting;        /* a commit or the queue's backpressure */
    bool closed;

    /* The transaction. */
    struct queue_txn *txn;
    bool txn_failed;
    struct cmtp_envelope *env; /* from MAIL; size and digest set at the end */
    struct cmtp_policy param_policy;
    unsigned param_set;
    struct queue_rcpt *rcpts; /* accepted recipients, in order */
    size_t n_rcpts, rcpt_cap;
    SHA256_CTX sha;
    uint8_t *hdr; /* the start of the body, while the header section is being searched */
    size_t hdr_len;
    bool hdr_done;
    struct queue_txn_meta meta;
    const char *policy_from; /* where the committed policy came from (a static string) */
};

static void si_pump(struct cmtpd_smtp *s);

static const struct cmtp_log *si_log(const struct cmtpd_smtp *s)
{
    return &s->w->log;
}

static void si_close_now(struct cmtpd_smtp *s)
{
    if (s->closed)
        return;
    s->closed = true;
    s->phase = SI_CLOSING;
    io_conn_close(s->c);
}

/* si_txn_reset drops the transaction in progress (nothing was acknowledged). */
static void si_txn_reset(struct cmtpd_smtp *s)
{
    queue_txn_abort(s->txn);
    s->txn = NULL;
    s->txn_failed = false;
    free(s->env);
    s->env = NULL;
    free(s->rcpts);
    s->rcpts = NULL;
    s->n_rcpts = s->rcpt_cap = 0;
    free(s->hdr);
    s->hdr = NULL;
    s->hdr_len = 0;
    s->hdr_done = false;
}

/* si_send starts the next io send: ciphertext from the TLS chain once the handshake has
 * begun, the plaintext replies before. */
static void si_send(struct cmtpd_smtp *s)
{
    const uint8_t *p;
    size_t n;
    if (s->send_inflight || s->closed)
        return;
    bool from_tls = s->tls != NULL && s->handshake_started;
    if (from_tls) {
        n = tls_conn_out_peek(s->tls, &p);
    } else {
        p = s->out;
        n = s->out_len;
    }
    if (n == 0) {
        if (s->phase == SI_CLOSING)
            si_close_now(s);
        return;
    }
    if (io_conn_send(s->c, p, n, s) < 0) {
        si_close_now(s);
        return;
    }
    s->send_inflight = true;
    s->send_tls = from_tls;
}

/* si_flush moves the state machine's replies to the wire (into TLS, or into |out|). Returns
 * false when they could not all be taken (a send is in flight or TLS pushes back). */
static bool si_flush(struct cmtpd_smtp *s)
{
    const uint8_t *p;
    size_t n;
    bool all = true;
    while ((n = cmtp_smtps_output(s->sm, &p)) > 0) {
        if (s->tls != NULL && s->handshake_started) {
            size_t w = 0;
            enum tls_result r = tls_conn_write(s->tls, p, n, &w);
            if (w > 0)
                cmtp_smtps_output_consume(s->sm, w);
            if (r == TLS_ERROR) {
                s->phase = SI_CLOSING;
                break;
            }
            if (r == TLS_AGAIN) {
                all = false;
                break;
            }
        } else {
            if (s->send_inflight || s->out_len > 0) {
                all = false;
                break;
            }
            memcpy(s->out, p, n); /* n <= CMTP_SMTPS_OUT_MAX */
            s->out_len = n;
            cmtp_smtps_output_consume(s->sm, n);
        }
    }
    si_send(s);
    return all;
}

static void si_start_close(struct cmtpd_smtp *s)
{
    if (s->phase == SI_CLOSING)
        return;
    s->phase = SI_CLOSING;
    si_txn_reset(s);
    si_flush(s);
    if (s->tls != NULL && tls_conn_handshake_done(s->tls))
        tls_conn_close_notify(s->tls); /* after the last reply, so the client sees both */
    si_send(s);
}

static void si_set_deadline(struct cmtpd_smtp *s)
{
    const struct cmtp_config *cfg = &s->cfg->c;
    uint64_t ms = 0;
    if (s->phase == SI_HANDSHAKE) {
        ms = cfg->timeouts.handshake_ms;
    } else if (s->phase == SI_CLOSING) {
        ms = cfg->timeouts.command_ms; /* bound the final flush */
    } else {
        switch (cmtp_smtps_state(s->sm)) {
        case CMTP_SMTPS_STATE_IDLE:
            ms = cfg->timeouts.idle_ms;
            break;
        case CMTP_SMTPS_STATE_COMMAND:
            ms = cfg->timeouts.command_ms;
            break;
        case CMTP_SMTPS_STATE_DATA:
            ms = cfg->timeouts.chunk_ms;
            break;
        case CMTP_SMTPS_STATE_WAIT:
        case CMTP_SMTPS_STATE_CLOSED:
            ms = 0;
            break;
        }
    }
    if (ms == 0)
        io_conn_clear_deadline(s->c);
    else
        io_conn_set_deadline(s->c, ms);
}

/* ---- the message ------------------------------------------------------------------------- */

/* si_random_txid writes a fresh transaction id: 130 random bits in base32 (as the delivery
 * engine's derived ones look). */
static void si_random_txid(char out[CMTP_TXID_MAX + 1])
{
    uint8_t r[32];
    const void *parts[1] = {r};
    size_t lens[1] = {sizeof(r)};
    RAND_bytes(r, sizeof(r));
    cmtpd_delivery_derive_txid(out, parts, lens, 1);
}

/* si_mail handles a valid MAIL: the envelope (policy from the parameter so far) or 451. */
static void si_mail(struct cmtpd_smtp *s, const struct cmtp_smtps_txn *t)
{
    si_txn_reset(s);
    if (queue_state(s->w->q, NULL) != QUEUE_CONNECTED) {
        cmtp_smtps_mail_reply(s->sm, CMTP_SMTPS_MAIL_TEMPFAIL);
        return;
    }
    s->env = calloc(1, sizeof(*s->env));
    if (s->env == NULL) {
        cmtp_smtps_mail_reply(s->sm, CMTP_SMTPS_MAIL_TEMPFAIL);
        return;
    }
    s->env->from = t->from;
    si_random_txid(s->env->txid);
    s->param_policy = t->policy;
    s->param_set = t->policy_set;
    s->meta.received_ms = cmtpd_delivery_now_ms();
    SHA256_Init(&s->sha);
    cmtp_smtps_mail_reply(s->sm, CMTP_SMTPS_MAIL_OK);
}

static void si_rcpt(struct cmtpd_smtp *s, const struct cmtp_addr *a)
{
    if (s->n_rcpts == s->rcpt_cap) {
        size_t ncap = s->rcpt_cap ? s->rcpt_cap * 2 : 8;
        struct queue_rcpt *nr = realloc(s->rcpts, ncap * sizeof(*nr));
        if (nr == NULL) {
            cmtp_smtps_rcpt_reply(s->sm, CMTP_SMTPS_RCPT_TEMPFAIL);
            return;
        }
        s->rcpts = nr;
        s->rcpt_cap = ncap;
    }
    if (cmtp_smtps_rcpt_reply(s->sm, CMTP_SMTPS_RCPT_OK) < 0)
        return;
    struct queue_rcpt *r = &s->rcpts[s->n_rcpts++];
    memset(r, 0, sizeof(*r));
    r->addr = *a;
    r->role = CMTP_ROLE_FINAL; /* this appliance originates the CMTP hop: nothing to relay */
    r->status = QUEUE_RCPT_PENDING;
}

static void si_writable(void *arg)
{
    struct cmtpd_smtp *s = arg;
    s->waiting = false;
    s->waiting_commit = false;
    si_pump(s);
}

/* si_header_take keeps the start of the body until the end of the header section (or
 * SI_HEADER_MAX octets) for the CMTP-Policy: search. */
static void si_header_take(struct cmtpd_smtp *s, const uint8_t *p, size_t n)
{
    if (s->hdr_done || !s->cfg->c.smtp_ingress.policy_header)
        return;
    if (s->hdr == NULL && (s->hdr = malloc(SI_HEADER_MAX)) == NULL) {
        s->hdr_done = true;
        return;
    }
    size_t room = SI_HEADER_MAX - s->hdr_len;
    size_t take = n < room ? n : room;
    memcpy(s->hdr + s->hdr_len, p, take);
    s->hdr_len += take;
    if (s->hdr_len == SI_HEADER_MAX || memmem(s->hdr, s->hdr_len, "\r\n\r\n", 4) != NULL ||
        (s->hdr_len >= 2 && memcmp(s->hdr, "\r\n", 2) == 0))
        s->hdr_done = true;
}

/* si_header_policy finds a CMTP-Policy: field in the kept header section and parses its value
 * (folded lines unfolded) over |*p|, setting |*set|. A malformed field is logged and ignored. */
static void si_header_policy(struct cmtpd_smtp *s, struct cmtp_policy *p, unsigned *set)
{
    static const char name[] = "cmtp-policy:";
    const size_t nl = sizeof(name) - 1;
    *set = 0;
    if (s->hdr == NULL)
        return;
    size_t end = s->hdr_len;
    const uint8_t *blank = memmem(s->hdr, s->hdr_len, "\r\n\r\n", 4);
    if (blank != NULL)
        end = (size_t)(blank - s->hdr) + 2;
    for (size_t i = 0; i < end;) {
        const uint8_t *eol = memmem(s->hdr + i, end - i, "\r\n", 2);
        size_t line_end = eol ? (size_t)(eol - s->hdr) : end;
        if (line_end - i >= nl && strncasecmp((const char *)s->hdr + i, name, nl) == 0) {
            char v[CMTP_POLICY_TEXT_MAX + 1];
            size_t vn = 0;
            bool too_long = false;
            size_t j = i + nl;
            for (;;) {
                for (; j < line_end; j++) {
                    char ch = (char)s->hdr[j];
                    if (ch == '\t')
                        ch = ' ';
                    if (vn == 0 && ch == ' ')
                        continue;
                    if (vn == CMTP_POLICY_TEXT_MAX) {
                        too_long = true;
                        break;
                    }
                    v[vn++] = ch;
                }
                /* A continuation line starts with SP or HTAB. */
                size_t next = line_end + 2;
                if (too_long || next >= end || (s->hdr[next] != ' ' && s->hdr[next] != '\t'))
                    break;
                const uint8_t *e2 = memmem(s->hdr + next, end - next, "\r\n", 2);
                j = next;
                line_end = e2 ? (size_t)(e2 - s->hdr) : end;
                if (vn < CMTP_POLICY_TEXT_MAX)
                    v[vn++] = ' ';
            }
            while (vn > 0 && v[vn - 1] == ' ')
                vn--;
            v[vn] = '\0';
            if (too_long || cmtp_policy_parse_text(p, set, v, vn, true) < 0) {
                *set = 0;
                CMTP_LOG(si_log(s), CMTP_LOG_WARN, "smtp-policy-header-ignored",
                         cmtp_log_str("txn", s->env->txid), cmtp_log_str("peer", s->meta.peer_ip),
                         cmtp_log_str("reason", "malformed CMTP-Policy field"));
            }
            return; /* the first field only */
        }
        i = line_end + 2;
    }
}

/* si_policy merges the message's policy, member by member: the MAIL parameter, the header field,
 * the sender's domain entry, the listener's defaults. */
static void si_policy(struct cmtpd_smtp *s, struct cmtp_policy *out, const char **source)
{
    const struct cmtp_config *c = &s->cfg->c;
    struct cmtp_policy hp;
    unsigned hset = 0;
    const struct cmtp_config_sender_policy *sp =
        s->env->from.is_null ? NULL : cmtp_config_sender_policy_for(c, s->env->from.domain);
    cmtp_policy_init(&hp);
    si_header_policy(s, &hp, &hset);
    out->relay = c->smtp_ingress.policy_relay;
    out->fallback = c->smtp_ingress.policy_fallback;
    out->hops = c->smtp_ingress.policy_hops;
    *source = "config";
    if (sp != NULL) {
        if (sp->set & CMTP_POLICY_SET_RELAY)
            out->relay = sp->policy.relay;
        if (sp->set & CMTP_POLICY_SET_FALLBACK)
            out->fallback = sp->policy.fallback;
        if (sp->set & CMTP_POLICY_SET_HOPS)
            out->hops = sp->policy.hops;
        *source = "sender";
    }
    if (hset != 0) {
        if (hset & CMTP_POLICY_SET_RELAY)
            out->relay = hp.relay;
        if (hset & CMTP_POLICY_SET_FALLBACK)
            out->fallback = hp.fallback;
        if (hset & CMTP_POLICY_SET_HOPS)
            out->hops = hp.hops;
        *source = "header";
    }
    if (s->param_set != 0) {
        if (s->param_set & CMTP_POLICY_SET_RELAY)
            out->relay = s->param_policy.relay;
        if (s->param_set & CMTP_POLICY_SET_FALLBACK)
            out->fallback = s->param_policy.fallback;
        if (s->param_set & CMTP_POLICY_SET_HOPS)
            out->hops = s->param_policy.hops;
        *source = "parameter";
    }
}

/* si_body stores body octets: the queue transaction opens with the first of them. */
static void si_body(struct cmtpd_smtp *s, const uint8_t *p, size_t n)
{
    atomic_fetch_add_explicit(&s->w->ctr.smtp_body_bytes, n, memory_order_relaxed);
    SHA256_Update(&s->sha, p, n);
    si_header_take(s, p, n);
    if (s->txn_failed)
        return;
    if (s->txn == NULL) {
        cmtp_policy_init(&s->env->policy);
        s->txn = queue_txn_begin_unsized(s->w->q, s->env, s->rcpts, s->n_rcpts, &s->meta,
                                         s->cfg->c.limits.size_max);
        if (s->txn == NULL) {
            s->txn_failed = true;
            return;
        }
        queue_txn_set_writable_cb(s->txn, si_writable, s);
    }
    switch (queue_txn_append(s->txn, p, n)) {
    case QUEUE_OK:
        break;
    case QUEUE_AGAIN:
        s->waiting = true; /* si_writable resumes */
        break;
    case QUEUE_TEMPFAIL:
        s->txn_failed = true;
        break;
    }
}

static void si_log_result(struct cmtpd_smtp *s, const char *event, const char *qid,
                          const char *reason, uint64_t size, const char *psrc)
{
    char from[CMTP_ADDR_MAX + 1];
    cmtp_addr_format(&s->env->from, from, sizeof(from));
    CMTP_LOG(
        si_log(s), CMTP_LOG_INFO, event, cmtp_log_str("qid", qid ? qid : "-"),
        cmtp_log_str("txn", s->env->txid), cmtp_log_str("from", from), cmtp_log_uint("size", size),
        cmtp_log_uint("rcpts", s->n_rcpts), cmtp_log_str("listener", "smtp"),
        cmtp_log_str("peer", s->meta.peer_ip), cmtp_log_str("helo", cmtp_smtps_helo(s->sm)),
        cmtp_log_str("tls", s->meta.tls_version[0] ? s->meta.tls_version : "none"),
        cmtp_log_str("relay", cmtp_relay_name(s->env->policy.relay)),
        cmtp_log_str("fallback", cmtp_fallback_name(s->env->policy.fallback)),
        cmtp_log_uint("hops", s->env->policy.hops), cmtp_log_str("policy_from", psrc ? psrc : "-"),
        cmtp_log_str("reason", reason ? reason : "-"));
}

static void si_commit_done(void *arg, const struct queue_commit_result *r)
{
    struct cmtpd_smtp *s = arg;
    struct cmtp_smtps_end_answer a = {.result = CMTP_SMTPS_END_TEMPFAIL};
    s->txn = NULL; /* freed by the queue after this callback */
    s->waiting = false;
    s->waiting_commit = false;
    if (r->status == QUEUE_COMMIT_ACCEPTED) {
        a.result = CMTP_SMTPS_END_ACCEPTED;
        a.qid = r->qid;
        atomic_fetch_add_explicit(&s->w->ctr.smtp_accepted, 1, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&s->w->ctr.smtp_tempfails, 1, memory_order_relaxed);
    }
    si_log_result(s, r->status == QUEUE_COMMIT_ACCEPTED ? "accepted" : "deferred",
                  r->qid[0] ? r->qid : NULL, r->reason[0] ? r->reason : NULL, s->env->size,
                  s->policy_from);
    cmtp_smtps_end_reply(s->sm, &a);
    si_txn_reset(s);
    si_pump(s);
}

/* si_end commits the message once the whole body is stored. */
static void si_end(struct cmtpd_smtp *s, const struct cmtp_smtps_event *ev)
{
    struct cmtp_smtps_end_answer a = {.result = CMTP_SMTPS_END_TEMPFAIL};
    const char *why = "storage-unavailable", *psrc = NULL;
    uint8_t digest[CMTP_DIGEST_LEN];
    struct cmtp_policy pol;
    SHA256_Final(digest, &s->sha);
    uint64_t size = ev->txn->body_size;
    if (size == 0) {
        a.result = CMTP_SMTPS_END_REJECTED;
        why = "empty-message";
    } else if (!s->txn_failed && s->txn != NULL) {
        si_policy(s, &pol, &psrc);
        s->env->policy = pol;
        s->env->size = size;
        s->policy_from = psrc;
        if (queue_txn_commit_unsized(s->txn, size, digest, &pol, si_commit_done, s) == 0) {
            s->waiting = true;
            s->waiting_commit = true;
            return;
        }
    }
    if (a.result == CMTP_SMTPS_END_REJECTED)
        atomic_fetch_add_explicit(&s->w->ctr.smtp_refused, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&s->w->ctr.smtp_tempfails, 1, memory_order_relaxed);
    si_log_result(s, a.result == CMTP_SMTPS_END_REJECTED ? "refused" : "deferred", NULL, why, size,
                  psrc);
    si_txn_reset(s);
    cmtp_smtps_end_reply(s->sm, &a);
}

/* ---- the session loop -------------------------------------------------------------------- */

/* si_run feeds buffered plaintext to the state machine until it needs input or waits. */
static void si_run(struct cmtpd_smtp *s)
{
    while ((s->phase == SI_PLAIN || s->phase == SI_TLS) && !s->waiting && !s->closed) {
        struct cmtp_smtps_event ev;
        size_t used = 0;
        const uint8_t *in = s->in != NULL ? s->in + s->in_off : NULL;
        size_t len = s->in_len - s->in_off;
        enum cmtp_smtps_ev k = cmtp_smtps_feed(s->sm, in, len, &used, &ev);
        s->in_off += used;
        switch (k) {
        case CMTP_SMTPS_NEED_INPUT:
            return;
        case CMTP_SMTPS_MAIL:
            si_mail(s, ev.txn);
            break;
        case CMTP_SMTPS_RCPT:
            si_rcpt(s, ev.rcpt);
            break;
        case CMTP_SMTPS_BODY:
            si_body(s, ev.data, ev.len);
            break;
        case CMTP_SMTPS_END:
            si_end(s, &ev);
            break;
        case CMTP_SMTPS_RESET:
            si_txn_reset(s);
            break;
        case CMTP_SMTPS_STARTTLS:
            /* The 220 goes out in plaintext; the handshake starts once it is sent. */
            s->phase = SI_HANDSHAKE;
            si_flush(s);
            return;
        case CMTP_SMTPS_CLOSE:
            si_start_close(s);
            return;
        case CMTP_SMTPS_BLOCKED:
            return;
        case CMTP_SMTPS_FLUSH:
            if (!si_flush(s))
                return; /* resumed by the send completion */
            break;
        }
    }
}

/* si_in_room makes room in |in| and returns where new plaintext goes (NULL on failure); |*cap|
 * gets the room. */
static uint8_t *si_in_room(struct cmtpd_smtp *s, size_t *cap)
{
    if (s->in == NULL) {
        s->in = malloc(SI_IN_MAX);
        if (s->in == NULL)
            return NULL;
        s->in_off = s->in_len = 0;
    }
    if (s->in_off > 0) {
        memmove(s->in, s->in + s->in_off, s->in_len - s->in_off);
        s->in_len -= s->in_off;
        s->in_off = 0;
    }
    *cap = SI_IN_MAX - s->in_len;
    return s->in + s->in_len;
}

/* si_tls_read decrypts what TLS holds into |in| and runs the session, while there is room. */
static void si_tls_read(struct cmtpd_smtp *s)
{
    while (s->phase == SI_TLS && !s->closed) {
        size_t cap = 0, n = 0;
        uint8_t *p = si_in_room(s, &cap);
        if (p == NULL) {
            si_close_now(s);
            return;
        }
        if (cap == 0) {
            /* Receiving pauses whenever input is left, so at most two receives' worth (32 KiB)
             * can wait here; fed ciphertext must not outlive on_data (it is not copied). */
            if (tls_conn_in_pending(s->tls) > 0) {
                CMTP_LOG(si_log(s), CMTP_LOG_WARN, "input-overflow",
                         cmtp_log_str("peer", s->meta.peer_ip));
                si_close_now(s);
            }
            return;
        }
        enum tls_result r = tls_conn_read(s->tls, p, cap, &n);
        if (r == TLS_OK) {
            s->in_len += n;
            si_run(s);
            continue;
        }
        if (r != TLS_AGAIN)
            si_start_close(s); /* TLS_CLOSED or TLS_ERROR: nothing more will come */
        return;
    }
}

/* si_handshake_step runs the STARTTLS handshake on fed octets; at its end the session starts
 * over inside TLS. */
static void si_handshake_step(struct cmtpd_smtp *s, enum tls_result r)
{
    if (r == TLS_ERROR) {
        char why[128];
        tls_conn_error_string(s->tls, why, sizeof(why));
        CMTP_LOG(si_log(s), CMTP_LOG_INFO, "smtp-starttls-failed",
                 cmtp_log_str("peer", s->meta.peer_ip), cmtp_log_str("reason", why));
        s->phase = SI_CLOSING; /* send the alert, then close */
        si_send(s);
        return;
    }
    if (r == TLS_AGAIN || !tls_conn_handshake_done(s->tls)) {
        si_send(s);
        return;
    }
    s->phase = SI_TLS;
    snprintf(s->meta.tls_version, sizeof(s->meta.tls_version), "%s", tls_conn_version(s->tls));
    snprintf(s->meta.tls_cipher, sizeof(s->meta.tls_cipher), "%s", tls_conn_cipher(s->tls));
    cmtp_smtps_tls_reset(s->sm);
    si_tls_read(s);
}

/* si_start_handshake begins TLS once the 220 to STARTTLS has been sent. */
static void si_start_handshake(struct cmtpd_smtp *s)
{
    if (s->cfg->smtp_tls == NULL || (s->tls = tls_conn_new_server(s->cfg->smtp_tls)) == NULL) {
        si_close_now(s);
        return;
    }
    s->handshake_started = true;
    /* Octets the client sent after STARTTLS were refused by the state machine (injection);
     * nothing is buffered here. */
    s->in_off = s->in_len = 0;
}

/* si_pump runs what can run after an event: pending input, output, deadlines, receive
 * backpressure. */
static void si_pump(struct cmtpd_smtp *s)
{
    if (s->closed)
        return;
    if (s->phase == SI_PLAIN)
        si_run(s);
    else if (s->phase == SI_TLS)
        si_tls_read(s);
    if (s->closed)
        return;
    if (s->phase != SI_HANDSHAKE || !s->handshake_started)
        si_flush(s);
    else
        si_send(s);
    if (s->closed)
        return;
    if (s->phase == SI_HANDSHAKE && !s->handshake_started && !s->send_inflight && s->out_len == 0 &&
        cmtp_smtps_output(s->sm, &(const uint8_t *){NULL}) == 0)
        si_start_handshake(s);
    if (s->closed)
        return;
    bool pending_in = s->in != NULL && s->in_off < s->in_len;
    bool hold_full = pending_in || (s->waiting && !s->waiting_commit) ||
                     (s->tls != NULL && s->phase == SI_TLS &&
                      tls_conn_out_pending(s->tls) > TLS_OUT_PENDING_MAX);
    /* As in session.c: waiting for a commit alone pauses lazily. */
    io_conn_hold_recv(s->c, hold_full ? IO_HOLD_FULL : s->waiting ? IO_HOLD_LAZY : IO_HOLD_NONE);
    if (!pending_in && s->in != NULL) {
        OPENSSL_cleanse(s->in, s->in_len);
        free(s->in);
        s->in = NULL;
        s->in_off = s->in_len = 0;
    }
    si_set_deadline(s);
}

/* ---- connection callbacks (dispatched by session.c) -------------------------------------- */

static bool peer_trusted(const struct cmtp_config *c, const struct sockaddr_storage *ss)
{
    int family = 0;
    const uint8_t *ip = NULL;
    if (ss->ss_family == AF_INET) {
        family = 4;
        ip = (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr;
    } else if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            family = 4;
            ip = a6->s6_addr + 12;
        } else {
            family = 6;
            ip = a6->s6_addr;
        }
    }
    for (size_t i = 0; ip != NULL && i < c->smtp_ingress.trusted_networks_count; i++) {
        if (cmtp_config_cidr_match(&c->smtp_ingress.trusted_networks[i], family, ip))
            return true;
    }
    return false;
}

int cmtpd_smtp_on_accept(struct io_conn *c)
{
    struct cmtpd_worker *w = io_worker_ctx(io_conn_worker(c));
    const struct cmtp_config *cfg = &w->cfg->c;
    struct cmtpd_smtp *s;
    if (w->draining)
        return -ESHUTDOWN;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->kind = CMTPD_CONN_SMTP_INGRESS;
    s->w = w;
    s->c = c;
    s->cfg = cmtpd_cfg_ref(w->cfg);
    struct cmtp_smtps_config sc = {
        .host = w->d->hostname,
        .size_max = cfg->limits.size_max,
        .rcpt_max = cfg->limits.rcpt_max,
        .txn_max = cfg->limits.txn_max,
        .tls_available = s->cfg->smtp_tls != NULL,
        .tls_required = cfg->smtp_ingress.tls_required,
        .bare_lf_reject = cfg->smtp_ingress.bare_lf_reject,
    };
    s->sm = cmtp_smtps_new(&sc);
    if (s->sm == NULL) {
        cmtpd_cfg_unref(s->cfg);
        free(s);
        return -ENOMEM;
    }
    int one = 1;
    setsockopt(io_conn_fd(c), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    const struct sockaddr_storage *ss = io_conn_peer(c);
    cmtpd_peer_text(ss, s->meta.peer_ip, sizeof(s->meta.peer_ip));
    snprintf(s->meta.listener, sizeof(s->meta.listener), "smtp");
    s->next = w->smtp_sessions;
    if (w->smtp_sessions != NULL)
        w->smtp_sessions->prev = s;
    w->smtp_sessions = s;
    io_conn_set_ctx(c, s);
    atomic_fetch_add_explicit(&w->ctr.smtp_sessions, 1, memory_order_relaxed);
    if (!peer_trusted(cfg, ss)) {
        atomic_fetch_add_explicit(&w->ctr.smtp_untrusted, 1, memory_order_relaxed);
        CMTP_LOG(si_log(s), CMTP_LOG_INFO, "smtp-untrusted-refused",
                 cmtp_log_str("peer", s->meta.peer_ip));
        cmtp_smtps_refuse(s->sm);
        si_start_close(s);
    } else {
        cmtp_smtps_start(s->sm);
        si_pump(s);
    }
    if (!s->closed)
        si_set_deadline(s);
    return 0;
}

void cmtpd_smtp_on_data(struct io_conn *c, const uint8_t *data, size_t len)
{
    struct cmtpd_smtp *s = io_conn_ctx(c);
    if (s->closed || s->phase == SI_CLOSING)
        return; /* discard: the session is finishing */
    if (s->tls != NULL) {
        enum tls_result r = tls_conn_feed(s->tls, data, len);
        if (s->phase == SI_HANDSHAKE)
            si_handshake_step(s, r);
        else if (r == TLS_ERROR)
            si_start_close(s);
        else
            si_tls_read(s);
        si_pump(s);
        return;
    }
    if (s->phase == SI_HANDSHAKE) {
        /* The client answered the 220 to STARTTLS before its send completion was seen. */
        si_start_handshake(s);
        if (s->closed)
            return;
        si_handshake_step(s, tls_conn_feed(s->tls, data, len));
        si_pump(s);
        return;
    }
    size_t cap = 0;
    uint8_t *p = si_in_room(s, &cap);
    if (p == NULL || len > cap) {
        /* Receiving pauses whenever input is left, so one receive always fits. */
        CMTP_LOG(si_log(s), CMTP_LOG_WARN, "input-overflow", cmtp_log_str("peer", s->meta.peer_ip));
        si_close_now(s);
        return;
    }
    memcpy(p, data, len);
    s->in_len += len;
    si_pump(s);
}

void cmtpd_smtp_on_send_done(struct io_conn *c, void *cookie, int res)
{
    struct cmtpd_smtp *s = io_conn_ctx(c);
    (void)cookie;
    s->send_inflight = false;
    if (res < 0) {
        si_close_now(s);
        return;
    }
    if (s->send_tls)
        tls_conn_out_consume(s->tls, (size_t)res);
    else
        s->out_len = 0; /* io sends are whole */
    if (s->phase == SI_CLOSING) {
        si_flush(s); /* replies that did not fit before */
        return;
    }
    si_pump(s);
}

void cmtpd_smtp_on_timeout(struct io_conn *c)
{
    struct cmtpd_smtp *s = io_conn_ctx(c);
    CMTP_LOG(si_log(s), CMTP_LOG_DEBUG, "timeout", cmtp_log_str("peer", s->meta.peer_ip),
             cmtp_log_str("listener", "smtp"));
    if (s->phase == SI_PLAIN || s->phase == SI_TLS) {
        cmtp_smtps_timeout(s->sm);
        si_start_close(s);
        return;
    }
    si_close_now(s);
}

void cmtpd_smtp_on_close(struct io_conn *c, int reason)
{
    struct cmtpd_smtp *s = io_conn_ctx(c);
    (void)reason;
    if (s == NULL)
        return;
    struct cmtpd_worker *w = s->w;
    si_txn_reset(s);
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        w->smtp_sessions = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    cmtp_smtps_free(s->sm);
    tls_conn_free(s->tls);
    if (s->in != NULL) {
        OPENSSL_cleanse(s->in, s->in_len);
        free(s->in);
    }
    OPENSSL_cleanse(&s->sha, sizeof(s->sha));
    cmtpd_cfg_unref(s->cfg);
    free(s);
    io_conn_set_ctx(c, NULL);
}

void cmtpd_smtp_drain(struct cmtpd_worker *w)
{
    struct cmtpd_smtp *s, *next;
    for (s = w->smtp_sessions; s != NULL; s = next) {
        next = s->next;
        if (s->phase == SI_PLAIN || s->phase == SI_TLS) {
            if (cmtp_smtps_shutdown(s->sm) == CMTP_SMTPS_CLOSE)
                si_start_close(s);
            else
                si_pump(s);
        } else if (s->phase == SI_HANDSHAKE) {
            si_close_now(s);
        }
    }
}
