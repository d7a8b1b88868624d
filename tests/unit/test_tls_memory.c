/* tests/unit/test_tls_memory.c — heap cost of idle TLS connections, measured over 1000
 * handshaken pairs pumped in memory. Not a benchmark of speed; prints the figures it checks. */
#include <dlfcn.h>
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/unit/helpers/tls_testcerts.h"
#include "tls/tls.h"

/* PAIRS handshaken pairs per measurement; fewer under a sanitizer, which is ~3x slower. */
#if defined(__SANITIZE_ADDRESS__)
#define PAIRS 250
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PAIRS 250
#endif
#endif
#ifndef PAIRS
#define PAIRS 1000
#endif

/* IDLE_MAX is the bound asserted per idle connection: a connection still holding a TLS record
 * buffer (16 KiB + overhead) or an outbound segment would exceed it. */
#define IDLE_MAX (12 * 1024)

struct fx {
    char dir[TLS_TESTCERTS_DIR_MAX];
    struct tls_conn *c[PAIRS];
    struct tls_conn *s[PAIRS];
};

typedef int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t);
typedef size_t (*asan_bytes_fn)(void);

/* heap_bytes returns the bytes the application holds, from whichever allocator is linked:
 * jemalloc (release build), the ASan allocator, or glibc malloc. */
static size_t heap_bytes(const char **which)
{
    mallctl_fn mallctl;
    asan_bytes_fn asan;
    struct mallinfo2 mi;

    *(void **)&mallctl = dlsym(RTLD_DEFAULT, "mallctl");
    if (mallctl != NULL) {
        uint64_t epoch = 1;
        size_t allocated = 0, sz = sizeof(epoch);
        mallctl("thread.tcache.flush", NULL, NULL, NULL, 0);
        mallctl("epoch", &epoch, &sz, &epoch, sz);
        sz = sizeof(allocated);
        if (mallctl("stats.allocated", &allocated, &sz, NULL, 0) == 0) {
            *which = "jemalloc stats.allocated";
            return allocated;
        }
    }
    *(void **)&asan = dlsym(RTLD_DEFAULT, "__sanitizer_get_current_allocated_bytes");
    if (asan != NULL) {
        *which = "asan current_allocated_bytes";
        return asan();
    }
    mi = mallinfo2();
    *which = "glibc mallinfo2";
    return mi.uordblks + mi.hblkhd;
}

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

/* move passes all of |from|'s ciphertext to |to| and reads (discards) |to|'s plaintext;
 * returns the plaintext octet count. */
static size_t move(struct tls_conn *from, struct tls_conn *to)
{
    uint8_t buf[16384];
    size_t total = 0;

    while (tls_conn_out_pending(from) > 0) {
        const uint8_t *p;
        size_t n = tls_conn_out_peek(from, &p), got;
        enum tls_result r = tls_conn_feed(to, p, n);

        while (r != TLS_ERROR && (r = tls_conn_read(to, buf, sizeof(buf), &got)) == TLS_OK)
            total += got;
        assert_int_equal(r, TLS_AGAIN);
        tls_conn_out_consume(from, n);
    }
    return total;
}

static void pump(struct tls_conn *c, struct tls_conn *s)
{
    int i;

    for (i = 0; i < 100 && (tls_conn_out_pending(c) > 0 || tls_conn_out_pending(s) > 0); i++) {
        move(c, s);
        move(s, c);
    }
    assert_int_equal(tls_conn_out_pending(c), 0);
    assert_int_equal(tls_conn_out_pending(s), 0);
    assert_true(tls_conn_handshake_done(c));
    assert_true(tls_conn_handshake_done(s));
}

static void make_pairs(struct fx *f, struct tls_ctx *cctx, struct tls_ctx *sctx, size_t n,
                       size_t data)
{
    static uint8_t blob[10000];
    size_t i, w;

    for (i = 0; i < n; i++) {
        f->c[i] = tls_conn_new_client(cctx, "mx.example.org");
        f->s[i] = tls_conn_new_server(sctx);
        assert_non_null(f->c[i]);
        assert_non_null(f->s[i]);
        assert_int_equal(tls_conn_feed(f->c[i], NULL, 0), TLS_AGAIN);
        pump(f->c[i], f->s[i]);
        if (data > 0) {
            assert_int_equal(tls_conn_write(f->c[i], blob, data, &w), TLS_OK);
            assert_int_equal(tls_conn_write(f->s[i], blob, data, &w), TLS_OK);
            assert_int_equal(move(f->c[i], f->s[i]), data);
            assert_int_equal(move(f->s[i], f->c[i]), data);
        }
    }
}

