/* mustache.h: Mustache templates, compiled once and rendered many times.
 *
 * Conformant with the Mustache spec (comments, delimiters, interpolation,
 * inverted sections, partials, sections; lambdas are not supported). A
 * template is compiled once (tpl_compile()) into a flat array of nodes;
 * rendering walks that array into a buf_t and allocates nothing besides the
 * buffer's growth, so a campaign renders hundreds of thousands of messages a
 * second on one core.
 *
 * Values come from a context: a stack of frames searched from the top (the
 * frame pushed last) down. A frame is a jansson value (campaign `vars`, test
 * data) or a lookup callback that answers with a string view (a CSV row's
 * columns, built-ins such as `email` and `message_id`), so no JSON object is
 * built per row. A section pushes its value as a further frame while it
 * renders.
 */
#ifndef VL_TEMPLATES_MUSTACHE_H
#define VL_TEMPLATES_MUSTACHE_H

#include <stddef.h>

#include <jansson.h>

#include "common/buf.h"

typedef struct tpl_template tpl_template_t;
typedef struct tpl_partials tpl_partials_t;

/* A compile or render error. line and column are 1-based positions in the
 * source the error is in: the main template, or the partial named by
 * `partial`. */
typedef struct tpl_error {
    int line;
    int column;
    char partial[64]; /* "" for the main template, else the partial's name */
    const char *var;  /* render with TPL_RENDER_STRICT: the unknown name, borrowed
                         from the template (not NUL-terminated), else NULL */
    size_t var_len;
    char message[200]; /* e.g. "unclosed section `items`", "unknown variable `first_name`" */
} tpl_error_t;

/* ---- partials: a name -> source map, used at compile time ---- */

/* A new, empty map. NULL when out of memory. */
tpl_partials_t *tpl_partials_new(void);

/* Add (or replace) a partial. name (NUL-terminated) and src[0..len) are
 * copied. 0 or VL_ENOMEM. */
int tpl_partials_add(tpl_partials_t *p, const char *name, const char *src, size_t len);

/* Release the map. NULL is allowed. Templates compiled with it do not refer
 * to it: it may be freed right after tpl_compile(). */
void tpl_partials_free(tpl_partials_t *p);

/* ---- compiling ---- */

/* Compile src[0..len) (copied). partials is borrowed for the call and may be
 * NULL; a partial missing from it renders as nothing (spec behaviour).
 * Partials, recursive ones included, are compiled into the template. On
 * success returns 0 and *out (caller frees with tpl_free()). On failure
 * returns VL_EPARSE (err, if not NULL, says where and why: unclosed section,
 * mismatched close tag, bad delimiters, unclosed tag, empty tag) or
 * VL_ENOMEM / VL_ETOOBIG, and *out is NULL. */
int tpl_compile(tpl_template_t **out, const char *src, size_t len, const tpl_partials_t *partials,
                tpl_error_t *err);

/* Release a template. NULL is allowed. */
void tpl_free(tpl_template_t *t);

/* True when the template has no tags at all (only text and comments): its
 * output is the same for every row, so it can be encoded once. */
int tpl_is_static(const tpl_template_t *t);

/* The output of a static template (see tpl_is_static()), borrowed from the
 * template; *len set. NULL when the template is not static. */
const char *tpl_static_text(const tpl_template_t *t, size_t *len);

/* ---- context ---- */

/* What a lookup callback answers. */
typedef enum tpl_value_type {
    TPL_VAL_STRING = 1, /* str[0..len): a string view, borrowed until the render returns */
    TPL_VAL_JSON = 2,   /* json: a jansson value, borrowed until the render returns */
} tpl_value_type_t;

typedef struct tpl_value {
    tpl_value_type_t type;
    const char *str;
    size_t len;
    json_t *json;
} tpl_value_t;

/* A lookup callback: find `name` (name[0..len), one segment of a dotted
 * name, not NUL-terminated) and fill *out. Return 1 when found, 0 when not
 * (the search goes on in the frames below). ud is the pointer given with the
 * frame. Called during tpl_render() / tpl_check() only. */
typedef int (*tpl_lookup_fn)(void *ud, const char *name, size_t len, tpl_value_t *out);

#define TPL_CTX_MAX 8

/* A string view a slots frame answers with (see tpl_bind_slots()). */
typedef struct tpl_slot {
    const char *ptr; /* borrowed until the render returns */
    size_t len;
} tpl_slot_t;

typedef struct tpl_frame {
    json_t *json;         /* borrowed, or NULL for a callback frame */
    tpl_lookup_fn lookup; /* NULL for a JSON frame */
    void *ud;
    const tpl_slot_t *slots; /* a callback frame's slots, or NULL (tpl_ctx_push_slots) */
    size_t nslots;
} tpl_frame_t;

