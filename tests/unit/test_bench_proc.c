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
    struct bench_proc_stat st;
    /* a name with spaces and parentheses: fields are counted after the last ')' */
    const char *s = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 "
                    "12345 1000000 200 18446744073709551615\n";
    assert_int_equal(bench_proc_parse_stat(s, strlen(s), &st), 0);
    assert_int_equal(st.ticks, 325);
    assert_int_equal(st.child_ticks, 0);
    assert_int_equal(st.ppid, 1);
    assert_string_equal(st.name, "a) b (c)");
    /* a control character in the name is neutralized */
    const char *s2 = "5 (x\ty) R 77 1 1 0 -1 0 0 0 0 0 7 8 30 12\n";
    assert_int_equal(bench_proc_parse_stat(s2, strlen(s2), &st), 0);
    assert_int_equal(st.ticks, 15);
    assert_int_equal(st.child_ticks, 42);
    assert_int_equal(st.ppid, 77);
    assert_string_equal(st.name, "x?y");
    /* truncated lines are refused */
    const char *bad[] = {"",
                         "1 (x",
                         "1 (x) S 1 2 3",
                         "1 (x) S 1 1 1 0 -1 0 0 0 0 0 a 8 0 0",
                         "1 (x) S 1 1 1 0 -1 0 0 0 0 0 1 8 0",
                         "nothing"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(bench_proc_parse_stat(bad[i], strlen(bad[i]), &st), -EINVAL);
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
    assert_int_equal(bench_proc_cpu_us(pid, false, &a, name, sizeof(name)), 0);
    {
        struct timespec ts = {0, 300 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(bench_proc_cpu_us(pid, false, &b, NULL, 0), 0);
    assert_true(b > a);
    assert_true(b - a >= 50000); /* the child had at least 50 ms of a core */
    assert_int_equal(bench_proc_rss_kib(pid, &rss), 0);
    assert_true(rss > 0);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    assert_int_equal(bench_proc_cpu_us(pid, false, &a, NULL, 0), -ESRCH);

    self0 = bench_proc_self_cpu_us();
    {
        volatile uint64_t x = 0;
        for (int i = 0; i < 20000000; i++)
            x += (uint64_t)i;
    }
    self1 = bench_proc_self_cpu_us();
    assert_true(self1 > self0);
}

/* A process that does nothing itself but whose child spins: only the tree reading sees the
 * child's time; once the child is reaped, its time stays in the tree (cutime). */
static void test_tree(void **state)
{
    (void)state;
    int ctl[2];
    uint64_t own = 0, tree0 = 0, tree1 = 0, tree2 = 0;
    char c = 0;
    pid_t a;

    assert_int_equal(pipe(ctl), 0);
    a = fork();
    assert_true(a >= 0);
    if (a == 0) {
        pid_t b = fork();
        if (b == 0) {
            volatile uint64_t x = 0;
            for (;;)
                x++;
        }
        /* wait for the word, then kill and reap the spinner, then idle */
        if (read(ctl[0], &c, 1) != 1)
            _exit(1);
        kill(b, SIGKILL);
        waitpid(b, NULL, 0);
        if (write(ctl[1], "r", 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    {
        struct timespec ts = {0, 400 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(bench_proc_cpu_us(a, false, &own, NULL, 0), 0);
    assert_int_equal(bench_proc_cpu_us(a, true, &tree0, NULL, 0), 0);
    assert_true(own < 50000);
    assert_true(tree0 >= own + 100000);
    assert_int_equal(write(ctl[1], "k", 1), 1);
    {
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(read(ctl[0], &c, 1), 1);
    assert_int_equal(c, 'r');
    assert_int_equal(bench_proc_cpu_us(a, true, &tree1, NULL, 0), 0);
    assert_int_equal(bench_proc_cpu_us(a, true, &tree2, NULL, 0), 0);
    assert_true(tree1 >= tree0); /* the reaped child's time moved into cutime, not lost */
    assert_int_equal(tree2, tree1);
    kill(a, SIGKILL);
    waitpid(a, NULL, 0);
    close(ctl[0]);
    close(ctl[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_stat),
        cmocka_unit_test(test_parse_rss),
        cmocka_unit_test(test_real),
        cmocka_unit_test(test_tree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
