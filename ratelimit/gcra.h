/* gcra.h: rate arithmetic (the generic cell rate algorithm) with an injected clock.
 *
 * A rate is "count per period" ("100/s", "/min", "5/10m") plus a burst: the number of
 * tokens that may be taken back to back. The only state is the theoretical arrival time
 * (TAT); integer microseconds make the arithmetic exact and identical to the Redis twin
 * (ratelimit/lua/gcra.lua, exposed as rl_lua_gcra[]), so one worker and a hundred workers
 * sharing Redis obey the same limit: in any window of W ms at most
 * floor(W / interval) + burst tokens are granted. The interval is rounded UP to a whole
 * microsecond, so rounding can only make volley slower than the rate, never faster.
 *
 * What "count/period" guarantees: at most count + burst tokens in any window of one
 * period (count + burst - 1 in any half-open window [t, t + period)), and over a long run
 * no more than count per period. The default burst is max(1, count * 5 / 100), so
 * "250/s" sends at most 262 in any second (261 in a half-open one) and paces the rest
 * one every 4 ms; a larger burst is an explicit "burst" in the providers file.
 */
#ifndef RL_GCRA_H
#define RL_GCRA_H

#include <stddef.h>
#include <stdint.h>

/* A parsed rate. interval_us == 0 means unlimited. */
typedef struct rl_rate {
    uint64_t interval_us; /* microseconds per token, rounded up */
    uint32_t burst;       /* tokens that may be taken at once, >= 1 */
    uint32_t count;       /* as written: count tokens ... */
    uint64_t per_ms;      /* ... per per_ms milliseconds */
} rl_rate_t;

/* GCRA state: one per limited thing (a provider, a sender). Zero-initialise. */
typedef struct rl_gcra {
    int64_t tat_us; /* theoretical arrival time of the next token, microseconds */
} rl_gcra_t;

/* Parse "N/unit" or "N/Munit" ("100/s", "/min" = 1/min, "2/5m"); units s, sec, m, min, h,
 * hour, d, day. burst 0 picks the default: 5% of count, at least 1 ("250/s" bursts 12,
 * "10/s" and "/min" burst 1, "7200/h" bursts 360); any other burst is taken as given.
 * Returns 0 or VL_EINVAL with a sentence in err (caller's buffer of errlen bytes; may be
 * NULL). */
int rl_rate_parse(const char *s, uint32_t burst, rl_rate_t *out, char *err, size_t errlen);

/* The burst a rate of count tokens per period gets when none is given: 5% of count, at
 * least 1 (the scheduler paces a learned rate with the same rule). */
uint32_t rl_rate_default_burst(double count);

/* Take n tokens at now_ms. Returns 1 when granted (state advanced), 0 when refused (state
 * unchanged; *retry_after_ms, if not NULL, is the wait until the same request would be
 * granted, rounded up), or VL_EINVAL when n == 0, n > burst or interval_us == 0 (callers
 * check rl_rate_t.interval_us for "unlimited" first). */
int rl_gcra_take(rl_gcra_t *st, uint64_t now_ms, uint64_t interval_us, uint32_t burst, uint32_t n,
                 uint64_t *retry_after_ms);

/* How many tokens could be taken at now_ms without waiting (0..burst). */
uint32_t rl_gcra_available(const rl_gcra_t *st, uint64_t now_ms, uint64_t interval_us,
                           uint32_t burst);

#endif
