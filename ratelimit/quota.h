/* quota.h: time zones and quota windows ("500/15m", "10000/d").
 *
 * Quotas are counted in fixed windows. A window of a day is the provider's LOCAL day
 * (NetEase's daily limits reset at midnight in Asia/Shanghai), so days may last 23 or 25
 * hours where daylight saving time changes. Shorter windows are aligned to the local
 * midnight too and the last one of a day ends at the next midnight.
 *
 * Time zones are read from the TZif files under /usr/share/zoneinfo by this module's own
 * parser (version 2+ 64-bit data, plus the POSIX rule in the footer for times after the
 * last transition), so nothing here touches the process-wide TZ variable or localtime():
 * threads and providers in different zones never disturb each other.
 */
#ifndef RL_QUOTA_H
#define RL_QUOTA_H

#include <stddef.h>
#include <stdint.h>

typedef struct rl_tz rl_tz_t;

/* Load a zone by IANA name ("Asia/Shanghai"; "UTC" always works even without tzdata).
 * Returns the zone (caller frees with rl_tz_free) or NULL with a sentence in err. Names
 * with ".." or a leading '/' are refused. */
rl_tz_t *rl_tz_load(const char *name, char *err, size_t errlen);
void rl_tz_free(rl_tz_t *tz);

/* The zone's name as given to rl_tz_load (borrowed, lives as long as tz). */
const char *rl_tz_name(const rl_tz_t *tz);

/* Seconds east of UTC in force at utc_ms. A NULL tz is UTC. */
int32_t rl_tz_offset(const rl_tz_t *tz, int64_t utc_ms);

/* The local day containing utc_ms: *start_ms is its first instant (local midnight, or the
 * transition if midnight does not exist that day), *next_ms the first instant of the next
 * local day. Either pointer may be NULL. A NULL tz is UTC. */
void rl_tz_day(const rl_tz_t *tz, int64_t utc_ms, int64_t *start_ms, int64_t *next_ms);

/* Broken-down local date of utc_ms (year, month 1-12, day 1-31). */
void rl_tz_date(const rl_tz_t *tz, int64_t utc_ms, int *year, int *month, int *day);

/* The most quotas one rl_quota_take call handles. */
#define RL_QUOTA_MAX_WINDOWS 8

/* One quota: at most limit messages per window. */
typedef struct rl_quota {
    uint64_t limit;
    uint32_t window_s; /* 86400 means "the local day"; otherwise divides into the day */
} rl_quota_t;

/* Parse "500/15m", "10000/d", "/h" (= 1/h). Windows: s, m/min, h, d (a day at most; a
 * day is the local day). Returns 0 or VL_EINVAL with a sentence in err. */
int rl_quota_parse(const char *s, rl_quota_t *out, char *err, size_t errlen);

/* The window of q containing now_ms: [start_ms, end_ms) and an id that names it in Redis
 * keys: "2026-11-23" for a day, "2026-11-23T14:15+08:00" for shorter windows (the offset
 * keeps the repeated hour of a DST change distinct). */
typedef struct rl_window {
    int64_t start_ms;
    int64_t end_ms;
    char id[32];
} rl_window_t;

void rl_quota_window(const rl_quota_t *q, const rl_tz_t *tz, int64_t now_ms, rl_window_t *w);

/* In-process quota counters (the C twin of ratelimit/lua/quota.lua, for a single process
 * and for tests): one counter per quota, reset when its window id changes. */
typedef struct rl_quota_counter {
    char id[32];
    uint64_t used;
} rl_quota_counter_t;

/* Count n messages against every quota in q[0..nq) at once, or none: returns 1 when all
 * had room (all counters advanced), 0 when quota *blocked (index into q) was full
 * (nothing counted; *until_ms is the end of that window). A negative n gives back
 * -n messages (e.g. a claimed message that was never sent) without going below zero, and
 * returns 1. blocked/until_ms may be NULL. VL_EINVAL when nq > RL_QUOTA_MAX_WINDOWS. */
int rl_quota_take(const rl_quota_t *q, size_t nq, rl_quota_counter_t *ctr, const rl_tz_t *tz,
                  int64_t now_ms, int64_t n, size_t *blocked, int64_t *until_ms);

#endif
