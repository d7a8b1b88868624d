/* core/route.h — the pure half of routing by DNS (PROTOCOL.md 14, 16): ordering SRV and MX
 * answers into a host list, merging addresses, the TTL of a DNS answer, what a failed attempt
 * leads to. No resolver, no sockets (the daemon's c-ares glue is daemon/resolve.c). */
#ifndef CMTP_CORE_ROUTE_H
#define CMTP_CORE_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/envelope.h"
#include "core/limits.h"

/* Bounds of one route. Answers larger than these are cut (the records kept are those that sort
 * first). */
#define CMTP_ROUTE_TARGETS_MAX 16 /* SRV targets or MX hosts of one destination */
#define CMTP_ROUTE_ADDRS_MAX 8    /* addresses tried per host (A and AAAA together) */

/* CMTP_ROUTE_SMTP_PORT is the default port of SMTP fallback ([delivery] smtp_port). */
#define CMTP_ROUTE_SMTP_PORT 25

/* cmtp_route_srv is one SRV record (RFC 2782) as the resolver returned it. |target| is the
 * target name as received (not yet checked); "" or "." is the root (service not offered). */
struct cmtp_route_srv {
    uint16_t priority;
    uint16_t weight;
    uint16_t port;
    char target[CMTP_DOMAIN_MAX + 2];
};

/* cmtp_route_mx is one MX record. |host| "" or "." is the root (a null MX, RFC 7505). */
struct cmtp_route_mx {
    uint16_t preference;
    char host[CMTP_DOMAIN_MAX + 2];
};

/* cmtp_route_host is one host of a route: a checked host name (lower-case A-labels) and the
 * port to connect to. */
struct cmtp_route_host {
    char name[CMTP_DOMAIN_MAX + 1];
    uint16_t port;
};

/* cmtp_route_addr is one address of a host: |family| 4 or 6, |ip| in network order (4 or 16
 * octets used). */
struct cmtp_route_addr {
    uint8_t family;
    uint8_t ip[16];
};

/* cmtp_route_rand_fn returns a uniformly distributed value in [0, |bound|) (|bound| >= 1). The
 * daemon passes a CSPRNG; tests pass a scripted sequence. */
typedef uint32_t (*cmtp_route_rand_fn)(void *arg, uint32_t bound);

/* cmtp_route_verdict is what one SRV or MX answer says about a destination. */
enum cmtp_route_verdict {
    CMTP_ROUTE_HOSTS = 0,  /* hosts to try, in order */
    CMTP_ROUTE_NO_SERVICE, /* SRV: the single target "." (no CMTP); MX: a null MX (no mail) */
    CMTP_ROUTE_NO_USABLE,  /* records, but not one with a valid host name: a temporary failure */
};

/* cmtp_route_from_srv orders |n| SRV records |srv| (reordered in place) as RFC 2782 says:
 * ascending priority, and within one priority a weighted random order (|rnd|, |arg|; weight 0
 * records first in the draw, as the RFC requires). Records whose target is not a valid host
 * name are dropped; a target "." counts only when it is the sole record (mixed with others it
 * is dropped). Writes at most |cap| hosts (each with the record's port) to |out| and their
 * number to |*n_out|. Returns the verdict. */
enum cmtp_route_verdict cmtp_route_from_srv(struct cmtp_route_host *out, size_t cap, size_t *n_out,
                                            struct cmtp_route_srv *srv, size_t n,
                                            cmtp_route_rand_fn rnd, void *arg);

/* cmtp_route_from_mx orders |n| MX records |mx| (reordered in place) by ascending preference,
 * records of equal preference in random order (|rnd|, |arg|: RFC 5321 5.1). Hosts that are not
 * valid host names are dropped; a null MX (host ".") is CMTP_ROUTE_NO_SERVICE when it is the
 * sole record and dropped otherwise. Writes at most |cap| hosts with port |port| to |out| and
 * their number to |*n_out|. Returns the verdict. */
enum cmtp_route_verdict cmtp_route_from_mx(struct cmtp_route_host *out, size_t cap, size_t *n_out,
                                           struct cmtp_route_mx *mx, size_t n, uint16_t port,
                                           cmtp_route_rand_fn rnd, void *arg);

/* cmtp_route_addrs_merge writes the addresses to try for one host into |out| (at most |cap|):
 * IPv6 and IPv4 alternating, IPv6 first (RFC 8305's order without the racing), each family in
 * the order given, duplicates removed. Returns the number written. */
size_t cmtp_route_addrs_merge(struct cmtp_route_addr *out, size_t cap,
                              const struct cmtp_route_addr *v6, size_t n6,
                              const struct cmtp_route_addr *v4, size_t n4);

/* cmtp_route_dns_ttl reads the DNS message |msg| (|len| octets, a response) and writes to
 * |*ttl| how long its answer may be cached: the smallest TTL of the answer section's records;
 * with no answer records, the negative-caching TTL of RFC 2308 (the smaller of the authority
 * SOA's TTL and its MINIMUM field). Returns 0; -ENOENT when the message has neither; -EINVAL
 * when it is malformed (truncated, a bad name, a count that does not fit). Pure: only reads
 * |msg|. */
int cmtp_route_dns_ttl(const uint8_t *msg, size_t len, uint32_t *ttl);

/* cmtp_route_fail is how one attempt at one address of a CMTP route ended, for what follows
 * (PROTOCOL.md 2.3, 14, 16). */
enum cmtp_route_fail {
    /* refused, timed out or unreachable at the TCP level, a handshake failed with
     * no_application_protocol (or no ALPN), or the peer does not speak TLS: the next host; and
     * when every host ends like this, SMTP fallback may be considered. */
    CMTP_ROUTE_FAIL_UNREACHABLE = 0,
    /* the handshake failed otherwise (a certificate that does not verify, another alert): the
     * next host of the same route may be tried, but SMTP fallback is excluded. */
    CMTP_ROUTE_FAIL_HOST,
    /* a CMTP reply, or a failure after the handshake: the attempt's outcome stands. */
    CMTP_ROUTE_FAIL_FINAL,
};

/* cmtp_route_fallback_ok reports whether a message may leave CMTP for SMTP (PROTOCOL.md 14):
 * only when its originator allows it (|fallback| is not CMTP_FALLBACK_NONE) and no CMTP server
 * is reachable: the destination has no CMTP route (|no_cmtp_route|: SRV "."), or every attempt
 * of the route ended CMTP_ROUTE_FAIL_UNREACHABLE (|all_unreachable|, with at least one attempt
 * made). A temporary DNS error, a certificate failure and any CMTP reply never lead here. */
bool cmtp_route_fallback_ok(enum cmtp_fallback fallback, bool no_cmtp_route, bool all_unreachable);

#endif
