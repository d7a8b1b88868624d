/* admin/ctl_format.c — cmtpctl's rendering of replies for people: key: value lines, aligned
 * tables, durations, the raw metrics text, escaped control characters. Not the --json output,
 * which is the reply line as received. */
#include "admin/ctl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* TABLE_COLS_MAX and TABLE_ROWS_MAX bound a rendered table. */
#define TABLE_COLS_MAX 64
#define TABLE_ROWS_MAX 20000
/* KEY_MAX bounds a flattened key (dotted path). */
#define KEY_MAX 256

/* put_safe appends |n| octets of |s|, escaping control characters as \xNN. */
static void put_safe(struct admin_buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            admin_buf_printf(b, "\\x%02x", c);
        else
            admin_buf_putc(b, (char)c);
    }
}

/* put_duration appends |s| seconds as "3d04h", "1h02m03s", "5m03s" or "42s". */
static void put_duration(struct admin_buf *b, json_int_t s)
{
    if (s < 0) {
        admin_buf_putc(b, '-');
        s = -s;
    }
    long long d = s / 86400, h = (s / 3600) % 24, m = (s / 60) % 60, sec = s % 60;
    if (d > 0)
        admin_buf_printf(b, "%lldd%02lldh%02lldm", d, h, m);
    else if (h > 0)
        admin_buf_printf(b, "%lldh%02lldm%02llds", h, m, sec);
    else if (m > 0)
        admin_buf_printf(b, "%lldm%02llds", m, sec);
    else
        admin_buf_printf(b, "%llds", sec);
}

static bool is_duration_key(const char *key)
{
    size_t n = strlen(key);
    return n > 2 && strcmp(key + n - 2, "_s") == 0;
}

/* put_scalar appends a scalar or a compact rendering of |v|. */
static void put_value(struct admin_buf *b, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        put_safe(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        admin_buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        admin_buf_printf(b, "%g", json_real_value(v));
        break;
    case JSON_TRUE:
        admin_buf_puts(b, "yes");
        break;
    case JSON_FALSE:
        admin_buf_puts(b, "no");
        break;
    case JSON_NULL:
        admin_buf_puts(b, "-");
        break;
    case JSON_ARRAY: {
        size_t i;
        const json_t *e;
        if (json_array_size(v) == 0)
            admin_buf_puts(b, "-");
        json_array_foreach((json_t *)v, i, e)
        {
            if (i > 0)
                admin_buf_puts(b, ", ");
            put_value(b, e);
        }
        break;
    }
    case JSON_OBJECT: {
        char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (s != NULL) {
            put_safe(b, s, strlen(s));
            free(s);
        }
        break;
    }
    }
}

/* put_cell appends |v| as a table cell or a value line: durations for keys ending in _s. */
static void put_cell(struct admin_buf *b, const char *key, const json_t *v, bool both)
{
    if (json_is_integer(v) && is_duration_key(key)) {
        if (both) {
            put_value(b, v);
            admin_buf_puts(b, " (");
            put_duration(b, json_integer_value(v));
            admin_buf_putc(b, ')');
        } else {
            put_duration(b, json_integer_value(v));
        }
        return;
    }
    put_value(b, v);
}

static bool is_scalar_array(const json_t *v)
{
    size_t i;
    const json_t *e;
    json_array_foreach((json_t *)v, i, e)
    {
        if (json_is_object(e) || json_is_array(e))
            return false;
    }
    return true;
}

/* put_kv appends `key: value` lines for every member of |obj|, nested objects and arrays of
 * objects flattened as prefix.key and prefix.key[i]. Keys in |skip| (NULL-terminated) are left
 * out at the top level. */
static void put_kv(struct admin_buf *b, const json_t *obj, const char *prefix,
                   const char *const *skip, int depth)
{
    const char *key;
    const json_t *v;

    json_object_foreach((json_t *)obj, key, v)
    {
        bool skipped = false;
        for (const char *const *s = skip; s != NULL && *s != NULL; s++)
            if (strcmp(*s, key) == 0)
                skipped = true;
        if (skipped)
            continue;
        char path[KEY_MAX];
        snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "", key);
        if (json_is_object(v) && depth < 8 && json_object_size(v) > 0) {
            put_kv(b, v, path, NULL, depth + 1);
        } else if (json_is_array(v) && !is_scalar_array(v) && depth < 8) {
            size_t i;
            const json_t *e;
            json_array_foreach((json_t *)v, i, e)
            {
                char ip[KEY_MAX + 24];
                snprintf(ip, sizeof(ip), "%s[%zu]", path, i);
                if (json_is_object(e)) {
                    put_kv(b, e, ip, NULL, depth + 1);
                } else {
                    put_safe(b, ip, strlen(ip));
                    admin_buf_puts(b, ": ");
                    put_value(b, e);
                    admin_buf_putc(b, '\n');
                }
            }
        } else {
            put_safe(b, path, strlen(path));
            admin_buf_puts(b, ": ");
            put_cell(b, key, v, true);
            admin_buf_putc(b, '\n');
        }
    }
}

