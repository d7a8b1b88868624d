/* tls/tls_internal.h — the structures and callbacks shared by tls_ctx.c and tls_conn.c.
 * Not a public interface: nothing outside tls/ includes this file. */
#ifndef CMTP_TLS_TLS_INTERNAL_H
#define CMTP_TLS_TLS_INTERNAL_H

#include <stdatomic.h>

#include <openssl/ssl.h>

#include "tls/tls.h"

/* TLS_SID_CTX_LEN is the length of a session id context (a SHA-256 digest). */
#define TLS_SID_CTX_LEN 32

/* tls_ticket_key is one session ticket key in BoringSSL's 48-octet layout. */
struct tls_ticket_key {
    uint8_t name[16];
    uint8_t hmac_key[16];
    uint8_t aes_key[16];
};

/* tls_ctx is the reference-counted context; every field is set before tls_*_ctx_new returns
 * and never written again, except |refs|. */
struct tls_ctx {
    atomic_int refs;
    bool is_server;
    bool has_client_ca;
    bool no_alpn;         /* SMTP STARTTLS context: no ALPN offered, selected or required */
    bool allow_tls12;     /* client for SMTP: TLS 1.2 accepted too */
    bool verify_optional; /* client for SMTP: an unverified certificate does not fail */
    enum tls_client_auth client_auth;
    SSL_CTX *ssl_ctx;
    /* bio_method is the memory BIO of every connection made on this context; each connection
     * holds a context reference, so the method outlives its BIOs. */
    BIO_METHOD *bio_method;
    time_t not_after;
    /* sid_ctx[mode] partitions resumption by client certificate policy and client CA set. */
    uint8_t sid_ctx[3][TLS_SID_CTX_LEN];
    size_t ticket_key_count;
    struct tls_ticket_key ticket_keys[TLS_TICKET_KEYS_MAX];
};

/* tls_session wraps one reference to a client SSL_SESSION with the (lower-cased) server name
 * it is valid for. Each tls_conn_get_session makes a new wrapper. */
struct tls_session {
    SSL_SESSION *sess;
    char server_name[];
};

/* tls_bio_method_new returns the BIO_METHOD connections use to move ciphertext between the fed
 * input and the outbound chain, or NULL if out of memory. */
BIO_METHOD *tls_bio_method_new(void);

/* tls_cb_select_cert is the server's early ClientHello callback: it notes whether the client
 * offered ALPN at all. */
enum ssl_select_cert_result_t tls_cb_select_cert(const SSL_CLIENT_HELLO *hello);

/* tls_cb_servername refuses, with alert no_application_protocol, a ClientHello that carried no
 * ALPN extension (BoringSSL never calls the ALPN callback then). */
int tls_cb_servername(SSL *ssl, int *alert, void *arg);

/* tls_cb_alpn_select selects cmtp/1 or fails with alert no_application_protocol. */
int tls_cb_alpn_select(SSL *ssl, const uint8_t **out, uint8_t *out_len, const uint8_t *in,
                       unsigned in_len, void *arg);

/* tls_cb_ticket_key encrypts tickets with the current key of a ticket key file and decrypts
 * them with any of its keys (BoringSSL's SSL_CTX_set_tlsext_ticket_key_cb convention). */
int tls_cb_ticket_key(SSL *ssl, uint8_t *key_name, uint8_t *iv, EVP_CIPHER_CTX *cipher_ctx,
                      HMAC_CTX *hmac_ctx, int encrypt);

/* tls_cb_new_session keeps the latest ticket a client connection received. */
int tls_cb_new_session(SSL *ssl, SSL_SESSION *session);

#endif
