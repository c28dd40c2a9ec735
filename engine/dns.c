/* dns.c: MX lookups with c-ares, driven by a libuv loop.
 *
 * c-ares does the DNS work but owns no event loop: it tells us through its
 * socket-state callback which sockets to watch (one uv_poll_t each), and
 * through ares_timeout() when it next needs to look at its timers (one
 * uv_timer_t, rearmed after every ares_process_fd call). Every readiness
 * event and timer expiry goes back into ares_process_fd.
 *
 * A lookup is one MX query, then one address lookup (ares_getaddrinfo) per
 * MX host, all at once; when the last of them is back the targets are put
 * together in MX order. c-ares sometimes calls back before the function that
 * started a query returns (a malformed name, an address literal, "localhost"),
 * so no user callback ever runs from a c-ares callback: a finished lookup goes
 * to a queue that a uv_idle_t delivers on the next loop pass. That keeps the
 * promise that eng_dns_mx never calls back from inside itself, and means user
 * code, which may call eng_dns_mx or eng_dns_close, never runs inside c-ares.
 *
 * Each lookup counts the c-ares callbacks it still waits for ("outstanding").
 * The MX query's own count is released only at the end of its callback, after
 * the address lookups are started, so one that answers synchronously cannot
 * bring the count to zero while others are still being started.
 */
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <ares.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/err.h"
#include "common/rand.h"
#include "engine/dns.h"

#define DEFAULT_TIMEOUT_MS 2000
#define TRIES 2
/* A domain name is at most 253 characters in text form, without the final dot. */
#define DOMAIN_MAX 253
/* MX hosts whose addresses are looked up. Each one that resolves gives at
 * least one target, so hosts beyond the first ENG_DNS_MAX_TARGETS matter only
 * when earlier ones fail; this bounds the queries one answer can cause. */
#define MAX_MX_HOSTS 32
#define WHY_MAX 512

typedef struct lookup lookup_t;

/* One socket c-ares asked us to watch. */
typedef struct dns_poll {
    uv_poll_t poll;
    eng_dns_t *d;
    ares_socket_t fd;
    struct dns_poll *next; /* in d->polls until c-ares lets go of the socket */
} dns_poll_t;

/* One MX host of a lookup (or, for the implicit MX, the domain itself). */
typedef struct mx_host {
    lookup_t *lk;
    char name[256]; /* without trailing dot */
    unsigned pref;
    uint64_t tiebreak;               /* random: the order among equal preferences */
    int status;                      /* ares status of the address lookup; -1 until it is back */
    struct ares_addrinfo *ai;        /* owned (ares_freeaddrinfo); NULL unless status is 0 */
    struct sockaddr_storage literal; /* the address when name is an IP literal */
    int is_literal;
} mx_host_t;

struct lookup {
    eng_dns_t *d;
    lookup_t *prev, *next; /* in d->active while under way, then (next only) in d->done */
    char domain[DOMAIN_MAX + 1];
    uint16_t port;
    eng_dns_mx_cb cb;
    void *ud;
    unsigned outstanding; /* c-ares callbacks still to come */
    int implicit;         /* no MX records: hosts[0] is the domain itself */
    int decided;          /* st and why are set already (no address step) */
    mx_host_t *hosts;     /* owned, nhosts of them, in MX order */
    size_t nhosts;
    eng_dns_status_t st;
    size_t n;
    eng_target_t targets[ENG_DNS_MAX_TARGETS];
    char why[WHY_MAX];
};

struct eng_dns {
    uv_loop_t *loop;                 /* borrowed */
    ares_channel channel;            /* NULL once destroyed */
    uv_timer_t timer;                /* c-ares's next timeout */
    uv_idle_t idle;                  /* delivers finished lookups; active only while some wait */
    int handles;                     /* open libuv handles (timer, idle, polls, closing or not) */
    dns_poll_t *polls;               /* the sockets watched now */
    lookup_t *active;                /* doubly linked: lookups under way */
    lookup_t *done_head, *done_tail; /* finished, waiting to be delivered */
    size_t ndone;
    int closing;
    void (*on_closed)(void *ud);
    void *closed_ud;
    uint64_t rng; /* xorshift state for the MX tiebreak */
};

