/* admin/request.c — the admin protocol's command table and its strict request-line parser.
 * Not I/O and not JSON: pure functions, also compiled into tests/fuzz/fuzz_admin.c. */
#include "admin/request.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const struct admin_cmd_info cmd_table[ADMIN_CMD_COUNT] = {
    {ADMIN_CMD_HELP, "help", "[COMMAND]", "list the commands, or describe one",
     "Without an argument, lists every command with its arguments. With a command name (or its\n"
     "first word, e.g. `help queue`), describes the matching commands.\n",
     false},
    {ADMIN_CMD_VERSION, "version", "", "the daemon's version and the admin protocol version",
     "Prints the daemon's version and the admin protocol version (1).\n", false},
    {ADMIN_CMD_STATUS, "status", "", "version, uptime, pid, workers, listeners, Redis state",
     "Reports the daemon's version, process id, uptime, number of workers, listening addresses\n"
     "and the state of its Redis connections.\n",
     false},
    {ADMIN_CMD_STATS, "stats", "", "live counters and gauges, per worker and in total",
     "Reports every worker's counters (connections, handshakes, messages, bytes, Redis) and\n"
     "their total. Counters only grow; gauges (open connections, commands in flight) are\n"
     "values now.\n",
     false},
    {ADMIN_CMD_QUEUE_SUMMARY, "queue summary", "",
     "per destination: messages, age of the oldest, next attempt",
     "Summarises the queue per destination: the number of messages, the age of the oldest one\n"
     "and the time until the next delivery attempt.\n",
     false},
    {ADMIN_CMD_QUEUE_LIST, "queue list", "[--dest DOMAIN] [--state STATE] [--limit N]",
     "list queued messages, filtered",
     "Lists queued messages, oldest first. --dest keeps one destination; --state keeps one of\n"
     "queued, active, deferred, held, dead; --limit returns at most N messages (1-10000,\n"
     "default 100). Each option at most once, in any order.\n",
     false},
    {ADMIN_CMD_QUEUE_SHOW, "queue show", "ID [--body]",
     "one message: envelope, trace, attempts (the body only with --body)",
     "Shows one queued message: its envelope (originator, recipients, policy, trace), its\n"
     "delivery attempts and state. The body is not shown unless --body is given; it then comes\n"
     "base64-encoded and cut at a size limit.\n",
     false},
    {ADMIN_CMD_QUEUE_DELETE, "queue delete", "ID", "delete a message without delivering it",
     "Deletes a queued message for every recipient not yet delivered. No status report is\n"
     "sent. Cannot be undone.\n",
     true},
    {ADMIN_CMD_QUEUE_RETRY, "queue retry", "ID|all", "attempt delivery now",
     "Schedules a deferred message (or, with `all`, every deferred message) for delivery now.\n",
     true},
    {ADMIN_CMD_QUEUE_HOLD, "queue hold", "ID", "stop delivering a message until released",
     "Puts a message on hold: it is not delivered until `queue release`. Its lifetime still\n"
     "runs.\n",
     true},
    {ADMIN_CMD_QUEUE_RELEASE, "queue release", "ID", "release a held message",
     "Releases a held message: it is scheduled for delivery now.\n", true},
    {ADMIN_CMD_FLUSH, "flush", "", "attempt delivery of every deferred message now",
     "Schedules every deferred message for delivery now (like `queue retry all`), ignoring\n"
     "the retry back-off once.\n",
     true},
    {ADMIN_CMD_DRAIN, "drain", "", "stop accepting connections; finish what is in flight",
     "Stops accepting new connections; transactions in flight finish and sessions are closed\n"
     "at their next command boundary with `421 shutting-down`. The process keeps running (and\n"
     "delivering) until stopped. `resume` undoes it.\n",
     true},
    {ADMIN_CMD_RESUME, "resume", "", "accept connections again after drain",
     "Accepts new connections again after a drain.\n", true},
    {ADMIN_CMD_RELOAD, "reload", "", "reload the configuration and certificates",
     "Reads the configuration file and the certificates again. The new configuration is\n"
     "validated first: on any error the old one stays in force and the error is returned.\n"
     "Established connections are not dropped.\n",
     true},
    {ADMIN_CMD_LOG_LEVEL, "log level", "LEVEL", "set the log level: error, warn, info, debug",
     "Sets the level of the daemon's log until the next reload or restart.\n", true},
    {ADMIN_CMD_METRICS, "metrics", "", "every metric in the Prometheus text format",
     "Returns every metric in the Prometheus text exposition format 0.0.4 (the same text as\n"
     "the optional HTTP listener serves at /metrics).\n",
     false},
    {ADMIN_CMD_DELIVERY_PAUSE, "delivery pause", "", "stop claiming new deliveries and reports",
     "Stops this node's delivery engine from claiming queued messages and status-report items;\n"
     "deliveries in flight finish. Messages stay queued in Redis, where other nodes may deliver\n"
     "them. Ingest goes on. `delivery resume` undoes it; so does a reload that changes\n"
     "[delivery] enabled to yes. `status` shows the state.\n",
     true},
    {ADMIN_CMD_DELIVERY_RESUME, "delivery resume", "", "claim and deliver queued messages again",
     "Lets this node's delivery engine claim queued messages and report items again, after\n"
     "`delivery pause` or when it started with [delivery] enabled = no.\n",
     true},
};

