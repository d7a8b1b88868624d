/* core/smtp_client.c — the SMTP/LMTP delivery client: strict reply parsing, EHLO/STARTTLS,
 * pipelined envelope, dot-stuffed or BDAT-chunked body, per-recipient results. Pure; no sockets,
 * no TLS. */
#include "core/smtp_client.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/dotstuff.h"
#include "core/proto.h"

/* GEN_ROOM is the output room a generated command needs: the longest (MAIL FROM with a 382-octet
 * address, SIZE, BODY and SMTPUTF8) is under 460 octets. */
#define GEN_ROOM 512

/* BDAT_RESERVE is the room kept in front of an open BDAT chunk for its command line: a chunk
 * holds less than CMTP_SMTPC_OUT_MAX octets, so "BDAT 16383 LAST" CRLF (17 octets) fits. */
#define BDAT_RESERVE 24

/* BDAT_CHUNK_MIN is the least data room with which a new BDAT chunk is opened (unless the rest
 * of the input fits): smaller chunks would cost a command and a reply for a few octets. */
#define BDAT_CHUNK_MIN 1024

/* BDAT_EAGER_MAX is the largest body (msg->size) sent behind the envelope without waiting for the
 * RCPT replies, when the server pipelines (RFC 3030 4.2 allows it): one round trip per message
 * instead of two. A larger body waits, so that a refused envelope costs no transfer. */
#define BDAT_EAGER_MAX 65536

/* BDAT_EAGER_RCPTS is the most recipients of such a transaction: every envelope command must be
 * generated at once, in front of the body. */
#define BDAT_EAGER_RCPTS 16

/* DOT_UNCOUNTED is the reply count of a BDAT LAST before it is known: with LMTP, one reply per
 * recipient accepted, counted when its first reply comes (every RCPT reply is in by then). */
#define DOT_UNCOUNTED UINT32_MAX

/* EV_CONTINUE is the internal "no event, read on" result. */
#define EV_CONTINUE (-1)

/* QUEUE_MAX bounds the pending session events (READY/START_TLS/BODY_READY, DONE, CLOSED). */
#define QUEUE_MAX 4

/* FIFO_MAX bounds the commands awaiting a reply. */
#define FIFO_MAX (CMTP_SMTPC_INFLIGHT_MAX + 4)

/* STATUS_MAX bounds a local reason keyword. */
#define STATUS_MAX 31

enum kind {
    K_GREETING = 1,
    K_EHLO,
    K_LHLO,
    K_HELO,
    K_STARTTLS,
    K_RSET,
    K_MAIL,
    K_RCPT,
    K_DATA,
    K_BDAT,       /* a BDAT chunk before the last: one reply */
    K_DOT,        /* the final dot or BDAT LAST; n = replies still expected (LMTP: one per
                     accepted rcpt) */
    K_DOT_IGNORE, /* a lone dot after an unwanted 354: its reply is discarded */
    K_QUIT,
};

enum sstate {
    S_GREETING = 0,
    S_HELLO,    /* EHLO/LHLO/HELO sent */
    S_STARTTLS, /* STARTTLS sent */
    S_TLS,      /* the caller runs the handshake */
    S_READY,
    S_TXN,  /* a transaction's commands in flight */
    S_BODY, /* the caller streams the body */
    S_QUIT,
    S_CLOSED,
    S_ERROR,
};

/* Per-recipient state. */
enum rstate {
    R_PENDING = 0, /* no reply to its RCPT yet (maybe not even sent) */
    R_ACCEPTED,    /* RCPT got 2xx; the body's result is awaited */
    R_DECIDED,     /* result known, RCPT_RESULT not yet returned */
    R_REPORTED,
};

/* Reason slots for results decided in batches. */
enum slot {
    W_MAIL = 0, /* the MAIL reply */
    W_DATA,     /* the DATA reply or the reply after the dot (SMTP) */
    W_LOCAL,    /* a local decision at the start of the transaction */
    W_END,      /* the session's failure or end */
    W_COUNT,
};

/* why is a reply (or a local reason) kept for events. */
struct why {
    unsigned code;
    bool local;
    enum cmtp_smtpc_stage stage;
    char enh[CMTP_SMTPC_ENH_MAX + 1];
    char status[STATUS_MAX + 1];
    char text[CMTP_TEXT_MAX + 1];
};

struct rcpt {
    uint8_t st;  /* enum rstate */
    uint8_t res; /* enum cmtp_smtpc_result, once decided */
    uint8_t why; /* enum slot, for R_DECIDED */
};

struct cmd {
    uint8_t kind;
    uint32_t n;
};

struct cmtp_smtpc {
    struct cmtp_smtpc_config cfg;
    char helo[CMTP_SMTPC_HELO_MAX + 1];
    enum sstate st;
    bool tls_active;
    bool have_ext;
    struct cmtp_smtpc_ext ext, ext_new;
    bool failed;     /* the session failed: CLOSED carries w[W_END], not the 221 */
    bool more_input; /* octets follow the line being processed in this feed call */

    /* reply reader */
    char line[CMTP_SMTPC_REPLY_LINE_MAX];
    size_t line_len;
    bool line_cr;
    bool in_reply;
    unsigned reply_lines;
    size_t text_len;
    struct why cur;

    /* output */
    uint8_t out[CMTP_SMTPC_OUT_MAX];
    size_t out_head, out_tail;

    /* commands awaiting replies */
    struct cmd fifo[FIFO_MAX];
    unsigned f_head, f_len;
    unsigned txn_inflight;

    /* the transaction */
    bool txn, txn_started, done_queued;
    struct cmtp_smtpc_msg msg;
    bool need_utf8;
    struct rcpt *rs;
    bool need_rset, rset_gen, mail_gen, mail_replied, mail_ok, data_gen, dot_done;
    size_t rcpt_gen, undecided, accepted, decided_pending, scan, lmtp_scan;
    size_t n_deliv, n_temp, n_perm;
    struct cmtp_dotstuff ds;
    bool bdat;       /* this transaction sends its body in BDAT chunks */
    bool raw;        /* ... octet for octet (BODY=BINARYMIME), not canonicalized */
    bool chunk_open; /* body octets wait at out[chunk_start + BDAT_RESERVE...] for a header */
    size_t chunk_start;
    struct why w[W_COUNT];
    struct why now; /* an immediate RCPT_RESULT's reply */

