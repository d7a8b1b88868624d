/* core/log.c — structured log lines (kv or JSON), every value escaped, bounded, one sink call per
 * line. Not a router: the sink decides where a line goes; no global state, thread-safe. */
#include "core/log.h"

#include <errno.h>
#include <time.h>
#include <unistd.h>

#include "core/envelope.h"

/* LOG_TAIL_RESERVE is kept free at the end of the line for the closing `}` of JSON, the
 * `truncated=1` marker and the '\n': ",\"truncated\":1}\n" is 17 octets. */
#define LOG_TAIL_RESERVE 24

/* LOG_TS_LEN is the length of `YYYY-MM-DDTHH:MM:SS.mmmZ`. */
#define LOG_TS_LEN 24

/* log_buf is a bounded line under construction: octets [0, len) of |p| are written and nothing
 * is written at or past |limit| (which leaves LOG_TAIL_RESERVE for the tail). */
struct log_buf {
    char *p;
    size_t len;
    size_t limit;
    bool truncated;
};

static bool buf_put(struct log_buf *b, const char *s, size_t n)
{
    if (b->len + n > b->limit)
        return false;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return true;
}

static bool buf_putc(struct log_buf *b, char c)
{
    return buf_put(b, &c, 1);
}

static const char hexdig[] = "0123456789abcdef";

/* log_decode decodes one well-formed UTF-8 sequence at |s| (|len| > 0). Returns its length and
 * sets |*cp|, or 0 for a malformed one (overlong, surrogate, > U+10FFFF, truncated, stray). */
static size_t log_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return n;
}

/* cp_risky reports whether a non-ASCII code point must be escaped even though it is valid: C1
 * controls (U+0085 NEL ends lines for some readers), line/paragraph separators, and the
 * bidirectional overrides and isolates that make a log line display differently than it reads. */
