/* cmd_status.c: `volley status CAMPAIGN` and `volley pause|resume|cancel
 * CAMPAIGN`: look at a campaign in Redis, or change its state. Workers read
 * the state before every claim (scheduler/lua/claim.lua), so pausing takes
 * effect at their next claim; cancelling also finishes, in Lua and batch by
 * batch, every row still waiting, so no worker can claim it afterwards. */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cli/cmds.h"
#include "cli/exitcodes.h"
#include "cli/redisconn.h"
#include "scheduler/keys.h"
#include "scheduler/result.h"

enum { CANCEL_BATCH = 100 }; /* due-set members per cancel call */

typedef int (*campaign_fn)(cli_redis_t *r, const char *name, int json);

static void campaign_usage(FILE *f, const char *name)
{
    if (!strcmp(name, "status")) {
        fprintf(f, "usage: volley status CAMPAIGN [--redis URL] [--json]\n\n"
                   "Show a campaign: its state, rows by state, rows waiting (due now and later\n"
                   "per provider) and leased to workers, each provider's suspension and learned\n"
                   "limits, and why sending stopped if it did.\n"
                   "  --json        one JSON object instead of text\n");
    } else if (!strcmp(name, "pause")) {
        fprintf(f, "usage: volley pause CAMPAIGN [--redis URL]\n\n"
                   "Pause a campaign: within about a second workers stop sending it. Rows they\n"
                   "had claimed go back to waiting; only messages already on a connection\n"
                   "finish. `volley resume` continues it.\n");
    } else if (!strcmp(name, "resume")) {
        fprintf(f, "usage: volley resume CAMPAIGN [--redis URL]\n\n"
                   "Resume a paused campaign: workers claim its rows again.\n");
    } else {
        fprintf(f, "usage: volley cancel CAMPAIGN [--redis URL]\n\n"
                   "Cancel a campaign: workers claim no more of its rows, and every row still\n"
                   "waiting ends with status \"cancelled\". Rows a worker holds at that moment\n"
                   "are finished by it. A cancelled campaign cannot be resumed.\n");
    }
    fprintf(f, "\nCAMPAIGN is the campaign file (its embedded Redis in the state directory is\n"
               "started for the command), or with --redis the campaign id.\n"
               "  --redis URL   redis://[user:pass@]host:port[/db] or unix:///path.sock\n"
               "Exit codes: 0, 64 usage, 66 unknown campaign, 69 Redis unavailable, 78 bad\n"
               "campaign file.\n");
}

static int run_campaign_cmd(int argc, char **argv, campaign_fn fn)
{
    const char *name = argv[0];
    static const struct option opts[] = {{"redis", required_argument, NULL, 'R'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *url = NULL;
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'R') {
            url = cli_redis_url_arg(optarg);
        } else if (c == 'j' && !strcmp(name, "status")) {
            json = 1;
        } else if (c == 'h') {
            campaign_usage(stdout, name);
            return EX_OK;
        } else {
            campaign_usage(stderr, name);
            return EX_USAGE;
        }
    }
    if (optind != argc - 1) {
        campaign_usage(stderr, name);
        return EX_USAGE;
    }
    char err[1024] = "";
    cli_redis_t *r;
    int code = cli_redis_open_campaign(&r, argv[optind], url, CLI_REDIS_KNOWN, 0, err, sizeof err);
    if (code) {
        fprintf(stderr, "volley %s: %s\n", name, err);
        return code;
    }
    code = fn(r, name, json);
    cli_redis_close(r);
    return code;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int redis_fail(cli_redis_t *r, const char *name, redisReply *rep, const char *what)
{
    char err[512];
    int code = cli_redis_reply_error(cli_redis_ctx(r), rep, what, err, sizeof err);
    fprintf(stderr, "volley %s: %s\n", name, err);
    if (rep) freeReplyObject(rep);
    return code;
}

/* A HGETALL reply as a JSON object of strings (numbers where the value is a
 * whole number), or NULL when out of memory. */
static json_t *hash_to_json(const redisReply *rep)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i + 1 < rep->elements; i += 2) {
        const char *k = rep->element[i]->str, *v = rep->element[i + 1]->str;
        if (!k || !v) continue;
        char *end;
        long long n = strtoll(v, &end, 10);
        json_object_set_new(o, k, *v && !*end ? json_integer(n) : json_string(v));
    }
    return o;
}

