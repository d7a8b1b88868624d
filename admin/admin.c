/* admin/admin.c — the admin socket server: safe socket creation (mode, group, stale socket),
 * SO_PEERCRED checks, line framing, dispatch to the daemon's callbacks and JSON replies. Not
 * the callbacks themselves (the daemon's glue implements struct admin_ops). */
#include "admin/admin.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "admin/loop.h"

/* GROUPS_MAX bounds the supplementary groups read with SO_PEERGROUPS (Linux's NGROUPS_MAX). */
#define GROUPS_MAX 65536

struct admin_server {
    struct admin_loop *loop;
    struct admin_ops ops;
    void *ops_arg;
    const struct cmtp_log *log;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char version[64];
    dev_t dev; /* of the socket file we bound, to unlink only our own */
    ino_t ino;
    unsigned mode;
    gid_t gid; /* the allowed group (when mode has group bits) */
    bool group_allowed;
    uint64_t started_ms;
};

/* conn_ctx is the server's state per connection. */
struct conn_ctx {
    unsigned long uid;
    long pid;
};

static uint64_t realtime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* --- replies -------------------------------------------------------------------------------- */

/* clean_text copies |in| into |out| (|cap| octets) with every octet outside printable ASCII
 * replaced by '?', so that any error text is valid UTF-8 on one line. */
