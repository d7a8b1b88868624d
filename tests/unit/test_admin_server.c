/* tests/unit/test_admin_server.c — the admin socket server on a real Unix socket: the JSON shape
 * of every command's reply, errors, socket mode and group, other uids refused at both layers
 * (file permission and SO_PEERCRED), framing limits, many clients, idle timeout, stale sockets,
 * freeing with clients connected, and the admin_wait rendezvous. Not cmtpctl
 * (test_admin_ctl.c) nor the metrics writer (test_admin_metrics.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "admin/admin.h"
#include "admin/client.h"
#include "admin/loop.h"
#include "tests/unit/test_admin_fixture.h"

#define NOBODY 65534

static struct fx F;

static int setup(void **state)
{
    (void)state;
    return fx_dir(&F);
}

static int teardown(void **state)
{
    (void)state;
    fx_done(&F);
    return 0;
}

/* --- helpers -------------------------------------------------------------------------------- */

/* call sends |line| and returns the parsed reply (a JSON object with a boolean "ok"). */
static json_t *call(const char *line)
{
    struct admin_buf reply;
    char err[256];
    json_error_t je;
    admin_buf_init(&reply, ADMIN_REPLY_MAX + 1);
    int r = admin_client_call(F.path, line, 5000, &reply, err, sizeof(err));
    if (r != 0)
        print_error("call(%s): %s\n", line, err);
    assert_int_equal(r, 0);
    /* One line of compact ASCII JSON. */
    for (size_t i = 0; i < reply.len; i++)
        assert_true(reply.data[i] >= 0x20 && reply.data[i] < 0x7f);
    json_t *j = json_loadb(reply.data, reply.len, JSON_REJECT_DUPLICATES, &je);
    if (j == NULL)
        print_error("bad JSON (%s): %s\n", je.text, reply.data);
    assert_non_null(j);
    assert_true(json_is_object(j));
    assert_true(json_is_boolean(json_object_get(j, "ok")));
    /* "ok" comes first. */
    assert_true(strncmp(reply.data, "{\"ok\":", 6) == 0);
    admin_buf_cleanup(&reply);
    return j;
}

static json_t *call_ok(const char *line)
{
    json_t *j = call(line);
    if (!json_is_true(json_object_get(j, "ok")))
        print_error("%s -> error %s\n", line, json_string_value(json_object_get(j, "error")));
    assert_true(json_is_true(json_object_get(j, "ok")));
    assert_null(json_object_get(j, "error"));
    return j;
}

/* call_err checks that |line| gets {"ok":false,"error":...} containing |want|. */
static void call_err(const char *line, const char *want)
{
    json_t *j = call(line);
    assert_true(json_is_false(json_object_get(j, "ok")));
    const char *e = json_string_value(json_object_get(j, "error"));
    assert_non_null(e);
    if (strstr(e, want) == NULL)
        print_error("%s -> \"%s\", wanted \"%s\"\n", line, e, want);
    assert_non_null(strstr(e, want));
    assert_int_equal(json_object_size(j), 2);
    json_decref(j);
}

static json_t *get(json_t *o, const char *key, json_type t)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL || json_typeof(v) != t)
        print_error("field %s missing or of type %d\n", key, v ? (int)json_typeof(v) : -1);
    assert_non_null(v);
    assert_int_equal(json_typeof(v), t);
    return v;
}

static int raw_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        c += w;
        n -= (size_t)w;
    }
}

/* read_line reads one line (without '\n') into |buf| within |ms|; returns its length, or -1 on
 * EOF before a line, -2 on timeout. Reads one octet at a time so that nothing is consumed past
 * the line. */
static int read_line(int fd, char *buf, size_t cap, int ms)
{
    size_t n = 0;
    uint64_t deadline = admin_loop_now_ms() + (uint64_t)ms;
    while (n + 1 < cap) {
        uint64_t now = admin_loop_now_ms();
        if (now >= deadline)
            return -2;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(deadline - now)) <= 0)
            continue;
        char c;
        ssize_t r = recv(fd, &c, 1, 0);
        if (r <= 0)
            return -1;
        if (c == '\n') {
            buf[n] = '\0';
            return (int)n;
        }
        buf[n++] = c;
    }
    return (int)n;
}

/* wait_eof checks that the server closes |fd| within |ms| (input, if any, is skipped). */
static void wait_eof(int fd, int ms)
{
    uint64_t deadline = admin_loop_now_ms() + (uint64_t)ms;
    char junk[8192];
    for (;;) {
        uint64_t now = admin_loop_now_ms();
        assert_true(now < deadline);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(deadline - now)) <= 0)
            continue;
        ssize_t r = recv(fd, junk, sizeof(junk), 0);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return;
        assert_true(r > 0);
    }
}

/* --- reply shapes --------------------------------------------------------------------------- */

