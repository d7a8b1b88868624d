/* daemon/maildir.h — final delivery of one message into a recipient's Maildir: tmp/, fsync,
 * link into new/, fsync of the directory; streamed, bounded memory. Not routing, not the queue. */
#ifndef CMTP_DAEMON_MAILDIR_H
#define CMTP_DAEMON_MAILDIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/addr.h"

/* Layout and names (docs/SMTP-INGRESS.md, section "Maildir delivery", says the same):
 *
 * - A recipient local@domain is delivered into <root>/<domain>/<local>/{tmp,new,cur}. The domain
 *   is the address's lower-case A-label form. The local part keeps its case and its UTF-8; each
 *   octet that is not safe in a file name component is written %XX (upper-case hex): "/", "%",
 *   every control octet, an octet of invalid UTF-8, and a "." at the start (so that no component
 *   is ".", ".." or hidden). The result must fit NAME_MAX (255) octets; otherwise the mailbox is
 *   refused (permanent failure).
 * - Directories below the root are opened with O_NOFOLLOW: a symbolic link in place of a domain
 *   or mailbox directory fails the delivery (permanently) instead of writing elsewhere. Missing
 *   directories are created (mode 0700, parents fsynced) when the context allows it; otherwise a
 *   missing mailbox is a permanent "no such mailbox".
 * - The file name is `<sec>.M<usec>P<pid>Q<counter>.<host>` in tmp/ and the same followed by
 *   `,S=<size>` (the file's octets) in new/ (the Maildir++ size suffix). <host> is the configured
 *   host name with "/" written \057, ":" \072, "," \054 and any other octet outside
 *   [A-Za-z0-9.-_] written "_". The tmp file is created with O_EXCL and linked into new/ with
 *   link() (rename with RENAME_NOREPLACE where hard links are not supported), so that a name
 *   clash is detected and retried with the next counter, never overwritten.
 * - The file holds the caller's CMTP-Trace header field first (when one is given), then the
 *   message octet for octet. The field's line endings follow the message's first line: LF when
 *   the first chunk's first line ends with a bare LF, CRLF otherwise.
 * - Durability: the file is fsynced, linked into new/, new/ is fsynced, and only then does
 *   maildir_commit return 0; the tmp/ entry is removed afterwards. */

/* MAILDIR_TRACE_MAX bounds the CMTP-Trace field accepted by maildir_open. */
#define MAILDIR_TRACE_MAX 65536

/* maildir_ctx is one worker's Maildir state: the open root directory and the name counter. The
 * caller owns the storage; maildir_ctx_init fills it, maildir_ctx_cleanup releases it. */
struct maildir_ctx {
    int root_fd;
    bool create; /* create missing domain and mailbox directories */
    pid_t pid;
    uint64_t counter;
    char host[192]; /* the sanitized host part of file names */
    /* statistics, for logs and tests */
    uint64_t delivered; /* messages committed */
    uint64_t fsyncs;    /* fsync calls made (files and directories) */
    uint64_t clashes;   /* name clashes retried */
};

/* maildir_ctx_init opens |root| (created, mode 0700, when |create| and missing) and prepares
 * names for |host| and this process; |worker| separates the counters of workers of one
 * process. Returns 0 or a negative errno (|c| is then not valid). */
int maildir_ctx_init(struct maildir_ctx *c, const char *root, const char *host, unsigned worker,
                     bool create);

/* maildir_ctx_cleanup closes what |c| holds. Safe on a zeroed or failed |c|. */
void maildir_ctx_cleanup(struct maildir_ctx *c);

/* maildir_msg is one delivery in progress (one recipient). Caller-owned storage. */
struct maildir_msg {
    struct maildir_ctx *ctx;
    int box_fd, tmp_fd, new_fd, fd;
    char name[256]; /* the tmp/ file name */
    uint64_t size;  /* octets written */
    const uint8_t *trace;
    size_t trace_len;
    bool trace_done;
};

/* maildir_open starts the delivery of one message to |rcpt| through |c|: opens (or creates) the
 * mailbox and an exclusive file in its tmp/. |trace| (|trace_len| octets, may be NULL) is one
 * CMTP-Trace header field as core/dsn.h's cmtp_dsn_trace_field writes it (CRLF line endings); it
 * is written first and must stay valid until maildir_commit or maildir_abort. Returns 0 or a
 * negative errno: -EINVAL for a null or unusable address or a malformed |trace|, -ENAMETOOLONG
 * for a mailbox name that cannot be a file name, -ENOENT for a missing mailbox without create,
 * -ELOOP or -ENOTDIR for a link or file in place of a directory, other errno values from the
 * file system. */
int maildir_open(struct maildir_msg *m, struct maildir_ctx *c, const struct cmtp_addr *rcpt,
                 const uint8_t *trace, size_t trace_len);

/* maildir_write appends |n| message octets at |p| (any chunking; nothing is buffered). Returns 0
 * or a negative errno (the delivery must then be aborted). */
int maildir_write(struct maildir_msg *m, const uint8_t *p, size_t n);

/* maildir_commit makes the message durable in new/ and ends the delivery; on success the final
 * file name (without directory) is copied into |name| (|name_size| octets, may be NULL). On
 * failure the tmp file is removed and the delivery is over as well. Returns 0 or a negative
 * errno. */
int maildir_commit(struct maildir_msg *m, char *name, size_t name_size);

/* maildir_abort removes the tmp file and ends the delivery. Safe after a failed maildir_open. */
void maildir_abort(struct maildir_msg *m);

/* maildir_err_permanent classifies an error of this module: true for a failure that retrying
 * cannot cure (EINVAL, ENAMETOOLONG, ENOENT, ENOTDIR, ELOOP, EISDIR: a bad or missing mailbox),
 * false for a temporary one (ENOSPC, EDQUOT, EIO, EFBIG, EACCES, EROFS, EMFILE, ENOMEM, ... :
 * retry later). |err| is negative or positive. */
bool maildir_err_permanent(int err);

/* maildir_local_encode writes the file name component for local part |local| (|len| octets) into
 * |out| (|out_size| octets, NUL-terminated) as described above. Returns its length, -EINVAL for
 * an empty local part, or -ENAMETOOLONG when it exceeds 255 octets or |out|. */
int maildir_local_encode(char *out, size_t out_size, const char *local, size_t len);

#endif
