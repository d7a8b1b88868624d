/* daemon/delivery_report.c — status to the originator: each report item of the queue becomes CMTP
 * status reports (PROTOCOL.md 15) or, for mail that came in over SMTP, one RFC 3464 DSN, queued
 * as new messages from <> on the worker's ingest queue. Not the report formats (core/dsn.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/mem.h>
#include <openssl/sha.h>

#include "core/dsn.h"
#include "daemon/delivery_internal.h"

/* RP_JSON_MAX bounds one CMTP report body (five members; the reason is cut at CMTP_TEXT_MAX). */
#define RP_JSON_MAX 4096
/* RP_DSN_BASE and RP_DSN_PER_RCPT size a DSN's buffer; RP_DSN_MAX bounds it. */
#define RP_DSN_BASE 8192
#define RP_DSN_PER_RCPT 2048
#define RP_DSN_MAX (4u * 1024u * 1024u)

/* dl_report is the report item being handled: its raw copy (for the acknowledgement), its
 * decoded form and the report messages queued so far. */
struct dl_report {
    struct cmtpd_delivery *dl;
    unsigned shard;
    uint8_t *raw;
    size_t raw_len;
    struct queue_consumer_report rep;
    bool decoded;
    bool dsn;    /* one DSN for every recipient (mail that came in over SMTP) */
    size_t next; /* the next recipient to report (CMTP) */
    struct queue_txn *txn;
    struct cmtp_envelope *env;
    char *body;
    size_t body_len;
    const char *status; /* of the report being queued, for the log */
    char rcpt[CMTP_ADDR_MAX + 1];
};

static void rp_next(struct dl_report *rp);

static void rp_free(struct dl_report *rp)
{
    if (rp == NULL)
        return;
    queue_txn_abort(rp->txn);
    if (rp->decoded)
        queue_consumer_report_cleanup(&rp->rep);
    free(rp->raw);
    if (rp->body != NULL) {
        OPENSSL_cleanse(rp->body, rp->body_len);
        free(rp->body);
    }
    free(rp->env);
    free(rp);
}

/* rp_end finishes the item: |ack| removes it from the queue, otherwise it is handed out again
 * after its take lease. */
static void rp_ack_cb(void *arg, int err)
{
    struct dl_report *rp = arg;
    struct cmtpd_delivery *dl = rp->dl;
    if (err < 0 && err != -ENOENT)
        CMTP_LOG(cmtpd_delivery_log(dl), CMTP_LOG_WARN, "report-ack-failed",
                 cmtp_log_str("qid", rp->rep.qid), cmtp_log_str("reason", strerror(-err)));
    dl->report = NULL;
    dl->report_busy = false;
    dl->report_next_ms = 0; /* there may be more */
    rp_free(rp);
}

static void rp_end(struct dl_report *rp, bool ack)
{
    struct cmtpd_delivery *dl = rp->dl;
    if (ack &&
        queue_consumer_report_ack(dl->qc, rp->shard, rp->raw, rp->raw_len, rp_ack_cb, rp) == 0)
        return;
    dl->report = NULL;
    dl->report_busy = false;
    dl->report_next_ms = (uint64_t)cmtpd_delivery_now_ms() + DL_REPORT_IDLE_MS;
    rp_free(rp);
}

static void rp_commit_cb(void *arg, const struct queue_commit_result *r)
{
    struct dl_report *rp = arg;
    struct cmtpd_delivery *dl = rp->dl;
    rp->txn = NULL;
    if (r->status != QUEUE_COMMIT_ACCEPTED) {
        /* Not acknowledged: the item comes back after its lease, and the same derived TXN
         * makes what was queued meanwhile a duplicate (dedup by txid). */
        CMTP_LOG(cmtpd_delivery_log(dl), CMTP_LOG_WARN, "report-deferred",
                 cmtp_log_str("qid", rp->rep.qid), cmtp_log_str("reason", r->reason));
        rp_end(rp, false);
        return;
    }
    atomic_fetch_add_explicit(&dl->w->dctr.reports, 1, memory_order_relaxed);
    CMTP_LOG(cmtpd_delivery_log(dl), CMTP_LOG_INFO, "report-queued", cmtp_log_str("qid", r->qid),
             cmtp_log_str("about_qid", rp->rep.qid),
             cmtp_log_str("about_txn", rp->rep.record->env.txid),
             cmtp_log_str("kind", rp->dsn ? "dsn" : "cmtp"), cmtp_log_str("rcpt", rp->rcpt),
             cmtp_log_str("status", rp->status), cmtp_log_uint("dup", r->dup));
    rp_next(rp);
}