/* ---- library set-up --------------------------------------------------- */

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static int lib_status = ARES_SUCCESS;

static void lib_init(void)
{
    /* Process-wide and never undone: ares_library_cleanup would pull the
     * rug from under any other resolver in the process. On Linux it holds
     * no memory, so leak checkers stay quiet. */
    lib_status = ares_library_init(ARES_LIB_INIT_ALL);
}

/* ---- small helpers ---------------------------------------------------- */

/* Format lk's account of its result (fmt borrowed). */
static void set_why(lookup_t *lk, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_why(lookup_t *lk, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(lk->why, sizeof lk->why, fmt, ap);
    va_end(ap);
}

/* Copy name (borrowed) into out (256 bytes) without a trailing dot. 0, or -1
 * when it does not fit. */
static int copy_name(char out[256], const char *name)
{
    size_t len = strlen(name);
    if (len && name[len - 1] == '.') len--;
    if (len >= 256) return -1;
    memcpy(out, name, len);
    out[len] = '\0';
    return 0;
}

/* If name (borrowed) is an IPv4 or IPv6 literal, store it in sa (the
 * caller's) and return 1; the port is set later. c-ares
 * 1.18 would resolve a literal too, but an IPv4 one asked for with AF_UNSPEC
 * goes out as a DNS query first (its fake_addrinfo only succeeds when the
 * IPv6 parse does), so literals never reach it. */
static int parse_literal(const char *name, struct sockaddr_storage *sa)
{
    memset(sa, 0, sizeof *sa);
    struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
    if (inet_pton(AF_INET, name, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        return 1;
    }
    if (inet_pton(AF_INET6, name, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        return 1;
    }
    return 0;
}

/* ---- the servers string ----------------------------------------------- */

/* Parse a port of 1..65535 from s (borrowed, len bytes, not terminated). */
static int parse_port(const char *s, size_t len, unsigned *port)
{
    if (len == 0 || len > 5) return -1;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v == 0 || v > 65535) return -1;
    *port = v;
    return 0;
}

/* Check one "IP[:PORT]" entry: item is borrowed, len bytes inside the whole
 * servers string (so not terminated), with no blanks around it. */
static int check_server(const char *item, size_t len)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *port = NULL;
    size_t hlen, plen = 0;
    int family;
    unsigned char addr[sizeof(struct in6_addr)];
    unsigned pv;

    if (item[0] == '[') {
        const char *rb = memchr(item, ']', len);
        if (!rb) return -1;
        hlen = (size_t)(rb - item - 1);
        memcpy(host, item + 1, hlen < sizeof host ? hlen : 0);
        family = AF_INET6;
        size_t rest = len - (size_t)(rb - item) - 1;
        if (rest) {
            if (rb[1] != ':') return -1;
            port = rb + 2;
            plen = rest - 1;
        }
    } else {
        const char *colon = memchr(item, ':', len);
        if (colon && memchr(colon + 1, ':', len - (size_t)(colon - item) - 1)) {
            /* Two colons or more: a bare IPv6 address, which takes no port
             * (it would be ambiguous); "[v6]:port" is the form for that. */
            hlen = len;
            family = AF_INET6;
        } else {
            hlen = colon ? (size_t)(colon - item) : len;
            family = AF_INET;
            if (colon) {
                port = colon + 1;
                plen = len - hlen - 1;
            }
        }
        memcpy(host, item, hlen < sizeof host ? hlen : 0);
    }
    if (hlen == 0 || hlen >= sizeof host) return -1;
    host[hlen] = '\0';
    if (inet_pton(family, host, addr) != 1) return -1;
    if (port && parse_port(port, plen, &pv)) return -1;
    return 0;
}

/* Check servers (borrowed) strictly and return a copy without blanks around
 * the entries (the caller frees it), or NULL with why in err. c-ares's own
 * parser takes "1.2.3", port 99999 and "" (no servers at all) without
 * complaint, so it is not the judge. */
static char *normalize_servers(const char *servers, int *rc, char *err, size_t errlen)
{
    size_t len = strlen(servers);
    char *out = malloc(len + 1);
    if (!out) {
        *rc = VL_ENOMEM;
        vl_set_err(err, errlen, "out of memory");
        return NULL;
    }
    size_t o = 0;
    const char *p = servers;
    for (;;) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (a == b || check_server(a, (size_t)(b - a))) {
            *rc = VL_EINVAL;
            if (a == b)
                vl_set_err(err, errlen, "DNS servers \"%s\": an entry is empty", servers);
            else
                vl_set_err(err, errlen,
                           "DNS servers \"%s\": \"%.*s\" is not IP[:PORT] "
                           "(IPv6 in brackets with a port)",
                           servers, (int)(b - a), a);
            free(out);
            return NULL;
        }
        if (o) out[o++] = ',';
        if (*a == '[' && b[-1] == ']') {
            /* "[v6]" without a port: c-ares wants brackets only before one. */
            a++;
            b--;
        }
        memcpy(out + o, a, (size_t)(b - a));
        o += (size_t)(b - a);
        if (!*end) break;
        p = end + 1;
    }
    out[o] = '\0';
    return out;
}

