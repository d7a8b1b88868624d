/* core/smtp_server.c — the ESMTP ingress session: commands, DATA with dot-unstuffing and
 * zero-copy body events, BDAT, STARTTLS reset, limits. Pure: no sockets, TLS, storage or clock. */
#include "core/smtp_server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/proto.h"

/* REPLY_RESERVE bounds one reply of this server (the EHLO reply, the longest, is < 400 octets).
 * A command is read only when twice this is free, so that its reply and a final 421 fit. */
#define REPLY_RESERVE 512

/* RCPT_KEEP is the recipient array capacity kept between transactions. */
#define RCPT_KEEP 16

/* EV_CONTINUE is the internal "no event, read on" result. */
#define EV_CONTINUE (-1)

/* PARAMS_MAX bounds the ESMTP parameters of one MAIL or RCPT. */
#define PARAMS_MAX 16

enum mode {
    M_CMD = 0, /* command lines */
    M_DATA,    /* after 354: the dot-unstuffing decoder */
    M_BDAT,    /* a BDAT chunk's octets */
};

enum wait_for {
    WAIT_NONE = 0,
    WAIT_MAIL,
    WAIT_RCPT,
    WAIT_END,
    WAIT_TLS,
};

/* States of the DATA decoder. */
enum dstate {
    D_BOL = 0, /* at the start of a line (after CRLF, or the first octet) */
    D_TEXT,    /* inside a line */
    D_CR,      /* after a CR that was passed on */
    D_DOT,     /* after a leading dot (held back) */
    D_DOTCR,   /* after a leading dot and CR (both held back) */
};

/* What the reply to a BDAT chunk will be, decided when the BDAT line is read. */
enum bdat_verdict {
    B_OK = 0,
    B_NO_MAIL,  /* 503, counted unless behind a refused MAIL */
    B_NO_RCPT,  /* 554 no valid recipients (503 counted when no RCPT was sent at all) */
    B_SEQUENCE, /* 503 BDAT after DATA: counted */
    B_TOO_BIG,  /* 552 */
};

struct cmtp_smtps {
    char host[CMTP_DOMAIN_MAX + 1];
    uint64_t size_max;
    uint32_t rcpt_max, txn_max, errors_max;
    bool tls_available, tls_required, bare_lf_reject;
    bool tls_active;

    char helo[CMTP_SMTPS_HELO_MAX + 1];
    bool have_helo;

    /* command line reader */
    char line[CMTP_SMTPS_LINE_MAX];
    size_t len;
    bool cr;       /* a CR is held back (not yet known to end the line) */
    bool skipping; /* the line is too long: skip to its LF */

    uint8_t out[CMTP_SMTPS_OUT_MAX];
    size_t out_head, out_tail;

    enum mode mode;
    enum dstate ds;
    uint64_t bdat_left, bdat_size;
    bool bdat_last;
    enum bdat_verdict bdat;
    bool bdat_count; /* the B_NO_MAIL / B_NO_RCPT reply counts as an error */

    enum wait_for wait;
    bool txn;          /* MAIL accepted, not ended */
    bool body_started; /* DATA or a BDAT seen in this transaction */
    bool too_big;      /* the body passed size_max: discarded, refused at its end */
    bool lf_bad;       /* a bare LF under bare_lf_reject: discarded, refused at its end */
    bool mail_refused; /* the last MAIL was refused: pipelined 503s do not count */
    struct cmtp_smtps_txn t;
    struct cmtp_addr rcpt; /* the RCPT being asked about */
    struct cmtp_addr *rcpts;
    uint32_t rcpt_count, rcpt_cap, rcpt_cmds;

    uint32_t txn_count, errors;
    bool started, closing, shutdown;
    unsigned close_code;
};

static const uint8_t cr_octet[1] = {'\r'};

/* ---- output ---- */

static size_t out_free(const struct cmtp_smtps *s)
{
    return CMTP_SMTPS_OUT_MAX - (s->out_tail - s->out_head);
}

/* put appends reply text; every piece is this module's own text or validated ASCII (the host,
 * a queue id, a number), never peer data. */
static void put(struct cmtp_smtps *s, const char *text)
{
    size_t n = strlen(text);
    if (CMTP_SMTPS_OUT_MAX - s->out_tail < n && s->out_head > 0) {
        memmove(s->out, s->out + s->out_head, s->out_tail - s->out_head);
        s->out_tail -= s->out_head;
        s->out_head = 0;
    }
    if (n > CMTP_SMTPS_OUT_MAX - s->out_tail)
        n = CMTP_SMTPS_OUT_MAX - s->out_tail; /* cannot happen: reads stop at REPLY_RESERVE */
    memcpy(s->out + s->out_tail, text, n);
    s->out_tail += n;
}

/* reply appends one reply line `text` CRLF. */
static void reply(struct cmtp_smtps *s, const char *text)
{
    put(s, text);
    put(s, "\r\n");
}

/* reply_host appends `prefix host suffix` CRLF. */
static void reply_host(struct cmtp_smtps *s, const char *prefix, const char *suffix)
{
    put(s, prefix);
    put(s, s->host);
    put(s, suffix);
    put(s, "\r\n");
}

