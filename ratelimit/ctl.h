/* ctl.h: one provider's sending controller: the limits it has learned from what the
 * provider answers, and when it may not send at all.
 *
 * A real mailbox provider publishes few of its limits. It answers "slow down" in its own
 * words and blocks senders that keep pushing. The controller turns the outcomes of
 * attempts into the limits in force, the way TCP turns losses into a window:
 *   - a learned rate (messages per second): lowered multiplicatively from the rate
 *     actually achieved over the last few seconds when a reply means "too fast" or when
 *     more than a small share of recent attempts were deferred; raised additively after
 *     each quiet interval; never above the configured rate (when there is one);
 *   - learned per-connection caps: a 4xx to MAIL/RCPT after k accepted messages on a
 *     connection, when a fresh connection accepts again, is a cap of k;
 *   - the connection ceiling, lowered on "too many connections" to 0.7 of the connections
 *     the provider held (not half: the sawtooth then stays above 80% of its ceiling), and
 *     raised by one per quiet interval (rl_aimd);
 *   - a pause with exponential backoff (2 s doubling to 5 min) while more than
 *     defer_share of recent attempts are deferred although the rate was lowered, after
 *     which the rate restarts from 1/s and doubles back (TCP's slow start after a
 *     timeout); or until a time a rule names.
 *
 * No I/O and an injected clock (every call takes now_ms): a test drives it through a day
 * of simulated time in milliseconds (test_ctl.c simulates providers with hidden limits).
 * The worker holds one per provider, feeds it every outcome, applies rl_ctl_limits() to
 * its pools and the shared GCRA, and shares the learned values through Redis
 * ({p:NAME}:learned): rl_ctl_take_changes() says what to publish, rl_ctl_adopt() takes
 * another worker's newer values. Not thread-safe: one owner (the loop thread).
 */
#ifndef RL_CTL_H
#define RL_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ratelimit/rules.h"

/* What the providers file says (0 = not configured). Copied by rl_ctl_init. */
typedef struct rl_ctl_cfg {
    double rate_per_s;        /* configured rate ("250/s" is 250); 0 = none configured */
    uint32_t max_connections; /* configured ceiling; 0 = 1 */
    uint32_t msgs_per_conn;   /* configured per-connection caps; 0 = none */
    uint32_t rcpts_per_conn;
    uint64_t quiet_ms;  /* raise interval without a new signal; 0 = default */
    double defer_share; /* deferred share of recent attempts that lowers; 0 = 0.05 */
} rl_ctl_cfg_t;

/* What an attempt's outcome means for the limits. rl_ctl_classify() maps a reply and its
 * rule's action to one of these; the engine's own failures are RL_CTL_NEUTRAL. */
typedef enum rl_ctl_signal {
    RL_CTL_OK,          /* the provider accepted (250 to DATA/BDAT, or to RCPT) */
    RL_CTL_RATE,        /* "too fast": rate signal (NetEase HL:IFC, RP:QRC, MI:SFQ...) */
    RL_CTL_DEFER,       /* another 4xx: counts toward the deferred share */
    RL_CTL_CONNECTIONS, /* too many connections (421 HL:ICC...) */
    RL_CTL_PER_CONN,    /* a named per-connection cap (450 MI:DMC, RP:DRC) */
    RL_CTL_FINAL,       /* 5xx or a final outcome for the recipient: no signal about limits */
    RL_CTL_NEUTRAL,     /* nothing the provider said (connection lost, local error) */
    RL_CTL_LAST
} rl_ctl_signal_t;

/* One outcome. */
typedef struct rl_ctl_outcome {
    rl_ctl_signal_t sig;
    int stage;               /* 0 MAIL, 1 RCPT, 2 DATA/BDAT content (where the reply came) */
    uint32_t conn_id;        /* which connection (engine's id), for per-connection caps */
    uint32_t msgs_on_conn;   /* messages accepted on that connection before this one */
    uint32_t rcpts_on_conn;  /* recipients accepted on that connection before this one */
    uint32_t open_conns;     /* connections open at the time (for RL_CTL_CONNECTIONS) */
    uint64_t pause_until_ms; /* a rule's pause (RL_PAUSE), else 0 */
    rl_cap_t cap;            /* RL_CTL_PER_CONN: the rule's cap; RL_CAP_NONE = messages per
                                connection at MAIL, recipients at RCPT */
} rl_ctl_outcome_t;

