"""Shared test setup: makes the model builders in tests/support importable from every test folder.

Only tests/support goes on sys.path, never tests/ itself: a test folder such as tests/torch would
otherwise shadow the real package of that name when it is not installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "support"))
