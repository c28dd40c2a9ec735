/* sink_util.c: volley-sink's pure parsing helpers (see sink.h). */
#include "sink.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int sink_b64_val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

ssize_t sink__b64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    /* Padding only at the end, at most two. */
    size_t pad = 0;
    while (n > 0 && in[n - 1] == '=' && pad < 2) {
        n--;
        pad++;
    }
    if (n % 4 == 1 || (pad && (n + pad) % 4 != 0)) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = sink_b64_val((unsigned char)in[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap) return -1;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Leftover bits must be zero (canonical encoding). */
    if (acc != 0) return -1;
    return (ssize_t)o;
}

int sink__parse_path(const char *s, size_t n, const char **addr, size_t *alen, size_t *end)
{
    size_t i = 0;
    while (i < n && s[i] == ' ')
        i++;
    if (i == n) return -1;
    if (s[i] != '<') {
        /* Bare address: lenient, as many servers are. */
        size_t b = i;
        while (i < n && s[i] != ' ')
            i++;
        *addr = s + b;
        *alen = i - b;
        *end = i;
        return 0;
    }
    i++;
    size_t b = i;
    /* A source route (@a,@b:) is to be ignored (RFC 5321 section 4.1.2). */
    if (i < n && s[i] == '@') {
        const char *colon = memchr(s + i, ':', n - i);
        if (!colon) return -1;
        i = (size_t)(colon - s) + 1;
        b = i;
    }
    int quoted = 0;
    for (; i < n; i++) {
        char ch = s[i];
        if (ch == '\\' && quoted) {
            i++;
            continue;
        }
        if (ch == '"')
            quoted = !quoted;
        else if (ch == '>' && !quoted)
            break;
    }
    if (i >= n) return -1;
    *addr = s + b;
    *alen = i - b;
    *end = i + 1;
    return 0;
}

int sink__msgid(const char *s, size_t n, const char **id, size_t *idlen)
{
    const char *lt = memchr(s, '<', n);
    if (lt) {
        const char *gt = memchr(lt, '>', n - (size_t)(lt - s));
        if (gt) {
            *id = lt;
            *idlen = (size_t)(gt - lt) + 1;
            return 0;
        }
    }
    size_t b = 0, e = n;
    while (b < e && isspace((unsigned char)s[b]))
        b++;
    while (e > b && isspace((unsigned char)s[e - 1]))
        e--;
    if (b == e) return -1;
    *id = s + b;
    *idlen = e - b;
    return 0;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid. */
static size_t sink_utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    /* Overlong forms, surrogates and values past U+10FFFF. */
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

int sink__json_str(buf_t *b, const char *s, size_t n)
{
    int rc = buf_putc(b, '"');
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (rc == 0 && i < n) {
        /* Copy the longest run that needs no escaping in one go. */
        size_t run = i;
        while (run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\')
            run++;
        if (run > i) {
            rc = buf_append(b, p + i, run - i);
            i = run;
            continue;
        }
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            rc = buf_append(b, esc, 2);
            i++;
        } else if (c < 0x20) {
            rc = buf_printf(b, "\\u%04x", c);
            i++;
        } else {
            size_t len = sink_utf8_len(p + i, n - i);
            if (len) {
                rc = buf_append(b, p + i, len);
                i += len;
            } else {
                rc = buf_puts(b, "\\ufffd");
                i++;
            }
        }
    }
    if (rc == 0) rc = buf_putc(b, '"');
    return rc;
}

int sink__parse_u64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 19) return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

int sink__prefix(const char *s, size_t n, const char *prefix)
{
    size_t i = 0;
    for (; prefix[i]; i++) {
        if (i >= n || tolower((unsigned char)s[i]) != tolower((unsigned char)prefix[i])) return 0;
    }
    return 1;
}

/* Milliseconds in one unit at s (the whole rest of the string), or 0. */
static uint64_t sink_unit_ms(const char *s)
{
    static const struct {
        const char *name;
        uint64_t ms;
    } units[] = {
        {"ms", 1},      {"s", 1000},       {"sec", 1000},   {"m", 60000},      {"min", 60000},
        {"h", 3600000}, {"hour", 3600000}, {"d", 86400000}, {"day", 86400000},
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcmp(s, units[i].name) == 0) return units[i].ms;
    return 0;
}

int sink__parse_per(const char *s, uint64_t *count, uint64_t *per_ms)
{
    const char *slash = strchr(s, '/');
    if (!slash) return -1;
    uint64_t c = 1;
    if (slash != s && (sink__parse_u64(s, (size_t)(slash - s), &c) != 0 || c == 0 || c > 100000000))
        return -1;
    const char *p = slash + 1;
    uint64_t mult = 1;
    if (isdigit((unsigned char)*p)) {
        const char *b = p;
        while (isdigit((unsigned char)*p))
            p++;
        if (sink__parse_u64(b, (size_t)(p - b), &mult) != 0 || mult == 0 || mult > 1000000)
            return -1;
    }
    uint64_t ums = sink_unit_ms(p);
    if (!ums) return -1;
    *count = c;
    *per_ms = mult * ums;
    return 0;
}

