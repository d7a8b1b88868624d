/* daemon/cmtpd_main.c — cmtpd: load the config, start the embedded Redis if asked, build TLS,
 * run the io_uring workers, handle signals (drain on SIGTERM). Not the session logic. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/addr.h"
#include "daemon/cmtpd.h"
#include "queue/redis_embed.h"

/* malloc_conf tunes jemalloc (release build) for a server that allocates per-connection
 * objects of 16-64 KiB: keep them in the thread cache and purge dirty pages lazily, instead of
 * an madvise(2) per connection (measured: ~100 us of system time per TLS handshake). Read once
 * by jemalloc at start-up; never written. Unused when jemalloc is not linked (sanitizer builds). */
const char *malloc_conf = "tcache_max:131072,dirty_decay_ms:5000,muzzy_decay_ms:5000";

static void usage(FILE *f)
{
    fputs("usage: cmtpd [-c FILE] [--check] [--version] [--help]\n"
          "\n"
          "The CMTP appliance daemon: accepts CMTP/1 (TLS 1.3, ALPN cmtp/1, port 4465) on one\n"
          "io_uring worker thread per core and acknowledges a message only once it is durable\n"
          "in Redis (AOF fsync=always; WAIT for replicas when configured).\n"
          "\n"
          "  -c, --config FILE  configuration file (INI; see cmtpd.conf(5), docs/CONFIG.md).\n"
          "                     Without it every setting takes its default.\n"
          "      --check        load and validate the configuration and the TLS certificate,\n"
          "                     print 'config ok' and exit 0, or print the error and exit 1\n"
          "  -V, --version      print the version and exit\n"
          "  -h, --help         this text\n"
          "\n"
          "Redis: with [redis] address empty, cmtpd starts a private redis-server itself\n"
          "(Unix socket, AOF fsync=always, data under [server] state_dir/redis) and stops it\n"
          "on exit.\n"
          "\n"
          "Signals: SIGTERM or SIGINT drain (stop accepting, finish transactions in flight,\n"
          "answer '421 shutting-down' at the next command boundary, exit 0 when done or after\n"
          "30 s); a second SIGTERM stops at once.\n"
          "\n"
          "Exit status: 0 after a clean shutdown or a good --check; 1 on a configuration or\n"
          "startup error; 2 on a usage error.\n",
          f);
}

/* mkdir_p creates |path| and its parents with |mode|. */
static int mkdir_p(const char *path, mode_t mode)
{
    char tmp[PATH_MAX];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(tmp))
        return -ENAMETOOLONG;
    memcpy(tmp, path, len + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, mode) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* load_tls builds the server TLS context from the config (state_dir/tls/ when unset). */
static struct tls_ctx *load_tls(const struct cmtp_config *cfg, char *err, size_t errlen)
{
    char cert[PATH_MAX], key[PATH_MAX];
    struct tls_server_config tc = {0};
    if (cfg->tls.cert[0]) {
        snprintf(cert, sizeof(cert), "%s", cfg->tls.cert);
        snprintf(key, sizeof(key), "%s", cfg->tls.key);
    } else {
        snprintf(cert, sizeof(cert), "%s/tls/server.crt", cfg->server.state_dir);
        snprintf(key, sizeof(key), "%s/tls/server.key", cfg->server.state_dir);
    }
    tc.cert_file = cert;
    tc.key_file = key;
    tc.ticket_key_file = cfg->tls.ticket_key_file[0] ? cfg->tls.ticket_key_file : NULL;
    tc.no_tickets = !cfg->tls.session_tickets;
    tc.client_ca_file = cfg->tls.ca[0] ? cfg->tls.ca : NULL;
    tc.client_auth = cfg->tls.require_client_cert ? TLS_CLIENT_AUTH_REQUIRED
                     : cfg->tls.ca[0]             ? TLS_CLIENT_AUTH_OPTIONAL
                                                  : TLS_CLIENT_AUTH_NONE;
    return tls_server_ctx_new(&tc, err, errlen);
}

static void endpoint_text(const struct cmtp_config_endpoint *e, char *out, size_t len)
{
    if (e->kind == CMTP_CONFIG_HOST_IPV6)
        snprintf(out, len, "[%s]:%u", e->host, e->port);
    else
        snprintf(out, len, "%s:%u", e->host, e->port);
}

