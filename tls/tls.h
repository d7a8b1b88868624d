/* tls/tls.h — BoringSSL contexts and TLS 1.3 (ALPN cmtp/1) driven over memory buffers.
 * Not networking: no sockets and no io_uring here; the caller moves ciphertext in and out. */
#ifndef CMTP_TLS_TLS_H
#define CMTP_TLS_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <time.h>

/* TLS_OUT_SEG_SIZE is the size, in octets, of one allocation of the outbound ciphertext chain
 * (header included): one full TLS 1.3 record (16 KiB of plaintext plus its 22 octets of framing)
 * fits in a single segment. Segments are allocated when ciphertext is produced and freed as soon
 * as tls_conn_out_consume drains them, so an idle connection holds none. */
#define TLS_OUT_SEG_SIZE 20480

/* TLS_OUT_PENDING_MAX is the outbound backpressure threshold, in octets of ciphertext:
 * tls_conn_write encrypts nothing more while this much is waiting to be sent. The chain may
 * exceed it by at most one record (and by handshake, alert and key-update messages, which are
 * always accepted). */
#define TLS_OUT_PENDING_MAX (64 * 1024)

/* TLS_TICKET_KEY_LEN is the size of one session ticket key: a 16-octet key name, a 16-octet
 * HMAC-SHA256 key and a 16-octet AES-128-CBC key (BoringSSL's 48-octet layout). In a ticket key
 * file each key is one line of 2 * TLS_TICKET_KEY_LEN hexadecimal digits. */
#define TLS_TICKET_KEY_LEN 48

/* TLS_TICKET_KEYS_MAX is the largest number of keys in a ticket key file (one current key that
 * issues tickets, the others only accepted). */
#define TLS_TICKET_KEYS_MAX 8

/* TLS_TICKETS_PER_HANDSHAKE is how many session tickets a server sends after a full TLS 1.3
 * handshake (none when tickets are off). */
#define TLS_TICKETS_PER_HANDSHAKE 1

/* TLS_SYSTEM_CA_FILE is the trust store a client context uses when no CA file is configured. */
#define TLS_SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"

/* TLS_FILE_MAX is the largest certificate, key, CA or ticket key file read, in octets. */
#define TLS_FILE_MAX (4 * 1024 * 1024)

/* tls_client_auth says whether a server asks a client for a certificate. */
enum tls_client_auth {
    /* TLS_CLIENT_AUTH_NONE: no certificate is requested. */
    TLS_CLIENT_AUTH_NONE = 0,
    /* TLS_CLIENT_AUTH_OPTIONAL: a certificate is requested; a client without one is accepted,
     * a client with one that does not verify is refused. */
    TLS_CLIENT_AUTH_OPTIONAL,
    /* TLS_CLIENT_AUTH_REQUIRED: a client without a valid certificate is refused. */
    TLS_CLIENT_AUTH_REQUIRED,
};

/* tls_server_config holds what a server context is built from. All-zero plus cert_file and
 * key_file is a valid configuration (session tickets with per-context random keys, no client
 * certificates). Paths are read during tls_server_ctx_new only; nothing is kept. */
struct tls_server_config {
    /* cert_file is a PEM file: the leaf certificate first, then any intermediates. The leaf key
     * must be Ed25519 or ECDSA P-256, and the leaf must be valid now. */
    const char *cert_file;
    /* key_file is the PEM private key (unencrypted) matching the leaf certificate. */
    const char *key_file;
    /* ticket_key_file, if not NULL, holds the session ticket keys shared by a fleet (format in
     * docs/TLS.md: one key per line, the first issues tickets, the others are accepted). NULL:
     * BoringSSL's random per-context keys (tickets do not survive a reload). */
    const char *ticket_key_file;
    /* no_tickets disables session tickets (and so resumption) entirely. */
    bool no_tickets;
    /* client_ca_file, if not NULL, is a PEM file of the CAs trusted to issue client
     * certificates. Required unless client_auth is TLS_CLIENT_AUTH_NONE; with NONE it is still
     * loaded so that tls_conn_set_client_auth can ask particular peers for a certificate. */
    const char *client_ca_file;
    /* client_auth is the default client certificate policy of connections on the context. */
    enum tls_client_auth client_auth;
    /* no_alpn makes a context for the SMTP ingress's STARTTLS: no ALPN is required and none is
     * selected (a client offering ALPN gets none). Everything else (TLS 1.3 only, no early
     * data, certificates) is unchanged. CMTP listeners never use it. */
    bool no_alpn;
};

/* tls_client_config holds what a client context is built from. All-zero is valid: the system
 * trust store and no client certificate. */