int sink__parse_duration(const char *s, uint64_t *ms)
{
    char *end;
    if (!isdigit((unsigned char)s[0])) return -1;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s) return -1;
    uint64_t ums = *end ? sink_unit_ms(end) : 1000;
    if (!ums || ums > 3600000 || !(v * (double)ums < 1e15)) return -1;
    double t = v * (double)ums;
    *ms = t < 1 ? 1 : (uint64_t)(t + 0.5);
    return 0;
}

int sink__parse_reply(const char *s)
{
    if ((s[0] != '4' && s[0] != '5') || !isdigit((unsigned char)s[1]) ||
        !isdigit((unsigned char)s[2]) || s[3] != ' ' || !s[4])
        return -1;
    for (const char *p = s + 4; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) return -1;
    return (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
}

int sink__window_init(struct sink_window *w, uint64_t n, uint64_t per_ms)
{
    memset(w, 0, sizeof *w);
    w->ring = calloc(n, sizeof *w->ring);
    if (!w->ring) return -1;
    w->n = n;
    w->per_ms = per_ms;
    return 0;
}

void sink__window_free(struct sink_window *w)
{
    free(w->ring);
    memset(w, 0, sizeof *w);
}

int sink__window_ok(const struct sink_window *w, uint64_t now_ms)
{
    /* The oldest of the last n admissions must have left the window
     * (now - per, now]; until n were admitted there is room anyway. */
    if (w->filled < w->n) return 1;
    return now_ms - w->ring[w->head] >= w->per_ms;
}

void sink__window_add(struct sink_window *w, uint64_t now_ms)
{
    w->ring[w->head] = now_ms;
    w->head = (w->head + 1) % w->n;
    if (w->filled < w->n) w->filled++;
}

void sink__quota_init(struct sink_quota *q, uint64_t n, uint64_t per_ms, uint64_t start_ms)
{
    memset(q, 0, sizeof *q);
    q->n = n;
    q->per_ms = per_ms;
    q->start_ms = start_ms;
}

int sink__quota_ok(struct sink_quota *q, uint64_t now_ms)
{
    uint64_t win = now_ms >= q->start_ms ? (now_ms - q->start_ms) / q->per_ms : 0;
    if (win != q->window) {
        q->window = win;
        q->used = 0;
    }
    return q->used < q->n;
}

void sink__quota_add(struct sink_quota *q, uint64_t now_ms)
{
    if (sink__quota_ok(q, now_ms)) q->used++;
}

/* FNV-1a, 64 bits. */
static uint64_t sink_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* The slot of s (holding it, or the empty one where it belongs). */
static struct sink_str *sink_strset_slot(struct sink_strset *set, const char *s, size_t n,
                                         uint64_t h)
{
    size_t i = (size_t)h & (set->cap - 1);
    for (;;) {
        struct sink_str *e = &set->slots[i];
        if (!e->s || (e->hash == h && e->n == n && memcmp(e->s, s, n) == 0)) return e;
        i = (i + 1) & (set->cap - 1);
    }
}

int sink__strset_add(struct sink_strset *set, const char *s, size_t n)
{
    if ((set->len + 1) * 2 > set->cap) {
        /* Keep the table at most half full: probes stay short. */
        size_t ncap = set->cap ? set->cap * 2 : 1024;
        struct sink_str *old = set->slots;
        size_t ocap = set->cap;
        set->slots = calloc(ncap, sizeof *set->slots);
        if (!set->slots) {
            set->slots = old;
            return -1;
        }
        set->cap = ncap;
        for (size_t i = 0; i < ocap; i++)
            if (old[i].s) *sink_strset_slot(set, old[i].s, old[i].n, old[i].hash) = old[i];
        free(old);
    }
    uint64_t h = sink_hash(s, n);
    struct sink_str *e = sink_strset_slot(set, s, n, h);
    if (e->s) return 0;
    e->s = malloc(n + 1);
    if (!e->s) return -1;
    memcpy(e->s, s, n);
    e->s[n] = '\0';
    e->n = n;
    e->hash = h;
    set->len++;
    return 1;
}

void sink__strset_free(struct sink_strset *set)
{
    for (size_t i = 0; i < set->cap; i++)
        free(set->slots[i].s);
    free(set->slots);
    memset(set, 0, sizeof *set);
}

void sink__trim(const char *s, size_t n, const char **b, size_t *bn)
{
    size_t i = 0, e = n;
    while (i < e && isspace((unsigned char)s[i]))
        i++;
    while (e > i && isspace((unsigned char)s[e - 1]))
        e--;
    *b = s + i;
    *bn = e - i;
}
