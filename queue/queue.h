/* queue/queue.h — the Redis-backed durable queue, ingest side: one non-blocking hiredis connection
 * per worker, body chunks streamed as they arrive, one atomic commit script with dedup by txid.
 * Not the delivery consumer, and not thread-safe: one struct queue per worker thread.
 * Key layout, record format and the durability argument: docs/QUEUE.md. */
#ifndef CMTP_QUEUE_QUEUE_H
#define CMTP_QUEUE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/envelope.h"
#include "core/limits.h"
#include "queue/record.h"
#include "queue/redis_loop.h"

/* Defaults and hard limits of struct queue_config (a zero field takes the default). */
#define QUEUE_PREFIX_DEFAULT "cmtp"
#define QUEUE_PREFIX_MAX 32
#define QUEUE_SHARDS_DEFAULT 16u
#define QUEUE_SHARDS_MAX 1024u
#define QUEUE_INFLIGHT_DEFAULT 128u
#define QUEUE_INFLIGHT_MAX 65536u
#define QUEUE_CHUNK_SIZE_DEFAULT (256u * 1024u)
#define QUEUE_CHUNK_SIZE_MIN 1024u
#define QUEUE_CHUNK_SIZE_MAX (16u * 1024u * 1024u)
#define QUEUE_OP_TIMEOUT_MS_DEFAULT 5000u
#define QUEUE_WAIT_TIMEOUT_MS_DEFAULT 1000u
#define QUEUE_RECONNECT_MIN_MS_DEFAULT 100u
#define QUEUE_RECONNECT_MAX_MS_DEFAULT 5000u
#define QUEUE_DEDUP_TTL_MS_DEFAULT (7u * 24u * 3600u * 1000u)
#define QUEUE_BODY_TTL_MS_DEFAULT (2u * 3600u * 1000u)
/* QUEUE_TXN_CHUNKS_INFLIGHT is how many body chunk writes one transaction may have outstanding;
 * with the chunk being filled it bounds a transaction's memory (see queue_txn_append). */
#define QUEUE_TXN_CHUNKS_INFLIGHT 2u
/* QUEUE_KEY_MAX bounds every key name the queue builds. */
#define QUEUE_KEY_MAX 384
/* QUEUE_REASON_MAX bounds the text of a failure reason (NUL included). */
#define QUEUE_REASON_MAX 128

/* queue_config configures one queue. Strings are copied by queue_new. */
struct queue_config {
    const char *address; /* "unix:/path/redis.sock", "127.0.0.1:6379", "[::1]:6379" (IP literals) */
    const char *username;     /* ACL user for AUTH, or NULL */
    const char *password;     /* AUTH password, or NULL / "" for none */
    const char *key_prefix;   /* NULL: QUEUE_PREFIX_DEFAULT; [A-Za-z0-9._-], no braces */
    const char *node_id;      /* this appliance + worker, recorded with each message */
    unsigned shards;          /* fleet-wide constant: every node must use the same value */
    unsigned wait_replicas;   /* 0: no WAIT; n: an accept needs n replica acknowledgements */
    uint32_t wait_timeout_ms; /* WAIT timeout */
    unsigned inflight_max;    /* outstanding Redis commands of this worker */
    size_t chunk_size;        /* octets per body chunk value */
    uint32_t op_timeout_ms;   /* deadline of every command (and of connecting) */
    uint32_t reconnect_min_ms;
    uint32_t reconnect_max_ms;
    uint32_t dedup_ttl_ms; /* how long a txid is remembered after its accept */
    uint32_t body_ttl_ms;  /* expiry of the chunks of a transaction never committed */
};

/* queue_res is the outcome of a body append. */
enum queue_res {
    QUEUE_OK = 0,   /* data taken; go on */
    QUEUE_AGAIN,    /* data taken, but stop reading until the writable callback fires */
    QUEUE_TEMPFAIL, /* the transaction failed (storage unavailable): answer 451 at END */
};

/* queue_conn_state is the state of the Redis connection. */
enum queue_conn_state {
    QUEUE_DOWN = 0,   /* no connection; a reconnect is scheduled */
    QUEUE_CONNECTING, /* connecting, authenticating or loading the script */
    QUEUE_CONNECTED,  /* ready */
};

/* queue_stats are the counters of one queue, for the admin socket and metrics. */
/* QUEUE_STATS_FLUSH_MS is how late the shards' `accepted` and `bytes` counters in Redis (the
 * `stats` hash) may be: a queue adds its accepts in one HINCRBY per counter and shard at most
 * this often, not in every commit. A node that stops or crashes loses at most this much of those
 * fleet-wide counts; its own counters (queue_get_stats, the metrics) are exact. */
#define QUEUE_STATS_FLUSH_MS 1000u

