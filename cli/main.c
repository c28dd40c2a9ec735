/* main.c: volley's entry point; dispatches to one function per subcommand. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cmds.h"
#include "cli/exitcodes.h"
#include "cli/redisconn.h"
#include "common/log.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

/* Subcommands in the order `volley help` lists them. */
static const struct command commands[] = {
    {"send", cmd_send, "send a campaign (embedded Redis, or --redis), or --dry-run"},
    {"check", cmd_check, "validate a campaign: CSV, template, keys; list every error"},
    {"render", cmd_render, "print the exact message for one CSV row"},
    {"enqueue", cmd_enqueue, "put a campaign's rows into a shared Redis for workers"},
    {"worker", cmd_worker, "send the running campaigns of a shared Redis"},
    {"status", cmd_status, "show a campaign's state, counts, queues and provider limits"},
    {"pause", cmd_pause, "pause a campaign (workers stop claiming its rows)"},
    {"resume", cmd_resume, "resume a paused campaign"},
    {"cancel", cmd_cancel, "cancel a campaign: waiting rows end as cancelled"},
    {"report", cmd_report, "a campaign's results: summary, CSV, JSON lines or HTML"},
    {"suppress", cmd_suppress, "the suppression list: import a file, list, check"},
    {"bench", cmd_bench, "benchmark an SMTP server with synthetic messages"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: volley COMMAND [ARGS...]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nvolley COMMAND --help describes a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EX_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return EX_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("volley %s\n", VOLLEY_VERSION);
        return EX_OK;
    }
    /* A peer that closes while we write must fail that write (EPIPE), not
     * kill the process: SMTP servers and Redis both do it. */
    signal(SIGPIPE, SIG_IGN);
    /* VOLLEY_LOG=info shows what the providers' controllers decide (a lowered rate, a
     * learned cap, a pause, and why); debug and trace show more. */
    const char *lv = getenv("VOLLEY_LOG");
    if (lv) {
        static const char *const names[] = {"error", "warn", "info", "debug", "trace"};
        for (int i = 0; i < 5; i++)
            if (!strcmp(lv, names[i])) vl_log_set_level((enum vl_log_level)i);
    }
    /* A Redis password kept in a file reaches every command's connections. */
    char err[512];
    int rc = cli_redis_password_file(err, sizeof err);
    if (rc) {
        fprintf(stderr, "volley: VOLLEY_REDIS_PASSWORD_FILE: %s\n", err);
        return rc;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "volley: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return EX_USAGE;
}
