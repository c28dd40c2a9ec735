/* report.c: campaign reports streamed from Redis; see report.h. */
#include "cli/report.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/buf.h"
#include "common/err.h"
#include "scheduler/campaign.h"
#include "scheduler/utf8.h"

enum {
    TEXT_KEEP = 160,    /* bytes of a reply text kept in the per-code counters */
    TEXT_SLOTS = 12,    /* counters per code: the top 3 are about right with 4x */
    TOP_TEXTS = 3,      /* texts shown per code */
    MAX_PROVIDERS = 64, /* provider rows of the summary; the rest is "(other)" */
    NCODES = 1000,      /* reply codes 0..999 */
};

typedef sched_row_t row_t;
typedef sched_campaign_info_t meta_t;

/* ------------------------------------------------------------------------
 * Output helpers. Every writer checks ferror() once at the end. A report is
 * written by one thread, so the byte-level stdio calls skip the stream lock:
 * for a million rows, putc's locking alone was a tenth of the report's time.
 */

static const char *str_or(const buf_t *b)
{
    return b->data ? b->data : "";
}

/* RFC 3339 UTC with milliseconds into dst (at least 32 bytes); "" for 0. */
static void fmt_time(long long ms, char *dst, size_t n)
{
    if (ms <= 0) {
        dst[0] = '\0';
        return;
    }
    /* A report prints two times a row, mostly of the same few seconds:
     * keep the last second's text (reports run on one thread). */
    static long long last_sec = -1;
    static char last[32];
    static size_t last_len;
    long long sec = ms / 1000;
    if (sec != last_sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        last_len = strftime(last, sizeof last, "%Y-%m-%dT%H:%M:%S", &tm);
        last_sec = sec;
    }
    int ms3 = (int)(ms % 1000);
    if (n < last_len + 6) {
        dst[0] = '\0';
        return;
    }
    memcpy(dst, last, last_len);
    dst[last_len] = '.';
    dst[last_len + 1] = (char)('0' + ms3 / 100);
    dst[last_len + 2] = (char)('0' + ms3 / 10 % 10);
    dst[last_len + 3] = (char)('0' + ms3 % 10);
    dst[last_len + 4] = 'Z';
    dst[last_len + 5] = '\0';
}

static void csv_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        fputs_unlocked(s, f);
        return;
    }
    putc_unlocked('"', f);
    for (; *s; s++) {
        if (*s == '"') putc_unlocked('"', f);
        putc_unlocked(*s, f);
    }
    putc_unlocked('"', f);
}

/* A JSON string; invalid UTF-8 bytes become U+FFFD so the line stays JSON. */
static void json_str(FILE *f, const char *s)
{
    size_t n = strlen(s);
    const unsigned char *p = (const unsigned char *)s;
    putc_unlocked('"', f);
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c == '"' || c == '\\') {
            putc_unlocked('\\', f);
            putc_unlocked((int)c, f);
        } else if (c == '\n') {
            fputs_unlocked("\\n", f);
        } else if (c == '\r') {
            fputs_unlocked("\\r", f);
        } else if (c == '\t') {
            fputs_unlocked("\\t", f);
        } else if (c < 0x20 || c == 0x7F) {
            fprintf(f, "\\u%04x", c);
        } else if (c >= 0x80) {
            size_t l = sched_utf8_len(p + i, n - i);
            if (l == 0) {
                fputs_unlocked("\\ufffd", f);
                i++;
                continue;
            }
            fwrite_unlocked(p + i, 1, l, f);
            i += l;
            continue;
        } else {
            putc_unlocked((int)c, f);
        }
        i++;
    }
    putc_unlocked('"', f);
}

