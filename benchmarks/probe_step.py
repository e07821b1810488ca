"""This project's jitted train step alone (no torch in the process): images/s.

For A/B comparisons of XLA options across processes, where a same-process rotation with
torch would mix in the two libraries' interference (method: benchmarks/NOTES.md):

    python benchmarks/probe_step.py                      # resnet_jax's settings
    RESNET_JAX_XLA_FLAGS=0 python benchmarks/probe_step.py   # XLA's defaults
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args(argv)
    from resnet_jax import xla_cpu

    xla_cpu.configure()  # resnet_jax's settings (RESNET_JAX_XLA_FLAGS=0: XLA's defaults)
    from benchmarks import steps

    run, _, _ = steps.jax_train_step(args.arch, args.batch, args.size)
    run()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"{args.arch} train step, batch {args.batch}, {args.size}²: median "
          f"{args.batch / times[len(times) // 2]:.2f} img/s, best {args.batch / times[0]:.2f}")


if __name__ == "__main__":
    main()