    enum cmtp_smtpc_ev queue[QUEUE_MAX];
    unsigned qlen;
    struct why closed;
};

/* ---- text ---- */

/* append_text appends |n| octets of reply text at |s| to the current reply's text, sanitized:
 * printable ASCII and valid non-control UTF-8 are kept, TAB becomes SP, anything else "?"; cut
 * at CMTP_TEXT_MAX on a character boundary. A SP separates it from the previous line's text. */
static void append_text(struct cmtp_smtpc *c, const char *s, size_t n)
{
    char *t = c->cur.text;
    size_t k = c->text_len;
    if (n == 0)
        return;
    if (k > 0 && k < CMTP_TEXT_MAX)
        t[k++] = ' ';
    for (size_t i = 0; i < n && k < CMTP_TEXT_MAX;) {
        unsigned char b = (unsigned char)s[i];
        size_t len = 1;
        if (b >= 0x20 && b < 0x7f) {
            t[k++] = (char)b;
        } else if (b == '\t') {
            t[k++] = ' ';
        } else if (b >= 0xc2 && b <= 0xf4) {
            len = b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
            if (len > n - i || !cmtp_utf8_valid(s + i, len)) {
                len = 1;
                t[k++] = '?';
            } else if (b == 0xc2 && (unsigned char)s[i + 1] < 0xa0) {
                t[k++] = '?'; /* a C1 control (U+0080..U+009F): one "?" for the character */
            } else if (k + len > CMTP_TEXT_MAX) {
                break;
            } else {
                memcpy(t + k, s + i, len);
                k += len;
            }
        } else {
            t[k++] = '?';
        }
        i += len;
    }
    t[k] = '\0';
    c->text_len = k;
}

/* enh_parse recognizes an enhanced status code `class.subject.detail` (RFC 3463: class 2, 4 or
 * 5 equal to the reply's, 1..3 digits each) at the start of |s| followed by SP or the end.
 * Returns its length or 0. */
static size_t enh_parse(const char *s, size_t n, unsigned cls)
{
    size_t i = 0;
    if (n < 5 || s[0] != (char)('0' + cls) || s[1] != '.')
        return 0;
    i = 2;
    for (int part = 0; part < 2; part++) {
        size_t d = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && d < 4) {
            i++;
            d++;
        }
        if (d == 0 || d > 3)
            return 0;
        if (part == 0) {
            if (i >= n || s[i] != '.')
                return 0;
            i++;
        }
    }
    if (i < n && s[i] != ' ')
        return 0;
    return i;
}

