/* daemon/delivery_lmtp.c — the LMTP transport of the delivery engine: one connection to
 * [delivery] lmtp per lease, core/smtp_client in LMTP mode, the CMTP-Trace field and the body
 * dot-stuffed from Redis, one result per recipient. Not the SMTP/LMTP protocol (core/). */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "daemon/delivery_internal.h"

static void lm_body_chunk(struct dl_job *j, int err);

/* lm_fail ends the session: every open recipient fails temporarily with |why|. */
static void lm_fail(struct dl_job *j, const char *why)
{
    cmtpd_delivery_fail_open(j, QUEUE_CONSUMER_TEMPFAIL, why);
    cmtpd_delivery_job_finish(j);
}

/* lm_result records one RCPT_RESULT event. */
static void lm_result(struct dl_job *j, const struct cmtp_smtpc_event *ev)
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
}

/* lm_begin starts the transaction once the server's extensions are known. */
static void lm_begin(struct dl_job *j, bool eight_bit)
{
    j->msg.from = &j->rec->env.from;
    j->msg.rcpts = j->addr;
    j->msg.nrcpt = j->n_tr;
    j->msg.size = j->rec->env.size + j->trace_len;
    j->msg.eight_bit = eight_bit;
    j->msg.smtputf8 = false; /* the client adds it for a UTF-8 address */
    if (cmtp_smtpc_begin(j->sc, &j->msg) < 0) {
        lm_fail(j, "lmtp: cannot begin the transaction");
        return;
    }
    j->begun = true;
}

static void lm_prescan_chunk(struct dl_job *j, int err)
{
    if (err < 0) {
        char why[QUEUE_REASON_MAX];
        cmtpd_delivery_why(why, sizeof(why), "body read failed: %s", strerror(-err));
        lm_fail(j, why);
        return;
    }
    cmtp_dotstuff_scan(&j->scan, j->chunk, j->chunk_len);
    j->chunk_off = j->chunk_len;
    if (!j->body_last) {
        int r = cmtpd_delivery_body_fetch(j, lm_prescan_chunk);
        if (r < 0)
            lm_prescan_chunk(j, r);
        return;
    }
    cmtp_dotstuff_scan_end(&j->scan);
    cmtpd_delivery_body_rewind(j);
    j->prescan = false;
    lm_begin(j, j->scan.eight_bit);
    cmtpd_delivery_lmtp_pump(j);
}

/* lm_events runs the client's events on |in| (|len| octets, all consumed). */
static void lm_events(struct dl_job *j, const uint8_t *in, size_t len)
{
    size_t off = 0;
    for (;;) {
        struct cmtp_smtpc_event ev;
        size_t used = 0;
        enum cmtp_smtpc_ev k = cmtp_smtpc_feed(j->sc, in ? in + off : NULL, len - off, &used, &ev);
        off += used;
        switch (k) {
        case CMTP_SMTPC_NEED_INPUT:
            return;
        case CMTP_SMTPC_READY:
            if (j->begun || j->prescan)
                break;
            if (ev.ext != NULL && ev.ext->eightbitmime) {
                /* BODY=8BITMIME is harmless for a 7-bit body: no need to read it twice. */
                lm_begin(j, true);
            } else {
                /* Without 8BITMIME an 8-bit body cannot go: find out before MAIL FROM. */
                int r;
                j->prescan = true;
                memset(&j->scan, 0, sizeof(j->scan));
                r = cmtpd_delivery_body_fetch(j, lm_prescan_chunk);
                if (r < 0)
                    lm_prescan_chunk(j, r);
            }
            break;
        case CMTP_SMTPC_START_TLS:
            cmtp_smtpc_abort(j->sc, "starttls-not-asked");
            break;
        case CMTP_SMTPC_RCPT_RESULT:
            lm_result(j, &ev);
            break;
        case CMTP_SMTPC_BODY_READY: {
            int r;
            j->in_body = true;
            j->trace_off = 0;
            cmtpd_delivery_body_rewind(j);
            r = cmtpd_delivery_body_fetch(j, lm_body_chunk);
            if (r < 0)
                lm_body_chunk(j, r);
            break;
        }
        case CMTP_SMTPC_DONE:
            cmtp_smtpc_quit(j->sc);
            break;
        case CMTP_SMTPC_CLOSED:
        case CMTP_SMTPC_PROTOCOL_ERROR: {
            char why[QUEUE_REASON_MAX];
            cmtpd_delivery_why(why, sizeof(why), "lmtp %s: %s %s",
                               k == CMTP_SMTPC_CLOSED ? "session closed" : "protocol error",
                               ev.status[0] ? ev.status : "-", ev.text);
            lm_fail(j, why);
            return;
        }
        }
        if (j->finishing)
            return;
    }
}

static void lm_body_chunk(struct dl_job *j, int err)
{
    if (err < 0) {
        char why[QUEUE_REASON_MAX];
        cmtpd_delivery_why(why, sizeof(why), "body read failed: %s", strerror(-err));
        cmtp_smtpc_abort(j->sc, "body-read-failed");
        lm_fail(j, why);
        return;
    }
    atomic_fetch_add_explicit(&j->dl->w->dctr.body_bytes, j->chunk_len, memory_order_relaxed);
    cmtpd_delivery_lmtp_pump(j);
}

