/* tests/unit/helpers/redis_test.c — a private redis-server per test program (see redis_test.h).
 * libc only, so that every test can link it; not the daemon's embedded server (queue/). */
#include "tests/unit/helpers/redis_test.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t rt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void rt_sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void rm_tree(const char *dir)
{
    if (dir[0] != '\0')
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* resp_complete returns the length of the complete RESP reply at |p| (|n| octets), 0 when more
 * octets are needed, -1 when it is malformed. */
static long resp_complete(const char *p, size_t n, int depth)
{
    const char *nl;
    long len, total;

    if (n == 0)
        return 0;
    if (depth > 8)
        return -1;
    nl = memchr(p, '\n', n);
    if (nl == NULL)
        return 0;
    total = nl - p + 1;
    switch (p[0]) {
    case '+':
    case '-':
    case ':':
        return total;
    case '$':
        len = strtol(p + 1, NULL, 10);
        if (len < 0)
            return total;
        if ((size_t)total + (size_t)len + 2 > n)
            return 0;
        return total + len + 2;
    case '*':
        len = strtol(p + 1, NULL, 10);
        for (long i = 0; i < len; i++) {
            long e = resp_complete(p + total, n - (size_t)total, depth + 1);
            if (e <= 0)
                return e;
            total += e;
        }
        return total;
    default:
        return -1;
    }
}

int redis_test_cmd(const struct redis_test *rt, char *reply, size_t cap, int argc,
                   const char *const *argv)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char *buf = NULL;
    size_t len = 0, bcap = 0;
    int fd = -1, rc;
    uint64_t end = rt_now_ms() + 5000;

    if (strlen(rt->sock) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, rt->sock, strlen(rt->sock) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        rc = -errno;
        goto out;
    }
    /* Request: a RESP array of bulk strings. */
    FILE *mf = open_memstream(&buf, &bcap);
    if (mf == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    fprintf(mf, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++) {
        fprintf(mf, "$%zu\r\n", strlen(argv[i]));
        fwrite(argv[i], 1, strlen(argv[i]), mf);
        fputs("\r\n", mf);
    }
    fclose(mf);
    for (size_t off = 0; off < bcap;) {
        ssize_t w = send(fd, buf + off, bcap - off, MSG_NOSIGNAL);
        if (w < 0) {
            rc = -errno;
            goto out;
        }
        off += (size_t)w;
    }
    free(buf);
    buf = NULL;
    bcap = 0;
    for (;;) {
        long done = resp_complete(buf ? buf : "", len, 0);
        if (done < 0) {
            rc = -EPROTO;
            goto out;
        }
        if (done > 0) {
            size_t c = (size_t)done < cap ? (size_t)done : cap - 1;
            if (cap > 0) {
                memcpy(reply, buf, c);
                reply[c] = '\0';
            }
            rc = (int)done;
            goto out;
        }
        uint64_t now = rt_now_ms();
        if (now >= end) {
            rc = -ETIMEDOUT;
            goto out;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)(end - now)) <= 0)
            continue;
        if (len + 4096 > bcap) {
            char *nb = realloc(buf, bcap + 65536);
            if (nb == NULL) {
                rc = -ENOMEM;
                goto out;
            }
            buf = nb;
            bcap += 65536;
        }
        ssize_t r = recv(fd, buf + len, bcap - len, 0);
        if (r <= 0) {
            rc = r == 0 ? -ECONNRESET : -errno;
            goto out;
        }
        len += (size_t)r;
    }
out:
    free(buf);
    if (fd >= 0)
        close(fd);
    return rc;
}

static int spawn_server(struct redis_test *rt)
{
    const char *bin = getenv("CMTP_REDIS_SERVER");
    char pong[64];
    const char *ping[] = {"PING"};
    pid_t parent = getpid();

    if (bin == NULL || bin[0] == '\0')
        bin = "redis-server";
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        /* Child: die with the test program, quiet stdio, then exec (argv only, no shell). */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
            dup2(nul, 2);
        }
        execlp(bin, bin, rt->conf, (char *)NULL);
        _exit(127);
    }
    rt->pid = pid;
    uint64_t end = rt_now_ms() + 5000;
    while (rt_now_ms() < end) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            rt->pid = 0;
            return -ECHILD;
        }
        if (redis_test_cmd(rt, pong, sizeof(pong), 1, ping) > 0 && strcmp(pong, "+PONG\r\n") == 0)
            return 0;
        rt_sleep_ms(10);
    }
    redis_test_kill(rt);
    return -ETIMEDOUT;
}

int redis_test_start(struct redis_test *rt, const char *const *extra)
{
    const char *tmp = getenv("TMPDIR");
    FILE *f;
    int rc;

    memset(rt, 0, sizeof(*rt));
    if (tmp == NULL || tmp[0] == '\0')
        tmp = "/tmp";
    if ((size_t)snprintf(rt->dir, sizeof(rt->dir), "%s/cmtp-redis-XXXXXX", tmp) >= sizeof(rt->dir))
        return -ENAMETOOLONG;
    if (mkdtemp(rt->dir) == NULL) {
        rt->dir[0] = '\0';
        return -errno;
    }
    snprintf(rt->sock, sizeof(rt->sock), "%s/redis.sock", rt->dir);
    snprintf(rt->conf, sizeof(rt->conf), "%s/redis.conf", rt->dir);
    f = fopen(rt->conf, "w");
    if (f == NULL) {
        rc = -errno;
        goto err;
    }
    fprintf(f,
            "port 0\nunixsocket %s\nunixsocketperm 700\ndir %s\nappendonly yes\n"
            "appendfsync always\nsave \"\"\ndaemonize no\nlogfile %s/redis.log\n",
            rt->sock, rt->dir, rt->dir);
    for (size_t i = 0; extra && extra[i]; i++)
        fprintf(f, "%s\n", extra[i]);
    if (fclose(f) != 0) {
        rc = -EIO;
        goto err;
    }
    rc = spawn_server(rt);
    if (rc < 0)
        goto err;
    return 0;
err:
    rm_tree(rt->dir);
    rt->dir[0] = '\0';
    return rc;
}

int redis_test_restart(struct redis_test *rt)
{
    if (rt->pid > 0)
        return -EBUSY;
    return spawn_server(rt);
}

bool redis_test_alive(struct redis_test *rt)
{
    int st;
    if (rt->pid <= 0)
        return false;
    if (waitpid(rt->pid, &st, WNOHANG) == rt->pid) {
        rt->pid = 0;
        return false;
    }
    return true;
}

void redis_test_kill(struct redis_test *rt)
{
    if (rt->pid <= 0)
        return;
    kill(rt->pid, SIGKILL);
    waitpid(rt->pid, NULL, 0);
    rt->pid = 0;
}

void redis_test_stop(struct redis_test *rt)
{
    if (rt->pid > 0) {
        kill(rt->pid, SIGTERM);
        uint64_t end = rt_now_ms() + 5000;
        while (redis_test_alive(rt) && rt_now_ms() < end)
            rt_sleep_ms(5);
        redis_test_kill(rt);
    }
    rm_tree(rt->dir);
    rt->dir[0] = '\0';
}