size_t cmtp_smtps_output(const struct cmtp_smtps *s, const uint8_t **p)
{
    *p = s->out + s->out_head;
    return s->out_tail - s->out_head;
}

void cmtp_smtps_output_consume(struct cmtp_smtps *s, size_t n)
{
    if (n > s->out_tail - s->out_head)
        n = s->out_tail - s->out_head;
    s->out_head += n;
    if (s->out_head == s->out_tail)
        s->out_head = s->out_tail = 0;
}

static void u64_str(char *buf, uint64_t v)
{
    char tmp[24];
    size_t t = 0, n = 0;
    do {
        tmp[t++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (t > 0)
        buf[n++] = tmp[--t];
    buf[n] = '\0';
}

/* ---- life cycle ---- */

struct cmtp_smtps *cmtp_smtps_new(const struct cmtp_smtps_config *cfg)
{
    struct cmtp_smtps *s = NULL;
    if (cfg == NULL || cfg->host == NULL || cfg->size_max > CMTP_SIZE_MAX_HARD ||
        cfg->rcpt_max > CMTP_RCPT_MAX_HARD)
        goto err;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto err;
    if (cmtp_addr_domain_normalize(s->host, sizeof(s->host), cfg->host, strlen(cfg->host)) !=
        CMTP_ADDR_OK)
        goto err;
    s->size_max = cfg->size_max ? cfg->size_max : CMTP_SIZE_MAX_DEFAULT;
    s->rcpt_max = cfg->rcpt_max ? cfg->rcpt_max : CMTP_RCPT_MAX_DEFAULT;
    s->txn_max = cfg->txn_max ? cfg->txn_max : CMTP_TXN_MAX_DEFAULT;
    s->errors_max = cfg->errors_max ? cfg->errors_max : CMTP_ERRORS_MAX;
    s->tls_available = cfg->tls_available;
    s->tls_required = cfg->tls_required;
    s->tls_active = cfg->tls_active;
    s->bare_lf_reject = cfg->bare_lf_reject;
    cmtp_policy_init(&s->t.policy);
    return s;
err:
    free(s);
    return NULL;
}

void cmtp_smtps_free(struct cmtp_smtps *s)
{
    if (s == NULL)
        return;
    free(s->rcpts);
    s->rcpts = NULL;
    free(s);
}

void cmtp_smtps_start(struct cmtp_smtps *s)
{
    if (s->started)
        return;
    s->started = true;
    reply_host(s, "220 ", " ESMTP CMTP ingress");
}

/* close_with queues the last reply (|text|, or |text| host |suffix| when |suffix| is not NULL;
 * nothing when |text| is NULL) and closes the session. */
static enum cmtp_smtps_ev close_with(struct cmtp_smtps *s, struct cmtp_smtps_event *ev,
                                     unsigned code, const char *text, const char *suffix)
{
    if (!s->closing) {
        if (text != NULL && suffix != NULL)
            reply_host(s, text, suffix);
        else if (text != NULL)
            reply(s, text);
        s->closing = true;
        s->close_code = code;
        s->wait = WAIT_NONE;
    }
    if (ev != NULL)
        ev->code = s->close_code;
    return CMTP_SMTPS_CLOSE;
}

enum cmtp_smtps_ev cmtp_smtps_refuse(struct cmtp_smtps *s)
{
    s->started = true;
    return close_with(s, NULL, 554, "554 5.7.1 ", " Access denied");
}

/* ---- transactions ---- */

static void end_txn(struct cmtp_smtps *s)
{
    s->txn = false;
    s->body_started = s->too_big = s->lf_bad = false;
    memset(&s->t, 0, sizeof(s->t));
    cmtp_policy_init(&s->t.policy);
    s->rcpt_count = s->rcpt_cmds = 0;
    if (s->rcpt_cap > RCPT_KEEP) {
        free(s->rcpts);
        s->rcpts = NULL;
        s->rcpt_cap = 0;
    }
}

/* reset_event ends the transaction and reports it as abandoned with reply |code|. */
static int reset_event(struct cmtp_smtps *s, struct cmtp_smtps_event *ev, unsigned code)
{
    end_txn(s);
    ev->code = code;
    return CMTP_SMTPS_RESET;
}

/* fail answers a refused command with |text|; |counts| makes it a protocol error. The error
 * that reaches errors_max is answered with 421 instead, and the session closes. */
static int fail(struct cmtp_smtps *s, struct cmtp_smtps_event *ev, const char *text, bool counts)
{
    if (counts && ++s->errors >= s->errors_max)
        return close_with(s, ev, 421, "421 4.7.0 ", " Error: too many errors");
    reply(s, text);
    return EV_CONTINUE;
}

/* ---- parameters and addresses ---- */

/* keyword_eq compares |n| octets at |s| with |kw| case-insensitively. */
static bool keyword_eq(const char *s, size_t n, const char *kw)
{
    return strlen(kw) == n && strncasecmp(s, kw, n) == 0;
}

int cmtp_smtps_policy_parse(struct cmtp_policy *p, unsigned *set, const char *s, size_t len)
{
    return cmtp_policy_parse_text(p, set, s, len, false);
}

/* path_split finds the reverse/forward path at the start of |a| (|n| octets, after "FROM:" or
 * "TO:" and any SPs): `<...>` with no `>` inside. Sets |*plen| to its length and returns 0, or
 * -EINVAL. */
static int path_split(const char *a, size_t n, size_t *plen)
{
    if (n < 2 || a[0] != '<')
        return -EINVAL;
    const char *gt = memchr(a, '>', n);
    if (gt == NULL)
        return -EINVAL;
    *plen = (size_t)(gt - a) + 1;
    return 0;
}

/* path_parse parses the path |p| (|n| octets, `<...>`) into |out|: an RFC 5321 source route
 * (`<@a,@b:user@c>`) is dropped, `<postmaster>` (any case) becomes postmaster@host. Non-ASCII
 * needs |utf8|. Returns 0, -EINVAL (bad syntax) or -EILSEQ (non-ASCII without SMTPUTF8). */
static int path_parse(const struct cmtp_smtps *s, struct cmtp_addr *out, const char *p, size_t n,
                      unsigned flags, bool utf8)
{
    char buf[CMTP_SMTPS_LINE_MAX];
    size_t k = 0;
    if (n >= 3 && p[1] == '@') {
        const char *colon = memchr(p, ':', n);
        if (colon == NULL)
            return -EINVAL;
        size_t skip = (size_t)(colon - p);
        buf[k++] = '<';
        memcpy(buf + k, colon + 1, n - skip - 1);
        k += n - skip - 1;
    } else {
        memcpy(buf, p, n);
        k = n;
    }
    for (size_t i = 0; i < k; i++) {
        if ((unsigned char)buf[i] >= 0x80 && !utf8)
            return -EILSEQ;
    }
    if (k == 12 && strncasecmp(buf, "<postmaster>", 12) == 0) {
        memset(out, 0, sizeof(*out));
        memcpy(out->local, "postmaster", 10);
        out->local_len = 10;
        out->domain_len = strlen(s->host);
        memcpy(out->domain, s->host, out->domain_len + 1);
        return 0;
    }
    return cmtp_addr_parse(out, buf, k, flags) == CMTP_ADDR_OK ? 0 : -EINVAL;
}

/* param_next splits the next `key[=value]` of the SP-separated parameter list at |*pos|. */
static bool param_next(const char *a, size_t n, size_t *pos, const char **key, size_t *kn,
                       const char **val, size_t *vn)
{
    size_t i = *pos;
    while (i < n && a[i] == ' ')
        i++;
    if (i >= n)
        return false;
    size_t j = i;
    while (j < n && a[j] != ' ')
        j++;
    const char *eq = memchr(a + i, '=', j - i);
    *key = a + i;
    if (eq != NULL) {
        *kn = (size_t)(eq - (a + i));
        *val = eq + 1;
        *vn = j - i - *kn - 1;
    } else {
        *kn = j - i;
        *val = NULL;
        *vn = 0;
    }
    *pos = j;
    return true;
}

/* ---- commands ---- */

/* dec_sat parses 1..20 decimal digits (RFC 1870 size-value; leading zeros allowed) into |*out|,
 * saturating at UINT64_MAX. Returns false for anything else. */
static bool dec_sat(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > CMTP_NUM_DIGITS_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
    }
    *out = v;
    return true;
}

static bool seen_key(const char **keys, size_t *kns, size_t nk, const char *k, size_t kn)
{
    for (size_t i = 0; i < nk; i++) {
        if (kns[i] == kn && strncasecmp(keys[i], k, kn) == 0)
            return true;
    }
    return false;
}

static int cmd_mail(struct cmtp_smtps *s, const char *a, size_t n, struct cmtp_smtps_event *ev)
{
    const char *keys[PARAMS_MAX];
    size_t kns[PARAMS_MAX], nk = 0, plen, pos;
    struct cmtp_smtps_txn t;
    if (!s->have_helo)
        return fail(s, ev, "503 5.5.1 Error: send HELO/EHLO first", true);
    if (s->txn)
        return fail(s, ev, "503 5.5.1 Error: nested MAIL command", true);
    s->mail_refused = true; /* until the caller accepts it */
    if (s->tls_required && !s->tls_active)
        return fail(s, ev, "530 5.7.0 Must issue a STARTTLS command first", false);
    if (s->txn_count >= s->txn_max)
        return close_with(s, ev, 421, "421 4.7.0 ", " Error: too many messages");
    if (n < 5 || strncasecmp(a, "FROM:", 5) != 0)
        return fail(s, ev, "501 5.5.4 Syntax: MAIL FROM:<address>", true);
    a += 5;
    n -= 5;
    while (n > 0 && a[0] == ' ') {
        a++;
        n--;
    }
    if (path_split(a, n, &plen) != 0 || (plen < n && a[plen] != ' '))
        return fail(s, ev, "501 5.1.7 Bad sender address syntax", true);
    memset(&t, 0, sizeof(t));
    cmtp_policy_init(&t.policy);
    pos = plen;
    const char *k, *v;
    size_t kn, vn;
    while (param_next(a, n, &pos, &k, &kn, &v, &vn)) {
        if (nk == PARAMS_MAX || seen_key(keys, kns, nk, k, kn))
            return fail(s, ev, "501 5.5.4 Error: bad parameters", true);
        keys[nk] = k;
        kns[nk++] = kn;
        if (keyword_eq(k, kn, "SIZE")) {
            if (v == NULL || !dec_sat(v, vn, &t.size))
                return fail(s, ev, "501 5.5.4 Error: bad SIZE", true);
        } else if (keyword_eq(k, kn, "BODY")) {
            if (v != NULL && keyword_eq(v, vn, "7BIT"))
                t.body = CMTP_SMTPS_BODY_7BIT;
            else if (v != NULL && keyword_eq(v, vn, "8BITMIME"))
                t.body = CMTP_SMTPS_BODY_8BITMIME;
            else if (v != NULL && keyword_eq(v, vn, "BINARYMIME"))
                return fail(s, ev, "555 5.5.4 Error: BINARYMIME is not supported", true);
            else
                return fail(s, ev, "501 5.5.4 Error: bad BODY", true);
        } else if (keyword_eq(k, kn, "SMTPUTF8")) {
            if (v != NULL)
                return fail(s, ev, "501 5.5.4 Error: SMTPUTF8 takes no value", true);
            t.smtputf8 = true;
        } else if (keyword_eq(k, kn, "CMTP-POLICY")) {
            if (v == NULL || cmtp_smtps_policy_parse(&t.policy, &t.policy_set, v, vn) != 0)
                return fail(s, ev, "501 5.5.4 Error: bad CMTP-POLICY", true);
        } else {
            return fail(s, ev, "555 5.5.4 Error: unsupported parameter", true);
        }
    }
    int r = path_parse(s, &t.from, a, plen, CMTP_ADDR_ALLOW_NULL, t.smtputf8);
    if (r == -EILSEQ)
        return fail(s, ev, "553 5.6.7 Error: SMTPUTF8 is required for this address", true);
    if (r != 0)
        return fail(s, ev, "501 5.1.7 Bad sender address syntax", true);
    if (t.size > s->size_max)
        return fail(s, ev, "552 5.3.4 Error: message size exceeds fixed limit", false);
    s->t = t;
    s->wait = WAIT_MAIL;
    ev->txn = &s->t;
    return CMTP_SMTPS_MAIL;
}

int cmtp_smtps_mail_reply(struct cmtp_smtps *s, enum cmtp_smtps_mail_answer a)
{
    if (s->wait != WAIT_MAIL)
        return -EINVAL;
    s->wait = WAIT_NONE;
    switch (a) {
    case CMTP_SMTPS_MAIL_OK:
        reply(s, "250 2.1.0 Ok");
        s->txn = true;
        s->mail_refused = false;
        s->txn_count++;
        s->rcpt_count = s->rcpt_cmds = 0;
        s->body_started = s->too_big = s->lf_bad = false;
        return 0;
    case CMTP_SMTPS_MAIL_TEMPFAIL:
        reply(s, "451 4.3.0 Error: try again later");
        break;
    case CMTP_SMTPS_MAIL_TOO_BIG:
        reply(s, "552 5.3.4 Error: message size exceeds limit");
        break;
    default:
        reply(s, "550 5.7.1 Error: sender rejected");
        break;
    }
    end_txn(s);
    return 0;
}

static int cmd_rcpt(struct cmtp_smtps *s, const char *a, size_t n, struct cmtp_smtps_event *ev)
{
    size_t plen;
    if (!s->txn)
        return fail(s, ev, "503 5.5.1 Error: need MAIL command", !s->mail_refused);
    if (s->body_started)
        return fail(s, ev, "503 5.5.1 Error: RCPT after BDAT", true);
    if (n < 3 || strncasecmp(a, "TO:", 3) != 0)
        return fail(s, ev, "501 5.5.4 Syntax: RCPT TO:<address>", true);
    a += 3;
    n -= 3;
    while (n > 0 && a[0] == ' ') {
        a++;
        n--;
    }
    if (path_split(a, n, &plen) != 0 || (plen < n && a[plen] != ' '))
        return fail(s, ev, "501 5.1.3 Bad recipient address syntax", true);
    size_t pos = plen;
    const char *k, *v;
    size_t kn, vn;
    if (param_next(a, n, &pos, &k, &kn, &v, &vn))
        return fail(s, ev, "555 5.5.4 Error: unsupported parameter", true);
    if (s->rcpt_count >= s->rcpt_max)
        return fail(s, ev, "452 4.5.3 Error: too many recipients", false);
    int r = path_parse(s, &s->rcpt, a, plen, 0, s->t.smtputf8);
    if (r == -EILSEQ)
        return fail(s, ev, "553 5.6.7 Error: SMTPUTF8 is required for this address", true);
    if (r != 0)
        return fail(s, ev, "501 5.1.3 Bad recipient address syntax", true);
    s->rcpt_cmds++;
    s->wait = WAIT_RCPT;
    ev->txn = &s->t;
    ev->rcpt = &s->rcpt;
    ev->rcpt_index = s->rcpt_cmds;
    return CMTP_SMTPS_RCPT;
}

int cmtp_smtps_rcpt_reply(struct cmtp_smtps *s, enum cmtp_smtps_rcpt_answer a)
{
    if (s->wait != WAIT_RCPT)
        return -EINVAL;
    s->wait = WAIT_NONE;
    switch (a) {
    case CMTP_SMTPS_RCPT_OK:
        if (s->rcpt_count == s->rcpt_cap) {
            uint32_t cap = s->rcpt_cap ? s->rcpt_cap * 2 : 4;
            if (cap > s->rcpt_max)
                cap = s->rcpt_max;
            struct cmtp_addr *p = realloc(s->rcpts, cap * sizeof(*p));
            if (p == NULL) {
                reply(s, "451 4.3.0 Error: out of memory");
                return -ENOMEM;
            }
            s->rcpts = p;
            s->rcpt_cap = cap;
        }
        s->rcpts[s->rcpt_count++] = s->rcpt;
        reply(s, "250 2.1.5 Ok");
        return 0;
    case CMTP_SMTPS_RCPT_NO_MAILBOX:
        reply(s, "550 5.1.1 Error: no such mailbox");
        return 0;
    case CMTP_SMTPS_RCPT_RELAY_DENIED:
        reply(s, "554 5.7.1 Error: relay access denied");
        return 0;
    default:
        reply(s, "451 4.3.0 Error: try again later");
        return 0;
    }
}

/* no_rcpt answers DATA or BDAT in a transaction without accepted recipients: 554 after refused
 * RCPTs (pipelining clients send DATA regardless: not an error), 503 when none was sent. */
static int no_rcpt(struct cmtp_smtps *s, struct cmtp_smtps_event *ev)
{
    if (s->rcpt_cmds > 0)
        return fail(s, ev, "554 5.5.1 Error: no valid recipients", false);
    return fail(s, ev, "503 5.5.1 Error: need RCPT command", true);
}

static int cmd_data(struct cmtp_smtps *s, size_t n, struct cmtp_smtps_event *ev)
{
    if (n > 0)
        return fail(s, ev, "501 5.5.4 Syntax: DATA", true);
    if (!s->txn)
        return fail(s, ev, "503 5.5.1 Error: need MAIL command", !s->mail_refused);
    if (s->body_started)
        return fail(s, ev, "503 5.5.1 Error: DATA after BDAT", true);
    if (s->rcpt_count == 0)
        return no_rcpt(s, ev);
    reply(s, "354 End data with <CR><LF>.<CR><LF>");
    s->mode = M_DATA;
    s->ds = D_BOL;
    s->body_started = true;
    return EV_CONTINUE;
}

static int cmd_bdat(struct cmtp_smtps *s, const char *a, size_t n, struct cmtp_smtps_event *ev)
{
    size_t i = 0;
    uint64_t size = 0;
    while (i < n && a[i] != ' ')
        i++;
    bool last = i < n && keyword_eq(a + i + 1, n - i - 1, "LAST");
    if (!dec_sat(a, i, &size) || (i < n && !last))
        return close_with(s, ev, 501, "501 5.5.4 Syntax: BDAT size [LAST]", NULL);
    s->mode = M_BDAT;
    s->bdat_left = size;
    s->bdat_size = size;
    s->bdat_last = last;
    s->bdat_count = false;
    if (!s->txn) {
        s->bdat = B_NO_MAIL;
        s->bdat_count = !s->mail_refused;
    } else if (s->body_started && !s->t.chunking) {
        s->bdat = B_SEQUENCE;
    } else if (s->rcpt_count == 0) {
        s->bdat = B_NO_RCPT;
        s->bdat_count = s->rcpt_cmds == 0;
    } else if (s->too_big || size > s->size_max - s->t.body_size) {
        s->bdat = B_TOO_BIG;
        s->too_big = true;
    } else {
        s->bdat = B_OK;
        s->body_started = true;
        s->t.chunking = true;
    }
    return EV_CONTINUE;
}

/* bdat_end answers a BDAT chunk once its octets were read. */
static int bdat_end(struct cmtp_smtps *s, struct cmtp_smtps_event *ev)
{
    char num[24];
    s->mode = M_CMD;
    switch (s->bdat) {
    case B_OK:
        if (s->bdat_last) {
            s->wait = WAIT_END;
            ev->txn = &s->t;
            ev->rcpts = s->rcpts;
            ev->rcpt_count = s->rcpt_count;
            return CMTP_SMTPS_END;
        }
        u64_str(num, s->bdat_size);
        put(s, "250 2.0.0 Ok: ");
        put(s, num);
        reply(s, " octets received");
        return EV_CONTINUE;
    case B_NO_MAIL:
        return fail(s, ev, "503 5.5.1 Error: need MAIL command", s->bdat_count);
    case B_SEQUENCE:
        return fail(s, ev, "503 5.5.1 Error: BDAT after DATA", true);
    case B_NO_RCPT:
        return s->bdat_count ? fail(s, ev, "503 5.5.1 Error: need RCPT command", true)
                             : fail(s, ev, "554 5.5.1 Error: no valid recipients", false);
    default:
        reply(s, "552 5.3.4 Error: message size exceeds fixed limit");
        if (s->bdat_last)
            return reset_event(s, ev, 552);
        return EV_CONTINUE;
    }
}

static bool qid_valid(const char *q)
{
    size_t n = q != NULL ? strlen(q) : 0;
    if (n == 0 || n > CMTP_QID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = q[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

int cmtp_smtps_end_reply(struct cmtp_smtps *s, const struct cmtp_smtps_end_answer *a)
{
    if (s->wait != WAIT_END || a == NULL)
        return -EINVAL;
    if (a->result == CMTP_SMTPS_END_ACCEPTED && !qid_valid(a->qid))
        return -EINVAL;
    s->wait = WAIT_NONE;
    switch (a->result) {
    case CMTP_SMTPS_END_ACCEPTED:
        put(s, "250 2.0.0 Ok: queued as ");
        reply(s, a->qid);
        break;
    case CMTP_SMTPS_END_TEMPFAIL:
        reply(s, "451 4.3.0 Error: queue write failed, try again later");
        break;
    default:
        reply(s, "554 5.6.0 Error: message rejected");
        break;
    }
    end_txn(s);
    return 0;
}

static int cmd_hello(struct cmtp_smtps *s, bool ehlo, const char *a, size_t n,
                     struct cmtp_smtps_event *ev)
{
    if (n == 0 || n > CMTP_SMTPS_HELO_MAX || memchr(a, ' ', n) != NULL)
        return fail(s, ev,
                    ehlo ? "501 5.5.4 Syntax: EHLO hostname" : "501 5.5.4 Syntax: HELO hostname",
                    true);
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)a[i] >= 0x7f)
            return fail(s, ev, "501 5.5.4 Error: invalid hostname", true);
    }
    memcpy(s->helo, a, n);
    s->helo[n] = '\0';
    s->have_helo = true;
    if (ehlo) {
        char num[24];
        reply_host(s, "250-", "");
        reply(s, "250-PIPELINING");
        u64_str(num, s->size_max);
        put(s, "250-SIZE ");
        reply(s, num);
        reply(s, "250-8BITMIME");
        reply(s, "250-SMTPUTF8");
        reply(s, "250-CHUNKING");
        reply(s, "250-ENHANCEDSTATUSCODES");
        if (s->tls_available && !s->tls_active)
            reply(s, "250-STARTTLS");
        reply(s, "250 CMTP-POLICY");
    } else {
        reply_host(s, "250 ", "");
    }
    s->mail_refused = false;
    if (s->txn)
        return reset_event(s, ev, 250);
    end_txn(s);
    return EV_CONTINUE;
}

static int cmd_starttls(struct cmtp_smtps *s, size_t n, bool more, struct cmtp_smtps_event *ev)
{
    if (n > 0)
        return fail(s, ev, "501 5.5.4 Syntax: STARTTLS", true);
    if (!s->tls_available)
        return fail(s, ev, "502 5.5.1 Error: command not implemented", true);
    if (s->tls_active)
        return fail(s, ev, "503 5.5.1 Error: TLS already active", true);
    if (s->txn)
        return fail(s, ev, "503 5.5.1 Error: STARTTLS inside a transaction", true);
    if (more)
        return close_with(s, ev, 554, "554 5.5.1 Error: data after STARTTLS", NULL);
    reply(s, "220 2.0.0 Ready to start TLS");
    s->wait = WAIT_TLS;
    return CMTP_SMTPS_STARTTLS;
}

int cmtp_smtps_tls_reset(struct cmtp_smtps *s)
{
    if (s->wait != WAIT_TLS)
        return -EINVAL;
    s->wait = WAIT_NONE;
    s->tls_active = true;
    s->have_helo = false;
    s->helo[0] = '\0';
    s->len = 0;
    s->cr = s->skipping = false;
    s->mail_refused = false;
    end_txn(s);
    return 0;
}

/* command executes one complete command line (|more|: octets follow it in this input). */
static int command(struct cmtp_smtps *s, const char *line, size_t len, bool more,
                   struct cmtp_smtps_event *ev)
{
    size_t v = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)line[i];
        if (b < 0x20 || b == 0x7f)
            return fail(s, ev, "501 5.5.2 Error: invalid characters in command", true);
    }
    while (v < len && line[v] != ' ')
        v++;
    const char *a = line + v;
    size_t n = len - v;
    while (n > 0 && a[0] == ' ') {
        a++;
        n--;
    }
    while (n > 0 && a[n - 1] == ' ')
        n--;
