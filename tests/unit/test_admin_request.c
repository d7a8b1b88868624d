/* tests/unit/test_admin_request.c — the admin request-line parser: every command with its
 * arguments, strict framing (single spaces, printable ASCII, length), clear errors, and the
 * help topic matcher. Not the socket server (test_admin_server.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/request.h"

static struct admin_request parse_ok(const char *line)
{
    struct admin_request r;
    char err[ADMIN_ERR_MAX];
    int rc = admin_request_parse(&r, line, strlen(line), err, sizeof(err));
    if (rc != 0)
        print_error("unexpected error for \"%s\": %s\n", line, err);
    assert_int_equal(rc, 0);
    return r;
}

/* parse_bad checks that |line| is refused with a message containing |want|. */
static void parse_bad(const char *line, size_t len, const char *want)
{
    struct admin_request r;
    char err[ADMIN_ERR_MAX];
    int rc = admin_request_parse(&r, line, len, err, sizeof(err));
    if (rc == 0)
        print_error("accepted: \"%.*s\"\n", (int)len, line);
    assert_int_equal(rc, -EINVAL);
    assert_true(strlen(err) > 0 && strlen(err) < sizeof(err));
    if (strstr(err, want) == NULL)
        print_error("error for \"%.*s\" is \"%s\", wanted \"%s\"\n", (int)len, line, err, want);
    assert_non_null(strstr(err, want));
    /* The message is one printable line. */
    for (const char *p = err; *p; p++)
        assert_true(*p >= 0x20 && *p < 0x7f);
}

static void test_every_command(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        enum admin_cmd cmd;
    } cases[] = {
        {"help", ADMIN_CMD_HELP},
        {"version", ADMIN_CMD_VERSION},
        {"status", ADMIN_CMD_STATUS},
        {"stats", ADMIN_CMD_STATS},
        {"queue summary", ADMIN_CMD_QUEUE_SUMMARY},
        {"queue list", ADMIN_CMD_QUEUE_LIST},
        {"queue show 0123ABC-3", ADMIN_CMD_QUEUE_SHOW},
        {"queue delete 0123ABC-3", ADMIN_CMD_QUEUE_DELETE},
        {"queue retry 0123ABC-3", ADMIN_CMD_QUEUE_RETRY},
        {"queue hold 0123ABC-3", ADMIN_CMD_QUEUE_HOLD},
        {"queue release 0123ABC-3", ADMIN_CMD_QUEUE_RELEASE},
        {"flush", ADMIN_CMD_FLUSH},
        {"drain", ADMIN_CMD_DRAIN},
        {"resume", ADMIN_CMD_RESUME},
        {"reload", ADMIN_CMD_RELOAD},
        {"log level debug", ADMIN_CMD_LOG_LEVEL},
        {"metrics", ADMIN_CMD_METRICS},
        {"delivery pause", ADMIN_CMD_DELIVERY_PAUSE},
        {"delivery resume", ADMIN_CMD_DELIVERY_RESUME},
    };
    bool seen[ADMIN_CMD_COUNT] = {false};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct admin_request r = parse_ok(cases[i].line);
        assert_int_equal(r.cmd, cases[i].cmd);
        seen[r.cmd] = true;
        const struct admin_cmd_info *ci = admin_cmd_info_get(r.cmd);
        assert_non_null(ci);
        assert_int_equal(ci->cmd, r.cmd);
        assert_true(strncmp(cases[i].line, ci->name, strlen(ci->name)) == 0);
        assert_true(strlen(ci->summary) > 0 && strlen(ci->help) > 0);
    }
    for (unsigned c = 0; c < ADMIN_CMD_COUNT; c++)
        assert_true(seen[c]);
    assert_null(admin_cmd_info_get(ADMIN_CMD_COUNT));
}

