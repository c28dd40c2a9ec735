#include "err.h"

#include <stdarg.h>
#include <stdio.h>

const char *vl_err_str(int err)
{
    switch (err) {
    case VL_OK:
        return "success";
#define VL_ERR_STR(name, val, msg)                                                                 \
    case VL_E##name:                                                                               \
        return msg;
        VL_ERR_MAP(VL_ERR_STR)
#undef VL_ERR_STR
    }
    return "unknown error";
}

const char *vl_err_name(int err)
{
    switch (err) {
    case VL_OK:
        return "OK";
#define VL_ERR_NAME(name, val, msg)                                                                \
    case VL_E##name:                                                                               \
        return #name;
        VL_ERR_MAP(VL_ERR_NAME)
#undef VL_ERR_NAME
    }
    return "UNKNOWN";
}

void vl_set_err(char *err, size_t n, const char *fmt, ...)
{
    if (!err || n == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}
