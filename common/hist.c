#include "hist.h"

#include <string.h>

void hist_init(hist_t *h)
{
    memset(h, 0, sizeof *h);
}

static unsigned bucket_of(uint64_t v)
{
    if (v < (1u << HIST_SUB_BITS)) return (unsigned)v; /* exact below 16 */
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - HIST_SUB_BITS;
    unsigned sub = (unsigned)(v >> shift) & ((1u << HIST_SUB_BITS) - 1);
    return ((shift + 1) << HIST_SUB_BITS) + sub;
}

/* The upper edge of a bucket, so percentiles never understate latency. */
static uint64_t bucket_high(unsigned b)
{
    if (b < (1u << HIST_SUB_BITS)) return b;
    unsigned shift = (b >> HIST_SUB_BITS) - 1;
    uint64_t sub = b & ((1u << HIST_SUB_BITS) - 1);
    return (((uint64_t)1 << HIST_SUB_BITS | sub) << shift) + (((uint64_t)1 << shift) - 1);
}

void hist_record(hist_t *h, uint64_t v)
{
    unsigned b = bucket_of(v);
    if (b >= HIST_BUCKETS) b = HIST_BUCKETS - 1;
    h->bucket[b]++;
    h->count++;
    h->sum += v;
    if (v > h->max) h->max = v;
}

void hist_merge(hist_t *dst, const hist_t *src)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        dst->bucket[i] += src->bucket[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->max > dst->max) dst->max = src->max;
}

uint64_t hist_percentile(const hist_t *h, double p)
{
    if (!h->count) return 0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)h->count + 0.5);
    if (rank < 1) rank = 1;
    if (rank > h->count) rank = h->count;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->bucket[i];
        if (seen >= rank) {
            uint64_t hi = bucket_high(i);
            return hi < h->max ? hi : h->max;
        }
    }
    return h->max;
}
