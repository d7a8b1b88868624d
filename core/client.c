/* core/client.c — the CMTP/1 client session: pipelined envelope, per-recipient results, the
 * originator's relay policy enforced with DROP, body framing. Pure: no I/O, no hashing. */
#include "core/client.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* CTL_RESERVE is the room kept free by the lazy line generator so that a short control line
 * (BODY n, END, QUIT) always fits behind the generated lines. */
#define CTL_RESERVE 64

/* EV_CONTINUE is the internal "no event, read on" result. */
#define EV_CONTINUE (-1)

/* QUEUE_MAX bounds the pending events (TXN_DONE then CLOSED / PROTOCOL_ERROR). */
#define QUEUE_MAX 3

enum cstate {
    CS_GREETING = 0,
    CS_READY,
    CS_ENVELOPE, /* MAIL/TRACE/RCPT replies awaited */
    CS_DROPS,    /* DROP replies awaited */
    CS_BODY,     /* the caller streams the body */
    CS_END,      /* END sent */
    CS_RSET,     /* RSET queued or sent, aborting a failed transaction */
    CS_QUIT,     /* QUIT sent */
    CS_CLOSED,   /* CLOSED reported */
    CS_ERROR,    /* PROTOCOL_ERROR reported */
};

/* Per-recipient state. */
enum rstate {
    R_PENDING = 0,
    R_ACCEPTED, /* final, or a relay the policy allows */
    R_REFUSED,
    R_TO_DROP, /* a relay the policy refuses, DROP not generated yet */
    R_DROP_SENT,
};

/* result is a reply kept for an event: code, status and text copied out of the line. */
struct result {
    unsigned code;
    char status[CMTP_STATUS_MAX + 1];
    char text[CMTP_TEXT_MAX + 1];
};

struct cmtp_client {
    struct cmtp_client_config cfg;
    struct cmtp_reader rd;
    uint8_t out[CMTP_CLI_OUT_MAX];
    size_t out_head, out_tail;
    enum cstate state;
    struct cmtp_greeting greeting;
    bool have_greeting;
    uint32_t txn_count;

    /* the current transaction */
    const struct cmtp_envelope *env;
    const struct cmtp_addr *rcpts;
    size_t nrcpt;
    uint8_t *rst; /* enum rstate per recipient */
    bool mail_gen, mail_replied;
    unsigned trace_gen, trace_replied;
    size_t rcpt_gen, rcpt_replied;
    size_t drop_scan, drops_gen, drops_replied, drops_total;
    size_t accepted;
    bool any_temp;
    bool failed;    /* the transaction failed; |done| holds why */
    bool need_rset; /* the server holds the failed transaction: RSET before TXN_DONE */
    bool rset_gen;
    uint64_t body_sent;

    /* TXN_DONE data */
    enum cmtp_cli_outcome outcome;
    bool local, dup;
    struct result done;
    char qid[CMTP_QID_MAX + 1];
    uint32_t done_rcpts;

    struct result closed; /* CLOSED data */
    struct result rr;     /* RCPT_RESULT data */
    char next_hop[CMTP_DOMAIN_MAX + 1];

    enum cmtp_cli_ev queue[QUEUE_MAX];
    unsigned qlen;
};

/* ---- helpers ---- */

/* copy_result keeps |r|'s code, status and text; the text is cut on a character boundary and
 * any control character becomes '?'. */
static void copy_result(struct result *dst, const struct cmtp_reply *r)
{
    dst->code = r->code;
    size_t n = r->status_len < CMTP_STATUS_MAX ? r->status_len : CMTP_STATUS_MAX;
    memcpy(dst->status, r->status, n);
    dst->status[n] = '\0';
    n = 0;
    if (r->text != NULL) {
        n = r->text_len < CMTP_TEXT_MAX ? r->text_len : CMTP_TEXT_MAX;
        if (n < r->text_len) {
            while (n > 0 && ((unsigned char)r->text[n] & 0xc0) == 0x80)
                n--; /* do not split a UTF-8 character */
        }
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)r->text[i];
            dst->text[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
        }
    }
    dst->text[n] = '\0';
}

static void local_result(struct result *dst, const char *status)
{
    dst->code = 0;
    strncpy(dst->status, status, CMTP_STATUS_MAX);
    dst->status[CMTP_STATUS_MAX] = '\0';
    dst->text[0] = '\0';
}

