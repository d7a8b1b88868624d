/* admin/cmtpctl_main.c — cmtpctl's main(): runs admin_ctl_run and writes its output. Not the
 * logic (admin/ctl.c) nor the rendering (admin/ctl_format.c). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "admin/ctl.h"

/* write_all writes |b| to |fd|; output errors are ignored (the exit code tells the outcome). */
static void write_all(int fd, const struct admin_buf *b)
{
    size_t off = 0;
    while (b->data != NULL && off < b->len) {
        ssize_t n = write(fd, b->data + off, b->len - off);
        if (n <= 0)
            return;
        off += (size_t)n;
    }
}

int main(int argc, char **argv)
{
    struct admin_buf out, err;
    signal(SIGPIPE, SIG_IGN);
    admin_buf_init(&out, ADMIN_CTL_OUT_MAX);
    admin_buf_init(&err, 64 * 1024);
    int code = admin_ctl_run(argc, argv, getenv(ADMIN_CTL_SOCKET_ENV), &out, &err);
    write_all(1, &out);
    write_all(2, &err);
    admin_buf_cleanup(&out);
    admin_buf_cleanup(&err);
    return code;
}