static void free_side(struct tls_conn **v, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        tls_conn_free(v[i]);
        v[i] = NULL;
    }
}

/* measure creates |n| (<= PAIRS) handshaken pairs (after |data| octets each way, if any), frees one
 * side and returns the heap bytes per remaining idle connection. */
static size_t measure(struct fx *f, struct tls_ctx *cctx, struct tls_ctx *sctx, size_t n,
                      bool keep_server, size_t data)
{
    const char *which;
    size_t base, idle, end;

    base = heap_bytes(&which);
    make_pairs(f, cctx, sctx, n, data);
    free_side(keep_server ? f->c : f->s, n);
    idle = heap_bytes(&which);
    free_side(keep_server ? f->s : f->c, n);
    end = heap_bytes(&which);
    /* Freeing every connection gives the memory back (4 KiB slack for allocator caches). */
    assert_true(end < base + 4096);
    assert_true(idle > base);
    print_message("  [%s, %zu pairs] %s: %zu bytes per idle %s connection\n", which, n,
                  data > 0 ? "after 10 KB each way" : "after handshake", (idle - base) / n,
                  keep_server ? "server" : "client");
    return (idle - base) / n;
}

static struct tls_ctx *sctx_new(const struct fx *f, enum tls_client_auth auth)
{
    char c[512], k[512], ca[512], err[256];
    struct tls_server_config cfg = {0};
    struct tls_ctx *ctx;

    cfg.cert_file = tls_testcerts_path(c, sizeof(c), f->dir, "srv-p256.pem");
    cfg.key_file = tls_testcerts_path(k, sizeof(k), f->dir, "srv-p256.key");
    cfg.client_ca_file = tls_testcerts_path(ca, sizeof(ca), f->dir, "ca.pem");
    cfg.client_auth = auth;
    ctx = tls_server_ctx_new(&cfg, err, sizeof(err));
    assert_non_null(ctx);
    return ctx;
}

static struct tls_ctx *cctx_new(const struct fx *f, bool cert)
{
    char c[512], k[512], ca[512], err[256];
    struct tls_client_config cfg = {0};
    struct tls_ctx *ctx;

    cfg.ca_file = tls_testcerts_path(ca, sizeof(ca), f->dir, "ca.pem");
    if (cert) {
        cfg.cert_file = tls_testcerts_path(c, sizeof(c), f->dir, "cli.pem");
        cfg.key_file = tls_testcerts_path(k, sizeof(k), f->dir, "cli.key");
    }
    ctx = tls_client_ctx_new(&cfg, err, sizeof(err));
    assert_non_null(ctx);
    return ctx;
}

static void warm_up(struct fx *f, struct tls_ctx *cctx, struct tls_ctx *sctx)
{
    struct tls_conn *c = tls_conn_new_client(cctx, "mx.example.org");
    struct tls_conn *s = tls_conn_new_server(sctx);

    assert_int_equal(tls_conn_feed(c, NULL, 0), TLS_AGAIN);
    pump(c, s);
    tls_conn_free(c);
    tls_conn_free(s);
    (void)f;
}

static void test_idle_memory(void **state)
{
    struct fx *f = *state;
    struct tls_ctx *sctx = sctx_new(f, TLS_CLIENT_AUTH_NONE);
    struct tls_ctx *cctx = cctx_new(f, false);
    size_t srv, srv_data, cli;

    warm_up(f, cctx, sctx);
    srv = measure(f, cctx, sctx, PAIRS, true, 0);
    srv_data = measure(f, cctx, sctx, PAIRS, true, 10000);
    cli = measure(f, cctx, sctx, PAIRS / 4, false, 0);
    assert_true(srv < IDLE_MAX);
    /* Record buffers are released once empty: traffic leaves no more behind than the
     * handshake did. */
    assert_true(srv_data < IDLE_MAX);
    assert_true(srv_data < srv + 512);
    /* A client keeps its latest session ticket (secrets + certificate chain). */
    assert_true(cli < IDLE_MAX + 8192);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

static void test_idle_memory_mtls(void **state)
{
    struct fx *f = *state;
    struct tls_ctx *sctx = sctx_new(f, TLS_CLIENT_AUTH_REQUIRED);
    struct tls_ctx *cctx = cctx_new(f, true);
    size_t srv;

    warm_up(f, cctx, sctx);
    srv = measure(f, cctx, sctx, PAIRS / 4, true, 0);
    /* The session keeps the client's certificate for the identity: a little more. */
    assert_true(srv < IDLE_MAX + 4096);
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idle_memory),
        cmocka_unit_test(test_idle_memory_mtls),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
