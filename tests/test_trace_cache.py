"""Traced train steps kept across processes, and the initialiser the compilation cache keeps."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import create_model, init_variables
from resnet_jax.models.registry import _compiled_init, input_shape
from resnet_jax.train import trace_cache
from resnet_jax.train.state import OptimizerConfig, TrainState, make_optimizer
from resnet_jax.train.step import make_train_step

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture
def cache_dir(tmp_path):
    trace_cache.enable(tmp_path / "traces")
    yield tmp_path / "traces"
    trace_cache.enable(None)


def _setup(label_smoothing=0.0, batch=8, lr=0.1):
    model = create_model("my_resnet", num_classes=4, stage_widths=(8, 16))
    variables = init_variables(model, 0, 16)
    opt = OptimizerConfig(lr=lr, total_steps=10, warmup_steps=2)
    state = TrainState.create(model.apply, variables, make_optimizer(opt))
    rng = np.random.default_rng(1)
    data = {"image": jnp.asarray(rng.integers(0, 256, (batch, 16, 16, 3), np.uint8)),
            "label": jnp.asarray(rng.integers(0, 4, (batch,), np.int32))}
    step = make_train_step(MEAN, STD, 4, label_smoothing)
    parts = {"model": model, "optimizer": opt, "mean": MEAN, "std": STD, "num_classes": 4,
             "label_smoothing": label_smoothing}
    return state, data, step, parts


def _run(stepper, state, data, n=3):
    """n steps from a copy of ``state`` (the cached step donates its input)."""
    state = jax.tree_util.tree_map(jnp.copy, state)
    out = []
    for _ in range(n):
        state, metrics = stepper(state, data)
        out.append(jax.device_get(metrics))
    return jax.device_get(state.variables), out


def _assert_same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_second_process_reuses_the_traced_step_with_the_same_results(cache_dir):
    state, data, step, parts = _setup()
    reference = _run(jax.jit(step), state, data)

    first = trace_cache.CachedStep(step, parts)  # as in a first process
    result = _run(first, state, data)
    assert first.source == "traced"
    entries = list(cache_dir.glob("train_step-*.jax"))
    assert len(entries) == 1

    second = trace_cache.CachedStep(step, parts)  # a second process: nothing traced in memory
    again = _run(second, state, data)
    assert second.source == "cache"
    assert list(cache_dir.glob("train_step-*.jax")) == entries
    _assert_same(result, reference)
    _assert_same(again, reference)


def test_other_settings_or_shapes_get_their_own_entry(cache_dir):
    state, data, step, parts = _setup()
    _run(trace_cache.CachedStep(step, parts), state, data, n=1)
    # Label smoothing changes the traced program but not a single shape.
    s2, d2, step2, parts2 = _setup(label_smoothing=0.1)
    other = trace_cache.CachedStep(step2, parts2)
    _, (m_other,) = _run(other, s2, d2, n=1)
    assert other.source == "traced"
    _, (m_plain,) = _run(jax.jit(step2), s2, d2, n=1)
    np.testing.assert_array_equal(m_other["loss"], m_plain["loss"])
    # So does the learning rate, which only the optimizer settings carry.
    s3, d3, step3, parts3 = _setup(lr=0.05)
    third = trace_cache.CachedStep(step3, parts3)
    _run(third, s3, d3, n=1)
    assert third.source == "traced"
    # And the batch's shape.
    s4, d4, step4, parts4 = _setup(batch=4)
    fourth = trace_cache.CachedStep(step4, parts4)
    _run(fourth, s4, d4, n=1)
    assert fourth.source == "traced"
    assert len(list(cache_dir.glob("train_step-*.jax"))) == 4


def test_a_damaged_entry_is_traced_again_and_replaced(cache_dir, caplog):
    state, data, step, parts = _setup()
    _run(trace_cache.CachedStep(step, parts), state, data, n=1)
    (entry,) = cache_dir.glob("train_step-*.jax")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    stepper = trace_cache.CachedStep(step, parts)
    with caplog.at_level(logging.WARNING, logger="resnet_jax.train.trace_cache"):
        result = _run(stepper, state, data, n=1)
    assert stepper.source == "traced"
    assert "ignoring unreadable traced step" in caplog.text
    _assert_same(result, _run(jax.jit(step), state, data, n=1))
    again = trace_cache.CachedStep(step, parts)
    _run(again, state, data, n=1)
    assert again.source == "cache"


def test_initial_variables_are_kept_and_read_back_unchanged(cache_dir, monkeypatch):
    import resnet_jax.models

    model = create_model("my_resnet", num_classes=4, stage_widths=(8, 16))
    first = trace_cache.initial_variables(model, 3, 16)
    _assert_same(first, init_variables(model, 3, 16))
    trace_cache.wait_for_writes()
    (entry,) = cache_dir.glob("init-*.msgpack")

    def no_init(*args, **kwargs):
        raise AssertionError("the kept variables were drawn again")

    with monkeypatch.context() as m:
        m.setattr(resnet_jax.models, "init_variables", no_init)
        again = trace_cache.initial_variables(model, 3, 16)
    _assert_same(again, first)
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(first)
    assert trace_cache._aval_text(again) == trace_cache._aval_text(first)  # same step key
    # Another seed or model is another entry.
    trace_cache.initial_variables(model, 4, 16)
    trace_cache.initial_variables(model.clone(num_classes=5), 3, 16)
    trace_cache.wait_for_writes()
    assert len(list(cache_dir.glob("init-*.msgpack"))) == 3
    assert entry.is_file()


def test_damaged_initial_variables_are_drawn_again_and_replaced(cache_dir, caplog):
    model = create_model("my_resnet", num_classes=4, stage_widths=(8, 16))
    trace_cache.initial_variables(model, 0, 16)
    trace_cache.wait_for_writes()
    (entry,) = cache_dir.glob("init-*.msgpack")
    entry.write_bytes(entry.read_bytes()[:50])  # truncated
    with caplog.at_level(logging.WARNING, logger="resnet_jax.train.trace_cache"):
        redrawn = trace_cache.initial_variables(model, 0, 16)
    trace_cache.wait_for_writes()
    assert "ignoring unreadable initial variables" in caplog.text
    _assert_same(redrawn, init_variables(model, 0, 16))
    _assert_same(trace_cache.initial_variables(model, 0, 16), redrawn)


def test_the_cache_can_be_turned_off(cache_dir, monkeypatch):
    monkeypatch.setenv("RESNET_JAX_TRACE_CACHE", "0")
    assert trace_cache.directory() is None
    monkeypatch.delenv("RESNET_JAX_TRACE_CACHE")
    assert trace_cache.directory() == cache_dir


@pytest.mark.parametrize("arch", ["resnet18", "digit_cnn", "resnext50_32x4d"])
def test_init_draws_the_numbers_the_host_initialisers_give(arch):
    """init_variables draws on the host after the jitted program; the values equal those
    of the host callbacks that a plain ``model.init`` calls, and the program holds no
    callback, so the persistent compilation cache can keep it."""
    model = create_model(arch)
    shape = input_shape(model, None if arch == "digit_cnn" else (1, 1))
    ours = init_variables(model, 3)
    plain = jax.jit(lambda r: model.init(r, jnp.zeros(shape), train=False))(jax.random.key(3))
    plain = {k: v for k, v in plain.items() if k in ours}
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(plain)
    _assert_same(ours, plain)
    init, draws = _compiled_init(model, shape)
    text = init.lower(jax.random.key(3)).as_text()
    assert draws and "callback" not in text.lower()
    # The callback path does hold one: the check above can tell them apart.
    callback_text = jax.jit(lambda r: model.init(r, jnp.zeros(shape), train=False)).lower(
        jax.random.key(3)).as_text()
    assert "callback" in callback_text.lower()


_SUBPROCESS_STEP = r"""
import sys
sys.path.insert(0, sys.argv[3])  # this test file's folder: its _setup
import jax.numpy as jnp
from test_trace_cache import _setup
from resnet_jax.train import trace_cache
trace_cache.enable(sys.argv[1])
state, batch, train_step, parts = _setup()

