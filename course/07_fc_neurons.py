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
# # 7. The neurons of the fully connected layer
#
# **The slide claims:** a neuron $j$ of the dense layer after the convolutions sees the
# whole image, so the input that maximises it, $x^* = \arg\max_x a^j$, is no longer a
# repeated texture but a larger pattern ("each figure corresponds to a neuron").
#
# Same digit CNN as slide 6 (trained once, kept in the output folder); objective
# `objectives.neuron("hidden", j)` for the first 9 neurons that some training digit
# switches on (a ReLU neuron that no digit activates - a "dead" one - has a zero gradient
# and nothing to show; how many there are is printed), and beside each the two training
# digits that activate it most.

# %%
import matplotlib.pyplot as plt
import numpy as np

from resnet_jax import course
from resnet_jax.explain import evaluate, maximize
from resnet_jax.explain import objectives as O

s = course.session(globals().get("__file__", "07_fc_neurons.py"))
model, variables, (x_tr, y_tr, x_te, y_te), accuracy = course.trained_digit_cnn(s)

# %%
J = 9
acts = course.unit_activations(model, variables, x_tr, "hidden")  # (N, 100)
dead = [j for j in range(acts.shape[1]) if acts[:, j].max() <= 0]
units = [j for j in range(acts.shape[1]) if j not in dead][:J]
print(f"{len(dead)} of the {acts.shape[1]} neurons never fire on a training digit "
      f"({[j for j in dead if j < units[-1]]} among the first ones); showing neurons {units}")
top = course.strongest(acts, units, n=2)
objective = O.neuron("hidden", units)
steps = s.pick(150, 400)
images = maximize(model, variables, objective, steps=steps, lr=0.05, seed=0)
a_star = evaluate(model, variables, objective, images)
best_real = np.array([acts[top[j][0], j] for j in units])
for i, j in enumerate(units):
    print(f"neuron {j}: a(x*) = {a_star[i]:7.2f}   best training digit a = {best_real[i]:6.2f} "
          f"(digit {y_tr[top[j][0]]})")
s.record(test_accuracy=accuracy, neurons=units, steps=steps, dead=dead, a_optimised=a_star,
         a_best_real=best_real, optimised_beats_real=[bool(a > b) for a, b in zip(a_star, best_real)])

# %%
fig, axes = plt.subplots(3, 9, figsize=(13, 5.6), layout="constrained")
for i, j in enumerate(units):
    r, c0 = divmod(i, 3)
    course.show(axes[r, 3 * c0], images[i], f"neuron {j}: x*\na = {a_star[i]:.1f}")
    for m, n in enumerate(top[j]):
        course.show(axes[r, 3 * c0 + 1 + m], x_tr[n], f"digit {y_tr[n]}\na = {acts[n, j]:.1f}")
fig.suptitle(f"The first 9 live neurons of the dense layer ({len(dead)} of {acts.shape[1]} never "
             "fire): the input x* that maximises each, then the 2 digits that activate it most")
s.save_figure(fig, "fc_neurons.png")

# %% [markdown]
# **What the numbers show:** every optimised input activates its neuron several times
# more than any training digit does. Unlike slide 6's filters, the patterns are no
# longer uniform over the image: each neuron weighs regions of the image differently,
# and the digits that excite it most often share a class or a stroke layout - yet the
# optimised images themselves do not look like digits.
