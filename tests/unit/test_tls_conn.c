/* tests/unit/test_tls_conn.c — tls_conn handshakes, policy and data between real BoringSSL
 * peers pumped through memory. Not contexts' file errors (test_tls_ctx.c) nor memory use. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tests/unit/helpers/tls_testcerts.h"
#include "tls/tls.h"

struct fx {
    char dir[TLS_TESTCERTS_DIR_MAX];
};

struct rng {
    uint64_t s;
};

static uint64_t rnd(struct rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ull;
}

/* sink collects the plaintext one side reads. */
struct sink {
    uint8_t *buf;
    size_t len, cap;
};

static void sink_add(struct sink *s, const uint8_t *p, size_t n)
{
    if (s->len + n > s->cap) {
        s->cap = (s->len + n) * 2;
        s->buf = realloc(s->buf, s->cap);
        assert_non_null(s->buf);
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
}

static void sink_free(struct sink *s)
{
    free(s->buf);
    memset(s, 0, sizeof(*s));
}

static const char *fpath(const struct fx *f, const char *name, char *buf, size_t len)
{
    return tls_testcerts_path(buf, len, f->dir, name);
}

static bool failed(const struct tls_conn *t)
{
    char e[256];
    tls_conn_error_string(t, e, sizeof(e));
    return strcmp(e, "no error") != 0;
}

static bool err_has(const struct tls_conn *t, const char *needle)
{
    char e[256];
    tls_conn_error_string(t, e, sizeof(e));
    if (strcasestr(e, needle) == NULL) {
        print_message("error string '%s' lacks '%s'\n", e, needle);
        return false;
    }
    return true;
}

/* server_ctx builds a server context with certificate |cert| ("srv-ed25519": .pem/.key). */
static struct tls_ctx *server_ctx(const struct fx *f, const char *cert, enum tls_client_auth auth,
                                  const char *ticket_file)
{
    char c[512], k[512], ca[512], tk[512], n[64], err[256];
    struct tls_server_config cfg = {0};
    struct tls_ctx *ctx;

    snprintf(n, sizeof(n), "%s.pem", cert);
    cfg.cert_file = fpath(f, n, c, sizeof(c));
    snprintf(n, sizeof(n), "%s.key", cert);
    cfg.key_file = fpath(f, n, k, sizeof(k));
    if (auth != TLS_CLIENT_AUTH_NONE)
        cfg.client_ca_file = fpath(f, "ca.pem", ca, sizeof(ca));
    cfg.client_auth = auth;
    if (ticket_file != NULL)
        cfg.ticket_key_file = fpath(f, ticket_file, tk, sizeof(tk));
    ctx = tls_server_ctx_new(&cfg, err, sizeof(err));
    if (ctx == NULL)
        print_message("server ctx: %s\n", err);
    assert_non_null(ctx);
    assert_true(tls_ctx_is_server(ctx));
    return ctx;
}

/* client_ctx builds a client context trusting |ca| (NULL: the system store) with optional
 * client certificate |cert|. */
static struct tls_ctx *client_ctx(const struct fx *f, const char *ca, const char *cert)
{
    char c[512], k[512], a[512], n[64], err[256];
    struct tls_client_config cfg = {0};
    struct tls_ctx *ctx;

    if (ca != NULL)
        cfg.ca_file = fpath(f, ca, a, sizeof(a));
    if (cert != NULL) {
        snprintf(n, sizeof(n), "%s.pem", cert);
        cfg.cert_file = fpath(f, n, c, sizeof(c));
        snprintf(n, sizeof(n), "%s.key", cert);
        cfg.key_file = fpath(f, n, k, sizeof(k));
    }
    ctx = tls_client_ctx_new(&cfg, err, sizeof(err));
    if (ctx == NULL)
        print_message("client ctx: %s\n", err);
    assert_non_null(ctx);
    assert_false(tls_ctx_is_server(ctx));
    return ctx;
}

/* drain_reads reads all plaintext |to| has into |s| with random buffer sizes. */
static enum tls_result drain_reads(struct tls_conn *to, struct sink *s, struct rng *r)
{
    uint8_t buf[20000];

    for (;;) {
        size_t cap = 1 + rnd(r) % sizeof(buf), got = 0;
        enum tls_result rr = tls_conn_read(to, buf, cap, &got);
        if (rr == TLS_OK) {
            assert_true(got > 0 && got <= cap);
            sink_add(s, buf, got);
            continue;
        }
        if (rr == TLS_AGAIN)
            assert_int_equal(tls_conn_in_pending(to), 0);
        return rr;
    }
}

/* transfer moves all of |from|'s pending ciphertext into |to| in pieces of 1..|maxpiece|
 * octets (0: whole contiguous runs). Each piece lives in its own heap copy that is poisoned and
 * freed once |to| has consumed it, so a retained pointer would be caught by ASan. */
static enum tls_result transfer(struct tls_conn *from, struct tls_conn *to, struct sink *s,
                                struct rng *r, size_t maxpiece)
{
    enum tls_result res = TLS_AGAIN;

    while (tls_conn_out_pending(from) > 0) {
        const uint8_t *p;
        size_t n = tls_conn_out_peek(from, &p), k = n;
        uint8_t *copy;

        assert_true(n > 0 && p != NULL);
        if (maxpiece != 0)
            k = 1 + rnd(r) % (n < maxpiece ? n : maxpiece);
        copy = malloc(k);
        assert_non_null(copy);
        memcpy(copy, p, k);
        tls_conn_out_consume(from, k);
        res = tls_conn_feed(to, copy, k);
        if (res != TLS_ERROR && res != TLS_CLOSED)
            res = drain_reads(to, s, r);
        memset(copy, 0xa5, k);
        free(copy);
        if (res == TLS_ERROR || res == TLS_CLOSED) {
            tls_conn_out_consume(from, tls_conn_out_pending(from));
            return res;
        }
    }
    return res;
}

struct pair {
    struct tls_conn *c, *s;
    struct sink cs, ss; /* plaintext received by the client, by the server */
};

/* pump moves ciphertext both ways until neither side has anything to send. */
static void pump(struct pair *p, struct rng *r, size_t maxpiece)
{
    int i;

    for (i = 0; i < 100000; i++) {
        bool moved = false;
        if (tls_conn_out_pending(p->c) > 0) {
            transfer(p->c, p->s, &p->ss, r, maxpiece);
            moved = true;
        }
        if (tls_conn_out_pending(p->s) > 0) {
            transfer(p->s, p->c, &p->cs, r, maxpiece);
            moved = true;
        }
        if (!moved)
            return;
    }
    fail_msg("pump did not settle");
}

/* handshake creates a pair on |cctx| / |sctx| for |name| and pumps until quiet. */
static void handshake(struct pair *p, struct tls_ctx *cctx, struct tls_ctx *sctx, const char *name,
                      struct tls_session *sess, struct rng *r, size_t maxpiece)
{
    memset(p, 0, sizeof(*p));
    p->c = tls_conn_new_client(cctx, name);
    p->s = tls_conn_new_server(sctx);
    assert_non_null(p->c);
    assert_non_null(p->s);
    if (sess != NULL)
        assert_int_equal(tls_conn_set_session(p->c, sess), 0);
    assert_int_equal(tls_conn_feed(p->c, NULL, 0), TLS_AGAIN);
    assert_true(tls_conn_out_pending(p->c) > 0); /* the ClientHello */
    pump(p, r, maxpiece);
}

static void pair_free(struct pair *p)
{
    tls_conn_free(p->c);
    tls_conn_free(p->s);
    sink_free(&p->cs);
    sink_free(&p->ss);
}

static void assert_both_done(const struct pair *p)
{
    char e[256];
    if (!tls_conn_handshake_done(p->s)) {
        tls_conn_error_string(p->s, e, sizeof(e));
        fail_msg("server: %s", e);
    }
    if (!tls_conn_handshake_done(p->c)) {
        tls_conn_error_string(p->c, e, sizeof(e));
        fail_msg("client: %s", e);
    }
}

/* --- raw BoringSSL peers for misbehaving clients and servers --- */

struct raw {
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *rd, *wr;
    SSL_SESSION *sess;
    int tickets; /* session tickets received */
    int hs;      /* last SSL_do_handshake result */
    int err;     /* SSL_get_error of it */
    uint32_t first_err;
};

static int raw_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct raw *w = SSL_get_app_data(ssl);
    SSL_SESSION_free(w->sess);
    w->sess = sess;
    w->tickets++;
    return 1;
}

