/* result.h: a row's result as stored in {c:ID}:res:K (see keys.h), and the
 * parts of a batch blob.
 *
 * The worker composes results here rather than in Lua, so Redis never parses
 * them on the hot path; claims and the results reader (campaign.c) read them
 * back. Pure functions, no I/O. Private to scheduler/: other modules read
 * results through scheduler/campaign.h.
 */
#ifndef VL_SCHED_RESULT_H
#define VL_SCHED_RESULT_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "scheduler/utf8.h"

typedef struct sched_result {
    const char *email, *provider, *status; /* borrowed; NULL is "" */
    long long attempts, code;
    const char *enhanced, *response, *host; /* borrowed; NULL is "" */
    long long first_ms, last_ms;
} sched_result_t;

/* Append r to out as one line of ten tab-separated columns, in this order:
 *   status, attempts, code, enhanced, first_ms, last_ms, host, provider,
 *   email, response
 * Text columns escape backslash, tab, CR and LF as \\ \t \r \n, and
 * invalid UTF-8 becomes U+FFFD. The status comes first: record.lua and
 * cancel rewrite a result's status by replacing its first column. The
 * response, the longest, comes last. No newline is appended. 0 or VL_E*.
 * Positional rather than JSON: about half the size (the keys and quotes
 * were most of a delivered row's result), and Redis's time in record.lua and
 * its append-only file grows with the bytes stored. */
BUF_MUST_USE int sched_result_encode(buf_t *out, const sched_result_t *r);

/* A column of a stored result: still escaped, into the caller's string. */
typedef struct sched_text {
    const char *p;
    size_t len;
} sched_text_t;

typedef struct sched_result_view {
    sched_text_t status, enhanced, host, provider, email, response;
    long long attempts, code, first_ms, last_ms;
} sched_result_view_t;

/* Split the stored result s (len bytes) into *v without copying. 0, or -1
 * when s is not a result (wrong number of columns, a bad number, an empty
 * status). */
int sched_result_parse(const char *s, size_t len, sched_result_view_t *v);

/* Append column t unescaped to out. 0 or the VL_E* of buf_append (out at
 * its cap keeps what fit). */
BUF_MUST_USE int sched_text_unescape(buf_t *out, sched_text_t t);

/* Append s (n bytes) as a JSON string, quotes included. 0 or VL_E*. */
BUF_MUST_USE int sched_json_string(buf_t *out, const char *s, size_t n);

/* One line of a batch blob: "row<TAB>provider<TAB>fields JSON<LF>". */
typedef struct sched_line {
    unsigned long row;
    const char *provider; /* into the blob; not NUL-terminated */
    size_t provider_len;
    const char *fields; /* the JSON array, into the blob */
    size_t fields_len;
} sched_line_t;

/* Read the line at *pos of blob (len bytes) and advance *pos past it.
 * 1 with *line, 0 at the end, -1 when the blob is malformed there. */
int sched_blob_next(const char *blob, size_t len, size_t *pos, sched_line_t *line);

/* Decode a line's fields (a JSON array of strings, as ingest writes them;
 * no whitespace) into out: each field's bytes then a NUL. Field i starts at
 * out->data + offs[i] and has lens[i] bytes. At most max fields are kept.
 * Returns the number of fields kept, VL_EPARSE when json is not such an
 * array, or VL_ENOMEM / VL_ETOOBIG when out cannot grow. Faster than a general JSON
 * library by not building a tree: this is done once per message. */
int sched_fields_decode(const char *json, size_t len, buf_t *out, size_t *offs, size_t *lens,
                        size_t max);

/* A member of a due set (see keys.h): "F-L/n" (a batch part) or "F-L:r" (a
 * single row). 0, or -1 when m is not one. */
typedef struct sched_member {
    unsigned long first, last;
    unsigned long row;  /* the single row, 0 for a batch part */
    unsigned long rows; /* n of a batch part, 1 for a single row */
} sched_member_t;
int sched_member_parse(const char *m, size_t len, sched_member_t *out);

/* The state (SCHED_ROW_*) of row in the bits a claim returned for batch
 * first..: 2 bits a row from bit 2*first rounded down to a byte. Rows past
 * the end of bits are 0 (Redis strings read as zeros there). */
int sched_row_state(const char *bits, size_t len, unsigned long first, unsigned long row);

/* Make sure the list ks (*n entries, room for two more) holds the results
 * hashes (keys.h: K = row / SCHED_RES_ROWS) of rows f..l of one batch, the
 * first followed by the second when the batch spans two; adds them unless
 * already there. Returns the index in ks of row f's. Scripts are given a
 * batch's hashes as KEYS this way, each listed once per call. */
size_t sched_res_hashes_add(unsigned long *ks, size_t *n, unsigned long f, unsigned long l);

#endif