#define VERB(name) keyword_eq(line, v, name)
    if (VERB("EHLO"))
        return cmd_hello(s, true, a, n, ev);
    if (VERB("HELO"))
        return cmd_hello(s, false, a, n, ev);
    if (VERB("MAIL"))
        return cmd_mail(s, a, n, ev);
    if (VERB("RCPT"))
        return cmd_rcpt(s, a, n, ev);
    if (VERB("DATA"))
        return cmd_data(s, n, ev);
    if (VERB("BDAT"))
        return cmd_bdat(s, a, n, ev);
    if (VERB("RSET")) {
        if (n > 0)
            return fail(s, ev, "501 5.5.4 Syntax: RSET", true);
        reply(s, "250 2.0.0 Ok");
        s->mail_refused = false;
        if (s->txn)
            return reset_event(s, ev, 250);
        return EV_CONTINUE;
    }
    if (VERB("NOOP")) {
        reply(s, "250 2.0.0 Ok");
        return EV_CONTINUE;
    }
    if (VERB("QUIT")) {
        if (n > 0)
            return fail(s, ev, "501 5.5.4 Syntax: QUIT", true);
        return close_with(s, ev, 221, "221 2.0.0 Bye", NULL);
    }
    if (VERB("VRFY")) {
        if (n == 0)
            return fail(s, ev, "501 5.5.4 Syntax: VRFY address", true);
        reply(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
        return EV_CONTINUE;
    }
    if (VERB("HELP")) {
        reply(s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP "
                 "STARTTLS");
        return EV_CONTINUE;
    }
    if (VERB("STARTTLS"))
        return cmd_starttls(s, n, more, ev);
    if (VERB("EXPN") || VERB("TURN") || VERB("ETRN") || VERB("ATRN") || VERB("AUTH"))
        return fail(s, ev, "502 5.5.1 Error: command not implemented", true);
#undef VERB
    return fail(s, ev, "500 5.5.2 Error: command not recognized", true);
}

