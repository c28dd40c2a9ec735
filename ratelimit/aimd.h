/* aimd.h: limits learned from the provider's replies (additive increase, multiplicative
 * decrease), and the reconnect policy of a route.
 *
 * NetEase says "421 HL:ICC" when there are too many connections, "450 MI:DMC" when one
 * connection carried too many messages, "450 RP:DRC" when it carried too many recipients.
 * volley then halves the matching ceiling (never below 1) and raises it by one after each
 * quiet interval without a new signal (default 60 s), never above what the providers file
 * configured. The clock is a parameter, so tests need no sleeping.
 */
#ifndef RL_AIMD_H
#define RL_AIMD_H

#include <stdbool.h>
#include <stdint.h>

typedef enum rl_limit {
    RL_LIMIT_CONNECTIONS,
    RL_LIMIT_MESSAGES_PER_CONNECTION,
    RL_LIMIT_RECIPIENTS_PER_CONNECTION,
    RL_LIMIT_RECIPIENTS_PER_MESSAGE,
    RL_LIMIT_LAST
} rl_limit_t;

typedef struct rl_aimd {
    uint32_t configured[RL_LIMIT_LAST]; /* 0 = no configured limit */
    uint32_t learned[RL_LIMIT_LAST];    /* 0 = nothing learned: the configured value holds */
    uint64_t last_ms[RL_LIMIT_LAST];    /* last decrease or raise */
    uint64_t quiet_ms;
} rl_aimd_t;

/* Start with the configured ceilings (array of RL_LIMIT_LAST values, copied; 0 = none)
 * and a quiet interval (0 = 60 s). */
void rl_aimd_init(rl_aimd_t *a, const uint32_t configured[RL_LIMIT_LAST], uint64_t quiet_ms);

/* The ceiling in force at now_ms (raising it for the quiet intervals that passed); 0 means
 * unlimited. */
uint32_t rl_aimd_get(rl_aimd_t *a, rl_limit_t which, uint64_t now_ms);

/* The provider signalled that `which` was exceeded. observed is the value at which it
 * happened (connections open, messages or recipients already sent on the connection,
 * including the refused one), or 0 if unknown; the new ceiling is half of the smaller of
 * the current ceiling and observed, at least 1. With neither a ceiling nor observed there
 * is nothing to halve and the ceiling stays. Returns the new ceiling. */
uint32_t rl_aimd_decrease(rl_aimd_t *a, rl_limit_t which, uint64_t now_ms, uint32_t observed);

/* Map an rl_cap_t (rules.h) to its limit; RL_LIMIT_LAST for RL_CAP_NONE. */
rl_limit_t rl_limit_from_cap(int cap);

/* Reconnect policy of one route: exponential backoff with jitter after connect failures
 * or 421, and suspension after `suspend_after` failures in a row. */
typedef struct rl_route {
    unsigned failures; /* consecutive */
    unsigned suspend_after;
    uint64_t base_ms, max_ms;
    uint64_t next_try_ms; /* do not connect before */
    bool suspended;
    char reason[200]; /* why the last failure / the suspension */
} rl_route_t;

/* suspend_after 0 = 10; base_ms 0 = 1 s; max_ms 0 = 5 min. */
void rl_route_init(rl_route_t *r, unsigned suspend_after, uint64_t base_ms, uint64_t max_ms);

/* A connection attempt failed, or the server said 421. reason (copied, truncated) says why,
 * e.g. "connect 10.0.0.1:25: connection refused". rnd is one draw of the random source.
 * Returns the time before which the route must not be tried; once failures reach
 * suspend_after the route is suspended (rl_route_t.suspended, reason kept). A failure
 * before the time the previous one returned belongs to the same round of attempts and
 * does not count again, so failures counts rounds of backoff, not parallel connections. */
uint64_t rl_route_failure(rl_route_t *r, uint64_t now_ms, const char *reason, uint64_t rnd);

/* A connection succeeded (greeting and EHLO accepted): the failure count restarts. A
 * suspended route stays suspended until rl_route_resume. */
void rl_route_success(rl_route_t *r);
void rl_route_resume(rl_route_t *r);

#endif
