/* Unit tests for templates/mustache: the whole official Mustache spec suite
 * (every test of every JSON file in tests/conformance/mustache-spec, a copy
 * of the project's ../shared/conformance/mustache-spec kept in the repository
 * so that a clone anywhere runs it; or $VOLLEY_MUSTACHE_SPEC_DIR), then volley's own needs: compile
 * errors with positions, strictness, escaping per render, callback frames, static templates and
 * variable listing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/buf.h"
#include "common/err.h"
#include "templates/mustache.h"

static const char *spec_dir(void)
{
    const char *d = getenv("VOLLEY_MUSTACHE_SPEC_DIR");
    /* meson runs unit tests in the source root (tests/meson.build). */
    return d && *d ? d : "tests/conformance/mustache-spec";
}

static int total_run, total_passed;

/* Run every test of one spec file; fail (after running all) if any fails. */
static void run_spec_file(const char *file)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", spec_dir(), file);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) fail_msg("cannot load %s: %s (line %d)", path, jerr.text, jerr.line);
    json_t *tests = json_object_get(root, "tests");
    assert_true(json_is_array(tests));
    assert_true(json_array_size(tests) > 0);
    size_t i, passed = 0;
    json_t *tc;
    json_array_foreach(tests, i, tc)
    {
        const char *name = json_string_value(json_object_get(tc, "name"));
        json_t *tmpl = json_object_get(tc, "template");
        json_t *expected = json_object_get(tc, "expected");
        json_t *data = json_object_get(tc, "data");
        json_t *partials = json_object_get(tc, "partials");
        assert_non_null(tmpl);
        assert_non_null(expected);
        tpl_partials_t *p = NULL;
        if (partials) {
            p = tpl_partials_new();
            assert_non_null(p);
            const char *key;
            json_t *v;
            json_object_foreach(partials, key, v)
            {
                assert_int_equal(
                    tpl_partials_add(p, key, json_string_value(v), json_string_length(v)), 0);
            }
        }
        tpl_template_t *t = NULL;
        tpl_error_t err;
        int rc = tpl_compile(&t, json_string_value(tmpl), json_string_length(tmpl), p, &err);
        tpl_partials_free(p); /* the template must not need it any more */
        buf_t out;
        buf_init(&out, 1 << 20);
        int ok = 0;
        if (rc != 0) {
            print_error("%s: %s: compile failed: %d:%d: %s\n", file, name, err.line, err.column,
                        err.message);
        } else {
            tpl_ctx_t ctx;
            tpl_ctx_init(&ctx);
            assert_int_equal(tpl_ctx_push_json(&ctx, data), 0);
            /* The spec is about HTML: escaping on. */
            rc = tpl_render(t, &ctx, TPL_RENDER_HTML, &out, NULL);
            const char *got = out.data ? out.data : "";
            ok = rc == 0 && out.len == json_string_length(expected) &&
                 memcmp(got, json_string_value(expected), out.len) == 0;
            if (!ok)
                print_error("%s: %s: rc %d\n  expected [%s]\n  got      [%s]\n", file, name, rc,
                            json_string_value(expected), got);
        }
        passed += ok;
        buf_free(&out);
        tpl_free(t);
    }
    total_run += (int)json_array_size(tests);
    total_passed += (int)passed;
    print_message("# mustache spec %s: %zu/%zu passed\n", file, passed, json_array_size(tests));
    assert_int_equal(passed, json_array_size(tests));
    json_decref(root);
}

static void test_spec_comments(void **state)
{
    (void)state;
    run_spec_file("comments.json");
}

static void test_spec_delimiters(void **state)
{
    (void)state;
    run_spec_file("delimiters.json");
}

static void test_spec_interpolation(void **state)
{
    (void)state;
    run_spec_file("interpolation.json");
}

static void test_spec_inverted(void **state)
{
    (void)state;
    run_spec_file("inverted.json");
}

static void test_spec_partials(void **state)
{
    (void)state;
    run_spec_file("partials.json");
}

static void test_spec_sections(void **state)
{
    (void)state;
    run_spec_file("sections.json");
}

/* Every required file was run above; no JSON file of the directory is left
 * out (a new spec file would need its own test here), and the total is
 * printed. */
