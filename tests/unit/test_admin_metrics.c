/* tests/unit/test_admin_metrics.c — the Prometheus text format writer, checked line by line by
 * a strict exposition parser written here (names, HELP/TYPE placement, escapes, values, family
 * grouping, duplicate series, cumulative histograms ending in +Inf equal to _count), and the
 * HTTP scrape listener over real loopback TCP (200, 404, 405, 400, 431, timeout, 500). Not the
 * admin socket (test_admin_server.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "admin/loop.h"
#include "admin/metrics.h"
#include "tests/unit/test_admin_fixture.h"

/* --- the strict checker --------------------------------------------------------------------- */

#define CK_FAMILIES 1024
#define CK_SERIES 65536 /* a power of two: the size of the series hash set */
#define CK_LINE 8192

struct ck_family {
    char name[ADMIN_METRIC_NAME_MAX + 1];
    char type[16];
    bool help, closed, has_samples;
};

struct ck_series {
    char key[CK_LINE]; /* name + canonical labels */
};

/* ck_hist tracks one histogram series (labels without le) while its buckets are read. */
struct ck_hist {
    char labels[CK_LINE];
    double last_le;
    double last_count;
    bool has_inf, has_sum, has_count;
    double inf_count, count;
    int n_buckets;
};

struct checker {
    struct ck_family fam[CK_FAMILIES];
    size_t n_fam;
    int cur;       /* index of the open family, -1 none */
    char **series; /* open-addressing hash set of the series seen */
    size_t n_series;
    struct ck_hist hist[256];
    size_t n_hist;
    char why[256];
    size_t lineno;
};

static bool ck_name(const char *s, size_t n, bool metric)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (metric && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

/* ck_value parses a sample value exactly as the format allows. */
static bool ck_value(const char *s, size_t n, double *out)
{
    char tmp[64];
    if (n == 0 || n >= sizeof(tmp))
        return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (strcmp(tmp, "NaN") == 0) {
        *out = NAN;
        return true;
    }
    if (strcmp(tmp, "+Inf") == 0 || strcmp(tmp, "-Inf") == 0) {
        *out = tmp[0] == '+' ? INFINITY : -INFINITY;
        return true;
    }
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789.eE+-", tmp[i]))
            return false;
    char *end = NULL;
    *out = strtod(tmp, &end);
    return end == tmp + n && isfinite(*out);
}

static int ck_fail(struct checker *c, const char *why)
{
    snprintf(c->why, sizeof(c->why), "line %zu: %s", c->lineno, why);
    return -1;
}

static int ck_family_find(struct checker *c, const char *name, size_t n)
{
    for (size_t i = 0; i < c->n_fam; i++)
        if (strlen(c->fam[i].name) == n && memcmp(c->fam[i].name, name, n) == 0)
            return (int)i;
    return -1;
}

/* ck_open makes family |name| the current one, refusing a family that was closed. */
static int ck_open(struct checker *c, const char *name, size_t n)
{
    int i = ck_family_find(c, name, n);
    if (i >= 0 && i == c->cur)
        return i;
    if (i >= 0)
        return ck_fail(c, "family appears twice (not contiguous)"), -2;
    if (c->cur >= 0)
        c->fam[c->cur].closed = true;
    if (c->n_fam == CK_FAMILIES || n > ADMIN_METRIC_NAME_MAX)
        return ck_fail(c, "too many families"), -2;
    memcpy(c->fam[c->n_fam].name, name, n);
    c->fam[c->n_fam].name[n] = '\0';
    c->cur = (int)c->n_fam++;
    return c->cur;
}

static int ck_hist_close(struct checker *c)
{
    for (size_t i = 0; i < c->n_hist; i++) {
        struct ck_hist *h = &c->hist[i];
        if (!h->has_inf)
            return ck_fail(c, "histogram without le=\"+Inf\"");
        if (!h->has_count || !h->has_sum)
            return ck_fail(c, "histogram without _sum or _count");
        if (h->count != h->inf_count)
            return ck_fail(c, "histogram _count differs from the +Inf bucket");
    }
    c->n_hist = 0;
    return 0;
}

static struct ck_hist *ck_hist_get(struct checker *c, const char *labels)
{
    for (size_t i = 0; i < c->n_hist; i++)
        if (strcmp(c->hist[i].labels, labels) == 0)
            return &c->hist[i];
    if (c->n_hist == sizeof(c->hist) / sizeof(c->hist[0]))
        return NULL;
    struct ck_hist *h = &c->hist[c->n_hist++];
    memset(h, 0, sizeof(*h));
    snprintf(h->labels, sizeof(h->labels), "%s", labels);
    h->last_le = -INFINITY;
    return h;
}

/* ck_help_text checks the escapes of a HELP text: only \\ and \n. */
static bool ck_help_text(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\\') {
            if (i + 1 >= n || (s[i + 1] != '\\' && s[i + 1] != 'n'))
                return false;
            i++;
        }
    return true;
}

