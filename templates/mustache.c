/* mustache.c: Mustache compiled to a flat node array, rendered into a buf_t.
 *
 * Compiling turns the source (and every partial it reaches) into one array
 * of nodes: text runs, variables, sections (which know where their close tag
 * is, so a false section is skipped in one step), and partial calls (which
 * name a "body": the nodes of one partial at one indentation). Every string
 * a node needs lives in one arena, each name and name segment NUL-terminated
 * so jansson can look it up without a copy. Rendering walks the array with a
 * fixed-size frame stack on the C stack: nothing is allocated per render
 * besides the output buffer's growth.
 */
#include "mustache.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#define NONE UINT32_MAX
/* Sections and partials may nest this deep when rendering. */
#define MAX_DEPTH 64
/* Distinct (partial, indentation) bodies one template may hold: a partial
 * that includes itself on an indented standalone line would otherwise get
 * a new, deeper-indented body forever. */
#define MAX_BODIES 256
#define ARENA_MAX ((size_t)256 << 20)

enum node_type {
    N_TEXT,
    N_VAR,
    N_SECTION,
    N_INVERTED,
    N_CLOSE,
    N_PARTIAL,
    N_EOF,
};

typedef struct node {
    uint8_t type;
    uint8_t raw;       /* N_VAR: no HTML escaping ({{{x}}}, {{&x}}) */
    uint16_t nseg;     /* name segments; 0 is the implicit iterator "." */
    uint32_t off, len; /* N_TEXT: bytes in the arena; tags: the name */
    uint32_t seg;      /* first of nseg entries in t->segs */
    uint32_t link;     /* N_SECTION/N_INVERTED: index of the N_CLOSE; N_PARTIAL: body or NONE */
    uint32_t line, col;
    uint32_t slot1; /* N_VAR: 1 + the slot tpl_bind_slots() found, 0 when unbound */
} node_t;

typedef struct seg {
    uint32_t off, len; /* NUL-terminated in the arena */
} seg_t;

typedef struct body {
    uint32_t name;   /* arena offset of the partial's name; NONE for the main template */
    uint32_t indent; /* arena offset and length of the indentation */
    uint32_t indent_len;
    uint32_t start; /* first node; NONE until compiled */
} body_t;

struct tpl_template {
    buf_t arena;
    node_t *nodes;
    size_t nnodes, ncap;
    seg_t *segs;
    size_t nsegs, scap;
    body_t *bodies;
    size_t nbodies, bcap;
    int is_static;
    uint32_t static_off, static_len;
};

typedef struct partial {
    char *name;
    char *src;
    size_t len;
} partial_t;

struct tpl_partials {
    partial_t *v;
    size_t n, cap;
};

/* ---- partials map ---- */

tpl_partials_t *tpl_partials_new(void)
{
    return calloc(1, sizeof(tpl_partials_t));
}

static const partial_t *partial_find(const tpl_partials_t *p, const char *name, size_t len)
{
    if (!p) return NULL;
    for (size_t i = 0; i < p->n; i++)
        if (strlen(p->v[i].name) == len && memcmp(p->v[i].name, name, len) == 0) return &p->v[i];
    return NULL;
}

int tpl_partials_add(tpl_partials_t *p, const char *name, const char *src, size_t len)
{
    char *s = malloc(len + 1);
    if (!s) return VL_ENOMEM;
    memcpy(s, src, len);
    s[len] = '\0';
    partial_t *old = (partial_t *)partial_find(p, name, strlen(name));
    if (old) {
        free(old->src);
        old->src = s;
        old->len = len;
        return 0;
    }
    if (p->n == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 8;
        partial_t *nv = realloc(p->v, ncap * sizeof *nv);
        if (!nv) {
            free(s);
            return VL_ENOMEM;
        }
        p->v = nv;
        p->cap = ncap;
    }
    char *n = strdup(name);
    if (!n) {
        free(s);
        return VL_ENOMEM;
    }
    p->v[p->n++] = (partial_t){n, s, len};
    return 0;
}

void tpl_partials_free(tpl_partials_t *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) {
        free(p->v[i].name);
        free(p->v[i].src);
    }
    free(p->v);
    free(p);
}

/* ---- compiling ---- */

typedef struct compiler {
    tpl_template_t *t;
    const tpl_partials_t *partials;
    tpl_error_t *err;
    const char *src; /* the source being compiled (main or indented partial) */
    size_t len;
    const char *partial_name; /* NULL for the main template */
    /* Line counting, advanced lazily to each tag. */
    size_t lc_pos;
    uint32_t lc_line;
    size_t lc_line_start;
} compiler_t;

static int arena_add(tpl_template_t *t, const char *p, size_t n, uint32_t *off)
{
    if (t->arena.len + n + 1 > UINT32_MAX) return VL_ETOOBIG;
    *off = (uint32_t)t->arena.len;
    int rc = buf_append(&t->arena, p, n);
    if (!rc) rc = buf_putc(&t->arena, '\0');
    return rc;
}

