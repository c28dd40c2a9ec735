/* redisfix.h: a private redis-server for tests.
 *
 * Starts redis-server (from PATH, else /usr/bin) listening only on a unix socket in a
 * fresh mkdtemp directory, with persistence off, and waits until it answers PING. Nothing
 * listens on TCP (--port 0), so parallel tests never collide and nothing is exposed.
 */
#ifndef REDISFIX_H
#define REDISFIX_H

#include <sys/types.h>

typedef struct redisfix {
    pid_t pid;
    char dir[64];   /* the temporary directory (removed by redisfix_stop) */
    char sock[128]; /* the unix socket path to connect to */
} redisfix_t;

/* Start the server and wait (up to 10 s) for PING to answer. Returns 0, or -1 with a
 * message on stderr (redis-server missing, did not start). */
int redisfix_start(redisfix_t *f);

/* Kill the server (SIGTERM, then SIGKILL after 5 s), reap it and remove the directory.
 * Safe to call on a fixture that failed to start. */
void redisfix_stop(redisfix_t *f);

#endif
