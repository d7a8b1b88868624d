/* daemon/delivery.c — the delivery engine of one worker: claims due work from the queue consumer,
 * routes each recipient, runs a transport per lease and records the outcomes. Not the transports
 * themselves (delivery_{maildir,smtp,cmtp}.c) and not the reports (delivery_report.c). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

#include <openssl/mem.h>
#include <openssl/sha.h>

#include "core/dsn.h"
#include "daemon/delivery_route.h"

/* How it works (one engine per worker, everything on the worker's ring):
 *
 * - A tick claims up to DL_CLAIM_BATCH work items while fewer than DL_INFLIGHT_MAX are in
 *   flight, completes finished jobs, renews leases with less than a third of lease_ms left, and
 *   takes report items. It runs every DL_TICK_MS, and at once when a claim came back full, when
 *   a job's transport ended (its completion is recorded) and when a completion was recorded (its
 *   slot, and its destination's concurrency slot, are free: claim again now rather than at the
 *   next period; a completion while a claim is in flight makes that claim's callback claim
 *   again). So a busy engine claims back to back, one claim in flight at a time, and an idle one
 *   looks at the queue every DL_TICK_MS. Claims stop while the worker drains and while delivery
 *   is paused ([delivery] enabled = no, `cmtpctl delivery pause`: report items wait too; jobs in
 *   flight finish). cmtpd_delivery_stop abandons what is in flight: the leases expire
 *   ([delivery] lease) and any node, this one after a restart, takes the work over, counting a
 *   crashed attempt.
 * - Routing, per recipient of a lease: a relay recipient (we answered `251 relay`) goes over
 *   CMTP to its relay_domains next hop; a recipient of a local domain goes to the final
 *   transport of [delivery] mode (maildir, lmtp, smtp to the internal host [delivery] smtp, or
 *   cmtp to the internal store [delivery] cmtp); a recipient we answered `250 final`
 *   for that is no longer local fails permanently as relay-refused (PROTOCOL.md 7.2); other
 *   mail (made here: reports, or the SMTP ingress) goes over CMTP when relay_domains has a
 *   route, else it is routed by DNS to the recipient's domain. The first deliverable route is
 *   the job's transport; recipients of another route wait for the next attempt.
 * - A next hop that is an IP address or "localhost" (127.0.0.1) is used as it is; a host name
 *   N, and a domain without a static route, are routed by DNS (PROTOCOL.md 16: SRV, MX, the
 *   name itself) on the worker's c-ares resolver, never blocking: delivery_route.c tries the
 *   hosts in turn and decides SMTP fallback (PROTOCOL.md 14). The certificate is verified for
 *   the next= we announced (a host name, or the recipient's domain for an IP route), or the
 *   recipient's domain for mail routed by DNS (no answer is DNSSEC-validated: never an SRV
 *   target or MX host name), which is also the SNI; trust anchors are [tls] ca when set, else
 *   the system store; no client certificate is presented.
 * - CMTP: a TXN of our own per hop, derived from (qid, destination, recipients) so that a retry
 *   after a lost reply is the same transaction (PROTOCOL.md 10.3, 10.4) and a retry for fewer
 *   recipients a new one; as a relay HOPS - 1 and our TRACE record (role relay) appended; the
 *   body streamed chunk by chunk from Redis into BODY frames of at most chunk-max. Outcomes: END
 *   accepted -> delivered; RCPT 4xx -> temporary, 5xx -> permanent (551 relay-denied and 554
 *   hops-exceeded as relay-refused); a 251 the policy forbids is DROPped (relay-refused);
 *   connection, TLS or protocol failure -> temporary for every open recipient.
 * - Final delivery (Maildir, LMTP, SMTP to [delivery] smtp) writes one CMTP-Trace field: the
 *   records received plus ours (role final) when the message came in over CMTP; none for mail
 *   made here, nor for an SMTP fallback (which logs a fallback record, delivery_smtp.c).
 * - LMTP and SMTP connections are reused (delivery_smtp.c, docs/SMTP-INGRESS.md 2.5): a clean
 *   transaction parks its connection in the worker's idle pool (dl->pool, keyed by endpoint)
 *   instead of QUIT, and the next job for the endpoint takes it; the connection callbacks below
 *   hand a parked connection to the pool, a job's connection that turns out stale before its
 *   first reply is tried again once on a fresh one (on_close), and the tick QUITs the idle
 *   connections while the worker drains.
 * - One log line per recipient outcome (delivered / deferred / bounced) with qid, txn, out_txn,
 *   rcpt, dest, transport, peer and the reply; counters in w->dctr. */

/* ---- small helpers ---------------------------------------------------------------------- */

int64_t cmtpd_delivery_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cmtpd_delivery_why(char *out, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, len, fmt, ap);
    va_end(ap);
}

const struct cmtp_log *cmtpd_delivery_log(const struct cmtpd_delivery *dl)
{
    return &dl->w->log;
}

void cmtpd_delivery_derive_txid(char out[CMTP_TXID_MAX + 1], const void *const *parts,
                                const size_t *len, size_t n)
{
    static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256_CTX sha;
    SHA256_Init(&sha);
    for (size_t i = 0; i < n; i++) {
        uint8_t sep = 0;
        SHA256_Update(&sha, parts[i], len[i]);
        SHA256_Update(&sha, &sep, 1);
    }
    SHA256_Final(md, &sha);
    for (size_t i = 0; i < DL_TXID_LEN; i++) {
        size_t bit = i * 5;
        unsigned v = ((unsigned)md[bit / 8] << 8 | md[bit / 8 + 1]) >> (11 - bit % 8);
        out[i] = b32[v & 31];
    }
    out[DL_TXID_LEN] = '\0';
}

static void ctr_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static void ctr_sub(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_sub_explicit(c, n, memory_order_relaxed);
}

void cmtpd_delivery_get_stats(const struct cmtpd_worker *w, struct cmtpd_delivery_stats *out)
{
    const struct cmtpd_delivery_counters *c = &w->dctr;
#define DL_LD(f) out->f = atomic_load_explicit(&c->f, memory_order_relaxed)
    DL_LD(attempts);
    DL_LD(delivered);
    DL_LD(deferred);
    DL_LD(bounced);
    DL_LD(relay_refused);
    DL_LD(delivered_maildir);
    DL_LD(delivered_lmtp);
    DL_LD(delivered_cmtp);
    DL_LD(delivered_smtp);
    DL_LD(connects);
    DL_LD(connect_failed);
    DL_LD(reused);
    DL_LD(body_bytes);
    DL_LD(reports);
    DL_LD(reports_skipped);
    DL_LD(lost);
    DL_LD(completion_errors);
    DL_LD(inflight);
#undef DL_LD
}

