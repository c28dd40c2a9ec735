/* quota.c: TZif time zones (RFC 8536) and quota windows; see quota.h. */
#include "ratelimit/quota.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "ratelimit/internal.h"

#define ZONEINFO_DIR "/usr/share/zoneinfo"
#define DAY_MS 86400000LL

/* A POSIX TZ rule "Mm.w.d/time": month, week (5 = last), weekday (0 = Sunday), seconds. */
typedef struct posix_rule {
    int month, week, wday;
    int32_t time_s;
} posix_rule_t;

struct rl_tz {
    char *name;
    int64_t *trans;     /* transition times, UTC seconds, ascending */
    uint8_t *trans_idx; /* type in force from trans[i] */
    int32_t *utoff;     /* per type, seconds east of UTC */
    size_t ntrans, ntypes;
    /* The footer rule for times after the last transition. */
    bool has_rule;
    bool rule_dst; /* the rule has a DST part */
    int32_t std_off, dst_off;
    posix_rule_t start, end;
};

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t yy = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yy + (*m <= 2));
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static const unsigned char *be_u32(const unsigned char *p, uint32_t *v)
{
    *v = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    return p + 4;
}

static int64_t be_i64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v;
}

/* --- POSIX TZ strings (the TZif footer) ----------------------------------------------- */

static const char *tzs_name(const char *p)
{
    if (*p == '<') {
        const char *q = strchr(p, '>');
        return q ? q + 1 : NULL;
    }
    const char *q = p;
    while (isalpha((unsigned char)*q))
        q++;
    return q - p >= 3 ? q : NULL;
}

/* [+-]hh[:mm[:ss]] into seconds; NULL on error. */
static const char *tzs_time(const char *p, int32_t *out)
{
    int sign = 1;
    if (*p == '+' || *p == '-') sign = *p++ == '-' ? -1 : 1;
    if (!isdigit((unsigned char)*p)) return NULL;
    int32_t parts[3] = {0, 0, 0};
    for (int i = 0; i < 3; i++) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 167) return NULL;
        parts[i] = (int32_t)v;
        p = end;
        if (*p != ':' || i == 2) break;
        p++;
    }
    *out = sign * (parts[0] * 3600 + parts[1] * 60 + parts[2]);
    return p;
}

static const char *tzs_rule(const char *p, posix_rule_t *r)
{
    if (*p != 'M') return NULL; /* Julian-day rules are not used by any current zone's footer */
    char *end;
    r->month = (int)strtol(p + 1, &end, 10);
    if (*end != '.') return NULL;
    r->week = (int)strtol(end + 1, &end, 10);
    if (*end != '.') return NULL;
    r->wday = (int)strtol(end + 1, &end, 10);
    if (r->month < 1 || r->month > 12 || r->week < 1 || r->week > 5 || r->wday < 0 || r->wday > 6)
        return NULL;
    p = end;
    r->time_s = 7200;
    if (*p == '/') p = tzs_time(p + 1, &r->time_s);
    return p;
}

static void tz_parse_footer(rl_tz_t *tz, const char *s)
{
    int32_t off;
    const char *p = tzs_name(s);
    if (!p || !(p = tzs_time(p, &off))) return;
    tz->std_off = -off; /* POSIX offsets count west of Greenwich */
    tz->has_rule = true;
    if (*p == '\0') return;
    const char *q = tzs_name(p);
    if (!q) goto norule;
    tz->dst_off = tz->std_off + 3600;
    if (*q != ',') {
        if (!(q = tzs_time(q, &off))) goto norule;
        tz->dst_off = -off;
    }
    if (*q != ',' || !(q = tzs_rule(q + 1, &tz->start)) || *q != ',' ||
        !(q = tzs_rule(q + 1, &tz->end)))
        goto norule;
    tz->rule_dst = true;
    return;
norule:
    tz->has_rule = false;
}

