/* daemon/delivery_cmtp.c — the CMTP transport of the delivery engine: TLS 1.3 to the next hop
 * (verified for the name the route gives), core/client's state machine, the envelope carried on
 * with a TXN of this hop, the body streamed from Redis into BODY chunks. Not the protocol (core/).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/mem.h>

#include "daemon/delivery_route.h"

/* CM_READ_MAX is the plaintext decrypted per tls_conn_read call. */
#define CM_READ_MAX 16384

/* cm_set_class records how the attempt failed, for routing (delivery_route.c). */
static void cm_set_class(struct dl_job *j, enum cmtp_route_fail cls)
{
    if (j->route != NULL && !j->route->cls_set) {
        j->route->cls = cls;
        j->route->cls_set = true;
    }
}

/* cm_handshake_class classifies a failed handshake from the error codes the TLS layer recorded
 * (tls_conn_fail_kind; never text): a certificate that does not verify may be followed by the
 * next host but never by SMTP fallback (PROTOCOL.md 2.3); no ALPN agreed (our check, or a
 * no_application_protocol alert) and a peer that does not speak TLS count as "no CMTP server
 * here" (PROTOCOL.md 14); any other failure is a host failure. */
static enum cmtp_route_fail cm_handshake_class(const struct tls_conn *t)
{
    switch (tls_conn_fail_kind(t)) {
    case TLS_FAIL_NO_ALPN:
    case TLS_FAIL_NOT_TLS:
        return CMTP_ROUTE_FAIL_UNREACHABLE;
    case TLS_FAIL_CERT:
    case TLS_FAIL_ALERT:
    case TLS_FAIL_OTHER:
    case TLS_FAIL_NONE:
        break;
    }
    return CMTP_ROUTE_FAIL_HOST;
}

enum cmtp_route_fail cmtpd_delivery_cmtp_fail_class(const struct dl_job *j)
{
    const struct dl_route_state *rs = j->route;
    if (rs == NULL || j->cli != NULL || (j->tls != NULL && tls_conn_handshake_done(j->tls)))
        return CMTP_ROUTE_FAIL_FINAL; /* past the handshake: a CMTP reply or later */
    for (size_t i = 0; i < j->n_tr; i++) {
        const struct dl_rcpt *r = &j->rc[j->map[i]];
        if (r->st == DL_R_ACCEPTED || r->result == QUEUE_CONSUMER_DELIVERED)
            return CMTP_ROUTE_FAIL_FINAL;
    }
    if (rs->cls_set)
        return rs->cls;
    if (!rs->connected)
        return CMTP_ROUTE_FAIL_UNREACHABLE; /* refused, unreachable, timed out */
    /* Connected, no handshake: a peer that sent nothing (closed, or silent until the deadline)
     * is not speaking TLS; one that sent something and broke off failed the handshake. */
    return rs->rx_any ? CMTP_ROUTE_FAIL_HOST : CMTP_ROUTE_FAIL_UNREACHABLE;
}

static void cm_fail(struct dl_job *j, const char *why)
{
    cmtpd_delivery_fail_open(j, QUEUE_CONSUMER_TEMPFAIL, why);
    cmtpd_delivery_job_finish(j);
}

/* cm_envelope builds the envelope of this hop from the record: a TXN of its own (derived from the
 * queue id, the destination and the recipients, so a retry after a lost reply reuses it:
 * PROTOCOL.md 10.3, 10.4); as a relay, HOPS lowered by one and this server's trace record added
 * (13.2); handed to the internal store ([delivery] mode = cmtp: we are final for the recipients
 * and deliver this copy ourselves), this server's record with role final, HOPS unchanged;
 * everything else (originator, SIZE, DIGEST, RELAY, FALLBACK, REPORT) unchanged. */
