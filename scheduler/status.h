/* status.h: the status of a row's result, as an enum.
 *
 * Results store the status as its name (the first column, result.h); readers
 * turn it into this enum once, so nothing after them compares strings. The
 * order is the one reports list statuses in: the final ones first.
 */
#ifndef VL_SCHED_STATUS_H
#define VL_SCHED_STATUS_H

#include <stddef.h>

typedef enum sched_status {
    SCHED_ST_DELIVERED = 0,
    SCHED_ST_BOUNCED,
    SCHED_ST_FAILED,
    SCHED_ST_SUPPRESSED,
    SCHED_ST_REJECTED,
    SCHED_ST_CANCELLED, /* the last final status */
    SCHED_ST_PENDING,   /* not tried yet: the row has no result */
    SCHED_ST_DEFERRED,  /* tried, to be tried again */
    SCHED_ST_UNKNOWN,   /* a result that could not be read */
    SCHED_ST_LAST
} sched_status_t;

/* The final statuses are SCHED_ST_DELIVERED .. SCHED_ST_CANCELLED. */
enum { SCHED_NFINAL = SCHED_ST_CANCELLED + 1 };

/* The name of s ("delivered", ..., "pending", "deferred", "unknown"); static,
 * never NULL ("unknown" for a value out of range). */
const char *sched_status_name(sched_status_t s);

/* The status named by s (len bytes, not NUL-terminated), SCHED_ST_UNKNOWN for
 * any other text. */
sched_status_t sched_status_parse(const char *s, size_t len);

#endif