struct tls_client_config {
    /* ca_file is a PEM file of trusted CAs; NULL means TLS_SYSTEM_CA_FILE. */
    const char *ca_file;
    /* cert_file and key_file, both set or both NULL, are an optional client certificate chain
     * (PEM, leaf first) and its private key (Ed25519 or ECDSA P-256). */
    const char *cert_file;
    const char *key_file;
    /* no_alpn makes a context for SMTP STARTTLS (delivery to SMTP/LMTP hosts, the SMTP side of
     * the bench): no ALPN offered, none required. Everything else (TLS 1.3 only, certificate
     * and host name verification) is unchanged. CMTP connections never use it. */
    bool no_alpn;
    /* allow_tls12 (only with no_alpn) also accepts TLS 1.2, for SMTP STARTTLS to servers that do
     * not speak 1.3 yet, with forward-secret AEAD cipher suites only (ECDHE with AES-GCM or
     * ChaCha20-Poly1305). tls_conn_version says what was agreed. */
    bool allow_tls12;
    /* verify_optional (only with no_alpn) still checks the server certificate (chain to the
     * trust anchors, name) but lets the handshake succeed when it does not verify: the caller
     * asks tls_conn_peer_verified and applies its own policy (opportunistic SMTP TLS, RFC 7435,
     * and the SMTP fallback levels of PROTOCOL.md 14). A connection on such a context may also
     * be made without a server name. */
    bool verify_optional;
};

/* tls_ctx is an immutable, reference-counted TLS context (server or client). It may be shared
 * by any number of threads; every connection holds a reference to the context it was made on,
 * so a reload swaps in a new context while old connections keep theirs. */
struct tls_ctx;

/* tls_server_ctx_new builds a server context from |cfg|: TLS 1.3 only, ALPN cmtp/1 required,
 * no early data. It returns a context with one reference, or NULL on any error, with a message
 * ("file: reason") written to |err| (|errlen| octets, NUL-terminated) if |err| is not NULL. */
struct tls_ctx *tls_server_ctx_new(const struct tls_server_config *cfg, char *err, size_t errlen);

/* tls_client_ctx_new builds a client context from |cfg|: TLS 1.3 only, ALPN cmtp/1 offered and
 * required, server certificates verified, no early data (no_alpn, allow_tls12 and
 * verify_optional relax this for SMTP). It returns a context with one reference, or NULL with a
 * message in |err| like tls_server_ctx_new (also for allow_tls12 or verify_optional without
 * no_alpn). */
struct tls_ctx *tls_client_ctx_new(const struct tls_client_config *cfg, char *err, size_t errlen);

/* tls_ctx_ref takes a new reference to |ctx| and returns |ctx|. Thread-safe. */
struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx);

/* tls_ctx_unref drops a reference to |ctx|; the last one wipes the ticket keys and frees the
 * context. tls_ctx_unref(NULL) does nothing. Thread-safe. */
void tls_ctx_unref(struct tls_ctx *ctx);

/* tls_ctx_is_server returns true for a context made by tls_server_ctx_new. */
bool tls_ctx_is_server(const struct tls_ctx *ctx);

/* tls_ctx_cert_not_after returns the expiry time of the context's own leaf certificate, or 0
 * when it has none (a client context without a client certificate). */
time_t tls_ctx_cert_not_after(const struct tls_ctx *ctx);

/* tls_result is the outcome of a call on a connection. */
enum tls_result {
    /* TLS_OK: done (for tls_conn_read: |*n| octets of plaintext were produced). */
    TLS_OK = 0,
    /* TLS_AGAIN: more ciphertext is needed (every fed octet has been consumed), or, from
     * tls_conn_write, the outbound chain is full: drain it and call again. */
    TLS_AGAIN,
    /* TLS_CLOSED: the peer sent close_notify; no more plaintext will come. */
    TLS_CLOSED,
    /* TLS_ERROR: the connection failed for good (tls_conn_error_string says why). An alert may
     * be waiting in the outbound chain: send it, then close. */
    TLS_ERROR,
};

/* tls_conn is one TLS connection, server or client, driven entirely through memory: ciphertext
 * in with tls_conn_feed, plaintext out with tls_conn_read, plaintext in with tls_conn_write,
 * ciphertext out with tls_conn_out_peek / tls_conn_out_iov / tls_conn_out_consume. Not
 * thread-safe: one connection belongs to one thread at a time. */
struct tls_conn;

/* tls_conn_new_server returns a new server connection on server context |ctx| (which it
 * references), or NULL if out of memory or |ctx| is a client context. */
struct tls_conn *tls_conn_new_server(struct tls_ctx *ctx);