static int cm_envelope(struct dl_job *j)
{
    const void *parts[4];
    size_t lens[4];
    uint8_t *ids;
    j->env = malloc(sizeof(*j->env));
    ids = malloc(j->n_tr * 8 + 1);
    if (j->env == NULL || ids == NULL) {
        free(ids);
        return -ENOMEM;
    }
    *j->env = j->rec->env;
    for (size_t i = 0; i < j->n_tr; i++) {
        uint64_t v = j->rc[j->map[i]].idx;
        for (int b = 0; b < 8; b++)
            ids[i * 8 + (size_t)b] = (uint8_t)(v >> (56 - 8 * b));
    }
    parts[0] = "cmtp-hop";
    lens[0] = 8;
    parts[1] = j->qid;
    lens[1] = strlen(j->qid);
    parts[2] = j->dest;
    lens[2] = strlen(j->dest);
    parts[3] = ids;
    lens[3] = j->n_tr * 8;
    cmtpd_delivery_derive_txid(j->env->txid, parts, lens, 4);
    free(ids);
    snprintf(j->out_txid, sizeof(j->out_txid), "%s", j->env->txid);
    if (j->relay_hop) {
        struct cmtp_trace t;
        if (j->env->policy.hops > 0)
            j->env->policy.hops--;
        if (cmtpd_delivery_own_trace(j, CMTP_ROLE_RELAY, &t))
            j->env->trace[j->env->trace_count++] = t;
    } else if (j->store_hop) {
        struct cmtp_trace t;
        if (cmtpd_delivery_own_trace(j, CMTP_ROLE_FINAL, &t))
            j->env->trace[j->env->trace_count++] = t;
    }
    return 0;
}

/* cm_flush moves the client's commands into TLS. Returns false when TLS pushes back. */
static bool cm_flush(struct dl_job *j)
{
    const uint8_t *p;
    size_t n;
    while ((n = cmtp_client_output(j->cli, &p)) > 0) {
        size_t w = 0;
        enum tls_result r = tls_conn_write(j->tls, p, n, &w);
        if (w > 0)
            cmtp_client_output_consume(j->cli, w);
        if (r == TLS_ERROR) {
            cm_fail(j, "tls write failed");
            return false;
        }
        if (r == TLS_AGAIN)
            return false;
    }
    return true;
}

static void cm_chunk(struct dl_job *j, int err)
{
    if (err < 0) {
        char why[QUEUE_REASON_MAX];
        cmtpd_delivery_why(why, sizeof(why), "body read failed: %s", strerror(-err));
        cm_fail(j, why);
        return;
    }
    cmtpd_delivery_cmtp_pump(j);
}

/* cm_body streams the body: BODY frames no larger than the server's chunk-max, each cut from
 * the chunk in hand, then END. Returns when TLS pushes back or a chunk must be read. */
static void cm_body(struct dl_job *j)
{
    const struct cmtp_greeting *g = cmtp_client_greeting(j->cli);
    uint64_t size = j->env->size;
    while (j->in_body && !j->finishing) {
        if (!cm_flush(j))
            return;
        if (j->frame_left > 0) {
            size_t avail = j->chunk_len - j->chunk_off, w = 0;
            size_t n = avail < j->frame_left ? avail : j->frame_left;
            enum tls_result r = tls_conn_write(j->tls, j->chunk + j->chunk_off, n, &w);
            j->chunk_off += w;
            j->frame_left -= w;
            j->body_sent += w;
            atomic_fetch_add_explicit(&j->dl->w->dctr.body_bytes, w, memory_order_relaxed);
            if (r == TLS_ERROR) {
                cm_fail(j, "tls write failed");
                return;
            }
            if (r == TLS_AGAIN)
                return;
            continue;
        }
        if (j->body_sent == size) {
            if (cmtp_client_end(j->cli) < 0) {
                cm_fail(j, "cmtp: END refused by the client state machine");
                return;
            }
            j->end_queued = true;
            j->in_body = false;
            cm_flush(j);
            return;
        }
        if (j->chunk_off == j->chunk_len) {
            if (j->body_last) {
                cm_fail(j, "body shorter than its SIZE");
                return;
            }
            if (!j->body_req) {
                int r = cmtpd_delivery_body_fetch(j, cm_chunk);
                if (r < 0) {
                    char why[QUEUE_REASON_MAX];
                    cmtpd_delivery_why(why, sizeof(why), "body read failed: %s", strerror(-r));
                    cm_fail(j, why);
                }
            }
            return;
        }
        size_t n = j->chunk_len - j->chunk_off;
        if (g != NULL && g->chunk_max > 0 && n > g->chunk_max)
            n = g->chunk_max;
        if (n > size - j->body_sent)
            n = (size_t)(size - j->body_sent);
        if (cmtp_client_body_header(j->cli, n) < 0) {
            cm_fail(j, "cmtp: BODY refused by the client state machine");
            return;
        }
        j->frame_left = n;
    }
}