/* rp_queue queues rp->body as a message from <> to the originator, REPORT=<the TXN the message
 * was accepted with>, with the transaction id derived from |parts| (a retry is a duplicate). */
static int rp_queue(struct dl_report *rp, const void *const *parts, const size_t *lens, size_t n)
{
    struct cmtpd_delivery *dl = rp->dl;
    const struct queue_record *rec = rp->rep.record;
    struct queue_rcpt to;
    struct queue_txn_meta meta;
    uint8_t digest[CMTP_DIGEST_LEN];
    if (rp->env == NULL && (rp->env = malloc(sizeof(*rp->env))) == NULL)
        return -ENOMEM;
    memset(rp->env, 0, sizeof(*rp->env));
    rp->env->from.is_null = true;
    cmtpd_delivery_derive_txid(rp->env->txid, parts, lens, n);
    rp->env->size = rp->body_len;
    SHA256((const uint8_t *)rp->body, rp->body_len, digest);
    memcpy(rp->env->digest, digest, sizeof(digest));
    cmtp_policy_init(&rp->env->policy); /* PROTOCOL.md 15.1: reports use the default policy */
    snprintf(rp->env->report_txid, sizeof(rp->env->report_txid), "%s", rec->env.txid);
    memset(&to, 0, sizeof(to));
    to.addr = rec->env.from;
    to.role = CMTP_ROLE_FINAL;
    to.status = QUEUE_RCPT_PENDING;
    memset(&meta, 0, sizeof(meta));
    snprintf(meta.listener, sizeof(meta.listener), "report");
    meta.received_ms = cmtpd_delivery_now_ms();
    rp->txn = queue_txn_begin(dl->w->q, rp->env, &to, 1, &meta);
    if (rp->txn == NULL)
        return -errno;
    if (queue_txn_append(rp->txn, (const uint8_t *)rp->body, rp->body_len) == QUEUE_TEMPFAIL ||
        queue_txn_commit(rp->txn, digest, rp_commit_cb, rp) < 0) {
        queue_txn_abort(rp->txn);
        rp->txn = NULL;
        return -EIO;
    }
    return 0;
}

static enum cmtp_report_status rp_status(const struct queue_consumer_report_rcpt *r,
                                         const char **reason)
{
    *reason = r->reason;
    if (r->status == QUEUE_RCPT_EXPIRED)
        return CMTP_REPORT_EXPIRED;
    if (strncmp(r->reason, "relay-refused", 13) == 0) {
        /* Our own marker: the reply that decided it follows. */
        *reason = r->reason + 13;
        while (**reason == ':' || **reason == ' ')
            (*reason)++;
        return CMTP_REPORT_RELAY_REFUSED;
    }
    return CMTP_REPORT_FAILED;
}

/* rp_cmtp queues the report about recipient rp->next (PROTOCOL.md 15.2: one per recipient). */
static int rp_cmtp(struct dl_report *rp)
{
    const struct queue_consumer_report_rcpt *r = &rp->rep.rcpts[rp->next];
    const struct queue_record *rec = rp->rep.record;
    const char *reason;
    enum cmtp_report_status st = rp_status(r, &reason);
    uint8_t idx[4] = {(uint8_t)(r->rcpt >> 24), (uint8_t)(r->rcpt >> 16), (uint8_t)(r->rcpt >> 8),
                      (uint8_t)r->rcpt};
    const void *parts[3] = {"cmtp-report", rp->rep.qid, idx};
    size_t lens[3] = {11, strlen(rp->rep.qid), sizeof(idx)};
    int n;
    if (r->rcpt >= rec->n_rcpts)
        return -EINVAL;
    if (rp->body == NULL && (rp->body = malloc(RP_JSON_MAX)) == NULL)
        return -ENOMEM;
    n = cmtp_dsn_report_json(rp->body, RP_JSON_MAX, rec->env.txid, &rec->rcpts[r->rcpt].addr, st,
                             reason, rp->rep.at_ms / 1000);
    if (n < 0)
        return n;
    rp->body_len = (size_t)n;
    rp->status = cmtp_report_status_name(st);
    cmtp_addr_format(&rec->rcpts[r->rcpt].addr, rp->rcpt, sizeof(rp->rcpt));
    return rp_queue(rp, parts, lens, 3);
}

