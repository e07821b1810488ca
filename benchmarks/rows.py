"""One benchmark row per function; each runs in its own process (``run.py`` starts them).

A row prints one JSON object on its last line of stdout. Model rows time this project's
step and its PyTorch peer in the same process, alternating, after a warm-up, and report
the median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

TORCH_THREADS = int(os.environ.get("BENCH_TORCH_THREADS", os.cpu_count() or 1))


def _torch():
    import torch

    torch.set_num_threads(TORCH_THREADS)
    return torch


def alternate(fns: dict, repeats: int) -> dict:
    """Median seconds per call of each function, called in turn ``repeats`` times."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- rows

def row_matmul(args) -> dict:
    """The ceiling: a big float32 matmul in XLA and in torch, GFLOP/s."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    torch = _torch()
    n = 1024 if args.quick else 4096
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    ja, ta = jnp.asarray(a), torch.from_numpy(a)
    f = jax.jit(jnp.matmul)
    fns = {"jax": lambda: f(ja, ja).block_until_ready(), "torch": lambda: ta @ ta}
    for fn in fns.values():
        fn()
    t = alternate(fns, args.repeats)
    flops = 2 * n ** 3
    return {"n": n, "jax_gflops": flops / t["jax"] / 1e9, "torch_gflops": flops / t["torch"] / 1e9}


def _model_row(args, kind: str) -> dict:
    from benchmarks import steps

    torch = _torch()
    batch, size = args.batch, args.size
    if kind == "train":
        jrun, jcompile, flops = steps.jax_train_step(args.arch, batch, size)
        trun, tfirst = steps.torch_train_step(args.arch, batch, size)
    else:
        jrun, jcompile, flops = steps.jax_infer(args.arch, batch, size)
        trun, tfirst = steps.torch_infer(args.arch, batch, size)
    fns = {"jax": jrun, "torch": trun}
    if TORCH_THREADS > 1:
        # On a shared machine torch's OpenMP threads wait on each other at every op when one
        # of them is descheduled; one thread is then faster. Timed too, so the ratio is
        # also given against torch's better configuration.
        def trun_1thread():
            torch.set_num_threads(1)
            try:
                trun()
            finally:
                torch.set_num_threads(TORCH_THREADS)

        fns["torch_1thread"] = trun_1thread
    extra = {}
    if args.torch_compile:
        try:
            maker = steps.torch_train_step if kind == "train" else steps.torch_infer
            crun, ccompile = maker(args.arch, batch, size, compile=True)
            fns["torch_compile"] = crun
            extra["torch_compile_first_s"] = ccompile
        except Exception as e:  # recorded, not fatal: torch.compile needs a C++ toolchain
            extra["torch_compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    t = alternate(fns, args.repeats)
    out = {
        "arch": args.arch, "kind": kind, "batch": batch, "size": size,
        "jax_img_s": batch / t["jax"], "torch_img_s": batch / t["torch"],
        "ratio": t["torch"] / t["jax"], "jax_compile_s": jcompile, "torch_first_s": tfirst,
        "jax_gflop": flops / 1e9, "jax_gflops": flops / t["jax"] / 1e9 if flops else None,
        "repeats": args.repeats, "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if "torch_1thread" in t:
        out["torch_1thread_img_s"] = batch / t["torch_1thread"]
    out["ratio_best_torch"] = min(v for k, v in t.items() if k.startswith("torch")) / t["jax"]
    if "torch_compile" in t:
        out["torch_compile_img_s"] = batch / t["torch_compile"]
        out["ratio_compile"] = t["torch_compile"] / t["jax"]
    out.update(extra)
    return out


def row_train(args) -> dict:
    return _model_row(args, "train")


def row_infer(args) -> dict:
    return _model_row(args, "infer")


def row_memory(args) -> dict:
    """Peak RSS of a process that runs only one framework's train step a few times."""
    from benchmarks import steps

    if args.framework == "jax":
        run, _, _ = steps.jax_train_step(args.arch, args.batch, args.size)
    else:
        _torch()
        run, _ = steps.torch_train_step(args.arch, args.batch, args.size)
    for _ in range(3):
        run()
    return {"framework": args.framework, "peak_rss_mib": peak_rss_mib()}


def _jpeg_folder(root: str, n: int, classes: int = 4, size=(320, 240)) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
    for i in range(n):
        # Smooth random pictures compress like photographs do, unlike white noise.
        small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.BILINEAR)
        img.save(os.path.join(root, f"class{i % classes}", f"{i:05d}.jpg"), quality=90)
    return root


def row_pipeline(args) -> dict:
    """Images/s of the training input pipeline (resnet_jax.data), threads as the CLI's default."""
    from resnet_jax.data import datasets, pipeline

    out = {}
    cases = []
    digits = datasets.digits()
    cases.append(("digits", digits, digits.preprocess, args.digits_batch))
    tmp = tempfile.mkdtemp(prefix="bench-jpeg-")
    _jpeg_folder(tmp, 64 if args.quick else 256)
    folder = datasets.image_folder(tmp)
    pre = datasets.Preprocess(args.size)
    cases.append(("jpeg", folder, pre, args.batch))
    for name, data, pre, batch in cases:
        loader = pipeline.Loader(data, batch, train=True, preprocess=pre, threads=args.threads)
        it = loader.iterator()
        next(it)  # start the threads
        n = max(args.repeats * 2, 8)
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        dt = time.perf_counter() - t0
        it.close()
        out[name] = {"img_s": n * batch / dt, "batch": batch, "image_size": pre.image_size,
                     "images": len(data)}
    return out