static int push_node(tpl_template_t *t, const node_t *n)
{
    if (t->nnodes == t->ncap) {
        size_t ncap = t->ncap ? t->ncap * 2 : 32;
        if (ncap >= NONE) return VL_ETOOBIG;
        node_t *nv = realloc(t->nodes, ncap * sizeof *nv);
        if (!nv) return VL_ENOMEM;
        t->nodes = nv;
        t->ncap = ncap;
    }
    t->nodes[t->nnodes++] = *n;
    return 0;
}

/* The line and column (1-based, in characters) of src[pos]. Positions are
 * asked for in increasing order, so counting resumes where it stopped. */
static void position(compiler_t *c, size_t pos, uint32_t *line, uint32_t *col)
{
    if (pos < c->lc_pos) {
        c->lc_pos = 0;
        c->lc_line = 1;
        c->lc_line_start = 0;
    }
    for (; c->lc_pos < pos; c->lc_pos++) {
        if (c->src[c->lc_pos] == '\n') {
            c->lc_line++;
            c->lc_line_start = c->lc_pos + 1;
        }
    }
    uint32_t chars = 0;
    for (size_t i = c->lc_line_start; i < pos; i++)
        chars += ((unsigned char)c->src[i] & 0xc0) != 0x80;
    *line = c->lc_line;
    *col = chars + 1;
}

static int fail(compiler_t *c, size_t pos, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(compiler_t *c, size_t pos, const char *fmt, ...)
{
    if (c->err) {
        uint32_t line, col;
        position(c, pos, &line, &col);
        c->err->line = (int)line;
        c->err->column = (int)col;
        snprintf(c->err->partial, sizeof c->err->partial, "%s",
                 c->partial_name ? c->partial_name : "");
        c->err->var = NULL;
        c->err->var_len = 0;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err->message, sizeof c->err->message, fmt, ap);
        va_end(ap);
    }
    return VL_EPARSE;
}

static int is_blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

static const char *find(const char *hay, size_t hlen, const char *needle, size_t nlen)
{
    if (nlen == 0 || nlen > hlen) return NULL;
    return memmem(hay, hlen, needle, nlen);
}

static int add_text(compiler_t *c, size_t from, size_t to)
{
    if (to <= from) return 0;
    node_t n = {.type = N_TEXT, .link = NONE};
    int rc = arena_add(c->t, c->src + from, to - from, &n.off);
    if (rc) return rc;
    n.len = (uint32_t)(to - from);
    return push_node(c->t, &n);
}

/* Fill the name part of a node from a tag's trimmed content, splitting a
 * dotted name into segments. */
static int set_name(compiler_t *c, node_t *n, const char *name, size_t len, size_t pos)
{
    tpl_template_t *t = c->t;
    if (len == 0) return fail(c, pos, "empty tag: a name is missing");
    int rc = arena_add(t, name, len, &n->off);
    if (rc) return rc;
    n->len = (uint32_t)len;
    n->seg = (uint32_t)t->nsegs;
    n->nseg = 0;
    if (len == 1 && name[0] == '.') return 0; /* the implicit iterator */
    size_t i = 0;
    for (;;) {
        size_t s = i;
        while (i < len && name[i] != '.')
            i++;
        if (i == s)
            return fail(c, pos, "bad name `%.*s`: empty part in a dotted name", (int)len, name);
        for (size_t k = s; k < i; k++)
            if (is_blank(name[k]) || name[k] == '\n' || name[k] == '\r')
                return fail(c, pos, "bad name `%.*s`: names have no spaces", (int)len, name);
        if (t->nsegs == t->scap) {
            size_t ncap = t->scap ? t->scap * 2 : 32;
            seg_t *nv = realloc(t->segs, ncap * sizeof *nv);
            if (!nv) return VL_ENOMEM;
            t->segs = nv;
            t->scap = ncap;
        }
        seg_t *sg = &t->segs[t->nsegs++];
        rc = arena_add(t, name + s, i - s, &sg->off);
        if (rc) return rc;
        sg->len = (uint32_t)(i - s);
        if (++n->nseg == UINT16_MAX) return fail(c, pos, "name too long");
        if (i >= len) return 0;
        i++;
        if (i >= len)
            return fail(c, pos, "bad name `%.*s`: empty part in a dotted name", (int)len, name);
    }
}

/* The body for partial `name` at indentation `indent`, made (uncompiled)
 * when new. */
static int body_for(compiler_t *c, const char *name, size_t nlen, const char *indent, size_t ilen,
                    uint32_t *out, size_t pos)
{
    tpl_template_t *t = c->t;
    const char *a = t->arena.data;
    for (size_t i = 1; i < t->nbodies; i++) {
        const body_t *b = &t->bodies[i];
        if (strlen(a + b->name) == nlen && memcmp(a + b->name, name, nlen) == 0 &&
            b->indent_len == ilen && memcmp(a + b->indent, indent, ilen) == 0) {
            *out = (uint32_t)i;
            return 0;
        }
    }
    if (t->nbodies >= MAX_BODIES || ilen > 4096)
        return fail(c, pos, "partial `%.*s` nests too deep (recursion on an indented line?)",
                    (int)nlen, name);
    if (t->nbodies == t->bcap) {
        size_t ncap = t->bcap ? t->bcap * 2 : 8;
        body_t *nv = realloc(t->bodies, ncap * sizeof *nv);
        if (!nv) return VL_ENOMEM;
        t->bodies = nv;
        t->bcap = ncap;
    }
    body_t b = {.start = NONE};
    int rc = arena_add(t, name, nlen, &b.name);
    if (!rc) rc = arena_add(t, indent, ilen, &b.indent);
    if (rc) return rc;
    b.indent_len = (uint32_t)ilen;
    *out = (uint32_t)t->nbodies;
    t->bodies[t->nbodies++] = b;
    return 0;
}

