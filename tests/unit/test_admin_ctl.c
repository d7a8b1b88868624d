/* tests/unit/test_admin_ctl.c — cmtpctl: the human rendering of every reply shape (exact text),
 * terminal-safe escaping, local help, and the exit codes 0/1/2/3 — in-process against a real
 * admin server, and through the built binary (fork/exec of $CMTPCTL_BIN, skipped when unset).
 * Not the server itself (test_admin_server.c). */
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "admin/client.h"
#include "admin/ctl.h"
#include "admin/loop.h"
#include "tests/unit/test_admin_fixture.h"

static struct fx F;

static int setup(void **state)
{
    (void)state;
    if (fx_dir(&F) < 0 || fx_start(&F, NULL) == NULL)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    fx_done(&F);
    return 0;
}

/* render formats |json| (a reply) for |cmd| and compares with |want|. */
static void render(enum admin_cmd cmd, const char *json, const char *want)
{
    json_error_t je;
    json_t *j = json_loads(json, 0, &je);
    if (j == NULL)
        print_error("bad test JSON: %s\n", je.text);
    assert_non_null(j);
    struct admin_buf out;
    admin_buf_init(&out, 1 << 20);
    assert_int_equal(admin_ctl_format(&out, cmd, j), 0);
    if (strcmp(out.data ? out.data : "", want) != 0)
        print_error("got:\n%s\nwanted:\n%s\n", out.data ? out.data : "", want);
    assert_string_equal(out.data ? out.data : "", want);
    admin_buf_cleanup(&out);
    json_decref(j);
}

static void test_format_status(void **state)
{
    (void)state;
    render(ADMIN_CMD_STATUS,
           "{\"ok\":true,\"version\":\"0.1.0\",\"pid\":42,\"uptime_s\":93784,\"workers\":2,"
           "\"listeners\":[{\"address\":\"0.0.0.0:4465\",\"proto\":\"cmtp/1\"}],"
           "\"redis\":{\"state\":\"connected\",\"address\":\"unix:/r.sock\"},"
           "\"draining\":false,\"tags\":[\"a\",\"b\"],\"none\":null,\"empty\":[]}",
           "version: 0.1.0\n"
           "pid: 42\n"
           "uptime_s: 93784 (1d02h03m)\n"
           "workers: 2\n"
           "listeners[0].address: 0.0.0.0:4465\n"
           "listeners[0].proto: cmtp/1\n"
           "redis.state: connected\n"
           "redis.address: unix:/r.sock\n"
           "draining: no\n"
           "tags: a, b\n"
           "none: -\n"
           "empty: -\n");
}

static void test_format_stats(void **state)
{
    (void)state;
    render(ADMIN_CMD_STATS,
           "{\"ok\":true,\"workers\":["
           "{\"id\":0,\"connections\":3,\"handshakes\":30,\"redis\":{\"inflight\":1}},"
           "{\"id\":1,\"connections\":12345,\"handshakes\":5,\"redis\":{\"inflight\":0},"
           "\"extra\":7}],"
           "\"total\":{\"connections\":12348,\"handshakes\":35,\"redis\":{\"inflight\":1},"
           "\"latency_ms\":1.5}}",
           "COUNTER         TOTAL  W0     W1\n"
           "connections     12348   3  12345\n"
           "handshakes         35  30      5\n"
           "redis.inflight      1   1      0\n"
           "latency_ms        1.5   -      -\n"
           "extra               -   -      7\n");
    render(ADMIN_CMD_STATS, "{\"ok\":true,\"workers\":[],\"total\":{}}", "no statistics\n");
}