/* ---- c-ares on libuv -------------------------------------------------- */

static void on_timer(uv_timer_t *t);

/* Set the timer to c-ares's next deadline. Called after anything that may
 * have sent queries or processed answers. */
static void rearm(eng_dns_t *d)
{
    if (d->closing || !d->channel) return;
    struct timeval tv;
    if (!ares_timeout(d->channel, NULL, &tv)) {
        uv_timer_stop(&d->timer);
        return;
    }
    /* Rounded up: firing a little early would find nothing due and spin. */
    uint64_t ms = (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
    uv_timer_start(&d->timer, on_timer, ms, 0);
}

static void on_timer(uv_timer_t *t)
{
    eng_dns_t *d = t->data;
    ares_process_fd(d->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    rearm(d);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    dns_poll_t *p = h->data;
    eng_dns_t *d = p->d;
    ares_socket_t fd = p->fd;
    /* On an error libuv gives no events: let c-ares try both directions so
     * it meets the error itself and moves the query along. */
    int rd = status < 0 || (events & UV_READABLE);
    int wr = status < 0 || (events & UV_WRITABLE);
    /* This may make c-ares close the socket, and so this handle (see
     * on_sock_state): p stays allocated until its close callback. */
    ares_process_fd(d->channel, rd ? fd : ARES_SOCKET_BAD, wr ? fd : ARES_SOCKET_BAD);
    rearm(d);
}

static void maybe_free(eng_dns_t *d);

/* Every handle's close callback. A poll is freed here (libuv may touch a
 * handle until its close callback); timer and idle live inside d, which goes
 * with the last handle. */
static void on_handle_closed(uv_handle_t *h)
{
    eng_dns_t *d;
    if (h->type == UV_POLL) {
        dns_poll_t *p = h->data;
        d = p->d;
        free(p);
    } else {
        d = h->data;
    }
    d->handles--;
    maybe_free(d);
}

/* c-ares's socket-state callback (data is the resolver): watch fd for what
 * it asks, or stop when it asks for nothing, which is how c-ares says it is
 * about to close the socket. */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    eng_dns_t *d = data;
    dns_poll_t **pp = &d->polls;
    while (*pp && (*pp)->fd != fd)
        pp = &(*pp)->next;
    dns_poll_t *p = *pp;

    if (!readable && !writable) {
        if (p) {
            /* The close completes later; a new socket that c-ares opens with
             * the same number in the meantime gets a handle of its own. */
            *pp = p->next;
            uv_close((uv_handle_t *)&p->poll, on_handle_closed);
        }
        return;
    }
    if (!p) {
        if (d->closing) return;
        /* Should either step fail, the socket goes unwatched and its query
         * ends in a timeout, which is reported: there is no other way to
         * tell c-ares. */
        p = calloc(1, sizeof *p);
        if (!p) return;
        if (uv_poll_init_socket(d->loop, &p->poll, fd) != 0) {
            free(p);
            return;
        }
        p->poll.data = p;
        p->d = d;
        p->fd = fd;
        p->next = d->polls;
        d->polls = p;
        d->handles++;
    }
    uv_poll_start(&p->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), on_poll);
}