static const char *const qstate_names[ADMIN_QSTATE_COUNT] = {
    "any", "queued", "active", "deferred", "held", "dead",
};

const struct admin_cmd_info *admin_cmd_info_get(enum admin_cmd cmd)
{
    if ((unsigned)cmd >= ADMIN_CMD_COUNT)
        return NULL;
    return &cmd_table[cmd];
}

const char *admin_qstate_name(enum admin_qstate s)
{
    if ((unsigned)s >= ADMIN_QSTATE_COUNT)
        return NULL;
    return qstate_names[s];
}

bool admin_topic_matches(const char *topic, enum admin_cmd cmd)
{
    const struct admin_cmd_info *ci = admin_cmd_info_get(cmd);
    if (ci == NULL)
        return false;
    size_t n = strlen(topic);
    if (n == 0)
        return true;
    if (strncmp(ci->name, topic, n) != 0)
        return false;
    return ci->name[n] == '\0' || ci->name[n] == ' ';
}

/* tok is one token of the request: |len| octets at |p| (not NUL-terminated). */
struct tok {
    const char *p;
    size_t len;
};

static bool tok_is(const struct tok *t, const char *s)
{
    size_t n = strlen(s);
    return t->len == n && memcmp(t->p, s, n) == 0;
}

/* fail writes the reason |msg| (a constant) into |err|, optionally followed by a quoted, short
 * piece of the input (|t|, printable ASCII by then). Returns -EINVAL. */
static int fail(char *err, size_t errlen, const char *msg, const struct tok *t)
{
    if (errlen == 0)
        return -EINVAL;
    if (t == NULL) {
        snprintf(err, errlen, "%s", msg);
    } else {
        int n = t->len > 32 ? 32 : (int)t->len;
        snprintf(err, errlen, "%s: \"%.*s%s\"", msg, n, t->p, t->len > 32 ? "..." : "");
    }
    return -EINVAL;
}

/* split cuts |line| into tokens separated by exactly one space. */
static int split(const char *line, size_t len, struct tok *toks, size_t *n, char *err,
                 size_t errlen)
{
    size_t count = 0, start = 0;

    if (len == 0)
        return fail(err, errlen, "empty request", NULL);
    if (len >= ADMIN_LINE_MAX)
        return fail(err, errlen, "request line too long", NULL);
    for (size_t i = 0; i <= len; i++) {
        if (i < len && line[i] != ' ') {
            unsigned char c = (unsigned char)line[i];
            if (c < 0x21 || c > 0x7e) {
                char msg[64];
                snprintf(msg, sizeof(msg), "invalid octet 0x%02x at offset %zu", c, i);
                return fail(err, errlen, msg, NULL);
            }
            continue;
        }
        if (i == start)
            return fail(err, errlen,
                        i == 0     ? "leading space"
                        : i == len ? "trailing space"
                                   : "tokens must be separated by one space",
                        NULL);
        if (count == ADMIN_TOKENS_MAX)
            return fail(err, errlen, "too many arguments", NULL);
        toks[count].p = line + start;
        toks[count].len = i - start;
        count++;
        start = i + 1;
    }
    *n = count;
    return 0;
}

/* parse_id checks and copies a queue id: letters and digits, '-', a decimal shard number;
 * letters are upper-cased (Crockford base32 is case-insensitive). */