/* lm_encode feeds the trace field and the body into the client's output while it has room. */
static void lm_encode(struct dl_job *j)
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
                int r = cmtpd_delivery_body_fetch(j, lm_body_chunk);
                if (r < 0)
                    lm_body_chunk(j, r);
            }
            return;
        }
        if (used == 0)
            return; /* output full */
    }
}

void cmtpd_delivery_lmtp_pump(struct dl_job *j)
{
    const uint8_t *p;
    size_t n;
    if (j->sc == NULL || j->finishing || !j->conn_open)
        return;
    for (;;) {
        lm_encode(j);
        if (j->finishing)
            return;
        if (j->send_inflight || j->sbuf_len > 0)
            break;
        n = cmtp_smtpc_output(j->sc, &p);
        if (n == 0)
            break;
        if (n > CMTP_SMTPC_OUT_MAX)
            n = CMTP_SMTPC_OUT_MAX;
        memcpy(j->sbuf, p, n);
        cmtp_smtpc_output_consume(j->sc, n);
        j->sbuf_len = n;
        cmtpd_delivery_send(j);
        /* The client's buffer has room again: encode more while the send is in flight. */
    }
    uint32_t t = cmtp_smtpc_timeout_ms(j->sc);
    if (t > 0)
        io_conn_set_deadline(j->c, t);
    else
        io_conn_clear_deadline(j->c);
}

void cmtpd_delivery_lmtp_on_connect(struct dl_job *j, int res)
{
    char why[QUEUE_REASON_MAX];
    if (res < 0) {
        cmtpd_delivery_why(why, sizeof(why), "lmtp connect %s: %s", j->peer, strerror(-res));
        cmtpd_delivery_fail_open(j, QUEUE_CONSUMER_TEMPFAIL, why);
        j->finishing = true; /* on_close follows */
        return;
    }
    if (j->sa.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(io_conn_fd(j->c), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    struct cmtp_smtpc_config sc = {
        .mode = CMTP_SMTPC_LMTP,
        .tls = CMTP_SMTPC_TLS_NONE, /* the store is local (loopback or a Unix socket) */
        .helo = j->dl->w->d->hostname,
    };
    j->sc = cmtp_smtpc_new(&sc);
    if (j->sc == NULL) {
        lm_fail(j, "lmtp: out of memory");
        return;
    }
    cmtpd_delivery_lmtp_pump(j);
}

void cmtpd_delivery_lmtp_on_data(struct dl_job *j, const uint8_t *data, size_t len)
{
    if (j->sc == NULL || j->finishing)
        return;
    lm_events(j, data, len);
    cmtpd_delivery_lmtp_pump(j);
}

void cmtpd_delivery_lmtp_start(struct dl_job *j)
{
    const struct cmtp_config_socket *s = &j->dl->w->cfg->c.delivery.lmtp;
    char why[QUEUE_REASON_MAX];
    int r;
    if (s->kind == CMTP_CONFIG_SOCKET_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)&j->sa;
        memset(&j->sa, 0, sizeof(j->sa));
        un->sun_family = AF_UNIX;
        snprintf(un->sun_path, sizeof(un->sun_path), "%s", s->path);
        j->sa_len = (socklen_t)sizeof(*un);
    } else if (s->kind == CMTP_CONFIG_SOCKET_TCP &&
               (s->tcp.kind != CMTP_CONFIG_HOST_NAME || strcmp(s->tcp.host, "localhost") == 0)) {
        j->sa_len = cmtpd_delivery_endpoint_sa(&s->tcp, &j->sa);
    } else {
        lm_fail(j, "no-route: [delivery] lmtp must be unix:PATH or an IP address (or localhost)");
        return;
    }
    j->sbuf = malloc(CMTP_SMTPC_OUT_MAX);
    if (j->sbuf == NULL || cmtpd_delivery_trace_field(j) < 0) {
        lm_fail(j, "out of memory");
        return;
    }
    if (j->n_tr > DL_LMTP_RCPT_MAX) {
        for (size_t i = DL_LMTP_RCPT_MAX; i < j->n_tr; i++)
            cmtpd_delivery_rcpt_set(j, i, QUEUE_CONSUMER_TEMPFAIL,
                                    "deferred: more recipients than one LMTP transaction takes");
        j->n_tr = DL_LMTP_RCPT_MAX;
    }
    r = io_connect(j->dl->w->io, &j->c, (const struct sockaddr *)&j->sa, j->sa_len, j,
                   DL_CONNECT_TIMEOUT_MS);
    if (r < 0) {
        if (r == -EAFNOSUPPORT)
            cmtpd_delivery_why(why, sizeof(why),
                               "lmtp connect %s: the io engine cannot connect there", j->peer);
        else
            cmtpd_delivery_why(why, sizeof(why), "lmtp connect %s: %s", j->peer, strerror(-r));
        atomic_fetch_add_explicit(&j->dl->w->dctr.connect_failed, 1, memory_order_relaxed);
        lm_fail(j, why);
        return;
    }
    j->conn_open = true;
    atomic_fetch_add_explicit(&j->dl->w->dctr.connects, 1, memory_order_relaxed);
}

void cmtpd_delivery_lmtp_cleanup(struct dl_job *j)
{
    cmtp_smtpc_free(j->sc);
    j->sc = NULL;
    free(j->sbuf);
    j->sbuf = NULL;
    j->sbuf_len = 0;
}
