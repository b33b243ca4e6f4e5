/* cli -- the subcommands of the tally command, one file each. */
#ifndef TALLY_CLI_H
#define TALLY_CLI_H

#endif
