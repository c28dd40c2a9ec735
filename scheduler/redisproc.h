/* redisproc.h: a private redis-server for one campaign.
 *
 * `volley send` without --redis keeps a campaign's state in a redis-server of its own,
 * started here in the campaign's state directory: it listens only on a unix socket in that
 * directory (mode 0700, no TCP), appends every write to its AOF (fsync every second), and
 * a later start in the same directory resumes the data. The child is tied to volley's
 * life (PR_SET_PDEATHSIG), so a killed volley leaves no server behind.
 */
#ifndef VL_SCHED_REDISPROC_H
#define VL_SCHED_REDISPROC_H

#include <stddef.h>
#include <sys/types.h>

typedef struct sched_rproc sched_rproc_t;

/* Start redis-server (found on PATH, else /usr/bin/redis-server) for a campaign whose
 * state directory is dir (borrowed; created with mode 0700 if missing): unix socket
 * dir/redis.sock (unixsocketperm 700), no TCP (--port 0), appendonly yes with appendfsync
 * everysec, dir as its working directory (AOF and RDB live there), --daemonize no, logfile
 * dir/redis.log. Waits up to 10 s for PING to answer. A stale socket from a killed run is
 * removed first; a server already answering on that socket (another `send` of the same
 * campaign) is VL_ESTATE. Returns 0 and *out (caller frees with sched_rproc_stop), or a
 * VL_E* code with a message in err (errlen bytes, may be 0). Call it from the main thread:
 * PR_SET_PDEATHSIG fires when the thread that forked exits, not only the process. */
int sched_rproc_start(sched_rproc_t **out, const char *dir, char *err, size_t errlen);

/* The unix socket path (borrowed, valid until sched_rproc_stop). */
const char *sched_rproc_socket(const sched_rproc_t *p);

/* The server's process id (for tests and diagnostics). */
pid_t sched_rproc_pid(const sched_rproc_t *p);

/* Ask the server to SHUTDOWN (it writes its AOF), wait for the process (up to 10 s, then
 * SIGKILL), reap it, remove the socket and free p. NULL allowed. Blocks: call it when the
 * loop's work is done, not from a hot callback. */
void sched_rproc_stop(sched_rproc_t *p);

#endif
