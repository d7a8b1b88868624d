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
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pwd.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/addr.h"
#include "daemon/cmtpd.h"
#include "queue/consumer.h"
#include "daemon/keeper.h"

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
          "30 s); a second SIGTERM stops at once. SIGHUP reloads the configuration and the\n"
          "certificates (validated first; on any error the running ones are kept).\n"
          "\n"
          "Privileges: listeners are bound first; then, with [server] user set, cmtpd switches\n"
          "to that user (no capability kept), starts the embedded redis-server as that user and\n"
          "forbids execve for the rest of its life (no_new_privs + seccomp).\n"
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

/* load_tls builds a server TLS context from the config (state_dir/tls/ when unset): for CMTP, or
 * with |smtp| for the SMTP ingress's STARTTLS (no ALPN). */
static struct tls_ctx *load_tls(const struct cmtp_config *cfg, bool smtp, char *err, size_t errlen)
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
    tc.no_alpn = smtp;
    return tls_server_ctx_new(&tc, err, errlen);
}

static void endpoint_text(const struct cmtp_config_endpoint *e, char *out, size_t len)
{
    if (e->kind == CMTP_CONFIG_HOST_IPV6)
        snprintf(out, len, "[%s]:%u", e->host, e->port);
    else
        snprintf(out, len, "%s:%u", e->host, e->port);
}

/* bind_listeners opens the |n| listeners |eps| on |d|'s engine with listener tag |tag| and logs
 * each (|proto| names the protocol). Returns 0, or -1 after printing why. */
static int bind_listeners(struct cmtpd *d, const struct cmtp_config_endpoint *eps, size_t n,
                          void *tag, const char *proto)
{
    for (size_t i = 0; i < n; i++) {
        char where[CMTP_DOMAIN_MAX + 16];
        endpoint_text(&eps[i], where, sizeof(where));
        int port = io_engine_listen(d->engine, eps[i].host, eps[i].port, tag);
        if (port < 0) {
            fprintf(stderr, "cmtpd: listen %s (%s): %s\n", where, proto, strerror(-port));
            return -1;
        }
        CMTP_LOG(&d->log, CMTP_LOG_INFO, "listening", cmtp_log_str("address", where),
                 cmtp_log_int("port", port), cmtp_log_str("proto", proto));
    }
    return 0;
}

/* load_smtp_tls gives |g| the SMTP ingress's STARTTLS context when it has an SMTP listener with
 * starttls on. Returns 0 or -EINVAL with the reason in |err|. */
static int load_smtp_tls(struct cmtpd_cfg *g, char *err, size_t errlen)
{
    if (g->c.smtp_ingress.listen_count == 0 || !g->c.smtp_ingress.starttls)
        return 0;
    g->smtp_tls = load_tls(&g->c, true, err, errlen);
    return g->smtp_tls != NULL ? 0 : -EINVAL;
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

/* load_config reads |path| (NULL: defaults) into a new reference-counted configuration. */
static struct cmtpd_cfg *load_config(const char *path, char *err, size_t errlen)
{
    struct cmtpd_cfg *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&g->refs, 1);
    cmtp_config_init(&g->c);
    if (path != NULL && cmtp_config_load_file(&g->c, path, err, errlen) < 0) {
        cmtpd_cfg_unref(g);
        return NULL;
    }
    /* The admin socket and the Maildir default to places under state_dir, wherever it is. */
    struct cmtp_config *c = &g->c;
    if (strcmp(c->admin.socket, CMTP_CONFIG_ADMIN_SOCKET_DEFAULT) == 0 &&
        strcmp(c->server.state_dir, CMTP_CONFIG_STATE_DIR_DEFAULT) != 0) {
        int n = snprintf(c->admin.socket, sizeof(c->admin.socket), "%s/cmtpd.sock",
                         c->server.state_dir);
        if (n < 0 || (size_t)n >= sizeof(c->admin.socket)) {
            snprintf(err, errlen,
                     "[server] state_dir is too long for the admin socket path; "
                     "set [admin] socket");
            cmtpd_cfg_unref(g);
            return NULL;
        }
    }
    if (strcmp(c->delivery.maildir, CMTP_CONFIG_MAILDIR_DEFAULT) == 0 &&
        strcmp(c->server.state_dir, CMTP_CONFIG_STATE_DIR_DEFAULT) != 0)
        snprintf(c->delivery.maildir, sizeof(c->delivery.maildir), "%.*s/maildir",
                 (int)(sizeof(c->delivery.maildir) - 9), c->server.state_dir);
    return g;
}