static void set_status(char *dst, const char *s)
{
    size_t n = strlen(s);
    if (n > STATUS_MAX)
        n = STATUS_MAX;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

static void local_why(struct why *w, enum cmtp_smtpc_stage stage, const char *status,
                      const char *enh)
{
    memset(w, 0, sizeof(*w));
    w->local = true;
    w->stage = stage;
    set_status(w->status, status);
    if (enh != NULL)
        set_status(w->enh, enh);
}

static void reply_why(struct why *w, const struct why *cur, enum cmtp_smtpc_stage stage)
{
    *w = *cur;
    w->local = false;
    w->stage = stage;
    w->status[0] = '\0';
}

static void fill_why(struct cmtp_smtpc_event *ev, const struct why *w)
{
    ev->local = w->local;
    ev->code = w->code;
    ev->enhanced = w->enh;
    ev->text = w->text;
    ev->status = w->status;
    ev->stage = w->stage;
}

/* ---- events ---- */

static void push(struct cmtp_smtpc *c, enum cmtp_smtpc_ev e)
{
    if (c->qlen < QUEUE_MAX)
        c->queue[c->qlen++] = e;
}

static void end_txn(struct cmtp_smtpc *c)
{
    free(c->rs);
    c->rs = NULL;
    c->txn = c->txn_started = c->done_queued = false;
    memset(&c->msg, 0, sizeof(c->msg));
    if (c->st == S_TXN)
        c->st = S_READY;
}

static int take_queued(struct cmtp_smtpc *c, struct cmtp_smtpc_event *ev)
{
    enum cmtp_smtpc_ev e = c->queue[0];
    memmove(c->queue, c->queue + 1, (c->qlen - 1) * sizeof(c->queue[0]));
    c->qlen--;
    switch (e) {
    case CMTP_SMTPC_READY:
        ev->ext = &c->ext;
        break;
    case CMTP_SMTPC_DONE:
        ev->delivered = c->n_deliv;
        ev->temp = c->n_temp;
        ev->perm = c->n_perm;
        end_txn(c);
        break;
    case CMTP_SMTPC_CLOSED:
    case CMTP_SMTPC_PROTOCOL_ERROR:
        fill_why(ev, &c->closed);
        break;
    default:
        break;
    }
    return (int)e;
}

/* pop returns the next pending event: READY first, then decided recipients in index order,
 * then the queued session events. */
static int pop(struct cmtp_smtpc *c, struct cmtp_smtpc_event *ev)
{
    if (c->qlen > 0 && c->queue[0] == CMTP_SMTPC_READY)
        return take_queued(c, ev);
    if (c->decided_pending > 0 && c->rs != NULL) {
        for (; c->scan < c->msg.nrcpt; c->scan++) {
            struct rcpt *r = &c->rs[c->scan];
            if (r->st != R_DECIDED)
                continue;
            r->st = R_REPORTED;
            c->decided_pending--;
            ev->rcpt_index = c->scan;
            ev->result = (enum cmtp_smtpc_result)r->res;
            fill_why(ev, &c->w[r->why]);
            c->scan++;
            return CMTP_SMTPC_RCPT_RESULT;
        }
    }
    if (c->qlen > 0)
        return take_queued(c, ev);
    return EV_CONTINUE;
}

static void count(struct cmtp_smtpc *c, enum cmtp_smtpc_result res)
{
    if (res == CMTP_SMTPC_DELIVERED)
        c->n_deliv++;
    else if (res == CMTP_SMTPC_TEMP)
        c->n_temp++;
    else
        c->n_perm++;
}

/* settle takes recipient |i| out of the undecided counts. */
static void settle(struct cmtp_smtpc *c, size_t i, enum cmtp_smtpc_result res)
{
    if (c->rs[i].st == R_ACCEPTED)
        c->accepted--;
    c->undecided--;
    c->rs[i].res = (uint8_t)res;
    count(c, res);
}

/* decide_all decides every undecided recipient (only the accepted ones when |accepted_only|)
 * with |res| and the reason in slot |slot|. */
static void decide_all(struct cmtp_smtpc *c, bool accepted_only, enum cmtp_smtpc_result res,
                       enum slot slot)
{
    if (c->rs == NULL)
        return;
    for (size_t i = 0; i < c->msg.nrcpt; i++) {
        struct rcpt *r = &c->rs[i];
        if (r->st == R_ACCEPTED || (!accepted_only && r->st == R_PENDING)) {
            settle(c, i, res);
            r->st = R_DECIDED;
            r->why = (uint8_t)slot;
            c->decided_pending++;
            if (i < c->scan)
                c->scan = i;
        }
    }
}

/* report_now decides recipient |i| from the current reply and fills the RCPT_RESULT. */
static int report_now(struct cmtp_smtpc *c, size_t i, enum cmtp_smtpc_result res,
                      enum cmtp_smtpc_stage stage, struct cmtp_smtpc_event *ev)
{
    settle(c, i, res);
    c->rs[i].st = R_REPORTED;
    reply_why(&c->now, &c->cur, stage);
    ev->rcpt_index = i;
    ev->result = res;
    fill_why(ev, &c->now);
    return CMTP_SMTPC_RCPT_RESULT;
}

static enum cmtp_smtpc_result class_result(unsigned code)
{
    return code / 100 == 2   ? CMTP_SMTPC_DELIVERED
           : code / 100 == 4 ? CMTP_SMTPC_TEMP
                             : CMTP_SMTPC_PERM;
}

/* maybe_done queues DONE once every recipient is decided and no command of the transaction
 * awaits a reply. */
static void maybe_done(struct cmtp_smtpc *c)
{
    if (!c->txn || !c->txn_started || c->done_queued || c->st != S_TXN || c->undecided > 0 ||
        c->txn_inflight > 0)
        return;
    c->need_rset = c->mail_ok && !c->dot_done;
    c->done_queued = true;
    push(c, CMTP_SMTPC_DONE);
}

/* ---- output ---- */

static size_t out_room(struct cmtp_smtpc *c)
{
    if (c->out_head > 0) {
        memmove(c->out, c->out + c->out_head, c->out_tail - c->out_head);
        c->out_tail -= c->out_head;
        if (c->chunk_open)
            c->chunk_start -= c->out_head;
        c->out_head = 0;
    }
    return CMTP_SMTPC_OUT_MAX - c->out_tail;
}

static bool append(struct cmtp_smtpc *c, const char *s, size_t n)
{
    if (out_room(c) < n)
        return false;
    memcpy(c->out + c->out_tail, s, n);
    c->out_tail += n;
    return true;
}

static bool txn_kind(uint8_t k)
{
    return k == K_RSET || k == K_MAIL || k == K_RCPT || k == K_DATA || k == K_BDAT || k == K_DOT ||
           k == K_DOT_IGNORE;
}

static void fifo_push(struct cmtp_smtpc *c, uint8_t kind, uint32_t n)
{
    struct cmd *e = &c->fifo[(c->f_head + c->f_len) % FIFO_MAX];
    e->kind = kind;
    e->n = n;
    c->f_len++;
    if (txn_kind(kind))
        c->txn_inflight++;
}

static void fifo_pop(struct cmtp_smtpc *c)
{
    if (txn_kind(c->fifo[c->f_head].kind))
        c->txn_inflight--;
    c->f_head = (c->f_head + 1) % FIFO_MAX;
    c->f_len--;
}

/* send_cmd appends `VERB[ arg]` CRLF and expects its reply. */
static bool send_cmd(struct cmtp_smtpc *c, uint8_t kind, const char *verb, const char *arg)
{
    char line[GEN_ROOM];
    size_t n = strlen(verb);
    memcpy(line, verb, n);
    if (arg != NULL) {
        size_t a = strlen(arg);
        line[n++] = ' ';
        memcpy(line + n, arg, a);
        n += a;
    }
    line[n++] = '\r';
    line[n++] = '\n';
    if (!append(c, line, n))
        return false;
    fifo_push(c, kind, 0);
    return true;
}

/* addr_path writes `<local@domain>` (or `<>`) into |out| (>= CMTP_ADDR_MAX + 8). A cmtp_addr
 * local part is a dot-atom (core/addr.c refuses every special), so no quoting is ever needed. */
static size_t addr_path(char *out, const struct cmtp_addr *a)
{
    size_t n = 0;
    out[n++] = '<';
    if (!a->is_null) {
        memcpy(out + n, a->local, a->local_len);
        n += a->local_len;
        out[n++] = '@';
        memcpy(out + n, a->domain, a->domain_len);
        n += a->domain_len;
    }
    out[n++] = '>';
    return n;
}

static size_t u64_put(char *out, uint64_t v)
{
    char tmp[24];
    size_t t = 0, n = 0;
    do {
        tmp[t++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (t > 0)
        out[n++] = tmp[--t];
    return n;
}

static bool pipelining(const struct cmtp_smtpc *c)
{
    return c->ext.pipelining && !c->cfg.no_pipelining;
}

/* generate_one writes the next command of the transaction, if one may go now. */
static bool generate_one(struct cmtp_smtpc *c)
{
    char line[GEN_ROOM];
    size_t n = 0;
    uint8_t kind;
    uint32_t idx = 0;
    if (c->st != S_TXN || !c->txn_started || c->done_queued || c->undecided == 0)
        return false;
    if (pipelining(c) ? c->f_len >= CMTP_SMTPC_INFLIGHT_MAX : c->f_len > 0)
        return false;
    if (c->need_rset && !c->rset_gen) {
        memcpy(line, "RSET\r\n", 6);
        n = 6;
        kind = K_RSET;
        c->rset_gen = true;
    } else if (!c->mail_gen) {
        memcpy(line, "MAIL FROM:", 10);
        n = 10 + addr_path(line + 10, c->msg.from);
        if (c->ext.size && c->msg.size > 0) {
            memcpy(line + n, " SIZE=", 6);
            n += 6;
            n += u64_put(line + n, c->msg.size);
        }
        if (c->raw) {
            memcpy(line + n, " BODY=BINARYMIME", 16);
            n += 16;
        } else if (c->msg.eight_bit && c->ext.eightbitmime) {
            memcpy(line + n, " BODY=8BITMIME", 14);
            n += 14;
        }
        if (c->need_utf8 && c->ext.smtputf8) {
            memcpy(line + n, " SMTPUTF8", 9);
            n += 9;
        }
        line[n++] = '\r';
        line[n++] = '\n';
        kind = K_MAIL;
        c->mail_gen = true;
    } else if (c->rcpt_gen < c->msg.nrcpt) {
        memcpy(line, "RCPT TO:", 8);
        n = 8 + addr_path(line + 8, &c->msg.rcpts[c->rcpt_gen]);
        line[n++] = '\r';
        line[n++] = '\n';
        kind = K_RCPT;
        idx = (uint32_t)c->rcpt_gen++;
    } else if (!c->data_gen && !c->bdat) {
        memcpy(line, "DATA\r\n", 6);
        n = 6;
        kind = K_DATA;
        c->data_gen = true;
    } else {
        return false;
    }
    memcpy(c->out + c->out_tail, line, n);
    c->out_tail += n;
    fifo_push(c, kind, idx);
    return true;
}

/* chunk_room_ok says whether another BDAT chunk may be sent now (the pipelining depth). */
static bool chunk_room_ok(const struct cmtp_smtpc *c)
{
    return pipelining(c) ? c->f_len < CMTP_SMTPC_INFLIGHT_MAX : c->f_len == 0;
}

/* chunk_close writes the open chunk's command line, `BDAT <n>` (` LAST` when |last|) CRLF, in
 * front of its data and expects its reply (or replies). An empty chunk that is not the last is
 * dropped. The unsent output before the chunk moves up to close the gap the reserve leaves. */
static void chunk_close(struct cmtp_smtpc *c, bool last)
{
    size_t data = c->chunk_start + BDAT_RESERVE;
    size_t n = c->out_tail - data;
    char h[BDAT_RESERVE];
    size_t hl;
    c->chunk_open = false;
    if (n == 0 && !last) {
        c->out_tail = c->chunk_start;
        return;
    }
    memcpy(h, "BDAT ", 5);
    hl = 5 + u64_put(h + 5, n);
    if (last) {
        memcpy(h + hl, " LAST", 5);
        hl += 5;
    }
    h[hl++] = '\r';
    h[hl++] = '\n';
    size_t gap = BDAT_RESERVE - hl;
    memcpy(c->out + c->chunk_start + gap, h, hl);
    memmove(c->out + c->out_head + gap, c->out + c->out_head, c->chunk_start - c->out_head);
    c->out_head += gap;
    if (last)
        fifo_push(c, K_DOT, c->cfg.mode == CMTP_SMTPC_LMTP ? DOT_UNCOUNTED : 1);
    else
        fifo_push(c, K_BDAT, 0);
}

/* chunk_begin reserves the command line's room for a new chunk; false when there is too little
 * room for |want| data octets (the output must be sent first) or the pipelining depth is
 * reached (a reply must come first). */
static bool chunk_begin(struct cmtp_smtpc *c, size_t want)
{
    if (!chunk_room_ok(c))
        return false;
    size_t room = out_room(c);
    if (room < BDAT_RESERVE + (want < BDAT_CHUNK_MIN ? want : BDAT_CHUNK_MIN))
        return false;
    c->chunk_start = c->out_tail;
    c->out_tail += BDAT_RESERVE;
    c->chunk_open = true;
    return true;
}

size_t cmtp_smtpc_output(struct cmtp_smtpc *c, const uint8_t **p)
{
    if (c->chunk_open)
        chunk_close(c, false);
    while (out_room(c) >= GEN_ROOM) {
        if (!generate_one(c))
            break;
    }
    *p = c->out + c->out_head;
    return c->out_tail - c->out_head;
}

void cmtp_smtpc_output_consume(struct cmtp_smtpc *c, size_t n)
{
    if (n > c->out_tail - c->out_head)
        n = c->out_tail - c->out_head;
    c->out_head += n;
    if (c->out_head == c->out_tail)
        c->out_head = c->out_tail = 0;
}

/* ---- life cycle ---- */

static bool helo_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CMTP_SMTPC_HELO_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        if (b <= 0x20 || b >= 0x7f)
            return false;
    }
    return true;
}

struct cmtp_smtpc *cmtp_smtpc_new(const struct cmtp_smtpc_config *cfg)
{
    struct cmtp_smtpc *c = NULL;
    const char *helo = cfg != NULL && cfg->helo != NULL ? cfg->helo : "localhost";
    if (!helo_valid(helo))
        goto err;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        goto err;
    if (cfg != NULL)
        c->cfg = *cfg;
    c->cfg.helo = NULL;
    memcpy(c->helo, helo, strlen(helo) + 1);
    c->tls_active = c->cfg.tls_active;
    c->st = S_GREETING;
    fifo_push(c, K_GREETING, 0);
    return c;
err:
    free(c);
    return NULL;
}

void cmtp_smtpc_free(struct cmtp_smtpc *c)
{
    if (c == NULL)
        return;
    free(c->rs);
    c->rs = NULL;
    free(c);
}

/* ---- terminal paths ---- */

/* terminal ends the session with event |e| and reason |why|: every recipient without a result
 * fails temporarily (reason |why|), DONE, then |e|. */
static void terminal(struct cmtp_smtpc *c, enum cmtp_smtpc_ev e, const struct why *why)
{
    if (!c->failed)
        c->w[W_END] = *why; /* after fail_session, its reason stays the session's */
    if (c->txn && !c->done_queued) {
        decide_all(c, false, CMTP_SMTPC_TEMP, W_END);
        c->done_queued = true;
        push(c, CMTP_SMTPC_DONE);
    }
    c->closed = c->w[W_END];
    c->st = e == CMTP_SMTPC_CLOSED ? S_CLOSED : S_ERROR;
    c->f_len = 0;
    c->txn_inflight = 0;
    push(c, e);
}

static int protocol_error(struct cmtp_smtpc *c, struct cmtp_smtpc_event *ev, const char *status)
{
    struct why w;
    local_why(&w, CMTP_SMTPC_STAGE_SESSION, status, NULL);
    terminal(c, CMTP_SMTPC_PROTOCOL_ERROR, &w);
    return pop(c, ev);
}

/* fail_session ends a session that cannot carry mail (refused greeting, EHLO, required TLS,
 * RSET): every recipient fails temporarily with |why|; QUIT is sent when no other command is in
 * flight, otherwise the session closes at once. */
static int fail_session(struct cmtp_smtpc *c, const struct why *why, struct cmtp_smtpc_event *ev)
{
    c->w[W_END] = *why;
    c->failed = true;
    if (c->f_len == 0 && send_cmd(c, K_QUIT, "QUIT", NULL)) {
        if (c->txn && !c->done_queued) {
            decide_all(c, false, CMTP_SMTPC_TEMP, W_END);
            c->done_queued = true;
            push(c, CMTP_SMTPC_DONE);
        }
        c->st = S_QUIT;
        return pop(c, ev);
    }
    terminal(c, CMTP_SMTPC_CLOSED, why);
    return pop(c, ev);
}

/* ---- transactions ---- */

static bool non_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] >= 0x80)
            return true;
    }
    return false;
}

