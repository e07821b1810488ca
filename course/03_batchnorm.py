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
# # 3. BatchNorm, by hand and by the layer
#
# **The slide claims:** after each convolution, BatchNorm computes
#
# $$y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta$$
#
# per channel, with the mean and variance taken over the mini-batch (and every pixel);
# γ starts at 1 and β at 0. What the slide leaves out: in training mode the layer also
# keeps *running* statistics, `running = (1 - momentum) * running + momentum * batch`
# (torch's momentum 0.1; the running variance takes the unbiased batch variance), and
# in evaluation mode it uses those instead of the batch's.
#
# Here we compute all of that with numpy and compare it with
# `resnet_jax.models.BatchNorm` (and with `torch.nn.BatchNorm2d` when torch is there).

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

from resnet_jax import course
from resnet_jax.models import BatchNorm

s = course.session(globals().get("__file__", "03_batchnorm.py"))
EPS, MOMENTUM = 1e-5, 0.1
rng = np.random.default_rng(0)
C = 4
MEANS, STDS = np.array([0.0, 5.0, -2.0, 1.0]), np.array([1.0, 2.0, 0.5, 3.0])


def batch(n=16, size=8):
    """A mini-batch (N, H, W, C) whose channels have different means and spreads."""
    return (rng.standard_normal((n, size, size, C)) * STDS + MEANS).astype(np.float32)


layer = BatchNorm()
variables = layer.init(jax.random.key(0), batch(), train=False)
gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
beta = rng.normal(0, 0.3, C).astype(np.float32)
variables = {"params": {"scale": gamma, "bias": beta}, "batch_stats": variables["batch_stats"]}

# %% [markdown]
# ## Training mode: the batch's own statistics

# %%
def bn_by_hand(x, mean, var):
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


x = batch()
mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # biased, over N, H, W
y_hand = bn_by_hand(x, mean, var)
y_layer, updated = layer.apply(variables, x, train=True, mutable=["batch_stats"])
diff_train = float(np.max(np.abs(y_hand - np.asarray(y_layer))))
print("batch mean per channel  ", mean.round(3))
print("batch var per channel   ", var.round(3))
print(f"train mode: max |hand - layer| = {diff_train:.2e}")
print("output mean per channel ", np.asarray(y_layer).mean((0, 1, 2)).round(4), " (= beta", beta.round(4), ")")
print("output std per channel  ", np.asarray(y_layer).std((0, 1, 2)).round(4), " (~ gamma", gamma.round(4), ")")

# %% [markdown]
# ## Running statistics after a few steps, and evaluation mode

# %%
STEPS = 3
running_mean, running_var = np.zeros(C), np.ones(C)
v = variables
history = []
for _ in range(STEPS):
    xb = batch()
    n = xb.size // C
    running_mean = (1 - MOMENTUM) * running_mean + MOMENTUM * xb.mean((0, 1, 2))
    running_var = (1 - MOMENTUM) * running_var + MOMENTUM * xb.var((0, 1, 2)) * n / (n - 1)
    _, new = layer.apply(v, xb, train=True, mutable=["batch_stats"])
    v = {"params": v["params"], "batch_stats": new["batch_stats"]}
    history.append(xb)
stats = jax.tree_util.tree_map(np.asarray, v["batch_stats"])
diff_mean = float(np.max(np.abs(stats["mean"] - running_mean)))
diff_var = float(np.max(np.abs(stats["var"] - running_var)))
print(f"after {STEPS} steps: running mean {stats['mean'].round(4)}  by hand {running_mean.round(4)}")
print(f"after {STEPS} steps: running var  {stats['var'].round(4)}  by hand {running_var.round(4)}")
print(f"num_batches_tracked = {int(stats['num_batches_tracked'])}")

