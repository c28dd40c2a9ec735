/* dkim.c: DKIM signing with OpenSSL (see dkim.h). */
#include "templates/dkim.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "common/err.h"
#include "templates/mime.h"

#define ONES8 0x0101010101010101ULL

static inline uint64_t has_zero8(uint64_t v)
{
    return (v - ONES8) & ~v & 0x8080808080808080ULL;
}

struct dkim_key {
    EVP_PKEY *pkey;
    dkim_alg_t alg;
    char *domain;
    char *selector;
};

struct bcanon;
static struct bcanon *bc_new(void);

struct dkim_signer {
    size_t nkeys;
    dkim_key_t **keys;
    EVP_PKEY_CTX **rsa; /* per key: initialised for RSA PKCS#1 v1.5 over SHA-256, or NULL */
    EVP_MD_CTX **ed;    /* per key: initialised for Ed25519 one-shot signing, or NULL */
    EVP_MD_CTX *md;     /* SHA-256, reused for body and header hashes */
    EVP_MD *sha256;     /* fetched once: an implicit fetch per init takes a lock */
    struct bcanon *bc;  /* body canonicaliser state, reused */
    char **heads;       /* per key: "DKIM-Signature: v=1; a=...; t=" */
    buf_t canon;        /* scratch: canonical header fields */
};

/* The header fields we sign, in h= order. "from" comes twice: the second
 * names an instance that does not exist, so a From added in transit breaks
 * the signature (oversigning, RFC 6376 8.15). */
static const char *const signed_fields[] = {
    "from",       "from",         "to",           "subject",          "date",
    "message-id", "mime-version", "content-type", "list-unsubscribe", "list-unsubscribe-post",
};
#define NSIGNED (sizeof signed_fields / sizeof signed_fields[0])

const char *dkim_alg_name(dkim_alg_t alg)
{
    return alg == DKIM_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256";
}

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t errlen, const char *fmt,
                                                          ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* d= and s= values end up inside a header tag list: keep them to the
 * characters of domain names so nothing can break out of the tag. */
static bool valid_dns_text(const char *s)
{
    if (!*s || strlen(s) > 253) return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return false;
    }
    return true;
}

int dkim_key_from_pem(dkim_key_t **out, const char *domain, const char *selector, const char *pem,
                      size_t len, char *err, size_t errlen)
{
    *out = NULL;
    if (!valid_dns_text(domain)) {
        set_err(err, errlen, "DKIM domain '%s' is not a domain name", domain);
        return VL_ECONFIG;
    }
    if (!valid_dns_text(selector)) {
        set_err(err, errlen, "DKIM selector '%s' is not valid", selector);
        return VL_ECONFIG;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio) return VL_ENOMEM;
    EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (!pkey) {
        set_err(err, errlen, "%s", "no PEM private key could be read");
        return VL_ECONFIG;
    }
    dkim_alg_t alg;
    int id = EVP_PKEY_get_id(pkey);
    if (id == EVP_PKEY_RSA) {
        if (EVP_PKEY_get_bits(pkey) < 1024) {
            EVP_PKEY_free(pkey);
            set_err(err, errlen, "%s", "the RSA key is shorter than 1024 bits");
            return VL_ECONFIG;
        }
        alg = DKIM_RSA_SHA256;
    } else if (id == EVP_PKEY_ED25519) {
        alg = DKIM_ED25519_SHA256;
    } else {
        EVP_PKEY_free(pkey);
        set_err(err, errlen, "%s", "the key is neither RSA nor Ed25519");
        return VL_ECONFIG;
    }
    dkim_key_t *k = calloc(1, sizeof *k);
    if (!k || !(k->domain = strdup(domain)) || !(k->selector = strdup(selector))) {
        if (k) free(k->domain);
        free(k);
        EVP_PKEY_free(pkey);
        return VL_ENOMEM;
    }
    k->pkey = pkey;
    k->alg = alg;
    *out = k;
    return 0;
}

int dkim_key_load(dkim_key_t **out, const char *domain, const char *selector, const char *path,
                  char *err, size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (err && errlen)
            snprintf(err, errlen, "cannot open DKIM key %s: %s", path, strerror(errno));
        return errno == ENOENT ? VL_ENOENT : VL_EIO;
    }
    char data[16384];
    size_t n = fread(data, 1, sizeof data, f);
    int bad = ferror(f) || !feof(f);
    fclose(f);
    if (bad) {
        set_err(err, errlen, "DKIM key %s is unreadable or too large", path);
        return VL_ECONFIG;
    }
    char why[160] = "";
    int rc = dkim_key_from_pem(out, domain, selector, data, n, why, sizeof why);
    OPENSSL_cleanse(data, sizeof data);
    if (rc && err && errlen) snprintf(err, errlen, "DKIM key %s: %s", path, why);
    return rc;
}

