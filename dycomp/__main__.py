"""`python -m dycomp ...`: the same command line as the `dycomp` script."""

import sys

from dycomp.cli import main

sys.exit(main())
