/* tests/fuzz/fuzz_admin.c — libFuzzer target for the admin request-line parser: arbitrary octets
 * must parse or be refused with a one-line printable reason, never crash; what parses has valid
 * fields and survives a round trip through its canonical form. admin/request.c is pure (no I/O,
 * no JSON), so it is compiled into the target directly (the fuzz build links core/ only). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/request.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* check aborts with a message when |ok| is false (libFuzzer then records the input). */
#define check(ok)                                                                                  \
    do {                                                                                           \
        if (!(ok)) {                                                                               \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #ok, __FILE__, __LINE__);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_printable(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    check(n < cap);
    for (size_t i = 0; i < n; i++)
        check(s[i] >= 0x20 && s[i] < 0x7f);
}

/* canonical writes the request back as a line (the form cmtpctl would send). */
static size_t canonical(const struct admin_request *r, char *out, size_t cap)
{
    const struct admin_cmd_info *ci = admin_cmd_info_get(r->cmd);
    int n = snprintf(out, cap, "%s", ci->name);
    switch (r->cmd) {
    case ADMIN_CMD_HELP:
        if (r->topic[0])
            n += snprintf(out + n, cap - (size_t)n, " %s", r->topic);
        break;
    case ADMIN_CMD_QUEUE_LIST:
        if (r->dest[0])
            n += snprintf(out + n, cap - (size_t)n, " --dest %s", r->dest);
        if (r->state != ADMIN_QSTATE_ANY)
            n += snprintf(out + n, cap - (size_t)n, " --state %s", admin_qstate_name(r->state));
        n += snprintf(out + n, cap - (size_t)n, " --limit %u", r->limit);
        break;
    case ADMIN_CMD_QUEUE_SHOW:
        n += snprintf(out + n, cap - (size_t)n, " %s%s", r->id, r->body ? " --body" : "");
        break;
    case ADMIN_CMD_QUEUE_RETRY:
        n += snprintf(out + n, cap - (size_t)n, " %s", r->all ? "all" : r->id);
        break;
    case ADMIN_CMD_QUEUE_DELETE:
    case ADMIN_CMD_QUEUE_HOLD:
    case ADMIN_CMD_QUEUE_RELEASE:
        n += snprintf(out + n, cap - (size_t)n, " %s", r->id);
        break;
    case ADMIN_CMD_LOG_LEVEL:
        n += snprintf(out + n, cap - (size_t)n, " %s", cmtp_log_level_name(r->level));
        break;
    default:
        break;
    }
    check(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct admin_request a, b;
    char err[ADMIN_ERR_MAX];
    char line[ADMIN_LINE_MAX];

    /* Exact-size heap copy, so that ASan sees any read past the end. */
    char *copy = malloc(size ? size : 1);
    check(copy != NULL);
    if (size)
        memcpy(copy, data, size);
    int r = admin_request_parse(&a, copy, size, err, sizeof(err));
    free(copy);
    if (r != 0) {
        check(r == -EINVAL);
        check_printable(err, sizeof(err));
        check(err[0] != '\0');
        return 0;
    }
    check(a.cmd < ADMIN_CMD_COUNT);
    check(admin_qstate_name(a.state) != NULL);
    check(a.limit >= 1 && a.limit <= ADMIN_LIST_LIMIT_MAX);
    check(cmtp_log_level_name(a.level) != NULL);
    check_printable(a.id, sizeof(a.id));
    check_printable(a.dest, sizeof(a.dest));
    check_printable(a.topic, sizeof(a.topic));
    for (const char *p = a.id; *p; p++)
        check(!(*p >= 'a' && *p <= 'z') && *p != ' ');
    for (const char *p = a.dest; *p; p++)
        check(!(*p >= 'A' && *p <= 'Z') && *p != ' ');
    bool needs_id = a.cmd == ADMIN_CMD_QUEUE_SHOW || a.cmd == ADMIN_CMD_QUEUE_DELETE ||
                    a.cmd == ADMIN_CMD_QUEUE_HOLD || a.cmd == ADMIN_CMD_QUEUE_RELEASE ||
                    (a.cmd == ADMIN_CMD_QUEUE_RETRY && !a.all);
    check(needs_id == (a.id[0] != '\0'));
    if (needs_id) {
        const char *dash = strchr(a.id, '-');
        check(dash != NULL && dash != a.id && dash[1] != '\0');
    }
    /* Round trip: the canonical line parses to the same request. */
    size_t n = canonical(&a, line, sizeof(line));
    check(admin_request_parse(&b, line, n, err, sizeof(err)) == 0);
    check(memcmp(&a, &b, sizeof(a)) == 0);
    return 0;
}
