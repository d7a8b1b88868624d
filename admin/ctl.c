/* admin/ctl.c — cmtpctl's command line: options, local help, the request line checked with the
 * protocol's own parser before anything is sent, the call, and the exit code. Not the
 * rendering (admin/ctl_format.c). */
#include "admin/ctl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/admin.h"
#include "admin/client.h"
#include "core/config.h"

void admin_ctl_usage(struct admin_buf *out)
{
    admin_buf_puts(out,
                   "usage: cmtpctl [-s SOCKET] [--json] [-t SECONDS] COMMAND [ARGS...]\n"
                   "       cmtpctl help [COMMAND]      cmtpctl COMMAND --help\n"
                   "\n"
                   "Talks to a running cmtpd over its admin socket and prints the answer: tables\n"
                   "and key: value lines by default, the daemon's JSON reply line with --json.\n"
                   "\n"
                   "Options:\n"
                   "  -s, --socket PATH   admin socket (default: $" ADMIN_CTL_SOCKET_ENV
                   ", else " CMTP_CONFIG_ADMIN_SOCKET_DEFAULT ")\n"
                   "  -j, --json          print the reply as JSON (one line), for scripts\n"
                   "  -t, --timeout SEC   wait at most SEC seconds for the reply (default 60)\n"
                   "  -h, --help          this text\n"
                   "\n"
                   "Commands:\n");
    for (unsigned c = 0; c < ADMIN_CMD_COUNT; c++) {
        const struct admin_cmd_info *ci = admin_cmd_info_get((enum admin_cmd)c);
        char usage[96];
        snprintf(usage, sizeof(usage), "%s%s%s", ci->name, ci->args[0] ? " " : "", ci->args);
        if (strlen(usage) <= 28)
            admin_buf_printf(out, "  %-28s %s\n", usage, ci->summary);
        else
            admin_buf_printf(out, "  %s\n  %-28s %s\n", usage, "", ci->summary);
    }
    admin_buf_puts(out, "\n"
                        "Exit status:\n"
                        "  0  the daemon answered ok (or help was printed)\n"
                        "  1  the daemon answered with an error (printed on standard error)\n"
                        "  2  usage error: bad option, unknown command or bad arguments\n"
                        "  3  no answer: the socket is missing, nobody listens, permission is\n"
                        "     denied, too many clients, or the reply timed out or was invalid\n"
                        "\n"
                        "See docs/ADMIN.md for the protocol and cmtpctl(8).\n");
}

int admin_ctl_help(struct admin_buf *out, const char *topic)
{
    bool any = false;
    for (unsigned c = 0; c < ADMIN_CMD_COUNT; c++) {
        if (!admin_topic_matches(topic, (enum admin_cmd)c))
            continue;
        const struct admin_cmd_info *ci = admin_cmd_info_get((enum admin_cmd)c);
        if (any)
            admin_buf_putc(out, '\n');
        any = true;
        admin_buf_printf(out, "usage: cmtpctl %s%s%s\n  %s\n\n", ci->name, ci->args[0] ? " " : "",
                         ci->args, ci->summary);
        admin_buf_puts(out, ci->help);
        if (ci->mutating)
            admin_buf_puts(out, "Changes the daemon's state; logged with the caller's uid.\n");
    }
    return any ? 0 : -ENOENT;
}

/* topic_of finds the command named by the first words of |words| (|n| of them): two words, then
 * one. Writes the topic into |topic|; returns false when none matches. */
static bool topic_of(char **words, int n, char *topic, size_t cap)
{
    for (int k = n >= 2 ? 2 : n; k >= 1; k--) {
        if (k == 2)
            snprintf(topic, cap, "%s %s", words[0], words[1]);
        else
            snprintf(topic, cap, "%s", words[0]);
        for (unsigned c = 0; c < ADMIN_CMD_COUNT; c++) {
            const struct admin_cmd_info *ci = admin_cmd_info_get((enum admin_cmd)c);
            if (strcmp(ci->name, topic) == 0)
                return true;
        }
        if (k == 1)
            for (unsigned c = 0; c < ADMIN_CMD_COUNT; c++)
                if (admin_topic_matches(topic, (enum admin_cmd)c))
                    return true;
    }
    return false;
}

