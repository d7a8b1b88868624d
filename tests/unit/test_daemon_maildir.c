/* tests/unit/test_daemon_maildir.c — Maildir delivery into a real temporary directory: byte-exact
 * files, the CMTP-Trace field, unique names over 1000 deliveries, fsync counts, path safety
 * (encoding, symbolic links), error classification and cleanup. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/dsn.h"
#include "daemon/maildir.h"

struct fx {
    char root[256];
};

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm_rf removes the fixture's directory tree (links are removed, never followed). */
static int rm_rf(const char *path)
{
    return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    strcpy(f->root, "/tmp/cmtp-maildir-XXXXXX");
    assert_non_null(mkdtemp(f->root));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    assert_int_equal(rm_rf(f->root), 0);
    free(f);
    return 0;
}

static struct cmtp_addr addr(const char *s)
{
    struct cmtp_addr a;
    assert_int_equal(cmtp_addr_parse(&a, s, strlen(s), 0), CMTP_ADDR_OK);
    return a;
}

/* read_file reads |dir|/|name| into a malloc'd buffer. */
static uint8_t *read_file(const char *dir, const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    uint8_t *buf = malloc(1 << 20);
    assert_non_null(buf);
    *len = fread(buf, 1, 1 << 20, fp);
    fclose(fp);
    return buf;
}

