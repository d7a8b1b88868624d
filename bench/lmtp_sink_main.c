/* bench/lmtp_sink_main.c — cmtp-lmtp-sink: the LMTP store of the relay benchmark (bench/run.sh
 * measure_relay). One thread, epoll, non-blocking sockets; every recipient is answered 250 after
 * the final dot (bench/lmtp_sink.h), no body is kept; every 0.1 s "WALL_TIME COUNT" (seconds
 * since the epoch with 3 decimals, messages received so far) is appended to the count file.
 * Bounded: --conns connections (more are closed at once), LSINK_LINE_MAX per command line,
 * LSINK_OUT_MAX of replies per connection (input waits while they are not sent). Not a mail
 * store. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench/lmtp_sink.h"

#define SINK_CONNS_DEFAULT 1024u
#define SINK_CONNS_MAX 65536u
#define SINK_IN_MAX 65536u /* input read at once per connection */
#define SINK_TICK_MS 100   /* count file period */
#define SINK_EVENTS 256

/* sink_conn is one client connection. */
struct sink_conn {
    struct sink_conn *next, *prev; /* every open connection */
    int fd;
    bool want_out; /* EPOLLOUT armed */
    size_t in_len; /* octets of |in| not taken yet (the replies were full) */
    uint8_t in[SINK_IN_MAX];
    struct lsink s;
};

/* sink is the program's state. */
struct sink {
    int ep, lfd, sfd, out_fd;
    struct sink_conn *list;
    unsigned conns, conns_max;
    uint64_t messages; /* of every connection, closed ones included */
    uint64_t accepted, refused;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: cmtp-lmtp-sink -p PORT [-l ADDR] [-o FILE] [-c CONNS]\n"
               "\n"
               "An LMTP store for the relay benchmark: answers every recipient 250 after the\n"
               "final dot, keeps no body, counts messages.\n"
               "\n"
               "  -p, --port PORT    TCP port to listen on\n"
               "  -l, --listen ADDR  IPv4 address to listen on (default 127.0.0.1)\n"
               "  -o, --out FILE     append \"WALL_TIME COUNT\" every 0.1 s (COUNT: messages\n"
               "                     received so far)\n"
               "  -c, --conns N      connections at once (default 1024, at most 65536)\n"
               "  -h, --help         this text\n"
               "\n"
               "SIGTERM or SIGINT: the count is written once more and it exits 0.\n");
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sink_count(struct sink *k)
{
    char line[64];
    int n;
    if (k->out_fd < 0)
        return;
    n = snprintf(line, sizeof(line), "%.3f %llu\n", wall_s(), (unsigned long long)k->messages);
    if (n > 0 && write(k->out_fd, line, (size_t)n) < 0) {
        /* The count file is gone (disk full?): nothing to do but stop writing it. */
        close(k->out_fd);
        k->out_fd = -1;
    }
}

