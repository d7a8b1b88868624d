/* bench/bench_report.h — cmtp-bench's output: the summary table, the JSON object and the
 * gnuplot-ready histogram file. Not the measurement (bench_run.h). */
#ifndef CMTP_BENCH_BENCH_REPORT_H
#define CMTP_BENCH_BENCH_REPORT_H

#include <stdio.h>

#include <jansson.h>

#include "bench/bench_opts.h"
#include "bench/bench_run.h"

/* bench_report_json builds the result of |o| and |r| as a new JSON object (the caller
 * json_decref's it), or NULL when out of memory. Keys are described in bench/README.md. */
json_t *bench_report_json(const struct bench_opts *o, const struct bench_result *r);

/* bench_report_table writes the human-readable summary table to |f|. */
void bench_report_table(FILE *f, const struct bench_opts *o, const struct bench_result *r);

/* bench_report_hist writes |h| to the file at |path| as gnuplot-ready text: a comment header,
 * then one line per non-empty bucket: upper value in microseconds, count, cumulative fraction.
 * Returns 0 or a negative errno. */
int bench_report_hist(const char *path, const struct bench_hist *h);

#endif
