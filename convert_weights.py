#!/usr/bin/env python
"""Convert torchvision weights to a flax model directory, or back.

    python convert_weights.py --arch resnet18 --weights IMAGENET1K_V1 --out weights/resnet18 --verify
    python convert_weights.py --weights model.pth --out weights/mine          # arch inferred
    python convert_weights.py --to-torch weights/resnet18 --out resnet18.pth

Same as ``resnet-jax convert``.
"""

import sys

if __name__ == "__main__":
    try:  # Ctrl-C before the command starts: one line and status 130, no traceback
        from resnet_jax.cli import run
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(run(["convert", *sys.argv[1:]]))
