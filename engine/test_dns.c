/* test_dns.c: MX lookups against a real DNS server (tests/support/dnsd.py).
 *
 * The group set-up starts dnsd.py on 127.0.0.1 with the zone below and reads
 * its port; every test makes its own loop and resolver, and closes both at
 * the end with no handle left (run under ASan for leaks). dnsd.py needs
 * Debian's python3-dnslib (scripts/setup installs it): without it every test
 * fails, saying so, rather than being skipped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "engine/dns.h"

/* Debian's interpreter, where python3-dnslib lives (a python3 earlier on
 * PATH, pyenv's say, would not have it). The tests run from the project
 * root (meson's workdir). */
#define PYTHON "/usr/bin/python3"
#define DNSD "tests/support/dnsd.py"

static const char zone_json[] =
    "{\n"
    /* Ordering: preference 10, two hosts at 20 (the shuffle), an IP
     * literal at 30. One name given with its trailing dot. */
    "  \"order.test\": {\"MX\": [[20, \"mx-b.order.test.\"], [10, \"mx-a.order.test\"],\n"
    "                          [20, \"mx-c.order.test\"], [30, \"192.0.2.9\"]]},\n"
    "  \"mx-a.order.test\": {\"A\": [\"127.0.0.1\"], \"AAAA\": [\"::1\"]},\n"
    "  \"mx-b.order.test\": {\"A\": [\"127.0.0.2\"]},\n"
    "  \"mx-c.order.test\": {\"A\": [\"127.0.0.3\"]},\n"
    /* One MX host without addresses (NODATA), one that does not exist. */
    "  \"skip.test\": {\"MX\": [[10, \"noaddr.skip.test\"], [20, \"mx-b.order.test\"]]},\n"
    "  \"noaddr.skip.test\": {},\n"
    "  \"alldead.test\": {\"MX\": [[10, \"noaddr.skip.test\"], [20, \"nx.skip.test\"]]},\n"
    "  \"implicit.test\": {\"A\": [\"127.0.0.5\"]},\n"
    "  \"empty.test\": {},\n"
    "  \"nullmx.test\": {\"MX\": [[0, \".\"]]},\n"
    "  \"nullmix.test\": {\"MX\": [[0, \".\"], [10, \"mx-b.order.test\"]]},\n"
    "  \"broken.test\": {\"SERVFAIL\": true},\n"
    "  \"slow.test\": {\"DROP\": true},\n"
    /* The same addresses under two names: listed once. */
    "  \"dup.test\": {\"MX\": [[10, \"mx-a.order.test\"], [20, \"alias-a.test\"],\n"
    "                        [30, \"MX-A.order.test\"]]},\n"
    "  \"alias-a.test\": {\"A\": [\"127.0.0.1\"], \"AAAA\": [\"::1\"]},\n"
    /* Forty addresses are more than 512 bytes: dnsd.py truncates the UDP
     * answer and c-ares asks again over TCP. */
    "  \"big.test\": {\"A\": [\"127.0.2.1\", \"127.0.2.2\", \"127.0.2.3\", \"127.0.2.4\",\n"
    "      \"127.0.2.5\", \"127.0.2.6\", \"127.0.2.7\", \"127.0.2.8\", \"127.0.2.9\",\n"
    "      \"127.0.2.10\", \"127.0.2.11\", \"127.0.2.12\", \"127.0.2.13\", \"127.0.2.14\",\n"
    "      \"127.0.2.15\", \"127.0.2.16\", \"127.0.2.17\", \"127.0.2.18\", \"127.0.2.19\",\n"
    "      \"127.0.2.20\", \"127.0.2.21\", \"127.0.2.22\", \"127.0.2.23\", \"127.0.2.24\",\n"
    "      \"127.0.2.25\", \"127.0.2.26\", \"127.0.2.27\", \"127.0.2.28\", \"127.0.2.29\",\n"
    "      \"127.0.2.30\", \"127.0.2.31\", \"127.0.2.32\", \"127.0.2.33\", \"127.0.2.34\",\n"
    "      \"127.0.2.35\", \"127.0.2.36\", \"127.0.2.37\", \"127.0.2.38\", \"127.0.2.39\",\n"
    "      \"127.0.2.40\"]},\n"
    /* Twelve hosts: the targets stop at ENG_DNS_MAX_TARGETS. */
    "  \"many.test\": {\"MX\": [[1, \"h1.many.test\"], [2, \"h2.many.test\"],\n"
    "      [3, \"h3.many.test\"], [4, \"h4.many.test\"], [5, \"h5.many.test\"],\n"
    "      [6, \"h6.many.test\"], [7, \"h7.many.test\"], [8, \"h8.many.test\"],\n"
    "      [9, \"h9.many.test\"], [10, \"h10.many.test\"], [11, \"h11.many.test\"],\n"
    "      [12, \"h12.many.test\"]]},\n"
    "  \"h1.many.test\": {\"A\": [\"127.0.1.1\"]}, \"h2.many.test\": {\"A\": [\"127.0.1.2\"]},\n"
    "  \"h3.many.test\": {\"A\": [\"127.0.1.3\"]}, \"h4.many.test\": {\"A\": [\"127.0.1.4\"]},\n"
    "  \"h5.many.test\": {\"A\": [\"127.0.1.5\"]}, \"h6.many.test\": {\"A\": [\"127.0.1.6\"]},\n"
    "  \"h7.many.test\": {\"A\": [\"127.0.1.7\"]}, \"h8.many.test\": {\"A\": [\"127.0.1.8\"]},\n"
    "  \"h9.many.test\": {\"A\": [\"127.0.1.9\"]}, \"h10.many.test\": {\"A\": [\"127.0.1.10\"]},\n"
    "  \"h11.many.test\": {\"A\": [\"127.0.1.11\"]}, \"h12.many.test\": {\"A\": [\"127.0.1.12\"]}\n"
    "}\n";