static bool cp_risky(uint32_t cp)
{
    return (cp >= 0x80 && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029 || cp == 0x200E ||
           cp == 0x200F || (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069) ||
           cp == 0xFEFF;
}

/* kv_plain reports whether ASCII |c| may stand unquoted and unescaped in a kv value. */
static bool kv_plain(unsigned char c)
{
    return c > 0x20 && c < 0x7F && c != '"' && c != '=' && c != '\\';
}

/* kv_needs_quote reports whether a kv value must be quoted. */
static bool kv_needs_quote(const unsigned char *s, size_t len)
{
    if (len == 0)
        return true;
    for (size_t i = 0; i < len;) {
        if (s[i] < 0x80) {
            if (!kv_plain(s[i]))
                return true;
            i++;
            continue;
        }
        uint32_t cp;
        size_t n = log_decode(s + i, len - i, &cp);
        if (n == 0 || cp_risky(cp))
            return true;
        i += n;
    }
    return false;
}

/* put_kv_value writes the value |s| (|len| octets) in kv form: bare when it is safe, otherwise
 * in double quotes with \" \\ and \xNN escapes (control characters, risky code points and
 * every octet of invalid UTF-8). Cuts the value at an escape boundary when the line is full. */
static void put_kv_value(struct log_buf *b, const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    bool q = kv_needs_quote(s, len);
    size_t reserve = q ? 1 : 0; /* the closing quote */
    if (q && !buf_putc(b, '"')) {
        b->truncated = true;
        return;
    }
    for (size_t i = 0; i < len;) {
        char tmp[16];
        size_t tl = 0;
        size_t step;
        uint32_t cp = 0;
        size_t n = s[i] < 0x80 ? 1 : log_decode(s + i, len - i, &cp);
        if (n == 0) {
            step = 1;
            tmp[tl++] = '\\', tmp[tl++] = 'x';
            tmp[tl++] = hexdig[s[i] >> 4], tmp[tl++] = hexdig[s[i] & 0xF];
        } else if (n == 1) {
            step = 1;
            unsigned char c = s[i];
            if (c == '"' || c == '\\') {
                tmp[tl++] = '\\', tmp[tl++] = (char)c;
            } else if (c < 0x20 || c == 0x7F) {
                tmp[tl++] = '\\', tmp[tl++] = 'x';
                tmp[tl++] = hexdig[c >> 4], tmp[tl++] = hexdig[c & 0xF];
            } else {
                tmp[tl++] = (char)c;
            }
        } else {
            step = n;
            if (cp_risky(cp)) {
                for (size_t k = 0; k < n; k++) {
                    tmp[tl++] = '\\', tmp[tl++] = 'x';
                    tmp[tl++] = hexdig[s[i + k] >> 4], tmp[tl++] = hexdig[s[i + k] & 0xF];
                }
            } else {
                memcpy(tmp, s + i, n);
                tl = n;
            }
        }
        if (b->len + tl + reserve > b->limit) {
            b->truncated = true;
            break;
        }
        buf_put(b, tmp, tl);
        i += step;
    }
    if (q)
        buf_putc(b, '"'); /* room was reserved */
}

/* put_json_string writes |s| as a JSON string: \" \\ \n \r \t \b \f, \u00XX for other controls,
 * \uXXXX for risky code points, U+FFFD for each octet of invalid UTF-8. */
static void put_json_string(struct log_buf *b, const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    if (!buf_putc(b, '"')) {
        b->truncated = true;
        return;
    }
    for (size_t i = 0; i < len;) {
        char tmp[8];
        size_t tl = 0;
        size_t step;
        uint32_t cp = 0;
        size_t n = s[i] < 0x80 ? 1 : log_decode(s + i, len - i, &cp);
        if (n == 0) {
            step = 1;
            memcpy(tmp, "\xEF\xBF\xBD", 3);
            tl = 3;
        } else if (n == 1) {
            step = 1;
            unsigned char c = s[i];
            switch (c) {
            case '"':
                memcpy(tmp, "\\\"", 2), tl = 2;
                break;
            case '\\':
                memcpy(tmp, "\\\\", 2), tl = 2;
                break;
            case '\n':
                memcpy(tmp, "\\n", 2), tl = 2;
                break;
            case '\r':
                memcpy(tmp, "\\r", 2), tl = 2;
                break;
            case '\t':
                memcpy(tmp, "\\t", 2), tl = 2;
                break;
            case '\b':
                memcpy(tmp, "\\b", 2), tl = 2;
                break;
            case '\f':
                memcpy(tmp, "\\f", 2), tl = 2;
                break;
            default:
                if (c < 0x20 || c == 0x7F) {
                    memcpy(tmp, "\\u00", 4);
                    tmp[4] = hexdig[c >> 4], tmp[5] = hexdig[c & 0xF];
                    tl = 6;
                } else {
                    tmp[0] = (char)c, tl = 1;
                }
            }
        } else {
            step = n;
            if (cp_risky(cp)) {
                memcpy(tmp, "\\u", 2);
                tmp[2] = hexdig[(cp >> 12) & 0xF], tmp[3] = hexdig[(cp >> 8) & 0xF];
                tmp[4] = hexdig[(cp >> 4) & 0xF], tmp[5] = hexdig[cp & 0xF];
                tl = 6;
            } else {
                memcpy(tmp, s + i, n);
                tl = n;
            }
        }
        if (b->len + tl + 1 > b->limit) {
            b->truncated = true;
            break;
        }
        buf_put(b, tmp, tl);
        i += step;
    }
    buf_putc(b, '"'); /* room was reserved */
}

/* put_key writes a field key, any character outside [A-Za-z0-9_.-] replaced by '_'. */
static bool put_key(struct log_buf *b, const char *key)
{
    size_t kl = key != NULL ? strnlen(key, 64) : 0;
    if (kl == 0)
        return buf_putc(b, '_');
    for (size_t i = 0; i < kl; i++) {
        char c = key[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            c = '_';
        if (!buf_putc(b, c))
            return false;
    }
    return true;
}

/* put_int writes a decimal integer (no format string involved). */
static bool put_int(struct log_buf *b, bool neg, uint64_t mag)
{
    char tmp[24];
    size_t n = sizeof(tmp);
    do {
        tmp[--n] = (char)('0' + mag % 10);
        mag /= 10;
    } while (mag != 0);
    if (neg)
        tmp[--n] = '-';
    return buf_put(b, tmp + n, sizeof(tmp) - n);
}

/* format_ts writes `YYYY-MM-DDTHH:MM:SS.mmmZ` for |ts_ms| into |out| (LOG_TS_LEN + 1 octets). */
static void format_ts(char out[LOG_TS_LEN + 1], int64_t ts_ms)
{
    int64_t sec = ts_ms / 1000;
    int64_t ms = ts_ms % 1000;
    if (ms < 0) {
        ms += 1000;
        sec--;
    }
    char t[32];
    if (cmtp_time_format(sec, t, sizeof(t)) != 20) {
        memcpy(out, "0000-00-00T00:00:00.000Z", LOG_TS_LEN + 1);
        return;
    }
    memcpy(out, t, 19);
    out[19] = '.';
    out[20] = (char)('0' + ms / 100);
    out[21] = (char)('0' + ms / 10 % 10);
    out[22] = (char)('0' + ms % 10);
    out[23] = 'Z';
    out[24] = '\0';
}

int cmtp_log_format_line(char *out, size_t out_size, enum cmtp_log_format format, int64_t ts_ms,
                         enum cmtp_log_level level, const char *event,
                         const struct cmtp_log_field *fields, size_t n)
{
    char ts[LOG_TS_LEN + 1];
    const char *lvl = cmtp_log_level_name(level);
    bool json = format == CMTP_LOG_FORMAT_JSON;
    /* The fixed prefix (time stamp and level) and the tail must always fit. */
    if (out == NULL || out_size < 64 + LOG_TAIL_RESERVE)
        return -ENOSPC;
    if (out_size > CMTP_LOG_LINE_MAX + 1)
        out_size = CMTP_LOG_LINE_MAX + 1;
    if (lvl == NULL)
        lvl = "unknown";
    if (event == NULL)
        event = "";
    format_ts(ts, ts_ms);

    struct log_buf b = {.p = out, .len = 0, .limit = out_size - 1 - LOG_TAIL_RESERVE};
    if (json) {
        buf_put(&b, "{\"ts\":\"", 7);
        buf_put(&b, ts, LOG_TS_LEN);
        buf_put(&b, "\",\"level\":\"", 11);
        buf_put(&b, lvl, strlen(lvl));
        buf_put(&b, "\",\"event\":", 10);
        put_json_string(&b, event, strlen(event));
    } else {
        buf_put(&b, "ts=", 3);
        buf_put(&b, ts, LOG_TS_LEN);
        buf_put(&b, " level=", 7);
        buf_put(&b, lvl, strlen(lvl));
        buf_put(&b, " event=", 7);
        put_kv_value(&b, event, strlen(event));
    }
    for (size_t i = 0; i < n && !b.truncated; i++) {
        const struct cmtp_log_field *f = &fields[i];
        size_t mark = b.len;
        bool ok = json ? buf_put(&b, ",\"", 2) : buf_putc(&b, ' ');
        ok = ok && put_key(&b, f->key);
        ok = ok && (json ? buf_put(&b, "\":", 2) : buf_putc(&b, '='));
        /* A field whose key does not fit, or whose value would be cut to almost nothing, is
         * dropped whole (8: a quote pair and a few octets of value). */
        if (!ok || b.len + 8 > b.limit) {
            b.len = mark;
            b.truncated = true;
            break;
        }
        switch (f->type) {
        case CMTP_LOG_FIELD_STR:
            if (json)
                put_json_string(&b, f->str != NULL ? f->str : "", f->str != NULL ? f->len : 0);
            else
                put_kv_value(&b, f->str != NULL ? f->str : "", f->str != NULL ? f->len : 0);
            break;
        case CMTP_LOG_FIELD_INT:
            ok = f->i < 0 ? put_int(&b, true, (uint64_t)0 - (uint64_t)f->i)
                          : put_int(&b, false, (uint64_t)f->i);
            break;
        case CMTP_LOG_FIELD_UINT:
            ok = put_int(&b, false, f->u);
            break;
        default:
            ok = json ? buf_put(&b, "null", 4) : buf_putc(&b, '-');
            break;
        }
        if (!ok) {
            b.len = mark;
            b.truncated = true;
        }
    }
    /* The tail: room for it was reserved by |limit|. */
    b.limit = out_size - 1;
    if (b.truncated)
        buf_put(&b, json ? ",\"truncated\":1" : " truncated=1", json ? 14 : 12);
    if (json)
        buf_putc(&b, '}');
    buf_putc(&b, '\n');
    out[b.len] = '\0';
    return (int)b.len;
}

void cmtp_log_sink_fd(void *arg, enum cmtp_log_level level, const char *line, size_t len)
{
    int fd = (int)(intptr_t)arg;
    (void)level;
    /* One write(2) for the whole line; a short write (full pipe, signal) continues with the
     * rest, a bounded number of times. */
    for (int tries = 0; len > 0 && tries < 16; tries++) {
        ssize_t w = write(fd, line, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        line += w;
        len -= (size_t)w;
    }
}

void cmtp_log_init(struct cmtp_log *log, enum cmtp_log_level level, enum cmtp_log_format format,
                   cmtp_log_sink_fn sink, void *arg)
{
    atomic_init(&log->level, (int)level);
    log->format = format;
    log->parent = NULL;
    if (sink == NULL) {
        log->sink = cmtp_log_sink_fd;
        log->arg = (void *)(intptr_t)2;
    } else {
        log->sink = sink;
        log->arg = arg;
    }
}

void cmtp_log_init_child(struct cmtp_log *log, const struct cmtp_log *parent, cmtp_log_sink_fn sink,
                         void *arg)
{
    atomic_init(&log->level, CMTP_LOG_ERROR);
    log->format = parent->format;
    log->sink = sink;
    log->arg = arg;
    log->parent = parent;
}

bool cmtp_log_enabled(const struct cmtp_log *log, enum cmtp_log_level level)
{
    if (log == NULL)
        return false;
    const struct cmtp_log *lv = log->parent != NULL ? log->parent : log;
    return (int)level <= atomic_load_explicit(&lv->level, memory_order_relaxed);
}

void cmtp_log_event(const struct cmtp_log *log, enum cmtp_log_level level, const char *event,
                    const struct cmtp_log_field *fields, size_t n)
{
    char line[CMTP_LOG_LINE_MAX + 1];
    struct timespec now;
    if (!cmtp_log_enabled(log, level) || log->sink == NULL)
        return;
    if (clock_gettime(CLOCK_REALTIME, &now) != 0)
        now.tv_sec = 0, now.tv_nsec = 0;
    int64_t ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    int len = cmtp_log_format_line(line, sizeof(line), log->format, ms, level, event, fields, n);
    if (len > 0)
        log->sink(log->arg, level, line, (size_t)len);
}

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char *const format_names[] = {"kv", "json"};

/* name_find returns the index of |s| (|len| octets, ASCII case-insensitive) in |names|, or -1. */
static int name_find(const char *const *names, size_t count, const char *s, size_t len)
{
    if (s == NULL)
        return -1;
    for (size_t i = 0; i < count; i++) {
        const char *nm = names[i];
        if (strlen(nm) != len)
            continue;
        size_t k = 0;
        while (k < len) {
            char c = s[k];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            if (c != nm[k])
                break;
            k++;
        }
        if (k == len)
            return (int)i;
    }
    return -1;
}

const char *cmtp_log_level_name(enum cmtp_log_level level)
{
    return (unsigned)level < 4 ? level_names[level] : NULL;
}

int cmtp_log_level_parse(enum cmtp_log_level *out, const char *s, size_t len)
{
    int i = name_find(level_names, 4, s, len);
    if (i < 0)
        return -EINVAL;
    *out = (enum cmtp_log_level)i;
    return 0;
}

const char *cmtp_log_format_name(enum cmtp_log_format format)
{
    return (unsigned)format < 2 ? format_names[format] : NULL;
}

int cmtp_log_format_parse(enum cmtp_log_format *out, const char *s, size_t len)
{
    int i = name_find(format_names, 2, s, len);
    if (i < 0)
        return -EINVAL;
    *out = (enum cmtp_log_format)i;
    return 0;
}

void cmtp_log_set_level(struct cmtp_log *log, enum cmtp_log_level level)
{
    atomic_store_explicit(&log->level, (int)level, memory_order_relaxed);
}
