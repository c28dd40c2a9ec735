/* Unit tests for ratelimit/rules and ratelimit/aimd: every NetEase code of the seed list,
 * the generic fallback, inline rules first, the big providers' texts, actions (backoff,
 * pauses until the provider's next day), AIMD and the route reconnect policy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "ratelimit/aimd.h"
#include "ratelimit/rules.h"

#define FIXTURE "tests/fixtures/netease-codes.txt"

/* Split "421 4.4.5 HL:ICC ..." like the engine does: code, enhanced code, text. The seed
 * has one line mangled by markdown ("****554** DT:SPM ...**"); stars around the code are
 * skipped. */
static rl_reply_t split_reply(char *line, char *enh, size_t enhlen)
{
    rl_reply_t r = {0, "", ""};
    char *p = line;
    while (*p == '*')
        p++;
    r.code = atoi(p);
    p += 3;
    while (*p == '*' || *p == ' ')
        p++;
    enh[0] = '\0';
    if (isdigit((unsigned char)p[0]) && p[1] == '.') {
        size_t n = strcspn(p, " ");
        snprintf(enh, enhlen, "%.*s", (int)n, p);
        p += n;
        while (*p == ' ')
            p++;
    }
    r.enhanced = enh;
    r.text = p;
    return r;
}

static void test_netease_every_code(void **state)
{
    (void)state;
    FILE *f = fopen(FIXTURE, "r");
    assert_non_null(f);
    const rl_rules_t *chain[] = {rl_rules_builtin("netease"), rl_rules_builtin("generic")};
    assert_non_null(chain[0]);
    char line[2048];
    int n = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0') continue;
        char *tab = strchr(line, '\t');
        assert_non_null(tab);
        *tab = '\0';
        int want = rl_class_from_name(line);
        assert_true(want >= 0);
        char enh[16];
        rl_reply_t r = split_reply(tab + 1, enh, sizeof enh);
        /* Only the netease set: a line that falls through to generic is a missing rule. */
        const rl_rule_t *rule = rl_rules_match(chain, 1, &r);
        if (!rule || (int)rl_rule_class(rule) != want) {
            print_error("%s: expected %s, got %s (%s)\n", tab + 1, line,
                        rule ? rl_class_name(rl_rule_class(rule)) : "no rule",
                        rule ? rl_rule_id(rule) : "-");
            bad++;
        }
        n++;
    }
    fclose(f);
    assert_int_equal(bad, 0);
    assert_int_equal(n, 49); /* 47 listed codes, the HL:ICC transcript, the Sina line */
}

static void test_builtin_sets_valid(void **state)
{
    (void)state;
    const char *const *names = rl_rules_builtin_names();
    size_t n = 0;
    for (; names[n]; n++) {
        const rl_rules_t *rs = rl_rules_builtin(names[n]);
        assert_non_null(rs);
        assert_true(rl_rules_count(rs) >= 5);
        for (size_t i = 0; i < rl_rules_count(rs); i++) {
            const rl_rule_t *rule = rl_rules_at(rs, i);
            assert_true(strlen(rl_rule_why(rule)) > 10);
            assert_true(strlen(rl_rule_source(rule)) > 5); /* every rule cites its source */
        }
    }
    assert_int_equal(n, 6);
    assert_null(rl_rules_builtin("aol"));
}

static rl_action_t decide(const rl_rules_t *const *chain, size_t n, int code, const char *enh,
                          const char *text)
{
    rl_reply_t r = {code, enh, text};
    rl_decide_ctx_t ctx = {.now_ms = 1795363200000ULL, .attempt = 1};
    rl_action_t a;
    assert_int_equal(rl_decide(chain, n, &r, &ctx, &a), 0);
    return a;
}

