/* tests/unit/helpers/redis_test.h — start and stop a private redis-server for a test program: a
 * mkdtemp folder, a Unix socket, AOF with fsync always. libc only; never the system instance. */
#ifndef CMTP_TEST_REDIS_TEST_H
#define CMTP_TEST_REDIS_TEST_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* redis_test is one private server. All paths are NUL-terminated; |pid| is 0 when not running. */
struct redis_test {
    char dir[128];  /* the mkdtemp folder: redis.conf, redis.sock, redis.log, appendonlydir */
    char sock[160]; /* the Unix socket path */
    char conf[160]; /* the config file path */
    pid_t pid;
};

/* redis_test_start creates a fresh folder under $TMPDIR (default /tmp), writes a redis.conf (port
 * 0, unixsocket, unixsocketperm 700, appendonly yes, appendfsync always, save "", the lines of the
 * NULL-terminated |extra| array appended, which may be NULL), starts `redis-server` (or
 * $CMTP_REDIS_SERVER) on it and waits up to 5 s until it answers PING. The server gets SIGKILL
 * if the test program dies. Returns 0, or -errno (the folder is removed again on failure). */
int redis_test_start(struct redis_test *rt, const char *const *extra);

/* redis_test_restart starts the server again on the same folder and config (after
 * redis_test_kill), so that it reloads its AOF. Returns 0 or -errno. */
int redis_test_restart(struct redis_test *rt);

/* redis_test_kill sends SIGKILL to the server and reaps it; the folder stays. No-op when not
 * running. */
void redis_test_kill(struct redis_test *rt);

/* redis_test_stop stops the server (SIGTERM, SIGKILL after 5 s), reaps it and removes its
 * folder. Safe to call twice. */
void redis_test_stop(struct redis_test *rt);

/* redis_test_alive reports whether the server process is still running. */
bool redis_test_alive(struct redis_test *rt);

/* redis_test_cmd sends one command, |argc| NUL-terminated arguments |argv|, on a fresh
 * connection and stores the raw RESP reply (e.g. "+OK\r\n", ":1\r\n"), NUL-terminated and
 * truncated to |cap| - 1 octets, in |reply|. Waits at most 5 s. Returns the full reply length,
 * or -errno. */
int redis_test_cmd(const struct redis_test *rt, char *reply, size_t cap, int argc,
                   const char *const *argv);

#endif