struct queue_stats {
    uint64_t cmds_sent;      /* commands handed to hiredis */
    uint64_t replies;        /* replies received (error replies included) */
    uint64_t errors;         /* error replies */
    uint64_t dropped;        /* commands that got no reply (connection lost or reset) */
    uint64_t timeouts;       /* connections reset because a command missed its deadline */
    uint64_t connects;       /* connections that became ready */
    uint64_t disconnects;    /* connections lost */
    uint64_t accepted;       /* commits accepted (dups included) */
    uint64_t dups;           /* of which duplicates */
    uint64_t conflicts;      /* commits refused as txn-conflict */
    uint64_t tempfails;      /* commits answered with a temporary failure */
    uint64_t latency_us_sum; /* sum of command latencies */
    uint64_t latency_us_max; /* largest command latency */
    unsigned inflight;       /* commands now outstanding */
    size_t obuf_bytes;       /* octets in hiredis's output buffer now */
};

/* queue is one worker's connection and state. */
struct queue;
/* queue_txn is one message being received. */
struct queue_txn;

/* queue_new creates a queue running on |loop| and starts connecting (asynchronously: it is not
 * connected when this returns). Returns NULL and writes the reason into |err| (|errlen| octets)
 * on a bad configuration or when out of memory. */
struct queue *queue_new(const struct queue_config *cfg, const struct queue_loop *loop, char *err,
                        size_t errlen);

/* queue_free closes the connection and frees |q|, every transaction still open and every
 * pending operation, without calling their callbacks. Must not be called from a queue callback.
 * NULL is a no-op. */
void queue_free(struct queue *q);

/* queue_state returns the connection state; when |last_error| is not NULL it receives the last
 * connection or command error ("" if none), valid until the next call into |q|. */
enum queue_conn_state queue_state(const struct queue *q, const char **last_error);

/* queue_get_stats copies the counters of |q| into |out|. */
void queue_get_stats(const struct queue *q, struct queue_stats *out);

/* queue_txn_begin starts receiving a message: allocates its queue id (time-ordered and unique
 * across nodes, see queue_txn_qid), picks its shard from a hash of |env|->txid, and encodes the
 * envelope record (so |env|, |rcpts| and |meta| are not needed afterwards). |n_rcpts| is
 * 1..CMTP_RCPT_MAX_HARD accepted recipients. Returns NULL with errno set: ENOTCONN when Redis is
 * not connected (fail fast: answer 451), EINVAL for bad arguments, ENOMEM. The caller owns the
 * transaction until queue_txn_commit succeeds, and must end it with queue_txn_abort otherwise. */
struct queue_txn *queue_txn_begin(struct queue *q, const struct cmtp_envelope *env,
                                  const struct queue_rcpt *rcpts, size_t n_rcpts,
                                  const struct queue_txn_meta *meta);

/* queue_txn_begin_unsized is queue_txn_begin for a body whose size and digest are known only
 * at its end (the SMTP ingress): |env|->size and |env|->digest are ignored, at most |size_max|
 * (1..CMTP_SIZE_MAX_HARD) octets may be appended, and the envelope record is encoded by
 * queue_txn_commit_unsized, which must be used instead of queue_txn_commit. |env|, |rcpts| and
 * |meta| are copied. */
struct queue_txn *queue_txn_begin_unsized(struct queue *q, const struct cmtp_envelope *env,
                                          const struct queue_rcpt *rcpts, size_t n_rcpts,
                                          const struct queue_txn_meta *meta, uint64_t size_max);

/* queue_txn_qid returns the queue id of |t|, NUL-terminated, owned by |t|. Format: 10 Crockford
 * base32 digits of the ms wall clock, 12 random base32 digits, '-', the shard number. */
const char *queue_txn_qid(const struct queue_txn *t);

/* queue_txn_shard returns the shard of |t|. */
unsigned queue_txn_shard(const struct queue_txn *t);

/* queue_txn_set_writable_cb sets the callback that fires (once) after queue_txn_append returned
 * QUEUE_AGAIN, when the transaction takes data again, or when it has failed meanwhile (the next
 * append then returns QUEUE_TEMPFAIL). Never called from inside a queue_txn_* call. */
void queue_txn_set_writable_cb(struct queue_txn *t, void (*cb)(void *arg), void *arg);

/* queue_txn_append copies |len| body octets at |data| into the transaction. Full chunks of
 * chunk_size octets are sent to Redis (RPUSH) while the body streams in; the last partial chunk
 * travels with the commit. Returns QUEUE_OK; QUEUE_AGAIN when the data was taken but
 * QUEUE_TXN_CHUNKS_INFLIGHT chunk writes of this transaction (or inflight_max commands of the
 * worker) are outstanding — stop reading the peer until the writable callback fires; or
 * QUEUE_TEMPFAIL when the transaction has failed (Redis lost, a write refused, or backpressure
 * ignored): keep discarding the body and answer END with 451. A transaction that honours
 * QUEUE_AGAIN holds at most (QUEUE_TXN_CHUNKS_INFLIGHT + 1) * chunk_size octets plus one append
 * call's |len|, whatever the message size (queue_txn_buffered). */
enum queue_res queue_txn_append(struct queue_txn *t, const uint8_t *data, size_t len);

/* queue_txn_buffered returns the octets |t| holds: its own chunk buffers plus chunks handed to
 * Redis and not yet acknowledged. */