/* bdat_body_start lets the caller stream a BDAT transaction's body (BODY_READY). */
static void bdat_body_start(struct cmtp_smtpc *c)
{
    c->data_gen = true;
    c->st = S_BODY;
    if (!c->raw)
        cmtp_dotstuff_init_canon(&c->ds);
    push(c, CMTP_SMTPC_BODY_READY);
}

/* bdat_eager generates the whole envelope now and lets the body follow it at once (BODY_READY),
 * without waiting for the replies; it leaves the transaction as it is when the envelope does not
 * fit the output. */
static void bdat_eager(struct cmtp_smtpc *c)
{
    while (out_room(c) >= GEN_ROOM && generate_one(c))
        ;
    if (c->mail_gen && c->rcpt_gen == c->msg.nrcpt)
        bdat_body_start(c);
}

/* start_txn begins the begun transaction once the session is ready. */
static void start_txn(struct cmtp_smtpc *c)
{
    const char *why = NULL, *enh = NULL;
    c->txn_started = true;
    c->st = S_TXN;
    /* A binary body goes in BDAT only as BINARYMIME; without it, it is canonicalized, and DATA
     * does that as well as BDAT. */
    c->bdat = c->ext.chunking && !c->cfg.no_chunking && (!c->msg.binary || c->ext.binarymime);
    c->raw = c->bdat && c->msg.binary;
    c->chunk_open = false;
    if (c->ext.size && c->ext.size_max > 0 && c->msg.size > c->ext.size_max) {
        why = "too-big";
        enh = "5.3.4";
    } else if (c->msg.eight_bit && !c->ext.eightbitmime && !c->raw) {
        why = "no-8bitmime";
        enh = "5.6.3";
    } else if (c->msg.binary && !c->raw && c->msg.body_strict) {
        why = "no-binarymime";
        enh = "5.6.3";
    } else if (c->need_utf8 && !c->ext.smtputf8) {
        why = "no-smtputf8";
        enh = "5.6.7";
    }
    if (why != NULL) {
        local_why(&c->w[W_LOCAL], CMTP_SMTPC_STAGE_LOCAL, why, enh);
        decide_all(c, false, CMTP_SMTPC_PERM, W_LOCAL);
    } else if (c->bdat && pipelining(c) && c->msg.size > 0 && c->msg.size <= BDAT_EAGER_MAX &&
               c->msg.nrcpt <= BDAT_EAGER_RCPTS) {
        bdat_eager(c);
    }
    maybe_done(c);
}