static void html_str(FILE *f, const char *s, size_t max)
{
    size_t n = strlen(s);
    if (max && n > max) n = max;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        switch (c) {
        case '&':
            fputs_unlocked("&amp;", f);
            break;
        case '<':
            fputs_unlocked("&lt;", f);
            break;
        case '>':
            fputs_unlocked("&gt;", f);
            break;
        case '"':
            fputs_unlocked("&quot;", f);
            break;
        case '\'':
            fputs_unlocked("&#39;", f);
            break;
        default:
            if (c >= 0x80) {
                size_t l = sched_utf8_len(p + i, n - i);
                if (l == 0) {
                    fputs_unlocked("&#xFFFD;", f);
                    i++;
                    continue;
                }
                fwrite_unlocked(p + i, 1, l, f);
                i += l;
                continue;
            }
            putc_unlocked(c < 0x20 && c != '\n' ? ' ' : (int)c, f);
        }
        i++;
    }
}

/* Plain text on one line: control characters become spaces, cut at max. */
static void text_str(FILE *f, const char *s, size_t max)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n && i < max; i++)
        putc_unlocked((unsigned char)s[i] < 0x20 ? ' ' : s[i], f);
    if (n > max) fputs_unlocked("...", f);
}

/* ------------------------------------------------------------------------
 * The summary: bounded tables filled row by row.
 */

/* Rows are counted by status (sched_status_t): the final ones, pending and
 * deferred, then the ones that could not be read (ST_OTHER). */
enum { NSTATES = SCHED_ST_UNKNOWN, ST_PENDING = SCHED_ST_PENDING, ST_OTHER = NSTATES };
#define states(i) sched_status_name((sched_status_t)(i))

typedef struct text_slot {
    char text[TEXT_KEEP + 1];
    uint64_t count; /* an upper bound of the text's count */
    uint64_t err;   /* count - err is a lower bound */
} text_slot_t;

typedef struct code_stat {
    uint64_t count;
    text_slot_t *slots; /* TEXT_SLOTS of them, allocated when the code is first seen */
} code_stat_t;

typedef struct prov_stat {
    char name[64];
    uint64_t n[NSTATES + 1];
    uint64_t rows;
} prov_stat_t;

typedef struct summary {
    uint64_t rows;
    uint64_t n[NSTATES + 1];
    uint64_t attempts;
    long long first, last;
    prov_stat_t prov[MAX_PROVIDERS + 1]; /* the last one is "(other)" */
    size_t nprov;
    code_stat_t codes[NCODES];
    int oom;
} summary_t;

/* The text a reply is counted under: the enhanced code, then the text with
 * every word that holds a digit or an '@' (queue ids, addresses, IPs, counts)
 * replaced by '*' and white space collapsed, so "queued as 4Fb2X" and
 * "queued as 9Zk1Q" count as one reply. Cut at TEXT_KEEP bytes. */
static void text_key(char *key, const char *enh, const char *text)
{
    /* strnlen and memcpy, not snprintf: this runs once a row. */
    size_t n = strnlen(enh, TEXT_KEEP);
    memcpy(key, enh, n);
    const char *p = text;
    while (*p && n < TEXT_KEEP) {
        while (*p && (unsigned char)*p <= ' ')
            p++;
        if (!*p) break;
        const char *word = p;
        int mask = 0;
        while (*p && (unsigned char)*p > ' ') {
            if ((*p >= '0' && *p <= '9') || *p == '@') mask = 1;
            p++;
        }
        if (n > 0) key[n++] = ' ';
        size_t len = mask ? 1 : (size_t)(p - word);
        if (len > TEXT_KEEP - n) len = TEXT_KEEP - n;
        memcpy(key + n, mask ? "*" : word, len);
        n += len;
    }
    key[n] = '\0';
}

/* Count one text for a code with the space-saving algorithm: a text already
 * counted goes up by one; a new one takes a free slot or replaces the least
 * counted, inheriting its count (remembered as the slot's possible error).
 * The top few texts of a skewed distribution come out right in a table of a
 * few times their number, in constant memory. */
static void count_text(summary_t *s, code_stat_t *cs, const char *enh, const char *text)
{
    if (!cs->slots && !(cs->slots = calloc(TEXT_SLOTS, sizeof *cs->slots))) {
        s->oom = 1;
        return;
    }
    char key[TEXT_KEEP + 1];
    text_key(key, enh, text);
    size_t min = 0;
    for (size_t i = 0; i < TEXT_SLOTS; i++) {
        text_slot_t *t = &cs->slots[i];
        if (t->count && !strcmp(t->text, key)) {
            t->count++;
            return;
        }
        if (t->count < cs->slots[min].count) min = i;
    }
    text_slot_t *t = &cs->slots[min];
    memcpy(t->text, key, sizeof key);
    t->err = t->count;
    t->count++;
}

