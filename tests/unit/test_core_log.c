/* tests/unit/test_core_log.c — structured log lines: kv and JSON escaping of hostile values,
 * truncation, level filtering, the default fd sink under threads. Not syslog routing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/addr.h"
#include "core/log.h"

/* 2023-11-14T22:13:20.123Z */
#define TS 1700000000123LL
#define TS_TEXT "2023-11-14T22:13:20.123Z"

static int fmt(char *out, size_t size, enum cmtp_log_format f, const char *event,
               const struct cmtp_log_field *fields, size_t n)
{
    int r = cmtp_log_format_line(out, size, f, TS, CMTP_LOG_INFO, event, fields, n);
    assert_true(r > 0);
    assert_int_equal(strlen(out), (size_t)r);
    assert_int_equal(out[r - 1], '\n');
    /* Exactly one line: no newline or CR before the end, no NUL. */
    assert_null(memchr(out, '\n', (size_t)r - 1));
    assert_null(memchr(out, '\r', (size_t)r));
    return r;
}

/* kv1 formats one string field in kv form and returns the text after "event=e ". */
static const char *kv1(char *buf, size_t size, const char *val, size_t len)
{
    struct cmtp_log_field f = cmtp_log_strn("v", val, len);
    int r = fmt(buf, size, CMTP_LOG_FORMAT_KV, "e", &f, 1);
    buf[r - 1] = '\0'; /* drop the newline for comparisons */
    const char *p = strstr(buf, " event=e v=");
    assert_non_null(p);
    return p + strlen(" event=e v=");
}

/* json_line parses one line with jansson (duplicate keys refused) and fails the test when it is
 * not a valid JSON object. */
