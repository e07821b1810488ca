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
# # 6. What does the CNN learn? The filters of the second convolution
#
# **The slide claims:** in the course's digit CNN (28x28 input, 25 3x3 filters, max-pool,
# 50 3x3 filters, max-pool, a dense layer, 10 outputs) the second convolution gives 50
# maps of 11x11. Its k-th filter's degree of activation is
# $a^k = \sum_{i=1}^{11}\sum_{j=1}^{11} a^k_{ij}$, and gradient ascent on the input,
# $x^* = \arg\max_x a^k$, shows what the filter looks for: mostly strokes and textures,
# not whole digits.
#
# A filter that no training digit switches on (its ReLU output is 0 everywhere for every
# digit: a "dead" filter) has nothing to show; it is marked "dead" instead of drawn.
#
# We train the CNN on scikit-learn's handwritten digits enlarged to 28x28, maximise the
# first 14 filters (`resnet_jax.explain.maximize` with `objectives.channel("conv2", k)`,
# which is exactly $a^k$), and put beside each one the three training digits that
# activate it most (one batched forward pass over the training set with
# `resnet_jax.features`).

# %%
import matplotlib.pyplot as plt
import numpy as np

from resnet_jax import course
from resnet_jax.explain import evaluate, maximize
from resnet_jax.explain import objectives as O

s = course.session(globals().get("__file__", "06_filters.py"))
model, variables, (x_tr, y_tr, x_te, y_te), accuracy = course.trained_digit_cnn(s)
s.record(test_accuracy=accuracy)

# %% [markdown]
# ## The training digits that activate each filter most

# %%
K = 14
acts = course.unit_activations(model, variables, x_tr, "conv2")  # (N, 50): a^k per image
top = course.strongest(acts, range(K), n=3)
dead = [k for k in range(K) if acts[:, k].max() <= 0]
print(f"a^k over {len(x_tr)} training digits; filters that no digit activates: {dead or 'none'}")

# %% [markdown]
# ## The inputs that activate each filter most
#
# Pixels start as noise and move by gradient ascent (Adam), kept in [0, 1] (0 = no ink)
# after every step.

# %%
objective = O.channel("conv2", range(K))
steps = s.pick(150, 400)
images, history = maximize(model, variables, objective, steps=steps, lr=0.05, seed=0,
                           return_values=True)
a_star = evaluate(model, variables, objective, images)
best_real = np.array([acts[top[k][0], k] for k in range(K)])
for k in range(K):
    print(f"filter {k:2d}: a(x*) = {a_star[k]:8.1f}   best training digit a = {best_real[k]:7.1f}"
          f"   (digit {y_tr[top[k][0]]})")
beats = [bool(a_star[k] > best_real[k]) for k in range(K)]
s.record(filters=K, steps=steps, dead=dead, a_optimised=a_star, a_best_real=best_real,
         optimised_beats_real=beats)

# %%
def filter_figure(images, a_star, acts, top, title):
    """Seven rows of two filters: the optimised input, then its three strongest digits."""
    rows, per_row = 7, 2
    fig, axes = plt.subplots(rows, 4 * per_row, figsize=(13, 13.5), layout="constrained")
    for k in range(K):
        r, c0 = k % rows, 4 * (k // rows)
        ax = axes[r, c0]
        label = "dead" if k in dead else f"a = {a_star[k]:.0f}"
        course.show(ax, images[k], f"filter {k}: x*\n{label}")
        for j, i in enumerate(top[k]):
            ax = axes[r, c0 + 1 + j]
            if k in dead:  # every digit gives a = 0: no "strongest" digit to show
                ax.axis("off")
                ax.set_title("no digit\nactivates it" if j == 0 else "", fontsize=8)
            else:
                course.show(ax, x_tr[i], f"digit {y_tr[i]}\na = {acts[i, k]:.0f}")
    fig.suptitle(title)
    return fig


fig = filter_figure(images, a_star, acts, top,
                    "conv2 filters 0-13 of the digit CNN: the input x* that maximises "
                    "a^k (left of each group), then the 3 training digits with the largest a^k")
s.save_figure(fig, "filters.png")

# %% [markdown]
# **What the numbers show:** each optimised input drives its filter's $a^k$ far above
# what the best of the training digits reaches (printed above: the optimised value
# against the best real one). The optimised inputs are repeated local patterns -
# oriented strokes, edges, blobs tiled over the whole image, since $a^k$ sums over all
# 11x11 positions - while the strongest real digits show which part of a digit the
# filter likes (for instance the round strokes of 0s, 6s and 8s, or vertical strokes of
# 1s and 4s). The second layer detects parts, not digits.