/* Parse "=<new open> <new close>=" content (already without the '='s). */
static int set_delims(compiler_t *c, const char *s, size_t n, char *otag, size_t *olen, char *ctag,
                      size_t *clen, size_t pos)
{
    size_t i = 0;
    while (i < n && is_blank(s[i]))
        i++;
    size_t a = i;
    while (i < n && !is_blank(s[i]))
        i++;
    size_t alen = i - a;
    while (i < n && is_blank(s[i]))
        i++;
    size_t b = i;
    while (i < n && !is_blank(s[i]))
        i++;
    size_t blen = i - b;
    while (i < n && is_blank(s[i]))
        i++;
    if (!alen || !blen || i != n || alen > 15 || blen > 15 || memchr(s + a, '=', alen) ||
        memchr(s + b, '=', blen))
        return fail(c, pos, "bad delimiters `%.*s`: want two words without `=`, like {{=<%% %%>=}}",
                    (int)n, s);
    memcpy(otag, s + a, alen);
    *olen = alen;
    memcpy(ctag, s + b, blen);
    *clen = blen;
    return 0;
}

typedef struct open_section {
    uint32_t node;
    size_t pos;
} open_section_t;

/* Compile c->src into nodes, appended to the template, ending with N_EOF. */
static int compile_source(compiler_t *c)
{
    tpl_template_t *t = c->t;
    const char *s = c->src;
    size_t len = c->len;
    char otag[16] = "{{", ctag[16] = "}}";
    size_t olen = 2, clen = 2;
    size_t pos = 0, text_start = 0;
    open_section_t stack[MAX_DEPTH];
    int depth = 0;
    int rc;
    c->lc_pos = 0;
    c->lc_line = 1;
    c->lc_line_start = 0;

    for (;;) {
        const char *o = find(s + pos, len - pos, otag, olen);
        if (!o) break;
        size_t tag_start = (size_t)(o - s);
        size_t p = tag_start + olen;
        char type = p < len ? s[p] : 0;
        const char *close = ctag;
        size_t close_len = clen;
        char closebuf[17];
        if (type == '{' || type == '=') {
            /* {{{name}}} and {{=a b=}} close with their own character
             * before the closing delimiter. */
            closebuf[0] = type == '{' ? '}' : '=';
            memcpy(closebuf + 1, ctag, clen);
            close = closebuf;
            close_len = clen + 1;
        }
        if (type == '#' || type == '^' || type == '/' || type == '>' || type == '!' ||
            type == '{' || type == '&' || type == '=')
            p++;
        else
            type = 0;
        const char *e = find(s + p, len - p, close, close_len);
        if (!e) {
            if (type == '{' || type == '=')
                return fail(c, tag_start, "unclosed tag: no `%.*s` after `%.*s%c`", (int)close_len,
                            close, (int)olen, otag, type);
            return fail(c, tag_start, "unclosed tag: no `%.*s` after `%.*s`", (int)close_len, close,
                        (int)olen, otag);
        }
        size_t cstart = p, cend = (size_t)(e - s);
        size_t tag_end = cend + close_len;
        /* Trim the content. */
        while (cstart < cend && (is_blank(s[cstart]) || s[cstart] == '\n' || s[cstart] == '\r'))
            cstart++;
        while (cend > cstart &&
               (is_blank(s[cend - 1]) || s[cend - 1] == '\n' || s[cend - 1] == '\r'))
            cend--;
        const char *content = s + cstart;
        size_t clen_ = cend - cstart;

        /* Standalone: a block tag alone on its line (blanks around it) takes
         * the whole line with it, line end included. */
        size_t line_start = tag_start, next = tag_end;
        int standalone = 0;
        if (type == '#' || type == '^' || type == '/' || type == '>' || type == '!' ||
            type == '=') {
            while (line_start > 0 && is_blank(s[line_start - 1]))
                line_start--;
            if (line_start == 0 || s[line_start - 1] == '\n') {
                size_t q = tag_end;
                while (q < len && is_blank(s[q]))
                    q++;
                if (q == len) {
                    standalone = 1, next = q;
                } else if (s[q] == '\n') {
                    standalone = 1, next = q + 1;
                } else if (s[q] == '\r' && q + 1 < len && s[q + 1] == '\n') {
                    standalone = 1, next = q + 2;
                }
            }
        }
        if (!standalone) {
            line_start = tag_start;
            next = tag_end;
        }
        if ((rc = add_text(c, text_start, line_start))) return rc;
        text_start = pos = next;

        node_t n = {.link = NONE};
        position(c, tag_start, &n.line, &n.col);
        switch (type) {
        case '!':
            continue;
        case '=': {
            if ((rc = set_delims(c, content, clen_, otag, &olen, ctag, &clen, tag_start)))
                return rc;
            continue;
        }
        case '#':
        case '^':
            if (depth == MAX_DEPTH)
                return fail(c, tag_start, "sections nest deeper than %d", MAX_DEPTH);
            n.type = type == '#' ? N_SECTION : N_INVERTED;
            if ((rc = set_name(c, &n, content, clen_, tag_start))) return rc;
            stack[depth].node = (uint32_t)t->nnodes;
            stack[depth].pos = tag_start;
            depth++;
            if ((rc = push_node(t, &n))) return rc;
            continue;
        case '/': {
            if (depth == 0)
                return fail(c, tag_start, "close tag `%.*s` without an open section", (int)clen_,
                            content);
            node_t *open = &t->nodes[stack[depth - 1].node];
            const char *oname = t->arena.data + open->off;
            if (open->len != clen_ || memcmp(oname, content, clen_) != 0) {
                return fail(c, tag_start, "close tag `%.*s` does not match open section `%.*s`",
                            (int)clen_, content, (int)open->len, oname);
            }
            depth--;
            n.type = N_CLOSE;
            open->link = (uint32_t)t->nnodes;
            if ((rc = push_node(t, &n))) return rc;
            continue;
        }
        case '>': {
            if (clen_ == 0) return fail(c, tag_start, "empty partial tag: a name is missing");
            n.type = N_PARTIAL;
            if ((rc = arena_add(t, content, clen_, &n.off))) return rc;
            n.len = (uint32_t)clen_;
            if (partial_find(c->partials, content, clen_)) {
                if ((rc = body_for(c, content, clen_, s + line_start,
                                   standalone ? tag_start - line_start : 0, &n.link, tag_start)))
                    return rc;
            }
            if ((rc = push_node(t, &n))) return rc;
            continue;
        }
        default:
            n.type = N_VAR;
            n.raw = type == '{' || type == '&';
            if ((rc = set_name(c, &n, content, clen_, tag_start))) return rc;
            if ((rc = push_node(t, &n))) return rc;
            continue;
        }
    }
    if (depth > 0) {
        const node_t *open = &t->nodes[stack[depth - 1].node];
        return fail(c, stack[depth - 1].pos, "unclosed section `%.*s`", (int)open->len,
                    t->arena.data + open->off);
    }
    if ((rc = add_text(c, text_start, len))) return rc;
    node_t eof = {.type = N_EOF, .link = NONE};
    return push_node(t, &eof);
}

