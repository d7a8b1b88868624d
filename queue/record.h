/* queue/record.h — the envelope record stored in Redis: versioned, length-framed, CRC32C-checked.
 * Pure encoding and decoding, no I/O. Not the key layout or the Redis protocol (queue/queue.h). */
#ifndef CMTP_QUEUE_RECORD_H
#define CMTP_QUEUE_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/envelope.h"
#include "core/limits.h"

/* QUEUE_RECORD_MAGIC is the first four octets of every record. */
#define QUEUE_RECORD_MAGIC "CMTQ"
/* QUEUE_RECORD_VERSION is the only record version this code writes and reads. */
#define QUEUE_RECORD_VERSION 1
/* QUEUE_RECORD_HEADER_LEN is the fixed header: magic, version, flags, total length, created ms,
 * attempts. QUEUE_RECORD_TRAILER_LEN is the CRC32C at the end. */
#define QUEUE_RECORD_HEADER_LEN 24
#define QUEUE_RECORD_TRAILER_LEN 4
/* QUEUE_RECORD_MAX is the largest record, in octets, either side will handle (room for
 * CMTP_RCPT_MAX_HARD recipients of maximal size). */
#define QUEUE_RECORD_MAX (128u * 1024u * 1024u)

/* QUEUE_NODE_MAX bounds the node id (appliance + worker name) recorded with a message. */
#define QUEUE_NODE_MAX 64
/* QUEUE_IP_MAX bounds the textual peer address (IPv6 with zone fits). */
#define QUEUE_IP_MAX 63
/* QUEUE_TLS_VERSION_MAX and QUEUE_TLS_CIPHER_MAX bound the TLS parameter names. */
#define QUEUE_TLS_VERSION_MAX 15
#define QUEUE_TLS_CIPHER_MAX 63
/* QUEUE_LISTENER_MAX bounds the listener name. */
#define QUEUE_LISTENER_MAX 31

/* queue_rcpt_status is a recipient's delivery state. Ingest always writes
 * QUEUE_RCPT_PENDING; the consumer moves it on. */
enum queue_rcpt_status {
    QUEUE_RCPT_PENDING = 0, /* not yet delivered */
    QUEUE_RCPT_DELIVERED,   /* handed to the next hop or the store */
    QUEUE_RCPT_FAILED,      /* permanently failed */
    QUEUE_RCPT_EXPIRED,     /* gave up after the retry period */
};
/* QUEUE_RCPT_STATUS_LAST is the highest valid queue_rcpt_status. */
#define QUEUE_RCPT_STATUS_LAST QUEUE_RCPT_EXPIRED

/* queue_rcpt is one accepted recipient: its address, the role this server announced for it,
 * and its destination. |next_hop| is the relay's next hop (lower-case A-labels), or "" when the
 * destination is the recipient's own domain (always the case for CMTP_ROLE_FINAL unless the
 * daemon routes final recipients to a named store). Storage is owned by whoever holds it. */
struct queue_rcpt {
    struct cmtp_addr addr;
    enum cmtp_role role;
    enum queue_rcpt_status status;
    char next_hop[CMTP_DOMAIN_MAX + 1];
};

/* queue_txn_meta is what the receiving side knew about the connection a message came over.
 * All strings NUL-terminated; "" when unknown. */
struct queue_txn_meta {
    char peer_ip[QUEUE_IP_MAX + 1];              /* client address, text form */
    char tls_version[QUEUE_TLS_VERSION_MAX + 1]; /* e.g. "TLSv1.3" */
    char tls_cipher[QUEUE_TLS_CIPHER_MAX + 1];   /* e.g. "TLS_AES_128_GCM_SHA256" */
    char peer_id[CMTP_DOMAIN_MAX + 1];           /* verified client certificate identity */
    int64_t received_ms;                         /* when MAIL arrived, ms since the epoch */
    char listener[QUEUE_LISTENER_MAX + 1];       /* name of the listener it arrived on */
};

/* queue_record is a decoded record. |rcpts| is owned by the record (queue_record_cleanup frees
 * it). The structure is large (the envelope holds CMTP_TRACE_MAX trace records): allocate it on
 * the heap. After queue_record_decode, the trace records past |env.trace_count| are unspecified
 * (not zeroed): read only the first trace_count. */
