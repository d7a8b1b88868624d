/* admin/ctl.h — cmtpctl, the operator's CLI over the admin socket: argument handling, local help,
 * human-readable rendering of replies (tables, key: value lines) and the exit codes. Not the
 * socket server; the program's main() is admin/cmtpctl_main.c. */
#ifndef CMTP_ADMIN_CTL_H
#define CMTP_ADMIN_CTL_H

#include <jansson.h>

#include "admin/buf.h"
#include "admin/request.h"

/* Exit codes of cmtpctl (documented in its --help and docs/ADMIN.md). */
#define ADMIN_CTL_EXIT_OK 0    /* the daemon answered ok (or help was printed) */
#define ADMIN_CTL_EXIT_ERROR 1 /* the daemon answered with an error */
#define ADMIN_CTL_EXIT_USAGE 2 /* bad command line: nothing was sent */
#define ADMIN_CTL_EXIT_CONNECT                                                                     \
    3 /* no answer: cannot connect, permission, too many clients,                                  \
         timeout, connection lost, or an invalid reply */

/* ADMIN_CTL_SOCKET_ENV names the environment variable with the default socket path. */
#define ADMIN_CTL_SOCKET_ENV "CMTPCTL_SOCKET"
/* ADMIN_CTL_TIMEOUT_S_DEFAULT is the default reply timeout, in seconds. */
#define ADMIN_CTL_TIMEOUT_S_DEFAULT 60u
/* ADMIN_CTL_OUT_MAX caps what cmtpctl renders (a reply is at most ADMIN_REPLY_MAX). */
#define ADMIN_CTL_OUT_MAX (64u * 1024u * 1024u)

/* admin_ctl_run is cmtpctl: it parses |argc|/|argv| (argv[0] is the program name), reads
 * ADMIN_CTL_SOCKET_ENV from |env_socket| (NULL: unset), talks to the daemon and writes what is
 * for standard output into |out| and messages for standard error into |errout|. Returns the
 * exit code (ADMIN_CTL_EXIT_*). */
int admin_ctl_run(int argc, char **argv, const char *env_socket, struct admin_buf *out,
                  struct admin_buf *errout);

/* admin_ctl_usage writes cmtpctl's general --help text (options, commands, exit codes). */
void admin_ctl_usage(struct admin_buf *out);

/* admin_ctl_help writes the help of every command matched by |topic| ("" = all, see
 * admin_topic_matches). Returns 0, or -ENOENT when nothing matches (nothing written). */
int admin_ctl_help(struct admin_buf *out, const char *topic);

/* admin_ctl_format writes the human form of the successful reply |reply| (a JSON object with
 * "ok": true) to command |cmd| into |out|: status, queue show and the rest as `key: value`
 * lines (nested objects flattened with dots), stats as a table (one row per counter, a column
 * for the total and one per worker), queue summary and queue list as aligned columns, metrics
 * as the raw Prometheus text. Control characters of the daemon's strings are escaped (\xNN),
 * so nothing it sends can drive the terminal. Returns 0 or the buffer's error. */
int admin_ctl_format(struct admin_buf *out, enum admin_cmd cmd, const json_t *reply);

#endif
