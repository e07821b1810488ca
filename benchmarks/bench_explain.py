"""Speed of resnet_jax.explain against its peers, on the same machine, in the same process.

1. Grad-CAM on resnet50 (torchvision weights, random, ported with ``port.from_torch``)
   against pytorch-grad-cam: throughput (images/s) at batch 32 and latency at batch 1.
   Both produce the same [0, 1] maps at ``layer4`` for the predicted class.
2. Activation maximisation against torch-lucent: channel-steps per second for 16
   ``layer4`` channels at once (one image per channel), 128x128 Fourier parameterisation
   with decorrelated colour, Lucent's standard transforms (pad 12, jitter 8, scale
   0.9-1.1, rotate +-10 degrees, jitter 4), upsampling to 224, ImageNet normalisation,
   Adam 0.05, Lucent's channel objective (mean of the channel).

Each measurement is taken after a warm-up (compilation), alternating ours and the peer's,
and the median of the repeats is reported. The results go into BENCHMARKS.md, section
"Explain", with the machine they ran on.

    python benchmarks/bench_explain.py [--repeats 3] [--am-steps 4] [--no-write]

Needs torch, torchvision, grad-cam and torch-lucent (which needs kornia<=0.4.1, decorator
and ipython).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine_info() -> dict:
    import jax
    import torch
    import torchvision

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist):
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as v

        try:
            return v(dist)
        except PackageNotFoundError:
            return "-"

    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "jax": jax.__version__,
        "jax_backend": jax.default_backend(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "torchvision": torchvision.__version__,
        "grad-cam": version("grad-cam"), "torch-lucent": version("torch-lucent"),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternate(ours, theirs, repeats: int):
    """Warm both up, then alternate; returns (median ours, median theirs) in seconds."""
    ours()
    theirs()
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(ours))
        b.append(timed(theirs))
    return statistics.median(a), statistics.median(b)


def bench_gradcam(tv, model, variables, batch: int, repeats: int, rng):
    import torch
    from pytorch_grad_cam import GradCAM

    from resnet_jax.explain import gradcam

    x = rng.standard_normal((batch, 224, 224, 3)).astype(np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    cam = GradCAM(tv, [tv.layer4])

    def ours():
        return gradcam(model, variables, x, layer="layer4")  # numpy maps: synchronised

    def theirs():
        return cam(xt, targets=None)

    diff = float(np.abs(ours() - theirs()).max())
    t_ours, t_theirs = alternate(ours, theirs, repeats)
    cam.activations_and_grads.release()
    return t_ours, t_theirs, diff


# Our method name -> pytorch-grad-cam's class name: the CAM methods timed against their peer.
CAM_PEERS = {
    "xgradcam": "XGradCAM", "layercam": "LayerCAM", "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM", "gradcamelementwise": "GradCAMElementWise",
    "kpcacam": "KPCA_CAM", "shapleycam": "ShapleyCAM", "finercam": "FinerCAM", "fem": "FEM",
    "fullgrad": "FullGrad", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM",
}
# The forward-only methods run one forward pass per channel and image (2,048 for resnet50's
# layer4): timed at a smaller batch, with the plain inference ratio next to them (the
# bound: both sides spend nearly all their time in those forward passes).
FORWARD_ONLY = ("scorecam", "ablationcam")


def bench_cam_method(name: str, tv, model, variables, batch: int, repeats: int, rng):
    """(our seconds, peer's seconds, max |map difference|) for one method at layer4."""
    import pytorch_grad_cam
    import torch

    from resnet_jax.explain import gradcam

    x = rng.standard_normal((batch, 224, 224, 3)).astype(np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    peer = getattr(pytorch_grad_cam, CAM_PEERS[name.replace("_", "")])
    layers = [] if name == "fullgrad" else [tv.layer4]
    cam = peer(tv, layers)

    def ours():
        return gradcam(model, variables, x, layer="layer4", method=name)

    def theirs():
        return cam(xt, targets=None)

    diff = float(np.abs(ours() - theirs()).max())
    t_ours, t_theirs = alternate(ours, theirs, repeats)
    base = getattr(cam, "base_cam", cam)
    base.activations_and_grads.release()
    return t_ours, t_theirs, diff


def bench_inference(tv, model, variables, batch: int, repeats: int, rng):
    """(our seconds, torch's seconds) for one eval-mode forward pass of ``batch`` images."""
    import jax
    import torch

    from resnet_jax import xla_cpu

    x = rng.standard_normal((batch, 224, 224, 3)).astype(np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    fwd = xla_cpu.inference_jit(lambda v, x: model.apply(v, x, train=False))

    def ours():
        return jax.block_until_ready(fwd(variables, x))

    def theirs():
        with torch.no_grad():
            return tv(xt)

    return alternate(ours, theirs, repeats)


def cam_method_rows(tv, model, variables, args, rng) -> list:
    from resnet_jax.explain.methods import METHODS

    ours = {n.replace("_", ""): n for n in METHODS}
    rows = []
    names = [n for n in CAM_PEERS if n in ours and (not args.methods or n in args.methods)]
    for key in names:
        batch = args.forward_batch if key in FORWARD_ONLY else args.cam_batch
        t, p, diff = bench_cam_method(ours[key], tv, model, variables, batch, args.repeats, rng)
        target = ">= 3x" if key == "scorecam" else ">= 2x"
        rows.append((f"{CAM_PEERS[key]}, resnet50 layer4, batch {batch}, 224x224 (images/s)",
                     f"{batch / t:.2f}", f"{batch / p:.2f}", p / t, target))
        print(f"{key} batch {batch}: ours {t:.2f} s, pytorch-grad-cam {p:.2f} s, ratio "
              f"{p / t:.2f}x (max |map diff| {diff:.1e})", flush=True)
    if any(k in FORWARD_ONLY for k in names):
        t, p = bench_inference(tv, model, variables, 32, args.repeats, rng)
        rows.append(("Inference, resnet50, batch 32, 224x224 (images/s): the forward-only "
                     "methods' bound", f"{32 / t:.2f}", f"{32 / p:.2f}", p / t, "-"))
        print(f"inference batch 32: ratio {p / t:.2f}x", flush=True)
    return rows


def bench_am(tv, model, variables, steps: int, repeats: int, channels: int = 16, size: int = 128,
             chunk: int | None = None):
    import jax
    import torch
    from lucent.optvis import objectives, param, render

    from resnet_jax.explain import make_maximizer
    from resnet_jax.explain import objectives as O
    from resnet_jax.explain import transforms as T

    objective = O.channel("layer4", range(channels), reduce="mean")
    run = make_maximizer(model, objective, steps, image_size=size, param="fourier",
                         transforms=T.standard_transforms(224), lr=0.05,
                         redirect_relu_steps=0, chunk=chunk)
    key = jax.random.key(0)

    def ours():
        jax.block_until_ready(run(variables, key))

    lucent_obj = objectives.Objective.sum(
        [objectives.channel("layer4", k, batch=k) for k in range(channels)])

    def theirs():
        render.render_vis(
            tv, lucent_obj, lambda: param.image(size, batch=channels, fft=True, decorrelate=True),
            thresholds=(steps,), show_image=False, progress=False, preprocess=True,
        )

    torch.manual_seed(0)
    t_ours, t_theirs = alternate(ours, theirs, repeats)
    return channels * steps / t_ours, channels * steps / t_theirs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--am-steps", type=int, default=4, help="optimisation steps per AM run")
    ap.add_argument("--chunk", type=int, default=2,
                    help="steps per unrolled chunk for the chunked maximisation row")
    ap.add_argument("--skip-am", action="store_true")
    ap.add_argument("--skip-cam", action="store_true")
    ap.add_argument("--skip-methods", action="store_true",
                    help="leave out the rows of the other CAM methods")
    ap.add_argument("--methods", type=lambda s: [m.strip().replace("_", "").lower()
                                                 for m in s.split(",")], default=None,
                    help="comma list of CAM methods to time (default: all with a peer)")
    ap.add_argument("--skip-objectives", action="store_true",
                    help="leave out the rows of Lucent's objectives")
    ap.add_argument("--am-size", type=int, default=224,
                    help="image side for the objective rows")
    ap.add_argument("--cam-batch", type=int, default=32)
    ap.add_argument("--forward-batch", type=int, default=1,
                    help="batch for ScoreCAM and AblationCAM (one forward pass per channel)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    from resnet_jax import xla_cpu

    xla_cpu.configure()  # the CLI's CPU tuning, before JAX starts
    import torch
    import torchvision

    from resnet_jax.port import from_torch

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    model, variables = from_torch(tv)
    info = machine_info()
    print("machine:", info)

    rows = []
    if not args.skip_cam:
        t32, p32, diff = bench_gradcam(tv, model, variables, 32, args.repeats, rng)
        thr_ours, thr_theirs = 32 / t32, 32 / p32
        rows.append(("Grad-CAM throughput, resnet50, batch 32, 224x224 (images/s)",
                     f"{thr_ours:.2f}", f"{thr_theirs:.2f}", thr_ours / thr_theirs, ">= 3x"))
        print(f"gradcam batch 32: ours {thr_ours:.2f} img/s, pytorch-grad-cam "
              f"{thr_theirs:.2f} img/s, ratio {thr_ours / thr_theirs:.2f}x "
              f"(max |map diff| {diff:.1e})")
        t1, p1, diff1 = bench_gradcam(tv, model, variables, 1, max(args.repeats, 5), rng)
        rows.append(("Grad-CAM latency, resnet50, batch 1, 224x224 (ms)",
                     f"{t1 * 1e3:.0f}", f"{p1 * 1e3:.0f}", p1 / t1, "<= 1/3 (>= 3x)"))
        print(f"gradcam batch 1: ours {t1 * 1e3:.0f} ms, pytorch-grad-cam {p1 * 1e3:.0f} ms, "
              f"speed-up {p1 / t1:.2f}x (max |map diff| {diff1:.1e})")
    if not args.skip_methods:
        rows += cam_method_rows(tv, model, variables, args, rng)
    if not args.skip_objectives:
        from benchmarks.bench_objectives import measure

        for name, (t, p) in measure("resnet50", args.am_size, args.am_steps,
                                    args.repeats).items():
            rows.append((f"Activation maximisation, Lucent's `{name}` objective, resnet50, "
                         f"{args.am_size}x{args.am_size} fft + standard transforms "
                         f"({args.am_steps} steps, runs/s)", f"{1 / t:.3f}", f"{1 / p:.3f}",
                         p / t, ">= 2x"))
    if not args.skip_am:
        for chunk, how in [(None, "one lax.scan"), (args.chunk, f"chunks of {args.chunk} unrolled steps")]:
            am_ours, am_theirs = bench_am(tv, model, variables, args.am_steps, args.repeats,
                                          chunk=chunk)
            rows.append((f"Activation maximisation ({how}), resnet50 layer4, 16 channels, "
                         f"128x128 fft + standard transforms (channel-steps/s, "
                         f"{args.am_steps} steps/run)",
                         f"{am_ours:.2f}", f"{am_theirs:.2f}", am_ours / am_theirs, ">= 2x"))
            print(f"maximize ({how}): ours {am_ours:.2f} channel-steps/s, torch-lucent "
                  f"{am_theirs:.2f}, ratio {am_ours / am_theirs:.2f}x")
    info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = render(args, info, rows)
    print(text)
    if not args.no_write:
        from benchmarks import write_section  # ROOT is on sys.path (top of this file)

        write_section(args.out, "Explain", text)
        print(f"wrote section 'Explain' of {args.out}")


def render(args, info: dict, rows: list) -> str:
    """The Explain section of BENCHMARKS.md."""
    lines = [
        "## Explain", "",
        f"`python benchmarks/bench_explain.py --repeats {args.repeats} --am-steps {args.am_steps}"
        f" --chunk {args.chunk} --cam-batch {args.cam_batch} --forward-batch "
        f"{args.forward_batch} --am-size {args.am_size}`"
        f" on {info['cpu']}, {info['cores']} cores ({info['platform']}), {info['date']}; "
        f"jax {info['jax']} ({info['jax_backend']}), torch {info['torch']} "
        f"({info['torch_threads']} threads), torchvision {info['torchvision']}, grad-cam "
        f"{info['grad-cam']}, torch-lucent {info['torch-lucent']}. Load average "
        f"{info['load']} at the start, {info['load_end']} at the end (the machine may have "
        "been shared). Same process, same random torchvision weights, warm-up first, "
        "alternating runs, medians.", "",
        "| measurement | resnet-jax | peer | ratio | target |",
        "|---|---:|---:|---:|---|",
    ]
    for name, ours, theirs, ratio, target in rows:
        lines.append(f"| {name} | {ours} | {theirs} | {ratio:.2f}x | {target} |")
    lines += ["", "Peers: pytorch-grad-cam `GradCAM(model, [model.layer4])` (its backward pass "
              "also computes every weight's gradient, which Grad-CAM does not need); "
              "torch-lucent `render_vis` with `param.image(128, batch=16)` and a sum of "
              "`channel('layer4', k, batch=k)` (its parameters keep requires_grad, as Lucent "
              "leaves them). Grad-CAM latency ratio is the peer's time over ours. The chunked "
              "row runs the same optimisation as jitted programs of a few unrolled steps "
              "instead of one lax.scan (`maximize(..., chunk=k)`). The other CAM methods: "
              "pytorch-grad-cam's class of the same name with `target_layers=[model.layer4]` "
              "(FullGrad: all bias layers), the ratio is the peer's time over ours; ScoreCAM "
              "and AblationCAM run one forward pass per layer4 channel (2,048) and image, so "
              "they are timed at a smaller batch, with the plain inference ratio of the same "
              "run as their bound. The objective rows: `benchmarks/bench_objectives.py`'s "
              "pairs, torch-lucent `render_vis` on the same weights.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
