/* dkim.h: DKIM signatures (RFC 6376) with rsa-sha256 and ed25519-sha256
 * (RFC 8463), relaxed/relaxed canonicalisation.
 *
 * Keys are loaded once per campaign (dkim_key_load()) and are immutable, so
 * several threads may share them. A signer (dkim_signer_new()) holds the
 * OpenSSL contexts one worker reuses for every message: no key is parsed and
 * no context allocated per message. One signer signs with every key it was
 * given, so a message gets an RSA and an Ed25519 signature at once when the
 * campaign has both keys.
 *
 * The signed header fields are From (listed twice, so that a From added on
 * the way invalidates the signature), To, Subject, Date, Message-ID,
 * MIME-Version, Content-Type, List-Unsubscribe and List-Unsubscribe-Post,
 * those of them present in the message.
 */
#ifndef VL_TEMPLATES_DKIM_H
#define VL_TEMPLATES_DKIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <time.h>

#include "common/buf.h"

#define DKIM_HASH_LEN 32

typedef enum dkim_alg {
    DKIM_RSA_SHA256 = 1,
    DKIM_ED25519_SHA256 = 2,
} dkim_alg_t;

typedef struct dkim_key dkim_key_t;
typedef struct dkim_signer dkim_signer_t;

/* Load a PEM private key (RSA of at least 1024 bits, or Ed25519) from path
 * for signing as d=domain, s=selector (all three copied). Returns 0 and
 * *out (caller frees with dkim_key_free()); VL_ENOENT when the file cannot
 * be opened, VL_ECONFIG when it holds no usable key or domain/selector are
 * not valid, VL_ENOMEM. err (may be NULL) receives a sentence saying why. */
int dkim_key_load(dkim_key_t **out, const char *domain, const char *selector, const char *path,
                  char *err, size_t errlen);

/* The same from PEM text pem[0..len) (borrowed). */
int dkim_key_from_pem(dkim_key_t **out, const char *domain, const char *selector, const char *pem,
                      size_t len, char *err, size_t errlen);

/* Release a key. NULL is allowed. */
void dkim_key_free(dkim_key_t *k);

dkim_alg_t dkim_key_alg(const dkim_key_t *k);
const char *dkim_key_domain(const dkim_key_t *k);

/* "rsa-sha256" or "ed25519-sha256". */
const char *dkim_alg_name(dkim_alg_t alg);

/* A signer for keys[0..nkeys) (the array is copied, the keys borrowed: they
 * must outlive the signer). 0 and *out, VL_EINVAL for no keys, VL_ENOMEM. */
int dkim_signer_new(dkim_signer_t **out, dkim_key_t *const *keys, size_t nkeys);

/* Release a signer. NULL is allowed. */
void dkim_signer_free(dkim_signer_t *s);

/* The body hash (SHA-256 of the relaxed body) of the body iov[0..n)
 * (borrowed), into bh. The body is hashed as a stream: nothing is copied
 * whole. 0 or VL_ENOMEM. */
int dkim_body_hash(dkim_signer_t *s, const struct iovec *iov, size_t n, uint8_t bh[DKIM_HASH_LEN]);

/* The same without a signer (allocates a digest context for the call). */
int dkim_body_hash_once(const struct iovec *iov, size_t n, uint8_t bh[DKIM_HASH_LEN]);

/* Sign a message whose header block is hdr[0..hlen) (borrowed: fields, each
 * ending in CRLF, without the empty line) and whose body hash is bh. Appends
 * one DKIM-Signature field per key (folded, CRLF-terminated) to out; put them
 * before the message's header fields. now is the t= timestamp. Returns 0,
 * VL_EINVAL when the header block has no From field, VL_EIO when OpenSSL
 * fails, or a buf error. */
int dkim_sign(dkim_signer_t *s, buf_t *out, const char *hdr, size_t hlen,
              const uint8_t bh[DKIM_HASH_LEN], time_t now);

/* ---- canonicalisation, exposed for tests ---- */

/* Append the relaxed form (RFC 6376 3.4.2) of one header field
 * field[0..len) (name, colon, value, possibly folded, without the final
 * CRLF) followed by CRLF. */
int dkim_canon_header(buf_t *out, const char *field, size_t len);

/* Append the relaxed form (RFC 6376 3.4.4) of the body src[0..n). */
int dkim_canon_body(buf_t *out, const void *src, size_t n);

#endif