/* tls_conn_new_client returns a new client connection on client context |ctx| that sends
 * |server_name| as SNI and verifies the server certificate for it (a DNS-ID in the
 * subjectAltName, wildcards only as the whole left-most label; the subject CN is never used).
 * |server_name| is copied. Returns NULL if out of memory or if |server_name| is not a host name
 * of 1..253 octets; a NULL |server_name| is accepted on a verify_optional context only (no SNI,
 * and tls_conn_peer_verified is false). The ClientHello is produced by the first
 * tls_conn_feed(t, NULL, 0). */
struct tls_conn *tls_conn_new_client(struct tls_ctx *ctx, const char *server_name);

/* tls_conn_free wipes and frees |t|, its SSL object, its pending ciphertext and its reference
 * to its context. It sends nothing (see tls_conn_close_notify). tls_conn_free(NULL) does
 * nothing. */
void tls_conn_free(struct tls_conn *t);

/* tls_conn_feed hands |len| octets of received ciphertext at |in| to |t| and advances the
 * handshake. |in| is borrowed, not copied: it must stay valid and unchanged until tls_conn_read
 * has returned something other than TLS_OK (at which point every fed octet has been consumed;
 * BoringSSL keeps a partial record in its own buffer). Feeding while earlier input is still
 * unconsumed is a programmer error (TLS_ERROR). A client calls tls_conn_feed(t, NULL, 0) once
 * to produce its ClientHello.
 *
 * Returns TLS_OK once the handshake is complete (then call tls_conn_read until it stops
 * returning TLS_OK: application data may follow the handshake in |in|), TLS_AGAIN while the
 * handshake needs more input (all of |in| consumed), TLS_CLOSED if the peer already closed
 * (|in| is ignored), TLS_ERROR on failure. Output produced by the handshake (including a fatal
 * alert) is appended to the outbound chain in every case; a server also queues its session
 * tickets there as soon as its handshake completes. */
enum tls_result tls_conn_feed(struct tls_conn *t, const uint8_t *in, size_t len);

/* tls_conn_read decrypts up to |cap| (> 0) octets of plaintext into |buf| and sets |*n|.
 * Returns TLS_OK with |*n| > 0; TLS_AGAIN when every fed octet is consumed and no plaintext is
 * left; TLS_CLOSED after the peer's close_notify; TLS_ERROR on failure. It finishes the
 * handshake first if needed, and processes post-handshake messages (session tickets, key
 * updates) on the way, which may append to the outbound chain. */
enum tls_result tls_conn_read(struct tls_conn *t, uint8_t *buf, size_t cap, size_t *n);

/* tls_conn_in_pending returns the number of fed octets not yet consumed. */
size_t tls_conn_in_pending(const struct tls_conn *t);

/* tls_conn_handshake_done returns true once the handshake has completed successfully (TLS 1.3,
 * ALPN cmtp/1 agreed, peer verified). It stays true if the connection fails later; the getters
 * below keep answering then, for logs. */
bool tls_conn_handshake_done(const struct tls_conn *t);

/* tls_conn_write encrypts up to |len| octets at |plain| into the outbound chain and sets
 * |*written| to the number taken. Returns TLS_OK when all |len| were taken; TLS_AGAIN when the
 * chain reached TLS_OUT_PENDING_MAX first (|*written| < |len|, maybe 0: drain, then write the
 * rest); TLS_ERROR on failure or if called before the handshake completed. |plain| is not
 * retained. */
enum tls_result tls_conn_write(struct tls_conn *t, const uint8_t *plain, size_t len,
                               size_t *written);

/* tls_conn_close_notify appends a close_notify alert to the outbound chain. Returns TLS_OK, or
 * TLS_ERROR if the handshake has not completed or the connection has failed (nothing is sent
 * then: a failed connection has already queued its fatal alert). */
enum tls_result tls_conn_close_notify(struct tls_conn *t);

/* tls_conn_out_pending returns the number of octets of ciphertext waiting to be sent. */
size_t tls_conn_out_pending(const struct tls_conn *t);

/* tls_conn_out_peek sets |*ptr| to the first contiguous run of pending ciphertext and returns
 * its length (0, with |*ptr| NULL, when nothing is pending). The octets stay at that address,
 * unchanged, until tls_conn_out_consume releases them or tls_conn_free, whatever is written or
 * fed meanwhile: the caller may send straight from them. */
size_t tls_conn_out_peek(const struct tls_conn *t, const uint8_t **ptr);

/* tls_conn_out_iov fills up to |iovcnt| entries of |iov| with the pending ciphertext, in order,
 * and returns the number of entries filled. The same stability rule as tls_conn_out_peek
 * holds for every entry. */
size_t tls_conn_out_iov(const struct tls_conn *t, struct iovec *iov, size_t iovcnt);

/* tls_conn_out_consume releases the first |n| octets of pending ciphertext (|n| at most
 * tls_conn_out_pending; more is clamped) once they are sent, freeing drained segments. */
