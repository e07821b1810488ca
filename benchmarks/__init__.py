"""Benchmarks against the PyTorch peers; each script owns sections of BENCHMARKS.md."""

from __future__ import annotations

import re
from pathlib import Path

# Sections written by their own scripts, kept when benchmarks/run.py rewrites the rest.
OWNED_SECTIONS = ("Explain", "GPU", "Input pipeline (CPU)")


def _pattern(heading: str) -> re.Pattern:
    return re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace (or append) the ``## heading`` section of ``path`` with ``text``."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    text = text.rstrip() + "\n"
    pattern = _pattern(heading)
    if pattern.search(old):
        new = pattern.sub(lambda _: text + "\n", old).rstrip() + "\n"
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def owned_sections(path: Path) -> str:
    """The sections of ``OWNED_SECTIONS`` present in ``path``, in that order."""
    old = path.read_text() if path.exists() else ""
    found = [m.group(0).rstrip() + "\n" for h in OWNED_SECTIONS if (m := _pattern(h).search(old))]
    return "\n".join(found)
