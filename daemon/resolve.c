/* daemon/resolve.c — c-ares on a worker's io_uring ring: its sockets as io_watch objects, its
 * timeouts as one io_timer, answers parsed into bounded records, cached per (type, name) with
 * their TTL, lookups of the same name sharing one query. Not routing decisions (core/route.c).
 *
 * How it runs (everything on the worker's thread):
 * - c-ares reports the sockets it wants watched through its socket-state callback; each becomes
 *   an io_watch whose callback runs ares_process_fd. After every call into c-ares the next
 *   c-ares timeout is armed as an io_timer, whose callback runs ares_process_fd with no socket
 *   (timeouts and retries to the next server).
 * - A lookup finds its (type, name) entry in the cache or makes one. A fresh answer, or a
 *   query already asked, is joined; otherwise the entry's query is queued. A "kick" timer (0 ms)
 *   starts queued queries while fewer than CMTPD_RESOLVE_INFLIGHT_MAX are in flight and hands
 *   answers to their waiters; so no callback ever runs inside cmtpd_resolve_start or inside
 *   c-ares, and c-ares is never re-entered from its own callbacks.
 * - Positive answers are cached for their smallest TTL (at most CMTPD_RESOLVE_TTL_MAX_MS),
 *   "no such records" for the negative TTL of RFC 2308 (at most CMTPD_RESOLVE_NEG_TTL_MAX_MS),
 *   temporary failures not at all. A full cache evicts the entry expiring first among those no
 *   one waits for.
 * - c-ares cannot validate DNSSEC: every answer is treated as not validated (docs/CONFIG.md). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ares.h>

#include "daemon/resolve.h"

#define RS_CLASS_IN 1
#define RS_TYPE_A 1
#define RS_TYPE_MX 15
#define RS_TYPE_AAAA 28
#define RS_TYPE_SRV 33

/* RS_NAME_MAX is the longest query name: a domain plus "_cmtp._tcp." and a little room. */
#define RS_NAME_MAX (CMTP_DOMAIN_MAX + 16)

struct rs_entry;

struct cmtpd_resolve_req {
    struct rs_entry *e;
    struct cmtpd_resolve_req *next, *prev;
    uint64_t seq;
    cmtpd_resolve_fn fn;
    void *arg;
};

/* rs_entry is one cached (type, name): its answer and who waits for it. */
struct rs_entry {
    struct cmtpd_resolver *r;
    enum cmtpd_resolve_type type;
    char name[RS_NAME_MAX + 1];
    bool pending; /* a query is queued or in flight; the answer below is stale or absent */
    bool queued;  /* on the start queue */
    bool notify;  /* on the notify list */
    bool busy;    /* its waiters are being called: never evicted meanwhile */
    bool have;    /* an answer is held */
    uint64_t expires_ms;
    enum cmtpd_resolve_status status;
    const char *detail;
    size_t n;
    void *recs; /* n records: cmtp_route_srv, cmtp_route_mx or cmtp_route_addr */
    struct rs_entry *qnext, *nnext;
    struct cmtpd_resolve_req *waiters, *waiters_tail;
};

/* rs_sock is one socket c-ares asked us to watch. */
struct rs_sock {
    struct cmtpd_resolver *r;
    bool used;
    ares_socket_t fd;
    struct io_watch *w;
};

struct cmtpd_resolver {
    struct io_worker *io;
    ares_channel ch;
    bool ch_ok;
    bool dying;
    /* The settings in use, and those wanted once idle. */
    struct cmtp_config_endpoint servers[CMTP_CONFIG_DNS_SERVERS_MAX];
    size_t n_servers;
    uint64_t timeout_ms;
    bool reconf;
    struct cmtp_config_endpoint want_servers[CMTP_CONFIG_DNS_SERVERS_MAX];
    size_t want_n_servers;
    uint64_t want_timeout_ms;

    struct rs_entry *ents[CMTPD_RESOLVE_CACHE_MAX];
    size_t n_ents;
    struct rs_entry *q_head, *q_tail; /* queries waiting for a slot */
    struct rs_entry *notify;          /* entries whose waiters are to be called */
    unsigned inflight;
    size_t n_waiters;
    uint64_t seq;

