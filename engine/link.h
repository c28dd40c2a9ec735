/* link.h: one handle for a provider's route, whatever its kind.
 *
 * A provider delivers through one pool (a relay: smtp://, smtps://) or through the MX
 * router (route "mx": a pool per recipient domain). The scheduler wants the same few
 * calls of both; an eng_link_t carries a table of them (as hiredis's redisContextFuncs
 * does for plain and TLS connections), so the code above it never branches on the kind.
 * Ownership and callbacks are those of the pool or router behind it (engine.h, mx.h).
 */
#ifndef VL_ENGINE_LINK_H
#define VL_ENGINE_LINK_H

#include <stddef.h>
#include <uv.h>

#include "engine/engine.h"
#include "engine/mx.h"

typedef struct eng_link eng_link_t;

/* A link over a new pool for route r (copied), or over a new MX router with options o
 * (copied), on loop (borrowed). 0 and *out (closed with eng_link_close), or the VL_E*
 * code of eng_pool_new / eng_mx_new with why in err. */
int eng_link_new_pool(eng_link_t **out, uv_loop_t *loop, const eng_route_t *r, char *err,
                      size_t errlen);
int eng_link_new_mx(eng_link_t **out, uv_loop_t *loop, const eng_mx_opts_t *o, char *err,
                    size_t errlen);

/* Queue m (ownership as eng_pool_submit) for its recipients' domain (borrowed; the MX
 * router routes by it, a pool ignores it). 0 or a VL_E* code, as eng_pool_submit. */
int eng_link_submit(eng_link_t *l, eng_msg_t *m, const char *domain);

/* The connection ceiling (0 = 1) and the per-connection caps (0 = unlimited). */
void eng_link_set_max_connections(eng_link_t *l, unsigned n);
void eng_link_set_caps(eng_link_t *l, unsigned msgs_per_conn, unsigned rcpts_per_conn);

/* Retire connection conn_id, which carried a message for domain (borrowed): see
 * eng_pool_retire. 0, or VL_ENOENT when that connection is gone already. */
int eng_link_retire(eng_link_t *l, const char *domain, unsigned conn_id);

/* Connections open (any state). */
unsigned eng_link_connections(const eng_link_t *l);

/* Close as eng_pool_close / eng_mx_close; l is freed once on_closed (optional) has run. */
void eng_link_close(eng_link_t *l, int now, void (*on_closed)(void *ud), void *ud);

#endif
