"""Signals and concurrency: SIGINT during imports and saves, SIGKILL then --resume, two
runs on one --output, two converts to one --out."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from . import checks
from .core import Case, finish, last_line, lost, read_jsonl, snapshot, spawn, traceback_line

CLI = "H2 resnet_jax/cli.py"
TRAIN = "H2 resnet_jax/train/loop.py, train/checkpoints.py"
CONVERT = "H1 resnet_jax/commands.py (convert), checkpoint.py"
SMALL = ["--dataset", "synthetic:classes=3,size=16,n=48", "--batch-size", "8",
         "--stage-widths", "8,16,32,64", "--no-progress", "--no-plots", "--no-tensorboard",
         "--keep", "100", "--seed", "0"]
LONG = [*SMALL, "--epochs", "6", "--checkpoint-every", "1"]
RESUMABLE = [*SMALL, "--epochs", "3", "--checkpoint-every", "2"]
NOISE = ("Event loop is closed", "KeyboardInterrupt")

IMPORT_COMMANDS = {
    "train": ["resnet-jax", "train", *SMALL, "--max-steps", "2", "--output", "{work}/out"],
    "summary": ["resnet-jax", "summary", "resnet18"],
    "predict": ["resnet-jax", "predict", "--weights", "{model18}", "{rgb_jpg}"],
    "convert": ["convert_weights.py", "--weights", "{r18_pth}", "--out", "{work}/out"],
    "evaluate": ["resnet-jax", "evaluate", "--checkpoint", "{run}", "--output", "{work}/c.png"],
    "gradcam": ["resnet-jax", "gradcam", "--weights", "{run}", "{rgb_jpg}", "--out", "{work}/m"],
    "visualize": ["resnet-jax", "visualize", "--weights", "{run}", "--class", "0", "--out",
                  "{work}/g.png"],
}


def interrupted(res, what: str) -> tuple[str, str]:
    """An interrupted command: exit 130 (or killed by SIGINT) and no exception dump."""
    text = res.err + res.out
    tb = traceback_line(text) or next((n for n in NOISE if n in text), None)
    if tb:
        return "traceback", f"{what}: {tb}"
    if res.timed_out:
        return "silently wrong", f"{what}: did not stop"
    if res.rc == 0:
        return "handled correctly", f"{what}: finished before the signal"
    if res.rc not in (130, -signal.SIGINT):
        return "clear error", f"{what}: exit {res.rc}, expected 130; {last_line(res.err)}"
    return "clear error", f"{what}: exit {res.rc}, {last_line(res.err) or 'no output'}"


def sigint_after(delay: float):
    def runner(case, ctx):
        start = time.monotonic()
        proc = spawn(ctx.argv(case.argv), ctx, case)
        time.sleep(delay)
        sent = proc.poll() is None
        if sent:
            os.killpg(proc.pid, signal.SIGINT)
        ctx.result = finish(proc, case.timeout, start)
        if sent and ctx.result.rc == 0:
            return "silently wrong", f"SIGINT after {delay} s ignored: ran on to exit 0"
        return interrupted(ctx.result, f"SIGINT after {delay} s")
    return runner


def _wait_for(pred, proc, timeout: float = 300.0, every: float = 0.003) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if pred():
            return True
        time.sleep(every)
    return False


def _saving(out: Path, min_done: int = 0):
    """True while a step is being written (orbax's temporary folder is there)."""
    def pred():
        if not out.is_dir():
            return False
        names = [p.name for p in out.iterdir()]
        done = [n for n in names if n.isdigit()]
        return len(done) >= min_done and any("tmp" in n for n in names)
    return pred


def _complete_steps(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name.isdigit()] if out.is_dir() else []


def sigint_during_save(min_done: int):
    def runner(case, ctx):
        out = ctx.work / "out"
        start = time.monotonic()
        proc = spawn(ctx.argv(case.argv), ctx, case)
        if not _wait_for(_saving(out, min_done), proc):
            ctx.result = finish(proc, case.timeout, start)
            return "harness error", f"no save caught in progress (exit {ctx.result.rc} first)"
        before = snapshot(_complete_steps(out))
        os.killpg(proc.pid, signal.SIGINT)
        ctx.result = finish(proc, case.timeout, start)
        gone = lost(before)
        if gone:
            return "data lost", gone
        outcome, why = interrupted(ctx.result, f"SIGINT during a save ({len(before)} steps saved)")
        if outcome == "clear error" and not _complete_steps(out) and before:
            return "data lost", "no checkpoint kept"
        return outcome, why
    return runner


_REFERENCE: dict = {}
_REF_LOCK = threading.Lock()


def losses(path: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_jsonl(path) if r.get("kind") == "train"]


def reference_losses(case, ctx) -> list[tuple[int, float]]:
    """The uninterrupted run's losses, computed once per attack."""
    with _REF_LOCK:
        if "losses" not in _REFERENCE:
            ref = ctx.work.parent / "reference_run"  # this attack's code, not a stale copy
            if not (ref / "metrics.jsonl").exists():
                argv = ["resnet-jax", "train", *RESUMABLE, "--output", str(ref)]
                res = finish(spawn(ctx.argv(argv), ctx, case), case.timeout, time.monotonic())
                if res.rc != 0:
                    raise RuntimeError(f"reference run failed: {last_line(res.err)}")
            _REFERENCE["losses"] = losses(ref / "metrics.jsonl")
    return _REFERENCE["losses"]


def compare_losses(ref, got) -> str | None:
    steps = [s for s, _ in got]
    if len(steps) != len(set(steps)):
        dup = sorted({s for s in steps if steps.count(s) > 1})
        return f"metrics.jsonl holds steps {dup} more than once"
    want, have = dict(ref), dict(got)
    if sorted(have) != sorted(want):
        return f"steps {sorted(set(want) ^ set(have))} missing or extra after resume"
    diff = [s for s in want if want[s] != have[s]]
    return f"losses differ from the uninterrupted run at steps {diff[:5]}" if diff else None


def sigkill_then_resume(during_save: bool):
    def runner(case, ctx):
        ref = reference_losses(case, ctx)
        out = ctx.work / "out"
        argv = ["resnet-jax", "train", *RESUMABLE, "--output", str(out)]
        start = time.monotonic()
        proc = spawn(ctx.argv(argv), ctx, case)
        pred = _saving(out, 1) if during_save else (lambda: (out / "4").is_dir())
        if not _wait_for(pred, proc):
            first = finish(proc, case.timeout, start)
            ctx.result = first
            return "harness error", f"the run ended (exit {first.rc}) before the kill point"
        os.killpg(proc.pid, signal.SIGKILL)
        finish(proc, case.timeout, start)
        ctx.result = finish(spawn(ctx.argv([*argv, "--resume"]), ctx, case), case.timeout, start)
        tb = traceback_line(ctx.result.err + ctx.result.out)
        if tb:
            return "traceback", f"resume: {tb}"
        if ctx.result.rc != 0:
            return "clear error", f"EXPECTED SUCCESS: resume failed: {last_line(ctx.result.err)}"
        why = compare_losses(ref, losses(out / "metrics.jsonl"))
        if why:
            return "silently wrong", why
        where = "during a save" if during_save else "after step 4"
        return "handled correctly", f"killed {where}; resumed losses identical, each step once"
    return runner


def two_at_once(argv_a: list[str], argv_b: list[str], check=None, b_after: str | None = None):
    """Start two commands together (the second once ``b_after`` exists, if given): exactly
    one may succeed, the other errs clearly."""
    def runner(case, ctx):
        start = time.monotonic()
        first = spawn(ctx.argv(argv_a), ctx, case)
        if b_after:
            _wait_for(lambda: ctx.path(b_after).exists(), first)
        procs = [first, spawn(ctx.argv(argv_b), ctx, case)]
        results = [finish(p, case.timeout, start) for p in procs]
        ctx.result = results[1]
        for res in results:
            tb = traceback_line(res.err + res.out)
            if tb:
                return "traceback", tb
        codes = [r.rc for r in results]
        why = check(ctx) if check else None
        if why:
            return "silently wrong", why
        if codes.count(0) == 2:
            return "silently wrong", "both exited 0 on one output"
        if codes.count(0) == 0:
            return "clear error", f"EXPECTED SUCCESS: neither succeeded: {last_line(results[0].err)}"
        loser = results[codes.index(next(c for c in codes if c != 0))]
        return "clear error", f"one succeeded, the other: {last_line(loser.err)}"
    return runner


def two_writers_allowed(argv: list[str], check):
    """Two --overwrite converts: both may succeed in turn; the result must be whole."""
    def runner(case, ctx):
        outcome, why = two_at_once(argv, argv, check)(case, ctx)
        if why == "both exited 0 on one output":
            return "handled correctly", "both replaced the model in turn; the result is whole"
        return outcome, why
    return runner


def cases() -> list[Case]:
    out = []
    for name, argv in IMPORT_COMMANDS.items():
        out.append(Case(f"SIGINT during {name}'s imports", argv, "error", CLI, "12",
                        runner=sigint_after(0.3), timeout=120))
    for delay in (1.0, 5.0):
        for name in ("train", "convert"):
            out.append(Case(f"SIGINT {name} after {delay} s", IMPORT_COMMANDS[name], "error",
                            CLI, "12", runner=sigint_after(delay), timeout=120))
    train = ["resnet-jax", "train", *LONG, "--output", "{work}/out"]
    for k in (0, 1, 3):
        out.append(Case(f"SIGINT during a checkpoint save ({k} saved)", train, "error", TRAIN,
                        "12", runner=sigint_during_save(k)))
    out += [
        Case("SIGKILL after a save, then --resume", None, "ok", TRAIN, "16",
             runner=sigkill_then_resume(False), timeout=400),
        Case("SIGKILL during a save, then --resume", None, "ok", TRAIN, "16",
             runner=sigkill_then_resume(True), timeout=400),
        Case("two runs on one --output", None, "error", TRAIN, "7",
             runner=two_at_once(train, train), mentions=("pid",)),
        Case("a --resume while the run is going", None, "error", TRAIN, "7",
             runner=two_at_once(train, [*train, "--resume"], b_after="{work}/out/2")),
    ]
    conv = ["convert_weights.py", "--weights", "{r18_pth}", "--out", "{work}/m"]
    whole = checks.model_dir("{work}/m", 1000)
    out += [
        Case("two converts to one --out", None, "error", CONVERT, "11",
             runner=two_at_once(conv, conv, whole)),
        Case("two converts --overwrite to one --out", None, "any", CONVERT, "11",
             runner=two_writers_allowed([*conv, "--overwrite"], whole)),
    ]
    return out
