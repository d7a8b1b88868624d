/* tests/fuzz/fuzz_client.c — libFuzzer target for the CMTP/1 client state machine: arbitrary
 * server bytes split at fuzzer-chosen points; commands stay well formed, results split-proof. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/client.h"
#include "core/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            abort();                                                                               \
    } while (0)

struct run {
    struct cmtp_client *c;
    const struct cmtp_envelope *env;
    const struct cmtp_addr *rcpts;
    size_t nrcpt;
    uint64_t h; /* hash of events and output */
    int txns, ended;
};

static void mix(struct run *R, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        R->h ^= b[i];
        R->h *= 0x100000001b3ull;
    }
}

/* drain takes the client's output and checks that it is whole, valid command lines. */
static void drain(struct run *R)
{
    for (;;) {
        const uint8_t *p;
        size_t n = cmtp_client_output(R->c, &p);
        if (n == 0)
            return;
        CHECK(n <= CMTP_CLI_OUT_MAX && p[n - 2] == '\r' && p[n - 1] == '\n');
        size_t start = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            if (p[i] != '\r')
                continue;
            CHECK(p[i + 1] == '\n');
            struct cmtp_cmd cmd;
            size_t len = i - start;
            CHECK(len + 2 <= CMTP_LINE_MAX);
            CHECK(memchr(p + start, '\n', len) == NULL && memchr(p + start, 0, len) == NULL);
            CHECK(cmtp_utf8_valid((const char *)p + start, len));
            CHECK(cmtp_cmd_split(&cmd, (const char *)p + start, len) == CMTP_PERR_OK);
            start = i + 2;
            i++;
        }
        CHECK(start == n);
        mix(R, p, n);
        cmtp_client_output_consume(R->c, n);
    }
}

static void event(struct run *R, enum cmtp_cli_ev e, const struct cmtp_cli_event *ev)
{
    mix(R, &e, sizeof(e));
    CHECK(ev->status != NULL && ev->text != NULL && ev->qid != NULL && ev->next_hop != NULL);
    CHECK(strlen(ev->text) <= CMTP_TEXT_MAX && strlen(ev->status) <= CMTP_STATUS_MAX);
    mix(R, ev->status, strlen(ev->status));
    mix(R, &ev->code, sizeof(ev->code));
    switch (e) {
    case CMTP_CLI_GREETING:
        CHECK(ev->greeting != NULL && ev->greeting->chunk_max >= 1);
        CHECK(cmtp_client_begin(R->c, R->env, R->rcpts, R->nrcpt) == 0);
        break;
    case CMTP_CLI_RCPT_RESULT:
        CHECK(ev->rcpt_index < R->nrcpt);
        mix(R, &ev->rcpt_index, sizeof(ev->rcpt_index));
        mix(R, &ev->dropped, sizeof(ev->dropped));
        break;
    case CMTP_CLI_BODY_READY: {
        CHECK(ev->rcpt_ready >= 1 && ev->rcpt_ready <= R->nrcpt);
        const struct cmtp_greeting *g = cmtp_client_greeting(R->c);
        uint64_t left = R->env->size;
        while (left > 0) {
            size_t n = left < g->chunk_max ? (size_t)left : g->chunk_max;
            CHECK(cmtp_client_body_header(R->c, n) == 0);
            drain(R); /* the contract: output first, then the n octets (not sent here) */
            left -= n;
        }
        CHECK(cmtp_client_end(R->c) == 0);
        break;
    }
    case CMTP_CLI_TXN_DONE:
        R->txns++;
        mix(R, &ev->outcome, sizeof(ev->outcome));
        if (ev->outcome == CMTP_CLI_ACCEPTED)
            CHECK(ev->qid[0] != '\0' && strlen(ev->qid) <= CMTP_QID_MAX);
        if (cmtp_client_state(R->c) == CMTP_CLI_STATE_READY) {
            if (R->txns < 4)
                CHECK(cmtp_client_begin(R->c, R->env, R->rcpts, R->nrcpt) == 0);
            else
                CHECK(cmtp_client_quit(R->c) == 0);
        }
        break;
    case CMTP_CLI_CLOSED:
    case CMTP_CLI_PROTOCOL_ERROR:
        R->ended = 1;
        CHECK(cmtp_client_state(R->c) == CMTP_CLI_STATE_CLOSED);
        break;
    default:
        break;
    }
}

