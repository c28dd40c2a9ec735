/* exitcodes.h: volley's exit codes follow sysexits(3), as DESIGN.md fixes. */
#ifndef VL_CLI_EXITCODES_H
#define VL_CLI_EXITCODES_H

#include <sysexits.h>

/* EX_OK 0 done; EX_USAGE 64; EX_DATAERR 65 bad CSV or template data;
 * EX_NOINPUT 66 missing input file; EX_UNAVAILABLE 69 Redis or SMTP
 * unavailable; EX_TEMPFAIL 75 temporary failure; EX_CONFIG 78 bad config. */

#endif