static json_t *json_line(const char *line)
{
    json_error_t je;
    json_t *j = json_loads(line, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (j == NULL)
        print_error("bad JSON (%s): %s\n", je.text, line);
    assert_non_null(j);
    return j;
}

static void test_kv_basic(void **state)
{
    (void)state;
    char buf[CMTP_LOG_LINE_MAX + 1];
    struct cmtp_log_field f[] = {
        cmtp_log_str("qid", "Q123"),    cmtp_log_str("txn", "t-1.x_y"),
        cmtp_log_int("n", -42),         cmtp_log_uint("size", 18446744073709551615ull),
        cmtp_log_int("min", INT64_MIN),
    };
    fmt(buf, sizeof(buf), CMTP_LOG_FORMAT_KV, "accepted", f, 5);
    assert_string_equal(buf, "ts=" TS_TEXT " level=info event=accepted qid=Q123 txn=t-1.x_y n=-42 "
                             "size=18446744073709551615 min=-9223372036854775808\n");
}

static void test_kv_escaping(void **state)
{
    (void)state;
    char buf[CMTP_LOG_LINE_MAX + 1];
    assert_string_equal(kv1(buf, sizeof(buf), "plain", 5), "plain");
    assert_string_equal(kv1(buf, sizeof(buf), "", 0), "\"\"");
    assert_string_equal(kv1(buf, sizeof(buf), "a b", 3), "\"a b\"");
    assert_string_equal(kv1(buf, sizeof(buf), "a=b", 3), "\"a=b\"");
    assert_string_equal(kv1(buf, sizeof(buf), "say \"hi\"", 8), "\"say \\\"hi\\\"\"");
    assert_string_equal(kv1(buf, sizeof(buf), "a\\b", 3), "\"a\\\\b\"");
    /* A forged second line stays on the first. */
    assert_string_equal(kv1(buf, sizeof(buf), "x\nts=0 level=error event=forged", 31),
                        "\"x\\x0ats=0 level=error event=forged\"");
    assert_string_equal(kv1(buf, sizeof(buf), "a\rb\tc\x7f", 6), "\"a\\x0db\\x09c\\x7f\"");
    assert_string_equal(kv1(buf, sizeof(buf), "a\0b", 3), "\"a\\x00b\"");
    /* Format directives are data. */
    assert_string_equal(kv1(buf, sizeof(buf), "%n%s%x%p", 8), "%n%s%x%p");
    /* Valid UTF-8 passes; invalid octets and risky code points are escaped. */
    assert_string_equal(kv1(buf, sizeof(buf), "j\xc3\xb6rg", 5), "j\xc3\xb6rg");
    assert_string_equal(kv1(buf, sizeof(buf),
                            "a\xff"
                            "b",
                            3),
                        "\"a\\xffb\"");
    assert_string_equal(kv1(buf, sizeof(buf), "\xc0\x80", 2), "\"\\xc0\\x80\"");
    assert_string_equal(kv1(buf, sizeof(buf), "\xe2\x82", 2), "\"\\xe2\\x82\"");
    assert_string_equal(kv1(buf, sizeof(buf),
                            "a\xc2\x85"
                            "b",
                            4),
                        "\"a\\xc2\\x85b\"");
    assert_string_equal(kv1(buf, sizeof(buf), "\xe2\x80\xa8", 3), "\"\\xe2\\x80\\xa8\"");
    assert_string_equal(kv1(buf, sizeof(buf),
                            "\xe2\x80\xae"
                            "abc",
                            6),
                        "\"\\xe2\\x80\\xaeabc\"");
    /* Hostile event names and keys. */
    struct cmtp_log_field f = cmtp_log_str("bad key=\n", "v");
    fmt(buf, sizeof(buf), CMTP_LOG_FORMAT_KV, "ev ent", &f, 1);
    assert_string_equal(buf, "ts=" TS_TEXT " level=info event=\"ev ent\" bad_key__=v\n");
    /* NULL string is written empty. */
    f = cmtp_log_str("k", NULL);
    fmt(buf, sizeof(buf), CMTP_LOG_FORMAT_KV, "e", &f, 1);
    assert_string_equal(buf, "ts=" TS_TEXT " level=info event=e k=\"\"\n");
}

static void test_json_escaping(void **state)
{
    (void)state;
    char buf[CMTP_LOG_LINE_MAX + 1];
    const char hostile[] = "q\"b\\s/n\nr\rt\t\x01\x1f\x7f%n%s\xff\xc3\xb6\xe2\x80\xa8\xc2\x85";
    struct cmtp_log_field f[] = {
        cmtp_log_strn("v", hostile, sizeof(hostile) - 1),
        cmtp_log_int("i", -7),
        cmtp_log_uint("u", 7),
        cmtp_log_strn("nul", "a\0b", 3),
    };
    fmt(buf, sizeof(buf), CMTP_LOG_FORMAT_JSON, "ev\"il", f, 4);
    assert_non_null(
        strstr(buf, "{\"ts\":\"" TS_TEXT "\",\"level\":\"info\",\"event\":\"ev\\\"il\""));
    assert_non_null(strstr(buf, "\\u0001\\u001f\\u007f%n%s\xef\xbf\xbd\xc3\xb6\\u2028\\u0085"));
    json_t *j = json_line(buf);
    assert_string_equal(json_string_value(json_object_get(j, "event")), "ev\"il");
    assert_string_equal(json_string_value(json_object_get(j, "ts")), TS_TEXT);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_string_equal(
        json_string_value(json_object_get(j, "v")),
        "q\"b\\s/n\nr\rt\t\x01\x1f\x7f%n%s\xef\xbf\xbd\xc3\xb6\xe2\x80\xa8\xc2\x85");
    assert_int_equal(json_integer_value(json_object_get(j, "i")), -7);
    assert_int_equal(json_integer_value(json_object_get(j, "u")), 7);
    size_t nl = json_string_length(json_object_get(j, "nul"));
    assert_int_equal(nl, 3);
    assert_memory_equal(json_string_value(json_object_get(j, "nul")), "a\0b", 3);
    assert_null(json_object_get(j, "truncated"));
    json_decref(j);
}

static void test_truncation_kv(void **state)
{
    (void)state;
    static char big[10000];
    char buf[CMTP_LOG_LINE_MAX + 1];
    memset(big, 'x', sizeof(big));
    struct cmtp_log_field f[] = {cmtp_log_str("a", "1"), cmtp_log_strn("big", big, sizeof(big)),
                                 cmtp_log_str("after", "2")};
    int r = fmt(buf, sizeof(buf), CMTP_LOG_FORMAT_KV, "e", f, 3);
    assert_true(r <= CMTP_LOG_LINE_MAX);
    assert_true(r > CMTP_LOG_LINE_MAX - 64); /* the value was cut, not dropped */
    assert_non_null(strstr(buf, " a=1 big=xxxx"));
    assert_null(strstr(buf, "after="));
    assert_string_equal(buf + r - 13, " truncated=1\n");

    /* Quoted and escaped: the cut never splits an escape and the quote is closed. */
    memset(big, '\n', sizeof(big));
    r = fmt(buf, sizeof(buf), CMTP_LOG_FORMAT_KV, "e", f, 3);
    assert_true(r <= CMTP_LOG_LINE_MAX);
    assert_string_equal(buf + r - 18, "\\x0a\" truncated=1\n");
    /* Multi-octet characters are not split: the line stays valid UTF-8. */
    for (size_t i = 0; i + 1 < sizeof(big); i += 2)
        memcpy(big + i, "\xc3\xa9", 2);
    for (size_t cut = 0; cut < 4; cut++) {
        char small[600];
        r = cmtp_log_format_line(small, sizeof(small) - cut, CMTP_LOG_FORMAT_KV, TS, CMTP_LOG_INFO,
                                 "e", f, 3);
        assert_true(r > 0 && (size_t)r < sizeof(small) - cut);
        assert_true(cmtp_utf8_valid(small, (size_t)r));
        assert_string_equal(small + r - 13, " truncated=1\n");
    }
}

static void test_truncation_json(void **state)
{
    (void)state;
    static char big[10000];
    char buf[CMTP_LOG_LINE_MAX + 1];
    memset(big, '"', sizeof(big));
    struct cmtp_log_field f[] = {cmtp_log_str("a", "1"), cmtp_log_strn("big", big, sizeof(big)),
                                 cmtp_log_int("after", 2)};
    int r = fmt(buf, sizeof(buf), CMTP_LOG_FORMAT_JSON, "e", f, 3);
    assert_true(r <= CMTP_LOG_LINE_MAX);
    json_t *j = json_line(buf);
    assert_int_equal(json_integer_value(json_object_get(j, "truncated")), 1);
    assert_null(json_object_get(j, "after"));
    assert_true(json_string_length(json_object_get(j, "big")) > 1000);
    json_decref(j);

    /* Many fields: cut at a field boundary, still one valid object, at every buffer size. */
    static char keys[300][8];
    struct cmtp_log_field many[300];
    for (size_t i = 0; i < 300; i++) {
        snprintf(keys[i], sizeof(keys[i]), "f%zu", i);
        many[i] = cmtp_log_uint(keys[i], i);
    }
    for (size_t size = 100; size < 700; size += 7) {
        char small[700];
        r = cmtp_log_format_line(small, size, CMTP_LOG_FORMAT_JSON, TS, CMTP_LOG_WARN, "e", many,
                                 300);
        assert_true(r > 0 && (size_t)r < size);
        j = json_line(small);
        assert_int_equal(json_integer_value(json_object_get(j, "truncated")), 1);
        json_decref(j);
        for (size_t k = 0; k < 300; k++)
            many[k].type = CMTP_LOG_FIELD_STR, many[k].str = "\xff\"\n", many[k].len = 3;
        r = cmtp_log_format_line(small, size, CMTP_LOG_FORMAT_JSON, TS, CMTP_LOG_WARN, "e", many,
                                 300);
        assert_true(r > 0 && (size_t)r < size);
        j = json_line(small);
        json_decref(j);
        for (size_t k = 0; k < 300; k++)
            many[k] = cmtp_log_uint(keys[k], k);
    }
    /* Too small for even the prefix. */
    char tiny[40];
    assert_int_equal(cmtp_log_format_line(tiny, sizeof(tiny), CMTP_LOG_FORMAT_JSON, TS,
                                          CMTP_LOG_INFO, "e", NULL, 0),
                     -ENOSPC);
}

/* capture is a sink that keeps the last line and counts calls. */
struct capture {
    char line[CMTP_LOG_LINE_MAX + 1];
    size_t len;
    int calls;
    enum cmtp_log_level level;
};

static void capture_sink(void *arg, enum cmtp_log_level level, const char *line, size_t len)
{
    struct capture *c = arg;
    assert_true(len <= CMTP_LOG_LINE_MAX);
    assert_int_equal(line[len], '\0');
    memcpy(c->line, line, len + 1);
    c->len = len;
    c->level = level;
    c->calls++;
}

static void test_levels_and_sink(void **state)
{
    (void)state;
    struct cmtp_log log;
    struct capture cap = {.calls = 0};
    cmtp_log_init(&log, CMTP_LOG_INFO, CMTP_LOG_FORMAT_KV, capture_sink, &cap);
    assert_true(cmtp_log_enabled(&log, CMTP_LOG_ERROR));
    assert_true(cmtp_log_enabled(&log, CMTP_LOG_INFO));
    assert_false(cmtp_log_enabled(&log, CMTP_LOG_DEBUG));
    assert_false(cmtp_log_enabled(NULL, CMTP_LOG_ERROR));
    CMTP_LOG(&log, CMTP_LOG_DEBUG, "hidden", cmtp_log_str("a", "b"));
    assert_int_equal(cap.calls, 0);
    CMTP_LOG(&log, CMTP_LOG_WARN, "shown", cmtp_log_str("qid", "Q1"), cmtp_log_uint("rcpts", 3));
    assert_int_equal(cap.calls, 1);
    assert_int_equal(cap.level, CMTP_LOG_WARN);
    assert_memory_equal(cap.line, "ts=", 3);
    assert_non_null(strstr(cap.line, " level=warn event=shown qid=Q1 rcpts=3\n"));
    /* The time stamp has the documented shape. */
    assert_int_equal(cap.line[3 + 4], '-');
    assert_int_equal(cap.line[3 + 10], 'T');
    assert_int_equal(cap.line[3 + 19], '.');
    assert_int_equal(cap.line[3 + 23], 'Z');
    cmtp_log_event(&log, CMTP_LOG_ERROR, "nofields", NULL, 0);
    assert_int_equal(cap.calls, 2);
    assert_non_null(strstr(cap.line, " level=error event=nofields\n"));

    cmtp_log_init(&log, CMTP_LOG_DEBUG, CMTP_LOG_FORMAT_JSON, capture_sink, &cap);
    CMTP_LOG(&log, CMTP_LOG_DEBUG, "dbg", cmtp_log_str("k", "v"));
    assert_int_equal(cap.calls, 3);
    json_t *j = json_line(cap.line);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "debug");
    assert_string_equal(json_string_value(json_object_get(j, "k")), "v");
    json_decref(j);
}

