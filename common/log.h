/* log.h: levelled logging to stderr, as text or as JSON lines.
 *
 * Library modules log only through this, so the CLI decides where logs go and
 * how verbose they are. Never pass a secret to these functions: volley's rule is
 * that passwords and AUTH payloads appear in no log and no trace.
 */
#ifndef VL_LOG_H
#define VL_LOG_H

#include <stdio.h>

enum vl_log_level { VL_LOG_ERROR, VL_LOG_WARN, VL_LOG_INFO, VL_LOG_DEBUG, VL_LOG_TRACE };

/* Set the most verbose level written (default VL_LOG_WARN). */
void vl_log_set_level(enum vl_log_level lvl);
enum vl_log_level vl_log_get_level(void);

/* Write JSON lines ({"ts":..,"level":..,"msg":..}) instead of text. */
void vl_log_set_json(int on);

/* Send logs to f (borrowed; must outlive logging) instead of stderr. */
void vl_log_set_file(FILE *f);

void vl_log(enum vl_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define vl_log_enabled(lvl) ((lvl) <= vl_log_get_level())
#define VL_ERROR(...) vl_log(VL_LOG_ERROR, __VA_ARGS__)
#define VL_WARN(...) vl_log(VL_LOG_WARN, __VA_ARGS__)
#define VL_INFO(...) vl_log(VL_LOG_INFO, __VA_ARGS__)
/* DEBUG and TRACE check the level first so hot paths pay one compare. */
#define VL_DEBUG(...)                                                                              \
    do {                                                                                           \
        if (vl_log_enabled(VL_LOG_DEBUG)) vl_log(VL_LOG_DEBUG, __VA_ARGS__);                       \
    } while (0)
#define VL_TRACE(...)                                                                              \
    do {                                                                                           \
        if (vl_log_enabled(VL_LOG_TRACE)) vl_log(VL_LOG_TRACE, __VA_ARGS__);                       \
    } while (0)

#endif
