/* Unit tests for ratelimit/provider: the providers file, errors with line and column,
 * domain matching, the conservative default and secrets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "ratelimit/provider.h"

static const char *const good =
    "[\n"
    "  {\"name\": \"netease\", \"domains\": [\"163.com\", \"126.com\", \"yeah.net\"],\n"
    "   \"route\": \"smtps://smtp.163.com:465\",\n"
    "   \"auth\": {\"user\": \"me@163.com\", \"password_env\": \"VOLLEY_TEST_PASS\"},\n"
    "   \"max_connections\": 5, \"max_messages_per_connection\": 50,\n"
    "   \"max_recipients_per_message\": 1, \"max_recipients_per_connection\": 100,\n"
    "   \"rate\": \"10/s\", \"burst\": 4, \"quotas\": [\"500/15m\", \"10000/d\"],\n"
    "   \"timezone\": \"Asia/Shanghai\", \"rules\": \"netease\", \"helo\": \"mx.example.org\"},\n"
    "  {\"name\": \"corp\", \"domains\": [\"*.corp.example\"], \"route\": \"smtp://[::1]:2525\",\n"
    "   \"rules\": [{\"id\": \"corp-greylist\", \"code\": \"451\", \"text\": \"greylist\",\n"
    "              \"action\": \"retry\", \"retry_after\": 300, \"why\": \"greylisting\"}],\n"
    "   \"rules_base\": \"outlook\", \"tls\": {\"ca_file\": \"/tmp/ca.pem\", \"insecure\": "
    "false}},\n"
    "  {\"name\": \"rest\", \"domains\": [\"*\"], \"route\": \"smtp://127.0.0.1:2525\",\n"
    "   \"max_connections\": 20, \"rate\": \"1000/s\", \"rules\": \"generic\"}\n"
    "]\n";

static rl_providers_t *parse_ok(const char *text)
{
    rl_providers_t *ps = NULL;
    char err[400];
    if (rl_providers_parse(text, strlen(text), "providers.json", &ps, err, sizeof err) != 0)
        fail_msg("%s", err);
    return ps;
}

static void test_parse_good(void **state)
{
    (void)state;
    rl_providers_t *ps = parse_ok(good);
    assert_int_equal(rl_providers_count(ps), 3);
    const rl_provider_t *p = rl_providers_find(ps, "netease");
    assert_non_null(p);
    assert_int_equal(p->route, RL_ROUTE_SMTPS);
    assert_string_equal(p->host, "smtp.163.com");
    assert_int_equal(p->port, 465);
    assert_string_equal(p->auth_user, "me@163.com");
    assert_string_equal(p->password_env, "VOLLEY_TEST_PASS");
    assert_int_equal(p->max_connections, 5);
    assert_int_equal(p->max_messages_per_connection, 50);
    assert_int_equal(p->max_recipients_per_message, 1);
    assert_int_equal(p->max_recipients_per_connection, 100);
    assert_int_equal(p->rate.interval_us, 100000);
    assert_int_equal(p->rate.burst, 4);
    assert_int_equal(p->nquotas, 2);
    assert_int_equal(p->quotas[0].limit, 500);
    assert_int_equal(p->quotas[1].window_s, 86400);
    assert_string_equal(rl_tz_name(p->tz), "Asia/Shanghai");
    assert_ptr_equal(p->rules_base, rl_rules_builtin("netease"));
    assert_null(p->rules);
    assert_string_equal(p->helo, "mx.example.org");

    const rl_provider_t *c = rl_providers_find(ps, "corp");
    assert_string_equal(c->host, "::1");
    assert_int_equal(c->port, 2525);
    assert_int_equal(c->route, RL_ROUTE_SMTP);
    assert_string_equal(c->tls_ca_file, "/tmp/ca.pem");
    assert_false(c->tls_insecure);
    assert_int_equal(rl_rules_count(c->rules), 1);
    /* Inline rules, then the named base set, then generic. */
    const rl_rules_t *chain[3];
    assert_int_equal(rl_provider_rules(c, chain), 3);
    rl_reply_t r = {451, "4.7.1", "Greylisted, come back later"};
    assert_string_equal(rl_rule_id(rl_rules_match(chain, 3, &r)), "corp-greylist");
    rl_reply_t r2 = {451, "4.7.500", "Server busy"};
    assert_string_equal(rl_rule_id(rl_rules_match(chain, 3, &r2)), "outlook-451-4.7.500-busy");
    rl_reply_t r3 = {452, "", "mailbox full"};
    assert_string_equal(rl_rule_id(rl_rules_match(chain, 3, &r3)), "generic-4xx");

    const rl_provider_t *rest = rl_providers_find(ps, "rest");
    assert_string_equal(rl_tz_name(rest->tz), "UTC");
    assert_int_equal(rest->rate.interval_us, 1000);
    assert_null(rl_providers_find(ps, "nobody"));
    rl_providers_free(ps);
}