static void clean_text(char *out, size_t cap, const char *in)
{
    size_t i = 0;
    for (; in[i] != '\0' && i + 1 < cap; i++) {
        unsigned char c = (unsigned char)in[i];
        out[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[i] = '\0';
}

static const char *errno_text(int e)
{
    switch (e) {
    case ENOENT:
        return "not found";
    case ETIMEDOUT:
        return "timed out";
    case ENOTSUP:
        return "not supported";
    case EBUSY:
        return "busy";
    case EINVAL:
        return "invalid argument";
    case ENOMEM:
        return "out of memory";
    case ENOTCONN:
        return "not connected";
    case EAGAIN:
        return "try again later";
    case EPERM:
    case EACCES:
        return "operation not permitted";
    case ESHUTDOWN:
        return "shutting down";
    default:
        return "internal error";
    }
}

/* put_json appends |j| as one compact ASCII line (with '\n') to |out|. When it does not fit the
 * reply cap, an error line replaces it. Returns 0 or a negative errno of |out|. */
static int put_json(struct admin_buf *out, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER);
    if (s == NULL)
        return admin_buf_puts(out, "{\"ok\":false,\"error\":\"out of memory\"}\n");
    size_t n = strlen(s);
    int r;
    if (n + 1 > ADMIN_REPLY_MAX) {
        r = admin_buf_puts(out, "{\"ok\":false,\"error\":\"reply too large\"}\n");
    } else {
        r = admin_buf_append(out, s, n);
        if (r == 0)
            r = admin_buf_putc(out, '\n');
    }
    free(s);
    return r;
}

static int put_error(struct admin_buf *out, const char *msg)
{
    char clean[ADMIN_OP_ERR_MAX + ADMIN_ERR_MAX];
    clean_text(clean, sizeof(clean), msg);
    json_t *j = json_pack("{s:b,s:s}", "ok", 0, "error", clean);
    if (j == NULL)
        return admin_buf_puts(out, "{\"ok\":false,\"error\":\"out of memory\"}\n");
    int r = put_json(out, j);
    json_decref(j);
    return r;
}

/* --- reply shapes (docs/ADMIN.md) ----------------------------------------------------------- */

/* shape_field is one required field of a reply. */
struct shape_field {
    const char *key;
    json_type type; /* JSON_INTEGER, JSON_ARRAY, JSON_OBJECT */
};

static const char *type_name(json_type t)
{
    switch (t) {
    case JSON_INTEGER:
        return "integer";
    case JSON_ARRAY:
        return "array";
    case JSON_OBJECT:
        return "object";
    case JSON_STRING:
        return "string";
    default:
        return "value";
    }
}

/* check_shape returns NULL when |j| has the required fields of |cmd|, or the missing key. */
static const struct shape_field *check_shape(enum admin_cmd cmd, const json_t *j)
{
    static const struct shape_field status[] = {{"workers", JSON_INTEGER},
                                                {"listeners", JSON_ARRAY},
                                                {"redis", JSON_OBJECT},
                                                {NULL, JSON_NULL}};
    static const struct shape_field stats[] = {
        {"workers", JSON_ARRAY}, {"total", JSON_OBJECT}, {NULL, JSON_NULL}};
    static const struct shape_field summary[] = {{"destinations", JSON_ARRAY}, {NULL, JSON_NULL}};
    static const struct shape_field list[] = {{"messages", JSON_ARRAY}, {NULL, JSON_NULL}};
    static const struct shape_field show[] = {{"message", JSON_OBJECT}, {NULL, JSON_NULL}};
    static const struct shape_field affected[] = {{"affected", JSON_INTEGER}, {NULL, JSON_NULL}};
    const struct shape_field *f;

    switch (cmd) {
    case ADMIN_CMD_STATUS:
        f = status;
        break;
    case ADMIN_CMD_STATS:
        f = stats;
        break;
    case ADMIN_CMD_QUEUE_SUMMARY:
        f = summary;
        break;
    case ADMIN_CMD_QUEUE_LIST:
        f = list;
        break;
    case ADMIN_CMD_QUEUE_SHOW:
        f = show;
        break;
    case ADMIN_CMD_QUEUE_DELETE:
    case ADMIN_CMD_QUEUE_RETRY:
    case ADMIN_CMD_QUEUE_HOLD:
    case ADMIN_CMD_QUEUE_RELEASE:
    case ADMIN_CMD_FLUSH:
        f = affected;
        break;
    default:
        return NULL;
    }
    for (; f->key != NULL; f++) {
        json_t *v = json_object_get(j, f->key);
        if (v == NULL || json_typeof(v) != f->type)
            return f;
        if (f->type == JSON_INTEGER && json_integer_value(v) < 0)
            return f;
    }
    if (cmd == ADMIN_CMD_STATS) {
        size_t i;
        json_t *w;
        json_array_foreach(json_object_get(j, "workers"), i, w)
        {
            if (!json_is_object(w))
                return &stats[0];
        }
    }
    return NULL;
}

/* --- commands ------------------------------------------------------------------------------- */

static admin_op_fn op_for(const struct admin_ops *ops, enum admin_cmd cmd)
{
    switch (cmd) {
    case ADMIN_CMD_STATUS:
        return ops->status;
    case ADMIN_CMD_STATS:
        return ops->stats;
    case ADMIN_CMD_QUEUE_SUMMARY:
        return ops->queue_summary;
    case ADMIN_CMD_QUEUE_LIST:
        return ops->queue_list;
    case ADMIN_CMD_QUEUE_SHOW:
        return ops->queue_show;
    case ADMIN_CMD_QUEUE_DELETE:
        return ops->queue_delete;
    case ADMIN_CMD_QUEUE_RETRY:
        return ops->queue_retry;
    case ADMIN_CMD_QUEUE_HOLD:
        return ops->queue_hold;
    case ADMIN_CMD_QUEUE_RELEASE:
        return ops->queue_release;
    case ADMIN_CMD_FLUSH:
        return ops->flush;
    case ADMIN_CMD_DRAIN:
        return ops->drain;
    case ADMIN_CMD_RESUME:
        return ops->resume;
    case ADMIN_CMD_RELOAD:
        return ops->reload;
    case ADMIN_CMD_LOG_LEVEL:
        return ops->log_level;
    case ADMIN_CMD_DELIVERY_PAUSE:
        return ops->delivery_pause;
    case ADMIN_CMD_DELIVERY_RESUME:
        return ops->delivery_resume;
    default:
        return NULL;
    }
}

static json_t *help_reply(const struct admin_request *req)
{
    json_t *arr = json_array();
    if (arr == NULL)
        return NULL;
    for (unsigned c = 0; c < ADMIN_CMD_COUNT; c++) {
        if (!admin_topic_matches(req->topic, (enum admin_cmd)c))
            continue;
        const struct admin_cmd_info *ci = admin_cmd_info_get((enum admin_cmd)c);
        char usage[128];
        snprintf(usage, sizeof(usage), "%s%s%s", ci->name, ci->args[0] ? " " : "", ci->args);
        json_t *o = json_pack("{s:s,s:s,s:s,s:b}", "command", ci->name, "usage", usage, "summary",
                              ci->summary, "mutating", ci->mutating);
        if (o == NULL || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            return NULL;
        }
        if (req->topic[0] != '\0' && json_object_set_new(o, "help", json_string(ci->help)) < 0) {
            json_decref(arr);
            return NULL;
        }
    }
    json_t *r = json_pack("{s:b,s:o}", "ok", 1, "commands", arr);
    return r;
}

/* run_metrics answers `metrics`: the callback's text wrapped in a JSON string. */
static int run_metrics(struct admin_server *s, struct admin_buf *out)
{
    struct admin_buf text;
    char err[ADMIN_OP_ERR_MAX] = "";
    int r;

    if (s->ops.metrics == NULL)
        return put_error(out, "not supported");
    admin_buf_init(&text, ADMIN_METRICS_MAX);
    r = s->ops.metrics(s->ops_arg, &text, err, sizeof(err));
    if (r == 0 && text.err != 0)
        r = text.err;
    if (r < 0) {
        admin_buf_cleanup(&text);
        if (r == -ENOSPC && err[0] == '\0')
            return put_error(out, "internal error: metrics text too large");
        return put_error(out, err[0] ? err : errno_text(-r));
    }
    json_t *str = json_stringn(text.data ? text.data : "", text.len);
    admin_buf_cleanup(&text);
    if (str == NULL)
        return put_error(out, "internal error: metrics text is not valid UTF-8");
    json_t *j = json_pack("{s:b,s:s,s:o}", "ok", 1, "content_type", "text/plain; version=0.0.4",
                          "text", str);
    if (j == NULL)
        return put_error(out, "out of memory");
    r = put_json(out, j);
    json_decref(j);
    return r;
}

static void audit(struct admin_server *s, const struct admin_request *req, unsigned long uid,
                  int result, const char *err)
{
    const struct admin_cmd_info *ci = admin_cmd_info_get(req->cmd);
    if (s->log == NULL || ci == NULL)
        return;
    enum cmtp_log_level lvl = ci->mutating ? CMTP_LOG_INFO : CMTP_LOG_DEBUG;
    if (!cmtp_log_enabled(s->log, lvl))
        return;
    CMTP_LOG(s->log, lvl, "admin-command", cmtp_log_str("command", ci->name),
             cmtp_log_str("id", req->id[0] ? req->id : (req->all ? "all" : "")),
             cmtp_log_uint("uid", uid), cmtp_log_str("result", result == 0 ? "ok" : "error"),
             cmtp_log_str("error", err));
}

int admin_server_handle_line(struct admin_server *s, const char *line, size_t len,
                             unsigned long peer_uid, struct admin_buf *out)
{
    struct admin_request req;
    char err[ADMIN_OP_ERR_MAX + ADMIN_ERR_MAX] = "";
    json_t *j = NULL, *reply = NULL;
    int r;

    if (admin_request_parse(&req, line, len, err, sizeof(err)) < 0) {
        if (s->log != NULL)
            CMTP_LOG(s->log, CMTP_LOG_DEBUG, "admin-bad-request", cmtp_log_uint("uid", peer_uid),
                     cmtp_log_str("error", err));
        return put_error(out, err);
    }
    switch (req.cmd) {
    case ADMIN_CMD_HELP:
        reply = help_reply(&req);
        goto send;
    case ADMIN_CMD_VERSION:
        reply = json_pack("{s:b,s:s,s:i}", "ok", 1, "version", s->version, "admin_protocol",
                          ADMIN_PROTOCOL_VERSION);
        goto send;
    case ADMIN_CMD_METRICS:
        audit(s, &req, peer_uid, 0, "");
        return run_metrics(s, out);
    default:
        break;
    }

    admin_op_fn fn = op_for(&s->ops, req.cmd);
    if (fn == NULL && req.cmd != ADMIN_CMD_STATUS) {
        audit(s, &req, peer_uid, -ENOTSUP, "not supported");
        return put_error(out, "not supported");
    }
    j = json_object();
    if (j == NULL)
        return put_error(out, "out of memory");
    if (fn != NULL) {
        r = fn(s->ops_arg, &req, j, err, sizeof(err));
        if (r < 0) {
            if (err[0] == '\0')
                snprintf(err, sizeof(err), "%s", errno_text(-r));
            audit(s, &req, peer_uid, r, err);
            json_decref(j);
            return put_error(out, err);
        }
        const struct shape_field *bad = check_shape(req.cmd, j);
        if (bad != NULL) {
            const struct admin_cmd_info *ci = admin_cmd_info_get(req.cmd);
            snprintf(err, sizeof(err), "internal error: the %s reply lacks \"%s\" (%s)", ci->name,
                     bad->key, type_name(bad->type));
            audit(s, &req, peer_uid, -EPROTO, err);
            json_decref(j);
            return put_error(out, err);
        }
    }
    audit(s, &req, peer_uid, 0, "");
    reply = json_pack("{s:b}", "ok", 1);
    if (reply == NULL)
        goto oom;
    if (req.cmd == ADMIN_CMD_STATUS) {
        uint64_t now = realtime_ms();
        json_object_set_new(reply, "version", json_string(s->version));
        json_object_set_new(reply, "pid", json_integer((json_int_t)getpid()));
        json_object_set_new(
            reply, "uptime_s",
            json_integer((json_int_t)(now > s->started_ms ? (now - s->started_ms) / 1000u : 0)));
    }
    if (req.cmd == ADMIN_CMD_LOG_LEVEL)
        json_object_set_new(reply, "level", json_string(cmtp_log_level_name(req.level)));
    json_object_del(j, "ok");
    json_object_del(j, "error");
    if (json_object_update_missing(reply, j) < 0)
        goto oom;
    json_decref(j);
    j = NULL;
send:
    if (reply == NULL)
        goto oom;
    r = put_json(out, reply);
    json_decref(reply);
    return r;
oom:
    json_decref(j);
    json_decref(reply);
    return put_error(out, "out of memory");
}

/* --- the loop's handler --------------------------------------------------------------------- */

/* peer_in_group reports whether the peer of |fd| (primary gid |pgid|) is in group |gid|. */
static bool peer_in_group(int fd, gid_t pgid, gid_t gid)
{
    gid_t small[64];
    gid_t *groups = small;
    socklen_t len = sizeof(small);
    bool in = pgid == gid;

    if (in)
        return true;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0) {
        if (errno != ERANGE || len == 0 || len > GROUPS_MAX * sizeof(gid_t))
            return false;
        groups = malloc(len);
        if (groups == NULL)
            return false;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0) {
            free(groups);
            return false;
        }
    }
    for (size_t i = 0; i < len / sizeof(gid_t); i++)
        if (groups[i] == gid)
            in = true;
    if (groups != small)
        free(groups);
    return in;
}

