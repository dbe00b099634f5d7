"""`python -m lib_handrefiner COMMAND …`: the command line (lib_handrefiner/cli/)."""
import sys

from lib_handrefiner.cli import main

if __name__ == "__main__":
    sys.exit(main())
