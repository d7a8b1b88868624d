/* queue/consumer.h — the delivery side of the Redis queue: claims due work per destination under
 * leases, completes it per recipient (retry with backoff, expiry, reports), dead-letters,
 * quarantines corrupt records, streams bodies and serves the admin operations.
 * Not the transports (they call this) and not the ingest side (queue/queue.h). Not thread-safe:
 * one struct queue_consumer per worker thread. Key layout and state machine: docs/QUEUE.md. */
#ifndef CMTP_QUEUE_CONSUMER_H
#define CMTP_QUEUE_CONSUMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/limits.h"
#include "queue/queue.h"
#include "queue/record.h"
#include "queue/redis_loop.h"

/* Defaults and bounds of struct queue_consumer_config (a zero field takes the default). */
#define QUEUE_CONSUMER_LEASE_MS_DEFAULT (5u * 60u * 1000u)
#define QUEUE_CONSUMER_LEASE_MS_MIN 50u
#define QUEUE_CONSUMER_CONCURRENCY_DEFAULT 20u
#define QUEUE_CONSUMER_CONCURRENCY_MAX 100000u
#define QUEUE_CONSUMER_RETRY_BASE_MS_DEFAULT (60ull * 1000u)
#define QUEUE_CONSUMER_RETRY_MAX_MS_DEFAULT (3600ull * 1000u)
#define QUEUE_CONSUMER_LIFETIME_MS_DEFAULT (5ull * 86400u * 1000u)
#define QUEUE_CONSUMER_CRASH_MAX_DEFAULT 5u
#define QUEUE_CONSUMER_BATCH_DEFAULT 32u
#define QUEUE_CONSUMER_BATCH_MAX 1024u
/* QUEUE_CONSUMER_CLAIM_MAX bounds the leases one queue_consumer_claim call may return. */
#define QUEUE_CONSUMER_CLAIM_MAX 4096u
/* QUEUE_CONSUMER_LIST_MAX bounds the entries of one queue_consumer_list answer. */
#define QUEUE_CONSUMER_LIST_MAX 1000u
/* QUEUE_CONSUMER_SUMMARY_MAX bounds the destinations of one queue_consumer_summary answer. */
#define QUEUE_CONSUMER_SUMMARY_MAX 1024u
/* QUEUE_CONSUMER_SCAN_MAX bounds the entries one admin script looks at per shard and state. */
#define QUEUE_CONSUMER_SCAN_MAX 10000u
/* QUEUE_CONSUMER_STALE_MAX bounds how often a completion re-reads a record another node changed
 * meanwhile before it gives up (the lease then expires and the work is retried). */
#define QUEUE_CONSUMER_STALE_MAX 8u
/* QUEUE_CONSUMER_ITEM_MAX bounds a work item name, `<qid>/<destination>`, NUL included. */
#define QUEUE_CONSUMER_ITEM_MAX (CMTP_QID_MAX + 1 + CMTP_DOMAIN_MAX + 1)
/* QUEUE_CONSUMER_REPORT_MAGIC opens every report item (see queue_consumer_report_decode). */
#define QUEUE_CONSUMER_REPORT_MAGIC "CMTR"
/* QUEUE_CONSUMER_REPORT_VERSION is the only report item version written and read. */
#define QUEUE_CONSUMER_REPORT_VERSION 1
/* QUEUE_CONSUMER_REPORT_F_HEADERS is the report item flag asking the queue to attach the start of
 * the message (its header section, for an RFC 3464 DSN) when it stores the item. */
#define QUEUE_CONSUMER_REPORT_F_HEADERS 1u
/* QUEUE_CONSUMER_REPORT_HEADERS_MAX is the most octets of the message start attached to a report
 * item (the same bound as CMTP_DSN_HEADERS_MAX). */
#define QUEUE_CONSUMER_REPORT_HEADERS_MAX 16384

/* queue_consumer_event_kind names the log-worthy things the consumer reports through the event
 * callback of its configuration. */
