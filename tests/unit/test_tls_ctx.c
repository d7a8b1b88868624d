/* tests/unit/test_tls_ctx.c — TLS context creation: every bad file is refused with a clear
 * "file: reason" message and nothing leaks. Not handshakes (test_tls_conn.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "tests/unit/helpers/tls_testcerts.h"
#include "tls/tls.h"

struct fx {
    char dir[TLS_TESTCERTS_DIR_MAX];
};

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

/* P is a small ring of path buffers so several paths can appear in one config. */
struct paths {
    char p[8][512];
    int i;
};

static const char *P(const struct fx *f, struct paths *ps, const char *name)
{
    char *b = ps->p[ps->i++ % 8];
    return tls_testcerts_path(b, sizeof(ps->p[0]), f->dir, name);
}

/* server_err tries a server config and asserts it fails with a message containing both
 * |file| (a path suffix, or NULL) and |why|. */
static void server_err(const struct tls_server_config *cfg, const char *file, const char *why)
{
    char err[512] = "";
    struct tls_ctx *c = tls_server_ctx_new(cfg, err, sizeof(err));

    print_message("    -> %s\n", err);
    assert_null(c);
    if (file != NULL)
        assert_non_null(strstr(err, file));
    assert_non_null(strstr(err, why));
}

static void client_err(const struct tls_client_config *cfg, const char *file, const char *why)
{
    char err[512] = "";
    struct tls_ctx *c = tls_client_ctx_new(cfg, err, sizeof(err));

    print_message("    -> %s\n", err);
    assert_null(c);
    if (file != NULL)
        assert_non_null(strstr(err, file));
    assert_non_null(strstr(err, why));
}

static void test_server_ok_and_expiry(void **state)
{
    const struct fx *f = *state;
    struct paths ps = {0};
    struct tls_server_config cfg = {0};
    char err[256];
    struct tls_ctx *c;
    time_t na;

    cfg.cert_file = P(f, &ps, "srv-p256.pem");
    cfg.key_file = P(f, &ps, "srv-p256.key");
    c = tls_server_ctx_new(&cfg, err, sizeof(err));
    assert_non_null(c);
    na = tls_ctx_cert_not_after(c);
    /* 2099-12-31T23:59:59Z, allowing for the day-granular conversion. */
    assert_true(na > (time_t)4102444800 - 86400 && na < (time_t)4102444800 + 86400);
    assert_ptr_equal(tls_ctx_ref(c), c);
    tls_ctx_unref(c);
    tls_ctx_unref(c);
    tls_ctx_unref(NULL);
}

static void test_server_missing_files(void **state)
{
    const struct fx *f = *state;
    struct paths ps = {0};
    struct tls_server_config cfg = {0};

    server_err(&cfg, NULL, "cert_file and key_file are required");
    server_err(NULL, NULL, "required");
    cfg.cert_file = P(f, &ps, "nope.pem");
    cfg.key_file = P(f, &ps, "srv-p256.key");
    server_err(&cfg, "nope.pem", "No such file or directory");
    cfg.cert_file = P(f, &ps, "srv-p256.pem");
    cfg.key_file = P(f, &ps, "nope.key");
    server_err(&cfg, "nope.key", "No such file or directory");
    cfg.key_file = f->dir; /* a directory */
    server_err(&cfg, f->dir, "not a regular file");
}

static void test_server_garbage_files(void **state)
{
    const struct fx *f = *state;
    struct paths ps = {0};
    struct tls_server_config cfg = {0};
    char buf[8192];
    FILE *in;
    size_t n;

    assert_int_equal(tls_testcerts_write(f->dir, "garbage.pem", "hello\n"), 0);
    assert_int_equal(tls_testcerts_write(f->dir, "empty.pem", ""), 0);
    assert_int_equal(
        tls_testcerts_write(f->dir, "broken.pem",
                            "-----BEGIN CERTIFICATE-----\nAAAA!!!!\n-----END CERTIFICATE-----\n"),
        0);
    cfg.key_file = P(f, &ps, "srv-p256.key");
    cfg.cert_file = P(f, &ps, "garbage.pem");
    server_err(&cfg, "garbage.pem", "no PEM certificate");
    cfg.cert_file = P(f, &ps, "empty.pem");
    server_err(&cfg, "empty.pem", "no PEM certificate");
    cfg.cert_file = P(f, &ps, "broken.pem");
    server_err(&cfg, "broken.pem", "no PEM certificate");
    cfg.cert_file = P(f, &ps, "srv-p256.pem");
    cfg.key_file = P(f, &ps, "garbage.pem");
    server_err(&cfg, "garbage.pem", "no usable PEM private key");
    /* A certificate where the key should be. */
    cfg.key_file = P(f, &ps, "srv-p256.pem");
    server_err(&cfg, "srv-p256.pem", "no usable PEM private key");

    /* A chain with a corrupt second certificate. */
    in = fopen(P(f, &ps, "srv-ed25519.pem"), "r");
    assert_non_null(in);
    n = fread(buf, 1, sizeof(buf) - 200, in);
    fclose(in);
    buf[n] = '\0';
    strcat(buf, "-----BEGIN CERTIFICATE-----\nMIIBnotbase64@@\n-----END CERTIFICATE-----\n");
    assert_int_equal(tls_testcerts_write(f->dir, "badchain.pem", buf), 0);
    cfg.cert_file = P(f, &ps, "badchain.pem");
    cfg.key_file = P(f, &ps, "srv-ed25519.key");
    server_err(&cfg, "badchain.pem", "bad certificate #2 in chain");
}

