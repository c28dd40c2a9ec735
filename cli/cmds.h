/* cmds.h: the subcommands of the volley binary, one file each (cli/cmd_*.c).
 *
 * Each takes the arguments after its own name (argv[0] is the subcommand name)
 * and returns a sysexits code (see exitcodes.h). Only cli/ prints to the
 * user; library modules return errors and results.
 */
#ifndef VL_CLI_CMDS_H
#define VL_CLI_CMDS_H

int cmd_bench(int argc, char **argv);
int cmd_enqueue(int argc, char **argv);
int cmd_worker(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_render(int argc, char **argv);
int cmd_send(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_pause(int argc, char **argv);
int cmd_resume(int argc, char **argv);
int cmd_cancel(int argc, char **argv);
int cmd_suppress(int argc, char **argv);

#endif