static void on_accept(void *arg, struct admin_loop_conn *c)
{
    struct admin_server *s = arg;
    struct ucred uc;
    socklen_t len = sizeof(uc);
    struct conn_ctx *cx = calloc(1, sizeof(*cx));
    bool ok = false;

    c->ctx = cx;
    if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) == 0 && len == sizeof(uc)) {
        ok = uc.uid == 0 || uc.uid == geteuid() ||
             (s->group_allowed && peer_in_group(c->fd, uc.gid, s->gid));
        if (cx != NULL) {
            cx->uid = (unsigned long)uc.uid;
            cx->pid = (long)uc.pid;
        }
    } else {
        uc.uid = (uid_t)-1;
        uc.pid = 0;
    }
    if (cx == NULL) {
        admin_buf_puts(&c->out, "{\"ok\":false,\"error\":\"out of memory\"}\n");
        c->close_after = true;
        return;
    }
    if (!ok) {
        if (s->log != NULL)
            CMTP_LOG(s->log, CMTP_LOG_WARN, "admin-refused",
                     cmtp_log_uint("uid", (uint64_t)(unsigned long)uc.uid),
                     cmtp_log_int("pid", (int64_t)uc.pid));
        admin_buf_puts(&c->out, ADMIN_REFUSED_REPLY);
        c->close_after = true;
    }
}