static void test_match(void **state)
{
    (void)state;
    rl_providers_t *ps = parse_ok(good);
    assert_string_equal(rl_providers_match(ps, "163.com")->name, "netease");
    assert_string_equal(rl_providers_match(ps, "YEAH.NET.")->name, "netease");
    assert_string_equal(rl_providers_match(ps, "mail.163.com")->name, "rest");
    assert_string_equal(rl_providers_match(ps, "a.corp.example")->name, "corp");
    assert_string_equal(rl_providers_match(ps, "x.y.corp.example")->name, "corp");
    assert_string_equal(rl_providers_match(ps, "corp.example")->name, "rest");
    assert_string_equal(rl_providers_match(ps, "gmail.com")->name, "rest");
    rl_providers_free(ps);

    /* Without "*", unknown domains get the conservative default. */
    ps = parse_ok("[{\"name\": \"qq\", \"domains\": [\"qq.com\"], \"route\": \"mx\", "
                  "\"rules\": \"qq\"}]");
    const rl_provider_t *d = rl_providers_match(ps, "example.org");
    assert_string_equal(d->name, "default");
    assert_int_equal(d->route, RL_ROUTE_MX);
    assert_int_equal(d->max_connections, 2);
    assert_int_equal(d->max_messages_per_connection, 10);
    assert_int_equal(d->rate.interval_us, 1000000);
    assert_int_equal(d->rate.burst, 1);
    assert_int_equal(d->nquotas, 0);
    assert_ptr_equal(d->rules_base, rl_rules_builtin("generic"));
    assert_int_equal(d->port, 25);
    assert_int_equal(d->tls_policy, RL_TLS_VERIFY);
    assert_string_equal(rl_providers_match(ps, "QQ.com")->name, "qq");
    assert_int_equal(rl_providers_match(ps, "QQ.com")->port, 25);
    rl_providers_free(ps);

    /* Direct delivery to another port (tests, port maps), TLS policies. */
    ps = parse_ok("[{\"name\": \"t\", \"domains\": [\"*\"], \"route\": \"mx\", "
                  "\"mx_port\": 2525, \"tls\": {\"policy\": \"may\"}},"
                  " {\"name\": \"r\", \"domains\": [\"r.example\"], \"route\": "
                  "\"smtp://h:25\", \"tls\": {\"policy\": \"require\"}}]");
    assert_int_equal(rl_providers_match(ps, "x.example")->port, 2525);
    assert_int_equal(rl_providers_match(ps, "x.example")->tls_policy, RL_TLS_MAY);
    assert_int_equal(rl_providers_match(ps, "r.example")->tls_policy, RL_TLS_REQUIRE);
    rl_providers_free(ps);

    ps = rl_providers_default();
    assert_non_null(ps);
    assert_int_equal(rl_providers_count(ps), 0);
    assert_string_equal(rl_providers_match(ps, "anything.example")->name, "default");
    rl_providers_free(ps);
}