/* ---- lookups ---------------------------------------------------------- */

/* Free lk (off every list) and the address results it owns. */
static void free_lookup(lookup_t *lk)
{
    for (size_t i = 0; i < lk->nhosts; i++)
        if (lk->hosts[i].ai) ares_freeaddrinfo(lk->hosts[i].ai);
    free(lk->hosts);
    free(lk);
}

static void on_idle(uv_idle_t *h);

/* Move a lookup whose result is set from the active list to the queue of
 * results to deliver. */
static void queue_done(lookup_t *lk)
{
    eng_dns_t *d = lk->d;
    if (lk->prev)
        lk->prev->next = lk->next;
    else
        d->active = lk->next;
    if (lk->next) lk->next->prev = lk->prev;
    lk->prev = lk->next = NULL;
    if (d->done_tail)
        d->done_tail->next = lk;
    else
        d->done_head = lk;
    d->done_tail = lk;
    d->ndone++;
    if (!d->closing) uv_idle_start(&d->idle, on_idle);
}

static lookup_t *pop_done(eng_dns_t *d)
{
    lookup_t *lk = d->done_head;
    if (lk) {
        d->done_head = lk->next;
        if (!d->done_head) d->done_tail = NULL;
        lk->next = NULL;
        d->ndone--;
    }
    return lk;
}

/* Hand a lookup's result to its owner, then free it. lk is off every list.
 * The callback may call eng_dns_mx or eng_dns_close. */
static void deliver(lookup_t *lk, eng_dns_status_t st)
{
    if (st == ENG_DNS_OK)
        lk->cb(lk->ud, st, lk->targets, lk->n, "");
    else
        lk->cb(lk->ud, st, NULL, 0, lk->why);
    free_lookup(lk);
}

static void on_idle(uv_idle_t *h)
{
    eng_dns_t *d = h->data;
    /* Only what is queued now: a callback that starts a lookup that fails at
     * once queues it again, and that one waits for the next pass, so the
     * loop keeps turning. A callback that closes the resolver delivers the
     * rest itself, and d stays allocated until the close callbacks, which
     * run after this one returns. */
    for (size_t n = d->ndone; n && !d->closing; n--) {
        lookup_t *lk = pop_done(d);
        if (!lk) break;
        deliver(lk, lk->st);
    }
    if (!d->closing && !d->done_head) uv_idle_stop(&d->idle);
}

/* Append one address of host h to lk's targets, unless it is there already
 * or the list is full. h and sa (salen bytes) are borrowed: both are copied. */
static void add_target(lookup_t *lk, const mx_host_t *h, const struct sockaddr *sa, size_t salen)
{
    if (lk->n >= ENG_DNS_MAX_TARGETS) return;
    if (sa->sa_family == AF_INET && salen < sizeof(struct sockaddr_in)) return;
    if (sa->sa_family == AF_INET6 && salen < sizeof(struct sockaddr_in6)) return;
    if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) return;
    for (size_t i = 0; i < lk->n; i++) {
        const struct sockaddr *t = (const struct sockaddr *)&lk->targets[i].addr;
        if (t->sa_family != sa->sa_family) continue;
        if (sa->sa_family == AF_INET &&
            !memcmp(&((const struct sockaddr_in *)t)->sin_addr,
                    &((const struct sockaddr_in *)sa)->sin_addr, sizeof(struct in_addr)))
            return;
        if (sa->sa_family == AF_INET6 &&
            !memcmp(&((const struct sockaddr_in6 *)t)->sin6_addr,
                    &((const struct sockaddr_in6 *)sa)->sin6_addr, sizeof(struct in6_addr)) &&
            ((const struct sockaddr_in6 *)t)->sin6_scope_id ==
                ((const struct sockaddr_in6 *)sa)->sin6_scope_id)
            return;
    }
    eng_target_t *t = &lk->targets[lk->n++];
    memset(t, 0, sizeof *t);
    memcpy(t->name, h->name, sizeof t->name);
    if (sa->sa_family == AF_INET) {
        memcpy(&t->addr, sa, sizeof(struct sockaddr_in));
        ((struct sockaddr_in *)&t->addr)->sin_port = htons(lk->port);
    } else {
        memcpy(&t->addr, sa, sizeof(struct sockaddr_in6));
        ((struct sockaddr_in6 *)&t->addr)->sin6_port = htons(lk->port);
    }
}

