/* redisproc.c: a private redis-server for one campaign; see redisproc.h.
 *
 * Two sends of one campaign must never run two servers on one directory: the second
 * would unlink the first one's socket and both would append to the same AOF. A lock file
 * (flock) in the directory guards it, and the server inherits the lock, so the directory
 * stays locked for as long as any server of it lives, even a server still shutting down
 * after its volley was killed.
 */
#include "scheduler/redisproc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "err.h"
#include "fs.h"
#include "log.h"
#include "prio.h"

struct sched_rproc {
    pid_t pid;
    int lockfd;
    char dir[PATH_MAX];
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static const char *find_server(char *buf, size_t n)
{
    const char *env = getenv("PATH");
    while (env && *env) {
        const char *colon = strchr(env, ':');
        size_t len = colon ? (size_t)(colon - env) : strlen(env);
        if (len > 0 && len + 14 < n) {
            snprintf(buf, n, "%.*s/redis-server", (int)len, env);
            if (access(buf, X_OK) == 0) return buf;
        }
        env = colon ? colon + 1 : NULL;
    }
    return access("/usr/bin/redis-server", X_OK) == 0 ? "/usr/bin/redis-server" : NULL;
}

/* What the socket says to PING: 1 PONG, 2 any other answer (e.g. -LOADING while the
 * server reads its AOF), 0 nobody answers. */
static int probe(const char *sock, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectUnixWithTimeout(sock, tv);
    if (!c) return 0;
    int res = 0;
    if (!c->err) {
        redisSetTimeout(c, tv);
        redisReply *r = redisCommand(c, "PING");
        if (r) {
            res = r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0 ? 1 : 2;
            freeReplyObject(r);
        }
    }
    redisFree(c);
    return res;
}

/* The last line of the server's log, to say why it did not start. */
static void log_tail(const char *dir, char *out, size_t n)
{
    out[0] = '\0';
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/redis.log", dir);
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        size_t l = strlen(line);
        while (l > 0 && (line[l - 1] == '\n' || line[l - 1] == '\r'))
            line[--l] = '\0';
        if (l > 0) snprintf(out, n, "%.*s", (int)(n > 1 ? n - 1 : 0), line);
    }
    fclose(f);
}

static void reap(pid_t pid, int wait_ms)
{
    int status;
    for (int waited = 0; waited < wait_ms; waited += 20) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid || (w < 0 && errno == ECHILD)) return;
        sleep_ms(20);
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
}

