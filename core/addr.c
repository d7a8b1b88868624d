/* core/addr.c — CMTP/1 address parsing: UTF-8 validation, NFC (libutf8proc), IDNA2008 domains
 * (libidn2), comparison. Pure: no I/O, no global state. Not the envelope and not routing. */
#include "core/addr.h"

#include <errno.h>
#include <idn2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ADDR_DOMAIN_IN_MAX bounds a raw domain handed to cmtp_addr_domain_normalize, in octets. A
 * U-label form may be longer than its A-label form (up to four octets per character), so this is
 * larger than CMTP_DOMAIN_MAX; anything longer is refused before any library sees it. */
#define ADDR_DOMAIN_IN_MAX 1024

/* utf8_decode decodes one code point at |s| (|len| > 0 octets available). Returns the sequence
 * length (1..4) and sets |*cp|, or 0 when the sequence is malformed: a stray continuation byte,
 * an overlong form, a surrogate, a value above U+10FFFF or a truncated sequence. */
static size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t n;
    uint32_t v;
    uint32_t min;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        v = c & 0x1F;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        v = c & 0x0F;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        v = c & 0x07;
        min = 0x10000;
    } else {
        return 0; /* continuation byte, C0/C1 overlong lead, or F5..FF */
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return n;
}

bool cmtp_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    if (len > 0 && s == NULL)
        return false;
    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t n = utf8_decode(p + i, len - i, &cp);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

/* local_char_ok reports whether code point |cp| may appear in a local part: no C0/C1 control,
 * no DEL, no Unicode White_Space (categories Zs, Zl, Zp and the Cc controls cover exactly
 * White_Space), none of the specials " ( ) , : ; < > @ [ \ ]. */
static bool local_char_ok(uint32_t cp)
{
    if (cp < 0x80) {
        if (cp <= 0x20 || cp == 0x7F)
            return false;
        switch (cp) {
        case '"':
        case '(':
        case ')':
        case ',':
        case ':':
        case ';':
        case '<':
        case '>':
        case '@':
        case '[':
        case '\\':
        case ']':
            return false;
        default:
            return true;
        }
    }
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
        return false;
    default:
        return true;
    }
}

/* local_check checks the characters and dots of the local part at |s| (|len| octets, valid
 * UTF-8). Returns CMTP_ADDR_OK, CMTP_ADDR_ERR_CHAR, CMTP_ADDR_ERR_DOTS or CMTP_ADDR_ERR_UTF8. */
static enum cmtp_addr_err local_check(const char *s, size_t len, bool *ascii)
{
    const unsigned char *p = (const unsigned char *)s;
    bool all_ascii = true;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t n = utf8_decode(p + i, len - i, &cp);
        if (n == 0)
            return CMTP_ADDR_ERR_UTF8;
        if (!local_char_ok(cp))
            return CMTP_ADDR_ERR_CHAR;
        if (cp >= 0x80)
            all_ascii = false;
        i += n;
    }
    if (s[0] == '.' || s[len - 1] == '.')
        return CMTP_ADDR_ERR_DOTS;
    for (size_t i = 1; i < len; i++) {
        if (s[i] == '.' && s[i - 1] == '.')
            return CMTP_ADDR_ERR_DOTS;
    }
    if (ascii != NULL)
        *ascii = all_ascii;
    return CMTP_ADDR_OK;
}

/* local_normalize puts the NFC form of the checked local part |s| (|len| octets) into
 * |out|->local. Returns CMTP_ADDR_OK or the reason it was refused. */
