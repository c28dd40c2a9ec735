/* provider.c: the providers file; see provider.h. */
#include "ratelimit/provider.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "common/err.h"
#include "ratelimit/internal.h"

#define MAX_LIMIT 1000000

struct rl_providers {
    rl_provider_t *v;
    size_t n;
    const rl_provider_t *star; /* the first provider listing "*", or NULL */
    rl_provider_t dflt;        /* the conservative default for unknown domains */
};

/* --- where in the file: a tiny JSON scanner ------------------------------------------------
 * jansson reports positions only for syntax errors, but "provider netease: rate: ..." is
 * far more useful with a line and column. These functions walk the raw text to the
 * element or key that a message is about. They assume the text already parsed. */

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static const char *skip_string(const char *p, const char *end)
{
    for (p++; p < end && *p != '"'; p++)
        if (*p == '\\') p++;
    return p < end ? p + 1 : end;
}

static const char *skip_value(const char *p, const char *end)
{
    p = skip_ws(p, end);
    if (p >= end) return end;
    if (*p == '"') return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        for (; p < end; p++) {
            if (*p == '"') {
                p = skip_string(p, end) - 1;
            } else if (*p == '{' || *p == '[') {
                depth++;
            } else if (*p == '}' || *p == ']') {
                if (--depth == 0) return p + 1;
            }
        }
        return end;
    }
    while (p < end && *p != ',' && *p != '}' && *p != ']' && !isspace((unsigned char)*p))
        p++;
    return p;
}

/* In the object at p, the position of key (or of the object when not found). *value gets
 * the start of the key's value. */
static const char *find_key(const char *p, const char *end, const char *key, const char **value)
{
    const char *obj = p;
    *value = NULL;
    if (p >= end || *p != '{') return obj;
    p++;
    size_t klen = strlen(key);
    while ((p = skip_ws(p, end)) < end && *p == '"') {
        const char *k = p;
        p = skip_string(p, end);
        bool match = (size_t)(p - k) == klen + 2 && memcmp(k + 1, key, klen) == 0;
        p = skip_ws(p, end);
        if (p < end && *p == ':') p = skip_ws(p + 1, end);
        if (match) {
            *value = p;
            return k;
        }
        p = skip_ws(skip_value(p, end), end);
        if (p < end && *p == ',') p++;
    }
    return obj;
}

/* Offset of element idx of the top-level array, then of key1 and key2 inside it. */
static size_t locate(const char *text, size_t len, size_t idx, const char *key1, const char *key2)
{
    const char *end = text + len, *p = skip_ws(text, end);
    if (p >= end || *p != '[') return (size_t)(p - text);
    p++;
    for (size_t i = 0;; i++) {
        p = skip_ws(p, end);
        if (p >= end || *p == ']') return (size_t)(p - text);
        if (i == idx) break;
        p = skip_ws(skip_value(p, end), end);
        if (p < end && *p == ',') p++;
    }
    const char *value;
    if (key1) {
        const char *k = find_key(p, end, key1, &value);
        p = k;
        if (key2 && value) {
            const char *k2 = find_key(value, end, key2, &value);
            if (k2 != value) p = k2;
        }
    }
    return (size_t)(p - text);
}

static void line_col(const char *text, size_t off, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else if (((unsigned char)text[i] & 0xC0) != 0x80) {
            (*col)++; /* count characters, not UTF-8 continuation bytes */
        }
    }
}

/* The parse context: what to name in a message. */
typedef struct pctx {
    const char *text;
    size_t len;
    const char *source;
    size_t idx;       /* provider index */
    const char *name; /* provider name, or NULL before it is known */
    char *err;
    size_t errlen;
} pctx_t;

