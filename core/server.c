/* core/server.c — the CMTP/1 server session: commands in, replies and events out, the
 * originator's relay policy applied per recipient. Pure: no sockets, storage, hashing or clock. */
#include "core/server.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/proto.h"

/* REPLY_RESERVE bounds one reply line of this server (the greeting, the longest, is < 400
 * octets). A command is read only when twice this is free, so that its reply and a final
 * `421`/`605` always fit. */
#define REPLY_RESERVE 512

/* RCPT_KEEP is the recipient array capacity kept between transactions; larger ones are freed. */
#define RCPT_KEEP 16

/* EV_CONTINUE is the internal "no event, read on" result of a command handler. */
#define EV_CONTINUE (-1)

enum txn_state {
    TXN_NONE = 0, /* no transaction */
    TXN_ENVELOPE, /* MAIL accepted: TRACE (before any RCPT), RCPT, DROP */
    TXN_BODY,     /* first BODY seen: BODY, END */
};

enum wait_for {
    WAIT_NONE = 0,
    WAIT_MAIL,
    WAIT_RCPT,
    WAIT_END,
};

struct cmtp_server {
    char host[CMTP_DOMAIN_MAX + 1];
    uint64_t size_max;
    uint32_t rcpt_max, chunk_max, txn_max, errors_max;

    struct cmtp_reader rd;
    uint8_t out[CMTP_SRV_OUT_MAX];
    size_t out_head, out_tail;

    enum txn_state txn;
    enum wait_for wait;
    bool rcpt_seen;   /* TRACE is refused once a RCPT was seen */
    bool mail_failed; /* the last MAIL was refused: its pipelined TRACE/RCPT/DROP are not
                         counted as errors */
    bool discard;     /* the current chunk is discarded (no recipient) */
    bool started, closing, shutdown;

    /* env is allocated at the first MAIL and kept for the session: an idle connection holds
     * none of its ~27 KiB (the trace records). */
    struct cmtp_envelope *env;
    struct cmtp_srv_rcpt *rcpts; /* entry i is RCPT index i + 1 */
    uint32_t rcpt_count, rcpt_cap;
    uint64_t rcpt_cmds; /* RCPT commands in this transaction (indices handed out) */
    uint32_t rcpt_ok;   /* entries FINAL or RELAY */
    uint64_t body_total;

    uint32_t txn_count, errors;
    unsigned close_code;
    const char *close_status;
};

/* ---- output ---- */

static size_t out_free(const struct cmtp_server *s)
{
    return CMTP_SRV_OUT_MAX - (s->out_tail - s->out_head);
}

/* reply appends one reply line. Every argument is produced or validated by this module, so a
 * formatting failure is a programmer error. */
static void reply(struct cmtp_server *s, unsigned code, const char *status,
                  const struct cmtp_param *params, size_t nparams)
{
    if (s->out_head > 0 && CMTP_SRV_OUT_MAX - s->out_tail < REPLY_RESERVE) {
        memmove(s->out, s->out + s->out_head, s->out_tail - s->out_head);
        s->out_tail -= s->out_head;
        s->out_head = 0;
    }
    int n = cmtp_reply_format((char *)s->out + s->out_tail, CMTP_SRV_OUT_MAX - s->out_tail, code,
                              status, params, nparams, NULL);
    assert(n > 0);
    if (n > 0)
        s->out_tail += (size_t)n;
    if (CMTP_REPLY_CLASS(code) == 2)
        s->errors = 0;
}

size_t cmtp_server_output(const struct cmtp_server *s, const uint8_t **p)
{
    *p = s->out + s->out_head;
    return s->out_tail - s->out_head;
}

void cmtp_server_output_consume(struct cmtp_server *s, size_t n)
{
    assert(n <= s->out_tail - s->out_head);
    if (n > s->out_tail - s->out_head)
        n = s->out_tail - s->out_head;
    s->out_head += n;
    if (s->out_head == s->out_tail)
        s->out_head = s->out_tail = 0;
}

/* ---- life cycle ---- */

