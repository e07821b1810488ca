#!/usr/bin/env python
"""Train a ResNet: ``python train.py [args]`` is ``resnet-jax train [args]``.

With no arguments it trains the course's ResNet on scikit-learn's handwritten digits.
"""

import gc
import sys

if __name__ == "__main__":
    # The collector stays off while jax and flax load (~110k objects that live as long
    # as the process); ``run`` freezes them and turns it back on (benchmarks/NOTES.md, 13a).
    gc.disable()
    from resnet_jax.cli import run

    sys.exit(run(["train", *sys.argv[1:]]))