static int parse_id(struct admin_request *req, const struct tok *t, char *err, size_t errlen)
{
    size_t dash = 0;
    if (t->len < 3 || t->len > ADMIN_ID_MAX)
        return fail(err, errlen, "bad queue id (length)", t);
    for (size_t i = 0; i < t->len; i++) {
        char c = t->p[i];
        if (c == '-') {
            if (dash != 0 || i == 0)
                return fail(err, errlen, "bad queue id", t);
            dash = i;
        } else if (dash != 0) {
            if (c < '0' || c > '9' || t->len - dash - 1 > 4)
                return fail(err, errlen, "bad queue id (shard)", t);
        } else if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))) {
            return fail(err, errlen, "bad queue id", t);
        }
    }
    if (dash == 0 || dash == t->len - 1)
        return fail(err, errlen, "bad queue id (no -SHARD)", t);
    for (size_t i = 0; i < t->len; i++) {
        char c = t->p[i];
        req->id[i] = (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
    }
    req->id[t->len] = '\0';
    return 0;
}

/* parse_dest checks and copies a destination: a domain or an address literal, lower-cased. */
static int parse_dest(struct admin_request *req, const struct tok *t, char *err, size_t errlen)
{
    if (t->len > ADMIN_DEST_MAX)
        return fail(err, errlen, "bad --dest (too long)", t);
    for (size_t i = 0; i < t->len; i++) {
        char c = t->p[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
                   c == '_' || c == ':' || c == '[' || c == ']'))
            return fail(err, errlen, "bad --dest", t);
        req->dest[i] = c;
    }
    req->dest[t->len] = '\0';
    return 0;
}

static int parse_limit(struct admin_request *req, const struct tok *t, char *err, size_t errlen)
{
    unsigned v = 0;
    if (t->len > 5 || (t->len > 1 && t->p[0] == '0'))
        return fail(err, errlen, "bad --limit (1-10000)", t);
    for (size_t i = 0; i < t->len; i++) {
        if (t->p[i] < '0' || t->p[i] > '9')
            return fail(err, errlen, "bad --limit (1-10000)", t);
        v = v * 10 + (unsigned)(t->p[i] - '0');
    }
    if (v < 1 || v > ADMIN_LIST_LIMIT_MAX)
        return fail(err, errlen, "bad --limit (1-10000)", t);
    req->limit = v;
    return 0;
}

