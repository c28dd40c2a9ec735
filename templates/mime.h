/* mime.h: the pieces of an Internet message (RFC 5322, RFC 2045-2049).
 *
 * Encoders for bodies (base64, quoted-printable, 7bit normalisation), for
 * header fields (RFC 2047 encoded words, folded at character boundaries, and
 * RFC 2231 parameters), addresses with display names, dates and MIME part
 * headers. Everything appends to a buf_t and writes 7-bit text with CRLF line
 * ends, encoded lines of at most 76 characters and no line over 998, so the
 * bytes DKIM signs are the bytes that are sent. Nothing here allocates except
 * through the output buffer, and nothing keeps state: every function may be
 * called from any thread on its own buffers.
 */
#ifndef VL_TEMPLATES_MIME_H
#define VL_TEMPLATES_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/buf.h"

/* Longest encoded line (RFC 2045 6.7, 6.8) and longest line at all (RFC 5322 2.1.1). */
#define MIME_LINE_MAX 76
#define MIME_HARD_LINE_MAX 998

/* Content-Transfer-Encoding of a body. */
enum mime_cte {
    MIME_CTE_7BIT = 0,   /* ASCII text, CRLF lines of at most 998 octets: sent as it is */
    MIME_CTE_QP = 1,     /* quoted-printable: mostly-ASCII text */
    MIME_CTE_BASE64 = 2, /* base64: binary data, and text that is mostly non-ASCII */
};

/* "7bit", "quoted-printable" or "base64". */
const char *mime_cte_name(enum mime_cte cte);

/* ---- bodies ---- */

/* The exact size of mime_b64_encode()'s output for n input bytes. */
size_t mime_b64_encoded_len(size_t n);

/* Append src[0..n) (borrowed) in base64, 76 characters a line, every line
 * (the last one too) ended by CRLF. 0 or a buf error. */
int mime_b64_encode(buf_t *out, const void *src, size_t n);

/* Append plain base64 without line breaks (for RFC 2047 words and DKIM tags). */
int mime_b64_encode_raw(buf_t *out, const void *src, size_t n);

/* Append text src[0..n) (borrowed) in quoted-printable. Line ends in the
 * input (LF or CRLF) become hard CRLF breaks; a lone CR is encoded; lines are
 * soft-broken so no encoded line exceeds 76 characters; whitespace before a
 * line end is encoded. The output ends with CRLF only when the input ends
 * with a line end. 0 or a buf error. */
int mime_qp_encode(buf_t *out, const void *src, size_t n);

/* Append text src[0..n) as 7bit: identical except that bare LF and bare CR
 * become CRLF. Only valid when mime_text_cte() chose MIME_CTE_7BIT. */
int mime_7bit_encode(buf_t *out, const void *src, size_t n);

/* True when src[0..n) can go out as 7bit without any change at all: ASCII
 * without NUL, every line end a CRLF, lines of at most 998 octets, and no
 * line starting with "--=_" (the prefix of volley's multipart boundaries). */
bool mime_is_clean_7bit(const void *src, size_t n);

/* The encoding that suits text src[0..n): 7BIT for ASCII text with lines of
 * at most 998 octets and no line beginning "--=_", else QUOTED-PRINTABLE when
 * it is shorter than base64, else BASE64. When clean is not NULL it is set
 * to mime_is_clean_7bit(src, n), found in the same pass, so a caller can send
 * such text without copying it. */
enum mime_cte mime_text_cte(const void *src, size_t n, bool *clean);

/* Append text src[0..n) encoded with cte. Line ends (LF, CR or CRLF) come
 * out as CRLF in every encoding: 7bit and QP write them as CRLF, base64
 * encodes the text in that canonical form (RFC 2045 6.8). */
int mime_body_encode(buf_t *out, enum mime_cte cte, const void *src, size_t n);

/* ---- header fields ---- */

/* True when s[0..n) holds a CR or an LF: such a value is never written into
 * a header (header injection); callers turn it into a row error. */
bool mime_has_crlf(const char *s, size_t n);

/* True when s[0..n) is a valid header field name (printable ASCII but ':'). */
bool mime_valid_field_name(const char *s, size_t n);

/* Append an unstructured header field "Name: value" CRLF (RFC 5322 3.2.5,
 * e.g. Subject). ASCII values are folded at spaces to keep lines near 78
 * characters; a value with non-ASCII or control characters, a literal "=?",
 * or a word too long to fold is written as RFC 2047 UTF-8 encoded words (B
 * or Q, whichever is shorter), one or more a line, never splitting a UTF-8
 * sequence. Returns 0, VL_EINVAL when the value holds CR or LF (nothing is
 * appended), or a buf error. */
