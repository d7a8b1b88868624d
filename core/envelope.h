/* core/envelope.h — the CMTP/1 envelope and the originator's policy: relay permission, hop
 * limit, SMTP fallback, trace records. Pure data and decisions; not the wire codec. */
#ifndef CMTP_CORE_ENVELOPE_H
#define CMTP_CORE_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/limits.h"

/* cmtp_relay is the originator's relay permission (MAIL parameter RELAY=). */
enum cmtp_relay {
    CMTP_RELAY_NONE = 0, /* only a final destination may receive the body (default) */
    CMTP_RELAY_DOMAIN,   /* a relay whose next hop is within the recipient's domain */
    CMTP_RELAY_ANY,      /* any relay */
};

/* cmtp_fallback is the originator's SMTP fallback permission (MAIL parameter FALLBACK=). */
enum cmtp_fallback {
    CMTP_FALLBACK_NONE = 0,      /* never fall back to SMTP (default) */
    CMTP_FALLBACK_SMTP_VERIFIED, /* STARTTLS with a certificate verified for the domain */
    CMTP_FALLBACK_SMTP_TLS,      /* STARTTLS, any certificate */
    CMTP_FALLBACK_SMTP,          /* plain SMTP allowed */
};

/* cmtp_role is what a server said it is for one recipient. */
enum cmtp_role {
    CMTP_ROLE_FINAL = 0,
    CMTP_ROLE_RELAY,
};

/* cmtp_policy is the originator's policy, carried in MAIL and on by every permitted relay. */
struct cmtp_policy {
    enum cmtp_relay relay;
    enum cmtp_fallback fallback;
    unsigned hops; /* remaining relay hops, 0..CMTP_HOPS_MAX */
};

/* cmtp_policy_init sets |p| to the defaults: RELAY=none, FALLBACK=none, HOPS=CMTP_HOPS_DEFAULT. */
void cmtp_policy_init(struct cmtp_policy *p);

/* cmtp_policy_allows_relay reports whether |p| lets a relay whose next hop is |next_hop|
 * (lower-case A-labels, may be NULL when unknown) carry mail for a recipient in |rcpt_domain|. Also
 * false when |p->hops| is 0. */
bool cmtp_policy_allows_relay(const struct cmtp_policy *p, const char *rcpt_domain,
                              const char *next_hop);

/* cmtp_relay_name, cmtp_fallback_name and cmtp_role_name return the wire keyword. */
const char *cmtp_relay_name(enum cmtp_relay r);
const char *cmtp_fallback_name(enum cmtp_fallback f);
const char *cmtp_role_name(enum cmtp_role r);

/* cmtp_relay_parse, cmtp_fallback_parse and cmtp_role_parse parse a wire keyword of |len|
 * octets (case-insensitive). Return 0, or -EINVAL for an unknown keyword. */
int cmtp_relay_parse(enum cmtp_relay *out, const char *s, size_t len);
int cmtp_fallback_parse(enum cmtp_fallback *out, const char *s, size_t len);
int cmtp_role_parse(enum cmtp_role *out, const char *s, size_t len);

/* CMTP_POLICY_TEXT_MAX is the longest policy text cmtp_policy_parse_text accepts. */
#define CMTP_POLICY_TEXT_MAX 128

/* Bits of cmtp_policy_parse_text's |*set|: the members the text named. */
#define CMTP_POLICY_SET_RELAY 0x1
#define CMTP_POLICY_SET_FALLBACK 0x2
#define CMTP_POLICY_SET_HOPS 0x4

/* cmtp_policy_parse_text parses a policy text (|len| octets at |s|): members
 * `relay:none|domain|any`, `fallback:none|smtp-verified|smtp-tls|smtp` and `hops:0..32` (no
 * leading zero), each at most once, keys and keywords case-insensitive, separated by one comma —
 * or, with |spaces|, by any run of commas and spaces. It is the grammar of the SMTP ingress's
 * CMTP-POLICY parameter and CMTP-Policy header field (docs/SMTP-INGRESS.md 1.3) and of
 * [smtp_ingress] sender_policy. Members not named keep their value in |*p|; |*set| receives the
 * CMTP_POLICY_SET_* bits named. Returns 0, or -EINVAL (nothing changed) for anything malformed
 * or empty. */
int cmtp_policy_parse_text(struct cmtp_policy *p, unsigned *set, const char *s, size_t len,
                           bool spaces);

/* cmtp_trace is one structured trace record (one TRACE line; replaces a Received: header). */
struct cmtp_trace {
    unsigned hop;                      /* 1 for the first receiving server */
    char by[CMTP_DOMAIN_MAX + 1];      /* receiving server's domain */
    char from[CMTP_DOMAIN_MAX + 1];    /* client's verified domain, or "-" */
    int64_t at;                        /* seconds since the epoch, UTC */
    char tls[64];                      /* e.g. "TLSv1.3/TLS_AES_128_GCM_SHA256" */
    char peer_id[CMTP_DOMAIN_MAX + 1]; /* client certificate identity, or "-" */
    enum cmtp_role role;
};

/* cmtp_envelope is one transaction's envelope. Recipients live in a caller-owned array so that
 * the structure itself has a fixed size; |rcpt_cap| bounds |rcpt_count|. */
struct cmtp_envelope {
    struct cmtp_addr from;
    char txid[CMTP_TXID_MAX + 1];
    uint64_t size;                   /* declared body size in octets */
    uint8_t digest[CMTP_DIGEST_LEN]; /* declared SHA-256 of the body */
    struct cmtp_policy policy;
    char report_txid[CMTP_TXID_MAX + 1];     /* REPORT= (status report), or "" */
    struct cmtp_trace trace[CMTP_TRACE_MAX]; /* the first trace_count are in use; the rest may
                                              * hold anything (decoders need not clear them) */
    unsigned trace_count;
};

/* cmtp_txid_valid reports whether |len| octets at |s| form a valid transaction id
 * (CMTP_TXID_MIN..CMTP_TXID_MAX characters of [A-Za-z0-9._-]). */
bool cmtp_txid_valid(const char *s, size_t len);

/* cmtp_trace_format writes |t| as the arguments of a TRACE line (`hop=1 by=... role=final`,
 * no verb, no CRLF) into |out|. Returns the length, or -ENOSPC. */
int cmtp_trace_format(const struct cmtp_trace *t, char *out, size_t out_size);

/* cmtp_trace_parse parses the arguments of a TRACE line (|len| octets at |s|) into |t|.
 * Returns 0 or -EINVAL. */
int cmtp_trace_parse(struct cmtp_trace *t, const char *s, size_t len);

/* cmtp_time_format writes |t| (seconds since the epoch) as RFC 3339 UTC `YYYY-MM-DDTHH:MM:SSZ`
 * into |out| (>= 21 octets). Returns the length, or -ENOSPC. */
int cmtp_time_format(int64_t t, char *out, size_t out_size);

/* cmtp_time_parse parses an RFC 3339 UTC time `YYYY-MM-DDTHH:MM:SSZ` of |len| octets. Returns 0
 * and sets |*t|, or -EINVAL. */
int cmtp_time_parse(int64_t *t, const char *s, size_t len);

#endif