static void summary_add(summary_t *s, const row_t *r)
{
    int st = (int)r->status < NSTATES ? (int)r->status : ST_OTHER;
    s->rows++;
    s->n[st]++;
    s->attempts += (uint64_t)(r->attempts > 0 ? r->attempts : 0);
    if (r->first_ms > 0 && (s->first == 0 || r->first_ms < s->first)) s->first = r->first_ms;
    if (r->last_ms > s->last) s->last = r->last_ms;
    const char *pname = str_or(&r->provider);
    if (!pname[0]) pname = "(none)";
    prov_stat_t *p = NULL;
    for (size_t i = 0; i < s->nprov; i++)
        if (!strcmp(s->prov[i].name, pname)) {
            p = &s->prov[i];
            break;
        }
    if (!p) {
        if (s->nprov < MAX_PROVIDERS) {
            p = &s->prov[s->nprov++];
            snprintf(p->name, sizeof p->name, "%s", pname);
        } else {
            p = &s->prov[MAX_PROVIDERS];
            snprintf(p->name, sizeof p->name, "(other)");
        }
    }
    p->rows++;
    p->n[st]++;
    if (r->code > 0 && r->code < NCODES) {
        code_stat_t *cs = &s->codes[r->code];
        cs->count++;
        count_text(s, cs, str_or(&r->enhanced), str_or(&r->response));
    }
}

static void summary_free(summary_t *s)
{
    for (size_t i = 0; i < NCODES; i++)
        free(s->codes[i].slots);
}

/* The top k slots of a code, by count, as indexes into slots. */
static size_t top_texts(const code_stat_t *cs, size_t *idx, size_t k)
{
    size_t n = 0;
    if (!cs->slots) return 0;
    for (size_t i = 0; i < TEXT_SLOTS; i++) {
        if (!cs->slots[i].count) continue;
        size_t at = n < k ? n++ : k;
        if (at == k && cs->slots[i].count <= cs->slots[idx[k - 1]].count) continue;
        if (at == k) at = k - 1;
        while (at > 0 && cs->slots[idx[at - 1]].count < cs->slots[i].count) {
            idx[at] = idx[at - 1];
            at--;
        }
        idx[at] = i;
    }
    return n;
}

/* ------------------------------------------------------------------------
 * Reading the rows (scheduler/campaign.h).
 */

typedef int (*row_fn)(void *ud, const row_t *r);

/* Call fn for every row it (closed here) gives, in order. */
static int each_row(sched_results_t *it, row_fn fn, void *ud, char *err, size_t errlen)
{
    const row_t *r;
    int rc;
    while ((rc = sched_results_next(it, &r, err, errlen)) == 1 && !(rc = fn(ud, r)))
        ;
    sched_results_close(it);
    if (rc == VL_EIO && !err[0]) snprintf(err, errlen, "write error");
    if (rc == VL_ENOMEM) snprintf(err, errlen, "out of memory");
    return rc;
}

/* ------------------------------------------------------------------------
 * The formats.
 */

/* A number without fprintf: the csv and json writers put four a row. */
static void put_num(FILE *f, long long v)
{
    char d[24];
    unsigned long long u = (unsigned long long)v;
    if (v < 0) {
        putc_unlocked('-', f);
        u = 0ull - u;
    }
    fwrite_unlocked(d, 1, buf_fmt_dec(d, u), f);
}