void cmtpd_delivery_cmtp_pump(struct dl_job *j)
{
    if (j->cli == NULL || j->finishing || !j->conn_open)
        return;
    if (j->in_body)
        cm_body(j);
    else
        cm_flush(j);
    if (j->finishing)
        return;
    cmtpd_delivery_send(j);
    uint32_t t;
    switch (cmtp_client_state(j->cli)) {
    case CMTP_CLI_STATE_GREETING:
        t = DL_GREETING_TIMEOUT_MS;
        break;
    case CMTP_CLI_STATE_END:
        t = DL_END_TIMEOUT_MS;
        break;
    case CMTP_CLI_STATE_QUIT:
    case CMTP_CLI_STATE_CLOSED:
        t = DL_CLOSE_TIMEOUT_MS;
        break;
    default:
        t = DL_REPLY_TIMEOUT_MS;
        break;
    }
    io_conn_set_deadline(j->c, t);
}

/* cm_rcpt records one RCPT_RESULT. */
static void cm_rcpt(struct dl_job *j, const struct cmtp_cli_event *ev)
{
    char why[QUEUE_REASON_MAX];
    size_t i = ev->rcpt_index;
    struct dl_rcpt *r;
    if (i >= j->n_tr)
        return;
    r = &j->rc[j->map[i]];
    switch (ev->disp) {
    case CMTP_CLI_RCPT_FINAL:
    case CMTP_CLI_RCPT_RELAY:
        if (ev->dropped) {
            /* PROTOCOL.md 7.4: the next hop would relay where the originator does not allow
             * it; the client DROPs it and it is reported as relay-refused. */
            cmtpd_delivery_why(why, sizeof(why),
                               "relay-refused: %u relay next=%s not allowed by the policy",
                               ev->code, ev->next_hop);
            cmtpd_delivery_rcpt_set(j, i, QUEUE_CONSUMER_PERMFAIL, why);
            return;
        }
        if (r->st == DL_R_OPEN) {
            r->st = DL_R_ACCEPTED;
            if (ev->disp == CMTP_CLI_RCPT_RELAY)
                cmtpd_delivery_why(r->reason, sizeof(r->reason), "%u relay next=%s", ev->code,
                                   ev->next_hop);
            else
                cmtpd_delivery_why(r->reason, sizeof(r->reason), "%u final", ev->code);
        }
        return;
    case CMTP_CLI_RCPT_REFUSED:
        break;
    }
    bool policy =
        strcmp(ev->status, "relay-denied") == 0 || strcmp(ev->status, "hops-exceeded") == 0;
    cmtpd_delivery_why(why, sizeof(why), "%s%u %s%s%s", policy ? "relay-refused: " : "", ev->code,
                       ev->status, ev->text[0] ? ": " : "", ev->text);
    cmtpd_delivery_rcpt_set(
        j, i, ev->code >= 500 ? QUEUE_CONSUMER_PERMFAIL : QUEUE_CONSUMER_TEMPFAIL, why);
}

/* cm_txn_done applies the END result to the recipients the next hop took. */
static void cm_txn_done(struct dl_job *j, const struct cmtp_cli_event *ev)
{
    char why[QUEUE_REASON_MAX];
    enum queue_consumer_result res = QUEUE_CONSUMER_TEMPFAIL;
    if (ev->outcome == CMTP_CLI_ACCEPTED) {
        res = QUEUE_CONSUMER_DELIVERED;
        cmtpd_delivery_why(why, sizeof(why), "250 accepted id=%s txn=%s%s", ev->qid, j->out_txid,
                           ev->dup ? " dup=1" : "");
    } else if (ev->local) {
        res = ev->outcome == CMTP_CLI_PERMFAIL ? QUEUE_CONSUMER_PERMFAIL : QUEUE_CONSUMER_TEMPFAIL;
        cmtpd_delivery_why(why, sizeof(why), "local: %s", ev->status);
    } else {
        res = ev->outcome == CMTP_CLI_PERMFAIL ? QUEUE_CONSUMER_PERMFAIL : QUEUE_CONSUMER_TEMPFAIL;
        cmtpd_delivery_why(why, sizeof(why), "%u %s%s%s", ev->code, ev->status,
                           ev->text[0] ? ": " : "", ev->text);
    }
    j->txn_done = true;
    j->in_body = false;
    for (size_t i = 0; i < j->n_tr; i++) {
        struct dl_rcpt *r = &j->rc[j->map[i]];
        /* Accepted: only the recipients the next hop took. Refused (MAIL, END, or decided
         * locally): every recipient not decided by its own RCPT reply. */
        if (r->st == DL_R_ACCEPTED || (r->st == DL_R_OPEN && res != QUEUE_CONSUMER_DELIVERED)) {
            r->st = DL_R_OPEN;
            cmtpd_delivery_rcpt_set(j, i, res, why);
        }
    }
}