/* UTC seconds of a rule's moment in year y, the rule's time being local time under off. */
static int64_t rule_utc(const posix_rule_t *r, int y, int32_t off)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int len = mdays[r->month - 1];
    if (r->month == 2 && (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))) len = 29;
    int64_t first = days_from_civil(y, r->month, 1);
    int wday1 = (int)((first % 7 + 7 + 4) % 7); /* 1970-01-01 was a Thursday */
    int day = 1 + (r->wday - wday1 + 7) % 7 + (r->week - 1) * 7;
    while (day > len)
        day -= 7;
    return (days_from_civil(y, r->month, day)) * 86400 + r->time_s - off;
}

static int32_t rule_offset(const rl_tz_t *tz, int64_t t)
{
    if (!tz->rule_dst) return tz->std_off;
    int y, m, d;
    civil_from_days(floor_div(t + tz->std_off, 86400), &y, &m, &d);
    int64_t start = rule_utc(&tz->start, y, tz->std_off);
    int64_t end = rule_utc(&tz->end, y, tz->dst_off);
    if (start < end) return t >= start && t < end ? tz->dst_off : tz->std_off;
    return t >= end && t < start ? tz->std_off : tz->dst_off; /* southern hemisphere */
}

/* --- TZif ------------------------------------------------------------------------------- */

static int tz_parse(rl_tz_t *tz, const unsigned char *p, size_t len)
{
    const unsigned char *end = p + len;
    uint32_t c[6];
    if (len < 44 || memcmp(p, "TZif", 4) != 0) return VL_EPARSE;
    if (p[4] < '2')
        return VL_EPARSE; /* version 1 files have no 64-bit data; tzdata has none left */
    const unsigned char *q = p + 20;
    for (int i = 0; i < 6; i++)
        q = be_u32(q, &c[i]);
    /* Skip the 32-bit block: isut, isstd, leap, time, type, char counts. */
    size_t skip = (size_t)c[3] * 5 + (size_t)c[4] * 6 + c[5] + (size_t)c[2] * 8 + c[1] + c[0];
    if ((size_t)(end - q) < skip + 44) return VL_EPARSE;
    q += skip;
    if (memcmp(q, "TZif", 4) != 0) return VL_EPARSE;
    q += 20;
    for (int i = 0; i < 6; i++)
        q = be_u32(q, &c[i]);
    size_t ntrans = c[3], ntypes = c[4];
    size_t need = ntrans * 9 + ntypes * 6 + c[5] + (size_t)c[2] * 12 + c[1] + c[0];
    if (ntypes == 0 || ntypes > 256 || (size_t)(end - q) < need) return VL_EPARSE;
    tz->trans = calloc(ntrans ? ntrans : 1, sizeof *tz->trans);
    tz->trans_idx = calloc(ntrans ? ntrans : 1, 1);
    tz->utoff = calloc(ntypes, sizeof *tz->utoff);
    if (!tz->trans || !tz->trans_idx || !tz->utoff) return VL_ENOMEM;
    for (size_t i = 0; i < ntrans; i++)
        tz->trans[i] = be_i64(q + 8 * i);
    q += 8 * ntrans;
    for (size_t i = 0; i < ntrans; i++) {
        if (q[i] >= ntypes) return VL_EPARSE;
        tz->trans_idx[i] = q[i];
    }
    q += ntrans;
    for (size_t i = 0; i < ntypes; i++) {
        uint32_t v;
        be_u32(q + 6 * i, &v);
        tz->utoff[i] = (int32_t)v;
    }
    q += need - ntrans * 9;
    tz->ntrans = ntrans;
    tz->ntypes = ntypes;
    /* Footer: "\n<POSIX TZ string>\n". */
    if (q < end && *q == '\n') {
        const unsigned char *nl = memchr(q + 1, '\n', (size_t)(end - q - 1));
        if (nl && nl - q - 1 < 64) {
            char s[64];
            memcpy(s, q + 1, (size_t)(nl - q - 1));
            s[nl - q - 1] = '\0';
            tz_parse_footer(tz, s);
        }
    }
    return 0;
}

