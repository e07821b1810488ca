"""Every torchvision architecture, ported, gives torchvision's numbers (eval mode)."""

from __future__ import annotations

import copy
import functools

import jax
import numpy as np
import pytest
import torch
from conftest import arch_params, nchw, rel_err, torch_stages, torchvision_model

import resnet_jax
from resnet_jax.models import TORCHVISION_ARCHS
from resnet_jax.port import from_torch

STAGES = ("layer1", "layer2", "layer3", "layer4")
TOL = 1e-5


# resnet18 (BasicBlock) and resnext50_32x4d (grouped Bottleneck) run by default.
@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow)
                                  if a in ("resnet34", "resnet50") else a
                                  for a in arch_params(TORCHVISION_ARCHS)])
def test_eval_parity_every_stage(arch, rng):
    tv = torchvision_model(arch, seed=int(rng.integers(1 << 30)))
    model, variables = from_torch(tv)
    assert type(model).__name__ == "ResNet" and model.num_classes == 1000

    run = jax.jit(lambda v, x: resnet_jax.features(model, v, x, STAGES + ("fc",)))
    for shape in [(2, 224, 224, 3), (1, 193, 257, 3)]:
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            ref = torch_stages(tv, nchw(x), STAGES)
        ours = jax.device_get(run(variables, x))
        for name in STAGES + ("fc",):
            assert ours[name].shape == ref[name].shape, name
            err = rel_err(ours[name], ref[name])
            print(f"{arch} {shape} {name}: {err:.2e}")
            assert err <= TOL, f"{arch} {shape} {name}: relative error {err:.2e}"
        np.testing.assert_array_equal(ours["fc"].argmax(-1), ref["fc"].argmax(-1))


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow),
                                  pytest.param("resnext50_32x4d", marks=pytest.mark.slow)])
