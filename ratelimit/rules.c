/* rules.c: reply rules and actions; see rules.h. */
#include "ratelimit/rules.h"

#include <ctype.h>
#include <pthread.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "ratelimit/internal.h"

#define UNTIL_NEXT_DAY UINT64_MAX

struct rl_rule {
    char *id, *why, *source;
    char code[4];   /* "" = any; digits or 'x' */
    char *enhanced; /* NULL = any */
    bool has_re;
    regex_t re;
    rl_class_t cls;
    rl_cap_t cap;
    rl_scope_t scope;
    uint64_t until_ms; /* RL_PAUSE: a duration, or UNTIL_NEXT_DAY */
    uint64_t retry_after_ms;
};

struct rl_rules {
    rl_rule_t *v;
    size_t n;
};

static const char *const class_names[RL_CLASS_LAST] = {
    "retry", "reconnect", "lower_concurrency", "lower_per_connection", "pause", "bounce",
    "fail",  "stop",
};
static const char *const cap_names[RL_CAP_LAST] = {
    "none",
    "connections",
    "messages_per_connection",
    "recipients_per_connection",
    "recipients_per_message",
};
static const char *const scope_names[] = {"none", "sender", "provider"};

const char *rl_class_name(rl_class_t c)
{
    return (unsigned)c < RL_CLASS_LAST ? class_names[c] : "unknown";
}

const char *rl_cap_name(rl_cap_t c)
{
    return (unsigned)c < RL_CAP_LAST ? cap_names[c] : "unknown";
}

const char *rl_scope_name(rl_scope_t s)
{
    return (unsigned)s <= RL_SCOPE_PROVIDER ? scope_names[s] : "unknown";
}

int rl_class_from_name(const char *s)
{
    for (int i = 0; i < RL_CLASS_LAST; i++)
        if (strcmp(s, class_names[i]) == 0) return i;
    return -1;
}

int rl__parse_duration(const char *s, uint64_t *ms)
{
    char *end;
    if (!isdigit((unsigned char)*s)) return VL_EINVAL;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t unit = 1000;
    if (*end && rl__unit_ms(end, &unit) != 0) return VL_EINVAL;
    if (v > 366ULL * 86400) return VL_EINVAL;
    *ms = v * unit;
    return 0;
}

/* --- parsing ---------------------------------------------------------------------------- */

static void rule_free(rl_rule_t *r)
{
    free(r->id);
    free(r->why);
    free(r->source);
    free(r->enhanced);
    if (r->has_re) regfree(&r->re);
}

void rl_rules_free(rl_rules_t *rules)
{
    if (!rules) return;
    for (size_t i = 0; i < rules->n; i++)
        rule_free(&rules->v[i]);
    free(rules->v);
    free(rules);
}

static bool valid_code(const char *s)
{
    if (strlen(s) != 3 || (s[0] != '4' && s[0] != '5')) return false;
    for (int i = 1; i < 3; i++)
        if (!isdigit((unsigned char)s[i]) && s[i] != 'x' && s[i] != 'X') return false;
    return true;
}

static bool valid_enhanced(const char *s)
{
    if (!*s) return false;
    for (const char *p = s; *p; p++)
        if (!isdigit((unsigned char)*p) && *p != '.' && *p != 'x' && *p != 'X') return false;
    return true;
}

