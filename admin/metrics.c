/* admin/metrics.c — the Prometheus text format 0.0.4 writer: names validated, HELP and label
 * values escaped, floats written so that they read back exactly, histograms made cumulative.
 * Not the HTTP listener (admin/metrics_http.c). */
#include "admin/metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void admin_metrics_init(struct admin_metrics *m, struct admin_buf *out)
{
    memset(m, 0, sizeof(*m));
    m->out = out;
}

int admin_metrics_finish(const struct admin_metrics *m)
{
    return m->err;
}

static int set_err(struct admin_metrics *m, int e)
{
    if (m->err == 0)
        m->err = e;
    return m->err;
}

static bool name_char(char c, bool first, bool colon)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')
        return true;
    if (colon && c == ':')
        return true;
    return !first && c >= '0' && c <= '9';
}

static bool name_valid(const char *name, bool colon)
{
    size_t n = name != NULL ? strlen(name) : 0;
    if (n == 0 || n > ADMIN_METRIC_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!name_char(name[i], i == 0, colon))
            return false;
    return true;
}

bool admin_metric_name_valid(const char *name)
{
    return name_valid(name, true);
}

bool admin_label_name_valid(const char *name)
{
    return name_valid(name, false) && strncmp(name, "__", 2) != 0;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* utf8_len returns the length of the valid UTF-8 sequence at |p| (|n| octets left), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    if (p[0] < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
        cp = p[0] & 0x1fu;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        cp = p[0] & 0x0fu;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        cp = p[0] & 0x07u;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3fu);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

/* put_escaped appends |s| escaped: backslash and newline always, the double quote when |quote|;
 * invalid UTF-8 becomes U+FFFD. */
static void put_escaped(struct admin_buf *b, const char *s, bool quote)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c == '\\') {
            admin_buf_append(b, "\\\\", 2);
            i++;
        } else if (c == '\n') {
            admin_buf_append(b, "\\n", 2);
            i++;
        } else if (quote && c == '"') {
            admin_buf_append(b, "\\\"", 2);
            i++;
        } else {
            size_t l = utf8_len(p + i, n - i);
            if (l == 0) {
                admin_buf_append(b, "\xef\xbf\xbd", 3);
                i++;
            } else {
                admin_buf_append(b, p + i, l);
                i += l;
            }
        }
    }
}

/* fmt_double writes |v| into |out| (64 octets) in the shortest form that reads back exactly. */
static void fmt_double(char out[64], double v)
{
    if (isnan(v)) {
        snprintf(out, 64, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, 64, "%s", v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, 64, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            break;
    }
}

static void put_double(struct admin_buf *b, double v)
{
    char tmp[64];
    fmt_double(tmp, v);
    admin_buf_puts(b, tmp);
}

static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

/* family_written confirms a hash match: whether a `# TYPE name ` line is in the output. */
static bool family_written(const struct admin_metrics *m, const char *name)
{
    char needle[ADMIN_METRIC_NAME_MAX + 16];
    const char *d = m->out->data;
    snprintf(needle, sizeof(needle), "# TYPE %s ", name);
    if (d == NULL)
        return false;
    if (strncmp(d, needle, strlen(needle)) == 0)
        return true;
    for (const char *p = strstr(d, needle); p != NULL; p = strstr(p + 1, needle))
        if (p[-1] == '\n')
            return true;
    return false;
}

int admin_metrics_family(struct admin_metrics *m, const char *name, enum admin_metric_type type,
                         const char *help)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    if (m->err != 0)
        return m->err;
    if (!admin_metric_name_valid(name) || (unsigned)type > ADMIN_METRIC_HISTOGRAM)
        return set_err(m, -EINVAL);
    if (type == ADMIN_METRIC_HISTOGRAM &&
        (ends_with(name, "_bucket") || ends_with(name, "_sum") || ends_with(name, "_count")))
        return set_err(m, -EINVAL);
    uint32_t h = fnv1a(name);
    for (unsigned i = 0; i < m->n_families; i++)
        if (m->family_hash[i] == h && family_written(m, name))
            return set_err(m, -EEXIST);
    if (m->n_families == ADMIN_METRIC_FAMILIES_MAX)
        return set_err(m, -ENOSPC);
    m->family_hash[m->n_families++] = h;
    snprintf(m->family, sizeof(m->family), "%s", name);
    m->type = type;
    admin_buf_puts(m->out, "# HELP ");
    admin_buf_puts(m->out, name);
    admin_buf_putc(m->out, ' ');
    put_escaped(m->out, help != NULL ? help : "", false);
    admin_buf_puts(m->out, "\n# TYPE ");
    admin_buf_puts(m->out, name);
    admin_buf_putc(m->out, ' ');
    admin_buf_puts(m->out, type_names[type]);
    admin_buf_putc(m->out, '\n');
    if (m->out->err != 0)
        return set_err(m, m->out->err);
    return 0;
}

