/* tls/tls_conn.c — one TLS 1.3 connection driven over memory: fed ciphertext in, a chain of
 * stable outbound segments out. Not I/O: the caller receives and sends the bytes itself. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/cipher.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/limits.h"
#include "tls/tls_internal.h"

/* tls_seg is one segment of the outbound chain: octets [start, end) of data are pending. A
 * segment is only ever appended to at its end and freed once drained, so pending octets never
 * move. */
struct tls_seg {
    struct tls_seg *next;
    uint32_t start;
    uint32_t end;
    uint8_t data[];
};

#define TLS_SEG_CAP (TLS_OUT_SEG_SIZE - offsetof(struct tls_seg, data))

struct tls_conn {
    struct tls_ctx *ctx;
    SSL *ssl;
    /* in / in_len: fed ciphertext not yet read by BoringSSL (borrowed from the caller). */
    const uint8_t *in;
    size_t in_len;
    struct tls_seg *out_head;
    struct tls_seg *out_tail;
    size_t out_pending;
    /* peer_id: server side, the verified client identity (malloc'd) or NULL. */
    char *peer_id;
    /* server_name: client side, the lower-cased name verified and sent as SNI (malloc'd). */
    char *server_name;
    /* session: client side, the latest ticket received. */
    SSL_SESSION *session;
    /* err_msg: a failure this module detected itself (static text); err_code: the first
     * BoringSSL error of the failure; verify_err: the X509 verification result then. */
    const char *err_msg;
    uint32_t err_code;
    long verify_err;
    /* peer_verify: client side, the server certificate's verification result once the
     * handshake completed (only a verify_optional context lets it be other than X509_V_OK). */
    long peer_verify;
    bool is_server;
    bool started;
    bool hs_done;
    bool failed;
    bool closed;
    bool close_sent;
    bool no_alpn;
    bool alpn_failed; /* the failure is ours: no ALPN protocol agreed (tls_conn_fail_kind) */
};

static const uint8_t tls_alpn_id[] = CMTP_ALPN;
#define TLS_ALPN_ID_LEN (sizeof(tls_alpn_id) - 1)

static struct tls_conn *tls_conn_of(const SSL *ssl)
{
    return BIO_get_data(SSL_get_rbio(ssl));
}

/* --- the BIO: reads from the fed input, appends to the outbound chain --- */

static int tls_out_append(struct tls_conn *t, const uint8_t *p, size_t n)
{
    while (n > 0) {
        struct tls_seg *s = t->out_tail;
        size_t k;

        if (s == NULL || s->end == TLS_SEG_CAP) {
            s = malloc(TLS_OUT_SEG_SIZE);
            if (s == NULL)
                return -ENOMEM;
            s->next = NULL;
            s->start = 0;
            s->end = 0;
            if (t->out_tail != NULL)
                t->out_tail->next = s;
            else
                t->out_head = s;
            t->out_tail = s;
        }
        k = TLS_SEG_CAP - s->end;
        if (k > n)
            k = n;
        memcpy(s->data + s->end, p, k);
        s->end += (uint32_t)k;
        t->out_pending += k;
        p += k;
        n -= k;
    }
    return 0;
}

static int tls_bio_write(BIO *bio, const char *in, int inl)
{
    struct tls_conn *t = BIO_get_data(bio);

    BIO_clear_retry_flags(bio);
    if (inl <= 0)
        return 0;
    /* Out of memory is fatal (no retry flag): the stream would have a hole otherwise. */
    if (tls_out_append(t, (const uint8_t *)in, (size_t)inl) != 0)
        return -1;
    return inl;
}

static int tls_bio_read(BIO *bio, char *out, int outl)
{
    struct tls_conn *t = BIO_get_data(bio);
    size_t k;

    BIO_clear_retry_flags(bio);
    if (outl <= 0)
        return 0;
    if (t->in_len == 0) {
        BIO_set_retry_read(bio);
        return -1;
    }
    k = t->in_len < (size_t)outl ? t->in_len : (size_t)outl;
    memcpy(out, t->in, k);
    t->in += k;
    t->in_len -= k;
    if (t->in_len == 0)
        t->in = NULL;
    return (int)k;
}

static long tls_bio_ctrl(BIO *bio, int cmd, long larg, void *parg)
{
    struct tls_conn *t = BIO_get_data(bio);

    (void)larg;
    (void)parg;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return t != NULL && t->in_len < LONG_MAX ? (long)t->in_len : 0;
    case BIO_CTRL_WPENDING:
        return 0;
    default:
        return 0;
    }
}

