/* rules.h: a server's reply -> what volley does next.
 *
 * A rule matches on the reply code (exact "421" or a class "4xx", "45x"), the enhanced
 * status code (exact "5.1.1", with x for any digit "4.7.5xx", or a prefix ending in a
 * dot "5.1.") and a POSIX extended
 * regular expression on the text (case-insensitive, compiled once), and names one action
 * class of DESIGN.md's table. Rules are tried in order; the first match wins. A provider's
 * chain is: its inline rules from the providers file, then its built-in set ("netease",
 * "qq", "gmail", "outlook", "yahoo" or "generic"), then "generic", so every reply has an
 * answer. Built-in sets are the JSON files ratelimit/rules/NAME.json compiled into the
 * binary.
 *
 * Rule JSON (inline rules use the same form):
 *   {"id": "netease-451-dt-spm", "code": "451", "enhanced": "4.7.", "text": "DT:SPM",
 *    "action": "retry", "retry_after": 120, "why": "...", "source": "..."}
 * action is one of retry, reconnect, lower_concurrency, lower_per_connection (with
 * "cap": "messages_per_connection" | "recipients_per_connection" |
 * "recipients_per_message"), pause (with "scope": "sender" | "provider" and "until":
 * "next_day" or a duration "15m", "2h", "90s"), bounce, fail, stop. "retry_after"
 * (seconds) is the least wait the provider asks for; it applies to every class that
 * requeues. id and why are required; code, enhanced and text are each optional but a rule
 * needs at least one of them.
 */
#ifndef RL_RULES_H
#define RL_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ratelimit/quota.h"

/* One SMTP reply as the engine hands it over; all strings borrowed. enhanced is "" or
 * NULL when the server sent none. */
typedef struct rl_reply {
    int code;
    const char *enhanced;
    const char *text;
} rl_reply_t;

/* The action classes (DESIGN.md "Replies drive the schedule"). */
typedef enum rl_class {
    RL_RETRY,                /* requeue that recipient at now + backoff */
    RL_RECONNECT,            /* close the connection, reconnect with backoff, requeue */
    RL_LOWER_CONCURRENCY,    /* halve the provider's connection ceiling (AIMD), requeue */
    RL_LOWER_PER_CONNECTION, /* learn a smaller per-connection cap, reconnect, requeue */
    RL_PAUSE,                /* suspend the sender or provider until a time, requeue */
    RL_BOUNCE,               /* final: bounced; the address joins the suppression list */
    RL_FAIL,                 /* final for that recipient; the campaign goes on */
    RL_STOP,                 /* configuration problem: stop the provider, a person acts */
    RL_CLASS_LAST
} rl_class_t;

typedef enum rl_cap {
    RL_CAP_NONE,
    RL_CAP_CONNECTIONS, /* set for RL_LOWER_CONCURRENCY */
    RL_CAP_MESSAGES_PER_CONNECTION,
    RL_CAP_RECIPIENTS_PER_CONNECTION,
    RL_CAP_RECIPIENTS_PER_MESSAGE,
    RL_CAP_LAST
} rl_cap_t;

typedef enum rl_scope { RL_SCOPE_NONE, RL_SCOPE_SENDER, RL_SCOPE_PROVIDER } rl_scope_t;

/* Names used in JSON and reports ("retry", "lower_per_connection", ...). Static strings. */
const char *rl_class_name(rl_class_t c);
const char *rl_cap_name(rl_cap_t c);
const char *rl_scope_name(rl_scope_t s);
/* The class named s, or -1. */
int rl_class_from_name(const char *s);

typedef struct rl_rule rl_rule_t;
typedef struct rl_rules rl_rules_t;

/* A built-in set by name ("netease", "generic", "qq", "gmail", "outlook", "yahoo"), or
 * NULL if there is none. The sets are parsed once, on first use (thread-safe), and live
 * until exit: never free them. */
const rl_rules_t *rl_rules_builtin(const char *name);

/* The names of the built-in sets, NULL-terminated (static). */
const char *const *rl_rules_builtin_names(void);

/* Parse a JSON array of rules (borrowed). source names the origin for messages
 * ("providers.json: provider netease"). Returns 0 and *out (caller frees with
 * rl_rules_free) or VL_ECONFIG with a sentence in err naming the rule and the field. */
int rl_rules_parse(const json_t *arr, const char *source, rl_rules_t **out, char *err,
                   size_t errlen);
void rl_rules_free(rl_rules_t *rules);
size_t rl_rules_count(const rl_rules_t *rules);
const rl_rule_t *rl_rules_at(const rl_rules_t *rules, size_t i);

/* The first rule of chain[0], then chain[1], ... matching r; NULL entries of chain are
 * skipped. NULL when nothing matches. The rule is borrowed from its set. */
const rl_rule_t *rl_rules_match(const rl_rules_t *const chain[], size_t n, const rl_reply_t *r);

/* Accessors (borrowed strings, valid as long as the set). */
const char *rl_rule_id(const rl_rule_t *rule);
const char *rl_rule_why(const rl_rule_t *rule);
const char *rl_rule_source(const rl_rule_t *rule); /* "" when none */
rl_class_t rl_rule_class(const rl_rule_t *rule);

/* What volley does about one reply. */
typedef struct rl_action {
    rl_class_t cls;
    uint64_t delay_ms;      /* requeue/reconnect after this long (backoff >= retry_after) */
    int64_t pause_until_ms; /* RL_PAUSE: suspend scope until this UTC time */
    rl_scope_t scope;       /* RL_PAUSE: sender or provider */
    rl_cap_t cap;           /* RL_LOWER_*: which limit to lower */
    bool final;             /* the recipient is done (bounce, fail) */
    bool suppress;          /* add the address to the suppression list (bounce) */
    bool close_connection;  /* the connection must not be used again */
    const char *rule_id;    /* borrowed from the rule set, or "fallback" */
    const char *why;        /* borrowed from the rule set */
} rl_action_t;

/* The inputs of rl_decide besides the reply. */
typedef struct rl_decide_ctx {
    uint64_t now_ms;             /* injected clock */
    unsigned attempt;            /* 1 for the first failure of this recipient */
    const rl_tz_t *tz;           /* provider's zone for "next_day"; NULL = UTC */
    uint64_t (*rand)(void *arg); /* jitter source; NULL = no jitter */
    void *rand_arg;
    uint64_t backoff_base_ms; /* 0 = 30 s */
    uint64_t backoff_max_ms;  /* 0 = 4 h */
} rl_decide_ctx_t;

/* Match r against chain and turn the rule into an action; *out is filled completely
 * whatever the return value (rule_id and why are never NULL). When nothing matches (a
 * chain without "generic") 4xx retries and 5xx fails, with rule_id "fallback". Returns 0
 * for a 4xx/5xx reply, or VL_EPROTO when r->code is not a failure reply (a 2xx/3xx where
 * the engine expected a failure, or a code outside 200-599): the server broke the
 * protocol, and *out is a retry with rule_id "protocol" that closes the connection. */
int rl_decide(const rl_rules_t *const chain[], size_t n, const rl_reply_t *r,
              const rl_decide_ctx_t *ctx, rl_action_t *out);

/* Exponential backoff with "equal jitter": d = min(max, base * 2^(attempt-1)), the result
 * is d/2 + (rnd mod (d/2 + 1)). rnd is one draw of a random source; 0 gives exactly d/2.
 * attempt 0 counts as 1. */
uint64_t rl_backoff(unsigned attempt, uint64_t base_ms, uint64_t max_ms, uint64_t rnd);

#endif
