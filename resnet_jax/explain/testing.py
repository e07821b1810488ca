"""Small data sets and a tiny optax training loop for checking explanations.

Self-contained on purpose (no dependency on ``resnet_jax.train``): the tests and docs
train the course's digit CNN on scikit-learn's digits and a small ResNet on a synthetic
task whose class evidence sits at a known place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def digits(size: int = 28, test_fraction: float = 0.25, seed: int = 0):
    """scikit-learn's 8x8 digits upsampled (bilinear) to ``size`` x ``size``, in [0, 1]:
    ``(x_train, y_train, x_test, y_test)`` with x of shape (N, size, size, 1)."""
    from ..data.datasets import load_digits_arrays

    images, labels = load_digits_arrays()
    x = (images / 16.0).astype(np.float32)[..., None]
    x = np.asarray(jax.image.resize(jnp.asarray(x), (len(x), size, size, 1), "linear"))
    x = np.clip(x, 0.0, 1.0)
    y = labels.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def patch_task(n: int, size: int = 32, patch: int = 8, seed: int = 0):
    """Noise images; class 1 carries a bright-on-dark checker patch at a random place.

    Returns ``(x (n, size, size, 3), y (n,), boxes (n, 4) = (top, left, bottom, right))``;
    the box of a class-0 image is where a patch would have gone.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (n, size, size, 3)).astype(np.float32) * 0.5
    y = rng.integers(0, 2, n).astype(np.int32)
    boxes = np.zeros((n, 4), np.int64)
    yy, xx = np.mgrid[:patch, :patch]
    checker = ((yy // 2 + xx // 2) % 2).astype(np.float32)[..., None]
    for i in range(n):
        t, left = rng.integers(0, size - patch + 1, 2)
        boxes[i] = (t, left, t + patch, left + patch)
        if y[i] == 1:
            x[i, t:t + patch, left:left + patch] = checker * np.array([1.0, 0.9, 0.2], np.float32)
    return x, y, boxes


def train_classifier(model, x, y, steps: int = 300, batch: int = 64, lr: float = 3e-3,
                     seed: int = 0, image_size=None):
    """A minimal optax (Adam) cross-entropy loop, compiled as one ``lax.scan``; BatchNorm statistics are updated when
    the model has them. Returns the trained ``{'params', 'batch_stats'}``."""
    from ..models import init_variables

    variables = init_variables(model, seed, image_size or x.shape[1])
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    opt = optax.adam(lr)
    opt_state = opt.init(params)
    has_stats = bool(jax.tree_util.tree_leaves(stats))

    def loss_fn(params, stats, xb, yb):
        v = {"params": params, "batch_stats": stats}
        if has_stats:
            logits, new = model.apply(v, xb, train=True, mutable=["batch_stats"])
            new_stats = new["batch_stats"]
        else:
            logits, new_stats = model.apply({"params": params}, xb, train=True), stats
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return loss, new_stats

    @jax.jit
    def run(params, stats, opt_state, order, xs, ys):
        def step(carry, idx):
            params, stats, opt_state = carry
            xb, yb = jnp.take(xs, idx, axis=0), jnp.take(ys, idx, axis=0)
            (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, xb, yb)
            updates, opt_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), stats, opt_state), loss

        return jax.lax.scan(step, (params, stats, opt_state), order)[0]

    # The whole loop is one compiled scan over precomputed batch indices.
    order = jnp.asarray(np.random.default_rng(seed).integers(0, len(x), (steps, batch)))
    params, stats, opt_state = run(params, stats, opt_state, order, jnp.asarray(x), jnp.asarray(y))
    out = {"params": params}
    if has_stats:
        out["batch_stats"] = stats
    return out


def accuracy(model, variables, x, y) -> float:
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return float(np.mean(np.argmax(np.asarray(logits), -1) == y))
