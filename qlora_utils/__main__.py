"""`python -m qlora_utils`: the command line (qlora_utils.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
