/* suppress.c: the suppression list; see suppress.h. */
#include "scheduler/suppress.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "scheduler/keys.h"
#include "scheduler/redis.h"

/* Copy s lowercased (ASCII) into dst; returns the byte after its NUL. */
static char *fold(char *dst, const char *s)
{
    for (; *s; s++)
        *dst++ = (char)(*s >= 'A' && *s <= 'Z' ? *s - 'A' + 'a' : *s);
    *dst++ = '\0';
    return dst;
}

int sched_suppress_add(redisContext *c, const char *const *addrs, size_t n, long long *added,
                       char *err, size_t errlen)
{
    *added = 0;
    if (n == 0) return 0;
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += strlen(addrs[i]) + 1;
    const char **argv = malloc((n + 2) * sizeof *argv);
    char *text = malloc(bytes);
    if (!argv || !text) {
        free(argv);
        free(text);
        vl_set_err(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    argv[0] = "SADD";
    argv[1] = SCHED_KEY_SUPPRESS;
    char *p = text;
    for (size_t i = 0; i < n; i++) {
        argv[2 + i] = p;
        p = fold(p, addrs[i]);
    }
    redisReply *r = redisCommandArgv(c, (int)n + 2, argv, NULL);
    free(argv);
    free(text);
    if (!r || r->type != REDIS_REPLY_INTEGER)
        return sched_redis_sync_fail(c, r, "SADD", err, errlen);
    *added = r->integer;
    freeReplyObject(r);
    return 0;
}

int sched_suppress_has(redisContext *c, const char *addr, char *err, size_t errlen)
{
    char *a = malloc(strlen(addr) + 1);
    if (!a) {
        vl_set_err(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    fold(a, addr);
    const char *argv[] = {"SISMEMBER", SCHED_KEY_SUPPRESS, a};
    redisReply *r = redisCommandArgv(c, 3, argv, NULL);
    free(a);
    if (!r || r->type != REDIS_REPLY_INTEGER)
        return sched_redis_sync_fail(c, r, "SISMEMBER", err, errlen);
    int rc = r->integer != 0;
    freeReplyObject(r);
    return rc;
}

int sched_suppress_list(redisContext *c, sched_suppress_fn fn, void *ud, char *err, size_t errlen)
{
    char cursor[32] = "0";
    do {
        const char *argv[] = {"SSCAN", SCHED_KEY_SUPPRESS, cursor, "COUNT", "1000"};
        redisReply *r = redisCommandArgv(c, 5, argv, NULL);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY)
            return sched_redis_sync_fail(c, r, "SSCAN", err, errlen);
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        const redisReply *items = r->element[1];
        int rc = 0;
        for (size_t i = 0; i < items->elements && !rc; i++)
            if (items->element[i]->str) rc = fn(items->element[i]->str, ud);
        freeReplyObject(r);
        if (rc) return rc;
    } while (strcmp(cursor, "0"));
    return 0;
}