/* A child logger writes through its own sink, in its parent's format, at its parent's level
 * at the time of each event. */
static void test_child_follows_parent(void **state)
{
    (void)state;
    struct cmtp_log parent, child;
    struct capture pc = {.calls = 0}, cc = {.calls = 0};
    cmtp_log_init(&parent, CMTP_LOG_WARN, CMTP_LOG_FORMAT_JSON, capture_sink, &pc);
    cmtp_log_init_child(&child, &parent, capture_sink, &cc);
    assert_false(cmtp_log_enabled(&child, CMTP_LOG_INFO));
    CMTP_LOG(&child, CMTP_LOG_INFO, "hidden", cmtp_log_str("a", "b"));
    assert_int_equal(cc.calls, 0);
    cmtp_log_set_level(&parent, CMTP_LOG_DEBUG);
    assert_true(cmtp_log_enabled(&child, CMTP_LOG_DEBUG));
    CMTP_LOG(&child, CMTP_LOG_INFO, "shown", cmtp_log_str("a", "b"));
    assert_int_equal(cc.calls, 1);
    assert_int_equal(pc.calls, 0);
    json_t *j = json_line(cc.line);
    assert_string_equal(json_string_value(json_object_get(j, "event")), "shown");
    json_decref(j);
    /* Setting the child's own level changes nothing: the parent's counts. */
    cmtp_log_set_level(&child, CMTP_LOG_DEBUG);
    cmtp_log_set_level(&parent, CMTP_LOG_ERROR);
    CMTP_LOG(&child, CMTP_LOG_WARN, "hidden", cmtp_log_str("a", "b"));
    assert_int_equal(cc.calls, 1);
}

