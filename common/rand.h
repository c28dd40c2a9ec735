/* rand.h: xorshift64*, a small fast generator for what needs variety, not
 * secrecy (shuffling MX hosts, Message-ID suffixes). Each user keeps its own
 * state, so nothing is shared between threads; the state must not be 0. */
#ifndef VL_RAND_H
#define VL_RAND_H

#include <stdint.h>

static inline uint64_t vl_xorshift64s(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

#endif
