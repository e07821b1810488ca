"""Start-up and memory of training on a large image folder (issue 18, "Measure").

    python -m benchmarks.imagenet_like /tmp/il-src --n 200 --classes 100
    python -m benchmarks.bench_startup links /tmp/il-src /tmp/il-50k --n 50000
    python -m benchmarks.bench_startup links /tmp/il-src /tmp/il-2k --n 2000
    python -m benchmarks.bench_startup memory /tmp/il-2k /tmp/il-50k
    python -m benchmarks.bench_startup startup /tmp/il-50k [--base /tmp/base_main] [--warm] [--floor]

``links`` makes a folder of N listed images in 100 class folders, each a hard link to one
of a few generated JPEGs (listing reads no pixels, so only the count of files matters;
decoding reads the real 500x375 JPEGs).

``memory`` runs, in a fresh process per folder, what ``train`` does with it before the first
step (``load_splits``, the training ``Loader``, one batch of 64 at 224), and reports the
process's resident memory (VmRSS) after it and its peak (VmHWM). Target: the 2,000- and
the 50,000-image folders differ by less than 50 MB.

``startup`` times ``python train.py --dataset FOLDER`` (a small ResNet, 32 pixels) from the
command to its first training step (the first ``train`` record in ``metrics.jsonl``), then
stops the run; with ``--base DIR`` the same command from a checkout of another commit
(``PYTHONPATH=DIR``), alternating, ``--repeats`` times each. Each row compiles cold (a new
compilation cache), or with ``--warm`` from a cache that an untimed run of the same command
filled (a user's second run; a run on another folder would not do: the learning-rate
schedule's step counts, which follow the folder's size, are constants of the compiled
train step). Target: under 10% of the base. With ``--floor`` a third row times what no run
of the command can skip, alone in its process: Python's start, the command's imports, the
listing, the model, and the train step traced and compiled (the same calls as ``train``),
with nothing beside it; the command's own row can approach it but not pass it.
Nothing is timed in the tests; note the machine's load with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def link_folder(src, out, n: int, classes: int = 100) -> int:
    """``out/class_CCCC/IIIIIII.jpg`` for ``i < n``, hard links to ``src``'s JPEGs in turn;
    returns the number of links made (existing ones are kept)."""
    sources = sorted(Path(src).rglob("*.jpg"))
    if not sources:
        raise SystemExit(f"no .jpg under {src}")
    made = 0
    for i in range(n):
        path = Path(out) / f"class_{i % classes:04d}" / f"{i:07d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(sources[i % len(sources)], path)
        made += 1
    return made


_MEMORY_CHILD = """
import json, sys
from resnet_jax.data import Loader, Preprocess, load_splits
import resnet_jax.train.loop  # everything train imports, before the first figure

def status():
    fields = dict(line.split(':', 1) for line in open('/proc/self/status'))
    return {k: int(fields[k].split()[0]) / 1024 for k in ('VmRSS', 'VmHWM')}

before = status()
sets = load_splits(sys.argv[1])
loader = Loader(sets['train'], 64, train=True, seed=0, preprocess=Preprocess(224), threads=2)
with loader.iterator() as it:
    next(it)
after = status()
print(json.dumps({'images': sum(len(s) for s in sets.values()), 'rss_before_mb': before['VmRSS'],
                  'rss_mb': after['VmRSS'], 'peak_mb': after['VmHWM']}))
"""


def memory(folder) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(folder)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


_FLOOR_CHILD = """
import gc
import sys
from resnet_jax import xla_cpu
xla_cpu.configure()
from resnet_jax.cli import enable_compilation_cache
from resnet_jax.train import loop
from resnet_jax.train.cli import register  # the command's parser module, as train.py imports it
from resnet_jax.train.config import TrainConfig

gc.freeze()  # as resnet_jax.cli.run does after the imports
enable_compilation_cache()
cfg = TrainConfig(dataset=sys.argv[1], arch="my_resnet", model_options={"stage_widths": [8, 16]},
                  image_size=32, batch_size=16, max_steps=5, threads=2).resolved().validate()
mesh = loop._mesh(cfg)
data = loop._load_data(cfg)
steps = loop._Steps(cfg, data, mesh)
model = loop.build_model(cfg, data.num_classes, data.channels, data.pre.image_size)
steps.compile_ahead(lambda: loop.abstract_state(model, data.pre.image_size, steps.tx))
steps.wait()
print("compiled", flush=True)
"""


def _floor_seconds(folder, timeout: float) -> float:
    """Seconds from starting Python to the train step of the ``startup`` command compiled,
    doing nothing else (``_FLOOR_CHILD``), with a new compilation cache."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-startup-floor-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RESNET_JAX_CACHE": str(run_dir / "cache")}
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", _FLOOR_CHILD, str(folder)], env=env, timeout=timeout,
                             capture_output=True, text=True)
        seconds = time.perf_counter() - t0  # the child's exit (a few ms) included
        if "compiled" not in out.stdout:
            raise RuntimeError(f"the floor's child failed: {out.stderr[-2000:]}")
        return seconds
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _loader_flags(checkout: Path, processes: bool) -> list[str]:
    """Two threads of the training process (``--threads 2``; a checkout from before worker
    processes spelt that ``--workers 2``), or two worker processes (``--workers 2``)."""
    if processes:
        return ["--workers", "2"]
    knows_threads = "--threads" in (checkout / "resnet_jax" / "train" / "cli.py").read_text()
    return ["--threads" if knows_threads else "--workers", "2"]


