/* Unit tests for templates/csv: the reader fed whole, byte by byte and at
 * random split points (same rows every time), BOM, line ends, quoting,
 * every row and fatal error with its position, email validation and
 * punycode, duplicates, the file reader, and input placed against an
 * unreadable page so any over-read crashes (as picohttpparser's tests do). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/err.h"
#include "templates/csv.h"

/* Serialise every row and error of a reader into text, so runs fed in
 * different ways can be compared exactly. */
static void dump_row(buf_t *b, const tpl_csv_row_t *row)
{
    assert_int_equal(buf_printf(b, "row %lu line %lu:", row->row, row->line), 0);
    for (size_t i = 0; i < row->nfields; i++) {
        assert_int_equal(buf_putc(b, '['), 0);
        assert_int_equal(buf_append(b, row->fields[i].ptr, row->fields[i].len), 0);
        assert_int_equal(buf_putc(b, ']'), 0);
    }
    if (row->ascii_domain_len)
        assert_int_equal(buf_printf(b, " dom=%.*s%s%s", (int)row->ascii_domain_len,
                                    row->ascii_domain, row->needs_smtputf8 ? " smtputf8" : "",
                                    row->idn_domain ? " idn" : ""),
                         0);
    assert_int_equal(buf_putc(b, '\n'), 0);
    for (size_t i = 0; i < row->nerrors; i++) {
        char line[512];
        tpl_csv_format_error(&row->errors[i], line, sizeof line);
        assert_int_equal(buf_printf(b, "  E%d %s [%s]\n", row->errors[i].kind, line,
                                    row->errors[i].column_name ? row->errors[i].column_name : "-"),
                         0);
    }
}

/* Drain all available rows; returns tpl_csv_next's last result. */
static int drain(tpl_csv_reader_t *r, buf_t *b)
{
    tpl_csv_row_t *row;
    int rc;
    while ((rc = tpl_csv_next(r, &row)) == 1)
        dump_row(b, row);
    if (rc < 0) {
        char line[512];
        tpl_csv_format_error(tpl_csv_fatal(r), line, sizeof line);
        assert_int_equal(buf_printf(b, "FATAL %d %s\n", tpl_csv_fatal(r)->kind, line), 0);
    }
    return rc;
}

/* Feed data in pieces given by the split function; returns the dump. */
static char *parse_with(const char *data, size_t len, unsigned flags,
                        size_t (*next_piece)(size_t left, unsigned *seed), unsigned seed)
{
    tpl_csv_reader_t *r = tpl_csv_new("in.csv", flags);
    assert_non_null(r);
    buf_t b;
    buf_init(&b, 1 << 24);
    size_t off = 0;
    int rc = 0;
    while (off < len && rc >= 0) {
        size_t n = next_piece(len - off, &seed);
        assert_int_equal(tpl_csv_feed(r, data + off, n), 0);
        off += n;
        rc = drain(r, &b);
    }
    if (rc >= 0) {
        assert_int_equal(tpl_csv_finish(r), 0);
        rc = drain(r, &b);
        if (rc == 0) assert_true(tpl_csv_done(r));
    }
    tpl_csv_free(r);
    char *s = b.data ? buf_take(&b) : strdup("");
    buf_free(&b);
    return s;
}

static size_t piece_all(size_t left, unsigned *seed)
{
    (void)seed;
    return left;
}

static size_t piece_byte(size_t left, unsigned *seed)
{
    (void)left, (void)seed;
    return 1;
}

static size_t piece_random(size_t left, unsigned *seed)
{
    size_t n = (size_t)rand_r(seed) % 9 + 1;
    return n < left ? n : left;
}

static char *parse_all(const char *data, unsigned flags)
{
    return parse_with(data, strlen(data), flags, piece_all, 0);
}

static const char sample[] = "\xef\xbb\xbf"
                             "name,email,note\r\n"
                             "\"Li, Lei\",li@x.cn,\"say \"\"hi\"\"\r\nthere\"\r\n"
                             "\r\n"
                             "王小明,wang@例子.测试,中文：你好，世界\n"
                             " spaced ,  a@B\xc3\xbc\x63her.Example  ,\"\"\n"
                             "Zoë,zoë@example.org,\"multi\nline\nnote\"\n"
                             "last,last@x.org,no newline at end";