int cmtp_smtpc_begin(struct cmtp_smtpc *c, const struct cmtp_smtpc_msg *msg)
{
    if (c->txn || c->qlen > 0 || msg == NULL || msg->from == NULL || msg->rcpts == NULL ||
        msg->nrcpt == 0 || msg->nrcpt > CMTP_RCPT_MAX_HARD)
        return -EINVAL;
    if (c->st == S_QUIT || c->st == S_CLOSED || c->st == S_ERROR)
        return -EINVAL;
    bool utf8 = msg->smtputf8 || non_ascii(msg->from->local, msg->from->local_len);
    for (size_t i = 0; i < msg->nrcpt; i++) {
        const struct cmtp_addr *a = &msg->rcpts[i];
        if (a->is_null || a->local_len == 0 || a->domain_len == 0)
            return -EINVAL;
        if (non_ascii(a->local, a->local_len))
            utf8 = true;
    }
    c->rs = calloc(msg->nrcpt, sizeof(*c->rs));
    if (c->rs == NULL)
        return -ENOMEM;
    c->msg = *msg;
    c->need_utf8 = utf8;
    c->txn = true;
    c->txn_started = c->done_queued = false;
    c->rset_gen = c->mail_gen = c->mail_replied = c->mail_ok = c->data_gen = c->dot_done = false;
    c->rcpt_gen = 0;
    c->undecided = msg->nrcpt;
    c->accepted = c->decided_pending = c->scan = c->lmtp_scan = 0;
    c->n_deliv = c->n_temp = c->n_perm = 0;
    if (c->st == S_READY)
        start_txn(c);
    return 0;
}

int cmtp_smtpc_body(struct cmtp_smtpc *c, const uint8_t *in, size_t len, size_t *consumed)
{
    *consumed = 0;
    if (c->st != S_BODY)
        return -EINVAL;
    if (in == NULL)
        len = 0;
    if (c->bdat && !c->chunk_open && (len == 0 || !chunk_begin(c, len)))
        return 0;
    size_t room = out_room(c);
    if (c->raw) {
        size_t n = len < room ? len : room;
        memcpy(c->out + c->out_tail, in, n);
        c->out_tail += n;
        *consumed = n;
        return 0;
    }
    c->out_tail += cmtp_dotstuff_encode(&c->ds, in, len, consumed, c->out + c->out_tail, room);
    return 0;
}

int cmtp_smtpc_body_end(struct cmtp_smtpc *c)
{
    if (c->st != S_BODY)
        return -EINVAL;
    if (c->bdat) {
        if (!c->chunk_open) {
            if (!chunk_room_ok(c))
                return -EAGAIN;
            if (!chunk_begin(c, 0))
                return -ENOBUFS;
        }
        chunk_close(c, true);
        c->st = S_TXN;
        return 0;
    }
    size_t room = out_room(c);
    int n = cmtp_dotstuff_finish(&c->ds, c->out + c->out_tail, room);
    if (n < 0)
        return n;
    c->out_tail += (size_t)n;
    fifo_push(c, K_DOT, c->cfg.mode == CMTP_SMTPC_LMTP ? (uint32_t)c->accepted : 1);
    c->st = S_TXN;
    return 0;
}