static int ck_comment(struct checker *c, const char *l, size_t n)
{
    bool help = n > 7 && memcmp(l, "# HELP ", 7) == 0;
    bool type = n > 7 && memcmp(l, "# TYPE ", 7) == 0;
    if (!help && !type)
        return ck_fail(c, "a comment that is neither HELP nor TYPE");
    const char *name = l + 7;
    const char *sp = memchr(name, ' ', n - 7);
    if (sp == NULL)
        return ck_fail(c, "HELP/TYPE without text");
    size_t nl = (size_t)(sp - name);
    if (!ck_name(name, nl, true))
        return ck_fail(c, "bad metric name in HELP/TYPE");
    if (ck_hist_close(c) < 0 && c->cur >= 0 && ck_family_find(c, name, nl) != c->cur)
        return -1;
    int f = ck_open(c, name, nl);
    if (f < 0)
        return -1;
    struct ck_family *fam = &c->fam[f];
    const char *rest = sp + 1;
    size_t rn = n - (size_t)(rest - l);
    if (help) {
        if (fam->help)
            return ck_fail(c, "second HELP");
        if (!ck_help_text(rest, rn))
            return ck_fail(c, "bad escape in HELP");
        fam->help = true;
    } else {
        if (fam->type[0])
            return ck_fail(c, "second TYPE");
        if (fam->has_samples)
            return ck_fail(c, "TYPE after samples");
        static const char *const types[] = {"counter", "gauge", "histogram", "summary", "untyped"};
        bool ok = false;
        for (size_t i = 0; i < 5; i++)
            if (rn == strlen(types[i]) && memcmp(rest, types[i], rn) == 0)
                ok = true;
        if (!ok)
            return ck_fail(c, "unknown TYPE");
        memcpy(fam->type, rest, rn);
        fam->type[rn] = '\0';
    }
    return 0;
}

/* ck_labels parses `{a="x",b="y"}` at |p|, writing the canonical text without le into |canon|
 * and le's value into |le| (NULL when absent). Returns the octets read, or -1. */
static int ck_labels(struct checker *c, const char *p, size_t n, char *canon, size_t cap, char *le,
                     size_t lecap, bool *has_le)
{
    size_t i = 1, o = 0;
    char names[16][ADMIN_METRIC_NAME_MAX + 1];
    size_t nn = 0;
    *has_le = false;
    canon[0] = '\0';
    if (n > 1 && p[1] == '}')
        return ck_fail(c, "empty label set {}");
    for (;;) {
        size_t s = i;
        while (i < n && p[i] != '=')
            i++;
        if (i >= n || !ck_name(p + s, i - s, false) || i - s > ADMIN_METRIC_NAME_MAX)
            return ck_fail(c, "bad label name");
        size_t ln = i - s;
        if (ln >= 2 && p[s] == '_' && p[s + 1] == '_')
            return ck_fail(c, "reserved label name");
        for (size_t k = 0; k < nn; k++)
            if (strlen(names[k]) == ln && memcmp(names[k], p + s, ln) == 0)
                return ck_fail(c, "duplicate label");
        if (nn == 16)
            return ck_fail(c, "too many labels");
        memcpy(names[nn], p + s, ln);
        names[nn++][ln] = '\0';
        bool is_le = ln == 2 && memcmp(p + s, "le", 2) == 0;
        i++;
        if (i >= n || p[i] != '"')
            return ck_fail(c, "label value not quoted");
        i++;
        char val[CK_LINE];
        size_t vn = 0;
        while (i < n && p[i] != '"') {
            if (vn + 2 >= sizeof(val))
                return ck_fail(c, "label value too long");
            if (p[i] == '\\') {
                if (i + 1 >= n || !strchr("\\\"n", p[i + 1]))
                    return ck_fail(c, "bad escape in label value");
                val[vn++] = p[i++];
            }
            if (p[i] == '\n')
                return ck_fail(c, "raw newline");
            val[vn++] = p[i++];
        }
        if (i >= n)
            return ck_fail(c, "unterminated label value");
        val[vn] = '\0';
        i++;
        if (is_le) {
            *has_le = true;
            size_t k = vn < lecap - 1 ? vn : lecap - 1;
            memcpy(le, val, k);
            le[k] = '\0';
        } else {
            o += (size_t)snprintf(canon + o, cap - o, "%s%s=\"%s\"", o ? "," : "", names[nn - 1],
                                  val);
        }
        if (i < n && p[i] == ',') {
            i++;
            continue;
        }
        if (i < n && p[i] == '}')
            return (int)(i + 1);
        return ck_fail(c, "bad label list");
    }
}

