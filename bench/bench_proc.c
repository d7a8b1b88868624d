/* bench/bench_proc.c — CPU time and resident memory of a process, read from /proc/PID/stat and
 * /proc/PID/status. Not a sampler: the caller reads before and after the interval it measures. */
#include "bench/bench_proc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* read_small reads up to |cap| - 1 octets of file |path| into |buf|; returns the length or a
 * negative errno. */
static ssize_t read_small(const char *path, char *buf, size_t cap)
{
    size_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return errno == ENOENT ? -ESRCH : -errno;
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = -errno;
            close(fd);
            return e;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    return (ssize_t)n;
}

/* parse_u64 reads decimal digits at |*p| (before |end|) and advances |*p|. */
static int parse_u64(const char **p, const char *end, uint64_t *out)
{
    uint64_t v = 0;
    const char *s = *p;

    if (s >= end || *s < '0' || *s > '9')
        return -EINVAL;
    while (s < end && *s >= '0' && *s <= '9') {
        if (v > (UINT64_MAX - 9) / 10)
            return -EINVAL;
        v = v * 10 + (uint64_t)(*s - '0');
        s++;
    }
    *p = s;
    *out = v;
    return 0;
}

int bench_proc_parse_stat(const char *text, size_t len, struct bench_proc_stat *out)
{
    const char *end = text + len, *open_p, *close_p = NULL, *p;
    uint64_t v[4] = {0, 0, 0, 0}, ppid = 0;
    unsigned field;
    size_t n;

    memset(out, 0, sizeof(*out));
    open_p = memchr(text, '(', len);
    if (open_p == NULL)
        return -EINVAL;
    for (p = open_p; p < end; p++)
        if (*p == ')')
            close_p = p;
    if (close_p == NULL)
        return -EINVAL;
    n = (size_t)(close_p - open_p - 1);
    if (n >= sizeof(out->name))
        n = sizeof(out->name) - 1;
    memcpy(out->name, open_p + 1, n);
    out->name[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)out->name[i] < 0x20 || (unsigned char)out->name[i] == 0x7f)
            out->name[i] = '?';
    /* After ") " come field 3 (state), 4 (ppid) ... 14 utime, 15 stime, 16 cutime, 17 cstime. */
    p = close_p + 1;
    for (field = 3; field <= 17; field++) {
        while (p < end && *p == ' ')
            p++;
        if (p >= end)
            return -EINVAL;
        if (field == 4) {
            if (parse_u64(&p, end, &ppid) < 0)
                return -EINVAL;
        } else if (field >= 14) {
            /* cutime and cstime are signed in the kernel but never negative in practice */
            if (parse_u64(&p, end, &v[field - 14]) < 0)
                return -EINVAL;
        } else {
            while (p < end && *p != ' ')
                p++;
        }
    }
    out->ppid = (pid_t)ppid;
    out->ticks = v[0] + v[1];
    out->child_ticks = v[2] + v[3];
    return 0;
}

/* read_stat reads and parses /proc/|pid|/stat. */
static int read_stat(pid_t pid, struct bench_proc_stat *st)
{
    char path[64], buf[1024];
    ssize_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    n = read_small(path, buf, sizeof(buf));
    if (n < 0)
        return (int)n;
    return bench_proc_parse_stat(buf, (size_t)n, st) < 0 ? -EINVAL : 0;
}

/* TREE_MAX bounds the processes a tree scan looks at. */
#define TREE_MAX 65536u

/* proc_entry is one process seen by a tree scan. */
struct proc_entry {
    pid_t pid, ppid;
    uint64_t ticks;
    bool in;
};

/* tree_ticks adds the ticks (own and reaped children's) of every descendant of |root| that is
 * alive now to |*total|. */
static int tree_ticks(pid_t root, uint64_t *total)
{
    DIR *d = opendir("/proc");
    struct proc_entry *e = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    bool grew = true;

    if (d == NULL)
        return -errno;
    while ((de = readdir(d)) != NULL && n < TREE_MAX) {
        struct bench_proc_stat st;
        char *end;
        long v = strtol(de->d_name, &end, 10);
        if (*end != '\0' || v <= 0 || (pid_t)v == root)
            continue;
        if (read_stat((pid_t)v, &st) < 0)
            continue; /* gone meanwhile */
        if (n == cap) {
            size_t nc = cap == 0 ? 1024 : cap * 2;
            struct proc_entry *ne = realloc(e, nc * sizeof(*ne));
            if (ne == NULL) {
                closedir(d);
                free(e);
                return -ENOMEM;
            }
            e = ne;
            cap = nc;
        }
        e[n].pid = (pid_t)v;
        e[n].ppid = st.ppid;
        e[n].ticks = st.ticks + st.child_ticks;
        e[n].in = false;
        n++;
    }
    closedir(d);
    /* Mark descendants until nothing changes (fine for the few processes of a server). */
    while (grew) {
        grew = false;
        for (size_t i = 0; i < n; i++) {
            if (e[i].in)
                continue;
            if (e[i].ppid == root) {
                e[i].in = grew = true;
                continue;
            }
            for (size_t j = 0; j < n; j++)
                if (e[j].in && e[j].pid == e[i].ppid) {
                    e[i].in = grew = true;
                    break;
                }
        }
    }
    for (size_t i = 0; i < n; i++)
        if (e[i].in)
            *total += e[i].ticks;
    free(e);
    return 0;
}

int bench_proc_cpu_us(pid_t pid, bool tree, uint64_t *us, char *name, size_t name_size)
{
    struct bench_proc_stat st;
    uint64_t ticks;
    long hz = sysconf(_SC_CLK_TCK);
    int r = read_stat(pid, &st);

    if (r < 0)
        return r;
    ticks = st.ticks;
    if (tree) {
        ticks += st.child_ticks;
        r = tree_ticks(pid, &ticks);
        if (r < 0)
            return r;
    }
    if (name != NULL && name_size > 0)
        snprintf(name, name_size, "%s", st.name);
    if (hz <= 0)
        hz = 100;
    *us = ticks * (1000000u / (uint64_t)hz);
    return 0;
}

int bench_proc_parse_rss(const char *text, size_t len, uint64_t *kib)
{
    static const char key[] = "VmRSS:";
    const char *p = text, *end = text + len;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl != NULL ? nl : end;
        if ((size_t)(le - p) > sizeof(key) - 1 && memcmp(p, key, sizeof(key) - 1) == 0) {
            const char *q = p + sizeof(key) - 1;
            while (q < le && (*q == ' ' || *q == '\t'))
                q++;
            return parse_u64(&q, le, kib) < 0 ? -ENOENT : 0;
        }
        p = le + 1;
    }
    return -ENOENT;
}

int bench_proc_rss_kib(pid_t pid, uint64_t *kib)
{
    char path[64], buf[4096];
    ssize_t n;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    n = read_small(path, buf, sizeof(buf));
    if (n < 0)
        return (int)n;
    return bench_proc_parse_rss(buf, (size_t)n, kib);
}

uint64_t bench_proc_self_cpu_us(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