static void test_status_shape(void **state)
{
    (void)state;
    assert_non_null(fx_start(&F, NULL));
    json_t *j = call_ok("status");
    assert_string_equal(json_string_value(get(j, "version", JSON_STRING)), "9.8.7-test");
    assert_int_equal(json_integer_value(get(j, "pid", JSON_INTEGER)), getpid());
    assert_true(json_integer_value(get(j, "uptime_s", JSON_INTEGER)) >= 0);
    assert_int_equal(json_integer_value(get(j, "workers", JSON_INTEGER)), 2);
    json_t *l = get(j, "listeners", JSON_ARRAY);
    assert_int_equal(json_array_size(l), 2);
    assert_true(json_is_string(json_object_get(json_array_get(l, 0), "address")));
    json_t *redis = get(j, "redis", JSON_OBJECT);
    assert_string_equal(json_string_value(get(redis, "state", JSON_STRING)), "connected");
    get(j, "draining", JSON_FALSE);
    json_decref(j);
    unsigned calls;
    struct admin_request last = fx_last(&F, &calls);
    assert_int_equal(last.cmd, ADMIN_CMD_STATUS);
    assert_int_equal(calls, 1);
}

static void test_uptime_from_config(void **state)
{
    (void)state;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct admin_config c = {.started_ms = ((uint64_t)ts.tv_sec - 3723) * 1000u};
    assert_non_null(fx_start(&F, &c));
    json_t *j = call_ok("status");
    json_int_t up = json_integer_value(get(j, "uptime_s", JSON_INTEGER));
    assert_true(up >= 3722 && up <= 3730);
    json_decref(j);
}

static void test_stats_shape(void **state)
{
    (void)state;
    assert_non_null(fx_start(&F, NULL));
    json_t *j = call_ok("stats");
    json_t *w = get(j, "workers", JSON_ARRAY);
    assert_int_equal(json_array_size(w), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *o = json_array_get(w, i);
        assert_true(json_is_object(o));
        assert_int_equal(json_integer_value(get(o, "id", JSON_INTEGER)), (json_int_t)i);
        get(o, "handshakes", JSON_INTEGER);
        get(get(o, "redis", JSON_OBJECT), "inflight", JSON_INTEGER);
    }
    json_t *t = get(j, "total", JSON_OBJECT);
    assert_int_equal(json_integer_value(get(t, "handshakes", JSON_INTEGER)), 80);
    json_decref(j);
}

static void test_queue_shapes(void **state)
{
    (void)state;
    assert_non_null(fx_start(&F, NULL));

    json_t *j = call_ok("queue summary");
    json_t *d = get(j, "destinations", JSON_ARRAY);
    assert_int_equal(json_array_size(d), 2);
    json_t *d0 = json_array_get(d, 0);
    get(d0, "dest", JSON_STRING);
    get(d0, "count", JSON_INTEGER);
    get(d0, "oldest_s", JSON_INTEGER);
    get(d0, "next_attempt_s", JSON_INTEGER);
    /* Non-ASCII from the daemon arrives escaped (\u00fc) and decodes back. */
    assert_string_equal(json_string_value(json_object_get(json_array_get(d, 1), "dest")),
                        "b\xc3\xbc"
                        "cher.test");
    json_decref(j);

    j = call_ok("queue list --dest Example.NET --state deferred --limit 1");
    json_t *m = get(j, "messages", JSON_ARRAY);
    assert_int_equal(json_array_size(m), 1);
    assert_string_equal(json_string_value(get(json_array_get(m, 0), "dest", JSON_STRING)),
                        "example.net");
    get(j, "truncated", JSON_TRUE);
    json_decref(j);
    struct admin_request last = fx_last(&F, NULL);
    assert_int_equal(last.cmd, ADMIN_CMD_QUEUE_LIST);
    assert_string_equal(last.dest, "example.net");
    assert_int_equal(last.state, ADMIN_QSTATE_DEFERRED);
    assert_int_equal(last.limit, 1);

    j = call_ok("queue show 01hf3zk8q2-3");
    json_t *msg = get(j, "message", JSON_OBJECT);
    assert_string_equal(json_string_value(get(msg, "id", JSON_STRING)), "01HF3ZK8Q2-3");
    get(msg, "rcpts", JSON_ARRAY);
    get(msg, "trace", JSON_ARRAY);
    assert_null(json_object_get(msg, "body_base64"));
    json_decref(j);
    last = fx_last(&F, NULL);
    assert_false(last.body);

    j = call_ok("queue show 01HF3ZK8Q2-3 --body");
    get(get(j, "message", JSON_OBJECT), "body_base64", JSON_STRING);
    json_decref(j);
    assert_true(fx_last(&F, NULL).body);

    static const struct {
        const char *line;
        enum admin_cmd cmd;
        json_int_t affected;
    } mut[] = {
        {"queue delete 01HF3ZK8Q2-3", ADMIN_CMD_QUEUE_DELETE, 1},
        {"queue retry 01HF3ZK8Q2-3", ADMIN_CMD_QUEUE_RETRY, 1},
        {"queue retry all", ADMIN_CMD_QUEUE_RETRY, 7},
        {"queue hold 01HF3ZK8Q2-3", ADMIN_CMD_QUEUE_HOLD, 1},
        {"queue release 01HF3ZK8Q2-3", ADMIN_CMD_QUEUE_RELEASE, 1},
        {"flush", ADMIN_CMD_FLUSH, 1},
    };
    for (size_t i = 0; i < sizeof(mut) / sizeof(mut[0]); i++) {
        j = call_ok(mut[i].line);
        assert_int_equal(json_integer_value(get(j, "affected", JSON_INTEGER)), mut[i].affected);
        assert_int_equal(json_object_size(j), 2);
        json_decref(j);
        last = fx_last(&F, NULL);
        assert_int_equal(last.cmd, mut[i].cmd);
        if (mut[i].affected == 1 && mut[i].cmd != ADMIN_CMD_FLUSH)
            assert_string_equal(last.id, "01HF3ZK8Q2-3");
    }
}

