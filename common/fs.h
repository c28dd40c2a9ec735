/* fs.h: file-system helpers shared by the modules that keep state on disk
 * (the embedded Redis's state directory, send's report beside it).
 */
#ifndef VL_FS_H
#define VL_FS_H

#include <sys/types.h>

/* mkdir -p: create dir (borrowed) and every missing parent, each new one with
 * mode. A directory that exists already is fine. 0, or -errno (-ENAMETOOLONG
 * past PATH_MAX) naming the first one that could not be made. */
int vl_mkdirs(const char *dir, mode_t mode);

#endif
