/* csv.h: the recipients CSV, read as a stream of validated rows.
 *
 * The core does no I/O, like hiredis's reader: feed it bytes with
 * tpl_csv_feed() as they arrive, say tpl_csv_finish() at the end of input,
 * and take complete rows with tpl_csv_next(). A convenience file reader
 * (tpl_csv_open()/tpl_csv_read()) feeds a file in 64 KiB chunks, so a
 * 1,000,000-row file streams in flat memory.
 *
 * The first row is the header: it names the columns, and must contain an
 * `email` column (matched case-insensitively) unless TPL_CSV_NO_EMAIL is
 * given. A UTF-8 byte order mark at the start of the input is stripped.
 * Fields may be quoted ("a, ""b""" and embedded newlines); lines end in CRLF
 * or LF.
 *
 * Every data row is validated: field count, UTF-8 in every field, the email
 * address (an RFC 5321 mailbox, see tpl_email_check()) and duplicates (the
 * second and later rows with the same address are rejected). A row that fails
 * comes back from tpl_csv_next() all the same, with its errors attached, so
 * the caller reports and skips it: nothing is silently dropped. Only damage
 * that stops the reading (no email column in the header, a CSV syntax error
 * such as a stray quote, out of memory) is fatal.
 */
#ifndef VL_TEMPLATES_CSV_H
#define VL_TEMPLATES_CSV_H

#include <stddef.h>
#include <stdint.h>

typedef struct tpl_csv_reader tpl_csv_reader_t;

/* The most columns a header may name: a fatal TPL_CSV_E_HEADER error past it, so that
 * check, render and the ingest all see the same columns. */
#define TPL_CSV_MAX_COLUMNS 1024

/* Flags for tpl_csv_new() / tpl_csv_open(). 0 is the campaign default:
 * email column required, addresses validated and de-duplicated. */
enum tpl_csv_flags {
    TPL_CSV_NO_EMAIL = 1 << 0, /* no email column needed; no address checks */
    TPL_CSV_NO_DEDUP = 1 << 1, /* do not reject repeated addresses */
};

/* What went wrong, for callers that react by kind (tests, exit codes). */
enum tpl_csv_errkind {
    TPL_CSV_E_NONE = 0,
    TPL_CSV_E_FIELDS,    /* row: wrong number of fields */
    TPL_CSV_E_UTF8,      /* row: a field is not valid UTF-8 */
    TPL_CSV_E_NO_EMAIL,  /* row: the email field is empty */
    TPL_CSV_E_EMAIL,     /* row: the email field is not a valid mailbox */
    TPL_CSV_E_DUPLICATE, /* row: the address appeared in an earlier row */
    TPL_CSV_E_HEADER,    /* fatal: no email column, empty or bad header */
    TPL_CSV_E_SYNTAX,    /* fatal: CSV syntax (e.g. a quote inside an unquoted field) */
    TPL_CSV_E_IO,        /* fatal: the file could not be opened or read */
    TPL_CSV_E_NOMEM,     /* fatal: out of memory or a field over the size limit */
};

/* One error, structured so the caller can print it however it likes.
 * tpl_csv_format_error() gives the usual "file:LINE:COL: message (row N)". */
typedef struct tpl_csv_error {
    const char *file;        /* borrowed from the reader: the name given to tpl_csv_new() */
    unsigned long row;       /* data row number, 1-based, header excluded; 0 for the header
                                or when no row applies */
    unsigned long line;      /* physical line (1-based) where the field, or the row, starts */
    int column;              /* 1-based column index; 0 when the error is about no column */
    const char *column_name; /* borrowed from the reader's header; NULL when none */
    enum tpl_csv_errkind kind;
    char message[200]; /* a sentence without the location, e.g. "duplicate address
                          a@b.example (first in row 3)" */
} tpl_csv_error_t;

/* A view of one field: not NUL-terminated in general (it is, in practice, but
 * use len: fields may contain NUL bytes). */