/* "SOURCE:LINE:COL: provider NAME: FIELD: message". key2 may be NULL. Returns VL_ECONFIG. */
static int perr(pctx_t *c, const char *key1, const char *key2, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int perr(pctx_t *c, const char *key1, const char *key2, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    line_col(c->text, locate(c->text, c->len, c->idx, key1, key2), &line, &col);
    char who[160];
    if (c->name)
        snprintf(who, sizeof who, "provider %s", c->name);
    else
        snprintf(who, sizeof who, "provider #%zu", c->idx + 1);
    rl__seterr(c->err, c->errlen, "%s:%d:%d: %s: %s%s%s%s%s", c->source, line, col, who,
               key1 ? key1 : "", key2 ? "." : "", key2 ? key2 : "", key1 ? ": " : "", msg);
    return VL_ECONFIG;
}

/* --- fields ----------------------------------------------------------------------------- */

static void provider_free(rl_provider_t *p)
{
    free(p->name);
    for (size_t i = 0; i < p->ndomains; i++)
        free(p->domains[i]);
    free(p->domains);
    free(p->host);
    free(p->auth_user);
    free(p->password_env);
    free(p->password_file);
    rl_tz_free(p->tz);
    rl_rules_free(p->rules);
    free(p->tls_ca_file);
    free(p->helo);
    memset(p, 0, sizeof *p);
}

static int get_limit(pctx_t *c, const json_t *o, const char *key, uint32_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > MAX_LIMIT)
        return perr(c, key, NULL, "must be a whole number from 1 to %d", MAX_LIMIT);
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

static int get_string(pctx_t *c, const json_t *o, const char *key, const char *parent, char **out)
{
    json_t *v = json_object_get(o, key);
    if (!v) return 0;
    if (!json_is_string(v) || json_string_length(v) == 0)
        return perr(c, parent ? parent : key, parent ? key : NULL, "must be a non-empty string");
    if (!(*out = strdup(json_string_value(v)))) return VL_ENOMEM;
    return 0;
}

static bool valid_domain(const char *d)
{
    if (strcmp(d, "*") == 0) return true;
    if (strncmp(d, "*.", 2) == 0) d += 2;
    if (!*d || *d == '.' || *d == '-') return false;
    for (; *d; d++)
        if (!isalnum((unsigned char)*d) && *d != '.' && *d != '-' && *d != '_') return false;
    return true;
}

int rl_helo_check(const char *s, char *why, size_t whylen)
{
    size_t len = strlen(s);
    if (len == 0) {
        rl__seterr(why, whylen, "must not be empty");
        return VL_EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x21 || ch > 0x7e) {
            rl__seterr(why, whylen,
                       "contains %s at character %zu: the name must be a domain or an "
                       "address literal",
                       ch == '\r'   ? "a carriage return"
                       : ch == '\n' ? "a line feed"
                       : ch == ' '  ? "a space"
                                    : "a control or non-ASCII byte",
                       i + 1);
            return VL_EINVAL;
        }
    }
    if (s[0] == '[') {
        /* RFC 5321 4.1.3: IPv4-address-literal or "IPv6:" IPv6-addr, in brackets. */
        char addr[INET6_ADDRSTRLEN + 8];
        unsigned char bin[sizeof(struct in6_addr)];
        if (s[len - 1] != ']' || len - 2 >= sizeof addr) goto bad_literal;
        memcpy(addr, s + 1, len - 2);
        addr[len - 2] = '\0';
        if (strncasecmp(addr, "IPv6:", 5) == 0) {
            if (inet_pton(AF_INET6, addr + 5, bin) == 1) return 0;
        } else if (inet_pton(AF_INET, addr, bin) == 1) {
            return 0;
        }
    bad_literal:
        rl__seterr(why, whylen,
                   "not an address literal: use \"[192.0.2.1]\" or \"[IPv6:2001:db8::1]\"");
        return VL_EINVAL;
    }
    if (len > 255) {
        rl__seterr(why, whylen, "longer than 255 characters");
        return VL_EINVAL;
    }
    const char *label = s;
    for (const char *p = s;; p++) {
        if (*p == '.' || *p == '\0') {
            size_t n = (size_t)(p - label);
            if (n == 0 || n > 63 || label[0] == '-' || p[-1] == '-') {
                rl__seterr(why, whylen,
                           "not a domain: each dot-separated label must be 1 to 63 letters, "
                           "digits or hyphens, neither starting nor ending with a hyphen");
                return VL_EINVAL;
            }
            if (*p == '\0') return 0;
            label = p + 1;
        } else if (!isalnum((unsigned char)*p) && *p != '-') {
            rl__seterr(why, whylen,
                       "not a domain: '%c' at character %zu (only letters, digits, hyphens "
                       "and dots, or an address literal in brackets)",
                       *p, (size_t)(p - s) + 1);
            return VL_EINVAL;
        }
    }
}