struct cmtp_server *cmtp_server_new(const struct cmtp_server_config *cfg)
{
    struct cmtp_server *s = NULL;
    if (cfg == NULL || cfg->host == NULL)
        goto err;
    if (cfg->size_max > CMTP_SIZE_MAX_HARD || cfg->rcpt_max > CMTP_RCPT_MAX_HARD ||
        cfg->chunk_max > CMTP_CHUNK_MAX_HARD)
        goto err;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto err;
    if (cmtp_addr_domain_normalize(s->host, sizeof(s->host), cfg->host, strlen(cfg->host)) !=
        CMTP_ADDR_OK)
        goto err;
    s->size_max = cfg->size_max ? cfg->size_max : CMTP_SIZE_MAX_DEFAULT;
    s->rcpt_max = cfg->rcpt_max ? cfg->rcpt_max : CMTP_RCPT_MAX_DEFAULT;
    s->chunk_max = cfg->chunk_max ? cfg->chunk_max : CMTP_CHUNK_MAX_DEFAULT;
    s->txn_max = cfg->txn_max ? cfg->txn_max : CMTP_TXN_MAX_DEFAULT;
    s->errors_max = cfg->errors_max ? cfg->errors_max : CMTP_ERRORS_MAX;
    cmtp_reader_init(&s->rd);
    cmtp_reader_set_line_max(&s->rd, cfg->line_max ? cfg->line_max : CMTP_LINE_MAX);
    s->close_status = "";
    return s;
err:
    free(s);
    return NULL;
}

void cmtp_server_free(struct cmtp_server *s)
{
    if (s == NULL)
        return;
    free(s->rcpts);
    s->rcpts = NULL;
    free(s->env);
    s->env = NULL;
    free(s);
}

/* u64_str writes |v| in decimal into |buf| (>= 21 octets) and returns it. */
static const char *u64_str(char *buf, uint64_t v)
{
    char tmp[21];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    buf[n] = '\0';
    return buf;
}

void cmtp_server_start(struct cmtp_server *s)
{
    char size[21], rcpt[21], chunk[21], line[21], txn[21];
    const struct cmtp_param p[] = {
        {"proto", CMTP_ALPN},
        {"host", s->host},
        {"size-max", u64_str(size, s->size_max)},
        {"rcpt-max", u64_str(rcpt, s->rcpt_max)},
        {"chunk-max", u64_str(chunk, s->chunk_max)},
        {"line-max", u64_str(line, s->rd.line_max)},
        {"txn-max", u64_str(txn, s->txn_max)},
    };
    assert(!s->started);
    if (s->started)
        return;
    s->started = true;
    reply(s, 220, "ready", p, sizeof(p) / sizeof(p[0]));
}

/* ---- transaction bookkeeping ---- */

static void end_txn(struct cmtp_server *s)
{
    s->txn = TXN_NONE;
    s->rcpt_seen = false;
    s->discard = false;
    s->rcpt_count = 0;
    s->rcpt_cmds = 0;
    s->rcpt_ok = 0;
    s->body_total = 0;
    if (s->rcpt_cap > RCPT_KEEP) {
        free(s->rcpts);
        s->rcpts = NULL;
        s->rcpt_cap = 0;
    }
}

/* rcpt_push appends a zeroed entry, growing the array geometrically up to rcpt_max. Returns
 * the entry or NULL on allocation failure. */
static struct cmtp_srv_rcpt *rcpt_push(struct cmtp_server *s)
{
    if (s->rcpt_count == s->rcpt_cap) {
        uint32_t cap = s->rcpt_cap ? s->rcpt_cap * 2 : 4;
        if (cap > s->rcpt_max)
            cap = s->rcpt_max;
        struct cmtp_srv_rcpt *n = realloc(s->rcpts, (size_t)cap * sizeof(*n));
        if (n == NULL)
            return NULL;
        s->rcpts = n;
        s->rcpt_cap = cap;
    }
    struct cmtp_srv_rcpt *r = &s->rcpts[s->rcpt_count++];
    memset(r, 0, sizeof(*r));
    r->status = CMTP_SRV_RCPT_REFUSED;
    return r;
}