static uint64_t run_once(const struct cmtp_client_config *cfg, const struct cmtp_envelope *env,
                         const struct cmtp_addr *rcpts, size_t nrcpt, const uint8_t *data,
                         size_t size, const uint8_t *steps, size_t nsteps)
{
    struct run R;
    memset(&R, 0, sizeof(R));
    R.h = 0xcbf29ce484222325ull;
    R.env = env;
    R.rcpts = rcpts;
    R.nrcpt = nrcpt;
    R.c = cmtp_client_new(cfg);
    CHECK(R.c != NULL);
    size_t pos = 0, k = 0;
    while (pos < size && !R.ended) {
        size_t piece = nsteps ? 1 + steps[k++ % nsteps] % 61 : size - pos;
        if (piece > size - pos)
            piece = size - pos;
        const uint8_t *p = data + pos;
        size_t left = piece;
        for (int guard = 0; guard < 100000; guard++) {
            struct cmtp_cli_event ev;
            size_t c;
            enum cmtp_cli_ev e = cmtp_client_feed(R.c, p, left, &c, &ev);
            CHECK(c <= left);
            p += c;
            left -= c;
            if (e == CMTP_CLI_NEED_INPUT) {
                CHECK(left == 0);
                break;
            }
            event(&R, e, &ev);
            drain(&R);
            if (R.ended)
                break;
        }
        pos += piece;
    }
    /* pending local events are delivered without input */
    struct cmtp_cli_event ev;
    size_t c;
    enum cmtp_cli_ev e;
    while (!R.ended && (e = cmtp_client_feed(R.c, NULL, 0, &c, &ev)) != CMTP_CLI_NEED_INPUT) {
        event(&R, e, &ev);
        drain(&R);
    }
    cmtp_client_free(R.c);
    return R.h;
}

static bool no_relays(void *arg, const struct cmtp_envelope *env, const struct cmtp_addr *rcpt,
                      const char *next_hop)
{
    (void)arg;
    (void)env;
    (void)rcpt;
    (void)next_hop;
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    /* byte 0: policy and hook; byte 1: number of split-step bytes */
    uint8_t f = data[0];
    size_t nsteps = data[1] % 16;
    if (size < 2 + nsteps)
        return 0;
    const uint8_t *steps = data + 2;
    data += 2 + nsteps;
    size -= 2 + nsteps;

    static const char *const rc[] = {"<a@b.example>", "<b@mx.b.example>", "<c@c.example>"};
    struct cmtp_addr rcpts[3];
    struct cmtp_envelope *env = calloc(1, sizeof(*env));
    CHECK(env != NULL);
    cmtp_policy_init(&env->policy);
    CHECK(cmtp_addr_parse(&env->from, "<s@a.example>", 13, 0) == CMTP_ADDR_OK);
    memcpy(env->txid, "fuzz-txn-0123456", 17);
    env->size = 1 + (f >> 4);
    env->policy.relay = (enum cmtp_relay)(f % 3);
    env->policy.hops = (f >> 2) & 1;
    for (int i = 0; i < 3; i++)
        CHECK(cmtp_addr_parse(&rcpts[i], rc[i], strlen(rc[i]), 0) == CMTP_ADDR_OK);
    struct cmtp_client_config cfg = {0};
    if (f & 8)
        cfg.allow_relay = no_relays;
    size_t n = 1 + (f >> 5) % 3;

    uint64_t whole = run_once(&cfg, env, rcpts, n, data, size, NULL, 0);
    if (nsteps > 0)
        CHECK(run_once(&cfg, env, rcpts, n, data, size, steps, nsteps) == whole);
    free(env);
    return 0;
}
