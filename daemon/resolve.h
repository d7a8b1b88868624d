/* daemon/resolve.h — one worker's asynchronous DNS resolver: c-ares with its sockets watched on
 * the worker's io_uring ring and its timeouts on the ring's timers, a small cache with TTLs and
 * shared lookups. Never blocks. Not routing itself (core/route.h, daemon/delivery_route.c). */
#ifndef CMTP_DAEMON_RESOLVE_H
#define CMTP_DAEMON_RESOLVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/route.h"
#include "io/engine.h"

/* Bounds of one worker's resolver. */
#define CMTPD_RESOLVE_CACHE_MAX 256         /* names (with their type) cached */
#define CMTPD_RESOLVE_INFLIGHT_MAX 64       /* queries c-ares works on at once; others wait */
#define CMTPD_RESOLVE_WAITERS_MAX 1024      /* lookups waiting for an answer */
#define CMTPD_RESOLVE_SOCKS_MAX 32          /* c-ares sockets watched */
#define CMTPD_RESOLVE_TTL_MAX_MS 300000u    /* the longest a positive answer is cached */
#define CMTPD_RESOLVE_NEG_TTL_MAX_MS 60000u /* the longest "no such records" is cached */
#define CMTPD_RESOLVE_TRIES 2               /* times each server is asked */

/* cmtpd_resolve_type is what a lookup asks for. */
enum cmtpd_resolve_type {
    CMTPD_RESOLVE_SRV = 0, /* SRV records of the name given (the caller adds _cmtp._tcp.) */
    CMTPD_RESOLVE_MX,
    CMTPD_RESOLVE_A,
    CMTPD_RESOLVE_AAAA,
};

/* cmtpd_resolve_status is how a lookup ended. */
enum cmtpd_resolve_status {
    CMTPD_RESOLVE_OK = 0, /* records: |n| of them */
    CMTPD_RESOLVE_NONE,   /* the name does not exist, or has no records of the type */
    CMTPD_RESOLVE_TEMP,   /* no usable answer (SERVFAIL, REFUSED, timeout, a bad reply) */
};

/* cmtpd_resolve_answer is the answer to one lookup. At most CMTP_ROUTE_TARGETS_MAX SRV or MX
 * records are kept (those with the lowest priority or preference values) and at most
 * CMTP_ROUTE_ADDRS_MAX addresses. DNSSEC is never validated: nothing here is "secure". */
struct cmtpd_resolve_answer {
    enum cmtpd_resolve_type type;
    enum cmtpd_resolve_status status;
    const char *detail; /* why, for CMTPD_RESOLVE_TEMP: a static text (c-ares' error) */
    size_t n;
    const struct cmtp_route_srv *srv;   /* CMTPD_RESOLVE_SRV */
    const struct cmtp_route_mx *mx;     /* CMTPD_RESOLVE_MX */
    const struct cmtp_route_addr *addr; /* CMTPD_RESOLVE_A, CMTPD_RESOLVE_AAAA */
};

/* cmtpd_resolver is one worker's resolver. */
struct cmtpd_resolver;

/* cmtpd_resolve_req is one lookup waiting for its answer. */
struct cmtpd_resolve_req;

/* cmtpd_resolve_fn receives the answer of a lookup, always from the worker's loop (never from
 * inside cmtpd_resolve_start). |a| and what it points to are valid during the call only. The
 * request is finished: its handle is invalid. */
typedef void (*cmtpd_resolve_fn)(void *arg, const struct cmtpd_resolve_answer *a);

/* cmtpd_resolve_new creates a resolver on worker |io| configured from |cfg|'s [delivery]
 * dns_servers and dns_timeout (no servers: those of /etc/resolv.conf, read now). Runs on the
 * worker's thread. Returns NULL with a reason in |err| (|errlen| octets) on failure. */
struct cmtpd_resolver *cmtpd_resolve_new(struct io_worker *io, const struct cmtp_config *cfg,
                                         char *err, size_t errlen);

/* cmtpd_resolve_free cancels every lookup (no callback runs), closes the sockets and frees
 * |r|. NULL is a no-op. */
void cmtpd_resolve_free(struct cmtpd_resolver *r);

/* cmtpd_resolve_tick is called now and then (the delivery engine's tick) with the worker's
 * current configuration: when |cfg|'s DNS settings differ from those in use, the resolver is
 * rebuilt (and its cache emptied) as soon as no query is in flight; a timer that could not be
 * armed earlier (the worker's timer_max was reached) is armed again. NULL |r| is a no-op. */
void cmtpd_resolve_tick(struct cmtpd_resolver *r, const struct cmtp_config *cfg);

/* cmtpd_resolve_start looks up records of |type| for |name| (a host name, lower-case A-labels,
 * at most 253 octets; for SRV the whole owner name, e.g. "_cmtp._tcp.example.net"): from the
 * cache while its TTL lasts, by joining a query in flight for the same name, or with a new
 * query. |fn|(|arg|, answer) follows exactly once unless the request is cancelled. Writes the
 * request's handle to |*out| (may be NULL). Returns 0, -EINVAL for a bad name, or -EAGAIN when
 * the resolver is at one of its bounds (nothing follows then). */
int cmtpd_resolve_start(struct cmtpd_resolver *r, enum cmtpd_resolve_type type, const char *name,
                        cmtpd_resolve_fn fn, void *arg, struct cmtpd_resolve_req **out);

/* cmtpd_resolve_cancel abandons request |q|: its callback will not run. The query itself goes
 * on and its answer is cached. NULL is a no-op. */
void cmtpd_resolve_cancel(struct cmtpd_resolve_req *q);

/* cmtpd_resolve_stats are a resolver's counters since it was created. */
struct cmtpd_resolve_stats {
    uint64_t lookups;  /* cmtpd_resolve_start calls that were taken */
    uint64_t queries;  /* queries sent to c-ares */
    uint64_t hits;     /* lookups answered from the cache */
    uint64_t joined;   /* lookups that joined a query in flight */
    uint64_t tempfail; /* queries that ended CMTPD_RESOLVE_TEMP */
};

/* cmtpd_resolve_get_stats copies |r|'s counters into |out|. */
void cmtpd_resolve_get_stats(const struct cmtpd_resolver *r, struct cmtpd_resolve_stats *out);

/* cmtpd_resolve_type_name returns "SRV", "MX", "A" or "AAAA". */
const char *cmtpd_resolve_type_name(enum cmtpd_resolve_type type);

#endif
