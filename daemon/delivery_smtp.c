/* daemon/delivery_smtp.c — the LMTP and SMTP transports of the delivery engine: one
 * transaction per lease on a connection of the worker's idle pool or a new one, core/smtp_client
 * in LMTP or SMTP mode, STARTTLS (SMTP) with tls/ over the same io_conn, the CMTP-Trace field
 * (final delivery) and the body dot-stuffed from Redis, one result per recipient; for an SMTP
 * fallback job the fallback record (PROTOCOL.md 14). Not the SMTP/LMTP protocol (core/) and not
 * the decision to fall back (routing, delivery.c).
 *
 * Connection reuse: a transaction that ended cleanly (the client READY again, all input used,
 * nothing left to send, no session-level failure, no 421, no timeout, no close) parks its
 * connection — the io_conn, its tls_conn, its cmtp_smtpc and send buffer — in the worker's idle
 * pool (cmtpd_delivery.pool) instead of QUIT; the key is the endpoint: socket address,
 * transport, STARTTLS mode, verification and reference name, and the TLS context generation.
 * The next job for the same key takes the most recently parked one (io_conn_set_ctx) and begins
 * its transaction at once (the client sends RSET first where a transaction was left open).
 * Bounds: DL_POOL_PER_ENDPOINT idle connections per endpoint and DL_POOL_MAX slots per worker
 * (a connection that does not fit is QUITted), DL_POOL_IDLE_MS idle (then QUIT), at most
 * DL_CONN_REUSE_MAX transactions and DL_CONN_REUSE_TIME_MS of age per connection (like Postfix's
 * smtp_connection_reuse_count_limit and _time_limit). A parked connection the server speaks on
 * (a 421 before an idle close) or closes leaves the pool; no job is involved. A job whose pooled
 * connection turns out dead before the first reply (closed, reset, or a 421 as first reply)
 * starts again once on a fresh connection: no recipient is deferred for a stale connection. The
 * worker's drain QUITs the idle connections; cmtpd_delivery_stop frees the pool. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/mem.h>

#include "daemon/delivery_internal.h"

/* SM_READ_MAX is the plaintext decrypted per tls_conn_read call. */
#define SM_READ_MAX 16384

static void sm_body_chunk(struct dl_job *j, int err);
static void sm_begin(struct dl_job *j, bool eight_bit, bool binary);
static void sm_prescan_chunk(struct dl_job *j, int err);
static void sm_events(struct dl_job *j, const uint8_t *in, size_t len);
static bool sm_after_input(struct dl_job *j);

/* sm_name is the protocol's name for reasons and logs. */
static const char *sm_name(const struct dl_job *j)
{
    return j->tr == DL_TR_LMTP ? "lmtp" : "smtp";
}

/* sm_fail ends the session: every open recipient fails temporarily with |why|. */
static void sm_fail(struct dl_job *j, const char *why)
{
    cmtpd_delivery_fail_open(j, QUEUE_CONSUMER_TEMPFAIL, why);
    cmtpd_delivery_job_finish(j);
}

/* sm_result records one RCPT_RESULT event. */
static void sm_result(struct dl_job *j, const struct cmtp_smtpc_event *ev)
{
    char why[QUEUE_REASON_MAX];
    enum queue_consumer_result res = ev->result == CMTP_SMTPC_DELIVERED ? QUEUE_CONSUMER_DELIVERED
                                     : ev->result == CMTP_SMTPC_PERM    ? QUEUE_CONSUMER_PERMFAIL
                                                                        : QUEUE_CONSUMER_TEMPFAIL;
    if (ev->local || ev->code == 0)
        cmtpd_delivery_why(why, sizeof(why), "local: %s", ev->status[0] ? ev->status : "failed");
    else if (ev->enhanced[0])
        cmtpd_delivery_why(why, sizeof(why), "%u %s %s", ev->code, ev->enhanced, ev->text);
    else
        cmtpd_delivery_why(why, sizeof(why), "%u %s", ev->code, ev->text);
    cmtpd_delivery_rcpt_set(j, ev->rcpt_index, res, why);
    /* A failure of the session (connection, RSET, local abort) rather than of the recipient:
     * the connection is not reused. */
    if (ev->stage == CMTP_SMTPC_STAGE_SESSION || (ev->local && res == QUEUE_CONSUMER_TEMPFAIL))
        j->sm_tainted = true;
}

/* sm_ready starts the transaction once the server's extensions |ext| are known (READY, or a
 * connection taken from the pool). */
static void sm_ready(struct dl_job *j, const struct cmtp_smtpc_ext *ext)
{
    if (j->begun || j->prescan)
        return;
    /* The body is read once before MAIL FROM only when what it holds decides the transaction:
     * without 8BITMIME an 8-bit body cannot go; with CHUNKING and BINARYMIME a binary body goes
     * unaltered; a fallback may not alter it (PROTOCOL.md 14), so a binary body needs both. */
    bool chunking = ext != NULL && ext->chunking && j->dl->w->cfg->c.delivery.chunking;
    bool scan =
        ext == NULL || !ext->eightbitmime || j->smtp_fallback || (chunking && ext->binarymime);
    if (!scan) {
        /* BODY=8BITMIME is harmless for a 7-bit body: no need to read it twice. */
        sm_begin(j, true, false);
    } else {
        int r;
        j->prescan = true;
        memset(&j->scan, 0, sizeof(j->scan));
        r = cmtpd_delivery_body_fetch(j, sm_prescan_chunk);
        if (r < 0)
            sm_prescan_chunk(j, r);
    }
}

