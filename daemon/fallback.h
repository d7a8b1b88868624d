/* daemon/fallback.h — the SMTP fallback of PROTOCOL.md 14 as the delivery engine applies it:
 * what each FALLBACK level asks of the SMTP session, and the fallback record's text. Pure (no
 * I/O, no engine state); not the routing decision to fall back (delivery.c) nor the SMTP
 * session (delivery_smtp.c). */
#ifndef CMTP_DAEMON_FALLBACK_H
#define CMTP_DAEMON_FALLBACK_H

#include <stdbool.h>
#include <stddef.h>

#include "core/envelope.h"
#include "core/smtp_client.h"

/* CMTPD_FALLBACK_PROT_MAX is the size of a protection text: "TLSv1.3/" and an IETF cipher suite
 * name, or "none". */
#define CMTPD_FALLBACK_PROT_MAX 96

/* cmtpd_fallback_policy sets |*tls| (the STARTTLS policy of the SMTP client) and |*verify| (the
 * certificate must verify for the route's reference identity) for FALLBACK level |level|:
 * smtp-verified: require, verified; smtp-tls: require, any certificate; smtp: STARTTLS when
 * offered, any certificate. Returns false (and sets nothing) for none or an unknown level: the
 * message may not leave over SMTP. */
bool cmtpd_fallback_policy(enum cmtp_fallback level, enum cmtp_smtpc_tls *tls, bool *verify);

/* cmtpd_fallback_protection writes the protection a session obtained into |out| (|len|
 * octets, cut to fit): "VERSION/CIPHER" (e.g. "TLSv1.3/TLS_AES_128_GCM_SHA256") when |version|
 * and |cipher| are both set and non-empty, else "none". */
void cmtpd_fallback_protection(char *out, size_t len, const char *version, const char *cipher);

/* cmtpd_fallback_reason writes one recipient's outcome of a fallback attempt into |out| (|len|
 * octets, e.g. QUEUE_REASON_MAX, cut to fit, always NUL-terminated):
 *
 *   fallback LEVEL via HOST PROTECTION VERIFIED: REPLY
 *
 * LEVEL is the level permitted (cmtp_fallback_name), HOST the SMTP host, PROTECTION as
 * cmtpd_fallback_protection wrote it and VERIFIED "verified" or "unverified" (absent after
 * "none"), REPLY the recipient's own outcome (the SMTP reply or the local reason). The facts
 * come first, so a cut only shortens the reply. Status reports carry it as their reason. */
void cmtpd_fallback_reason(char *out, size_t len, enum cmtp_fallback level, const char *host,
                           const char *protection, bool verified, const char *reply);

#endif
