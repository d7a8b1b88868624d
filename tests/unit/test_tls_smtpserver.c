/* tests/unit/test_tls_smtpserver.c — the no_alpn server context (the SMTP ingress's STARTTLS)
 * against our own clients over memory: an SMTP client (no ALPN) completes the handshake and
 * exchanges data; a client that offers ALPN gets none selected (so a CMTP client, which requires
 * cmtp/1, fails); the CMTP server context still refuses a client without ALPN. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "tests/unit/helpers/tls_testcerts.h"
#include "tls/tls.h"

static char dir[TLS_TESTCERTS_DIR_MAX];

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

static struct tls_ctx *server(bool no_alpn)
{
    char cert[512], key[512], err[256];
    struct tls_server_config cfg = {
        .cert_file = tls_testcerts_path(cert, sizeof(cert), dir, "srv-ed25519.pem"),
        .key_file = tls_testcerts_path(key, sizeof(key), dir, "srv-ed25519.key"),
        .no_alpn = no_alpn,
    };
    struct tls_ctx *c = tls_server_ctx_new(&cfg, err, sizeof(err));
    if (c == NULL)
        print_message("server ctx: %s\n", err);
    assert_non_null(c);
    return c;
}

static struct tls_ctx *client(bool no_alpn)
{
    char ca[512], err[256];
    struct tls_client_config cfg = {
        .ca_file = tls_testcerts_path(ca, sizeof(ca), dir, "ca.pem"),
        .no_alpn = no_alpn,
    };
    struct tls_ctx *c = tls_client_ctx_new(&cfg, err, sizeof(err));
    assert_non_null(c);
    return c;
}

/* move sends everything |from| has queued into |to|, through |keep| (the fed ciphertext must stay
 * valid until |to| has read it: tls_conn_feed does not copy); returns what the feed said
 * (TLS_AGAIN when nothing was queued). */
static enum tls_result move(struct tls_conn *from, struct tls_conn *to, uint8_t keep[65536])
{
    const uint8_t *p;
    size_t n = tls_conn_out_peek(from, &p);
    enum tls_result r = TLS_AGAIN;
    while (n > 0) {
        if (n > 65536)
            n = 65536;
        memcpy(keep, p, n);
        tls_conn_out_consume(from, n);
        r = tls_conn_feed(to, keep, n);
        if (r == TLS_ERROR)
            return r;
        if (tls_conn_in_pending(to) > 0)
            return r; /* the caller reads it before anything else is fed */
        n = tls_conn_out_peek(from, &p);
    }
    return r;
}

static uint8_t to_server[65536], to_client[65536];

/* handshake runs both sides until both are done or one failed; returns true when both are
 * done. */
static bool handshake(struct tls_conn *c, struct tls_conn *s)
{
    tls_conn_feed(c, NULL, 0);
    for (int i = 0; i < 12; i++) {
        if (move(c, s, to_server) == TLS_ERROR || move(s, c, to_client) == TLS_ERROR)
            return false;
        if (tls_conn_handshake_done(c) && tls_conn_handshake_done(s))
            return true;
    }
    return false;
}

static void test_smtp_client_accepted(void **state)
{
    (void)state;
    struct tls_ctx *sx = server(true), *cx = client(true);
    struct tls_conn *s = tls_conn_new_server(sx), *c = tls_conn_new_client(cx, "mx.example.org");
    uint8_t buf[64];
    size_t w = 0, n = 0;
    assert_true(handshake(c, s));
    assert_null(tls_conn_alpn(s));
    assert_string_equal(tls_conn_version(s), "TLSv1.3");
    assert_int_equal(tls_conn_write(c, (const uint8_t *)"EHLO x\r\n", 8, &w), TLS_OK);
    assert_int_equal(w, 8);
    move(c, s, to_server);
    assert_int_equal(tls_conn_read(s, buf, sizeof(buf), &n), TLS_OK);
    assert_int_equal(n, 8);
    assert_memory_equal(buf, "EHLO x\r\n", 8);
    tls_conn_free(c);
    tls_conn_free(s);
    tls_ctx_unref(cx);
    tls_ctx_unref(sx);
}

static void test_alpn_client_gets_none(void **state)
{
    (void)state;
    struct tls_ctx *sx = server(true), *cx = client(false);
    struct tls_conn *s = tls_conn_new_server(sx), *c = tls_conn_new_client(cx, "mx.example.org");
    char why[200];
    assert_false(handshake(c, s));
    tls_conn_error_string(c, why, sizeof(why));
    assert_non_null(strstr(why, "ALPN"));
    tls_conn_free(c);
    tls_conn_free(s);
    tls_ctx_unref(cx);
    tls_ctx_unref(sx);
}

static void test_cmtp_server_still_requires_alpn(void **state)
{
    (void)state;
    struct tls_ctx *sx = server(false), *cx = client(true);
    struct tls_conn *s = tls_conn_new_server(sx), *c = tls_conn_new_client(cx, "mx.example.org");
    assert_false(handshake(c, s));
    assert_false(tls_conn_handshake_done(s));
    tls_conn_free(c);
    tls_conn_free(s);
    tls_ctx_unref(cx);
    tls_ctx_unref(sx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smtp_client_accepted),
        cmocka_unit_test(test_alpn_client_gets_none),
        cmocka_unit_test(test_cmtp_server_still_requires_alpn),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