def _first_step_seconds(folder, checkout: Path, timeout: float, cache: Path | None = None,
                        processes: bool = False) -> float:
    """Seconds from starting ``train.py`` of ``checkout`` on ``folder`` to its first logged
    training step; the run is then stopped. ``cache``: the persistent compilation cache
    (default: a new, empty one); ``processes``: two worker processes instead of threads."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    args = [sys.executable, str(checkout / "train.py"), "--dataset", str(folder), "--arch", "my_resnet",
            "--stage-widths", "8,16", "--image-size", "32", "--batch-size", "16", "--max-steps", "5",
            *_loader_flags(checkout, processes), "--no-progress", "--no-tensorboard", "--no-plots",
            "--output", str(run_dir / "run")]
    env = {**os.environ, "PYTHONPATH": str(checkout), "RESNET_JAX_CACHE": str(cache or run_dir / "cache")}
    metrics = run_dir / "run" / "metrics.jsonl"
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while time.perf_counter() - t0 < timeout:
            if metrics.is_file() and '"kind": "train"' in metrics.read_text():
                return time.perf_counter() - t0
            if proc.poll() is not None:
                raise RuntimeError(f"{checkout}/train.py ended before a step: {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
        return float("nan")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


def startup(folder, base: str | None, repeats: int, timeout: float, warm: bool = False,
            floor: bool = False):
    """Rows (checkout, seconds); with ``warm``, each checkout's compilation cache is filled
    by an untimed run of the same command first; with ``floor``, a row of ``_floor_seconds``
    (cold) after each round."""
    checkouts = [("this", REPO, False), ("this, 2 worker processes", REPO, True)]
    checkouts += [("base", Path(base), False)] if base else []
    caches = {name: None for name, _, _ in checkouts}
    if warm:
        for name, checkout, processes in checkouts:
            caches[name] = Path(tempfile.mkdtemp(prefix=f"bench-startup-cache-{name[:4]}-"))
            _first_step_seconds(folder, checkout, timeout, caches[name], processes)
    rows = []
    for _ in range(repeats):
        for name, checkout, processes in checkouts:
            seconds = _first_step_seconds(folder, checkout, timeout, caches[name], processes)
            rows.append((name, seconds))
            print(f"{name:26s} {seconds:8.1f} s to the first step"
                  f" ({'warm' if warm else 'cold'} compilation cache)", flush=True)
        if floor:
            seconds = _floor_seconds(folder, timeout)
            rows.append(("floor", seconds))
            print(f"{'floor':26s} {seconds:8.1f} s to the train step compiled, nothing else"
                  " (cold compilation cache)", flush=True)
    for cache in caches.values():
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    lk = sub.add_parser("links", help="a folder of N hard links to a few JPEGs")
    lk.add_argument("src")
    lk.add_argument("out")
    lk.add_argument("--n", type=int, required=True)
    lk.add_argument("--classes", type=int, default=100)
    mem = sub.add_parser("memory", help="resident memory of the loader, one fresh process a folder")
    mem.add_argument("folders", nargs="+")
    st = sub.add_parser("startup", help="seconds from the command to the first training step")
    st.add_argument("folder")
    st.add_argument("--base", help="a checkout of another commit, timed alternately")
    st.add_argument("--repeats", type=int, default=1)
    st.add_argument("--timeout", type=float, default=1800, help="seconds before a row gives up")
    st.add_argument("--warm", action="store_true",
                    help="fill each checkout's compilation cache by an untimed run of the same "
                         "command first; default: every row compiles cold")
    st.add_argument("--floor", action="store_true",
                    help="also time the floor: imports, listing and the train step's compile "
                         "alone in a process, with a cold compilation cache")
    args = p.parse_args(argv)
    if args.what == "links":
        print(f"{link_folder(args.src, args.out, args.n, args.classes)} links made in {args.out}")
    elif args.what == "memory":
        rows = [memory(f) for f in args.folders]
        for row in rows:
            print(f"{row['images']:7d} images: RSS {row['rss_mb']:7.1f} MB (imports {row['rss_before_mb']:.1f} MB), "
                  f"peak {row['peak_mb']:7.1f} MB")
        if len(rows) > 1:
            print(f"difference, largest - smallest folder: {rows[-1]['rss_mb'] - rows[0]['rss_mb']:+.1f} MB RSS, "
                  f"{rows[-1]['peak_mb'] - rows[0]['peak_mb']:+.1f} MB peak")
    else:
        startup(args.folder, args.base, args.repeats, args.timeout, args.warm, args.floor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