enum queue_consumer_event_kind {
    QUEUE_CONSUMER_EV_DEAD = 0,    /* a work item was dead-lettered: |count| crashed attempts */
    QUEUE_CONSUMER_EV_QUARANTINED, /* a record failed validation; |detail| is the reason */
    QUEUE_CONSUMER_EV_EXPIRED,     /* |count| recipients expired (lifetime); a report was queued */
    QUEUE_CONSUMER_EV_FAILED,      /* |count| recipients failed permanently; a report was queued */
    QUEUE_CONSUMER_EV_LEASE_LOST,  /* a completion found its lease taken over by another node */
    QUEUE_CONSUMER_EV_ORPHAN,      /* a work item whose message is gone was dropped */
};

/* queue_consumer_event is one event; every pointer is valid during the callback only. |dest| is
 * "" for an event about a whole message. */
struct queue_consumer_event {
    enum queue_consumer_event_kind kind;
    const char *qid;
    const char *dest;
    const char *detail; /* reason text, never NULL ("" when none) */
    unsigned count;
};

/* queue_consumer_config configures one consumer. Strings are copied by queue_consumer_new. The
 * connection settings mean what they mean in struct queue_config; |key_prefix| and |shards| must
 * be those of every ingest queue and consumer of the fleet. */
struct queue_consumer_config {
    const char *address;  /* "unix:/path", "ip:port", "[ipv6]:port" */
    const char *username; /* ACL user, or NULL */
    const char *password; /* or NULL / "" */
    const char *key_prefix;
    const char *node_id; /* this node + worker: written into every lease it takes */
    unsigned shards;
    unsigned inflight_max; /* new operations are refused (-EAGAIN) beyond this */
    uint32_t op_timeout_ms;
    uint32_t reconnect_min_ms;
    uint32_t reconnect_max_ms;
    uint32_t lease_ms;             /* how long a claim holds a work item without a renewal */
    unsigned concurrency_per_dest; /* live leases per destination, fleet-wide */
    uint64_t retry_base_ms;        /* first retry delay after a temporary failure */
    uint64_t retry_max_ms;         /* largest retry delay */
    uint64_t lifetime_ms;          /* a recipient still pending this long after accept expires */
    unsigned attempts_crash_max;   /* crashed attempts (expired leases) before dead-lettering */
    unsigned claim_batch;          /* new messages one claim script takes from one shard */
    /* event_cb, when set, receives every event (from the loop, never re-entrantly from an API
     * call). It must not free the consumer. */
    void (*event_cb)(void *arg, const struct queue_consumer_event *ev);
    void *event_arg;
    /* cache, when set, is the record cache this consumer shares with the other consumers of the
     * process (queue_consumer_cache_new); it must outlive them. NULL: a cache of its own. */
    struct queue_consumer_cache *cache;
};

/* queue_consumer_cache keeps, for a few seconds, the record and first body chunk that a claim
 * read when it split a new message, so that the message's work items, when claimed, start from
 * them instead of reading the record again. Thread-safe: one per process lets every worker's
 * consumer use what any of them read. */
struct queue_consumer_cache;

/* queue_consumer_cache_new creates a cache of at most |max_bytes| octets of records and chunks
 * (0: 4 MiB). Returns NULL when out of memory. */
struct queue_consumer_cache *queue_consumer_cache_new(size_t max_bytes);

/* queue_consumer_cache_free frees |k| (NULL is a no-op); no consumer may use it any more. */
void queue_consumer_cache_free(struct queue_consumer_cache *k);

/* queue_consumer_stats are the counters of one consumer. */
struct queue_consumer_stats {
    uint64_t cmds_sent, replies, errors, dropped, timeouts, connects, disconnects;
    uint64_t claimed;        /* work items leased and handed out */
    uint64_t prefetched;     /* of the items leased, those that started from the record the
                                claim that split their message read, kept in the record cache
                                (no READ of their own) */
    uint64_t adopted;        /* new messages split into work items */
    uint64_t adopt_leased;   /* of the items leased, those leased by the split itself (no CLAIM) */
    uint64_t delivered;      /* recipients delivered */
    uint64_t failed;         /* recipients failed permanently */
    uint64_t expired;        /* recipients expired */
    uint64_t retried;        /* work items rescheduled after a temporary failure */
    uint64_t removed;        /* messages removed (every recipient final) */
    uint64_t quarantined;    /* records quarantined by this consumer */
    uint64_t dead;           /* work items dead-lettered by this consumer's claims */
    uint64_t lost;           /* completions whose lease had been taken over */
    uint64_t orphans;        /* work items dropped because their message was gone */
    uint64_t stale;          /* completions that re-read a record changed by another node */
    uint64_t reports;        /* report items queued */
    uint64_t finish_items;   /* completed items finished or rescheduled after the record update */
    uint64_t finish_scripts; /* FINISHN scripts that did so: one per home shard per loop
                                iteration, so finish_items / finish_scripts is the batch size */
    unsigned inflight;       /* commands now outstanding */
};

