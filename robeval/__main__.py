"""`python -m robeval` runs the command line."""

import sys

from robeval.cli import main

sys.exit(main())
