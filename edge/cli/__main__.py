"""`python -m edge.cli …` runs the `facegate` command."""

import sys

from edge.cli import main

sys.exit(main())
