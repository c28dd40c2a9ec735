/* suppress.h: the global suppression list every campaign consults before
 * sending (hard bounces join it on their own), for the commands that import,
 * list and check addresses. Synchronous, over a context the caller connected.
 *
 * Addresses are kept ASCII-lowercased: the list is case-insensitive by
 * convention (domains are; local parts are in practice). These functions
 * lowercase what they are given.
 *
 * Errors as in campaign.h: VL_ENETWORK (no reply), VL_EREDIS (an error
 * reply), VL_ENOMEM, with a message in err ("Redis: SADD: why").
 */
#ifndef VL_SCHED_SUPPRESS_H
#define VL_SCHED_SUPPRESS_H

#include <stddef.h>

#include <hiredis/hiredis.h>

/* Add the n addresses addrs (borrowed) to the list in one command: up to a
 * thousand a call is a good size. *added gets how many were new. 0 or VL_E*. */
int sched_suppress_add(redisContext *c, const char *const *addrs, size_t n, long long *added,
                       char *err, size_t errlen);

/* Whether addr (borrowed) is on the list: 1, 0, or VL_E*. */
int sched_suppress_has(redisContext *c, const char *addr, char *err, size_t errlen);

/* Called with each address on the list (borrowed, valid during the call);
 * nonzero stops the listing, and sched_suppress_list returns it. */
typedef int (*sched_suppress_fn)(const char *addr, void *ud);

/* Call fn(addr, ud) for every address on the list, in no particular order,
 * a page at a time (SSCAN: an address added or removed meanwhile may be
 * missed, none is given twice unless the list is rehashed). ud borrowed.
 * 0, fn's nonzero value, or VL_E*. */
int sched_suppress_list(redisContext *c, sched_suppress_fn fn, void *ud, char *err, size_t errlen);

#endif