static void on_input(void *arg, struct admin_loop_conn *c)
{
    struct admin_server *s = arg;
    struct conn_ctx *cx = c->ctx;
    char *nl = memchr(c->in, '\n', c->in_len);

    if (nl == NULL) {
        if (c->in_len >= ADMIN_LINE_MAX) {
            put_error(&c->out, "request line too long (limit 4096 octets)");
            c->close_after = true;
        } else if (c->eof) {
            c->close_after = true; /* a partial last line is dropped */
        }
        return;
    }
    size_t len = (size_t)(nl - c->in);
    /* "\r\n" is accepted as a line end too (telnet, nc -C). */
    size_t llen = len > 0 && c->in[len - 1] == '\r' ? len - 1 : len;
    int r = admin_server_handle_line(s, c->in, llen, cx->uid, &c->out);
    if (r < 0) {
        admin_buf_reset(&c->out);
        admin_buf_puts(&c->out, "{\"ok\":false,\"error\":\"reply too large\"}\n");
    }
    admin_loop_consume(c, len + 1);
}

static void on_timeout(void *arg, struct admin_loop_conn *c)
{
    (void)arg;
    admin_buf_reset(&c->out);
    c->out_off = 0;
    admin_buf_puts(&c->out, "{\"ok\":false,\"error\":\"idle timeout\"}\n");
}

