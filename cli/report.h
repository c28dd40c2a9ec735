/* report.h: a campaign's results, streamed from Redis as a report.
 *
 * The rows come from the scheduler's results reader (scheduler/campaign.h),
 * rows 1 to the campaign's total, and are written as they come: memory
 * stays flat however many rows the campaign has. A row with no result yet is reported with
 * status "pending".
 *
 * Formats:
 *   text  a summary: counts by state, by provider, by reply code with the most
 *         common texts (about the top 3 per code, kept in a small bounded
 *         table), first and last attempt, duration and throughput
 *   csv   exactly the columns row,email,provider,status,attempts,code,
 *         enhanced_code,response,first_attempt_at,last_attempt_at (RFC 4180:
 *         CRLF record ends, fields with , " CR or LF quoted, newlines kept
 *         inside the quotes); times are RFC 3339 UTC with milliseconds
 *         (2026-11-23T10:15:30.123Z), empty when there was no attempt
 *   json  one JSON object per line with the same keys; row, attempts and code
 *         are numbers, the times strings or null
 *   html  one self-contained page (no external assets): the summary tables
 *         and a table of every row that was not delivered, all text escaped
 */
#ifndef VL_CLI_REPORT_H
#define VL_CLI_REPORT_H

#include <stdio.h>

#include <hiredis/hiredis.h>

/* Write the report of campaign id (borrowed) read over c (borrowed, a
 * connected synchronous context) in format ("text", "csv", "json" or "html";
 * borrowed) to out (borrowed; not closed, flushed). Returns 0, or VL_EINVAL
 * (unknown format), VL_ENOENT (no such campaign), VL_ESTATE (a campaign of an
 * older layout), VL_EREDIS (an error reply), VL_ENETWORK (a lost connection), VL_EIO (writing to
 * out failed) or VL_ENOMEM, with a message in err (errlen bytes). */
int cli_report_write(redisContext *c, const char *id, const char *format, FILE *out, char *err,
                     size_t errlen);

/* The csv report to csv and the text summary to text (both borrowed, flushed,
 * not closed) in one pass over the rows, as `send` writes them at its end.
 * Returns as cli_report_write(). */
int cli_report_write_csv_and_text(redisContext *c, const char *id, FILE *csv, FILE *text, char *err,
                                  size_t errlen);

/* Whether format is one cli_report_write() knows. */
int cli_report_format_ok(const char *format);

#endif
