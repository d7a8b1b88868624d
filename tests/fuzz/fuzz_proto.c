/* tests/fuzz/fuzz_proto.c — libFuzzer target for the CMTP/1 codec: framing split anywhere must
 * give the same items as whole input; every parser and formatter keeps its invariants. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            abort();                                                                               \
    } while (0)

/* th is a running transcript hash: lines, merged data runs, the final error. */
struct th {
    uint64_t h;
    int in_data;
};

static void mix(struct th *t, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        t->h ^= b[i];
        t->h *= 0x100000001b3ull;
    }
}

static void mix_tag(struct th *t, char tag, size_t len)
{
    uint64_t l = len;
    mix(t, &tag, 1);
    mix(t, &l, sizeof(l));
}

/* check_line runs one complete line through every line parser. */
static void check_line(const char *line, size_t len)
{
    struct cmtp_cmd cmd;
    struct cmtp_envelope env;
    struct cmtp_addr a;
    struct cmtp_trace tr;
    uint64_t v;
    enum cmtp_perr pe = cmtp_cmd_split(&cmd, line, len);
    if (pe == CMTP_PERR_OK && cmd.args != NULL) {
        CHECK(cmd.args >= line && cmd.args + cmd.args_len == line + len);
        switch (cmd.verb) {
        case CMTP_VERB_MAIL:
            if (cmtp_mail_parse(&env, cmd.args, cmd.args_len) == CMTP_PERR_OK) {
                char out[CMTP_LINE_MAX + 1];
                /* a parsed envelope formats and parses back to the same values */
                int n = cmtp_mail_format(out, sizeof(out), &env);
                CHECK(n > 0);
                struct cmtp_cmd c2;
                struct cmtp_envelope e2;
                CHECK(cmtp_cmd_split(&c2, out, (size_t)n - 2) == CMTP_PERR_OK);
                CHECK(cmtp_mail_parse(&e2, c2.args, c2.args_len) == CMTP_PERR_OK);
                CHECK(e2.size == env.size && strcmp(e2.txid, env.txid) == 0);
                CHECK(memcmp(e2.digest, env.digest, sizeof(env.digest)) == 0);
                CHECK(cmtp_addr_equal(&e2.from, &env.from));
                CHECK(e2.policy.relay == env.policy.relay && e2.policy.hops == env.policy.hops);
            } else {
                CHECK(env.size == 0 && env.txid[0] == '\0');
            }
            break;
        case CMTP_VERB_RCPT:
            if (cmtp_rcpt_parse(&a, cmd.args, cmd.args_len) == CMTP_PERR_OK) {
                char out[CMTP_LINE_MAX + 1];
                CHECK(cmtp_rcpt_format(out, sizeof(out), &a) > 0);
            }
            break;
        case CMTP_VERB_TRACE:
            if (cmtp_trace_parse(&tr, cmd.args, cmd.args_len) == 0) {
                char out[CMTP_LINE_MAX + 1];
                CHECK(cmtp_trace_cmd_format(out, sizeof(out), &tr) > 0);
            }
            break;
        case CMTP_VERB_DROP:
        case CMTP_VERB_BODY:
            if (cmtp_index_parse(&v, cmd.args, cmd.args_len) != CMTP_PERR_OK)
                CHECK(v == 0);
            break;
        default:
            break;
        }
    }

    struct cmtp_reply r;
    if (cmtp_reply_parse(&r, line, len) == 0) {
        CHECK(r.code >= 200 && r.code <= 699 && r.cls == r.code / 100 && r.cls != 3);
        CHECK(r.nparams <= CMTP_REPLY_PARAMS_MAX);
        /* reformat what was parsed; whatever comes out must parse again */
        char keys[CMTP_REPLY_PARAMS_MAX][CMTP_LINE_MAX];
        char vals[CMTP_REPLY_PARAMS_MAX][CMTP_LINE_MAX];
        struct cmtp_param p[CMTP_REPLY_PARAMS_MAX];
        char status[CMTP_STATUS_MAX + 1], text[CMTP_LINE_MAX];
        memcpy(status, r.status, r.status_len);
        status[r.status_len] = '\0';
        for (size_t i = 0; i < r.nparams; i++) {
            memcpy(keys[i], r.params[i].key, r.params[i].key_len);
            keys[i][r.params[i].key_len] = '\0';
            memcpy(vals[i], r.params[i].value, r.params[i].value_len);
            vals[i][r.params[i].value_len] = '\0';
            p[i].key = keys[i];
            p[i].value = vals[i];
        }
        text[0] = '\0';
        if (r.text != NULL) {
            memcpy(text, r.text, r.text_len);
            text[r.text_len] = '\0';
        }
        char out[CMTP_LINE_MAX + 1];
        int n = cmtp_reply_format(out, sizeof(out), r.code, status, p, r.nparams, text);
        if (n > 0) {
            struct cmtp_reply r2;
            CHECK(out[n - 2] == '\r' && out[n - 1] == '\n');
            CHECK(memchr(out, '\r', (size_t)n - 2) == NULL);
            CHECK(memchr(out, '\n', (size_t)n - 2) == NULL);
            CHECK(cmtp_reply_parse(&r2, out, (size_t)n - 2) == 0);
            CHECK(r2.code == r.code && r2.nparams == r.nparams);
            CHECK(r2.status_len == r.status_len);
            for (size_t i = 0; i < r.nparams; i++)
                CHECK(r2.params[i].value_len == r.params[i].value_len &&
                      memcmp(r2.params[i].value, r.params[i].value, r.params[i].value_len) == 0);
        }
    }
}