static int parse_helo(pctx_t *c, const json_t *o, rl_provider_t *p)
{
    json_t *v = json_object_get(o, "helo");
    if (!v) return 0;
    char why[200];
    if (!json_is_string(v)) return perr(c, "helo", NULL, "must be a string");
    /* A "\u0000" inside would hide the rest of the string from the check below. */
    if (strlen(json_string_value(v)) != json_string_length(v))
        return perr(c, "helo", NULL, "contains a NUL character");
    if (rl_helo_check(json_string_value(v), why, sizeof why))
        return perr(c, "helo", NULL, "%s", why);
    if (!(p->helo = strdup(json_string_value(v)))) return VL_ENOMEM;
    return 0;
}

static int parse_domains(pctx_t *c, const json_t *o, rl_provider_t *p)
{
    json_t *a = json_object_get(o, "domains");
    if (!a) return perr(c, NULL, NULL, "domains: required (a list like [\"163.com\"] or [\"*\"])");
    if (!json_is_array(a) || json_array_size(a) == 0)
        return perr(c, "domains", NULL, "must be a non-empty list of domains");
    p->domains = calloc(json_array_size(a), sizeof *p->domains);
    if (!p->domains) return VL_ENOMEM;
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v)
    {
        const char *s = json_string_value(v);
        if (!s || !valid_domain(s))
            return perr(c, "domains", NULL, "entry %zu is not a domain, \"*.domain\" or \"*\"",
                        i + 1);
        char *d = strdup(s);
        if (!d) return VL_ENOMEM;
        for (char *q = d; *q; q++)
            *q = (char)tolower((unsigned char)*q);
        size_t n = strlen(d);
        if (n > 1 && d[n - 1] == '.') d[n - 1] = '\0';
        p->domains[p->ndomains++] = d;
    }
    return 0;
}

static int parse_route(pctx_t *c, const json_t *o, rl_provider_t *p)
{
    json_t *v = json_object_get(o, "route");
    const char *s = v ? json_string_value(v) : "mx";
    if (!s)
        return perr(c, "route", NULL,
                    "must be a string: smtp://HOST:PORT, smtps://HOST:PORT or mx");
    if (strcmp(s, "mx") == 0) {
        p->route = RL_ROUTE_MX;
        return 0;
    }
    const char *rest;
    if (strncmp(s, "smtp://", 7) == 0) {
        p->route = RL_ROUTE_SMTP;
        p->port = 25;
        rest = s + 7;
    } else if (strncmp(s, "smtps://", 8) == 0) {
        p->route = RL_ROUTE_SMTPS;
        p->port = 465;
        rest = s + 8;
    } else {
        return perr(c, "route", NULL, "\"%s\" is not smtp://HOST:PORT, smtps://HOST:PORT or mx", s);
    }
    const char *hend, *colon;
    if (*rest == '[') { /* [IPv6]:port */
        hend = strchr(rest, ']');
        if (!hend) return perr(c, "route", NULL, "\"%s\": unclosed [ in the host", s);
        colon = hend[1] == ':' ? hend + 1 : NULL;
        if (hend[1] && !colon) return perr(c, "route", NULL, "\"%s\": expected :PORT after ]", s);
        rest++;
    } else {
        colon = strchr(rest, ':');
        hend = colon ? colon : rest + strlen(rest);
    }
    if (hend == rest || strchr(rest, '/') || strchr(rest, '@'))
        return perr(c, "route", NULL, "\"%s\": expected HOST:PORT (no user, no path)", s);
    if (colon) {
        char *end;
        errno = 0;
        long port = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end || errno || port < 1 || port > 65535)
            return perr(c, "route", NULL, "\"%s\": the port must be 1 to 65535", s);
        p->port = (uint16_t)port;
    }
    if (!(p->host = strndup(rest, (size_t)(hend - rest)))) return VL_ENOMEM;
    return 0;
}