    struct rs_sock socks[CMTPD_RESOLVE_SOCKS_MAX];
    struct io_timer *tmo; /* c-ares' next timeout */
    uint64_t tmo_due;
    struct io_timer *kick; /* start queued queries, call waiters */

    struct cmtpd_resolve_stats st;
};

const char *cmtpd_resolve_type_name(enum cmtpd_resolve_type type)
{
    switch (type) {
    case CMTPD_RESOLVE_SRV:
        return "SRV";
    case CMTPD_RESOLVE_MX:
        return "MX";
    case CMTPD_RESOLVE_A:
        return "A";
    case CMTPD_RESOLVE_AAAA:
        return "AAAA";
    }
    return "?";
}

static int rs_wire_type(enum cmtpd_resolve_type t)
{
    switch (t) {
    case CMTPD_RESOLVE_SRV:
        return RS_TYPE_SRV;
    case CMTPD_RESOLVE_MX:
        return RS_TYPE_MX;
    case CMTPD_RESOLVE_A:
        return RS_TYPE_A;
    case CMTPD_RESOLVE_AAAA:
        break;
    }
    return RS_TYPE_AAAA;
}

/* ---- timers and sockets -------------------------------------------------------------------- */

static void rs_kick_cb(void *arg);

static void rs_kick(struct cmtpd_resolver *r)
{
    if (r->kick == NULL && !r->dying)
        r->kick = io_timer_add(r->io, 0, rs_kick_cb, r);
}

static void rs_tmo_cb(void *arg);

/* rs_arm arms the timer for c-ares' next timeout (an earlier timer that is already armed stays:
 * running ares_process_fd early does no harm). */
static void rs_arm(struct cmtpd_resolver *r)
{
    struct timeval tv, *t;
    uint64_t ms, due;
    if (!r->ch_ok || r->dying)
        return;
    t = ares_timeout(r->ch, NULL, &tv);
    if (t == NULL)
        return;
    ms = (uint64_t)t->tv_sec * 1000 + (uint64_t)t->tv_usec / 1000 + 1;
    due = io_worker_now_ms(r->io) + ms;
    if (r->tmo != NULL) {
        if (r->tmo_due <= due)
            return;
        io_timer_cancel(r->io, r->tmo);
        r->tmo = NULL;
    }
    r->tmo = io_timer_add(r->io, ms, rs_tmo_cb, r);
    r->tmo_due = due;
}

static void rs_tmo_cb(void *arg)
{
    struct cmtpd_resolver *r = arg;
    r->tmo = NULL;
    if (r->ch_ok)
        ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    rs_arm(r);
}

static void rs_sock_cb(void *arg, unsigned events)
{
    struct rs_sock *s = arg;
    struct cmtpd_resolver *r = s->r;
    ares_socket_t fd = s->fd;
    /* ares_process_fd may close the socket (s is then reused or freed): read it first. */
    ares_process_fd(r->ch, (events & IO_WATCH_READ) ? fd : ARES_SOCKET_BAD,
                    (events & IO_WATCH_WRITE) ? fd : ARES_SOCKET_BAD);
    rs_arm(r);
}

/* rs_sock_state is c-ares' socket-state callback: start, change or stop watching |fd|. */
static void rs_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct cmtpd_resolver *r = data;
    struct rs_sock *s = NULL, *free_slot = NULL;
    for (size_t i = 0; i < CMTPD_RESOLVE_SOCKS_MAX; i++) {
        if (r->socks[i].used && r->socks[i].fd == fd) {
            s = &r->socks[i];
            break;
        }
        if (!r->socks[i].used && free_slot == NULL)
            free_slot = &r->socks[i];
    }
    if (!readable && !writable) {
        if (s != NULL) {
            io_watch_free(s->w);
            s->w = NULL;
            s->used = false;
        }
        return;
    }
    if (s == NULL) {
        if (free_slot == NULL || r->dying)
            return; /* not watched: its queries end by timeout */
        s = free_slot;
        s->r = r;
        s->fd = fd;
        s->w = io_watch_new(r->io, fd, rs_sock_cb, s);
        if (s->w == NULL)
            return;
        s->used = true;
    }
    io_watch_set(s->w, readable != 0, writable != 0);
}