struct queue_consumer *cmtpd_delivery_consumer(struct cmtpd_worker *w)
{
    return w != NULL && w->dl != NULL ? w->dl->qc : NULL;
}

static const char *transport_name(enum dl_transport t)
{
    switch (t) {
    case DL_TR_MAILDIR:
        return "maildir";
    case DL_TR_LMTP:
        return "lmtp";
    case DL_TR_SMTP:
        return "smtp";
    case DL_TR_CMTP:
        return "cmtp";
    case DL_TR_NONE:
        break;
    }
    return "-";
}

/* ---- recipients ------------------------------------------------------------------------- */

static void rc_decide(struct dl_rcpt *r, enum queue_consumer_result result, const char *reason)
{
    if (r->st == DL_R_DONE)
        return;
    r->st = DL_R_DONE;
    r->result = result;
    r->relay_refused = result == QUEUE_CONSUMER_PERMFAIL && reason != NULL &&
                       strncmp(reason, "relay-refused", 13) == 0;
    cmtpd_delivery_why(r->reason, sizeof(r->reason), "%s", reason != NULL ? reason : "");
}

void cmtpd_delivery_rcpt_set(struct dl_job *j, size_t i, enum queue_consumer_result result,
                             const char *reason)
{
    if (i < j->n_tr)
        rc_decide(&j->rc[j->map[i]], result, reason);
}

void cmtpd_delivery_fail_open(struct dl_job *j, enum queue_consumer_result result,
                              const char *reason)
{
    for (size_t i = 0; i < j->n_tr; i++)
        rc_decide(&j->rc[j->map[i]], result, reason);
}

/* ---- the trace ---------------------------------------------------------------------------- */

bool cmtpd_delivery_own_trace(const struct dl_job *j, enum cmtp_role role, struct cmtp_trace *t)
{
    const struct queue_record *rec = j->rec;
    const char *id = rec->meta.peer_id;
    if (strcmp(rec->meta.listener, "cmtp") != 0 || rec->env.trace_count >= CMTP_TRACE_MAX)
        return false;
    memset(t, 0, sizeof(*t));
    t->hop = rec->env.trace_count + 1;
    snprintf(t->by, sizeof(t->by), "%s", j->dl->w->d->hostname);
    /* Only the first DNS-ID of the client certificate was kept: it is both `from` and
     * `peer-id` (PROTOCOL.md 13.1 prefers the originator's domain when the certificate names it
     * too; we cannot tell). */
    snprintf(t->from, sizeof(t->from), "%s", id[0] ? id : "-");
    snprintf(t->peer_id, sizeof(t->peer_id), "%s", id[0] ? id : "-");
    t->at = rec->meta.received_ms / 1000;
    cmtpd_delivery_why(t->tls, sizeof(t->tls), "%s/%s",
                       rec->meta.tls_version[0] ? rec->meta.tls_version : "TLSv1.3",
                       rec->meta.tls_cipher[0] ? rec->meta.tls_cipher : "TLS_AES_128_GCM_SHA256");
    t->role = role;
    return true;
}

int cmtpd_delivery_trace_field(struct dl_job *j)
{
    const struct cmtp_envelope *env = &j->rec->env;
    struct cmtp_trace *t;
    size_t n = env->trace_count;
    int len;
    if (n > CMTP_TRACE_MAX)
        n = CMTP_TRACE_MAX;
    t = malloc(sizeof(*t) * CMTP_TRACE_MAX);
    if (t == NULL)
        return -ENOMEM;
    memcpy(t, env->trace, sizeof(*t) * n);
    if (cmtpd_delivery_own_trace(j, CMTP_ROLE_FINAL, &t[n]))
        n++;
    if (n == 0) {
        free(t);
        return 0;
    }
    /* At most ~1,000 octets of JSON per record, times 4/3, plus folding. */
    size_t cap = 1024 + n * 2048;
    j->trace = malloc(cap);
    if (j->trace == NULL) {
        free(t);
        return -ENOMEM;
    }
    len = cmtp_dsn_trace_field(j->trace, cap, t, n, false);
    free(t);
    if (len < 0) {
        /* Records that do not format (they were validated at receipt) are left out rather
         * than delaying the mail: the trace stays in the queue record and the logs. */
        CMTP_LOG(cmtpd_delivery_log(j->dl), CMTP_LOG_WARN, "trace-field-failed",
                 cmtp_log_str("qid", j->qid), cmtp_log_int("err", len));
        free(j->trace);
        j->trace = NULL;
        return 0;
    }
    j->trace_len = (size_t)len;
    return 0;
}

/* ---- the body ------------------------------------------------------------------------------ */

static void body_cb(void *arg, int err, const uint8_t *data, size_t len, bool last)
{
    struct dl_job *j = arg;
    j->body_req = false;
    if (err == 0) {
        if (len > j->chunk_cap) {
            uint8_t *n = malloc(len);
            if (n == NULL) {
                err = -ENOMEM;
                goto out;
            }
            if (j->chunk != NULL) {
                OPENSSL_cleanse(j->chunk, j->chunk_cap);
                free(j->chunk);
            }
            j->chunk = n;
            j->chunk_cap = len;
        }
        memcpy(j->chunk, data, len);
        j->chunk_len = len;
        j->chunk_off = 0;
        j->body_last = last;
    }
out:
    j->chunk_fn(j, err);
}

int cmtpd_delivery_body_fetch(struct dl_job *j, dl_chunk_fn fn)
{
    int r;
    if (j->body_req)
        return -EBUSY;
    if (j->lease == NULL)
        return -EINVAL;
    if (j->body == NULL) {
        j->body = queue_consumer_body_open(j->lease);
        if (j->body == NULL)
            return -ENOMEM;
    }
    j->chunk_fn = fn;
    r = queue_consumer_body_next(j->body, body_cb, j);
    if (r == 0)
        j->body_req = true;
    return r;
}

void cmtpd_delivery_body_rewind(struct dl_job *j)
{
    queue_consumer_body_close(j->body);
    j->body = NULL;
    j->body_req = false;
    j->body_last = false;
    j->chunk_len = j->chunk_off = 0;
}

/* ---- the connection ------------------------------------------------------------------------ */