static bool labels_valid(const struct admin_label *labels, size_t n)
{
    if (n > ADMIN_METRIC_LABELS_MAX || (n > 0 && labels == NULL))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!admin_label_name_valid(labels[i].name) || strcmp(labels[i].name, "le") == 0 ||
            labels[i].value == NULL)
            return false;
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[i].name, labels[j].name) == 0)
                return false;
    }
    return true;
}

/* put_series appends `name{labels[,le="..."]} ` (the braces only when there are labels). */
static void put_series(struct admin_buf *b, const char *name, const char *suffix,
                       const struct admin_label *labels, size_t n, const char *le)
{
    admin_buf_puts(b, name);
    admin_buf_puts(b, suffix);
    if (n > 0 || le != NULL) {
        admin_buf_putc(b, '{');
        for (size_t i = 0; i < n; i++) {
            if (i > 0)
                admin_buf_putc(b, ',');
            admin_buf_puts(b, labels[i].name);
            admin_buf_puts(b, "=\"");
            put_escaped(b, labels[i].value, true);
            admin_buf_putc(b, '"');
        }
        if (le != NULL) {
            if (n > 0)
                admin_buf_putc(b, ',');
            admin_buf_puts(b, "le=\"");
            admin_buf_puts(b, le);
            admin_buf_putc(b, '"');
        }
        admin_buf_putc(b, '}');
    }
    admin_buf_putc(b, ' ');
}

static int sample_check(struct admin_metrics *m, const struct admin_label *labels, size_t n)
{
    if (m->err != 0)
        return m->err;
    if (m->family[0] == '\0' || m->type == ADMIN_METRIC_HISTOGRAM || !labels_valid(labels, n))
        return set_err(m, -EINVAL);
    return 0;
}

int admin_metrics_value(struct admin_metrics *m, const struct admin_label *labels, size_t n,
                        double v)
{
    if (sample_check(m, labels, n) < 0)
        return m->err;
    if (m->type == ADMIN_METRIC_COUNTER && (isnan(v) || v < 0))
        return set_err(m, -EINVAL);
    put_series(m->out, m->family, "", labels, n, NULL);
    put_double(m->out, v);
    admin_buf_putc(m->out, '\n');
    return m->out->err ? set_err(m, m->out->err) : 0;
}

int admin_metrics_uvalue(struct admin_metrics *m, const struct admin_label *labels, size_t n,
                         uint64_t v)
{
    if (sample_check(m, labels, n) < 0)
        return m->err;
    put_series(m->out, m->family, "", labels, n, NULL);
    admin_buf_printf(m->out, "%" PRIu64 "\n", v);
    return m->out->err ? set_err(m, m->out->err) : 0;
}

int admin_metrics_histogram(struct admin_metrics *m, const struct admin_label *labels, size_t n,
                            const double *le, size_t nb, const uint64_t *counts, double sum)
{
    if (m->err != 0)
        return m->err;
    if (m->family[0] == '\0' || m->type != ADMIN_METRIC_HISTOGRAM || !labels_valid(labels, n) ||
        nb > ADMIN_METRIC_BUCKETS_MAX || counts == NULL || (nb > 0 && le == NULL) || isnan(sum))
        return set_err(m, -EINVAL);
    for (size_t i = 0; i < nb; i++)
        if (!isfinite(le[i]) || (i > 0 && !(le[i] > le[i - 1])))
            return set_err(m, -EINVAL);
    uint64_t cum = 0;
    for (size_t i = 0; i <= nb; i++) {
        char bound[64];
        if (counts[i] > UINT64_MAX - cum)
            return set_err(m, -EOVERFLOW);
        cum += counts[i];
        if (i < nb) {
            fmt_double(bound, le[i]);
        } else {
            snprintf(bound, sizeof(bound), "+Inf");
        }
        put_series(m->out, m->family, "_bucket", labels, n, bound);
        admin_buf_printf(m->out, "%" PRIu64 "\n", cum);
    }
    put_series(m->out, m->family, "_sum", labels, n, NULL);
    put_double(m->out, sum);
    admin_buf_putc(m->out, '\n');
    put_series(m->out, m->family, "_count", labels, n, NULL);
    admin_buf_printf(m->out, "%" PRIu64 "\n", cum);
    return m->out->err ? set_err(m, m->out->err) : 0;
}