/* display_width counts the code points of the UTF-8 text |s| (|n| octets). */
static size_t display_width(const char *s, size_t n)
{
    size_t w = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xc0) != 0x80)
            w++;
    return w;
}

/* table is a grid of rendered cells: row 0 is the header. */
struct table {
    size_t cols, rows;
    char **cell; /* rows * cols, malloc'd strings */
    bool numeric[TABLE_COLS_MAX];
};

static int table_init(struct table *t, size_t cols, size_t rows)
{
    memset(t, 0, sizeof(*t));
    if (cols == 0 || cols > TABLE_COLS_MAX || rows > TABLE_ROWS_MAX + 1)
        return -EINVAL;
    t->cell = calloc(cols * rows, sizeof(char *));
    if (t->cell == NULL)
        return -ENOMEM;
    t->cols = cols;
    t->rows = rows;
    for (size_t c = 0; c < cols; c++)
        t->numeric[c] = true;
    return 0;
}

static void table_free(struct table *t)
{
    if (t->cell != NULL)
        for (size_t i = 0; i < t->cols * t->rows; i++)
            free(t->cell[i]);
    free(t->cell);
    t->cell = NULL;
}

/* table_set stores the text of |b| as cell (r, c). */
static void table_set(struct table *t, size_t r, size_t c, const char *s)
{
    free(t->cell[r * t->cols + c]);
    t->cell[r * t->cols + c] = strdup(s);
}

static void table_put(struct table *t, struct admin_buf *b)
{
    size_t width[TABLE_COLS_MAX] = {0};
    for (size_t r = 0; r < t->rows; r++)
        for (size_t c = 0; c < t->cols; c++) {
            const char *s = t->cell[r * t->cols + c] ? t->cell[r * t->cols + c] : "";
            size_t w = display_width(s, strlen(s));
            if (w > width[c])
                width[c] = w;
        }
    for (size_t r = 0; r < t->rows; r++) {
        for (size_t c = 0; c < t->cols; c++) {
            const char *s = t->cell[r * t->cols + c] ? t->cell[r * t->cols + c] : "";
            size_t w = display_width(s, strlen(s));
            bool right = t->numeric[c] && c > 0; /* numbers and their header to the right */
            bool last = c + 1 == t->cols;
            if (right)
                for (size_t k = w; k < width[c]; k++)
                    admin_buf_putc(b, ' ');
            admin_buf_puts(b, s);
            if (!right && !last)
                for (size_t k = w; k < width[c]; k++)
                    admin_buf_putc(b, ' ');
            if (!last)
                admin_buf_puts(b, "  ");
        }
        admin_buf_putc(b, '\n');
    }
}