static void on_close(void *arg, struct admin_loop_conn *c)
{
    (void)arg;
    free(c->ctx);
    c->ctx = NULL;
}

/* --- socket creation ------------------------------------------------------------------------ */

/* prepare_path removes a stale socket at |path|: only a socket, and only when connecting to it
 * is refused (nobody listens). Returns 0 (nothing there or removed) or a negative errno. */
static int prepare_path(const struct sockaddr_un *sa, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(sa->sun_path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        int e = errno;
        snprintf(err, errlen, "%s: %s", sa->sun_path, strerror(e));
        return -e;
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket", sa->sun_path);
        return -EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "socket: %s", strerror(e));
        return -e;
    }
    int r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    int e = errno;
    close(fd);
    if (r == 0) {
        snprintf(err, errlen, "%s: another process is listening (is cmtpd already running?)",
                 sa->sun_path);
        return -EADDRINUSE;
    }
    if (e != ECONNREFUSED) {
        snprintf(err, errlen, "%s: cannot probe the existing socket: %s", sa->sun_path,
                 strerror(e));
        return -e;
    }
    if (unlink(sa->sun_path) < 0 && errno != ENOENT) {
        e = errno;
        snprintf(err, errlen, "%s: cannot remove the stale socket: %s", sa->sun_path, strerror(e));
        return -e;
    }
    return 0;
}

static int lookup_group(const char *name, gid_t *gid, char *err, size_t errlen)
{
    struct group gr, *res = NULL;
    char buf[4096];
    int r = getgrnam_r(name, &gr, buf, sizeof(buf), &res);
    if (r != 0 || res == NULL) {
        snprintf(err, errlen, "unknown group %s", name);
        return -ENOENT;
    }
    *gid = gr.gr_gid;
    return 0;
}

static int lookup_user(const char *name, uid_t *uid, char *err, size_t errlen)
{
    struct passwd pw, *res = NULL;
    char buf[4096];
    int r = getpwnam_r(name, &pw, buf, sizeof(buf), &res);
    if (r != 0 || res == NULL) {
        snprintf(err, errlen, "unknown user %s", name);
        return -ENOENT;
    }
    *uid = pw.pw_uid;
    return 0;
}