size_t queue_txn_buffered(const struct queue_txn *t);

/* queue_commit_status is the outcome of a commit. */
enum queue_commit_status {
    QUEUE_COMMIT_ACCEPTED = 0, /* durably stored (or already stored: dup) — answer 250 */
    QUEUE_COMMIT_CONFLICT,     /* the txid was accepted with another digest or originator */
    QUEUE_COMMIT_TEMPFAIL,     /* nothing was acknowledged: answer 451 */
};

/* queue_commit_result is handed to the commit callback; valid during the callback only. */
struct queue_commit_result {
    enum queue_commit_status status;
    bool dup;                      /* accepted earlier: |qid| and |rcpts| are the first's */
    char qid[CMTP_QID_MAX + 1];    /* queue id (accepted, and conflict: the first's) */
    unsigned rcpts;                /* recipients accepted */
    char reason[QUEUE_REASON_MAX]; /* why, for a temporary failure; "" otherwise */
};

/* queue_txn_commit commits |t| once its whole body was appended: |digest| is the SHA-256 the
 * caller computed and checked (it must equal the envelope's, and the octets appended must equal
 * its SIZE). Outstanding chunk writes are pipelined before ONE Lua script that atomically checks
 * the txid's dedup key, stores the envelope record and the last chunk, schedules the message and
 * sets the dedup key; with wait_replicas it is followed by WAIT. |done|(|arg|, result) is called
 * exactly once, later, from the loop — never from inside this call; |t| is freed right after it
 * returns and must not be used once this call returned 0. ACCEPTED is reported only after a
 * success reply to the script (sent after Redis's AOF fsync) and, with wait_replicas, enough
 * replica acknowledgements. Returns 0; or without calling |done| and leaving |t| to the caller:
 * -ENOTCONN (Redis down), -EIO (the transaction already failed), -EINVAL (size or digest
 * mismatch, or already committing). */
int queue_txn_commit(struct queue_txn *t, const uint8_t digest[CMTP_DIGEST_LEN],
                     void (*done)(void *arg, const struct queue_commit_result *r), void *arg);

/* queue_txn_commit_unsized commits an unsized transaction: |size| (>= 1) must equal the octets
 * appended and |digest| is their SHA-256, both recorded in the envelope; |policy|, when not NULL,
 * replaces the envelope's policy (learnt from the message while it streamed). Then as
 * queue_txn_commit. Returns 0; -EINVAL (not unsized, size mismatch, empty body), -EIO, -ENOTCONN
 * or -ENOMEM, leaving |t| to the caller. */
int queue_txn_commit_unsized(struct queue_txn *t, uint64_t size,
                             const uint8_t digest[CMTP_DIGEST_LEN],
                             const struct cmtp_policy *policy,
                             void (*done)(void *arg, const struct queue_commit_result *r),
                             void *arg);

/* queue_txn_abort ends |t|: frees it and deletes (UNLINK, best effort) body chunks already
 * written. After a successful queue_txn_commit it only cancels the callback: the commit still
 * completes in Redis or not (a retransmission with the same txid finds out which). NULL is a
 * no-op. */
void queue_txn_abort(struct queue_txn *t);

/* queue_get_envelope reads the envelope record of |qid| (GET). |cb|(|arg|, err, data, len) is
 * called once from the loop with err 0 and the raw record (valid during the callback; decode it
 * with queue_record_decode), -ENOENT when there is none, -EIO on a Redis error or connection loss.
 * Returns 0, -EINVAL (bad qid), -ENOTCONN, or -EAGAIN (inflight_max reached). */
int queue_get_envelope(struct queue *q, const char *qid,
                       void (*cb)(void *arg, int err, const uint8_t *data, size_t len), void *arg);

/* queue_get_body_chunk reads body chunk |index| (0-based) of |qid| (LINDEX), like
 * queue_get_envelope; -ENOENT past the last chunk. */
int queue_get_body_chunk(struct queue *q, const char *qid, uint32_t index,
                         void (*cb)(void *arg, int err, const uint8_t *data, size_t len),
                         void *arg);

/* queue_key_format writes the key `<prefix>:{s<shard>}:<kind>[:<name>]` (|name| may be NULL,
 * |name_len| octets otherwise) into |out| of |cap| octets, NUL-terminated. Every key of a shard
 * carries the same hash tag `{s<shard>}`. Returns the length, or -ENOSPC. */
int queue_key_format(char *out, size_t cap, const char *prefix, unsigned shard, const char *kind,
                     const char *name, size_t name_len);

/* queue_txid_shard returns the shard of the transaction id |txid| (|len| octets) among |shards|:
 * FNV-1a 32 of the octets, modulo |shards|. Stable across nodes and versions. */
unsigned queue_txid_shard(const char *txid, size_t len, unsigned shards);

/* queue_qid_shard parses the shard suffix of |qid| into |*shard|. Returns 0 or -EINVAL. */
int queue_qid_shard(const char *qid, unsigned *shard);

/* queue_commit_script returns the Lua source of the commit script (for docs and tests). */
const char *queue_commit_script(void);

#endif