/* sm_begin starts the transaction once the server's extensions are known; |binary|: the body was
 * scanned and has a NUL, a bare CR or a bare LF. */
static void sm_begin(struct dl_job *j, bool eight_bit, bool binary)
{
    j->msg.from = &j->rec->env.from;
    j->msg.rcpts = j->addr;
    j->msg.nrcpt = j->n_tr;
    j->msg.size = j->rec->env.size + j->trace_len;
    j->msg.eight_bit = eight_bit;
    j->msg.binary = binary;
    j->msg.body_strict = j->smtp_fallback; /* PROTOCOL.md 14: a fallback never alters the body */
    j->msg.smtputf8 = false;               /* the client adds it for a UTF-8 address */
    if (cmtp_smtpc_begin(j->sc, &j->msg) < 0) {
        char why[QUEUE_REASON_MAX];
        cmtpd_delivery_why(why, sizeof(why), "%s: cannot begin the transaction", sm_name(j));
        sm_fail(j, why);
        return;
    }
    j->begun = true;
}

/* sm_collect runs what the client decided when the transaction began, outside an input event
 * (after the body prescan, on a pooled connection): results it decided by itself (a message the
 * server cannot take: too-big, no-8bitmime, no-binarymime, no-smtputf8) and BODY_READY for a
 * body sent behind the envelope. They wait for no server octet. Then it sends what is due. */
static void sm_collect(struct dl_job *j)
{
    if (j->finishing)
        return;
    sm_events(j, NULL, 0);
    if (j->finishing || sm_after_input(j))
        return;
    cmtpd_delivery_smtp_pump(j);
}

static void sm_prescan_chunk(struct dl_job *j, int err)
{
    if (err < 0) {
        char why[QUEUE_REASON_MAX];
        cmtpd_delivery_why(why, sizeof(why), "body read failed: %s", strerror(-err));
        sm_fail(j, why);
        return;
    }
    cmtp_dotstuff_scan(&j->scan, j->chunk, j->chunk_len);
    j->chunk_off = j->chunk_len;
    if (!j->body_last) {
        int r = cmtpd_delivery_body_fetch(j, sm_prescan_chunk);
        if (r < 0)
            sm_prescan_chunk(j, r);
        return;
    }
    cmtp_dotstuff_scan_end(&j->scan);
    cmtpd_delivery_body_rewind(j);
    j->prescan = false;
    sm_begin(j, j->scan.eight_bit, cmtp_body_scan_binary(&j->scan));
    sm_collect(j);
}

/* sm_tls_ctx returns the SMTP client TLS context, (re)built when the worker's configuration
 * changed: trust anchors are [tls] ca when set, else the system store. NULL when it cannot be
 * built (dl->smtp_tls_err says why; logged once per configuration). */
static struct tls_ctx *sm_tls_ctx(struct cmtpd_delivery *dl)
{
    struct cmtpd_cfg *g = dl->w->cfg;
    struct tls_ctx *t;
    if (g == NULL || g == dl->smtp_tls_cfg)
        return dl->smtp_tls;
    struct tls_client_config tc = {
        .ca_file = g->c.tls.ca[0] ? g->c.tls.ca : NULL,
        .no_alpn = true,
        .allow_tls12 = true,
        .verify_optional = true,
    };
    t = tls_client_ctx_new(&tc, dl->smtp_tls_err, sizeof(dl->smtp_tls_err));
    cmtpd_cfg_unref(dl->smtp_tls_cfg);
    dl->smtp_tls_cfg = cmtpd_cfg_ref(g);
    if (t == NULL) {
        CMTP_LOG(cmtpd_delivery_log(dl), CMTP_LOG_WARN, "smtp-tls-unavailable",
                 cmtp_log_str("reason", dl->smtp_tls_err),
                 cmtp_log_str("kept", dl->smtp_tls ? "old" : "none"));
        return dl->smtp_tls;
    }
    tls_ctx_unref(dl->smtp_tls);
    dl->smtp_tls = t;
    dl->smtp_tls_gen++; /* parked connections of the old context are not taken any more */
    return t;
}

/* sm_tls_begin starts the TLS handshake after `220` to STARTTLS (the STARTTLS command's send is
 * complete: everything sent from now on is ciphertext). */
static void sm_tls_begin(struct dl_job *j)
{
    j->smtp_tls_wait = false;
    if (j->dl->smtp_tls != NULL)
        j->tls = tls_conn_new_client(j->dl->smtp_tls, j->tls_name[0] ? j->tls_name : NULL);
    if (j->tls == NULL) {
        sm_fail(j, "smtp: cannot create the TLS connection");
        return;
    }
    tls_conn_feed(j->tls, NULL, 0); /* the ClientHello */
    cmtpd_delivery_send(j);
    io_conn_set_deadline(j->c, DL_HANDSHAKE_TIMEOUT_MS);
}

/* sm_tls_established applies the policy to a completed handshake: a certificate that must
 * verify and does not fails the attempt (temporarily: PROTOCOL.md 2.3, 14). Then EHLO again. */
