/* tests/fuzz/fuzz_smtpc.c — libFuzzer target for the SMTP/LMTP delivery client: arbitrary server
 * octets split at fuzzer-chosen points; every recipient of every transaction gets exactly one
 * result, texts stay sanitized, and the client always ends (DATA and BDAT bodies alike). (The
 * outcome may depend on the split: a reply that arrives before its command was generated is a
 * protocol error in one read and an answer in another; both are safe.) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/smtp_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            abort();                                                                               \
    } while (0)

#define NRCPT 4

struct run {
    struct cmtp_smtpc *c;
    uint64_t hash; /* of every event and every octet sent */
    int results[NRCPT];
    int done, closed, txns;
    size_t body_off;
    bool in_body;
};

static uint64_t mix(uint64_t h, uint64_t v)
{
    return (h ^ v) * 0x100000001b3ull;
}

static const uint8_t body[] = "Subject: x\r\n\r\n.\r\nline\n.\rend";

static void drain(struct run *R)
{
    const uint8_t *p;
    size_t n;
    for (int i = 0; i < 64 && (n = cmtp_smtpc_output(R->c, &p)) > 0; i++) {
        CHECK(n <= CMTP_SMTPC_OUT_MAX);
        for (size_t k = 0; k < n; k++)
            R->hash = mix(R->hash, p[k]);
        cmtp_smtpc_output_consume(R->c, n);
    }
    if (R->in_body) {
        size_t used;
        CHECK(cmtp_smtpc_body(R->c, body + R->body_off, sizeof(body) - 1 - R->body_off, &used) ==
              0);
        R->body_off += used;
        if (R->body_off == sizeof(body) - 1 && cmtp_smtpc_body_end(R->c) == 0)
            R->in_body = false;
        while ((n = cmtp_smtpc_output(R->c, &p)) > 0) {
            for (size_t k = 0; k < n; k++)
                R->hash = mix(R->hash, p[k]);
            cmtp_smtpc_output_consume(R->c, n);
        }
    }
}

static void run_once(struct run *R, const struct cmtp_smtpc_config *cfg, bool binary, bool strict,
                     const uint8_t *data, size_t size, const uint8_t *steps, size_t nsteps)
{
    struct cmtp_addr from, rcpts[NRCPT];
    memset(R, 0, sizeof(*R));
    R->hash = 0xcbf29ce484222325ull;
    R->c = cmtp_smtpc_new(cfg);
    CHECK(R->c != NULL);
    CHECK(cmtp_addr_parse(&from, "<a@a.example>", 13, 0) == CMTP_ADDR_OK);
    for (int i = 0; i < NRCPT; i++) {
        char s[] = "<rX@b.example>";
        s[2] = (char)('0' + i);
        CHECK(cmtp_addr_parse(&rcpts[i], s, sizeof(s) - 1, 0) == CMTP_ADDR_OK);
    }
    struct cmtp_smtpc_msg msg = {.from = &from,
                                 .rcpts = rcpts,
                                 .nrcpt = NRCPT,
                                 .size = 30,
                                 .eight_bit = false,
                                 .binary = binary,
                                 .body_strict = strict};
    CHECK(cmtp_smtpc_begin(R->c, &msg) == 0);
    size_t pos = 0, k = 0;
    bool eof = false;
    while (!R->closed) {
        size_t piece = nsteps ? 1 + steps[k++ % nsteps] % 61 : size - pos;
        if (piece > size - pos)
            piece = size - pos;
        if (piece == 0) {
            if (eof)
                break;
            eof = true;
            cmtp_smtpc_abort(R->c, "eof"); /* the server closed */
        }
        const uint8_t *p = data + pos;
        size_t left = piece;
        for (int guard = 0;; guard++) {
            CHECK(guard < 100000);
            struct cmtp_smtpc_event ev;
            size_t used;
            drain(R);
            enum cmtp_smtpc_ev e = cmtp_smtpc_feed(R->c, p, left, &used, &ev);
            CHECK(used <= left);
            p += used;
            left -= used;
            R->hash = mix(R->hash, (uint64_t)e);
            CHECK(ev.text != NULL && ev.status != NULL && ev.enhanced != NULL);
            CHECK(strlen(ev.text) <= CMTP_TEXT_MAX);
            CHECK(cmtp_utf8_valid(ev.text, strlen(ev.text)));
            for (const char *t = ev.text; *t != '\0'; t++)
                CHECK((unsigned char)*t >= 0x20 && *t != 0x7f);
            if (e == CMTP_SMTPC_NEED_INPUT) {
                CHECK(left == 0);
                break;
            }
            switch (e) {
            case CMTP_SMTPC_START_TLS:
                CHECK(cmtp_smtpc_tls_done(R->c) == 0);
                break;
            case CMTP_SMTPC_RCPT_RESULT:
                CHECK(ev.rcpt_index < NRCPT);
                R->results[ev.rcpt_index]++;
                CHECK(R->results[ev.rcpt_index] <= R->txns + 1);
                R->hash = mix(R->hash, ev.rcpt_index * 4 + ev.result);
                R->hash = mix(R->hash, ev.code);
                break;
            case CMTP_SMTPC_BODY_READY:
                R->in_body = true;
                R->body_off = 0;
                break;
            case CMTP_SMTPC_DONE:
                CHECK(ev.delivered + ev.temp + ev.perm == NRCPT);
                R->txns++;
                for (int i = 0; i < NRCPT; i++)
                    CHECK(R->results[i] == R->txns);
                R->done++;
                /* a second transaction on the same session, then QUIT */
                if (R->txns == 1 && cmtp_smtpc_state(R->c) == CMTP_SMTPC_STATE_READY)
                    CHECK(cmtp_smtpc_begin(R->c, &msg) == 0);
                else if (cmtp_smtpc_state(R->c) == CMTP_SMTPC_STATE_READY)
                    CHECK(cmtp_smtpc_quit(R->c) == 0);
                break;
            case CMTP_SMTPC_CLOSED:
            case CMTP_SMTPC_PROTOCOL_ERROR:
                R->closed = 1;
                break;
            default:
                break;
            }
            if (R->closed)
                break;
        }
        pos += piece;
    }
    /* every begun transaction ended with one result per recipient */
    CHECK(R->closed);
    for (int i = 0; i < NRCPT; i++)
        CHECK(R->results[i] == R->txns);
    cmtp_smtpc_free(R->c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    /* byte 0: mode, TLS policy, pipelining, chunking off, strict body, binary body; byte 1:
     * number of split-step bytes */
    struct cmtp_smtpc_config cfg = {.helo = "c.example"};
    cfg.mode = (data[0] & 1) ? CMTP_SMTPC_LMTP : CMTP_SMTPC_SMTP;
    cfg.tls = (enum cmtp_smtpc_tls)((data[0] >> 1) % 3);
    cfg.no_pipelining = (data[0] & 8) != 0;
    cfg.no_chunking = (data[0] & 16) != 0;
    bool strict = (data[0] & 32) != 0;
    bool binary = (data[0] & 64) != 0;
    size_t nsteps = data[1] % 16;
    if (size < 2 + nsteps)
        return 0;
    const uint8_t *steps = data + 2;
    data += 2 + nsteps;
    size -= 2 + nsteps;
    struct run r;
    run_once(&r, &cfg, binary, strict, data, size, NULL, 0);
    if (nsteps > 0)
        run_once(&r, &cfg, binary, strict, data, size, steps, nsteps);
    return 0;
}