static void fmt_time(long long ms, char *dst, size_t n)
{
    if (ms <= 0) {
        snprintf(dst, n, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t len = strftime(dst, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(dst + len, n - len, ".%03dZ", (int)(ms % 1000));
}

static long long jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? json_integer_value(v) : 0;
}

static const char *jstr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Run cmd (printf-style) and expect a reply of type `type`; NULL after an
 * error was printed. */
static redisReply *cmd_expect(cli_redis_t *r, const char *name, int type, int *code,
                              const char *what, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(cli_redis_ctx(r), fmt, ap);
    va_end(ap);
    if (!rep || rep->type != type) {
        *code = redis_fail(r, name, rep, what);
        return NULL;
    }
    return rep;
}

/* Rows in a due or lease set that are still to be sent, and of those the
 * ones with a score <= ARGV[1]. A member (keys.h) is a batch part "F-L/n",
 * n rows of the provider in batch F-L, or one row "F-L:r"; in the lease set
 * it is followed by "|NAME". A part given back after a stop, a kill or a
 * pause still says n though some of its rows went final: its rows are
 * counted from the state bits (0: waiting in the batch), and from the batch
 * blob for the provider's rows when some are not 0. Counting n alone showed
 * more rows pending than were left.
 * KEYS: the set, {c:ID}:state, {c:ID}:batch. ARGV[2]: the provider of a due
 * set, "" for the lease set. Returns {rows up to ARGV[1], all rows}. */
static const char rows_lua[] =
    "local function st(bytes, base, row)\n"
    "    local b = string.byte(bytes, math.floor(row / 4) - base + 1) or 0\n"
    "    return bit.band(bit.rshift(b, 6 - (row % 4) * 2), 3)\n"
    "end\n"
    "local all, upto = 0, 0\n"
    "local z = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')\n"
    "local lim = tonumber(ARGV[1])\n"
    "for i = 1, #z, 2 do\n"
    "    local m, prov = z[i], ARGV[2]\n"
    "    if prov == '' then m, prov = z[i]:match('^(.*)|(.*)$') end\n"
    "    local n = 1\n"
    "    local f, l, k = (m or ''):match('^(%d+)%-(%d+)/(%d+)$')\n"
    "    local r = (m or ''):match('^%d+%-%d+:(%d+)$')\n"
    "    if f then\n"
    "        f, l, n = tonumber(f), tonumber(l), tonumber(k)\n"
    "        local base = math.floor(f / 4)\n"
    "        local bytes = redis.call('GETRANGE', KEYS[2], base, math.floor(l / 4))\n"
    "        local clean = true\n"
    "        for row = f, l do\n"
    "            if st(bytes, base, row) ~= 0 then clean = false break end\n"
    "        end\n"
    "        if not clean then\n"
    "            n = 0\n"
    "            local blob = redis.call('HGET', KEYS[3], f .. '-' .. l) or ''\n"
    "            for row, p in blob:gmatch('(%d+)\\t([^\\t]*)\\t[^\\n]*\\n') do\n"
    "                if p == prov and st(bytes, base, tonumber(row)) == 0 then n = n + 1 end\n"
    "            end\n"
    "        end\n"
    "    elseif r then\n"
    "        r = tonumber(r)\n"
    "        local b = redis.call('GETRANGE', KEYS[2], math.floor(r / 4), math.floor(r / 4))\n"
    "        if st(b, math.floor(r / 4), r) == 2 then n = 0 end\n"
    "    end\n"
    "    all = all + n\n"
    "    if tonumber(z[i + 1]) <= lim then upto = upto + n end\n"
    "end\n"
    "return {upto, all}\n";

static int count_rows(cli_redis_t *r, const char *name, const char *key, const char *provider,
                      long long upto, long long *n_upto, long long *n_all)
{
    int code = EX_OK;
    const char *id = cli_redis_id(r);
    char k_state[512], k_batch[512];
    snprintf(k_state, sizeof k_state, SCHED_KEY_STATE, id);
    snprintf(k_batch, sizeof k_batch, SCHED_KEY_BATCH, id);
    redisReply *rep =
        cmd_expect(r, name, REDIS_REPLY_ARRAY, &code, "count rows", "EVAL %s 3 %s %s %s %lld %s",
                   rows_lua, key, k_state, k_batch, upto, provider);
    if (!rep) return code;
    if (rep->elements != 2) {
        return redis_fail(r, name, rep, "count rows");
    }
    *n_upto = rep->element[0]->integer;
    *n_all = rep->element[1]->integer;
    freeReplyObject(rep);
    return EX_OK;
}

static int do_status(cli_redis_t *r, const char *name, int json)
{
    const char *id = cli_redis_id(r);
    char key[512];
    int code = EX_OK;
    long long now = now_ms();
    redisReply *rep;

    snprintf(key, sizeof key, SCHED_KEY_META, id);
    if (!(rep = cmd_expect(r, name, REDIS_REPLY_ARRAY, &code, "HGETALL meta", "HGETALL %s", key)))
        return code;
    json_t *meta = hash_to_json(rep);
    freeReplyObject(rep);
    snprintf(key, sizeof key, SCHED_KEY_COUNT, id);
    if (!(rep = cmd_expect(r, name, REDIS_REPLY_ARRAY, &code, "HGETALL count", "HGETALL %s", key)))
        goto out_meta;
    json_t *counts = hash_to_json(rep);
    freeReplyObject(rep);
    snprintf(key, sizeof key, SCHED_KEY_LEASE, id);
    long long leased = 0, unused = 0;
    if ((code = count_rows(r, name, key, "", 0, &unused, &leased))) goto out_counts;
    snprintf(key, sizeof key, SCHED_KEY_PROVIDERS, id);
    redisReply *provs;
    if (!(provs = cmd_expect(r, name, REDIS_REPLY_ARRAY, &code, "SMEMBERS providers", "SMEMBERS %s",
                             key)))
        goto out_counts;

    json_t *plist = json_array();
    long long pending = 0, due_now_all = 0;
    for (size_t i = 0; i < provs->elements; i++) {
        const char *p = provs->element[i]->str;
        if (!p) continue;
        json_t *po = json_object();
        json_object_set_new(po, "name", json_string(p));
        snprintf(key, sizeof key, SCHED_KEY_DUE, id, p);
        long long all = 0, due = 0;
        if ((code = count_rows(r, name, key, p, now, &due, &all))) goto out_list;
        pending += all;
        due_now_all += due;
        json_object_set_new(po, "due_now", json_integer(due));
        json_object_set_new(po, "scheduled_later", json_integer(all - due));
        snprintf(key, sizeof key, SCHED_KEY_P_SUSPEND, p);
        if (!(rep = cmd_expect(r, name, REDIS_REPLY_ARRAY, &code, "HGETALL suspend", "HGETALL %s",
                               key)))
            goto out_list;
        json_t *susp = hash_to_json(rep);
        freeReplyObject(rep);
        long long until = jint(susp, "until");
        if (until > now) {
            char t[40];
            fmt_time(until, t, sizeof t);
            json_object_set_new(po, "suspended_until", json_string(t));
            json_object_set_new(po, "suspended_until_ms", json_integer(until));
            const char *why = jstr(susp, "reason");
            json_object_set_new(po, "suspend_reason", why ? json_string(why) : json_null());
        } else {
            json_object_set_new(po, "suspended_until", json_null());
        }
        json_decref(susp);
        snprintf(key, sizeof key, SCHED_KEY_P_LEARNED, p);
        if (!(rep = cmd_expect(r, name, REDIS_REPLY_ARRAY, &code, "HGETALL learned", "HGETALL %s",
                               key)))
            goto out_list;
        json_object_set_new(po, "learned", hash_to_json(rep));
        freeReplyObject(rep);
        json_array_append_new(plist, po);
        po = NULL;
        continue;
    out_list:
        json_decref(po);
        json_decref(plist);
        freeReplyObject(provs);
        goto out_counts;
    }
    freeReplyObject(provs);

    static const char *const finals[] = {SCHED_FINAL_STATES};
    const char *state = jstr(meta, "state");
    const char *stop = jstr(meta, "stop_reason");
    long long total = jint(meta, "total");
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(id));
        json_object_set_new(o, "state", state ? json_string(state) : json_null());
        json_object_set_new(o, "total", json_integer(total));
        json_object_set_new(o, "ingested", json_boolean(jint(meta, "ingested") == 1));
        json_t *cs = json_object();
        for (size_t i = 0; i < sizeof finals / sizeof finals[0]; i++)
            json_object_set_new(cs, finals[i], json_integer(jint(counts, finals[i])));
        json_object_set_new(cs, "final", json_integer(jint(counts, "final")));
        json_object_set_new(o, "counts", cs);
        json_object_set_new(o, "attempts", json_integer(jint(counts, "attempts")));
        json_object_set_new(o, "deferred", json_integer(jint(counts, "deferred")));
        json_object_set_new(o, "pending", json_integer(pending));
        json_object_set_new(o, "due_now", json_integer(due_now_all));
        json_object_set_new(o, "leased", json_integer(leased));
        json_object_set_new(o, "stop_reason", stop ? json_string(stop) : json_null());
        static const char *const times[] = {"created_ms", "started_ms", "finished_ms"};
        for (size_t i = 0; i < 3; i++) {
            long long t = jint(meta, times[i]);
            json_object_set_new(o, times[i], t > 0 ? json_integer(t) : json_null());
        }
        json_object_set_new(o, "providers", plist);
        plist = NULL;
        json_dumpf(o, stdout, JSON_PRESERVE_ORDER | JSON_COMPACT);
        putchar('\n');
        json_decref(o);
    } else {
        char t1[40], t2[40], t3[40];
        fmt_time(jint(meta, "created_ms"), t1, sizeof t1);
        fmt_time(jint(meta, "started_ms"), t2, sizeof t2);
        fmt_time(jint(meta, "finished_ms"), t3, sizeof t3);
        printf("campaign %s: %s\n", id, state ? state : "unknown");
        printf("  rows       %lld%s\n", total,
               jint(meta, "ingested") == 1 ? "" : " so far (ingest not finished)");
        printf("  created    %s\n  started    %s\n  finished   %s\n", t1, t2, t3);
        if (stop) printf("  STOPPED    %s\n", stop);
        printf("  final      %lld of %lld\n", jint(counts, "final"), total);
        for (size_t i = 0; i < sizeof finals / sizeof finals[0]; i++)
            printf("    %-11s %lld\n", finals[i], jint(counts, finals[i]));
        printf("  pending    %lld (due now %lld, scheduled later %lld)\n", pending, due_now_all,
               pending - due_now_all);
        printf("  leased     %lld (being sent by workers)\n", leased);
        printf("  attempts   %lld (%lld deferred and requeued)\n", jint(counts, "attempts"),
               jint(counts, "deferred"));
        printf("providers:\n");
        size_t i;
        json_t *po;
        json_array_foreach(plist, i, po)
        {
            printf("  %-16s due now %lld, later %lld", jstr(po, "name"), jint(po, "due_now"),
                   jint(po, "scheduled_later"));
            const char *until = jstr(po, "suspended_until");
            if (until) {
                const char *why = jstr(po, "suspend_reason");
                printf("; SUSPENDED until %s%s%s", until, why ? ": " : "", why ? why : "");
            }
            json_t *l = json_object_get(po, "learned");
            if (json_object_size(l)) {
                const char *k;
                json_t *v;
                int first = 1;
                printf("; learned");
                json_object_foreach(l, k, v)
                {
                    printf("%s %s=", first ? "" : ",", k);
                    if (json_is_integer(v))
                        printf("%lld", (long long)json_integer_value(v));
                    else
                        printf("%s", json_string_value(v));
                    first = 0;
                }
            }
            putchar('\n');
        }
        if (json_array_size(plist) == 0) printf("  (none yet)\n");
    }
    if (fflush(stdout) != 0) code = EX_IOERR;
    json_decref(plist);
out_counts:
    json_decref(counts);
out_meta:
    json_decref(meta);
    return code;
}

