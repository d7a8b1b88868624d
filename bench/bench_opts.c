/* bench/bench_opts.c — cmtp-bench's options: parsing, checks, defaults, server resolution and
 * the --help text. Not the run: nothing here touches a socket but getaddrinfo. */
#include "bench/bench_opts.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"

/* Defaults, documented in the --help text. */
#define DEFAULT_CONNS 16u
#define DEFAULT_OPEN_CONNS 64u
#define DEFAULT_DURATION_S 10.0
#define DEFAULT_TIMEOUT_S 30u
#define DEFAULT_CONNECT_MAX 64u
#define DEFAULT_IDLE_HOLD_S 3.0
#define SMTP_PORT 25

void bench_opts_usage(FILE *f)
{
    fputs("NAME\n"
          "    cmtp-bench - load generator for CMTP/1 and SMTP+STARTTLS servers\n"
          "\n"
          "SYNOPSIS\n"
          "    cmtp-bench [--proto cmtp|smtp] [--server HOST:PORT] [--ca FILE] [OPTIONS]\n"
          "    cmtp-bench --handshakes [--resume] [OPTIONS]\n"
          "    cmtp-bench --idle N [--idle-hold S] --server-pid PID [OPTIONS]\n"
          "\n"
          "DESCRIPTION\n"
          "    Drives a mail server with durable-delivery transactions over TLS 1.3 and measures\n"
          "    throughput, latency to the durable acknowledgement, handshake rate, and the\n"
          "    server's CPU time and memory per operation. One io_uring event loop per thread\n"
          "    (--threads); every session is non-blocking.\n"
          "\n"
          "    CMTP: TLS 1.3 with ALPN cmtp/1 from the first byte, greeting, then per message\n"
          "    MAIL/RCPT (pipelined), BODY chunks and END; the message counts when the server\n"
          "    answers `250 accepted'. SMTP: banner, EHLO, STARTTLS, TLS 1.3 (no ALPN), EHLO,\n"
          "    then MAIL FROM, RCPT TO, DATA (pipelined when PIPELINING is announced), the\n"
          "    dot-stuffed body and `.'; the message counts on 250.\n"
          "\n"
          "MODES\n"
          "    closed loop (default)\n"
          "        --conns sessions each send their next message as soon as the previous one\n"
          "        is acknowledged: --msgs messages each, or for --duration seconds.\n"
          "    open loop (--rate R)\n"
          "        messages are scheduled at R per second in all, whatever the server's speed,\n"
          "        and handed to the first free one of --conns sessions; a message waiting for\n"
          "        a free session keeps its scheduled time, so the `sched' latency (scheduled\n"
          "        time to acknowledgement) does not hide queueing (no coordinated omission).\n"
          "        --msgs is then the total number of messages.\n"
          "    --handshakes\n"
          "        --conns concurrent loops of: connect, full TLS 1.3 handshake, read the\n"
          "        greeting (SMTP: up to the second EHLO reply), close. Reports handshakes/s.\n"
          "    --idle N\n"
          "        open N sessions (greeting received), hold them idle --idle-hold seconds, and\n"
          "        report the growth of each --server-pid's resident memory per connection.\n"
          "\n"
          "OPTIONS\n"
          "    --proto cmtp|smtp   protocol (default cmtp)\n"
          "    -s, --server HOST[:PORT]\n"
          "                        server address, numeric or a name; [v6]:PORT for IPv6\n"
          "                        (default 127.0.0.1:4465, or 127.0.0.1:25 with smtp)\n"
          "    --ca FILE           CA certificates (PEM) that verify the server certificate\n"
          "                        (default: the system store)\n"
          "    -n, --verify-name NAME\n"
          "                        name the server certificate must hold (and SNI); default\n"
          "                        localhost\n"
          "    -t, --threads N     worker threads, each with its own io_uring (default 1)\n"
          "    -c, --conns N       concurrent sessions, split between the threads (default 16;\n"
          "                        64 in open loop)\n"
          "    -m, --msgs M        closed loop: messages per session; open loop: messages in\n"
          "                        all; handshake mode: handshakes per session\n"
          "    -d, --duration S    measure for S seconds (decimals allowed) after the warm-up;\n"
          "                        the default when --msgs is not given: 10\n"
          "    -w, --warmup S      run S seconds before measuring; nothing done then is counted\n"
          "                        (default 0)\n"
          "    -r, --rate R        open loop at R messages per second in all\n"
          "    --per-conn [0|1]    1 (or no value): a new TCP connection and full handshake per\n"
          "                        message, ended with QUIT; 0: persistent sessions (default)\n"
          "    --handshakes        handshake-only mode (see MODES)\n"
          "    --resume            offer the session ticket of the session's previous\n"
          "                        connection (TLS 1.3 resumption; CMTP only); the report counts\n"
          "                        the resumed handshakes\n"
          "    --idle N            idle-memory mode with N sessions (see MODES)\n"
          "    --idle-hold S       seconds the idle sessions are held (default 3)\n"
          "    --size SPEC         body size: 1k, 64k, 1m, mix, or octets with an optional k or\n"
          "                        m suffix (default 1k). mix draws 256 distinct bodies: 70 %\n"
          "                        2-8 KiB, 25 % 16-128 KiB, 5 % 256 KiB-2 MiB (seeded)\n"
          "    --chunk N           CMTP BODY chunk size in octets (default: the server's\n"
          "                        chunk-max)\n"
          "    --from ADDR         envelope originator (default bench@bench.example)\n"
          "    --to ADDR           envelope recipient (default sink@bench.example)\n"
          "    --ehlo NAME         SMTP EHLO name (default bench.example)\n"
          "    --timeout S         limit on each step: connect, handshake, a reply (default 30)\n"
          "    --connect-max N     connections in their handshake at once, per thread\n"
          "                        (default 64); the rest wait their turn\n"
          "    -p, --server-pid PID\n"
          "                        a server process whose CPU time (utime+stime of all its\n"
          "                        threads, /proc/PID/stat) over the measured interval is\n"
          "                        reported per message or handshake; repeatable (up to 8),\n"
          "                        e.g. cmtpd and its redis-server. --idle reads its VmRSS\n"
          "    --server-tree PID   like --server-pid, but the CPU time of all the process's\n"
          "                        descendants is added (alive ones, and reaped ones through\n"
          "                        cutime/cstime): for multi-process servers such as Postfix\n"
          "                        (give the master's pid)\n"
          "    --seed N            seed of the body mix and body choice (default 1)\n"
          "    --hist FILE         write the latency histogram (gnuplot-ready columns: value in\n"
          "                        microseconds, count, cumulative fraction) to FILE\n"
          "    --json              print the result as one JSON object instead of the table\n"
          "    -q, --quiet         no progress line on standard error\n"
          "    --allow-errors      exit 0 even when operations failed\n"
          "    -h, --help          this text\n"
          "\n"
          "OUTPUT\n"
          "    While running, once a second on standard error (unless --quiet): elapsed time,\n"
          "    operations per second in the last second, totals, errors, p99 so far.\n"
          "    At the end, on standard output, a table (or with --json one object, see\n"
          "    bench/README.md): operations and rate, body throughput, latency percentiles\n"
          "    (p50, p90, p99, p99.9, max) of\n"
          "      ack        END sent (SMTP: the final `.') to the durable acknowledgement\n"
          "      sched      open loop: scheduled arrival to the acknowledgement\n"
          "      handshake  connect started to greeting received\n"
          "    errors by class (connect, tls, temp = 4xx, perm = 5xx, protocol, timeout, closed =\n"
          "    connection lost), CPU microseconds per operation of each --server-pid and of\n"
          "    cmtp-bench itself, and for --idle the server's KiB per idle connection.\n"
          "    Errors are counted over the whole run, warm-up included.\n"
          "\n"
          "EXIT STATUS\n"
          "    0 every operation succeeded (or --allow-errors); 1 some operation failed;\n"
          "    2 usage error; 3 setup failure (TLS context, engine, bodies).\n"
          "\n"
          "EXAMPLES\n"
          "    cmtp-bench --ca ca.crt -s 127.0.0.1:4465 -c 32 -d 10 --size 1k -p $(pidof cmtpd)\n"
          "    cmtp-bench --ca ca.crt --rate 2000 -d 10 --size mix --json\n"
          "    cmtp-bench --ca ca.crt --handshakes -c 8 -d 5\n"
          "    cmtp-bench --proto smtp -s 127.0.0.1:2525 --ca ca.crt -c 16 -m 100\n"
          "    cmtp-bench --ca ca.crt --idle 10000 -p $(pidof cmtpd)\n",
          f);
}

