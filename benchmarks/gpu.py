"""GPU benchmark: ResNet-50 train step and inference against torch AMP + channels_last.

    bash benchmarks/gpu.sh                 # on a GPU machine: batch 256, 224x224
    GPU_BENCH_TINY=1 bash benchmarks/gpu.sh  # any machine: batch 2, 64x64, few steps

resnet-jax computes in bfloat16 (``create_model(..., dtype=jnp.bfloat16)``; parameters,
BatchNorm statistics and the loss stay float32); torch runs under
``torch.autocast(bfloat16)`` with ``channels_last`` and cudnn benchmark mode. Each timing is
a block of steps ended by a device sync, alternating the two frameworks, median of the
blocks. Also Grad-CAM throughput when ``resnet_jax.explain`` has it. A table at the end.
Installs nothing. With no GPU visible it falls back to the tiny sizes by itself.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import traceback

T_START = time.perf_counter()


def log(*a):
    print(f"[{time.perf_counter() - T_START:6.1f}s]", *a, flush=True)


def main() -> int:
    import jax

    import resnet_jax  # noqa: F401  (project settings, as every entry point)
    from resnet_jax.cli import enable_compilation_cache

    enable_compilation_cache()
    devices = jax.devices()
    log("jax devices:", devices)
    try:
        import torch

        cuda = torch.cuda.is_available()
        log("torch", torch.__version__, "cuda:", [torch.cuda.get_device_name(i)
                                                  for i in range(torch.cuda.device_count())])
    except Exception as e:  # torch missing: jax rows only
        torch, cuda = None, False
        log("torch unavailable:", e)
    gpu = devices[0].platform == "gpu"
    tiny = os.environ.get("GPU_BENCH_TINY", "0") not in ("", "0") or not gpu
    arch = os.environ.get("GPU_BENCH_ARCH", "resnet50")
    batch = int(os.environ.get("GPU_BENCH_BATCH", 2 if tiny else 256))
    size = int(os.environ.get("GPU_BENCH_SIZE", 64 if tiny else 224))
    steps_per_block = 2 if tiny else 10
    blocks = 2 if tiny else 3
    tdev = "cuda" if cuda else "cpu"
    log(f"{'tiny' if tiny else 'full'} run: {arch}, batch {batch}, {size}x{size}, "
        f"{blocks} blocks of {steps_per_block} steps; torch on {tdev}")
    if torch is not None and cuda:
        torch.backends.cudnn.benchmark = True
    elif torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)

    from benchmarks import steps

    rows = []

    def timed(name, makers):
        """makers: {framework: () -> (run, first_s)}; alternate blocks of steps."""
        runs, first = {}, {}
        for fw, make in makers.items():
            try:
                t0 = time.perf_counter()
                run, *rest = make()
                run()  # warm-up (torch: cudnn autotuning; jax: first dispatch)
                runs[fw], first[fw] = run, time.perf_counter() - t0
                log(f"{name} {fw}: ready in {first[fw]:.1f} s")
            except Exception as e:
                log(f"{name} {fw} FAILED: {type(e).__name__}: {e}")
                traceback.print_exc()
        times = {fw: [] for fw in runs}
        for _ in range(blocks):
            for fw, run in runs.items():
                t0 = time.perf_counter()
                for _ in range(steps_per_block):
                    run()
                times[fw].append((time.perf_counter() - t0) / steps_per_block)
        out = {fw: batch / statistics.median(t) for fw, t in times.items()}
        ratio = out["jax"] / out["torch"] if "jax" in out and "torch" in out else None
        rows.append((name, out.get("jax"), out.get("torch"), ratio, first.get("jax"), first.get("torch")))
        log(f"{name}: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in out.items())
            + (f", ratio {ratio:.2f}x" if ratio else ""))

    bf16 = "bfloat16"
    makers = {"jax": lambda: steps.jax_train_step(arch, batch, size, dtype=bf16)}
    if torch is not None:
        makers["torch"] = lambda: steps.torch_train_step(arch, batch, size, channels_last=True,
                                                         device=tdev, amp=True)
    timed(f"{arch} train bf16", makers)
    makers = {"jax": lambda: steps.jax_infer(arch, batch, size, dtype=bf16)}
    if torch is not None:
        makers["torch"] = lambda: steps.torch_infer(arch, batch, size, channels_last=True,
                                                    device=tdev, amp=True)
    timed(f"{arch} inference bf16", makers)

    try:
        import numpy as np

        from resnet_jax import create_model, init_variables
        from resnet_jax.explain import gradcam

        model = create_model(arch)
        variables = init_variables(model, 0)
        cam_batch = min(batch, 2 if tiny else 64)
        x = np.random.default_rng(0).standard_normal((cam_batch, size, size, 3), dtype=np.float32)

        def make_cam():
            return (lambda: gradcam(model, variables, x, layer="layer4"),)

        bsave = batch
        batch = cam_batch
        timed(f"{arch} Grad-CAM fp32 (batch {cam_batch})", {"jax": make_cam})
        batch = bsave
    except ImportError as e:
        log("Grad-CAM row skipped:", e)
    except Exception as e:
        log(f"Grad-CAM FAILED: {type(e).__name__}: {e}")

    dev = str(devices[0].device_kind if hasattr(devices[0], "device_kind") else devices[0])
    print()
    print(f"device: {dev}; torch device: {tdev}; batch {batch}, {size}x{size}"
          f"{' (TINY)' if tiny else ''}; total {time.perf_counter() - T_START:.0f} s")
    print("| row | resnet-jax img/s | torch AMP channels_last img/s | ratio | jax first step s | torch first step s |")
    print("|---|---:|---:|---:|---:|---:|")

    def f(v, nd=1):
        return "-" if v is None else f"{v:.{nd}f}"

    for name, j, t, r, fj, ft in rows:
        print(f"| {name} | {f(j)} | {f(t)} | {f(r, 2) + 'x' if r else '-'} | {f(fj)} | {f(ft)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
