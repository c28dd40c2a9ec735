/* dns.h: MX lookups for direct delivery (RFC 5321 §5.1), with c-ares on a
 * libuv loop.
 *
 * One lookup turns a recipient domain into the ordered list of addresses to
 * try: the MX hosts by preference (hosts of equal preference in random order,
 * as §5.1 asks), each host's IPv6 and IPv4 addresses as the resolver returns
 * them, at most ENG_DNS_MAX_TARGETS in all. A domain without MX records is
 * its own mail host (the "implicit MX"); an MX record of "." (RFC 7505 null
 * MX) says the domain accepts no mail.
 *
 *     eng_dns_t *d;  eng_dns_new(&d, loop, "127.0.0.1:5353", 0, err, sizeof err);
 *     eng_dns_mx(d, "example.com", 25, on_mx, ud);   // on_mx(ud, st, t, n, why)
 *     eng_dns_close(d, on_closed, ud);
 *
 * Everything runs on the loop's thread; nothing blocks.
 */
#ifndef VL_DNS_H
#define VL_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define ENG_DNS_MAX_TARGETS 10

typedef struct eng_dns eng_dns_t;

/* One address to connect to, and the host name it belongs to. */
typedef struct eng_target {
    char name[256];               /* the MX host, without trailing dot: TLS SNI and
                                   * certificate check, logs */
    struct sockaddr_storage addr; /* IPv4 or IPv6, with the port set */
} eng_target_t;

typedef enum eng_dns_status {
    ENG_DNS_OK,        /* n >= 1 targets */
    ENG_DNS_TEMPFAIL,  /* SERVFAIL, REFUSED, timeout, or no MX host has an
                        * address: try again later */
    ENG_DNS_NOTFOUND,  /* the domain does not exist (NXDOMAIN), or has neither
                        * MX nor address records: permanent */
    ENG_DNS_NULLMX,    /* RFC 7505 null MX: the domain accepts no mail */
    ENG_DNS_CANCELLED, /* eng_dns_close ran before the answer came */
} eng_dns_status_t;

/* The answer to one eng_dns_mx. targets (n of them) and why (a readable
 * account for results and logs, "" when st is OK) are borrowed for the call. */
typedef void (*eng_dns_mx_cb)(void *ud, eng_dns_status_t st, const eng_target_t *targets, size_t n,
                              const char *why);

/* A resolver on loop (borrowed; must outlive it). servers: NULL for the
 * system's (/etc/resolv.conf), or "IP[:PORT][,IP[:PORT]...]" (IPv6 in
 * brackets when a port is given); with servers given, only DNS is asked (no
 * hosts file). timeout_ms: per try, 0 for 2000 (two tries per server). On
 * error returns VL_EINVAL (bad servers string) or VL_ENOMEM / VL_EDNS and
 * writes why into err. */
int eng_dns_new(eng_dns_t **out, uv_loop_t *loop, const char *servers, unsigned timeout_ms,
                char *err, size_t errlen);

/* Look up domain's mail hosts (an A-label domain; copied) and resolve them;
 * every target gets port. cb runs exactly once, never from inside this call
 * (ud is the caller's, handed back untouched); it may itself call eng_dns_mx
 * or eng_dns_close. 0, or VL_EINVAL for an empty or over-long domain,
 * VL_ESTATE after close, VL_ENOMEM (cb is not called then). */
int eng_dns_mx(eng_dns_t *d, const char *domain, uint16_t port, eng_dns_mx_cb cb, void *ud);

/* Lookups under way end ENG_DNS_CANCELLED (their callbacks run before this
 * returns; so do those of lookups that finished but were not yet delivered);
 * on_closed (optional) runs once every handle is closed, from the loop, and
 * the resolver is freed just before. May be called from a lookup's callback;
 * a second call does nothing. */
void eng_dns_close(eng_dns_t *d, void (*on_closed)(void *ud), void *ud);

#endif