void dkim_key_free(dkim_key_t *k)
{
    if (!k) return;
    EVP_PKEY_free(k->pkey);
    free(k->domain);
    free(k->selector);
    free(k);
}

dkim_alg_t dkim_key_alg(const dkim_key_t *k)
{
    return k->alg;
}

const char *dkim_key_domain(const dkim_key_t *k)
{
    return k->domain;
}

int dkim_signer_new(dkim_signer_t **out, dkim_key_t *const *keys, size_t nkeys)
{
    *out = NULL;
    if (nkeys == 0) return VL_EINVAL;
    dkim_signer_t *s = calloc(1, sizeof *s);
    if (!s) return VL_ENOMEM;
    s->nkeys = nkeys;
    s->keys = calloc(nkeys, sizeof *s->keys);
    s->rsa = calloc(nkeys, sizeof *s->rsa);
    s->ed = calloc(nkeys, sizeof *s->ed);
    s->md = EVP_MD_CTX_new();
    s->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    s->bc = bc_new();
    s->heads = calloc(nkeys, sizeof *s->heads);
    buf_init(&s->canon, 1 << 20);
    if (!s->keys || !s->rsa || !s->ed || !s->md || !s->sha256 || !s->bc || !s->heads) goto fail;
    for (size_t i = 0; i < nkeys; i++) {
        s->keys[i] = keys[i];
        /* The tags before t= are the same for every message. */
        size_t hl = strlen(keys[i]->domain) + strlen(keys[i]->selector) + 128;
        if (!(s->heads[i] = malloc(hl))) goto fail;
        snprintf(s->heads[i], hl,
                 "DKIM-Signature: v=1; a=%s; c=relaxed/relaxed; d=%s;\r\n s=%s; t=",
                 dkim_alg_name(keys[i]->alg), keys[i]->domain, keys[i]->selector);
        if (keys[i]->alg == DKIM_RSA_SHA256) {
            /* Initialised once: every message then costs one EVP_PKEY_sign. */
            EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(keys[i]->pkey, NULL);
            if (!c) goto fail;
            s->rsa[i] = c;
            if (EVP_PKEY_sign_init(c) <= 0 ||
                EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) <= 0 ||
                EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) <= 0)
                goto fail;
        } else {
            /* Ed25519 signs the SHA-256 of the header data (RFC 8463), with
             * the one-shot EVP_DigestSign the context allows repeatedly. */
            EVP_MD_CTX *c = EVP_MD_CTX_new();
            if (!c) goto fail;
            s->ed[i] = c;
            if (EVP_DigestSignInit(c, NULL, NULL, NULL, keys[i]->pkey) <= 0) goto fail;
        }
    }
    *out = s;
    return 0;
fail:
    dkim_signer_free(s);
    return VL_ENOMEM;
}

void dkim_signer_free(dkim_signer_t *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->nkeys; i++) {
        if (s->rsa) EVP_PKEY_CTX_free(s->rsa[i]);
        if (s->ed) EVP_MD_CTX_free(s->ed[i]);
    }
    for (size_t i = 0; s->heads && i < s->nkeys; i++)
        free(s->heads[i]);
    free(s->heads);
    free(s->rsa);
    free(s->ed);
    free(s->keys);
    free(s->bc);
    EVP_MD_free(s->sha256);
    EVP_MD_CTX_free(s->md);
    buf_free(&s->canon);
    free(s);
}

/* ---- relaxed body canonicalisation, as a stream ---- */

typedef int (*sink_fn)(void *ud, const void *p, size_t n);

struct bcanon {
    sink_fn sink;
    void *ud;
    int err;
    bool pending_cr; /* a CR ended the previous chunk */
    bool pending_ws; /* whitespace seen, to be written as one SP if the line goes on */
    bool any;        /* some non-empty line was written */
    size_t crlfs;    /* line ends held back: trailing empty lines are dropped */
    size_t sl;
    unsigned char stage[8192]; /* output gathered so the sink sees few large writes */
};

static struct bcanon *bc_new(void)
{
    return malloc(sizeof(struct bcanon));
}

