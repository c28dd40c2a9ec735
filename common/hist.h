/* hist.h: a latency histogram with bounded relative error and no allocation.
 *
 * Values (microseconds) go into log-linear buckets: 16 sub-buckets for every
 * power of two, so a reported percentile is within about 6% of the true one
 * whatever the scale, from 1 us to hours. Recording is one shift, one add.
 */
#ifndef VL_HIST_H
#define VL_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 4
#define HIST_BUCKETS (64 << HIST_SUB_BITS)

typedef struct hist {
    uint64_t count;
    uint64_t sum;
    uint64_t max;
    uint32_t bucket[HIST_BUCKETS];
} hist_t;

void hist_init(hist_t *h);
void hist_record(hist_t *h, uint64_t v);
/* Add src's samples into dst. */
void hist_merge(hist_t *dst, const hist_t *src);
/* The value at percentile p (0..100); 0 when empty. */
uint64_t hist_percentile(const hist_t *h, double p);

#endif
