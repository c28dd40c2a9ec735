#include "engine/reply.h"

#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"

struct smtp_reader {
    buf_t in;   /* unparsed bytes */
    size_t pos; /* start of the first line not yet consumed into a reply */
    buf_t text; /* the text of the reply being returned */
    const char *err;
    int broken;
};

smtp_reader_t *smtp_reader_new(void)
{
    smtp_reader_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    /* A reply's bytes plus one read's worth of the following pipelined replies. */
    buf_init(&r->in, SMTP_REPLY_MAX_TOTAL * 4);
    buf_init(&r->text, SMTP_REPLY_MAX_TOTAL);
    r->err = "no error";
    return r;
}

void smtp_reader_free(smtp_reader_t *r)
{
    if (!r) return;
    buf_free(&r->in);
    buf_free(&r->text);
    free(r);
}

void smtp_reader_reset(smtp_reader_t *r)
{
    buf_reset(&r->in);
    buf_reset(&r->text);
    r->pos = 0;
    r->broken = 0;
    r->err = "no error";
}

int smtp_reader_feed(smtp_reader_t *r, const void *data, size_t n)
{
    /* Compact before growing: consumed replies are dead bytes. */
    if (r->pos && (r->pos == r->in.len || r->in.len + n > r->in.cap)) {
        buf_consume(&r->in, r->pos);
        r->pos = 0;
    }
    return buf_append(&r->in, data, n);
}

size_t smtp_reader_pending(const smtp_reader_t *r)
{
    return r->in.len - r->pos;
}

const char *smtp_reader_errstr(const smtp_reader_t *r)
{
    return r->err;
}

static int fail(smtp_reader_t *r, const char *why)
{
    r->err = why;
    r->broken = 1;
    return VL_EPROTO;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

size_t smtp_parse_enhanced(const char *s, size_t len, char out[16])
{
    size_t i = 0;
    if (len < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.') return 0;
    i = 2;
    for (int part = 0; part < 2; part++) {
        size_t start = i;
        while (i < len && is_digit(s[i]) && i - start < 3)
            i++;
        if (i == start) return 0;
        if (part == 0) {
            if (i >= len || s[i] != '.') return 0;
            i++;
        }
    }
    if (i < len && s[i] != ' ' && s[i] != '\t') return 0;
    memcpy(out, s, i);
    out[i] = '\0';
    return i;
}

/* Find the end of the line starting at p: returns the offset of '\n' or -1.
 * Lines end in CRLF; a bare LF is tolerated because some servers send it. */
static long line_end(const char *p, size_t avail)
{
    const char *nl = memchr(p, '\n', avail);
    return nl ? nl - p : -1;
}

int smtp_reader_next(smtp_reader_t *r, smtp_reply_t *out)
{
    if (r->broken) return VL_EPROTO;

    /* First pass: check that a complete reply (through its last line) is
     * buffered, validating each line; nothing is consumed until it is. */
    size_t pos = r->pos;
    int code = 0, lines = 0;
    for (;;) {
        const char *p = r->in.data + pos;
        size_t avail = r->in.len - pos;
        long nl = avail ? line_end(p, avail) : -1;
        if (nl < 0) {
            if (avail > SMTP_REPLY_MAX_LINE) return fail(r, "reply line too long");
            if (pos - r->pos + avail > SMTP_REPLY_MAX_TOTAL) return fail(r, "reply too long");
            return 0;
        }
        size_t ll = (size_t)nl;
        if (ll > 0 && p[ll - 1] == '\r') ll--;
        if (ll > SMTP_REPLY_MAX_LINE) return fail(r, "reply line too long");
        if (ll < 3 || !is_digit(p[0]) || !is_digit(p[1]) || !is_digit(p[2]))
            return fail(r, "reply line does not start with a three-digit code");
        if (ll > 3 && p[3] != ' ' && p[3] != '-')
            return fail(r, "reply code not followed by a space or hyphen");
        int c = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
        if (c < 200 || c > 599) return fail(r, "reply code out of range");
        if (lines == 0)
            code = c;
        else if (c != code)
            return fail(r, "multiline reply changes its code");
        lines++;
        pos += (size_t)nl + 1;
        if (pos - r->pos > SMTP_REPLY_MAX_TOTAL) return fail(r, "reply too long");
        if (ll == 3 || p[3] == ' ') break;
    }

    /* Second pass: assemble the text of the lines [r->pos, pos). */
    buf_reset(&r->text);
    out->enhanced[0] = '\0';
    size_t at = r->pos;
    for (int i = 0; i < lines; i++) {
        const char *p = r->in.data + at;
        size_t nl = (size_t)line_end(p, pos - at);
        size_t ll = nl > 0 && p[nl - 1] == '\r' ? nl - 1 : nl;
        const char *t = ll > 4 ? p + 4 : p + ll;
        size_t tl = ll > 4 ? ll - 4 : 0;
        /* RFC 3463/2034: with ENHANCEDSTATUSCODES every line carries the code;
         * keep it from the first line and strip it from each line's text. */
        char enh[16];
        size_t el = smtp_parse_enhanced(t, tl, enh);
        if (el && enh[0] == p[0]) {
            if (i == 0) memcpy(out->enhanced, enh, sizeof enh);
            t += el;
            tl -= el;
            while (tl && (*t == ' ' || *t == '\t'))
                t++, tl--;
        }
        if ((i > 0 && buf_putc(&r->text, '\n')) || buf_append(&r->text, t, tl))
            return fail(r, "reply too long");
        at += nl + 1;
    }
    if (r->text.data == NULL && buf_append(&r->text, "", 0)) return fail(r, "out of memory");
    r->pos = pos;
    out->code = code;
    out->text = r->text.data;
    out->text_len = r->text.len;
    out->lines = lines;
    return 1;
}
