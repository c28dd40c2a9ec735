/* reply.h: an I/O-free SMTP reply reader (RFC 5321 §4.2, RFC 3463).
 *
 * Like hiredis's reader: feed it bytes as they arrive, in any split, then take
 * complete replies one at a time. It never does I/O, so it can be tested byte
 * by byte and fuzzed.
 *
 *     smtp_reader_feed(r, data, n);
 *     while ((rc = smtp_reader_next(r, &reply)) == 1)
 *         handle(&reply);           // reply borrowed until the next call on r
 *     if (rc < 0) protocol_error(smtp_reader_errstr(r));
 */
#ifndef VL_ENGINE_REPLY_H
#define VL_ENGINE_REPLY_H

#include <stddef.h>

/* RFC 5321 §4.5.3.1.5 allows 512 octets for a reply line; servers exceed it in
 * the wild (long NetEase feedback URLs), so volley accepts lines up to this. */
#define SMTP_REPLY_MAX_LINE 4096
/* A whole multiline reply (EHLO with many extensions, long texts). */
#define SMTP_REPLY_MAX_TOTAL 65536

typedef struct smtp_reply {
    int code;          /* 200..599 */
    char enhanced[16]; /* "4.4.5" when the first line starts with one, else "" */
    const char *text;  /* lines' texts without code and enhanced code, joined by
                        * '\n'; NUL-terminated; borrowed until the next call */
    size_t text_len;
    int lines; /* number of lines in the reply */
} smtp_reply_t;

typedef struct smtp_reader smtp_reader_t;

/* A new reader; NULL when out of memory. */
smtp_reader_t *smtp_reader_new(void);
void smtp_reader_free(smtp_reader_t *r);

/* Forget buffered bytes (after STARTTLS: RFC 3207 forbids using plaintext that
 * arrived before the handshake). */
void smtp_reader_reset(smtp_reader_t *r);

/* Append n bytes (copied). 0, or VL_ETOOBIG when more than a reply's worth of
 * bytes is waiting unparsed. */
int smtp_reader_feed(smtp_reader_t *r, const void *data, size_t n);

/* Take the next complete reply: 1 and *out filled; 0 when more bytes are
 * needed; VL_EPROTO on a malformed or over-long line (the reader is then
 * unusable: smtp_reader_errstr() says why). */
int smtp_reader_next(smtp_reader_t *r, smtp_reply_t *out);

/* Bytes received but not yet part of a returned reply. */
size_t smtp_reader_pending(const smtp_reader_t *r);

/* Why the last VL_EPROTO happened. Never NULL. */
const char *smtp_reader_errstr(const smtp_reader_t *r);

/* Parse an RFC 3463 enhanced status code at the start of s (class.subject.detail,
 * class 2, 4 or 5, subject up to 3 digits, detail up to 3 digits) followed by
 * a space or the end. Returns its length and copies it into out (16 bytes), or
 * 0 when s does not start with one. */
size_t smtp_parse_enhanced(const char *s, size_t len, char out[16]);

#endif
