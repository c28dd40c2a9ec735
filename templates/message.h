/* message.h: a campaign's message factory: one CSV row in, one message out.
 *
 * A factory is built once per campaign from the template file, the
 * campaign's vars, its id, the CSV's column names and its DKIM keys. Building
 * compiles every Mustache field, checks that every variable used outside a
 * section exists (a column, a var or a built-in), and encodes everything that
 * does not depend on the row once: attachments, inline images, bodies and
 * header fields without tags, multipart boundaries and part headers, and the
 * DKIM body hash when the whole body is static.
 *
 * Rendering a row fills a reusable output object (one per worker; the
 * factory itself is read-only after building, so any number of threads may
 * render with it, each with its own output object). A rendered message is
 * an envelope (sender, recipient, SMTPUTF8 flag) and an iovec array whose
 * entries point at bytes rendered for this row (headers, personalised
 * bodies) and at the factory's shared static bytes: the message is never
 * copied whole.
 *
 * Template context, searched in this order: the row's columns, the
 * campaign's vars, then the built-ins `campaign` (the id), `row` (the data
 * row number), `email` (the recipient as written), `message_id` (the
 * Message-ID without angle brackets) and `date` (the Date field). HTML
 * escaping applies only in `html`. If the CSV has a column `name`, it is the
 * To field's display name.
 *
 * The message is 7-bit with CRLF line ends (except the To address itself
 * when the recipient's local part is UTF-8: such a message needs SMTPUTF8),
 * so what DKIM signs is what is sent.
 */
#ifndef VL_TEMPLATES_MESSAGE_H
#define VL_TEMPLATES_MESSAGE_H

#include <stddef.h>
#include <sys/uio.h>
#include <time.h>

#include <jansson.h>

#include "templates/csv.h"
#include "templates/dkim.h"
#include "templates/tplfile.h"

typedef struct msg_factory msg_factory_t;
typedef struct msg_out msg_out_t;

/* What the factory is built from. Everything is borrowed for the call
 * except where said. */
typedef struct msg_config {
    const tplf_t *tpl;          /* the loaded template file; borrowed, and must outlive the
                                   factory (static parts point into nothing of it, but
                                   diagnostics name its path) */
    const char *campaign_id;    /* copied */
    json_t *vars;               /* campaign vars (an object) or NULL; the factory takes a
                                   reference */
    const char *const *columns; /* the CSV header's column names, copied */
    size_t ncolumns;
    dkim_key_t *const *keys; /* DKIM keys, borrowed: must outlive the factory and its
                                output objects; NULL/0 to send unsigned */
    size_t nkeys;
} msg_config_t;

/* A row error: the row cannot become a message. Text, not location: the
 * caller knows the file; row is the data row number, column the 1-based CSV
 * column the problem comes from (0 when it is not one column's fault). */
typedef struct msg_error {
    unsigned long row;
    unsigned long line; /* the row's physical line in the CSV, 0 when unknown */
    int column;
    char field[64];    /* the template field: "subject", "headers.X-Tag", "from", ... */
    char message[256]; /* e.g. "subject: the rendered value holds a line break; a header
                          value may not (header injection)" */
} msg_error_t;

/* Build a factory. Every problem (template compile errors, unknown
 * variables, an invalid static From) goes to diag with the template file's
 * path, line and column. Returns 0 and *out (free with msg_factory_free()),
 * VL_EPARSE when the template has errors, VL_ENOMEM. */
int msg_factory_new(msg_factory_t **out, const msg_config_t *cfg, tplf_diag_fn diag, void *ud);

/* Release a factory (after every output object made from it). NULL is allowed. */
void msg_factory_free(msg_factory_t *f);

/* Size of the bytes shared by every message (encoded attachments, images,
 * static bodies and part headers), for reports. */
size_t msg_factory_static_size(const msg_factory_t *f);

/* Flags for msg_render(). */
enum msg_render_flags {
    MSG_NO_DKIM = 1 << 0, /* skip signing (checks and dry runs): no DKIM-Signature field */
};

/* A new output object for f (borrowed: must outlive it); one per worker or
 * thread. Returns 0 and *out, or VL_ENOMEM. */
int msg_out_new(msg_out_t **out, const msg_factory_t *f);

/* Release an output object. NULL is allowed. */
void msg_out_free(msg_out_t *o);

/* Render CSV row `row` (borrowed for the call; a row with errors must not be
 * passed) into o, replacing what o held. now is the Date (and DKIM t=).
 * flags are MSG_* values. Returns 0 when o holds a message; VL_EINVAL for a
 * row error (msg_out_error() describes it; o holds no message); VL_ENOMEM,
 * VL_ETOOBIG (a message over 64 MB) or VL_EIO (signing failed) otherwise. */
int msg_render(const msg_factory_t *f, msg_out_t *o, const tpl_csv_row_t *row, time_t now,
               unsigned flags);

/* The last row error of o (valid after msg_render() returned VL_EINVAL). */
const msg_error_t *msg_out_error(const msg_out_t *o);

/* The rendered message, valid until the next msg_render() on o or its
 * free. Everything is borrowed from o (and from the factory for shared
 * bytes). */
const struct iovec *msg_out_iov(const msg_out_t *o, size_t *n); /* the message bytes */
size_t msg_out_size(const msg_out_t *o);                        /* their total */
int msg_out_wire_ready(const msg_out_t *o);     /* 1: CRLF line ends, a final CRLF, no line starting
                                                  with '.': SMTP can send it as it is */
const char *msg_out_sender(const msg_out_t *o); /* envelope from: the From address,
                                                   domain in ASCII; NUL-terminated */
const char *msg_out_recipient(const msg_out_t *o);  /* the row's address, domain in ASCII */
int msg_out_needs_smtputf8(const msg_out_t *o);     /* a UTF-8 local part in either address */
const char *msg_out_message_id(const msg_out_t *o); /* without <>; NUL-terminated */

#endif
