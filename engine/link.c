/* link.c: the pool and the MX router behind one table of functions. */
#include "engine/link.h"

#include <stdlib.h>

#include "common/err.h"

typedef struct link_funcs {
    int (*submit)(void *impl, eng_msg_t *m, const char *domain);
    void (*set_max_connections)(void *impl, unsigned n);
    void (*set_caps)(void *impl, unsigned msgs, unsigned rcpts);
    int (*retire)(void *impl, const char *domain, unsigned conn_id);
    unsigned (*connections)(const void *impl);
    void (*close)(void *impl, int now, void (*on_closed)(void *ud), void *ud);
} link_funcs_t;

struct eng_link {
    const link_funcs_t *f;
    void *impl; /* the eng_pool_t or eng_mx_t, owned */
    void (*on_closed)(void *ud);
    void *closed_ud;
};

/* ---- a pool ---------------------------------------------------------------------- */

static int pool_submit(void *impl, eng_msg_t *m, const char *domain)
{
    (void)domain;
    return eng_pool_submit(impl, m);
}

static void pool_set_max(void *impl, unsigned n)
{
    eng_pool_set_max_connections(impl, n);
}

static void pool_set_caps(void *impl, unsigned msgs, unsigned rcpts)
{
    eng_pool_set_caps(impl, msgs, rcpts);
}

static int pool_retire(void *impl, const char *domain, unsigned conn_id)
{
    (void)domain;
    return eng_pool_retire(impl, conn_id);
}

static unsigned pool_connections(const void *impl)
{
    return eng_pool_connections(impl);
}

static void pool_close(void *impl, int now, void (*on_closed)(void *ud), void *ud)
{
    eng_pool_close(impl, now, on_closed, ud);
}

static const link_funcs_t pool_funcs = {pool_submit, pool_set_max,     pool_set_caps,
                                        pool_retire, pool_connections, pool_close};

/* ---- the MX router ------------------------------------------------------------------ */

static int mx_submit(void *impl, eng_msg_t *m, const char *domain)
{
    return eng_mx_submit(impl, m, domain);
}

static void mx_set_max(void *impl, unsigned n)
{
    eng_mx_set_max_connections(impl, n);
}

static void mx_set_caps(void *impl, unsigned msgs, unsigned rcpts)
{
    eng_mx_set_caps(impl, msgs, rcpts);
}

static int mx_retire(void *impl, const char *domain, unsigned conn_id)
{
    return eng_mx_retire(impl, domain, conn_id);
}

static unsigned mx_connections(const void *impl)
{
    return eng_mx_connections(impl);
}

static void mx_close(void *impl, int now, void (*on_closed)(void *ud), void *ud)
{
    eng_mx_close(impl, now, on_closed, ud);
}

static const link_funcs_t mx_funcs = {mx_submit, mx_set_max,     mx_set_caps,
                                      mx_retire, mx_connections, mx_close};

/* ---- the link ---------------------------------------------------------------------- */

static int link_wrap(eng_link_t **out, const link_funcs_t *f, void *impl)
{
    eng_link_t *l = calloc(1, sizeof *l);
    if (!l) {
        f->close(impl, 1, NULL, NULL);
        return VL_ENOMEM;
    }
    l->f = f;
    l->impl = impl;
    *out = l;
    return 0;
}

int eng_link_new_pool(eng_link_t **out, uv_loop_t *loop, const eng_route_t *r, char *err,
                      size_t errlen)
{
    *out = NULL;
    eng_pool_t *p;
    int rc = eng_pool_new(&p, loop, r, err, errlen);
    return rc ? rc : link_wrap(out, &pool_funcs, p);
}

int eng_link_new_mx(eng_link_t **out, uv_loop_t *loop, const eng_mx_opts_t *o, char *err,
                    size_t errlen)
{
    *out = NULL;
    eng_mx_t *mx;
    int rc = eng_mx_new(&mx, loop, o, err, errlen);
    return rc ? rc : link_wrap(out, &mx_funcs, mx);
}

int eng_link_submit(eng_link_t *l, eng_msg_t *m, const char *domain)
{
    return l->f->submit(l->impl, m, domain);
}

void eng_link_set_max_connections(eng_link_t *l, unsigned n)
{
    l->f->set_max_connections(l->impl, n);
}

void eng_link_set_caps(eng_link_t *l, unsigned msgs_per_conn, unsigned rcpts_per_conn)
{
    l->f->set_caps(l->impl, msgs_per_conn, rcpts_per_conn);
}

int eng_link_retire(eng_link_t *l, const char *domain, unsigned conn_id)
{
    return l->f->retire(l->impl, domain, conn_id);
}

unsigned eng_link_connections(const eng_link_t *l)
{
    return l->f->connections(l->impl);
}

/* The pool or router is gone: so is the link, after its owner heard. */
static void on_impl_closed(void *ud)
{
    eng_link_t *l = ud;
    if (l->on_closed) l->on_closed(l->closed_ud);
    free(l);
}

void eng_link_close(eng_link_t *l, int now, void (*on_closed)(void *ud), void *ud)
{
    l->on_closed = on_closed;
    l->closed_ud = ud;
    l->f->close(l->impl, now, on_impl_closed, l);
}