/* queue_consumer is one worker's delivery-side connection and state. */
struct queue_consumer;
/* queue_consumer_lease is one claimed work item: a message and one of its destinations. */
struct queue_consumer_lease;
/* queue_consumer_body reads the body of a message chunk by chunk. */
struct queue_consumer_body;

/* queue_consumer_new creates a consumer on |loop| and starts connecting (asynchronously) on its
 * own hiredis connection. Returns NULL and writes the reason into |err| (|errlen| octets) on a
 * bad configuration or when out of memory. */
struct queue_consumer *queue_consumer_new(const struct queue_consumer_config *cfg,
                                          const struct queue_loop *loop, char *err, size_t errlen);

/* queue_consumer_free closes the connection and frees |c| with every operation in flight,
 * without calling their callbacks. Leases the caller holds are not freed: abandon them
 * (queue_consumer_lease_abandon) before or after; open bodies must be closed before. Must not be
 * called from a consumer callback. NULL is a no-op. */
void queue_consumer_free(struct queue_consumer *c);

/* queue_consumer_state returns the connection state; |last_error|, when not NULL, receives the
 * last connection or command error ("" if none), valid until the next call into |c|. */
enum queue_conn_state queue_consumer_state(const struct queue_consumer *c, const char **last_error);

/* queue_consumer_get_stats copies the counters of |c| into |out|. */
void queue_consumer_get_stats(const struct queue_consumer *c, struct queue_consumer_stats *out);

/* queue_consumer_claim leases up to |max| (1..QUEUE_CONSUMER_CLAIM_MAX) due work items. It runs
 * in at most four rounds; a round sends one script to each of its shards at once (pipelined: one
 * round trip): every shard when the last such sweep is 100 ms old, else the shards that had due
 * work left. In each shard the script first reclaims expired leases (their items become due
 * again, counting a crashed attempt, or go to the dead letters after attempts_crash_max), then
 * leases due items whose destination is below its concurrency limit (|max| is shared between
 * the shards, so no more are leased) and new messages, which are split into one work item per
 * destination (the next round claims those). Every record is validated (corrupt ones are
 * quarantined) and read with the body's first chunk when small; items past the lifetime are
 * expired without being handed out. |cb|(|arg|, err, leases, n) is called once, from the loop,
 * never from inside this call: err is 0 (n may be 0) or -errno when nothing could be claimed; the
 * caller owns each of the |n| leases (the array itself is valid during the callback only) and must
 * end each with queue_consumer_done, queue_consumer_lease_return or queue_consumer_lease_abandon.
 * Returns 0, -EINVAL, -ENOTCONN, -EAGAIN (inflight_max reached) or -ENOMEM. */
int queue_consumer_claim(struct queue_consumer *c, size_t max,
                         void (*cb)(void *arg, int err, struct queue_consumer_lease **leases,
                                    size_t n),
                         void *arg);

/* queue_consumer_lease_qid returns the queue id of |l| (owned by |l|). */
const char *queue_consumer_lease_qid(const struct queue_consumer_lease *l);

/* queue_consumer_lease_dest returns the destination of |l|: the recipients' next hop, or their
 * domain when they have none (owned by |l|). */
const char *queue_consumer_lease_dest(const struct queue_consumer_lease *l);

/* queue_consumer_lease_record returns the decoded, validated record of |l|'s message as it was
 * read at the claim (owned by |l|). */
const struct queue_record *queue_consumer_lease_record(const struct queue_consumer_lease *l);

/* queue_consumer_lease_rcpts returns the indices (into the record's recipients) of the
 * recipients this lease is to deliver — those of its destination still pending — and their
 * number in |*n|. Owned by |l|. */
const size_t *queue_consumer_lease_rcpts(const struct queue_consumer_lease *l, size_t *n);

/* queue_consumer_lease_tries returns the temporary failures this work item had before. */
uint32_t queue_consumer_lease_tries(const struct queue_consumer_lease *l);