static void test_server_key_mismatch(void **state)
{
    const struct fx *f = *state;
    struct paths ps = {0};
    struct tls_server_config cfg = {0};

    cfg.cert_file = P(f, &ps, "srv-p256.pem");
    cfg.key_file = P(f, &ps, "cli.key"); /* same type, other key */
    server_err(&cfg, "cli.key", "does not match the certificate");
    cfg.key_file = P(f, &ps, "srv-ed25519.key"); /* other type */
    server_err(&cfg, "srv-ed25519.key", "does not match the certificate");
}

static void test_server_unsupported_and_expired(void **state)
{
    const struct fx *f = *state;
    struct paths ps = {0};
    struct tls_server_config cfg = {0};

    cfg.cert_file = P(f, &ps, "p384.pem");
    cfg.key_file = P(f, &ps, "p384.key");
    server_err(&cfg, "p384.pem", "unsupported certificate key type");
    cfg.cert_file = P(f, &ps, "srv-expired.pem");
    cfg.key_file = P(f, &ps, "srv-expired.key");
    server_err(&cfg, "srv-expired.pem", "certificate has expired");
}

static void test_server_client_ca(void **state)
{
    const struct fx *f = *state;
    struct paths ps = {0};
    struct tls_server_config cfg = {0};

    cfg.cert_file = P(f, &ps, "srv-p256.pem");
    cfg.key_file = P(f, &ps, "srv-p256.key");
    cfg.client_auth = TLS_CLIENT_AUTH_REQUIRED;
    server_err(&cfg, NULL, "client certificates need client_ca_file");
    cfg.client_ca_file = P(f, &ps, "missing-ca.pem");
    server_err(&cfg, "missing-ca.pem", "No such file");
    cfg.client_ca_file = P(f, &ps, "garbage.pem");
    assert_int_equal(tls_testcerts_write(f->dir, "garbage.pem", "hello\n"), 0);
    server_err(&cfg, "garbage.pem", "no PEM certificate found");
    cfg.client_auth = (enum tls_client_auth)7;
    server_err(&cfg, NULL, "invalid client_auth");
}