/* Every address lookup is back: the targets in MX order, or why none. */
static void assemble(lookup_t *lk)
{
    for (size_t i = 0; i < lk->nhosts; i++) {
        const mx_host_t *h = &lk->hosts[i];
        if (h->is_literal)
            add_target(lk, h, (const struct sockaddr *)&h->literal, sizeof h->literal);
        else if (h->status == ARES_SUCCESS && h->ai)
            for (const struct ares_addrinfo_node *nd = h->ai->nodes; nd; nd = nd->ai_next)
                add_target(lk, h, nd->ai_addr, (size_t)nd->ai_addrlen);
    }
    if (lk->n) {
        lk->st = ENG_DNS_OK;
        lk->why[0] = '\0';
        return;
    }
    if (lk->implicit) {
        int s = lk->hosts[0].status;
        if (s == ARES_SUCCESS || s == ARES_ENODATA || s == ARES_ENOTFOUND) {
            lk->st = ENG_DNS_NOTFOUND;
            set_why(lk, "%s: no MX and no address records", lk->domain);
        } else {
            lk->st = ENG_DNS_TEMPFAIL;
            set_why(lk, "%s: no MX records, and the address lookup failed: %s", lk->domain,
                    ares_strerror(s));
        }
        return;
    }
    /* "x: none of the MX hosts (a, b) has an address", the list shortened
     * with "..." should it not fit. */
    lk->st = ENG_DNS_TEMPFAIL;
    const char *tail = ") has an address";
    size_t cap = sizeof lk->why - strlen(tail) - 5; /* room for ", ..." */
    int w = snprintf(lk->why, cap, "%s: none of the MX hosts (", lk->domain);
    size_t off = w < 0 ? 0 : (size_t)w < cap ? (size_t)w : cap - 1;
    for (size_t i = 0; i < lk->nhosts; i++) {
        const char *sep = i ? ", " : "";
        size_t need = strlen(sep) + strlen(lk->hosts[i].name);
        if (off + need >= cap) {
            const char *more = i ? ", ..." : "...";
            memcpy(lk->why + off, more, strlen(more) + 1);
            off += strlen(more);
            break;
        }
        off += (size_t)snprintf(lk->why + off, cap - off, "%s%s", sep, lk->hosts[i].name);
    }
    snprintf(lk->why + off, sizeof lk->why - off, "%s", tail);
}

/* A c-ares callback of lk is back. When it was the last, lk's result is
 * settled and queued. */
static void settle(lookup_t *lk)
{
    if (lk->outstanding) return;
    if (lk->d->closing) {
        lk->st = ENG_DNS_CANCELLED;
        set_why(lk, "%s: lookup cancelled (resolver closed)", lk->domain);
    } else if (!lk->decided) {
        assemble(lk);
    }
    queue_done(lk);
}

/* ares_getaddrinfo's callback for one host (arg). ai, when given, is ours to
 * free (ares_freeaddrinfo). */