/* connect_hint explains a failed call for an operator. */
static void connect_hint(struct admin_buf *e, int r, const char *path, const char *err)
{
    admin_buf_puts(e, "cmtpctl: ");
    switch (r) {
    case -ENOENT:
        admin_buf_printf(e, "no admin socket at %s: is cmtpd running? (-s or $%s)\n", path,
                         ADMIN_CTL_SOCKET_ENV);
        break;
    case -ECONNREFUSED:
        admin_buf_printf(e, "nobody listens on %s: cmtpd is not running (stale socket)\n", path);
        break;
    case -EACCES:
    case -EPERM:
        admin_buf_printf(e,
                         "permission denied on %s: run as root, as the daemon's user or as a "
                         "member of the admin group\n",
                         path);
        break;
    default:
        admin_buf_printf(e, "%s\n", err);
        break;
    }
}

int admin_ctl_run(int argc, char **argv, const char *env_socket, struct admin_buf *out,
                  struct admin_buf *errout)
{
    const char *path =
        env_socket != NULL && env_socket[0] ? env_socket : CMTP_CONFIG_ADMIN_SOCKET_DEFAULT;
    bool json = false, help = false;
    unsigned timeout_s = ADMIN_CTL_TIMEOUT_S_DEFAULT;
    char **words = calloc((size_t)(argc > 0 ? argc : 1), sizeof(char *));
    int nw = 0, code = ADMIN_CTL_EXIT_USAGE;
    struct admin_buf line, reply;
    json_t *j = NULL;

