"""`python -m trtq` runs the CLI."""

import sys

from trtq.cli import main

sys.exit(main())
