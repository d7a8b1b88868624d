/* core/log.h — structured, one-line-per-event logging (key=value or JSON) with peer data escaped.
 * Not a log router: where a line goes (stderr, syslog, a file) is the caller's sink. */
#ifndef CMTP_CORE_LOG_H
#define CMTP_CORE_LOG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* CMTP_LOG_LINE_MAX is the longest line handed to a sink, in octets, '\n' included. A longer
 * event is cut at a field boundary or inside a value and ends with `truncated=1`. At most
 * PIPE_BUF, so that one write(2) of a line to a pipe is atomic. */
#define CMTP_LOG_LINE_MAX 4096

/* cmtp_log_level orders severities: an event is written when its level <= the logger's level. */
enum cmtp_log_level {
    CMTP_LOG_ERROR = 0,
    CMTP_LOG_WARN,
    CMTP_LOG_INFO,
    CMTP_LOG_DEBUG,
};

/* cmtp_log_format selects the line format. */
enum cmtp_log_format {
    CMTP_LOG_FORMAT_KV = 0, /* ts=... level=info event=accepted key=value ... */
    CMTP_LOG_FORMAT_JSON,   /* {"ts":"...","level":"info","event":"accepted","key":"value"} */
};

/* cmtp_log_sink_fn receives one finished line: |len| octets at |line|, ending in '\n' (counted
 * in |len|), with line[len] == '\0'. |arg| is the pointer given to cmtp_log_init. The line is
 * only valid during the call. A sink may be called from many threads at once. */
typedef void (*cmtp_log_sink_fn)(void *arg, enum cmtp_log_level level, const char *line,
                                 size_t len);

/* cmtp_log is a logger. It is immutable after cmtp_log_init, so one may be shared by every
 * thread; the caller owns the storage and whatever |arg| points to. */
struct cmtp_log {
    _Atomic int level; /* an enum cmtp_log_level; cmtp_log_set_level may change it */
    enum cmtp_log_format format;
    cmtp_log_sink_fn sink;
    void *arg;
    /* parent, when not NULL, is the logger whose level this one follows (cmtp_log_init_child);
     * |level| is then unused. */
    const struct cmtp_log *parent;
};

/* cmtp_log_field_type says which member of a cmtp_log_field holds the value. */
enum cmtp_log_field_type {
    CMTP_LOG_FIELD_STR = 0, /* |str|, |len| octets, any bytes (escaped on output) */
    CMTP_LOG_FIELD_INT,     /* |i| */
    CMTP_LOG_FIELD_UINT,    /* |u| */
};

/* cmtp_log_field is one key/value pair of an event. |key| is a constant from the code, made of
 * [a-z0-9_.-] (other characters are written as '_'); a string value may be peer data and is
 * escaped. The field borrows its pointers for the duration of the call. */
struct cmtp_log_field {
    const char *key;
    enum cmtp_log_field_type type;
    const char *str;
    size_t len;
    int64_t i;
    uint64_t u;
};

/* cmtp_log_str returns a string field for the NUL-terminated |s| (NULL is written as empty). */
static inline struct cmtp_log_field cmtp_log_str(const char *key, const char *s)
{
    struct cmtp_log_field f = {.key = key, .type = CMTP_LOG_FIELD_STR, .str = s};
    f.len = s != NULL ? strlen(s) : 0;
    return f;
}

/* cmtp_log_strn returns a string field for |n| octets at |s| (any bytes, not NUL-terminated). */
static inline struct cmtp_log_field cmtp_log_strn(const char *key, const char *s, size_t n)
{
    struct cmtp_log_field f = {.key = key, .type = CMTP_LOG_FIELD_STR, .str = s, .len = n};
    return f;
}

/* cmtp_log_int and cmtp_log_uint return integer fields. */
static inline struct cmtp_log_field cmtp_log_int(const char *key, int64_t v)
{
    struct cmtp_log_field f = {.key = key, .type = CMTP_LOG_FIELD_INT, .i = v};
    return f;
}
static inline struct cmtp_log_field cmtp_log_uint(const char *key, uint64_t v)
{
    struct cmtp_log_field f = {.key = key, .type = CMTP_LOG_FIELD_UINT, .u = v};
    return f;
}