/* ---- closing and errors ---- */

static void set_event_reply(struct cmtp_srv_event *ev, unsigned code, const char *status)
{
    ev->code = code;
    ev->status = status;
}

static enum cmtp_srv_ev close_with(struct cmtp_server *s, struct cmtp_srv_event *ev, unsigned code,
                                   const char *status)
{
    if (!s->closing) {
        reply(s, code, status, NULL, 0);
        s->closing = true;
        s->close_code = code;
        s->close_status = status;
        s->wait = WAIT_NONE;
    }
    if (ev != NULL)
        set_event_reply(ev, s->close_code, s->close_status);
    return CMTP_SRV_CLOSE;
}

/* fail answers a failed command. |counted| failures in a row reaching errors-max turn into
 * `604 too-many-errors` and close. Returns EV_CONTINUE or CMTP_SRV_CLOSE. */
static int fail(struct cmtp_server *s, struct cmtp_srv_event *ev, unsigned code, const char *status,
                bool counted)
{
    if (counted && ++s->errors >= s->errors_max)
        return close_with(s, ev, 604, "too-many-errors");
    reply(s, code, status, NULL, 0);
    return EV_CONTINUE;
}

/* ---- commands ---- */

static int cmd_mail(struct cmtp_server *s, const struct cmtp_cmd *cmd, enum cmtp_perr pe,
                    struct cmtp_srv_event *ev)
{
    if (s->txn != TXN_NONE)
        return fail(s, ev, 503, "bad-sequence", true);
    if (pe != CMTP_PERR_OK) {
        s->mail_failed = true;
        return fail(s, ev, 501, "bad-syntax", true);
    }
    if (s->txn_count >= s->txn_max)
        return close_with(s, ev, 452, "too-many-txn");
    if (s->env == NULL && (s->env = malloc(sizeof(*s->env))) == NULL) {
        s->mail_failed = true;
        return fail(s, ev, 451, "try-later", false);
    }
    switch (cmtp_mail_parse(s->env, cmd->args, cmd->args_len)) {
    case CMTP_PERR_OK:
        break;
    case CMTP_PERR_ADDRESS:
        s->mail_failed = true;
        return fail(s, ev, 501, "bad-address", true);
    default:
        s->mail_failed = true;
        return fail(s, ev, 501, "bad-syntax", true);
    }
    if (s->env->size > s->size_max) {
        s->mail_failed = true; /* refused before any body octet (RELIABILITY case 13) */
        return fail(s, ev, 552, "too-big", false);
    }
    s->wait = WAIT_MAIL;
    ev->env = s->env;
    return CMTP_SRV_MAIL;
}

int cmtp_server_mail_reply(struct cmtp_server *s, enum cmtp_srv_mail_answer a)
{
    if (s->wait != WAIT_MAIL)
        return -EINVAL;
    switch (a) {
    case CMTP_SRV_MAIL_OK: {
        const struct cmtp_param p[] = {{"txn", s->env->txid}};
        end_txn(s);
        s->txn = TXN_ENVELOPE;
        s->txn_count++;
        reply(s, 250, "ok", p, 1);
        break;
    }
    case CMTP_SRV_MAIL_TEMPFAIL:
        s->mail_failed = true;
        reply(s, 451, "try-later", NULL, 0);
        break;
    case CMTP_SRV_MAIL_TOO_BIG:
        s->mail_failed = true;
        reply(s, 552, "too-big", NULL, 0);
        break;
    case CMTP_SRV_MAIL_REFUSED:
        s->mail_failed = true;
        reply(s, 501, "bad-address", NULL, 0);
        break;
    default:
        return -EINVAL;
    }
    s->wait = WAIT_NONE;
    return 0;
}

/* bad_seq answers `503 bad-sequence` to a command sent in the wrong phase. */
static int bad_seq(struct cmtp_server *s, struct cmtp_srv_event *ev, bool after_failed_mail)
{
    if (after_failed_mail) {
        s->mail_failed = true; /* the rest of the refused MAIL's pipeline is not counted */
        return fail(s, ev, 503, "bad-sequence", false);
    }
    return fail(s, ev, 503, "bad-sequence", true);
}