/* run feeds |data| in pieces of sizes drawn from |steps| (0: whole) and returns the hash. */
static uint64_t run(const uint8_t *data, size_t size, const uint8_t *steps, size_t nsteps,
                    int check)
{
    struct cmtp_reader *r = malloc(sizeof(*r));
    struct th t = {0xcbf29ce484222325ull, 0};
    size_t pos = 0, k = 0;
    CHECK(r != NULL);
    cmtp_reader_init(r);
    while (pos < size) {
        size_t piece = nsteps ? 1 + steps[k++ % nsteps] % 97 : size - pos;
        if (piece > size - pos)
            piece = size - pos;
        const uint8_t *p = data + pos;
        size_t left = piece;
        for (;;) {
            struct cmtp_rd_item it;
            size_t c;
            enum cmtp_rd rd = cmtp_reader_next(r, p, left, &c, &it);
            CHECK(c <= left);
            p += c;
            left -= c;
            if (rd == CMTP_RD_AGAIN) {
                CHECK(left == 0);
                break;
            }
            if (rd == CMTP_RD_DATA) {
                CHECK(it.data == p - c && it.len == c && c > 0);
                if (!t.in_data)
                    mix_tag(&t, 'D', 0);
                t.in_data = 1;
                mix(&t, it.data, it.len);
                continue;
            }
            t.in_data = 0;
            if (rd == CMTP_RD_LINE) {
                CHECK(it.len <= CMTP_LINE_MAX - 2 && strlen(it.line) == it.len);
                CHECK(cmtp_utf8_valid(it.line, it.len));
                CHECK(memchr(it.line, '\r', it.len) == NULL);
                mix_tag(&t, 'L', it.len);
                mix(&t, it.line, it.len);
                if (check)
                    check_line(it.line, it.len);
                uint64_t n;
                if (it.len > 5 && memcmp(it.line, "BODY ", 5) == 0 &&
                    cmtp_index_parse(&n, it.line + 5, it.len - 5) == CMTP_PERR_OK && n > 0)
                    cmtp_reader_expect_data(r, n);
                continue;
            }
            mix_tag(&t, 'E', (size_t)rd);
            CHECK(cmtp_reader_next(r, p, left, &c, &it) == rd && c == 0);
            free(r);
            return t.h;
        }
        pos += piece;
    }
    mix_tag(&t, 'Z', r->len);
    free(r);
    return t.h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    /* the first byte says how many of the next bytes choose the split points */
    size_t nsteps = 1 + data[0] % 16;
    if (size < 1 + nsteps)
        return 0;
    const uint8_t *steps = data + 1;
    data += 1 + nsteps;
    size -= 1 + nsteps;
    uint64_t whole = run(data, size, NULL, 0, 1);
    CHECK(run(data, size, steps, nsteps, 0) == whole);

    /* arbitrary octets as reply text: sanitized, one well-formed line */
    char *text = malloc(size + 1);
    CHECK(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';
    char out[CMTP_LINE_MAX + 1];
    struct cmtp_reply r;
    int n = cmtp_reply_format(out, sizeof(out), 550, "no-mailbox", NULL, 0, text);
    CHECK(n > 0 && (size_t)n <= 4 + 11 + 3 + CMTP_TEXT_MAX + 2);
    CHECK(memchr(out, '\r', (size_t)n - 2) == NULL && memchr(out, '\n', (size_t)n - 2) == NULL);
    CHECK(cmtp_utf8_valid(out, (size_t)n));
    CHECK(cmtp_reply_parse(&r, out, (size_t)n - 2) == 0);
    /* and as a parameter value: refused or emitted verbatim, never altered */
    struct cmtp_param p = {"next", text};
    n = cmtp_reply_format(out, sizeof(out), 251, "relay", &p, 1, NULL);
    if (n > 0) {
        CHECK(cmtp_reply_parse(&r, out, (size_t)n - 2) == 0 && r.nparams == 1);
        CHECK(r.params[0].value_len == strlen(text));
    }
    free(text);
    return 0;
}