/* syslog_sink sends one log line to syslog(3) (facility mail); the line is data, never the
 * format. */
static void syslog_sink(void *arg, enum cmtp_log_level level, const char *line, size_t len)
{
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    (void)arg;
    if (len > 0 && line[len - 1] == '\n')
        len--;
    syslog(prio[level <= CMTP_LOG_DEBUG ? level : CMTP_LOG_DEBUG], "%.*s", (int)len, line);
}

static void log_setup(struct cmtpd *d, const struct cmtp_config *c)
{
    if (c->log.target == CMTP_LOG_TARGET_SYSLOG) {
        openlog("cmtpd", LOG_PID | LOG_NDELAY, LOG_MAIL);
        cmtp_log_init(&d->log, c->log.level, c->log.format, syslog_sink, NULL);
    } else {
        cmtp_log_init(&d->log, c->log.level, c->log.format, NULL, NULL);
    }
}

/* sd_notify_send tells systemd (Type=notify) about our state when NOTIFY_SOCKET is set. */
static void sd_notify_send(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n;
    int fd;
    if (path == NULL || (path[0] != '/' && path[0] != '@'))
        return;
    n = strlen(path);
    if (n >= sizeof(sa.sun_path))
        return;
    memcpy(sa.sun_path, path, n);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract socket */
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
           (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
    close(fd);
}

/* reload_post carries a new configuration and TLS context to one worker. */
struct reload_post {
    struct cmtpd_worker *w;
    struct cmtpd_cfg *cfg;
    struct tls_ctx *tls;
};

static void reload_on_worker(void *arg)
{
    struct reload_post *rp = arg;
    cmtpd_worker_set_cfg(rp->w, rp->cfg, rp->tls);
    cmtpd_cfg_unref(rp->cfg);
    tls_ctx_unref(rp->tls);
    free(rp);
}

/* cmtpd_reload loads the configuration file again and the certificates it names; only when
 * both are valid are they handed to the workers (new sessions use them, established ones keep
 * theirs). Settings that need a restart (listeners, workers, Redis, state_dir, user) are kept
 * and a warning says so. Returns 0, or -EINVAL with the reason in |err| (the old configuration
 * stays in force). */
int cmtpd_reload(struct cmtpd *d, char *err, size_t errlen)
{
    struct cmtpd_cfg *g = load_config(d->cfg_path, err, errlen);
    struct tls_ctx *tls;
    if (g == NULL)
        return -EINVAL;
    tls = load_tls(&g->c, false, err, errlen);
    if (tls == NULL || load_smtp_tls(g, err, errlen) < 0) {
        tls_ctx_unref(tls);
        cmtpd_cfg_unref(g);
        return -EINVAL;
    }
    pthread_mutex_lock(&d->cfg_lock);
    const struct cmtp_config *o = &d->cfg->c;
    if (memcmp(o->server.listen, g->c.server.listen, sizeof(o->server.listen)) != 0 ||
        o->server.listen_count != g->c.server.listen_count ||
        memcmp(o->smtp_ingress.listen, g->c.smtp_ingress.listen, sizeof(o->smtp_ingress.listen)) !=
            0 ||
        o->smtp_ingress.listen_count != g->c.smtp_ingress.listen_count ||
        o->server.workers != g->c.server.workers ||
        memcmp(&o->redis.address, &g->c.redis.address, sizeof(o->redis.address)) != 0 ||
        strcmp(o->server.state_dir, g->c.server.state_dir) != 0 ||
        strcmp(o->server.user, g->c.server.user) != 0)
        CMTP_LOG(&d->log, CMTP_LOG_WARN, "reload-needs-restart",
                 cmtp_log_str("what", "listen, smtp_ingress listen, workers, redis, state_dir or "
                                      "user changed"));
    for (unsigned i = 0; i < d->n_workers; i++) {
        struct reload_post *rp;
        if (d->workers[i] == NULL || (rp = malloc(sizeof(*rp))) == NULL)
            continue;
        *rp = (struct reload_post){d->workers[i], cmtpd_cfg_ref(g), tls_ctx_ref(tls)};
        if (io_worker_post(d->workers[i]->io, reload_on_worker, rp) < 0) {
            cmtpd_cfg_unref(rp->cfg);
            tls_ctx_unref(rp->tls);
            free(rp);
        }
    }
    cmtpd_cfg_unref(d->cfg);
    d->cfg = g;
    tls_ctx_unref(d->tls);
    d->tls = tls;
    cmtp_log_set_level(&d->log, g->c.log.level);
    pthread_mutex_unlock(&d->cfg_lock);
    return 0;
}

/* drop_privileges switches to [server] user (when set and we are root): supplementary groups,
 * gid, uid, in that order, then checks that root cannot be regained. No capability survives
 * setuid from root without PR_SET_KEEPCAPS. */
static int drop_privileges(const struct cmtp_config *c, char *err, size_t errlen)
{
    struct passwd *pw;
    if (c->server.user[0] == '\0')
        return 0;
    pw = getpwnam(c->server.user);
    if (pw == NULL) {
        snprintf(err, errlen, "[server] user %s: no such user", c->server.user);
        return -ENOENT;
    }
    if (getuid() != 0 && geteuid() != 0) {
        if (geteuid() == pw->pw_uid)
            return 0;
        snprintf(err, errlen, "[server] user %s: not root, cannot switch", c->server.user);
        return -EPERM;
    }
    if (initgroups(pw->pw_name, pw->pw_gid) < 0 ||
        setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) < 0 ||
        setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0) {
        snprintf(err, errlen, "dropping privileges to %s: %s", c->server.user, strerror(errno));
        return -errno;
    }
    if (pw->pw_uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
        snprintf(err, errlen, "dropping privileges: root could be regained");
        return -EPERM;
    }
    return 0;
}

