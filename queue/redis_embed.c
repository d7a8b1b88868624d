/* queue/redis_embed.c — spawn, probe and stop the daemon's private redis-server (see
 * redis_embed.h). Runs at startup and shutdown only; blocking waits here are bounded. */
#include "queue/redis_embed.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t embed_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void embed_sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* path_ok accepts only characters that need no quoting in redis.conf. */
static bool path_ok(const char *p)
{
    if (p == NULL || p[0] == '\0')
        return false;
    for (; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '/' || c == '.' || c == '_' || c == '-' || c == '+'))
            return false;
    }
    return true;
}

/* ping answers whether a server on the Unix socket |path| replies +PONG within ~500 ms. */
static bool ping(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char buf[16];
    size_t got = 0;
    bool ok = false;
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path))
        return false;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        goto out;
    if (send(fd, "PING\r\n", 6, MSG_NOSIGNAL) != 6)
        goto out;
    uint64_t end = embed_now_ms() + 500;
    while (got < 7) {
        uint64_t now = embed_now_ms();
        if (now >= end)
            goto out;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)(end - now)) <= 0)
            continue;
        ssize_t r = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        if (r <= 0)
            goto out;
        got += (size_t)r;
    }
    ok = memcmp(buf, "+PONG\r\n", 7) == 0;
out:
    close(fd);
    return ok;
}

bool redis_embed_alive(pid_t pid)
{
    int st;
    pid_t r;

    if (pid <= 0)
        return false;
    r = waitpid(pid, &st, WNOHANG);
    if (r == pid)
        return false;
    if (r == 0)
        return true;
    /* Not our child (adopted): probe with signal 0. */
    return kill(pid, 0) == 0 || errno == EPERM;
}

/* wait_gone waits up to |ms| for |pid| to exit; returns whether it did. */
static bool wait_gone(pid_t pid, unsigned ms)
{
    uint64_t end = embed_now_ms() + ms;
    for (;;) {
        if (!redis_embed_alive(pid))
            return true;
        if (embed_now_ms() >= end)
            return false;
        embed_sleep_ms(5);
    }
}

int redis_embed_stop(pid_t pid)
{
    if (pid <= 0)
        return -EINVAL;
    if (kill(pid, SIGTERM) < 0) {
        if (errno != ESRCH)
            return -errno;
        redis_embed_alive(pid); /* reap a zombie child */
        return 0;
    }
    if (wait_gone(pid, REDIS_EMBED_STOP_TIMEOUT_MS))
        return 0;
    kill(pid, SIGKILL);
    wait_gone(pid, 2000);
    return -ETIMEDOUT;
}

/* adopt_running returns the pid of a live server already serving |dir| (pidfile + socket), or
 * 0. */
static pid_t adopt_running(const char *pidfile, const char *sock)
{
    char buf[32];
    ssize_t n;
    long v;
    char *end;
    int fd = open(pidfile, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    errno = 0;
    v = strtol(buf, &end, 10);
    if (errno || v <= 1 || v > INT32_MAX || (*end != '\n' && *end != '\0'))
        return 0;
    if (kill((pid_t)v, 0) < 0 || !ping(sock))
        return 0;
    return (pid_t)v;
}

static int write_conf(const char *conf, const char *dir, const char *sock, char *err, size_t errlen)
{
    char tmp[PATH_MAX];
    FILE *f;
    int rc;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", conf) >= sizeof(tmp))
        return -ENAMETOOLONG;
    f = fopen(tmp, "we");
    if (f == NULL) {
        rc = -errno;
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        return rc;
    }
    fprintf(f,
            "# Written by cmtpd (queue/redis_embed.c) at every start; edits are lost.\n"
            "port 0\n"
            "unixsocket %s\n"
            "unixsocketperm 700\n"
            "dir %s\n"
            "appendonly yes\n"
            "appendfsync always\n"
            "save \"\"\n"
            "daemonize no\n"
            "supervised no\n"
            "logfile %s/redis.log\n"
            "pidfile %s/redis.pid\n"
            "maxmemory-policy noeviction\n",
            sock, dir, dir, dir);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        rc = -errno;
        fclose(f);
        unlink(tmp);
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(-rc));
        return rc;
    }
    if (fclose(f) != 0 || rename(tmp, conf) != 0) {
        rc = -errno;
        unlink(tmp);
        snprintf(err, errlen, "cannot write %s: %s", conf, strerror(-rc));
        return rc;
    }
    return 0;
}

