/* render_bench.c: how fast templates/ turns rows into messages, on one core.
 *
 *   render-bench [-n MESSAGES] [--dkim-rsa N] [--dkim-ed N]
 *
 * First renders MESSAGES (default 100,000) personalised messages of about
 * 2 KB (text and HTML alternatives, six variables, a Chinese name in some
 * rows, no signature) and prints messages/s. Then, unless the counts are 0,
 * renders and DKIM-signs messages with a fresh RSA-2048 key and with an
 * Ed25519 key, each message with its own body hash (personalised bodies),
 * and prints signed messages/s, to set beside `openssl speed rsa2048
 * ed25519` (bench/render.sh does that and prints the ratio).
 *
 * Output lines are "name: value" so scripts can parse them.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "common/err.h"
#include "templates/dkim.h"
#include "templates/message.h"
#include "templates/tplfile.h"

static const char template_json[] =
    "{\n"
    " \"from\": \"Volley News <news@example.com>\",\n"
    " \"subject\": \"{{first_name}}, your {{plan}} renewal for {{city}}\",\n"
    " \"headers\": {\"X-Campaign\": \"{{campaign}}\"},\n"
    " \"unsubscribe\": {\"url\": \"https://example.com/u?c={{campaign}}&r={{row}}\"},\n"
    " \"text\": \"Dear {{name}},\\n\\nThank you for being a {{plan}} member in {{city}} since "
    "{{since}}. Your membership renews soon, and we would like to tell you what the coming year "
    "brings.\\n\\nMembers in {{city}} get early access to every event we hold there, a quarterly "
    "letter, and a discount at partner venues. This year we add workshops on Saturday "
    "mornings, a reading room open late on Thursdays, and a members' table at the spring "
    "fair.\\n\\nYour member number is {{member_id}}. Keep it at hand when you book.\\n\\nTo "
    "renew, answer this message or visit https://example.com/renew?m={{member_id}} before the "
    "end of the month.\\n\\nKind regards,\\nThe Volley team\\n\",\n"
    " \"html\": \"<html><body>\\n<p>Dear {{name}},</p>\\n<p>Thank you for being a <b>{{plan}}</b> "
    "member in {{city}} since {{since}}. Your membership renews soon, and we would like to tell "
    "you what the coming year brings.</p>\\n<p>Members in {{city}} get early access to every event "
    "we hold there, a quarterly letter, and a discount at partner venues. This year we add "
    "workshops on Saturday mornings, a reading room open late on Thursdays, and a members' "
    "table at the spring fair.</p>\\n<p>Your member number is {{member_id}}.</p>\\n<p><a "
    "href=\\\"https://example.com/renew?m={{member_id}}\\\">Renew now</a></p>\\n<p>Kind "
    "regards,<br>The Volley team</p></body></html>\\n\"\n"
    "}\n";

static const char *const columns[] = {"email", "name",  "first_name", "city",
                                      "plan",  "since", "member_id"};
#define NCOL 7
#define NROWS 1000

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Rows with distinct values, cycled over: names, cities and plans vary so
 * encodings vary as they would in a real list. */
static char rowtext[NROWS][NCOL][64];
static tpl_csv_field_t rowfields[NROWS][NCOL];
static tpl_csv_row_t rows[NROWS];

static void make_rows(void)
{
    static const char *const first[] = {"Alice", "Bob",   "Carol",  "David", "Emma",
                                        "Frank", "Grace", "Hannah", "伟",    "芳"};
    static const char *const last[] = {"Smith", "Jones", "Brown", "Lee", "Kim", "王", "李"};
    static const char *const city[] = {"London", "Paris", "Berlin", "Shanghai", "Toronto"};
    static const char *const plan[] = {"Gold", "Silver", "Bronze"};
    for (int i = 0; i < NROWS; i++) {
        /* Most rows ASCII, one in ten with a Chinese name. */
        const char *f = first[i % 8];
        if (i % 10 == 9) f = first[8 + i % 2];
        const char *l = last[i % 7];
        snprintf(rowtext[i][0], 64, "member%d@example.com", i);
        snprintf(rowtext[i][1], 64, "%s %s", f, l);
        snprintf(rowtext[i][2], 64, "%s", f);
        snprintf(rowtext[i][3], 64, "%s", city[i % 5]);
        snprintf(rowtext[i][4], 64, "%s", plan[i % 3]);
        snprintf(rowtext[i][5], 64, "%d", 2010 + i % 15);
        snprintf(rowtext[i][6], 64, "M%06d", 100000 + i);
        for (int c = 0; c < NCOL; c++)
            rowfields[i][c] = (tpl_csv_field_t){rowtext[i][c], strlen(rowtext[i][c])};
        rows[i] = (tpl_csv_row_t){.row = (unsigned long)i + 1,
                                  .line = (unsigned long)i + 2,
                                  .nfields = NCOL,
                                  .fields = rowfields[i],
                                  .email = rowfields[i][0],
                                  .ascii_domain = "example.com",
                                  .ascii_domain_len = 11};
    }
}

static void diag(void *ud, enum tplf_kind kind, const char *file, int line, int col,
                 const char *msg)
{
    (void)ud;
    (void)kind;
    fprintf(stderr, "%s:%d:%d: %s\n", file ? file : "-", line, col, msg);
}

static dkim_key_t *make_key(const char *type, const char *selector)
{
    EVP_PKEY *pk = !strcmp(type, "RSA") ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)
                                        : EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!pk) return NULL;
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(bio, pk, NULL, NULL, 0, NULL, NULL);
    char *pem;
    long len = BIO_get_mem_data(bio, &pem);
    dkim_key_t *k = NULL;
    char err[200];
    if (dkim_key_from_pem(&k, "example.com", selector, pem, (size_t)len, err, sizeof err))
        fprintf(stderr, "render-bench: %s\n", err);
    BIO_free(bio);
    EVP_PKEY_free(pk);
    return k;
}