/* ---- body ---- */

/* emit reports |n| body octets at |p|, unless the body is being discarded. */
static int emit(struct cmtp_smtps *s, struct cmtp_smtps_event *ev, const uint8_t *p, size_t n)
{
    if (s->too_big || s->lf_bad)
        return EV_CONTINUE;
    if (n > s->size_max - s->t.body_size) {
        /* Pass on exactly up to the limit (the same octets however the input was split), then
         * nothing more; the message is refused at its end. */
        s->too_big = true;
        n = (size_t)(s->size_max - s->t.body_size);
        if (n == 0)
            return EV_CONTINUE;
    }
    ev->txn = &s->t;
    ev->data = p;
    ev->len = n;
    ev->offset = s->t.body_size;
    s->t.body_size += n;
    return CMTP_SMTPS_BODY;
}

/* data_end handles CRLF "." CRLF. */
static int data_end(struct cmtp_smtps *s, struct cmtp_smtps_event *ev)
{
    s->mode = M_CMD;
    if (s->too_big) {
        reply(s, "552 5.3.4 Error: message size exceeds fixed limit");
        return reset_event(s, ev, 552);
    }
    if (s->lf_bad) {
        reply(s, "554 5.6.0 Error: bare <LF> received in message body");
        return reset_event(s, ev, 554);
    }
    s->wait = WAIT_END;
    ev->txn = &s->t;
    ev->rcpts = s->rcpts;
    ev->rcpt_count = s->rcpt_count;
    return CMTP_SMTPS_END;
}