static int parse_auth(pctx_t *c, const json_t *o, rl_provider_t *p)
{
    json_t *a = json_object_get(o, "auth");
    if (!a) return 0;
    if (!json_is_object(a))
        return perr(c, "auth", NULL, "must be an object {user, password_env | password_file}");
    /* Never echo the value of "password": only say where the secret must live. */
    if (json_object_get(a, "password"))
        return perr(c, "auth", "password",
                    "passwords are not allowed in the providers file, which gets copied, "
                    "committed and shared; put the password in an environment variable and "
                    "name it with \"password_env\", or in a file only you can read and name it "
                    "with \"password_file\"");
    const char *key;
    json_t *v;
    json_object_foreach(a, key, v)
    {
        if (strcmp(key, "user") && strcmp(key, "password_env") && strcmp(key, "password_file"))
            return perr(c, "auth", key, "unknown field (use user, password_env, password_file)");
    }
    int rc;
    if ((rc = get_string(c, a, "user", "auth", &p->auth_user)) ||
        (rc = get_string(c, a, "password_env", "auth", &p->password_env)) ||
        (rc = get_string(c, a, "password_file", "auth", &p->password_file)))
        return rc;
    if (!p->auth_user) return perr(c, "auth", NULL, "user: required");
    if (!p->password_env == !p->password_file)
        return perr(c, "auth", NULL, "give exactly one of password_env and password_file");
    return 0;
}

static int parse_rules(pctx_t *c, const json_t *o, rl_provider_t *p)
{
    json_t *r = json_object_get(o, "rules");
    const char *base = "generic";
    json_t *b = json_object_get(o, "rules_base");
    if (b) {
        if (!json_is_string(b))
            return perr(c, "rules_base", NULL, "must be the name of a built-in rule set");
        base = json_string_value(b);
    }
    if (json_is_string(r)) {
        if (b) return perr(c, "rules_base", NULL, "only with a list of inline rules");
        base = json_string_value(r);
    } else if (json_is_array(r)) {
        char src[200], err[400];
        snprintf(src, sizeof src, "provider %s: rules", p->name);
        int rc = rl_rules_parse(r, src, &p->rules, err, sizeof err);
        if (rc == VL_ENOMEM) return rc;
        if (rc) {
            int line, col;
            line_col(c->text, locate(c->text, c->len, c->idx, "rules", NULL), &line, &col);
            rl__seterr(c->err, c->errlen, "%s:%d:%d: %s", c->source, line, col, err);
            return VL_ECONFIG;
        }
    } else if (r) {
        return perr(c, "rules", NULL, "must be a built-in set name or a list of rules");
    }
    if (!(p->rules_base = rl_rules_builtin(base))) {
        const char *const *names = rl_rules_builtin_names();
        char list[128] = "";
        for (size_t i = 0; names[i]; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "",
                     names[i]);
        return perr(c, b ? "rules_base" : "rules", NULL,
                    "no built-in rule set \"%s\" (there are: %s)", base, list);
    }
    return 0;
}

