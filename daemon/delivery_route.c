/* daemon/delivery_route.c — the hosts a CMTP job tries: a static address, or those routing by
 * DNS finds (SRV _cmtp._tcp.D, else MX D on cmtp_port, else D itself; then their addresses),
 * one attempt after another, and SMTP fallback to the MX hosts of the recipient domain when the
 * originator allows it and no CMTP server is reachable (PROTOCOL.md 14, 16). Not the lookups
 * (resolve.c), not the orderings (core/route.c), not the transports.
 *
 * An attempt that ends at the TCP level, with no_application_protocol or without TLS moves on to
 * the next address or host; one whose certificate does not verify moves on too but rules SMTP
 * fallback out (PROTOCOL.md 2.3); a CMTP reply, or anything after the handshake, ends the job's
 * attempt with the transport's outcome. Between attempts the recipients are reopened, the lease
 * is kept (the engine's tick renews it) and everything stays on the worker's ring. No answer is
 * DNSSEC-validated (c-ares cannot tell): the reference identity stays j->tls_name (D, or the
 * static route's name), never an SRV target or MX host. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/delivery_route.h"

static uint32_t rt_rand(void *arg, uint32_t bound)
{
    (void)arg;
    return arc4random_uniform(bound);
}

static const struct cmtp_log *rt_log(const struct dl_job *j)
{
    return cmtpd_delivery_log(j->dl);
}

static const struct cmtp_config *rt_cfg(const struct dl_job *j)
{
    return &j->dl->w->cfg->c;
}

/* rt_fallback_ok says whether |j| may fall back to SMTP (PROTOCOL.md 14): as the originator's
 * FALLBACK= allows, except for mail handed to the internal CMTP store ([delivery] mode = cmtp):
 * this server is its final destination, and the store is the only way on (it waits for it). */
static bool rt_fallback_ok(const struct dl_job *j, bool no_cmtp, bool unreachable)
{
    if (j->store_hop)
        return false;
    return cmtp_route_fallback_ok(j->rec->env.policy.fallback, no_cmtp, unreachable);
}

/* rt_end decides every open recipient of |j| and ends it: routing made the decision. */
static void rt_end(struct dl_job *j, enum queue_consumer_result res, const char *why)
{
    struct dl_route_state *rs = j->route;
    rs->phase = DL_RP_DONE;
    rs->attempt_live = false;
    cmtpd_delivery_fail_open(j, res, why);
    cmtpd_delivery_job_finish(j);
}

static void rt_next(struct dl_job *j);
static void rt_smtp_start(struct dl_job *j);

/* ---- addresses ------------------------------------------------------------------------------ */

static void rt_addr_to_sa(const struct cmtp_route_addr *a, uint16_t port,
                          struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (a->family == 6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        memcpy(&in6->sin6_addr, a->ip, 16);
        *len = sizeof(*in6);
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        memcpy(&in->sin_addr, a->ip, 4);
        *len = sizeof(*in);
    }
}

/* rt_connect starts the transport on the next address. */
static void rt_connect(struct dl_job *j)
{
    struct dl_route_state *rs = j->route;
    const struct cmtp_route_addr *a = &rs->addrs[rs->addr_i++];
    const struct cmtp_route_host *h = &rs->hosts[rs->host_i - 1];
    char ip[INET6_ADDRSTRLEN];
    rt_addr_to_sa(a, h->port, &j->sa, &j->sa_len);
    inet_ntop(a->family == 6 ? AF_INET6 : AF_INET, a->ip, ip, sizeof(ip));
    if (h->name[0] != '\0')
        cmtpd_delivery_why(j->peer, sizeof(j->peer), "%.200s[%s]:%u", h->name, ip, h->port);
    else
        cmtpd_delivery_why(j->peer, sizeof(j->peer), a->family == 6 ? "[%s]:%u" : "%s:%u", ip,
                           h->port);
    snprintf(rs->host, sizeof(rs->host), "%s", h->name);
    rs->attempts++;
    rs->connected = rs->rx_any = rs->cls_set = false;
    rs->attempt_live = true;
    rs->phase = DL_RP_ATTEMPT;
    if (rs->smtp) {
        j->tr = DL_TR_SMTP;
        j->smtp_fallback = true;
        j->smtp_level = j->rec->env.policy.fallback;
        cmtpd_delivery_smtp_start(j);
    } else {
        cmtpd_delivery_cmtp_start(j);
    }
}