/* queue_consumer_lease_crashes returns the crashed attempts (expired leases) of this item. */
uint32_t queue_consumer_lease_crashes(const struct queue_consumer_lease *l);

/* queue_consumer_lease_expires_ms returns when the lease expires, in Redis server time (ms since
 * the epoch). Renew well before. */
int64_t queue_consumer_lease_expires_ms(const struct queue_consumer_lease *l);

/* queue_consumer_renew extends |l| by lease_ms from now (server time), if this node still holds
 * it. |cb|(|arg|, err) is called once from the loop: 0, -ESTALE when the lease was taken over or
 * the item is gone, -EIO on a Redis error. Returns 0, -EBUSY (a renewal or completion of |l| is in
 * flight), -ENOTCONN or -ENOMEM. */
int queue_consumer_renew(struct queue_consumer_lease *l, void (*cb)(void *arg, int err), void *arg);

/* queue_consumer_result is a recipient's delivery outcome. */
enum queue_consumer_result {
    QUEUE_CONSUMER_DELIVERED = 0, /* the next hop or the store accepted it */
    QUEUE_CONSUMER_TEMPFAIL,      /* try again later */
    QUEUE_CONSUMER_PERMFAIL,      /* refused for good: a report goes to the originator */
};

/* queue_consumer_outcome is the outcome for recipient |rcpt| (an index into the record's
 * recipients, one of queue_consumer_lease_rcpts). |reason| (may be NULL) is copied, truncated to
 * QUEUE_REASON_MAX - 1 octets, with control characters replaced. */
struct queue_consumer_outcome {
    size_t rcpt;
    enum queue_consumer_result result;
    const char *reason;
};

/* queue_consumer_done_status says how a completion went. */
enum queue_consumer_done_status {
    QUEUE_CONSUMER_DONE_OK = 0, /* recorded; the item was finished or rescheduled */
    QUEUE_CONSUMER_DONE_LOST,   /* the outcomes were recorded, but the lease had been taken over
                                   by another node (which may deliver again: a duplicate) */
    QUEUE_CONSUMER_DONE_GONE,   /* the message no longer exists (deleted, or finished elsewhere) */
    QUEUE_CONSUMER_DONE_ERROR,  /* a Redis error: the outcomes may or may not be recorded; the
                                   lease expires and a claim retries the item (counted as a
                                   crashed attempt) or finds it already done */
};

/* queue_consumer_done_result is handed to the completion callback; valid during it only. */
struct queue_consumer_done_result {
    enum queue_consumer_done_status status;
    char qid[CMTP_QID_MAX + 1];
    char dest[CMTP_DOMAIN_MAX + 1];
    unsigned delivered, failed, expired; /* recipients this completion made final */
    unsigned pending;                    /* recipients of the item still pending */
    bool rescheduled;                    /* the item was rescheduled ... */
    int64_t next_attempt_ms;             /* ... for this server time */
    bool removed;                        /* every recipient final: the message was removed */
    bool report_queued;                  /* a report item was queued */
    char reason[QUEUE_REASON_MAX];       /* for DONE_ERROR */
};

/* queue_consumer_done completes |l| with |n| outcomes |o|. Recipients of the item that are not in
 * |o| count as temporary failures ("no outcome"). Each outcome is applied to the record only if
 * the recipient is still pending (a final status never changes). Then, in one script on the
 * message's shard that checks the record was not changed meanwhile (else it re-reads and
 * re-applies): the record is rewritten (statuses, attempts + 1), a report item is queued for
 * recipients that failed or expired, and the message (record, body, state) is removed once every
 * recipient is final. Then the work item is finished, or — when recipients are still pending —
 * rescheduled after min(retry_max, retry_base * 2^tries) minus up to a quarter of jitter; when
 * that would pass the lifetime, the pending recipients expire now instead. Only downstream
 * acceptance (QUEUE_CONSUMER_DELIVERED) removes anything. |cb|(|arg|, result) is called once from
 * the loop (may be NULL); |l| is consumed: freed before the callback. Returns 0; or, leaving |l|
 * to the caller: -EINVAL (an index not of this item), -EBUSY (a renewal is in flight), -ENOTCONN,
 * -ENOMEM. */