static void test_spec_total(void **state)
{
    (void)state;
    DIR *d = opendir(spec_dir());
    assert_non_null(d);
    int files = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n > 5 && strcmp(e->d_name + n - 5, ".json") == 0 && e->d_name[0] != '~') files++;
    }
    closedir(d);
    assert_int_equal(files, 6);
    print_message("# mustache spec: %d/%d passed\n", total_passed, total_run);
    assert_true(total_run > 100);
    assert_int_equal(total_passed, total_run);
}

/* ---- helpers for volley's own tests ---- */

static char *render_str(const char *src, const tpl_ctx_t *ctx, unsigned flags, int *rc_out,
                        tpl_error_t *err)
{
    tpl_template_t *t;
    tpl_error_t cerr;
    int rc = tpl_compile(&t, src, strlen(src), NULL, &cerr);
    if (rc) fail_msg("compile %s: %s", src, cerr.message);
    buf_t out;
    buf_init(&out, 1 << 20);
    rc = tpl_render(t, ctx, flags, &out, err);
    if (rc_out)
        *rc_out = rc;
    else
        assert_int_equal(rc, 0);
    tpl_free(t);
    char *s = out.data ? buf_take(&out) : strdup("");
    buf_free(&out);
    return s;
}

static void expect_compile_error(const char *src, int line, int col, const char *msg_part)
{
    tpl_template_t *t = (tpl_template_t *)1;
    tpl_error_t err;
    assert_int_equal(tpl_compile(&t, src, strlen(src), NULL, &err), VL_EPARSE);
    assert_null(t);
    if (!strstr(err.message, msg_part)) fail_msg("message [%s] lacks [%s]", err.message, msg_part);
    assert_int_equal(err.line, line);
    assert_int_equal(err.column, col);
}

static void test_compile_errors(void **state)
{
    (void)state;
    expect_compile_error("Hello\n  {{#items}}x", 2, 3, "unclosed section `items`");
    expect_compile_error("{{#a}}\n{{#b}}\n {{/a}}{{/b}}", 3, 2,
                         "close tag `a` does not match open section `b`");
    expect_compile_error("ab\ncd {{/x}}", 2, 4, "close tag `x` without an open section");
    expect_compile_error("x\n\nyy{{=<% %> x=}}", 3, 3, "bad delimiters");
    expect_compile_error("x {{=a=}}", 1, 3, "bad delimiters");
    expect_compile_error("Dear {{name", 1, 6, "unclosed tag");
    expect_compile_error("Dear {{{name}}", 1, 6, "unclosed tag");
    expect_compile_error("a{{  }}", 1, 2, "empty tag");
    expect_compile_error("a{{a..b}}", 1, 2, "bad name");
    /* Columns count characters, not bytes: "你好" is two columns. */
    expect_compile_error("你好{{/x}}", 1, 3, "without an open section");

    /* An error inside a partial names the partial. */
    tpl_partials_t *p = tpl_partials_new();
    assert_int_equal(tpl_partials_add(p, "footer", "ok\n{{#x}}", 9), 0);
    tpl_template_t *t;
    tpl_error_t err;
    assert_int_equal(tpl_compile(&t, "{{>footer}}", 11, p, &err), VL_EPARSE);
    assert_string_equal(err.partial, "footer");
    assert_int_equal(err.line, 2);
    assert_non_null(strstr(err.message, "unclosed section `x`"));
    tpl_partials_free(p);
}

static void test_escape_per_render(void **state)
{
    (void)state;
    json_t *data = json_pack("{s:s}", "name", "Tom & \"Jerry\" <tj@x.com> O'Neil");
    tpl_ctx_t ctx;
    tpl_ctx_init(&ctx);
    assert_int_equal(tpl_ctx_push_json(&ctx, data), 0);
    char *s = render_str("Hi {{name}}!", &ctx, 0, NULL, NULL);
    assert_string_equal(s, "Hi Tom & \"Jerry\" <tj@x.com> O'Neil!");
    free(s);
    s = render_str("Hi {{name}}!", &ctx, TPL_RENDER_HTML, NULL, NULL);
    assert_string_equal(s, "Hi Tom &amp; &quot;Jerry&quot; &lt;tj@x.com&gt; O&#39;Neil!");
    free(s);
    s = render_str("Hi {{{name}}}!", &ctx, TPL_RENDER_HTML, NULL, NULL);
    assert_string_equal(s, "Hi Tom & \"Jerry\" <tj@x.com> O'Neil!");
    free(s);
    json_decref(data);
}

/* A callback frame standing for a CSV row. */
struct row_ud {
    const char *const *names;
    const char *const *values;
    int n;
    int calls;
};