/* Parse one rule object; on error, err gets "field: why". */
static int rule_parse(const json_t *o, rl_rule_t *r, char *err, size_t errlen)
{
    static const char *const known[] = {"id",          "code",    "enhanced", "text", "action",
                                        "cap",         "scope",   "until",    "why",  "source",
                                        "retry_after", "comment", NULL};
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)o, key, v)
    {
        bool ok = false;
        for (int i = 0; known[i]; i++)
            ok = ok || strcmp(key, known[i]) == 0;
        if (!ok) {
            rl__seterr(err, errlen, "%s: unknown field", key);
            return VL_ECONFIG;
        }
    }
    const char *id = json_string_value(json_object_get(o, "id"));
    const char *why = json_string_value(json_object_get(o, "why"));
    if (!id || !*id) {
        rl__seterr(err, errlen, "id: required (a short unique name for reports)");
        return VL_ECONFIG;
    }
    r->id = strdup(id);
    if (!why || !*why) {
        rl__seterr(err, errlen, "why: required (say why this action fits the reply)");
        return VL_ECONFIG;
    }
    r->why = strdup(why);
    const char *src = json_string_value(json_object_get(o, "source"));
    r->source = strdup(src ? src : "");
    if (!r->id || !r->why || !r->source) return VL_ENOMEM;

    json_t *code = json_object_get(o, "code");
    if (json_is_integer(code)) {
        json_int_t iv = json_integer_value(code);
        unsigned c = iv >= 100 && iv <= 999 ? (unsigned)iv : 0;
        snprintf(r->code, sizeof r->code, "%u", c % 1000);
    } else if (json_is_string(code)) {
        snprintf(r->code, sizeof r->code, "%s", json_string_value(code));
        if (strlen(json_string_value(code)) > 3) r->code[0] = '?';
    } else if (code) {
        rl__seterr(err, errlen, "code: must be a string like \"421\" or \"4xx\"");
        return VL_ECONFIG;
    }
    if (code && !valid_code(r->code)) {
        rl__seterr(err, errlen, "code: \"%s\" is not a 4xx/5xx code or class like \"45x\"",
                   json_is_string(code) ? json_string_value(code) : r->code);
        return VL_ECONFIG;
    }
    for (char *p = r->code; *p; p++)
        *p = (char)tolower((unsigned char)*p);

    json_t *enh = json_object_get(o, "enhanced");
    if (enh) {
        const char *s = json_string_value(enh);
        if (!s || !valid_enhanced(s)) {
            rl__seterr(err, errlen,
                       "enhanced: must be a string like \"5.1.1\", \"4.7.5xx\" or "
                       "\"5.1.\"");
            return VL_ECONFIG;
        }
        if (!(r->enhanced = strdup(s))) return VL_ENOMEM;
        for (char *p = r->enhanced; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    }
    json_t *text = json_object_get(o, "text");
    if (text) {
        const char *s = json_string_value(text);
        if (!s || !*s) {
            rl__seterr(err, errlen, "text: must be a non-empty regular expression");
            return VL_ECONFIG;
        }
        int rc = regcomp(&r->re, s, REG_EXTENDED | REG_ICASE | REG_NOSUB);
        if (rc) {
            char msg[128];
            regerror(rc, &r->re, msg, sizeof msg);
            rl__seterr(err, errlen, "text: bad regular expression \"%s\": %s", s, msg);
            return VL_ECONFIG;
        }
        r->has_re = true;
    }
    if (!code && !enh && !text) {
        rl__seterr(err, errlen, "a rule needs at least one of code, enhanced, text");
        return VL_ECONFIG;
    }

    const char *action = json_string_value(json_object_get(o, "action"));
    int cls = action ? rl_class_from_name(action) : -1;
    if (cls < 0) {
        rl__seterr(err, errlen,
                   "action: must be one of retry, reconnect, lower_concurrency, "
                   "lower_per_connection, pause, bounce, fail, stop");
        return VL_ECONFIG;
    }
    r->cls = (rl_class_t)cls;

    json_t *ra = json_object_get(o, "retry_after");
    if (ra) {
        if (!json_is_integer(ra) || json_integer_value(ra) < 0 ||
            json_integer_value(ra) > 7 * 86400) {
            rl__seterr(err, errlen, "retry_after: must be seconds from 0 to 604800");
            return VL_ECONFIG;
        }
        r->retry_after_ms = (uint64_t)json_integer_value(ra) * 1000;
    }

    const char *cap = json_string_value(json_object_get(o, "cap"));
    if (r->cls == RL_LOWER_CONCURRENCY) r->cap = RL_CAP_CONNECTIONS;
    if (r->cls == RL_LOWER_PER_CONNECTION) {
        for (int i = RL_CAP_MESSAGES_PER_CONNECTION; cap && i < RL_CAP_LAST; i++)
            if (strcmp(cap, cap_names[i]) == 0) r->cap = (rl_cap_t)i;
        if (r->cap == RL_CAP_NONE) {
            rl__seterr(err, errlen,
                       "cap: lower_per_connection needs messages_per_connection, "
                       "recipients_per_connection or recipients_per_message");
            return VL_ECONFIG;
        }
    } else if (cap && r->cls != RL_LOWER_CONCURRENCY) {
        rl__seterr(err, errlen, "cap: only for lower_per_connection");
        return VL_ECONFIG;
    }

    const char *scope = json_string_value(json_object_get(o, "scope"));
    const char *until = json_string_value(json_object_get(o, "until"));
    if (r->cls == RL_PAUSE) {
        if (!scope || (strcmp(scope, "sender") != 0 && strcmp(scope, "provider") != 0)) {
            rl__seterr(err, errlen, "scope: pause needs \"sender\" or \"provider\"");
            return VL_ECONFIG;
        }
        r->scope = strcmp(scope, "sender") == 0 ? RL_SCOPE_SENDER : RL_SCOPE_PROVIDER;
        if (until && strcmp(until, "next_day") == 0) {
            r->until_ms = UNTIL_NEXT_DAY;
        } else if (!until || rl__parse_duration(until, &r->until_ms) != 0 || r->until_ms == 0) {
            rl__seterr(err, errlen,
                       "until: pause needs \"next_day\" or a duration like \"15m\", \"2h\"");
            return VL_ECONFIG;
        }
    } else if (scope || until) {
        rl__seterr(err, errlen, "%s: only for pause", scope ? "scope" : "until");
        return VL_ECONFIG;
    }
    return 0;
}