/* rp_enhanced copies the enhanced status code at the start of |reason| after its reply code
 * ("550 5.1.1 ...") into |out|, or |dflt|. */
static void rp_enhanced(const char *reason, const char *dflt, char *out, size_t len)
{
    const char *p = reason;
    size_t n = 0;
    snprintf(out, len, "%s", dflt);
    if (strlen(p) < 4 || p[3] != ' ')
        return;
    p += 4;
    while (p[n] != '\0' && p[n] != ' ' && n < 15)
        n++;
    if (n >= 5 && (p[0] == '5') && p[1] == '.' && p[n - 1] >= '0' && p[n - 1] <= '9' &&
        strspn(p, "0123456789.") == n)
        snprintf(out, len, "%.*s", (int)n, p);
}

/* rp_dsn queues one RFC 3464 DSN about every recipient of the item. */
static int rp_dsn(struct dl_report *rp)
{
    const struct queue_record *rec = rp->rep.record;
    const struct cmtpd_worker *w = rp->dl->w;
    size_t n = rp->rep.n_rcpts, cap = RP_DSN_BASE + n * RP_DSN_PER_RCPT;
    struct cmtp_dsn_rcpt *dr = calloc(n ? n : 1, sizeof(*dr));
    char(*status)[16] = calloc(n ? n : 1, sizeof(*status));
    char msgid[CMTP_TXID_MAX + CMTP_DOMAIN_MAX + 2];
    uint8_t *idx = malloc(n * 4 + 1);
    int len = -ENOMEM;
    if (cap > RP_DSN_MAX)
        cap = RP_DSN_MAX;
    if (dr == NULL || status == NULL || idx == NULL)
        goto out;
    for (size_t i = 0; i < n; i++) {
        const struct queue_consumer_report_rcpt *r = &rp->rep.rcpts[i];
        len = -EINVAL;
        if (r->rcpt >= rec->n_rcpts)
            goto out;
        rp_enhanced(r->reason, r->status == QUEUE_RCPT_EXPIRED ? "5.4.7" : "5.0.0", status[i],
                    sizeof(status[i]));
        dr[i].rcpt = &rec->rcpts[r->rcpt].addr;
        dr[i].action = CMTP_DSN_FAILED;
        dr[i].status = status[i];
        dr[i].remote_mta = NULL;
        dr[i].diagnostic = r->reason[0] ? r->reason : NULL;
        dr[i].last_attempt = rp->rep.at_ms / 1000;
        for (int b = 0; b < 4; b++)
            idx[i * 4 + (size_t)b] = (uint8_t)(r->rcpt >> (24 - 8 * b));
    }
    const void *parts[3] = {"cmtp-dsn", rp->rep.qid, idx};
    size_t lens[3] = {8, strlen(rp->rep.qid), n * 4};
    char txid[CMTP_TXID_MAX + 1];
    cmtpd_delivery_derive_txid(txid, parts, lens, 3);
    snprintf(msgid, sizeof(msgid), "%s@%s", txid, w->d->hostname);
    struct cmtp_dsn d = {
        .reporting_mta = w->d->hostname,
        .to = &rec->env.from,
        .message_id = msgid,
        .date = cmtpd_delivery_now_ms() / 1000,
        .arrival_date = rec->created_ms / 1000,
        .rcpts = dr,
        .nrcpt = n,
        .original = rp->rep.headers, /* the message start the queue attached, or NULL */
        .original_len = rp->rep.headers_len,
    };
    len = -ENOMEM;
    if ((rp->body = malloc(cap)) == NULL)
        goto out;
    len = cmtp_dsn_build(rp->body, cap, &d);
    if (len < 0)
        goto out;
    rp->body_len = (size_t)len;
    rp->status = "dsn";
    snprintf(rp->rcpt, sizeof(rp->rcpt), "-");
    len = rp_queue(rp, parts, lens, 3);
out:
    free(dr);
    free(status);
    free(idx);
    return len < 0 ? len : 0;
}