rl_tz_t *rl_tz_load(const char *name, char *err, size_t errlen)
{
    rl_tz_t *tz = calloc(1, sizeof *tz);
    if (!tz || !(tz->name = strdup(name))) {
        free(tz);
        rl__seterr(err, errlen, "out of memory");
        return NULL;
    }
    if (strcmp(name, "UTC") == 0 || strcmp(name, "Etc/UTC") == 0) {
        tz->has_rule = true; /* std_off 0, no DST: needs no file */
        return tz;
    }
    if (name[0] == '\0' || name[0] == '/' || strstr(name, "..") || strlen(name) > 200) {
        rl__seterr(err, errlen, "\"%s\" is not an IANA time zone name (like Asia/Shanghai)", name);
        goto fail;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/%s", ZONEINFO_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        rl__seterr(err, errlen, "unknown time zone \"%s\" (no %s)", name, path);
        goto fail;
    }
    /* TZif files are a few kB; 256 kB bounds a corrupt or hostile one. */
    size_t cap = 256 * 1024;
    unsigned char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        rl__seterr(err, errlen, "out of memory");
        goto fail;
    }
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    int rc = tz_parse(tz, buf, n);
    free(buf);
    if (rc) {
        rl__seterr(err, errlen, "time zone \"%s\": %s is not a TZif version 2+ file", name, path);
        goto fail;
    }
    return tz;
fail:
    rl_tz_free(tz);
    return NULL;
}

void rl_tz_free(rl_tz_t *tz)
{
    if (!tz) return;
    free(tz->name);
    free(tz->trans);
    free(tz->trans_idx);
    free(tz->utoff);
    free(tz);
}

const char *rl_tz_name(const rl_tz_t *tz)
{
    return tz ? tz->name : "UTC";
}

int32_t rl_tz_offset(const rl_tz_t *tz, int64_t utc_ms)
{
    if (!tz) return 0;
    int64_t t = floor_div(utc_ms, 1000);
    if (tz->ntrans == 0 || t >= tz->trans[tz->ntrans - 1]) {
        if (tz->has_rule) return rule_offset(tz, t);
        if (tz->ntrans == 0) return tz->ntypes ? tz->utoff[0] : 0;
        return tz->utoff[tz->trans_idx[tz->ntrans - 1]];
    }
    if (t < tz->trans[0]) return tz->utoff[0];
    size_t lo = 0, hi = tz->ntrans; /* trans[lo] <= t < trans[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (tz->trans[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return tz->utoff[tz->trans_idx[lo]];
}

/* The first instant in (lo, hi] whose offset is not off(lo), assuming one change. */
static int64_t find_change(const rl_tz_t *tz, int64_t lo, int64_t hi)
{
    int32_t o = rl_tz_offset(tz, lo);
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (rl_tz_offset(tz, mid) == o)
            lo = mid;
        else
            hi = mid;
    }
    return hi;
}

/* The first instant at which local time reaches local midnight lm (local ms), searching
 * around `near` (a UTC time within a day of it). */
static int64_t local_to_utc(const rl_tz_t *tz, int64_t lm, int64_t near)
{
    int32_t o1 = rl_tz_offset(tz, near);
    int64_t c1 = lm - (int64_t)o1 * 1000;
    int32_t o2 = rl_tz_offset(tz, c1);
    if (o2 == o1) return c1;
    int64_t c2 = lm - (int64_t)o2 * 1000;
    if (rl_tz_offset(tz, c2) == o2) return c2;
    /* Midnight does not exist (the clocks jumped over it): the day starts at the jump. */
    return c1 < c2 ? find_change(tz, c1, c2) : find_change(tz, c2, c1);
}

