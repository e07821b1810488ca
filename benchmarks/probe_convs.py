"""Per-convolution times of ResNet-18's shapes at batch 32, in ms: forward, input gradient
(dx) and kernel gradient (dw), JAX (the models' convolution with the train step's gradient
rules) against torch's
``aten.convolution_backward`` in the same process. Prefix ``XLA_FLAGS=...`` to try other
XLA convolution back ends (the method is in benchmarks/NOTES.md).

    python benchmarks/probe_convs.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH = 32
# name, spatial size, in channels, out channels, kernel, stride, padding
SHAPES = [("stem", 224, 3, 64, 7, 2, 3), ("56 64-64", 56, 64, 64, 3, 1, 1),
          ("56-28 64-128", 56, 64, 128, 3, 2, 1), ("28 128", 28, 128, 128, 3, 1, 1),
          ("28-14 128-256", 28, 128, 256, 3, 2, 1), ("14 256", 14, 256, 256, 3, 1, 1),
          ("14-7 256-512", 14, 256, 512, 3, 2, 1), ("7 512", 7, 512, 512, 3, 1, 1),
          ("ds 56-28 1x1", 56, 64, 128, 1, 2, 0)]


def best_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def jax_times(hw, ci, co, k, s, p) -> list[float]:
    import jax
    import jax.numpy as jnp

    from resnet_jax import ops

    def conv(x, w):  # the convolution the train step runs on the CPU (ops.cpu_fast)
        return ops.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x = jax.random.normal(jax.random.key(0), (BATCH, hw, hw, ci))
    w = jax.random.normal(jax.random.key(1), (k, k, ci, co)) * 0.05
    g = jnp.ones_like(conv(x, w))
    fwd = jax.jit(conv)
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
    return [best_ms(lambda: fwd(x, w).block_until_ready()),
            best_ms(lambda: dx(x, w, g).block_until_ready()),
            best_ms(lambda: dw(x, w, g).block_until_ready())]


def torch_times(hw, ci, co, k, s, p) -> list[float]:
    import torch

    x = torch.randn(BATCH, ci, hw, hw)
    w = torch.randn(co, ci, k, k) * 0.05
    g = torch.ones_like(torch.nn.functional.conv2d(x, w, stride=s, padding=p))

    def backward(mask):
        return torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [p, p], [1, 1],
                                                   False, [0, 0], 1, mask)

    with torch.no_grad():
        return [best_ms(lambda: torch.nn.functional.conv2d(x, w, stride=s, padding=p)),
                best_ms(lambda: backward([True, False, False])),
                best_ms(lambda: backward([False, True, False]))]


def main():
    from resnet_jax import xla_cpu

    xla_cpu.configure()  # the CLI's CPU tuning, before JAX starts
    import torch

    torch.set_num_threads(2)
    total = np.zeros(6)
    for name, *shape in SHAPES:
        tj, tt = jax_times(*shape), torch_times(*shape)
        total += np.array(tj + tt)
        print(f"{name:16s} jax fwd/dx/dw {tj[0]:6.1f} {tj[1]:6.1f} {tj[2]:6.1f}   "
              f"torch {tt[0]:6.1f} {tt[1]:6.1f} {tt[2]:6.1f}", flush=True)
    print("sums (jax fwd, dx, dw, torch fwd, dx, dw):", total.round(1))


if __name__ == "__main__":
    main()