typedef struct tpl_csv_field {
    const char *ptr;
    size_t len;
} tpl_csv_field_t;

/* A data row, handed out by tpl_csv_next(). Every pointer in it is borrowed
 * from the reader and valid until the next call to tpl_csv_next(),
 * tpl_csv_read(), tpl_csv_feed() or tpl_csv_free(). */
typedef struct tpl_csv_row {
    unsigned long row;             /* data row number, 1-based: `volley render --row N` */
    unsigned long line;            /* physical line where the row starts, 1-based */
    size_t nfields;                /* fields present (may differ from the header's count
                                      when the row has a TPL_CSV_E_FIELDS error) */
    const tpl_csv_field_t *fields; /* nfields views */
    /* The address (when the header has an email column and the field is
     * present): the field as it is, whether it needs SMTPUTF8 (non-ASCII local
     * part), and the domain in ASCII (IDN labels punycoded, "xn--...",
     * lowercased). ascii_domain_len is 0 when the address is invalid. */
    tpl_csv_field_t email;
    int needs_smtputf8;
    int idn_domain; /* the domain had non-ASCII labels (ascii_domain differs) */
    const char *ascii_domain;
    size_t ascii_domain_len;
    size_t nerrors;                /* 0 for a good row */
    const tpl_csv_error_t *errors; /* nerrors errors, in column order */
} tpl_csv_row_t;

/* A new reader. filename is copied and only used in error messages; flags
 * are TPL_CSV_* values. Returns NULL when out of memory. */
tpl_csv_reader_t *tpl_csv_new(const char *filename, unsigned flags);

/* Lower the limit on one row's input (64 MB, the default and the most) to bytes, before
 * the first feed: past it reading stops with a fatal VL_ETOOBIG error naming it. For
 * tests, which need not feed 64 MB (libcsv grows a field in small steps, and under
 * AddressSanitizer, whose realloc always copies, that took minutes). */
void tpl_csv_set_row_max(tpl_csv_reader_t *r, size_t bytes);

/* Release the reader and everything it handed out. NULL is allowed. */
void tpl_csv_free(tpl_csv_reader_t *r);

/* Add input (copied; parsed by tpl_csv_next(), which drops it once used, so
 * feeding a chunk and taking its rows keeps memory at one chunk). 0,
 * VL_ENOMEM, or VL_ESTATE after tpl_csv_finish(). A row over 64 MiB (an
 * unclosed quote in a big file) is a fatal TPL_CSV_E_NOMEM error from
 * tpl_csv_next(). */
int tpl_csv_feed(tpl_csv_reader_t *r, const void *data, size_t len);

/* Say that no more input will come, so a last line without a line end is a
 * row. 0 or VL_ESTATE when called twice. */
int tpl_csv_finish(tpl_csv_reader_t *r);

/* Take the next data row. Returns 1 and sets *row (borrowed, see
 * tpl_csv_row_t) when one is complete; 0 when more input is needed, or,
 * after tpl_csv_finish(), at the end (see tpl_csv_done()); a negative VL_E*
 * code on a fatal error, described by tpl_csv_fatal(). The header row is
 * consumed internally: the first row returned is data row 1. */
int tpl_csv_next(tpl_csv_reader_t *r, tpl_csv_row_t **row);

/* True once tpl_csv_finish() was called and every row was taken. */
int tpl_csv_done(const tpl_csv_reader_t *r);

/* The fatal error that stopped the reader, or NULL. Borrowed. */
const tpl_csv_error_t *tpl_csv_fatal(const tpl_csv_reader_t *r);

/* Header access, valid once the header row has been read (after the first
 * tpl_csv_next() that returned 1, or after tpl_csv_header_ready() is true).
 * tpl_csv_column() finds a column by exact name: its 0-based index or -1.
 * Names are borrowed, NUL-terminated, valid until tpl_csv_free(). */