static void test_arguments(void **state)
{
    (void)state;
    struct admin_request r = parse_ok("queue show 0123abc-3 --body");
    assert_string_equal(r.id, "0123ABC-3"); /* upper-cased */
    assert_true(r.body);
    r = parse_ok("queue show 01HF3ZK8Q2ABCDEFGHJKMN-1023");
    assert_string_equal(r.id, "01HF3ZK8Q2ABCDEFGHJKMN-1023");
    assert_false(r.body);
    r = parse_ok("queue retry all");
    assert_true(r.all);
    assert_string_equal(r.id, "");
    r = parse_ok("queue list");
    assert_int_equal(r.limit, ADMIN_LIST_LIMIT_DEFAULT);
    assert_int_equal(r.state, ADMIN_QSTATE_ANY);
    assert_string_equal(r.dest, "");
    r = parse_ok("queue list --limit 5 --dest Example.ORG --state deferred");
    assert_int_equal(r.limit, 5);
    assert_string_equal(r.dest, "example.org");
    assert_int_equal(r.state, ADMIN_QSTATE_DEFERRED);
    r = parse_ok("queue list --state held");
    assert_int_equal(r.state, ADMIN_QSTATE_HELD);
    r = parse_ok("queue list --limit 10000 --dest [192.0.2.1]");
    assert_int_equal(r.limit, 10000);
    assert_string_equal(r.dest, "[192.0.2.1]");
    r = parse_ok("log level ERROR");
    assert_int_equal(r.level, CMTP_LOG_ERROR);
    r = parse_ok("log level warn");
    assert_int_equal(r.level, CMTP_LOG_WARN);
    r = parse_ok("help queue");
    assert_string_equal(r.topic, "queue");
    r = parse_ok("help queue show");
    assert_string_equal(r.topic, "queue show");
    r = parse_ok("help status");
    assert_string_equal(r.topic, "status");
    for (unsigned s = 0; s < ADMIN_QSTATE_COUNT; s++)
        assert_non_null(admin_qstate_name((enum admin_qstate)s));
    assert_null(admin_qstate_name(ADMIN_QSTATE_COUNT));
}

static void test_framing_errors(void **state)
{
    (void)state;
    parse_bad("", 0, "empty");
    parse_bad(" status", 7, "leading space");
    parse_bad("status ", 7, "trailing space");
    parse_bad("queue  summary", 14, "one space");
    parse_bad("status\r", 7, "invalid octet 0x0d");
    parse_bad("sta\ttus", 7, "invalid octet 0x09");
    parse_bad("status\0x", 8, "invalid octet 0x00");
    parse_bad("st\xc3\xa4tus", 7, "invalid octet 0xc3");
    parse_bad("a b c d e f g h i j k l m n o p q", 33, "too many arguments");
    char *big = malloc(ADMIN_LINE_MAX + 1);
    memset(big, 'a', ADMIN_LINE_MAX);
    parse_bad(big, ADMIN_LINE_MAX, "too long");
    parse_bad(big, ADMIN_LINE_MAX - 1, "unknown command");
    free(big);
    struct admin_request r;
    char err[ADMIN_ERR_MAX];
    assert_int_equal(admin_request_parse(&r, NULL, 0, err, sizeof(err)), -EINVAL);
    /* A zero-sized error buffer is allowed. */
    assert_int_equal(admin_request_parse(&r, "nope", 4, NULL, 0), -EINVAL);
}