static void on_host_ai(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    (void)timeouts;
    mx_host_t *h = arg;
    h->status = status;
    if (status == ARES_SUCCESS)
        h->ai = ai; /* ours now: freed with the lookup */
    else if (ai)
        ares_freeaddrinfo(ai);
    h->lk->outstanding--;
    settle(h->lk);
}

/* Start the address lookup of host h, an element of lk->hosts with its name
 * set. c-ares keeps h as its callback argument: the array must not move or
 * be freed until every callback is back (it is freed with lk). */
static void start_host(lookup_t *lk, mx_host_t *h)
{
    h->lk = lk;
    h->status = -1;
    if (parse_literal(h->name, &h->literal)) {
        h->is_literal = 1;
        h->status = ARES_SUCCESS;
        return;
    }
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    lk->outstanding++;
    /* The port is set on each target afterwards, so no service is given. */
    ares_getaddrinfo(lk->d->channel, h->name, NULL, &hints, on_host_ai, h);
}

/* qsort order: preference, then the random tiebreak. */
static int cmp_host(const void *a, const void *b)
{
    const mx_host_t *x = a, *y = b;
    if (x->pref != y->pref) return x->pref < y->pref ? -1 : 1;
    return x->tiebreak < y->tiebreak ? -1 : x->tiebreak > y->tiebreak;
}

/* The result is known without looking up addresses; why is set by the
 * caller. */
static void decide(lookup_t *lk, eng_dns_status_t st)
{
    lk->st = st;
    lk->decided = 1;
}

/* The domain has no MX records: it is its own mail host (RFC 5321 §5.1). */
static void start_implicit(lookup_t *lk)
{
    lk->hosts = calloc(1, sizeof *lk->hosts);
    if (!lk->hosts) {
        decide(lk, ENG_DNS_TEMPFAIL);
        set_why(lk, "%s: out of memory", lk->domain);
        return;
    }
    lk->nhosts = 1;
    lk->implicit = 1;
    memcpy(lk->hosts[0].name, lk->domain, sizeof lk->domain);
    start_host(lk, &lk->hosts[0]);
}

/* Turn an MX answer into the hosts to resolve, and start resolving them.
 * abuf (alen bytes) is c-ares's, valid during its callback only: the host
 * names are copied out. */
static void use_mx_answer(lookup_t *lk, const unsigned char *abuf, int alen)
{
    struct ares_mx_reply *mx = NULL;
    int rc = ares_parse_mx_reply(abuf, alen, &mx);
    if (rc == ARES_ENODATA) {
        /* An answer with records, none of them MX (a CNAME chain to a
         * name without MX, say): no MX records all the same. */
        start_implicit(lk);
        return;
    }
    if (rc != ARES_SUCCESS) {
        decide(lk, ENG_DNS_TEMPFAIL);
        set_why(lk, "%s: bad MX answer: %s", lk->domain, ares_strerror(rc));
        return;
    }
    size_t count = 0, nulls = 0;
    for (struct ares_mx_reply *m = mx; m; m = m->next)
        count++;
    lk->hosts = calloc(count, sizeof *lk->hosts);
    if (!lk->hosts) {
        ares_free_data(mx);
        decide(lk, ENG_DNS_TEMPFAIL);
        set_why(lk, "%s: out of memory", lk->domain);
        return;
    }
    for (struct ares_mx_reply *m = mx; m; m = m->next) {
        /* c-ares 1.18 gives the root name of a null MX as "". A null MX
         * among other records makes the domain misconfigured (RFC 7505
         * §3); the other records are used then. */
        if (!m->host[0] || !strcmp(m->host, ".")) {
            nulls++;
            continue;
        }
        mx_host_t *h = &lk->hosts[lk->nhosts];
        if (copy_name(h->name, m->host)) continue; /* escaped past 255 characters: no host name */
        h->pref = m->priority;
        h->tiebreak = vl_xorshift64s(&lk->d->rng); /* equal preferences in random order */
        lk->nhosts++;
    }
    ares_free_data(mx);
    if (!lk->nhosts) {
        if (nulls) {
            decide(lk, ENG_DNS_NULLMX);
            set_why(lk, "%s: null MX (RFC 7505): the domain accepts no mail", lk->domain);
        } else {
            decide(lk, ENG_DNS_TEMPFAIL);
            set_why(lk, "%s: no usable MX host name", lk->domain);
        }
        return;
    }
    qsort(lk->hosts, lk->nhosts, sizeof *lk->hosts, cmp_host);
    /* A host listed twice keeps its first (most preferred) place. */
    size_t kept = 0;
    for (size_t i = 0; i < lk->nhosts && kept < MAX_MX_HOSTS; i++) {
        int dup = 0;
        for (size_t j = 0; j < kept && !dup; j++)
            dup = !strcasecmp(lk->hosts[j].name, lk->hosts[i].name);
        if (!dup) lk->hosts[kept++] = lk->hosts[i];
    }
    lk->nhosts = kept;
    /* The array is final now: the callbacks hold pointers into it. */
    for (size_t i = 0; i < lk->nhosts; i++)
        start_host(lk, &lk->hosts[i]);
}