int mime_header_text(buf_t *out, const char *name, const char *value, size_t n);

/* Append s[0..n) as RFC 2047 encoded words, starting at output column *col
 * and updating it; words are separated by CRLF SP so that lines stay within
 * 76 characters. The Q form uses only the characters RFC 2047 5(3) allows
 * in a phrase, so the result is valid in display names too. */
int mime_encoded_words(buf_t *out, size_t *col, const char *s, size_t n);

/* An address as written by a user, "Display Name <local@domain>" or a bare
 * "local@domain". Views into the parsed string. */
typedef struct mime_addr {
    const char *name; /* display name without quotes or surrounding spaces; may be empty */
    size_t name_len;
    const char *addr; /* the addr-spec */
    size_t addr_len;
} mime_addr_t;

/* Split s[0..n) (borrowed; the views point into it) into display name and
 * address. Accepts `Name <a@b>`, `"Quoted, Name" <a@b>`, `<a@b>` and `a@b`.
 * A quoted name keeps its backslash escapes in the view (mime_header_addr()
 * removes them). Returns 0, or VL_EPARSE when there is no address or the
 * brackets are unbalanced. The address itself is not validated here. */
int mime_addr_parse(const char *s, size_t n, mime_addr_t *a);

/* Append "Name: " plus the address a (borrowed) and CRLF: a bare addr-spec
 * when there is no display name, else the name as an atom sequence, a quoted
 * string, or RFC 2047 encoded words (non-ASCII), then <addr>. Returns 0,
 * VL_EINVAL when any part holds CR or LF, or a buf error. */
int mime_header_addr(buf_t *out, const char *name, const mime_addr_t *a);

/* Append a MIME parameter "; attr=value" at column *col (updated): a token
 * or quoted string for short ASCII values; RFC 2231 attr*=UTF-8''%XX.. for
 * values with non-ASCII characters, split into attr*0*, attr*1*... sections
 * on lines of at most 76 characters when long (never inside a UTF-8
 * sequence). Each parameter starts a new folded line. */
int mime_param(buf_t *out, size_t *col, const char *attr, const char *val, size_t n);

/* Append a parameter whose value is RFC 2047 encoded words in a quoted
 * string (`; name="=?UTF-8?B?...?="`), which is what Outlook and QQ Mail
 * read for attachment names; ASCII values go as mime_param(). */
int mime_param_2047(buf_t *out, size_t *col, const char *attr, const char *val, size_t n);

/* ---- parts ---- */

/* Append the headers and encoded body of a leaf part carrying a file:
 * Content-Type: type; name=..., Content-Transfer-Encoding: base64,
 * Content-Disposition: disposition; filename=..., and Content-ID: <cid> when
 * cid is not NULL, then an empty line and the base64 body (ending in CRLF).
 * disposition is "attachment" or "inline". All arguments borrowed. Returns
 * 0, VL_EINVAL when type, cid or filename hold CR/LF, or a buf error. */
int mime_file_part(buf_t *out, const char *type, const char *disposition, const char *filename,
                   const char *cid, const void *data, size_t n);

/* Append the headers of a text part: Content-Type: text/SUBTYPE;
 * charset=UTF-8 and its Content-Transfer-Encoding, then the empty line. */
int mime_text_part_header(buf_t *out, const char *subtype, enum mime_cte cte);

/* Write a multipart boundary for nesting level `level` into dst (at least
 * MIME_BOUNDARY_MAX bytes): "=_vl_" + 24 hex digits of seed material + "_"
 * + level. The "=_" can appear neither in base64 nor in quoted-printable
 * output, and mime_text_cte() keeps 7bit text from starting a line with it,
 * so the boundary can never occur inside a part. */
#define MIME_BOUNDARY_MAX 40
void mime_boundary(char *dst, const uint8_t seed[12], int level);

/* ---- dates ---- */

/* Longest mime_date() output, with the NUL. */
#define MIME_DATE_MAX 40

/* Write t as an RFC 5322 date-time in UTC ("Tue, 14 Jan 2025 08:00:00 +0000")
 * into dst (at least MIME_DATE_MAX bytes). Returns the length. */
size_t mime_date(char *dst, time_t t);

#endif
