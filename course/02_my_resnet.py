# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. The course's own ResNet, layer by layer
#
# **The slides claim:** "My ResNet" (a 7x7 stride-2 stem, a 3x3 stride-2 max-pool, one
# BasicBlock of 64 channels, one of 128 with stride 2, global average pooling and a
# 2-class linear head) turns a 224x224 image into
#
# | after | `conv1` | `maxpool` | `layer1` | `layer2` | `avgpool` | `fc` |
# |---|---|---|---|---|---|---|
# | torch shape | 1x64x**112**x112 | 1x64x**56**x56 | 1x64x**56**x56 | 1x128x**28**x28 | 1x**128**(x1x1) | 1x**2** |
#
# and prints itself as torchvision prints a model: each convolution's kernel, stride and
# padding, each BatchNorm's eps and momentum.
#
# The project's `my_resnet` is that model (with torchvision's BatchNorm and ReLU after the
# stem, which the slide's version leaves out). `resnet_jax.features` returns every named
# output in one forward pass, under torchvision's module names - the course's
# `model.layer1(out2)` cells in one call. JAX keeps images as NHWC, so a torch shape
# 1x64x112x112 is 1x112x112x64 here.

# %%
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import skimage.data
from PIL import Image

import resnet_jax
from resnet_jax import course, imagenet
from resnet_jax.models import BasicBlock, BatchNorm, Bottleneck
from resnet_jax.port.keys import module_to_torch

s = course.session(globals().get("__file__", "02_my_resnet.py"))

# %%
SLIDE = {"conv1": 112, "maxpool": 56, "layer1": 56, "layer2": 28, "avgpool": 128, "fc": 2}

model = resnet_jax.create_model("my_resnet")
variables = resnet_jax.init_variables(model, rng=0)
photo = Image.fromarray(skimage.data.chelsea())
x = imagenet.preprocess(photo)[None]  # 1x224x224x3, ImageNet mean/std
outs = resnet_jax.features(model, variables, x, names=list(SLIDE))
trace = {}
for name, a in outs.items():
    torch_shape = (a.shape[0], a.shape[-1], *a.shape[1:-1])  # NHWC -> NCHW
    trace[name] = a.shape[1] if a.ndim == 4 else a.shape[-1]
    print(f"{name:<8} jax {str(tuple(a.shape)):<20} torch {tuple(torch_shape)}")
print("slide's trace:", tuple(SLIDE.values()))
print("this model's: ", tuple(trace.values()))
print("logits:", np.asarray(outs["fc"]).round(4))
s.record(trace=trace, slide_trace=SLIDE, trace_matches_slide=trace == SLIDE,
         shapes={k: list(v.shape) for k, v in outs.items()})

# %% [markdown]
# ## The printout
#
# torchvision prints each registered module with its settings. A flax model builds its
# submodules while it runs, so we run it once on shapes only (`jax.eval_shape`) with
# `flax.linen.intercept_methods` recording every submodule call in order, and write
# each in torchvision's words. Functions that are not modules here (ReLU, the pools) are
# written where torchvision registers its modules.

# %%
def module_calls(model, shape):
    """Every submodule call of one forward pass: {path: (module, input shape)} in order."""
    calls = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            calls.setdefault(tuple(context.module.scope.path), (context.module, args[0].shape))
        return next_fun(*args, **kwargs)

    abstract = resnet_jax.abstract_variables(model)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), abstract,
                       jax.ShapeDtypeStruct(shape, jnp.float32))
    return calls


def describe(m, in_shape):
    """One module in torchvision's repr."""
    if isinstance(m, nn.Conv):
        (kh, kw), (sh, sw) = m.kernel_size, m.strides or (1, 1)
        pad = (0, 0) if m.padding == "VALID" else tuple(p[0] for p in m.padding)
        text = f"Conv2d({in_shape[-1]}, {m.features}, kernel_size=({kh}, {kw}), stride=({sh}, {sw})"
        text += f", padding=({pad[0]}, {pad[1]})" if any(pad) else ""
        text += f", groups={m.feature_group_count}" if m.feature_group_count != 1 else ""
        return text + ("" if m.use_bias else ", bias=False") + ")"
    if isinstance(m, BatchNorm):
        return (f"BatchNorm2d({in_shape[-1]}, eps={m.epsilon!r}, momentum={m.momentum!r}, "
                "affine=True, track_running_stats=True)")
    if isinstance(m, nn.Dense):
        return f"Linear(in_features={in_shape[-1]}, out_features={m.features}, bias={m.use_bias})"
    raise TypeError(f"no torch name for {type(m).__name__}")


RELU = "ReLU(inplace=True)"
MAXPOOL = "MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)"
AVGPOOL = "AdaptiveAvgPool2d(output_size=(1, 1))"