/* ---- answers -------------------------------------------------------------------------------- */

static uint64_t rs_ttl_ms(uint32_t ttl_s, uint64_t max_ms)
{
    uint64_t ms = (uint64_t)ttl_s * 1000;
    return ms < max_ms ? ms : max_ms;
}

static void rs_set_temp(struct rs_entry *e, const char *detail)
{
    e->status = CMTPD_RESOLVE_TEMP;
    e->detail = detail;
    e->n = 0;
}

/* rs_keep_srv adds |rec| to the |*n| records at |v| (capacity CMTP_ROUTE_TARGETS_MAX), keeping
 * those with the lowest priority values when full. */
static void rs_keep_srv(struct cmtp_route_srv *v, size_t *n, const struct ares_srv_reply *rec)
{
    size_t at = *n;
    if (strlen(rec->host) > CMTP_DOMAIN_MAX + 1)
        return; /* longer than any host name: unusable */
    if (*n == CMTP_ROUTE_TARGETS_MAX) {
        at = 0;
        for (size_t i = 1; i < *n; i++) {
            if (v[i].priority > v[at].priority)
                at = i;
        }
        if (v[at].priority <= rec->priority)
            return;
    } else {
        (*n)++;
    }
    memset(&v[at], 0, sizeof(v[at]));
    v[at].priority = rec->priority;
    v[at].weight = rec->weight;
    v[at].port = rec->port;
    snprintf(v[at].target, sizeof(v[at].target), "%s", rec->host);
}

static void rs_keep_mx(struct cmtp_route_mx *v, size_t *n, const struct ares_mx_reply *rec)
{
    size_t at = *n;
    if (strlen(rec->host) > CMTP_DOMAIN_MAX + 1)
        return;
    if (*n == CMTP_ROUTE_TARGETS_MAX) {
        at = 0;
        for (size_t i = 1; i < *n; i++) {
            if (v[i].preference > v[at].preference)
                at = i;
        }
        if (v[at].preference <= rec->priority)
            return;
    } else {
        (*n)++;
    }
    memset(&v[at], 0, sizeof(v[at]));
    v[at].preference = rec->priority;
    snprintf(v[at].host, sizeof(v[at].host), "%s", rec->host);
}

/* rs_parse fills |e|'s answer from a reply |abuf| of |alen| octets and returns its cache time in
 * ms. */
