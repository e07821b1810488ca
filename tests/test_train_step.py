"""The optimizer, the loss and the jitted steps, against torch's optimizers and losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import resnet_jax
from resnet_jax.train import (
    OptimizerConfig,
    TrainState,
    cross_entropy,
    decay_mask,
    make_eval_step,
    make_optimizer,
    make_train_step,
    schedule,
    topk_correct,
)

torch = pytest.importorskip("torch")


_VARIABLES = {}


def _tiny(num_classes=3, **kw):
    """A small ResNet and its variables (initialised once per class count)."""
    model = resnet_jax.create_model("my_resnet", num_classes=num_classes, stem="small",
                                    stage_widths=(8, 16), **kw)
    if num_classes not in _VARIABLES:
        _VARIABLES[num_classes] = resnet_jax.init_variables(model, 0, 8)
    return model, _VARIABLES[num_classes]


def _batch(n=8, size=8, channels=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)),
            "label": jnp.asarray(rng.integers(0, classes, n).astype(np.int32)),
            "mask": jnp.ones(n, jnp.float32)}


def _torch_run(opt_name, params, grads_seq, lr, wd, momentum=0.9):
    tp = {k: torch.nn.Parameter(torch.tensor(np.asarray(v))) for k, v in params.items()}
    decay = [p for k, p in tp.items() if p.ndim > 1]
    no_decay = [p for k, p in tp.items() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    if opt_name == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=lr, eps=1e-8)
    for grads in grads_seq:
        for k, p in tp.items():
            p.grad = torch.tensor(np.asarray(grads[k]))
        opt.step()
    return {k: p.detach().numpy() for k, p in tp.items()}


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_optimizer_matches_torch_with_decay_only_on_kernels(opt_name):
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
              "bias": rng.normal(size=(4,)).astype(np.float32),
              "scale": rng.normal(size=(4,)).astype(np.float32)}
    grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
                 for _ in range(5)]
    lr, wd = 0.05, 0.1
    # total_steps large and end factor 1: the cosine stays at the peak lr (a constant schedule).
    tx = make_optimizer(OptimizerConfig(optimizer=opt_name, lr=lr, weight_decay=wd,
                                        total_steps=10, end_lr_factor=1.0))
    p = jax.tree_util.tree_map(jnp.asarray, params)
    state = tx.init(p)
    for g in grads_seq:
        updates, state = tx.update(jax.tree_util.tree_map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, updates)
    ref = _torch_run(opt_name, params, grads_seq, lr, wd)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_decay_mask_excludes_batchnorm_and_biases():
    _, variables = _tiny()
    mask = decay_mask(variables["params"])
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    names = {jax.tree_util.keystr(k): v for k, v in flat}
    assert names["['conv1']['kernel']"] and names["['fc']['kernel']"]
    assert not names["['bn1']['scale']"] and not names["['bn1']['bias']"] and not names["['fc']['bias']"]
    assert all(v == (k.endswith("['kernel']")) for k, v in names.items())


def test_schedule_warms_up_linearly_then_follows_a_cosine():
    cfg = OptimizerConfig(lr=0.4, warmup_steps=10, total_steps=110)
    lr = schedule(cfg)
    assert float(lr(0)) == 0.0
    np.testing.assert_allclose(float(lr(5)), 0.2, rtol=1e-6)
    np.testing.assert_allclose(float(lr(10)), 0.4, rtol=1e-6)
    np.testing.assert_allclose(float(lr(60)), 0.4 * 0.5 * (1 + np.cos(np.pi * 0.5)), rtol=1e-5)
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch_label_smoothing(smoothing):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, 6)
    ours = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 5, smoothing)
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels),
                                            label_smoothing=smoothing, reduction="none")
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_topk_correct():
    logits = jnp.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    assert topk_correct(logits, jnp.array([1, 2]), 1).tolist() == [1.0, 0.0]
    assert topk_correct(logits, jnp.array([2, 2]), 2).tolist() == [1.0, 0.0]


def _state(model, variables, **opt):
    tx = make_optimizer(OptimizerConfig(**{"lr": 0.05, "total_steps": 100, **opt}))
    # A copy: the steps donate the state's buffers, the shared variables must survive.
    return TrainState.create(model.apply, jax.tree_util.tree_map(jnp.copy, variables), tx)


def test_train_step_updates_batchnorm_state_and_learns():
    model, variables = _tiny()
    state = _state(model, variables)
    mean, std = (0.5,) * 3, (0.3,) * 3
    step = jax.jit(make_train_step(mean, std, 3), donate_argnums=0)
    batch = _batch()
    before_stats = jax.tree_util.tree_map(np.asarray, state.batch_stats)
    x = (np.asarray(batch["image"], np.float32) / 255 - 0.5) / 0.3
    _, torch_like = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, jnp.asarray(x))
    state, metrics = step(state, batch)
    assert set(metrics) >= {"loss", "accuracy", "grad_norm", "param_norm"} and "top5" not in metrics
    # The running statistics are those of one train-mode forward pass on the batch.
    for a, b in zip(jax.tree_util.tree_leaves(state.batch_stats),
                    jax.tree_util.tree_leaves(torch_like["batch_stats"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert int(state.batch_stats["bn1"]["num_batches_tracked"]) == 1
    assert not np.allclose(np.asarray(state.batch_stats["bn1"]["mean"]), before_stats["bn1"]["mean"])
    losses = [float(metrics["loss"])]
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 31
    assert losses[-1] < 0.3 * losses[0] and float(metrics["accuracy"]) == 1.0


def test_eval_step_ignores_padding_rows():
    model, variables = _tiny()
    state = _state(model, variables)
    ev = jax.jit(make_eval_step((0.5,) * 3, (0.3,) * 3, 3))
    batch = _batch()
    full = ev(state, batch)
    half = dict(batch, mask=jnp.array([1.0] * 4 + [0.0] * 4))
    part = ev(state, half)
    first = ev(state, {k: v[:4] for k, v in batch.items()})
    assert float(part["count"]) == 4 and float(full["count"]) == 8
    np.testing.assert_allclose(float(part["loss_sum"]), float(first["loss_sum"]), rtol=1e-5)
    assert float(part["correct"]) == float(first["correct"])
    logits = jax.jit(lambda v, x: model.apply(v, (x.astype(jnp.float32) / 255 - 0.5) / 0.3, train=False))(
        variables, batch["image"])
    assert np.asarray(full["prediction"]).tolist() == np.asarray(jnp.argmax(logits, -1)).tolist()


def test_frozen_backbone_trains_only_the_head():
    model, variables = _tiny()
    state = _state(model, variables, freeze_backbone=True, weight_decay=0.1)
    step = jax.jit(make_train_step((0.5,) * 3, (0.3,) * 3, 3))
    new, _ = step(state, _batch())
    for name in variables["params"]:
        same = jax.tree_util.tree_all(jax.tree_util.tree_map(
            lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
            variables["params"][name], new.params[name]))
        assert same == (name != "fc"), name


def test_bf16_compute_keeps_fp32_parameters_and_statistics():
    model32, variables = _tiny()
    model16, _ = _tiny(dtype=jnp.bfloat16)
    batch = _batch()
    outs = {}
    for tag, model in (("fp32", model32), ("bf16", model16)):
        state = _state(model, variables)
        step = jax.jit(make_train_step((0.5,) * 3, (0.3,) * 3, 3))
        state, metrics = step(state, batch)
        outs[tag] = float(metrics["loss"])
        dtypes = {x.dtype for x in jax.tree_util.tree_leaves(state.params)}
        assert dtypes == {jnp.dtype(jnp.float32)}
        for bn in jax.tree_util.tree_leaves(state.batch_stats, is_leaf=lambda x: isinstance(x, dict) and "mean" in x):
            assert bn["mean"].dtype == jnp.float32 and bn["var"].dtype == jnp.float32
    assert np.isfinite(outs["bf16"]) and abs(outs["bf16"] - outs["fp32"]) < 0.05


def test_clip_norm_bounds_the_update():
    tx = make_optimizer(OptimizerConfig(lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0,
                                        clip_norm=0.5, total_steps=10, end_lr_factor=1.0))
    p = {"w": jnp.zeros((3, 3))}
    u, _ = tx.update({"w": jnp.full((3, 3), 10.0)}, tx.init(p), p)
    np.testing.assert_allclose(float(optax.global_norm(u)), 0.5, rtol=1e-5)