static int ck_sample(struct checker *c, const char *l, size_t n)
{
    size_t i = 0;
    while (i < n && l[i] != '{' && l[i] != ' ')
        i++;
    if (!ck_name(l, i, true))
        return ck_fail(c, "bad metric name");
    char name[ADMIN_METRIC_NAME_MAX + 16];
    if (i >= sizeof(name))
        return ck_fail(c, "name too long");
    memcpy(name, l, i);
    name[i] = '\0';
    char canon[CK_LINE] = "", le[64] = "";
    bool has_le = false;
    if (i < n && l[i] == '{') {
        int r = ck_labels(c, l + i, n - i, canon, sizeof(canon), le, sizeof(le), &has_le);
        if (r < 0)
            return -1;
        i += (size_t)r;
    }
    if (i >= n || l[i] != ' ')
        return ck_fail(c, "no space before the value");
    i++;
    const char *v = l + i;
    const char *sp = memchr(v, ' ', n - i);
    size_t vn = sp ? (size_t)(sp - v) : n - i;
    double val;
    if (!ck_value(v, vn, &val))
        return ck_fail(c, "bad value");
    if (sp != NULL) {
        for (const char *t = sp + 1; t < l + n; t++)
            if ((*t < '0' || *t > '9') && !(t == sp + 1 && *t == '-'))
                return ck_fail(c, "bad timestamp");
    }
    /* Which family: the open one, by its type's sample names. */
    if (c->cur < 0)
        return ck_fail(c, "sample without TYPE");
    struct ck_family *fam = &c->fam[c->cur];
    if (fam->type[0] == '\0')
        return ck_fail(c, "sample without TYPE");
    size_t fl = strlen(fam->name);
    const char *suffix = strncmp(name, fam->name, fl) == 0 ? name + fl : NULL;
    if (suffix == NULL)
        return ck_fail(c, "sample of another family inside a family (or no TYPE)");
    if (strcmp(fam->type, "histogram") == 0) {
        struct ck_hist *h = ck_hist_get(c, canon);
        if (h == NULL)
            return ck_fail(c, "too many histogram series");
        if (strcmp(suffix, "_bucket") == 0) {
            double b;
            if (!has_le || !ck_value(le, strlen(le), &b) || isnan(b))
                return ck_fail(c, "bucket without a valid le");
            if (h->has_inf || !(b > h->last_le))
                return ck_fail(c, "le not increasing");
            if (h->n_buckets > 0 && val < h->last_count)
                return ck_fail(c, "buckets not cumulative");
            if (isnan(val) || val < 0 || val != floor(val))
                return ck_fail(c, "bad bucket count");
            h->last_le = b;
            h->last_count = val;
            h->n_buckets++;
            if (isinf(b) && b > 0) {
                h->has_inf = true;
                h->inf_count = val;
            }
        } else if (strcmp(suffix, "_sum") == 0 && !has_le) {
            h->has_sum = true;
        } else if (strcmp(suffix, "_count") == 0 && !has_le) {
            h->has_count = true;
            h->count = val;
        } else {
            return ck_fail(c, "histogram sample with a wrong name or le");
        }
    } else {
        if (*suffix != '\0' || has_le)
            return ck_fail(c, "sample name differs from its family");
        if (strcmp(fam->type, "counter") == 0 && (isnan(val) || val < 0))
            return ck_fail(c, "negative or NaN counter");
    }
    fam->has_samples = true;
    /* Duplicate series. */
    char key[CK_LINE + 256];
    snprintf(key, sizeof(key), "%s{%.*s,le=%s}", name, CK_LINE - 1, canon, le);
    if (c->n_series == CK_SERIES / 2)
        return ck_fail(c, "too many series");
    uint32_t hsh = 2166136261u;
    for (const char *k = key; *k; k++)
        hsh = (hsh ^ (unsigned char)*k) * 16777619u;
    size_t slot = hsh & (CK_SERIES - 1);
    while (c->series[slot] != NULL) {
        if (strcmp(c->series[slot], key) == 0)
            return ck_fail(c, "duplicate series");
        slot = (slot + 1) & (CK_SERIES - 1);
    }
    c->series[slot] = strdup(key);
    assert_non_null(c->series[slot]);
    c->n_series++;
    return 0;
}

/* check_exposition returns 0 when |text| is a valid exposition, or -1 with the reason in |why|. */
static int check_exposition(const char *text, size_t len, char *why, size_t whylen)
{
    struct checker *c = calloc(1, sizeof(*c));
    int r = 0;
    assert_non_null(c);
    c->series = calloc(CK_SERIES, sizeof(char *));
    assert_non_null(c->series);
    c->cur = -1;
    if (len > 0 && text[len - 1] != '\n') {
        r = ck_fail(c, "does not end with a newline");
        goto out;
    }
    if (memchr(text, '\0', len) != NULL) {
        r = ck_fail(c, "NUL octet");
        goto out;
    }
    for (size_t off = 0; off < len && r == 0;) {
        const char *l = text + off;
        const char *nl = memchr(l, '\n', len - off);
        size_t n = (size_t)(nl - l);
        c->lineno++;
        if (n == 0)
            r = ck_fail(c, "empty line");
        else if (l[0] == '#')
            r = ck_comment(c, l, n);
        else
            r = ck_sample(c, l, n);
        off += n + 1;
    }
    if (r == 0)
        r = ck_hist_close(c);
out:
    snprintf(why, whylen, "%s", c->why);
    for (size_t i = 0; i < CK_SERIES; i++)
        free(c->series[i]);
    free(c->series);
    free(c);
    return r;
}