static void test_generic(void **state)
{
    (void)state;
    const rl_rules_t *chain[] = {NULL, rl_rules_builtin("generic")};
    rl_action_t a = decide(chain, 2, 451, "4.3.0", "Try again later");
    assert_int_equal(a.cls, RL_RETRY);
    assert_string_equal(a.rule_id, "generic-4xx");
    assert_false(a.final);
    a = decide(chain, 2, 421, "", "Service shutting down");
    assert_int_equal(a.cls, RL_RECONNECT);
    assert_true(a.close_connection);
    a = decide(chain, 2, 550, "5.1.1", "mailbox unavailable");
    assert_int_equal(a.cls, RL_BOUNCE);
    assert_true(a.final && a.suppress);
    a = decide(chain, 2, 550, "", "Recipient address rejected: User unknown in local table");
    assert_int_equal(a.cls, RL_BOUNCE);
    a = decide(chain, 2, 552, "5.3.4", "Message size exceeds fixed limit");
    assert_int_equal(a.cls, RL_FAIL);
    assert_true(a.final);
    assert_false(a.suppress);
    a = decide(chain, 2, 535, "5.7.8", "Authentication credentials invalid");
    assert_int_equal(a.cls, RL_STOP);
    a = decide(chain, 2, 452, "4.5.3", "Too many recipients");
    assert_int_equal(a.cls, RL_LOWER_PER_CONNECTION);
    assert_int_equal(a.cap, RL_CAP_RECIPIENTS_PER_MESSAGE);
    /* A chain without generic falls back the same way. */
    const rl_rules_t *none[] = {NULL};
    a = decide(none, 1, 499, "", "odd");
    assert_int_equal(a.cls, RL_RETRY);
    assert_string_equal(a.rule_id, "fallback");
    a = decide(none, 1, 599, "", "odd");
    assert_int_equal(a.cls, RL_FAIL);
}

/* A reply that is no failure where the engine expected one (250 to DATA, 354 to RCPT) or
 * a code outside 200-599 is a protocol error: rl_decide says so and still fills every
 * field, so a hostile server cannot make the caller read garbage (issue 20: the worker
 * formatted an uninitialised rule_id and crashed). */
static void test_protocol_error_replies(void **state)
{
    (void)state;
    const rl_rules_t *chain[] = {NULL, rl_rules_builtin("netease"), rl_rules_builtin("generic")};
    const int codes[] = {250, 354, 999, 0, 100, 600, -1, 399};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        for (unsigned attempt = 1; attempt <= 3; attempt++) {
            rl_reply_t r = {codes[i], i % 2 ? NULL : "2.0.0", i % 3 ? "ok" : NULL};
            rl_decide_ctx_t ctx = {.now_ms = 1795363200000ULL, .attempt = attempt};
            rl_action_t a;
            /* Poison the output first: every field must be written. */
            memset(&a, 0xA5, sizeof a);
            assert_int_equal(rl_decide(chain, 3, &r, &ctx, &a), VL_EPROTO);
            assert_int_equal(a.cls, RL_RETRY);
            assert_non_null(a.rule_id);
            assert_string_equal(a.rule_id, "protocol");
            assert_non_null(a.why);
            assert_non_null(strstr(a.why, "protocol error"));
            assert_false(a.final);
            assert_false(a.suppress);
            assert_true(a.close_connection);
            assert_int_equal(a.cap, RL_CAP_NONE);
            assert_int_equal(a.scope, RL_SCOPE_NONE);
            assert_int_equal(a.pause_until_ms, 0);
            /* The usual backoff (30 s base, no jitter: exactly half of 30 s * 2^(n-1)). */
            assert_int_equal(a.delay_ms, 15000ULL << (attempt - 1));
        }
    }
    /* 2xx/3xx and out-of-range codes are told apart in the reason. */
    rl_reply_t ok = {250, "2.0.0", "ok"}, odd = {999, "", "what"};
    rl_decide_ctx_t ctx = {.attempt = 1};
    rl_action_t a;
    rl_decide(chain, 3, &ok, &ctx, &a);
    assert_non_null(strstr(a.why, "success or intermediate"));
    rl_decide(chain, 3, &odd, &ctx, &a);
    assert_non_null(strstr(a.why, "outside 200-599"));
    /* The boundaries of the failure range still decide normally. */
    a = decide(chain, 3, 400, "", "x");
    assert_int_equal(a.cls, RL_RETRY);
    a = decide(chain, 3, 599, "", "x");
    assert_true(a.final);
}

/* A provider's own set is tried first; what it does not know falls back to generic. */
static void test_netease_falls_back(void **state)
{
    (void)state;
    const rl_rules_t *chain[] = {NULL, rl_rules_builtin("netease"), rl_rules_builtin("generic")};
    rl_action_t a = decide(chain, 3, 550, "5.1.1", "no such user here");
    assert_int_equal(a.cls, RL_BOUNCE);
    assert_string_equal(a.rule_id, "generic-5.1.x");
    a = decide(chain, 3, 450, "", "something new from NetEase");
    assert_int_equal(a.cls, RL_RETRY);
    /* The enhanced code inside the text is found too. */
    a = decide(chain, 3, 421, "", "4.4.5 HL:ICC .For more information");
    assert_int_equal(a.cls, RL_LOWER_CONCURRENCY);
    assert_int_equal(a.cap, RL_CAP_CONNECTIONS);
}