x_eval = batch()
y_eval_hand = bn_by_hand(x_eval, running_mean, running_var)
y_eval_layer = np.asarray(layer.apply(v, x_eval, train=False))
diff_eval = float(np.max(np.abs(y_eval_hand - y_eval_layer)))
print(f"eval mode: max |hand - layer| = {diff_eval:.2e}")
print(f"running mean max diff {diff_mean:.2e}, running var max diff {diff_var:.2e}")
s.record(diff_train=diff_train, diff_eval=diff_eval, diff_running_mean=diff_mean,
         diff_running_var=diff_var, steps=STEPS, num_batches_tracked=int(stats["num_batches_tracked"]))

# %% [markdown]
# ## The same steps in torch
#
# `torch.nn.BatchNorm2d` is the layer the course uses; fed the same batches (NCHW), it
# must end with the same running statistics and give the same outputs.

# %%
try:
    import torch

    tbn = torch.nn.BatchNorm2d(C, eps=EPS, momentum=MOMENTUM)
    with torch.no_grad():
        tbn.weight.copy_(torch.from_numpy(gamma))
        tbn.bias.copy_(torch.from_numpy(beta))
    tbn.train()
    for xb in history:
        tbn(torch.from_numpy(xb.transpose(0, 3, 1, 2)))
    tbn.eval()
    with torch.no_grad():
        y_torch = tbn(torch.from_numpy(x_eval.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    diff_torch = float(np.max(np.abs(y_torch - y_eval_layer)))
    diff_torch_stats = float(max(np.max(np.abs(tbn.running_mean.numpy() - stats["mean"])),
                                 np.max(np.abs(tbn.running_var.numpy() - stats["var"]))))
    print(f"torch: eval output max diff {diff_torch:.2e}, running statistics max diff {diff_torch_stats:.2e}")
except ImportError:
    diff_torch = diff_torch_stats = None
    print("torch is not installed: no comparison with torch.nn.BatchNorm2d")
s.record(diff_torch_eval=diff_torch, diff_torch_running=diff_torch_stats)

# %% [markdown]
# ## What it looks like
#
# Left: each channel of the input batch has its own mean and spread. Middle: after
# BatchNorm in training mode every channel has mean β and spread γ. Right: the running
# mean creeps towards each channel's true mean, a tenth of the remaining distance per
# step.

# %%
def running_curve(steps):
    r, out = np.zeros(C), [np.zeros(C)]
    for _ in range(steps):
        r = (1 - MOMENTUM) * r + MOMENTUM * batch().mean((0, 1, 2))
        out.append(r)
    return np.array(out)


curve = running_curve(s.pick(30, 60))
colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
for c in range(C):
    axes[0].hist(x[..., c].ravel(), bins=40, alpha=0.6, color=colors[c], label=f"channel {c}")
    axes[1].hist(np.asarray(y_layer)[..., c].ravel(), bins=40, alpha=0.6, color=colors[c],
                 label=f"channel {c}: beta {beta[c]:.2f}, gamma {gamma[c]:.2f}")
    axes[2].plot(curve[:, c], color=colors[c], label=f"channel {c} (true mean {MEANS[c]:g})")
    axes[2].axhline(MEANS[c], color=colors[c], ls=":", lw=1)
axes[0].set_title("input x: one batch, per channel")
axes[1].set_title("BatchNorm(x), training mode")
axes[2].set_title("running mean, momentum 0.1")
axes[2].set_xlabel("training step")
for ax in axes:
    ax.legend(fontsize=7)
fig.suptitle(f"BatchNorm by hand vs the layer: max difference {max(diff_train, diff_eval):.1e} "
             f"(train and eval), running statistics {max(diff_mean, diff_var):.1e}")
s.save_figure(fig, "batchnorm.png")

# %% [markdown]
# **What the numbers show:** the slide's formula, computed with numpy, equals the
# layer's output in training mode (batch statistics) and in evaluation mode (running
# statistics) to float32 rounding (differences of the order of 1e-6), and the running
# mean and variance after three steps are exactly the momentum-0.1 averages, with the
# unbiased variance, as torch keeps them (torch's own layer agrees to the same
# rounding). Normalised channels all have mean β and standard deviation γ whatever
# their scale before.
