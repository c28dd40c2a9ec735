#include "prio.h"

#include <errno.h>
#include <sched.h>

int vl_prio_background(void)
{
#ifdef SCHED_BATCH
    struct sched_param sp = {0};
    /* pid 0 is the calling thread: on Linux the policy is per thread. */
    return sched_setscheduler(0, SCHED_BATCH, &sp);
#else
    errno = ENOSYS;
    return -1;
#endif
}
