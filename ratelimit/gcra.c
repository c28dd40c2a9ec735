/* gcra.c: GCRA rate arithmetic; see gcra.h. lua/gcra.lua must compute the same. */
#include "ratelimit/gcra.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "ratelimit/internal.h"

int rl__unit_ms(const char *u, uint64_t *ms)
{
    static const struct {
        const char *name;
        uint64_t ms;
    } units[] = {
        {"s", 1000},       {"sec", 1000},  {"second", 1000},  {"m", 60000},    {"min", 60000},
        {"minute", 60000}, {"h", 3600000}, {"hour", 3600000}, {"d", 86400000}, {"day", 86400000},
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(u, units[i].name) == 0) {
            *ms = units[i].ms;
            return 0;
        }
    }
    return VL_EINVAL;
}

void rl__seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int rl__parse_per(const char *s, uint64_t *count, uint64_t *per_ms, char *err, size_t errlen)
{
    const char *slash = strchr(s, '/');
    if (!slash) {
        rl__seterr(err, errlen, "\"%s\" is not COUNT/PERIOD (like \"100/s\" or \"500/15m\")", s);
        return VL_EINVAL;
    }
    uint64_t c = 1;
    if (slash != s) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (!isdigit((unsigned char)s[0]) || end != slash || errno || v == 0 || v > UINT32_MAX) {
            rl__seterr(err, errlen, "\"%s\": the count must be a whole number from 1 to %u", s,
                       UINT32_MAX);
            return VL_EINVAL;
        }
        c = v;
    }
    const char *p = slash + 1;
    uint64_t mult = 1;
    if (isdigit((unsigned char)*p)) {
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (v == 0 || v > 1000000) {
            rl__seterr(err, errlen, "\"%s\": the period multiplier must be 1 to 1000000", s);
            return VL_EINVAL;
        }
        mult = v;
        p = end;
    }
    uint64_t ums;
    if (rl__unit_ms(p, &ums) != 0) {
        rl__seterr(err, errlen, "\"%s\": unknown unit \"%s\" (use s, min, h or d)", s, p);
        return VL_EINVAL;
    }
    *count = c;
    *per_ms = mult * ums;
    return 0;
}

uint32_t rl_rate_default_burst(double count)
{
    /* Pacing by default: "250/s" must read as about 250 in any second, not twice that in
     * the first one (issue 16), so back-to-back sends are limited to 5% of the count. A
     * larger burst is the user's explicit choice. */
    double b = count * 5 / 100;
    return b < 1 ? 1 : b > UINT32_MAX ? UINT32_MAX : (uint32_t)b;
}

int rl_rate_parse(const char *s, uint32_t burst, rl_rate_t *out, char *err, size_t errlen)
{
    uint64_t count, per_ms;
    int rc = rl__parse_per(s, &count, &per_ms, err, errlen);
    if (rc) return rc;
    /* Round up: a rate that cannot be expressed exactly in microseconds is made slightly
     * slower, never faster than what the provider allows. */
    uint64_t interval = (per_ms * 1000 + count - 1) / count;
    if (burst == 0) burst = rl_rate_default_burst((double)count);
    out->interval_us = interval;
    out->burst = burst;
    out->count = (uint32_t)count;
    out->per_ms = per_ms;
    return 0;
}

int rl_gcra_take(rl_gcra_t *st, uint64_t now_ms, uint64_t interval_us, uint32_t burst, uint32_t n,
                 uint64_t *retry_after_ms)
{
    if (n == 0 || burst == 0 || n > burst || interval_us == 0) return VL_EINVAL;
    int64_t now = (int64_t)now_ms * 1000;
    int64_t tat = st->tat_us > now ? st->tat_us : now;
    int64_t new_tat = tat + (int64_t)n * (int64_t)interval_us;
    /* The request fits if, after it, the backlog is at most burst intervals. */
    int64_t allow_at = new_tat - (int64_t)burst * (int64_t)interval_us;
    if (allow_at > now) {
        if (retry_after_ms) *retry_after_ms = (uint64_t)(allow_at - now + 999) / 1000;
        return 0;
    }
    st->tat_us = new_tat;
    if (retry_after_ms) *retry_after_ms = 0;
    return 1;
}

uint32_t rl_gcra_available(const rl_gcra_t *st, uint64_t now_ms, uint64_t interval_us,
                           uint32_t burst)
{
    if (interval_us == 0) return burst;
    int64_t now = (int64_t)now_ms * 1000;
    int64_t backlog = st->tat_us > now ? st->tat_us - now : 0;
    /* Tokens already "owed": ceil(backlog / interval). */
    int64_t owed = (backlog + (int64_t)interval_us - 1) / (int64_t)interval_us;
    return owed >= burst ? 0 : (uint32_t)(burst - owed);
}