static void test_level_names(void **state)
{
    (void)state;
    enum cmtp_log_level l;
    enum cmtp_log_format f;
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++) {
        assert_string_equal(cmtp_log_level_name((enum cmtp_log_level)i), names[i]);
        assert_int_equal(cmtp_log_level_parse(&l, names[i], strlen(names[i])), 0);
        assert_int_equal(l, i);
    }
    assert_int_equal(cmtp_log_level_parse(&l, "DEBUG", 5), 0);
    assert_int_equal(l, CMTP_LOG_DEBUG);
    assert_int_equal(cmtp_log_level_parse(&l, "warning", 7), -EINVAL);
    assert_int_equal(cmtp_log_level_parse(&l, "inf", 3), -EINVAL);
    assert_int_equal(cmtp_log_level_parse(&l, NULL, 0), -EINVAL);
    assert_null(cmtp_log_level_name((enum cmtp_log_level)4));
    assert_string_equal(cmtp_log_format_name(CMTP_LOG_FORMAT_KV), "kv");
    assert_string_equal(cmtp_log_format_name(CMTP_LOG_FORMAT_JSON), "json");
    assert_null(cmtp_log_format_name((enum cmtp_log_format)2));
    assert_int_equal(cmtp_log_format_parse(&f, "JSON", 4), 0);
    assert_int_equal(f, CMTP_LOG_FORMAT_JSON);
    assert_int_equal(cmtp_log_format_parse(&f, "text", 4), -EINVAL);
}

