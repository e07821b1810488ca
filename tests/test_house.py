"""The house rules of issue 16: importing changes nothing outside the package, layer
variants are module fields (part of every jit cache key), ``models/`` holds model
definitions only, and the CPU-fast ops keep lax's values and gradients and the barrier
their speed relies on."""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax
from resnet_jax import ops


def _normal(seed: int, shape) -> jnp.ndarray:
    """Standard normal test inputs drawn by numpy: XLA:CPU compiles some shapes of
    ``jax.random.normal`` for many seconds (a (3, 3, 8, 12) draw: 18 s)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32))


MODELS = Path(resnet_jax.__file__).parent / "models"


def test_importing_the_package_changes_nothing_outside_it():
    """The issue's acceptance line: XLA_FLAGS and the collector's frozen generation are as
    they were after importing the package, its training and its explanations."""
    code = ("import os, gc; f=os.environ.get('XLA_FLAGS'); g=gc.get_freeze_count(); "
            "import resnet_jax, resnet_jax.train, resnet_jax.explain; "
            "assert os.environ.get('XLA_FLAGS')==f and gc.get_freeze_count()==g")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_models_import_only_jax_flax_numpy_and_the_error_types():
    """``models/`` holds model definitions: besides the standard library it imports jax,
    flax, numpy, its own modules, ``resnet_jax.errors`` and ``resnet_jax.xla_cpu`` (the
    initialiser's compiler options; it imports only the standard library and jax), and no
    context variables."""
    allowed = {"jax", "flax", "numpy"} | set(sys.stdlib_module_names)
    for path in sorted(MODELS.glob("*.py")):
        text = path.read_text()
        assert "contextvars" not in text, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    continue  # models' own modules
                if node.level == 2:
                    assert node.module in ("errors", "xla_cpu"), (path.name, node.module)
                    continue
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, (path.name, name)
    xla_cpu = Path(resnet_jax.__file__).parent / "xla_cpu.py"
    for node in ast.walk(ast.parse(xla_cpu.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            assert all(n.split(".")[0] in set(sys.stdlib_module_names) | {"jax", "jaxlib"}
                       for n in names), ("xla_cpu.py", names)


def _digit_model_and_batch():
    model = resnet_jax.create_model("digit_cnn")
    variables = resnet_jax.init_variables(model, 0)
    x = _normal(1, (2, 28, 28, 1))
    return model, variables, x


def test_variants_are_fields_and_compile_programs_of_their_own():
    """Under one jit with the model static, a plain model, its guided-ReLU clone and its
    CPU-fast clone each compile their own program: no stale trace."""
    from resnet_jax.explain.relu import guided_relu

    model, variables, x = _digit_model_and_batch()

    @functools.partial(jax.jit, static_argnums=0)
    def input_grad(m, v, x):
        return jax.grad(lambda x: jnp.sum(m.apply(v, x)[:, 3]))(x)

    plain = input_grad(model, variables, x)
    guided = input_grad(model.clone(act=guided_relu), variables, x)
    fast = input_grad(ops.cpu_fast(model), variables, x)
    assert input_grad._cache_size() == (3 if jax.default_backend() == "cpu" else 2)
    assert not np.allclose(np.asarray(plain), np.asarray(guided))  # guided drops negatives
    np.testing.assert_allclose(np.asarray(fast), np.asarray(plain), rtol=1e-5, atol=1e-6)
    # The variant is not part of a saved model.
    assert not {"conv", "pool", "act"} & set(resnet_jax.model_config(ops.cpu_fast(model)))


def test_cpu_fast_keeps_a_chosen_relu_and_only_swaps_on_the_cpu():
    from resnet_jax.explain.relu import redirected_relu

    model = resnet_jax.create_model("resnet18").clone(act=redirected_relu)
    fast = ops.cpu_fast(model)
    assert fast.act is redirected_relu
    if jax.default_backend() == "cpu":
        assert (fast.conv, fast.pool) == (ops.conv_general_dilated, ops.max_pool)
        assert ops.cpu_fast(resnet_jax.create_model("resnet18")).act is ops.relu
    else:
        assert fast is model


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the barrier is for XLA:CPU")
def test_the_barrier_survives_xla_cpu_optimisation():
    """ops/barrier.py relies on XLA:CPU keeping a conditional whose branches are the same
    function. If a future XLA folds it away, the kernel gradients and ReLU masks lose the
    boundary that keeps BatchNorm and ReLU from being recomputed in a strided transpose:
    this test fails before the speed does."""
    x = _normal(0, (2, 8, 8, 4))
    w = _normal(1, (3, 3, 4, 8))

    def kernel_grad(x, w):
        def loss(w):
            y = ops.conv_general_dilated(ops.relu(x * 2.0 + 1.0), w, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.sum(jnp.sin(y))
        return jax.grad(loss)(w)

    def relu_grad(x):
        return jax.grad(lambda x: jnp.sum(jnp.sin(ops.relu(x * 2.0 + 1.0))))(x)

    for fn, args in ((kernel_grad, (x, w)), (relu_grad, (x,))):
        hlo = jax.jit(fn).lower(*args).compile().as_text()
        assert re.search(r"\bconditional\(", hlo), f"{fn.__name__}: the conditional was folded"


# --------------------------------------------------------------- ops' gradients = lax's


def _jit_grad(loss):
    """The gradient of ``loss(conv, x, w)`` in x and w, compiled once per conv (op by op, each
    of the rules' small ops would compile on its own)."""
    return jax.jit(jax.grad(loss, (1, 2)), static_argnums=0)


@pytest.mark.parametrize("stride,pad,kernel,groups,hw", [
    (1, 1, 3, 1, 9), (2, 1, 3, 1, 9), (2, 1, 3, 1, 8), (2, 3, 7, 1, 13), (2, 0, 1, 1, 9),
    (1, 1, 3, 4, 8), (2, 1, 3, 2, 7), (1, "VALID", 3, 1, 10), (2, "SAME", 3, 1, 8),
])
def test_ops_convolution_gradients_equal_lax(stride, pad, kernel, groups, hw):
    x = _normal(0, (2, hw, hw + 1, 8))
    w = _normal(1, (kernel, kernel, 8 // groups, 12))
    padding = pad if isinstance(pad, str) else ((pad, pad), (pad, pad))
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv, x, w):
        y = conv(x, w, (stride, stride), padding, dimension_numbers=dn, feature_group_count=groups)
        return jnp.sum(jnp.sin(y))

    want = _jit_grad(loss)(jax.lax.conv_general_dilated, x, w)
    jaxpr = str(jax.make_jaxpr(lambda x, w: loss(ops.conv_general_dilated, x, w))(x, w))
    got = _jit_grad(loss)(ops.conv_general_dilated, x, w)
    assert "custom_vjp_call" in jaxpr  # the op's own rule was used
    for g, r in zip(got, want):
        assert g.shape == r.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,kernel,stride,pad,out", [
    ((2, 12, 10, 16), 3, 2, 1, 12),   # per-phase stride-1 convolutions
    ((2, 12, 12, 16), 1, 2, 0, 24),   # 1x1 downsample: one phase holds every tap
    ((2, 12, 12, 8), 4, 2, 1, 6),     # an even kernel
    ((2, 15, 15, 9), 5, 3, 2, 4),     # stride 3
    ((2, 16, 14, 3), 7, 2, 3, 8),     # a stem on RGB: matrix product, summed by phase
    ((2, 11, 9, 3), 7, 2, 3, 8),      # ... with odd sizes
    ((2, 11, 13, 16), 3, 2, 1, 5),    # odd sizes, many channels: lax's dilated form
])
def test_ops_strided_input_gradients_equal_lax(shape, kernel, stride, pad, out):
    x = _normal(2, shape)
    w = _normal(3, (kernel, kernel, shape[-1], out))
    padding = ((pad, pad), (pad, pad))

    def loss(conv, x, w):
        y = conv(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.sin(y))

    want = _jit_grad(loss)(jax.lax.conv_general_dilated, x, w)
    got = _jit_grad(loss)(ops.conv_general_dilated, x, w)
    for g, r in zip(got, want):
        scale = float(jnp.abs(r).max())
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("shape,window,stride,pad", [
    ((2, 16, 16, 8), 3, 2, 1), ((2, 12, 6, 3), 3, 2, 1), ((2, 9, 11, 4), 3, 2, 1),
    ((3, 10, 10, 5), 2, 2, 0),
])
def test_ops_max_pool_gradient_equals_torch_and_lax_on_ties(shape, window, stride, pad):
    """Mask-routed max-pool gradient: after a ReLU most windows tie at zero; the gradient
    goes to each window's first maximum, as in torch and XLA's select-and-scatter."""
    import torch

    x = jnp.maximum(_normal(4, shape), 0.0)
    padding = ((pad, pad), (pad, pad))

    def pooled(x):
        return ops.max_pool(x, (window, window), strides=(stride, stride), padding=padding)

    y, vjp = jax.vjp(pooled, x)
    g = _normal(5, y.shape)
    (dx,) = vjp(g)
    assert "custom_vjp_call" in str(jax.make_jaxpr(pooled)(x))
    xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, window, stride, pad)
    yt.backward(torch.tensor(np.asarray(g).transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy().transpose(0, 2, 3, 1),
                               rtol=0, atol=1e-6)
    y_lax, vjp_lax = jax.vjp(lambda x: nn.max_pool(x, (window, window), (stride, stride),
                                                   padding), x)
    np.testing.assert_array_equal(np.asarray(y_lax), np.asarray(y))
    np.testing.assert_allclose(np.asarray(vjp_lax(g)[0]), np.asarray(dx), rtol=0, atol=1e-6)


@pytest.mark.slow  # the other ops tests run by default
def test_ops_relu_gradient_equals_flax_relu():
    """ops.relu masks its gradient by its stored output; values and gradients are flax's,
    at exact zeros (gradient 0), -0.0 and NaN too; and a CPU-fast model's input gradient
    equals the plain model's."""
    x = _normal(7, (2, 6, 6, 5))
    x = x.at[0, 0, 0].set(0.0).at[0, 0, 1].set(-0.0).at[1, 2, 3, 4].set(jnp.nan)
    g = _normal(8, x.shape)
    y_want, vjp_want = jax.vjp(nn.relu, x)
    y, vjp = jax.vjp(ops.relu, x)
    assert "custom_vjp_call" in str(jax.make_jaxpr(ops.relu)(x))
    (dx,) = vjp(g)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_want))
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(vjp_want(g)[0]))
    assert float(dx[0, 0, 0, 0]) == 0.0 and float(dx[1, 2, 3, 4]) == 0.0
    model = resnet_jax.create_model("resnet18", num_classes=4)
    variables = resnet_jax.init_variables(model, jax.random.key(0), 64)
    images = _normal(9, (2, 64, 64, 3))

    def score(m, images):
        return jnp.sum(m.apply(variables, images, train=False)[:, 1])

    want = jax.jit(jax.grad(functools.partial(score, model)))(images)
    got = jax.jit(jax.grad(functools.partial(score, ops.cpu_fast(model))))(images)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.slow  # a scan of three compiled gradient programs
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's layouts")
def test_cpu_fast_gradients_in_a_scan_are_canonical_and_equal():
    """Inside lax.scan, XLA:CPU compiles only canonical (b01f_01io->b01f) convolutions
    with its Eigen kernels; with ops.cpu_fast every convolution of a resnet18 step (input
    and weight gradients) is canonical, with the same gradients. (96x96 keeps every
    feature map at least as large as the 3x3 kernels: XLA swaps the operands of
    convolutions whose kernel is larger than their input.)"""
    plain = resnet_jax.create_model("resnet18", num_classes=5)
    variables = resnet_jax.init_variables(plain, jax.random.key(0))
    x = _normal(1, (1, 96, 96, 3))

    def grads(model, params, x):
        def loss(params, x):
            out, _ = model.apply({**variables, "params": params}, x, train=True,
                                 mutable=["batch_stats"])
            return jnp.sum(out ** 2)
        return jax.grad(loss, (0, 1))(params, x)

    def scanned(params, x):
        def body(carry, _):
            return carry, grads(ops.cpu_fast(plain), *carry)
        return jax.lax.scan(body, (params, x), None, length=2)[1]

    compiled = jax.jit(scanned).lower(variables["params"], x).compile()
    labels = re.findall(r"convolution\(.*?dim_labels=([^,]+),", compiled.as_text())
    # 20 forward convolutions and their gradients (the strided input gradients split into
    # phases, the stem's input gradient and the downsamples' kernel gradients matrix products).
    assert len(labels) >= 2 * 20 and set(labels) == {"b01f_01io->b01f"}, set(labels)
    got = compiled(variables["params"], x)
    want = jax.jit(functools.partial(grads, plain))(variables["params"], x)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g[1]), np.asarray(r), rtol=2e-5,
                                   atol=2e-5 * float(np.abs(np.asarray(r)).max()))


