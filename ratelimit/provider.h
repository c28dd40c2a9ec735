/* provider.h: the providers file (DESIGN.md "Files") and matching a domain to a provider.
 *
 * A provider is a set of recipient domains with one route and its limits. The file is a
 * JSON list; every error names file:line:column, the provider and the field. Passwords
 * never live in the file: "auth" names an environment variable or a file, read at run
 * time by rl_provider_password, and no message of this module ever contains a secret.
 *
 * Domains: "163.com" (exact, case-insensitive), "*.example.com" (any subdomain of
 * example.com, not example.com itself), "*" (everything else). A domain goes to the first
 * provider listing it exactly or by suffix; "*" is consulted only when no provider lists
 * it. Without a "*" provider, unknown domains get the built-in conservative default:
 *
 *   name "default", route "mx", max_connections 2, max_messages_per_connection 10,
 *   max_recipients_per_message 1, max_recipients_per_connection 10, rate 1/s (burst 1),
 *   no quotas, timezone UTC, rules "generic".
 *
 * Conservative because nothing is known about such a receiver: a new sender that opens
 * many connections or sends fast to an unknown MX is what spam filters and greylisting
 * punish, and a deferral costs hours while sending slowly costs seconds. Users who know
 * better add a "*" provider.
 */
#ifndef RL_PROVIDER_H
#define RL_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ratelimit/gcra.h"
#include "ratelimit/quota.h"
#include "ratelimit/rules.h"

#define RL_MAX_QUOTAS RL_QUOTA_MAX_WINDOWS

typedef enum rl_route_kind {
    RL_ROUTE_SMTP,  /* smtp://host:port, STARTTLS when offered */
    RL_ROUTE_SMTPS, /* smtps://host:port, implicit TLS */
    RL_ROUTE_MX     /* direct delivery to the domain's MX hosts, port 25 */
} rl_route_kind_t;

/* How TLS is used on smtp:// and mx routes (smtps:// is TLS from the start,
 * always verified unless "insecure"). */
typedef enum rl_tls_policy {
    RL_TLS_VERIFY,  /* STARTTLS when offered; the certificate must match the host
                     * (for mx, the MX host's name). Default */
    RL_TLS_REQUIRE, /* STARTTLS must be offered, and verified as above */
    RL_TLS_MAY      /* STARTTLS when offered, certificate not checked: RFC 7435
                     * opportunistic security, for MX hosts with self-signed
                     * certificates (encrypted against a passive listener only) */
} rl_tls_policy_t;

/* One provider. Read-only for users; owned by its rl_providers_t. Limits of 0 mean "not
 * configured" (no limit). */
typedef struct rl_provider {
    char *name;
    char **domains; /* lower-case, as written: "163.com", "*.example.com", "*" */
    size_t ndomains;
    rl_route_kind_t route;
    char *host;         /* NULL for mx */
    uint16_t port;      /* mx: the MX hosts' port, "mx_port" (25; other ports are
                         * for tests and for receivers behind a port map) */
    char *auth_user;    /* NULL: no AUTH */
    char *password_env; /* at most one of these two is set when auth_user is */
    char *password_file;
    uint32_t max_connections;
    uint32_t max_messages_per_connection;
    uint32_t max_recipients_per_message;
    uint32_t max_recipients_per_connection;
    rl_rate_t rate; /* interval_us 0: unlimited */
    rl_quota_t quotas[RL_MAX_QUOTAS];
    size_t nquotas;
    rl_tz_t *tz;                  /* never NULL (UTC when not given) */
    rl_rules_t *rules;            /* inline rules from the file, or NULL */
    const rl_rules_t *rules_base; /* the built-in set named by "rules"/"rules_base" */
    char *tls_ca_file;            /* NULL: the system store */
    bool tls_insecure;            /* skip certificate verification (tests only) */
    rl_tls_policy_t tls_policy;   /* "tls": {"policy": ...} */
    char *helo;                   /* NULL: the caller picks the host name */
} rl_provider_t;

typedef struct rl_providers rl_providers_t;

/* Parse a providers file. Returns 0 and *out (caller frees with rl_providers_free), or
 * VL_ENOENT / VL_EIO / VL_ECONFIG with "FILE:LINE:COL: provider NAME: field: why" in err. */
int rl_providers_load(const char *path, rl_providers_t **out, char *err, size_t errlen);

/* The same from text in memory; source names it in messages (borrowed). */
int rl_providers_parse(const char *text, size_t len, const char *source, rl_providers_t **out,
                       char *err, size_t errlen);

/* A set holding only the conservative default provider (above), for campaigns without a
 * providers file. Caller frees with rl_providers_free. NULL only when out of memory. */
rl_providers_t *rl_providers_default(void);

void rl_providers_free(rl_providers_t *ps);
size_t rl_providers_count(const rl_providers_t *ps);
const rl_provider_t *rl_providers_at(const rl_providers_t *ps, size_t i);
const rl_provider_t *rl_providers_find(const rl_providers_t *ps, const char *name);

/* The provider for a recipient domain (case-insensitive; a trailing dot is ignored). Never
 * NULL: the "*" provider or the built-in default. Borrowed from ps. */
const rl_provider_t *rl_providers_match(const rl_providers_t *ps, const char *domain);

/* The provider for domains no entry names: the file's "*" provider, or the built-in
 * default (which is not among rl_providers_at()'s entries). Never NULL. */
const rl_provider_t *rl_providers_fallback(const rl_providers_t *ps);

/* The rule chain of p for rl_decide: inline rules, the base set, "generic" (NULL entries
 * skipped by rl_rules_match). Fills chain[0..3) and returns 3. */
size_t rl_provider_rules(const rl_provider_t *p, const rl_rules_t *chain[3]);

/* Whether s may go on the wire as the EHLO/HELO name (RFC 5321 4.1.1.1 and 4.1.3): a
 * Domain (labels of letters, digits and hyphens, 1-63 characters, neither starting nor
 * ending with a hyphen, joined by dots; at most 255 in all) or an address literal
 * "[192.0.2.1]" / "[IPv6:2001:db8::1]". Anything else, CR and LF above all, would let the
 * name inject commands. Returns 0, or VL_EINVAL with a sentence in why (whylen bytes; may
 * be NULL) that does not repeat s. */
int rl_helo_check(const char *s, char *why, size_t whylen);

/* Read p's password from its environment variable or file (trailing newlines stripped)
 * into buf (len bytes, NUL-terminated). Returns 0; VL_EINVAL when p has no auth;
 * VL_ENOENT when the variable is unset or the file missing; VL_EIO when unreadable;
 * VL_ETOOBIG when it does not fit. err names the variable or file, never the value. */
int rl_provider_password(const rl_provider_t *p, char *buf, size_t len, char *err, size_t errlen);

#endif