static void expect_valid(const char *text, size_t len)
{
    char why[256];
    if (check_exposition(text, len, why, sizeof(why)) != 0)
        print_error("invalid exposition: %s\n---\n%s---\n", why, text);
    assert_int_equal(check_exposition(text, len, why, sizeof(why)), 0);
}

static void expect_invalid(const char *text, const char *want)
{
    char why[256];
    assert_int_equal(check_exposition(text, strlen(text), why, sizeof(why)), -1);
    if (strstr(why, want) == NULL)
        print_error("checker said \"%s\", wanted \"%s\"\n", why, want);
    assert_non_null(strstr(why, want));
}

/* --- the writer ----------------------------------------------------------------------------- */

static void test_writer_exact(void **state)
{
    (void)state;
    struct admin_buf b;
    struct admin_metrics m;
    admin_buf_init(&b, 1 << 20);
    admin_metrics_init(&m, &b);
    struct admin_label l[] = {{"worker", "0"}, {"listener", "[::]:4465"}};
    assert_int_equal(admin_metrics_family(&m, "cmtp_up", ADMIN_METRIC_GAUGE, "1 when up."), 0);
    assert_int_equal(admin_metrics_value(&m, NULL, 0, 1), 0);
    assert_int_equal(
        admin_metrics_family(&m, "cmtp_handshakes_total", ADMIN_METRIC_COUNTER, "Handshakes."), 0);
    assert_int_equal(admin_metrics_uvalue(&m, l, 2, 18446744073709551615ull), 0);
    double le[] = {0.005, 0.5};
    uint64_t counts[] = {1, 2, 3};
    assert_int_equal(admin_metrics_family(&m, "cmtp_lat_seconds", ADMIN_METRIC_HISTOGRAM, "Lat."),
                     0);
    assert_int_equal(admin_metrics_histogram(&m, l, 1, le, 2, counts, 9.25), 0);
    assert_int_equal(admin_metrics_histogram(&m, NULL, 0, NULL, 0, counts + 2, 0.1), 0);
    assert_int_equal(admin_metrics_finish(&m), 0);
    assert_string_equal(b.data, "# HELP cmtp_up 1 when up.\n"
                                "# TYPE cmtp_up gauge\n"
                                "cmtp_up 1\n"
                                "# HELP cmtp_handshakes_total Handshakes.\n"
                                "# TYPE cmtp_handshakes_total counter\n"
                                "cmtp_handshakes_total{worker=\"0\",listener=\"[::]:4465\"} "
                                "18446744073709551615\n"
                                "# HELP cmtp_lat_seconds Lat.\n"
                                "# TYPE cmtp_lat_seconds histogram\n"
                                "cmtp_lat_seconds_bucket{worker=\"0\",le=\"0.005\"} 1\n"
                                "cmtp_lat_seconds_bucket{worker=\"0\",le=\"0.5\"} 3\n"
                                "cmtp_lat_seconds_bucket{worker=\"0\",le=\"+Inf\"} 6\n"
                                "cmtp_lat_seconds_sum{worker=\"0\"} 9.25\n"
                                "cmtp_lat_seconds_count{worker=\"0\"} 6\n"
                                "cmtp_lat_seconds_bucket{le=\"+Inf\"} 3\n"
                                "cmtp_lat_seconds_sum 0.1\n"
                                "cmtp_lat_seconds_count 3\n");
    expect_valid(b.data, b.len);
    admin_buf_cleanup(&b);
}

static void test_escaping(void **state)
{
    (void)state;
    struct admin_buf b;
    struct admin_metrics m;
    admin_buf_init(&b, 1 << 20);
    admin_metrics_init(&m, &b);
    struct admin_label l[] = {{"reason", "a\\b\"c\nd"}, {"peer", "bad\xff\xc3utf8 \xe2\x82\xac"}};
    admin_metrics_family(&m, "x_total", ADMIN_METRIC_COUNTER, "Back\\slash and\nnewline \"q\".");
    admin_metrics_uvalue(&m, l, 2, 1);
    assert_int_equal(admin_metrics_finish(&m), 0);
    assert_string_equal(b.data,
                        "# HELP x_total Back\\\\slash and\\nnewline \"q\".\n"
                        "# TYPE x_total counter\n"
                        "x_total{reason=\"a\\\\b\\\"c\\nd\",peer=\"bad\xef\xbf\xbd\xef\xbf\xbdutf8 "
                        "\xe2\x82\xac\"} 1\n");
    expect_valid(b.data, b.len);
    admin_buf_cleanup(&b);
}

