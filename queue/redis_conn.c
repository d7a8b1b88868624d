/* queue/redis_conn.c — see redis_conn.h. */
#include "queue/redis_conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "queue/redis_adapter.h"

static uint64_t kc_now(const struct queue_conn *k)
{
    return k->loop->ops->now_ms(k->loop->loop);
}

/* kc_rand is splitmix64 over the connection's own state (the backoff jitter). */
static uint64_t kc_rand(struct queue_conn *k)
{
    uint64_t z = (k->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void queue_conn_set_error(struct queue_conn *k, const char *what, const char *detail)
{
    snprintf(k->last_error, sizeof(k->last_error), "%s%s%s", what, detail ? ": " : "",
             detail ? detail : "");
}

static void on_reconnect_timer(void *arg)
{
    struct queue_conn *k = arg;
    k->reconnect_timer = NULL;
    queue_conn_start(k);
}

/* schedule_reconnect arms the next connect after a delay drawn from [b/2, b], b the backoff,
 * which then doubles up to reconnect_max_ms. */
static void schedule_reconnect(struct queue_conn *k)
{
    uint32_t b = k->backoff_ms;
    uint32_t delay;

    if (k->freeing || k->reconnect_timer != NULL || k->ac != NULL)
        return;
    delay = b / 2 + (uint32_t)(kc_rand(k) % (b / 2 + 1));
    k->backoff_ms = b >= k->reconnect_max_ms / 2 ? k->reconnect_max_ms : b * 2;
    k->reconnect_timer = k->loop->ops->timer_add(k->loop->loop, delay, on_reconnect_timer, k);
}

void queue_conn_kick(struct queue_conn *k)
{
    if (k->ac == NULL && k->reconnect_timer == NULL)
        schedule_reconnect(k);
}

/* conn_lost runs once per lost connection (k->ac already NULL). */
static void conn_lost(struct queue_conn *k)
{
    k->state = QUEUE_DOWN;
    k->connect_deadline_ms = 0;
    k->disconnects++;
    schedule_reconnect(k);
    k->ops->down(k->owner);
}

void queue_conn_reset(struct queue_conn *k)
{
    redisAsyncContext *ac = k->ac;
    if (ac == NULL)
        return;
    k->ac = NULL;
    k->state = QUEUE_DOWN;
    ac->data = NULL;
    redisAsyncFree(ac); /* every outstanding command's callback runs with no reply */
    conn_lost(k);
}

static void on_deadline(void *arg)
{
    struct queue_conn *k = arg;
    uint64_t now = kc_now(k);
    uint64_t min;

    k->deadline_timer = NULL;
    if (k->force_reset) {
        k->force_reset = false;
        queue_conn_reset(k);
        return;
    }
    if (k->ac == NULL)
        return;
    if (k->connect_deadline_ms != 0 && k->connect_deadline_ms <= now) {
        k->timeouts++;
        queue_conn_set_error(k, "redis connect timed out", NULL);
        queue_conn_reset(k);
        return;
    }
    min = k->ops->deadline(k->owner);
    if (min <= now) {
        k->timeouts++;
        queue_conn_set_error(k, "redis command timed out", NULL);
        queue_conn_reset(k);
        return;
    }
    if (k->connect_deadline_ms != 0 && k->connect_deadline_ms < min)
        min = k->connect_deadline_ms;
    if (min != UINT64_MAX)
        queue_conn_arm_deadline(k, min);
}

void queue_conn_arm_deadline(struct queue_conn *k, uint64_t at_ms)
{
    uint64_t now = kc_now(k);

    if (k->freeing)
        return;
    if (k->deadline_timer != NULL) {
        if (k->deadline_at <= at_ms)
            return;
        k->loop->ops->timer_cancel(k->loop->loop, k->deadline_timer);
        k->deadline_timer = NULL;
    }
    k->deadline_at = at_ms;
    k->deadline_timer =
        k->loop->ops->timer_add(k->loop->loop, at_ms > now ? at_ms - now : 0, on_deadline, k);
}

void queue_conn_reset_soon(struct queue_conn *k, const char *what, const char *detail)
{
    queue_conn_set_error(k, what, detail);
    k->state = QUEUE_DOWN;
    k->force_reset = true;
    queue_conn_arm_deadline(k, 0);
}

void queue_conn_ready(struct queue_conn *k)
{
    k->state = QUEUE_CONNECTED;
    k->last_error[0] = '\0';
    k->backoff_ms = k->reconnect_min_ms;
    k->connects++;
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    struct queue_conn *k = cac->data;

    if (k == NULL || k->ac != cac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        queue_conn_set_error(k, "redis connect failed", cac->errstr);
        k->ac = NULL;
        conn_lost(k);
        return;
    }
    k->connect_deadline_ms = 0;
    k->ops->up(k->owner);
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    struct queue_conn *k = cac->data;
    (void)status;
    if (k == NULL || k->ac != cac)
        return;
    queue_conn_set_error(k, "redis connection lost", cac->err ? cac->errstr : NULL);
    k->ac = NULL;
    conn_lost(k);
}

void queue_conn_start(struct queue_conn *k)
{
    redisAsyncContext *ac;

    if (k->freeing || k->ac != NULL)
        return;
    ac = k->is_unix ? redisAsyncConnectUnix(k->host) : redisAsyncConnect(k->host, k->port);
    if (ac == NULL) {
        queue_conn_set_error(k, "redis connect failed", "out of memory");
        goto retry;
    }
    if (ac->err) {
        queue_conn_set_error(k, "redis connect failed", ac->errstr);
        redisAsyncFree(ac);
        goto retry;
    }
    if (queue_redis_attach(ac, k->loop) < 0) {
        queue_conn_set_error(k, "redis connect failed", "cannot watch the socket");
        redisAsyncFree(ac);
        goto retry;
    }
    ac->data = k;
    k->ac = ac;
    /* The handshake's commands go out while CONNECTING (the owners allow that only for them),
     * so the state is set before any is sent. */
    k->state = QUEUE_CONNECTING;
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    redisAsyncSetConnectCallback(ac, on_connect); /* arms the first write event */
    k->connect_deadline_ms = kc_now(k) + k->connect_timeout_ms;
    queue_conn_arm_deadline(k, k->connect_deadline_ms);
    return;
retry:
    k->state = QUEUE_DOWN;
    schedule_reconnect(k);
}

int queue_conn_auth_argv(const struct queue_conn *k, const char *argv[3], size_t lens[3])
{
    int argc = 0;
    if (k->password == NULL)
        return 0;
    argv[argc] = "AUTH";
    lens[argc++] = 4;
    if (k->username != NULL) {
        argv[argc] = k->username;
        lens[argc++] = strlen(k->username);
    }
    argv[argc] = k->password;
    lens[argc++] = strlen(k->password);
    return argc;
}

/* parse_address fills k->host, k->port and k->is_unix from |addr|. */
static int parse_address(struct queue_conn *k, const char *addr, char *err, size_t errlen)
{
    const char *colon, *host;
    size_t hl;
    char *end;
    unsigned long port;
    unsigned char bin[sizeof(struct in6_addr)];

    if (addr == NULL || addr[0] == '\0') {
        snprintf(err, errlen, "redis address missing");
        return -EINVAL;
    }
    if (strncmp(addr, "unix:", 5) == 0) {
        /* sun_path holds 108 octets with the NUL. */
        if (strlen(addr + 5) == 0 || strlen(addr + 5) >= 108) {
            snprintf(err, errlen, "redis socket path empty or too long");
            return -EINVAL;
        }
        k->is_unix = true;
        snprintf(k->host, sizeof(k->host), "%s", addr + 5);
        return 0;
    }
    colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr)
        goto bad;
    host = addr;
    hl = (size_t)(colon - addr);
    if (addr[0] == '[') {
        if (colon[-1] != ']' || hl < 3)
            goto bad;
        host = addr + 1;
        hl -= 2;
    } else if (memchr(addr, ':', hl) != NULL) {
        goto bad; /* bare IPv6 needs brackets */
    }
    if (hl >= sizeof(k->host) || hl == 0)
        goto bad;
    errno = 0;
    port = strtoul(colon + 1, &end, 10);
    if (errno || *end != '\0' || colon[1] == '\0' || port == 0 || port > 65535)
        goto bad;
    memcpy(k->host, host, hl);
    k->host[hl] = '\0';
    /* hiredis resolves names with a blocking getaddrinfo at every (re)connect, which would stall
     * the worker: only address literals (and "localhost") are accepted. */
    if (strcmp(k->host, "localhost") == 0)
        snprintf(k->host, sizeof(k->host), "127.0.0.1");
    if (inet_pton(AF_INET, k->host, bin) != 1 && inet_pton(AF_INET6, k->host, bin) != 1)
        goto bad;
    k->port = (int)port;
    k->is_unix = false;
    return 0;
bad:
    snprintf(err, errlen, "bad redis address (want unix:/path, ip:port or [ipv6]:port)");
    return -EINVAL;
}

static void wipe_free(char *s)
{
    if (s != NULL)
        explicit_bzero(s, strlen(s));
    free(s);
}

int queue_conn_init(struct queue_conn *k, const struct queue_loop *loop,
                    const struct queue_conn_ops *ops, void *owner, const char *address,
                    const char *username, const char *password, uint32_t connect_timeout_ms,
                    uint32_t reconnect_min_ms, uint32_t reconnect_max_ms, uint64_t seed, char *err,
                    size_t errlen)
{
    memset(k, 0, sizeof(*k));
    k->loop = loop;
    k->ops = ops;
    k->owner = owner;
    k->state = QUEUE_DOWN;
    k->connect_timeout_ms = connect_timeout_ms;
    k->reconnect_min_ms = k->backoff_ms = reconnect_min_ms;
    k->reconnect_max_ms = reconnect_max_ms;
    k->rng = seed;
    if (parse_address(k, address, err, errlen) < 0)
        return -EINVAL;
    if (password != NULL && password[0] != '\0') {
        k->password = strdup(password);
        if (username != NULL && username[0] != '\0')
            k->username = strdup(username);
        if (k->password == NULL || (username != NULL && username[0] != '\0' && !k->username)) {
            wipe_free(k->password);
            free(k->username);
            k->password = k->username = NULL;
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
    }
    return 0;
}

void queue_conn_free(struct queue_conn *k)
{
    k->freeing = true;
    if (k->deadline_timer != NULL)
        k->loop->ops->timer_cancel(k->loop->loop, k->deadline_timer);
    k->deadline_timer = NULL;
    if (k->reconnect_timer != NULL)
        k->loop->ops->timer_cancel(k->loop->loop, k->reconnect_timer);
    k->reconnect_timer = NULL;
    if (k->ac != NULL) {
        redisAsyncContext *ac = k->ac;
        k->ac = NULL;
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    wipe_free(k->password);
    free(k->username);
    k->password = k->username = NULL;
}

bool queue_conn_name_ok(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-' || ch == ':'))
            return false;
    }
    return true;
}

int64_t queue_conn_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t queue_conn_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