/* list returns the number of entries of |dir| (without . and ..), the first copied to |first|. */
static size_t list(const char *dir, char *first, size_t first_size)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (n == 0 && first != NULL)
            snprintf(first, first_size, "%s", e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

/* name_ok checks `<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>`. */
static void name_ok(const char *name, const char *host, size_t size)
{
    const char *p = name;
    char *end;
    strtoull(p, &end, 10);
    assert_true(end > p && *end == '.');
    p = end + 1;
    assert_int_equal(*p++, 'M');
    unsigned long usec = strtoul(p, &end, 10);
    assert_true(end > p && usec < 1000000 && *end == 'P');
    p = end + 1;
    assert_int_equal(strtol(p, &end, 10), getpid());
    assert_int_equal(*end, 'Q');
    p = end + 1;
    strtoull(p, &end, 10);
    assert_true(end > p && *end == '.');
    p = end + 1;
    size_t hl = strlen(host);
    assert_int_equal(strncmp(p, host, hl), 0);
    char want[64];
    snprintf(want, sizeof(want), ",S=%zu", size);
    assert_string_equal(p + hl, want);
}

static void deliver(struct maildir_ctx *c, const struct cmtp_addr *r, const uint8_t *trace,
                    size_t tn, const uint8_t *body, size_t bn, size_t step, char *name,
                    size_t name_size)
{
    struct maildir_msg m;
    assert_int_equal(maildir_open(&m, c, r, trace, tn), 0);
    for (size_t off = 0; off < bn;) {
        size_t k = bn - off < step ? bn - off : step;
        assert_int_equal(maildir_write(&m, body + off, k), 0);
        off += k;
    }
    assert_int_equal(maildir_commit(&m, name, name_size), 0);
}

static void test_encode(void **state)
{
    (void)state;
    char out[300];
    static const struct {
        const char *in;
        size_t n;
        const char *want;
    } ok[] = {
        {"bob", 3, "bob"},
        {"a/b", 3, "a%2Fb"},
        {"100%", 4, "100%25"},
        {".x", 2, "%2Ex"},
        {"..", 2, "%2E."},
        {"a.b", 3, "a.b"},
        {"a\0b", 3, "a%00b"},
        {"\x01\x7f", 2, "%01%7F"},
        {"a b", 3, "a%20b"},
        {"j\xc3\xb6rg", 5, "j\xc3\xb6rg"},
        {"x\xff\xc3(", 4, "x%FF%C3("},
        {"${run{x}}", 9, "${run{x}}"},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int n = maildir_local_encode(out, sizeof(out), ok[i].in, ok[i].n);
        assert_int_equal(n, (int)strlen(ok[i].want));
        assert_string_equal(out, ok[i].want);
    }
    assert_int_equal(maildir_local_encode(out, sizeof(out), "", 0), -EINVAL);
    char big[300];
    memset(big, 'a', 255);
    assert_int_equal(maildir_local_encode(out, sizeof(out), big, 255), 255);
    assert_int_equal(maildir_local_encode(out, sizeof(out), big, 256), -ENAMETOOLONG);
    memset(big, '/', 86);
    assert_int_equal(maildir_local_encode(out, sizeof(out), big, 86), -ENAMETOOLONG);
    assert_int_equal(maildir_local_encode(out, 4, "abcd", 4), -ENAMETOOLONG);
}

static void test_deliver_bytes(void **state)
{
    struct fx *f = *state;
    struct maildir_ctx c;
    assert_int_equal(maildir_ctx_init(&c, f->root, "mx/1:a,b", 0, true), 0);
    assert_string_equal(c.host, "mx\\0571\\072a\\054b");
    struct cmtp_addr r = addr("<bob@b.test>");
    struct cmtp_trace t;
    memset(&t, 0, sizeof(t));
    t.hop = 1;
    strcpy(t.by, "mx.b.test");
    strcpy(t.from, "a.test");
    strcpy(t.tls, "TLSv1.3/TLS_AES_128_GCM_SHA256");
    strcpy(t.peer_id, "a.test");
    t.at = 1780330804;
    char trace[1024];
    int tn = cmtp_dsn_trace_field(trace, sizeof(trace), &t, 1, false);
    assert_true(tn > 0);
    /* a binary body with everything a transport could trip on */
    uint8_t body[5000];
    uint32_t x = 7;
    for (size_t i = 0; i < sizeof(body); i++) {
        x = x * 1103515245u + 12345u;
        body[i] = (uint8_t)(x >> 16);
    }
    memcpy(body, "Subject: x\r\n\r\n.\r\n\0\r.\r", 22);
    char name[512];
    deliver(&c, &r, (const uint8_t *)trace, (size_t)tn, body, sizeof(body), 333, name,
            sizeof(name));
    /* first delivery: root, domain, mailbox and its three directories fsynced, then the file
     * and new/ */
    assert_int_equal(c.fsyncs, 1 + 1 + 3 + 2);
    assert_int_equal(c.delivered, 1);
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/b.test/bob/new", f->root);
    char listed[512];
    assert_int_equal(list(dir, listed, sizeof(listed)), 1);
    assert_string_equal(listed, name);
    name_ok(name, c.host, (size_t)tn + sizeof(body));
    size_t len;
    uint8_t *got = read_file(dir, name, &len);
    assert_int_equal(len, (size_t)tn + sizeof(body));
    assert_memory_equal(got, trace, (size_t)tn);
    assert_memory_equal(got + tn, body, sizeof(body));
    free(got);
    snprintf(dir, sizeof(dir), "%s/b.test/bob/tmp", f->root);
    assert_int_equal(list(dir, NULL, 0), 0);
    snprintf(dir, sizeof(dir), "%s/b.test/bob/cur", f->root);
    assert_int_equal(list(dir, NULL, 0), 0);
    struct stat st;
    snprintf(dir, sizeof(dir), "%s/b.test/bob", f->root);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    /* second delivery: the file and new/ only */
    deliver(&c, &r, NULL, 0, (const uint8_t *)"x", 1, 1, name, sizeof(name));
    assert_int_equal(c.fsyncs, 7 + 2);
    snprintf(dir, sizeof(dir), "%s/b.test/bob/new", f->root);
    got = read_file(dir, name, &len);
    assert_int_equal(len, 1);
    assert_int_equal(got[0], 'x');
    free(got);
    maildir_ctx_cleanup(&c);
}

static void test_trace_line_endings(void **state)
{
    struct fx *f = *state;
    struct maildir_ctx c;
    assert_int_equal(maildir_ctx_init(&c, f->root, "h", 1, true), 0);
    struct cmtp_addr r = addr("<lf@b.test>");
    static const char trace[] = "CMTP-Trace: AAAA\r\n BBBB\r\n";
    char name[512], dir[512];
    size_t len;
    snprintf(dir, sizeof(dir), "%s/b.test/lf/new", f->root);
    /* a store message with LF line endings gets an LF field */
    static const char lfbody[] = "From: a\nSubject: b\n\nbody\n";
    deliver(&c, &r, (const uint8_t *)trace, sizeof(trace) - 1, (const uint8_t *)lfbody,
            sizeof(lfbody) - 1, 1000, name, sizeof(name));
    uint8_t *got = read_file(dir, name, &len);
    assert_int_equal(len, 23 + sizeof(lfbody) - 1);
    assert_memory_equal(got, "CMTP-Trace: AAAA\n BBBB\nFrom: a\n", 31);
    name_ok(name, "h", len);
    free(got);
    /* an empty body: the field alone, CRLF */
    deliver(&c, &r, (const uint8_t *)trace, sizeof(trace) - 1, NULL, 0, 1, name, sizeof(name));
    got = read_file(dir, name, &len);
    assert_int_equal(len, sizeof(trace) - 1);
    assert_memory_equal(got, trace, len);
    free(got);
    /* malformed fields are refused: injected header, bad characters, missing CRLF */
    static const char *const bad[] = {
        "CMTP-Trace: AAAA\r\nBcc: x@y\r\n",
        "CMTP-Trace: AA=A\r\n",
        "CMTP-Trace: AAAA",
        "CMTP-Trace: AAAA\n",
        "Received: x\r\n",
        "CMTP-Trace: \r\n",
        "CMTP-Trace: AAAA\r\n BB\rB\r\n",
        "CMTP-Trace: AAAA\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct maildir_msg m;
        if (maildir_open(&m, &c, &r, (const uint8_t *)bad[i], strlen(bad[i])) != -EINVAL)
            fail_msg("accepted trace field %zu", i);
        maildir_abort(&m);
    }
    maildir_ctx_cleanup(&c);
}

static void test_thousand_unique(void **state)
{
    struct fx *f = *state;
    struct maildir_ctx c;
    assert_int_equal(maildir_ctx_init(&c, f->root, "mx.b.test", 3, true), 0);
    struct cmtp_addr r = addr("<many@b.test>");
    char name[512], dir[512];
    for (int i = 0; i < 1000; i++) {
        char body[64];
        int n = snprintf(body, sizeof(body), "Subject: %d\r\n\r\nmessage %d\r\n", i, i);
        deliver(&c, &r, NULL, 0, (const uint8_t *)body, (size_t)n, 7, name, sizeof(name));
    }
    assert_int_equal(c.delivered, 1000);
    snprintf(dir, sizeof(dir), "%s/b.test/many/new", f->root);
    assert_int_equal(list(dir, NULL, 0), 1000);
    /* every message once, byte-exact */
    static bool seen[1000];
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        size_t len;
        uint8_t *got = read_file(dir, e->d_name, &len);
        int i = -1;
        assert_int_equal(sscanf((const char *)got, "Subject: %d", &i), 1);
        assert_true(i >= 0 && i < 1000 && !seen[i]);
        seen[i] = true;
        char body[64];
        int n = snprintf(body, sizeof(body), "Subject: %d\r\n\r\nmessage %d\r\n", i, i);
        assert_int_equal(len, (size_t)n);
        assert_memory_equal(got, body, len);
        name_ok(e->d_name, "mx.b.test", len);
        free(got);
    }
    closedir(d);
    snprintf(dir, sizeof(dir), "%s/b.test/many/tmp", f->root);
    assert_int_equal(list(dir, NULL, 0), 0);
    maildir_ctx_cleanup(&c);
}

