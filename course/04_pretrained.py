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
# # 4. A pretrained resnet18
#
# **The slide claims:** `torchvision.models.resnet18(pretrained=True)` downloads
# ImageNet weights, prints as conv1, bn1, relu, maxpool, layer1 ... layer4, avgpool, fc,
# and recognises everyday photos.
#
# Here the same weights come through `convert_weights.py` (torchvision's file in
# torch.hub's cache -> a Flax model saved with the project's format, checked against
# torchvision with `--verify`). Offline and without the file, the notebook says so in one
# line and runs the same cells on **random weights**, labelled as such on every figure.
# The photos are scikit-image's (chelsea the cat, coffee, astronaut, rocket), preprocessed
# exactly as torchvision's ImageNet preset (resize 256, centre crop 224, mean/std).

# %%
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from resnet_jax import course, imagenet
from resnet_jax.summary import format_summary, summarize

s = course.session(globals().get("__file__", "04_pretrained.py"))
model, variables, pretrained, note = course.resnet18(s)
rows, totals = summarize(model)
text = format_summary("resnet18" + ("" if pretrained else " (random weights)"), rows, totals)
print(text)
s.save_text("resnet18_summary.txt", text)

# %%
photos = course.skimage_photos()
x = np.stack([imagenet.preprocess(Image.fromarray(p)) for p in photos.values()])
probs = course.predict(model, variables, x)
names = imagenet.class_names()
top5 = {}
for (name, _), p in zip(photos.items(), probs):
    idx = np.argsort(-p)[:5]
    top5[name] = [(int(i), names[i], float(p[i])) for i in idx]
    print(f"{name}: " + ", ".join(f"{names[i]} {p[i]:.1%}" for i in idx))
s.record(pretrained=pretrained, note=note, top5=top5, params=totals["params"])

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 5), layout="constrained")
for ax, (name, img) in zip(axes, zip(photos, x)):
    course.show(ax, imagenet.denormalize(img), name)
    lines = [f"{n[:22]:<22} {p:6.1%}" for _, n, p in top5[name]]
    ax.set_xlabel("\n".join(lines), fontsize=8, family="monospace", loc="left")
fig.suptitle(note + ": top-5 classes under each photo", fontsize=10)
s.save_figure(fig, "top5.png")

# %% [markdown]
# **What the numbers show:** with the ImageNet weights, the top class of each photo is
# the thing in it (chelsea: a tabby or Egyptian cat; coffee: espresso or a cup; rocket:
# a missile or space shuttle), and the printout lists 11.7 M parameters in conv1 ...
# fc like torchvision's. With random weights (the case when the file is absent, as the
# first printed line then says) the same code runs but every probability is near
# 1/1000 and the classes are arbitrary.