static enum cmtp_addr_err local_normalize(struct cmtp_addr *out, const char *s, size_t len,
                                          unsigned flags)
{
    bool ascii = false;
    enum cmtp_addr_err e = local_check(s, len, &ascii);
    if (e != CMTP_ADDR_OK)
        return e;
    if (ascii) {
        /* ASCII is always in NFC: no library call, no allocation. */
        if (len > CMTP_LOCAL_MAX)
            return CMTP_ADDR_ERR_LOCAL_LEN;
        memcpy(out->local, s, len);
        out->local[len] = '\0';
        out->local_len = len;
        return CMTP_ADDR_OK;
    }
    utf8proc_uint8_t *nfc = NULL;
    /* |len| <= CMTP_ADDR_MAX here, so what utf8proc allocates is bounded (NFC expands at most
     * threefold). No NUL is in |s| (refused above as a control). */
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &nfc,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (n < 0) {
        free(nfc);
        return CMTP_ADDR_ERR_UTF8;
    }
    if ((flags & CMTP_ADDR_STRICT_NFC) && ((size_t)n != len || memcmp(nfc, s, len) != 0)) {
        free(nfc);
        return CMTP_ADDR_ERR_NFC;
    }
    if (n == 0 || (size_t)n > CMTP_LOCAL_MAX) {
        free(nfc);
        return CMTP_ADDR_ERR_LOCAL_LEN;
    }
    /* Normalization can produce a forbidden character (U+037E GREEK QUESTION MARK is
     * canonically U+003B ';'), so the rules are checked again on what is kept. */
    e = local_check((const char *)nfc, (size_t)n, NULL);
    if (e != CMTP_ADDR_OK) {
        free(nfc);
        return e;
    }
    memcpy(out->local, nfc, (size_t)n);
    out->local[n] = '\0';
    out->local_len = (size_t)n;
    free(nfc);
    return CMTP_ADDR_OK;
}

/* ldh_check checks a lower-case ASCII domain |d| (NUL-terminated, |len| octets) against the
 * label rules. |has_alabel| is set when a label starts with "xn--". */
static enum cmtp_addr_err ldh_check(const char *d, size_t len, bool *has_alabel)
{
    size_t labels = 0;
    size_t i = 0;
    bool last_numeric = false;
    *has_alabel = false;
    if (len == 0)
        return CMTP_ADDR_ERR_DOMAIN_LEN;
    while (i <= len) {
        size_t start = i;
        bool numeric = true;
        while (i < len && d[i] != '.') {
            char c = d[i];
            if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
                return CMTP_ADDR_ERR_DOMAIN;
            if (!(c >= '0' && c <= '9'))
                numeric = false;
            i++;
        }
        size_t ll = i - start;
        if (ll == 0)
            return CMTP_ADDR_ERR_DOMAIN; /* leading, trailing or doubled dot */
        if (ll > CMTP_LABEL_MAX)
            return CMTP_ADDR_ERR_DOMAIN_LEN;
        if (d[start] == '-' || d[i - 1] == '-')
            return CMTP_ADDR_ERR_DOMAIN;
        if (ll >= 4 && d[start + 2] == '-' && d[start + 3] == '-') {
            /* "??--" is reserved by IDNA2008 (RFC 5891 4.2.3.1) except for A-labels. */
            if (d[start] != 'x' || d[start + 1] != 'n')
                return CMTP_ADDR_ERR_DOMAIN;
            *has_alabel = true;
        }
        last_numeric = numeric;
        labels++;
        i++; /* skip the dot, or step past the end */
    }
    if (len > CMTP_DOMAIN_MAX)
        return CMTP_ADDR_ERR_DOMAIN_LEN;
    if (labels < 2)
        return CMTP_ADDR_ERR_DOMAIN_LEN;
    if (last_numeric)
        return CMTP_ADDR_ERR_DOMAIN; /* an IPv4 literal, or a numeric top-level label */
    return CMTP_ADDR_OK;
}

/* alabel_roundtrip checks that every A-label in |d| is the canonical encoding of a valid
 * IDNA2008 U-label: decoding and re-encoding (non-transitional) gives |d| back. */
static enum cmtp_addr_err alabel_roundtrip(const char *d)
{
    char *u = NULL;
    char *a = NULL;
    enum cmtp_addr_err e = CMTP_ADDR_ERR_DOMAIN;
    if (idn2_to_unicode_8z8z(d, &u, 0) != IDN2_OK || u == NULL)
        goto err;
    if (idn2_lookup_u8((const uint8_t *)u, (uint8_t **)&a, IDN2_NO_TR46) != IDN2_OK || a == NULL)
        goto err;
    if (strcmp(a, d) == 0)
        e = CMTP_ADDR_OK;
err:
    idn2_free(u);
    idn2_free(a);
    return e;
}

static char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