/* forbid_exec installs a seccomp filter on every thread of the process that makes execve and
 * execveat fail with EPERM, after setting no_new_privs: nothing on the data path can run a
 * program. Called once the embedded redis-server (the only program we start) is running. */
static int forbid_exec(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 59 /* execve */, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 322 /* execveat */, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
    };
    struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -errno;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
        return -errno;
    return 0;
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
    bool check = false;
    int opt, code = 1;
    char err[CMTP_CONFIG_ERR_LEN];
    struct cmtpd *d = calloc(1, sizeof(*d));
    const struct cmtp_config *c;
    sigset_t set;

    if (d == NULL)
        return 1;
    pthread_mutex_init(&d->cfg_lock, NULL);
    {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        d->started_ms = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
    }
    while ((opt = getopt_long(argc, argv, "c:Vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            d->cfg_path = optarg;
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

    d->cfg = load_config(d->cfg_path, err, sizeof(err));
    if (d->cfg == NULL) {
        fprintf(stderr, "cmtpd: %s\n", err);
        goto out;
    }
    c = &d->cfg->c;
    log_setup(d, c);

    if (c->server.hostname[0]) {
        snprintf(d->hostname, sizeof(d->hostname), "%s", c->server.hostname);
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
    /* Keys are read while we are still root; nothing reads them later but a reload. */
    d->tls = load_tls(c, false, err, sizeof(err));
    if (d->tls == NULL || load_smtp_tls(d->cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "cmtpd: TLS: %s\n", err);
        goto out;
    }
    if (check) {
        if (c->server.user[0] && getpwnam(c->server.user) == NULL) {
            fprintf(stderr, "cmtpd: [server] user %s: no such user\n", c->server.user);
            goto out;
        }
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

    /* One descriptor per connection: raise the soft limit to the hard one, and say so when
     * conn_max cannot be reached. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)c->server.conn_max + 64)
            CMTP_LOG(&d->log, CMTP_LOG_WARN, "fd-limit-below-conn-max",
                     cmtp_log_uint("nofile", (uint64_t)rl.rlim_cur),
                     cmtp_log_uint("conn_max", c->server.conn_max));
    }

    if (mkdir_p(c->server.state_dir, 0750) < 0) {
        fprintf(stderr, "cmtpd: cannot create state_dir %s: %s\n", c->server.state_dir,
                strerror(errno));
        goto out;
    }
    if (c->server.user[0] && geteuid() == 0) {
        struct passwd *pw = getpwnam(c->server.user);
        if (pw == NULL || chown(c->server.state_dir, pw->pw_uid, pw->pw_gid) < 0) {
            fprintf(stderr, "cmtpd: cannot give state_dir to %s\n", c->server.user);
            goto out;
        }
    }

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    d->n_workers = c->server.workers ? c->server.workers : (unsigned)(ncpu > 0 ? ncpu : 1);
    if (d->n_workers > sizeof(d->workers) / sizeof(d->workers[0]))
        d->n_workers = sizeof(d->workers) / sizeof(d->workers[0]);
    struct io_engine_config ec;
    io_engine_config_default(&ec);
    ec.workers = d->n_workers;
    ec.conn_max = c->server.conn_max;
    d->engine = io_engine_new(&ec, cmtpd_conn_ops(), d, err, sizeof(err));
    if (d->engine == NULL) {
        fprintf(stderr, "cmtpd: engine: %s\n", err);
        goto out;
    }
    /* Bind every listener while still privileged (ports below 1024). */
    if (bind_listeners(d, c->server.listen, c->server.listen_count, NULL, "cmtp/1") < 0 ||
        bind_listeners(d, c->smtp_ingress.listen, c->smtp_ingress.listen_count, CMTPD_LISTENER_SMTP,
                       "smtp") < 0)
        goto out;
    if (drop_privileges(c, err, sizeof(err)) < 0) {
        fprintf(stderr, "cmtpd: %s\n", err);
        goto out;
    }

    if (c->redis.address.kind == CMTP_CONFIG_SOCKET_NONE) {
        char dir[PATH_MAX], sock[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/redis", c->server.state_dir);
        if (keeper_start(c->redis.redis_server, dir, sock, sizeof(sock), &d->redis_pid, err,
                         sizeof(err)) < 0) {
            fprintf(stderr, "cmtpd: embedded redis-server: %s\n", err);
            goto out;
        }
        snprintf(d->redis_address, sizeof(d->redis_address), "unix:%s", sock);
        CMTP_LOG(&d->log, CMTP_LOG_INFO, "redis-started", cmtp_log_str("socket", sock),
                 cmtp_log_int("keeper", d->redis_pid));
    } else if (c->redis.address.kind == CMTP_CONFIG_SOCKET_UNIX) {
        snprintf(d->redis_address, sizeof(d->redis_address), "unix:%s", c->redis.address.path);
    } else {
        endpoint_text(&c->redis.address.tcp, d->redis_address, sizeof(d->redis_address));
    }
    /* From here on nothing may start a program. */
    int e = forbid_exec();
    if (e < 0)
        CMTP_LOG(&d->log, CMTP_LOG_WARN, "seccomp-unavailable",
                 cmtp_log_str("reason", strerror(-e)));

    /* 4 MiB of split records per worker, shared (a NULL cache: each worker keeps its own). */
    d->rcache = queue_consumer_cache_new((size_t)d->n_workers * (4u << 20));
    if (io_engine_start(d->engine) < 0) {
        fprintf(stderr, "cmtpd: cannot start the workers\n");
        goto out;
    }
    if (cmtpd_admin_start(d, err, sizeof(err)) < 0) {
        fprintf(stderr, "cmtpd: admin socket: %s\n", err);
        io_engine_stop(d->engine);
        io_engine_join(d->engine);
        goto out;
    }
    CMTP_LOG(&d->log, CMTP_LOG_INFO, "started", cmtp_log_str("version", CMTPD_VERSION),
             cmtp_log_str("host", d->hostname), cmtp_log_uint("workers", d->n_workers),
             cmtp_log_str("redis", d->redis_address), cmtp_log_uint("uid", getuid()));
    sd_notify_send("READY=1");

    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig == SIGTERM || sig == SIGINT) {
            sd_notify_send("STOPPING=1");
            CMTP_LOG(&d->log, CMTP_LOG_INFO, "draining",
                     cmtp_log_str("signal", sig == SIGTERM ? "TERM" : "INT"));
            io_engine_drain(d->engine);
            for (unsigned i = 0; i < d->n_workers; i++)
                if (d->workers[i] != NULL)
                    io_worker_post(d->workers[i]->io, cmtpd_worker_drain, d->workers[i]);
            drain_wait(d, &set);
            break;
        }
        if (sig == SIGHUP) {
            sd_notify_send("RELOADING=1");
            if (cmtpd_reload(d, err, sizeof(err)) == 0)
                CMTP_LOG(&d->log, CMTP_LOG_INFO, "reloaded");
            else
                CMTP_LOG(&d->log, CMTP_LOG_ERROR, "reload-refused", cmtp_log_str("reason", err),
                         cmtp_log_str("kept", "the running configuration"));
            sd_notify_send("READY=1");
        }
    }
    cmtpd_admin_stop(d);
    io_engine_stop(d->engine);
    io_engine_join(d->engine);
    CMTP_LOG(&d->log, CMTP_LOG_INFO, "stopped");
    code = 0;
out:
    io_engine_free(d->engine);
    queue_consumer_cache_free(d->rcache); /* after the workers, whose consumers used it */
    tls_ctx_unref(d->tls);
    free(d->ip_conns);
    if (d->redis_pid > 0)
        keeper_stop(d->redis_pid);
    cmtpd_cfg_unref(d->cfg);
    free(d);
    return code;
}