/* rt_exhausted runs when no address or host is left (or the attempts are used up). */
static void rt_exhausted(struct dl_job *j)
{
    struct dl_route_state *rs = j->route;
    bool unreachable = rs->all_unreachable && rs->attempts > 0 && !rs->dns_temp;
    if (!rs->smtp && rt_fallback_ok(j, rs->no_cmtp, unreachable)) {
        rt_smtp_start(j);
        return;
    }
    rt_end(j, QUEUE_CONSUMER_TEMPFAIL,
           rs->why[0] ? rs->why : (rs->smtp ? "no SMTP host reachable" : "no CMTP host reachable"));
}

static void rt_addrs_done(struct dl_job *j)
{
    struct dl_route_state *rs = j->route;
    const char *host = rs->hosts[rs->host_i - 1].name;
    rs->phase = DL_RP_IDLE;
    rs->n_addrs =
        cmtp_route_addrs_merge(rs->addrs, CMTP_ROUTE_ADDRS_MAX, rs->v6, rs->n6, rs->v4, rs->n4);
    rs->addr_i = 0;
    if (rs->addr_temp)
        rs->dns_temp = true;
    if (rs->n_addrs == 0 && !rs->addr_temp)
        cmtpd_delivery_why(rs->why, sizeof(rs->why), "no address for %s", host);
    CMTP_LOG(rt_log(j), CMTP_LOG_DEBUG, "route-host", cmtp_log_str("qid", j->qid),
             cmtp_log_str("dest", j->dest), cmtp_log_str("host", host),
             cmtp_log_uint("addrs", rs->n_addrs));
    rt_next(j);
}

static void rt_addr_cb(void *arg, const struct cmtpd_resolve_answer *a)
{
    struct dl_job *j = arg;
    struct dl_route_state *rs = j->route;
    bool six = a->type == CMTPD_RESOLVE_AAAA;
    rs->req[six ? 0 : 1] = NULL;
    rs->waiting--;
    if (a->status == CMTPD_RESOLVE_OK) {
        struct cmtp_route_addr *v = six ? rs->v6 : rs->v4;
        size_t n = a->n < CMTP_ROUTE_ADDRS_MAX ? a->n : CMTP_ROUTE_ADDRS_MAX;
        memcpy(v, a->addr, n * sizeof(*v));
        if (six)
            rs->n6 = n;
        else
            rs->n4 = n;
    } else if (a->status == CMTPD_RESOLVE_TEMP) {
        rs->addr_temp = true;
        cmtpd_delivery_why(rs->why, sizeof(rs->why), "dns-tempfail: %s %s: %s", six ? "AAAA" : "A",
                           rs->hosts[rs->host_i - 1].name, a->detail ? a->detail : "-");
    }
    if (rs->waiting == 0)
        rt_addrs_done(j);
}

/* rt_resolve_host asks for the addresses of the next host. */
static void rt_resolve_host(struct dl_job *j)
{
    struct dl_route_state *rs = j->route;
    const char *name = rs->hosts[rs->host_i++].name;
    rs->n4 = rs->n6 = rs->n_addrs = rs->addr_i = 0;
    rs->addr_temp = false;
    rs->waiting = 0;
    rs->phase = DL_RP_ADDR;
    if (j->dl->res == NULL) {
        rs->addr_temp = true;
        cmtpd_delivery_why(rs->why, sizeof(rs->why), "dns-tempfail: no resolver");
        rt_addrs_done(j);
        return;
    }
    static const enum cmtpd_resolve_type types[2] = {CMTPD_RESOLVE_AAAA, CMTPD_RESOLVE_A};
    for (int k = 0; k < 2; k++) {
        int r = cmtpd_resolve_start(j->dl->res, types[k], name, rt_addr_cb, j, &rs->req[k]);
        if (r == 0) {
            rs->waiting++;
        } else {
            rs->addr_temp = true;
            cmtpd_delivery_why(rs->why, sizeof(rs->why), "dns-tempfail: %s %s: %s",
                               cmtpd_resolve_type_name(types[k]), name,
                               r == -EAGAIN ? "resolver busy" : "bad name");
        }
    }
    if (rs->waiting == 0)
        rt_addrs_done(j);
}