static void test_doubles(void **state)
{
    (void)state;
    static const double vals[] = {0.1, 1e-9, 1e300, -2.5, 123456789.125, 0, 5e-324, 1.0 / 3};
    struct admin_buf b;
    struct admin_metrics m;
    admin_buf_init(&b, 1 << 20);
    admin_metrics_init(&m, &b);
    admin_metrics_family(&m, "g", ADMIN_METRIC_GAUGE, "");
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        char idx[8];
        snprintf(idx, sizeof(idx), "%zu", i);
        struct admin_label l = {"i", idx};
        admin_metrics_value(&m, &l, 1, vals[i]);
    }
    struct admin_label ln = {"i", "nan"}, lp = {"i", "pinf"}, lm = {"i", "minf"};
    admin_metrics_value(&m, &ln, 1, NAN);
    admin_metrics_value(&m, &lp, 1, INFINITY);
    admin_metrics_value(&m, &lm, 1, -INFINITY);
    assert_int_equal(admin_metrics_finish(&m), 0);
    expect_valid(b.data, b.len);
    /* Every value reads back exactly. */
    const char *p = b.data;
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        char pat[32];
        snprintf(pat, sizeof(pat), "g{i=\"%zu\"} ", i);
        const char *s = strstr(p, pat);
        assert_non_null(s);
        assert_true(strtod(s + strlen(pat), NULL) == vals[i]);
    }
    assert_non_null(strstr(p, "g{i=\"3\"} -2.5\n"));
    assert_non_null(strstr(p, "g{i=\"0\"} 0.1\n"));
    assert_non_null(strstr(p, "g{i=\"nan\"} NaN\n"));
    assert_non_null(strstr(p, "g{i=\"pinf\"} +Inf\n"));
    assert_non_null(strstr(p, "g{i=\"minf\"} -Inf\n"));
    admin_buf_cleanup(&b);
}

/* refused runs |fn| on a fresh writer that has family |type| open and checks the error. */
static void test_refusals(void **state)
{
    (void)state;
    struct admin_buf b;
    struct admin_metrics m;
    struct admin_label ok = {"a", "1"};
    double le[] = {1, 2};
    double bad_le[] = {2, 1};
    double nan_le[] = {NAN};
    uint64_t counts[] = {1, 1, 1};
    admin_buf_init(&b, 1 << 20);

#define FRESH(type)                                                                                \
    do {                                                                                           \
        admin_buf_reset(&b);                                                                       \
        admin_metrics_init(&m, &b);                                                                \
        assert_int_equal(admin_metrics_family(&m, "fam", type, "h"), 0);                           \
    } while (0)

    static const char *const bad_names[] = {"", "1abc", "a-b", "a b", "a.b", "\xc3\xa4", "a{"};
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
        admin_metrics_init(&m, &b);
        assert_int_equal(admin_metrics_family(&m, bad_names[i], ADMIN_METRIC_GAUGE, "h"), -EINVAL);
        assert_false(admin_metric_name_valid(bad_names[i]));
    }
    assert_true(admin_metric_name_valid("cmtp:ns_x1"));
    assert_false(admin_label_name_valid("a:b"));
    assert_false(admin_label_name_valid("__name__"));
    assert_true(admin_label_name_valid("_x"));
    char longname[ADMIN_METRIC_NAME_MAX + 2];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_false(admin_metric_name_valid(longname));

    /* Sample before any family, and the error is sticky. */
    admin_buf_reset(&b);
    admin_metrics_init(&m, &b);
    assert_int_equal(admin_metrics_uvalue(&m, NULL, 0, 1), -EINVAL);
    assert_int_equal(admin_metrics_family(&m, "late", ADMIN_METRIC_GAUGE, "h"), -EINVAL);
    assert_int_equal(admin_metrics_finish(&m), -EINVAL);
    assert_int_equal(b.len, 0);

    /* A family twice. */
    FRESH(ADMIN_METRIC_GAUGE);
    assert_int_equal(admin_metrics_family(&m, "other", ADMIN_METRIC_GAUGE, "h"), 0);
    assert_int_equal(admin_metrics_family(&m, "fam", ADMIN_METRIC_COUNTER, "h"), -EEXIST);

    /* Histogram names that would clash with their samples. */
    admin_metrics_init(&m, &b);
    assert_int_equal(admin_metrics_family(&m, "x_bucket", ADMIN_METRIC_HISTOGRAM, "h"), -EINVAL);
    admin_metrics_init(&m, &b);
    assert_int_equal(admin_metrics_family(&m, "x_count", ADMIN_METRIC_HISTOGRAM, "h"), -EINVAL);

    /* Labels. */
    struct admin_label bad1[] = {{"le", "1"}};
    struct admin_label bad2[] = {{"__x", "1"}};
    struct admin_label bad3[] = {{"a", "1"}, {"a", "2"}};
    struct admin_label bad4[] = {{"a", NULL}};
    struct admin_label bad5[] = {{"a-b", "1"}};
    const struct admin_label *bads[] = {bad1, bad2, bad3, bad4, bad5};
    const size_t nbads[] = {1, 1, 2, 1, 1};
    for (size_t i = 0; i < 5; i++) {
        FRESH(ADMIN_METRIC_GAUGE);
        assert_int_equal(admin_metrics_value(&m, bads[i], nbads[i], 1), -EINVAL);
    }
    struct admin_label many[ADMIN_METRIC_LABELS_MAX + 1];
    char names[ADMIN_METRIC_LABELS_MAX + 1][8];
    for (size_t i = 0; i <= ADMIN_METRIC_LABELS_MAX; i++) {
        snprintf(names[i], sizeof(names[i]), "l%zu", i);
        many[i] = (struct admin_label){names[i], "v"};
    }
    FRESH(ADMIN_METRIC_GAUGE);
    assert_int_equal(admin_metrics_value(&m, many, ADMIN_METRIC_LABELS_MAX, 1), 0);
    assert_int_equal(admin_metrics_value(&m, many, ADMIN_METRIC_LABELS_MAX + 1, 1), -EINVAL);

    /* Type mismatches and bad values. */
    FRESH(ADMIN_METRIC_COUNTER);
    assert_int_equal(admin_metrics_value(&m, &ok, 1, -1), -EINVAL);
    FRESH(ADMIN_METRIC_COUNTER);
    assert_int_equal(admin_metrics_value(&m, &ok, 1, NAN), -EINVAL);
    FRESH(ADMIN_METRIC_COUNTER);
    assert_int_equal(admin_metrics_histogram(&m, &ok, 1, le, 2, counts, 1), -EINVAL);
    FRESH(ADMIN_METRIC_HISTOGRAM);
    assert_int_equal(admin_metrics_uvalue(&m, &ok, 1, 1), -EINVAL);
    FRESH(ADMIN_METRIC_HISTOGRAM);
    assert_int_equal(admin_metrics_histogram(&m, &ok, 1, bad_le, 2, counts, 1), -EINVAL);
    FRESH(ADMIN_METRIC_HISTOGRAM);
    assert_int_equal(admin_metrics_histogram(&m, &ok, 1, nan_le, 1, counts, 1), -EINVAL);
    FRESH(ADMIN_METRIC_HISTOGRAM);
    assert_int_equal(admin_metrics_histogram(&m, &ok, 1, le, 2, counts, NAN), -EINVAL);
    FRESH(ADMIN_METRIC_HISTOGRAM);
    assert_int_equal(admin_metrics_histogram(&m, bad1, 1, le, 2, counts, 1), -EINVAL);
    FRESH(ADMIN_METRIC_HISTOGRAM);
    uint64_t huge[] = {UINT64_MAX, 1};
    assert_int_equal(admin_metrics_histogram(&m, NULL, 0, le, 1, huge, 1), -EOVERFLOW);
    FRESH(ADMIN_METRIC_HISTOGRAM);
    assert_int_equal(
        admin_metrics_histogram(&m, NULL, 0, le, ADMIN_METRIC_BUCKETS_MAX + 1, counts, 1), -EINVAL);