/* Set the state unless the campaign is already done or cancelled; returns the
 * state it had. One script so a worker finishing the campaign meanwhile is
 * never overwritten. */
static const char set_state_lua[] =
    "local s = redis.call('HGET', KEYS[1], 'state') or ''\n"
    "if s ~= 'done' and s ~= 'cancelled' then redis.call('HSET', KEYS[1], 'state', ARGV[1]) end\n"
    "return s\n";

/* Cancel the members ARGV[4..] of one provider's due set (keys.h), those
 * still in it: each of their rows still waiting gets status "cancelled" in
 * its results hash (the fields of a result it already has kept) and is
 * counted, all in one script, so a worker's claim sees either the row due or
 * the row final. The caller reads the members first (ZRANGE) so that it can
 * pass their results hashes in KEYS; a member claimed meanwhile is no longer
 * in the set and is left to its worker.
 * KEYS: meta, retry, count, due:P, batch, state, then results hashes.
 * ARGV: now_ms, provider name, n, then per member: the member, the index in
 * KEYS of the results hash of its batch's first row F (row r's is that index
 * plus r/64 - F/64). Returns {rows cancelled, members left in the due set}. */
static const char cancel_lua[] =
    "local email_col = tonumber(redis.call('HGET', KEYS[1], 'email_col') or '0') + 1\n"
    "local escapes = {['\\\\'] = '\\\\\\\\', ['\\t'] = '\\\\t', ['\\r'] = '\\\\r',\n"
    "                 ['\\n'] = '\\\\n'}\n"
    "local function text(s)\n"
    "    return (tostring(s):gsub('[\\\\\\t\\r\\n]', escapes))\n"
    "end\n"
    "local n = 0\n"
    "for i = 1, tonumber(ARGV[3]) do\n"
    "    local m, kidx = ARGV[2 + 2 * i], tonumber(ARGV[3 + 2 * i])\n"
    "    local f, l, kind, v = m:match('^(%d+)-(%d+)([/:])(%d+)$')\n"
    "    if redis.call('ZREM', KEYS[4], m) == 1 and f then\n"
    "        kidx = kidx - math.floor(tonumber(f) / 64)\n"
    "        local blob = redis.call('HGET', KEYS[5], f .. '-' .. l) or ''\n"
    "        for row, p, fields in blob:gmatch('(%d+)\\t([^\\t]*)\\t([^\\n]*)\\n') do\n"
    "            local st = redis.call('BITFIELD', KEYS[6], 'GET', 'u2', '#' .. row)[1]\n"
    "            local mine\n"
    "            if kind == ':' then mine = row == v and st ~= 2\n"
    "            else mine = p == ARGV[2] and st == 0 end\n"
    "            if mine then\n"
    "                local raw = redis.call('HGET', KEYS[2], row)\n"
    "                local res\n"
    "                if raw then\n"
    "                    -- Its result so far with the status (the first column) replaced.\n"
    "                    res = 'cancelled' .. (raw:match('^[^\\t]*(\\t.*)$') or '')\n"
    "                    redis.call('HDEL', KEYS[2], row)\n"
    "                else\n"
    "                    local ok, fv = pcall(cjson.decode, fields)\n"
    "                    local email = ok and type(fv) == 'table' and fv[email_col] or ''\n"
    "                    res = 'cancelled\\t0\\t0\\t\\t0\\t0\\t\\t' .. text(p) .. '\\t' ..\n"
    "                          text(email) .. '\\t'\n"
    "                end\n"
    "                redis.call('HSET', KEYS[kidx + math.floor(tonumber(row) / 64)], row, res)\n"
    "                redis.call('BITFIELD', KEYS[6], 'SET', 'u2', '#' .. row, 2)\n"
    "                redis.call('HINCRBY', KEYS[3], 'cancelled', 1)\n"
    "                redis.call('HINCRBY', KEYS[3], 'final', 1)\n"
    "                n = n + 1\n"
    "            end\n"
    "        end\n"
    "    end\n"
    "end\n"
    "local left = redis.call('ZCARD', KEYS[4])\n"
    "if left == 0 then\n"
    "    local done = tonumber(redis.call('HGET', KEYS[3], 'final') or '0')\n"
    "    local total = tonumber(redis.call('HGET', KEYS[3], 'total') or '0')\n"
    "    if done >= total and redis.call('HGET', KEYS[1], 'ingested') == '1' and\n"
    "       not redis.call('HGET', KEYS[1], 'finished_ms') then\n"
    "        redis.call('HSET', KEYS[1], 'finished_ms', ARGV[1])\n"
    "    end\n"
    "end\n"
    "return {n, left}\n";