static bool sm_tls_established(struct dl_job *j)
{
    char why[QUEUE_REASON_MAX], v[160];
    j->smtp_verified = tls_conn_peer_verified(j->tls, v, sizeof(v));
    cmtpd_fallback_protection(j->smtp_prot, sizeof(j->smtp_prot), tls_conn_version(j->tls),
                              tls_conn_cipher(j->tls));
    if (j->smtp_verify && !j->smtp_verified) {
        cmtpd_delivery_why(why, sizeof(why), "starttls %s (%s): %s", j->peer,
                           j->tls_name[0] ? j->tls_name : "-", v);
        atomic_fetch_add_explicit(&j->dl->w->dctr.connect_failed, 1, memory_order_relaxed);
        sm_fail(j, why);
        return false;
    }
    if (cmtp_smtpc_tls_done(j->sc) < 0) {
        sm_fail(j, "smtp: STARTTLS out of order");
        return false;
    }
    return true;
}

/* sm_events runs the client's events on |in| (|len| octets of plaintext, all consumed). */
static void sm_events(struct dl_job *j, const uint8_t *in, size_t len)
{
    size_t off = 0;
    if (j->closing)
        return;
    /* Octets after the end of the transaction: the connection is not parked (the client takes
     * them as a protocol error). */
    j->sm_park = false;
    if (j->conn_reused && !j->sm_replied && len > 0) {
        bool all_open = true;
        for (size_t i = 0; i < j->n_tr; i++)
            all_open = all_open && j->rc[j->map[i]].st == DL_R_OPEN;
        if (len >= 3 && memcmp(in, "421", 3) == 0 && all_open) {
            /* The server is closing the pooled connection (its idle timeout raced with us): a
             * stale connection, tried again on a fresh one (cmtpd_delivery_smtp_stale_retry). */
            j->closing = true;
            io_conn_abort(j->c);
            return;
        }
        j->sm_replied = true;
    }
    for (;;) {
        struct cmtp_smtpc_event ev;
        size_t used = 0;
        enum cmtp_smtpc_ev k = cmtp_smtpc_feed(j->sc, in ? in + off : NULL, len - off, &used, &ev);
        off += used;
        switch (k) {
        case CMTP_SMTPC_NEED_INPUT:
            return;
        case CMTP_SMTPC_READY:
            sm_ready(j, ev.ext);
            break;
        case CMTP_SMTPC_START_TLS:
            if (j->tr != DL_TR_SMTP || j->tls != NULL) {
                cmtp_smtpc_abort(j->sc, "starttls-not-asked");
                break;
            }
            /* The client refused octets after the 220 (injection); nothing of |in| is left. The
             * handshake starts once the STARTTLS command's send has completed. */
            j->smtp_tls_wait = true;
            if (!j->send_inflight && j->sbuf_len == 0)
                sm_tls_begin(j);
            return;
        case CMTP_SMTPC_RCPT_RESULT:
            sm_result(j, &ev);
            break;
        case CMTP_SMTPC_BODY_READY: {
            int r;
            j->in_body = true;
            j->trace_off = 0;
            cmtpd_delivery_body_rewind(j);
            r = cmtpd_delivery_body_fetch(j, sm_body_chunk);
            if (r < 0)
                sm_body_chunk(j, r);
            break;
        }
        case CMTP_SMTPC_DONE:
            if (off == len && !j->sm_tainted) {
                /* Parked (or QUITted) once this input is handled: sm_after_input. */
                j->sm_park = true;
                return;
            }
            cmtp_smtpc_quit(j->sc);
            break;
        case CMTP_SMTPC_CLOSED:
        case CMTP_SMTPC_PROTOCOL_ERROR: {
            char why[QUEUE_REASON_MAX];
            if (k == CMTP_SMTPC_CLOSED && ev.code != 0 && ev.code != 221)
                cmtpd_delivery_why(why, sizeof(why), "%s session closed: %u %s%s%s", sm_name(j),
                                   ev.code, ev.enhanced, ev.enhanced[0] ? " " : "", ev.text);
            else
                cmtpd_delivery_why(why, sizeof(why), "%s %s: %s %s", sm_name(j),
                                   k == CMTP_SMTPC_CLOSED ? "session closed" : "protocol error",
                                   ev.status[0] ? ev.status : "-", ev.text);
            if (j->tls != NULL && tls_conn_handshake_done(j->tls))
                tls_conn_close_notify(j->tls);
            sm_fail(j, why);
            return;
        }
        }
        if (j->finishing)
            return;
    }
}

static void sm_body_chunk(struct dl_job *j, int err)
{
    if (err < 0) {
        char why[QUEUE_REASON_MAX];
        cmtpd_delivery_why(why, sizeof(why), "body read failed: %s", strerror(-err));
        cmtp_smtpc_abort(j->sc, "body-read-failed");
        sm_fail(j, why);
        return;
    }
    atomic_fetch_add_explicit(&j->dl->w->dctr.body_bytes, j->chunk_len, memory_order_relaxed);
    cmtpd_delivery_smtp_pump(j);
}