socklen_t cmtpd_delivery_endpoint_sa(const struct cmtp_config_endpoint *e,
                                     struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (e->kind == CMTP_CONFIG_HOST_IPV6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(e->port);
        memcpy(&in6->sin6_addr, e->ip, 16);
        return sizeof(*in6);
    }
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    in->sin_family = AF_INET;
    in->sin_port = htons(e->port);
    if (e->kind == CMTP_CONFIG_HOST_IPV4)
        memcpy(&in->sin_addr, e->ip, 4);
    else
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* "localhost", the only name taken */
    return sizeof(*in);
}

void cmtpd_delivery_send(struct dl_job *j)
{
    const uint8_t *p;
    size_t n;
    if (!j->conn_open || j->send_inflight)
        return;
    if (j->tls != NULL) {
        n = tls_conn_out_peek(j->tls, &p);
    } else {
        p = j->sbuf;
        n = j->sbuf_len;
    }
    if (n == 0) {
        if (j->closing)
            io_conn_close(j->c);
        return;
    }
    if (io_conn_send(j->c, p, n, j) < 0) {
        io_conn_abort(j->c);
        return;
    }
    j->send_inflight = true;
}

void cmtpd_delivery_conn_close(struct dl_job *j)
{
    if (!j->conn_open || j->closing)
        return;
    j->closing = true;
    io_conn_set_deadline(j->c, DL_CLOSE_TIMEOUT_MS);
    cmtpd_delivery_send(j);
}

static void dl_schedule(struct cmtpd_delivery *dl, uint64_t ms);

void cmtpd_delivery_job_finish(struct dl_job *j)
{
    if (j->finishing)
        return;
    j->finishing = true;
    if (j->conn_open)
        cmtpd_delivery_conn_close(j);
    else
        dl_schedule(j->dl, 0);
}

/* conn_job returns the job of |c|, or NULL when |c| is not a delivery connection. */
static struct dl_job *conn_job(struct io_conn *c)
{
    struct dl_job *j = io_conn_ctx(c);
    return j != NULL && j->kind == CMTPD_CONN_DELIVERY ? j : NULL;
}

void cmtpd_delivery_on_connect(struct io_conn *c, int res)
{
    struct dl_job *j = conn_job(c);
    if (j == NULL)
        return;
    if (res < 0)
        ctr_add(&j->dl->w->dctr.connect_failed, 1);
    if (j->tr == DL_TR_LMTP || j->tr == DL_TR_SMTP)
        cmtpd_delivery_smtp_on_connect(j, res);
    else if (j->tr == DL_TR_CMTP)
        cmtpd_delivery_cmtp_on_connect(j, res);
}

void cmtpd_delivery_on_data(struct io_conn *c, const uint8_t *data, size_t len)
{
    struct dl_pconn *p = cmtpd_delivery_pool_of(c);
    if (p != NULL) {
        cmtpd_delivery_pool_on_data(p, data, len);
        return;
    }
    struct dl_job *j = conn_job(c);
    if (j == NULL || j->closing)
        return;
    if (j->tr == DL_TR_LMTP || j->tr == DL_TR_SMTP)
        cmtpd_delivery_smtp_on_data(j, data, len);
    else if (j->tr == DL_TR_CMTP)
        cmtpd_delivery_cmtp_on_data(j, data, len);
}

void cmtpd_delivery_on_send_done(struct io_conn *c, void *cookie, int res)
{
    struct dl_pconn *p = cmtpd_delivery_pool_of(c);
    if (p != NULL) {
        cmtpd_delivery_pool_on_send_done(p, res);
        return;
    }
    struct dl_job *j = conn_job(c);
    (void)cookie;
    if (j == NULL)
        return;
    j->send_inflight = false;
    if (res < 0) {
        io_conn_abort(c);
        return;
    }
    if (j->tls != NULL)
        tls_conn_out_consume(j->tls, (size_t)res);
    else
        j->sbuf_len = 0;
    if (j->closing) {
        cmtpd_delivery_send(j);
        return;
    }
    if (j->tr == DL_TR_LMTP || j->tr == DL_TR_SMTP)
        cmtpd_delivery_smtp_pump(j);
    else if (j->tr == DL_TR_CMTP)
        cmtpd_delivery_cmtp_pump(j);
}

void cmtpd_delivery_on_timeout(struct io_conn *c)
{
    struct dl_pconn *p = cmtpd_delivery_pool_of(c);
    if (p != NULL) {
        cmtpd_delivery_pool_on_timeout(p);
        return;
    }
    struct dl_job *j = conn_job(c);
    char why[QUEUE_REASON_MAX];
    if (j == NULL)
        return;
    if (!j->closing) {
        cmtpd_delivery_why(why, sizeof(why), "timeout: no answer from %s", j->peer);
        cmtpd_delivery_fail_open(j, QUEUE_CONSUMER_TEMPFAIL, why);
        j->finishing = true;
    }
    io_conn_abort(c);
}

void cmtpd_delivery_on_close(struct io_conn *c, int reason)
{
    struct dl_pconn *p = cmtpd_delivery_pool_of(c);
    if (p != NULL) {
        cmtpd_delivery_pool_on_close(p);
        return;
    }
    struct dl_job *j = conn_job(c);
    char why[QUEUE_REASON_MAX];
    if (j == NULL)
        return;
    j->conn_open = false;
    j->c = NULL;
    j->send_inflight = false;
    io_conn_set_ctx(c, NULL);
    /* A pooled connection the server had closed meanwhile: once more on a fresh one. */
    if (!j->finishing && !j->dl->stopping && reason != IO_CLOSE_SHUTDOWN &&
        cmtpd_delivery_smtp_stale_retry(j))
        return;
    if (!j->finishing) {
        cmtpd_delivery_why(why, sizeof(why), "connection to %s lost: %s", j->peer,
                           reason == IO_CLOSE_EOF ? "closed by the peer" : strerror(-reason));
        cmtpd_delivery_fail_open(j, QUEUE_CONSUMER_TEMPFAIL, why);
        j->finishing = true;
    }
    if (!j->dl->stopping && reason != IO_CLOSE_SHUTDOWN)
        dl_schedule(j->dl, 0);
}

/* ---- routing ------------------------------------------------------------------------------- */