enum cmtp_addr_err cmtp_addr_domain_normalize(char *out, size_t out_size, const char *in,
                                              size_t len)
{
    char buf[ADDR_DOMAIN_IN_MAX + 1];
    const unsigned char *p = (const unsigned char *)in;
    bool ascii = true;
    size_t n;
    enum cmtp_addr_err e;

    if (out != NULL && out_size > 0)
        out[0] = '\0';
    if (out == NULL || out_size == 0)
        return CMTP_ADDR_ERR_DOMAIN_LEN;
    if (len == 0 || in == NULL)
        return CMTP_ADDR_ERR_DOMAIN_LEN;
    if (len > ADDR_DOMAIN_IN_MAX)
        return CMTP_ADDR_ERR_DOMAIN_LEN;
    /* Our own checks first: well-formed UTF-8, ASCII limited to letters, digits, '-' and '.',
     * no white space or control anywhere (UTS #46 would map some of those away silently). */
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = utf8_decode(p + i, len - i, &cp);
        if (k == 0)
            return CMTP_ADDR_ERR_DOMAIN;
        if (cp < 0x80) {
            char c = (char)cp;
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.'))
                return CMTP_ADDR_ERR_DOMAIN;
        } else {
            ascii = false;
            if (!local_char_ok(cp))
                return CMTP_ADDR_ERR_DOMAIN;
        }
        i += k;
    }
    if (ascii) {
        for (size_t i = 0; i < len; i++)
            buf[i] = ascii_lower(in[i]);
        buf[len] = '\0';
        n = len;
    } else {
        char *a = NULL;
        /* Pure IDNA2008 (docs/PROTOCOL.md 12.3): lower-case ASCII only, then the U-labels must
         * be valid once in NFC (as local parts are normalized). No UTS #46 mapping: it would
         * silently drop or fold characters (a soft hyphen vanishes, full-width letters fold), which
         * invites confusion. */
        for (size_t i = 0; i < len; i++)
            buf[i] = ascii_lower(in[i]);
        buf[len] = '\0';
        int r = idn2_lookup_u8((const uint8_t *)buf, (uint8_t **)&a, IDN2_NO_TR46 | IDN2_NFC_INPUT);
        if (r != IDN2_OK || a == NULL) {
            idn2_free(a);
            return (r == IDN2_TOO_BIG_DOMAIN || r == IDN2_TOO_BIG_LABEL) ? CMTP_ADDR_ERR_DOMAIN_LEN
                                                                         : CMTP_ADDR_ERR_DOMAIN;
        }
        n = strlen(a);
        if (n > ADDR_DOMAIN_IN_MAX) {
            idn2_free(a);
            return CMTP_ADDR_ERR_DOMAIN_LEN;
        }
        for (size_t i = 0; i < n; i++)
            buf[i] = ascii_lower(a[i]);
        buf[n] = '\0';
        idn2_free(a);
    }
    bool has_alabel;
    e = ldh_check(buf, n, &has_alabel);
    if (e != CMTP_ADDR_OK)
        return e;
    if (has_alabel) {
        e = alabel_roundtrip(buf);
        if (e != CMTP_ADDR_OK)
            return e;
    }
    if (n + 1 > out_size)
        return CMTP_ADDR_ERR_DOMAIN_LEN;
    memcpy(out, buf, n + 1);
    return CMTP_ADDR_OK;
}