int queue_consumer_done(struct queue_consumer_lease *l, const struct queue_consumer_outcome *o,
                        size_t n, void (*cb)(void *arg, const struct queue_consumer_done_result *r),
                        void *arg);

/* queue_consumer_lease_return hands |l| back without an attempt (shutdown, say): the item is due
 * again now and no attempt or crash is counted. |cb|(|arg|, err) (may be NULL) gets 0, -ESTALE
 * (the lease was no longer ours) or -EIO. |l| is consumed. Returns 0, -EBUSY, -ENOTCONN or
 * -ENOMEM (then |l| is still the caller's). */
int queue_consumer_lease_return(struct queue_consumer_lease *l, void (*cb)(void *arg, int err),
                                void *arg);

/* queue_consumer_lease_abandon frees |l| without telling Redis: the lease expires and another
 * claim retries the item, counting a crashed attempt. For a worker that cannot finish (and for
 * tests of that path). Safe after queue_consumer_free. NULL is a no-op. */
void queue_consumer_lease_abandon(struct queue_consumer_lease *l);

/* queue_consumer_body_open starts reading the body of |l|'s message. Returns NULL with errno
 * ENOMEM. The iterator holds no data between calls; close it with queue_consumer_body_close before
 * |l| is consumed. */
struct queue_consumer_body *queue_consumer_body_open(const struct queue_consumer_lease *l);

/* queue_consumer_body_next asks for the next chunk. |cb|(|arg|, err, data, len, last) is called
 * once from the loop: err 0 with |len| octets at |data| (valid during the callback only: copy or
 * send them) and |last| true on the chunk that completes the declared SIZE; -ENOENT when the body
 * is missing or shorter than its SIZE, -EIO when longer or on a Redis error. At most one chunk
 * (chunk_size octets) is held at a time, and nothing is read before the caller asks: backpressure
 * is the caller not calling this. Returns 0, -EBUSY (a read is in flight), -ENODATA (the body was
 * read whole), -ENOTCONN or -ENOMEM. */
int queue_consumer_body_next(struct queue_consumer_body *b,
                             void (*cb)(void *arg, int err, const uint8_t *data, size_t len,
                                        bool last),
                             void *arg);

/* queue_consumer_body_close frees |b|; a read in flight is dropped (its callback not called).
 * NULL is a no-op. */
void queue_consumer_body_close(struct queue_consumer_body *b);

/* queue_consumer_report_rcpt is one recipient of a report item. */
struct queue_consumer_report_rcpt {
    uint32_t rcpt;                 /* index into the record's recipients */
    enum queue_rcpt_status status; /* QUEUE_RCPT_FAILED or QUEUE_RCPT_EXPIRED */
    char reason[QUEUE_REASON_MAX];
};

/* queue_consumer_report is a decoded report item: the delivery side turns it into a CMTP status
 * report or an RFC 3464 DSN. |record| is the message's record after the completion that queued
 * the report (the message itself may be gone by then). Owned by the structure
 * (queue_consumer_report_cleanup). */
struct queue_consumer_report {
    char qid[CMTP_QID_MAX + 1];
    char dest[CMTP_DOMAIN_MAX + 1];
    int64_t at_ms; /* when it was queued (consumer wall clock) */
    struct queue_consumer_report_rcpt *rcpts;
    size_t n_rcpts;
    struct queue_record *record;
    uint8_t *headers; /* the first octets of the message (header section first), or NULL */
    size_t headers_len;
};

/* queue_consumer_report_decode validates and decodes the report item |buf| of |len| octets into
 * |out| (overwritten). Format, big-endian: "CMTR", u16 version 1, u16 flags, u32 length L of the
 * checksummed part, i64 at_ms, u16+qid, u16+dest, u32 n, n x (u32 rcpt, u8 status, u16+reason),
 * u32 record length, the record, u32 CRC32C of everything before; then, only with flag
 * QUEUE_CONSUMER_REPORT_F_HEADERS (the one flag defined) and only when the message body still
 * existed when the item was stored, "HDRS", u32 m, and the message's first m octets (m <=
 * QUEUE_CONSUMER_REPORT_HEADERS_MAX; outside the checksum: they are only ever copied into a DSN,
 * which sanitizes them). Returns 0 (then call
 * queue_consumer_report_cleanup), -EBADMSG (malformed, bad checksum, or its record does not
 * decode), or -ENOMEM; on failure |out| holds nothing to free. */