/* sm_encode feeds the trace field and the body into the client's output while it has room. */
static void sm_encode(struct dl_job *j)
{
    while (j->in_body && !j->finishing) {
        size_t used = 0;
        if (j->trace_off < j->trace_len) {
            cmtp_smtpc_body(j->sc, (const uint8_t *)j->trace + j->trace_off,
                            j->trace_len - j->trace_off, &used);
            j->trace_off += used;
        } else if (j->chunk_off < j->chunk_len) {
            cmtp_smtpc_body(j->sc, j->chunk + j->chunk_off, j->chunk_len - j->chunk_off, &used);
            j->chunk_off += used;
        } else if (j->body_last) {
            if (cmtp_smtpc_body_end(j->sc) < 0)
                return; /* output full: after the next send */
            j->in_body = false;
            j->body_ended = true;
            return;
        } else {
            if (!j->body_req) {
                int r = cmtpd_delivery_body_fetch(j, sm_body_chunk);
                if (r < 0)
                    sm_body_chunk(j, r);
            }
            return;
        }
        if (used == 0)
            return; /* output full */
    }
}

/* sm_flush_plain moves the client's output into the plaintext send buffer, one send at a time. */
static void sm_flush_plain(struct dl_job *j)
{
    const uint8_t *p;
    size_t n;
    for (;;) {
        sm_encode(j);
        if (j->finishing)
            return;
        if (j->send_inflight || j->sbuf_len > 0)
            return;
        n = cmtp_smtpc_output(j->sc, &p);
        if (n == 0)
            return;
        if (n > CMTP_SMTPC_OUT_MAX)
            n = CMTP_SMTPC_OUT_MAX;
        memcpy(j->sbuf, p, n);
        cmtp_smtpc_output_consume(j->sc, n);
        j->sbuf_len = n;
        cmtpd_delivery_send(j);
        /* The client's buffer has room again: encode more while the send is in flight. */
    }
}

/* sm_flush_tls moves the client's output into TLS until TLS pushes back (TLS_OUT_PENDING_MAX)
 * or the body needs its next chunk. */
static void sm_flush_tls(struct dl_job *j)
{
    const uint8_t *p;
    size_t n;
    for (;;) {
        sm_encode(j);
        if (j->finishing)
            return;
        n = cmtp_smtpc_output(j->sc, &p);
        if (n == 0)
            return;
        size_t w = 0;
        enum tls_result r = tls_conn_write(j->tls, p, n, &w);
        if (w > 0)
            cmtp_smtpc_output_consume(j->sc, w);
        if (r == TLS_ERROR) {
            sm_fail(j, "smtp: tls write failed");
            return;
        }
        if (r == TLS_AGAIN)
            return;
    }
}

void cmtpd_delivery_smtp_pump(struct dl_job *j)
{
    if (j->sc == NULL || j->finishing || !j->conn_open || j->closing)
        return;
    if (j->smtp_tls_wait) {
        if (!j->send_inflight && j->sbuf_len == 0)
            sm_tls_begin(j);
        return;
    }
    if (j->tls != NULL) {
        if (!tls_conn_handshake_done(j->tls)) {
            cmtpd_delivery_send(j); /* the rest of the handshake */
            return;
        }
        sm_flush_tls(j);
        if (j->finishing)
            return;
        cmtpd_delivery_send(j);
    } else {
        sm_flush_plain(j);
        if (j->finishing)
            return;
    }
    uint32_t t = cmtp_smtpc_timeout_ms(j->sc);
    if (t > 0)
        io_conn_set_deadline(j->c, t);
    else
        io_conn_clear_deadline(j->c);
}

/* ---- the idle pool ------------------------------------------------------------------------ */

/* pc_key_match says whether idle slot |p| serves |j|'s endpoint. */
static bool pc_key_match(const struct dl_pconn *p, const struct dl_job *j)
{
    return p->st == DL_PC_IDLE && p->tr == j->tr && p->sa_len == j->sa_len &&
           memcmp(&p->sa, &j->sa, j->sa_len) == 0 && p->tls_mode == j->smtp_tls_mode &&
           p->verify == j->smtp_verify && p->tls_gen == j->dl->smtp_tls_gen &&
           p->no_chunking == !j->dl->w->cfg->c.delivery.chunking &&
           strcmp(p->tls_name, j->tls_name) == 0;
}

/* pc_release frees what slot |p| holds (its connection is gone or handed on) and frees it. */
static void pc_release(struct dl_pconn *p)
{
    struct cmtpd_delivery *dl = p->dl;
    cmtp_smtpc_free(p->sc);
    tls_conn_free(p->tls);
    free(p->sbuf);
    memset(p, 0, sizeof(*p));
    dl->pool_n--;
}

/* pc_send starts the next io send of |p|: ciphertext from its TLS chain, or |sbuf|. */
static void pc_send(struct dl_pconn *p)
{
    const uint8_t *b;
    size_t n;
    if (p->send_inflight)
        return;
    if (p->tls != NULL) {
        n = tls_conn_out_peek(p->tls, &b);
    } else {
        b = p->sbuf;
        n = p->sbuf_len;
    }
    if (n == 0)
        return;
    if (io_conn_send(p->c, b, n, p) < 0) {
        io_conn_abort(p->c);
        return;
    }
    p->send_inflight = true;
}