static uint64_t rs_parse(struct rs_entry *e, const unsigned char *abuf, int alen)
{
    uint32_t ttl = 0;
    bool ttl_ok = cmtp_route_dns_ttl(abuf, (size_t)alen, &ttl) == 0;
    int st;
    e->status = CMTPD_RESOLVE_OK;
    e->detail = NULL;
    e->n = 0;
    switch (e->type) {
    case CMTPD_RESOLVE_SRV: {
        struct ares_srv_reply *list = NULL;
        struct cmtp_route_srv *v = calloc(CMTP_ROUTE_TARGETS_MAX, sizeof(*v));
        st = ares_parse_srv_reply(abuf, alen, &list);
        if (st == ARES_SUCCESS && v != NULL) {
            for (const struct ares_srv_reply *p = list; p != NULL; p = p->next)
                rs_keep_srv(v, &e->n, p);
            e->recs = v;
            v = NULL;
        }
        ares_free_data(list);
        free(v);
        break;
    }
    case CMTPD_RESOLVE_MX: {
        struct ares_mx_reply *list = NULL;
        struct cmtp_route_mx *v = calloc(CMTP_ROUTE_TARGETS_MAX, sizeof(*v));
        st = ares_parse_mx_reply(abuf, alen, &list);
        if (st == ARES_SUCCESS && v != NULL) {
            for (const struct ares_mx_reply *p = list; p != NULL; p = p->next)
                rs_keep_mx(v, &e->n, p);
            e->recs = v;
            v = NULL;
        }
        ares_free_data(list);
        free(v);
        break;
    }
    case CMTPD_RESOLVE_A:
    case CMTPD_RESOLVE_AAAA: {
        /* One parser per family, one copy for both; the answer's TTL is the lowest one. */
        struct ares_addrttl a4[CMTP_ROUTE_ADDRS_MAX];
        struct ares_addr6ttl a6[CMTP_ROUTE_ADDRS_MAX];
        bool six = e->type == CMTPD_RESOLVE_AAAA;
        int n = CMTP_ROUTE_ADDRS_MAX;
        struct cmtp_route_addr *v = calloc(CMTP_ROUTE_ADDRS_MAX, sizeof(*v));
        st = six ? ares_parse_aaaa_reply(abuf, alen, NULL, a6, &n)
                 : ares_parse_a_reply(abuf, alen, NULL, a4, &n);
        if (st == ARES_SUCCESS && v != NULL) {
            ttl_ok = n > 0;
            for (int i = 0; i < n && i < (int)CMTP_ROUTE_ADDRS_MAX; i++) {
                int raw = six ? a6[i].ttl : a4[i].ttl;
                uint32_t t = raw < 0 ? 0 : (uint32_t)raw;
                v[i].family = six ? 6 : 4;
                if (six)
                    memcpy(v[i].ip, &a6[i].ip6addr, 16);
                else
                    memcpy(v[i].ip, &a4[i].ipaddr, 4);
                if (i == 0 || t < ttl)
                    ttl = t;
                e->n++;
            }
            e->recs = v;
            v = NULL;
        }
        free(v);
        break;
    }
    default:
        st = ARES_EBADRESP;
        break;
    }
    if (st == ARES_ENODATA) {
        e->status = CMTPD_RESOLVE_NONE;
        return rs_ttl_ms(ttl_ok ? ttl : UINT32_MAX, CMTPD_RESOLVE_NEG_TTL_MAX_MS);
    }
    if (st != ARES_SUCCESS || e->recs == NULL) {
        rs_set_temp(e, st != ARES_SUCCESS ? ares_strerror(st) : "out of memory");
        return 0;
    }
    if (e->n == 0) {
        /* Records, but none we could keep: like no records of the type. */
        e->status = CMTPD_RESOLVE_NONE;
        return 0;
    }
    return ttl_ok ? rs_ttl_ms(ttl, CMTPD_RESOLVE_TTL_MAX_MS) : 0;
}

static void rs_notify(struct rs_entry *e)
{
    if (!e->notify) {
        e->notify = true;
        e->nnext = e->r->notify;
        e->r->notify = e;
    }
    rs_kick(e->r);
}

/* rs_query_cb is c-ares' answer to one query of entry |arg|. */
static void rs_query_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct rs_entry *e = arg;
    struct cmtpd_resolver *r = e->r;
    uint64_t keep_ms = 0;
    (void)timeouts;
    if (r->dying)
        return;
    r->inflight--;
    free(e->recs);
    e->recs = NULL;
    e->n = 0;
    e->pending = false;
    e->have = true;
    if (status == ARES_SUCCESS && abuf != NULL && alen > 0) {
        keep_ms = rs_parse(e, abuf, alen);
    } else if (status == ARES_ENODATA || status == ARES_ENOTFOUND) {
        uint32_t ttl = 0;
        e->status = CMTPD_RESOLVE_NONE;
        e->detail = NULL;
        keep_ms =
            rs_ttl_ms(abuf != NULL && alen > 0 && cmtp_route_dns_ttl(abuf, (size_t)alen, &ttl) == 0
                          ? ttl
                          : UINT32_MAX,
                      CMTPD_RESOLVE_NEG_TTL_MAX_MS);
    } else {
        rs_set_temp(e, ares_strerror(status));
    }
    if (e->status == CMTPD_RESOLVE_TEMP)
        r->st.tempfail++;
    e->expires_ms = io_worker_now_ms(r->io) + keep_ms;
    rs_notify(e);
}

/* ---- the channel ---------------------------------------------------------------------------- */