static void test_format_queue(void **state)
{
    (void)state;
    render(ADMIN_CMD_QUEUE_SUMMARY,
           "{\"ok\":true,\"destinations\":["
           "{\"dest\":\"example.org\",\"count\":3,\"oldest_s\":3723,\"next_attempt_s\":12},"
           "{\"dest\":\"b\\u00fccher.test\",\"count\":12000,\"oldest_s\":5,"
           "\"next_attempt_s\":0}]}",
           "DEST         COUNT    OLDEST  NEXT-ATTEMPT\n"
           "example.org      3  1h02m03s           12s\n"
           "b\xc3\xbc"
           "cher.test  12000        5s            0s\n");
    render(ADMIN_CMD_QUEUE_SUMMARY, "{\"ok\":true,\"destinations\":[]}", "queue is empty\n");
    render(ADMIN_CMD_QUEUE_LIST,
           "{\"ok\":true,\"messages\":["
           "{\"id\":\"01HF-3\",\"dest\":\"a.test\",\"state\":\"deferred\",\"size\":1234},"
           "{\"id\":\"01HG-12\",\"dest\":\"bb.test\",\"state\":\"held\",\"size\":5,"
           "\"error\":\"421 try\\u001b[2Jlater\"}],\"truncated\":true}",
           "ID       DEST     STATE     SIZE  ERROR\n"
           "01HF-3   a.test   deferred  1234  -\n"
           "01HG-12  bb.test  held         5  421 try\\x1b[2Jlater\n"
           "(2 shown; more match: raise --limit or narrow the filter)\n");
    render(ADMIN_CMD_QUEUE_LIST, "{\"ok\":true,\"messages\":[],\"truncated\":false}",
           "no messages\n");
}

static void test_format_show(void **state)
{
    (void)state;
    render(ADMIN_CMD_QUEUE_SHOW,
           "{\"ok\":true,\"message\":{\"id\":\"01HF-3\",\"from\":\"a@x.test\","
           "\"rcpts\":[\"b@y.test\",\"c@y.test\"],\"trace\":[{\"by\":\"mx.x.test\"}],"
           "\"body_base64\":\"SGVsbG8NCldvcmxkG1sySgo=\"}}",
           "id: 01HF-3\n"
           "from: a@x.test\n"
           "rcpts: b@y.test, c@y.test\n"
           "trace[0].by: mx.x.test\n"
           "--- body (17 octets) ---\n"
           "Hello\n"
           "World\\x1b[2J\n"
           "--- end of body ---\n");
    render(ADMIN_CMD_QUEUE_SHOW, "{\"ok\":true,\"message\":{\"id\":\"x\",\"body_base64\":\"*\"}}",
           "id: x\nbody: (not valid base64)\n");
}

static void test_format_other(void **state)
{
    (void)state;
    render(ADMIN_CMD_QUEUE_DELETE, "{\"ok\":true,\"affected\":1}", "affected: 1\n");
    render(ADMIN_CMD_DRAIN, "{\"ok\":true}", "ok\n");
    render(ADMIN_CMD_LOG_LEVEL, "{\"ok\":true,\"level\":\"debug\"}", "level: debug\n");
    render(ADMIN_CMD_METRICS,
           "{\"ok\":true,\"content_type\":\"text/plain; version=0.0.4\","
           "\"text\":\"# TYPE a gauge\\na 1\\n\"}",
           "# TYPE a gauge\na 1\n");
    render(ADMIN_CMD_VERSION, "{\"ok\":true,\"version\":\"0.1.0\",\"admin_protocol\":1}",
           "cmtpd 0.1.0 (admin protocol 1)\n");
    render(ADMIN_CMD_HELP,
           "{\"ok\":true,\"commands\":[{\"command\":\"status\",\"usage\":\"status\","
           "\"summary\":\"s\"}]}",
           "  status\n      s\n");
    /* Keys from the daemon are escaped too. */
    render(ADMIN_CMD_RELOAD, "{\"ok\":true,\"k\\u0007ey\":\"v\\r\\nx\"}",
           "k\\x07ey: v\\x0d\\x0ax\n");
    /* Not an object: refused. */
    struct admin_buf out;
    admin_buf_init(&out, 1024);
    json_t *a = json_array();
    assert_int_equal(admin_ctl_format(&out, ADMIN_CMD_STATUS, a), -EINVAL);
    json_decref(a);
    admin_buf_cleanup(&out);
}

/* --- in-process runs ------------------------------------------------------------------------ */

struct run {
    int code;
    struct admin_buf out, err;
};