/* The partial's source with indent put before every line (but not after a
 * final line end), as the spec asks for standalone partial tags. Caller
 * frees. */
static char *indent_source(const char *src, size_t len, const char *indent, size_t ilen,
                           size_t *out_len)
{
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += src[i] == '\n';
    char *d = malloc(len + lines * ilen + 1);
    if (!d) return NULL;
    size_t o = 0;
    int at_line_start = 1;
    for (size_t i = 0; i < len; i++) {
        if (at_line_start) {
            memcpy(d + o, indent, ilen);
            o += ilen;
            at_line_start = 0;
        }
        d[o++] = src[i];
        if (src[i] == '\n') at_line_start = 1;
    }
    d[o] = '\0';
    *out_len = o;
    return d;
}

void tpl_free(tpl_template_t *t)
{
    if (!t) return;
    buf_free(&t->arena);
    free(t->nodes);
    free(t->segs);
    free(t->bodies);
    free(t);
}

int tpl_compile(tpl_template_t **out, const char *src, size_t len, const tpl_partials_t *partials,
                tpl_error_t *err)
{
    *out = NULL;
    if (err) memset(err, 0, sizeof *err);
    tpl_template_t *t = calloc(1, sizeof *t);
    if (!t) return VL_ENOMEM;
    buf_init(&t->arena, ARENA_MAX);
    compiler_t c = {.t = t, .partials = partials, .err = err, .src = src, .len = len};
    int rc = VL_ENOMEM;
    t->bodies = malloc(8 * sizeof *t->bodies);
    if (!t->bodies) goto fail;
    t->bcap = 8;
    t->nbodies = 1;
    t->bodies[0] = (body_t){.name = NONE, .indent = NONE, .start = 0};
    if ((rc = compile_source(&c))) goto fail;
    /* Partials found along the way, and the partials they reach in turn. */
    for (size_t i = 1; i < t->nbodies; i++) {
        body_t b = t->bodies[i];
        const char *name = t->arena.data + b.name;
        const partial_t *p = partial_find(partials, name, strlen(name));
        size_t plen;
        char *psrc = indent_source(p->src, p->len, t->arena.data + b.indent, b.indent_len, &plen);
        if (!psrc) {
            rc = VL_ENOMEM;
            goto fail;
        }
        t->bodies[i].start = (uint32_t)t->nnodes;
        c.src = psrc;
        c.len = plen;
        c.partial_name = p->name;
        rc = compile_source(&c);
        free(psrc);
        if (rc) goto fail;
    }
    /* A template of text and comments only renders the same for everyone:
     * keep its output in one piece. */
    t->is_static = 1;
    size_t total = 0;
    for (size_t i = 0; t->nodes[i].type != N_EOF; i++) {
        if (t->nodes[i].type != N_TEXT) {
            t->is_static = 0;
            break;
        }
        total += t->nodes[i].len;
    }
    if (t->is_static) {
        if ((rc = buf_reserve(&t->arena, total + 1))) goto fail;
        t->static_off = (uint32_t)t->arena.len;
        for (size_t i = 0; t->nodes[i].type != N_EOF; i++) {
            /* Reserved above, so the arena does not move while copying. */
            if ((rc = buf_append(&t->arena, t->arena.data + t->nodes[i].off, t->nodes[i].len)))
                goto fail;
        }
        t->static_len = (uint32_t)total;
        if ((rc = buf_putc(&t->arena, '\0'))) goto fail;
    }
    *out = t;
    return 0;
fail:
    if (rc != VL_EPARSE && err && !err->message[0])
        snprintf(err->message, sizeof err->message, "%s", vl_err_str(rc));
    tpl_free(t);
    return rc;
}