static void raw_init(struct raw *w, SSL_CTX *ctx, bool server)
{
    memset(w, 0, sizeof(*w));
    w->ctx = ctx;
    w->ssl = SSL_new(ctx);
    w->rd = BIO_new(BIO_s_mem());
    w->wr = BIO_new(BIO_s_mem());
    assert_true(w->ssl && w->rd && w->wr);
    SSL_set_bio(w->ssl, w->rd, w->wr);
    SSL_set_app_data(w->ssl, w);
    if (server)
        SSL_set_accept_state(w->ssl);
    else
        SSL_set_connect_state(w->ssl);
}

static void raw_free(struct raw *w)
{
    SSL_free(w->ssl);
    SSL_CTX_free(w->ctx);
    SSL_SESSION_free(w->sess);
}

static void raw_step(struct raw *w)
{
    uint8_t buf[4096];

    if (!SSL_is_init_finished(w->ssl)) {
        w->hs = SSL_do_handshake(w->ssl);
        w->err = SSL_get_error(w->ssl, w->hs);
        if (w->first_err == 0)
            w->first_err = ERR_peek_error();
        ERR_clear_error();
        if (w->hs != 1)
            return;
    }
    /* Process post-handshake messages (tickets). */
    while (SSL_read(w->ssl, buf, sizeof(buf)) > 0)
        ;
    ERR_clear_error();
}

/* raw_pump runs raw peer |w| against tls_conn |t| until quiet. */
static void raw_pump(struct raw *w, struct tls_conn *t, struct sink *s, struct rng *r)
{
    int i;

    raw_step(w);
    for (i = 0; i < 1000; i++) {
        bool moved = false;
        uint8_t buf[65536];
        int n;

        while ((n = BIO_read(w->wr, buf, sizeof(buf))) > 0) {
            enum tls_result res = tls_conn_feed(t, buf, (size_t)n);
            if (res != TLS_ERROR)
                drain_reads(t, s, r);
            moved = true;
        }
        while (tls_conn_out_pending(t) > 0) {
            const uint8_t *p;
            size_t k = tls_conn_out_peek(t, &p);
            assert_int_equal(BIO_write(w->rd, p, (int)k), (int)k);
            tls_conn_out_consume(t, k);
            moved = true;
        }
        raw_step(w);
        if (!moved && BIO_pending(w->wr) == 0)
            return;
    }
    fail_msg("raw pump did not settle");
}

static SSL_CTX *raw_client_ctx(const struct fx *f, const uint8_t *alpn, size_t alpn_len,
                               uint16_t max_version)
{
    char ca[512];
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());

    assert_non_null(ctx);
    assert_true(SSL_CTX_set_max_proto_version(ctx, max_version));
    if (alpn != NULL)
        assert_int_equal(SSL_CTX_set_alpn_protos(ctx, alpn, (unsigned)alpn_len), 0);
    assert_true(SSL_CTX_load_verify_locations(ctx, fpath(f, "ca.pem", ca, sizeof(ca)), NULL));
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(ctx, raw_new_session);
    return ctx;
}

/* --- fixtures --- */

static int group_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    if (f == NULL || tls_testcerts_make(f->dir, sizeof(f->dir)) != 0) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int group_teardown(void **state)
{
    struct fx *f = *state;

    tls_testcerts_remove(f->dir);
    free(f);
    return 0;
}

/* --- tests: successful handshakes --- */