/* A context: up to TPL_CTX_MAX frames, on the caller's stack. Frames pushed
 * later are searched first; for a campaign push built-ins, then vars, then
 * the row's columns. */
typedef struct tpl_ctx {
    tpl_frame_t frames[TPL_CTX_MAX];
    int n;
} tpl_ctx_t;

/* Empty the context. */
void tpl_ctx_init(tpl_ctx_t *c);

/* Push a JSON frame (borrowed: must outlive the renders that use it). 0 or
 * VL_ETOOBIG when TPL_CTX_MAX frames are already there. */
int tpl_ctx_push_json(tpl_ctx_t *c, json_t *value);

/* Push a callback frame; ud is passed back to fn. 0 or VL_ETOOBIG. */
int tpl_ctx_push_lookup(tpl_ctx_t *c, tpl_lookup_fn fn, void *ud);

/* Push a callback frame that also answers bound names by slot: when it is
 * the top frame, a variable tag outside any section whose name
 * tpl_bind_slots() bound to slot k renders slots[k] ("" when k >= nslots)
 * without a search. Everything else (names in sections, unbound names) goes
 * to fn as with tpl_ctx_push_lookup(), which must answer a bound name with
 * the same value. slots is borrowed for the render. 0 or VL_ETOOBIG. */
int tpl_ctx_push_slots(tpl_ctx_t *c, tpl_lookup_fn fn, void *ud, const tpl_slot_t *slots,
                       size_t nslots);

/* Maps a name (name[0..len), not NUL-terminated) to a slot, or -1. */
typedef long (*tpl_slot_fn)(void *ud, const char *name, size_t len);

/* Bind the template's variable tags of one-segment names to slots, once,
 * so that rendering them with a slots frame on top costs no lookup (a
 * campaign binds its CSV columns: a row's value is then its field). Tags
 * fn answers -1 for stay unbound. Partials compiled into t are bound too. */
void tpl_bind_slots(tpl_template_t *t, tpl_slot_fn fn, void *ud);

/* ---- rendering ---- */

enum tpl_render_flags {
    TPL_RENDER_HTML = 1 << 0,   /* HTML-escape {{var}} (& < > " '); else values go in as
                                   they are (text, subject, headers) */
    TPL_RENDER_STRICT = 1 << 1, /* fail on a variable found in no frame, outside any
                                   section (inside a section it renders as nothing) */
};

/* Render t with ctx (both borrowed) and append the output to out. flags are
 * TPL_RENDER_* values. Returns 0; VL_ENOMEM; VL_ETOOBIG when the output would
 * pass out's limit or sections and partials nest deeper than 64 (err, if not
 * NULL, says which, and for nesting where); VL_EINVAL with TPL_RENDER_STRICT
 * and an unknown variable (err names it and where it is). On failure out may
 * hold part of the output. */
int tpl_render(const tpl_template_t *t, const tpl_ctx_t *ctx, unsigned flags, buf_t *out,
               tpl_error_t *err);

/* ---- introspection, for `volley check` ---- */

enum tpl_var_flags {
    TPL_VAR_SECTION = 1 << 0,    /* the name opens a section ({{#name}}) */
    TPL_VAR_INVERTED = 1 << 1,   /* the name opens an inverted section ({{^name}}) */
    TPL_VAR_IN_SECTION = 1 << 2, /* the tag is inside a section (missing is fine there) */
    TPL_VAR_PARTIAL = 1 << 3,    /* tpl_check: a partial tag naming no known partial */
};

/* One reference to a name in a template. */
typedef struct tpl_var_ref {
    const char *name; /* borrowed from the template, not NUL-terminated */
    size_t len;
    int line, column;    /* of the tag, 1-based, in its source */
    const char *partial; /* NULL in the main template, else the partial's name (borrowed) */
    unsigned flags;      /* TPL_VAR_* */
} tpl_var_ref_t;

/* Return nonzero to stop the walk. */
typedef int (*tpl_var_fn)(void *ud, const tpl_var_ref_t *ref);

/* Call fn for every variable and section tag of the template and of each
 * partial it includes (each partial once), in source order. The implicit
 * iterator `.` is left out. Returns the value of the last fn call (0 when
 * the walk finished). */
int tpl_foreach_var(const tpl_template_t *t, tpl_var_fn fn, void *ud);

/* Call fn for every name outside sections (a variable or a section name,
 * in the template or a partial included outside sections) that ctx cannot
 * resolve (for a dotted name: any segment), and for every partial tag
 * (anywhere) naming a partial the template was not compiled with
 * (TPL_VAR_PARTIAL in ref->flags). Returns the number of such names, or
 * VL_ENOMEM. This is the check-time form of TPL_RENDER_STRICT, listing all of
 * them. ctx is borrowed; fn may be NULL to only count. */
int tpl_check(const tpl_template_t *t, const tpl_ctx_t *ctx, tpl_var_fn fn, void *ud);

#endif