/* pc_quit ends idle connection |p|: QUIT, then close at the reply (or DL_CLOSE_TIMEOUT_MS). */
static void pc_quit(struct dl_pconn *p)
{
    const uint8_t *o;
    size_t n, w = 0;
    p->st = DL_PC_QUIT;
    io_conn_set_deadline(p->c, DL_CLOSE_TIMEOUT_MS);
    if (cmtp_smtpc_quit(p->sc) < 0) {
        io_conn_close(p->c);
        return;
    }
    n = cmtp_smtpc_output(p->sc, &o);
    if (n > CMTP_SMTPC_OUT_MAX)
        n = CMTP_SMTPC_OUT_MAX;
    if (p->tls != NULL) {
        if (tls_conn_write(p->tls, o, n, &w) == TLS_ERROR || w < n) {
            io_conn_abort(p->c);
            return;
        }
    } else {
        memcpy(p->sbuf, o, n);
        p->sbuf_len = n;
    }
    cmtp_smtpc_output_consume(p->sc, n);
    pc_send(p);
}

struct dl_pconn *cmtpd_delivery_pool_of(struct io_conn *c)
{
    const struct cmtpd_worker *w = io_worker_ctx(io_conn_worker(c));
    const struct cmtpd_delivery *dl = w != NULL ? w->dl : NULL;
    uintptr_t ctx = (uintptr_t)io_conn_ctx(c);
    if (dl == NULL || dl->pool_n == 0 || ctx < (uintptr_t)&dl->pool[0] ||
        ctx >= (uintptr_t)&dl->pool[DL_POOL_MAX])
        return NULL;
    return (struct dl_pconn *)io_conn_ctx(c);
}

void cmtpd_delivery_pool_on_data(struct dl_pconn *p, const uint8_t *data, size_t len)
{
    (void)data;
    (void)len;
    if (p->st == DL_PC_IDLE) {
        /* Unasked octets on an idle connection (a 421 before the server closes it): out of the
         * pool, closed at once. */
        CMTP_LOG(cmtpd_delivery_log(p->dl), CMTP_LOG_DEBUG, "pooled-connection-dropped",
                 cmtp_log_str("reason", "server spoke while idle"));
        p->st = DL_PC_QUIT;
        io_conn_abort(p->c);
        return;
    }
    /* The reply to QUIT: done (close_notify first when encrypted). */
    if (p->tls != NULL && tls_conn_handshake_done(p->tls)) {
        tls_conn_close_notify(p->tls);
        pc_send(p);
    }
    io_conn_close(p->c);
}

void cmtpd_delivery_pool_on_send_done(struct dl_pconn *p, int res)
{
    p->send_inflight = false;
    if (res < 0) {
        io_conn_abort(p->c);
        return;
    }
    if (p->tls != NULL)
        tls_conn_out_consume(p->tls, (size_t)res);
    else
        p->sbuf_len = 0;
    pc_send(p);
}

void cmtpd_delivery_pool_on_timeout(struct dl_pconn *p)
{
    if (p->st == DL_PC_IDLE)
        pc_quit(p);
    else
        io_conn_abort(p->c);
}

void cmtpd_delivery_pool_on_close(struct dl_pconn *p)
{
    io_conn_set_ctx(p->c, NULL);
    pc_release(p);
}

void cmtpd_delivery_pool_drain(struct cmtpd_delivery *dl)
{
    for (unsigned i = 0; i < DL_POOL_MAX && dl->pool_n > 0; i++)
        if (dl->pool[i].st == DL_PC_IDLE)
            pc_quit(&dl->pool[i]);
}

/* sm_take gives |j| the most recently parked connection of its endpoint, if any, and begins the
 * transaction on it. Returns false when there is none. */
static bool sm_take(struct dl_job *j)
{
    struct cmtpd_delivery *dl = j->dl;
    struct dl_pconn *p = NULL;
    if (j->conn_no_reuse || dl->pool_n == 0)
        return false;
    for (unsigned i = 0; i < DL_POOL_MAX; i++)
        if (pc_key_match(&dl->pool[i], j) && (p == NULL || dl->pool[i].idle_ms > p->idle_ms))
            p = &dl->pool[i];
    if (p == NULL)
        return false;
    free(j->sbuf);
    j->c = p->c;
    j->tls = p->tls;
    j->sc = p->sc;
    j->sbuf = p->sbuf;
    j->sbuf_len = 0;
    j->send_inflight = false;
    j->conn_uses = p->uses + 1;
    j->conn_born_ms = p->born_ms;
    j->smtp_verified = p->verified;
    j->sm_no_chunking = p->no_chunking;
    memcpy(j->smtp_prot, p->prot, sizeof(j->smtp_prot));
    p->sc = NULL;
    p->tls = NULL;
    p->sbuf = NULL;
    pc_release(p);
    io_conn_set_ctx(j->c, j);
    io_conn_clear_deadline(j->c);
    j->conn_open = true;
    j->conn_reused = true;
    atomic_fetch_add_explicit(&dl->w->dctr.reused, 1, memory_order_relaxed);
    sm_ready(j, cmtp_smtpc_ext(j->sc));
    sm_collect(j);
    return true;
}

/* sm_park moves |j|'s connection into the idle pool after a clean transaction and finishes the
 * job. Returns false (the caller QUITs) when it may not be reused or there is no room. */