int tpl_is_static(const tpl_template_t *t)
{
    return t->is_static;
}

const char *tpl_static_text(const tpl_template_t *t, size_t *len)
{
    if (!t->is_static) return NULL;
    *len = t->static_len;
    return t->arena.data + t->static_off;
}

/* ---- context ---- */

void tpl_ctx_init(tpl_ctx_t *c)
{
    c->n = 0;
}

int tpl_ctx_push_json(tpl_ctx_t *c, json_t *value)
{
    if (c->n >= TPL_CTX_MAX) return VL_ETOOBIG;
    c->frames[c->n++] = (tpl_frame_t){.json = value};
    return 0;
}

int tpl_ctx_push_lookup(tpl_ctx_t *c, tpl_lookup_fn fn, void *ud)
{
    if (c->n >= TPL_CTX_MAX) return VL_ETOOBIG;
    c->frames[c->n++] = (tpl_frame_t){.lookup = fn, .ud = ud};
    return 0;
}

int tpl_ctx_push_slots(tpl_ctx_t *c, tpl_lookup_fn fn, void *ud, const tpl_slot_t *slots,
                       size_t nslots)
{
    if (c->n >= TPL_CTX_MAX) return VL_ETOOBIG;
    c->frames[c->n++] = (tpl_frame_t){.lookup = fn, .ud = ud, .slots = slots, .nslots = nslots};
    return 0;
}

void tpl_bind_slots(tpl_template_t *t, tpl_slot_fn fn, void *ud)
{
    for (size_t i = 0; i < t->nnodes; i++) {
        node_t *n = &t->nodes[i];
        if (n->type != N_VAR) continue;
        long slot =
            n->nseg == 1 ? fn(ud, t->arena.data + t->segs[n->seg].off, t->segs[n->seg].len) : -1;
        n->slot1 = slot >= 0 && slot < (long)UINT32_MAX ? (uint32_t)slot + 1 : 0;
    }
}

/* ---- rendering ---- */

enum { V_NONE, V_JSON, V_STR };

typedef struct val {
    int kind;
    json_t *json;
    const char *s;
    size_t len;
} val_t;

/* A frame of the render stack: the caller's frames, then section values. */
typedef struct rframe {
    int kind; /* V_JSON, V_STR, or V_NONE for a callback frame */
    json_t *json;
    const char *s;
    size_t len;
    tpl_lookup_fn fn;
    void *ud;
} rframe_t;

typedef struct render {
    const tpl_template_t *t;
    const char *arena;
    unsigned flags;
    buf_t *out;
    tpl_error_t *err;
    int sp;
    int section_depth; /* sections we are inside: strictness stops there */
    int call_depth;
    uint32_t body;           /* the body being rendered, for error messages */
    const tpl_slot_t *slots; /* the top frame's slots (tpl_ctx_push_slots), or NULL */
    size_t nslots;
    rframe_t stack[TPL_CTX_MAX + 2 * MAX_DEPTH];
} render_t;

static void val_from_user(const tpl_value_t *v, val_t *out)
{
    if (v->type == TPL_VAL_JSON && v->json) {
        out->kind = V_JSON;
        out->json = v->json;
    } else if (v->type == TPL_VAL_STRING) {
        out->kind = V_STR;
        out->s = v->str ? v->str : "";
        out->len = v->str ? v->len : 0;
    } else {
        out->kind = V_NONE;
    }
}

/* Resolve a node's name against the stack: the first segment top-down, the
 * rest inside what it found (spec: a broken chain is a miss, not a search
 * lower down). */
