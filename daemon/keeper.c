/* daemon/keeper.c — the embedded Redis keeper process (see keeper.h). Runs before the daemon
 * forbids execve; the only code of cmtpd that may start a program. Not on the data path. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon/keeper.h"
#include "queue/redis_embed.h"

/* keeper_main is the child: it never returns. |fd| reports the first start. */
static void keeper_main(const char *bin, const char *dir, int fd, pid_t parent)
{
    char sock[512], err[512], line[600];
    pid_t pid = 0;
    unsigned backoff_ms = 200;
    sigset_t set;
    struct timespec tick = {0, 200 * 1000 * 1000};

    prctl(PR_SET_NAME, "cmtpd-keeper", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    if (getppid() != parent)
        _exit(0); /* cmtpd died before the death signal was armed */
    /* Keep only stdio and the report pipe: never hold cmtpd's listeners or Redis sockets. */
    if (dup2(fd, 3) < 0)
        _exit(1);
    close_range(4, ~0U, 0);
    fd = 3;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);

    if (redis_embed_start(bin, dir, sock, sizeof(sock), &pid, err, sizeof(err)) < 0) {
        int n = snprintf(line, sizeof(line), "err %s\n", err);
        (void)!write(fd, line, (size_t)n);
        _exit(1);
    }
    int n = snprintf(line, sizeof(line), "ok %s\n", sock);
    (void)!write(fd, line, (size_t)n);
    close(fd);

    for (;;) {
        int sig = sigtimedwait(&set, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT) {
            redis_embed_stop(pid);
            _exit(0);
        }
        if (redis_embed_alive(pid))
            continue;
        dprintf(2, "level=error event=redis-died pid=%ld restart_in_ms=%u\n", (long)pid,
                backoff_ms);
        struct timespec pause = {backoff_ms / 1000, (long)(backoff_ms % 1000) * 1000000L};
        if (sigtimedwait(&set, NULL, &pause) > 0)
            _exit(0);
        if (redis_embed_start(bin, dir, sock, sizeof(sock), &pid, err, sizeof(err)) < 0) {
            dprintf(2, "level=error event=redis-restart-failed reason=\"%s\"\n", err);
            pid = 0;
            backoff_ms =
                backoff_ms * 2 > KEEPER_BACKOFF_MAX_MS ? KEEPER_BACKOFF_MAX_MS : backoff_ms * 2;
            continue;
        }
        dprintf(2, "level=warn event=redis-restarted pid=%ld\n", (long)pid);
        backoff_ms = 200;
    }
}

int keeper_start(const char *bin, const char *dir, char *sock, size_t socklen, pid_t *keeper,
                 char *err, size_t errlen)
{
    int p[2];
    pid_t parent = getpid(), pid;
    char buf[600];
    size_t got = 0;

    if (pipe2(p, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -errno;
    }
    pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        close(p[0]);
        close(p[1]);
        return -EAGAIN;
    }
    if (pid == 0) {
        close(p[0]);
        keeper_main(bin, dir, p[1], parent);
    }
    close(p[1]);
    while (got < sizeof(buf) - 1) {
        ssize_t r = read(p[0], buf + got, sizeof(buf) - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
        if (memchr(buf, '\n', got) != NULL)
            break;
    }
    close(p[0]);
    buf[got] = '\0';
    char *nl = strchr(buf, '\n');
    if (nl != NULL)
        *nl = '\0';
    if (strncmp(buf, "ok ", 3) == 0 && strlen(buf + 3) < socklen) {
        snprintf(sock, socklen, "%s", buf + 3);
        *keeper = pid;
        return 0;
    }
    snprintf(err, errlen, "%s", strncmp(buf, "err ", 4) == 0 ? buf + 4 : "keeper failed to start");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -EIO;
}

int keeper_stop(pid_t pid)
{
    int status;
    if (pid <= 0)
        return 0;
    kill(pid, SIGTERM);
    for (int i = 0; i < (REDIS_EMBED_STOP_TIMEOUT_MS + 2000) / 50; i++) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD))
            return 0;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -ETIMEDOUT;
}
