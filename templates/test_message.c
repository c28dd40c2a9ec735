/* Unit tests for templates/message (and tplfile): the factory built from
 * tests/fixtures/messages/template.json renders rows into iovecs whose
 * static parts are shared, in the right multipart structure, and rejects
 * header injection and unknown variables. Tests run from the repo root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "templates/message.h"
#include "templates/tplfile.h"

#define FIX "tests/fixtures/messages/"

static const char *const cols[] = {"email", "name", "first_name", "city", "plan", "note"};

struct diags {
    int n;
    char last[600];
    char all[4000];
};

static void diag(void *ud, enum tplf_kind kind, const char *file, int line, int col,
                 const char *msg)
{
    struct diags *d = ud;
    (void)kind;
    d->n++;
    snprintf(d->last, sizeof d->last, "%s:%d:%d: %s", file ? file : "", line, col, msg);
    size_t l = strlen(d->all);
    snprintf(d->all + l, sizeof d->all - l, "%s\n", d->last);
}

static tpl_csv_field_t fv[6];

static tpl_csv_row_t make_row(unsigned long n, const char *email, const char *name,
                              const char *first)
{
    const char *v[6] = {email, name, first, "Paris", "Gold", "a note"};
    for (int i = 0; i < 6; i++)
        fv[i] = (tpl_csv_field_t){v[i], strlen(v[i])};
    return (tpl_csv_row_t){.row = n, .line = n + 1, .nfields = 6, .fields = fv, .email = fv[0]};
}

static char *flatten(const msg_out_t *o, size_t *len)
{
    size_t n;
    const struct iovec *iov = msg_out_iov(o, &n);
    size_t total = msg_out_size(o), k = 0;
    char *p = malloc(total + 1);
    for (size_t i = 0; i < n; i++) {
        memcpy(p + k, iov[i].iov_base, iov[i].iov_len);
        k += iov[i].iov_len;
    }
    assert_int_equal(k, total);
    p[k] = '\0';
    *len = k;
    /* msg_out_wire_ready() must agree with the bytes: the engine sends them
     * unread on its word. */
    int wire = k >= 2 && p[0] != '.' && p[k - 1] == '\n';
    for (size_t i = 0; i < k; i++)
        if (p[i] == '\n') wire &= i > 0 && p[i - 1] == '\r' && (i + 1 == k || p[i + 1] != '.');
    assert_int_equal(msg_out_wire_ready(o), wire);
    return p;
}

static msg_factory_t *build(tplf_t **tpl, struct diags *d, const char *path)
{
    assert_int_equal(tplf_load(tpl, path, diag, d), 0);
    msg_config_t cfg = {.tpl = *tpl, .campaign_id = "c1", .columns = cols, .ncolumns = 6};
    msg_factory_t *f = NULL;
    assert_int_equal(msg_factory_new(&f, &cfg, diag, d), 0);
    return f;
}