static void lookup(const render_t *r, const rframe_t *stack, int sp, const node_t *n, val_t *v)
{
    v->kind = V_NONE;
    if (n->nseg == 0) {
        /* "." is the top of the stack, when a value is there. */
        if (sp > 0 && stack[sp - 1].kind != V_NONE) {
            v->kind = stack[sp - 1].kind;
            v->json = stack[sp - 1].json;
            v->s = stack[sp - 1].s;
            v->len = stack[sp - 1].len;
        }
        return;
    }
    const seg_t *seg = &r->t->segs[n->seg];
    const char *first = r->arena + seg[0].off;
    for (int i = sp - 1; i >= 0; i--) {
        const rframe_t *f = &stack[i];
        if (f->kind == V_JSON) {
            if (json_is_object(f->json)) {
                json_t *j = json_object_get(f->json, first);
                if (j) {
                    v->kind = V_JSON;
                    v->json = j;
                    break;
                }
            }
        } else if (f->kind == V_NONE && f->fn) {
            tpl_value_t uv = {0};
            if (f->fn(f->ud, first, seg[0].len, &uv) == 1) {
                val_from_user(&uv, v);
                if (v->kind != V_NONE) break;
            }
        }
    }
    for (uint16_t k = 1; k < n->nseg && v->kind != V_NONE; k++) {
        json_t *j = v->kind == V_JSON && json_is_object(v->json)
                        ? json_object_get(v->json, r->arena + seg[k].off)
                        : NULL;
        if (!j) v->kind = V_NONE;
        v->json = j;
    }
}

static int truthy(const val_t *v)
{
    switch (v->kind) {
    case V_STR:
        return v->len > 0;
    case V_JSON:
        switch (json_typeof(v->json)) {
        case JSON_NULL:
        case JSON_FALSE:
            return 0;
        case JSON_ARRAY:
            return json_array_size(v->json) > 0;
        case JSON_STRING:
            return json_string_length(v->json) > 0;
        case JSON_INTEGER:
            return json_integer_value(v->json) != 0;
        case JSON_REAL:
            return json_real_value(v->json) != 0.0;
        default:
            return 1;
        }
    default:
        return 0;
    }
}

/* buf_append without the call when the bytes fit: most appends on the
 * render path are short and the buffer, reused across renders, is already
 * big enough. */
static inline int out_append(buf_t *b, const char *p, size_t n)
{
    if (b->data && b->cap - b->len > n) {
        memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = '\0';
        return 0;
    }
    return buf_append(b, p, n);
}

static int put_escaped(buf_t *out, const char *s, size_t n)
{
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        const char *rep;
        size_t rlen;
        switch (s[i]) {
        case '&':
            rep = "&amp;", rlen = 5;
            break;
        case '<':
            rep = "&lt;", rlen = 4;
            break;
        case '>':
            rep = "&gt;", rlen = 4;
            break;
        case '"':
            rep = "&quot;", rlen = 6;
            break;
        case '\'':
            rep = "&#39;", rlen = 5;
            break;
        default:
            continue;
        }
        int rc = out_append(out, s + run, i - run);
        if (!rc) rc = out_append(out, rep, rlen);
        if (rc) return rc;
        run = i + 1;
    }
    return out_append(out, s + run, n - run);
}

/* The shortest "%g" form that reads back as the same double, so 1.21 is
 * "1.21", not "1.2099999999999999". */
static int format_real(double d, char *dst, size_t n)
{
    int len = 0;
    for (int prec = 15; prec <= 17; prec++) {
        len = snprintf(dst, n, "%.*g", prec, d);
        if (strtod(dst, NULL) == d) break;
    }
    return len;
}

static int put_value(render_t *r, const val_t *v, int raw)
{
    const char *s = NULL;
    size_t n = 0;
    char num[40];
    if (v->kind == V_STR) {
        s = v->s, n = v->len;
    } else if (v->kind == V_JSON) {
        switch (json_typeof(v->json)) {
        case JSON_STRING:
            s = json_string_value(v->json), n = json_string_length(v->json);
            break;
        case JSON_INTEGER:
            n = (size_t)snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT,
                                 json_integer_value(v->json));
            s = num;
            break;
        case JSON_REAL:
            n = (size_t)format_real(json_real_value(v->json), num, sizeof num);
            s = num;
            break;
        case JSON_TRUE:
            s = "true", n = 4;
            break;
        case JSON_FALSE:
            s = "false", n = 5;
            break;
        default: /* null, objects and lists print nothing */
            return 0;
        }
    } else {
        return 0;
    }
    if (!raw && (r->flags & TPL_RENDER_HTML)) return put_escaped(r->out, s, n);
    return out_append(r->out, s, n);
}

/* The caller's error (r->err, cleared) located at tag n of the body being rendered, or
 * NULL when the caller asked for none. */
static tpl_error_t *error_at(render_t *r, const node_t *n)
{
    tpl_error_t *e = r->err;
    if (!e) return NULL;
    memset(e, 0, sizeof *e);
    e->line = (int)n->line;
    e->column = (int)n->col;
    const body_t *b = &r->t->bodies[r->body];
    if (b->name != NONE) snprintf(e->partial, sizeof e->partial, "%s", r->arena + b->name);
    return e;
}

static int strict_fail(render_t *r, const node_t *n)
{
    tpl_error_t *e = error_at(r, n);
    if (e) {
        e->var = r->arena + n->off;
        e->var_len = n->len;
        snprintf(e->message, sizeof e->message, "unknown variable `%.*s`", (int)n->len,
                 r->arena + n->off);
    }
    return VL_EINVAL;
}