static const char sample_dump[] =
    "row 1 line 2:[Li, Lei][li@x.cn][say \"hi\"\r\nthere] dom=x.cn\n"
    "row 2 line 5:[王小明][wang@例子.测试][中文：你好，世界] dom=xn--fsqu00a.xn--0zwm56d idn\n"
    "row 3 line 6:[ spaced ][  a@B\xc3\xbc\x63her.Example  ][] dom=xn--bcher-kva.example idn\n"
    "row 4 line 7:[Zoë][zoë@example.org][multi\nline\nnote] dom=example.org smtputf8\n"
    "row 5 line 10:[last][last@x.org][no newline at end] dom=x.org\n";

static void test_sample_exact(void **state)
{
    (void)state;
    char *s = parse_all(sample, 0);
    assert_string_equal(s, sample_dump);
    free(s);
}

static void test_split_points(void **state)
{
    (void)state;
    char *s = parse_with(sample, strlen(sample), 0, piece_byte, 0);
    assert_string_equal(s, sample_dump);
    free(s);
    for (unsigned seed = 1; seed <= 200; seed++) {
        s = parse_with(sample, strlen(sample), 0, piece_random, seed);
        assert_string_equal(s, sample_dump);
        free(s);
    }
    /* Every single split point, including inside the BOM and inside UTF-8
     * sequences. */
    size_t len = strlen(sample);
    for (size_t cut = 0; cut <= len; cut++) {
        tpl_csv_reader_t *r = tpl_csv_new("in.csv", 0);
        buf_t b;
        buf_init(&b, 1 << 20);
        assert_int_equal(tpl_csv_feed(r, sample, cut), 0);
        assert_true(drain(r, &b) >= 0);
        assert_int_equal(tpl_csv_feed(r, sample + cut, len - cut), 0);
        assert_int_equal(tpl_csv_finish(r), 0);
        assert_int_equal(drain(r, &b), 0);
        assert_string_equal(b.data, sample_dump);
        buf_free(&b);
        tpl_csv_free(r);
    }
}

static void test_header_and_bom(void **state)
{
    (void)state;
    tpl_csv_reader_t *r = tpl_csv_new("in.csv", 0);
    assert_int_equal(tpl_csv_feed(r, sample, strlen(sample)), 0);
    tpl_csv_row_t *row;
    assert_int_equal(tpl_csv_next(r, &row), 1);
    assert_true(tpl_csv_header_ready(r));
    assert_int_equal(tpl_csv_ncolumns(r), 3);
    /* The BOM is not part of the first name. */
    assert_string_equal(tpl_csv_column_name(r, 0), "name");
    assert_int_equal(tpl_csv_column(r, "name"), 0);
    assert_int_equal(tpl_csv_column(r, "note"), 2);
    assert_int_equal(tpl_csv_column(r, "nope"), -1);
    assert_int_equal(tpl_csv_column_n(r, "notes", 4), 2);
    assert_int_equal(tpl_csv_column_n(r, "nam", 3), -1);
    assert_int_equal(tpl_csv_column_n(r, "email.x", 5), 1);
    assert_int_equal(tpl_csv_email_column(r), 1);
    assert_null(tpl_csv_column_name(r, 3));
    assert_string_equal(tpl_csv_filename(r), "in.csv");
    tpl_csv_free(r);

    /* A BOM only: an empty file. Only a BOM-less "EF" byte is data. */
    char *s = parse_all("\xef\xbb\xbf", 0);
    assert_string_equal(s, "FATAL 6 in.csv:1: the file is empty: no header row with an `email` "
                           "column\n");
    free(s);
    /* The email column is found whatever its case; LF only. */
    s = parse_all("EMAIL,x\nA@b.co,1\n", 0);
    assert_string_equal(s, "row 1 line 2:[A@b.co][1] dom=b.co\n");
    free(s);
}

