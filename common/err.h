/* err.h: one table of volley's error codes.
 *
 * Functions across volley return 0 on success or a negative VL_E* code from
 * this table, in the manner of libuv's UV_ERRNO_MAP. An SMTP reply is a
 * result, never one of these: these are for failures of volley itself, the
 * network, TLS, or the input files.
 */
#ifndef VL_ERR_H
#define VL_ERR_H

#include <stddef.h>

/* X(NAME, value, message). Values are stable: they appear in JSON output. */
#define VL_ERR_MAP(X)                                                                              \
    X(NOMEM, -1, "out of memory")                                                                  \
    X(TOOBIG, -2, "data exceeds its size limit")                                                   \
    X(INVAL, -3, "invalid argument")                                                               \
    X(PROTO, -4, "SMTP protocol error")                                                            \
    X(IO, -5, "input/output error")                                                                \
    X(TIMEOUT, -6, "timed out")                                                                    \
    X(CONNREFUSED, -7, "connection refused")                                                       \
    X(CONNRESET, -8, "connection closed by peer")                                                  \
    X(DNS, -9, "name lookup failed")                                                               \
    X(TLS, -10, "TLS error")                                                                       \
    X(TLSVERIFY, -11, "TLS certificate verification failed")                                       \
    X(AUTH, -12, "authentication failed")                                                          \
    X(NOTSUP, -13, "not supported by the server")                                                  \
    X(NOENT, -14, "no such file or directory")                                                     \
    X(PARSE, -15, "parse error")                                                                   \
    X(CANCELED, -16, "cancelled")                                                                  \
    X(REDIS, -17, "Redis error")                                                                   \
    X(CONFIG, -18, "bad configuration")                                                            \
    X(NETWORK, -19, "network error")                                                               \
    X(STATE, -20, "operation not valid in this state")

enum vl_err {
    VL_OK = 0,
#define VL_ERR_ENUM(name, val, msg) VL_E##name = (val),
    VL_ERR_MAP(VL_ERR_ENUM)
#undef VL_ERR_ENUM
};

/* The message for a VL_E* code; "unknown error" for anything else. Never NULL;
 * the string is static. */
const char *vl_err_str(int err);

/* The short name ("TIMEOUT") of a VL_E* code, for machine-readable output. */
const char *vl_err_name(int err);

/* Format a message into err (n bytes; nothing when err is NULL or n is 0):
 * the one way modules fill their caller's error buffer. */
void vl_set_err(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
