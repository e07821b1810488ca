"""Cases that the fixes' authors listed as "command | expected outcome", one per line, in
``$ATTACK_COORD_DIR/cases_h*.md`` (default /tmp/coord).

A line runs as written when it is a plain command: a header's ``X = value`` definitions
are substituted (e.g. ``T = --dataset ...``), ``O`` becomes a fresh output dir, and no
other placeholder (``RUN``, ``<a file>``, ``then``, ``...``) is left. The other lines
describe set-ups that the case tables in this package replay themselves; they are
counted as described-only, not run.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from .core import Case

ERROR_WORDS = ("exit 1", "exit 2", "error", "refus")
OWNERS = {"h1": "H1 (convert/port)", "h2": "H2 (train/checkpoints/cli)",
          "h3": "H3 (predict/gradcam/visualize/images)"}
PROGRAMS = ("resnet-jax", "convert_weights.py", "train.py")
PLACEHOLDER = re.compile(r"<|\.\.\.|\bthen\b|\bsame\b|^[A-Z]{1,4}$|/")


def definitions(text: str) -> dict[str, str]:
    """``X = value`` definitions in the file's comment lines."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            for name, value in re.findall(r"\b([A-Z])\s*=\s*([^|]+?)\s*$", line):
                out[name] = value
    return out


def runnable(command: str, defs: dict[str, str]) -> list[str] | None:
    """The argv of a plain command line, or None when it needs a set-up."""
    command = re.sub(r"\s*\((?:or|e\.g\.) [^)]*\)", "", command)  # "--x 0 (or -3)": the first
    if not command.startswith(PROGRAMS) or any(c in command for c in "|;()"):
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    argv = []
    for w in words:
        if w == "O":
            argv.append("{work}/out")
        elif w in defs:
            argv.extend(shlex.split(defs[w]))
        elif PLACEHOLDER.search(w) and not w.startswith("-"):
            return None
        else:
            argv.append(w)
    return argv


def parse(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if " | " not in line or line.startswith("#"):
            continue
        command, expected = (part.strip().strip("`") for part in line.rsplit(" | ", 1))
        rows.append((command, expected))
    return rows


def listed() -> tuple[list[Case], int]:
    """(the runnable cases, how many lines were descriptions only)."""
    root = Path(os.environ.get("ATTACK_COORD_DIR", "/tmp/coord"))
    out, described = [], 0
    for path in sorted(root.glob("cases_h*.md")) if root.is_dir() else []:
        who = re.search(r"cases_(h\d)", path.name).group(1)
        defs = definitions(path.read_text(errors="replace"))
        for i, (command, expected) in enumerate(parse(path), 1):
            argv = runnable(command, defs)
            if argv is None:
                described += 1
                continue
            expect = "error" if any(w in expected.lower() for w in ERROR_WORDS) else "any"
            out.append(Case(f"{who} #{i}: {command[:70]}", argv, expect, OWNERS.get(who, who),
                            f"listed by {who}: {expected[:80]}"))
    return out, described


def cases() -> list[Case]:
    return listed()[0]