static void test_row_errors(void **state)
{
    (void)state;
    const char *csv = "name,email,city\n"
                      "ok,ok@example.com,Paris\n"
                      "short,short@example.com\n"
                      "long,long@example.com,Rome,extra\n"
                      "\"bad\xff\",bad@example.com,\"multi\nline \xc3\"\n"
                      "empty,  ,Oslo\n"
                      "invalid,not-an-address,Oslo\n"
                      "dots,a..b@example.com,Oslo\n"
                      "dup,OK@example.com,Paris\n"
                      "dup,ok@EXAMPLE.com,Paris\n"
                      "dup2,ok@Example.COM,Paris\n"
                      "fine,ok2@example.com,\"x\n\ny\"\n"
                      "baddomain,x@exa_mple.com,\"a\nb\"\n";
    char *s = parse_all(csv, 0);
    assert_string_equal(
        s, "row 1 line 2:[ok][ok@example.com][Paris] dom=example.com\n"
           "row 2 line 3:[short][short@example.com] dom=example.com\n"
           "  E1 in.csv:3:3: expected 3 fields, found 2 (no `city`) (row 2) [city]\n"
           "row 3 line 4:[long][long@example.com][Rome][extra] dom=example.com\n"
           "  E1 in.csv:4:4: expected 3 fields, found 4 (row 3) [-]\n"
           "row 4 line 5:[bad\xff][bad@example.com][multi\nline \xc3] dom=example.com\n"
           "  E2 in.csv:5:1: invalid UTF-8 at byte 4 of the field (row 4) [name]\n"
           "  E2 in.csv:5:3: invalid UTF-8 at byte 12 of the field (row 4) [city]\n"
           "row 5 line 7:[empty][  ][Oslo]\n"
           "  E3 in.csv:7:2: empty email address (row 5) [email]\n"
           "row 6 line 8:[invalid][not-an-address][Oslo]\n"
           "  E4 in.csv:8:2: invalid email address `not-an-address`: no @ in address (row 6) "
           "[email]\n"
           "row 7 line 9:[dots][a..b@example.com][Oslo]\n"
           "  E4 in.csv:9:2: invalid email address `a..b@example.com`: two dots in a row in "
           "local part (row 7) [email]\n"
           "row 8 line 10:[dup][OK@example.com][Paris] dom=example.com\n"
           "row 9 line 11:[dup][ok@EXAMPLE.com][Paris] dom=example.com\n"
           "  E5 in.csv:11:2: duplicate email address `ok@EXAMPLE.com` (already in an earlier "
           "row) (row 9) [email]\n"
           "row 10 line 12:[dup2][ok@Example.COM][Paris] dom=example.com\n"
           "  E5 in.csv:12:2: duplicate email address `ok@Example.COM` (already in an earlier "
           "row) (row 10) [email]\n"
           "row 11 line 13:[fine][ok2@example.com][x\n\ny] dom=example.com\n"
           "row 12 line 16:[baddomain][x@exa_mple.com][a\nb]\n"
           "  E4 in.csv:16:2: invalid email address `x@exa_mple.com`: character not allowed in "
           "domain (row 12) [email]\n");
    free(s);

    /* The structured form, not only the text. */
    tpl_csv_reader_t *r = tpl_csv_new("data/people.csv", 0);
    const char *two = "id,email\n1,x\"@y\n";
    assert_int_equal(tpl_csv_feed(r, two, strlen(two)), 0);
    assert_int_equal(tpl_csv_finish(r), 0);
    tpl_csv_row_t *row;
    assert_int_equal(tpl_csv_next(r, &row), VL_EPARSE);
    const tpl_csv_error_t *e = tpl_csv_fatal(r);
    assert_non_null(e);
    assert_int_equal(e->kind, TPL_CSV_E_SYNTAX);
    assert_int_equal(e->line, 2);
    assert_int_equal(e->column, 2);
    assert_string_equal(e->file, "data/people.csv");
    /* Once fatal, always fatal. */
    assert_int_equal(tpl_csv_next(r, &row), VL_EPARSE);
    tpl_csv_free(r);

    /* A bad row does not claim its address: the next good row keeps it. */
    s = parse_all("email,a\nz@x.org\nz@x.org,1\nz@x.org,2\n", 0);
    assert_string_equal(s, "row 1 line 2:[z@x.org] dom=x.org\n"
                           "  E1 in.csv:2:2: expected 2 fields, found 1 (no `a`) (row 1) [a]\n"
                           "row 2 line 3:[z@x.org][1] dom=x.org\n"
                           "row 3 line 4:[z@x.org][2] dom=x.org\n"
                           "  E5 in.csv:4:1: duplicate email address `z@x.org` (already in an "
                           "earlier row) (row 3) [email]\n");
    free(s);
    /* An IDN domain and its punycode form are the same address; the local
     * part's case counts. */
    s = parse_all("email\na@bücher.example\na@XN--BCHER-KVA.example\nA@bücher.example\n", 0);
    assert_non_null(strstr(s, "E5 in.csv:3:1: duplicate email address "
                              "`a@XN--BCHER-KVA.example`"));
    assert_null(strstr(s, "(row 3)"));
    free(s);
    /* Header injection attempts are data: a CR or LF in the address makes
     * it invalid, and the message shows it as '?'. */
    s = parse_all("email\n\"a@x.org\r\nBcc: evil@y.org\"\n", 0);
    assert_non_null(strstr(s, "invalid email address `a@x.org??Bcc: evil@y.org`: "
                              "control character in domain"));
    free(s);
    /* Flags: no dedup; no email column needed. */
    s = parse_all("email\na@x.org\na@x.org\n", TPL_CSV_NO_DEDUP);
    assert_null(strstr(s, "E5"));
    free(s);
    s = parse_all("a,b\n1,2\n", TPL_CSV_NO_EMAIL);
    assert_string_equal(s, "row 1 line 2:[1][2]\n");
    free(s);
}

