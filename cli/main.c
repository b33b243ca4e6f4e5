/* main -- the tally executable; the command itself is tally_cli_main(). */
#include "cli.h"

int main(int argc, char **argv) { return tally_cli_main(argc, argv); }