static void test_ticket_key_files(void **state)
{
    const struct fx *f = *state;
    static const char k1[] = "00112233445566778899aabbccddeeff"
                             "00112233445566778899aabbccddeeff"
                             "00112233445566778899AABBCCDDEEFF";
    static const char k2[] = "ffeeddccbbaa99887766554433221100"
                             "00112233445566778899aabbccddeeff"
                             "00112233445566778899aabbccddeeff";
    struct paths ps = {0};
    struct tls_server_config cfg = {0};
    char buf[2048], err[256];
    struct tls_ctx *c;
    int i;

    cfg.cert_file = P(f, &ps, "srv-p256.pem");
    cfg.key_file = P(f, &ps, "srv-p256.key");
    cfg.ticket_key_file = P(f, &ps, "tk");

    snprintf(buf, sizeof(buf), "# current\n%s\n\n# previous\n  %s\t\r\n", k1, k2);
    assert_int_equal(tls_testcerts_write(f->dir, "tk", buf), 0);
    c = tls_server_ctx_new(&cfg, err, sizeof(err));
    assert_non_null(c);
    tls_ctx_unref(c);

    assert_int_equal(tls_testcerts_write(f->dir, "tk", "# nothing\n\n"), 0);
    server_err(&cfg, "tk", "no ticket key");
    snprintf(buf, sizeof(buf), "%s\n%.95s\n", k1, k2);
    assert_int_equal(tls_testcerts_write(f->dir, "tk", buf), 0);
    server_err(&cfg, "tk:2:", "must be 96 hexadecimal digits");
    snprintf(buf, sizeof(buf), "%s0\n", k1);
    assert_int_equal(tls_testcerts_write(f->dir, "tk", buf), 0);
    server_err(&cfg, "tk:1:", "must be 96 hexadecimal digits");
    snprintf(buf, sizeof(buf), "%.95sg\n", k1);
    assert_int_equal(tls_testcerts_write(f->dir, "tk", buf), 0);
    server_err(&cfg, "tk:1:", "not a hexadecimal key");
    snprintf(buf, sizeof(buf), "%s\n%s\n", k1, k1);
    assert_int_equal(tls_testcerts_write(f->dir, "tk", buf), 0);
    server_err(&cfg, "tk:2:", "repeats");
    buf[0] = '\0';
    for (i = 0; i < TLS_TICKET_KEYS_MAX + 1; i++) {
        char line[100];
        snprintf(line, sizeof(line), "%02x%s\n", i, k2 + 2);
        strcat(buf, line);
    }
    assert_int_equal(tls_testcerts_write(f->dir, "tk", buf), 0);
    server_err(&cfg, "tk:9:", "more than 8 keys");
    cfg.ticket_key_file = P(f, &ps, "no-such-tk");
    server_err(&cfg, "no-such-tk", "No such file");
}

static void test_client_ctx(void **state)
{
    const struct fx *f = *state;
    struct paths ps = {0};
    struct tls_client_config cfg = {0};
    char err[256];
    struct tls_ctx *c;

    /* All-zero: the system trust store. */
    c = tls_client_ctx_new(&cfg, err, sizeof(err));
    assert_non_null(c);
    assert_int_equal(tls_ctx_cert_not_after(c), 0);
    tls_ctx_unref(c);
    c = tls_client_ctx_new(NULL, err, sizeof(err));
    assert_non_null(c);
    tls_ctx_unref(c);

    cfg.ca_file = P(f, &ps, "nope-ca.pem");
    client_err(&cfg, "nope-ca.pem", "No such file");
    cfg.ca_file = P(f, &ps, "ca.pem");
    cfg.cert_file = P(f, &ps, "cli.pem");
    client_err(&cfg, NULL, "cert_file and key_file go together");
    cfg.key_file = P(f, &ps, "cli-noeku.key");
    client_err(&cfg, "cli-noeku.key", "does not match");
    cfg.cert_file = P(f, &ps, "cli-expired.pem");
    cfg.key_file = P(f, &ps, "cli-expired.key");
    client_err(&cfg, "cli-expired.pem", "certificate has expired");
    cfg.cert_file = P(f, &ps, "cli-ed25519.pem");
    cfg.key_file = P(f, &ps, "cli-ed25519.key");
    c = tls_client_ctx_new(&cfg, err, sizeof(err));
    assert_non_null(c);
    assert_true(tls_ctx_cert_not_after(c) > time(NULL));
    tls_ctx_unref(c);
}

/* A failed "reload" leaves the running context untouched and usable. */
static void test_failed_reload_keeps_old(void **state)
{
    const struct fx *f = *state;
    struct paths ps = {0};
    struct tls_server_config cfg = {0};
    char err[256];
    struct tls_ctx *old, *fresh;
    struct tls_conn *t;

    cfg.cert_file = P(f, &ps, "srv-p256.pem");
    cfg.key_file = P(f, &ps, "srv-p256.key");
    old = tls_server_ctx_new(&cfg, err, sizeof(err));
    assert_non_null(old);
    cfg.key_file = P(f, &ps, "srv-ed25519.key");
    fresh = tls_server_ctx_new(&cfg, err, sizeof(err));
    assert_null(fresh);
    t = tls_conn_new_server(old);
    assert_non_null(t);
    tls_conn_free(t);
    tls_ctx_unref(old);
    /* No error buffer: still refused, nothing written. */
    assert_null(tls_server_ctx_new(&cfg, NULL, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_ok_and_expiry),
        cmocka_unit_test(test_server_missing_files),
        cmocka_unit_test(test_server_garbage_files),
        cmocka_unit_test(test_server_key_mismatch),
        cmocka_unit_test(test_server_unsupported_and_expired),
        cmocka_unit_test(test_server_client_ca),
        cmocka_unit_test(test_ticket_key_files),
        cmocka_unit_test(test_client_ctx),
        cmocka_unit_test(test_failed_reload_keeps_old),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
