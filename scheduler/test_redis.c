/* test_redis.c: the Redis client on libuv and the embedded redis-server, against real
 * redis-server processes (redisfix, and sched_rproc itself). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "redisfix.h"
#include "scheduler/redis.h"
#include "scheduler/redisproc.h"

/* ---- helpers --------------------------------------------------------------------------- */

struct rec {
    int calls;
    int err;
    int type;
    long long integer;
    char str[256];
};

struct state_log {
    int ups, downs;
    int connected;
    char last_reason[300];
    char first_down[300]; /* the reason given by the first disconnected report */
};

static void on_state(sched_redis_t *r, int connected, const char *reason, void *ud)
{
    struct state_log *s = ud;
    if (connected)
        s->ups++;
    else if (s->downs++ == 0)
        snprintf(s->first_down, sizeof s->first_down, "%s", reason ? reason : "");
    s->connected = connected;
    snprintf(s->last_reason, sizeof s->last_reason, "%s", reason ? reason : "");
}

static void on_reply(sched_redis_t *r, redisReply *reply, void *priv, int err, const char *es)
{
    struct rec *rc = priv;
    rc->calls++;
    rc->err = err;
    rc->type = reply ? reply->type : -1;
    if (err) assert_null(reply);
    if (!err) assert_non_null(reply);
    if (err) assert_non_null(es);
    rc->str[0] = '\0';
    if (reply && reply->type == REDIS_REPLY_INTEGER) rc->integer = reply->integer;
    if (reply && reply->str) snprintf(rc->str, sizeof rc->str, "%s", reply->str);
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 && reply->element[0]->str)
        snprintf(rc->str, sizeof rc->str, "%s", reply->element[0]->str);
}