int cmtp_smtpc_quit(struct cmtp_smtpc *c)
{
    if (c->st != S_READY || c->txn || c->qlen > 0)
        return -EINVAL;
    if (!send_cmd(c, K_QUIT, "QUIT", NULL))
        return -ENOBUFS;
    c->st = S_QUIT;
    return 0;
}

int cmtp_smtpc_tls_done(struct cmtp_smtpc *c)
{
    if (c->st != S_TLS)
        return -EINVAL;
    c->tls_active = true;
    c->have_ext = false;
    memset(&c->ext, 0, sizeof(c->ext));
    c->line_len = 0;
    c->line_cr = false;
    c->in_reply = false;
    if (!send_cmd(c, c->cfg.mode == CMTP_SMTPC_LMTP ? K_LHLO : K_EHLO,
                  c->cfg.mode == CMTP_SMTPC_LMTP ? "LHLO" : "EHLO", c->helo))
        return -ENOBUFS;
    c->st = S_HELLO;
    return 0;
}

void cmtp_smtpc_abort(struct cmtp_smtpc *c, const char *why)
{
    struct why w;
    if (c->st == S_CLOSED || c->st == S_ERROR)
        return;
    local_why(&w, CMTP_SMTPC_STAGE_SESSION, why != NULL ? why : "connection", NULL);
    terminal(c, CMTP_SMTPC_CLOSED, &w);
}

/* ---- replies ---- */

/* ready makes the session ready: READY, then the begun transaction starts. */
static int ready(struct cmtp_smtpc *c, struct cmtp_smtpc_event *ev)
{
    c->st = S_READY;
    push(c, CMTP_SMTPC_READY);
    if (c->txn)
        start_txn(c);
    return pop(c, ev);
}

static int hello_done(struct cmtp_smtpc *c, struct cmtp_smtpc_event *ev)
{
    if (!c->tls_active && c->cfg.tls != CMTP_SMTPC_TLS_NONE && c->ext.starttls) {
        if (!send_cmd(c, K_STARTTLS, "STARTTLS", NULL))
            return protocol_error(c, ev, "output-full");
        c->st = S_STARTTLS;
        return EV_CONTINUE;
    }
    if (!c->tls_active && c->cfg.tls == CMTP_SMTPC_TLS_REQUIRE) {
        struct why w;
        local_why(&w, CMTP_SMTPC_STAGE_SESSION, "starttls-unavailable", "4.7.0");
        return fail_session(c, &w, ev);
    }
    return ready(c, ev);
}

/* ehlo_line records one line of a 250 EHLO/LHLO reply into |c->ext_new|. */
static void ehlo_line(struct cmtp_smtpc *c, const char *s, size_t n, bool first)
{
    struct cmtp_smtpc_ext *x = &c->ext_new;
    size_t k = 0;
    while (k < n && s[k] != ' ')
        k++;
    if (first) {
        memset(x, 0, sizeof(*x));
        x->esmtp = true;
        size_t j = 0;
        for (size_t i = 0; i < k && j < CMTP_SMTPC_HELO_MAX; i++) {
            unsigned char b = (unsigned char)s[i];
            x->host[j++] = (b > 0x20 && b < 0x7f) ? (char)b : '?';
        }
        x->host[j] = '\0';
        return;
    }
#define KW(name) (k == sizeof(name) - 1 && strncasecmp(s, name, k) == 0)
    if (KW("PIPELINING")) {
        x->pipelining = true;
    } else if (KW("STARTTLS")) {
        x->starttls = true;
    } else if (KW("8BITMIME")) {
        x->eightbitmime = true;
    } else if (KW("SMTPUTF8")) {
        x->smtputf8 = true;
    } else if (KW("CHUNKING")) {
        x->chunking = true;
    } else if (KW("BINARYMIME")) {
        x->binarymime = true;
    } else if (KW("ENHANCEDSTATUSCODES")) {
        x->enhancedstatuscodes = true;
    } else if (KW("SIZE")) {
        uint64_t v = 0;
        x->size = true;
        x->size_max = 0;
        if (k < n && cmtp_parse_u64(&v, s + k + 1, n - k - 1) == CMTP_NUM_OK)
            x->size_max = v;
    }
#undef KW
}

static int on_data_reply(struct cmtp_smtpc *c, unsigned code, struct cmtp_smtpc_event *ev)
{
    if (code == 354) {
        if (c->accepted == 0) {
            /* Every recipient was refused (or MAIL was): the server is in DATA mode anyway. */
            if (c->cfg.mode == CMTP_SMTPC_LMTP)
                return protocol_error(c, ev, "unexpected-354");
            if (!append(c, ".\r\n", 3))
                return protocol_error(c, ev, "output-full");
            fifo_push(c, K_DOT_IGNORE, 1);
            return EV_CONTINUE;
        }
        c->st = S_BODY;
        cmtp_dotstuff_init(&c->ds);
        push(c, CMTP_SMTPC_BODY_READY);
        return pop(c, ev);
    }
    if (code / 100 != 4 && code / 100 != 5)
        return protocol_error(c, ev, "unexpected-reply");
    if (c->accepted > 0) {
        reply_why(&c->w[W_DATA], &c->cur, CMTP_SMTPC_STAGE_DATA);
        decide_all(c, true, class_result(code), W_DATA);
    }
    return EV_CONTINUE;
}

static int on_dot_reply(struct cmtp_smtpc *c, struct cmd *h, unsigned code,
                        struct cmtp_smtpc_event *ev)
{
    if (code / 100 == 3)
        return protocol_error(c, ev, "unexpected-reply");
    if (c->cfg.mode == CMTP_SMTPC_SMTP) {
        fifo_pop(c);
        c->dot_done = true;
        reply_why(&c->w[W_DATA], &c->cur, CMTP_SMTPC_STAGE_DOT);
        decide_all(c, true, class_result(code), W_DATA);
        return EV_CONTINUE;
    }
    /* LMTP: one reply per accepted recipient, in RCPT order; a BDAT LAST sent behind an envelope
     * that had none accepted gets one reply, its refusal. */
    if (h->n == DOT_UNCOUNTED) {
        h->n = (uint32_t)c->accepted;
        if (h->n == 0) {
            fifo_pop(c);
            c->dot_done = true;
            return EV_CONTINUE;
        }
    }
    while (c->lmtp_scan < c->msg.nrcpt && c->rs[c->lmtp_scan].st != R_ACCEPTED)
        c->lmtp_scan++;
    if (c->lmtp_scan == c->msg.nrcpt)
        return protocol_error(c, ev, "unexpected-reply");
    size_t i = c->lmtp_scan++;
    if (--h->n == 0) {
        fifo_pop(c);
        c->dot_done = true;
    }
    return report_now(c, i, class_result(code), CMTP_SMTPC_STAGE_DOT, ev);
}