BIO_METHOD *tls_bio_method_new(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "cmtp tls memory");

    if (m == NULL)
        return NULL;
    if (!BIO_meth_set_write(m, tls_bio_write) || !BIO_meth_set_read(m, tls_bio_read) ||
        !BIO_meth_set_ctrl(m, tls_bio_ctrl)) {
        BIO_meth_free(m);
        return NULL;
    }
    return m;
}

/* --- callbacks installed on the SSL_CTX --- */

enum ssl_select_cert_result_t tls_cb_select_cert(const SSL_CLIENT_HELLO *hello)
{
    struct tls_conn *t = tls_conn_of(hello->ssl);
    const uint8_t *data;
    size_t len;

    t->no_alpn = !SSL_early_callback_ctx_extension_get(
        hello, TLSEXT_TYPE_application_layer_protocol_negotiation, &data, &len);
    return ssl_select_cert_success;
}

int tls_cb_servername(SSL *ssl, int *alert, void *arg)
{
    struct tls_conn *t = tls_conn_of(ssl);

    (void)arg;
    if (t->no_alpn) {
        t->err_msg = "client offered no ALPN protocol (" CMTP_ALPN " is required)";
        t->alpn_failed = true;
        *alert = SSL_AD_NO_APPLICATION_PROTOCOL;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

int tls_cb_alpn_select(SSL *ssl, const uint8_t **out, uint8_t *out_len, const uint8_t *in,
                       unsigned in_len, void *arg)
{
    struct tls_conn *t = tls_conn_of(ssl);
    unsigned pos = 0;

    (void)arg;
    while (pos < in_len) {
        unsigned l = in[pos];
        if (l == 0 || l > in_len - pos - 1)
            break;
        if (l == TLS_ALPN_ID_LEN && memcmp(in + pos + 1, tls_alpn_id, l) == 0) {
            *out = in + pos + 1;
            *out_len = (uint8_t)l;
            return SSL_TLSEXT_ERR_OK;
        }
        pos += 1 + l;
    }
    t->err_msg = "client did not offer ALPN " CMTP_ALPN;
    t->alpn_failed = true;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

int tls_cb_ticket_key(SSL *ssl, uint8_t *key_name, uint8_t *iv, EVP_CIPHER_CTX *cipher_ctx,
                      HMAC_CTX *hmac_ctx, int encrypt)
{
    const struct tls_ctx *c = tls_conn_of(ssl)->ctx;
    const struct tls_ticket_key *k;
    size_t i;

    if (encrypt) {
        k = &c->ticket_keys[0];
        memcpy(key_name, k->name, sizeof(k->name));
        if (!RAND_bytes(iv, 16) ||
            !EVP_EncryptInit_ex(cipher_ctx, EVP_aes_128_cbc(), NULL, k->aes_key, iv) ||
            !HMAC_Init_ex(hmac_ctx, k->hmac_key, sizeof(k->hmac_key), EVP_sha256(), NULL))
            return -1;
        return 1;
    }
    for (i = 0; i < c->ticket_key_count; i++) {
        k = &c->ticket_keys[i];
        if (CRYPTO_memcmp(key_name, k->name, sizeof(k->name)) != 0)
            continue;
        if (!HMAC_Init_ex(hmac_ctx, k->hmac_key, sizeof(k->hmac_key), EVP_sha256(), NULL) ||
            !EVP_DecryptInit_ex(cipher_ctx, EVP_aes_128_cbc(), NULL, k->aes_key, iv))
            return -1;
        /* A ticket under a previous key is renewed under the current one. */
        return i == 0 ? 1 : 2;
    }
    return 0; /* unknown key: full handshake */
}

int tls_cb_new_session(SSL *ssl, SSL_SESSION *session)
{
    struct tls_conn *t = tls_conn_of(ssl);

    SSL_SESSION_free(t->session);
    t->session = session;
    return 1;
}

/* --- connections --- */

/* tls_host_ok returns true for a syntactically valid host name of |len| octets: labels of
 * 1..63 letters, digits and hyphens (not at either end), separated by single dots. */
static bool tls_host_ok(const uint8_t *s, size_t len)
{
    size_t i, label = 0;

    if (len == 0 || len > CMTP_DOMAIN_MAX)
        return false;
    for (i = 0; i < len; i++) {
        uint8_t ch = s[i];
        if (ch == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-'))
            return false;
        if (ch == '-' && label == 0)
            return false;
        if (++label > CMTP_LABEL_MAX)
            return false;
    }
    return label > 0 && s[len - 1] != '-';
}

static char *tls_lower_dup(const uint8_t *s, size_t len)
{
    char *d = malloc(len + 1);
    size_t i;

    if (d == NULL)
        return NULL;
    for (i = 0; i < len; i++)
        d[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
    d[len] = '\0';
    return d;
}

static struct tls_conn *tls_conn_new(struct tls_ctx *ctx, bool is_server)
{
    struct tls_conn *t = calloc(1, sizeof(*t));
    BIO *bio;

    if (t == NULL)
        return NULL;
    t->is_server = is_server;
    t->ctx = tls_ctx_ref(ctx);
    t->ssl = SSL_new(ctx->ssl_ctx);
    if (t->ssl == NULL)
        goto err;
    bio = BIO_new(ctx->bio_method);
    if (bio == NULL)
        goto err;
    BIO_set_data(bio, t);
    BIO_set_init(bio, 1);
    SSL_set_bio(t->ssl, bio, bio); /* one reference, owned by the SSL */
    /* Free the handshake configuration (certificates, verify parameters) once done. */
    SSL_set_shed_handshake_config(t->ssl, 1);
    if (is_server)
        SSL_set_accept_state(t->ssl);
    else
        SSL_set_connect_state(t->ssl);
    return t;
err:
    ERR_clear_error();
    tls_conn_free(t);
    return NULL;
}

struct tls_conn *tls_conn_new_server(struct tls_ctx *ctx)
{
    if (!ctx->is_server)
        return NULL;
    return tls_conn_new(ctx, true);
}

struct tls_conn *tls_conn_new_client(struct tls_ctx *ctx, const char *server_name)
{
    struct tls_conn *t;
    size_t len;

    if (ctx->is_server || (server_name == NULL && !ctx->verify_optional))
        return NULL;
    if (server_name == NULL)
        return tls_conn_new(ctx, false);
    len = strlen(server_name);
    if (!tls_host_ok((const uint8_t *)server_name, len))
        return NULL;
    t = tls_conn_new(ctx, false);
    if (t == NULL)
        return NULL;
    t->server_name = tls_lower_dup((const uint8_t *)server_name, len);
    if (t->server_name == NULL || !SSL_set_tlsext_host_name(t->ssl, t->server_name) ||
        !X509_VERIFY_PARAM_set1_host(SSL_get0_param(t->ssl), t->server_name, len))
        goto err;
    SSL_set_hostflags(t->ssl,
                      X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS | X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
    return t;
err:
    ERR_clear_error();
    tls_conn_free(t);
    return NULL;
}

void tls_conn_free(struct tls_conn *t)
{
    struct tls_seg *s, *next;
    struct tls_ctx *ctx;

    if (t == NULL)
        return;
    ctx = t->ctx;
    SSL_free(t->ssl); /* BoringSSL wipes keys and buffers as it frees them */
    SSL_SESSION_free(t->session);
    for (s = t->out_head; s != NULL; s = next) {
        next = s->next;
        free(s);
    }
    free(t->peer_id);
    free(t->server_name);
    OPENSSL_cleanse(t, sizeof(*t));
    free(t);
    tls_ctx_unref(ctx);
}

/* tls_fail marks |t| failed, keeping the first BoringSSL error, and returns TLS_ERROR. */
static enum tls_result tls_fail(struct tls_conn *t)
{
    if (!t->failed) {
        t->failed = true;
        t->err_code = ERR_peek_error();
        t->verify_err = SSL_get_verify_result(t->ssl);
    }
    ERR_clear_error();
    t->in = NULL;
    t->in_len = 0;
    return TLS_ERROR;
}

static enum tls_result tls_fail_msg(struct tls_conn *t, const char *msg)
{
    if (!t->failed && t->err_msg == NULL)
        t->err_msg = msg;
    return tls_fail(t);
}

/* tls_cert_identity returns the first subjectAltName dNSName of |cert| that is a plain host
 * name, lower-cased (malloc'd), or NULL. */
static char *tls_cert_identity(X509 *cert)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    char *id = NULL;
    size_t i;

    if (names == NULL)
        return NULL;
    for (i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        const uint8_t *d;
        int len;

        if (gn->type != GEN_DNS)
            continue;
        d = ASN1_STRING_get0_data(gn->d.dNSName);
        len = ASN1_STRING_length(gn->d.dNSName);
        if (len <= 0 || !tls_host_ok(d, (size_t)len))
            continue;
        id = tls_lower_dup(d, (size_t)len);
        break;
    }
    GENERAL_NAMES_free(names);
    return id;
}

/* tls_handshake_finish checks what the handshake agreed and records the peer identity. */
static enum tls_result tls_handshake_finish(struct tls_conn *t)
{
    const uint8_t *alpn;
    unsigned alpn_len;

    SSL_get0_alpn_selected(t->ssl, &alpn, &alpn_len);
    if (t->ctx->no_alpn) {
        if (alpn_len != 0)
            return tls_fail_msg(t, "an ALPN protocol was selected on an SMTP STARTTLS context");
    } else if (alpn_len != TLS_ALPN_ID_LEN || memcmp(alpn, tls_alpn_id, alpn_len) != 0) {
        t->alpn_failed = !t->failed;
        return tls_fail_msg(t, t->is_server ? "no ALPN protocol agreed (" CMTP_ALPN " is required)"
                                            : "server selected no ALPN protocol (" CMTP_ALPN
                                              " is required)");
    }
    if (SSL_version(t->ssl) != TLS1_3_VERSION &&
        !(t->ctx->allow_tls12 && SSL_version(t->ssl) == TLS1_2_VERSION))
        return tls_fail_msg(t, "protocol version is not TLS 1.3");
    if (!t->is_server)
        t->peer_verify = SSL_get_verify_result(t->ssl);
    if (t->is_server) {
        X509 *cert = SSL_get_peer_certificate(t->ssl);
        if (cert != NULL && SSL_get_verify_result(t->ssl) == X509_V_OK)
            t->peer_id = tls_cert_identity(cert);
        X509_free(cert);
    }
    /* A TLS 1.3 server holds its NewSessionTicket messages until its first write; flush them
     * into the outbound chain now (a zero-length write), which also frees BoringSSL's copy. */
    if (t->is_server && SSL_write(t->ssl, "", 0) < 0)
        return tls_fail(t);
    ERR_clear_error();
    t->hs_done = true;
    return TLS_OK;
}

static enum tls_result tls_handshake(struct tls_conn *t)
{
    int r;

    t->started = true;
    ERR_clear_error();
    r = SSL_do_handshake(t->ssl);
    if (r == 1)
        return tls_handshake_finish(t);
    if (SSL_get_error(t->ssl, r) == SSL_ERROR_WANT_READ)
        return TLS_AGAIN;
    return tls_fail(t);
}

enum tls_result tls_conn_feed(struct tls_conn *t, const uint8_t *in, size_t len)
{
    if (t->failed)
        return TLS_ERROR;
    if (t->in_len != 0)
        return tls_fail_msg(t, "internal: fed while earlier input was unconsumed");
    if (in == NULL && len != 0)
        return tls_fail_msg(t, "internal: NULL input");
    if (t->closed)
        return TLS_CLOSED; /* nothing after close_notify is read */
    t->in = len != 0 ? in : NULL;
    t->in_len = len;
    if (t->hs_done)
        return TLS_OK;
    return tls_handshake(t);
}

enum tls_result tls_conn_read(struct tls_conn *t, uint8_t *buf, size_t cap, size_t *n)
{
    enum tls_result r;
    int got;

    *n = 0;
    if (t->failed)
        return TLS_ERROR;
    if (t->closed) {
        t->in = NULL;
        t->in_len = 0;
        return TLS_CLOSED;
    }
    if (cap == 0)
        return tls_fail_msg(t, "internal: read with no room");
    if (!t->hs_done) {
        r = tls_handshake(t);
        if (r != TLS_OK)
            return r;
    }
    ERR_clear_error();
    got = SSL_read(t->ssl, buf, cap > INT_MAX ? INT_MAX : (int)cap);
    if (got > 0) {
        *n = (size_t)got;
        return TLS_OK;
    }
    switch (SSL_get_error(t->ssl, got)) {
    case SSL_ERROR_WANT_READ:
        return TLS_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        ERR_clear_error();
        t->closed = true;
        t->in = NULL;
        t->in_len = 0;
        return TLS_CLOSED;
    default:
        return tls_fail(t);
    }
}

size_t tls_conn_in_pending(const struct tls_conn *t)
{
    return t->in_len;
}

bool tls_conn_handshake_done(const struct tls_conn *t)
{
    return t->hs_done;
}

enum tls_result tls_conn_write(struct tls_conn *t, const uint8_t *plain, size_t len,
                               size_t *written)
{
    *written = 0;
    if (t->failed)
        return TLS_ERROR;
    if (!t->hs_done)
        return tls_fail_msg(t, "internal: write before the handshake completed");
    while (*written < len) {
        size_t want = len - *written;
        int r;

        if (t->out_pending >= TLS_OUT_PENDING_MAX)
            return TLS_AGAIN;
        ERR_clear_error();
        /* Partial-write mode: each call seals one record at most. */
        r = SSL_write(t->ssl, plain + *written, want > INT_MAX ? INT_MAX : (int)want);
        if (r <= 0)
            return tls_fail(t);
        *written += (size_t)r;
    }
    return TLS_OK;
}

enum tls_result tls_conn_close_notify(struct tls_conn *t)
{
    if (t->failed || !t->hs_done)
        return TLS_ERROR;
    if (t->close_sent)
        return TLS_OK;
    ERR_clear_error();
    if (SSL_shutdown(t->ssl) < 0)
        return tls_fail(t);
    t->close_sent = true;
    return TLS_OK;
}

size_t tls_conn_out_pending(const struct tls_conn *t)
{
    return t->out_pending;
}

size_t tls_conn_out_peek(const struct tls_conn *t, const uint8_t **ptr)
{
    const struct tls_seg *s = t->out_head;

    if (s == NULL) {
        *ptr = NULL;
        return 0;
    }
    *ptr = s->data + s->start;
    return s->end - s->start;
}

size_t tls_conn_out_iov(const struct tls_conn *t, struct iovec *iov, size_t iovcnt)
{
    const struct tls_seg *s;
    size_t i = 0;

    for (s = t->out_head; s != NULL && i < iovcnt; s = s->next, i++) {
        iov[i].iov_base = (void *)(s->data + s->start);
        iov[i].iov_len = s->end - s->start;
    }
    return i;
}

void tls_conn_out_consume(struct tls_conn *t, size_t n)
{
    if (n > t->out_pending)
        n = t->out_pending;
    while (n > 0) {
        struct tls_seg *s = t->out_head;
        size_t k = s->end - s->start;

        if (k > n)
            k = n;
        s->start += (uint32_t)k;
        t->out_pending -= k;
        n -= k;
        if (s->start == s->end) {
            t->out_head = s->next;
            if (t->out_head == NULL)
                t->out_tail = NULL;
            free(s);
        }
    }
}

/* tls_reason_text writes BoringSSL's reason for |code| lower-cased with spaces. */
static void tls_reason_text(uint32_t code, char *buf, size_t len)
{
    const char *r = ERR_reason_error_string(code);
    size_t i;

    if (r == NULL)
        r = "unknown error";
    for (i = 0; r[i] != '\0' && i + 1 < len; i++)
        buf[i] = r[i] == '_' ? ' ' : (char)(r[i] >= 'A' && r[i] <= 'Z' ? r[i] + 32 : r[i]);
    buf[i] = '\0';
}

void tls_conn_error_string(const struct tls_conn *t, char *buf, size_t len)
{
    char detail[192];
    int lib = ERR_GET_LIB(t->err_code), reason = ERR_GET_REASON(t->err_code);

    if (len == 0)
        return;
    if (!t->failed) {
        snprintf(buf, len, "no error");
        return;
    }
    detail[0] = '\0';
    if (t->err_code != 0) {
        if (lib == ERR_LIB_SSL && reason == SSL_R_CERTIFICATE_VERIFY_FAILED)
            snprintf(detail, sizeof(detail), "certificate verify failed: %s",
                     X509_verify_cert_error_string(t->verify_err));
        else if (lib == ERR_LIB_SSL && reason >= SSL_AD_REASON_OFFSET)
            snprintf(detail, sizeof(detail), "alert received: %s",
                     SSL_alert_desc_string_long(reason - SSL_AD_REASON_OFFSET));
        else
            tls_reason_text(t->err_code, detail, sizeof(detail));
    }
    if (t->err_msg != NULL && detail[0] != '\0')
        snprintf(buf, len, "%s (%s)", t->err_msg, detail);
    else if (t->err_msg != NULL)
        snprintf(buf, len, "%s", t->err_msg);
    else if (detail[0] != '\0')
        snprintf(buf, len, "%s", detail);
    else
        snprintf(buf, len, "tls failure");
}

enum tls_fail_kind tls_conn_fail_kind(const struct tls_conn *t)
{
    int lib = ERR_GET_LIB(t->err_code), reason = ERR_GET_REASON(t->err_code);

    if (!t->failed)
        return TLS_FAIL_NONE;
    if (t->alpn_failed)
        return TLS_FAIL_NO_ALPN;
    if (t->err_code == 0 || lib != ERR_LIB_SSL)
        return TLS_FAIL_OTHER;
    if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED)
        return TLS_FAIL_CERT;
    if (reason == SSL_AD_REASON_OFFSET + SSL_AD_NO_APPLICATION_PROTOCOL)
        return TLS_FAIL_NO_ALPN;
    if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_HTTP_REQUEST ||
        reason == SSL_R_HTTPS_PROXY_REQUEST)
        return TLS_FAIL_NOT_TLS;
    if (reason >= SSL_AD_REASON_OFFSET)
        return TLS_FAIL_ALERT;
    return TLS_FAIL_OTHER;
}

bool tls_conn_peer_verified(const struct tls_conn *t, char *why, size_t whylen)
{
    const char *w = NULL;

    if (t->is_server || !tls_conn_handshake_done(t))
        w = "no verified server certificate";
    else if (t->server_name == NULL)
        w = "no reference identity (no server name)";
    else if (t->peer_verify != X509_V_OK)
        w = X509_verify_cert_error_string(t->peer_verify);
    if (w == NULL)
        return true;
    if (why != NULL && whylen > 0)
        snprintf(why, whylen, "certificate not verified: %s", w);
    return false;
}

const char *tls_conn_version(const struct tls_conn *t)
{
    return tls_conn_handshake_done(t) ? SSL_get_version(t->ssl) : NULL;
}

const char *tls_conn_cipher(const struct tls_conn *t)
{
    const SSL_CIPHER *c;

    if (!tls_conn_handshake_done(t))
        return NULL;
    c = SSL_get_current_cipher(t->ssl);
    return c != NULL ? SSL_CIPHER_standard_name(c) : NULL;
}

const char *tls_conn_alpn(const struct tls_conn *t)
{
    return tls_conn_handshake_done(t) && !t->ctx->no_alpn ? CMTP_ALPN : NULL;
}

bool tls_conn_resumed(const struct tls_conn *t)
{
    return tls_conn_handshake_done(t) && SSL_session_reused(t->ssl);
}

const char *tls_conn_peer_identity(const struct tls_conn *t)
{
    if (!tls_conn_handshake_done(t))
        return NULL;
    return t->is_server ? t->peer_id : t->server_name;
}

const char *tls_conn_sni(const struct tls_conn *t)
{
    if (!t->is_server)
        return t->server_name;
    return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

int tls_conn_set_client_auth(struct tls_conn *t, enum tls_client_auth mode)
{
    int flags;

    if (!t->is_server || t->started)
        return -EINVAL;
    switch (mode) {
    case TLS_CLIENT_AUTH_NONE:
        flags = SSL_VERIFY_NONE;
        break;
    case TLS_CLIENT_AUTH_OPTIONAL:
        flags = SSL_VERIFY_PEER;
        break;
    case TLS_CLIENT_AUTH_REQUIRED:
        flags = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        break;
    default:
        return -EINVAL;
    }
    if (mode != TLS_CLIENT_AUTH_NONE && !t->ctx->has_client_ca)
        return -EINVAL;
    if (!SSL_set_session_id_context(t->ssl, t->ctx->sid_ctx[mode], TLS_SID_CTX_LEN)) {
        ERR_clear_error();
        return -ENOMEM;
    }
    SSL_set_verify(t->ssl, flags, NULL);
    return 0;
}

struct tls_session *tls_conn_get_session(struct tls_conn *t)
{
    struct tls_session *s;
    size_t len;

    if (t->is_server || t->session == NULL)
        return NULL;
    if (t->server_name == NULL)
        return NULL;
    len = strlen(t->server_name);
    s = malloc(sizeof(*s) + len + 1);
    if (s == NULL)
        return NULL;
    SSL_SESSION_up_ref(t->session);
    s->sess = t->session;
    memcpy(s->server_name, t->server_name, len + 1);
    return s;
}

int tls_conn_set_session(struct tls_conn *t, struct tls_session *s)
{
    if (t->is_server || t->started || s == NULL || t->server_name == NULL ||
        strcmp(s->server_name, t->server_name) != 0)
        return -EINVAL;
    if (!SSL_set_session(t->ssl, s->sess)) {
        ERR_clear_error();
        return -EINVAL;
    }
    return 0;
}

void tls_session_free(struct tls_session *s)
{
    if (s == NULL)
        return;
    SSL_SESSION_free(s->sess);
    free(s);
}