struct queue_record {
    char qid[CMTP_QID_MAX + 1];
    char node[QUEUE_NODE_MAX + 1]; /* node that accepted the message */
    int64_t created_ms;            /* when it was accepted, ms since the epoch */
    uint32_t attempts;             /* delivery attempts so far */
    struct cmtp_envelope env;
    struct queue_txn_meta meta;
    struct queue_rcpt *rcpts;
    size_t n_rcpts;
};

/* queue_record_in names what queue_record_encode writes; every pointer is borrowed for the
 * duration of the call. */
struct queue_record_in {
    const char *qid;
    const char *node;
    int64_t created_ms;
    uint32_t attempts;
    const struct cmtp_envelope *env;
    const struct queue_txn_meta *meta;
    const struct queue_rcpt *rcpts;
    size_t n_rcpts;
};

/* queue_record_err says why a record was refused. Each class is distinct so that the consumer
 * can log it when it quarantines the record. */
enum queue_record_err {
    QUEUE_RECORD_OK = 0,
    QUEUE_RECORD_ERR_TRUNCATED, /* shorter than its header or than its own length field */
    QUEUE_RECORD_ERR_MAGIC,     /* does not start with "CMTQ" */
    QUEUE_RECORD_ERR_VERSION,   /* a version this code does not read */
    QUEUE_RECORD_ERR_LENGTH,    /* length field below the minimum, above the maximum, or
                                   shorter than the data (trailing octets) */
    QUEUE_RECORD_ERR_CHECKSUM,  /* CRC32C mismatch */
    QUEUE_RECORD_ERR_CORRUPT,   /* checksum right but a field is malformed or missing */
    QUEUE_RECORD_ERR_NOMEM,     /* allocation failed */
};

/* queue_record_encode writes |in| as a record into a newly allocated buffer, stored in |*out|
 * (caller frees with free()) with its length in |*out_len|. Strings longer than their limits,
 * out-of-range enums, more than CMTP_TRACE_MAX traces or more than CMTP_RCPT_MAX_HARD recipients
 * give -EINVAL; a record over QUEUE_RECORD_MAX gives -E2BIG; -ENOMEM. On failure |*out| is NULL. */
int queue_record_encode(const struct queue_record_in *in, uint8_t **out, size_t *out_len);

/* queue_record_decode validates and decodes the |len| octets at |buf| into |rec|, which it
 * initializes (any previous content is overwritten, not freed). Every length is checked before it
 * is used; nothing is allocated before the checksum has been verified, and no more than the record
 * itself can describe. On success the caller must call queue_record_cleanup(|rec|); on failure
 * |rec| holds nothing to free. */
enum queue_record_err queue_record_decode(struct queue_record *rec, const uint8_t *buf, size_t len);

/* queue_record_cleanup frees what queue_record_decode allocated in |rec| and zeroes the
 * recipient fields. NULL is a no-op. */
void queue_record_cleanup(struct queue_record *rec);

/* queue_record_in_from fills |in| to re-encode the decoded |rec| (pointers into |rec|). */
void queue_record_in_from(struct queue_record_in *in, const struct queue_record *rec);

/* queue_record_set_created rewrites the created time in the header of the valid record |buf| of
 * |len| octets to |created_ms| and recomputes its checksum. Returns 0, or -EINVAL when |buf| is
 * not a record of |len| octets. Used at commit time: the record is encoded when the transaction
 * begins (so that the envelope need not be kept), its created time is the accept time. */
int queue_record_set_created(uint8_t *buf, size_t len, int64_t created_ms);

/* queue_record_wants_dsn says whether failures of |rec| are reported to its originator as an RFC
 * 3464 DSN (it came in over an SMTP listener: meta.listener starts with "smtp") rather than as
 * CMTP status reports. */
bool queue_record_wants_dsn(const struct queue_record *rec);

/* queue_record_strerror returns a stable lower-case keyword for |err| (e.g. "bad-checksum"). */
const char *queue_record_strerror(enum queue_record_err err);

/* queue_crc32c returns the CRC32C (Castagnoli, reflected, as in iSCSI and ext4) of |len| octets
 * at |data|, continuing from |crc| (0 to start). */
uint32_t queue_crc32c(uint32_t crc, const uint8_t *data, size_t len);

/* queue_crc32c_portable is |queue_crc32c| without the CPU's CRC32 instruction (queue_crc32c uses
 * it where the CPU has SSE4.2); the tests check that both agree. */
uint32_t queue_crc32c_portable(uint32_t crc, const uint8_t *data, size_t len);

#endif
