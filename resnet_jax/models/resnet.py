"""The ResNet family (He et al. 2016), laid out and named as torchvision's resnet.py.

Module names mirror torchvision's state-dict keys (``layer1.0.conv1`` is the flax module
``layer1_0/conv1``) so the porter maps keys by rule, and every named output
(``conv1, bn1, relu, maxpool, layer1.0, ..., layer4, avgpool, fc``) is published with
``tap`` so it can be read or differentiated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .layers import BatchNorm, Tap, conv, torch_default_init

Dtype = Any

# The ops a model computes with, as fields (``conv``, ``pool``, ``act``): lax's and flax's
# by default; ``resnet_jax.ops.cpu_fast(model)`` or ``model.clone(act=...)`` choose others.
DEFAULT_CONV: Callable = jax.lax.conv_general_dilated
DEFAULT_POOL: Callable = nn.max_pool
DEFAULT_ACT: Callable = nn.relu


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut; ``planes * expansion`` outputs.

    ``conv`` computes the convolutions (``nn.Conv(conv_general_dilated=...)``) and
    ``act`` is every ReLU; ``pool`` is unused (a field for a uniform block signature).
    """

    planes: int
    stride: int = 1
    groups: int = 1
    base_width: int = 64
    zero_init_residual: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    conv: Callable = DEFAULT_CONV
    pool: Callable = DEFAULT_POOL
    act: Callable = DEFAULT_ACT

    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.groups != 1 or self.base_width != 64:
            raise ValueError(
                "BasicBlock supports only groups=1 and width_per_group=64, "
                f"got groups={self.groups}, width_per_group={self.base_width}; "
                "use block='bottleneck' for ResNeXt and Wide ResNet"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ckw = dict(kw, conv_general_dilated=self.conv)
        out_features = self.planes * self.expansion
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        out = conv(self.planes, 3, self.stride, name="conv1", **ckw)(x)
        out = self.act(BatchNorm(name="bn1", **kw)(out, train))
        out = conv(out_features, 3, name="conv2", **ckw)(out)
        out = BatchNorm(name="bn2", scale_init=last_scale, **kw)(out, train)
        return self.act(out + _shortcut(self, x, out_features, train, kw))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride: ResNet v1.5), 1x1 expand to
    ``planes * expansion``. Fields ``conv``, ``pool``, ``act`` as ``BasicBlock``'s."""

    planes: int
    stride: int = 1
    groups: int = 1
    base_width: int = 64
    zero_init_residual: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    conv: Callable = DEFAULT_CONV
    pool: Callable = DEFAULT_POOL
    act: Callable = DEFAULT_ACT

    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ckw = dict(kw, conv_general_dilated=self.conv)
        width = int(self.planes * (self.base_width / 64.0)) * self.groups
        out_features = self.planes * self.expansion
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        out = conv(width, 1, name="conv1", **ckw)(x)
        out = self.act(BatchNorm(name="bn1", **kw)(out, train))
        out = conv(width, 3, self.stride, self.groups, name="conv2", **ckw)(out)
        out = self.act(BatchNorm(name="bn2", **kw)(out, train))
        out = conv(out_features, 1, name="conv3", **ckw)(out)
        out = BatchNorm(name="bn3", scale_init=last_scale, **kw)(out, train)
        return self.act(out + _shortcut(self, x, out_features, train, kw))


def _shortcut(block: nn.Module, x, out_features: int, train: bool, kw: dict):
    """Identity, or 1x1 conv + BN exactly when torchvision uses one."""
    if block.stride == 1 and x.shape[-1] == out_features:
        return x
    # Bound to the calling block's scope, so the names are the block's own.
    y = nn.Conv(
        out_features, (1, 1), strides=(block.stride, block.stride), padding="VALID",
        use_bias=False, kernel_init=conv(1, 1).kernel_init,
        conv_general_dilated=block.conv, parent=block,
        name="downsample_0", **kw,
    )(x)
    return BatchNorm(parent=block, name="downsample_1", **kw)(y, train)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
