/* daemon/fallback.c — the SMTP fallback levels and the fallback record's text (PROTOCOL.md 14).
 * Pure; the session that applies them is delivery_smtp.c. */
#include <stdio.h>
#include <string.h>

#include "daemon/fallback.h"

bool cmtpd_fallback_policy(enum cmtp_fallback level, enum cmtp_smtpc_tls *tls, bool *verify)
{
    switch (level) {
    case CMTP_FALLBACK_SMTP_VERIFIED:
        *tls = CMTP_SMTPC_TLS_REQUIRE;
        *verify = true;
        return true;
    case CMTP_FALLBACK_SMTP_TLS:
        *tls = CMTP_SMTPC_TLS_REQUIRE;
        *verify = false;
        return true;
    case CMTP_FALLBACK_SMTP:
        *tls = CMTP_SMTPC_TLS_MAY;
        *verify = false;
        return true;
    case CMTP_FALLBACK_NONE:
        break;
    }
    return false;
}

void cmtpd_fallback_protection(char *out, size_t len, const char *version, const char *cipher)
{
    if (len == 0)
        return;
    if (version != NULL && version[0] != '\0' && cipher != NULL && cipher[0] != '\0')
        snprintf(out, len, "%s/%s", version, cipher);
    else
        snprintf(out, len, "none");
}

void cmtpd_fallback_reason(char *out, size_t len, enum cmtp_fallback level, const char *host,
                           const char *protection, bool verified, const char *reply)
{
    const char *name = cmtp_fallback_name(level);
    bool tls = protection != NULL && protection[0] != '\0' && strcmp(protection, "none") != 0;
    if (len == 0)
        return;
    snprintf(out, len, "fallback %s via %s %s%s: %s", name != NULL ? name : "?",
             host != NULL && host[0] != '\0' ? host : "-", tls ? protection : "none",
             !tls       ? ""
             : verified ? " verified"
                        : " unverified",
             reply != NULL ? reply : "");
}