/* Each bad file must be refused with the position and the field in the message. */
static void test_errors(void **state)
{
    (void)state;
    struct {
        const char *text, *want;
    } cases[] = {
        {"[\n  {\"name\": \"a\",\n   \"domains\": [\"x.com\"],\n   \"rate\": \"fast\"}\n]",
         "providers.json:4:4: provider a: rate: \"fast\" is not COUNT/PERIOD"},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"], \"rate\": \"10/s\",\n \"quotas\": "
         "[\"5/2d\"]}]",
         "providers.json:2:2: provider a: quotas: entry 1: \"5/2d\""},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"],\n  \"timezone\": \"Mars/Olympus\"}]",
         "providers.json:2:3: provider a: timezone: unknown time zone \"Mars/Olympus\""},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"], \"route\": \"http://x\"}]",
         "provider a: route: \"http://x\" is not"},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"], \"route\": \"smtp://h:99999\"}]",
         "route: \"smtp://h:99999\": the port"},
        {"[{\"name\": \"a\", \"domains\": []}]", "provider a: domains: must be a non-empty"},
        {"[{\"name\": \"a\"}]", "provider a: domains: required"},
        {"[{\"domains\": [\"x\"]}]", "provider #1: name: required"},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"], \"max_connections\": 0}]",
         "max_connections: must be a whole number"},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"], \"rules\": \"aol\"}]",
         "rules: no built-in rule set \"aol\""},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"], \"colour\": 1}]",
         "provider a: colour: unknown field"},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"]},\n {\"name\": \"a\", \"domains\": "
         "[\"y.com\"]}]",
         "providers.json:2:3: provider a: name: another provider"},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"],\n \"rules\": [{\"id\": \"r\", \"code\": "
         "\"4xx\", \"action\": \"nap\", \"why\": \"w\"}]}]",
         "providers.json:2:2: provider a: rules: rule 1 (r): action"},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"], \"auth\": {\"user\": \"u\"}}]",
         "auth: give exactly one of password_env and password_file"},
        {"[{\"name\": \"a\", \"domains\": [\"bad domain\"]}]", "domains: entry 1"},
        {"[{\"name\": \"a\",, }]", "providers.json:1:"},
        {"{\"name\": \"a\"}", "must be a JSON list"},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"], \"route\": \"smtp://h:25\", "
         "\"mx_port\": 2525}]",
         "provider a: mx_port: only with route \"mx\""},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"], \"tls\": {\"policy\": \"never\"}}]",
         "provider a: tls.policy: must be \"verify\", \"require\" or \"may\""},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"], \"route\": \"smtps://h:465\", "
         "\"tls\": {\"policy\": \"may\"}}]",
         "tls.policy: an smtps:// route"},
        {"[{\"name\": \"a\", \"domains\": [\"x.com\"], \"route\": \"mx\", "
         "\"auth\": {\"user\": \"u\", \"password_env\": \"P\"}}]",
         "provider a: auth: not with route \"mx\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rl_providers_t *ps = (rl_providers_t *)1;
        char err[400] = "";
        int rc = rl_providers_parse(cases[i].text, strlen(cases[i].text), "providers.json", &ps,
                                    err, sizeof err);
        assert_int_equal(rc, VL_ECONFIG);
        assert_null(ps);
        if (!strstr(err, cases[i].want))
            fail_msg("case %zu: got \"%s\", want \"%s\"", i, err, cases[i].want);
    }
}

/* The EHLO name goes on the wire as it is: CR/LF in it injected commands (issue 20). */
static void test_helo_check(void **state)
{
    (void)state;
    const char *bad[] = {"evil\r\nMAIL FROM:<x>",
                         "evil\nMAIL FROM:<x>",
                         "a b",
                         "",
                         "a..b",
                         ".a",
                         "a.",
                         "-a.com",
                         "a-.com",
                         "a_b.com",
                         "caf\xc3\xa9.com",
                         "[1.2.3]",
                         "[1.2.3.4",
                         "[]",
                         "[",
                         "[IPv6:1.2.3.4]",
                         "[IPv6:::1\r\n]",
                         "[::1]",
                         "[example.com]",
                         "<x>"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char why[200] = "";
        if (rl_helo_check(bad[i], why, sizeof why) != VL_EINVAL)
            fail_msg("case %zu accepted: \"%s\"", i, bad[i]);
        assert_true(strlen(why) > 10);
        assert_null(strchr(why, '\r'));
        assert_null(strchr(why, '\n'));
    }
    char l63[64], l64[65], long256[257];
    memset(l63, 'a', 63);
    l63[63] = '\0';
    memset(l64, 'a', 64);
    l64[64] = '\0';
    assert_int_equal(rl_helo_check(l63, NULL, 0), 0);
    assert_int_equal(rl_helo_check(l64, NULL, 0), VL_EINVAL);
    for (size_t i = 0; i < 256; i++)
        long256[i] = i % 2 ? '.' : 'a';
    long256[255] = 'a';
    long256[256] = '\0';
    assert_int_equal(rl_helo_check(long256, NULL, 0), VL_EINVAL);
    long256[255] = '\0'; /* 255 characters, the last an "a" */
    assert_int_equal(rl_helo_check(long256, NULL, 0), 0);
    const char *fine[] = {
        "mail.example.com", "[127.0.0.1]",         "[IPv6:::1]",       "[IPv6:2001:db8::25]",
        "localhost",        "xn--caf-dma.example", "MX-1.Example.COM", "a"};
    for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++)
        if (rl_helo_check(fine[i], NULL, 0) != 0) fail_msg("case %zu refused: \"%s\"", i, fine[i]);

    /* In the providers file: a configuration error naming the file and the field. */
    const char *text = "[{\"name\": \"a\", \"domains\": [\"x.com\"],\n"
                       " \"helo\": \"evil\\r\\nMAIL FROM:<x>\"}]";
    rl_providers_t *ps = (rl_providers_t *)1;
    char err[400] = "";
    assert_int_equal(rl_providers_parse(text, strlen(text), "providers.json", &ps, err, sizeof err),
                     VL_ECONFIG);
    assert_null(ps);
    assert_non_null(
        strstr(err, "providers.json:2:2: provider a: helo: contains a carriage return"));
    text = "[{\"name\": \"a\", \"domains\": [\"x.com\"], \"helo\": \"ok\\u0000\\r\\nRSET\"}]";
    ps = (rl_providers_t *)1;
    assert_int_equal(rl_providers_parse(text, strlen(text), "providers.json", &ps, err, sizeof err),
                     VL_ECONFIG);
    assert_null(ps);
    text = "[{\"name\": \"a\", \"domains\": [\"x.com\"], \"helo\": \"[IPv6:::1]\"}]";
    assert_int_equal(rl_providers_parse(text, strlen(text), "providers.json", &ps, err, sizeof err),
                     0);
    assert_string_equal(rl_providers_find(ps, "a")->helo, "[IPv6:::1]");
    rl_providers_free(ps);
}

