/* daemon/keeper.h — the embedded Redis keeper: a small child process that runs the private
 * redis-server, restarts it when it dies and stops it with cmtpd. Not the queue client. */
#ifndef CMTP_DAEMON_KEEPER_H
#define CMTP_DAEMON_KEEPER_H

#include <stddef.h>
#include <sys/types.h>

/* KEEPER_BACKOFF_MAX_MS bounds the pause between two restarts of a redis-server that keeps
 * dying. */
#define KEEPER_BACKOFF_MAX_MS 5000

/* keeper_start forks the keeper. It starts redis-server |bin| on |dir| with redis_embed_start
 * (AOF fsync=always, Unix socket only), reports the first start back through a pipe, then
 * restarts the server with a growing back-off (200 ms .. KEEPER_BACKOFF_MAX_MS) whenever it
 * exits, logging each restart on standard error. On SIGTERM it stops the server
 * (redis_embed_stop: SIGTERM, then SIGKILL after a timeout) and exits; it also gets SIGTERM when
 * cmtpd dies (PR_SET_PDEATHSIG). The keeper closes every inherited descriptor (listeners
 * included) but standard input, output and error. Call it with SIGTERM blocked.
 *
 * Returns 0 once the server answers, with its socket path in |sock| (|socklen| octets) and the
 * keeper's pid in |*keeper|; or -errno with the reason in |err| and no process left behind. */
int keeper_start(const char *bin, const char *dir, char *sock, size_t socklen, pid_t *keeper,
                 char *err, size_t errlen);

/* keeper_stop asks the keeper |pid| to stop its server and exit, and waits for it (bounded;
 * SIGKILL past the bound). Returns 0, or -ETIMEDOUT when it had to be killed. */
int keeper_stop(pid_t pid);

#endif
