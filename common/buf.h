/* buf.h: a growable byte buffer with a hard cap.
 *
 * Like curl's dynbuf: every buffer has a limit beyond which growth fails with
 * VL_ETOOBIG instead of eating memory, so a hostile peer or a runaway template
 * cannot make volley allocate without bound. The data is always NUL-terminated
 * (the NUL is not counted in len), so a buffer can be handed to string
 * functions.
 */
#ifndef VL_BUF_H
#define VL_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <sys/uio.h>

#define BUF_MUST_USE __attribute__((warn_unused_result))

typedef struct buf {
    char *data; /* owned; NULL until the first growth */
    size_t len; /* bytes in use */
    size_t cap; /* bytes allocated (excluding nothing: cap > len when data) */
    size_t max; /* hard limit on len */
} buf_t;

/* Initialise an empty buffer that may grow to max bytes. Allocates nothing. */
void buf_init(buf_t *b, size_t max);

/* Release the memory; the buffer is empty and reusable afterwards. */
void buf_free(buf_t *b);

/* Forget the contents, keep the memory (for reuse on a hot path). */
static inline void buf_reset(buf_t *b)
{
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

/* Make room for at least n more bytes. 0, VL_ENOMEM or VL_ETOOBIG. Inline
 * for the same reason as buf_append() below: the room is usually there. */
BUF_MUST_USE int buf_reserve_slow(buf_t *b, size_t n);
BUF_MUST_USE static inline int buf_reserve(buf_t *b, size_t n)
{
    /* cap > len whenever data is set, and len <= max always. */
    if (n < b->cap - b->len && n <= b->max - b->len) return 0;
    return buf_reserve_slow(b, n);
}

/* Append bytes / a C string / one byte. 0 or a VL_E* code; on failure the
 * buffer is unchanged. Inline because results, records and reports call
 * them a few dozen times a row on the loop thread, and nearly every call
 * finds the room already there: then it is a copy, and only growth and the
 * limit take the call to buf_append_slow(). */
BUF_MUST_USE int buf_append_slow(buf_t *b, const void *p, size_t n);
BUF_MUST_USE static inline int buf_append(buf_t *b, const void *p, size_t n)
{
    /* cap > len whenever data is set, and len <= max always. */
    if (n < b->cap - b->len && n <= b->max - b->len) {
        if (n) memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = '\0';
        return 0;
    }
    return buf_append_slow(b, p, n);
}
BUF_MUST_USE static inline int buf_puts(buf_t *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}
BUF_MUST_USE static inline int buf_putc(buf_t *b, char c)
{
    if (b->cap - b->len > 1 && b->len < b->max) {
        b->data[b->len++] = c;
        b->data[b->len] = '\0';
        return 0;
    }
    return buf_append_slow(b, &c, 1);
}
/* Append formatted text. 0 or a VL_E* code; on failure the buffer is
 * unchanged. */
BUF_MUST_USE int buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append v in decimal (a '-' first when negative): what printf("%lld") does,
 * without printf's cost, for the numbers written once or more per message. */
BUF_MUST_USE int buf_put_dec(buf_t *b, long long v);
/* Write v in decimal and a NUL into dst (at least 21 bytes); returns the
 * digits written. */
size_t buf_fmt_dec(char *dst, unsigned long long v);
BUF_MUST_USE int buf_vprintf(buf_t *b, const char *fmt, va_list ap);

/* Drop the first n bytes (n <= len), moving the rest to the front. */
void buf_consume(buf_t *b, size_t n);

/* Hand the memory to the caller, who frees it with free(); the buffer is left
 * empty. Returns NULL when nothing was ever allocated. */
char *buf_take(buf_t *b);

/* The value of one hexadecimal digit (either case), or -1. */
static inline int vl_hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Total length of an iovec array. */
size_t iov_total(const struct iovec *iov, size_t n);

/* Copy an iovec array's bytes to the end of b. */
BUF_MUST_USE int buf_append_iov(buf_t *b, const struct iovec *iov, size_t n);

#endif