void rl_tz_day(const rl_tz_t *tz, int64_t utc_ms, int64_t *start_ms, int64_t *next_ms)
{
    int64_t local = utc_ms + (int64_t)rl_tz_offset(tz, utc_ms) * 1000;
    int64_t l0 = floor_div(local, DAY_MS) * DAY_MS;
    if (start_ms) *start_ms = local_to_utc(tz, l0, utc_ms);
    if (next_ms) *next_ms = local_to_utc(tz, l0 + DAY_MS, utc_ms);
}

void rl_tz_date(const rl_tz_t *tz, int64_t utc_ms, int *year, int *month, int *day)
{
    int64_t local = utc_ms + (int64_t)rl_tz_offset(tz, utc_ms) * 1000;
    civil_from_days(floor_div(local, DAY_MS), year, month, day);
}

/* --- quotas ----------------------------------------------------------------------------- */

int rl_quota_parse(const char *s, rl_quota_t *out, char *err, size_t errlen)
{
    uint64_t count, per_ms;
    int rc = rl__parse_per(s, &count, &per_ms, err, errlen);
    if (rc) return rc;
    if (per_ms > (uint64_t)DAY_MS) {
        rl__seterr(err, errlen, "\"%s\": quota windows are at most a day (/d)", s);
        return VL_EINVAL;
    }
    out->limit = count;
    out->window_s = (uint32_t)(per_ms / 1000);
    return 0;
}

void rl_quota_window(const rl_quota_t *q, const rl_tz_t *tz, int64_t now_ms, rl_window_t *w)
{
    int64_t day0, day1;
    rl_tz_day(tz, now_ms, &day0, &day1);
    int y, m, d;
    if (q->window_s >= 86400) {
        rl_tz_date(tz, now_ms, &y, &m, &d);
        w->start_ms = day0;
        w->end_ms = day1;
        snprintf(w->id, sizeof w->id, "%04d-%02d-%02d", y, m, d);
        return;
    }
    int64_t len = (int64_t)q->window_s * 1000;
    w->start_ms = day0 + (now_ms - day0) / len * len;
    w->end_ms = w->start_ms + len < day1 ? w->start_ms + len : day1;
    int32_t off = rl_tz_offset(tz, w->start_ms);
    int64_t local_s = floor_div(w->start_ms, 1000) + off;
    civil_from_days(floor_div(local_s, 86400), &y, &m, &d);
    int64_t sod = local_s - floor_div(local_s, 86400) * 86400;
    int aoff = off < 0 ? -off : off;
    snprintf(w->id, sizeof w->id, "%04d-%02d-%02dT%02d:%02d%c%02d:%02d", y, m, d, (int)(sod / 3600),
             (int)(sod / 60 % 60), off < 0 ? '-' : '+', aoff / 3600, aoff / 60 % 60);
}

int rl_quota_take(const rl_quota_t *q, size_t nq, rl_quota_counter_t *ctr, const rl_tz_t *tz,
                  int64_t now_ms, int64_t n, size_t *blocked, int64_t *until_ms)
{
    rl_window_t w[RL_QUOTA_MAX_WINDOWS];
    if (nq > RL_QUOTA_MAX_WINDOWS) return VL_EINVAL;
    for (size_t i = 0; i < nq; i++) {
        rl_quota_window(&q[i], tz, now_ms, &w[i]);
        if (strcmp(ctr[i].id, w[i].id) != 0) {
            /* A new window: the old count no longer matters. */
            memcpy(ctr[i].id, w[i].id, sizeof ctr[i].id);
            ctr[i].used = 0;
        }
    }
    if (n < 0) {
        for (size_t i = 0; i < nq; i++)
            ctr[i].used = ctr[i].used > (uint64_t)-n ? ctr[i].used - (uint64_t)-n : 0;
        return 1;
    }
    for (size_t i = 0; i < nq; i++) {
        if (ctr[i].used + (uint64_t)n > q[i].limit) {
            if (blocked) *blocked = i;
            if (until_ms) *until_ms = w[i].end_ms;
            return 0;
        }
    }
    for (size_t i = 0; i < nq; i++)
        ctr[i].used += (uint64_t)n;
    return 1;
}