/* rt_next goes on with the next address, the next host, or what follows the last. */
static void rt_next(struct dl_job *j)
{
    struct dl_route_state *rs = j->route;
    if (rs->addr_i < rs->n_addrs) {
        if (rs->attempts >= DL_ROUTE_ATTEMPTS_MAX) {
            rt_exhausted(j);
            return;
        }
        rt_connect(j);
        return;
    }
    if (rs->host_i < rs->n_hosts && rs->attempts < DL_ROUTE_ATTEMPTS_MAX) {
        rt_resolve_host(j);
        return;
    }
    rt_exhausted(j);
}

/* ---- SRV and MX ----------------------------------------------------------------------------- */

static void rt_hosts_ready(struct dl_job *j)
{
    struct dl_route_state *rs = j->route;
    rs->host_i = rs->n_addrs = rs->addr_i = 0;
    CMTP_LOG(rt_log(j), CMTP_LOG_DEBUG, "route", cmtp_log_str("qid", j->qid),
             cmtp_log_str("dest", j->dest), cmtp_log_str("domain", rs->qname),
             cmtp_log_str("via", rs->smtp ? "smtp" : "cmtp"), cmtp_log_uint("hosts", rs->n_hosts),
             cmtp_log_str("first", rs->n_hosts ? rs->hosts[0].name : "-"));
    rt_next(j);
}

static void rt_mx_cb(void *arg, const struct cmtpd_resolve_answer *a)
{
    struct dl_job *j = arg;
    struct dl_route_state *rs = j->route;
    char why[QUEUE_REASON_MAX];
    struct cmtp_route_mx mx[CMTP_ROUTE_TARGETS_MAX];
    size_t n = a->n < CMTP_ROUTE_TARGETS_MAX ? a->n : CMTP_ROUTE_TARGETS_MAX;
    rs->req[0] = NULL;
    switch (a->status) {
    case CMTPD_RESOLVE_TEMP:
        rs->dns_temp = true;
        cmtpd_delivery_why(why, sizeof(why), "dns-tempfail: MX %s: %s", rs->qname,
                           a->detail ? a->detail : "-");
        rt_end(j, QUEUE_CONSUMER_TEMPFAIL, why);
        return;
    case CMTPD_RESOLVE_NONE:
        /* No MX: the domain itself (RFC 5321 5.1). */
        snprintf(rs->hosts[0].name, sizeof(rs->hosts[0].name), "%s", rs->qname);
        rs->hosts[0].port = rs->self_port;
        rs->n_hosts = 1;
        rt_hosts_ready(j);
        return;
    case CMTPD_RESOLVE_OK:
        break;
    }
    memcpy(mx, a->mx, n * sizeof(*mx));
    uint16_t port = rs->smtp ? (uint16_t)rt_cfg(j)->delivery.smtp_port
                             : (uint16_t)rt_cfg(j)->delivery.cmtp_port;
    switch (cmtp_route_from_mx(rs->hosts, CMTP_ROUTE_TARGETS_MAX, &rs->n_hosts, mx, n, port,
                               rt_rand, NULL)) {
    case CMTP_ROUTE_HOSTS:
        rt_hosts_ready(j);
        return;
    case CMTP_ROUTE_NO_SERVICE:
        /* RFC 7505: the domain accepts no mail at all; no fallback either. */
        cmtpd_delivery_why(why, sizeof(why), "null-mx: %s accepts no mail (RFC 7505)", rs->qname);
        rt_end(j, QUEUE_CONSUMER_PERMFAIL, why);
        return;
    case CMTP_ROUTE_NO_USABLE:
        break;
    }
    cmtpd_delivery_why(why, sizeof(why), "dns: no usable MX host for %s", rs->qname);
    rt_end(j, QUEUE_CONSUMER_TEMPFAIL, why);
}