static void test_control_shapes(void **state)
{
    (void)state;
    assert_non_null(fx_start(&F, NULL));
    static const char *const plain[] = {"drain", "resume"};
    for (size_t i = 0; i < 2; i++) {
        json_t *j = call_ok(plain[i]);
        assert_int_equal(json_object_size(j), 1); /* just "ok" */
        json_decref(j);
    }
    json_t *j = call_ok("reload");
    assert_string_equal(json_string_value(get(j, "config", JSON_STRING)), "/etc/cmtpd.conf");
    json_decref(j);
    j = call_ok("log level debug");
    assert_string_equal(json_string_value(get(j, "level", JSON_STRING)), "debug");
    json_decref(j);
    assert_int_equal(fx_last(&F, NULL).level, CMTP_LOG_DEBUG);

    j = call_ok("metrics");
    assert_string_equal(json_string_value(get(j, "content_type", JSON_STRING)),
                        "text/plain; version=0.0.4");
    const char *text = json_string_value(get(j, "text", JSON_STRING));
    assert_non_null(strstr(text, "# TYPE cmtp_connections_total counter\n"));
    assert_non_null(strstr(text, "cmtp_accept_seconds_bucket{worker=\"0\",le=\"+Inf\"} 11\n"));
    assert_non_null(strstr(text, "{reason=\"bad \\\"alpn\\\"\\\\\\n\"}"));
    json_decref(j);

    j = call_ok("version");
    assert_string_equal(json_string_value(get(j, "version", JSON_STRING)), "9.8.7-test");
    assert_int_equal(json_integer_value(get(j, "admin_protocol", JSON_INTEGER)),
                     ADMIN_PROTOCOL_VERSION);
    json_decref(j);

    j = call_ok("help");
    json_t *cmds = get(j, "commands", JSON_ARRAY);
    assert_int_equal(json_array_size(cmds), ADMIN_CMD_COUNT);
    for (size_t i = 0; i < json_array_size(cmds); i++) {
        json_t *c = json_array_get(cmds, i);
        get(c, "command", JSON_STRING);
        get(c, "usage", JSON_STRING);
        get(c, "summary", JSON_STRING);
        assert_true(json_is_boolean(json_object_get(c, "mutating")));
        assert_null(json_object_get(c, "help"));
    }
    json_decref(j);
    j = call_ok("help queue");
    cmds = get(j, "commands", JSON_ARRAY);
    assert_int_equal(json_array_size(cmds), 7);
    get(json_array_get(cmds, 0), "help", JSON_STRING);
    json_decref(j);
    j = call_ok("help queue show");
    cmds = get(j, "commands", JSON_ARRAY);
    assert_int_equal(json_array_size(cmds), 1);
    assert_string_equal(json_string_value(get(json_array_get(cmds, 0), "usage", JSON_STRING)),
                        "queue show ID [--body]");
    json_decref(j);
}

/* --- errors --------------------------------------------------------------------------------- */

static void test_errors(void **state)
{
    (void)state;
    assert_non_null(fx_start(&F, NULL));
    unsigned before, after;
    fx_last(&F, &before);
    call_err("frobnicate", "unknown command");
    call_err("queue", "queue needs a subcommand");
    call_err("queue show", "needs a queue id");
    call_err("queue show x", "bad queue id");
    call_err("queue list --limit 0", "bad --limit");
    call_err("log level loud", "bad log level");
    call_err("status please", "takes no arguments");
    call_err("metrics now", "takes no arguments");
    call_err("help nothing", "unknown help topic");
    /* Nothing above reached a callback. */
    fx_last(&F, &after);
    assert_int_equal(before, after);

    /* A callback's errno without a message gets a standard text. */
    call_err("queue show 0000000000-0", "not found");
    /* A callback's message is sent on one line, control characters replaced. */
    pthread_mutex_lock(&F.mu);
    F.fail_reload = true;
    pthread_mutex_unlock(&F.mu);
    json_t *j = call("reload");
    assert_string_equal(json_string_value(json_object_get(j, "error")),
                        "bad certificate \"x.pem\":?line 2?[31m");
    json_decref(j);
    /* A reply that lacks a documented field is refused by the server. */
    pthread_mutex_lock(&F.mu);
    F.bad_shape = true;
    pthread_mutex_unlock(&F.mu);
    call_err("stats", "internal error: the stats reply lacks \"total\" (object)");
}