/* ---- the server ------------------------------------------------------- */

static struct {
    char dir[64];
    pid_t pid;
    int port;
    char servers[64];  /* "127.0.0.1:PORT" */
    char problem[512]; /* why the server is not there, "" when it is */
} srv;

static void path_in(char *out, size_t n, const char *file)
{
    snprintf(out, n, "%s/%s", srv.dir, file);
}

static int start_server(void **state)
{
    (void)state;
    char zone[128], portfile[128];
    snprintf(srv.dir, sizeof srv.dir, "/tmp/vl-dns-XXXXXX");
    if (!mkdtemp(srv.dir)) {
        snprintf(srv.problem, sizeof srv.problem, "mkdtemp: %s", strerror(errno));
        return 0;
    }
    path_in(zone, sizeof zone, "zone.json");
    path_in(portfile, sizeof portfile, "port");
    FILE *f = fopen(zone, "w");
    if (!f || fputs(zone_json, f) < 0 || fclose(f) != 0) {
        snprintf(srv.problem, sizeof srv.problem, "cannot write %s", zone);
        return 0;
    }
    if (access(PYTHON, X_OK) != 0) {
        snprintf(srv.problem, sizeof srv.problem, "%s is missing", PYTHON);
        return 0;
    }
    pid_t parent = getpid();
    srv.pid = fork();
    if (srv.pid < 0) {
        snprintf(srv.problem, sizeof srv.problem, "fork: %s", strerror(errno));
        return 0;
    }
    if (srv.pid == 0) {
        /* The server goes when the test does, even if the test crashes. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(1);
        /* Its "port N" line would upset meson's TAP reader: to stderr. */
        dup2(STDERR_FILENO, STDOUT_FILENO);
        execl(PYTHON, PYTHON, DNSD, "--zone", zone, "--port", "0", "--port-file", portfile,
              (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", PYTHON, strerror(errno));
        _exit(127);
    }
    /* dnsd.py renames the port file into place once both sockets listen. */
    for (int i = 0; i < 400; i++) {
        int status;
        if (waitpid(srv.pid, &status, WNOHANG) == srv.pid) {
            srv.pid = 0;
            snprintf(srv.problem, sizeof srv.problem,
                     "%s exited (status %d) before it listened: is python3-dnslib installed? "
                     "(scripts/setup installs it; see its message above)",
                     DNSD, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
            return 0;
        }
        f = fopen(portfile, "r");
        if (f) {
            int ok = fscanf(f, "%d", &srv.port) == 1;
            fclose(f);
            if (ok && srv.port > 0) {
                snprintf(srv.servers, sizeof srv.servers, "127.0.0.1:%d", srv.port);
                return 0;
            }
        }
        usleep(25000);
    }
    snprintf(srv.problem, sizeof srv.problem, "%s wrote no port within 10 s", DNSD);
    return 0;
}

static int stop_server(void **state)
{
    (void)state;
    char p[128];
    if (srv.pid > 0) {
        kill(srv.pid, SIGTERM);
        waitpid(srv.pid, NULL, 0);
    }
    path_in(p, sizeof p, "zone.json");
    unlink(p);
    path_in(p, sizeof p, "port");
    unlink(p);
    rmdir(srv.dir);
    return 0;
}

/* Every test starts here: a clear failure when the server could not start. */
static void need_server(void)
{
    if (srv.problem[0] || !srv.port)
        fail_msg("no test DNS server: %s", srv.problem[0] ? srv.problem : "not started");
}

/* ---- lookups ---------------------------------------------------------- */

typedef struct result {
    int calls;
    eng_dns_status_t st;
    size_t n;
    eng_target_t t[ENG_DNS_MAX_TARGETS];
    char why[512];
} result_t;

/* Set while eng_dns_mx runs: no callback may see it set. */
static int in_call;

static int call_mx(eng_dns_t *d, const char *domain, uint16_t port, eng_dns_mx_cb cb, void *ud)
{
    int saved = in_call;
    in_call = 1;
    int rc = eng_dns_mx(d, domain, port, cb, ud);
    in_call = saved;
    return rc;
}

static void on_result(void *ud, eng_dns_status_t st, const eng_target_t *t, size_t n,
                      const char *why)
{
    result_t *r = ud;
    assert_false(in_call);
    r->calls++;
    r->st = st;
    r->n = n;
    assert_true(n <= ENG_DNS_MAX_TARGETS);
    if (n) memcpy(r->t, t, n * sizeof *t);
    assert_non_null(why);
    snprintf(r->why, sizeof r->why, "%s", why);
    if (st == ENG_DNS_OK)
        assert_true(n >= 1);
    else
        assert_true(n == 0 && *why);
}

static void on_closed(void *ud)
{
    (*(int *)ud)++;
}

typedef struct harness {
    uv_loop_t loop;
    eng_dns_t *d;
    int closed;
} harness_t;

static void harness_open(harness_t *h, unsigned timeout_ms)
{
    char err[256] = "";
    need_server();
    memset(h, 0, sizeof *h);
    assert_int_equal(uv_loop_init(&h->loop), 0);
    int rc = eng_dns_new(&h->d, &h->loop, srv.servers, timeout_ms, err, sizeof err);
    if (rc) fail_msg("eng_dns_new: %s", err);
}

/* Run until *count reaches want, or ms pass. */
static void run_until(harness_t *h, const int *count, int want, unsigned ms)
{
    uint64_t deadline = uv_hrtime() + (uint64_t)ms * 1000000;
    while (*count < want && uv_hrtime() < deadline)
        uv_run(&h->loop, UV_RUN_ONCE);
}

/* Close the resolver and check that the loop is left with nothing. */
static void harness_close(harness_t *h)
{
    eng_dns_close(h->d, on_closed, &h->closed);
    assert_int_equal(h->closed, 0); /* only once the handles are closed */
    assert_int_equal(uv_run(&h->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(h->closed, 1);
    assert_int_equal(uv_loop_close(&h->loop), 0);
}

/* One lookup, start to finish, on a resolver of its own. */
static void lookup(const char *domain, uint16_t port, unsigned timeout_ms, result_t *r)
{
    harness_t h;
    harness_open(&h, timeout_ms);
    memset(r, 0, sizeof *r);
    assert_int_equal(call_mx(h.d, domain, port, on_result, r), 0);
    assert_int_equal(r->calls, 0);
    run_until(&h, &r->calls, 1, 10000);
    assert_int_equal(r->calls, 1);
    harness_close(&h);
}

/* "name ip port" of a target. */
static const char *tstr(const eng_target_t *t, char *buf, size_t n)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (t->addr.ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&t->addr;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof ip);
        port = ntohs(s->sin_port);
    } else if (t->addr.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&t->addr;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof ip);
        port = ntohs(s->sin6_port);
    }
    snprintf(buf, n, "%s %s %u", t->name, ip, port);
    return buf;
}

static void expect_target(const result_t *r, size_t i, const char *want)
{
    char buf[400];
    assert_true(i < r->n);
    assert_string_equal(tstr(&r->t[i], buf, sizeof buf), want);
}

/* Targets i and i+1 are a and b, in either order. */
static void expect_pair(const result_t *r, size_t i, const char *a, const char *b)
{
    char x[400], y[400];
    assert_true(i + 1 < r->n);
    tstr(&r->t[i], x, sizeof x);
    tstr(&r->t[i + 1], y, sizeof y);
    if (strcmp(x, a) != 0) {
        assert_string_equal(x, b);
        assert_string_equal(y, a);
    } else {
        assert_string_equal(y, b);
    }
}

/* ---- tests ------------------------------------------------------------ */

/* By preference, each host's addresses together, the port on each, names
 * without the trailing dot, an IP literal as is; hosts of equal preference
 * both present, and in both orders over many lookups. */
static void test_order(void **state)
{
    (void)state;
    result_t r;
    lookup("order.test", 2525, 0, &r);
    assert_int_equal(r.st, ENG_DNS_OK);
    assert_string_equal(r.why, "");
    assert_int_equal(r.n, 5);
    expect_pair(&r, 0, "mx-a.order.test ::1 2525", "mx-a.order.test 127.0.0.1 2525");
    expect_pair(&r, 2, "mx-b.order.test 127.0.0.2 2525", "mx-c.order.test 127.0.0.3 2525");
    expect_target(&r, 4, "192.0.2.9 192.0.2.9 2525");

    /* Forty lookups on one resolver, ten at a time (each is nine queries:
     * a larger burst could overflow the test server's socket buffer and
     * wait for a retry): hosts b and c come in both orders (all forty alike
     * would happen with probability 2^-39). */
    harness_t h;
    harness_open(&h, 0);
    enum { N = 40, BATCH = 10 };
    static result_t rs[N];
    memset(rs, 0, sizeof rs);
    int b_first = 0, done = 0;
    uint64_t deadline = uv_hrtime() + 20000000000ull;
    for (int first = 0; first < N; first += BATCH) {
        for (int i = first; i < first + BATCH; i++)
            assert_int_equal(call_mx(h.d, "Order.Test.", 25, on_result, &rs[i]), 0);
        while (done < first + BATCH && uv_hrtime() < deadline) {
            uv_run(&h.loop, UV_RUN_ONCE);
            done = 0;
            for (int i = 0; i < N; i++)
                done += rs[i].calls;
        }
    }
    assert_int_equal(done, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(rs[i].calls, 1);
        assert_int_equal(rs[i].st, ENG_DNS_OK);
        assert_int_equal(rs[i].n, 5);
        expect_pair(&rs[i], 2, "mx-b.order.test 127.0.0.2 25", "mx-c.order.test 127.0.0.3 25");
        b_first += !strcmp(rs[i].t[2].name, "mx-b.order.test");
    }
    assert_true(b_first > 0 && b_first < N);
    harness_close(&h);
}

/* An MX host without addresses is passed over; when none has any, the
 * lookup fails for now, naming them. */
static void test_hosts_without_addresses(void **state)
{
    (void)state;
    result_t r;
    lookup("skip.test", 25, 0, &r);
    assert_int_equal(r.st, ENG_DNS_OK);
    assert_int_equal(r.n, 1);
    expect_target(&r, 0, "mx-b.order.test 127.0.0.2 25");

    lookup("alldead.test", 25, 0, &r);
    assert_int_equal(r.st, ENG_DNS_TEMPFAIL);
    assert_string_equal(r.why,
                        "alldead.test: none of the MX hosts (noaddr.skip.test, nx.skip.test) has "
                        "an address");
}

/* No MX records: the domain is its own mail host. */
static void test_implicit_mx(void **state)
{
    (void)state;
    result_t r;
    lookup("implicit.test", 587, 0, &r);
    assert_int_equal(r.st, ENG_DNS_OK);
    assert_int_equal(r.n, 1);
    expect_target(&r, 0, "implicit.test 127.0.0.5 587");
}

static void test_notfound(void **state)
{
    (void)state;
    result_t r;
    lookup("nx.test", 25, 0, &r);
    assert_int_equal(r.st, ENG_DNS_NOTFOUND);
    assert_string_equal(r.why, "nx.test: no such domain (DNS NXDOMAIN)");

    lookup("empty.test.", 25, 0, &r);
    assert_int_equal(r.st, ENG_DNS_NOTFOUND);
    assert_string_equal(r.why, "empty.test: no MX and no address records");
}

/* RFC 7505: a lone "." says no mail; beside other records it is ignored. */
static void test_null_mx(void **state)
{
    (void)state;
    result_t r;
    lookup("nullmx.test", 25, 0, &r);
    assert_int_equal(r.st, ENG_DNS_NULLMX);
    assert_string_equal(r.why, "nullmx.test: null MX (RFC 7505): the domain accepts no mail");

    lookup("nullmix.test", 25, 0, &r);
    assert_int_equal(r.st, ENG_DNS_OK);
    assert_int_equal(r.n, 1);
    expect_target(&r, 0, "mx-b.order.test 127.0.0.2 25");
}

static void test_tempfail(void **state)
{
    (void)state;
    result_t r;
    lookup("broken.test", 25, 0, &r);
    assert_int_equal(r.st, ENG_DNS_TEMPFAIL);
    assert_non_null(strstr(r.why, "broken.test: MX lookup failed: "));

    /* No answer at all: two tries of 200 ms and 400 ms (c-ares doubles the
     * second), then a timeout. */
    uint64_t t0 = uv_hrtime();
    lookup("slow.test", 25, 200, &r);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(r.st, ENG_DNS_TEMPFAIL);
    assert_non_null(strstr(r.why, "slow.test: MX lookup failed: "));
    assert_non_null(strstr(r.why, "Timeout"));
    assert_true(ms >= 200 && ms < 4000);
}

/* Duplicate addresses once; no more than ENG_DNS_MAX_TARGETS, from many
 * hosts or from one (an answer that needs TCP). */
static void test_duplicates_and_cap(void **state)
{
    (void)state;
    result_t r;
    lookup("dup.test", 25, 0, &r);
    assert_int_equal(r.st, ENG_DNS_OK);
    assert_int_equal(r.n, 2);
    expect_pair(&r, 0, "mx-a.order.test ::1 25", "mx-a.order.test 127.0.0.1 25");

    lookup("many.test", 25, 0, &r);
    assert_int_equal(r.st, ENG_DNS_OK);
    assert_int_equal(r.n, ENG_DNS_MAX_TARGETS);
    for (size_t i = 0; i < r.n; i++) {
        char want[64];
        snprintf(want, sizeof want, "h%zu.many.test 127.0.1.%zu 25", i + 1, i + 1);
        expect_target(&r, i, want);
    }

    /* The same cap on one host's addresses, which came over TCP. */
    lookup("big.test", 25, 0, &r);
    if (r.st != ENG_DNS_OK) fail_msg("big.test: %s", r.why);
    assert_int_equal(r.n, ENG_DNS_MAX_TARGETS);
    for (size_t i = 0; i < r.n; i++) {
        char got[400];
        tstr(&r.t[i], got, sizeof got);
        assert_true(!strncmp(got, "big.test 127.0.2.", 17));
    }
}

/* c-ares answers a malformed name before ares_query returns; the callback
 * still waits for the loop. A callback may start another lookup. */
static result_t chained;

static void on_then_chain(void *ud, eng_dns_status_t st, const eng_target_t *t, size_t n,
                          const char *why)
{
    harness_t *h = ud;
    assert_false(in_call);
    assert_int_equal(st, ENG_DNS_TEMPFAIL);
    assert_int_equal(n, 0);
    (void)t;
    (void)why;
    assert_int_equal(call_mx(h->d, "implicit.test", 25, on_result, &chained), 0);
    assert_int_equal(chained.calls, 0);
}

static void test_never_from_inside(void **state)
{
    (void)state;
    harness_t h;
    harness_open(&h, 0);
    result_t r = {0};
    assert_int_equal(call_mx(h.d, "bad..name", 25, on_result, &r), 0);
    assert_int_equal(r.calls, 0);
    run_until(&h, &r.calls, 1, 5000);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.st, ENG_DNS_TEMPFAIL);
    assert_non_null(strstr(r.why, "bad..name: "));

    memset(&chained, 0, sizeof chained);
    assert_int_equal(call_mx(h.d, "bad..name", 25, on_then_chain, &h), 0);
    run_until(&h, &chained.calls, 1, 5000);
    assert_int_equal(chained.calls, 1);
    assert_int_equal(chained.st, ENG_DNS_OK);
    expect_target(&chained, 0, "implicit.test 127.0.0.5 25");

    /* Bad arguments and no callback. */
    assert_int_equal(eng_dns_mx(h.d, "", 25, on_result, &r), VL_EINVAL);
    assert_int_equal(eng_dns_mx(h.d, ".", 25, on_result, &r), VL_EINVAL);
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(eng_dns_mx(h.d, longname, 25, on_result, &r), VL_EINVAL);
    assert_int_equal(r.calls, 1);
    harness_close(&h);
}

/* Closing: every lookup not yet delivered ends CANCELLED before close
 * returns (under way, or finished and waiting for the loop), and a callback
 * can neither start another nor close twice; then on_closed, then nothing
 * is left on the loop. */
typedef struct cancel_rec {
    eng_dns_t *d;
    int calls;
    eng_dns_status_t st;
    int rc_again;
} cancel_rec_t;

static void on_cancelled(void *ud, eng_dns_status_t st, const eng_target_t *t, size_t n,
                         const char *why)
{
    cancel_rec_t *c = ud;
    (void)t;
    assert_int_equal(n, 0);
    assert_non_null(strstr(why, "cancelled"));
    c->calls++;
    c->st = st;
    result_t unused = {0};
    c->rc_again = call_mx(c->d, "order.test", 25, on_result, &unused);
    eng_dns_close(c->d, NULL, NULL); /* a no-op now */
}

static void test_close_pending(void **state)
{
    (void)state;
    harness_t h;
    harness_open(&h, 0);
    cancel_rec_t c[3];
    memset(c, 0, sizeof c);
    for (int i = 0; i < 3; i++)
        c[i].d = h.d;
    assert_int_equal(call_mx(h.d, "slow.test", 25, on_cancelled, &c[0]), 0);
    assert_int_equal(call_mx(h.d, "slow.test", 25, on_cancelled, &c[1]), 0);
    for (int i = 0; i < 3; i++)
        uv_run(&h.loop, UV_RUN_NOWAIT); /* the queries are on the wire */
    /* Finished at once, not yet delivered. */
    assert_int_equal(call_mx(h.d, "bad..name", 25, on_cancelled, &c[2]), 0);
    assert_int_equal(c[0].calls + c[1].calls + c[2].calls, 0);

    eng_dns_close(h.d, on_closed, &h.closed);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(c[i].calls, 1);
        assert_int_equal(c[i].st, ENG_DNS_CANCELLED);
        assert_int_equal(c[i].rc_again, VL_ESTATE);
    }
    assert_int_equal(h.closed, 0);
    assert_int_equal(uv_run(&h.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(h.closed, 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(c[i].calls, 1);
    assert_int_equal(uv_loop_close(&h.loop), 0);
}

/* A callback closes the resolver while another lookup is under way. */
typedef struct closer {
    harness_t *h;
    int calls;
} closer_t;

static void on_close_from_cb(void *ud, eng_dns_status_t st, const eng_target_t *t, size_t n,
                             const char *why)
{
    closer_t *c = ud;
    (void)t;
    (void)n;
    (void)why;
    assert_int_equal(st, ENG_DNS_OK);
    c->calls++;
    eng_dns_close(c->h->d, on_closed, &c->h->closed);
}

static void test_close_from_callback(void **state)
{
    (void)state;
    harness_t h;
    harness_open(&h, 0);
    closer_t c = {&h, 0};
    cancel_rec_t slow = {h.d, 0, ENG_DNS_OK, 0};
    assert_int_equal(call_mx(h.d, "slow.test", 25, on_cancelled, &slow), 0);
    assert_int_equal(call_mx(h.d, "implicit.test", 25, on_close_from_cb, &c), 0);
    assert_int_equal(uv_run(&h.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(c.calls, 1);
    assert_int_equal(slow.calls, 1);
    assert_int_equal(slow.st, ENG_DNS_CANCELLED);
    assert_int_equal(h.closed, 1);
    assert_int_equal(uv_loop_close(&h.loop), 0);
}

static void test_bad_servers(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",         "not-an-ip",    "1.2.3",    "1.2.3.4:99999",    "1.2.3.4:0",
        "1.2.3.4:", "1.2.3.4:53x",  "1.2.3.4,", "1.2.3.4,,5.6.7.8", "[::1",
        "[::1]:",   "[1.2.3.4]:53", "[::1]x",   "::1]:53",
    };
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char err[256] = "";
        eng_dns_t *d = (eng_dns_t *)&loop; /* must be reset to NULL */
        int rc = eng_dns_new(&d, &loop, bad[i], 0, err, sizeof err);
        if (rc != VL_EINVAL) fail_msg("servers \"%s\": got %d, not VL_EINVAL", bad[i], rc);
        assert_null(d);
        assert_non_null(strstr(err, "DNS servers"));
    }
    /* Good ones, with blanks around entries and IPv6 in both forms. */
    static const char *const good[] = {"127.0.0.1", "127.0.0.1:5353, [::1]:53 ,::1", "[::1]"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        char err[256] = "";
        eng_dns_t *d = NULL;
        int rc = eng_dns_new(&d, &loop, good[i], 100, err, sizeof err);
        if (rc) fail_msg("servers \"%s\": %s", good[i], err);
        int closed = 0;
        eng_dns_close(d, on_closed, &closed);
        assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
        assert_int_equal(closed, 1);
    }
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_hosts_without_addresses),
        cmocka_unit_test(test_implicit_mx),
        cmocka_unit_test(test_notfound),
        cmocka_unit_test(test_null_mx),
        cmocka_unit_test(test_tempfail),
        cmocka_unit_test(test_duplicates_and_cap),
        cmocka_unit_test(test_never_from_inside),
        cmocka_unit_test(test_close_pending),
        cmocka_unit_test(test_close_from_callback),
        cmocka_unit_test(test_bad_servers),
    };
    return cmocka_run_group_tests_name("dns", tests, start_server, stop_server);
}
