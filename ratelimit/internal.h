/* internal.h: names shared between the files of ratelimit/ (rl__ prefix). Not public. */
#ifndef RL_INTERNAL_H
#define RL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* Milliseconds of a unit name ("s", "min", "h", "d", ...): 0 or VL_EINVAL. */
int rl__unit_ms(const char *u, uint64_t *ms);

/* "N/[M]unit" -> count and period. 0 or VL_EINVAL with a sentence in err. */
int rl__parse_per(const char *s, uint64_t *count, uint64_t *per_ms, char *err, size_t errlen);

/* Parse a duration "15m", "90s", "2h", "1d" (a bare number is seconds) into ms. */
int rl__parse_duration(const char *s, uint64_t *ms);

/* snprintf into err when err is not NULL. */
void rl__seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The built-in rule sets' JSON, embedded by scripts/embed.py (rl_embedded.c). */
extern const char rl__rules_json_generic[];
extern const char rl__rules_json_netease[];
extern const char rl__rules_json_qq[];
extern const char rl__rules_json_gmail[];
extern const char rl__rules_json_outlook[];
extern const char rl__rules_json_yahoo[];

#endif