static void bc_flush(struct bcanon *b)
{
    if (b->sl && !b->err) b->err = b->sink(b->ud, b->stage, b->sl);
    b->sl = 0;
}

static void bc_put(struct bcanon *b, const void *p, size_t n)
{
    if (b->sl + n > sizeof b->stage) {
        bc_flush(b);
        if (n > sizeof b->stage) {
            if (!b->err) b->err = b->sink(b->ud, p, n);
            return;
        }
    }
    memcpy(b->stage + b->sl, p, n);
    b->sl += n;
}

/* Write what was held back before content that continues the body. */
static void bc_release(struct bcanon *b)
{
    for (; b->crlfs > 0; b->crlfs--)
        bc_put(b, "\r\n", 2);
    if (b->pending_ws) {
        bc_put(b, " ", 1);
        b->pending_ws = false;
    }
    b->any = true;
}

/* Bytes that need no special handling: everything but SP, TAB and CR. */
static const unsigned char bc_special[256] = {[' '] = 1, ['\t'] = 1, ['\r'] = 1};

static void bc_feed(struct bcanon *b, const unsigned char *p, size_t n)
{
    size_t i = 0;
    if (b->pending_cr && n > 0) {
        b->pending_cr = false;
        if (p[0] == '\n') {
            b->pending_ws = false;
            b->crlfs++;
            i = 1;
        } else {
            bc_release(b);
            bc_put(b, "\r", 1);
        }
    }
    while (i < n) {
        unsigned char c = p[i];
        if (c == '\r') {
            if (i + 1 == n) {
                b->pending_cr = true;
                return;
            }
            if (p[i + 1] == '\n') {
                b->pending_ws = false; /* trailing whitespace is dropped */
                b->crlfs++;
                i += 2;
                continue;
            }
            bc_release(b);
            bc_put(b, "\r", 1);
            i++;
        } else if (c == ' ' || c == '\t') {
            b->pending_ws = true;
            i++;
        } else {
            size_t j = i + 1;
            /* Eight bytes at a time while none is SP, TAB or CR (base64 and
             * most text lines are long runs of such bytes). */
            while (j + 8 <= n) {
                uint64_t x;
                memcpy(&x, p + j, 8);
                if (has_zero8(x ^ (ONES8 * ' ')) | has_zero8(x ^ (ONES8 * '\t')) |
                    has_zero8(x ^ (ONES8 * '\r')))
                    break;
                j += 8;
            }
            while (j < n && !bc_special[p[j]])
                j++;
            bc_release(b);
            bc_put(b, p + i, j - i);
            i = j;
        }
    }
}

static void bc_finish(struct bcanon *b)
{
    if (b->pending_cr) {
        b->pending_cr = false;
        bc_release(b);
        bc_put(b, "\r", 1);
    }
    /* A non-empty body ends in exactly one CRLF; an empty one stays empty. */
    if (b->any) bc_put(b, "\r\n", 2);
    bc_flush(b);
}

static int sink_buf(void *ud, const void *p, size_t n)
{
    return buf_append(ud, p, n);
}

static int sink_md(void *ud, const void *p, size_t n)
{
    return EVP_DigestUpdate(ud, p, n) == 1 ? 0 : VL_EIO;
}

int dkim_canon_body(buf_t *out, const void *src, size_t n)
{
    struct bcanon *b = calloc(1, sizeof *b);
    if (!b) return VL_ENOMEM;
    b->sink = sink_buf;
    b->ud = out;
    bc_feed(b, src, n);
    bc_finish(b);
    int rc = b->err;
    free(b);
    return rc;
}

static int body_hash_md(EVP_MD_CTX *md, const EVP_MD *sha, struct bcanon *b,
                        const struct iovec *iov, size_t n, uint8_t *bh)
{
    memset(b, 0, offsetof(struct bcanon, stage));
    b->sink = sink_md;
    b->ud = md;
    int rc = 0;
    if (EVP_DigestInit_ex(md, sha, NULL) != 1) {
        rc = VL_EIO;
    } else {
        for (size_t i = 0; i < n; i++)
            bc_feed(b, iov[i].iov_base, iov[i].iov_len);
        bc_finish(b);
        unsigned int len = 0;
        rc = b->err;
        if (!rc && EVP_DigestFinal_ex(md, bh, &len) != 1) rc = VL_EIO;
    }
    return rc;
}

