/* tests/unit/test_bench_proc.c — cmtp-bench's /proc readers: stat lines with hostile command
 * names, VmRSS, and real readings of this process and a busy child. Not the report. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_proc.h"

static void test_parse_stat(void **state)
{
    (void)state;
    char name[BENCH_PROC_NAME_MAX];
    uint64_t t = 0;
    /* a name with spaces and parentheses: fields are counted after the last ')' */
    const char *s = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 "
                    "12345 1000000 200 18446744073709551615\n";
    assert_int_equal(bench_proc_parse_stat(s, strlen(s), name, sizeof(name), &t), 0);
    assert_int_equal(t, 325);
    assert_string_equal(name, "a) b (c)");
    /* a control character in the name is neutralized */
    const char *s2 = "5 (x\ty) R 1 1 1 0 -1 0 0 0 0 0 7 8 0 0\n";
    assert_int_equal(bench_proc_parse_stat(s2, strlen(s2), name, sizeof(name), &t), 0);
    assert_int_equal(t, 15);
    assert_string_equal(name, "x?y");
    /* truncated lines are refused */
    const char *bad[] = {"", "1 (x", "1 (x) S 1 2 3", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 a 8", "nothing"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(bench_proc_parse_stat(bad[i], strlen(bad[i]), NULL, 0, &t), -EINVAL);
}

static void test_parse_rss(void **state)
{
    (void)state;
    uint64_t k = 0;
    const char *s = "Name:\tcmtpd\nVmPeak:\t  9999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
    assert_int_equal(bench_proc_parse_rss(s, strlen(s), &k), 0);
    assert_int_equal(k, 12345);
    assert_int_equal(bench_proc_parse_rss("Name:\tx\n", 8, &k), -ENOENT);
    assert_int_equal(bench_proc_parse_rss("VmRSS:\t kB\n", 11, &k), -ENOENT);
}

/* A child that spins for a while has a growing CPU time and a resident set; a reaped one is
 * reported gone. */
static void test_real(void **state)
{
    (void)state;
    uint64_t a = 0, b = 0, rss = 0, self0, self1;
    char name[BENCH_PROC_NAME_MAX];
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        volatile uint64_t x = 0;
        for (;;)
            x++;
    }
    assert_int_equal(bench_proc_cpu_us(pid, &a, name, sizeof(name)), 0);
    {
        struct timespec ts = {0, 300 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(bench_proc_cpu_us(pid, &b, NULL, 0), 0);
    assert_true(b > a);
    assert_true(b - a >= 50000); /* the child had at least 50 ms of a core */
    assert_int_equal(bench_proc_rss_kib(pid, &rss), 0);
    assert_true(rss > 0);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    assert_int_equal(bench_proc_cpu_us(pid, &a, NULL, 0), -ESRCH);

    self0 = bench_proc_self_cpu_us();
    {
        volatile uint64_t x = 0;
        for (int i = 0; i < 20000000; i++)
            x += (uint64_t)i;
    }
    self1 = bench_proc_self_cpu_us();
    assert_true(self1 > self0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_stat),
        cmocka_unit_test(test_parse_rss),
        cmocka_unit_test(test_real),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
