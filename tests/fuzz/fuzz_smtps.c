/* tests/fuzz/fuzz_smtps.c — libFuzzer target for the ESMTP ingress state machine: arbitrary client
 * octets split at fuzzer-chosen points, answers chosen by the fuzzer; checks its invariants. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/smtp_server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            abort();                                                                               \
    } while (0)

struct run {
    struct cmtp_smtps *s;
    uint64_t out_hash, body_hash; /* of every reply octet and every body octet */
    size_t out_len;
    uint32_t rng;
    uint64_t body_off, size_max;
    uint64_t bodies;
    int closed;
    const uint8_t *in;
    size_t in_len;
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

static uint64_t hash(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* drain checks that pending output is whole reply lines: 3 digits, SP or "-", printable ASCII,
 * CRLF; never longer than 512 octets. */
static void drain(struct run *R)
{
    const uint8_t *p;
    size_t n = cmtp_smtps_output(R->s, &p);
    CHECK(n <= CMTP_SMTPS_OUT_MAX);
    if (n == 0)
        return;
    CHECK(n >= 2 && p[n - 2] == '\r' && p[n - 1] == '\n');
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r') {
            CHECK(i + 1 < n && p[i + 1] == '\n');
            size_t len = i - start;
            CHECK(len >= 4 && len + 2 <= 512);
            CHECK(p[start] >= '2' && p[start] <= '5');
            CHECK(p[start + 1] >= '0' && p[start + 1] <= '9');
            CHECK(p[start + 2] >= '0' && p[start + 2] <= '9');
            CHECK(p[start + 3] == ' ' || p[start + 3] == '-');
            for (size_t j = start; j < i; j++)
                CHECK(p[j] >= 0x20 && p[j] < 0x7f);
            start = i + 2;
            i++;
        } else {
            CHECK(p[i] != '\n');
        }
    }
    CHECK(start == n);
    R->out_hash = hash(R->out_hash, p, n);
    R->out_len += n;
    cmtp_smtps_output_consume(R->s, n);
}

/* answer answers an event with fuzzer-driven choices (drawn only on MAIL/RCPT/END, so that the
 * draws do not depend on how the input was split). */
static void answer(struct run *R, enum cmtp_smtps_ev e, const struct cmtp_smtps_event *ev,
                   const uint8_t *piece, size_t piece_len)
{
    switch (e) {
    case CMTP_SMTPS_MAIL:
        CHECK(ev->txn != NULL && ev->txn->size <= R->size_max);
        CHECK(ev->txn->policy.hops <= 32);
        R->body_off = 0;
        CHECK(cmtp_smtps_mail_reply(R->s, (enum cmtp_smtps_mail_answer)(rnd(R) % 4)) == 0);
        break;
    case CMTP_SMTPS_RCPT:
        CHECK(ev->rcpt != NULL && ev->rcpt_index >= 1 && !ev->rcpt->is_null);
        CHECK(cmtp_utf8_valid(ev->rcpt->local, ev->rcpt->local_len));
        CHECK(cmtp_smtps_rcpt_reply(R->s, (enum cmtp_smtps_rcpt_answer)(rnd(R) % 4)) == 0);
        break;
    case CMTP_SMTPS_BODY: {
        CHECK(ev->len > 0 && ev->offset == R->body_off);
        /* zero-copy: the octets lie in the input piece, except one held-back CR */
        bool inside = ev->data >= piece && ev->data + ev->len <= piece + piece_len;
        CHECK(inside || (ev->len == 1 && ev->data[0] == '\r'));
        R->body_off += ev->len;
        CHECK(R->body_off <= R->size_max);
        R->body_hash = hash(R->body_hash, ev->data, ev->len);
        break;
    }
    case CMTP_SMTPS_END: {
        CHECK(ev->txn->body_size == R->body_off);
        CHECK(ev->rcpt_count >= 1);
        struct cmtp_smtps_end_answer a = {.result = (enum cmtp_smtps_end_result)(rnd(R) % 3),
                                          .qid = "Q1"};
        CHECK(cmtp_smtps_end_reply(R->s, &a) == 0);
        R->body_off = 0;
        R->bodies++;
        R->body_hash = hash(R->body_hash, (const uint8_t *)"|", 1);
        break;
    }
    case CMTP_SMTPS_RESET:
        R->body_off = 0;
        R->body_hash = hash(R->body_hash, (const uint8_t *)"#", 1);
        break;
    case CMTP_SMTPS_STARTTLS:
        CHECK(cmtp_smtps_tls_reset(R->s) == 0);
        CHECK(cmtp_smtps_tls_active(R->s));
        break;
    default:
        break;
    }
}