/* ctl runs admin_ctl_run with the NULL-terminated arguments after "cmtpctl". */
static void ctl(struct run *r, const char *env, ...)
{
    char *argv[32];
    int argc = 0;
    va_list ap;
    argv[argc++] = (char *)"cmtpctl";
    va_start(ap, env);
    for (const char *a = va_arg(ap, const char *); a != NULL; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    admin_buf_init(&r->out, ADMIN_CTL_OUT_MAX);
    admin_buf_init(&r->err, 1 << 16);
    r->code = admin_ctl_run(argc, argv, env, &r->out, &r->err);
    admin_buf_putc(&r->out, '\0');
    admin_buf_putc(&r->err, '\0');
}

static void run_free(struct run *r)
{
    admin_buf_cleanup(&r->out);
    admin_buf_cleanup(&r->err);
}

static void expect(struct run *r, int code, const char *out_has, const char *err_has)
{
    if (r->code != code || (out_has && !strstr(r->out.data, out_has)) ||
        (err_has && !strstr(r->err.data, err_has)))
        print_error("code %d (want %d)\nstdout:\n%s\nstderr:\n%s\n", r->code, code, r->out.data,
                    r->err.data);
    assert_int_equal(r->code, code);
    if (out_has)
        assert_non_null(strstr(r->out.data, out_has));
    if (err_has)
        assert_non_null(strstr(r->err.data, err_has));
    run_free(r);
}

static void test_run_ok(void **state)
{
    (void)state;
    struct run r;
    ctl(&r, NULL, "-s", F.path, "status", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "version: 9.8.7-test\n", NULL);
    ctl(&r, F.path, "status", NULL); /* from $CMTPCTL_SOCKET */
    expect(&r, ADMIN_CTL_EXIT_OK, "redis.state: connected\n", NULL);
    ctl(&r, "/nonexistent/x.sock", "--socket", F.path, "stats", NULL); /* -s wins */
    expect(&r, ADMIN_CTL_EXIT_OK, "COUNTER", NULL);
    ctl(&r, F.path, "--socket=/nonexistent", "stats", NULL);
    expect(&r, ADMIN_CTL_EXIT_CONNECT, NULL, "no admin socket at /nonexistent");
    ctl(&r, F.path, "queue", "list", "--dest", "x.test", "--limit", "1", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "x.test", NULL);
    ctl(&r, F.path, "queue", "summary", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "DEST", NULL);
    ctl(&r, F.path, "metrics", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "# TYPE cmtp_queue_depth gauge\ncmtp_queue_depth 42\n", NULL);
    ctl(&r, F.path, "queue", "retry", "all", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "affected: 7\n", NULL);

    /* --json prints the reply line as received, before or after the command. */
    ctl(&r, F.path, "--json", "queue", "retry", "all", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, NULL, NULL);
    ctl(&r, F.path, "queue", "retry", "all", "--json", NULL);
    assert_string_equal(r.out.data, "{\"ok\":true,\"affected\":7}\n");
    expect(&r, ADMIN_CTL_EXIT_OK, NULL, NULL);
    ctl(&r, F.path, "-j", "status", NULL);
    json_t *j = json_loads(r.out.data, 0, NULL);
    assert_non_null(j);
    assert_true(json_is_true(json_object_get(j, "ok")));
    json_decref(j);
    expect(&r, ADMIN_CTL_EXIT_OK, NULL, NULL);
}

static void test_run_errors(void **state)
{
    (void)state;
    struct run r;
    /* 1: the daemon answered an error. */
    ctl(&r, F.path, "queue", "show", "0000000000-0", NULL);
    expect(&r, ADMIN_CTL_EXIT_ERROR, NULL, "cmtpctl: not found\n");
    pthread_mutex_lock(&F.mu);
    F.fail_reload = true;
    pthread_mutex_unlock(&F.mu);
    ctl(&r, F.path, "reload", NULL);
    expect(&r, ADMIN_CTL_EXIT_ERROR, NULL, "bad certificate \"x.pem\":?line 2?[31m\n");
    ctl(&r, F.path, "--json", "reload", NULL);
    expect(&r, ADMIN_CTL_EXIT_ERROR, "{\"ok\":false,\"error\":\"bad certificate", NULL);

    /* 2: usage, nothing sent. */
    unsigned before, after;
    fx_last(&F, &before);
    ctl(&r, F.path, NULL);
    expect(&r, ADMIN_CTL_EXIT_USAGE, NULL, "usage: cmtpctl");
    ctl(&r, F.path, "frobnicate", NULL);
    expect(&r, ADMIN_CTL_EXIT_USAGE, NULL, "unknown command");
    ctl(&r, F.path, "queue", "show", NULL);
    expect(&r, ADMIN_CTL_EXIT_USAGE, NULL, "usage: cmtpctl queue show ID [--body]");
    ctl(&r, F.path, "queue", "list", "--limit", "0", NULL);
    expect(&r, ADMIN_CTL_EXIT_USAGE, NULL, "bad --limit");
    ctl(&r, F.path, "queue show A-1", NULL); /* one argument with spaces is not two */
    expect(&r, ADMIN_CTL_EXIT_USAGE, NULL, "cmtpctl:");
    ctl(&r, F.path, "log", "level", "", NULL);
    expect(&r, ADMIN_CTL_EXIT_USAGE, NULL, "cmtpctl:");
    ctl(&r, F.path, "-x", "status", NULL);
    expect(&r, ADMIN_CTL_EXIT_USAGE, NULL, "unknown option -x");
    ctl(&r, F.path, "-s", NULL);
    expect(&r, ADMIN_CTL_EXIT_USAGE, NULL, "needs a path");
    ctl(&r, F.path, "-t", "0", "status", NULL);
    expect(&r, ADMIN_CTL_EXIT_USAGE, NULL, "--timeout");
    ctl(&r, F.path, "help", "frob", NULL);
    expect(&r, ADMIN_CTL_EXIT_USAGE, NULL, "no such command");
    fx_last(&F, &after);
    assert_int_equal(before, after);

    /* 3: no answer. */
    char stale[100];
    snprintf(stale, sizeof(stale), "%s/stale.sock", F.dir);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", stale);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    ctl(&r, stale, "status", NULL);
    expect(&r, ADMIN_CTL_EXIT_CONNECT, NULL, "nobody listens on");
    ctl(&r, "/nonexistent/cmtpd.sock", "status", NULL);
    expect(&r, ADMIN_CTL_EXIT_CONNECT, NULL, "no admin socket at /nonexistent/cmtpd.sock");

    /* A server that accepts and never answers: the timeout. */
    char mute[100];
    snprintf(mute, sizeof(mute), "%s/mute.sock", F.dir);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", mute);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 4), 0);
    uint64_t t0 = admin_loop_now_ms();
    ctl(&r, mute, "-t", "1", "status", NULL);
    assert_true(admin_loop_now_ms() - t0 >= 900);
    expect(&r, ADMIN_CTL_EXIT_CONNECT, NULL, "timed out");
    close(fd);
}

static void test_run_help(void **state)
{
    (void)state;
    struct run r;
    ctl(&r, NULL, "--help", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "Exit status:\n  0  the daemon answered ok", NULL);
    ctl(&r, NULL, "-h", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "  3  no answer", NULL);
    ctl(&r, NULL, "help", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "  queue show ID [--body]", NULL);
    ctl(&r, NULL, "help", "queue", "show", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "usage: cmtpctl queue show ID [--body]\n", NULL);
    ctl(&r, NULL, "queue", "show", "--help", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "The body is not shown unless --body is given", NULL);
    ctl(&r, NULL, "queue", "show", "X-1", "--help", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "usage: cmtpctl queue show", NULL);
    ctl(&r, NULL, "queue", "--help", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "usage: cmtpctl queue release ID", NULL);
    ctl(&r, NULL, "reload", "--help", NULL);
    expect(&r, ADMIN_CTL_EXIT_OK, "logged with the caller's uid", NULL);
    /* Every command has help. */
    for (unsigned c = 0; c < ADMIN_CMD_COUNT; c++) {
        struct admin_buf b;
        admin_buf_init(&b, 1 << 16);
        assert_int_equal(admin_ctl_help(&b, admin_cmd_info_get((enum admin_cmd)c)->name), 0);
        assert_non_null(strstr(b.data, "usage: cmtpctl "));
        admin_buf_cleanup(&b);
    }
}

/* --- the built binary ----------------------------------------------------------------------- */

/* exec_as runs $CMTPCTL_BIN with |args| (NULL-terminated, after argv[0]) and the environment
 * CMTPCTL_SOCKET=|sock|, as user |uid| (group |uid| too) when it is not 0, capturing stdout;
 * returns the exit code. */
static int exec_as(uid_t uid, const char *bin, const char *sock, char *out, size_t cap,
                   const char **args)
{
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char *argv[16];
        int n = 0;
        argv[n++] = (char *)bin;
        for (; args[n - 1] != NULL && n < 15; n++)
            argv[n] = (char *)args[n - 1];
        argv[n] = NULL;
        char envs[200];
        snprintf(envs, sizeof(envs), "CMTPCTL_SOCKET=%s", sock);
        char *envp[] = {envs, NULL};
        if (uid != 0 && (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0))
            _exit(126);
        dup2(p[1], 1);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        execve(bin, argv, envp);
        _exit(127);
    }
    close(p[1]);
    size_t n = 0;
    for (;;) {
        ssize_t r = read(p[0], out + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    out[n] = '\0';
    close(p[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static int exec_ctl(const char *bin, const char *sock, char *out, size_t cap, const char **args)
{
    return exec_as(0, bin, sock, out, cap, args);
}

static void test_binary(void **state)
{
    (void)state;
    const char *bin = getenv("CMTPCTL_BIN");
    if (bin == NULL || bin[0] == '\0')
        skip();
    char out[65536];
    const char *a_status[] = {"status", NULL};
    assert_int_equal(exec_ctl(bin, F.path, out, sizeof(out), a_status), 0);
    assert_non_null(strstr(out, "version: 9.8.7-test\n"));
    const char *a_json[] = {"--json", "queue", "retry", "all", NULL};
    assert_int_equal(exec_ctl(bin, F.path, out, sizeof(out), a_json), 0);
    assert_string_equal(out, "{\"ok\":true,\"affected\":7}\n");
    const char *a_err[] = {"queue", "show", "0000000000-0", NULL};
    assert_int_equal(exec_ctl(bin, F.path, out, sizeof(out), a_err), 1);
    const char *a_usage[] = {"queue", "show", "nope", NULL};
    assert_int_equal(exec_ctl(bin, F.path, out, sizeof(out), a_usage), 2);
    assert_int_equal(exec_ctl(bin, "/nonexistent.sock", out, sizeof(out), a_status), 3);
    const char *a_help[] = {"--help", NULL};
    assert_int_equal(exec_ctl(bin, F.path, out, sizeof(out), a_help), 0);
    assert_non_null(strstr(out, "Exit status:"));
    const char *a_metrics[] = {"metrics", NULL};
    assert_int_equal(exec_ctl(bin, F.path, out, sizeof(out), a_metrics), 0);
    assert_non_null(strstr(out, "cmtp_accept_seconds_count{worker=\"0\"} 11\n"));

    /* Another user: refused by the file mode (0600), then by SO_PEERCRED (0666): both exit 3. */
    if (geteuid() != 0 || access(bin, X_OK) != 0)
        return;
    assert_int_equal(exec_as(65534, bin, F.path, out, sizeof(out), a_status), 3);
    admin_server_free(F.srv);
    struct admin_config c = {.mode = 0666};
    assert_non_null(fx_start(&F, &c));
    assert_int_equal(exec_as(65534, bin, F.path, out, sizeof(out), a_status), 3);
    assert_int_equal(exec_as(0, bin, F.path, out, sizeof(out), a_status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_status),
        cmocka_unit_test(test_format_stats),
        cmocka_unit_test(test_format_queue),
        cmocka_unit_test(test_format_show),
        cmocka_unit_test(test_format_other),
        cmocka_unit_test_setup_teardown(test_run_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_help, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binary, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
