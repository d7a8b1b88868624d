/* admin/metrics_http.c — the optional HTTP/1.1 scrape endpoint: GET /metrics on a loopback TCP
 * address, bounded request heads, a deadline per connection, Connection: close. Not a web
 * server: one resource, no keep-alive, no request bodies. */
#include "admin/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "admin/loop.h"

struct admin_http {
    struct admin_loop *loop;
    admin_metrics_fn metrics;
    void *arg;
    const struct cmtp_log *log;
    uint16_t port;
};

/* respond appends a whole response with |status| and |body| (|len| octets); |head_only| omits
 * the body (HEAD) but keeps its Content-Length. */
static void respond(struct admin_loop_conn *c, const char *status, const char *ctype,
                    const char *body, size_t len, bool head_only, const char *extra)
{
    admin_buf_printf(&c->out,
                     "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n%s\r\n",
                     status, ctype, len, extra);
    if (!head_only)
        admin_buf_append(&c->out, body, len);
    c->close_after = true;
}

static void respond_text(struct admin_loop_conn *c, const char *status, const char *text,
                         const char *extra)
{
    respond(c, status, "text/plain; charset=utf-8", text, strlen(text), false, extra);
}

/* find_head_end returns the length of the request head up to and including its blank line, or
 * 0 when it is not complete yet. */