/* writer threads for the fd sink test. */
struct writer_arg {
    const struct cmtp_log *log;
    int id;
};

#define WRITERS 4
#define LINES_PER_WRITER 200

static void *writer(void *p)
{
    struct writer_arg *w = p;
    char pad[300];
    memset(pad, 'a' + w->id, sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    for (int i = 0; i < LINES_PER_WRITER; i++)
        CMTP_LOG(w->log, CMTP_LOG_INFO, "line", cmtp_log_int("w", w->id), cmtp_log_int("i", i),
                 cmtp_log_str("pad", pad));
    return NULL;
}

/* The default sink: one write per line, lines from many threads never interleave. */
static void test_fd_sink_threads(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    struct cmtp_log log;
    cmtp_log_init(&log, CMTP_LOG_INFO, CMTP_LOG_FORMAT_KV, cmtp_log_sink_fd,
                  (void *)(intptr_t)fds[1]);
    pthread_t th[WRITERS];
    struct writer_arg wa[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        wa[i].log = &log;
        wa[i].id = i;
        assert_int_equal(pthread_create(&th[i], NULL, writer, &wa[i]), 0);
    }
    /* Read while they write (the pipe holds less than everything). */
    size_t cap = WRITERS * LINES_PER_WRITER * 512, len = 0;
    char *all = malloc(cap);
    assert_non_null(all);
    size_t want_lines = WRITERS * LINES_PER_WRITER, lines = 0;
    while (lines < want_lines) {
        ssize_t n = read(fds[0], all + len, cap - len);
        assert_true(n > 0);
        for (ssize_t k = 0; k < n; k++)
            lines += all[len + (size_t)k] == '\n';
        len += (size_t)n;
    }
    for (int i = 0; i < WRITERS; i++)
        pthread_join(th[i], NULL);
    close(fds[1]);
    close(fds[0]);
    /* Every line is whole: starts with ts=, carries one writer's padding only. */
    int seen[WRITERS][LINES_PER_WRITER] = {{0}};
    char *p = all;
    for (size_t k = 0; k < want_lines; k++) {
        char *nl = memchr(p, '\n', (size_t)(all + len - p));
        assert_non_null(nl);
        *nl = '\0';
        int w, i;
        assert_memory_equal(p, "ts=", 3);
        char *q = strstr(p, " event=line w=");
        assert_non_null(q);
        assert_int_equal(sscanf(q, " event=line w=%d i=%d", &w, &i), 2);
        assert_true(w >= 0 && w < WRITERS && i >= 0 && i < LINES_PER_WRITER);
        char *pad = strstr(p, " pad=");
        assert_non_null(pad);
        pad += 5;
        assert_int_equal(strlen(pad), 299);
        for (size_t c = 0; c < 299; c++)
            assert_int_equal(pad[c], 'a' + w);
        seen[w][i]++;
        p = nl + 1;
    }
    assert_true(p == all + len);
    for (int w = 0; w < WRITERS; w++)
        for (int i = 0; i < LINES_PER_WRITER; i++)
            assert_int_equal(seen[w][i], 1);
    free(all);
}

/* A NULL sink selects the fd sink on standard error. */
static void test_default_sink_is_stderr(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    int saved = dup(2);
    assert_true(saved >= 0);
    assert_int_equal(dup2(fds[1], 2), 2);
    struct cmtp_log log;
    cmtp_log_init(&log, CMTP_LOG_INFO, CMTP_LOG_FORMAT_KV, NULL, NULL);
    CMTP_LOG(&log, CMTP_LOG_INFO, "to-stderr", cmtp_log_str("k", "v w"));
    assert_int_equal(dup2(saved, 2), 2);
    close(saved);
    close(fds[1]);
    char buf[256];
    ssize_t n = read(fds[0], buf, sizeof(buf) - 1);
    close(fds[0]);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, " level=info event=to-stderr k=\"v w\"\n"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_basic),
        cmocka_unit_test(test_kv_escaping),
        cmocka_unit_test(test_json_escaping),
        cmocka_unit_test(test_truncation_kv),
        cmocka_unit_test(test_truncation_json),
        cmocka_unit_test(test_levels_and_sink),
        cmocka_unit_test(test_child_follows_parent),
        cmocka_unit_test(test_level_names),
        cmocka_unit_test(test_fd_sink_threads),
        cmocka_unit_test(test_default_sink_is_stderr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
