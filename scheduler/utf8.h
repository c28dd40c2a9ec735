/* utf8.h: the UTF-8 check the scheduler's text encoders use, public for
 * writers that must keep their output valid UTF-8 (reports). */
#ifndef VL_SCHED_UTF8_H
#define VL_SCHED_UTF8_H

#include <stddef.h>

/* Length of the valid UTF-8 sequence at s (n > 0 bytes left), or 0 when it
 * is not one (overlong, surrogate, past U+10FFFF, cut short). */
size_t sched_utf8_len(const unsigned char *s, size_t n);

#endif