def test_train_mode_forward_and_running_statistics(arch, rng):
    """Batch statistics in the forward pass, and torch's running-statistics update:
    running = 0.9 * running + 0.1 * batch, with the batch variance entering unbiased
    (times n / (n - 1)) as torch keeps it, and num_batches_tracked counting up.

    Normalising by the statistics of a small batch is ill-conditioned: torch's own float32
    result is ~1e-5 from float64 for bottleneck nets. So the reference is torchvision in
    float64, and we must be within 1e-5 of it or as close as torch's float32 is.
    """
    tv = torchvision_model(arch, seed=int(rng.integers(1 << 30)))
    model, variables = from_torch(tv)
    tv64 = copy.deepcopy(tv).double().train()
    tv.train()
    x = rng.standard_normal((4, 96, 96, 3)).astype(np.float32)
    with torch.no_grad():
        ref32 = tv(nchw(x)).numpy()
        ref64 = tv64(nchw(x).double()).numpy()
    state32 = {k: v.numpy() for k, v in tv.state_dict().items()}
    state64 = {k: v.numpy() for k, v in tv64.state_dict().items()}

    logits, updated = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    bound = max(TOL, 1.5 * rel_err(ref32, ref64))
    assert rel_err(logits, ref64) <= bound
    np.testing.assert_array_equal(np.argmax(logits, -1), ref64.argmax(-1))

    after = resnet_jax.port.to_torch({**variables, **updated}, model, as_numpy=True)
    for key, value in after.items():
        if key.endswith("num_batches_tracked"):
            assert value == state32[key], key
        elif "running" in key:
            bound = max(TOL, 1.5 * rel_err(state32[key], state64[key]))
            assert rel_err(value, state64[key]) <= bound, key

    # The unbiased correction, checked on the stem's BatchNorm against its own input.
    conv1 = resnet_jax.features(model, variables, x, ["conv1"])["conv1"]
    c = np.asarray(conv1, np.float64).reshape(-1, conv1.shape[-1])
    n = c.shape[0]
    before = np.asarray(variables["batch_stats"]["bn1"]["var"], np.float64)
    expected = 0.9 * before + 0.1 * c.var(0) * n / (n - 1)
    got = np.asarray(updated["batch_stats"]["bn1"]["var"], np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    biased = 0.9 * before + 0.1 * c.var(0)
    # The difference from a biased update is 0.1 * var / (n - 1): tiny next to the running
    # variance, so it is resolved only to float32's rounding of the latter (~6e-8).
    np.testing.assert_allclose(got - biased, 0.1 * c.var(0) / (n - 1), rtol=0.1, atol=1.5e-7)


@pytest.mark.slow  # test_train_step.py checks bf16 compute in the default run
def test_bfloat16_compute_keeps_float32_parameters_and_statistics(rng):
    tv = torchvision_model("resnet18", seed=int(rng.integers(1 << 30)))
    _, variables = from_torch(tv)
    model = resnet_jax.create_model("resnet18", dtype=jax.numpy.bfloat16)
    x = rng.standard_normal((2, 96, 96, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tv(nchw(x)).numpy()
    logits, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert all(leaf.dtype == np.float32 for leaf in jax.tree_util.tree_leaves(variables["params"]))
    assert all(leaf.dtype in (np.float32, np.int32)
               for leaf in jax.tree_util.tree_leaves(updated["batch_stats"]))
    eval_logits = model.apply(variables, x, train=False)
    assert eval_logits.dtype == np.float32  # the head runs in float32
    assert rel_err(eval_logits, ref) < 5e-2  # bf16 has 8 bits of mantissa


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_train_mode_gradients_match_torchvision(arch):
    """Weight gradients of a train-mode cross-entropy loss, traced with the train step's
    gradient rules (``ops.cpu_fast``), against torchvision's in float64.

    With random weights some gradients are ill-conditioned (sums that nearly cancel), and
    how far a float32 computation drifts from float64 depends on the processor: on an AVX2
    machine XLA:CPU's own gradients (plain lax, no custom rules) drift ~1e-2 where
    torchvision's drift ~3e-4. So the train step's rules are held to the backend's plain
    gradients (within 1e-4 of their drift, or 1e-5), and both to float64 torchvision within
    five times the larger float32 drift (or 1e-4) per tensor, twice it over all gradients,
    never above 5e-2: a wrongly mapped or wrongly computed tensor (error ~1) fails."""
    from resnet_jax import ops
    from resnet_jax.port import to_torch

    rng = np.random.default_rng(0)  # fixed: how well conditioned a draw is varies
    tv = torchvision_model(arch, seed=0).train()
    model, variables = from_torch(tv)
    # 128x128: layer4's BatchNorm then normalises over 4 x 4 x 4 values; far fewer make its
    # gradients ill-conditioned (torchvision's own float32 ones drift by 1e-2).
    x = rng.standard_normal((4, 128, 128, 3)).astype(np.float32)
    labels = rng.integers(0, 1000, 4)

    def loss(params, fast):
        m = ops.cpu_fast(model) if fast else model  # as make_train_step
        logits, _ = m.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
        logp = jax.nn.log_softmax(logits)
        return -np.float32(1 / len(labels)) * logp[np.arange(len(labels)), labels].sum()

    def grads(fast):
        g = jax.jit(jax.grad(functools.partial(loss, fast=fast)))(variables["params"])
        return {k: v.numpy() for k, v in to_torch({**variables, "params": g}, model).items()}

    ours, plain = grads(True), grads(False)

    def torch_grads(dtype):
        m = copy.deepcopy(tv).to(dtype)
        out = m(nchw(x).to(dtype))
        torch.nn.functional.cross_entropy(out, torch.from_numpy(labels)).backward()
        return {k: p.grad.numpy() for k, p in m.named_parameters()}

    ref64, ref32 = torch_grads(torch.float64), torch_grads(torch.float32)
    for k in ref64:
        err, drift = rel_err(ours[k], ref64[k]), rel_err(plain[k], ref64[k])
        own = max(rel_err(ref32[k], ref64[k]), drift)
        assert rel_err(ours[k], plain[k]) <= max(1e-5, 1e-4 + drift), f"{arch} {k}: rules"
        assert err <= min(5e-2, max(1e-4, 5 * own)), f"{arch} {k}: {err:.2e} (float32: {own:.2e})"
    flat = {name: np.concatenate([np.ravel(g[k]) for k in ref64])
            for name, g in [("ours", ours), ("plain", plain), ("64", ref64), ("32", ref32)]}
    err = rel_err(flat["ours"], flat["64"])
    own = max(rel_err(flat["32"], flat["64"]), rel_err(flat["plain"], flat["64"]))
    print(f"{arch}: all gradients {err:.2e} from float64 (float32 drift: {own:.2e})")
    assert err <= min(5e-2, max(1e-5, 2 * own))