static void test_inline_rules_first_and_icase(void **state)
{
    (void)state;
    json_error_t jerr;
    json_t *j = json_loads(
        "[{\"id\": \"mine-invalid-user-retry\", \"code\": \"550\", \"text\": \"invalid user\","
        "  \"action\": \"retry\", \"retry_after\": 600, \"why\": \"our relay lies\"},"
        " {\"id\": \"mine-45x\", \"code\": \"45x\", \"enhanced\": \"4.7.\", \"action\": \"pause\","
        "  \"scope\": \"provider\", \"until\": \"2h\", \"why\": \"policy\"}]",
        0, &jerr);
    assert_non_null(j);
    rl_rules_t *mine;
    char err[300];
    assert_int_equal(rl_rules_parse(j, "test", &mine, err, sizeof err), 0);
    json_decref(j);
    const rl_rules_t *chain[] = {mine, rl_rules_builtin("netease"), rl_rules_builtin("generic")};
    /* Upper case in the reply, lower case in the pattern: REG_ICASE. */
    rl_action_t a = decide(chain, 3, 550, "", "INVALID USER");
    assert_string_equal(a.rule_id, "mine-invalid-user-retry");
    assert_int_equal(a.cls, RL_RETRY);
    assert_true(a.delay_ms >= 600000);
    a = decide(chain, 3, 451, "4.7.1", "whatever");
    assert_int_equal(a.cls, RL_PAUSE);
    assert_int_equal(a.scope, RL_SCOPE_PROVIDER);
    assert_int_equal(a.pause_until_ms, 1795363200000LL + 2 * 3600000);
    /* The prefix "4.7." does not match "4.3.0" nor a 5xx code. */
    a = decide(chain, 3, 451, "4.3.0", "x");
    assert_string_equal(a.rule_id, "generic-4xx");
    /* Without the inline set, netease decides. */
    a = decide(chain + 1, 2, 550, "", "Invalid User");
    assert_int_equal(a.cls, RL_BOUNCE);
    rl_rules_free(mine);
}