/* data_step runs the DATA decoder over |in| from |*off| until one event or the end of the
 * input. Octets passed on unchanged are reported as one run pointing into |in|; a dropped
 * leading dot ends a run. Returns an event, or EV_CONTINUE when all input was used. */
static int data_step(struct cmtp_smtps *s, const uint8_t *in, size_t len, size_t *off,
                     struct cmtp_smtps_event *ev)
{
    const uint8_t *p = in + *off, *end = in + len;
    const uint8_t *run = p;
    size_t rl = 0;
    while (p < end) {
        switch (s->ds) {
        case D_TEXT: {
            const uint8_t *q = p;
            while (q < end && *q != '\r' && *q != '\n')
                q++;
            rl += (size_t)(q - p);
            p = q;
            if (p == end)
                break;
            if (*p == '\r') {
                s->ds = D_CR;
            } else {
                /* Under bare_lf_reject the octets before the first bare LF are reported
                 * first, so that what is passed on before the body turns to discarded does
                 * not depend on where the input was split; the LF is looked at again. */
                if (s->bare_lf_reject && !s->lf_bad && rl > 0)
                    goto out;
                s->t.bare_lf++;
                if (s->bare_lf_reject)
                    s->lf_bad = true;
            }
            rl++;
            p++;
            break;
        }
        case D_CR:
            if (*p == '\n') {
                rl++;
                p++;
                s->ds = D_BOL;
            } else {
                s->ds = D_TEXT;
            }
            break;
        case D_BOL:
            if (*p == '.') {
                if (rl > 0)
                    goto out; /* report the run first; the dot is looked at again */
                s->ds = D_DOT;
                p++;
                run = p;
            } else {
                s->ds = D_TEXT;
            }
            break;
        case D_DOT:
            if (*p == '\r') {
                s->ds = D_DOTCR;
                p++;
                run = p;
            } else {
                s->ds = D_TEXT; /* the dot was stuffing: dropped */
            }
            break;
        case D_DOTCR:
            if (*p == '\n') {
                *off = (size_t)(p + 1 - in);
                return data_end(s, ev);
            }
            /* "." CR then not LF: the dot is dropped, the held CR is body. */
            s->ds = D_CR;
            *off = (size_t)(p - in);
            return emit(s, ev, cr_octet, 1);
        }
    }
out:
    *off = (size_t)(p - in);
    if (rl > 0)
        return emit(s, ev, run, rl);
    return EV_CONTINUE;
}