/* ares_query's callback for lk (arg); abuf is borrowed for the call. */
static void on_mx(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    (void)timeouts;
    lookup_t *lk = arg;
    /* ARES_ECANCELLED and ARES_EDESTRUCTION come from eng_dns_close, which
     * set closing first; settle() reports those lookups as cancelled. */
    if (!lk->d->closing) {
        switch (status) {
        case ARES_SUCCESS:
            use_mx_answer(lk, abuf, alen);
            break;
        case ARES_ENODATA:
            start_implicit(lk);
            break;
        case ARES_ENOTFOUND:
            decide(lk, ENG_DNS_NOTFOUND);
            set_why(lk, "%s: no such domain (DNS NXDOMAIN)", lk->domain);
            break;
        default:
            /* SERVFAIL, REFUSED, timeouts, unreachable servers. Note that
             * c-ares 1.18 tries the next server on SERVFAIL or REFUSED and,
             * when none is left, reports ARES_ECONNREFUSED ("Could not
             * contact DNS servers") rather than the answer's code. */
            decide(lk, ENG_DNS_TEMPFAIL);
            set_why(lk, "%s: MX lookup failed: %s", lk->domain, ares_strerror(status));
            break;
        }
    }
    /* Released last: address lookups answered synchronously above must not
     * settle the lookup while others were still being started. */
    lk->outstanding--;
    settle(lk);
}

/* ---- public functions ------------------------------------------------- */