int rl_rules_parse(const json_t *arr, const char *source, rl_rules_t **out, char *err,
                   size_t errlen)
{
    *out = NULL;
    if (!json_is_array(arr)) {
        rl__seterr(err, errlen,
                   "%s: rules: must be a list of rule objects or a built-in "
                   "set name",
                   source);
        return VL_ECONFIG;
    }
    rl_rules_t *rs = calloc(1, sizeof *rs);
    size_t n = json_array_size(arr);
    if (!rs || !(rs->v = calloc(n ? n : 1, sizeof *rs->v))) {
        free(rs);
        return VL_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *o = json_array_get(arr, i);
        char why[256] = "";
        int rc;
        if (!json_is_object(o)) {
            snprintf(why, sizeof why, "must be an object");
            rc = VL_ECONFIG;
        } else {
            rc = rule_parse(o, &rs->v[i], why, sizeof why);
        }
        rs->n = i + 1; /* so rl_rules_free releases the partial rule too */
        if (rc) {
            const char *id = rs->v[i].id;
            rl__seterr(err, errlen, "%s: rule %zu%s%s%s: %s", source, i + 1, id ? " (" : "",
                       id ? id : "", id ? ")" : "", rc == VL_ENOMEM ? "out of memory" : why);
            rl_rules_free(rs);
            return rc == VL_ENOMEM ? rc : VL_ECONFIG;
        }
    }
    *out = rs;
    return 0;
}

size_t rl_rules_count(const rl_rules_t *rules)
{
    return rules ? rules->n : 0;
}

const rl_rule_t *rl_rules_at(const rl_rules_t *rules, size_t i)
{
    return rules && i < rules->n ? &rules->v[i] : NULL;
}

const char *rl_rule_id(const rl_rule_t *rule)
{
    return rule->id;
}

const char *rl_rule_why(const rl_rule_t *rule)
{
    return rule->why;
}

const char *rl_rule_source(const rl_rule_t *rule)
{
    return rule->source;
}

rl_class_t rl_rule_class(const rl_rule_t *rule)
{
    return rule->cls;
}

/* --- built-in sets ---------------------------------------------------------------------- */

static const char *const builtin_names[] = {"generic", "netease", "qq", "gmail",
                                            "outlook", "yahoo",   NULL};
