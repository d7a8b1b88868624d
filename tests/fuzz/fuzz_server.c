/* tests/fuzz/fuzz_server.c — libFuzzer target for the CMTP/1 server state machine: arbitrary
 * peer bytes split at fuzzer-chosen points, answers chosen by the fuzzer; checks its invariants. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/proto.h"
#include "core/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            abort();                                                                               \
    } while (0)

struct run {
    struct cmtp_server *s;
    uint64_t out_hash; /* of every reply octet, to compare runs */
    size_t out_len;
    uint32_t rng;
    uint64_t body_off, body_total;
    uint64_t size; /* SIZE of the transaction in progress */
    int closed;
};

static uint32_t rnd(struct run *R)
{
    uint32_t x = R->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    R->rng = x;
    return x;
}

/* drain appends pending replies and checks that each is one well-formed reply line. */
static void drain(struct run *R)
{
    const uint8_t *p;
    size_t n = cmtp_server_output(R->s, &p);
    CHECK(n <= CMTP_SRV_OUT_MAX);
    if (n == 0)
        return;
    CHECK(p[n - 1] == '\n' && p[n - 2] == '\r'); /* only whole lines are ever pending */
    size_t start = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (p[i] == '\r') {
            CHECK(p[i + 1] == '\n');
            struct cmtp_reply r;
            size_t len = i - start;
            CHECK(len + 2 <= CMTP_LINE_MAX);
            CHECK(cmtp_utf8_valid((const char *)p + start, len));
            CHECK(memchr(p + start, '\n', len) == NULL && memchr(p + start, 0, len) == NULL);
            CHECK(cmtp_reply_parse(&r, (const char *)p + start, len) == 0);
            start = i + 2;
            i++;
        }
    }
    CHECK(start == n);
    for (size_t i = 0; i < n; i++) {
        R->out_hash ^= p[i];
        R->out_hash *= 0x100000001b3ull;
    }
    R->out_len += n;
    cmtp_server_output_consume(R->s, n);
}

static const char *const hops[] = {"mx.example", "relay.other.example", "a.b.example",
                                   "xn--bcher-kva.example"};

/* answer answers an event with fuzzer-driven choices (drawn only on MAIL/RCPT/END, so that the
 * draws do not depend on how BODY data was split). */
static void answer(struct run *R, enum cmtp_srv_ev e, const struct cmtp_srv_event *ev)
{
    switch (e) {
    case CMTP_SRV_MAIL:
        CHECK(ev->env != NULL && ev->env->size >= 1);
        R->size = ev->env->size;
        R->body_off = 0;
        CHECK(cmtp_server_mail_reply(R->s, (enum cmtp_srv_mail_answer)(rnd(R) % 4)) == 0);
        break;
    case CMTP_SRV_RCPT: {
        CHECK(ev->rcpt != NULL && ev->rcpt_index >= 1);
        CHECK(cmtp_server_rcpt(R->s, ev->rcpt_index) != NULL);
        uint32_t d = rnd(R) % 4;
        CHECK(cmtp_server_rcpt_reply(R->s, (enum cmtp_srv_rcpt_answer)d, hops[rnd(R) % 4]) == 0);
        break;
    }
    case CMTP_SRV_BODY:
        CHECK(ev->len > 0 && ev->offset == R->body_off);
        R->body_off += ev->len;
        CHECK(R->body_off <= R->size); /* never more than SIZE */
        R->body_total += ev->len;
        break;
    case CMTP_SRV_END: {
        CHECK(R->body_off == ev->env->size);
        CHECK(ev->rcpt_accepted >= 1 && ev->rcpt_accepted <= ev->rcpt_count);
        struct cmtp_srv_end_answer a = {.result = (enum cmtp_srv_end_result)(rnd(R) % 4),
                                        .qid = "Q1",
                                        .dup = rnd(R) & 1,
                                        .rcpts = ev->rcpt_accepted};
        CHECK(cmtp_server_end_reply(R->s, &a) == 0);
        R->body_off = 0;
        break;
    }
    case CMTP_SRV_RESET:
        R->body_off = 0;
        break;
    default:
        break;
    }
}