static bool sm_park(struct dl_job *j)
{
    struct cmtpd_delivery *dl = j->dl;
    struct dl_pconn *p = NULL;
    const uint8_t *o;
    unsigned same = 0;
    uint64_t now = io_worker_now_ms(dl->w->io);
    if (j->finishing || !j->conn_open || j->closing || j->sm_tainted || j->send_inflight ||
        j->sbuf_len > 0 || cmtp_smtpc_state(j->sc) != CMTP_SMTPC_STATE_READY ||
        cmtp_smtpc_output(j->sc, &o) > 0 || dl->stopping || dl->w->draining ||
        j->conn_uses >= DL_CONN_REUSE_MAX || now - j->conn_born_ms >= DL_CONN_REUSE_TIME_MS)
        return false;
    if (j->tls != NULL && (!tls_conn_handshake_done(j->tls) || tls_conn_out_peek(j->tls, &o) > 0))
        return false;
    for (unsigned i = 0; i < DL_POOL_MAX; i++) {
        if (dl->pool[i].st == DL_PC_FREE)
            p = p != NULL ? p : &dl->pool[i];
        else if (pc_key_match(&dl->pool[i], j))
            same++;
    }
    if (p == NULL || same >= DL_POOL_PER_ENDPOINT)
        return false;
    p->kind = CMTPD_CONN_DELIVERY;
    p->st = DL_PC_IDLE;
    p->dl = dl;
    p->tr = j->tr;
    memcpy(&p->sa, &j->sa, sizeof(p->sa));
    p->sa_len = j->sa_len;
    p->tls_mode = j->smtp_tls_mode;
    p->verify = j->smtp_verify;
    p->tls_gen = dl->smtp_tls_gen;
    p->no_chunking = j->sm_no_chunking;
    memcpy(p->tls_name, j->tls_name, sizeof(p->tls_name));
    p->c = j->c;
    p->tls = j->tls;
    p->sc = j->sc;
    p->sbuf = j->sbuf;
    p->sbuf_len = 0;
    p->send_inflight = false;
    p->uses = j->conn_uses;
    p->born_ms = j->conn_born_ms;
    p->idle_ms = now;
    p->verified = j->smtp_verified;
    memcpy(p->prot, j->smtp_prot, sizeof(p->prot));
    dl->pool_n++;
    io_conn_set_ctx(p->c, p);
    io_conn_set_deadline(p->c, DL_POOL_IDLE_MS);
    j->c = NULL;
    j->tls = NULL;
    j->sc = NULL;
    j->sbuf = NULL;
    j->conn_open = false;
    cmtpd_delivery_job_finish(j);
    return true;
}

/* sm_after_input ends a transaction that sm_events saw DONE once the input is handled: the
 * connection is parked, or QUIT is queued. Returns true when |j| no longer holds it. */
static bool sm_after_input(struct dl_job *j)
{
    if (!j->sm_park)
        return false;
    j->sm_park = false;
    if (sm_park(j))
        return true;
    if (!j->finishing && cmtp_smtpc_quit(j->sc) < 0)
        cmtpd_delivery_job_finish(j);
    return false;
}

bool cmtpd_delivery_smtp_stale_retry(struct dl_job *j)
{
    if ((j->tr != DL_TR_LMTP && j->tr != DL_TR_SMTP) || !j->conn_reused || j->sm_replied ||
        j->finishing)
        return false;
    for (size_t i = 0; i < j->n_tr; i++)
        if (j->rc[j->map[i]].st != DL_R_OPEN)
            return false;
    CMTP_LOG(cmtpd_delivery_log(j->dl), CMTP_LOG_DEBUG, "pooled-connection-stale",
             cmtp_log_str("qid", j->qid), cmtp_log_str("peer", j->peer),
             cmtp_log_str("next", "fresh connection"));
    cmtp_smtpc_free(j->sc);
    j->sc = NULL;
    tls_conn_free(j->tls);
    j->tls = NULL;
    cmtpd_delivery_body_rewind(j);
    j->closing = j->send_inflight = j->in_body = false;
    j->sbuf_len = 0;
    j->conn_reused = false;
    j->conn_no_reuse = true; /* once: this attempt takes no pooled connection again */
    cmtpd_delivery_smtp_start(j);
    return true;
}

