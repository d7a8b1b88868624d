/* tests/unit/test_tls_noalpn.c — the no_alpn client context (SMTP STARTTLS for delivery and the
 * bench) against a real BoringSSL server without ALPN over memory: handshake and data both ways,
 * name and CA verification, TLS 1.2 refused, backpressure; and that our CMTP server refuses it.
 * The SMTP delivery context (allow_tls12, verify_optional): TLS 1.2 with AEAD suites only, and
 * the verification verdict of tls_conn_peer_verified. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tests/unit/helpers/tls_testcerts.h"
#include "tls/tls.h"

static char dir[TLS_TESTCERTS_DIR_MAX];

/* noalpn_ctx is a client context for SMTP STARTTLS: no ALPN. */
static struct tls_ctx *noalpn_ctx(const char *ca, char *err, size_t errlen)
{
    struct tls_client_config cfg = {.ca_file = ca, .no_alpn = true};
    return tls_client_ctx_new(&cfg, err, errlen);
}

static int setup(void **state)
{
    (void)state;
    return tls_testcerts_make(dir, sizeof(dir)) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    tls_testcerts_remove(dir);
    return 0;
}

/* srv is a plain BoringSSL server with memory BIOs and no ALPN callback, like an SMTP server. */
struct srv {
    SSL_CTX *ctx;
    SSL *ssl;
};

/* srv_new_cert makes a server presenting |cert| (.pem and .key of the test PKI). */
static void srv_new_cert(struct srv *s, int max_version, const char *cert)
{
    char p[512], name[64];
    s->ctx = SSL_CTX_new(TLS_method());
    assert_non_null(s->ctx);
    assert_true(SSL_CTX_set_max_proto_version(s->ctx, (uint16_t)max_version));
    snprintf(name, sizeof(name), "%s.pem", cert);
    assert_true(
        SSL_CTX_use_certificate_chain_file(s->ctx, tls_testcerts_path(p, sizeof(p), dir, name)));
    snprintf(name, sizeof(name), "%s.key", cert);
    assert_true(SSL_CTX_use_PrivateKey_file(s->ctx, tls_testcerts_path(p, sizeof(p), dir, name),
                                            SSL_FILETYPE_PEM));
    s->ssl = SSL_new(s->ctx);
    assert_non_null(s->ssl);
    SSL_set_bio(s->ssl, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
    SSL_set_accept_state(s->ssl);
}

static void srv_new(struct srv *s, int max_version)
{
    srv_new_cert(s, max_version, "srv-ed25519");
}

static void srv_free(struct srv *s)
{
    SSL_free(s->ssl);
    SSL_CTX_free(s->ctx);
}

/* c2s moves the client's pending output into the server; returns octets moved. */
static size_t c2s(struct tls_conn *c, struct srv *s)
{
    struct iovec iov[8];
    size_t n = tls_conn_out_iov(c, iov, 8), tot = 0;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(BIO_write(SSL_get_rbio(s->ssl), iov[i].iov_base, (int)iov[i].iov_len),
                         (int)iov[i].iov_len);
        tot += iov[i].iov_len;
    }
    tls_conn_out_consume(c, tot);
    return tot;
}

/* s2c moves the server's output into the client; returns what tls_conn_feed said. */
static enum tls_result s2c(struct srv *s, struct tls_conn *c)
{
    uint8_t buf[65536];
    int n = BIO_read(SSL_get_wbio(s->ssl), buf, sizeof(buf));
    return tls_conn_feed(c, buf, n > 0 ? (size_t)n : 0);
}

/* handshake drives both sides; returns the client's final result. */
static enum tls_result handshake(struct tls_conn *c, struct srv *s)
{
    enum tls_result r = tls_conn_feed(c, NULL, 0);
    for (int i = 0; i < 10 && r == TLS_AGAIN; i++) {
        c2s(c, s);
        SSL_do_handshake(s->ssl);
        r = s2c(s, c);
    }
    c2s(c, s);
    SSL_do_handshake(s->ssl);
    if (r == TLS_ERROR) {
        char why[200];
        tls_conn_error_string(c, why, sizeof(why));
        print_message("handshake: %s\n", why);
    }
    return r;
}

