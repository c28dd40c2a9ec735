#include "log.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>

static enum vl_log_level g_level = VL_LOG_WARN;
static int g_json;
static FILE *g_file;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

void vl_log_set_level(enum vl_log_level lvl)
{
    g_level = lvl;
}

enum vl_log_level vl_log_get_level(void)
{
    return g_level;
}

void vl_log_set_json(int on)
{
    g_json = on;
}

void vl_log_set_file(FILE *f)
{
    g_file = f;
}

/* Write s as the body of a JSON string (quotes and control bytes escaped). */
static void json_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
}

void vl_log(enum vl_log_level lvl, const char *fmt, ...)
{
    if (lvl > g_level) return;
    FILE *f = g_file ? g_file : stderr;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);

    if (g_json) {
        fprintf(f, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"msg\":\"", when, ts.tv_nsec / 1000000,
                level_names[lvl]);
        json_escape(f, msg);
        fputs("\"}\n", f);
    } else {
        fprintf(f, "%s.%03ldZ %-5s %s\n", when, ts.tv_nsec / 1000000, level_names[lvl], msg);
    }
}