static int parse_provider(pctx_t *c, const json_t *o, rl_provider_t *p)
{
    static const char *const known[] = {"name",
                                        "domains",
                                        "route",
                                        "auth",
                                        "max_connections",
                                        "max_messages_per_connection",
                                        "max_recipients_per_message",
                                        "max_recipients_per_connection",
                                        "rate",
                                        "burst",
                                        "quotas",
                                        "timezone",
                                        "rules",
                                        "rules_base",
                                        "tls",
                                        "helo",
                                        "mx_port",
                                        "comment",
                                        NULL};
    if (!json_is_object(o)) return perr(c, NULL, NULL, "must be an object");
    const char *name = json_string_value(json_object_get(o, "name"));
    if (!name || !*name) return perr(c, "name", NULL, "required: a non-empty string");
    /* Names are parts of Redis keys ({p:NAME}) and of the scheduler's lease
     * and batch records, which use these characters as separators. */
    if (strpbrk(name, "{}|\t\r\n"))
        return perr(c, "name", NULL, "must not contain '{', '}', '|', a tab or a line break");
    if (!(p->name = strdup(name))) return VL_ENOMEM;
    c->name = p->name;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)o, key, v)
    {
        bool ok = false;
        for (size_t i = 0; known[i]; i++)
            ok = ok || strcmp(key, known[i]) == 0;
        if (!ok) return perr(c, key, NULL, "unknown field");
    }
    int rc;
    if ((rc = parse_domains(c, o, p)) || (rc = parse_route(c, o, p)) ||
        (rc = parse_auth(c, o, p)) ||
        (rc = get_limit(c, o, "max_connections", &p->max_connections)) ||
        (rc = get_limit(c, o, "max_messages_per_connection", &p->max_messages_per_connection)) ||
        (rc = get_limit(c, o, "max_recipients_per_message", &p->max_recipients_per_message)) ||
        (rc =
             get_limit(c, o, "max_recipients_per_connection", &p->max_recipients_per_connection)) ||
        (rc = parse_helo(c, o, p)))
        return rc;

    if (p->route == RL_ROUTE_MX && p->auth_user)
        return perr(c, "auth", NULL,
                    "not with route \"mx\": MX hosts take mail for their own domains "
                    "without AUTH");
    uint32_t mx_port = 0;
    if ((rc = get_limit(c, o, "mx_port", &mx_port))) return rc;
    if (json_object_get(o, "mx_port")) {
        if (p->route != RL_ROUTE_MX)
            return perr(c, "mx_port", NULL, "only with route \"mx\" (give the port in the URL)");
        if (mx_port < 1 || mx_port > 65535) return perr(c, "mx_port", NULL, "must be 1 to 65535");
        p->port = (uint16_t)mx_port;
    } else if (p->route == RL_ROUTE_MX) {
        p->port = 25;
    }

    uint32_t burst = 0;
    if ((rc = get_limit(c, o, "burst", &burst))) return rc;
    json_t *rate = json_object_get(o, "rate");
    if (rate) {
        char why[200];
        if (!json_is_string(rate)) return perr(c, "rate", NULL, "must be a string like \"100/s\"");
        if (rl_rate_parse(json_string_value(rate), burst, &p->rate, why, sizeof why))
            return perr(c, "rate", NULL, "%s", why);
    } else if (burst) {
        return perr(c, "burst", NULL, "only with a rate");
    }

    json_t *q = json_object_get(o, "quotas");
    if (q) {
        if (!json_is_array(q) || json_array_size(q) > RL_MAX_QUOTAS)
            return perr(c, "quotas", NULL, "must be a list of at most %d quotas like \"500/15m\"",
                        RL_MAX_QUOTAS);
        size_t i;
        json_array_foreach(q, i, v)
        {
            char why[200];
            if (!json_is_string(v))
                return perr(c, "quotas", NULL, "entry %zu must be a string like \"10000/d\"",
                            i + 1);
            if (rl_quota_parse(json_string_value(v), &p->quotas[i], why, sizeof why))
                return perr(c, "quotas", NULL, "entry %zu: %s", i + 1, why);
            p->nquotas++;
        }
    }

    json_t *tz = json_object_get(o, "timezone");
    const char *tzname = tz ? json_string_value(tz) : "UTC";
    if (!tzname)
        return perr(c, "timezone", NULL, "must be an IANA zone name like \"Asia/Shanghai\"");
    char why[300];
    if (!(p->tz = rl_tz_load(tzname, why, sizeof why))) return perr(c, "timezone", NULL, "%s", why);

    if ((rc = parse_rules(c, o, p))) return rc;

    json_t *tls = json_object_get(o, "tls");
    if (tls) {
        if (!json_is_object(tls))
            return perr(c, "tls", NULL, "must be an object {policy, ca_file, insecure}");
        json_object_foreach(tls, key, v)
        {
            if (strcmp(key, "ca_file") && strcmp(key, "insecure") && strcmp(key, "policy"))
                return perr(c, "tls", key, "unknown field (use policy, ca_file, insecure)");
        }
        json_t *pol = json_object_get(tls, "policy");
        if (pol) {
            const char *ps = json_string_value(pol);
            if (ps && !strcmp(ps, "verify"))
                p->tls_policy = RL_TLS_VERIFY;
            else if (ps && !strcmp(ps, "require"))
                p->tls_policy = RL_TLS_REQUIRE;
            else if (ps && !strcmp(ps, "may"))
                p->tls_policy = RL_TLS_MAY;
            else
                return perr(c, "tls", "policy", "must be \"verify\", \"require\" or \"may\"");
            if (p->route == RL_ROUTE_SMTPS && p->tls_policy != RL_TLS_VERIFY)
                return perr(c, "tls", "policy",
                            "an smtps:// route is TLS from the first byte: only \"verify\"");
        }
        if ((rc = get_string(c, tls, "ca_file", "tls", &p->tls_ca_file))) return rc;
        json_t *ins = json_object_get(tls, "insecure");
        if (ins && !json_is_boolean(ins))
            return perr(c, "tls", "insecure", "must be true or false");
        p->tls_insecure = json_is_true(ins);
    }
    return 0;
}