static struct tls_ctx *ctx_with(const char *ca)
{
    char p[512], err[256];
    struct tls_ctx *c = noalpn_ctx(tls_testcerts_path(p, sizeof(p), dir, ca), err, sizeof(err));
    assert_non_null(c);
    return c;
}

static void test_roundtrip(void **state)
{
    (void)state;
    struct tls_ctx *cx = ctx_with("ca.pem");
    struct tls_conn *c = tls_conn_new_client(cx, "mx.example.org");
    struct srv s;
    uint8_t buf[256];
    size_t n = 0, w = 0;
    const char *msg = "EHLO bench.example\r\n";

    srv_new(&s, TLS1_3_VERSION);
    assert_non_null(c);
    assert_int_equal(handshake(c, &s), TLS_OK);
    assert_true(tls_conn_handshake_done(c));
    /* client -> server */
    assert_int_equal(tls_conn_write(c, (const uint8_t *)msg, strlen(msg), &w), TLS_OK);
    assert_int_equal(w, strlen(msg));
    c2s(c, &s);
    assert_int_equal(SSL_read(s.ssl, buf, sizeof(buf)), (int)strlen(msg));
    assert_memory_equal(buf, msg, strlen(msg));
    /* server -> client (tickets first, then data) */
    assert_int_equal(SSL_write(s.ssl, "250 ok\r\n", 8), 8);
    assert_int_equal(s2c(&s, c), TLS_OK);
    assert_int_equal(tls_conn_read(c, buf, sizeof(buf), &n), TLS_OK);
    assert_int_equal(n, 8);
    assert_memory_equal(buf, "250 ok\r\n", 8);
    assert_int_equal(tls_conn_read(c, buf, sizeof(buf), &n), TLS_AGAIN);
    /* close_notify */
    SSL_shutdown(s.ssl);
    assert_int_equal(s2c(&s, c), TLS_OK);
    assert_int_equal(tls_conn_read(c, buf, sizeof(buf), &n), TLS_CLOSED);
    tls_conn_free(c);
    srv_free(&s);
    tls_ctx_unref(cx);
}

static void test_backpressure(void **state)
{
    (void)state;
    struct tls_ctx *cx = ctx_with("ca.pem");
    struct tls_conn *c = tls_conn_new_client(cx, "mx.example.org");
    struct srv s;
    static uint8_t big[256 * 1024], got[256 * 1024];
    size_t off = 0, rcvd = 0, w;
    int rounds = 0;

    srv_new(&s, TLS1_3_VERSION);
    assert_int_equal(handshake(c, &s), TLS_OK);
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 7);
    while (off < sizeof(big)) {
        enum tls_result r = tls_conn_write(c, big + off, sizeof(big) - off, &w);
        struct iovec iov[16];
        size_t pend = 0, k = tls_conn_out_iov(c, iov, 16);
        for (size_t i = 0; i < k; i++)
            pend += iov[i].iov_len;
        /* at most one record past the threshold */
        assert_true(pend <= TLS_OUT_PENDING_MAX + TLS_OUT_SEG_SIZE);
        off += w;
        if (r == TLS_AGAIN)
            rounds++;
        else
            assert_int_equal(r, TLS_OK);
        c2s(c, &s);
        for (;;) {
            int n = SSL_read(s.ssl, got + rcvd, (int)(sizeof(got) - rcvd));
            if (n <= 0)
                break;
            rcvd += (size_t)n;
        }
    }
    assert_true(rounds > 0);
    assert_int_equal(rcvd, sizeof(big));
    assert_memory_equal(got, big, sizeof(big));
    tls_conn_free(c);
    srv_free(&s);
    tls_ctx_unref(cx);
}

