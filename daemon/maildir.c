/* daemon/maildir.c — Maildir delivery: safe mailbox paths, unique names, tmp/ -> new/ with fsync
 * of the file and the directory, the CMTP-Trace field first. Not routing, not the queue. */
#include "daemon/maildir.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* NAME_RETRIES bounds the attempts to find a free file name. */
#define NAME_RETRIES 16

/* COUNTER_STRIDE separates the counters of the workers of one process. */
#define COUNTER_STRIDE 100000000ull

/* DIR_MODE and FILE_MODE are the modes of what this module creates. */
#define DIR_MODE 0700
#define FILE_MODE 0600

static int fsync_fd(struct maildir_ctx *c, int fd)
{
    c->fsyncs++;
    return fsync(fd) == 0 ? 0 : -errno;
}

/* open_dir opens directory |name| below |parent| without following a link, creating it (and
 * fsyncing |parent|) when missing and |create|. */
static int open_dir(struct maildir_ctx *c, int parent, const char *name, bool create)
{
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0 || errno != ENOENT || !create)
        return fd >= 0 ? fd : -errno;
    if (mkdirat(parent, name, DIR_MODE) != 0 && errno != EEXIST)
        return -errno;
    int r = fsync_fd(c, parent);
    if (r < 0)
        return r;
    fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}

static void host_part(char *out, size_t out_size, const char *host)
{
    size_t k = 0;
    for (size_t i = 0; host[i] != '\0' && k + 5 < out_size; i++) {
        char ch = host[i];
        if (ch == '/' || ch == ':' || ch == ',') {
            k += (size_t)snprintf(out + k, out_size - k, "\\%03o", (unsigned)(unsigned char)ch);
        } else if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                   (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_') {
            out[k++] = ch;
        } else {
            out[k++] = '_';
        }
    }
    if (k == 0)
        out[k++] = '_';
    out[k] = '\0';
}

int maildir_ctx_init(struct maildir_ctx *c, const char *root, const char *host, unsigned worker,
                     bool create)
{
    memset(c, 0, sizeof(*c));
    c->root_fd = -1;
    if (root == NULL || root[0] == '\0' || host == NULL)
        return -EINVAL;
    c->root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (c->root_fd < 0 && errno == ENOENT && create) {
        if (mkdir(root, DIR_MODE) != 0 && errno != EEXIST)
            return -errno;
        c->root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    }
    if (c->root_fd < 0)
        return -errno;
    c->create = create;
    c->pid = getpid();
    c->counter = (uint64_t)worker * COUNTER_STRIDE;
    host_part(c->host, sizeof(c->host), host);
    return 0;
}

void maildir_ctx_cleanup(struct maildir_ctx *c)
{
    if (c->root_fd > 0)
        close(c->root_fd);
    c->root_fd = -1;
}

int maildir_local_encode(char *out, size_t out_size, const char *local, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0, i = 0;
    if (len == 0 || local == NULL)
        return -EINVAL;
    while (i < len) {
        unsigned char b = (unsigned char)local[i];
        size_t n = 1;
        bool raw;
        if (b >= 0x80) {
            n = b >= 0xc2 && b <= 0xdf   ? 2
                : b >= 0xe0 && b <= 0xef ? 3
                : b >= 0xf0 && b <= 0xf4 ? 4
                                         : 1;
            raw = n > 1 && n <= len - i && cmtp_utf8_valid(local + i, n);
            if (!raw)
                n = 1;
        } else {
            raw = b > 0x20 && b < 0x7f && b != '/' && b != '%' && !(i == 0 && b == '.');
        }
        if (raw) {
            if (k + n >= out_size)
                return -ENAMETOOLONG;
            memcpy(out + k, local + i, n);
            k += n;
        } else {
            if (k + 3 >= out_size)
                return -ENAMETOOLONG;
            out[k++] = '%';
            out[k++] = hex[b >> 4];
            out[k++] = hex[b & 15];
        }
        i += n;
    }
    if (k > NAME_MAX)
        return -ENAMETOOLONG;
    out[k] = '\0';
    return (int)k;
}