int tpl_csv_header_ready(const tpl_csv_reader_t *r);
size_t tpl_csv_ncolumns(const tpl_csv_reader_t *r);
const char *tpl_csv_column_name(const tpl_csv_reader_t *r, size_t i);
int tpl_csv_column(const tpl_csv_reader_t *r, const char *name);
/* tpl_csv_column() for a name that is not NUL-terminated (name[0..len), as
 * a Mustache lookup callback receives it); fast enough to call per tag. */
int tpl_csv_column_n(const tpl_csv_reader_t *r, const char *name, size_t len);
/* The index of the email column, or -1 (TPL_CSV_NO_EMAIL and no such column). */
int tpl_csv_email_column(const tpl_csv_reader_t *r);

/* The filename given to tpl_csv_new(). Borrowed. */
const char *tpl_csv_filename(const tpl_csv_reader_t *r);

/* Format an error as "file:LINE:COL: message (row N)" (":COL" left out when
 * column is 0, ":LINE" too when line is 0, the row note when row is 0) into dst of size n,
 * always NUL-terminated when n > 0. Returns the length snprintf would give. */
int tpl_csv_format_error(const tpl_csv_error_t *e, char *dst, size_t n);

/* Convenience streaming file reader: opens path (copied; also the name in
 * errors) and reads it in 64 KiB chunks as rows are taken, never the whole
 * file at once. Returns 0 and *out, or a negative code: VL_ENOENT (no such
 * file), VL_EIO, VL_ENOMEM. On failure *out is still set, when memory allows,
 * to a reader whose tpl_csv_fatal() describes the problem (caller frees it
 * with tpl_csv_free()); it is NULL only when out of memory. */
int tpl_csv_open(const char *path, unsigned flags, tpl_csv_reader_t **out);

/* For a reader made by tpl_csv_open(): the next data row, reading the file
 * as needed. 1 and *row, 0 at the end of the file, or a negative VL_E* code
 * (tpl_csv_fatal() says why). */
int tpl_csv_read(tpl_csv_reader_t *r, tpl_csv_row_t **row);

/* ------------------------------------------------------------------------
 * Email addresses, reusable on their own (From, Reply-To, test addresses).
 */

/* The result of tpl_email_check(). The caller owns the struct (the ASCII
 * domain is written into it, so no allocation is made). */
typedef struct tpl_email_info {
    int needs_smtputf8;      /* the local part has non-ASCII characters (RFC 6531) */
    int idn_domain;          /* the domain had non-ASCII labels, now punycoded */
    size_t at;               /* offset of the '@' separating local part and domain */
    char ascii_domain[256];  /* the domain in ASCII, lowercased, NUL-terminated */
    size_t ascii_domain_len; /* 0 when invalid */
    const char *error;       /* static message when invalid, else NULL */
} tpl_email_info_t;

/* Check that s[0..len) (borrowed; read only within len) is an RFC 5321
 * mailbox: a dot-atom or quoted-string local part of at most 64 octets, '@',
 * and a domain of dot-separated labels (letters, digits, hyphens, not
 * starting or ending with a hyphen, at most 63 octets each, 253 in all once
 * in ASCII) or an address literal [1.2.3.4] / [IPv6:...]. UTF-8 is allowed
 * in the local part (flagged needs_smtputf8) and in domain labels (encoded
 * with punycode, flagged idn_domain). info (caller-owned, required) is
 * always filled. Returns 0 when valid, VL_EPARSE when not (info->error says
 * why). */
int tpl_email_check(const char *s, size_t len, tpl_email_info_t *info);

/* Encode one label of Unicode code points with punycode (RFC 3492), without
 * the "xn--" prefix, into dst of size n (NUL-terminated). Returns the length,
 * or VL_ETOOBIG when dst is too small or the numbers overflow. */
int tpl_punycode_encode(const uint32_t *cp, size_t ncp, char *dst, size_t n);

/* True when s[0..len) is valid UTF-8 (shortest forms, no surrogates, at most
 * U+10FFFF). Borrowed; read only within len. */
int tpl_utf8_valid(const char *s, size_t len);

#endif
