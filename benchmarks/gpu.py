"""GPU benchmark: ResNet-50 train step and inference against torch AMP + channels_last.

    bash benchmarks/gpu.sh                 # on a GPU machine: batch 256, 224x224
    GPU_BENCH_TINY=1 bash benchmarks/gpu.sh  # any machine: batch 2, 64x64, few steps
    python -m benchmarks.gpu --record RUN1/gpu_results.json ...  # -> BENCHMARKS.md "## GPU"

resnet-jax computes in bfloat16 (``create_model(..., dtype=jnp.bfloat16)``; parameters,
BatchNorm statistics and the loss stay float32); torch runs under
``torch.autocast(bfloat16)`` with ``channels_last`` and cudnn benchmark mode. Each timing is
a block of steps dispatched back to back and ended by one device sync, alternating the two
frameworks, median of the blocks. Then Grad-CAM throughput, and a profile of a few train
steps of each framework: the kernels that take the most device time, so that a loss can be
traced to its layers. Last, the end-to-end row (``GPU_BENCH_E2E=0`` leaves it out):
``resnet-jax train`` of the same model, batch and precision on packed shards of
ImageNet-like 500x375 JPEGs (made here: a few generated, hard-linked to fill one epoch,
packed at ``--max-side 256``) with ``GPU_BENCH_WORKERS`` worker processes (default: the
cores less two), in img/s as the training loop logs it (its last window of 20 or more
steps), next to the bare step's img/s. A table at the end; with ``OUT`` set, the results (JSON), the profile
summaries and jax's compiled HLO are written there. Installs nothing. With no GPU visible
it falls back to the tiny sizes by itself.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

T_START = time.perf_counter()


def log(*a):
    print(f"[{time.perf_counter() - T_START:6.1f}s]", *a, flush=True)


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    from importlib import metadata

    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch",
                 "torchvision"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import torch

        out["cudnn (torch)"] = torch.backends.cudnn.version()
    except Exception:
        pass
    return out


def top_jax_kernels(trace_dir: Path, steps: int, limit: int = 25) -> dict:
    """From a jax profiler trace's device rows: {line: [(name, ms per step, launches per
    step)]}, one list for the kernels on the GPU streams and one for the XLA ops."""
    files = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not files:
        return {}
    with gzip.open(files[-1], "rt") as f:
        trace = json.load(f)
    events = trace.get("traceEvents", trace) if isinstance(trace, dict) else trace
    procs = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e.get("args", {}).get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    device = {pid for pid, n in procs.items() if "gpu" in n.lower()}

    def line(tid_key):
        name = threads.get(tid_key, "").lower()
        if "stream" in name:
            return "kernels"
        return "xla ops" if "xla ops" in name else None

    total = collections.defaultdict(collections.Counter)
    count = collections.defaultdict(collections.Counter)
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in device:
            kind = line((e["pid"], e.get("tid")))
            if kind:
                total[kind][e["name"]] += e.get("dur", 0) / 1000.0
                count[kind][e["name"]] += 1
    return {kind: [(n, t / steps, round(count[kind][n] / steps))
                   for n, t in [("(all)", sum(c.values()))] + c.most_common(limit)]
            for kind, c in total.items()}


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--record", metavar="JSON", nargs="+", help="write the GPU section of "
                    "BENCHMARKS.md from runs' gpu_results.json instead of running")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent
                    / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.record:
        from benchmarks import write_section

        write_section(args.out, "GPU", section(
            [(json.loads(Path(f).read_text()), f) for f in args.record]))
        print(f"wrote section 'GPU' of {args.out}")
        return 0

    from resnet_jax import xla_cpu

    xla_cpu.configure()  # the CLI's settings, before JAX starts (CPU-only flags)
    import jax

    from resnet_jax.cli import enable_compilation_cache

    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    enable_compilation_cache()
    devices = jax.devices()
    log("jax devices:", devices)
    vers = versions()
    log("versions:", ", ".join(f"{k} {v}" for k, v in vers.items()))
    torch, cuda = _torch()
    run = _Run(devices[0].platform == "gpu", "cuda" if cuda else "cpu")
    log(f"{'tiny' if run.tiny else 'full'} run: {run.arch}, batch {run.batch}, "
        f"{run.size}x{run.size}, {run.blocks} blocks of {run.steps_per_block} steps; "
        f"torch on {run.tdev}")
    if torch is not None and cuda:
        torch.backends.cudnn.benchmark = True
    elif torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
    train_row = _step_rows(run, torch)
    _gradcam_row(run, torch)
    profiles = {}
    if os.environ.get("GPU_BENCH_PROFILE", "1") != "0":
        profiles = profile_train(run.makers_by_row.get(train_row, {}), out_dir, torch, run.tdev)
    if os.environ.get("GPU_BENCH_E2E", "1") != "0":
        _end_to_end_row(run, train_row)
    _report(run, devices, vers, profiles, out_dir)
    return 0


def _torch():
    """``(torch module or None, whether it has CUDA)``."""
    try:
        import torch

        log("torch cuda devices:", [torch.cuda.get_device_name(i)
                                    for i in range(torch.cuda.device_count())])
        return torch, torch.cuda.is_available()
    except Exception as e:  # torch missing: jax rows only
        log("torch unavailable:", e)
        return None, False


class _Run:
    """The run's settings (from ``GPU_BENCH_*``) and its rows, timed alternately."""

    def __init__(self, gpu: bool, tdev: str):
        self.tiny = os.environ.get("GPU_BENCH_TINY", "0") not in ("", "0") or not gpu
        self.arch = os.environ.get("GPU_BENCH_ARCH", "resnet50")
        self.batch = int(os.environ.get("GPU_BENCH_BATCH", 2 if self.tiny else 256))
        self.size = int(os.environ.get("GPU_BENCH_SIZE", 64 if self.tiny else 224))
        self.steps_per_block = 2 if self.tiny else 10
        self.blocks = 2 if self.tiny else 5
        self.tdev = tdev
        self.rows, self.makers_by_row = [], {}

    def _ready(self, name, makers) -> tuple[dict, dict]:
        runs, first = {}, {}
        for fw, make in makers.items():
            try:
                t0 = time.perf_counter()
                step = make()[0]
                sync = getattr(step, "sync", lambda: None)
                step()  # warm-up (torch: cudnn autotuning; jax: first dispatch)
                sync()
                runs[fw], first[fw] = (step, sync), time.perf_counter() - t0
                log(f"{name} {fw}: ready in {first[fw]:.1f} s")
            except Exception as e:
                log(f"{name} {fw} FAILED: {type(e).__name__}: {e}")
                traceback.print_exc()
        return runs, first

    def timed(self, name, makers, n_images):
        """makers: {framework: () -> (step, ...)} where ``step.sync()`` (if any) waits for
        the dispatched steps; alternate blocks of steps."""
        runs, first = self._ready(name, makers)
        times = {fw: [] for fw in runs}
        for _ in range(self.blocks):
            for fw, (step, sync) in runs.items():
                t0 = time.perf_counter()
                for _ in range(self.steps_per_block):
                    step()
                sync()
                times[fw].append((time.perf_counter() - t0) / self.steps_per_block)
        res = {fw: n_images / statistics.median(t) for fw, t in times.items()}
        spread = {fw: (min(t), max(t)) for fw, t in times.items()}
        ratio = res["jax"] / res["torch"] if "jax" in res and "torch" in res else None
        self.rows.append({"row": name, "jax": res.get("jax"), "torch": res.get("torch"),
                          "ratio": ratio, "jax_first_s": first.get("jax"),
                          "torch_first_s": first.get("torch"), "step_s_min_max": spread})
        self.makers_by_row[name] = runs
        log(f"{name}: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in res.items())
            + (f", ratio {ratio:.2f}x" if ratio else ""))