/* dl_route is where one recipient goes. */
struct dl_route {
    enum dl_transport tr;
    const struct cmtp_config_relay_domain *rd; /* CMTP: the static route, or NULL */
    bool relay_hop;                            /* CMTP: carried on as a relay */
    bool store_hop;                            /* CMTP: to the internal store (mode cmtp) */
    char name[CMTP_DOMAIN_MAX + 1];            /* CMTP: the name the certificate must match */
    char qname[CMTP_DOMAIN_MAX + 1];           /* CMTP: the domain routed by DNS, or "" */
    uint16_t port;                             /* CMTP by DNS: the port of |qname| itself */
};

/* route_res is what routing decided for one recipient. */
enum route_res {
    RT_OK = 0, /* deliverable now through |rt| */
    RT_TEMP,   /* a temporary failure (|why|) */
    RT_PERM,   /* a permanent failure (|why|) */
};

static enum route_res route_cmtp(struct dl_route *rt, const struct cmtp_config_relay_domain *rd,
                                 const struct queue_rcpt *r, bool relay_hop, char *why,
                                 size_t whylen)
{
    const struct cmtp_config_endpoint *e = &rd->nexthop;
    char host[CMTP_DOMAIN_MAX + 1];
    rt->tr = DL_TR_CMTP;
    rt->rd = rd;
    rt->relay_hop = relay_hop;
    if (e->kind == CMTP_CONFIG_HOST_NAME && strcmp(e->host, "localhost") != 0) {
        /* A host name: routed by DNS like a domain (SRV, MX, then its own address on the
         * entry's port), on the worker's resolver (delivery_route.c). */
        if (cmtp_addr_domain_normalize(rt->qname, sizeof(rt->qname), e->host, strlen(e->host)) !=
            CMTP_ADDR_OK) {
            cmtpd_delivery_why(why, whylen, "no-route: next hop %s is not a host name", e->host);
            return RT_TEMP;
        }
        rt->port = e->port;
    }
    /* The reference identity (PROTOCOL.md 2.3, 7.2): the next= this server announced for a
     * relay recipient (the name it promised to verify); otherwise the static route's host name,
     * or the destination domain when the route is an address. */
    if (relay_hop && r->next_hop[0] != '\0')
        snprintf(rt->name, sizeof(rt->name), "%s", r->next_hop);
    else if (e->kind == CMTP_CONFIG_HOST_NAME &&
             cmtp_addr_domain_normalize(host, sizeof(host), e->host, strlen(e->host)) ==
                 CMTP_ADDR_OK)
        snprintf(rt->name, sizeof(rt->name), "%s", host);
    else
        snprintf(rt->name, sizeof(rt->name), "%s", r->addr.domain);
    return RT_OK;
}

/* route_rcpt decides where recipient |r| of |j|'s message goes. */
static enum route_res route_rcpt(const struct dl_job *j, const struct queue_rcpt *r,
                                 struct dl_route *rt, char *why, size_t whylen)
{
    const struct cmtp_config *cfg = &j->dl->w->cfg->c;
    const struct cmtp_config_relay_domain *rd = cmtp_config_relay_for(cfg, r->addr.domain);
    bool from_cmtp = strcmp(j->rec->meta.listener, "cmtp") == 0;
    memset(rt, 0, sizeof(*rt));
    if (r->role == CMTP_ROLE_RELAY && rd != NULL)
        return route_cmtp(rt, rd, r, true, why, whylen);
    if (cmtp_config_domain_is_local(cfg, r->addr.domain)) {
        switch (cfg->delivery.mode) {
        case CMTP_DELIVERY_MAILDIR:
            rt->tr = DL_TR_MAILDIR;
            return RT_OK;
        case CMTP_DELIVERY_LMTP:
            rt->tr = DL_TR_LMTP;
            return RT_OK;
        case CMTP_DELIVERY_SMTP:
            rt->tr = DL_TR_SMTP; /* to [delivery] smtp, the internal mail host */
            return RT_OK;
        case CMTP_DELIVERY_CMTP:
            /* To the internal CMTP store, as the final hop inside the domain: a static route
             * (its host name, else the recipient's domain, is the reference identity). */
            rt->store_hop = true;
            return route_cmtp(rt, &cfg->delivery.cmtp, r, false, why, whylen);
        }
        cmtpd_delivery_why(why, whylen, "no-route: unknown [delivery] mode");
        return RT_TEMP;
    }
    if (r->role == CMTP_ROLE_FINAL && from_cmtp) {
        /* PROTOCOL.md 7.2: a recipient answered `250 final` is never relayed later. */
        cmtpd_delivery_why(why, whylen, "relay-refused: accepted as final but %s is not local",
                           r->addr.domain);
        return RT_PERM;
    }
    if (rd != NULL)
        return route_cmtp(rt, rd, r, r->role == CMTP_ROLE_RELAY, why, whylen);
    /* No static route: routing by DNS (PROTOCOL.md 16) to the recipient's domain, or for a
     * relay recipient whose route was removed since, to the next= we announced (the only host
     * we promised to carry it to). Both are also the reference identity. */
    rt->tr = DL_TR_CMTP;
    rt->relay_hop = r->role == CMTP_ROLE_RELAY;
    snprintf(rt->name, sizeof(rt->name), "%s",
             rt->relay_hop && r->next_hop[0] != '\0' ? r->next_hop : r->addr.domain);
    snprintf(rt->qname, sizeof(rt->qname), "%s", rt->name);
    rt->port = (uint16_t)cfg->delivery.cmtp_port;
    return RT_OK;
}

static bool route_same(const struct dl_route *a, const struct dl_route *b)
{
    if (a->tr != b->tr)
        return false;
    if (a->tr != DL_TR_CMTP)
        return true;
    return a->rd == b->rd && a->relay_hop == b->relay_hop && a->store_hop == b->store_hop &&
           strcmp(a->name, b->name) == 0 && strcmp(a->qname, b->qname) == 0 && a->port == b->port;
}

static void endpoint_text(const struct cmtp_config_endpoint *e, char *out, size_t len)
{
    if (e->kind == CMTP_CONFIG_HOST_IPV6)
        snprintf(out, len, "[%s]:%u", e->host, e->port);
    else
        snprintf(out, len, "%s:%u", e->host, e->port);
}

/* route_socket points |j| at the [delivery] lmtp or smtp setting |s|: j->sa and j->sa_len (0
 * for a host name other than localhost: resolving would block, the transport fails it as
 * no-route) and the peer text. */