static int cmd_trace(struct cmtp_server *s, const struct cmtp_cmd *cmd, enum cmtp_perr pe,
                     struct cmtp_srv_event *ev, bool after_failed_mail)
{
    if (s->txn != TXN_ENVELOPE || s->rcpt_seen)
        return bad_seq(s, ev, after_failed_mail);
    if (pe != CMTP_PERR_OK)
        return fail(s, ev, 501, "bad-syntax", true);
    if (s->env->trace_count >= CMTP_TRACE_MAX)
        return fail(s, ev, 552, "too-many-hops", false);
    if (cmtp_trace_parse(&s->env->trace[s->env->trace_count], cmd->args, cmd->args_len) != 0)
        return fail(s, ev, 501, "bad-syntax", true);
    s->env->trace_count++;
    reply(s, 250, "ok", NULL, 0);
    return EV_CONTINUE;
}

static int cmd_rcpt(struct cmtp_server *s, const struct cmtp_cmd *cmd, enum cmtp_perr pe,
                    struct cmtp_srv_event *ev, bool after_failed_mail)
{
    if (s->txn != TXN_ENVELOPE)
        return bad_seq(s, ev, after_failed_mail);
    s->rcpt_seen = true;
    if (s->rcpt_cmds < UINT64_MAX)
        s->rcpt_cmds++;
    if (s->rcpt_cmds > s->rcpt_max)
        return fail(s, ev, 452, "too-many-rcpts", true);
    /* Every RCPT up to rcpt-max gets an entry so that index i is entry i - 1; once one could
     * not be stored, later ones are refused too (their indices are then unknown to DROP). */
    struct cmtp_srv_rcpt *r = NULL;
    if (s->rcpt_cmds == (uint64_t)s->rcpt_count + 1)
        r = rcpt_push(s);
    if (r == NULL)
        return fail(s, ev, 450, "try-later", false);
    if (pe != CMTP_PERR_OK)
        return fail(s, ev, 501, "bad-syntax", true);
    switch (cmtp_rcpt_parse(&r->addr, cmd->args, cmd->args_len)) {
    case CMTP_PERR_OK:
        break;
    case CMTP_PERR_ADDRESS:
        return fail(s, ev, 501, "bad-address", true);
    default:
        return fail(s, ev, 501, "bad-syntax", true);
    }
    r->status = CMTP_SRV_RCPT_PENDING;
    s->wait = WAIT_RCPT;
    ev->env = s->env;
    ev->rcpt = &r->addr;
    ev->rcpt_index = s->rcpt_count;
    return CMTP_SRV_RCPT;
}

