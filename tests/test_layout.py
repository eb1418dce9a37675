"""The package stays readable: no module over 600 lines (a longer one is split by job)."""

from __future__ import annotations

from pathlib import Path

import trtq

PACKAGE = Path(trtq.__file__).resolve().parent
MAX_LINES = 600


def test_no_module_is_over_600_lines():
    sizes = {path.relative_to(PACKAGE.parent): len(path.read_text(encoding="utf-8").splitlines())
             for path in PACKAGE.rglob("*.py")}
    assert len(sizes) > 50  # the check sees the package
    assert {str(p): n for p, n in sizes.items() if n > MAX_LINES} == {}
