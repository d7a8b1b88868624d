/* tests/unit/helpers/tls_testcerts.c — builds the TLS tests' PKI with the openssl CLI.
 * Not BoringSSL-dependent (libc only: it is linked into every unit test program). */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/helpers/tls_testcerts.h"

extern char **environ;

static const char tls_testcerts_cnf[] =
    "[ca]\n"
    "default_ca = tca\n"
    "[tca]\n"
    "database = index.txt\n"
    "new_certs_dir = newcerts\n"
    "serial = serial\n"
    "default_md = default\n"
    "policy = pol\n"
    "unique_subject = no\n"
    "email_in_dn = no\n"
    "[pol]\n"
    "commonName = supplied\n"
    "[req]\n"
    "distinguished_name = dn\n"
    "[dn]\n"
    "[v3_ca]\n"
    "basicConstraints = critical,CA:TRUE\n"
    "keyUsage = critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier = hash\n"
    "[v3_inter]\n"
    "basicConstraints = critical,CA:TRUE,pathlen:0\n"
    "keyUsage = critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier = hash\n"
    "authorityKeyIdentifier = keyid\n"
    "[srv]\n"
    "basicConstraints = CA:FALSE\n"
    "keyUsage = critical,digitalSignature\n"
    "extendedKeyUsage = serverAuth\n"
    "subjectAltName = DNS:mx.example.org,DNS:*.example.net\n"
    "[srv1]\n"
    "basicConstraints = CA:FALSE\n"
    "keyUsage = critical,digitalSignature\n"
    "extendedKeyUsage = serverAuth\n"
    "subjectAltName = DNS:mx.example.org\n"
    "[cli]\n"
    "basicConstraints = CA:FALSE\n"
    "keyUsage = critical,digitalSignature\n"
    "extendedKeyUsage = clientAuth\n"
    "subjectAltName = DNS:Relay.Example.COM,DNS:second.example.com\n"
    "[cli_ed]\n"
    "basicConstraints = CA:FALSE\n"
    "keyUsage = critical,digitalSignature\n"
    "extendedKeyUsage = clientAuth,serverAuth\n"
    "subjectAltName = DNS:*.wild.example.com,DNS:Edge.Example.NET\n"
    "[cli_noeku]\n"
    "basicConstraints = CA:FALSE\n"
    "keyUsage = critical,digitalSignature\n"
    "extendedKeyUsage = serverAuth\n"
    "subjectAltName = DNS:noeku.example.com\n";

const char *tls_testcerts_path(char *out, size_t outlen, const char *dir, const char *name)
{
    int n = snprintf(out, outlen, "%s/%s", dir, name);

    if (n < 0 || (size_t)n >= outlen)
        abort();
    return out;
}