int cmtp_server_rcpt_reply(struct cmtp_server *s, enum cmtp_srv_rcpt_answer a, const char *next_hop)
{
    if (s->wait != WAIT_RCPT || s->rcpt_count == 0)
        return -EINVAL;
    struct cmtp_srv_rcpt *r = &s->rcpts[s->rcpt_count - 1];
    const struct cmtp_policy *pol = &s->env->policy;
    char hop[CMTP_DOMAIN_MAX + 1];
    switch (a) {
    case CMTP_SRV_ANSWER_FINAL:
        r->status = CMTP_SRV_RCPT_FINAL;
        s->rcpt_ok++;
        reply(s, 250, "final", NULL, 0);
        break;
    case CMTP_SRV_ANSWER_RELAY:
        if (next_hop == NULL || cmtp_addr_domain_normalize(hop, sizeof(hop), next_hop,
                                                           strlen(next_hop)) != CMTP_ADDR_OK)
            return -EINVAL;
        /* The originator's policy, checked here whatever the caller's routing said. */
        if (pol->relay == CMTP_RELAY_NONE ||
            (pol->relay == CMTP_RELAY_DOMAIN && !cmtp_domain_within(hop, r->addr.domain)) ||
            (pol->relay != CMTP_RELAY_ANY && pol->relay != CMTP_RELAY_DOMAIN)) {
            r->status = CMTP_SRV_RCPT_REFUSED;
            reply(s, 551, "relay-denied", NULL, 0);
        } else if (pol->hops == 0) {
            r->status = CMTP_SRV_RCPT_REFUSED;
            reply(s, 554, "hops-exceeded", NULL, 0);
        } else {
            const struct cmtp_param p[] = {{"next", hop}};
            r->status = CMTP_SRV_RCPT_RELAY;
            memcpy(r->next_hop, hop, sizeof(hop));
            s->rcpt_ok++;
            reply(s, 251, "relay", p, 1);
        }
        break;
    case CMTP_SRV_ANSWER_NO_MAILBOX:
        r->status = CMTP_SRV_RCPT_REFUSED;
        reply(s, 550, "no-mailbox", NULL, 0);
        break;
    case CMTP_SRV_ANSWER_TEMPFAIL:
        r->status = CMTP_SRV_RCPT_REFUSED;
        reply(s, 450, "try-later", NULL, 0);
        break;
    default:
        return -EINVAL;
    }
    s->wait = WAIT_NONE;
    return 0;
}

static int cmd_drop(struct cmtp_server *s, const struct cmtp_cmd *cmd, enum cmtp_perr pe,
                    struct cmtp_srv_event *ev, bool after_failed_mail)
{
    uint64_t idx;
    if (s->txn != TXN_ENVELOPE)
        return bad_seq(s, ev, after_failed_mail);
    if (pe != CMTP_PERR_OK || cmtp_index_parse(&idx, cmd->args, cmd->args_len) != CMTP_PERR_OK)
        return fail(s, ev, 501, "bad-syntax", true);
    if (idx == 0 || idx > s->rcpt_count)
        return fail(s, ev, 503, "bad-sequence", true);
    struct cmtp_srv_rcpt *r = &s->rcpts[idx - 1];
    if (r->status != CMTP_SRV_RCPT_FINAL && r->status != CMTP_SRV_RCPT_RELAY)
        return fail(s, ev, 503, "bad-sequence", true);
    r->status = CMTP_SRV_RCPT_DROPPED;
    s->rcpt_ok--;
    reply(s, 250, "dropped", NULL, 0);
    return EV_CONTINUE;
}

static int cmd_body(struct cmtp_server *s, const struct cmtp_cmd *cmd, enum cmtp_perr pe,
                    struct cmtp_srv_event *ev)
{
    uint64_t n;
    /* Outside a transaction the chunk length cannot be trusted: close. */
    if (s->txn == TXN_NONE)
        return close_with(s, ev, 603, "bad-sequence");
    if (pe != CMTP_PERR_OK || cmtp_index_parse(&n, cmd->args, cmd->args_len) != CMTP_PERR_OK ||
        n == 0 || n > s->chunk_max)
        return close_with(s, ev, 601, "bad-chunk");
    if (n > s->env->size - s->body_total)
        return close_with(s, ev, 602, "size-exceeded");
    s->txn = TXN_BODY;
    s->body_total += n;
    cmtp_reader_expect_data(&s->rd, n);
    if (s->rcpt_ok == 0) {
        s->discard = true; /* consumed and discarded */
        return fail(s, ev, 554, "no-recipients", true);
    }
    s->discard = false;
    return EV_CONTINUE;
}

static int cmd_end(struct cmtp_server *s, enum cmtp_perr pe, struct cmtp_srv_event *ev,
                   bool after_failed_mail)
{
    if (s->txn == TXN_NONE)
        return bad_seq(s, ev, after_failed_mail);
    if (pe != CMTP_PERR_OK)
        return fail(s, ev, 501, "bad-syntax", true);
    if (s->rcpt_ok == 0 || s->body_total != s->env->size) {
        const char *st = s->rcpt_ok == 0 ? "no-recipients" : "size-mismatch";
        end_txn(s);
        reply(s, 554, st, NULL, 0);
        set_event_reply(ev, 554, st);
        return CMTP_SRV_RESET;
    }
    s->wait = WAIT_END;
    ev->env = s->env;
    ev->rcpts = s->rcpts;
    ev->rcpt_count = s->rcpt_count;
    ev->rcpt_accepted = s->rcpt_ok;
    return CMTP_SRV_END;
}