/* bdat_body_ready starts a BDAT transaction's body once every envelope command was answered: the
 * body is sent when a recipient was accepted (BODY_READY), else the transaction ends without it.
 */
static void bdat_body_ready(struct cmtp_smtpc *c)
{
    if (!c->bdat || c->st != S_TXN || !c->txn_started || c->done_queued || c->data_gen ||
        !c->mail_gen || c->rcpt_gen < c->msg.nrcpt || c->txn_inflight > 0)
        return;
    if (c->accepted > 0)
        bdat_body_start(c);
    else
        c->data_gen = true; /* no body: the transaction ends without it */
}

static int on_reply(struct cmtp_smtpc *c, struct cmtp_smtpc_event *ev)
{
    unsigned code = c->cur.code, cls = code / 100;
    struct why w;
    int e = EV_CONTINUE;
    if (code == 421) {
        reply_why(&w, &c->cur, CMTP_SMTPC_STAGE_SESSION);
        terminal(c, CMTP_SMTPC_CLOSED, &w);
        return pop(c, ev);
    }
    if (c->f_len == 0)
        return protocol_error(c, ev, "unexpected-reply");
    struct cmd *h = &c->fifo[c->f_head];
    if (cls == 3 && h->kind != K_DATA)
        return protocol_error(c, ev, "unexpected-reply");
    switch (h->kind) {
    case K_GREETING:
        fifo_pop(c);
        if (cls == 2) {
            if (code != 220)
                return protocol_error(c, ev, "bad-greeting");
            bool lmtp = c->cfg.mode == CMTP_SMTPC_LMTP;
            if (!send_cmd(c, lmtp ? K_LHLO : K_EHLO, lmtp ? "LHLO" : "EHLO", c->helo))
                return protocol_error(c, ev, "output-full");
            c->st = S_HELLO;
            return EV_CONTINUE;
        }
        reply_why(&w, &c->cur, CMTP_SMTPC_STAGE_SESSION);
        return fail_session(c, &w, ev);
    case K_EHLO:
    case K_LHLO:
    case K_HELO:
        fifo_pop(c);
        if (code == 250) {
            if (h->kind == K_HELO) {
                char host[CMTP_SMTPC_HELO_MAX + 1];
                memcpy(host, c->ext_new.host, sizeof(host));
                memset(&c->ext_new, 0, sizeof(c->ext_new));
                memcpy(c->ext_new.host, host, sizeof(host));
            }
            c->ext = c->ext_new;
            c->have_ext = true;
            return hello_done(c, ev);
        }
        if (cls == 2)
            return protocol_error(c, ev, "bad-reply");
        if (h->kind == K_EHLO && cls == 5) {
            if (!send_cmd(c, K_HELO, "HELO", c->helo))
                return protocol_error(c, ev, "output-full");
            return EV_CONTINUE;
        }
        reply_why(&w, &c->cur, CMTP_SMTPC_STAGE_SESSION);
        return fail_session(c, &w, ev);
    case K_STARTTLS:
        fifo_pop(c);
        if (cls == 2) {
            if (code != 220)
                return protocol_error(c, ev, "bad-reply");
            if (c->more_input || c->line_len > 0)
                return protocol_error(c, ev, "starttls-injection");
            c->st = S_TLS;
            push(c, CMTP_SMTPC_START_TLS);
            return pop(c, ev);
        }
        if (c->cfg.tls == CMTP_SMTPC_TLS_REQUIRE) {
            reply_why(&w, &c->cur, CMTP_SMTPC_STAGE_SESSION);
            return fail_session(c, &w, ev);
        }
        return ready(c, ev); /* TLS_MAY: carry on in plaintext */
    case K_RSET:
        fifo_pop(c);
        if (cls != 2) {
            reply_why(&w, &c->cur, CMTP_SMTPC_STAGE_SESSION);
            return fail_session(c, &w, ev);
        }
        c->need_rset = false;
        break;
    case K_MAIL:
        fifo_pop(c);
        c->mail_replied = true;
        if (cls == 2) {
            c->mail_ok = true;
        } else {
            reply_why(&c->w[W_MAIL], &c->cur, CMTP_SMTPC_STAGE_MAIL);
            decide_all(c, false, class_result(code), W_MAIL);
        }
        break;
    case K_RCPT: {
        size_t i = h->n;
        fifo_pop(c);
        if (c->rs == NULL || c->rs[i].st != R_PENDING)
            break; /* decided already (MAIL refused) */
        if (cls == 2) {
            c->rs[i].st = R_ACCEPTED;
            c->accepted++;
        } else {
            e = report_now(c, i, class_result(code), CMTP_SMTPC_STAGE_RCPT, ev);
        }
        break;
    }
    case K_DATA:
        fifo_pop(c);
        e = on_data_reply(c, code, ev);
        if (e != EV_CONTINUE)
            return e;
        break;
    case K_BDAT:
        fifo_pop(c);
        /* A chunk sent behind an envelope that had no recipient accepted is refused: nothing is
         * left to decide, and the session goes on. */
        if (cls != 2 && c->accepted > 0) {
            /* The transaction failed with a chunk (RFC 3030 4.2): its recipients take this
             * reply, and the session ends, rather than waiting for the replies to the chunks
             * still in the pipe. */
            reply_why(&c->w[W_DATA], &c->cur, CMTP_SMTPC_STAGE_DATA);
            decide_all(c, true, class_result(code), W_DATA);
            reply_why(&w, &c->cur, CMTP_SMTPC_STAGE_SESSION);
            terminal(c, CMTP_SMTPC_CLOSED, &w);
            return pop(c, ev);
        }
        break;
    case K_DOT:
        e = on_dot_reply(c, h, code, ev);
        if (c->st == S_ERROR)
            return e;
        break;
    case K_DOT_IGNORE:
        fifo_pop(c);
        c->dot_done = true;
        break;
    case K_QUIT:
        fifo_pop(c);
        reply_why(&w, &c->cur, CMTP_SMTPC_STAGE_SESSION);
        terminal(c, CMTP_SMTPC_CLOSED, &w);
        return pop(c, ev);
    default:
        return protocol_error(c, ev, "unexpected-reply");
    }
    bdat_body_ready(c);
    maybe_done(c);
    if (e != EV_CONTINUE)
        return e;
    return pop(c, ev);
}