static int rs_channel(struct cmtpd_resolver *r, char *err, size_t errlen)
{
    struct ares_options o;
    int st;
    memset(&o, 0, sizeof(o));
    o.timeout = (int)r->timeout_ms;
    o.tries = CMTPD_RESOLVE_TRIES;
    o.sock_state_cb = rs_sock_state;
    o.sock_state_cb_data = r;
    st =
        ares_init_options(&r->ch, &o, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB);
    if (st != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares: %s", ares_strerror(st));
        return -EINVAL;
    }
    if (r->n_servers > 0) {
        char csv[CMTP_CONFIG_DNS_SERVERS_MAX * 56 + 1];
        size_t off = 0;
        for (size_t i = 0; i < r->n_servers; i++) {
            const struct cmtp_config_endpoint *s = &r->servers[i];
            int w = snprintf(csv + off, sizeof(csv) - off,
                             s->kind == CMTP_CONFIG_HOST_IPV6 ? "%s[%s]:%u" : "%s%s:%u",
                             i ? "," : "", s->host, s->port);
            if (w < 0 || (size_t)w >= sizeof(csv) - off) {
                snprintf(err, errlen, "c-ares: dns_servers too long");
                ares_destroy(r->ch);
                return -EINVAL;
            }
            off += (size_t)w;
        }
        st = ares_set_servers_ports_csv(r->ch, csv);
        if (st != ARES_SUCCESS) {
            snprintf(err, errlen, "c-ares: dns_servers: %s", ares_strerror(st));
            ares_destroy(r->ch);
            return -EINVAL;
        }
    }
    r->ch_ok = true;
    return 0;
}

static void rs_channel_close(struct cmtpd_resolver *r)
{
    bool was = r->dying;
    if (!r->ch_ok)
        return;
    /* ares_destroy calls every pending callback (ARES_EDESTRUCTION): ignored while dying. */
    r->dying = true;
    ares_destroy(r->ch);
    r->ch_ok = false;
    r->dying = was;
    if (r->tmo != NULL)
        io_timer_cancel(r->io, r->tmo);
    r->tmo = NULL;
}

static void rs_entry_free(struct rs_entry *e)
{
    free(e->recs);
    free(e);
}

/* rs_try_reconf rebuilds the channel with the wanted settings when nothing is in flight; the
 * cache goes with it (entries nobody waits for). */
static void rs_try_reconf(struct cmtpd_resolver *r)
{
    char err[128];
    if (!r->reconf || r->inflight > 0 || r->q_head != NULL)
        return;
    r->reconf = false;
    rs_channel_close(r);
    memcpy(r->servers, r->want_servers, sizeof(r->servers));
    r->n_servers = r->want_n_servers;
    r->timeout_ms = r->want_timeout_ms;
    if (rs_channel(r, err, sizeof(err)) < 0)
        r->ch_ok = false; /* lookups then fail as temporary until the next reconfigure */
    for (size_t i = 0; i < r->n_ents;) {
        struct rs_entry *e = r->ents[i];
        if (e->waiters == NULL && !e->busy && !e->notify && !e->pending) {
            rs_entry_free(e);
            r->ents[i] = r->ents[--r->n_ents];
        } else {
            e->expires_ms = 0;
            i++;
        }
    }
}

/* rs_send hands entry |e|'s query to c-ares. */
static void rs_send(struct cmtpd_resolver *r, struct rs_entry *e)
{
    if (!r->ch_ok) {
        e->pending = false;
        e->have = true;
        free(e->recs);
        e->recs = NULL;
        rs_set_temp(e, "no resolver");
        e->expires_ms = 0;
        r->st.tempfail++;
        rs_notify(e);
        return;
    }
    r->inflight++;
    r->st.queries++;
    ares_query(r->ch, e->name, RS_CLASS_IN, rs_wire_type(e->type), rs_query_cb, e);
    rs_arm(r);
}