static int csv_row(void *ud, const row_t *r)
{
    FILE *f = ud;
    char t1[40], t2[40];
    fmt_time(r->first_ms, t1, sizeof t1);
    fmt_time(r->last_ms, t2, sizeof t2);
    put_num(f, (long long)r->row);
    putc_unlocked(',', f);
    csv_field(f, str_or(&r->email));
    putc_unlocked(',', f);
    csv_field(f, str_or(&r->provider));
    putc_unlocked(',', f);
    csv_field(f, sched_status_name(r->status));
    putc_unlocked(',', f);
    put_num(f, r->attempts);
    putc_unlocked(',', f);
    put_num(f, r->code);
    putc_unlocked(',', f);
    csv_field(f, str_or(&r->enhanced));
    putc_unlocked(',', f);
    csv_field(f, str_or(&r->response));
    putc_unlocked(',', f);
    fputs_unlocked(t1, f);
    putc_unlocked(',', f);
    fputs_unlocked(t2, f);
    fputs_unlocked("\r\n", f);
    return ferror(f) ? VL_EIO : 0;
}

static void json_time(FILE *f, long long ms)
{
    char t[40];
    fmt_time(ms, t, sizeof t);
    if (t[0])
        fprintf(f, "\"%s\"", t);
    else
        fputs_unlocked("null", f);
}

static int json_row(void *ud, const row_t *r)
{
    FILE *f = ud;
    fputs_unlocked("{\"row\":", f);
    put_num(f, (long long)r->row);
    fputs_unlocked(",\"email\":", f);
    json_str(f, str_or(&r->email));
    fputs_unlocked(",\"provider\":", f);
    json_str(f, str_or(&r->provider));
    fputs_unlocked(",\"status\":", f);
    json_str(f, sched_status_name(r->status));
    fputs_unlocked(",\"attempts\":", f);
    put_num(f, r->attempts);
    fputs_unlocked(",\"code\":", f);
    put_num(f, r->code);
    fputs_unlocked(",\"enhanced_code\":", f);
    json_str(f, str_or(&r->enhanced));
    fputs_unlocked(",\"response\":", f);
    json_str(f, str_or(&r->response));
    fputs_unlocked(",\"first_attempt_at\":", f);
    json_time(f, r->first_ms);
    fputs_unlocked(",\"last_attempt_at\":", f);
    json_time(f, r->last_ms);
    fputs_unlocked("}\n", f);
    return ferror(f) ? VL_EIO : 0;
}