static void test_password_never_printed(void **state)
{
    (void)state;
    const char *text = "[{\"name\": \"a\", \"domains\": [\"x.com\"],\n"
                       " \"auth\": {\"user\": \"u\", \"password\": \"hunter2-SECRET\"}}]";
    rl_providers_t *ps = NULL;
    char err[600] = "";
    assert_int_equal(rl_providers_parse(text, strlen(text), "p.json", &ps, err, sizeof err),
                     VL_ECONFIG);
    assert_null(strstr(err, "hunter2"));
    assert_non_null(strstr(err, "p.json:2:24: provider a: auth.password:"));
    assert_non_null(strstr(err, "password_env"));

    /* From the environment, at run time. */
    ps = parse_ok(good);
    const rl_provider_t *p = rl_providers_find(ps, "netease");
    char buf[64];
    unsetenv("VOLLEY_TEST_PASS");
    assert_int_equal(rl_provider_password(p, buf, sizeof buf, err, sizeof err), VL_ENOENT);
    assert_non_null(strstr(err, "VOLLEY_TEST_PASS"));
    setenv("VOLLEY_TEST_PASS", "s3cret-env", 1);
    assert_int_equal(rl_provider_password(p, buf, sizeof buf, err, sizeof err), 0);
    assert_string_equal(buf, "s3cret-env");
    char tiny[4];
    assert_int_equal(rl_provider_password(p, tiny, sizeof tiny, err, sizeof err), VL_ETOOBIG);
    assert_null(strstr(err, "s3cret"));
    assert_int_equal(
        rl_provider_password(rl_providers_find(ps, "rest"), buf, sizeof buf, err, sizeof err),
        VL_EINVAL);
    rl_providers_free(ps);

    /* From a file, trailing newline stripped. */
    char dir[] = "/tmp/volley-pw-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64], json[256];
    snprintf(path, sizeof path, "%s/pw", dir);
    snprintf(json, sizeof json,
             "[{\"name\": \"f\", \"domains\": [\"*\"], \"route\": \"smtp://h:25\", \"auth\": "
             "{\"user\": \"u\", "
             "\"password_file\": \"%s\"}}]",
             path);
    ps = parse_ok(json);
    p = rl_providers_find(ps, "f");
    assert_int_equal(rl_provider_password(p, buf, sizeof buf, err, sizeof err), VL_ENOENT);
    assert_non_null(strstr(err, path));
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("file-s3cret\r\n", f);
    fclose(f);
    assert_int_equal(rl_provider_password(p, buf, sizeof buf, err, sizeof err), 0);
    assert_string_equal(buf, "file-s3cret");
    assert_int_equal(rl_provider_password(p, tiny, sizeof tiny, err, sizeof err), VL_ETOOBIG);
    assert_null(strstr(err, "s3cret"));
    rl_providers_free(ps);
    unlink(path);
    rmdir(dir);
}

static void test_load_file(void **state)
{
    (void)state;
    rl_providers_t *ps;
    char err[300];
    assert_int_equal(rl_providers_load("/nonexistent/providers.json", &ps, err, sizeof err),
                     VL_ENOENT);
    assert_non_null(strstr(err, "/nonexistent/providers.json"));
    char path[] = "/tmp/volley-prov-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, good, strlen(good)), (ssize_t)strlen(good));
    close(fd);
    assert_int_equal(rl_providers_load(path, &ps, err, sizeof err), 0);
    assert_int_equal(rl_providers_count(ps), 3);
    rl_providers_free(ps);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good), cmocka_unit_test(test_match),
        cmocka_unit_test(test_errors),     cmocka_unit_test(test_password_never_printed),
        cmocka_unit_test(test_load_file),  cmocka_unit_test(test_helo_check),
    };
    return cmocka_run_group_tests_name("ratelimit_provider", tests, NULL, NULL);
}