static void rs_kick_cb(void *arg)
{
    struct cmtpd_resolver *r = arg;
    struct rs_entry *list;
    r->kick = NULL;
    rs_try_reconf(r);
    while (r->q_head != NULL && r->inflight < CMTPD_RESOLVE_INFLIGHT_MAX) {
        struct rs_entry *e = r->q_head;
        r->q_head = e->qnext;
        if (r->q_head == NULL)
            r->q_tail = NULL;
        e->qnext = NULL;
        e->queued = false;
        rs_send(r, e);
    }
    list = r->notify;
    r->notify = NULL;
    while (list != NULL) {
        struct rs_entry *e = list;
        list = e->nnext;
        e->nnext = NULL;
        e->notify = false;
        if (e->pending || !e->have)
            continue; /* a new query was asked meanwhile: its answer notifies again */
        struct cmtpd_resolve_answer a = {
            .type = e->type,
            .status = e->status,
            .detail = e->detail,
            .n = e->n,
            .srv = e->type == CMTPD_RESOLVE_SRV ? e->recs : NULL,
            .mx = e->type == CMTPD_RESOLVE_MX ? e->recs : NULL,
            .addr = e->type == CMTPD_RESOLVE_A || e->type == CMTPD_RESOLVE_AAAA ? e->recs : NULL,
        };
        /* Only the waiters that were there now: one that joins from a callback below is
         * served on a later round. |recs| stays while busy: a new query frees it only when
         * its answer comes, from a later loop iteration. */
        uint64_t limit = r->seq;
        e->busy = true;
        while (e->waiters != NULL && e->waiters->seq < limit) {
            struct cmtpd_resolve_req *q = e->waiters;
            e->waiters = q->next;
            if (e->waiters != NULL)
                e->waiters->prev = NULL;
            else
                e->waiters_tail = NULL;
            r->n_waiters--;
            cmtpd_resolve_fn fn = q->fn;
            void *qarg = q->arg;
            free(q);
            fn(qarg, &a);
        }
        e->busy = false;
        if (e->waiters != NULL)
            rs_notify(e);
    }
    if (r->q_head != NULL && r->inflight < CMTPD_RESOLVE_INFLIGHT_MAX)
        rs_kick(r);
}

/* ---- public --------------------------------------------------------------------------------- */

static void rs_take_cfg(struct cmtp_config_endpoint *servers, size_t *n, uint64_t *timeout_ms,
                        const struct cmtp_config *cfg)
{
    size_t k = cfg->delivery.dns_servers_count;
    if (k > CMTP_CONFIG_DNS_SERVERS_MAX)
        k = CMTP_CONFIG_DNS_SERVERS_MAX;
    memset(servers, 0, sizeof(*servers) * CMTP_CONFIG_DNS_SERVERS_MAX);
    memcpy(servers, cfg->delivery.dns_servers, sizeof(*servers) * k);
    *n = k;
    *timeout_ms = cfg->delivery.dns_timeout_ms;
}

struct cmtpd_resolver *cmtpd_resolve_new(struct io_worker *io, const struct cmtp_config *cfg,
                                         char *err, size_t errlen)
{
    struct cmtpd_resolver *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->io = io;
    rs_take_cfg(r->servers, &r->n_servers, &r->timeout_ms, cfg);
    if (rs_channel(r, err, errlen) < 0) {
        free(r);
        return NULL;
    }
    return r;
}

void cmtpd_resolve_free(struct cmtpd_resolver *r)
{
    if (r == NULL)
        return;
    rs_channel_close(r);
    r->dying = true;
    if (r->kick != NULL)
        io_timer_cancel(r->io, r->kick);
    r->kick = NULL;
    for (size_t i = 0; i < CMTPD_RESOLVE_SOCKS_MAX; i++) {
        if (r->socks[i].used)
            io_watch_free(r->socks[i].w);
    }
    for (size_t i = 0; i < r->n_ents; i++) {
        struct rs_entry *e = r->ents[i];
        while (e->waiters != NULL) {
            struct cmtpd_resolve_req *q = e->waiters;
            e->waiters = q->next;
            free(q);
        }
        rs_entry_free(e);
    }
    free(r);
}

void cmtpd_resolve_tick(struct cmtpd_resolver *r, const struct cmtp_config *cfg)
{
    struct cmtp_config_endpoint s[CMTP_CONFIG_DNS_SERVERS_MAX];
    size_t n;
    uint64_t t;
    if (r == NULL)
        return;
    /* A timer that could not be armed (the worker's timer_max) is armed again here. */
    if (r->q_head != NULL || r->notify != NULL)
        rs_kick(r);
    if (r->tmo == NULL)
        rs_arm(r);
    rs_take_cfg(s, &n, &t, cfg);
    if (n == r->n_servers && t == r->timeout_ms && memcmp(s, r->servers, sizeof(s)) == 0) {
        r->reconf = false;
        return;
    }
    memcpy(r->want_servers, s, sizeof(s));
    r->want_n_servers = n;
    r->want_timeout_ms = t;
    r->reconf = true;
    rs_try_reconf(r);
}