static int make_default(rl_provider_t *p)
{
    memset(p, 0, sizeof *p);
    p->name = strdup("default");
    p->domains = calloc(1, sizeof *p->domains);
    if (!p->name || !p->domains || !(p->domains[0] = strdup("*"))) return VL_ENOMEM;
    p->ndomains = 1;
    p->route = RL_ROUTE_MX;
    p->port = 25;
    p->max_connections = 2;
    p->max_messages_per_connection = 10;
    p->max_recipients_per_message = 1;
    p->max_recipients_per_connection = 10;
    if (rl_rate_parse("1/s", 1, &p->rate, NULL, 0) != 0) return VL_EINVAL;
    if (!(p->tz = rl_tz_load("UTC", NULL, 0))) return VL_ENOMEM;
    p->rules_base = rl_rules_builtin("generic");
    return 0;
}

void rl_providers_free(rl_providers_t *ps)
{
    if (!ps) return;
    for (size_t i = 0; i < ps->n; i++)
        provider_free(&ps->v[i]);
    free(ps->v);
    provider_free(&ps->dflt);
    free(ps);
}

const rl_provider_t *rl_providers_fallback(const rl_providers_t *ps)
{
    return ps->star;
}

rl_providers_t *rl_providers_default(void)
{
    rl_providers_t *ps = calloc(1, sizeof *ps);
    if (!ps) return NULL;
    if (make_default(&ps->dflt) != 0) {
        rl_providers_free(ps);
        return NULL;
    }
    ps->star = &ps->dflt;
    return ps;
}

int rl_providers_parse(const char *text, size_t len, const char *source, rl_providers_t **out,
                       char *err, size_t errlen)
{
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        rl__seterr(err, errlen, "%s:%d:%d: %s", source, jerr.line, jerr.column, jerr.text);
        return VL_ECONFIG;
    }
    pctx_t c = {text, len, source, 0, NULL, err, errlen};
    int rc = 0;
    rl_providers_t *ps = calloc(1, sizeof *ps);
    if (!ps || (rc = make_default(&ps->dflt)) != 0) {
        rc = VL_ENOMEM;
        goto out;
    }
    if (!json_is_array(root)) {
        rl__seterr(err, errlen, "%s:1:1: the providers file must be a JSON list of providers",
                   source);
        rc = VL_ECONFIG;
        goto out;
    }
    size_t n = json_array_size(root);
    if (!(ps->v = calloc(n ? n : 1, sizeof *ps->v))) {
        rc = VL_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        c.idx = i;
        c.name = NULL;
        ps->n = i + 1;
        if ((rc = parse_provider(&c, json_array_get(root, i), &ps->v[i])) != 0) goto out;
        for (size_t j = 0; j < i; j++)
            if (strcmp(ps->v[j].name, ps->v[i].name) == 0) {
                rc = perr(&c, "name", NULL, "another provider is already called \"%s\"",
                          ps->v[i].name);
                goto out;
            }
        for (size_t d = 0; d < ps->v[i].ndomains && !ps->star; d++)
            if (strcmp(ps->v[i].domains[d], "*") == 0) ps->star = &ps->v[i];
    }
out:
    json_decref(root);
    if (rc) {
        if (rc == VL_ENOMEM) rl__seterr(err, errlen, "%s: out of memory", source);
        rl_providers_free(ps);
        return rc;
    }
    if (!ps->star) ps->star = &ps->dflt;
    *out = ps;
    return 0;
}

