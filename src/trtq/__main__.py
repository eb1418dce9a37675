"""`python -m trtq` runs the CLI."""

import sys

try:
    from trtq.cli import main
except KeyboardInterrupt:  # Ctrl-C while the CLI itself is imported: as main() says it, without a traceback
    print("trtq: interrupted; no output was written.", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