/* Cancel the first CANCEL_BATCH members of due set `due` with cancel_lua.
 * Returns 0 and the rows cancelled and members left, or an exit code. */
static int cancel_some(cli_redis_t *r, const char *name, const char *const fixed[6],
                       const char *prov, long long *cancelled, long long *left)
{
    const char *id = cli_redis_id(r);
    int code = EX_OK;
    redisReply *z = cmd_expect(r, name, REDIS_REPLY_ARRAY, &code, "ZRANGE due", "ZRANGE %s 0 %d",
                               fixed[3], CANCEL_BATCH - 1);
    if (!z) return code;
    /* A member's batch F-L spans at most two results hashes. */
    enum { MAXA = 3 + 6 + 2 * CANCEL_BATCH + 3 + 2 * CANCEL_BATCH };
    char keys[2 * CANCEL_BATCH][300];
    char nums[CANCEL_BATCH][24];
    unsigned long kof[2 * CANCEL_BATCH];
    const char *argv[MAXA];
    size_t nk = 0, nu = 0, nm = 0;
    const char *margv[2 * CANCEL_BATCH];
    for (size_t i = 0; i < z->elements && i < CANCEL_BATCH; i++) {
        const char *m = z->element[i]->str;
        unsigned long f = 0, l = 0;
        if (!m) continue;
        if (sscanf(m, "%lu-%lu", &f, &l) != 2) {
            /* Not a member volley wrote: the script only removes it. */
            margv[2 * nm] = m;
            margv[2 * nm + 1] = "0";
            nm++;
            continue;
        }
        size_t k = sched_res_hashes_add(kof, &nk, f, l);
        snprintf(nums[nu], sizeof nums[nu], "%zu", 7 + k);
        margv[2 * nm] = m;
        margv[2 * nm + 1] = nums[nu++];
        nm++;
    }
    char nkeys_s[24], now_s[24], nm_s[24];
    snprintf(nkeys_s, sizeof nkeys_s, "%zu", 6 + nk);
    snprintf(now_s, sizeof now_s, "%lld", now_ms());
    snprintf(nm_s, sizeof nm_s, "%zu", nm);
    size_t n = 0;
    argv[n++] = "EVAL";
    argv[n++] = cancel_lua;
    argv[n++] = nkeys_s;
    for (size_t i = 0; i < 6; i++)
        argv[n++] = fixed[i];
    for (size_t k = 0; k < nk; k++) {
        snprintf(keys[k], sizeof keys[k], SCHED_KEY_RES, id, kof[k]);
        argv[n++] = keys[k];
    }
    argv[n++] = now_s;
    argv[n++] = prov;
    argv[n++] = nm_s;
    for (size_t i = 0; i < 2 * nm; i++)
        argv[n++] = margv[i];
    redisReply *rep = redisCommandArgv(cli_redis_ctx(r), (int)n, argv, NULL);
    freeReplyObject(z);
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2)
        return redis_fail(r, name, rep, "cancel rows");
    *cancelled += rep->element[0]->integer;
    *left = rep->element[1]->integer;
    freeReplyObject(rep);
    return EX_OK;
}

