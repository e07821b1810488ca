"""Speed of the forward-only CAM methods (ScoreCAM, AblationCAM) against pytorch-grad-cam,
on the same machine, in the same process, on the same ported torchvision weights.

    python benchmarks/bench_cam_forward.py --batch 4 --size 112 --arch resnet18
    python benchmarks/bench_cam_forward.py --batch 32 --size 224 --arch resnet50  # the target

``measure(batch, size)`` -> (our seconds, pytorch-grad-cam's seconds) for one call on
``batch`` random images of ``size`` x ``size`` at ``layer`` (predicted classes). Ours is
timed after a first (compiling) call; the peer's first call is its timed one (it compiles
nothing), and the two maps are compared. Both run one forward pass per (image, channel)
pair: B x 2,048 at resnet50's layer4, so the full-size run takes hours on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEERS = {"scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}


def _models(arch: str, seed: int = 0):
    import torch
    import torchvision

    from resnet_jax.port import from_torch

    torch.manual_seed(seed)
    tv = torchvision.models.get_model(arch, weights=None).eval()
    model, variables = from_torch(tv)
    return tv, model, variables


def measure(batch: int, size: int, method: str = "scorecam", arch: str = "resnet50",
            layer: str = "layer4", forward_batch: int | None = None, seed: int = 0,
            verbose: bool = True) -> tuple[float, float]:
    """(our seconds, pytorch-grad-cam's seconds) for ``method`` on ``batch`` images."""
    import pytorch_grad_cam
    import torch

    from resnet_jax.explain import gradcam

    tv, model, variables = _models(arch, seed)
    x = np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    options = {} if forward_batch is None else {"forward_batch": forward_batch}
    cam = getattr(pytorch_grad_cam, PEERS[method])(tv, [tv.get_submodule(layer)])
    if forward_batch is not None:
        cam.batch_size = forward_batch

    def ours():
        return gradcam(model, variables, x, layer=layer, method=method, **options)

    t0 = time.perf_counter()
    ours()  # compiles
    t1 = time.perf_counter()
    mine = ours()
    t2 = time.perf_counter()
    with cam:
        theirs = cam(xt, targets=None)
    t3 = time.perf_counter()
    if verbose:
        print(f"{method} {arch} {layer} batch {batch} {size}px: ours {t2 - t1:.2f} s (first "
              f"call {t1 - t0:.2f} s), pytorch-grad-cam {t3 - t2:.2f} s, ratio "
              f"{(t3 - t2) / (t2 - t1):.2f}x, max |map diff| "
              f"{float(np.abs(mine - theirs).max()):.1e}", flush=True)
    return t2 - t1, t3 - t2


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--methods", nargs="*", default=list(PEERS))
    ap.add_argument("--forward-batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch's threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("load average at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    for m in args.methods:
        measure(args.batch, args.size, m, args.arch, args.layer, args.forward_batch)
    print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