static void test_fatal_errors(void **state)
{
    (void)state;
    char *s = parse_all("name,mail\nx,y\n", 0);
    assert_string_equal(s, "FATAL 6 in.csv:1: no `email` column in the header (2 columns)\n");
    free(s);
    s = parse_all("\n\nname,email,name\nx,y,z\n", 0);
    assert_string_equal(s, "FATAL 6 in.csv:3:3: column `name` appears twice in the header "
                           "(columns 1 and 3)\n");
    free(s);
    s = parse_all("email\na@b.org\n\"open@b.org\n\nmore\n", 0);
    assert_string_equal(s, "row 1 line 2:[a@b.org] dom=b.org\n"
                           "FATAL 7 in.csv:3:1: unterminated quoted field: the quote opened on "
                           "line 3 is never closed\n");
    free(s);
    s = parse_all("email,n\na@b.org,\"x\" y\n", 0);
    assert_non_null(strstr(s, "FATAL 7 in.csv:2:2: CSV syntax error"));
    free(s);
    s = parse_all("", 0);
    assert_string_equal(s, "FATAL 6 in.csv:1: the file is empty: no header row with an `email` "
                           "column\n");
    free(s);
    s = parse_all("na\xffme,email\n", 0);
    assert_string_equal(s, "FATAL 6 in.csv:1:1: invalid UTF-8 in the name of column 1 (byte 3)\n");
    free(s);
    /* One column limit for every path: 1,024 are read, 1,025 is an error naming it (the
     * ingest once read 1,024 of them silently while check showed them all). */
    for (int n = TPL_CSV_MAX_COLUMNS; n <= TPL_CSV_MAX_COLUMNS + 1; n++) {
        char *hdr = malloc((size_t)n * 8 + 16);
        size_t k = (size_t)sprintf(hdr, "email");
        for (int i = 1; i < n; i++)
            k += (size_t)sprintf(hdr + k, ",c%d", i);
        sprintf(hdr + k, "\n");
        s = parse_all(hdr, 0);
        if (n == TPL_CSV_MAX_COLUMNS)
            assert_null(strstr(s, "FATAL"));
        else
            assert_string_equal(s, "FATAL 6 in.csv:1:1025: the header has 1025 columns; at most "
                                   "1024 are allowed\n");
        free(s);
        free(hdr);
    }

    /* Input that never ends a field (a FIFO fed from /dev/zero, an unclosed quote) stops
     * at the row limit instead of growing libcsv's field buffer for ever. */
    tpl_csv_reader_t *r = tpl_csv_new("zero.csv", 0);
    tpl_csv_set_row_max(r, 4 << 20);
    static char zeros[1 << 20];
    int zrc = 0;
    tpl_csv_row_t *zrow;
    for (int i = 0; i < 80 && zrc == 0; i++) {
        assert_int_equal(tpl_csv_feed(r, zeros, sizeof zeros), 0);
        zrc = tpl_csv_next(r, &zrow);
    }
    assert_int_equal(zrc, VL_ETOOBIG);
    char zline[256];
    tpl_csv_format_error(tpl_csv_fatal(r), zline, sizeof zline);
    assert_non_null(strstr(zline, "zero.csv:1: row larger than 4194304 bytes"));
    tpl_csv_free(r);

    r = tpl_csv_new("x.csv", 0);
    assert_int_equal(tpl_csv_finish(r), 0);
    assert_int_equal(tpl_csv_finish(r), VL_ESTATE);
    assert_int_equal(tpl_csv_feed(r, "a", 1), VL_ESTATE);
    tpl_csv_free(r);

    assert_int_equal(tpl_csv_open("/nonexistent/dir/people.csv", 0, &r), VL_ENOENT);
    assert_non_null(r);
    char line[256];
    tpl_csv_format_error(tpl_csv_fatal(r), line, sizeof line);
    assert_string_equal(line, "/nonexistent/dir/people.csv: cannot open: No such file or "
                              "directory");
    tpl_csv_row_t *row;
    assert_int_equal(tpl_csv_read(r, &row), VL_ENOENT);
    tpl_csv_free(r);
}

