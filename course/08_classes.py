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
# # 8. The output classes, without and with the L1 prior
#
# **The slides claim:** maximising a class score, $x^* = \arg\max_x y^i$, does not give
# a digit: the network is confidently fooled by ink everywhere ("Deep Neural Networks are
# Easily Fooled"). Adding a prior that most pixels have *no ink*,
# $x^* = \arg\max_x \left(y^i - \lambda\sum_{ij}|x_{ij}|\right)$, forces most pixels to 0
# and the images come closer to digits.
#
# Same digit CNN as slides 6 and 7. Pixels live in [0, 1] with 0 = no ink (the digits'
# background), so the L1 prior's zero is "no ink". We sweep λ and print under each image
# its class probability and its ink (the fraction of pixels above 0.05). As a measure of
# "digit-like" we use the correlation of the image with the mean training digit of its
# class.

# %%
import matplotlib.pyplot as plt
import numpy as np

from resnet_jax import course
from resnet_jax.explain import maximize
from resnet_jax.explain import objectives as O

s = course.session(globals().get("__file__", "08_classes.py"))
model, variables, (x_tr, y_tr, x_te, y_te), accuracy = course.trained_digit_cnn(s)

# %%
LAMBDAS = s.pick([0.0, 0.05, 0.1, 0.2], [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.5])
INK = 0.05  # a pixel has ink above this value
steps = s.pick(150, 400)
# One batch: 10 classes for each lambda, optimised together in one compiled program.
objective = O.stack([O.class_logit(range(10)) - lam * O.l1() if lam else O.class_logit(range(10))
                     for lam in LAMBDAS])
images = maximize(model, variables, objective, steps=steps, lr=0.05, seed=0)
images = images.reshape(len(LAMBDAS), 10, *images.shape[1:])
probs = course.predict(model, variables, images.reshape(-1, 28, 28, 1)).reshape(len(LAMBDAS), 10, 10)
p_class = probs[:, np.arange(10), np.arange(10)]
ink = (images > INK).mean(axis=(2, 3, 4))
means = np.stack([x_tr[y_tr == c].mean(0) for c in range(10)])


def corr(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


likeness = np.array([[corr(images[i, c], means[c]) for c in range(10)] for i in range(len(LAMBDAS))])
print(f"{'lambda':>7} {'min p(class)':>13} {'mean ink':>9} {'digit-likeness':>15}")
for i, lam in enumerate(LAMBDAS):
    print(f"{lam:7.2f} {p_class[i].min():13.3f} {ink[i].mean():9.1%} {likeness[i].mean():15.3f}")

# %% [markdown]
# Which λ gives the most digit-like images? Among the weights whose images are all
# still classified as their class with probability above 0.9, the one with the highest
# mean correlation with the class means.

# %%
ok = [i for i in range(len(LAMBDAS)) if p_class[i].min() > 0.9 and LAMBDAS[i] > 0]
best = max(ok, key=lambda i: likeness[i].mean()) if ok else None
if best is not None:
    print(f"most digit-like: lambda = {LAMBDAS[best]} (correlation {likeness[best].mean():.3f} "
          f"against {likeness[0].mean():.3f} without the prior; ink {ink[best].mean():.1%} "
          f"against {ink[0].mean():.1%})")
else:
    print("no lambda keeps every class above probability 0.9")
# The slide's point in numbers: the smallest weight that at least halves the ink while
# every class image keeps probability above 0.9.
halving = [i for i in ok if ink[i].sum() <= 0.5 * ink[0].sum()]
halving = halving[0] if halving else None
if halving is not None:
    print(f"lambda = {LAMBDAS[halving]} halves the ink ({ink[halving].mean():.1%} against "
          f"{ink[0].mean():.1%}), every class still above p = {p_class[halving].min():.3f}")
s.record(halving_lambda=None if halving is None else LAMBDAS[halving],
         ink_ratio_halving=None if halving is None else float(ink[halving].sum() / ink[0].sum()),
         min_p_halving=None if halving is None else float(p_class[halving].min()),
         min_p_plain=float(p_class[0].min()))
s.record(test_accuracy=accuracy, steps=steps, lambdas=LAMBDAS, p_class=p_class, ink=ink,
         likeness=likeness, best_lambda=None if best is None else LAMBDAS[best],
         ink_ratio_best=None if best is None else float(ink[best].sum() / ink[0].sum()))

# %%
def class_figure(rows, title):
    fig, axes = plt.subplots(len(rows), 10, figsize=(13, 1.75 * len(rows) + 0.6),
                             layout="constrained", squeeze=False)
    for r, i in enumerate(rows):
        for c in range(10):
            ax = axes[r, c]
            course.show(ax, images[i, c], f"class {c}\np {p_class[i, c]:.2f}, ink {ink[i, c]:.0%}")
        axes[r, 0].set_ylabel(f"lambda {LAMBDAS[i]:g}", fontsize=10)
    fig.suptitle(title)
    return fig


pair = [0, best if best is not None else len(LAMBDAS) - 1]
s.save_figure(class_figure(pair, "Class scores maximised: y_i (top) and y_i - lambda * sum|x| "
                                 f"(bottom, lambda {LAMBDAS[pair[1]]:g})"), "classes.png")
s.save_figure(class_figure(range(len(LAMBDAS)), "The L1 weight lambda swept: each row "
                           "maximises y_i - lambda * sum|x| (p: class probability; ink: "
                           "pixels above 0.05)"), "l1_sweep.png")

# %% [markdown]
# **What the numbers show:** without the prior every class image is classified as its
# class with probability close to 1 yet covers a large part of the image with ink in no
# digit's shape. With the L1 prior most pixels go to exactly 0 and the ink falls several
# times; up to a weight the class probability stays above 0.9, beyond it the image
# empties and the network is no longer sure. The printed table names the λ whose images
# correlate best with the real digits of their class; strokes appear where the class's
# digits have them, but they are still fragments, not handwriting.