/* rt_mx asks for the MX records of rs->qname. */
static void rt_mx(struct dl_job *j)
{
    struct dl_route_state *rs = j->route;
    char why[QUEUE_REASON_MAX];
    int r = -EAGAIN;
    rs->phase = DL_RP_MX;
    if (j->dl->res != NULL)
        r = cmtpd_resolve_start(j->dl->res, CMTPD_RESOLVE_MX, rs->qname, rt_mx_cb, j, &rs->req[0]);
    if (r < 0) {
        rs->dns_temp = true;
        cmtpd_delivery_why(why, sizeof(why), "dns-tempfail: MX %s: %s", rs->qname,
                           j->dl->res == NULL ? "no resolver"
                           : r == -EAGAIN     ? "resolver busy"
                                              : "bad name");
        rt_end(j, QUEUE_CONSUMER_TEMPFAIL, why);
    }
}

static void rt_srv_cb(void *arg, const struct cmtpd_resolve_answer *a)
{
    struct dl_job *j = arg;
    struct dl_route_state *rs = j->route;
    char why[QUEUE_REASON_MAX];
    struct cmtp_route_srv srv[CMTP_ROUTE_TARGETS_MAX];
    size_t n = a->n < CMTP_ROUTE_TARGETS_MAX ? a->n : CMTP_ROUTE_TARGETS_MAX;
    rs->req[0] = NULL;
    switch (a->status) {
    case CMTPD_RESOLVE_TEMP:
        rs->dns_temp = true;
        cmtpd_delivery_why(why, sizeof(why), "dns-tempfail: SRV _cmtp._tcp.%s: %s", rs->qname,
                           a->detail ? a->detail : "-");
        rt_end(j, QUEUE_CONSUMER_TEMPFAIL, why);
        return;
    case CMTPD_RESOLVE_NONE:
        rt_mx(j);
        return;
    case CMTPD_RESOLVE_OK:
        break;
    }
    memcpy(srv, a->srv, n * sizeof(*srv));
    switch (cmtp_route_from_srv(rs->hosts, CMTP_ROUTE_TARGETS_MAX, &rs->n_hosts, srv, n, rt_rand,
                                NULL)) {
    case CMTP_ROUTE_HOSTS:
        rt_hosts_ready(j);
        return;
    case CMTP_ROUTE_NO_SERVICE:
        /* PROTOCOL.md 16 step 1: D offers no CMTP; the originator's FALLBACK= decides. */
        rs->no_cmtp = true;
        if (rt_fallback_ok(j, true, false)) {
            rt_smtp_start(j);
            return;
        }
        /* The internal store ([delivery] mode = cmtp) is a configuration to fix: mail waits. */
        cmtpd_delivery_why(why, sizeof(why),
                           "%s: %s offers no CMTP (SRV _cmtp._tcp target \".\")%s",
                           j->store_hop ? "no-route" : "no-cmtp", rs->qname,
                           j->store_hop ? "" : " and FALLBACK=none");
        rt_end(j, j->store_hop ? QUEUE_CONSUMER_TEMPFAIL : QUEUE_CONSUMER_PERMFAIL, why);
        return;
    case CMTP_ROUTE_NO_USABLE:
        break;
    }
    cmtpd_delivery_why(why, sizeof(why), "dns: no usable SRV target for %s", rs->qname);
    rt_end(j, QUEUE_CONSUMER_TEMPFAIL, why);
}

/* ---- SMTP fallback -------------------------------------------------------------------------- */

/* rt_smtp_start switches |j| to SMTP fallback (PROTOCOL.md 14): to the MX hosts of the recipient
 * domain on smtp_port, certificate (where the level asks for one) verified for that domain.
 * Recipients of another domain wait for a later attempt. */
