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
# # 1. BasicBlock and Bottleneck
#
# **The slides claim:** a residual block adds its input (the *shortcut*) to what its
# convolutions computed (the *residual branch*), then applies a ReLU. When the block
# changes the shape - a stride of 2 halves the height and width, or the number of
# channels changes - the shortcut is no longer the identity but a 1x1 convolution with
# the same stride followed by BatchNorm ("downsample"), so that the two can be added.
#
# Here we build the four cases with `resnet_jax.models.BasicBlock` and `Bottleneck`,
# run them on a 56x56 input, and read the shapes of the input, the residual branch (the
# output of the last BatchNorm), the shortcut and the output; then check that the output
# really is `relu(branch + shortcut)`.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

from resnet_jax import course
from resnet_jax.models import BasicBlock, Bottleneck

s = course.session(globals().get("__file__", "01_blocks.py"))

# %%
CASES = [  # (title, block, input channels)
    ("BasicBlock, stride 1", BasicBlock(64, stride=1), 64),
    ("BasicBlock, stride 2", BasicBlock(128, stride=2), 64),
    ("Bottleneck, stride 1", Bottleneck(64, stride=1), 256),
    ("Bottleneck, stride 2", Bottleneck(128, stride=2), 256),
]


def trace(block, channels, size=56, seed=0):
    """Shapes (NHWC) of input, residual branch, shortcut and output, and the largest
    difference between the output and relu(branch + shortcut)."""
    x = jax.random.normal(jax.random.key(seed), (1, size, size, channels))
    variables = block.init(jax.random.key(1), x, train=False)
    out, state = block.apply(variables, x, train=False, capture_intermediates=True,
                             mutable=["intermediates"])
    inter = state["intermediates"]
    last_bn = "bn3" if isinstance(block, Bottleneck) else "bn2"
    branch = inter[last_bn]["__call__"][0]
    downsample = "downsample_1" in inter
    shortcut = inter["downsample_1"]["__call__"][0] if downsample else x
    err = float(jnp.max(jnp.abs(out - jax.nn.relu(branch + shortcut))))
    convs = [k for k in variables["params"] if k.startswith("conv")]
    return dict(input=x.shape, branch=branch.shape, shortcut=shortcut.shape, output=out.shape,
                shortcut_kind="1x1 conv + BN" if downsample else "identity",
                branch_convs=len(convs), max_abs_diff=err)


rows = {title: trace(block, c) for title, block, c in CASES}
header = f"{'block':<22}{'input':<16}{'branch':<16}{'shortcut':<16}{'output':<16}shortcut is"
lines = [header, "-" * len(header)]
for title, r in rows.items():
    f = lambda t: "x".join(map(str, t))  # noqa: E731
    lines.append(f"{title:<22}{f(r['input']):<16}{f(r['branch']):<16}{f(r['shortcut']):<16}"
                 f"{f(r['output']):<16}{r['shortcut_kind']}")
table = "\n".join(lines)
print(table)
s.save_text("shapes.txt", table)
for title, r in rows.items():
    print(f"{title}: max |output - relu(branch + shortcut)| = {r['max_abs_diff']:.2e}")
s.record(blocks=rows)

# %% [markdown]
# The figure draws each block as its data flows: the input splits into the residual
# branch and the shortcut, which meet at the addition.

# %%
def box(ax, xy, text, color):
    ax.text(*xy, text, ha="center", va="center", fontsize=8,
            bbox=dict(boxstyle="round,pad=0.4", fc=color, ec="0.3"))


def draw_block(ax, title, r, block):
    f = lambda t: " x ".join(map(str, t[1:]))  # noqa: E731
    convs = ("conv 1x1, BN, ReLU\nconv 3x3, BN, ReLU\nconv 1x1, BN" if isinstance(block, Bottleneck)
             else "conv 3x3, BN, ReLU\nconv 3x3, BN")
    stride = block.stride
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    box(ax, (5, 9.2), f"input\n{f(r['input'])}", "#dde8f5")
    box(ax, (3, 5.6), f"residual branch (stride {stride})\n{convs}\n-> {f(r['branch'])}", "#f5e6cc")
    sc = "identity" if r["shortcut_kind"] == "identity" else f"1x1 conv stride {stride}, BN"
    box(ax, (8, 5.6), f"shortcut\n{sc}\n-> {f(r['shortcut'])}", "#e0f0dc")
    box(ax, (5, 1.0), f"add, ReLU -> output\n{f(r['output'])}", "#dde8f5")
    for x0, x1 in ((3, 8),):
        for (a, b) in (((5, 8.5), (x0, 7.1)), ((5, 8.5), (x1, 6.7)),
                       ((x0, 4.1), (5, 1.7)), ((x1, 4.5), (5, 1.7))):
            ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="->", color="0.3"))


fig, axes = plt.subplots(2, 2, figsize=(10, 8), layout="constrained")
for ax, (title, block, _) in zip(axes.ravel(), CASES):
    draw_block(ax, title, rows[title], block)
fig.suptitle("Residual blocks on a 56 x 56 input: shapes (H x W x C) read from the model")
s.save_figure(fig, "blocks.png")

# %% [markdown]
# **What the numbers show:** with stride 1 and unchanged channels the shortcut is the
# identity and every shape is the input's (56x56x64; the bottleneck's 56x56x256). With
# stride 2 the branch's first strided convolution (the 3x3 one in the bottleneck, as
# torchvision's "ResNet v1.5") halves the height and width to 28x28, and the shortcut's
# 1x1 stride-2 convolution brings the input to the same 28x28xC so they can be added.
# The bottleneck squeezes to `planes` channels inside and expands by 4 at the end
# (128 planes -> 512 output channels). The output equals `relu(branch + shortcut)` to the
# printed difference (0 or float rounding).