/* rp_next queues the next report of the item, or acknowledges it when all are queued. */
static void rp_next(struct dl_report *rp)
{
    int r;
    if (rp->dsn) {
        if (rp->next > 0) {
            rp_end(rp, true);
            return;
        }
        rp->next = 1;
        r = rp_dsn(rp);
    } else {
        if (rp->next >= rp->rep.n_rcpts) {
            rp_end(rp, true);
            return;
        }
        r = rp_cmtp(rp);
        rp->next++;
    }
    if (r < 0) {
        CMTP_LOG(cmtpd_delivery_log(rp->dl), r == -EINVAL ? CMTP_LOG_WARN : CMTP_LOG_DEBUG,
                 "report-deferred", cmtp_log_str("qid", rp->rep.qid),
                 cmtp_log_str("reason", strerror(-r)));
        /* A report that cannot be built (-EINVAL) never will be: drop the item. */
        rp_end(rp, r == -EINVAL);
    }
}

static void rp_take_cb(void *arg, int err, unsigned shard, const uint8_t *data, size_t len)
{
    struct cmtpd_delivery *dl = arg;
    struct dl_report *rp;
    if (err < 0) {
        dl->report_busy = false;
        dl->report_next_ms = (uint64_t)cmtpd_delivery_now_ms() + DL_REPORT_IDLE_MS;
        return;
    }
    rp = calloc(1, sizeof(*rp));
    if (rp == NULL || (rp->raw = malloc(len ? len : 1)) == NULL) {
        free(rp);
        dl->report_busy = false;
        dl->report_next_ms = (uint64_t)cmtpd_delivery_now_ms() + DL_REPORT_IDLE_MS;
        return;
    }
    dl->report = rp;
    rp->dl = dl;
    rp->shard = shard;
    memcpy(rp->raw, data, len);
    rp->raw_len = len;
    if (queue_consumer_report_decode(&rp->rep, data, len) < 0) {
        CMTP_LOG(cmtpd_delivery_log(dl), CMTP_LOG_WARN, "report-item-corrupt",
                 cmtp_log_uint("shard", shard));
        rp_end(rp, true);
        return;
    }
    rp->decoded = true;
    if (rp->rep.record->env.from.is_null) {
        /* PROTOCOL.md 15.3: no report about a report. */
        atomic_fetch_add_explicit(&dl->w->dctr.reports_skipped, 1, memory_order_relaxed);
        CMTP_LOG(cmtpd_delivery_log(dl), CMTP_LOG_INFO, "report-dropped",
                 cmtp_log_str("qid", rp->rep.qid), cmtp_log_str("txn", rp->rep.record->env.txid),
                 cmtp_log_str("reason", "the message was itself a report"));
        rp_end(rp, true);
        return;
    }
    rp->dsn = queue_record_wants_dsn(rp->rep.record);
    rp_next(rp);
}

void cmtpd_delivery_report_poll(struct cmtpd_delivery *dl)
{
    if (dl->report_busy || dl->stopping || (uint64_t)cmtpd_delivery_now_ms() < dl->report_next_ms ||
        queue_consumer_state(dl->qc, NULL) != QUEUE_CONNECTED ||
        queue_state(dl->w->q, NULL) != QUEUE_CONNECTED)
        return;
    dl->report_busy = true;
    if (queue_consumer_report_take(dl->qc, rp_take_cb, dl) < 0) {
        dl->report_busy = false;
        dl->report_next_ms = (uint64_t)cmtpd_delivery_now_ms() + DL_REPORT_IDLE_MS;
    }
}

void cmtpd_delivery_report_stop(struct cmtpd_delivery *dl)
{
    rp_free(dl->report);
    dl->report = NULL;
    dl->report_busy = false;
}