STEMS = ("imagenet", "small")


class ResNet(nn.Module, Tap):
    """A ResNet: stem, stages of residual blocks, global average pool, linear head.

    Attributes:
      block: ``"basic"`` or ``"bottleneck"``.
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for resnet18.
      stage_widths: planes of each stage (the block's output is planes * expansion).
      num_classes: size of the linear head.
      groups, width_per_group: ResNeXt cardinality and Wide ResNet width.
      zero_init_residual: start each block's last BatchNorm scale at 0.
      stem: ``"imagenet"`` (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) or ``"small"``
        (3x3/1 conv, BN, ReLU, no pool) for 8x8 to 64x64 inputs.
      in_channels: channels of the input images (3 for RGB, 1 for grayscale).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay in ``param_dtype``
        and BatchNorm statistics in float32.
      conv, pool, act: the ops it computes with, passed on to every block: the
        convolution (as ``jax.lax.conv_general_dilated``), the stem's max-pool (as
        ``flax.linen.max_pool``) and every ReLU (as ``flax.linen.relu``). Not saved with
        the model; ``resnet_jax.ops.cpu_fast(model)`` swaps in the CPU-fast ones and
        ``model.clone(act=guided_relu)`` a modified ReLU.
    """

    block: str = "basic"
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    num_classes: int = 1000
    groups: int = 1
    width_per_group: int = 64
    zero_init_residual: bool = False
    stem: str = "imagenet"
    in_channels: int = 3
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    conv: Callable = DEFAULT_CONV
    pool: Callable = DEFAULT_POOL
    act: Callable = DEFAULT_ACT

    @nn.compact
    def __call__(self, x, train: bool = False):
        """Logits for NHWC images ``x``; ``train`` selects batch statistics in BatchNorm."""
        if self.block not in BLOCKS:
            raise ValueError(f"unknown block {self.block!r}; expected one of {sorted(BLOCKS)}")
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; expected one of {list(STEMS)}")
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"expected NHWC images with {self.in_channels} channels, got shape {x.shape}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ops = dict(conv=self.conv, pool=self.pool, act=self.act)
        block_cls = BLOCKS[self.block]
        x = x.astype(self.dtype or x.dtype)

        first = self.stage_widths[0]
        if self.stem == "imagenet":
            stem = conv(first, 7, 2, name="conv1", conv_general_dilated=self.conv, **kw)
        else:
            stem = conv(first, 3, 1, name="conv1", conv_general_dilated=self.conv, **kw)
        x = self.tap("conv1", stem(x))
        x = self.tap("bn1", BatchNorm(name="bn1", **kw)(x, train))
        x = self.tap("relu", self.act(x))
        if self.stem == "imagenet":
            # torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1): pads with -inf.
            x = self.tap("maxpool", self.pool(x, (3, 3), strides=(2, 2),
                                              padding=((1, 1), (1, 1))))

        for i, (blocks, planes) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            for j in range(blocks):
                x = block_cls(
                    planes,
                    stride=2 if (i > 0 and j == 0) else 1,
                    groups=self.groups,
                    base_width=self.width_per_group,
                    zero_init_residual=self.zero_init_residual,
                    name=f"layer{i + 1}_{j}",
                    **kw,
                    **ops,
                )(x, train)
                x = self.tap(f"layer{i + 1}.{j}", x)
            x = self.tap(f"layer{i + 1}", x)

        x = self.tap("avgpool", jnp.mean(x.astype(jnp.float32), axis=(1, 2)))
        kernel_init, bias_init = torch_default_init(x.shape[-1])
        x = nn.Dense(
            self.num_classes, kernel_init=kernel_init, bias_init=bias_init,
            param_dtype=self.param_dtype, name="fc",
        )(x)
        return self.tap("fc", x)
