/* admin/buf.h — a growable byte buffer with a hard size cap, shared by the admin server, the
 * metrics writer and cmtpctl's formatter. Not a string library: bytes in, bytes out. */
#ifndef CMTP_ADMIN_BUF_H
#define CMTP_ADMIN_BUF_H

#include <stdbool.h>
#include <stddef.h>

/* admin_buf is a heap buffer of |len| octets at |data| (allocated |cap|), never larger than
 * |max|. An all-zero admin_buf (after admin_buf_init) is the empty buffer. The first failure
 * (-ENOSPC past |max|, -ENOMEM) is sticky in |err|: later appends fail with it too, so a writer
 * may append freely and check once at the end. |data| is always NUL-terminated when non-NULL
 * (the NUL is not counted in |len|). The owner frees it with admin_buf_cleanup. */
struct admin_buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max;
    int err;
};

/* admin_buf_init makes |b| empty with a cap of |max| octets (0: the buffer refuses everything). */
void admin_buf_init(struct admin_buf *b, size_t max);

/* admin_buf_cleanup frees |b|'s storage and makes it empty again (same cap, error cleared). */
void admin_buf_cleanup(struct admin_buf *b);

/* admin_buf_reset empties |b| and clears its error, keeping the storage. */
void admin_buf_reset(struct admin_buf *b);

/* admin_buf_append appends |n| octets at |p|. Returns 0, or the sticky error (-ENOSPC when the
 * result would exceed the cap, -ENOMEM); on failure nothing is appended. */
int admin_buf_append(struct admin_buf *b, const void *p, size_t n);

/* admin_buf_puts appends the NUL-terminated |s| (without its NUL), as admin_buf_append. */
int admin_buf_puts(struct admin_buf *b, const char *s);

/* admin_buf_putc appends one octet |c|, as admin_buf_append. */
int admin_buf_putc(struct admin_buf *b, char c);

/* admin_buf_printf appends text formatted from the constant format |fmt| (never peer data: pass
 * peer strings as "%s" arguments or with admin_buf_append). Returns 0 or the sticky error. */
int admin_buf_printf(struct admin_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* admin_buf_consume drops the first |n| octets of |b| (all of them when |n| >= len). */
void admin_buf_consume(struct admin_buf *b, size_t n);

#endif
