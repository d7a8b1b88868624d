/* admin/loop.h — the admin module's small poll(2) server loop on its own thread: one listening
 * socket, a bounded set of connections with input and output buffers, deadlines, a clean stop.
 * Not a general event loop: one request at a time per connection, served by the handler. */
#ifndef CMTP_ADMIN_LOOP_H
#define CMTP_ADMIN_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "admin/buf.h"

/* admin_loop is a running loop: a thread serving one listening socket. */
struct admin_loop;

/* admin_loop_conn is one accepted connection, owned by the loop. The handler reads |in|
 * (|in_len| octets, at most the configured in_max), consumes what it handled with
 * admin_loop_consume, and appends replies to |out|. */
struct admin_loop_conn {
    int fd;
    char *in;
    size_t in_len;
    struct admin_buf out; /* octets still to send start at |out_off| */
    size_t out_off;
    bool eof;             /* the peer closed its side: no more input will come */
    bool close_after;     /* set by the handler: send |out|, then close (lingering) */
    uint64_t deadline_ms; /* CLOCK_MONOTONIC ms; the loop sets it, the handler may change it */
    void *ctx;            /* the handler's */
    /* private to the loop */
    bool want_input; /* new input (or EOF) not yet shown to the handler */
    bool lingering;  /* output sent and our side shut down: discarding input until EOF */
};

/* admin_loop_ops are the handler's callbacks, all run on the loop's thread. */
struct admin_loop_ops {
    /* on_accept is called for each new connection (|c|->fd is non-blocking). It may refuse it
     * by appending a last reply and setting close_after. Required. */
    void (*on_accept)(void *arg, struct admin_loop_conn *c);
    /* on_input is called when |c| got new input or EOF and has no output pending, and again each
     * time its output drained while input is left. It handles at most one request, consuming
     * it. When |in| is full (in_max octets) and it neither consumed anything nor produced
     * output, the loop closes |c|. Required. */
    void (*on_input)(void *arg, struct admin_loop_conn *c);
    /* on_timeout is called once when |c|'s deadline passed; it may append a last reply, which
     * gets one non-blocking send before |c| is closed. May be NULL. */
    void (*on_timeout)(void *arg, struct admin_loop_conn *c);
    /* on_close is called once before |c| is freed (its fd still open). May be NULL. */
    void (*on_close)(void *arg, struct admin_loop_conn *c);
};

/* admin_loop_config bounds a loop. */
struct admin_loop_config {
    unsigned conns_max;     /* connections at once; more get |busy_reply| and are closed */
    size_t in_max;          /* input buffer per connection */
    size_t out_max;         /* output buffer cap per connection */
    unsigned timeout_ms;    /* deadline of a connection, from accept (and see |idle|) */
    bool idle;              /* the deadline moves |timeout_ms| ahead on every read or write */
    const char *busy_reply; /* sent (best effort) to a connection over conns_max; NULL: none */
};

/* admin_loop_start takes ownership of the listening socket |listen_fd| (made non-blocking here)
 * and serves it on a new thread (every signal blocked) until admin_loop_stop. Returns NULL with
 * a reason in |err| on failure (|listen_fd| is then closed). */
struct admin_loop *admin_loop_start(int listen_fd, const struct admin_loop_config *cfg,
                                    const struct admin_loop_ops *ops, void *arg, char *err,
                                    size_t errlen);

/* admin_loop_stop stops the loop, joins its thread, closes every connection (on_close is called
 * for each) and the listening socket, and frees |l|. Not from the loop's own thread. NULL is a
 * no-op. */
void admin_loop_stop(struct admin_loop *l);

/* admin_loop_consume drops the first |n| octets of |c|'s input. */
void admin_loop_consume(struct admin_loop_conn *c, size_t n);

/* admin_loop_now_ms returns CLOCK_MONOTONIC in milliseconds. */
uint64_t admin_loop_now_ms(void);

#endif