enum cmtp_addr_err cmtp_addr_parse(struct cmtp_addr *out, const char *in, size_t len,
                                   unsigned flags)
{
    enum cmtp_addr_err e;
    const char *s = in;
    size_t n = len;

    memset(out, 0, sizeof(*out));
    /* Bounds first: nothing longer than the largest possible address is looked at further. */
    if (len > CMTP_ADDR_MAX + 2)
        return CMTP_ADDR_ERR_TOO_LONG;
    if (len > 0 && in == NULL)
        return CMTP_ADDR_ERR_SYNTAX;
    if (!(flags & CMTP_ADDR_BARE)) {
        if (len < 2 || in[0] != '<' || in[len - 1] != '>')
            return CMTP_ADDR_ERR_SYNTAX;
        s = in + 1;
        n = len - 2;
    }
    if (n == 0) {
        if (!(flags & CMTP_ADDR_ALLOW_NULL))
            return CMTP_ADDR_ERR_NULL;
        out->is_null = true;
        return CMTP_ADDR_OK;
    }
    if (n > CMTP_ADDR_MAX) {
        e = CMTP_ADDR_ERR_TOO_LONG;
        goto err;
    }
    if (!cmtp_utf8_valid(s, n)) {
        e = CMTP_ADDR_ERR_UTF8;
        goto err;
    }
    /* The local part cannot contain '@', so the last '@' separates it from the domain; an '@'
     * left in the local part is then refused as a forbidden character. */
    const char *at = NULL;
    for (size_t i = n; i > 0; i--) {
        if (s[i - 1] == '@') {
            at = s + i - 1;
            break;
        }
    }
    if (at == NULL) {
        e = CMTP_ADDR_ERR_SYNTAX;
        goto err;
    }
    size_t llen = (size_t)(at - s);
    size_t dlen = n - llen - 1;
    if (llen == 0) {
        e = CMTP_ADDR_ERR_LOCAL_LEN;
        goto err;
    }
    e = local_normalize(out, s, llen, flags);
    if (e != CMTP_ADDR_OK)
        goto err;
    e = cmtp_addr_domain_normalize(out->domain, sizeof(out->domain), at + 1, dlen);
    if (e != CMTP_ADDR_OK)
        goto err;
    out->domain_len = strlen(out->domain);
    /* The normalized form must itself be a valid address: A-labels are longer than U-labels. */
    if (out->local_len + 1 + out->domain_len > CMTP_ADDR_MAX) {
        e = CMTP_ADDR_ERR_TOO_LONG;
        goto err;
    }
    return CMTP_ADDR_OK;
err:
    memset(out, 0, sizeof(*out));
    return e;
}

int cmtp_addr_format(const struct cmtp_addr *a, char *out, size_t out_size)
{
    if (out == NULL || out_size == 0)
        return -ENOSPC;
    if (a->is_null) {
        out[0] = '\0';
        return 0;
    }
    size_t need = a->local_len + 1 + a->domain_len;
    if (need + 1 > out_size) {
        out[0] = '\0';
        return -ENOSPC;
    }
    memcpy(out, a->local, a->local_len);
    out[a->local_len] = '@';
    memcpy(out + a->local_len + 1, a->domain, a->domain_len);
    out[need] = '\0';
    return (int)need;
}

bool cmtp_addr_equal(const struct cmtp_addr *a, const struct cmtp_addr *b)
{
    if (a->is_null || b->is_null)
        return a->is_null == b->is_null;
    return a->local_len == b->local_len && a->domain_len == b->domain_len &&
           memcmp(a->local, b->local, a->local_len) == 0 &&
           memcmp(a->domain, b->domain, a->domain_len) == 0;
}

bool cmtp_domain_within(const char *domain, const char *parent)
{
    if (domain == NULL || parent == NULL)
        return false;
    size_t dl = strlen(domain);
    size_t pl = strlen(parent);
    if (pl == 0 || dl < pl)
        return false;
    if (parent[0] == '.' || parent[pl - 1] == '.')
        return false;
    if (memcmp(domain + dl - pl, parent, pl) != 0)
        return false;
    if (dl == pl)
        return true;
    /* A subdomain: the part before |parent| is a non-empty label sequence ending in a dot. */
    return dl > pl + 1 && domain[dl - pl - 1] == '.';
}

const char *cmtp_addr_strerror(enum cmtp_addr_err err)
{
    switch (err) {
    case CMTP_ADDR_OK:
        return "ok";
    case CMTP_ADDR_ERR_SYNTAX:
        return "bad-syntax";
    case CMTP_ADDR_ERR_UTF8:
        return "bad-utf8";
    case CMTP_ADDR_ERR_CHAR:
        return "bad-char";
    case CMTP_ADDR_ERR_NFC:
        return "not-nfc";
    case CMTP_ADDR_ERR_LOCAL_LEN:
        return "bad-local-length";
    case CMTP_ADDR_ERR_DOTS:
        return "bad-dots";
    case CMTP_ADDR_ERR_DOMAIN:
        return "bad-domain";
    case CMTP_ADDR_ERR_DOMAIN_LEN:
        return "bad-domain-length";
    case CMTP_ADDR_ERR_TOO_LONG:
        return "too-long";
    case CMTP_ADDR_ERR_NULL:
        return "null-not-allowed";
    }
    return "unknown";
}