    admin_buf_init(&line, ADMIN_LINE_MAX - 1);
    admin_buf_init(&reply, ADMIN_REPLY_MAX + 1);
    if (words == NULL) {
        admin_buf_puts(errout, "cmtpctl: out of memory\n");
        return ADMIN_CTL_EXIT_USAGE;
    }
    /* Options: before the command, and --json / --help anywhere. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool before = nw == 0;
        if (strcmp(a, "--json") == 0 || (before && strcmp(a, "-j") == 0)) {
            json = true;
        } else if (strcmp(a, "--help") == 0 || (before && strcmp(a, "-h") == 0)) {
            help = true;
        } else if (before && (strcmp(a, "-s") == 0 || strcmp(a, "--socket") == 0)) {
            if (++i >= argc) {
                admin_buf_printf(errout, "cmtpctl: %s needs a path\n", a);
                goto out;
            }
            path = argv[i];
        } else if (before && strncmp(a, "--socket=", 9) == 0) {
            path = a + 9;
        } else if (before && (strcmp(a, "-t") == 0 || strcmp(a, "--timeout") == 0)) {
            char *end = NULL;
            unsigned long v = i + 1 < argc ? strtoul(argv[i + 1], &end, 10) : 0;
            if (i + 1 >= argc || end == argv[i + 1] || *end != '\0' || v == 0 || v > 3600) {
                admin_buf_puts(errout, "cmtpctl: --timeout needs 1-3600 seconds\n");
                goto out;
            }
            timeout_s = (unsigned)v;
            i++;
        } else if (before && a[0] == '-') {
            admin_buf_printf(errout, "cmtpctl: unknown option ");
            admin_buf_append(errout, a, strnlen(a, 64));
            admin_buf_puts(errout, " (try cmtpctl --help)\n");
            goto out;
        } else {
            words[nw++] = argv[i];
        }
    }
    if (nw == 0) {
        admin_ctl_usage(help ? out : errout);
        code = help ? ADMIN_CTL_EXIT_OK : ADMIN_CTL_EXIT_USAGE;
        goto out;
    }
    if (help || strcmp(words[0], "help") == 0) {
        char topic[ADMIN_TOPIC_MAX + 1] = "";
        char **tw = help ? words : words + 1;
        int tn = help ? nw : nw - 1;
        if (tn > 0 && !topic_of(tw, tn, topic, sizeof(topic))) {
            admin_buf_puts(errout, "cmtpctl: no such command (try cmtpctl help)\n");
            goto out;
        }
        if (tn == 0)
            admin_ctl_usage(out);
        else
            admin_ctl_help(out, topic);
        code = ADMIN_CTL_EXIT_OK;
        goto out;
    }
    for (int i = 0; i < nw; i++) {
        /* One argument is one token: a space or control character inside it would change the
         * request's meaning, so it is refused rather than passed on. */
        for (const char *c = words[i]; *c != '\0'; c++) {
            if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f) {
                admin_buf_printf(errout,
                                 "cmtpctl: argument %d contains a space or a character that is "
                                 "not printable ASCII\n",
                                 i + 1);
                goto out;
            }
        }
        if (words[i][0] == '\0') {
            admin_buf_printf(errout, "cmtpctl: argument %d is empty\n", i + 1);
            goto out;
        }
        if (i > 0)
            admin_buf_putc(&line, ' ');
        admin_buf_puts(&line, words[i]);
    }
    struct admin_request req;
    char perr[ADMIN_ERR_MAX];
    if (line.err != 0) {
        admin_buf_puts(errout, "cmtpctl: the command line is too long\n");
        goto out;
    }
    if (admin_request_parse(&req, line.data, line.len, perr, sizeof(perr)) < 0) {
        admin_buf_printf(errout, "cmtpctl: %s\n", perr);
        if (req.cmd != ADMIN_CMD_COUNT)
            admin_buf_printf(errout, "usage: cmtpctl %s %s\n", admin_cmd_info_get(req.cmd)->name,
                             admin_cmd_info_get(req.cmd)->args);
        goto out;
    }

    char cerr[256] = "";
    int r = admin_client_call(path, line.data, timeout_s * 1000u, &reply, cerr, sizeof(cerr));
    if (r < 0) {
        connect_hint(errout, r, path, cerr);
        code = ADMIN_CTL_EXIT_CONNECT;
        goto out;
    }
    json_error_t je;
    j = json_loadb(reply.data ? reply.data : "", reply.len, JSON_REJECT_DUPLICATES, &je);
    const json_t *ok = json_object_get(j, "ok");
    if (!json_is_object(j) || !json_is_boolean(ok)) {
        admin_buf_puts(errout, "cmtpctl: invalid reply from the daemon\n");
        code = ADMIN_CTL_EXIT_CONNECT;
        goto out;
    }
    if (json_is_false(ok)) {
        const char *e = json_string_value(json_object_get(j, "error"));
        bool refused = e != NULL &&
                       (strcmp(e, "permission denied") == 0 || strcmp(e, "too many clients") == 0);
        if (json) {
            admin_buf_append(out, reply.data, reply.len);
            admin_buf_putc(out, '\n');
        }
        admin_buf_puts(errout, "cmtpctl: ");
        if (refused && strcmp(e, "permission denied") == 0)
            admin_buf_puts(errout, "the daemon refused this user (permission denied)\n");
        else {
            /* The daemon's text, with control characters escaped. */
            for (const char *c = e != NULL ? e : "error"; *c != '\0'; c++) {
                if ((unsigned char)*c < 0x20 || *c == 0x7f)
                    admin_buf_printf(errout, "\\x%02x", (unsigned char)*c);
                else
                    admin_buf_putc(errout, *c);
            }
            admin_buf_putc(errout, '\n');
        }
        code = refused ? ADMIN_CTL_EXIT_CONNECT : ADMIN_CTL_EXIT_ERROR;
        goto out;
    }
    if (json) {
        admin_buf_append(out, reply.data, reply.len);
        admin_buf_putc(out, '\n');
    } else if (admin_ctl_format(out, req.cmd, j) < 0) {
        admin_buf_puts(errout, "cmtpctl: cannot render the reply (try --json)\n");
        code = ADMIN_CTL_EXIT_CONNECT;
        goto out;
    }
    code = ADMIN_CTL_EXIT_OK;
out:
    json_decref(j);
    admin_buf_cleanup(&line);
    admin_buf_cleanup(&reply);
    free(words);
    return code;
}