#undef FRESH
    admin_buf_cleanup(&b);
}

static void test_cap(void **state)
{
    (void)state;
    struct admin_buf b;
    struct admin_metrics m;
    admin_buf_init(&b, 200);
    admin_metrics_init(&m, &b);
    int r = 0;
    for (int i = 0; i < 100 && r == 0; i++) {
        char name[32];
        snprintf(name, sizeof(name), "metric_%d", i);
        r = admin_metrics_family(&m, name, ADMIN_METRIC_GAUGE, "some help text");
        if (r == 0)
            r = admin_metrics_uvalue(&m, NULL, 0, (uint64_t)i);
    }
    assert_int_equal(r, -ENOSPC);
    assert_int_equal(admin_metrics_finish(&m), -ENOSPC);
    assert_true(b.len <= 200);
    assert_int_equal(admin_metrics_uvalue(&m, NULL, 0, 1), -ENOSPC);
    admin_buf_cleanup(&b);
}

static void test_many_families(void **state)
{
    (void)state;
    struct admin_buf b;
    struct admin_metrics m;
    admin_buf_init(&b, 8 << 20);
    admin_metrics_init(&m, &b);
    double le[8];
    uint64_t counts[9];
    for (int i = 0; i < 8; i++)
        le[i] = 0.0001 * pow(10, i / 2.0);
    for (int i = 0; i < 9; i++)
        counts[i] = (uint64_t)(i * 7 % 5);
    for (int f = 0; f < ADMIN_METRIC_FAMILIES_MAX; f++) {
        char name[32];
        snprintf(name, sizeof(name), "cmtp_f%d%s", f, f % 3 == 0 ? "_total" : "");
        enum admin_metric_type t = f % 3 == 0   ? ADMIN_METRIC_COUNTER
                                   : f % 3 == 1 ? ADMIN_METRIC_GAUGE
                                                : ADMIN_METRIC_HISTOGRAM;
        assert_int_equal(admin_metrics_family(&m, name, t, "generated"), 0);
        for (int w = 0; w < 4; w++) {
            char wid[16];
            snprintf(wid, sizeof(wid), "%d", w);
            struct admin_label l = {"worker", wid};
            if (t == ADMIN_METRIC_HISTOGRAM)
                assert_int_equal(admin_metrics_histogram(&m, &l, 1, le, 8, counts, 1.5 * w), 0);
            else
                assert_int_equal(admin_metrics_uvalue(&m, &l, 1, (uint64_t)(f * w)), 0);
        }
    }
    assert_int_equal(admin_metrics_family(&m, "one_too_many", ADMIN_METRIC_GAUGE, ""), -ENOSPC);
    expect_valid(b.data, b.len);
    admin_buf_cleanup(&b);

    /* And the fixture's (the daemon-like) exposition. */
    admin_buf_init(&b, 1 << 20);
    assert_int_equal(fx_metrics(NULL, &b, NULL, 0), 0);
    expect_valid(b.data, b.len);
    admin_buf_cleanup(&b);
}