static bool domain_ok(const struct cmtp_addr *a)
{
    if (a->domain_len == 0 || a->domain_len > CMTP_DOMAIN_MAX || a->domain[0] == '.')
        return false;
    for (size_t i = 0; i < a->domain_len; i++) {
        char ch = a->domain[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-'))
            return false;
    }
    return a->domain[a->domain_len] == '\0';
}

/* trace_ok checks that |t| is one CMTP-Trace field: the name, base64url segments, CRLF line
 * ends, continuation lines starting with SP. */
static bool trace_ok(const uint8_t *t, size_t n)
{
    static const char name[] = "CMTP-Trace: ";
    if (n < sizeof(name) + 2 || n > MAILDIR_TRACE_MAX || memcmp(t, name, sizeof(name) - 1) != 0)
        return false;
    size_t i = sizeof(name) - 1;
    bool line_start = false;
    size_t seg = 0;
    while (i < n) {
        uint8_t b = t[i];
        if (line_start) {
            if (b != ' ')
                return false;
            line_start = false;
            seg = 0;
            i++;
            continue;
        }
        if (b == '\r') {
            if (i + 1 >= n || t[i + 1] != '\n' || seg == 0)
                return false;
            i += 2;
            line_start = i < n;
            continue;
        }
        if (!((b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') ||
              b == '-' || b == '_'))
            return false;
        seg++;
        i++;
    }
    return t[n - 1] == '\n';
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void msg_close(struct maildir_msg *m)
{
    close_fd(&m->fd);
    close_fd(&m->tmp_fd);
    close_fd(&m->new_fd);
    close_fd(&m->box_fd);
}

/* base_name writes the next unique base name into |out|. */
static void base_name(struct maildir_ctx *c, char *out, size_t out_size)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    c->counter++;
    snprintf(out, out_size, "%lld.M%ldP%ldQ%llu.%s", (long long)ts.tv_sec, ts.tv_nsec / 1000,
             (long)c->pid, (unsigned long long)c->counter, c->host);
}

int maildir_open(struct maildir_msg *m, struct maildir_ctx *c, const struct cmtp_addr *rcpt,
                 const uint8_t *trace, size_t trace_len)
{
    char local[NAME_MAX + 1];
    int r;
    memset(m, 0, sizeof(*m));
    m->box_fd = m->tmp_fd = m->new_fd = m->fd = -1;
    m->ctx = c;
    if (c == NULL || c->root_fd < 0 || rcpt == NULL || rcpt->is_null || !domain_ok(rcpt) ||
        (trace == NULL && trace_len > 0) || (trace != NULL && !trace_ok(trace, trace_len)))
        return -EINVAL;
    r = maildir_local_encode(local, sizeof(local), rcpt->local, rcpt->local_len);
    if (r < 0)
        return r;
    int dom_fd = open_dir(c, c->root_fd, rcpt->domain, c->create);
    if (dom_fd < 0)
        return dom_fd;
    m->box_fd = open_dir(c, dom_fd, local, c->create);
    close(dom_fd);
    if (m->box_fd < 0) {
        r = m->box_fd;
        goto err;
    }
    int cur_fd = open_dir(c, m->box_fd, "cur", c->create);
    if (cur_fd < 0) {
        r = cur_fd;
        goto err;
    }
    close(cur_fd);
    m->tmp_fd = open_dir(c, m->box_fd, "tmp", c->create);
    if (m->tmp_fd < 0) {
        r = m->tmp_fd;
        goto err;
    }
    m->new_fd = open_dir(c, m->box_fd, "new", c->create);
    if (m->new_fd < 0) {
        r = m->new_fd;
        goto err;
    }
    for (int tries = 0; tries < NAME_RETRIES; tries++) {
        base_name(c, m->name, sizeof(m->name));
        m->fd = openat(m->tmp_fd, m->name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                       FILE_MODE);
        if (m->fd >= 0 || errno != EEXIST)
            break;
        c->clashes++;
    }
    if (m->fd < 0) {
        r = -errno;
        m->name[0] = '\0';
        goto err;
    }
    m->trace = trace;
    m->trace_len = trace != NULL ? trace_len : 0;
    m->trace_done = trace == NULL;
    return 0;
err:
    msg_close(m);
    return r;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* write_trace writes the CMTP-Trace field, with LF line ends when |lf|. */
static int write_trace(struct maildir_msg *m, bool lf)
{
    int r = 0;
    m->trace_done = true;
    if (m->trace_len == 0)
        return 0;
    if (!lf) {
        r = write_all(m->fd, m->trace, m->trace_len);
        if (r == 0)
            m->size += m->trace_len;
        return r;
    }
    /* one line at a time without its CR: at most a few KiB, no allocation */
    size_t i = 0;
    while (i < m->trace_len && r == 0) {
        const uint8_t *nl = memchr(m->trace + i, '\n', m->trace_len - i);
        size_t e = (size_t)(nl - m->trace); /* trace_ok guarantees CRLF endings */
        r = write_all(m->fd, m->trace + i, e - 1 - i);
        if (r == 0)
            r = write_all(m->fd, (const uint8_t *)"\n", 1);
        if (r == 0)
            m->size += e - i;
        i = e + 1;
    }
    return r;
}

int maildir_write(struct maildir_msg *m, const uint8_t *p, size_t n)
{
    int r;
    if (m->fd < 0)
        return -EBADF;
    if (n == 0)
        return 0;
    if (!m->trace_done) {
        const uint8_t *nl = memchr(p, '\n', n);
        r = write_trace(m, nl != NULL && (nl == p || nl[-1] != '\r'));
        if (r < 0)
            return r;
    }
    r = write_all(m->fd, p, n);
    if (r == 0)
        m->size += n;
    return r;
}

int maildir_commit(struct maildir_msg *m, char *name, size_t name_size)
{
    struct maildir_ctx *c = m->ctx;
    char final[sizeof(m->name) + 32];
    int r;
    if (m->fd < 0)
        return -EBADF;
    if (!m->trace_done) {
        r = write_trace(m, false);
        if (r < 0)
            goto err;
    }
    r = fsync_fd(c, m->fd);
    if (r < 0)
        goto err;
    close_fd(&m->fd);
    snprintf(final, sizeof(final), "%s,S=%llu", m->name, (unsigned long long)m->size);
    for (int tries = 0;; tries++) {
        if (linkat(m->tmp_fd, m->name, m->new_fd, final, 0) == 0)
            break;
        if (errno == EPERM || errno == EOPNOTSUPP || errno == EXDEV) {
            /* no hard links here: move it, still never over an existing name */
            if (renameat2(m->tmp_fd, m->name, m->new_fd, final, RENAME_NOREPLACE) == 0) {
                m->name[0] = '\0';
                break;
            }
        }
        if (errno != EEXIST || tries + 1 >= NAME_RETRIES) {
            r = -errno;
            goto err;
        }
        c->clashes++;
        char base[sizeof(m->name)];
        base_name(c, base, sizeof(base));
        snprintf(final, sizeof(final), "%s,S=%llu", base, (unsigned long long)m->size);
    }
    r = fsync_fd(c, m->new_fd);
    if (r < 0) {
        /* The name is in new/ but may not be durable: report a temporary failure. The message
         * may then be delivered twice, never lost. */
        goto err;
    }
    if (m->name[0] != '\0')
        unlinkat(m->tmp_fd, m->name, 0);
    m->name[0] = '\0';
    if (name != NULL && name_size > 0)
        snprintf(name, name_size, "%s", final);
    c->delivered++;
    msg_close(m);
    return 0;
err:
    maildir_abort(m);
    return r;
}

void maildir_abort(struct maildir_msg *m)
{
    if (m->tmp_fd >= 0 && m->name[0] != '\0')
        unlinkat(m->tmp_fd, m->name, 0);
    m->name[0] = '\0';
    msg_close(m);
}

bool maildir_err_permanent(int err)
{
    if (err < 0)
        err = -err;
    switch (err) {
    case EINVAL:
    case ENAMETOOLONG:
    case ENOENT:
    case ENOTDIR:
    case ELOOP:
    case EISDIR:
        return true;
    default:
        return false;
    }
}
