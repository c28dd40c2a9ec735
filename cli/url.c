#include "cli/url.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"

/* A percent-decoded copy of [s, s+len), or NULL on a bad escape or NUL. */
static char *pct_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            int a = i + 2 < len ? vl_hexval((unsigned char)s[i + 1]) : -1;
            int b = i + 2 < len ? vl_hexval((unsigned char)s[i + 2]) : -1;
            if (a < 0 || b < 0 || (a == 0 && b == 0)) {
                free(out);
                return NULL;
            }
            *o++ = (char)(a * 16 + b);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

static void wipe(char *s)
{
    if (!s) return;
    volatile char *v = s;
    while (*v)
        *v++ = '\0';
}

void cli_secret_free(char *s)
{
    wipe(s);
    free(s);
}

void cli_url_free(cli_url_t *u)
{
    free(u->host);
    free(u->user);
    cli_secret_free(u->password);
    memset(u, 0, sizeof *u);
}

int cli_url_parse(const char *s, cli_url_t *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    const char *p;
    if (!strncmp(s, "smtp://", 7)) {
        p = s + 7;
        u->port = 25;
    } else if (!strncmp(s, "smtps://", 8)) {
        p = s + 8;
        u->port = 465;
        u->implicit_tls = 1;
    } else {
        snprintf(err, errlen, "'%s' is not an smtp:// or smtps:// URL", s);
        return -1;
    }
    const char *end = p + strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@') at = q; /* the last '@': user names may contain an encoded one */
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *uend = colon ? colon : at;
        u->user = pct_decode(p, (size_t)(uend - p));
        if (colon) {
            u->password = pct_decode(colon + 1, (size_t)(at - colon - 1));
            u->password_in_url = 1;
        }
        if (!u->user || !*u->user || (colon && !u->password)) {
            snprintf(err, errlen, "bad user or password in the URL");
            cli_url_free(u);
            return -1;
        }
        p = at + 1;
    }
    const char *hend;
    if (*p == '[') {
        hend = memchr(p, ']', (size_t)(end - p));
        if (!hend) {
            snprintf(err, errlen, "unterminated IPv6 literal in the URL");
            cli_url_free(u);
            return -1;
        }
        u->host = strndup(p + 1, (size_t)(hend - p - 1));
        hend++;
    } else {
        hend = p + strcspn(p, ":/?#");
        if (hend > end) hend = end;
        u->host = strndup(p, (size_t)(hend - p));
    }
    if (!u->host || !*u->host) {
        snprintf(err, errlen, "no host in the URL");
        cli_url_free(u);
        return -1;
    }
    if (hend < end && *hend == ':') {
        char *e;
        errno = 0;
        long port = strtol(hend + 1, &e, 10);
        if (e == hend + 1 || e != end || port < 1 || port > 65535 || errno) {
            snprintf(err, errlen, "bad port in the URL");
            cli_url_free(u);
            return -1;
        }
        u->port = (uint16_t)port;
    } else if (hend != end) {
        snprintf(err, errlen, "unexpected characters after the host in the URL");
        cli_url_free(u);
        return -1;
    }
    if (*end && strcmp(end, "/")) {
        snprintf(err, errlen, "an SMTP URL has no path or query");
        cli_url_free(u);
        return -1;
    }
    return 0;
}

void cli_url_scrub_arg(char *arg)
{
    char *p = strstr(arg, "://");
    if (!p) return;
    p += 3;
    char *end = p + strcspn(p, "/?#");
    char *at = NULL;
    for (char *q = p; q < end; q++)
        if (*q == '@') at = q;
    if (!at) return;
    char *colon = memchr(p, ':', (size_t)(at - p));
    if (colon)
        for (char *q = colon + 1; q < at; q++)
            *q = '*';
}

int cli_read_secret(const char *file, const char *env, char **out, char *err, size_t errlen)
{
    *out = NULL;
    if (file) {
        FILE *f = fopen(file, "r");
        if (!f) {
            snprintf(err, errlen, "cannot read the password file %s: %s", file, strerror(errno));
            return -1;
        }
        char *line = NULL;
        size_t cap = 0;
        ssize_t n = getline(&line, &cap, f);
        fclose(f);
        if (n <= 0) {
            free(line);
            snprintf(err, errlen, "the password file %s is empty", file);
            return -1;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        *out = line;
        return 0;
    }
    const char *v = getenv(env);
    if (!v || !*v) {
        snprintf(err, errlen, "a user is given but no password: set %s or use --password-file",
                 env);
        return -1;
    }
    *out = strdup(v);
    if (!*out) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}
