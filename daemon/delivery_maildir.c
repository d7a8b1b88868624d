/* daemon/delivery_maildir.c — the Maildir transport of the delivery engine: the body streamed
 * from Redis into one file per recipient, with the one CMTP-Trace field first. Not the Maildir
 * writer itself (daemon/maildir.c). Writes and fsyncs run on the worker thread (see the report). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/delivery_internal.h"

static void md_next_batch(struct dl_job *j);

/* md_fail decides transport recipient |i| from the Maildir error |err|. */
static void md_fail(struct dl_job *j, size_t i, const char *what, int err)
{
    char why[QUEUE_REASON_MAX];
    cmtpd_delivery_why(why, sizeof(why), "maildir %s: %s", what, strerror(err < 0 ? -err : err));
    cmtpd_delivery_rcpt_set(
        j, i, maildir_err_permanent(err) ? QUEUE_CONSUMER_PERMFAIL : QUEUE_CONSUMER_TEMPFAIL, why);
}

/* md_abort_open aborts every file still open with a temporary failure |why|. */
static void md_abort_open(struct dl_job *j, const char *why)
{
    for (size_t k = 0; k < j->md_n; k++) {
        if (!j->md_open[k])
            continue;
        maildir_abort(&j->md[k]);
        j->md_open[k] = false;
        cmtpd_delivery_rcpt_set(j, j->md_tr[k], QUEUE_CONSUMER_TEMPFAIL, why);
    }
}

static void md_chunk(struct dl_job *j, int err)
{
    struct cmtpd_worker *w = j->dl->w;
    bool any = false;
    if (err < 0) {
        char why[QUEUE_REASON_MAX];
        cmtpd_delivery_why(why, sizeof(why), "body read failed: %s", strerror(-err));
        md_abort_open(j, why);
        cmtpd_delivery_job_finish(j);
        return;
    }
    for (size_t k = 0; k < j->md_n; k++) {
        if (!j->md_open[k])
            continue;
        int r = maildir_write(&j->md[k], j->chunk, j->chunk_len);
        if (r < 0) {
            maildir_abort(&j->md[k]);
            j->md_open[k] = false;
            md_fail(j, j->md_tr[k], "write", r);
            continue;
        }
        any = true;
    }
    atomic_fetch_add_explicit(&w->dctr.body_bytes, j->chunk_len, memory_order_relaxed);
    j->chunk_off = j->chunk_len;
    if (!any) {
        md_next_batch(j);
        return;
    }
    if (!j->body_last) {
        int r = cmtpd_delivery_body_fetch(j, md_chunk);
        if (r < 0)
            md_chunk(j, r);
        return;
    }
    for (size_t k = 0; k < j->md_n; k++) {
        char name[256], why[QUEUE_REASON_MAX];
        if (!j->md_open[k])
            continue;
        j->md_open[k] = false;
        int r = maildir_commit(&j->md[k], name, sizeof(name));
        if (r < 0) {
            md_fail(j, j->md_tr[k], "commit", r);
            continue;
        }
        cmtpd_delivery_why(why, sizeof(why), "250 maildir new/%.100s", name);
        cmtpd_delivery_rcpt_set(j, j->md_tr[k], QUEUE_CONSUMER_DELIVERED, why);
    }
    md_next_batch(j);
}

/* md_next_batch opens the files of the next DL_MAILDIR_BATCH recipients and streams the body
 * into them; the job finishes after the last batch. */
static void md_next_batch(struct dl_job *j)
{
    for (;;) {
        j->md_n = 0;
        while (j->md_next < j->n_tr && j->md_n < DL_MAILDIR_BATCH) {
            size_t i = j->md_next++;
            int r = maildir_open(&j->md[j->md_n], &j->dl->md, &j->addr[i],
                                 (const uint8_t *)j->trace, j->trace_len);
            if (r < 0) {
                md_fail(j, i, "open", r);
                continue;
            }
            j->md_tr[j->md_n] = i;
            j->md_open[j->md_n] = true;
            j->md_n++;
        }
        if (j->md_n > 0)
            break;
        if (j->md_next >= j->n_tr) {
            cmtpd_delivery_job_finish(j);
            return;
        }
    }
    cmtpd_delivery_body_rewind(j);
    int r = cmtpd_delivery_body_fetch(j, md_chunk);
    if (r < 0)
        md_chunk(j, r);
}

void cmtpd_delivery_maildir_start(struct dl_job *j)
{
    struct cmtpd_delivery *dl = j->dl;
    const struct cmtpd_worker *w = dl->w;
    const char *root = w->cfg->c.delivery.maildir;
    char why[QUEUE_REASON_MAX];
    if (!dl->md_ok || strcmp(dl->md_root, root) != 0) {
        if (dl->md_ok)
            maildir_ctx_cleanup(&dl->md);
        dl->md_ok = false;
        int r = maildir_ctx_init(&dl->md, root, w->d->hostname, w->id, true);
        if (r < 0) {
            cmtpd_delivery_why(why, sizeof(why), "maildir root %.60s: %s", root, strerror(-r));
            cmtpd_delivery_fail_open(j, QUEUE_CONSUMER_TEMPFAIL, why);
            cmtpd_delivery_job_finish(j);
            return;
        }
        dl->md_ok = true;
        snprintf(dl->md_root, sizeof(dl->md_root), "%s", root);
    }
    j->md = calloc(DL_MAILDIR_BATCH, sizeof(*j->md));
    j->md_tr = calloc(DL_MAILDIR_BATCH, sizeof(*j->md_tr));
    j->md_open = calloc(DL_MAILDIR_BATCH, sizeof(*j->md_open));
    if (j->md == NULL || j->md_tr == NULL || j->md_open == NULL ||
        cmtpd_delivery_trace_field(j) < 0) {
        cmtpd_delivery_fail_open(j, QUEUE_CONSUMER_TEMPFAIL, "out of memory");
        cmtpd_delivery_job_finish(j);
        return;
    }
    md_next_batch(j);
}

void cmtpd_delivery_maildir_cleanup(struct dl_job *j)
{
    if (j->md != NULL) {
        for (size_t k = 0; k < j->md_n; k++)
            if (j->md_open[k])
                maildir_abort(&j->md[k]);
    }
    free(j->md);
    free(j->md_tr);
    free(j->md_open);
    j->md = NULL;
    j->md_tr = NULL;
    j->md_open = NULL;
    j->md_n = 0;
}