static void route_socket(struct dl_job *j, const struct cmtp_config_socket *s)
{
    j->sa_len = 0;
    if (s->kind == CMTP_CONFIG_SOCKET_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)&j->sa;
        memset(&j->sa, 0, sizeof(j->sa));
        un->sun_family = AF_UNIX;
        snprintf(un->sun_path, sizeof(un->sun_path), "%s", s->path);
        j->sa_len = (socklen_t)sizeof(*un);
        snprintf(j->peer, sizeof(j->peer), "unix:%.200s", s->path);
    } else {
        if (s->tcp.kind != CMTP_CONFIG_HOST_NAME || strcmp(s->tcp.host, "localhost") == 0)
            j->sa_len = cmtpd_delivery_endpoint_sa(&s->tcp, &j->sa);
        endpoint_text(&s->tcp, j->peer, sizeof(j->peer));
    }
}

/* route_job routes every recipient of |j|: the first deliverable route becomes the job's
 * transport, recipients for another route wait for a later attempt. */
static void route_job(struct dl_job *j)
{
    const struct cmtp_config *cfg = &j->dl->w->cfg->c;
    struct dl_route first, rt;
    bool have = false;
    char why[QUEUE_REASON_MAX];
    memset(&first, 0, sizeof(first));
    for (size_t i = 0; i < j->n_rc; i++) {
        const struct queue_rcpt *r = &j->rec->rcpts[j->rc[i].idx];
        switch (route_rcpt(j, r, &rt, why, sizeof(why))) {
        case RT_TEMP:
            rc_decide(&j->rc[i], QUEUE_CONSUMER_TEMPFAIL, why);
            continue;
        case RT_PERM:
            rc_decide(&j->rc[i], QUEUE_CONSUMER_PERMFAIL, why);
            continue;
        case RT_OK:
            break;
        }
        if (!have) {
            first = rt;
            have = true;
        } else if (!route_same(&first, &rt)) {
            rc_decide(&j->rc[i], QUEUE_CONSUMER_TEMPFAIL, "deferred: another route went first");
            continue;
        }
        j->map[j->n_tr] = i;
        j->addr[j->n_tr] = r->addr;
        j->n_tr++;
    }
    j->tr = have ? first.tr : DL_TR_NONE;
    switch (j->tr) {
    case DL_TR_CMTP:
        j->relay_hop = first.relay_hop;
        j->store_hop = first.store_hop;
        snprintf(j->tls_name, sizeof(j->tls_name), "%s", first.name);
        if (first.qname[0] == '\0') {
            j->sa_len = cmtpd_delivery_endpoint_sa(&first.rd->nexthop, &j->sa);
            endpoint_text(&first.rd->nexthop, j->peer, sizeof(j->peer));
        } else {
            snprintf(j->peer, sizeof(j->peer), "dns:%s", first.qname);
        }
        if (cmtpd_delivery_route_prepare(j, first.qname, first.port,
                                         first.qname[0] == '\0' ? &first.rd->nexthop : NULL) < 0) {
            cmtpd_delivery_fail_open(j, QUEUE_CONSUMER_TEMPFAIL, "out of memory");
            j->tr = DL_TR_NONE;
        }
        break;
    case DL_TR_LMTP:
        route_socket(j, &cfg->delivery.lmtp);
        break;
    case DL_TR_SMTP:
        /* mode smtp: [delivery] smtp, verified (when asked) for smtp_tls_name, else its host
         * when it is a name. */
        route_socket(j, &cfg->delivery.smtp);
        j->smtp_fallback = false;
        j->tls_name[0] = '\0';
        if (cfg->delivery.smtp_tls_name[0] != '\0')
            snprintf(j->tls_name, sizeof(j->tls_name), "%s", cfg->delivery.smtp_tls_name);
        else if (cfg->delivery.smtp.kind == CMTP_CONFIG_SOCKET_TCP &&
                 cfg->delivery.smtp.tcp.kind == CMTP_CONFIG_HOST_NAME)
            snprintf(j->tls_name, sizeof(j->tls_name), "%s", cfg->delivery.smtp.tcp.host);
        break;
    case DL_TR_MAILDIR:
        snprintf(j->peer, sizeof(j->peer), "maildir");
        break;
    case DL_TR_NONE:
        snprintf(j->peer, sizeof(j->peer), "-");
        break;
    }
}

/* ---- jobs ---------------------------------------------------------------------------------- */

static void dl_job_free(struct dl_job *j)
{
    struct cmtpd_delivery *dl = j->dl;
    if (j->prev != NULL)
        j->prev->next = j->next;
    else
        dl->jobs = j->next;
    if (j->next != NULL)
        j->next->prev = j->prev;
    dl->n_jobs--;
    ctr_sub(&dl->w->dctr.inflight, 1);
    cmtpd_delivery_maildir_cleanup(j);
    cmtpd_delivery_smtp_cleanup(j);
    cmtpd_delivery_cmtp_cleanup(j);
    cmtpd_delivery_route_cleanup(j);
    cmtpd_delivery_body_rewind(j);
    queue_consumer_lease_abandon(j->lease);
    if (j->chunk != NULL) {
        OPENSSL_cleanse(j->chunk, j->chunk_cap);
        free(j->chunk);
    }
    free(j->trace);
    free(j->rc);
    free(j->map);
    free(j->addr);
    free(j);
}

static const char *result_event(enum queue_consumer_result r)
{
    switch (r) {
    case QUEUE_CONSUMER_DELIVERED:
        return "delivered";
    case QUEUE_CONSUMER_TEMPFAIL:
        return "deferred";
    case QUEUE_CONSUMER_PERMFAIL:
        break;
    }
    return "bounced";
}

static const char *done_status_name(enum queue_consumer_done_status s)
{
    switch (s) {
    case QUEUE_CONSUMER_DONE_OK:
        return "ok";
    case QUEUE_CONSUMER_DONE_LOST:
        return "lease-lost";
    case QUEUE_CONSUMER_DONE_GONE:
        return "message-gone";
    case QUEUE_CONSUMER_DONE_ERROR:
        break;
    }
    return "error";
}

/* dl_claim_soon makes the engine claim again as soon as it may: at once, or when the claim in
 * flight comes back. */
static void dl_claim_soon(struct cmtpd_delivery *dl)
{
    if (dl->claiming)
        dl->claim_again = true;
    else
        dl_schedule(dl, 0);
}

