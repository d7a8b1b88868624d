/* daemon/send_main.c — cmtp-send: send one message over CMTP/1 and print each recipient's
 * disposition and the result. Blocking sockets, one connection; not the delivery engine. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/mem.h>
#include <openssl/sha.h>

#include "core/addr.h"
#include "core/client.h"
#include "core/envelope.h"
#include "core/limits.h"
#include "tls/tls.h"

/* Exit codes, documented in --help. */
enum {
    SEND_EXIT_OK = 0,      /* accepted for every recipient */
    SEND_EXIT_USAGE = 64,  /* bad command line or unreadable message */
    SEND_EXIT_TEMP = 75,   /* temporary failure: retry later with the same --txn */
    SEND_EXIT_PERM = 65,   /* permanent failure: the message was refused */
    SEND_EXIT_PARTIAL = 66 /* accepted, but some recipients were refused or dropped */
};

#define SEND_RCPT_MAX 1000
#define SEND_IO_BUF (64 * 1024)

struct send_opts {
    const char *server; /* host[:port] or [v6]:port; NULL: the first recipient's domain */
    const char *verify_name;
    const char *ca_file;
    const char *cert_file;
    const char *key_file;
    const char *txid;
    const char *file;
    unsigned timeout_ms;
    unsigned retries;
    size_t chunk;
    uint64_t size_max;
    bool quiet;
};

/* send_conn is one connection: socket, TLS, client state machine and buffers. */
struct send_conn {
    int fd;
    struct tls_conn *tls;
    struct cmtp_client *cli;
    unsigned timeout_ms;
    uint8_t in[SEND_IO_BUF];
    uint8_t pt[SEND_IO_BUF];
    size_t pt_len, pt_off;
};

static void usage(FILE *f)
{
    fputs("usage: cmtp-send [OPTIONS] --from ADDR --to ADDR [--to ADDR ...] [FILE]\n"
          "\n"
          "Send one message over CMTP/1 (TLS 1.3, ALPN cmtp/1) and print each recipient's\n"
          "disposition (final, relay, refused) and the result. The body is FILE, or standard\n"
          "input when FILE is absent or '-'; it is sent byte for byte.\n"
          "\n"
          "Options:\n"
          "  -f, --from ADDR        originator address (use '<>' only with --report)\n"
          "  -t, --to ADDR          a recipient (repeatable, up to 1000)\n"
          "  -s, --server HOST[:PORT]  server to connect to (default: the first recipient's\n"
          "                         domain, port 4465)\n"
          "  -n, --verify-name NAME name the server certificate must match (default: the\n"
          "                         first recipient's domain)\n"
          "      --ca FILE          trusted CA certificates (default: the system store)\n"
          "      --cert FILE, --key FILE  client certificate and key (mutual TLS)\n"
          "      --txn ID           transaction id (default: 26 random base32 characters);\n"
          "                         resending with the same id never duplicates the message\n"
          "      --relay none|domain|any   relay permission (default none)\n"
          "      --hops N           relay hop limit (default 8, at most 32)\n"
          "      --fallback none|smtp-verified|smtp-tls|smtp   SMTP fallback (default none)\n"
          "      --report TXID      send a status report about transaction TXID\n"
          "      --chunk N          BODY chunk size in octets (default 262144)\n"
          "      --retries N        on a temporary failure, reconnect and resend with the\n"
          "                         same transaction id up to N times (default 0)\n"
          "      --timeout SECONDS  per-operation timeout (default 30)\n"
          "      --size-max N       largest body read from FILE or stdin (default 64 MiB)\n"
          "  -q, --quiet            print only failures\n"
          "  -h, --help             this text\n"
          "\n"
          "Output: one line per recipient, 'rcpt ADDR final', 'rcpt ADDR relay next=HOST'\n"
          "(with 'dropped' when the policy refused it), or 'rcpt ADDR refused CODE STATUS';\n"
          "then 'accepted id=QID txn=TXID rcpts=N [dup]' or 'failed CODE STATUS: TEXT'.\n"
          "\n"
          "Exit status: 0 accepted for every recipient; 66 accepted, but some recipients\n"
          "were refused or dropped; 65 permanent failure; 75 temporary failure (retry later\n"
          "with the same --txn); 64 usage error.\n",
          f);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* wait_fd waits until |fd| is ready for |events| or the timeout passes. */
static int wait_fd(int fd, short events, unsigned timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int r;
    do {
        r = poll(&p, 1, (int)timeout_ms);
    } while (r < 0 && errno == EINTR);
    if (r == 0)
        return -ETIMEDOUT;
    return r < 0 ? -errno : 0;
}

/* conn_flush sends every pending ciphertext octet. */
static int conn_flush(struct send_conn *c)
{
    const uint8_t *p;
    size_t n;
    while ((n = tls_conn_out_peek(c->tls, &p)) > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                int r = wait_fd(c->fd, POLLOUT, c->timeout_ms);
                if (r < 0)
                    return r;
                continue;
            }
            return -errno;
        }
        tls_conn_out_consume(c->tls, (size_t)w);
    }
    return 0;
}

