/* bench/bench_run.h — the load itself: engine workers as clients, CMTP or SMTP+STARTTLS sessions
 * over TLS 1.3, the closed and open loops, handshake and idle modes, and the measurements (/proc
 * CPU and memory before and after, latency histograms, errors by class). Not the report. */
#ifndef CMTP_BENCH_BENCH_RUN_H
#define CMTP_BENCH_BENCH_RUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bench/bench_body.h"
#include "bench/bench_hist.h"
#include "bench/bench_opts.h"
#include "bench/bench_proc.h"

/* bench_err is the class of a failed operation. */
enum bench_err {
    BENCH_ERR_CONNECT = 0, /* TCP connect failed or timed out */
    BENCH_ERR_TLS,         /* TLS handshake or record failure (certificate, alert) */
    BENCH_ERR_TEMP,        /* a 4xx reply (or a local temporary failure) */
    BENCH_ERR_PERM,        /* a 5xx reply */
    BENCH_ERR_PROTOCOL,    /* malformed or unexpected reply, 6xx, missing STARTTLS */
    BENCH_ERR_TIMEOUT,     /* --timeout passed waiting for the server */
    BENCH_ERR_CLOSED,      /* the server closed or reset the connection unexpectedly */
    BENCH_ERR_COUNT
};

/* bench_err_name returns the class keyword used in reports ("connect", "tls", ...). */
const char *bench_err_name(enum bench_err e);

/* BENCH_ERROR_TEXT_MAX is the size of the example error message kept for the report. */
#define BENCH_ERROR_TEXT_MAX 200

/* bench_server is what was measured of one --server-pid. */
struct bench_server {
    pid_t pid;
    bool tree; /* descendants included (--server-tree) */
    char name[BENCH_PROC_NAME_MAX];
    bool cpu_ok;     /* both CPU readings succeeded */
    uint64_t cpu_us; /* CPU time used during the measured interval */
    bool rss_ok;     /* both memory readings succeeded (--idle) */
    uint64_t rss_before_kib, rss_after_kib;
};

/* bench_result is everything a run measured. Counts cover the measured interval (after the
 * warm-up) except |errors|, which cover the whole run. The histograms are owned by the result
 * (bench_result_cleanup frees them). */
struct bench_result {
    double elapsed_s;    /* length of the measured interval */
    uint64_t msgs;       /* messages acknowledged as accepted */
    uint64_t body_bytes; /* body octets of those messages */
    uint64_t handshakes; /* sessions that reached the greeting (SMTP: the second EHLO) */
    uint64_t resumed;    /* of those, TLS resumptions */
    uint64_t dups;       /* CMTP acknowledgements with dup=1 (should be none) */
    uint64_t reconnects; /* persistent sessions reopened because of the server's txn-max */
    uint64_t unsent;     /* open loop: arrivals of the interval still waiting at its end (the
                          * server could not keep up with --rate) */
    uint64_t errors[BENCH_ERR_COUNT];
    uint64_t errors_total;
    char first_error[BENCH_ERROR_TEXT_MAX]; /* one example, for diagnosis ("" if none) */
    struct bench_hist *ack;                 /* END sent to durable acknowledgement, µs */
    struct bench_hist *sched;               /* open loop: scheduled time to acknowledgement, µs */
    struct bench_hist *hs;                  /* connect start to greeting, µs */
    uint64_t bench_cpu_us;                  /* this process's CPU time during the interval */
    struct bench_server servers[BENCH_SERVER_PIDS_MAX];
    unsigned n_servers;
    uint64_t idle_open;         /* --idle: sessions open when memory was read */
    double body_mean;           /* mean body size of the pool, octets */
    uint64_t greeting_size_max; /* CMTP: the server's size-max (0 when unknown) */
};

/* bench_run runs the load described by |o| (its server resolved) with the bodies of |bodies|,
 * printing a progress line to stderr once a second unless o->quiet, and fills |res|. Returns
 * 0 when the run took place (operations may still have failed: see res->errors_total), or a
 * negative errno with a reason in |err| when it could not be set up (TLS context, engine). */
int bench_run(const struct bench_opts *o, const struct bench_bodies *bodies,
              struct bench_result *res, char *err, size_t errlen);

/* bench_result_cleanup frees what |res| owns and zeroes it. */
void bench_result_cleanup(struct bench_result *res);

#endif
