/* tls/tls_ctx.c — server and client TLS contexts: certificates, trust, tickets, policy.
 * Not connections (tls_conn.c) and not configuration parsing: paths come in a ready struct. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/limits.h"
#include "tls/tls_internal.h"

/* TLS_CHAIN_MAX is the largest number of intermediates accepted after a leaf certificate. */
#define TLS_CHAIN_MAX 8

/* Signature algorithms accepted from peers in CertificateVerify. Ed25519 is off by default in
 * BoringSSL, so it is listed explicitly; RSA-PSS keeps RSA-certified peers reachable. */
static const uint16_t tls_verify_prefs[] = {
    SSL_SIGN_ED25519,
    SSL_SIGN_ECDSA_SECP256R1_SHA256,
    SSL_SIGN_ECDSA_SECP384R1_SHA384,
    SSL_SIGN_RSA_PSS_RSAE_SHA256,
    SSL_SIGN_RSA_PSS_RSAE_SHA384,
    SSL_SIGN_RSA_PSS_RSAE_SHA512,
};

/* The same for a client context that allows TLS 1.2 (SMTP): RSA PKCS#1 as well (TLS 1.3 never
 * uses it in CertificateVerify). */
static const uint16_t tls_verify_prefs_tls12[] = {
    SSL_SIGN_ED25519,
    SSL_SIGN_ECDSA_SECP256R1_SHA256,
    SSL_SIGN_ECDSA_SECP384R1_SHA384,
    SSL_SIGN_RSA_PSS_RSAE_SHA256,
    SSL_SIGN_RSA_PSS_RSAE_SHA384,
    SSL_SIGN_RSA_PSS_RSAE_SHA512,
    SSL_SIGN_RSA_PKCS1_SHA256,
    SSL_SIGN_RSA_PKCS1_SHA384,
    SSL_SIGN_RSA_PKCS1_SHA512,
};

static void tls_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void tls_errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* tls_ssl_reason returns a lower-case description of the oldest queued BoringSSL error (or
 * |fallback| when the queue is empty) in |buf|, and clears the queue. */
static const char *tls_ssl_reason(char *buf, size_t len, const char *fallback)
{
    uint32_t e = ERR_get_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    size_t i;

    ERR_clear_error();
    if (r == NULL)
        r = fallback;
    for (i = 0; r[i] != '\0' && i + 1 < len; i++)
        buf[i] = r[i] == '_' ? ' ' : (char)(r[i] >= 'A' && r[i] <= 'Z' ? r[i] + 32 : r[i]);
    buf[i] = '\0';
    return buf;
}

/* tls_read_file reads the whole regular file |path| (at most TLS_FILE_MAX octets) into a new
 * buffer at |*out| (NUL-terminated, |*out_len| excludes the NUL). The caller wipes and frees
 * it. Returns 0 or -errno with a message in |err|. */
static int tls_read_file(const char *path, uint8_t **out, size_t *out_len, char *err, size_t errlen)
{
    char ebuf[128];
    struct stat st;
    uint8_t *buf = NULL;
    size_t got = 0;
    int fd, rc;

    *out = NULL;
    *out_len = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        rc = -errno;
        tls_errf(err, errlen, "%s: cannot open: %s", path, strerror_r(-rc, ebuf, sizeof(ebuf)));
        return rc;
    }
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        tls_errf(err, errlen, "%s: cannot stat: %s", path, strerror_r(-rc, ebuf, sizeof(ebuf)));
        goto err;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = -EINVAL;
        tls_errf(err, errlen, "%s: not a regular file", path);
        goto err;
    }
    if (st.st_size > TLS_FILE_MAX) {
        rc = -EFBIG;
        tls_errf(err, errlen, "%s: larger than %d octets", path, TLS_FILE_MAX);
        goto err;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        rc = -ENOMEM;
        tls_errf(err, errlen, "%s: out of memory", path);
        goto err;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            tls_errf(err, errlen, "%s: read: %s", path, strerror_r(-rc, ebuf, sizeof(ebuf)));
            goto err;
        }
        if (n == 0)
            break; /* shrank while reading: use what is there */
        got += (size_t)n;
    }
    buf[got] = '\0';
    close(fd);
    *out = buf;
    *out_len = got;
    return 0;
err:
    if (buf != NULL) {
        OPENSSL_cleanse(buf, (size_t)st.st_size + 1);
        free(buf);
    }
    close(fd);
    return rc;
}