/* cm_begin starts the transaction after the greeting: at most rcpt-max recipients (the others
 * wait for the next attempt, which gets a TXN of its own). */
static void cm_begin(struct dl_job *j, const struct cmtp_greeting *g)
{
    if (g != NULL && g->rcpt_max > 0 && j->n_tr > g->rcpt_max) {
        for (size_t i = g->rcpt_max; i < j->n_tr; i++)
            cmtpd_delivery_rcpt_set(j, i, QUEUE_CONSUMER_TEMPFAIL,
                                    "deferred: more recipients than the next hop's rcpt-max");
        j->n_tr = g->rcpt_max;
    }
    if (cm_envelope(j) < 0) {
        cm_fail(j, "out of memory");
        return;
    }
    int r = cmtp_client_begin(j->cli, j->env, j->addr, j->n_tr);
    if (r < 0) {
        char why[QUEUE_REASON_MAX];
        cmtpd_delivery_why(why, sizeof(why), "cmtp: cannot begin the transaction: %s",
                           strerror(-r));
        cm_fail(j, why);
    }
}

/* cm_events runs the client on |len| octets of plaintext (all consumed). */
static void cm_events(struct dl_job *j, const uint8_t *in, size_t len)
{
    size_t off = 0;
    while (!j->finishing) {
        struct cmtp_cli_event ev;
        size_t used = 0;
        enum cmtp_cli_ev k = cmtp_client_feed(j->cli, in ? in + off : NULL, len - off, &used, &ev);
        off += used;
        switch (k) {
        case CMTP_CLI_NEED_INPUT:
            return;
        case CMTP_CLI_GREETING:
            cm_begin(j, ev.greeting);
            break;
        case CMTP_CLI_RCPT_RESULT:
            cm_rcpt(j, &ev);
            break;
        case CMTP_CLI_BODY_READY:
            j->in_body = true;
            j->frame_left = 0;
            j->body_sent = 0;
            cmtpd_delivery_body_rewind(j);
            break;
        case CMTP_CLI_TXN_DONE:
            cm_txn_done(j, &ev);
            if (cmtp_client_quit(j->cli) < 0)
                cmtpd_delivery_job_finish(j);
            break;
        case CMTP_CLI_CLOSED:
        case CMTP_CLI_PROTOCOL_ERROR: {
            char why[QUEUE_REASON_MAX];
            if (k == CMTP_CLI_CLOSED && ev.code != 0 && ev.code != 221)
                cmtpd_delivery_why(why, sizeof(why), "%u %s", ev.code, ev.status);
            else
                cmtpd_delivery_why(why, sizeof(why), "cmtp %s: %s",
                                   k == CMTP_CLI_CLOSED ? "session closed" : "protocol error",
                                   ev.status[0] ? ev.status : "-");
            cm_fail(j, why);
            return;
        }
        }
    }
}