int tls_testcerts_write(const char *dir, const char *name, const char *content)
{
    char path[512];
    FILE *f = fopen(tls_testcerts_path(path, sizeof(path), dir, name), "w");
    int rc = 0;

    if (f == NULL)
        return -1;
    if (fputs(content, f) == EOF)
        rc = -1;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

/* run executes openssl with |argv| (argv[0] = "openssl") in |dir| (the process's own working
 * directory is untouched), output appended to openssl.log. Returns 0 if it exited with 0. */
static int run(const char *dir, char *const argv[])
{
    posix_spawn_file_actions_t fa;
    char log[512];
    pid_t pid;
    int status = 0, rc;

    tls_testcerts_path(log, sizeof(log), dir, "openssl.log");
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addchdir_np(&fa, dir);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    rc = posix_spawnp(&pid, "openssl", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return -1;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* newkey_args returns the -newkey arguments for |kind| ("ed25519", "p256", "p384"). */
static void newkey_args(const char *kind, const char **a, const char **b, const char **c)
{
    *a = "-newkey";
    if (strcmp(kind, "ed25519") == 0) {
        *b = "ed25519";
        *c = NULL;
    } else if (strcmp(kind, "p384") == 0) {
        *b = "ec";
        *c = "ec_paramgen_curve:P-384";
    } else {
        *b = "ec";
        *c = "ec_paramgen_curve:P-256";
    }
}

/* self_signed makes |name|.pem/.key, a self-signed certificate with extensions |ext|. */
static int self_signed(const char *dir, const char *name, const char *kind, const char *cn,
                       const char *ext)
{
    char key[128], pem[128], subj[128];
    const char *a, *b, *c;

    snprintf(key, sizeof(key), "%s.key", name);
    snprintf(pem, sizeof(pem), "%s.pem", name);
    snprintf(subj, sizeof(subj), "/CN=%s", cn);
    newkey_args(kind, &a, &b, &c);
    if (c != NULL) {
        char *const argv[] = {"openssl",   "req",     "-x509",   "-config",  "openssl.cnf",
                              "-new",      (char *)a, (char *)b, "-pkeyopt", (char *)c,
                              "-nodes",    "-keyout", key,       "-out",     pem,
                              "-subj",     subj,      "-days",   "3650",     "-extensions",
                              (char *)ext, NULL};
        return run(dir, argv);
    }
    char *const argv[] = {"openssl", "req",     "-x509",       "-config",   "openssl.cnf",
                          "-new",    (char *)a, (char *)b,     "-nodes",    "-keyout",
                          key,       "-out",    pem,           "-subj",     subj,
                          "-days",   "3650",    "-extensions", (char *)ext, NULL};
    return run(dir, argv);
}

/* issued makes |name|.pem/.key signed by |issuer|.pem/.key with extension section |ext|,
 * valid from |start| to |end| (openssl ca date format). */
static int issued(const char *dir, const char *name, const char *kind, const char *cn,
                  const char *issuer, const char *ext, const char *start, const char *end)
{
    char key[128], pem[128], csr[128], subj[128], icert[128], ikey[128];
    const char *a, *b, *c;
    int rc;

    snprintf(key, sizeof(key), "%s.key", name);
    snprintf(pem, sizeof(pem), "%s.pem", name);
    snprintf(csr, sizeof(csr), "%s.csr", name);
    snprintf(subj, sizeof(subj), "/CN=%s", cn);
    snprintf(icert, sizeof(icert), "%s.pem", issuer);
    snprintf(ikey, sizeof(ikey), "%s.key", issuer);
    newkey_args(kind, &a, &b, &c);
    if (c != NULL) {
        char *const argv[] = {"openssl", "req",      "-new",    "-config", "openssl.cnf", (char *)a,
                              (char *)b, "-pkeyopt", (char *)c, "-nodes",  "-keyout",     key,
                              "-out",    csr,        "-subj",   subj,      NULL};
        rc = run(dir, argv);
    } else {
        char *const argv[] = {"openssl", "req",     "-new",   "-config", "openssl.cnf",
                              (char *)a, (char *)b, "-nodes", "-keyout", key,
                              "-out",    csr,       "-subj",  subj,      NULL};
        rc = run(dir, argv);
    }
    if (rc != 0)
        return rc;
    char *const argv[] = {"openssl",   "ca",         "-batch",      "-config",  "openssl.cnf",
                          "-cert",     icert,        "-keyfile",    ikey,       "-in",
                          csr,         "-out",       pem,           "-notext",  "-extensions",
                          (char *)ext, "-startdate", (char *)start, "-enddate", (char *)end,
                          NULL};
    return run(dir, argv);
}

/* append_file appends |src| to |dst| (both in |dir|). */
static int append_file(const char *dir, const char *dst, const char *src)
{
    char sp[512], dp[512], buf[4096];
    FILE *in, *out;
    size_t n;
    int rc = 0;

    in = fopen(tls_testcerts_path(sp, sizeof(sp), dir, src), "r");
    if (in == NULL)
        return -1;
    out = fopen(tls_testcerts_path(dp, sizeof(dp), dir, dst), "a");
    if (out == NULL) {
        fclose(in);
        return -1;
    }
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            rc = -1;
    fclose(in);
    if (fclose(out) != 0)
        rc = -1;
    return rc;
}

int tls_testcerts_make(char *dir, size_t dirlen)
{
    static const char valid_from[] = "20200101000000Z", valid_to[] = "20991231235959Z";
    static const char old_from[] = "20200101000000Z", old_to[] = "20200201000000Z";
    const char *tmp = getenv("TMPDIR");
    char path[512];
    int n;

    n = snprintf(dir, dirlen, "%s/cmtp-tls-XXXXXX", tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    if (n < 0 || (size_t)n >= dirlen || mkdtemp(dir) == NULL) {
        perror("tls_testcerts: mkdtemp");
        return -1;
    }
    if (tls_testcerts_write(dir, "openssl.cnf", tls_testcerts_cnf) != 0 ||
        tls_testcerts_write(dir, "index.txt", "") != 0 ||
        tls_testcerts_write(dir, "serial", "1000\n") != 0 ||
        mkdir(tls_testcerts_path(path, sizeof(path), dir, "newcerts"), 0700) != 0) {
        fprintf(stderr, "tls_testcerts: cannot write into %s\n", dir);
        return -1;
    }
#define STEP(what)                                                                                 \
    do {                                                                                           \
        if ((what) != 0) {                                                                         \
            fprintf(stderr, "tls_testcerts: step failed: %s (see %s/openssl.log)\n", #what, dir);  \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)
    STEP(self_signed(dir, "ca", "ed25519", "CMTP Test Root", "v3_ca"));
    STEP(self_signed(dir, "ca2", "p256", "Untrusted Root", "v3_ca"));
    STEP(self_signed(dir, "p384", "p384", "mx.example.org", "srv1"));
    STEP(issued(dir, "inter", "p256", "CMTP Test Intermediate", "ca", "v3_inter", valid_from,
                valid_to));
    STEP(
        issued(dir, "srv-ed25519", "ed25519", "mx.example.org", "ca", "srv", valid_from, valid_to));
    STEP(issued(dir, "srv-p256", "p256", "mx.example.org", "inter", "srv1", valid_from, valid_to));
    STEP(append_file(dir, "srv-p256.pem", "inter.pem"));
    STEP(issued(dir, "srv-untrusted", "p256", "mx.example.org", "ca2", "srv1", valid_from,
                valid_to));
    STEP(issued(dir, "srv-expired", "p256", "mx.example.org", "ca", "srv1", old_from, old_to));
    STEP(issued(dir, "cli", "p256", "relay", "ca", "cli", valid_from, valid_to));
    STEP(issued(dir, "cli-ed25519", "ed25519", "edge", "ca", "cli_ed", valid_from, valid_to));
    STEP(issued(dir, "cli-expired", "p256", "expired", "ca", "cli", old_from, old_to));
    STEP(issued(dir, "cli-noeku", "p256", "noeku", "ca", "cli_noeku", valid_from, valid_to));
    STEP(issued(dir, "cli-untrusted", "p256", "untrusted", "ca2", "cli", valid_from, valid_to));
#undef STEP
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void tls_testcerts_remove(const char *dir)
{
    if (dir != NULL && dir[0] != '\0')
        nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}