/* Sections and partials nested deeper than MAX_DEPTH: most often a partial that includes
 * itself. A row error, located at the tag that went one level too deep. */
static int too_deep(render_t *r, const node_t *n)
{
    tpl_error_t *e = error_at(r, n);
    if (e)
        snprintf(e->message, sizeof e->message,
                 "sections and partials nest deeper than %d (a partial that includes itself?)",
                 MAX_DEPTH);
    return VL_ETOOBIG;
}

static int push_val(render_t *r, const val_t *v)
{
    if (r->sp >= (int)(sizeof r->stack / sizeof r->stack[0])) return VL_ETOOBIG;
    rframe_t *f = &r->stack[r->sp++];
    f->kind = v->kind;
    f->json = v->json;
    f->s = v->s;
    f->len = v->len;
    f->fn = NULL;
    f->ud = NULL;
    return 0;
}

static int render_from(render_t *r, uint32_t i);

static int render_section(render_t *r, const node_t *n, uint32_t i)
{
    val_t v;
    lookup(r, r->stack, r->sp, n, &v);
    /* A missing section name is just false, even when strict: sections over
     * optional values are what sections are for. tpl_check() lists them. */
    int t = truthy(&v);
    if (n->type == N_INVERTED) {
        if (t) return 0;
        r->section_depth++;
        int rc = render_from(r, i + 1);
        r->section_depth--;
        return rc;
    }
    if (!t) return 0;
    if (r->section_depth + r->call_depth >= MAX_DEPTH) return too_deep(r, n);
    int rc = 0;
    r->section_depth++;
    if (v.kind == V_JSON && json_is_array(v.json)) {
        size_t k;
        json_t *item;
        json_array_foreach(v.json, k, item)
        {
            val_t iv = {.kind = V_JSON, .json = item};
            if ((rc = push_val(r, &iv))) break;
            rc = render_from(r, i + 1);
            r->sp--;
            if (rc) break;
        }
    } else if (!(rc = push_val(r, &v))) {
        rc = render_from(r, i + 1);
        r->sp--;
    }
    r->section_depth--;
    return rc;
}

/* Render nodes from i up to the N_CLOSE or N_EOF that ends the range. */
static int render_from(render_t *r, uint32_t i)
{
    const node_t *nodes = r->t->nodes;
    int rc;
    for (;;) {
        const node_t *n = &nodes[i];
        switch (n->type) {
        case N_TEXT:
            if ((rc = out_append(r->out, r->arena + n->off, n->len))) return rc;
            i++;
            break;
        case N_VAR: {
            val_t v;
            if (n->slot1 && r->slots && r->section_depth == 0) {
                /* Outside sections the top frame is the slots' frame, which
                 * answers every bound name: no search. */
                size_t k = n->slot1 - 1;
                v.kind = V_STR;
                v.s = k < r->nslots ? r->slots[k].ptr : "";
                v.len = k < r->nslots ? r->slots[k].len : 0;
            } else {
                lookup(r, r->stack, r->sp, n, &v);
            }
            if (v.kind == V_NONE) {
                if ((r->flags & TPL_RENDER_STRICT) && r->section_depth == 0)
                    return strict_fail(r, n);
            } else if ((rc = put_value(r, &v, n->raw))) {
                return rc;
            }
            i++;
            break;
        }
        case N_SECTION:
        case N_INVERTED:
            if ((rc = render_section(r, n, i))) return rc;
            i = n->link + 1;
            break;
        case N_PARTIAL:
            if (n->link != NONE) {
                if (r->call_depth + r->section_depth >= MAX_DEPTH) return too_deep(r, n);
                uint32_t saved = r->body;
                r->body = n->link;
                r->call_depth++;
                rc = render_from(r, r->t->bodies[n->link].start);
                r->call_depth--;
                r->body = saved;
                if (rc) return rc;
            }
            i++;
            break;
        default: /* N_CLOSE, N_EOF */
            return 0;
        }
    }
}

static void render_init(render_t *r, const tpl_template_t *t, const tpl_ctx_t *ctx)
{
    r->t = t;
    r->arena = t->arena.data;
    r->sp = 0;
    r->section_depth = 0;
    r->call_depth = 0;
    r->body = 0;
    r->slots = ctx->n > 0 && ctx->frames[ctx->n - 1].lookup ? ctx->frames[ctx->n - 1].slots : NULL;
    r->nslots = r->slots ? ctx->frames[ctx->n - 1].nslots : 0;
    for (int k = 0; k < ctx->n; k++) {
        rframe_t *f = &r->stack[r->sp++];
        memset(f, 0, sizeof *f);
        if (ctx->frames[k].lookup) {
            f->kind = V_NONE;
            f->fn = ctx->frames[k].lookup;
            f->ud = ctx->frames[k].ud;
        } else if (ctx->frames[k].json) {
            f->kind = V_JSON;
            f->json = ctx->frames[k].json;
        } else {
            r->sp--;
        }
    }
}