void cmtpd_delivery_cmtp_on_data(struct dl_job *j, const uint8_t *data, size_t len)
{
    uint8_t pt[CM_READ_MAX];
    enum tls_result r;
    char why[QUEUE_REASON_MAX];
    if (j->tls == NULL || j->finishing)
        return;
    if (j->route != NULL && len > 0)
        j->route->rx_any = true;
    bool was_done = tls_conn_handshake_done(j->tls);
    r = tls_conn_feed(j->tls, data, len);
    if (!was_done) {
        if (r == TLS_ERROR || r == TLS_CLOSED) {
            char e[128];
            tls_conn_error_string(j->tls, e, sizeof(e));
            /* PROTOCOL.md 2.3: a certificate that does not verify is a temporary failure. */
            cmtpd_delivery_why(why, sizeof(why), "tls %s (%s): %s", j->peer, j->tls_name, e);
            cm_set_class(j, r == TLS_CLOSED ? CMTP_ROUTE_FAIL_HOST : cm_handshake_class(j->tls));
            atomic_fetch_add_explicit(&j->dl->w->dctr.connect_failed, 1, memory_order_relaxed);
            cm_fail(j, why);
            return;
        }
        if (r == TLS_AGAIN) {
            cmtpd_delivery_send(j);
            return;
        }
        j->cli = cmtp_client_new(NULL);
        if (j->cli == NULL) {
            cm_fail(j, "out of memory");
            return;
        }
    }
    for (;;) {
        size_t n = 0;
        r = tls_conn_read(j->tls, pt, sizeof(pt), &n);
        if (r != TLS_OK)
            break;
        if (!j->finishing)
            cm_events(j, pt, n);
    }
    OPENSSL_cleanse(pt, sizeof(pt));
    if (r == TLS_ERROR || r == TLS_CLOSED) {
        if (!j->finishing) {
            char e[128];
            tls_conn_error_string(j->tls, e, sizeof(e));
            cmtpd_delivery_why(why, sizeof(why), "connection to %s ended: %s", j->peer,
                               r == TLS_CLOSED ? "close_notify" : e);
            cm_fail(j, why);
        }
        return;
    }
    cmtpd_delivery_cmtp_pump(j);
}

void cmtpd_delivery_cmtp_on_connect(struct dl_job *j, int res)
{
    char why[QUEUE_REASON_MAX];
    if (res < 0) {
        cmtpd_delivery_why(why, sizeof(why), "connect %s: %s", j->peer, strerror(-res));
        cmtpd_delivery_fail_open(j, QUEUE_CONSUMER_TEMPFAIL, why);
        j->finishing = true; /* on_close follows */
        return;
    }
    if (j->route != NULL)
        j->route->connected = true;
    int one = 1;
    setsockopt(io_conn_fd(j->c), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    j->tls = tls_conn_new_client(j->dl->tls, j->tls_name);
    if (j->tls == NULL) {
        cm_set_class(j, CMTP_ROUTE_FAIL_FINAL);
        cm_fail(j, "tls: cannot create the client connection");
        return;
    }
    tls_conn_feed(j->tls, NULL, 0); /* the ClientHello */
    cmtpd_delivery_send(j);
    io_conn_set_deadline(j->c, DL_HANDSHAKE_TIMEOUT_MS);
}

void cmtpd_delivery_cmtp_start(struct dl_job *j)
{
    char why[QUEUE_REASON_MAX];
    int r;
    if (j->dl->tls == NULL) {
        cmtpd_delivery_why(why, sizeof(why), "tls: no client context: %.80s", j->dl->tls_err);
        cm_set_class(j, CMTP_ROUTE_FAIL_FINAL);
        cm_fail(j, why);
        return;
    }
    r = io_connect(j->dl->w->io, &j->c, (const struct sockaddr *)&j->sa, j->sa_len, j,
                   DL_CONNECT_TIMEOUT_MS);
    if (r < 0) {
        cmtpd_delivery_why(why, sizeof(why), "connect %s: %s", j->peer, strerror(-r));
        atomic_fetch_add_explicit(&j->dl->w->dctr.connect_failed, 1, memory_order_relaxed);
        /* A local refusal (the worker's connection share, a bad address family) is no sign
         * about the host: retried later, not the next host. */
        cm_set_class(j, r == -EAFNOSUPPORT || r == -ENETUNREACH ? CMTP_ROUTE_FAIL_UNREACHABLE
                                                                : CMTP_ROUTE_FAIL_FINAL);
        cm_fail(j, why);
        return;
    }
    j->conn_open = true;
    atomic_fetch_add_explicit(&j->dl->w->dctr.connects, 1, memory_order_relaxed);
}

void cmtpd_delivery_cmtp_cleanup(struct dl_job *j)
{
    cmtp_client_free(j->cli);
    j->cli = NULL;
    tls_conn_free(j->tls);
    j->tls = NULL;
    if (j->env != NULL) {
        OPENSSL_cleanse(j->env, sizeof(*j->env));
        free(j->env);
        j->env = NULL;
    }
}
