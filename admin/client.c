/* admin/client.c — one request, one reply over the admin Unix socket, bounded in time and size.
 * Not the protocol's parser: the reply is returned as text for the caller to decode. */
#include "admin/client.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "admin/loop.h"

/* wait_fd waits for |events| on |fd| until |deadline| (monotonic ms). Returns 0 or -ETIMEDOUT. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = admin_loop_now_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)(deadline - now));
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

int admin_client_call(const char *path, const char *line, unsigned timeout_ms,
                      struct admin_buf *reply, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    uint64_t deadline = admin_loop_now_ms() + (timeout_ms ? timeout_ms : 60000u);
    int fd = -1, r;
    size_t off = 0, len = strlen(line);

    admin_buf_reset(reply);
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "socket path too long");
        return -ENAMETOOLONG;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        r = -errno;
        snprintf(err, errlen, "socket: %s", strerror(-r));
        return r;
    }
    /* A Unix socket connects at once or fails (EAGAIN: the backlog is full; retry briefly). */
    while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        r = -errno;
        if (r == -EINTR)
            continue;
        if (r == -EAGAIN && admin_loop_now_ms() < deadline) {
            poll(NULL, 0, 10);
            continue;
        }
        snprintf(err, errlen, "connect %s: %s", path, strerror(-r));
        goto out;
    }
    /* Send the line and its '\n'. A refused peer may close before reading: go on to read its
     * answer anyway. */
    char nl = '\n';
    while (off <= len) {
        const char *p = off < len ? line + off : &nl;
        size_t n = off < len ? len - off : 1;
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if ((r = wait_fd(fd, POLLOUT, deadline)) < 0) {
                    snprintf(err, errlen, "timed out sending the request");
                    goto out;
                }
                continue;
            }
            break;
        }
        off += (size_t)w;
    }
    for (;;) {
        char buf[4096];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            if ((r = wait_fd(fd, POLLIN, deadline)) < 0) {
                snprintf(err, errlen, "timed out waiting for the reply");
                goto out;
            }
            continue;
        }
        if (n <= 0) {
            r = -ECONNRESET;
            snprintf(err, errlen, "the daemon closed the connection without a reply");
            goto out;
        }
        char *e = memchr(buf, '\n', (size_t)n);
        size_t take = e != NULL ? (size_t)(e - buf) : (size_t)n;
        if (admin_buf_append(reply, buf, take) < 0) {
            r = -EMSGSIZE;
            snprintf(err, errlen, "reply too large");
            goto out;
        }
        if (e != NULL) {
            r = 0;
            goto out;
        }
    }
out:
    close(fd);
    return r;
}
