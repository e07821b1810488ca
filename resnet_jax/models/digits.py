"""The course's small digit CNN, used to ask "what does the CNN learn?" on MNIST-like data.

On a 28x28x1 input: conv 25 3x3 (26x26x25), max-pool 2 (13x13x25), conv 50 3x3
(11x11x50: the "50 x 11 x 11" whose filters the course maximises), max-pool 2 (5x5x50),
flatten (1250), a hidden dense layer, and the output layer of class scores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .layers import Tap, torch_default_init
from .resnet import DEFAULT_ACT, DEFAULT_CONV, DEFAULT_POOL

Dtype = Any


class DigitCNN(nn.Module, Tap):
    """Named outputs: conv1, pool1, conv2, pool2, flatten, hidden, fc (the logits).

    ``conv``, ``pool`` and ``act`` are the ops it computes with, as ``ResNet``'s.
    """

    num_classes: int = 10
    hidden: int = 100
    in_channels: int = 1
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    conv: Callable = DEFAULT_CONV
    pool: Callable = DEFAULT_POOL
    act: Callable = DEFAULT_ACT

    @nn.compact
    def __call__(self, x, train: bool = False):
        """Logits for NHWC images ``x``. ``train`` is accepted for a uniform signature."""
        del train  # no dropout or BatchNorm
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"expected NHWC images with {self.in_channels} channels, got shape {x.shape}"
            )
        def kw(fan_in):  # torch's default initialisation of Conv2d and Linear
            k, b = torch_default_init(fan_in)
            return dict(kernel_init=k, bias_init=b, dtype=self.dtype, param_dtype=self.param_dtype)

        x = x.astype(self.dtype or x.dtype)
        conv1 = nn.Conv(25, (3, 3), padding="VALID", name="conv1",
                        conv_general_dilated=self.conv, **kw(9 * x.shape[-1]))
        x = self.tap("conv1", self.act(conv1(x)))
        x = self.tap("pool1", self.pool(x, (2, 2), strides=(2, 2)))
        conv2 = nn.Conv(50, (3, 3), padding="VALID", name="conv2",
                        conv_general_dilated=self.conv, **kw(9 * x.shape[-1]))
        x = self.tap("conv2", self.act(conv2(x)))
        x = self.tap("pool2", self.pool(x, (2, 2), strides=(2, 2)))
        x = self.tap("flatten", x.reshape(x.shape[0], -1))
        hidden = nn.Dense(self.hidden, name="hidden", **kw(x.shape[-1]))
        x = self.tap("hidden", self.act(hidden(x)))
        x = nn.Dense(self.num_classes, name="fc", **kw(x.shape[-1]))(x).astype(jnp.float32)
        return self.tap("fc", x)