/* bdat_step passes on BDAT chunk octets. */
static int bdat_step(struct cmtp_smtps *s, const uint8_t *in, size_t len, size_t *off,
                     struct cmtp_smtps_event *ev)
{
    if (s->bdat_left > 0) {
        size_t n = len - *off;
        if (n == 0)
            return EV_CONTINUE;
        if (n > s->bdat_left)
            n = (size_t)s->bdat_left;
        const uint8_t *p = in + *off;
        *off += n;
        s->bdat_left -= n;
        if (s->bdat == B_OK) {
            int e = emit(s, ev, p, n);
            if (e != EV_CONTINUE)
                return e;
        }
        if (s->bdat_left > 0)
            return EV_CONTINUE;
    }
    return bdat_end(s, ev);
}

/* ---- input ---- */

static bool at_boundary(const struct cmtp_smtps *s)
{
    return s->mode == M_CMD && s->len == 0 && !s->cr && !s->skipping && s->wait == WAIT_NONE;
}

/* line_add stores one command octet, or starts skipping an over-long line. */
static void line_add(struct cmtp_smtps *s, uint8_t b)
{
    if (s->skipping)
        return;
    if (s->len >= CMTP_SMTPS_LINE_MAX - 2) {
        s->skipping = true;
        return;
    }
    s->line[s->len++] = (char)b;
}

