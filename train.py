#!/usr/bin/env python
"""Train a ResNet: ``python train.py [args]`` is ``resnet-jax train [args]``.

With no arguments it trains the course's ResNet on scikit-learn's handwritten digits.
"""

import sys

from resnet_jax.cli import run

if __name__ == "__main__":
    sys.exit(run(["train", *sys.argv[1:]]))
