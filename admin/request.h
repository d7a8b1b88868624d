/* admin/request.h — the admin protocol's request line: the command table (names, usage, help)
 * and a strict, pure parser of `COMMAND [ARGS...]` lines. Not the socket server (admin/admin.h)
 * and no JSON: the parser is linked into the fuzz target alone. Protocol: docs/ADMIN.md. */
#ifndef CMTP_ADMIN_REQUEST_H
#define CMTP_ADMIN_REQUEST_H

#include <stdbool.h>
#include <stddef.h>

#include "core/limits.h"
#include "core/log.h"

/* ADMIN_LINE_MAX is the longest request line, in octets, the terminating '\n' included. */
#define ADMIN_LINE_MAX 4096
/* ADMIN_TOKENS_MAX is the most space-separated tokens a request may have. */
#define ADMIN_TOKENS_MAX 16
/* ADMIN_ID_MAX is the longest queue id argument (the queue's own bound). */
#define ADMIN_ID_MAX CMTP_QID_MAX
/* ADMIN_DEST_MAX is the longest `queue list --dest` value. */
#define ADMIN_DEST_MAX CMTP_DOMAIN_MAX
/* ADMIN_LIST_LIMIT_DEFAULT and ADMIN_LIST_LIMIT_MAX bound `queue list --limit`. */
#define ADMIN_LIST_LIMIT_DEFAULT 100u
#define ADMIN_LIST_LIMIT_MAX 10000u
/* ADMIN_TOPIC_MAX is the longest `help` topic (its words joined by one space). */
#define ADMIN_TOPIC_MAX 32
/* ADMIN_ERR_MAX is an error buffer size that holds every parser message whole. */
#define ADMIN_ERR_MAX 160

/* admin_cmd names the commands of the admin protocol. */
enum admin_cmd {
    ADMIN_CMD_HELP = 0,
    ADMIN_CMD_VERSION,
    ADMIN_CMD_STATUS,
    ADMIN_CMD_STATS,
    ADMIN_CMD_QUEUE_SUMMARY,
    ADMIN_CMD_QUEUE_LIST,
    ADMIN_CMD_QUEUE_SHOW,
    ADMIN_CMD_QUEUE_DELETE,
    ADMIN_CMD_QUEUE_RETRY,
    ADMIN_CMD_QUEUE_HOLD,
    ADMIN_CMD_QUEUE_RELEASE,
    ADMIN_CMD_FLUSH,
    ADMIN_CMD_DRAIN,
    ADMIN_CMD_RESUME,
    ADMIN_CMD_RELOAD,
    ADMIN_CMD_LOG_LEVEL,
    ADMIN_CMD_METRICS,
    ADMIN_CMD_DELIVERY_PAUSE,
    ADMIN_CMD_DELIVERY_RESUME,
    ADMIN_CMD_COUNT, /* not a command: the number of them */
};

/* admin_qstate is a `queue list --state` filter. */
enum admin_qstate {
    ADMIN_QSTATE_ANY = 0,  /* no filter */
    ADMIN_QSTATE_QUEUED,   /* waiting for its first attempt */
    ADMIN_QSTATE_ACTIVE,   /* being delivered now */
    ADMIN_QSTATE_DEFERRED, /* waiting for a retry after a temporary failure */
    ADMIN_QSTATE_HELD,     /* put on hold by an operator */
    ADMIN_QSTATE_DEAD,     /* dead-lettered */
    ADMIN_QSTATE_COUNT,
};

/* admin_request is one parsed request. Only the fields of its command are meaningful; the
 * others keep the values admin_request_parse gives every request (empty strings, false,
 * ADMIN_QSTATE_ANY, limit ADMIN_LIST_LIMIT_DEFAULT). Plain data, no pointers. */
struct admin_request {
    enum admin_cmd cmd;
    /* queue show/delete/retry/hold/release: the queue id, letters upper-cased; "" for
     * `queue retry all`. */
    char id[ADMIN_ID_MAX + 1];
    bool all;  /* queue retry all */
    bool body; /* queue show --body */
    /* queue list filters: |dest| lower-cased ("" = any), |state|, |limit| (1..MAX). */
    char dest[ADMIN_DEST_MAX + 1];
    enum admin_qstate state;
    unsigned limit;
    enum cmtp_log_level level; /* log level */
    /* help: the topic's words joined by one space ("" = every command); it names a command or
     * the first word of several (e.g. "queue"). */
    char topic[ADMIN_TOPIC_MAX + 1];
};

/* admin_cmd_info describes one command for `help` and cmtpctl. Static storage. */
struct admin_cmd_info {
    enum admin_cmd cmd;
    const char *name;    /* "queue show" */
    const char *args;    /* "ID [--body]", "" when none */
    const char *summary; /* one line */
    const char *help;    /* a paragraph, lines ending in '\n' */
    bool mutating;       /* changes the daemon's state (logged at info level) */
};

/* admin_cmd_info_get returns the description of |cmd|, or NULL for a value out of range. */
const struct admin_cmd_info *admin_cmd_info_get(enum admin_cmd cmd);

/* admin_topic_matches reports whether the help |topic| ("" matches everything) selects |cmd|:
 * the topic equals its name or is its first word(s) up to a space. */
bool admin_topic_matches(const char *topic, enum admin_cmd cmd);

/* admin_request_parse parses one request line of |len| octets at |line| (without its '\n'; a
 * trailing '\r' is refused like any other control character) into |req|. Tokens are separated
 * by exactly one space; every octet of a token is printable ASCII (0x21-0x7e). Returns 0, or
 * -EINVAL with a one-line reason in |err| (|errlen| octets, NUL-terminated, ADMIN_ERR_MAX is
 * enough; it quotes at most a short, printable piece of the input). Pure: no I/O, no allocation. */
int admin_request_parse(struct admin_request *req, const char *line, size_t len, char *err,
                        size_t errlen);

/* admin_qstate_name returns "queued", "active", "deferred", "held", "dead", or "any" for
 * ADMIN_QSTATE_ANY; NULL for a value out of range. */
const char *admin_qstate_name(enum admin_qstate s);

#endif
