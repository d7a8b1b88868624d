/* admin/client.h — the client side of the admin socket: connect, send one request line, read
 * one reply line, with a deadline. Not the formatting of replies (admin/ctl_format.h). */
#ifndef CMTP_ADMIN_CLIENT_H
#define CMTP_ADMIN_CLIENT_H

#include <stddef.h>

#include "admin/buf.h"

/* admin_client_call connects to the admin socket at |path|, sends |line| (without '\n'; one is
 * added) and reads one reply line into |reply| (its '\n' removed; |reply|'s cap bounds it),
 * all within |timeout_ms| (0: 60 s). Returns 0 when a whole line came back; otherwise a negative
 * errno with a reason in |err|: from connect (-ENOENT no socket, -ECONNREFUSED nobody listens,
 * -EACCES no permission), -ETIMEDOUT, -ECONNRESET when the connection closed before a whole
 * line (a partial line is left in |reply|), -EMSGSIZE when the reply exceeds |reply|'s cap. */
int admin_client_call(const char *path, const char *line, unsigned timeout_ms,
                      struct admin_buf *reply, char *err, size_t errlen);

#endif