enum cmtp_smtps_ev cmtp_smtps_feed(struct cmtp_smtps *s, const uint8_t *in, size_t len,
                                   size_t *consumed, struct cmtp_smtps_event *ev)
{
    size_t off = 0;
    if (in == NULL)
        len = 0;
    memset(ev, 0, sizeof(*ev));
    *consumed = 0;
    if (!s->started)
        cmtp_smtps_start(s);
    if (s->closing)
        return close_with(s, ev, 0, NULL, NULL);
    if (s->wait != WAIT_NONE)
        return CMTP_SMTPS_BLOCKED;
    for (;;) {
        int e;
        if (s->mode == M_DATA) {
            e = data_step(s, in, len, &off, ev);
            *consumed = off;
            if (e != EV_CONTINUE)
                return (enum cmtp_smtps_ev)e;
            if (off == len)
                break;
            continue;
        }
        if (s->mode == M_BDAT) {
            if (out_free(s) < 2 * REPLY_RESERVE) {
                *consumed = off;
                return CMTP_SMTPS_FLUSH;
            }
            e = bdat_step(s, in, len, &off, ev);
            *consumed = off;
            if (e != EV_CONTINUE)
                return (enum cmtp_smtps_ev)e;
            if (s->mode == M_BDAT)
                break; /* all input used inside the chunk */
            continue;
        }
        if (s->shutdown && at_boundary(s)) {
            *consumed = off;
            return close_with(s, ev, 421, "421 4.3.2 ", " Service shutting down");
        }
        if (out_free(s) < 2 * REPLY_RESERVE) {
            *consumed = off;
            return CMTP_SMTPS_FLUSH;
        }
        /* Collect one command line. */
        bool complete = false, bare_lf = false;
        while (off < len) {
            uint8_t b = in[off++];
            if (b == '\n') {
                bare_lf = !s->cr;
                complete = true;
                break;
            }
            if (s->cr)
                line_add(s, '\r'); /* a CR inside the line: content (refused below) */
            s->cr = b == '\r';
            if (!s->cr)
                line_add(s, b);
        }
        *consumed = off;
        if (!complete)
            break;
        size_t n = s->len;
        bool too_long = s->skipping;
        s->len = 0;
        s->cr = s->skipping = false;
        if (s->shutdown)
            return close_with(s, ev, 421, "421 4.3.2 ", " Service shutting down");
        if (too_long)
            e = fail(s, ev, "500 5.5.2 Error: line too long", true);
        else if (bare_lf)
            e = fail(s, ev, "500 5.5.2 Error: bare <LF> received", true);
        else
            e = command(s, s->line, n, off < len, ev);
        if (e != EV_CONTINUE)
            return (enum cmtp_smtps_ev)e;
    }
    *consumed = off;
    return CMTP_SMTPS_NEED_INPUT;
}