/* header_text writes the column header for |key|: upper case, '_' as '-', a trailing _s cut. */
static void header_text(char *out, size_t cap, const char *key)
{
    size_t n = strlen(key), i = 0;
    if (is_duration_key(key))
        n -= 2;
    for (; i < n && i + 1 < cap; i++) {
        char c = key[i];
        if (c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        else if (c == '_')
            c = '-';
        else if ((unsigned char)c < 0x20 || c == 0x7f)
            c = '?';
        out[i] = c;
    }
    out[i] = '\0';
}

/* cell_text renders |v| under |key| into a fresh string (free it). */
static char *cell_text(const char *key, const json_t *v)
{
    struct admin_buf b;
    admin_buf_init(&b, 4096);
    if (v == NULL)
        admin_buf_puts(&b, "-");
    else
        put_cell(&b, key, v, false);
    char *s = strdup(b.data != NULL ? b.data : "");
    admin_buf_cleanup(&b);
    return s;
}

/* put_object_table renders |arr| (objects) with one column per key, in order of appearance. */
static int put_object_table(struct admin_buf *b, const json_t *arr)
{
    const char *keys[TABLE_COLS_MAX];
    size_t nk = 0, i;
    const json_t *row;
    struct table t;

    json_array_foreach((json_t *)arr, i, row)
    {
        const char *k;
        const json_t *v;
        if (!json_is_object(row))
            continue;
        json_object_foreach((json_t *)row, k, v)
        {
            size_t j = 0;
            while (j < nk && strcmp(keys[j], k) != 0)
                j++;
            if (j == nk && nk < TABLE_COLS_MAX)
                keys[nk++] = k;
        }
        if (i >= TABLE_ROWS_MAX)
            break;
    }
    size_t nrows = json_array_size(arr);
    if (nrows > TABLE_ROWS_MAX)
        nrows = TABLE_ROWS_MAX;
    if (nk == 0)
        return 0;
    int r = table_init(&t, nk, nrows + 1);
    if (r < 0)
        return r;
    for (size_t c = 0; c < nk; c++) {
        char h[KEY_MAX];
        header_text(h, sizeof(h), keys[c]);
        table_set(&t, 0, c, h);
    }
    for (size_t rr = 0; rr < nrows; rr++) {
        const json_t *o = json_array_get(arr, rr);
        for (size_t c = 0; c < nk; c++) {
            const json_t *v = json_is_object(o) ? json_object_get(o, keys[c]) : NULL;
            if (v != NULL && !json_is_number(v) && !json_is_null(v))
                t.numeric[c] = false;
            t.cell[(rr + 1) * nk + c] = cell_text(keys[c], v);
        }
    }
    table_put(&t, b);
    table_free(&t);
    return 0;
}

/* stat_keys collects the flattened numeric keys of |obj| under |prefix| into |keys|. */
static void stat_keys(const json_t *obj, const char *prefix, char keys[][KEY_MAX], size_t *nk,
                      size_t cap)
{
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        char path[KEY_MAX];
        if (prefix[0] == '\0' && strcmp(k, "id") == 0)
            continue;
        snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "", k);
        if (json_is_object(v)) {
            stat_keys(v, path, keys, nk, cap);
            continue;
        }
        size_t j = 0;
        while (j < *nk && strcmp(keys[j], path) != 0)
            j++;
        if (j == *nk && *nk < cap)
            snprintf(keys[(*nk)++], KEY_MAX, "%s", path);
    }
}

/* stat_get finds the dotted |path| in |obj|. */
static const json_t *stat_get(const json_t *obj, const char *path)
{
    char tmp[KEY_MAX];
    snprintf(tmp, sizeof(tmp), "%s", path);
    const json_t *cur = obj;
    char *save = NULL;
    for (char *part = strtok_r(tmp, ".", &save); part != NULL && cur != NULL;
         part = strtok_r(NULL, ".", &save))
        cur = json_is_object(cur) ? json_object_get(cur, part) : NULL;
    return cur;
}

#define STATS_ROWS_MAX 512

static int put_stats(struct admin_buf *b, const json_t *reply)
{
    const json_t *total = json_object_get(reply, "total");
    const json_t *workers = json_object_get(reply, "workers");
    size_t nw = json_array_size(workers);
    char(*k)[KEY_MAX] = calloc(STATS_ROWS_MAX, KEY_MAX);
    size_t nk = 0, i;
    const json_t *w;
    struct table t;
    int r = 0;

    if (k == NULL)
        return -ENOMEM;
    if (json_is_object(total))
        stat_keys(total, "", k, &nk, STATS_ROWS_MAX);
    json_array_foreach((json_t *)workers, i, w)
    {
        if (json_is_object(w))
            stat_keys(w, "", k, &nk, STATS_ROWS_MAX);
    }
    if (nw > TABLE_COLS_MAX - 2)
        nw = TABLE_COLS_MAX - 2;
    if (nk == 0) {
        admin_buf_puts(b, "no statistics\n");
        goto out;
    }
    r = table_init(&t, nw + 2, nk + 1);
    if (r < 0)
        goto out;
    table_set(&t, 0, 0, "COUNTER");
    table_set(&t, 0, 1, "TOTAL");
    for (size_t c = 0; c < nw; c++) {
        char h[32];
        const json_t *id = json_object_get(json_array_get(workers, c), "id");
        if (json_is_integer(id))
            snprintf(h, sizeof(h), "W%" JSON_INTEGER_FORMAT, json_integer_value(id));
        else
            snprintf(h, sizeof(h), "W%zu", c);
        table_set(&t, 0, c + 2, h);
    }
    for (size_t row = 0; row < nk; row++) {
        struct admin_buf kb;
        admin_buf_init(&kb, KEY_MAX * 4);
        put_safe(&kb, k[row], strlen(k[row]));
        table_set(&t, row + 1, 0, kb.data ? kb.data : "");
        admin_buf_cleanup(&kb);
        t.cell[(row + 1) * t.cols + 1] = cell_text(k[row], stat_get(total, k[row]));
        for (size_t c = 0; c < nw; c++)
            t.cell[(row + 1) * t.cols + c + 2] =
                cell_text(k[row], stat_get(json_array_get(workers, c), k[row]));
    }
    t.numeric[0] = false;
    table_put(&t, b);
    if (json_array_size(workers) > nw)
        admin_buf_printf(b, "(%zu more workers: use --json)\n", json_array_size(workers) - nw);
    table_free(&t);
out:
    free(k);
    return r;
}