static void test_refusals(void **state)
{
    (void)state;
    struct tls_ctx *cx = ctx_with("ca.pem"), *cx2 = ctx_with("ca2.pem");
    struct tls_conn *c;
    struct srv s;
    char why[200];
    char p[512], err[256];

    /* wrong name */
    srv_new(&s, TLS1_3_VERSION);
    c = tls_conn_new_client(cx, "other.example.org");
    assert_int_equal(handshake(c, &s), TLS_ERROR);
    tls_conn_error_string(c, why, sizeof(why));
    assert_non_null(strstr(why, "certificate"));
    tls_conn_free(c);
    srv_free(&s);
    /* untrusted CA */
    srv_new(&s, TLS1_3_VERSION);
    c = tls_conn_new_client(cx2, "mx.example.org");
    assert_int_equal(handshake(c, &s), TLS_ERROR);
    tls_conn_free(c);
    srv_free(&s);
    /* a TLS 1.2-only server */
    srv_new(&s, TLS1_2_VERSION);
    c = tls_conn_new_client(cx, "mx.example.org");
    assert_int_equal(handshake(c, &s), TLS_ERROR);
    tls_conn_error_string(c, why, sizeof(why));
    assert_string_not_equal(why, "no error");
    tls_conn_free(c);
    srv_free(&s);
    /* a missing CA file */
    assert_null(noalpn_ctx(tls_testcerts_path(p, sizeof(p), dir, "nope.pem"), err, sizeof(err)));
    assert_non_null(strstr(err, "nope.pem"));
    tls_conn_free(NULL);
    tls_ctx_unref(NULL);
    tls_ctx_unref(cx);
    tls_ctx_unref(cx2);
}

/* smtp_ctx is a client context for SMTP delivery: no ALPN, TLS 1.2 allowed, verification
 * optional (the caller's policy decides). */
static struct tls_ctx *smtp_ctx(const char *ca)
{
    char p[512], err[256];
    struct tls_client_config cfg = {.ca_file = tls_testcerts_path(p, sizeof(p), dir, ca),
                                    .no_alpn = true,
                                    .allow_tls12 = true,
                                    .verify_optional = true};
    struct tls_ctx *c = tls_client_ctx_new(&cfg, err, sizeof(err));
    assert_non_null(c);
    return c;
}

static void test_tls12_allowed(void **state)
{
    (void)state;
    struct tls_ctx *cx = smtp_ctx("ca.pem");
    struct tls_conn *c = tls_conn_new_client(cx, "mx.example.org");
    struct srv s;
    uint8_t buf[64];
    size_t n = 0, w = 0;
    char why[128];

    srv_new_cert(&s, TLS1_2_VERSION, "srv-p256");
    assert_int_equal(handshake(c, &s), TLS_OK);
    assert_string_equal(tls_conn_version(c), "TLSv1.2");
    /* forward-secret AEAD only */
    assert_non_null(strstr(tls_conn_cipher(c), "ECDHE"));
    assert_true(strstr(tls_conn_cipher(c), "GCM") != NULL ||
                strstr(tls_conn_cipher(c), "CHACHA20") != NULL);
    assert_true(tls_conn_peer_verified(c, why, sizeof(why)));
    assert_null(tls_conn_alpn(c));
    assert_int_equal(tls_conn_write(c, (const uint8_t *)"QUIT\r\n", 6, &w), TLS_OK);
    c2s(c, &s);
    assert_int_equal(SSL_read(s.ssl, buf, sizeof(buf)), 6);
    assert_int_equal(SSL_write(s.ssl, "221 bye\r\n", 9), 9);
    assert_int_equal(s2c(&s, c), TLS_OK);
    assert_int_equal(tls_conn_read(c, buf, sizeof(buf), &n), TLS_OK);
    assert_int_equal(n, 9);
    tls_conn_free(c);
    srv_free(&s);
    /* TLS 1.3 is still preferred */
    c = tls_conn_new_client(cx, "mx.example.org");
    srv_new_cert(&s, TLS1_3_VERSION, "srv-p256");
    assert_int_equal(handshake(c, &s), TLS_OK);
    assert_string_equal(tls_conn_version(c), "TLSv1.3");
    assert_true(tls_conn_peer_verified(c, NULL, 0));
    tls_conn_free(c);
    srv_free(&s);
    /* a TLS 1.2 server with only a CBC suite is refused */
    c = tls_conn_new_client(cx, "mx.example.org");
    srv_new_cert(&s, TLS1_2_VERSION, "srv-p256");
    assert_true(SSL_set_strict_cipher_list(s.ssl, "ECDHE-ECDSA-AES128-SHA"));
    assert_int_equal(handshake(c, &s), TLS_ERROR);
    tls_conn_free(c);
    srv_free(&s);
    tls_ctx_unref(cx);
}