static void run_once(struct run *R, const struct cmtp_smtps_config *cfg, uint32_t seed,
                     const uint8_t *data, size_t size, const uint8_t *steps, size_t nsteps)
{
    memset(R, 0, sizeof(*R));
    R->out_hash = R->body_hash = 0xcbf29ce484222325ull;
    R->rng = seed | 1;
    R->size_max = cfg->size_max ? cfg->size_max : CMTP_SIZE_MAX_DEFAULT;
    R->s = cmtp_smtps_new(cfg);
    CHECK(R->s != NULL);
    cmtp_smtps_start(R->s);
    drain(R);
    size_t pos = 0, k = 0;
    while (pos < size && !R->closed) {
        size_t piece = nsteps ? 1 + steps[k++ % nsteps] % 61 : size - pos;
        if (piece > size - pos)
            piece = size - pos;
        const uint8_t *p = data + pos;
        size_t left = piece;
        for (int guard = 0;; guard++) {
            CHECK(guard < 10000000);
            struct cmtp_smtps_event ev;
            size_t c;
            enum cmtp_smtps_ev e = cmtp_smtps_feed(R->s, p, left, &c, &ev);
            CHECK(c <= left);
            p += c;
            left -= c;
            if (e == CMTP_SMTPS_CLOSE) {
                R->closed = 1;
                drain(R);
                CHECK(cmtp_smtps_state(R->s) == CMTP_SMTPS_STATE_CLOSED);
                CHECK(cmtp_smtps_feed(R->s, p, left, &c, &ev) == CMTP_SMTPS_CLOSE && c == 0);
                break;
            }
            CHECK(e != CMTP_SMTPS_BLOCKED); /* every event is answered at once */
            answer(R, e, &ev, data + pos, piece);
            drain(R);
            if (e == CMTP_SMTPS_NEED_INPUT) {
                CHECK(left == 0);
                break;
            }
        }
        pos += piece;
    }
    if (!R->closed && (seed >> 8) % 4 == 0) {
        enum cmtp_smtps_ev e = cmtp_smtps_shutdown(R->s);
        CHECK(e == CMTP_SMTPS_CLOSE || e == CMTP_SMTPS_NEED_INPUT);
    } else if (!R->closed && (seed & 0x10)) {
        CHECK(cmtp_smtps_timeout(R->s) == CMTP_SMTPS_CLOSE);
    }
    drain(R);
    cmtp_smtps_free(R->s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6)
        return 0;
    /* byte 0: limits; bytes 1..4: answer seed; byte 5: number of split-step bytes */
    struct cmtp_smtps_config cfg = {.host = "ingress.example"};
    uint8_t f = data[0];
    if (f & 1)
        cfg.rcpt_max = 1 + (f >> 1) % 4;
    if (f & 2)
        cfg.size_max = 1 + (f >> 2) % 200;
    if (f & 4)
        cfg.txn_max = 1 + (f >> 3) % 3;
    if (f & 8)
        cfg.errors_max = 1 + (f >> 4) % 4;
    cfg.bare_lf_reject = (f & 16) != 0;
    /* STARTTLS with data behind it is refused or not depending on what one read returned, so
     * the split-invariance check runs without it. */
    cfg.tls_available = (f & 32) != 0;
    cfg.tls_required = (f & 64) != 0;
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
        run_once(&b, &cfg, seed, data, size, steps, nsteps);
        if (!cfg.tls_available) {
            /* the same input split elsewhere: the same replies, the same body octets */
            CHECK(a.out_len == b.out_len && a.out_hash == b.out_hash);
            CHECK(a.body_hash == b.body_hash && a.bodies == b.bodies);
        }
    }
    return 0;
}