static int row_lookup(void *ud, const char *name, size_t len, tpl_value_t *out)
{
    struct row_ud *r = ud;
    r->calls++;
    for (int i = 0; i < r->n; i++) {
        if (strlen(r->names[i]) == len && memcmp(r->names[i], name, len) == 0) {
            out->type = TPL_VAL_STRING;
            out->str = r->values[i];
            out->len = strlen(r->values[i]);
            return 1;
        }
    }
    return 0;
}

static void test_frames_and_order(void **state)
{
    (void)state;
    static const char *const names[] = {"first_name", "company", "city"};
    static const char *const values[] = {"李雷", "", "Paris, \"TX\"\nline2"};
    struct row_ud row = {names, values, 3, 0};
    json_t *vars = json_pack("{s:s,s:s,s:{s:s}}", "first_name", "VARS", "product", "Volley",
                             "links", "home", "https://x.example/");
    static const char *const bnames[] = {"email", "row", "product"};
    static const char *const bvalues[] = {"li@x.cn", "7", "BUILTIN"};
    struct row_ud builtins = {bnames, bvalues, 3, 0};
    tpl_ctx_t ctx;
    tpl_ctx_init(&ctx);
    /* Built-ins below vars below the row: the row wins, then vars. */
    assert_int_equal(tpl_ctx_push_lookup(&ctx, row_lookup, &builtins), 0);
    assert_int_equal(tpl_ctx_push_json(&ctx, vars), 0);
    assert_int_equal(tpl_ctx_push_lookup(&ctx, row_lookup, &row), 0);
    char *s = render_str("{{first_name}} <{{email}}> {{product}} #{{row}} {{links.home}}"
                         "{{#company}} at {{company}}{{/company}}{{^company}} (none){{/company}}"
                         " [{{city}}] {{#first_name}}{{.}}{{/first_name}}",
                         &ctx, 0, NULL, NULL);
    assert_string_equal(s, "李雷 <li@x.cn> Volley #7 https://x.example/ (none) "
                           "[Paris, \"TX\"\nline2] 李雷");
    free(s);
    assert_true(row.calls > 0);
    json_decref(vars);
}

static long slot_of(void *ud, const char *name, size_t len)
{
    const struct row_ud *r = ud;
    for (int i = 0; i < r->n; i++)
        if (strlen(r->names[i]) == len && memcmp(r->names[i], name, len) == 0) return i;
    return -1;
}

/* Bound tags render from the slots without a lookup; names in sections,
 * unbound names and dotted names still search the frames; a short row's
 * missing slots render empty; the output is what plain lookups give. */
static void test_bound_slots(void **state)
{
    (void)state;
    static const char *const names[] = {"first_name", "city", "plan"};
    static const char *const values[] = {"Ann", "Paris", "Gold"};
    struct row_ud row = {names, values, 3, 0};
    json_t *vars = json_pack("{s:s,s:{s:s},s:[{s:s}]}", "product", "Volley", "links", "home",
                             "https://x.example/", "items", "city", "Rome");
    const char *src = "{{first_name}} {{product}} {{links.home}} {{>p}}"
                      "{{#items}}[{{city}} {{first_name}}]{{/items}}{{^nothing}}<{{plan}}>"
                      "{{/nothing}}";
    tpl_partials_t *parts = tpl_partials_new();
    assert_non_null(parts);
    assert_int_equal(tpl_partials_add(parts, "p", "({{city}})", 10), 0);
    tpl_template_t *t;
    assert_int_equal(tpl_compile(&t, src, strlen(src), parts, NULL), 0);
    tpl_partials_free(parts);
    const char *want = "Ann Volley https://x.example/ (Paris)[Rome Ann]<Gold>";

    /* Plain lookups first: the reference. */
    tpl_ctx_t ctx;
    tpl_ctx_init(&ctx);
    assert_int_equal(tpl_ctx_push_json(&ctx, vars), 0);
    assert_int_equal(tpl_ctx_push_lookup(&ctx, row_lookup, &row), 0);
    buf_t out;
    buf_init(&out, 1 << 20);
    assert_int_equal(tpl_render(t, &ctx, 0, &out, NULL), 0);
    assert_string_equal(out.data, want);
    int plain_calls = row.calls;

    tpl_bind_slots(t, slot_of, &row);
    tpl_slot_t slots[3];
    for (int i = 0; i < 3; i++)
        slots[i] = (tpl_slot_t){values[i], strlen(values[i])};
    tpl_ctx_init(&ctx);
    assert_int_equal(tpl_ctx_push_json(&ctx, vars), 0);
    assert_int_equal(tpl_ctx_push_slots(&ctx, row_lookup, &row, slots, 3), 0);
    row.calls = 0;
    buf_reset(&out);
    assert_int_equal(tpl_render(t, &ctx, 0, &out, NULL), 0);
    assert_string_equal(out.data, want);
    /* Only names inside sections ({{city}} and {{first_name}} in items,
     * {{plan}} in the inverted section) and the unbound ones reached the
     * callback. */
    assert_true(row.calls > 0 && row.calls < plain_calls);

    /* A short row: slot 2 (plan) is missing and renders empty outside
     * sections, as row_lookup's "" would. */
    tpl_template_t *t2;
    assert_int_equal(tpl_compile(&t2, "{{first_name}}|{{plan}}|", 24, NULL, NULL), 0);
    tpl_bind_slots(t2, slot_of, &row);
    tpl_ctx_init(&ctx);
    assert_int_equal(tpl_ctx_push_slots(&ctx, row_lookup, &row, slots, 2), 0);
    buf_reset(&out);
    assert_int_equal(tpl_render(t2, &ctx, 0, &out, NULL), 0);
    assert_string_equal(out.data, "Ann||");

    /* Without a slots frame on top, bound templates search as before. */
    tpl_ctx_init(&ctx);
    assert_int_equal(tpl_ctx_push_lookup(&ctx, row_lookup, &row), 0);
    assert_int_equal(tpl_ctx_push_json(&ctx, vars), 0);
    buf_reset(&out);
    assert_int_equal(tpl_render(t2, &ctx, 0, &out, NULL), 0);
    assert_string_equal(out.data, "Ann|Gold|");

    buf_free(&out);
    tpl_free(t);
    tpl_free(t2);
    json_decref(vars);
}