static int spawn(const char *bin, const char *conf, pid_t *pid, char *err, size_t errlen)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, def;
    char *argv[3] = {(char *)bin, (char *)conf, NULL};
    int rc;

    if (posix_spawn_file_actions_init(&fa) != 0)
        return -ENOMEM;
    if (posix_spawnattr_init(&at) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        return -ENOMEM;
    }
    sigemptyset(&none);
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    sigaddset(&def, SIGINT);
    sigaddset(&def, SIGTERM);
    sigaddset(&def, SIGHUP);
    sigaddset(&def, SIGCHLD);
    sigaddset(&def, SIGUSR1);
    sigaddset(&def, SIGUSR2);
    rc = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (rc == 0)
        rc = posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (rc == 0)
        rc = posix_spawn_file_actions_adddup2(&fa, 1, 2);
    if (rc == 0)
        rc = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    if (rc == 0)
        rc = posix_spawnattr_setsigmask(&at, &none);
    if (rc == 0)
        rc = posix_spawnattr_setsigdefault(&at, &def);
    if (rc == 0)
        rc = posix_spawnattr_setpgroup(&at, 0);
    if (rc == 0)
        rc = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                               POSIX_SPAWN_SETPGROUP);
    if (rc == 0) {
        if (strchr(bin, '/') != NULL)
            rc = posix_spawn(pid, bin, &fa, &at, argv, environ);
        else
            rc = posix_spawnp(pid, bin, &fa, &at, argv, environ);
    }
    posix_spawnattr_destroy(&at);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start %s: %s", bin, strerror(rc));
        return -rc;
    }
    return 0;
}

int redis_embed_start(const char *redis_server_bin, const char *dir, char *socket_path_out,
                      size_t socket_path_len, pid_t *pid, char *err, size_t errlen)
{
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char conf[PATH_MAX], pidfile[PATH_MAX], absdir[PATH_MAX];
    const char *bin = redis_server_bin ? redis_server_bin : "redis-server";
    char dummy[1];
    pid_t child = 0, adopted;
    int rc;

    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    if (socket_path_out == NULL || pid == NULL || bin[0] == '\0') {
        snprintf(err, errlen, "bad arguments");
        return -EINVAL;
    }
    *pid = 0;
    if (!path_ok(dir)) {
        snprintf(err, errlen, "redis dir must be a path of [A-Za-z0-9/._+-]");
        return -EINVAL;
    }
    if ((size_t)snprintf(sock, sizeof(sock), "%s/redis.sock", dir) >= sizeof(sock)) {
        snprintf(err, errlen, "redis dir path too long for a Unix socket");
        return -ENAMETOOLONG;
    }
    if (strlen(sock) >= socket_path_len) {
        snprintf(err, errlen, "socket path buffer too small");
        return -ENOSPC;
    }
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        rc = -errno;
        snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        return rc;
    }
    if (chmod(dir, 0700) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot chmod %s: %s", dir, strerror(errno));
        return rc;
    }
    /* From here on the absolute path: redis.conf must not depend on redis's working folder. */
    if (realpath(dir, absdir) == NULL) {
        rc = -errno;
        snprintf(err, errlen, "cannot resolve %s: %s", dir, strerror(errno));
        return rc;
    }
    dir = absdir;
    if (!path_ok(dir) ||
        (size_t)snprintf(sock, sizeof(sock), "%s/redis.sock", dir) >= sizeof(sock) ||
        strlen(sock) >= socket_path_len) {
        snprintf(err, errlen, "resolved redis dir %s unusable (characters or length)", dir);
        return -EINVAL;
    }
    if ((size_t)snprintf(conf, sizeof(conf), "%s/redis.conf", dir) >= sizeof(conf) ||
        (size_t)snprintf(pidfile, sizeof(pidfile), "%s/redis.pid", dir) >= sizeof(pidfile)) {
        snprintf(err, errlen, "redis dir path too long");
        return -ENAMETOOLONG;
    }
    adopted = adopt_running(pidfile, sock);
    if (adopted > 0) {
        memcpy(socket_path_out, sock, strlen(sock) + 1);
        *pid = adopted;
        return 0;
    }
    if (ping(sock)) {
        snprintf(err, errlen, "a server already answers on %s but %s names no live process", sock,
                 pidfile);
        return -EBUSY;
    }
    rc = write_conf(conf, dir, sock, err, errlen);
    if (rc < 0)
        return rc;
    rc = spawn(bin, conf, &child, err, errlen);
    if (rc < 0)
        return rc;
    uint64_t end = embed_now_ms() + REDIS_EMBED_START_TIMEOUT_MS;
    for (;;) {
        int st;
        if (waitpid(child, &st, WNOHANG) == child) {
            snprintf(err, errlen, "%s exited during startup (status %d): see %s/redis.log", bin,
                     WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), dir);
            return -ECHILD;
        }
        if (ping(sock))
            break;
        if (embed_now_ms() >= end) {
            kill(child, SIGKILL);
            waitpid(child, NULL, 0);
            snprintf(err, errlen, "%s did not answer on %s within %d ms: see %s/redis.log", bin,
                     sock, REDIS_EMBED_START_TIMEOUT_MS, dir);
            return -ETIMEDOUT;
        }
        embed_sleep_ms(10);
    }
    memcpy(socket_path_out, sock, strlen(sock) + 1);
    *pid = child;
    return 0;
}