/* run_once feeds |data| in pieces drawn from |steps| (none: whole), answering every event. */
static void run_once(struct run *R, const struct cmtp_server_config *cfg, uint32_t seed,
                     const uint8_t *data, size_t size, const uint8_t *steps, size_t nsteps)
{
    memset(R, 0, sizeof(*R));
    R->out_hash = 0xcbf29ce484222325ull;
    R->rng = seed | 1;
    R->s = cmtp_server_new(cfg);
    CHECK(R->s != NULL);
    cmtp_server_start(R->s);
    drain(R);
    size_t pos = 0, k = 0;
    while (pos < size && !R->closed) {
        size_t piece = nsteps ? 1 + steps[k++ % nsteps] % 61 : size - pos;
        if (piece > size - pos)
            piece = size - pos;
        const uint8_t *p = data + pos;
        size_t left = piece;
        for (int guard = 0; guard < 1000000; guard++) {
            struct cmtp_srv_event ev;
            size_t c;
            enum cmtp_srv_ev e = cmtp_server_feed(R->s, p, left, &c, &ev);
            CHECK(c <= left);
            p += c;
            left -= c;
            if (e == CMTP_SRV_CLOSE) {
                R->closed = 1;
                CHECK(cmtp_server_state(R->s) == CMTP_SRV_STATE_CLOSED);
                CHECK(cmtp_server_feed(R->s, p, left, &c, &ev) == CMTP_SRV_CLOSE && c == 0);
                break;
            }
            CHECK(e != CMTP_SRV_BLOCKED); /* every event is answered at once */
            answer(R, e, &ev);
            drain(R);
            if (e == CMTP_SRV_NEED_INPUT) {
                CHECK(left == 0);
                break;
            }
        }
        pos += piece;
    }
    /* end of input: the same state whatever the split; ask for a shutdown or time out */
    if (!R->closed && (seed >> 8) % 4 == 0) {
        enum cmtp_srv_ev e = cmtp_server_shutdown(R->s);
        CHECK(e == CMTP_SRV_CLOSE || e == CMTP_SRV_NEED_INPUT);
    } else if (!R->closed && (seed & 0x10)) {
        CHECK(cmtp_server_timeout(R->s) == CMTP_SRV_CLOSE);
    }
    drain(R);
    cmtp_server_free(R->s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6)
        return 0;
    /* byte 0: limits; bytes 1..4: answer seed; byte 5: number of split-step bytes */
    struct cmtp_server_config cfg = {.host = "mx.example"};
    uint8_t f = data[0];
    if (f & 1)
        cfg.rcpt_max = 1 + (f >> 1) % 4;
    if (f & 2)
        cfg.chunk_max = 1 + (f >> 2) % 64;
    if (f & 4)
        cfg.size_max = 1 + (f >> 3) % 200;
    if (f & 8)
        cfg.txn_max = 1 + (f >> 4) % 3;
    if (f & 16)
        cfg.errors_max = 1 + (f >> 5) % 4;
    if (f & 64)
        cfg.line_max = (f & 32) ? CMTP_LINE_MIN : 2 * CMTP_LINE_MIN; /* [limits] line_max */
    uint32_t seed = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 |
                    (uint32_t)data[4] << 24;
    size_t nsteps = data[5] % 16;
    if (size < 6 + nsteps)
        return 0;
    const uint8_t *steps = data + 6;
    data += 6 + nsteps;
    size -= 6 + nsteps;

    struct run a, b;
    run_once(&a, &cfg, seed, data, size, NULL, 0);
    if (nsteps > 0) {
        /* the same input split elsewhere gives the same replies and the same body octets */
        run_once(&b, &cfg, seed, data, size, steps, nsteps);
        CHECK(a.out_len == b.out_len && a.out_hash == b.out_hash);
        CHECK(a.body_total == b.body_total);
    }
    return 0;
}