static void test_path_safety(void **state)
{
    struct fx *f = *state;
    struct maildir_ctx c;
    char path[600], target[600];
    assert_int_equal(maildir_ctx_init(&c, f->root, "h", 0, true), 0);
    /* "/" in a local part stays inside one directory */
    struct cmtp_addr r = addr("<a/b@b.test>");
    char name[512];
    deliver(&c, &r, NULL, 0, (const uint8_t *)"m", 1, 1, name, sizeof(name));
    snprintf(path, sizeof(path), "%s/b.test/a%%2Fb/new", f->root);
    assert_int_equal(list(path, NULL, 0), 1);
    snprintf(path, sizeof(path), "%s/b.test/a", f->root);
    assert_int_equal(access(path, F_OK), -1);
    /* UTF-8 local parts are fine file names */
    r = addr("<j\xc3\xb6rg@b.test>");
    deliver(&c, &r, NULL, 0, (const uint8_t *)"m", 1, 1, name, sizeof(name));
    snprintf(path, sizeof(path), "%s/b.test/j\xc3\xb6rg/new", f->root);
    assert_int_equal(list(path, NULL, 0), 1);
    /* a symbolic link in place of a mailbox or a domain is never followed */
    snprintf(target, sizeof(target), "%s/elsewhere", f->root);
    assert_int_equal(mkdir(target, 0700), 0);
    snprintf(path, sizeof(path), "%s/b.test/victim", f->root);
    assert_int_equal(symlink(target, path), 0);
    snprintf(path, sizeof(path), "%s/evil.test", f->root);
    assert_int_equal(symlink(target, path), 0);
    struct maildir_msg m;
    r = addr("<victim@b.test>");
    int e = maildir_open(&m, &c, &r, NULL, 0);
    assert_true(e == -ELOOP || e == -ENOTDIR);
    assert_true(maildir_err_permanent(e));
    r = addr("<x@evil.test>");
    e = maildir_open(&m, &c, &r, NULL, 0);
    assert_true(e == -ELOOP || e == -ENOTDIR);
    assert_int_equal(list(target, NULL, 0), 0);
    /* a file in place of tmp/ */
    snprintf(path, sizeof(path), "%s/b.test/broken", f->root);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/b.test/broken/tmp", f->root);
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    r = addr("<broken@b.test>");
    assert_int_equal(maildir_open(&m, &c, &r, NULL, 0), -ENOTDIR);
    /* a null address, a missing mailbox without create */
    struct cmtp_addr null;
    assert_int_equal(cmtp_addr_parse(&null, "<>", 2, CMTP_ADDR_ALLOW_NULL), CMTP_ADDR_OK);
    assert_int_equal(maildir_open(&m, &c, &null, NULL, 0), -EINVAL);
    assert_int_equal(maildir_open(&m, &c, NULL, NULL, 0), -EINVAL);
    maildir_ctx_cleanup(&c);
    assert_int_equal(maildir_ctx_init(&c, f->root, "h", 0, false), 0);
    r = addr("<nobody@b.test>");
    e = maildir_open(&m, &c, &r, NULL, 0);
    assert_int_equal(e, -ENOENT);
    assert_true(maildir_err_permanent(e));
    r = addr("<bob@nodomain.test>");
    assert_int_equal(maildir_open(&m, &c, &r, NULL, 0), -ENOENT);
    /* an existing mailbox works without create */
    r = addr("<a/b@b.test>");
    deliver(&c, &r, NULL, 0, (const uint8_t *)"m2", 2, 1, name, sizeof(name));
    maildir_ctx_cleanup(&c);
    /* a missing root without create */
    snprintf(path, sizeof(path), "%s/no-root", f->root);
    assert_int_equal(maildir_ctx_init(&c, path, "h", 0, false), -ENOENT);
    maildir_ctx_cleanup(&c);
    assert_int_equal(maildir_ctx_init(&c, path, "h", 0, true), 0);
    maildir_ctx_cleanup(&c);
}