int sched_rproc_start(sched_rproc_t **out, const char *dir, char *err, size_t errlen)
{
    *out = NULL;
    char server_buf[PATH_MAX];
    const char *server = find_server(server_buf, sizeof server_buf);
    if (!server) {
        vl_set_err(err, errlen, "redis-server not found on PATH or in /usr/bin");
        return VL_ENOENT;
    }
    int rc = vl_mkdirs(dir, 0700);
    if (rc < 0) {
        vl_set_err(err, errlen, "cannot create state directory %s: %s", dir, strerror(-rc));
        return VL_EIO;
    }
    sched_rproc_t *p = calloc(1, sizeof *p);
    if (!p) {
        vl_set_err(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    p->pid = -1;
    p->lockfd = -1;
    /* redis-server changes to its --dir, so every path given to it must be absolute. */
    if (!realpath(dir, p->dir)) {
        vl_set_err(err, errlen, "state directory %s: %s", dir, strerror(errno));
        free(p);
        return VL_EIO;
    }
    if (snprintf(p->sock, sizeof p->sock, "%s/redis.sock", p->dir) >= (int)sizeof p->sock) {
        vl_set_err(err, errlen, "state directory path %s is too long for a unix socket", p->dir);
        free(p);
        return VL_EINVAL;
    }
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/redis.lock", p->dir);
    p->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (p->lockfd < 0) {
        vl_set_err(err, errlen, "cannot open %s: %s", path, strerror(errno));
        free(p);
        return VL_EIO;
    }
    /* The lock file names the volley that holds it. A locked directory whose volley is
     * alive is another send; otherwise the server of a killed volley is shutting down
     * (it got SIGTERM when its parent died, and its socket may answer for a moment):
     * give it 10 s. */
    int locked = 0;
    for (int waited = 0; waited <= 10000; waited += 100) {
        if (flock(p->lockfd, LOCK_EX | LOCK_NB) == 0) {
            locked = 1;
            break;
        }
        if (errno != EWOULDBLOCK && errno != EINTR) break;
        char pidbuf[32] = "";
        ssize_t n = pread(p->lockfd, pidbuf, sizeof pidbuf - 1, 0);
        long holder = n > 0 ? strtol(pidbuf, NULL, 10) : 0;
        int holder_alive = holder > 0 && (kill((pid_t)holder, 0) == 0 || errno == EPERM);
        if (holder_alive && probe(p->sock, 500)) break;
        sleep_ms(100);
    }
    if (!locked) {
        vl_set_err(err, errlen,
                   "a redis-server already runs for state directory %s (another volley send of "
                   "this campaign?)",
                   p->dir);
        close(p->lockfd);
        free(p);
        return VL_ESTATE;
    }
    /* Locked, yet something answers: the server of a killed volley on its way out, or
     * one started by hand on our socket. Give the first kind time to leave. */
    for (int waited = 0; waited < 10000 && probe(p->sock, 200); waited += 100)
        sleep_ms(100);
    if (probe(p->sock, 500)) {
        vl_set_err(err, errlen, "a redis-server already answers on %s", p->sock);
        close(p->lockfd);
        free(p);
        return VL_ESTATE;
    }
    unlink(p->sock); /* stale, from a killed run */
    {
        char pidbuf[32];
        int n = snprintf(pidbuf, sizeof pidbuf, "%ld\n", (long)getpid());
        if (ftruncate(p->lockfd, 0) != 0 || pwrite(p->lockfd, pidbuf, (size_t)n, 0) != n)
            VL_DEBUG("could not write our pid into %s", path);
    }

    char logfile[PATH_MAX + 16];
    snprintf(logfile, sizeof logfile, "%s/redis.log", p->dir);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        vl_set_err(err, errlen, "fork: %s", strerror(errno));
        close(p->lockfd);
        free(p);
        return VL_EIO;
    }
    if (pid == 0) {
        /* The server dies with volley, and keeps the lock while it lives. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(1);
        /* Its own process group: a Ctrl-C meant for volley must not kill the server
         * before volley has recorded its last results. */
        setpgid(0, 0);
        int fl = fcntl(p->lockfd, F_GETFD);
        if (fl >= 0) fcntl(p->lockfd, F_SETFD, fl & ~FD_CLOEXEC);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
            if (null > 2) close(null);
        }
        /* The AOF is rewritten (compacted) only past 1 GB, about a 2.5M-row
         * campaign: the default 64 MB rewrote a 1M-row campaign's dataset
         * three times while it sent, a fork and a full dump each, on the cores
         * the sending needs. */
        /* Redis answers the loop thread, which is what bounds a send: it
         * must not preempt it (prio.h). Inherited across exec. */
        vl_prio_background();
        execl(server, server, "--port", "0", "--unixsocket", p->sock, "--unixsocketperm", "700",
              "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--dir", p->dir,
              "--auto-aof-rewrite-min-size", "1gb", "--daemonize", "no", "--logfile", logfile,
              (char *)NULL);
        _exit(127);
    }
    p->pid = pid;
    /* 10 s for a first answer; once it answers -LOADING, wait as long as it loads. */
    int answered = 0;
    for (int waited = 0; answered || waited < 10000; waited += 50) {
        int pr = probe(p->sock, 200);
        if (pr == 1) {
            *out = p;
            VL_INFO("redis-server %d started on %s", (int)pid, p->sock);
            return 0;
        }
        if (pr == 2) answered = 1;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            char tail[400];
            log_tail(p->dir, tail, sizeof tail);
            vl_set_err(err, errlen, "redis-server exited at start (%s %d)%s%s",
                       WIFEXITED(status) ? "status" : "signal",
                       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                       tail[0] ? ": " : "", tail);
            close(p->lockfd);
            free(p);
            return VL_EIO;
        }
        sleep_ms(50);
    }
    vl_set_err(err, errlen, "redis-server did not answer on %s within 10 s (see %s)", p->sock,
               logfile);
    kill(pid, SIGKILL);
    reap(pid, 0);
    unlink(p->sock);
    close(p->lockfd);
    free(p);
    return VL_ETIMEOUT;
}

const char *sched_rproc_socket(const sched_rproc_t *p)
{
    return p->sock;
}

pid_t sched_rproc_pid(const sched_rproc_t *p)
{
    return p->pid;
}

void sched_rproc_stop(sched_rproc_t *p)
{
    if (!p) return;
    if (p->pid > 0) {
        /* SHUTDOWN makes the server flush its AOF; it answers by closing the connection. */
        int asked = 0;
        struct timeval tv = {2, 0};
        redisContext *c = redisConnectUnixWithTimeout(p->sock, tv);
        if (c && !c->err) {
            redisSetTimeout(c, (struct timeval){10, 0});
            redisReply *r = redisCommand(c, "SHUTDOWN");
            if (r) {
                if (r->type == REDIS_REPLY_ERROR)
                    VL_WARN("redis-server refused SHUTDOWN: %s", r->str);
                else
                    asked = 1;
                freeReplyObject(r);
            } else {
                asked = 1; /* the usual answer: the connection closes */
            }
        }
        if (c) redisFree(c);
        if (!asked) kill(p->pid, SIGTERM);
        reap(p->pid, 10000);
        p->pid = -1;
    }
    unlink(p->sock);
    if (p->lockfd >= 0) close(p->lockfd);
    free(p);
}