/* conn_write encrypts and sends |len| plaintext octets. */
static int conn_write(struct send_conn *c, const uint8_t *p, size_t len)
{
    while (len > 0) {
        size_t w = 0;
        enum tls_result r = tls_conn_write(c->tls, p, len, &w);
        if (r == TLS_ERROR)
            return -EPROTO;
        p += w;
        len -= w;
        int e = conn_flush(c);
        if (e < 0)
            return e;
    }
    return 0;
}

/* conn_fill reads ciphertext until some plaintext is available in c->pt. */
static int conn_fill(struct send_conn *c)
{
    for (;;) {
        size_t n = 0;
        enum tls_result r = tls_conn_read(c->tls, c->pt, sizeof(c->pt), &n);
        if (r == TLS_OK) {
            c->pt_len = n;
            c->pt_off = 0;
            return 0;
        }
        if (r == TLS_CLOSED)
            return -ECONNRESET;
        if (r == TLS_ERROR) {
            conn_flush(c);
            return -EPROTO;
        }
        int e = conn_flush(c); /* post-handshake messages may want to go out */
        if (e < 0)
            return e;
        e = wait_fd(c->fd, POLLIN, c->timeout_ms);
        if (e < 0)
            return e;
        ssize_t got = recv(c->fd, c->in, sizeof(c->in), 0);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got <= 0)
            return got == 0 ? -ECONNRESET : -errno;
        if (tls_conn_feed(c->tls, c->in, (size_t)got) == TLS_ERROR) {
            conn_flush(c);
            return -EPROTO;
        }
    }
}

/* split_server parses "host", "host:port" or "[v6]:port". */
static int split_server(const char *s, char *host, size_t hcap, char *port, size_t pcap)
{
    const char *colon;
    snprintf(port, pcap, "%d", CMTP_PORT);
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || (size_t)(end - s - 1) >= hcap)
            return -EINVAL;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        if (end[1] == ':')
            snprintf(port, pcap, "%s", end + 2);
        else if (end[1] != '\0')
            return -EINVAL;
        return 0;
    }
    colon = strrchr(s, ':');
    if (colon != NULL && strchr(s, ':') == colon) {
        if ((size_t)(colon - s) >= hcap)
            return -EINVAL;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        snprintf(port, pcap, "%s", colon + 1);
        return 0;
    }
    if (strlen(s) >= hcap)
        return -EINVAL;
    snprintf(host, hcap, "%s", s);
    return 0;
}

static int tcp_connect(const char *server, unsigned timeout_ms, char *err, size_t errlen)
{
    char host[CMTP_DOMAIN_MAX + 1], port[16];
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL, *ai;
    int fd = -1, r;
    if (split_server(server, host, sizeof(host), port, sizeof(port)) < 0) {
        snprintf(err, errlen, "bad server '%s'", server);
        return -EINVAL;
    }
    r = getaddrinfo(host, port, &hints, &res);
    if (r != 0) {
        snprintf(err, errlen, "%s: %s", host, gai_strerror(r));
        return -EHOSTUNREACH;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, timeout_ms) == 0) {
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            if (soerr == 0)
                break;
            errno = soerr;
        }
        snprintf(err, errlen, "connect %s port %s: %s", host, port, strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd < 0 ? -ECONNREFUSED : fd;
}

