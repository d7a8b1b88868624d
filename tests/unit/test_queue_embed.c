/* tests/unit/test_queue_embed.c — the embedded redis-server supervisor: config written, socket
 * private (0700), AOF with fsync always, adoption of a running server, stop leaves no process,
 * and the failure paths. */
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "queue/redis_embed.h"

static char base[128];
static pid_t started;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    snprintf(base, sizeof(base), "/tmp/cmtp-embed-XXXXXX");
    return mkdtemp(base) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (started > 0)
        redis_embed_stop(started);
    started = 0;
    nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static char *config_get(redisContext *c, const char *name)
{
    redisReply *r = redisCommand(c, "CONFIG GET %s", name); /* test-only literal names */
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 2);
    char *v = strdup(r->element[1]->str);
    freeReplyObject(r);
    return v;
}

static void expect_config(redisContext *c, const char *name, const char *want)
{
    char *v = config_get(c, name);
    assert_string_equal(v, want);
    free(v);
}

static void test_start_stop(void **state)
{
    (void)state;
    char dir[256], sock[128], err[256];
    struct stat st;
    pid_t pid = 0, pid2 = 0;

    snprintf(dir, sizeof(dir), "%s/state/redis", base);
    snprintf(err, sizeof(err), "%s/state", base);
    assert_int_equal(mkdir(err, 0755), 0);
    assert_int_equal(redis_embed_start(NULL, dir, sock, sizeof(sock), &pid, err, sizeof(err)), 0);
    started = pid;
    assert_true(pid > 0);
    assert_true(redis_embed_alive(pid));
    /* The folder is private, the socket is the only door and is owner-only. */
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(lstat(sock, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_non_null(strstr(sock, "/state/redis/redis.sock"));

    redisContext *c = redisConnectUnix(sock);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    expect_config(c, "appendonly", "yes");
    expect_config(c, "appendfsync", "always");
    expect_config(c, "port", "0");
    expect_config(c, "save", "");
    expect_config(c, "maxmemory-policy", "noeviction");
    expect_config(c, "unixsocketperm", "700");
    redisReply *r = redisCommand(c, "SET embed-key v1");
    assert_non_null(r);
    freeReplyObject(r);
    redisFree(c);

    /* A second start on the same folder adopts the running server. */
    char sock2[128];
    assert_int_equal(redis_embed_start(NULL, dir, sock2, sizeof(sock2), &pid2, err, sizeof(err)),
                     0);
    assert_int_equal(pid2, pid);
    assert_string_equal(sock2, sock);

    /* Stop: the process is gone and reaped; the socket removed. */
    assert_int_equal(redis_embed_stop(pid), 0);
    started = 0;
    assert_false(redis_embed_alive(pid));
    assert_int_equal(kill(pid, 0), -1);
    assert_int_equal(errno, ESRCH);
    assert_int_equal(waitpid(pid, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
    assert_int_not_equal(access(sock, F_OK), 0);
    /* Stopping again is harmless. */
    assert_int_equal(redis_embed_stop(pid), 0);

    /* A restart finds what was written (AOF). */
    assert_int_equal(
        redis_embed_start("redis-server", dir, sock, sizeof(sock), &pid, err, sizeof(err)), 0);
    started = pid;
    c = redisConnectUnix(sock);
    assert_non_null(c);
    r = redisCommand(c, "GET embed-key");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "v1");
    freeReplyObject(r);
    redisFree(c);
    assert_int_equal(redis_embed_stop(pid), 0);
    started = 0;
    assert_false(redis_embed_alive(pid));
}

static void test_failures(void **state)
{
    (void)state;
    char dir[256], sock[128], err[256];
    pid_t pid = 123;

    snprintf(dir, sizeof(dir), "%s/has space", base);
    assert_int_equal(redis_embed_start(NULL, dir, sock, sizeof(sock), &pid, err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(pid, 0);
    assert_true(strlen(err) > 0);
    snprintf(dir, sizeof(dir), "%s/q\"uote", base);
    assert_int_equal(redis_embed_start(NULL, dir, sock, sizeof(sock), &pid, err, sizeof(err)),
                     -EINVAL);
    snprintf(dir, sizeof(dir), "%s/%0100d", base, 0);
    assert_int_equal(redis_embed_start(NULL, dir, sock, sizeof(sock), &pid, err, sizeof(err)),
                     -ENAMETOOLONG);
    snprintf(dir, sizeof(dir), "%s/d1", base);
    assert_int_equal(redis_embed_start(NULL, dir, sock, 8, &pid, err, sizeof(err)), -ENOSPC);
    /* A binary that does not exist, and one that exits at once: an error, no process. */
    assert_true(redis_embed_start("/nonexistent/redis-server", dir, sock, sizeof(sock), &pid, err,
                                  sizeof(err)) < 0);
    assert_int_equal(pid, 0);
    assert_non_null(strstr(err, "/nonexistent/redis-server"));
    assert_int_equal(
        redis_embed_start("/bin/false", dir, sock, sizeof(sock), &pid, err, sizeof(err)), -ECHILD);
    assert_non_null(strstr(err, "redis.log"));
    assert_int_equal(pid, 0);
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1); /* nothing left to reap */
    assert_int_equal(errno, ECHILD);
    assert_int_equal(redis_embed_stop(0), -EINVAL);
    assert_int_equal(redis_embed_stop(-5), -EINVAL);
    assert_false(redis_embed_alive(0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_start_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failures, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