/* The checker rejects what it must (so that its approval means something). */
static void test_checker_rejects(void **state)
{
    (void)state;
    expect_invalid("# TYPE a counter\na 1", "newline");
    expect_invalid("a 1\n", "without TYPE");
    expect_invalid("# TYPE a counter\na -1\n", "negative");
    expect_invalid("# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n", "duplicate series");
    expect_invalid("# TYPE a gauge\na{x=\"\\q\"} 1\n", "bad escape");
    expect_invalid("# TYPE a gauge\na{x=1} 1\n", "not quoted");
    expect_invalid("# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n", "duplicate label");
    expect_invalid("# TYPE a gauge\na{__x=\"1\"} 1\n", "reserved");
    expect_invalid("# TYPE a gauge\na 1.2.3\n", "bad value");
    expect_invalid("# TYPE a gauge\na inf\n", "bad value");
    expect_invalid("# TYPE a gauge\na  1\n", "bad value");
    expect_invalid("# TYPE a gauge\n# TYPE a gauge\na 1\n", "second TYPE");
    expect_invalid("# TYPE a gauge\n# HELP a x\\y\na 1\n", "bad escape in HELP");
    expect_invalid("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# HELP a again\n", "twice");
    expect_invalid("# TYPE a gauge\nb 1\n", "another family");
    expect_invalid("# TYPE a wibble\n", "unknown TYPE");
    expect_invalid("# a comment\n", "neither HELP nor TYPE");
    expect_invalid("# TYPE 1a gauge\n", "bad metric name");
    expect_invalid("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\n"
                   "h_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
                   "not cumulative");
    expect_invalid("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n", "+Inf");
    expect_invalid("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", "differs");
    expect_invalid("# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\n"
                   "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                   "not increasing");
    expect_invalid("# TYPE h histogram\nh_bucket 1\n", "le");
    expect_invalid("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", "_sum");
    expect_invalid("# TYPE a gauge\n\na 1\n", "empty line");
    /* and accepts a hand-written valid one */
    const char *good = "# HELP h x\n# TYPE h histogram\nh_bucket{a=\"1\",le=\"0.5\"} 1\n"
                       "h_bucket{a=\"1\",le=\"+Inf\"} 4\nh_sum{a=\"1\"} 3.5\nh_count{a=\"1\"} 4\n"
                       "# TYPE g gauge\ng NaN\ng{b=\"x\\\"\"} -Inf 1700000000000\n";
    expect_valid(good, strlen(good));
}

/* --- the HTTP listener ---------------------------------------------------------------------- */

/* http runs one exchange: sends |req| (|n| octets) to 127.0.0.1:|port| and reads until EOF
 * (at most 3 s) into |out|. Returns the status code, or -1 when nothing came back. */
static int http(uint16_t port, const char *req, size_t n, struct admin_buf *out)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    for (size_t off = 0; off < n;) {
        ssize_t w = send(fd, req + off, n - off, MSG_NOSIGNAL);
        if (w <= 0)
            break; /* the server may close early (431): read what it said */
        off += (size_t)w;
    }
    admin_buf_reset(out);
    uint64_t deadline = admin_loop_now_ms() + 3000;
    for (;;) {
        uint64_t now = admin_loop_now_ms();
        assert_true(now < deadline);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(deadline - now)) <= 0)
            continue;
        char buf[65536];
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r <= 0)
            break;
        assert_int_equal(admin_buf_append(out, buf, (size_t)r), 0);
    }
    close(fd);
    int status = -1;
    if (out->len > 12 && sscanf(out->data, "HTTP/1.1 %d ", &status) != 1)
        status = -1;
    return status;
}

/* body_of returns the body after the head, and checks Content-Length and Connection: close. */
static const char *body_of(const struct admin_buf *resp, size_t *len, bool head)
{
    const char *sep = strstr(resp->data, "\r\n\r\n");
    assert_non_null(sep);
    const char *cl = strstr(resp->data, "\r\nContent-Length: ");
    assert_true(cl != NULL && cl < sep);
    assert_true(strstr(resp->data, "\r\nConnection: close\r\n") < sep);
    size_t want = strtoul(cl + 18, NULL, 10);
    *len = resp->len - (size_t)(sep + 4 - resp->data);
    assert_int_equal(*len, head ? 0 : want);
    return sep + 4;
}

static int fail_metrics(void *arg, struct admin_buf *out, char *err, size_t errlen)
{
    (void)arg;
    (void)out;
    snprintf(err, errlen, "redis down");
    return -EIO;
}