static void tls_wipe_free(uint8_t *buf, size_t len)
{
    if (buf == NULL)
        return;
    OPENSSL_cleanse(buf, len + 1);
    free(buf);
}

/* tls_pem_at_end returns true when the PEM reader stopped because no further PEM block is
 * there (the normal end of a file), and clears the error queue either way. */
static bool tls_pem_at_end(void)
{
    uint32_t e = ERR_peek_last_error();
    bool end = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;

    if (end)
        ERR_clear_error();
    return end;
}

/* tls_no_password refuses encrypted PEM keys instead of prompting for a password. */
static int tls_no_password(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)userdata;
    return 0;
}

/* tls_key_type_ok returns true for the key types CMTP certificates may carry. */
static bool tls_key_type_ok(const EVP_PKEY *pk)
{
    const EC_KEY *ec;

    if (EVP_PKEY_id(pk) == EVP_PKEY_ED25519)
        return true;
    if (EVP_PKEY_id(pk) != EVP_PKEY_EC)
        return false;
    ec = EVP_PKEY_get0_EC_KEY(pk);
    return ec != NULL && EC_GROUP_get_curve_name(EC_KEY_get0_group(ec)) == NID_X9_62_prime256v1;
}

/* tls_time_of converts an ASN1_TIME to seconds since the epoch (0 if it cannot). */
static time_t tls_time_of(const ASN1_TIME *t)
{
    int days, secs;
    time_t now = time(NULL);

    if (!ASN1_TIME_diff(&days, &secs, NULL, t))
        return 0;
    return now + (time_t)days * 86400 + secs;
}

/* tls_load_identity loads the certificate chain |cert_path| and the private key |key_path|
 * into |sctx|, checks the key types, that the key matches and that the leaf is valid now, and
 * sets |*not_after|. Returns 0 or a negative errno with a message in |err|. */
static int tls_load_identity(SSL_CTX *sctx, const char *cert_path, const char *key_path,
                             time_t *not_after, char *err, size_t errlen)
{
    char rbuf[128];
    uint8_t *cbuf = NULL, *kbuf = NULL;
    size_t clen = 0, klen = 0;
    BIO *bio = NULL;
    X509 *leaf = NULL, *x = NULL;
    EVP_PKEY *pk = NULL, *cert_pk = NULL;
    int rc, n;

    rc = tls_read_file(cert_path, &cbuf, &clen, err, errlen);
    if (rc != 0)
        goto out;
    rc = -EINVAL;
    bio = BIO_new_mem_buf(cbuf, (long)clen);
    if (bio == NULL) {
        rc = -ENOMEM;
        tls_errf(err, errlen, "%s: out of memory", cert_path);
        goto out;
    }
    leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (leaf == NULL) {
        tls_errf(err, errlen, "%s: no PEM certificate found (%s)", cert_path,
                 tls_ssl_reason(rbuf, sizeof(rbuf), "unreadable"));
        goto out;
    }
    cert_pk = X509_get_pubkey(leaf);
    if (cert_pk == NULL || !tls_key_type_ok(cert_pk)) {
        tls_errf(err, errlen, "%s: unsupported certificate key type (use Ed25519 or ECDSA P-256)",
                 cert_path);
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
        tls_errf(err, errlen, "%s: certificate has expired", cert_path);
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
        tls_errf(err, errlen, "%s: certificate is not yet valid", cert_path);
        goto out;
    }
    if (!SSL_CTX_use_certificate(sctx, leaf)) {
        tls_errf(err, errlen, "%s: certificate refused (%s)", cert_path,
                 tls_ssl_reason(rbuf, sizeof(rbuf), "unknown"));
        goto out;
    }
    for (n = 0;; n++) {
        x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (x == NULL) {
            if (tls_pem_at_end())
                break;
            tls_errf(err, errlen, "%s: bad certificate #%d in chain (%s)", cert_path, n + 2,
                     tls_ssl_reason(rbuf, sizeof(rbuf), "unreadable"));
            goto out;
        }
        if (n == TLS_CHAIN_MAX) {
            tls_errf(err, errlen, "%s: more than %d intermediate certificates", cert_path,
                     TLS_CHAIN_MAX);
            goto out;
        }
        if (!SSL_CTX_add1_chain_cert(sctx, x)) {
            tls_errf(err, errlen, "%s: chain certificate refused (%s)", cert_path,
                     tls_ssl_reason(rbuf, sizeof(rbuf), "unknown"));
            goto out;
        }
        X509_free(x);
        x = NULL;
    }

    rc = tls_read_file(key_path, &kbuf, &klen, err, errlen);
    if (rc != 0)
        goto out;
    rc = -EINVAL;
    BIO_free(bio);
    bio = BIO_new_mem_buf(kbuf, (long)klen);
    if (bio == NULL) {
        rc = -ENOMEM;
        tls_errf(err, errlen, "%s: out of memory", key_path);
        goto out;
    }
    pk = PEM_read_bio_PrivateKey(bio, NULL, tls_no_password, NULL);
    if (pk == NULL) {
        tls_errf(err, errlen, "%s: no usable PEM private key (%s; encrypted keys unsupported)",
                 key_path, tls_ssl_reason(rbuf, sizeof(rbuf), "unreadable"));
        goto out;
    }
    if (!tls_key_type_ok(pk)) {
        tls_errf(err, errlen, "%s: unsupported private key type (use Ed25519 or ECDSA P-256)",
                 key_path);
        goto out;
    }
    if (EVP_PKEY_cmp(cert_pk, pk) != 1) {
        ERR_clear_error();
        tls_errf(err, errlen, "%s: private key does not match the certificate in %s", key_path,
                 cert_path);
        goto out;
    }
    if (!SSL_CTX_use_PrivateKey(sctx, pk) || !SSL_CTX_check_private_key(sctx)) {
        tls_errf(err, errlen, "%s: private key refused (%s)", key_path,
                 tls_ssl_reason(rbuf, sizeof(rbuf), "unknown"));
        goto out;
    }
    *not_after = tls_time_of(X509_get0_notAfter(leaf));
    rc = 0;
out:
    ERR_clear_error();
    X509_free(x);
    X509_free(leaf);
    EVP_PKEY_free(pk);
    EVP_PKEY_free(cert_pk);
    BIO_free(bio);
    tls_wipe_free(cbuf, clen);
    tls_wipe_free(kbuf, klen);
    return rc;
}