/* CMTP_LOG writes event |ev| at level |lvl| with the fields given after it (at least one), e.g.
 * CMTP_LOG(log, CMTP_LOG_INFO, "accepted", cmtp_log_str("qid", qid), cmtp_log_uint("rcpts", n)).
 * There is no format string anywhere: values are data. Use cmtp_log_event for no fields. */
#define CMTP_LOG(lg, lvl, ev, ...)                                                                 \
    do {                                                                                           \
        const struct cmtp_log_field cmtp_log_fields_[] = {__VA_ARGS__};                            \
        cmtp_log_event((lg), (lvl), (ev), cmtp_log_fields_,                                        \
                       sizeof(cmtp_log_fields_) / sizeof(cmtp_log_fields_[0]));                    \
    } while (0)

/* cmtp_log_init sets up |log| to write events of |level| and more severe in |format| through
 * |sink| with |arg|. A NULL |sink| selects cmtp_log_sink_fd on standard error (fd 2). */
void cmtp_log_init(struct cmtp_log *log, enum cmtp_log_level level, enum cmtp_log_format format,
                   cmtp_log_sink_fn sink, void *arg);

/* cmtp_log_init_child sets up |log| to write in |parent|'s format through its own |sink| with
 * |arg|, at whatever level |parent| has at the time of each event (so that one
 * cmtp_log_set_level on |parent| changes its children too). |parent| must outlive |log|. A
 * worker thread uses one to batch its lines (see cmtpd's worker log). */
void cmtp_log_init_child(struct cmtp_log *log, const struct cmtp_log *parent, cmtp_log_sink_fn sink,
                         void *arg);

/* cmtp_log_set_level changes the level of |log| at run time; safe while other threads log
 * (the one field a logger lets change after cmtp_log_init). */
void cmtp_log_set_level(struct cmtp_log *log, enum cmtp_log_level level);

/* cmtp_log_enabled reports whether an event of |level| would be written by |log|, so that a
 * caller can skip preparing costly fields. */
bool cmtp_log_enabled(const struct cmtp_log *log, enum cmtp_log_level level);

/* cmtp_log_event formats one line for event |event| (a constant from the code; escaped anyway)
 * with |n| fields at |fields| and hands it to the sink, when |level| is enabled. The time stamp
 * is the current CLOCK_REALTIME. Nothing is allocated; the line is built on the stack. */
void cmtp_log_event(const struct cmtp_log *log, enum cmtp_log_level level, const char *event,
                    const struct cmtp_log_field *fields, size_t n);

/* cmtp_log_format_line formats the line cmtp_log_event would write, with time stamp |ts_ms|
 * (milliseconds since the epoch) and format |format|, into |out| of |out_size| octets
 * (CMTP_LOG_LINE_MAX + 1 is always enough; smaller buffers truncate earlier). The line ends in
 * '\n' and is NUL-terminated. Returns its length, '\n' included, or -ENOSPC when |out_size| is
 * too small for even the fixed prefix. */
int cmtp_log_format_line(char *out, size_t out_size, enum cmtp_log_format format, int64_t ts_ms,
                         enum cmtp_log_level level, const char *event,
                         const struct cmtp_log_field *fields, size_t n);

/* cmtp_log_sink_fd is the default sink: it writes the line to the file descriptor
 * (int)(intptr_t)|arg| with one write(2) call (repeated only after EINTR or a short write), so
 * lines from different threads never interleave. Errors are ignored: logging never fails the
 * caller. */
void cmtp_log_sink_fd(void *arg, enum cmtp_log_level level, const char *line, size_t len);

/* cmtp_log_level_name returns "error", "warn", "info" or "debug", or NULL for another value. */
const char *cmtp_log_level_name(enum cmtp_log_level level);

/* cmtp_log_level_parse parses a level name of |len| octets (ASCII case-insensitive) into |out|.
 * Returns 0, or -EINVAL for an unknown name. */
int cmtp_log_level_parse(enum cmtp_log_level *out, const char *s, size_t len);

/* cmtp_log_format_name returns "kv" or "json", or NULL for another value. */
const char *cmtp_log_format_name(enum cmtp_log_format format);

/* cmtp_log_format_parse parses "kv" or "json" (ASCII case-insensitive) into |out|. Returns 0, or
 * -EINVAL. */
int cmtp_log_format_parse(enum cmtp_log_format *out, const char *s, size_t len);

#endif
