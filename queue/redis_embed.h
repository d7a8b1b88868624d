/* queue/redis_embed.h — the daemon's embedded default Redis: write a redis.conf (AOF, fsync
 * always, Unix socket only), spawn redis-server, wait until it answers, stop it. Startup and
 * shutdown only, never on the data path; not a supervisor that restarts a crashed server. */
#ifndef CMTP_QUEUE_REDIS_EMBED_H
#define CMTP_QUEUE_REDIS_EMBED_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* REDIS_EMBED_START_TIMEOUT_MS bounds the wait for the new server to answer PING. */
#define REDIS_EMBED_START_TIMEOUT_MS 10000
/* REDIS_EMBED_STOP_TIMEOUT_MS is how long redis_embed_stop waits after SIGTERM before SIGKILL. */
#define REDIS_EMBED_STOP_TIMEOUT_MS 10000

/* redis_embed_start starts a private redis-server whose data live in |dir| (created with mode
 * 0700 when missing, set to 0700 otherwise; its path may hold only [A-Za-z0-9/._+-]). It writes
 * |dir|/redis.conf — port 0 (no TCP), unixsocket |dir|/redis.sock with unixsocketperm 700,
 * appendonly yes, appendfsync always, save "", daemonize no, logfile |dir|/redis.log, pidfile
 * |dir|/redis.pid, maxmemory-policy noeviction — and spawns |redis_server_bin| (a path, or a name
 * looked up in PATH; NULL: "redis-server") with posix_spawn: argv only, no shell, stdio on
 * /dev/null, no inherited descriptor above 2, default signals, its own process group. It waits
 * up to REDIS_EMBED_START_TIMEOUT_MS for the socket to answer PING. When a server started by an
 * earlier run still serves |dir| (its pidfile names a live process and the socket answers), that
 * server is adopted instead. On success returns 0, writes the socket path (NUL-terminated) into
 * |socket_path_out| of |socket_path_len| octets and the server's pid into |*pid|. On failure
 * returns -errno, writes the reason (naming redis.log where useful) into |err| of |errlen| octets
 * and leaves no process behind. */
int redis_embed_start(const char *redis_server_bin, const char *dir, char *socket_path_out,
                      size_t socket_path_len, pid_t *pid, char *err, size_t errlen);

/* redis_embed_stop stops the server |pid|: SIGTERM (Redis then fsyncs its AOF and exits),
 * waiting up to REDIS_EMBED_STOP_TIMEOUT_MS, then SIGKILL. Reaps it when it is our child.
 * Returns 0 when it exited on SIGTERM (or was already gone), -ETIMEDOUT when it had to be killed,
 * -EINVAL for a bad pid, -errno when it could not be signalled. */
int redis_embed_stop(pid_t pid);

/* redis_embed_alive reports whether the process |pid| is still running (reaping it when it is
 * our child and has exited). */
bool redis_embed_alive(pid_t pid);

#endif
