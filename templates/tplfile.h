/* tplfile.h: the template file (JSON) of a campaign, loaded and checked.
 *
 * Keys, exactly: from, reply_to, subject, headers (name -> value), text,
 * html, inline [{cid, path, type}], attachments [{path, filename, type}],
 * partials (name -> source), unsubscribe {url, mailto}. At least one of
 * text and html. Values are Mustache sources; they are not compiled here
 * (see message.h). Paths are relative to the template file; the files of
 * inline images and attachments are read at load time, once per campaign.
 *
 * Problems are reported through a diagnostic callback, every one of them
 * rather than the first, each with the file, line and column it is at
 * (found by scanning the JSON text, since jansson keeps no positions for
 * values), so `volley check` can list them all.
 */
#ifndef VL_TEMPLATES_TPLFILE_H
#define VL_TEMPLATES_TPLFILE_H

#include <stdarg.h>
#include <stddef.h>

/* What kind of problem a diagnostic is; the CLI maps these to exit codes
 * (65, 66, 78). */
enum tplf_kind {
    TPLF_DATA = 1,    /* bad CSV or template data */
    TPLF_NOINPUT = 2, /* a file is missing or unreadable */
    TPLF_CONFIG = 3,  /* bad configuration (campaign file, keys) */
};

/* One diagnostic: file (may be NULL), 1-based line and column (0 when not
 * known), a message without the location. All borrowed for the call. */
typedef void (*tplf_diag_fn)(void *ud, enum tplf_kind kind, const char *file, int line, int column,
                             const char *message);

typedef struct tplf_str {
    char *s; /* owned, NUL-terminated; NULL when the key is absent */
    size_t len;
} tplf_str_t;

typedef struct tplf_header {
    char *name; /* owned */
    tplf_str_t value;
} tplf_header_t;

typedef struct tplf_file_part {
    char *path;          /* owned: resolved against the template's directory */
    char *filename;      /* owned: the name shown to the reader (attachments: `filename`
                            or the base name of path; inline: the base name) */
    char *type;          /* owned: the MIME type, given or guessed from the extension */
    char *cid;           /* owned: inline images only, else NULL */
    unsigned char *data; /* owned: the file's bytes */
    size_t len;
} tplf_file_part_t;

typedef struct tplf_partial {
    char *name; /* owned */
    tplf_str_t src;
} tplf_partial_t;

/* A loaded template file. Everything in it is owned by it. */
typedef struct tplf {
    char *path; /* as given */
    char *text; /* the whole JSON text, kept to locate values for diagnostics */
    size_t text_len;
    tplf_str_t from, reply_to, subject, body_text, body_html;
    tplf_str_t unsub_url, unsub_mailto;
    tplf_header_t *headers;
    size_t nheaders;
    tplf_file_part_t *inlines;
    size_t ninlines;
    tplf_file_part_t *attachments;
    size_t nattachments;
    tplf_partial_t *partials;
    size_t npartials;
} tplf_t;

/* Load and check the template file at path (copied). Every problem found is
 * passed to diag (may be NULL). Returns 0 and *out (free with tplf_free()),
 * or a negative code when the template cannot be used: VL_ENOENT (the file
 * or a file it names is missing), VL_EPARSE (bad JSON, unknown or mistyped
 * keys, no body), VL_ENOMEM. *out is NULL on failure. */
int tplf_load(tplf_t **out, const char *path, tplf_diag_fn diag, void *ud);

/* Release a template file. NULL is allowed. */
void tplf_free(tplf_t *t);

/* Locate, in the JSON text text[0..len), the string value at `path` (keys
 * separated by '.', array indexes as numbers: "html", "headers.X-Tag",
 * "inline.0.path"; a key may itself hold dots only as the last component)
 * and, within the decoded value, the 1-based line vline and column vcol
 * (0, 0 for the start of the value). On success sets *line and *col (1-based,
 * columns in characters, as jansson counts) in the file and returns 0;
 * VL_EINVAL when the path is not found. */
int tplf_locate(const char *text, size_t len, const char *path, int vline, int vcol, int *line,
                int *col);

/* Report one diagnostic through diag (NULL: nothing): the message is fmt
 * with ap, and its place in file is found by tplf_locate() from where (a key
 * path into text, len bytes; NULL or no text: no place). For loaders of JSON
 * files that list every error, this one and cli/campaign.c's. */
void tplf_vreport(tplf_diag_fn diag, void *ud, enum tplf_kind kind, const char *file,
                  const char *text, size_t len, const char *where, const char *fmt, va_list ap)
    __attribute__((format(printf, 8, 0)));

/* Read a whole file (at most max bytes) into a NUL-terminated buffer the
 * caller frees. 0, VL_ENOENT, VL_EIO, VL_ETOOBIG or VL_ENOMEM. */
int tplf_read_file(const char *path, size_t max, char **data, size_t *len);

/* Join dir-of(base) and rel (unless rel is absolute) into a new string the
 * caller frees; NULL when out of memory. */
char *tplf_path_join(const char *base, const char *rel);

/* A MIME type for a file name by its extension; application/octet-stream
 * when unknown. Static string. */
const char *tplf_guess_type(const char *filename);

#endif