/* verified_with runs a handshake against |cert| for |name| on |cx| and returns
 * tls_conn_peer_verified, with the reason in |why|. */
static bool verified_with(struct tls_ctx *cx, const char *cert, const char *name, char *why,
                          size_t whylen)
{
    struct tls_conn *c = tls_conn_new_client(cx, name);
    struct srv s;
    bool v;

    assert_non_null(c);
    srv_new_cert(&s, TLS1_3_VERSION, cert);
    assert_int_equal(handshake(c, &s), TLS_OK);
    why[0] = '\0';
    v = tls_conn_peer_verified(c, why, whylen);
    tls_conn_free(c);
    srv_free(&s);
    return v;
}

static void test_verify_optional(void **state)
{
    (void)state;
    struct tls_ctx *cx = smtp_ctx("ca.pem");
    struct tls_ctx *strict = ctx_with("ca.pem");
    char why[160], p[512], err[256];

    assert_true(verified_with(cx, "srv-ed25519", "mx.example.org", why, sizeof(why)));
    assert_true(verified_with(cx, "srv-ed25519", "a.example.net", why, sizeof(why)));
    /* the handshake succeeds, the verdict says why it is not verified */
    assert_false(verified_with(cx, "srv-ed25519", "other.example.org", why, sizeof(why)));
    assert_non_null(strstr(why, "certificate not verified"));
    assert_false(verified_with(cx, "srv-untrusted", "mx.example.org", why, sizeof(why)));
    assert_non_null(strstr(why, "certificate not verified"));
    assert_false(verified_with(cx, "srv-expired", "mx.example.org", why, sizeof(why)));
    assert_non_null(strstr(why, "expired"));
    /* without a server name: no SNI, never verified */
    struct tls_conn *c = tls_conn_new_client(cx, NULL);
    struct srv s;
    assert_non_null(c);
    srv_new(&s, TLS1_3_VERSION);
    assert_int_equal(handshake(c, &s), TLS_OK);
    assert_null(SSL_get_servername(s.ssl, TLSEXT_NAMETYPE_host_name));
    assert_false(tls_conn_peer_verified(c, why, sizeof(why)));
    assert_non_null(strstr(why, "no server name"));
    assert_null(tls_conn_get_session(c));
    tls_conn_free(c);
    srv_free(&s);
    /* a strict context: no connection without a name; verified whenever the handshake is done */
    assert_null(tls_conn_new_client(strict, NULL));
    assert_true(verified_with(strict, "srv-ed25519", "mx.example.org", why, sizeof(why)));
    /* the options are for SMTP contexts only */
    struct tls_client_config bad = {.ca_file = tls_testcerts_path(p, sizeof(p), dir, "ca.pem"),
                                    .verify_optional = true};
    assert_null(tls_client_ctx_new(&bad, err, sizeof(err)));
    assert_non_null(strstr(err, "no_alpn"));
    bad.verify_optional = false;
    bad.allow_tls12 = true;
    assert_null(tls_client_ctx_new(&bad, err, sizeof(err)));
    tls_ctx_unref(cx);
    tls_ctx_unref(strict);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),       cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_refusals),        cmocka_unit_test(test_tls12_allowed),
        cmocka_unit_test(test_verify_optional),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