void tls_conn_out_consume(struct tls_conn *t, size_t n);

/* tls_conn_error_string writes why |t| failed into |buf| (|len| octets, NUL-terminated): the
 * alert received or sent, or the certificate verification error. Writes "no error" if |t| has
 * not failed. The text never contains peer-controlled bytes. */
void tls_conn_error_string(const struct tls_conn *t, char *buf, size_t len);

/* tls_fail_kind is what a failed connection's first error was, for a caller that must tell "no
 * CMTP server here" from "a server that failed". */
enum tls_fail_kind {
    TLS_FAIL_NONE = 0, /* the connection has not failed */
    TLS_FAIL_CERT,     /* the peer's certificate did not verify (chain, name, validity) */
    TLS_FAIL_NO_ALPN,  /* no ALPN protocol agreed: our check, or a no_application_protocol alert */
    TLS_FAIL_NOT_TLS,  /* the peer does not speak TLS (a wrong version record, HTTP, plaintext) */
    TLS_FAIL_ALERT,    /* the peer sent a fatal alert (other than no_application_protocol) */
    TLS_FAIL_OTHER,    /* anything else (a protocol error, an internal error) */
};

/* tls_conn_fail_kind classifies why |t| failed from the error codes recorded when it failed
 * (never from text). */
enum tls_fail_kind tls_conn_fail_kind(const struct tls_conn *t);

/* tls_conn_peer_verified reports, on a client connection whose handshake completed, whether the
 * server certificate chained to the context's trust anchors and matched the server name it was
 * created with. It is always true on an ordinary client context (the handshake fails otherwise)
 * and false on a server, before the handshake, and for a connection made without a server
 * name. When false and |why| is not NULL, the reason is written there (|whylen| octets,
 * NUL-terminated; never peer-controlled text). */
bool tls_conn_peer_verified(const struct tls_conn *t, char *why, size_t whylen);

/* tls_conn_version returns the negotiated protocol version ("TLSv1.3"), or NULL before the
 * handshake completes. The string is static. */
const char *tls_conn_version(const struct tls_conn *t);

/* tls_conn_cipher returns the IETF name of the negotiated cipher suite (e.g.
 * "TLS_AES_128_GCM_SHA256"), or NULL before the handshake completes. The string is static. */
const char *tls_conn_cipher(const struct tls_conn *t);

/* tls_conn_alpn returns "cmtp/1" once the handshake completed (the only protocol ever agreed),
 * or NULL before, and always NULL on a no_alpn client context. The string is static. */
const char *tls_conn_alpn(const struct tls_conn *t);

/* tls_conn_resumed returns true if the completed handshake resumed a session (a ticket). */
bool tls_conn_resumed(const struct tls_conn *t);

/* tls_conn_peer_identity returns the verified identity of the peer, lower-cased, or NULL: on a
 * server, the first subjectAltName dNSName of a verified client certificate (non-host-name
 * entries such as wildcards are skipped); on a client, the server name the server certificate
 * was verified for. Owned by |t|, valid until tls_conn_free. NULL before the handshake. */
const char *tls_conn_peer_identity(const struct tls_conn *t);

/* tls_conn_sni returns, on a server, the SNI host name the client sent (unverified, as sent),
 * or NULL; on a client, the server name it was created with. Owned by |t|. */
const char *tls_conn_sni(const struct tls_conn *t);

/* tls_conn_set_client_auth overrides, for server connection |t| before its first
 * tls_conn_feed, the client certificate policy of its context. Returns 0, or -EINVAL if |t| is
 * a client, the handshake has begun, or the context has no client CA file. */
int tls_conn_set_client_auth(struct tls_conn *t, enum tls_client_auth mode);

/* tls_session is a resumable client session (a ticket with its secrets), bound to the server
 * name it was obtained for. */
struct tls_session;

/* tls_conn_get_session returns a new reference to the latest session ticket client connection
 * |t| received (tickets arrive after the handshake, during tls_conn_read), or NULL if none. The
 * caller frees it with tls_session_free. TLS 1.3 tickets should be used once. */
struct tls_session *tls_conn_get_session(struct tls_conn *t);

/* tls_conn_set_session offers |s| for resumption on client connection |t|, before its first
 * tls_conn_feed. |s| is not consumed (the connection takes its own reference). Returns 0, or
 * -EINVAL if |t| is a server, the handshake has begun, or |s| was obtained for another server
 * name. */
int tls_conn_set_session(struct tls_conn *t, struct tls_session *s);

/* tls_session_free drops a reference to |s|; the last one wipes its secrets. NULL: nothing. */
void tls_session_free(struct tls_session *s);

#endif