static void test_not_supported(void **state)
{
    (void)state;
    struct admin_config c = {.path = F.path};
    struct admin_ops none = {0};
    char err[256];
    F.srv = admin_server_new(&c, &none, NULL, err, sizeof(err));
    assert_non_null(F.srv);
    static const char *const lines[] = {
        "stats",
        "queue summary",
        "queue list",
        "queue show A1-1",
        "queue delete A1-1",
        "queue retry all",
        "queue hold A1-1",
        "queue release A1-1",
        "flush",
        "drain",
        "resume",
        "reload",
        "log level info",
        "metrics",
        "delivery pause",
        "delivery resume",
    };
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        call_err(lines[i], "not supported");
    /* status still answers what the server knows. */
    json_t *j = call_ok("status");
    assert_string_equal(json_string_value(get(j, "version", JSON_STRING)), "unknown");
    get(j, "pid", JSON_INTEGER);
    get(j, "uptime_s", JSON_INTEGER);
    json_decref(j);
    j = call_ok("version");
    json_decref(j);
}

static void test_handle_line_direct(void **state)
{
    (void)state;
    assert_non_null(fx_start(&F, NULL));
    struct admin_buf out;
    admin_buf_init(&out, ADMIN_REPLY_MAX);
    assert_int_equal(admin_server_handle_line(F.srv, "queue retry all", 15, 0, &out), 0);
    assert_string_equal(out.data, "{\"ok\":true,\"affected\":7}\n");
    admin_buf_reset(&out);
    assert_int_equal(admin_server_handle_line(F.srv, "nope", 4, 0, &out), 0);
    assert_string_equal(out.data,
                        "{\"ok\":false,\"error\":\"unknown command (try help): \\\"nope\\\"\"}\n");
    admin_buf_cleanup(&out);
}

/* --- socket file ---------------------------------------------------------------------------- */