/* on_line handles one reply line (CRLF stripped). Returns an event, or EV_CONTINUE. */
static int on_line(struct cmtp_smtpc *c, const char *s, size_t n, struct cmtp_smtpc_event *ev)
{
    if (n < 3 || s[0] < '2' || s[0] > '5' || s[1] < '0' || s[1] > '5' || s[2] < '0' || s[2] > '9')
        return protocol_error(c, ev, "bad-reply");
    if (n > 3 && s[3] != ' ' && s[3] != '-')
        return protocol_error(c, ev, "bad-reply");
    unsigned code =
        (unsigned)(s[0] - '0') * 100 + (unsigned)(s[1] - '0') * 10 + (unsigned)(s[2] - '0');
    bool last = n == 3 || s[3] == ' ';
    const char *t = n > 4 ? s + 4 : s + n;
    size_t tn = n > 4 ? n - 4 : 0;
    bool first = !c->in_reply;
    if (first) {
        memset(&c->cur, 0, sizeof(c->cur));
        c->cur.code = code;
        c->text_len = 0;
        c->reply_lines = 0;
        c->in_reply = true;
    } else if (code != c->cur.code) {
        return protocol_error(c, ev, "bad-reply");
    }
    if (++c->reply_lines > CMTP_SMTPC_REPLY_LINES_MAX)
        return protocol_error(c, ev, "reply-too-long");
    if (code == 250 && c->f_len > 0 &&
        (c->fifo[c->f_head].kind == K_EHLO || c->fifo[c->f_head].kind == K_LHLO ||
         c->fifo[c->f_head].kind == K_HELO))
        ehlo_line(c, t, tn, first);
    /* The enhanced status code of the first line is kept apart; the same code repeated at the
     * start of a continuation line is not repeated in the text. */
    size_t k = enh_parse(t, tn, code / 100);
    if (first && k > 0) {
        memcpy(c->cur.enh, t, k);
        c->cur.enh[k] = '\0';
    }
    if (k > 0 && (first || (k == strlen(c->cur.enh) && memcmp(t, c->cur.enh, k) == 0))) {
        t += k;
        tn -= k;
        if (tn > 0) {
            t++;
            tn--;
        }
    }
    append_text(c, t, tn);
    if (!last)
        return EV_CONTINUE;
    c->in_reply = false;
    return on_reply(c, ev);
}

enum cmtp_smtpc_ev cmtp_smtpc_feed(struct cmtp_smtpc *c, const uint8_t *in, size_t len,
                                   size_t *consumed, struct cmtp_smtpc_event *ev)
{
    size_t off = 0;
    if (in == NULL)
        len = 0;
    memset(ev, 0, sizeof(*ev));
    ev->enhanced = ev->text = ev->status = "";
    *consumed = 0;
    int e = pop(c, ev);
    if (e != EV_CONTINUE)
        return (enum cmtp_smtpc_ev)e;
    if (c->st == S_CLOSED || c->st == S_ERROR) {
        fill_why(ev, &c->closed);
        return c->st == S_CLOSED ? CMTP_SMTPC_CLOSED : CMTP_SMTPC_PROTOCOL_ERROR;
    }
    while (off < len) {
        bool complete = false;
        while (off < len) {
            uint8_t b = in[off++];
            if (c->line_cr) {
                if (b != '\n') {
                    *consumed = off;
                    return (enum cmtp_smtpc_ev)protocol_error(c, ev, "bad-line");
                }
                complete = true;
                break;
            }
            if (b == '\r') {
                c->line_cr = true;
            } else if (b == '\n' || b == 0) {
                *consumed = off;
                return (enum cmtp_smtpc_ev)protocol_error(c, ev, "bad-line");
            } else if (c->line_len >= CMTP_SMTPC_REPLY_LINE_MAX - 2) {
                *consumed = off;
                return (enum cmtp_smtpc_ev)protocol_error(c, ev, "reply-too-long");
            } else {
                c->line[c->line_len++] = (char)b;
            }
        }
        *consumed = off;
        if (!complete)
            break;
        size_t n = c->line_len;
        c->line_len = 0;
        c->line_cr = false;
        c->more_input = off < len;
        e = on_line(c, c->line, n, ev);
        if (e != EV_CONTINUE)
            return (enum cmtp_smtpc_ev)e;
    }
    *consumed = off;
    return CMTP_SMTPC_NEED_INPUT;
}

/* ---- state ---- */

enum cmtp_smtpc_state cmtp_smtpc_state(const struct cmtp_smtpc *c)
{
    switch (c->st) {
    case S_GREETING:
    case S_HELLO:
    case S_STARTTLS:
        return CMTP_SMTPC_STATE_CONNECT;
    case S_TLS:
        return CMTP_SMTPC_STATE_TLS;
    case S_READY:
        return CMTP_SMTPC_STATE_READY;
    case S_TXN:
        for (unsigned i = 0; i < c->f_len; i++) {
            uint8_t k = c->fifo[(c->f_head + i) % FIFO_MAX].kind;
            if (k == K_DOT)
                return CMTP_SMTPC_STATE_END;
        }
        return CMTP_SMTPC_STATE_ENVELOPE;
    case S_BODY:
        return CMTP_SMTPC_STATE_BODY;
    case S_QUIT:
        return CMTP_SMTPC_STATE_QUIT;
    default:
        return CMTP_SMTPC_STATE_CLOSED;
    }
}

uint32_t cmtp_smtpc_timeout_ms(const struct cmtp_smtpc *c)
{
    if (c->st == S_CLOSED || c->st == S_ERROR)
        return 0;
    if (c->st == S_BODY)
        return 180000;
    if (c->f_len == 0)
        return 0;
    switch (c->fifo[c->f_head].kind) {
    case K_DATA:
        return 120000;
    case K_DOT:
    case K_DOT_IGNORE:
        return 600000;
    default:
        return 300000;
    }
}

const struct cmtp_smtpc_ext *cmtp_smtpc_ext(const struct cmtp_smtpc *c)
{
    return c->have_ext ? &c->ext : NULL;
}

bool cmtp_smtpc_tls_active(const struct cmtp_smtpc *c)
{
    return c->tls_active;
}