def step(state, batch):
    state, metrics = train_step(state, batch)
    if sys.argv[2] == "lapack":  # a LAPACK routine in the program
        metrics["solved"] = jnp.linalg.solve(jnp.eye(3) * 2.0, jnp.arange(3.0)).sum()
    return state, metrics

stepper = trace_cache.CachedStep(step, {**parts, "what": sys.argv[2]})
state, metrics = stepper(state, batch)
print(stepper.source, float(metrics["loss"]), float(metrics.get("solved", 1.5)),
      "scipy.linalg" in sys.modules)
"""


@pytest.mark.parametrize("kind", ["plain", "lapack"])
def test_a_cached_step_sets_up_lapack_only_when_it_calls_it(tmp_path, kind):
    """Calling an exported program, jax would import scipy.linalg to set up LAPACK for
    any CPU program; a cached step that calls no LAPACK routine skips that, and one that
    does still runs from the cache."""
    import subprocess
    import sys
    from pathlib import Path

    if jax.default_backend() != "cpu":
        pytest.skip("LAPACK's set-up concerns the CPU backend")
    script = tmp_path / "step.py"
    script.write_text(_SUBPROCESS_STEP)
    here = str(Path(__file__).resolve().parent)
    runs = [subprocess.run([sys.executable, str(script), str(tmp_path / "traces"), kind, here],
                           capture_output=True, text=True, timeout=300) for _ in range(2)]
    outs = [r.stdout.split() for r in runs]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    assert [o[0] for o in outs] == ["traced", "cache"]
    assert outs[1][1] == outs[0][1]  # the same loss, from the cache
    assert float(outs[1][2]) == pytest.approx(1.5)  # (0 + 1 + 2) / 2
    if kind == "plain":
        assert outs[1][3] == "False"  # the second process never imported scipy.linalg