/* qid_valid: 1..CMTP_QID_MAX of [A-Za-z0-9._-] (the queue module's ids; never peer data). */
static bool qid_valid(const char *q)
{
    if (q == NULL)
        return false;
    size_t n = strnlen(q, CMTP_QID_MAX + 1);
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

int cmtp_server_end_reply(struct cmtp_server *s, const struct cmtp_srv_end_answer *a)
{
    if (s->wait != WAIT_END || a == NULL)
        return -EINVAL;
    switch (a->result) {
    case CMTP_SRV_END_ACCEPTED: {
        char n[21];
        if (!qid_valid(a->qid))
            return -EINVAL;
        const struct cmtp_param p[] = {
            {"txn", s->env->txid}, {"id", a->qid}, {"rcpts", u64_str(n, a->rcpts)}, {"dup", "1"}};
        reply(s, 250, "accepted", p, a->dup ? 4 : 3);
        break;
    }
    case CMTP_SRV_END_DIGEST_MISMATCH:
        reply(s, 554, "digest-mismatch", NULL, 0);
        break;
    case CMTP_SRV_END_TXN_CONFLICT:
        reply(s, 554, "txn-conflict", NULL, 0);
        break;
    case CMTP_SRV_END_TEMPFAIL:
        reply(s, 451, "try-later", NULL, 0);
        break;
    default:
        return -EINVAL;
    }
    s->wait = WAIT_NONE;
    end_txn(s);
    return 0;
}

static int cmd_rset(struct cmtp_server *s, enum cmtp_perr pe, struct cmtp_srv_event *ev)
{
    if (pe != CMTP_PERR_OK)
        return fail(s, ev, 501, "bad-syntax", true);
    reply(s, 250, "reset", NULL, 0);
    if (s->txn == TXN_NONE)
        return EV_CONTINUE;
    end_txn(s);
    set_event_reply(ev, 250, "reset");
    return CMTP_SRV_RESET;
}

/* command executes one complete command line. */
static int command(struct cmtp_server *s, const char *line, size_t len, struct cmtp_srv_event *ev)
{
    struct cmtp_cmd cmd;
    enum cmtp_perr pe = cmtp_cmd_split(&cmd, line, len);
    bool after_failed_mail = s->mail_failed;
    s->mail_failed = false;
    if (pe == CMTP_PERR_UNKNOWN)
        return fail(s, ev, 500, "unknown-command", true);
    switch (cmd.verb) {
    case CMTP_VERB_MAIL:
        return cmd_mail(s, &cmd, pe, ev);
    case CMTP_VERB_TRACE:
        return cmd_trace(s, &cmd, pe, ev, after_failed_mail);
    case CMTP_VERB_RCPT:
        return cmd_rcpt(s, &cmd, pe, ev, after_failed_mail);
    case CMTP_VERB_DROP:
        return cmd_drop(s, &cmd, pe, ev, after_failed_mail);
    case CMTP_VERB_BODY:
        return cmd_body(s, &cmd, pe, ev);
    case CMTP_VERB_END:
        return cmd_end(s, pe, ev, after_failed_mail);
    case CMTP_VERB_RSET:
        return cmd_rset(s, pe, ev);
    case CMTP_VERB_NOOP:
        if (pe != CMTP_PERR_OK)
            return fail(s, ev, 501, "bad-syntax", true);
        reply(s, 250, "ok", NULL, 0);
        return EV_CONTINUE;
    case CMTP_VERB_QUIT:
        if (pe != CMTP_PERR_OK)
            return fail(s, ev, 501, "bad-syntax", true);
        return close_with(s, ev, 221, "bye");
    default:
        return fail(s, ev, 501, "bad-syntax", true); /* empty line or leading SP */
    }
}

/* at_boundary reports whether |s| sits between commands: no partial line, no chunk. */
static bool at_boundary(const struct cmtp_server *s)
{
    return cmtp_reader_data_left(&s->rd) == 0 && !cmtp_reader_mid_line(&s->rd);
}

enum cmtp_srv_ev cmtp_server_feed(struct cmtp_server *s, const uint8_t *in, size_t len,
                                  size_t *consumed, struct cmtp_srv_event *ev)
{
    static const uint8_t empty[1] = {0};
    size_t off = 0;
    if (in == NULL) {
        in = empty;
        len = 0;
    }
    memset(ev, 0, sizeof(*ev));
    ev->status = "";
    *consumed = 0;
    assert(s->started);
    if (s->closing)
        return close_with(s, ev, 0, "");
    if (s->wait != WAIT_NONE)
        return CMTP_SRV_BLOCKED;
    for (;;) {
        struct cmtp_rd_item it;
        size_t c;
        uint64_t left = cmtp_reader_data_left(&s->rd);
        if (left > 0) {
            if (cmtp_reader_next(&s->rd, in + off, len - off, &c, &it) != CMTP_RD_DATA)
                break; /* all input consumed */
            off += c;
            if (s->discard)
                continue;
            ev->env = s->env;
            ev->data = it.data;
            ev->len = it.len;
            ev->offset = s->body_total - left;
            *consumed = off;
            return CMTP_SRV_BODY;
        }
        if (s->shutdown && at_boundary(s)) {
            *consumed = off;
            return close_with(s, ev, 421, "shutting-down");
        }
        if (out_free(s) < 2 * REPLY_RESERVE) {
            *consumed = off;
            return CMTP_SRV_FLUSH;
        }
        enum cmtp_rd r = cmtp_reader_next(&s->rd, in + off, len - off, &c, &it);
        off += c;
        if (r == CMTP_RD_AGAIN)
            break;
        *consumed = off;
        if (r == CMTP_RD_BAD_LINE)
            return close_with(s, ev, 600, "bad-line");
        if (r == CMTP_RD_TOO_LONG)
            return close_with(s, ev, 600, "line-too-long");
        if (s->shutdown)
            return close_with(s, ev, 421, "shutting-down");
        int e = command(s, it.line, it.len, ev);
        if (e != EV_CONTINUE)
            return (enum cmtp_srv_ev)e;
    }
    *consumed = off;
    return CMTP_SRV_NEED_INPUT;
}

enum cmtp_srv_ev cmtp_server_shutdown(struct cmtp_server *s)
{
    if (s->closing)
        return CMTP_SRV_CLOSE;
    s->shutdown = true;
    if (s->wait == WAIT_NONE && at_boundary(s))
        return close_with(s, NULL, 421, "shutting-down");
    return CMTP_SRV_NEED_INPUT;
}

enum cmtp_srv_ev cmtp_server_timeout(struct cmtp_server *s)
{
    return close_with(s, NULL, 605, "timeout");
}

enum cmtp_srv_state cmtp_server_state(const struct cmtp_server *s)
{
    if (s->closing)
        return CMTP_SRV_STATE_CLOSED;
    if (s->wait != WAIT_NONE)
        return CMTP_SRV_STATE_WAIT;
    if (cmtp_reader_data_left(&s->rd) > 0)
        return CMTP_SRV_STATE_BODY;
    if (cmtp_reader_mid_line(&s->rd))
        return CMTP_SRV_STATE_COMMAND;
    if (s->txn == TXN_BODY)
        return CMTP_SRV_STATE_BODY;
    return CMTP_SRV_STATE_IDLE;
}

bool cmtp_server_in_transaction(const struct cmtp_server *s)
{
    return s->txn != TXN_NONE && !s->closing;
}

const struct cmtp_srv_rcpt *cmtp_server_rcpt(const struct cmtp_server *s, uint32_t index)
{
    if (index == 0 || index > s->rcpt_count)
        return NULL;
    return &s->rcpts[index - 1];
}