int dkim_body_hash(dkim_signer_t *s, const struct iovec *iov, size_t n, uint8_t bh[DKIM_HASH_LEN])
{
    return body_hash_md(s->md, s->sha256, s->bc, iov, n, bh);
}

int dkim_body_hash_once(const struct iovec *iov, size_t n, uint8_t bh[DKIM_HASH_LEN])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    struct bcanon *b = malloc(sizeof *b);
    int rc = VL_ENOMEM;
    if (md && b) rc = body_hash_md(md, EVP_sha256(), b, iov, n, bh);
    free(b);
    EVP_MD_CTX_free(md);
    return rc;
}

/* ---- headers ---- */

int dkim_canon_header(buf_t *out, const char *f, size_t len)
{
    int rc = buf_reserve(out, len + 2);
    if (rc) return rc;
    const char *colon = memchr(f, ':', len);
    if (!colon) return VL_EINVAL;
    char *d = out->data + out->len;
    /* The name, lowercased, without whitespace before the colon. */
    const char *ne = colon;
    while (ne > f && (ne[-1] == ' ' || ne[-1] == '\t'))
        ne--;
    for (const char *p = f; p < ne; p++)
        *d++ = (*p >= 'A' && *p <= 'Z') ? (char)(*p + 32) : *p;
    *d++ = ':';
    /* The value unfolded, whitespace runs as one SP, none at either end. */
    bool ws = false, started = false;
    const char *end = f + len;
    for (const char *p = colon + 1; p < end; p++) {
        /* Runs without whitespace or line ends are copied eight bytes at a time. */
        if (started && !ws) {
            while (p + 8 <= end) {
                uint64_t x;
                memcpy(&x, p, 8);
                if (has_zero8(x ^ (ONES8 * ' ')) | has_zero8(x ^ (ONES8 * '\t')) |
                    has_zero8(x ^ (ONES8 * '\r')) | has_zero8(x ^ (ONES8 * '\n')))
                    break;
                memcpy(d, p, 8);
                d += 8;
                p += 8;
            }
            if (p >= end) break;
        }
        char c = *p;
        if (c == '\r' || c == '\n') continue;
        if (c == ' ' || c == '\t') {
            ws = true;
            continue;
        }
        if (ws && started) *d++ = ' ';
        ws = false;
        started = true;
        *d++ = c;
    }
    *d++ = '\r';
    *d++ = '\n';
    out->len = (size_t)(d - out->data);
    out->data[out->len] = '\0';
    return 0;
}

struct field {
    const char *p;
    size_t len; /* without the final CRLF */
    size_t namelen;
};

#define MAX_FIELDS 128

/* Split a header block into fields; continuation lines belong to the field
 * above. Returns the count, or -1 when there are more than max. */
static int split_fields(const char *h, size_t hlen, struct field *fs, int max)
{
    int n = 0;
    const char *p = h, *end = h + hlen;
    while (p < end) {
        const char *start = p;
        const char *e = p;
        for (;;) {
            const char *nl = memchr(e, '\n', (size_t)(end - e));
            if (!nl) {
                e = end;
                break;
            }
            e = nl + 1;
            if (e >= end || (*e != ' ' && *e != '\t')) break;
        }
        if (n == max) return -1;
        size_t len = (size_t)(e - start);
        if (len && start[len - 1] == '\n') len--;
        if (len && start[len - 1] == '\r') len--;
        const char *colon = memchr(start, ':', len);
        size_t nl = colon ? (size_t)(colon - start) : len;
        while (nl > 0 && (start[nl - 1] == ' ' || start[nl - 1] == '\t'))
            nl--;
        fs[n++] = (struct field){start, len, nl};
        p = e;
    }
    return n;
}

static bool field_is(const struct field *f, const char *name)
{
    size_t l = strlen(name);
    return f->namelen == l && !strncasecmp(f->p, name, l);
}