static int collect(void *ud, const tpl_var_ref_t *ref)
{
    buf_t *b = ud;
    assert_int_equal(buf_printf(b, "%.*s@%d:%d%s%s%s;", (int)ref->len, ref->name, ref->line,
                                ref->column, ref->partial ? "/" : "",
                                ref->partial ? ref->partial : "",
                                ref->flags & TPL_VAR_IN_SECTION ? "+s" : ""),
                     0);
    return 0;
}

static void test_strict_and_check(void **state)
{
    (void)state;
    json_t *vars = json_pack("{s:s,s:[{s:s}]}", "name", "Ann", "items", "x", "1");
    tpl_ctx_t ctx;
    tpl_ctx_init(&ctx);
    assert_int_equal(tpl_ctx_push_json(&ctx, vars), 0);
    const char *src = "Hi {{name}},\n  {{first_name}}\n{{#items}}{{x}}{{missing_in_section}}"
                      "{{/items}}{{#nope}}{{deep}}{{/nope}}";
    int rc;
    tpl_error_t err;
    char *s = render_str(src, &ctx, TPL_RENDER_STRICT, &rc, &err);
    assert_int_equal(rc, VL_EINVAL);
    assert_string_equal(err.message, "unknown variable `first_name`");
    assert_int_equal(err.line, 2);
    assert_int_equal(err.column, 3);
    assert_int_equal(err.var_len, 10);
    free(s);
    /* Without strictness: empty, as the spec says. */
    s = render_str(src, &ctx, 0, NULL, NULL);
    assert_string_equal(s, "Hi Ann,\n  \n1");
    free(s);

    /* tpl_check lists every unknown name outside sections, partials too. */
    tpl_partials_t *p = tpl_partials_new();
    assert_int_equal(tpl_partials_add(p, "sig", "-- {{signature}}\n", 17), 0);
    tpl_template_t *t;
    char full[256];
    snprintf(full, sizeof full, "%s\n{{>sig}}{{>sig}}{{>unknown_partial}}", src);
    assert_int_equal(tpl_compile(&t, full, strlen(full), p, &err), 0);
    tpl_partials_free(p);
    buf_t b;
    buf_init(&b, 4096);
    /* ...and every partial tag naming no partial (it would render as nothing). */
    assert_int_equal(tpl_check(t, &ctx, collect, &b), 4);
    assert_string_equal(b.data, "first_name@2:3;nope@3:48;signature@1:4/sig;unknown_partial@4:17;");
    buf_reset(&b);
    assert_int_equal(tpl_foreach_var(t, collect, &b), 0);
    assert_string_equal(b.data, "name@1:4;first_name@2:3;items@3:1;x@3:11+s;"
                                "missing_in_section@3:16+s;nope@3:48;deep@3:57+s;"
                                "signature@1:4/sig;");
    assert_false(tpl_is_static(t));
    /* The strict error's name points into the living template. */
    buf_reset(&b);
    assert_int_equal(tpl_render(t, &ctx, TPL_RENDER_STRICT, &b, &err), VL_EINVAL);
    assert_int_equal(err.var_len, 10);
    assert_memory_equal(err.var, "first_name", 10);
    buf_free(&b);
    tpl_free(t);
    json_decref(vars);
}

