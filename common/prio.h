/* prio.h: keep helper threads from taking the CPU from the event loop.
 *
 * On Linux a thread that wakes up may preempt the thread running on its
 * CPU. volley's helpers (the render threads, the ingest thread, the
 * embedded redis-server) wake thousands of times a second, and when the
 * cores are all busy (a send on 2 cores beside its sink) each wake-up can
 * stop the loop thread, which bounds sending, in the middle of its I/O. A
 * SCHED_BATCH thread gets the same share of the CPU but does not preempt on
 * waking (sched(7)): the helpers run in the loop's gaps or on other cores.
 * Interleaved A/B on 2 cores, 300,000 rows against volley-sink, three sets
 * of 5-6 rounds: medians 2-5% more messages a second and 2-3% less CPU,
 * the batch build ahead in 13 of 16 rounds.
 */
#ifndef VL_PRIO_H
#define VL_PRIO_H

/* Make the calling thread a batch thread (SCHED_BATCH, nice unchanged);
 * threads and programs it starts afterwards inherit that. Lowering one's
 * own policy needs no privilege. 0, or -1 with errno where the system has
 * no SCHED_BATCH; callers go on either way, it only changes speed. */
int vl_prio_background(void);

#endif