static void test_handshake_ed25519(void **state)
{
    const struct fx *f = *state;
    struct rng r = {0x1234};
    struct tls_ctx *sctx = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    struct pair p;

    handshake(&p, cctx, sctx, "mx.example.org", NULL, &r, 0);
    assert_both_done(&p);
    assert_string_equal(tls_conn_version(p.s), "TLSv1.3");
    assert_string_equal(tls_conn_version(p.c), "TLSv1.3");
    assert_string_equal(tls_conn_alpn(p.s), "cmtp/1");
    assert_string_equal(tls_conn_alpn(p.c), "cmtp/1");
    assert_non_null(tls_conn_cipher(p.s));
    assert_true(strncmp(tls_conn_cipher(p.s), "TLS_", 4) == 0);
    assert_string_equal(tls_conn_cipher(p.s), tls_conn_cipher(p.c));
    assert_false(tls_conn_resumed(p.s));
    assert_false(tls_conn_resumed(p.c));
    assert_string_equal(tls_conn_sni(p.s), "mx.example.org");
    assert_string_equal(tls_conn_peer_identity(p.c), "mx.example.org");
    assert_null(tls_conn_peer_identity(p.s));
    assert_int_equal(p.cs.len, 0); /* no application byte either way */
    assert_int_equal(p.ss.len, 0);
    pair_free(&p);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

/* P-256 leaf under an intermediate (chain from the file), every octet fed on its own. */
static void test_handshake_p256_single_bytes(void **state)
{
    const struct fx *f = *state;
    struct rng r = {0x99};
    struct tls_ctx *sctx = server_ctx(f, "srv-p256", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    struct pair p;

    /* Upper-case name: compared and sent lower-cased. */
    handshake(&p, cctx, sctx, "MX.Example.ORG", NULL, &r, 1);
    assert_both_done(&p);
    assert_string_equal(tls_conn_peer_identity(p.c), "mx.example.org");
    assert_string_equal(tls_conn_sni(p.s), "mx.example.org");
    pair_free(&p);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

static void test_handshake_random_splits(void **state)
{
    const struct fx *f = *state;
    struct rng r = {0xfeed};
    struct tls_ctx *sctx = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    int i;

    for (i = 0; i < 20; i++) {
        struct pair p;
        handshake(&p, cctx, sctx, "mx.example.org", NULL, &r, 1 + rnd(&r) % 700);
        assert_both_done(&p);
        pair_free(&p);
    }
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

static void test_wildcard_left_label_only(void **state)
{
    const struct fx *f = *state;
    struct rng r = {7};
    struct tls_ctx *sctx = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    struct pair p;

    handshake(&p, cctx, sctx, "relay.example.net", NULL, &r, 0);
    assert_both_done(&p);
    assert_string_equal(tls_conn_peer_identity(p.c), "relay.example.net");
    pair_free(&p);

    handshake(&p, cctx, sctx, "a.b.example.net", NULL, &r, 0);
    assert_false(tls_conn_handshake_done(p.c));
    assert_true(err_has(p.c, "hostname mismatch"));
    pair_free(&p);

    handshake(&p, cctx, sctx, "example.net", NULL, &r, 0);
    assert_false(tls_conn_handshake_done(p.c));
    assert_true(err_has(p.c, "hostname mismatch"));
    pair_free(&p);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

static void test_client_rejects_bad_server_name(void **state)
{
    const struct fx *f = *state;
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    struct tls_ctx *sctx = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);

    assert_null(tls_conn_new_client(cctx, ""));
    assert_null(tls_conn_new_client(cctx, "bad name.example"));
    assert_null(tls_conn_new_client(cctx, "-x.example"));
    assert_null(tls_conn_new_client(cctx, "x..example"));
    assert_null(tls_conn_new_client(cctx, "192.0.2.1:25"));
    assert_null(tls_conn_new_client(sctx, "mx.example.org")); /* wrong kind of context */
    assert_null(tls_conn_new_server(cctx));
    tls_ctx_unref(cctx);
    tls_ctx_unref(sctx);
}

/* --- ALPN and version policy (server side, against raw BoringSSL clients) --- */

static void raw_client_vs_server_sni(const struct fx *f, SSL_CTX *rctx, struct raw *w,
                                     struct tls_conn **out_s, struct tls_ctx *sctx, bool sni)
{
    struct rng r = {3};
    struct sink s = {0};

    raw_init(w, rctx, false);
    if (sni)
        assert_true(SSL_set_tlsext_host_name(w->ssl, "mx.example.org"));
    *out_s = tls_conn_new_server(sctx);
    assert_non_null(*out_s);
    raw_pump(w, *out_s, &s, &r);
    assert_int_equal(s.len, 0); /* no application byte was ever processed */
    sink_free(&s);
    (void)f;
}

static void raw_client_vs_server(const struct fx *f, SSL_CTX *rctx, struct raw *w,
                                 struct tls_conn **out_s, struct tls_ctx *sctx)
{
    raw_client_vs_server_sni(f, rctx, w, out_s, sctx, true);
}

static void test_alpn_absent_refused(void **state)
{
    const struct fx *f = *state;
    struct tls_ctx *sctx = server_ctx(f, "srv-p256", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_conn *s;
    struct raw w;

    raw_client_vs_server(f, raw_client_ctx(f, NULL, 0, TLS1_3_VERSION), &w, &s, sctx);
    assert_false(tls_conn_handshake_done(s));
    assert_true(err_has(s, "no ALPN"));
    assert_int_equal(tls_conn_fail_kind(s), TLS_FAIL_NO_ALPN);
    assert_int_equal(w.hs, -1);
    assert_int_equal(ERR_GET_REASON(w.first_err), SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL);
    assert_int_equal(tls_conn_read(s, (uint8_t[8]){0}, 8, &(size_t){0}), TLS_ERROR);
    tls_conn_free(s);
    raw_free(&w);

    /* Neither SNI nor ALPN: still refused the same way. */
    raw_client_vs_server_sni(f, raw_client_ctx(f, NULL, 0, TLS1_3_VERSION), &w, &s, sctx, false);
    assert_false(tls_conn_handshake_done(s));
    assert_true(err_has(s, "no ALPN"));
    assert_int_equal(ERR_GET_REASON(w.first_err), SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL);
    assert_null(tls_conn_sni(s));
    tls_conn_free(s);
    raw_free(&w);
    tls_ctx_unref(sctx);
}

static void test_alpn_other_refused(void **state)
{
    const struct fx *f = *state;
    static const uint8_t alpn[] = "\x04smtp\x02h2\x07"
                                  "cmtp/10";
    struct tls_ctx *sctx = server_ctx(f, "srv-p256", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_conn *s;
    struct raw w;

    raw_client_vs_server(f, raw_client_ctx(f, alpn, sizeof(alpn) - 1, TLS1_3_VERSION), &w, &s,
                         sctx);
    assert_false(tls_conn_handshake_done(s));
    assert_true(err_has(s, "did not offer ALPN cmtp/1"));
    assert_int_equal(tls_conn_fail_kind(s), TLS_FAIL_NO_ALPN);
    assert_int_equal(ERR_GET_REASON(w.first_err), SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL);
    tls_conn_free(s);
    raw_free(&w);
    tls_ctx_unref(sctx);
}

static void test_alpn_in_list_accepted(void **state)
{
    const struct fx *f = *state;
    static const uint8_t alpn[] = "\x02h2\x06"
                                  "cmtp/1\x04smtp";
    struct tls_ctx *sctx = server_ctx(f, "srv-p256", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_conn *s;
    struct raw w;
    const uint8_t *sel;
    unsigned sel_len;

    raw_client_vs_server(f, raw_client_ctx(f, alpn, sizeof(alpn) - 1, TLS1_3_VERSION), &w, &s,
                         sctx);
    assert_true(tls_conn_handshake_done(s));
    assert_int_equal(w.hs, 1);
    SSL_get0_alpn_selected(w.ssl, &sel, &sel_len);
    assert_int_equal(sel_len, 6);
    assert_memory_equal(sel, "cmtp/1", 6);
    /* 0-RTT is never offered to clients: tickets are not early-data capable. */
    assert_non_null(w.sess);
    assert_false(SSL_SESSION_early_data_capable(w.sess));
    /* One ticket per full handshake (TLS_TICKETS_PER_HANDSHAKE), not BoringSSL's two. */
    assert_int_equal(w.tickets, 1);
    tls_conn_free(s);
    raw_free(&w);
    tls_ctx_unref(sctx);
}

static void test_tls12_client_refused(void **state)
{
    const struct fx *f = *state;
    static const uint8_t alpn[] = "\x06"
                                  "cmtp/1";
    struct tls_ctx *sctx = server_ctx(f, "srv-p256", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_conn *s;
    struct raw w;

    raw_client_vs_server(f, raw_client_ctx(f, alpn, sizeof(alpn) - 1, TLS1_2_VERSION), &w, &s,
                         sctx);
    assert_false(tls_conn_handshake_done(s));
    assert_true(err_has(s, "unsupported protocol"));
    assert_int_equal(ERR_GET_REASON(w.first_err), SSL_R_TLSV1_ALERT_PROTOCOL_VERSION);
    tls_conn_free(s);
    raw_free(&w);
    tls_ctx_unref(sctx);
}

/* Our client against a raw server that negotiates no ALPN: the client refuses. */
static void test_client_requires_server_alpn(void **state)
{
    const struct fx *f = *state;
    char c[512], k[512];
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    SSL_CTX *rctx = SSL_CTX_new(TLS_method());
    struct tls_conn *t = tls_conn_new_client(cctx, "mx.example.org");
    struct rng r = {5};
    struct sink s = {0};
    struct raw w;

    assert_non_null(rctx);
    assert_true(SSL_CTX_use_certificate_chain_file(rctx, fpath(f, "srv-p256.pem", c, sizeof(c))));
    assert_true(SSL_CTX_use_PrivateKey_file(rctx, fpath(f, "srv-p256.key", k, sizeof(k)),
                                            SSL_FILETYPE_PEM));
    raw_init(&w, rctx, true);
    assert_int_equal(tls_conn_feed(t, NULL, 0), TLS_AGAIN);
    raw_pump(&w, t, &s, &r);
    assert_false(tls_conn_handshake_done(t));
    assert_true(err_has(t, "server selected no ALPN"));
    assert_int_equal(tls_conn_fail_kind(t), TLS_FAIL_NO_ALPN);
    assert_null(tls_conn_version(t));
    sink_free(&s);
    tls_conn_free(t);
    raw_free(&w);
    tls_ctx_unref(cctx);
}

/* --- server certificate verification by the client --- */

static void test_hostname_mismatch(void **state)
{
    const struct fx *f = *state;
    struct rng r = {11};
    struct tls_ctx *sctx = server_ctx(f, "srv-p256", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    struct pair p;

    handshake(&p, cctx, sctx, "mx.example.com", NULL, &r, 0);
    assert_false(tls_conn_handshake_done(p.c));
    assert_false(tls_conn_handshake_done(p.s));
    assert_true(err_has(p.c, "certificate verify failed: hostname mismatch"));
    assert_true(err_has(p.s, "alert received"));
    assert_int_equal(tls_conn_fail_kind(p.c), TLS_FAIL_CERT);
    assert_int_equal(tls_conn_fail_kind(p.s), TLS_FAIL_ALERT);
    assert_null(tls_conn_peer_identity(p.c));
    pair_free(&p);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

static void test_untrusted_server(void **state)
{
    const struct fx *f = *state;
    struct rng r = {12};
    struct tls_ctx *sctx = server_ctx(f, "srv-untrusted", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    struct tls_ctx *sys = client_ctx(f, NULL, NULL); /* the system store */
    struct tls_ctx *good = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);
    struct pair p;

    handshake(&p, cctx, sctx, "mx.example.org", NULL, &r, 0);
    assert_false(tls_conn_handshake_done(p.c));
    assert_true(err_has(p.c, "certificate verify failed: unable to get local issuer"));
    assert_int_equal(tls_conn_fail_kind(p.c), TLS_FAIL_CERT);
    pair_free(&p);

    /* The system store does not know the test root either. */
    handshake(&p, sys, good, "mx.example.org", NULL, &r, 0);
    assert_false(tls_conn_handshake_done(p.c));
    assert_true(err_has(p.c, "certificate verify failed"));
    pair_free(&p);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
    tls_ctx_unref(sys);
    tls_ctx_unref(good);
}

/* --- client certificates --- */

static void mtls(const struct fx *f, enum tls_client_auth auth, const char *cli, struct pair *p,
                 struct tls_ctx **sctx, struct tls_ctx **cctx)
{
    struct rng r = {21};

    *sctx = server_ctx(f, "srv-ed25519", auth, NULL);
    *cctx = client_ctx(f, "ca.pem", cli);
    handshake(p, *cctx, *sctx, "mx.example.org", NULL, &r, 0);
}

static void mtls_done(struct pair *p, struct tls_ctx *sctx, struct tls_ctx *cctx)
{
    pair_free(p);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

static void test_mtls_accepted_identity(void **state)
{
    struct tls_ctx *s, *c;
    struct pair p;

    mtls(*state, TLS_CLIENT_AUTH_REQUIRED, "cli", &p, &s, &c);
    assert_both_done(&p);
    assert_string_equal(tls_conn_peer_identity(p.s), "relay.example.com");
    mtls_done(&p, s, c);

    mtls(*state, TLS_CLIENT_AUTH_OPTIONAL, "cli", &p, &s, &c);
    assert_both_done(&p);
    assert_string_equal(tls_conn_peer_identity(p.s), "relay.example.com");
    mtls_done(&p, s, c);

    /* Ed25519 client certificate; the leading wildcard SAN is skipped. */
    mtls(*state, TLS_CLIENT_AUTH_REQUIRED, "cli-ed25519", &p, &s, &c);
    assert_both_done(&p);
    assert_string_equal(tls_conn_peer_identity(p.s), "edge.example.net");
    mtls_done(&p, s, c);

    /* Not requested: a configured client certificate is not sent, no identity. */
    mtls(*state, TLS_CLIENT_AUTH_NONE, "cli", &p, &s, &c);
    assert_both_done(&p);
    assert_null(tls_conn_peer_identity(p.s));
    mtls_done(&p, s, c);
}

static void test_mtls_optional_without_cert(void **state)
{
    struct tls_ctx *s, *c;
    struct pair p;

    mtls(*state, TLS_CLIENT_AUTH_OPTIONAL, NULL, &p, &s, &c);
    assert_both_done(&p);
    assert_null(tls_conn_peer_identity(p.s));
    mtls_done(&p, s, c);
}

static void test_mtls_required_without_cert(void **state)
{
    struct tls_ctx *s, *c;
    struct pair p;

    mtls(*state, TLS_CLIENT_AUTH_REQUIRED, NULL, &p, &s, &c);
    assert_false(tls_conn_handshake_done(p.s));
    assert_true(err_has(p.s, "peer did not return a certificate"));
    /* TLS 1.3: the client learns of it when it reads the server's alert. */
    assert_true(failed(p.c));
    assert_true(err_has(p.c, "alert received: certificate required"));
    assert_int_equal(p.ss.len, 0);
    mtls_done(&p, s, c);
}

/* Bad client certificates, presented by a raw BoringSSL client (our own client context refuses
 * to load an expired certificate in the first place). */
static void test_mtls_bad_client_certs(void **state)
{
    static const struct {
        const char *cert;
        const char *why;
    } cases[] = {
        {"cli-expired", "certificate has expired"},
        {"cli-noeku", "unsupported certificate purpose"},
        {"cli-untrusted", "unable to get local issuer certificate"},
        {"srv-p256", "unsupported certificate purpose"}, /* serverAuth-only EKU too */
    };
    static const uint8_t alpn[] = "\x06"
                                  "cmtp/1";
    const struct fx *f = *state;
    char c[512], k[512], n[64];
    size_t i;
    int mode;

    for (mode = TLS_CLIENT_AUTH_OPTIONAL; mode <= TLS_CLIENT_AUTH_REQUIRED; mode++) {
        for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            struct tls_ctx *sctx = server_ctx(f, "srv-p256", (enum tls_client_auth)mode, NULL);
            SSL_CTX *rctx = raw_client_ctx(f, alpn, sizeof(alpn) - 1, TLS1_3_VERSION);
            struct tls_conn *s;
            struct raw w;

            snprintf(n, sizeof(n), "%s.pem", cases[i].cert);
            assert_true(SSL_CTX_use_certificate_chain_file(rctx, fpath(f, n, c, sizeof(c))));
            snprintf(n, sizeof(n), "%s.key", cases[i].cert);
            assert_true(
                SSL_CTX_use_PrivateKey_file(rctx, fpath(f, n, k, sizeof(k)), SSL_FILETYPE_PEM));
            raw_client_vs_server(f, rctx, &w, &s, sctx);
            assert_false(tls_conn_handshake_done(s));
            assert_true(err_has(s, cases[i].why));
            assert_null(tls_conn_peer_identity(s));
            tls_conn_free(s);
            raw_free(&w);
            tls_ctx_unref(sctx);
        }
    }
}

static void test_mtls_per_connection_policy(void **state)
{
    const struct fx *f = *state;
    struct rng r = {23};
    struct tls_ctx *sctx = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_OPTIONAL, NULL);
    struct tls_ctx *nocert = client_ctx(f, "ca.pem", NULL);
    struct tls_ctx *nca = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_conn *x;
    struct pair p;

    memset(&p, 0, sizeof(p));
    p.c = tls_conn_new_client(nocert, "mx.example.org");
    p.s = tls_conn_new_server(sctx);
    assert_int_equal(tls_conn_set_client_auth(p.s, TLS_CLIENT_AUTH_REQUIRED), 0);
    assert_int_equal(tls_conn_set_client_auth(p.c, TLS_CLIENT_AUTH_REQUIRED), -EINVAL);
    assert_int_equal(tls_conn_feed(p.c, NULL, 0), TLS_AGAIN);
    pump(&p, &r, 0);
    assert_false(tls_conn_handshake_done(p.s));
    assert_true(err_has(p.s, "peer did not return a certificate"));
    assert_int_equal(tls_conn_set_client_auth(p.s, TLS_CLIENT_AUTH_NONE), -EINVAL); /* begun */
    pair_free(&p);

    /* Without a client CA, no policy but NONE can be set. */
    x = tls_conn_new_server(nca);
    assert_int_equal(tls_conn_set_client_auth(x, TLS_CLIENT_AUTH_OPTIONAL), -EINVAL);
    assert_int_equal(tls_conn_set_client_auth(x, TLS_CLIENT_AUTH_NONE), 0);
    tls_conn_free(x);
    tls_ctx_unref(sctx);
    tls_ctx_unref(nca);
    tls_ctx_unref(nocert);
}

/* --- resumption --- */

/* session_from runs a full handshake on |cctx| / |sctx| and returns the ticket received. */
static struct tls_session *session_from(struct tls_ctx *cctx, struct tls_ctx *sctx, struct rng *r)
{
    struct tls_session *s;
    struct pair p;

    handshake(&p, cctx, sctx, "mx.example.org", NULL, r, 0);
    assert_both_done(&p);
    assert_false(tls_conn_resumed(p.c));
    s = tls_conn_get_session(p.c);
    assert_non_null(s);
    assert_null(tls_conn_get_session(p.s));
    pair_free(&p);
    return s;
}

/* resumes returns whether |sess| resumes on |sctx| (the handshake must succeed either way). */
static bool resumes(struct tls_ctx *cctx, struct tls_ctx *sctx, struct tls_session *sess,
                    struct rng *r, char *id, size_t idlen)
{
    struct pair p;
    bool res;

    handshake(&p, cctx, sctx, "mx.example.org", sess, r, 0);
    assert_both_done(&p);
    res = tls_conn_resumed(p.s);
    assert_int_equal(res, tls_conn_resumed(p.c));
    if (id != NULL)
        snprintf(id, idlen, "%s", tls_conn_peer_identity(p.s) ? tls_conn_peer_identity(p.s) : "-");
    pair_free(&p);
    return res;
}

static void test_resumption_tickets(void **state)
{
    const struct fx *f = *state;
    struct rng r = {31};
    struct tls_ctx *sctx = server_ctx(f, "srv-p256", TLS_CLIENT_AUTH_OPTIONAL, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", "cli");
    struct tls_ctx *other = server_ctx(f, "srv-p256", TLS_CLIENT_AUTH_OPTIONAL, NULL);
    struct tls_session *s = session_from(cctx, sctx, &r);
    struct tls_conn *x;
    char id[64];

    assert_true(resumes(cctx, sctx, s, &r, id, sizeof(id)));
    /* The verified client identity survives resumption. */
    assert_string_equal(id, "relay.example.com");
    /* Another context with its own random ticket keys: full handshake. */
    assert_false(resumes(cctx, other, s, &r, NULL, 0));
    /* A session is bound to its server name. */
    x = tls_conn_new_client(cctx, "relay.example.net");
    assert_int_equal(tls_conn_set_session(x, s), -EINVAL);
    tls_conn_free(x);
    tls_session_free(s);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
    tls_ctx_unref(other);
}

static void test_resumption_needs_same_policy(void **state)
{
    const struct fx *f = *state;
    struct rng r = {32};
    struct tls_ctx *none, *req, *cctx = client_ctx(f, "ca.pem", "cli");
    struct tls_session *s;
    static const char key[] = "00112233445566778899aabbccddeeff"
                              "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
                              "ffeeddccbbaa99887766554433221100\n";

    assert_int_equal(tls_testcerts_write(f->dir, "tk-policy", key), 0);
    none = server_ctx(f, "srv-p256", TLS_CLIENT_AUTH_NONE, "tk-policy");
    req = server_ctx(f, "srv-p256", TLS_CLIENT_AUTH_REQUIRED, "tk-policy");
    s = session_from(cctx, none, &r);
    assert_true(resumes(cctx, none, s, &r, NULL, 0));
    /* Same ticket keys, but a session made without a client certificate never resumes where
     * one is required. */
    assert_false(resumes(cctx, req, s, &r, NULL, 0));
    tls_session_free(s);
    tls_ctx_unref(none);
    tls_ctx_unref(req);
    tls_ctx_unref(cctx);
}

static void test_resumption_fleet_keys(void **state)
{
    const struct fx *f = *state;
    static const char key_a[] = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
                                "000102030405060708090a0b0c0d0e0f"
                                "101112131415161718191a1b1c1d1e1f";
    static const char key_b[] = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
                                "202122232425262728292a2b2c2d2e2f"
                                "303132333435363738393a3b3c3d3e3f";
    char buf[512];
    struct rng r = {41};
    struct tls_ctx *a, *b, *c, *d, *e, *cctx = client_ctx(f, "ca.pem", NULL);
    struct tls_session *s, *s2;

    snprintf(buf, sizeof(buf), "# fleet key file\n%s\n", key_a);
    assert_int_equal(tls_testcerts_write(f->dir, "tk-a", buf), 0);
    snprintf(buf, sizeof(buf), "%s\r\n", key_b);
    assert_int_equal(tls_testcerts_write(f->dir, "tk-b", buf), 0);
    /* Rotation: b is current, a still accepted. */
    snprintf(buf, sizeof(buf), "\n  %s\n# previous\n%s\n", key_b, key_a);
    assert_int_equal(tls_testcerts_write(f->dir, "tk-ba", buf), 0);

    a = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, "tk-a");
    b = server_ctx(f, "srv-p256", TLS_CLIENT_AUTH_NONE, "tk-a"); /* another node, same file */
    c = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, "tk-b");
    d = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, "tk-ba");
    e = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);

    s = session_from(cctx, a, &r);
    assert_true(resumes(cctx, b, s, &r, NULL, 0));
    assert_false(resumes(cctx, c, s, &r, NULL, 0));
    assert_true(resumes(cctx, d, s, &r, NULL, 0));
    assert_false(resumes(cctx, e, s, &r, NULL, 0));
    tls_session_free(s);

    /* Tickets issued by d use its current key b: c accepts them, a does not. */
    s2 = session_from(cctx, d, &r);
    assert_true(resumes(cctx, c, s2, &r, NULL, 0));
    assert_false(resumes(cctx, a, s2, &r, NULL, 0));
    tls_session_free(s2);

    tls_ctx_unref(a);
    tls_ctx_unref(b);
    tls_ctx_unref(c);
    tls_ctx_unref(d);
    tls_ctx_unref(e);
    tls_ctx_unref(cctx);
}

static void test_no_tickets(void **state)
{
    const struct fx *f = *state;
    char c[512], k[512], err[256];
    struct tls_server_config cfg = {0};
    struct tls_ctx *sctx, *cctx = client_ctx(f, "ca.pem", NULL);
    struct rng r = {51};
    struct pair p;

    cfg.cert_file = fpath(f, "srv-ed25519.pem", c, sizeof(c));
    cfg.key_file = fpath(f, "srv-ed25519.key", k, sizeof(k));
    cfg.no_tickets = true;
    sctx = tls_server_ctx_new(&cfg, err, sizeof(err));
    assert_non_null(sctx);
    handshake(&p, cctx, sctx, "mx.example.org", NULL, &r, 0);
    assert_both_done(&p);
    assert_null(tls_conn_get_session(p.c));
    pair_free(&p);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

/* --- application data, the outbound chain, backpressure, close --- */

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
    struct rng r = {seed};
    size_t i;
    for (i = 0; i < n; i++)
        p[i] = (uint8_t)(rnd(&r) >> 56);
}

/* write_some writes a random-sized slice of |src| from |*off|, honouring backpressure. */
static void write_some(struct tls_conn *t, const uint8_t *src, size_t len, size_t *off,
                       struct rng *r)
{
    size_t want, w = 0;
    enum tls_result res;

    if (*off == len)
        return;
    want = 1 + rnd(r) % 100000;
    if (want > len - *off)
        want = len - *off;
    res = tls_conn_write(t, src + *off, want, &w);
    assert_true(res == TLS_OK || res == TLS_AGAIN);
    assert_true(res == TLS_AGAIN || w == want);
    assert_true(w <= want);
    *off += w;
}

static void test_data_1mib_both_ways(void **state)
{
    const struct fx *f = *state;
    const size_t total = 1u << 20;
    struct rng r = {0xdada};
    struct tls_ctx *sctx = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    uint8_t *up = malloc(total), *down = malloc(total);
    size_t uoff = 0, doff = 0;
    struct pair p;
    int i;

    assert_true(up && down);
    fill(up, total, 1);
    fill(down, total, 2);
    handshake(&p, cctx, sctx, "mx.example.org", NULL, &r, 0);
    assert_both_done(&p);
    for (i = 0; i < 100000 && (p.ss.len < total || p.cs.len < total); i++) {
        write_some(p.c, up, total, &uoff, &r);
        write_some(p.s, down, total, &doff, &r);
        assert_true(tls_conn_out_pending(p.c) <= TLS_OUT_PENDING_MAX + 16384 + 256);
        /* Move a random amount each way, in random pieces. */
        if (rnd(&r) % 4 != 0) {
            assert_int_not_equal(transfer(p.c, p.s, &p.ss, &r, 1 + rnd(&r) % 30000), TLS_ERROR);
        }
        if (rnd(&r) % 4 != 0) {
            assert_int_not_equal(transfer(p.s, p.c, &p.cs, &r, 1 + rnd(&r) % 30000), TLS_ERROR);
        }
    }
    assert_int_equal(p.ss.len, total);
    assert_int_equal(p.cs.len, total);
    assert_memory_equal(p.ss.buf, up, total);
    assert_memory_equal(p.cs.buf, down, total);
    free(up);
    free(down);
    pair_free(&p);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

static void test_out_segments_stable(void **state)
{
    const struct fx *f = *state;
    struct rng r = {61};
    struct tls_ctx *sctx = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    static uint8_t big[50000];
    uint8_t first[200], *expect;
    const uint8_t *p1, *p2;
    struct iovec iov[16];
    size_t n1, n2, w, niov, i, sum = 0;
    struct pair p;

    fill(big, sizeof(big), 3);
    handshake(&p, cctx, sctx, "mx.example.org", NULL, &r, 0);
    assert_both_done(&p);
    assert_int_equal(tls_conn_out_pending(p.s), 0);
    assert_int_equal(tls_conn_out_peek(p.s, &p1), 0);
    assert_null(p1);

    assert_int_equal(tls_conn_write(p.s, (const uint8_t *)"250 ok\r\n", 8, &w), TLS_OK);
    n1 = tls_conn_out_peek(p.s, &p1);
    assert_true(n1 > 8 && n1 <= sizeof(first));
    memcpy(first, p1, n1);
    /* More records while the first is "in flight": it must not move or change. */
    assert_int_equal(tls_conn_write(p.s, big, sizeof(big), &w), TLS_OK);
    assert_int_equal(w, sizeof(big));
    n2 = tls_conn_out_peek(p.s, &p2);
    assert_ptr_equal(p1, p2);
    assert_true(n2 >= n1);
    assert_memory_equal(p2, first, n1);
    niov = tls_conn_out_iov(p.s, iov, 16);
    assert_true(niov >= 2);
    for (i = 0; i < niov; i++) {
        assert_true(iov[i].iov_len > 0);
        sum += iov[i].iov_len;
    }
    assert_int_equal(sum, tls_conn_out_pending(p.s));
    assert_ptr_equal(iov[0].iov_base, p1);
    assert_int_equal(tls_conn_out_iov(p.s, iov, 1), 1);
    /* Partial consumption advances within the segment. */
    tls_conn_out_consume(p.s, 5);
    n2 = tls_conn_out_peek(p.s, &p2);
    assert_ptr_equal(p2, p1 + 5);
    /* Deliver: the client gets the bytes in order (re-feeding the 5 consumed ones first). */
    assert_int_equal(tls_conn_feed(p.c, first, 5), TLS_OK);
    assert_int_equal(drain_reads(p.c, &p.cs, &r), TLS_AGAIN);
    transfer(p.s, p.c, &p.cs, &r, 0);
    assert_int_equal(tls_conn_out_pending(p.s), 0);
    expect = malloc(8 + sizeof(big));
    memcpy(expect, "250 ok\r\n", 8);
    memcpy(expect + 8, big, sizeof(big));
    assert_int_equal(p.cs.len, 8 + sizeof(big));
    assert_memory_equal(p.cs.buf, expect, 8 + sizeof(big));
    free(expect);
    pair_free(&p);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

static void test_backpressure(void **state)
{
    const struct fx *f = *state;
    const size_t total = 1u << 20;
    struct rng r = {71};
    struct tls_ctx *sctx = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    uint8_t *src = malloc(total);
    size_t w = 0, off = 0;
    struct pair p;
    int rounds = 0;

    fill(src, total, 4);
    handshake(&p, cctx, sctx, "mx.example.org", NULL, &r, 0);
    assert_both_done(&p);
    assert_int_equal(tls_conn_write(p.c, src, total, &w), TLS_AGAIN);
    assert_true(w > 0 && w < total);
    assert_true(tls_conn_out_pending(p.c) >= TLS_OUT_PENDING_MAX);
    assert_true(tls_conn_out_pending(p.c) < TLS_OUT_PENDING_MAX + 16384 + 256);
    off = w;
    assert_int_equal(tls_conn_write(p.c, src + off, total - off, &w), TLS_AGAIN);
    assert_int_equal(w, 0);
    while (off < total) {
        transfer(p.c, p.s, &p.ss, &r, 0);
        assert_int_equal(tls_conn_out_pending(p.c), 0);
        enum tls_result res = tls_conn_write(p.c, src + off, total - off, &w);
        assert_true(res == TLS_OK || res == TLS_AGAIN);
        off += w;
        rounds++;
    }
    transfer(p.c, p.s, &p.ss, &r, 0);
    assert_true(rounds >= 10);
    assert_int_equal(p.ss.len, total);
    assert_memory_equal(p.ss.buf, src, total);
    free(src);
    pair_free(&p);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

static void test_close_notify(void **state)
{
    const struct fx *f = *state;
    struct rng r = {81};
    struct tls_ctx *sctx = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    struct tls_conn *early;
    uint8_t buf[64];
    size_t w, n;
    struct pair p;

    handshake(&p, cctx, sctx, "mx.example.org", NULL, &r, 0);
    assert_both_done(&p);
    assert_int_equal(tls_conn_write(p.c, (const uint8_t *)"QUIT\r\n", 6, &w), TLS_OK);
    assert_int_equal(tls_conn_close_notify(p.c), TLS_OK);
    assert_int_equal(tls_conn_close_notify(p.c), TLS_OK); /* idempotent */
    assert_int_equal(transfer(p.c, p.s, &p.ss, &r, 0), TLS_CLOSED);
    assert_int_equal(p.ss.len, 6);
    assert_memory_equal(p.ss.buf, "QUIT\r\n", 6);
    assert_int_equal(tls_conn_read(p.s, buf, sizeof(buf), &n), TLS_CLOSED);
    assert_false(failed(p.s));
    /* The server may still answer and close (TLS 1.3 half-close). */
    assert_int_equal(tls_conn_write(p.s, (const uint8_t *)"221 bye\r\n", 9, &w), TLS_OK);
    assert_int_equal(tls_conn_close_notify(p.s), TLS_OK);
    assert_int_equal(transfer(p.s, p.c, &p.cs, &r, 0), TLS_CLOSED);
    assert_int_equal(p.cs.len, 9);
    pair_free(&p);

    /* Misuse before the handshake completes. */
    early = tls_conn_new_client(cctx, "mx.example.org");
    assert_int_equal(tls_conn_close_notify(early), TLS_ERROR);
    assert_int_equal(tls_conn_write(early, buf, 1, &w), TLS_ERROR);
    assert_true(err_has(early, "before the handshake"));
    tls_conn_free(early);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

/* Garbage instead of a ClientHello fails cleanly. */
static void test_garbage_input(void **state)
{
    const struct fx *f = *state;
    struct tls_ctx *sctx = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);
    static const uint8_t junk[] = "EHLO mx.example.org\r\n";
    struct tls_conn *s = tls_conn_new_server(sctx);
    char e[256];

    assert_int_equal(tls_conn_feed(s, junk, sizeof(junk) - 1), TLS_ERROR);
    assert_int_equal(tls_conn_in_pending(s), 0);
    tls_conn_error_string(s, e, sizeof(e));
    print_message("garbage: %s\n", e);
    assert_true(failed(s));
    assert_int_equal(tls_conn_fail_kind(s), TLS_FAIL_NOT_TLS);
    assert_int_equal(tls_conn_feed(s, junk, 3), TLS_ERROR);
    tls_conn_free(s);
    tls_ctx_unref(sctx);

    /* A client that reaches a plaintext SMTP server: "no TLS here", not a failing server. */
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    struct tls_conn *c = tls_conn_new_client(cctx, "mx.example.org");
    static const uint8_t banner[] = "220 mx.example.org ESMTP\r\n";
    assert_int_equal(tls_conn_feed(c, NULL, 0), TLS_AGAIN);
    assert_int_equal(tls_conn_fail_kind(c), TLS_FAIL_NONE);
    assert_int_equal(tls_conn_feed(c, banner, sizeof(banner) - 1), TLS_ERROR);
    assert_int_equal(tls_conn_fail_kind(c), TLS_FAIL_NOT_TLS);
    tls_conn_free(c);
    tls_ctx_unref(cctx);
}

/* Programmer errors on the borrowed input are refused, not silently mis-handled. */
static void test_feed_misuse(void **state)
{
    const struct fx *f = *state;
    struct rng r = {95};
    struct tls_ctx *sctx = server_ctx(f, "srv-p256", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    uint8_t rec[256], buf[16];
    char small[8];
    const uint8_t *p1;
    size_t n, w, got;
    struct pair p;

    handshake(&p, cctx, sctx, "mx.example.org", NULL, &r, 0);
    assert_both_done(&p);
    assert_int_equal(tls_conn_write(p.c, (const uint8_t *)"NOOP\r\n", 6, &w), TLS_OK);
    n = tls_conn_out_peek(p.c, &p1);
    assert_true(n <= sizeof(rec));
    memcpy(rec, p1, n);
    tls_conn_out_consume(p.c, n);
    assert_int_equal(tls_conn_feed(p.s, rec, n), TLS_OK);
    assert_int_equal(tls_conn_in_pending(p.s), n);
    /* Feeding again before reading the first input to the end. */
    assert_int_equal(tls_conn_feed(p.s, rec, n), TLS_ERROR);
    assert_true(err_has(p.s, "unconsumed"));
    assert_int_equal(tls_conn_in_pending(p.s), 0);
    assert_int_equal(tls_conn_read(p.s, buf, sizeof(buf), &got), TLS_ERROR);
    assert_int_equal(got, 0);
    /* Reading with no room. */
    assert_int_equal(tls_conn_read(p.c, buf, 0, &got), TLS_ERROR);
    assert_true(err_has(p.c, "no room"));
    /* A short error buffer is truncated and terminated. */
    tls_conn_error_string(p.c, small, sizeof(small));
    assert_int_equal(strlen(small), sizeof(small) - 1);
    pair_free(&p);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

/* A context released by its owner lives on while a connection holds it. */
static void test_ctx_outlives_owner(void **state)
{
    const struct fx *f = *state;
    struct rng r = {91};
    struct tls_ctx *sctx = server_ctx(f, "srv-ed25519", TLS_CLIENT_AUTH_NONE, NULL);
    struct tls_ctx *cctx = client_ctx(f, "ca.pem", NULL);
    struct pair p;

    memset(&p, 0, sizeof(p));
    p.c = tls_conn_new_client(cctx, "mx.example.org");
    p.s = tls_conn_new_server(sctx);
    assert_ptr_equal(tls_ctx_ref(sctx), sctx);
    tls_ctx_unref(sctx);
    tls_ctx_unref(sctx); /* the "daemon" swapped it out */
    tls_ctx_unref(cctx);
    assert_int_equal(tls_conn_feed(p.c, NULL, 0), TLS_AGAIN);
    pump(&p, &r, 0);
    assert_both_done(&p);
    pair_free(&p); /* frees the contexts with the last connections (ASan checks) */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_ed25519),
        cmocka_unit_test(test_handshake_p256_single_bytes),
        cmocka_unit_test(test_handshake_random_splits),
        cmocka_unit_test(test_wildcard_left_label_only),
        cmocka_unit_test(test_client_rejects_bad_server_name),
        cmocka_unit_test(test_alpn_absent_refused),
        cmocka_unit_test(test_alpn_other_refused),
        cmocka_unit_test(test_alpn_in_list_accepted),
        cmocka_unit_test(test_tls12_client_refused),
        cmocka_unit_test(test_client_requires_server_alpn),
        cmocka_unit_test(test_hostname_mismatch),
        cmocka_unit_test(test_untrusted_server),
        cmocka_unit_test(test_mtls_accepted_identity),
        cmocka_unit_test(test_mtls_optional_without_cert),
        cmocka_unit_test(test_mtls_required_without_cert),
        cmocka_unit_test(test_mtls_bad_client_certs),
        cmocka_unit_test(test_mtls_per_connection_policy),
        cmocka_unit_test(test_resumption_tickets),
        cmocka_unit_test(test_resumption_needs_same_policy),
        cmocka_unit_test(test_resumption_fleet_keys),
        cmocka_unit_test(test_no_tickets),
        cmocka_unit_test(test_data_1mib_both_ways),
        cmocka_unit_test(test_out_segments_stable),
        cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_close_notify),
        cmocka_unit_test(test_garbage_input),
        cmocka_unit_test(test_feed_misuse),
        cmocka_unit_test(test_ctx_outlives_owner),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