def test_tapped_outputs_in_forward_order_with_perturbations():
    """One function traces a model for its named outputs; a perturbation of an output is
    added to it, and an unknown name is refused with the valid ones."""
    from resnet_jax.errors import ResNetJaxError
    from resnet_jax.models.registry import tapped_outputs

    model, variables, x = _digit_model_and_batch()
    logits, outs = tapped_outputs(model, variables, x)
    assert list(outs) == ["conv1", "pool1", "conv2", "pool2", "flatten", "hidden", "fc"]
    np.testing.assert_array_equal(np.asarray(outs["fc"]), np.asarray(logits))
    bump = jnp.ones(outs["hidden"].shape)
    _, bumped = tapped_outputs(model, variables, x, perturbations={"hidden": bump})
    np.testing.assert_allclose(np.asarray(bumped["hidden"]), np.asarray(outs["hidden"] + 1))
    with pytest.raises(ResNetJaxError, match="hidden"):
        tapped_outputs(model, variables, x, perturbations={"layer9": bump})


def test_the_train_and_eval_steps_run_the_cpu_fast_ops_on_the_cpu():
    """``state.apply_fn = model.apply``: both steps trace ``ops.cpu_fast(model)`` (on the
    CPU: the custom-gradient ops; elsewhere: the model's own)."""
    import optax

    from resnet_jax.train.state import TrainState
    from resnet_jax.train.step import make_eval_step, make_train_step

    model, variables, _ = _digit_model_and_batch()
    state = TrainState.create(model.apply, variables, optax.sgd(0.1))
    batch = {"image": jnp.zeros((2, 28, 28, 1), jnp.uint8), "label": jnp.zeros((2,), jnp.int32),
             "mask": jnp.ones((2,), jnp.float32)}
    train = str(jax.make_jaxpr(make_train_step((0.5,), (0.5,), 10))(state, batch))
    evaluate = str(jax.make_jaxpr(make_eval_step((0.5,), (0.5,), 10))(state, batch))
    fast = jax.default_backend() == "cpu"
    assert ("custom_vjp_call" in train) == fast and ("custom_vjp_call" in evaluate) == fast