static int summary_row(void *ud, const row_t *r)
{
    summary_t *s = ud;
    summary_add(s, r);
    return s->oom ? VL_ENOMEM : 0;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Duration of the campaign in ms and what it measures. */
static long long duration(const meta_t *m, const summary_t *s, const char **what)
{
    if (m->started_ms > 0 && m->finished_ms >= m->started_ms) {
        *what = "started to finished";
        return m->finished_ms - m->started_ms;
    }
    if (m->started_ms > 0 && !strcmp(m->state, "running")) {
        *what = "since it started; still running";
        return now_ms() - m->started_ms;
    }
    *what = "first to last attempt";
    return s->last > s->first ? s->last - s->first : 0;
}

/* Deliveries per second over the campaign's duration (see duration()); 0
 * when no time has passed (results are recorded in batches, so a small
 * campaign's attempts can share one timestamp). */
static double throughput(const meta_t *m, const summary_t *s, const char **what)
{
    long long d = s->last > s->first ? s->last - s->first : 0;
    *what = "first to last attempt";
    if (d <= 0 && m->started_ms > 0 && m->finished_ms > m->started_ms) {
        d = m->finished_ms - m->started_ms;
        *what = "started to finished";
    }
    if (d <= 0) return 0;
    return (double)s->n[0] / ((double)d / 1000.0);
}

static double pct(uint64_t a, uint64_t b)
{
    return b ? 100.0 * (double)a / (double)b : 0.0;
}

static void write_text(FILE *f, const char *id, const meta_t *m, const summary_t *s)
{
    char t1[40], t2[40];
    fprintf(f, "campaign %s: %s, %lld row%s%s\n", id, m->state[0] ? m->state : "unknown", m->total,
            m->total == 1 ? "" : "s", m->ingested ? "" : " (ingest not finished)");
    if (m->stop_reason[0]) fprintf(f, "stopped: %s\n", m->stop_reason);
    fprintf(f, "\nby state:\n");
    for (int i = 0; i <= NSTATES; i++) {
        if (i == ST_OTHER && !s->n[i]) continue;
        fprintf(f, "  %-12s %10" PRIu64 "  %5.1f%%\n", i == ST_OTHER ? "unknown" : states(i),
                s->n[i], pct(s->n[i], s->rows));
    }
    fprintf(f, "  %-12s %10" PRIu64 "\n", "attempts", s->attempts);
    fprintf(f, "\nby provider:\n  %-20s %10s %10s %10s %10s %10s %10s\n", "provider", "rows",
            "delivered", "bounced", "failed", "other", "waiting");
    for (size_t i = 0; i <= MAX_PROVIDERS; i++) {
        const prov_stat_t *p = &s->prov[i];
        if (i >= s->nprov && i != MAX_PROVIDERS) continue;
        if (!p->rows) continue;
        uint64_t waiting = p->n[ST_PENDING] + p->n[ST_PENDING + 1];
        uint64_t other = p->rows - p->n[0] - p->n[1] - p->n[2] - waiting;
        fprintf(f,
                "  %-20s %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %10" PRIu64
                " %10" PRIu64 "\n",
                p->name, p->rows, p->n[0], p->n[1], p->n[2], other, waiting);
    }
    fprintf(f, "\nby reply code (the last reply of each row) and its most common texts\n"
               "  (words with a digit or an @ shown as *; ~ marks an approximate count):\n");
    int any = 0;
    for (int code = 0; code < NCODES; code++) {
        const code_stat_t *cs = &s->codes[code];
        if (!cs->count) continue;
        any = 1;
        fprintf(f, "  %3d %10" PRIu64 "\n", code, cs->count);
        size_t idx[TOP_TEXTS];
        size_t n = top_texts(cs, idx, TOP_TEXTS);
        for (size_t i = 0; i < n; i++) {
            const text_slot_t *t = &cs->slots[idx[i]];
            fprintf(f, "      %s%10" PRIu64 "  ", t->err ? "~" : " ", t->count);
            text_str(f, cs->slots[idx[i]].text, 100);
            putc_unlocked('\n', f);
        }
    }
    if (!any) fprintf(f, "  (no replies yet)\n");
    fmt_time(s->first, t1, sizeof t1);
    fmt_time(s->last, t2, sizeof t2);
    const char *what;
    long long d = duration(m, s, &what);
    fprintf(f, "\nfirst attempt  %s\nlast attempt   %s\n", t1[0] ? t1 : "-", t2[0] ? t2 : "-");
    fprintf(f, "duration       %.3f s (%s)\n", (double)d / 1000.0, what);
    const char *basis;
    double tp = throughput(m, s, &basis);
    if (tp > 0 || !s->n[0])
        fprintf(f, "throughput     %.1f delivered/s (%s)\n", tp, basis);
    else
        fprintf(f, "throughput     - (no time measurable between the first and last result)\n");
}

static void html_head(FILE *f, const char *id)
{
    fputs_unlocked(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>volley "
        "report: ",
        f);
    html_str(f, id, 0);
    fputs_unlocked(
        "</title>\n<style>\nbody{font-family:sans-serif;margin:2em;color:#222}\n"
        "table{border-collapse:collapse;margin:1em 0}\n"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\n"
        "td.n{text-align:right;font-variant-numeric:tabular-nums}\n"
        "pre{margin:0;white-space:pre-wrap}\n</style></head><body>\n<h1>Campaign ",
        f);
    html_str(f, id, 0);
    fputs_unlocked("</h1>\n", f);
}

static void write_html_summary(FILE *f, const char *id, const meta_t *m, const summary_t *s)
{
    char t1[40], t2[40];
    const char *what, *basis;
    long long d = duration(m, s, &what);
    fmt_time(s->first, t1, sizeof t1);
    fmt_time(s->last, t2, sizeof t2);
    html_head(f, id);
    fputs_unlocked("<table>\n<tr><th>state</th><td>", f);
    html_str(f, m->state[0] ? m->state : "unknown", 0);
    fprintf(f, "</td></tr>\n<tr><th>rows</th><td class=\"n\">%lld%s</td></tr>\n", m->total,
            m->ingested ? "" : " (ingest not finished)");
    if (m->stop_reason[0]) {
        fputs_unlocked("<tr><th>stopped</th><td>", f);
        html_str(f, m->stop_reason, 0);
        fputs_unlocked("</td></tr>\n", f);
    }
    double tp = throughput(m, s, &basis);
    fprintf(f,
            "<tr><th>first attempt</th><td>%s</td></tr>\n<tr><th>last attempt</th><td>%s"
            "</td></tr>\n<tr><th>duration</th><td>%.3f s (%s)</td></tr>\n<tr><th>throughput"
            "</th><td>%.1f delivered/s (%s)</td></tr>\n</table>\n",
            t1[0] ? t1 : "-", t2[0] ? t2 : "-", (double)d / 1000.0, what, tp, basis);
    fputs_unlocked("<h2>By state</h2>\n<table>\n<tr><th>state</th><th>rows</th><th>%</th></tr>\n",
                   f);
    for (int i = 0; i <= NSTATES; i++) {
        if (i == ST_OTHER && !s->n[i]) continue;
        fprintf(f,
                "<tr><td>%s</td><td class=\"n\">%" PRIu64 "</td><td class=\"n\">%.1f</td></tr>\n",
                i == ST_OTHER ? "unknown" : states(i), s->n[i], pct(s->n[i], s->rows));
    }
    fputs_unlocked("</table>\n<h2>By provider</h2>\n<table>\n<tr><th>provider</th><th>rows</th>",
                   f);
    for (int i = 0; i < NSTATES; i++)
        fprintf(f, "<th>%s</th>", states(i));
    fputs_unlocked("</tr>\n", f);
    for (size_t i = 0; i <= MAX_PROVIDERS; i++) {
        const prov_stat_t *p = &s->prov[i];
        if ((i >= s->nprov && i != MAX_PROVIDERS) || !p->rows) continue;
        fputs_unlocked("<tr><td>", f);
        html_str(f, p->name, 0);
        fprintf(f, "</td><td class=\"n\">%" PRIu64 "</td>", p->rows);
        for (int k = 0; k < NSTATES; k++)
            fprintf(f, "<td class=\"n\">%" PRIu64 "</td>", p->n[k]);
        fputs_unlocked("</tr>\n", f);
    }
    fputs_unlocked("</table>\n<h2>By reply code</h2>\n<table>\n<tr><th>code</th><th>rows</th>"
                   "<th>most common texts (approximate counts)</th></tr>\n",
                   f);
    for (int code = 0; code < NCODES; code++) {
        const code_stat_t *cs = &s->codes[code];
        if (!cs->count) continue;
        fprintf(f, "<tr><td>%d</td><td class=\"n\">%" PRIu64 "</td><td>", code, cs->count);
        size_t idx[TOP_TEXTS];
        size_t n = top_texts(cs, idx, TOP_TEXTS);
        for (size_t i = 0; i < n; i++) {
            const text_slot_t *t = &cs->slots[idx[i]];
            fprintf(f, "%s%s%" PRIu64 " &times; <code>", i ? "<br>\n" : "", t->err ? "~" : "",
                    t->count);
            html_str(f, cs->slots[idx[i]].text, 0);
            fputs_unlocked("</code>", f);
        }
        fputs_unlocked("</td></tr>\n", f);
    }
    fputs_unlocked("</table>\n<h2>Rows not delivered</h2>\n<table>\n<tr><th>row</th><th>email</th>"
                   "<th>provider</th><th>status</th><th>attempts</th><th>code</th><th>enhanced</th>"
                   "<th>response</th><th>last attempt</th></tr>\n",
                   f);
}

static int html_row(void *ud, const row_t *r)
{
    FILE *f = ud;
    if (r->status == SCHED_ST_DELIVERED) return 0;
    char t[40];
    fmt_time(r->last_ms, t, sizeof t);
    fprintf(f, "<tr><td class=\"n\">%lu</td><td>", r->row);
    html_str(f, str_or(&r->email), 0);
    fputs_unlocked("</td><td>", f);
    html_str(f, str_or(&r->provider), 0);
    fputs_unlocked("</td><td>", f);
    html_str(f, sched_status_name(r->status), 0);
    fprintf(f, "</td><td class=\"n\">%lld</td><td>%lld</td><td>", r->attempts, r->code);
    html_str(f, str_or(&r->enhanced), 0);
    fputs_unlocked("</td><td><pre>", f);
    html_str(f, str_or(&r->response), 0);
    fprintf(f, "</pre></td><td>%s</td></tr>\n", t);
    return ferror(f) ? VL_EIO : 0;
}

typedef struct both {
    FILE *csv;
    summary_t *s;
} both_t;

static int both_row(void *ud, const row_t *r)
{
    both_t *b = ud;
    int rc = csv_row(b->csv, r);
    return rc ? rc : summary_row(b->s, r);
}

int cli_report_write_csv_and_text(redisContext *c, const char *id, FILE *csv, FILE *text, char *err,
                                  size_t errlen)
{
    if (errlen) err[0] = '\0';
    meta_t m;
    sched_results_t *it;
    int rc = sched_results_open(&it, c, id, &m, err, errlen);
    if (rc) return rc;
    both_t b = {csv, calloc(1, sizeof *b.s)};
    if (!b.s) {
        sched_results_close(it);
        snprintf(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    fputs_unlocked("row,email,provider,status,attempts,code,enhanced_code,response,"
                   "first_attempt_at,last_attempt_at\r\n",
                   csv);
    rc = each_row(it, both_row, &b, err, errlen);
    if (!rc && (fflush(csv) != 0 || ferror(csv))) {
        snprintf(err, errlen, "write error");
        rc = VL_EIO;
    }
    if (!rc) {
        write_text(text, id, &m, b.s);
        if (fflush(text) != 0 || ferror(text)) {
            snprintf(err, errlen, "write error");
            rc = VL_EIO;
        }
    }
    summary_free(b.s);
    free(b.s);
    return rc;
}

int cli_report_format_ok(const char *format)
{
    return format && (!strcmp(format, "text") || !strcmp(format, "csv") ||
                      !strcmp(format, "json") || !strcmp(format, "html"));
}

int cli_report_write(redisContext *c, const char *id, const char *format, FILE *out, char *err,
                     size_t errlen)
{
    if (errlen) err[0] = '\0';
    if (!cli_report_format_ok(format)) {
        snprintf(err, errlen, "unknown report format '%s' (text, csv, json or html)",
                 format ? format : "");
        return VL_EINVAL;
    }
    meta_t m;
    sched_results_t *it;
    int rc = sched_results_open(&it, c, id, &m, err, errlen);
    if (rc) return rc;
    if (!strcmp(format, "csv")) {
        fputs_unlocked("row,email,provider,status,attempts,code,enhanced_code,response,"
                       "first_attempt_at,last_attempt_at\r\n",
                       out);
        rc = each_row(it, csv_row, out, err, errlen);
    } else if (!strcmp(format, "json")) {
        rc = each_row(it, json_row, out, err, errlen);
    } else {
        /* The summary holds 65 provider rows and 1000 code counters (their
         * text tables allocated only for codes seen): tens of kB, on the heap
         * rather than the stack. */
        summary_t *s = calloc(1, sizeof *s);
        if (!s) {
            sched_results_close(it);
            snprintf(err, errlen, "out of memory");
            return VL_ENOMEM;
        }
        rc = each_row(it, summary_row, s, err, errlen);
        if (!rc && !strcmp(format, "text")) {
            write_text(out, id, &m, s);
        } else if (!rc) {
            write_html_summary(out, id, &m, s);
            /* The rows again, from Redis: holding them all would not stay flat. */
            rc = sched_results_open(&it, c, id, NULL, err, errlen);
            if (!rc) rc = each_row(it, html_row, out, err, errlen);
            if (!rc) fputs_unlocked("</table>\n<p>Generated by volley.</p>\n</body></html>\n", out);
        }
        summary_free(s);
        free(s);
    }
    if (!rc && (fflush(out) != 0 || ferror(out))) {
        snprintf(err, errlen, "write error");
        rc = VL_EIO;
    }
    return rc;
}