static void test_structure_and_sharing(void **state)
{
    (void)state;
    struct diags d = {0};
    tplf_t *tpl;
    msg_factory_t *f = build(&tpl, &d, FIX "template.json");
    assert_int_equal(d.n, 0);
    /* The attachment and the image are encoded once, into the factory. */
    assert_true(msg_factory_static_size(f) > tpl->inlines[0].len + tpl->attachments[0].len);
    msg_out_t *o;
    assert_int_equal(msg_out_new(&o, f), 0);
    tpl_csv_row_t r1 = make_row(1, "ann@example.com", "Ann Lee", "Ann");
    assert_int_equal(msg_render(f, o, &r1, 1736841600, MSG_NO_DKIM), 0);
    size_t n1;
    const struct iovec *iov = msg_out_iov(o, &n1);
    const void *last1 = iov[n1 - 1].iov_base;
    size_t len;
    char *m = flatten(o, &len);
    assert_string_equal(msg_out_recipient(o), "ann@example.com");
    assert_string_equal(msg_out_sender(o), "news@example.com");
    assert_false(msg_out_needs_smtputf8(o));
    assert_non_null(strstr(m, "Date: Tue, 14 Jan 2025 08:00:00 +0000\r\n"));
    assert_non_null(strstr(m, "\r\nX-Volley-Row: c1/1\r\n"));
    char mid[300];
    snprintf(mid, sizeof mid, "Message-ID: <%s>\r\n", msg_out_message_id(o));
    assert_non_null(strstr(m, mid));
    assert_non_null(strstr(msg_out_message_id(o), ".1.c1@example.com"));
    /* Nesting: mixed > related > alternative > text, html; image; attachment. */
    const char *order[] = {
        "multipart/mixed", "multipart/related", "multipart/alternative",          "text/plain",
        "text/html",       "image/png",         "Content-Disposition: attachment"};
    const char *p = m;
    for (int i = 0; i < 7; i++) {
        p = strstr(p, order[i]);
        assert_non_null(p);
    }
    /* CRLF only, no line over 998. */
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (m[i] == '\n') {
            assert_true(i > 0 && m[i - 1] == '\r');
            assert_true(i - start <= 998);
            start = i + 1;
        }
    }
    char firstmid[300];
    snprintf(firstmid, sizeof firstmid, "%s", msg_out_message_id(o));
    free(m);

    tpl_csv_row_t r2 = make_row(2, "wei@例子.example", "张伟", "伟");
    assert_int_equal(msg_render(f, o, &r2, 1736841600, MSG_NO_DKIM), 0);
    size_t n2;
    iov = msg_out_iov(o, &n2);
    /* The same shared bytes, not a copy. */
    assert_ptr_equal(iov[n2 - 1].iov_base, last1);
    assert_string_equal(msg_out_recipient(o), "wei@xn--fsqu00a.example");
    assert_true(strcmp(firstmid, msg_out_message_id(o)) != 0);
    m = flatten(o, &len);
    assert_non_null(strstr(m, "To: =?UTF-8?B?5byg5Lyf?= <wei@xn--fsqu00a.example>\r\n"));
    free(m);
    msg_out_free(o);
    msg_factory_free(f);
    tplf_free(tpl);
}

static void test_injection(void **state)
{
    (void)state;
    struct diags d = {0};
    tplf_t *tpl;
    msg_factory_t *f = build(&tpl, &d, FIX "template.json");
    msg_out_t *o;
    assert_int_equal(msg_out_new(&o, f), 0);
    /* Through the To display name (the name column)... */
    tpl_csv_row_t r = make_row(3, "eve@example.com", "Eve\r\nBcc: v@example.net", "Eve");
    assert_int_equal(msg_render(f, o, &r, 1, MSG_NO_DKIM), VL_EINVAL);
    const msg_error_t *e = msg_out_error(o);
    assert_int_equal(e->row, 3);
    assert_int_equal(e->column, 2);
    assert_non_null(strstr(e->message, "line break"));
    size_t n;
    msg_out_iov(o, &n);
    assert_int_equal(n, 0);
    /* ...and through the subject (first_name). */
    r = make_row(4, "eve@example.com", "Eve", "E\nBcc: v@example.net");
    assert_int_equal(msg_render(f, o, &r, 1, MSG_NO_DKIM), VL_EINVAL);
    assert_string_equal(msg_out_error(o)->field, "subject");
    /* A good row after bad ones renders. */
    r = make_row(5, "ok@example.com", "Ok", "Ok");
    assert_int_equal(msg_render(f, o, &r, 1, MSG_NO_DKIM), 0);
    msg_out_free(o);
    msg_factory_free(f);
    tplf_free(tpl);
}

static char tmpdir[64];

static const char *write_tmp(const char *name, const char *text)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
    return path;
}