enum cmtp_smtps_ev cmtp_smtps_shutdown(struct cmtp_smtps *s)
{
    if (s->closing)
        return CMTP_SMTPS_CLOSE;
    s->shutdown = true;
    if (at_boundary(s))
        return close_with(s, NULL, 421, "421 4.3.2 ", " Service shutting down");
    return CMTP_SMTPS_NEED_INPUT;
}

enum cmtp_smtps_ev cmtp_smtps_timeout(struct cmtp_smtps *s)
{
    return close_with(s, NULL, 421, "421 4.4.2 ", " Error: timeout exceeded");
}

enum cmtp_smtps_state cmtp_smtps_state(const struct cmtp_smtps *s)
{
    if (s->closing)
        return CMTP_SMTPS_STATE_CLOSED;
    if (s->wait != WAIT_NONE)
        return CMTP_SMTPS_STATE_WAIT;
    if (s->mode != M_CMD || (s->txn && s->t.chunking))
        return CMTP_SMTPS_STATE_DATA;
    if (s->len > 0 || s->cr || s->skipping)
        return CMTP_SMTPS_STATE_COMMAND;
    return CMTP_SMTPS_STATE_IDLE;
}

bool cmtp_smtps_in_transaction(const struct cmtp_smtps *s)
{
    return s->txn && !s->closing;
}

const char *cmtp_smtps_helo(const struct cmtp_smtps *s)
{
    return s->helo;
}

bool cmtp_smtps_tls_active(const struct cmtp_smtps *s)
{
    return s->tls_active;
}
