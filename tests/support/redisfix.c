/* redisfix.c: a private redis-server for tests; see redisfix.h. */
#include "redisfix.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

static const char *find_server(void)
{
    static char path[512];
    const char *env = getenv("PATH");
    while (env && *env) {
        const char *colon = strchr(env, ':');
        size_t n = colon ? (size_t)(colon - env) : strlen(env);
        if (n > 0 && n < sizeof path - 16) {
            snprintf(path, sizeof path, "%.*s/redis-server", (int)n, env);
            if (access(path, X_OK) == 0) return path;
        }
        env = colon ? colon + 1 : NULL;
    }
    return access("/usr/bin/redis-server", X_OK) == 0 ? "/usr/bin/redis-server" : NULL;
}

static int ping(const char *sock)
{
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectUnixWithTimeout(sock, tv);
    if (!c) return -1;
    int ok = -1;
    if (!c->err) {
        redisReply *r = redisCommand(c, "PING");
        if (r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0) ok = 0;
        freeReplyObject(r);
    }
    redisFree(c);
    return ok;
}

int redisfix_start(redisfix_t *f)
{
    memset(f, 0, sizeof *f);
    f->pid = -1;
    const char *server = find_server();
    if (!server) {
        fprintf(stderr, "redisfix: redis-server not found in PATH or /usr/bin\n");
        return -1;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/volley-redis-XXXXXX",
             tmp && strlen(tmp) < 32 ? tmp : "/tmp");
    if (!mkdtemp(f->dir)) {
        fprintf(stderr, "redisfix: mkdtemp %s: %s\n", f->dir, strerror(errno));
        f->dir[0] = '\0';
        return -1;
    }
    snprintf(f->sock, sizeof f->sock, "%s/redis.sock", f->dir);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "redisfix: fork: %s\n", strerror(errno));
        redisfix_stop(f);
        return -1;
    }
    if (pid == 0) {
        /* The server's chatter would garble the test's TAP output. */
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execl(server, server, "--port", "0", "--unixsocket", f->sock, "--unixsocketperm", "700",
              "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", f->dir,
              (char *)NULL);
        _exit(127);
    }
    f->pid = pid;
    for (int i = 0; i < 200; i++) {
        if (ping(f->sock) == 0) return 0;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            f->pid = -1;
            fprintf(stderr, "redisfix: redis-server exited at start (status %d)\n", status);
            redisfix_stop(f);
            return -1;
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "redisfix: redis-server did not answer PING on %s within 10 s\n", f->sock);
    redisfix_stop(f);
    return -1;
}

void redisfix_stop(redisfix_t *f)
{
    if (f->pid > 0) {
        kill(f->pid, SIGTERM);
        int status;
        for (int i = 0; i < 100; i++) {
            if (waitpid(f->pid, &status, WNOHANG) == f->pid) {
                f->pid = -1;
                break;
            }
            struct timespec ts = {0, 50 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (f->pid > 0) {
            kill(f->pid, SIGKILL);
            waitpid(f->pid, &status, 0);
        }
        f->pid = -1;
    }
    if (f->dir[0]) {
        unlink(f->sock);
        rmdir(f->dir);
        f->dir[0] = '\0';
    }
}