int tpl_render(const tpl_template_t *t, const tpl_ctx_t *ctx, unsigned flags, buf_t *out,
               tpl_error_t *err)
{
    if (t->is_static) return buf_append(out, t->arena.data + t->static_off, t->static_len);
    render_t r;
    r.flags = flags;
    r.out = out;
    r.err = err;
    if (err) memset(err, 0, sizeof *err);
    render_init(&r, t, ctx);
    int rc = render_from(&r, 0);
    if (rc == VL_ETOOBIG && err && !err->message[0])
        snprintf(err->message, sizeof err->message, "the rendered value is larger than %zu bytes",
                 out->max);
    return rc;
}

/* ---- introspection ---- */

/* What a walk hands its callback for tag n of body (all borrowed from t). */
static tpl_var_ref_t var_ref(const tpl_template_t *t, const body_t *body, const node_t *n,
                             unsigned flags)
{
    return (tpl_var_ref_t){
        .name = t->arena.data + n->off,
        .len = n->len,
        .line = (int)n->line,
        .column = (int)n->col,
        .partial = body->name == NONE ? NULL : t->arena.data + body->name,
        .flags = flags,
    };
}

/* Is body b a partial already compiled at an earlier index (the same partial at another
 * indentation)? Its source is the same: walks list it once. */
static int body_repeats(const tpl_template_t *t, size_t b)
{
    for (size_t k = 1; k < b; k++)
        if (strcmp(t->arena.data + t->bodies[k].name, t->arena.data + t->bodies[b].name) == 0)
            return 1;
    return 0;
}

int tpl_foreach_var(const tpl_template_t *t, tpl_var_fn fn, void *ud)
{
    for (size_t b = 0; b < t->nbodies; b++) {
        const body_t *body = &t->bodies[b];
        /* The same partial at several indentations is the same source:
         * list it once. */
        if (body_repeats(t, b)) continue;
        int depth = 0;
        for (uint32_t i = body->start; t->nodes[i].type != N_EOF; i++) {
            const node_t *n = &t->nodes[i];
            unsigned flags = depth ? TPL_VAR_IN_SECTION : 0;
            if (n->type == N_CLOSE) {
                depth--;
                continue;
            }
            if (n->type == N_SECTION || n->type == N_INVERTED) {
                flags |= n->type == N_SECTION ? TPL_VAR_SECTION : TPL_VAR_INVERTED;
                depth++;
            } else if (n->type != N_VAR) {
                continue;
            }
            if (n->nseg == 0) continue;
            tpl_var_ref_t ref = var_ref(t, body, n, flags);
            int rc = fn(ud, &ref);
            if (rc) return rc;
        }
    }
    return 0;
}

typedef struct checker {
    render_t r;
    tpl_var_fn fn;
    void *ud;
    int missing;
    unsigned char *visited;
} checker_t;

static void check_body(checker_t *c, uint32_t b)
{
    const tpl_template_t *t = c->r.t;
    if (c->visited[b]) return;
    c->visited[b] = 1;
    for (uint32_t i = t->bodies[b].start; t->nodes[i].type != N_EOF; i++) {
        const node_t *n = &t->nodes[i];
        if (n->type == N_PARTIAL) {
            if (n->link != NONE) check_body(c, n->link);
            continue;
        }
        if (n->type != N_VAR && n->type != N_SECTION && n->type != N_INVERTED) continue;
        val_t v;
        lookup(&c->r, c->r.stack, c->r.sp, n, &v);
        if (v.kind == V_NONE && n->nseg > 0) {
            c->missing++;
            if (c->fn) {
                tpl_var_ref_t ref = var_ref(t, &t->bodies[b], n,
                                            n->type == N_SECTION    ? TPL_VAR_SECTION
                                            : n->type == N_INVERTED ? TPL_VAR_INVERTED
                                                                    : 0);
                c->fn(c->ud, &ref);
            }
        }
        /* Whatever is inside a section may be missing: skip to its close. */
        if (n->type == N_SECTION || n->type == N_INVERTED) i = n->link;
    }
}

int tpl_check(const tpl_template_t *t, const tpl_ctx_t *ctx, tpl_var_fn fn, void *ud)
{
    checker_t c = {.fn = fn, .ud = ud};
    c.visited = calloc(t->nbodies, 1);
    if (!c.visited) return VL_ENOMEM;
    c.r.flags = 0;
    c.r.out = NULL;
    c.r.err = NULL;
    render_init(&c.r, t, ctx);
    check_body(&c, 0);
    free(c.visited);
    /* A partial tag whose name the partials lack renders as nothing (the spec's rule),
     * which in a campaign is a typo that loses text from every message: report it
     * wherever it is, inside sections too. Each source once, as tpl_foreach_var does. */
    for (size_t b = 0; b < t->nbodies; b++) {
        const body_t *body = &t->bodies[b];
        if (body_repeats(t, b)) continue;
        for (uint32_t i = body->start; t->nodes[i].type != N_EOF; i++) {
            const node_t *n = &t->nodes[i];
            if (n->type != N_PARTIAL || n->link != NONE) continue;
            c.missing++;
            if (!fn) continue;
            tpl_var_ref_t ref = var_ref(t, body, n, TPL_VAR_PARTIAL);
            fn(ud, &ref);
        }
    }
    return c.missing;
}
