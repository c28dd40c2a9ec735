/* mx.h: direct delivery. Messages go to their recipient domain's MX hosts,
 * one pool per domain, all of a provider's domains under one connection
 * ceiling.
 *
 * It looks to its owner like one eng_pool: submit, change the ceiling and the
 * caps, close. Behind it, the first message for a domain starts an MX lookup
 * (engine/dns.h); messages wait for the answer, then go to a pool made for
 * that domain's addresses (tried in MX order, the first that answers; TLS
 * checked against the MX host's name). Pools share an eng_budget_t, and a
 * domain that waits for room asks other domains' idle connections to QUIT.
 *
 * What DNS says is a result like any reply:
 *   - temporary failure (SERVFAIL, timeout): the messages end ENG_FAILED at
 *     stage "resolve" (VL_EDNS), retried by the owner; the answer is kept for
 *     30 s so a burst of messages does not become a burst of lookups;
 *   - no such domain: ENG_REJECTED with "550 5.1.2 ..." (RFC 3463: bad
 *     destination system address);
 *   - null MX (RFC 7505): ENG_REJECTED with "556 5.1.10 ...", the reply RFC
 *     7505 §4.2 names; both are kept for 10 minutes.
 * A domain whose pool has been idle and empty for 5 minutes is forgotten (and
 * looked up again when mail for it comes), so memory follows the domains in
 * use and MX changes are seen on long runs.
 */
#ifndef VL_MX_H
#define VL_MX_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "engine/engine.h"

typedef struct eng_mx eng_mx_t;

typedef struct eng_mx_opts {
    /* What every domain's pool is made with: TLS mode and CA file, HELO name,
     * caps, timeouts, on_event (called with the domain's pool), trace, ud.
     * host, port, targets and budget are set per domain. Strings are copied. */
    eng_route_t route;
    uint16_t port;            /* 0: 25 */
    const char *dns_servers;  /* NULL: the system's; see eng_dns_new */
    unsigned dns_timeout_ms;  /* 0: eng_dns_new's default */
    unsigned max_connections; /* over every domain; 0 = 1 */
} eng_mx_opts_t;

/* A router on loop (borrowed). 0, or a VL_E* code with why in err (a bad DNS
 * server string, an unreadable CA file). */
int eng_mx_new(eng_mx_t **out, uv_loop_t *loop, const eng_mx_opts_t *o, char *err, size_t errlen);

/* Queue m for domain (the recipients' domain as an A-label, copied): as
 * eng_pool_submit, including ownership of m; on_done never runs inside this
 * call. 0, VL_EINVAL, VL_ESTATE after close, VL_ENOMEM. */
int eng_mx_submit(eng_mx_t *mx, eng_msg_t *m, const char *domain);

/* The ceiling over all domains; connections above it finish and QUIT. */
void eng_mx_set_max_connections(eng_mx_t *mx, unsigned n);

/* Per-connection caps for every domain's pool (0 = unlimited). */
void eng_mx_set_caps(eng_mx_t *mx, unsigned msgs_per_conn, unsigned rcpts_per_conn);

/* Retire connection conn_id of domain's pool, as eng_pool_retire does. 0, or VL_ENOENT
 * (no such connection, or the domain has no pool now). */
int eng_mx_retire(eng_mx_t *mx, const char *domain, unsigned conn_id);

/* Connections open over all domains; domains known (looked up or waiting). */
unsigned eng_mx_connections(const eng_mx_t *mx);
size_t eng_mx_domains(const eng_mx_t *mx);

/* As eng_pool_close, for every domain: messages waiting for a lookup or a
 * connection end CANCELLED. on_closed (optional) runs once all is closed,
 * and the router is freed then. */
void eng_mx_close(eng_mx_t *mx, int now, void (*on_closed)(void *ud), void *ud);

#endif