const char *bench_proto_name(enum bench_proto p)
{
    return p == BENCH_PROTO_SMTP ? "smtp" : "cmtp";
}

const char *bench_mode_name(enum bench_mode m)
{
    switch (m) {
    case BENCH_MODE_OPEN:
        return "open";
    case BENCH_MODE_HANDSHAKES:
        return "handshakes";
    case BENCH_MODE_IDLE:
        return "idle";
    case BENCH_MODE_CLOSED:
        break;
    }
    return "closed";
}

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt,
                                                      ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (s[0] < '0' || s[0] > '9')
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_secs(const char *s, double max, double *out)
{
    char *end;
    double v;

    if ((s[0] < '0' || s[0] > '9') && s[0] != '.')
        return -EINVAL;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v) || v < 0 || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

/* name_ok accepts a host name or an address text: printable ASCII, no spaces, bounded. */
static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > BENCH_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

enum {
    OPT_PROTO = 256,
    OPT_CA,
    OPT_PER_CONN,
    OPT_HANDSHAKES,
    OPT_RESUME,
    OPT_IDLE,
    OPT_IDLE_HOLD,
    OPT_SIZE,
    OPT_CHUNK,
    OPT_FROM,
    OPT_TO,
    OPT_EHLO,
    OPT_TIMEOUT,
    OPT_CONNECT_MAX,
    OPT_SEED,
    OPT_HIST,
    OPT_JSON,
    OPT_ALLOW_ERRORS,
    OPT_SERVER_TREE,
};