static void dl_done_cb(void *arg, const struct queue_consumer_done_result *r)
{
    struct dl_job *j = arg;
    struct cmtpd_delivery *dl = j->dl;
    struct cmtpd_delivery_counters *ct = &dl->w->dctr;
    const struct cmtp_log *log = cmtpd_delivery_log(dl);
    for (size_t i = 0; i < j->n_rc; i++) {
        const struct dl_rcpt *rc = &j->rc[i];
        switch (rc->result) {
        case QUEUE_CONSUMER_DELIVERED:
            ctr_add(&ct->delivered, 1);
            ctr_add(j->tr == DL_TR_MAILDIR ? &ct->delivered_maildir
                    : j->tr == DL_TR_LMTP  ? &ct->delivered_lmtp
                    : j->tr == DL_TR_SMTP  ? &ct->delivered_smtp
                                           : &ct->delivered_cmtp,
                    1);
            break;
        case QUEUE_CONSUMER_TEMPFAIL:
            ctr_add(&ct->deferred, 1);
            break;
        case QUEUE_CONSUMER_PERMFAIL:
            ctr_add(&ct->bounced, 1);
            if (rc->relay_refused)
                ctr_add(&ct->relay_refused, 1);
            break;
        }
        CMTP_LOG(log, CMTP_LOG_INFO, result_event(rc->result), cmtp_log_str("qid", j->qid),
                 cmtp_log_str("txn", j->txid),
                 cmtp_log_str("out_txn", j->out_txid[0] ? j->out_txid : "-"),
                 cmtp_log_str("rcpt", rc->text), cmtp_log_str("dest", j->dest),
                 cmtp_log_str("transport", transport_name(j->tr)), cmtp_log_str("peer", j->peer),
                 cmtp_log_str("reply", rc->reason),
                 cmtp_log_str("recorded", done_status_name(r->status)));
    }
    if (r->status == QUEUE_CONSUMER_DONE_LOST)
        ctr_add(&ct->lost, 1);
    if (r->status == QUEUE_CONSUMER_DONE_ERROR) {
        ctr_add(&ct->completion_errors, 1);
        CMTP_LOG(log, CMTP_LOG_WARN, "completion-failed", cmtp_log_str("qid", j->qid),
                 cmtp_log_str("dest", j->dest), cmtp_log_str("reason", r->reason));
    }
    if (r->rescheduled)
        CMTP_LOG(log, CMTP_LOG_DEBUG, "rescheduled", cmtp_log_str("qid", j->qid),
                 cmtp_log_str("dest", j->dest), cmtp_log_int("at_ms", r->next_attempt_ms),
                 cmtp_log_uint("pending", r->pending));
    dl_job_free(j);
    dl_claim_soon(dl);
}

/* dl_done_send hands |j|'s outcomes to the consumer; on refusal the tick tries again. */
static void dl_done_send(struct dl_job *j)
{
    struct queue_consumer_outcome *o = calloc(j->n_rc ? j->n_rc : 1, sizeof(*o));
    int r = -ENOMEM;
    if (o != NULL) {
        for (size_t i = 0; i < j->n_rc; i++) {
            o[i].rcpt = j->rc[i].idx;
            o[i].result = j->rc[i].result;
            o[i].reason = j->rc[i].reason;
        }
        r = queue_consumer_done(j->lease, o, j->n_rc, dl_done_cb, j);
        free(o);
    }
    if (r == 0) {
        j->lease = NULL;
        j->rec = NULL;
        j->done_retry = false;
        return;
    }
    if (!j->done_retry)
        CMTP_LOG(cmtpd_delivery_log(j->dl), CMTP_LOG_WARN, "completion-deferred",
                 cmtp_log_str("qid", j->qid), cmtp_log_str("dest", j->dest),
                 cmtp_log_str("reason", strerror(-r)));
    j->done_retry = true;
}

/* dl_complete ends |j|'s transport and records its outcomes. */
static void dl_complete(struct dl_job *j)
{
    j->completed = true;
    for (size_t i = 0; i < j->n_rc; i++)
        rc_decide(&j->rc[i], QUEUE_CONSUMER_TEMPFAIL,
                  j->rc[i].st == DL_R_ACCEPTED ? "no reply to END" : "no outcome");
    cmtpd_delivery_maildir_cleanup(j);
    cmtpd_delivery_smtp_cleanup(j);
    cmtpd_delivery_cmtp_cleanup(j);
    cmtpd_delivery_route_cleanup(j);
    cmtpd_delivery_body_rewind(j);
    dl_done_send(j);
}

/* dl_job_start turns lease |l| into a job and starts its transport. */
static void dl_job_start(struct cmtpd_delivery *dl, struct queue_consumer_lease *l)
{
    struct dl_job *j = calloc(1, sizeof(*j));
    size_t n = 0;
    const size_t *idx = queue_consumer_lease_rcpts(l, &n);
    if (j == NULL)
        goto fail;
    j->kind = CMTPD_CONN_DELIVERY;
    j->dl = dl;
    j->lease = l;
    j->rec = queue_consumer_lease_record(l);
    snprintf(j->qid, sizeof(j->qid), "%s", queue_consumer_lease_qid(l));
    snprintf(j->dest, sizeof(j->dest), "%s", queue_consumer_lease_dest(l));
    snprintf(j->txid, sizeof(j->txid), "%s", j->rec->env.txid);
    j->started_ms = io_worker_now_ms(dl->w->io);
    j->rc = calloc(n ? n : 1, sizeof(*j->rc));
    j->map = calloc(n ? n : 1, sizeof(*j->map));
    j->addr = calloc(n ? n : 1, sizeof(*j->addr));
    if (j->rc == NULL || j->map == NULL || j->addr == NULL)
        goto fail;
    j->n_rc = n;
    for (size_t i = 0; i < n; i++) {
        j->rc[i].idx = idx[i];
        j->rc[i].addr = &j->rec->rcpts[idx[i]].addr;
        cmtp_addr_format(j->rc[i].addr, j->rc[i].text, sizeof(j->rc[i].text));
    }
    j->next = dl->jobs;
    if (dl->jobs != NULL)
        dl->jobs->prev = j;
    dl->jobs = j;
    dl->n_jobs++;
    ctr_add(&dl->w->dctr.inflight, 1);
    ctr_add(&dl->w->dctr.attempts, 1);
    route_job(j);
    switch (j->tr) {
    case DL_TR_NONE:
        cmtpd_delivery_job_finish(j);
        break;
    case DL_TR_MAILDIR:
        cmtpd_delivery_maildir_start(j);
        break;
    case DL_TR_LMTP:
    case DL_TR_SMTP:
        cmtpd_delivery_smtp_start(j);
        break;
    case DL_TR_CMTP:
        cmtpd_delivery_route_start(j);
        break;
    }
    return;
fail:
    if (j != NULL) {
        free(j->rc);
        free(j->map);
        free(j->addr);
        free(j);
    }
    /* Give the item back untouched: it is due again at once. */
    if (queue_consumer_lease_return(l, NULL, NULL) < 0)
        queue_consumer_lease_abandon(l);
}