static void test_static(void **state)
{
    (void)state;
    tpl_template_t *t;
    const char *src = "Hello {{! not shown }}world\n{{=<% %>=}}bye";
    assert_int_equal(tpl_compile(&t, src, strlen(src), NULL, NULL), 0);
    assert_true(tpl_is_static(t));
    size_t n;
    const char *txt = tpl_static_text(t, &n);
    assert_non_null(txt);
    assert_int_equal(n, strlen("Hello world\nbye"));
    assert_memory_equal(txt, "Hello world\nbye", n);
    tpl_ctx_t ctx;
    tpl_ctx_init(&ctx);
    buf_t out;
    buf_init(&out, 100);
    assert_int_equal(tpl_render(t, &ctx, TPL_RENDER_STRICT, &out, NULL), 0);
    assert_string_equal(out.data, "Hello world\nbye");
    buf_free(&out);
    tpl_free(t);

    assert_int_equal(tpl_compile(&t, "a{{b}}", 6, NULL, NULL), 0);
    assert_false(tpl_is_static(t));
    assert_null(tpl_static_text(t, &n));
    tpl_free(t);
}

static void test_limits(void **state)
{
    (void)state;
    /* A buffer cap is reported, not overrun. */
    json_t *d = json_pack("{s:s}", "x", "0123456789");
    tpl_ctx_t ctx;
    tpl_ctx_init(&ctx);
    assert_int_equal(tpl_ctx_push_json(&ctx, d), 0);
    tpl_template_t *t;
    assert_int_equal(tpl_compile(&t, "{{x}}{{x}}", 10, NULL, NULL), 0);
    buf_t out;
    buf_init(&out, 15);
    assert_int_equal(tpl_render(t, &ctx, 0, &out, NULL), VL_ETOOBIG);
    buf_free(&out);
    tpl_free(t);

    /* Endless recursion through a partial stops at the depth limit. */
    tpl_partials_t *p = tpl_partials_new();
    assert_int_equal(tpl_partials_add(p, "loop", "<{{#x}}{{>loop}}{{/x}}", 22), 0);
    assert_int_equal(tpl_compile(&t, "{{>loop}}", 9, p, NULL), 0);
    buf_init(&out, 1 << 20);
    assert_int_equal(tpl_render(t, &ctx, 0, &out, NULL), VL_ETOOBIG);
    buf_free(&out);
    tpl_free(t);
    /* Self-inclusion on an indented standalone line: a compile error. */
    assert_int_equal(tpl_partials_add(p, "loop", " {{>loop}}\n", 11), 0);
    tpl_error_t err;
    assert_int_equal(tpl_compile(&t, "{{>loop}}", 9, p, &err), VL_EPARSE);
    assert_non_null(strstr(err.message, "nests too deep"));
    tpl_partials_free(p);

    tpl_ctx_t full;
    tpl_ctx_init(&full);
    for (int i = 0; i < TPL_CTX_MAX; i++)
        assert_int_equal(tpl_ctx_push_json(&full, d), 0);
    assert_int_equal(tpl_ctx_push_json(&full, d), VL_ETOOBIG);
    json_decref(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_comments),
        cmocka_unit_test(test_spec_delimiters),
        cmocka_unit_test(test_spec_interpolation),
        cmocka_unit_test(test_spec_inverted),
        cmocka_unit_test(test_spec_partials),
        cmocka_unit_test(test_spec_sections),
        cmocka_unit_test(test_spec_total),
        cmocka_unit_test(test_compile_errors),
        cmocka_unit_test(test_escape_per_render),
        cmocka_unit_test(test_frames_and_order),
        cmocka_unit_test(test_bound_slots),
        cmocka_unit_test(test_strict_and_check),
        cmocka_unit_test(test_static),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests_name("mustache", tests, NULL, NULL);
}