def _step_rows(run: _Run, torch) -> str:
    """The bf16 train and inference rows; returns the train row's name."""
    from benchmarks import steps

    arch, batch, size, bf16 = run.arch, run.batch, run.size, "bfloat16"
    train_row = f"{arch} train bf16"
    makers = {"jax": lambda: steps.jax_train_step(arch, batch, size, dtype=bf16, block=False)}
    if torch is not None:
        makers["torch"] = lambda: steps.torch_train_step(arch, batch, size, channels_last=True,
                                                         device=run.tdev, amp=True, block=False)
    run.timed(train_row, makers, batch)
    makers = {"jax": lambda: steps.jax_infer(arch, batch, size, dtype=bf16, block=False)}
    if torch is not None:
        makers["torch"] = lambda: steps.torch_infer(arch, batch, size, channels_last=True,
                                                    device=run.tdev, amp=True, block=False)
    run.timed(f"{arch} inference bf16", makers, batch)
    return train_row


def _gradcam_row(run: _Run, torch):
    """Grad-CAM against pytorch-grad-cam on the same (ported) weights when it is installed."""
    import jax
    import numpy as np

    from resnet_jax import create_model, init_variables
    from resnet_jax.explain import gradcam

    arch, size, tdev = run.arch, run.size, run.tdev
    cam_batch = min(run.batch, 2 if run.tiny else 64)
    try:
        x = np.random.default_rng(0).standard_normal((cam_batch, size, size, 3), dtype=np.float32)
        makers, cam_peer = {}, None
        try:
            import torchvision
            from pytorch_grad_cam import GradCAM

            from resnet_jax.port import from_torch

            tv = getattr(torchvision.models, arch)().eval()
            model, variables = from_torch(tv)
            tv = tv.to(tdev)
            cam_peer = GradCAM(tv, [tv.layer4])
            xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(tdev)
        except ImportError as e:
            log("Grad-CAM peer skipped:", e)
            model = create_model(arch)
            variables = init_variables(model, 0)
        # Both take a batch already on the device and return host arrays (numpy maps), so
        # each call ends synced.
        xj = jax.device_put(x)
        makers["jax"] = lambda: (lambda: gradcam(model, variables, xj, layer="layer4"),)
        if cam_peer is not None:
            makers["torch"] = lambda: (lambda: cam_peer(xt, targets=None),)
            diff = float(np.abs(gradcam(model, variables, x, layer="layer4")
                                - cam_peer(xt, targets=None)).max())
            log(f"Grad-CAM maps: largest difference from pytorch-grad-cam {diff:.2e}")
        run.timed(f"{arch} Grad-CAM fp32 (batch {cam_batch})", makers, cam_batch)
    except Exception as e:
        log(f"Grad-CAM FAILED: {type(e).__name__}: {e}")
        traceback.print_exc()