static void conn_close(struct sink *k, struct sink_conn *c)
{
    epoll_ctl(k->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        k->list = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    free(c);
    k->conns--;
}

/* conn_arm sets |c|'s interest: output while replies are pending. */
static int conn_arm(struct sink *k, struct sink_conn *c)
{
    bool want = c->s.out_len > 0;
    if (want == c->want_out)
        return 0;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0u), .data.ptr = c};
    c->want_out = want;
    return epoll_ctl(k->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* conn_flush sends what |c| has to send. Returns false when the connection is to be closed. */
static bool conn_flush(struct sink_conn *c)
{
    while (c->s.out_len > 0) {
        ssize_t n = send(c->fd, c->s.out, c->s.out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK;
        }
        lsink_consume(&c->s, (size_t)n);
    }
    return !c->s.quit;
}

/* conn_take feeds the input held by |c| to its protocol machine. */
static void conn_take(struct sink *k, struct sink_conn *c)
{
    uint64_t before = c->s.messages;
    size_t used = lsink_feed(&c->s, c->in, c->in_len);
    memmove(c->in, c->in + used, c->in_len - used);
    c->in_len -= used;
    k->messages += c->s.messages - before;
}

static void conn_event(struct sink *k, struct sink_conn *c, uint32_t events)
{
    if (events & (EPOLLERR | EPOLLHUP)) {
        conn_close(k, c);
        return;
    }
    for (;;) {
        if (c->in_len > 0)
            conn_take(k, c);
        if (!conn_flush(c)) {
            conn_close(k, c);
            return;
        }
        if (c->in_len > 0 || c->s.out_len > 0)
            break; /* the peer is slow to read: wait for EPOLLOUT */
        ssize_t n = recv(c->fd, c->in, sizeof(c->in), 0);
        if (n == 0) {
            conn_close(k, c);
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_close(k, c);
            return;
        }
        c->in_len = (size_t)n;
    }
    if (conn_arm(k, c) < 0)
        conn_close(k, c);
}

static void sink_accept(struct sink *k)
{
    for (;;) {
        int fd = accept4(k->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or an error the next event retries */
        if (k->conns >= k->conns_max) {
            k->refused++;
            close(fd);
            continue;
        }
        struct sink_conn *c = malloc(sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->fd = fd;
        c->want_out = true; /* armed below with the greeting pending */
        c->in_len = 0;
        lsink_init(&c->s);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        if (epoll_ctl(k->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
            continue;
        }
        c->prev = NULL;
        c->next = k->list;
        if (k->list != NULL)
            k->list->prev = c;
        k->list = c;
        k->conns++;
        k->accepted++;
    }
}

static int sink_listen(const char *addr, unsigned port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1, fd;
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "cmtp-lmtp-sink: bad address %s\n", addr);
        return -1;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1024) < 0) {
        fprintf(stderr, "cmtp-lmtp-sink: listen %s:%u: %s\n", addr, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"port", required_argument, NULL, 'p'}, {"listen", required_argument, NULL, 'l'},
        {"out", required_argument, NULL, 'o'},  {"conns", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
    };
    struct sink k = {.ep = -1, .lfd = -1, .sfd = -1, .out_fd = -1};
    const char *addr = "127.0.0.1", *out = NULL;
    unsigned long port = 0, conns = SINK_CONNS_DEFAULT;
    char *end;
    int o;
    while ((o = getopt_long(argc, argv, "p:l:o:c:h", lo, NULL)) != -1) {
        switch (o) {
        case 'p':
            port = strtoul(optarg, &end, 10);
            if (*end != '\0' || port == 0 || port > 65535) {
                fprintf(stderr, "cmtp-lmtp-sink: bad port %s\n", optarg);
                return 64;
            }
            break;
        case 'l':
            addr = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'c':
            conns = strtoul(optarg, &end, 10);
            if (*end != '\0' || conns == 0 || conns > SINK_CONNS_MAX) {
                fprintf(stderr, "cmtp-lmtp-sink: bad connection count %s\n", optarg);
                return 64;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 64;
        }
    }
    if (port == 0 || optind != argc) {
        usage(stderr);
        return 64;
    }
    k.conns_max = (unsigned)conns;
    if (out != NULL) {
        k.out_fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (k.out_fd < 0) {
            fprintf(stderr, "cmtp-lmtp-sink: %s: %s\n", out, strerror(errno));
            return 73;
        }
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    k.sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    k.lfd = sink_listen(addr, (unsigned)port);
    k.ep = epoll_create1(EPOLL_CLOEXEC);
    if (k.sfd < 0 || k.lfd < 0 || k.ep < 0) {
        if (k.lfd >= 0 && (k.sfd < 0 || k.ep < 0))
            fprintf(stderr, "cmtp-lmtp-sink: %s\n", strerror(errno));
        return 71;
    }
    /* The listener and the signals are told apart from connections by their data pointers. */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &k.lfd};
    epoll_ctl(k.ep, EPOLL_CTL_ADD, k.lfd, &ev);
    ev.data.ptr = &k.sfd;
    epoll_ctl(k.ep, EPOLL_CTL_ADD, k.sfd, &ev);
    sink_count(&k);
    uint64_t next = mono_ms() + SINK_TICK_MS;
    for (;;) {
        struct epoll_event evs[SINK_EVENTS];
        uint64_t now = mono_ms();
        int wait = now >= next ? 0 : (int)(next - now);
        int n = epoll_wait(k.ep, evs, SINK_EVENTS, wait);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "cmtp-lmtp-sink: epoll_wait: %s\n", strerror(errno));
            return 71;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &k.lfd) {
                sink_accept(&k);
            } else if (evs[i].data.ptr == &k.sfd) {
                sink_count(&k);
                fprintf(stderr, "cmtp-lmtp-sink: %llu messages, %llu connections (%llu refused)\n",
                        (unsigned long long)k.messages, (unsigned long long)k.accepted,
                        (unsigned long long)k.refused);
                while (k.list != NULL)
                    conn_close(&k, k.list);
                return 0;
            } else {
                conn_event(&k, evs[i].data.ptr, evs[i].events);
            }
        }
        if (mono_ms() >= next) {
            sink_count(&k);
            next += SINK_TICK_MS;
            if (next <= mono_ms())
                next = mono_ms() + SINK_TICK_MS;
        }
    }
}
