/* queue/redis_conn.h — one hiredis connection to one Redis, shared by the ingest queue
 * (queue.c) and the delivery consumer (consumer.c): the address, the connect with its deadline,
 * reconnects with jittered exponential backoff, the reset when a command deadline passes, the
 * last error and the connection counters. Not the commands, their deadlines or their replies,
 * and not the handshake (AUTH, SCRIPT LOAD): those are the owner's, called through
 * queue_conn_ops. Everything runs on the owner's loop. */
#ifndef CMTP_QUEUE_REDIS_CONN_H
#define CMTP_QUEUE_REDIS_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/async.h>

#include "queue/queue.h"
#include "queue/redis_loop.h"

/* QUEUE_CONN_HOST_MAX bounds the host (an address literal) or Unix socket path. */
#define QUEUE_CONN_HOST_MAX 255

/* queue_conn_ops is what the connection asks of its owner. */
struct queue_conn_ops {
    /* up: TCP (or the Unix socket) is connected, state QUEUE_CONNECTING: send the handshake
     * (queue_conn_auth_argv, SCRIPT LOAD) and call queue_conn_ready once it is answered. */
    void (*up)(void *owner);
    /* down: the connection is gone (state QUEUE_DOWN, a reconnect scheduled); the commands the
     * owner still tracks have had, or are about to have, their callbacks run without a reply. */
    void (*down)(void *owner);
    /* deadline: the earliest deadline of the owner's outstanding commands, in loop ms, or
     * UINT64_MAX when none is outstanding. */
    uint64_t (*deadline)(void *owner);
};

/* queue_conn is one connection, embedded in its owner (all fields are the module's; the owner
 * reads |ac|, |state|, |last_error|, |freeing| and the counters). */
struct queue_conn {
    const struct queue_loop *loop; /* the owner's, outlives the connection */
    const struct queue_conn_ops *ops;
    void *owner;
    redisAsyncContext *ac;
    enum queue_conn_state state;
    char last_error[QUEUE_REASON_MAX];
    char host[QUEUE_CONN_HOST_MAX + 1]; /* an address literal, or a socket path */
    int port;
    bool is_unix;
    char *username, *password; /* owned; the password is wiped when freed */
    uint32_t connect_timeout_ms, reconnect_min_ms, reconnect_max_ms, backoff_ms;
    uint64_t connect_deadline_ms;
    void *deadline_timer;
    uint64_t deadline_at;
    void *reconnect_timer;
    uint64_t rng;
    bool force_reset; /* reset from the deadline timer (not inside a hiredis callback) */
    bool freeing;
    uint64_t connects, disconnects, timeouts;
};

/* queue_conn_init parses |address| ("unix:/path", "ip:port", "[ipv6]:port"; "localhost" is
 * 127.0.0.1: hiredis would resolve a name with a blocking getaddrinfo at every reconnect, so no
 * other name is taken), copies |username| and |password| (NULL or "" for none; a username only
 * with a password) and sets |k| up without connecting. |loop| must outlive |k|; |seed| feeds the
 * backoff jitter. Returns 0, or -EINVAL / -ENOMEM with a message in |err|; on failure nothing is
 * left to free. */
int queue_conn_init(struct queue_conn *k, const struct queue_loop *loop,
                    const struct queue_conn_ops *ops, void *owner, const char *address,
                    const char *username, const char *password, uint32_t connect_timeout_ms,
                    uint32_t reconnect_min_ms, uint32_t reconnect_max_ms, uint64_t seed, char *err,
                    size_t errlen);

/* queue_conn_start connects (state QUEUE_CONNECTING) unless connected, connecting or being
 * freed; a failure to start schedules a reconnect. */
void queue_conn_start(struct queue_conn *k);

/* queue_conn_kick schedules a reconnect when the connection is down and none is pending (a
 * reconnect timer that could not be armed). */
void queue_conn_kick(struct queue_conn *k);

/* queue_conn_ready marks the handshake done: state QUEUE_CONNECTED, the last error cleared, the
 * backoff back to its minimum. */
void queue_conn_ready(struct queue_conn *k);

/* queue_conn_reset drops the connection now: hiredis runs every outstanding command's callback
 * without a reply (so a late reply can never be taken for a later command's), then ops->down
 * runs and a reconnect is scheduled. Must not run inside a hiredis connect or disconnect
 * callback: use queue_conn_reset_soon there. */
void queue_conn_reset(struct queue_conn *k);

/* queue_conn_reset_soon records |what| (and |detail|, may be NULL) as the last error, marks the
 * connection down at once and resets it from the loop. */
void queue_conn_reset_soon(struct queue_conn *k, const char *what, const char *detail);

/* queue_conn_arm_deadline makes the deadline check run at |at_ms| (loop ms) at the latest: a
 * passed connect deadline or command deadline (ops->deadline) resets the connection. */
void queue_conn_arm_deadline(struct queue_conn *k, uint64_t at_ms);

/* queue_conn_set_error records "|what|: |detail|" (detail may be NULL) as the last error. */
void queue_conn_set_error(struct queue_conn *k, const char *what, const char *detail);

/* queue_conn_auth_argv fills |argv| and |lens| with the AUTH command ([username] password) and
 * returns its argc, or 0 when no password is configured. */
int queue_conn_auth_argv(const struct queue_conn *k, const char *argv[3], size_t lens[3]);

/* queue_conn_name_ok says whether |s| is a valid key prefix or node name: 1..|max| octets of
 * [A-Za-z0-9._:-] (no braces, which would break the shard hash tags; no space, which would
 * break lease tokens and logs). */
bool queue_conn_name_ok(const char *s, size_t max);

/* queue_conn_wall_ms returns the wall clock in ms since the epoch (accept times, schedules,
 * report times). */
int64_t queue_conn_wall_ms(void);

/* queue_conn_splitmix64 advances the splitmix64 generator |*state| and returns its next value:
 * qids' random part, lease tokens, backoff jitter (seeded by the owner; not for secrets). */
uint64_t queue_conn_splitmix64(uint64_t *state);

/* queue_conn_free cancels the timers and frees the context (every outstanding command's callback
 * runs without a reply while |freeing| is set) and the credentials. |k| itself is the owner's. */
void queue_conn_free(struct queue_conn *k);

#endif
