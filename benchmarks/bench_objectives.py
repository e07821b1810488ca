"""Speed of activation maximisation with Lucent's objectives, against torch-lucent.

One objective of each kind that ``resnet_jax.explain.objectives`` shares with
torch-lucent 0.1.8 (direction, direction_neuron, neuron_weight, channel_weight,
channel_interpolate, diversity, alignment), on a torchvision ResNet with random weights
ported with ``port.from_torch``: the same Fourier images with decorrelated colour,
Lucent's standard transforms, ImageNet normalisation, Adam 0.05 and number of steps on
both sides; ours is the compiled program of ``make_maximizer`` (compilation excluded:
warmed up first), theirs ``render.render_vis``. Timed alternately in one process, the
median of the repeats.

    python benchmarks/bench_objectives.py [--arch resnet50] [--size 224] [--steps 4]
        [--repeats 3] [--only direction,diversity]

``measure(...)`` returns ``{name: (ours_s, lucent_s)}`` for a caller that writes tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMES = ("direction", "direction_neuron", "neuron_weight", "channel_weight",
         "channel_interpolate", "diversity", "alignment")


def objective_pairs(layer: str, other: str, channels: int, rng) -> dict:
    """{name: (ours, lucent's, batch)}: each kind as Lucent's docs use it, on ``layer``
    (``other``: the second layer of the interpolation)."""
    import torch
    from lucent.optvis import objectives as L

    from resnet_jax.explain import objectives as O

    d = rng.standard_normal(channels).astype(np.float32)
    w = rng.standard_normal(channels).astype(np.float32)
    td, tw = torch.from_numpy(d), torch.from_numpy(w)
    ci = (O.channel_interpolate(layer, 5, other, 7), L.channel_interpolate(layer, 5, other, 7))
    return {
        "direction": (O.direction(layer, d), L.direction(layer, td), 1),
        "direction_neuron": (O.direction_neuron(layer, d), L.direction_neuron(layer, td), 1),
        "neuron_weight": (O.neuron_weight(layer, w), L.neuron_weight(layer, tw), 1),
        "channel_weight": (O.channel_weight(layer, w), L.channel_weight(layer, tw), 1),
        "channel_interpolate": (*ci, 4),
        "diversity": (O.channel(layer, [5] * 4, reduce="mean") - 1e2 * O.diversity(layer),
                      L.channel(layer, 5) - 1e2 * L.diversity(layer), 4),
        "alignment": (ci[0] + 0.1 * O.alignment(layer), ci[1] + 0.1 * L.alignment(layer), 4),
    }


def measure(arch: str = "resnet50", size: int = 224, steps: int = 4, repeats: int = 3,
            names=NAMES, chunk: int | None = None, seed: int = 0) -> dict:
    """{name: (our seconds, torch-lucent's seconds)} for ``steps`` steps of each objective.
    Images smaller than 224 are upsampled to 224 on both sides, as Lucent does."""
    import jax
    import torch
    import torchvision
    from lucent.optvis import param, render

    from benchmarks.bench_explain import alternate
    from resnet_jax.explain import make_maximizer
    from resnet_jax.explain import transforms as T
    from resnet_jax.port import from_torch

    torch.manual_seed(seed)
    tv = torchvision.models.get_model(arch, weights=None).eval()
    model, variables = from_torch(tv)
    layer_channels = int(tv.layer3[-1].conv1.in_channels)  # layer3's output channels
    pairs = objective_pairs("layer3", "layer4", layer_channels, np.random.default_rng(seed))
    out = {}
    for name in names:
        ours_obj, theirs_obj, batch = pairs[name]
        run = make_maximizer(model, ours_obj, steps, batch=batch, image_size=size,
                             param="fourier", transforms=T.standard_transforms(
                                 224 if size < 224 else None), lr=0.05, chunk=chunk)
        key = jax.random.key(seed)

        def ours(run=run, key=key):
            jax.block_until_ready(run(variables, key))

        def theirs(obj=theirs_obj, batch=batch):
            render.render_vis(tv, obj, lambda: param.image(size, batch=batch),
                              thresholds=(steps,), show_image=False, progress=False)

        out[name] = alternate(ours, theirs, repeats)
        t, p = out[name]
        print(f"{name} ({arch}, {size} px, batch {batch}, {steps} steps): ours {t:.2f} s, "
              f"torch-lucent {p:.2f} s, ratio {p / t:.2f}x", flush=True)
    return out


def bare_step(arch: str = "resnet50", size: int = 224, batches=(1, 4), repeats: int = 3,
              seed: int = 0) -> dict:
    """{batch: (our seconds, torch's seconds)} for one bare forward and backward pass to the
    input of ``batch`` images (the sum of the logits), nothing else: the work under every
    optimisation step of either side, the torch side with its weights requiring gradients
    as torch-lucent leaves them. Their ratio bounds the ratio of the optimisations."""
    import jax
    import torch
    import torchvision

    from benchmarks.bench_explain import alternate
    from resnet_jax.port import from_torch

    torch.manual_seed(seed)
    tv = torchvision.models.get_model(arch, weights=None).eval()
    model, variables = from_torch(tv)
    grad = jax.jit(jax.grad(lambda x: model.apply(variables, x, train=False).sum()))
    out = {}
    for batch in batches:
        x = np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

        def ours(x=x):
            jax.block_until_ready(grad(x))

        def theirs(xt=xt):
            xi = xt.clone().requires_grad_(True)
            tv(xi).sum().backward()

        out[batch] = t, p = alternate(ours, theirs, repeats)
        print(f"bare forward+backward to the input ({arch}, {size} px, batch {batch}): ours "
              f"{t:.3f} s, torch {p:.3f} s, ratio {p / t:.2f}x", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated objective names")
    ap.add_argument("--bare", action="store_true",
                    help="also time one bare forward+backward to the input (the bound)")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else NAMES
    bad = [n for n in names if n not in NAMES]
    if bad:
        ap.error(f"unknown objective(s) {bad}; choose from {', '.join(NAMES)}")
    from benchmarks.bench_explain import machine_info

    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, load {info['load']}, jax {info['jax']}, "
          f"torch {info['torch']} ({info['torch_threads']} threads)", flush=True)
    if args.bare:
        bare_step(args.arch, args.size, repeats=args.repeats)
    measure(args.arch, args.size, args.steps, args.repeats, names, args.chunk)


if __name__ == "__main__":
    main()
