"""The attack harness's core: a case, how it runs, and how its outcome is classified.

A case runs one command (or a small Python callable) in its own scratch directory, with
the fixtures' paths substituted into its arguments, and is classified as one of
``OUTCOMES``, checked in this order: the marker file written by a malicious pickle
(code executed), a protected file changed or gone or a ``.partial`` left behind (data
lost), a Python exception dump (traceback), then the exit status against what the case
expects (clear error, handled correctly, or silently wrong).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

OUTCOMES = ("clear error", "handled correctly", "traceback", "silently wrong",
            "code executed", "data lost")
GOOD = ("clear error", "handled correctly")
REPO = Path(__file__).resolve().parents[2]
MARKER = "MARKER"  # written by the malicious pickles into the case's scratch directory

# A Python exception dump: the header, an exception line, or an unraisable-exception report.
TRACEBACK_RE = re.compile(
    r"Traceback \(most recent call last\)"
    r"|^(?:[A-Za-z_][\w]*\.)*[A-Z]\w*(?:Error|Exception|Interrupt)(?::|$)"
    r"|^Exception ignored in|^Fatal Python error",
    re.MULTILINE,
)


@dataclasses.dataclass
class Case:
    """One bad (or unusual) input and what a correct program does with it.

    ``expect``: "error" (a clear error is right; exit 0 is silently wrong), "ok" (exit 0
    and ``check`` passes), or "any" (either a clear error, or exit 0 with ``check``).
    ``check(ctx)`` returns the reason the result is wrong, or None. ``protect`` lists
    path templates that must be unchanged afterwards (fixture paths in the arguments are
    protected anyway). ``mentions``: words a clear error should contain.
    """

    name: str
    argv: list[str] | None = None
    expect: str = "error"
    owner: str = ""
    item: str = ""
    check: Callable | None = None
    setup: Callable | None = None
    protect: tuple[str, ...] = ()
    mentions: tuple[str, ...] = ()
    status: int | None = None
    timeout: float = 240.0
    env: dict | None = None
    fsize: int | None = None  # RLIMIT_FSIZE in bytes: writes past it fail ("disk full")
    no_dac: bool = False  # drop root's permission override, so read-only modes apply
    runner: Callable | None = None  # custom run (signals, concurrency): ctx -> (outcome, why)


@dataclasses.dataclass
class Result:
    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False


class Ctx:
    """What a case sees: the fixtures' paths, its scratch dir, its result."""

    def __init__(self, fixtures: dict, work: Path, env: dict):
        self.fx = fixtures
        self.work = work
        self.env = env
        self.vars = {**fixtures, "work": str(work)}
        self.result: Result | None = None
        self.notes: list[str] = []
        self.partials_before: set[Path] = set()
        self.cleanups: list = []  # run after the case, whatever happened (e.g. unmount)

    def path(self, template: str) -> Path:
        return Path(template.format_map(self.vars))

    def argv(self, argv: list[str]) -> list[str]:
        return command([a.format_map(self.vars) for a in argv])


def read_jsonl(path: Path) -> list[dict]:
    """The records of a metrics file (a line cut short by a crash is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def command(argv: list[str]) -> list[str]:
    """The real command line for an argv whose first word names a program."""
    py = sys.executable
    head, rest = argv[0], argv[1:]
    if head == "resnet-jax":
        script = Path(py).parent / "resnet-jax"
        if script.exists():
            return [str(script), *rest]
        return [py, "-c", "import sys; from resnet_jax.cli import run; sys.exit(run())", *rest]
    if head in ("convert_weights.py", "train.py"):
        return [py, str(REPO / head), *rest]
    if head == "python":
        return [py, *rest]
    return argv


def spawn(cmd: list[str], ctx: Ctx, case: Case, cwd: Path | None = None) -> subprocess.Popen:
    """Start a case's process in its own session (signals go to its group). The limits
    are set by util-linux's wrappers, not by Python code between fork and exec."""
    if case.fsize is not None:
        cmd = ["prlimit", f"--fsize={case.fsize}", "--", *cmd]
    if case.no_dac and os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *cmd]
    env = {**ctx.env, **(case.env or {})}
    return subprocess.Popen(cmd, cwd=cwd or ctx.work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float, start: float) -> Result:
    try:
        out, err = proc.communicate(timeout=timeout)
        return Result(proc.returncode, out, err, time.monotonic() - start)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Result(proc.returncode, out, err, time.monotonic() - start, timed_out=True)


def run_argv(ctx: Ctx, case: Case, argv: list[str], cwd: Path | None = None) -> Result:
    start = time.monotonic()
    return finish(spawn(ctx.argv(argv), ctx, case, cwd), case.timeout, start)


# --------------------------------------------------------------------------- data snapshots

def digest(path: Path) -> dict[str, str]:
    """relative path -> sha256 for a file or every file under a directory; a device node
    or fifo by its type and number (reading /dev/full never ends)."""
    import stat

    if path.exists() and not (path.is_file() or path.is_dir()):
        st = path.stat()
        return {".": f"special {stat.S_IFMT(st.st_mode):o} {st.st_rdev}"}
    if path.is_symlink() or path.is_file():
        try:
            return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
        except OSError as e:
            return {".": f"unreadable {e.errno}"}
    if path.is_dir():
        out = {}
        for p in sorted(path.rglob("*")):
            # A run's lock file holds its holder's PID: bookkeeping, not the user's data.
            if p.is_file() and not p.is_symlink() and not p.name.endswith(".lock"):
                out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
        return out
    return {}