static bool param_is(const struct cmtp_reply *r, const char *key, const char *value)
{
    const struct cmtp_reply_param_view *p = cmtp_reply_param(r, key);
    size_t n = strlen(value);
    return p != NULL && p->value_len == n && memcmp(p->value, value, n) == 0;
}

/* param_u64 parses parameter |key| of |r| as a decimal in 1..|max|. */
static bool param_u64(const struct cmtp_reply *r, const char *key, uint64_t max, uint64_t *out)
{
    const struct cmtp_reply_param_view *p = cmtp_reply_param(r, key);
    return p != NULL && cmtp_parse_u64(out, p->value, p->value_len) == CMTP_NUM_OK && *out >= 1 &&
           *out <= max;
}

static bool qid_valid(const char *s, size_t n)
{
    if (n == 0 || n > CMTP_QID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static void push(struct cmtp_client *c, enum cmtp_cli_ev e)
{
    if (c->qlen < QUEUE_MAX)
        c->queue[c->qlen++] = e;
}

static bool in_txn(const struct cmtp_client *c)
{
    return c->state == CS_ENVELOPE || c->state == CS_DROPS || c->state == CS_BODY ||
           c->state == CS_END || c->state == CS_RSET;
}

static void finish_txn(struct cmtp_client *c)
{
    free(c->rst);
    c->rst = NULL;
    c->env = NULL;
    c->rcpts = NULL;
    c->nrcpt = 0;
    c->state = CS_READY;
}

/* fill_event copies the data of event |e| into |ev|. */
static void fill_event(const struct cmtp_client *c, enum cmtp_cli_ev e, struct cmtp_cli_event *ev)
{
    switch (e) {
    case CMTP_CLI_TXN_DONE:
        ev->outcome = c->outcome;
        ev->local = c->local;
        ev->code = c->done.code;
        ev->status = c->done.status;
        ev->text = c->done.text;
        if (c->outcome == CMTP_CLI_ACCEPTED) {
            ev->qid = c->qid;
            ev->dup = c->dup;
            ev->rcpts = c->done_rcpts;
        }
        break;
    case CMTP_CLI_BODY_READY:
        ev->rcpt_ready = c->accepted;
        break;
    case CMTP_CLI_CLOSED:
    case CMTP_CLI_PROTOCOL_ERROR:
        ev->code = c->closed.code;
        ev->status = c->closed.status;
        ev->text = c->closed.text;
        break;
    default:
        break;
    }
}

static int pop(struct cmtp_client *c, struct cmtp_cli_event *ev)
{
    if (c->qlen == 0)
        return EV_CONTINUE;
    enum cmtp_cli_ev e = c->queue[0];
    memmove(c->queue, c->queue + 1, (c->qlen - 1) * sizeof(c->queue[0]));
    c->qlen--;
    fill_event(c, e, ev);
    return (int)e;
}

/* set_fail records |r| as the reason the transaction failed (the first reason wins). */
static void set_fail(struct cmtp_client *c, const struct cmtp_reply *r)
{
    if (c->failed)
        return;
    c->failed = true;
    c->local = false;
    c->outcome = r->cls == 4 ? CMTP_CLI_TEMPFAIL : CMTP_CLI_PERMFAIL;
    copy_result(&c->done, r);
}

static void set_local_fail(struct cmtp_client *c, enum cmtp_cli_outcome o, const char *status)
{
    c->failed = true;
    c->local = true;
    c->outcome = o;
    local_result(&c->done, status);
}

/* protocol_error ends the session; a transaction in progress is reported as a temporary failure
 * first (nothing is known to be accepted; the same txid may be retried). */
static int protocol_error(struct cmtp_client *c, struct cmtp_cli_event *ev, const char *why)
{
    if (in_txn(c)) {
        c->failed = false;
        set_local_fail(c, CMTP_CLI_TEMPFAIL, why);
        push(c, CMTP_CLI_TXN_DONE);
        finish_txn(c);
    }
    local_result(&c->closed, why);
    c->state = CS_ERROR;
    push(c, CMTP_CLI_PROTOCOL_ERROR);
    return pop(c, ev);
}

/* closing handles a reply after which the server closes (6xx, 421, 452 too-many-txn). */
static int closing(struct cmtp_client *c, const struct cmtp_reply *r, struct cmtp_cli_event *ev)
{
    if (in_txn(c)) {
        if (!c->failed) {
            set_fail(c, r);
            c->outcome = CMTP_CLI_TEMPFAIL; /* 6xx: nothing was accepted, retry */
        }
        push(c, CMTP_CLI_TXN_DONE);
        finish_txn(c);
    }
    copy_result(&c->closed, r);
    c->state = CS_CLOSED;
    push(c, CMTP_CLI_CLOSED);
    return pop(c, ev);
}

/* ---- output ---- */

static size_t out_room(struct cmtp_client *c)
{
    if (c->out_head > 0) {
        memmove(c->out, c->out + c->out_head, c->out_tail - c->out_head);
        c->out_tail -= c->out_head;
        c->out_head = 0;
    }
    return CMTP_CLI_OUT_MAX - c->out_tail;
}

/* append copies a short control line; returns 0 or -ENOBUFS. */
static int append(struct cmtp_client *c, const char *s, size_t n)
{
    if (out_room(c) < n)
        return -ENOBUFS;
    memcpy(c->out + c->out_tail, s, n);
    c->out_tail += n;
    return 0;
}

/* generate_one writes the next lazily generated line, if any. Returns false when none. */
static bool generate_one(struct cmtp_client *c)
{
    char *dst = (char *)c->out + c->out_tail;
    size_t room = CMTP_CLI_OUT_MAX - c->out_tail;
    int n = -1;
    if (c->state == CS_ENVELOPE && !c->failed) {
        if (!c->mail_gen) {
            n = cmtp_mail_format(dst, room, c->env);
            c->mail_gen = true;
        } else if (c->trace_gen < c->env->trace_count) {
            n = cmtp_trace_cmd_format(dst, room, &c->env->trace[c->trace_gen]);
            c->trace_gen++;
        } else if (c->rcpt_gen < c->nrcpt) {
            n = cmtp_rcpt_format(dst, room, &c->rcpts[c->rcpt_gen]);
            c->rcpt_gen++;
        } else {
            return false;
        }
    } else if (c->state == CS_DROPS && !c->failed && c->drops_gen < c->drops_total) {
        while (c->drop_scan < c->nrcpt && c->rst[c->drop_scan] != R_TO_DROP)
            c->drop_scan++;
        if (c->drop_scan == c->nrcpt)
            return false;
        char line[40] = "DROP ";
        size_t k = 5, v = c->drop_scan + 1, len;
        char tmp[24];
        size_t t = 0;
        do {
            tmp[t++] = (char)('0' + v % 10);
            v /= 10;
        } while (v != 0);
        while (t > 0)
            line[k++] = tmp[--t];
        line[k++] = '\r';
        line[k++] = '\n';
        len = k;
        memcpy(dst, line, len);
        n = (int)len;
        c->rst[c->drop_scan] = R_DROP_SENT;
        c->drops_gen++;
    } else if (c->state == CS_RSET && !c->rset_gen) {
        memcpy(dst, "RSET\r\n", 6);
        n = 6;
        c->rset_gen = true;
    } else {
        return false;
    }
    /* Every line was validated by cmtp_client_begin; a failure here is a programmer error, but
     * never emit a partial line. */
    if (n > 0)
        c->out_tail += (size_t)n;
    return true;
}

size_t cmtp_client_output(struct cmtp_client *c, const uint8_t **p)
{
    while (out_room(c) >= CMTP_LINE_MAX + 1 + CTL_RESERVE) {
        if (!generate_one(c))
            break;
    }
    *p = c->out + c->out_head;
    return c->out_tail - c->out_head;
}

void cmtp_client_output_consume(struct cmtp_client *c, size_t n)
{
    if (n > c->out_tail - c->out_head)
        n = c->out_tail - c->out_head;
    c->out_head += n;
    if (c->out_head == c->out_tail)
        c->out_head = c->out_tail = 0;
}

/* ---- life cycle ---- */

struct cmtp_client *cmtp_client_new(const struct cmtp_client_config *cfg)
{
    struct cmtp_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    if (cfg != NULL)
        c->cfg = *cfg;
    cmtp_reader_init(&c->rd);
    c->state = CS_GREETING;
    return c;
}

void cmtp_client_free(struct cmtp_client *c)
{
    if (c == NULL)
        return;
    free(c->rst);
    c->rst = NULL;
    free(c);
}

const struct cmtp_greeting *cmtp_client_greeting(const struct cmtp_client *c)
{
    return c->have_greeting ? &c->greeting : NULL;
}

enum cmtp_cli_state cmtp_client_state(const struct cmtp_client *c)
{
    switch (c->state) {
    case CS_GREETING:
        return CMTP_CLI_STATE_GREETING;
    case CS_READY:
        return CMTP_CLI_STATE_READY;
    case CS_ENVELOPE:
    case CS_DROPS:
        return CMTP_CLI_STATE_ENVELOPE;
    case CS_BODY:
        return CMTP_CLI_STATE_BODY;
    case CS_END:
    case CS_RSET:
        return CMTP_CLI_STATE_END;
    case CS_QUIT:
        return CMTP_CLI_STATE_QUIT;
    default:
        return CMTP_CLI_STATE_CLOSED;
    }
}

/* ---- transaction ---- */

int cmtp_client_begin(struct cmtp_client *c, const struct cmtp_envelope *env,
                      const struct cmtp_addr *rcpts, size_t n)
{
    char line[CMTP_LINE_MAX + 1];
    size_t longest = 0;
    int len;
    if (c->state != CS_READY || c->qlen > 0 || env == NULL || rcpts == NULL || n == 0 ||
        env->trace_count > CMTP_TRACE_MAX)
        return -EINVAL;
    /* Validate every line now, so that the lazy generator cannot fail later. */
    len = cmtp_mail_format(line, sizeof(line), env);
    if (len < 0)
        return -EINVAL;
    longest = (size_t)len;
    for (unsigned i = 0; i < env->trace_count; i++) {
        len = cmtp_trace_cmd_format(line, sizeof(line), &env->trace[i]);
        if (len < 0)
            return -EINVAL;
        if ((size_t)len > longest)
            longest = (size_t)len;
    }
    for (size_t i = 0; i < n; i++) {
        len = cmtp_rcpt_format(line, sizeof(line), &rcpts[i]);
        if (len < 0)
            return -EINVAL;
        if ((size_t)len > longest)
            longest = (size_t)len;
    }
    c->failed = false;
    c->dup = false;
    c->done_rcpts = 0;
    c->qid[0] = '\0';
    if (env->size > c->greeting.size_max) {
        set_local_fail(c, CMTP_CLI_PERMFAIL, "too-big");
    } else if (n > c->greeting.rcpt_max) {
        set_local_fail(c, CMTP_CLI_PERMFAIL, "too-many-rcpts");
    } else if (longest > c->greeting.line_max) {
        set_local_fail(c, CMTP_CLI_PERMFAIL, "line-too-long");
    } else if (c->txn_count >= c->greeting.txn_max) {
        set_local_fail(c, CMTP_CLI_TEMPFAIL, "too-many-txn");
    }
    if (c->failed) {
        push(c, CMTP_CLI_TXN_DONE);
        return 0;
    }
    c->rst = calloc(n, 1);
    if (c->rst == NULL)
        return -ENOMEM;
    c->env = env;
    c->rcpts = rcpts;
    c->nrcpt = n;
    c->mail_gen = c->mail_replied = false;
    c->trace_gen = c->trace_replied = 0;
    c->rcpt_gen = c->rcpt_replied = 0;
    c->drop_scan = c->drops_gen = c->drops_replied = c->drops_total = 0;
    c->accepted = 0;
    c->any_temp = false;
    c->need_rset = false;
    c->rset_gen = false;
    c->body_sent = 0;
    c->txn_count++;
    c->state = CS_ENVELOPE;
    return 0;
}

int cmtp_client_body_header(struct cmtp_client *c, size_t n)
{
    char line[40] = "BODY ";
    char tmp[24];
    size_t k = 5, t = 0;
    uint64_t v = n;
    if (c->state != CS_BODY || c->qlen > 0 || n == 0 || n > c->greeting.chunk_max ||
        n > c->env->size - c->body_sent)
        return -EINVAL;
    do {
        tmp[t++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (t > 0)
        line[k++] = tmp[--t];
    line[k++] = '\r';
    line[k++] = '\n';
    int r = append(c, line, k);
    if (r < 0)
        return r;
    c->body_sent += n;
    return 0;
}

int cmtp_client_end(struct cmtp_client *c)
{
    if (c->state != CS_BODY || c->qlen > 0 || c->body_sent != c->env->size)
        return -EINVAL;
    int r = append(c, "END\r\n", 5);
    if (r < 0)
        return r;
    c->state = CS_END;
    return 0;
}

int cmtp_client_quit(struct cmtp_client *c)
{
    if (c->state != CS_READY || c->qlen > 0)
        return -EINVAL;
    int r = append(c, "QUIT\r\n", 6);
    if (r < 0)
        return r;
    c->state = CS_QUIT;
    return 0;
}

/* ---- replies ---- */

static int on_greeting(struct cmtp_client *c, const struct cmtp_reply *r, struct cmtp_cli_event *ev)
{
    uint64_t v;
    struct cmtp_greeting g;
    if (r->cls != 2)
        return closing(c, r, ev); /* the server refuses the session */
    if (r->code != 220 || !cmtp_reply_status_is(r, "ready"))
        return protocol_error(c, ev, "bad-greeting");
    memset(&g, 0, sizeof(g));
    const struct cmtp_reply_param_view *h = cmtp_reply_param(r, "host");
    if (!param_is(r, "proto", CMTP_ALPN) || h == NULL ||
        cmtp_addr_domain_normalize(g.host, sizeof(g.host), h->value, h->value_len) != CMTP_ADDR_OK)
        return protocol_error(c, ev, "bad-greeting");
    if (!param_u64(r, "size-max", UINT64_MAX, &v))
        return protocol_error(c, ev, "bad-greeting");
    g.size_max = v;
    if (!param_u64(r, "rcpt-max", UINT32_MAX, &v))
        return protocol_error(c, ev, "bad-greeting");
    g.rcpt_max = (uint32_t)v;
    if (!param_u64(r, "chunk-max", UINT32_MAX, &v))
        return protocol_error(c, ev, "bad-greeting");
    g.chunk_max = (uint32_t)v;
    if (!param_u64(r, "line-max", UINT32_MAX, &v))
        return protocol_error(c, ev, "bad-greeting");
    g.line_max = (uint32_t)v;
    if (!param_u64(r, "txn-max", UINT32_MAX, &v))
        return protocol_error(c, ev, "bad-greeting");
    g.txn_max = (uint32_t)v;
    c->greeting = g;
    c->have_greeting = true;
    c->state = CS_READY;
    ev->greeting = &c->greeting;
    return CMTP_CLI_GREETING;
}

/* rcpt_result turns the reply to RCPT |i| into a RCPT_RESULT event. */
static int rcpt_result(struct cmtp_client *c, size_t i, const struct cmtp_reply *r,
                       struct cmtp_cli_event *ev)
{
    copy_result(&c->rr, r);
    c->next_hop[0] = '\0';
    ev->rcpt_index = i;
    ev->code = r->code;
    ev->status = c->rr.status;
    ev->text = c->rr.text;
    ev->next_hop = c->next_hop;
    if (r->code == 250 && cmtp_reply_status_is(r, "final")) {
        ev->disp = CMTP_CLI_RCPT_FINAL;
        c->rst[i] = R_ACCEPTED;
        c->accepted++;
    } else if (r->code == 251 && cmtp_reply_status_is(r, "relay")) {
        const struct cmtp_reply_param_view *p = cmtp_reply_param(r, "next");
        if (p == NULL || cmtp_addr_domain_normalize(c->next_hop, sizeof(c->next_hop), p->value,
                                                    p->value_len) != CMTP_ADDR_OK)
            return protocol_error(c, ev, "bad-reply");
        ev->disp = CMTP_CLI_RCPT_RELAY;
        bool ok = c->cfg.allow_relay != NULL
                      ? c->cfg.allow_relay(c->cfg.arg, c->env, &c->rcpts[i], c->next_hop)
                      : cmtp_policy_allows_relay(&c->env->policy, c->rcpts[i].domain, c->next_hop);
        if (ok) {
            c->rst[i] = R_ACCEPTED;
            c->accepted++;
        } else {
            c->rst[i] = R_TO_DROP;
            c->drops_total++;
            ev->dropped = true;
        }
    } else if (r->cls == 4 || r->cls == 5) {
        ev->disp = CMTP_CLI_RCPT_REFUSED;
        c->rst[i] = R_REFUSED;
        if (r->cls == 4)
            c->any_temp = true;
    } else {
        return protocol_error(c, ev, "bad-reply");
    }
    return CMTP_CLI_RCPT_RESULT;
}

/* after_envelope decides what follows the last envelope reply. */
static void after_envelope(struct cmtp_client *c)
{
    if (!c->failed && c->accepted == 0) {
        /* Nobody left: abandon (the server holds an open transaction). */
        set_local_fail(c, c->any_temp ? CMTP_CLI_TEMPFAIL : CMTP_CLI_PERMFAIL, "no-recipients");
        c->need_rset = true;
    }
    if (c->failed) {
        if (c->need_rset) {
            c->state = CS_RSET;
        } else {
            push(c, CMTP_CLI_TXN_DONE);
            finish_txn(c);
        }
        return;
    }
    if (c->drops_total > 0) {
        c->state = CS_DROPS;
        return;
    }
    c->state = CS_BODY;
    push(c, CMTP_CLI_BODY_READY);
}

static bool envelope_done(const struct cmtp_client *c)
{
    if (!c->mail_replied || c->trace_replied != c->trace_gen || c->rcpt_replied != c->rcpt_gen)
        return false;
    return c->failed || (c->trace_gen == c->env->trace_count && c->rcpt_gen == c->nrcpt);
}

static int on_envelope(struct cmtp_client *c, const struct cmtp_reply *r, struct cmtp_cli_event *ev)
{
    int e = EV_CONTINUE;
    if (!c->mail_replied) {
        if (!c->mail_gen)
            return protocol_error(c, ev, "unexpected-reply");
        c->mail_replied = true;
        if (r->cls == 2) {
            if (r->code != 250 || !cmtp_reply_status_is(r, "ok") ||
                !param_is(r, "txn", c->env->txid))
                return protocol_error(c, ev, "bad-reply");
        } else {
            set_fail(c, r); /* no transaction at the server: no RSET */
        }
    } else if (c->trace_replied < c->env->trace_count && c->trace_replied < c->trace_gen) {
        c->trace_replied++;
        if (r->cls == 2) {
            if (!c->failed && (r->code != 250 || !cmtp_reply_status_is(r, "ok")))
                return protocol_error(c, ev, "bad-reply");
        } else if (!c->failed) {
            set_fail(c, r);
            c->need_rset = true;
        }
    } else if (c->trace_replied == c->env->trace_count && c->rcpt_replied < c->rcpt_gen) {
        size_t i = c->rcpt_replied++;
        if (!c->failed) {
            e = rcpt_result(c, i, r, ev);
            if (e != CMTP_CLI_RCPT_RESULT)
                return e;
        }
    } else {
        return protocol_error(c, ev, "unexpected-reply");
    }
    if (envelope_done(c))
        after_envelope(c);
    return e != EV_CONTINUE ? e : pop(c, ev);
}

static int on_drop(struct cmtp_client *c, const struct cmtp_reply *r, struct cmtp_cli_event *ev)
{
    if (c->drops_replied >= c->drops_gen)
        return protocol_error(c, ev, "unexpected-reply");
    c->drops_replied++;
    if (r->cls == 2) {
        if (r->code != 250 || !cmtp_reply_status_is(r, "dropped"))
            return protocol_error(c, ev, "bad-reply");
    } else if (!c->failed) {
        /* The server still counts the recipient: never send it the body. */
        set_fail(c, r);
        c->need_rset = true;
    }
    if (c->drops_replied == c->drops_gen && (c->failed || c->drops_gen == c->drops_total)) {
        if (c->failed) {
            c->state = CS_RSET;
        } else {
            c->state = CS_BODY;
            push(c, CMTP_CLI_BODY_READY);
        }
    }
    return pop(c, ev);
}

static int on_end(struct cmtp_client *c, const struct cmtp_reply *r, struct cmtp_cli_event *ev)
{
    uint64_t v;
    if (r->cls == 2) {
        const struct cmtp_reply_param_view *id = cmtp_reply_param(r, "id");
        const struct cmtp_reply_param_view *dup = cmtp_reply_param(r, "dup");
        if (r->code != 250 || !cmtp_reply_status_is(r, "accepted") ||
            !param_is(r, "txn", c->env->txid) || id == NULL ||
            !qid_valid(id->value, id->value_len) || !param_u64(r, "rcpts", UINT32_MAX, &v) ||
            (dup != NULL && !param_is(r, "dup", "1")))
            return protocol_error(c, ev, "bad-reply");
        c->failed = false;
        c->outcome = CMTP_CLI_ACCEPTED;
        c->local = false;
        copy_result(&c->done, r);
        memcpy(c->qid, id->value, id->value_len);
        c->qid[id->value_len] = '\0';
        c->dup = dup != NULL;
        c->done_rcpts = (uint32_t)v;
    } else {
        set_fail(c, r);
    }
    push(c, CMTP_CLI_TXN_DONE);
    finish_txn(c);
    return pop(c, ev);
}

static int on_reply(struct cmtp_client *c, const struct cmtp_reply *r, struct cmtp_cli_event *ev)
{
    if (c->state != CS_GREETING && (r->cls == 6 || r->code == 421 ||
                                    (r->code == 452 && cmtp_reply_status_is(r, "too-many-txn"))))
        return closing(c, r, ev);
    switch (c->state) {
    case CS_GREETING:
        return on_greeting(c, r, ev);
    case CS_ENVELOPE:
        return on_envelope(c, r, ev);
    case CS_DROPS:
        return on_drop(c, r, ev);
    case CS_END:
        return on_end(c, r, ev);
    case CS_RSET:
        if (!c->rset_gen)
            return protocol_error(c, ev, "unexpected-reply");
        if (r->code != 250 || !cmtp_reply_status_is(r, "reset"))
            return protocol_error(c, ev, "bad-reply");
        push(c, CMTP_CLI_TXN_DONE);
        finish_txn(c);
        return pop(c, ev);
    case CS_QUIT:
        if (r->code != 221 || !cmtp_reply_status_is(r, "bye"))
            return protocol_error(c, ev, "bad-reply");
        copy_result(&c->closed, r);
        c->state = CS_CLOSED;
        push(c, CMTP_CLI_CLOSED);
        return pop(c, ev);
    default:
        return protocol_error(c, ev, "unexpected-reply"); /* READY, BODY */
    }
}

enum cmtp_cli_ev cmtp_client_feed(struct cmtp_client *c, const uint8_t *in, size_t len,
                                  size_t *consumed, struct cmtp_cli_event *ev)
{
    static const uint8_t empty[1] = {0};
    size_t off = 0;
    if (in == NULL) {
        in = empty;
        len = 0;
    }
    memset(ev, 0, sizeof(*ev));
    ev->status = ev->text = ev->qid = ev->next_hop = "";
    *consumed = 0;
    int e = pop(c, ev);
    if (e != EV_CONTINUE)
        return (enum cmtp_cli_ev)e;
    if (c->state == CS_CLOSED || c->state == CS_ERROR) {
        fill_event(c, c->state == CS_CLOSED ? CMTP_CLI_CLOSED : CMTP_CLI_PROTOCOL_ERROR, ev);
        return c->state == CS_CLOSED ? CMTP_CLI_CLOSED : CMTP_CLI_PROTOCOL_ERROR;
    }
    for (;;) {
        struct cmtp_rd_item it;
        struct cmtp_reply r;
        size_t n;
        enum cmtp_rd rd = cmtp_reader_next(&c->rd, in + off, len - off, &n, &it);
        off += n;
        *consumed = off;
        if (rd == CMTP_RD_AGAIN)
            return CMTP_CLI_NEED_INPUT;
        if (rd != CMTP_RD_LINE)
            return (enum cmtp_cli_ev)protocol_error(c, ev, "bad-line");
        if (cmtp_reply_parse(&r, it.line, it.len) != 0)
            return (enum cmtp_cli_ev)protocol_error(c, ev, "bad-reply");
        e = on_reply(c, &r, ev);
        if (e != EV_CONTINUE)
            return (enum cmtp_cli_ev)e;
    }
}