/* rs_name_ok checks a query name: 1..RS_NAME_MAX octets of letters, digits, '-', '_' and '.'. */
static bool rs_name_ok(const char *name)
{
    size_t len = strnlen(name, RS_NAME_MAX + 1);
    if (len == 0 || len > RS_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

/* rs_entry_get finds or makes the entry of (|type|, |name|); NULL when the cache is full of
 * entries in use, or out of memory. */
static struct rs_entry *rs_entry_get(struct cmtpd_resolver *r, enum cmtpd_resolve_type type,
                                     const char *name)
{
    struct rs_entry *e;
    size_t slot = r->n_ents;
    for (size_t i = 0; i < r->n_ents; i++) {
        if (r->ents[i]->type == type && strcmp(r->ents[i]->name, name) == 0)
            return r->ents[i];
    }
    if (r->n_ents == CMTPD_RESOLVE_CACHE_MAX) {
        /* Evict the entry expiring first among those nobody uses. */
        slot = SIZE_MAX;
        for (size_t i = 0; i < r->n_ents; i++) {
            const struct rs_entry *x = r->ents[i];
            if (x->pending || x->busy || x->notify || x->waiters != NULL)
                continue;
            if (slot == SIZE_MAX || x->expires_ms < r->ents[slot]->expires_ms)
                slot = i;
        }
        if (slot == SIZE_MAX)
            return NULL;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    e->r = r;
    e->type = type;
    snprintf(e->name, sizeof(e->name), "%s", name);
    if (slot < r->n_ents)
        rs_entry_free(r->ents[slot]);
    else
        r->n_ents++;
    r->ents[slot] = e;
    return e;
}

int cmtpd_resolve_start(struct cmtpd_resolver *r, enum cmtpd_resolve_type type, const char *name,
                        cmtpd_resolve_fn fn, void *arg, struct cmtpd_resolve_req **out)
{
    struct rs_entry *e;
    struct cmtpd_resolve_req *q;
    if (out != NULL)
        *out = NULL;
    if (!rs_name_ok(name))
        return -EINVAL;
    if (r->dying || r->n_waiters >= CMTPD_RESOLVE_WAITERS_MAX)
        return -EAGAIN;
    e = rs_entry_get(r, type, name);
    if (e == NULL)
        return -EAGAIN;
    q = calloc(1, sizeof(*q));
    if (q == NULL)
        return -EAGAIN;
    q->e = e;
    q->fn = fn;
    q->arg = arg;
    q->seq = r->seq++;
    q->prev = e->waiters_tail;
    if (e->waiters_tail != NULL)
        e->waiters_tail->next = q;
    else
        e->waiters = q;
    e->waiters_tail = q;
    r->n_waiters++;
    r->st.lookups++;
    if (e->pending) {
        r->st.joined++;
    } else if (e->have && e->expires_ms > io_worker_now_ms(r->io)) {
        r->st.hits++;
        rs_notify(e);
    } else {
        e->pending = true;
        e->queued = true;
        e->qnext = NULL;
        if (r->q_tail != NULL)
            r->q_tail->qnext = e;
        else
            r->q_head = e;
        r->q_tail = e;
        rs_kick(r);
    }
    if (out != NULL)
        *out = q;
    return 0;
}

void cmtpd_resolve_cancel(struct cmtpd_resolve_req *q)
{
    struct rs_entry *e;
    if (q == NULL)
        return;
    e = q->e;
    if (q->prev != NULL)
        q->prev->next = q->next;
    else
        e->waiters = q->next;
    if (q->next != NULL)
        q->next->prev = q->prev;
    else
        e->waiters_tail = q->prev;
    e->r->n_waiters--;
    free(q);
}

void cmtpd_resolve_get_stats(const struct cmtpd_resolver *r, struct cmtpd_resolve_stats *out)
{
    *out = r->st;
}
