"""Docstrings that cite docs/*.md point at files and sections that exist."""

from __future__ import annotations

import re
from pathlib import Path

import trtq

SRC = Path(trtq.__file__).resolve().parent
DOCS = SRC.parents[1] / "docs"
CITATION = re.compile(r'docs/(?P<file>[\w-]+\.md)(?:,\s+"(?P<section>[^"]+)")?')


def _citations() -> list[tuple[Path, str, str | None]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        text = " ".join(path.read_text(encoding="utf-8").split())  # a citation may wrap
        found += [(path, m["file"], m["section"]) for m in CITATION.finditer(text)]
    return found


def test_cited_docs_and_sections_exist():
    citations = _citations()
    assert any(file == "design.md" for _, file, _ in citations)  # the check sees the real citations
    headings = {}
    for _, file, _ in citations:
        doc = DOCS / file
        assert doc.is_file(), f"docs/{file} is cited but missing"
        headings[file] = {line.lstrip("#").strip() for line in doc.read_text(encoding="utf-8").splitlines()
                          if line.startswith("#")}
    missing = [f"{path.name}: docs/{file}, {section!r}" for path, file, section in citations
               if section and section not in headings[file]]
    assert missing == []


def test_no_docstring_cites_a_design_file_the_repository_lacks():
    stale = [str(p) for p in sorted(SRC.rglob("*.py")) if re.search(r"(?<!docs/)\bDESIGN\.md", p.read_text())]
    assert stale == []
