/* cli -- the subcommands of the tally command, one file each. */
#ifndef TALLY_CLI_H
#define TALLY_CLI_H

int cmd_import(int argc, char **argv);
int cmd_trim(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_runs(int argc, char **argv);
int cmd_validate(int argc, char **argv);
int cmd_tail(int argc, char **argv);
int cmd_exporter(int argc, char **argv);
int cmd_requests(int argc, char **argv);
int cmd_report(int argc, char **argv);

/* The whole command: argv[0] is the program name. */
int tally_cli_main(int argc, char **argv);

#endif