def snapshot(paths: list[Path]) -> dict[Path, dict[str, str]]:
    return {p: digest(p) for p in paths if p.exists() or p.is_symlink()}


def lost(before: dict[Path, dict[str, str]]) -> str | None:
    """What changed or vanished among the snapshot's files, as one line, or None."""
    for root, files in before.items():
        now = digest(root)
        for rel, h in files.items():
            where = root if rel == "." else root / rel
            if rel not in now:
                return f"{where} vanished"
            if now[rel] != h:
                return f"{where} changed"
    return None


def partials(work: Path, dirs: list[Path]) -> set[Path]:
    """``.partial`` files anywhere under the scratch dir or beside a protected path."""
    return {*work.rglob("*.partial"), *(p for d in dirs if d.is_dir() for p in d.glob("*.partial"))}


def protected_paths(case: Case, ctx: Ctx) -> list[Path]:
    """The case's own list and every fixture path named in its arguments."""
    paths = [ctx.path(t) for t in case.protect]
    root = Path(ctx.fx["root"])
    for a in case.argv or []:
        try:
            p = Path(a.format_map(ctx.vars))
        except (KeyError, ValueError):
            continue
        inside = root in p.parents and ctx.work not in p.parents and p != ctx.work
        if p.is_absolute() and inside and (p.exists() or p.is_symlink()):
            paths.append(p)
    return paths


# --------------------------------------------------------------------------- classification

def traceback_line(text: str) -> str | None:
    m = TRACEBACK_RE.search(text)
    if not m:
        return None
    lines = [ln for ln in text.splitlines() if TRACEBACK_RE.search(ln) and "Traceback" not in ln]
    return (lines[-1] if lines else m.group(0)).strip()[:160]


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def error_outcome(case: Case, res: Result) -> tuple[str, str]:
    """A failed run: a clear error if its last line says what is wrong."""
    if res.rc is not None and res.rc < 0:
        return "traceback", f"killed by signal {-res.rc}: {last_line(res.err)}"
    line = last_line(res.err) or last_line(res.out)
    if "error" not in line.lower() and "interrupted" not in line.lower():
        return "traceback", f"exit {res.rc} without an error line; last: {line or '(nothing)'}"
    notes = []
    if case.status is not None and res.rc != case.status:
        notes.append(f"exit {res.rc}, expected {case.status}")
    missing = [w for w in case.mentions if w.lower() not in (res.err + res.out).lower()]
    if missing:
        notes.append(f"does not name {', '.join(missing)}")
    why = line + (f" [{'; '.join(notes)}]" if notes else "")
    return "clear error", why


def classify(case: Case, ctx: Ctx, before: dict) -> tuple[str, str]:
    res = ctx.result
    if (ctx.work / MARKER).exists():
        return "code executed", f"{ctx.work / MARKER} was written by an unpickled object"
    gone = lost(before)
    if gone:
        return "data lost", gone
    left = partials(ctx.work, [p.parent for p in before]) - ctx.partials_before
    if left:
        return "data lost", f"{sorted(left)[0]} left behind"
    text = res.err + "\n" + res.out
    tb = traceback_line(text)
    if tb:
        return "traceback", tb
    if res.timed_out:
        return "silently wrong", f"no exit after {case.timeout:.0f} s"
    if res.rc != 0:
        outcome, why = error_outcome(case, res)
        if case.expect == "ok" and outcome == "clear error":
            why = "EXPECTED SUCCESS: " + why
        elif outcome == "clear error" and case.expect == "error" and case.check:
            wrong = case.check(ctx)  # an error that says something false
            if wrong:
                return "silently wrong", wrong
        return outcome, why
    if case.expect == "error":
        return "silently wrong", "exit 0: accepted; " + (last_line(res.out) or last_line(res.err))
    why = case.check(ctx) if case.check else None
    if why:
        return "silently wrong", why
    return "handled correctly", (ctx.notes[-1] if ctx.notes else last_line(res.out))


def run_case(case: Case, fixtures: dict, env: dict, scratch: Path) -> dict:
    """Run one case in a fresh scratch directory and classify it."""
    work = scratch / re.sub(r"[^\w.-]+", "_", case.name)[:80]
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(fixtures, work, {**env, "ATTACK_MARKER": str(work / MARKER)})
    start = time.monotonic()
    try:
        if case.setup:
            case.setup(ctx)
        if case.runner:
            outcome, why = case.runner(case, ctx)
        else:
            before = snapshot(protected_paths(case, ctx))
            ctx.partials_before = partials(ctx.work, [p.parent for p in before])
            ctx.result = run_argv(ctx, case, case.argv)
            outcome, why = classify(case, ctx, before)
    except Exception as e:  # a harness bug must not stop the other cases
        outcome, why = "harness error", f"{type(e).__name__}: {e}"
    finally:
        for fn in ctx.cleanups:
            fn()
    res = ctx.result
    return {"name": case.name, "outcome": outcome, "reason": why, "owner": case.owner,
            "item": case.item, "expect": case.expect,
            "unexpected": why.startswith("EXPECTED SUCCESS") or outcome not in GOOD,
            "rc": None if res is None else res.rc, "seconds": round(time.monotonic() - start, 1),
            "stderr_tail": "" if res is None else res.err[-1500:],
            "stdout_tail": "" if res is None else res.out[-600:]}