struct email_case {
    const char *addr;
    int ok;
    const char *domain_or_error;
    int smtputf8, idn;
};

static void test_email_check(void **state)
{
    (void)state;
    static const struct email_case cases[] = {
        {"user@example.com", 1, "example.com", 0, 0},
        {"First.Last+tag@Sub.Example.COM", 1, "sub.example.com", 0, 0},
        {"!#$%&'*+-/=?^_`{|}~@x.org", 1, "x.org", 0, 0},
        {"\"john doe\"@x.org", 1, "x.org", 0, 0},
        {"\"a@b\\\"c\"@x.org", 1, "x.org", 0, 0},
        {"user@localhost", 1, "localhost", 0, 0},
        {"user@[192.0.2.1]", 1, "[192.0.2.1]", 0, 0},
        {"user@[IPv6:2001:db8::1]", 1, "[IPv6:2001:db8::1]", 0, 0},
        {"用户@例子.广告", 1, "xn--fsqu00a.xn--4rr70v", 1, 1},
        {"pelé@exemple.fr", 1, "exemple.fr", 1, 0},
        {"a@bücher.example", 1, "xn--bcher-kva.example", 0, 1},
        {"x@例子.测试", 1, "xn--fsqu00a.xn--0zwm56d", 0, 1},
        {"x@München-Ost.de", 1, "xn--mnchen-ost-9db.de", 0, 1},
        {"", 0, "empty address", 0, 0},
        {"plain", 0, "no @ in address", 0, 0},
        {"@x.org", 0, "empty local part", 0, 0},
        {".a@x.org", 0, "local part starts with a dot", 0, 0},
        {"a.@x.org", 0, "local part ends with a dot", 0, 0},
        {"a..b@x.org", 0, "two dots in a row in local part", 0, 0},
        {"a b@x.org", 0, "space in local part", 0, 0},
        {"a(b)@x.org", 0, "character not allowed in local part", 0, 0},
        {"a@b@x.org", 0, "character not allowed in domain", 0, 0},
        {"a@", 0, "empty domain", 0, 0},
        {"a@.x.org", 0, "domain starts with a dot", 0, 0},
        {"a@x.org.", 0, "domain ends with a dot", 0, 0},
        {"a@x..org", 0, "empty label in domain", 0, 0},
        {"a@-x.org", 0, "domain label starts or ends with a hyphen", 0, 0},
        {"a@x-.org", 0, "domain label starts or ends with a hyphen", 0, 0},
        {"a@x_y.org", 0, "character not allowed in domain", 0, 0},
        {"a@x.org\n", 0, "control character in domain", 0, 0},
        {"\"abc@x.org", 0, "unterminated quoted local part", 0, 0},
        {"\"abc\"x@x.org", 0, "text after quoted local part", 0, 0},
        {"a@[300.1.1.1]", 0, "bad IPv4 address literal", 0, 0},
        {"a@[1.2.3]", 0, "bad IPv4 address literal", 0, 0},
        {"a@[IPv6:1:2]", 0, "bad IPv6 address literal", 0, 0},
        {"a@[1.2.3.4", 0, "unterminated address literal", 0, 0},
        {"a@例子。测试", 0, "character not allowed in domain", 0, 0},
        {"a\xc3@x.org", 0, "invalid UTF-8 in local part", 0, 0},
        {"a@x\xc3.org", 0, "invalid UTF-8 in domain", 0, 0},
        {"a@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.org", 0,
         "domain label longer than 63 octets", 0, 0},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@x.org", 0,
         "local part longer than 64 octets", 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct email_case *c = &cases[i];
        tpl_email_info_t info;
        int rc = tpl_email_check(c->addr, strlen(c->addr), &info);
        if (c->ok) {
            if (rc != 0) fail_msg("%s: rejected: %s", c->addr, info.error);
            assert_string_equal(info.ascii_domain, c->domain_or_error);
            assert_int_equal(info.ascii_domain_len, strlen(c->domain_or_error));
            assert_int_equal(info.needs_smtputf8, c->smtputf8);
            assert_int_equal(info.idn_domain, c->idn);
            assert_null(info.error);
            assert_int_equal(c->addr[info.at], '@');
        } else {
            if (rc != VL_EPARSE) fail_msg("%s: accepted", c->addr);
            if (strcmp(info.error, c->domain_or_error) != 0)
                fail_msg("%s: error [%s], want [%s]", c->addr, info.error, c->domain_or_error);
            assert_int_equal(info.ascii_domain_len, 0);
        }
    }
    /* A domain over 253 octets. */
    char big[400] = "a@";
    for (int i = 0; i < 5; i++)
        strcat(big, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.");
    strcat(big, "org");
    tpl_email_info_t info;
    assert_int_equal(tpl_email_check(big, strlen(big), &info), VL_EPARSE);
    assert_string_equal(info.error, "domain longer than 253 octets");
}

static void test_punycode(void **state)
{
    (void)state;
    /* RFC 3492 section 7.1 samples (B) Chinese simplified and (L). */
    static const uint32_t b[] = {0x4ED6, 0x4EEC, 0x4E3A, 0x4EC0, 0x4E48,
                                 0x4E0D, 0x8BF4, 0x4E2D, 0x6587};
    static const uint32_t l[] = {0x0033, 0x5E74, 0x0042, 0x7D44, 0x91D1, 0x516B, 0x5148, 0x751F};
    /* (A) Arabic (Egyptian). */
    static const uint32_t a[] = {0x0644, 0x064A, 0x0647, 0x0645, 0x0627, 0x0628,
                                 0x062A, 0x0643, 0x0644, 0x0645, 0x0648, 0x0634,
                                 0x0639, 0x0631, 0x0628, 0x064A, 0x061F};
    char out[64];
    assert_int_equal(tpl_punycode_encode(b, 9, out, sizeof out), 24);
    assert_string_equal(out, "ihqwcrb4cv8a8dqg056pqjye");
    assert_int_equal(tpl_punycode_encode(l, 8, out, sizeof out), 24);
    assert_string_equal(out, "3B-ww4c5e180e575a65lsy2b");
    assert_true(tpl_punycode_encode(a, 17, out, sizeof out) > 0);
    assert_string_equal(out, "egbpdaj6bu4bxfgehfvwxn");
    /* Too small a buffer is an error, not an overflow. */
    char tiny[8];
    memset(tiny, 'Z', sizeof tiny);
    assert_int_equal(tpl_punycode_encode(b, 9, tiny, 5), VL_ETOOBIG);
    assert_int_equal(tiny[5], 'Z');
}

static void test_utf8(void **state)
{
    (void)state;
    assert_true(tpl_utf8_valid("", 0));
    assert_true(tpl_utf8_valid("héllo 你好 😀", strlen("héllo 你好 😀")));
    assert_false(tpl_utf8_valid("\xc0\x80", 2));         /* overlong NUL */
    assert_false(tpl_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(tpl_utf8_valid("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
    assert_false(tpl_utf8_valid("\xe4\xbd", 2));         /* truncated */
    assert_false(tpl_utf8_valid("\x80", 1));
}

/* A region whose last byte is followed by a PROT_NONE page. */
struct guarded {
    char *base;
    size_t page;
};

static char *guard_place(struct guarded *g, const void *data, size_t len)
{
    g->page = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (len + g->page - 1) / g->page + 1;
    g->base =
        mmap(NULL, pages * g->page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(g->base != MAP_FAILED);
    char *guard = g->base + (pages - 1) * g->page;
    assert_int_equal(mprotect(guard, g->page, PROT_NONE), 0);
    char *p = guard - len;
    memcpy(p, data, len);
    g->page = pages * g->page; /* remember the mapping size */
    return p;
}

static void guard_free(struct guarded *g)
{
    munmap(g->base, g->page);
}

static void test_no_overread(void **state)
{
    (void)state;
    /* The whole sample, and also every prefix of it, fed from right before
     * an unreadable page. */
    size_t len = strlen(sample);
    for (size_t cut = 1; cut <= len; cut += (cut < 40 ? 1 : 17)) {
        struct guarded g;
        char *p = guard_place(&g, sample, cut);
        tpl_csv_reader_t *r = tpl_csv_new("in.csv", 0);
        assert_int_equal(tpl_csv_feed(r, p, cut), 0);
        assert_int_equal(tpl_csv_finish(r), 0);
        buf_t b;
        buf_init(&b, 1 << 20);
        (void)drain(r, &b);
        if (cut == len) assert_string_equal(b.data, sample_dump);
        buf_free(&b);
        tpl_csv_free(r);
        guard_free(&g);
    }
    /* The validators, on inputs that end where a read past them would
     * fault: truncated UTF-8, open quotes and literals, trailing dots. */
    static const char *const inputs[] = {
        "a@b\xc3", "\"abc", "\"a\\", "a@[1.2.3.4", "a@[IPv6:", "a@x.",
        "a.",      "ü",     "a@ü",   "a@",         "a@b",      "\xf0\x9f\x98",
    };
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        size_t n = strlen(inputs[i]);
        struct guarded g;
        char *p = guard_place(&g, inputs[i], n);
        tpl_email_info_t info;
        (void)tpl_email_check(p, n, &info);
        (void)tpl_utf8_valid(p, n);
        guard_free(&g);
    }
}

static void test_file_reader(void **state)
{
    (void)state;
    char path[] = "/tmp/volley-test-csv-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    /* Bigger than several 64 KiB chunks, with quoted newlines and CRLF so
     * rows straddle chunk ends. */
    fputs("\xef\xbb\xbfid,email,note\r\n", f);
    const int rows = 20000;
    for (int i = 1; i <= rows; i++)
        fprintf(f, "%d,user%d@例子.测试,\"line one, \"\"%d\"\"\r\n二行\"\r\n", i, i, i);
    fclose(f);

    tpl_csv_reader_t *r;
    assert_int_equal(tpl_csv_open(path, 0, &r), 0);
    tpl_csv_row_t *row;
    int n = 0, rc;
    while ((rc = tpl_csv_read(r, &row)) == 1) {
        n++;
        assert_int_equal(row->row, (unsigned long)n);
        assert_int_equal(row->line, 2 + 2 * (unsigned long)(n - 1));
        assert_int_equal(row->nerrors, 0);
        assert_int_equal(row->nfields, 3);
        char want[64];
        int wl = snprintf(want, sizeof want, "line one, \"%d\"\r\n二行", n);
        assert_int_equal(row->fields[2].len, (size_t)wl);
        assert_memory_equal(row->fields[2].ptr, want, (size_t)wl);
        wl = snprintf(want, sizeof want, "user%d@例子.测试", n);
        assert_int_equal(row->email.len, (size_t)wl);
        assert_memory_equal(row->email.ptr, want, (size_t)wl);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(n, rows);
    assert_true(tpl_csv_done(r));
    assert_int_equal(tpl_csv_read(r, &row), 0);
    tpl_csv_free(r);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sample_exact),   cmocka_unit_test(test_split_points),
        cmocka_unit_test(test_header_and_bom), cmocka_unit_test(test_row_errors),
        cmocka_unit_test(test_fatal_errors),   cmocka_unit_test(test_email_check),
        cmocka_unit_test(test_punycode),       cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_no_overread),    cmocka_unit_test(test_file_reader),
    };
    return cmocka_run_group_tests_name("csv", tests, NULL, NULL);
}