/* ---- the tick: claim, complete, renew, report ---------------------------------------------- */

static void dl_claim_cb(void *arg, int err, struct queue_consumer_lease **leases, size_t n)
{
    struct cmtpd_delivery *dl = arg;
    dl->claiming = false;
    if (err < 0) {
        dl->more = false;
        dl->claim_again = false;
        CMTP_LOG(cmtpd_delivery_log(dl), CMTP_LOG_DEBUG, "claim-failed",
                 cmtp_log_str("reason", strerror(-err)));
        return;
    }
    for (size_t i = 0; i < n; i++)
        dl_job_start(dl, leases[i]);
    dl->more = n > 0 && n >= dl->claim_asked;
    if (dl->more || dl->claim_again)
        dl_schedule(dl, 0);
    dl->claim_again = false;
}

static void dl_renew_cb(void *arg, int err)
{
    struct dl_job *j = arg;
    j->renewing = false;
    if (err < 0)
        CMTP_LOG(cmtpd_delivery_log(j->dl), err == -ESTALE ? CMTP_LOG_WARN : CMTP_LOG_DEBUG,
                 "lease-renew-failed", cmtp_log_str("qid", j->qid), cmtp_log_str("dest", j->dest),
                 cmtp_log_str("reason", err == -ESTALE ? "taken over" : strerror(-err)));
}

/* dl_tls_refresh (re)builds the CMTP client context when the worker's config changed: trust
 * anchors are [tls] ca when set, else the system store. */
static void dl_tls_refresh(struct cmtpd_delivery *dl)
{
    struct cmtpd_cfg *g = dl->w->cfg;
    struct tls_ctx *t;
    if (g == NULL || g == dl->tls_cfg)
        return;
    struct tls_client_config tc = {.ca_file = g->c.tls.ca[0] ? g->c.tls.ca : NULL};
    t = tls_client_ctx_new(&tc, dl->tls_err, sizeof(dl->tls_err));
    cmtpd_cfg_unref(dl->tls_cfg);
    dl->tls_cfg = cmtpd_cfg_ref(g);
    if (t == NULL) {
        CMTP_LOG(cmtpd_delivery_log(dl), CMTP_LOG_WARN, "client-tls-unavailable",
                 cmtp_log_str("reason", dl->tls_err),
                 cmtp_log_str("kept", dl->tls ? "old" : "none"));
        return;
    }
    tls_ctx_unref(dl->tls);
    dl->tls = t;
}

/* dl_paused says whether delivery is paused ([delivery] enabled = no, cmtpctl delivery pause). */
static bool dl_paused(const struct cmtpd_delivery *dl)
{
    return atomic_load_explicit(&dl->w->d->delivery_paused, memory_order_relaxed);
}

/* dl_enabled_refresh applies a change of [delivery] enabled made by a reload: no pauses
 * delivery, yes resumes it (as the admin commands do). A reload that leaves it alone keeps what
 * the admin set. */
static void dl_enabled_refresh(struct cmtpd_delivery *dl)
{
    const struct cmtpd_cfg *g = dl->w->cfg;
    if (g == NULL || g->c.delivery.enabled == dl->enabled_seen)
        return;
    dl->enabled_seen = g->c.delivery.enabled;
    if (atomic_exchange(&dl->w->d->delivery_paused, !dl->enabled_seen) != !dl->enabled_seen)
        CMTP_LOG(cmtpd_delivery_log(dl), CMTP_LOG_INFO,
                 dl->enabled_seen ? "delivery-resumed" : "delivery-paused",
                 cmtp_log_str("by", "config"));
}

static void dl_tick(struct cmtpd_delivery *dl)
{
    int64_t now = cmtpd_delivery_now_ms();
    struct dl_job *j, *next;
    for (j = dl->jobs; j != NULL; j = next) {
        next = j->next;
        if (j->finishing && !j->conn_open && !j->completed) {
            /* Routing may try another host or SMTP fallback first (delivery_route.c). */
            if (!cmtpd_delivery_route_retry(j))
                dl_complete(j);
        } else if (j->done_retry) {
            dl_done_send(j);
        } else if (j->lease != NULL && !j->renewing && !j->completed &&
                   queue_consumer_lease_expires_ms(j->lease) - now < (int64_t)dl->lease_ms / 3) {
            if (queue_consumer_renew(j->lease, dl_renew_cb, j) == 0)
                j->renewing = true;
        }
    }
    if (dl->stopping)
        return;
    if (dl->w->draining)
        cmtpd_delivery_pool_drain(dl); /* QUIT the idle connections: the drain waits for them */
    dl_tls_refresh(dl);
    cmtpd_resolve_tick(dl->res, &dl->w->cfg->c);
    dl_enabled_refresh(dl);
    if (dl_paused(dl))
        return;
    if (!dl->claiming && !dl->w->draining && dl->n_jobs < DL_INFLIGHT_MAX &&
        queue_consumer_state(dl->qc, NULL) == QUEUE_CONNECTED) {
        size_t want = DL_INFLIGHT_MAX - dl->n_jobs;
        if (want > DL_CLAIM_BATCH)
            want = DL_CLAIM_BATCH;
        if (queue_consumer_claim(dl->qc, want, dl_claim_cb, dl) == 0) {
            dl->claiming = true;
            dl->claim_asked = want;
        }
    }
    cmtpd_delivery_report_poll(dl);
}

static void dl_tick_cb(void *arg)
{
    struct cmtpd_delivery *dl = arg;
    dl->timer = NULL;
    dl_tick(dl);
    dl_schedule(dl, DL_TICK_MS);
}

static void dl_kick_cb(void *arg)
{
    struct cmtpd_delivery *dl = arg;
    dl->kick = NULL;
    dl_tick(dl);
}

/* dl_timer_result logs, once until a timer is had again, that no timer could be added. */
static void dl_timer_result(struct cmtpd_delivery *dl, const struct io_timer *t)
{
    if (t == NULL && !dl->timer_failed) {
        /* The worker is out of timers (or exiting): the next completion or claim tries again. */
        dl->timer_failed = true;
        CMTP_LOG(cmtpd_delivery_log(dl), CMTP_LOG_WARN, "delivery-timer-failed");
    } else if (t != NULL) {
        dl->timer_failed = false;
    }
}