int eng_dns_new(eng_dns_t **out, uv_loop_t *loop, const char *servers, unsigned timeout_ms,
                char *err, size_t errlen)
{
    *out = NULL;
    int rc = 0;
    char *csv = NULL;
    if (servers && !(csv = normalize_servers(servers, &rc, err, errlen))) return rc;
    pthread_once(&lib_once, lib_init);
    if (lib_status != ARES_SUCCESS) {
        free(csv);
        vl_set_err(err, errlen, "c-ares: %s", ares_strerror(lib_status));
        return VL_EDNS;
    }
    eng_dns_t *d = calloc(1, sizeof *d);
    if (!d) {
        free(csv);
        vl_set_err(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    d->loop = loop;

    struct ares_options o;
    memset(&o, 0, sizeof o);
    int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB |
               ARES_OPT_DOMAINS;
    /* The domain is fully qualified: no search list. ares_query never
     * searches, but ares_getaddrinfo in 1.18 ignores ARES_FLAG_NOSEARCH and
     * walks the resolv.conf search list after an NXDOMAIN; an empty list of
     * domains (ARES_OPT_DOMAINS, ndomains 0) stops that. */
    o.flags = ARES_FLAG_NOSEARCH;
    o.domains = NULL;
    o.ndomains = 0;
    o.timeout = (int)(timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS);
    o.tries = TRIES;
    o.sock_state_cb = on_sock_state;
    o.sock_state_cb_data = d;
    static char dns_only[] = "b";
    if (csv) {
        /* Servers given: DNS only, not /etc/hosts first. */
        o.lookups = dns_only;
        mask |= ARES_OPT_LOOKUPS;
    }
    int ar = ares_init_options(&d->channel, &o, mask);
    if (ar == ARES_SUCCESS && csv) ar = ares_set_servers_ports_csv(d->channel, csv);
    free(csv);
    if (ar != ARES_SUCCESS) {
        if (d->channel) ares_destroy(d->channel);
        free(d);
        vl_set_err(err, errlen, "c-ares: %s", ares_strerror(ar));
        return ar == ARES_ENOMEM ? VL_ENOMEM : VL_EDNS;
    }

    uv_timer_init(loop, &d->timer);
    d->timer.data = d;
    uv_idle_init(loop, &d->idle);
    d->idle.data = d;
    d->handles = 2;
    d->rng = (uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)d) | 1;
    *out = d;
    return 0;
}

int eng_dns_mx(eng_dns_t *d, const char *domain, uint16_t port, eng_dns_mx_cb cb, void *ud)
{
    if (d->closing) return VL_ESTATE;
    if (!domain || !cb) return VL_EINVAL;
    size_t len = strlen(domain);
    if (len && domain[len - 1] == '.') len--;
    if (len == 0 || len > DOMAIN_MAX) return VL_EINVAL;
    lookup_t *lk = calloc(1, sizeof *lk);
    if (!lk) return VL_ENOMEM;
    lk->d = d;
    memcpy(lk->domain, domain, len);
    lk->domain[len] = '\0';
    lk->port = port;
    lk->cb = cb;
    lk->ud = ud;
    lk->next = d->active;
    if (d->active) d->active->prev = lk;
    d->active = lk;
    lk->outstanding = 1;
    /* on_mx may run before this returns (a malformed name, say); it only
     * queues the result, which on_idle delivers later. */
    ares_query(d->channel, lk->domain, C_IN, T_MX, on_mx, lk);
    rearm(d);
    return 0;
}

/* The last handle is closed: free the resolver, then tell the owner. */
static void maybe_free(eng_dns_t *d)
{
    if (!d->closing || d->handles) return;
    void (*cb)(void *) = d->on_closed;
    void *ud = d->closed_ud;
    free(d);
    if (cb) cb(ud);
}

void eng_dns_close(eng_dns_t *d, void (*on_closed)(void *ud), void *ud)
{
    if (d->closing) return;
    d->closing = 1;
    d->on_closed = on_closed;
    d->closed_ud = ud;

    /* c-ares calls back every query under way (ARES_ECANCELLED); with
     * closing set each lookup settles as cancelled, starts nothing new,
     * and moves to the done queue. ares_destroy would catch any query
     * started meanwhile (ARES_EDESTRUCTION), and closes the sockets, which
     * closes their polls through on_sock_state. */
    ares_cancel(d->channel);
    ares_destroy(d->channel);
    d->channel = NULL;

    /* Nothing should be left under way; were something (a c-ares callback
     * that never came), its owner is still owed a callback. */
    while (d->active) {
        lookup_t *lk = d->active;
        lk->outstanding = 0;
        set_why(lk, "%s: lookup cancelled (resolver closed)", lk->domain);
        queue_done(lk);
    }

    while (d->polls) {
        dns_poll_t *p = d->polls;
        d->polls = p->next;
        uv_close((uv_handle_t *)&p->poll, on_handle_closed);
    }
    uv_close((uv_handle_t *)&d->timer, on_handle_closed);
    uv_close((uv_handle_t *)&d->idle, on_handle_closed);

    /* Results not yet delivered count as cancelled too: the owner is
     * closing, and "cancelled" is what it expects for any lookup it has
     * not heard back from. The close callbacks above run no earlier than
     * the loop's next pass, so d stays valid while these run. */
    lookup_t *lk;
    while ((lk = pop_done(d))) {
        set_why(lk, "%s: lookup cancelled (resolver closed)", lk->domain);
        deliver(lk, ENG_DNS_CANCELLED);
    }
}
