/* core/dsn.h — what the appliance writes for legacy mail and originators: RFC 3464 delivery status
 * notifications, the CMTP status report body (PROTOCOL.md 15.2) and the CMTP-Trace header field
 * (PROTOCOL.md 13.4), into caller buffers. Pure: no I/O, no clock; not the decision to report. */
#ifndef CMTP_CORE_DSN_H
#define CMTP_CORE_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/envelope.h"
#include "core/limits.h"

/* CMTP_DSN_HEADERS_MAX is the most octets of the original message's header section copied into a
 * DSN (cut at a line boundary; a longer section is truncated). */
#define CMTP_DSN_HEADERS_MAX 16384

/* CMTP_DSN_TEXT_MAX is the longest diagnostic text kept per recipient, in octets. */
#define CMTP_DSN_TEXT_MAX CMTP_TEXT_MAX

/* cmtp_dsn_action is a recipient's RFC 3464 Action. */
enum cmtp_dsn_action {
    CMTP_DSN_FAILED = 0, /* Status 5.x.x */
    CMTP_DSN_DELAYED,    /* Status 4.x.x */
    CMTP_DSN_DELIVERED,  /* Status 2.x.x */
    CMTP_DSN_RELAYED,    /* Status 2.x.x */
    CMTP_DSN_EXPANDED,   /* Status 2.x.x */
};

/* cmtp_dsn_rcpt is one recipient of a DSN. Strings are NUL-terminated and owned by the caller. */
struct cmtp_dsn_rcpt {
    const struct cmtp_addr *rcpt; /* Final-Recipient (not the null address) */
    enum cmtp_dsn_action action;
    const char *status;     /* `class.subject.detail` (RFC 3463), class matching the action */
    const char *remote_mta; /* Remote-MTA host name (printable ASCII), or NULL */
    const char *diagnostic; /* Diagnostic-Code text, e.g. "550 5.1.1 no such mailbox" (sanitized
                               here: controls and invalid UTF-8 become "?", non-ASCII too unless
                               the DSN is global), or NULL */
    int64_t last_attempt;   /* Last-Attempt-Date, seconds since the epoch; 0: omitted */
    int64_t retry_until;    /* Will-Retry-Until (delayed only); 0: omitted */
};

/* cmtp_dsn describes one DSN message. Strings are NUL-terminated and owned by the caller. */
struct cmtp_dsn {
    const char *reporting_mta;  /* this server's host name: Reporting-MTA, From: MAILER-DAEMON@ */
    const struct cmtp_addr *to; /* the originator the DSN goes to (not the null address) */
    const char *message_id;     /* the DSN's Message-ID without brackets (printable ASCII, no SP,
                                   no "<" ">", one "@") */
    int64_t date;               /* Date: of the DSN, seconds since the epoch */
    int64_t arrival_date;       /* Arrival-Date of the original; 0: omitted */
    const struct cmtp_dsn_rcpt *rcpts;
    size_t nrcpt;            /* >= 1 */
    const uint8_t *original; /* the original message (only its header section is used), or NULL */
    size_t original_len;
};

/* cmtp_dsn_build writes the DSN |d| as a complete RFC 5322 message with CRLF line endings into
 * |out| (|out_size| octets, NUL-terminated): a multipart/report; report-type=delivery-status with
 * a human-readable text/plain part, the message/delivery-status part (Reporting-MTA,
 * Arrival-Date, then per recipient Final-Recipient, Action, Status, Remote-MTA,
 * Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until) and the original header section
 * (text/rfc822-headers, at most CMTP_DSN_HEADERS_MAX octets, line endings canonicalized, controls
 * and invalid UTF-8 replaced by "?"). When an address is not ASCII (or the original headers carry
 * UTF-8) the RFC 6533 forms are used: message/global-delivery-status with `utf-8;` address types
 * and message/global-headers; the message then needs SMTPUTF8 (and 8BITMIME) to be sent.
 * No input can add a header line or a MIME boundary: the boundary is checked against everything
 * copied. Returns the length (NUL excluded), -EINVAL for an invalid |d|, or -ENOSPC. */
int cmtp_dsn_build(char *out, size_t out_size, const struct cmtp_dsn *d);

/* cmtp_report_status is the `status` member of a CMTP status report. */
enum cmtp_report_status {
    CMTP_REPORT_DELIVERED = 0,
    CMTP_REPORT_FAILED,
    CMTP_REPORT_EXPIRED,
    CMTP_REPORT_RELAY_REFUSED,
};

/* cmtp_dsn_report_json writes the application/cmtp-report+json body of PROTOCOL.md 15.2 into
 * |out| (NUL-terminated): exactly the members txn, rcpt, status, reason, at, in that order,
 * compact, no trailing newline. |txn| must be a valid transaction id; |rcpt| is written
 * local@domain (A-labels); |reason| (NULL: empty) is escaped, with controls as \u00XX and
 * invalid UTF-8 octets replaced by "?", and cut at CMTP_TEXT_MAX octets on a character boundary.
 * Returns the length, -EINVAL for invalid arguments, or -ENOSPC. */
int cmtp_dsn_report_json(char *out, size_t out_size, const char *txn, const struct cmtp_addr *rcpt,
                         enum cmtp_report_status status, const char *reason, int64_t at);

/* cmtp_report_status_name returns the wire keyword of |s| ("relay-refused", ...). */
const char *cmtp_report_status_name(enum cmtp_report_status s);

/* cmtp_dsn_trace_field writes the one `CMTP-Trace:` header field of PROTOCOL.md 13.4 for the |n|
 * records at |t| (1..CMTP_TRACE_MAX, hop order) into |out| (NUL-terminated): the base64url (no
 * padding) of the compact JSON array, in 64-character segments, the first on the field line and
 * each further one on a continuation line starting with SP; every line ends with CRLF, or LF
 * when |lf| (a store that keeps LF). Returns the length, -EINVAL, or -ENOSPC. */
int cmtp_dsn_trace_field(char *out, size_t out_size, const struct cmtp_trace *t, size_t n, bool lf);

#endif