struct admin_server *admin_server_new(const struct admin_config *cfg, const struct admin_ops *ops,
                                      void *ops_arg, char *err, size_t errlen)
{
    struct admin_server *s = NULL;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    int fd = -1;
    uid_t owner = (uid_t)-1;
    bool bound = false;

    if (errlen > 0)
        err[0] = '\0';
    if (cfg == NULL || ops == NULL || cfg->path == NULL || cfg->path[0] == '\0' ||
        strlen(cfg->path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "admin socket path missing or longer than %zu octets",
                 sizeof(sa.sun_path) - 1);
        return NULL;
    }
    unsigned mode = cfg->mode ? cfg->mode : ADMIN_MODE_DEFAULT;
    if ((mode & ~0666u) != 0 || (mode & 0600u) != 0600u) {
        snprintf(err, errlen, "admin socket mode %04o: must include 0600 and be within 0666", mode);
        return NULL;
    }
    unsigned clients = cfg->clients_max ? cfg->clients_max : ADMIN_CLIENTS_MAX_DEFAULT;
    unsigned idle = cfg->idle_timeout_ms ? cfg->idle_timeout_ms : ADMIN_IDLE_TIMEOUT_MS_DEFAULT;
    if (clients > ADMIN_CLIENTS_MAX_MAX || idle > ADMIN_IDLE_TIMEOUT_MS_MAX) {
        snprintf(err, errlen, "admin limits out of range");
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->ops = *ops;
    s->ops_arg = ops_arg;
    s->log = cfg->log;
    s->mode = mode;
    s->started_ms = cfg->started_ms ? cfg->started_ms : realtime_ms();
    snprintf(s->version, sizeof(s->version), "%s", cfg->version ? cfg->version : "unknown");
    snprintf(s->path, sizeof(s->path), "%s", cfg->path);
    memcpy(sa.sun_path, cfg->path, strlen(cfg->path) + 1);
    s->gid = getegid();
    if (cfg->group != NULL && cfg->group[0] != '\0' &&
        lookup_group(cfg->group, &s->gid, err, errlen) < 0)
        goto err;
    s->group_allowed = (mode & 0060u) != 0;
    if (cfg->owner != NULL && cfg->owner[0] != '\0' &&
        lookup_user(cfg->owner, &owner, err, errlen) < 0)
        goto err;

    if (prepare_path(&sa, err, errlen) < 0)
        goto err;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        goto err;
    }
    /* Linux creates the socket file with the socket inode's mode less the umask: make it
     * owner-only before bind, so the file is never wider than 0600 until it has its group. */
    if (fchmod(fd, 0600) < 0) {
        snprintf(err, errlen, "fchmod: %s", strerror(errno));
        goto err;
    }
    if (bind(fd, (const struct sockaddr *)&sa, sizeof(sa)) < 0) {
        snprintf(err, errlen, "bind %s: %s", s->path, strerror(errno));
        goto err;
    }
    bound = true;
    if (lstat(s->path, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s: vanished after bind", s->path);
        goto err;
    }
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    if ((owner != (uid_t)-1 || s->gid != st.st_gid) && lchown(s->path, owner, s->gid) < 0) {
        snprintf(err, errlen, "chown %s: %s", s->path, strerror(errno));
        goto err;
    }
    if (chmod(s->path, mode) < 0) {
        snprintf(err, errlen, "chmod %s: %s", s->path, strerror(errno));
        goto err;
    }
    if (listen(fd, 64) < 0) {
        snprintf(err, errlen, "listen %s: %s", s->path, strerror(errno));
        goto err;
    }
    struct admin_loop_config lc = {
        .conns_max = clients,
        .in_max = ADMIN_LINE_MAX,
        .out_max = ADMIN_REPLY_MAX + 256,
        .timeout_ms = idle,
        .idle = true,
        .busy_reply = ADMIN_BUSY_REPLY,
    };
    static const struct admin_loop_ops lops = {
        .on_accept = on_accept,
        .on_input = on_input,
        .on_timeout = on_timeout,
        .on_close = on_close,
    };
    s->loop = admin_loop_start(fd, &lc, &lops, s, err, errlen);
    fd = -1; /* the loop owns (or closed) it */
    if (s->loop == NULL)
        goto err;
    if (s->log != NULL) {
        char m[8];
        snprintf(m, sizeof(m), "%04o", mode & 07777u);
        CMTP_LOG(s->log, CMTP_LOG_INFO, "admin-listening", cmtp_log_str("socket", s->path),
                 cmtp_log_str("mode", m));
    }
    return s;
err:
    if (fd >= 0)
        close(fd);
    if (bound)
        unlink(s->path);
    free(s);
    return NULL;
}

void admin_server_free(struct admin_server *s)
{
    struct stat st;
    if (s == NULL)
        return;
    admin_loop_stop(s->loop);
    if (lstat(s->path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == s->dev &&
        st.st_ino == s->ino)
        unlink(s->path);
    free(s);
}