/* What rl_ctl_outcome() asks the caller to do besides requeueing. */
enum rl_ctl_act {
    RL_CTL_ACT_NONE = 0,
    RL_CTL_ACT_CLOSE = 1 << 0, /* close that connection (after its in-flight replies) and
                                  open a fresh one: a suspected per-connection cap */
};

/* The limits in force. */
typedef struct rl_ctl_limits {
    double rate_per_s;        /* learned rate, or the configured one; 0 = unlimited */
    uint32_t max_connections; /* >= 1 */
    uint32_t msgs_per_conn;   /* 0 = none */
    uint32_t rcpts_per_conn;  /* 0 = none */
    uint64_t paused_until_ms; /* 0 = not paused; else no attempt may start before it */
    const char *why;          /* borrowed until the next call: the last change, for status
                                 ("rate lowered to 560/s: 451 4.7.1 rate limited") */
} rl_ctl_limits_t;

/* The values workers share through Redis ({p:NAME}:learned); 0 = nothing learned. */
typedef struct rl_ctl_learned {
    double rate_per_s;
    uint32_t max_connections, msgs_per_conn, rcpts_per_conn;
    uint64_t paused_until_ms;
    uint64_t changed_ms; /* when the newest of them was lowered or set by a signal (newer
                            wins on adopt); raises after quiet time do not move it, as every
                            worker raises on its own clock and a raise must not override
                            another worker's newer decrease */
} rl_ctl_learned_t;

typedef struct rl_ctl rl_ctl_t;

/* A controller for one provider (caller frees with rl_ctl_free), or NULL when out of
 * memory. cfg is copied. */
rl_ctl_t *rl_ctl_new(const rl_ctl_cfg_t *cfg, uint64_t now_ms);
void rl_ctl_free(rl_ctl_t *c);

/* Map a reply (borrowed) and the action its rule chose (rules.h) to a signal. The rule's
 * class comes first (RL_LOWER_CONCURRENCY -> CONNECTIONS, RL_LOWER_PER_CONNECTION ->
 * PER_CONN, a "lower_rate" rule -> RATE); then, whatever the rule set, 421/451 with a 4.7.x
 * enhanced code or a text naming a rate ("rate", "too many", "too fast", "slow down",
 * "try again later", case-insensitive) is RATE; another 4xx is DEFER; 2xx is OK; 5xx is
 * FINAL. */
rl_ctl_signal_t rl_ctl_classify(const rl_reply_t *reply, rl_class_t action);

/* Feed one outcome at now_ms; returns RL_CTL_ACT_* flags. */
unsigned rl_ctl_outcome(rl_ctl_t *c, uint64_t now_ms, const rl_ctl_outcome_t *o);

/* The limits in force at now_ms (raising learned values for the quiet intervals passed).
 * *out is filled; out->why is borrowed from c. */
void rl_ctl_limits(rl_ctl_t *c, uint64_t now_ms, rl_ctl_limits_t *out);

/* When the learned values changed since the last call (lowered, raised, paused), fill *out
 * and return true: the caller publishes them. */
bool rl_ctl_take_changes(rl_ctl_t *c, rl_ctl_learned_t *out);

/* Adopt another worker's values (borrowed) when newer than this controller's; the
 * configured values still bound them. A later pause is adopted whatever changed_ms says. */
void rl_ctl_adopt(rl_ctl_t *c, const rl_ctl_learned_t *l);

/* The rate the other workers achieve for this provider (messages accepted per second, from
 * Redis), at now_ms. The learned rate is the provider's total, so a decrease starts from the
 * total achieved: this worker's own plus this, for 5 s after the call. Optional: without it
 * a worker lowers from its own share alone (more than needed, never less). */
void rl_ctl_peers_achieved(rl_ctl_t *c, uint64_t now_ms, double rate_per_s);

#endif