static void rt_smtp_start(struct dl_job *j)
{
    struct dl_route_state *rs = j->route;
    const char *d;
    size_t k = 0;
    if (j->n_tr == 0) {
        rt_end(j, QUEUE_CONSUMER_TEMPFAIL, "no recipient");
        return;
    }
    d = j->addr[0].domain;
    for (size_t i = 0; i < j->n_tr; i++) {
        if (strcmp(j->addr[i].domain, d) != 0) {
            cmtpd_delivery_rcpt_set(j, i, QUEUE_CONSUMER_TEMPFAIL,
                                    "deferred: another route went first");
            continue;
        }
        j->map[k] = j->map[i];
        if (k != i)
            j->addr[k] = j->addr[i];
        k++;
    }
    j->n_tr = k;
    rs->smtp = true;
    snprintf(rs->qname, sizeof(rs->qname), "%s", d);
    rs->self_port = (uint16_t)rt_cfg(j)->delivery.smtp_port;
    rs->n_hosts = rs->host_i = rs->n_addrs = rs->addr_i = 0;
    rs->why[0] = '\0';
    snprintf(j->tls_name, sizeof(j->tls_name), "%s", d);
    CMTP_LOG(rt_log(j), CMTP_LOG_INFO, "smtp-fallback", cmtp_log_str("qid", j->qid),
             cmtp_log_str("dest", j->dest), cmtp_log_str("domain", d),
             cmtp_log_str("level", cmtp_fallback_name(j->rec->env.policy.fallback)),
             cmtp_log_str("because", rs->no_cmtp ? "no CMTP route (SRV target \".\")"
                                                 : "no CMTP server reachable"),
             cmtp_log_uint("cmtp_attempts", rs->attempts));
    rt_mx(j);
}

/* ---- the job's side ------------------------------------------------------------------------- */