static void test_unknown_variable_and_static_body(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_message.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    const char *p = write_tmp("t.json", "{\"from\": \"a@example.com\",\n"
                                        " \"subject\": \"Hi {{frist_name}}\",\n"
                                        " \"text\": \"{{#vip}}{{perk}}{{/vip}}x\"}\n");
    struct diags d = {0};
    tplf_t *tpl;
    assert_int_equal(tplf_load(&tpl, p, diag, &d), 0);
    msg_config_t cfg = {.tpl = tpl, .campaign_id = "c1", .columns = cols, .ncolumns = 6};
    msg_factory_t *f = NULL;
    assert_int_equal(msg_factory_new(&f, &cfg, diag, &d), VL_EPARSE);
    assert_null(f);
    /* frist_name is unknown (and vip, a section name outside any section);
     * perk, inside the section, may be missing. */
    if (!strstr(d.all, "t.json:2:17: unknown variable `frist_name` in `subject`"))
        print_message("%s", d.all);
    assert_non_null(strstr(d.all, "t.json:2:17: unknown variable `frist_name` in `subject`"));
    assert_null(strstr(d.all, "perk"));
    tplf_free(tpl);

    /* A text-only static body: one part, 7bit, the same bytes every time. */
    p = write_tmp("s.json", "{\"from\": \"A <a@example.com>\", \"subject\": \"{{first_name}}\",\n"
                            " \"text\": \"Static body.\\n\"}\n");
    memset(&d, 0, sizeof d);
    assert_int_equal(tplf_load(&tpl, p, diag, &d), 0);
    cfg.tpl = tpl;
    assert_int_equal(msg_factory_new(&f, &cfg, diag, &d), 0);
    msg_out_t *o;
    assert_int_equal(msg_out_new(&o, f), 0);
    tpl_csv_row_t r = make_row(1, "b@example.com", "B", "Bee");
    assert_int_equal(msg_render(f, o, &r, 1, 0), 0);
    size_t len;
    char *m = flatten(o, &len);
    assert_non_null(strstr(m, "Content-Type: text/plain; charset=UTF-8\r\n"
                              "Content-Transfer-Encoding: 7bit\r\n"));
    assert_non_null(strstr(m, "Subject: Bee\r\n"));
    assert_non_null(strstr(m, "\r\n\r\nStatic body.\r\n"));
    free(m);
    msg_out_free(o);
    msg_factory_free(f);
    tplf_free(tpl);

    /* A line that starts with '.', from the data or from the template, spans
     * included (a value at the very start of a line, a dot right after a
     * value that ends a line): the message is not in wire form. */
    const char *dots[][2] = {{"{{note}}\\n", ".hidden"},
                             {"x\\n{{note}}", ".end"},
                             {"{{note}}.\\n", "line\n"},
                             {"a.\\nb\\n", "no"},
                             {"{{note}}\\n", "no dot\n. not first"}};
    for (size_t i = 0; i < sizeof dots / sizeof dots[0]; i++) {
        char json[300];
        snprintf(json, sizeof json,
                 "{\"from\": \"a@example.com\", \"subject\": \"s\", \"text\": \"%s\"}\n",
                 dots[i][0]);
        p = write_tmp("d.json", json);
        memset(&d, 0, sizeof d);
        assert_int_equal(tplf_load(&tpl, p, diag, &d), 0);
        cfg.tpl = tpl;
        assert_int_equal(msg_factory_new(&f, &cfg, diag, &d), 0);
        assert_int_equal(msg_out_new(&o, f), 0);
        r = make_row(1, "b@example.com", "B", "Bee");
        fv[5] = (tpl_csv_field_t){dots[i][1], strlen(dots[i][1])};
        assert_int_equal(msg_render(f, o, &r, 1, 0), 0);
        m = flatten(o, &len); /* checks msg_out_wire_ready() against the bytes */
        assert_int_equal(msg_out_wire_ready(o), i == 3);
        free(m);
        msg_out_free(o);
        msg_factory_free(f);
        tplf_free(tpl);
    }

    /* A partial the template does not have is an error, even inside a section: it
     * would render as nothing in every message (check once said OK). */
    p = write_tmp("p.json", "{\"from\": \"a@example.com\", \"subject\": \"s\",\n"
                            " \"text\": \"{{#plan}}{{> footr}}{{/plan}}\",\n"
                            " \"partials\": {\"footer\": \"bye\"}}\n");
    memset(&d, 0, sizeof d);
    assert_int_equal(tplf_load(&tpl, p, diag, &d), 0);
    cfg.tpl = tpl;
    assert_int_equal(msg_factory_new(&f, &cfg, diag, &d), VL_EPARSE);
    assert_non_null(strstr(d.all, "unknown partial `footr` in `text`"));
    tplf_free(tpl);

    /* Template file errors: unknown key, no body, with positions. */
    p = write_tmp("b.json", "{\"from\": \"a@example.com\",\n \"bodi\": \"x\"}\n");
    memset(&d, 0, sizeof d);
    assert_int_equal(tplf_load(&tpl, p, diag, &d), VL_EPARSE);
    assert_int_equal(d.n, 2);
    assert_non_null(strstr(d.last, "needs a `text` or an `html`"));
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
}

