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
# # 9. Grad-CAM: where did the network look?
#
# **The slides claim:** Grad-CAM weighs the last convolutional stage's maps by the
# gradient of one class's score and shows, over the photo, the region that made the
# network choose that class - and a different region for a different class of the same
# photo (the slide's "bighorn").
#
# Two parts. First a photo on resnet18 (ImageNet weights when torchvision's file is in
# the cache; otherwise random weights, said on the figure). Then a check whose answer is
# known: a small ResNet trained here, in well under a minute, to tell noise from noise
# with a checker patch at a random place. Its Grad-CAM for "patch" must sit on the patch,
# and we count how often it does.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from PIL import Image

import resnet_jax
from resnet_jax import course, imagenet
from resnet_jax.explain import explain, testing
from resnet_jax.viz.overlays import overlay

s = course.session(globals().get("__file__", "09_gradcam.py"))

# %% [markdown]
# ## A photo, two classes

# %%
model, variables, pretrained, note = course.resnet18(s)
photo = course.skimage_photos(["chelsea"])["chelsea"]
x = imagenet.preprocess(Image.fromarray(photo))[None]
logits = np.asarray(model.apply(variables, x, train=False))[0]
two = [int(c) for c in np.argsort(-logits)[:2]]
names = imagenet.class_names()
e = explain(model, variables, x, targets=[two], layer="layer4")
shown = imagenet.denormalize(x[0])
for c, p in zip(two, e.scores[0]):
    print(f"class {c} {names[c]}: p = {p:.3f}")


def cam_row(axes, image, cam, caption, box=None):
    course.show(axes[0], image, "input")
    im = axes[1].imshow(cam, cmap="jet", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title(f"Grad-CAM: {caption}", fontsize=9)
    course.show(axes[2], overlay(image, cam), f"overlay: {caption}")
    for ax in axes[1:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    if box is not None:
        t, left, b, r = box
        k = axes[2].get_images()[0].get_array().shape[0] / image.shape[0]
        for ax, scale in ((axes[1], 1), (axes[2], k)):
            ax.add_patch(Rectangle((left * scale - 0.5, t * scale - 0.5), (r - left) * scale,
                                   (b - t) * scale, fill=False, ec="white", lw=1.5, ls="--"))
    return im


fig, axes = plt.subplots(2, 3, figsize=(10, 7), layout="constrained")
for row, (c, p) in enumerate(zip(two, e.scores[0])):
    im = cam_row(axes[row], shown, e.maps[0, row], f"{c} {names[c]} ({p:.2f})")
fig.colorbar(im, ax=axes, shrink=0.7, label="Grad-CAM (0 = no evidence, 1 = most)")
fig.suptitle(note if not pretrained else f"{note}: the two most likely classes", fontsize=9)
s.save_figure(fig, "photo.png")
s.record(pretrained=pretrained, photo_classes=[names[c] for c in two], photo_scores=e.scores[0])

# %% [markdown]
# ## A task where the answer is known
#
# Class 1 images carry an 8x8 checker patch at a random place in 32x32 noise; class 0
# images are noise only. The only evidence for class 1 is the patch, so a faithful map
# for class 1 must put its mass there. We train the course's ResNet (`my_resnet`, small
# 3x3 stem, 8 and 16 channels) with Adam, then count on held-out patch images how often
# the map's peak falls inside the patch, and what fraction of the map's mass does.

# %%
SIZE, PATCH = 32, 8
CLASSES = ["noise", "checker patch"]
x_tr, y_tr, _ = testing.patch_task(s.pick(1500, 4000), size=SIZE, patch=PATCH, seed=0)
x_te, y_te, boxes = testing.patch_task(s.pick(300, 1000), size=SIZE, patch=PATCH, seed=1)
small = resnet_jax.create_model("my_resnet", stem="small", stage_widths=(8, 16))
t0 = time.perf_counter()
small_vars = course.train(small, x_tr, y_tr, steps=s.pick(200, 400), batch=32, lr=3e-3)
train_s = time.perf_counter() - t0
acc = float(np.mean(np.argmax(course.predict(small, small_vars, x_te), -1) == y_te))
print(f"trained in {train_s:.1f} s; held-out accuracy {acc:.1%}")

pos = np.flatnonzero(y_te == 1)
cams = explain(small, small_vars, x_te[pos], targets=1, layer="layer2").maps  # (P, 32, 32)


def localisation(cams, boxes):
    """Fraction of maps whose peak is inside the box, and mean fraction of map mass inside."""
    peak, mass = [], []
    for cam, (t, left, b, r) in zip(cams, boxes):
        i, j = np.unravel_index(np.argmax(cam), cam.shape)
        peak.append(t <= i < b and left <= j < r)
        mass.append(cam[t:b, left:r].sum() / (cam.sum() + 1e-12))
    return float(np.mean(peak)), float(np.mean(mass))


peak_in, mass_in = localisation(cams, boxes[pos])
area = PATCH * PATCH / SIZE**2
print(f"Grad-CAM peak inside the patch: {peak_in:.1%} of {len(pos)} held-out patch images")
print(f"Grad-CAM mass inside the patch: {mass_in:.1%} on average (the patch is {area:.1%} of the image)")
s.record(train_seconds=train_s, accuracy=acc, n_test_patch=len(pos), peak_inside=peak_in,
         mass_inside=mass_in, patch_area=area, classes=CLASSES)

# %%
show_idx = pos[:4]
fig, axes = plt.subplots(4, 3, figsize=(8, 10.5), layout="constrained")
e_small = explain(small, small_vars, x_te[show_idx], targets=1, layer="layer2")
for row, i in enumerate(show_idx):
    caption = f"{CLASSES[1]} ({e_small.scores[row]:.2f})"
    im = cam_row(axes[row], x_te[i], e_small.maps[row], caption, box=boxes[i])
fig.colorbar(im, ax=axes, shrink=0.6, label="Grad-CAM for class 'checker patch'")
fig.suptitle(f"Known answer: peak inside the patch (dashed) in {peak_in:.0%} of "
             f"{len(pos)} held-out images, {mass_in:.0%} of the map's mass inside", fontsize=10)
s.save_figure(fig, "patch.png")

# %% [markdown]
# **What the numbers show:** on the task with a known answer, Grad-CAM for "checker
# patch" peaks inside the patch in nearly every held-out image (printed above; the
# tests require at least 90%), and puts several times the patch's share of the area
# inside it. On the photo, the two classes' maps differ: each class is explained by its
# own region. With random weights (when the ImageNet file is absent) the classes and the
# maps mean nothing - the figure says so.