static void test_rules_parse_errors(void **state)
{
    (void)state;
    const char *cases[][2] = {
        {"[{\"code\": \"550\", \"action\": \"fail\", \"why\": \"w\"}]", "id: required"},
        {"[{\"id\": \"a\", \"code\": \"550\", \"action\": \"explode\", \"why\": \"w\"}]", "action"},
        {"[{\"id\": \"a\", \"code\": \"250\", \"action\": \"fail\", \"why\": \"w\"}]", "code"},
        {"[{\"id\": \"a\", \"text\": \"(\", \"action\": \"fail\", \"why\": \"w\"}]", "text"},
        {"[{\"id\": \"a\", \"action\": \"fail\", \"why\": \"w\"}]", "at least one"},
        {"[{\"id\": \"a\", \"code\": \"4xx\", \"action\": \"pause\", \"why\": \"w\"}]", "scope"},
        {"[{\"id\": \"a\", \"code\": \"4xx\", \"action\": \"pause\", \"scope\": \"sender\","
         " \"until\": \"soon\", \"why\": \"w\"}]",
         "until"},
        {"[{\"id\": \"a\", \"code\": \"4xx\", \"action\": \"lower_per_connection\", \"why\": "
         "\"w\"}]",
         "cap"},
        {"[{\"id\": \"a\", \"code\": \"4xx\", \"action\": \"retry\", \"why\": \"w\", \"colour\": "
         "1}]",
         "colour"},
        {"[{\"id\": \"a\", \"code\": \"4xx\", \"action\": \"retry\"}]", "why"},
        {"{}", "list"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_error_t jerr;
        json_t *j = json_loads(cases[i][0], 0, &jerr);
        assert_non_null(j);
        rl_rules_t *rs = (rl_rules_t *)1;
        char err[300] = "";
        assert_int_equal(rl_rules_parse(j, "src", &rs, err, sizeof err), VL_ECONFIG);
        assert_null(rs);
        if (!strstr(err, cases[i][1]) || strncmp(err, "src", 3) != 0)
            fail_msg("case %zu: \"%s\" does not mention %s", i, err, cases[i][1]);
        json_decref(j);
    }
}

static void test_provider_sets(void **state)
{
    (void)state;
    const rl_rules_t *g = rl_rules_builtin("generic");
    struct {
        const char *set;
        int code;
        const char *enh, *text;
        rl_class_t want;
    } cases[] = {
        {"gmail", 421, "4.7.28",
         "[1.2.3.4] Our system has detected an unusual rate of "
         "unsolicited mail originating from your IP address.",
         RL_PAUSE},
        {"gmail", 421, "4.7.0", "Try again later, closing connection.", RL_PAUSE},
        {"gmail", 550, "5.1.1", "The email account that you tried to reach does not exist.",
         RL_BOUNCE},
        {"gmail", 552, "5.2.3", "Your message exceeded Google's message size limits.", RL_FAIL},
        {"gmail", 550, "5.7.26",
         "This mail has been blocked because the sender is "
         "unauthenticated.",
         RL_STOP},
        {"outlook", 421, "4.7.650",
         "The mail server [1.2.3.4] has been temporarily rate "
         "limited due to IP reputation.",
         RL_PAUSE},
        {"outlook", 451, "4.7.500",
         "Server busy. Please try again later from [1.2.3.4]. "
         "(S77714)",
         RL_PAUSE},
        {"outlook", 421, "",
         "RP-002 (BAY004-MC1F12) Unfortunately, some messages from "
         "1.2.3.4 weren't sent.",
         RL_LOWER_CONCURRENCY},
        {"outlook", 550, "5.5.0", "Requested action not taken: mailbox unavailable (S2017062302).",
         RL_BOUNCE},
        {"outlook", 550, "5.7.1",
         "Unfortunately, messages from [1.2.3.4] weren't sent. Please "
         "contact your Internet service provider since part of their "
         "network is on our block list (S3150).",
         RL_STOP},
        {"yahoo", 421, "4.7.0",
         "[TSS04] Messages from 1.2.3.4 temporarily deferred due to "
         "unexpected volume or user complaints - 4.16.55.1; see "
         "https://postmaster.yahooinc.com/error-codes",
         RL_PAUSE},
        {"yahoo", 421, "4.7.0",
         "[TSS09] All messages from 1.2.3.4 will be permanently deferred; "
         "Retrying will NOT succeed.",
         RL_PAUSE},
        {"yahoo", 553, "5.7.1",
         "[BL21] Connections will not be accepted from 1.2.3.4, because "
         "the ip is in Spamhaus's list",
         RL_STOP},
        {"yahoo", 554, "",
         "delivery error: dd This user doesn't have a yahoo.com account "
         "(x@yahoo.com) [0] - mta1.mail.bf1.yahoo.com",
         RL_BOUNCE},
        {"qq", 550, "",
         "Mail content denied. http://service.mail.qq.com/cgi-bin/help?subtype=1"
         "&&id=20022&&no=1000726",
         RL_FAIL},
        {"qq", 550, "",
         "Mailbox not found. http://service.mail.qq.com/cgi-bin/help?subtype=1"
         "&&id=20022&&no=1000728",
         RL_BOUNCE},
        {"qq", 550, "",
         "Ip frequency limited. http://service.mail.qq.com/cgi-bin/help?subtype=1"
         "&&id=20022&&no=1000725",
         RL_PAUSE},
        {"qq", 451, "", "Too many connections, please try again later", RL_LOWER_CONCURRENCY},
        {"qq", 550, "", "Sender frequency limited", RL_PAUSE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const rl_rules_t *chain[] = {rl_rules_builtin(cases[i].set), g};
        rl_reply_t r = {cases[i].code, cases[i].enh, cases[i].text};
        const rl_rule_t *rule = rl_rules_match(chain, 1, &r);
        if (!rule || rl_rule_class(rule) != cases[i].want)
            fail_msg("%s case %zu (%d %s): got %s", cases[i].set, i, cases[i].code, cases[i].text,
                     rule ? rl_rule_id(rule) : "no rule");
    }
}

static uint64_t fixed_rand(void *arg)
{
    return *(uint64_t *)arg;
}

static void test_actions(void **state)
{
    (void)state;
    rl_tz_t *sh = rl_tz_load("Asia/Shanghai", NULL, 0);
    assert_non_null(sh);
    const rl_rules_t *chain[] = {rl_rules_builtin("netease"), rl_rules_builtin("generic")};
    uint64_t rnd = 0;
    rl_decide_ctx_t ctx = {.now_ms = 1795363200000ULL + 10 * 3600000ULL, /* 10:00 Shanghai */
                           .attempt = 1,
                           .tz = sh,
                           .rand = fixed_rand,
                           .rand_arg = &rnd,
                           .backoff_base_ms = 10000,
                           .backoff_max_ms = 3600000};
    rl_action_t a;
    /* 451 DT:SPM asks for two minutes; the first backoff (5..10 s) is shorter. */
    rl_reply_t spm = {451, "", "DT:SPM ,please try again"};
    assert_int_equal(rl_decide(chain, 2, &spm, &ctx, &a), 0);
    assert_int_equal(a.cls, RL_RETRY);
    assert_int_equal(a.delay_ms, 120000);
    /* Generic retries grow exponentially, with jitter in [d/2, d]. */
    rl_reply_t tmp = {451, "", "Requested action aborted: local error in processing"};
    uint64_t prev = 0;
    for (unsigned att = 1; att <= 12; att++) {
        ctx.attempt = att;
        rnd = 0;
        assert_int_equal(rl_decide(chain, 2, &tmp, &ctx, &a), 0);
        uint64_t lo = a.delay_ms;
        rnd = UINT64_MAX - 1;
        assert_int_equal(rl_decide(chain, 2, &tmp, &ctx, &a), 0);
        assert_true(a.delay_ms >= lo && a.delay_ms <= 2 * lo + 1);
        assert_true(lo >= prev);
        assert_true(a.delay_ms <= 3600000);
        prev = lo;
    }
    assert_int_equal(prev, 1800000); /* capped at max/2 .. max */
    /* 550 RP:TRC pauses the sender until Shanghai's next midnight. */
    rl_reply_t trc = {550, "", "RP:TRC 发件人当天内累计的收件人数量超过限制"};
    ctx.attempt = 1;
    assert_int_equal(rl_decide(chain, 2, &trc, &ctx, &a), 0);
    assert_int_equal(a.cls, RL_PAUSE);
    assert_int_equal(a.scope, RL_SCOPE_SENDER);
    assert_int_equal(a.pause_until_ms, 1795449600000LL);
    assert_int_equal(a.delay_ms, 14 * 3600000ULL);
    /* 451 MI:SFQ: 15 minutes. */
    rl_reply_t sfq = {451, "", "MI:SFQ"};
    assert_int_equal(rl_decide(chain, 2, &sfq, &ctx, &a), 0);
    assert_int_equal(a.pause_until_ms, (int64_t)ctx.now_ms + 900000);
    /* 450 MI:DMC: lower messages per connection and reconnect. */
    rl_reply_t dmc = {450, "", "MI:DMC 当前连接发送的邮件数量超出限制"};
    assert_int_equal(rl_decide(chain, 2, &dmc, &ctx, &a), 0);
    assert_int_equal(a.cls, RL_LOWER_PER_CONNECTION);
    assert_int_equal(a.cap, RL_CAP_MESSAGES_PER_CONNECTION);
    assert_true(a.close_connection);
    assert_int_equal(rl_limit_from_cap(a.cap), RL_LIMIT_MESSAGES_PER_CONNECTION);
    rl_reply_t rcl = {550, "", "RP:RCL"};
    assert_int_equal(rl_decide(chain, 2, &rcl, &ctx, &a), 0);
    assert_int_equal(a.cap, RL_CAP_RECIPIENTS_PER_MESSAGE);
    rl_tz_free(sh);
    assert_int_equal(rl_backoff(0, 1000, 60000, 0), 500);
    assert_int_equal(rl_backoff(64, 1000, 60000, 0), 30000);
}

static void test_aimd(void **state)
{
    (void)state;
    uint32_t cfg[RL_LIMIT_LAST] = {8, 50, 0, 1};
    rl_aimd_t a;
    rl_aimd_init(&a, cfg, 0);
    uint64_t t = 1000000;
    assert_int_equal(rl_aimd_get(&a, RL_LIMIT_CONNECTIONS, t), 8);
    assert_int_equal(rl_aimd_decrease(&a, RL_LIMIT_CONNECTIONS, t, 0), 4);
    assert_int_equal(rl_aimd_decrease(&a, RL_LIMIT_CONNECTIONS, t + 1, 0), 2);
    assert_int_equal(rl_aimd_decrease(&a, RL_LIMIT_CONNECTIONS, t + 2, 0), 1);
    assert_int_equal(rl_aimd_decrease(&a, RL_LIMIT_CONNECTIONS, t + 3, 0), 1); /* floor 1 */
    /* Quiet for 59.999 s: nothing; then one step per minute; never above 8. */
    assert_int_equal(rl_aimd_get(&a, RL_LIMIT_CONNECTIONS, t + 3 + 59999), 1);
    assert_int_equal(rl_aimd_get(&a, RL_LIMIT_CONNECTIONS, t + 3 + 60000), 2);
    assert_int_equal(rl_aimd_get(&a, RL_LIMIT_CONNECTIONS, t + 3 + 180000), 4);
    assert_int_equal(rl_aimd_get(&a, RL_LIMIT_CONNECTIONS, t + 3 + 3600000), 8);
    /* A signal while raising halves what is in force then. */
    assert_int_equal(rl_aimd_decrease(&a, RL_LIMIT_CONNECTIONS, t + 4000000, 0), 4);
    assert_int_equal(rl_aimd_get(&a, RL_LIMIT_CONNECTIONS, t + 4000000 + 60000), 5);
    /* observed below the ceiling: halve what was actually reached (20 messages). */
    assert_int_equal(rl_aimd_decrease(&a, RL_LIMIT_MESSAGES_PER_CONNECTION, t, 21), 10);
    /* No configured limit: the observed value is the starting point; raising is unbounded
     * until the next signal. */
    assert_int_equal(rl_aimd_get(&a, RL_LIMIT_RECIPIENTS_PER_CONNECTION, t), 0);
    assert_int_equal(rl_aimd_decrease(&a, RL_LIMIT_RECIPIENTS_PER_CONNECTION, t, 0), 0);
    assert_int_equal(rl_aimd_decrease(&a, RL_LIMIT_RECIPIENTS_PER_CONNECTION, t, 100), 50);
    assert_int_equal(rl_aimd_get(&a, RL_LIMIT_RECIPIENTS_PER_CONNECTION, t + 120000), 52);
    /* A custom quiet interval. */
    rl_aimd_init(&a, cfg, 5000);
    rl_aimd_decrease(&a, RL_LIMIT_CONNECTIONS, 0, 0);
    assert_int_equal(rl_aimd_get(&a, RL_LIMIT_CONNECTIONS, 5000), 5);
}

static void test_route(void **state)
{
    (void)state;
    rl_route_t r;
    rl_route_init(&r, 3, 1000, 8000);
    uint64_t t = 50000;
    assert_int_equal(rl_route_failure(&r, t, "connect 10.0.0.1:25: connection refused", 0),
                     t + 500);
    assert_false(r.suspended);
    assert_string_equal(r.reason, "connect 10.0.0.1:25: connection refused");
    /* The other connections of the same round fail before t + 500: one
     * failure, whatever their number; the reason is the latest. */
    for (int i = 0; i < 20; i++)
        assert_int_equal(rl_route_failure(&r, t + 10, "421 busy", 0), t + 500);
    assert_int_equal(r.failures, 1);
    assert_string_equal(r.reason, "421 busy");
    assert_int_equal(rl_route_failure(&r, t + 500, "421 busy", 0), t + 500 + 1000);
    assert_int_equal(r.failures, 2);
    rl_route_success(&r);
    assert_int_equal(r.failures, 0);
    rl_route_failure(&r, t, "a", 0);
    rl_route_failure(&r, t + 500, "b", 0);
    assert_false(r.suspended);
    assert_int_equal(rl_route_failure(&r, t + 1500, "connect: timed out", 0), t + 1500 + 2000);
    assert_true(r.suspended);
    assert_non_null(strstr(r.reason, "3 failures"));
    assert_non_null(strstr(r.reason, "timed out"));
    rl_route_success(&r);
    assert_true(r.suspended); /* only a person or the scheduler resumes it */
    rl_route_resume(&r);
    assert_false(r.suspended);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_netease_every_code),
        cmocka_unit_test(test_builtin_sets_valid),
        cmocka_unit_test(test_generic),
        cmocka_unit_test(test_protocol_error_replies),
        cmocka_unit_test(test_netease_falls_back),
        cmocka_unit_test(test_inline_rules_first_and_icase),
        cmocka_unit_test(test_rules_parse_errors),
        cmocka_unit_test(test_provider_sets),
        cmocka_unit_test(test_actions),
        cmocka_unit_test(test_aimd),
        cmocka_unit_test(test_route),
    };
    return cmocka_run_group_tests_name("ratelimit_rules", tests, NULL, NULL);
}
