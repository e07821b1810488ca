"""Cases that the fixes' authors listed as "command | expected outcome", one per line, in
``$ATTACK_COORD_DIR/cases_h*.md`` (default /tmp/coord). A command may use the fixtures'
``{names}``; it runs through bash in the case's scratch dir with the venv's bin on PATH."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .core import Case

ERROR_WORDS = ("error", "refus", "exit 1", "exit 2", "exit status 1", "exit status 2", "reject",
               "fails", "not found", "invalid")
OWNERS = {"h1": "H1 (convert/port)", "h2": "H2 (train/checkpoints/cli)",
          "h3": "H3 (predict/gradcam/visualize/images)"}


def parse(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip().strip("`").strip()
        if " | " not in line or line.startswith(("#", "command", "---", "|")):
            continue
        command, expected = (part.strip().strip("`").strip() for part in line.rsplit(" | ", 1))
        if command and not set(command) <= set("-| "):
            rows.append((command, expected))
    return rows


def cases() -> list[Case]:
    root = Path(os.environ.get("ATTACK_COORD_DIR", "/tmp/coord"))
    out = []
    for path in sorted(root.glob("cases_h*.md")) if root.is_dir() else []:
        who = re.search(r"cases_(h\d)", path.name).group(1)
        for i, (command, expected) in enumerate(parse(path), 1):
            expect = "error" if any(w in expected.lower() for w in ERROR_WORDS) else "any"
            out.append(Case(f"{who} #{i}: {command[:70]}", ["bash", "-c", command], expect,
                            OWNERS.get(who, who), f"listed by {who}: {expected[:80]}",
                            env={"PATH": _path()}, timeout=300))
    return out


def _path() -> str:
    import sys

    return f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