/* tls_load_cas adds every certificate of the PEM file |path| to |store| and, if |digest| is
 * not NULL, writes the SHA-256 of the file there. Returns 0 or -errno with a message. */
static int tls_load_cas(X509_STORE *store, const char *path, uint8_t *digest, char *err,
                        size_t errlen)
{
    char rbuf[128];
    uint8_t *buf = NULL;
    size_t len = 0;
    BIO *bio = NULL;
    X509 *x = NULL;
    int rc, n = 0;

    rc = tls_read_file(path, &buf, &len, err, errlen);
    if (rc != 0)
        return rc;
    rc = -EINVAL;
    bio = BIO_new_mem_buf(buf, (long)len);
    if (bio == NULL) {
        rc = -ENOMEM;
        tls_errf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    for (;;) {
        x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (x == NULL) {
            if (tls_pem_at_end())
                break;
            tls_errf(err, errlen, "%s: bad CA certificate #%d (%s)", path, n + 1,
                     tls_ssl_reason(rbuf, sizeof(rbuf), "unreadable"));
            goto out;
        }
        if (!X509_STORE_add_cert(store, x)) {
            uint32_t e = ERR_peek_last_error();
            if (ERR_GET_LIB(e) != ERR_LIB_X509 ||
                ERR_GET_REASON(e) != X509_R_CERT_ALREADY_IN_HASH_TABLE) {
                tls_errf(err, errlen, "%s: CA certificate #%d refused (%s)", path, n + 1,
                         tls_ssl_reason(rbuf, sizeof(rbuf), "unknown"));
                goto out;
            }
            ERR_clear_error();
        }
        X509_free(x);
        x = NULL;
        n++;
    }
    if (n == 0) {
        tls_errf(err, errlen, "%s: no PEM certificate found", path);
        goto out;
    }
    if (digest != NULL)
        SHA256(buf, len, digest);
    rc = 0;
out:
    ERR_clear_error();
    X509_free(x);
    BIO_free(bio);
    tls_wipe_free(buf, len);
    return rc;
}

static int tls_hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* tls_load_ticket_keys parses the ticket key file |path| into |c|: one key per line of
 * 2 * TLS_TICKET_KEY_LEN hex digits, blank lines and lines starting with '#' ignored, the
 * first key current. Returns 0 or -errno with a message (which never echoes key material). */
static int tls_load_ticket_keys(struct tls_ctx *c, const char *path, char *err, size_t errlen)
{
    uint8_t *buf = NULL, raw[TLS_TICKET_KEY_LEN];
    size_t len = 0, pos = 0, lineno = 0, i, k;
    int rc;

    rc = tls_read_file(path, &buf, &len, err, errlen);
    if (rc != 0)
        return rc;
    rc = -EINVAL;
    while (pos < len) {
        size_t start = pos, end;
        lineno++;
        while (pos < len && buf[pos] != '\n')
            pos++;
        end = pos;
        if (pos < len)
            pos++; /* the newline */
        while (start < end && (buf[start] == ' ' || buf[start] == '\t'))
            start++;
        while (end > start && (buf[end - 1] == ' ' || buf[end - 1] == '\t' || buf[end - 1] == '\r'))
            end--;
        if (start == end || buf[start] == '#')
            continue;
        if (end - start != 2 * TLS_TICKET_KEY_LEN) {
            tls_errf(err, errlen, "%s:%zu: a key must be %d hexadecimal digits", path, lineno,
                     2 * TLS_TICKET_KEY_LEN);
            goto out;
        }
        for (i = 0; i < TLS_TICKET_KEY_LEN; i++) {
            int hi = tls_hexval(buf[start + 2 * i]), lo = tls_hexval(buf[start + 2 * i + 1]);
            if (hi < 0 || lo < 0) {
                tls_errf(err, errlen, "%s:%zu: not a hexadecimal key", path, lineno);
                goto out;
            }
            raw[i] = (uint8_t)(hi << 4 | lo);
        }
        if (c->ticket_key_count == TLS_TICKET_KEYS_MAX) {
            tls_errf(err, errlen, "%s:%zu: more than %d keys", path, lineno, TLS_TICKET_KEYS_MAX);
            goto out;
        }
        for (k = 0; k < c->ticket_key_count; k++) {
            if (memcmp(c->ticket_keys[k].name, raw, 16) == 0) {
                tls_errf(err, errlen, "%s:%zu: key name (first 32 digits) repeats that of key %zu",
                         path, lineno, k + 1);
                goto out;
            }
        }
        memcpy(c->ticket_keys[c->ticket_key_count].name, raw, 16);
        memcpy(c->ticket_keys[c->ticket_key_count].hmac_key, raw + 16, 16);
        memcpy(c->ticket_keys[c->ticket_key_count].aes_key, raw + 32, 16);
        c->ticket_key_count++;
    }
    if (c->ticket_key_count == 0) {
        tls_errf(err, errlen, "%s: no ticket key", path);
        goto out;
    }
    rc = 0;
out:
    OPENSSL_cleanse(raw, sizeof(raw));
    tls_wipe_free(buf, len);
    return rc;
}

/* tls_ctx_alloc returns a context with one reference, an SSL_CTX set up with what servers and
 * clients share (TLS 1.3 only, no early data, peer signature algorithms), and the BIO method. */
static struct tls_ctx *tls_ctx_alloc(bool is_server, char *err, size_t errlen)
{
    struct tls_ctx *c = calloc(1, sizeof(*c));

    if (c == NULL)
        goto nomem;
    atomic_init(&c->refs, 1);
    c->is_server = is_server;
    c->ssl_ctx = SSL_CTX_new(TLS_method());
    c->bio_method = tls_bio_method_new();
    if (c->ssl_ctx == NULL || c->bio_method == NULL)
        goto nomem;
    if (!SSL_CTX_set_min_proto_version(c->ssl_ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_max_proto_version(c->ssl_ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_verify_algorithm_prefs(c->ssl_ctx, tls_verify_prefs,
                                            sizeof(tls_verify_prefs) / sizeof(uint16_t)))
        goto nomem;
    SSL_CTX_set_early_data_enabled(c->ssl_ctx, 0);
    SSL_CTX_set_mode(c->ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
    return c;
nomem:
    ERR_clear_error();
    tls_errf(err, errlen, "tls: out of memory");
    tls_ctx_unref(c);
    return NULL;
}

/* tls_ctx_set_sid_ctx derives one session id context per client certificate policy from the
 * client CA set, so a session never resumes under a stricter policy or other CAs. */
static void tls_ctx_set_sid_ctx(struct tls_ctx *c, const uint8_t ca_digest[SHA256_DIGEST_LENGTH])
{
    static const char label[] = "CMTP/1 tls session context";
    SHA256_CTX h;
    uint8_t mode;

    for (mode = 0; mode < 3; mode++) {
        SHA256_Init(&h);
        SHA256_Update(&h, label, sizeof(label));
        SHA256_Update(&h, CMTP_ALPN, sizeof(CMTP_ALPN));
        SHA256_Update(&h, &mode, 1);
        SHA256_Update(&h, ca_digest, SHA256_DIGEST_LENGTH);
        SHA256_Final(c->sid_ctx[mode], &h);
    }
}

/* tls_verify_mode maps a client certificate policy to SSL_VERIFY_* flags. */
static int tls_verify_mode(enum tls_client_auth mode)
{
    switch (mode) {
    case TLS_CLIENT_AUTH_OPTIONAL:
        return SSL_VERIFY_PEER;
    case TLS_CLIENT_AUTH_REQUIRED:
        return SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    case TLS_CLIENT_AUTH_NONE:
        break;
    }
    return SSL_VERIFY_NONE;
}

struct tls_ctx *tls_server_ctx_new(const struct tls_server_config *cfg, char *err, size_t errlen)
{
    uint8_t ca_digest[SHA256_DIGEST_LENGTH] = {0};
    struct tls_ctx *c = NULL;
    SSL_CTX *s;

    if (cfg == NULL || cfg->cert_file == NULL || cfg->key_file == NULL) {
        tls_errf(err, errlen, "tls server: cert_file and key_file are required");
        return NULL;
    }
    if (cfg->client_auth != TLS_CLIENT_AUTH_NONE && cfg->client_auth != TLS_CLIENT_AUTH_OPTIONAL &&
        cfg->client_auth != TLS_CLIENT_AUTH_REQUIRED) {
        tls_errf(err, errlen, "tls server: invalid client_auth");
        return NULL;
    }
    if (cfg->client_auth != TLS_CLIENT_AUTH_NONE && cfg->client_ca_file == NULL) {
        tls_errf(err, errlen, "tls server: client certificates need client_ca_file");
        return NULL;
    }
    c = tls_ctx_alloc(true, err, errlen);
    if (c == NULL)
        return NULL;
    s = c->ssl_ctx;
    if (tls_load_identity(s, cfg->cert_file, cfg->key_file, &c->not_after, err, errlen) != 0)
        goto err;

    /* ALPN is mandatory: the early callback notes a ClientHello without ALPN and the SNI
     * callback (run for every ClientHello) refuses it with no_application_protocol; the ALPN
     * callback refuses a list without cmtp/1 the same way. */
    c->no_alpn = cfg->no_alpn;
    if (!cfg->no_alpn) {
        SSL_CTX_set_select_certificate_cb(s, tls_cb_select_cert);
        SSL_CTX_set_tlsext_servername_callback(s, tls_cb_servername);
        SSL_CTX_set_alpn_select_cb(s, tls_cb_alpn_select, NULL);
    }

    /* Resumption is stateless (tickets only): no server-side session cache to grow. */
    SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
    if (cfg->no_tickets) {
        SSL_CTX_set_options(s, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(s, 0);
    } else {
        /* One ticket per handshake, not BoringSSL's default two: a client resumes with the
         * latest ticket it got (ours keeps only that one), and each ticket costs the server a
         * session encoding, its encryption and a record. */
        SSL_CTX_set_num_tickets(s, TLS_TICKETS_PER_HANDSHAKE);
    }
    if (!cfg->no_tickets && cfg->ticket_key_file != NULL) {
        if (tls_load_ticket_keys(c, cfg->ticket_key_file, err, errlen) != 0)
            goto err;
        SSL_CTX_set_tlsext_ticket_key_cb(s, tls_cb_ticket_key);
    }

    if (cfg->client_ca_file != NULL) {
        if (tls_load_cas(SSL_CTX_get_cert_store(s), cfg->client_ca_file, ca_digest, err, errlen) !=
            0)
            goto err;
        c->has_client_ca = true;
    }
    c->client_auth = cfg->client_auth;
    tls_ctx_set_sid_ctx(c, ca_digest);
    if (!SSL_CTX_set_session_id_context(s, c->sid_ctx[c->client_auth], TLS_SID_CTX_LEN) ||
        !SSL_CTX_set_purpose(s, X509_PURPOSE_SSL_CLIENT)) {
        tls_errf(err, errlen, "tls server: out of memory");
        goto err;
    }
    SSL_CTX_set_verify(s, tls_verify_mode(c->client_auth), NULL);
    ERR_clear_error();
    return c;
err:
    ERR_clear_error();
    tls_ctx_unref(c);
    return NULL;
}

struct tls_ctx *tls_client_ctx_new(const struct tls_client_config *cfg, char *err, size_t errlen)
{
    static const struct tls_client_config none = {0};
    static const uint8_t alpn[] = "\x06" CMTP_ALPN;
    struct tls_ctx *c;
    SSL_CTX *s;

    if (cfg == NULL)
        cfg = &none;
    if ((cfg->cert_file == NULL) != (cfg->key_file == NULL)) {
        tls_errf(err, errlen, "tls client: cert_file and key_file go together");
        return NULL;
    }
    if ((cfg->allow_tls12 || cfg->verify_optional) && !cfg->no_alpn) {
        tls_errf(err, errlen, "tls client: allow_tls12 and verify_optional are for SMTP (no_alpn)");
        return NULL;
    }
    c = tls_ctx_alloc(false, err, errlen);
    if (c == NULL)
        return NULL;
    s = c->ssl_ctx;
    c->no_alpn = cfg->no_alpn;
    c->allow_tls12 = cfg->allow_tls12;
    c->verify_optional = cfg->verify_optional;
    /* TLS 1.2 for SMTP: ECDHE and AEAD only (the 1.3 suites are fixed by BoringSSL), and RSA
     * PKCS#1 signatures, which 1.2 servers with RSA certificates may still need. */
    if (cfg->allow_tls12 &&
        (!SSL_CTX_set_min_proto_version(s, TLS1_2_VERSION) ||
         !SSL_CTX_set_strict_cipher_list(s, "ECDHE+AESGCM:ECDHE+CHACHA20") ||
         !SSL_CTX_set_verify_algorithm_prefs(s, tls_verify_prefs_tls12,
                                             sizeof(tls_verify_prefs_tls12) / sizeof(uint16_t)))) {
        tls_errf(err, errlen, "tls client: cannot enable TLS 1.2");
        goto err;
    }
    if ((!cfg->no_alpn && SSL_CTX_set_alpn_protos(s, alpn, sizeof(alpn) - 1) != 0) ||
        !SSL_CTX_set_purpose(s, X509_PURPOSE_SSL_SERVER)) {
        tls_errf(err, errlen, "tls client: out of memory");
        goto err;
    }
    if (tls_load_cas(SSL_CTX_get_cert_store(s),
                     cfg->ca_file != NULL ? cfg->ca_file : TLS_SYSTEM_CA_FILE, NULL, err,
                     errlen) != 0)
        goto err;
    /* verify_optional: BoringSSL still verifies the chain and the name with SSL_VERIFY_NONE and
     * keeps the result (SSL_get_verify_result), which tls_conn_peer_verified reports. */
    SSL_CTX_set_verify(s, cfg->verify_optional ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    if (cfg->cert_file != NULL &&
        tls_load_identity(s, cfg->cert_file, cfg->key_file, &c->not_after, err, errlen) != 0)
        goto err;
    /* Tickets reach the connection through the new-session callback; no internal cache. */
    SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(s, tls_cb_new_session);
    ERR_clear_error();
    return c;
err:
    ERR_clear_error();
    tls_ctx_unref(c);
    return NULL;
}

struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx)
{
    atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed);
    return ctx;
}

void tls_ctx_unref(struct tls_ctx *ctx)
{
    if (ctx == NULL || atomic_fetch_sub_explicit(&ctx->refs, 1, memory_order_acq_rel) != 1)
        return;
    SSL_CTX_free(ctx->ssl_ctx);
    if (ctx->bio_method != NULL)
        BIO_meth_free(ctx->bio_method);
    OPENSSL_cleanse(ctx, sizeof(*ctx));
    free(ctx);
}

bool tls_ctx_is_server(const struct tls_ctx *ctx)
{
    return ctx->is_server;
}

time_t tls_ctx_cert_not_after(const struct tls_ctx *ctx)
{
    return ctx->not_after;
}