static void test_mode_0600(void **state)
{
    (void)state;
    mode_t old = umask(0); /* the configured mode must hold whatever the umask */
    struct admin_server *s = fx_start(&F, NULL);
    umask(old);
    assert_non_null(s);
    struct stat st;
    assert_int_equal(lstat(F.path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_uid, geteuid());
}

static void test_mode_0660_group(void **state)
{
    (void)state;
    struct group *g = getgrnam("nogroup");
    if (g == NULL)
        skip();
    gid_t gid = g->gr_gid;
    mode_t old = umask(077); /* a strict umask does not narrow the configured mode either */
    struct admin_config c = {.mode = 0660, .group = "nogroup"};
    struct admin_server *s = fx_start(&F, &c);
    umask(old);
    assert_non_null(s);
    struct stat st;
    assert_int_equal(lstat(F.path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0660);
    assert_int_equal(st.st_gid, gid);
}

static void test_bad_config(void **state)
{
    (void)state;
    struct admin_ops ops = fx_ops();
    char err[256];
    static const unsigned modes[] = {0700, 0640 | 0100, 0400, 0777, 01600, 0200, 0460};
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        struct admin_config c = {.path = F.path, .mode = modes[i]};
        assert_null(admin_server_new(&c, &ops, NULL, err, sizeof(err)));
        assert_non_null(strstr(err, "mode"));
    }
    struct admin_config c = {.path = F.path, .group = "no-such-group-cmtp"};
    assert_null(admin_server_new(&c, &ops, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "unknown group"));
    c = (struct admin_config){.path = F.path, .owner = "no-such-user-cmtp"};
    assert_null(admin_server_new(&c, &ops, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "unknown user"));
    char longp[200];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[sizeof(longp) - 1] = '\0';
    c = (struct admin_config){.path = longp};
    assert_null(admin_server_new(&c, &ops, NULL, err, sizeof(err)));
    c = (struct admin_config){.path = F.path, .clients_max = ADMIN_CLIENTS_MAX_MAX + 1};
    assert_null(admin_server_new(&c, &ops, NULL, err, sizeof(err)));
    /* Nothing was left behind. */
    struct stat st;
    assert_int_equal(lstat(F.path, &st), -1);
}

static void test_stale_socket(void **state)
{
    (void)state;
    /* A socket file nobody listens on is replaced. */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", F.path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    assert_non_null(fx_start(&F, NULL));
    json_decref(call_ok("version"));

    /* A live server is not replaced. */
    struct admin_config c = {.path = F.path};
    struct admin_ops ops = fx_ops();
    char err[256];
    assert_null(admin_server_new(&c, &ops, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "another process is listening"));
    json_decref(call_ok("version")); /* and still works */

    /* Freeing removes the socket; a regular file in its place is never removed. */
    admin_server_free(F.srv);
    F.srv = NULL;
    struct stat st;
    assert_int_equal(lstat(F.path, &st), -1);
    int rf = open(F.path, O_CREAT | O_WRONLY, 0600);
    assert_true(rf >= 0);
    close(rf);
    assert_null(admin_server_new(&c, &ops, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "not a socket"));
    assert_int_equal(lstat(F.path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    unlink(F.path);
    /* A symbolic link is not a socket either (even to one). */
    char other[160];
    snprintf(other, sizeof(other), "%s/other.sock", F.dir);
    assert_int_equal(symlink(other, F.path), 0);
    assert_null(admin_server_new(&c, &ops, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "not a socket"));
    unlink(F.path);
}

static void test_free_keeps_foreign_file(void **state)
{
    (void)state;
    assert_non_null(fx_start(&F, NULL));
    /* Someone replaced the socket file: freeing must not remove theirs. */
    unlink(F.path);
    int rf = open(F.path, O_CREAT | O_WRONLY, 0600);
    close(rf);
    admin_server_free(F.srv);
    F.srv = NULL;
    struct stat st;
    assert_int_equal(lstat(F.path, &st), 0);
    unlink(F.path);
}

/* --- other users ---------------------------------------------------------------------------- */

/* Child exit codes of as_user. */
#define CHILD_REFUSED 0 /* got the "permission denied" line, then EOF */
#define CHILD_EACCES 10 /* connect failed with EACCES */
#define CHILD_SERVED 20 /* got a real answer */
#define CHILD_BROKEN 30 /* anything else */

/* as_user forks a child that drops to |uid|/|gid| (with |groups|) and asks for `version` using
 * raw system calls only (the parent is multithreaded). Returns the child's CHILD_* code. */
static int as_user(uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (setgroups(ngroups, groups) < 0 || setgid(gid) < 0 || setuid(uid) < 0)
            _exit(CHILD_BROKEN + 1);
        if (getuid() != uid || geteuid() != uid)
            _exit(CHILD_BROKEN + 2);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        memcpy(sa.sun_path, F.path, strlen(F.path) + 1);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            _exit(errno == EACCES ? CHILD_EACCES : CHILD_BROKEN + 3);
        (void)!send(fd, "version\n", 8, MSG_NOSIGNAL);
        char buf[512];
        size_t n = 0;
        alarm(5);
        for (;;) {
            ssize_t r = recv(fd, buf + n, sizeof(buf) - 1 - n, 0);
            if (r <= 0)
                break;
            n += (size_t)r;
            if (n == sizeof(buf) - 1 || memchr(buf, '\n', n) != NULL)
                break;
        }
        buf[n] = '\0';
        if (strcmp(buf, ADMIN_REFUSED_REPLY) == 0) {
            /* ... and then the server closes. */
            ssize_t r = recv(fd, buf, sizeof(buf), 0);
            _exit(r == 0 ? CHILD_REFUSED : CHILD_BROKEN + 5);
        }
        if (strncmp(buf, "{\"ok\":true", 10) == 0)
            _exit(CHILD_SERVED);
        _exit(CHILD_BROKEN + 4);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static void test_other_uid_0600_eacces(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip();
    assert_non_null(fx_start(&F, NULL));
    /* The file mode stops another user before the server sees it. */
    assert_int_equal(as_user(NOBODY, NOBODY, NULL, 0), CHILD_EACCES);
    /* Root (and the daemon's uid, the same here) is served. */
    json_decref(call_ok("version"));
}

static void test_other_uid_0666_peercred(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip();
    struct admin_config c = {.mode = 0666, .group = "root"};
    assert_non_null(fx_start(&F, &c));
    struct stat st;
    assert_int_equal(lstat(F.path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0666);
    /* The file lets anyone connect: SO_PEERCRED refuses them. */
    assert_int_equal(as_user(NOBODY, NOBODY, NULL, 0), CHILD_REFUSED);
    assert_int_equal(as_user(4242, 4242, NULL, 0), CHILD_REFUSED);
    /* A member of the socket's group (root here) is served. */
    gid_t root_grp = 0;
    assert_int_equal(as_user(4242, 4242, &root_grp, 1), CHILD_SERVED);
    /* The refusal went through the ordinary client too. */
    json_decref(call_ok("version"));
}

static void test_group_members(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip();
    struct group *g = getgrnam("nogroup");
    if (g == NULL)
        skip();
    gid_t ng = g->gr_gid;
    struct admin_config c = {.mode = 0660, .group = "nogroup"};
    assert_non_null(fx_start(&F, &c));
    /* Primary group, then supplementary group (SO_PEERGROUPS). */
    assert_int_equal(as_user(NOBODY, ng, NULL, 0), CHILD_SERVED);
    assert_int_equal(as_user(4242, 4242, &ng, 1), CHILD_SERVED);
    /* Not a member: the file mode refuses. */
    assert_int_equal(as_user(4242, 4242, NULL, 0), CHILD_EACCES);
    admin_server_free(F.srv);
    F.srv = NULL;

    /* 0666 with a group: anyone reaches the server, which serves members only. */
    struct admin_config c2 = {.mode = 0666, .group = "nogroup"};
    assert_non_null(fx_start(&F, &c2));
    assert_int_equal(as_user(4242, 4242, &ng, 1), CHILD_SERVED);
    assert_int_equal(as_user(4242, 4242, NULL, 0), CHILD_REFUSED);
}

/* --- the log ------------------------------------------------------------------------------- */

struct sink {
    pthread_mutex_t mu;
    char text[16384];
    size_t len;
};

static void sink_fn(void *arg, enum cmtp_log_level level, const char *line, size_t len)
{
    struct sink *k = arg;
    (void)level;
    pthread_mutex_lock(&k->mu);
    if (k->len + len < sizeof(k->text)) {
        memcpy(k->text + k->len, line, len);
        k->len += len;
        k->text[k->len] = '\0';
    }
    pthread_mutex_unlock(&k->mu);
}

static bool sink_has(struct sink *k, const char *a, const char *b)
{
    bool found = false;
    pthread_mutex_lock(&k->mu);
    for (char *l = k->text; l != NULL && *l != '\0' && !found;) {
        char *nl = strchr(l, '\n');
        if (nl != NULL)
            *nl = '\0';
        found = strstr(l, a) != NULL && (b == NULL || strstr(l, b) != NULL);
        if (nl != NULL)
            *nl = '\n';
        l = nl != NULL ? nl + 1 : NULL;
    }
    pthread_mutex_unlock(&k->mu);
    return found;
}

static int as_user(uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups);

static void test_audit_log(void **state)
{
    (void)state;
    static struct sink k = {.mu = PTHREAD_MUTEX_INITIALIZER};
    struct cmtp_log lg;
    cmtp_log_init(&lg, CMTP_LOG_INFO, CMTP_LOG_FORMAT_KV, sink_fn, &k);
    struct admin_config c = {.mode = 0666, .log = &lg};
    assert_non_null(fx_start(&F, &c));
    assert_true(sink_has(&k, "event=admin-listening", "mode=0666"));
    json_decref(call_ok("queue delete 01HF3ZK8Q2-3"));
    json_decref(call_ok("status"));
    call_err("queue show 0000000000-0", "not found");
    /* Mutating commands are logged at info with the uid; read-only ones only at debug. */
    assert_true(sink_has(&k, "event=admin-command", "id=01HF3ZK8Q2-3"));
    assert_true(sink_has(&k, "event=admin-command", "uid=0"));
    assert_false(sink_has(&k, "event=admin-command", "status"));
    assert_false(sink_has(&k, "event=admin-command", "0000000000-0"));
    if (geteuid() == 0) {
        assert_int_equal(as_user(NOBODY, NOBODY, NULL, 0), 0 /* CHILD_REFUSED */);
        assert_true(sink_has(&k, "event=admin-refused", "uid=65534"));
    }
}

/* --- framing -------------------------------------------------------------------------------- */

static void test_line_too_long(void **state)
{
    (void)state;
    assert_non_null(fx_start(&F, NULL));
    char line[256];
    /* Exactly at the limit: 4095 octets and '\n' is a (bad) request, not too long. */
    char *big = malloc(ADMIN_LINE_MAX + 1024);
    memset(big, 'a', ADMIN_LINE_MAX + 1024);
    big[ADMIN_LINE_MAX - 1] = '\n';
    int fd = raw_connect(F.path);
    send_all(fd, big, ADMIN_LINE_MAX);
    assert_true(read_line(fd, line, sizeof(line), 3000) > 0);
    assert_non_null(strstr(line, "unknown command"));
    send_all(fd, "version\n", 8);
    assert_true(read_line(fd, line, sizeof(line), 3000) > 0);
    assert_non_null(strstr(line, "\"ok\":true"));
    /* One octet more: too long, then closed. */
    memset(big, 'a', ADMIN_LINE_MAX + 1024);
    send_all(fd, big, ADMIN_LINE_MAX + 1024);
    assert_true(read_line(fd, line, sizeof(line), 3000) > 0);
    assert_string_equal(line,
                        "{\"ok\":false,\"error\":\"request line too long (limit 4096 octets)\"}");
    wait_eof(fd, 3000);
    close(fd);
    free(big);
    json_decref(call_ok("version"));
}

static void test_pipelined_and_crlf(void **state)
{
    (void)state;
    assert_non_null(fx_start(&F, NULL));
    int fd = raw_connect(F.path);
    char line[4096];
    send_all(fd, "version\r\nbogus\nqueue retry all\n", 31);
    assert_true(read_line(fd, line, sizeof(line), 3000) > 0);
    assert_non_null(strstr(line, "\"version\":\"9.8.7-test\""));
    assert_true(read_line(fd, line, sizeof(line), 3000) > 0);
    assert_non_null(strstr(line, "unknown command"));
    assert_true(read_line(fd, line, sizeof(line), 3000) > 0);
    assert_string_equal(line, "{\"ok\":true,\"affected\":7}");
    /* A request split over several writes. */
    send_all(fd, "sta", 3);
    usleep(50 * 1000);
    send_all(fd, "ts\n", 3);
    assert_true(read_line(fd, line, sizeof(line), 3000) > 0);
    assert_non_null(strstr(line, "\"total\""));
    /* An empty line is an error, not a hang. */
    send_all(fd, "\n", 1);
    assert_true(read_line(fd, line, sizeof(line), 3000) > 0);
    assert_non_null(strstr(line, "empty request"));
    /* Half-close after the last request: the answer still comes, then EOF. */
    send_all(fd, "version\npartial", 15);
    shutdown(fd, SHUT_WR);
    assert_true(read_line(fd, line, sizeof(line), 3000) > 0);
    assert_non_null(strstr(line, "\"ok\":true"));
    assert_int_equal(read_line(fd, line, sizeof(line), 3000), -1);
    close(fd);
}

static void test_many_clients(void **state)
{
    (void)state;
    struct admin_config c = {.clients_max = 16};
    assert_non_null(fx_start(&F, &c));
    int fds[16];
    char line[4096];
    for (int i = 0; i < 16; i++) {
        fds[i] = raw_connect(F.path);
        send_all(fds[i], "version\n", 8);
    }
    for (int i = 0; i < 16; i++) {
        assert_true(read_line(fds[i], line, sizeof(line), 3000) > 0);
        assert_non_null(strstr(line, "\"ok\":true"));
    }
    /* The 17th is turned away with a line. */
    int extra = raw_connect(F.path);
    assert_true(read_line(extra, line, sizeof(line), 3000) > 0);
    assert_string_equal(line, "{\"ok\":false,\"error\":\"too many clients\"}");
    close(extra);
    /* Once one leaves, a new client is served. */
    close(fds[0]);
    uint64_t deadline = admin_loop_now_ms() + 3000;
    bool served = false;
    while (!served && admin_loop_now_ms() < deadline) {
        int fd = raw_connect(F.path);
        send_all(fd, "version\n", 8);
        if (read_line(fd, line, sizeof(line), 3000) > 0 && strstr(line, "\"ok\":true"))
            served = true;
        close(fd);
        if (!served)
            usleep(20 * 1000);
    }
    assert_true(served);
    /* Every remaining client is still served, interleaved. */
    for (int round = 0; round < 3; round++)
        for (int i = 1; i < 16; i++) {
            send_all(fds[i], "stats\n", 6);
            assert_true(read_line(fds[i], line, sizeof(line), 3000) > 0);
            assert_non_null(strstr(line, "\"ok\":true"));
        }
    for (int i = 1; i < 16; i++)
        close(fds[i]);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    struct admin_config c = {.idle_timeout_ms = 300};
    assert_non_null(fx_start(&F, &c));
    int quiet = raw_connect(F.path);
    int busy = raw_connect(F.path);
    char line[4096];
    uint64_t t0 = admin_loop_now_ms();
    /* |busy| stays active past the timeout. */
    for (int i = 0; i < 5; i++) {
        usleep(100 * 1000);
        send_all(busy, "version\n", 8);
        assert_true(read_line(busy, line, sizeof(line), 3000) > 0);
    }
    assert_true(read_line(quiet, line, sizeof(line), 3000) > 0);
    assert_string_equal(line, "{\"ok\":false,\"error\":\"idle timeout\"}");
    wait_eof(quiet, 3000);
    uint64_t dt = admin_loop_now_ms() - t0;
    assert_true(dt >= 290 && dt < 3000);
    send_all(busy, "version\n", 8);
    assert_true(read_line(busy, line, sizeof(line), 3000) > 0);
    assert_non_null(strstr(line, "\"ok\":true"));
    close(quiet);
    close(busy);
}

static void test_free_with_clients(void **state)
{
    (void)state;
    assert_non_null(fx_start(&F, NULL));
    int a = raw_connect(F.path), b = raw_connect(F.path), c = raw_connect(F.path);
    char line[4096];
    send_all(a, "version\n", 8);
    assert_true(read_line(a, line, sizeof(line), 3000) > 0);
    send_all(b, "stat", 4); /* a partial request */
    usleep(50 * 1000);
    uint64_t t0 = admin_loop_now_ms();
    admin_server_free(F.srv);
    F.srv = NULL;
    assert_true(admin_loop_now_ms() - t0 < 2000);
    wait_eof(a, 2000);
    wait_eof(b, 2000);
    wait_eof(c, 2000);
    struct stat st;
    assert_int_equal(lstat(F.path, &st), -1);
    assert_int_equal(errno, ENOENT);
    close(a);
    close(b);
    close(c);
}

/* slow_client keeps calling `stats` on the fixture until told to stop. */
static atomic_int slow_stop;
static void *slow_client(void *arg)
{
    (void)arg;
    struct admin_buf reply;
    char err[256];
    admin_buf_init(&reply, 1 << 20);
    while (!atomic_load(&slow_stop))
        admin_client_call(F.path, "stats", 2000, &reply, err, sizeof(err));
    admin_buf_cleanup(&reply);
    return NULL;
}

static void test_free_during_slow_callback(void **state)
{
    (void)state;
    assert_non_null(fx_start(&F, NULL));
    pthread_mutex_lock(&F.mu);
    F.slow_ms = 100;
    pthread_mutex_unlock(&F.mu);
    pthread_t t;
    atomic_store(&slow_stop, 0);
    assert_int_equal(pthread_create(&t, NULL, slow_client, NULL), 0);
    usleep(150 * 1000);
    admin_server_free(F.srv); /* waits for the running callback, then stops */
    F.srv = NULL;
    atomic_store(&slow_stop, 1);
    pthread_join(t, NULL);
}

/* --- admin_wait ----------------------------------------------------------------------------- */

struct task {
    struct admin_wait *w;
    unsigned i;
    unsigned delay_ms;
};

static void *task_main(void *arg)
{
    struct task *t = arg;
    usleep(t->delay_ms * 1000u);
    int *slot = admin_wait_slot(t->w, t->i);
    *slot = (int)(t->i * 10 + 1);
    admin_wait_done(t->w, t->i);
    return NULL;
}

static atomic_int slot_frees;
static void count_free(void *slot)
{
    (void)slot;
    atomic_fetch_add(&slot_frees, 1);
}

static void test_admin_wait(void **state)
{
    (void)state;
    pthread_t th[4];
    struct task tasks[4];

    /* All tasks answer: gather every slot. */
    atomic_store(&slot_frees, 0);
    struct admin_wait *w = admin_wait_new(4, sizeof(int), count_free);
    assert_non_null(w);
    for (unsigned i = 0; i < 4; i++) {
        tasks[i] = (struct task){w, i, 10 * i};
        pthread_create(&th[i], NULL, task_main, &tasks[i]);
    }
    assert_int_equal(admin_wait_wait_ms(w, 3000), 0);
    for (unsigned i = 0; i < 4; i++) {
        assert_true(admin_wait_is_done(w, i));
        assert_int_equal(*(int *)admin_wait_slot(w, i), (int)(i * 10 + 1));
    }
    admin_wait_release(w);
    for (unsigned i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&slot_frees), 4);

    /* One task is late: the waiter times out, reads what came, leaves; the late task finishes
     * later and the rendezvous is freed then (ASan checks there is no use after free). */
    atomic_store(&slot_frees, 0);
    w = admin_wait_new(2, sizeof(int), count_free);
    tasks[0] = (struct task){w, 0, 0};
    tasks[1] = (struct task){w, 1, 300};
    pthread_create(&th[0], NULL, task_main, &tasks[0]);
    pthread_create(&th[1], NULL, task_main, &tasks[1]);
    uint64_t t0 = admin_loop_now_ms();
    usleep(50 * 1000);
    assert_int_equal(admin_wait_wait_ms(w, 50), -ETIMEDOUT);
    assert_true(admin_loop_now_ms() - t0 < 290);
    assert_true(admin_wait_is_done(w, 0));
    assert_false(admin_wait_is_done(w, 1));
    assert_int_equal(*(int *)admin_wait_slot(w, 0), 1);
    admin_wait_release(w);
    assert_int_equal(atomic_load(&slot_frees), 0); /* still referenced by the late task */
    pthread_join(th[0], NULL);
    pthread_join(th[1], NULL);
    assert_int_equal(atomic_load(&slot_frees), 2);

    /* A task that could not be posted is ended by the poster; double done is ignored. */
    w = admin_wait_new(1, 0, NULL);
    admin_wait_done(w, 0);
    assert_int_equal(admin_wait_wait_ms(w, 0), 0);
    assert_null(admin_wait_slot(w, 1));
    admin_wait_release(w);
    assert_null(admin_wait_new(0, 8, NULL));
    assert_null(admin_wait_new(70000, 8, NULL));
    admin_wait_release(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_status_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uptime_from_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_shapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_control_shapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_supported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handle_line_direct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode_0600, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode_0660_group, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_keeps_foreign_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_uid_0600_eacces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_uid_0666_peercred, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_members, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_log, setup, teardown),
        cmocka_unit_test_setup_teardown(test_line_too_long, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_and_crlf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_during_slow_callback, setup, teardown),
        cmocka_unit_test(test_admin_wait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
