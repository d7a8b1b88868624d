/* admin/buf.c — a growable byte buffer with a hard size cap (doubling growth, sticky errors).
 * Not thread-safe: one owner at a time. */
#include "admin/buf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void admin_buf_init(struct admin_buf *b, size_t max)
{
    memset(b, 0, sizeof(*b));
    b->max = max;
}

void admin_buf_cleanup(struct admin_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->err = 0;
}

void admin_buf_reset(struct admin_buf *b)
{
    b->len = 0;
    b->err = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

/* reserve makes room for |n| more octets plus the NUL. */
static int reserve(struct admin_buf *b, size_t n)
{
    if (b->err != 0)
        return b->err;
    if (n > b->max || b->len > b->max - n) {
        b->err = -ENOSPC;
        return b->err;
    }
    size_t need = b->len + n + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    char *p = realloc(b->data, cap);
    if (p == NULL) {
        b->err = -ENOMEM;
        return b->err;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

int admin_buf_append(struct admin_buf *b, const void *p, size_t n)
{
    int r = reserve(b, n);
    if (r < 0)
        return r;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int admin_buf_puts(struct admin_buf *b, const char *s)
{
    return admin_buf_append(b, s, strlen(s));
}

int admin_buf_putc(struct admin_buf *b, char c)
{
    return admin_buf_append(b, &c, 1);
}

int admin_buf_printf(struct admin_buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;

    if (b->err != 0)
        return b->err;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->err = -EINVAL;
        return b->err;
    }
    if ((size_t)n < sizeof(small))
        return admin_buf_append(b, small, (size_t)n);
    int r = reserve(b, (size_t)n);
    if (r < 0)
        return r;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void admin_buf_consume(struct admin_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data != NULL)
        b->data[b->len] = '\0';
}
