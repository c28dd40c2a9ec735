/* punycode.c: RFC 3492 encoding, for IDN domains in recipient addresses.
 *
 * Only encoding is needed: volley turns a UTF-8 domain label into its ASCII
 * "xn--" form for the SMTP envelope and DNS. Declared in csv.h.
 */
#include "csv.h"

#include "common/err.h"

enum {
    PC_BASE = 36,
    PC_TMIN = 1,
    PC_TMAX = 26,
    PC_SKEW = 38,
    PC_DAMP = 700,
    PC_INITIAL_BIAS = 72,
    PC_INITIAL_N = 128,
};

static char encode_digit(uint32_t d)
{
    /* 0..25 are a..z, 26..35 are 0..9 (lower case, as IDNA wants). */
    return (char)(d < 26 ? 'a' + d : '0' + (d - 26));
}

static uint32_t adapt(uint32_t delta, uint32_t numpoints, int firsttime)
{
    delta = firsttime ? delta / PC_DAMP : delta / 2;
    delta += delta / numpoints;
    uint32_t k = 0;
    while (delta > ((PC_BASE - PC_TMIN) * PC_TMAX) / 2) {
        delta /= PC_BASE - PC_TMIN;
        k += PC_BASE;
    }
    return k + (PC_BASE - PC_TMIN + 1) * delta / (delta + PC_SKEW);
}

int tpl_punycode_encode(const uint32_t *cp, size_t ncp, char *dst, size_t n)
{
    size_t o = 0;
/* Leave room for the NUL at every step. */
#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (o + 1 >= n) return VL_ETOOBIG;                                                         \
        dst[o++] = (c);                                                                            \
    } while (0)

    if (ncp > 0xffff) return VL_ETOOBIG;
    size_t basic = 0;
    for (size_t j = 0; j < ncp; j++) {
        if (cp[j] < 0x80) {
            PUT((char)cp[j]);
            basic++;
        }
    }
    if (basic > 0) PUT('-');
    uint32_t nn = PC_INITIAL_N, delta = 0, bias = PC_INITIAL_BIAS;
    size_t h = basic;
    while (h < ncp) {
        /* The smallest code point not yet handled. */
        uint32_t m = UINT32_MAX;
        for (size_t j = 0; j < ncp; j++)
            if (cp[j] >= nn && cp[j] < m) m = cp[j];
        if ((uint64_t)(m - nn) * (h + 1) > UINT32_MAX - delta) return VL_ETOOBIG;
        delta += (m - nn) * (uint32_t)(h + 1);
        nn = m;
        for (size_t j = 0; j < ncp; j++) {
            if (cp[j] < nn && ++delta == 0) return VL_ETOOBIG;
            if (cp[j] != nn) continue;
            uint32_t q = delta;
            for (uint32_t k = PC_BASE;; k += PC_BASE) {
                uint32_t t = k <= bias ? PC_TMIN : k >= bias + PC_TMAX ? PC_TMAX : k - bias;
                if (q < t) break;
                PUT(encode_digit(t + (q - t) % (PC_BASE - t)));
                q = (q - t) / (PC_BASE - t);
            }
            PUT(encode_digit(q));
            bias = adapt(delta, (uint32_t)h + 1, h == basic);
            delta = 0;
            h++;
        }
        delta++;
        nn++;
    }
#undef PUT
    if (n) dst[o] = '\0';
    return (int)o;
}