def block_lines(path, calls, depth):
    """A residual block's children, in the order torchvision registers them."""
    block = calls[path][0]
    kids = [p for p in calls if len(p) == len(path) + 1 and p[:-1] == path]
    pad = "  " * depth
    lines = []
    for p in kids:
        name = p[-1]
        if name == "downsample_0":
            lines.append(f"{pad}(downsample): Sequential(")
        if name.startswith("downsample"):
            lines.append(f"{pad}  ({name[-1]}): {describe(*calls[p])}")
        else:
            lines.append(f"{pad}({name}): {describe(*calls[p])}")
        last_bn = "bn3" if isinstance(block, Bottleneck) else "bn1"
        if name == last_bn:
            lines.append(f"{pad}(relu): {RELU}")
        if name == "downsample_1":
            lines.append(f"{pad})")
    return lines


def torch_repr(model, title="ResNet", image_size=224):
    """``model`` written as torchvision's ``print(model)`` writes a ResNet."""
    calls = module_calls(model, (1, image_size, image_size, model.in_channels))
    lines, stage = [f"{title}("], None
    for path, (m, in_shape) in calls.items():
        if len(path) != 1:
            continue
        name = path[0]
        if isinstance(m, (BasicBlock, Bottleneck)):
            layer, index = module_to_torch(name).split(".")
            if layer != stage:
                lines += ["  )"] if stage else []
                lines.append(f"  ({layer}): Sequential(")
                stage = layer
            lines.append(f"    ({index}): {type(m).__name__}(")
            lines += block_lines(path, calls, 3)
            lines.append("    )")
            continue
        if name == "fc":
            lines += (["  )"] if stage else []) + [f"  (avgpool): {AVGPOOL}"]
        lines.append(f"  ({name}): {describe(m, in_shape)}")
        if name == "bn1":
            lines.append(f"  (relu): {RELU}")
            if model.stem == "imagenet":
                lines.append(f"  (maxpool): {MAXPOOL}")
    return "\n".join(lines + [")"])


printout = torch_repr(model, "MyResNet")
print(printout)
s.save_text("my_resnet.txt", printout)

# %% [markdown]
# Is the printer faithful? For `resnet18`, torchvision can print its own model: the two
# texts must be the same, line for line (newer torch versions also write `bias=True` in
# BatchNorm2d's line, which the course's torch did not; that word is left out of the
# comparison).

# %%
ours18 = torch_repr(resnet_jax.create_model("resnet18"))
try:
    import torchvision

    theirs18 = str(torchvision.models.resnet18())
    # Recent torch also writes "bias=True" in BatchNorm2d's repr (the course's torch did not).
    theirs18 = theirs18.replace("affine=True, bias=True,", "affine=True,")
    same = ours18 == theirs18
    diff = [(a, b) for a, b in zip(ours18.splitlines(), theirs18.splitlines()) if a != b]
    print(f"resnet18: our printout equals torchvision's: {same} "
          f"({len(ours18.splitlines())} lines; {len(diff)} differ)")
    for a, b in diff[:5]:
        print("  ours:  ", a, "\n  theirs:", b)
except ImportError:
    same = None
    print("torchvision is not installed: the printout is not compared")
s.save_text("resnet18.txt", ours18)
s.record(printout_lines=len(printout.splitlines()), resnet18_repr_equals_torchvision=same)

# %% [markdown]
# ## The shapes, seen
#
# The picture follows the photo through the network (random weights: the point is the
# size of each map, not what it detects). Each tile is one stage's output, averaged over
# its channels and scaled to its own range; the caption gives the stage's shape.

# %%
def stage_maps(model, variables, x):
    names = ["conv1", "maxpool", "layer1", "layer2"]
    f = resnet_jax.features(model, variables, x, names=names)
    maps = {}
    for n in names:
        m = np.asarray(f[n][0]).mean(-1)
        maps[n] = (m - m.min()) / (np.ptp(m) + 1e-12)
    return maps


maps = stage_maps(model, variables, x)
fig, axes = plt.subplots(1, 5, figsize=(15, 3.6), layout="constrained")
course.show(axes[0], imagenet.denormalize(x[0]), "input 224 x 224 x 3")
for ax, (name, m) in zip(axes[1:], maps.items()):
    h, w, c = outs[name].shape[1:]
    im = course.show(ax, m, f"{name}: {h} x {w} x {c}", cmap="viridis", vmin=0, vmax=1)
fig.colorbar(im, ax=axes[1:], shrink=0.8, label="channel mean (each map scaled to [0, 1])")
fig.suptitle("my_resnet (random weights): each stage's output, drawn pixel for pixel")
s.save_figure(fig, "trace.png")

# %% [markdown]
# **What the numbers show:** the trace printed above is the slide's 112, 56, 56, 28,
# 128, 2: the stem's stride 2 and the max-pool's stride 2 take 224 to 56, layer1 keeps
# 56, layer2's stride-2 block halves it to 28 and doubles the channels to 128, the
# average pool leaves 128 numbers and the head 2 class scores. The printout lists each
# convolution's kernel, stride and padding and each BatchNorm's eps 1e-05 and momentum
# 0.1, the values torch uses; for resnet18 it is the same text as torchvision's own.
