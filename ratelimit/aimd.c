/* aimd.c: learned limits and the route reconnect policy; see aimd.h. */
#include "ratelimit/aimd.h"

#include <stdio.h>
#include <string.h>

#include "ratelimit/rules.h"

void rl_aimd_init(rl_aimd_t *a, const uint32_t configured[RL_LIMIT_LAST], uint64_t quiet_ms)
{
    memset(a, 0, sizeof *a);
    memcpy(a->configured, configured, sizeof a->configured);
    a->quiet_ms = quiet_ms ? quiet_ms : 60000;
}

uint32_t rl_aimd_get(rl_aimd_t *a, rl_limit_t which, uint64_t now_ms)
{
    if ((unsigned)which >= RL_LIMIT_LAST) return 0;
    uint32_t cur = a->learned[which];
    if (cur == 0) return a->configured[which];
    if (now_ms > a->last_ms[which]) {
        /* One step up per quiet interval that passed without a signal. */
        uint64_t steps = (now_ms - a->last_ms[which]) / a->quiet_ms;
        uint32_t cfg = a->configured[which];
        if (steps > 0) {
            uint64_t v = cur + steps;
            if (cfg && v >= cfg) {
                a->learned[which] = 0; /* back to the configured value: nothing learned */
                return cfg;
            }
            a->learned[which] = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
            a->last_ms[which] += steps * a->quiet_ms;
        }
    }
    return a->learned[which];
}

uint32_t rl_aimd_decrease(rl_aimd_t *a, rl_limit_t which, uint64_t now_ms, uint32_t observed)
{
    if ((unsigned)which >= RL_LIMIT_LAST) return 0;
    uint32_t cur = rl_aimd_get(a, which, now_ms);
    if (observed && (cur == 0 || observed < cur)) cur = observed;
    if (cur == 0) return 0; /* unlimited and nothing observed: nothing to halve */
    uint32_t v = cur / 2 ? cur / 2 : 1;
    a->learned[which] = v;
    a->last_ms[which] = now_ms;
    return v;
}

rl_limit_t rl_limit_from_cap(int cap)
{
    switch (cap) {
    case RL_CAP_CONNECTIONS:
        return RL_LIMIT_CONNECTIONS;
    case RL_CAP_MESSAGES_PER_CONNECTION:
        return RL_LIMIT_MESSAGES_PER_CONNECTION;
    case RL_CAP_RECIPIENTS_PER_CONNECTION:
        return RL_LIMIT_RECIPIENTS_PER_CONNECTION;
    case RL_CAP_RECIPIENTS_PER_MESSAGE:
        return RL_LIMIT_RECIPIENTS_PER_MESSAGE;
    default:
        return RL_LIMIT_LAST;
    }
}

void rl_route_init(rl_route_t *r, unsigned suspend_after, uint64_t base_ms, uint64_t max_ms)
{
    memset(r, 0, sizeof *r);
    r->suspend_after = suspend_after ? suspend_after : 10;
    r->base_ms = base_ms ? base_ms : 1000;
    r->max_ms = max_ms ? max_ms : 300000;
}

uint64_t rl_route_failure(rl_route_t *r, uint64_t now_ms, const char *reason, uint64_t rnd)
{
    /* Connections set up together fail together: a failure before the time
     * the last one gave is part of the same round. Counting each, 20
     * connections refused by a server started a second late reached the
     * suspension (5 minutes) at once. */
    if (r->failures && now_ms < r->next_try_ms) {
        if (!r->suspended) snprintf(r->reason, sizeof r->reason, "%s", reason ? reason : "unknown");
        return r->next_try_ms;
    }
    r->failures++;
    r->next_try_ms = now_ms + rl_backoff(r->failures, r->base_ms, r->max_ms, rnd);
    if (r->failures >= r->suspend_after && !r->suspended) {
        r->suspended = true;
        snprintf(r->reason, sizeof r->reason, "suspended after %u failures in a row; last: %s",
                 r->failures, reason ? reason : "unknown");
    } else if (!r->suspended) {
        snprintf(r->reason, sizeof r->reason, "%s", reason ? reason : "unknown");
    }
    return r->next_try_ms;
}

void rl_route_success(rl_route_t *r)
{
    r->failures = 0;
    r->next_try_ms = 0;
}

void rl_route_resume(rl_route_t *r)
{
    r->suspended = false;
    r->failures = 0;
    r->next_try_ms = 0;
    r->reason[0] = '\0';
}