void cmtpd_delivery_smtp_on_connect(struct dl_job *j, int res)
{
    char why[QUEUE_REASON_MAX];
    if (res < 0) {
        j->smtp_connect_failed = true;
        cmtpd_delivery_why(why, sizeof(why), "%s connect %s: %s", sm_name(j), j->peer,
                           strerror(-res));
        cmtpd_delivery_fail_open(j, QUEUE_CONSUMER_TEMPFAIL, why);
        j->finishing = true; /* on_close follows */
        return;
    }
    if (j->sa.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(io_conn_fd(j->c), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    struct cmtp_smtpc_config sc = {
        .mode = j->tr == DL_TR_LMTP ? CMTP_SMTPC_LMTP : CMTP_SMTPC_SMTP,
        /* LMTP: the store is local (loopback or a Unix socket). */
        .tls = j->tr == DL_TR_LMTP ? CMTP_SMTPC_TLS_NONE : j->smtp_tls_mode,
        .helo = j->dl->w->d->hostname,
        .no_chunking = !j->dl->w->cfg->c.delivery.chunking,
    };
    j->sm_no_chunking = sc.no_chunking;
    j->sc = cmtp_smtpc_new(&sc);
    if (j->sc == NULL) {
        cmtpd_delivery_why(why, sizeof(why), "%s: out of memory", sm_name(j));
        sm_fail(j, why);
        return;
    }
    cmtpd_delivery_smtp_pump(j);
}

void cmtpd_delivery_smtp_on_data(struct dl_job *j, const uint8_t *data, size_t len)
{
    uint8_t pt[SM_READ_MAX];
    char why[QUEUE_REASON_MAX];
    enum tls_result r;
    if (j->sc == NULL || j->finishing)
        return;
    if (j->tls == NULL) {
        sm_events(j, data, len);
        if (!sm_after_input(j))
            cmtpd_delivery_smtp_pump(j);
        return;
    }
    bool was_done = tls_conn_handshake_done(j->tls);
    r = tls_conn_feed(j->tls, data, len);
    if (!was_done) {
        if (r == TLS_ERROR || r == TLS_CLOSED) {
            char e[128];
            tls_conn_error_string(j->tls, e, sizeof(e));
            cmtpd_delivery_why(why, sizeof(why), "starttls %s (%s): %s", j->peer,
                               j->tls_name[0] ? j->tls_name : "-", e);
            atomic_fetch_add_explicit(&j->dl->w->dctr.connect_failed, 1, memory_order_relaxed);
            sm_fail(j, why);
            return;
        }
        if (r == TLS_AGAIN) {
            cmtpd_delivery_send(j);
            return;
        }
        if (!sm_tls_established(j))
            return;
    }
    for (;;) {
        size_t n = 0;
        r = tls_conn_read(j->tls, pt, sizeof(pt), &n);
        if (r != TLS_OK)
            break;
        if (!j->finishing)
            sm_events(j, pt, n);
    }
    OPENSSL_cleanse(pt, sizeof(pt));
    if (j->closing)
        return;
    if ((r == TLS_ERROR || r == TLS_CLOSED) && !j->finishing) {
        char e[128];
        tls_conn_error_string(j->tls, e, sizeof(e));
        cmtpd_delivery_why(why, sizeof(why), "connection to %s ended: %s", j->peer,
                           r == TLS_CLOSED ? "close_notify" : e);
        sm_fail(j, why);
        return;
    }
    if (!sm_after_input(j))
        cmtpd_delivery_smtp_pump(j);
}

/* sm_smtp_policy decides the STARTTLS policy of an SMTP job: the fallback level's, or [delivery]
 * smtp_starttls and smtp_tls_verify. Returns false (the recipients failed) when it cannot be
 * met. */
static bool sm_smtp_policy(struct dl_job *j)
{
    const struct cmtp_config *cfg = &j->dl->w->cfg->c;
    char why[QUEUE_REASON_MAX];
    if (j->smtp_fallback) {
        if (!cmtpd_fallback_policy(j->smtp_level, &j->smtp_tls_mode, &j->smtp_verify)) {
            sm_fail(j, "fallback: not permitted by the originator (FALLBACK=none)");
            return false;
        }
    } else {
        j->smtp_tls_mode = cfg->delivery.smtp_starttls;
        j->smtp_verify = cfg->delivery.smtp_tls_verify;
    }
    if (j->smtp_tls_mode == CMTP_SMTPC_TLS_NONE || sm_tls_ctx(j->dl) != NULL)
        return true;
    if (j->smtp_tls_mode == CMTP_SMTPC_TLS_MAY && !j->smtp_verify) {
        j->smtp_tls_mode = CMTP_SMTPC_TLS_NONE; /* opportunistic: plaintext it is */
        return true;
    }
    cmtpd_delivery_why(why, sizeof(why), "smtp: no TLS client context: %.80s", j->dl->smtp_tls_err);
    sm_fail(j, why);
    return false;
}

void cmtpd_delivery_smtp_start(struct dl_job *j)
{
    char why[QUEUE_REASON_MAX];
    int r;
    /* Per-attempt state: the router may start the transport again on the same job (the next
     * host) after cmtpd_delivery_smtp_cleanup. */
    j->begun = j->prescan = j->body_ended = false;
    j->trace_off = 0;
    j->smtp_tls_wait = j->smtp_connect_failed = j->smtp_verified = j->smtp_recorded = false;
    j->smtp_prot[0] = '\0';
    if (j->sa_len == 0) {
        cmtpd_delivery_why(why, sizeof(why),
                           "no-route: [delivery] %s must be unix:PATH or an IP address (or "
                           "localhost)",
                           sm_name(j));
        sm_fail(j, why);
        return;
    }
    if (j->tr == DL_TR_SMTP && !sm_smtp_policy(j))
        return;
    /* A fallback is no final delivery: no CMTP-Trace field (PROTOCOL.md 14). */
    if (!j->smtp_fallback && j->trace == NULL && cmtpd_delivery_trace_field(j) < 0) {
        sm_fail(j, "out of memory");
        return;
    }
    if (j->n_tr > DL_LMTP_RCPT_MAX) {
        for (size_t i = DL_LMTP_RCPT_MAX; i < j->n_tr; i++)
            cmtpd_delivery_rcpt_set(j, i, QUEUE_CONSUMER_TEMPFAIL,
                                    "deferred: more recipients than one transaction takes");
        j->n_tr = DL_LMTP_RCPT_MAX;
    }
    j->conn_reused = j->sm_replied = j->sm_park = j->sm_tainted = false;
    if (sm_take(j))
        return;
    if (j->sbuf == NULL)
        j->sbuf = malloc(CMTP_SMTPC_OUT_MAX);
    if (j->sbuf == NULL) {
        sm_fail(j, "out of memory");
        return;
    }
    r = io_connect(j->dl->w->io, &j->c, (const struct sockaddr *)&j->sa, j->sa_len, j,
                   DL_CONNECT_TIMEOUT_MS);
    if (r < 0) {
        j->smtp_connect_failed = true;
        if (r == -EAFNOSUPPORT)
            cmtpd_delivery_why(why, sizeof(why),
                               "%s connect %s: the io engine cannot connect there", sm_name(j),
                               j->peer);
        else
            cmtpd_delivery_why(why, sizeof(why), "%s connect %s: %s", sm_name(j), j->peer,
                               strerror(-r));
        atomic_fetch_add_explicit(&j->dl->w->dctr.connect_failed, 1, memory_order_relaxed);
        sm_fail(j, why);
        return;
    }
    j->conn_open = true;
    j->conn_uses = 1;
    j->conn_born_ms = io_worker_now_ms(j->dl->w->io);
    atomic_fetch_add_explicit(&j->dl->w->dctr.connects, 1, memory_order_relaxed);
}

bool cmtpd_delivery_smtp_connect_failed(const struct dl_job *j)
{
    return j->tr == DL_TR_SMTP && j->smtp_connect_failed;
}

/* sm_fallback_record writes the fallback record of a completed fallback attempt: one log line,
 * and every transport recipient's reason rewritten to carry the same facts (so the queue record
 * and any status report name the level used). */
static void sm_fallback_record(struct dl_job *j)
{
    const char *level = cmtp_fallback_name(j->smtp_level);
    const char *prot = j->smtp_prot[0] ? j->smtp_prot : "none";
    const struct dl_rcpt *reply = NULL;
    size_t nd = 0, nt = 0, np = 0;
    char why[QUEUE_REASON_MAX];
    j->smtp_recorded = true;
    for (size_t i = 0; i < j->n_tr; i++) {
        const struct dl_rcpt *r = &j->rc[j->map[i]];
        nd += r->result == QUEUE_CONSUMER_DELIVERED;
        nt += r->result == QUEUE_CONSUMER_TEMPFAIL;
        np += r->result == QUEUE_CONSUMER_PERMFAIL;
        /* The reply of the record: the server's answer to the message if it took it for
         * anyone, else the first recipient's outcome. */
        if (reply == NULL ||
            (r->result == QUEUE_CONSUMER_DELIVERED && reply->result != QUEUE_CONSUMER_DELIVERED))
            reply = r;
    }
    CMTP_LOG(cmtpd_delivery_log(j->dl), CMTP_LOG_INFO, "fallback", cmtp_log_str("qid", j->qid),
             cmtp_log_str("txn", j->txid), cmtp_log_str("dest", j->dest),
             cmtp_log_int("at_ms", cmtpd_delivery_now_ms()), cmtp_log_str("host", j->peer),
             cmtp_log_str("level", level != NULL ? level : "?"), cmtp_log_str("protection", prot),
             cmtp_log_str("verified", j->smtp_prot[0] && j->smtp_verified ? "yes" : "no"),
             cmtp_log_str("reply", reply != NULL ? reply->reason : "-"),
             cmtp_log_uint("delivered", nd), cmtp_log_uint("deferred", nt),
             cmtp_log_uint("bounced", np));
    for (size_t i = 0; i < j->n_tr; i++) {
        struct dl_rcpt *r = &j->rc[j->map[i]];
        cmtpd_fallback_reason(why, sizeof(why), j->smtp_level, j->peer, prot, j->smtp_verified,
                              r->reason);
        memcpy(r->reason, why, sizeof(r->reason));
    }
}

void cmtpd_delivery_smtp_cleanup(struct dl_job *j)
{
    if (j->tr == DL_TR_SMTP && j->smtp_fallback && j->completed && !j->smtp_recorded)
        sm_fallback_record(j);
    cmtp_smtpc_free(j->sc);
    j->sc = NULL;
    free(j->sbuf);
    j->sbuf = NULL;
    j->sbuf_len = 0;
    if (j->tr == DL_TR_SMTP) {
        tls_conn_free(j->tls);
        j->tls = NULL;
    }
}

void cmtpd_delivery_smtp_stop(struct cmtpd_delivery *dl)
{
    /* Every connection got on_close before (worker_fini): only memory may be left. */
    for (unsigned i = 0; i < DL_POOL_MAX; i++)
        if (dl->pool[i].st != DL_PC_FREE)
            pc_release(&dl->pool[i]);
    tls_ctx_unref(dl->smtp_tls);
    dl->smtp_tls = NULL;
    cmtpd_cfg_unref(dl->smtp_tls_cfg);
    dl->smtp_tls_cfg = NULL;
}