static const char *const builtin_json[] = {
    rl__rules_json_generic, rl__rules_json_netease, rl__rules_json_qq,
    rl__rules_json_gmail,   rl__rules_json_outlook, rl__rules_json_yahoo,
};
#define NBUILTIN (sizeof builtin_json / sizeof builtin_json[0])
static rl_rules_t *builtin_sets[NBUILTIN];
static pthread_once_t builtin_once = PTHREAD_ONCE_INIT;

static void builtin_load(void)
{
    for (size_t i = 0; i < NBUILTIN; i++) {
        json_error_t jerr;
        json_t *arr = json_loads(builtin_json[i], 0, &jerr);
        char err[300], src[64];
        snprintf(src, sizeof src, "built-in rules \"%s\"", builtin_names[i]);
        if (!arr) {
            VL_ERROR("%s: line %d: %s", src, jerr.line, jerr.text);
            continue;
        }
        if (rl_rules_parse(arr, src, &builtin_sets[i], err, sizeof err) != 0) VL_ERROR("%s", err);
        json_decref(arr);
    }
}

const rl_rules_t *rl_rules_builtin(const char *name)
{
    pthread_once(&builtin_once, builtin_load);
    for (size_t i = 0; i < NBUILTIN; i++)
        if (strcmp(name, builtin_names[i]) == 0) return builtin_sets[i];
    return NULL;
}

const char *const *rl_rules_builtin_names(void)
{
    return builtin_names;
}

/* --- matching --------------------------------------------------------------------------- */

static bool code_matches(const char *pat, int code)
{
    if (!pat[0]) return true;
    char c[4];
    if (code < 100 || code > 999) return false;
    snprintf(c, sizeof c, "%d", code);
    for (int i = 0; i < 3; i++)
        if (pat[i] != 'x' && pat[i] != c[i]) return false;
    return true;
}

static bool enhanced_matches(const char *pat, const char *e, size_t elen)
{
    size_t plen = strlen(pat);
    bool prefix = pat[plen - 1] == '.';
    if (prefix ? elen < plen : elen != plen) return false;
    for (size_t i = 0; i < plen; i++)
        if (pat[i] != e[i] && !(pat[i] == 'x' && isdigit((unsigned char)e[i]))) return false;
    return true;
}

/* Length of an enhanced status code ("4.4.5") at the start of s, or 0. */
static size_t enhanced_len(const char *s)
{
    const char *p = s;
    for (int part = 0; part < 3; part++) {
        const char *d = p;
        while (isdigit((unsigned char)*p))
            p++;
        if (p == d || p - d > 3) return 0;
        if (part < 2 && *p++ != '.') return 0;
    }
    return *p == '\0' || isspace((unsigned char)*p) ? (size_t)(p - s) : 0;
}

static bool rule_matches(const rl_rule_t *rule, const rl_reply_t *r, const char *enh, size_t elen,
                         const char *text)
{
    if (!code_matches(rule->code, r->code)) return false;
    if (rule->enhanced && (elen == 0 || !enhanced_matches(rule->enhanced, enh, elen))) return false;
    if (rule->has_re && regexec(&rule->re, text, 0, NULL, 0) != 0) return false;
    return true;
}

const rl_rule_t *rl_rules_match(const rl_rules_t *const chain[], size_t n, const rl_reply_t *r)
{
    const char *text = r->text ? r->text : "";
    /* Servers that put the enhanced code in the text ("4.4.5 HL:ICC") and engines that
     * hand the whole text over are both handled: look for the code at the text's start. */
    const char *enh = r->enhanced ? r->enhanced : "";
    size_t elen = strlen(enh);
    if (elen == 0 && (elen = enhanced_len(text)) > 0) enh = text;
    for (size_t c = 0; c < n; c++) {
        if (!chain[c]) continue;
        for (size_t i = 0; i < chain[c]->n; i++)
            if (rule_matches(&chain[c]->v[i], r, enh, elen, text)) return &chain[c]->v[i];
    }
    return NULL;
}

/* --- actions ---------------------------------------------------------------------------- */

