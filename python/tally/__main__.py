"""The tally command (``python -m tally ...``, or ``tally`` on the PATH of
the environment the package is installed in): the same command as the C
executable, linked into the package."""

import sys

from ._tally import cli


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    return cli(["tally"] + argv)


if __name__ == "__main__":
    sys.exit(main())
