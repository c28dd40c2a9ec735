/* stuff.h (engine-internal): SMTP content transparency without copying.
 *
 * DATA content must have CRLF line ends and every line that starts with '.'
 * gets one more '.' (RFC 5321 §4.5.2); BDAT content needs the CRLFs but no
 * dots. Rather than copy the message, eng__stuff() emits a list of segments
 * that point into the caller's iovecs, with the few inserted bytes ("." or a
 * missing CR or LF) pointing at static strings. A message shared by many
 * recipients is never rewritten.
 */
#ifndef VL_ENGINE_STUFF_H
#define VL_ENGINE_STUFF_H

#include <stddef.h>
#include <sys/uio.h>

/* A growable iovec array with a few inline slots (no malloc for small ones). */
typedef struct eng__iovv {
    struct iovec *v;
    size_t n, cap;
    struct iovec inl[16];
} eng__iovv_t;

void eng__iovv_init(eng__iovv_t *a);
void eng__iovv_free(eng__iovv_t *a);
static inline void eng__iovv_reset(eng__iovv_t *a)
{
    a->n = 0;
}
/* 0 or VL_ENOMEM. Empty segments are skipped. */
int eng__iovv_push(eng__iovv_t *a, const void *p, size_t len);

/* Append the wire form of content (in, n) to out: line ends normalised to CRLF
 * unless `crlf_clean` promises they already are, lines starting with '.'
 * doubled when `dot`, and a final CRLF added if the content lacks one. The
 * terminating ".\r\n" is not added. Returns the number of bytes the appended
 * segments hold, or VL_ENOMEM. */
long eng__stuff(eng__iovv_t *out, const struct iovec *in, size_t n, int crlf_clean, int dot);

#endif