int queue_consumer_report_decode(struct queue_consumer_report *out, const uint8_t *buf, size_t len);

/* queue_consumer_report_cleanup frees what queue_consumer_report_decode allocated. NULL is a
 * no-op. */
void queue_consumer_report_cleanup(struct queue_consumer_report *r);

/* queue_consumer_report_take takes one queued report item (from the shards in turn) under a lease
 * of lease_ms: until it is acknowledged, it is handed out again after the lease. |cb|(|arg|, err,
 * shard, data, len) is called once from the loop: err 0 with the raw item (valid during the
 * callback; decode with queue_consumer_report_decode), -ENOENT when there is none, -EIO.
 * Returns 0, -ENOTCONN, -EAGAIN or -ENOMEM. */
int queue_consumer_report_take(struct queue_consumer *c,
                               void (*cb)(void *arg, int err, unsigned shard, const uint8_t *data,
                                          size_t len),
                               void *arg);

/* queue_consumer_report_ack removes the report item |data| (|len| octets, as taken from |shard|)
 * once the report was sent. |cb| (may be NULL) gets 0, -ENOENT (not taken or already acknowledged)
 * or -EIO. Returns 0, -EINVAL, -ENOTCONN, -EAGAIN or -ENOMEM. */
int queue_consumer_report_ack(struct queue_consumer *c, unsigned shard, const uint8_t *data,
                              size_t len, void (*cb)(void *arg, int err), void *arg);

/* queue_consumer_state_kind is where a work item (or a message not yet split) is. */
enum queue_consumer_state_kind {
    QUEUE_CONSUMER_SCHEDULED = 0, /* waiting for its next attempt (or due) */
    QUEUE_CONSUMER_LEASED,        /* being delivered by a node */
    QUEUE_CONSUMER_HELD,          /* held by the admin: not claimed until released */
    QUEUE_CONSUMER_DEAD,          /* dead-lettered: kept, not delivered */
    QUEUE_CONSUMER_QUARANTINED,   /* the record failed validation (whole message) */
};

/* queue_consumer_dest_summary is one destination's line in a summary. dest "" stands for new
 * messages not yet split into work items. Times are ms since the epoch, 0 when none. */
struct queue_consumer_dest_summary {
    char dest[CMTP_DOMAIN_MAX + 1];
    unsigned scheduled, leased, held, dead;
    int64_t oldest_ms;       /* accept time of the oldest message (from its queue id) */
    int64_t next_attempt_ms; /* earliest next attempt of a scheduled item */
};

/* queue_consumer_summary is the answer of queue_consumer_summary; valid during the callback. */
struct queue_consumer_summary {
    const struct queue_consumer_dest_summary *dests;
    size_t n_dests;
    uint64_t quarantined;
    bool truncated; /* a shard had more than QUEUE_CONSUMER_SCAN_MAX entries in a state, or
                       there were more than QUEUE_CONSUMER_SUMMARY_MAX destinations */
};

/* queue_consumer_summary summarises the queue per destination. |cb|(|arg|, err, summary) is
 * called once from the loop (err 0, or -EIO with |summary| NULL). Returns 0, -ENOTCONN, -EAGAIN,
 * -ENOMEM. */
int queue_consumer_summary(struct queue_consumer *c,
                           void (*cb)(void *arg, int err, const struct queue_consumer_summary *s),
                           void *arg);

/* queue_consumer_filter selects queue_consumer_list entries. */
struct queue_consumer_filter {
    const char *dest; /* NULL: every destination; "" : messages not yet split */
    enum queue_consumer_state_kind state;
    size_t limit; /* 1..QUEUE_CONSUMER_LIST_MAX (0: QUEUE_CONSUMER_LIST_MAX) */
};

/* queue_consumer_entry is one listed item, valid during the callback. */
struct queue_consumer_entry {
    char qid[CMTP_QID_MAX + 1];
    char dest[CMTP_DOMAIN_MAX + 1]; /* "" for a whole message */
    enum queue_consumer_state_kind state;
    int64_t at_ms; /* next attempt, lease expiry, or when it was held / dead-lettered /
                      quarantined */
    char info[QUEUE_REASON_MAX]; /* leaseholder node, last error, dead-letter or quarantine
                                    reason; "" when none */
};

