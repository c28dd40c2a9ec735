#include "engine/stuff.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static const char s_dot[] = ".";
static const char s_crlf[] = "\r\n";

void eng__iovv_init(eng__iovv_t *a)
{
    a->v = a->inl;
    a->n = 0;
    a->cap = sizeof a->inl / sizeof a->inl[0];
}

void eng__iovv_free(eng__iovv_t *a)
{
    if (a->v != a->inl) free(a->v);
    eng__iovv_init(a);
}

int eng__iovv_push(eng__iovv_t *a, const void *p, size_t len)
{
    if (!len) return 0;
    /* Merge with the previous segment when contiguous: the common case of a
     * run split only by our own scanning. */
    if (a->n && (const char *)a->v[a->n - 1].iov_base + a->v[a->n - 1].iov_len == p) {
        a->v[a->n - 1].iov_len += len;
        return 0;
    }
    if (a->n == a->cap) {
        size_t cap = a->cap * 2;
        struct iovec *v = a->v == a->inl ? malloc(cap * sizeof *v) : realloc(a->v, cap * sizeof *v);
        if (!v) return VL_ENOMEM;
        if (a->v == a->inl) memcpy(v, a->inl, a->n * sizeof *v);
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n].iov_base = (void *)p;
    a->v[a->n].iov_len = len;
    a->n++;
    return 0;
}

/* The fast path for content whose line ends are already CRLF: only a '.' at
 * the start of a line needs attention, and memchr finds the line ends. */
static long stuff_clean(eng__iovv_t *out, const struct iovec *in, size_t n, int dot)
{
    long total = 0;
    int line_start = 1;
    char last = '\n';
    for (size_t i = 0; i < n; i++) {
        const char *p = in[i].iov_base, *end = p + in[i].iov_len;
        if (p == end) continue;
        const char *run = p;
        if (dot) {
            while (p < end) {
                if (line_start && *p == '.') {
                    if (eng__iovv_push(out, run, (size_t)(p - run)) ||
                        eng__iovv_push(out, s_dot, 1))
                        return VL_ENOMEM;
                    total += (p - run) + 1;
                    run = p;
                }
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                if (!nl) {
                    line_start = 0;
                    break;
                }
                p = nl + 1;
                line_start = 1;
            }
        }
        if (eng__iovv_push(out, run, (size_t)(end - run))) return VL_ENOMEM;
        total += end - run;
        last = end[-1];
        line_start = last == '\n';
    }
    if (last != '\n') {
        if (eng__iovv_push(out, s_crlf, 2)) return VL_ENOMEM;
        total += 2;
    }
    return total;
}

long eng__stuff(eng__iovv_t *out, const struct iovec *in, size_t n, int crlf_clean, int dot)
{
    if (crlf_clean) return stuff_clean(out, in, n, dot);

    /* General path, byte by byte: bare LF and bare CR each become CRLF. A CR
     * at the end of one segment is resolved by the first byte of the next. */
    long total = 0;
    int line_start = 1, pending_cr = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = in[i].iov_base, *end = p + in[i].iov_len;
        const char *run = p;
#define FLUSH_RUN(upto)                                                                            \
    do {                                                                                           \
        if (eng__iovv_push(out, run, (size_t)((upto)-run))) return VL_ENOMEM;                      \
        total += (upto)-run;                                                                       \
        run = (upto);                                                                              \
    } while (0)
#define INSERT(s, len)                                                                             \
    do {                                                                                           \
        if (eng__iovv_push(out, (s), (len))) return VL_ENOMEM;                                     \
        total += (len);                                                                            \
    } while (0)
        for (; p < end; p++) {
            char c = *p;
            if (pending_cr) {
                pending_cr = 0;
                line_start = 1;
                if (c == '\n') continue; /* a proper CRLF, already in the run */
                FLUSH_RUN(p);
                INSERT(s_crlf + 1, 1); /* the LF a bare CR lacked */
            }
            if (c == '\r') {
                pending_cr = 1;
            } else if (c == '\n') {
                FLUSH_RUN(p);
                INSERT(s_crlf, 1); /* the CR a bare LF lacked */
                line_start = 1;
            } else {
                if (line_start && c == '.' && dot) {
                    FLUSH_RUN(p);
                    INSERT(s_dot, 1);
                }
                line_start = 0;
            }
        }
        FLUSH_RUN(end);
#undef FLUSH_RUN
#undef INSERT
    }
    if (pending_cr) {
        if (eng__iovv_push(out, s_crlf + 1, 1)) return VL_ENOMEM;
        total += 1;
    } else if (!line_start) {
        if (eng__iovv_push(out, s_crlf, 2)) return VL_ENOMEM;
        total += 2;
    }
    return total;
}