/* Append the signature tags up to and including the empty "b=". */
static int sig_prefix(buf_t *out, const char *head, const char *hlist, const uint8_t *bh,
                      time_t now)
{
    char t[24], tmp[24];
    size_t tn = 0, n = 0;
    unsigned long long v = now > 0 ? (unsigned long long)now : 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        t[tn++] = tmp[--n];
    int rc = buf_puts(out, head);
    if (!rc) rc = buf_append(out, t, tn);
    if (!rc) rc = buf_append(out, ";\r\n h=", 6);
    if (rc) return rc;
    /* h= folded after a colon when the line gets long. */
    size_t col = 3;
    const char *p = hlist;
    while (*p) {
        const char *c = strchr(p, ':');
        size_t l = c ? (size_t)(c - p) + 1 : strlen(p);
        if (col + l > 76) {
            rc = buf_append(out, "\r\n ", 3);
            if (rc) return rc;
            col = 1;
        }
        rc = buf_append(out, p, l);
        if (rc) return rc;
        col += l;
        p += l;
    }
    rc = buf_puts(out, ";\r\n bh=");
    if (!rc) rc = mime_b64_encode_raw(out, bh, DKIM_HASH_LEN);
    if (!rc) rc = buf_puts(out, ";\r\n b=");
    return rc;
}

int dkim_sign(dkim_signer_t *s, buf_t *out, const char *hdr, size_t hlen,
              const uint8_t bh[DKIM_HASH_LEN], time_t now)
{
    struct field fs[MAX_FIELDS];
    int nf = split_fields(hdr, hlen, fs, MAX_FIELDS);
    if (nf < 0) return VL_ETOOBIG;
    bool have_from = false;
    for (int i = 0; i < nf; i++)
        if (field_is(&fs[i], "from")) have_from = true;
    if (!have_from) return VL_EINVAL;

    /* The canonical signed fields, in h= order; each name takes the next
     * instance from the bottom (RFC 6376 5.4.2), absent ones add nothing. */
    buf_t *cb = &s->canon;
    buf_reset(cb);
    char hlist[256];
    size_t hl = 0;
    bool used[MAX_FIELDS] = {false};
    int rc = 0;
    for (size_t k = 0; k < NSIGNED; k++) {
        const char *name = signed_fields[k];
        bool repeat = k > 0 && !strcmp(signed_fields[k - 1], name);
        int found = -1;
        for (int i = nf - 1; i >= 0; i--) {
            if (!used[i] && field_is(&fs[i], name)) {
                found = i;
                break;
            }
        }
        if (found < 0 && !repeat) continue;
        if (found >= 0) {
            used[found] = true;
            rc = dkim_canon_header(cb, fs[found].p, fs[found].len);
            if (rc) return rc;
        }
        size_t nl = strlen(name);
        if (hl) hlist[hl++] = ':';
        memcpy(hlist + hl, name, nl + 1);
        hl += nl;
    }
    size_t fields_len = cb->len;

    for (size_t k = 0; k < s->nkeys; k++) {
        const dkim_key_t *key = s->keys[k];
        size_t start = out->len;
        rc = sig_prefix(out, s->heads[k], hlist, bh, now);
        if (rc) return rc;
        /* Hash the signed fields, then this field with an empty b= and no
         * final CRLF, in relaxed form. */
        cb->len = fields_len;
        rc = dkim_canon_header(cb, out->data + start, out->len - start);
        if (rc) return rc;
        cb->len -= 2;
        uint8_t digest[EVP_MAX_MD_SIZE];
        unsigned int dl = 0;
        if (EVP_DigestInit_ex(s->md, s->sha256, NULL) != 1 ||
            EVP_DigestUpdate(s->md, cb->data, cb->len) != 1 ||
            EVP_DigestFinal_ex(s->md, digest, &dl) != 1)
            return VL_EIO;
        unsigned char sig[1024];
        size_t siglen = sizeof sig;
        if (key->alg == DKIM_RSA_SHA256) {
            if (EVP_PKEY_sign(s->rsa[k], sig, &siglen, digest, dl) != 1) return VL_EIO;
        } else {
            if (EVP_DigestSign(s->ed[k], sig, &siglen, digest, dl) != 1) return VL_EIO;
        }
        /* b= folded: whitespace inside the value is ignored by verifiers. */
        char b64[1400];
        buf_t tmp = {b64, 0, sizeof b64, sizeof b64 - 1};
        rc = mime_b64_encode_raw(&tmp, sig, siglen);
        if (rc) return rc;
        size_t col = 3, i = 0;
        while (i < tmp.len) {
            size_t take = tmp.len - i;
            if (take > 76 - col) take = 76 - col;
            rc = buf_append(out, b64 + i, take);
            i += take;
            if (!rc && i < tmp.len) {
                rc = buf_append(out, "\r\n ", 3);
                col = 1;
            }
            if (rc) return rc;
        }
        rc = buf_append(out, "\r\n", 2);
        if (rc) return rc;
    }
    return 0;
}