static void random_txid(char *out, size_t len)
{
    static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";
    uint8_t rnd[32];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        /* getrandom on Linux >= 3.17 does not fail for 32 octets; fall back to the clock. */
        uint64_t t = (uint64_t)now_ms();
        memcpy(rnd, &t, sizeof(t));
    }
    for (size_t i = 0; i + 1 < len && i < sizeof(rnd); i++)
        out[i] = b32[rnd[i] & 31];
    out[len - 1] = '\0';
}

/* read_body reads the whole message into memory (bounded by |max|). */
static uint8_t *read_body(const char *path, uint64_t max, size_t *len)
{
    int fd = (path == NULL || strcmp(path, "-") == 0) ? 0 : open(path, O_RDONLY | O_CLOEXEC);
    size_t cap = 64 * 1024, n = 0;
    uint8_t *buf = NULL;
    if (fd < 0)
        return NULL;
    buf = malloc(cap);
    while (buf != NULL) {
        if (n == cap) {
            uint8_t *nb;
            if (cap >= max + 1)
                break;
            cap = cap * 2 > max + 1 ? (size_t)max + 1 : cap * 2;
            nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    if (fd != 0)
        close(fd);
    if (buf != NULL && n > max) {
        fprintf(stderr, "cmtp-send: message larger than --size-max (%llu octets)\n",
                (unsigned long long)max);
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

struct send_result {
    int exit_code;
    bool retry; /* a temporary failure where resending may help */
};

/* send_once runs one connection: handshake, one transaction, QUIT. */
static struct send_result send_once(const struct send_opts *o, struct tls_ctx *ctx,
                                    const struct cmtp_envelope *env, const struct cmtp_addr *rcpts,
                                    size_t n_rcpts, const uint8_t *body, size_t body_len)
{
    struct send_result res = {SEND_EXIT_TEMP, true};
    struct send_conn *c = calloc(1, sizeof(*c));
    char err[512] = "";
    bool partial = false, done = false;
    int e;
    if (c == NULL)
        return res;
    c->fd = -1;
    c->timeout_ms = o->timeout_ms;
    c->fd = tcp_connect(o->server, o->timeout_ms, err, sizeof(err));
    if (c->fd < 0) {
        fprintf(stderr, "cmtp-send: %s\n", err);
        goto out;
    }
    c->tls = tls_conn_new_client(ctx, o->verify_name);
    c->cli = cmtp_client_new(NULL);
    if (c->tls == NULL || c->cli == NULL) {
        fprintf(stderr, "cmtp-send: out of memory or bad server name '%s'\n", o->verify_name);
        res.retry = false;
        goto out;
    }
    /* Handshake. */
    if (tls_conn_feed(c->tls, NULL, 0) == TLS_ERROR)
        goto tls_fail;
    while (!tls_conn_handshake_done(c->tls)) {
        if ((e = conn_flush(c)) < 0 || (e = wait_fd(c->fd, POLLIN, o->timeout_ms)) < 0) {
            fprintf(stderr, "cmtp-send: handshake: %s\n", strerror(-e));
            goto out;
        }
        ssize_t got = recv(c->fd, c->in, sizeof(c->in), 0);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got <= 0) {
            fprintf(stderr, "cmtp-send: handshake: connection closed by the server\n");
            goto out;
        }
        enum tls_result r = tls_conn_feed(c->tls, c->in, (size_t)got);
        if (r == TLS_ERROR)
            goto tls_fail;
        if (r == TLS_OK) {
            /* Application data may follow the handshake in the same read. */
            size_t n = 0;
            r = tls_conn_read(c->tls, c->pt, sizeof(c->pt), &n);
            if (r == TLS_OK) {
                c->pt_len = n;
                c->pt_off = 0;
            } else if (r == TLS_ERROR) {
                goto tls_fail;
            }
        }
    }
    conn_flush(c);

    size_t off = 0;
    bool begun = false, quit_sent = false;
    while (!done) {
        const uint8_t *p;
        size_t n;
        struct cmtp_cli_event ev;
        size_t used = 0;
        while ((n = cmtp_client_output(c->cli, &p)) > 0) {
            if ((e = conn_write(c, p, n)) < 0) {
                fprintf(stderr, "cmtp-send: send: %s\n", strerror(-e));
                goto out;
            }
            cmtp_client_output_consume(c->cli, n);
        }
        enum cmtp_cli_ev k =
            cmtp_client_feed(c->cli, c->pt + c->pt_off, c->pt_len - c->pt_off, &used, &ev);
        c->pt_off += used;
        switch (k) {
        case CMTP_CLI_NEED_INPUT:
            if ((e = conn_fill(c)) < 0) {
                if (e == -EPROTO)
                    goto tls_fail;
                fprintf(stderr, "cmtp-send: %s\n",
                        e == -ETIMEDOUT ? "timed out waiting for the server"
                                        : "connection closed by the server");
                goto out;
            }
            break;
        case CMTP_CLI_GREETING:
            if (!begun) {
                begun = true;
                if (cmtp_client_begin(c->cli, env, rcpts, n_rcpts) < 0) {
                    fprintf(stderr, "cmtp-send: invalid envelope\n");
                    res = (struct send_result){SEND_EXIT_USAGE, false};
                    goto out;
                }
            }
            break;
        case CMTP_CLI_RCPT_RESULT: {
            char a[CMTP_ADDR_MAX + 1];
            cmtp_addr_format(&rcpts[ev.rcpt_index], a, sizeof(a));
            if (ev.disp == CMTP_CLI_RCPT_FINAL) {
                if (!o->quiet)
                    printf("rcpt %s final\n", a);
            } else if (ev.disp == CMTP_CLI_RCPT_RELAY) {
                if (ev.dropped)
                    partial = true;
                if (!o->quiet || ev.dropped)
                    printf("rcpt %s relay next=%s%s\n", a, ev.next_hop,
                           ev.dropped ? " dropped" : "");
            } else {
                partial = true;
                printf("rcpt %s refused %u %s%s%s\n", a, ev.code, ev.status, ev.text[0] ? ": " : "",
                       ev.text);
            }
            break;
        }
        case CMTP_CLI_BODY_READY:
            while (off < body_len) {
                size_t k2 = body_len - off;
                if (k2 > o->chunk)
                    k2 = o->chunk;
                const struct cmtp_greeting *g = cmtp_client_greeting(c->cli);
                if (g != NULL && g->chunk_max != 0 && k2 > g->chunk_max)
                    k2 = g->chunk_max;
                if (cmtp_client_body_header(c->cli, k2) < 0) {
                    fprintf(stderr, "cmtp-send: internal error: body header refused\n");
                    res.retry = false;
                    goto out;
                }
                while ((n = cmtp_client_output(c->cli, &p)) > 0) {
                    if ((e = conn_write(c, p, n)) < 0)
                        goto io_fail;
                    cmtp_client_output_consume(c->cli, n);
                }
                if ((e = conn_write(c, body + off, k2)) < 0)
                    goto io_fail;
                off += k2;
            }
            if (cmtp_client_end(c->cli) < 0) {
                fprintf(stderr, "cmtp-send: internal error: END refused\n");
                res.retry = false;
                goto out;
            }
            break;
        case CMTP_CLI_TXN_DONE:
            if (ev.outcome == CMTP_CLI_ACCEPTED) {
                printf("accepted id=%s txn=%s rcpts=%u%s\n", ev.qid, env->txid, ev.rcpts,
                       ev.dup ? " dup" : "");
                res = (struct send_result){partial ? SEND_EXIT_PARTIAL : SEND_EXIT_OK, false};
            } else {
                printf("failed %u %s%s%s\n", ev.code, ev.status, ev.text[0] ? ": " : "", ev.text);
                res = ev.outcome == CMTP_CLI_TEMPFAIL ? (struct send_result){SEND_EXIT_TEMP, true}
                                                      : (struct send_result){SEND_EXIT_PERM, false};
            }
            if (!quit_sent && cmtp_client_quit(c->cli) == 0)
                quit_sent = true;
            else
                done = true;
            break;
        case CMTP_CLI_CLOSED:
            if (!quit_sent && !o->quiet)
                fprintf(stderr, "cmtp-send: server closed: %u %s %s\n", ev.code, ev.status,
                        ev.text);
            done = true;
            break;
        case CMTP_CLI_PROTOCOL_ERROR:
            fprintf(stderr, "cmtp-send: protocol error from the server\n");
            done = true;
            break;
        }
        if (quit_sent && cmtp_client_state(c->cli) == CMTP_CLI_STATE_QUIT) {
            /* Send QUIT and read the bye; a lost bye changes nothing. */
            while ((n = cmtp_client_output(c->cli, &p)) > 0) {
                if (conn_write(c, p, n) < 0)
                    break;
                cmtp_client_output_consume(c->cli, n);
            }
        }
    }
    goto out;
io_fail:
    fprintf(stderr, "cmtp-send: send: %s\n", strerror(-e));
    goto out;
tls_fail:
    tls_conn_error_string(c->tls, err, sizeof(err));
    fprintf(stderr, "cmtp-send: TLS: %s\n", err);
    conn_flush(c);
out:
    if (c->fd >= 0)
        close(c->fd);
    cmtp_client_free(c->cli);
    tls_conn_free(c->tls);
    free(c);
    return res;
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v > max || s[0] == '-')
        return -EINVAL;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"from", required_argument, NULL, 'f'},
        {"to", required_argument, NULL, 't'},
        {"server", required_argument, NULL, 's'},
        {"verify-name", required_argument, NULL, 'n'},
        {"ca", required_argument, NULL, 1},
        {"cert", required_argument, NULL, 2},
        {"key", required_argument, NULL, 3},
        {"txn", required_argument, NULL, 4},
        {"relay", required_argument, NULL, 5},
        {"hops", required_argument, NULL, 6},
        {"fallback", required_argument, NULL, 7},
        {"report", required_argument, NULL, 8},
        {"chunk", required_argument, NULL, 9},
        {"retries", required_argument, NULL, 10},
        {"timeout", required_argument, NULL, 11},
        {"size-max", required_argument, NULL, 12},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct send_opts o = {
        .timeout_ms = 30000, .chunk = 256 * 1024, .size_max = CMTP_SIZE_MAX_DEFAULT};
    struct cmtp_envelope *env = calloc(1, sizeof(*env));
    struct cmtp_addr *rcpts = calloc(SEND_RCPT_MAX, sizeof(*rcpts));
    size_t n_rcpts = 0, body_len = 0;
    const char *from = NULL;
    char txid[27], server_buf[CMTP_DOMAIN_MAX + 16], err[512];
    uint8_t *body = NULL;
    struct tls_ctx *ctx = NULL;
    int opt, code = SEND_EXIT_USAGE;
    unsigned long long v;

    if (env == NULL || rcpts == NULL)
        return SEND_EXIT_TEMP;
    cmtp_policy_init(&env->policy);
    while ((opt = getopt_long(argc, argv, "f:t:s:n:qh", longopts, NULL)) != -1) {
        enum cmtp_addr_err ae;
        switch (opt) {
        case 'f':
            from = optarg;
            break;
        case 't':
            if (n_rcpts == SEND_RCPT_MAX) {
                fprintf(stderr, "cmtp-send: at most %d recipients\n", SEND_RCPT_MAX);
                goto out;
            }
            ae = cmtp_addr_parse(&rcpts[n_rcpts], optarg, strlen(optarg),
                                 optarg[0] == '<' ? 0 : CMTP_ADDR_BARE);
            if (ae != CMTP_ADDR_OK) {
                fprintf(stderr, "cmtp-send: bad recipient: %s\n", cmtp_addr_strerror(ae));
                goto out;
            }
            n_rcpts++;
            break;
        case 's':
            o.server = optarg;
            break;
        case 'n':
            o.verify_name = optarg;
            break;
        case 1:
            o.ca_file = optarg;
            break;
        case 2:
            o.cert_file = optarg;
            break;
        case 3:
            o.key_file = optarg;
            break;
        case 4:
            o.txid = optarg;
            break;
        case 5:
            if (cmtp_relay_parse(&env->policy.relay, optarg, strlen(optarg)) < 0) {
                fprintf(stderr, "cmtp-send: --relay takes none, domain or any\n");
                goto out;
            }
            break;
        case 6:
            if (parse_uint(optarg, CMTP_HOPS_MAX, &v) < 0) {
                fprintf(stderr, "cmtp-send: --hops takes 0..%d\n", CMTP_HOPS_MAX);
                goto out;
            }
            env->policy.hops = (unsigned)v;
            break;
        case 7:
            if (cmtp_fallback_parse(&env->policy.fallback, optarg, strlen(optarg)) < 0) {
                fprintf(stderr, "cmtp-send: bad --fallback\n");
                goto out;
            }
            break;
        case 8:
            if (!cmtp_txid_valid(optarg, strlen(optarg))) {
                fprintf(stderr, "cmtp-send: bad --report transaction id\n");
                goto out;
            }
            snprintf(env->report_txid, sizeof(env->report_txid), "%s", optarg);
            break;
        case 9:
            if (parse_uint(optarg, CMTP_CHUNK_MAX_HARD, &v) < 0 || v == 0) {
                fprintf(stderr, "cmtp-send: bad --chunk\n");
                goto out;
            }
            o.chunk = (size_t)v;
            break;
        case 10:
            if (parse_uint(optarg, 100, &v) < 0) {
                fprintf(stderr, "cmtp-send: --retries takes 0..100\n");
                goto out;
            }
            o.retries = (unsigned)v;
            break;
        case 11:
            if (parse_uint(optarg, 3600, &v) < 0 || v == 0) {
                fprintf(stderr, "cmtp-send: --timeout takes 1..3600 seconds\n");
                goto out;
            }
            o.timeout_ms = (unsigned)v * 1000;
            break;
        case 12:
            if (parse_uint(optarg, CMTP_SIZE_MAX_HARD, &v) < 0 || v == 0) {
                fprintf(stderr, "cmtp-send: bad --size-max\n");
                goto out;
            }
            o.size_max = v;
            break;
        case 'q':
            o.quiet = true;
            break;
        case 'h':
            usage(stdout);
            code = SEND_EXIT_OK;
            goto out;
        default:
            usage(stderr);
            goto out;
        }
    }
    if (optind < argc)
        o.file = argv[optind++];
    if (optind < argc || from == NULL || n_rcpts == 0) {
        usage(stderr);
        goto out;
    }
    {
        unsigned fl = CMTP_ADDR_ALLOW_NULL | (from[0] == '<' ? 0 : CMTP_ADDR_BARE);
        enum cmtp_addr_err ae = cmtp_addr_parse(&env->from, from, strlen(from), fl);
        if (ae != CMTP_ADDR_OK) {
            fprintf(stderr, "cmtp-send: bad originator: %s\n", cmtp_addr_strerror(ae));
            goto out;
        }
    }
    if (o.txid == NULL) {
        random_txid(txid, sizeof(txid));
        o.txid = txid;
    }
    if (!cmtp_txid_valid(o.txid, strlen(o.txid))) {
        fprintf(stderr, "cmtp-send: bad --txn (16-64 of A-Z a-z 0-9 . _ -)\n");
        goto out;
    }
    snprintf(env->txid, sizeof(env->txid), "%s", o.txid);
    if (o.server == NULL) {
        snprintf(server_buf, sizeof(server_buf), "%s", rcpts[0].domain);
        o.server = server_buf;
    }
    if (o.verify_name == NULL)
        o.verify_name = rcpts[0].domain;

    body = read_body(o.file, o.size_max, &body_len);
    if (body == NULL) {
        fprintf(stderr, "cmtp-send: cannot read the message from %s\n",
                o.file ? o.file : "standard input");
        goto out;
    }
    if (body_len == 0) {
        fprintf(stderr, "cmtp-send: the message is empty (CMTP bodies have at least 1 octet)\n");
        goto out;
    }
    env->size = body_len;
    SHA256(body, body_len, env->digest);

    struct tls_client_config tc = {
        .ca_file = o.ca_file, .cert_file = o.cert_file, .key_file = o.key_file};
    ctx = tls_client_ctx_new(&tc, err, sizeof(err));
    if (ctx == NULL) {
        fprintf(stderr, "cmtp-send: TLS setup: %s\n", err);
        goto out;
    }
    for (unsigned attempt = 0;; attempt++) {
        struct send_result r = send_once(&o, ctx, env, rcpts, n_rcpts, body, body_len);
        code = r.exit_code;
        if (!r.retry || attempt >= o.retries)
            break;
        fprintf(stderr, "cmtp-send: temporary failure, retrying txn=%s (%u/%u)\n", env->txid,
                attempt + 1, o.retries);
        usleep(200000u * (attempt + 1));
    }
out:
    tls_ctx_unref(ctx);
    if (body != NULL) {
        OPENSSL_cleanse(body, body_len);
        free(body);
    }
    free(rcpts);
    free(env);
    return code;
}
