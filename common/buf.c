#include "buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

void buf_init(buf_t *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void buf_free(buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

int buf_reserve_slow(buf_t *b, size_t n)
{
    if (n > b->max || b->len > b->max - n) return VL_ETOOBIG;
    size_t need = b->len + n + 1; /* room for the trailing NUL */
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > ((size_t)-1) / 2 ? need : cap * 2;
    /* Never allocate much past the cap: a 2x step could otherwise double a
     * buffer that is allowed to be only slightly larger. */
    if (cap > b->max + 1) cap = b->max + 1;
    if (cap < need) cap = need;
    char *p = realloc(b->data, cap);
    if (!p) return VL_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int buf_append_slow(buf_t *b, const void *p, size_t n)
{
    int rc = buf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int buf_vprintf(buf_t *b, const char *fmt, va_list ap)
{
    /* Print into the room there is, and print again only when it was too
     * small: measuring first would cost every call two passes. */
    if (b->cap - b->len < 128 && b->len + 128 <= b->max && buf_reserve(b, 128)) return VL_ENOMEM;
    size_t room = b->cap > b->len ? b->cap - b->len : 0;
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, ap2);
    va_end(ap2);
    if (n < 0) {
        if (room) b->data[b->len] = '\0';
        return VL_EINVAL;
    }
    if ((size_t)n < room) {
        b->len += (size_t)n;
        return 0;
    }
    int rc = buf_reserve(b, (size_t)n);
    if (rc) {
        if (room) b->data[b->len] = '\0';
        return rc;
    }
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

/* Write u in decimal ending just before end; returns where it starts. Two
 * digits a step: results, records and reports write a few 13-digit times
 * a row. */
static char *dec_back(char *end, unsigned long long u)
{
    static const char pairs[] = "00010203040506070809101112131415161718192021222324"
                                "25262728293031323334353637383940414243444546474849"
                                "50515253545556575859606162636465666768697071727374"
                                "75767778798081828384858687888990919293949596979899";
    while (u >= 100) {
        unsigned d = (unsigned)(u % 100) * 2;
        u /= 100;
        *--end = pairs[d + 1];
        *--end = pairs[d];
    }
    if (u >= 10) {
        *--end = pairs[u * 2 + 1];
        *--end = pairs[u * 2];
    } else {
        *--end = (char)('0' + u);
    }
    return end;
}

size_t buf_fmt_dec(char *dst, unsigned long long v)
{
    char tmp[24];
    char *p = dec_back(tmp + sizeof tmp, v);
    size_t n = (size_t)(tmp + sizeof tmp - p);
    memcpy(dst, p, n);
    dst[n] = '\0';
    return n;
}

int buf_put_dec(buf_t *b, long long v)
{
    char tmp[24];
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    char *p = dec_back(tmp + sizeof tmp, u);
    if (v < 0) *--p = '-';
    return buf_append(b, p, (size_t)(tmp + sizeof tmp - p));
}

int buf_printf(buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

void buf_consume(buf_t *b, size_t n)
{
    if (n >= b->len) {
        buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

char *buf_take(buf_t *b)
{
    char *p = b->data;
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return p;
}

size_t iov_total(const struct iovec *iov, size_t n)
{
    size_t t = 0;
    for (size_t i = 0; i < n; i++)
        t += iov[i].iov_len;
    return t;
}

int buf_append_iov(buf_t *b, const struct iovec *iov, size_t n)
{
    int rc = buf_reserve(b, iov_total(iov, n));
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        memcpy(b->data + b->len, iov[i].iov_base, iov[i].iov_len);
        b->len += iov[i].iov_len;
    }
    if (b->data) b->data[b->len] = '\0';
    return 0;
}