static size_t find_head_end(const char *p, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (p[i] == '\n' && p[i + 1] == '\n')
            return i + 2;
        if (p[i] == '\n' && p[i + 1] == '\r' && i + 2 < n && p[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

static void serve_request(struct admin_http *h, struct admin_loop_conn *c, size_t head_len)
{
    const char *p = c->in;
    const char *eol = memchr(p, '\n', head_len);
    size_t line_len = (size_t)(eol - p);
    if (line_len > 0 && p[line_len - 1] == '\r')
        line_len--;
    /* request-line = method SP request-target SP HTTP-version */
    const char *sp1 = memchr(p, ' ', line_len);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', line_len - (size_t)(sp1 + 1 - p)) : NULL;
    if (sp1 == NULL || sp2 == NULL || sp1 == p || sp2 == sp1 + 1) {
        respond_text(c, "400 Bad Request", "bad request\n", "");
        return;
    }
    size_t mlen = (size_t)(sp1 - p), tlen = (size_t)(sp2 - sp1 - 1);
    const char *target = sp1 + 1, *version = sp2 + 1;
    size_t vlen = line_len - (size_t)(version - p);
    if (!((vlen == 8 && memcmp(version, "HTTP/1.1", 8) == 0) ||
          (vlen == 8 && memcmp(version, "HTTP/1.0", 8) == 0))) {
        respond_text(c, "400 Bad Request", "bad request\n", "");
        return;
    }
    bool get = mlen == 3 && memcmp(p, "GET", 3) == 0;
    bool head = mlen == 4 && memcmp(p, "HEAD", 4) == 0;
    if (!get && !head) {
        respond_text(c, "405 Method Not Allowed", "method not allowed\n", "Allow: GET, HEAD\r\n");
        return;
    }
    bool path_ok =
        tlen >= 8 && memcmp(target, "/metrics", 8) == 0 && (tlen == 8 || target[8] == '?');
    if (!path_ok) {
        respond(c, "404 Not Found", "text/plain; charset=utf-8", "not found\n", 10, head, "");
        return;
    }
    struct admin_buf text;
    char err[ADMIN_OP_ERR_MAX] = "";
    admin_buf_init(&text, ADMIN_METRICS_MAX);
    int r = h->metrics != NULL ? h->metrics(h->arg, &text, err, sizeof(err)) : -ENOTSUP;
    if (r == 0 && text.err != 0)
        r = text.err;
    if (r < 0) {
        if (h->log != NULL)
            CMTP_LOG(h->log, CMTP_LOG_WARN, "metrics-failed", cmtp_log_int("errno", -r),
                     cmtp_log_str("error", err));
        respond_text(c, "500 Internal Server Error", "metrics unavailable\n", "");
    } else {
        respond(c, "200 OK", ADMIN_METRICS_CONTENT_TYPE, text.data ? text.data : "", text.len, head,
                "");
    }
    admin_buf_cleanup(&text);
}

static void on_accept(void *arg, struct admin_loop_conn *c)
{
    (void)arg;
    (void)c;
}

static void on_input(void *arg, struct admin_loop_conn *c)
{
    struct admin_http *h = arg;
    size_t head = find_head_end(c->in, c->in_len);
    if (head == 0) {
        if (c->in_len >= ADMIN_HTTP_REQUEST_MAX)
            respond_text(c, "431 Request Header Fields Too Large", "request too large\n", "");
        else if (c->eof)
            c->close_after = true;
        return;
    }
    serve_request(h, c, head);
    admin_loop_consume(c, c->in_len);
}

/* parse_host fills |ss| from a numeric address with |port|; brackets around IPv6 allowed. */
static int parse_host(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len,
                      bool *loopback)
{
    char tmp[64];
    size_t n = strlen(host);
    if (n >= sizeof(tmp))
        return -EINVAL;
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        memcpy(tmp, host + 1, n - 2);
        tmp[n - 2] = '\0';
    } else {
        memcpy(tmp, host, n + 1);
    }
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, tmp, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        *len = sizeof(*a4);
        *loopback = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
        return 0;
    }
    if (inet_pton(AF_INET6, tmp, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        *len = sizeof(*a6);
        *loopback = IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
        return 0;
    }
    return -EINVAL;
}

struct admin_http *admin_metrics_http_new(const struct admin_http_config *cfg,
                                          const struct admin_ops *ops, void *ops_arg, char *err,
                                          size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    bool loopback = false;
    int fd = -1, one = 1;

    if (errlen > 0)
        err[0] = '\0';
    if (cfg == NULL || ops == NULL || cfg->host == NULL ||
        parse_host(cfg->host, cfg->port, &ss, &sl, &loopback) < 0) {
        snprintf(err, errlen, "metrics listener: a numeric IPv4 or IPv6 address is needed");
        return NULL;
    }
    if (!loopback && !cfg->allow_nonloopback) {
        snprintf(err, errlen, "metrics listener: %s is not a loopback address", cfg->host);
        return NULL;
    }
    unsigned clients = cfg->clients_max ? cfg->clients_max : ADMIN_HTTP_CLIENTS_MAX_DEFAULT;
    if (clients > ADMIN_CLIENTS_MAX_MAX) {
        snprintf(err, errlen, "metrics listener: clients_max out of range");
        return NULL;
    }
    struct admin_http *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->metrics = ops->metrics;
    h->arg = ops_arg;
    h->log = cfg->log;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        goto sys_err;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 64) < 0)
        goto sys_err;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        goto sys_err;
    h->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                            : ((struct sockaddr_in6 *)&ss)->sin6_port);
    struct admin_loop_config lc = {
        .conns_max = clients,
        .in_max = ADMIN_HTTP_REQUEST_MAX,
        .out_max = ADMIN_METRICS_MAX + 1024,
        .timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : ADMIN_HTTP_TIMEOUT_MS_DEFAULT,
        .idle = false,
        .busy_reply = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                      "Connection: close\r\n\r\n",
    };
    static const struct admin_loop_ops lops = {
        .on_accept = on_accept,
        .on_input = on_input,
    };
    h->loop = admin_loop_start(fd, &lc, &lops, h, err, errlen);
    if (h->loop == NULL) {
        free(h);
        return NULL;
    }
    return h;
sys_err:
    snprintf(err, errlen, "metrics listener %s:%u: %s", cfg->host, cfg->port, strerror(errno));
    if (fd >= 0)
        close(fd);
    free(h);
    return NULL;
}

uint16_t admin_metrics_http_port(const struct admin_http *h)
{
    return h->port;
}

void admin_metrics_http_free(struct admin_http *h)
{
    if (h == NULL)
        return;
    admin_loop_stop(h->loop);
    free(h);
}