static void test_http(void **state)
{
    (void)state;
    struct admin_ops ops = fx_ops();
    struct admin_http_config cfg = {.host = "127.0.0.1"};
    char err[256];
    struct admin_http *h = admin_metrics_http_new(&cfg, &ops, NULL, err, sizeof(err));
    if (h == NULL)
        print_error("%s\n", err);
    assert_non_null(h);
    uint16_t port = admin_metrics_http_port(h);
    assert_true(port > 0);
    struct admin_buf resp;
    admin_buf_init(&resp, 4 << 20);
    size_t blen;

    static const char get[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
    assert_int_equal(http(port, get, sizeof(get) - 1, &resp), 200);
    assert_non_null(
        strstr(resp.data, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    const char *body = body_of(&resp, &blen, false);
    expect_valid(body, blen);
    assert_non_null(strstr(body, "cmtp_queue_depth 42\n"));

    static const char q[] = "GET /metrics?name[]=x HTTP/1.0\n\n";
    assert_int_equal(http(port, q, sizeof(q) - 1, &resp), 200);
    static const char hd[] = "HEAD /metrics HTTP/1.1\r\n\r\n";
    assert_int_equal(http(port, hd, sizeof(hd) - 1, &resp), 200);
    body_of(&resp, &blen, true);

    static const char *const not_found[] = {
        "GET / HTTP/1.1\r\n\r\n", "GET /metricsx HTTP/1.1\r\n\r\n",
        "GET /metrics/ HTTP/1.1\r\n\r\n", "GET /admin HTTP/1.1\r\n\r\n"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(http(port, not_found[i], strlen(not_found[i]), &resp), 404);
        body_of(&resp, &blen, false);
    }
    static const char post[] = "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(http(port, post, sizeof(post) - 1, &resp), 405);
    assert_non_null(strstr(resp.data, "\r\nAllow: GET, HEAD\r\n"));
    static const char *const bad[] = {"GET /metrics\r\n\r\n", "GET  /metrics HTTP/1.1\r\n\r\n",
                                      "GET /metrics HTTP/2\r\n\r\n", "\r\n\r\n",
                                      "GET /metrics HTTP/1.1 x\r\n\r\n"};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(http(port, bad[i], strlen(bad[i]), &resp), 400);

    /* An oversized request head is refused with 431 and closed. */
    size_t big_n = ADMIN_HTTP_REQUEST_MAX + 4096;
    char *big = malloc(big_n);
    memcpy(big, "GET /metrics HTTP/1.1\r\nX-Pad: ", 30);
    memset(big + 30, 'a', big_n - 30);
    assert_int_equal(http(port, big, big_n, &resp), 431);
    free(big);

    /* A client that sends half a request is closed after the timeout. */
    admin_metrics_http_free(h);
    cfg.timeout_ms = 300;
    h = admin_metrics_http_new(&cfg, &ops, NULL, err, sizeof(err));
    assert_non_null(h);
    port = admin_metrics_http_port(h);
    uint64_t t0 = admin_loop_now_ms();
    assert_int_equal(http(port, "GET /metr", 9, &resp), -1);
    uint64_t dt = admin_loop_now_ms() - t0;
    assert_true(dt >= 290 && dt < 2500);
    assert_int_equal(resp.len, 0);
    admin_metrics_http_free(h);

    /* A failing callback gives 500, not a broken exposition. */
    struct admin_ops failing = {.metrics = fail_metrics};
    h = admin_metrics_http_new(&cfg, &failing, NULL, err, sizeof(err));
    assert_non_null(h);
    assert_int_equal(http(admin_metrics_http_port(h), get, sizeof(get) - 1, &resp), 500);
    admin_metrics_http_free(h);
    admin_buf_cleanup(&resp);
}

static void test_http_config(void **state)
{
    (void)state;
    struct admin_ops ops = fx_ops();
    char err[256];
    static const char *const refused[] = {"0.0.0.0", "192.0.2.1", "localhost", "", "::", "[::"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        struct admin_http_config cfg = {.host = refused[i]};
        assert_null(admin_metrics_http_new(&cfg, &ops, NULL, err, sizeof(err)));
        assert_true(strlen(err) > 0);
    }
    struct admin_http_config any = {.host = "0.0.0.0", .allow_nonloopback = true};
    struct admin_http *h = admin_metrics_http_new(&any, &ops, NULL, err, sizeof(err));
    assert_non_null(h);
    admin_metrics_http_free(h);
    struct admin_http_config v6 = {.host = "[::1]"};
    h = admin_metrics_http_new(&v6, &ops, NULL, err, sizeof(err));
    if (h == NULL)
        assert_non_null(strstr(err, "::1")); /* no IPv6 here: the error names the address */
    admin_metrics_http_free(h);
    /* A port in use is an error, not a silent success. */
    struct admin_http_config c1 = {.host = "127.0.0.1"};
    struct admin_http *a = admin_metrics_http_new(&c1, &ops, NULL, err, sizeof(err));
    assert_non_null(a);
    struct admin_http_config c2 = {.host = "127.0.0.1", .port = admin_metrics_http_port(a)};
    assert_null(admin_metrics_http_new(&c2, &ops, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "in use"));
    admin_metrics_http_free(a);
    admin_metrics_http_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_exact),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_doubles),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_many_families),
        cmocka_unit_test(test_checker_rejects),
        cmocka_unit_test(test_http),
        cmocka_unit_test(test_http_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