/* Render n messages with f; returns messages/s, sets *bytes to the average size. */
static double run(const msg_factory_t *f, long n, unsigned flags, double *avg)
{
    msg_out_t *o;
    if (msg_out_new(&o, f)) return 0;
    time_t t = time(NULL);
    unsigned long long total = 0;
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        int rc = msg_render(f, o, &rows[i % NROWS], t, flags);
        if (rc) {
            fprintf(stderr, "render-bench: render failed: %s\n",
                    rc == VL_EINVAL ? msg_out_error(o)->message : vl_err_str(rc));
            msg_out_free(o);
            return 0;
        }
        total += msg_out_size(o);
    }
    double secs = now_s() - t0;
    msg_out_free(o);
    *avg = (double)total / (double)n;
    return (double)n / secs;
}

/* Signing alone, as `openssl speed` measures it: headers and body hashes of
 * rendered messages are prepared first, then each dkim_sign() call hashes
 * the canonical header fields and signs. */
#define NSIGN 256
static double sign_only(const msg_factory_t *f, dkim_key_t *k, long n)
{
    static char *hdr[NSIGN];
    static size_t hlen[NSIGN];
    static uint8_t bh[NSIGN][DKIM_HASH_LEN];
    msg_out_t *o;
    dkim_signer_t *s;
    if (msg_out_new(&o, f) || dkim_signer_new(&s, &k, 1)) return 0;
    time_t t = time(NULL);
    for (int i = 0; i < NSIGN; i++) {
        if (msg_render(f, o, &rows[i], t, MSG_NO_DKIM)) return 0;
        size_t niov;
        const struct iovec *iov = msg_out_iov(o, &niov);
        hlen[i] = iov[0].iov_len - 2; /* without the empty line */
        hdr[i] = malloc(hlen[i]);
        memcpy(hdr[i], iov[0].iov_base, hlen[i]);
        dkim_body_hash(s, iov + 1, niov - 1, bh[i]);
    }
    buf_t out;
    buf_init(&out, 1 << 20);
    for (long i = 0; i < n / 20 + 1; i++) {
        buf_reset(&out);
        (void)dkim_sign(s, &out, hdr[i % NSIGN], hlen[i % NSIGN], bh[i % NSIGN], t);
    }
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        buf_reset(&out);
        if (dkim_sign(s, &out, hdr[i % NSIGN], hlen[i % NSIGN], bh[i % NSIGN], t)) return 0;
    }
    double secs = now_s() - t0;
    buf_free(&out);
    for (int i = 0; i < NSIGN; i++)
        free(hdr[i]);
    dkim_signer_free(s);
    msg_out_free(o);
    return (double)n / secs;
}

static msg_factory_t *factory(const tplf_t *tpl, dkim_key_t **keys, size_t nkeys)
{
    msg_config_t cfg = {.tpl = tpl,
                        .campaign_id = "bench",
                        .columns = columns,
                        .ncolumns = NCOL,
                        .keys = keys,
                        .nkeys = nkeys};
    msg_factory_t *f = NULL;
    if (msg_factory_new(&f, &cfg, diag, NULL)) return NULL;
    return f;
}

int main(int argc, char **argv)
{
    long n = 100000, nrsa = 3000, ned = 60000;
    static const struct option opts[] = {{"dkim-rsa", required_argument, NULL, 'r'},
                                         {"dkim-ed", required_argument, NULL, 'e'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
        if (c == 'n')
            n = atol(optarg);
        else if (c == 'r')
            nrsa = atol(optarg);
        else if (c == 'e')
            ned = atol(optarg);
        else {
            fprintf(stderr, "usage: render-bench [-n MESSAGES] [--dkim-rsa N] [--dkim-ed N]\n");
            return 64;
        }
    }
    char dir[] = "/tmp/render-bench.XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char path[64];
    snprintf(path, sizeof path, "%s/template.json", dir);
    FILE *fp = fopen(path, "w");
    if (!fp) return 1;
    fputs(template_json, fp);
    fclose(fp);
    tplf_t *tpl = NULL;
    int rc = tplf_load(&tpl, path, diag, NULL);
    unlink(path);
    rmdir(dir);
    if (rc) return 1;
    make_rows();

    msg_factory_t *f = factory(tpl, NULL, 0);
    if (!f) return 1;
    double avg = 0;
    run(f, n / 10 + 1, 0, &avg); /* warm caches and buffers */
    double rate = run(f, n, 0, &avg);
    printf("render: %.0f messages/s (%ld messages, %.0f bytes average, one core)\n", rate, n, avg);
    msg_factory_free(f);

    struct {
        const char *name, *type;
        long count;
    } algs[] = {{"rsa-2048", "RSA", nrsa}, {"ed25519", "ED25519", ned}};
    for (int i = 0; i < 2; i++) {
        if (algs[i].count <= 0) continue;
        dkim_key_t *k = make_key(algs[i].type, "bench");
        if (!k) return 1;
        f = factory(tpl, &k, 1);
        if (!f) return 1;
        double srate = sign_only(f, k, algs[i].count);
        printf("dkim %s sign: %.0f messages/s (%ld messages; canonical header hash and "
               "signature, one core)\n",
               algs[i].name, srate, algs[i].count);
        run(f, algs[i].count / 20 + 1, 0, &avg);
        double frate = run(f, algs[i].count, 0, &avg);
        printf("dkim %s render+sign: %.0f messages/s (render, body hash and signature)\n",
               algs[i].name, frate);
        msg_factory_free(f);
        dkim_key_free(k);
    }
    tplf_free(tpl);
    return 0;
}