static int parse_list(struct admin_request *req, const struct tok *a, size_t n, char *err,
                      size_t errlen)
{
    bool seen_dest = false, seen_state = false, seen_limit = false;
    for (size_t i = 0; i < n; i += 2) {
        const struct tok *opt = &a[i];
        bool *seen;
        if (tok_is(opt, "--dest"))
            seen = &seen_dest;
        else if (tok_is(opt, "--state"))
            seen = &seen_state;
        else if (tok_is(opt, "--limit"))
            seen = &seen_limit;
        else
            return fail(err, errlen, "unknown option of queue list", opt);
        if (*seen)
            return fail(err, errlen, "option given twice", opt);
        *seen = true;
        if (i + 1 >= n)
            return fail(err, errlen, "option needs a value", opt);
        const struct tok *v = &a[i + 1];
        int r;
        if (seen == &seen_dest) {
            r = parse_dest(req, v, err, errlen);
        } else if (seen == &seen_limit) {
            r = parse_limit(req, v, err, errlen);
        } else {
            r = fail(err, errlen, "bad --state (queued, active, deferred, held, dead)", v);
            for (unsigned s = ADMIN_QSTATE_QUEUED; s < ADMIN_QSTATE_COUNT; s++) {
                if (tok_is(v, qstate_names[s])) {
                    req->state = (enum admin_qstate)s;
                    r = 0;
                }
            }
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* parse_args checks the arguments |a| (|n| of them) of |req|->cmd. */
static int parse_args(struct admin_request *req, const struct tok *a, size_t n, char *err,
                      size_t errlen)
{
    const struct admin_cmd_info *ci = &cmd_table[req->cmd];
    char msg[64];

    switch (req->cmd) {
    case ADMIN_CMD_HELP: {
        size_t off = 0;
        for (size_t i = 0; i < n; i++) {
            if (off + a[i].len + (i ? 1 : 0) > ADMIN_TOPIC_MAX)
                return fail(err, errlen, "unknown help topic", &a[i]);
            if (i)
                req->topic[off++] = ' ';
            memcpy(req->topic + off, a[i].p, a[i].len);
            off += a[i].len;
        }
        req->topic[off] = '\0';
        for (unsigned c = 0; c < ADMIN_CMD_COUNT; c++)
            if (admin_topic_matches(req->topic, (enum admin_cmd)c))
                return 0;
        struct tok t = {req->topic, off};
        return fail(err, errlen, "unknown help topic", &t);
    }
    case ADMIN_CMD_QUEUE_LIST:
        return parse_list(req, a, n, err, errlen);
    case ADMIN_CMD_QUEUE_SHOW:
        if (n < 1)
            return fail(err, errlen, "queue show needs a queue id", NULL);
        if (n > 2 || (n == 2 && !tok_is(&a[1], "--body")))
            return fail(err, errlen, "usage: queue show ID [--body]", NULL);
        req->body = n == 2;
        return parse_id(req, &a[0], err, errlen);
    case ADMIN_CMD_QUEUE_RETRY:
        if (n != 1)
            return fail(err, errlen, "usage: queue retry ID|all", NULL);
        if (tok_is(&a[0], "all")) {
            req->all = true;
            return 0;
        }
        return parse_id(req, &a[0], err, errlen);
    case ADMIN_CMD_QUEUE_DELETE:
    case ADMIN_CMD_QUEUE_HOLD:
    case ADMIN_CMD_QUEUE_RELEASE:
        if (n != 1) {
            snprintf(msg, sizeof(msg), "usage: %s ID", ci->name);
            return fail(err, errlen, msg, NULL);
        }
        return parse_id(req, &a[0], err, errlen);
    case ADMIN_CMD_LOG_LEVEL:
        if (n != 1)
            return fail(err, errlen, "usage: log level error|warn|info|debug", NULL);
        if (cmtp_log_level_parse(&req->level, a[0].p, a[0].len) < 0)
            return fail(err, errlen, "bad log level (error, warn, info, debug)", &a[0]);
        return 0;
    default:
        if (n != 0) {
            snprintf(msg, sizeof(msg), "%s takes no arguments", ci->name);
            return fail(err, errlen, msg, NULL);
        }
        return 0;
    }
}

int admin_request_parse(struct admin_request *req, const char *line, size_t len, char *err,
                        size_t errlen)
{
    struct tok toks[ADMIN_TOKENS_MAX];
    size_t n = 0;

    memset(req, 0, sizeof(*req));
    req->cmd = ADMIN_CMD_COUNT;
    req->state = ADMIN_QSTATE_ANY;
    req->limit = ADMIN_LIST_LIMIT_DEFAULT;
    req->level = CMTP_LOG_INFO;
    if (errlen > 0)
        err[0] = '\0';
    if (line == NULL)
        return fail(err, errlen, "empty request", NULL);
    int r = split(line, len, toks, &n, err, errlen);
    if (r < 0)
        return r;

    /* The longest command name that matches the first one or two tokens. */
    size_t used = 0;
    for (unsigned c = 0; c < ADMIN_CMD_COUNT; c++) {
        const char *name = cmd_table[c].name;
        const char *sp = strchr(name, ' ');
        if (sp == NULL) {
            if (tok_is(&toks[0], name)) {
                req->cmd = (enum admin_cmd)c;
                used = 1;
                break;
            }
            continue;
        }
        size_t w1 = (size_t)(sp - name);
        if (toks[0].len != w1 || memcmp(toks[0].p, name, w1) != 0)
            continue;
        if (n >= 2 && tok_is(&toks[1], sp + 1)) {
            req->cmd = (enum admin_cmd)c;
            used = 2;
            break;
        }
        used = 1; /* the group word matched; the subcommand may still match later */
    }
    if (req->cmd == ADMIN_CMD_COUNT) {
        if (used == 1 && tok_is(&toks[0], "queue"))
            return n >= 2 ? fail(err, errlen,
                                 "unknown queue subcommand (summary, list, show, delete, "
                                 "retry, hold, release)",
                                 &toks[1])
                          : fail(err, errlen,
                                 "queue needs a subcommand: summary, list, show, delete, retry, "
                                 "hold, release",
                                 NULL);
        if (used == 1 && tok_is(&toks[0], "delivery"))
            return n >= 2
                       ? fail(err, errlen, "unknown delivery subcommand (pause, resume)", &toks[1])
                       : fail(err, errlen, "delivery needs a subcommand: pause, resume", NULL);
        if (used == 1 && tok_is(&toks[0], "log"))
            return n >= 2 ? fail(err, errlen, "unknown log subcommand (level)", &toks[1])
                          : fail(err, errlen, "log needs a subcommand: level", NULL);
        return fail(err, errlen, "unknown command (try help)", &toks[0]);
    }
    r = parse_args(req, toks + used, n - used, err, errlen);
    if (r < 0) {
        enum admin_cmd keep = req->cmd;
        memset(req, 0, sizeof(*req));
        req->cmd = keep;
        req->limit = ADMIN_LIST_LIMIT_DEFAULT;
        req->level = CMTP_LOG_INFO;
        return r;
    }
    return 0;
}