/* dl_schedule makes the next tick run within |ms| (an earlier one stays). A tick asked for now
 * is a separate 0 ms timer, which the loop runs without the kernel; the periodic timer is left
 * armed (cancelling and re-arming it for every completion cost two kernel timer operations per
 * delivered message), so a kick adds one tick, it never delays one. */
static void dl_schedule(struct cmtpd_delivery *dl, uint64_t ms)
{
    uint64_t due = io_worker_now_ms(dl->w->io) + ms;
    if (dl->stopping)
        return;
    if (ms == 0) {
        if (dl->kick == NULL) {
            dl->kick = io_timer_add(dl->w->io, 0, dl_kick_cb, dl);
            dl_timer_result(dl, dl->kick);
        }
        return;
    }
    if (dl->timer != NULL) {
        if (dl->timer_due <= due)
            return;
        io_timer_cancel(dl->w->io, dl->timer);
        dl->timer = NULL;
    }
    dl->timer = io_timer_add(dl->w->io, ms, dl_tick_cb, dl);
    dl->timer_due = due;
    dl_timer_result(dl, dl->timer);
}

static void dl_event_cb(void *arg, const struct queue_consumer_event *ev)
{
    struct cmtpd_delivery *dl = arg;
    const char *name = "queue-event";
    enum cmtp_log_level lvl = CMTP_LOG_INFO;
    switch (ev->kind) {
    case QUEUE_CONSUMER_EV_DEAD:
        name = "dead-lettered";
        lvl = CMTP_LOG_WARN;
        break;
    case QUEUE_CONSUMER_EV_QUARANTINED:
        name = "quarantined";
        lvl = CMTP_LOG_WARN;
        break;
    case QUEUE_CONSUMER_EV_EXPIRED:
        name = "expired";
        break;
    case QUEUE_CONSUMER_EV_FAILED:
        name = "failed";
        break;
    case QUEUE_CONSUMER_EV_LEASE_LOST:
        name = "lease-lost";
        lvl = CMTP_LOG_WARN;
        break;
    case QUEUE_CONSUMER_EV_ORPHAN:
        name = "orphan-dropped";
        break;
    }
    CMTP_LOG(cmtpd_delivery_log(dl), lvl, name, cmtp_log_str("qid", ev->qid),
             cmtp_log_str("dest", ev->dest[0] ? ev->dest : "-"), cmtp_log_str("reason", ev->detail),
             cmtp_log_uint("count", ev->count));
}

/* ---- start and stop ------------------------------------------------------------------------ */

int cmtpd_delivery_start(struct cmtpd_worker *w, char *err, size_t errlen)
{
    const struct cmtp_config *cfg = &w->cfg->c;
    struct cmtpd_delivery *dl = calloc(1, sizeof(*dl));
    struct queue_loop loop;
    char node[72];
    if (dl == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    dl->w = w;
    dl->lease_ms =
        cfg->delivery.lease_ms ? (uint32_t)cfg->delivery.lease_ms : QUEUE_CONSUMER_LEASE_MS_DEFAULT;
    dl->enabled_seen = cfg->delivery.enabled;
    if (!dl->enabled_seen)
        atomic_store(&w->d->delivery_paused, true);
    snprintf(node, sizeof(node), "%.56s:w%u", w->d->node_id, w->id);
    struct queue_consumer_config qc = {
        .address = w->d->redis_address,
        .password = cfg->redis.password[0] ? cfg->redis.password : NULL,
        .key_prefix = cfg->redis.key_prefix,
        .node_id = node,
        .inflight_max = cfg->redis.inflight_max,
        .lease_ms = dl->lease_ms,
        .concurrency_per_dest = cfg->delivery.concurrency_per_dest,
        .retry_base_ms = cfg->delivery.retry_base_ms,
        .retry_max_ms = cfg->delivery.retry_max_ms,
        .lifetime_ms = cfg->delivery.lifetime_ms,
        .attempts_crash_max = cfg->delivery.attempts_crash_max,
        .event_cb = dl_event_cb,
        .event_arg = dl,
        .cache = w->d->rcache,
    };
    cmtpd_queue_loop(&loop, w->io);
    dl->qc = queue_consumer_new(&qc, &loop, err, errlen);
    if (dl->qc == NULL) {
        free(dl);
        return -EINVAL;
    }
    w->dl = dl;
    dl_tls_refresh(dl);
    dl->res = cmtpd_resolve_new(w->io, cfg, err, errlen);
    if (dl->res == NULL)
        CMTP_LOG(cmtpd_delivery_log(dl), CMTP_LOG_WARN, "resolver-unavailable",
                 cmtp_log_str("reason", err),
                 cmtp_log_str("effect", "DNS routes fail temporarily"));
    dl_schedule(dl, DL_TICK_MS);
    if (dl->timer == NULL) {
        snprintf(err, errlen, "no timer for the delivery engine");
        cmtpd_delivery_stop(w);
        return -ENOMEM;
    }
    return 0;
}

void cmtpd_delivery_stop(struct cmtpd_worker *w)
{
    struct cmtpd_delivery *dl = w != NULL ? w->dl : NULL;
    if (dl == NULL)
        return;
    dl->stopping = true;
    if (dl->timer != NULL)
        io_timer_cancel(w->io, dl->timer);
    dl->timer = NULL;
    if (dl->kick != NULL)
        io_timer_cancel(w->io, dl->kick);
    dl->kick = NULL;
    cmtpd_delivery_report_stop(dl);
    /* Bodies first (queue_consumer_free's contract), then the consumer (no callback runs
     * afterwards), then the jobs: their leases are abandoned and expire, and another node or a
     * restart takes the work over. */
    for (struct dl_job *j = dl->jobs; j != NULL; j = j->next)
        cmtpd_delivery_body_rewind(j);
    queue_consumer_free(dl->qc);
    dl->qc = NULL;
    while (dl->jobs != NULL)
        dl_job_free(dl->jobs);
    cmtpd_resolve_free(dl->res); /* after the jobs: they cancelled their lookups */
    dl->res = NULL;
    if (dl->md_ok)
        maildir_ctx_cleanup(&dl->md);
    tls_ctx_unref(dl->tls);
    cmtpd_cfg_unref(dl->tls_cfg);
    cmtpd_delivery_smtp_stop(dl);
    free(dl);
    w->dl = NULL;
}