/* base64_decode decodes |in| into |out| (at least 3/4 of its length). Returns the length or -1. */
static long base64_decode(const char *in, size_t n, unsigned char *out)
{
    unsigned acc = 0, bits = 0;
    long o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        int v;
        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '+')
            v = 62;
        else if (c == '/')
            v = 63;
        else if (c == '=')
            break;
        else
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return o;
}

static void put_message(struct admin_buf *b, const json_t *msg)
{
    static const char *const skip[] = {"body_base64", NULL};
    put_kv(b, msg, "", skip, 0);
    const json_t *body = json_object_get(msg, "body_base64");
    if (!json_is_string(body))
        return;
    size_t n = json_string_length(body);
    unsigned char *raw = malloc(n / 4 * 3 + 3);
    long len = raw != NULL ? base64_decode(json_string_value(body), n, raw) : -1;
    if (len < 0) {
        admin_buf_puts(b, "body: (not valid base64)\n");
    } else {
        admin_buf_printf(b, "--- body (%ld octets) ---\n", len);
        /* Text stays readable; other control octets are escaped. */
        for (long i = 0; i < len; i++) {
            if (raw[i] == '\n' || raw[i] == '\t')
                admin_buf_putc(b, (char)raw[i]);
            else if (raw[i] == '\r' && i + 1 < len && raw[i + 1] == '\n')
                continue;
            else
                put_safe(b, (const char *)raw + i, 1);
        }
        if (len > 0 && raw[len - 1] != '\n')
            admin_buf_putc(b, '\n');
        admin_buf_puts(b, "--- end of body ---\n");
    }
    free(raw);
}

int admin_ctl_format(struct admin_buf *out, enum admin_cmd cmd, const json_t *reply)
{
    static const char *const skip_ok[] = {"ok", NULL};
    int r = 0;

    if (!json_is_object(reply))
        return -EINVAL;
    switch (cmd) {
    case ADMIN_CMD_METRICS: {
        const json_t *text = json_object_get(reply, "text");
        if (json_is_string(text))
            admin_buf_append(out, json_string_value(text), json_string_length(text));
        break;
    }
    case ADMIN_CMD_VERSION:
        admin_buf_puts(out, "cmtpd ");
        put_value(out, json_object_get(reply, "version") ? json_object_get(reply, "version")
                                                         : json_null());
        admin_buf_printf(out, " (admin protocol %" JSON_INTEGER_FORMAT ")\n",
                         json_integer_value(json_object_get(reply, "admin_protocol")));
        break;
    case ADMIN_CMD_HELP: {
        size_t i;
        const json_t *c;
        json_array_foreach(json_object_get(reply, "commands"), i, c)
        {
            const json_t *u = json_object_get(c, "usage"), *s = json_object_get(c, "summary");
            admin_buf_puts(out, "  ");
            if (json_is_string(u))
                put_safe(out, json_string_value(u), json_string_length(u));
            admin_buf_puts(out, "\n      ");
            if (json_is_string(s))
                put_safe(out, json_string_value(s), json_string_length(s));
            admin_buf_putc(out, '\n');
        }
        break;
    }
    case ADMIN_CMD_STATS:
        r = put_stats(out, reply);
        break;
    case ADMIN_CMD_QUEUE_SUMMARY:
    case ADMIN_CMD_QUEUE_LIST: {
        const char *key = cmd == ADMIN_CMD_QUEUE_LIST ? "messages" : "destinations";
        const json_t *arr = json_object_get(reply, key);
        if (json_array_size(arr) == 0) {
            admin_buf_puts(out, cmd == ADMIN_CMD_QUEUE_LIST ? "no messages\n" : "queue is empty\n");
            break;
        }
        r = put_object_table(out, arr);
        if (json_is_true(json_object_get(reply, "truncated")))
            admin_buf_printf(out, "(%zu shown; more match: raise --limit or narrow the filter)\n",
                             json_array_size(arr));
        break;
    }
    case ADMIN_CMD_QUEUE_SHOW: {
        const json_t *msg = json_object_get(reply, "message");
        if (json_is_object(msg))
            put_message(out, msg);
        break;
    }
    default: {
        size_t before = out->len;
        put_kv(out, reply, "", skip_ok, 0);
        if (out->len == before)
            admin_buf_puts(out, "ok\n");
        break;
    }
    }
    if (r == 0)
        r = out->err;
    return r;
}
