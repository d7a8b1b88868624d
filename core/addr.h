/* core/addr.h — CMTP/1 addresses: parsing, UTF-8 validation, NFC, IDNA2008, comparison.
 * Pure: no I/O. Not the envelope (core/envelope.h) and not routing. */
#ifndef CMTP_CORE_ADDR_H
#define CMTP_CORE_ADDR_H

#include <stdbool.h>
#include <stddef.h>

#include "core/limits.h"

/* cmtp_addr is a parsed, normalized address. |local| is NFC UTF-8, |domain| lower-case
 * A-labels; both NUL-terminated. A null address (`<>`) has |is_null| set and empty strings.
 * All-zero is a valid null-free empty value; storage is owned by the caller. */
struct cmtp_addr {
    char local[CMTP_LOCAL_MAX + 1];
    char domain[CMTP_DOMAIN_MAX + 1];
    size_t local_len;
    size_t domain_len;
    bool is_null;
};

/* cmtp_addr_err says why an address was refused; each has a stable name (cmtp_addr_strerror). */
enum cmtp_addr_err {
    CMTP_ADDR_OK = 0,
    CMTP_ADDR_ERR_SYNTAX,     /* missing <, >, @, or stray characters */
    CMTP_ADDR_ERR_UTF8,       /* not valid UTF-8 (overlong, surrogate, truncated, > U+10FFFF) */
    CMTP_ADDR_ERR_CHAR,       /* a forbidden character (control, space, specials) */
    CMTP_ADDR_ERR_NFC,        /* local part not in NFC (only with CMTP_ADDR_STRICT_NFC) */
    CMTP_ADDR_ERR_LOCAL_LEN,  /* local part empty or longer than CMTP_LOCAL_MAX */
    CMTP_ADDR_ERR_DOTS,       /* leading, trailing or doubled dot in the local part */
    CMTP_ADDR_ERR_DOMAIN,     /* domain refused by IDNA2008 or by the label rules */
    CMTP_ADDR_ERR_DOMAIN_LEN, /* domain or a label too long, or fewer than two labels */
    CMTP_ADDR_ERR_TOO_LONG,   /* whole address longer than CMTP_ADDR_MAX */
    CMTP_ADDR_ERR_NULL,       /* `<>` where a null address is not allowed */
};

/* Flags for cmtp_addr_parse. */
#define CMTP_ADDR_ALLOW_NULL 0x1 /* accept `<>` */
#define CMTP_ADDR_STRICT_NFC 0x2 /* refuse a non-NFC local part instead of normalizing it */
#define CMTP_ADDR_BARE 0x4       /* input has no angle brackets: `local@domain` */

/* cmtp_addr_parse parses |len| octets at |in| (`<local@domain>`, or `local@domain` with
 * CMTP_ADDR_BARE) into |out|. The local part is normalized to NFC (or refused when not NFC under
 * CMTP_ADDR_STRICT_NFC); the domain is converted to lower-case A-labels with IDNA2008. |in| need
 * not be NUL-terminated and may contain any octets. Returns CMTP_ADDR_OK or the reason; on
 * failure |out| is zeroed. */
enum cmtp_addr_err cmtp_addr_parse(struct cmtp_addr *out, const char *in, size_t len,
                                   unsigned flags);

/* cmtp_addr_domain_normalize converts the domain at |in| (|len| octets, U-labels or A-labels) to
 * lower-case A-labels in |out| (|out_size| >= CMTP_DOMAIN_MAX + 1). Returns CMTP_ADDR_OK or
 * CMTP_ADDR_ERR_DOMAIN / CMTP_ADDR_ERR_DOMAIN_LEN. */
enum cmtp_addr_err cmtp_addr_domain_normalize(char *out, size_t out_size, const char *in,
                                              size_t len);

/* cmtp_addr_format writes `local@domain` (no brackets; empty for the null address) into |out|
 * of |out_size| octets, NUL-terminated. Returns the length written, or -ENOSPC. */
int cmtp_addr_format(const struct cmtp_addr *a, char *out, size_t out_size);

/* cmtp_addr_equal compares two normalized addresses: local parts octet for octet, domains as
 * A-labels. */
bool cmtp_addr_equal(const struct cmtp_addr *a, const struct cmtp_addr *b);

/* cmtp_domain_within reports whether |domain| equals |parent| or is a subdomain of it, both
 * lower-case A-labels (`a.b.test` is within `b.test`; `ab.test` is not). */
bool cmtp_domain_within(const char *domain, const char *parent);

/* cmtp_utf8_valid reports whether |len| octets at |s| are well-formed UTF-8 (no overlong forms,
 * surrogates or code points above U+10FFFF). */
bool cmtp_utf8_valid(const char *s, size_t len);

/* cmtp_addr_strerror returns a stable lower-case keyword for |err| (e.g. "bad-utf8"). */
const char *cmtp_addr_strerror(enum cmtp_addr_err err);

#endif
