/* bench/bench_proc.h — what the load generator reads of other processes in /proc: CPU time
 * (utime + stime of every thread) and resident memory. Linux only; not a process monitor. */
#ifndef CMTP_BENCH_BENCH_PROC_H
#define CMTP_BENCH_BENCH_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* BENCH_PROC_NAME_MAX is the size of the buffer that holds a process's command name. */
#define BENCH_PROC_NAME_MAX 32

/* bench_proc_stat is what is taken from one /proc/PID/stat line. */
struct bench_proc_stat {
    char name[BENCH_PROC_NAME_MAX]; /* command name, control octets as '?' */
    pid_t ppid;
    uint64_t ticks;       /* utime + stime (fields 14, 15), clock ticks */
    uint64_t child_ticks; /* cutime + cstime (fields 16, 17): reaped children */
};

/* bench_proc_parse_stat parses the text of a /proc/PID/stat file (|len| octets at |text|, not
 * necessarily NUL-terminated) into |out|. The command name is taken between the first '(' and
 * the last ')', so a name holding spaces or parentheses is handled. Returns 0, or -EINVAL when
 * the text is not a stat line. */
int bench_proc_parse_stat(const char *text, size_t len, struct bench_proc_stat *out);

/* bench_proc_cpu_us reads the CPU time (user + system, every thread included) that process
 * |pid| has used so far, in microseconds, into |*us|, and its command name into |name| (may be
 * NULL). With |tree|, the time of every descendant alive now and of every reaped one (the
 * cutime/cstime of the tree's members) is added: the cost of a multi-process server such as
 * Postfix. Returns 0, or a negative errno (-ESRCH when the process is gone). */
int bench_proc_cpu_us(pid_t pid, bool tree, uint64_t *us, char *name, size_t name_size);

/* bench_proc_parse_rss finds the VmRSS line in the text of a /proc/PID/status file and sets
 * |*kib|. Returns 0, or -ENOENT when there is none. */
int bench_proc_parse_rss(const char *text, size_t len, uint64_t *kib);

/* bench_proc_rss_kib reads process |pid|'s resident set size in KiB. Returns 0 or a negative
 * errno. */
int bench_proc_rss_kib(pid_t pid, uint64_t *kib);

/* bench_proc_self_cpu_us returns the CPU time this process has used so far (every thread), in
 * microseconds. */
uint64_t bench_proc_self_cpu_us(void);

#endif
