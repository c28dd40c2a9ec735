/* url.h: SMTP route URLs for the command line, and secrets from the
 * environment or a file.
 *
 *   smtp://[user[:password]@]host[:port]    port 25, STARTTLS when offered
 *   smtps://[user[:password]@]host[:port]   port 465, implicit TLS (RFC 8314)
 *
 * Hosts may be IPv6 literals in brackets. User and password are
 * percent-decoded. A password in a URL is accepted (it is the common
 * convention) but the caller warns and scrubs it from argv; the intended
 * channels are an environment variable or a file.
 */
#ifndef VL_CLI_URL_H
#define VL_CLI_URL_H

#include <stddef.h>
#include <stdint.h>

typedef struct cli_url {
    char *host; /* owned */
    uint16_t port;
    int implicit_tls;
    char *user;     /* owned, or NULL */
    char *password; /* owned, or NULL; wiped by cli_url_free */
    int password_in_url;
} cli_url_t;

/* Parse s into u. 0, or -1 with a message in err. */
int cli_url_parse(const char *s, cli_url_t *u, char *err, size_t errlen);
void cli_url_free(cli_url_t *u);

/* Overwrite the password part of a URL argument in place, so that ps and
 * /proc/PID/cmdline stop showing it (as curl does). */
void cli_url_scrub_arg(char *arg);

/* Read a secret: from `file` when given (first line, newline stripped), else
 * from the environment variable `env`. *out is malloc'd (caller frees, after
 * wiping). 0, or -1 with a message (naming the file or variable, never the
 * value) in err. */
int cli_read_secret(const char *file, const char *env, char **out, char *err, size_t errlen);

/* Wipe and free a secret. */
void cli_secret_free(char *s);

#endif