static void on_stop_timer(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

/* Run the loop until *flag >= want or ms pass. Returns 1 if the condition was met. */
static int run_until(uv_loop_t *loop, const int *flag, int want, int ms)
{
    int expired = 0;
    uv_timer_t t;
    uv_timer_init(loop, &t);
    t.data = &expired;
    uv_timer_start(&t, on_stop_timer, (uint64_t)ms, 0);
    while (*flag < want && !expired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *flag >= want;
}

static void sleep_loop(uv_loop_t *loop, int ms)
{
    int never = 0;
    run_until(loop, &never, 1, ms);
}

/* Close the client and check that every handle is gone. */
static void close_all(uv_loop_t *loop, sched_redis_t *r)
{
    sched_redis_close(r);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

static sched_redis_t *connect_to(uv_loop_t *loop, const char *url, struct state_log *sl,
                                 int cmd_timeout_ms)
{
    sched_redis_opts_t o = {.cmd_timeout_ms = cmd_timeout_ms,
                            .backoff_base_ms = 20,
                            .backoff_max_ms = 200,
                            .on_state = on_state,
                            .ud = sl};
    sched_redis_t *r = NULL;
    char err[256];
    assert_int_equal(sched_redis_new(&r, loop, url, &o, err, sizeof err), 0);
    assert_false(sched_redis_connected(r)); /* connecting happens on the loop */
    assert_true(run_until(loop, &sl->ups, 1, 5000));
    assert_true(sched_redis_connected(r));
    return r;
}

static int fix_setup(void **state)
{
    redisfix_t *f = calloc(1, sizeof *f);
    if (!f || redisfix_start(f) < 0) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int fix_teardown(void **state)
{
    redisfix_t *f = *state;
    redisfix_stop(f);
    free(f);
    return 0;
}

static redisReply *sync_cmd(const char *url, const char *fmt, ...)
{
    char err[256];
    redisContext *c = sched_redis_connect_sync(url, 2000, err, sizeof err);
    if (!c) fail_msg("connect_sync %s: %s", url, err);
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return rep;
}

/* ---- URL parsing ------------------------------------------------------------------------ */

static void test_url_good(void **state)
{
    sched_redis_url_t u;
    char err[128];
    assert_int_equal(sched_redis_url_parse("redis://127.0.0.1:6380/2", &u, err, sizeof err), 0);
    assert_false(u.is_unix);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 2);
    assert_string_equal(u.pass, "");

    assert_int_equal(sched_redis_url_parse("redis://localhost", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "localhost");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);

    assert_int_equal(sched_redis_url_parse("redis://alice:p%40ss%3Aw%2Fd@db.example:7000/15", &u,
                                           err, sizeof err),
                     0);
    assert_string_equal(u.user, "alice");
    assert_string_equal(u.pass, "p@ss:w/d");
    assert_string_equal(u.host, "db.example");
    assert_int_equal(u.port, 7000);
    assert_int_equal(u.db, 15);

    /* Password only, with and without the leading colon. */
    assert_int_equal(sched_redis_url_parse("redis://:secret@h", &u, err, sizeof err), 0);
    assert_string_equal(u.user, "");
    assert_string_equal(u.pass, "secret");
    assert_int_equal(sched_redis_url_parse("redis://secret@h:1/", &u, err, sizeof err), 0);
    assert_string_equal(u.user, "");
    assert_string_equal(u.pass, "secret");
    assert_int_equal(u.port, 1);
    assert_int_equal(u.db, 0);

    /* A raw '@' in the password: the last '@' ends the user info. */
    assert_int_equal(sched_redis_url_parse("redis://u:a@b@h", &u, err, sizeof err), 0);
    assert_string_equal(u.pass, "a@b");
    assert_string_equal(u.host, "h");

    assert_int_equal(sched_redis_url_parse("redis://[::1]:6390?db=4", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 6390);
    assert_int_equal(u.db, 4);

    assert_int_equal(sched_redis_url_parse("unix:///run/redis/r.sock", &u, err, sizeof err), 0);
    assert_true(u.is_unix);
    assert_string_equal(u.path, "/run/redis/r.sock");
    assert_int_equal(u.db, 0);

    assert_int_equal(sched_redis_url_parse("unix:///tmp/a%20b.sock?db=3", &u, err, sizeof err), 0);
    assert_string_equal(u.path, "/tmp/a b.sock");
    assert_int_equal(u.db, 3);

    assert_int_equal(sched_redis_url_parse("unix://bob:pw@/tmp/x.sock", &u, err, sizeof err), 0);
    assert_string_equal(u.user, "bob");
    assert_string_equal(u.pass, "pw");
    assert_string_equal(u.path, "/tmp/x.sock");

    /* A plain path is taken as it is: no percent-decoding. */
    assert_int_equal(sched_redis_url_parse("/var/lib/x%41.sock", &u, err, sizeof err), 0);
    assert_true(u.is_unix);
    assert_string_equal(u.path, "/var/lib/x%41.sock");
}

static void test_url_bad(void **state)
{
    static const char *bad[] = {
        "",
        "localhost:6379",
        "http://h:1",
        "rediss://h:6380",
        "redis://",
        "redis://:pw@",
        "redis://h:0",
        "redis://h:65536",
        "redis://h:12x",
        "redis://h:",
        "redis://h/abc",
        "redis://h/-1",
        "redis://h?foo=1",
        "redis://h?db=x",
        "redis://[::1",
        "redis://[::1]x",
        "redis://u:p%4@h",
        "redis://u:p%zz@h",
        "redis://u:p%00@h",
        "unix://",
        "unix://relative.sock",
        "unix:///tmp/x.sock?db=",
        "unix:///tmp/x%2.sock",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sched_redis_url_t u;
        char err[128] = "";
        int rc = sched_redis_url_parse(bad[i], &u, err, sizeof err);
        if (rc != VL_EINVAL) fail_msg("URL '%s' accepted (rc %d)", bad[i], rc);
        assert_true(err[0] != '\0');
    }
    /* The message never repeats the password. */
    sched_redis_url_t u;
    char err[128];
    assert_int_equal(sched_redis_url_parse("redis://u:hunter2@h:99999", &u, err, sizeof err),
                     VL_EINVAL);
    assert_null(strstr(err, "hunter2"));
    /* A password too long for the buffer is an error, not a truncation. */
    char url[600];
    snprintf(url, sizeof url, "redis://:%0300d@h", 7);
    assert_int_equal(sched_redis_url_parse(url, &u, err, sizeof err), VL_EINVAL);
}

/* ---- commands --------------------------------------------------------------------------- */

#define NPIPE 200

struct order {
    int next; /* the index expected next */
    int bad;  /* callbacks out of order or with a wrong value */
    int calls[NPIPE];
};

struct order_item {
    struct order *o;
    int i;
};

static void on_ordered(sched_redis_t *r, redisReply *reply, void *priv, int err, const char *es)
{
    struct order_item *it = priv;
    it->o->calls[it->i]++;
    if (it->i != it->o->next) it->o->bad++;
    it->o->next++;
    /* INCR answers 1, 2, 3... in the order the commands were sent. */
    if (err || !reply || reply->type != REDIS_REPLY_INTEGER || reply->integer != it->i + 1)
        it->o->bad++;
}

static void test_commands(void **state)
{
    redisfix_t *f = *state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct state_log sl = {0};
    sched_redis_t *r = connect_to(&loop, f->sock, &sl, 2000);
    assert_int_equal(sl.ups, 1);
    assert_int_equal(sl.downs, 0);
    struct sigaction sa;
    assert_int_equal(sigaction(SIGPIPE, NULL, &sa), 0);
    assert_true(sa.sa_handler == SIG_IGN);

    struct rec a = {0}, b = {0}, c = {0}, d = {0};
    assert_int_equal(sched_redis_cmd(r, on_reply, &a, "SET %s %b", "k1", "v\0x", (size_t)3), 0);
    assert_int_equal(sched_redis_cmd(r, on_reply, &b, "GET %s", "k1"), 0);
    /* An error reply is a reply: err 0, type ERROR. */
    assert_int_equal(sched_redis_cmd(r, on_reply, &c, "INCR %s", "k1"), 0);
    const char *argv[] = {"STRLEN", "k1"};
    assert_int_equal(sched_redis_cmdargv(r, on_reply, &d, 2, argv, NULL), 0);
    assert_int_equal(sched_redis_pending(r), 4);
    /* Callbacks never run inside the call that sends. */
    assert_int_equal(a.calls + b.calls + c.calls + d.calls, 0);
    assert_true(run_until(&loop, &d.calls, 1, 3000));
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.err, 0);
    assert_string_equal(a.str, "OK");
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.type, REDIS_REPLY_STRING);
    assert_string_equal(b.str, "v"); /* the NUL inside the value ends the C string */
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.err, 0);
    assert_int_equal(c.type, REDIS_REPLY_ERROR);
    assert_int_equal(d.integer, 3);
    assert_int_equal(sched_redis_pending(r), 0);

    /* A pipeline of many commands: one callback each, in order. */
    static struct order o;
    static struct order_item items[NPIPE];
    memset(&o, 0, sizeof o);
    for (int i = 0; i < NPIPE; i++) {
        items[i] = (struct order_item){&o, i};
        assert_int_equal(sched_redis_cmd(r, on_ordered, &items[i], "INCR pipe"), 0);
    }
    assert_true(run_until(&loop, &o.next, NPIPE, 5000));
    sleep_loop(&loop, 50);
    assert_int_equal(o.bad, 0);
    for (int i = 0; i < NPIPE; i++)
        assert_int_equal(o.calls[i], 1);

    /* A NULL callback is allowed (the reply is dropped). */
    assert_int_equal(sched_redis_cmd(r, NULL, NULL, "SET %s %s", "quiet", "1"), 0);
    struct rec e = {0};
    assert_int_equal(sched_redis_cmd(r, on_reply, &e, "GET quiet"), 0);
    assert_true(run_until(&loop, &e.calls, 1, 3000));
    assert_string_equal(e.str, "1");
    assert_int_equal(sched_redis_cmd(r, on_reply, &e, "GET %q", 1), VL_EINVAL);
    assert_int_equal(sched_redis_cmdargv(r, on_reply, &e, 0, argv, NULL), VL_EINVAL);

    close_all(&loop, r);
    assert_int_equal(sl.downs, 0); /* a close reports nothing */
    assert_int_equal(e.calls, 1);
}

static const char *const script_echo = "return {KEYS[1], ARGV[1], ARGV[2]}";

static void test_eval_noscript(void **state)
{
    redisfix_t *f = *state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct state_log sl = {0};
    sched_redis_t *r = connect_to(&loop, f->sock, &sl, 2000);

    struct rec flush = {0};
    assert_int_equal(sched_redis_cmd(r, on_reply, &flush, "SCRIPT FLUSH"), 0);
    assert_true(run_until(&loop, &flush.calls, 1, 3000));

    const char *argv[] = {"key-one", "arg\0one", "two"};
    const size_t lens[] = {7, 7, 3};
    for (int round = 0; round < 3; round++) {
        struct rec e = {0};
        assert_int_equal(sched_redis_eval(r, on_reply, &e, script_echo, 1, 2, argv, lens), 0);
        assert_true(run_until(&loop, &e.calls, 1, 3000));
        sleep_loop(&loop, 20);
        assert_int_equal(e.calls, 1);
        assert_int_equal(e.err, 0);
        assert_int_equal(e.type, REDIS_REPLY_ARRAY);
        assert_string_equal(e.str, "key-one");
        /* Round 0 goes EVALSHA -> NOSCRIPT -> EVAL, round 1 EVALSHA alone; then flush
         * the cache so round 2 goes through NOSCRIPT again. */
        if (round == 1) {
            struct rec fl = {0};
            assert_int_equal(sched_redis_cmd(r, on_reply, &fl, "SCRIPT FLUSH"), 0);
            assert_true(run_until(&loop, &fl.calls, 1, 3000));
        }
    }
    /* The EVALSHA count proves the cache is used: 3 rounds, all EVALSHA first; 2 EVALs. */
    char buf[4096] = "";
    redisReply *rep = sync_cmd(f->sock, "INFO commandstats");
    assert_non_null(rep);
    snprintf(buf, sizeof buf, "%s", rep->str);
    freeReplyObject(rep);
    assert_non_null(strstr(buf, "cmdstat_evalsha:calls=3,"));
    assert_non_null(strstr(buf, "cmdstat_eval:calls=2,"));

    /* A script error is an error reply, not a transport error. */
    struct rec bad = {0};
    static const char *const script_bad = "return redis.call('INCR', KEYS[1])";
    const char *k[] = {"notanumber"};
    rep = sync_cmd(f->sock, "SET notanumber abc");
    freeReplyObject(rep);
    assert_int_equal(sched_redis_eval(r, on_reply, &bad, script_bad, 1, 0, k, NULL), 0);
    assert_true(run_until(&loop, &bad.calls, 1, 3000));
    assert_int_equal(bad.err, 0);
    assert_int_equal(bad.type, REDIS_REPLY_ERROR);
    close_all(&loop, r);
}

static void test_timeout(void **state)
{
    redisfix_t *f = *state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct state_log sl = {0};
    sched_redis_t *r = connect_to(&loop, f->sock, &sl, 100);

    /* BLPOP on an empty list answers (nil) after 0.5 s: long past the 100 ms timeout. */
    struct rec slow = {0};
    uint64_t t0 = uv_now(&loop);
    assert_int_equal(sched_redis_cmd(r, on_reply, &slow, "BLPOP nothing 0.5"), 0);
    assert_true(run_until(&loop, &slow.calls, 1, 3000));
    uint64_t dt = uv_now(&loop) - t0;
    assert_int_equal(slow.err, VL_ETIMEOUT);
    assert_true(dt >= 90 && dt < 450);
    assert_int_equal(sched_redis_pending(r), 0);
    /* The late reply arrives and is dropped; no second callback. */
    sleep_loop(&loop, 600);
    assert_int_equal(slow.calls, 1);
    assert_true(sched_redis_connected(r));
    struct rec ping = {0};
    assert_int_equal(sched_redis_cmd(r, on_reply, &ping, "PING"), 0);
    assert_true(run_until(&loop, &ping.calls, 1, 3000));
    assert_int_equal(ping.err, 0);
    assert_string_equal(ping.str, "PONG");

    /* A timed-out command still waiting for its reply when the client closes. */
    struct rec slow2 = {0};
    assert_int_equal(sched_redis_cmd(r, on_reply, &slow2, "BLPOP nothing 1"), 0);
    assert_true(run_until(&loop, &slow2.calls, 1, 3000));
    assert_int_equal(slow2.err, VL_ETIMEOUT);
    close_all(&loop, r);
    assert_int_equal(slow2.calls, 1);
}

static void test_dead_connection(void **state)
{
    redisfix_t *f = *state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct state_log sl = {0};
    sched_redis_opts_t o = {.cmd_timeout_ms = 100,
                            .dead_after_ms = 300,
                            .backoff_base_ms = 20,
                            .on_state = on_state,
                            .ud = &sl};
    sched_redis_t *r = NULL;
    char err[256];
    assert_int_equal(sched_redis_new(&r, &loop, f->sock, &o, err, sizeof err), 0);
    assert_true(run_until(&loop, &sl.ups, 1, 3000));
    /* Nothing comes back for 2 s: a timeout at 100 ms, then the watchdog drops the
     * connection at 300 ms and the client reconnects. */
    struct rec slow = {0};
    uint64_t t0 = uv_now(&loop);
    assert_int_equal(sched_redis_cmd(r, on_reply, &slow, "BLPOP nothing 2"), 0);
    assert_true(run_until(&loop, &sl.downs, 1, 3000));
    uint64_t dt = uv_now(&loop) - t0;
    assert_true(dt >= 280 && dt < 1500);
    assert_int_equal(slow.calls, 1);
    assert_int_equal(slow.err, VL_ETIMEOUT);
    assert_non_null(strstr(sl.first_down, "no reply"));
    assert_true(run_until(&loop, &sl.ups, 2, 3000));
    struct rec ping = {0};
    assert_int_equal(sched_redis_cmd(r, on_reply, &ping, "PING"), 0);
    assert_true(run_until(&loop, &ping.calls, 1, 3000));
    assert_string_equal(ping.str, "PONG");
    close_all(&loop, r);
}

/* ---- losing the server ---------------------------------------------------------------- */

static void test_server_killed(void **state)
{
    redisfix_t *f = calloc(1, sizeof *f);
    assert_int_equal(redisfix_start(f), 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct state_log sl = {0};
    sched_redis_t *r = connect_to(&loop, f->sock, &sl, 10000);

    struct rec p[3] = {{0}};
    for (int i = 0; i < 3; i++)
        assert_int_equal(sched_redis_cmd(r, on_reply, &p[i], "BLPOP nothing 5"), 0);
    sleep_loop(&loop, 50); /* let them reach the server */
    redisfix_stop(f);
    assert_true(run_until(&loop, &sl.downs, 1, 3000));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(p[i].calls, 1);
        assert_int_equal(p[i].err, VL_EREDIS);
    }
    assert_false(sl.connected);
    assert_non_null(strstr(sl.first_down, "connection lost"));
    assert_false(sched_redis_connected(r));
    /* While down, commands are refused at once and get no callback. */
    struct rec q = {0};
    assert_int_equal(sched_redis_cmd(r, on_reply, &q, "PING"), VL_EREDIS);
    /* Reconnect attempts keep failing and are reported, without piling up. */
    assert_true(run_until(&loop, &sl.downs, 3, 3000));
    assert_int_equal(sl.ups, 1);
    assert_non_null(strstr(sl.last_reason, "connect failed"));
    close_all(&loop, r);
    assert_int_equal(q.calls, 0);
    free(f);
}

static void make_tmpdir(char *dir, size_t n)
{
    snprintf(dir, n, "/tmp/volley-test-redis-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void rm_rf(const char *dir)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_reconnect_and_persist(void **state)
{
    char dir[64];
    make_tmpdir(dir, sizeof dir);
    char sdir[96];
    snprintf(sdir, sizeof sdir, "%s/state", dir); /* created by sched_rproc_start */
    sched_rproc_t *p = NULL;
    char err[256];
    assert_int_equal(sched_rproc_start(&p, sdir, err, sizeof err), 0);
    struct stat st;
    assert_int_equal(stat(sdir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    char sock[100];
    snprintf(sock, sizeof sock, "%s", sched_rproc_socket(p));
    assert_int_equal(stat(sock, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));

    uv_loop_t loop;
    uv_loop_init(&loop);
    struct state_log sl = {0};
    char url[160];
    snprintf(url, sizeof url, "unix://%s?db=2", sock);
    sched_redis_t *r = connect_to(&loop, url, &sl, 2000);
    struct rec w = {0};
    assert_int_equal(sched_redis_cmd(r, on_reply, &w, "SET persisted yes"), 0);
    assert_true(run_until(&loop, &w.calls, 1, 3000));
    assert_int_equal(w.err, 0);

    /* A second server for the same directory is refused while the first runs. */
    sched_rproc_t *p2 = NULL;
    assert_int_equal(sched_rproc_start(&p2, sdir, err, sizeof err), VL_ESTATE);
    assert_null(p2);
    assert_non_null(strstr(err, "already"));

    sched_rproc_stop(p);
    assert_int_equal(stat(sock, &st), -1); /* the socket is gone */
    assert_true(run_until(&loop, &sl.downs, 1, 3000));
    assert_false(sched_redis_connected(r));

    /* A new server on the same socket: the client comes back by itself, and the data
     * written before the stop is there (appendonly). */
    assert_int_equal(sched_rproc_start(&p, sdir, err, sizeof err), 0);
    assert_true(run_until(&loop, &sl.ups, 2, 5000));
    struct rec g = {0};
    assert_int_equal(sched_redis_cmd(r, on_reply, &g, "GET persisted"), 0);
    assert_true(run_until(&loop, &g.calls, 1, 3000));
    assert_int_equal(g.err, 0);
    assert_string_equal(g.str, "yes");
    /* It was written to db 2 (the URL's ?db=2). */
    redisReply *rep = sync_cmd(sock, "EXISTS persisted");
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    close_all(&loop, r);

    /* A server killed without a stop leaves a stale socket; the next start removes it. */
    pid_t pid = sched_rproc_pid(p);
    assert_true(pid > 0);
    kill(pid, SIGKILL);
    sched_rproc_stop(p); /* reaps it */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    assert_int_equal(stat(sock, &st), 0);
    sched_rproc_t *p3 = NULL;
    assert_int_equal(sched_rproc_start(&p3, sdir, err, sizeof err), 0);
    rep = sync_cmd(url, "GET persisted");
    assert_non_null(rep);
    assert_string_equal(rep->str, "yes");
    freeReplyObject(rep);
    sched_rproc_stop(p3);
    rm_rf(dir);
}

static int proc_alive(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

/* A volley killed with SIGKILL takes its redis-server with it (PR_SET_PDEATHSIG), and
 * the next start finds the directory free. */
static void test_rproc_dies_with_parent(void **state)
{
    char dir[64], err[256];
    make_tmpdir(dir, sizeof dir);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        sched_rproc_t *p = NULL;
        pid_t spid = -1;
        if (sched_rproc_start(&p, dir, err, sizeof err) == 0) spid = sched_rproc_pid(p);
        if (write(fds[1], &spid, sizeof spid) != sizeof spid) _exit(1);
        pause();
        _exit(0);
    }
    close(fds[1]);
    pid_t spid = -1;
    assert_int_equal(read(fds[0], &spid, sizeof spid), (ssize_t)sizeof spid);
    close(fds[0]);
    assert_true(spid > 0);
    assert_true(proc_alive(spid));
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    int gone = 0;
    for (int i = 0; i < 200 && !gone; i++) {
        gone = !proc_alive(spid);
        if (!gone) usleep(25000);
    }
    assert_true(gone);
    sched_rproc_t *p = NULL;
    assert_int_equal(sched_rproc_start(&p, dir, err, sizeof err), 0);
    sched_rproc_stop(p);
    rm_rf(dir);
}

static void test_nobody_listens(void **state)
{
    char dir[64];
    make_tmpdir(dir, sizeof dir);
    uv_loop_t loop;
    uv_loop_init(&loop);

    /* No socket file at all. */
    struct state_log sl = {0};
    sched_redis_opts_t o = {
        .backoff_base_ms = 10, .backoff_max_ms = 50, .on_state = on_state, .ud = &sl};
    char url[100], err[256];
    snprintf(url, sizeof url, "%s/missing.sock", dir);
    sched_redis_t *r = NULL;
    assert_int_equal(sched_redis_new(&r, &loop, url, &o, err, sizeof err), 0);
    assert_true(run_until(&loop, &sl.downs, 2, 3000));
    assert_int_equal(sl.ups, 0);
    assert_non_null(strstr(sl.last_reason, "connect failed"));
    close_all(&loop, r);

    /* A socket file nobody listens on (bound, never listening). */
    uv_loop_init(&loop);
    memset(&sl, 0, sizeof sl);
    snprintf(url, sizeof url, "%s/dead.sock", dir);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", url);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(sched_redis_new(&r, &loop, url, &o, err, sizeof err), 0);
    assert_true(run_until(&loop, &sl.downs, 1, 3000));
    assert_int_equal(sl.ups, 0);
    close_all(&loop, r);

    /* A server that accepts but never answers: the connect timeout reports it. */
    uv_loop_init(&loop);
    memset(&sl, 0, sizeof sl);
    assert_int_equal(listen(fd, 8), 0);
    o.connect_timeout_ms = 150;
    assert_int_equal(sched_redis_new(&r, &loop, url, &o, err, sizeof err), 0);
    assert_true(run_until(&loop, &sl.downs, 1, 3000));
    assert_int_equal(sl.ups, 0);
    assert_non_null(strstr(sl.last_reason, "timed out"));
    close_all(&loop, r);
    close(fd);

    /* A TCP port nobody listens on (a port we just bound and released). */
    uv_loop_init(&loop);
    memset(&sl, 0, sizeof sl);
    int tfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    assert_int_equal(bind(tfd, (struct sockaddr *)&in, sizeof in), 0);
    socklen_t sl_len = sizeof in;
    getsockname(tfd, (struct sockaddr *)&in, &sl_len);
    close(tfd);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", ntohs(in.sin_port));
    assert_int_equal(sched_redis_new(&r, &loop, url, &o, err, sizeof err), 0);
    assert_true(run_until(&loop, &sl.downs, 1, 3000));
    assert_int_equal(sl.ups, 0);
    close_all(&loop, r);

    assert_int_equal(sched_redis_new(&r, &loop, "redis://h:0", &o, err, sizeof err), VL_EINVAL);
    assert_null(r);
    rm_rf(dir);
}

/* ---- closing from inside a callback, AUTH ------------------------------------------------ */

struct closer {
    int calls;
    int errs[3];
    sched_redis_t *r;
};

static void on_close_first(sched_redis_t *r, redisReply *reply, void *priv, int err, const char *es)
{
    struct closer *c = priv;
    c->errs[c->calls++] = err;
    if (c->calls == 1) {
        sched_redis_close(r);
        /* Still valid inside the callback; new commands are refused. */
        assert_int_equal(sched_redis_cmd(r, on_close_first, c, "PING"), VL_EREDIS);
    }
}

static void test_close_in_callback(void **state)
{
    redisfix_t *f = *state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct state_log sl = {0};
    sched_redis_t *r = connect_to(&loop, f->sock, &sl, 2000);
    struct closer c = {0};
    for (int i = 0; i < 3; i++)
        assert_int_equal(sched_redis_cmd(r, on_close_first, &c, "PING"), 0);
    uv_run(&loop, UV_RUN_DEFAULT); /* returns once everything is closed */
    assert_int_equal(c.calls, 3);
    assert_int_equal(c.errs[0], 0);
    assert_int_equal(c.errs[1], VL_ECANCELED);
    assert_int_equal(c.errs[2], VL_ECANCELED);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(sl.downs, 0);

    /* Close with commands in flight (not from a callback): they are cancelled. */
    uv_loop_init(&loop);
    memset(&sl, 0, sizeof sl);
    r = connect_to(&loop, f->sock, &sl, 2000);
    struct rec x = {0};
    assert_int_equal(sched_redis_cmd(r, on_reply, &x, "BLPOP nothing 1"), 0);
    sched_redis_close(r);
    assert_int_equal(x.calls, 1);
    assert_int_equal(x.err, VL_ECANCELED);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    sched_redis_close(NULL);
}

static void test_auth(void **state)
{
    redisfix_t *f = *state;
    redisReply *rep = sync_cmd(f->sock, "ACL SETUSER vl on >s3cret ~* &* +@all");
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    rep = sync_cmd(f->sock, "CONFIG SET requirepass topsecret");
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);

    uv_loop_t loop;
    char url[200], err[256];
    struct state_log sl = {0};

    /* Without a password: the handshake fails, reported as a failed connect. */
    uv_loop_init(&loop);
    unsetenv("VOLLEY_REDIS_PASSWORD");
    sched_redis_opts_t o = {.backoff_base_ms = 20, .on_state = on_state, .ud = &sl};
    sched_redis_t *r = NULL;
    assert_int_equal(sched_redis_new(&r, &loop, f->sock, &o, err, sizeof err), 0);
    assert_true(run_until(&loop, &sl.downs, 1, 3000));
    assert_int_equal(sl.ups, 0);
    assert_non_null(strstr(sl.last_reason, "NOAUTH"));
    close_all(&loop, r);
    assert_null(sched_redis_connect_sync(f->sock, 1000, err, sizeof err));
    assert_non_null(strstr(err, "NOAUTH"));

    /* Password from the environment. */
    setenv("VOLLEY_REDIS_PASSWORD", "topsecret", 1);
    uv_loop_init(&loop);
    memset(&sl, 0, sizeof sl);
    r = connect_to(&loop, f->sock, &sl, 2000);
    close_all(&loop, r);

    /* ACL user and password in the URL; a wrong one never shows in the reason. */
    unsetenv("VOLLEY_REDIS_PASSWORD");
    uv_loop_init(&loop);
    memset(&sl, 0, sizeof sl);
    snprintf(url, sizeof url, "unix://vl:s3cret@%s", f->sock);
    r = connect_to(&loop, url, &sl, 2000);
    struct rec who = {0};
    assert_int_equal(sched_redis_cmd(r, on_reply, &who, "ACL WHOAMI"), 0);
    assert_true(run_until(&loop, &who.calls, 1, 3000));
    assert_string_equal(who.str, "vl");
    close_all(&loop, r);

    uv_loop_init(&loop);
    memset(&sl, 0, sizeof sl);
    snprintf(url, sizeof url, "unix://vl:wr0ngpass@%s", f->sock);
    assert_int_equal(sched_redis_new(&r, &loop, url, &o, err, sizeof err), 0);
    assert_true(run_until(&loop, &sl.downs, 1, 3000));
    assert_int_equal(sl.ups, 0);
    assert_null(strstr(sl.last_reason, "wr0ngpass"));
    close_all(&loop, r);
    assert_null(sched_redis_connect_sync(url, 1000, err, sizeof err));
    assert_null(strstr(err, "wr0ngpass"));

    redisContext *c = sched_redis_connect_sync(
        (snprintf(url, sizeof url, "unix://:topsecret@%s?db=5", f->sock), url), 1000, err,
        sizeof err);
    assert_non_null(c);
    rep = redisCommand(c, "CLIENT INFO");
    assert_non_null(strstr(rep->str, " db=5 "));
    freeReplyObject(rep);
    rep = redisCommand(c, "CONFIG SET requirepass %s", "");
    freeReplyObject(rep);
    redisFree(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_good),
        cmocka_unit_test(test_url_bad),
        cmocka_unit_test_setup_teardown(test_commands, fix_setup, fix_teardown),
        cmocka_unit_test_setup_teardown(test_eval_noscript, fix_setup, fix_teardown),
        cmocka_unit_test_setup_teardown(test_timeout, fix_setup, fix_teardown),
        cmocka_unit_test_setup_teardown(test_dead_connection, fix_setup, fix_teardown),
        cmocka_unit_test(test_server_killed),
        cmocka_unit_test(test_reconnect_and_persist),
        cmocka_unit_test(test_rproc_dies_with_parent),
        cmocka_unit_test(test_nobody_listens),
        cmocka_unit_test_setup_teardown(test_close_in_callback, fix_setup, fix_teardown),
        cmocka_unit_test_setup_teardown(test_auth, fix_setup, fix_teardown),
    };
    return cmocka_run_group_tests_name("sched_redis", tests, NULL, NULL);
}
