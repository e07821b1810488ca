#!/usr/bin/env python
"""Train a ResNet: ``python train.py [args]`` is ``resnet-jax train [args]``.

With no arguments it trains the course's ResNet on scikit-learn's handwritten digits.
"""

import sys

if __name__ == "__main__":
    try:  # Ctrl-C while jax loads: one line and status 130, no traceback
        from resnet_jax.cli import run
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(run(["train", *sys.argv[1:]]))