static int do_set_state(cli_redis_t *r, const char *name, int json)
{
    const char *id = cli_redis_id(r);
    const char *want = !strcmp(name, "pause")    ? "paused"
                       : !strcmp(name, "resume") ? "running"
                                                 : "cancelled";
    char meta[512];
    int code = EX_OK;
    snprintf(meta, sizeof meta, SCHED_KEY_META, id);
    redisReply *rep = cmd_expect(r, name, REDIS_REPLY_STRING, &code, "set state", "EVAL %s 1 %s %s",
                                 set_state_lua, meta, want);
    if (!rep) return code;
    char was[32];
    snprintf(was, sizeof was, "%s", rep->str);
    freeReplyObject(rep);
    if (!strcmp(was, "done") || (!strcmp(was, "cancelled") && strcmp(want, "cancelled"))) {
        fprintf(stderr, "volley %s: campaign %s is %s; its state cannot change any more\n", name,
                id, was);
        return EX_USAGE;
    }
    if (strcmp(want, "cancelled")) {
        if (!strcmp(was, want))
            printf("campaign %s was already %s\n", id, want);
        else
            printf("campaign %s: %s -> %s\n", id, was[0] ? was : "(no state)", want);
        return EX_OK;
    }

    /* Cancel: drain every provider's due set in batches. */
    char retry[512], count[512], due[768], batch[512], state[512];
    snprintf(retry, sizeof retry, SCHED_KEY_RETRY, id);
    snprintf(batch, sizeof batch, SCHED_KEY_BATCH, id);
    snprintf(state, sizeof state, SCHED_KEY_STATE, id);
    snprintf(count, sizeof count, SCHED_KEY_COUNT, id);
    snprintf(due, sizeof due, SCHED_KEY_PROVIDERS, id);
    redisReply *provs =
        cmd_expect(r, name, REDIS_REPLY_ARRAY, &code, "SMEMBERS providers", "SMEMBERS %s", due);
    if (!provs) return code;
    long long cancelled = 0;
    const char *const fixed[6] = {meta, retry, count, due, batch, state};
    for (size_t i = 0; i < provs->elements && !code; i++) {
        if (!provs->element[i]->str) continue;
        snprintf(due, sizeof due, SCHED_KEY_DUE, id, provs->element[i]->str);
        long long left = 1;
        while (left > 0 && !code)
            code = cancel_some(r, name, fixed, provs->element[i]->str, &cancelled, &left);
    }
    freeReplyObject(provs);
    if (code) return code;
    snprintf(due, sizeof due, SCHED_KEY_LEASE, id);
    long long leased = 0, unused;
    code = count_rows(r, name, due, "", 0, &unused, &leased);
    printf("campaign %s cancelled: %lld waiting row%s cancelled", id, cancelled,
           cancelled == 1 ? "" : "s");
    if (leased)
        printf("; %lld row%s held by workers will finish first", leased, leased == 1 ? "" : "s");
    putchar('\n');
    return code;
}

int cmd_status(int argc, char **argv)
{
    return run_campaign_cmd(argc, argv, do_status);
}

int cmd_pause(int argc, char **argv)
{
    return run_campaign_cmd(argc, argv, do_set_state);
}

int cmd_resume(int argc, char **argv)
{
    return run_campaign_cmd(argc, argv, do_set_state);
}

int cmd_cancel(int argc, char **argv)
{
    return run_campaign_cmd(argc, argv, do_set_state);
}
