/* daemon/delivery_route.h — where a CMTP job connects: a static address, or the hosts that
 * routing by DNS finds (PROTOCOL.md 16), tried in turn, and the SMTP fallback decision
 * (PROTOCOL.md 14). Shared by delivery.c, delivery_cmtp.c and delivery_route.c only. */
#ifndef CMTP_DAEMON_DELIVERY_ROUTE_H
#define CMTP_DAEMON_DELIVERY_ROUTE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/route.h"
#include "daemon/delivery_internal.h"
#include "daemon/resolve.h"

/* DL_ROUTE_ATTEMPTS_MAX bounds the connections one job opens (every host and address of the
 * CMTP route, then of SMTP fallback, together). */
#define DL_ROUTE_ATTEMPTS_MAX 16u

/* dl_route_phase is where routing of one job stands. */
enum dl_route_phase {
    DL_RP_IDLE = 0, /* nothing asked yet */
    DL_RP_SRV,      /* waiting for SRV _cmtp._tcp.D */
    DL_RP_MX,       /* waiting for MX D (CMTP, or the SMTP fallback hosts) */
    DL_RP_ADDR,     /* waiting for the A and AAAA records of the next host */
    DL_RP_ATTEMPT,  /* a transport attempt is under way */
    DL_RP_DONE,     /* routing decided (the transport's or routing's outcome stands) */
};

/* dl_route_state is the routing of one CMTP job (j->route), made by route_job and freed with
 * the job. */
struct dl_route_state {
    enum dl_route_phase phase;
    bool smtp;                       /* the SMTP fallback phase */
    char qname[CMTP_DOMAIN_MAX + 1]; /* the domain routed by DNS ("" for a static address) */
    uint16_t self_port;              /* the port of |qname| itself (no SRV, no MX) */
    struct cmtp_route_host hosts[CMTP_ROUTE_TARGETS_MAX];
    size_t n_hosts, host_i; /* host_i: the next host to resolve */
    struct cmtp_route_addr addrs[CMTP_ROUTE_ADDRS_MAX];
    size_t n_addrs, addr_i; /* addresses of hosts[host_i - 1]; addr_i: the next to try */
    struct cmtp_route_addr v4[CMTP_ROUTE_ADDRS_MAX], v6[CMTP_ROUTE_ADDRS_MAX];
    size_t n4, n6;
    struct cmtpd_resolve_req *req[2]; /* lookups in flight (SRV or MX in [0]; AAAA, A) */
    unsigned waiting;                 /* of those */
    bool addr_temp;                   /* a lookup of the current host's addresses failed */
    unsigned attempts;
    bool no_cmtp;         /* SRV "." */
    bool all_unreachable; /* every attempt so far ended CMTP_ROUTE_FAIL_UNREACHABLE */
    bool dns_temp;        /* a lookup failed temporarily (no fallback then) */
    bool attempt_live;    /* the transport runs an attempt that cmtpd_delivery_route_retry judges */
    /* Facts of the CMTP attempt, set by delivery_cmtp.c. */
    bool connected;                 /* the TCP connect succeeded */
    bool rx_any;                    /* the peer sent at least one octet */
    bool cls_set;                   /* |cls| was decided by the transport */
    enum cmtp_route_fail cls;       /* how the attempt failed, when |cls_set| */
    char host[CMTP_DOMAIN_MAX + 1]; /* the host of the attempt ("" for a static address) */
    char why[QUEUE_REASON_MAX];     /* the last failure, for when no attempt follows */
};

/* cmtpd_delivery_route_prepare gives CMTP job |j| its routing: to the static address |ep| (an
 * IP address or "localhost"), or, with |ep| NULL, by DNS to |qname| (lower-case A-labels) whose
 * own address is used on |port| when it has neither SRV nor MX records. j->tls_name must be set.
 * Returns 0 or -ENOMEM. */
int cmtpd_delivery_route_prepare(struct dl_job *j, const char *qname, uint16_t port,
                                 const struct cmtp_config_endpoint *ep);

/* cmtpd_delivery_route_start starts |j|'s routing: lookups, then the first attempt. Every
 * outcome is decided through the recipients and cmtpd_delivery_job_finish. */
void cmtpd_delivery_route_start(struct dl_job *j);

/* cmtpd_delivery_route_retry runs once the attempt of |j| is over (finishing, connection
 * closed): when the attempt failed in a way that allows it, the recipients are reopened and
 * the next address, host or SMTP fallback is tried; returns true then (the job goes on).
 * Returns false when the outcome stands and the job is to be completed. */
bool cmtpd_delivery_route_retry(struct dl_job *j);

/* cmtpd_delivery_route_cleanup cancels |j|'s lookups and frees its routing. Idempotent. */
void cmtpd_delivery_route_cleanup(struct dl_job *j);

/* cmtpd_delivery_cmtp_fail_class says how |j|'s CMTP attempt failed (delivery_cmtp.c): at the
 * TCP or TLS-ALPN level, at the handshake otherwise, or later (a CMTP reply or after it). */
enum cmtp_route_fail cmtpd_delivery_cmtp_fail_class(const struct dl_job *j);

#endif
