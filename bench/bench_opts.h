/* bench/bench_opts.h — cmtp-bench's command line: every option, its default, its check, and the
 * --help text. Not the load itself (bench_run.h) and not the report (bench_report.h). */
#ifndef CMTP_BENCH_BENCH_OPTS_H
#define CMTP_BENCH_BENCH_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "bench/bench_body.h"
#include "core/limits.h"

/* BENCH_SERVER_PIDS_MAX is how many --server-pid options are accepted. */
#define BENCH_SERVER_PIDS_MAX 8u

/* BENCH_THREADS_MAX bounds --threads. */
#define BENCH_THREADS_MAX 64u

/* BENCH_CONNS_MAX bounds --conns and --idle (the engine's per-worker slot index allows far
 * more; file descriptors are the real limit). */
#define BENCH_CONNS_MAX 1000000u

/* BENCH_NAME_MAX is the longest --verify-name, --ehlo or address text. */
#define BENCH_NAME_MAX CMTP_ADDR_MAX

/* bench_proto is the protocol spoken. */
enum bench_proto {
    BENCH_PROTO_CMTP = 0, /* CMTP/1 over TLS 1.3 from the first byte */
    BENCH_PROTO_SMTP,     /* SMTP, EHLO, STARTTLS, TLS 1.3, EHLO again */
};

/* bench_mode is what the run measures. */
enum bench_mode {
    BENCH_MODE_CLOSED = 0, /* N sessions each send their next message as soon as one is done */
    BENCH_MODE_OPEN,       /* messages arrive at a fixed rate, whatever the server's speed */
    BENCH_MODE_HANDSHAKES, /* connect, handshake, greeting, close, again */
    BENCH_MODE_IDLE,       /* open N sessions, hold them idle, measure the server's memory */
};

/* bench_opts is the parsed command line. bench_opts_parse fills every field (defaults
 * included); strings point into argv or at static text. */
struct bench_opts {
    enum bench_proto proto;
    enum bench_mode mode;
    const char *server;           /* host:port as given */
    struct sockaddr_storage addr; /* resolved by bench_opts_resolve */
    socklen_t addr_len;
    const char *ca_file;     /* NULL: the system store */
    const char *verify_name; /* server name verified (and SNI) */
    const char *from, *to;   /* envelope addresses */
    const char *ehlo;        /* SMTP EHLO name */
    unsigned threads;
    unsigned conns;    /* concurrent sessions (also the --idle count) */
    uint64_t msgs;     /* closed loop: per session; open loop: in all; 0: by duration */
    double duration_s; /* measured time after warm-up; 0: by --msgs */
    double warmup_s;
    double rate;        /* open loop arrivals per second */
    bool per_conn;      /* one connection per message */
    bool resume;        /* offer session tickets (CMTP) */
    double idle_hold_s; /* --idle: how long the sessions are held */
    struct bench_size_spec size;
    size_t chunk;         /* CMTP BODY chunk; 0: the server's chunk-max */
    unsigned timeout_ms;  /* per operation */
    unsigned connect_max; /* handshakes in progress per worker */
    pid_t server_pids[BENCH_SERVER_PIDS_MAX];
    bool server_tree[BENCH_SERVER_PIDS_MAX]; /* --server-tree: with its descendants */
    unsigned n_server_pids;
    uint64_t seed;
    bool json;
    bool quiet;
    bool allow_errors;
    const char *hist_file; /* latency histogram data for gnuplot, or NULL */
};

/* bench_opts_parse parses |argc|/|argv| into |o|. Returns 0, 1 when --help was asked (the
 * caller prints bench_opts_usage), or -EINVAL with a one-line reason in |err| (|errlen|
 * octets). It does not resolve the server (bench_opts_resolve). */
int bench_opts_parse(struct bench_opts *o, int argc, char **argv, char *err, size_t errlen);

/* bench_opts_resolve resolves |o->server| (host:port, [v6]:port, or host alone for the
 * protocol's default port) into |o->addr|. Returns 0 or -EINVAL with a reason in |err|. */
int bench_opts_resolve(struct bench_opts *o, char *err, size_t errlen);

/* bench_opts_usage writes the --help text to |f|. */
void bench_opts_usage(FILE *f);

/* bench_proto_name and bench_mode_name return the keywords used in reports. */
const char *bench_proto_name(enum bench_proto p);
const char *bench_mode_name(enum bench_mode m);

#endif