def row_digits_step(args) -> dict:
    """Images/s of the default training run's step (``python train.py``: digits, my_resnet)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resnet_jax import init_variables
    from resnet_jax.data import datasets
    from resnet_jax.train import loop
    from resnet_jax.train.state import OptimizerConfig, TrainState, make_optimizer
    from resnet_jax.train.step import make_train_step

    cfg = loop.TrainConfig(dataset="digits").resolved()
    data = datasets.digits()
    pre = data.preprocess
    batch = args.digits_batch = int(cfg.batch_size)
    model = loop.build_model(cfg, data.num_classes, 1, pre.image_size)
    variables = init_variables(model, 0, pre.image_size)
    tx = make_optimizer(OptimizerConfig(total_steps=1000))
    state = TrainState.create(model.apply, variables, tx)
    step = jax.jit(make_train_step(pre.mean, pre.std, data.num_classes), donate_argnums=0)
    img = np.zeros((batch, pre.image_size, pre.image_size, 1), np.uint8)
    b = {"image": jnp.asarray(img), "label": jnp.zeros((batch,), jnp.int32)}
    state, m = step(state, b)
    jax.block_until_ready(m)
    n = 20
    t0 = time.perf_counter()
    for _ in range(n):
        state, m = step(state, b)
    jax.block_until_ready(m)
    return {"img_s": n * batch / (time.perf_counter() - t0), "batch": batch,
            "image_size": pre.image_size, "arch": cfg.arch}


def row_compile_cache(args) -> dict:
    """Seconds to the end of the first step of ``python train.py``: cold cache, then warm."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cache = tempfile.mkdtemp(prefix="bench-xla-cache-")
    env = dict(os.environ, RESNET_JAX_CACHE=cache)
    train_args = shlex.split(args.train_args)
    out = {"command": "python train.py " + " ".join(train_args)}
    for label in ("first", "second"):
        outdir = tempfile.mkdtemp(prefix="bench-run-")
        cmd = [sys.executable, os.path.join(root, "train.py"), *train_args, "--output", outdir]
        metrics = os.path.join(outdir, "metrics.jsonl")
        t0 = time.perf_counter()
        first_step = None
        with subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as p:
            # The run logs step 1 to metrics.jsonl as soon as it is done.
            while p.poll() is None and time.perf_counter() - t0 < args.timeout:
                if first_step is None and os.path.exists(metrics) and os.path.getsize(metrics):
                    first_step = time.perf_counter() - t0
                time.sleep(0.02)
            if p.poll() is None:
                p.kill()
            text = p.stdout.read()
        out[f"{label}_total_s"] = time.perf_counter() - t0
        out[f"{label}_s"] = first_step
        if p.returncode or first_step is None:
            out["error"] = text.strip().splitlines()[-1:]
            break
    n_files = sum(len(f) for _, _, f in os.walk(cache))
    out["cache_entries"] = n_files
    if "second_s" in out:
        out["speedup"] = out["first_s"] / out["second_s"]
    return out


def row_compile_step(args) -> dict:
    """Compile time of the jitted train step in a fresh process, cold cache then warm."""
    cache = tempfile.mkdtemp(prefix="bench-xla-cache-")
    env = dict(os.environ, RESNET_JAX_CACHE=cache)
    code = (
        "import time; t=time.perf_counter()\n"
        "from resnet_jax.cli import enable_compilation_cache; enable_compilation_cache()\n"
        "from benchmarks import steps\n"
        f"run, c, _ = steps.jax_train_step({args.arch!r}, {args.batch}, {args.size}); run()\n"
        "print(c, time.perf_counter()-t)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {"arch": args.arch}
    for label in ("first", "second"):
        p = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                           text=True, timeout=args.timeout)
        if p.returncode:
            out["error"] = (p.stderr or p.stdout).strip().splitlines()[-1:]
            break
        c, total = map(float, p.stdout.split()[-2:])
        out[f"{label}_compile_s"], out[f"{label}_total_s"] = c, total
    return out


ROWS = {name[4:]: fn for name, fn in globals().items() if name.startswith("row_")}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("row", choices=sorted(ROWS))
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--torch-compile", action="store_true")
    ap.add_argument("--framework", default="jax")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--digits-batch", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--train-args", default="", help="one string, split like a shell")
    args = ap.parse_args(argv)
    from resnet_jax import xla_cpu

    xla_cpu.configure()  # the CPU tuning, as the CLI applies it; before JAX starts

    result = ROWS[args.row](args)
    result["peak_rss_mib"] = result.get("peak_rss_mib", peak_rss_mib())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