/* drain_wait waits until every worker has no session left, or the drain timeout passes. */
static void drain_wait(struct cmtpd *d, sigset_t *set)
{
    struct timespec ts = {0, 100 * 1000 * 1000};
    for (unsigned waited = 0; waited < CMTPD_DRAIN_TIMEOUT_MS; waited += 100) {
        unsigned live = 0;
        for (unsigned i = 0; i < d->n_workers; i++)
            if (d->workers[i] != NULL)
                live += io_worker_conn_count(d->workers[i]->io);
        if (live == 0)
            return;
        siginfo_t si;
        int sig = sigtimedwait(set, &si, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            CMTP_LOG(&d->log, CMTP_LOG_WARN, "drain-aborted", cmtp_log_uint("connections", live));
            return;
        }
    }
    CMTP_LOG(&d->log, CMTP_LOG_WARN, "drain-timeout");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 1},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cfg_path = NULL;
    bool check = false;
    int opt, code = 1;
    char err[CMTP_CONFIG_ERR_LEN];
    struct cmtpd *d = calloc(1, sizeof(*d));
    sigset_t set;

    if (d == NULL)
        return 1;
    while ((opt = getopt_long(argc, argv, "c:Vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            cfg_path = optarg;
            break;
        case 1:
            check = true;
            break;
        case 'V':
            printf("cmtpd %s (CMTP/1)\n", CMTPD_VERSION);
            free(d);
            return 0;
        case 'h':
            usage(stdout);
            free(d);
            return 0;
        default:
            usage(stderr);
            free(d);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        free(d);
        return 2;
    }

    d->cfg = calloc(1, sizeof(*d->cfg));
    if (d->cfg == NULL)
        goto out;
    cmtp_config_init(d->cfg);
    if (cfg_path != NULL && cmtp_config_load_file(d->cfg, cfg_path, err, sizeof(err)) < 0) {
        fprintf(stderr, "cmtpd: %s\n", err);
        goto out;
    }
    cmtp_log_init(&d->log, d->cfg->log.level, d->cfg->log.format, NULL, NULL);

    if (d->cfg->server.hostname[0]) {
        snprintf(d->hostname, sizeof(d->hostname), "%s", d->cfg->server.hostname);
    } else {
        char h[HOST_NAME_MAX + 1] = "";
        gethostname(h, sizeof(h));
        h[HOST_NAME_MAX] = '\0';
        if (cmtp_addr_domain_normalize(d->hostname, sizeof(d->hostname), h, strlen(h)) !=
            CMTP_ADDR_OK)
            snprintf(d->hostname, sizeof(d->hostname), "localhost.localdomain");
    }
    snprintf(d->node_id, sizeof(d->node_id), "%.40s.%ld", d->hostname, (long)getpid());

    d->ip_conns = calloc(CMTPD_IP_SLOTS, sizeof(*d->ip_conns));
    if (d->ip_conns == NULL)
        goto out;
    d->tls = load_tls(d->cfg, err, sizeof(err));
    if (d->tls == NULL) {
        fprintf(stderr, "cmtpd: TLS: %s\n", err);
        goto out;
    }
    if (check) {
        printf("config ok\n");
        code = 0;
        goto out;
    }

    /* Signals are handled by this thread only: block them before any thread starts. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (mkdir_p(d->cfg->server.state_dir, 0750) < 0) {
        fprintf(stderr, "cmtpd: cannot create state_dir %s: %s\n", d->cfg->server.state_dir,
                strerror(errno));
        goto out;
    }
    if (d->cfg->redis.address.kind == CMTP_CONFIG_SOCKET_NONE) {
        char dir[PATH_MAX], sock[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/redis", d->cfg->server.state_dir);
        if (redis_embed_start(d->cfg->redis.redis_server, dir, sock, sizeof(sock), &d->redis_pid,
                              err, sizeof(err)) < 0) {
            fprintf(stderr, "cmtpd: embedded redis-server: %s\n", err);
            goto out;
        }
        snprintf(d->redis_address, sizeof(d->redis_address), "unix:%s", sock);
        CMTP_LOG(&d->log, CMTP_LOG_INFO, "redis-started", cmtp_log_str("socket", sock),
                 cmtp_log_int("pid", d->redis_pid));
    } else if (d->cfg->redis.address.kind == CMTP_CONFIG_SOCKET_UNIX) {
        snprintf(d->redis_address, sizeof(d->redis_address), "unix:%s", d->cfg->redis.address.path);
    } else {
        endpoint_text(&d->cfg->redis.address.tcp, d->redis_address, sizeof(d->redis_address));
    }

    /* One descriptor per connection: raise the soft limit to the hard one, and say so when
     * conn_max cannot be reached. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)d->cfg->server.conn_max + 64)
            CMTP_LOG(&d->log, CMTP_LOG_WARN, "fd-limit-below-conn-max",
                     cmtp_log_uint("nofile", (uint64_t)rl.rlim_cur),
                     cmtp_log_uint("conn_max", d->cfg->server.conn_max));
    }

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    d->n_workers =
        d->cfg->server.workers ? d->cfg->server.workers : (unsigned)(ncpu > 0 ? ncpu : 1);
    if (d->n_workers > sizeof(d->workers) / sizeof(d->workers[0]))
        d->n_workers = sizeof(d->workers) / sizeof(d->workers[0]);
    struct io_engine_config ec;
    io_engine_config_default(&ec);
    ec.workers = d->n_workers;
    ec.conn_max = d->cfg->server.conn_max;
    d->engine = io_engine_new(&ec, cmtpd_conn_ops(), d, err, sizeof(err));
    if (d->engine == NULL) {
        fprintf(stderr, "cmtpd: engine: %s\n", err);
        goto out;
    }
    for (size_t i = 0; i < d->cfg->server.listen_count; i++) {
        const struct cmtp_config_endpoint *e = &d->cfg->server.listen[i];
        char where[CMTP_DOMAIN_MAX + 16];
        endpoint_text(e, where, sizeof(where));
        int port = io_engine_listen(d->engine, e->host, e->port, NULL);
        if (port < 0) {
            fprintf(stderr, "cmtpd: listen %s: %s\n", where, strerror(-port));
            goto out;
        }
        CMTP_LOG(&d->log, CMTP_LOG_INFO, "listening", cmtp_log_str("address", where),
                 cmtp_log_int("port", port), cmtp_log_str("proto", "cmtp/1"));
    }
    if (io_engine_start(d->engine) < 0) {
        fprintf(stderr, "cmtpd: cannot start the workers\n");
        goto out;
    }
    CMTP_LOG(&d->log, CMTP_LOG_INFO, "started", cmtp_log_str("version", CMTPD_VERSION),
             cmtp_log_str("host", d->hostname), cmtp_log_uint("workers", d->n_workers),
             cmtp_log_str("redis", d->redis_address));

    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig == SIGTERM || sig == SIGINT) {
            CMTP_LOG(&d->log, CMTP_LOG_INFO, "draining",
                     cmtp_log_str("signal", sig == SIGTERM ? "TERM" : "INT"));
            io_engine_drain(d->engine);
            for (unsigned i = 0; i < d->n_workers; i++)
                if (d->workers[i] != NULL)
                    io_worker_post(d->workers[i]->io, cmtpd_worker_drain, d->workers[i]);
            drain_wait(d, &set);
            break;
        }
        if (sig == SIGHUP)
            CMTP_LOG(&d->log, CMTP_LOG_INFO, "sighup-ignored",
                     cmtp_log_str("hint", "use cmtpctl reload"));
    }
    io_engine_stop(d->engine);
    io_engine_join(d->engine);
    CMTP_LOG(&d->log, CMTP_LOG_INFO, "stopped");
    code = 0;
out:
    io_engine_free(d->engine);
    tls_ctx_unref(d->tls);
    free(d->ip_conns);
    if (d->redis_pid > 0)
        redis_embed_stop(d->redis_pid);
    if (d->cfg != NULL) {
        cmtp_config_free(d->cfg);
        free(d->cfg);
    }
    free(d);
    return code;
}