int cmtpd_delivery_route_prepare(struct dl_job *j, const char *qname, uint16_t port,
                                 const struct cmtp_config_endpoint *ep)
{
    struct dl_route_state *rs = calloc(1, sizeof(*rs));
    if (rs == NULL)
        return -ENOMEM;
    rs->all_unreachable = true;
    if (ep != NULL) {
        struct sockaddr_storage ss;
        cmtpd_delivery_endpoint_sa(ep, &ss);
        if (ss.ss_family == AF_INET6) {
            rs->addrs[0].family = 6;
            memcpy(rs->addrs[0].ip, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
        } else {
            rs->addrs[0].family = 4;
            memcpy(rs->addrs[0].ip, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        }
        rs->n_addrs = 1;
        rs->hosts[0].port = ep->port;
        rs->n_hosts = rs->host_i = 1;
        rs->self_port = ep->port;
    } else {
        snprintf(rs->qname, sizeof(rs->qname), "%s", qname);
        rs->self_port = port;
    }
    j->route = rs;
    return 0;
}

void cmtpd_delivery_route_start(struct dl_job *j)
{
    struct dl_route_state *rs = j->route;
    char name[CMTP_DOMAIN_MAX + 16], why[QUEUE_REASON_MAX];
    int r = -EAGAIN;
    if (rs->qname[0] == '\0') {
        rt_next(j); /* a static address */
        return;
    }
    cmtpd_delivery_why(j->peer, sizeof(j->peer), "dns:%.200s", rs->qname);
    if (strlen(rs->qname) + 11 > CMTP_DOMAIN_MAX) {
        rt_mx(j); /* _cmtp._tcp.D would exceed a DNS name: D can have no such SRV records */
        return;
    }
    snprintf(name, sizeof(name), "_cmtp._tcp.%s", rs->qname);
    rs->phase = DL_RP_SRV;
    if (j->dl->res != NULL)
        r = cmtpd_resolve_start(j->dl->res, CMTPD_RESOLVE_SRV, name, rt_srv_cb, j, &rs->req[0]);
    if (r < 0) {
        rs->dns_temp = true;
        cmtpd_delivery_why(why, sizeof(why), "dns-tempfail: SRV %s: %s", name,
                           j->dl->res == NULL ? "no resolver"
                           : r == -EAGAIN     ? "resolver busy"
                                              : "bad name");
        rt_end(j, QUEUE_CONSUMER_TEMPFAIL, why);
    }
}

/* rt_reopen makes |j| ready for another attempt: the transport's state freed, the body
 * rewound, the recipients open again (an attempt that may be retried decided nothing: no
 * recipient was accepted by a peer). */
static void rt_reopen(struct dl_job *j)
{
    cmtpd_delivery_cmtp_cleanup(j);
    cmtpd_delivery_smtp_cleanup(j);
    cmtpd_delivery_body_rewind(j);
    j->finishing = j->closing = j->send_inflight = false;
    j->c = NULL;
    j->in_body = j->end_queued = j->txn_done = false;
    j->frame_left = 0;
    j->body_sent = 0;
    j->out_txid[0] = '\0';
    /* The SMTP transport's per-attempt state (delivery_smtp.c sets the rest at its start). */
    j->begun = j->prescan = j->body_ended = false;
    j->trace_off = 0;
    memset(&j->scan, 0, sizeof(j->scan));
    j->smtp_tls_wait = j->smtp_connect_failed = j->smtp_verified = j->smtp_recorded = false;
    j->smtp_prot[0] = '\0';
    for (size_t i = 0; i < j->n_tr; i++) {
        struct dl_rcpt *r = &j->rc[j->map[i]];
        r->st = DL_R_OPEN;
        r->result = QUEUE_CONSUMER_TEMPFAIL;
        r->relay_refused = false;
        r->reason[0] = '\0';
    }
}

bool cmtpd_delivery_route_retry(struct dl_job *j)
{
    struct dl_route_state *rs = j->route;
    enum cmtp_route_fail cls;
    bool more, fallback;
    const char *next;
    if (rs == NULL || !rs->attempt_live || j->dl->stopping)
        return false;
    rs->attempt_live = false;
    if (j->tr == DL_TR_CMTP && !rs->smtp) {
        cls = cmtpd_delivery_cmtp_fail_class(j);
        if (cls == CMTP_ROUTE_FAIL_FINAL) {
            rs->phase = DL_RP_DONE;
            return false;
        }
        if (cls != CMTP_ROUTE_FAIL_UNREACHABLE)
            rs->all_unreachable = false;
    } else if (j->tr == DL_TR_SMTP && rs->smtp) {
        if (!cmtpd_delivery_smtp_connect_failed(j)) {
            rs->phase = DL_RP_DONE;
            return false;
        }
        cls = CMTP_ROUTE_FAIL_UNREACHABLE;
    } else {
        return false;
    }
    if (j->n_tr > 0)
        snprintf(rs->why, sizeof(rs->why), "%s", j->rc[j->map[0]].reason);
    more = (rs->addr_i < rs->n_addrs || rs->host_i < rs->n_hosts) &&
           rs->attempts < DL_ROUTE_ATTEMPTS_MAX;
    fallback = !rs->smtp && rt_fallback_ok(j, rs->no_cmtp, rs->all_unreachable && !rs->dns_temp);
    next = more ? "next-host" : fallback ? "smtp-fallback" : "none";
    CMTP_LOG(rt_log(j), CMTP_LOG_INFO, "route-attempt-failed", cmtp_log_str("qid", j->qid),
             cmtp_log_str("dest", j->dest), cmtp_log_str("peer", j->peer),
             cmtp_log_str("transport", rs->smtp ? "smtp" : "cmtp"),
             cmtp_log_str("class", cls == CMTP_ROUTE_FAIL_UNREACHABLE ? "unreachable" : "host"),
             cmtp_log_str("reply", rs->why), cmtp_log_str("next", next));
    if (!more && !fallback) {
        rs->phase = DL_RP_DONE;
        return false; /* the transport's outcome stands */
    }
    rt_reopen(j);
    if (rs->smtp)
        j->tr = DL_TR_SMTP;
    if (more)
        rt_next(j);
    else
        rt_smtp_start(j);
    return true;
}

void cmtpd_delivery_route_cleanup(struct dl_job *j)
{
    struct dl_route_state *rs = j->route;
    if (rs == NULL)
        return;
    cmtpd_resolve_cancel(rs->req[0]);
    cmtpd_resolve_cancel(rs->req[1]);
    free(rs);
    j->route = NULL;
}