uint64_t rl_backoff(unsigned attempt, uint64_t base_ms, uint64_t max_ms, uint64_t rnd)
{
    if (attempt == 0) attempt = 1;
    uint64_t d = base_ms;
    for (unsigned i = 1; i < attempt && d < max_ms; i++)
        d = d > max_ms / 2 ? max_ms : d * 2;
    if (d > max_ms) d = max_ms;
    uint64_t half = d / 2;
    return d - half + rnd % (half + 1);
}

int rl_decide(const rl_rules_t *const chain[], size_t n, const rl_reply_t *r,
              const rl_decide_ctx_t *ctx, rl_action_t *out)
{
    memset(out, 0, sizeof *out);
    uint64_t base = ctx->backoff_base_ms ? ctx->backoff_base_ms : 30000;
    uint64_t max = ctx->backoff_max_ms ? ctx->backoff_max_ms : 4 * 3600 * 1000ULL;
    uint64_t rnd = ctx->rand ? ctx->rand(ctx->rand_arg) : 0;
    if (r->code < 400 || r->code > 599) {
        /* The engine hands over the reply that ended the transaction without delivering;
         * one that is not a failure (250 to DATA, 354 to RCPT) or no reply code at all
         * means the server broke the protocol. The session state is unknown, so the
         * connection goes, and nothing is learned about the recipient: retry it. The
         * action is filled all the same, so a caller that ignores the return value still
         * has a defined one (a hostile server must not crash the worker). */
        out->cls = RL_RETRY;
        out->rule_id = "protocol";
        out->why = r->code >= 200 && r->code < 400
                       ? "protocol error: a success or intermediate reply where a failure "
                         "(4xx/5xx) was expected; retry on a new connection"
                       : "protocol error: a reply code outside 200-599; retry on a new "
                         "connection";
        out->close_connection = true;
        out->delay_ms = rl_backoff(ctx->attempt, base, max, rnd);
        return VL_EPROTO;
    }
    const rl_rule_t *rule = rl_rules_match(chain, n, r);
    uint64_t retry_after = 0;
    if (rule) {
        out->cls = rule->cls;
        out->cap = rule->cap;
        out->scope = rule->scope;
        out->rule_id = rule->id;
        out->why = rule->why;
        retry_after = rule->retry_after_ms;
    } else {
        out->cls = r->code < 500 ? RL_RETRY : RL_FAIL;
        out->rule_id = "fallback";
        out->why = r->code < 500 ? "no rule matched this 4xx reply: retry with backoff"
                                 : "no rule matched this 5xx reply: permanent failure";
    }
    /* 421 closes the connection whatever the class (RFC 5321 3.8). */
    out->close_connection = r->code == 421;
    switch (out->cls) {
    case RL_RETRY:
        out->delay_ms = rl_backoff(ctx->attempt, base, max, rnd);
        if (out->delay_ms < retry_after) out->delay_ms = retry_after;
        break;
    case RL_RECONNECT:
    case RL_LOWER_CONCURRENCY:
    case RL_LOWER_PER_CONNECTION:
        /* The recipient did nothing wrong: requeue at once (or when the provider asks);
         * how soon the route is retried is rl_route's business. */
        out->delay_ms = retry_after;
        out->close_connection = true;
        break;
    case RL_PAUSE:
        if (rule->until_ms == UNTIL_NEXT_DAY)
            rl_tz_day(ctx->tz, (int64_t)ctx->now_ms, NULL, &out->pause_until_ms);
        else
            out->pause_until_ms = (int64_t)(ctx->now_ms + rule->until_ms);
        out->delay_ms = (uint64_t)out->pause_until_ms - ctx->now_ms;
        if (out->delay_ms < retry_after) {
            out->delay_ms = retry_after;
            out->pause_until_ms = (int64_t)(ctx->now_ms + retry_after);
        }
        if (out->scope == RL_SCOPE_PROVIDER) out->close_connection = true;
        break;
    case RL_BOUNCE:
        out->final = true;
        out->suppress = true;
        break;
    case RL_FAIL:
        out->final = true;
        break;
    case RL_STOP:
        out->close_connection = true;
        break;
    case RL_CLASS_LAST:
        break;
    }
    return 0;
}