static void test_command_errors(void **state)
{
    (void)state;
    parse_bad("Status", 6, "unknown command");
    parse_bad("frobnicate", 10, "\"frobnicate\"");
    parse_bad("queue", 5, "queue needs a subcommand");
    parse_bad("queue frob", 10, "unknown queue subcommand");
    parse_bad("log", 3, "log needs a subcommand");
    parse_bad("log verbose", 11, "unknown log subcommand");
    parse_bad("delivery", 8, "delivery needs a subcommand: pause, resume");
    parse_bad("delivery stop", 13, "unknown delivery subcommand");
    parse_bad("delivery pause now", 18, "delivery pause takes no arguments");
    parse_bad("status now", 10, "status takes no arguments");
    parse_bad("queue summary x", 15, "queue summary takes no arguments");
    parse_bad("metrics --all", 13, "takes no arguments");
    parse_bad("queue show", 10, "needs a queue id");
    parse_bad("queue show 0123ABC-3 --bodies", 29, "usage: queue show");
    parse_bad("queue show 0123ABC-3 --body x", 29, "usage: queue show");
    parse_bad("queue show 0123ABC", 18, "no -SHARD");
    parse_bad("queue show 0123ABC-", 19, "no -SHARD");
    parse_bad("queue show -3", 13, "bad queue id");
    parse_bad("queue show 01-23-4", 18, "bad queue id");
    parse_bad("queue show 0123ABC-12345", 24, "shard");
    parse_bad("queue show 01*3-1", 17, "bad queue id");
    parse_bad("queue show ab", 13, "length");
    parse_bad("queue show AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-1",
              81, "length");
    parse_bad("queue delete", 12, "usage: queue delete ID");
    parse_bad("queue delete all", 16, "no -SHARD");
    parse_bad("queue hold A-1 B-2", 18, "usage: queue hold ID");
    parse_bad("queue retry", 11, "usage: queue retry");
    parse_bad("queue retry ALL", 15, "no -SHARD");
    parse_bad("queue list --dest", 17, "needs a value");
    parse_bad("queue list --dest a --dest b", 28, "given twice");
    parse_bad("queue list --limit 0", 20, "bad --limit");
    parse_bad("queue list --limit 10001", 24, "bad --limit");
    parse_bad("queue list --limit 007", 22, "bad --limit");
    parse_bad("queue list --limit -1", 21, "bad --limit");
    parse_bad("queue list --limit 99999999999", 30, "bad --limit");
    parse_bad("queue list --state frozen", 25, "bad --state");
    parse_bad("queue list --state any", 22, "bad --state");
    parse_bad("queue list --dest a\"b", 21, "bad --dest");
    parse_bad("queue list --dest", 17, "needs a value");
    parse_bad("queue list --sort age", 21, "unknown option");
    parse_bad("queue list extra", 16, "unknown option");
    parse_bad("log level", 9, "usage: log level");
    parse_bad("log level loud", 14, "bad log level");
    parse_bad("log level info debug", 20, "usage: log level");
    parse_bad("help frob", 9, "unknown help topic");
    parse_bad("help que", 8, "unknown help topic");
    parse_bad("help queue show now", 19, "unknown help topic");
}

static void test_error_quotes_are_bounded(void **state)
{
    (void)state;
    char line[600];
    memset(line, 'x', sizeof(line));
    struct admin_request r;
    char err[ADMIN_ERR_MAX];
    assert_int_equal(admin_request_parse(&r, line, sizeof(line), err, sizeof(err)), -EINVAL);
    assert_true(strlen(err) < 80);
    assert_non_null(strstr(err, "...\""));
    /* A tiny error buffer truncates without overflow. */
    char small[8];
    assert_int_equal(admin_request_parse(&r, line, sizeof(line), small, sizeof(small)), -EINVAL);
    assert_int_equal(strlen(small), 7);
}

static void test_topics(void **state)
{
    (void)state;
    assert_true(admin_topic_matches("", ADMIN_CMD_STATUS));
    assert_true(admin_topic_matches("queue", ADMIN_CMD_QUEUE_LIST));
    assert_true(admin_topic_matches("queue list", ADMIN_CMD_QUEUE_LIST));
    assert_false(admin_topic_matches("queue list", ADMIN_CMD_QUEUE_SHOW));
    assert_false(admin_topic_matches("que", ADMIN_CMD_QUEUE_LIST));
    assert_false(admin_topic_matches("queue", ADMIN_CMD_STATUS));
    assert_false(admin_topic_matches("status", ADMIN_CMD_COUNT));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_command),
        cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_framing_errors),
        cmocka_unit_test(test_command_errors),
        cmocka_unit_test(test_error_quotes_are_bounded),
        cmocka_unit_test(test_topics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