/* A row that passes a render limit is a row error (VL_EINVAL with the field and the
 * limit named), never a program error: check and --dry-run stopped at it with exit 70. */
static void test_limits_are_row_errors(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_message.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    const char *p = write_tmp("l.json", "{\"from\": \"a@example.com\",\n"
                                        " \"subject\": \"Hi {{note}}\",\n"
                                        " \"text\": \"x {{> self}}\",\n"
                                        " \"partials\": {\"self\": \"{{> self}}\"}}\n");
    struct diags d = {0};
    tplf_t *tpl;
    assert_int_equal(tplf_load(&tpl, p, diag, &d), 0);
    msg_config_t cfg = {.tpl = tpl, .campaign_id = "c1", .columns = cols, .ncolumns = 6};
    msg_factory_t *f = NULL;
    assert_int_equal(msg_factory_new(&f, &cfg, diag, &d), 0);
    msg_out_t *o;
    assert_int_equal(msg_out_new(&o, f), 0);
    tpl_csv_row_t r = make_row(7, "b@example.com", "B", "Bee");
    /* The subject comes after the bodies: the partial that includes itself fails first. */
    assert_int_equal(msg_render(f, o, &r, 1, 0), VL_EINVAL);
    const msg_error_t *e = msg_out_error(o);
    assert_int_equal(e->row, 7);
    assert_string_equal(e->field, "text");
    assert_non_null(strstr(e->message, "nest deeper than 64"));
    assert_non_null(strstr(e->message, "partial `self`"));
    msg_out_free(o);
    msg_factory_free(f);
    tplf_free(tpl);

    /* A 2 MB field in the subject: over the 1 MB a header field may render to. */
    p = write_tmp("h.json", "{\"from\": \"a@example.com\", \"subject\": \"Hi {{note}}\",\n"
                            " \"text\": \"x\"}\n");
    assert_int_equal(tplf_load(&tpl, p, diag, &d), 0);
    cfg.tpl = tpl;
    assert_int_equal(msg_factory_new(&f, &cfg, diag, &d), 0);
    assert_int_equal(msg_out_new(&o, f), 0);
    size_t big = 2u << 20;
    char *note = malloc(big);
    memset(note, 'n', big);
    r = make_row(8, "b@example.com", "B", "Bee");
    fv[5] = (tpl_csv_field_t){note, big};
    assert_int_equal(msg_render(f, o, &r, 1, 0), VL_EINVAL);
    e = msg_out_error(o);
    assert_string_equal(e->field, "subject");
    assert_non_null(strstr(e->message, "larger than 1048576 bytes"));
    /* The same output goes on with the next row. */
    r = make_row(9, "c@example.com", "C", "Cee");
    assert_int_equal(msg_render(f, o, &r, 1, 0), 0);
    free(note);
    msg_out_free(o);
    msg_factory_free(f);
    tplf_free(tpl);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_structure_and_sharing),
        cmocka_unit_test(test_injection),
        cmocka_unit_test(test_unknown_variable_and_static_body),
        cmocka_unit_test(test_limits_are_row_errors),
    };
    return cmocka_run_group_tests_name("message", tests, NULL, NULL);
}