static void test_errors_and_abort(void **state)
{
    struct fx *f = *state;
    struct maildir_ctx c;
    char dir[512];
    assert_int_equal(maildir_ctx_init(&c, f->root, "h", 0, true), 0);
    struct cmtp_addr r = addr("<err@b.test>");
    /* abort leaves nothing behind */
    struct maildir_msg m;
    assert_int_equal(maildir_open(&m, &c, &r, NULL, 0), 0);
    assert_int_equal(maildir_write(&m, (const uint8_t *)"partial", 7), 0);
    snprintf(dir, sizeof(dir), "%s/b.test/err/tmp", f->root);
    assert_int_equal(list(dir, NULL, 0), 1);
    maildir_abort(&m);
    maildir_abort(&m); /* idempotent */
    assert_int_equal(list(dir, NULL, 0), 0);
    snprintf(dir, sizeof(dir), "%s/b.test/err/new", f->root);
    assert_int_equal(list(dir, NULL, 0), 0);
    assert_int_equal(maildir_write(&m, (const uint8_t *)"x", 1), -EBADF);
    assert_int_equal(maildir_commit(&m, NULL, 0), -EBADF);
    /* a write the file system refuses (file size limit: EFBIG) is a temporary failure */
    struct rlimit old, small;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    small = old;
    small.rlim_cur = 4096;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    assert_int_equal(maildir_open(&m, &c, &r, NULL, 0), 0);
    static uint8_t big[10000];
    int e = maildir_write(&m, big, sizeof(big));
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    assert_int_equal(e, -EFBIG);
    assert_false(maildir_err_permanent(e));
    maildir_abort(&m);
    snprintf(dir, sizeof(dir), "%s/b.test/err/tmp", f->root);
    assert_int_equal(list(dir, NULL, 0), 0);
    /* the classification table */
    static const int perm[] = {EINVAL, ENAMETOOLONG, ENOENT, ENOTDIR, ELOOP, EISDIR};
    static const int temp[] = {ENOSPC, EDQUOT, EIO, EFBIG, EACCES, EROFS, EMFILE, ENOMEM, EAGAIN};
    for (size_t i = 0; i < sizeof(perm) / sizeof(perm[0]); i++) {
        assert_true(maildir_err_permanent(-perm[i]));
        assert_true(maildir_err_permanent(perm[i]));
    }
    for (size_t i = 0; i < sizeof(temp) / sizeof(temp[0]); i++)
        assert_false(maildir_err_permanent(-temp[i]));
    /* ctx misuse */
    maildir_ctx_cleanup(&c);
    assert_int_equal(maildir_ctx_init(&c, NULL, "h", 0, true), -EINVAL);
    maildir_ctx_cleanup(&c);
    assert_int_equal(maildir_open(&m, &c, &r, NULL, 0), -EINVAL);
    assert_int_equal(maildir_open(&m, NULL, &r, NULL, 0), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode),
        cmocka_unit_test_setup_teardown(test_deliver_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trace_line_endings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thousand_unique, setup, teardown),
        cmocka_unit_test_setup_teardown(test_path_safety, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_and_abort, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