int rl_providers_load(const char *path, rl_providers_t **out, char *err, size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        rl__seterr(err, errlen, "%s: %s", path, strerror(e));
        return e == ENOENT ? VL_ENOENT : VL_EIO;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 8192;
            char *t = cap > (16u << 20) ? NULL : realloc(text, cap);
            if (!t) {
                fclose(f);
                free(text);
                rl__seterr(err, errlen, "%s: too large (the limit is 16 MB)", path);
                return VL_ETOOBIG;
            }
            text = t;
        }
        size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    int rerr = ferror(f);
    fclose(f);
    if (rerr) {
        free(text);
        rl__seterr(err, errlen, "%s: read error", path);
        return VL_EIO;
    }
    int rc = rl_providers_parse(text, len, path, out, err, errlen);
    free(text);
    return rc;
}

size_t rl_providers_count(const rl_providers_t *ps)
{
    return ps->n;
}

const rl_provider_t *rl_providers_at(const rl_providers_t *ps, size_t i)
{
    return i < ps->n ? &ps->v[i] : NULL;
}

const rl_provider_t *rl_providers_find(const rl_providers_t *ps, const char *name)
{
    for (size_t i = 0; i < ps->n; i++)
        if (strcmp(ps->v[i].name, name) == 0) return &ps->v[i];
    return strcmp(name, ps->dflt.name) == 0 && ps->star == &ps->dflt ? &ps->dflt : NULL;
}

const rl_provider_t *rl_providers_match(const rl_providers_t *ps, const char *domain)
{
    size_t n = strlen(domain);
    if (n && domain[n - 1] == '.') n--;
    for (size_t i = 0; i < ps->n; i++) {
        const rl_provider_t *p = &ps->v[i];
        for (size_t d = 0; d < p->ndomains; d++) {
            const char *pat = p->domains[d];
            if (pat[0] == '*' && pat[1] == '.') {
                /* "*.example.com": a proper subdomain, ending in ".example.com". */
                size_t sl = strlen(pat + 1);
                if (n > sl && strncasecmp(domain + n - sl, pat + 1, sl) == 0) return p;
            } else if (strlen(pat) == n && strncasecmp(domain, pat, n) == 0) {
                return p;
            }
        }
    }
    return ps->star;
}

size_t rl_provider_rules(const rl_provider_t *p, const rl_rules_t *chain[3])
{
    chain[0] = p->rules;
    chain[1] = p->rules_base;
    const rl_rules_t *g = rl_rules_builtin("generic");
    chain[2] = p->rules_base == g ? NULL : g;
    return 3;
}

int rl_provider_password(const rl_provider_t *p, char *buf, size_t len, char *err, size_t errlen)
{
    if (!p->auth_user || len == 0) {
        rl__seterr(err, errlen, "provider %s has no auth configured", p->name);
        return VL_EINVAL;
    }
    size_t n;
    if (p->password_env) {
        const char *v = getenv(p->password_env);
        if (!v || !*v) {
            rl__seterr(err, errlen,
                       "provider %s: environment variable %s (auth.password_env) is %s", p->name,
                       p->password_env, v ? "empty" : "not set");
            return VL_ENOENT;
        }
        n = strlen(v);
        if (n >= len) {
            rl__seterr(err, errlen, "provider %s: the password in %s is too long", p->name,
                       p->password_env);
            return VL_ETOOBIG;
        }
        memcpy(buf, v, n + 1);
    } else {
        FILE *f = fopen(p->password_file, "rb");
        if (!f) {
            int e = errno;
            rl__seterr(err, errlen, "provider %s: password file %s (auth.password_file): %s",
                       p->name, p->password_file, strerror(e));
            return e == ENOENT ? VL_ENOENT : VL_EIO;
        }
        n = fread(buf, 1, len, f);
        int rerr = ferror(f);
        fclose(f);
        if (rerr) {
            rl__seterr(err, errlen, "provider %s: password file %s: read error", p->name,
                       p->password_file);
            return VL_EIO;
        }
        if (n == len) {
            memset(buf, 0, len);
            rl__seterr(err, errlen, "provider %s: password file %s is too long", p->name,
                       p->password_file);
            return VL_ETOOBIG;
        }
        buf[n] = '\0';
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
            buf[--n] = '\0';
        if (n == 0) {
            rl__seterr(err, errlen, "provider %s: password file %s is empty", p->name,
                       p->password_file);
            return VL_ENOENT;
        }
    }
    return 0;
}
