/* bench/bench_main.c — cmtp-bench: the load generator for CMTP/1 and SMTP+STARTTLS servers
 * (options, bodies, run, report). Not the orchestration of a full benchmark (bench/run.sh). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "bench/bench_body.h"
#include "bench/bench_opts.h"
#include "bench/bench_report.h"
#include "bench/bench_run.h"

/* Exit statuses, documented in --help. */
enum {
    EXIT_ALL_OK = 0,
    EXIT_OPS_FAILED = 1,
    EXIT_USAGE = 2,
    EXIT_SETUP = 3,
};

int main(int argc, char **argv)
{
    struct bench_opts o;
    struct bench_bodies *bodies = NULL;
    struct bench_result res;
    char err[512] = "";
    int r, code = EXIT_SETUP;

    r = bench_opts_parse(&o, argc, argv, err, sizeof(err));
    if (r == 1) {
        bench_opts_usage(stdout);
        return EXIT_ALL_OK;
    }
    if (r < 0) {
        fprintf(stderr, "cmtp-bench: %s\n", err);
        return EXIT_USAGE;
    }
    if (bench_opts_resolve(&o, err, sizeof(err)) < 0) {
        fprintf(stderr, "cmtp-bench: %s\n", err);
        return EXIT_USAGE;
    }
    /* A peer that resets while a send is queued must not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    bodies = bench_bodies_new(&o.size, o.seed);
    if (bodies == NULL) {
        fprintf(stderr, "cmtp-bench: cannot build the message bodies (out of memory)\n");
        return EXIT_SETUP;
    }
    if (bench_run(&o, bodies, &res, err, sizeof(err)) < 0) {
        fprintf(stderr, "cmtp-bench: %s\n", err);
        goto out;
    }
    if (o.json) {
        json_t *j = bench_report_json(&o, &res);
        if (j == NULL || json_dumpf(j, stdout, JSON_COMPACT) < 0) {
            fprintf(stderr, "cmtp-bench: cannot write the JSON result\n");
            json_decref(j);
            bench_result_cleanup(&res);
            goto out;
        }
        fputc('\n', stdout);
        json_decref(j);
    } else {
        bench_report_table(stdout, &o, &res);
    }
    if (o.hist_file != NULL) {
        const struct bench_hist *h =
            o.mode == BENCH_MODE_OPEN                                        ? res.sched
            : (o.mode == BENCH_MODE_HANDSHAKES || o.mode == BENCH_MODE_IDLE) ? res.hs
                                                                             : res.ack;
        if (bench_report_hist(o.hist_file, h) < 0)
            fprintf(stderr, "cmtp-bench: cannot write %s\n", o.hist_file);
    }
    code = (res.errors_total > 0 && !o.allow_errors) ? EXIT_OPS_FAILED : EXIT_ALL_OK;
    if (o.mode != BENCH_MODE_IDLE && res.msgs == 0 && res.handshakes == 0 && !o.allow_errors)
        code = EXIT_OPS_FAILED; /* nothing measured is a failure too */
    bench_result_cleanup(&res);
out:
    bench_bodies_free(bodies);
    fflush(stdout);
    return code;
}