int bench_opts_parse(struct bench_opts *o, int argc, char **argv, char *err, size_t errlen)
{
    static const struct option longopts[] = {
        {"proto", required_argument, NULL, OPT_PROTO},
        {"server", required_argument, NULL, 's'},
        {"ca", required_argument, NULL, OPT_CA},
        {"verify-name", required_argument, NULL, 'n'},
        {"threads", required_argument, NULL, 't'},
        {"conns", required_argument, NULL, 'c'},
        {"msgs", required_argument, NULL, 'm'},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},
        {"rate", required_argument, NULL, 'r'},
        {"per-conn", optional_argument, NULL, OPT_PER_CONN},
        {"handshakes", no_argument, NULL, OPT_HANDSHAKES},
        {"resume", no_argument, NULL, OPT_RESUME},
        {"idle", required_argument, NULL, OPT_IDLE},
        {"idle-hold", required_argument, NULL, OPT_IDLE_HOLD},
        {"size", required_argument, NULL, OPT_SIZE},
        {"chunk", required_argument, NULL, OPT_CHUNK},
        {"from", required_argument, NULL, OPT_FROM},
        {"to", required_argument, NULL, OPT_TO},
        {"ehlo", required_argument, NULL, OPT_EHLO},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"connect-max", required_argument, NULL, OPT_CONNECT_MAX},
        {"server-pid", required_argument, NULL, 'p'},
        {"server-tree", required_argument, NULL, OPT_SERVER_TREE},
        {"seed", required_argument, NULL, OPT_SEED},
        {"hist", required_argument, NULL, OPT_HIST},
        {"json", no_argument, NULL, OPT_JSON},
        {"quiet", no_argument, NULL, 'q'},
        {"allow-errors", no_argument, NULL, OPT_ALLOW_ERRORS},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool conns_set = false, handshakes = false;
    uint64_t idle = 0, v;
    int opt;

    memset(o, 0, sizeof(*o));
    o->verify_name = "localhost";
    o->from = "bench@bench.example";
    o->to = "sink@bench.example";
    o->ehlo = "bench.example";
    o->threads = 1;
    o->conns = DEFAULT_CONNS;
    o->idle_hold_s = DEFAULT_IDLE_HOLD_S;
    o->size.size = 1024;
    o->timeout_ms = DEFAULT_TIMEOUT_S * 1000u;
    o->connect_max = DEFAULT_CONNECT_MAX;
    o->seed = 1;
    o->duration_s = -1;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":s:n:t:c:m:d:w:r:p:qh", longopts, NULL)) != -1) {
        const char *a = optarg;
        switch (opt) {
        case OPT_PROTO:
            if (strcmp(a, "cmtp") == 0)
                o->proto = BENCH_PROTO_CMTP;
            else if (strcmp(a, "smtp") == 0)
                o->proto = BENCH_PROTO_SMTP;
            else
                return fail(err, errlen, "--proto takes cmtp or smtp");
            break;
        case 's':
            if (!name_ok(a))
                return fail(err, errlen, "bad --server");
            o->server = a;
            break;
        case OPT_CA:
            o->ca_file = a;
            break;
        case 'n':
            if (!name_ok(a) || strlen(a) > CMTP_DOMAIN_MAX)
                return fail(err, errlen, "bad --verify-name");
            o->verify_name = a;
            break;
        case 't':
            if (parse_u64(a, BENCH_THREADS_MAX, &v) < 0 || v == 0)
                return fail(err, errlen, "--threads takes 1..%u", BENCH_THREADS_MAX);
            o->threads = (unsigned)v;
            break;
        case 'c':
            if (parse_u64(a, BENCH_CONNS_MAX, &v) < 0 || v == 0)
                return fail(err, errlen, "--conns takes 1..%u", BENCH_CONNS_MAX);
            o->conns = (unsigned)v;
            conns_set = true;
            break;
        case 'm':
            if (parse_u64(a, UINT64_C(1) << 40, &v) < 0 || v == 0)
                return fail(err, errlen, "--msgs takes a positive count");
            o->msgs = v;
            break;
        case 'd':
            if (parse_secs(a, 86400.0 * 7, &o->duration_s) < 0 || o->duration_s <= 0)
                return fail(err, errlen, "--duration takes seconds (0 < S <= 604800)");
            break;
        case 'w':
            if (parse_secs(a, 3600.0, &o->warmup_s) < 0)
                return fail(err, errlen, "--warmup takes 0..3600 seconds");
            break;
        case 'r':
            if (parse_secs(a, 1e7, &o->rate) < 0 || o->rate <= 0)
                return fail(err, errlen, "--rate takes messages per second (0 < R <= 1e7)");
            break;
        case OPT_PER_CONN:
            if (a == NULL && optind < argc &&
                (strcmp(argv[optind], "0") == 0 || strcmp(argv[optind], "1") == 0))
                a = argv[optind++]; /* `--per-conn 1` as well as `--per-conn=1` */
            if (a == NULL || strcmp(a, "1") == 0)
                o->per_conn = true;
            else if (strcmp(a, "0") == 0)
                o->per_conn = false;
            else
                return fail(err, errlen, "--per-conn takes 0 or 1");
            break;
        case OPT_HANDSHAKES:
            handshakes = true;
            break;
        case OPT_RESUME:
            o->resume = true;
            break;
        case OPT_IDLE:
            if (parse_u64(a, BENCH_CONNS_MAX, &idle) < 0 || idle == 0)
                return fail(err, errlen, "--idle takes 1..%u connections", BENCH_CONNS_MAX);
            break;
        case OPT_IDLE_HOLD:
            if (parse_secs(a, 3600.0, &o->idle_hold_s) < 0)
                return fail(err, errlen, "--idle-hold takes 0..3600 seconds");
            break;
        case OPT_SIZE:
            if (bench_size_parse(a, &o->size) < 0)
                return fail(err, errlen, "--size takes 1k, 64k, 1m, mix or octets (k/m suffix)");
            break;
        case OPT_CHUNK:
            if (parse_u64(a, CMTP_CHUNK_MAX_HARD, &v) < 0 || v == 0)
                return fail(err, errlen, "--chunk takes 1..%u octets", CMTP_CHUNK_MAX_HARD);
            o->chunk = (size_t)v;
            break;
        case OPT_FROM:
        case OPT_TO:
        case OPT_EHLO:
            if (!name_ok(a))
                return fail(err, errlen, "bad --%s",
                            opt == OPT_FROM ? "from"
                            : opt == OPT_TO ? "to"
                                            : "ehlo");
            if (opt == OPT_FROM)
                o->from = a;
            else if (opt == OPT_TO)
                o->to = a;
            else
                o->ehlo = a;
            break;
        case OPT_TIMEOUT:
            if (parse_u64(a, 3600, &v) < 0 || v == 0)
                return fail(err, errlen, "--timeout takes 1..3600 seconds");
            o->timeout_ms = (unsigned)v * 1000u;
            break;
        case OPT_CONNECT_MAX:
            if (parse_u64(a, 100000, &v) < 0 || v == 0)
                return fail(err, errlen, "--connect-max takes 1..100000");
            o->connect_max = (unsigned)v;
            break;
        case 'p':
        case OPT_SERVER_TREE:
            if (o->n_server_pids == BENCH_SERVER_PIDS_MAX)
                return fail(err, errlen, "at most %u --server-pid and --server-tree",
                            BENCH_SERVER_PIDS_MAX);
            if (parse_u64(a, INT32_MAX, &v) < 0 || v == 0)
                return fail(err, errlen, "bad --server-%s", opt == 'p' ? "pid" : "tree");
            o->server_tree[o->n_server_pids] = opt == OPT_SERVER_TREE;
            o->server_pids[o->n_server_pids++] = (pid_t)v;
            break;
        case OPT_SEED:
            if (parse_u64(a, UINT64_MAX, &o->seed) < 0)
                return fail(err, errlen, "bad --seed");
            break;
        case OPT_HIST:
            o->hist_file = a;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case 'q':
            o->quiet = true;
            break;
        case OPT_ALLOW_ERRORS:
            o->allow_errors = true;
            break;
        case 'h':
            return 1;
        case ':':
            return fail(err, errlen, "option %s needs a value", argv[optind - 1]);
        default:
            return fail(err, errlen, "unknown option %s (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return fail(err, errlen, "unexpected argument '%s'", argv[optind]);

    /* Mode and its constraints. */
    if ((handshakes ? 1 : 0) + (idle > 0 ? 1 : 0) + (o->rate > 0 ? 1 : 0) > 1)
        return fail(err, errlen, "--handshakes, --idle and --rate exclude each other");
    if (handshakes)
        o->mode = BENCH_MODE_HANDSHAKES;
    else if (idle > 0)
        o->mode = BENCH_MODE_IDLE;
    else if (o->rate > 0)
        o->mode = BENCH_MODE_OPEN;
    else
        o->mode = BENCH_MODE_CLOSED;
    if (o->mode == BENCH_MODE_IDLE) {
        if (conns_set)
            return fail(err, errlen, "--idle N sets the number of sessions; drop --conns");
        if (o->msgs > 0 || o->duration_s > 0 || o->per_conn)
            return fail(err, errlen, "--idle takes none of --msgs, --duration, --per-conn");
        o->conns = (unsigned)idle;
        o->duration_s = 0;
    } else {
        if (o->mode == BENCH_MODE_OPEN && !conns_set)
            o->conns = DEFAULT_OPEN_CONNS;
        if (o->msgs > 0 && o->duration_s > 0)
            return fail(err, errlen, "give --msgs or --duration, not both");
        if (o->msgs == 0 && o->duration_s <= 0)
            o->duration_s = DEFAULT_DURATION_S;
        if (o->msgs > 0)
            o->duration_s = 0;
    }
    if (o->mode == BENCH_MODE_HANDSHAKES && o->per_conn)
        return fail(err, errlen, "--handshakes already uses one connection per handshake");
    if (o->resume && o->proto == BENCH_PROTO_SMTP)
        return fail(err, errlen, "--resume is for CMTP only");
    if (o->resume && o->mode != BENCH_MODE_HANDSHAKES && !o->per_conn)
        return fail(err, errlen, "--resume needs --handshakes or --per-conn");
    if (o->conns < o->threads)
        o->threads = o->conns; /* no idle thread */
    if (o->server == NULL)
        o->server = o->proto == BENCH_PROTO_SMTP ? "127.0.0.1:25" : "127.0.0.1:4465";
    {
        struct cmtp_addr tmp;
        if (cmtp_addr_parse(&tmp, o->from, strlen(o->from), CMTP_ADDR_BARE) != CMTP_ADDR_OK)
            return fail(err, errlen, "bad --from address");
        if (cmtp_addr_parse(&tmp, o->to, strlen(o->to), CMTP_ADDR_BARE) != CMTP_ADDR_OK)
            return fail(err, errlen, "bad --to address");
    }
    return 0;
}

int bench_opts_resolve(struct bench_opts *o, char *err, size_t errlen)
{
    char host[CMTP_DOMAIN_MAX + 1], port[16];
    const char *s = o->server, *colon;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    int r;

    snprintf(port, sizeof(port), "%d", o->proto == BENCH_PROTO_SMTP ? SMTP_PORT : CMTP_PORT);
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || (size_t)(end - s - 1) >= sizeof(host) || end == s + 1)
            return fail(err, errlen, "bad --server '%s'", s);
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        if (end[1] == ':')
            snprintf(port, sizeof(port), "%s", end + 2);
        else if (end[1] != '\0')
            return fail(err, errlen, "bad --server '%s'", s);
    } else if ((colon = strrchr(s, ':')) != NULL && strchr(s, ':') == colon) {
        if ((size_t)(colon - s) >= sizeof(host) || colon == s)
            return fail(err, errlen, "bad --server '%s'", s);
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        snprintf(port, sizeof(port), "%s", colon + 1);
    } else {
        if (strlen(s) >= sizeof(host))
            return fail(err, errlen, "bad --server '%s'", s);
        snprintf(host, sizeof(host), "%s", s);
    }
    {
        uint64_t p;
        if (parse_u64(port, 65535, &p) < 0 || p == 0)
            return fail(err, errlen, "bad port in --server '%s'", s);
    }
    r = getaddrinfo(host, port, &hints, &res);
    if (r != 0)
        return fail(err, errlen, "%s: %s", host, gai_strerror(r));
    memcpy(&o->addr, res->ai_addr, res->ai_addrlen);
    o->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}