def _packed_shards(root: Path, images: int, cores: int) -> Path:
    """Packed shards of ``images`` ImageNet-like 500x375 JPEGs: 256 generated, hard-linked
    in turn to fill the folder (decoding reads real JPEGs), packed at max side 256."""
    from benchmarks.bench_startup import link_folder
    from benchmarks.imagenet_like import generate
    from resnet_jax.data import pack

    t0 = time.perf_counter()
    generate(root / "src", min(images, 256), classes=min(100, images // 2), workers=cores, progress=False)
    link_folder(root / "src", root / "folder", images, classes=min(100, images // 2))
    pack(root / "folder", root / "packed", max_side=256, workers=cores, progress=False)
    log(f"end to end: {images} images packed in {time.perf_counter() - t0:.0f} s")
    return root / "packed"


def _end_to_end_row(run: _Run, train_row: str) -> None:
    """``resnet-jax train`` (train.py) on packed shards with worker processes: the loop's
    img/s (its last logged window), next to the bare step's."""
    import subprocess
    import tempfile

    cores = os.cpu_count() or 1
    workers = int(os.environ.get("GPU_BENCH_WORKERS", max(1, cores - 2)))
    steps = int(os.environ.get("GPU_BENCH_E2E_STEPS", 10 if run.tiny else 100))
    name = f"{run.arch} train bf16, end to end (resnet-jax train, packed shards, {workers} workers)"
    root = Path(tempfile.mkdtemp(prefix="gpu-e2e-"))
    try:
        images = int(steps * run.batch / 0.98) + 100  # one epoch holds every step: no save inside
        packed = _packed_shards(root, images, cores)
        cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "train.py"), "--dataset", str(packed),
               "--arch", run.arch, "--precision", "bf16", "--batch-size", str(run.batch),
               "--image-size", str(run.size), "--epochs", "1", "--max-steps", str(steps),
               "--workers", str(workers), "--val-fraction", "0", "--test-fraction", "0.01",
               "--log-every", "10", "--keep", "1", "--no-progress", "--no-tensorboard", "--no-plots",
               "--output", str(root / "run")]
        t0 = time.perf_counter()
        budget = float(os.environ.get("GPU_BENCH_TIMEOUT", 0)) - (t0 - T_START) - 30  # gpu.sh's timeout
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget if budget > 0 else 900)
        if done.returncode:
            raise RuntimeError(f"status {done.returncode}: {done.stderr.strip()[-2000:]}")
        records = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
        ips = [r["images_per_s"] for r in records if r["kind"] == "train" and r.get("images_per_s")][-1]
        bare = next((r["jax"] for r in run.rows if r["row"] == train_row), None)
        share = ips / bare if bare else None
        run.rows.append({"row": name + (f": {share:.0%} of the bare step" if share else "")
                         + f", {ips / workers:.1f} img/s per worker", "jax": ips, "torch": None,
                         "ratio": None, "jax_first_s": None, "torch_first_s": None,
                         "bare_step_img_s": bare, "of_bare_step": share, "workers": workers,
                         "cores": cores, "e2e_s": time.perf_counter() - t0})
        log(f"{name}: {ips:.1f} img/s" + (f", {share:.0%} of the bare step's {bare:.1f}" if share else ""))
    except Exception as e:
        log(f"end to end FAILED: {type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def _report(run: _Run, devices, vers, profiles, out_dir):
    dev = str(getattr(devices[0], "device_kind", devices[0]))
    total = time.perf_counter() - T_START
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "gpu_results.json").write_text(json.dumps(
            {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": dev,
             "torch_device": run.tdev, "batch": run.batch, "size": run.size, "tiny": run.tiny,
             "versions": vers, "rows": run.rows, "profiles": profiles, "total_s": total},
            indent=1, default=str))
    print()
    for fw, top in profiles.items():
        print(f"top device kernels per {fw} train step (ms, launches):")
        for name, ms, n in top[:14]:
            print(f"  {ms:8.2f} {n:4d}  {name[:110]}")
    print()
    print(f"device: {dev}; torch device: {run.tdev}; batch {run.batch}, {run.size}x{run.size}"
          f"{' (TINY)' if run.tiny else ''}; total {total:.0f} s")
    print("\n".join(table(run.rows)))


def _f(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def table(rows) -> list[str]:
    lines = ["| row | resnet-jax img/s | torch img/s | ratio "
             "| jax first step s | torch first step s |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"**{r['ratio']:.2f}x**" if r["ratio"] else "-"
        lines.append(f"| {r['row']} | {_f(r['jax'])} | {_f(r['torch'])} | {ratio} | "
                     f"{_f(r['jax_first_s'])} | {_f(r['torch_first_s'])} |")
    return lines


def section(runs: list[tuple[dict, str]]) -> str:
    """The '## GPU' section of BENCHMARKS.md from runs' ``gpu_results.json`` (with their
    paths), one table per run; the profile of the last."""
    L = ["## GPU", "",
         "`bash benchmarks/gpu.sh`, one call per run; `python -m benchmarks.gpu --record "
         "RESULTS.json ...` wrote this section. resnet-jax computes in bf16 (parameters, "
         "BatchNorm statistics and the loss in float32), torch under "
         "`torch.autocast(bfloat16)` with `channels_last` and cudnn benchmark mode. Each "
         "figure is the median of 5 blocks of 10 steps dispatched back to back with one sync "
         "per block, the frameworks alternating. Grad-CAM: float32 both, against "
         "pytorch-grad-cam's `GradCAM` on the same (ported) weights where it is installed, "
         "both given a batch already on the device and returning numpy maps."]
    for results, source in runs:
        v = results.get("versions", {})
        date = results.get("date") or time.strftime(
            "%Y-%m-%d", time.gmtime(os.path.getmtime(source)))
        L += ["", f"### {results['device']}, {date}", "",
              f"Batch {results['batch']}, {results['size']}x{results['size']}"
              f"{' (TINY sizes)' if results.get('tiny') else ''}; torch on "
              f"{results['torch_device']}; run took {results.get('total_s', 0):.0f} s. "
              "Versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x is not None) + ".",
              ""]
        L += table(results["rows"])
    results = runs[-1][0]
    for name, top in results.get("profiles", {}).items():
        if not top:
            continue
        total = top[0][1] if top[0][0] == "(all)" else None
        L += ["", f"Profile of the last run, {name} of one train step"
              + (f" ({total:.1f} ms of device time)" if total else "") + ", largest five:", ""]
        L += [f"- {ms:.2f} ms, {n} launches: `{kname[:90]}`"
              for kname, ms, n in [t for t in top if t[0] != "(all)"][:5]]
    return "\n".join(L) + "\n"


def profile_train(runs, out_dir: Path | None, torch, tdev: str, n: int = 3) -> dict:
    """Top device kernels of ``n`` train steps of each framework (jax profiler, torch.profiler)."""
    import tempfile

    import jax

    profiles = {}
    if "jax" in runs:
        step, sync = runs["jax"]
        compiled = getattr(step, "compiled", None)
        if out_dir is not None and compiled is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "jax_train_hlo.txt").write_text(compiled.as_text())
        try:
            tdir = Path(tempfile.mkdtemp()) / "jax_trace"
            with jax.profiler.trace(str(tdir), create_perfetto_trace=True):
                for _ in range(n):
                    step()
                sync()
            for kind, top in top_jax_kernels(tdir, n).items():
                profiles[f"jax {kind}"] = top
            log(f"jax profile: {[k for k in profiles if k.startswith('jax')]}")
        except Exception as e:
            log(f"jax profile FAILED: {type(e).__name__}: {e}")
    if "torch" in runs and torch is not None:
        step, sync = runs["torch"]
        try:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if tdev == "cuda" else [])
            with profile(activities=acts) as prof:
                for _ in range(n):
                    step()
                sync()
            key = "device_time_total" if tdev == "cuda" else "cpu_time_total"
            events = [e for e in prof.key_averages() if getattr(e, "device_type", None) is not None
                      and str(e.device_type).endswith("CUDA")] if tdev == "cuda" else []
            if not events:  # kernels are listed as CPU-side ops on a CPU run
                events = list(prof.key_averages())
            events.sort(key=lambda e: getattr(e, "self_" + key, 0), reverse=True)
            busy = sum(getattr(e, "self_" + key, 0) for e in events) / 1000.0 / n
            profiles["torch"] = [("(all)", busy, 0)] + [
                (e.key, getattr(e, "self_" + key, 0) / 1000.0 / n, round(e.count / n))
                for e in events[:25]]
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / "torch_profile.txt").write_text(prof.key_averages().table(
                    sort_by="self_" + key, row_limit=60))
            log(f"torch profile: {len(profiles['torch'])} rows")
        except Exception as e:
            log(f"torch profile FAILED: {type(e).__name__}: {e}")
    return profiles


if __name__ == "__main__":
    sys.exit(main())
