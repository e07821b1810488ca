"""Replay the reliability attack: bad inputs to every command, signals, concurrent runs.

    python -m benchmarks.attack [--only PATTERN] [--jobs N] [--out report.json]
                                [--fixtures DIR] [--list] [--rerun report.json]
                                [--summary counts.txt]

Fixtures (a tiny trained run, a converted random resnet18, unusual and broken images,
malicious pickles, damaged weights and data folders) are made once in a temp dir, or
reused from ``--fixtures DIR``. Each case runs as a subprocess with every cache and home
inside that dir, and is classified as one of: clear error, handled correctly, traceback,
silently wrong, code executed, data lost (see ``benchmarks/attack_cases/core.py``).
Prints one line per case and the counts; writes the details as JSON (after each case, so
a cut-short run keeps its results). ``--rerun`` runs again only the cases of an earlier
report that were not as expected. It needs root for the full-disk (tmpfs) and read-only
cases, util-linux's ``prlimit`` and ``setpriv``, and torch + torchvision for the fixtures.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from benchmarks.attack_cases import (
    cases_convert,
    cases_coord,
    cases_explain,
    cases_models,
    cases_signals,
    cases_train,
    fixtures,
)
from benchmarks.attack_cases.core import GOOD, OUTCOMES, run_case

TABLES = (cases_train, cases_models, cases_convert, cases_explain, cases_signals, cases_coord)


def all_cases() -> list:
    cases = [c for table in TABLES for c in table.cases()]
    names = collections.Counter(c.name for c in cases)
    dup = [n for n, k in names.items() if k > 1]
    if dup:
        raise SystemExit(f"duplicate case names: {dup}")
    return cases


def prepare(fixtures_dir: str | None) -> tuple[dict, dict, Path, bool]:
    """(fixtures, env, root, made_here): reuses ``fixtures_dir`` when it was built before."""
    if fixtures_dir:
        root = Path(fixtures_dir).absolute()
        stamp = root / "fixtures.json"
        if stamp.exists():
            fx = json.loads(stamp.read_text())
            return fx, fixtures.environment(root), root, False
    else:
        root = Path(tempfile.mkdtemp(prefix="resnet-jax-attack-"))
    print(f"making fixtures in {root} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    fx, env = fixtures.build(root)
    (root / "fixtures.json").write_text(json.dumps(fx, indent=1))
    print(f"fixtures ready in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return fx, env, root, fixtures_dir is None


def run_all(cases, fx, env, scratch: Path, jobs: int, out: Path | None = None) -> list[dict]:
    """Run the cases; after each one, the results so far go to ``out`` (marked partial)."""
    results = []
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {pool.submit(run_case, c, fx, env, scratch): c for c in cases}
        for fut in as_completed(futures):
            r = fut.result()
            results.append(r)
            flag = "" if not r["unexpected"] else "  <--"
            print(f"[{len(results):3d}/{len(cases)}] {r['outcome']:<17} {r['name']}{flag}",
                  file=sys.stderr, flush=True)
            if out is not None:
                out.write_text(json.dumps({"partial": True, "cases": results}, indent=1))
    order = {c.name: i for i, c in enumerate(cases)}
    return sorted(results, key=lambda r: order[r["name"]])


def report(results: list[dict]) -> str:
    width = max([len(r["name"]) for r in results] + [10])
    lines = [f"{'case':<{width}}  {'outcome':<17}  reason", "-" * (width + 60)]
    for r in results:
        lines.append(f"{r['name']:<{width}}  {r['outcome']:<17}  {r['reason'][:150]}")
    counts = collections.Counter(r["outcome"] for r in results)
    lines += ["", f"{len(results)} cases:"]
    for outcome in (*OUTCOMES, "harness error"):
        if counts.get(outcome) or outcome in OUTCOMES:
            lines.append(f"  {outcome:<17} {counts.get(outcome, 0)}")
    bad = [r for r in results if r["unexpected"]]
    if bad:
        lines += ["", f"{len(bad)} remaining (not a clear error or handled as expected):"]
        for r in bad:
            lines.append(f"  [{r['outcome']}] {r['name']} ({r['owner']}): {r['reason'][:200]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attack", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="run only cases whose name matches this regular expression")
    p.add_argument("--jobs", type=int, default=2, help="cases run in parallel (default 2)")
    p.add_argument("--out", default="attack_report.json", help="JSON report path")
    p.add_argument("--fixtures", help="make (or reuse) the fixtures in this directory")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--rerun", metavar="REPORT",
                   help="run again only the cases that were not as expected in this earlier "
                        "JSON report, and report all of its cases with the new results")
    p.add_argument("--summary", metavar="TXT",
                   help="also write the counts and the remaining cases to this text file")
    args = p.parse_args(argv)
    cases = all_cases()
    earlier = []
    if args.rerun:
        earlier = json.loads(Path(args.rerun).read_text())["cases"]
        again = {r["name"] for r in earlier if r["unexpected"]}
        cases = [c for c in cases if c.name in again]
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.name)]
    if args.list:
        print("\n".join(f"{c.expect:<5} {c.name}  [{c.owner}]" for c in cases))
        print(f"{len(cases)} cases", file=sys.stderr)
        return 0
    # A harness started in the background (cmd &) ignores SIGINT, and its children would
    # inherit that; a handled signal is reset to the default across exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    fx, env, root, made_here = prepare(args.fixtures)
    scratch = Path(tempfile.mkdtemp(prefix="cases-", dir=root))
    start = time.monotonic()
    try:
        results = run_all(cases, fx, env, scratch, args.jobs, Path(args.out))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if made_here:
            (root / "readonly").chmod(0o755)
            shutil.rmtree(root, ignore_errors=True)
    if earlier:
        fresh = {r["name"]: r for r in results}
        results = [fresh.get(r["name"], r) for r in earlier]
    text = report(results)
    print(text)
    counts = collections.Counter(r["outcome"] for r in results)
    Path(args.out).write_text(json.dumps({
        "counts": {k: counts.get(k, 0) for k in OUTCOMES} | {"harness error": counts.get("harness error", 0)},
        "cases": results, "seconds": round(time.monotonic() - start),
    }, indent=1))
    print(f"\nreport: {args.out} ({time.monotonic() - start:.0f} s)")
    if args.summary:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent).stdout.strip()
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        tail = text[text.index(f"{len(results)} cases:"):]
        Path(args.summary).write_text(
            f"attack replay at {stamp} on {head} (+ uncommitted work), "
            f"filter {args.only or 'none'}\n\n{tail}\n")
    return 0 if all(r["outcome"] in GOOD and not r["unexpected"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