/* queue_consumer_list lists the items matching |f|, earliest first. |cb|(|arg|, err, entries, n,
 * truncated) is called once from the loop. Returns 0, -EINVAL, -ENOTCONN, -EAGAIN, -ENOMEM. */
int queue_consumer_list(struct queue_consumer *c, const struct queue_consumer_filter *f,
                        void (*cb)(void *arg, int err, const struct queue_consumer_entry *e,
                                   size_t n, bool truncated),
                        void *arg);

/* queue_consumer_item_state is one work item in a queue_consumer_show answer. */
struct queue_consumer_item_state {
    char dest[CMTP_DOMAIN_MAX + 1]; /* "" for the message not yet split */
    enum queue_consumer_state_kind state;
    int64_t at_ms;
    char node[QUEUE_NODE_MAX + 1]; /* leaseholder, "" unless LEASED */
    uint32_t tries, crashes;
    char last_error[QUEUE_REASON_MAX]; /* last temporary failure or dead-letter reason */
};

/* queue_consumer_show_result is the answer of queue_consumer_show; valid during the callback. */
struct queue_consumer_show_result {
    const char *qid;
    const struct queue_record *record; /* NULL when quarantined or undecodable */
    size_t record_len;                 /* octets of the stored record */
    bool quarantined;
    char quarantine_reason[QUEUE_REASON_MAX];
    const struct queue_consumer_item_state *items; /* live items; none once all are final */
    size_t n_items;
};

/* queue_consumer_show reads one message: its decoded record (recipients with their status,
 * attempts) and the state of each of its work items (schedule, lease and leaseholder, tries,
 * crashes, last error). |cb|(|arg|, err, result): 0, -ENOENT, -EIO. Returns 0, -EINVAL (bad
 * qid), -ENOTCONN, -EAGAIN, -ENOMEM. */
int queue_consumer_show(struct queue_consumer *c, const char *qid,
                        void (*cb)(void *arg, int err, const struct queue_consumer_show_result *r),
                        void *arg);

/* queue_consumer_delete removes the message |qid| whatever its state (its record, quarantined
 * record, body, work items and leases): a delivery in progress then completes as DONE_GONE.
 * |cb|(|arg|, err, n) gets 0 and the number of entries removed, -ENOENT, or -EIO. Returns 0,
 * -EINVAL, -ENOTCONN, -EAGAIN, -ENOMEM. */
int queue_consumer_delete(struct queue_consumer *c, const char *qid,
                          void (*cb)(void *arg, int err, unsigned n), void *arg);

/* queue_consumer_retry makes |qid|'s scheduled items due now and revives its dead-lettered
 * ones (crash count reset); with |qid| NULL, every scheduled and dead item of the queue. Held
 * items stay held. |cb| as for queue_consumer_delete, with the number of items touched. */
int queue_consumer_retry(struct queue_consumer *c, const char *qid,
                         void (*cb)(void *arg, int err, unsigned n), void *arg);

/* queue_consumer_hold holds |qid|: its scheduled items are moved aside and not claimed, and
 * leased ones are held when their delivery ends without finishing them. */
int queue_consumer_hold(struct queue_consumer *c, const char *qid,
                        void (*cb)(void *arg, int err, unsigned n), void *arg);

/* queue_consumer_release releases a held |qid|: its held items are due now. */
int queue_consumer_release(struct queue_consumer *c, const char *qid,
                           void (*cb)(void *arg, int err, unsigned n), void *arg);

/* queue_consumer_flush makes every scheduled item of the queue due now (held and dead items are
 * left alone). |cb| gets the number of items moved. */
int queue_consumer_flush(struct queue_consumer *c, void (*cb)(void *arg, int err, unsigned n),
                         void *arg);

/* queue_consumer_item_shard returns the home shard of destination |dest|: the shard whose keys
 * hold its work items, leases and concurrency counter. The same FNV-1a function as
 * queue_txid_shard, over the destination's octets. */
unsigned queue_consumer_item_shard(const char *dest, unsigned shards);

/* queue_consumer_script returns the Lua source of consumer script |i| (0..), or NULL past the
 * last (for docs and tests). */
const char *queue_consumer_script(unsigned i);

#endif
